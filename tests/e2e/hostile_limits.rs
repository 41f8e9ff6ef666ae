//! Hostile plugins (issue 9): each test has a plugin attempt one way past
//! its grants or one way to take the host's memory, and checks that the
//! attempt is refused with a message naming what to change, and that
//! nothing outside the grants changed.

use std::path::Path;

use rewind_test_artifacts::{HOSTILE, MISTYPED};
use serde_json::{Value, json};

use crate::util::*;

fn cmd(program: &str, args: &[&str], env: &[(&str, &str)]) -> Value {
    json!({"program": program, "args": args, "cwd": null, "env": env, "stdin": null, "timeout_ms": 0})
}

/// A runbook for one plugin with the given `[limits]` (on top of the usual
/// test CPU and memory limits).
fn runbook(component: &str, config: &Value, grants: &Value, limits: &Value) -> String {
    let mut all = json!({"cpu": "2s", "memory": "64MiB"});
    for (k, v) in limits.as_object().unwrap() {
        all[k] = v.clone();
    }
    let mut config = config.clone();
    strip_nulls(&mut config);
    let doc = json!({
        "name": "hostile",
        "state_dir": "state",
        "limits": all,
        "plugin": [{"name": "fx", "component": component, "config": config, "grants": grants}],
    });
    toml::to_string(&doc).unwrap()
}

