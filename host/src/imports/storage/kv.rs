//! Durable key-value state: one table in `StateDir::kv_db()`, shared by the
//! runbook's plugins and scoped by plugin name. The database is opened when
//! first needed and kept for the run. In dry runs and checks, `set` and
//! `delete` go to an in-memory overlay that `get` and `keys` consult first,
//! so a plugin sees its own writes within the run while nothing reaches disk.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::bindings::types::Error;
use crate::state::PluginEnv;

/// How long a call waits for another process holding the database lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest key, in bytes.
pub const MAX_KEY: usize = 1024;
/// Largest value, in bytes.
pub const MAX_VALUE: usize = 16 << 20;

/// The cached connection and the dry-run overlay (`None` = deleted).
#[derive(Debug, Default)]
pub struct Kv {
    conn: Option<Connection>,
    overlay: HashMap<String, Option<String>>,
    /// Decisions pinned in a dry run or check: kept for the run only.
    pins_overlay: HashMap<String, String>,
}

impl Kv {
    /// The connection, opened on first use. Without `create`, a database
    /// that does not exist yet is not created: `Ok(None)`, nothing stored.
    fn conn(&mut self, path: &Path, create: bool) -> Result<Option<&Connection>, Error> {
        if self.conn.is_none() {
            if !create && !path.exists() {
                return Ok(None);
            }
            self.conn = Some(open(path)?);
        }
        Ok(self.conn.as_ref())
    }
}

fn open(path: &Path) -> Result<Connection, Error> {
    if let Some(dir) = path.parent() {
        crate::state::create_private_dir(dir)
            .map_err(|e| super::io_failed("create state directory", dir, &e))?;
    }
    // Plugins keep tokens here. SQLite would create the file 0644 (less the
    // umask); created first as 0600, it is opened as is, and SQLite gives
    // its -wal and -shm files the database file's mode.
    crate::state::private_file()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| super::io_failed("create state database", path, &e))?;
    let fail = |e: rusqlite::Error| {
        Error::failed(format!(
            "cannot open state database {}: {e}",
            path.display()
        ))
    };
    let conn = Connection::open(path).map_err(fail)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
        .map_err(fail)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS kv (
             plugin TEXT NOT NULL,
             key TEXT NOT NULL,
             value TEXT NOT NULL,
             PRIMARY KEY (plugin, key)
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS pins (
             plugin TEXT NOT NULL,
             scope TEXT NOT NULL,
             key TEXT NOT NULL,
             value TEXT NOT NULL,
             run TEXT NOT NULL,
             ts TEXT NOT NULL,
             PRIMARY KEY (plugin, scope, key)
         ) WITHOUT ROWID;",
    )
    .map_err(fail)?;
    Ok(conn)
}

fn db_failed(env: &PluginEnv, e: rusqlite::Error) -> Error {
    Error::failed(format!(
        "state database {}: {e}",
        env.storage.kv_db.display()
    ))
}

fn check_key(key: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::invalid("empty key"));
    }
    if key.len() > MAX_KEY {
        return Err(Error::invalid(format!(
            "key {:?}... is {} bytes, more than {MAX_KEY}",
            key.chars().take(40).collect::<String>(),
            key.len()
        )));
    }
    Ok(())
}

fn stored(env: &PluginEnv, kv: &mut Kv, key: &str) -> Result<Option<String>, Error> {
    let Some(conn) = kv.conn(&env.storage.kv_db, false)? else {
        return Ok(None);
    };
    conn.query_row(
        "SELECT value FROM kv WHERE plugin = ?1 AND key = ?2",
        params![env.storage.plugin, key],
        |r| r.get(0),
    )
    .optional()
    .map_err(|e| db_failed(env, e))
}

pub fn get(env: &PluginEnv, key: &str) -> Result<Option<String>, Error> {
    check_key(key)?;
    let mut kv = env.storage.kv();
    if let Some(v) = kv.overlay.get(key) {
        return Ok(v.clone());
    }
    stored(env, &mut kv, key)
}

pub fn set(env: &PluginEnv, key: &str, value: &str) -> Result<(), Error> {
    check_key(key)?;
    if value.len() > MAX_VALUE {
        return Err(Error::invalid(format!(
            "value for key {key:?} is {} bytes, more than {} MiB",
            value.len(),
            MAX_VALUE >> 20
        )));
    }
    check_total(env, key, value)?;
    let execute = env.side_effect(format!("set key {key}"))?;
    let mut kv = env.storage.kv();
    if !execute {
        kv.overlay.insert(key.to_string(), Some(value.to_string()));
        return Ok(());
    }
    kv.overlay.remove(key);
    let conn = kv
        .conn(&env.storage.kv_db, true)?
        .expect("opened with create");
    conn.execute(
        "INSERT INTO kv (plugin, key, value) VALUES (?1, ?2, ?3)
         ON CONFLICT (plugin, key) DO UPDATE SET value = excluded.value",
        params![env.storage.plugin, key, value],
    )
    .map_err(|e| db_failed(env, e))?;
    Ok(())
}

