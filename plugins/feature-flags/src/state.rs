//! What the plugin keeps between calls (each call is a fresh instance):
//! the assessment, where the log was at a restart, the actions taken, the
//! decisions pinned for the incident; and the small text and file helpers
//! every part uses.

use rewind_sdk::prelude::*;
use serde::{Deserialize, Serialize};

use crate::clock::{Utc, now_ms};

/// What the assessment found, for the incident record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct AssessInfo {
    pub(crate) severity: String,
    pub(crate) scenario: String,
    pub(crate) summary: String,
    pub(crate) breached: Vec<(String, String, String)>,
    /// Features with errors in the log.
    pub(crate) affected: Vec<String>,
}

/// Where the log was and which pids ran just before a restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct RestartMark {
    pub(crate) offset: u64,
    pub(crate) done_ms: i64,
    pub(crate) pids_before: Vec<u32>,
}

/// Which features Level 1 turns off, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Disable {
    pub(crate) names: Vec<String>,
    pub(crate) why: String,
}

/// Level 2's target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StableTag {
    pub(crate) tag: String,
    pub(crate) sha: String,
    /// Every tag matching the pattern, version-sorted.
    pub(crate) candidates: Vec<String>,
    pub(crate) head_before: String,
    /// The commit HEAD was at before the rollback (the deployed one).
    #[serde(default)]
    pub(crate) head_sha: String,
}

/// Level 3's choices.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Restore {
    pub(crate) backup: Option<String>,
    /// Why that backup (or why none).
    #[serde(default)]
    pub(crate) backup_why: String,
    pub(crate) memory_backup: Option<String>,
    #[serde(default)]
    pub(crate) memory_why: String,
    /// There are memory backups, but none predates the deployment.
    #[serde(default)]
    pub(crate) memory_refused: bool,
    pub(crate) failed_path: String,
    pub(crate) pkg_version: Option<String>,
}

/// One step as it went, for the incident record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ActionRec {
    pub(crate) level: u8,
    pub(crate) step: String,
    pub(crate) ok: bool,
    pub(crate) message: String,
}

pub(crate) fn kv_get<T: serde::de::DeserializeOwned>(
    ctx: &Context,
    key: &str,
) -> Result<Option<T>> {
    Ok(storage::get_json(&ctx.run_key(key))?)
}

pub(crate) fn kv_set<T: Serialize>(ctx: &Context, key: &str, value: &T) -> Result<()> {
    Ok(storage::set_json(&ctx.run_key(key), value)?)
}

/// A decision kept for the incident (`Context::pin`), as JSON: `decide`
/// runs only when nothing is pinned under `key` yet, so a resumed run, or
/// a second run after a partial rollback, acts on what the first decided
/// from the system as it was before the rollback changed it.
pub(crate) fn pin_json<T: Serialize + serde::de::DeserializeOwned>(
    ctx: &Context,
    key: &str,
    decide: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let text = ctx.pin(key, || Ok(serde_json::to_string(&decide()?)?))?;
    serde_json::from_str(&text).context(format!("the decision pinned as {key}"))
}

/// The decision pinned under `key`, if any.
pub(crate) fn pinned_json<T: serde::de::DeserializeOwned>(
    ctx: &Context,
    key: &str,
) -> Result<Option<T>> {
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
pub(crate) fn run_stamp(ctx: &Context) -> Result<String> {
    ctx.run_stamp(|| Utc::at(now_ms()).stamp())
}

pub(crate) fn short(s: &str, max: usize) -> String {
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
pub(crate) fn sha12(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// The first line of a command's output, for messages.
pub(crate) fn brief(out: &process::Output) -> String {
    let text = if out.stdout.trim().is_empty() {
        &out.stderr
    } else {
        &out.stdout
    };
    short(text.trim(), 160)
}

pub(crate) fn code(out: &process::Output) -> String {
    out.exit_code
        .map_or_else(|| "killed by a signal".into(), |c| c.to_string())
}

pub(crate) fn read_opt(path: &str) -> Result<Option<String>> {
    if storage::stat(path)?.is_none() {
        return Ok(None);
    }
    Ok(Some(storage::read_to_string(path)?))
}

pub(crate) fn exists(path: &str) -> Result<bool> {
    Ok(storage::exists(path)?)
}

pub(crate) fn minutes(s: u64) -> String {
    if s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

pub(crate) fn human_ms(ms: u64) -> String {
    if ms >= 60_000 && ms.is_multiple_of(60_000) {
        format!("{} min", ms / 60_000)
    } else if ms >= 1000 && ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

pub(crate) fn describe_file(path: &str) -> Result<String> {
    Ok(match storage::stat(path)? {
        Some(e) => format!(
            "{path} ({} bytes, modified {})",
            e.size,
            Utc::at(e.modified_ms as i64).rfc3339()
        ),
        None => format!("{path} (missing)"),
    })
}
