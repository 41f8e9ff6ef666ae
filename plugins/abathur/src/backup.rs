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

/// `2025-10-10_02-00-00` (the daily script's `date +%Y-%m-%d_%H-%M-%S`).
pub fn stamp_dashed(ms: u64) -> String {
    clock::format(at(ms), "%Y-%m-%d_%H-%M-%S")
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

/// `<prefix>*.db.gz` in the backup directory, newest first.
pub fn list(cfg: &Config) -> Result<Vec<Backup>> {
    if !st::exists(&cfg.backup_dir)? {
        return Ok(Vec::new());
    }
    let mut out: Vec<Backup> = st::list_dir(&cfg.backup_dir, false)?
        .into_iter()
        .filter(|e| e.kind == EntryKind::File)
        .filter(|e| {
            let n = file_name(&e.path);
            n.starts_with(&cfg.backup_prefix) && n.ends_with(".db.gz")
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
/// `PRAGMA integrity_check` on it, count the rows of every table, remove
/// it. What verified, or why it does not.
pub fn verify(cfg: &Config, gz: &str) -> Result<std::result::Result<Verified, String>> {
    let tmp = cfg.verify_tmp();
    if let Err(e) = decompress(cfg, gz, &tmp) {
        return Ok(Err(format!("cannot decompress: {}", e.message())));
    }
    let line = db::integrity_line(&tmp);
    let tables = db::objects(&tmp, "table").unwrap_or_default();
    let counts = db::row_counts(&tmp, &tables)
        .into_iter()
        .filter_map(|(t, n)| Some((t, n.ok()?)))
        .collect();
    st::remove(&tmp)?;
    if line == "ok" {
        Ok(Ok(Verified {
            tables: tables.len(),
            counts,
        }))
    } else {
        Ok(Err(format!("integrity_check: {line}")))
    }
}

/// A backup that verified.
pub struct Verified {
    pub tables: usize,
    /// Rows per table (tables that cannot be counted are left out).
    pub counts: Vec<(String, i64)>,
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "integrity ok, {} tables", self.tables)
    }
}

/// A backup and what verified of it.
pub type VerifiedBackup = (Backup, Verified);

/// The newest backup that verifies (with what verified), and the ones
/// that did not.
pub fn latest_verified(cfg: &Config) -> Result<(Option<VerifiedBackup>, Vec<String>)> {
    let mut rejected = Vec::new();
    for b in list(cfg)? {
        match verify(cfg, &b.path)? {
            Ok(v) => return Ok((Some((b, v)), rejected)),
            Err(why) => rejected.push(format!("{}: {why}", file_name(&b.path))),
        }
    }
    Ok((None, rejected))
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

/// Delete backups older than `days`, always keeping the newest one (and
/// those in `keep`: the one just taken, the one the incident restores).
/// Returns (deleted paths, bytes freed).
pub fn prune(cfg: &Config, days: u64, keep: &[&str]) -> Result<(Vec<String>, u64)> {
    let cutoff = now_ms().saturating_sub(days * 86_400_000);
    let all = list(cfg)?;
    let mut deleted = Vec::new();
    let mut freed = 0;
    for (i, b) in all.iter().enumerate() {
        if i == 0 || keep.contains(&b.path.as_str()) || b.modified_ms >= cutoff {
            continue;
        }
        st::remove(&b.path)?;
        freed += b.size;
        deleted.push(b.path.clone());
    }
    Ok((deleted, freed))
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

/// The whole backup procedure. Returns a one-line report.
pub fn take(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let ms = now_ms();
    let (wal_before, wal_after) = checkpoint(cfg).within("checkpointing the WAL")?;
    if ctx.executes() {
        st::make_dir(&cfg.backup_dir)?;
    }
    let base = cfg.in_backup_dir(&format!("{}{}", cfg.backup_prefix, stamp_dashed(ms)));
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
            "would checkpoint the WAL ({wal_before} bytes), back up {} ({bytes} bytes) to {db_copy}, run `{compress}`, verify {gz} (integrity check on the decompressed copy) and prune backups older than {} days",
            cfg.db_path, cfg.retention_days
        )));
    }
    let gz_size = st::stat(&gz)?
        .map(|e| e.size)
        .ok_or_else(|| Failure::new(format!("`{compress}` did not produce {gz}")))?;
    match verify(cfg, &gz)? {
        Ok(what) => {
            // Never the backup this incident restores (pinned by a
            // restore of an earlier run of it).
            let pinned = ctx.pinned("restore_backup")?;
            let mut keep = vec![gz.as_str()];
            keep.extend(pinned.as_deref());
            let (pruned, freed) = prune(cfg, cfg.retention_days, &keep)?;
            ctx_set(ctx, "backup", &gz)?;
            Ok(StepOutcome::ok(format!(
                "WAL checkpointed ({wal_before} -> {wal_after} bytes); backup {gz} ({bytes} bytes, {gz_size} compressed) verified: {what}; pruned {} backups older than {} days ({freed} bytes)",
                pruned.len(),
                cfg.retention_days
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
        assert_eq!(stamp_dashed(ms), "2025-10-10_02-00-00");
        assert_eq!(stamp_compact(ms + 61_000), "20251010_020101");
        assert_eq!(stamp_dashed(951_782_400_000), "2000-02-29_00-00-00");
    }
}
