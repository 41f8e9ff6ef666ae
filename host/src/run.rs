//! A run: lock the state dir, load and validate every plugin before touching
//! anything, then per plugin in order assess → plan → steps → verify,
//! escalating a level when verification fails. Every event is journaled.

use std::fs::File;
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::bindings::rollback::{
    Assessment, PluginInfo, Step, StepKind, StepOutcome, Verification,
};
use crate::bindings::types::{Context, Finding, Mode};
use crate::journal::Journal;
use crate::runbook::{OnFailure, PluginSpec, Runbook};
use crate::runtime::{LoadError, LoadStats, LoadedPlugin, Runtime};
use crate::state::{Action, PluginEnv, StateDir};

/// Process exit codes, documented in `docs/runbook.md` and `rewind --help`.
pub mod exit {
    /// Rolled back and verified, nothing to do, or the check passed.
    pub const OK: i32 = 0;
    /// The rollback ran but a step or the final verification failed.
    pub const FAILED: i32 = 1;
    /// Bad command line or runbook.
    pub const USAGE: i32 = 2;
    /// A plugin could not be loaded or is missing grants; nothing was touched.
    pub const PLUGIN: i32 = 3;
    /// Another run holds the state directory's lock.
    pub const LOCKED: i32 = 4;
    /// Stopped by SIGINT/SIGTERM between steps: the step under way
    /// finished, the rest did not start (journaled as `aborted`).
    pub const INTERRUPTED: i32 = 5;
    /// Stopped at once by a second SIGINT/SIGTERM: the step under way was
    /// cut short and its commands killed (the journal ends `interrupted`).
    pub const KILLED: i32 = 6;
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub mode: Mode,
    /// Only this plugin.
    pub plugin: Option<String>,
    /// Force this level instead of the assessed one (and roll back even if
    /// the assessment says healthy).
    pub level: Option<u8>,
    /// Manual steps count as confirmed without asking.
    pub approve_manual: bool,
    /// Stop after assess + plan (for `rewind plan`).
    pub plan_only: bool,
    /// Print progress lines on stderr as the run goes.
    pub live: bool,
}

/// A finding as reports show it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct FindingReport {
    pub check: String,
    pub observed: String,
    pub threshold: String,
    pub breached: bool,
}

impl From<&Finding> for FindingReport {
    fn from(f: &Finding) -> Self {
        Self {
            check: f.check.clone(),
            observed: f.observed.clone(),
            threshold: f.threshold.clone(),
            breached: f.breached,
        }
    }
}

