//! Bad input gets a clear error, an exit code, and touches nothing.

use serde_json::json;

use crate::util::*;

#[test]
fn a_malformed_runbook_points_at_the_line() {
    let sb = Sandbox::new();
    let text = format!(
        "name = \"x\"\n\n[[plugin]]\nname = \"a\"\ncomponent = {FIXTURE:?}\non_failure = \"halt\"\n"
    );
    sb.runbook(&text);
    for cmd in ["check", "plan", "run"] {
        let out = sb.rewind(&[cmd]);
        let t = text_of(&out);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {t}");
        assert!(t.contains("rewind.toml:6:"), "{cmd}: {t}");
        assert!(t.contains("halt") && t.contains("stop"), "{cmd}: {t}");
    }
    assert!(!sb.join(".rewind").exists(), "nothing was written");
    sb.runbook("name = \"x\"\nrto = \"soon\"\n[[plugin]]\nname = \"a\"\ncomponent = \"a.wasm\"\n");
    let t = text_of(&sb.rewind(&["check"]));
    assert!(
        t.contains("rewind.toml:2:") && t.contains("not a duration"),
        "{t}"
    );
    sb.runbook("name = \"x\"\n[[plugin]]\nname = \"a\"\ncomponent = \"${REWIND_TEST_NOT_SET}\"\n");
    let t = text_of(&sb.rewind(&["check"]));
    assert!(
        t.contains("rewind.toml:4:") && t.contains("REWIND_TEST_NOT_SET is not set"),
        "{t}"
    );
}

fn text_of(out: &std::process::Output) -> String {
    text(out)
}

#[test]
fn components_that_are_not_ours_are_refused_in_one_line() {
    let sb = Sandbox::new();
    std::fs::write(sb.join("random.wasm"), b"this is not wasm at all").unwrap();
    std::fs::write(sb.join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let cases = [
        (
            sb.join("missing.wasm").display().to_string(),
            "cannot read component",
        ),
        (
            sb.join("random.wasm").display().to_string(),
            "not a WebAssembly file",
        ),
        (
            sb.join("core.wasm").display().to_string(),
            "core WebAssembly module, not a component",
        ),
        (
            FUTURE.to_string(),
            "built against rewind:plugin@0.3.0, but this rewind implements rewind:plugin@0.2.0",
        ),
        (
            PAST.to_string(),
            "built against rewind:plugin@0.1.0, but this rewind implements rewind:plugin@0.2.0",
        ),
    ];
    for (component, expect) in cases {
        sb.runbook(&runbook_with(&component, &json!({}), &json!({})));
        for cmd in ["check", "run"] {
            let out = sb.rewind(&[cmd]);
            let t = text(&out);
            assert_eq!(out.status.code(), Some(3), "{component}: {t}");
            assert!(t.contains(expect), "{component}: {t}");
            let err_lines: Vec<&str> = t.lines().filter(|l| l.starts_with("error:")).collect();
            assert_eq!(err_lines.len(), 1, "{t}");
            assert!(
                err_lines[0].contains("rewind.toml:"),
                "names the runbook line: {t}"
            );
        }
    }
}

#[test]
fn a_failing_assessment_or_plan_is_reported_not_crashed() {
    let sb = Sandbox::new();
    sb.runbook(&fixture_runbook(&json!({"steps": []}), &json!({})));
    let out = sb.rewind(&["run", "--plugin", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no plugin named \"nope\""));
    sb.runbook(&fixture_runbook(
        &json!({"assess": {"op": {"call": "trap"}}}),
        &json!({}),
    ));
    let (code, report, _) = sb.run_json(&[]);
    assert_eq!(code, 1);
    assert!(
        report["plugins"][0]["error"]
            .as_str()
            .unwrap()
            .contains("assess")
    );
}
