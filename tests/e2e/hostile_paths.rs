//! Hostile plugins against paths (issue 9): each test scripts the fixture
//! plugin to attempt one escape that once worked, asserts it is refused
//! with a clear message, and fingerprints everything outside the grant
//! (paths, kinds, sizes, mtimes, content hashes) before and after.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::util::*;

/// Every entry under `root` (not following links), skipping `skip`: its
/// kind, size, mtime and the SHA-256 of its contents (or link target).
fn fingerprint(root: &Path, skip: &[&Path]) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    fn walk(d: &Path, skip: &[&Path], out: &mut BTreeMap<PathBuf, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(d).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let p = e.path();
            if skip.iter().any(|s| p.starts_with(s)) {
                continue;
            }
            let md = std::fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let (kind, hash) = if ft.is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                (
                    "link",
                    hex::encode(Sha256::digest(t.as_os_str().as_encoded_bytes())),
                )
            } else if ft.is_dir() {
                ("dir", String::new())
            } else {
                (
                    "file",
                    hex::encode(Sha256::digest(std::fs::read(&p).unwrap())),
                )
            };
            out.insert(
                p.clone(),
                format!(
                    "{kind} size={} mtime={}.{} mode={:o} {hash}",
                    md.len(),
                    md.mtime(),
                    md.mtime_nsec(),
                    md.mode()
                ),
            );
            if ft.is_dir() {
                walk(&p, skip, out);
            }
        }
    }
    walk(root, skip, &mut out);
    out
}

fn cmd(program: &str, args: &[&str]) -> Value {
    json!({"program": program, "args": args, "cwd": null, "env": [], "stdin": null, "timeout_ms": 10000})
}

/// A fixture runbook with its own `state_dir` and component.
fn runbook(component: &str, state_dir: &Path, config: &Value, grants: &Value) -> String {
    let mut config = config.clone();
    strip_nulls(&mut config);
    toml::to_string(&json!({
        "name": "hostile",
        "state_dir": state_dir,
        "limits": {"cpu": "2s", "memory": "64MiB"},
        "plugin": [{"name": "fx", "component": component, "config": config, "grants": grants}],
    }))
    .unwrap()
}

/// The real CLI with `cache` as the compiled cache.
fn rewind_with_cache(sb: &Sandbox, cache: &Path, args: &[&str]) -> Output {
    Command::new(REWIND)
        .args(args)
        .current_dir(sb.path())
        .env("REWIND_CACHE_DIR", cache)
        .env("REWIND_LOCK_DIR", sb.path().join("state/locks"))
        .env_remove("REWIND_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_with(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in {text}"))
        + 1
}

fn sha256_file(p: &str) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

