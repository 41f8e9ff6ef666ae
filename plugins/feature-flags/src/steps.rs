//! The three levels in the runbook's order: each level's plan (steps with
//! their effect and whether a resume may repeat them), then how each step
//! is carried out. Level 1: feature toggle; Level 2: code rollback;
//! Level 3: full system restore.

use rewind_sdk::prelude::*;
use serde_json::Value;

use crate::clock::{Utc, now_ms};
use crate::config::{Config, parent};
use crate::decide::*;
use crate::envfile;
use crate::measure::*;
use crate::state::*;

pub(crate) fn level_name(level: u8) -> &'static str {
    match level {
        1 => "feature toggle",
        2 => "code rollback",
        _ => "full system restore",
    }
}

/// The steps of `ctx.level`, in the runbook's order, before `[]`
/// commands are left out.
pub(crate) fn plan_level(ctx: &Context, cfg: &Config) -> Result<Vec<Step>> {
    let app = &cfg.app_dir;
    let status = Step::auto(
        "status",
        "Verify application started (pm2 status)",
        format!("Run `{}` in {app}", cfg.cmd(&cfg.status_cmd).display()),
    )
    .observe()
    .repeatable();
    let health = Step::auto(
        "health",
        "Check health",
        format!(
            "Poll GET {} every {} ms until it answers 200-399, for at most {}{}; a still-unhealthy app is left to the verification, which escalates",
            cfg.health_url,
            cfg.probe_interval_ms,
            human_ms(cfg.wait_ms(ctx.level)),
            if cfg.failure_threshold > 0 {
                format!(
                    ", or until {} answers in a row fail once it answers",
                    cfg.failure_threshold
                )
            } else {
                String::new()
            }
        ),
    )
                .observe()
                .repeatable();
    match ctx.level {
        1 => {
            let (feats, why) = chosen_features(ctx, cfg)?;
            let flags: Vec<String> = feats.iter().map(|f| f.flag.clone()).collect();
            let path = cfg.env_file();
            let current = read_opt(&path)?;
            let rw = envfile::set_flags(
                current.as_deref().unwrap_or(""),
                &flags,
                "false",
                "Emergency feature toggles",
            );
            let edits: Vec<String> = rw.edits.iter().map(|e| e.describe("false")).collect();
            let markers: Vec<String> = feats
                .iter()
                .flat_map(|f| f.markers.iter().map(|m| format!("{m:?}")))
                .collect();
            Ok(vec![
                Step::auto(
                    "env",
                    format!("Set {} to false in .env", flags.join(", ")),
                    format!(
                        "{} ({why}): snapshot {path}, then rewrite it atomically: {}; the other {} lines stay as they are",
                        if current.is_some() { "Edit" } else { "Create" },
                        edits.join("; "),
                        rw.untouched
                    ),
                )
                // The old .env is snapshotted first; a file that has the
                // flags off already is left as it is.
                .reversible()
                .repeatable(),
                Step::auto(
                    "restart",
                    "Restart application",
                    format!(
                        "Note where {} ends, then run `{}` in {app}; the verification looks for {} in what the restarted app logs",
                        cfg.log_file,
                        cfg.cmd(&cfg.restart_cmd).display(),
                        markers.join(", ")
                    ),
                )
                // A second restart is a restart.
                .disruptive()
                .repeatable(),
                status,
                health,
            ])
        }
        2 => {
            let t = stable_tag(ctx, cfg)?;
            let archive = format!(
                "{}/backup-before-rollback-{}.tar.gz",
                cfg.rollback_backup_dir,
                run_stamp(ctx)?
            );
            let mut steps = vec![
                Step::auto(
                    "inspect",
                    "Check current version, identify the last stable version",
                    format!(
                        "Run `git log --oneline -5` and `git describe --tags` in {app} (HEAD is {}); the last tag matching {:?} by version order is {} (of {})",
                        t.head_before,
                        cfg.stable_tag_pattern,
                        t.tag,
                        t.candidates.join(", ")
                    ),
                )
                .observe()
                .repeatable(),
                Step::auto(
                    "backup",
                    "Create backup of current state",
                    format!(
                        "Run `{} -czf {archive} .` in {app}, then `tar -tzf` it to check it reads back",
                        cfg.tar
                    ),
                )
                // Reads the tree; the archive is named by the run's stamp, so
                // a second try writes the same archive again.
                .observe()
                .repeatable(),
            ];
            if !cfg.git_remote.is_empty() {
                steps.push(Step::auto(
                    "fetch",
                    format!("git fetch {}", cfg.git_remote),
                    format!(
                        "Run `git fetch {}` in {app} (an unreachable remote is reported; the local tag {} is used)",
                        cfg.git_remote, t.tag
                    ),
                )
                // Updates remote-tracking refs only, not the checkout.
                .observe()
                .repeatable());
            }
            steps.extend([
                Step::auto(
                    "checkout",
                    format!("Checkout stable version {}", t.tag),
                    format!(
                        "Run `git checkout {}` in {app} (commit {}), then check `git tag --points-at HEAD` names it",
                        t.tag,
                        sha12(&t.sha)
                    ),
                )
                // The tree was archived first (backup) and git refuses to
                // overwrite local changes; checking out the tag HEAD is at
                // changes nothing.
                .reversible()
                .repeatable(),
                Step::auto(
                    "reinstall",
                    "Clean and reinstall dependencies",
                    format!(
                        "Remove {} in {app} (package-lock.json is kept: npm ci installs from it), then run `{}`",
                        cfg.clean_paths.join(", "),
                        cfg.cmd(&cfg.install_cmd).display()
                    ),
                )
                // node_modules is derived from the lock file (and in the
                // archive); removing and installing again ends the same.
                .reversible()
                .repeatable(),
                Step::auto(
                    "build",
                    "Rebuild application",
                    format!(
                        "Run `NODE_ENV=production {}` in {app}",
                        cfg.cmd(&cfg.build_cmd).display()
                    ),
                )
                // Build output follows the checked-out source.
                .reversible()
                .repeatable(),
                Step::auto(
                    "reload",
                    "Restart with zero-downtime",
                    format!(
                        "Note where {} ends, then run `{}` in {app}",
                        cfg.log_file,
                        cfg.cmd(&cfg.reload_cmd).display()
                    ),
                )
                // pm2 reload cycles the workers; a second reload is a reload.
                .disruptive()
                .repeatable(),
                status,
                health,
            ]);
            Ok(steps)
        }
        3 => {
            let r = restore_choice(ctx, cfg)?;
            let backup = match &r.backup {
                Some(b) => format!("{}, {}", describe_file(b)?, r.backup_why),
                None => format!("NONE ({}; the stop step will refuse)", r.backup_why),
            };
            let memory = match &r.memory_backup {
                Some(m) => format!("{}, {}", describe_file(m)?, r.memory_why),
                None => format!("none ({})", r.memory_why),
            };
            let db = cfg.memory_db_path();
            Ok(vec![
                Step::auto(
                    "stop",
                    "Stop application",
                    format!(
                        "Check the pre-deployment backup exists, then run `{}` in {app}",
                        cfg.cmd(&cfg.stop_cmd).display()
                    ),
                )
                // Stopping a stopped app changes nothing.
                .disruptive()
                .repeatable(),
                Step::auto(
                    "identify",
                    "Identify pre-deployment backup",
                    format!("Pre-deployment backup: {backup}; memory database backup: {memory}"),
                )
                .observe()
                .repeatable(),
                Step::auto(
                    "move-aside",
                    "Move current directory (safety)",
                    format!("Rename {app} to {}", r.failed_path),
                )
                // A rename, put back by renaming; the path is pinned, and a
                // tree moved there already is left where it is.
                .reversible()
                .repeatable(),
                Step::auto(
                    "extract",
                    "Extract backup",
                    format!(
                        "Create {app} and run `{} -xzf {} -C {app}`; read the version from package.json",
                        cfg.tar,
                        r.backup.as_deref().unwrap_or("<none>")
                    ),
                )
                // Into the empty directory left by move-aside (the failed
                // tree is kept); extracting again writes the same files.
                .reversible()
                .repeatable(),
                Step::auto(
                    "restore-db",
                    "Restore the SQLite memory database",
                    match &r.memory_backup {
                        Some(m) => format!(
                            "Copy {}/{} to {db}.rollback-backup, remove a stale {db}-wal/-shm, copy {m} to {db} atomically, then check SELECT COUNT(*) FROM {} equals the backup's",
                            r.failed_path,
                            cfg.memory_db,
                            cfg.memory_tables.join(", ")
                        ),
                        None => format!(
                            "Nothing to restore: no backup in {}",
                            cfg.memory_backups_dir
                        ),
                    },
                )
                // The live memory database is replaced by an older backup:
                // what was written since is gone from the service (a copy
                // is kept as .rollback-backup). Repeatable: the copy is
                // taken from the moved-aside tree, and the pinned backup
                // copied again ends the same.
                .effect(Effect::Destructive)
                .repeatable(),
                Step::auto(
                    "check-env",
                    "Verify environment configuration",
                    format!(
                        "Check {} exists and report its feature flags",
                        cfg.env_file()
                    ),
                )
                .observe()
                .repeatable(),
                Step::auto(
                    "install",
                    "Reinstall dependencies",
                    format!("Run `{}` in {app}", cfg.cmd(&cfg.install_cmd).display()),
                )
                .reversible()
                .repeatable(),
                Step::auto(
                    "build",
                    "Verify build artifacts",
                    format!(
                        "Look for {} in {app}; if {} is missing, run `NODE_ENV=production {}`",
                        cfg.build_dirs.join(", "),
                        cfg.build_marker,
                        cfg.cmd(&cfg.build_cmd).display()
                    ),
                )
                // Build output follows the checked-out source.
                .reversible()
                .repeatable(),
                Step::auto(
                    "start",
                    "Restart application",
                    format!(
                        "Note where {} ends, then run `{}` in {app}",
                        cfg.log_file,
                        cfg.cmd(&cfg.start_cmd).display()
                    ),
                )
                // Not repeatable: a start cut short may have started the
                // app, and a second `pm2 start` of a script can start a
                // second copy.
                .disruptive(),
                status,
                health,
            ])
        }
        other => {
            bail!("the feature-flags plugin has levels 1 to 3; level {other} was asked for")
        }
    }
}

