//! Drills: rehearse a rollback and time it against its Recovery Time
//! Objective. A `[[drill]]` scenario breaks the system (inject), the host
//! polls the plugin's assessment until it says "roll back" (detect), plans
//! (decide), runs the steps (act) and verifies (verify). Recovery time is
//! detect + decide + act + verify; the verdict compares it with the RTO and
//! names the phase that took longest. With `--reload`, a plugin file that
//! changes during the drill is swapped in between two steps.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::bindings::process::Command;
use crate::bindings::rollback::{Assessment, Step};
use crate::bindings::types::Mode;
use crate::journal::Event;
use crate::reload::{Reload, Reloader};
use crate::run::{
    self, Begin, FindingReport, Kind, Outcome, PluginReport, Prepared, RunHooks, RunOptions,
    Session, StartError, fmt_duration,
};
use crate::runbook::{DrillSpec, Runbook};
use crate::runtime::Runtime;
use crate::state::StateDir;

#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// Only this scenario (default: every `[[drill]]`).
    pub scenario: Option<String>,
    /// Hot-reload plugin files that change during the drill.
    pub reload: bool,
    pub approve_manual: bool,
    /// `--approve`: past the policy without asking.
    pub approve: Vec<crate::policy::PreApproval>,
    pub live: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadRecord {
    pub from: String,
    pub to: String,
    /// The step the new version ran first.
    pub before_step: String,
    /// Validate + compile + link the new file.
    pub compile_ms: f64,
    /// From the file's change to the new version being live.
    pub live_after_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefusedReload {
    pub sha256: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepTiming {
    pub level: u8,
    pub step: String,
    pub status: String,
    pub ms: u64,
    /// Short content hash of the plugin build that ran it.
    pub plugin_version: String,
    /// What the step did (side effects, as the journal has them): in a
    /// drill these show anything the plugin does differently.
    #[serde(default)]
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillReport {
    /// `run::REPORT_SCHEMA` (0: a report written before it was recorded).
    #[serde(default)]
    pub schema_version: u32,
    pub id: String,
    pub runbook: String,
    pub scenario: String,
    pub description: String,
    pub plugin: String,
    pub started: String,
    pub rto_ms: Option<u64>,
    pub phases: Vec<Phase>,
    /// detect + decide + act + verify.
    pub recovery_ms: f64,
    /// "pass", "fail" (recovered, but over the RTO, or not recovered) or
    /// "no-rto" (recovered; nothing to compare with).
    pub verdict: String,
    /// RTO minus recovery time (negative: over).
    pub margin_ms: Option<f64>,
    pub slowest_phase: String,
    pub recovered: bool,
    pub error: Option<String>,
    pub findings: Vec<FindingReport>,
    pub steps: Vec<StepTiming>,
    pub plugin_versions: Vec<String>,
    pub reloads: Vec<ReloadRecord>,
    pub refused_reloads: Vec<RefusedReload>,
    pub journal: PathBuf,
}

/// Swaps reloaded plugins in between steps and records it.
struct ReloadHooks<'r> {
    reloader: Option<&'r Reloader>,
    reloads: Vec<ReloadRecord>,
    refused: Vec<RefusedReload>,
    live: bool,
}

impl ReloadHooks<'_> {
    fn drain(&mut self, p: &mut Prepared<'_>, before: &str, record: &dyn Fn(Event)) {
        let Some(r) = self.reloader else { return };
        for ev in r.poll() {
            match ev {
                Reload::Ready {
                    path,
                    plugin,
                    compile,
                    changed_at,
                } if path == p.spec.component => {
                    let swap = Instant::now();
                    let from = p.plugin.short_hash().to_string();
                    p.plugin = *plugin;
                    let to = p.plugin.short_hash().to_string();
                    let rec = ReloadRecord {
                        from,
                        to,
                        before_step: before.to_string(),
                        compile_ms: compile.as_secs_f64() * 1e3,
                        live_after_ms: (swap.duration_since(changed_at) + swap.elapsed())
                            .as_secs_f64()
                            * 1e3,
                    };
                    record(Event::Reload {
                        plugin: p.spec.name.clone(),
                        reload: serde_json::to_value(&rec).unwrap_or_default(),
                    });
                    if self.live {
                        crate::errln!(
                            "[{}] reloaded {} -> {} before step {} (compiled in {:.1} ms)",
                            p.spec.name,
                            rec.from,
                            rec.to,
                            rec.before_step,
                            rec.compile_ms
                        );
                    }
                    self.reloads.push(rec);
                }
                Reload::Ready { .. } => {}
                Reload::Refused { sha256, error, .. } => {
                    record(Event::ReloadRefused {
                        plugin: p.spec.name.clone(),
                        sha256: sha256.clone(),
                        error: error.clone(),
                    });
                    if self.live {
                        crate::errln!(
                            "[{}] refused the changed plugin file, keeping {}: {error}",
                            p.spec.name,
                            p.plugin.short_hash()
                        );
                    }
                    self.refused.push(RefusedReload { sha256, error });
                }
            }
        }
    }
}

impl RunHooks for ReloadHooks<'_> {
    fn before_step(&mut self, s: &Session<'_>, p: &mut Prepared<'_>, step: &Step) {
        self.drain(p, &step.id, &|e| s.record(e));
    }
}

