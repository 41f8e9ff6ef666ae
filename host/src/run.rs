//! A run: per plugin in order assess → plan → steps → verify, escalating a
//! level when verification fails, in a [`Session`] that holds the locks and
//! the journal. The same code carries on an interrupted run (`resume`) from
//! what its journal says it had done, and drives the rollback of a drill.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bindings::rollback::{
    Assessment, Escalation, Step, StepKind, StepOutcome, Verification,
};
use crate::bindings::types::{Finding, Mode};
use crate::imports::storage::kv::Pin;
use crate::journal::{Event, PlannedStep};
use crate::policy::{Effect as Harm, PreApproval, Waited, Who};
use crate::resume::{Interrupted, Progress};
use crate::runbook::{OnFailure, Runbook};
use crate::runtime::{LoadError, LoadStats, Runtime};
pub use crate::session::{Kind, Prepared, Session, context};
use crate::state::Action;

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
    /// `rewind run` refused: the last run was interrupted and has not been
    /// resumed (`rewind resume`, or `rewind run --fresh`).
    pub const RESUMABLE: i32 = 7;
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
    /// Start a new run even though the last one was interrupted.
    pub fresh: bool,
    /// Forget the decisions pinned for the incident before running.
    pub redecide: bool,
    /// What `resume` does with a step that was in flight and is not
    /// marked safe to repeat.
    pub in_flight: InFlight,
    /// Approvals given up front (`--approve`): past the policy, these
    /// steps run without asking.
    pub approve: Vec<PreApproval>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            mode: Mode::Execute,
            plugin: None,
            level: None,
            approve_manual: false,
            plan_only: false,
            live: false,
            fresh: false,
            redecide: false,
            in_flight: InFlight::Ask,
            approve: Vec::new(),
        }
    }
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

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AssessmentReport {
    pub severity: String,
    pub rollback: bool,
    pub level: u8,
    pub scenario: String,
    pub summary: String,
    pub findings: Vec<FindingReport>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
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
    /// `observe`, `reversible`, `disruptive` or `destructive`.
    pub effect: String,
    /// Safe to run again after an interruption.
    pub repeatable: bool,
    pub status: StepStatus,
    pub message: String,
    pub duration_ms: u64,
    /// Content hash (short) of the plugin build that ran the step.
    pub plugin_version: String,
    pub actions: Vec<Action>,
    pub findings: Vec<FindingReport>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
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
    /// The worst effect of its steps.
    pub effect: String,
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
    /// Stopped between two steps (a signal, a broken journal, a step in
    /// flight nobody decided on): `rewind resume` carries it on.
    Aborted,
}

impl Outcome {
    /// The outcome as the journal writes it.
    pub fn journal_name(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::RolledBack => "rolled-back",
            Self::Simulated => "simulated",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Aborted => "aborted",
        }
    }

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

/// The version of the `--json` reports' shape (run, plan, resume, drill,
/// restore): raised when a field changes meaning or goes away; new fields
/// may appear within a version. See docs/runbook.md.
pub const REPORT_SCHEMA: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub schema_version: u32,
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
        if self.outcome == Outcome::Aborted && crate::run::stop_requested() {
            exit::INTERRUPTED
        } else if matches!(self.outcome, Outcome::Failed | Outcome::Aborted) {
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
    #[error(
        "service {service:?} is being rolled back by another runbook's run: {holder} (lock {path}); two rollbacks of one service would stop and start it under each other: wait for that run to finish"
    )]
    ServiceLocked {
        service: String,
        path: PathBuf,
        holder: String,
    },
    #[error(
        "the last run, {run_id}, was interrupted ({at}); `rewind resume` carries it on from there, `rewind run --fresh` starts a new run instead (the decisions it pinned still hold; --redecide forgets them)"
    )]
    Interrupted { run_id: String, at: String },
    #[error(
        "a rewind watch already watches this runbook: {holder} (lock {path}); two watches would both roll it back: stop that one first"
    )]
    WatchRunning { path: PathBuf, holder: String },
    /// `[watch] metrics` cannot be served (the address is taken ...).
    #[error("{0}")]
    Metrics(String),
    #[error("run {run_id} cannot be resumed: {why}")]
    NotResumable { run_id: String, why: String },
    #[error(
        "run {run_id} was started with other inputs than rewind has now: {changes}; resuming would mix two plans: put them back, or `rewind resume --force` to carry on anyway"
    )]
    Changed { run_id: String, changes: String },
    #[error("{0}")]
    NoSuchRun(String),
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
            Self::Locked { .. } | Self::ServiceLocked { .. } | Self::WatchRunning { .. } => {
                exit::LOCKED
            }
            Self::Interrupted { .. } => exit::RESUMABLE,
            Self::NotResumable { .. } | Self::Changed { .. } | Self::NoSuchRun(_) => exit::USAGE,
            Self::Load { .. } | Self::Describe { .. } => exit::PLUGIN,
            Self::NoSuchPlugin(_)
            | Self::NoSuchScenario { .. }
            | Self::NoDrills
            | Self::Runbook(_) => exit::USAGE,
            Self::State { .. } | Self::Metrics(_) => exit::FAILED,
        }
    }
}

/// Set by the first SIGINT/SIGTERM (see [`stop_on_signals`]): the step
/// under way finishes, nothing new starts. Process-wide, because a signal
/// is: `run`, `drill`, `resume` and `watch` all look at it.
static STOP: AtomicBool = AtomicBool::new(false);