/// The command of the config a step runs, for the steps that run one.
/// A `[]` command skips its step: `plan` leaves it out, and a run planned
/// before the config changed skips it.
pub(crate) fn step_command<'a>(
    cfg: &'a Config,
    level: u8,
    step: &str,
) -> Option<(&'static str, &'a [String])> {
    Some(match (level, step) {
        (1, "restart") => ("restart_cmd", &cfg.restart_cmd),
        (2, "reinstall") | (3, "install") => ("install_cmd", &cfg.install_cmd),
        (2 | 3, "build") => ("build_cmd", &cfg.build_cmd),
        (2, "reload") => ("reload_cmd", &cfg.reload_cmd),
        (3, "stop") => ("stop_cmd", &cfg.stop_cmd),
        (3, "start") => ("start_cmd", &cfg.start_cmd),
        (_, "status") => ("status_cmd", &cfg.status_cmd),
        _ => return None,
    })
}

/// The step's command is `[]`: the step does not run.
pub(crate) fn skipped(cfg: &Config, level: u8, step: &str) -> Option<&'static str> {
    step_command(cfg, level, step).and_then(|(key, argv)| argv.is_empty().then_some(key))
}

pub(crate) fn run_level_step(ctx: &Context, cfg: &Config, step: &str) -> Result<StepOutcome> {
    if let Some(key) = skipped(cfg, ctx.level, step) {
        return Ok(StepOutcome::ok(format!("skipped: {key} = []")));
    }
    match (ctx.level, step) {
        (1, "env") => step_env(ctx, cfg),
        (1, "restart") => restart_like(ctx, cfg, &cfg.restart_cmd, "restarted"),
        (2, "inspect") => step_inspect(ctx, cfg),
        (2, "backup") => step_backup(ctx, cfg),
        (2, "fetch") => step_fetch(cfg),
        (2, "checkout") => step_checkout(ctx, cfg),
        (2, "reinstall") => step_reinstall(ctx, cfg),
        (2, "build") => step_build(ctx, cfg),
        (2, "reload") => restart_like(ctx, cfg, &cfg.reload_cmd, "reloaded"),
        (3, "stop") => step_stop(ctx, cfg),
        (3, "identify") => step_identify(ctx, cfg),
        (3, "move-aside") => step_move_aside(ctx, cfg),
        (3, "extract") => step_extract(ctx, cfg),
        (3, "restore-db") => step_restore_db(ctx, cfg),
        (3, "check-env") => step_check_env(ctx, cfg),
        (3, "install") => {
            let cmd = cfg.cmd(&cfg.install_cmd);
            let out = cmd.run()?;
            Ok(cmd_ok(ctx, &cmd, &out, "dependencies installed"))
        }
        (3, "build") => step_build_artifacts(ctx, cfg),
        (3, "start") => restart_like(ctx, cfg, &cfg.start_cmd, "started"),
        (_, "status") => step_status(cfg),
        (_, "health") => step_health(ctx, cfg),
        (level, other) => bail!("level {level} has no step {other:?}"),
    }
}

