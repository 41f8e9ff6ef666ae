//! How fast rewind is, printed as a table: `cargo bench -p rewind --bench speed`.
//!
//! 1. loading a plugin: cold compile vs the compiled cache;
//! 2. instantiate + call of each read-only export (fixture plugin, no host calls);
//! 3. rewind's own overhead in a dry run of examples/demo/rewind.toml against a
//!    real, broken demo service;
//! 4. the same rollback done by a bash script, as hand-written runbooks do it,
//!    vs `rewind run`.
//!
//! Nothing is asserted: the figures are printed next to their targets with
//! PASS or MISS. `bench/README.md` says what each row means.

use std::fmt::Display;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rewind::bindings::types::Mode;
use rewind::run::{self, Outcome, RunOptions, RunReport};
use rewind::runbook::Runbook;
use rewind::runtime::{Limits, Runtime};

/// Cached loads per plugin (the median is reported).
const CACHED_LOADS: usize = 20;
/// Timed calls per export, after `WARMUP_CALLS` untimed ones.
const CALLS: usize = 200;
const WARMUP_CALLS: usize = 10;
/// Dry runs of the demo runbook.
const DRY_RUNS: usize = 10;
/// The bash rollback's fixed wait after the kill. Seed runbooks sleep 5 to
/// 30 s there; 2 s keeps the benchmark short (and flatters bash).
const BASH_SLEEP_SECS: u64 = 2;

/// Targets from the issue.
const CACHED_LOAD_TARGET: Duration = Duration::from_millis(2);
const CALL_TARGET: Duration = Duration::from_micros(200);
const OVERHEAD_TARGET: Duration = Duration::from_millis(50);

/// Where examples/demo/rewind.toml expects the demo service (relative to its
/// own directory).
const RUNBOOK_SERVICE: &str = "../../target/debug/rewind-demo-service";

/// The demo's rollback done by hand, the way bash runbooks do it: point
/// `current` at the previous release, kill the pid in the pid file, sleep a
/// fixed time, start the service in the background, poll /healthz.
const BASH_ROLLBACK: &str = r#"#!/usr/bin/env bash
# The demo rollback done by hand: rollback.sh ROOT PORT SERVICE PREVIOUS SLEEP PYTHON
set -euo pipefail
ROOT=$1 PORT=$2 SERVICE=$3 PREVIOUS=$4 SLEEP=$5 PYTHON=$6
ln -sfn "releases/$PREVIOUS" "$ROOT/current"
kill "$(cat "$ROOT/run/service.pid")"
sleep "$SLEEP"
"$SERVICE" serve --root "$ROOT" --port "$PORT" </dev/null >>"$ROOT/logs/service.log" 2>&1 &
"$PYTHON" - "http://127.0.0.1:$PORT/healthz" <<'PY'
import sys, time, urllib.request
deadline = time.monotonic() + 15
while True:
    try:
        if urllib.request.urlopen(sys.argv[1], timeout=1).status == 200:
            break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("not healthy after 15 s")
    time.sleep(0.2)
PY
"#;

fn main() {
    // The demo runbook reads the site's root and port from the environment.
    // Set them first, while this is the only thread.
    let tmp = tempfile::Builder::new()
        .prefix("rewind-bench-")
        .tempdir()
        .expect("creating a temporary directory");
    let root = tmp.path().join("site");
    let port = free_port();
    #[allow(unsafe_code)]
    // SAFETY: no other thread exists yet, so nothing reads the environment
    // while it is changed.
    unsafe {
        std::env::set_var("REWIND_DEMO_ROOT", &root);
        std::env::set_var("REWIND_DEMO_PORT", port.to_string());
    }
    let cache = tmp.path().join("cache");
    let mut table = Table::default();

    println!(
        "rewind speed benchmark (scratch dir {})",
        tmp.path().display()
    );
    println!();
    for (name, wasm) in [
        ("demo", rewind_test_artifacts::DEMO),
        ("fixture", rewind_test_artifacts::FIXTURE),
    ] {
        bench_load(&mut table, name, Path::new(wasm), &cache);
    }
    bench_calls(&mut table, tmp.path(), &cache);

    let (service, rewrite) = demo_service();
    println!(
        "demo service: {}{}",
        service.display(),
        if rewrite {
            " (target/debug has none: the runbook is pointed at it)"
        } else {
            ""
        }
    );
    // Stops the service by the pid in its pid file when dropped, panics too.
    let site = DemoSite::new(root, port, service);
    let service_override = rewrite.then_some(site.service.as_path());
    bench_dry_runs(
        &mut table,
        &site,
        &load_demo_runbook(service_override),
        &cache,
    );
    bench_bash_vs_rewind(&mut table, &site, service_override, tmp.path(), &cache);
    drop(site);

    table.print();
}

