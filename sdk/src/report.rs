//! Constructors for what a plugin returns: findings, steps, outcomes,
//! assessments, verifications and its description.
//!
//! A [`Finding`] always puts what was measured next to what it was compared
//! with, so an operator can check a decision:
//!
//! ```
//! use rewind_sdk::Finding;
//! let f = Finding::at_most("memory of tsx", 3412.0, 3000.0, "MB");
//! assert_eq!((f.observed.as_str(), f.threshold.as_str(), f.breached), ("3412 MB", "<= 3000 MB", true));
//! ```

use std::fmt::Display;

use crate::{
    Assessment, Effect, Escalation, Finding, LevelInfo, Millis, Needs, PluginInfo, Severity, Step,
    StepKind, StepOutcome, Verification,
};

/// A number without noise: `3000`, `12.5`, `0.33`.
pub fn num(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn with_unit(v: f64, unit: &str) -> String {
    if unit.is_empty() {
        num(v)
    } else {
        format!("{} {unit}", num(v))
    }
}

impl Finding {
    /// A finding as measured: what was checked, the observed value, the
    /// threshold, and whether the observed value is on the wrong side.
    pub fn new(
        check: impl Into<String>,
        observed: impl Display,
        threshold: impl Display,
        breached: bool,
    ) -> Self {
        Self {
            check: check.into(),
            observed: observed.to_string(),
            threshold: threshold.to_string(),
            breached,
        }
    }

    /// Breached when `observed > max`: `"3412 MB"` vs `"<= 3000 MB"`.
    pub fn at_most(check: impl Into<String>, observed: f64, max: f64, unit: &str) -> Self {
        Self::new(
            check,
            with_unit(observed, unit),
            format!("<= {}", with_unit(max, unit)),
            observed > max,
        )
    }

    /// Breached when `observed < min`: `"3 GB"` vs `">= 5 GB"`.
    pub fn at_least(check: impl Into<String>, observed: f64, min: f64, unit: &str) -> Self {
        Self::new(
            check,
            with_unit(observed, unit),
            format!(">= {}", with_unit(min, unit)),
            observed < min,
        )
    }

    /// Breached unless `observed == expected`.
    pub fn equals(
        check: impl Into<String>,
        observed: impl Display,
        expected: impl Display,
    ) -> Self {
        let (o, e) = (observed.to_string(), expected.to_string());
        let breached = o != e;
        Self::new(check, o, format!("= {e}"), breached)
    }

    /// An HTTP status against an inclusive range; no answer (`None`) is
    /// breached and shows as `no answer`.
    pub fn status(check: impl Into<String>, status: Option<u16>, min: u16, max: u16) -> Self {
        let threshold = format!("{min}-{max}");
        match status {
            Some(s) => Self::new(check, s, threshold, !(min..=max).contains(&s)),
            None => Self::new(check, "no answer", threshold, true),
        }
    }

    /// A yes/no check: breached when `ok` is false.
    pub fn check(
        check: impl Into<String>,
        ok: bool,
        observed: impl Display,
        expected: impl Display,
    ) -> Self {
        Self::new(check, observed, expected, !ok)
    }
}

/// A new step assumes the worst until the plugin says otherwise: its
/// effect is `destructive` and it is not repeatable, so an unclassified step
/// is never run again unattended after an interruption. Say what a step
/// really does with [`Step::effect`] (or [`Step::observe`],
/// [`Step::reversible`], [`Step::disruptive`]) and [`Step::repeatable`].
impl Step {
    /// A step the plugin carries out itself in `run_step`.
    pub fn auto(
        id: impl Into<String>,
        title: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            title: title.into(),
            kind: StepKind::Auto,
            detail: detail.into(),
            effect: Effect::Destructive,
            repeatable: false,
        }
    }
    /// A step for a person: the host shows `detail` and waits for confirmation.
    pub fn manual(
        id: impl Into<String>,
        title: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind: StepKind::Manual,
            ..Self::auto(id, title, detail)
        }
    }
    /// What the step does to the system (see the WIT `effect`).
    pub fn effect(mut self, effect: Effect) -> Self {
        self.effect = effect;
        self
    }
    /// The step only reads.
    pub fn observe(self) -> Self {
        self.effect(Effect::Observe)
    }
    /// The step changes what it saved first and can put back.
    pub fn reversible(self) -> Self {
        self.effect(Effect::Reversible)
    }
    /// The step stops, restarts or drains the service.
    pub fn disruptive(self) -> Self {
        self.effect(Effect::Disruptive)
    }
    /// Running the step again after it was cut short is safe: it checks
    /// before it acts, so a second run does what one would.
    pub fn repeatable(mut self) -> Self {
        self.repeatable = true;
        self
    }
}

impl StepOutcome {
    /// The step did what it should.
    pub fn ok(message: impl Into<String>) -> Self {
        Self {
            ok: true,
            message: message.into(),
            findings: Vec::new(),
        }
    }
    /// The step failed; the run stops or carries on per the runbook's `on_failure`.
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            message: message.into(),
            findings: Vec::new(),
        }
    }
    /// Attach findings (measurements behind the outcome).
    pub fn with_findings(mut self, findings: Vec<Finding>) -> Self {
        self.findings.extend(findings);
        self
    }
}

