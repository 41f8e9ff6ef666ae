//! The abathur plugin: the "Rollback Procedures - Emergency Recovery and
//! Disaster Recovery" runbook of Abathur's SQLite database
//! (`/var/lib/abathur/abathur.db`), through the host's SQLite, files,
//! snapshots, disk probe and configured commands.
//!
//! Levels, from the lightest (the host escalates to the next one when a
//! level does not verify):
//!
//! 1. milestone 3 rollback (vector search): drop the vector tables, mark
//!    documents `pending` and clear their embeddings;
//! 2. milestone 2 rollback (memory system): drop the memory tables and their
//!    indexes, keep and verify the core tables;
//! 3. corruption recovery: recover what can be read into a new database,
//!    verify, swap; fall back to the latest verified backup;
//! 4. emergency production rollback: stop services, assess, keep the failed
//!    database for forensics, restore the latest verified backup, WAL
//!    recovery, validation, restart, post-rollback validation;
//! 5. disk space recovery: truncate the WAL, prune backups, VACUUM, report
//!    the space reclaimed.
//!
//! See docs/plugins/abathur.md for the config keys and the grants.

mod backup;
mod config;
mod db;

use rewind_sdk::prelude::*;
use rewind_sdk::storage as st;

use backup::{Within, ctx_get, ctx_set, file_name, now_ms};
use config::Config;

const L_M3: u8 = 1;
const L_M2: u8 = 2;
const L_CORRUPT: u8 = 3;
const L_PROD: u8 = 4;
const L_DISK: u8 = 5;

fn mib(b: u64) -> f64 {
    (b as f64 / 1048576.0 * 100.0).round() / 100.0
}

/// What the database looks like now.
struct Observed {
    exists: bool,
    integrity: String,
    fk: Result<Vec<(String, i64)>, String>,
    tables: Result<Vec<String>, String>,
    indexes: Vec<String>,
    wal: u64,
    free: Option<(u64, u64, String)>,
}

impl Observed {
    fn measure(cfg: &Config) -> Result<Self> {
        let exists = st::exists(&cfg.db_path)?;
        let wal = st::stat(&cfg.wal())?.map(|e| e.size).unwrap_or(0);
        let free = health::disk(&cfg.db_dir())
            .ok()
            .map(|d| (d.available_bytes, d.total_bytes, d.mount));
        if !exists {
            return Ok(Self {
                exists,
                integrity: "database file missing".into(),
                fk: Err("database file missing".into()),
                tables: Err("database file missing".into()),
                indexes: Vec::new(),
                wal,
                free,
            });
        }
        Ok(Self {
            exists,
            integrity: db::integrity_line(&cfg.db_path),
            fk: db::fk_violations(&cfg.db_path).map_err(|e| e.to_string()),
            tables: db::objects(&cfg.db_path, "table").map_err(|e| e.to_string()),
            indexes: db::objects(&cfg.db_path, "index").unwrap_or_default(),
            wal,
            free,
        })
    }
    fn table_list(&self) -> &[String] {
        self.tables.as_deref().unwrap_or(&[])
    }
    fn intact(&self) -> bool {
        self.integrity == "ok"
    }
    fn fk_count(&self) -> i64 {
        self.fk
            .as_ref()
            .map(|v| v.iter().map(|(_, c)| c).sum())
            .unwrap_or(0)
    }

    fn integrity_finding(&self) -> Finding {
        Finding::equals("PRAGMA integrity_check", &self.integrity, "ok")
    }
    fn fk_finding(&self) -> Finding {
        match &self.fk {
            Ok(v) => Finding::new(
                "PRAGMA foreign_key_check violations",
                db::fk_line(v),
                "0",
                self.fk_count() > 0,
            ),
            Err(e) => Finding::new("PRAGMA foreign_key_check violations", e, "0", true),
        }
    }
    fn tables_finding(&self, check: &str, want: &[String]) -> Finding {
        let have = self.table_list();
        let miss = db::missing(want, have);
        let observed = if miss.is_empty() {
            format!("{} of {} present", want.len(), want.len())
        } else {
            format!(
                "{} of {} present, missing {}",
                want.len() - miss.len(),
                want.len(),
                miss.join(", ")
            )
        };
        Finding::new(
            check,
            observed,
            format!("all of {}", want.join(", ")),
            !miss.is_empty(),
        )
    }
    fn absent_finding(&self, check: &str, names: &[String], have: &[String]) -> Finding {
        let present: Vec<&str> = names
            .iter()
            .filter(|n| have.contains(n))
            .map(String::as_str)
            .collect();
        Finding::new(
            check,
            if present.is_empty() {
                "none present".to_string()
            } else {
                format!("present: {}", present.join(", "))
            },
            "none present",
            !present.is_empty(),
        )
    }
    fn wal_finding(&self, cfg: &Config) -> Finding {
        Finding::at_most("WAL size", mib(self.wal), mib(cfg.max_wal_bytes), "MiB")
    }
    fn disk_finding(&self, cfg: &Config) -> Finding {
        match &self.free {
            Some((avail, total, mount)) => Finding::new(
                format!(
                    "free space on {mount} (database filesystem, {} MiB total)",
                    mib(*total)
                ),
                format!("{} bytes ({} MiB)", avail, mib(*avail)),
                format!(
                    ">= {} bytes ({} MiB)",
                    cfg.min_free_bytes,
                    mib(cfg.min_free_bytes)
                ),
                *avail < cfg.min_free_bytes,
            ),
            None => Finding::new(
                "free space on the database filesystem",
                "unknown",
                ">= min_free_bytes",
                false,
            ),
        }
    }
    fn disk_low(&self, cfg: &Config) -> bool {
        self.free
            .as_ref()
            .is_some_and(|(a, _, _)| *a < cfg.min_free_bytes)
    }
}

/// The memory system's state: how many of its tables and indexes exist.
struct Memory {
    tables: usize,
    indexes: usize,
    fk: i64,
}

impl Memory {
    fn of(cfg: &Config, o: &Observed) -> Self {
        let fk =
            o.fk.as_ref()
                .map(|v| {
                    v.iter()
                        .filter(|(t, _)| cfg.memory_tables.contains(t))
                        .map(|(_, c)| c)
                        .sum()
                })
                .unwrap_or(0);
        Self {
            tables: cfg
                .memory_tables
                .iter()
                .filter(|t| o.table_list().contains(t))
                .count(),
            indexes: cfg
                .memory_indexes
                .iter()
                .filter(|i| o.indexes.contains(i))
                .count(),
            fk,
        }
    }
    fn absent(&self) -> bool {
        self.tables == 0 && self.indexes == 0
    }
    fn complete(&self, cfg: &Config) -> bool {
        self.tables == cfg.memory_tables.len() && self.indexes == cfg.memory_indexes.len()
    }
    fn failed(&self, cfg: &Config) -> bool {
        (!self.absent() && !self.complete(cfg)) || self.fk > 0
    }
    fn finding(&self, cfg: &Config) -> Finding {
        let observed = if self.absent() {
            "absent (milestone 1 schema)".to_string()
        } else {
            format!(
                "{} of {} tables, {} of {} indexes, {} foreign key violations",
                self.tables,
                cfg.memory_tables.len(),
                self.indexes,
                cfg.memory_indexes.len(),
                self.fk
            )
        };
        Finding::new(
            "memory system (milestone 2) deployment",
            observed,
            format!(
                "all {} tables and {} indexes, or none; 0 foreign key violations",
                cfg.memory_tables.len(),
                cfg.memory_indexes.len()
            ),
            self.failed(cfg),
        )
    }
}

/// The vector search's state (milestone 3).
struct Vector {
    present: Vec<String>,
    documents: i64,
    failed_sync: i64,
    search: Option<(Option<u16>, f64, bool)>,
}

impl Vector {
    fn of(cfg: &Config, o: &Observed) -> Result<Self> {
        let present: Vec<String> = cfg
            .vector_tables
            .iter()
            .filter(|t| o.table_list().contains(t))
            .cloned()
            .collect();
        let (mut documents, mut failed_sync) = (0, 0);
        if o.table_list().iter().any(|t| t == "document_index")
            && db::columns(&cfg.db_path, "document_index")
                .unwrap_or_default()
                .iter()
                .any(|c| c == "sync_status")
        {
            documents = db::count(&cfg.db_path, "SELECT count(*) FROM document_index").unwrap_or(0);
            failed_sync = db::count(
                &cfg.db_path,
                "SELECT count(*) FROM document_index WHERE sync_status = 'failed'",
            )
            .unwrap_or(0);
        }
        let search = if cfg.search_url.is_empty() || present.is_empty() {
            None
        } else {
            let r = HttpProbe::get(&cfg.search_url)
                .timeout_ms(cfg.search_max_ms.max(1000) * 2)
                .probe()?;
            Some((r.status, r.latency_ms(), r.healthy))
        };
        Ok(Self {
            present,
            documents,
            failed_sync,
            search,
        })
    }
    fn failed_percent(&self) -> f64 {
        if self.documents == 0 {
            0.0
        } else {
            (self.failed_sync as f64 * 1000.0 / self.documents as f64).round() / 10.0
        }
    }
    fn slow(&self, cfg: &Config) -> bool {
        self.search
            .is_some_and(|(_, ms, ok)| !ok || ms > cfg.search_max_ms as f64)
    }
    fn failed(&self, cfg: &Config) -> bool {
        !self.present.is_empty()
            && (self.failed_percent() > cfg.max_failed_sync_percent || self.slow(cfg))
    }
    fn findings(&self, cfg: &Config) -> Vec<Finding> {
        let mut f = vec![Finding::new(
            "documents with sync_status = 'failed' (embedding generation)",
            format!(
                "{}% ({} of {}){}",
                self.failed_percent(),
                self.failed_sync,
                self.documents,
                if self.present.is_empty() {
                    "; vector tables absent"
                } else {
                    ""
                }
            ),
            format!("<= {}%", cfg.max_failed_sync_percent),
            !self.present.is_empty() && self.failed_percent() > cfg.max_failed_sync_percent,
        )];
        if let Some((status, ms, ok)) = self.search {
            f.push(Finding::new(
                format!("semantic search GET {}", cfg.search_url),
                format!(
                    "{} in {:.0} ms",
                    status.map(|s| s.to_string()).unwrap_or("no answer".into()),
                    ms
                ),
                format!("200-399 in <= {} ms", cfg.search_max_ms),
                !ok || ms > cfg.search_max_ms as f64,
            ));
        }
        f
    }
}

