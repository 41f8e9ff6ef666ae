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
    let closed = free_port();
    let slow = json!({"id": "slow", "op": {"call": "wait-healthy", "args": {
        "target": {"Tcp": ["127.0.0.1", closed, 100]},
        "policy": {"interval_ms": 100, "timeout_ms": 2000, "success_threshold": 1, "failure_threshold": 0}}}});
    drill_runbook(
        sb,
        rto,
        vec![slow, json!({"id": "second"}), json!({"id": "third"})],
        json!({"tcp": [format!("127.0.0.1:{closed}")], "exec": ["true"]}),
    )
}

/// Steps `gate0`..`gate{n-1}` that each wait until the test opens them
/// (`GET /gate/<i>/` on `srv` answers 200, see `open_gates_until`), then a
/// no-op step `last`; a drill of them with a copy of the fixture component
/// the test can replace. The RTO is an hour: these drills test reloads,
/// not timing.
fn gated_drill(sb: &Sandbox, srv: &Server, gates: usize) -> PathBuf {
    let mut steps: Vec<Value> = (0..gates)
        .map(|i| {
            json!({"id": format!("gate{i}"), "op": {"call": "wait-healthy", "args": {
                "target": {"Http": {"url": srv.url(&format!("/gate/{i}/")), "timeout_ms": 30000}},
                "policy": {"interval_ms": GATE_INTERVAL_MS, "timeout_ms": 600000, "success_threshold": 1, "failure_threshold": 0}}}})
        })
        .collect();
    steps.push(json!({"id": "last"}));
    drill_runbook(
        sb,
        "1h",
        steps,
        json!({"http": [srv.url("/")], "exec": ["true"]}),
    )
}

/// How often a gate step probes: each gate lasts at least this long once
/// the test opens it after the first probe.
const GATE_INTERVAL_MS: u64 = 500;
/// Gates enough for a reload to arrive within 60 s of the change.
const GATES: usize = 120;

fn drill_runbook(sb: &Sandbox, rto: &str, steps: Vec<Value>, grants: Value) -> PathBuf {
    let component = sb.join("plugin.wasm");
    std::fs::copy(FIXTURE, &component).unwrap();
    let doc = json!({
        "name": "reload", "state_dir": "state", "rto": rto,
        "plugin": [{"name": "fx", "component": component, "config": {"steps": steps}, "grants": grants}],
        "drill": [{"name": "scripted", "plugin": "fx", "inject": [["true"]], "detect_interval": "50ms", "detect_timeout": "2m"}],
    });
    sb.runbook(&toml::to_string(&doc).unwrap());
    component
}

