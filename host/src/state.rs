//! What a plugin's calls share: `PluginEnv` lives for one plugin in one run
//! (sandbox, mode, journal, recorded side effects); `HostState` is the data
//! of one wasmtime `Store`, created fresh for every export call.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

const STDERR_CAP: usize = 64 * 1024;

use crate::bindings::types::{Error, Mode};
use crate::imports::storage::StorageState;
use crate::journal::Journal;
use crate::runtime::Limits;
use crate::sandbox::Sandbox;

/// The state directory of a runbook: journals, key-value state, snapshots,
/// and the run lock (the compiled-component cache lives here only when no
/// other cache directory can be found).
#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn runs(&self) -> PathBuf {
        self.root.join("runs")
    }
    pub fn kv_db(&self) -> PathBuf {
        self.root.join("state.sqlite")
    }
    pub fn snapshots(&self, plugin: &str) -> PathBuf {
        self.root.join("snapshots").join(plugin)
    }
    pub fn watch_lock_file(&self) -> PathBuf {
        self.root.join("watch.lock")
    }
    /// What a running `rewind watch` last saw (`watch::WatchStatus`).
    pub fn watch_status(&self) -> PathBuf {
        self.root.join("watch.json")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }
    pub fn path(&self) -> &Path {
        &self.root
    }
}

/// Create a directory of the state dir (and any missing parents) as 0700,
/// whatever the umask: journals, snapshots and the key-value state can hold
/// what a service keeps secret. The mode is set as the directory is made,
/// so there is no moment when it is open to others. A directory that
/// exists already is left as it is.
/// Replace a file rewind writes for people and tools (a drill report, a
/// JUnit file, the watch's status and metrics) in full or not at all: a
/// temporary file beside it (created 0600, then given `mode`), fsynced,
/// renamed over it. A reader never sees half of it, and a temporary file
/// never ends in a collector's name (`.rewind-*.tmp`).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".rewind-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Options that create a file as 0600 (never more, whatever the umask),
/// for files in the state dir.
pub fn private_file() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.mode(0o600);
    o
}

/// A side effect a plugin asked for: carried out, or only recorded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Action {
    pub what: String,
    pub executed: bool,
}

/// Everything one plugin's calls share during one run.
pub struct PluginEnv {
    pub name: String,
    pub sandbox: Sandbox,
    pub mode: Mode,
    pub journal: Option<Arc<Journal>>,
    pub state: StateDir,
    pub storage: StorageState,
    /// Not used by the imports any more: since calls are async, probes and
    /// requests go through the `Runtime`'s async client (same policy: no
    /// proxy, no redirects). Kept so `PluginEnv::new`'s callers are
    /// unchanged; to be dropped with that parameter.
    pub http: reqwest::blocking::Client,
    actions: Mutex<Vec<Action>>,
    /// The step being run, for the journal (set by the runner).
    pub current_step: Mutex<Option<String>>,
    /// Time spent inside host imports over the whole run (probes, commands,
    /// waits): the rest of a run's wall time is rewind's own overhead.
    host_nanos: AtomicU64,
    /// The runbook's `[limits]`, for the imports' caps.
    pub limits: Limits,
    /// Bytes of `log` messages written in this run (capped by
    /// `limits.log_bytes`).
    log_bytes: AtomicU64,
    /// Side effects asked for in this run (capped by `limits.actions`).
    action_count: AtomicU64,
    /// When the export call under way must be over (`[limits] call_time`):
    /// every wait a host call makes for the plugin is cut at it.
    call_deadline: Mutex<Option<Instant>>,
    /// The deadline of the step under way, set by the session around a
    /// `run-step` call (see `Limits::step_time`).
    step_limit: Mutex<Option<Duration>>,
}

impl std::fmt::Debug for PluginEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEnv")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .finish()
    }
}

impl PluginEnv {
    pub fn new(
        name: String,
        sandbox: Sandbox,
        mode: Mode,
        journal: Option<Arc<Journal>>,
        state: StateDir,
        http: reqwest::blocking::Client,
    ) -> Self {
        let storage = StorageState::new(&state, &name);
        Self {
            name,
            sandbox,
            mode,
            journal,
            state,
            storage,
            http,
            actions: Mutex::new(Vec::new()),
            current_step: Mutex::new(None),
            host_nanos: AtomicU64::new(0),
            limits: Limits::default(),
            log_bytes: AtomicU64::new(0),
            action_count: AtomicU64::new(0),
            call_deadline: Mutex::new(None),
            step_limit: Mutex::new(None),
        }
    }

