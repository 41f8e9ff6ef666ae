//! The runbook's "Rollback Decision Criteria": the health endpoint, the
//! app log (error rates over windows cut into intervals, feature failure
//! rates, durations), the memory database (integrity, rows against the
//! pre-deployment backup) and git, read from its files. Each measurement is
//! a finding (observed vs threshold) and, when it breaks a criterion, a
//! reason with its severity.

use rewind_sdk::prelude::*;
use rewind_sdk::report::num;
use rewind_sdk::storage::{EntryKind, SqlValue};
use serde_json::Value;

use crate::config::{Config, file_name};
use crate::decide::*;
use crate::logscan::{self, Stats};
use crate::state::*;
use crate::versions;

/// One answer of the health endpoint.
pub(crate) struct Answer {
    pub(crate) r: health::ProbeResult,
    pub(crate) json: Option<Value>,
}

impl Answer {
    pub(crate) fn get(cfg: &Config) -> Result<Self> {
        let r = cfg.health_probe().probe()?;
        let json = serde_json::from_str(&r.body).ok();
        Ok(Self { r, json })
    }

    pub(crate) fn field(&self, name: &str) -> Option<String> {
        match self.json.as_ref()?.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            v => Some(v.to_string()),
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self.r.status {
            Some(s) => {
                let why = self
                    .field("error")
                    .or_else(|| self.field("status"))
                    .unwrap_or_else(|| short(self.r.body.trim(), 120));
                format!("answered {s} ({why}) in {} ms", num(self.r.latency_ms()))
            }
            None => format!("did not answer ({})", self.r.detail),
        }
    }
}

/// How the log was measured when it could not be cut into time windows:
/// over its last `lines` lines, `untimed` of them entries without a
/// timestamp.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tail {
    pub(crate) lines: usize,
    pub(crate) untimed: usize,
    /// The log has no timestamp at all.
    pub(crate) none: bool,
}

/// The error rate windows of the log: (critical window, major window),
/// and `Some(tail)` when they were measured over its last lines instead:
/// the log has no timestamps, or its recent lines have entries without
/// one (an app that stamps its start and `console.log`s its work). Those
/// lines cannot be placed in time, and dropping them would read as "0%
/// errors"; the tail is one interval (no duration can be told), so a rate
/// above a threshold counts as sustained.
pub(crate) fn log_windows(cfg: &Config, text: &str, now: i64) -> (Stats, Stats, Option<Tail>) {
    let mut ev = logscan::events(text, cfg.log_utc_offset_min);
    let m = cfg.matcher();
    let (mut buckets, mut tail) = (cfg.window_buckets, None);
    let untimed = logscan::untimed_entries(text, cfg.untimed_tail_lines, cfg.log_utc_offset_min);
    if ev.is_empty() || untimed > 0 {
        let none = ev.is_empty();
        ev = logscan::tail(text, cfg.untimed_tail_lines, now);
        if !ev.is_empty() {
            buckets = 1;
            tail = Some(Tail {
                lines: ev.len(),
                untimed,
                none,
            });
        }
    }
    (
        logscan::window(&ev, now, (cfg.critical_window_s * 1000) as i64, buckets, &m),
        logscan::window(&ev, now, (cfg.major_window_s * 1000) as i64, buckets, &m),
        tail,
    )
}

/// How a window is named in findings: "last 5 min", or the lines it was
/// measured over when the log could not be cut into time windows.
pub(crate) fn window_name(tail: Option<Tail>, window_s: u64) -> String {
    match tail {
        Some(t) if t.none => format!("last {} lines (the log has no timestamps)", t.lines),
        Some(t) => format!(
            "last {} lines ({} entries without a timestamp: no time window)",
            t.lines, t.untimed
        ),
        None => format!("last {}", minutes(window_s)),
    }
}

/// Features whose failure rate breaks the "partial failure" line.
pub(crate) fn failing_features(cfg: &Config, crit: &Stats) -> Vec<String> {
    cfg.features
        .iter()
        .zip(&crit.features)
        .filter(|(_, (n, e))| {
            *n >= cfg.min_feature_events && logscan::pct(*e, *n) > cfg.partial_failure_pct
        })
        .map(|(f, _)| f.name.clone())
        .collect()
}

pub(crate) struct Reason {
    pub(crate) severity: Severity,
    pub(crate) data: bool,
    pub(crate) what: String,
}