/// The drill's journal so far (empty before it exists).
fn journal_text(sb: &Sandbox) -> String {
    std::fs::read_dir(sb.join("state/runs"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect()
}

/// Open the gates of a `gated_drill` one at a time until the journal
/// shows `done` at the start of a gate, then all the others. A reload is
/// compiled in the background and picked up between two steps: there is no
/// telling which boundary it reaches first, so the test keeps the drill
/// going, one gate per probe interval, until it has (at most GATES gates,
/// a minute), instead of guessing how long the compile takes.
fn open_gates_until(sb: &Sandbox, srv: &Server, done: impl Fn(&str) -> bool) {
    let open = |i: usize| srv.route(&format!("/gate/{i}/"), Reply::ok("open"));
    for i in 0..GATES {
        wait_for_step(sb, &format!("gate{i}"));
        if done(&journal_text(sb)) {
            (i..GATES).for_each(open);
            return;
        }
        // Open it after the drill's first probe of it, so it lasts at
        // least one probe interval.
        let path = format!("/gate/{i}/");
        assert!(
            wait_until(PATIENCE, || srv
                .requests
                .lock()
                .unwrap()
                .iter()
                .any(|(_, p, _)| *p == path)),
            "gate{i} was never probed"
        );
        open(i);
    }
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
            .env("REWIND_LOCK_DIR", sb.path().join("state/locks"))
            .env("REWIND_CACHE_DIR", cache_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
}

fn wait_for_step(sb: &Sandbox, step: &str) {
    let found = wait_until(PATIENCE, || {
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
    let srv = Server::start();
    warm_cache(&sb);
    let component = gated_drill(&sb, &srv, GATES);
    let drill = start_drill(&sb);
    wait_for_step(&sb, "gate0");
    replace_atomically(&component, &std::fs::read(FIXTURE_V2).unwrap());
    open_gates_until(&sb, &srv, |j| j.contains("\"event\":\"reload\""));
    let (code, d) = finish(drill);
    assert_eq!(code, Some(0), "{d}");
    assert_eq!(d["verdict"], "pass", "{d}");
    let steps = d["steps"].as_array().unwrap();
    let version = |i: usize| steps[i]["plugin_version"].as_str().unwrap().to_string();
    let reloads = d["reloads"].as_array().unwrap();
    assert_eq!(reloads.len(), 1, "{d}");
    // Every step before the swap ran the old build, every one from it on
    // the new one.
    let at = (0..steps.len())
        .find(|&i| version(i) != version(0))
        .unwrap_or_else(|| panic!("no step ran the new build: {d}"));
    assert!(at >= 1, "the first step ran before the change: {d}");
    assert!(
        (at..steps.len()).all(|i| version(i) == version(at)),
        "the new build stays: {d}"
    );
    let swapped = steps[at]["step"].as_str().unwrap().to_string();
    assert_eq!(reloads[0]["before_step"], swapped.as_str(), "{d}");
    assert_eq!(reloads[0]["from"].as_str().unwrap(), version(0));
    assert_eq!(reloads[0]["to"].as_str().unwrap(), version(at));
    // The new build really is the one that answered.
    let journal = std::fs::read_to_string(d["journal"].as_str().unwrap()).unwrap();
    let last = journal
        .lines()
        .find(|l| l.contains("\"step-end\"") && l.contains("\"step\":\"last\""))
        .unwrap();
    assert!(last.contains(r#"\"v2\""#), "{last}");
    let md =
        std::fs::read_to_string(sb.join(&format!("state/drills/{}.md", d["id"].as_str().unwrap())))
            .unwrap();
    assert!(
        md.contains("## Reloads") && md.contains(&format!("before step `{swapped}`")),
        "{md}"
    );
}

#[test]
fn a_garbage_replacement_is_refused_and_the_drill_finishes_on_the_old_build() {
    let sb = Sandbox::new();
    let srv = Server::start();
    let component = gated_drill(&sb, &srv, GATES);
    let drill = start_drill(&sb);
    wait_for_step(&sb, "gate0");
    // Written in place, in two chunks, like a build still writing. (The
    // pause is part of the scenario, not a wait: whether the reloader
    // reads the first chunk on its own or not, the last refusal is of the
    // second, and the gates keep the drill going until it is recorded.)
    std::fs::write(&component, b"\0asm\x0d\0\x01\0 half of a component").unwrap();
    std::thread::sleep(Duration::from_millis(30));
    std::fs::write(&component, b"not a component at all").unwrap();
    open_gates_until(&sb, &srv, |j| {
        j.lines()
            .any(|l| l.contains("reload-refused") && l.contains("not a WebAssembly file"))
    });
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
            .any(|l| l.contains("\"step\":\"last\"") && l.contains(r#"\"v1\""#))
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
    let phases: Vec<&str> = d["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["inject", "detect", "decide", "act", "verify"]);
    // The measured phases, not a guess of which one a loaded machine
    // makes slowest: act holds the ~2 s wait, over the 500 ms RTO on its
    // own whatever the load, and the slowest phase named is the longest
    // one measured.
    let ms = |name: &str| {
        d["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["ms"]
            .as_f64()
            .unwrap()
    };
    assert!(ms("act") > 500.0, "the 2 s step: {d}");
    let slowest = ["detect", "decide", "act", "verify"]
        .into_iter()
        .max_by(|a, b| ms(a).total_cmp(&ms(b)))
        .unwrap();
    assert_eq!(d["slowest_phase"], slowest, "{d}");
    // `rewind drills` lists it, and a second one, for the trend.
    let out = sb.rewind(&["drill", "-q", "--junit", "drill.xml"]);
    assert_eq!(out.status.code(), Some(1));
    // As JUnit: the suite's result is the verdict against the RTO.
    let xml = std::fs::read_to_string(sb.join("drill.xml")).unwrap();
    let junit = quick_junit::Report::deserialize_from_str(&xml).unwrap();
    let suite = &junit.test_suites[0];
    assert_eq!(suite.name.as_str(), "reload/scripted");
    let rto = suite
        .test_cases
        .iter()
        .find(|c| c.name.as_str() == "recovery within RTO")
        .unwrap_or_else(|| panic!("{xml}"));
    assert!(
        matches!(&rto.status, quick_junit::TestCaseStatus::NonSuccess { message: Some(m), .. } if m.as_str().contains("over the RTO of 500 ms")),
        "{xml}"
    );
    assert_eq!(suite.failures, 1, "{xml}");
    let out = sb.rewind(&["drills"]);
    let listing = text(&out);
    assert!(out.status.success(), "{listing}");
    assert_eq!(listing.matches("scripted").count(), 2, "{listing}");
    assert!(
        listing.contains("fail") && listing.contains(slowest),
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

/// A runbook without a `[[drill]]` says so and how to add one.
#[test]
fn a_runbook_without_drills_says_how_to_add_one() {
    let sb = Sandbox::new();
    sb.runbook(&fixture_runbook(&json!({}), &json!({})));
    let out = sb.rewind(&["drill"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("has no [[drill]] scenarios"), "{t}");
}
