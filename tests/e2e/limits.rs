//! A plugin that loops, exhausts memory or traps is stopped and reported;
//! the host lives on and writes its report and journal.

use serde_json::json;

use crate::util::*;

fn misbehave(call: &str) -> (i32, serde_json::Value, String, Sandbox) {
    let sb = Sandbox::new();
    let config = json!({"steps": [
        {"id": "bad", "op": {"call": call}},
        {"id": "after", "title": "never runs"},
    ]});
    sb.runbook(&fixture_runbook(&config, &json!({})));
    let started = std::time::Instant::now();
    let (code, report, stderr) = sb.run_json(&[]);
    // The budget is 2 s of guest time; the bound only says "it was
    // stopped at all", with room for a loaded machine's startup.
    assert!(
        started.elapsed() < PATIENCE,
        "{call} was not stopped in time"
    );
    (code, report, stderr, sb)
}

fn bad_step(report: &serde_json::Value) -> (String, String) {
    let steps = report["plugins"][0]["levels"][0]["steps"]
        .as_array()
        .unwrap();
    assert_eq!(
        steps[1]["status"], "skipped",
        "steps after a failure are skipped"
    );
    (
        steps[0]["status"].as_str().unwrap().into(),
        steps[0]["message"].as_str().unwrap().into(),
    )
}

#[test]
fn an_endless_loop_is_stopped_by_the_cpu_budget() {
    let (code, report, stderr, sb) = misbehave("loop");
    assert_eq!(code, 1, "{stderr}");
    let (status, msg) = bad_step(&report);
    assert_eq!(status, "failed");
    assert!(
        msg.contains("CPU time") && msg.contains("[limits] cpu"),
        "{msg}"
    );
    let journal = std::fs::read_to_string(report["journal"].as_str().unwrap()).unwrap();
    assert!(
        journal.lines().last().unwrap().contains("run-end"),
        "journal completed"
    );
    drop(sb);
}

#[test]
fn unbounded_allocation_is_stopped_by_the_memory_cap() {
    let (code, report, _, _sb) = misbehave("oom");
    assert_eq!(code, 1);
    let (_, msg) = bad_step(&report);
    assert!(msg.contains("memory") && msg.contains("64 MiB"), "{msg}");
}

#[test]
fn a_panic_is_reported_with_its_message() {
    let (code, report, _, _sb) = misbehave("trap");
    assert_eq!(code, 1);
    let (_, msg) = bad_step(&report);
    assert!(msg.contains("trapped"), "{msg}");
    assert!(
        msg.contains("panicked"),
        "the plugin's panic message is shown: {msg}"
    );
}