// ---------------------------------------------------------------------------
// 1. Loading

fn bench_load(table: &mut Table, name: &str, wasm: &Path, cache: &Path) {
    let size = std::fs::metadata(wasm)
        .unwrap_or_else(|e| panic!("{}: {e}", wasm.display()))
        .len();
    let rt = runtime(Limits::default(), cache);
    let cold = rt
        .load(wasm)
        .unwrap_or_else(|e| panic!("loading {name}: {e}"));
    if !cold.stats.compiled {
        println!("  warning: the first load of {name} came from the cache");
    }
    drop(rt);

    let rt = runtime(Limits::default(), cache);
    let loads: Vec<Duration> = (0..CACHED_LOADS)
        .map(|_| {
            let p = rt
                .load(wasm)
                .unwrap_or_else(|e| panic!("loading {name}: {e}"));
            if p.stats.compiled {
                println!("  warning: a cached load of {name} compiled it again");
            }
            p.stats.duration
        })
        .collect();
    let loads = Stats::of(loads);
    println!(
        "{name}: {} component; cold compile {}; cached load median {} (min {}, max {}) over {CACHED_LOADS} loads",
        fmt_bytes(size),
        fmt(cold.stats.duration),
        fmt(loads.median),
        fmt(loads.min),
        fmt(loads.max),
    );
    table.info(format!("{name}: .wasm size"), fmt_bytes(size));
    table.info(
        format!("{name}: cold compile (empty cache)"),
        fmt(cold.stats.duration),
    );
    table.check(
        format!("{name}: cached load, median of {CACHED_LOADS}"),
        fmt(loads.median),
        CACHED_LOAD_TARGET,
        loads.median,
    );
}

// ---------------------------------------------------------------------------
// 2. Instantiate + call

fn bench_calls(table: &mut Table, scratch: &Path, cache: &Path) {
    let dir = scratch.join("fixture");
    std::fs::create_dir_all(&dir).unwrap();
    // No ops anywhere: describe, assess, plan and verify make no host calls.
    let text = format!(
        "name = \"bench-fixture\"\nstate_dir = \"state\"\n\n[[plugin]]\nname = \"fx\"\ncomponent = {:?}\n\n[plugin.config]\nlevels = [1]\nsteps = [{{ id = \"a\" }}, {{ id = \"b\" }}]\n",
        rewind_test_artifacts::FIXTURE
    );
    let path = dir.join("rewind.toml");
    std::fs::write(&path, text).unwrap();
    let runbook = Runbook::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let rt = runtime(runbook.limits, cache);
    let run_id = run::new_run_id();
    let prepared = run::prepare(&runbook, &rt, None, Mode::DryRun, &run_id, None)
        .unwrap_or_else(|e| panic!("preparing the fixture: {e}"));
    let p = &prepared[0];
    let ctx0 = run::context(&run_id, p.spec, Mode::DryRun, 0);
    let ctx1 = run::context(&run_id, p.spec, Mode::DryRun, 1);

    let mut rows = Vec::new();
    rows.push((
        "describe",
        time_calls(|| {
            rt.call(&p.plugin, &p.env, "describe", |s, b| {
                b.rewind_plugin_rollback().call_describe(s, &ctx0)
            })
        }),
    ));
    rows.push((
        "assess",
        time_calls(|| {
            rt.call(&p.plugin, &p.env, "assess", |s, b| {
                b.rewind_plugin_rollback().call_assess(s, &ctx0)
            })
        }),
    ));
    rows.push((
        "plan",
        time_calls(|| {
            rt.call(&p.plugin, &p.env, "plan", |s, b| {
                b.rewind_plugin_rollback().call_plan(s, &ctx1)
            })
        }),
    ));
    rows.push((
        "verify",
        time_calls(|| {
            rt.call(&p.plugin, &p.env, "verify", |s, b| {
                b.rewind_plugin_rollback().call_verify(s, &ctx1)
            })
        }),
    ));
    if p.env.host_time() > Duration::ZERO {
        println!(
            "  warning: the fixture made host calls ({})",
            fmt(p.env.host_time())
        );
    }
    for (export, s) in rows {
        println!(
            "fixture {export}: instantiate + call median {}, p95 {} (min {}, max {}) over {CALLS} calls",
            fmt(s.median),
            fmt(s.p95),
            fmt(s.min),
            fmt(s.max)
        );
        let figure = format!("{} (p95 {})", fmt(s.median), fmt(s.p95));
        table.check_with_p95(
            format!("fixture {export}: instantiate+call, median"),
            figure,
            CALL_TARGET,
            s.median,
            s.p95,
        );
    }
}