/// Whether a signal asked the run to stop.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// SIGINT and SIGTERM for `run`, `drill`, `resume` and `watch`: the first
/// sets [`stop_requested`] (the current step finishes, nothing new starts,
/// the journal records the run as aborted, and `rewind resume` carries it
/// on); a second one kills the `process.run` children still running, so
/// none is left orphaned, and exits with [`exit::KILLED`] at once (the run
/// stays resumable: its journal has no end).
pub fn stop_on_signals() -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("rewind-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                if !STOP.swap(true, Ordering::SeqCst) {
                    crate::errln!(
                        "rewind: {name}: finishing the current step, then stopping (send it again to stop now and kill the step's commands)"
                    );
                } else {
                    // The commands in flight first (counted for the
                    // message), then every call in flight ends now.
                    let n = crate::imports::process::kill_running_children();
                    crate::runtime::cancel_calls();
                    crate::errln!(
                        "rewind: {name} again: stopped now; killed {n} running command(s); the run's journal ends here (interrupted): `rewind resume` carries it on"
                    );
                    std::process::exit(exit::KILLED);
                }
            }
        })?;
    Ok(())
}

/// Sleep, waking early when a signal arrives. Returns false if it did.
pub fn nap(d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop_requested() {
            return false;
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(25)));
    }
    !stop_requested()
}

/// Why a run stops before a step: a signal, or a journal that lost a line.
fn stop_reason(s: &Session<'_>) -> Option<String> {
    if let Some(why) = s.journal_broken() {
        return Some(why);
    }
    stop_requested().then(|| {
        "rewind received SIGINT or SIGTERM; the steps before this one completed, none after it was started (`rewind resume` carries the run on)"
            .to_string()
    })
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
/// plugin (drills). The step that is running always finishes first.
pub trait RunHooks {
    /// Called before each step.
    fn before_step(&mut self, _s: &Session<'_>, _p: &mut Prepared<'_>, _step: &Step) {}
}

/// No hooks: a plain run.
#[derive(Debug)]
pub struct NoHooks;

impl RunHooks for NoHooks {}

/// Where a plugin's rollback starts.
pub(crate) enum Begin {
    /// Assess the system first (a run).
    Assess,
    /// Already assessed (a drill detected the failure).
    Assessed(Assessment, Duration),
    /// Carry on an interrupted run.
    Resume(Box<Progress>),
}

/// What to do with the step an interrupted run was in the middle of, when
/// it is not marked safe to repeat (`rewind resume --in-flight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InFlight {
    /// Ask on the terminal (the default); without one, stop and say so.
    Ask,
    /// A person checked it completed: go on after it.
    Done,
    /// Run it again.
    Redo,
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
    let kind = if opts.plan_only {
        Kind::Plan
    } else {
        Kind::Run { level: opts.level }
    };
    // A real run does not start over a run that was cut short: the system
    // is somewhere in the middle of its plan, and resuming it is what puts
    // it back (`--fresh` starts anew, on purpose).
    if opts.mode == Mode::Execute && !opts.plan_only && !opts.fresh {
        let _probe =
            crate::lock::RunLock::acquire(&runbook.state(), "checking for an interrupted run")?;
        if let Some(run) = crate::resume::last_interrupted(&runbook.state()).map_err(|source| {
            StartError::State {
                path: runbook.state().runs(),
                source,
            }
        })? {
            return Err(StartError::Interrupted {
                run_id: run.run_id.clone(),
                at: run.where_stopped(),
            });
        }
    }
    let (session, mut prepared) =
        Session::open(runbook, rt, kind, opts.mode, opts.plugin.as_deref())?;
    if opts.redecide && opts.mode == Mode::Execute {
        for p in &prepared {
            forget_decisions(
                &session,
                p,
                "the operator asked to decide again (--redecide)",
                opts,
            );
        }
    }
    let begins = prepared.iter().map(|_| Some(Begin::Assess)).collect();
    Ok(run_plugins(&session, &mut prepared, opts, hooks, begins))
}

/// Carry on an interrupted run under its own id: plugins that finished
/// are not run again, nor are the completed steps of the level under way;
/// the step that was in flight runs again only when its plugin marked it
/// repeatable (or `in_flight` says so).
pub fn resume(
    runbook: &Runbook,
    rt: &Runtime,
    opts: &RunOptions,
    run: &Interrupted,
    force: bool,
) -> Result<RunReport, StartError> {
    if !run.resumable() {
        return Err(StartError::NotResumable {
            run_id: run.run_id.clone(),
            why: match (&run.outcome, run.mode.as_str()) {
                (_, m) if m != "execute" => {
                    format!("it was a {m} run; only real runs are resumed (a drill is run again)")
                }
                (Some(o), _) => format!("it ended {o}"),
                (None, _) => "it is not interrupted".into(),
            },
        });
    }
    let changes = changes_since(runbook, rt, run);
    if !changes.is_empty() && !force {
        return Err(StartError::Changed {
            run_id: run.run_id.clone(),
            changes: changes.join("; "),
        });
    }
    let kind = Kind::Resume {
        run_id: run.run_id.clone(),
        journal: run.path.clone(),
        forced: changes,
    };
    let (session, mut prepared) =
        Session::open(runbook, rt, kind, Mode::Execute, run.only.as_deref())?;
    let begins = prepared
        .iter()
        .map(|p| match run.plugins.get(&p.spec.name) {
            None => Some(Begin::Assess),
            Some(progress) if progress.ended.is_some() => None,
            Some(progress) => Some(Begin::Resume(Box::new(progress.clone()))),
        })
        .collect();
    live(
        opts,
        format!(
            "resuming run {} (stopped at {})",
            run.run_id,
            run.where_stopped()
        ),
    );
    let mut report = run_plugins(&session, &mut prepared, opts, &mut NoHooks, begins);
    for r in &mut report.plugins {
        if let Some(outcome) = run.plugins.get(&r.name).and_then(|p| p.ended.as_deref()) {
            r.error = Some(format!(
                "finished before the interruption ({outcome}); not run again"
            ));
        }
    }
    Ok(report)
}