    /// The runbook's limits instead of the defaults.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Start an export call that must be over by `deadline`.
    /// The deadline of the calls to come (a step's), or none.
    pub fn set_step_limit(&self, limit: Option<Duration>) {
        *self.step_limit.lock().unwrap() = limit;
    }

    pub fn step_limit(&self) -> Option<Duration> {
        *self.step_limit.lock().unwrap()
    }

    pub fn set_call_deadline(&self, deadline: Instant) {
        *self.call_deadline.lock().unwrap() = Some(deadline);
    }

    /// A wait or timeout a plugin asked for, cut to what is left of the
    /// call's wall-clock time: no host call outlives the call's deadline,
    /// whatever timeout the plugin passes (at least 1 ms, so a call made
    /// at the deadline still gets an answer, not a hang or a panic).
    pub fn cap(&self, wanted: Duration) -> Duration {
        match *self.call_deadline.lock().unwrap() {
            Some(d) => wanted
                .min(d.saturating_duration_since(Instant::now()))
                .max(Duration::from_millis(1)),
            None => wanted,
        }
    }

    /// Total time spent inside host imports so far.
    pub fn host_time(&self) -> Duration {
        Duration::from_nanos(self.host_nanos.load(Ordering::Relaxed))
    }

    /// Record a side effect before it happens. Returns whether to carry it
    /// out: false in dry runs and checks, where it is only recorded as
    /// "would ...". This is the single place that enforces dry runs.
    ///
    /// Every side effect is journaled, so their number per run is capped
    /// (`[limits] actions`): a plugin asking for more is refused, not
    /// recorded, and the journal and the host's memory stay bounded. A
    /// description longer than `message_bytes` is cut in the record.
    pub fn side_effect(&self, what: impl Into<String>) -> Result<bool, Error> {
        let mut what = what.into();
        let n = self.action_count.fetch_add(1, Ordering::Relaxed) + 1;
        if n > self.limits.actions {
            return Err(Error::invalid(format!(
                "plugin {} asked for more than {} side effects in this run (the [limits] actions of the runbook); nothing more is carried out: {}",
                self.name,
                self.limits.actions,
                crate::imports::log::cut(&what, 200)
            )));
        }
        if what.len() > self.limits.message_bytes {
            let len = what.len();
            crate::imports::log::truncate_at(&mut what, self.limits.message_bytes);
            what.push_str(&format!(" [cut: {len} bytes]"));
        }
        let executed = self.mode.executes();
        let name = &self.name;
        if executed {
            tracing::info!("[{name}]   {what}");
        } else {
            tracing::info!("[{name}]   would {what}");
        }
        if let Some(j) = &self.journal {
            j.record(crate::journal::Event::Action {
                plugin: self.name.clone(),
                step: self.current_step.lock().unwrap().clone(),
                what: what.clone(),
                executed,
            });
        }
        self.actions.lock().unwrap().push(Action { what, executed });
        Ok(executed)
    }

    /// The side effects recorded since the last call, oldest first.
    pub fn take_actions(&self) -> Vec<Action> {
        std::mem::take(&mut *self.actions.lock().unwrap())
    }

