//! Deny by default: every capability refused when not granted, with the
//! runbook line that would grant it; `..` and symlinks cannot escape.

use serde_json::{Value, json};

use crate::util::*;

fn cmd(program: &str) -> Value {
    json!({"program": program, "args": [], "cwd": null, "env": [], "stdin": null, "timeout_ms": 0})
}

#[test]
fn every_capability_is_denied_unless_granted() {
    let sb = Sandbox::new();
    let srv = Server::start();
    srv.route("/", Reply::ok("ok"));
    let victim = Proc::spawn(std::process::Command::new("sleep").arg("30"));
    let outside = sb.join("outside.txt");
    std::fs::write(&outside, "secret").unwrap();
    let db = sb.join("x.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("create table t(x)")
        .unwrap();
    let probe = json!({"url": srv.url("/"), "method": "", "headers": [], "expect_status": null, "body_contains": null, "timeout_ms": 500});
    let config = json!({"steps": [
        {"id": "http", "op": {"call": "request", "args": {"req": {"method": "GET", "url": srv.url("/"), "headers": [], "body": null, "timeout_ms": 500}}}},
        {"id": "probe", "op": {"call": "http-probe", "args": {"probe": probe}}},
        {"id": "tcp", "op": {"call": "tcp-probe", "args": {"host": "127.0.0.1", "port": srv.port, "timeout_ms": 500}}},
        {"id": "exec", "op": {"call": "run", "args": {"cmd": cmd("true")}}},
        {"id": "signal", "op": {"call": "signal", "args": {"pid": victim.pid(), "sig": "Term"}}},
        {"id": "stop-matching", "op": {"call": "stop-matching", "args": {"pattern": "sleep 30", "grace_ms": 10}}},
        {"id": "read", "op": {"call": "read-file", "args": {"path": outside}}},
        {"id": "write", "op": {"call": "write-file", "args": {"path": outside, "contents": "pwned"}}},
        {"id": "sqlite", "op": {"call": "sqlite-query", "args": {"db": db, "sql": "select 1", "params": []}}},
        {"id": "env", "op": {"call": "env", "args": {"name": "HOME"}}},
    ]});
    let text = fixture_runbook(&config, &json!({}));
    let grants_line = text
        .lines()
        .position(|l| l.contains("[plugin.grants]"))
        .map(|i| i + 1);
    let path = sb.runbook(&text);
    let (code, report, _) = sb.run_json(&[]);
    assert_eq!(
        code, 0,
        "on_failure only applies to failed steps; denied calls are values: {report}"
    );
    let r = step_results(&report);
    let expect = [
        ("http", "http"),
        ("probe", "http"),
        ("tcp", "tcp"),
        ("exec", "exec"),
        ("signal", "signal"),
        ("stop-matching", "signal"),
        ("read", "read"),
        ("write", "write"),
        ("sqlite", "sqlite"),
        ("env", "env"),
    ];
    for (id, cap) in expect {
        let d =
            denial(step(&r, id)).unwrap_or_else(|| panic!("{id} not denied: {:?}", step(&r, id)));
        assert_eq!(d["capability"], cap, "{id}: {d}");
        let hint = d["hint"].as_str().unwrap();
        assert!(hint.contains(&format!("add {cap} = [")), "{id}: {hint}");
        assert!(
            hint.contains(&format!(
                "plugin \"fx\" in {}",
                path.file_name().unwrap().to_string_lossy()
            )),
            "{id}: hint names the runbook: {hint}"
        );
        if let Some(line) = grants_line {
            assert!(
                hint.contains(&format!(":{line}")),
                "{id}: hint names the line: {hint}"
            );
        }
    }
    assert!(alive(victim.pid()), "the ungranted signal was not sent");
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "secret");
    assert!(
        srv.requests.lock().unwrap().is_empty(),
        "no request left the sandbox"
    );
}

#[test]
fn dotdot_and_symlinks_cannot_escape_a_grant() {
    let sb = Sandbox::new();
    let granted = sb.join("granted");
    std::fs::create_dir(&granted).unwrap();
    std::fs::write(sb.join("secret"), "secret").unwrap();
    std::os::unix::fs::symlink(sb.join("secret"), granted.join("link")).unwrap();
    std::os::unix::fs::symlink(sb.path(), granted.join("dirlink")).unwrap();
    let g = |s: &str| format!("{}/{s}", granted.display());
    let config = json!({"steps": [
        {"id": "dotdot", "op": {"call": "read-file", "args": {"path": g("../secret")}}},
        {"id": "symlink", "op": {"call": "read-file", "args": {"path": g("link")}}},
        {"id": "dirlink", "op": {"call": "write-file", "args": {"path": g("dirlink/secret"), "contents": "pwned"}}},
        {"id": "missing-dotdot", "op": {"call": "write-file", "args": {"path": g("new/../../secret"), "contents": "pwned"}}},
        {"id": "inside", "op": {"call": "write-file", "args": {"path": g("ok.txt"), "contents": "fine"}}},
    ]});
    sb.runbook(&fixture_runbook(&config, &json!({"write": [granted]})));
    let (_, report, _) = sb.run_json(&[]);
    let r = step_results(&report);
    for id in ["dotdot", "symlink", "dirlink", "missing-dotdot"] {
        assert!(
            step(&r, id).get("Err").is_some(),
            "{id} escaped: {:?}",
            step(&r, id)
        );
    }
    assert!(
        denial(step(&r, "symlink")).unwrap()["resource"]
            .as_str()
            .unwrap()
            .contains("resolves to")
    );
    assert!(step(&r, "inside").get("Ok").is_some());
    assert_eq!(
        std::fs::read_to_string(sb.join("secret")).unwrap(),
        "secret"
    );
}

#[test]
fn the_state_directory_is_out_of_reach_even_inside_a_grant() {
    let sb = Sandbox::new();
    let journal_dir = sb.join("state/runs");
    let config = json!({"steps": [
        {"id": "list", "op": {"call": "list-dir", "args": {"path": journal_dir, "recursive": false}}},
        {"id": "forge", "op": {"call": "write-file", "args": {"path": journal_dir.join("forged.jsonl"), "contents": "{}"}}},
    ]});
    // Read on the whole directory (a write grant holding the state
    // directory is refused at load: see hostile_paths).
    let work = sb.join("work");
    std::fs::create_dir(&work).unwrap();
    sb.runbook(&fixture_runbook(
        &config,
        &json!({"read": [sb.path()], "write": [work]}),
    ));
    let (_, report, _) = sb.run_json(&[]);
    let r = step_results(&report);
    for id in ["list", "forge"] {
        let err = step(&r, id)["Err"]["Invalid"]
            .as_str()
            .unwrap_or_else(|| panic!("{id}: {:?}", step(&r, id)));
        assert!(err.contains("state directory"), "{err}");
    }
    assert!(!journal_dir.join("forged.jsonl").exists());
}
