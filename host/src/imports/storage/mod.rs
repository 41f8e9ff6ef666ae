//! `rewind:plugin/storage`: key-value state, snapshots, atomic file
//! operations and SQLite.
//!
//! Every call checks its grant first (`read`, `write` or `sqlite`), and every
//! write goes through `PluginEnv::side_effect`, so dry runs and checks record
//! what would have been written and write nothing. Reads always execute.
//!
//! - [`kv`]: durable key-value state in `StateDir::kv_db()`, scoped by plugin;
//!   writes in dry runs go to an in-memory overlay the plugin can read back.
//! - [`snapshot`]: `.tar.zst` archives of granted paths with a JSON manifest of
//!   every entry's SHA-256; verified before every restore, restored by
//!   swapping each path in whole.
//! - [`files`]: reads, atomic writes and copies, renames, symlink switches.
//! - [`sqlite`]: read-only queries, batches in a transaction, online backups.

pub mod files;
pub mod kv;
pub mod snapshot;
pub mod sqlite;

#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::bindings::storage::{DirEntry, Host, RestoreReport, Rows, SnapshotInfo, SqlValue};
use crate::bindings::types::Error;
use crate::state::{HostState, StateDir};

/// Per-plugin storage state for one run.
#[derive(Debug)]
pub struct StorageState {
    /// Where this plugin's snapshots live (`<state>/snapshots/<plugin>`).
    pub snapshots_dir: PathBuf,
    /// The key-value database shared by all plugins of the runbook.
    pub kv_db: PathBuf,
    pub plugin: String,
    /// The key-value connection (opened when first needed) and the dry-run
    /// overlay.
    kv: Mutex<kv::Kv>,
}

impl StorageState {
    pub fn new(state: &StateDir, plugin: &str) -> Self {
        Self {
            snapshots_dir: state.snapshots(plugin),
            kv_db: state.kv_db(),
            plugin: plugin.to_string(),
            kv: Mutex::new(kv::Kv::default()),
        }
    }

    fn kv(&self) -> MutexGuard<'_, kv::Kv> {
        // A panic while holding the lock leaves nothing half-done in memory
        // that matters: the database is transactional.
        self.kv.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Host for HostState {
    fn get(&mut self, key: String) -> Result<Option<String>, Error> {
        self.timed(|env| kv::get(env, &key))
    }

    fn set(&mut self, key: String, value: String) -> Result<(), Error> {
        self.timed(|env| kv::set(env, &key, &value))
    }

    fn delete(&mut self, key: String) -> Result<bool, Error> {
        self.timed(|env| kv::delete(env, &key))
    }

    fn keys(&mut self, prefix: String) -> Result<Vec<String>, Error> {
        self.timed(|env| kv::keys(env, &prefix))
    }

    fn pin(&mut self, key: String, value: String) -> Result<String, Error> {
        self.timed(|env| kv::pin(env, &key, &value))
    }

    fn pinned(&mut self, key: String) -> Result<Option<String>, Error> {
        self.timed(|env| kv::pinned(env, &key))
    }

    fn snapshot(&mut self, label: String, paths: Vec<String>) -> Result<SnapshotInfo, Error> {
        self.timed(|env| snapshot::snapshot(env, &label, &paths))
    }

    fn verify(&mut self, id: String) -> Result<SnapshotInfo, Error> {
        self.timed(|env| snapshot::verify(env, &id))
    }

    fn restore(&mut self, id: String) -> Result<RestoreReport, Error> {
        self.timed(|env| snapshot::restore(env, &id))
    }

    fn list_snapshots(&mut self, label_prefix: String) -> Result<Vec<SnapshotInfo>, Error> {
        self.timed(|env| snapshot::list_snapshots(env, &label_prefix))
    }

    fn prune(&mut self, label_prefix: String, keep: u32) -> Result<u32, Error> {
        self.timed(|env| snapshot::prune(env, &label_prefix, keep))
    }

    fn read_file(&mut self, path: String) -> Result<Vec<u8>, Error> {
        self.timed(|env| files::read_file(env, &path))
    }

    fn write_file(&mut self, path: String, contents: Vec<u8>) -> Result<(), Error> {
        self.timed(|env| files::write_file(env, &path, &contents))
    }

    fn copy(&mut self, source: String, target: String) -> Result<u64, Error> {
        self.timed(|env| files::copy(env, &source, &target))
    }

    fn rename(&mut self, source: String, target: String) -> Result<(), Error> {
        self.timed(|env| files::rename(env, &source, &target))
    }

    fn remove(&mut self, path: String) -> Result<(), Error> {
        self.timed(|env| files::remove(env, &path))
    }

    fn make_dir(&mut self, path: String) -> Result<(), Error> {
        self.timed(|env| files::make_dir(env, &path))
    }

    fn list_dir(&mut self, path: String, recursive: bool) -> Result<Vec<DirEntry>, Error> {
        self.timed(|env| files::list_dir(env, &path, recursive))
    }

    fn stat(&mut self, path: String) -> Result<Option<DirEntry>, Error> {
        self.timed(|env| files::stat(env, &path))
    }

    fn symlink(&mut self, target: String, link: String) -> Result<(), Error> {
        self.timed(|env| files::symlink(env, &target, &link))
    }

    fn read_link(&mut self, path: String) -> Result<String, Error> {
        self.timed(|env| files::read_link(env, &path))
    }

    fn sqlite_query(
        &mut self,
        db: String,
        sql: String,
        params: Vec<SqlValue>,
    ) -> Result<Rows, Error> {
        self.timed(|env| sqlite::query(env, &db, &sql, params))
    }

    fn sqlite_exec(&mut self, db: String, sql: String) -> Result<u64, Error> {
        self.timed(|env| sqlite::exec(env, &db, &sql))
    }

    fn sqlite_backup(&mut self, db: String, target: String) -> Result<u64, Error> {
        self.timed(|env| sqlite::backup(env, &db, &target))
    }
}

/// An I/O error's message without the `(os error N)` suffix.
pub(crate) fn os_message(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

/// `cannot <verb> <path>: <reason>`.
pub(crate) fn io_failed(verb: &str, path: &Path, e: &io::Error) -> Error {
    Error::Failed(format!(
        "cannot {verb} {}: {}",
        path.display(),
        os_message(e)
    ))
}

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Make a rename or a new entry in `dir` durable.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A path as UTF-8, which the WIT interface and the manifest need.
pub(crate) fn utf8(path: &Path) -> Result<&str, Error> {
    path.to_str()
        .ok_or_else(|| Error::invalid(format!("path {} is not valid UTF-8", path.display())))
}
