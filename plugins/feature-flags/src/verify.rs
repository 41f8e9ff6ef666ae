//! The runbook's checklists and "Post-Rollback Verification": what each
//! level's verification checks, and the core functionality tests.

use rewind_sdk::prelude::*;
use serde_json::Value;

use crate::config::{Config, file_name};
use crate::decide::*;
use crate::logscan;
use crate::measure::*;
use crate::state::*;
use crate::{envfile, versions};

/// Findings every level checks: the health endpoint (and its stability over
/// the level's monitoring window), the processes, the log since the restart.
pub(crate) fn verify_common(ctx: &Context, cfg: &Config, f: &mut Vec<Finding>) -> Result<Answer> {
    let h = Answer::get(cfg)?;
    f.push(Finding::status(
        format!("GET {} status", cfg.health_path()),
        h.r.status,
        200,
        399,
    ));
    if let Some(s) = h.field("status") {
        f.push(Finding::equals(
            format!("GET {} .status", cfg.health_path()),
            s,
            "healthy",
        ));
    }
    let stable_ms = cfg.stable_ms(ctx.level);
    if ctx.executes() && h.r.healthy && stable_ms > 0 {
        let interval = cfg.probe_interval_ms.max(1);
        let n = u32::try_from(stable_ms / interval)
            .unwrap_or(u32::MAX)
            .max(1)
            + 1;
        let w = cfg.health_probe().wait(
            WaitPolicy::every(interval)
                .timeout_ms(stable_ms + 2 * interval + cfg.probe_timeout_ms)
                .successes(n)
                .failures(1),
        )?;
        f.push(Finding::check(
            format!(
                "stable for {} (GET {} every {} ms)",
                human_ms(stable_ms),
                cfg.health_path(),
                interval
            ),
            w.healthy,
            if w.healthy {
                format!(
                    "{} healthy probes in a row in {} ms",
                    w.attempts, w.elapsed_ms
                )
            } else {
                format!("unhealthy after {} ms ({})", w.elapsed_ms, w.last.detail)
            },
            format!("{n} healthy probes in a row"),
        ));
    }
    let procs = health::processes(&cfg.process_pattern())?;
    f.push(Finding::at_least(
        format!(
            "processes matching {:?} (pm2 status)",
            cfg.process_pattern()
        ),
        f64::from(procs.count),
        1.0,
        "",
    ));
    if ctx.level == 1
        && let Some(mark) = kv_get::<RestartMark>(ctx, "restart-l1")?
        && ctx.executes()
    {
        let fresh = procs.pids.iter().any(|p| !mark.pids_before.contains(p));
        f.push(Finding::check(
            "application restarted",
            fresh,
            format!("pids {:?} -> {:?}", mark.pids_before, procs.pids),
            "a new pid",
        ));
    }
    // `tail -100 /var/log/app.log | grep -i error | wc -l`: 0 or very low.
    if let Some(mark) = kv_get::<RestartMark>(ctx, &format!("restart-l{}", ctx.level))?
        && let Some(text) = read_opt(&cfg.log_file)?
    {
        let since = logscan::since_offset(&text, mark.offset);
        let lines = logscan::lines_since(since, mark.done_ms, cfg.log_utc_offset_min);
        let recent = &lines[lines.len().saturating_sub(cfg.recent_lines)..];
        let errors = recent
            .iter()
            .filter(|l| logscan::matches_ci(l, &cfg.error_pattern))
            .count();
        f.push(Finding::at_most(
            format!(
                "error lines in the last {} log lines since the restart ({} lines)",
                cfg.recent_lines,
                recent.len()
            ),
            errors as f64,
            cfg.max_recent_errors as f64,
            "",
        ));
    }
    Ok(h)
}

