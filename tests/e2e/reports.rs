//! What rewind hands to other tools: `--junit FILE` (read back with a
//! JUnit parser) and the `schema_version` of the `--json` reports.

use quick_junit::{Report, TestCaseStatus};
use serde_json::json;

use crate::util::*;

fn junit(path: &std::path::Path) -> Report {
    let xml = std::fs::read_to_string(path).unwrap();
    Report::deserialize_from_str(&xml).unwrap_or_else(|e| panic!("{e}: {xml}"))
}

fn status(s: &TestCaseStatus) -> &'static str {
    match s {
        TestCaseStatus::Success { .. } => "ok",
        TestCaseStatus::NonSuccess { .. } => "failed",
        TestCaseStatus::Skipped { .. } => "skipped",
    }
}

#[test]
fn a_run_is_written_as_junit_one_case_per_step_and_verification() {
    let sb = Sandbox::new();
    let config = json!({
        "levels": [1, 2],
        "steps": [
            {"id": "restart", "level": 1, "effect": "disruptive"},
            {"id": "fix", "level": 2, "fail": true},
            {"id": "after", "level": 2},
        ],
        "verify": {"by_level": {"1": false}},
    });
    sb.runbook(&fixture_runbook(&config, &json!({})));
    let out = sb.rewind(&["--json", "run", "--junit", "out/../report.xml"]);
    // The directory of the file must exist; it is not created.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("cannot write the JUnit report"),
        "{}",
        text(&out)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["schema_version"], 1, "{report}");

    let out = sb.rewind(&["-q", "run", "--junit", "report.xml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let r = junit(&sb.join("report.xml"));
    assert_eq!(r.test_suites.len(), 1);
    let suite = &r.test_suites[0];
    assert_eq!(suite.name.as_str(), "fixture/fx");
    let cases: Vec<(String, String, &str)> = suite
        .test_cases
        .iter()
        .map(|c| {
            (
                c.classname
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                c.name.to_string(),
                status(&c.status),
            )
        })
        .collect();
    let want: Vec<(String, String, &str)> = [
        ("fx.assess", "assess", "ok"),
        ("fx.level1", "restart: restart", "ok"),
        ("fx.level1", "verify level 1", "failed"),
        ("fx.level2", "fix: fix", "failed"),
        ("fx.level2", "after: after", "skipped"),
    ]
    .into_iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c))
    .collect();
    assert_eq!(cases, want);
    assert_eq!(suite.failures, 2);
    assert!(
        suite
            .properties
            .iter()
            .any(|p| p.name.as_str() == "outcome" && p.value.as_str() == "failed")
    );

    // A plugin that fails outside its steps is an error case of its own.
    let config = json!({"errors": {"assess": "the probe backend is gone"}});
    sb.runbook(&fixture_runbook(&config, &json!({})));
    let out = sb.rewind(&["-q", "run", "--junit", "report.xml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let r = junit(&sb.join("report.xml"));
    let case = &r.test_suites[0].test_cases[0];
    assert_eq!(case.name.as_str(), "plugin");
    assert!(
        matches!(&case.status, TestCaseStatus::NonSuccess { message: Some(m), .. } if m.as_str().contains("the probe backend is gone")),
        "{case:?}"
    );
}
