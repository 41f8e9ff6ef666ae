//! How fast rewind is, printed as a table: `cargo bench -p rewind --bench speed`.
//!
//! 1. loading a plugin: cold compile vs the compiled cache;
//! 2. instantiate + call of each read-only export (fixture plugin, no host calls);
//! 3. rewind's own overhead in a dry run of examples/demo/rewind.toml against a
//!    real, broken demo service;
//! 4. the same rollback done by a bash script, as hand-written runbooks do it,
//!    vs `rewind run`;
//! 5. hot reload: a component file replaced (atomic rename) to the new version
//!    coming out of `Reloader::poll`, split into the debounce and the compile;
//! 6. `rewind watch` (the real binary): from breaking the demo service to the
//!    rollback starting, against `failure_threshold` x `period`;
//! 7. `rewind drill` of the demo's "bad-deploy" vs the same detect + rollback
//!    done by a bash monitor with fixed sleeps, as the seed runbooks do it.
//!
//! Nothing is asserted: the figures are printed next to their targets with
//! PASS or MISS. `bench/README.md` says what each row means.

use std::collections::HashMap;
use std::fmt::Display;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rewind::bindings::types::Mode;
use rewind::drill::{self, DrillOptions, DrillReport};
use rewind::reload::{self, Reload, Reloader};
use rewind::run::{self, Outcome, RunOptions, RunReport};
use rewind::runbook::Runbook;
use rewind::runtime::{Limits, Runtime};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

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
/// Hot reloads timed in each direction (fixture -> v2, v2 -> fixture).
const RELOADS: usize = 10;
/// `rewind watch`: the probe period (REWIND_DEMO_WATCH_PERIOD).
const WATCH_PERIOD: &str = "200ms";
/// Breaks of the demo site under watch: WATCH_ALIGNED right after a healthy
/// round, then one at each k/WATCH_SPREAD of the period after it.
const WATCH_ALIGNED: usize = 3;
const WATCH_SPREAD: u32 = 5;
/// A bound on the watch's rounds, should the benchmark die without
/// stopping it (2 minutes at 200 ms).
const WATCH_MAX_ROUNDS: u64 = 600;
/// Drills of the demo's "bad-deploy" scenario (the median is reported).
const DRILL_RUNS: usize = 3;
const DRILL_SCENARIO: &str = "bad-deploy";
/// The bash monitor's fixed waits, scaled down by 10 and 15 from the seed
/// runbooks' (AIDIS monitor-health.sh: a check every 30 s, rollback after 3
/// failed checks in a row; `sleep 30` after the restart before checking).
const MONITOR_INTERVAL_SECS: u64 = 3;
const MONITOR_FAILURES: u32 = 3;
const MONITOR_SETTLE_SECS: u64 = 2;

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

/// Detect + rollback the way the seed runbooks do it: a monitor that checks
/// /healthz every INTERVAL seconds (a fixed `sleep`) and, after FAILURES
/// failed checks in a row, rolls back by hand and sleeps a fixed SETTLE
/// seconds after the restart before one last check. It prints `detected`
/// when it decides to roll back.
const BASH_MONITOR: &str = r#"#!/usr/bin/env bash
# monitor.sh ROOT PORT SERVICE PREVIOUS INTERVAL FAILURES SETTLE PYTHON
set -uo pipefail
ROOT=$1 PORT=$2 SERVICE=$3 PREVIOUS=$4 INTERVAL=$5 FAILURES=$6 SETTLE=$7 PYTHON=$8
healthy() {
    "$PYTHON" -c '
import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=5).status == 200 else 1)
except Exception:
    sys.exit(1)
' "http://127.0.0.1:$PORT/healthz"
}
failed=0
while :; do
    if healthy; then failed=0; else failed=$((failed + 1)); fi
    [ "$failed" -ge "$FAILURES" ] && break
    sleep "$INTERVAL"
