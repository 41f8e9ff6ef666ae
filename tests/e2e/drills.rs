//! Drills timed against the RTO, with hot reload of the plugin between
//! steps, and `rewind drills` listing them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::*;

/// A fixture drill: a copy of the fixture component in the test dir (so
/// the test can replace it), a first step that takes ~2 s (a wait on a
/// closed port) and two no-op steps that answer with the build's flavor.
fn reload_drill(sb: &Sandbox, rto: &str) -> PathBuf {
    let component = sb.join("plugin.wasm");
    std::fs::copy(FIXTURE, &component).unwrap();
    let closed = free_port();
    let config = json!({
        "steps": [
            {"id": "slow", "op": {"call": "wait-healthy", "args": {
                "target": {"Tcp": ["127.0.0.1", closed, 100]},
                "policy": {"interval_ms": 100, "timeout_ms": 2000, "success_threshold": 1, "failure_threshold": 0}}}},
            {"id": "second"},
            {"id": "third"},
        ],
    });
    let doc = json!({
        "name": "reload", "state_dir": "state", "rto": rto,
        "plugin": [{"name": "fx", "component": component, "config": config,
                    "grants": {"tcp": [format!("127.0.0.1:{closed}")], "exec": ["true"]}}],
        "drill": [{"name": "scripted", "plugin": "fx", "inject": [["true"]], "detect_interval": "50ms", "detect_timeout": "10s"}],
    });
    sb.runbook(&toml::to_string(&doc).unwrap());
    component
}

/// Compile the v2 build into the shared cache first, so the reload in the
/// drill measures a cached load, not Cranelift on a debug host.
fn warm_cache(sb: &Sandbox) {
    let doc = json!({"name": "warm", "state_dir": "warm-state", "plugin": [{"name": "fx", "component": FIXTURE_V2}]});
    std::fs::write(sb.join("warm.toml"), toml::to_string(&doc).unwrap()).unwrap();
    let out = sb.rewind(&["check", "warm.toml"]);
    assert!(out.status.success(), "{}", text(&out));
}

fn start_drill(sb: &Sandbox) -> Proc {
    Proc::spawn(
        Command::new(REWIND)
            .args(["drill", "--json", "--reload"])
            .current_dir(sb.path())
            .env("REWIND_CACHE_DIR", cache_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
}

fn wait_for_step(sb: &Sandbox, step: &str) {
    let found = wait_until(Duration::from_secs(20), || {
        std::fs::read_dir(sb.join("state/runs"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .lines()
                    .any(|l| {
                        l.contains("\"step-start\"") && l.contains(&format!("\"step\":\"{step}\""))
                    })
            })
    });
    assert!(found, "step {step} never started");
}

fn finish(mut p: Proc) -> (Option<i32>, Value) {
    let out = p.output();
    let reports: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    (out.status.code(), reports[0].clone())
}

fn replace_atomically(component: &Path, with: &[u8]) {
    let tmp = component.with_extension("wasm.tmp");
    std::fs::write(&tmp, with).unwrap();
    std::fs::rename(&tmp, component).unwrap();
}

#[test]
fn a_plugin_rebuilt_during_a_drill_takes_over_between_steps() {
    let sb = Sandbox::new();
    warm_cache(&sb);
    let component = reload_drill(&sb, "1m");
    let drill = start_drill(&sb);
    wait_for_step(&sb, "slow");
    replace_atomically(&component, &std::fs::read(FIXTURE_V2).unwrap());
    let (code, d) = finish(drill);
    assert_eq!(code, Some(0), "{d}");
    assert_eq!(d["verdict"], "pass", "{d}");
    let steps = d["steps"].as_array().unwrap();
    let version = |i: usize| steps[i]["plugin_version"].as_str().unwrap().to_string();
    assert_ne!(
        version(0),
        version(1),
        "the step after the swap ran the new build: {d}"
    );
    assert_eq!(version(1), version(2));
    let reloads = d["reloads"].as_array().unwrap();
    assert_eq!(reloads.len(), 1, "{d}");
    assert_eq!(reloads[0]["before_step"], "second");
    assert_eq!(reloads[0]["from"].as_str().unwrap(), version(0));
    assert_eq!(reloads[0]["to"].as_str().unwrap(), version(1));
    // The new build really is the one that answered.
    let journal = std::fs::read_to_string(d["journal"].as_str().unwrap()).unwrap();
    let second = journal
        .lines()
        .find(|l| l.contains("\"step-end\"") && l.contains("\"step\":\"second\""))
        .unwrap();
    assert!(second.contains(r#"\"v2\""#), "{second}");
    let md =
        std::fs::read_to_string(sb.join(&format!("state/drills/{}.md", d["id"].as_str().unwrap())))
            .unwrap();
    assert!(
        md.contains("## Reloads") && md.contains("before step `second`"),
        "{md}"
    );
}

#[test]
fn a_garbage_replacement_is_refused_and_the_drill_finishes_on_the_old_build() {
    let sb = Sandbox::new();
    let component = reload_drill(&sb, "1m");
    let drill = start_drill(&sb);
    wait_for_step(&sb, "slow");
    // Written in place, in two chunks, like a build still writing.
    std::fs::write(&component, b"\0asm\x0d\0\x01\0 half of a component").unwrap();
    std::thread::sleep(Duration::from_millis(30));
    std::fs::write(&component, b"not a component at all").unwrap();
    let (code, d) = finish(drill);
    assert_eq!(code, Some(0), "{d}");
    assert_eq!(d["verdict"], "pass");
    assert!(d["reloads"].as_array().unwrap().is_empty(), "{d}");
    let refused = d["refused_reloads"].as_array().unwrap();
    assert!(!refused.is_empty(), "{d}");
    assert!(
        refused.last().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("not a WebAssembly file"),
        "{d}"
    );
    let steps = d["steps"].as_array().unwrap();
    assert!(
        steps
            .iter()
            .all(|s| s["plugin_version"] == steps[0]["plugin_version"])
    );
    let journal = std::fs::read_to_string(d["journal"].as_str().unwrap()).unwrap();
    assert!(journal.contains("reload-refused"));
    assert!(
        journal
            .lines()
            .any(|l| l.contains("\"step\":\"third\"") && l.contains(r#"\"v1\""#))
    );
}

#[test]
fn a_drill_over_its_rto_fails_and_names_the_slow_phase() {
    let sb = Sandbox::new();
    reload_drill(&sb, "500ms");
    let out = sb.rewind(&["drill", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &d[0];
    assert_eq!(d["verdict"], "fail");
    assert_eq!(d["recovered"], true);
    assert!(d["margin_ms"].as_f64().unwrap() < 0.0);
    assert_eq!(d["slowest_phase"], "act", "the 2 s step: {d}");
    let phases: Vec<&str> = d["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["inject", "detect", "decide", "act", "verify"]);
    // `rewind drills` lists it, and a second one, for the trend.
    assert_eq!(sb.rewind(&["drill", "-q"]).status.code(), Some(1));
    let out = sb.rewind(&["drills"]);
    let listing = text(&out);
    assert!(out.status.success(), "{listing}");
    assert_eq!(listing.matches("scripted").count(), 2, "{listing}");
    assert!(
        listing.contains("fail") && listing.contains("act"),
        "{listing}"
    );
    let out = sb.rewind(&["drill", "--scenario", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("scripted"),
        "names the known scenarios: {}",
        text(&out)
    );
}
