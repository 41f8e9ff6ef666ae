//! The rollback, in the runbook's order: the pre-rollback snapshot,
//! isolation, maintenance mode, the file system and configuration
//! rollback, the ordered restart with a health gate after each service,
//! validation, the record; then the plans of both levels built from them.

use std::collections::BTreeMap;

use rewind_sdk::prelude::*;
use rewind_sdk::storage::EntryKind;
use serde::{Deserialize, Serialize};

use crate::COMPONENTS;
use crate::config::*;
use crate::measure::*;

/// A `*.backup` file and the file it restores, both absolute.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Restored {
    pub(crate) backup: String,
    pub(crate) target: String,
    pub(crate) bytes: u64,
    /// FNV-1a of the backup's contents, to check the restored file later.
    pub(crate) fnv: String,
}

pub(crate) fn fnv64(b: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Every `*.backup` file under the root (recursively), sorted. Paths are
/// the host's (canonical, absolute).
pub(crate) fn find_backups(cfg: &Config) -> Result<Vec<String>> {
    if !storage::exists(&cfg.raw.root)? {
        bail!("the AIVillage root {} does not exist", cfg.raw.root);
    }
    Ok(storage::list_dir(&cfg.raw.root, true)
        .context(format!("listing {}", cfg.raw.root))?
        .into_iter()
        .filter(|e| e.kind == EntryKind::File && e.path.ends_with(".backup"))
        .map(|e| e.path)
        .collect())
}

/// The `*.backup` files this incident restores, with what each held:
/// listed once, before the full rollback moved any of them in place, and
/// pinned for the incident. `mv` consumes them, so a resumed or second run
/// that listed them again would see fewer (or another deployment's new
/// ones); with the list pinned it knows which are in place already (the
/// target holds the backup's contents) and restores the rest.
pub(crate) fn pinned_backups(ctx: &Context, cfg: &Config) -> Result<Vec<Restored>> {
    let text = ctx.pin("backups", || {
        let mut v = Vec::new();
        for b in find_backups(cfg)? {
            let bytes = storage::read_file(&b)?;
            v.push(Restored {
                target: b.trim_end_matches(".backup").to_string(),
                backup: b,
                bytes: bytes.len() as u64,
                fnv: fnv64(&bytes),
            });
        }
        Ok(serde_json::to_string(&v)?)
    })?;
    serde_json::from_str(&text).context("the pinned list of *.backup files")
}

/// The host's absolute path of the root (symlinks resolved), found from a
/// listing; `None` when the root is empty.
pub(crate) fn canonical_root(cfg: &Config) -> Result<Option<String>> {
    let top = storage::list_dir(&cfg.raw.root, false)?;
    Ok(top
        .first()
        .and_then(|e| e.path.rsplit_once('/').map(|(dir, _)| dir.to_string())))
}

/// `path` relative to the root, for messages and records.
pub(crate) fn rel(canon: &Option<String>, cfg: &Config, path: &str) -> String {
    for root in [canon.as_deref(), Some(cfg.raw.root.as_str())]
        .into_iter()
        .flatten()
    {
        if let Some(r) = path.strip_prefix(&format!("{root}/")) {
            return r.to_string();
        }
    }
    path.to_string()
}

pub(crate) fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// Keep the outermost of overlapping paths (snapshots refuse overlaps).
pub(crate) fn outermost(mut paths: Vec<String>) -> Vec<String> {
    paths.sort();
    paths.dedup();
    let mut out: Vec<String> = Vec::new();
    for p in paths {
        if !out.iter().any(|o| p.starts_with(&format!("{o}/"))) {
            out.push(p);
        }
    }
    out
}

// ------------------------------------------------------------ kv state

pub(crate) fn failed_key(ctx: &Context) -> String {
    ctx.run_key(&format!("isolate-l{}", ctx.level))
}

/// The components this level acts on: decided in `plan`, read back by the
/// steps (each call is a fresh instance); measured again when missing.
pub(crate) fn planned_failed(ctx: &Context, cfg: &Config) -> Result<Vec<String>> {
    if let Some(v) = storage::get_json::<Vec<String>>(&failed_key(ctx))? {
        return Ok(v);
    }
    let (_, d) = assess_now(cfg)?;
    Ok(d.to_isolate())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Event {
    pub(crate) step: String,
    pub(crate) ok: bool,
    pub(crate) message: String,
    pub(crate) at_ms: u64,
}

pub(crate) fn push_event(ctx: &Context, step: &str, o: &StepOutcome) -> Result<()> {
    let key = ctx.run_key("timeline");
    let mut t: Vec<Event> = storage::get_json(&key)?.unwrap_or_default();
    t.push(Event {
        step: step.to_string(),
        ok: o.ok,
        message: o.message.clone(),
        at_ms: now_ms(),
    });
    storage::set_json(&key, &t)?;
    Ok(())
}

// ------------------------------------------------------------- commands

/// Whether the status command says the component is running (`None` in dry
/// runs, where nothing ran).
pub(crate) fn is_running(cfg: &Config, name: &str) -> Result<Option<bool>> {
    let Some(cmd) = cfg.cmd(&cfg.raw.status_command, name) else {
        return Ok(None);
    };
    let out = cmd.run()?;
    if out.simulated {
        return Ok(None);
    }
    Ok(Some(out.exit_code == Some(0)))
}

/// Stop, start, status, health gate. `Err(why)` when it did not come back.
pub(crate) fn restart(
    ctx: &Context,
    cfg: &Config,
    c: &Component,
) -> Result<std::result::Result<(String, Vec<Finding>), String>> {
    let mut said = Vec::new();
    match is_running(cfg, c.name)? {
        Some(false) => said.push(format!("{} is not running", c.name)),
        running => {
            let stop = cfg
                .cmd(&cfg.raw.stop_command, c.name)
                .ok_or("no stop command")?;
            match stop.run_ok(&format!("stopping {}", c.name))? {
                Ok(m) if running.is_none() => said.push(m),
                Ok(_) => said.push(format!("stopped {}", c.name)),
                Err(e) => return Ok(Err(e)),
            }
        }
    }
    let start = cfg
        .cmd(&cfg.raw.start_command, c.name)
        .ok_or("no start command")?;
    match start.run_ok(&format!("starting {}", c.name))? {
        Ok(m) => said.push(m),
        Err(e) => return Ok(Err(e)),
    }
    if !ctx.executes() {
        said.push(format!(
            "would check `{}` and wait for GET {} (up to {})",
            cfg.cmd(&cfg.raw.status_command, c.name)
                .map(|c| c.display())
                .unwrap_or_default(),
            c.health_url,
            fmt_ms(cfg.raw.health_timeout_ms)
        ));
        return Ok(Ok((said.join("; "), Vec::new())));
    }
    if let Some(status) = cfg.cmd(&cfg.raw.status_command, c.name) {
        match status.run_ok(&format!("{} status after start", c.name))? {
            Ok(_) => said.push("status active".into()),
            Err(e) => return Ok(Err(e)),
        }
    }
    let w = cfg.health(c).wait(
        WaitPolicy::every(cfg.raw.health_interval_ms)
            .timeout_ms(cfg.raw.health_timeout_ms)
            .successes(2),
    )?;
    let findings = vec![
        Finding::status(
            format!("{}: GET {}", c.name, c.health_url),
            w.last.status,
            200,
            399,
        ),
        Finding::at_most(
            format!("{}: time to healthy", c.name),
            w.elapsed_ms as f64,
            cfg.raw.health_timeout_ms as f64,
            "ms",
        ),
    ];
    if !w.healthy {
        let last = match w.last.status {
            Some(s) => format!("{s} {}", one_line(&w.last.body, 120)),
            None => w.last.detail.clone(),
        };
        return Ok(Err(format!(
            "{} is not healthy after {} probes in {} (last: GET {} -> {last})",
            c.name,
            w.attempts,
            fmt_ms(w.elapsed_ms),
            c.health_url
        )));
    }
    said.push(format!(
        "healthy after {} probes in {}",
        w.attempts,
        fmt_ms(w.elapsed_ms)
    ));
    Ok(Ok((said.join("; "), findings)))
}

// ---------------------------------------------------------------- steps

pub(crate) fn step_snapshot(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let mut paths = Vec::new();
    let mut notes = Vec::new();
    if ctx.level >= 2 {
        let backups = pinned_backups(ctx, cfg)?;
        notes.push(format!(
            "{} *.backup files to restore (pinned for the incident)",
            backups.len()
        ));
        let config_dir = cfg.path("config");
        if storage::exists(&config_dir)? {
            paths.push(config_dir);
        }
        let canon = canonical_root(cfg)?;
        for b in &backups {
            let target = cfg.path(&rel(&canon, cfg, &b.target));
            if storage::exists(&target)? {
                paths.push(target);
            }
        }
        if backups.is_empty() && !cfg.raw.git_fallback_ref.is_empty() {
            // What the git fallback will overwrite.
            for f in cfg.git_fallback_files() {
                let p = cfg.path(&f);
                if storage::exists(&p)? {
                    paths.push(p);
                }
            }
        }
        // The unit files restore-config will overwrite in the system's unit
        // directory (outside the root): `rewind restore` of this snapshot
        // must put them back too.
        if !cfg.raw.systemd_unit_dir.is_empty() {
            let units = units_to_install(cfg, &backups, &canon, false)?;
            let mut installed = Vec::new();
            for base in units.keys() {
                let p = format!("{}/{base}", cfg.raw.systemd_unit_dir.trim_end_matches('/'));
                if storage::exists(&p)? {
                    installed.push(p);
                }
            }
            if !installed.is_empty() {
                notes.push(format!(
                    "with the unit files restore-config overwrites in {}",
                    cfg.raw.systemd_unit_dir
                ));
                paths.extend(installed);
            }
        }
        for c in &cfg.components {
            for r in &c.remove {
                let p = cfg.path(r);
                if storage::exists(&p)? {
                    paths.push(p);
                }
            }
        }
    } else {
        for name in planned_failed(ctx, cfg)? {
            let c = cfg.component(&name)?;
            for f in c.files.iter().chain(&c.remove) {
                let p = cfg.path(f);
                if storage::exists(&p)? {
                    paths.push(p);
                }
            }
        }
    }
    let paths = outermost(paths);
    if paths.is_empty() {
        notes.push("nothing the rollback overwrites exists: no snapshot needed".into());
        return Ok(StepOutcome::ok(notes.join("; ")));
    }
    let label = format!("aivillage-pre-rollback-{}", ctx.run_id);
    let snap = storage::snapshot(&label, &paths)?;
    storage::set(&ctx.run_key("snapshot"), &snap.id)?;
    notes.insert(
        0,
        format!(
            "{} {} ({} files, {} bytes) of {}",
            ctx.would("snapshot", "would snapshot"),
            snap.id,
            snap.files,
            snap.bytes,
            paths.join(", ")
        ),
    );
    Ok(StepOutcome::ok(notes.join("; ")))
}

// Phase 1: component isolation, maintenance mode.

pub(crate) fn step_isolate(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let failed = planned_failed(ctx, cfg)?;
    if failed.is_empty() {
        return Ok(StepOutcome::ok("no failed component: nothing to isolate"));
    }
    let mut said = Vec::new();
    for name in &failed {
        let stop = cfg
            .cmd(&cfg.raw.stop_command, name)
            .ok_or("no stop command")?;
        match stop.run_ok(&format!("stopping {name}"))? {
            Ok(m) => said.push(m),
            Err(e) => return Ok(StepOutcome::failed(e)),
        }
        // "Verify isolation successful": the status must say stopped.
        match is_running(cfg, name)? {
            Some(true) => {
                return Ok(StepOutcome::failed(format!(
                    "{name} is still running after `{}`",
                    stop.display()
                )));
            }
            Some(false) => said.push(format!("{name} is stopped")),
            None => {}
        }
    }
    let kept: Vec<String> = COMPONENTS
        .iter()
        .filter(|c| !failed.iter().any(|f| f == *c))
        .map(|c| c.to_string())
        .collect();
    said.push(format!("left running: {}", list(&kept)));
    Ok(StepOutcome::ok(format!(
        "{} {}: {}",
        ctx.would("isolated", "would isolate"),
        failed.join(", "),
        said.join("; ")
    )))
}

pub(crate) fn step_maintenance_on(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let mut said = Vec::new();
    if !cfg.raw.maintenance_page.is_empty() {
        storage::write_string(
            &cfg.raw.maintenance_page,
            &format!("{}\n", cfg.raw.maintenance_text),
        )?;
        said.push(format!(
            "{} {:?} to {}",
            ctx.would("wrote", "would write"),
            cfg.raw.maintenance_text,
            cfg.raw.maintenance_page
        ));
    }
    if let Some(reload) = cfg.cmd(&cfg.raw.reload_command, "proxy") {
        match reload.run_ok("routing traffic to the maintenance page")? {
            Ok(m) => said.push(m),
            Err(e) => return Ok(StepOutcome::failed(e)),
        }
    }
    Ok(StepOutcome::ok(said.join("; ")))
}

// Phase 2: file system rollback.

/// `mv` each pinned `*.backup` in place. One moved already (its target
/// holds the backup's contents) is left as it is, so the step can run again
/// after it was cut short; a `*.backup` that appeared after the incident
/// began is not this incident's and is left alone.
pub(crate) fn step_restore_backups(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let pinned = pinned_backups(ctx, cfg)?;
    let canon = canonical_root(cfg)?;
    let mut moved = Vec::new();
    let mut already = Vec::new();
    let mut changed = Vec::new();
    for r in &pinned {
        let name = rel(&canon, cfg, &r.target);
        if storage::exists(&r.backup)? {
            // mv "$1" "${1%.backup}"
            storage::rename(&r.backup, &r.target)?;
            moved.push(name);
        } else if storage::exists(&r.target)? && fnv64(&storage::read_file(&r.target)?) == r.fnv {
            already.push(name);
        } else {
            // Moved in place by an earlier run and changed since (a person
            // fixing it by hand): there is nothing left to restore it from,
            // and what they did is theirs to keep.
            changed.push(name);
        }
    }
    if pinned.is_empty() {
        return restore_from_git(ctx, cfg);
    }
    storage::set_json(&ctx.run_key("restored"), &pinned)?;
    if !ctx.executes() {
        return Ok(StepOutcome::ok(format!(
            "would move {} *.backup files back in place ({}); then 0 would remain",
            moved.len(),
            list(&moved)
        )));
    }
    let (remaining, newer): (Vec<String>, Vec<String>) = find_backups(cfg)?
        .into_iter()
        .partition(|b| pinned.iter().any(|r| r.backup == *b));
    let finding = Finding::new(
        "*.backup files remaining under the root",
        remaining.len(),
        "= 0",
        !remaining.is_empty(),
    );
    if !remaining.is_empty() {
        let left: Vec<String> = remaining.iter().map(|p| rel(&canon, cfg, p)).collect();
        return Ok(StepOutcome::failed(format!(
            "{} *.backup files remain after the restore: {}",
            remaining.len(),
            list(&left)
        ))
        .with_findings(vec![finding]));
    }
    let mut msg = format!(
        "restored {} files from *.backup ({}); 0 *.backup files remain",
        moved.len(),
        list(&moved)
    );
    if !already.is_empty() {
        msg.push_str(&format!(
            "; in place already (moved by an earlier try): {}",
            list(&already)
        ));
    }
    if !changed.is_empty() {
        msg.push_str(&format!(
            "; restored by an earlier try and changed since, left as they are: {}",
            list(&changed)
        ));
    }
    if !newer.is_empty() {
        let n: Vec<String> = newer.iter().map(|p| rel(&canon, cfg, p)).collect();
        msg.push_str(&format!(
            "; left alone, not this incident's (they appeared after it began): {}",
            list(&n)
        ));
    }
    Ok(StepOutcome::ok(msg).with_findings(vec![finding]))
}

/// No `*.backup` files: the runbook's "Backup Files Missing" fix, `git
/// checkout HEAD~1 -- <file>` for each component's files, then "continue
/// with service restart". Without it (not a git checkout, git failing,
/// `git_fallback_ref = ""`, or a commit that holds the same files) nothing
/// is rolled back, and restarting on the code there is would report a
/// rollback that did not happen: the step fails and says what to do.
pub(crate) fn restore_from_git(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let none = format!("no *.backup files under {}", cfg.raw.root);
    let reff = cfg.raw.git_fallback_ref.trim();
    let by_hand = "restore the previous release's files by hand (the runbook's \"Backup Files Missing\": `git checkout HEAD~1 -- <file>`), then restart the components (or run rewind again)";
    let finding =
        |n: usize| Finding::new("files restored (from *.backup or git)", n, ">= 1", n == 0);
    if reff.is_empty() {
        return Ok(StepOutcome::failed(format!(
            "nothing was restored: {none}, and the git fallback is off (git_fallback_ref = \"\"); {by_hand}"
        ))
        .with_findings(vec![finding(0)]));
    }
    let files = cfg.git_fallback_files();
    let shown = format!("git checkout {reff} -- <file>");
    if !ctx.executes() {
        return Ok(StepOutcome::ok(format!(
            "{none}: would restore {} with `{shown}` (the runbook's \"Backup Files Missing\"), then restart",
            list(&files)
        )));
    }
    let git = |args: &[&str]| {
        Cmd::new("git")
            .args(args.iter().copied())
            .cwd(&cfg.raw.root)
            .timeout_ms(cfg.raw.command_timeout_ms)
    };
    // Which files differ from the commit, decided before any checkout and
    // pinned for the incident: a later run (after this one restored them
    // and stopped further on) finds them at the commit already, and must
    // know that they were this incident's, not "nothing to restore".
    let decided = ctx.pin("git_fallback", || {
        let mut differ = Vec::new();
        let mut errors = Vec::new();
        for f in &files {
            // `git diff --quiet REF -- f`: 0 same, 1 differs.
            let out = git(&["diff", "--quiet", reff, "--", f.as_str()]).run()?;
            match out.exit_code {
                Some(0) => {}
                Some(1) => differ.push(f.clone()),
                c => errors.push(format!(
                    "`git diff --quiet {reff} -- {f}` exited {}: {}",
                    c.map_or("by a signal".to_string(), |c| c.to_string()),
                    one_line(&out.stderr, 200)
                )),
            }
        }
        if differ.is_empty() {
            let why = if errors.is_empty() {
                format!(
                    "{reff} holds the same {} as the working tree",
                    list(&files)
                )
            } else {
                format!("git failed: {}", errors.join("; "))
            };
            bail!(
                "nothing was restored: {none}, and the runbook's fallback `{shown}` has nothing to restore ({why}); {by_hand}"
            );
        }
        Ok(serde_json::to_string(&differ)?)
    });
    let differ: Vec<String> = match decided {
        Ok(t) => serde_json::from_str(&t).context("the pinned git fallback files")?,
        Err(e) => return Ok(StepOutcome::failed(e.into_message()).with_findings(vec![finding(0)])),
    };
    let mut restored = Vec::new();
    let mut now_restored = Vec::new();
    let mut already = Vec::new();
    let mut errors = Vec::new();
    for f in &differ {
        let target = cfg.path(f);
        let before = if storage::exists(&target)? {
            Some(fnv64(&storage::read_file(&target)?))
        } else {
            None
        };
        let cmd = git(&["checkout", reff, "--", f.as_str()]);
        match cmd.run_ok(&format!("restoring {f} from git {reff}"))? {
            Ok(_) => {
                let bytes = storage::read_file(&target)?;
                let fnv = fnv64(&bytes);
                if before.as_deref() == Some(fnv.as_str()) {
                    already.push(f.clone());
                } else {
                    now_restored.push(f.clone());
                }
                restored.push(Restored {
                    backup: format!("git {reff}:{f}"),
                    target,
                    bytes: bytes.len() as u64,
                    fnv,
                });
            }
            Err(e) => errors.push(e),
        }
    }
    storage::set_json(&ctx.run_key("restored"), &restored)?;
    if restored.is_empty() {
        return Ok(StepOutcome::failed(format!(
            "nothing was restored: {none}, and the runbook's fallback `{shown}` failed: {}; {by_hand}",
            errors.join("; ")
        ))
        .with_findings(vec![finding(0)]));
    }
    let mut msg = format!(
        "{none}: restored {} files with `{shown}` (the runbook's \"Backup Files Missing\"): {}",
        now_restored.len(),
        list(&now_restored)
    );
    if !already.is_empty() {
        msg.push_str(&format!(
            "; in place already (restored by an earlier run of this incident): {}",
            list(&already)
        ));
    }
    if !errors.is_empty() {
        msg.push_str(&format!("; not restored: {}", errors.join("; ")));
    }
    Ok(StepOutcome::ok(msg).with_findings(vec![finding(restored.len())]))
}

pub(crate) fn remove_files(ctx: &Context, cfg: &Config, names: &[String]) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in names {
        let c = cfg.component(name)?;
        for r in &c.remove {
            let p = cfg.path(r);
            if storage::exists(&p)? {
                // rm -rf
                storage::remove(&p)?;
                removed.push(r.clone());
            }
        }
    }
    storage::set_json(&ctx.run_key("removed"), &removed)?;
    Ok(removed)
}

pub(crate) fn step_remove_added(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let all: Vec<String> = COMPONENTS.iter().map(|s| s.to_string()).collect();
    let removed = remove_files(ctx, cfg, &all)?;
    Ok(StepOutcome::ok(if removed.is_empty() {
        "none of the files the deployment adds is there: nothing to remove".to_string()
    } else {
        format!(
            "{} {}",
            ctx.would("removed", "would remove"),
            removed.join(", ")
        )
    }))
}

pub(crate) fn step_restore_components(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let failed = planned_failed(ctx, cfg)?;
    let mut said = Vec::new();
    let mut restored = Vec::new();
    for name in &failed {
        let c = cfg.component(name)?;
        for f in &c.files {
            let target = cfg.path(f);
            let backup = format!("{target}.backup");
            if storage::exists(&backup)? {
                // cp core/p2p/mesh_protocol.py.backup core/p2p/mesh_protocol.py
                let bytes = storage::read_file(&backup)?;
                storage::copy(&backup, &target)?;
                restored.push(Restored {
                    backup,
                    target,
                    bytes: bytes.len() as u64,
                    fnv: fnv64(&bytes),
                });
                said.push(format!(
                    "{} {f} from {f}.backup",
                    ctx.would("restored", "would restore")
                ));
            } else {
                said.push(format!("no {f}.backup: {f} stays as it is"));
            }
        }
    }
    storage::set_json(&ctx.run_key("restored"), &restored)?;
    let removed = remove_files(ctx, cfg, &failed)?;
    if !removed.is_empty() {
        said.push(format!(
            "{} {}",
            ctx.would("removed", "would remove"),
            removed.join(", ")
        ));
    }
    if said.is_empty() {
        said.push("no failed component: nothing to restore".into());
    }
    Ok(StepOutcome::ok(said.join("; ")))
}

// Phase 3: configuration rollback.

pub(crate) fn step_restore_config(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let restored: Vec<Restored> = storage::get_json(&ctx.run_key("restored"))?.unwrap_or_default();
    let canon = canonical_root(cfg)?;
    let mut said = Vec::new();
    let mut findings = Vec::new();
    for f in &cfg.raw.config_files {
        let target = cfg.path(f);
        let backup = format!("{target}.backup");
        // Under the root, restore-backups has already moved the .backup in
        // place (in a dry run: would have); elsewhere it is still there.
        let moved = restored.iter().find(|r| rel(&canon, cfg, &r.target) == *f);
        if moved.is_none() && storage::exists(&backup)? {
            // cp config/.env.backup config/.env
            storage::copy(&backup, &target)?;
            said.push(format!(
                "{} {f} from {f}.backup",
                ctx.would("copied", "would copy")
            ));
            continue;
        }
        match moved {
            Some(r) if ctx.executes() => {
                let now = fnv64(&storage::read_file(&target)?);
                let ok = now == r.fnv;
                findings.push(Finding::check(
                    format!("{f} holds the contents of {f}.backup"),
                    ok,
                    format!("fnv {now}"),
                    format!("fnv {}", r.fnv),
                ));
                if !ok {
                    return Ok(StepOutcome::failed(format!(
                        "{f} differs from the {f}.backup restored a step ago"
                    ))
                    .with_findings(findings));
                }
                said.push(format!(
                    "{f} was restored from {f}.backup by restore-backups (contents match)"
                ));
            }
            Some(_) => said.push(format!(
                "{f} would be restored from {f}.backup by restore-backups"
            )),
            None => said.push(format!("no {f}.backup: {f} stays as it is")),
        }
    }
    if !cfg.raw.systemd_unit_dir.is_empty() {
        let units = units_to_install(cfg, &restored, &canon, ctx.executes())?;
        let mut copied = Vec::new();
        for (base, from) in units {
            // cp config/systemd/*.backup /etc/systemd/system/
            storage::copy(&from, &format!("{}/{base}", cfg.raw.systemd_unit_dir))?;
            copied.push(base);
        }
        if copied.is_empty() {
            said.push(format!(
                "no unit file under {} came from a backup: {} left as it is",
                cfg.raw.systemd_source, cfg.raw.systemd_unit_dir
            ));
        } else {
            said.push(format!(
                "{} {} to {}",
                ctx.would("copied", "would copy"),
                copied.join(", "),
                cfg.raw.systemd_unit_dir
            ));
            if let Some(reload) = cfg.cmd(&cfg.raw.daemon_reload_command, "systemd") {
                match reload.run_ok("reloading the service manager")? {
                    Ok(m) => said.push(m),
                    Err(e) => return Ok(StepOutcome::failed(e).with_findings(findings)),
                }
            }
        }
    }
    Ok(StepOutcome::ok(said.join("; ")).with_findings(findings))
}

/// The unit files `restore-config` installs into `systemd_unit_dir`: unit
/// name -> the file to copy. First the units under `systemd_source` that
/// restore-backups put back (`restored`), then any `*.backup` still in the
/// source directory. `moved`: the restored targets hold the backups'
/// contents already (else, in a dry run or before restore-backups, name
/// the backup).
pub(crate) fn units_to_install(
    cfg: &Config,
    restored: &[Restored],
    canon: &Option<String>,
    moved: bool,
) -> Result<BTreeMap<String, String>> {
    let src = cfg.path(&cfg.raw.systemd_source);
    let prefix = format!("{}/", cfg.raw.systemd_source.trim_end_matches('/'));
    let mut units: BTreeMap<String, String> = BTreeMap::new();
    for r in restored {
        let t = rel(canon, cfg, &r.target);
        if t.starts_with(&prefix) {
            let base = t.rsplit('/').next().unwrap_or(&t).to_string();
            let from = if moved { &r.target } else { &r.backup };
            units.insert(base, from.clone());
        }
    }
    if storage::exists(&src)? {
        for e in storage::list_dir(&src, false)? {
            if e.kind == EntryKind::File && e.path.ends_with(".backup") {
                let base = e
                    .path
                    .rsplit('/')
                    .next()
                    .unwrap_or(&e.path)
                    .trim_end_matches(".backup")
                    .to_string();
                units.entry(base).or_insert(e.path);
            }
        }
    }
    Ok(units)
}

pub(crate) fn step_restore_imports(cfg: &Config) -> Result<StepOutcome> {
    let mut said = Vec::new();
    for (argv, what) in [
        (&cfg.raw.restore_imports_command, "restoring import paths"),
        (
            &cfg.raw.import_check_command,
            "checking the gateway's imports",
        ),
    ] {
        if let Some(cmd) = cfg.cmd(argv, "imports") {
            match cmd.run_ok(what)? {
                Ok(m) => said.push(m),
                Err(e) => return Ok(StepOutcome::failed(e)),
            }
        }
    }
    Ok(StepOutcome::ok(said.join("; ")))
}

// Phase 4: service restoration, validation, back from maintenance.

pub(crate) fn step_restart(ctx: &Context, cfg: &Config, name: &str) -> Result<StepOutcome> {
    let c = cfg.component(name)?;
    let order: Vec<String> = if ctx.level >= 2 {
        COMPONENTS.iter().map(|s| s.to_string()).collect()
    } else {
        planned_failed(ctx, cfg)?
    };
    let after: Vec<String> = order
        .iter()
        .skip_while(|n| *n != name)
        .skip(1)
        .cloned()
        .collect();
    match restart(ctx, cfg, c)? {
        Ok((msg, findings)) => Ok(StepOutcome::ok(msg).with_findings(findings)),
        Err(why) if ctx.level >= 2 => {
            storage::set(&ctx.run_key("stopped-at"), name)?;
            Ok(StepOutcome::failed(format!(
                "stopped at {name}: it did not come back ({why}); not started: {}",
                list(&after)
            ))
            .with_findings(vec![Finding::check(
                format!("{name} came back"),
                false,
                "no",
                "yes",
            )]))
        }
        // Isolation is the first try: the verification sees the component
        // still down and the host escalates to the full rollback.
        Err(why) => Ok(StepOutcome::ok(format!(
            "{name} did not come back after isolation ({why}); the verification will fail and escalate to the full rollback"
        ))
        .with_findings(vec![Finding::check(
            format!("{name} came back"),
            false,
            "no",
            "yes",
        )])),
    }
}

pub(crate) fn step_validate(cfg: &Config) -> Result<StepOutcome> {
    let mut said = Vec::new();
    for argv in &cfg.raw.validation_commands {
        if let Some(cmd) = cfg.cmd(argv, "validate") {
            match cmd.run_ok("validation")? {
                Ok(m) => said.push(m),
                Err(e) => return Ok(StepOutcome::failed(e)),
            }
        }
    }
    if said.is_empty() {
        said.push("no validation command configured".into());
    }
    Ok(StepOutcome::ok(said.join("; ")))
}

pub(crate) fn step_maintenance_off(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let mut said = Vec::new();
    if !cfg.raw.maintenance_page.is_empty() {
        if storage::exists(&cfg.raw.maintenance_page)? {
            storage::remove(&cfg.raw.maintenance_page)?;
            said.push(format!(
                "{} {}",
                ctx.would("removed", "would remove"),
                cfg.raw.maintenance_page
            ));
        } else if ctx.executes() {
            said.push(format!("{} was already gone", cfg.raw.maintenance_page));
        } else {
            said.push(format!(
                "would remove {} (written by maintenance-on)",
                cfg.raw.maintenance_page
            ));
        }
    }
    if let Some(reload) = cfg.cmd(&cfg.raw.reload_command, "proxy") {
        match reload.run_ok("routing traffic back to the services")? {
            Ok(m) => said.push(m),
            Err(e) => return Ok(StepOutcome::failed(e)),
        }
    }
    Ok(StepOutcome::ok(said.join("; ")))
}

#[derive(Debug, Serialize)]
pub(crate) struct Record<'a> {
    pub(crate) runbook: &'static str,
    pub(crate) run_id: &'a str,
    pub(crate) mode: &'static str,
    pub(crate) level: u8,
    pub(crate) level_name: &'static str,
    pub(crate) assessment: Option<serde_json::Value>,
    pub(crate) isolated: Vec<String>,
    pub(crate) restored: Vec<Restored>,
    pub(crate) removed: Vec<String>,
    pub(crate) snapshot: Option<String>,
    pub(crate) timeline: Vec<Event>,
    pub(crate) written_ms: u64,
}