pub(crate) fn cmd_ok(ctx: &Context, cmd: &Cmd, out: &process::Output, what: &str) -> StepOutcome {
    if out.simulated {
        return StepOutcome::ok(format!(
            "would run `{}` ({})",
            cmd.display(),
            ctx.mode.as_str()
        ));
    }
    if out.success() {
        StepOutcome::ok(format!(
            "{what}: `{}` exited 0 ({})",
            cmd.display(),
            brief(out)
        ))
    } else {
        StepOutcome::failed(format!(
            "{what}: `{}` exited {}: {}",
            cmd.display(),
            code(out),
            brief(out)
        ))
    }
}

/// Run a restart-like command (restart, reload, start), remembering where
/// the log ended and which pids ran before it.
pub(crate) fn restart_like(
    ctx: &Context,
    cfg: &Config,
    argv: &[String],
    what: &str,
) -> Result<StepOutcome> {
    let before = health::processes(&cfg.process_pattern())?.pids;
    let offset = storage::stat(&cfg.log_file)?.map_or(0, |e| e.size);
    let cmd = cfg.cmd(argv);
    log::info(format_args!("{what}: {}", cmd.display()));
    let out = cmd.run()?;
    let mark = RestartMark {
        offset,
        done_ms: now_ms(),
        pids_before: before.clone(),
    };
    kv_set(ctx, &format!("restart-l{}", ctx.level), &mark)?;
    let o = cmd_ok(ctx, &cmd, &out, what);
    Ok(if o.ok && !out.simulated {
        StepOutcome::ok(format!("{}; pids before: {before:?}", o.message))
    } else {
        o
    })
}

