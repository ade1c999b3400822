//! Bindings of `lama_core::crypto` (docs/core-interface.md, "Crypto"): bytes in, bytes out.
//!
//! Every function that does real work releases the GIL (`py.detach`): secretbox/box on large
//! messages, signing, and above all scrypt (the keychain's ~10 ms key derivation). Integer
//! arguments are range-checked here so that a negative or huge Python int is a
//! `CryptoError`, not an `OverflowError`.
use lama_core::crypto as c;
use lama_core::Error;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::IntoPyResult;

type PyBytesOut<'py> = Bound<'py, PyBytes>;

fn int_arg<T: TryFrom<i128>>(v: i128, what: &str, code: &str) -> PyResult<T> {
    T::try_from(v).map_err(|_| Error::crypto(code, format!("{what} out of range: {v}"))).py()
}

/// `(public, secret)`: a fresh random X25519 key pair.
#[pyfunction]
fn box_keypair(py: Python<'_>) -> (PyBytesOut<'_>, PyBytesOut<'_>) {
    let (pk, sk) = c::box_keypair();
    (PyBytes::new(py, &pk), PyBytes::new(py, &sk))
}

/// The X25519 public key of a 32-byte secret key.
#[pyfunction]
fn box_public_from_secret<'py>(py: Python<'py>, secret: &[u8]) -> PyResult<PyBytesOut<'py>> {
    let pk = c::box_public_from_secret(secret).py()?;
    Ok(PyBytes::new(py, &pk))
}

/// The 32-byte shared key `box.before(their_public, my_secret)`.
#[pyfunction]
fn box_before<'py>(py: Python<'py>, their_public: &[u8], my_secret: &[u8]) -> PyResult<PyBytesOut<'py>> {
    let k = py.detach(|| c::box_before(their_public, my_secret)).py()?;
    Ok(PyBytes::new(py, &k))
}

/// `tag(16) || ciphertext` of `msg` (XSalsa20-Poly1305, no nonce in the output).
#[pyfunction]
fn secretbox_seal<'py>(py: Python<'py>, msg: &[u8], nonce: &[u8], key: &[u8]) -> PyResult<PyBytesOut<'py>> {
    let out = py.detach(|| c::secretbox_seal(msg, nonce, key)).py()?;
    Ok(PyBytes::new(py, &out))
}

/// Opens a `secretbox_seal` output (`DecryptionError CYENC-SYMDEC` if not authentic).
#[pyfunction]
fn secretbox_open<'py>(py: Python<'py>, boxed: &[u8], nonce: &[u8], key: &[u8]) -> PyResult<PyBytesOut<'py>> {
    let out = py.detach(|| c::secretbox_open(boxed, nonce, key)).py()?;
    Ok(PyBytes::new(py, &out))
}

/// `nonce(24) || secretbox(msg, nonce, key)`; a random nonce unless one is given.
#[pyfunction]
#[pyo3(signature = (msg, key, nonce=None))]
fn secretbox_seal_embedded<'py>(py: Python<'py>, msg: &[u8], key: &[u8], nonce: Option<&[u8]>) -> PyResult<PyBytesOut<'py>> {
    let out = py.detach(|| c::secretbox_seal_embedded(msg, key, nonce)).py()?;
    Ok(PyBytes::new(py, &out))
}

/// Opens `nonce(24) || secretbox`.
#[pyfunction]
fn secretbox_open_embedded<'py>(py: Python<'py>, data: &[u8], key: &[u8]) -> PyResult<PyBytesOut<'py>> {
    let out = py.detach(|| c::secretbox_open_embedded(data, key)).py()?;
    Ok(PyBytes::new(py, &out))
}

/// one.core `encryptAndEmbedNonce`: `nonce || secretbox(msg, nonce, box_before(their_public, my_secret))`.
#[pyfunction]
#[pyo3(signature = (msg, my_secret, their_public, nonce=None))]
fn box_seal_embedded<'py>(
    py: Python<'py>,
    msg: &[u8],
    my_secret: &[u8],
    their_public: &[u8],
    nonce: Option<&[u8]>,
) -> PyResult<PyBytesOut<'py>> {
    let out = py.detach(|| c::box_seal_embedded(msg, my_secret, their_public, nonce)).py()?;
    Ok(PyBytes::new(py, &out))
}

/// one.core `decryptWithEmbeddedNonce`.
#[pyfunction]
fn box_open_embedded<'py>(py: Python<'py>, data: &[u8], my_secret: &[u8], their_public: &[u8]) -> PyResult<PyBytesOut<'py>> {
    let out = py.detach(|| c::box_open_embedded(data, my_secret, their_public)).py()?;
    Ok(PyBytes::new(py, &out))
}

/// `(public 32, secret 64 = seed || public)`: a fresh random Ed25519 key pair.
#[pyfunction]
fn sign_keypair(py: Python<'_>) -> (PyBytesOut<'_>, PyBytesOut<'_>) {
    let (pk, sk) = c::sign_keypair();
    (PyBytes::new(py, &pk), PyBytes::new(py, &sk))
}