pub(crate) fn verify_level1(ctx: &Context, cfg: &Config, f: &mut Vec<Finding>) -> Result<()> {
    let (feats, _) = chosen_features(ctx, cfg)?;
    let path = cfg.env_file();
    let text = read_opt(&path)?.unwrap_or_default();
    for feat in &feats {
        let defs = envfile::definitions(&text, &feat.flag);
        let observed = match defs.as_slice() {
            [] => "not set".to_string(),
            [(line, v)] => format!("{v} (line {line})"),
            many => format!(
                "{} definitions: {}",
                many.len(),
                many.iter()
                    .map(|(l, v)| format!("line {l}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let ok = defs.len() == 1 && envfile::is_off(&defs[0].1);
        f.push(Finding::check(
            format!("{} in {path}", feat.flag),
            ok,
            observed,
            "= false, defined once",
        ));
    }
    let mark = kv_get::<RestartMark>(ctx, "restart-l1")?.unwrap_or_default();
    let log = read_opt(&cfg.log_file)?.unwrap_or_default();
    let since = logscan::since_offset(&log, mark.offset);
    for feat in &feats {
        let n = since
            .lines()
            .filter(|l| feat.markers.iter().any(|m| logscan::matches(l, m)))
            .count();
        f.push(Finding::check(
            format!(
                "{} fallback in the log since the restart (grep {})",
                feat.name,
                feat.markers
                    .iter()
                    .map(|m| format!("{m:?}"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
            n > 0,
            format!("{n} lines"),
            ">= 1 line",
        ));
    }
    Ok(())
}

pub(crate) fn verify_level2(
    ctx: &Context,
    cfg: &Config,
    h: &Answer,
    f: &mut Vec<Finding>,
) -> Result<()> {
    let t = stable_tag(ctx, cfg)?;
    if ctx.executes() {
        let at = cfg.git(&["tag", "--points-at", "HEAD"]).run()?;
        let tags: Vec<&str> = at.stdout.lines().map(str::trim).collect();
        f.push(Finding::check(
            format!("git tag --points-at HEAD in {}", cfg.app_dir),
            tags.contains(&t.tag.as_str()),
            if tags.is_empty() {
                "none".to_string()
            } else {
                tags.join(", ")
            },
            format!("contains {}", t.tag),
        ));
    } else {
        let g = git_state(cfg)?;
        f.push(Finding::check(
            format!("HEAD of {}", cfg.app_dir),
            g.head_sha == t.sha,
            format!("{} ({})", sha12(&g.head_sha), g.head_name),
            format!("{} ({})", sha12(&t.sha), t.tag),
        ));
    }
    if !cfg.version_field.is_empty() && !cfg.served_version.is_empty() {
        // What the app serves for a tag is the deployment's convention
        // (`served_version`): the tag without its `v` by default.
        let expected = versions::served(&cfg.served_version, &t.tag);
        let served = h.field(&cfg.version_field);
        let ok = served
            .as_deref()
            .is_some_and(|v| versions::glob(&expected, v));
        f.push(Finding::check(
            format!(
                "version served (GET {} .{})",
                cfg.health_path(),
                cfg.version_field
            ),
            ok,
            served.unwrap_or_else(|| "not reported".into()),
            format!(
                "= {expected} (served_version {:?} of {})",
                cfg.served_version, t.tag
            ),
        ));
    }
    Ok(())
}

pub(crate) fn verify_level3(
    ctx: &Context,
    cfg: &Config,
    h: &Answer,
    f: &mut Vec<Finding>,
) -> Result<()> {
    let r = restore_choice(ctx, cfg)?;
    let pkg = match r.pkg_version.clone() {
        Some(v) => Some(v),
        None => read_opt(&cfg.app("package.json"))?
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v.get("version").and_then(Value::as_str).map(str::to_string)),
    };
    if !cfg.version_field.is_empty()
        && let Some(pkg) = pkg
    {
        let served = h
            .field(&cfg.version_field)
            .unwrap_or_else(|| "not reported".into());
        // `1.0.0`, `1.0.0-stable`, `1.0.0+build`, also with a leading `v`.
        let bare = served.strip_prefix('v').unwrap_or(&served);
        let ok = bare == pkg
            || bare.starts_with(&format!("{pkg}-"))
            || bare.starts_with(&format!("{pkg}+"));
        f.push(Finding::check(
            format!(
                "version served (GET {} .{}) vs package.json of the backup",
                cfg.health_path(),
                cfg.version_field
            ),
            ok,
            served,
            format!("= {pkg} (or {pkg}-*, {pkg}+*, v{pkg}...)"),
        ));
    }
    if let Some(backup) = &r.memory_backup {
        let db = cfg.memory_db_path();
        for t in &cfg.memory_tables {
            let now = count_rows(&db, t)
                .map_or_else(|e| format!("error: {}", e.message()), |n| n.to_string());
            let before = count_rows(backup, t)
                .map_or_else(|e| format!("error: {}", e.message()), |n| n.to_string());
            f.push(Finding::equals(
                format!(
                    "rows in {t} (memory database vs backup {})",
                    file_name(backup)
                ),
                now,
                before,
            ));
        }
    }
    let env = cfg.env_file();
    let present = exists(&env)?;
    f.push(Finding::check(
        format!("{env} present"),
        present,
        if present { "present" } else { "missing" },
        "present",
    ));
    Ok(())
}

/// The runbook's "Core Functionality Tests": spawn an agent, upload a file.
pub(crate) fn smoke_tests(cfg: &Config, f: &mut Vec<Finding>) {
    let mut post = |path: &str, req: http::HttpRequest| {
        let status = req.send().ok().map(|r| r.status);
        f.push(Finding::status(format!("POST {path}"), status, 200, 299));
    };
    if !cfg.smoke_spawn_path.is_empty() {
        post(
            &cfg.smoke_spawn_path,
            http::HttpRequest::post(
                cfg.url(&cfg.smoke_spawn_path),
                r#"{"agents": [{"type": "researcher", "name": "Test"}]}"#,
            )
            .header("content-type", "application/json")
            .timeout_ms(cfg.probe_timeout_ms.max(5000)),
        );
    }
    if !cfg.smoke_upload_path.is_empty() {
        let boundary = "rewind-post-rollback-check";
        let body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"rewind-test-document.txt\"\r\nContent-Type: text/plain\r\n\r\npost-rollback upload check\r\n--{boundary}--\r\n"
        );
        post(
            &cfg.smoke_upload_path,
            http::HttpRequest::post(cfg.url(&cfg.smoke_upload_path), body)
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .timeout_ms(cfg.probe_timeout_ms.max(5000)),
        );
    }
}
