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

mod chat;
mod chum;
mod crypto;
mod errors;
mod microdata;
mod net;
mod store;
mod store_api;

extern "C" {
    // mimalloc's C API (linked in by the `mimalloc` crate; its Rust binding exposes it only
    // with a feature this crate does not need otherwise)
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}
/// `mi_option_purge_decommits` (mimalloc.h, v2 and v3).
const MI_OPTION_PURGE_DECOMMITS: std::ffi::c_int = 5;

#[pymodule(gil_used = false)]
fn _lama(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Freed memory is given back with MADV_FREE (the kernel takes it when it needs it), not
    // decommitted: a CHUM sync frees and allocates megabytes of answers per second, and every
    // decommitted page touched again was a page fault and a zeroed page (issue 8 profile:
    // 8 % of the importer's and 18 % of the exporter's CPU in the kernel's clear_page).
    // SAFETY: a plain option store; mimalloc reads it when it next purges.
    unsafe { mi_option_set(MI_OPTION_PURGE_DECOMMITS, 0) };
    m.add("CORE_NAME", "rust")?;
    microdata::register(m)?;
    store::register(m)?;
    store_api::register(m)?;
    crypto::register(m)?;
    net::register(m)?;
    chum::register(m)?;
    chat::register(m)?;
    Ok(())
}
