//! `rewind watch`: probe through each plugin's assessment on an interval
//! and roll back after `failure_threshold` consecutive breaches, by the same
//! path as `rewind run` (same lock, same journal). After a rollback it
//! waits for `cooldown` and for the service to be seen healthy
//! (`success_threshold` rounds) before it will roll back again, so a
//! service that stays broken is not rolled back in a loop. SIGINT/SIGTERM
//! stop it cleanly: a rollback in progress finishes its current step, skips
//! the rest, and says so.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::bindings::types::Mode;
use crate::reload::{Reload, Reloader};
use crate::run::{self, Kind, RunOptions, Session, StartError};
use crate::runbook::Runbook;
use crate::runtime::Runtime;

#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// One JSON object per line instead of text.
    pub json: bool,
    /// Stop after this many probe rounds (for tests and cron-like use).
    pub max_rounds: Option<u64>,
    pub approve_manual: bool,
    /// `--approve`: what its rollbacks may do past the policy.
    pub approve: Vec<crate::policy::PreApproval>,
}

/// What a running watch last saw, rewritten after every round (and before
/// a rollback) as `<state_dir>/watch.json`, for `rewind status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WatchStatus {
    pub pid: u32,
    pub started: String,
    #[serde(default)]
    pub started_ms: u64,
    pub period_ms: u64,
    pub failure_threshold: u32,
    pub rounds: u64,
    /// When the last round ended.
    pub last_round: Option<String>,
    pub healthy: bool,
    pub consecutive_failures: u32,
    /// The last round's problems, when it was not healthy.
    pub problems: Vec<String>,
    /// When a round last found everything healthy.
    pub last_healthy: Option<String>,
    #[serde(default)]
    pub last_healthy_ms: Option<u64>,
    /// Assessments that asked for a rollback or failed, by plugin.
    #[serde(default)]
    pub probe_failures: std::collections::BTreeMap<String, u64>,
    pub rollbacks_started: u64,
    pub rollbacks_succeeded: u64,
    pub rollbacks_failed: u64,
    /// The last rollback: run id, outcome (or why it could not start).
    pub last_rollback: Option<(String, String)>,
    #[serde(default)]
    pub last_rollback_ms: Option<u64>,
    pub reloads: u64,
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl WatchStatus {
    /// Replace the status file whole (temporary file, rename), and the
    /// metrics textfile when there is one; a file that cannot be written
    /// is a warning, never a reason to stop watching.
    fn write(&self, runbook: &Runbook, state: &crate::state::StateDir) {
        if let Some(path) = &runbook.watch.metrics_file {
            let text = crate::metrics::render(&runbook.name, state, self);
            if let Err(e) = crate::metrics::write_file(path, &text) {
                tracing::warn!("cannot write the metrics file {}: {e}", path.display());
            }
        }
        let path = state.watch_status();
        let result = serde_json::to_vec(self)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::state::write_atomic(&path, &bytes, 0o600));
        if let Err(e) = result {
            tracing::warn!("cannot write the watch status {}: {e}", path.display());
        }
    }
}

