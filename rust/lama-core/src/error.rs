//! The one error type of lama-core.
//!
//! `ErrorKind` decides which Python exception class the bindings raise; `code` is a stable
//! string (the reference's code where one exists, e.g. `O2M-RTYC1`, `M2O-PD1`, `SB-READ2`).
//! `Display` renders `"CODE: message"`, which is also the text of the Python exception.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Malformed object or microdata (serialize/parse). Python: `lama.MicrodataError` (ValueError).
    Microdata,
    /// Bad or unknown recipe / type. Python: `lama.RecipeError` (ValueError).
    Recipe,
    /// Content does not hash to the expected hash. Python: `lama.HashMismatchError` (ValueError).
    HashMismatch,
    /// A requested object/head/blob does not exist. Python: `lama.NotFoundError` (LookupError).
    NotFound,
    /// A compare-and-set on a version head lost a race. Python: `lama.ConflictError`.
    Conflict,
    /// LMDB or file-system failure, corrupt store. Python: `lama.StoreError` (OSError).
    Store,
    /// Malformed key/nonce/ciphertext input. Python: `lama.CryptoError` (ValueError).
    Crypto,
    /// Authentication failed when opening a box/secretbox. Python: `lama.DecryptionError`.
    Decryption,
    /// A signature did not verify. Python: `lama.SignatureError`.
    Signature,
    /// Keychain problems (wrong secret, locked, missing keys). Python: `lama.KeychainError`.
    Keychain,
    /// Access denied. Python: `lama.AccessDeniedError` (PermissionError).
    Access,
    /// Network/transport failure. Python: `lama.TransportError` (ConnectionError).
    Transport,
    /// A bug in lama. Python: `lama.LamaError` (RuntimeError).
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub code: String,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: ErrorKind, code: impl Into<String>, message: impl Into<String>) -> Self {
        Error { kind, code: code.into(), message: message.into() }
    }
    pub fn microdata(code: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Microdata, code, message)
    }
    pub fn recipe(code: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Recipe, code, message)
    }
    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, code, message)
    }
    pub fn store(code: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Store, code, message)
    }
    pub fn crypto(code: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Crypto, code, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

impl From<heed::Error> for Error {
    fn from(e: heed::Error) -> Self {
        use heed::MdbError;
        match e {
            // LMDB found a damaged page or meta (docs/store-format.md "Damaged files").
            heed::Error::Mdb(MdbError::Corrupted | MdbError::PageNotFound | MdbError::Invalid) => {
                Error::store("LAMA-CORRUPT", format!("the store is damaged: {e}"))
            }
            e => Error::store("LAMA-LMDB", e.to_string()),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::store("LAMA-IO", e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lmdb_damage_errors_are_lama_corrupt() {
        use heed::MdbError;
        for e in [MdbError::Corrupted, MdbError::PageNotFound, MdbError::Invalid] {
            let err = Error::from(heed::Error::Mdb(e));
            assert_eq!((err.kind, err.code.as_str()), (ErrorKind::Store, "LAMA-CORRUPT"));
        }
        assert_eq!(Error::from(heed::Error::Mdb(MdbError::MapFull)).code, "LAMA-LMDB");
    }
}
