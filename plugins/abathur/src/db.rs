//! SQLite through the host: checks, schema, and rewind's own reader for
//! corrupted databases.

use rewind_sdk::prelude::*;
use rewind_sdk::storage::{SqlValue, sqlite_exec, sqlite_query};

/// Quote an identifier for SQL.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn text(v: &SqlValue) -> String {
    match v {
        SqlValue::Null => "NULL".into(),
        SqlValue::Integer(i) => i.to_string(),
        SqlValue::Real(f) => f.to_string(),
        SqlValue::Text(s) => s.clone(),
        SqlValue::Blob(b) => format!("<{} bytes>", b.len()),
    }
}

fn int(v: &SqlValue) -> i64 {
    match v {
        SqlValue::Integer(i) => *i,
        SqlValue::Real(f) => *f as i64,
        SqlValue::Text(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

/// A literal for an INSERT.
fn literal(v: &SqlValue) -> String {
    match v {
        SqlValue::Null => "NULL".into(),
        SqlValue::Integer(i) => i.to_string(),
        SqlValue::Real(f) if f.is_finite() => format!("{f:?}"),
        SqlValue::Real(f) if *f > 0.0 => "9e999".into(),
        SqlValue::Real(f) if *f < 0.0 => "-9e999".into(),
        SqlValue::Real(_) => "NULL".into(),
        SqlValue::Text(s) => format!("'{}'", s.replace('\'', "''")),
        SqlValue::Blob(b) => {
            let mut s = String::with_capacity(b.len() * 2 + 3);
            s.push_str("X'");
            for byte in b {
                s.push_str(&format!("{byte:02x}"));
            }
            s.push('\'');
            s
        }
    }
}

/// One column of text rows.
pub fn column(db: &str, sql: &str) -> Result<Vec<String>, Error> {
    Ok(sqlite_query(db, sql, &[])?
        .rows
        .iter()
        .filter_map(|r| r.first().map(text))
        .collect())
}

pub fn count(db: &str, sql: &str) -> Result<i64, Error> {
    Ok(sqlite_query(db, sql, &[])?
        .rows
        .first()
        .and_then(|r| r.first())
        .map(int)
        .unwrap_or(0))
}

/// `PRAGMA integrity_check`: `["ok"]` when intact, else its first messages.
pub fn integrity(db: &str) -> Result<Vec<String>, Error> {
    column(db, "PRAGMA integrity_check(20)")
}

/// The integrity check as one line: `ok`, or what failed (also when the
/// database cannot be read at all).
pub fn integrity_line(db: &str) -> String {
    match integrity(db) {
        Ok(v) if v == ["ok"] => "ok".into(),
        Ok(v) => {
            let mut s = v.iter().take(3).cloned().collect::<Vec<_>>().join("; ");
            if v.len() > 3 {
                s.push_str(&format!("; ... ({} messages)", v.len()));
            }
            s
        }
        Err(e) => format!("cannot check: {e}"),
    }
}

/// `PRAGMA foreign_key_check`: violations per table.
pub fn fk_violations(db: &str) -> Result<Vec<(String, i64)>, Error> {
    let rows = sqlite_query(db, "PRAGMA foreign_key_check", &[])?;
    let mut out: Vec<(String, i64)> = Vec::new();
    for r in rows.rows {
        let t = r.first().map(text).unwrap_or_default();
        match out.iter_mut().find(|(n, _)| *n == t) {
            Some((_, c)) => *c += 1,
            None => out.push((t, 1)),
        }
    }
    Ok(out)
}

pub fn fk_line(v: &[(String, i64)]) -> String {
    let n: i64 = v.iter().map(|(_, c)| c).sum();
    if n == 0 {
        "0".into()
    } else {
        let per: Vec<String> = v.iter().map(|(t, c)| format!("{t}: {c}")).collect();
        format!("{n} ({})", per.join(", "))
    }
}

/// Names of the schema objects of one type.
pub fn objects(db: &str, kind: &str) -> Result<Vec<String>, Error> {
    Ok(sqlite_query(
        db,
        "SELECT name FROM sqlite_master WHERE type = ?1 ORDER BY name",
        &[SqlValue::Text(kind.into())],
    )?
    .rows
    .iter()
    .filter_map(|r| r.first().map(text))
    .collect())
}

/// Which of `want` are missing from `have`.
pub fn missing<'a>(want: &'a [String], have: &[String]) -> Vec<&'a str> {
    want.iter()
        .filter(|w| !have.contains(w))
        .map(String::as_str)
        .collect()
}

/// The columns of a table.
pub fn columns(db: &str, table: &str) -> Result<Vec<String>, Error> {
    Ok(
        sqlite_query(db, &format!("PRAGMA table_info({})", ident(table)), &[])?
            .rows
            .iter()
            .filter_map(|r| r.get(1).map(text))
            .collect(),
    )
}

/// Row counts of the tables that can be counted: `(table, Ok(n) | Err(msg))`.
pub fn row_counts(db: &str, tables: &[String]) -> Vec<(String, Result<i64, String>)> {
    tables
        .iter()
        .map(|t| {
            (
                t.clone(),
                count(db, &format!("SELECT count(*) FROM {}", ident(t))).map_err(|e| e.to_string()),
            )
        })
        .collect()
}

/// Drop a table; a virtual table whose module (sqlite-vss) is not loaded
/// cannot be dropped with DROP TABLE, so its schema row is removed instead.
/// Returns how it was dropped, or None when it did not exist.
pub fn drop_table(db: &str, table: &str) -> Result<Option<&'static str>, Error> {
    let exists = count(
        db,
        &format!(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{}'",
            table.replace('\'', "''")
        ),
    )? > 0;
    if !exists {
        return Ok(None);
    }
    match sqlite_exec(
        db,
        &format!(
            "COMMIT; PRAGMA foreign_keys = OFF; BEGIN; DROP TABLE IF EXISTS {}",
            ident(table)
        ),
    ) {
        Ok(_) => Ok(Some("dropped")),
        Err(Error::Failed(m)) if m.contains("no such module") => {
            sqlite_exec(
                db,
                &format!(
                    "PRAGMA writable_schema = ON; DELETE FROM sqlite_master WHERE type = 'table' AND name = '{}'; PRAGMA writable_schema = OFF;",
                    table.replace('\'', "''")
                ),
            )?;
            Ok(Some("removed from the schema (its module is not loaded)"))
        }
        Err(e) => Err(e),
    }
}