/// What differs between the runbook and plugins now and when `run` began.
fn changes_since(runbook: &Runbook, rt: &Runtime, run: &Interrupted) -> Vec<String> {
    use sha2::Digest as _;
    let mut out = Vec::new();
    let short = |h: &str| h.chars().take(12).collect::<String>();
    if !run.runbook_sha256.is_empty() && run.runbook_sha256 != runbook.sha256 {
        out.push(format!(
            "the runbook {} changed (sha256 {} -> {})",
            runbook.path.display(),
            short(&run.runbook_sha256),
            short(&runbook.sha256)
        ));
    }
    for (name, old) in &run.configs {
        match runbook.plugin(name) {
            None => out.push(format!("plugin {name} is no longer in the runbook")),
            Some(spec) => {
                let now = hex::encode(sha2::Sha256::digest(spec.config.as_bytes()));
                if &now != old {
                    out.push(format!("plugin {name}'s [plugin.config] changed"));
                }
            }
        }
    }
    for (name, old) in &run.components {
        let Some(spec) = runbook.plugin(name) else {
            continue;
        };
        match rt.component_sha256(&spec.component) {
            Ok(now) if &now != old => out.push(format!(
                "plugin {name}'s component {} changed (sha256 {} -> {})",
                spec.component.display(),
                short(old),
                short(&now)
            )),
            Ok(_) => {}
            Err(e) => out.push(format!(
                "plugin {name}'s component {} cannot be read: {e}",
                spec.component.display()
            )),
        }
    }
    out
}

