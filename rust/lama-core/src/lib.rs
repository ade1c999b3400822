//! lama-core: the pure-Rust core of lama (no pyo3 here).
//!
//! Layers, bottom to top (see shared ARCHITECTURE.md):
//! - [`microdata`]: recipes, ONE microdata serialization/parsing, object and ID hashes
//! - [`store`]: the LMDB object store (objects, ID objects, BLOB/CLOB, version heads, reverse maps)
//! - [`crypto`]: NaCl-compatible primitives (box, secretbox, Ed25519, scrypt, frame padding); the
//!   keychain that stores secret keys with them lives in Python (`lama.identity.keychain`)
//!
//! Every fallible function returns [`error::Result`]; [`error::Error`] carries a stable code
//! (the reference's code where one exists, e.g. `O2M-RTYC1`).

pub mod error;
pub mod hash;
pub mod microdata;
pub mod store;
pub mod crypto;

pub use error::{Error, ErrorKind, Result};
