//! `rewind status`: idle, running (at which step), waiting for a person,
//! interrupted, and watching, each read from a real state directory while
//! real rewind processes hold it.

use serde_json::{Value, json};

use crate::util::*;

fn status(sb: &Sandbox) -> Value {
    let out = sb.rewind(&["--json", "status"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

#[test]
fn status_tells_running_interrupted_waiting_and_idle_apart() {
    let sb = Sandbox::new();
    let work = sb.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let fifo = work.join("go");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    // A step that blocks until the test opens the FIFO: the run is
    // caught mid-step without any timing.
    let config = json!({"steps": [
        {"id": "look", "effect": "observe"},
        {"id": "block", "op": {"call": "run", "args": {"cmd": {
            "program": "/bin/sh", "args": ["-c", "read x < go"], "cwd": work,
            "env": [], "timeout_ms": 600000}}}},
    ]});
    sb.runbook(&fixture_runbook(
        &config,
        &json!({"exec": ["/bin/sh"], "read": [work]}),
    ));

    let s = status(&sb);
    assert_eq!(s["state"], "idle", "{s:#}");
    assert!(s["last_run"].is_null());
    assert!(text(&sb.rewind(&["status"])).contains("no run yet"));

    // Running: which run, which step.
    let mut run = sb.spawn(&["run"]);
    assert!(
        wait_until(PATIENCE, || status(&sb)["run"]["step"][2] == "block"),
        "{:#}",
        status(&sb)
    );
    let s = status(&sb);
    assert_eq!(s["state"], "running", "{s:#}");
    assert_eq!(s["run"]["pid"], run.pid());
    let run_id = s["run"]["run_id"].as_str().unwrap().to_string();
    let t = text(&sb.rewind(&["status"]));
    assert!(
        t.contains("RUNNING") && t.contains("at step block of plugin fx"),
        "{t}"
    );

    // Killed mid-step: interrupted, and says how to carry on.
    kill_pid(run.pid());
    let _ = run.output();
    let s = status(&sb);
    assert_eq!(s["state"], "interrupted", "{s:#}");
    assert_eq!(s["interrupted"]["run_id"], run_id.as_str());
    assert!(
        s["interrupted"]["at"]
            .as_str()
            .unwrap()
            .contains("during step block"),
        "{s:#}"
    );
    assert!(text(&sb.rewind(&["status"])).contains("rewind resume"));

    // Waiting for a person, then idle with the last run's outcome.
    let sb = Sandbox::new();
    let config = json!({"steps": [{"id": "drop", "effect": "destructive"}]});
    sb.runbook(&fixture_runbook(&config, &json!({})));
    let mut run = sb.spawn(&["run"]);
    assert!(wait_until(PATIENCE, || status(&sb)["state"] == "waiting"));
    let s = status(&sb);
    assert_eq!(s["run"]["waiting_for"][0], "drop", "{s:#}");
    let t = text(&sb.rewind(&["status"]));
    assert!(t.contains("WAITING") && t.contains("rewind approve"), "{t}");
    assert!(sb.rewind(&["deny"]).status.success());
    assert_eq!(run.output().status.code(), Some(1));
    let s = status(&sb);
    assert_eq!(s["state"], "idle", "{s:#}");
    assert_eq!(s["last_run"]["outcome"], "failed", "{s:#}");
}

#[test]
fn a_watch_is_seen_by_status_and_a_second_watch_is_refused() {
    let sb = Sandbox::new();
    let srv = Server::start();
    srv.route("/healthz", Reply::ok("ok"));
    let config = json!({
        "assess": {"op": {"call": "http-probe", "args": {"probe": {"url": srv.url("/healthz"), "timeout_ms": 30000}}}},
    });
    let doc = json!({
        "name": "watched", "state_dir": "state",
        "watch": {"period": "30ms", "timeout": "60s", "failure_threshold": 3, "success_threshold": 1, "cooldown": "0s"},
        "plugin": [{"name": "fx", "component": FIXTURE, "config": config, "grants": {"http": [srv.url("/")]}}],
    });
    sb.runbook(&toml::to_string(&doc).unwrap());
    let watch = sb.spawn(&["watch", "--json"]);
    assert!(wait_until(PATIENCE, || {
        status(&sb)["watch"]["status"]["rounds"]
            .as_u64()
            .is_some_and(|r| r >= 2)
    }));
    let s = status(&sb);
    assert_eq!(s["state"], "watching", "{s:#}");
    assert_eq!(s["watch"]["pid"], watch.pid());
    assert_eq!(s["watch"]["status"]["healthy"], true, "{s:#}");
    assert!(
        text(&sb.rewind(&["status"])).contains("rollbacks 0 started"),
        "{}",
        text(&sb.rewind(&["status"]))
    );

    let out = sb.rewind(&["watch", "--max-rounds", "1"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("already watches this runbook"),
        "{}",
        text(&out)
    );
    drop(watch);
    assert!(wait_until(PATIENCE, || status(&sb)["state"] == "idle"));
}

/// `[watch] metrics` and `metrics_file`: the endpoint is scraped over
/// loopback and both are parsed as the Prometheus text format.
#[test]
fn a_watch_exposes_prometheus_metrics_on_an_endpoint_and_a_textfile() {
    let sb = Sandbox::new();
    let srv = Server::start();
    srv.route("/healthz", Reply::status(500));
    let port = free_port();
    let config = json!({
        "assess": {"op": {"call": "http-probe", "args": {"probe": {"url": srv.url("/healthz"), "timeout_ms": 30000}}}},
        "steps": [{"id": "fix", "op": {"call": "request", "args": {"req": {"method": "POST", "url": srv.url("/rolled-back")}}}}],
        "verify": {"healthy": true},
    });
    let doc = json!({
        "name": "watched", "state_dir": "state",
        "watch": {"period": "30ms", "timeout": "60s", "failure_threshold": 2, "success_threshold": 1,
                  "cooldown": "0s", "metrics": format!("127.0.0.1:{port}"), "metrics_file": "textfile/rewind.prom"},
        "plugin": [{"name": "fx", "component": FIXTURE, "config": config, "grants": {"http": [srv.url("/")]}}],
    });
    std::fs::create_dir_all(sb.join("textfile")).unwrap();
    sb.runbook(&toml::to_string(&doc).unwrap());
    let _watch = sb.spawn(&["watch", "--json"]);

    let scrape = || -> Option<prometheus_parse::Scrape> {
        let body = reqwest::blocking::get(format!("http://127.0.0.1:{port}/metrics"))
            .ok()?
            .text()
            .ok()?;
        prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).ok()
    };
    let value = |s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>| {
        s.samples
            .iter()
            .find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
            .map(|x| match x.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    // A failing service: two failed rounds start a rollback, which the
    // fixture verifies; the counters say so.
    assert!(wait_until(PATIENCE, || scrape().is_some_and(|s| value(
        &s,
        "rewind_watch_rollbacks_finished_total",
        Some(("result", "succeeded"))
    ) == Some(
        1.0
    ))));
    let s = scrape().unwrap();
    assert_eq!(value(&s, "rewind_watch_up", None), Some(1.0));
    assert_eq!(
        value(&s, "rewind_watch_rollbacks_started_total", None),
        Some(1.0)
    );
    assert!(value(&s, "rewind_watch_rounds_total", None).unwrap() >= 2.0);
    assert!(
        value(
            &s,
            "rewind_watch_probe_failures_total",
            Some(("plugin", "fx"))
        )
        .unwrap()
            >= 2.0
    );
    assert!(value(&s, "rewind_watch_last_rollback_duration_seconds", None).unwrap() > 0.0);
    assert_eq!(value(&s, "rewind_approvals_waiting", None), Some(0.0));
    let sample = s
        .samples
        .iter()
        .find(|x| x.metric == "rewind_watch_up")
        .unwrap();
    assert_eq!(sample.labels.get("runbook"), Some("watched"));
    // Anything else is not found.
    let resp = reqwest::blocking::get(format!("http://127.0.0.1:{port}/")).unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    // The textfile holds the same series, written whole.
    let text = std::fs::read_to_string(sb.join("textfile/rewind.prom")).unwrap();
    let file = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert!(value(&file, "rewind_watch_rounds_total", None).unwrap() >= 2.0);
    assert_eq!(
        std::fs::read_dir(sb.join("textfile")).unwrap().count(),
        1,
        "no temporary file left beside it"
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(sb.join("textfile/rewind.prom"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644, "readable by node_exporter's user");
}
