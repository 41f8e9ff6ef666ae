//! `--junit FILE`: a run's or a drill's report as JUnit XML, the format CI
//! systems and incident tools read.
//!
//! A run: one test suite per plugin, one test case per step (classname
//! `<plugin>.level<N>`), a failed step a `failure` with the step's message,
//! a step not run `skipped`, plus one case per verification (`verify level
//! N`) and one `error` for a plugin that failed outside its steps (it
//! could not be loaded, its assessment or plan failed). A drill: one suite
//! per scenario, its steps as cases, and a case `recovery within RTO` that
//! fails when the drill's verdict does: the suite's result is the drill's.
//! Text goes through `redact` like everything rewind writes.

use std::path::Path;
use std::time::Duration;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use crate::drill::DrillReport;
use crate::run::{FindingReport, RunReport, StepStatus};

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn failure(message: &str, description: Option<String>) -> TestCaseStatus {
    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
    s.set_message(message);
    if let Some(d) = description {
        s.set_description(d);
    }
    s
}

fn findings_text(list: &[FindingReport]) -> Option<String> {
    let lines: Vec<String> = list
        .iter()
        .map(|f| {
            format!(
                "{} {}: observed {}, threshold {}",
                if f.breached { "BREACHED" } else { "ok" },
                f.check,
                f.observed,
                f.threshold
            )
        })
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// The JUnit report of a run (or a resume).
pub fn run_report(r: &RunReport) -> Report {
    let mut report = Report::new(format!("rewind {}", r.runbook));
    report.set_time(ms(r.duration_ms));
    for p in &r.plugins {
        let mut suite = TestSuite::new(format!("{}/{}", r.runbook, p.name));
        suite.set_time(ms(p.duration_ms));
        suite.add_properties([
            Property::new("run_id", r.run_id.clone()),
            Property::new("mode", r.mode.clone()),
            Property::new("service", p.service.clone()),
            Property::new("outcome", p.outcome.journal_name()),
        ]);
        if let Some(a) = &p.assessment {
            let mut case = TestCase::new("assess", TestCaseStatus::success());
            case.set_classname(format!("{}.assess", p.name))
                .set_time(ms(a.duration_ms))
                .set_system_out(format!(
                    "severity {}, level {}, {}: {}",
                    a.severity, a.level, a.scenario, a.summary
                ));
            suite.add_test_case(case);
        }
        for level in &p.levels {
            let class = format!("{}.level{}", p.name, level.level);
            for st in &level.steps {
                let status = match st.status {
                    StepStatus::Ok | StepStatus::Planned => TestCaseStatus::success(),
                    StepStatus::Failed => failure(&st.message, findings_text(&st.findings)),
                    StepStatus::Skipped => {
                        let mut s = TestCaseStatus::skipped();
                        s.set_message(if st.message.is_empty() {
                            "not run: an earlier step failed".to_string()
                        } else {
                            st.message.clone()
                        });
                        s
                    }
                };
                let mut case = TestCase::new(format!("{}: {}", st.id, st.title), status);
                case.set_classname(class.clone())
                    .set_time(ms(st.duration_ms))
                    .add_property(Property::new("effect", st.effect.clone()));
                let actions: Vec<String> = st
                    .actions
                    .iter()
                    .map(|a| {
                        if a.executed {
                            format!("did {}", a.what)
                        } else {
                            format!("would {}", a.what)
                        }
                    })
                    .collect();
                if !actions.is_empty() || !st.message.is_empty() {
                    let mut out = st.message.clone();
                    for a in actions {
                        out.push('\n');
                        out.push_str(&a);
                    }
                    case.set_system_out(out);
                }
                suite.add_test_case(case);
            }
            if let Some(v) = &level.verification {
                let status = if v.healthy {
                    TestCaseStatus::success()
                } else {
                    failure(&v.summary, findings_text(&v.findings))
                };
                let mut case = TestCase::new(format!("verify level {}", level.level), status);
                case.set_classname(class).set_time(ms(v.duration_ms));
                if v.healthy {
                    case.set_system_out(v.summary.clone());
                }
                suite.add_test_case(case);
            }
        }
        // An error outside the steps (load, assess, plan, a trap): a step
        // or verification that failed already carries its own.
        let failed_case = suite
            .test_cases
            .iter()
            .any(|c| matches!(c.status, TestCaseStatus::NonSuccess { .. }));
        if let Some(e) = p.error.as_ref().filter(|_| !failed_case) {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
            s.set_message(e.clone());
            let mut case = TestCase::new("plugin", s);
            case.set_classname(p.name.clone());
            suite.add_test_case(case);
        }
        report.add_test_suite(suite);
    }
    report
}

/// The JUnit report of drills: a suite per scenario.
pub fn drill_report(runbook: &str, drills: &[DrillReport]) -> Report {
    let mut report = Report::new(format!("rewind drills {runbook}"));
    for d in drills {
        let mut suite = TestSuite::new(format!("{}/{}", d.runbook, d.scenario));
        suite.set_time(Duration::from_secs_f64(d.recovery_ms.max(0.0) / 1e3));
        suite.add_properties([
            Property::new("drill_id", d.id.clone()),
            Property::new("plugin", d.plugin.clone()),
            Property::new("verdict", d.verdict.clone()),
        ]);
        let class = format!("{}.{}", d.plugin, d.scenario);
        for st in &d.steps {
            let status = match st.status.as_str() {
                "ok" => TestCaseStatus::success(),
                "skipped" => TestCaseStatus::skipped(),
                other => failure(&format!("step {}", other), None),
            };
            let mut case = TestCase::new(format!("level {} {}", st.level, st.step), status);
            case.set_classname(class.clone()).set_time(ms(st.ms));
            if !st.actions.is_empty() {
                case.set_system_out(st.actions.join("\n"));
            }
            suite.add_test_case(case);
        }
        let rto = d
            .rto_ms
            .map(|r| crate::run::fmt_duration(ms(r)))
            .unwrap_or_else(|| "none".into());
        let took = crate::run::fmt_duration(Duration::from_secs_f64(d.recovery_ms.max(0.0) / 1e3));
        let status = if d.verdict == "fail" {
            let why = match &d.error {
                Some(e) => format!("not recovered: {e}"),
                None if !d.recovered => "not recovered".to_string(),
                None => format!("recovered in {took}, over the RTO of {rto}"),
            };
            failure(&why, findings_text(&d.findings))
        } else {
            TestCaseStatus::success()
        };
        let mut case = TestCase::new("recovery within RTO", status);
        case.set_classname(class)
            .set_time(Duration::from_secs_f64(d.recovery_ms.max(0.0) / 1e3))
            .set_system_out(format!(
                "verdict {}: recovery {took} against RTO {rto}",
                d.verdict
            ));
        suite.add_test_case(case);
        report.add_test_suite(suite);
    }
    report
}

/// Write a report in full or not at all (temporary file, fsync, rename),
/// secrets masked.
pub fn write(report: &Report, path: &Path) -> Result<(), String> {
    let xml = report
        .to_string()
        .map_err(|e| format!("cannot encode the JUnit report: {e}"))?;
    let xml = crate::redact::redact(&xml);
    crate::state::write_atomic(path, xml.as_bytes(), 0o600)
        .map_err(|e| format!("cannot write the JUnit report {}: {e}", path.display()))
}
