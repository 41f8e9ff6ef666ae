//! SQLite on granted database files: read-only queries (the database is
//! opened read-only, so a query cannot change anything), batches run in one
//! transaction, and online backups.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OpenFlags};

use super::kv::BUSY_TIMEOUT;
use super::{fsync_dir, io_failed};
use crate::bindings::storage::{Rows, SqlValue};
use crate::bindings::types::Error;
use crate::state::PluginEnv;

/// Queries return at most this many rows.
pub const ROW_CAP: usize = 10_000;

fn to_value(v: SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) => Value::Integer(i),
        SqlValue::Real(f) => Value::Real(f),
        SqlValue::Text(s) => Value::Text(s),
        SqlValue::Blob(b) => Value::Blob(b),
    }
}

fn from_value(v: ValueRef<'_>) -> SqlValue {
    match v {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Integer(i) => SqlValue::Integer(i),
        ValueRef::Real(f) => SqlValue::Real(f),
        ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
    }
}

/// A database file that must already exist.
fn existing_db(p: &Path) -> Result<(), Error> {
    match fs::metadata(p) {
        Ok(md) if md.is_file() => Ok(()),
        Ok(_) => Err(Error::failed(format!(
            "cannot open database {}: not a file",
            p.display()
        ))),
        Err(e) => Err(io_failed("open database", p, &e)),
    }
}

fn open_read_only(p: &Path) -> Result<Connection, Error> {
    existing_db(p)?;
    let fail =
        |e: rusqlite::Error| Error::failed(format!("cannot open database {}: {e}", p.display()));
    let conn = Connection::open_with_flags(
        p,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(fail)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
    confine(&conn, fail)?;
    Ok(conn)
}

/// Keep SQL inside the granted file and inside SQLite: no ATTACH or DETACH
/// in any form (the filename may be an expression, which the authorizer
/// sees as no filename at all), so no `VACUUM INTO` a new file either (it
/// attaches its target); no pragmas that move SQLite's files elsewhere; no
/// extension loading. Actions the authorizer does not know are denied too.
///
/// A plain `VACUUM` (the runbooks' disk-space recovery) attaches a nameless
/// temporary database of its own, which the authorizer cannot tell from
/// `ATTACH (expression)`: `exec` runs a statement that is exactly `VACUUM`
/// (or `VACUUM main`) inside a [`VacuumWindow`], the only time such an
/// attach is allowed. No other SQL runs in that window, so none can use it.
fn confine(
    conn: &Connection,
    fail: impl Fn(rusqlite::Error) -> Error,
) -> Result<Arc<AtomicBool>, Error> {
    use rusqlite::config::DbConfig;
    use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
    use rusqlite::limits::Limit;
    let vacuuming = Arc::new(AtomicBool::new(false));
    let window = vacuuming.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| match ctx.action {
        AuthAction::Attach { filename } if filename.is_empty() && window.load(Ordering::SeqCst) => {
            Authorization::Allow
        }
        AuthAction::Detach { .. } if window.load(Ordering::SeqCst) => Authorization::Allow,
        AuthAction::Attach { .. } | AuthAction::Detach { .. } | AuthAction::Unknown { .. } => {
            Authorization::Deny
        }
        AuthAction::Pragma { pragma_name, .. }
            if pragma_name.eq_ignore_ascii_case("temp_store_directory")
                || pragma_name.eq_ignore_ascii_case("data_store_directory") =>
        {
            Authorization::Deny
        }
        AuthAction::Function { function_name }
            if function_name.eq_ignore_ascii_case("load_extension")
                || function_name.eq_ignore_ascii_case("fts3_tokenizer") =>
        {
            Authorization::Deny
        }
        _ => Authorization::Allow,
    }));
    // Belt and braces: even a path the authorizer missed cannot attach.
    conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)
        .map_err(&fail)?;
    // No functions with side effects from inside the schema (a view or
    // trigger in the file runs as the plugin's own SQL would). Defensive
    // mode stays off: it guards a file against its own writer, which is the
    // plugin the sqlite grant names, and it would forbid the runbooks'
    // `writable_schema` removal of a virtual table whose module is gone
    // (abathur's milestone-3 rollback of sqlite-vss tables).
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)
        .map_err(&fail)?;
    Ok(vacuuming)
}

/// Whether one statement of a batch is a plain VACUUM of the main database
/// (not `VACUUM INTO`, not another schema).
fn is_plain_vacuum(stmt_sql: &str) -> bool {
    let words: Vec<String> = stmt_sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    matches!(
        words
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
        ["vacuum"] | ["vacuum", "main"] | ["vacuum", "\"main\""]
    )
}