pub(crate) fn findings(list: &[Finding]) -> Vec<FindingReport> {
    list.iter().map(FindingReport::from).collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct AssessmentReport {
    pub severity: String,
    pub rollback: bool,
    pub level: u8,
    pub scenario: String,
    pub summary: String,
    pub findings: Vec<FindingReport>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepStatus {
    Ok,
    Failed,
    /// Not run: an earlier step failed.
    Skipped,
    /// Planned only (`rewind plan`).
    Planned,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub id: String,
    pub title: String,
    pub manual: bool,
    pub detail: String,
    pub status: StepStatus,
    pub message: String,
    pub duration_ms: u64,
    /// Content hash (short) of the plugin build that ran the step.
    pub plugin_version: String,
    pub actions: Vec<Action>,
    pub findings: Vec<FindingReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerificationReport {
    pub healthy: bool,
    pub summary: String,
    pub findings: Vec<FindingReport>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LevelReport {
    pub level: u8,
    pub name: String,
    pub steps: Vec<StepReport>,
    pub verification: Option<VerificationReport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The assessment found nothing to roll back.
    Healthy,
    /// Rolled back and verified healthy.
    RolledBack,
    /// Dry run or plan: nothing was executed.
    Simulated,
    /// A step, the verification or the plugin itself failed.
    Failed,
    /// Not run, because an earlier plugin failed with `on_failure = "stop"`.
    Skipped,
    /// Stopped between two steps (a signal in `rewind watch`).
    Aborted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::RolledBack => "rolled back",
            Self::Simulated => "simulated",
            Self::Failed => "FAILED",
            Self::Skipped => "skipped",
            Self::Aborted => "ABORTED",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PluginReport {
    pub name: String,
    pub component: PathBuf,
    pub sha256: String,
    pub service: String,
    pub load: Option<LoadStats>,
    pub assessment: Option<AssessmentReport>,
    pub levels: Vec<LevelReport>,
    pub outcome: Outcome,
    pub error: Option<String>,
    pub duration_ms: u64,
    /// Of `duration_ms`, the time spent inside host calls (probes,
    /// commands, waits), as opposed to rewind's own work and the plugin's.
    pub host_calls_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run_id: String,
    pub runbook: String,
    pub mode: String,
    pub started: String,
    pub duration_ms: u64,
    pub outcome: Outcome,
    pub plugins: Vec<PluginReport>,
    pub journal: Option<PathBuf>,
}

impl RunReport {
    pub fn exit_code(&self) -> i32 {
        if matches!(self.outcome, Outcome::Failed | Outcome::Aborted) {
            exit::FAILED
        } else {
            exit::OK
        }
    }
}

/// Why a run could not start. Nothing was touched.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "another run holds the lock on {path}: {holder}; wait for it to finish (or, if no rewind process is running, the lock is stale only if that process is gone: the OS releases it on exit)"
    )]
    Locked { path: PathBuf, holder: String },
    #[error("plugin {plugin:?} ({line}): {source}")]
    Load {
        plugin: String,
        line: String,
        source: LoadError,
    },
    #[error("plugin {plugin:?}: {message}")]
    Describe { plugin: String, message: String },
    #[error("no plugin named {0:?} in the runbook")]
    NoSuchPlugin(String),
    #[error(
        "no drill scenario {name:?} in the runbook (it has: {known}); add a [[drill]] with that name"
    )]
    NoSuchScenario { name: String, known: String },
    #[error(
        "the runbook has no [[drill]] scenarios; add one with name, inject and rto (see docs/runbook.md)"
    )]
    NoDrills,
    #[error(transparent)]
    Runbook(#[from] crate::runbook::RunbookError),
    #[error("cannot use the state directory {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl StartError {
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Locked { .. } => exit::LOCKED,
            Self::Load { .. } | Self::Describe { .. } => exit::PLUGIN,
            Self::NoSuchPlugin(_)
            | Self::NoSuchScenario { .. }
            | Self::NoDrills
            | Self::Runbook(_) => exit::USAGE,
            Self::State { .. } => exit::FAILED,
        }
    }
}

/// The exclusive lock on a state directory, released on drop (and by the
/// OS if the process dies).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    pub fn acquire(state: &StateDir, run_id: &str) -> Result<Self, StartError> {
        let path = state.lock_file();
        let io = |source| StartError::State {
            path: path.clone(),
            source,
        };
        crate::state::create_private_dir(state.path()).map_err(io)?;
        let file = crate::state::private_file()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StartError::Locked {
                    holder: read_holder(&path),
                    path,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        // The holder's name replaces the last one in a single write at
        // offset 0, padded over the old text, then the file is cut to it:
        // a run refused meanwhile reads one name or the other, never an
        // empty file.
        use std::os::unix::fs::FileExt as _;
        let text = format!("run {run_id} (pid {})", std::process::id());
        let old_len = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
        let padded = format!("{text:<old_len$}");
        file.write_all_at(padded.as_bytes(), 0).map_err(io)?;
        file.set_len(text.len() as u64).map_err(io)?;
        file.sync_data().map_err(io)?;
        Ok(Self { _file: file })
    }
}

/// Who holds a lock, from its text. The holder writes its name right after
/// it locks: a refused run that looks in that instant finds the file still
/// empty (the very first run on a state dir), so it looks again for a
/// moment before saying it cannot tell.
fn read_holder(path: &std::path::Path) -> String {
    for _ in 0..100 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if !text.trim().is_empty() {
            return text.trim().to_string();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    "a run that has not written its name yet".to_string()
}

/// Stops a rollback between steps once a signal has arrived: the step
/// under way finishes, the rest are skipped, the run ends `aborted` (shared
/// by `run` and `watch`).
pub struct StopOnSignal(pub Arc<AtomicBool>);

impl RunHooks for StopOnSignal {
    fn before_step(
        &mut self,
        _p: &mut Prepared<'_>,
        _step: &Step,
        _record: &dyn Fn(serde_json::Value),
    ) -> Result<(), String> {
        if self.0.load(Ordering::SeqCst) {
            Err(
                "rewind received SIGINT or SIGTERM; the steps before this one completed, none after it was started"
                    .into(),
            )
        } else {
            Ok(())
        }
    }
}

/// SIGINT and SIGTERM for a run: the first sets `stop` (the current step
/// finishes, nothing new starts, the journal records the run as aborted);
/// a second one kills the `process.run` children still running, so none
/// is left orphaned, and exits with [`exit::KILLED`] at once.
pub fn stop_on_signals(stop: Arc<AtomicBool>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("rewind-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                if !stop.swap(true, Ordering::SeqCst) {
                    crate::errln!(
                        "rewind: {name}: finishing the current step, then stopping (send it again to stop now and kill the step's commands)"
                    );
                } else {
                    let n = crate::imports::process::kill_running_children();
                    crate::errln!(
                        "rewind: {name} again: stopped now; killed {n} running command(s); the run's journal ends here (interrupted)"
                    );
                    std::process::exit(exit::KILLED);
                }
            }
        })?;
    Ok(())
}

