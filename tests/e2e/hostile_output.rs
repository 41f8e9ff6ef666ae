//! What leaves the host when a plugin is hostile (or just careless) with
//! its output: secrets from the runbook are masked everywhere (journal,
//! terminal, `--json`, `show`, drill reports, errors), a secret with quotes
//! cannot break or inject TOML, state files are private whatever the umask,
//! and control sequences from plugins never reach a terminal raw.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

use crate::util::*;

/// A secret with nothing special in it; "Zq9xA" marks it.
const TOKEN_A: &str = "hunter2-Zq9xA-tok";
/// A secret made to break things: quotes, a backslash, a space, line
/// breaks and a TOML table header; "Zq9xB" marks it.
const TOKEN_B: &str = "pa\"ss\\wo'rd\n[inj]\nk = \"Zq9xB";
/// Text that may appear nowhere: a piece of every line of each secret, as
/// it reads in every escaped form too (a line shown alone, or a value cut
/// short, is a leak as well).
const MARKERS: [&str; 5] = ["hunter2", "Zq9xA", "wo'rd", "[inj]", "Zq9xB"];

/// The real CLI under umask 022 (the usual default, which made state files
/// 0644), with the test's secrets in its environment.
fn rewind(sb: &Sandbox, args: &[&str]) -> Output {
    Command::new("/bin/sh")
        .arg("-c")
        .arg("umask 022; exec \"$0\" \"$@\"")
        .arg(REWIND)
        .args(args)
        .current_dir(sb.path())
        .env("REWIND_LOCK_DIR", sb.path().join("state/locks"))
        .env("REWIND_CACHE_DIR", cache_dir())
        .env("TOKEN_A", TOKEN_A)
        .env("TOKEN_B", TOKEN_B)
        .env_remove("REWIND_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Every file under `dir`, with its contents.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let md = std::fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            out.extend(files(&p));
        } else if md.is_file() {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

fn assert_no_secret(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for m in MARKERS {
        assert!(!text.contains(m), "{what} holds the secret ({m}):\n{text}");
    }
}

/// A runbook whose plugin is given both secrets in its config and puts
/// them in every kind of text it returns: a command line (run by the
/// assessment, by a step and by a drill's inject), the assessment summary
/// and scenario, a step title and detail, a log message, an HTTP URL and
/// the error of a failed request, a file (which must get the exact value),
/// and its verification error.
fn leaky_runbook(sb: &Sandbox) {
    let closed = free_port();
    std::fs::create_dir(sb.join("out")).unwrap();
    let config = json!({
        "assess": {
            "scenario": "scenario ${secret:TOKEN_A}",
            "op": {"call": "run", "args": {"cmd": {"program": "echo", "args": ["${secret:TOKEN_A}", "${secret:TOKEN_B}"]}}},
            "rollback": true,
        },
        "steps": [
            {"id": "title", "title": "title ${secret:TOKEN_B}"},
            {"id": "log", "op": {"call": "log", "args": {"level": "warn", "message": "log ${secret:TOKEN_A} ${secret:TOKEN_B}"}}},
            {"id": "cmd", "op": {"call": "run", "args": {"cmd": {"program": "sh", "args": ["-c", "echo \"$0\" >&2; exit 3", "${secret:TOKEN_B}"]}}}},
            {"id": "url", "op": {"call": "request", "args": {"req": {
                "method": "POST", "url": format!("http://127.0.0.1:{closed}/hook?token=${{secret:TOKEN_A}}"), "timeout_ms": 2000}}}},
            {"id": "file", "op": {"call": "write-file", "args": {"path": "out/b.txt", "contents": "${secret:TOKEN_B}"}}},
        ],
        "errors": {"verify": "cannot verify with ${secret:TOKEN_B} / ${secret:TOKEN_A}"},
    });
    let doc = json!({
        "name": "leaky", "state_dir": "state", "rto": "1m",
        "limits": {"cpu": "2s", "memory": "64MiB"},
        "plugin": [{"name": "fx", "component": FIXTURE, "config": config, "grants": {
            "exec": ["echo", "sh"], "http": [format!("http://127.0.0.1:{closed}/")], "write": ["out"],
        }}],
        "drill": [
            {"name": "echo", "inject": [["echo", "${secret:TOKEN_A}", "${secret:TOKEN_B}"]], "detect_interval": "50ms", "detect_timeout": "10s"},
            {"name": "broken-inject", "inject": [["sh", "-c", "exit 3", "${secret:TOKEN_B}"]]},
        ],
    });
    sb.runbook(&toml::to_string(&doc).unwrap());
}

#[test]
fn secrets_never_leave_the_host() {
    let sb = Sandbox::new();
    leaky_runbook(&sb);
    let mut outputs: Vec<(String, Output)> = Vec::new();
    let mut go = |args: &[&str]| {
        let out = rewind(&sb, args);
        outputs.push((args.join(" "), out));
        outputs.last().unwrap().1.clone()
    };

    let out = go(&["run", "--approve-manual"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // The plugin got the exact value: the substitution neither broke nor
    // changed it, quotes, backslash and line breaks included.
    assert_eq!(
        std::fs::read_to_string(sb.join("out/b.txt")).unwrap(),
        TOKEN_B
    );
    let t = text(&out);
    assert!(t.contains("***"), "{t}");
    // Each leak path was taken (and masked), not skipped.
    for seen in [
        "scenario ***",
        "title ***",
        "log *** ***",
        "token=***",
        "cannot verify with *** / ***",
    ] {
        assert!(t.contains(seen), "no {seen:?} in:\n{t}");
    }

    let out = go(&["run", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["plugins"][0]["assessment"]["scenario"],
        "scenario ***"
    );
    go(&["plan"]);
    go(&["check"]);
    let out = go(&["history", "--json"]);
    let runs: Value = serde_json::from_slice(&out.stdout).unwrap();
    go(&["history"]);
    for r in runs.as_array().unwrap() {
        let id = r["run_id"].as_str().unwrap();
        let out = go(&["show", id]);
        assert!(text(&out).contains("***"), "{}", text(&out));
        go(&["show", "--json", id]);
    }
    let out = go(&["drill", "--approve-manual"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("injection"), "{}", text(&out));
    go(&["drill", "--json", "--scenario", "echo", "--approve-manual"]);
    go(&["drills"]);
    go(&["drills", "--json"]);

    for (args, out) in &outputs {
        assert_no_secret(&format!("stdout of `rewind {args}`"), &out.stdout);
        assert_no_secret(&format!("stderr of `rewind {args}`"), &out.stderr);
    }
    let state = files(&sb.join("state"));
    assert!(
        state
            .iter()
            .any(|(p, _)| p.extension().is_some_and(|e| e == "md")),
        "no drill report in {state:?}"
    );
    let mut masked = 0;
    for (path, bytes) in &state {
        assert_no_secret(&path.display().to_string(), bytes);
        masked += usize::from(String::from_utf8_lossy(bytes).contains("***"));
    }
    assert!(
        masked >= 4,
        "the journals and reports should show *** where the secret was"
    );
}

#[test]
fn a_secret_cannot_break_the_runbook_or_show_in_its_errors() {
    let sb = Sandbox::new();
    let base = "name = \"x\"\nstate_dir = \"state\"\n[[plugin]]\nname = \"fx\"\ncomponent = \"c.wasm\"\n[plugin.config]\n";
    for (line, expect) in [
        // A syntax error on the secret's line: the line is shown as
        // written, with the reference, not the value.
        ("token = \"${secret:TOKEN_B}\" oops\n", "${secret:TOKEN_B}"),
        // A type error quotes the value: masked.
        ("", "rto"),
        // Outside quotes: refused, naming the variable only.
        ("port = ${TOKEN_B}\n", "TOKEN_B"),
        // In a literal string, which cannot hold a quote: refused.
        ("token = '${secret:TOKEN_B}'\n", "TOKEN_B"),
    ] {
        let text_ = if line.is_empty() {
            base.replace("state_dir", "rto = \"${secret:TOKEN_B}\"\nstate_dir")
        } else {
            format!("{base}{line}")
        };
        sb.runbook(&text_);
        let out = rewind(&sb, &["check"]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert_no_secret("the runbook error", &out.stderr);
        assert!(
            text(&out).contains(expect),
            "{expect:?} not in {}",
            text(&out)
        );
    }
    // A secret too short to mask is refused, by name.
    sb.runbook(&format!("{base}pin = \"${{secret:SHORT}}\"\n"));
    let out = Command::new(REWIND)
        .args(["check"])
        .current_dir(sb.path())
        .env("REWIND_LOCK_DIR", sb.path().join("state/locks"))
        .env("SHORT", "x1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("secret SHORT is 2 character") && !t.contains("x1"),
        "{t}"
    );
}

#[test]
fn state_files_are_private_whatever_the_umask() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.join("data")).unwrap();
    std::fs::write(sb.join("data/app.conf"), "password = x\n").unwrap();
    let config = json!({
        "steps": [
            {"id": "kv", "op": {"call": "set", "args": {"key": "token", "value": "stored"}}, "fail_on_err": true},
            {"id": "snap", "op": {"call": "snapshot", "args": {"label": "before", "paths": ["data"]}}, "fail_on_err": true},
        ],
    });
    let doc = json!({
        "name": "private", "state_dir": "state/nested",
        "plugin": [{"name": "fx", "component": FIXTURE, "config": config,
                    "grants": {"read": ["data"], "exec": ["true"]}}],
        "drill": [{"name": "d", "inject": [["true"]], "detect_interval": "50ms"}],
    });
    sb.runbook(&toml::to_string(&doc).unwrap());
    let out = rewind(&sb, &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = rewind(&sb, &["drill"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let mut seen = Vec::new();
    let mut walk = vec![sb.join("state")];
    while let Some(d) = walk.pop() {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", d.display());
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                walk.push(e.path());
            } else {
                let mode = md.permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{} is {mode:o}", e.path().display());
                seen.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    // Every kind of file was there to be checked.
    for kind in ["lock", "state.sqlite", ".jsonl", ".md", ".json", ".tar.zst"] {
        assert!(
            seen.iter().any(|f| f.ends_with(kind)),
            "no {kind} among {seen:?}"
        );
    }
}

#[test]
fn control_sequences_never_reach_the_terminal() {
    let sb = Sandbox::new();
    // Clear the screen, set the window title, a bare C1 CSI, a bell, a
    // carriage return that would overwrite the line, DEL, and a bidi
    // override that reorders what follows.
    let evil = "\u{1b}[2J\u{1b}]0;pwned\u{7}\u{9b}31m\r\u{7f}\u{202e}gnp.exe";
    let config = json!({
        "assess": {"scenario": format!("scn {evil}"), "rollback": true},
        "steps": [
            {"id": "s1", "title": format!("title {evil}"),
             "op": {"call": "log", "args": {"level": "error", "message": format!("log {evil}")}}},
        ],
        "errors": {"verify": format!("verify {evil}")},
    });
    let doc = json!({
        "name": "esc", "state_dir": "state", "rto": "1m",
        "plugin": [{"name": "fx", "component": FIXTURE, "config": config, "grants": {"exec": ["true"]}}],
        "drill": [{"name": "d", "inject": [["true"]], "detect_interval": "50ms"}],
    });
    sb.runbook(&toml::to_string(&doc).unwrap());
    let raw = |c: char| {
        c == '\u{1b}'
            || c == '\u{7}'
            || c == '\r'
            || c == '\u{7f}'
            || c == '\u{9b}'
            || c == '\u{202e}'
    };
    let mut all = Vec::new();
    for args in [
        &["run", "--approve-manual"][..],
        &["plan"],
        &["drill", "--approve-manual"],
        &["history"],
        &["drills"],
    ] {
        all.push((args.join(" "), rewind(&sb, args)));
    }
    let out = rewind(&sb, &["history", "--json"]);
    let runs: Value = serde_json::from_slice(&out.stdout).unwrap();
    for r in runs.as_array().unwrap() {
        let id = r["run_id"].as_str().unwrap().to_string();
        all.push((format!("show {id}"), rewind(&sb, &["show", &id])));
    }
    let (_, run) = &all[0];
    let t = text(run);
    // Shown, escaped, where it was: the operator sees what the plugin sent.
    assert!(
        t.contains("title \\x1b[2J\\x1b]0;pwned\\x07\\u{9b}31m\\x0d\\x7f\\u{202e}gnp.exe"),
        "{t}"
    );
    assert!(t.contains("log \\x1b") && t.contains("verify \\x1b"), "{t}");
    for (args, out) in &all {
        for (name, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            let s = String::from_utf8_lossy(bytes);
            assert!(
                !s.chars().any(raw),
                "raw control characters in the {name} of `rewind {args}`:\n{s:?}"
            );
        }
    }
    // JSON carries the text exactly, escaped as JSON.
    let out = rewind(&sb, &["run", "--json", "--approve-manual"]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(!s.chars().any(raw), "{s:?}");
    let report: Value = serde_json::from_str(&s).unwrap();
    assert_eq!(
        report["plugins"][0]["assessment"]["scenario"],
        format!("scn {evil}")
    );
    // Text files meant for terminals (drill reports) are escaped too.
    for (path, bytes) in files(&sb.join("state")) {
        let s = String::from_utf8_lossy(&bytes);
        assert!(
            !s.chars().any(raw),
            "raw control characters in {}",
            path.display()
        );
    }
}
