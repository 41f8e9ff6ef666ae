//! One run session, shared by `rewind run`, `drill`, `resume`, the
//! rollbacks `watch` starts and its probe rounds: it owns the state dir's
//! lock and the services' locks, the journal, loading and describing the
//! plugins, the run-start / plugin-loaded / run-end events, and the typed
//! calls into a plugin (`assess`, `plan`, `run_step`, `verify`) with the
//! context each gets. Commands differ only in what they do between those.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bindings::rollback::{Assessment, PluginInfo, Step, StepOutcome, Verification};
use crate::bindings::types::{Context, Mode, Severity};
use crate::journal::{Event, Journal};
use crate::lock::{RunLock, ServiceLock};
use crate::notify::{Notice, Notifier};
use crate::run::{StartError, new_run_id};
use crate::runbook::{PluginSpec, Runbook};
use crate::runtime::{CallError, LoadedPlugin, Runtime};
use crate::state::PluginEnv;

/// What the session is for.
#[derive(Debug, Clone)]
pub enum Kind {
    /// `rewind plan`: nothing locked, nothing journaled.
    Plan,
    /// `rewind watch` probing: assessments only, nothing locked or
    /// journaled (a rollback it starts opens a `Run` session).
    Probe,
    /// `rewind run` (and `--dry-run`).
    Run { level: Option<u8> },
    /// `rewind drill` of one scenario.
    Drill { scenario: String },
    /// `rewind restore` of one snapshot: journaled like a run, never
    /// resumed as one.
    Restore { snapshot: String },
    /// `rewind resume`: the same run id, its journal carried on.
    Resume {
        run_id: String,
        journal: PathBuf,
        /// What changed since the run started, accepted with `--force`.
        forced: Vec<String>,
    },
}

/// A loaded plugin with what it said about itself.
pub struct Prepared<'a> {
    pub spec: &'a PluginSpec,
    pub plugin: LoadedPlugin,
    pub info: PluginInfo,
    pub env: Arc<PluginEnv>,
}

pub struct Session<'r> {
    pub runbook: &'r Runbook,
    pub rt: &'r Runtime,
    pub run_id: String,
    pub mode: Mode,
    pub kind: Kind,
    pub journal: Option<Arc<Journal>>,
    /// When the session started, as the journal writes times.
    pub started_at: String,
    started: Instant,
    _run_lock: Option<RunLock>,
    _service_locks: Vec<ServiceLock>,
    /// `[[notify]]`: who is told what, in the background.
    pub notifier: Notifier,
    /// The worst severity an assessment of this run found.
    severity: std::sync::Mutex<Severity>,
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("run_id", &self.run_id)
            .field("kind", &self.kind)
            .finish()
    }
}