/// A new run id: UTC time plus a few random hex digits.
pub fn new_run_id() -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let compact: String = now.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("{compact}-{:04x}", (nanos ^ std::process::id()) & 0xffff)
}

/// What a caller may do between two steps of a run: swap in a reloaded
/// plugin (drills), or stop the run (watch, on a signal). The step that is
/// running always finishes first.
pub trait RunHooks {
    /// Called before each step. `Err(reason)` stops the run before it: the
    /// rest of the steps are skipped and the plugin ends `aborted`.
    fn before_step(
        &mut self,
        _p: &mut Prepared<'_>,
        _step: &Step,
        _record: &dyn Fn(serde_json::Value),
    ) -> Result<(), String> {
        Ok(())
    }
}

/// No hooks: a plain run.
#[derive(Debug)]
pub struct NoHooks;

impl RunHooks for NoHooks {}

/// A loaded plugin with what it said about itself.
pub struct Prepared<'a> {
    pub spec: &'a PluginSpec,
    pub plugin: LoadedPlugin,
    pub info: PluginInfo,
    pub env: Arc<PluginEnv>,
}

/// Load, validate and describe the selected plugins. Nothing is executed.
pub fn prepare<'a>(
    runbook: &'a Runbook,
    rt: &Runtime,
    only: Option<&str>,
    mode: Mode,
    run_id: &str,
    journal: Option<Arc<Journal>>,
) -> Result<Vec<Prepared<'a>>, StartError> {
    if let Some(name) = only
        && runbook.plugin(name).is_none()
    {
        return Err(StartError::NoSuchPlugin(name.to_string()));
    }
    // Rollbacks talk to services on this machine or its network: a proxy
    // from the environment would only be in the way (and would see traffic
    // it has no business seeing). Redirects are not followed, so a grant's
    // URL prefix is the only place a request can go.
    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| StartError::State {
            path: runbook.state_dir.clone(),
            source: std::io::Error::other(e),
        })?;
    let mut out = Vec::new();
    for spec in runbook
        .plugins
        .iter()
        .filter(|p| only.is_none_or(|n| n == p.name))
    {
        let plugin = rt
            .load(&spec.component)
            .map_err(|source| StartError::Load {
                plugin: spec.name.clone(),
                line: format!("{}:{}", runbook.path.display(), spec.component_line),
                source,
            })?;
        let sandbox = spec.sandbox(runbook)?;
        let env = Arc::new(
            PluginEnv::new(
                spec.name.clone(),
                sandbox,
                mode,
                journal.clone(),
                runbook.state(),
                http.clone(),
            )
            .with_limits(runbook.limits),
        );
        let check_env = Arc::new(
            PluginEnv::new(
                spec.name.clone(),
                spec.sandbox(runbook)?,
                Mode::Check,
                None,
                runbook.state(),
                http.clone(),
            )
            .with_limits(runbook.limits),
        );
        let ctx = context(run_id, spec, Mode::Check, 0);
        let info = rt
            .describe(&plugin, &check_env, &ctx)
            .map_err(|e| StartError::Describe {
                plugin: spec.name.clone(),
                message: e.to_string(),
            })?;
        out.push(Prepared {
            spec,
            plugin,
            info,
            env,
        });
    }
    Ok(out)
}