pub(crate) fn step_env(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let (feats, why) = chosen_features(ctx, cfg)?;
    let flags: Vec<String> = feats.iter().map(|f| f.flag.clone()).collect();
    let path = cfg.env_file();
    let original = read_opt(&path)?;
    let header = format!("Emergency feature toggles ({})", Utc::at(now_ms()).date());
    let rw = envfile::set_flags(original.as_deref().unwrap_or(""), &flags, "false", &header);
    let edits: Vec<String> = rw.edits.iter().map(|e| e.describe("false")).collect();
    if original.is_some() && !rw.changed(original.as_deref().unwrap_or("")) {
        return Ok(StepOutcome::ok(format!(
            "{path} already has {}: nothing to rewrite ({})",
            flags.join(", "),
            edits.join("; ")
        )));
    }
    let mut snap = String::new();
    if original.is_some() {
        let s = storage::snapshot(
            &format!("feature-flags-env-{}", ctx.run_id),
            std::slice::from_ref(&path),
        )?;
        snap = format!("; the old file is in snapshot {}", s.id);
    }
    storage::write_string(&path, &rw.text)?;
    let verb = if ctx.executes() {
        "rewrote"
    } else {
        "would rewrite"
    };
    Ok(StepOutcome::ok(format!(
        "{verb} {path} atomically ({why}): {}; {} other lines untouched{snap}",
        edits.join("; "),
        rw.untouched
    )))
}

pub(crate) fn step_status(cfg: &Config) -> Result<StepOutcome> {
    let cmd = cfg.cmd(&cfg.status_cmd);
    let out = cmd.run()?;
    if out.simulated {
        return Ok(StepOutcome::ok(format!("would run `{}`", cmd.display())));
    }
    let procs = health::processes(&cfg.process_pattern())?;
    Ok(StepOutcome::ok(format!(
        "`{}` exited {} ({}); pids matching {:?}: {:?}",
        cmd.display(),
        code(&out),
        brief(&out),
        cfg.process_pattern(),
        procs.pids
    ))
    .with_findings(vec![
        Finding::check(
            format!("`{}` exit code", cmd.display()),
            out.exit_code == Some(0),
            code(&out),
            "0",
        ),
        Finding::at_least(
            format!("processes matching {:?}", cfg.process_pattern()),
            f64::from(procs.count),
            1.0,
            "",
        ),
    ]))
}

