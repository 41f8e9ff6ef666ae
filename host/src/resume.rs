//! What an interrupted run had done, read back from its journal, for
//! `rewind resume` and for `rewind run` (which refuses to start over an
//! interrupted run). Per plugin: finished, not started, or where in a level
//! it stopped: the steps planned (as the journal kept them), those that
//! completed, and the one that was in flight with the side effects it had
//! journaled.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::journal::{Event, PlannedStep};
use crate::run::AssessmentReport;
use crate::state::StateDir;

/// Where one plugin of the run stood.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Its `plugin-end` outcome, when it finished (an `aborted` plugin,
    /// stopped by a signal between steps, did not).
    pub ended: Option<String>,
    pub assessment: Option<AssessmentReport>,
    /// The level under way (0: none planned yet).
    pub level: u8,
    pub level_name: String,
    /// The level's plan, when it was made.
    pub plan: Option<Vec<PlannedStep>>,
    /// Steps of that plan that completed.
    pub done: Vec<String>,
    /// A step of it that failed (the plugin would have failed).
    pub failed: Option<(String, String)>,
    /// The step that started and never ended, with the side effects it
    /// journaled.
    pub in_flight: Option<(String, Vec<String>)>,
}

/// An interrupted (or finished) run, as its journal tells it.
#[derive(Debug, Clone)]
pub struct Interrupted {
    pub run_id: String,
    pub path: PathBuf,
    pub started: String,
    pub mode: String,
    /// The run's `--plugin`, if it had one.
    pub only: Option<String>,
    pub runbook_sha256: String,
    pub configs: BTreeMap<String, String>,
    /// Component hashes the run loaded, by plugin.
    pub components: BTreeMap<String, String>,
    /// The last `run-end` outcome, if any.
    pub outcome: Option<String>,
    pub plugins: BTreeMap<String, Progress>,
    /// Plugins in the order they were loaded.
    pub order: Vec<String>,
}

impl Interrupted {
    pub fn read(path: &Path) -> std::io::Result<Option<Self>> {
        // One read: the raw lines give the run id and start time (on every
        // line), the typed events the rest.
        let raw = crate::journal::read(path)?;
        let Some(first) = raw.first() else {
            return Ok(None);
        };
        let (run_id, started) = (
            first["run"].as_str().unwrap_or_default().to_string(),
            first["ts"].as_str().unwrap_or_default().to_string(),
        );
        let mut run: Option<Self> = None;
        for v in raw {
            let Ok(e) = serde_json::from_value::<Event>(v) else {
                continue;
            };
            if let Event::RunStart {
                mode,
                plugin,
                runbook_sha256,
                configs,
                restore,
                ..
            } = e
            {
                // A restore is journaled like a run, never resumed as one.
                let mode = if restore.is_some() {
                    "restore".to_string()
                } else {
                    mode
                };
                run = Some(Self {
                    run_id: run_id.clone(),
                    path: path.to_path_buf(),
                    started: started.clone(),
                    mode,
                    only: plugin,
                    runbook_sha256,
                    configs,
                    components: BTreeMap::new(),
                    outcome: None,
                    plugins: BTreeMap::new(),
                    order: Vec::new(),
                });
                continue;
            }
            if let Some(r) = run.as_mut() {
                r.apply(e);
            }
        }
        Ok(run)
    }