pub fn context(run_id: &str, spec: &PluginSpec, mode: Mode, level: u8) -> Context {
    Context {
        run_id: run_id.into(),
        plugin: spec.name.clone(),
        mode,
        level,
        config: spec.config.clone(),
    }
}

/// Run (or dry-run, or plan) a runbook.
pub fn execute(
    runbook: &Runbook,
    rt: &Runtime,
    opts: &RunOptions,
) -> Result<RunReport, StartError> {
    execute_with(runbook, rt, opts, &mut NoHooks)
}

/// `execute`, with hooks called between steps.
pub fn execute_with(
    runbook: &Runbook,
    rt: &Runtime,
    opts: &RunOptions,
    hooks: &mut dyn RunHooks,
) -> Result<RunReport, StartError> {
    let started_at = Instant::now();
    let started = crate::journal::now_rfc3339();
    let run_id = new_run_id();
    let state = runbook.state();
    let (lock, journal) = if opts.plan_only {
        (None, None)
    } else {
        let lock = RunLock::acquire(&state, &run_id)?;
        let journal =
            Journal::create(&state.runs(), &run_id).map_err(|source| StartError::State {
                path: state.runs(),
                source,
            })?;
        (Some(lock), Some(Arc::new(journal)))
    };
    let record = |v: serde_json::Value| {
        if let Some(j) = &journal {
            j.record(v);
        }
    };
    record(json!({
        "event": "run-start",
        "runbook": runbook.path.display().to_string(),
        "name": runbook.name,
        "mode": opts.mode.as_str(),
        "plugin": opts.plugin,
        "level": opts.level,
        "pid": std::process::id(),
        "host_version": env!("CARGO_PKG_VERSION"),
    }));
    let mut prepared = match prepare(
        runbook,
        rt,
        opts.plugin.as_deref(),
        opts.mode,
        &run_id,
        journal.clone(),
    ) {
        Ok(p) => p,
        Err(e) => {
            record(
                json!({"event": "run-end", "outcome": "failed", "error": e.to_string(), "duration_ms": ms(started_at.elapsed())}),
            );
            return Err(e);
        }
    };
    for p in &prepared {
        record(json!({
            "event": "plugin-loaded",
            "plugin": p.spec.name,
            "component": p.spec.component.display().to_string(),
            "sha256": p.plugin.sha256,
            "version": p.info.version,
            "compiled": p.plugin.stats.compiled,
            "load_ms": p.plugin.stats.duration.as_secs_f64() * 1e3,
            "cache_rejected": p.plugin.stats.cache_rejected,
        }));
    }

    let mut reports = Vec::new();
    let mut stop_rest: Option<&str> = None;
    for p in prepared.iter_mut() {
        if let Some(reason) = stop_rest {
            record(json!({"event": "plugin-skipped", "plugin": p.spec.name, "reason": reason}));
            reports.push(skeleton(p, Outcome::Skipped));
            continue;
        }
        let mut report = run_plugin(rt, p, &run_id, opts, &record, hooks, None);
        report.host_calls_ms = p.env.host_time().as_secs_f64() * 1e3;
        if report.outcome == Outcome::Aborted {
            stop_rest = Some("the run was stopped by a signal");
        }
        if report.outcome == Outcome::Failed && p.spec.on_failure == OnFailure::Stop {
            stop_rest = Some("an earlier plugin failed and has on_failure = \"stop\"");
        }
        reports.push(report);
    }
    let outcome = if reports.iter().any(|r| r.outcome == Outcome::Aborted) {
        Outcome::Aborted
    } else if reports.iter().any(|r| r.outcome == Outcome::Failed) {
        Outcome::Failed
    } else if reports.iter().any(|r| r.outcome == Outcome::RolledBack) {
        Outcome::RolledBack
    } else if reports.iter().any(|r| r.outcome == Outcome::Simulated) {
        Outcome::Simulated
    } else {
        Outcome::Healthy
    };
    let duration = started_at.elapsed();
    record(json!({"event": "run-end", "outcome": outcome, "duration_ms": ms(duration)}));
    drop(lock);
    Ok(RunReport {
        run_id,
        runbook: runbook.name.clone(),
        mode: if opts.plan_only {
            "plan".into()
        } else {
            opts.mode.as_str().into()
        },
        started,
        duration_ms: ms(duration),
        outcome,
        plugins: reports,
        journal: journal.map(|j| j.path().to_path_buf()),
    })
}