pub(crate) fn step_health(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let timeout = cfg.wait_ms(ctx.level);
    if !ctx.executes() {
        return Ok(StepOutcome::ok(format!(
            "would poll GET {} every {} ms for up to {} (nothing was restarted in a {} run)",
            cfg.health_url,
            cfg.probe_interval_ms,
            human_ms(timeout),
            ctx.mode.as_str()
        )));
    }
    let (w, gave_up) = wait_for_health(cfg, timeout)?;
    let findings = vec![
        Finding::status(
            format!("GET {} status", cfg.health_path()),
            w.last.status,
            200,
            399,
        ),
        Finding::at_most("time to healthy", w.elapsed_ms as f64, timeout as f64, "ms"),
    ];
    // Not healthy is not a failed step: the verification decides, and a
    // failed verification is what makes the host escalate.
    let msg = if w.healthy {
        format!("healthy after {} probes in {} ms", w.attempts, w.elapsed_ms)
    } else if gave_up {
        format!(
            "gave up after {} consecutive failed probes (failure_threshold) in {} ms, last: {}; the verification decides whether to escalate",
            cfg.failure_threshold, w.elapsed_ms, w.last.detail
        )
    } else {
        format!(
            "still not healthy after {} ms ({} probes, last: {}); the verification decides whether to escalate",
            w.elapsed_ms, w.attempts, w.last.detail
        )
    };
    Ok(StepOutcome::ok(msg).with_findings(findings))
}

/// Poll the health URL for up to `timeout`: while the app does not answer
/// (it is starting: connection refused) for the whole time, and once it
/// answers, until `failure_threshold` answers in a row fail. A steady 500
/// is not waited out: the runbook checks health once after the restart,
/// and the verification decides. Returns the wait and whether it gave up
/// on the failure threshold.
pub(crate) fn wait_for_health(cfg: &Config, timeout: u64) -> Result<(health::WaitResult, bool)> {
    let every = WaitPolicy::every(cfg.probe_interval_ms);
    if cfg.failure_threshold == 0 {
        return Ok((cfg.health_probe().wait(every.timeout_ms(timeout))?, false));
    }
    // Any HTTP answer ends the first wait.
    let answered = cfg
        .health_probe()
        .expect(100, 599)
        .wait(every.timeout_ms(timeout))?;
    if !answered.healthy {
        return Ok((answered, false));
    }
    let left = timeout.saturating_sub(answered.elapsed_ms);
    let mut w = cfg
        .health_probe()
        .wait(every.timeout_ms(left).failures(cfg.failure_threshold))?;
    let gave_up = !w.healthy && w.attempts >= cfg.failure_threshold;
    w.attempts += answered.attempts;
    w.elapsed_ms += answered.elapsed_ms;
    Ok((w, gave_up))
}

pub(crate) fn step_inspect(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let t = stable_tag(ctx, cfg)?;
    let log5 = cfg.git(&["log", "--oneline", "-5"]).run()?;
    let describe = cfg.git(&["describe", "--tags", "--always"]).run()?;
    if log5.simulated {
        return Ok(StepOutcome::ok(format!(
            "would run `git log --oneline -5` and `git describe --tags`; HEAD is {}; last stable tag {}",
            t.head_before, t.tag
        )));
    }
    Ok(StepOutcome::ok(format!(
        "current version {} (HEAD {}; last commit: {}); last stable version {} (of {})",
        describe.stdout.trim(),
        t.head_before,
        short(log5.stdout.trim(), 100),
        t.tag,
        t.candidates.join(", ")
    )))
}

pub(crate) fn step_backup(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let archive = format!(
        "{}/backup-before-rollback-{}.tar.gz",
        cfg.rollback_backup_dir,
        run_stamp(ctx)?
    );
    let cmd = Cmd::new(&cfg.tar)
        .args(["-czf", archive.as_str(), "."])
        .cwd(&cfg.app_dir)
        .timeout_ms(cfg.command_timeout_ms);
    let out = cmd.run()?;
    if out.simulated {
        return Ok(StepOutcome::ok(format!(
            "would run `{}` in {}",
            cmd.display(),
            cfg.app_dir
        )));
    }
    // GNU tar exits 1 when a file changed while it was read (a live log or
    // database); the archive is still complete and is checked below.
    if !matches!(out.exit_code, Some(0 | 1)) {
        return Ok(StepOutcome::failed(format!(
            "`{}` exited {}: {}",
            cmd.display(),
            code(&out),
            brief(&out)
        )));
    }
    let list = Cmd::new(&cfg.tar)
        .args(["-tzf", archive.as_str()])
        .cwd(&cfg.app_dir)
        .timeout_ms(cfg.command_timeout_ms)
        .run()?;
    let entries = list.stdout.lines().count();
    if !list.success() || entries == 0 {
        return Ok(StepOutcome::failed(format!(
            "{archive} does not read back: `tar -tzf` exited {} with {entries} entries: {}",
            code(&list),
            brief(&list)
        )));
    }
    kv_set(ctx, "archive", &archive)?;
    let warn = if out.exit_code == Some(1) {
        format!(" (tar warned: {})", brief(&out))
    } else {
        String::new()
    };
    Ok(StepOutcome::ok(format!(
        "archived {} into {archive}: {entries} entries{warn}",
        cfg.app_dir
    )))
}