fn err_message(v: &Value) -> String {
    let e = v
        .get("Err")
        .unwrap_or_else(|| panic!("expected an error: {v}"));
    match e.as_object().and_then(|o| o.values().next()) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => e.to_string(),
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn loader_variables_never_reach_a_granted_program() {
    let sb = Sandbox::new();
    let w = sb.join("w");
    std::fs::create_dir(&w).unwrap();
    let so = w.join("evil.so");
    let preload = so.to_str().unwrap();
    let config = json!({"steps": [
        {"id": "drop", "op": {"call": "write-file", "args": {"path": so, "contents": "not really ELF"}}},
        {"id": "preload", "op": {"call": "run", "args": {"cmd": cmd("/bin/echo", &["hi"], &[("LD_PRELOAD", preload)])}}},
        {"id": "library-path", "op": {"call": "run", "args": {"cmd": cmd("/bin/echo", &["hi"], &[("LD_LIBRARY_PATH", w.to_str().unwrap())])}}},
        {"id": "path", "op": {"call": "run", "args": {"cmd": cmd("/bin/echo", &["hi"], &[("PATH", w.to_str().unwrap())])}}},
        {"id": "bash-env", "op": {"call": "spawn", "args": {"cmd": cmd("/bin/echo", &["hi"], &[("BASH_ENV", preload)]), "log_path": w.join("spawn.log")}}},
        {"id": "ungranted", "op": {"call": "run", "args": {"cmd": cmd("/bin/echo", &["hi"], &[("FOO", "bar")])}}},
        {"id": "granted", "op": {"call": "run", "args": {"cmd": cmd("/bin/echo", &["hi"], &[("NODE_ENV", "production")])}}},
    ]});
    // Even a wildcard grant does not let the loader's variables through.
    let grants = json!({"exec": ["/bin/echo"], "write": [w], "child_env": ["NODE_*"]});
    sb.runbook(&runbook(FIXTURE, &config, &grants, &json!({})));
    let (_, report, stderr) = sb.run_json(&[]);
    let r = step_results(&report);
    for (id, name) in [
        ("preload", "LD_PRELOAD"),
        ("library-path", "LD_LIBRARY_PATH"),
        ("path", "PATH"),
        ("bash-env", "BASH_ENV"),
    ] {
        let m = err_message(step(&r, id));
        assert!(
            m.contains(&format!("{name} is never passed to a command"))
                && m.contains("no grant allows it"),
            "{id}: {m}\n{stderr}"
        );
    }
    let d = denial(step(&r, "ungranted")).unwrap_or_else(|| panic!("{r:?}"));
    assert_eq!(d["capability"], "child_env");
    assert!(
        d["hint"]
            .as_str()
            .unwrap()
            .contains("child_env = [\"FOO\"]"),
        "{d}"
    );
    assert_eq!(step(&r, "granted")["Ok"]["stdout"], "hi\n");
    // Only the file the plugin wrote is there: no spawn log, nothing ran.
    assert_eq!(names(&w), vec!["evil.so"]);
    let journal = std::fs::read_to_string(report["journal"].as_str().unwrap()).unwrap();
    assert_eq!(
        journal.matches("\"event\":\"action\"").count(),
        2,
        "only the write and the granted echo were carried out: {journal}"
    );

    // Granting a forbidden name outright is a runbook error.
    let grants = json!({"exec": ["/bin/echo"], "child_env": ["LD_PRELOAD"]});
    sb.runbook(&runbook(FIXTURE, &json!({}), &grants, &json!({})));
    let out = sb.rewind(&["check", "rewind.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("child_env = \"LD_PRELOAD\" is not valid")
            && text(&out).contains("never passed"),
        "{}",
        text(&out)
    );
}

#[test]
fn check_warns_about_exec_grants_that_run_anything() {
    let sb = Sandbox::new();
    let grants = json!({"exec": ["sh", "/bin/echo", "python3"]});
    sb.runbook(&runbook(FIXTURE, &json!({}), &grants, &json!({})));
    let out = sb.rewind(&["check", "rewind.toml"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "a warning, not a refusal: {t}");
    assert!(t.contains("warning: exec grant \"sh\" (sh)"), "{t}");
    assert!(
        t.contains("warning: exec grant \"python3\" (python3)"),
        "{t}"
    );
    assert!(!t.contains("exec grant \"/bin/echo\""), "{t}");
}

#[test]
fn sqlite_cannot_attach_vacuum_into_or_load_extensions() {
    let sb = Sandbox::new();
    let data = sb.join("data");
    let outside = sb.join("outside");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let db = data.join("app.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    let o = outside.to_str().unwrap();
    let q = |id: &str, sql: String| json!({"id": id, "op": {"call": "sqlite-query", "args": {"db": db, "sql": sql}}});
    let x = |id: &str, sql: String| json!({"id": id, "op": {"call": "sqlite-exec", "args": {"db": db, "sql": sql}}});
    let config = json!({"steps": [
        q("q-attach-literal", format!("ATTACH '{o}/a.db' AS a")),
        q("q-attach-expr", format!("ATTACH ('{o}/' || 'b.db') AS b")),
        q("q-vacuum-into", format!("VACUUM INTO '{o}/c.db'")),
        q("q-vacuum-into-expr", format!("VACUUM INTO ('{o}/' || 'd.db')")),
        q("q-load-extension", format!("SELECT load_extension('{o}/e.so')")),
        q("q-detach", "DETACH main".into()),
        x("x-attach-expr", format!("COMMIT; ATTACH ('{o}/' || 'f.db') AS f; CREATE TABLE f.t (x); INSERT INTO f.t VALUES (1); BEGIN;")),
        x("x-vacuum-into", format!("COMMIT; VACUUM INTO ('{o}/' || 'g.db'); BEGIN;")),
        x("x-temp-dir", format!("PRAGMA temp_store_directory = '{o}'")),
        q("still-works", "SELECT x FROM t".into()),
    ]});
    let grants = json!({"sqlite": [data]});
    sb.runbook(&runbook(FIXTURE, &config, &grants, &json!({})));
    let (_, report, stderr) = sb.run_json(&[]);
    let r = step_results(&report);
    for id in [
        "q-attach-literal",
        "q-attach-expr",
        "q-vacuum-into",
        "q-vacuum-into-expr",
        "q-load-extension",
        "q-detach",
        "x-attach-expr",
        "x-vacuum-into",
        "x-temp-dir",
    ] {
        let m = err_message(step(&r, id));
        assert!(!m.is_empty(), "{id}");
    }
    for id in ["q-attach-expr", "x-attach-expr", "x-vacuum-into"] {
        let m = err_message(step(&r, id));
        assert!(
            m.contains("SQL stays inside the granted database"),
            "{id}: {m}\n{stderr}"
        );
    }
    assert_eq!(
        step(&r, "still-works")["Ok"]["rows"],
        json!([[{"Integer": 1}]])
    );
    assert!(
        names(&outside).is_empty(),
        "nothing was created outside the grant: {:?}",
        names(&outside)
    );
    assert_eq!(names(&data), vec!["app.db"]);
}

#[test]
fn a_huge_query_result_is_stopped_while_stepping() {
    let sb = Sandbox::new();
    let db = sb.join("big.db");
    // Three 3 MiB blobs against a 8 MiB cap: the third row is refused
    // before it is copied; one 9 MiB value is refused by SQLite itself.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TABLE b (x BLOB);
             INSERT INTO b VALUES (zeroblob(3145728)), (zeroblob(3145728)), (zeroblob(3145728));
             CREATE TABLE huge (x BLOB); INSERT INTO huge VALUES (zeroblob(9437184));",
        )
        .unwrap();
    let config = json!({"steps": [
        {"id": "rows", "op": {"call": "sqlite-query", "args": {"db": db, "sql": "SELECT x FROM b"}}},
        {"id": "value", "op": {"call": "sqlite-query", "args": {"db": db, "sql": "SELECT x FROM huge"}}},
        {"id": "two", "op": {"call": "sqlite-query", "args": {"db": db, "sql": "SELECT length(x) FROM b LIMIT 2"}}},
    ]});
    let grants = json!({"sqlite": [db]});
    sb.runbook(&runbook(
        FIXTURE,
        &config,
        &grants,
        &json!({"query_bytes": "8MiB"}),
    ));
    let (_, report, _) = sb.run_json(&[]);
    let r = step_results(&report);
    let m = err_message(step(&r, "rows"));
    assert!(
        m.contains("limit of 8 MiB") && m.contains("3 rows") && m.contains("[limits] query_bytes"),
        "{m}"
    );
    let m = err_message(step(&r, "value"));
    assert!(
        m.contains("one value is larger") && m.contains("[limits] query_bytes"),
        "{m}"
    );
    assert!(step(&r, "two").get("Ok").is_some(), "{r:?}");
}

#[test]
fn read_file_stops_at_the_cap_even_on_endless_files() {
    let sb = Sandbox::new();
    let big = sb.join("big.bin");
    std::fs::write(&big, vec![b'x'; (1 << 20) + 1]).unwrap();
    // A named pipe nobody writes to: opening it to read would block.
    let fifo = sb.join("pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let config = json!({"steps": [
        {"id": "zero", "op": {"call": "read-file", "args": {"path": "/dev/zero"}}},
        {"id": "big", "op": {"call": "read-file", "args": {"path": big}}},
        {"id": "fifo", "op": {"call": "read-file", "args": {"path": fifo}}},
    ]});
    let grants = json!({"read": ["/dev/zero", big, fifo]});
    sb.runbook(&runbook(
        FIXTURE,
        &config,
        &grants,
        &json!({"read_bytes": "1MiB"}),
    ));
    let (_, report, _) = sb.run_json(&[]);
    let r = step_results(&report);
    for id in ["zero", "big"] {
        let m = err_message(step(&r, id));
        assert!(
            m.contains("read-file limit of 1 MiB") && m.contains("[limits] read_bytes"),
            "{id}: {m}"
        );
    }
    let m = err_message(step(&r, "fifo"));
    assert!(m.contains("FIFO") && m.contains("block"), "{m}");
}