impl<'r> Session<'r> {
    /// Lock, open the journal, load and describe the plugins (`only`: just
    /// that one), lock their services. Nothing is executed. A failure here
    /// touched nothing; it is journaled as the run's end when a journal was
    /// opened.
    pub fn open(
        runbook: &'r Runbook,
        rt: &'r Runtime,
        kind: Kind,
        mode: Mode,
        only: Option<&str>,
    ) -> Result<(Self, Vec<Prepared<'r>>), StartError> {
        let started = Instant::now();
        let started_at = crate::journal::now_rfc3339();
        let run_id = match &kind {
            Kind::Plan | Kind::Run { .. } => new_run_id(),
            Kind::Probe => "watch".to_string(),
            Kind::Drill { .. } => format!("{}-drill", new_run_id()),
            Kind::Restore { .. } => format!("{}-restore", new_run_id()),
            Kind::Resume { run_id, .. } => run_id.clone(),
        };
        let state = runbook.state();
        let state_err = |path: PathBuf| move |source| StartError::State { path, source };
        let journaled = !matches!(kind, Kind::Plan | Kind::Probe);
        let run_lock = if journaled {
            Some(RunLock::acquire(&state, &run_id)?)
        } else {
            None
        };
        let journal = match &kind {
            Kind::Plan | Kind::Probe => None,
            Kind::Resume { journal, .. } => Some(Arc::new(
                Journal::reopen(journal, &run_id).map_err(state_err(journal.clone()))?,
            )),
            _ => Some(Arc::new(
                Journal::create(&state.runs(), &run_id).map_err(state_err(state.runs()))?,
            )),
        };
        let notifier = Notifier::new(
            if matches!(kind, Kind::Plan) || !mode.executes() {
                // Plans and dry runs change nothing: nobody is paged.
                Vec::new()
            } else {
                runbook.notify.clone()
            },
            journal.clone(),
        );
        let mut session = Self {
            runbook,
            rt,
            run_id,
            mode,
            kind: kind.clone(),
            notifier,
            severity: std::sync::Mutex::new(Severity::None),
            journal,
            started_at,
            started,
            _run_lock: run_lock,
            _service_locks: Vec::new(),
        };
        match &kind {
            Kind::Resume { forced, .. } => session.record(Event::Resume {
                pid: std::process::id(),
                host_version: env!("CARGO_PKG_VERSION").into(),
                forced: forced.clone(),
            }),
            Kind::Run { level } => session.record(session.run_start(only, *level, None, None)),
            Kind::Drill { scenario } => {
                session.record(session.run_start(only, None, Some(scenario.clone()), None))
            }
            Kind::Restore { snapshot } => {
                session.record(session.run_start(only, None, None, Some(snapshot.clone())))
            }
            Kind::Plan | Kind::Probe => {}
        }
        if journaled {
            let what = match &session.kind {
                Kind::Resume { .. } => "resumed",
                Kind::Drill { .. } => "drill started",
                Kind::Restore { .. } => "snapshot restore started",
                _ => "rollback started",
            };
            session.notify(
                "run-start",
                format!("{what} on {}", crate::policy::Who::me().host),
                serde_json::Value::Null,
                false,
            );
        }
        let prepared = match session.prepare(only) {
            Ok(p) => p,
            Err(e) => {
                session.end("failed", Some(e.to_string()), None);
                return Err(e);
            }
        };
        for p in &prepared {
            session.record(Event::PluginLoaded {
                plugin: p.spec.name.clone(),
                component: p.spec.component.display().to_string(),
                sha256: p.plugin.sha256.clone(),
                version: p.info.version.clone(),
                service: p.info.service.clone(),
                compiled: p.plugin.stats.compiled,
                load_ms: p.plugin.stats.duration.as_secs_f64() * 1e3,
                cache_rejected: p.plugin.stats.cache_rejected.clone(),
            });
        }
        // Two runbooks that roll back the same service must not both stop
        // and start it: each service is locked for the session, whatever
        // state dir the runbook has.
        if journaled && mode.executes() {
            let mut services: Vec<&str> =
                prepared.iter().map(|p| p.info.service.as_str()).collect();
            services.sort_unstable();
            services.dedup();
            for service in services {
                match ServiceLock::acquire(service, &session.run_id) {
                    Ok(l) => session._service_locks.push(l),
                    Err(e) => {
                        session.end("failed", Some(e.to_string()), None);
                        return Err(e);
                    }
                }
            }
        }
        Ok((session, prepared))
    }