pub(crate) fn step_fetch(cfg: &Config) -> Result<StepOutcome> {
    let cmd = cfg.git(&["fetch", cfg.git_remote.as_str()]);
    let out = cmd.run()?;
    if out.simulated {
        return Ok(StepOutcome::ok(format!("would run `{}`", cmd.display())));
    }
    Ok(if out.success() {
        StepOutcome::ok(format!("`{}` exited 0", cmd.display()))
    } else {
        // The tag to check out is already known locally; an unreachable
        // remote must not stop the rollback.
        StepOutcome::ok(format!(
            "`{}` exited {} ({}); continuing with the local tags",
            cmd.display(),
            code(&out),
            brief(&out)
        ))
    })
}

pub(crate) fn step_checkout(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let t = stable_tag(ctx, cfg)?;
    let cmd = cfg.git(&["checkout", t.tag.as_str()]);
    let out = cmd.run()?;
    if out.simulated {
        return Ok(StepOutcome::ok(format!("would run `{}`", cmd.display())));
    }
    if !out.success() {
        return Ok(StepOutcome::failed(format!(
            "`{}` exited {}: {}",
            cmd.display(),
            code(&out),
            short(out.stderr.trim(), 300)
        )));
    }
    let at = cfg.git(&["tag", "--points-at", "HEAD"]).run()?;
    let describe = cfg.git(&["describe", "--tags"]).run()?;
    let tags: Vec<&str> = at.stdout.lines().map(str::trim).collect();
    let ok = tags.contains(&t.tag.as_str());
    let f = Finding::check(
        "git tag --points-at HEAD",
        ok,
        if tags.is_empty() {
            "none".to_string()
        } else {
            tags.join(", ")
        },
        format!("contains {}", t.tag),
    );
    let msg = format!(
        "checked out {}; git describe --tags: {}",
        t.tag,
        describe.stdout.trim()
    );
    Ok(if ok {
        StepOutcome::ok(msg)
    } else {
        StepOutcome::failed(msg)
    }
    .with_findings(vec![f]))
}

pub(crate) fn step_reinstall(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let mut removed = Vec::new();
    for p in &cfg.clean_paths {
        let path = cfg.app(p);
        if exists(&path)? {
            storage::remove(&path)?;
            removed.push(p.clone());
        }
    }
    let cmd = cfg.cmd(&cfg.install_cmd);
    let out = cmd.run()?;
    let o = cmd_ok(ctx, &cmd, &out, "dependencies reinstalled");
    let removed = if removed.is_empty() {
        "nothing to remove".to_string()
    } else {
        format!(
            "{} {}",
            if ctx.executes() {
                "removed"
            } else {
                "would remove"
            },
            removed.join(", ")
        )
    };
    Ok(StepOutcome {
        message: format!("{removed}; {}", o.message),
        ..o
    })
}

pub(crate) fn step_build(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let cmd = cfg.cmd(&cfg.build_cmd).env("NODE_ENV", "production");
    let out = cmd.run()?;
    Ok(cmd_ok(ctx, &cmd, &out, "built with NODE_ENV=production"))
}

pub(crate) fn step_stop(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let r = restore_choice(ctx, cfg)?;
    let Some(backup) = &r.backup else {
        return Ok(StepOutcome::failed(format!(
            "no pre-deployment backup to restore ({}): not stopping the application for a restore that cannot happen",
            r.backup_why
        )));
    };
    if !exists(backup)? {
        return Ok(StepOutcome::failed(format!(
            "the backup {backup} does not exist: not stopping the application"
        )));
    }
    let cmd = cfg.cmd(&cfg.stop_cmd);
    let out = cmd.run()?;
    Ok(cmd_ok(ctx, &cmd, &out, "application stopped"))
}