pub(crate) fn reason(severity: Severity, what: impl Into<String>) -> Reason {
    Reason {
        severity,
        data: false,
        what: what.into(),
    }
}

pub(crate) fn rank(s: Severity) -> u8 {
    match s {
        Severity::None => 0,
        Severity::Minor => 1,
        Severity::Major => 2,
        Severity::Critical => 3,
    }
}

pub(crate) fn assess_log(
    cfg: &Config,
    now: i64,
    findings: &mut Vec<Finding>,
    reasons: &mut Vec<Reason>,
    affected: &mut Vec<String>,
) -> Result<()> {
    let Some(text) = read_opt(&cfg.log_file)? else {
        findings.push(Finding::new(
            format!("application log {}", cfg.log_file),
            "missing",
            "present (error rates are measured from it)",
            false,
        ));
        return Ok(());
    };
    let (crit, major, untimed) = log_windows(cfg, &text, now);
    let n = crit.buckets.len();

    // Error rate > 5% for > 5 minutes.
    let above = crit.buckets_above(cfg.critical_error_rate_pct, true);
    let sustained = crit.sustained(cfg.critical_error_rate_pct, true);
    findings.push(Finding::new(
        format!(
            "error rate, {} ({})",
            window_name(untimed, cfg.critical_window_s),
            cfg.log_file
        ),
        format!(
            "{}% ({} of {} lines); above {}% in {above} of {n} intervals",
            num(crit.rate()),
            crit.errors,
            crit.events,
            num(cfg.critical_error_rate_pct)
        ),
        format!(
            "<= {}%, or above it for less than {} (critical)",
            num(cfg.critical_error_rate_pct),
            minutes(cfg.critical_window_s)
        ),
        sustained,
    ));
    if sustained {
        reasons.push(reason(
            Severity::Critical,
            format!(
                "error rate {}% > {}% for {}",
                num(crit.rate()),
                num(cfg.critical_error_rate_pct),
                minutes(cfg.critical_window_s)
            ),
        ));
    } else if crit.rate() > cfg.critical_error_rate_pct {
        reasons.push(reason(
            Severity::Minor,
            format!(
                "error rate {}% above {}% for less than {} so far: monitor",
                num(crit.rate()),
                num(cfg.critical_error_rate_pct),
                minutes(cfg.critical_window_s)
            ),
        ));
    }

    // Error rate 1-5% sustained for > 15 minutes.
    let above_major = major.buckets_above(cfg.major_error_rate_pct, false);
    let sustained_major = major.sustained(cfg.major_error_rate_pct, false);
    findings.push(Finding::new(
        format!("error rate, {}", window_name(untimed, cfg.major_window_s)),
        format!(
            "{}% ({} of {} lines); at or above {}% in {above_major} of {} intervals",
            num(major.rate()),
            major.errors,
            major.events,
            num(cfg.major_error_rate_pct),
            major.buckets.len()
        ),
        format!(
            "< {}%, or at or above it for less than {} (major)",
            num(cfg.major_error_rate_pct),
            minutes(cfg.major_window_s)
        ),
        sustained_major,
    ));
    if sustained_major && !sustained {
        reasons.push(reason(
            Severity::Major,
            format!(
                "error rate {}% >= {}% sustained for {}",
                num(major.rate()),
                num(cfg.major_error_rate_pct),
                minutes(cfg.major_window_s)
            ),
        ));
    } else if crit.errors > 0 && crit.rate() < cfg.major_error_rate_pct {
        reasons.push(reason(
            Severity::Minor,
            format!(
                "error rate {}% < {}%",
                num(crit.rate()),
                num(cfg.major_error_rate_pct)
            ),
        ));
    }

    // Feature failures (users are approximated by log lines).
    for (f, (events, errors)) in cfg.features.iter().zip(&crit.features) {
        let check = format!(
            "{} failure rate, {} (lines matching {:?})",
            f.name,
            window_name(untimed, cfg.critical_window_s),
            f.log_match
        );
        if *errors > 0 {
            affected.push(f.name.clone());
        }
        if *events < cfg.min_feature_events {
            findings.push(Finding::new(
                check,
                format!("{errors} of {events} lines (too few to judge)"),
                format!(">= {} lines to judge", cfg.min_feature_events),
                false,
            ));
            continue;
        }
        let rate = logscan::pct(*errors, *events);
        findings.push(Finding::new(
            check,
            format!("{}% ({errors} of {events})", num(rate)),
            format!(
                "<= {}% (major above it, critical at 100%)",
                num(cfg.partial_failure_pct)
            ),
            rate > cfg.partial_failure_pct,
        ));
        if rate >= 100.0 {
            reasons.push(reason(
                Severity::Critical,
                format!(
                    "complete failure of {} ({errors} of {events} failed)",
                    f.name
                ),
            ));
        } else if rate > cfg.partial_failure_pct {
            reasons.push(reason(
                Severity::Major,
                format!("partial failure of {} ({}% failed)", f.name, num(rate)),
            ));
        } else if rate > 0.0 {
            let what = if rate < cfg.minor_failure_pct {
                "non-critical bugs in"
            } else {
                "errors in"
            };
            reasons.push(reason(
                Severity::Minor,
                format!("{what} {} ({}% failed)", f.name, num(rate)),
            ));
        }
    }

    // Performance degradation from baseline.
    match (cfg.baseline_ms, crit.mean_duration()) {
        (Some(base), Some(mean)) if base > 0.0 => {
            let deg = (mean - base) * 100.0 / base;
            findings.push(Finding::new(
                format!(
                    "mean {} in the log, last {}",
                    cfg.duration_key.trim_end_matches('='),
                    minutes(cfg.critical_window_s)
                ),
                format!(
                    "{} ms ({:+}% vs baseline {} ms)",
                    num(mean),
                    num(deg),
                    num(base)
                ),
                format!("<= +{}% of the baseline (major)", num(cfg.perf_major_pct)),
                deg > cfg.perf_major_pct,
            ));
            if deg > cfg.perf_major_pct {
                reasons.push(reason(
                    Severity::Major,
                    format!("performance degraded {}% from baseline", num(deg)),
                ));
            } else if deg > cfg.perf_minor_pct {
                reasons.push(reason(
                    Severity::Minor,
                    format!("performance degraded {}% from baseline", num(deg)),
                ));
            }
        }
        (_, Some(mean)) => findings.push(Finding::new(
            format!(
                "mean {} in the log, last {}",
                cfg.duration_key.trim_end_matches('='),
                minutes(cfg.critical_window_s)
            ),
            format!("{} ms", num(mean)),
            "no baseline_ms configured: not judged",
            false,
        )),
        (_, None) => {}
    }
    Ok(())
}

