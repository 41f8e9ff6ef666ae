//! The rollback procedures: each level's steps for the scenario the
//! assessment chose, in the runbook's order, and how each step is carried
//! out through host calls.

use rewind_sdk::prelude::*;

use crate::clock;
use crate::config::Config;
use crate::gitref::Repo;
use crate::measure::{self, Scenario};

pub const LEVEL_TARGETED: u8 = 1;
pub const LEVEL_PHASE0: u8 = 2;
pub const LEVEL_MANUAL: u8 = 3;

pub fn level_name(level: u8) -> &'static str {
    match level {
        LEVEL_TARGETED => "targeted recovery",
        LEVEL_PHASE0 => "phase 0 rollback",
        _ => "manual intervention",
    }
}

/// The scenario the assessment chose in this run (Scenario 1 when the
/// system was healthy and a level was forced with `--level`).
pub fn scenario(ctx: &Context) -> Result<Scenario> {
    Ok(storage::get(&ctx.run_key("scenario"))?
        .and_then(|s| Scenario::parse(&s))
        .unwrap_or(Scenario::Health))
}

/// This run's timestamp (`date +%Y%m%d_%H%M%S`), fixed by the first call
/// that needs it so that the plan and the steps name the same backups.
pub fn stamp(ctx: &Context) -> Result<String> {
    ctx.run_stamp(|| clock::stamp(clock::now_s()))
}

/// The pin key of the baseline commit.
pub const BASELINE_COMMIT: &str = "baseline_commit";

/// The commit `baseline_ref` names when the incident starts, pinned for
/// the incident: a branch that moves while the rollback runs (a push to
/// `refactor/phase-0-baseline`) must not send a resumed or second run to
/// another commit than the first went to. Read from `.git` (every mode),
/// or `git rev-parse` for what the files do not say; `None` when neither
/// can tell (a dry run of a ref only git resolves).
pub fn baseline_commit(ctx: &Context, cfg: &Config) -> Result<Option<String>> {
    if let Some(p) = ctx.pinned(BASELINE_COMMIT)? {
        return Ok(Some(p));
    }
    let sha = match Repo::new(&cfg.root).resolve(&cfg.baseline_ref) {
        Some(s) => s,
        None => {
            let spec = format!("{}^{{commit}}", cfg.baseline_ref);
            let o = git(cfg, &["rev-parse", "--verify", "--quiet", &spec]).run()?;
            if o.simulated || !o.success() {
                return Ok(None);
            }
            o.stdout.trim().to_string()
        }
    };
    Ok(Some(ctx.pin(BASELINE_COMMIT, || Ok(sha))?))
}

/// The stamp of the backups taken before this incident's rollback first
/// touched anything (the first run's), which the manual level points at;
/// later runs of the incident back up what they find under their own.
fn pre_rollback_stamp(ctx: &Context) -> Result<String> {
    ctx.pin("pre_rollback_stamp", || stamp(ctx))
}

struct Names {
    dump: String,
    config_copy: String,
    snapshot: String,
    branch: String,
    tag: String,
}

fn names(ctx: &Context, cfg: &Config) -> Result<Names> {
    names_at(cfg, &stamp(ctx)?)
}

fn names_at(cfg: &Config, ts: &str) -> Result<Names> {
    Ok(Names {
        dump: format!("{}/pre-rollback-{ts}.sql", cfg.backups()),
        config_copy: format!("{}/config-{ts}", cfg.backups()),
        snapshot: format!("aidis-pre-rollback-{ts}"),
        branch: format!("{}{ts}", cfg.branch_prefix),
        tag: format!("{}{ts}", cfg.tag_prefix),
    })
}

fn shown(cmd: Option<Cmd>) -> String {
    cmd.map_or_else(
        || "(turned off)".to_string(),
        |c| format!("`{}`", c.display()),
    )
}

fn spawn_log(cfg: &Config, name: &str) -> String {
    format!("{}/rollback-{name}.log", cfg.logs())
}