/// While alive, the connection may attach the nameless temporary database
/// a plain VACUUM needs (one attached database, no name).
struct VacuumWindow<'a> {
    conn: &'a Connection,
    flag: &'a AtomicBool,
}

impl<'a> VacuumWindow<'a> {
    fn open(conn: &'a Connection, flag: &'a AtomicBool) -> Self {
        conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_ATTACHED, 1)
            .ok();
        flag.store(true, Ordering::SeqCst);
        Self { conn, flag }
    }
}

impl Drop for VacuumWindow<'_> {
    fn drop(&mut self) {
        self.flag.store(false, Ordering::SeqCst);
        self.conn
            .set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_ATTACHED, 0)
            .ok();
    }
}

/// What to add to an error that `confine` caused.
fn confinement_hint(e: &rusqlite::Error) -> &'static str {
    let text = e.to_string();
    if text.contains("not authorized")
        || text.contains("authorization denied")
        || text.contains("too many attached databases")
    {
        " (rewind refuses ATTACH, DETACH, VACUUM, extension loading and pragmas that move files: SQL stays inside the granted database)"
    } else {
        ""
    }
}

fn open_read_write(p: &Path) -> Result<(Connection, Arc<AtomicBool>), Error> {
    let fail =
        |e: rusqlite::Error| Error::failed(format!("cannot open database {}: {e}", p.display()));
    let conn = Connection::open(p).map_err(fail)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
    let vacuuming = confine(&conn, fail)?;
    Ok((conn, vacuuming))
}

/// The start of a statement for messages: whitespace collapsed, at most
/// `max` characters.
fn preview(sql: &str, max: usize) -> String {
    let flat = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        let mut s: String = flat.chars().take(max).collect();
        s.push_str("...");
        s
    } else {
        flat
    }
}

/// A read-only query with positional parameters (`?1`, `?2` ... or `?`).
pub fn query(env: &PluginEnv, db: &str, sql: &str, params: Vec<SqlValue>) -> Result<Rows, Error> {
    let p = env.sandbox.check_sqlite(db)?;
    let conn = open_read_only(&p)?;
    let cap = env.limits.query_bytes;
    let too_big = |what: String| {
        Error::invalid(format!(
            "query on {} returns more than the sqlite-query limit of {} ({what}); select less (LIMIT, fewer or shorter columns) or raise [limits] query_bytes in the runbook: {}",
            p.display(),
            crate::runtime::show_bytes(cap),
            preview(sql, 80)
        ))
    };
    // SQLite itself holds a whole value while a row is stepped: its own
    // length limit keeps one huge value from reaching memory at all.
    let length_limit = i32::try_from(cap.saturating_add(1)).unwrap_or(i32::MAX);
    conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, length_limit)
        .map_err(|e| Error::failed(format!("cannot open database {}: {e}", p.display())))?;
    let mut stmt = conn.prepare(sql).map_err(|e| {
        Error::invalid(format!(
            "bad SQL for {}: {e}{}: {}",
            p.display(),
            confinement_hint(&e),
            preview(sql, 80)
        ))
    })?;
    if !stmt.readonly() {
        return Err(Error::invalid(format!(
            "sqlite-query runs only statements that read; use sqlite-exec to change {}: {}",
            p.display(),
            preview(sql, 80)
        )));
    }
    let expected = stmt.parameter_count();
    if expected != params.len() {
        return Err(Error::invalid(format!(
            "the query takes {expected} parameters, {} given: {}",
            params.len(),
            preview(sql, 80)
        )));
    }
    let columns: Vec<String> = stmt
        .column_names()
        .into_iter()
        .map(str::to_string)
        .collect();
    let failed = |e: rusqlite::Error| match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::TooBig => {
            too_big("one value is larger".into())
        }
        e => Error::failed(format!(
            "query on {} failed: {e}{}",
            p.display(),
            confinement_hint(&e)
        )),
    };
    let mut rows = stmt
        .query(rusqlite::params_from_iter(params.into_iter().map(to_value)))
        .map_err(failed)?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while let Some(row) = rows.next().map_err(failed)? {
        if out.len() == ROW_CAP {
            return Err(Error::invalid(format!(
                "query on {} returns more than {ROW_CAP} rows; add a LIMIT: {}",
                p.display(),
                preview(sql, 80)
            )));
        }
        // Counted before each value is copied, so the host never holds
        // more than the cap (plus one value SQLite's length limit bounds).
        let mut vals = Vec::with_capacity(columns.len());
        for i in 0..columns.len() {
            let v = row.get_ref(i).map_err(failed)?;
            bytes = bytes.saturating_add(match v {
                ValueRef::Text(t) | ValueRef::Blob(t) => t.len(),
                _ => 8,
            });
            if bytes > cap {
                return Err(too_big(format!("{} rows and more", out.len() + 1)));
            }
            vals.push(from_value(v));
        }
        out.push(vals);
    }
    Ok(Rows { columns, rows: out })
}

