//! `rewind watch`: rolls back after exactly N consecutive failures, never
//! on flapping, never twice until healthy, and stops cleanly on SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::*;

/// A fixture watched through an HTTP probe of `srv`; its rollback posts to
/// `/rolled-back`, so the server counts rollbacks.
fn watched(sb: &Sandbox, srv: &Server, extra_steps: Vec<Value>, failure_threshold: u32) {
    let mut steps = extra_steps;
    steps.push(json!({"id": "mark", "op": {"call": "request", "args": {"req": {"method": "POST", "url": srv.url("/rolled-back")}}}}));
    let config = json!({
        "assess": {"op": {"call": "http-probe", "args": {"probe": {"url": srv.url("/healthz"), "timeout_ms": 1000}}}},
        "steps": steps,
    });
    let doc = json!({
        "name": "watched", "state_dir": "state",
        "watch": {"period": "30ms", "timeout": "5s", "failure_threshold": failure_threshold, "success_threshold": 1, "cooldown": "0s"},
        "plugin": [{"name": "fx", "component": FIXTURE, "config": config, "grants": {"http": [srv.url("/")]}}],
    });
    sb.runbook(&toml::to_string(&doc).unwrap());
}

fn rounds(sb: &Sandbox, max: u32) -> Vec<Value> {
    let out = sb.rewind(&["watch", "--json", "--max-rounds", &max.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["event"] == "probe")
        .collect()
}

fn rollbacks(srv: &Server) -> usize {
    srv.methods()
        .iter()
        .filter(|m| *m == "POST /rolled-back")
        .count()
}

#[test]
fn rolls_back_after_exactly_n_consecutive_failures() {
    let sb = Sandbox::new();
    let srv = Server::start();
    // Rounds 1-3 fail; the rollback's own assessment sees the 4th answer.
    srv.script("/healthz", &[500, 500, 500, 500, 200]);
    watched(&sb, &srv, vec![], 3);
    let r = rounds(&sb, 5);
    assert_eq!(r[1]["consecutive_failures"], 2);
    assert_eq!(r[1]["action"], "none", "not after N-1");
    assert_eq!(r[2]["consecutive_failures"], 3);
    assert_eq!(r[2]["action"], "rollback", "after exactly N");
    assert_eq!(r[3]["healthy"], true);
    assert_eq!(rollbacks(&srv), 1);
}

#[test]
fn flapping_below_the_threshold_never_triggers() {
    let sb = Sandbox::new();
    let srv = Server::start();
    srv.script(
        "/healthz",
        &[500, 500, 200, 500, 500, 200, 500, 500, 200, 500, 500, 200],
    );
    watched(&sb, &srv, vec![], 3);
    let r = rounds(&sb, 12);
    assert!(r.iter().all(|v| v["action"] == "none"), "{r:?}");
    assert_eq!(
        r.iter()
            .map(|v| v["consecutive_failures"].as_u64().unwrap())
            .max(),
        Some(2)
    );
    assert_eq!(rollbacks(&srv), 0);
}

#[test]
fn no_second_rollback_until_the_service_was_healthy_again() {
    let sb = Sandbox::new();
    let srv = Server::start();
    // 1-3 fail -> rollback (its assessment takes the 4th); 4-6 fail: hold;
    // 7 healthy: armed again; 8-10 fail -> second rollback.
    srv.script(
        "/healthz",
        &[500, 500, 500, 500, 500, 500, 500, 200, 500, 500, 500, 500],
    );
    watched(&sb, &srv, vec![], 3);
    let r = rounds(&sb, 10);
    let actions: Vec<&str> = r.iter().map(|v| v["action"].as_str().unwrap()).collect();
    assert_eq!(actions[2], "rollback");
    assert!(actions[5].starts_with("hold: not healthy"), "{actions:?}");
    assert_eq!(actions[6], "none");
    assert_eq!(actions[9], "rollback", "{actions:?}");
    assert_eq!(rollbacks(&srv), 2);
    // Every rollback went through the journal, like `rewind run`.
    let out = sb.rewind(&["history"]);
    assert_eq!(
        text(&out).matches("rolled-back").count(),
        2,
        "{}",
        text(&out)
    );
}

#[test]
fn sigterm_mid_step_finishes_the_step_and_leaves_a_consistent_journal() {
    let sb = Sandbox::new();
    let srv = Server::start();
    srv.script("/healthz", &[500]);
    let closed = free_port();
    let slow = json!({"id": "slow", "op": {"call": "wait-healthy", "args": {
        "target": {"Tcp": ["127.0.0.1", closed, 100]},
        "policy": {"interval_ms": 100, "timeout_ms": 1500, "success_threshold": 1, "failure_threshold": 0}}}});
    watched(&sb, &srv, vec![slow], 1);
    let text_rb = std::fs::read_to_string(sb.join("rewind.toml")).unwrap();
    sb.runbook(&text_rb.replace(
        "http = [",
        &format!("tcp = [\"127.0.0.1:{closed}\"]\nhttp = ["),
    ));
    let mut child = Proc::spawn(
        Command::new(REWIND)
            .args(["watch"])
            .current_dir(sb.path())
            .env("REWIND_CACHE_DIR", cache_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let started = wait_until(Duration::from_secs(20), || {
        std::fs::read_dir(sb.join("state/runs"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .contains("\"step-start\"")
            })
    });
    assert!(started);
    let status = Command::new("kill")
        .args(["-TERM", &child.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.output();
    assert_eq!(out.status.code(), Some(0), "a clean stop: {}", text(&out));
    assert!(text(&out).contains("stopped after"), "{}", text(&out));
    let journal_path = std::fs::read_dir(sb.join("state/runs"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let events: Vec<Value> = std::fs::read_to_string(journal_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"step-end"),
        "the running step finished: {kinds:?}"
    );
    let skipped = events
        .iter()
        .find(|e| e["event"] == "step-skipped")
        .expect("the next step was skipped");
    assert_eq!(skipped["step"], "mark");
    assert!(skipped["reason"].as_str().unwrap().contains("SIGTERM"));
    assert_eq!(events.last().unwrap()["event"], "run-end");
    assert_eq!(events.last().unwrap()["outcome"], "aborted");
    assert_eq!(rollbacks(&srv), 0, "the step after the signal never ran");
}

#[test]
fn a_plugin_rebuilt_while_watching_is_picked_up_between_rounds() {
    let sb = Sandbox::new();
    let srv = Server::start();
    srv.route("/healthz", Reply::ok("ok"));
    // Warm the compiled cache with the v2 build, so the reload is quick.
    let warm = toml::to_string(&json!({"name": "warm", "state_dir": "warm", "plugin": [{"name": "fx", "component": FIXTURE_V2}]})).unwrap();
    std::fs::write(sb.join("warm.toml"), warm).unwrap();
    assert!(sb.rewind(&["check", "warm.toml"]).status.success());
    let component = sb.join("plugin.wasm");
    std::fs::copy(FIXTURE, &component).unwrap();
    watched(&sb, &srv, vec![], 3);
    let text_rb = std::fs::read_to_string(sb.join("rewind.toml")).unwrap();
    sb.runbook(
        &text_rb
            .replace(FIXTURE, component.to_str().unwrap())
            .replace("\"30ms\"", "\"100ms\""),
    );
    let mut child = Proc::spawn(
        Command::new(REWIND)
            .args(["watch", "--json", "--max-rounds", "40"])
            .current_dir(sb.path())
            .env("REWIND_CACHE_DIR", cache_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    std::thread::sleep(Duration::from_millis(600));
    let tmp = sb.join("plugin.wasm.new");
    std::fs::copy(FIXTURE_V2, &tmp).unwrap();
    std::fs::rename(&tmp, &component).unwrap();
    let out = child.output();
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reload = lines
        .iter()
        .find(|l| l["event"] == "reload")
        .unwrap_or_else(|| panic!("no reload in {lines:?}"));
    assert_ne!(reload["from"], reload["to"]);
    let at = lines.iter().position(|l| l["event"] == "reload").unwrap();
    assert!(
        lines[at + 1..]
            .iter()
            .any(|l| l["event"] == "probe" && l["healthy"] == true),
        "rounds go on after it"
    );
}
