//! `rewind snapshots` and `rewind restore`: a person puts back what a
//! rollback snapshotted (the files a plugin saved with `storage.snapshot`
//! before it changed them).
//!
//! A restore is a session of its own (`session::Kind::Restore`): it takes
//! the state dir's lock and the service's, is journaled like a run (never
//! resumed as one), and the plugin that took the snapshot must be granted
//! `write` on every path, as when it restores the snapshot itself. It
//! shows what would change first; restoring over live files is
//! destructive, so the runbook's `[policy]` gate applies (a prompt on a
//! terminal, `rewind approve` from another shell, or `--approve`). The
//! live files are snapshotted before they are replaced, so a restore can
//! itself be undone, and the result is compared with the snapshot again
//! before rewind says it is restored.

use serde::Serialize;

use crate::bindings::types::Mode;
use crate::imports::storage::snapshot::{self, Changes, Manifest};
use crate::policy::{Effect, PreApproval};
use crate::run::{Gate, RunOptions, StartError, exit};
use crate::runbook::Runbook;
use crate::runtime::Runtime;
use crate::session::{Kind, Session};

/// A snapshot, with the plugin that took it.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    pub plugin: String,
    #[serde(flatten)]
    pub manifest: Manifest,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(
        "no snapshot {id:?} among the runbook's plugins ({searched}); `rewind snapshots` lists them"
    )]
    NotFound { id: String, searched: String },
    #[error("{id:?} names {n} snapshots ({ids}); give more of the id")]
    Ambiguous { id: String, n: usize, ids: String },
    #[error("cannot read the snapshots of plugin {plugin:?}: {message}")]
    Read { plugin: String, message: String },
    #[error(transparent)]
    Start(#[from] StartError),
}

impl RestoreError {
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::NotFound { .. } | Self::Ambiguous { .. } => exit::USAGE,
            Self::Read { .. } => exit::FAILED,
            Self::Start(e) => e.exit_code(),
        }
    }
}

/// The snapshots of the runbook's plugins (or one of them), newest first.
pub fn list(runbook: &Runbook, plugin: Option<&str>) -> Result<Vec<Found>, RestoreError> {
    if let Some(name) = plugin
        && runbook.plugin(name).is_none()
    {
        return Err(StartError::NoSuchPlugin(name.to_string()).into());
    }
    let state = runbook.state();
    let mut out = Vec::new();
    for spec in runbook
        .plugins
        .iter()
        .filter(|p| plugin.is_none_or(|n| n == p.name))
    {
        let manifests = snapshot::list_manifests(&state.snapshots(&spec.name)).map_err(|e| {
            RestoreError::Read {
                plugin: spec.name.clone(),
                message: e.text(),
            }
        })?;
        out.extend(manifests.into_iter().map(|manifest| Found {
            plugin: spec.name.clone(),
            manifest,
        }));
    }
    out.sort_by(|a, b| {
        (b.manifest.created_ms, b.manifest.created_ns)
            .cmp(&(a.manifest.created_ms, a.manifest.created_ns))
    });
    Ok(out)
}