/// Refuse a `set` that would take the plugin's state (keys and values,
/// stored and in the dry-run overlay, the key being replaced not counted)
/// past `[limits] kv_bytes`: the state is loaded by every run and held in
/// memory in dry runs.
fn check_total(env: &PluginEnv, key: &str, value: &str) -> Result<(), Error> {
    let cap = env.limits.kv_bytes;
    let mut kv = env.storage.kv();
    let overlay: usize = kv
        .overlay
        .iter()
        .filter(|(k, _)| k.as_str() != key)
        .map(|(k, v)| v.as_ref().map_or(0, |v| k.len() + v.len()))
        .sum();
    let stored: i64 = match kv.conn(&env.storage.kv_db, false)? {
        None => 0,
        Some(conn) => conn
            .query_row(
                "SELECT COALESCE(SUM(length(CAST(key AS BLOB)) + length(CAST(value AS BLOB))), 0)
                 FROM kv WHERE plugin = ?1 AND key != ?2",
                params![env.storage.plugin, key],
                |r| r.get(0),
            )
            .map_err(|e| db_failed(env, e))?,
    };
    let total = usize::try_from(stored)
        .unwrap_or(usize::MAX)
        .saturating_add(overlay)
        .saturating_add(key.len() + value.len());
    if total > cap {
        return Err(Error::invalid(format!(
            "setting key {:?} ({} bytes) would bring plugin {}'s key-value state to {total} bytes, more than the limit of {} (delete keys it no longer needs, or raise [limits] kv_bytes in the runbook)",
            key.chars().take(40).collect::<String>(),
            key.len() + value.len(),
            env.storage.plugin,
            crate::runtime::show_bytes(cap)
        )));
    }
    Ok(())
}

/// Returns whether the key existed.
pub fn delete(env: &PluginEnv, key: &str) -> Result<bool, Error> {
    check_key(key)?;
    let execute = env.side_effect(format!("delete key {key}"))?;
    let mut kv = env.storage.kv();
    if !execute {
        let existed = match kv.overlay.get(key) {
            Some(v) => v.is_some(),
            None => stored(env, &mut kv, key)?.is_some(),
        };
        kv.overlay.insert(key.to_string(), None);
        return Ok(existed);
    }
    kv.overlay.remove(key);
    let Some(conn) = kv.conn(&env.storage.kv_db, false)? else {
        return Ok(false);
    };
    let n = conn
        .execute(
            "DELETE FROM kv WHERE plugin = ?1 AND key = ?2",
            params![env.storage.plugin, key],
        )
        .map_err(|e| db_failed(env, e))?;
    Ok(n > 0)
}

/// Keys starting with `prefix`, sorted (byte order).
pub fn keys(env: &PluginEnv, prefix: &str) -> Result<Vec<String>, Error> {
    let mut kv = env.storage.kv();
    let mut out = BTreeSet::new();
    if let Some(conn) = kv.conn(&env.storage.kv_db, false)? {
        let mut stmt = conn
            .prepare_cached("SELECT key FROM kv WHERE plugin = ?1 AND key >= ?2 ORDER BY key")
            .map_err(|e| db_failed(env, e))?;
        let rows = stmt
            .query_map(params![env.storage.plugin, prefix], |r| {
                r.get::<_, String>(0)
            })
            .map_err(|e| db_failed(env, e))?;
        for key in rows {
            let key = key.map_err(|e| db_failed(env, e))?;
            // Keys come in order: the first one without the prefix ends the range.
            if !key.starts_with(prefix) {
                break;
            }
            out.insert(key);
        }
    }
    for (k, v) in kv.overlay.iter().filter(|(k, _)| k.starts_with(prefix)) {
        if v.is_some() {
            out.insert(k.clone());
        } else {
            out.remove(k);
        }
    }
    Ok(out.into_iter().collect())
}

/// Where a plugin's decisions live: a real run's hold for the incident
/// (every run until one verifies the service back), a drill's only for
/// that drill (each rehearsal decides afresh).
fn pin_scope(env: &PluginEnv) -> String {
    match (env.mode, &env.journal) {
        (crate::bindings::types::Mode::Drill, Some(j)) => format!("drill:{}", j.run_id()),
        _ => INCIDENT.to_string(),
    }
}

const INCIDENT: &str = "incident";

/// A pinned decision, as `rewind` shows and journals it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pin {
    pub key: String,
    pub value: String,
    /// The run that decided it.
    pub run: String,
}