fn health_finding(cfg: &Config) -> Result<Option<(Finding, bool)>> {
    let Some(p) = cfg.health() else {
        return Ok(None);
    };
    let r = p.probe()?;
    let observed = match r.status {
        Some(s) => format!("{s} {}", r.body.trim().chars().take(80).collect::<String>()),
        None => format!("no answer ({})", r.detail),
    };
    let threshold = if cfg.health_contains.is_empty() {
        "200-299".to_string()
    } else {
        format!("200-299 containing {:?}", cfg.health_contains)
    };
    Ok(Some((
        Finding::new(
            format!("GET {}", cfg.health_url),
            observed,
            threshold,
            !r.healthy,
        ),
        r.healthy,
    )))
}

// ---------------------------------------------------------------- steps

fn services(cfg: &Config, template: &[String], list: &[String], verb: &str) -> Result<String> {
    let mut done = Vec::new();
    for s in list {
        let shown = backup::run(cfg, template, &[("service", s)]).within(format!("{verb} {s}"))?;
        done.push(shown);
    }
    Ok(if done.is_empty() {
        format!("no services to {verb}")
    } else {
        done.join("; ")
    })
}

fn commands_detail(cfg: &Config, template: &[String], list: &[String]) -> String {
    let v: Vec<String> = list
        .iter()
        .filter_map(|s| cfg.cmd(template, &[("service", s)]).map(|c| c.display()))
        .collect();
    if v.is_empty() {
        "nothing (no services configured)".into()
    } else {
        format!("`{}`", v.join("`, `"))
    }
}

