//! The incident record, from the runbook's "Incident Communication
//! Template": written at each verification and when a step fails.

use rewind_sdk::prelude::*;

use crate::clock::{Utc, now_ms};
use crate::config::Config;
use crate::measure::*;
use crate::state::*;
use crate::steps::*;

pub(crate) enum Status {
    Completed,
    Escalating,
    Failed(String),
}

pub(crate) fn write_incident(
    ctx: &Context,
    cfg: &Config,
    status: &Status,
    findings: &[Finding],
) -> Result<String> {
    let now = Utc::at(now_ms());
    let a = kv_get::<AssessInfo>(ctx, "assessment")?.unwrap_or_default();
    let actions = kv_get::<Vec<ActionRec>>(ctx, "actions")?.unwrap_or_default();
    let level = ctx.level;
    let status_line = match status {
        Status::Completed => "COMPLETED".to_string(),
        Status::Escalating => format!(
            "IN PROGRESS (level {level} did not verify; escalating to level {})",
            level + 1
        ),
        Status::Failed(why) => format!("FAILED ({why})"),
    };
    let mut md = String::new();
    md.push_str("# Production Incident: Rollback Executed\n\n");
    md.push_str(&format!("**Incident Date**: {}\n", now.date()));
    md.push_str(&format!("**Incident Time**: {}\n", now.time()));
    md.push_str(&format!(
        "**Severity**: {}\n",
        if a.severity.is_empty() {
            "UNKNOWN".into()
        } else {
            a.severity.to_uppercase()
        }
    ));
    md.push_str(&format!(
        "**Rollback Level**: {level} ({})\n",
        level_name(level)
    ));
    md.push_str(&format!("**Status**: {status_line}\n"));
    md.push_str(&format!(
        "**Run**: {} (rewind, plugin {})\n\n",
        ctx.run_id, ctx.plugin
    ));
    md.push_str("## Issue Description\n");
    md.push_str(&format!("{}\n\nMeasured: {}\n\n", a.scenario, a.summary));
    if !a.breached.is_empty() {
        md.push_str("Breached at assessment (observed vs threshold):\n");
        for (check, observed, threshold) in &a.breached {
            md.push_str(&format!(
                "- {check}: observed {observed}, threshold {threshold}\n"
            ));
        }
        md.push('\n');
    }
    md.push_str("## Affected Features\n");
    let disabled = kv_get::<Disable>(ctx, "disable")?
        .map(|d| d.names)
        .unwrap_or_default();
    for feat in &cfg.features {
        let hit = a.affected.contains(&feat.name);
        let label = if feat.label.is_empty() {
            &feat.name
        } else {
            &feat.label
        };
        let note = if disabled.contains(&feat.name) {
            format!(" ({}=false)", feat.flag)
        } else {
            String::new()
        };
        md.push_str(&format!(
            "- [{}] {label}{note}\n",
            if hit { "x" } else { " " }
        ));
    }
    md.push_str("\n## Rollback Actions Taken\n");
    for (i, act) in actions.iter().enumerate() {
        md.push_str(&format!(
            "{}. [level {}] {}{}: {}\n",
            i + 1,
            act.level,
            act.step,
            if act.ok { "" } else { " (FAILED)" },
            act.message
        ));
    }
    let breached = |prefix: &str| {
        findings
            .iter()
            .any(|f| f.check.starts_with(prefix) && f.breached)
    };
    let running = !findings
        .iter()
        .any(|f| f.check.starts_with("processes matching") && f.breached);
    let healthy = !breached("GET ") && !breached("stable for");
    let db = cfg.memory_db_path();
    let integrity = if exists(&db)? {
        match quick_check(&db) {
            Integrity::Ok => "INTACT".to_string(),
            Integrity::Corrupt(qc) => format!("COMPROMISED ({qc})"),
            Integrity::Unknown(why) => format!("NOT CHECKED ({why})"),
        }
    } else {
        "n/a (no memory database)".to_string()
    };
    md.push_str("\n## Current System Status\n");
    md.push_str(&format!(
        "- Application: {}\n",
        if running { "RUNNING" } else { "STOPPED" }
    ));
    md.push_str(&format!(
        "- Health: {}\n",
        if healthy { "HEALTHY" } else { "UNHEALTHY" }
    ));
    md.push_str(&format!("- Data Integrity: {integrity}\n"));
    md.push_str(&format!("\n## Verification (level {level})\n"));
    for f in findings {
        md.push_str(&format!(
            "- {} {}: observed {}, threshold {}\n",
            if f.breached { "BREACHED" } else { "ok" },
            f.check,
            f.observed,
            f.threshold
        ));
    }
    md.push_str("\n## User Impact\n");
    let loss = match level {
        1 => "None (features disabled, system on its current code)".to_string(),
        2 => "In-memory data only (cleared on restart)".to_string(),
        _ => {
            let r = pinned_json::<Restore>(ctx, "restore")?.unwrap_or_default();
            format!(
                "All changes since the backup {} (memory database {}); the failed tree is kept at {}",
                r.backup.as_deref().unwrap_or("?"),
                r.memory_backup.as_deref().unwrap_or("not restored"),
                r.failed_path
            )
        }
    };
    md.push_str(&format!("- Data Loss: {loss}\n"));
    md.push_str("\n## Next Steps\n");
    md.push_str(&format!(
        "1. Monitor: `pm2 logs app --lines 100` ({})\n",
        cfg.log_file
    ));
    if let Some(t) = pinned_json::<StableTag>(ctx, "stable_tag")? {
        md.push_str(&format!(
            "2. Review deployment differences: `git diff {} {}`\n",
            t.tag,
            t.head_before.split(' ').next().unwrap_or("HEAD")
        ));
    } else {
        md.push_str("2. Review deployment differences against the last stable tag\n");
    }
    md.push_str("3. Root cause analysis (RCA template of the runbook)\n");
    md.push_str("\n## Incident Owner\nName: _______________\nContact: _______________\n");
    storage::make_dir(&cfg.incident_dir)?;
    let path = format!("{}/incident-{}.md", cfg.incident_dir, ctx.run_id);
    storage::write_string(&path, &md)?;
    Ok(path)
}
