//! Every host import, called by a real plugin through the real CLI.

use serde_json::json;

use crate::util::*;

#[test]
fn health_probes_measure_and_judge() {
    let sb = Sandbox::new();
    let srv = Server::start();
    srv.route("/healthz", Reply::ok("ok 1.0.0"));
    srv.route("/broken", Reply::status(503));
    // Answers only after PATIENCE: a probe that returns at all before that
    // gave up on its own timeout, however slow the machine.
    srv.route(
        "/slow",
        Reply {
            status: 200,
            body: "late".into(),
            delay: PATIENCE,
        },
    );
    let closed = free_port();
    let probe = |path: &str, extra: serde_json::Value| {
        let mut p = json!({"url": srv.url(path), "method": "", "headers": [], "expect_status": null, "body_contains": null, "timeout_ms": 30000});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    let config = json!({"steps": [
        {"id": "ok", "op": {"call": "http-probe", "args": {"probe": probe("/healthz", json!({}))}}},
        {"id": "503", "op": {"call": "http-probe", "args": {"probe": probe("/broken", json!({}))}}},
        {"id": "body", "op": {"call": "http-probe", "args": {"probe": probe("/healthz", json!({"body_contains": "2.0.0"}))}}},
        {"id": "range", "op": {"call": "http-probe", "args": {"probe": probe("/broken", json!({"expect_status": {"min": 500, "max": 503}}))}}},
        {"id": "timeout", "op": {"call": "http-probe", "args": {"probe": probe("/slow", json!({"timeout_ms": 200}))}}},
        {"id": "tcp-open", "op": {"call": "tcp-probe", "args": {"host": "127.0.0.1", "port": srv.port, "timeout_ms": 30000}}},
        {"id": "tcp-closed", "op": {"call": "tcp-probe", "args": {"host": "127.0.0.1", "port": closed, "timeout_ms": 30000}}},
        {"id": "system", "op": {"call": "system", "args": {}}},
        {"id": "disk", "op": {"call": "disk", "args": {"path": sb.path()}}},
        {"id": "delete", "op": {"call": "http-probe", "args": {"probe": probe("/healthz", json!({"method": "DELETE"}))}}},
    ]});
    let grants = json!({"http": [srv.url("/")], "tcp": [format!("127.0.0.1:{}", srv.port), format!("127.0.0.1:{closed}")]});
    sb.runbook(&fixture_runbook(&config, &grants));
    let (code, report, stderr) = sb.run_json(&[]);
    let r = step_results(&report);
    assert_eq!(step(&r, "ok")["Ok"]["healthy"], true, "{stderr}");
    assert_eq!(step(&r, "ok")["Ok"]["status"], 200);
    assert!(
        step(&r, "ok")["Ok"]["body"]
            .as_str()
            .unwrap()
            .contains("1.0.0")
    );
    assert!(step(&r, "ok")["Ok"]["latency_us"].as_u64().unwrap() > 0);
    assert_eq!(step(&r, "503")["Ok"]["healthy"], false);
    assert_eq!(step(&r, "503")["Ok"]["status"], 503);
    assert_eq!(
        step(&r, "body")["Ok"]["healthy"],
        false,
        "body-contains must be checked"
    );
    assert_eq!(
        step(&r, "range")["Ok"]["healthy"],
        true,
        "custom status range"
    );
    let t = &step(&r, "timeout")["Ok"];
    assert_eq!(t["healthy"], false);
    // At least the 200 ms asked for, and well before the answer.
    let waited = t["latency_us"].as_u64().unwrap();
    assert!(
        (200_000..PATIENCE.as_micros() as u64 / 2).contains(&waited),
        "timeout honoured: {t}"
    );
    assert_eq!(step(&r, "tcp-open")["Ok"]["healthy"], true);
    assert_eq!(step(&r, "tcp-closed")["Ok"]["healthy"], false);
    let sys = &step(&r, "system")["Ok"];
    assert!(
        sys["memory_total_bytes"].as_u64().unwrap() > sys["memory_used_bytes"].as_u64().unwrap()
    );
    assert!(step(&r, "disk")["Ok"]["total_bytes"].as_u64().unwrap() > 0);
    // Probes run even in dry runs, so they may only observe.
    assert!(
        step(&r, "delete")["Err"]["Invalid"]
            .as_str()
            .unwrap()
            .contains("GET, HEAD or OPTIONS")
    );
    assert!(!srv.methods().iter().any(|m| m.starts_with("DELETE")));
    assert_eq!(code, 0, "{report}");
}

#[test]
fn wait_healthy_polls_until_the_service_answers() {
    let sb = Sandbox::new();
    let srv = Server::start();
    // Three failures, then healthy for good: the host must keep polling.
    srv.script("/healthz", &[503, 503, 503, 200]);
    // The timeouts are failure bounds: a probe that timed out on a loaded
    // machine would count as one more failed attempt.
    let policy = json!({"interval_ms": 50, "timeout_ms": 120000, "success_threshold": 2, "failure_threshold": 0});
    let target = json!({"Http": {"url": srv.url("/healthz"), "method": "GET", "headers": [], "expect_status": null, "body_contains": null, "timeout_ms": 30000}});
    let config = json!({"steps": [{"id": "wait", "op": {"call": "wait-healthy", "args": {"target": target, "policy": policy}}}]});
    sb.runbook(&fixture_runbook(&config, &json!({"http": [srv.url("/")]})));
    let (_, report, stderr) = sb.run_json(&[]);
    let r = step_results(&report);
    let w = &step(&r, "wait")["Ok"];
    assert_eq!(w["healthy"], true, "{w} {stderr}");
    assert_eq!(
        w["attempts"], 5,
        "3 failures, then 2 successes in a row: {w}"
    );
    assert!(
        w["elapsed_ms"].as_u64().unwrap() >= 200,
        "polled at the interval: {w}"
    );

    // A service that never comes back: the failure threshold ends the wait.
    let srv = Server::start();
    srv.route("/healthz", Reply::status(500));
    let policy = json!({"interval_ms": 20, "timeout_ms": 120000, "success_threshold": 1, "failure_threshold": 3});
    let target = json!({"Http": {"url": srv.url("/healthz"), "timeout_ms": 30000}});
    let config = json!({"steps": [{"id": "wait", "op": {"call": "wait-healthy", "args": {"target": target, "policy": policy}}}]});
    sb.runbook(&fixture_runbook(&config, &json!({"http": [srv.url("/")]})));
    let (_, report, _) = sb.run_json(&[]);
    let w = &step(&step_results(&report), "wait")["Ok"].clone();
    assert_eq!(w["healthy"], false);
    assert_eq!(w["attempts"], 3, "{w}");
}

#[test]
fn processes_are_counted_by_pattern() {
    let sb = Sandbox::new();
    let marker = format!("{}/marker-xyz", sb.path().display());
    let _a = Proc::spawn(
        std::process::Command::new("sleep")
            .arg("30")
            .arg("--")
            .arg(&marker)
            .env("X", "1"),
    );
    // `sleep` ignores extra args on some systems; use sh to keep the marker in argv.
    let _b = Proc::spawn(std::process::Command::new("sh").args(["-c", "sleep 30", &marker]));
    let _c = Proc::spawn(std::process::Command::new("sh").args(["-c", "sleep 30", &marker]));
    // spawn returns once sh is exec'd with the marker in its argv.
    assert!(wait_until(PATIENCE, || {
        let seen = pids_with_arg(&marker);
        seen.contains(&_b.pid()) && seen.contains(&_c.pid())
    }));
    let config =
        json!({"steps": [{"id": "ps", "op": {"call": "processes", "args": {"pattern": marker}}}]});
    sb.runbook(&fixture_runbook(&config, &json!({})));
    let (_, report, _) = sb.run_json(&[]);
    let ps = &step(&step_results(&report), "ps")["Ok"].clone();
    assert!(ps["count"].as_u64().unwrap() >= 2, "{ps}");
    let pids: Vec<u64> = ps["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert!(
        pids.contains(&(_b.pid() as u64)) && pids.contains(&(_c.pid() as u64)),
        "{ps}"
    );
    assert!(ps["rss_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn commands_run_with_args_cwd_env_stdin_and_are_killed_on_timeout() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.join("work")).unwrap();
    let pidfile = sb.join("grandchild.pid");
    let cmd = |args: serde_json::Value| json!({"program": "sh", "args": args, "cwd": sb.join("work"), "env": [["GREETING", "hello"]], "stdin": "from stdin", "timeout_ms": 0});
    let mut slow = cmd(json!([
        "-c",
        format!("sleep 300 & echo $! > {}; wait", pidfile.display())
    ]));
    // The timeout must fire after sh started its grandchild, which a
    // loaded machine can delay past any fixed timeout: start at 500 ms and
    // double it until the grandchild's pid file was written in time.
    let mut timeout_ms = 500;
    let (report, stderr) = loop {
        slow["timeout_ms"] = json!(timeout_ms);
        let config = json!({"steps": [
            {"id": "echo", "op": {"call": "run", "args": {"cmd": cmd(json!(["-c", "echo $GREETING; pwd; cat; echo err >&2; exit 3"]))}}},
            {"id": "slow", "op": {"call": "run", "args": {"cmd": slow.clone()}}},
        ]});
        sb.runbook(&fixture_runbook(
            &config,
            &json!({"exec": ["sh"], "read": [sb.path()], "child_env": ["GREETING"]}),
        ));
        let (_, report, stderr) = sb.run_json(&[]);
        if pidfile.exists() || timeout_ms >= 32_000 {
            break (report, stderr);
        }
        timeout_ms *= 2;
    };
    let r = step_results(&report);
    let out = &step(&r, "echo")["Ok"];
    assert_eq!(out["exit_code"], 3, "{out} {stderr}");
    let stdout = out["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("hello\n"), "{stdout}");
    assert!(stdout.contains("/work\n"), "cwd: {stdout}");
    assert!(stdout.contains("from stdin"), "{stdout}");
    assert_eq!(out["stderr"], "err\n");
    assert_eq!(out["simulated"], false);
    let slow = &step(&r, "slow")["Err"]["Timeout"];
    assert!(
        slow.as_str().unwrap().contains(&timeout_ms.to_string()),
        "{slow}"
    );
    let grandchild: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_until(PATIENCE, || !alive(grandchild)),
        "the whole process group is killed"
    );
}

#[test]
fn daemons_are_spawned_signalled_and_stopped() {
    let sb = Sandbox::new();
    let tag = format!("rewind-test-daemon-{}", std::process::id());
    let script = sb.join("daemon.sh");
    // "started" is its ready signal: written once the HUP trap is set, so
    // the HUP below cannot arrive before it (and kill it).
    std::fs::write(&script, format!("#!/bin/sh\n# {tag}\ntrap 'echo got-hup' HUP\necho started\nwhile true; do sleep 0.05; done\n")).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let spawn = json!({"cmd": {"program": script, "args": [&tag], "cwd": null, "env": [], "stdin": null, "timeout_ms": 0}, "log_path": sb.join("logs/daemon.log")});
    let config = json!({"steps": [{"id": "spawn", "op": {"call": "spawn", "args": spawn}}]});
    let grants = json!({"exec": [script], "write": [sb.join("logs")], "signal": [tag]});
    sb.runbook(&fixture_runbook(&config, &grants));
    let (code, report, stderr) = sb.run_json(&[]);
    assert_eq!(code, 0, "{report} {stderr}");
    let pid = step(&step_results(&report), "spawn")["Ok"]
        .as_u64()
        .unwrap() as u32;
    struct Reap(u32);
    impl Drop for Reap {
        fn drop(&mut self) {
            kill_pid(self.0);
        }
    }
    let _reap = Reap(pid);
    assert!(alive(pid), "the daemon outlives rewind");
    assert!(wait_until(PATIENCE, || {
        std::fs::read_to_string(sb.join("logs/daemon.log"))
            .unwrap_or_default()
            .contains("started")
    }));

    // Signal it (granted by pattern); it handles the HUP.
    let config = json!({"steps": [{"id": "hup", "op": {"call": "signal", "args": {"pid": pid, "sig": "Hup"}}}]});
    sb.runbook(&fixture_runbook(&config, &grants));
    let (code, report, stderr) = sb.run_json(&[]);
    assert_eq!(code, 0, "{report} {stderr}");
    assert!(
        step(&step_results(&report), "hup").get("Ok").is_some(),
        "{report}"
    );
    assert!(wait_until(PATIENCE, || {
        std::fs::read_to_string(sb.join("logs/daemon.log"))
            .unwrap_or_default()
            .contains("got-hup")
    }));

    // Then stop everything matching the granted pattern.
    let config = json!({"steps": [{"id": "stop", "op": {"call": "stop-matching", "args": {"pattern": tag, "grace_ms": 2000}}}]});
    sb.runbook(&fixture_runbook(&config, &grants));
    let (code, report, stderr) = sb.run_json(&[]);
    assert_eq!(code, 0, "{report} {stderr}");
    // The daemon, and perhaps a child it had just forked to run `sleep`
    // (a fork has its parent's command line until it execs).
    let stopped = step(&step_results(&report), "stop")["Ok"].as_u64();
    assert!(matches!(stopped, Some(1 | 2)), "{report}");
    assert!(wait_until(PATIENCE, || !alive(pid)));
}

#[test]
fn stop_escalates_to_kill_after_the_grace() {
    let sb = Sandbox::new();
    let tag = format!("rewind-test-stubborn-{}", std::process::id());
    // It says it is ready once TERM is ignored: a TERM sent before that
    // would kill it and no KILL would be needed.
    let ready = sb.join("stubborn.ready");
    let child = Proc::spawn(std::process::Command::new("sh").args([
        "-c",
        &format!(
            "trap '' TERM; touch {}; while true; do sleep 0.05; done",
            ready.display()
        ),
        &tag,
    ]));
    let pid = child.pid();
    assert!(
        wait_until(PATIENCE, || ready.exists()),
        "the stubborn child is ready"
    );
    let config = json!({"steps": [{"id": "stop", "op": {"call": "stop", "args": {"pid": pid, "grace_ms": 300}}}]});
    sb.runbook(&fixture_runbook(&config, &json!({"signal": [tag]})));
    let (_, report, _) = sb.run_json(&[]);
    assert_eq!(
        step(&step_results(&report), "stop")["Ok"],
        true,
        "needed KILL: {report}"
    );
    let mut child = child;
    assert!(wait_until(PATIENCE, || child
        .0
        .try_wait()
        .unwrap()
        .is_some()));
}

#[test]
fn storage_kv_files_and_sqlite() {
    let sb = Sandbox::new();
    let data = sb.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("a.txt"), "alpha").unwrap();
    let db = data.join("app.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("create table t(id integer primary key, name text); insert into t(name) values ('x'), ('y');").unwrap();
    drop(conn);
    let p = |s: &str| data.join(s);
    let config = json!({"steps": [
        {"id": "set", "op": {"call": "set", "args": {"key": "target", "value": "1.0.0"}}},
        {"id": "write", "op": {"call": "write-file", "args": {"path": p("b.txt"), "contents": "bravo"}}},
        {"id": "copy", "op": {"call": "copy", "args": {"source": p("a.txt"), "target": p("c.txt")}}},
        {"id": "rename", "op": {"call": "rename", "args": {"source": p("c.txt"), "target": p("d.txt")}}},
        {"id": "mkdir", "op": {"call": "make-dir", "args": {"path": p("sub/deeper")}}},
        {"id": "link", "op": {"call": "symlink", "args": {"target": p("a.txt"), "link": p("current")}}},
        {"id": "readlink", "op": {"call": "read-link", "args": {"path": p("current")}}},
        {"id": "read", "op": {"call": "read-file", "args": {"path": p("d.txt")}}},
        {"id": "list", "op": {"call": "list-dir", "args": {"path": data, "recursive": true}}},
        {"id": "stat-missing", "op": {"call": "stat", "args": {"path": p("nope")}}},
        {"id": "remove", "op": {"call": "remove", "args": {"path": p("sub")}}},
        {"id": "exec", "op": {"call": "sqlite-exec", "args": {"db": db, "sql": "insert into t(name) values ('z'); update t set name = 'w' where id = 1;"}}},
        {"id": "query", "op": {"call": "sqlite-query", "args": {"db": db, "sql": "select count(*), max(name) from t where id > ?", "params": [{"Integer": 0}]}}},
        {"id": "query-write", "op": {"call": "sqlite-query", "args": {"db": db, "sql": "delete from t", "params": []}}},
        {"id": "backup", "op": {"call": "sqlite-backup", "args": {"db": db, "target": p("backup.db")}}},
    ]});
    let grants = json!({"write": [data], "sqlite": [db]});
    sb.runbook(&fixture_runbook(&config, &grants));
    let (_, report, stderr) = sb.run_json(&[]);
    let r = step_results(&report);
    for id in [
        "set", "write", "copy", "rename", "mkdir", "link", "remove", "exec", "backup",
    ] {
        assert!(
            step(&r, id).get("Ok").is_some(),
            "{id}: {:?} {stderr}",
            step(&r, id)
        );
    }
    assert_eq!(std::fs::read_to_string(p("b.txt")).unwrap(), "bravo");
    assert_eq!(std::fs::read_to_string(p("d.txt")).unwrap(), "alpha");
    assert!(!p("c.txt").exists());
    assert_eq!(std::fs::read_link(p("current")).unwrap(), p("a.txt"));
    assert!(
        step(&r, "readlink")["Ok"]
            .as_str()
            .unwrap()
            .ends_with("a.txt")
    );
    assert!(
        step(&r, "read")["Ok"].to_string().contains("alpha") || step(&r, "read")["Ok"].is_array()
    );
    assert!(step(&r, "list")["Ok"].to_string().contains("deeper"));
    assert!(step(&r, "stat-missing")["Ok"].is_null());
    assert!(!p("sub").exists());
    let q = &step(&r, "query")["Ok"];
    assert_eq!(q["rows"][0][0]["Integer"], 3, "{q}");
    assert_eq!(q["rows"][0][1]["Text"], "z", "{q}");
    assert!(
        step(&r, "query-write").get("Err").is_some(),
        "queries are read-only"
    );
    let backup = rusqlite::Connection::open(p("backup.db")).unwrap();
    let n: i64 = backup
        .query_row("select count(*) from t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 3);
    // No temporary files left behind by the atomic writes.
    let leftovers: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Key-value state lasts across runs.
    let config = json!({"steps": [{"id": "get", "op": {"call": "get", "args": {"key": "target"}}}, {"id": "keys", "op": {"call": "keys", "args": {"prefix": "tar"}}}]});
    sb.runbook(&fixture_runbook(&config, &grants));
    let (_, report, _) = sb.run_json(&[]);
    let r = step_results(&report);
    assert_eq!(step(&r, "get")["Ok"], "1.0.0");
    assert_eq!(step(&r, "keys")["Ok"], json!(["target"]));
}

#[test]
fn snapshots_restore_exact_bytes_and_refuse_corruption() {
    let sb = Sandbox::new();
    let site = sb.join("site");
    std::fs::create_dir_all(site.join("conf")).unwrap();
    std::fs::write(site.join("conf/app.env"), "MODE=good\n").unwrap();
    std::fs::write(site.join("index.html"), "v1").unwrap();
    let grants = json!({"write": [site]});
    let config = json!({"steps": [{"id": "snap", "op": {"call": "snapshot", "args": {"label": "pre", "paths": [site]}}}]});
    sb.runbook(&fixture_runbook(&config, &grants));
    let (_, report, stderr) = sb.run_json(&[]);
    let snap = step(&step_results(&report), "snap")["Ok"].clone();
    let id = snap["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{report} {stderr}"))
        .to_string();
    assert_eq!(snap["files"], 2, "{snap}");
    let before = tree(&site);

    // Break the site, then restore.
    std::fs::write(site.join("conf/app.env"), "MODE=broken\n").unwrap();
    std::fs::write(site.join("extra"), "junk").unwrap();
    let config = json!({"steps": [
        {"id": "verify", "fail_on_err": true, "op": {"call": "verify", "args": {"id": id}}},
        {"id": "restore", "fail_on_err": true, "op": {"call": "restore", "args": {"id": id}}},
        {"id": "list", "op": {"call": "list-snapshots", "args": {"label_prefix": "pre"}}},
    ]});
    sb.runbook(&fixture_runbook(&config, &grants));
    let (code, report, stderr) = sb.run_json(&[]);
    assert_eq!(code, 0, "{report} {stderr}");
    assert_eq!(
        tree(&site),
        before,
        "restore brings back exactly what was snapshotted"
    );
    assert_eq!(
        step(&step_results(&report), "list")["Ok"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A corrupted archive is refused and the current files stay.
    let archive = std::fs::read_dir(sb.join("state/snapshots/fx"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .unwrap();
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&archive, bytes).unwrap();
    std::fs::write(site.join("index.html"), "v2-current").unwrap();
    let current = tree(&site);
    let (code, report, _) = sb.run_json(&[]);
    let r = step_results(&report);
    assert_ne!(code, 0);
    assert!(step(&r, "verify").get("Err").is_some(), "{r:?}");
    assert_eq!(
        tree(&site),
        current,
        "a failed restore leaves the old files in place"
    );

    // Prune keeps the newest.
    let config = json!({"steps": [
        {"id": "s1", "op": {"call": "snapshot", "args": {"label": "daily", "paths": [site]}}},
        {"id": "s2", "op": {"call": "snapshot", "args": {"label": "daily", "paths": [site]}}},
        {"id": "s3", "op": {"call": "snapshot", "args": {"label": "daily", "paths": [site]}}},
        {"id": "prune", "op": {"call": "prune", "args": {"label_prefix": "daily", "keep": 1}}},
        {"id": "list", "op": {"call": "list-snapshots", "args": {"label_prefix": "daily"}}},
    ]});
    sb.runbook(&fixture_runbook(&config, &grants));
    let (_, report, _) = sb.run_json(&[]);
    let r = step_results(&report);
    assert_eq!(step(&r, "prune")["Ok"], 2);
    let left = step(&r, "list")["Ok"].as_array().unwrap().clone();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"], step(&r, "s3")["Ok"]["id"]);
}

#[test]
fn http_requests_and_logs_reach_the_server_and_the_journal() {
    let sb = Sandbox::new();
    let srv = Server::start();
    srv.route("/api/pause", Reply::ok("{\"paused\":true}"));
    let config = json!({"steps": [
        {"id": "post", "op": {"call": "request", "args": {"req": {"method": "POST", "url": srv.url("/api/pause"), "headers": [["content-type", "application/json"]], "body": "{\"all\":true}", "timeout_ms": 2000}}}},
        {"id": "log", "op": {"call": "log", "args": {"level": "Warn", "message": "queues paused by rewind"}}},
    ]});
    sb.runbook(&fixture_runbook(
        &config,
        &json!({"http": [srv.url("/api/")]}),
    ));
    let (code, report, stderr) = sb.run_json(&[]);
    assert_eq!(code, 0, "{report} {stderr}");
    let r = step_results(&report);
    assert_eq!(step(&r, "post")["Ok"]["status"], 200);
    assert!(
        step(&r, "post")["Ok"]["body"]
            .as_str()
            .unwrap()
            .contains("paused")
    );
    let reqs = srv.requests.lock().unwrap().clone();
    assert_eq!(
        reqs,
        vec![(
            "POST".to_string(),
            "/api/pause".to_string(),
            "{\"all\":true}".to_string()
        )]
    );
    let journal = std::fs::read_to_string(report["journal"].as_str().unwrap()).unwrap();
    assert!(
        journal.contains("queues paused by rewind"),
        "plugin logs land in the journal"
    );
}