    fn run_start(
        &self,
        only: Option<&str>,
        level: Option<u8>,
        drill: Option<String>,
        restore: Option<String>,
    ) -> Event {
        use sha2::Digest as _;
        let configs: BTreeMap<String, String> = self
            .runbook
            .plugins
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    hex::encode(sha2::Sha256::digest(p.config.as_bytes())),
                )
            })
            .collect();
        Event::RunStart {
            runbook: self.runbook.path.display().to_string(),
            name: self.runbook.name.clone(),
            mode: self.mode.as_str().into(),
            plugin: only.map(String::from),
            level,
            drill,
            restore,
            pid: std::process::id(),
            host_version: env!("CARGO_PKG_VERSION").into(),
            runbook_sha256: self.runbook.sha256.clone(),
            configs,
        }
    }

    /// Load, validate and describe the selected plugins.
    fn prepare(&self, only: Option<&str>) -> Result<Vec<Prepared<'r>>, StartError> {
        let runbook = self.runbook;
        if let Some(name) = only
            && runbook.plugin(name).is_none()
        {
            return Err(StartError::NoSuchPlugin(name.to_string()));
        }
        // Rollbacks talk to services on this machine or its network: a
        // proxy from the environment would only be in the way (and would see
        // traffic it has no business seeing). Redirects are not followed, so
        // a grant's URL prefix is the only place a request can go.
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
            let plugin = self
                .rt
                .load(&spec.component)
                .map_err(|source| StartError::Load {
                    plugin: spec.name.clone(),
                    line: format!("{}:{}", runbook.path.display(), spec.component_line),
                    source,
                })?;
            let env = |mode: Mode, journal: Option<Arc<Journal>>| -> Result<_, StartError> {
                Ok(Arc::new(
                    PluginEnv::new(
                        spec.name.clone(),
                        spec.sandbox(runbook)?,
                        mode,
                        journal,
                        runbook.state(),
                        http.clone(),
                    )
                    .with_limits(runbook.limits),
                ))
            };
            let run_env = env(self.mode, self.journal.clone())?;
            // `describe` runs as a check: whatever it asks for is recorded,
            // never carried out, and not journaled.
            let check_env = env(Mode::Check, None)?;
            let ctx = context(&self.run_id, spec, Mode::Check, 0);
            let info =
                self.rt
                    .describe(&plugin, &check_env, &ctx)
                    .map_err(|e| StartError::Describe {
                        plugin: spec.name.clone(),
                        message: e.to_string(),
                    })?;
            out.push(Prepared {
                spec,
                plugin,
                info,
                env: run_env,
            });
        }
        Ok(out)
    }

    /// Append an event to the journal (none in plans and probes).
    pub fn record(&self, e: Event) {
        if let Some(j) = &self.journal {
            j.record(e);
        }
    }

    /// Why nothing new may start: the journal lost a line.
    pub fn journal_broken(&self) -> Option<String> {
        self.journal.as_ref().and_then(|j| j.broken())
    }

    pub fn context(&self, p: &Prepared<'_>, level: u8) -> Context {
        context(&self.run_id, p.spec, self.mode, level)
    }

    pub fn assess(&self, p: &Prepared<'_>) -> Result<Assessment, CallError> {
        self.rt.assess(&p.plugin, &p.env, &self.context(p, 0))
    }

    pub fn plan(&self, p: &Prepared<'_>, level: u8) -> Result<Vec<Step>, CallError> {
        self.rt.plan(&p.plugin, &p.env, &self.context(p, level))
    }

    pub fn run_step(
        &self,
        p: &Prepared<'_>,
        level: u8,
        step: &str,
    ) -> Result<StepOutcome, CallError> {
        p.env.set_step_limit(Some(self.step_time(p, level)));
        let r = self
            .rt
            .run_step(&p.plugin, &p.env, &self.context(p, level), step);
        p.env.set_step_limit(None);
        r
    }

    /// How long one step of `level` may take: `[limits] step_time`, else
    /// twice the level's RTO (or the runbook's) but at least 10 minutes,
    /// else `call_time`. A step still running at twice its RTO has missed
    /// it long since, and one that hangs must not hold the rollback (and
    /// the on-call) forever; below 10 minutes a slow restore is likelier
    /// than a hang, and cutting it would leave the system half-way (a
    /// drill timed against a tight RTO must see the real recovery time).
    pub fn step_time(&self, p: &Prepared<'_>, level: u8) -> Duration {
        let limits = &self.runbook.limits;
        let rto = p
            .info
            .levels
            .iter()
            .find(|l| l.level == level)
            .and_then(|l| l.rto_ms)
            .map(Duration::from_millis)
            .or(self.runbook.rto);
        limits
            .step_time
            .or(rto.map(|r| (r * 2).max(MIN_STEP_TIME)))
            .unwrap_or(limits.call_time)
            .min(limits.call_time)
    }

    pub fn verify(&self, p: &Prepared<'_>, level: u8) -> Result<Verification, CallError> {
        self.rt.verify(&p.plugin, &p.env, &self.context(p, level))
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Journal the end of the run and tell the `[[notify]]` targets (up
    /// to 10 s for the last notices to go out); returns its duration.
    pub fn end(
        &self,
        outcome: &str,
        error: Option<String>,
        drill: Option<serde_json::Value>,
    ) -> Duration {
        let d = self.started.elapsed();
        let event = if matches!(self.kind, Kind::Drill { .. }) {
            "drill-end"
        } else {
            "run-end"
        };
        let summary = match &error {
            Some(e) => format!("{outcome}: {e}"),
            None => format!("{outcome} in {}", crate::run::fmt_duration(d)),
        };
        self.notify(
            event,
            summary,
            serde_json::json!({"outcome": outcome, "duration_ms": d.as_millis() as u64, "drill": drill}),
            matches!(outcome, "rolled-back" | "healthy"),
        );
        self.record(Event::RunEnd {
            outcome: outcome.to_string(),
            duration_ms: d.as_millis() as u64,
            error,
            drill,
        });
        self.notifier.flush(Duration::from_secs(10));
        d
    }

    /// Raise the run's severity to an assessment's, for notices.
    pub fn saw_severity(&self, s: Severity) {
        let mut worst = self.severity.lock().unwrap();
        if rank(s) > rank(*worst) {
            *worst = s;
        }
    }

    /// Tell the `[[notify]]` targets that want `event` (in the background).
    pub fn notify(
        &self,
        event: &'static str,
        summary: String,
        details: serde_json::Value,
        resolved: bool,
    ) {
        self.notifier.send(Notice {
            event,
            run_id: self.run_id.clone(),
            runbook: self.runbook.name.clone(),
            severity: self.severity.lock().unwrap().as_str().to_string(),
            summary,
            details,
            resolved,
        });
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

/// The least a step gets by default (see `Session::step_time`).
const MIN_STEP_TIME: Duration = Duration::from_secs(600);

pub fn context(run_id: &str, spec: &PluginSpec, mode: Mode, level: u8) -> Context {
    Context {
        run_id: run_id.into(),
        plugin: spec.name.clone(),
        mode,
        level,
        config: spec.config.clone(),
    }
}
