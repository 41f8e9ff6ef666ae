//! The feature-flags plugin: the three-level rollback of ROLLBACK_PROCEDURES.md
//! (GAP-001 parallel agent spawning, QW-001 parallel uploads, QW-002 MCP
//! tracking) for a pm2-managed Node application in a git checkout.
//!
//! - **assess** applies the runbook's decision criteria to the health
//!   endpoint, the app's processes, its log (error rate over 5 and 15
//!   minutes, cut into buckets so "for more than 5 minutes" means every
//!   bucket of the window; per-feature failure rates; request durations
//!   against a baseline) and its SQLite memory database (integrity, rows
//!   against the pre-deployment backup). Critical and major roll back;
//!   minor only says "monitor". The level follows from severity: data loss
//!   or corruption goes straight to Level 3 (the only level that restores
//!   data), everything else starts at Level 1 and the host escalates while
//!   verification fails.
//! - **Level 1, feature toggle**: the flags are set to `false` in `.env`
//!   by rewriting their lines atomically, the app is restarted, and the
//!   verification looks for the fallback markers in the log.
//! - **Level 2, code rollback**: archive the tree, check out the last
//!   `*-stable` tag, reinstall, rebuild, reload.
//! - **Level 3, full restore**: stop, move the failed tree aside, extract
//!   the pre-deployment tarball, restore the memory database, reinstall,
//!   rebuild if needed, start.
//!
//! Every verification also writes the runbook's incident record. The
//! config keys, with defaults, are in `config.rs` and `docs/plugins/feature-flags.md`.

mod clock;
mod config;
mod envfile;
mod logscan;
mod versions;

use rewind_sdk::prelude::*;
use rewind_sdk::report::num;
use rewind_sdk::storage::{DirEntry, EntryKind, SqlValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use clock::{Utc, now_ms};
use config::{Config, Feature, file_name, parent};
use logscan::Stats;

// ---------------------------------------------------------------------------
// State kept between calls (each call is a fresh instance).

/// What the assessment found, for the incident record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AssessInfo {
    severity: String,
    scenario: String,
    summary: String,
    breached: Vec<(String, String, String)>,
    /// Features with errors in the log.
    affected: Vec<String>,
}

/// Where the log was and which pids ran just before a restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RestartMark {
    offset: u64,
    done_ms: i64,
    pids_before: Vec<u32>,
}

/// Which features Level 1 turns off, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Disable {
    names: Vec<String>,
    why: String,
}

/// Level 2's target.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StableTag {
    tag: String,
    sha: String,
    /// Every tag matching the pattern, version-sorted.
    candidates: Vec<String>,
    head_before: String,
    /// The commit HEAD was at before the rollback (the deployed one).
    #[serde(default)]
    head_sha: String,
}

/// Level 3's choices.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Restore {
    backup: Option<String>,
    /// Why that backup (or why none).
    #[serde(default)]
    backup_why: String,
    memory_backup: Option<String>,
    #[serde(default)]
    memory_why: String,
    /// There are memory backups, but none predates the deployment.
    #[serde(default)]
    memory_refused: bool,
    failed_path: String,
    pkg_version: Option<String>,
}

/// One step as it went, for the incident record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ActionRec {
    level: u8,
    step: String,
    ok: bool,
    message: String,
}

fn kv_get<T: serde::de::DeserializeOwned>(ctx: &Context, key: &str) -> Result<Option<T>> {
    Ok(storage::get_json(&ctx.run_key(key))?)
}

fn kv_set<T: Serialize>(ctx: &Context, key: &str, value: &T) -> Result<()> {
    Ok(storage::set_json(&ctx.run_key(key), value)?)
}

/// A decision kept for the incident (`Context::pin`), as JSON: `decide`
/// runs only when nothing is pinned under `key` yet, so a resumed run, or
/// a second run after a partial rollback, acts on what the first decided
/// from the system as it was before the rollback changed it.
fn pin_json<T: Serialize + serde::de::DeserializeOwned>(
    ctx: &Context,
    key: &str,
    decide: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let text = ctx.pin(key, || Ok(serde_json::to_string(&decide()?)?))?;
    serde_json::from_str(&text).context(format!("the decision pinned as {key}"))
}

/// The decision pinned under `key`, if any.
fn pinned_json<T: serde::de::DeserializeOwned>(ctx: &Context, key: &str) -> Result<Option<T>> {
    match ctx.pinned(key)? {
        Some(text) => Ok(Some(
            serde_json::from_str(&text).context(format!("the decision pinned as {key}"))?,
        )),
        None => Ok(None),
    }
}

/// One timestamp per run for the names the runbook dates
/// (`backup-before-rollback-<stamp>.tar.gz`, `app-failed-<stamp>`), so the
/// plan shows the name the step will use.
fn run_stamp(ctx: &Context) -> Result<String> {
    ctx.run_stamp(|| Utc::at(now_ms()).stamp())
}

// ---------------------------------------------------------------------------
// Observations.

/// One answer of the health endpoint.
struct Answer {
    r: health::ProbeResult,
    json: Option<Value>,
}

impl Answer {
    fn get(cfg: &Config) -> Result<Self> {
        let r = cfg.health_probe().probe()?;
        let json = serde_json::from_str(&r.body).ok();
        Ok(Self { r, json })
    }