/// Run each plugin from where `begins` says (`None`: it finished in an
/// earlier session of the run), in order, honouring `on_failure`, and end
/// the run.
fn run_plugins(
    session: &Session<'_>,
    prepared: &mut [Prepared<'_>],
    opts: &RunOptions,
    hooks: &mut dyn RunHooks,
    begins: Vec<Option<Begin>>,
) -> RunReport {
    let mut reports = Vec::new();
    let mut stop_rest: Option<&str> = None;
    for (p, begin) in prepared.iter_mut().zip(begins) {
        let Some(begin) = begin else {
            reports.push(skeleton(p, Outcome::Skipped));
            continue;
        };
        if let Some(reason) = stop_rest {
            session.record(Event::PluginSkipped {
                plugin: p.spec.name.clone(),
                reason: reason.into(),
            });
            reports.push(skeleton(p, Outcome::Skipped));
            continue;
        }
        let mut report = run_plugin(session, p, opts, hooks, begin);
        report.host_calls_ms = p.env.host_time().as_secs_f64() * 1e3;
        if report.outcome == Outcome::Aborted {
            stop_rest = Some("the run was stopped before this plugin");
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
    let duration = session.end(outcome.journal_name(), None, None);
    RunReport {
        schema_version: REPORT_SCHEMA,
        run_id: session.run_id.clone(),
        runbook: session.runbook.name.clone(),
        mode: if opts.plan_only {
            "plan".into()
        } else {
            opts.mode.as_str().into()
        },
        started: session.started_at.clone(),
        duration_ms: ms(duration),
        outcome,
        plugins: reports,
        journal: session.journal.as_ref().map(|j| j.path().to_path_buf()),
    }
}

/// Forget a plugin's decisions for the incident, journaled and said.
fn forget_decisions(s: &Session<'_>, p: &Prepared<'_>, reason: &str, opts: &RunOptions) {
    match crate::imports::storage::kv::clear_pins(&p.env) {
        Ok(gone) if !gone.is_empty() => {
            live(
                opts,
                format!(
                    "[{}] forgot the incident's decisions ({}): {reason}",
                    p.spec.name,
                    show_pins(&gone)
                ),
            );
            s.record(Event::DecisionsCleared {
                plugin: p.spec.name.clone(),
                reason: reason.into(),
                decisions: gone,
            });
        }
        Ok(_) => {}
        Err(e) => live(
            opts,
            format!(
                "[{}] could not forget the incident's decisions: {e}",
                p.spec.name
            ),
        ),
    }
}

fn show_pins(pins: &[Pin]) -> String {
    pins.iter()
        .map(|p| format!("{} = {:?} (run {})", p.key, p.value, p.run))
        .collect::<Vec<_>>()
        .join(", ")
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

pub(crate) fn live(opts: &RunOptions, line: impl AsRef<str>) {
    if opts.live {
        crate::errln!("{}", line.as_ref());
    }
}

/// One plugin's rollback: assess (unless the caller already did, or the run
/// is resumed), plan, steps, verify, escalate.
pub(crate) fn run_plugin(
    s: &Session<'_>,
    p: &mut Prepared<'_>,
    opts: &RunOptions,
    hooks: &mut dyn RunHooks,
    begin: Begin,
) -> PluginReport {
    let started = Instant::now();
    let mut report = skeleton(p, Outcome::Failed);
    let name = p.spec.name.clone();
    let end =
        |report: &mut PluginReport, outcome: Outcome, error: Option<String>, level: Option<u8>| {
            s.record(Event::PluginEnd {
                plugin: name.clone(),
                outcome: outcome.journal_name().into(),
                level,
                error: error.clone(),
            });
            match (&error, outcome) {
                (Some(e), Outcome::Failed) => live(opts, format!("[{name}] FAILED: {e}")),
                (Some(e), _) => live(opts, format!("[{name}] {}: {e}", outcome.as_str())),
                _ => {}
            }
            report.error = error;
            report.outcome = outcome;
            report.duration_ms = ms(started.elapsed());
        };

    // Decisions an earlier run of this incident pinned hold for this one.
    if s.mode == Mode::Execute
        && let Ok(kept) = crate::imports::storage::kv::pins(&p.env)
        && !kept.is_empty()
    {
        live(
            opts,
            format!(
                "[{name}] keeping the incident's decisions: {} (`rewind run --redecide` forgets them)",
                show_pins(&kept)
            ),
        );
        s.record(Event::DecisionsKept {
            plugin: name.clone(),
            decisions: kept,
        });
    }

    // Where to start: a fresh assessment, the drill's, or the journal's.
    let mut resume: Option<Progress> = None;
    let assessment: Option<(Assessment, Duration)> = match begin {
        Begin::Assess => {
            live(opts, format!("[{name}] assessing ({})", p.info.service));
            let t = Instant::now();
            match s.assess(p) {
                Ok(a) => Some((a, t.elapsed())),
                Err(e) => {
                    end(&mut report, Outcome::Failed, Some(e.to_string()), None);
                    return report;
                }
            }
        }
        Begin::Assessed(a, d) => Some((a, d)),
        Begin::Resume(progress) if progress.level == 0 => {
            // Stopped before it planned anything: start it over.
            live(opts, format!("[{name}] assessing ({})", p.info.service));
            let t = Instant::now();
            match s.assess(p) {
                Ok(a) => Some((a, t.elapsed())),
                Err(e) => {
                    end(&mut report, Outcome::Failed, Some(e.to_string()), None);
                    return report;
                }
            }
        }
        Begin::Resume(progress) => {
            report.assessment = progress.assessment.clone();
            resume = Some(*progress);
            None
        }
    };
    p.env.take_actions();
    let max_level = p.info.levels.iter().map(|l| l.level).max().unwrap_or(1);
    let mut level = match (&assessment, &resume) {
        (_, Some(r)) => r.level,
        (Some((a, t)), None) => {
            let ar = AssessmentReport {
                severity: a.severity.as_str().into(),
                rollback: a.rollback,
                level: a.level,
                scenario: a.scenario.clone(),
                summary: a.summary.clone(),
                findings: findings(&a.findings),
                duration_ms: ms(*t),
            };
            s.record(Event::Assessment {
                plugin: name.clone(),
                assessment: ar.clone(),
            });
            if a.rollback {
                s.saw_severity(a.severity);
            }
            live(
                opts,
                format!(
                    "[{name}] {} severity, scenario {:?}: {}",
                    ar.severity, ar.scenario, ar.summary
                ),
            );
            for f in &ar.findings {
                live(opts, format!("[{name}]   {}", format_finding(f)));
            }
            report.assessment = Some(ar);
            match opts.level {
                Some(l) => l,
                None if !a.rollback => {
                    live(opts, format!("[{name}] healthy: nothing to roll back"));
                    // Healthy again: the incident is over, and so are its
                    // decisions.
                    if s.mode == Mode::Execute {
                        forget_decisions(s, p, "the assessment found the service healthy", opts);
                    }
                    end(&mut report, Outcome::Healthy, None, None);
                    return report;
                }
                None => a.level.max(1),
            }
        }
        (None, None) => unreachable!("a plugin starts from an assessment or a resume point"),
    };
    if level > max_level || level == 0 {
        end(
            &mut report,
            Outcome::Failed,
            Some(format!(
                "level {level} does not exist; the plugin has levels 1 to {max_level}"
            )),
            None,
        );
        return report;
    }

    // What led here, for a person asked to approve: the assessment's
    // findings, then the last verification's.
    let mut last_findings: Vec<FindingReport> = report
        .assessment
        .as_ref()
        .map(|a| a.findings.clone())
        .unwrap_or_default();
    let mut escalated = false;
    // An escalation a person approved covers its level's steps up to the
    // effect they were shown.
    let mut approved_upto: Option<(u8, Harm)> = None;
    loop {
        let level_name = p
            .info
            .levels
            .iter()
            .find(|l| l.level == level)
            .map(|l| l.name.clone())
            .unwrap_or_default();
        // A resumed level goes on with the plan its run made, as the
        // journal kept it: planning again could plan from a system the
        // first steps already changed.
        let (steps, done, in_flight, failed) = match resume.take() {
            Some(Progress {
                plan: Some(plan),
                done,
                in_flight,
                failed,
                ..
            }) => {
                live(
                    opts,
                    format!(
                        "[{name}] level {level} ({level_name}): resuming its plan of {} steps, {} completed",
                        plan.len(),
                        done.len()
                    ),
                );
                (plan, done, in_flight, failed)
            }
            _ => {
                let steps = match s.plan(p, level) {
                    Ok(steps) => steps,
                    Err(e) => {
                        end(
                            &mut report,
                            Outcome::Failed,
                            Some(e.to_string()),
                            Some(level),
                        );
                        return report;
                    }
                };
                p.env.take_actions();
                let planned: Vec<PlannedStep> = steps.iter().map(planned).collect();
                s.record(Event::Plan {
                    plugin: name.clone(),
                    level,
                    level_name: level_name.clone(),
                    effect: worst_effect(&planned).into(),
                    steps: planned.clone(),
                });
                live(
                    opts,
                    format!(
                        "[{name}] level {level} ({level_name}): {} steps",
                        steps.len()
                    ),
                );
                // Escalating on its own goes only as far as the policy
                // says; past that, a person decides, once for the level.
                let harm = Harm::from_name(worst_effect(&planned));
                let limit = p.spec.policy.auto_escalate;
                if escalated && harm > limit && !opts.plan_only {
                    let gate_id = format!("escalate-to-{level}");
                    let what = format!(
                        "escalate to level {level} ({level_name}), whose steps are {}: {}",
                        harm.as_str(),
                        planned
                            .iter()
                            .map(|st| format!("{} [{}]", st.id, st.effect))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    match gate(
                        s,
                        p,
                        level,
                        &gate_id,
                        &what,
                        harm,
                        limit,
                        &last_findings,
                        opts,
                    ) {
                        Gate::Go => approved_upto = Some((level, harm)),
                        Gate::Denied(why) => {
                            end(&mut report, Outcome::Failed, Some(why), Some(level));
                            return report;
                        }
                        Gate::Wait(why) => {
                            end(&mut report, Outcome::Aborted, Some(why), Some(level));
                            return report;
                        }
                    }
                }
                (planned, Vec::new(), None, None)
            }
        };
        let mut lr = LevelReport {
            level,
            effect: worst_effect(&steps).into(),
            name: level_name,
            steps: Vec::new(),
            verification: None,
        };

        if opts.plan_only {
            for st in &steps {
                // Where the gates are: what a real run would stop and ask.
                let harm = Harm::from_name(&st.effect);
                let limit = p.spec.policy.unattended;
                let gate = if !st.manual && harm > limit {
                    format!(
                        "needs a person's approval: {} is past what the policy runs unattended ({})",
                        harm.as_str(),
                        limit.as_str()
                    )
                } else {
                    String::new()
                };
                lr.steps.push(step_report(
                    p,
                    st,
                    StepStatus::Planned,
                    gate,
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

        let mut failed: Option<String> =
            failed.map(|(step, message)| format!("step {step} failed: {message}"));
        let mut aborted: Option<String> = None;
        for st in &steps {
            if done.contains(&st.id) {
                lr.steps.push(step_report(
                    p,
                    st,
                    StepStatus::Ok,
                    "completed before the run was interrupted".into(),
                    Duration::ZERO,
                    Vec::new(),
                    Vec::new(),
                ));
                continue;
            }
            if failed.is_some() {
                s.record(Event::StepSkipped {
                    plugin: name.clone(),
                    step: st.id.clone(),
                    reason: None,
                });
                lr.steps.push(step_report(
                    p,
                    st,
                    StepStatus::Skipped,
                    "an earlier step failed".into(),
                    Duration::ZERO,
                    Vec::new(),
                    Vec::new(),
                ));
                continue;
            }
            let again = in_flight.as_ref().is_some_and(|(id, _)| *id == st.id);
            let stop = stop_reason(s).map(Err).unwrap_or(Ok(())).and_then(|()| {
                if again {
                    decide_in_flight(
                        s,
                        p,
                        st,
                        in_flight.as_ref().map_or(&[][..], |(_, a)| a),
                        opts,
                    )
                } else {
                    Ok(true)
                }
            });
            let reason = match stop {
                Ok(true) => None,
                Ok(false) => {
                    // Confirmed done by a person: count it, do not run it.
                    lr.steps.push(step_report(
                        p,
                        st,
                        StepStatus::Ok,
                        "confirmed completed by the operator after the interruption".into(),
                        Duration::ZERO,
                        Vec::new(),
                        Vec::new(),
                    ));
                    s.record(Event::StepEnd {
                        plugin: name.clone(),
                        level,
                        step: st.id.clone(),
                        status: StepStatus::Ok,
                        message: "confirmed completed by the operator after the interruption"
                            .into(),
                        duration_ms: 0.0,
                        findings: Vec::new(),
                    });
                    continue;
                }
                Err(reason) => Some(reason),
            };
            // Why this step does not start, and whether the run stays
            // resumable: a stop (a signal, a broken journal, nobody decided
            // on the step in flight or answered the gate) is; a denial is
            // a person's decision and ends it.
            let mut halt: Option<(String, bool)> = reason.map(|r| (r, true));
            // Past the policy, a person decides (a manual step is a
            // person's act already).
            let harm = Harm::from_name(&st.effect);
            let limit = p.spec.policy.unattended;
            let covered = approved_upto.is_some_and(|(l, e)| l == level && harm <= e);
            if halt.is_none() && !st.manual && harm > limit && !covered {
                let what = format!("step {} ({}): {}", st.id, st.title, st.detail);
                match gate(
                    s,
                    p,
                    level,
                    &st.id,
                    &what,
                    harm,
                    limit,
                    &last_findings,
                    opts,
                ) {
                    Gate::Go => {}
                    Gate::Denied(why) => halt = Some((why, false)),
                    Gate::Wait(why) => halt = Some((why, true)),
                }
            }
            if let Some((why, resumable)) = halt {
                s.record(Event::StepSkipped {
                    plugin: name.clone(),
                    step: st.id.clone(),
                    reason: Some(why.clone()),
                });
                live(
                    opts,
                    format!("[{name}] stopping before step {}: {why}", st.id),
                );
                if resumable {
                    aborted = Some(format!("stopped before step {}: {why}", st.id));
                    failed = aborted.clone();
                } else {
                    failed = Some(why.clone());
                }
                lr.steps.push(step_report(
                    p,
                    st,
                    StepStatus::Skipped,
                    why,
                    Duration::ZERO,
                    Vec::new(),
                    Vec::new(),
                ));
                continue;
            }
            hooks.before_step(s, p, &step_of(st));
            *p.env.current_step.lock().unwrap() = Some(st.id.clone());
            s.record(Event::StepStart {
                plugin: name.clone(),
                level,
                step: st.id.clone(),
                title: st.title.clone(),
                effect: st.effect.clone(),
                repeatable: st.repeatable,
                plugin_sha256: p.plugin.sha256.clone(),
                again,
            });
            live(
                opts,
                format!(
                    "[{name}] step {}: {}{}",
                    st.id,
                    st.title,
                    if again {
                        " (again, after the interruption)"
                    } else {
                        ""
                    }
                ),
            );
            let t = Instant::now();
            let result = if st.manual {
                confirm_manual(s, p, st, opts)
            } else {
                Ok(())
            };
            let result =
                result.and_then(|()| s.run_step(p, level, &st.id).map_err(|e| e.to_string()));
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
            s.record(Event::StepEnd {
                plugin: name.clone(),
                level,
                step: st.id.clone(),
                status: status.clone(),
                message: message.clone(),
                duration_ms: elapsed.as_secs_f64() * 1e3,
                findings: fnd.clone(),
            });
            let mark = if status == StepStatus::Ok {
                "ok"
            } else {
                "FAILED"
            };
            live(
                opts,
                format!("[{name}]   {mark} in {}: {message}", fmt_duration(elapsed)),
            );
            if status == StepStatus::Failed {
                failed = Some(format!("step {} failed: {message}", st.id));
                s.notify(
                    "step-failed",
                    format!("[{name}] step {} failed: {message}", st.id),
                    serde_json::json!({"plugin": name, "level": level, "step": st.id}),
                    false,
                );
            }
            lr.steps
                .push(step_report(p, st, status, message, elapsed, actions, fnd));
        }

        if let Some(reason) = aborted {
            report.levels.push(lr);
            end(&mut report, Outcome::Aborted, Some(reason), Some(level));
            return report;
        }
        if let Some(err) = failed {
            report.levels.push(lr);
            end(&mut report, Outcome::Failed, Some(err), Some(level));
            return report;
        }

        // Verify.
        let t = Instant::now();
        let v: Verification = match s.verify(p, level) {
            Ok(v) => v,
            Err(e) => {
                report.levels.push(lr);
                end(
                    &mut report,
                    Outcome::Failed,
                    Some(e.to_string()),
                    Some(level),
                );
                return report;
            }
        };
        p.env.take_actions();
        let vr = VerificationReport {
            healthy: v.healthy,
            summary: v.summary.clone(),
            findings: findings(&v.findings),
            duration_ms: ms(t.elapsed()),
        };
        s.record(Event::Verification {
            plugin: name.clone(),
            level,
            verification: vr.clone(),
        });
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
        last_findings = vr.findings.clone();
        lr.verification = Some(vr);
        report.levels.push(lr);

        if !s.mode.executes() {
            // Nothing changed, so the verification shows the system as it
            // is; escalation is decided only by a real run.
            end(&mut report, Outcome::Simulated, None, Some(level));
            return report;
        }
        if v.healthy {
            // Verified back: the incident's decisions have done their job.
            if s.mode == Mode::Execute {
                forget_decisions(s, p, "the service was verified back", opts);
            }
            end(&mut report, Outcome::RolledBack, None, Some(level));
            return report;
        }
        // Where to go from a failed verification: the plugin's judgement
        // (the next level, a given one, or stop and hand over).
        let next = match &v.escalation {
            Escalation::Stop(why) => {
                let error = format!(
                    "verification failed at level {level}: {}; the plugin says not to escalate: {why}; a person decides what comes next",
                    v.summary
                );
                s.notify(
                    "step-failed",
                    format!("[{name}] {error}"),
                    serde_json::json!({"plugin": name, "level": level, "stop": why}),
                    false,
                );
                end(&mut report, Outcome::Failed, Some(error), Some(level));
                return report;
            }
            Escalation::To(to) if *to > level && *to <= max_level => Some(*to),
            Escalation::To(to) => {
                end(
                    &mut report,
                    Outcome::Failed,
                    Some(format!(
                        "verification failed at level {level}: {}; the plugin asks for level {to}, which is not above {level} and at most {max_level}",
                        v.summary
                    )),
                    Some(level),
                );
                return report;
            }
            Escalation::Next => (level < max_level).then_some(level + 1),
        };
        if let Some(to) = next {
            s.record(Event::Escalate {
                plugin: name.clone(),
                from: level,
                to,
                reason: v.summary.clone(),
            });
            s.notify(
                "escalate",
                format!(
                    "[{name}] level {level} did not verify ({}); escalating to level {to}",
                    v.summary
                ),
                serde_json::json!({"plugin": name, "from": level, "to": to}),
                false,
            );
            live(
                opts,
                format!("[{name}] level {level} did not verify; escalating to level {to}"),
            );
            level = to;
            escalated = true;
            continue;
        }
        end(
            &mut report,
            Outcome::Failed,
            Some(format!(
                "verification failed after level {level}: {}",
                v.summary
            )),
            Some(level),
        );
        return report;
    }
}

/// A step as the journal keeps it.
fn planned(st: &Step) -> PlannedStep {
    PlannedStep {
        id: st.id.clone(),
        title: st.title.clone(),
        manual: st.kind == StepKind::Manual,
        detail: st.detail.clone(),
        effect: Harm::from(st.effect).as_str().into(),
        repeatable: st.repeatable,
    }
}

/// The WIT step of a journaled one (for hooks).
fn step_of(st: &PlannedStep) -> Step {
    Step {
        id: st.id.clone(),
        title: st.title.clone(),
        kind: if st.manual {
            StepKind::Manual
        } else {
            StepKind::Auto
        },
        detail: st.detail.clone(),
        effect: Harm::from_name(&st.effect).into(),
        repeatable: st.repeatable,
    }
}

/// A level's effect: its worst step's.
pub fn worst_effect(steps: &[PlannedStep]) -> &'static str {
    steps
        .iter()
        .map(|st| Harm::from_name(&st.effect))
        .max()
        .unwrap_or(Harm::Observe)
        .as_str()
}

/// How a gate ended.
pub(crate) enum Gate {
    /// Approved (or within the policy): go on.
    Go,
    /// A person said no: stop here, the run ends.
    Denied(String),
    /// Nobody answered in time, or a signal came: stop here, resumable.
    Wait(String),
}

/// A step or an escalation past the policy: approved up front, asked on
/// the terminal, or waited for from another shell (`rewind approve`).
/// Every answer is journaled with who gave it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gate(
    s: &Session<'_>,
    p: &Prepared<'_>,
    level: u8,
    gate_id: &str,
    what: &str,
    harm: Harm,
    limit: Harm,
    findings_here: &[FindingReport],
    opts: &RunOptions,
) -> Gate {
    let name = &p.spec.name;
    if !s.mode.executes() {
        live(
            opts,
            format!(
                "[{name}]   needs a person's approval ({} is past the policy's {}): {what}",
                harm.as_str(),
                limit.as_str()
            ),
        );
        return Gate::Go;
    }
    let approval = |approved: bool, by: String, who: Who| {
        s.record(Event::Approval {
            plugin: name.clone(),
            level,
            step: gate_id.to_string(),
            approved,
            by,
            who,
        })
    };
    if let Some(pre) = opts.approve.iter().find(|a| a.covers(level, gate_id, harm)) {
        let by = format!("--approve {}", pre.text());
        live(opts, format!("[{name}]   approved up front ({by}): {what}"));
        approval(true, by, Who::me());
        return Gate::Go;
    }
    s.record(Event::ApprovalNeeded {
        plugin: name.clone(),
        level,
        step: gate_id.to_string(),
        effect: harm.as_str().into(),
        limit: limit.as_str().into(),
        detail: what.to_string(),
    });
    s.notify(
        "approval-needed",
        format!(
            "[{name}] needs a person: {what} ({}); `rewind approve {}` or `rewind deny {}`",
            harm.as_str(),
            s.run_id,
            s.run_id
        ),
        serde_json::json!({"plugin": name, "level": level, "step": gate_id, "effect": harm.as_str()}),
        false,
    );
    if std::io::stdin().is_terminal() {
        crate::errln!(
            "\n[{name}] APPROVAL NEEDED: {what}\n  effect {}, past what the policy runs unattended ({})",
            harm.as_str(),
            limit.as_str()
        );
        for f in findings_here {
            crate::errln!("  {}", format_finding(f));
        }
        crate::errln!("  Type 'approve' to carry it out, or 'deny' to stop here:");
        return match read_answer(&["approve", "deny"]) {
            Ok(a) if a == "approve" => {
                approval(true, "terminal".into(), Who::me());
                Gate::Go
            }
            Ok(_) => {
                let who = Who::me();
                approval(false, "terminal".into(), who.clone());
                Gate::Denied(format!(
                    "{gate_id} was denied by {who} on the terminal; nothing after it ran, the services are left as they are"
                ))
            }
            Err(e) => Gate::Wait(format!("{gate_id} needs a person's approval: {e}")),
        };
    }
    let timeout = p.spec.policy.approval_timeout;
    crate::errln!(
        "[{name}] APPROVAL NEEDED: {what} (effect {}, past the policy's {}). Waiting up to {} for `rewind approve {}` or `rewind deny {}` from another shell",
        harm.as_str(),
        limit.as_str(),
        humantime::format_duration(timeout),
        s.run_id,
        s.run_id
    );
    match crate::policy::wait_for_answer(&s.runbook.state(), &s.run_id, gate_id, what, timeout) {
        Ok(Waited::Answered(a)) if a.approve => {
            approval(true, "rewind approve".into(), a.who);
            Gate::Go
        }
        Ok(Waited::Answered(a)) => {
            let who = a.who.clone();
            approval(false, "rewind deny".into(), a.who);
            Gate::Denied(format!(
                "{gate_id} was denied by {who} (rewind deny); nothing after it ran, the services are left as they are"
            ))
        }
        Ok(Waited::TimedOut) => Gate::Wait(format!(
            "{gate_id} needs a person's approval and none came within {}; the run stays resumable (`rewind resume`, then approve)",
            humantime::format_duration(timeout)
        )),
        Ok(Waited::Stopped) => Gate::Wait(format!(
            "rewind received SIGINT or SIGTERM while {gate_id} waited for an approval"
        )),
        Err(e) => Gate::Wait(format!(
            "{gate_id} needs a person's approval, and the approvals directory cannot be used: {e}"
        )),
    }
}

/// The step an interrupted run was in the middle of: run it again when the
/// plugin says that is safe, or when the operator said so; else a person
/// decides, with what the journal knows of it. `Ok(true)`: run it;
/// `Ok(false)`: a person confirmed it completed; `Err`: stop here (the run
/// stays resumable).
fn decide_in_flight(
    s: &Session<'_>,
    p: &Prepared<'_>,
    st: &PlannedStep,
    actions: &[String],
    opts: &RunOptions,
) -> Result<bool, String> {
    let name = &p.spec.name;
    let known = if actions.is_empty() {
        "it journaled no side effect before the interruption".to_string()
    } else {
        format!(
            "side effects it journaled before the interruption: {}",
            actions.join("; ")
        )
    };
    if st.repeatable || opts.in_flight == InFlight::Redo {
        live(
            opts,
            format!(
                "[{name}] step {} was cut short; running it again ({}; {known})",
                st.id,
                if st.repeatable {
                    "the plugin marks it safe to repeat"
                } else {
                    "--in-flight redo"
                }
            ),
        );
        return Ok(true);
    }
    let by = match opts.in_flight {
        InFlight::Done => "--in-flight done".to_string(),
        _ if !std::io::stdin().is_terminal() => {
            return Err(format!(
                "step {:?} ({}) was in flight when the run stopped and is not marked safe to repeat ({known}); check the system, then `rewind resume --in-flight done` if it completed, or `--in-flight redo` to run it again",
                st.id, st.title
            ));
        }
        _ => {
            crate::errln!(
                "\n[{name}] step {} ({}) was in flight when the run stopped, and it is not marked safe to repeat.\n  What it does: {}\n  {known}\n  Type 'redo' to run it again, 'done' if you checked it completed, or 'abort':",
                st.id,
                st.title,
                st.detail
            );
            match read_answer(&["redo", "done", "abort"])?.as_str() {
                "redo" => return Ok(true),
                "done" => "terminal".to_string(),
                _ => {
                    return Err(format!(
                        "the operator stopped the resume at step {:?}",
                        st.id
                    ));
                }
            }
        }
    };
    s.record(Event::ManualApproved {
        plugin: name.clone(),
        step: st.id.clone(),
        by: format!("{by} (in flight when the run stopped)"),
    });
    Ok(false)
}

/// One of `choices`, read from the terminal.
fn read_answer(choices: &[&str]) -> Result<String, String> {
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        line.clear();
        if stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?
            == 0
        {
            return Err("no answer (end of input)".into());
        }
        let answer = line.trim();
        if choices.contains(&answer) {
            return Ok(answer.to_string());
        }
        crate::errln!("  Type one of: {}", choices.join(", "));
    }
}

fn step_report(
    p: &Prepared<'_>,
    s: &PlannedStep,
    status: StepStatus,
    message: String,
    elapsed: Duration,
    actions: Vec<Action>,
    findings: Vec<FindingReport>,
) -> StepReport {
    StepReport {
        id: s.id.clone(),
        title: s.title.clone(),
        manual: s.manual,
        detail: s.detail.clone(),
        effect: s.effect.clone(),
        repeatable: s.repeatable,
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
    s: &Session<'_>,
    p: &Prepared<'_>,
    st: &PlannedStep,
    opts: &RunOptions,
) -> Result<(), String> {
    let name = &p.spec.name;
    if !s.mode.executes() {
        live(
            opts,
            format!(
                "[{name}]   manual step: would ask a person to: {}",
                st.detail
            ),
        );
        return Ok(());
    }
    let approved = |by: &str| {
        s.record(Event::ManualApproved {
            plugin: name.clone(),
            step: st.id.clone(),
            by: by.into(),
        })
    };
    if opts.approve_manual {
        approved("--approve-manual");
        live(
            opts,
            format!(
                "[{name}]   manual step approved by --approve-manual: {}",
                st.detail
            ),
        );
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(format!(
            "manual step {:?} needs a person ({}), and there is no terminal to ask on; run on a terminal, or pass --approve-manual once it is done",
            st.id, st.detail
        ));
    }
    crate::errln!(
        "\n[{name}] MANUAL STEP {}: {}\n  {}\n  Type 'done' when it is done, or 'abort':",
        st.id,
        st.title,
        st.detail
    );
    match read_answer(&["done", "abort"]) {
        Ok(a) if a == "done" => {
            approved("terminal");
            Ok(())
        }
        Ok(_) => Err(format!(
            "manual step {:?} was aborted by the operator",
            st.id
        )),
        Err(e) => Err(format!("manual step {:?} was not confirmed ({e})", st.id)),
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