fn patterns_list(p: &[String]) -> String {
    p.iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The patterns stopped before the revert: the runbook's `pkill -f`
/// list, and the Scenario 4 list too when processes ran away.
fn phase0_patterns(cfg: &Config, sc: Scenario) -> Vec<String> {
    let mut p = cfg.stop_patterns.clone();
    if sc == Scenario::Processes {
        for c in &cfg.cleanup_patterns {
            if !p.contains(c) {
                p.push(c.clone());
            }
        }
    }
    p.retain(|s| !s.trim().is_empty());
    p
}

fn wait_detail(cfg: &Config, what: &str) -> String {
    format!(
        "Poll {what} every {} ms until it answers 200-399, for at most {} ms in all (the runbook's `sleep 30`, as a wait that ends as soon as AIDIS is up); not being healthy is left to the verification, which escalates",
        cfg.poll_interval_ms, cfg.startup_timeout_ms
    )
}

fn all_endpoints(cfg: &Config) -> String {
    let mut urls: Vec<String> = cfg.endpoints().into_iter().map(|e| e.url).collect();
    urls.push(format!("GET {} (the bridge)", cfg.ping_url()));
    urls.join(", ")
}

fn validate_step(cfg: &Config, level: u8) -> Step {
    let mut d = format!(
        "The validation checklist: GET {} answer 200-399 (all probes within {} ms in all); psql SELECT current_database() on {}:{}/{}; POST {} within {} ms; at most {} processes matching {}; their memory <= {} MB; the machine's available memory >= {} MB",
        cfg.endpoints()
            .iter()
            .map(|e| e.url.clone())
            .collect::<Vec<_>>()
            .join(", "),
        cfg.probe_budget_ms,
        cfg.db_host,
        cfg.db_port,
        cfg.db_name,
        cfg.ping_url(),
        cfg.max_latency_ms,
        cfg.max_processes_after,
        measure::patterns_shown(&cfg.process_patterns),
        cfg.max_memory_mb,
        cfg.min_available_mb,
    );
    if level >= LEVEL_PHASE0 {
        d.push_str(&format!("; git HEAD on {}", cfg.baseline_ref));
    }
    if !cfg.count_tables.is_empty() {
        d.push_str(&format!(
            "; data recovery: SELECT COUNT(*) of {} (no fewer rows than before the rollback, when counted)",
            cfg.count_tables.join(", ")
        ));
    }
    if level == LEVEL_PHASE0 {
        d.push_str(&format!(
            "; diff -r {} against the pre-rollback copy (files git does not track unchanged)",
            cfg.config_path()
        ));
    }
    if let Some(c) = cfg.cmd(&cfg.integration_command) {
        d.push_str(&format!("; `{}` exits 0", c.display()));
    }
    Step::auto("validate", "Validate the rollback", d)
        .observe()
        .repeatable()
}

fn record_step(cfg: &Config) -> Step {
    Step::auto(
        "record",
        "Document the rollback",
        format!(
            "Append \"<date>: Phase 4 service rollback completed\" (or what did not validate) to {}; capture `{}` into {}/rollback-processes-<epoch>.log",
            cfg.rollback_log(),
            cfg.cmd(&cfg.ps_command)
                .map_or_else(|| "(turned off)".into(), |c| c.display()),
            cfg.logs()
        ),
    )
    // The team's own rollback log, not the service. One line per run and
    // level: a resumed run finds its line and does not add another.
    .observe()
    .repeatable()
}

fn start_dev_step(cfg: &Config, why: &str) -> Option<Step> {
    let cmd = cfg.cmd(&cfg.dev_command)?;
    Some(
        Step::auto(
            "start-dev",
            "Start the command services",
            format!(
                "Start `{}` in the background in {} ({why}), output appended to {}",
                cmd.display(),
                cfg.root,
                spawn_log(cfg, "dev")
            ),
        )
        // Spawns `npm run dev` in the background; a second spawn would be a
        // second copy, and whether the first one got going is not known.
        .disruptive(),
    )
}

fn wait_step(cfg: &Config) -> Step {
    Step::auto(
        "wait-healthy",
        "Wait until AIDIS is healthy",
        wait_detail(cfg, &all_endpoints(cfg)),
    )
    .observe()
    .repeatable()
}

/// The ordered steps of `level` for scenario `sc`.
pub fn plan(ctx: &Context, cfg: &Config, sc: Scenario, level: u8) -> Result<Vec<Step>> {
    let mut s: Vec<Step> = Vec::new();
    let stop = Step::auto(
        "stop-services",
        "Stop the AIDIS services",
        format!("Run {} in {}", shown(cfg.cmd(&cfg.stop_command)), cfg.root),
    )
    // The stop script stopping stopped services changes nothing.
    .disruptive()
    .repeatable();
    let start = Step::auto(
        "start-services",
        "Start the AIDIS services",
        format!("Run {} in {}", shown(cfg.cmd(&cfg.start_command)), cfg.root),
    )
    // Not repeatable: whether the start script starts a second copy
    // when cut short after it started the first is the script's business.
    .disruptive();
    match level {
        LEVEL_TARGETED => {
            match sc {
                Scenario::Health => {
                    // The quick reference's "Service Recovery (60 seconds)".
                    s.push(stop);
                    s.push(start);
                    s.extend(start_dev_step(cfg, "`npm run dev`: start command services"));
                    s.push(wait_step(cfg));
                }
                Scenario::Performance => {
                    s.push(Step::auto(
                    "triage",
                    "Performance triage",
                    format!(
                        "Record the top 10 of {} and whether ports {}, {} and {} listen on {}",
                        shown(cfg.cmd(&cfg.ps_command)),
                        cfg.frontend_port,
                        cfg.backend_port,
                        cfg.mcp_port,
                        cfg.host
                    ),
                ).observe().repeatable());
                    s.push(
                        Step::auto(
                            "graceful-shutdown",
                            "Gracefully shut the backend down",
                            format!(
                                "POST {} (keep MCP and the frontend running, restart the backend)",
                                cfg.graceful_shutdown_url()
                            ),
                        )
                        // A backend already gone is tolerated (the next step starts it).
                        .disruptive()
                        .repeatable(),
                    );
                    s.push(
                        Step::auto(
                            "start-backend",
                            "Start the backend again",
                            format!(
                                "Start {} in the background in {}, output appended to {}",
                                shown(cfg.cmd(&cfg.backend_start_command)),
                                cfg.root,
                                spawn_log(cfg, "backend")
                            ),
                        )
                        // Spawns in the background: a second run would start a second copy.
                        .disruptive(),
                    );
                    s.push(wait_step(cfg));
                }
                Scenario::Database => {
                    s.push(
                        Step::auto(
                            "restart-services",
                            "Restart the MCP server to reset the connection pool",
                            format!(
                                "Run {} in {}",
                                shown(cfg.cmd(&cfg.restart_command)),
                                cfg.root
                            ),
                        )
                        // A second restart is a restart.
                        .disruptive()
                        .repeatable(),
                    );
                    s.push(
                        Step::auto(
                            "wait-mcp",
                            "Wait for the MCP server",
                            wait_detail(cfg, &format!("GET {}", cfg.healthz())),
                        )
                        .observe()
                        .repeatable(),
                    );
                    s.push(
                        Step::auto(
                            "db-connectivity",
                            "Verify database connectivity",
                            format!(
                                "Run `{}`; the next three steps run only if it fails",
                                cfg.psql_cmd("SELECT current_database();").display()
                            ),
                        )
                        .observe()
                        .repeatable(),
                    );
                    s.push(Step::auto(
                    "db-status",
                    "Check the PostgreSQL service",
                    format!(
                        "Only if the database does not answer: run {} and record its output",
                        shown(cfg.cmd(&cfg.db_status_command))
                    ),
                ).observe().repeatable());
                    s.push(Step::auto(
                    "db-restart",
                    "Restart PostgreSQL",
                    format!(
                        "Only if the database does not answer: run {}, then poll {}:{} until it accepts connections, for at most {} ms",
                        shown(cfg.cmd(&cfg.db_restart_command)),
                        cfg.db_host,
                        cfg.db_port,
                        cfg.db_timeout_ms
                    ),
                )
    // Only when the database did not answer; restarting twice is a
    // restart.
    .disruptive()
    .repeatable());
                    s.push(Step::auto(
                    "db-extension",
                    format!("Verify the {} extension", cfg.db_extension),
                    format!(
                        "Only after a PostgreSQL restart: `{}` must list {}; if it does not, the data needs the DBA (level {LEVEL_MANUAL})",
                        cfg.psql_cmd(&extension_sql(cfg)).display(),
                        cfg.db_extension
                    ),
                ).observe().repeatable());
                    s.push(
                        Step::auto(
                            "wait-ready",
                            "Wait for readiness",
                            wait_detail(cfg, &format!("GET {}", cfg.readyz())),
                        )
                        .observe()
                        .repeatable(),
                    );
                }
                Scenario::Processes => {
                    s.push(Step::auto(
                    "cleanup-processes",
                    "Kill all AIDIS processes",
                    format!(
                        "Stop every process matching {}: TERM, then KILL what is left after {} ms (the runbook's `pkill -f` and `sleep 10`)",
                        patterns_list(&cfg.cleanup_patterns),
                        cfg.stop_grace_ms
                    ),
                )
    // TERM, then KILL, of what matches now: a second pass stops what is
    // left, nothing more.
    .disruptive()
    .repeatable());
                    s.push(
                        Step::auto(
                            "start-essential",
                            "Start the essential services only",
                            format!(
                                "Run {} in {} (only the MCP server)",
                                shown(cfg.cmd(&cfg.essential_start_command)),
                                cfg.root
                            ),
                        )
                        // Not repeatable: whether the start script starts a second copy
                        // when cut short after it started the first is the script's business.
                        .disruptive(),
                    );
                    s.push(
                        Step::auto(
                            "wait-mcp",
                            "Wait for the MCP server",
                            wait_detail(cfg, &format!("GET {}", cfg.healthz())),
                        )
                        .observe()
                        .repeatable(),
                    );
                    s.push(Step::auto(
                    "count-essential",
                    "Verify the process count",
                    format!(
                        "Count the processes matching {}: at most {} with the essential services only",
                        measure::patterns_shown(&cfg.process_patterns),
                        cfg.essential_max_processes
                    ),
                ).observe().repeatable());
                    s.extend(start_dev_step(cfg, "restart command services"));
                    s.push(wait_step(cfg));
                }
                Scenario::Mesh => {
                    s.push(
                        Step::auto(
                            "stop-bridge",
                            "Stop the HTTP-MCP bridge",
                            format!(
                                "Stop every process matching {:?}: TERM, then KILL after {} ms",
                                cfg.bridge_pattern, cfg.mesh_grace_ms
                            ),
                        )
                        // TERM, then KILL, of what matches now: a second pass stops what is
                        // left, nothing more.
                        .disruptive()
                        .repeatable(),
                    );
                    s.push(
                        Step::auto(
                            "start-bridge",
                            "Start the HTTP-MCP bridge",
                            format!(
                                "Start {} in the background in {}, output appended to {}",
                                shown(cfg.cmd(&cfg.bridge_start_command)),
                                cfg.root,
                                spawn_log(cfg, "bridge")
                            ),
                        )
                        // Spawns in the background: a second run would start a second copy.
                        .disruptive(),
                    );
                    s.push(Step::auto(
                    "test-bridge",
                    "Test the bridge",
                    format!(
                        "{}; then call the tool: POST {} with {{}} as JSON, which must answer 200-399",
                        wait_detail(cfg, &format!("GET {}", cfg.ping_url())),
                        cfg.ping_url()
                    ),
                ).observe().repeatable());
                    s.push(Step::auto(
                    "mesh-stop",
                    "Service mesh reset: stop",
                    format!(
                        "Only if the bridge still fails: run {}, then stop every process matching {} (TERM, KILL after {} ms: the runbook's `sleep 5`)",
                        shown(cfg.cmd(&cfg.stop_command)),
                        patterns_list(&cfg.mesh_stop_patterns),
                        cfg.mesh_grace_ms
                    ),
                )
    .disruptive()
    .repeatable());
                    s.push(Step::auto(
                    "mesh-start",
                    "Service mesh reset: start",
                    format!(
                        "Only if the bridge still failed: run {}, then start {} in the background",
                        shown(cfg.cmd(&cfg.start_command)),
                        shown(cfg.cmd(&cfg.dev_command))
                    ),
                )
    // Not repeatable: whether the start script starts a second copy
    // when cut short after it started the first is the script's business.
    .disruptive());
                    s.push(wait_step(cfg));
                }
            }
        }
        LEVEL_PHASE0 => {
            let n = names(ctx, cfg)?;
            let repo = Repo::new(&cfg.root);
            let head = repo
                .head_described()
                .map(|h| h.1)
                .unwrap_or_else(|e| format!("unknown ({})", e.message()));
            // Pinned here, before any step moved HEAD or the branch.
            let target = match baseline_commit(ctx, cfg)? {
                Some(sha) => format!(
                    "{} ({}, pinned for the incident)",
                    cfg.baseline_ref,
                    &sha[..7]
                ),
                None => cfg.baseline_ref.clone(),
            };
            s.push(
                Step::auto(
                    "backup-database",
                    "Back up the database",
                    format!(
                        "Count the rows of {} (for the data recovery verification); {}. Best effort: a dump that fails or takes over {} ms is recorded as a breached finding and in {}, and the rollback goes on (the revert does not touch the database)",
                        cfg.count_tables.join(", "),
                        if cfg.backup_database {
                            format!("run `{}`", cfg.dump_cmd(&n.dump).display())
                        } else {
                            "no dump (backup_database = false)".to_string()
                        },
                        cfg.dump_timeout_ms,
                        cfg.rollback_log()
                    ),
                )
                // Reads the database; the file is named by the run's stamp, so a
                // second try writes the same file again.
                .observe()
                .repeatable(),
            );
            s.push(Step::auto(
                "backup-config",
                "Back up the configuration and logs",
                format!(
                    "Snapshot {} and {} (verified archive {:?} in rewind's state) and copy {} to {}",
                    cfg.config_path(),
                    cfg.logs(),
                    n.snapshot,
                    cfg.config_path(),
                    n.config_copy
                ),
            )
    // Reads the config and logs into rewind's snapshot and a copy under
    // backups/ (named by the run's stamp: copied again, the same files).
    .observe()
    .repeatable());
            s.push(
                Step::auto(
                    "backup-git",
                    "Preserve the git state",
                    format!(
                        "In {}: `git branch {}` and `git tag {}` at HEAD, now {head}",
                        cfg.root, n.branch, n.tag
                    ),
                )
                // Adds refs, moves none; a ref this run made already at HEAD is kept.
                .observe()
                .repeatable(),
            );
            s.push(stop);
            let pats = phase0_patterns(cfg, sc);
            s.push(
                Step::auto(
                    "stop-processes",
                    "Stop the remaining Phase 4 processes",
                    format!(
                        "Stop every process matching {}: TERM, then KILL after {} ms",
                        patterns_list(&pats),
                        cfg.mesh_grace_ms
                    ),
                )
                // TERM, then KILL, of what matches now: a second pass stops what is
                // left, nothing more.
                .disruptive()
                .repeatable(),
            );
            s.push(Step::auto(
                "revert",
                format!("Revert to {}", cfg.baseline_ref),
                format!(
                    "`git status` in {}: uncommitted changes to tracked files are {}; then `{} checkout {}`: {head} -> {target}; nothing when HEAD is there already",
                    cfg.root,
                    if cfg.dirty_tree == "refuse" {
                        "refused (the step fails and says what to do; dirty_tree = \"refuse\")"
                    } else {
                        "put aside with `git stash push` (kept; dirty_tree = \"stash\")"
                    },
                    cfg.git,
                    cfg.baseline_ref
                ),
            )
    // HEAD is preserved first (backup-git), local changes in a stash;
    // nothing when HEAD is at the pinned commit already.
    .reversible()
    .repeatable());
            s.push(start);
            s.extend(start_dev_step(cfg, "start command services"));
            s.push(wait_step(cfg));
        }
        LEVEL_MANUAL => {
            s.push(
                Step::manual(
                    "manual-intervention",
                    "Manual intervention (senior developer, DBA)",
                    manual_detail(ctx, cfg)?,
                )
                // The DBA may restore the database to a point in time: the worst a
                // person may do here. A person confirms it; never run again unattended.
                .effect(Effect::Destructive),
            );
        }
        other => bail!(
            "the aidis plugin has levels {LEVEL_TARGETED} to {LEVEL_MANUAL}; level {other} was asked for"
        ),
    }
    s.push(validate_step(cfg, level));
    s.push(record_step(cfg));
    Ok(s)
}

fn manual_detail(ctx: &Context, cfg: &Config) -> Result<String> {
    // The backups of the state before the rollback: the first run's.
    let n = match ctx.pinned("pre_rollback_stamp")? {
        Some(ts) => names_at(cfg, &ts)?,
        None => names(ctx, cfg)?,
    };
    Ok(format!(
        "The Phase 0 rollback did not validate: MANUAL INTERVENTION REQUIRED. A senior developer checks AIDIS in {} by hand (`whoami`, `pwd`, `git status`; logs in {}). If the database is corrupted, the DBA on call restores {} on {}:{} by point-in-time recovery to {} (the pre-Phase 4 state). The backups from before the rollback: {}, {}, git branch {}. Confirm once AIDIS is back",
        cfg.root,
        cfg.logs(),
        cfg.db_name,
        cfg.db_host,
        cfg.db_port,
        cfg.pitr_target,
        n.dump,
        n.config_copy,
        n.branch
    ))
}

fn extension_sql(cfg: &Config) -> String {
    format!(
        "SELECT extname FROM pg_extension WHERE extname='{}';",
        cfg.db_extension.replace('\'', "''")
    )
}

// ---------------------------------------------------------------------------
// Carrying the steps out.

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Run a configured command; a non-zero exit fails the step (the runbook's
/// scripts run under `set -e`).
fn run_cmd(what: &str, cmd: Option<Cmd>) -> Result<StepOutcome> {
    let Some(cmd) = cmd else {
        return Ok(StepOutcome::ok(format!("{what}: turned off in the config")));
    };
    let shown = cmd.display();
    let o = cmd.run()?;
    if o.simulated {
        return Ok(StepOutcome::ok(format!("would run `{shown}`")));
    }
    if o.success() {
        let tail = last_lines(&o.stdout, 2);
        Ok(StepOutcome::ok(if tail.is_empty() {
            format!("`{shown}` exited 0 in {} ms", o.duration_ms)
        } else {
            format!("`{shown}` exited 0 in {} ms: {tail}", o.duration_ms)
        }))
    } else {
        Ok(StepOutcome::failed(format!(
            "`{shown}` failed ({}): {}",
            o.exit_code
                .map_or_else(|| "killed by a signal".to_string(), |c| format!("exit {c}")),
            last_lines(&format!("{}\n{}", o.stdout, o.stderr), 3)
        )))
    }
}

fn spawn_cmd(ctx: &Context, cfg: &Config, name: &str, cmd: Option<Cmd>) -> Result<StepOutcome> {
    let Some(cmd) = cmd else {
        return Ok(StepOutcome::ok(format!("{name}: turned off in the config")));
    };
    let log = spawn_log(cfg, name);
    let pid = cmd.spawn(&log)?;
    Ok(StepOutcome::ok(if ctx.executes() {
        format!("started `{}` as pid {pid}, output in {log}", cmd.display())
    } else {
        format!("would start `{}` in the background", cmd.display())
    }))
}

fn stop_matching(ctx: &Context, patterns: &[String], grace_ms: u64) -> Result<StepOutcome> {
    let mut parts = Vec::new();
    let mut total = 0;
    for p in patterns.iter().filter(|p| !p.trim().is_empty()) {
        let n = process::stop_matching(p, grace_ms)?;
        total += n;
        parts.push(format!("{n} matching {p:?}"));
    }
    let verb = if ctx.executes() {
        "stopped"
    } else {
        "would stop"
    };
    Ok(StepOutcome::ok(format!(
        "{verb} {total} processes ({})",
        parts.join(", ")
    )))
}

/// Poll each URL until healthy, sharing one time budget. Never fails the
/// step: the verification judges, and escalates.
fn wait_for(ctx: &Context, cfg: &Config, probes: Vec<(String, HttpProbe)>) -> Result<StepOutcome> {
    let names: Vec<String> = probes.iter().map(|(n, _)| n.clone()).collect();
    if !ctx.executes() {
        return Ok(StepOutcome::ok(format!(
            "would wait for {} (a {} restarts nothing)",
            names.join(", "),
            ctx.mode.as_str()
        )));
    }
    let budget = cfg.startup_timeout_ms;
    let mut spent = 0u64;
    let mut findings = Vec::new();
    let mut bad = Vec::new();
    let mut attempts = 0;
    for (name, probe) in probes {
        // Once the budget is spent, each remaining URL still gets one probe.
        let left = budget.saturating_sub(spent);
        // A hung endpoint must not hold one attempt longer than the wait.
        let probe = probe.timeout_ms(cfg.response_timeout_ms.min(left.max(1000)));
        let w = probe.wait(
            WaitPolicy::every(cfg.poll_interval_ms)
                .timeout_ms(left)
                .successes(1),
        )?;
        spent += w.elapsed_ms;
        attempts += w.attempts;
        let range = probe
            .expect_status
            .unwrap_or(rewind_sdk::health::StatusRange { min: 200, max: 399 });
        let mut f = Finding::status(name.clone(), w.last.status, range.min, range.max);
        if w.last.status.is_none() {
            f.observed = format!("no answer ({})", w.last.detail);
        }
        if !w.healthy {
            bad.push(format!("{name}: {}", f.observed));
        }
        findings.push(f);
    }
    findings.push(Finding::at_most(
        "time to healthy",
        spent as f64,
        budget as f64,
        "ms",
    ));
    let msg = if bad.is_empty() {
        format!("healthy after {spent} ms ({attempts} probes)")
    } else {
        format!(
            "not healthy within {budget} ms ({}); the verification decides",
            bad.join("; ")
        )
    };
    Ok(StepOutcome::ok(msg).with_findings(findings))
}

fn all_probes(cfg: &Config) -> Vec<(String, HttpProbe)> {
    // The MCP server first: the rest depends on it.
    let mut eps = cfg.endpoints();
    eps.sort_by_key(|e| e.url != cfg.healthz());
    let mut v: Vec<(String, HttpProbe)> = eps
        .into_iter()
        .map(|e| (format!("GET {}", e.url), cfg.probe(&e.url)))
        .collect();
    v.push((
        format!("GET {} (the bridge)", cfg.ping_url()),
        cfg.ping_probe(),
    ));
    v
}

fn flag(ctx: &Context, key: &str) -> Result<Option<bool>> {
    Ok(storage::get(&ctx.run_key(key))?.map(|v| v == "true"))
}

fn set_flag(ctx: &Context, key: &str, v: bool) -> Result<()> {
    storage::set(&ctx.run_key(key), if v { "true" } else { "false" })?;
    Ok(())
}

pub fn run(
    ctx: &Context,
    cfg: &Config,
    sc: Scenario,
    level: u8,
    step: &str,
) -> Result<StepOutcome> {
    match step {
        "stop-services" => run_cmd("stop", cfg.cmd(&cfg.stop_command)),
        "start-services" => run_cmd("start", cfg.cmd(&cfg.start_command)),
        "restart-services" => run_cmd("restart", cfg.cmd(&cfg.restart_command)),
        "start-essential" => run_cmd("start", cfg.cmd(&cfg.essential_start_command)),
        "start-dev" => spawn_cmd(ctx, cfg, "dev", cfg.cmd(&cfg.dev_command)),
        "start-backend" => spawn_cmd(ctx, cfg, "backend", cfg.cmd(&cfg.backend_start_command)),
        "start-bridge" => spawn_cmd(ctx, cfg, "bridge", cfg.cmd(&cfg.bridge_start_command)),
        "wait-healthy" => wait_for(ctx, cfg, all_probes(cfg)),
        "wait-mcp" => wait_for(
            ctx,
            cfg,
            vec![(format!("GET {}", cfg.healthz()), cfg.probe(&cfg.healthz()))],
        ),
        "wait-ready" => wait_for(
            ctx,
            cfg,
            vec![(format!("GET {}", cfg.readyz()), cfg.probe(&cfg.readyz()))],
        ),
        "triage" => triage(cfg),
        "graceful-shutdown" => graceful_shutdown(ctx, cfg),
        "cleanup-processes" => stop_matching(ctx, &cfg.cleanup_patterns, cfg.stop_grace_ms),
        "count-essential" => {
            let p = measure::count_processes(&cfg.process_patterns)?;
            let f = Finding::at_most(
                format!(
                    "processes matching {}",
                    measure::patterns_shown(&cfg.process_patterns)
                ),
                f64::from(p.count),
                f64::from(cfg.essential_max_processes),
                "",
            );
            Ok(StepOutcome::ok(format!(
                "{} processes (limit {} with the essential services only)",
                p.count, cfg.essential_max_processes
            ))
            .with_findings(vec![f]))
        }
        "stop-bridge" => stop_matching(
            ctx,
            std::slice::from_ref(&cfg.bridge_pattern),
            cfg.mesh_grace_ms,
        ),
        "test-bridge" => {
            let waited = if ctx.executes() {
                wait_for(
                    ctx,
                    cfg,
                    vec![(format!("GET {}", cfg.ping_url()), cfg.ping_probe())],
                )?
            } else {
                StepOutcome::ok(format!(
                    "would wait for GET {} (a {} restarts nothing)",
                    cfg.ping_url(),
                    ctx.mode.as_str()
                ))
            };
            // Nothing restarts in a dry run: the bridge as it is now says
            // whether the mesh reset would run.
            let call = measure::tool_call(ctx, cfg, &mut measure::Budget::new(cfg, 1))?;
            let ok = call.iter().all(|f| !f.breached);
            set_flag(ctx, "bridge-ok", ok)?;
            let msg = format!(
                "{}; tool call: {}",
                waited.message,
                call.first().map_or("-", |f| f.observed.as_str())
            );
            Ok(StepOutcome::ok(msg).with_findings(call))
        }
        "mesh-stop" => {
            if flag(ctx, "bridge-ok")?.unwrap_or(false) {
                return Ok(StepOutcome::ok(
                    "the bridge answers: no service mesh reset needed",
                ));
            }
            let a = run_cmd("stop", cfg.cmd(&cfg.stop_command))?;
            if !a.ok {
                return Ok(a);
            }
            let b = stop_matching(ctx, &cfg.mesh_stop_patterns, cfg.mesh_grace_ms)?;
            Ok(StepOutcome::ok(format!("{}; {}", a.message, b.message)))
        }
        "mesh-start" => {
            if flag(ctx, "bridge-ok")?.unwrap_or(false) {
                return Ok(StepOutcome::ok(
                    "the bridge answers: no service mesh reset needed",
                ));
            }
            let a = run_cmd("start", cfg.cmd(&cfg.start_command))?;
            if !a.ok {
                return Ok(a);
            }
            let b = spawn_cmd(ctx, cfg, "dev", cfg.cmd(&cfg.dev_command))?;
            Ok(StepOutcome::ok(format!("{}; {}", a.message, b.message)))
        }
        "db-connectivity" => {
            let db = measure::db_check(
                ctx,
                cfg,
                "SELECT current_database();",
                Some(cfg.db_name.as_str()),
            )?;
            set_flag(ctx, "db-ok", db.ok)?;
            let f = Finding::check(&db.check, db.ok, &db.observed, "answers");
            Ok(StepOutcome::ok(if db.ok {
                format!("the database answers: {}", db.observed)
            } else {
                format!(
                    "the database does not answer ({}): recovering it",
                    db.observed
                )
            })
            .with_findings(vec![f]))
        }
        "db-status" => {
            if flag(ctx, "db-ok")?.unwrap_or(true) {
                return Ok(StepOutcome::ok("the database answers: not needed"));
            }
            let Some(cmd) = cfg.cmd(&cfg.db_status_command) else {
                return Ok(StepOutcome::ok("turned off in the config"));
            };
            let shown = cmd.display();
            let o = cmd.run()?;
            Ok(StepOutcome::ok(if o.simulated {
                format!("would run `{shown}`")
            } else {
                // `systemctl status` exits 3 for a stopped service: that
                // is what it reports, not a failure of the step.
                format!(
                    "`{shown}` exit {}: {}",
                    o.exit_code.unwrap_or(-1),
                    last_lines(&format!("{}\n{}", o.stdout, o.stderr), 3)
                )
            }))
        }
        "db-restart" => {
            if flag(ctx, "db-ok")?.unwrap_or(true) {
                return Ok(StepOutcome::ok("the database answers: not restarted"));
            }
            let out = run_cmd("restart", cfg.cmd(&cfg.db_restart_command))?;
            if !out.ok || !ctx.executes() {
                return Ok(out);
            }
            let w = TcpProbe::new(&cfg.db_host, cfg.db_port).wait(
                WaitPolicy::every(cfg.poll_interval_ms.min(500))
                    .timeout_ms(cfg.db_timeout_ms)
                    .successes(1),
            )?;
            let f = Finding::check(
                format!(
                    "database {}:{} accepts connections",
                    cfg.db_host, cfg.db_port
                ),
                w.healthy,
                format!("{} after {} ms", w.last.detail, w.elapsed_ms),
                "connects",
            );
            let msg = if w.healthy {
                format!(
                    "{}; {}:{} accepts connections after {} ms",
                    out.message, cfg.db_host, cfg.db_port, w.elapsed_ms
                )
            } else {
                format!(
                    "{}; {}:{} does not accept connections within {} ms: {}",
                    out.message, cfg.db_host, cfg.db_port, cfg.db_timeout_ms, w.last.detail
                )
            };
            Ok(if w.healthy {
                StepOutcome::ok(msg)
            } else {
                StepOutcome::failed(msg)
            }
            .with_findings(vec![f]))
        }
        "db-extension" => {
            if flag(ctx, "db-ok")?.unwrap_or(true) {
                return Ok(StepOutcome::ok(
                    "the database answered: no recovery to check",
                ));
            }
            let o = cfg.psql_cmd(&extension_sql(cfg)).run()?;
            if o.simulated {
                return Ok(StepOutcome::ok(format!(
                    "would check that {} is installed",
                    cfg.db_extension
                )));
            }
            let found = o.success() && o.stdout.lines().any(|l| l.trim() == cfg.db_extension);
            let f = Finding::check(
                format!("extension {} in {}", cfg.db_extension, cfg.db_name),
                found,
                if found {
                    "installed".to_string()
                } else if o.success() {
                    "missing".to_string()
                } else {
                    format!("query failed: {}", measure::first_line(o.stderr.trim()))
                },
                "installed",
            );
            Ok(if found {
                StepOutcome::ok(format!("{} is installed", cfg.db_extension))
            } else {
                StepOutcome::failed(format!(
                    "{} is not usable after the restart: corruption is possible; the DBA restores to {} (rewind run --level {LEVEL_MANUAL})",
                    cfg.db_extension, cfg.pitr_target
                ))
            }
            .with_findings(vec![f]))
        }
        "backup-database" => backup_database(ctx, cfg),
        "backup-config" => backup_config(ctx, cfg),
        "backup-git" => backup_git(ctx, cfg),
        "stop-processes" => stop_matching(ctx, &phase0_patterns(cfg, sc), cfg.mesh_grace_ms),
        "revert" => revert(ctx, cfg),
        "manual-intervention" => Ok(StepOutcome::ok("confirmed by the operator")),
        "validate" => validate(ctx, cfg, level),
        "record" => record(ctx, cfg, sc, level),
        other => bail!("unknown step {other:?} of the aidis plugin"),
    }
}

fn triage(cfg: &Config) -> Result<StepOutcome> {
    let mut findings = Vec::new();
    for port in [cfg.frontend_port, cfg.backend_port, cfg.mcp_port] {
        let r = TcpProbe::new(&cfg.host, port).timeout_ms(1000).probe()?;
        let (ok, observed) = (r.healthy, r.detail);
        findings.push(Finding::check(
            format!("port {port} on {}", cfg.host),
            ok,
            observed,
            "listening",
        ));
    }
    let top = match cfg.cmd(&cfg.ps_command) {
        None => "process list turned off".to_string(),
        Some(cmd) => {
            let o = cmd.run()?;
            if o.simulated {
                format!("would run `{}`", cmd.display())
            } else {
                o.stdout.lines().take(11).collect::<Vec<_>>().join("\n")
            }
        }
    };
    let procs = measure::count_processes(&cfg.process_patterns)?;
    findings.push(Finding::at_most(
        format!(
            "memory of processes matching {}",
            measure::patterns_shown(&cfg.process_patterns)
        ),
        procs.rss_mb.round(),
        cfg.leak_memory_mb,
        "MB",
    ));
    log::info(format_args!("top processes by memory:\n{top}"));
    Ok(StepOutcome::ok(format!(
        "{} AIDIS processes, {} MB resident; top by memory: {}",
        procs.count,
        rewind_sdk::report::num(procs.rss_mb.round()),
        top.lines()
            .nth(1)
            .unwrap_or("-")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    ))
    .with_findings(findings))
}

fn graceful_shutdown(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let url = cfg.graceful_shutdown_url();
    let r = http::HttpRequest::post(&url, "")
        .timeout_ms(cfg.response_timeout_ms)
        .send();
    Ok(match r {
        Ok(r) if r.simulated => StepOutcome::ok(format!("would POST {url}")),
        Ok(r) if (200..300).contains(&r.status) => {
            StepOutcome::ok(format!("POST {url}: {} {}", r.status, r.body.trim()))
        }
        Ok(r) => StepOutcome::ok(format!(
            "POST {url} answered {}; the backend is restarted anyway",
            r.status
        )),
        // A backend that is already gone is what the next step fixes.
        Err(Error::Failed(m)) | Err(Error::Timeout(m)) if ctx.executes() => StepOutcome::ok(
            format!("POST {url} failed ({m}); the backend is restarted anyway"),
        ),
        Err(e) => return Err(e.into()),
    })
}

/// The runbook's `pg_dump` before the rollback, and the row counts the
/// data recovery verification compares against. Best effort: the dump
/// protects the revert, it does not block it (the Phase 0 rollback does
/// not touch the database, and no level restores from this dump). When it
/// fails or times out, the step says so with a breached finding, the
/// rollback log says so, and the rollback goes on.
fn backup_database(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let n = names(ctx, cfg)?;
    if ctx.executes() {
        pre_rollback_stamp(ctx)?;
    }
    let rows = if ctx.executes() {
        let counts = measure::count_rows(cfg)?;
        let ok: std::collections::BTreeMap<String, u64> = counts
            .iter()
            .filter_map(|(t, r)| r.as_ref().ok().map(|n| (t.clone(), *n)))
            .collect();
        storage::set_json(&ctx.run_key(measure::ROWS_BEFORE), &ok)?;
        counts
            .iter()
            .map(|(t, r)| match r {
                Ok(n) => format!("{t} {n}"),
                Err(e) => format!("{t} not counted ({e})"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        format!("would count the rows of {}", cfg.count_tables.join(", "))
    };
    if !cfg.backup_database {
        return Ok(StepOutcome::ok(format!(
            "dump turned off (backup_database = false); rows: {rows}"
        )));
    }
    storage::make_dir(&cfg.backups())?;
    let cmd = cfg.dump_cmd(&n.dump);
    let shown = cmd.display();
    let o = match cmd.run() {
        Ok(o) => o,
        Err(Error::Timeout(m)) => {
            return no_dump(
                ctx,
                &format!("`{shown}` timed out after {} ms ({m})", cfg.dump_timeout_ms),
                &rows,
            );
        }
        Err(e) => return Err(e.into()),
    };
    if o.simulated {
        return Ok(StepOutcome::ok(format!("would run `{shown}`; {rows}")));
    }
    let size = if o.success() {
        storage::stat(&n.dump)?.map(|e| e.size).unwrap_or(0)
    } else {
        0
    };
    if o.success() && size > 0 {
        storage::set(&ctx.run_key("dump"), &n.dump)?;
        let f = Finding::at_least("database dump size", size as f64, 1.0, "bytes");
        return Ok(StepOutcome::ok(format!(
            "dumped {} to {} ({size} bytes); rows: {rows}",
            cfg.db_name, n.dump
        ))
        .with_findings(vec![f]));
    }
    let mut why = if o.success() {
        format!("`{shown}` wrote nothing to {}", n.dump)
    } else {
        format!(
            "`{shown}` failed (exit {}): {}",
            o.exit_code.unwrap_or(-1),
            last_lines(&o.stderr, 2)
        )
    };
    let tcp = TcpProbe::new(&cfg.db_host, cfg.db_port)
        .timeout_ms(2000)
        .probe()?;
    if !tcp.healthy {
        why.push_str(&format!(
            " (the database at {}:{} is unreachable: {})",
            cfg.db_host, cfg.db_port, tcp.detail
        ));
    }
    no_dump(ctx, &why, &rows)
}

/// The dump was not taken: a breached finding, a warning, a note for the
/// rollback log; the step itself succeeds so that the revert runs.
fn no_dump(ctx: &Context, why: &str, rows: &str) -> Result<StepOutcome> {
    storage::set(&ctx.run_key("dump-missing"), why)?;
    let msg = format!(
        "no database dump: {why}; rolling the code back without it (the Phase 0 rollback does not touch the database; take a dump by hand before anyone restores it); rows: {rows}"
    );
    log::warn(&msg);
    Ok(StepOutcome::ok(msg).with_findings(vec![Finding::check(
        "database dump",
        false,
        format!("not taken: {why}"),
        "taken",
    )]))
}

fn backup_config(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let n = names(ctx, cfg)?;
    if ctx.executes() {
        pre_rollback_stamp(ctx)?;
    }
    let mut paths = Vec::new();
    for p in [cfg.config_path(), cfg.logs()] {
        if storage::exists(&p)? {
            paths.push(p);
        }
    }
    if paths.is_empty() {
        return Ok(StepOutcome::ok(format!(
            "neither {} nor {} exists: nothing to back up",
            cfg.config_path(),
            cfg.logs()
        )));
    }
    let snap = storage::snapshot(&n.snapshot, &paths)?;
    if ctx.executes() {
        storage::set(&ctx.run_key("snapshot"), &snap.id)?;
    }
    // `cp -r config/ backups/config-<ts>/`, file by file.
    let mut copied = 0;
    for (rel, path) in measure::files_under(&cfg.config_path())? {
        storage::copy(&path, &format!("{}/{rel}", n.config_copy))?;
        copied += 1;
    }
    if ctx.executes() && copied > 0 {
        // The data recovery verification diffs against this copy.
        storage::set(&ctx.run_key(measure::CONFIG_COPY), &n.config_copy)?;
    }
    let verb = if ctx.executes() { "" } else { "would " };
    Ok(StepOutcome::ok(format!(
        "{verb}snapshot {} ({} files, {} bytes) of {}; {verb}copy {copied} config files to {}",
        snap.id,
        snap.files,
        snap.bytes,
        paths.join(" and "),
        n.config_copy
    )))
}

fn git(cfg: &Config, args: &[&str]) -> Cmd {
    Cmd::new(cfg.program(&cfg.git))
        .args(args.iter().copied())
        .cwd(&cfg.root)
        .timeout_ms(cfg.command_timeout_ms)
}

/// `git branch` and `git tag` at HEAD, named by the run's stamp. A ref
/// this run made already (a resumed run) is kept when it points at HEAD;
/// one that points elsewhere fails the step rather than being moved.
fn backup_git(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let n = names(ctx, cfg)?;
    if ctx.executes() {
        pre_rollback_stamp(ctx)?;
    }
    let repo = Repo::new(&cfg.root);
    let (head, head_sha) = repo
        .head_described()
        .map(|h| (h.1, h.2))
        .unwrap_or_else(|_| ("HEAD".into(), None));
    let mut kept = Vec::new();
    for (kind, name, full) in [
        (
            "branch",
            n.branch.as_str(),
            format!("refs/heads/{}", n.branch),
        ),
        ("tag", n.tag.as_str(), format!("refs/tags/{}", n.tag)),
    ] {
        if let Some(at) = repo.resolve(&full) {
            if head_sha.as_ref() == Some(&at) {
                kept.push(format!("{kind} {name} exists at HEAD already"));
                continue;
            }
            return Ok(StepOutcome::failed(format!(
                "{kind} {name} exists already at {}, not at HEAD {head}: not moved",
                &at[..7]
            )));
        }
        let out = run_cmd("git", Some(git(cfg, &[kind, name])))?;
        if !out.ok {
            return Ok(out);
        }
    }
    if ctx.executes() {
        storage::set(&ctx.run_key("from"), &head)?;
    }
    let verb = if ctx.executes() {
        "created"
    } else {
        "would create"
    };
    Ok(StepOutcome::ok(if kept.is_empty() {
        format!("{verb} branch {} and tag {} at {head}", n.branch, n.tag)
    } else {
        format!(
            "{verb} what was missing of branch {} and tag {} at {head} ({})",
            n.branch,
            n.tag,
            kept.join("; ")
        )
    }))
}

/// `git checkout <baseline_ref>`, to the pinned commit. Nothing when HEAD
/// is there already (a resumed or second run). When the branch moved away
/// from the pinned commit meanwhile, the pinned commit is checked out
/// (detached) and the step says so: the incident goes back where it first
/// decided to.
fn revert(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let repo = Repo::new(&cfg.root);
    let (_, before, head_sha) = repo.head_described().unwrap_or((
        crate::gitref::Head::Branch("HEAD".into()),
        "HEAD".into(),
        None,
    ));
    let pinned = baseline_commit(ctx, cfg)?;
    if let Some(t) = &pinned
        && head_sha.as_ref() == Some(t)
    {
        return Ok(StepOutcome::ok(format!(
            "HEAD is {before} already, the pinned {} commit: nothing to check out",
            cfg.baseline_ref
        )));
    }
    let moved = match &pinned {
        Some(t) => repo
            .resolve(&cfg.baseline_ref)
            .is_some_and(|now| now != *t)
            .then(|| t.clone()),
        None => None,
    };
    let what = moved.clone().unwrap_or_else(|| cfg.baseline_ref.clone());
    // `git status` first: uncommitted changes would be carried into the
    // baseline (or make git refuse the checkout).
    let stashed = match clean_tree(ctx, cfg, &before)? {
        Ok(s) => s,
        Err(refused) => return Ok(refused),
    };
    let out = run_cmd("git", Some(git(cfg, &["checkout", &what])))?;
    if !out.ok || !ctx.executes() {
        return Ok(match stashed {
            Some(s) => StepOutcome {
                message: format!("{s}; {}", out.message),
                ..out
            },
            None => out,
        });
    }
    let after = repo.head_described().map(|h| h.1).unwrap_or_default();
    log::info(format_args!("reverted {before} -> {after}"));
    let mut msg = match moved {
        Some(t) => format!(
            "{before} -> {after}: {} moved since the incident began, so its pinned commit {} was checked out",
            cfg.baseline_ref,
            &t[..t.len().min(7)]
        ),
        None => format!("{before} -> {after}"),
    };
    if let Some(s) = stashed {
        msg = format!("{s}; {msg}");
    }
    Ok(StepOutcome::ok(msg))
}

/// The runbook's `git status` before the checkout. Uncommitted changes to
/// tracked files are put aside with `git stash` (`dirty_tree = "stash"`,
/// the default: kept, and named after the run) or stop the revert
/// (`"refuse"`). `Ok(Some(what))` when something was stashed, `Err(step)`
/// when the revert is refused. Untracked files stay where they are.
fn clean_tree(
    ctx: &Context,
    cfg: &Config,
    before: &str,
) -> Result<std::result::Result<Option<String>, StepOutcome>> {
    let o = git(cfg, &["status", "--porcelain", "--untracked-files=no"]).run()?;
    if o.simulated {
        return Ok(Ok(Some(format!(
            "would run `git status` and {} uncommitted changes",
            if cfg.dirty_tree == "refuse" {
                "refuse the checkout on"
            } else {
                "stash"
            }
        ))));
    }
    if !o.success() {
        return Ok(Err(StepOutcome::failed(format!(
            "`git status` in {} failed (exit {}): {}; the checkout was not tried",
            cfg.root,
            o.exit_code.unwrap_or(-1),
            last_lines(&o.stderr, 2)
        ))));
    }
    let files: Vec<String> = o
        .stdout
        .lines()
        .filter(|l| l.len() > 3)
        .map(|l| l[3..].trim().to_string())
        .collect();
    if files.is_empty() {
        return Ok(Ok(None));
    }
    let shown = files.join(", ");
    if cfg.dirty_tree == "refuse" {
        return Ok(Err(StepOutcome::failed(format!(
            "uncommitted changes in {} ({shown}) on {before}: `git checkout {}` would carry them into the baseline or be refused; commit them, or put them aside with `git stash push -m \"before the rollback\"`, or set dirty_tree = \"stash\", then run rewind again",
            cfg.root, cfg.baseline_ref
        ))));
    }
    let label = format!(
        "rewind {}: uncommitted changes on {before} before the rollback to {}",
        ctx.run_id, cfg.baseline_ref
    );
    let out = run_cmd("git", Some(git(cfg, &["stash", "push", "-m", &label])))?;
    if !out.ok {
        return Ok(Err(StepOutcome::failed(format!(
            "uncommitted changes in {} ({shown}) could not be stashed: {}; the checkout was not tried",
            cfg.root, out.message
        ))));
    }
    let msg = format!(
        "stashed uncommitted changes to {shown} as stash@{{0}} ({label:?}; `git stash pop` brings them back)"
    );
    log::warn(&msg);
    Ok(Ok(Some(msg)))
}

fn validate(ctx: &Context, cfg: &Config, level: u8) -> Result<StepOutcome> {
    let findings = measure::checklist(ctx, cfg, level)?;
    let v = Verification::from_findings(findings);
    storage::set_json(
        &ctx.run_key(&format!("validation-{level}")),
        &(v.healthy, v.summary.clone()),
    )?;
    // The checklist's verdict goes to the log and the verification; a
    // failed check does not fail the step, so that the host can escalate.
    Ok(StepOutcome::ok(if v.healthy {
        format!("validation passed: {}", v.summary)
    } else {
        format!("validation {}", v.summary)
    })
    .with_findings(v.findings))
}

fn record(ctx: &Context, cfg: &Config, sc: Scenario, level: u8) -> Result<StepOutcome> {
    let now = clock::now_s();
    let validation: Option<(bool, String)> =
        storage::get_json(&ctx.run_key(&format!("validation-{level}")))?;
    let head = Repo::new(&cfg.root)
        .head_described()
        .map(|h| h.1)
        .unwrap_or_else(|_| "unknown".into());
    let what = format!(
        "{}, level {level} ({}), run {}, HEAD {head}",
        sc.title(),
        level_name(level),
        ctx.run_id
    );
    let line = match &validation {
        Some((true, s)) => format!(
            "{}: Phase 4 service rollback completed ({what}; validation: {s})",
            clock::date(now)
        ),
        Some((false, s)) => format!(
            "{}: Phase 4 service rollback did NOT validate ({what}; validation {s})",
            clock::date(now)
        ),
        None => format!(
            "{}: Phase 4 service rollback steps done ({what}; not validated)",
            clock::date(now)
        ),
    };
    let line = match storage::get(&ctx.run_key("dump-missing"))? {
        Some(why) => format!("{line} [no database dump: {why}]"),
        None => line,
    };
    let log_path = cfg.rollback_log();
    let mut text = if storage::exists(&log_path)? {
        storage::read_to_string(&log_path)?
    } else {
        String::new()
    };
    // One line per run and level: a resumed run does not write it twice.
    let mark = format!(
        "level {level} ({}), run {}, ",
        level_name(level),
        ctx.run_id
    );
    let appended = !text.contains(&mark);
    if appended {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&line);
        text.push('\n');
        storage::write_string(&log_path, &text)?;
    }
    let ps_file = format!("{}/rollback-processes-{now}.log", cfg.logs());
    let captured = match cfg.cmd(&cfg.ps_command) {
        None => "process list turned off".to_string(),
        Some(cmd) => {
            let shown = cmd.display();
            let o = cmd.run()?;
            if o.simulated {
                format!("would capture `{shown}` into {ps_file}")
            } else if o.success() {
                storage::write_string(&ps_file, &o.stdout)?;
                format!(
                    "captured `{shown}` ({} lines) into {ps_file}",
                    o.stdout.lines().count()
                )
            } else {
                return Ok(StepOutcome::failed(format!(
                    "`{shown}` failed: {}",
                    last_lines(&o.stderr, 2)
                )));
            }
        }
    };
    let verb = if !ctx.executes() {
        "would append"
    } else if appended {
        "appended"
    } else {
        "this run's line is already in"
    };
    Ok(StepOutcome::ok(format!(
        "{verb} to {log_path}: {line:?}; {captured}"
    )))
}
