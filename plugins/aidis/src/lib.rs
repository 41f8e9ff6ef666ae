//! The AIDIS plugin: the "TR018-4: Phase 4 Rollback and Emergency
//! Procedures" runbook (Oracle Refactor, service de-duplication) as a
//! rewind plugin.
//!
//! **Assessment.** It measures the five scenarios of the runbook the way its
//! detection commands do: the five health endpoints (frontend `:3000/`,
//! backend `:5000/health`, MCP `:8080/healthz`, `/readyz`, `/livez`) for
//! 5xx and answers that do not come within the timeout, and how many
//! services are down at once (Scenario 1); `/healthz` response time over
//! several samples, the AIDIS processes' memory (not the machine's) and the
//! MCP server's CPU held over the limit across runs (Scenario 2); the database through `psql -c
//! 'SELECT 1;'` and the readiness endpoint (Scenario 3); processes matching
//! the runbook's patterns, their memory and the load (Scenario 4); the MCP
//! tool call through the HTTP bridge (Scenario 5). The host probes one URL
//! at a time, so the probes of one sweep share a time budget that fits the
//! runbook's 1-minute detection. Every measurement is a
//! finding, observed vs threshold. The most specific cause wins (runaway
//! processes, the database, failing endpoints, the bridge, performance) and
//! the severity comes from what was measured.
//!
//! **Levels.** 1 "targeted recovery" is the chosen scenario's own
//! procedure without a code change (service recovery, graceful degradation,
//! connection pool reset and database recovery, process cleanup and
//! essential restart, bridge recovery and service mesh reset). 2 "phase 0
//! rollback" is the Scenario 1 procedure and the emergency rollback script,
//! after the pre-rollback backups: row counts and database dump (best
//! effort: a failed dump is recorded, not a reason to stay on Phase 4),
//! config snapshot and copy, git branch and tag; then stop, stop the process
//! patterns, `git status` (uncommitted changes stashed or refused), `git
//! checkout` the baseline, start, wait until healthy. Scenario 1 starts there. 3
//! "manual intervention" hands over to a person (senior developer, the DBA
//! for point-in-time recovery). Every level ends with the validation
//! checklist (with the data recovery verification: row counts, `diff -r`
//! of the config) and the documentation (`logs/rollback.log`, the process list);
//! the host escalates when the verification (the same checklist) fails.
//!
//! Config keys, their defaults (the runbook's values) and the grants are in
//! `docs/plugins/aidis.md`.

mod clock;
mod config;
mod gitref;
mod measure;
mod steps;

use rewind_sdk::prelude::*;

use crate::config::Config;
use crate::steps::{LEVEL_MANUAL, LEVEL_PHASE0, LEVEL_TARGETED, level_name};

struct Aidis;

impl Plugin for Aidis {
    fn describe(ctx: &Context) -> Result<PluginInfo> {
        let cfg = Config::load(ctx)?;
        Ok(PluginInfo::new(
            "aidis",
            env!("CARGO_PKG_VERSION"),
            "aidis",
            "AIDIS Phase 4 rollback and emergency procedures (TR018-4)",
        )
        .level(
            LevelInfo::new(
                LEVEL_TARGETED,
                level_name(LEVEL_TARGETED),
                "The chosen scenario's procedure without a code change: service recovery, graceful degradation, connection pool reset and database recovery, process cleanup, bridge recovery and service mesh reset",
            )
            .rto_ms(6 * 60_000)
            // Restarts and process clean-ups; no data is touched.
            .effect(Effect::Disruptive),
        )
        .level(
            LevelInfo::new(
                LEVEL_PHASE0,
                level_name(LEVEL_PHASE0),
                format!(
                    "Back up (database dump, config snapshot, git branch and tag), stop, revert to {}, start, wait until healthy, validate, document",
                    cfg.baseline_ref
                ),
            )
            .rto_ms(7 * 60_000)
            // Backups first, then stop, checkout (reversible), start.
            .effect(Effect::Disruptive),
        )
        .level(
            LevelInfo::new(
                LEVEL_MANUAL,
                level_name(LEVEL_MANUAL),
                format!(
                    "A senior developer takes over; the DBA restores the database to {} if it is corrupted",
                    cfg.pitr_target
                ),
            )
            .rto_ms(30 * 60_000)
            // The DBA's point-in-time recovery replaces the data.
            .effect(Effect::Destructive),
        )
        .needs(cfg.needs()))
    }

    fn assess(ctx: &Context) -> Result<Assessment> {
        let cfg = Config::load(ctx)?;
        let m = measure::measure(ctx, &cfg)?;
        let v = measure::assess(&cfg, &m);
        storage::set(
            &ctx.run_key("scenario"),
            v.scenario.map_or("healthy", |s| s.id()),
        )?;
        let a = match v.scenario {
            Some(s) => Assessment::rollback(v.severity, v.level, s.title(), v.summary),
            None => {
                let mut a = Assessment::healthy(v.summary);
                a.severity = v.severity;
                if v.severity != Severity::None {
                    a.scenario = "warning".into();
                }
                a
            }
        };
        Ok(a.with_findings(v.findings))
    }

    fn plan(ctx: &Context) -> Result<Vec<Step>> {
        let cfg = Config::load(ctx)?;
        let sc = steps::scenario(ctx)?;
        steps::plan(ctx, &cfg, sc, ctx.level)
    }

    fn run_step(ctx: &Context, step: &str) -> Result<StepOutcome> {
        let cfg = Config::load(ctx)?;
        let sc = steps::scenario(ctx)?;
        steps::run(ctx, &cfg, sc, ctx.level, step)
    }

    fn verify(ctx: &Context) -> Result<Verification> {
        let cfg = Config::load(ctx)?;
        let v = Verification::from_findings(measure::checklist(ctx, &cfg, ctx.level)?);
        // Scenario 3's procedure is the connection pool reset, then the
        // database recovery, then "PITR Restore if Corruption Detected:
        // CONTACT DBA IMMEDIATELY". When the first two did not bring the
        // database back, the next move is the DBA's, not a code revert.
        if !v.healthy
            && ctx.level == LEVEL_TARGETED
            && steps::scenario(ctx)? == measure::Scenario::Database
            && let Some(f) = v.findings.iter().find(|f| {
                f.breached
                    && (f.check.starts_with("MCP ready ") || f.check.starts_with("database "))
            })
        {
            let why = format!(
                "the connection pool reset and the database recovery did not bring the database back ({}: observed {}); the runbook's next step is the DBA's point-in-time recovery to {}, not a code revert: contact the DBA (level {LEVEL_MANUAL}, `rewind run --level {LEVEL_MANUAL}`, once they decide)",
                f.check, f.observed, cfg.pitr_target
            );
            return Ok(v.or_stop(why));
        }
        Ok(v)
    }
}

rewind_sdk::export_plugin!(Aidis);
