//! The WebAssembly side of the host: one `Engine` (pooling allocator, epoch
//! interruption), the `Linker` with every import, loading and validating
//! components (with an on-disk cache of compiled code), and calling a
//! plugin's exports, each call in a fresh instance under a CPU budget, a
//! memory cap and a wall-clock deadline.
//!
//! Calls are async underneath: the engine has async support, each export
//! runs on a wasmtime fiber polled by the tokio runtime the `Runtime` owns,
//! and every host import is an `async fn`. The typed calls (`describe`,
//! `assess`, ...) stay synchronous for their callers and block on that
//! runtime. A call is a future: its deadline (`[limits] call_time`) and
//! [`cancel_calls`] end it by dropping it, which drops whatever it was
//! waiting on (a WASI sleep, a command, a request) where it is.

use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};

use crate::bindings::rollback::{self, Assessment, PluginInfo, Step, StepOutcome, Verification};
use crate::bindings::types::{Context, Finding};
use crate::bindings::{Procedure, ProcedurePre, WIT_PACKAGE, WIT_VERSION};
use crate::state::{HostState, PluginEnv};

/// How often the epoch advances; the CPU budget is checked at this grain.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Limits applied to every plugin, from the runbook's `[limits]` table.
/// Each refusal names the limit, the value and the key that raises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time a single export call may spend running guest code (time inside
    /// host imports does not count: those have their own timeouts).
    pub cpu: Duration,
    /// Linear memory one instance may grow to.
    pub memory: usize,
    /// Bytes one `sqlite-query` may return (counted while rows are stepped;
    /// also SQLite's own limit on one value).
    pub query_bytes: usize,
    /// Bytes one `read-file` may return.
    pub read_bytes: usize,
    /// Bytes of key-value state (keys and values) one plugin may keep.
    pub kv_bytes: usize,
    /// Findings one result (assessment, step outcome, verification) may carry.
    pub findings: usize,
    /// Bytes of one summary, message or finding text in a result.
    pub message_bytes: usize,
    /// Bytes of one `log` message.
    pub log_message_bytes: usize,
    /// Bytes of `log` messages one plugin may write in one run.
    pub log_bytes: usize,
    /// Size of a component file.
    pub component_bytes: usize,
    /// Side effects (commands, writes, signals, requests...) one plugin
    /// may ask for in one run: each is journaled.
    pub actions: u64,
    /// Wall-clock time one export call may take, host calls included:
    /// past it the call is stopped, and every timeout or wait a plugin
    /// asks of the host is cut to what is left of it.
    pub call_time: Duration,
    /// Wall-clock time one step (its `run-step` call) may take; none: twice
    /// the RTO of the step's level (or of the runbook), else `call_time`.
    /// Never more than `call_time`.
    pub step_time: Option<Duration>,
    /// Bytes of file content one snapshot may hold.
    pub snapshot_bytes: u64,
    /// Time one snapshot may take.
    pub snapshot_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpu: Duration::from_secs(10),
            memory: 128 << 20,
            query_bytes: 64 << 20,
            read_bytes: 64 << 20,
            kv_bytes: 64 << 20,
            findings: 1000,
            message_bytes: 64 << 10,
            log_message_bytes: 16 << 10,
            log_bytes: 16 << 20,
            component_bytes: 256 << 20,
            actions: 10_000,
            call_time: Duration::from_secs(3600),
            step_time: None,
            snapshot_bytes: 2 << 30,
            snapshot_time: Duration::from_secs(600),
        }
    }
}

/// A size for messages: whole MiB or KiB when exact, else bytes.
pub fn show_bytes(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

/// Why a component was not accepted. One line each, saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read component {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a WebAssembly file (it starts with {head}); point `component` at the plugin's .wasm"
    )]
    NotWasm { path: PathBuf, head: String },
    #[error(
        "{path} is a core WebAssembly module, not a component; build the plugin with `cargo build --target wasm32-wasip2` (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule { path: PathBuf },
    #[error("{path} is not a valid component: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{path} was built against {found}, but this rewind implements {WIT_PACKAGE}@{WIT_VERSION}; rebuild the plugin with a matching rewind-sdk"
    )]
    Version { path: PathBuf, found: String },
    #[error(
        "{path} is not a rewind plugin: it exports [{exports}] but a plugin exports {WIT_PACKAGE}/rollback@{WIT_VERSION}"
    )]
    NotPlugin { path: PathBuf, exports: String },
    #[error("{path} cannot be linked: {reason}")]
    Link { path: PathBuf, reason: String },
    #[error("{path} is not a regular file ({kind}); point `component` at the plugin's .wasm file")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error(
        "{path} is {size} bytes, more than the component size limit of {limit} (raise [limits] component_bytes in the runbook if it really is that large)"
    )]
    TooLarge {
        path: PathBuf,
        size: String,
        limit: String,
    },
    #[error(
        "{path} does not implement {WIT_PACKAGE}/rollback@{WIT_VERSION} as this rewind expects: {reason}; rebuild the plugin with a matching rewind-sdk"
    )]
    Mistyped { path: PathBuf, reason: String },
}