/// Time `CALLS` calls of `f` after a few untimed ones.
fn time_calls<T, E: Display>(mut f: impl FnMut() -> Result<T, E>) -> Stats {
    for _ in 0..WARMUP_CALLS {
        f().unwrap_or_else(|e| panic!("{e}"));
    }
    let times = (0..CALLS)
        .map(|_| {
            let t = Instant::now();
            let r = f();
            let d = t.elapsed();
            r.unwrap_or_else(|e| panic!("{e}"));
            d
        })
        .collect();
    Stats::of(times)
}

// ---------------------------------------------------------------------------
// 3. Dry runs of the demo runbook

fn bench_dry_runs(table: &mut Table, site: &DemoSite, runbook: &Runbook, cache: &Path) {
    let rt = runtime(runbook.limits, cache);
    let opts = options(Mode::DryRun);
    let mut walls = Vec::new();
    let mut overheads = Vec::new();
    for i in 0..DRY_RUNS {
        let t = Instant::now();
        let report = run::execute(runbook, &rt, &opts).unwrap_or_else(|e| panic!("dry run: {e}"));
        let wall = t.elapsed();
        if report.outcome != Outcome::Simulated {
            println!(
                "  warning: dry run {i} ended {} ({:?})",
                report.outcome.as_str(),
                report.plugins.iter().find_map(|p| p.error.as_deref())
            );
        }
        let host = host_calls_ms(&report);
        let overhead = report.duration_ms as f64 - host;
        println!(
            "  dry run {}: wall {}, report {} ms, in host calls {host:.1} ms, overhead {overhead:.1} ms",
            i + 1,
            fmt(wall),
            report.duration_ms
        );
        walls.push(wall);
        overheads.push(Duration::from_secs_f64(overhead.max(0.0) / 1e3));
    }
    if site.get("/healthz").map(|(s, _)| s) != Some(500) {
        println!("  warning: the dry runs changed the site: it is not broken any more");
    }
    let walls = Stats::of(walls);
    let overheads = Stats::of(overheads);
    println!(
        "demo dry run: overhead median {} (min {}, max {}), wall median {} (min {}, max {}) over {DRY_RUNS} runs",
        fmt(overheads.median),
        fmt(overheads.min),
        fmt(overheads.max),
        fmt(walls.median),
        fmt(walls.min),
        fmt(walls.max),
    );
    table.check(
        format!("demo dry run: host overhead, median of {DRY_RUNS}"),
        format!("{} (max {})", fmt(overheads.median), fmt(overheads.max)),
        OVERHEAD_TARGET,
        overheads.median,
    );
    table.info(
        format!("demo dry run: wall time, median of {DRY_RUNS}"),
        fmt(walls.median),
    );
}

fn host_calls_ms(report: &RunReport) -> f64 {
    report.plugins.iter().map(|p| p.host_calls_ms).sum()
}

fn options(mode: Mode) -> RunOptions {
    RunOptions {
        mode,
        plugin: None,
        level: None,
        approve_manual: false,
        plan_only: false,
        live: false,
    }
}

// ---------------------------------------------------------------------------
// 4. The bash way vs rewind run