fn stored_pin(env: &PluginEnv, kv: &mut Kv, key: &str) -> Result<Option<Pin>, Error> {
    let scope = pin_scope(env);
    let Some(conn) = kv.conn(&env.storage.kv_db, false)? else {
        return Ok(None);
    };
    conn.query_row(
        "SELECT value, run FROM pins WHERE plugin = ?1 AND scope = ?2 AND key = ?3",
        params![env.storage.plugin, scope, key],
        |r| {
            Ok(Pin {
                key: key.to_string(),
                value: r.get(0)?,
                run: r.get(1)?,
            })
        },
    )
    .optional()
    .map_err(|e| db_failed(env, e))
}

/// The WIT `storage.pinned`.
pub fn pinned(env: &PluginEnv, key: &str) -> Result<Option<String>, Error> {
    check_key(key)?;
    let mut kv = env.storage.kv();
    if let Some(v) = kv.pins_overlay.get(key) {
        return Ok(Some(v.clone()));
    }
    Ok(stored_pin(env, &mut kv, key)?.map(|p| p.value))
}

/// The WIT `storage.pin`: the first value pinned under `key` wins. A new
/// decision is stored and journaled durably before it is returned, so
/// nothing is acted on that a crash could make the next run decide again.
/// Dry runs and checks decide in memory only.
pub fn pin(env: &PluginEnv, key: &str, value: &str) -> Result<String, Error> {
    check_key(key)?;
    if value.len() > MAX_VALUE {
        return Err(Error::invalid(format!(
            "value pinned under {key:?} is {} bytes, more than {} MiB",
            value.len(),
            MAX_VALUE >> 20
        )));
    }
    {
        let mut kv = env.storage.kv();
        if let Some(v) = kv.pins_overlay.get(key) {
            return Ok(v.clone());
        }
        if let Some(p) = stored_pin(env, &mut kv, key)? {
            return Ok(p.value);
        }
        if !env.mode.executes() {
            kv.pins_overlay.insert(key.to_string(), value.to_string());
            return Ok(value.to_string());
        }
    }
    check_total(env, key, value)?;
    let run = env
        .journal
        .as_ref()
        .map(|j| j.run_id().to_string())
        .unwrap_or_default();
    let mut kv = env.storage.kv();
    let conn = kv
        .conn(&env.storage.kv_db, true)?
        .expect("opened with create");
    // Another process may have decided meanwhile: its decision stands.
    let inserted = conn
        .execute(
            "INSERT OR IGNORE INTO pins (plugin, scope, key, value, run, ts) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                env.storage.plugin,
                pin_scope(env),
                key,
                value,
                run,
                crate::journal::now_rfc3339()
            ],
        )
        .map_err(|e| db_failed(env, e))?;
    if inserted == 0 {
        return Ok(stored_pin(env, &mut kv, key)?.map_or_else(|| value.to_string(), |p| p.value));
    }
    drop(kv);
    if let Some(j) = &env.journal {
        j.record(crate::journal::Event::Decision {
            plugin: env.name.clone(),
            key: key.to_string(),
            value: value.to_string(),
        });
    }
    Ok(value.to_string())
}

/// Every decision pinned for the incident by this plugin.
pub fn pins(env: &PluginEnv) -> Result<Vec<Pin>, Error> {
    let scope = pin_scope(env);
    let mut kv = env.storage.kv();
    let mut out: Vec<Pin> = Vec::new();
    if let Some(conn) = kv.conn(&env.storage.kv_db, false)? {
        let mut stmt = conn
            .prepare_cached(
                "SELECT key, value, run FROM pins WHERE plugin = ?1 AND scope = ?2 ORDER BY ts, key",
            )
            .map_err(|e| db_failed(env, e))?;
        let rows = stmt
            .query_map(params![env.storage.plugin, scope], |r| {
                Ok(Pin {
                    key: r.get(0)?,
                    value: r.get(1)?,
                    run: r.get(2)?,
                })
            })
            .map_err(|e| db_failed(env, e))?;
        for p in rows {
            out.push(p.map_err(|e| db_failed(env, e))?);
        }
    }
    Ok(out)
}

/// Forget the incident's decisions: the service was verified back (or
/// found healthy), or the operator asked to decide again. Returns what
/// was forgotten. Only real runs forget; dry runs change nothing.
pub fn clear_pins(env: &PluginEnv) -> Result<Vec<Pin>, Error> {
    if env.mode != crate::bindings::types::Mode::Execute {
        return Ok(Vec::new());
    }
    let gone = pins(env)?;
    if gone.is_empty() {
        return Ok(gone);
    }
    let mut kv = env.storage.kv();
    if let Some(conn) = kv.conn(&env.storage.kv_db, false)? {
        conn.execute(
            "DELETE FROM pins WHERE plugin = ?1 AND scope = ?2",
            params![env.storage.plugin, INCIDENT],
        )
        .map_err(|e| db_failed(env, e))?;
    }
    Ok(gone)
}