/// How a loaded component got here.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadStats {
    /// True when Cranelift compiled it; false when it came from the cache.
    pub compiled: bool,
    pub duration: Duration,
    /// Set when a cache entry existed but did not match what rewind
    /// recorded when it wrote it, and was compiled again instead of used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_rejected: Option<String>,
}

/// A validated plugin component, ready to instantiate.
pub struct LoadedPlugin {
    pub path: PathBuf,
    /// SHA-256 of the component file: the plugin's version in reports.
    pub sha256: String,
    pub stats: LoadStats,
    pre: ProcedurePre<HostState>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl LoadedPlugin {
    /// The first 12 hex digits of the content hash.
    pub fn short_hash(&self) -> &str {
        &self.sha256[..12]
    }
}

/// A plugin call that did not return normally.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(
        "plugin used more than {limit:?} of CPU time in `{export}` and was stopped (raise [limits] cpu in the runbook if that is expected)"
    )]
    Cpu { export: String, limit: Duration },
    #[error(
        "plugin ran longer than {limit:?} (wall clock, host calls included) in `{export}` and was stopped (raise [limits] call_time, or step_time for a step, in the runbook if that is expected)"
    )]
    Wall { export: String, limit: Duration },
    #[error(
        "plugin tried to grow its memory past the limit of {limit} MiB in `{export}` and was stopped (raise [limits] memory in the runbook if that is expected)"
    )]
    Memory { export: String, limit: usize },
    #[error(
        "plugin {plugin} overflowed its stack in `{export}` (endless or too deep recursion; {detail}) and was stopped"
    )]
    StackOverflow {
        plugin: String,
        export: String,
        detail: String,
    },
    #[error(
        "plugin {plugin} exited with code {code} during `{export}` (a plugin must return an error, not exit)"
    )]
    Exit {
        plugin: String,
        export: String,
        code: i32,
    },
    #[error("plugin trapped in `{export}`: {message}")]
    Trap { export: String, message: String },
    #[error("plugin returned an error from `{export}`: {message}")]
    Plugin { export: String, message: String },
    #[error(
        "`{export}` was cancelled by a second SIGINT/SIGTERM and stopped (its commands were killed)"
    )]
    Cancelled { export: String },
}

/// Raised from the epoch callback when the CPU budget is spent.
#[derive(Debug, thiserror::Error)]
#[error("cpu budget exhausted")]
struct CpuExhausted;

/// Bumped by [`cancel_calls`]: every call in flight watches it and ends
/// when it changes. A generation rather than a flag, so a call started
/// after a cancel runs normally (the CLI exits right after cancelling; a
/// long-lived embedder need not reset anything).
static CANCEL: LazyLock<tokio::sync::watch::Sender<u64>> =
    LazyLock::new(|| tokio::sync::watch::channel(0).0);

/// Export calls in flight in this process, for [`cancel_calls`]'s count.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Counted in `IN_FLIGHT` while alive.
struct InFlight;

impl InFlight {
    fn new() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// End every export call in flight in this process, at once, with
/// [`CallError::Cancelled`] (for a second SIGINT/SIGTERM). Each call's
/// future is dropped where it waits: a WASI sleep stops, an HTTP request is
/// abandoned, and the process group of each `process.run` command the call
/// started is killed (no child is left orphaned). Calls that start later
/// are not affected. Returns how many calls were in flight.
pub fn cancel_calls() -> usize {
    let n = IN_FLIGHT.load(Ordering::SeqCst);
    CANCEL.send_modify(|g| *g = g.wrapping_add(1));
    n
}

pub struct Runtime {
    /// Polls the calls (see `Runtime::new` for why this flavour). Only
    /// `None` while dropped.
    tokio: Option<tokio::runtime::Runtime>,
    /// The imports' HTTP client, one per tokio runtime (its pooled
    /// connections are registered with that runtime's reactor).
    http: reqwest::Client,
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    limits: Limits,
    engine_hash: String,
    /// The environment of the load-time type check, made when first needed.
    probe_env: std::sync::OnceLock<Arc<PluginEnv>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cache_dir", &self.cache_dir)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Without waiting for blocking imports a call stopped waiting for
        // at its deadline (they end on their own bounds): dropping the
        // runtime (rewind exiting) should not wait out a snapshot.
        if let Some(rt) = self.tokio.take() {
            rt.shutdown_background();
        }
    }
}