fn skeleton(p: &Prepared<'_>, outcome: Outcome) -> PluginReport {
    PluginReport {
        name: p.spec.name.clone(),
        component: p.spec.component.clone(),
        sha256: p.plugin.sha256.clone(),
        service: p.info.service.clone(),
        load: Some(p.plugin.stats.clone()),
        assessment: None,
        levels: Vec::new(),
        outcome,
        error: None,
        duration_ms: 0,
        host_calls_ms: 0.0,
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn live(opts: &RunOptions, line: impl AsRef<str>) {
    if opts.live {
        crate::errln!("{}", line.as_ref());
    }
}

/// One plugin's rollback: assess (unless the caller already did), plan,
/// steps, verify, escalate.
pub(crate) fn run_plugin(
    rt: &Runtime,
    p: &mut Prepared<'_>,
    run_id: &str,
    opts: &RunOptions,
    record: &dyn Fn(serde_json::Value),
    hooks: &mut dyn RunHooks,
    assessed: Option<(Assessment, Duration)>,
) -> PluginReport {
    let started = Instant::now();
    let mut report = skeleton(p, Outcome::Failed);
    let spec = p.spec;
    let name = &spec.name;
    let fail = |mut report: PluginReport, error: String| {
        record(json!({"event": "plugin-end", "plugin": name, "outcome": "failed", "error": error}));
        live(opts, format!("[{name}] FAILED: {error}"));
        report.error = Some(error);
        report.outcome = Outcome::Failed;
        report.duration_ms = ms(started.elapsed());
        report
    };

    // Assess.
    let (assessment, assess_time) = match assessed {
        Some(a) => a,
        None => {
            live(opts, format!("[{name}] assessing ({})", p.info.service));
            let ctx = context(run_id, spec, opts.mode, 0);
            let t = Instant::now();
            match rt.assess(&p.plugin, &p.env, &ctx) {
                Ok(a) => (a, t.elapsed()),
                Err(e) => return fail(report, e.to_string()),
            }
        }
    };
    p.env.take_actions();
    let a = AssessmentReport {
        severity: assessment.severity.as_str().into(),
        rollback: assessment.rollback,
        level: assessment.level,
        scenario: assessment.scenario.clone(),
        summary: assessment.summary.clone(),
        findings: findings(&assessment.findings),
        duration_ms: ms(assess_time),
    };
    record(json!({"event": "assessment", "plugin": name, "assessment": a}));
    live(
        opts,
        format!(
            "[{name}] {} severity, scenario {:?}: {}",
            a.severity, a.scenario, a.summary
        ),
    );
    for f in &a.findings {
        live(opts, format!("[{name}]   {}", format_finding(f)));
    }
    report.assessment = Some(a);

    let max_level = p.info.levels.iter().map(|l| l.level).max().unwrap_or(1);
    let mut level = match opts.level {
        Some(l) => l,
        None if !assessment.rollback => {
            record(json!({"event": "plugin-end", "plugin": name, "outcome": "healthy"}));
            live(opts, format!("[{name}] healthy: nothing to roll back"));
            report.outcome = Outcome::Healthy;
            report.duration_ms = ms(started.elapsed());
            return report;
        }
        None => assessment.level.max(1),
    };
    if level > max_level || level == 0 {
        return fail(
            report,
            format!("level {level} does not exist; the plugin has levels 1 to {max_level}"),
        );
    }

    loop {
        let level_name = p
            .info
            .levels
            .iter()
            .find(|l| l.level == level)
            .map(|l| l.name.clone())
            .unwrap_or_default();
        let ctx = context(run_id, p.spec, opts.mode, level);
        let steps: Vec<Step> = match rt.plan(&p.plugin, &p.env, &ctx) {
            Ok(s) => s,
            Err(e) => return fail(report, e.to_string()),
        };
        p.env.take_actions();
        record(json!({
            "event": "plan", "plugin": name, "level": level, "level_name": level_name,
            "steps": steps.iter().map(|s| json!({"id": s.id, "title": s.title, "manual": s.kind == StepKind::Manual, "detail": s.detail})).collect::<Vec<_>>(),
        }));
        live(
            opts,
            format!(
                "[{name}] level {level} ({level_name}): {} steps",
                steps.len()
            ),
        );
        let mut lr = LevelReport {
            level,
            name: level_name,
            steps: Vec::new(),
            verification: None,
        };

        if opts.plan_only {
            for s in &steps {
                lr.steps.push(step_report(
                    p,
                    s,
                    StepStatus::Planned,
                    String::new(),
                    Duration::ZERO,
                    Vec::new(),
                    Vec::new(),
                ));
            }
            report.levels.push(lr);
            report.outcome = Outcome::Simulated;
            report.duration_ms = ms(started.elapsed());
            return report;
        }

        let mut failed: Option<String> = None;
        let mut aborted: Option<String> = None;
        for s in &steps {
            if failed.is_some() {
                record(json!({"event": "step-skipped", "plugin": name, "step": s.id}));
                lr.steps.push(step_report(
                    p,
                    s,
                    StepStatus::Skipped,
                    "an earlier step failed".into(),
                    Duration::ZERO,
                    Vec::new(),
                    Vec::new(),
                ));
                continue;
            }
            let journal_broken = p.env.journal.as_ref().and_then(|j| j.broken());
            let go_on = match journal_broken {
                Some(why) => Err(why),
                None => hooks.before_step(p, s, record),
            };
            if let Err(reason) = go_on {
                record(
                    json!({"event": "step-skipped", "plugin": name, "step": s.id, "reason": reason}),
                );
                live(
                    opts,
                    format!("[{name}] stopping before step {}: {reason}", s.id),
                );
                aborted = Some(format!("stopped before step {}: {reason}", s.id));
                failed = aborted.clone();
                lr.steps.push(step_report(
                    p,
                    s,
                    StepStatus::Skipped,
                    reason,
                    Duration::ZERO,
                    Vec::new(),
                    Vec::new(),
                ));
                continue;
            }
            *p.env.current_step.lock().unwrap() = Some(s.id.clone());
            record(
                json!({"event": "step-start", "plugin": name, "level": level, "step": s.id, "title": s.title, "plugin_sha256": p.plugin.sha256}),
            );
            live(opts, format!("[{name}] step {}: {}", s.id, s.title));
            let t = Instant::now();
            let result = if s.kind == StepKind::Manual {
                confirm_manual(p, s, opts, record)
            } else {
                Ok(())
            };
            let result = result.and_then(|()| {
                rt.run_step(&p.plugin, &p.env, &ctx, &s.id)
                    .map_err(|e| e.to_string())
            });
            let elapsed = t.elapsed();
            let actions = p.env.take_actions();
            *p.env.current_step.lock().unwrap() = None;
            let (status, message, fnd) = match result {
                Ok(StepOutcome {
                    ok: true,
                    message,
                    findings: f,
                }) => (StepStatus::Ok, message, findings(&f)),
                Ok(StepOutcome {
                    ok: false,
                    message,
                    findings: f,
                }) => (StepStatus::Failed, message, findings(&f)),
                Err(e) => (StepStatus::Failed, e, Vec::new()),
            };
            record(json!({
                "event": "step-end", "plugin": name, "level": level, "step": s.id, "status": status,
                "message": message, "duration_ms": elapsed.as_secs_f64() * 1e3, "findings": fnd,
            }));
            let mark = if matches!(status, StepStatus::Ok) {
                "ok"
            } else {
                "FAILED"
            };
            live(
                opts,
                format!("[{name}]   {mark} in {}: {message}", fmt_duration(elapsed)),
            );
            if matches!(status, StepStatus::Failed) {
                failed = Some(format!("step {} failed: {message}", s.id));
            }
            lr.steps
                .push(step_report(p, s, status, message, elapsed, actions, fnd));
        }

        if let Some(reason) = aborted {
            report.levels.push(lr);
            record(
                json!({"event": "plugin-end", "plugin": name, "outcome": "aborted", "error": reason}),
            );
            report.error = Some(reason);
            report.outcome = Outcome::Aborted;
            report.duration_ms = ms(started.elapsed());
            return report;
        }
        if let Some(err) = failed {
            report.levels.push(lr);
            return fail(report, err);
        }

        // Verify.
        let t = Instant::now();
        let v: Verification = match rt.verify(&p.plugin, &p.env, &ctx) {
            Ok(v) => v,
            Err(e) => {
                report.levels.push(lr);
                return fail(report, e.to_string());
            }
        };
        p.env.take_actions();
        let vr = VerificationReport {
            healthy: v.healthy,
            summary: v.summary.clone(),
            findings: findings(&v.findings),
            duration_ms: ms(t.elapsed()),
        };
        record(
            json!({"event": "verification", "plugin": name, "level": level, "verification": vr}),
        );
        live(
            opts,
            format!(
                "[{name}] verify: {} ({})",
                if v.healthy { "healthy" } else { "NOT healthy" },
                v.summary
            ),
        );
        for f in &vr.findings {
            live(opts, format!("[{name}]   {}", format_finding(f)));
        }
        lr.verification = Some(vr);
        report.levels.push(lr);

        if !opts.mode.executes() {
            // Nothing changed, so the verification shows the system as it
            // is; escalation is decided only by a real run.
            record(json!({"event": "plugin-end", "plugin": name, "outcome": "simulated"}));
            report.outcome = Outcome::Simulated;
            report.duration_ms = ms(started.elapsed());
            return report;
        }
        if v.healthy {
            record(
                json!({"event": "plugin-end", "plugin": name, "outcome": "rolled-back", "level": level}),
            );
            report.outcome = Outcome::RolledBack;
            report.duration_ms = ms(started.elapsed());
            return report;
        }
        if level < max_level {
            record(
                json!({"event": "escalate", "plugin": name, "from": level, "to": level + 1, "reason": v.summary}),
            );
            live(
                opts,
                format!(
                    "[{name}] level {level} did not verify; escalating to level {}",
                    level + 1
                ),
            );
            level += 1;
            continue;
        }
        return fail(
            report,
            format!("verification failed after level {level}: {}", v.summary),
        );
    }
}

fn step_report(
    p: &Prepared<'_>,
    s: &Step,
    status: StepStatus,
    message: String,
    elapsed: Duration,
    actions: Vec<Action>,
    findings: Vec<FindingReport>,
) -> StepReport {
    StepReport {
        id: s.id.clone(),
        title: s.title.clone(),
        manual: s.kind == StepKind::Manual,
        detail: s.detail.clone(),
        status,
        message,
        duration_ms: ms(elapsed),
        plugin_version: p.plugin.short_hash().to_string(),
        actions,
        findings,
    }
}

/// A manual step needs a person. On a terminal, ask; otherwise it must be
/// approved up front with `--approve-manual`. Dry runs only say so.
fn confirm_manual(
    p: &Prepared<'_>,
    s: &Step,
    opts: &RunOptions,
    record: &dyn Fn(serde_json::Value),
) -> Result<(), String> {
    let name = &p.spec.name;
    if !opts.mode.executes() {
        live(
            opts,
            format!(
                "[{name}]   manual step: would ask a person to: {}",
                s.detail
            ),
        );
        return Ok(());
    }
    if opts.approve_manual {
        record(
            json!({"event": "manual-approved", "plugin": name, "step": s.id, "by": "--approve-manual"}),
        );
        live(
            opts,
            format!(
                "[{name}]   manual step approved by --approve-manual: {}",
                s.detail
            ),
        );
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(format!(
            "manual step {:?} needs a person ({}), and there is no terminal to ask on; run on a terminal, or pass --approve-manual once it is done",
            s.id, s.detail
        ));
    }
    crate::errln!(
        "\n[{name}] MANUAL STEP {}: {}\n  {}\n  Type 'done' when it is done, or 'abort':",
        s.id,
        s.title,
        s.detail
    );
    let mut line = String::new();
    loop {
        line.clear();
        if stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?
            == 0
        {
            return Err(format!(
                "manual step {:?} was not confirmed (end of input)",
                s.id
            ));
        }
        match line.trim() {
            "done" => {
                record(
                    json!({"event": "manual-approved", "plugin": name, "step": s.id, "by": "terminal"}),
                );
                return Ok(());
            }
            "abort" => {
                return Err(format!(
                    "manual step {:?} was aborted by the operator",
                    s.id
                ));
            }
            _ => crate::errln!("  Type 'done' or 'abort':"),
        }
    }
}

pub fn format_finding(f: &FindingReport) -> String {
    let mark = if f.breached { "BREACHED" } else { "ok      " };
    format!(
        "{mark} {}: observed {}, threshold {}",
        f.check, f.observed, f.threshold
    )
}

pub fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{} us", d.as_micros())
    } else if d < Duration::from_secs(10) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}