#[test]
fn key_value_state_per_plugin_is_capped() {
    let sb = Sandbox::new();
    let big = "v".repeat(600 << 10);
    let config = json!({"steps": [
        {"id": "a", "op": {"call": "set", "args": {"key": "a", "value": big}}},
        {"id": "b", "op": {"call": "set", "args": {"key": "b", "value": big}}},
        {"id": "a-again", "op": {"call": "set", "args": {"key": "a", "value": big}}},
        {"id": "keys", "op": {"call": "keys", "args": {"prefix": ""}}},
    ]});
    sb.runbook(&runbook(
        FIXTURE,
        &config,
        &json!({}),
        &json!({"kv_bytes": "1MiB"}),
    ));
    let (_, report, _) = sb.run_json(&[]);
    let r = step_results(&report);
    assert!(step(&r, "a").get("Ok").is_some(), "{:?}", step(&r, "a"));
    let m = err_message(step(&r, "b"));
    assert!(
        m.contains("limit of 1 MiB") && m.contains("[limits] kv_bytes") && m.contains("\"b\""),
        "{m}"
    );
    assert!(
        step(&r, "a-again").get("Ok").is_some(),
        "replacing a value does not count the old one"
    );
    assert_eq!(step(&r, "keys")["Ok"], json!(["a"]));
}

