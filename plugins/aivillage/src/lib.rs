//! The AIVillage plugin: the "Emergency Rollback Procedures, AIVillage
//! System Recovery Guide" runbook (`shared/seeds/002_60f3d3f12fe8aa04.txt`).
//!
//! AIVillage runs four services, restarted in this order: `gateway`, `p2p`,
//! `agents`, `rag`. Each has a health URL. The assessment probes them and
//! applies the runbook's decision matrix:
//!
//! | severity | users affected | downtime | action |
//! | --- | --- | --- | --- |
//! | critical | > 50 % | > 5 min | level 2, full rollback |
//! | high | 10-50 % | 1-5 min | level 1, component isolation; level 2 if it does not verify |
//! | medium | < 10 % | < 1 min | fix in place: no automatic rollback |
//! | low | none | none | healthy |
//!
//! - "Users affected" is the share of components whose health check fails
//!   (or that are degraded, see below).
//! - "Downtime" is how long the failing components have been failing. The
//!   plugin writes the time it first sees a component fail to its key-value
//!   state (`down_since:<component>`, kept across runs, cleared when the
//!   component is healthy again). Only real runs keep it (dry runs and plans
//!   write to an in-memory overlay), so downtime counts from the first
//!   `rewind run` that saw the failure.
//! - The runbook's "performance degraded > 50 % from baseline" makes it
//!   critical; a degradation under 25 % needs no rollback. The baseline is
//!   the runbook's 100 ms; a component whose median latency is more than
//!   25 % over it counts as degraded.
//!
//! The severity is the highest of the three. Level 1 ("component
//! isolation") touches only the failed components: stop them, restore their
//! own files from `*.backup` ("Restore Specific Components"), start them
//! again with a health gate. Level 2 ("full rollback") is the runbook's
//! phases 1-4: isolate, maintenance page, every `*.backup` under the tree
//! restored, configuration restored, imports restored and checked, the four
//! services restarted in order with a health gate after each (stopping at
//! the first one that does not come back), the validation scripts, and the
//! maintenance page removed. Both end by writing a rollback record.
//!
//! The service manager, proxy and scripts are commands from the config
//! (`{name}` is replaced by the component's name), defaulting to the
//! runbook's `systemctl`, `nginx` and `python` commands. Every key and its
//! default is in `docs/plugins/aivillage.md`.
//!
//! `config` reads `[plugin.config]`; `measure` probes the components and
//! applies the decision matrix; `steps` carries out the runbook's phases
//! in its order and builds both levels' plans from them.

mod config;
mod measure;
mod steps;

use std::collections::BTreeSet;

use rewind_sdk::prelude::*;

use config::Config;
use measure::*;
use steps::*;

/// The components, in the runbook's restart order.
pub(crate) const COMPONENTS: [&str; 4] = ["gateway", "p2p", "agents", "rag"];

struct AiVillage;

impl Plugin for AiVillage {
    fn describe(ctx: &Context) -> Result<PluginInfo> {
        let cfg = Config::load(ctx)?;
        let mut needs = Needs::default().write(&cfg.raw.root);
        let mut urls: BTreeSet<String> = cfg
            .components
            .iter()
            .map(|c| c.health_url.clone())
            .collect();
        urls.insert(cfg.raw.query_url.clone());
        for u in urls {
            needs = needs.http(u);
        }
        let programs: BTreeSet<String> = cfg
            .all_commands()
            .into_iter()
            .filter_map(|argv| argv.first())
            .filter(|p| !p.trim().is_empty())
            .cloned()
            .collect();
        let mut programs = programs;
        if !cfg.raw.git_fallback_ref.trim().is_empty() {
            // "Backup Files Missing": git restores the previous version.
            programs.insert("git".to_string());
        }
        for p in programs {
            needs = needs.exec(p);
        }
        let mut extra_writes = vec![cfg.raw.maintenance_page.clone(), cfg.records_dir()];
        if !cfg.raw.systemd_unit_dir.is_empty() {
            extra_writes.push(cfg.raw.systemd_unit_dir.clone());
        }
        for f in &cfg.raw.config_files {
            extra_writes.push(cfg.path(f));
        }
        let extra: BTreeSet<String> = extra_writes
            .into_iter()
            .filter(|p| !p.is_empty() && !cfg.under_root(p))
            .collect();
        for p in extra {
            needs = needs.write(p);
        }
        Ok(PluginInfo::new(
            "aivillage",
            env!("CARGO_PKG_VERSION"),
            "aivillage",
            "AIVillage emergency rollback: component isolation, then full rollback from *.backup files with an ordered, health-gated restart",
        )
        .level(
            LevelInfo::new(
                1,
                level_name(1),
                "Stop only the failed components, restore their own files from .backup, start them again with a health gate",
            )
            .rto_ms(3 * 60_000)
            // The restarts; files are snapshotted before they change.
            .effect(Effect::Disruptive),
        )
        .level(
            LevelInfo::new(
                2,
                level_name(2),
                "Isolate, maintenance page, every *.backup restored, configuration and imports restored, restart gateway -> p2p -> agents -> rag with a health gate after each, validate, maintenance page removed",
            )
            .rto_ms(15 * 60_000)
            .effect(level2_effect(&cfg)),
        )
        .needs(needs))
    }