impl Assessment {
    /// Nothing to roll back: severity none, level 0.
    pub fn healthy(summary: impl Into<String>) -> Self {
        Self {
            severity: Severity::None,
            rollback: false,
            level: 0,
            scenario: "healthy".into(),
            summary: summary.into(),
            findings: Vec::new(),
        }
    }
    /// Roll back at `level`, the measurements matching `scenario`.
    pub fn rollback(
        severity: Severity,
        level: u8,
        scenario: impl Into<String>,
        summary: impl Into<String>,
    ) -> Self {
        Self {
            severity,
            rollback: true,
            level,
            scenario: scenario.into(),
            summary: summary.into(),
            findings: Vec::new(),
        }
    }
    /// Attach findings.
    pub fn with_findings(mut self, findings: Vec<Finding>) -> Self {
        self.findings.extend(findings);
        self
    }
}

impl Verification {
    /// Healthy when no finding is breached; the summary lists the breached checks.
    pub fn from_findings(findings: Vec<Finding>) -> Self {
        let bad: Vec<String> = findings
            .iter()
            .filter(|f| f.breached)
            .map(|f| format!("{}: {} (want {})", f.check, f.observed, f.threshold))
            .collect();
        let summary = if bad.is_empty() {
            format!("all {} checks passed", findings.len())
        } else {
            format!("failed: {}", bad.join("; "))
        };
        Self {
            healthy: bad.is_empty(),
            summary,
            findings,
            escalation: Escalation::Next,
        }
    }

    /// When it fails: stop here and hand over to a person, with why (a
    /// higher level would not help, or would do harm).
    pub fn or_stop(mut self, why: impl Into<String>) -> Self {
        self.escalation = Escalation::Stop(why.into());
        self
    }

    /// When it fails: go to this level (the one that addresses what
    /// failed), not simply the next.
    pub fn or_escalate_to(mut self, level: u8) -> Self {
        self.escalation = Escalation::To(level);
        self
    }
}

impl LevelInfo {
    /// A level without an RTO.
    pub fn new(level: u8, name: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            level,
            name: name.into(),
            description: description.into(),
            rto_ms: None,
            effect: Effect::Destructive,
        }
    }
    /// The worst effect of the steps this level plans (assumed
    /// `destructive` until said).
    pub fn effect(mut self, effect: Effect) -> Self {
        self.effect = effect;
        self
    }
    /// Set the Recovery Time Objective.
    pub fn rto_ms(mut self, ms: Millis) -> Self {
        self.rto_ms = Some(ms);
        self
    }
}

#[allow(clippy::derivable_impls)]
impl Default for Needs {
    fn default() -> Self {
        Self {
            http: Vec::new(),
            tcp: Vec::new(),
            exec: Vec::new(),
            signal: Vec::new(),
            read: Vec::new(),
            write: Vec::new(),
            sqlite: Vec::new(),
            env: Vec::new(),
        }
    }
}

macro_rules! needs_adders {
    ($($field:ident: $doc:literal),* $(,)?) => {
        impl Needs {
            $(
                #[doc = $doc]
                pub fn $field(mut self, value: impl Into<String>) -> Self {
                    self.$field.push(value.into());
                    self
                }
            )*
        }
    };
}

needs_adders! {
    http: "Add a URL prefix (`http` grant).",
    tcp: "Add a `host:port` (`tcp` grant).",
    exec: "Add a program (`exec` grant).",
    signal: "Add a command-line pattern (`signal` grant).",
    read: "Add a readable path (`read` grant).",
    write: "Add a writable path (`write` grant).",
    sqlite: "Add a database path (`sqlite` grant).",
    env: "Add an environment variable (`env` grant).",
}

impl PluginInfo {
    /// A description with no levels and no needs yet.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        service: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            service: service.into(),
            description: description.into(),
            levels: Vec::new(),
            needs: Needs::default(),
        }
    }
    /// Add a rollback level (lightest first).
    pub fn level(mut self, level: LevelInfo) -> Self {
        self.levels.push(level);
        self
    }
    /// Set what the plugin needs granted.
    pub fn needs(mut self, needs: Needs) -> Self {
        self.needs = needs;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_format_numbers() {
        let f = Finding::at_most("latency", 12.345, 500.0, "ms");
        assert_eq!(
            (f.observed.as_str(), f.threshold.as_str(), f.breached),
            ("12.35 ms", "<= 500 ms", false)
        );
        let f = Finding::status("status", None, 200, 399);
        assert!(f.breached && f.observed == "no answer");
        assert!(!Finding::equals("version", "1.0.0", "1.0.0").breached);
        let v = Verification::from_findings(vec![f]);
        assert!(
            !v.healthy && v.summary.contains("no answer"),
            "{}",
            v.summary
        );
    }
}