/// What rewind's reader salvaged from one table.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Salvaged {
    pub table: String,
    pub rows: u64,
    /// Rowid ranges that could not be read.
    pub lost_ranges: u64,
    pub error: Option<String>,
}

/// Copy what can be read from `src` (possibly corrupted) into `dst`, a new
/// database: the schema, then each table's rows by rowid ranges, halving a
/// range that cannot be read until the unreadable rows are isolated, then
/// the indexes and triggers. Virtual tables (whose modules the host does
/// not load) are left out.
pub fn salvage(src: &str, dst: &str) -> Result<Vec<Salvaged>> {
    let schema = sqlite_query(
        src,
        "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid",
        &[],
    )
    .context("reading the schema of the corrupted database")?;
    let entries: Vec<(String, String, String)> = schema
        .rows
        .iter()
        .map(|r| (text(&r[0]), text(&r[1]), text(&r[2])))
        .collect();
    let is_virtual = |sql: &str| {
        sql.trim_start()
            .to_ascii_uppercase()
            .starts_with("CREATE VIRTUAL")
    };
    let tables: Vec<&(String, String, String)> = entries
        .iter()
        .filter(|(t, n, sql)| t == "table" && !n.starts_with("sqlite_") && !is_virtual(sql))
        .collect();
    let ddl: Vec<String> = tables.iter().map(|(_, _, sql)| format!("{sql};")).collect();
    if ddl.is_empty() {
        bail!("no readable tables in the schema of {src}");
    }
    sqlite_exec(dst, &ddl.join("\n")).context("creating the tables in the new database")?;
    let mut out = Vec::new();
    for (_, name, _) in &tables {
        out.push(salvage_table(src, dst, name));
    }
    let mut later = Vec::new();
    for (t, n, sql) in &entries {
        if (t == "index" || t == "trigger" || t == "view")
            && !n.starts_with("sqlite_")
            && let Err(e) = sqlite_exec(dst, &format!("{sql};"))
        {
            later.push(format!("{n}: {e}"));
        }
    }
    if !later.is_empty() {
        log::warn(format_args!("not re-created: {}", later.join("; ")));
    }
    Ok(out)
}