    fn field(&self, name: &str) -> Option<String> {
        match self.json.as_ref()?.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            v => Some(v.to_string()),
        }
    }

    fn describe(&self) -> String {
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

fn short(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() > max {
        let mut t: String = line.chars().take(max).collect();
        t.push_str("...");
        t
    } else {
        line.to_string()
    }
}

/// A commit id as `git log --oneline` abbreviates it (no ellipsis: it goes
/// into commands).
fn sha12(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// The first line of a command's output, for messages.
fn brief(out: &process::Output) -> String {
    let text = if out.stdout.trim().is_empty() {
        &out.stderr
    } else {
        &out.stdout
    };
    short(text.trim(), 160)
}

fn code(out: &process::Output) -> String {
    out.exit_code
        .map_or_else(|| "killed by a signal".into(), |c| c.to_string())
}

fn read_opt(path: &str) -> Result<Option<String>> {
    if storage::stat(path)?.is_none() {
        return Ok(None);
    }
    Ok(Some(storage::read_to_string(path)?))
}

fn exists(path: &str) -> Result<bool> {
    Ok(storage::exists(path)?)
}

/// How the log was measured when it could not be cut into time windows:
/// over its last `lines` lines, `untimed` of them entries without a
/// timestamp.
#[derive(Debug, Clone, Copy)]
struct Tail {
    lines: usize,
    untimed: usize,
    /// The log has no timestamp at all.
    none: bool,
}

/// The error rate windows of the log: (critical window, major window),
/// and `Some(tail)` when they were measured over its last lines instead:
/// the log has no timestamps, or its recent lines have entries without
/// one (an app that stamps its start and `console.log`s its work). Those
/// lines cannot be placed in time, and dropping them would read as "0%
/// errors"; the tail is one interval (no duration can be told), so a rate
/// above a threshold counts as sustained.
fn log_windows(cfg: &Config, text: &str, now: i64) -> (Stats, Stats, Option<Tail>) {
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
fn window_name(tail: Option<Tail>, window_s: u64) -> String {
    match tail {
        Some(t) if t.none => format!("last {} lines (the log has no timestamps)", t.lines),
        Some(t) => format!(
            "last {} lines ({} entries without a timestamp: no time window)",
            t.lines, t.untimed
        ),
        None => format!("last {}", minutes(window_s)),
    }
}

fn minutes(s: u64) -> String {
    if s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

fn human_ms(ms: u64) -> String {
    if ms >= 60_000 && ms.is_multiple_of(60_000) {
        format!("{} min", ms / 60_000)
    } else if ms >= 1000 && ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

/// Features whose failure rate breaks the "partial failure" line.
fn failing_features(cfg: &Config, crit: &Stats) -> Vec<String> {
    cfg.features
        .iter()
        .zip(&crit.features)
        .filter(|(_, (n, e))| {
            *n >= cfg.min_feature_events && logscan::pct(*e, *n) > cfg.partial_failure_pct
        })
        .map(|(f, _)| f.name.clone())
        .collect()
}

fn count_rows(db: &str, table: &str) -> Result<i64> {
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
enum Integrity {
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
fn is_corruption(message: &str) -> bool {
    let m = message.to_lowercase();
    m.contains("malformed") || m.contains("not a database") || m.contains("corrupt")
}

fn quick_check(db: &str) -> Integrity {
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

/// When the running release was deployed, and how that is known.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Deployed {
    at_ms: i64,
    how: String,
}

/// The deployment time: `deployed_at` from the config, else the time HEAD
/// last moved to the deployed commit, from git's reflog (`.git/logs/HEAD`:
/// the checkout or commit that deployed it). The deployed commit is the
/// HEAD Level 2 left (pinned with the stable tag) once Level 2 ran, else
/// HEAD. `None` when neither tells.
fn deployment(ctx: &Context, cfg: &Config) -> Result<Option<Deployed>> {
    if let Some(at) = &cfg.deployed_at {
        let Some(ms) = logscan::parse_ts(at.trim(), cfg.log_utc_offset_min) else {
            bail!(
                "bad [plugin.config] of plugin {:?}: deployed_at = {at:?} is not a time like \"2025-11-12T14:00:00Z\"",
                ctx.plugin
            );
        };
        return Ok(Some(Deployed {
            at_ms: ms,
            how: format!("deployed_at = {at:?}"),
        }));
    }
    let Ok(g) = git_state(cfg) else {
        return Ok(None);
    };
    let sha = pinned_json::<StableTag>(ctx, "stable_tag")?
        .map(|t| t.head_sha)
        .filter(|s| !s.is_empty())
        .unwrap_or(g.head_sha);
    let Some(reflog) = read_opt(&format!("{}/logs/HEAD", g.git_dir))? else {
        return Ok(None);
    };
    // `<old> <new> <name> <<email>> <unix seconds> <zone>\t<message>`
    let found = reflog.lines().rev().find_map(|l| {
        let (who, msg) = l.split_once('\t').unwrap_or((l, ""));
        let f: Vec<&str> = who.split_whitespace().collect();
        if f.len() < 4 || f[1] != sha {
            return None;
        }
        let secs: i64 = f[f.len() - 2].parse().ok()?;
        Some((secs * 1000, msg.to_string()))
    });
    Ok(found.map(|(at_ms, msg)| Deployed {
        at_ms,
        how: format!(
            "HEAD moved to {} then: \"{}\" in .git/logs/HEAD",
            sha12(&sha),
            short(&msg, 80)
        ),
    }))
}

/// A backup to restore, and why that one.
struct Chosen {
    path: Option<String>,
    why: String,
    /// How many backups there were to choose from.
    candidates: usize,
}

/// The newest file in `dir` whose name ends with one of `suffixes` (like
/// `ls -t | head -1`; ties go to the later name) that was taken before the
/// deployment (the runbook's "Identify pre-deployment backup"): a backup
/// taken after it holds the broken release. When the deployment time is
/// not known, the newest, and the reason says so.
fn pre_deployment(dir: &str, suffixes: &[&str], deployed: Option<&Deployed>) -> Result<Chosen> {
    let mut all: Vec<DirEntry> = if exists(dir)? {
        storage::list_dir(dir, false)?
            .into_iter()
            .filter(|e| e.kind == EntryKind::File)
            .filter(|e| suffixes.iter().any(|s| e.path.ends_with(s)))
            .collect()
    } else {
        Vec::new()
    };
    all.sort_by(|a, b| {
        b.modified_ms
            .cmp(&a.modified_ms)
            .then_with(|| file_name(&b.path).cmp(file_name(&a.path)))
    });
    let names = |v: &[&DirEntry]| {
        v.iter()
            .map(|e| file_name(&e.path).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if all.is_empty() {
        return Ok(Chosen {
            path: None,
            why: format!("no {} in {dir}", suffixes.join(" or ")),
            candidates: 0,
        });
    }
    let Some(d) = deployed else {
        return Ok(Chosen {
            path: Some(all[0].path.clone()),
            why: format!(
                "the newest of {} in {dir}; the deployment time is not known (no deployed_at, no reflog entry for HEAD), so it may have been taken after the deployment",
                all.len()
            ),
            candidates: all.len(),
        });
    };
    let (after, before): (Vec<&DirEntry>, Vec<&DirEntry>) =
        all.iter().partition(|e| e.modified_ms as i64 >= d.at_ms);
    let when = Utc::at(d.at_ms).rfc3339();
    let skipped = if after.is_empty() {
        String::new()
    } else {
        format!(
            "; skipped {} taken after it: {}",
            after.len(),
            names(&after)
        )
    };
    Ok(match before.first() {
        Some(e) => Chosen {
            path: Some(e.path.clone()),
            why: format!(
                "the newest of {} in {dir} that predates the deployment at {when} ({}){skipped}",
                all.len(),
                d.how
            ),
            candidates: all.len(),
        },
        None => Chosen {
            path: None,
            why: format!(
                "none of the {} in {dir} predates the deployment at {when} ({}): {}; name one in the config to restore it anyway",
                all.len(),
                d.how,
                names(&after)
            ),
            candidates: all.len(),
        },
    })
}

fn app_backup(ctx: &Context, cfg: &Config) -> Result<Chosen> {
    match &cfg.app_backup {
        Some(p) => Ok(Chosen {
            path: Some(p.clone()),
            why: "named by app_backup".into(),
            candidates: 1,
        }),
        None => pre_deployment(
            &cfg.app_backups_dir,
            &[".tar.gz", ".tgz"],
            deployment(ctx, cfg)?.as_ref(),
        ),
    }
}

fn memory_backup(ctx: &Context, cfg: &Config) -> Result<Chosen> {
    match &cfg.memory_backup {
        Some(p) => Ok(Chosen {
            path: Some(p.clone()),
            why: "named by memory_backup".into(),
            candidates: 1,
        }),
        None => pre_deployment(
            &cfg.memory_backups_dir,
            &[".db", ".sqlite", ".sqlite3"],
            deployment(ctx, cfg)?.as_ref(),
        ),
    }
}

fn describe_file(path: &str) -> Result<String> {
    Ok(match storage::stat(path)? {
        Some(e) => format!(
            "{path} ({} bytes, modified {})",
            e.size,
            Utc::at(e.modified_ms as i64).rfc3339()
        ),
        None => format!("{path} (missing)"),
    })
}

// ---------------------------------------------------------------------------
// Git, read from the repository's files.

struct GitState {
    git_dir: String,
    head_sha: String,
    head_name: String,
    tags: Vec<(String, String)>,
}

fn git_state(cfg: &Config) -> Result<GitState> {
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

/// Level 2's target: the newest `*-stable` tag below HEAD, decided once
/// for the incident. Decided again after the checkout it would be the tag
/// below the one checked out: a second run would go one release further
/// back.
fn stable_tag(ctx: &Context, cfg: &Config) -> Result<StableTag> {
    pin_json(ctx, "stable_tag", || decide_stable_tag(cfg))
}

fn decide_stable_tag(cfg: &Config) -> Result<StableTag> {
    let g = git_state(cfg)?;
    let mut candidates: Vec<String> = g
        .tags
        .iter()
        .filter(|(n, _)| n.contains(&cfg.stable_tag_pattern))
        .map(|(n, _)| n.clone())
        .collect();
    candidates.sort_by(|a, b| versions::cmp_version(a, b));
    let Some((tag, sha)) =
        versions::last_matching(&g.tags, &cfg.stable_tag_pattern, Some(&g.head_sha)).cloned()
    else {
        bail!(
            "no tag matching {:?} to roll back to in {} (HEAD {} is at {}; tags: {})",
            cfg.stable_tag_pattern,
            g.git_dir,
            g.head_name,
            sha12(&g.head_sha),
            if g.tags.is_empty() {
                "none".to_string()
            } else {
                g.tags
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    };
    let t = StableTag {
        tag,
        sha,
        candidates,
        head_before: format!("{} ({})", sha12(&g.head_sha), g.head_name),
        head_sha: g.head_sha.clone(),
    };
    Ok(t)
}

/// Level 3's choices, decided once for the incident: the newest tarball
/// and memory database backup when the incident starts (a backup taken
/// while it runs must not become the one a second run restores), and
/// where the failed tree goes (the first run's name, so that a second run
/// finds it moved aside already). The version the extracted backup
/// declares is this run's observation, kept next to it.
fn restore_choice(ctx: &Context, cfg: &Config) -> Result<Restore> {
    let mut r = pin_json(ctx, "restore", || {
        let (app, mem) = (app_backup(ctx, cfg)?, memory_backup(ctx, cfg)?);
        Ok(Restore {
            backup: app.path,
            backup_why: app.why,
            memory_refused: mem.path.is_none() && mem.candidates > 0,
            memory_backup: mem.path,
            memory_why: mem.why,
            failed_path: format!(
                "{}/{}-failed-{}",
                cfg.failed_dir(),
                file_name(&cfg.app_dir),
                run_stamp(ctx)?
            ),
            pkg_version: None,
        })
    })?;
    // Paths named in the config are the operator's choice, read afresh.
    if cfg.app_backup.is_some() {
        r.backup = cfg.app_backup.clone();
        r.backup_why = "named by app_backup".into();
    }
    if cfg.memory_backup.is_some() {
        r.memory_backup = cfg.memory_backup.clone();
        r.memory_why = "named by memory_backup".into();
    }
    r.pkg_version = kv_get(ctx, "pkg_version")?;
    Ok(r)
}

/// Level 1's choice. Features named in the config (`disable`) are the
/// operator's choice, read afresh; the failing ones found in the log are
/// decided once for the incident: once they are off, the log no longer
/// says which ones failed.
fn chosen_features(ctx: &Context, cfg: &Config) -> Result<(Vec<Feature>, String)> {
    let d = match cfg.features_to_disable_names()? {
        Some(names) if cfg.disable.trim() == "all" => Disable {
            names,
            why: "all feature flags (Level 1 of the runbook)".into(),
        },
        Some(names) => Disable {
            why: format!("the features named by disable = {:?}", cfg.disable),
            names,
        },
        None => pin_json(ctx, "disable", || {
            let text = read_opt(&cfg.log_file)?.unwrap_or_default();
            let (crit, _, _) = log_windows(cfg, &text, now_ms());
            let failing = failing_features(cfg, &crit);
            Ok(if failing.is_empty() {
                Disable {
                    names: cfg.features.iter().map(|f| f.name.clone()).collect(),
                    why: "no single feature is failing in the log, so all of them".into(),
                }
            } else {
                Disable {
                    why: format!(
                        "only the failing feature{} (failure rate above {}% in the last {})",
                        if failing.len() == 1 { "" } else { "s" },
                        num(cfg.partial_failure_pct),
                        minutes(cfg.critical_window_s)
                    ),
                    names: failing,
                }
            })
        })?,
    };
    // What this run disables, for its incident record.
    kv_set(ctx, "disable", &d)?;
    let feats = cfg
        .features
        .iter()
        .filter(|f| d.names.contains(&f.name))
        .cloned()
        .collect();
    Ok((feats, d.why))
}

// ---------------------------------------------------------------------------
// Assessment.

struct Reason {
    severity: Severity,
    data: bool,
    what: String,
}

fn reason(severity: Severity, what: impl Into<String>) -> Reason {
    Reason {
        severity,
        data: false,
        what: what.into(),
    }
}

fn rank(s: Severity) -> u8 {
    match s {
        Severity::None => 0,
        Severity::Minor => 1,
        Severity::Major => 2,
        Severity::Critical => 3,
    }
}

fn assess_log(
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

fn assess_data(
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

/// Rows of a table in the live database against the backup.
struct RowCompare {
    /// Compared from this rowid on (the live table's lowest).
    from_rowid: Option<i64>,
    live: i64,
    backup: i64,
}

fn query_int(db: &str, sql: &str, params: &[SqlValue]) -> Result<Option<i64>> {
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
fn compare_rows(
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

fn level_name(level: u8) -> &'static str {
    match level {
        1 => "feature toggle",
        2 => "code rollback",
        _ => "full system restore",
    }
}

// ---------------------------------------------------------------------------
// Steps.

fn cmd_ok(ctx: &Context, cmd: &Cmd, out: &process::Output, what: &str) -> StepOutcome {
    if out.simulated {
        return StepOutcome::ok(format!(
            "would run `{}` ({})",
            cmd.display(),
            ctx.mode.as_str()
        ));
    }
    if out.success() {
        StepOutcome::ok(format!(
            "{what}: `{}` exited 0 ({})",
            cmd.display(),
            brief(out)
        ))
    } else {
        StepOutcome::failed(format!(
            "{what}: `{}` exited {}: {}",
            cmd.display(),
            code(out),
            brief(out)
        ))
    }
}

/// Run a restart-like command (restart, reload, start), remembering where
/// the log ended and which pids ran before it.
fn restart_like(ctx: &Context, cfg: &Config, argv: &[String], what: &str) -> Result<StepOutcome> {
    let before = health::processes(&cfg.process_pattern())?.pids;
    let offset = storage::stat(&cfg.log_file)?.map_or(0, |e| e.size);
    let cmd = cfg.cmd(argv);
    log::info(format_args!("{what}: {}", cmd.display()));
    let out = cmd.run()?;
    let mark = RestartMark {
        offset,
        done_ms: now_ms(),
        pids_before: before.clone(),
    };
    kv_set(ctx, &format!("restart-l{}", ctx.level), &mark)?;
    let o = cmd_ok(ctx, &cmd, &out, what);
    Ok(if o.ok && !out.simulated {
        StepOutcome::ok(format!("{}; pids before: {before:?}", o.message))
    } else {
        o
    })
}

fn step_status(cfg: &Config) -> Result<StepOutcome> {
    let cmd = cfg.cmd(&cfg.status_cmd);
    let out = cmd.run()?;
    if out.simulated {
        return Ok(StepOutcome::ok(format!("would run `{}`", cmd.display())));
    }
    let procs = health::processes(&cfg.process_pattern())?;
    Ok(StepOutcome::ok(format!(
        "`{}` exited {} ({}); pids matching {:?}: {:?}",
        cmd.display(),
        code(&out),
        brief(&out),
        cfg.process_pattern(),
        procs.pids
    ))
    .with_findings(vec![
        Finding::check(
            format!("`{}` exit code", cmd.display()),
            out.exit_code == Some(0),
            code(&out),
            "0",
        ),
        Finding::at_least(
            format!("processes matching {:?}", cfg.process_pattern()),
            f64::from(procs.count),
            1.0,
            "",
        ),
    ]))
}

fn step_health(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let timeout = cfg.wait_ms(ctx.level);
    if !ctx.executes() {
        return Ok(StepOutcome::ok(format!(
            "would poll GET {} every {} ms for up to {} (nothing was restarted in a {} run)",
            cfg.health_url,
            cfg.probe_interval_ms,
            human_ms(timeout),
            ctx.mode.as_str()
        )));
    }
    let (w, gave_up) = wait_for_health(cfg, timeout)?;
    let findings = vec![
        Finding::status(
            format!("GET {} status", cfg.health_path()),
            w.last.status,
            200,
            399,
        ),
        Finding::at_most("time to healthy", w.elapsed_ms as f64, timeout as f64, "ms"),
    ];
    // Not healthy is not a failed step: the verification decides, and a
    // failed verification is what makes the host escalate.
    let msg = if w.healthy {
        format!("healthy after {} probes in {} ms", w.attempts, w.elapsed_ms)
    } else if gave_up {
        format!(
            "gave up after {} consecutive failed probes (failure_threshold) in {} ms, last: {}; the verification decides whether to escalate",
            cfg.failure_threshold, w.elapsed_ms, w.last.detail
        )
    } else {
        format!(
            "still not healthy after {} ms ({} probes, last: {}); the verification decides whether to escalate",
            w.elapsed_ms, w.attempts, w.last.detail
        )
    };
    Ok(StepOutcome::ok(msg).with_findings(findings))
}

/// Poll the health URL for up to `timeout`: while the app does not answer
/// (it is starting: connection refused) for the whole time, and once it
/// answers, until `failure_threshold` answers in a row fail. A steady 500
/// is not waited out: the runbook checks health once after the restart,
/// and the verification decides. Returns the wait and whether it gave up
/// on the failure threshold.
fn wait_for_health(cfg: &Config, timeout: u64) -> Result<(health::WaitResult, bool)> {
    let every = WaitPolicy::every(cfg.probe_interval_ms);
    if cfg.failure_threshold == 0 {
        return Ok((cfg.health_probe().wait(every.timeout_ms(timeout))?, false));
    }
    // Any HTTP answer ends the first wait.
    let answered = cfg
        .health_probe()
        .expect(100, 599)
        .wait(every.timeout_ms(timeout))?;
    if !answered.healthy {
        return Ok((answered, false));
    }
    let left = timeout.saturating_sub(answered.elapsed_ms);
    let mut w = cfg
        .health_probe()
        .wait(every.timeout_ms(left).failures(cfg.failure_threshold))?;
    let gave_up = !w.healthy && w.attempts >= cfg.failure_threshold;
    w.attempts += answered.attempts;
    w.elapsed_ms += answered.elapsed_ms;
    Ok((w, gave_up))
}

fn step_env(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let (feats, why) = chosen_features(ctx, cfg)?;
    let flags: Vec<String> = feats.iter().map(|f| f.flag.clone()).collect();
    let path = cfg.env_file();
    let original = read_opt(&path)?;
    let header = format!("Emergency feature toggles ({})", Utc::at(now_ms()).date());
    let rw = envfile::set_flags(original.as_deref().unwrap_or(""), &flags, "false", &header);
    let edits: Vec<String> = rw.edits.iter().map(|e| e.describe("false")).collect();
    if original.is_some() && !rw.changed(original.as_deref().unwrap_or("")) {
        return Ok(StepOutcome::ok(format!(
            "{path} already has {}: nothing to rewrite ({})",
            flags.join(", "),
            edits.join("; ")
        )));
    }
    let mut snap = String::new();
    if original.is_some() {
        let s = storage::snapshot(
            &format!("feature-flags-env-{}", ctx.run_id),
            std::slice::from_ref(&path),
        )?;
        snap = format!("; the old file is in snapshot {}", s.id);
    }
    storage::write_string(&path, &rw.text)?;
    let verb = if ctx.executes() {
        "rewrote"
    } else {
        "would rewrite"
    };
    Ok(StepOutcome::ok(format!(
        "{verb} {path} atomically ({why}): {}; {} other lines untouched{snap}",
        edits.join("; "),
        rw.untouched
    )))
}

fn step_inspect(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let t = stable_tag(ctx, cfg)?;
    let log5 = cfg.git(&["log", "--oneline", "-5"]).run()?;
    let describe = cfg.git(&["describe", "--tags", "--always"]).run()?;
    if log5.simulated {
        return Ok(StepOutcome::ok(format!(
            "would run `git log --oneline -5` and `git describe --tags`; HEAD is {}; last stable tag {}",
            t.head_before, t.tag
        )));
    }
    Ok(StepOutcome::ok(format!(
        "current version {} (HEAD {}; last commit: {}); last stable version {} (of {})",
        describe.stdout.trim(),
        t.head_before,
        short(log5.stdout.trim(), 100),
        t.tag,
        t.candidates.join(", ")
    )))
}

fn step_backup(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let archive = format!(
        "{}/backup-before-rollback-{}.tar.gz",
        cfg.rollback_backup_dir,
        run_stamp(ctx)?
    );
    let cmd = Cmd::new(&cfg.tar)
        .args(["-czf", archive.as_str(), "."])
        .cwd(&cfg.app_dir)
        .timeout_ms(cfg.command_timeout_ms);
    let out = cmd.run()?;
    if out.simulated {
        return Ok(StepOutcome::ok(format!(
            "would run `{}` in {}",
            cmd.display(),
            cfg.app_dir
        )));
    }
    // GNU tar exits 1 when a file changed while it was read (a live log or
    // database); the archive is still complete and is checked below.
    if !matches!(out.exit_code, Some(0 | 1)) {
        return Ok(StepOutcome::failed(format!(
            "`{}` exited {}: {}",
            cmd.display(),
            code(&out),
            brief(&out)
        )));
    }
    let list = Cmd::new(&cfg.tar)
        .args(["-tzf", archive.as_str()])
        .cwd(&cfg.app_dir)
        .timeout_ms(cfg.command_timeout_ms)
        .run()?;
    let entries = list.stdout.lines().count();
    if !list.success() || entries == 0 {
        return Ok(StepOutcome::failed(format!(
            "{archive} does not read back: `tar -tzf` exited {} with {entries} entries: {}",
            code(&list),
            brief(&list)
        )));
    }
    kv_set(ctx, "archive", &archive)?;
    let warn = if out.exit_code == Some(1) {
        format!(" (tar warned: {})", brief(&out))
    } else {
        String::new()
    };
    Ok(StepOutcome::ok(format!(
        "archived {} into {archive}: {entries} entries{warn}",
        cfg.app_dir
    )))
}

fn step_fetch(cfg: &Config) -> Result<StepOutcome> {
    let cmd = cfg.git(&["fetch", cfg.git_remote.as_str()]);
    let out = cmd.run()?;
    if out.simulated {
        return Ok(StepOutcome::ok(format!("would run `{}`", cmd.display())));
    }
    Ok(if out.success() {
        StepOutcome::ok(format!("`{}` exited 0", cmd.display()))
    } else {
        // The tag to check out is already known locally; an unreachable
        // remote must not stop the rollback.
        StepOutcome::ok(format!(
            "`{}` exited {} ({}); continuing with the local tags",
            cmd.display(),
            code(&out),
            brief(&out)
        ))
    })
}

fn step_checkout(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let t = stable_tag(ctx, cfg)?;
    let cmd = cfg.git(&["checkout", t.tag.as_str()]);
    let out = cmd.run()?;
    if out.simulated {
        return Ok(StepOutcome::ok(format!("would run `{}`", cmd.display())));
    }
    if !out.success() {
        return Ok(StepOutcome::failed(format!(
            "`{}` exited {}: {}",
            cmd.display(),
            code(&out),
            short(out.stderr.trim(), 300)
        )));
    }
    let at = cfg.git(&["tag", "--points-at", "HEAD"]).run()?;
    let describe = cfg.git(&["describe", "--tags"]).run()?;
    let tags: Vec<&str> = at.stdout.lines().map(str::trim).collect();
    let ok = tags.contains(&t.tag.as_str());
    let f = Finding::check(
        "git tag --points-at HEAD",
        ok,
        if tags.is_empty() {
            "none".to_string()
        } else {
            tags.join(", ")
        },
        format!("contains {}", t.tag),
    );
    let msg = format!(
        "checked out {}; git describe --tags: {}",
        t.tag,
        describe.stdout.trim()
    );
    Ok(if ok {
        StepOutcome::ok(msg)
    } else {
        StepOutcome::failed(msg)
    }
    .with_findings(vec![f]))
}

fn step_reinstall(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let mut removed = Vec::new();
    for p in &cfg.clean_paths {
        let path = cfg.app(p);
        if exists(&path)? {
            storage::remove(&path)?;
            removed.push(p.clone());
        }
    }
    let cmd = cfg.cmd(&cfg.install_cmd);
    let out = cmd.run()?;
    let o = cmd_ok(ctx, &cmd, &out, "dependencies reinstalled");
    let removed = if removed.is_empty() {
        "nothing to remove".to_string()
    } else {
        format!(
            "{} {}",
            if ctx.executes() {
                "removed"
            } else {
                "would remove"
            },
            removed.join(", ")
        )
    };
    Ok(StepOutcome {
        message: format!("{removed}; {}", o.message),
        ..o
    })
}

fn step_build(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let cmd = cfg.cmd(&cfg.build_cmd).env("NODE_ENV", "production");
    let out = cmd.run()?;
    Ok(cmd_ok(ctx, &cmd, &out, "built with NODE_ENV=production"))
}

fn step_stop(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let r = restore_choice(ctx, cfg)?;
    let Some(backup) = &r.backup else {
        return Ok(StepOutcome::failed(format!(
            "no pre-deployment backup to restore ({}): not stopping the application for a restore that cannot happen",
            r.backup_why
        )));
    };
    if !exists(backup)? {
        return Ok(StepOutcome::failed(format!(
            "the backup {backup} does not exist: not stopping the application"
        )));
    }
    let cmd = cfg.cmd(&cfg.stop_cmd);
    let out = cmd.run()?;
    Ok(cmd_ok(ctx, &cmd, &out, "application stopped"))
}

fn step_identify(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let r = restore_choice(ctx, cfg)?;
    let Some(backup) = &r.backup else {
        return Ok(StepOutcome::failed(format!(
            "no pre-deployment backup to restore: {}",
            r.backup_why
        )));
    };
    let mut msg = format!(
        "pre-deployment backup {}: {}",
        describe_file(backup)?,
        r.backup_why
    );
    match &r.memory_backup {
        Some(m) => {
            let counts: Vec<String> = cfg
                .memory_tables
                .iter()
                .map(|t| match count_rows(m, t) {
                    Ok(n) => format!("{n} rows in {t}"),
                    Err(e) => format!("{t}: {}", e.message()),
                })
                .collect();
            msg.push_str(&format!(
                "; memory database backup {} ({}): {}",
                describe_file(m)?,
                counts.join(", "),
                r.memory_why
            ));
        }
        None => msg.push_str(&format!(
            "; no memory database backup to restore: {}",
            r.memory_why
        )),
    }
    Ok(StepOutcome::ok(msg))
}

fn step_move_aside(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let r = restore_choice(ctx, cfg)?;
    // The path is pinned for the incident and named by its first run's
    // stamp: when it exists, this incident moved the failed tree there
    // already (a resumed or second run), and what is in app_dir now is
    // what the restore extracted.
    if exists(&r.failed_path)? {
        return Ok(StepOutcome::ok(format!(
            "the failed tree was moved to {} already; {} is left as it is",
            r.failed_path, cfg.app_dir
        )));
    }
    storage::rename(&cfg.app_dir, &r.failed_path)?;
    Ok(StepOutcome::ok(format!(
        "{} {} to {}",
        if ctx.executes() {
            "moved"
        } else {
            "would move"
        },
        cfg.app_dir,
        r.failed_path
    )))
}

fn step_extract(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let mut r = restore_choice(ctx, cfg)?;
    let Some(backup) = r.backup.clone() else {
        return Ok(StepOutcome::failed("no backup to extract"));
    };
    storage::make_dir(&cfg.app_dir)?;
    let cmd = Cmd::new(&cfg.tar)
        .args(["-xzf", backup.as_str(), "-C", cfg.app_dir.as_str()])
        .cwd(&cfg.app_dir)
        .timeout_ms(cfg.command_timeout_ms);
    let out = cmd.run()?;
    if !out.success() {
        return Ok(StepOutcome::failed(format!(
            "`{}` exited {}: {}",
            cmd.display(),
            code(&out),
            brief(&out)
        )));
    }
    let pkg = read_opt(&cfg.app("package.json"))?
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.get("version").and_then(Value::as_str).map(str::to_string));
    let entries = storage::list_dir(&cfg.app_dir, false)?.len();
    if ctx.executes() {
        r.pkg_version = pkg.clone();
        kv_set(ctx, "pkg_version", &pkg)?;
        Ok(StepOutcome::ok(format!(
            "extracted {backup} into {}: {entries} entries; package.json version {}",
            cfg.app_dir,
            pkg.as_deref().unwrap_or("missing")
        )))
    } else {
        Ok(StepOutcome::ok(format!(
            "would create {} and run `{}`",
            cfg.app_dir,
            cmd.display()
        )))
    }
}

fn step_restore_db(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let r = restore_choice(ctx, cfg)?;
    let db = cfg.memory_db_path();
    let Some(backup) = &r.memory_backup else {
        // Backups that all came after the deployment hold what it did to
        // the database: restoring one would not roll it back, and keeping
        // the live one is no restore either.
        if r.memory_refused {
            return Ok(StepOutcome::failed(format!(
                "no memory database backup to restore: {}",
                r.memory_why
            )));
        }
        return Ok(StepOutcome::ok(format!(
            "nothing to restore ({}; the runbook restores it if applicable)",
            r.memory_why
        )));
    };
    let mut before = Vec::new();
    for t in &cfg.memory_tables {
        match count_rows(backup, t) {
            Ok(n) => before.push((t.clone(), n)),
            Err(e) => {
                return Ok(StepOutcome::failed(format!(
                    "the backup {backup} cannot be read ({t}: {}); not restoring it",
                    e.message()
                )));
            }
        }
    }
    let mut notes = Vec::new();
    // `cp .swarm/memory.db .swarm/memory.db.rollback-backup`: the database
    // as it was when the app failed sits next to the restored one.
    let failed_db = format!("{}/{}", r.failed_path, cfg.memory_db);
    let current = if exists(&failed_db)? {
        Some(failed_db)
    } else if !ctx.executes() && exists(&db)? {
        Some(db.clone())
    } else {
        None
    };
    storage::make_dir(&parent(&db))?;
    let keep = format!("{db}.rollback-backup");
    if let Some(cur) = &current {
        storage::copy(cur, &keep)?;
        if exists(&format!("{cur}-wal"))? {
            storage::copy(&format!("{cur}-wal"), &format!("{keep}-wal"))?;
        }
        notes.push(format!("kept {cur} as {keep}"));
    }
    // A journal left next to the target belongs to another database.
    for suffix in ["-wal", "-shm", "-journal"] {
        let p = format!("{db}{suffix}");
        if exists(&p)? {
            storage::remove(&p)?;
            notes.push(format!("removed stale {p}"));
        }
    }
    storage::copy(backup, &db)?;
    let expected: Vec<String> = before
        .iter()
        .map(|(t, n)| format!("{n} rows in {t}"))
        .collect();
    if !ctx.executes() {
        return Ok(StepOutcome::ok(format!(
            "would copy {backup} to {db} ({}){}",
            expected.join(", "),
            if notes.is_empty() {
                String::new()
            } else {
                format!("; would have {}", notes.join("; "))
            }
        )));
    }
    let mut findings = Vec::new();
    for (t, n) in &before {
        let now = count_rows(&db, t)
            .map_or_else(|e| format!("error: {}", e.message()), |c| c.to_string());
        findings.push(Finding::equals(
            format!("SELECT COUNT(*) FROM {t} (restored vs backup)"),
            now,
            n,
        ));
    }
    let ok = findings.iter().all(|f| !f.breached);
    let msg = format!(
        "restored {backup} to {db}: {}{}",
        expected.join(", "),
        if notes.is_empty() {
            String::new()
        } else {
            format!("; {}", notes.join("; "))
        }
    );
    Ok(if ok {
        StepOutcome::ok(msg)
    } else {
        StepOutcome::failed(msg)
    }
    .with_findings(findings))
}

fn step_check_env(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let path = cfg.env_file();
    let scope = if ctx.executes() {
        ""
    } else {
        " (the current tree: nothing was extracted in a dry run)"
    };
    match read_opt(&path)? {
        None => Ok(
            StepOutcome::ok(format!("{path} is missing{scope}")).with_findings(vec![
                Finding::check(format!("{path} present"), false, "missing", "present"),
            ]),
        ),
        Some(text) => {
            let flags: Vec<String> = cfg
                .features
                .iter()
                .map(|f| {
                    let defs = envfile::definitions(&text, &f.flag);
                    match defs.last() {
                        Some((_, v)) => format!("{}={v}", f.flag),
                        None => format!("{} unset", f.flag),
                    }
                })
                .collect();
            Ok(StepOutcome::ok(format!(
                "{path}: {} settings; {} (other values are not printed){scope}",
                envfile::count_settings(&text),
                flags.join(", ")
            )))
        }
    }
}

fn step_build_artifacts(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let mut present = Vec::new();
    let mut missing = Vec::new();
    for d in &cfg.build_dirs {
        if exists(&cfg.app(d))? {
            present.push(d.clone());
        } else {
            missing.push(d.clone());
        }
    }
    let seen = format!(
        "present: {}; missing: {}",
        if present.is_empty() {
            "none".into()
        } else {
            present.join(", ")
        },
        if missing.is_empty() {
            "none".into()
        } else {
            missing.join(", ")
        }
    );
    if exists(&cfg.app(&cfg.build_marker))? && ctx.executes() {
        return Ok(StepOutcome::ok(format!(
            "build artifacts {seen}: {} is there, no rebuild",
            cfg.build_marker
        )));
    }
    let cmd = cfg.cmd(&cfg.build_cmd).env("NODE_ENV", "production");
    let out = cmd.run()?;
    let o = cmd_ok(ctx, &cmd, &out, "rebuilt");
    Ok(StepOutcome {
        message: format!(
            "build artifacts {seen}; {} missing: {}",
            cfg.build_marker, o.message
        ),
        ..o
    })
}

/// The command of the config a step runs, for the steps that run one.
/// A `[]` command skips its step: `plan` leaves it out, and a run planned
/// before the config changed skips it.
fn step_command<'a>(
    cfg: &'a Config,
    level: u8,
    step: &str,
) -> Option<(&'static str, &'a [String])> {
    Some(match (level, step) {
        (1, "restart") => ("restart_cmd", &cfg.restart_cmd),
        (2, "reinstall") | (3, "install") => ("install_cmd", &cfg.install_cmd),
        (2 | 3, "build") => ("build_cmd", &cfg.build_cmd),
        (2, "reload") => ("reload_cmd", &cfg.reload_cmd),
        (3, "stop") => ("stop_cmd", &cfg.stop_cmd),
        (3, "start") => ("start_cmd", &cfg.start_cmd),
        (_, "status") => ("status_cmd", &cfg.status_cmd),
        _ => return None,
    })
}

/// The step's command is `[]`: the step does not run.
fn skipped(cfg: &Config, level: u8, step: &str) -> Option<&'static str> {
    step_command(cfg, level, step).and_then(|(key, argv)| argv.is_empty().then_some(key))
}

fn run_level_step(ctx: &Context, cfg: &Config, step: &str) -> Result<StepOutcome> {
    if let Some(key) = skipped(cfg, ctx.level, step) {
        return Ok(StepOutcome::ok(format!("skipped: {key} = []")));
    }
    match (ctx.level, step) {
        (1, "env") => step_env(ctx, cfg),
        (1, "restart") => restart_like(ctx, cfg, &cfg.restart_cmd, "restarted"),
        (2, "inspect") => step_inspect(ctx, cfg),
        (2, "backup") => step_backup(ctx, cfg),
        (2, "fetch") => step_fetch(cfg),
        (2, "checkout") => step_checkout(ctx, cfg),
        (2, "reinstall") => step_reinstall(ctx, cfg),
        (2, "build") => step_build(ctx, cfg),
        (2, "reload") => restart_like(ctx, cfg, &cfg.reload_cmd, "reloaded"),
        (3, "stop") => step_stop(ctx, cfg),
        (3, "identify") => step_identify(ctx, cfg),
        (3, "move-aside") => step_move_aside(ctx, cfg),
        (3, "extract") => step_extract(ctx, cfg),
        (3, "restore-db") => step_restore_db(ctx, cfg),
        (3, "check-env") => step_check_env(ctx, cfg),
        (3, "install") => {
            let cmd = cfg.cmd(&cfg.install_cmd);
            let out = cmd.run()?;
            Ok(cmd_ok(ctx, &cmd, &out, "dependencies installed"))
        }
        (3, "build") => step_build_artifacts(ctx, cfg),
        (3, "start") => restart_like(ctx, cfg, &cfg.start_cmd, "started"),
        (_, "status") => step_status(cfg),
        (_, "health") => step_health(ctx, cfg),
        (level, other) => bail!("level {level} has no step {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Verification.

/// Findings every level checks: the health endpoint (and its stability over
/// the level's monitoring window), the processes, the log since the restart.
fn verify_common(ctx: &Context, cfg: &Config, f: &mut Vec<Finding>) -> Result<Answer> {
    let h = Answer::get(cfg)?;
    f.push(Finding::status(
        format!("GET {} status", cfg.health_path()),
        h.r.status,
        200,
        399,
    ));
    if let Some(s) = h.field("status") {
        f.push(Finding::equals(
            format!("GET {} .status", cfg.health_path()),
            s,
            "healthy",
        ));
    }
    let stable_ms = cfg.stable_ms(ctx.level);
    if ctx.executes() && h.r.healthy && stable_ms > 0 {
        let interval = cfg.probe_interval_ms.max(1);
        let n = u32::try_from(stable_ms / interval)
            .unwrap_or(u32::MAX)
            .max(1)
            + 1;
        let w = cfg.health_probe().wait(
            WaitPolicy::every(interval)
                .timeout_ms(stable_ms + 2 * interval + cfg.probe_timeout_ms)
                .successes(n)
                .failures(1),
        )?;
        f.push(Finding::check(
            format!(
                "stable for {} (GET {} every {} ms)",
                human_ms(stable_ms),
                cfg.health_path(),
                interval
            ),
            w.healthy,
            if w.healthy {
                format!(
                    "{} healthy probes in a row in {} ms",
                    w.attempts, w.elapsed_ms
                )
            } else {
                format!("unhealthy after {} ms ({})", w.elapsed_ms, w.last.detail)
            },
            format!("{n} healthy probes in a row"),
        ));
    }
    let procs = health::processes(&cfg.process_pattern())?;
    f.push(Finding::at_least(
        format!(
            "processes matching {:?} (pm2 status)",
            cfg.process_pattern()
        ),
        f64::from(procs.count),
        1.0,
        "",
    ));
    if ctx.level == 1
        && let Some(mark) = kv_get::<RestartMark>(ctx, "restart-l1")?
        && ctx.executes()
    {
        let fresh = procs.pids.iter().any(|p| !mark.pids_before.contains(p));
        f.push(Finding::check(
            "application restarted",
            fresh,
            format!("pids {:?} -> {:?}", mark.pids_before, procs.pids),
            "a new pid",
        ));
    }
    // `tail -100 /var/log/app.log | grep -i error | wc -l`: 0 or very low.
    if let Some(mark) = kv_get::<RestartMark>(ctx, &format!("restart-l{}", ctx.level))?
        && let Some(text) = read_opt(&cfg.log_file)?
    {
        let since = logscan::since_offset(&text, mark.offset);
        let lines = logscan::lines_since(since, mark.done_ms, cfg.log_utc_offset_min);
        let recent = &lines[lines.len().saturating_sub(cfg.recent_lines)..];
        let errors = recent
            .iter()
            .filter(|l| logscan::matches_ci(l, &cfg.error_pattern))
            .count();
        f.push(Finding::at_most(
            format!(
                "error lines in the last {} log lines since the restart ({} lines)",
                cfg.recent_lines,
                recent.len()
            ),
            errors as f64,
            cfg.max_recent_errors as f64,
            "",
        ));
    }
    Ok(h)
}

fn verify_level1(ctx: &Context, cfg: &Config, f: &mut Vec<Finding>) -> Result<()> {
    let (feats, _) = chosen_features(ctx, cfg)?;
    let path = cfg.env_file();
    let text = read_opt(&path)?.unwrap_or_default();
    for feat in &feats {
        let defs = envfile::definitions(&text, &feat.flag);
        let observed = match defs.as_slice() {
            [] => "not set".to_string(),
            [(line, v)] => format!("{v} (line {line})"),
            many => format!(
                "{} definitions: {}",
                many.len(),
                many.iter()
                    .map(|(l, v)| format!("line {l}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let ok = defs.len() == 1 && envfile::is_off(&defs[0].1);
        f.push(Finding::check(
            format!("{} in {path}", feat.flag),
            ok,
            observed,
            "= false, defined once",
        ));
    }
    let mark = kv_get::<RestartMark>(ctx, "restart-l1")?.unwrap_or_default();
    let log = read_opt(&cfg.log_file)?.unwrap_or_default();
    let since = logscan::since_offset(&log, mark.offset);
    for feat in &feats {
        let n = since
            .lines()
            .filter(|l| feat.markers.iter().any(|m| logscan::matches(l, m)))
            .count();
        f.push(Finding::check(
            format!(
                "{} fallback in the log since the restart (grep {})",
                feat.name,
                feat.markers
                    .iter()
                    .map(|m| format!("{m:?}"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
            n > 0,
            format!("{n} lines"),
            ">= 1 line",
        ));
    }
    Ok(())
}

fn verify_level2(ctx: &Context, cfg: &Config, h: &Answer, f: &mut Vec<Finding>) -> Result<()> {
    let t = stable_tag(ctx, cfg)?;
    if ctx.executes() {
        let at = cfg.git(&["tag", "--points-at", "HEAD"]).run()?;
        let tags: Vec<&str> = at.stdout.lines().map(str::trim).collect();
        f.push(Finding::check(
            format!("git tag --points-at HEAD in {}", cfg.app_dir),
            tags.contains(&t.tag.as_str()),
            if tags.is_empty() {
                "none".to_string()
            } else {
                tags.join(", ")
            },
            format!("contains {}", t.tag),
        ));
    } else {
        let g = git_state(cfg)?;
        f.push(Finding::check(
            format!("HEAD of {}", cfg.app_dir),
            g.head_sha == t.sha,
            format!("{} ({})", sha12(&g.head_sha), g.head_name),
            format!("{} ({})", sha12(&t.sha), t.tag),
        ));
    }
    if !cfg.version_field.is_empty() && !cfg.served_version.is_empty() {
        // What the app serves for a tag is the deployment's convention
        // (`served_version`): the tag without its `v` by default.
        let expected = versions::served(&cfg.served_version, &t.tag);
        let served = h.field(&cfg.version_field);
        let ok = served
            .as_deref()
            .is_some_and(|v| versions::glob(&expected, v));
        f.push(Finding::check(
            format!(
                "version served (GET {} .{})",
                cfg.health_path(),
                cfg.version_field
            ),
            ok,
            served.unwrap_or_else(|| "not reported".into()),
            format!(
                "= {expected} (served_version {:?} of {})",
                cfg.served_version, t.tag
            ),
        ));
    }
    Ok(())
}

fn verify_level3(ctx: &Context, cfg: &Config, h: &Answer, f: &mut Vec<Finding>) -> Result<()> {
    let r = restore_choice(ctx, cfg)?;
    let pkg = match r.pkg_version.clone() {
        Some(v) => Some(v),
        None => read_opt(&cfg.app("package.json"))?
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v.get("version").and_then(Value::as_str).map(str::to_string)),
    };
    if !cfg.version_field.is_empty()
        && let Some(pkg) = pkg
    {
        let served = h
            .field(&cfg.version_field)
            .unwrap_or_else(|| "not reported".into());
        // `1.0.0`, `1.0.0-stable`, `1.0.0+build`, also with a leading `v`.
        let bare = served.strip_prefix('v').unwrap_or(&served);
        let ok = bare == pkg
            || bare.starts_with(&format!("{pkg}-"))
            || bare.starts_with(&format!("{pkg}+"));
        f.push(Finding::check(
            format!(
                "version served (GET {} .{}) vs package.json of the backup",
                cfg.health_path(),
                cfg.version_field
            ),
            ok,
            served,
            format!("= {pkg} (or {pkg}-*, {pkg}+*, v{pkg}...)"),
        ));
    }
    if let Some(backup) = &r.memory_backup {
        let db = cfg.memory_db_path();
        for t in &cfg.memory_tables {
            let now = count_rows(&db, t)
                .map_or_else(|e| format!("error: {}", e.message()), |n| n.to_string());
            let before = count_rows(backup, t)
                .map_or_else(|e| format!("error: {}", e.message()), |n| n.to_string());
            f.push(Finding::equals(
                format!(
                    "rows in {t} (memory database vs backup {})",
                    file_name(backup)
                ),
                now,
                before,
            ));
        }
    }
    let env = cfg.env_file();
    let present = exists(&env)?;
    f.push(Finding::check(
        format!("{env} present"),
        present,
        if present { "present" } else { "missing" },
        "present",
    ));
    Ok(())
}

/// The runbook's "Core Functionality Tests": spawn an agent, upload a file.
fn smoke_tests(cfg: &Config, f: &mut Vec<Finding>) {
    let mut post = |path: &str, req: http::HttpRequest| {
        let status = req.send().ok().map(|r| r.status);
        f.push(Finding::status(format!("POST {path}"), status, 200, 299));
    };
    if !cfg.smoke_spawn_path.is_empty() {
        post(
            &cfg.smoke_spawn_path,
            http::HttpRequest::post(
                cfg.url(&cfg.smoke_spawn_path),
                r#"{"agents": [{"type": "researcher", "name": "Test"}]}"#,
            )
            .header("content-type", "application/json")
            .timeout_ms(cfg.probe_timeout_ms.max(5000)),
        );
    }
    if !cfg.smoke_upload_path.is_empty() {
        let boundary = "rewind-post-rollback-check";
        let body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"rewind-test-document.txt\"\r\nContent-Type: text/plain\r\n\r\npost-rollback upload check\r\n--{boundary}--\r\n"
        );
        post(
            &cfg.smoke_upload_path,
            http::HttpRequest::post(cfg.url(&cfg.smoke_upload_path), body)
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .timeout_ms(cfg.probe_timeout_ms.max(5000)),
        );
    }
}

// ---------------------------------------------------------------------------
// The incident record (the runbook's communication template).

enum Status {
    Completed,
    Escalating,
    Failed(String),
}

fn write_incident(
    ctx: &Context,
    cfg: &Config,
    status: &Status,
    findings: &[Finding],
) -> Result<String> {
    let now = Utc::at(now_ms());
    let a = kv_get::<AssessInfo>(ctx, "assessment")?.unwrap_or_default();
    let actions = kv_get::<Vec<ActionRec>>(ctx, "actions")?.unwrap_or_default();
    let level = ctx.level;
    let status_line = match status {
        Status::Completed => "COMPLETED".to_string(),
        Status::Escalating => format!(
            "IN PROGRESS (level {level} did not verify; escalating to level {})",
            level + 1
        ),
        Status::Failed(why) => format!("FAILED ({why})"),
    };
    let mut md = String::new();
    md.push_str("# Production Incident: Rollback Executed\n\n");
    md.push_str(&format!("**Incident Date**: {}\n", now.date()));
    md.push_str(&format!("**Incident Time**: {}\n", now.time()));
    md.push_str(&format!(
        "**Severity**: {}\n",
        if a.severity.is_empty() {
            "UNKNOWN".into()
        } else {
            a.severity.to_uppercase()
        }
    ));
    md.push_str(&format!(
        "**Rollback Level**: {level} ({})\n",
        level_name(level)
    ));
    md.push_str(&format!("**Status**: {status_line}\n"));
    md.push_str(&format!(
        "**Run**: {} (rewind, plugin {})\n\n",
        ctx.run_id, ctx.plugin
    ));
    md.push_str("## Issue Description\n");
    md.push_str(&format!("{}\n\nMeasured: {}\n\n", a.scenario, a.summary));
    if !a.breached.is_empty() {
        md.push_str("Breached at assessment (observed vs threshold):\n");
        for (check, observed, threshold) in &a.breached {
            md.push_str(&format!(
                "- {check}: observed {observed}, threshold {threshold}\n"
            ));
        }
        md.push('\n');
    }
    md.push_str("## Affected Features\n");
    let disabled = kv_get::<Disable>(ctx, "disable")?
        .map(|d| d.names)
        .unwrap_or_default();
    for feat in &cfg.features {
        let hit = a.affected.contains(&feat.name);
        let label = if feat.label.is_empty() {
            &feat.name
        } else {
            &feat.label
        };
        let note = if disabled.contains(&feat.name) {
            format!(" ({}=false)", feat.flag)
        } else {
            String::new()
        };
        md.push_str(&format!(
            "- [{}] {label}{note}\n",
            if hit { "x" } else { " " }
        ));
    }
    md.push_str("\n## Rollback Actions Taken\n");
    for (i, act) in actions.iter().enumerate() {
        md.push_str(&format!(
            "{}. [level {}] {}{}: {}\n",
            i + 1,
            act.level,
            act.step,
            if act.ok { "" } else { " (FAILED)" },
            act.message
        ));
    }
    let breached = |prefix: &str| {
        findings
            .iter()
            .any(|f| f.check.starts_with(prefix) && f.breached)
    };
    let running = !findings
        .iter()
        .any(|f| f.check.starts_with("processes matching") && f.breached);
    let healthy = !breached("GET ") && !breached("stable for");
    let db = cfg.memory_db_path();
    let integrity = if exists(&db)? {
        match quick_check(&db) {
            Integrity::Ok => "INTACT".to_string(),
            Integrity::Corrupt(qc) => format!("COMPROMISED ({qc})"),
            Integrity::Unknown(why) => format!("NOT CHECKED ({why})"),
        }
    } else {
        "n/a (no memory database)".to_string()
    };
    md.push_str("\n## Current System Status\n");
    md.push_str(&format!(
        "- Application: {}\n",
        if running { "RUNNING" } else { "STOPPED" }
    ));
    md.push_str(&format!(
        "- Health: {}\n",
        if healthy { "HEALTHY" } else { "UNHEALTHY" }
    ));
    md.push_str(&format!("- Data Integrity: {integrity}\n"));
    md.push_str(&format!("\n## Verification (level {level})\n"));
    for f in findings {
        md.push_str(&format!(
            "- {} {}: observed {}, threshold {}\n",
            if f.breached { "BREACHED" } else { "ok" },
            f.check,
            f.observed,
            f.threshold
        ));
    }
    md.push_str("\n## User Impact\n");
    let loss = match level {
        1 => "None (features disabled, system on its current code)".to_string(),
        2 => "In-memory data only (cleared on restart)".to_string(),
        _ => {
            let r = pinned_json::<Restore>(ctx, "restore")?.unwrap_or_default();
            format!(
                "All changes since the backup {} (memory database {}); the failed tree is kept at {}",
                r.backup.as_deref().unwrap_or("?"),
                r.memory_backup.as_deref().unwrap_or("not restored"),
                r.failed_path
            )
        }
    };
    md.push_str(&format!("- Data Loss: {loss}\n"));
    md.push_str("\n## Next Steps\n");
    md.push_str(&format!(
        "1. Monitor: `pm2 logs app --lines 100` ({})\n",
        cfg.log_file
    ));
    if let Some(t) = pinned_json::<StableTag>(ctx, "stable_tag")? {
        md.push_str(&format!(
            "2. Review deployment differences: `git diff {} {}`\n",
            t.tag,
            t.head_before.split(' ').next().unwrap_or("HEAD")
        ));
    } else {
        md.push_str("2. Review deployment differences against the last stable tag\n");
    }
    md.push_str("3. Root cause analysis (RCA template of the runbook)\n");
    md.push_str("\n## Incident Owner\nName: _______________\nContact: _______________\n");
    storage::make_dir(&cfg.incident_dir)?;
    let path = format!("{}/incident-{}.md", cfg.incident_dir, ctx.run_id);
    storage::write_string(&path, &md)?;
    Ok(path)
}

// ---------------------------------------------------------------------------

/// The steps of `ctx.level`, in the runbook's order, before `[]`
/// commands are left out.
fn plan_level(ctx: &Context, cfg: &Config) -> Result<Vec<Step>> {
    let app = &cfg.app_dir;
    let status = Step::auto(
        "status",
        "Verify application started (pm2 status)",
        format!("Run `{}` in {app}", cfg.cmd(&cfg.status_cmd).display()),
    )
    .observe()
    .repeatable();
    let health = Step::auto(
        "health",
        "Check health",
        format!(
            "Poll GET {} every {} ms until it answers 200-399, for at most {}{}; a still-unhealthy app is left to the verification, which escalates",
            cfg.health_url,
            cfg.probe_interval_ms,
            human_ms(cfg.wait_ms(ctx.level)),
            if cfg.failure_threshold > 0 {
                format!(
                    ", or until {} answers in a row fail once it answers",
                    cfg.failure_threshold
                )
            } else {
                String::new()
            }
        ),
    )
                .observe()
                .repeatable();
    match ctx.level {
        1 => {
            let (feats, why) = chosen_features(ctx, cfg)?;
            let flags: Vec<String> = feats.iter().map(|f| f.flag.clone()).collect();
            let path = cfg.env_file();
            let current = read_opt(&path)?;
            let rw = envfile::set_flags(
                current.as_deref().unwrap_or(""),
                &flags,
                "false",
                "Emergency feature toggles",
            );
            let edits: Vec<String> = rw.edits.iter().map(|e| e.describe("false")).collect();
            let markers: Vec<String> = feats
                .iter()
                .flat_map(|f| f.markers.iter().map(|m| format!("{m:?}")))
                .collect();
            Ok(vec![
                Step::auto(
                    "env",
                    format!("Set {} to false in .env", flags.join(", ")),
                    format!(
                        "{} ({why}): snapshot {path}, then rewrite it atomically: {}; the other {} lines stay as they are",
                        if current.is_some() { "Edit" } else { "Create" },
                        edits.join("; "),
                        rw.untouched
                    ),
                )
                // The old .env is snapshotted first; a file that has the
                // flags off already is left as it is.
                .reversible()
                .repeatable(),
                Step::auto(
                    "restart",
                    "Restart application",
                    format!(
                        "Note where {} ends, then run `{}` in {app}; the verification looks for {} in what the restarted app logs",
                        cfg.log_file,
                        cfg.cmd(&cfg.restart_cmd).display(),
                        markers.join(", ")
                    ),
                )
                // A second restart is a restart.
                .disruptive()
                .repeatable(),
                status,
                health,
            ])
        }
        2 => {
            let t = stable_tag(ctx, cfg)?;
            let archive = format!(
                "{}/backup-before-rollback-{}.tar.gz",
                cfg.rollback_backup_dir,
                run_stamp(ctx)?
            );
            let mut steps = vec![
                Step::auto(
                    "inspect",
                    "Check current version, identify the last stable version",
                    format!(
                        "Run `git log --oneline -5` and `git describe --tags` in {app} (HEAD is {}); the last tag matching {:?} by version order is {} (of {})",
                        t.head_before,
                        cfg.stable_tag_pattern,
                        t.tag,
                        t.candidates.join(", ")
                    ),
                )
                .observe()
                .repeatable(),
                Step::auto(
                    "backup",
                    "Create backup of current state",
                    format!(
                        "Run `{} -czf {archive} .` in {app}, then `tar -tzf` it to check it reads back",
                        cfg.tar
                    ),
                )
                // Reads the tree; the archive is named by the run's stamp, so
                // a second try writes the same archive again.
                .observe()
                .repeatable(),
            ];
            if !cfg.git_remote.is_empty() {
                steps.push(Step::auto(
                    "fetch",
                    format!("git fetch {}", cfg.git_remote),
                    format!(
                        "Run `git fetch {}` in {app} (an unreachable remote is reported; the local tag {} is used)",
                        cfg.git_remote, t.tag
                    ),
                )
                // Updates remote-tracking refs only, not the checkout.
                .observe()
                .repeatable());
            }
            steps.extend([
                Step::auto(
                    "checkout",
                    format!("Checkout stable version {}", t.tag),
                    format!(
                        "Run `git checkout {}` in {app} (commit {}), then check `git tag --points-at HEAD` names it",
                        t.tag,
                        sha12(&t.sha)
                    ),
                )
                // The tree was archived first (backup) and git refuses to
                // overwrite local changes; checking out the tag HEAD is at
                // changes nothing.
                .reversible()
                .repeatable(),
                Step::auto(
                    "reinstall",
                    "Clean and reinstall dependencies",
                    format!(
                        "Remove {} in {app} (package-lock.json is kept: npm ci installs from it), then run `{}`",
                        cfg.clean_paths.join(", "),
                        cfg.cmd(&cfg.install_cmd).display()
                    ),
                )
                // node_modules is derived from the lock file (and in the
                // archive); removing and installing again ends the same.
                .reversible()
                .repeatable(),
                Step::auto(
                    "build",
                    "Rebuild application",
                    format!(
                        "Run `NODE_ENV=production {}` in {app}",
                        cfg.cmd(&cfg.build_cmd).display()
                    ),
                )
                // Build output follows the checked-out source.
                .reversible()
                .repeatable(),
                Step::auto(
                    "reload",
                    "Restart with zero-downtime",
                    format!(
                        "Note where {} ends, then run `{}` in {app}",
                        cfg.log_file,
                        cfg.cmd(&cfg.reload_cmd).display()
                    ),
                )
                // pm2 reload cycles the workers; a second reload is a reload.
                .disruptive()
                .repeatable(),
                status,
                health,
            ]);
            Ok(steps)
        }
        3 => {
            let r = restore_choice(ctx, cfg)?;
            let backup = match &r.backup {
                Some(b) => format!("{}, {}", describe_file(b)?, r.backup_why),
                None => format!("NONE ({}; the stop step will refuse)", r.backup_why),
            };
            let memory = match &r.memory_backup {
                Some(m) => format!("{}, {}", describe_file(m)?, r.memory_why),
                None => format!("none ({})", r.memory_why),
            };
            let db = cfg.memory_db_path();
            Ok(vec![
                Step::auto(
                    "stop",
                    "Stop application",
                    format!(
                        "Check the pre-deployment backup exists, then run `{}` in {app}",
                        cfg.cmd(&cfg.stop_cmd).display()
                    ),
                )
                // Stopping a stopped app changes nothing.
                .disruptive()
                .repeatable(),
                Step::auto(
                    "identify",
                    "Identify pre-deployment backup",
                    format!("Pre-deployment backup: {backup}; memory database backup: {memory}"),
                )
                .observe()
                .repeatable(),
                Step::auto(
                    "move-aside",
                    "Move current directory (safety)",
                    format!("Rename {app} to {}", r.failed_path),
                )
                // A rename, put back by renaming; the path is pinned, and a
                // tree moved there already is left where it is.
                .reversible()
                .repeatable(),
                Step::auto(
                    "extract",
                    "Extract backup",
                    format!(
                        "Create {app} and run `{} -xzf {} -C {app}`; read the version from package.json",
                        cfg.tar,
                        r.backup.as_deref().unwrap_or("<none>")
                    ),
                )
                // Into the empty directory left by move-aside (the failed
                // tree is kept); extracting again writes the same files.
                .reversible()
                .repeatable(),
                Step::auto(
                    "restore-db",
                    "Restore the SQLite memory database",
                    match &r.memory_backup {
                        Some(m) => format!(
                            "Copy {}/{} to {db}.rollback-backup, remove a stale {db}-wal/-shm, copy {m} to {db} atomically, then check SELECT COUNT(*) FROM {} equals the backup's",
                            r.failed_path,
                            cfg.memory_db,
                            cfg.memory_tables.join(", ")
                        ),
                        None => format!(
                            "Nothing to restore: no backup in {}",
                            cfg.memory_backups_dir
                        ),
                    },
                )
                // The live memory database is replaced by an older backup:
                // what was written since is gone from the service (a copy
                // is kept as .rollback-backup). Repeatable: the copy is
                // taken from the moved-aside tree, and the pinned backup
                // copied again ends the same.
                .effect(Effect::Destructive)
                .repeatable(),
                Step::auto(
                    "check-env",
                    "Verify environment configuration",
                    format!(
                        "Check {} exists and report its feature flags",
                        cfg.env_file()
                    ),
                )
                .observe()
                .repeatable(),
                Step::auto(
                    "install",
                    "Reinstall dependencies",
                    format!("Run `{}` in {app}", cfg.cmd(&cfg.install_cmd).display()),
                )
                .reversible()
                .repeatable(),
                Step::auto(
                    "build",
                    "Verify build artifacts",
                    format!(
                        "Look for {} in {app}; if {} is missing, run `NODE_ENV=production {}`",
                        cfg.build_dirs.join(", "),
                        cfg.build_marker,
                        cfg.cmd(&cfg.build_cmd).display()
                    ),
                )
                // Build output follows the checked-out source.
                .reversible()
                .repeatable(),
                Step::auto(
                    "start",
                    "Restart application",
                    format!(
                        "Note where {} ends, then run `{}` in {app}",
                        cfg.log_file,
                        cfg.cmd(&cfg.start_cmd).display()
                    ),
                )
                // Not repeatable: a start cut short may have started the
                // app, and a second `pm2 start` of a script can start a
                // second copy.
                .disruptive(),
                status,
                health,
            ])
        }
        other => {
            bail!("the feature-flags plugin has levels 1 to 3; level {other} was asked for")
        }
    }
}

struct FeatureFlags;

impl Plugin for FeatureFlags {
    fn describe(ctx: &Context) -> Result<PluginInfo> {
        let cfg = Config::load(ctx)?;
        Ok(PluginInfo::new(
            "feature-flags",
            env!("CARGO_PKG_VERSION"),
            format!("pm2 app in {} (GAP-001, QW-001, QW-002)", cfg.app_dir),
            "Three-level rollback of the parallel spawning, parallel uploads and MCP tracking deployment: feature toggle, code rollback to the last stable tag, full restore from backup",
        )
        .level(
            LevelInfo::new(
                1,
                level_name(1),
                "Set the feature flags to false in .env, restart, confirm the sequential fallbacks in the log",
            )
            .rto_ms(2 * 60_000)
            // The restart.
            .effect(Effect::Disruptive),
        )
        .level(
            LevelInfo::new(
                2,
                level_name(2),
                "Archive the tree, check out the last *-stable tag, reinstall, rebuild, reload",
            )
            .rto_ms(15 * 60_000)
            // The reload; the checkout is reversible.
            .effect(Effect::Disruptive),
        )
        .level(
            LevelInfo::new(
                3,
                level_name(3),
                "Stop, move the failed tree aside, extract the pre-deployment backup, restore the memory database, reinstall, start",
            )
            .rto_ms(45 * 60_000)
            // The memory database restored over the live one.
            .effect(Effect::Destructive),
        )
        .needs(cfg.needs()))
    }

    fn assess(ctx: &Context) -> Result<Assessment> {
        let cfg = Config::load(ctx)?;
        let now = now_ms();
        let mut findings = Vec::new();
        let mut reasons = Vec::new();
        let mut affected = Vec::new();

        // Application crashes or becomes unresponsive.
        let h = Answer::get(&cfg)?;
        findings.push(Finding::status(
            format!("GET {} status", cfg.health_path()),
            h.r.status,
            200,
            399,
        ));
        if !h.r.healthy {
            reasons.push(reason(
                Severity::Critical,
                match h.r.status {
                    Some(st) => format!(
                        "application unresponsive: GET {} answered {st}",
                        cfg.health_path()
                    ),
                    None => format!(
                        "application unresponsive: GET {} did not answer",
                        cfg.health_path()
                    ),
                },
            ));
        }
        let pattern = cfg.process_pattern();
        let procs = health::processes(&pattern)?;
        findings.push(Finding::at_least(
            format!("processes matching {pattern:?}"),
            f64::from(procs.count),
            1.0,
            "",
        ));
        if procs.count == 0 {
            reasons.push(reason(
                Severity::Critical,
                format!("application crashed: no process matches {pattern:?}"),
            ));
        }
        // Memory leak.
        if let Some(max) = cfg.max_rss_mb {
            let mb = (procs.rss_bytes as f64 / 1_048_576.0).round();
            findings.push(Finding::at_most(
                "memory (RSS) of the app",
                mb,
                max as f64,
                "MB",
            ));
            if mb > max as f64 {
                reasons.push(reason(
                    Severity::Major,
                    format!("memory leak: {} MB resident > {max} MB", num(mb)),
                ));
            }
        }
        assess_log(&cfg, now, &mut findings, &mut reasons, &mut affected)?;
        assess_data(ctx, &cfg, &mut findings, &mut reasons)?;

        let worst = reasons.iter().map(|r| r.severity).max_by_key(|s| rank(*s));
        let severity = worst.unwrap_or(Severity::None);
        let top: Vec<&Reason> = reasons.iter().filter(|r| r.severity == severity).collect();
        let scenario = top.first().map(|r| r.what.clone()).unwrap_or_default();
        let data = reasons
            .iter()
            .any(|r| r.data && r.severity == Severity::Critical);
        let level = if data { 3 } else { 1 };
        let mut summary = format!("GET {} {}", cfg.health_url, h.describe());
        for r in &reasons {
            summary.push_str(&format!("; {}: {}", r.severity.as_str(), r.what));
        }
        let info = AssessInfo {
            severity: severity.as_str().into(),
            scenario: scenario.clone(),
            summary: summary.clone(),
            breached: findings
                .iter()
                .filter(|f| f.breached)
                .map(|f| (f.check.clone(), f.observed.clone(), f.threshold.clone()))
                .collect(),
            affected,
        };
        kv_set(ctx, "assessment", &info)?;
        let a = match severity {
            Severity::Critical | Severity::Major => {
                let why = if data {
                    "data loss or corruption: only Level 3 restores data".to_string()
                } else {
                    format!(
                        "{}, starting with the fastest level",
                        if severity == Severity::Critical {
                            "immediate rollback"
                        } else {
                            "rollback within 30 minutes"
                        }
                    )
                };
                Assessment::rollback(
                    severity,
                    level,
                    scenario,
                    format!("{summary}; level {level} ({}): {why}", level_name(level)),
                )
            }
            Severity::Minor => Assessment {
                severity,
                rollback: false,
                level: 0,
                scenario: format!("minor, monitor and consider rollback: {scenario}"),
                summary,
                findings: Vec::new(),
            },
            Severity::None => Assessment::healthy(summary),
        };
        Ok(a.with_findings(findings))
    }

    fn plan(ctx: &Context) -> Result<Vec<Step>> {
        let cfg = Config::load(ctx)?;
        let mut steps = plan_level(ctx, &cfg)?;
        // A step whose command is `[]` is skipped, as in the other plugins.
        steps.retain(|s| skipped(&cfg, ctx.level, &s.id).is_none());
        Ok(steps)
    }

    fn run_step(ctx: &Context, step: &str) -> Result<StepOutcome> {
        let cfg = Config::load(ctx)?;
        let result = run_level_step(ctx, &cfg, step);
        let (ok, message) = match &result {
            Ok(o) => (o.ok, o.message.clone()),
            Err(e) => (false, e.message().to_string()),
        };
        let mut actions = kv_get::<Vec<ActionRec>>(ctx, "actions")?.unwrap_or_default();
        actions.push(ActionRec {
            level: ctx.level,
            step: step.to_string(),
            ok,
            message: message.clone(),
        });
        kv_set(ctx, "actions", &actions)?;
        if !ok && ctx.executes() {
            // The run stops here: the incident is logged all the same.
            if let Err(e) = write_incident(
                ctx,
                &cfg,
                &Status::Failed(format!("step {step} failed: {}", short(&message, 200))),
                &[],
            ) {
                log::warn(format_args!(
                    "could not write the incident record: {}",
                    e.message()
                ));
            }
        }
        result
    }

    fn verify(ctx: &Context) -> Result<Verification> {
        let cfg = Config::load(ctx)?;
        let mut f = Vec::new();
        let h = verify_common(ctx, &cfg, &mut f)?;
        match ctx.level {
            1 => verify_level1(ctx, &cfg, &mut f)?,
            2 => verify_level2(ctx, &cfg, &h, &mut f)?,
            _ => verify_level3(ctx, &cfg, &h, &mut f)?,
        }
        if ctx.executes() {
            smoke_tests(&cfg, &mut f);
        }
        let mut v = Verification::from_findings(f);
        if ctx.executes() {
            let status = if v.healthy {
                Status::Completed
            } else if ctx.level < 3 {
                Status::Escalating
            } else {
                Status::Failed("the last level did not verify".into())
            };
            match write_incident(ctx, &cfg, &status, &v.findings) {
                Ok(path) => v.summary.push_str(&format!("; incident record {path}")),
                Err(e) => {
                    log::warn(format_args!(
                        "could not write the incident record: {}",
                        e.message()
                    ));
                    v.summary.push_str(&format!(
                        "; the incident record could not be written: {}",
                        e.message()
                    ));
                }
            }
        }
        Ok(v)
    }
}

rewind_sdk::export_plugin!(FeatureFlags);