impl Runtime {
    /// Build the engine and linker. `cache_dir` holds compiled components;
    /// `None` compiles every time.
    pub fn new(limits: Limits, cache_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        // Calls run one at a time (plus a reload being validated), so a
        // small pool is plenty; it keeps the reserved address space small.
        pool.total_component_instances(32)
            .total_core_instances(256)
            .total_memories(64)
            .total_tables(256)
            // Each call (and each load's type check) runs on a fiber whose
            // stack comes from the pool: a few at once at most. The default
            // 1,000 cost ~45% of a short command's CPU to map, protect and
            // unmap.
            .total_stacks(16)
            .max_memory_size(limits.memory.max(1 << 20));
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .wasm_component_model(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;
        // Multi-thread, 2 workers: a typed call blocks its caller's thread
        // in `block_on`, which polls the call (the guest's fiber) on that
        // thread; the workers drive the timers, sockets and child-process
        // reaping the imports wait on, and run their spawned tasks, so a
        // call's I/O progresses even while its thread is busy in the guest,
        // and callers on several threads (a run and a reload check) do not
        // take turns at one driver. Imports that can only block (files,
        // SQLite, /proc) go to the blocking pool.
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("rewind-io")
            .enable_all()
            .build()?;
        // Rollbacks talk to services on this machine or its network: a
        // proxy from the environment would only be in the way. Redirects
        // are not followed, so a grant's URL prefix is the only place a
        // request can go. (As `run::prepare`'s client.)
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;
        let mut linker = Linker::new(&engine);
        crate::imports::add_to_linker(&mut linker)?;

        let mut h = ShaHasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
        let engine_hash = hex::encode(h.0.finalize());

        // The ticker stops when the engine is dropped.
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("rewind-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        Ok(Self {
            tokio: Some(tokio),
            http,
            engine,
            linker,
            cache_dir,
            limits,
            engine_hash,
            probe_env: std::sync::OnceLock::new(),
        })
    }

    fn tokio(&self) -> &tokio::runtime::Runtime {
        self.tokio
            .as_ref()
            .expect("the tokio runtime lives as long as the Runtime")
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Read, validate, compile (or fetch from the cache) and link a plugin.
    pub fn load(&self, path: &Path) -> Result<LoadedPlugin, LoadError> {
        let start = Instant::now();
        let bytes = read_component(path, self.limits.component_bytes)?;
        self.load_bytes(path, &bytes, start)
    }

    fn load_bytes(
        &self,
        path: &Path,
        bytes: &[u8],
        start: Instant,
    ) -> Result<LoadedPlugin, LoadError> {
        match bytes.get(..8) {
            Some([0, b'a', b's', b'm', 0x0d, 0, 1, 0]) => {}
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {
                return Err(LoadError::CoreModule { path: path.into() });
            }
            Some([0, b'a', b's', b'm', ..]) => {
                return Err(LoadError::Invalid {
                    path: path.into(),
                    reason: format!(
                        "unknown WebAssembly binary version {}",
                        hex::encode(&bytes[4..8])
                    ),
                });
            }
            _ => {
                let head = if bytes.is_empty() {
                    "nothing: the file is empty".to_string()
                } else {
                    format!("bytes {}", hex::encode(&bytes[..bytes.len().min(8)]))
                };
                return Err(LoadError::NotWasm {
                    path: path.into(),
                    head,
                });
            }
        }
        let sha256 = hex::encode(Sha256::digest(bytes));
        let (component, compiled, cache_rejected) = self.compile_cached(path, bytes, &sha256)?;
        self.check_world(path, &component)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link {
                path: path.into(),
                reason: format!("{e:#}"),
            })?;
        let pre = ProcedurePre::new(pre).map_err(|e| LoadError::Link {
            path: path.into(),
            reason: format!("{e:#}"),
        })?;
        self.check_types(path, &pre)?;
        Ok(LoadedPlugin {
            path: path.to_path_buf(),
            sha256,
            stats: LoadStats {
                compiled,
                duration: start.elapsed(),
                cache_rejected,
            },
            pre,
        })
    }