/// The Ed25519 key pair of a 32-byte seed.
#[pyfunction]
fn sign_keypair_from_seed<'py>(py: Python<'py>, seed: &[u8]) -> PyResult<(PyBytesOut<'py>, PyBytesOut<'py>)> {
    let (pk, sk) = c::sign_keypair_from_seed(seed).py()?;
    Ok((PyBytes::new(py, &pk), PyBytes::new(py, &sk)))
}

/// The 64-byte detached signature of `msg` with a 64-byte secret key.
#[pyfunction]
fn sign_detached<'py>(py: Python<'py>, msg: &[u8], secret: &[u8]) -> PyResult<PyBytesOut<'py>> {
    let sig = py.detach(|| c::sign_detached(msg, secret)).py()?;
    Ok(PyBytes::new(py, &sig))
}

/// `None` if the signature verifies, else `SignatureError LAMA-SIGNATURE`.
#[pyfunction]
fn sign_verify_detached(py: Python<'_>, msg: &[u8], signature: &[u8], public: &[u8]) -> PyResult<()> {
    py.detach(|| c::sign_verify_detached(msg, signature, public)).py()
}

/// `n` random bytes from the OS.
#[pyfunction]
fn random_bytes(py: Python<'_>, n: i128) -> PyResult<PyBytesOut<'_>> {
    let n: usize = int_arg(n, "random_bytes length", "LAMA-RANDLEN")?;
    let out = c::random_bytes(n).py()?;
    Ok(PyBytes::new(py, &out))
}

/// scrypt (RFC 7914); runs without the GIL.
#[pyfunction]
#[pyo3(signature = (password, salt, n, r, p, dklen))]
fn scrypt<'py>(py: Python<'py>, password: &[u8], salt: &[u8], n: i128, r: i128, p: i128, dklen: i128) -> PyResult<PyBytesOut<'py>> {
    let n: u64 = int_arg(n, "scrypt n", "LAMA-SCRYPT")?;
    let r: u32 = int_arg(r, "scrypt r", "LAMA-SCRYPT")?;
    let p: u32 = int_arg(p, "scrypt p", "LAMA-SCRYPT")?;
    let dklen: usize = int_arg(dklen, "scrypt dklen", "LAMA-SCRYPT")?;
    let out = py.detach(|| c::scrypt(password, salt, n, r, p, dklen)).py()?;
    Ok(PyBytes::new(py, &out))
}

/// The 24-byte nonce of encrypted-connection frame number `counter` (0 <= counter < 2**64).
#[pyfunction]
fn session_nonce(py: Python<'_>, counter: i128) -> PyResult<PyBytesOut<'_>> {
    let counter: u64 = int_arg(counter, "frame counter", "LAMA-COUNTER")?;
    Ok(PyBytes::new(py, &c::session_nonce(counter)))
}

/// The padded frame plaintext of `data` (flags 0..15, r 0..255, filler of max(r-1, 0) bytes).
#[pyfunction]
fn frame_pad<'py>(py: Python<'py>, data: &[u8], flags: i128, r: i128, filler: &[u8]) -> PyResult<PyBytesOut<'py>> {
    let flags: u8 = int_arg(flags, "frame flags", "LAMA-PADDING")?;
    let r: u8 = int_arg(r, "frame padding r", "LAMA-PADDING")?;
    let out = c::frame_pad(data, flags, r, filler).py()?;
    Ok(PyBytes::new(py, &out))
}

/// `(flags, data)` of a padded frame plaintext.
#[pyfunction]
fn frame_unpad<'py>(py: Python<'py>, padded: &[u8]) -> PyResult<(u8, PyBytesOut<'py>)> {
    let (flags, data) = c::frame_unpad(padded).py()?;
    Ok((flags, PyBytes::new(py, &data)))
}

/// Adds the crypto functions to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(box_keypair, m)?)?;
    m.add_function(wrap_pyfunction!(box_public_from_secret, m)?)?;
    m.add_function(wrap_pyfunction!(box_before, m)?)?;
    m.add_function(wrap_pyfunction!(secretbox_seal, m)?)?;
    m.add_function(wrap_pyfunction!(secretbox_open, m)?)?;
    m.add_function(wrap_pyfunction!(secretbox_seal_embedded, m)?)?;
    m.add_function(wrap_pyfunction!(secretbox_open_embedded, m)?)?;
    m.add_function(wrap_pyfunction!(box_seal_embedded, m)?)?;
    m.add_function(wrap_pyfunction!(box_open_embedded, m)?)?;
    m.add_function(wrap_pyfunction!(sign_keypair, m)?)?;
    m.add_function(wrap_pyfunction!(sign_keypair_from_seed, m)?)?;
    m.add_function(wrap_pyfunction!(sign_detached, m)?)?;
    m.add_function(wrap_pyfunction!(sign_verify_detached, m)?)?;
    m.add_function(wrap_pyfunction!(random_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(scrypt, m)?)?;
    m.add_function(wrap_pyfunction!(session_nonce, m)?)?;
    m.add_function(wrap_pyfunction!(frame_pad, m)?)?;
    m.add_function(wrap_pyfunction!(frame_unpad, m)?)?;
    Ok(())
}
