//! Backups as in the runbook's `abathur-backup.sh`: checkpoint the WAL,
//! copy the database (an online backup through the host), compress it with
//! the configured command (`gzip`), verify the compressed copy by
//! decompressing it and running `PRAGMA integrity_check` on the restored
//! bytes, and prune backups older than the retention.

use rewind_sdk::prelude::*;
use rewind_sdk::storage::{self as st, EntryKind};

use crate::config::Config;
use crate::db;

use rewind_sdk::clock;

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    u64::try_from(clock::now_ms()).unwrap_or(0)
}

fn at(ms: u64) -> clock::Timestamp {
    clock::at_ms(i64::try_from(ms).unwrap_or(0))
}

/// `20251010_020000` (`date +%Y%m%d_%H%M%S`).
pub fn stamp_compact(ms: u64) -> String {
    clock::format(at(ms), "%Y%m%d_%H%M%S")
}

pub fn file_name(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// A path that does not exist yet: `base`, else `base` with `_2`, `_3` ...
/// before `ext`.
pub fn fresh(base: &str, ext: &str) -> Result<String> {
    let first = format!("{base}{ext}");
    if !st::exists(&first)? {
        return Ok(first);
    }
    for i in 2..1000 {
        let p = format!("{base}_{i}{ext}");
        if !st::exists(&p)? {
            return Ok(p);
        }
    }
    bail!("no free name for {base}{ext}")
}

/// Run a configured command; a non-zero exit is an error with its output.
pub fn run(cfg: &Config, template: &[String], vars: &[(&str, &str)]) -> Result<String> {
    let Some(cmd) = cfg.cmd(template, vars) else {
        bail!("no command configured");
    };
    let out = cmd.run()?;
    if !out.success() {
        bail!(
            "`{}` exited {}: {}",
            cmd.display(),
            out.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "on a signal".into()),
            out.stderr.trim().chars().take(400).collect::<String>()
        );
    }
    Ok(cmd.display())
}

/// A backup in the backup directory.
#[derive(Debug, Clone)]
pub struct Backup {
    pub path: String,
    pub size: u64,
    pub modified_ms: u64,
}

/// `<prefix>*.db.gz` in the backup directory, newest first (`ls -t`).
fn list_prefixed(cfg: &Config, prefix: &str) -> Result<Vec<Backup>> {
    if !st::exists(&cfg.backup_dir)? {
        return Ok(Vec::new());
    }
    let mut out: Vec<Backup> = st::list_dir(&cfg.backup_dir, false)?
        .into_iter()
        .filter(|e| e.kind == EntryKind::File)
        .filter(|e| {
            let n = file_name(&e.path);
            n.starts_with(prefix) && n.ends_with(".db.gz")
        })
        .map(|e| Backup {
            path: e.path,
            size: e.size,
            modified_ms: e.modified_ms,
        })
        .collect();
    out.sort_by(|a, b| {
        b.modified_ms
            .cmp(&a.modified_ms)
            .then_with(|| b.path.cmp(&a.path))
    });
    Ok(out)
}

/// The daily backups (`<backup_prefix>*.db.gz`), newest first.
pub fn list(cfg: &Config) -> Result<Vec<Backup>> {
    list_prefixed(cfg, &cfg.backup_prefix)
}

/// The manual (pre-rollback) backups (`<manual_backup_prefix>*.db.gz`),
/// newest first.
pub fn list_manual(cfg: &Config) -> Result<Vec<Backup>> {
    list_prefixed(cfg, &cfg.manual_backup_prefix)
}

/// Decompress a `.gz` into `target` (a `.db` path): copy it to
/// `target.gz`, run the decompress command on that copy.
pub fn decompress(cfg: &Config, gz: &str, target: &str) -> Result<()> {
    let tmp_gz = format!("{target}.gz");
    for p in [target, &tmp_gz] {
        if st::exists(p)? {
            st::remove(p)?;
        }
    }
    st::copy(gz, &tmp_gz)?;
    let r = run(cfg, &cfg.decompress_command, &[("file", &tmp_gz)]);
    if r.is_err() && st::exists(&tmp_gz)? {
        st::remove(&tmp_gz)?;
    }
    r?;
    if !st::exists(target)? {
        bail!("decompressing {gz} did not produce {target}");
    }
    Ok(())
}

