//! The feature-flags plugin: the three-level rollback of ROLLBACK_PROCEDURES.md
//! (GAP-001 parallel agent spawning, QW-001 parallel uploads, QW-002 MCP
//! tracking) for a pm2-managed Node application in a git checkout.
//!
//! - **assess** applies the runbook's decision criteria to the health
//!   endpoint, the app's processes, its log (error rate over 5 and 15
//!   minutes, cut into buckets so "for more than 5 minutes" means every
//!   bucket of the window; per-feature failure rates; request durations
//!   against a baseline) and its SQLite memory database (integrity, rows
//!   against the pre-deployment backup). Critical and major roll back;
//!   minor only says "monitor". The level follows from severity: data loss
//!   or corruption goes straight to Level 3 (the only level that restores
//!   data), everything else starts at Level 1 and the host escalates while
//!   verification fails.
//! - **Level 1, feature toggle**: the flags are set to `false` in `.env`
//!   by rewriting their lines atomically, the app is restarted, and the
//!   verification looks for the fallback markers in the log.
//! - **Level 2, code rollback**: archive the tree, check out the last
//!   `*-stable` tag, reinstall, rebuild, reload.
//! - **Level 3, full restore**: stop, move the failed tree aside, extract
//!   the pre-deployment tarball, restore the memory database, reinstall,
//!   rebuild if needed, start.
//!
//! Every verification also writes the runbook's incident record. The
//! config keys, with defaults, are in `config.rs` and `docs/plugins/feature-flags.md`.
//!
//! Read in the runbook's order: `config` (its paths, commands, thresholds
//! and waits), `measure` (the decision criteria; `logscan` reads the log),
//! `decide` (what a level acts on, pinned for the incident), `steps` (the
//! three levels; `envfile` edits `.env`, `versions` orders tags), `verify`
//! (the checklists and post-rollback verification), `record` (the incident
//! template). `state` is what the calls keep between them.

mod clock;
mod config;
mod decide;
mod envfile;
mod logscan;
mod measure;
mod record;
mod state;
mod steps;
mod verify;
mod versions;

use rewind_sdk::prelude::*;
use rewind_sdk::report::num;

use clock::now_ms;
use config::Config;
use measure::*;
use record::*;
use state::*;
use steps::*;
use verify::*;

struct FeatureFlags;

impl Plugin for FeatureFlags {
    fn describe(ctx: &Context) -> Result<PluginInfo> {
        let cfg = Config::load(ctx)?;
        Ok(PluginInfo::new(
            "feature-flags",
            env!("CARGO_PKG_VERSION"),
            format!("pm2 app in {} (GAP-001, QW-001, QW-002)", cfg.app_dir),
            "Three-level rollback of the parallel spawning, parallel uploads and MCP tracking deployment: feature toggle, code rollback to the last stable tag, full restore from backup",
        )
        .level(
            LevelInfo::new(
                1,
                level_name(1),
                "Set the feature flags to false in .env, restart, confirm the sequential fallbacks in the log",
            )
            .rto_ms(2 * 60_000)
            // The restart.
            .effect(Effect::Disruptive),
        )
        .level(
            LevelInfo::new(
                2,
                level_name(2),
                "Archive the tree, check out the last *-stable tag, reinstall, rebuild, reload",
            )
            .rto_ms(15 * 60_000)
            // The reload; the checkout is reversible.
            .effect(Effect::Disruptive),
        )
        .level(
            LevelInfo::new(
                3,
                level_name(3),
                "Stop, move the failed tree aside, extract the pre-deployment backup, restore the memory database, reinstall, start",
            )
            .rto_ms(45 * 60_000)
            // The memory database restored over the live one.
            .effect(Effect::Destructive),
        )
        .needs(cfg.needs()))
    }

    fn assess(ctx: &Context) -> Result<Assessment> {
        let cfg = Config::load(ctx)?;
        let now = now_ms();
        let mut findings = Vec::new();
        let mut reasons = Vec::new();
        let mut affected = Vec::new();

        // Application crashes or becomes unresponsive.
        let h = Answer::get(&cfg)?;
        findings.push(Finding::status(
            format!("GET {} status", cfg.health_path()),
            h.r.status,
            200,
            399,
        ));
        if !h.r.healthy {
            reasons.push(reason(
                Severity::Critical,
                match h.r.status {
                    Some(st) => format!(
                        "application unresponsive: GET {} answered {st}",
                        cfg.health_path()
                    ),
                    None => format!(
                        "application unresponsive: GET {} did not answer",
                        cfg.health_path()
                    ),
                },
            ));
        }
        let pattern = cfg.process_pattern();
        let procs = health::processes(&pattern)?;
        findings.push(Finding::at_least(
            format!("processes matching {pattern:?}"),
            f64::from(procs.count),
            1.0,
            "",
        ));
        if procs.count == 0 {
            reasons.push(reason(
                Severity::Critical,
                format!("application crashed: no process matches {pattern:?}"),
            ));
        }
        // Memory leak.
        if let Some(max) = cfg.max_rss_mb {
            let mb = (procs.rss_bytes as f64 / 1_048_576.0).round();
            findings.push(Finding::at_most(
                "memory (RSS) of the app",
                mb,
                max as f64,
                "MB",
            ));
            if mb > max as f64 {
                reasons.push(reason(
                    Severity::Major,
                    format!("memory leak: {} MB resident > {max} MB", num(mb)),
                ));
            }
        }
        assess_log(&cfg, now, &mut findings, &mut reasons, &mut affected)?;
        assess_data(ctx, &cfg, &mut findings, &mut reasons)?;

        let worst = reasons.iter().map(|r| r.severity).max_by_key(|s| rank(*s));
        let severity = worst.unwrap_or(Severity::None);
        let top: Vec<&Reason> = reasons.iter().filter(|r| r.severity == severity).collect();
        let scenario = top.first().map(|r| r.what.clone()).unwrap_or_default();
        let data = reasons
            .iter()
            .any(|r| r.data && r.severity == Severity::Critical);
        let level = if data { 3 } else { 1 };
        let mut summary = format!("GET {} {}", cfg.health_url, h.describe());
        for r in &reasons {
            summary.push_str(&format!("; {}: {}", r.severity.as_str(), r.what));
        }
        let info = AssessInfo {
            severity: severity.as_str().into(),
            scenario: scenario.clone(),
            summary: summary.clone(),
            breached: findings
                .iter()
                .filter(|f| f.breached)
                .map(|f| (f.check.clone(), f.observed.clone(), f.threshold.clone()))
                .collect(),
            affected,
        };
        kv_set(ctx, "assessment", &info)?;
        let a = match severity {
            Severity::Critical | Severity::Major => {
                let why = if data {
                    "data loss or corruption: only Level 3 restores data".to_string()
                } else {
                    format!(
                        "{}, starting with the fastest level",
                        if severity == Severity::Critical {
                            "immediate rollback"
                        } else {
                            "rollback within 30 minutes"
                        }
                    )
                };
                Assessment::rollback(
                    severity,
                    level,
                    scenario,
                    format!("{summary}; level {level} ({}): {why}", level_name(level)),
                )
            }
            Severity::Minor => Assessment {
                severity,
                rollback: false,
                level: 0,
                scenario: format!("minor, monitor and consider rollback: {scenario}"),
                summary,
                findings: Vec::new(),
            },
            Severity::None => Assessment::healthy(summary),
        };
        Ok(a.with_findings(findings))
    }