fn bench_bash_vs_rewind(
    table: &mut Table,
    site: &DemoSite,
    service_override: Option<&Path>,
    scratch: &Path,
    cache: &Path,
) {
    let Some(python) = python() else {
        println!("bash vs rewind: skipped, python3 is not available for the health check");
        table.info("bash rollback vs rewind run", "skipped: no python3");
        return;
    };
    let script = scratch.join("rollback.sh");
    std::fs::write(&script, BASH_ROLLBACK).unwrap();

    // The site is on the broken 1.1.0 (the dry runs left it so).
    let t = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg(&site.root)
        .arg(site.port.to_string())
        .arg(&site.service)
        .arg("1.0.0")
        .arg(BASH_SLEEP_SECS.to_string())
        .arg(&python)
        .stdin(Stdio::null())
        .output()
        .expect("running bash");
    let bash = t.elapsed();
    if !out.status.success() {
        println!(
            "  warning: the bash rollback failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    site.expect_version("1.0.0", "after the bash rollback");
    println!(
        "bash rollback (ln -sfn, kill, sleep {BASH_SLEEP_SECS}, start, poll /healthz): {}",
        fmt(bash)
    );

    // Break it again, then the real thing, as `rewind run` does it: read the
    // runbook, start the engine, run.
    site.deploy("1.1.0");
    site.expect_version("1.1.0", "after the re-deploy");
    let t = Instant::now();
    let runbook = load_demo_runbook(service_override);
    let rt = runtime(runbook.limits, cache);
    let report = run::execute(&runbook, &rt, &options(Mode::Execute))
        .unwrap_or_else(|e| panic!("rewind run: {e}"));
    let rewind = t.elapsed();
    drop(rt);
    if report.outcome != Outcome::RolledBack {
        println!(
            "  warning: rewind run ended {} ({:?})",
            report.outcome.as_str(),
            report.plugins.iter().find_map(|p| p.error.as_deref())
        );
    }
    site.expect_version("1.0.0", "after rewind run");
    let host = host_calls_ms(&report);
    println!(
        "rewind run: {} (report {} ms: {host:.1} ms in host calls: stop, start, wait for /healthz; overhead {:.1} ms)",
        fmt(rewind),
        report.duration_ms,
        report.duration_ms as f64 - host
    );
    let ratio = bash.as_secs_f64() / rewind.as_secs_f64();
    println!("bash / rewind: {ratio:.1}x");

    table.info(
        format!("rollback, bash way (fixed sleep {BASH_SLEEP_SECS} s; seeds sleep 5-30 s)"),
        fmt(bash),
    );
    table.info("rollback, rewind run (execute)", fmt(rewind));
    table.info("rollback, bash / rewind", format!("{ratio:.1}x"));
}

/// The real python3 (not a pyenv shim, whose start-up would be charged to
/// bash).
fn python() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let exe = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !exe.is_empty()).then(|| exe.into())
}

// ---------------------------------------------------------------------------
// The demo site

/// The `rewind-demo-service` binary: the one examples/demo/rewind.toml names
/// (target/debug) when it is there; otherwise the one cargo built for this
/// bench, and the runbook is pointed at it (`true`).
fn demo_service() -> (PathBuf, bool) {
    let debug = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/rewind-demo-service");
    if debug.is_file() {
        (debug.canonicalize().unwrap_or(debug), false)
    } else {
        (
            PathBuf::from(env!("CARGO_BIN_EXE_rewind-demo-service")),
            true,
        )
    }
}

fn demo_runbook_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo/rewind.toml")
}

/// examples/demo/rewind.toml, with the service path replaced when the
/// runbook's own binary is missing.
fn load_demo_runbook(service: Option<&Path>) -> Runbook {
    let path = demo_runbook_path();
    let mut text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if let Some(service) = service {
        text = text.replace(RUNBOOK_SERVICE, &service.display().to_string());
    }
    Runbook::parse(&path, &text).unwrap_or_else(|e| panic!("{e}"))
}

/// A demo service in a temporary root: releases 1.0.0 (healthy) and 1.1.0
/// (broken), 1.1.0 deployed. Dropping it stops the service by the pid in
/// ROOT/run/service.pid, and nothing else.
struct DemoSite {
    root: PathBuf,
    port: u16,
    service: PathBuf,
}

