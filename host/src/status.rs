//! `rewind status`: what rewind is doing for a runbook right now, read from
//! its state directory without taking any lock: a run in progress (which
//! step, since when), a run waiting for a person's approval, a watch (its
//! last round), an interrupted run to resume, and the last run's outcome.

use serde::Serialize;

use crate::journal::Event;
use crate::lock::live_holder;
use crate::state::StateDir;
use crate::watch::WatchStatus;

/// A run whose process holds the state dir's lock.
#[derive(Debug, Clone, Serialize)]
pub struct Active {
    pub run_id: String,
    pub pid: u32,
    pub started: Option<String>,
    /// The step under way: plugin, level, step id and when it started.
    pub step: Option<(String, u8, String, String)>,
    /// The gate it waits on for a person, and what it would do.
    pub waiting_for: Option<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Watching {
    pub pid: u32,
    /// What the watch last wrote (none before its first round).
    pub status: Option<WatchStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Interrupted {
    pub run_id: String,
    pub started: String,
    pub at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastRun {
    pub run_id: String,
    pub started: String,
    pub mode: String,
    pub outcome: String,
    pub duration_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub schema_version: u32,
    pub runbook: String,
    pub state_dir: String,
    /// `running`, `waiting` (for a person's approval), `interrupted`
    /// (resumable), `watching` or `idle`.
    pub state: String,
    pub run: Option<Active>,
    pub watch: Option<Watching>,
    pub interrupted: Option<Interrupted>,
    pub last_run: Option<LastRun>,
}

/// Read the state directory. Nothing is locked or written.
pub fn read(runbook_name: &str, state: &StateDir) -> std::io::Result<Status> {
    let run = match live_holder(&state.lock_file()) {
        Some(h) if h.run_id != "looking for an interrupted run" => Some(active(state, &h)?),
        _ => None,
    };
    let watch = live_holder(&state.watch_lock_file()).map(|h| Watching {
        pid: h.pid,
        status: std::fs::read(state.watch_status())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|s: &WatchStatus| s.pid == h.pid),
    });
    let interrupted = if run.is_none() {
        crate::resume::last_interrupted(state)?.map(|i| Interrupted {
            at: i.where_stopped(),
            run_id: i.run_id,
            started: i.started,
        })
    } else {
        None
    };
    let last_run = crate::cli::list_runs(state)?
        .into_iter()
        .map(|(r, _)| r)
        .filter(|r| run.as_ref().is_none_or(|a| a.run_id != r.run_id))
        .max_by(|a, b| a.started.cmp(&b.started))
        .map(|r| LastRun {
            run_id: r.run_id,
            started: r.started,
            mode: r.mode,
            outcome: r.outcome,
            duration_ms: r.duration_ms,
        });
    let state_word = match (&run, &watch, &interrupted) {
        (Some(a), _, _) if a.waiting_for.is_some() => "waiting",
        (Some(_), _, _) => "running",
        (None, _, Some(_)) => "interrupted",
        (None, Some(_), None) => "watching",
        (None, None, None) => "idle",
    };
    Ok(Status {
        schema_version: crate::run::REPORT_SCHEMA,
        runbook: runbook_name.to_string(),
        state_dir: state.path().display().to_string(),
        state: state_word.to_string(),
        run,
        watch,
        interrupted,
        last_run,
    })
}

/// The running run, from its journal: the step started and not ended, and
/// the gate it waits on.
fn active(state: &StateDir, h: &crate::lock::Holder) -> std::io::Result<Active> {
    let journal = state.runs().join(format!("{}.jsonl", h.run_id));
    let mut started = None;
    let mut step = None;
    match crate::journal::read(&journal) {
        Ok(raw) => {
            started = raw
                .first()
                .and_then(|v| v["ts"].as_str())
                .map(str::to_string);
            for v in raw {
                let ts = v["ts"].as_str().unwrap_or_default().to_string();
                match serde_json::from_value::<Event>(v) {
                    Ok(Event::StepStart {
                        plugin,
                        level,
                        step: id,
                        ..
                    }) => step = Some((plugin, level, id, ts)),
                    Ok(Event::StepEnd { .. }) => step = None,
                    _ => {}
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let waiting_for = std::fs::read_to_string(crate::policy::waiting_file(state, &h.run_id))
        .ok()
        .map(|text| {
            let (gate, what) = text.split_once('\n').unwrap_or((text.as_str(), ""));
            (gate.trim().to_string(), what.trim().to_string())
        });
    Ok(Active {
        run_id: h.run_id.clone(),
        pid: h.pid,
        started,
        step,
        waiting_for,
    })
}

/// The status in words, one fact per line.
pub fn text(s: &Status) -> String {
    let mut out = vec![format!(
        "{}: {} (state dir {})",
        s.runbook,
        s.state.to_uppercase(),
        s.state_dir
    )];
    if let Some(a) = &s.run {
        out.push(format!(
            "  run {} (pid {}) since {}",
            a.run_id,
            a.pid,
            a.started.as_deref().unwrap_or("?")
        ));
        if let Some((plugin, level, step, ts)) = &a.step {
            out.push(format!(
                "  at step {step} of plugin {plugin}, level {level}, since {ts}"
            ));
        }
        if let Some((gate, what)) = &a.waiting_for {
            out.push(format!(
                "  waiting for a person's approval of {gate}: {what}\n  `rewind approve {}` lets it go on, `rewind deny {}` stops it there",
                a.run_id, a.run_id
            ));
        }
    }
    if let Some(w) = &s.watch {
        match &w.status {
            Some(st) => out.push(format!(
                "  watch (pid {}) since {}: {} rounds, last at {} {}, {} of {} failures; rollbacks {} started, {} succeeded, {} failed{}",
                w.pid,
                st.started,
                st.rounds,
                st.last_round.as_deref().unwrap_or("-"),
                if st.healthy { "healthy" } else { "BREACHED" },
                st.consecutive_failures,
                st.failure_threshold,
                st.rollbacks_started,
                st.rollbacks_succeeded,
                st.rollbacks_failed,
                st.last_rollback
                    .as_ref()
                    .map(|(id, o)| format!(" (last: {id} {o})"))
                    .unwrap_or_default()
            )),
            None => out.push(format!("  watch (pid {}), no round yet", w.pid)),
        }
    }
    if let Some(i) = &s.interrupted {
        out.push(format!(
            "  run {} (started {}) was interrupted {}: `rewind resume` carries it on",
            i.run_id, i.started, i.at
        ));
    }
    match &s.last_run {
        Some(l) => out.push(format!(
            "  last run {} ({}) started {}: {}{}",
            l.run_id,
            l.mode,
            l.started,
            l.outcome,
            l.duration_ms
                .map(|d| format!(
                    " in {}",
                    crate::run::fmt_duration(std::time::Duration::from_millis(d))
                ))
                .unwrap_or_default()
        )),
        None if s.run.is_none() => out.push("  no run yet".into()),
        None => {}
    }
    out.join("\n")
}