pub(crate) fn step_identify(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let r = restore_choice(ctx, cfg)?;
    let Some(backup) = &r.backup else {
        return Ok(StepOutcome::failed(format!(
            "no pre-deployment backup to restore: {}",
            r.backup_why
        )));
    };
    let mut msg = format!(
        "pre-deployment backup {}: {}",
        describe_file(backup)?,
        r.backup_why
    );
    match &r.memory_backup {
        Some(m) => {
            let counts: Vec<String> = cfg
                .memory_tables
                .iter()
                .map(|t| match count_rows(m, t) {
                    Ok(n) => format!("{n} rows in {t}"),
                    Err(e) => format!("{t}: {}", e.message()),
                })
                .collect();
            msg.push_str(&format!(
                "; memory database backup {} ({}): {}",
                describe_file(m)?,
                counts.join(", "),
                r.memory_why
            ));
        }
        None => msg.push_str(&format!(
            "; no memory database backup to restore: {}",
            r.memory_why
        )),
    }
    Ok(StepOutcome::ok(msg))
}

pub(crate) fn step_move_aside(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let r = restore_choice(ctx, cfg)?;
    // The path is pinned for the incident and named by its first run's
    // stamp: when it exists, this incident moved the failed tree there
    // already (a resumed or second run), and what is in app_dir now is
    // what the restore extracted.
    if exists(&r.failed_path)? {
        return Ok(StepOutcome::ok(format!(
            "the failed tree was moved to {} already; {} is left as it is",
            r.failed_path, cfg.app_dir
        )));
    }
    storage::rename(&cfg.app_dir, &r.failed_path)?;
    Ok(StepOutcome::ok(format!(
        "{} {} to {}",
        if ctx.executes() {
            "moved"
        } else {
            "would move"
        },
        cfg.app_dir,
        r.failed_path
    )))
}

pub(crate) fn step_extract(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let mut r = restore_choice(ctx, cfg)?;
    let Some(backup) = r.backup.clone() else {
        return Ok(StepOutcome::failed("no backup to extract"));
    };
    storage::make_dir(&cfg.app_dir)?;
    let cmd = Cmd::new(&cfg.tar)
        .args(["-xzf", backup.as_str(), "-C", cfg.app_dir.as_str()])
        .cwd(&cfg.app_dir)
        .timeout_ms(cfg.command_timeout_ms);
    let out = cmd.run()?;
    if !out.success() {
        return Ok(StepOutcome::failed(format!(
            "`{}` exited {}: {}",
            cmd.display(),
            code(&out),
            brief(&out)
        )));
    }
    let pkg = read_opt(&cfg.app("package.json"))?
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.get("version").and_then(Value::as_str).map(str::to_string));
    let entries = storage::list_dir(&cfg.app_dir, false)?.len();
    if ctx.executes() {
        r.pkg_version = pkg.clone();
        kv_set(ctx, "pkg_version", &pkg)?;
        Ok(StepOutcome::ok(format!(
            "extracted {backup} into {}: {entries} entries; package.json version {}",
            cfg.app_dir,
            pkg.as_deref().unwrap_or("missing")
        )))
    } else {
        Ok(StepOutcome::ok(format!(
            "would create {} and run `{}`",
            cfg.app_dir,
            cmd.display()
        )))
    }
}

