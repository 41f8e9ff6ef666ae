//! `rewind watch`: rolls back after exactly N consecutive failures, never
//! on flapping, never twice until healthy, and stops cleanly on SIGTERM.

use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::util::*;

/// A fixture watched through an HTTP probe of `srv`; its rollback posts to
/// `/rolled-back`, so the server counts rollbacks.
fn watched(sb: &Sandbox, srv: &Server, extra_steps: Vec<Value>, failure_threshold: u32) {
    let mut steps = extra_steps;
    steps.push(json!({"id": "mark", "op": {"call": "request", "args": {"req": {"method": "POST", "url": srv.url("/rolled-back")}}}}));
    let config = json!({
        "assess": {"op": {"call": "http-probe", "args": {"probe": {"url": srv.url("/healthz"), "timeout_ms": 30000}}}},
        "steps": steps,
    });
    let doc = json!({
        "name": "watched", "state_dir": "state",
        "watch": {"period": "30ms", "timeout": "60s", "failure_threshold": failure_threshold, "success_threshold": 1, "cooldown": "0s"},
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
    // The step waits until the test opens this port, after the signal:
    // it is running when the signal comes, however slow the machine.
    let closed = free_port();
    let slow = json!({"id": "slow", "op": {"call": "wait-healthy", "args": {
        "target": {"Tcp": ["127.0.0.1", closed, 5000]},
        "policy": {"interval_ms": 100, "timeout_ms": 120000, "success_threshold": 1, "failure_threshold": 0}}}});
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
            .env("REWIND_LOCK_DIR", sb.path().join("state/locks"))
            .env("REWIND_CACHE_DIR", cache_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let started = wait_until(PATIENCE, || {
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
    // Let the step finish only once rewind has taken the signal (it is no
    // longer pending), so the step after it is the one skipped.
    let pid = child.pid();
    assert!(
        wait_until(PATIENCE, || !sigterm_pending(pid)),
        "rewind never took the SIGTERM"
    );
    let _open = std::net::TcpListener::bind(("127.0.0.1", closed)).unwrap();
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
            .args(["watch", "--json"])
            .current_dir(sb.path())
            .env("REWIND_LOCK_DIR", sb.path().join("state/locks"))
            .env("REWIND_CACHE_DIR", cache_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    // Its output line by line, as it comes.
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let reader = std::thread::spawn(move || {
        for l in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&l).unwrap());
        }
    });
    let mut lines: Vec<Value> = Vec::new();
    let next = |lines: &mut Vec<Value>| {
        let l = rx
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|e| panic!("{e}; so far {lines:?}"));
        lines.push(l);
    };
    // watch-start: the plugin files are watched from now on.
    while !lines.iter().any(|l| l["event"] == "watch-start") {
        next(&mut lines);
    }
    let tmp = sb.join("plugin.wasm.new");
    std::fs::copy(FIXTURE_V2, &tmp).unwrap();
    std::fs::rename(&tmp, &component).unwrap();
    // Rounds go on until the reload is picked up, and after it.
    let healthy_after_reload = |lines: &[Value]| {
        lines
            .iter()
            .position(|l| l["event"] == "reload")
            .is_some_and(|at| {
                lines[at + 1..]
                    .iter()
                    .any(|l| l["event"] == "probe" && l["healthy"] == true)
            })
    };
    while !healthy_after_reload(&lines) {
        next(&mut lines);
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.0.wait().unwrap().success(), "a clean stop");
    reader.join().unwrap();
    let reload = lines.iter().find(|l| l["event"] == "reload").unwrap();
    assert_ne!(reload["from"], reload["to"]);
}

/// Whether a SIGTERM sent to `pid` is still pending (not yet delivered to
/// its handler): bit 15 of ShdPnd in /proc/<pid>/status.
fn sigterm_pending(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("ShdPnd:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (15 - 1)) != 0)
}

/// `rewind watch` under the default policy never runs a destructive step
/// on its own: the rollback it triggers stops before the step and waits
/// for a person; once denied, the step never ran, nothing after it either,
/// and the watch goes on (holding: no second rollback while unhealthy).
#[test]
fn watch_never_runs_a_destructive_step_unattended() {
    let sb = Sandbox::new();
    let srv = Server::start();
    srv.script("/healthz", &[500]);
    let drop = json!({"id": "drop", "effect": "destructive", "op": {"call": "request", "args": {"req": {"method": "POST", "url": srv.url("/dropped")}}}});
    let look = json!({"id": "look", "effect": "observe", "op": {"call": "request", "args": {"req": {"method": "POST", "url": srv.url("/looked")}}}});
    watched(&sb, &srv, vec![look, drop], 1);
    let waiting = || {
        std::fs::read_dir(sb.join("state/approvals"))
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".waiting"))
            .and_then(|e| std::fs::read_to_string(e.path()).ok())
    };
    let mut child = sb.spawn(&["watch", "--json", "--max-rounds", "3"]);
    assert!(
        wait_until(PATIENCE, || waiting().is_some()),
        "the rollback waits"
    );
    assert!(waiting().unwrap().starts_with("drop\n"));
    let posted = |path: &str| {
        srv.methods()
            .iter()
            .filter(|m| *m == &format!("POST {path}"))
            .count()
    };
    assert_eq!(posted("/looked"), 1, "the observe step ran");
    assert_eq!(posted("/dropped"), 0, "the destructive step waits");
    let out = sb.rewind(&["deny"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = child.output();
    assert!(out.status.success(), "the watch goes on: {}", text(&out));
    assert_eq!(posted("/dropped"), 0, "never ran");
    assert_eq!(rollbacks(&srv), 0, "nothing after it ran");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let actions: Vec<&str> = lines
        .iter()
        .filter(|v| v["event"] == "probe")
        .map(|v| v["action"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "rollback").count(),
        1,
        "{actions:?}"
    );
    let journal: String = std::fs::read_dir(sb.join("state/runs"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(journal.contains("drop was denied by"), "{journal}");
}