/// Run a batch of statements in one transaction; returns the rows changed.
/// The database is created if it does not exist.
pub fn exec(env: &PluginEnv, db: &str, sql: &str) -> Result<u64, Error> {
    let p = env.sandbox.check_sqlite(db)?;
    if sql.trim().is_empty() {
        return Err(Error::invalid("empty SQL"));
    }
    if !env.side_effect(format!(
        "execute SQL on {}: {}",
        p.display(),
        preview(sql, 80)
    ))? {
        return Ok(0);
    }
    let (mut conn, vacuuming) = open_read_write(&p)?;
    let before = conn.total_changes();
    let failed = |e: rusqlite::Error| {
        Error::failed(format!(
            "SQL on {} failed, nothing was changed: {e}{}: {}",
            p.display(),
            confinement_hint(&e),
            preview(sql, 80)
        ))
    };
    let tx = conn.transaction().map_err(failed)?;
    // Statement by statement (like execute_batch), so that a plain VACUUM
    // runs in its window and nothing else does.
    {
        let mut batch = rusqlite::Batch::new(&tx, sql);
        while let Some(mut stmt) = batch.next().map_err(failed)? {
            let vacuum = stmt
                .expanded_sql()
                .is_some_and(|text| is_plain_vacuum(&text));
            let _window = vacuum.then(|| VacuumWindow::open(&tx, &vacuuming));
            // One step, as execute_batch does: rows a statement returns (a
            // PRAGMA's) are not wanted here.
            stmt.raw_query().next().map_err(failed)?;
        }
    }
    tx.commit().map_err(failed)?;
    Ok(conn.total_changes().saturating_sub(before))
}

/// Online backup of `db` into `target`: copied into a temporary file next
/// to the target, fsynced and renamed into place. Returns the size in bytes
/// (in dry runs, the size of the database file).
pub fn backup(env: &PluginEnv, db: &str, target: &str) -> Result<u64, Error> {
    let src = env.sandbox.check_sqlite(db)?;
    let dst = env.sandbox.check_write(target)?;
    existing_db(&src)?;
    if src == dst {
        return Err(Error::invalid(format!(
            "cannot back up {} onto itself",
            src.display()
        )));
    }
    let (Some(parent), Some(name)) = (dst.parent(), dst.file_name()) else {
        return Err(Error::invalid(format!(
            "cannot back up to {}: not a file path",
            dst.display()
        )));
    };
    if dst.is_dir() {
        return Err(Error::failed(format!(
            "cannot back up to {}: Is a directory",
            dst.display()
        )));
    }
    if !env.side_effect(format!(
        "back up database {} to {}",
        src.display(),
        dst.display()
    ))? {
        return fs::metadata(&src)
            .map(|m| m.len())
            .map_err(|e| io_failed("read", &src, &e));
    }
    let from = open_read_only(&src)?;
    fs::create_dir_all(parent).map_err(|e| io_failed("create directory", parent, &e))?;
    let name: String = name.to_string_lossy().chars().take(64).collect();
    let prefix = format!(".{name}.rewind-");
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(parent)
        .map_err(|e| io_failed("create a temporary file in", parent, &e))?;
    let failed = |e: rusqlite::Error| {
        Error::failed(format!(
            "cannot back up {} to {}: {e}",
            src.display(),
            dst.display()
        ))
    };
    {
        let (mut to, _) = open_read_write(tmp.path())?;
        rusqlite::backup::Backup::new(&from, &mut to)
            .and_then(|b| b.run_to_completion(256, Duration::from_millis(5), None))
            .map_err(failed)?;
        to.close().map_err(|(_, e)| failed(e))?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| io_failed("write", &dst, &e))?;
    if let Ok(md) = fs::metadata(&dst) {
        let _ = tmp.as_file().set_permissions(md.permissions());
    }
    // A journal or WAL left next to an older file at the target belongs to
    // that file; SQLite would apply it to the new one.
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut side = dst.clone().into_os_string();
        side.push(suffix);
        let side = PathBuf::from(side);
        match fs::remove_file(&side) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_failed("remove", &side, &e)),
        }
    }
    tmp.persist(&dst)
        .map_err(|e| io_failed("replace", &dst, &e.error))?;
    let _ = fsync_dir(parent);
    fs::metadata(&dst)
        .map(|m| m.len())
        .map_err(|e| io_failed("read", &dst, &e))
}