    fn apply(&mut self, e: Event) {
        match e {
            Event::Resume { .. } => self.outcome = None,
            Event::PluginLoaded { plugin, sha256, .. } => {
                if !self.order.contains(&plugin) {
                    self.order.push(plugin.clone());
                }
                self.components.entry(plugin).or_insert(sha256);
            }
            Event::Assessment { plugin, assessment } => {
                self.progress(&plugin).assessment = Some(assessment);
            }
            Event::Plan {
                plugin,
                level,
                level_name,
                steps,
                ..
            } => {
                let p = self.progress(&plugin);
                // A plan of the level under way made again (a resume
                // re-plans nothing, but a level escalated to is planned
                // once): what completed of it still counts.
                if p.level != level {
                    p.done.clear();
                    p.failed = None;
                    p.in_flight = None;
                }
                p.level = level;
                p.level_name = level_name;
                p.plan = Some(steps);
            }
            Event::StepStart { plugin, step, .. } => {
                self.progress(&plugin).in_flight = Some((step, Vec::new()));
            }
            Event::Action {
                plugin,
                what,
                executed,
                ..
            } => {
                if let Some((_, actions)) = &mut self.progress(&plugin).in_flight {
                    actions.push(if executed {
                        what
                    } else {
                        format!("(recorded only) {what}")
                    });
                }
            }
            Event::StepEnd {
                plugin,
                step,
                status,
                message,
                ..
            } => {
                let p = self.progress(&plugin);
                if p.in_flight.as_ref().is_some_and(|(s, _)| *s == step) {
                    p.in_flight = None;
                }
                match status {
                    crate::run::StepStatus::Ok if !p.done.contains(&step) => p.done.push(step),
                    crate::run::StepStatus::Failed => p.failed = Some((step, message)),
                    _ => {}
                }
            }
            Event::Escalate { plugin, to, .. } => {
                let p = self.progress(&plugin);
                p.level = to;
                p.plan = None;
                p.done.clear();
                p.failed = None;
                p.in_flight = None;
            }
            Event::PluginEnd {
                plugin, outcome, ..
            } => {
                let p = self.progress(&plugin);
                p.ended = (outcome != "aborted").then_some(outcome);
            }
            Event::RunEnd { outcome, .. } => self.outcome = Some(outcome),
            _ => {}
        }
    }

    fn progress(&mut self, plugin: &str) -> &mut Progress {
        self.plugins.entry(plugin.to_string()).or_default()
    }

    /// A real run that did not finish: no end in its journal (killed), or
    /// stopped by a signal between steps.
    pub fn resumable(&self) -> bool {
        self.mode == "execute"
            && matches!(
                self.outcome.as_deref(),
                None | Some("aborted" | "interrupted")
            )
    }

    /// Where it stopped, in words: the first plugin that did not finish.
    pub fn where_stopped(&self) -> String {
        for name in &self.order {
            let Some(p) = self.plugins.get(name) else {
                return format!("before plugin {name} started");
            };
            if p.ended.is_some() {
                continue;
            }
            if let Some((step, _)) = &p.in_flight {
                return format!("plugin {name}, level {}, during step {step}", p.level);
            }
            if p.level == 0 {
                return format!("plugin {name}, before its plan");
            }
            let done = p.done.len();
            let total = p.plan.as_ref().map_or(0, Vec::len);
            return format!(
                "plugin {name}, level {}, after {done} of {total} steps",
                p.level
            );
        }
        "after its last plugin, before it ended".to_string()
    }
}

/// The newest real run of a state dir, if it was interrupted; a process
/// that still holds the lock is running, not interrupted (the caller holds
/// the lock itself when it asks). Every `rewind run` asks, so it does not
/// parse the whole history: it reads the first line of each journal (its
/// `run-start`: mode and start time, to the millisecond; run ids alone
/// order runs only to the second) and then only the newest real run's
/// journal (not a drill, not a dry run).
pub fn last_interrupted(state: &StateDir) -> std::io::Result<Option<Interrupted>> {
    let entries = match std::fs::read_dir(state.runs()) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let newest = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .filter_map(|p| {
            let (mode, ts) = first_line(&p)?;
            (mode == "execute").then_some((ts, p))
        })
        .max();
    match newest {
        Some((_, path)) => Ok(Interrupted::read(&path)?.filter(Interrupted::resumable)),
        None => Ok(None),
    }
}

/// The mode and start time in a journal's first line (its `run-start`).
fn first_line(path: &Path) -> Option<(String, String)> {
    use std::io::BufRead as _;
    let mut line = Vec::new();
    std::io::BufReader::new(std::fs::File::open(path).ok()?)
        .read_until(b'\n', &mut line)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&line).ok()?;
    // A restore is journaled like a run and never resumed as one.
    if v["event"] != "run-start" || !v["restore"].is_null() {
        return None;
    }
    Some((
        v["mode"].as_str()?.to_string(),
        v["ts"].as_str()?.to_string(),
    ))
}