#[test]
fn results_are_bounded_findings_and_summaries() {
    let sb = Sandbox::new();
    sb.runbook(&runbook(
        HOSTILE,
        &json!({"assess": "findings", "n": 5000}),
        &json!({}),
        &json!({"findings": 100}),
    ));
    let out = sb.rewind(&["plan", "--json", "rewind.toml"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let findings = report["plugins"][0]["assessment"]["findings"]
        .as_array()
        .unwrap();
    assert_eq!(findings.len(), 101, "100 kept and one that says so");
    let last = &findings[100];
    assert!(
        last["observed"].as_str().unwrap().contains("5000 findings")
            && last["threshold"]
                .as_str()
                .unwrap()
                .contains("[limits] findings = 100"),
        "{last}"
    );

    sb.runbook(&runbook(
        HOSTILE,
        &json!({"assess": "summary", "n": 1_000_000}),
        &json!({}),
        &json!({"message_bytes": "4KiB"}),
    ));
    let out = sb.rewind(&["plan", "--json", "rewind.toml"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let summary = report["plugins"][0]["assessment"]["summary"]
        .as_str()
        .unwrap();
    assert!(summary.len() < 5000, "{}", summary.len());
    assert!(
        summary.ends_with("[cut: 1000000 bytes, over the [limits] message_bytes of 4 KiB]"),
        "{}",
        &summary[4000..]
    );
}

#[test]
fn a_log_flood_is_cut_per_message_and_per_run() {
    let sb = Sandbox::new();
    sb.runbook(&runbook(
        HOSTILE,
        &json!({"assess": "log", "n": 200, "size": 65536}),
        &json!({}),
        &json!({"log_bytes": "1MiB", "log_message_bytes": "16KiB"}),
    ));
    let (_, report, _) = sb.run_json(&[]);
    let journal_path = report["journal"].as_str().unwrap();
    let journal = std::fs::read_to_string(journal_path).unwrap();
    assert!(
        journal.contains("[limits] log_message_bytes of 16 KiB"),
        "each message is cut"
    );
    assert_eq!(
        journal.matches("[limits] log_bytes").count(),
        1,
        "one notice when the run's budget is spent"
    );
    let len = journal.len();
    assert!(
        len < (1 << 20) + (256 << 10),
        "the journal stays near the 1 MiB budget: {len} bytes"
    );
}

#[test]
fn component_files_are_checked_before_they_are_read() {
    let sb = Sandbox::new();
    let fifo = sb.join("plugin.wasm");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success());
    for (component, kind) in [
        (fifo.to_str().unwrap(), "a FIFO"),
        ("/dev/zero", "a character device"),
    ] {
        sb.runbook(&runbook(component, &json!({}), &json!({}), &json!({})));
        let started = std::time::Instant::now();
        let out = sb.rewind(&["check", "rewind.toml"]);
        assert!(
            started.elapsed().as_secs() < 20,
            "{component} was not refused in time"
        );
        let t = text(&out);
        assert_eq!(out.status.code(), Some(3), "{t}");
        assert!(
            t.contains(&format!("is not a regular file ({kind})")),
            "{t}"
        );
    }
    sb.runbook(&runbook(
        FIXTURE,
        &json!({}),
        &json!({}),
        &json!({"component_bytes": "1KiB"}),
    ));
    let out = sb.rewind(&["check", "rewind.toml"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(
        t.contains("more than the component size limit of 1 KiB")
            && t.contains("[limits] component_bytes"),
        "{t}"
    );
}

#[test]
fn a_component_with_a_mistyped_export_is_refused_at_load() {
    let sb = Sandbox::new();
    sb.runbook(&runbook(MISTYPED, &json!({}), &json!({}), &json!({})));
    let out = sb.rewind(&["check", "rewind.toml"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(
        t.contains("`assess` has the wrong type") && t.contains("rebuild the plugin"),
        "{t}"
    );
    assert!(!t.contains("describe"), "refused before describe ran: {t}");
}

#[test]
fn stack_overflow_and_exit_are_reported_plainly() {
    let sb = Sandbox::new();
    sb.runbook(&runbook(
        HOSTILE,
        &json!({"assess": "recurse"}),
        &json!({}),
        &json!({}),
    ));
    let out = sb.rewind(&["plan", "rewind.toml"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("plugin fx overflowed its stack in `assess`") && t.contains("recurse"),
        "{t}"
    );
    assert!(!t.contains("out of bounds"), "{t}");

    sb.runbook(&runbook(
        HOSTILE,
        &json!({"assess": "exit", "n": 1}),
        &json!({}),
        &json!({}),
    ));
    let out = sb.rewind(&["plan", "rewind.toml"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("plugin fx exited with code 1 during `assess`"),
        "{t}"
    );
    assert!(!t.contains("backtrace"), "{t}");
}

/// Every side effect is journaled: a plugin that asks for side effects in
/// a loop is refused past `[limits] actions`, and one that describes a
/// side effect at length is cut to `message_bytes` in the record, so the
/// journal (and the host's memory) stay bounded.
#[test]
fn side_effects_per_run_are_capped_and_their_records_cut() {
    let sb = Sandbox::new();
    let long = "x".repeat(8 << 10);
    let mut steps: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("set-{i}"), "op": {"call": "set", "args": {"key": format!("k{i}"), "value": "v"}}}))
        .collect();
    steps.insert(
        0,
        json!({"id": "long", "op": {"call": "run", "args": {"cmd": {"program": "true", "args": [long]}}}}),
    );
    let config = json!({"steps": steps});
    sb.runbook(&runbook(
        FIXTURE,
        &config,
        &json!({"exec": ["true"]}),
        &json!({"actions": 3, "message_bytes": "1KiB"}),
    ));
    let (_, report, _) = sb.run_json(&[]);
    let r = step_results(&report);
    assert!(step(&r, "long").get("Ok").is_some(), "{r:?}");
    assert!(step(&r, "set-0").get("Ok").is_some(), "{r:?}");
    assert!(step(&r, "set-1").get("Ok").is_some(), "{r:?}");
    for id in ["set-2", "set-3", "set-4"] {
        let m = err_message(step(&r, id));
        assert!(
            m.contains("more than 3 side effects") && m.contains("[limits] actions"),
            "{id}: {m}"
        );
    }
    // Only what was carried out is in the journal, the long one cut.
    let runs = sb.join("state/runs");
    let journal = std::fs::read_dir(&runs)
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect::<String>();
    let actions: Vec<&str> = journal
        .lines()
        .filter(|l| l.contains("\"event\":\"action\""))
        .collect();
    assert_eq!(actions.len(), 3, "{journal}");
    assert!(
        actions[0].contains("[cut: ") && actions[0].len() < 2048,
        "{}",
        actions[0]
    );
}

/// A snapshot of a granted tree is bounded in size and time: past either
/// limit it fails naming the `[limits]` key, and leaves no temporary
/// archive behind; one left by a snapshot that was killed is removed by
/// the next.
#[test]
fn snapshots_are_bounded_in_size_and_time_and_leave_no_temp_files() {
    let sb = Sandbox::new();
    let data = sb.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("small"), "x").unwrap();
    std::fs::write(data.join("big"), vec![7u8; 3 << 20]).unwrap();
    let snaps = sb.join("state/snapshots/fx");
    std::fs::create_dir_all(&snaps).unwrap();
    std::fs::write(snaps.join(".tmp-killed.tar.zst"), "half an archive").unwrap();
    let names = || -> Vec<String> {
        std::fs::read_dir(&snaps)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let snap = |paths: Value| json!({"steps": [{"id": "snap", "op": {"call": "snapshot", "args": {"label": "pre", "paths": paths}}}]});
    let grants = json!({"read": [data]});

    // Too big: refused, nothing kept, and the leftover is gone too.
    sb.runbook(&runbook(
        FIXTURE,
        &snap(json!([data])),
        &grants,
        &json!({"snapshot_bytes": "1MiB"}),
    ));
    let (_, report, _) = sb.run_json(&[]);
    let m = err_message(step(&step_results(&report), "snap"));
    assert!(
        m.contains("[limits] snapshot_bytes") && m.contains("big"),
        "{m}"
    );
    assert_eq!(names(), Vec::<String>::new());

    // Out of time: refused the same way.
    sb.runbook(&runbook(
        FIXTURE,
        &snap(json!([data])),
        &grants,
        &json!({"snapshot_time": "0s"}),
    ));
    let (_, report, _) = sb.run_json(&[]);
    let m = err_message(step(&step_results(&report), "snap"));
    assert!(m.contains("[limits] snapshot_time"), "{m}");
    assert_eq!(names(), Vec::<String>::new());

    // Within the limits: an archive and its manifest, no temporary file.
    sb.runbook(&runbook(
        FIXTURE,
        &snap(json!([data.join("small")])),
        &grants,
        &json!({"snapshot_bytes": "1MiB"}),
    ));
    let (_, report, _) = sb.run_json(&[]);
    assert!(
        step(&step_results(&report), "snap").get("Ok").is_some(),
        "{report}"
    );
    let mut kept = names();
    kept.sort();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(kept.iter().all(|n| !n.starts_with(".tmp-")), "{kept:?}");
}

/// No plugin holds rewind past `[limits] call_time`: not one that loops on
/// cheap host calls (little guest time, so the CPU budget never trips),
/// not one that asks the host to wait an hour, not one that sleeps an hour
/// (a WASI poll, which only the call's deadline can cut).
#[test]
fn no_plugin_holds_rewind_past_the_call_deadline() {
    for (assess, grants) in [
        (json!({"assess": "host-loop"}), json!({})),
        (
            json!({"assess": "wait", "n": 3_600_000}),
            json!({"tcp": ["127.0.0.1:9"]}),
        ),
        (json!({"assess": "sleep", "n": 3_600_000}), json!({})),
    ] {
        let sb = Sandbox::new();
        sb.runbook(&runbook(
            HOSTILE,
            &assess,
            &grants,
            &json!({"cpu": "60s", "call_time": "2s"}),
        ));
        let mut child = std::process::Command::new(crate::util::REWIND)
            .args(["run", "--json"])
            .current_dir(sb.path())
            .env("REWIND_LOCK_DIR", sb.path().join("state/locks"))
            .env("REWIND_CACHE_DIR", cache_dir())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A failure bound only: the deadline is 2 s.
        let ended = wait_until(PATIENCE, || child.try_wait().unwrap().is_some());
        if !ended {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            ended,
            "{assess}: rewind was still running after {PATIENCE:?}"
        );
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        let text = report.to_string();
        assert!(
            text.contains("[limits] call_time") || text.contains("waited"),
            "{assess}: {text}"
        );
        if assess["assess"] != "wait" {
            assert!(text.contains("[limits] call_time"), "{assess}: {text}");
            assert!(!text.contains("slept"), "{text}");
        } else if let Some(w) = report["plugins"][0]["assessment"]["summary"].as_str() {
            // The wait was cut to the deadline, far short of the hour asked.
            let ms: u64 = w
                .trim_start_matches("waited ")
                .trim_end_matches(" ms")
                .parse()
                .unwrap();
            assert!(ms < 3_600_000, "{w}");
        }
    }
}