/// "Verify backup integrity": decompress to a temporary file, run
/// `PRAGMA integrity_check` on it, read its schema and count the rows of
/// every table, remove it. What verified, or why it does not.
pub fn verify(cfg: &Config, gz: &str) -> Result<std::result::Result<Verified, String>> {
    let tmp = cfg.verify_tmp();
    if let Err(e) = decompress(cfg, gz, &tmp) {
        return Ok(Err(format!("cannot decompress: {}", e.message())));
    }
    let line = db::integrity_line(&tmp);
    let tables = db::objects(&tmp, "table").unwrap_or_default();
    let indexes = db::objects(&tmp, "index").unwrap_or_default();
    let counts = db::row_counts(&tmp, &tables)
        .into_iter()
        .filter_map(|(t, n)| Some((t, n.ok()?)))
        .collect();
    st::remove(&tmp)?;
    if line == "ok" {
        Ok(Ok(Verified {
            backup: gz.to_string(),
            tables,
            indexes,
            counts,
        }))
    } else {
        Ok(Err(format!("integrity_check: {line}")))
    }
}

/// A backup that verified: its schema and rows, the reference a rollback's
/// result is checked against ("No data loss", "all expected tables and
/// indexes exist").
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Verified {
    pub backup: String,
    pub tables: Vec<String>,
    pub indexes: Vec<String>,
    /// Rows per table (tables that cannot be counted are left out).
    pub counts: Vec<(String, i64)>,
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "integrity ok, {} tables, {} indexes",
            self.tables.len(),
            self.indexes.len()
        )
    }
}

/// The backup a restore would use, when none is configured: the newest
/// daily backup that verifies; a manual (pre-rollback) one only when no
/// daily backup verifies, and then said so. `notes` names what was skipped.
pub fn latest_verified(cfg: &Config) -> Result<(Option<Verified>, Vec<String>)> {
    let mut notes = Vec::new();
    for b in list(cfg)? {
        match verify(cfg, &b.path)? {
            Ok(v) => return Ok((Some(v), notes)),
            Err(why) => notes.push(format!("skipped {}: {why}", file_name(&b.path))),
        }
    }
    for b in list_manual(cfg)? {
        match verify(cfg, &b.path)? {
            Ok(v) => {
                notes.push(format!(
                    "no daily {}*.db.gz verifies: using the manual backup {} (taken before a rollback, of the database as it was then)",
                    cfg.backup_prefix,
                    file_name(&b.path)
                ));
                return Ok((Some(v), notes));
            }
            Err(why) => notes.push(format!("skipped {}: {why}", file_name(&b.path))),
        }
    }
    Ok((None, notes))
}

/// Tables with fewer rows in `db` than in a verified backup's counts
/// (missing tables count as 0 rows): `(table, rows now, rows in backup)`.
/// A recovery that lost rows the backup still has is not a recovery.
pub fn rows_lost(db: &str, backup_counts: &[(String, i64)]) -> Vec<(String, i64, i64)> {
    backup_counts
        .iter()
        .filter_map(|(t, want)| {
            let have =
                db::count(db, &format!("SELECT count(*) FROM {}", db::ident(t))).unwrap_or(0);
            (have < *want).then(|| (t.clone(), have, *want))
        })
        .collect()
}

/// Delete daily backups (and manual ones when `with_manual`) older than
/// `days`, always keeping the newest of each kind (and those in `keep`:
/// the one just taken, the one the incident restores).
/// Returns (deleted paths, bytes freed).
pub fn prune(
    cfg: &Config,
    days: u64,
    keep: &[&str],
    with_manual: bool,
) -> Result<(Vec<String>, u64)> {
    let cutoff = now_ms().saturating_sub(days * 86_400_000);
    let mut all: Vec<(usize, Backup)> = list(cfg)?.into_iter().enumerate().collect();
    if with_manual {
        all.extend(list_manual(cfg)?.into_iter().enumerate());
    }
    let mut deleted = Vec::new();
    let mut freed = 0;
    for (i, b) in &all {
        if *i == 0 || keep.contains(&b.path.as_str()) || b.modified_ms >= cutoff {
            continue;
        }
        st::remove(&b.path)?;
        freed += b.size;
        deleted.push(b.path.clone());
    }
    Ok((deleted, freed))
}

/// A WAL's size and the frames in it (each a page written by a committed
/// or uncommitted transaction not yet checkpointed into the database):
/// `(bytes, frames)`.
pub fn wal_info(db: &str) -> Result<(u64, u64)> {
    let bytes = st::stat(&format!("{db}-wal"))?.map(|e| e.size).unwrap_or(0);
    if bytes <= 32 {
        return Ok((bytes, 0));
    }
    let page = db::count(db, "PRAGMA page_size")
        .ok()
        .filter(|p| *p >= 512)
        .unwrap_or(4096) as u64;
    Ok((bytes, (bytes - 32) / (24 + page)))
}