pub(crate) fn step_restore_db(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let r = restore_choice(ctx, cfg)?;
    let db = cfg.memory_db_path();
    let Some(backup) = &r.memory_backup else {
        // Backups that all came after the deployment hold what it did to
        // the database: restoring one would not roll it back, and keeping
        // the live one is no restore either.
        if r.memory_refused {
            return Ok(StepOutcome::failed(format!(
                "no memory database backup to restore: {}",
                r.memory_why
            )));
        }
        return Ok(StepOutcome::ok(format!(
            "nothing to restore ({}; the runbook restores it if applicable)",
            r.memory_why
        )));
    };
    let mut before = Vec::new();
    for t in &cfg.memory_tables {
        match count_rows(backup, t) {
            Ok(n) => before.push((t.clone(), n)),
            Err(e) => {
                return Ok(StepOutcome::failed(format!(
                    "the backup {backup} cannot be read ({t}: {}); not restoring it",
                    e.message()
                )));
            }
        }
    }
    let mut notes = Vec::new();
    // `cp .swarm/memory.db .swarm/memory.db.rollback-backup`: the database
    // as it was when the app failed sits next to the restored one.
    let failed_db = format!("{}/{}", r.failed_path, cfg.memory_db);
    let current = if exists(&failed_db)? {
        Some(failed_db)
    } else if !ctx.executes() && exists(&db)? {
        Some(db.clone())
    } else {
        None
    };
    storage::make_dir(&parent(&db))?;
    let keep = format!("{db}.rollback-backup");
    if let Some(cur) = &current {
        storage::copy(cur, &keep)?;
        if exists(&format!("{cur}-wal"))? {
            storage::copy(&format!("{cur}-wal"), &format!("{keep}-wal"))?;
        }
        notes.push(format!("kept {cur} as {keep}"));
    }
    // A journal left next to the target belongs to another database.
    for suffix in ["-wal", "-shm", "-journal"] {
        let p = format!("{db}{suffix}");
        if exists(&p)? {
            storage::remove(&p)?;
            notes.push(format!("removed stale {p}"));
        }
    }
    storage::copy(backup, &db)?;
    let expected: Vec<String> = before
        .iter()
        .map(|(t, n)| format!("{n} rows in {t}"))
        .collect();
    if !ctx.executes() {
        return Ok(StepOutcome::ok(format!(
            "would copy {backup} to {db} ({}){}",
            expected.join(", "),
            if notes.is_empty() {
                String::new()
            } else {
                format!("; would have {}", notes.join("; "))
            }
        )));
    }
    let mut findings = Vec::new();
    for (t, n) in &before {
        let now = count_rows(&db, t)
            .map_or_else(|e| format!("error: {}", e.message()), |c| c.to_string());
        findings.push(Finding::equals(
            format!("SELECT COUNT(*) FROM {t} (restored vs backup)"),
            now,
            n,
        ));
    }
    let ok = findings.iter().all(|f| !f.breached);
    let msg = format!(
        "restored {backup} to {db}: {}{}",
        expected.join(", "),
        if notes.is_empty() {
            String::new()
        } else {
            format!("; {}", notes.join("; "))
        }
    );
    Ok(if ok {
        StepOutcome::ok(msg)
    } else {
        StepOutcome::failed(msg)
    }
    .with_findings(findings))
}

pub(crate) fn step_check_env(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let path = cfg.env_file();
    let scope = if ctx.executes() {
        ""
    } else {
        " (the current tree: nothing was extracted in a dry run)"
    };
    match read_opt(&path)? {
        None => Ok(
            StepOutcome::ok(format!("{path} is missing{scope}")).with_findings(vec![
                Finding::check(format!("{path} present"), false, "missing", "present"),
            ]),
        ),
        Some(text) => {
            let flags: Vec<String> = cfg
                .features
                .iter()
                .map(|f| {
                    let defs = envfile::definitions(&text, &f.flag);
                    match defs.last() {
                        Some((_, v)) => format!("{}={v}", f.flag),
                        None => format!("{} unset", f.flag),
                    }
                })
                .collect();
            Ok(StepOutcome::ok(format!(
                "{path}: {} settings; {} (other values are not printed){scope}",
                envfile::count_settings(&text),
                flags.join(", ")
            )))
        }
    }
}

pub(crate) fn step_build_artifacts(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let mut present = Vec::new();
    let mut missing = Vec::new();
    for d in &cfg.build_dirs {
        if exists(&cfg.app(d))? {
            present.push(d.clone());
        } else {
            missing.push(d.clone());
        }
    }
    let seen = format!(
        "present: {}; missing: {}",
        if present.is_empty() {
            "none".into()
        } else {
            present.join(", ")
        },
        if missing.is_empty() {
            "none".into()
        } else {
            missing.join(", ")
        }
    );
    if exists(&cfg.app(&cfg.build_marker))? && ctx.executes() {
        return Ok(StepOutcome::ok(format!(
            "build artifacts {seen}: {} is there, no rebuild",
            cfg.build_marker
        )));
    }
    let cmd = cfg.cmd(&cfg.build_cmd).env("NODE_ENV", "production");
    let out = cmd.run()?;
    let o = cmd_ok(ctx, &cmd, &out, "rebuilt");
    Ok(StepOutcome {
        message: format!(
            "build artifacts {seen}; {} missing: {}",
            cfg.build_marker, o.message
        ),
        ..o
    })
}