    pub fn log(&self, level: &str, message: &str) {
        let name = &self.name;
        // A plugin that logs in a loop would otherwise fill the journal and
        // the terminal: past the run's budget its messages are dropped,
        // after one line that says so.
        let cap = self.limits.log_bytes as u64;
        let before = self
            .log_bytes
            .fetch_add(message.len() as u64, Ordering::Relaxed);
        if before + message.len() as u64 > cap {
            if before <= cap {
                let notice = format!(
                    "plugin {name} logged more than {} in this run; its further log messages are dropped (raise [limits] log_bytes in the runbook if that is expected)",
                    crate::runtime::show_bytes(self.limits.log_bytes)
                );
                tracing::warn!("[{name}]   {notice}");
                if let Some(j) = &self.journal {
                    j.record(crate::journal::Event::Log {
                        plugin: self.name.clone(),
                        step: None,
                        level: "warn".into(),
                        message: notice,
                    });
                }
            }
            return;
        }
        match level {
            "error" => tracing::error!("[{name}]   ERROR: {message}"),
            "warn" => tracing::warn!("[{name}]   WARNING: {message}"),
            "debug" => tracing::debug!("[{name}]   {message}"),
            "trace" => tracing::trace!("[{name}]   {message}"),
            _ => tracing::info!("[{name}]   {message}"),
        }
        if let Some(j) = &self.journal {
            j.record(crate::journal::Event::Log {
                plugin: self.name.clone(),
                step: self.current_step.lock().unwrap().clone(),
                level: level.to_string(),
                message: message.to_string(),
            });
        }
    }
}

/// The data of one `Store`: one export call of one plugin.
pub struct HostState {
    pub env: Arc<PluginEnv>,
    wasi: WasiCtx,
    table: ResourceTable,
    /// What the plugin wrote to stderr (a Rust panic message lands here).
    stderr: MemoryOutputPipe,
    pub(crate) limits: StoreLimits,
    /// Time spent inside host imports during this call; the CPU budget
    /// counts only the rest (time in the guest).
    pub(crate) host_time: Duration,
    pub(crate) call_started: Instant,
    /// The runtime's HTTP client for the probes and requests: its
    /// connections belong to the tokio runtime that polls the call.
    pub(crate) http: reqwest::Client,
}

impl HostState {
    pub fn new(env: Arc<PluginEnv>, memory_limit: usize, http: reqwest::Client) -> Self {
        // Plugins get WASI for their own runtime needs (clocks, random,
        // stdio to nowhere) but no files, sockets or environment: every
        // effect goes through the rewind imports and their grants.
        let stderr = MemoryOutputPipe::new(STDERR_CAP);
        let wasi = WasiCtx::builder().stderr(stderr.clone()).build();
        Self {
            env,
            wasi,
            stderr,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_limit)
                .trap_on_grow_failure(true)
                .build(),
            host_time: Duration::ZERO,
            call_started: Instant::now(),
            http,
        }
    }

    /// Run a host import that cannot wait long (in memory, a log line),
    /// counting its time as host time (not guest CPU).
    pub fn timed<R>(&mut self, f: impl FnOnce(&PluginEnv) -> R) -> R {
        let start = Instant::now();
        let env = self.env.clone();
        let r = f(&env);
        self.count_host_time(start);
        r
    }

    /// Run an async host import, counting its time as host time. Dropping
    /// the future (the call's deadline, a cancel) drops the import's work.
    pub async fn timed_async<R, F: Future<Output = R>>(
        &mut self,
        f: impl FnOnce(Arc<PluginEnv>) -> F,
    ) -> R {
        let start = Instant::now();
        let r = f(self.env.clone()).await;
        self.count_host_time(start);
        r
    }

    /// Run a host import that can only block (files, SQLite, /proc) on
    /// tokio's blocking pool, counting its time as host time. The call's
    /// future waits for it there and so can still be dropped at its
    /// deadline or on a cancel; the blocking work itself then finishes on
    /// its own, within its own bounds (snapshot time, SQLite's timeouts),
    /// as nothing can interrupt a thread in a system call.
    pub async fn blocking<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&PluginEnv) -> R + Send + 'static,
    ) -> R {
        self.timed_async(|env| async move {
            match tokio::task::spawn_blocking(move || f(&env)).await {
                Ok(r) => r,
                // The import panicked: panic here, as it would have inline.
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("a blocking host call was lost: {e}"),
            }
        })
        .await
    }

    fn count_host_time(&mut self, start: Instant) {
        let spent = start.elapsed();
        self.host_time += spent;
        self.env
            .host_nanos
            .fetch_add(spent.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The plugin's stderr so far, lossily decoded (for trap reports).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents())
            .trim()
            .to_string()
    }

    /// Guest time used by the current call so far.
    pub fn guest_time(&self) -> Duration {
        self.call_started.elapsed().saturating_sub(self.host_time)
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
