//! Whole runs through the CLI: dry runs change nothing, the journal, the
//! lock, escalation, on_failure, manual steps, check, history and show.

use serde_json::json;
use std::process::{Command, Stdio};

use crate::util::*;

#[test]
fn a_dry_run_executes_no_side_effect_whatever_the_plugin_asks() {
    let sb = Sandbox::new();
    let srv = Server::start();
    srv.route("/", Reply::ok("ok"));
    let site = sb.join("site");
    std::fs::create_dir(&site).unwrap();
    std::fs::write(site.join("keep.txt"), "original").unwrap();
    let db = site.join("app.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("create table t(x); insert into t values (1);")
        .unwrap();
    let victim = Proc::spawn(Command::new("sh").args(["-c", "sleep 30", "rewind-dry-victim"]));
    let marker = sb.join("ran");
    // A spawned daemon would still be running when rewind exits (spawn
    // returns once it is exec'd): looking for it needs no waiting.
    let spawned_tag = format!("rewind-dry-spawned-{}", std::process::id());
    let run = |args: serde_json::Value| json!({"program": "sh", "args": args, "cwd": null, "env": [], "stdin": null, "timeout_ms": 0});
    let config = json!({"steps": [
        {"id": "run", "op": {"call": "run", "args": {"cmd": run(json!(["-c", format!("touch {}", marker.display())]))}}},
        {"id": "spawn", "op": {"call": "spawn", "args": {"cmd": run(json!(["-c", format!("touch {}.spawned; sleep 30", marker.display()), spawned_tag])), "log_path": site.join("d.log")}}},
        {"id": "stop", "op": {"call": "stop-matching", "args": {"pattern": "rewind-dry-victim", "grace_ms": 100}}},
        {"id": "write", "op": {"call": "write-file", "args": {"path": site.join("keep.txt"), "contents": "changed"}}},
        {"id": "remove", "op": {"call": "remove", "args": {"path": site.join("keep.txt")}}},
        {"id": "snapshot", "op": {"call": "snapshot", "args": {"label": "pre", "paths": [site]}}},
        {"id": "set", "op": {"call": "set", "args": {"key": "k", "value": "v"}}},
        {"id": "get", "op": {"call": "get", "args": {"key": "k"}}},
        {"id": "sql", "op": {"call": "sqlite-exec", "args": {"db": db, "sql": "delete from t"}}},
        {"id": "post", "op": {"call": "request", "args": {"req": {"method": "POST", "url": srv.url("/x"), "headers": [], "body": "x", "timeout_ms": 1000}}}},
        {"id": "get-http", "op": {"call": "request", "args": {"req": {"method": "GET", "url": srv.url("/x"), "headers": [], "body": null, "timeout_ms": 1000}}}},
    ]});
    let grants = json!({"exec": ["sh"], "write": [site], "sqlite": [db], "signal": ["rewind-dry-victim"], "http": [srv.url("/")]});
    sb.runbook(&fixture_runbook(&config, &grants));
    let before = tree(&site);
    let (code, report, stderr) = sb.run_json(&["--dry-run"]);
    assert_eq!(code, 0, "{report} {stderr}");
    assert_eq!(report["outcome"], "simulated");
    // `run` is synchronous: it would have finished before rewind exited.
    assert!(!marker.exists(), "run was not executed");
    let spawned = pids_with_arg(&spawned_tag);
    for pid in &spawned {
        kill_pid(*pid);
    }
    assert_eq!(spawned, Vec::<u32>::new(), "spawn was not executed");
    assert!(!sb.join("ran.spawned").exists(), "spawn was not executed");
    assert!(alive(victim.pid()), "no process was stopped");
    assert_eq!(tree(&site), before, "no file changed");
    assert!(
        !sb.join("state/snapshots").exists()
            || std::fs::read_dir(sb.join("state/snapshots/fx"))
                .map(|d| d.count())
                .unwrap_or(0)
                == 0
    );
    assert_eq!(
        srv.methods(),
        vec!["GET /x"],
        "only the read-only request was sent"
    );
    let r = step_results(&report);
    assert_eq!(step(&r, "run")["Ok"]["simulated"], true);
    assert_eq!(
        step(&r, "get")["Ok"],
        "v",
        "the dry run sees its own key-value writes"
    );
    // Every side effect is listed as "would".
    let actions: Vec<String> = report["plugins"][0]["levels"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["actions"].as_array().unwrap().clone())
        .map(|a| {
            assert_eq!(a["executed"], false);
            a["what"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(actions.len() >= 9, "{actions:?}");
    // And the kv write did not persist.
    let config = json!({"steps": [{"id": "get", "op": {"call": "get", "args": {"key": "k"}}}]});
    sb.runbook(&fixture_runbook(&config, &grants));
    let (_, report, _) = sb.run_json(&[]);
    assert!(step(&step_results(&report), "get")["Ok"].is_null());
}

#[test]
fn the_journal_records_every_event_and_history_and_show_read_it() {
    let sb = Sandbox::new();
    let config = json!({"steps": [{"id": "one", "op": {"call": "log", "args": {"level": "Info", "message": "step one ran"}}}, {"id": "two"}]});
    sb.runbook(&fixture_runbook(&config, &json!({})));
    let (code, report, _) = sb.run_json(&[]);
    assert_eq!(code, 0);
    let run_id = report["run_id"].as_str().unwrap().to_string();
    let journal = std::fs::read_to_string(report["journal"].as_str().unwrap()).unwrap();
    let events: Vec<String> = journal
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let expected = [
        "run-start",
        "plugin-loaded",
        "assessment",
        "plan",
        "step-start",
        "log",
        "step-end",
        "step-start",
        "step-end",
        "verification",
        "plugin-end",
        "run-end",
    ];
    assert_eq!(events, expected);

    let out = sb.rewind(&["history"]);
    let listing = text(&out);
    assert!(out.status.success(), "{listing}");
    assert!(
        listing.contains(&run_id) && listing.contains("rolled-back"),
        "{listing}"
    );
    let out = sb.rewind(&["show", &run_id[..run_id.len() - 2]]);
    let timeline = text(&out);
    assert!(out.status.success(), "{timeline}");
    for needle in [
        "step one started",
        "log info: step one ran",
        "step two ok",
        "verify: healthy",
        "end: rolled-back",
    ] {
        assert!(
            timeline.contains(needle),
            "{needle:?} missing from:\n{timeline}"
        );
    }
    let out = sb.rewind(&["show", "nosuchrun"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_second_run_is_refused_while_the_first_holds_the_lock() {
    let sb = Sandbox::new();
    // The first run holds the lock until the test opens this port: it
    // waits for it (the timeout is only a failure bound), so the second
    // run is tried while the first surely still runs, however slow.
    let gate = free_port();
    let policy = json!({"interval_ms": 100, "timeout_ms": 120000, "success_threshold": 1, "failure_threshold": 0});
    let target = json!({"Tcp": ["127.0.0.1", gate, 5000]});
    let config = json!({"steps": [{"id": "wait", "op": {"call": "wait-healthy", "args": {"target": target, "policy": policy}}}]});
    sb.runbook(&fixture_runbook(
        &config,
        &json!({"tcp": [format!("127.0.0.1:{gate}")]}),
    ));
    let mut first = Proc::spawn(
        Command::new(REWIND)
            .args(["run", "-q"])
            .current_dir(sb.path())
            .env("REWIND_LOCK_DIR", sb.path().join("state/locks"))
            .env("REWIND_CACHE_DIR", cache_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    assert!(wait_until(PATIENCE, || {
        std::fs::read_to_string(sb.join("state/lock"))
            .unwrap_or_default()
            .contains("run ")
    }));
    let holder = std::fs::read_to_string(sb.join("state/lock")).unwrap();
    let (run_and_pid, _) = holder.split_once(", since ").unwrap();
    let out = sb.rewind(&["run"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{run_and_pid}, running)")),
        "says which run holds it, and that it is running: {}",
        text(&out)
    );
    // History tells the run in progress from an interrupted one.
    let out = sb.rewind(&["history"]);
    assert!(text(&out).contains("running"), "{}", text(&out));
    assert!(!text(&out).contains("interrupted"), "{}", text(&out));
    let _open = std::net::TcpListener::bind(("127.0.0.1", gate)).unwrap();
    let status = first.0.wait().unwrap();
    assert!(status.success(), "the first run finished undisturbed");
    let out = sb.rewind(&["history"]);
    assert!(!text(&out).contains("running"), "{}", text(&out));
    let out = sb.rewind(&["run", "-q"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the lock is free again: {}",
        text(&out)
    );
}

#[test]
fn a_level_that_does_not_verify_escalates_to_the_next() {
    let sb = Sandbox::new();
    let config = json!({
        "levels": [1, 2, 3],
        "steps": [{"id": "toggle", "level": 1}, {"id": "code", "level": 2}, {"id": "restore", "level": 3}],
        "verify": {"by_level": {"1": false, "2": true, "3": true}},
    });
    sb.runbook(&fixture_runbook(&config, &json!({})));
    let (code, report, _) = sb.run_json(&[]);
    assert_eq!(code, 0, "{report}");
    let levels = report["plugins"][0]["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 2);
    assert_eq!(levels[0]["level"], 1);
    assert_eq!(levels[0]["verification"]["healthy"], false);
    assert_eq!(levels[1]["level"], 2);
    assert_eq!(levels[1]["steps"][0]["id"], "code");
    assert_eq!(report["outcome"], "rolled-back");

    // Never verifies: fails after the last level.
    let config = json!({"levels": [1, 2], "steps": [{"id": "a"}], "verify": {"healthy": false}});
    sb.runbook(&fixture_runbook(&config, &json!({})));
    let (code, report, _) = sb.run_json(&[]);
    assert_eq!(code, 1);
    assert_eq!(report["plugins"][0]["levels"].as_array().unwrap().len(), 2);
    assert!(
        report["plugins"][0]["error"]
            .as_str()
            .unwrap()
            .contains("verification failed after level 2")
    );

    // The plugin's judgement: go straight to level 3, or stop and hand
    // over (a higher level would do harm).
    let config = json!({
        "levels": [1, 2, 3],
        "steps": [{"id": "toggle", "level": 1}, {"id": "code", "level": 2}, {"id": "restore", "level": 3}],
        "verify": {"by_level": {"1": false, "3": true}, "escalation": "3"},
    });
    sb.runbook(&fixture_runbook(&config, &json!({})));
    let (code, report, _) = sb.run_json(&[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(level_numbers(&report), [1, 3], "{report}");
    let config = json!({
        "levels": [1, 2],
        "steps": [{"id": "toggle", "level": 1}, {"id": "prune", "level": 2}],
        "verify": {"healthy": false, "escalation": "stop: the restore failed; pruning now would lose the last good backup"},
    });
    sb.runbook(&fixture_runbook(&config, &json!({})));
    let (code, report, _) = sb.run_json(&[]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(level_numbers(&report), [1], "never escalated: {report}");
    let error = report["plugins"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("says not to escalate") && error.contains("pruning now"),
        "{error}"
    );
}

#[test]
fn on_failure_stop_skips_the_rest_and_continue_does_not() {
    let sb = Sandbox::new();
    for (policy, second) in [("stop", "skipped"), ("continue", "rolled-back")] {
        let doc = json!({
            "name": "two", "state_dir": "state",
            "plugin": [
                {"name": "first", "component": FIXTURE, "on_failure": policy, "config": {"steps": [{"id": "x", "fail": true}]}},
                {"name": "second", "component": FIXTURE, "config": {"steps": [{"id": "y"}]}},
            ],
        });
        sb.runbook(&toml::to_string(&doc).unwrap());
        let (code, report, _) = sb.run_json(&[]);
        assert_eq!(code, 1);
        assert_eq!(report["plugins"][0]["outcome"], "failed");
        assert_eq!(report["plugins"][1]["outcome"], second, "{policy}");
    }
}

#[test]
fn manual_steps_need_a_person_or_an_explicit_approval() {
    let sb = Sandbox::new();
    let config = json!({"steps": [{"id": "call-dba", "kind": "manual", "title": "Ask the DBA to confirm the restore"}, {"id": "after"}]});
    sb.runbook(&fixture_runbook(&config, &json!({})));
    let (code, report, _) = sb.run_json(&[]);
    assert_eq!(code, 1);
    let msg = report["plugins"][0]["levels"][0]["steps"][0]["message"]
        .as_str()
        .unwrap();
    assert!(
        msg.contains("no terminal") && msg.contains("--approve-manual"),
        "{msg}"
    );
    let (code, report, _) = sb.run_json(&["--approve-manual"]);
    assert_eq!(code, 0, "{report}");
    let journal = std::fs::read_to_string(report["journal"].as_str().unwrap()).unwrap();
    assert!(journal.contains("manual-approved"));
}

#[test]
fn a_healthy_system_is_left_alone_unless_a_level_is_forced() {
    let sb = Sandbox::new();
    let work = sb.join("work");
    std::fs::create_dir(&work).unwrap();
    let marker = work.join("touched");
    let config = json!({
        "assess": {"severity": "none", "rollback": false, "level": 0, "scenario": "healthy"},
        "steps": [{"id": "touch", "op": {"call": "write-file", "args": {"path": marker, "contents": "x"}}}],
    });
    sb.runbook(&fixture_runbook(&config, &json!({"write": [work]})));
    let (code, report, _) = sb.run_json(&[]);
    assert_eq!(code, 0);
    assert_eq!(report["outcome"], "healthy");
    assert!(!marker.exists());
    let (code, _, _) = sb.run_json(&["--level", "1"]);
    assert_eq!(code, 0);
    assert!(marker.exists());
    let (code, _, stderr) = sb.run_json(&["--level", "7"]);
    assert_eq!(code, 1, "{stderr}");
}

#[test]
fn check_compares_declared_needs_with_grants() {
    let sb = Sandbox::new();
    let config = json!({"needs": {"http": ["http://127.0.0.1:9/healthz"], "tcp": [], "exec": ["git"], "signal": [], "read": [sb.join("data")], "write": [], "sqlite": [], "env": []}, "steps": []});
    sb.runbook(&fixture_runbook(
        &config,
        &json!({"http": ["http://127.0.0.1:9/"], "read": [sb.path()]}),
    ));
    let out = sb.rewind(&["check"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(
        t.contains("needs exec \"git\"") && t.contains("add exec = [\"git\"]"),
        "{t}"
    );
    assert!(
        !t.contains("needs http"),
        "granted needs are not reported: {t}"
    );
    sb.runbook(&fixture_runbook(
        &config,
        &json!({"http": ["http://127.0.0.1:9/"], "read": [sb.path()], "exec": ["git"]}),
    ));
    let out = sb.rewind(&["check"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("ok: 1 plugin(s)"));
}

/// `rewind compile` fills the compiled-code cache at install time, so the
/// first run of an incident loads from it instead of running Cranelift.
#[test]
fn compile_fills_the_cache_that_later_commands_load_from() {
    let sb = Sandbox::new();
    sb.runbook(&fixture_runbook(&json!({}), &json!({})));
    let cache = sb.join("compiled");
    let cache_arg = cache.to_str().unwrap();
    let out = sb.rewind(&["--cache-dir", cache_arg, "compile"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("compiled into the cache"),
        "{}",
        text(&out)
    );
    let entries = std::fs::read_dir(&cache).unwrap().count();
    assert!(entries >= 2, "a compiled entry and its record: {entries}");

    let out = sb.rewind(&["--cache-dir", cache_arg, "compile"]);
    assert!(
        text(&out).contains("already in the cache"),
        "{}",
        text(&out)
    );
    let out = sb.rewind(&["--cache-dir", cache_arg, "check"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("loaded from cache"), "{}", text(&out));

    // A component that is not one: refused with the load exit code.
    std::fs::write(sb.join("bad.wasm"), b"not wasm").unwrap();
    sb.runbook(&runbook_with("bad.wasm", &json!({}), &json!({})));
    let out = sb.rewind(&["--cache-dir", cache_arg, "compile"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("bad.wasm"), "{}", text(&out));
}

/// A journal that can no longer be written (here: a full 160 KiB tmpfs
/// mounted on the state dir, in a mount namespace of rewind's own) stops
/// the run between steps: the step under way finishes, nothing new starts
/// on a journal that lost lines, and the report says why.
#[test]
fn a_journal_that_cannot_be_written_stops_the_run_between_steps() {
    let sb = Sandbox::new();
    let line = "x".repeat(8000);
    let steps: Vec<serde_json::Value> = (0..12)
        .map(|i| json!({"id": format!("s{i}"), "op": {"call": "log", "args": {"level": "Info", "message": line}}}))
        .collect();
    sb.runbook(&fixture_runbook(&json!({"steps": steps}), &json!({})));
    std::fs::create_dir_all(sb.join("state")).unwrap();
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs -o size=160k,mode=0700 rewind-test-full state || exit 77; exec \"$0\" run --json",
            REWIND,
        ])
        .current_dir(sb.path())
        .env("REWIND_LOCK_DIR", sb.path().join("state/locks"))
        .env("REWIND_CACHE_DIR", cache_dir())
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(o) if o.status.code() != Some(77) => o,
        other => {
            // Not root, or no unshare: nothing to test this with here.
            eprintln!("skipped: cannot mount a small tmpfs in a mount namespace: {other:?}");
            return;
        }
    };
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    // The plan (12 steps of 8 KB) fits; the steps' 8 KB log lines fill the
    // rest within a few steps.
    let all = report["plugins"][0]["levels"][0]["steps"]
        .as_array()
        .unwrap()
        .clone();
    let statuses: Vec<String> = all
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s["status"],
                s["message"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(120)
                    .collect::<String>()
            )
        })
        .collect();
    let skipped: Vec<&serde_json::Value> =
        all.iter().filter(|s| s["status"] == "skipped").collect();
    assert!(
        !skipped.is_empty() && skipped.len() < all.len(),
        "{statuses:#?}"
    );
    let why = skipped[0]["message"].as_str().unwrap_or_default();
    assert!(why.contains("can no longer be written"), "{why}");
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
}

/// The newest journal of a sandbox's state dir, as text.
fn journal_text(sb: &Sandbox) -> String {
    std::fs::read_dir(sb.join("state/runs"))
        .map(|d| {
            d.flatten()
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGTERM mid-step: the step finishes, nothing after it starts, the
/// journal ends the run `aborted`, and rewind exits 5. Twice: the step's
/// command is killed with rewind (no orphan), exit 6.
#[test]
fn sigterm_finishes_the_step_and_a_second_sigterm_stops_now() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    // rewind says on stderr when it has taken a signal: the test waits for
    // that, so no signal is sent before the one before it was handled.
    let spawn = |sb: &Sandbox, args: &[&str], stdout: Stdio| {
        let err = std::fs::File::create(sb.join("stderr.txt")).unwrap();
        Proc::spawn(
            Command::new(REWIND)
                .args(args)
                .current_dir(sb.path())
                .env("REWIND_LOCK_DIR", sb.path().join("state/locks"))
                .env("REWIND_CACHE_DIR", cache_dir())
                .stdout(stdout)
                .stderr(err),
        )
    };
    let said = |sb: &Sandbox, what: &str| {
        std::fs::read_to_string(sb.join("stderr.txt"))
            .unwrap_or_default()
            .contains(what)
    };

    // Once: a step waiting on a port the test opens after the signal.
    let sb = Sandbox::new();
    let gate = free_port();
    let policy = json!({"interval_ms": 50, "timeout_ms": 120000, "success_threshold": 1, "failure_threshold": 0});
    let target = json!({"Tcp": ["127.0.0.1", gate, 5000]});
    let config = json!({"steps": [
        {"id": "wait", "op": {"call": "wait-healthy", "args": {"target": target, "policy": policy}}},
        {"id": "after", "op": {"call": "log", "args": {"level": "Info", "message": "after"}}},
    ]});
    sb.runbook(&fixture_runbook(
        &config,
        &json!({"tcp": [format!("127.0.0.1:{gate}")]}),
    ));
    let mut first = spawn(&sb, &["run", "--json"], Stdio::piped());
    assert!(wait_until(PATIENCE, || journal_text(&sb).contains("\"step\":\"wait\"")));
    kill(Pid::from_raw(first.pid() as i32), Signal::SIGTERM).unwrap();
    assert!(wait_until(PATIENCE, || said(
        &sb,
        "finishing the current step"
    )));
    let _open = std::net::TcpListener::bind(("127.0.0.1", gate)).unwrap();
    let out = first.output();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = step_results(&report);
    assert!(
        step(&r, "wait").get("Ok").is_some(),
        "the step under way finished: {r:?}"
    );
    let j = journal_text(&sb);
    assert!(
        !j.contains("\"message\":\"after\""),
        "nothing after it started"
    );
    assert!(j.contains("\"outcome\":\"aborted\""), "{j}");

    // Twice: a command that would run for five minutes.
    let sb = Sandbox::new();
    let pidfile = sb.join("child.pid");
    let cmd = json!({"program": "sh", "args": ["-c", format!("echo $$ > {}.tmp && mv {}.tmp {}; exec sleep 300", pidfile.display(), pidfile.display(), pidfile.display())], "timeout_ms": 600000});
    let config = json!({"steps": [{"id": "long", "op": {"call": "run", "args": {"cmd": cmd}}}]});
    sb.runbook(&fixture_runbook(&config, &json!({"exec": ["sh"]})));
    let mut second = spawn(&sb, &["run", "-q"], Stdio::null());
    assert!(wait_until(PATIENCE, || pidfile.exists()));
    let child: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let rewind = Pid::from_raw(second.pid() as i32);
    kill(rewind, Signal::SIGTERM).unwrap();
    assert!(wait_until(PATIENCE, || said(
        &sb,
        "finishing the current step"
    )));
    kill(rewind, Signal::SIGTERM).unwrap();
    let out = second.output();
    assert_eq!(out.status.code(), Some(6), "{:?}", out.status);
    assert!(
        said(&sb, "killed 1 running command"),
        "{}",
        std::fs::read_to_string(sb.join("stderr.txt")).unwrap()
    );
    assert!(
        wait_until(PATIENCE, || !alive(child)),
        "the command was killed with rewind"
    );
}

/// A run killed mid-step is resumed, not started over: `rewind run`
/// refuses and points to `resume`; the step in flight, not marked safe to
/// repeat, goes to a person (no terminal: stop and say how to decide);
/// `--in-flight redo` runs it again; completed steps are never run twice;
/// a runbook changed since the run started is refused unless `--force`.
#[test]
fn a_killed_run_is_resumed_from_its_journal_and_the_step_in_flight_goes_to_a_person() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let sb = Sandbox::new();
    let gate = free_port();
    let policy = json!({"interval_ms": 50, "timeout_ms": 120000, "success_threshold": 1, "failure_threshold": 0});
    let target = json!({"Tcp": ["127.0.0.1", gate, 5000]});
    let steps = |repeatable: bool| {
        json!({"steps": [
            {"id": "a", "effect": "reversible", "repeatable": true, "op": {"call": "log", "args": {"level": "Info", "message": "ran a"}}},
            {"id": "b", "effect": "disruptive", "repeatable": repeatable, "op": {"call": "wait-healthy", "args": {"target": target, "policy": policy}}},
            {"id": "c", "effect": "observe", "op": {"call": "log", "args": {"level": "Info", "message": "ran c"}}},
        ]})
    };
    let grants = json!({"tcp": [format!("127.0.0.1:{gate}")]});
    sb.runbook(&fixture_runbook(&steps(false), &grants));
    let mut run = sb.spawn(&["run", "-q"]);
    assert!(wait_until(PATIENCE, || journal_text(&sb).contains(
        "\"event\":\"step-start\",\"plugin\":\"fx\",\"level\":1,\"step\":\"b\""
    ) || journal_text(&sb)
        .contains("\"step\":\"b\",\"title\"")));
    kill(Pid::from_raw(run.pid() as i32), Signal::SIGKILL).unwrap();
    let _ = run.output();

    // A new run does not start over it.
    let out = sb.rewind(&["run"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(7), "{t}");
    assert!(
        t.contains("during step b") && t.contains("rewind resume"),
        "{t}"
    );

    // Step b was in flight and is not repeatable: without a terminal, the
    // resume stops there and says how to decide.
    let out = sb.rewind(&["resume"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("in flight") && t.contains("--in-flight done") && t.contains("--in-flight redo"),
        "{t}"
    );

    // The runbook changed since the run started: refused, naming it.
    sb.runbook(&fixture_runbook(&steps(true), &grants));
    let out = sb.rewind(&["resume"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("config] changed") && t.contains("--force"),
        "{t}"
    );
    sb.runbook(&fixture_runbook(&steps(false), &grants));

    // Redo it: the gate is open now, b runs again, c runs, a does not.
    let _open = std::net::TcpListener::bind(("127.0.0.1", gate)).unwrap();
    let out = sb.rewind(&["resume", "--in-flight", "redo", "--json"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "rolled-back", "{t}");
    let j = journal_text(&sb);
    assert_eq!(
        j.matches("\"message\":\"ran a\"").count(),
        1,
        "a ran once: {j}"
    );
    assert_eq!(j.matches("\"message\":\"ran c\"").count(), 1, "{j}");
    assert_eq!(
        j.matches("\"event\":\"step-start\"").count(),
        4,
        "a, b, b again, c: {j}"
    );
    assert!(j.contains("\"event\":\"resume\""), "{j}");
    let runs: Vec<&str> = j
        .lines()
        .filter_map(|l| l.split("\"run\":\"").nth(1))
        .map(|r| r.split('"').next().unwrap())
        .collect();
    assert!(
        runs.windows(2).all(|w| w[0] == w[1]),
        "one run id throughout"
    );

    // Done: nothing left to resume.
    let out = sb.rewind(&["resume"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("nothing to resume"));
}

/// The default policy runs nothing destructive without a person: a run
/// with no terminal waits for `rewind approve` or `rewind deny` from
/// another shell; `--approve destructive` grants it up front; escalating
/// into a destructive level is a gate of its own; every answer is
/// journaled with who gave it; nobody answering in time leaves the run
/// resumable.
#[test]
fn destructive_steps_wait_for_a_person_under_the_default_policy() {
    let sb = Sandbox::new();
    let config = json!({"steps": [
        {"id": "look", "effect": "observe", "op": {"call": "log", "args": {"level": "Info", "message": "looked"}}},
        {"id": "drop", "effect": "destructive", "op": {"call": "log", "args": {"level": "Info", "message": "dropped"}}},
    ]});
    sb.runbook(&fixture_runbook(&config, &json!({})));
    let waiting = || {
        std::fs::read_dir(sb.join("state/approvals"))
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".waiting"))
            })
            .unwrap_or(false)
    };

    // The plan shows the gate.
    let out = sb.rewind(&["plan"]);
    let t = text(&out);
    assert!(
        t.contains("drop [destructive]") && t.contains("needs a person's approval"),
        "{t}"
    );

    // Approved from another shell.
    let mut run = sb.spawn(&["run", "--json"]);
    assert!(wait_until(PATIENCE, waiting), "the run waits for a person");
    assert!(!journal_text(&sb).contains("\"message\":\"dropped\""));
    let out = sb.rewind(&["approve", "--step", "drop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("approved drop"), "{}", text(&out));
    let out = run.output();
    assert!(out.status.success(), "{}", text(&out));
    let j = journal_text(&sb);
    assert!(j.contains("\"message\":\"dropped\""), "{j}");
    assert!(
        j.contains("\"event\":\"approval\"")
            && j.contains("\"by\":\"rewind approve\"")
            && j.contains("\"uid\":"),
        "{j}"
    );

    // Denied: the step does not run and the run ends.
    let sb2 = Sandbox::new();
    sb2.runbook(&fixture_runbook(&config, &json!({})));
    let mut run = sb2.spawn(&["run", "--json"]);
    assert!(wait_until(PATIENCE, || sb2
        .join("state/approvals")
        .read_dir()
        .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e
            .file_name()
            .to_string_lossy()
            .ends_with(".waiting"))))));
    let out = sb2.rewind(&["deny"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run.output();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let j = journal_text(&sb2);
    assert!(
        !j.contains("\"message\":\"dropped\""),
        "denied: not run: {j}"
    );
    assert!(j.contains("was denied by"), "{j}");
    let out = sb2.rewind(&["resume"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("nothing to resume"),
        "a denied run is over, not interrupted: {}",
        text(&out)
    );

    // Granted up front; and nobody answering in time leaves it resumable.
    let sb3 = Sandbox::new();
    sb3.runbook(&format!(
        "{}\n[policy]\napproval_timeout = \"0s\"\n",
        fixture_runbook(&config, &json!({}))
    ));
    let out = sb3.rewind(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("none came within"), "{}", text(&out));
    let out = sb3.rewind(&["resume", "--approve", "destructive"]);
    assert!(out.status.success(), "{}", text(&out));
    let j = journal_text(&sb3);
    assert_eq!(j.matches("\"message\":\"looked\"").count(), 1, "{j}");
    assert!(j.contains("\"by\":\"--approve destructive\""), "{j}");

    // Escalating into a destructive level is a gate of its own.
    let sb4 = Sandbox::new();
    let levels = json!({
        "levels": [1, 2],
        "steps": [
            {"id": "restart", "level": 1, "effect": "disruptive"},
            {"id": "restore", "level": 2, "effect": "destructive"},
        ],
        "verify": {"by_level": {"1": false, "2": true}},
    });
    sb4.runbook(&format!(
        "{}\n[policy]\napproval_timeout = \"0s\"\n",
        fixture_runbook(&levels, &json!({}))
    ));
    let out = sb4.rewind(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let j = journal_text(&sb4);
    assert!(j.contains("\"step\":\"escalate-to-2\""), "{j}");
    assert!(
        !j.contains("\"step\":\"restore\",\"title\""),
        "restore never started: {j}"
    );
    let out = sb4.rewind(&["resume", "--approve", "2"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// `[[notify]]`: a generic webhook, a Slack incoming webhook and PagerDuty
/// Events v2 are each told the events they asked for, on a real HTTP
/// receiver on loopback; a secret routing key reaches PagerDuty and never
/// the journal; a target that does not answer fails nothing.
#[test]
fn people_are_told_through_a_webhook_slack_and_pagerduty() {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let port = server.server_addr().to_ip().unwrap().port();
    // The receiver answers as requests come, as a real one does.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for mut req in server.incoming_requests() {
            let mut body = String::new();
            req.as_reader().read_to_string(&mut body).unwrap();
            let url = req.url().to_string();
            let _ = req.respond(tiny_http::Response::empty(202));
            if tx.send((url, body)).is_err() {
                break;
            }
        }
    });
    let dead = free_port();
    let sb = Sandbox::new();
    let config = json!({"steps": [
        {"id": "drop", "effect": "destructive", "op": {"call": "log", "args": {"level": "Info", "message": "dropped"}}},
    ]});
    sb.runbook(&format!(
        r#"{}
[policy]
approval_timeout = "0s"

[[notify]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:{port}/hook"

[[notify]]
name = "slack"
kind = "slack"
url = "http://127.0.0.1:{port}/slack"
events = ["approval-needed"]

[[notify]]
name = "pager"
kind = "pagerduty"
url = "http://127.0.0.1:{port}/pd"
routing_key = "${{secret:PD_KEY}}"
events = ["run-end"]
min_severity = "major"

[[notify]]
name = "nobody"
kind = "webhook"
url = "http://127.0.0.1:{dead}/"
events = ["run-end"]
timeout = "1s"
"#,
        fixture_runbook(&config, &json!({}))
    ));
    let out = Command::new(REWIND)
        .args(["run"])
        .current_dir(sb.path())
        .env("REWIND_LOCK_DIR", sb.path().join("state/locks"))
        .env("REWIND_CACHE_DIR", cache_dir())
        .env("PD_KEY", "pd-routing-key-1234567890")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // Nobody approved within 0 s: stopped before the step, resumable.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    let mut got: Vec<(String, serde_json::Value)> = Vec::new();
    // run-start, approval-needed, run-end to the hook; approval-needed to
    // Slack; run-end to PagerDuty.
    while got.len() < 5 {
        let Ok((url, body)) = rx.recv_timeout(PATIENCE) else {
            panic!("only {} notices arrived: {got:?}", got.len());
        };
        got.push((url, serde_json::from_str(&body).unwrap()));
    }
    let to = |path: &str| -> Vec<&serde_json::Value> {
        got.iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b)
            .collect()
    };
    // Each notice goes out on its own thread: they may arrive in any order.
    let mut hook: Vec<&str> = to("/hook")
        .iter()
        .map(|b| b["event"].as_str().unwrap())
        .collect();
    hook.sort_unstable();
    assert_eq!(hook, ["approval-needed", "run-end", "run-start"], "{got:?}");
    let asked = to("/hook")
        .into_iter()
        .find(|b| b["event"] == "approval-needed")
        .unwrap();
    assert_eq!(asked["severity"], "critical");
    assert!(
        asked["summary"]
            .as_str()
            .unwrap()
            .contains("rewind approve")
    );
    let slack = to("/slack");
    assert_eq!(slack.len(), 1, "{got:?}");
    assert!(
        slack[0]["text"]
            .as_str()
            .unwrap()
            .contains("approval-needed")
    );
    let pd = to("/pd");
    assert_eq!(pd.len(), 1, "{got:?}");
    assert_eq!(pd[0]["routing_key"], "pd-routing-key-1234567890");
    assert_eq!(
        pd[0]["event_action"], "trigger",
        "an aborted run is not resolved"
    );
    assert_eq!(pd[0]["payload"]["severity"], "critical");
    assert!(pd[0]["dedup_key"].as_str().unwrap().starts_with("rewind-"));

    let j = journal_text(&sb);
    assert!(
        !j.contains("pd-routing-key"),
        "the secret never reaches the journal"
    );
    assert!(j.contains("\"event\":\"notified\""), "{j}");
    assert!(
        j.contains("\"ok\":false") && j.contains("\"target\":\"nobody\""),
        "the dead target is journaled as failed: {j}"
    );
}

/// A command a step runs dies with rewind, even when rewind is killed
/// with SIGKILL (nothing it could catch): no orphan keeps running.
#[test]
fn a_command_dies_with_a_killed_rewind() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let sb = Sandbox::new();
    let pidfile = sb.join("child.pid");
    let cmd = json!({"program": "sh", "args": ["-c", format!("echo $$ > {}.tmp && mv {}.tmp {}; exec sleep 300", pidfile.display(), pidfile.display(), pidfile.display())], "timeout_ms": 600000});
    let config = json!({"steps": [{"id": "long", "op": {"call": "run", "args": {"cmd": cmd}}}]});
    sb.runbook(&fixture_runbook(&config, &json!({"exec": ["sh"]})));
    let mut run = sb.spawn(&["run", "-q"]);
    assert!(wait_until(PATIENCE, || pidfile.exists()));
    let child: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(child));
    kill(Pid::from_raw(run.pid() as i32), Signal::SIGKILL).unwrap();
    let _ = run.output();
    assert!(
        wait_until(PATIENCE, || !alive(child)),
        "the command died with rewind"
    );
    // The run is resumable; its step was in flight.
    let out = sb.rewind(&["run"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
}

/// A step is cut at its deadline, `[limits] step_time` (by default twice
/// its level's RTO), whatever it does: here it spins without a host call.
#[test]
fn a_step_is_stopped_at_its_deadline() {
    let sb = Sandbox::new();
    let config = json!({"steps": [
        {"id": "spin", "op": {"call": "loop"}},
        {"id": "after"},
    ]});
    sb.runbook(
        &fixture_runbook(&config, &json!({}))
            .replace("[limits]\n", "[limits]\nstep_time = \"1s\"\n"),
    );
    let (code, report, stderr) = sb.run_json(&[]);
    assert_eq!(code, 1, "{report} {stderr}");
    let steps = &report["plugins"][0]["levels"][0]["steps"];
    assert_eq!(steps[0]["status"], "failed", "{report}");
    let message = steps[0]["message"].as_str().unwrap();
    assert!(
        message.contains("longer than 1s") && message.contains("step_time"),
        "{message}"
    );
    assert_eq!(steps[1]["status"], "skipped", "{report}");
}

/// A decision a plugin pins holds for later runs of the incident until the
/// service is verified back; `--redecide` forgets it.
#[test]
fn pinned_decisions_hold_across_runs_until_redecide() {
    let sb = Sandbox::new();
    let pin = |value: &str| {
        json!({
            "steps": [{"id": "decide", "op": {"call": "pin", "args": {"key": "target", "value": value}}}],
            // Never verified back: the incident goes on, its decisions too.
            "verify": {"healthy": false},
        })
    };
    let decided = |report: &serde_json::Value| {
        report["plugins"][0]["levels"][0]["steps"][0]["message"]
            .as_str()
            .unwrap()
            .to_string()
    };
    sb.runbook(&fixture_runbook(&pin("1.0.0"), &json!({})));
    let (_, report, _) = sb.run_json(&[]);
    assert_eq!(decided(&report), r#"{"Ok":"1.0.0"}"#, "{report}");
    sb.runbook(&fixture_runbook(&pin("0.9.0"), &json!({})));
    let (_, report, _) = sb.run_json(&[]);
    assert_eq!(decided(&report), r#"{"Ok":"1.0.0"}"#, "kept: {report}");
    let j = journal_text(&sb);
    assert!(j.contains("\"event\":\"decisions-kept\""), "{j}");
    let (_, report, _) = sb.run_json(&["--redecide"]);
    assert_eq!(
        decided(&report),
        r#"{"Ok":"0.9.0"}"#,
        "decided again: {report}"
    );
}

/// Two runbooks with their own state dirs that roll back the same service
/// cannot run at once: the service is locked machine-wide.
#[test]
fn two_runbooks_cannot_roll_back_one_service_at_once() {
    let locks = tempfile::tempdir().unwrap();
    let gate = free_port();
    let policy = json!({"interval_ms": 50, "timeout_ms": 120000, "success_threshold": 1, "failure_threshold": 0});
    let config = json!({"steps": [{"id": "wait", "op": {"call": "wait-healthy", "args": {
        "target": {"Tcp": ["127.0.0.1", gate, 5000]}, "policy": policy}}}]});
    let grants = json!({"tcp": [format!("127.0.0.1:{gate}")]});
    let (a, b) = (Sandbox::new(), Sandbox::new());
    a.runbook(&fixture_runbook(&config, &grants));
    b.runbook(&fixture_runbook(&config, &grants));
    let cmd = |sb: &Sandbox| {
        let mut c = Command::new(REWIND);
        c.args(["run", "-q"])
            .current_dir(sb.path())
            .env("REWIND_CACHE_DIR", cache_dir())
            .env("REWIND_LOCK_DIR", locks.path())
            .stdin(Stdio::null());
        c
    };
    let mut first = Proc::spawn(cmd(&a).stdout(Stdio::null()).stderr(Stdio::null()));
    assert!(wait_until(PATIENCE, || journal_text(&a)
        .contains("\"step\":\"wait\",\"title\"")));
    let out = cmd(&b).output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(4), "{t}");
    assert!(
        t.contains("being rolled back by another runbook's run"),
        "{t}"
    );
    let _open = std::net::TcpListener::bind(("127.0.0.1", gate)).unwrap();
    assert!(first.0.wait().unwrap().success());
    let out = cmd(&b).output().unwrap();
    assert!(out.status.success(), "free again: {}", text(&out));
}

/// `rewind approve --step X` answers only the gate a run waits on: for
/// another step it is refused, saying which one waits, and the run keeps
/// waiting (nothing ran); the right answer then goes through.
#[test]
fn approving_a_step_that_is_not_the_one_waiting_is_refused() {
    let sb = Sandbox::new();
    let config = json!({"steps": [
        {"id": "look", "effect": "observe", "op": {"call": "log", "args": {"level": "Info", "message": "looked"}}},
        {"id": "drop", "effect": "destructive", "op": {"call": "log", "args": {"level": "Info", "message": "dropped"}}},
        {"id": "prune", "effect": "destructive", "op": {"call": "log", "args": {"level": "Info", "message": "pruned"}}},
    ]});
    sb.runbook(&fixture_runbook(&config, &json!({})));
    let waiting_on = || -> Option<String> {
        std::fs::read_dir(sb.join("state/approvals"))
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".waiting"))
            .and_then(|e| std::fs::read_to_string(e.path()).ok())
            .map(|t| t.lines().next().unwrap_or_default().to_string())
    };
    let mut run = sb.spawn(&["run", "--json"]);
    assert!(wait_until(PATIENCE, || waiting_on().as_deref() == Some("drop")));

    // A step that ran already, and one that comes later: neither waits.
    for wrong in ["look", "prune"] {
        let out = sb.rewind(&["approve", "--step", wrong]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{t}");
        assert!(
            t.contains(&format!("waits on \"drop\", not \"{wrong}\"")),
            "says which step waits: {t}"
        );
    }
    assert_eq!(waiting_on().as_deref(), Some("drop"), "still waiting");
    let j = journal_text(&sb);
    assert!(j.contains("\"message\":\"looked\""), "{j}");
    assert!(!j.contains("\"message\":\"dropped\""), "{j}");
    assert!(
        !j.contains("\"event\":\"approval\""),
        "no answer journaled: {j}"
    );

    // The right one goes through, and only for that gate: prune waits next.
    let out = sb.rewind(&["approve", "--step", "drop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(wait_until(PATIENCE, || waiting_on().as_deref() == Some("prune")));
    assert!(journal_text(&sb).contains("\"message\":\"dropped\""));
    assert!(!journal_text(&sb).contains("\"message\":\"pruned\""));
    let out = sb.rewind(&["deny", "--step", "prune"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run.output();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let j = journal_text(&sb);
    assert!(!j.contains("\"message\":\"pruned\""), "{j}");
    assert!(j.contains("prune was denied by"), "{j}");
}