    /// The compiled component, whether Cranelift compiled it now, and why a
    /// cache entry was not used when one was there but did not match.
    ///
    /// A cache entry is native code that runs with the plugin's grants, so
    /// its file name is not trusted: next to each `.cwasm` rewind records
    /// the SHA-256 of the bytes it wrote and of the component they were
    /// compiled from, and uses an entry only when the bytes read now hash
    /// to that record. The bytes are read into memory once, checked, and
    /// deserialized from memory, so nothing can change between the check
    /// and the use. (The cache directory is also out of every grant's
    /// reach; see `Runbook::protected`.)
    fn compile_cached(
        &self,
        path: &Path,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<(Component, bool, Option<String>), LoadError> {
        let invalid = |e: wasmtime::Error| LoadError::Invalid {
            path: path.into(),
            reason: format!("{e:#}"),
        };
        let Some(dir) = &self.cache_dir else {
            return Ok((
                Component::from_binary(&self.engine, bytes).map_err(invalid)?,
                true,
                None,
            ));
        };
        let key = format!("{}-{}", &sha256[..32], &self.engine_hash[..16]);
        let cached = dir.join(format!("{key}.cwasm"));
        let record = dir.join(format!("{key}.sha256"));
        let mut rejected = None;
        if let Ok(code) = std::fs::read(&cached) {
            let expected = std::fs::read_to_string(&record).unwrap_or_default();
            if expected.trim() == cache_record(sha256, &code) {
                // SAFETY: these bytes hash to what rewind recorded when it
                // wrote them from `Component::serialize` of an engine with
                // the same compatibility hash (in the name); wasmtime still
                // checks the header. They are used from memory, as checked.
                #[allow(unsafe_code)]
                match unsafe { Component::deserialize(&self.engine, &code) } {
                    Ok(c) => return Ok((c, false, None)),
                    Err(e) => {
                        tracing::warn!("ignoring unusable cache entry {}: {e:#}", cached.display())
                    }
                }
            } else {
                let note = format!(
                    "cache entry {} for {} did not match what rewind recorded for it; recompiled",
                    cached.display(),
                    path.display()
                );
                tracing::warn!("{note}");
                rejected = Some(note);
            }
        }
        let component = Component::from_binary(&self.engine, bytes).map_err(invalid)?;
        // A cache that cannot be written costs a recompile next time, no more.
        if let Err(e) = write_cache(dir, &cached, &record, sha256, &component) {
            tracing::debug!("cannot write compiled cache {}: {e:#}", cached.display());
        }
        Ok((component, true, rejected))
    }

    /// Accept only components of our world, at a compatible version.
    fn check_world(&self, path: &Path, component: &Component) -> Result<(), LoadError> {
        let ty = component.component_type();
        let prefix = format!("{WIT_PACKAGE}/");
        let mut names: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        names.extend(exports.iter().cloned());
        for name in &names {
            if let Some(rest) = name.strip_prefix(&prefix)
                && let Some((_, version)) = rest.split_once('@')
                && !compatible(version, WIT_VERSION)
            {
                return Err(LoadError::Version {
                    path: path.into(),
                    found: format!("{WIT_PACKAGE}@{version}"),
                });
            }
        }
        if !exports
            .iter()
            .any(|n| n.starts_with(&format!("{prefix}rollback@")))
        {
            let list = exports.join(", ");
            return Err(LoadError::NotPlugin {
                path: path.into(),
                exports: list,
            });
        }
        Ok(())
    }

    /// Check the type of every export of the world now, not at the first
    /// call: the bindings look each function up with its expected type when
    /// an instance is made, so one instance is made here, with no grants
    /// and in check mode (a component's start code can do nothing), under
    /// the same CPU and memory limits as a call.
    fn check_types(&self, path: &Path, pre: &ProcedurePre<HostState>) -> Result<(), LoadError> {
        let env = self.probe_env.get_or_init(|| Arc::new(probe_env()));
        let mut store = self.store(env, self.limits.call_time);
        let mistyped = |reason: String| LoadError::Mistyped {
            path: path.into(),
            reason,
        };
        // Instantiating can fail for reasons of this machine (memory, file
        // limits), not only of the component: not reported as a mismatch.
        let instance = self
            .tokio()
            .block_on(pre.instance_pre().instantiate_async(&mut store))
            .map_err(|e| LoadError::Link {
                path: path.into(),
                reason: format!("it cannot be instantiated: {}", chain_without_backtrace(&e)),
            })?;
        // Each export is looked up with the type the bindings call it with,
        // so a mismatch names the export.
        let rollback = pre
            .instance_pre()
            .component()
            .component_type()
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .find(|n| n.starts_with(&format!("{WIT_PACKAGE}/rollback@")))
            .ok_or_else(|| mistyped("it has no rollback interface".into()))?;
        let iface = instance
            .get_export_index(&mut store, None, &rollback)
            .ok_or_else(|| mistyped(format!("{rollback} is not an instance")))?;
        macro_rules! typed {
            ($name:literal, $params:ty, $results:ty) => {{
                let idx = instance
                    .get_export_index(&mut store, Some(&iface), $name)
                    .ok_or_else(|| mistyped(format!("it does not export `{}`", $name)))?;
                instance
                    .get_typed_func::<$params, $results>(&mut store, &idx)
                    .map_err(|e| {
                        mistyped(format!(
                            "`{}` has the wrong type ({})",
                            $name,
                            chain_without_backtrace(&e)
                        ))
                    })?;
            }};
        }
        use crate::bindings::types::Context;
        typed!(
            "describe",
            (Context,),
            (Result<rollback::PluginInfo, String>,)
        );
        typed!(
            "assess",
            (Context,),
            (Result<rollback::Assessment, String>,)
        );
        typed!("plan", (Context,), (Result<Vec<rollback::Step>, String>,));
        typed!(
            "run-step",
            (Context, String),
            (Result<rollback::StepOutcome, String>,)
        );
        typed!(
            "verify",
            (Context,),
            (Result<rollback::Verification, String>,)
        );
        // And as the calls will: whatever the bindings check beyond the
        // functions above.
        drop(store);
        let mut store = self.store(env, self.limits.call_time);
        self.tokio()
            .block_on(pre.instantiate_async(&mut store))
            .map(drop)
            .map_err(|e| mistyped(chain_without_backtrace(&e)))
    }

    fn store(&self, env: &Arc<PluginEnv>, wall: Duration) -> Store<HostState> {
        let mut store = Store::new(
            &self.engine,
            HostState::new(env.clone(), self.limits.memory, self.http.clone()),
        );
        store.limiter(|s| &mut s.limits);
        let budget = self.limits.cpu;
        env.set_call_deadline(Instant::now() + wall);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |ctx| {
            if ctx.data().guest_time() > budget {
                Err(CpuExhausted.into())
            } else {
                // Back to tokio every tick: a guest spinning without host
                // calls still lets the call's deadline and cancellation
                // (which race the call's future) be seen.
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }

    /// Call one export in a fresh instance, blocking until it is over (see
    /// [`Runtime::call_async`]).
    pub fn call<T: Bounded>(
        &self,
        plugin: &LoadedPlugin,
        env: &Arc<PluginEnv>,
        export: &str,
        f: impl AsyncFnOnce(&mut Store<HostState>, &Procedure) -> wasmtime::Result<Result<T, String>>,
    ) -> Result<T, CallError> {
        self.tokio()
            .block_on(self.call_async(plugin, env, export, f))
    }

    /// Call one export in a fresh instance. `f` gets the store and the
    /// bindings; the result is the export's own `Result<T, String>`.
    /// Results are bounded (`Bounded`) before they reach the journal and
    /// the terminal.
    ///
    /// The call is raced against its wall-clock deadline (`[limits]
    /// call_time`) and against [`cancel_calls`]; the loser is dropped, so
    /// whatever the call waits on stops with it. Must be polled by this
    /// `Runtime`'s tokio runtime (the imports use its timers and reactor).
    pub async fn call_async<T: Bounded>(
        &self,
        plugin: &LoadedPlugin,
        env: &Arc<PluginEnv>,
        export: &str,
        f: impl AsyncFnOnce(&mut Store<HostState>, &Procedure) -> wasmtime::Result<Result<T, String>>,
    ) -> Result<T, CallError> {
        // Subscribed before the call counts as in flight: a cancel that
        // sees it in `IN_FLIGHT` ends it.
        let mut cancel = CANCEL.subscribe();
        let _in_flight = InFlight::new();
        // A step's own deadline, when the session set one, within the
        // call's.
        let wall = env
            .step_limit()
            .map_or(self.limits.call_time, |l| l.min(self.limits.call_time));
        let mut store = self.store(env, wall);
        let call = async {
            let bindings = plugin.pre.instantiate_async(&mut store).await?;
            f(&mut store, &bindings).await
        };
        let result = tokio::select! {
            r = tokio::time::timeout(wall, call) => match r {
                Ok(r) => r,
                Err(_) => {
                    return Err(CallError::Wall {
                        export: export.into(),
                        limit: wall,
                    });
                }
            },
            _ = cancel.changed() => {
                return Err(CallError::Cancelled {
                    export: export.into(),
                });
            }
        };
        match result {
            Ok(Ok(mut v)) => {
                v.bound(&self.limits);
                Ok(v)
            }
            Ok(Err(mut message)) => {
                bound_text(&mut message, &self.limits);
                Err(CallError::Plugin {
                    export: export.into(),
                    message,
                })
            }
            Err(e) => Err(self.classify(export, e, store.data())),
        }
    }

    /// The SHA-256 of a component file, as `load` names the plugin by it
    /// (a resumed run checks the plugin it runs is the one it started with).
    pub fn component_sha256(&self, path: &Path) -> std::io::Result<String> {
        Ok(hex::encode(Sha256::digest(std::fs::read(path)?)))
    }

    /// The plugin's description of itself (`describe`).
    pub fn describe(
        &self,
        plugin: &LoadedPlugin,
        env: &Arc<PluginEnv>,
        ctx: &Context,
    ) -> Result<PluginInfo, CallError> {
        self.call(plugin, env, "describe", async |s, b| {
            b.rewind_plugin_rollback().call_describe(s, ctx).await
        })
    }

    /// The plugin's verdict on the system as it is now (`assess`).
    pub fn assess(
        &self,
        plugin: &LoadedPlugin,
        env: &Arc<PluginEnv>,
        ctx: &Context,
    ) -> Result<Assessment, CallError> {
        self.call(plugin, env, "assess", async |s, b| {
            b.rewind_plugin_rollback().call_assess(s, ctx).await
        })
    }

    /// The steps of `ctx.level` (`plan`).
    pub fn plan(
        &self,
        plugin: &LoadedPlugin,
        env: &Arc<PluginEnv>,
        ctx: &Context,
    ) -> Result<Vec<Step>, CallError> {
        self.call(plugin, env, "plan", async |s, b| {
            b.rewind_plugin_rollback().call_plan(s, ctx).await
        })
    }

    /// Carry out one step (`run-step`).
    pub fn run_step(
        &self,
        plugin: &LoadedPlugin,
        env: &Arc<PluginEnv>,
        ctx: &Context,
        step: &str,
    ) -> Result<StepOutcome, CallError> {
        self.call(plugin, env, "run-step", async |s, b| {
            b.rewind_plugin_rollback().call_run_step(s, ctx, step).await
        })
    }

    /// The post-rollback checklist (`verify`).
    pub fn verify(
        &self,
        plugin: &LoadedPlugin,
        env: &Arc<PluginEnv>,
        ctx: &Context,
    ) -> Result<Verification, CallError> {
        self.call(plugin, env, "verify", async |s, b| {
            b.rewind_plugin_rollback().call_verify(s, ctx).await
        })
    }

    fn classify(&self, export: &str, e: wasmtime::Error, state: &HostState) -> CallError {
        let export = export.to_string();
        if e.chain().any(|c| c.is::<CpuExhausted>()) {
            return CallError::Cpu {
                export,
                limit: self.limits.cpu,
            };
        }
        let text = format!("{e:#}");
        if text.contains("forcing trap when growing memory") {
            return CallError::Memory {
                export,
                limit: self.limits.memory >> 20,
            };
        }
        let plugin = state.env.name.clone();
        if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return CallError::Exit {
                plugin,
                export,
                code: exit.0,
            };
        }
        let trap = e.downcast_ref::<wasmtime::Trap>();
        let frames = e
            .downcast_ref::<wasmtime::WasmBacktrace>()
            .map(|b| b.frames());
        if let Some(t) = trap
            && let Some(detail) = stack_overflow(*t, frames)
        {
            return CallError::StackOverflow {
                plugin,
                export,
                detail,
            };
        }
        let stderr = state.stderr();
        let message = match trap {
            Some(trap) if !stderr.is_empty() => {
                format!("{trap}; the plugin said: {}", last_lines(&stderr, 4))
            }
            Some(trap) => trap.to_string(),
            None => chain_without_backtrace(&e),
        };
        CallError::Trap { export, message }
    }
}

/// Wasmtime keeps the innermost 20 frames of a trap's backtrace; when at
/// least this many are all one function, the plugin was recursing.
const RECURSION_FRAMES: usize = 16;

/// Whether a trap is a stack overflow, with what shows it. Wasmtime reports
/// overflowing the native stack as such; Rust and C plugins keep their
/// stack in linear memory, below their data, and overflowing it shows as an
/// out-of-bounds access at the bottom of a recursion.
fn stack_overflow(trap: wasmtime::Trap, frames: Option<&[wasmtime::FrameInfo]>) -> Option<String> {
    let frames = frames.unwrap_or_default();
    let func = |f: &wasmtime::FrameInfo| {
        f.func_name()
            .map(demangle)
            .unwrap_or_else(|| format!("function {}", f.func_index()))
    };
    let top = frames.first().map(func);
    let repeated = frames.iter().take_while(|f| Some(func(f)) == top).count();
    match (trap, top) {
        (wasmtime::Trap::StackOverflow, Some(t)) => {
            Some(format!("the wasm call stack ran out in {t}"))
        }
        (wasmtime::Trap::StackOverflow, None) => Some("the wasm call stack ran out".into()),
        (wasmtime::Trap::MemoryOutOfBounds, Some(t))
            if repeated >= RECURSION_FRAMES && repeated == frames.len() =>
        {
            Some(format!(
                "the innermost {repeated} calls were all {t} when it ran past the end of its stack"
            ))
        }
        _ => None,
    }
}

/// `_ZN5crate6module4func17h0123456789abcdefE` -> `crate::module::func`;
/// other names as they are.
fn demangle(name: &str) -> String {
    let Some(mut rest) = name.strip_prefix("_ZN") else {
        return name.to_string();
    };
    let mut parts = Vec::new();
    loop {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let Ok(n) = rest[..digits].parse::<usize>() else {
            break;
        };
        let Some(part) = rest.get(digits..digits + n) else {
            return name.to_string();
        };
        // The hash Rust appends: `h` and 16 hex digits.
        if !(n == 17 && part.starts_with('h') && part[1..].chars().all(|c| c.is_ascii_hexdigit())) {
            parts.push(part);
        }
        rest = &rest[digits + n..];
    }
    if parts.is_empty() || rest != "E" {
        return name.to_string();
    }
    parts.join("::")
}

/// An error's chain of causes on one line, without wasmtime's backtrace (a
/// plugin's internals are of no use to an operator).
fn chain_without_backtrace(e: &wasmtime::Error) -> String {
    // The backtrace is attached as a context whose text is the backtrace.
    e.chain()
        .map(|c| c.to_string())
        .filter(|c| !c.contains("wasm backtrace:"))
        .collect::<Vec<_>>()
        .join(": ")
}

/// Read a component file: a regular file (a FIFO would block and a device
/// like /dev/zero never end), at most `cap` bytes, checked on the open file
/// before anything is read.
fn read_component(path: &Path, cap: usize) -> Result<Vec<u8>, LoadError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let read_err = |source| LoadError::Read {
        path: path.into(),
        source,
    };
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
    // writer; the flag is harmless for regular files.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(read_err)?;
    let md = file.metadata().map_err(read_err)?;
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        Some("a directory")
    } else if ft.is_fifo() {
        Some("a FIFO")
    } else if ft.is_char_device() {
        Some("a character device")
    } else if ft.is_block_device() {
        Some("a block device")
    } else if ft.is_socket() {
        Some("a socket")
    } else if !ft.is_file() {
        Some("not a file")
    } else {
        None
    };
    if let Some(kind) = kind {
        return Err(LoadError::NotAFile {
            path: path.into(),
            kind,
        });
    }
    let too_large = |size: u64| LoadError::TooLarge {
        path: path.into(),
        size: size.to_string(),
        limit: show_bytes(cap),
    };
    if md.len() > cap as u64 {
        return Err(too_large(md.len()));
    }
    let mut bytes = Vec::with_capacity(md.len() as usize);
    file.take(cap as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() > cap {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// The environment of the instance made at load to check export types:
/// nothing granted, check mode, no journal, a state directory that does not
/// exist (nothing is created in check mode).
fn probe_env() -> PluginEnv {
    let origin = crate::sandbox::GrantOrigin {
        plugin: "load-check".into(),
        runbook: PathBuf::new(),
        line: 0,
    };
    let base = std::env::temp_dir();
    let sandbox = crate::sandbox::Sandbox::new(Default::default(), origin, &base)
        .expect("empty grants are valid");
    PluginEnv::new(
        "load-check".into(),
        sandbox,
        crate::bindings::types::Mode::Check,
        None,
        crate::state::StateDir::new(base.join("rewind-load-check-never-created")),
        reqwest::blocking::Client::new(),
    )
}

/// A result the host keeps: its texts and lists are cut to `[limits]`
/// before it is journaled or shown, with a note that says so.
pub trait Bounded {
    fn bound(&mut self, limits: &Limits);
}

/// Cut a text to `[limits] message_bytes`, saying so in the text.
pub fn bound_text(s: &mut String, limits: &Limits) {
    let max = limits.message_bytes;
    if s.len() > max {
        let len = s.len();
        crate::imports::log::truncate_at(s, max);
        s.push_str(&format!(
            " [cut: {len} bytes, over the [limits] message_bytes of {}]",
            show_bytes(max)
        ));
    }
}

fn bound_findings(list: &mut Vec<Finding>, limits: &Limits) {
    if list.len() > limits.findings {
        let n = list.len();
        list.truncate(limits.findings);
        list.push(Finding {
            check: "findings".into(),
            observed: format!("{n} findings; the rest were dropped"),
            threshold: format!(
                "[limits] findings = {} (raise it in the runbook if that is expected)",
                limits.findings
            ),
            breached: false,
        });
    }
    for f in list {
        bound_text(&mut f.check, limits);
        bound_text(&mut f.observed, limits);
        bound_text(&mut f.threshold, limits);
    }
}

impl Bounded for rollback::Assessment {
    fn bound(&mut self, limits: &Limits) {
        bound_text(&mut self.scenario, limits);
        bound_text(&mut self.summary, limits);
        bound_findings(&mut self.findings, limits);
    }
}

impl Bounded for rollback::Verification {
    fn bound(&mut self, limits: &Limits) {
        bound_text(&mut self.summary, limits);
        bound_findings(&mut self.findings, limits);
    }
}

impl Bounded for rollback::StepOutcome {
    fn bound(&mut self, limits: &Limits) {
        bound_text(&mut self.message, limits);
        bound_findings(&mut self.findings, limits);
    }
}

impl Bounded for Vec<rollback::Step> {
    fn bound(&mut self, limits: &Limits) {
        for s in self {
            bound_text(&mut s.title, limits);
            bound_text(&mut s.detail, limits);
        }
    }
}

impl Bounded for rollback::PluginInfo {
    fn bound(&mut self, limits: &Limits) {
        bound_text(&mut self.name, limits);
        bound_text(&mut self.version, limits);
        bound_text(&mut self.service, limits);
        bound_text(&mut self.description, limits);
        for l in &mut self.levels {
            bound_text(&mut l.name, limits);
            bound_text(&mut l.description, limits);
        }
    }
}

/// Semver compatibility as Cargo has it: same major, or for 0.x the same minor.
fn compatible(found: &str, ours: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.split(['.', '-', '+']);
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (parse(found), parse(ours)) {
        (Some((0, a)), Some((0, b))) => a == b,
        (Some((a, _)), Some((b, _))) => a == b,
        _ => false,
    }
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// What is recorded next to a cache entry: the component's SHA-256 and the
/// compiled bytes' SHA-256.
fn cache_record(component_sha256: &str, code: &[u8]) -> String {
    format!(
        "component {component_sha256} cwasm {}",
        hex::encode(Sha256::digest(code))
    )
}

/// Write the compiled code, then its record (each atomically): a crash in
/// between leaves a record that does not match, which only costs a compile.
fn write_cache(
    dir: &Path,
    target: &Path,
    record: &Path,
    component_sha256: &str,
    component: &Component,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = component.serialize()?;
    let write = |path: &Path, contents: &[u8]| -> anyhow::Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut tmp, contents)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path)?;
        Ok(())
    };
    write(target, &bytes)?;
    write(record, cache_record(component_sha256, &bytes).as_bytes())
}

struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        unreachable!("only used to feed the digest")
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Where compiled components are cached unless told otherwise:
/// `$REWIND_CACHE_DIR`, else `$XDG_CACHE_HOME/rewind`, else `~/.cache/rewind`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("REWIND_CACHE_DIR") {
        return Some(d.into());
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("rewind"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("rewind"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_compatibility() {
        assert!(compatible("0.1.0", "0.1.0"));
        assert!(compatible("0.1.3", "0.1.0"));
        assert!(!compatible("0.2.0", "0.1.0"));
        assert!(compatible("1.4.0", "1.0.0"));
        assert!(!compatible("2.0.0", "1.0.0"));
        assert!(!compatible("x", "0.1.0"));
    }

    /// A runbook of one plugin with `config`, `grants` and a call deadline
    /// of an hour (so only a cancel can end the calls below), loaded.
    fn one_plugin(
        dir: &Path,
        component: &str,
        config: serde_json::Value,
        grants: serde_json::Value,
    ) -> crate::runbook::Runbook {
        let doc = serde_json::json!({
            "name": "cancel",
            "state_dir": "state",
            "limits": {"call_time": "1h", "cpu": "60s"},
            "plugin": [{"name": "p", "component": component, "config": config, "grants": grants}],
        });
        let path = dir.join("rewind.toml");
        std::fs::write(&path, toml::to_string(&doc).unwrap()).unwrap();
        crate::runbook::Runbook::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Wait for `cond`, at most a minute (a failure bound, not a pause).
    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "still waiting for {what}"
            );
            std::thread::yield_now();
        }
    }