/// `WAL 123456 bytes (30 frames)`.
pub fn wal_line(bytes: u64, frames: u64) -> String {
    format!("{bytes} bytes ({frames} frames)")
}

/// Bring a WAL's content into the database file and truncate the WAL
/// (`PRAGMA wal_checkpoint(TRUNCATE)`; the host runs batches in a
/// transaction, which a checkpoint cannot run in, so the batch commits
/// first). Returns the WAL size before and after.
pub fn checkpoint(cfg: &Config) -> Result<(u64, u64)> {
    let size = |p: &str| -> Result<u64> { Ok(st::stat(p)?.map(|e| e.size).unwrap_or(0)) };
    let before = size(&cfg.wal())?;
    st::sqlite_exec(
        &cfg.db_path,
        "COMMIT; PRAGMA wal_checkpoint(TRUNCATE); BEGIN;",
    )?;
    Ok((before, size(&cfg.wal())?))
}

/// The runbook's "Manual Backup Procedure" ("before critical
/// operations"): checkpoint, copy to `<manual_backup_prefix><YYYYmmdd_HHMMSS>.db`,
/// gzip, verify. Unlike the daily script it prunes nothing. It is a copy of the failing database, so it is named as a manual
/// backup: no restore takes it for the last good daily one.
pub fn take(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let ms = now_ms();
    let (wal_before, wal_after) = checkpoint(cfg).within("checkpointing the WAL")?;
    if ctx.executes() {
        st::make_dir(&cfg.backup_dir)?;
    }
    let base = cfg.in_backup_dir(&format!(
        "{}{}",
        cfg.manual_backup_prefix,
        stamp_compact(ms)
    ));
    let db_copy = fresh(&base, ".db")?;
    let db_copy = if st::exists(&format!("{db_copy}.gz"))? {
        fresh(&format!("{base}_b"), ".db")?
    } else {
        db_copy
    };
    let bytes = st::sqlite_backup(&cfg.db_path, &db_copy).context("online backup")?;
    let compress =
        run(cfg, &cfg.compress_command, &[("file", &db_copy)]).within("compressing the backup")?;
    let gz = format!("{db_copy}.gz");
    if !ctx.executes() {
        return Ok(StepOutcome::ok(format!(
            "would checkpoint the WAL ({wal_before} bytes), back up {} ({bytes} bytes) to {db_copy}, run `{compress}`, verify {gz} (integrity check on the decompressed copy)",
            cfg.db_path
        )));
    }
    let gz_size = st::stat(&gz)?
        .map(|e| e.size)
        .ok_or_else(|| Failure::new(format!("`{compress}` did not produce {gz}")))?;
    match verify(cfg, &gz)? {
        Ok(what) => {
            ctx_set(ctx, "backup", &gz)?;
            Ok(StepOutcome::ok(format!(
                "WAL checkpointed ({wal_before} -> {wal_after} bytes); manual backup {gz} ({bytes} bytes, {gz_size} compressed) verified: {what}"
            ))
            .with_findings(vec![Finding::equals(
                "backup integrity_check (decompressed copy)",
                "ok",
                "ok",
            )]))
        }
        Err(why) => {
            // "ERROR: Backup integrity check failed": keep nothing unverified.
            st::remove(&gz)?;
            Ok(StepOutcome::failed(format!(
                "backup {gz} failed verification and was removed: {why}"
            ))
            .with_findings(vec![Finding::equals(
                "backup integrity_check (decompressed copy)",
                why,
                "ok",
            )]))
        }
    }
}

pub fn ctx_set(ctx: &Context, key: &str, value: &str) -> Result<()> {
    st::set(&ctx.run_key(key), value)?;
    Ok(())
}

pub fn ctx_get(ctx: &Context, key: &str) -> Result<Option<String>> {
    Ok(st::get(&ctx.run_key(key))?)
}

/// `context` for results that already hold a [`Failure`].
pub trait Within<T> {
    fn within(self, what: impl std::fmt::Display) -> Result<T>;
}

impl<T> Within<T> for Result<T> {
    fn within(self, what: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| Failure::new(format!("{what}: {}", e.message())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps() {
        // 2025-10-10 02:00:00 UTC
        let ms = 1_760_061_600_000;
        assert_eq!(stamp_compact(ms + 61_000), "20251010_020101");
        assert_eq!(stamp_compact(951_782_400_000), "20000229_000000");
    }
}