/// The pids in a service's `pid_file`, if one is configured and there (a
/// stopped service has none); a file that cannot be read is an error.
fn pidfile_pids(cfg: &Config, service: &str) -> Result<Vec<u32>> {
    if cfg.pid_file.is_empty() {
        return Ok(Vec::new());
    }
    let path = cfg.pid_file.replace("{service}", service);
    if !st::exists(&path).context(format!("pid_file {path}"))? {
        return Ok(Vec::new());
    }
    let text = st::read_to_string(&path).context(format!("reading pid_file {path}"))?;
    Ok(text
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Stop the services, then "verify all services stopped" (`ps aux | grep
/// abathur`) for the services' own processes only: the pids in their
/// `pid_file`, else the processes matching `process_pattern` per service
/// (`{service}` in it), else those matching both `process_pattern` and
/// the service's name. Other processes matching the pattern (a log tail,
/// an editor, another tool named abathur-something) are left alone and
/// named, never a failure.
fn stop_step(ctx: &Context, cfg: &Config, list: &[String]) -> Result<StepOutcome> {
    let own: Vec<Vec<u32>> = list
        .iter()
        .map(|s| pidfile_pids(cfg, s))
        .collect::<Result<_>>()?;
    let ran = services(cfg, &cfg.stop_command, list, "stop")?;
    if !ctx.executes() || cfg.process_pattern.is_empty() || list.is_empty() {
        return Ok(StepOutcome::ok(ran));
    }
    let per_service = cfg.process_pattern.contains("{service}");
    let mut findings = Vec::new();
    let mut left = Vec::new();
    let mut mine_all: Vec<u32> = Vec::new();
    let mut matching_all: Vec<u32> = Vec::new();
    for (s, own) in list.iter().zip(&own) {
        let pat = cfg.process_pattern.replace("{service}", s);
        let matching = health::processes(&pat)?.pids;
        let (mine, how): (Vec<u32>, String) = if !own.is_empty() {
            (
                matching
                    .iter()
                    .copied()
                    .filter(|p| own.contains(p))
                    .collect(),
                format!("pids {own:?} of {}", cfg.pid_file.replace("{service}", s)),
            )
        } else if per_service {
            (matching.clone(), format!("matching {pat:?}"))
        } else {
            let named = health::processes(s)?.pids;
            (
                matching
                    .iter()
                    .copied()
                    .filter(|p| named.contains(p))
                    .collect(),
                format!("matching {pat:?} and {s:?}"),
            )
        };
        findings.push(Finding::at_most(
            format!("processes of {s} ({how}) still running"),
            mine.len() as f64,
            0.0,
            "",
        ));
        if !mine.is_empty() {
            left.push(format!("{s}: pids {mine:?}"));
        }
        mine_all.extend(&mine);
        matching_all.extend(matching);
    }
    matching_all.sort_unstable();
    matching_all.dedup();
    let others: Vec<u32> = matching_all
        .into_iter()
        .filter(|p| !mine_all.contains(p))
        .collect();
    let others = if others.is_empty() {
        String::new()
    } else {
        format!(
            "; left alone: pids {others:?} match {:?} but are none of the stopped services' processes",
            cfg.process_pattern
        )
    };
    Ok(if left.is_empty() {
        StepOutcome::ok(format!("{ran}; no process of theirs left{others}"))
    } else {
        StepOutcome::failed(format!(
            "{ran}; still running: {}{others}; stop them (or fix stop_command), then resume",
            left.join(", ")
        ))
    }
    .with_findings(findings))
}

fn start_step(ctx: &Context, cfg: &Config, list: &[String]) -> Result<StepOutcome> {
    let ran = services(cfg, &cfg.start_command, list, "start")?;
    let Some(probe) = cfg.health() else {
        return Ok(StepOutcome::ok(ran));
    };
    if !ctx.executes() {
        return Ok(StepOutcome::ok(format!(
            "{ran}; would wait for GET {} (nothing was started in a {} run)",
            cfg.health_url,
            ctx.mode.as_str()
        )));
    }
    let w = probe.wait(
        WaitPolicy::every(cfg.health_interval_ms)
            .timeout_ms(cfg.health_timeout_ms)
            .successes(1),
    )?;
    let f = vec![
        Finding::status(format!("GET {}", cfg.health_url), w.last.status, 200, 299),
        Finding::at_most(
            "time to healthy",
            w.elapsed_ms as f64,
            cfg.health_timeout_ms as f64,
            "ms",
        ),
    ];
    let msg = format!(
        "{ran}; {} after {} probes in {} ms ({})",
        if w.healthy { "healthy" } else { "NOT healthy" },
        w.attempts,
        w.elapsed_ms,
        w.last.body.trim().chars().take(80).collect::<String>()
    );
    Ok(if w.healthy {
        StepOutcome::ok(msg)
    } else {
        StepOutcome::failed(msg)
    }
    .with_findings(f))
}

/// Move the database and its WAL and shared memory files to `target`
/// (+ `-wal`, `-shm`), or copy them when `copy`.
fn set_aside(cfg: &Config, target: &str, copy: bool) -> Result<Vec<String>> {
    let mut moved = Vec::new();
    for (src, suffix) in [
        (cfg.db_path.clone(), ""),
        (cfg.wal(), "-wal"),
        (cfg.shm(), "-shm"),
    ] {
        if !st::exists(&src)? {
            continue;
        }
        let dst = format!("{target}{suffix}");
        if copy {
            // The live WAL and shm stay until a verified backup replaces
            // the database (restore_from removes them then).
            st::copy(&src, &dst)?;
        } else {
            st::rename(&src, &dst)?;
        }
        moved.push(dst);
    }
    Ok(moved)
}

/// Decompress a backup into the database directory, check it, and rename
/// it over the database. The database's WAL and shm must go first (SQLite
/// would apply the failed database's WAL to the restored file); what the
/// WAL held is said, in bytes and frames, with where a copy of it is kept.
fn restore_from(cfg: &Config, gz: &str, wal_kept: &str) -> Result<String> {
    let tmp = cfg.restore_tmp();
    backup::decompress(cfg, gz, &tmp)?;
    let line = db::integrity_line(&tmp);
    if line != "ok" {
        st::remove(&tmp)?;
        bail!("the restored bytes of {gz} fail integrity_check: {line}");
    }
    let (wal_bytes, frames) = backup::wal_info(&cfg.db_path)?;
    for side in [cfg.wal(), cfg.shm()] {
        if st::exists(&side)? {
            st::remove(&side)?;
        }
    }
    st::rename(&tmp, &cfg.db_path)?;
    let wal = if wal_bytes == 0 {
        String::new()
    } else {
        format!(
            "; the failed database's WAL, {}, was discarded from {}{}",
            backup::wal_line(wal_bytes, frames),
            cfg.db_dir(),
            if wal_kept.is_empty() {
                String::new()
            } else {
                format!(" ({wal_kept})")
            }
        )
    };
    Ok(format!(
        "restored {gz} -> {} (integrity ok){wal}",
        cfg.db_path
    ))
}

/// Which backup a restore takes, for the plan.
fn restore_source(cfg: &Config) -> String {
    match cfg.restore_backup_path() {
        Some(p) => format!("{p} (restore_backup), once it verifies"),
        None => format!(
            "the newest {}{}*.db.gz that verifies (a {}*.db.gz only when no daily one does), pinned for the incident",
            cfg.in_backup_dir(""),
            cfg.backup_prefix,
            cfg.manual_backup_prefix
        ),
    }
}

/// The pin key of the backup this incident restores.
const RESTORE_BACKUP: &str = "restore_backup";

/// The reference of this run: the backup restored or compared with, its
/// schema and rows (run-scoped, so `verify` reads what the steps used).
fn set_reference(ctx: &Context, v: &backup::Verified) -> Result<()> {
    st::set_json(&ctx.run_key("reference"), v)?;
    Ok(())
}

fn reference(ctx: &Context) -> Result<Option<backup::Verified>> {
    Ok(st::get_json(&ctx.run_key("reference"))?)
}

/// The backup this incident restores, and the reference a salvage is
/// compared with: `restore_backup` when configured, else the newest daily
/// backup that verifies (a manual, pre-rollback one only when no daily one
/// does), pinned for the incident. Chosen again later it could be another:
/// a backup taken meanwhile (of the database the rollback already
/// changed), or an older one once the newest was pruned. A pinned backup is
/// verified again before it is used. `Ok(Err(why))` when none verifies;
/// `Ok(Ok((what verified, notes)))` otherwise.
fn restore_choice(
    ctx: &Context,
    cfg: &Config,
) -> Result<std::result::Result<(backup::Verified, String), String>> {
    let configured = cfg.restore_backup_path();
    if let Some(p) = ctx.pinned(RESTORE_BACKUP)? {
        if let Some(c) = &configured
            && *c != p
        {
            return Ok(Err(format!(
                "{p} is pinned for this incident but restore_backup is {c}; run again with --redecide to use {c}"
            )));
        }
        return Ok(match backup::verify(cfg, &p)? {
            Ok(v) => {
                set_reference(ctx, &v)?;
                Ok((v, format!("; {} pinned for this incident", file_name(&p))))
            }
            Err(why) => Err(format!(
                "{p}, pinned for this incident, no longer verifies: {why}; check it, or run again with --redecide to choose again"
            )),
        });
    }
    let (v, notes) = match &configured {
        Some(c) => match backup::verify(cfg, c)? {
            Ok(v) => (v, vec![format!("restore_backup = {c:?}")]),
            Err(why) => {
                return Ok(Err(format!(
                    "restore_backup {c} does not verify: {why}; set restore_backup to a backup that does, or \"\" for the newest daily one"
                )));
            }
        },
        None => match backup::latest_verified(cfg)? {
            (Some(v), notes) => (v, notes),
            (None, notes) => {
                return Ok(Err(if notes.is_empty() {
                    format!(
                        "no {}*.db.gz or {}*.db.gz in {}",
                        cfg.backup_prefix, cfg.manual_backup_prefix, cfg.backup_dir
                    )
                } else {
                    notes.join("; ")
                }));
            }
        },
    };
    ctx.pin(RESTORE_BACKUP, || Ok(v.backup.clone()))?;
    set_reference(ctx, &v)?;
    let notes = if notes.is_empty() {
        String::new()
    } else {
        format!("; {}", notes.join("; "))
    };
    Ok(Ok((v, notes)))
}

/// The checklist's "all expected tables and indexes exist" and "Table
/// count ... Index count": against the reference schema when there is one
/// (every table and index of the backup restored, or of the database
/// before the rollback), and against `min_tables`/`min_indexes` when they
/// are set; a breach names the key and what to set.
fn schema_findings(cfg: &Config, o: &Observed, want: Option<&backup::Verified>) -> Vec<Finding> {
    let mut f = Vec::new();
    if let Some(r) = want {
        for (kind, names, have) in [
            ("tables", &r.tables, o.table_list()),
            ("indexes", &r.indexes, &o.indexes[..]),
        ] {
            let miss = db::missing(names, have);
            f.push(Finding::new(
                format!("{kind} of {}", file_name(&r.backup)),
                if miss.is_empty() {
                    format!("all {} present", names.len())
                } else {
                    format!("missing {}", miss.join(", "))
                },
                format!("all {} present", names.len()),
                !miss.is_empty(),
            ));
        }
    }
    for (key, min, have, kind) in [
        ("min_tables", cfg.min_tables, o.table_list().len(), "table"),
        ("min_indexes", cfg.min_indexes, o.indexes.len(), "index"),
    ] {
        let Some(min) = min else { continue };
        let mut found = Finding::at_least(format!("{kind} count"), have as f64, min as f64, "");
        if (have as u64) < min {
            let theirs = want
                .map(|r| {
                    let n = if kind == "table" {
                        r.tables.len()
                    } else {
                        r.indexes.len()
                    };
                    format!(" ({} has {n})", file_name(&r.backup))
                })
                .unwrap_or_default();
            found.threshold = format!(
                ">= {min} ({key} = {min}{theirs}: set {key} to this installation's count, or remove it to expect the reference schema's)"
            );
        }
        f.push(found);
    }
    f
}

fn validate(
    cfg: &Config,
    o: &Observed,
    memory_expected: bool,
    want: Option<&backup::Verified>,
) -> Vec<Finding> {
    let mut f = vec![
        o.integrity_finding(),
        o.fk_finding(),
        o.tables_finding("core tables (milestone 1)", &cfg.core_tables),
    ];
    // The memory system is expected where the reference has it (a
    // milestone 1 installation has none).
    let memory_expected = memory_expected
        && want.is_none_or(|r| cfg.memory_tables.iter().any(|t| r.tables.contains(t)));
    if memory_expected {
        f.push(o.tables_finding("memory tables (milestone 2)", &cfg.memory_tables));
    }
    f.extend(schema_findings(cfg, o, want));
    if o.table_list().iter().any(|t| t == "sessions") {
        let n = db::count(&cfg.db_path, "SELECT count(*) FROM sessions");
        f.push(Finding::check(
            "SELECT COUNT(*) FROM sessions",
            n.is_ok(),
            n.map(|n| format!("{n} rows"))
                .unwrap_or_else(|e| e.to_string()),
            "answers",
        ));
    }
    f
}

/// Level 3 without a backup to compare with: rows the salvage could not
/// read are data lost, and nothing says how much. Breached when rewind's
/// reader skipped unreadable ranges or gave up on a table.
fn salvage_loss_finding(ctx: &Context) -> Result<Finding> {
    let salvaged: Vec<db::Salvaged> = if ctx_get(ctx, "source")?.as_deref() == Some("recovered") {
        st::get_json(&ctx.run_key("salvaged"))?.unwrap_or_default()
    } else {
        Vec::new()
    };
    let lost: Vec<String> = salvaged
        .iter()
        .filter(|s| s.lost_ranges > 0 || s.error.is_some())
        .map(|s| match &s.error {
            Some(e) => format!("{} ({} rows read; {e})", s.table, s.rows),
            None => format!(
                "{} ({} rows read, {} unreadable ranges)",
                s.table, s.rows, s.lost_ranges
            ),
        })
        .collect();
    Ok(Finding::new(
        "rows unreadable in the salvage (no verified backup to compare with)",
        if lost.is_empty() {
            "none".to_string()
        } else {
            lost.join(", ")
        },
        "none",
        !lost.is_empty(),
    ))
}

/// "No data loss detected": every table of the reference backup holds at
/// least its rows (what was written since the backup is Type 3's accepted
/// loss; less than the backup is a recovery that lost data).
fn rows_finding(db: &str, r: &backup::Verified) -> (Finding, Vec<(String, i64, i64)>) {
    let lost = backup::rows_lost(db, &r.counts);
    (
        Finding::new(
            format!("rows against the backup {}", file_name(&r.backup)),
            if lost.is_empty() {
                "none lost".to_string()
            } else {
                lost.iter()
                    .map(|(t, have, want)| format!("{t} {have} < {want}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            "none lost",
            !lost.is_empty(),
        ),
        lost,
    )
}

/// A validation step: failed when a finding is breached, except in a dry
/// run, where nothing was changed and the findings show the system as it is.
fn outcome(ctx: &Context, msg: String, findings: Vec<Finding>) -> StepOutcome {
    if !ctx.executes() {
        StepOutcome::ok(format!(
            "would validate (nothing was changed in a {} run; now: {msg})",
            ctx.mode.as_str()
        ))
        .with_findings(findings)
    } else if findings.iter().any(|f| f.breached) {
        StepOutcome::failed(msg).with_findings(findings)
    } else {
        StepOutcome::ok(msg).with_findings(findings)
    }
}

fn run_m3(ctx: &Context, cfg: &Config, step: &str) -> Result<StepOutcome> {
    match step {
        "backup" => backup::take(ctx, cfg),
        "stop-embedding" => stop_step(ctx, cfg, &cfg.milestone3_services),
        "disable-features" => {
            let path = &cfg.feature_flags_file;
            let mut flags: serde_json::Map<String, serde_json::Value> = if st::exists(path)? {
                serde_json::from_str(&st::read_to_string(path)?)
                    .context(format!("{path} is not a JSON object"))?
            } else {
                serde_json::Map::new()
            };
            for k in [
                "semantic_search_enabled",
                "background_document_sync",
                "embedding_generation",
            ] {
                flags.insert(k.into(), serde_json::Value::Bool(false));
            }
            let text = serde_json::to_string_pretty(&flags)? + "\n";
            st::write_string(path, &text)?;
            Ok(StepOutcome::ok(format!(
                "{}semantic_search_enabled, background_document_sync, embedding_generation = false in {path}",
                if ctx.executes() { "" } else { "would set " }
            )))
        }
        "drop-vector" => {
            let mut done = Vec::new();
            for t in &cfg.vector_tables {
                match db::drop_table(&cfg.db_path, t)? {
                    Some(how) => done.push(format!("{t} {how}")),
                    None => done.push(format!("{t} absent")),
                }
            }
            let cols = db::columns(&cfg.db_path, "document_index").unwrap_or_default();
            let reset = if cols.iter().any(|c| c == "sync_status") {
                let set = if cols.iter().any(|c| c == "embedding_blob") {
                    "sync_status = 'pending', embedding_blob = NULL"
                } else {
                    "sync_status = 'pending'"
                };
                let n = st::sqlite_exec(&cfg.db_path, &format!("UPDATE document_index SET {set}"))?;
                format!("document_index: {n} rows set {set}")
            } else {
                "no document_index.sync_status to reset".into()
            };
            Ok(StepOutcome::ok(format!(
                "{}{}; {reset}",
                if ctx.executes() { "" } else { "would: " },
                done.join(", ")
            )))
        }
        "check" => {
            let o = Observed::measure(cfg)?;
            let f = validate(cfg, &o, true, None);
            Ok(outcome(
                ctx,
                format!("integrity {}, {} tables", o.integrity, o.table_list().len()),
                f,
            ))
        }
        other => bail!("unknown step {other:?} of level 1"),
    }
}

fn run_m2(ctx: &Context, cfg: &Config, step: &str) -> Result<StepOutcome> {
    match step {
        "stop" => stop_step(ctx, cfg, &cfg.milestone2_services),
        "backup" => backup::take(ctx, cfg),
        "drop-memory" => {
            // The host runs a batch in a transaction, where foreign_keys
            // cannot be switched; DROP TABLE of a referenced table would run
            // an implicit DELETE that the references refuse.
            let mut sql = String::from("COMMIT; PRAGMA foreign_keys = OFF; BEGIN;\n");
            for t in &cfg.memory_tables {
                sql.push_str(&format!("DROP TABLE IF EXISTS {};\n", db::ident(t)));
            }
            for i in &cfg.memory_indexes {
                sql.push_str(&format!("DROP INDEX IF EXISTS {};\n", db::ident(i)));
            }
            if cfg.memory_tables.is_empty() && cfg.memory_indexes.is_empty() {
                return Ok(StepOutcome::ok("no memory tables configured"));
            }
            // Vector tables belong to milestone 3, built on document_index.
            let mut vec_done = Vec::new();
            for t in &cfg.vector_tables {
                if let Some(how) = db::drop_table(&cfg.db_path, t)? {
                    vec_done.push(format!("{t} {how}"));
                }
            }
            st::sqlite_exec(&cfg.db_path, &sql)?;
            Ok(StepOutcome::ok(format!(
                "{}dropped tables {} and indexes {}{}",
                if ctx.executes() { "" } else { "would have " },
                cfg.memory_tables.join(", "),
                cfg.memory_indexes.join(", "),
                if vec_done.is_empty() {
                    String::new()
                } else {
                    format!(" (and milestone 3's {})", vec_done.join(", "))
                }
            )))
        }
        "check-core" => {
            let o = Observed::measure(cfg)?;
            let f = vec![o.tables_finding("core tables (milestone 1)", &cfg.core_tables)];
            let counts = db::row_counts(&cfg.db_path, &cfg.core_tables);
            let shown: Vec<String> = counts
                .iter()
                .map(|(t, n)| match n {
                    Ok(n) => format!("{t} {n}"),
                    Err(e) => format!("{t} ({e})"),
                })
                .collect();
            Ok(outcome(
                ctx,
                format!(
                    "tables: {}; rows: {}",
                    o.table_list().join(", "),
                    shown.join(", ")
                ),
                f,
            ))
        }
        "validate" => {
            let o = Observed::measure(cfg)?;
            let f = vec![
                o.integrity_finding(),
                o.fk_finding(),
                o.absent_finding("memory tables", &cfg.memory_tables, o.table_list()),
                o.absent_finding("memory indexes", &cfg.memory_indexes, &o.indexes),
            ];
            Ok(outcome(ctx, format!("integrity {}", o.integrity), f))
        }
        "start" => start_step(ctx, cfg, &cfg.milestone2_services),
        other => bail!("unknown step {other:?} of level 2"),
    }
}

/// Recover what can be read into `<stem>_recovered.db`: the configured
/// `.recover` first, rewind's reader when that fails. Records in the kv
/// whether the recovered database is good.
fn recover(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let rec = cfg.recovered();
    let sql = cfg.recover_sql();
    if !ctx.executes() {
        let first = cfg
            .cmd(
                &cfg.recover_command,
                &[("db", &cfg.db_path), ("sql", &sql), ("recovered", &rec)],
            )
            .map(|c| format!("`{}`, then ", c.display()))
            .unwrap_or_default();
        return Ok(StepOutcome::ok(format!(
            "would recover {} into {rec}: {first}rewind's reader if that fails",
            cfg.db_path
        )));
    }
    for p in [
        rec.clone(),
        format!("{rec}-wal"),
        format!("{rec}-shm"),
        format!("{rec}-journal"),
        sql.clone(),
    ] {
        if st::exists(&p)? {
            st::remove(&p)?;
        }
    }
    let mut notes = Vec::new();
    let mut method = None;
    if !cfg.recover_command.is_empty() {
        let vars = [
            ("db", cfg.db_path.as_str()),
            ("sql", sql.as_str()),
            ("recovered", rec.as_str()),
        ];
        let r = backup::run(cfg, &cfg.recover_command, &vars).and_then(|shown| {
            if !st::exists(&sql)? || st::stat(&sql)?.map(|e| e.size).unwrap_or(0) == 0 {
                bail!("`{shown}` wrote no SQL");
            }
            backup::run(cfg, &cfg.recover_load_command, &vars)?;
            let line = db::integrity_line(&rec);
            if line != "ok" {
                bail!("the recovered database fails integrity_check: {line}");
            }
            Ok(shown)
        });
        match r {
            Ok(shown) => method = Some(format!("`{shown}`")),
            Err(e) => {
                notes.push(format!(
                    "`.recover` failed ({}); using rewind's reader",
                    e.message()
                ));
                for p in [rec.clone(), format!("{rec}-journal")] {
                    if st::exists(&p)? {
                        st::remove(&p)?;
                    }
                }
            }
        }
        if st::exists(&sql)? {
            st::remove(&sql)?;
        }
    }
    let mut salvaged = Vec::new();
    if method.is_none() {
        match db::salvage(&cfg.db_path, &rec) {
            Ok(s) => {
                method = Some("rewind's reader (rowid ranges, unreadable pages skipped)".into());
                salvaged = s;
            }
            Err(e) => notes.push(format!("rewind's reader failed: {}", e.message())),
        }
    }
    let Some(method) = method else {
        ctx_set(ctx, "recovered", "no")?;
        return Ok(StepOutcome::ok(format!(
            "recovery failed, the latest backup will be restored: {}",
            notes.join("; ")
        )));
    };
    let per: Vec<String> = salvaged
        .iter()
        .map(|s| {
            let mut t = format!("{} {} rows", s.table, s.rows);
            if s.lost_ranges > 0 {
                t.push_str(&format!(" ({} unreadable ranges)", s.lost_ranges));
            }
            if let Some(e) = &s.error {
                t.push_str(&format!(" ({e})"));
            }
            t
        })
        .collect();
    st::set_json(&ctx.run_key("salvaged"), &salvaged)?;
    ctx_set(ctx, "recovered", "pending")?;
    notes.insert(
        0,
        format!("recovered {} into {rec} with {method}", cfg.db_path),
    );
    if !per.is_empty() {
        notes.push(per.join(", "));
    }
    Ok(StepOutcome::ok(notes.join("; ")))
}

fn run_corrupt(ctx: &Context, cfg: &Config, step: &str) -> Result<StepOutcome> {
    match step {
        "recover" => recover(ctx, cfg),
        "verify-recovered" => {
            if !ctx.executes() {
                return Ok(StepOutcome::ok(format!(
                    "would run PRAGMA integrity_check on {} and check the core tables",
                    cfg.recovered()
                )));
            }
            if ctx_get(ctx, "recovered")?.as_deref() != Some("pending") {
                return Ok(StepOutcome::ok(
                    "nothing recovered: the latest backup will be restored",
                ));
            }
            let rec = cfg.recovered();
            let line = db::integrity_line(&rec);
            let tables = db::objects(&rec, "table").unwrap_or_default();
            let miss = db::missing(&cfg.core_tables, &tables);
            let mut f = vec![
                Finding::equals("recovered database integrity_check", &line, "ok"),
                Finding::new(
                    "core tables in the recovered database",
                    if miss.is_empty() {
                        "all present".to_string()
                    } else {
                        format!("missing {}", miss.join(", "))
                    },
                    "all present",
                    !miss.is_empty(),
                ),
            ];
            // The checklist's "No data loss detected": every table must
            // hold at least the rows of the backup a restore would use (the
            // newest daily one that verifies, or restore_backup; pinned, so
            // the swap restores the same one). A salvage that read nothing
            // is intact and empty, not recovered.
            let lost = match restore_choice(ctx, cfg)? {
                Ok((r, notes)) => {
                    let (found, lost) = rows_finding(&rec, &r);
                    f.push(found);
                    if !notes.is_empty() {
                        log::info(format_args!("reference backup {}{notes}", r.backup));
                    }
                    lost
                }
                Err(why) => {
                    // A backup was chosen (restore_backup, or pinned) but
                    // cannot be used: nothing to compare with, and nothing
                    // to fall back on; a person decides. With no backup
                    // that verifies at all, the salvage is the best there
                    // is (verify then checks its unreadable rows).
                    let chosen = cfg.restore_backup_path().is_some()
                        || ctx.pinned(RESTORE_BACKUP)?.is_some();
                    f.push(Finding::new(
                        "rows against a verified backup",
                        format!("not compared: {why}"),
                        "none lost",
                        chosen,
                    ));
                    if chosen {
                        ctx_set(ctx, "recovered", "no")?;
                        return Ok(StepOutcome::failed(format!(
                            "{rec} cannot be compared with the chosen backup: {why}"
                        ))
                        .with_findings(f));
                    }
                    Vec::new()
                }
            };
            let good = line == "ok" && miss.is_empty() && lost.is_empty();
            ctx_set(ctx, "recovered", if good { "yes" } else { "no" })?;
            Ok(StepOutcome::ok(if good {
                format!(
                    "{rec} is intact ({} tables) and holds every row of the reference backup: it replaces the corrupted database",
                    tables.len()
                )
            } else if !lost.is_empty() {
                format!(
                    "{rec} lost rows that the latest verified backup has ({}): the backup will be restored instead",
                    lost.iter()
                        .map(|(t, have, want)| format!("{t} {have} < {want}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                format!("{rec} is not usable: the latest verified backup will be restored instead")
            })
            .with_findings(f))
        }
        "stop" => stop_step(ctx, cfg, &cfg.corruption_services),
        "swap" => {
            let ts = backup::stamp_compact(now_ms());
            let aside = backup::fresh(
                &cfg.in_db_dir(&format!("{}_corrupted_{ts}", cfg.db_stem())),
                ".db",
            )?;
            let good = ctx_get(ctx, "recovered")?.as_deref() == Some("yes");
            if !ctx.executes() {
                return Ok(StepOutcome::ok(format!(
                    "would move {} (and its -wal, -shm) to {aside} for forensics, then move {} into its place, or restore the latest verified backup if recovery failed",
                    cfg.db_path,
                    cfg.recovered()
                )));
            }
            // The corrupted database's WAL goes aside with it: said, with
            // how much it holds (the salvage read through it; a restored
            // backup has none of it).
            let (wal_bytes, frames) = backup::wal_info(&cfg.db_path)?;
            let wal = if wal_bytes == 0 {
                String::new()
            } else {
                format!(
                    " (its WAL, {}, {})",
                    backup::wal_line(wal_bytes, frames),
                    if good {
                        "was read by the recovery"
                    } else {
                        "is not in the backup"
                    }
                )
            };
            if good {
                let moved = set_aside(cfg, &aside, false)?;
                st::rename(&cfg.recovered(), &cfg.db_path)?;
                ctx_set(ctx, "source", "recovered")?;
                Ok(StepOutcome::ok(format!(
                    "corrupted database kept as {}{wal}; {} -> {}",
                    moved.join(", "),
                    cfg.recovered(),
                    cfg.db_path
                )))
            } else {
                let b = match restore_choice(ctx, cfg)? {
                    Ok((r, notes)) => (r.backup, notes),
                    Err(why) => {
                        return Ok(StepOutcome::failed(format!(
                            "recovery failed and no backup in {} verifies ({why}); the corrupted database is left in place: escalate to a database specialist",
                            cfg.backup_dir,
                        )));
                    }
                };
                let moved = set_aside(cfg, &aside, false)?;
                let msg = restore_from(cfg, &b.0, "")?;
                ctx_set(ctx, "source", &b.0)?;
                Ok(StepOutcome::ok(format!(
                    "recovery failed; corrupted database kept as {}{wal}; {msg}{}",
                    moved.join(", "),
                    b.1
                )))
            }
        }
        "start" => start_step(ctx, cfg, &cfg.corruption_services),
        other => bail!("unknown step {other:?} of level 3"),
    }
}

fn run_prod(ctx: &Context, cfg: &Config, step: &str) -> Result<StepOutcome> {
    match step {
        "stop" => stop_step(ctx, cfg, &cfg.production_stop_services),
        "assess" => {
            let o = Observed::measure(cfg)?;
            let severity = if o.intact() { "HIGH" } else { "CRITICAL" };
            ctx_set(ctx, "severity", severity)?;
            Ok(StepOutcome::ok(format!(
                "severity {severity}: {}",
                if o.intact() {
                    "database integrity OK".to_string()
                } else {
                    format!("database corruption detected ({})", o.integrity)
                }
            ))
            .with_findings(vec![o.integrity_finding()]))
        }
        "forensics" => {
            if !st::exists(&cfg.db_path)? {
                return Ok(StepOutcome::ok(format!(
                    "{} does not exist: nothing to keep",
                    cfg.db_path
                )));
            }
            if ctx.executes() {
                st::make_dir(&cfg.backup_dir)?;
            }
            let ts = backup::stamp_compact(now_ms());
            let target = backup::fresh(
                &cfg.in_backup_dir(&format!("failed_production_{ts}")),
                ".db",
            )?;
            // The failed database's WAL holds the transactions since its
            // last checkpoint. When the database reads intact, checkpoint
            // it first (best effort), so the forensic copy has them in the
            // database file; otherwise copy the WAL beside it. Either way
            // the outcome says how much it held.
            let (wal_bytes, frames) = backup::wal_info(&cfg.db_path)?;
            let mut wal_note = String::new();
            if wal_bytes > 0 {
                let wal = backup::wal_line(wal_bytes, frames);
                let intact = ctx_get(ctx, "severity")?.as_deref() == Some("HIGH")
                    || db::integrity_line(&cfg.db_path) == "ok";
                wal_note = if !ctx.executes() {
                    format!("; would checkpoint its WAL ({wal}) first if the database reads intact")
                } else if intact {
                    match backup::checkpoint(cfg) {
                        Ok((_, after)) => format!(
                            "; its WAL ({wal}) was checkpointed into it first ({after} bytes left)"
                        ),
                        Err(e) => format!(
                            "; warning: checkpointing its WAL ({wal}) failed ({}), copied beside it (best effort)",
                            e.message()
                        ),
                    }
                } else {
                    format!(
                        "; its WAL ({wal}) copied beside it, not checkpointed: the database fails integrity_check"
                    )
                };
            }
            let kept = set_aside(cfg, &target, true)?;
            ctx_set(ctx, "forensics", &target)?;
            Ok(StepOutcome::ok(format!(
                "{}{}{wal_note}",
                if ctx.executes() {
                    "failed database kept for forensics: "
                } else {
                    "would copy for forensics: "
                },
                if kept.is_empty() {
                    target
                } else {
                    kept.join(", ")
                }
            )))
        }
        "restore" => {
            if !ctx.executes() {
                if let Some(p) = ctx.pinned(RESTORE_BACKUP)? {
                    return Ok(StepOutcome::ok(format!(
                        "would restore {p} (pinned for this incident) into {}, once it verifies",
                        cfg.db_path
                    )));
                }
                return Ok(StepOutcome::ok(format!(
                    "would restore into {} {}",
                    cfg.db_path,
                    restore_source(cfg)
                )));
            }
            let (r, notes) = match restore_choice(ctx, cfg)? {
                Ok(c) => c,
                Err(why) => {
                    return Ok(StepOutcome::failed(format!(
                        "no backup to restore: {why}; the failed database is left as it was"
                    )));
                }
            };
            // Restoring the pinned backup again (a resumed run, services
            // still stopped) ends where one restore would.
            let kept = match ctx_get(ctx, "forensics")? {
                Some(t) => format!("a copy is in {t}-wal"),
                None => "no forensic copy was taken".into(),
            };
            let msg = restore_from(cfg, &r.backup, &kept)?;
            ctx_set(ctx, "source", &r.backup)?;
            Ok(StepOutcome::ok(format!("{msg}{notes}")))
        }
        "wal-recovery" => {
            if !st::exists(&cfg.wal())? {
                return Ok(StepOutcome::ok(format!(
                    "no WAL next to the restored database ({} kept the failed one's WAL)",
                    cfg.backup_dir
                )));
            }
            let (before, after) = backup::checkpoint(cfg)?;
            Ok(StepOutcome::ok(format!(
                "WAL checkpointed: {before} -> {after} bytes"
            )))
        }
        "validate" => {
            let o = Observed::measure(cfg)?;
            let r = reference(ctx)?;
            let mut f = validate(cfg, &o, true, r.as_ref());
            if let Some(r) = &r {
                f.push(rows_finding(&cfg.db_path, r).0);
            }
            Ok(outcome(
                ctx,
                format!(
                    "integrity {}, {} tables, {} indexes",
                    o.integrity,
                    o.table_list().len(),
                    o.indexes.len()
                ),
                f,
            ))
        }
        "start" => start_step(ctx, cfg, &cfg.production_start_services),
        "post-validate" => {
            let mut done = Vec::new();
            for c in &cfg.validation_commands {
                done.push(backup::run(cfg, c, &[]).within("post-rollback validation")?);
            }
            Ok(StepOutcome::ok(if done.is_empty() {
                "no validation commands configured".to_string()
            } else {
                format!("passed: `{}`", done.join("`, `"))
            }))
        }
        other => bail!("unknown step {other:?} of level 4"),
    }
}

fn run_disk(ctx: &Context, cfg: &Config, step: &str) -> Result<StepOutcome> {
    let free = || -> Result<u64> { Ok(health::disk(&cfg.db_dir())?.available_bytes) };
    match step {
        "measure" => {
            let o = Observed::measure(cfg)?;
            let f0 = free()?;
            backup::ctx_set(ctx, "free_before", &f0.to_string())?;
            let mut sizes = Vec::new();
            for p in [cfg.db_path.clone(), cfg.wal(), cfg.shm()] {
                if let Some(e) = st::stat(&p)? {
                    sizes.push(format!("{} {} bytes", file_name(&p), e.size));
                }
            }
            let backups = backup::list(cfg)?;
            let bytes: u64 = backups.iter().map(|b| b.size).sum();
            Ok(StepOutcome::ok(format!(
                "{f0} bytes free; {}; {} backups, {bytes} bytes",
                sizes.join(", "),
                backups.len()
            ))
            .with_findings(vec![o.disk_finding(cfg), o.wal_finding(cfg)]))
        }
        "truncate-wal" => {
            let (before, after) = backup::checkpoint(cfg)?;
            Ok(StepOutcome::ok(format!(
                "{}PRAGMA wal_checkpoint(TRUNCATE): WAL {before} -> {after} bytes",
                if ctx.executes() { "" } else { "would run " }
            )))
        }
        "prune-backups" => {
            // Never the backup this incident restores.
            let keep = ctx.pinned(RESTORE_BACKUP)?;
            let keep: Vec<&str> = keep.as_deref().into_iter().collect();
            let (deleted, freed) = backup::prune(cfg, cfg.disk_retention_days, &keep, true)?;
            Ok(StepOutcome::ok(format!(
                "{} {} backups older than {} days ({freed} bytes){}",
                if ctx.executes() {
                    "deleted"
                } else {
                    "would delete"
                },
                deleted.len(),
                cfg.disk_retention_days,
                if deleted.is_empty() {
                    String::new()
                } else {
                    format!(
                        ": {}",
                        deleted
                            .iter()
                            .map(|p| file_name(p))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            )))
        }
        "vacuum" => {
            let size = |p: &str| -> Result<u64> { Ok(st::stat(p)?.map(|e| e.size).unwrap_or(0)) };
            let before = size(&cfg.db_path)?;
            st::sqlite_exec(&cfg.db_path, "COMMIT; VACUUM; BEGIN;")?;
            let after = size(&cfg.db_path)?;
            Ok(StepOutcome::ok(if ctx.executes() {
                format!("VACUUM: {} {before} -> {after} bytes", cfg.db_path)
            } else {
                format!("would VACUUM {} ({before} bytes)", cfg.db_path)
            }))
        }
        "report" => {
            let before: u64 = ctx_get(ctx, "free_before")?
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let after = free()?;
            let o = Observed::measure(cfg)?;
            Ok(StepOutcome::ok(format!(
                "space reclaimed: {} bytes ({} -> {} bytes free)",
                after as i64 - before as i64,
                before,
                after
            ))
            .with_findings(vec![o.disk_finding(cfg), o.wal_finding(cfg)]))
        }
        other => bail!("unknown step {other:?} of level 5"),
    }
}

// ---------------------------------------------------------------- plugin

struct Abathur;

impl Plugin for Abathur {
    fn describe(ctx: &Context) -> Result<PluginInfo> {
        let cfg = Config::load(ctx)?;
        let mut needs = Needs::default()
            .sqlite(&cfg.db_path)
            .sqlite(cfg.recovered())
            .sqlite(cfg.restore_tmp())
            .sqlite(cfg.verify_tmp())
            .write(cfg.db_dir())
            .write(&cfg.backup_dir);
        if !cfg.feature_flags_file.is_empty() {
            needs = needs.write(&cfg.feature_flags_file);
        }
        if !cfg.workdir.is_empty() {
            needs = needs.read(&cfg.workdir);
        }
        if let Some(p) = cfg.restore_backup_path()
            && !p.starts_with(&format!("{}/", cfg.backup_dir))
        {
            needs = needs.read(p);
        }
        if !cfg.pid_file.is_empty() {
            for s in [
                &cfg.milestone2_services,
                &cfg.milestone3_services,
                &cfg.production_stop_services,
                &cfg.corruption_services,
            ]
            .into_iter()
            .flatten()
            {
                let p = cfg.pid_file.replace("{service}", s);
                needs = needs.read(p);
            }
        }
        for p in cfg.programs() {
            needs = needs.exec(p);
        }
        for u in [&cfg.health_url, &cfg.search_url] {
            if !u.is_empty() {
                needs = needs.http(u.clone());
            }
        }
        Ok(PluginInfo::new(
            "abathur",
            env!("CARGO_PKG_VERSION"),
            "abathur (SQLite)",
            "Abathur's SQLite rollback and disaster recovery: milestone rollbacks, corruption recovery, backup restore, disk space",
        )
        .level(LevelInfo::new(L_M3, "milestone 3 rollback (vector search)", "Stop the embedding services, disable vector search, drop the vector tables, mark documents pending").rto_ms(30 * 60_000).effect(Effect::Destructive))
        .level(LevelInfo::new(L_M2, "milestone 2 rollback (memory system)", "Stop the API, back up, drop the memory tables and indexes, verify the core tables, restart").rto_ms(30 * 60_000).effect(Effect::Destructive))
        .level(LevelInfo::new(L_CORRUPT, "corruption recovery", "Recover what can be read into a new database, verify, swap; fall back to the latest verified backup").rto_ms(20 * 60_000).effect(Effect::Destructive))
        .level(LevelInfo::new(L_PROD, "emergency production rollback", "Stop everything, keep the failed database, restore the latest verified backup, WAL recovery, validate, restart").rto_ms(60 * 60_000).effect(Effect::Destructive))
        .level(LevelInfo::new(L_DISK, "disk space recovery", "Truncate the WAL, prune old backups, VACUUM, report the space reclaimed").rto_ms(10 * 60_000).effect(Effect::Destructive))
        .needs(needs))
    }

    fn assess(ctx: &Context) -> Result<Assessment> {
        let cfg = Config::load(ctx)?;
        let o = Observed::measure(&cfg)?;
        let mut f = vec![
            o.integrity_finding(),
            o.fk_finding(),
            o.tables_finding("core tables (milestone 1)", &cfg.core_tables),
        ];
        let mem = Memory::of(&cfg, &o);
        f.push(mem.finding(&cfg));
        let vec = Vector::of(&cfg, &o)?;
        f.extend(vec.findings(&cfg));
        f.push(o.wal_finding(&cfg));
        f.push(o.disk_finding(&cfg));
        let health = health_finding(&cfg)?;
        if let Some((hf, _)) = &health {
            f.push(hf.clone());
        }
        let backups = backup::list(&cfg)?;
        let latest = match backups.first() {
            Some(b) => format!(
                "latest backup {} ({:.1} h old)",
                file_name(&b.path),
                now_ms().saturating_sub(b.modified_ms) as f64 / 3_600_000.0
            ),
            None => format!("no backup in {}", cfg.backup_dir),
        };
        let core_missing = !db::missing(&cfg.core_tables, o.table_list()).is_empty();
        let core_fk =
            o.fk.as_ref()
                .map(|v| v.iter().any(|(t, _)| !cfg.memory_tables.contains(t)))
                .unwrap_or(false);
        let summary = |what: &str| format!("{what}; {latest}");
        let a = if !o.exists {
            Assessment::rollback(
                Severity::Critical,
                L_PROD,
                "database missing",
                summary(&format!("{} does not exist", cfg.db_path)),
            )
        } else if !o.intact() {
            Assessment::rollback(
                Severity::Critical,
                L_CORRUPT,
                "database corruption",
                summary(&format!("PRAGMA integrity_check fails: {}", o.integrity)),
            )
        } else if core_missing || core_fk {
            Assessment::rollback(
                Severity::Critical,
                L_PROD,
                "data integrity failure",
                summary(
                    "core tables missing or foreign keys violated: restore from the last known good backup",
                ),
            )
        } else if o.disk_low(&cfg) || o.wal > cfg.max_wal_bytes {
            Assessment::rollback(
                Severity::Critical,
                L_DISK,
                "disk space exhaustion",
                summary(&format!(
                    "{} bytes free, WAL {} bytes",
                    o.free.as_ref().map(|f| f.0).unwrap_or(0),
                    o.wal
                )),
            )
        } else if health.as_ref().is_some_and(|(_, ok)| !ok) {
            Assessment::rollback(
                Severity::Critical,
                L_PROD,
                "critical production failure (unavailable)",
                summary(&format!("{} is not healthy", cfg.health_url)),
            )
        } else if mem.failed(&cfg) {
            Assessment::rollback(
                Severity::Major,
                L_M2,
                "milestone 2 (memory system) failed",
                summary(
                    "the memory system's tables and indexes are partly deployed or violate foreign keys",
                ),
            )
        } else if vec.failed(&cfg) {
            Assessment::rollback(
                Severity::Major,
                L_M3,
                "milestone 3 (vector search) failed",
                summary(&format!(
                    "{}% of documents failed embedding{}",
                    vec.failed_percent(),
                    if vec.slow(&cfg) {
                        ", semantic search too slow"
                    } else {
                        ""
                    }
                )),
            )
        } else {
            Assessment::healthy(summary(&format!(
                "integrity ok, {} tables, {} indexes, WAL {} bytes",
                o.table_list().len(),
                o.indexes.len(),
                o.wal
            )))
        };
        Ok(a.with_findings(f))
    }

    fn plan(ctx: &Context) -> Result<Vec<Step>> {
        let cfg = Config::load(ctx)?;
        let db = &cfg.db_path;
        let stop = |list: &[String]| commands_detail(&cfg, &cfg.stop_command, list);
        let start = |list: &[String]| {
            let mut s = commands_detail(&cfg, &cfg.start_command, list);
            if !cfg.health_url.is_empty() {
                s.push_str(&format!(
                    ", then poll GET {} every {} ms until healthy, for at most {} ms",
                    cfg.health_url, cfg.health_interval_ms, cfg.health_timeout_ms
                ));
            }
            s
        };
        let backup_detail = format!(
            "The runbook's manual backup: PRAGMA wal_checkpoint(TRUNCATE) on {db}; online backup to {}/{}<YYYYmmdd_HHMMSS>.db; `{}`; verify: decompress to {} and PRAGMA integrity_check. A copy of the failing database: never restored while a daily {}*.db.gz verifies",
            cfg.backup_dir,
            cfg.manual_backup_prefix,
            cfg.cmd(&cfg.compress_command, &[("file", "<backup>.db")])
                .map(|c| c.display())
                .unwrap_or_default(),
            cfg.verify_tmp(),
            cfg.backup_prefix,
        );
        let ps = if cfg.process_pattern.is_empty() {
            String::new()
        } else {
            format!(
                "; then no process of theirs may be left ({}; other processes matching {:?} are left alone)",
                if !cfg.pid_file.is_empty() {
                    format!("the pids in {}", cfg.pid_file)
                } else if cfg.process_pattern.contains("{service}") {
                    "matching the pattern per service".to_string()
                } else {
                    "matching the pattern and the service's name".to_string()
                },
                cfg.process_pattern
            )
        };
        let steps = match ctx.level {
            L_M3 => {
                let mut v = vec![
                    Step::auto("backup", "Back up the database", backup_detail)
                // Reads the database (a checkpoint moves the WAL into it
                // without changing its content) and adds a new file; it
                // deletes nothing. A second try takes another verified
                // backup under a fresh name (a cut-short one never verified).
                .observe()
                .repeatable(),
                    Step::auto(
                        "stop-embedding",
                        "Stop the embedding services",
                        format!("Run {}", stop(&cfg.milestone3_services)),
                    )
                // Stopping stopped services changes nothing.
                .disruptive()
                .repeatable(),
                ];
                if cfg.feature_flags_file.is_empty() {
                    v.push(Step::manual("disable-features", "Disable vector search features", "Set semantic_search_enabled, background_document_sync and embedding_generation to False in the application's FEATURE_FLAGS, stop loading the sqlite-vss extension, use exact-match search only (no feature_flags_file configured)")
                        // Flags off, set back on to undo; a person confirms it.
                        .reversible());
                } else {
                    v.push(Step::auto("disable-features", "Disable vector search features", format!("Set semantic_search_enabled, background_document_sync, embedding_generation = false in {}", cfg.feature_flags_file))
                        // Three flags set false, set back to undo; the other
                        // keys stay. Setting them false again changes nothing.
                        .reversible()
                        .repeatable());
                }
                v.push(Step::auto("drop-vector", "Drop the vector search tables", format!(
                    "DROP TABLE IF EXISTS {} on {db} (a virtual table whose module is not loaded is removed from the schema); UPDATE document_index SET sync_status = 'pending', embedding_blob = NULL",
                    cfg.vector_tables.join(", ")
                ))
                    // DROP TABLE IF EXISTS and the reset run again end the same.
                    .effect(Effect::Destructive)
                    .repeatable());
                v.push(Step::auto(
                    "check",
                    "Validate",
                    "PRAGMA integrity_check, foreign_key_check, the core and memory tables",
                )
                .observe()
                .repeatable());
                v
            }
            L_M2 => vec![
                Step::auto(
                    "stop",
                    "Stop services",
                    format!("Run {}{ps}", stop(&cfg.milestone2_services)),
                )
                // Stopping stopped services changes nothing.
                .disruptive()
                .repeatable(),
                Step::auto("backup", "Checkpoint the WAL and back up", backup_detail)
                // Reads the database (a checkpoint moves the WAL into it
                // without changing its content) and adds a new file; it
                // deletes nothing. A second try takes another verified
                // backup under a fresh name (a cut-short one never verified).
                .observe()
                .repeatable(),
                Step::auto(
                    "drop-memory",
                    "Drop memory tables and indexes",
                    format!(
                        "On {db}: DROP TABLE IF EXISTS {}; DROP INDEX IF EXISTS {} (and milestone 3's {} if present)",
                        cfg.memory_tables.join(", "),
                        cfg.memory_indexes.join(", "),
                        cfg.vector_tables.join(", ")
                    ),
                )
                // DROP ... IF EXISTS run again ends the same.
                .effect(Effect::Destructive)
                .repeatable(),
                Step::auto(
                    "check-core",
                    "Verify the core tables",
                    format!("Expected: {}", cfg.core_tables.join(", ")),
                )
                .observe()
                .repeatable(),
                Step::auto(
                    "validate",
                    "Validate the rollback",
                    "PRAGMA integrity_check = ok, foreign_key_check empty, no memory table or index left",
                )
                .observe()
                .repeatable(),
                Step::auto(
                    "start",
                    "Restart services (milestone 1 only)",
                    format!("Run {}", start(&cfg.milestone2_services)),
                )
                // The service manager's start of a running service does
                // nothing; the health wait reads.
                .disruptive()
                .repeatable(),
            ],
            L_CORRUPT => vec![
                Step::auto(
                    "recover",
                    "Recover into a new database",
                    format!(
                        "{}into {}; when that fails, rewind's reader copies every readable row (by rowid ranges) into it",
                        cfg.cmd(
                            &cfg.recover_command,
                            &[
                                ("db", db),
                                ("sql", &cfg.recover_sql()),
                                ("recovered", &cfg.recovered())
                            ]
                        )
                        .map(|c| format!(
                            "`{}` then `{}` ",
                            c.display(),
                            cfg.cmd(
                                &cfg.recover_load_command,
                                &[("sql", &cfg.recover_sql()), ("recovered", &cfg.recovered())]
                            )
                            .map(|c| c.display())
                            .unwrap_or_default()
                        ))
                        .unwrap_or_default(),
                        cfg.recovered()
                    ),
                )
                // Reads the corrupted database into a new file next to it;
                // clears its own outputs first, so a second try starts over.
                .observe()
                .repeatable(),
                Step::auto(
                    "verify-recovered",
                    "Verify the recovered database",
                    format!(
                        "PRAGMA integrity_check on {} and the core tables present; no table with fewer rows than {} (else that backup is restored instead)",
                        cfg.recovered(),
                        restore_source(&cfg)
                    ),
                )
                .observe()
                .repeatable(),
                Step::auto(
                    "stop",
                    "Stop services",
                    format!("Run {}{ps}", stop(&cfg.corruption_services)),
                )
                // Stopping stopped services changes nothing.
                .disruptive()
                .repeatable(),
                Step::auto(
                    "swap",
                    "Swap in the recovered database",
                    format!(
                        "Move {db} (with -wal, -shm; the WAL's size reported) to {}_corrupted_<date>.db for forensics and the recovered database into its place; if recovery failed or lost rows, restore {} instead",
                        cfg.in_db_dir(&cfg.db_stem()),
                        restore_source(&cfg)
                    ),
                )
                // The live database is replaced (the corrupted one is kept
                // aside, but writes since the backup are gone from the
                // service). Not repeatable: run again after it finished, it
                // would move the swapped-in database aside as "corrupted".
                .effect(Effect::Destructive),
                Step::auto(
                    "start",
                    "Restart services",
                    format!("Run {}", start(&cfg.corruption_services)),
                )
                // The service manager's start of a running service does
                // nothing; the health wait reads.
                .disruptive()
                .repeatable(),
            ],
            L_PROD => vec![
                Step::auto(
                    "stop",
                    "Immediate service shutdown",
                    format!("Run {}{ps}", stop(&cfg.production_stop_services)),
                )
                // Stopping stopped services changes nothing.
                .disruptive()
                .repeatable(),
                Step::auto(
                    "assess",
                    "Assess failure severity",
                    format!(
                        "PRAGMA integrity_check on {db}: CRITICAL when it fails, HIGH otherwise"
                    ),
                )
                .observe()
                .repeatable(),
                Step::auto(
                    "forensics",
                    "Keep the failed database",
                    format!(
                        "Copy {db} (and its -wal, -shm) to {}/failed_production_<date>.db; when it reads intact, checkpoint its WAL into it first (best effort: a failed checkpoint is reported and the WAL copied beside it); the WAL's size and frames are reported",
                        cfg.backup_dir
                    ),
                )
                // Copies the database into the backups (a checkpoint moves
                // the WAL into the database without changing its content);
                // a second try copies it again under a fresh name.
                .observe()
                .repeatable(),
                Step::auto(
                    "restore",
                    "Restore from the latest backup",
                    format!(
                        "{}: `{}` into {}, integrity_check again, remove the failed database's -wal, -shm (their size reported), rename over {db}",
                        restore_source(&cfg),
                        cfg.cmd(
                            &cfg.decompress_command,
                            &[("file", &format!("{}.gz", cfg.restore_tmp()))]
                        )
                        .map(|c| c.display())
                        .unwrap_or_default(),
                        cfg.restore_tmp()
                    ),
                )
                // Over the live database. Repeatable: the backup is pinned
                // and the services are stopped, so restoring it again ends
                // where one restore would.
                .effect(Effect::Destructive)
                .repeatable(),
                Step::auto(
                    "wal-recovery",
                    "Apply WAL recovery",
                    format!("If {} exists: PRAGMA wal_checkpoint(TRUNCATE)", cfg.wal()),
                )
                // A checkpoint: the database's content does not change.
                .observe()
                .repeatable(),
                Step::auto(
                    "validate",
                    "Validate restoration",
                    format!(
                        "integrity_check ok, foreign_key_check empty, core and memory tables, every table and index of the restored backup{}{}, no table with fewer rows than the backup, SELECT COUNT(*) FROM sessions",
                        cfg.min_tables.map(|n| format!(", >= {n} tables")).unwrap_or_default(),
                        cfg.min_indexes.map(|n| format!(", >= {n} indexes")).unwrap_or_default()
                    ),
                )
                .observe()
                .repeatable(),
                Step::auto(
                    "start",
                    "Restart services with monitoring",
                    format!("Run {}", start(&cfg.production_start_services)),
                )
                // The service manager's start of a running service does
                // nothing; the health wait reads.
                .disruptive()
                .repeatable(),
                Step::auto(
                    "post-validate",
                    "Post-rollback validation",
                    if cfg.validation_commands.is_empty() {
                        "No validation commands configured".to_string()
                    } else {
                        format!(
                            "Run `{}`; each must exit 0",
                            cfg.validation_commands
                                .iter()
                                .filter_map(|c| cfg.cmd(c, &[]).map(|c| c.display()))
                                .collect::<Vec<_>>()
                                .join("`, `")
                        )
                    },
                )
                .observe()
                .repeatable(),
            ],
            L_DISK => vec![
                Step::auto(
                    "measure",
                    "Check disk usage",
                    format!(
                        "Free space on the filesystem of {} (threshold {} bytes); sizes of the database files and backups",
                        cfg.db_dir(),
                        cfg.min_free_bytes
                    ),
                )
                .observe()
                .repeatable(),
                Step::auto(
                    "truncate-wal",
                    "Checkpoint and truncate the WAL",
                    format!("PRAGMA wal_checkpoint(TRUNCATE) on {db}"),
                )
                // A checkpoint: the database's content does not change.
                .observe()
                .repeatable(),
                Step::auto(
                    "prune-backups",
                    "Delete old backups",
                    format!(
                        "Delete {}{}*.db.gz older than {} days (the newest is always kept)",
                        cfg.in_backup_dir(""),
                        cfg.backup_prefix,
                        cfg.disk_retention_days
                    ),
                )
                // Deleting what is older than the retention again deletes
                // nothing more; the pinned restore backup is kept.
                .effect(Effect::Destructive)
                .repeatable(),
                Step::auto("vacuum", "VACUUM to reclaim space", format!("VACUUM {db}"))
                // Locks the database while it rewrites the file; the content
                // does not change, and a second VACUUM is a VACUUM.
                .disruptive()
                .repeatable(),
                Step::auto(
                    "report",
                    "Verify space reclaimed",
                    "Free space now against before and against the threshold",
                )
                .observe()
                .repeatable(),
            ],
            l => bail!("level {l} does not exist; the abathur plugin has levels 1 to 5"),
        };
        Ok(steps)
    }

    fn run_step(ctx: &Context, step: &str) -> Result<StepOutcome> {
        let cfg = Config::load(ctx)?;
        match ctx.level {
            L_M3 => run_m3(ctx, &cfg, step),
            L_M2 => run_m2(ctx, &cfg, step),
            L_CORRUPT => run_corrupt(ctx, &cfg, step),
            L_PROD => run_prod(ctx, &cfg, step),
            L_DISK => run_disk(ctx, &cfg, step),
            l => bail!("level {l} does not exist"),
        }
    }

    fn verify(ctx: &Context) -> Result<Verification> {
        let cfg = Config::load(ctx)?;
        let o = Observed::measure(&cfg)?;
        let mut f = match ctx.level {
            L_M3 => {
                let mut f = validate(&cfg, &o, true, None);
                f.push(o.absent_finding("vector tables", &cfg.vector_tables, o.table_list()));
                if db::columns(&cfg.db_path, "document_index")
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c == "sync_status")
                {
                    let n = db::count(
                        &cfg.db_path,
                        "SELECT count(*) FROM document_index WHERE sync_status <> 'pending'",
                    )
                    .unwrap_or(-1);
                    f.push(Finding::at_most("documents not pending", n as f64, 0.0, ""));
                }
                f
            }
            L_M2 => vec![
                o.integrity_finding(),
                o.fk_finding(),
                o.tables_finding("core tables (milestone 1)", &cfg.core_tables),
                o.absent_finding("memory tables", &cfg.memory_tables, o.table_list()),
                o.absent_finding("memory indexes", &cfg.memory_indexes, &o.indexes),
            ],
            L_CORRUPT => {
                let r = reference(ctx)?;
                let mut f = validate(&cfg, &o, Memory::of(&cfg, &o).tables > 0, r.as_ref());
                match &r {
                    Some(r) => f.push(rows_finding(&cfg.db_path, r).0),
                    None => f.push(salvage_loss_finding(ctx)?),
                }
                f
            }
            L_PROD => {
                let r = reference(ctx)?;
                let mut f = validate(&cfg, &o, true, r.as_ref());
                if let Some(r) = &r {
                    f.push(rows_finding(&cfg.db_path, r).0);
                }
                f
            }
            L_DISK => vec![
                o.integrity_finding(),
                o.wal_finding(&cfg),
                o.disk_finding(&cfg),
            ],
            l => bail!("level {l} does not exist"),
        };
        let mut health_check = None;
        if let Some((hf, _)) = health_finding(&cfg)? {
            health_check = Some(hf.check.clone());
            f.push(hf);
        }
        let only_health = f.iter().any(|x| x.breached)
            && f.iter()
                .filter(|x| x.breached)
                .all(|x| Some(&x.check) == health_check.as_ref());
        let lost_data = f.iter().any(|x| x.breached && x.check.starts_with("rows "));
        let v = Verification::from_findings(f);
        // Where a failure leads, as the runbook would have it: the next
        // level drops or restores data, which does not fix an API that is
        // down while the database checks pass; and after a restore that
        // did not verify, pruning backups could lose the last good one.
        Ok(match ctx.level {
            L_PROD => v.or_stop(
                "the restore did not verify; the next level prunes backups, which could lose the last good one: escalate to the database specialist",
            ),
            L_CORRUPT if lost_data => v.or_stop(
                "the database is back but rows are missing (see the rows finding), and no backup holds them: the corrupted database is kept beside it; a person must recover the rest (escalate to the database specialist)",
            ),
            _ if only_health => v.or_stop(
                "only the API health check failed and the database checks passed; the next level changes data, which would not bring the API back: look at the API",
            ),
            _ => v,
        })
    }
}

rewind_sdk::export_plugin!(Abathur);