    fn assess(ctx: &Context) -> Result<Assessment> {
        let cfg = Config::load(ctx)?;
        let (health, d) = assess_now(&cfg)?;
        let mut findings = health_findings(&cfg, &health);
        findings.extend(decision_findings(&cfg.raw, &d, health.len()));
        if d.tier >= Tier::High {
            // For the rollback record.
            storage::set_json(&ctx.run_key("assessment"), &d)?;
        }
        let states: Vec<String> = health
            .iter()
            .map(|h| {
                if h.healthy {
                    format!("{} ok ({:.1} ms)", h.name, h.latency_ms)
                } else {
                    format!("{} FAILING ({})", h.name, h.detail)
                }
            })
            .collect();
        let isolate = d.to_isolate();
        let summary = format!(
            "{}; {} severity: {:.0}% of users affected, down {}, {:+.0}% vs the {} ms baseline",
            states.join(", "),
            d.tier.as_str(),
            d.impact_percent,
            fmt_ms(d.downtime_ms),
            d.degradation_percent,
            cfg.raw.baseline_latency_ms
        );
        Ok(match d.tier {
            Tier::Critical => Assessment::rollback(
                Severity::Critical,
                2,
                "critical: immediate full rollback",
                summary,
            ),
            Tier::High => Assessment::rollback(
                Severity::Major,
                1,
                format!(
                    "high: component isolation of {} first, full rollback if needed",
                    list(&isolate)
                ),
                summary,
            ),
            Tier::Medium => Assessment {
                severity: Severity::Minor,
                rollback: false,
                level: 0,
                scenario: "medium: fix in place, schedule a rollback if needed".into(),
                summary,
                findings: Vec::new(),
            },
            Tier::Low => Assessment::healthy(summary),
        }
        .with_findings(findings))
    }

    fn plan(ctx: &Context) -> Result<Vec<Step>> {
        let cfg = Config::load(ctx)?;
        let (_, d) = assess_now(&cfg)?;
        let failed = d.to_isolate();
        storage::set_json(&failed_key(ctx), &failed)?;
        match ctx.level {
            1 => plan_level1(&cfg, &failed),
            2 => plan_level2(ctx, &cfg, &failed),
            l => bail!("the aivillage plugin has levels 1 and 2; level {l} was asked for"),
        }
    }

    fn run_step(ctx: &Context, step: &str) -> Result<StepOutcome> {
        let cfg = Config::load(ctx)?;
        let outcome = match step {
            "snapshot" => step_snapshot(ctx, &cfg),
            "isolate" => step_isolate(ctx, &cfg),
            "maintenance-on" => step_maintenance_on(ctx, &cfg),
            "restore-backups" => step_restore_backups(ctx, &cfg),
            "remove-added" => step_remove_added(ctx, &cfg),
            "restore-components" => step_restore_components(ctx, &cfg),
            "restore-config" => step_restore_config(ctx, &cfg),
            "restore-imports" => step_restore_imports(&cfg),
            "validate" => step_validate(&cfg),
            "maintenance-off" => step_maintenance_off(ctx, &cfg),
            "record" => step_record(ctx, &cfg),
            s => match s.strip_prefix("restart-") {
                Some(name) if COMPONENTS.contains(&name) => step_restart(ctx, &cfg, name),
                _ => bail!("unknown step {s:?} of the aivillage plugin"),
            },
        };
        // Every step goes on the timeline the record step writes out.
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => StepOutcome::failed(e.into_message()),
        };
        push_event(ctx, step, &outcome)?;
        Ok(outcome)
    }

    fn verify(ctx: &Context) -> Result<Verification> {
        let cfg = Config::load(ctx)?;
        let health = measure_all(&cfg)?;
        // Success criteria: every health check OK, response times within
        // the baseline with the assessment's tolerance (the same findings,
        // one threshold: `degraded_above_ms`).
        let mut findings = health_findings(&cfg, &health);
        if ctx.executes() {
            track_downtime(&health, now_ms())?;
        }
        // "Simulate user request" (a POST: not sent in dry runs).
        let req = http::HttpRequest::post(&cfg.raw.query_url, &cfg.raw.query_body)
            .header("Content-Type", "application/json")
            .timeout_ms(cfg.raw.query_max_ms.max(1) * 2);
        match req.send() {
            Ok(r) if r.simulated => {}
            Ok(r) => {
                findings.push(Finding::status(
                    format!("user request: POST {}", cfg.raw.query_url),
                    Some(r.status),
                    200,
                    299,
                ));
                findings.push(Finding::at_most(
                    "user request: response time",
                    (r.latency_us as f64 / 100.0).round() / 10.0,
                    cfg.raw.query_max_ms as f64,
                    "ms",
                ));
            }
            Err(e) => findings.push(Finding::check(
                format!("user request: POST {}", cfg.raw.query_url),
                false,
                one_line(&e.to_string(), 160),
                "200-299",
            )),
        }
        if ctx.level >= 2 {
            let left = find_backups(&cfg)?;
            findings.push(Finding::new(
                "*.backup files remaining under the root",
                left.len(),
                "= 0",
                !left.is_empty(),
            ));
            if !cfg.raw.maintenance_page.is_empty() {
                let up = storage::exists(&cfg.raw.maintenance_page)?;
                findings.push(Finding::check(
                    format!("maintenance page {}", cfg.raw.maintenance_page),
                    !up,
                    if up { "present" } else { "removed" },
                    "removed",
                ));
            }
        }
        Ok(Verification::from_findings(findings))
    }
}

rewind_sdk::export_plugin!(AiVillage);