#[test]
fn a_plugin_cannot_poison_another_plugins_compiled_cache() {
    let sb = Sandbox::new();
    let cache = sb.join("cache");
    // Both components compiled into this test's own cache.
    let victim = runbook(
        FIXTURE,
        &sb.join("state"),
        &json!({"steps": [{"id": "who"}]}),
        &json!({}),
    );
    std::fs::write(sb.join("victim.toml"), &victim).unwrap();
    let attacker = runbook(FIXTURE_V2, &sb.join("state2"), &json!({}), &json!({}));
    std::fs::write(sb.join("attacker.toml"), attacker).unwrap();
    for rb in ["victim.toml", "attacker.toml"] {
        let out = rewind_with_cache(&sb, &cache, &["check", rb]);
        assert!(out.status.success(), "{}", text(&out));
    }
    // The attacker's compiled code copied over the victim's entry (what a
    // plugin with write on the cache directory did; the next test shows no
    // runbook can grant that any more, so the test plants it itself).
    let entry = |sha: &str| {
        std::fs::read_dir(&cache)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                n.starts_with(&sha[..32]) && n.ends_with(".cwasm")
            })
            .unwrap_or_else(|| panic!("no cache entry for {sha}"))
    };
    let victim_sha = sha256_file(FIXTURE);
    let victim_entry = entry(&victim_sha);
    std::fs::copy(entry(&sha256_file(FIXTURE_V2)), &victim_entry).unwrap();

    let out = rewind_with_cache(&sb, &cache, &["run", "--json", "victim.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The victim's own code ran: its no-op step answers its own flavor, not
    // the attacker's "v2".
    let results = step_results(&report);
    let who = step(&results, "who");
    assert!(who.get("Ok").is_some() && who["Ok"] != "v2", "{who}");
    let p = plugin(&report);
    assert_eq!(p["sha256"], victim_sha, "{p}");
    assert_eq!(p["load"]["compiled"], true, "recompiled: {p}");
    let note = p["load"]["cache_rejected"].as_str().unwrap_or_default();
    assert!(
        note.contains("did not match") && note.contains("recompiled"),
        "{p}"
    );
    assert!(stderr.contains("did not match"), "logged: {stderr}");
    let journal = std::fs::read_to_string(report["journal"].as_str().unwrap()).unwrap();
    let loaded: Value = journal
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["event"] == "plugin-loaded")
        .unwrap();
    assert_eq!(loaded["sha256"], victim_sha);
    assert!(
        loaded["cache_rejected"]
            .as_str()
            .is_some_and(|s| s.contains("did not match")),
        "journaled: {loaded}"
    );

    // The entry was written again, with its record: the next run uses it.
    let out = rewind_with_cache(&sb, &cache, &["run", "--json", "victim.toml"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plugin(&report)["load"]["compiled"], false, "{report}");
    assert!(plugin(&report)["load"].get("cache_rejected").is_none());
    assert_ne!(step(&step_results(&report), "who")["Ok"], "v2");
}

#[test]
fn a_write_grant_over_the_compiled_cache_is_refused() {
    let sb = Sandbox::new();
    let home = sb.join("home");
    let cache = home.join(".cache/rewind");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join("keep"), "x").unwrap();
    // If it ran, this plugin would overwrite the cache's contents.
    let config = json!({"steps": [
        {"id": "poison", "op": {"call": "write-file", "args": {"path": cache.join("keep"), "contents": "poisoned"}}},
    ]});
    let text_rb = runbook(
        FIXTURE,
        &sb.join("state"),
        &config,
        &json!({"write": [home]}),
    );
    sb.runbook(&text_rb);
    let line = line_with(&text_rb, "write = ");
    let before = fingerprint(sb.path(), &[]);
    for args in [&["check"][..], &["run"], &["plan"], &["history"]] {
        // The cache named by the environment, as by default ...
        let out = rewind_with_cache(&sb, &cache, args);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {t}");
        assert!(
            t.contains(&format!("rewind.toml:{line}:"))
                && t.contains("compiled-code cache")
                && t.contains(&cache.display().to_string()),
            "{args:?}: {t}"
        );
        // ... and by --cache-dir.
        let mut full = vec!["--cache-dir", cache.to_str().unwrap()];
        full.extend_from_slice(args);
        let out = rewind_with_cache(&sb, &sb.join("elsewhere"), &full);
        assert_eq!(out.status.code(), Some(2), "{full:?}: {}", text(&out));
        assert!(text(&out).contains("compiled-code cache"), "{}", text(&out));
    }
    assert_eq!(fingerprint(sb.path(), &[]), before, "nothing changed");
}

#[test]
fn spawn_cannot_append_its_log_through_a_symlink_out_of_the_grant() {
    let sb = Sandbox::new();
    let granted = sb.join("granted");
    let outside = sb.join("outside");
    std::fs::create_dir_all(&granted).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim.log"), "precious\n").unwrap();
    let link = granted.join("app.log");
    let dirlink = granted.join("logs");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let config = json!({"steps": [
        // A child the plugin may run plants the links (no file import can).
        {"id": "plant", "op": {"call": "run", "args": {"cmd": cmd("ln", &["-s", &s(&outside.join("victim.log")), &s(&link)])}}},
        {"id": "plant-dir", "op": {"call": "run", "args": {"cmd": cmd("ln", &["-s", &s(&outside), &s(&dirlink)])}}},
        {"id": "spawn", "op": {"call": "spawn", "args": {"cmd": cmd("sh", &["-c", "echo pwned"]), "log_path": link}}},
        {"id": "spawn-dir", "op": {"call": "spawn", "args": {"cmd": cmd("sh", &["-c", "echo pwned"]), "log_path": dirlink.join("new.log")}}},
    ]});
    sb.runbook(&runbook(
        FIXTURE,
        &sb.join("state"),
        &config,
        &json!({"exec": ["ln", "sh"], "write": [granted]}),
    ));
    let before = fingerprint(sb.path(), &[&granted, &sb.join("state")]);
    let (code, report, stderr) = sb.run_json(&[]);
    assert_eq!(code, 0, "{report} {stderr}");
    let r = step_results(&report);
    for id in ["plant", "plant-dir"] {
        assert!(step(&r, id).get("Ok").is_some(), "{id}: {:?}", step(&r, id));
    }
    let err = step(&r, "spawn")["Err"]["Invalid"]
        .as_str()
        .unwrap_or_else(|| panic!("spawn through a link: {:?}", step(&r, "spawn")));
    assert!(err.contains("is a symbolic link"), "{err}");
    let d = denial(step(&r, "spawn-dir"))
        .unwrap_or_else(|| panic!("spawn into a linked dir: {:?}", step(&r, "spawn-dir")));
    assert_eq!(d["capability"], "write");
    assert_eq!(
        fingerprint(sb.path(), &[&granted, &sb.join("state")]),
        before,
        "nothing outside the grant changed"
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("victim.log")).unwrap(),
        "precious\n"
    );
}