pub(crate) fn assess_data(
    ctx: &Context,
    cfg: &Config,
    findings: &mut Vec<Finding>,
    reasons: &mut Vec<Reason>,
) -> Result<()> {
    let db = cfg.memory_db_path();
    if !exists(&db)? {
        findings.push(Finding::new(
            format!("memory database {db}"),
            "absent",
            "present when MCP tracking persists (not judged)",
            false,
        ));
        return Ok(());
    }
    let check = "memory database integrity (PRAGMA quick_check)";
    match quick_check(&db) {
        Integrity::Ok => findings.push(Finding::new(check, "ok", "= ok", false)),
        Integrity::Corrupt(qc) => {
            findings.push(Finding::new(check, &qc, "= ok", true));
            reasons.push(Reason {
                severity: Severity::Critical,
                data: true,
                what: format!("data corruption in {db}: {qc}"),
            });
        }
        // Busy or locked is not corruption: a restore of the whole
        // system is not the answer to a long write. Not "ok" either.
        Integrity::Unknown(why) => {
            findings.push(Finding::new(
                check,
                format!("not checked: {why}"),
                "= ok",
                true,
            ));
            reasons.push(reason(
                Severity::Minor,
                format!("the integrity of {db} could not be checked ({why}): check it again"),
            ));
        }
    }
    if !cfg.check_row_loss || cfg.row_loss_tables().is_empty() {
        return Ok(());
    }
    let chosen = memory_backup(ctx, cfg)?;
    let Some(backup) = chosen.path else {
        return Ok(());
    };
    for table in cfg.row_loss_tables() {
        match compare_rows(&db, &backup, table) {
            Ok(c) => {
                let check = format!(
                    "rows in {table}{} (vs pre-deployment backup {})",
                    match c.from_rowid {
                        Some(r) => format!(" from rowid {r} on"),
                        None => String::new(),
                    },
                    file_name(&backup)
                );
                findings.push(Finding::at_least(
                    check,
                    c.live as f64,
                    c.backup as f64,
                    "rows",
                ));
                if c.live < c.backup {
                    reasons.push(Reason {
                        severity: Severity::Critical,
                        data: true,
                        what: format!(
                            "data loss: {table} has {} of the {} rows the pre-deployment backup has{}",
                            c.live,
                            c.backup,
                            match c.from_rowid {
                                Some(r) => format!(" from rowid {r} on"),
                                None => String::new(),
                            }
                        ),
                    });
                }
            }
            Err((true, e)) if is_corruption(&e) => {
                findings.push(Finding::new(
                    format!("rows in {table}"),
                    format!("error: {e}"),
                    "readable",
                    true,
                ));
                reasons.push(Reason {
                    severity: Severity::Critical,
                    data: true,
                    what: format!("data corruption: {table} cannot be read: {e}"),
                });
            }
            Err((true, e)) => {
                findings.push(Finding::new(
                    format!("rows in {table}"),
                    format!("not counted: {e}"),
                    format!("compared with {}", file_name(&backup)),
                    true,
                ));
                reasons.push(reason(
                    Severity::Minor,
                    format!("{table} could not be counted ({e}): check it again"),
                ));
            }
            Err((false, e)) => findings.push(Finding::new(
                format!("rows in {table}"),
                "not compared",
                format!("backup {} unreadable: {e}", file_name(&backup)),
                false,
            )),
        }
    }
    Ok(())
}