pub(crate) fn step_record(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let record = Record {
        runbook: "AIVillage Emergency Rollback Procedures 1.0",
        run_id: &ctx.run_id,
        mode: ctx.mode.as_str(),
        level: ctx.level,
        level_name: level_name(ctx.level),
        assessment: storage::get_json(&ctx.run_key("assessment"))?,
        isolated: planned_failed(ctx, cfg)?,
        restored: storage::get_json(&ctx.run_key("restored"))?.unwrap_or_default(),
        removed: storage::get_json(&ctx.run_key("removed"))?.unwrap_or_default(),
        snapshot: storage::get(&ctx.run_key("snapshot"))?,
        timeline: storage::get_json(&ctx.run_key("timeline"))?.unwrap_or_default(),
        written_ms: now_ms(),
    };
    let dir = cfg.records_dir();
    let path = format!("{dir}/rollback-{}.json", ctx.run_id);
    let text = serde_json::to_string_pretty(&record).map_err(|e| e.to_string())?;
    storage::make_dir(&dir)?;
    storage::write_string(&path, &format!("{text}\n"))?;
    Ok(StepOutcome::ok(format!(
        "{} the rollback record ({} timeline entries) to {path}",
        ctx.would("wrote", "would write"),
        record.timeline.len()
    )))
}

