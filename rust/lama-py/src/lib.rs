//! pyo3 bindings of lama-core: the native module `lama._lama`.
//!
//! Only conversions live here: Python values <-> `lama_core` values, core errors -> the
//! classes of `lama.errors`, and releasing the GIL around real work. Each layer has its own
//! file; `register_*` adds its functions and classes to the module.
use pyo3::prelude::*;

/// mimalloc for everything the native module allocates: conversion and serialization make
/// many small, short-lived allocations (values, keys, microdata), where it is markedly faster
/// than the system allocator. Python objects still come from Python's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod chum;
mod crypto;
mod errors;
mod microdata;
mod net;
mod store;
mod store_api;

#[pymodule(gil_used = false)]
fn _lama(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CORE_NAME", "rust")?;
    microdata::register(m)?;
    store::register(m)?;
    store_api::register(m)?;
    crypto::register(m)?;
    net::register(m)?;
    chum::register(m)?;
    Ok(())
}