impl DemoSite {
    fn new(root: PathBuf, port: u16, service: PathBuf) -> Self {
        let site = Self {
            root,
            port,
            service,
        };
        site.run(&[
            "init",
            "--release",
            "1.0.0:healthy",
            "--release",
            "1.1.0:broken",
            "--current",
            "1.0.0",
        ]);
        site.deploy("1.1.0");
        site.expect_version("1.1.0", "after the first deploy");
        if site.get("/healthz").map(|(s, _)| s) != Some(500) {
            println!("  warning: the demo service on 1.1.0 is not answering 500 on /healthz");
        }
        println!(
            "demo site: {} on 127.0.0.1:{}, 1.1.0 (broken) deployed",
            site.root.display(),
            site.port
        );
        site
    }

    fn run(&self, args: &[&str]) {
        let out = Command::new(&self.service)
            .arg(args[0])
            .arg("--root")
            .arg(&self.root)
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", self.service.display()));
        assert!(
            out.status.success(),
            "rewind-demo-service {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn deploy(&self, version: &str) {
        self.run(&[
            "deploy",
            "--port",
            &self.port.to_string(),
            "--version",
            version,
        ]);
    }

    /// GET a path: status and body.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let status = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.trim().to_string())?;
        Some((status, body))
    }

    fn expect_version(&self, version: &str, when: &str) {
        let served = self.get("/version").map(|(_, b)| b);
        if served.as_deref() != Some(version) {
            println!("  warning: {when}, the site serves {served:?}, not {version}");
        }
    }
}

impl Drop for DemoSite {
    fn drop(&mut self) {
        let Ok(text) = std::fs::read_to_string(self.root.join("run/service.pid")) else {
            return;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            return;
        };
        // Only our own `serve`: the pid file could be stale.
        let ours = format!("serve --root {}", self.root.display());
        if pid <= 1 || !cmdline(pid).is_some_and(|c| c.contains(&ours)) {
            return;
        }
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while cmdline(pid).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if cmdline(pid).is_some() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// A live process's command line (a zombie has none).
fn cmdline(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    (!raw.is_empty()).then(|| String::from_utf8_lossy(&raw).replace('\0', " "))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a loopback port")
        .port()
}

fn runtime(limits: Limits, cache: &Path) -> Runtime {
    Runtime::new(limits, Some(cache.to_path_buf())).expect("starting the WebAssembly engine")
}

// ---------------------------------------------------------------------------
// Figures and the table

struct Stats {
    min: Duration,
    median: Duration,
    p95: Duration,
    max: Duration,
}

impl Stats {
    fn of(mut v: Vec<Duration>) -> Self {
        assert!(!v.is_empty());
        v.sort();
        let n = v.len();
        let p95 = (n * 95).div_ceil(100).clamp(1, n) - 1;
        Self {
            min: v[0],
            median: v[n / 2],
            p95: v[p95],
            max: v[n - 1],
        }
    }
}

fn fmt(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{} us", d.as_micros())
    } else if d < Duration::from_millis(10) {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    } else if d < Duration::from_secs(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

fn fmt_bytes(n: u64) -> String {
    if n < 1 << 20 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.2} MiB", n as f64 / (1 << 20) as f64)
    }
}

#[derive(Default)]
struct Table {
    rows: Vec<[String; 4]>,
}

impl Table {
    fn info(&mut self, what: impl Into<String>, figure: impl Into<String>) {
        self.rows
            .push([what.into(), figure.into(), "-".into(), String::new()]);
    }

    fn check(&mut self, what: String, figure: String, target: Duration, measured: Duration) {
        let result = if measured < target { "PASS" } else { "MISS" };
        self.rows
            .push([what, figure, format!("< {}", fmt(target)), result.into()]);
    }

    fn check_with_p95(
        &mut self,
        what: String,
        figure: String,
        target: Duration,
        median: Duration,
        p95: Duration,
    ) {
        self.check(what, figure, target, median);
        if p95 >= target {
            self.rows.last_mut().unwrap()[3].push_str(" (p95 over)");
        }
    }

    fn print(&self) {
        let header = ["measurement", "figure", "target", "result"].map(String::from);
        let mut widths = [0; 4];
        for row in std::iter::once(&header).chain(&self.rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |row: &[String; 4]| {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            println!("{}", cells.join("  ").trim_end());
        };
        println!();
        line(&header);
        let rule = widths.map(|w| "-".repeat(w));
        line(&rule);
        for row in &self.rows {
            line(row);
        }
    }
}