    fn plan(ctx: &Context) -> Result<Vec<Step>> {
        let cfg = Config::load(ctx)?;
        let mut steps = plan_level(ctx, &cfg)?;
        // A step whose command is `[]` is skipped, as in the other plugins.
        steps.retain(|s| skipped(&cfg, ctx.level, &s.id).is_none());
        Ok(steps)
    }

    fn run_step(ctx: &Context, step: &str) -> Result<StepOutcome> {
        let cfg = Config::load(ctx)?;
        let result = run_level_step(ctx, &cfg, step);
        let (ok, message) = match &result {
            Ok(o) => (o.ok, o.message.clone()),
            Err(e) => (false, e.message().to_string()),
        };
        let mut actions = kv_get::<Vec<ActionRec>>(ctx, "actions")?.unwrap_or_default();
        actions.push(ActionRec {
            level: ctx.level,
            step: step.to_string(),
            ok,
            message: message.clone(),
        });
        kv_set(ctx, "actions", &actions)?;
        if !ok && ctx.executes() {
            // The run stops here: the incident is logged all the same.
            if let Err(e) = write_incident(
                ctx,
                &cfg,
                &Status::Failed(format!("step {step} failed: {}", short(&message, 200))),
                &[],
            ) {
                log::warn(format_args!(
                    "could not write the incident record: {}",
                    e.message()
                ));
            }
        }
        result
    }

    fn verify(ctx: &Context) -> Result<Verification> {
        let cfg = Config::load(ctx)?;
        let mut f = Vec::new();
        let h = verify_common(ctx, &cfg, &mut f)?;
        match ctx.level {
            1 => verify_level1(ctx, &cfg, &mut f)?,
            2 => verify_level2(ctx, &cfg, &h, &mut f)?,
            _ => verify_level3(ctx, &cfg, &h, &mut f)?,
        }
        if ctx.executes() {
            smoke_tests(&cfg, &mut f);
        }
        let mut v = Verification::from_findings(f);
        let stop = version_only(ctx, &v);
        if ctx.executes() {
            let status = if v.healthy {
                Status::Completed
            } else if let Some(why) = &stop {
                Status::Failed(why.clone())
            } else if ctx.level < 3 {
                Status::Escalating
            } else {
                Status::Failed("the last level did not verify".into())
            };
            match write_incident(ctx, &cfg, &status, &v.findings) {
                Ok(path) => v.summary.push_str(&format!("; incident record {path}")),
                Err(e) => {
                    log::warn(format_args!(
                        "could not write the incident record: {}",
                        e.message()
                    ));
                    v.summary.push_str(&format!(
                        "; the incident record could not be written: {}",
                        e.message()
                    ));
                }
            }
        }
        Ok(match stop {
            Some(why) => v.or_stop(why),
            None => v,
        })
    }
}

/// After the code rollback, a failure that is only the version the app
/// reports (healthy, stable, on the stable tag, smoke tests passing) is a
/// label, not an outage: level 3 would move the tree aside and restore the
/// backup over the live memory database (losing everything since the
/// backup, the runbook's "assess impact"), which changes no label. A
/// person looks instead.
fn version_only(ctx: &Context, v: &Verification) -> Option<String> {
    if ctx.level != 2 || v.healthy {
        return None;
    }
    let breached: Vec<&Finding> = v.findings.iter().filter(|f| f.breached).collect();
    let version = breached
        .iter()
        .find(|f| f.check.starts_with("version served ("))?;
    (breached.len() == 1).then(|| {
        format!(
            "the app is healthy on the stable tag and only the version it reports differs ({}, expected {}); a full restore from backup would not change that and loses the data written since the backup: check how the release reports its version",
            version.observed,
            version.threshold.trim_start_matches("= ")
        )
    })
}

rewind_sdk::export_plugin!(FeatureFlags);
