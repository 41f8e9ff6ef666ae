//! State, snapshots, files and SQLite (the WIT `storage` interface). Reads
//! are carried out in every mode; writes are recorded and skipped in dry
//! runs (key-value writes then go to an in-memory overlay, so a plugin reads
//! back what it wrote within the run).
//!
//! ```no_run
//! use rewind_sdk::storage;
//! # fn f() -> rewind_sdk::Result<()> {
//! let current = storage::read_link("/srv/app/current")?;
//! storage::set_json("target:run-1", &"1.0.0")?;
//! let cfg = storage::read_to_string("/srv/app/current/app.toml")?;
//! storage::write_string("/srv/app/maintenance", "on")?;
//! # let _ = (current, cfg); Ok(()) }
//! ```

use crate::Error;
pub use crate::bindings::rewind::plugin::storage::*;

/// Read a granted file as text (invalid UTF-8 is replaced).
pub fn read_to_string(path: &str) -> Result<String, Error> {
    read_file(path).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Replace a file atomically with `text`.
pub fn write_string(path: &str, text: &str) -> Result<(), Error> {
    write_file(path, text.as_bytes())
}

/// True when `path` exists (a granted `read` path).
pub fn exists(path: &str) -> Result<bool, Error> {
    stat(path).map(|e| e.is_some())
}

/// A key-value entry holding JSON, deserialized; `None` when absent.
pub fn get_json<T: serde::de::DeserializeOwned>(key: &str) -> Result<Option<T>, Error> {
    match get(key)? {
        None => Ok(None),
        Some(v) => serde_json::from_str(&v).map(Some).map_err(|e| {
            Error::Invalid(format!("kv {key:?} does not hold the expected JSON: {e}"))
        }),
    }
}

/// Store a value as JSON under `key`.
pub fn set_json<T: serde::Serialize + ?Sized>(key: &str, value: &T) -> Result<(), Error> {
    let text = serde_json::to_string(value).map_err(|e| Error::Invalid(e.to_string()))?;
    set(key, &text)
}