const CHUNK: i64 = 2000;

fn salvage_table(src: &str, dst: &str, table: &str) -> Salvaged {
    let mut s = Salvaged {
        table: table.into(),
        rows: 0,
        lost_ranges: 0,
        error: None,
    };
    let q = format!(
        "SELECT rowid AS \"rowid\", * FROM {} WHERE rowid >= ?1 AND rowid <= ?2 ORDER BY rowid LIMIT {CHUNK}",
        ident(table)
    );
    // Ranges still to read, in order; a failing range is halved.
    let mut todo: Vec<(i64, i64)> = vec![(i64::MIN, i64::MAX)];
    let mut failures = 0u32;
    while let Some((lo, hi)) = todo.pop() {
        match sqlite_query(src, &q, &[SqlValue::Integer(lo), SqlValue::Integer(hi)]) {
            Ok(rows) => {
                let n = rows.rows.len();
                let last = rows.rows.last().map(|r| int(&r[0]));
                if n > 0
                    && let Err(e) = insert(dst, table, &rows.columns, &rows.rows)
                {
                    s.error = Some(format!("writing rows: {e}"));
                    return s;
                }
                s.rows += n as u64;
                if n as i64 == CHUNK
                    && let Some(last) = last
                    && last < hi
                {
                    todo.push((last + 1, hi));
                }
            }
            Err(Error::Invalid(m)) => {
                // e.g. a WITHOUT ROWID table: no rowid to page by.
                s.error = Some(m);
                return s;
            }
            Err(_) => {
                failures += 1;
                if failures > 4000 {
                    s.error = Some("gave up after 4000 unreadable ranges".into());
                    s.lost_ranges += 1 + todo.len() as u64;
                    return s;
                }
                if lo == hi {
                    s.lost_ranges += 1;
                    continue;
                }
                let mid = lo + ((hi as i128 - lo as i128) / 2) as i64;
                // Lower half first: pushed last.
                todo.push((mid + 1, hi));
                todo.push((lo, mid));
            }
        }
    }
    s
}

fn insert(dst: &str, table: &str, cols: &[String], rows: &[Vec<SqlValue>]) -> Result<u64, Error> {
    let names: Vec<String> = cols.iter().map(|c| ident(c)).collect();
    let mut sql = String::from("COMMIT; PRAGMA foreign_keys = OFF; BEGIN;\n");
    for chunk in rows.chunks(200) {
        sql.push_str(&format!(
            "INSERT OR REPLACE INTO {}({}) VALUES ",
            ident(table),
            names.join(",")
        ));
        let vals: Vec<String> = chunk
            .iter()
            .map(|r| format!("({})", r.iter().map(literal).collect::<Vec<_>>().join(",")))
            .collect();
        sql.push_str(&vals.join(","));
        sql.push_str(";\n");
    }
    sqlite_exec(dst, &sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        assert_eq!(literal(&SqlValue::Text("it's".into())), "'it''s'");
        assert_eq!(literal(&SqlValue::Blob(vec![0, 255])), "X'00ff'");
        assert_eq!(literal(&SqlValue::Real(1.0)), "1.0");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }
}