/// The snapshot whose id is `id`, or starts with it when only one does.
pub fn find(runbook: &Runbook, id: &str) -> Result<Found, RestoreError> {
    let all = list(runbook, None)?;
    if let Some(exact) = all.iter().find(|f| f.manifest.id == id) {
        return Ok(exact.clone());
    }
    let mut matching: Vec<Found> = all
        .into_iter()
        .filter(|f| f.manifest.id.starts_with(id))
        .collect();
    match matching.len() {
        1 => Ok(matching.remove(0)),
        0 => Err(RestoreError::NotFound {
            id: id.to_string(),
            searched: runbook
                .plugins
                .iter()
                .map(|p| runbook.state().snapshots(&p.name).display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }),
        n => Err(RestoreError::Ambiguous {
            id: id.to_string(),
            n,
            ids: matching
                .iter()
                .map(|f| f.manifest.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

pub struct RestoreOptions {
    /// The snapshot (its id, or a unique prefix).
    pub id: String,
    /// `DryRun`: show what would change, touch nothing.
    pub mode: Mode,
    /// `--approve`: the gate passed up front.
    pub approve: Vec<PreApproval>,
    pub live: bool,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub schema_version: u32,
    pub run_id: String,
    pub plugin: String,
    pub snapshot: String,
    /// `restored`, `dry-run`, `unchanged` (the files already were as the
    /// snapshot has them), `denied` or `failed`.
    pub outcome: String,
    pub changes: Changes,
    /// The snapshot of the live files taken before they were replaced:
    /// `rewind restore` of it undoes this restore.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undo: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RestoreReport {
    pub fn exit_code(&self) -> i32 {
        match self.outcome.as_str() {
            "restored" | "dry-run" | "unchanged" => exit::OK,
            _ => exit::FAILED,
        }
    }
}

/// How many paths of a list to show on the terminal.
const SHOWN: usize = 20;

fn show(opts: &RunOptions, what: &str, paths: &[String]) {
    if paths.is_empty() {
        return;
    }
    crate::run::live(opts, format!("  {what} ({}):", paths.len()));
    for p in paths.iter().take(SHOWN) {
        crate::run::live(opts, format!("    {p}"));
    }
    if paths.len() > SHOWN {
        crate::run::live(opts, format!("    ... and {} more", paths.len() - SHOWN));
    }
}

pub fn restore(
    runbook: &Runbook,
    rt: &Runtime,
    ro: &RestoreOptions,
) -> Result<RestoreReport, RestoreError> {
    let found = find(runbook, &ro.id)?;
    let id = found.manifest.id.clone();
    let (s, prepared) = Session::open(
        runbook,
        rt,
        Kind::Restore {
            snapshot: id.clone(),
        },
        ro.mode,
        Some(&found.plugin),
    )?;
    let p = &prepared[0];
    let name = p.spec.name.clone();
    // `gate` and the progress lines take a run's options.
    let opts = RunOptions {
        mode: ro.mode,
        live: ro.live,
        approve: ro.approve.clone(),
        ..RunOptions::default()
    };
    let mut report = RestoreReport {
        schema_version: crate::run::REPORT_SCHEMA,
        run_id: s.run_id.clone(),
        plugin: name.clone(),
        snapshot: id.clone(),
        outcome: String::new(),
        changes: Changes::default(),
        undo: None,
        error: None,
    };
    let fail = |mut report: RestoreReport, outcome: &str, why: String| {
        s.end(outcome, Some(why.clone()), None);
        report.outcome = outcome.to_string();
        report.error = Some(why);
        Ok(report)
    };
    let m = &found.manifest;
    crate::run::live(
        &opts,
        format!(
            "[{name}] snapshot {id} ({:?}, taken {}{}): {} files, {} bytes of {}",
            m.label,
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(m.created_ms)
            ),
            if m.run.is_empty() {
                String::new()
            } else {
                format!(" by run {}", m.run)
            },
            m.files.len(),
            m.bytes,
            m.paths.join(", ")
        ),
    );
    // The plugin's own grants decide, as when it restores the snapshot
    // itself: checked before anything is shown or asked.
    for path in &m.paths {
        if let Err(e) = p.env.sandbox.check_write(path) {
            let e: crate::bindings::types::Error = e.into();
            return fail(
                report,
                "failed",
                format!(
                    "plugin {name} may not write {path}, so it cannot restore snapshot {id}: {}",
                    e.text()
                ),
            );
        }
    }
    // The snapshot must be whole before anything is compared with it or
    // put back; `restore` checks it again as it extracts.
    if let Err(e) = snapshot::verify(&p.env, &id) {
        return fail(
            report,
            "failed",
            format!(
                "snapshot {id} is damaged, nothing was changed: {}",
                e.text()
            ),
        );
    }
    report.changes = match snapshot::compare(&p.env, m) {
        Ok(c) => c,
        Err(e) => {
            return fail(
                report,
                "failed",
                format!(
                    "cannot compare the live files with snapshot {id}: {}",
                    e.text()
                ),
            );
        }
    };
    let c = &report.changes;
    if c.is_empty() {
        crate::run::live(
            &opts,
            format!(
                "[{name}] the live files already are as snapshot {id} has them ({} entries): nothing to restore",
                c.unchanged
            ),
        );
        s.end("unchanged", None, None);
        report.outcome = "unchanged".into();
        return Ok(report);
    }
    crate::run::live(
        &opts,
        format!(
            "[{name}] restoring would put back {} changed and {} missing entries and remove {} that the snapshot does not have ({} already match):",
            c.changed.len(),
            c.missing.len(),
            c.extra.len(),
            c.unchanged
        ),
    );
    show(&opts, "changed since", &c.changed);
    show(&opts, "missing now, recreated", &c.missing);
    show(&opts, "not in the snapshot, removed", &c.extra);
    if !ro.mode.executes() {
        crate::run::live(
            &opts,
            format!("dry run: nothing was changed; `rewind restore {id}` carries it out"),
        );
        s.end("dry-run", None, None);
        report.outcome = "dry-run".into();
        return Ok(report);
    }

    // Replacing live files loses whatever changed since the snapshot
    // (the undo snapshot below keeps it, but a person decides).
    let harm = Effect::Destructive;
    let limit = p.spec.policy.unattended;
    if harm > limit {
        let what = format!(
            "restore snapshot {id} over {} ({} entries change)",
            m.paths.join(", "),
            c.changed.len() + c.missing.len() + c.extra.len()
        );
        match crate::run::gate(&s, p, 0, &id, &what, harm, limit, &[], &opts) {
            Gate::Go => {}
            Gate::Denied(why) => return fail(report, "denied", why),
            Gate::Wait(why) => return fail(report, "failed", why),
        }
    }

    // The live files first, so this restore can be undone.
    let existing: Vec<String> = m
        .paths
        .iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .cloned()
        .collect();
    if !existing.is_empty() {
        match snapshot::snapshot(&p.env, "before-restore", &existing) {
            Ok(undo) => {
                crate::run::live(
                    &opts,
                    format!(
                        "[{name}] live files saved as snapshot {} (`rewind restore {}` undoes this restore)",
                        undo.id, undo.id
                    ),
                );
                report.undo = Some(undo.id);
            }
            Err(e) => {
                return fail(
                    report,
                    "failed",
                    format!(
                        "cannot save the live files before replacing them, so nothing was restored: {}; free space in the state directory or fix the error, then run the restore again",
                        e.text()
                    ),
                );
            }
        }
    }
    if let Err(e) = snapshot::restore(&p.env, &id) {
        return fail(
            report,
            "failed",
            format!(
                "restoring snapshot {id} failed: {}; the live files were left as they were",
                e.text()
            ),
        );
    }
    // Said restored only once the files are seen to match.
    match snapshot::compare(&p.env, m) {
        Ok(after) if after.is_empty() => {}
        Ok(after) => {
            let left: Vec<&str> = after
                .changed
                .iter()
                .chain(&after.missing)
                .chain(&after.extra)
                .map(String::as_str)
                .take(SHOWN)
                .collect();
            return fail(
                report,
                "failed",
                format!(
                    "snapshot {id} was restored but the files do not match it afterwards (something else is writing there?): {}",
                    left.join(", ")
                ),
            );
        }
        Err(e) => {
            return fail(
                report,
                "failed",
                format!(
                    "snapshot {id} was restored but cannot be checked: {}",
                    e.text()
                ),
            );
        }
    }
    crate::run::live(
        &opts,
        format!(
            "[{name}] snapshot {id} restored and checked: {} now match it",
            m.paths.join(", ")
        ),
    );
    s.end("restored", None, None);
    report.outcome = "restored".into();
    Ok(report)
}