pub(crate) fn count_rows(db: &str, table: &str) -> Result<i64> {
    if !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!("table name {table:?} is not a plain SQL identifier");
    }
    let rows = storage::sqlite_query(db, &format!("SELECT COUNT(*) FROM \"{table}\""), &[])?;
    match rows.rows.first().and_then(|r| r.first()) {
        Some(SqlValue::Integer(n)) => Ok(*n),
        other => bail!("unexpected COUNT(*) result {other:?}"),
    }
}

/// What `PRAGMA quick_check` said of a database.
pub(crate) enum Integrity {
    Ok,
    /// It answered with problems, or SQLite called the file corrupt.
    Corrupt(String),
    /// It could not be asked (locked by a writer, unreadable): nothing is
    /// known about the data.
    Unknown(String),
}

/// SQLite errors that say the file itself is damaged (SQLITE_CORRUPT,
/// SQLITE_NOTADB), as opposed to a database that is busy, locked or
/// cannot be opened right now.
pub(crate) fn is_corruption(message: &str) -> bool {
    let m = message.to_lowercase();
    m.contains("malformed") || m.contains("not a database") || m.contains("corrupt")
}

pub(crate) fn quick_check(db: &str) -> Integrity {
    match storage::sqlite_query(db, "PRAGMA quick_check", &[]) {
        Ok(rows) => {
            let all: Vec<String> = rows
                .rows
                .iter()
                .filter_map(|r| match r.first() {
                    Some(SqlValue::Text(t)) => Some(t.clone()),
                    _ => None,
                })
                .collect();
            match all.as_slice() {
                [ok] if ok == "ok" => Integrity::Ok,
                [] => Integrity::Unknown("quick_check gave no answer".into()),
                _ => Integrity::Corrupt(short(&all.join("; "), 160)),
            }
        }
        Err(e) if is_corruption(&e.to_string()) => Integrity::Corrupt(short(&e.to_string(), 160)),
        Err(e) => Integrity::Unknown(short(&e.to_string(), 160)),
    }
}

/// Rows of a table in the live database against the backup.
pub(crate) struct RowCompare {
    /// Compared from this rowid on (the live table's lowest).
    pub(crate) from_rowid: Option<i64>,
    pub(crate) live: i64,
    pub(crate) backup: i64,
}

pub(crate) fn query_int(db: &str, sql: &str, params: &[SqlValue]) -> Result<Option<i64>> {
    let rows = storage::sqlite_query(db, sql, params)?;
    match rows.rows.first().and_then(|r| r.first()) {
        Some(SqlValue::Integer(n)) => Ok(Some(*n)),
        Some(SqlValue::Null) | None => Ok(None),
        other => bail!("unexpected result {other:?} of {sql}"),
    }
}