// ----------------------------------------------------------------- plans

pub(crate) fn level_name(level: u8) -> &'static str {
    if level >= 2 {
        "full rollback"
    } else {
        "component isolation"
    }
}

pub(crate) fn cmd_text(cfg: &Config, argv: &[String], name: &str) -> String {
    cfg.cmd(argv, name)
        .map(|c| format!("`{}`", c.display()))
        .unwrap_or_else(|| "(no command configured)".into())
}

/// A command for each of `names`, e.g. "`systemctl stop aivillage-p2p`".
pub(crate) fn per_component(cfg: &Config, argv: &[String], names: &[String]) -> String {
    if names.is_empty() {
        return "nothing".into();
    }
    names
        .iter()
        .map(|n| cmd_text(cfg, argv, n))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn restart_step(cfg: &Config, c: &Component, level: u8, after: &[String]) -> Step {
    let stop_at = if level >= 2 {
        format!(
            "; if it does not come back the run stops here and {} are not started",
            list(after)
        )
    } else {
        "; if it does not come back the verification fails and escalates to the full rollback"
            .to_string()
    };
    Step::auto(
        format!("restart-{}", c.name),
        format!("Restart {}", c.name),
        format!(
            "If {} says it runs, {}; then {}, {} must exit 0, and GET {} must answer 200-399 twice in a row (every {}, up to {}){stop_at}",
            cmd_text(cfg, &cfg.raw.status_command, c.name),
            cmd_text(cfg, &cfg.raw.stop_command, c.name),
            cmd_text(cfg, &cfg.raw.start_command, c.name),
            cmd_text(cfg, &cfg.raw.status_command, c.name),
            c.health_url,
            fmt_ms(cfg.raw.health_interval_ms),
            fmt_ms(cfg.raw.health_timeout_ms),
        ),
    )
    // Stop (when running), start, health gate: run again it restarts
    // again, which is what one run does.
    .disruptive()
    .repeatable()
}

pub(crate) fn plan_level1(cfg: &Config, failed: &[String]) -> Result<Vec<Step>> {
    let mut files = Vec::new();
    for name in failed {
        let c = cfg.component(name)?;
        for f in &c.files {
            files.push(format!("{f}.backup -> {f}"));
        }
        for r in &c.remove {
            files.push(format!("remove {r}"));
        }
    }
    let kept: Vec<String> = COMPONENTS
        .iter()
        .filter(|c| !failed.iter().any(|f| f == *c))
        .map(|c| c.to_string())
        .collect();
    let mut steps = vec![
        Step::auto(
            "snapshot",
            "Back up the current state",
            format!(
                "Snapshot the files of {} that the isolation overwrites or removes, under {}",
                list(failed),
                cfg.raw.root
            ),
        )
        // Writes rewind's own snapshot; reads the system.
        .observe()
        .repeatable(),
        Step::auto(
            "isolate",
            format!("Isolate {}", list(failed)),
            format!(
                "Stop only the failed components ({}): {}; then {} must report each stopped (non-zero exit); {} keep running",
                list(failed),
                per_component(cfg, &cfg.raw.stop_command, failed),
                per_component(cfg, &cfg.raw.status_command, failed),
                list(&kept)
            ),
        )
        // Stopping a stopped component changes nothing; the status check
        // after it reads.
        .disruptive()
        .repeatable(),
        Step::auto(
            "restore-components",
            "Restore the failed components' files",
            format!(
                "In {}: cp each file from its .backup where one exists ({})",
                cfg.raw.root,
                list(&files)
            ),
        )
        // The snapshot step saved what this overwrites and removes;
        // copying again copies the same, removing what is gone is nothing.
        .reversible()
        .repeatable(),
    ];
    for (i, name) in failed.iter().enumerate() {
        let c = cfg.component(name)?;
        steps.push(restart_step(cfg, c, 1, &failed[i + 1..]));
    }
    steps.push(record_step(cfg));
    Ok(steps)
}

pub(crate) fn record_step(cfg: &Config) -> Step {
    Step::auto(
        "record",
        "Write the rollback record",
        format!(
            "Write {}/rollback-<run id>.json: the assessment, what was isolated, restored and removed, and the timeline of every step",
            cfg.records_dir()
        ),
    )
        // rewind's record of the run, not the service; written whole.
        .observe()
        .repeatable()
}

/// Level 2's worst step: `restore-imports` when the team's script runs (it
/// rewrites what no snapshot saved), else the restarts. `restore-config`
/// is reversible: the snapshot step saved the config files and the unit
/// files it overwrites in `systemd_unit_dir`.
pub(crate) fn level2_effect(cfg: &Config) -> Effect {
    if !cfg.raw.restore_imports_command.is_empty() {
        Effect::Destructive
    } else {
        Effect::Disruptive
    }
}

pub(crate) fn plan_level2(ctx: &Context, cfg: &Config, failed: &[String]) -> Result<Vec<Step>> {
    // Pinned here, before any step moved a *.backup in place.
    let backups = pinned_backups(ctx, cfg)?;
    let canon = canonical_root(cfg)?;
    let names: Vec<String> = backups
        .iter()
        .map(|b| rel(&canon, cfg, &b.backup))
        .collect();
    let mut steps = vec![
        Step::auto(
            "snapshot",
            "Back up the current state",
            format!(
                "Snapshot {}/config and every file a *.backup will overwrite or the rollback removes",
                cfg.raw.root
            ),
        )
        // Writes rewind's own snapshot; reads the system.
        .observe()
        .repeatable(),
        Step::auto(
            "isolate",
            format!("Isolate {}", list(failed)),
            format!(
                "Stop the failed components ({}): {}; then {} must report each stopped",
                list(failed),
                per_component(cfg, &cfg.raw.stop_command, failed),
                per_component(cfg, &cfg.raw.status_command, failed),
            ),
        )
        // Stopping a stopped component changes nothing; the status check
        // after it reads.
        .disruptive()
        .repeatable(),
    ];
    if !cfg.raw.maintenance_page.is_empty() || !cfg.raw.reload_command.is_empty() {
        steps.push(
            Step::auto(
                "maintenance-on",
                "Enable maintenance mode",
                format!(
                    "Write {:?} to {}, then {}",
                    cfg.raw.maintenance_text,
                    cfg.raw.maintenance_page,
                    cmd_text(cfg, &cfg.raw.reload_command, "proxy")
                ),
            )
            // Users get the maintenance page; writing it twice is once.
            .disruptive()
            .repeatable(),
        );
    }
    let removes: Vec<String> = cfg
        .components
        .iter()
        .flat_map(|c| c.remove.iter().cloned())
        .collect();
    let restore = if backups.is_empty() {
        Step::auto(
            "restore-backups",
            if cfg.raw.git_fallback_ref.is_empty() {
                "No *.backup files: nothing to restore".to_string()
            } else {
                format!(
                    "No *.backup files: restore from git {}",
                    cfg.raw.git_fallback_ref
                )
            },
            if cfg.raw.git_fallback_ref.is_empty() {
                format!(
                    "No *.backup file under {} and the git fallback is off: the step fails, nothing is restarted",
                    cfg.raw.root
                )
            } else {
                format!(
                    "No *.backup file under {}: in it, `git checkout {} -- <file>` for {} (the runbook's \"Backup Files Missing\"); fails when that restores nothing",
                    cfg.raw.root,
                    cfg.raw.git_fallback_ref,
                    list(&cfg.git_fallback_files())
                )
            },
        )
    } else {
        Step::auto(
            "restore-backups",
            format!("Restore {} *.backup files", backups.len()),
            format!(
                "Under {}: mv each *.backup to its name without .backup ({}); then count the *.backup files left: must be 0",
                cfg.raw.root,
                list(&names)
            ),
        )
    };
    steps.extend([
        restore
        // The targets are in the snapshot; the list is pinned, and a
        // backup moved in place already is recognised by its contents.
        .reversible()
        .repeatable(),
        Step::auto(
            "remove-added",
            "Remove files the deployment added",
            format!("rm -rf under {}: {}", cfg.raw.root, list(&removes)),
        )
        // Snapshotted first; what is gone already is skipped.
        .reversible()
        .repeatable(),
        Step::auto(
            "restore-config",
            "Restore the system configuration",
            format!(
                "{}: from its .backup (cp when the .backup is still there, else check it holds what the moved .backup held); {}",
                cfg.raw.config_files.join(", "),
                if cfg.raw.systemd_unit_dir.is_empty() {
                    "no unit directory (systemd_unit_dir = \"\"): unit files and the service manager's reload skipped".to_string()
                } else {
                    format!(
                        "copy unit files restored under {} to {} and run {}",
                        cfg.raw.systemd_source,
                        cfg.raw.systemd_unit_dir,
                        cmd_text(cfg, &cfg.raw.daemon_reload_command, "systemd")
                    )
                }
            ),
        )
        // The snapshot saved the config files and the unit files this
        // overwrites in the unit directory; copying again copies the same.
        .reversible()
        .repeatable(),
    ]);
    if !cfg.raw.restore_imports_command.is_empty() || !cfg.raw.import_check_command.is_empty() {
        steps.push(
            Step::auto(
                "restore-imports",
                "Restore import paths",
                format!(
                    "In {}: {}, then {} (both must exit 0)",
                    cfg.raw.root,
                    cmd_text(cfg, &cfg.raw.restore_imports_command, "imports"),
                    cmd_text(cfg, &cfg.raw.import_check_command, "imports")
                ),
            )
            // The team's script rewrites files under the root that the
            // snapshot may not cover; whether it can run twice is its
            // business, so a cut-short run goes to a person.
            .effect(Effect::Destructive),
        );
    }
    for (i, c) in cfg.components.iter().enumerate() {
        let after: Vec<String> = COMPONENTS[i + 1..].iter().map(|s| s.to_string()).collect();
        steps.push(restart_step(cfg, c, 2, &after));
    }
    if !cfg.raw.validation_commands.is_empty() {
        let cmds: Vec<String> = cfg
            .raw
            .validation_commands
            .iter()
            .map(|a| cmd_text(cfg, a, "validate"))
            .collect();
        steps.push(
            Step::auto(
                "validate",
                "Health check validation",
                format!(
                    "In {}: {} (each must exit 0)",
                    cfg.raw.root,
                    cmds.join(", ")
                ),
            )
            // The runbook's test scripts: they read.
            .observe()
            .repeatable(),
        );
    }
    if !cfg.raw.maintenance_page.is_empty() || !cfg.raw.reload_command.is_empty() {
        steps.push(
            Step::auto(
                "maintenance-off",
                "Leave maintenance mode",
                format!(
                    "Remove {}, then {}",
                    cfg.raw.maintenance_page,
                    cmd_text(cfg, &cfg.raw.reload_command, "proxy")
                ),
            )
            // Undoes maintenance-on; twice is once.
            .reversible()
            .repeatable(),
        );
    }
    steps.push(record_step(cfg));
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(fmt_ms(300_000), "5 min");
        assert_eq!(fmt_ms(1500), "1.5 s");
        assert_eq!(
            outermost(vec![
                "/a/config/.env".into(),
                "/a/config".into(),
                "/a/b".into()
            ]),
            vec!["/a/b".to_string(), "/a/config".to_string()]
        );
        assert_ne!(fnv64(b"a"), fnv64(b"b"));
    }
}