done
echo detected
ln -sfn "releases/$PREVIOUS" "$ROOT/current"
kill "$(cat "$ROOT/run/service.pid")"
"$SERVICE" serve --root "$ROOT" --port "$PORT" </dev/null >>"$ROOT/logs/service.log" 2>&1 &
sleep "$SETTLE"
healthy || { echo "not healthy $SETTLE s after the restart" >&2; exit 1; }
echo recovered
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
    bench_reload(&mut table, tmp.path(), &cache);
    bench_watch(&mut table, &site, service_override, tmp.path(), &cache);
    bench_drill_vs_bash(&mut table, &site, service_override, tmp.path(), &cache);
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
            rt.call(&p.plugin, &p.env, "describe", async |s, b| {
                b.rewind_plugin_rollback().call_describe(s, &ctx0).await
            })
        }),
    ));
    rows.push((
        "assess",
        time_calls(|| {
            rt.call(&p.plugin, &p.env, "assess", async |s, b| {
                b.rewind_plugin_rollback().call_assess(s, &ctx0).await
            })
        }),
    ));
    rows.push((
        "plan",
        time_calls(|| {
            rt.call(&p.plugin, &p.env, "plan", async |s, b| {
                b.rewind_plugin_rollback().call_plan(s, &ctx1).await
            })
        }),
    ));
    rows.push((
        "verify",
        time_calls(|| {
            rt.call(&p.plugin, &p.env, "verify", async |s, b| {
                b.rewind_plugin_rollback().call_verify(s, &ctx1).await
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

// ---------------------------------------------------------------------------
// 5. Hot reload

/// One reload, timed from the rename that put the new file in place.
struct ReloadTiming {
    /// To `Reload::Ready` coming out of `Reloader::poll` (polled every 1 ms).
    total: Duration,
    /// To `changed_at`, the first event of the burst the reload came from;
    /// `None` when that burst had begun before the rename (set off by
    /// something else that touched the file: `notify` reports opens too).
    seen: Option<Duration>,
    /// Read, validate, compile or fetch from the cache, link (`compile`).
    compile: Duration,
    compiled: bool,
}

impl ReloadTiming {
    /// All but the compile: the file event, the quiet period
    /// (`reload::DEBOUNCE`), the debounce thread's 50 ms tick, the 1 ms poll.
    fn debounce(&self) -> Duration {
        self.total.saturating_sub(self.compile)
    }
}

fn bench_reload(table: &mut Table, scratch: &Path, cache: &Path) {
    let read = |p: &str| std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}"));
    let v1 = read(rewind_test_artifacts::FIXTURE);
    let v2 = read(rewind_test_artifacts::FIXTURE_V2);
    let (sha1, sha2) = (sha256_hex(&v1), sha256_hex(&v2));
    if sha1 == sha2 {
        println!("hot reload: skipped, FIXTURE_V2 has the same bytes as FIXTURE");
        table.info("reload", "skipped: FIXTURE_V2 = FIXTURE");
        return;
    }

    // Cached: both versions go through the cache once before.
    let rt = Arc::new(runtime(Limits::default(), cache));
    for wasm in [
        rewind_test_artifacts::FIXTURE,
        rewind_test_artifacts::FIXTURE_V2,
    ] {
        rt.load(Path::new(wasm))
            .unwrap_or_else(|e| panic!("loading {wasm}: {e}"));
    }
    let file = reload_file(scratch, "reload-cached", &v1);
    let reloader = Reloader::start(rt, HashMap::from([(file.clone(), sha1.clone())]))
        .expect("watching the component file");
    let (mut to_v2, mut to_v1) = (Vec::new(), Vec::new());
    for _ in 0..RELOADS {
        to_v2.extend(time_reload(&reloader, &file, &v2, &sha2));
        to_v1.extend(time_reload(&reloader, &file, &v1, &sha1));
    }
    drop(reloader);
    if to_v2.iter().chain(&to_v1).any(|r| r.compiled) {
        println!("  warning: a cached reload compiled the component again");
    }

    // Cold: an engine with an empty cache directory.
    let rt = Arc::new(runtime(Limits::default(), &scratch.join("cache-cold")));
    let file = reload_file(scratch, "reload-cold", &v1);
    let reloader = Reloader::start(rt, HashMap::from([(file.clone(), sha1)]))
        .expect("watching the component file");
    let cold = time_reload(&reloader, &file, &v2, &sha2);
    drop(reloader);

    let label = format!(
        "debounce (reload::DEBOUNCE {} quiet + file event + 50 ms tick)",
        fmt(reload::DEBOUNCE)
    );
    for (dir, v) in [("fixture -> v2", &to_v2), ("v2 -> fixture", &to_v1)] {
        if v.is_empty() {
            table.info(format!("reload, cached, {dir}"), "failed (see above)");
            continue;
        }
        let total = Stats::of(v.iter().map(|r| r.total).collect());
        println!(
            "hot reload {dir} (cached): rename to Ready median {} (min {}, max {}) over {} reloads",
            fmt(total.median),
            fmt(total.min),
            fmt(total.max),
            v.len()
        );
        table.info(
            format!(
                "reload, cached, {dir}: rename -> Ready from poll, median of {}",
                v.len()
            ),
            format!(
                "{} (min {}, max {})",
                fmt(total.median),
                fmt(total.min),
                fmt(total.max)
            ),
        );
    }
    let all: Vec<&ReloadTiming> = to_v2.iter().chain(&to_v1).collect();
    if !all.is_empty() {
        let seen: Vec<Duration> = all.iter().filter_map(|r| r.seen).collect();
        let stale = all.len() - seen.len();
        let seen = if seen.is_empty() {
            "none seen after the rename".to_string()
        } else {
            format!("event after {}", fmt(Stats::of(seen).median))
        };
        let debounce = Stats::of(all.iter().map(|r| r.debounce()).collect());
        let compile = Stats::of(all.iter().map(|r| r.compile).collect());
        println!(
            "hot reload (cached), {} reloads: {seen} (median), debounce median {} (min {}, max {}), compile+validate median {} (min {}, max {})",
            all.len(),
            fmt(debounce.median),
            fmt(debounce.min),
            fmt(debounce.max),
            fmt(compile.median),
            fmt(compile.min),
            fmt(compile.max)
        );
        table.info(
            format!("reload, cached: of which {label}, median of {}", all.len()),
            format!("{} ({seen})", fmt(debounce.median)),
        );
        if stale > 0 {
            println!(
                "  note: in {stale} of {} reloads the burst had begun before the rename (its changed_at is earlier): an earlier write to the file started that burst",
                all.len()
            );
        }
        table.info(
            format!(
                "reload, cached: of which compile+validate (from the cache), median of {}",
                all.len()
            ),
            format!("{} (max {})", fmt(compile.median), fmt(compile.max)),
        );
    }
    match cold {
        Some(r) => {
            if !r.compiled {
                println!("  warning: the cold reload came from a cache");
            }
            println!(
                "hot reload fixture -> v2 (empty cache): rename to Ready {}: file event after {}, debounce {}, compile+validate {}",
                fmt(r.total),
                r.seen
                    .map(fmt)
                    .unwrap_or_else(|| "(a burst begun before the rename)".into()),
                fmt(r.debounce()),
                fmt(r.compile)
            );
            table.info(
                "reload, cold (empty cache), fixture -> v2: rename -> Ready",
                fmt(r.total),
            );
            table.info(format!("reload, cold: of which {label}"), fmt(r.debounce()));
            table.info(
                "reload, cold: of which compile+validate (Cranelift)",
                fmt(r.compile),
            );
        }
        None => table.info("reload, cold (empty cache)", "failed (see above)"),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `scratch/dir/plugin.wasm` holding `bytes`.
fn reload_file(scratch: &Path, dir: &str, bytes: &[u8]) -> PathBuf {
    let dir = scratch.join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("plugin.wasm");
    std::fs::write(&file, bytes).unwrap();
    file
}

/// Replace `file` with `bytes` as a build or a deploy does (write a temporary
/// file next to it, rename it over), then poll the reloader every 1 ms
/// until the version with hash `sha` is ready.
fn time_reload(r: &Reloader, file: &Path, bytes: &[u8], sha: &str) -> Option<ReloadTiming> {
    let staging = file.with_extension("wasm.part");
    std::fs::write(&staging, bytes).unwrap();
    let t0 = Instant::now();
    std::fs::rename(&staging, file).unwrap();
    let deadline = t0 + Duration::from_secs(30);
    while Instant::now() < deadline {
        let ready = r.poll();
        let at = Instant::now();
        for ev in ready {
            match ev {
                Reload::Ready {
                    plugin,
                    compile,
                    changed_at,
                    ..
                } if plugin.sha256 == sha => {
                    return Some(ReloadTiming {
                        total: at - t0,
                        seen: changed_at.checked_duration_since(t0),
                        compile,
                        compiled: plugin.stats.compiled,
                    });
                }
                Reload::Ready { plugin, .. } => println!(
                    "  warning: reloaded {}, expected {}",
                    plugin.short_hash(),
                    &sha[..12]
                ),
                Reload::Refused { error, .. } => {
                    println!("  warning: the reload was refused: {error}");
                    return None;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "  warning: no reload within 30 s of replacing {}",
        file.display()
    );
    None
}

// ---------------------------------------------------------------------------
// 6. rewind watch: from the break to the rollback

fn bench_watch(
    table: &mut Table,
    site: &DemoSite,
    service_override: Option<&Path>,
    scratch: &Path,
    cache: &Path,
) {
    let runbook = cli_runbook(service_override, scratch);
    let rewind = Path::new(env!("CARGO_BIN_EXE_rewind"));
    site.expect_version("1.0.0", "before rewind watch");
    let stderr_path = scratch.join("watch.stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut child = Command::new(rewind)
        .arg("--json")
        .arg("--cache-dir")
        .arg(cache)
        .arg("watch")
        .arg("--max-rounds")
        .arg(WATCH_MAX_ROUNDS.to_string())
        .arg(&runbook)
        .env("REWIND_DEMO_ROOT", &site.root)
        .env("REWIND_DEMO_PORT", site.port.to_string())
        .env("REWIND_DEMO_WATCH_PERIOD", WATCH_PERIOD)
        .env("REWIND_DEMO_COOLDOWN", "0s")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", rewind.display()));
    let stdout = child.stdout.take().expect("piped stdout");
    // Stopped by SIGTERM to its pid when dropped, panics too.
    let mut watch = Stoppable(child);
    let (lines, reader) = lines_of(stdout);

    let Some((_, start)) = next_json(&lines, Duration::from_secs(60), |v| {
        v["event"] == "watch-start"
    }) else {
        println!(
            "rewind watch: skipped, it did not start (see {})",
            stderr_path.display()
        );
        table.info("watch: detect", "skipped: rewind watch did not start");
        return;
    };
    let period = Duration::from_millis(start["period_ms"].as_u64().unwrap_or(0));
    let threshold = start["failure_threshold"].as_u64().unwrap_or(0) as u32;
    let expected = period * threshold;
    println!(
        "rewind watch (pid {}): {}, period {}, failure_threshold {threshold}, cooldown {} ms",
        watch.0.id(),
        rewind.display(),
        fmt(period),
        start["cooldown_ms"]
    );
    if humantime::parse_duration(WATCH_PERIOD).ok() != Some(period) {
        println!("  warning: REWIND_DEMO_WATCH_PERIOD={WATCH_PERIOD} was not applied");
    }

    // Breaks right after a healthy round's line (the worst case: a whole
    // period before the first failing round), then breaks spread over the
    // period: k/WATCH_SPREAD of it after the line, k = 0 (the first of the
    // aligned breaks) .. WATCH_SPREAD-1.
    let plan: Vec<u32> = std::iter::repeat_n(0, WATCH_ALIGNED)
        .chain(1..WATCH_SPREAD)
        .collect();
    let mut trials: Vec<WatchTrial> = Vec::new();
    let mut rollbacks = Vec::new();
    for (i, &k) in plan.iter().enumerate() {
        let trial = i + 1;
        let healthy = |v: &Value| v["event"] == "probe" && v["healthy"] == true;
        let Some((line_at, _)) = next_json(&lines, Duration::from_secs(30), healthy) else {
            println!("  warning: rewind watch saw no healthy round before trial {trial}");
            break;
        };
        let offset = period * k / WATCH_SPREAD;
        std::thread::sleep((line_at + offset).saturating_duration_since(Instant::now()));
        let t0 = Instant::now();
        site.deploy("1.1.0");
        let deploy = t0.elapsed();
        let Some((at, probe)) = next_json(&lines, Duration::from_secs(30), |v| {
            v["event"] == "probe" && v["action"] == "rollback"
        }) else {
            println!("  warning: rewind watch did not decide to roll back (trial {trial})");
            break;
        };
        let detect = at - t0;
        let Some((_, rb)) = next_json(&lines, Duration::from_secs(60), |v| {
            v["event"] == "rollback"
        }) else {
            println!("  warning: rewind watch did not report its rollback (trial {trial})");
            break;
        };
        let outcome = rb["outcome"]
            .as_str()
            .or(rb["error"].as_str())
            .unwrap_or("?");
        println!(
            "  trial {trial}: deploy 1.1.0 {} after a healthy round's line, took {}; rollback decided {} after the deploy began (~ {} if the next round already fails; round {}, {} failures in a row); rollback {outcome} in {} ms",
            fmt(offset),
            fmt(deploy),
            fmt(detect),
            fmt(expected.saturating_sub(offset)),
            probe["round"],
            probe["consecutive_failures"],
            rb["duration_ms"]
        );
        trials.push(WatchTrial { k, deploy, detect });
        if let Some(ms) = rb["duration_ms"].as_u64() {
            rollbacks.push(Duration::from_millis(ms));
        }
        site.expect_version("1.0.0", "after the watch's rollback");
    }
    let status = watch.stop();
    drop(lines);
    let _ = reader.join();
    if !status.is_some_and(|s| s.success()) {
        println!(
            "  warning: rewind watch ended {status:?} (see {})",
            stderr_path.display()
        );
    }
    let aligned: Vec<Duration> = trials
        .iter()
        .filter(|t| t.k == 0)
        .map(|t| t.detect)
        .collect();
    if aligned.is_empty() {
        table.info("watch: detect", "failed (see above)");
        return;
    }
    let n = aligned.len();
    let d = Stats::of(aligned);
    println!(
        "rewind watch, break right after a healthy round: rollback decided after median {} (min {}, max {}) over {n} breaks; expected failure_threshold x period = {threshold} x {} = {}",
        fmt(d.median),
        fmt(d.min),
        fmt(d.max),
        fmt(period),
        fmt(expected)
    );
    table.row(
        format!("watch: break just after a healthy round -> rollback starts, median of {n}"),
        format!("{} (min {}, max {})", fmt(d.median), fmt(d.min), fmt(d.max)),
        format!("~ {} ({threshold} x {})", fmt(expected), fmt(period)),
        signed_diff(d.median, expected),
    );
    // One break at each k/WATCH_SPREAD of the period.
    let spread: Vec<&WatchTrial> = trials
        .iter()
        .filter(|t| t.k > 0)
        .chain(trials.iter().find(|t| t.k == 0))
        .collect();
    if spread.len() > 1 {
        let low = period * threshold.saturating_sub(1);
        let inside = spread
            .iter()
            .filter(|t| t.detect >= low && t.detect <= expected + t.deploy)
            .count();
        let n = spread.len();
        let s = Stats::of(spread.iter().map(|t| t.detect).collect());
        println!(
            "rewind watch, breaks spread over the period: median {} (min {}, max {}) over {n} breaks; {inside} of {n} between (failure_threshold - 1) x period = {} and failure_threshold x period = {} (+ the deploy's own time: the clock starts with the deploy)",
            fmt(s.median),
            fmt(s.min),
            fmt(s.max),
            fmt(low),
            fmt(expected)
        );
        table.row(
            format!(
                "watch: break at 0..{}/{WATCH_SPREAD} of a period -> rollback starts, median of {n}",
                WATCH_SPREAD - 1
            ),
            format!("{} (min {}, max {})", fmt(s.median), fmt(s.min), fmt(s.max)),
            format!(
                "{}-{} ({}..{threshold} x period)",
                fmt(low),
                fmt(expected),
                threshold.saturating_sub(1)
            ),
            format!("{inside}/{n} in range"),
        );
    }
    if !rollbacks.is_empty() {
        let n = rollbacks.len();
        table.info(
            format!("watch: the rollback it then runs, median of {n}"),
            fmt(Stats::of(rollbacks).median),
        );
    }
}

/// One break of the demo site under `rewind watch`.
struct WatchTrial {
    /// The deploy started k/WATCH_SPREAD of a period after a healthy round.
    k: u32,
    /// How long the deploy of 1.1.0 took.
    deploy: Duration,
    /// From the deploy's start to the probe line that says "rollback".
    detect: Duration,
}

/// The runbook file for the `rewind` binary: examples/demo/rewind.toml, or,
/// when the runbook's own service binary is missing, a copy in `scratch`
/// pointed at `service`, its relative paths made absolute.
fn cli_runbook(service: Option<&Path>, scratch: &Path) -> PathBuf {
    let path = demo_runbook_path();
    let Some(service) = service else {
        return path;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace(RUNBOOK_SERVICE, &service.display().to_string())
        .replace("\"../../", &format!("\"{}/", root.display()));
    let copy = scratch.join("demo-rewind.toml");
    std::fs::write(&copy, text).unwrap();
    copy
}

/// A child process of this benchmark, stopped when dropped: SIGTERM to its
/// pid (only while it is unreaped, so the pid is still ours), SIGKILL after
/// 10 s.
struct Stoppable(Child);

impl Stoppable {
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.0.try_wait() {
            return Some(status);
        }
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        println!(
            "  warning: pid {} ignored SIGTERM for 10 s; killing it",
            self.0.id()
        );
        let _ = self.0.kill();
        self.0.wait().ok()
    }
}

impl Drop for Stoppable {
    fn drop(&mut self) {
        self.stop();
    }
}

type Lines = Receiver<(Instant, String)>;

/// The lines of `out`, each with the instant it was read, from a thread.
fn lines_of(out: impl std::io::Read + Send + 'static) -> (Lines, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    (rx, reader)
}

/// The next JSON line that `want` accepts and when it arrived; the lines
/// before it are dropped. `None` on a timeout or at the end of the output.
fn next_json(
    lines: &Lines,
    timeout: Duration,
    want: impl Fn(&Value) -> bool,
) -> Option<(Instant, Value)> {
    let deadline = Instant::now() + timeout;
    loop {
        let (at, line) =
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => l,
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => {
                    println!("  warning: rewind watch exited");
                    return None;
                }
            };
        match serde_json::from_str::<Value>(&line) {
            Ok(v) if want(&v) => return Some((at, v)),
            Ok(_) => {}
            Err(_) => println!("  warning: not JSON from rewind watch: {line}"),
        }
    }
}

fn signed_diff(observed: Duration, expected: Duration) -> String {
    if observed >= expected {
        format!("+{}", fmt(observed - expected))
    } else {
        format!("-{}", fmt(expected - observed))
    }
}

// ---------------------------------------------------------------------------
// 7. rewind drill vs a bash monitor with fixed sleeps

fn bench_drill_vs_bash(
    table: &mut Table,
    site: &DemoSite,
    service_override: Option<&Path>,
    scratch: &Path,
    cache: &Path,
) {
    let runbook = load_demo_runbook(service_override);
    let Some(spec) = runbook.drills.iter().find(|d| d.name == DRILL_SCENARIO) else {
        println!("drill: skipped, the demo runbook has no [[drill]] {DRILL_SCENARIO:?}");
        table.info("drill", format!("skipped: no {DRILL_SCENARIO:?}"));
        return;
    };
    let (rto, interval) = (spec.rto, spec.detect_interval);
    let rt = Arc::new(runtime(runbook.limits, cache));
    let opts = DrillOptions {
        scenario: Some(DRILL_SCENARIO.into()),
        reload: false,
        approve_manual: false,
        live: false,
    };
    site.expect_version("1.0.0", "before the drills");
    let mut drills: Vec<DrillReport> = Vec::new();
    for i in 1..=DRILL_RUNS {
        let r = drill::run(&runbook, &rt, &opts)
            .unwrap_or_else(|e| panic!("drill: {e}"))
            .into_iter()
            .next()
            .expect("a report for the scenario");
        println!(
            "  drill {i}: recovery {} ({}), verdict {}{}",
            fmt_ms(r.recovery_ms),
            phases_text(&r),
            r.verdict,
            r.error
                .as_deref()
                .map(|e| format!(", error: {e}"))
                .unwrap_or_default()
        );
        drills.push(r);
    }
    drop(rt);
    site.expect_version("1.0.0", "after the drills");
    drills.sort_by(|a, b| a.recovery_ms.total_cmp(&b.recovery_ms));
    let median = &drills[drills.len() / 2];
    let recovery = Duration::from_secs_f64(median.recovery_ms.max(0.0) / 1e3);
    println!(
        "rewind drill {DRILL_SCENARIO}: recovery median {} over {DRILL_RUNS} drills (that drill: {})",
        fmt(recovery),
        phases_text(median)
    );
    let what = format!(
        "drill {DRILL_SCENARIO}: recovery (detect+decide+act+verify), median of {DRILL_RUNS}"
    );
    match rto {
        Some(rto) => table.check(format!("{what} vs its RTO"), fmt(recovery), rto, recovery),
        None => table.info(what, fmt(recovery)),
    }
    for ph in &median.phases {
        let note = match ph.name.as_str() {
            "inject" => " (deploy 1.1.0; not counted)".to_string(),
            "detect" => format!(" (assess every {}, first breach)", fmt(interval)),
            _ => String::new(),
        };
        // decide, act and verify come in whole milliseconds.
        let figure = if ph.ms == 0.0 {
            "< 1 ms".to_string()
        } else {
            fmt_ms(ph.ms)
        };
        table.info(format!("drill {DRILL_SCENARIO}: {}{note}", ph.name), figure);
    }

    let Some(python) = python() else {
        println!("bash monitor: skipped, python3 is not available for the health checks");
        table.info("drill, bash monitor", "skipped: no python3");
        return;
    };
    let script = scratch.join("monitor.sh");
    std::fs::write(&script, BASH_MONITOR).unwrap();
    let stderr_path = scratch.join("monitor.stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    // Break it as the drill does, then the monitor starts with a check right
    // away, as the drill's detection does.
    site.deploy("1.1.0");
    site.expect_version("1.1.0", "before the bash monitor");
    let t0 = Instant::now();
    let mut child = Command::new("bash")
        .arg(&script)
        .arg(&site.root)
        .arg(site.port.to_string())
        .arg(&site.service)
        .arg("1.0.0")
        .arg(MONITOR_INTERVAL_SECS.to_string())
        .arg(MONITOR_FAILURES.to_string())
        .arg(MONITOR_SETTLE_SECS.to_string())
        .arg(&python)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("running bash");
    let mut detected = None;
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
        if line.as_deref().is_ok_and(|l| l == "detected") {
            detected = Some(t0.elapsed());
        }
    }
    let status = child.wait().expect("waiting for bash");
    let bash = t0.elapsed();
    if !status.success() {
        println!(
            "  warning: the bash monitor failed ({status}): {}",
            std::fs::read_to_string(&stderr_path)
                .unwrap_or_default()
                .trim()
        );
    }
    site.expect_version("1.0.0", "after the bash monitor");
    let detect = detected.unwrap_or(bash);
    let ratio = bash.as_secs_f64() / recovery.as_secs_f64();
    println!(
        "bash monitor (check every {MONITOR_INTERVAL_SECS} s, roll back after {MONITOR_FAILURES} failures, sleep {MONITOR_SETTLE_SECS} after the restart): {} (detect {}, rollback + sleep + check {})",
        fmt(bash),
        fmt(detect),
        fmt(bash.saturating_sub(detect))
    );
    println!("bash monitor / rewind drill: {ratio:.1}x");
    table.info(
        format!(
            "drill, bash monitor (sleep {MONITOR_INTERVAL_SECS} between checks, {MONITOR_FAILURES} failures; sleep {MONITOR_SETTLE_SECS} after restart; seeds: 30 s, sleep 30)"
        ),
        fmt(bash),
    );
    table.info(
        format!("drill, bash monitor: of which detect ({MONITOR_FAILURES} failed checks)"),
        fmt(detect),
    );
    table.info("drill, bash monitor / rewind drill", format!("{ratio:.1}x"));
}

fn fmt_ms(ms: f64) -> String {
    fmt(Duration::from_secs_f64(ms.max(0.0) / 1e3))
}

fn phases_text(r: &DrillReport) -> String {
    r.phases
        .iter()
        .map(|p| format!("{} {}", p.name, fmt_ms(p.ms)))
        .collect::<Vec<_>>()
        .join(", ")
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

    fn row(
        &mut self,
        what: impl Into<String>,
        figure: impl Into<String>,
        target: impl Into<String>,
        result: impl Into<String>,
    ) {
        self.rows
            .push([what.into(), figure.into(), target.into(), result.into()]);
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