#[test]
fn a_plugin_cannot_forge_or_delete_journals_through_a_directory_holding_the_state_dir() {
    let sb = Sandbox::new();
    let site = sb.join("site");
    let state = site.join("state");
    std::fs::create_dir_all(&site).unwrap();
    // A first, honest run records one journal.
    let honest = runbook(FIXTURE, &state, &json!({}), &json!({}));
    sb.runbook(&honest);
    let (code, _, stderr) = sb.run_json(&[]);
    assert_eq!(code, 0, "{stderr}");
    // The attack: move the directory holding the state away, forge a
    // journal in it, move it back; then remove it with everything in it.
    let moved = sb.join("site-moved");
    let config = json!({"steps": [
        {"id": "move", "op": {"call": "rename", "args": {"source": site, "target": moved}}},
        {"id": "forge", "op": {"call": "write-file", "args": {"path": moved.join("state/runs/forged.jsonl"), "contents": "{\"event\":\"run-start\"}\n"}}},
        {"id": "back", "op": {"call": "rename", "args": {"source": moved, "target": site}}},
        {"id": "wipe", "op": {"call": "remove", "args": {"path": site}}},
    ]});
    let hostile = runbook(FIXTURE, &state, &config, &json!({"write": [sb.path()]}));
    sb.runbook(&hostile);
    let line = line_with(&hostile, "write = ");
    let before = fingerprint(sb.path(), &[]);
    for args in [
        &["check"][..],
        &["run"],
        &["run", "--dry-run"],
        &["plan"],
        &["history"],
        &["drills"],
    ] {
        let out = sb.rewind(args);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {t}");
        assert!(
            t.contains(&format!("rewind.toml:{line}:"))
                && t.contains(&format!("(line {line})"))
                && t.contains("state directory")
                && t.contains(&state.display().to_string()),
            "{args:?} names the grant line and the state directory: {t}"
        );
    }
    assert_eq!(fingerprint(sb.path(), &[]), before, "nothing changed");
    // The honest runbook still sees its one run, and no forged one.
    sb.runbook(&honest);
    let out = sb.rewind(&["history"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("forged"), "{}", text(&out));
    assert_eq!(std::fs::read_dir(state.join("runs")).unwrap().count(), 1);
}

#[test]
fn a_write_grant_over_a_component_or_the_runbook_is_refused() {
    let sb = Sandbox::new();
    let plugins = sb.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let component = plugins.join("fixture.wasm");
    std::fs::copy(FIXTURE, &component).unwrap();
    let cases = [
        (
            json!({"write": [plugins]}),
            "the component of plugin \"fx\"",
        ),
        (json!({"write": [sb.join("rewind.toml")]}), "the runbook"),
    ];
    for (grants, what) in cases {
        let text_rb = runbook(
            component.to_str().unwrap(),
            &sb.join("state"),
            &json!({}),
            &grants,
        );
        sb.runbook(&text_rb);
        let before = fingerprint(sb.path(), &[]);
        let line = line_with(&text_rb, "write = ");
        let out = sb.rewind(&["check"]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{t}");
        assert!(
            t.contains(what) && t.contains(&format!("(line {line})")),
            "{what}: {t}"
        );
        let out = sb.rewind(&["run"]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert_eq!(fingerprint(sb.path(), &[]), before, "nothing changed");
    }
}

#[test]
fn an_exec_grant_inside_a_write_grant_is_refused() {
    let sb = Sandbox::new();
    let app = sb.join("app");
    std::fs::create_dir_all(app.join("bin")).unwrap();
    let tool = app.join("bin/tool");
    std::fs::write(&tool, "#!/bin/sh\necho honest\n").unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // If it ran: rewrite the granted program, then run it.
    let config = json!({"steps": [
        {"id": "rewrite", "op": {"call": "write-file", "args": {"path": tool, "contents": "#!/bin/sh\necho pwned > /dev/null\n"}}},
        {"id": "run", "op": {"call": "run", "args": {"cmd": cmd(tool.to_str().unwrap(), &[])}}},
    ]});
    let text_rb = runbook(
        FIXTURE,
        &sb.join("state"),
        &config,
        &json!({"exec": [tool], "write": [app]}),
    );
    sb.runbook(&text_rb);
    let exec_line = line_with(&text_rb, "exec = ");
    let write_line = line_with(&text_rb, "write = ");
    assert_ne!(exec_line, write_line);
    let before = fingerprint(sb.path(), &[]);
    for args in [&["check"][..], &["run"], &["plan"]] {
        let out = sb.rewind(args);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {t}");
        assert!(
            t.contains(&format!("rewind.toml:{exec_line}:"))
                && t.contains(&format!(
                    "exec grant {:?} (line {exec_line})",
                    tool.to_str().unwrap()
                ))
                && t.contains(&format!(
                    "write grant {:?} (line {write_line})",
                    app.to_str().unwrap()
                )),
            "{args:?} names both grant lines: {t}"
        );
    }
    assert_eq!(fingerprint(sb.path(), &[]), before, "nothing changed");
}

#[test]
fn links_planted_by_a_child_cannot_lead_file_calls_out_of_the_grant() {
    let sb = Sandbox::new();
    let granted = sb.join("granted");
    let outside = sb.join("outside");
    let state = sb.join("state");
    std::fs::create_dir_all(&granted).unwrap();
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::fs::write(outside.join("secret"), "secret").unwrap();
    std::fs::write(granted.join("mine"), "mine").unwrap();
    // Read access to the parent lets the plugin see the state dir's
    // neighbours, but never the state dir itself.
    let out = granted.join("out");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let config = json!({"steps": [
        {"id": "plant", "op": {"call": "run", "args": {"cmd": cmd("ln", &["-s", &s(&outside), &s(&out)])}}},
        {"id": "write", "op": {"call": "write-file", "args": {"path": out.join("secret"), "contents": "pwned"}}},
        {"id": "copy", "op": {"call": "copy", "args": {"source": granted.join("mine"), "target": out.join("copied")}}},
        {"id": "rename-in", "op": {"call": "rename", "args": {"source": granted.join("mine"), "target": out.join("moved")}}},
        {"id": "rename-out", "op": {"call": "rename", "args": {"source": out.join("secret"), "target": granted.join("stolen")}}},
        {"id": "remove", "op": {"call": "remove", "args": {"path": out.join("sub")}}},
        {"id": "make-dir", "op": {"call": "make-dir", "args": {"path": out.join("new")}}},
        {"id": "link-state", "op": {"call": "symlink", "args": {"target": state, "link": granted.join("state-link")}}},
        {"id": "list-state", "op": {"call": "list-dir", "args": {"path": state.join("runs"), "recursive": true}}},
        {"id": "rename-parent", "op": {"call": "rename", "args": {"source": sb.path(), "target": granted.join("all")}}},
    ]});
    sb.runbook(&runbook(
        FIXTURE,
        &state,
        &config,
        &json!({"exec": ["ln"], "write": [granted], "read": [sb.path()]}),
    ));
    let before = fingerprint(sb.path(), &[&granted, &state]);
    let (code, report, stderr) = sb.run_json(&[]);
    assert_eq!(code, 0, "{report} {stderr}");
    let r = step_results(&report);
    assert!(
        step(&r, "plant").get("Ok").is_some(),
        "{:?}",
        step(&r, "plant")
    );
    for id in [
        "write",
        "copy",
        "rename-in",
        "rename-out",
        "remove",
        "make-dir",
        "link-state",
        "list-state",
        "rename-parent",
    ] {
        let v = step(&r, id);
        let err = v
            .get("Err")
            .unwrap_or_else(|| panic!("{id} escaped: {v:?}"));
        let msg = err.to_string();
        assert!(
            denial(v).is_some() || msg.contains("state directory") || msg.contains("holds"),
            "{id}: a clear refusal: {msg}"
        );
    }
    assert_eq!(
        fingerprint(sb.path(), &[&granted, &state]),
        before,
        "nothing outside the grant changed"
    );
    assert!(granted.join("mine").exists());
}