/// The rows the backup has that must still be there: those from the live
/// table's lowest rowid on. A retention job deletes the oldest rows; the
/// rows after them that the backup holds (up to its highest rowid) are
/// still in the live table unless data was lost. A table without rowids
/// is compared by `COUNT(*)`. `Err((live, message))`: which side failed.
pub(crate) fn compare_rows(
    db: &str,
    backup: &str,
    table: &str,
) -> std::result::Result<RowCompare, (bool, String)> {
    if !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err((
            true,
            format!("table name {table:?} is not a plain SQL identifier"),
        ));
    }
    let live_err = |e: Failure| (true, e.message().to_string());
    let backup_err = |e: Failure| (false, e.message().to_string());
    let min = query_int(db, &format!("SELECT MIN(rowid) FROM \"{table}\""), &[]);
    let min = match min {
        Ok(m) => m,
        Err(e) if e.message().contains("no such column") => {
            // WITHOUT ROWID: plain counts.
            return Ok(RowCompare {
                from_rowid: None,
                live: count_rows(db, table).map_err(live_err)?,
                backup: count_rows(backup, table).map_err(backup_err)?,
            });
        }
        Err(e) => return Err(live_err(e)),
    };
    let Some(min) = min else {
        return Ok(RowCompare {
            from_rowid: None,
            live: 0,
            backup: count_rows(backup, table).map_err(backup_err)?,
        });
    };
    let max = query_int(backup, &format!("SELECT MAX(rowid) FROM \"{table}\""), &[])
        .map_err(backup_err)?
        .unwrap_or(min - 1);
    let kept = query_int(
        backup,
        &format!("SELECT COUNT(*) FROM \"{table}\" WHERE rowid >= ?1"),
        &[SqlValue::Integer(min)],
    )
    .map_err(backup_err)?
    .unwrap_or(0);
    let live = query_int(
        db,
        &format!("SELECT COUNT(*) FROM \"{table}\" WHERE rowid >= ?1 AND rowid <= ?2"),
        &[SqlValue::Integer(min), SqlValue::Integer(max)],
    )
    .map_err(live_err)?
    .unwrap_or(0);
    Ok(RowCompare {
        from_rowid: Some(min),
        live,
        backup: kept,
    })
}

pub(crate) struct GitState {
    pub(crate) git_dir: String,
    pub(crate) head_sha: String,
    pub(crate) head_name: String,
    pub(crate) tags: Vec<(String, String)>,
}

pub(crate) fn git_state(cfg: &Config) -> Result<GitState> {
    let mut git_dir = cfg.app(".git");
    match storage::stat(&git_dir)? {
        None => bail!("{} is not a git checkout (no .git)", cfg.app_dir),
        Some(e) if e.kind == EntryKind::File => {
            let text = storage::read_to_string(&git_dir)?;
            let Some(p) = text.trim().strip_prefix("gitdir:") else {
                bail!("{git_dir} does not say where the repository is");
            };
            let p = p.trim();
            git_dir = if p.starts_with('/') {
                p.to_string()
            } else {
                cfg.app(p)
            };
        }
        Some(_) => {}
    }
    let packed = read_opt(&format!("{git_dir}/packed-refs"))?.unwrap_or_default();
    let resolve = |name: &str| -> Result<Option<String>> {
        if let Some(sha) = read_opt(&format!("{git_dir}/{name}"))? {
            return Ok(Some(sha.trim().to_string()));
        }
        Ok(packed.lines().find_map(|l| {
            l.split_once(' ')
                .filter(|(_, n)| n.trim() == name)
                .map(|(s, _)| s.to_string())
        }))
    };
    let head = storage::read_to_string(&format!("{git_dir}/HEAD"))?;
    let head = head.trim();
    let (head_sha, head_name) = match head.strip_prefix("ref: ") {
        Some(r) => (
            resolve(r)?.unwrap_or_default(),
            r.trim_start_matches("refs/heads/").to_string(),
        ),
        None => (head.to_string(), "detached HEAD".to_string()),
    };
    let mut tags = versions::packed_tags(&packed);
    let tag_dir = format!("{git_dir}/refs/tags");
    if let Some(dir) = storage::stat(&tag_dir)? {
        // Listed paths are canonical: strip the canonical directory.
        let prefix = format!("{}/", dir.path);
        for e in storage::list_dir(&tag_dir, true)? {
            if e.kind != EntryKind::File {
                continue;
            }
            let name = e.path.strip_prefix(&prefix).unwrap_or(&e.path).to_string();
            let sha = storage::read_to_string(&e.path)?.trim().to_string();
            tags.retain(|(n, _)| *n != name);
            tags.push((name, sha));
        }
    }
    Ok(GitState {
        git_dir,
        head_sha,
        head_name,
        tags,
    })
}
