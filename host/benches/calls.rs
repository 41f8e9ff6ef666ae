//! Per-call cost of the host: `cargo bench -p rewind --bench calls`.
//!
//! Times `Runtime::describe` and `Runtime::assess` of the demo plugin
//! (`plugins/demo`) through the public typed calls only, so the same file
//! builds against any host version and the numbers compare the call paths
//! (sync wasmtime before, tokio + async wasmtime now). `assess` makes host
//! calls: the demo plugin probes a service that is not there (a free
//! loopback port), so each assess pays for a refused connection through the
//! `health`/`http` imports. Nothing is asserted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rewind::bindings::types::Mode;
use rewind::runtime::{Limits, Runtime};
use rewind::sandbox::Sandbox;
use rewind::state::{PluginEnv, StateDir};

const WARMUP: usize = 20;
const CALLS: usize = 500;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let root = dir.path().join("site");
    std::fs::create_dir_all(&root).unwrap();
    let text = format!(
        "name = \"bench-calls\"\nstate_dir = \"state\"\n\n[[plugin]]\nname = \"demo\"\ncomponent = {:?}\n\n[plugin.config]\nroot = {root:?}\nurl = \"http://127.0.0.1:{port}\"\nport = {port}\nservice = \"/bin/true\"\nstop_grace_ms = 100\nhealth_timeout_ms = 200\nmax_latency_ms = 500\n\n[plugin.grants]\nhttp = [\"http://127.0.0.1:{port}/\"]\nread = [{root:?}]\n",
        rewind_test_artifacts::DEMO
    );
    let path = dir.path().join("rewind.toml");
    std::fs::write(&path, text).unwrap();
    let runbook = rewind::runbook::Runbook::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let rt = Runtime::new(Limits::default(), Some(dir.path().join("cache"))).unwrap();
    let spec = &runbook.plugins[0];
    let plugin = rt.load(&spec.component).unwrap();
    let sandbox: Sandbox = spec.sandbox(&runbook).unwrap();
    let env = Arc::new(PluginEnv::new(
        "demo".into(),
        sandbox,
        Mode::DryRun,
        None,
        StateDir::new(dir.path().join("state")),
        reqwest::blocking::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    ));
    let ctx = rewind::run::context("bench", spec, Mode::DryRun, 0);
    time("describe", || {
        rt.describe(&plugin, &env, &ctx)
            .map(drop)
            .map_err(|e| e.to_string())
    });
    time("assess", || {
        rt.assess(&plugin, &env, &ctx)
            .map(drop)
            .map_err(|e| e.to_string())
    });
}

fn time(name: &str, mut f: impl FnMut() -> Result<(), String>) {
    for _ in 0..WARMUP {
        f().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let mut times: Vec<Duration> = (0..CALLS)
        .map(|_| {
            let start = Instant::now();
            f().unwrap_or_else(|e| panic!("{name}: {e}"));
            start.elapsed()
        })
        .collect();
    times.sort();
    let total: Duration = times.iter().sum();
    println!(
        "demo {name}: median {:?}, p95 {:?}, mean {:?}, min {:?} over {CALLS} calls",
        times[CALLS / 2],
        times[CALLS * 95 / 100],
        total / CALLS as u32,
        times[0]
    );
}
