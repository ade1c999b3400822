//! Maps `lama_core::Error` to the exception classes of `lama.errors` (pyca/cryptography style:
//! the classes live in Python, so both cores raise the very same types).
use lama_core::{Error, ErrorKind};
use pyo3::prelude::*;

pyo3::import_exception!(lama.errors, LamaError);
pyo3::import_exception!(lama.errors, MicrodataError);
pyo3::import_exception!(lama.errors, RecipeError);
pyo3::import_exception!(lama.errors, HashMismatchError);
pyo3::import_exception!(lama.errors, NotFoundError);
pyo3::import_exception!(lama.errors, ConflictError);
pyo3::import_exception!(lama.errors, StoreError);
pyo3::import_exception!(lama.errors, CryptoError);
pyo3::import_exception!(lama.errors, DecryptionError);
pyo3::import_exception!(lama.errors, SignatureError);
pyo3::import_exception!(lama.errors, KeychainError);
pyo3::import_exception!(lama.errors, AccessDeniedError);
pyo3::import_exception!(lama.errors, TransportError);

/// Convert a core error into the matching Python exception (`str(e) == "CODE: message"`).
pub fn to_py(e: Error) -> PyErr {
    // messages may quote values with lone surrogates in the core's string encoding
    // (lama_core microdata/text.rs): show them as U+FFFD
    let text = e.to_string();
    let text = lama_core::microdata::js_utf8(&text).into_owned();
    match e.kind {
        ErrorKind::Microdata => MicrodataError::new_err(text),
        ErrorKind::Recipe => RecipeError::new_err(text),
        ErrorKind::HashMismatch => HashMismatchError::new_err(text),
        ErrorKind::NotFound => NotFoundError::new_err(text),
        ErrorKind::Conflict => ConflictError::new_err(text),
        ErrorKind::Store => StoreError::new_err(text),
        ErrorKind::Crypto => CryptoError::new_err(text),
        ErrorKind::Decryption => DecryptionError::new_err(text),
        ErrorKind::Signature => SignatureError::new_err(text),
        ErrorKind::Keychain => KeychainError::new_err(text),
        ErrorKind::Access => AccessDeniedError::new_err(text),
        ErrorKind::Transport => TransportError::new_err(text),
        ErrorKind::Internal => LamaError::new_err(text),
    }
}

/// `Result` extension: `.py()?` turns a core error into a Python exception.
pub trait IntoPyResult<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for lama_core::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
