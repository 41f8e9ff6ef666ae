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
    async fn get(&mut self, key: String) -> Result<Option<String>, Error> {
        self.blocking(move |env| kv::get(env, &key)).await
    }

    async fn set(&mut self, key: String, value: String) -> Result<(), Error> {
        self.blocking(move |env| kv::set(env, &key, &value)).await
    }

    async fn delete(&mut self, key: String) -> Result<bool, Error> {
        self.blocking(move |env| kv::delete(env, &key)).await
    }

    async fn keys(&mut self, prefix: String) -> Result<Vec<String>, Error> {
        self.blocking(move |env| kv::keys(env, &prefix)).await
    }

    async fn pin(&mut self, key: String, value: String) -> Result<String, Error> {
        self.blocking(move |env| kv::pin(env, &key, &value)).await
    }

    async fn pinned(&mut self, key: String) -> Result<Option<String>, Error> {
        self.blocking(move |env| kv::pinned(env, &key)).await
    }

    async fn snapshot(&mut self, label: String, paths: Vec<String>) -> Result<SnapshotInfo, Error> {
        self.blocking(move |env| snapshot::snapshot(env, &label, &paths))
            .await
    }

    async fn verify(&mut self, id: String) -> Result<SnapshotInfo, Error> {
        self.blocking(move |env| snapshot::verify(env, &id)).await
    }

    async fn restore(&mut self, id: String) -> Result<RestoreReport, Error> {
        self.blocking(move |env| snapshot::restore(env, &id)).await
    }

    async fn list_snapshots(&mut self, label_prefix: String) -> Result<Vec<SnapshotInfo>, Error> {
        self.blocking(move |env| snapshot::list_snapshots(env, &label_prefix))
            .await
    }

    async fn prune(&mut self, label_prefix: String, keep: u32) -> Result<u32, Error> {
        self.blocking(move |env| snapshot::prune(env, &label_prefix, keep))
            .await
    }

    async fn read_file(&mut self, path: String) -> Result<Vec<u8>, Error> {
        self.blocking(move |env| files::read_file(env, &path)).await
    }

    async fn write_file(&mut self, path: String, contents: Vec<u8>) -> Result<(), Error> {
        self.blocking(move |env| files::write_file(env, &path, &contents))
            .await
    }

    async fn copy(&mut self, source: String, target: String) -> Result<u64, Error> {
        self.blocking(move |env| files::copy(env, &source, &target))
            .await
    }

    async fn rename(&mut self, source: String, target: String) -> Result<(), Error> {
        self.blocking(move |env| files::rename(env, &source, &target))
            .await
    }

    async fn remove(&mut self, path: String) -> Result<(), Error> {
        self.blocking(move |env| files::remove(env, &path)).await
    }

    async fn make_dir(&mut self, path: String) -> Result<(), Error> {
        self.blocking(move |env| files::make_dir(env, &path)).await
    }

    async fn list_dir(&mut self, path: String, recursive: bool) -> Result<Vec<DirEntry>, Error> {
        self.blocking(move |env| files::list_dir(env, &path, recursive))
            .await
    }

    async fn stat(&mut self, path: String) -> Result<Option<DirEntry>, Error> {
        self.blocking(move |env| files::stat(env, &path)).await
    }

    async fn symlink(&mut self, target: String, link: String) -> Result<(), Error> {
        self.blocking(move |env| files::symlink(env, &target, &link))
            .await
    }

    async fn read_link(&mut self, path: String) -> Result<String, Error> {
        self.blocking(move |env| files::read_link(env, &path)).await
    }

    async fn sqlite_query(
        &mut self,
        db: String,
        sql: String,
        params: Vec<SqlValue>,
    ) -> Result<Rows, Error> {
        self.blocking(move |env| sqlite::query(env, &db, &sql, params))
            .await
    }

    async fn sqlite_exec(&mut self, db: String, sql: String) -> Result<u64, Error> {
        self.blocking(move |env| sqlite::exec(env, &db, &sql)).await
    }

    async fn sqlite_backup(&mut self, db: String, target: String) -> Result<u64, Error> {
        self.blocking(move |env| sqlite::backup(env, &db, &target))
            .await
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