    /// Pids of the live (not zombie) processes of a process group.
    fn group_members(pgid: u32) -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                // `pid (comm) state ppid pgrp ...`; comm may hold spaces.
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    return false;
                };
                let Some((_, rest)) = stat.rsplit_once(')') else {
                    return false;
                };
                let f: Vec<&str> = rest.split_whitespace().collect();
                f.len() > 2 && !matches!(f[0], "Z" | "X" | "x") && f[2] == pgid.to_string()
            })
            .collect()
    }

    /// Run `assess` of the runbook's plugin on a thread, `cancel_calls`
    /// once `ready` says the call is where it should be, and return the
    /// call's result.
    fn cancel_assess(
        runbook: &crate::runbook::Runbook,
        mut ready: impl FnMut() -> bool,
    ) -> Result<Assessment, CallError> {
        let rt = Runtime::new(runbook.limits, None).unwrap();
        let spec = &runbook.plugins[0];
        let plugin = rt.load(&spec.component).unwrap();
        let env = Arc::new(
            PluginEnv::new(
                spec.name.clone(),
                spec.sandbox(runbook).unwrap(),
                crate::bindings::types::Mode::Execute,
                None,
                runbook.state(),
                reqwest::blocking::Client::new(),
            )
            .with_limits(runbook.limits),
        );
        let ctx = crate::run::context("cancel", spec, crate::bindings::types::Mode::Execute, 0);
        std::thread::scope(|s| {
            let call = s.spawn(|| rt.assess(&plugin, &env, &ctx));
            wait_for("the call to start", || IN_FLIGHT.load(Ordering::SeqCst) > 0);
            wait_for("the call to get where it is cancelled", &mut ready);
            assert!(cancel_calls() >= 1);
            call.join().unwrap()
        })
    }

    /// `cancel_calls` ends a call blocked in a WASI sleep of an hour, and
    /// one blocked in a `process.run` of a long command, whose whole
    /// process group is then gone. (One test: a cancel ends every call in
    /// the process, so the two must not overlap.)
    #[test]
    fn cancel_calls_ends_sleeps_and_commands() {
        let dir = tempfile::tempdir().unwrap();
        let runbook = one_plugin(
            dir.path(),
            rewind_test_artifacts::HOSTILE,
            serde_json::json!({"assess": "sleep", "n": 3_600_000}),
            serde_json::json!({}),
        );
        // Cancelled at once or in its sleep, the call ends the same way; a
        // call that was not cancelled would take an hour.
        match cancel_assess(&runbook, || true) {
            Err(CallError::Cancelled { export }) => assert_eq!(export, "assess"),
            other => panic!("expected a cancel: {other:?}"),
        }

        let marker = crate::imports::health::tests::unique_marker("cancel");
        let cmd = serde_json::json!({
            "program": "/bin/sh",
            // `sleep` is a grandchild in the child's group: both must go.
            "args": ["-c", "sleep 3600; true", &marker],
            "env": [],
            "timeout_ms": 0,
        });
        let runbook = one_plugin(
            dir.path(),
            rewind_test_artifacts::FIXTURE,
            serde_json::json!({"assess": {"op": {"call": "run", "args": {"cmd": cmd}}}}),
            serde_json::json!({"exec": ["/bin/sh"]}),
        );
        let mut pgid = None;
        let result = cancel_assess(&runbook, || {
            // The shell, and the sleep it started in its group.
            pgid = crate::imports::health::matching_pids(&marker)
                .first()
                .copied();
            pgid.is_some_and(|g| group_members(g).len() >= 2)
        });
        match result {
            Err(CallError::Cancelled { export }) => assert_eq!(export, "assess"),
            other => panic!("expected a cancel: {other:?}"),
        }
        let pgid = pgid.unwrap();
        wait_for("the command's process group to be gone", || {
            group_members(pgid).is_empty()
        });
    }

    #[test]
    fn rejects_files_that_are_not_components() {
        let rt = Runtime::new(Limits::default(), None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, &[u8], &str); 3] = [
            ("empty.wasm", b"", "not a WebAssembly file"),
            ("text.wasm", b"hello world", "not a WebAssembly file"),
            ("core.wasm", b"\0asm\x01\0\0\0", "core WebAssembly module"),
        ];
        for (name, bytes, expect) in cases {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            let err = rt.load(&p).unwrap_err().to_string();
            assert!(err.contains(expect), "{name}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
        let err = rt
            .load(&dir.path().join("missing.wasm"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read component"), "{err}");
    }
}
