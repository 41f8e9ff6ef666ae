//! The CLI's face, compared with golden files (`tests/e2e/golden/*.snap`,
//! insta): every `--help`, `status`, `show` and the common runbook errors.
//! A change to any of them fails here until the snapshot is reviewed and
//! updated on purpose (`INSTA_UPDATE=always cargo test -p rewind --test
//! e2e golden`, or `cargo insta review`). What varies from run to run
//! (temporary paths, run ids, times, hashes, durations) is filtered out.

use serde_json::json;

use crate::util::*;

fn settings(sb: Option<&Sandbox>) -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path("golden");
    s.set_prepend_module_to_snapshot(false);
    if let Some(sb) = sb {
        s.add_filter(&regex_escape(&sb.path().display().to_string()), "[SANDBOX]");
    }
    s.add_filter(&regex_escape(FIXTURE), "[FIXTURE]");
    s.add_filter(r"\d{8}T\d{6}Z-[0-9a-f]{4}", "[RUN]");
    s.add_filter(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "[TIME]");
    s.add_filter(r"\+\s*\d+\.\d{3}s", "+[OFFSET]");
    s.add_filter(
        r"sha256 [0-9a-f]{12}, (compiled|from cache)",
        "sha256 [HASH], [LOADED]",
    );
    s.add_filter(r"\b\d+(\.\d+)? (us|ms|s)\b", "[DURATION]");
    s
}

/// A path as a regex that matches it literally.
fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$#&-~".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

const COMMANDS: &[&str] = &[
    "check",
    "compile",
    "plan",
    "run",
    "resume",
    "approve",
    "deny",
    "status",
    "snapshots",
    "restore",
    "history",
    "show",
    "drill",
    "drills",
    "watch",
    "completions",
    "man",
];

#[test]
fn every_help_text_is_as_reviewed() {
    let sb = Sandbox::new();
    let out = sb.rewind(&["--help"]);
    assert!(out.status.success());
    settings(None).bind(|| insta::assert_snapshot!("help", text(&out)));
    for cmd in COMMANDS {
        let out = sb.rewind(&[cmd, "--help"]);
        assert!(out.status.success(), "{cmd}");
        let t = text(&out);
        assert!(t.contains("Examples:"), "{cmd} --help has examples: {t}");
        settings(None).bind(|| insta::assert_snapshot!(format!("help-{cmd}"), t));
    }
}

#[test]
fn status_and_show_read_as_reviewed() {
    let sb = Sandbox::new();
    let config = json!({"steps": [
        {"id": "look", "effect": "observe", "op": {"call": "log", "args": {"level": "Info", "message": "looked"}}},
        {"id": "restart", "effect": "disruptive"},
    ]});
    sb.runbook(&fixture_runbook(&config, &json!({})));
    let s = settings(Some(&sb));
    let out = sb.rewind(&["status"]);
    s.bind(|| insta::assert_snapshot!("status-idle", text(&out)));
    let (code, report, _) = sb.run_json(&[]);
    assert_eq!(code, 0);
    let run = report["run_id"].as_str().unwrap();
    let out = sb.rewind(&["show", run]);
    s.bind(|| insta::assert_snapshot!("show", text(&out)));
    let out = sb.rewind(&["status"]);
    s.bind(|| insta::assert_snapshot!("status-after-a-run", text(&out)));
}

#[test]
fn common_runbook_errors_read_as_reviewed() {
    let sb = Sandbox::new();
    let s = settings(Some(&sb));
    let cases: &[(&str, String)] = &[
        ("error-toml-syntax", "name = \"x\"\n[[plugin]\nname = \"a\"\n".to_string()),
        (
            "error-unknown-key",
            format!(
                "name = \"x\"\nstate_dir = \"state\"\n[[plugin]]\nname = \"a\"\ncomponent = \"{FIXTURE}\"\ngrant = {{}}\n"
            ),
        ),
        (
            "error-missing-component",
            "name = \"x\"\nstate_dir = \"state\"\n[[plugin]]\nname = \"a\"\ncomponent = \"plugins/missing.wasm\"\n".to_string(),
        ),
        (
            "error-bad-duration",
            format!(
                "name = \"x\"\nstate_dir = \"state\"\n[watch]\nperiod = \"30 parsecs\"\n[[plugin]]\nname = \"a\"\ncomponent = \"{FIXTURE}\"\n"
            ),
        ),
    ];
    for (name, runbook) in cases {
        sb.runbook(runbook);
        let out = sb.rewind(&["check"]);
        assert_ne!(out.status.code(), Some(0), "{name}");
        s.bind(|| {
            insta::assert_snapshot!(
                *name,
                format!("exit {}\n{}", out.status.code().unwrap(), text(&out))
            )
        });
    }
}

/// Shell completions and man pages come from the same clap definitions;
/// bash checks its script's syntax, and every command gets a page.
#[test]
fn completions_and_man_pages_are_generated() {
    let sb = Sandbox::new();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = sb.rewind(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out));
        let script = String::from_utf8(out.stdout).unwrap();
        for cmd in COMMANDS {
            assert!(script.contains(cmd), "{shell} completes {cmd}");
        }
        if shell == "bash" {
            let path = sb.join("rewind.bash");
            std::fs::write(&path, &script).unwrap();
            let check = std::process::Command::new("bash")
                .arg("-n")
                .arg(&path)
                .output()
                .unwrap();
            assert!(check.status.success(), "{}", text(&check));
        }
    }
    let out = sb.rewind(&["man"]);
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH rewind 1"), "{page}");
    let dir = sb.join("man1");
    std::fs::create_dir_all(&dir).unwrap();
    let out = sb.rewind(&["man", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    for cmd in COMMANDS {
        let page = std::fs::read_to_string(dir.join(format!("rewind-{cmd}.1")))
            .unwrap_or_else(|e| panic!("rewind-{cmd}.1: {e}"));
        assert!(page.contains(".TH rewind-"), "{cmd}: {page}");
        assert!(
            page.contains("Examples"),
            "{cmd}: its examples are in the page"
        );
    }
    // --color decides the styling of help outright; NO_COLOR turns the
    // default off.
    let styled = |args: &[&str], no_color: bool| {
        let mut c = std::process::Command::new(REWIND);
        c.args(args);
        if no_color {
            c.env("NO_COLOR", "1");
        } else {
            c.env_remove("NO_COLOR");
        }
        c.output().unwrap().stdout.contains(&0x1b)
    };
    assert!(styled(&["--color", "always", "--help"], false));
    assert!(!styled(&["--color=never", "--help"], false));
    assert!(!styled(&["--help"], true), "not a terminal, NO_COLOR set");
    // A reader that closes the pipe ends the output quietly.
    let mut child = std::process::Command::new(REWIND)
        .args(["man"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stderr.is_empty(), "{}", text(&out));
}