pub fn drills_dir(state: &StateDir) -> PathBuf {
    state.path().join("drills")
}

/// Run the selected scenarios, one after the other.
pub fn run(
    runbook: &Runbook,
    rt: &Arc<Runtime>,
    opts: &DrillOptions,
) -> Result<Vec<DrillReport>, StartError> {
    let scenarios: Vec<&DrillSpec> = match &opts.scenario {
        Some(name) => match runbook.drills.iter().find(|d| &d.name == name) {
            Some(d) => vec![d],
            None => {
                let known: Vec<&str> = runbook.drills.iter().map(|d| d.name.as_str()).collect();
                return Err(StartError::NoSuchScenario {
                    name: name.clone(),
                    known: known.join(", "),
                });
            }
        },
        None => runbook.drills.iter().collect(),
    };
    if scenarios.is_empty() {
        return Err(StartError::NoDrills);
    }
    scenarios
        .into_iter()
        .map(|d| run_one(runbook, rt, d, opts))
        .collect()
}

fn run_one(
    runbook: &Runbook,
    rt: &Arc<Runtime>,
    d: &DrillSpec,
    opts: &DrillOptions,
) -> Result<DrillReport, StartError> {
    let state = runbook.state();
    let kind = Kind::Drill {
        scenario: d.name.clone(),
    };
    let (session, mut prepared) = Session::open(runbook, rt, kind, Mode::Drill, Some(&d.plugin))?;
    let s = &session;
    let run_id = s.run_id.clone();
    let started = s.started_at.clone();
    let record = |e: Event| s.record(e);
    let p = &mut prepared[0];
    let live = |line: String| {
        if opts.live {
            crate::errln!("{line}");
        }
    };
    let reloader = if opts.reload {
        let current = HashMap::from([(p.spec.component.clone(), p.plugin.sha256.clone())]);
        match Reloader::start(rt.clone(), current) {
            Ok(r) => Some(r),
            Err(e) => {
                live(format!(
                    "[{}] cannot watch {} for reloads: {e}",
                    p.spec.name,
                    p.spec.component.display()
                ));
                None
            }
        }
    } else {
        None
    };
    let mut hooks = ReloadHooks {
        reloader: reloader.as_ref(),
        reloads: Vec::new(),
        refused: Vec::new(),
        live: opts.live,
    };
    let mut phases = Vec::new();
    let mut error = None;
    live(format!("drill {:?}: {}", d.name, d.description));

    // Inject.
    let t = Instant::now();
    for cmd in &d.inject {
        let command = Command {
            program: cmd[0].clone(),
            args: cmd[1..].to_vec(),
            cwd: None,
            env: Vec::new(),
            stdin: None,
            timeout_ms: 60_000,
        };
        match crate::imports::process::run(&p.env, command) {
            Ok(out) if out.exit_code == Some(0) => {}
            Ok(out) => {
                error = Some(format!(
                    "injection {cmd:?} exited with {:?}: {}",
                    out.exit_code,
                    out.stderr.trim()
                ));
                break;
            }
            Err(e) => {
                error = Some(format!("injection {cmd:?} failed: {e}"));
                break;
            }
        }
    }
    p.env.take_actions();
    phases.push(Phase {
        name: "inject".into(),
        ms: t.elapsed().as_secs_f64() * 1e3,
    });
    record(Event::DrillPhase {
        phase: "inject".into(),
        ms: phases[0].ms,
        error: error.clone(),
        rounds: None,
        detected: None,
    });
    live(format!(
        "[{}] inject: {}",
        p.spec.name,
        fmt_duration(t.elapsed())
    ));

    // Detect: the plugin's own assessment, polled until it says roll back.
    let mut report: Option<PluginReport> = None;
    let mut detect_findings = Vec::new();
    if error.is_none() {
        let t = Instant::now();
        let mut detected: Option<(Assessment, Duration)> = None;
        let mut rounds = 0;
        while t.elapsed() < d.detect_timeout {
            rounds += 1;
            let a0 = Instant::now();
            match s.assess(p) {
                Ok(a) if a.rollback => {
                    detected = Some((a, a0.elapsed()));
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
            p.env.take_actions();
            if !run::nap(
                d.detect_interval
                    .min(d.detect_timeout.saturating_sub(t.elapsed())),
            ) {
                error = Some(
                    "rewind received SIGINT or SIGTERM while detecting; the drill stopped before any rollback step"
                        .into(),
                );
                break;
            }
        }
        let detect = t.elapsed();
        phases.push(Phase {
            name: "detect".into(),
            ms: detect.as_secs_f64() * 1e3,
        });
        record(Event::DrillPhase {
            phase: "detect".into(),
            ms: detect.as_secs_f64() * 1e3,
            error: None,
            rounds: Some(rounds),
            detected: Some(detected.is_some()),
        });
        live(format!(
            "[{}] detect: {} ({rounds} assessments)",
            p.spec.name,
            fmt_duration(detect)
        ));
        match detected {
            None if error.is_none() => {
                error = Some(format!(
                    "the plugin did not detect the failure within {} ({rounds} assessments)",
                    humantime::format_duration(d.detect_timeout)
                ));
            }
            None => {}
            Some(a) => {
                detect_findings = run::findings(&a.0.findings);
                let ropts = RunOptions {
                    mode: Mode::Drill,
                    plugin: Some(d.plugin.clone()),
                    approve_manual: opts.approve_manual,
                    approve: opts.approve.clone(),
                    live: opts.live,
                    ..RunOptions::default()
                };
                let r = run::run_plugin(s, p, &ropts, &mut hooks, Begin::Assessed(a.0, a.1));
                let act: u64 = r
                    .levels
                    .iter()
                    .flat_map(|l| &l.steps)
                    .map(|s| s.duration_ms)
                    .sum();
                let verify: u64 = r
                    .levels
                    .iter()
                    .filter_map(|l| l.verification.as_ref())
                    .map(|v| v.duration_ms)
                    .sum();
                let decide = r.duration_ms.saturating_sub(act + verify);
                phases.push(Phase {
                    name: "decide".into(),
                    ms: decide as f64,
                });
                phases.push(Phase {
                    name: "act".into(),
                    ms: act as f64,
                });
                phases.push(Phase {
                    name: "verify".into(),
                    ms: verify as f64,
                });
                if r.outcome != Outcome::RolledBack {
                    error = error
                        .or_else(|| r.error.clone())
                        .or(Some(format!("the rollback ended {}", r.outcome.as_str())));
                }
                report = Some(r);
            }
        }
    }
    // A change that landed after the last step is still reported; a new
    // build found then did not run, and the journal says so.
    if let Some(r) = &reloader {
        for ev in r.poll() {
            match ev {
                Reload::Refused { sha256, error, .. } => {
                    record(Event::ReloadRefused {
                        plugin: d.plugin.clone(),
                        sha256: sha256.clone(),
                        error: error.clone(),
                    });
                    hooks.refused.push(RefusedReload { sha256, error });
                }
                Reload::Ready { plugin, .. } => record(Event::ReloadLate {
                    plugin: d.plugin.clone(),
                    sha256: plugin.sha256.clone(),
                    note: "validated after the last step; it did not run in this drill".into(),
                }),
            }
        }
    }

    let recovered = error.is_none();
    let recovery_ms: f64 = phases
        .iter()
        .filter(|ph| ph.name != "inject")
        .map(|ph| ph.ms)
        .sum();
    let rto_ms = d.rto.map(|r| r.as_millis() as u64);
    let margin_ms = rto_ms.map(|r| r as f64 - recovery_ms);
    let verdict = match (recovered, margin_ms) {
        (false, _) => "fail",
        (true, Some(m)) if m < 0.0 => "fail",
        (true, Some(_)) => "pass",
        (true, None) => "no-rto",
    };
    let slowest_phase = phases
        .iter()
        .filter(|ph| ph.name != "inject")
        .max_by(|a, b| a.ms.total_cmp(&b.ms))
        .map(|ph| ph.name.clone())
        .unwrap_or_else(|| "inject".into());
    let steps: Vec<StepTiming> = report
        .iter()
        .flat_map(|r| &r.levels)
        .flat_map(|l| l.steps.iter().map(move |s| (l.level, s)))
        .map(|(level, s)| StepTiming {
            level,
            step: s.id.clone(),
            status: serde_json::to_value(&s.status)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            ms: s.duration_ms,
            plugin_version: s.plugin_version.clone(),
            actions: s.actions.iter().map(|a| a.what.clone()).collect(),
        })
        .collect();
    let mut plugin_versions: Vec<String> =
        vec![prepared_short(&prepared[0].plugin.sha256, &hooks.reloads)];
    for r in &hooks.reloads {
        plugin_versions.push(r.to.clone());
    }
    let drill = DrillReport {
        schema_version: crate::run::REPORT_SCHEMA,
        id: run_id.clone(),
        runbook: runbook.name.clone(),
        scenario: d.name.clone(),
        description: d.description.clone(),
        plugin: d.plugin.clone(),
        started,
        rto_ms,
        phases,
        recovery_ms,
        verdict: verdict.into(),
        margin_ms,
        slowest_phase,
        recovered,
        error,
        findings: detect_findings,
        steps,
        plugin_versions,
        reloads: hooks.reloads,
        refused_reloads: hooks.refused,
        journal: s
            .journal
            .as_ref()
            .map(|j| j.path().to_path_buf())
            .unwrap_or_default(),
    };
    s.end(
        if recovered { "rolled-back" } else { "failed" },
        None,
        Some(json!({"verdict": drill.verdict, "recovery_ms": recovery_ms, "rto_ms": rto_ms})),
    );
    write_reports(&state, &drill).map_err(|source| StartError::State {
        path: drills_dir(&state),
        source,
    })?;
    Ok(drill)
}

/// The version that started the drill: the first reload's `from`, or the
/// one still loaded.
fn prepared_short(sha: &str, reloads: &[ReloadRecord]) -> String {
    reloads
        .first()
        .map(|r| r.from.clone())
        .unwrap_or_else(|| sha[..12].to_string())
}

fn write_reports(state: &StateDir, d: &DrillReport) -> std::io::Result<()> {
    let dir = drills_dir(state);
    crate::state::create_private_dir(&dir)?;
    // Through the output boundary: secrets masked in both; in the Markdown,
    // which is meant to be read on a terminal, control characters escaped.
    crate::state::write_atomic(
        &dir.join(format!("{}.json", d.id)),
        crate::redact::json_string(d, true).as_bytes(),
        0o600,
    )?;
    crate::state::write_atomic(
        &dir.join(format!("{}.md", d.id)),
        crate::redact::terminal(&markdown(d)).as_bytes(),
        0o600,
    )
}

fn ms_text(ms: f64) -> String {
    fmt_duration(Duration::from_secs_f64(ms.max(0.0) / 1e3))
}

/// The drill report as Markdown.
pub fn markdown(d: &DrillReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Drill `{}` of {}: {}\n",
        d.scenario,
        d.runbook,
        d.verdict.to_uppercase()
    );
    if !d.description.is_empty() {
        let _ = writeln!(s, "{}\n", d.description);
    }
    let _ = writeln!(s, "- drill id: `{}`, started {}", d.id, d.started);
    let _ = writeln!(
        s,
        "- plugin: `{}`, versions {}",
        d.plugin,
        d.plugin_versions.join(" -> ")
    );
    let rto = d
        .rto_ms
        .map(|r| ms_text(r as f64))
        .unwrap_or_else(|| "none".into());
    let _ = writeln!(
        s,
        "- recovery time (detect to verified): **{}** against an RTO of {rto}",
        ms_text(d.recovery_ms)
    );
    if let Some(m) = d.margin_ms {
        let _ = writeln!(
            s,
            "- margin: {}{}",
            if m < 0.0 { "over by " } else { "" },
            ms_text(m.abs())
        );
    }
    let _ = writeln!(s, "- slowest phase: {}", d.slowest_phase);
    if let Some(e) = &d.error {
        let _ = writeln!(s, "- error: {e}");
    }
    let _ = writeln!(s, "\n## Phases\n\n| phase | time |\n|---|---|");
    for ph in &d.phases {
        let _ = writeln!(s, "| {} | {} |", ph.name, ms_text(ph.ms));
    }
    let _ = writeln!(
        s,
        "\n## Steps\n\n| level | step | status | time | plugin version | actions |\n|---|---|---|---|---|---|"
    );
    for st in &d.steps {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | `{}` | {} |",
            st.level,
            st.step,
            st.status,
            ms_text(st.ms as f64),
            st.plugin_version,
            st.actions.join("; ").replace('|', "\\|")
        );
    }
    if !d.findings.is_empty() {
        let _ = writeln!(s, "\n## What detection saw\n");
        for f in &d.findings {
            let _ = writeln!(s, "- {}", run::format_finding(f));
        }
    }
    if !d.reloads.is_empty() || !d.refused_reloads.is_empty() {
        let _ = writeln!(s, "\n## Reloads\n");
        for r in &d.reloads {
            let _ = writeln!(
                s,
                "- `{}` -> `{}` before step `{}`: compiled in {}, live {} after the file changed",
                r.from,
                r.to,
                r.before_step,
                ms_text(r.compile_ms),
                ms_text(r.live_after_ms)
            );
        }
        for r in &d.refused_reloads {
            let _ = writeln!(s, "- refused `{}`: {}", &r.sha256[..12], r.error);
        }
    }
    let _ = writeln!(s, "\nJournal: `{}`", d.journal.display());
    s
}

/// Past drills, oldest first.
pub fn list(state: &StateDir) -> std::io::Result<Vec<DrillReport>> {
    let dir = drills_dir(state);
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in entries {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "json")
            && let Ok(d) = serde_json::from_slice::<DrillReport>(&std::fs::read(&path)?)
        {
            out.push(d);
        }
    }
    out.sort_by(|a, b| a.started.cmp(&b.started).then(a.id.cmp(&b.id)));
    Ok(out)
}