/// Watch until a signal (or `max_rounds`). Returns the exit code.
pub fn watch(runbook: &Runbook, rt: &Arc<Runtime>, opts: &WatchOptions) -> Result<i32, StartError> {
    run::stop_on_signals().map_err(|source| StartError::State {
        path: runbook.state_dir.clone(),
        source,
    })?;
    let w = &runbook.watch;
    // Validate everything up front, as a run does; assessments need no lock.
    let (probe, mut prepared) = Session::open(runbook, rt, Kind::Probe, Mode::Execute, None)?;
    let state = runbook.state();
    let _watching = crate::lock::WatchLock::acquire(&state)?;
    let shared = Arc::new(std::sync::Mutex::new(WatchStatus {
        pid: std::process::id(),
        started: crate::journal::now_rfc3339(),
        started_ms: epoch_ms(),
        period_ms: w.period.as_millis() as u64,
        failure_threshold: w.failure_threshold,
        ..WatchStatus::default()
    }));
    if let Some(addr) = w.metrics {
        crate::metrics::serve(addr, runbook.name.clone(), state.clone(), shared.clone())
            .map_err(StartError::Metrics)?;
    }
    // Every change is published at once: watch.json, the metrics file,
    // and (through `shared`) the metrics endpoint.
    let update = |f: &dyn Fn(&mut WatchStatus)| {
        let mut s = shared.lock().unwrap();
        f(&mut s);
        s.write(runbook, &state);
    };
    update(&|_| {});
    // Plugins rebuilt while watching are picked up between rounds (and a
    // rollback loads the files afresh anyway).
    let current = prepared
        .iter()
        .map(|p| (p.spec.component.clone(), p.plugin.sha256.clone()))
        .collect();
    let reloader = Reloader::start(rt.clone(), current).ok();
    // Round lines carry plugin text (scenarios, summaries, errors): they
    // go out through the boundary, as JSON or as text.
    let out = |v: serde_json::Value, text: String| {
        if opts.json {
            crate::redact::stdout_line(&crate::redact::json_string(&v, false));
        } else {
            crate::redact::stdout_line(&text);
        }
    };
    out(
        json!({"event": "watch-start", "runbook": runbook.name, "period_ms": w.period.as_millis() as u64,
               "failure_threshold": w.failure_threshold, "success_threshold": w.success_threshold,
               "timeout_ms": w.timeout.as_millis() as u64, "cooldown_ms": w.cooldown.as_millis() as u64}),
        format!(
            "watching {:?}: every {}, roll back after {} consecutive failures (timeout {}, success threshold {}, cooldown {})",
            runbook.name,
            humantime::format_duration(w.period),
            w.failure_threshold,
            humantime::format_duration(w.timeout),
            w.success_threshold,
            humantime::format_duration(w.cooldown)
        ),
    );
    if !run::nap(w.initial_delay) {
        return Ok(stopped(&out, 0));
    }
    let mut failures = 0u32;
    let mut successes = 0u32;
    // Armed: a rollback may run. Disarmed after one, until healthy again.
    let mut armed = true;
    let mut last_rollback: Option<Instant> = None;
    let mut round = 0u64;
    loop {
        round += 1;
        for ev in reloader.as_ref().map(Reloader::poll).unwrap_or_default() {
            match ev {
                Reload::Ready {
                    path,
                    plugin,
                    compile,
                    ..
                } => {
                    if let Some(p) = prepared.iter_mut().find(|p| p.spec.component == path) {
                        update(&|s| s.reloads += 1);
                        let from = p.plugin.short_hash().to_string();
                        p.plugin = *plugin;
                        out(
                            json!({"event": "reload", "plugin": p.spec.name, "from": from, "to": p.plugin.short_hash(), "compile_ms": compile.as_secs_f64() * 1e3}),
                            format!(
                                "[{}] reloaded {from} -> {} (compiled in {})",
                                p.spec.name,
                                p.plugin.short_hash(),
                                run::fmt_duration(compile)
                            ),
                        );
                    }
                }
                Reload::Refused { path, error, .. } => out(
                    json!({"event": "reload-refused", "component": path.display().to_string(), "error": error}),
                    format!(
                        "refused the changed plugin file {}, keeping the running one: {error}",
                        path.display()
                    ),
                ),
            }
        }
        let started = Instant::now();
        let mut problems = Vec::new();
        let mut failed_plugins = Vec::new();
        for p in &prepared {
            match probe.assess(p) {
                Ok(a) if a.rollback => {
                    failed_plugins.push(p.spec.name.clone());
                    problems.push(format!("{}: {} ({})", p.spec.name, a.scenario, a.summary))
                }
                Ok(_) => {}
                Err(e) => {
                    failed_plugins.push(p.spec.name.clone());
                    problems.push(format!("{}: {e}", p.spec.name))
                }
            }
            p.env.take_actions();
        }
        let took = started.elapsed();
        if took > w.timeout {
            problems.push(format!(
                "the round took {}, over the timeout of {}",
                run::fmt_duration(took),
                humantime::format_duration(w.timeout)
            ));
        }
        let healthy = problems.is_empty();
        if healthy {
            successes += 1;
            failures = 0;
            if successes >= w.success_threshold {
                armed = true;
            }
        } else {
            failures += 1;
            successes = 0;
        }
        update(&|s| {
            s.rounds = round;
            s.last_round = Some(crate::journal::now_rfc3339());
            s.healthy = healthy;
            s.consecutive_failures = failures;
            s.problems = problems.clone();
            for p in &failed_plugins {
                *s.probe_failures.entry(p.clone()).or_default() += 1;
            }
            if healthy {
                s.last_healthy = s.last_round.clone();
                s.last_healthy_ms = Some(epoch_ms());
            }
        });
        let mut action = "none";
        if failures >= w.failure_threshold {
            let cooling = last_rollback.is_some_and(|t| t.elapsed() < w.cooldown);
            action = if !armed {
                "hold: not healthy since the last rollback"
            } else if cooling {
                "hold: cooldown"
            } else {
                "rollback"
            };
        }
        out(
            json!({"event": "probe", "round": round, "healthy": healthy, "consecutive_failures": failures,
                   "consecutive_successes": successes, "ms": took.as_secs_f64() * 1e3, "problems": problems, "action": action}),
            format!(
                "round {round:>4}  {}  failures {failures}/{}  {:>8}  {}{}",
                if healthy { "healthy " } else { "BREACHED" },
                w.failure_threshold,
                run::fmt_duration(took),
                problems.join("; "),
                if action == "none" {
                    String::new()
                } else {
                    format!("  -> {action}")
                }
            ),
        );
        if action == "rollback" && run::stop_requested() {
            // A signal arrived during the round: do not start what we would
            // have to abort at once.
            return Ok(stopped(&out, round));
        }
        if action == "rollback" {
            probe.notify(
                "watch-triggered",
                format!(
                    "{failures} failed rounds in a row: {}; rolling back",
                    problems.join("; ")
                ),
                json!({"round": round, "problems": problems}),
                false,
            );
            // Unattended: an interrupted earlier run is resumed by a
            // person, not started over by watch (the refusal says so).
            let ropts = RunOptions {
                approve_manual: opts.approve_manual,
                approve: opts.approve.clone(),
                live: !opts.json,
                ..RunOptions::default()
            };
            update(&|s| s.rollbacks_started += 1);
            let result = run::execute(runbook, rt, &ropts);
            update(&|s| {
                match &result {
                    Ok(r) if r.exit_code() == run::exit::OK => s.rollbacks_succeeded += 1,
                    _ => s.rollbacks_failed += 1,
                }
                s.last_rollback = Some(match &result {
                    Ok(r) => (r.run_id.clone(), r.outcome.journal_name().to_string()),
                    Err(e) => (String::new(), format!("could not start: {e}")),
                });
                s.last_rollback_ms = result.as_ref().ok().map(|r| r.duration_ms);
            });
            match result {
                Ok(r) => out(
                    json!({"event": "rollback", "run_id": r.run_id, "outcome": r.outcome, "duration_ms": r.duration_ms}),
                    format!(
                        "rollback {}: {} in {}",
                        r.run_id,
                        r.outcome.as_str(),
                        run::fmt_duration(Duration::from_millis(r.duration_ms))
                    ),
                ),
                Err(e) => out(
                    json!({"event": "rollback", "error": e.to_string()}),
                    format!("rollback could not start: {e}"),
                ),
            }
            armed = false;
            last_rollback = Some(Instant::now());
            failures = 0;
            successes = 0;
        }
        if opts.max_rounds.is_some_and(|m| round >= m) {
            return Ok(stopped(&out, round));
        }
        let next = w.period.saturating_sub(started.elapsed());
        if run::stop_requested() || !run::nap(next) {
            return Ok(stopped(&out, round));
        }
    }
}

fn stopped(out: &dyn Fn(serde_json::Value, String), rounds: u64) -> i32 {
    out(
        json!({"event": "watch-end", "rounds": rounds}),
        format!("stopped after {rounds} rounds"),
    );
    run::exit::OK
}
