//! The queue-app plugin: the "Rollback Plan" runbook
//! (`shared/seeds/004_200410ee593ff69b.txt`) of a Node app on port 3001
//! with Bull queues (`ai-analysis`, `document-processing`), Redis and
//! PostgreSQL.
//!
//! `assess` measures the API (`/health`, an error rate and P95 latency
//! from sampled API requests), the database (`psql -c "SELECT 1;"`, the
//! integrity queries), the queues (`/api/queue/stats`), Redis (`PING`,
//! `INFO memory`) and the app's features, then walks the runbook's
//! decision matrix and flowchart (P0-P3). The levels, lightest first:
//!
//! 1. feature flag: disable the one broken feature, fix forward;
//! 2. cache: delete the cache keys by pattern (SCAN + DEL, never FLUSHALL
//!    and never Bull's `bull:*` keys), restart Redis if needed, PING, warm;
//! 3. queue workers (4.2): stop workers, drain, pause, clean failed jobs,
//!    revert the queue code only, build, restart workers, resume gradually;
//! 4. application code (4.1): pause queues, drain, check out the stable
//!    ref, install, build, restart, health, smoke tests, resume queues one
//!    at a time with a health check between;
//! 5. database schema (5.1 method 1): stop writes, pause, drain, pg_dump
//!    backup (keep the last 10), down migration, verify schema and row
//!    counts, writes back on, resume;
//! 6. database restore (5.1 method 2): the same with dropdb, createdb and
//!    `psql < backup` instead of the down migration.
//!
//! Every host-specific command comes from the config with the runbook's
//! command as default; every key is in `docs/plugins/queue-app.md`.

mod config;
mod measure;
mod steps;

use rewind_sdk::prelude::*;

use config::{Config, db_host_port};
use measure::*;
use steps::*;

fn levels() -> Vec<LevelInfo> {
    vec![
        LevelInfo::new(1, "feature flag", "Single feature broken: disable it with its feature flag and fix forward").rto_ms(60 * 60_000).effect(Effect::Reversible),
        LevelInfo::new(2, "cache", "4.3 Cache/Redis rollback: delete the cache keys by pattern (SCAN + DEL; never FLUSHALL, never Bull's bull:* keys), restart Redis if needed, PING, warm").rto_ms(60 * 60_000).effect(Effect::Destructive),
        LevelInfo::new(3, "queue workers", "4.2 Queue system rollback: stop workers, drain, pause, clean, revert the queue code, rebuild, restart workers, resume gradually").rto_ms(30 * 60_000).effect(Effect::Destructive),
        LevelInfo::new(4, "application code", "4.1 Application code rollback: pause queues, drain, checkout stable, install, build, restart, health, smoke tests, resume queues one at a time").rto_ms(15 * 60_000).effect(Effect::Disruptive),
        LevelInfo::new(5, "database schema", "5.1 Method 1: stop writes, pause queues, pg_dump backup, down migration, verify schema and row counts").rto_ms(60 * 60_000).effect(Effect::Destructive),
        LevelInfo::new(6, "database restore", "5.1 Method 2: stop writes, pause queues, pg_dump backup, dropdb, createdb, restore from backup, verify").rto_ms(60 * 60_000).effect(Effect::Destructive),
    ]
}

/// The steps of a level: (id, title, detail).
fn step_list(ctx: &Context, cfg: &Config) -> Result<Vec<Step>> {
    let cmd = |argv: &[String]| {
        cfg.cmd(argv)
            .map_or("nothing (no command configured)".to_string(), |c| {
                format!("`{}` in {}", c.display(), cfg.app_dir)
            })
    };
    // At the code level, pausing and draining are best effort (the
    // runbook's emergency rollback: `pause-all || echo "Warning: ..."`).
    let (best_effort, marked) = if ctx.level == CODE {
        (
            "; best effort: if the API cannot do it, say so and roll the code back anyway",
            " (best effort)",
        )
    } else {
        ("", "")
    };
    let pause = || {
        Step::auto(
            "pause-queues",
            format!("Pause all queues{marked}"),
            format!(
                "POST {} (prevent new jobs){best_effort}",
                cfg.url(&cfg.pause_all_path)
            ),
        )
        // Pausing a paused queue changes nothing.
        .disruptive()
        .repeatable()
    };
    let drain = || {
        Step::auto(
            "drain",
            format!("Wait for active jobs to drain{marked}"),
            format!(
                "GET {} once every {} until no queue has an active job; fail after {}{best_effort}",
                cfg.url(&cfg.queue_stats_path),
                fmt_ms(cfg.drain_poll_ms),
                fmt_ms(cfg.drain_timeout_ms)
            ),
        )
        .observe()
        .repeatable()
    };
    let resumes = |v: &mut Vec<Step>| {
        for q in &cfg.queues {
            v.push(Step::auto(
                format!("resume-{q}"),
                format!("Resume queue {q}"),
                format!(
                    "POST {}, then GET {} must stay healthy for {} and {q} must run with a failure rate <= {}% before the next queue",
                    cfg.resume_url(q),
                    cfg.url(&cfg.health_path),
                    fmt_ms(cfg.resume_monitor_ms),
                    cfg.queue_failure_percent
                ),
            )
            // Undoes the pause; resuming a running queue changes nothing,
            // and the watch after it only reads.
            .reversible()
            .repeatable());
        }
    };
    let build = |title: &str| {
        Step::auto("build", title, cmd(&cfg.build_command))
            // dist/ follows the checked-out source: rebuilt at the other
            // commit it is back; building twice builds once.
            .reversible()
            .repeatable()
    };
    // The stable commit pinned for the incident (resolved and pinned here
    // when the run executes, before any step moved HEAD).
    let stable = match if matches!(ctx.level, QUEUE | CODE) {
        target(ctx, cfg)
    } else {
        Ok(None)
    } {
        Ok(Some(t)) => short(&t).to_string(),
        Ok(None) => format!("<{}>", cfg.stable_ref),
        Err(e) => format!("<{}> ({})", cfg.stable_ref, e.into_message()),
    };
    let head_now = head(cfg)
        .map(|h| short(&h).to_string())
        .unwrap_or_else(|e| e.into_message());
    let db = cfg.db_url().unwrap_or_else(|_| "$DATABASE_URL".into());
    let mut v = Vec::new();
    match ctx.level {
        FLAG => {
            // Which features to disable is decided once for the incident:
            // a flagged feature no longer fails the way it did, so a
            // second run deciding afresh would find nothing to flag.
            let pinned = ctx.pin("features_to_flag", || {
                let b: Vec<String> = broken_features(cfg)?
                    .into_iter()
                    .filter(|(_, f, _)| *f)
                    .map(|(n, _, _)| n)
                    .collect();
                Ok(serde_json::to_string(&b)?)
            })?;
            let flagged: Vec<String> =
                serde_json::from_str(&pinned).context("the pinned features_to_flag")?;
            if flagged.is_empty() {
                bail!(
                    "level 1 disables a broken feature with its flag, and no feature with a flag_path fails now"
                );
            }
            for n in &flagged {
                let f = cfg
                    .features
                    .iter()
                    .find(|f| f.name == *n)
                    .ok_or("feature gone")?;
                v.push(
                    Step::auto(
                        format!("flag-{n}"),
                        format!("Disable feature {n}"),
                        format!(
                            "{} {} with {} (use feature flag, fix forward)",
                            f.flag_method,
                            cfg.url(f.flag_path.as_deref().unwrap_or_default()),
                            f.flag_body
                        ),
                    )
                    // The flag is put back by enabling it; setting it off
                    // twice is setting it off once.
                    .reversible()
                    .repeatable(),
                );
            }
            v.push(
                Step::auto(
                    "health",
                    "Verify health",
                    format!(
                        "Wait for GET {} (200-399), up to {}",
                        cfg.url(&cfg.health_path),
                        fmt_ms(cfg.health_timeout_ms)
                    ),
                )
                .observe()
                .repeatable(),
            );
        }
        CACHE => {
            v.push(Step::auto(
                "flush",
                "Clear the cache keys",
                format!(
                    "For each of {}: `{}` (SCAN, never KEYS or FLUSHALL), then DEL the keys in batches of {}, never a key starting with {} (Bull's queues share this Redis)",
                    cfg.cache_patterns.join(", "),
                    cfg.redis(&["--scan", "--pattern", "<pattern>"]).display(),
                    cfg.del_batch,
                    if cfg.keep_key_prefixes.is_empty() { "(nothing kept)".to_string() } else { cfg.keep_key_prefixes.join(" or ") }
                ),
            )
            // Cache entries are gone for good (the app rebuilds them).
            // Flushing again after an interruption deletes what matches
            // now, which is what the step is for.
            .effect(Effect::Destructive)
            .repeatable());
            v.push(Step::auto(
                "restart-redis",
                "Restart Redis if needed",
                format!(
                    "When Redis does not answer PING or uses more than {} MB after the flush: {}",
                    cfg.cache_max_memory_mb,
                    cmd(&cfg.redis_restart_command)
                ),
            )
            // It checks before it acts: a Redis that answers and fits is
            // left running.
            .disruptive()
            .repeatable());
            v.push(
                Step::auto(
                    "ping",
                    "Verify Redis health",
                    format!("`{}` must answer PONG", cfg.redis(&["PING"]).display()),
                )
                .observe()
                .repeatable(),
            );
            v.push(
                Step::auto(
                    "warm",
                    "Warm the cache",
                    format!("POST {}", cfg.url(&cfg.cache_warm_path)),
                )
                // Fills a cache that can be flushed again; warming twice
                // warms once.
                .reversible()
                .repeatable(),
            );
        }
        QUEUE => {
            v.push(
                Step::auto(
                    "stop-workers",
                    "Stop all workers",
                    cmd(&cfg.worker_stop_command),
                )
                // `pm2 stop` of a stopped worker changes nothing.
                .disruptive()
                .repeatable(),
            );
            v.push(drain());
            v.push(pause());
            v.push(
                Step::auto(
                    "clean",
                    "Clean failed jobs",
                    format!("POST {}", cfg.url(&cfg.clean_all_path)),
                )
                // The failed jobs' records are deleted. With the workers
                // stopped no new job fails, so cleaning again cleans nothing
                // more than the first did.
                .effect(Effect::Destructive)
                .repeatable(),
            );
            v.push(Step::auto(
                "revert-queue-code",
                "Roll back the queue code only",
                format!(
                    "`git checkout {stable} -- {}` in {} (HEAD {head_now} stays; nothing when the path is there already)",
                    cfg.queue_code_path, cfg.app_dir
                ),
            )
            // HEAD keeps what it replaces (`git checkout HEAD -- <path>`
            // puts it back) and it refuses to overwrite uncommitted work;
            // a path at the pinned commit already is left as it is.
            .reversible()
            .repeatable());
            v.push(build("Rebuild"));
            v.push(
                Step::auto(
                    "restart-workers",
                    "Restart workers",
                    cmd(&cfg.worker_restart_command),
                )
                // A second restart is a restart.
                .disruptive()
                .repeatable(),
            );
            resumes(&mut v);
        }
        CODE => {
            v.push(Step::auto(
                "identify",
                "Identify the last stable commit",
                format!(
                    "`git rev-parse {}` (pinned for the incident: {stable}) and `git log --oneline -5` in {} (HEAD is {head_now})",
                    cfg.stable_ref, cfg.app_dir
                ),
            )
            // Reads git and pins the commit: a second run gets the pinned
            // answer, not HEAD~1 of a HEAD already moved back.
            .observe()
            .repeatable());
            v.push(pause());
            v.push(drain());
            v.push(Step::auto(
                "checkout",
                "Check out the stable version",
                format!(
                    "`git checkout {}` in {} (the pinned stable commit; nothing when HEAD is there already)",
                    stable, cfg.app_dir
                ),
            )
            // The commit left is pinned (rolled_back_from) and git refuses
            // to overwrite uncommitted changes; HEAD at the target already
            // is left as it is.
            .reversible()
            .repeatable());
            v.push(
                Step::auto("install", "Install dependencies", cmd(&cfg.install_command))
                    // node_modules follows the checked-out lock file: put
                    // back by installing at the other commit; installing
                    // twice installs once.
                    .reversible()
                    .repeatable(),
            );
            v.push(build("Build the application"));
            v.push(
                Step::auto("restart", "Restart services", cmd(&cfg.restart_command))
                    .disruptive()
                    .repeatable(),
            );
            v.push(
                Step::auto(
                    "health",
                    "Verify health",
                    format!(
                        "Wait for GET {} (200-399), up to {} (the runbook's sleep 10)",
                        cfg.url(&cfg.health_path),
                        fmt_ms(cfg.health_timeout_ms)
                    ),
                )
                .observe()
                .repeatable(),
            );
            v.push(
                Step::auto("smoke", "Run smoke tests", cmd(&cfg.smoke_command))
                    // The runbook's smoke tests read (/health, /api/projects).
                    .observe()
                    .repeatable(),
            );
            resumes(&mut v);
        }
        SCHEMA | RESTORE => {
            v.push(
                Step::auto(
                    "maintenance-on",
                    "Stop all writes",
                    format!("POST {}", cfg.url(&cfg.maintenance_enable_path)),
                )
                // Users cannot write; switching it on twice is once.
                .disruptive()
                .repeatable(),
            );
            v.push(pause());
            v.push(drain());
            v.push(Step::auto(
                "backup",
                "Back up the current state",
                format!(
                    "`{} {db} -f {}/{}<timestamp>.sql`, then keep the newest {} of those backups",
                    cfg.pg_dump, cfg.backup_dir, OWN_PREFIX, cfg.keep_backups
                ),
            )
            // The dump only reads the database, but the runbook's
            // retention deletes the older backups past the newest N. The
            // file is named by the run's stamp: a second try writes the
            // same file again and prunes the same set.
            .effect(Effect::Destructive)
            .repeatable());
            if ctx.level == SCHEMA {
                v.push(
                    Step::auto(
                        "migrate-down",
                        "Apply the down migration",
                        if cfg.down_migration.is_empty() {
                            cmd(&cfg.migrate_down_argv())
                        } else {
                            format!(
                                "`{} {db} -X -w -v ON_ERROR_STOP=1 -1 -f <copy>` of {} as read before any checkout (kept for the incident; else read from the working tree, else from the git history), the copy saved in {}",
                                cfg.psql, cfg.down_migration, cfg.backup_dir
                            )
                        },
                    )
                    // Drops what the migration added, data with it. Not
                    // repeatable: whether the configured down migration can
                    // run twice is the migration's business (the runbook's
                    // uses IF EXISTS, others may not), so a cut-short one goes
                    // to a person.
                    .effect(Effect::Destructive),
                );
                v.push(Step::auto(
                    "verify-schema",
                    "Verify schema and row counts",
                    format!(
                        "Columns of {} against stable_schema, row counts of {} equal to before the migration, the integrity queries return 0",
                        if cfg.stable_schema.is_empty() { "no table (stable_schema is empty)".into() } else { cfg.stable_schema.keys().cloned().collect::<Vec<_>>().join(", ") },
                        cfg.count_tables.join(", ")
                    ),
                )
                .observe()
                .repeatable());
            } else {
                let file = restore_choice(ctx, cfg).unwrap_or_else(|e| e.into_message());
                v.push(Step::auto(
                    "restore",
                    "Restore from backup",
                    format!(
                        "`{} --force` and `{}` of the database in {db}, then `{} {db} -f {file}`",
                        cfg.dropdb, cfg.createdb, cfg.psql
                    ),
                )
                // Drops the live database. Repeatable: the backup is
                // pinned and writes are off (maintenance-on), so a restore
                // cut short is dropped and loaded again from the same file,
                // ending where one whole restore would.
                .effect(Effect::Destructive)
                .repeatable());
                v.push(Step::auto(
                    "verify-data",
                    "Verify the restoration",
                    format!("Row counts of {} above 0, schema against stable_schema, the integrity queries return 0", cfg.count_tables.join(", ")),
                )
                .observe()
                .repeatable());
            }
            v.push(
                Step::auto(
                    "maintenance-off",
                    "Allow writes again",
                    format!("POST {}", cfg.url(&cfg.maintenance_disable_path)),
                )
                // Undoes maintenance-on; twice is once.
                .reversible()
                .repeatable(),
            );
            resumes(&mut v);
        }
        other => bail!("the queue-app plugin has levels 1-6; level {other} was asked for"),
    }
    Ok(v)
}

struct QueueApp;

impl Plugin for QueueApp {
    fn describe(ctx: &Context) -> Result<PluginInfo> {
        let cfg = Config::load(ctx)?;
        let mut needs = Needs::default();
        for h in cfg.http_needs() {
            needs = needs.http(h);
        }
        for p in cfg.programs() {
            needs = needs.exec(p);
        }
        needs = needs.tcp(format!("{}:{}", cfg.redis_host, cfg.redis_port));
        if cfg.database_url.is_empty() {
            needs = needs.env("DATABASE_URL");
        } else if let Some((h, p)) = db_host_port(&cfg.database_url) {
            needs = needs.tcp(format!("{h}:{p}"));
        }
        needs = needs.read(&cfg.app_dir).write(&cfg.backup_dir);
        if !cfg.app_log.is_empty() {
            needs = needs.read(&cfg.app_log);
        }
        let mut info = PluginInfo::new(
            "queue-app",
            env!("CARGO_PKG_VERSION"),
            "queue-app (API on :3001, Bull queues, Redis, PostgreSQL)",
            "The Rollback Plan runbook: feature flag, cache, queue workers, code, database schema, database restore",
        )
        .needs(needs);
        for l in levels() {
            info = info.level(l);
        }
        Ok(info)
    }

    fn assess(ctx: &Context) -> Result<Assessment> {
        let cfg = Config::load(ctx)?;
        let m = measure(ctx, &cfg)?;
        let d = decide(&cfg, &m);
        let f = findings(&cfg, &m);
        let summary = format!("{} {}: {}", pname(d.priority), d.scenario, d.why);
        Ok(if d.rollback {
            Assessment::rollback(severity(d.priority), d.level, &d.scenario, summary)
                .with_findings(f)
        } else if d.priority == Priority::Healthy {
            Assessment::healthy(summary).with_findings(f)
        } else {
            let mut a =
                Assessment::healthy(format!("{summary} (no automatic rollback)")).with_findings(f);
            a.severity = severity(d.priority);
            a.scenario = d.scenario;
            a
        })
    }

    fn plan(ctx: &Context) -> Result<Vec<Step>> {
        let cfg = Config::load(ctx)?;
        step_list(ctx, &cfg)
    }

    fn run_step(ctx: &Context, step: &str) -> Result<StepOutcome> {
        let cfg = Config::load(ctx)?;
        let cfg = &cfg;
        if let Some(q) = step.strip_prefix("resume-") {
            return resume_queue(ctx, cfg, q);
        }
        if let Some(f) = step.strip_prefix("flag-") {
            return flag(ctx, cfg, f);
        }
        match (ctx.level, step) {
            (_, "pause-queues") => pause_all(ctx, cfg),
            (_, "drain") => drain(ctx, cfg),
            (_, "health") => wait_health(ctx, cfg, 2),
            (_, "flush") => flush(ctx, cfg),
            (_, "restart-redis") => restart_redis(ctx, cfg),
            (_, "ping") => ping(ctx, cfg),
            (_, "warm") => warm(ctx, cfg),
            (_, "stop-workers") => {
                command_step(cfg, &cfg.worker_stop_command, "stopping the workers")
            }
            (_, "clean") => {
                let r = post(
                    ctx,
                    cfg,
                    &cfg.url(&cfg.clean_all_path),
                    "cleaning failed jobs",
                )?;
                Ok(match r {
                    Ok(m) => StepOutcome::ok(m),
                    Err(e) => StepOutcome::failed(e),
                })
            }
            (_, "revert-queue-code") => {
                let p = cfg.queue_code_path.clone();
                checkout(ctx, cfg, Some(&p))
            }
            (_, "build") => command_step(cfg, &cfg.build_command, "building"),
            (_, "restart-workers") => restart(
                ctx,
                cfg,
                &cfg.worker_restart_command,
                "restarting the workers",
            ),
            (_, "identify") => identify(ctx, cfg),
            (_, "checkout") => checkout(ctx, cfg, None),
            (_, "install") => command_step(cfg, &cfg.install_command, "installing dependencies"),
            (_, "restart") => restart(ctx, cfg, &cfg.restart_command, "restarting the services"),
            (_, "smoke") => command_step(cfg, &cfg.smoke_command, "smoke tests"),
            (_, "maintenance-on") => maintenance(ctx, cfg, true),
            (_, "maintenance-off") => maintenance(ctx, cfg, false),
            (_, "backup") => backup(ctx, cfg),
            (_, "migrate-down") => migrate_down(ctx, cfg),
            (_, "verify-schema") => verify_schema(ctx, cfg),
            (_, "restore") => restore(ctx, cfg),
            (_, "verify-data") => verify_data(ctx, cfg),
            (l, other) => bail!("unknown step {other:?} of level {l}"),
        }
    }

    fn verify(ctx: &Context) -> Result<Verification> {
        let cfg = Config::load(ctx)?;
        let cfg = &cfg;
        let a = api(cfg)?;
        let mut f = vec![Finding::status(
            format!("GET {}", cfg.url(&cfg.health_path)),
            a.health_status,
            200,
            399,
        )];
        if a.requests > 0 {
            f.push(Finding::at_most(
                format!("error rate ({} sampled API requests)", a.requests),
                (a.error_percent() * 10.0).round() / 10.0,
                cfg.error_rate_verify_percent,
                "%",
            ));
            f.push(Finding::at_most(
                "response time (P95)",
                (a.p95_ms * 10.0).round() / 10.0,
                cfg.baseline_ms,
                "ms",
            ));
        }
        // "No errors in logs": ERROR lines written since the restart.
        if !cfg.app_log.is_empty()
            && let Some(off) = storage::get(&ctx.run_key("log_offset"))?
            && let Ok(text) = storage::read_to_string(&cfg.app_log)
        {
            let off: usize = off.parse().unwrap_or(0);
            let new = text.get(off.min(text.len())..).unwrap_or("");
            let errors = new.lines().filter(|l| l.contains("ERROR")).count();
            f.push(Finding::at_most(
                format!("ERROR lines in {} since the restart", cfg.app_log),
                errors as f64,
                0.0,
                "lines",
            ));
        }
        // "Can connect to database", "Can connect to Redis".
        let db = db_state(ctx, cfg)?;
        f.push(match &db {
            Db::Ok(v) | Db::Reachable(v) => {
                Finding::new("database connection", v, "connects", false)
            }
            Db::Failed(v) => Finding::new("database connection", v, "connects", true),
        });
        let c = cache_state(ctx, cfg)?;
        f.push(Finding::new(
            format!("Redis {}:{}", cfg.redis_host, cfg.redis_port),
            &c.detail,
            "answers",
            !c.answers,
        ));
        // Features: a flagged one only has to stop failing with 5xx.
        let flagged: Vec<String> = storage::get_json(&ctx.run_key("flagged"))?.unwrap_or_default();
        for fe in &cfg.features {
            let r = HttpProbe::get(cfg.url(&fe.path))
                .timeout_ms(cfg.probe_timeout_ms)
                .probe()?;
            if flagged.contains(&fe.name) {
                f.push(Finding::new(
                    format!("feature {} (disabled by its flag)", fe.name),
                    r.status.map_or(r.detail.clone(), |s| s.to_string()),
                    "no 5xx",
                    r.status.is_none_or(|s| s >= 500),
                ));
            } else {
                f.push(Finding::status(
                    format!("feature {}: GET {}", fe.name, cfg.url(&fe.path)),
                    r.status,
                    200,
                    399,
                ));
            }
        }
        // Checkpoint 3: queues processing, failure rate normal.
        if ctx.level >= QUEUE {
            match queue_stats(cfg)? {
                Ok(qs) => {
                    for q in qs.iter().filter(|q| cfg.queues.contains(&q.name)) {
                        let (d, since) = since_resume(ctx, q)?;
                        f.extend(queue_findings(q, &d, &since, cfg));
                    }
                }
                Err(e) => f.push(Finding::new("queue stats", e, "JSON queue counts", true)),
            }
        }
        match ctx.level {
            CACHE => {
                if let Some(mb) = c.used_mb {
                    f.push(Finding::at_most(
                        "Redis used_memory",
                        (mb * 10.0).round() / 10.0,
                        cfg.cache_max_memory_mb,
                        "MB",
                    ));
                }
                // What the flush deleted, and what matches now: the warm
                // (and the app) fill the cache again, so that is a record,
                // not a check.
                if let Some(n) = pattern_keys(cfg)? {
                    let deleted =
                        storage::get(&ctx.run_key("cache_deleted"))?.unwrap_or_else(|| "?".into());
                    f.push(Finding::new(
                        format!(
                            "cache keys matching {} (the flush deleted {deleted})",
                            cfg.cache_patterns.join(", ")
                        ),
                        format!("{n} keys now"),
                        "refilled by the warm and the app",
                        false,
                    ));
                }
            }
            QUEUE => {
                if let Some(t) = ctx.pinned(STABLE_COMMIT)? {
                    let out = cfg
                        .git(&["diff", "--quiet", &t, "--", &cfg.queue_code_path])
                        .run()?;
                    if !out.simulated {
                        f.push(Finding::check(
                            format!("{} at {}", cfg.queue_code_path, short(&t)),
                            out.exit_code == Some(0),
                            if out.exit_code == Some(0) {
                                "same"
                            } else {
                                "differs"
                            },
                            "same",
                        ));
                    }
                }
            }
            CODE => {
                if let Some(t) = ctx.pinned(STABLE_COMMIT)? {
                    f.push(Finding::equals("git HEAD", short(&head(cfg)?), short(&t)));
                }
                let v = HttpProbe::get(cfg.url(&cfg.version_path))
                    .timeout_ms(cfg.probe_timeout_ms)
                    .probe()?;
                f.push(Finding::new(
                    format!("GET {}", cfg.url(&cfg.version_path)),
                    one_line(&v.body, 80),
                    "answers (running version)",
                    !v.healthy,
                ));
                // The schema the stable code expects: what the next level,
                // the down migration, addresses (5.3 "Check schema").
                if ctx.executes() {
                    f.extend(schema_findings(cfg)?);
                }
            }
            SCHEMA if ctx.executes() => f.extend(db_checks(ctx, cfg, true)?),
            RESTORE if ctx.executes() => f.extend(db_checks(ctx, cfg, false)?),
            _ => {}
        }
        let schema_failed = f.iter().any(|x| x.breached && is_schema_finding(x));
        let v = Verification::from_findings(f);
        // Database rollbacks are "high-risk operations" (5.1): after one
        // that did not bring the service back, the next step is a person's,
        // not an automatic dropdb (level 6) or nothing higher.
        Ok(match ctx.level {
            // The next level is the down migration: it changes the schema,
            // so it is the answer only to a schema the stable code does not
            // expect. Errors, ERROR lines or a failing feature on the
            // stable code are a bug a migration cannot fix (issue 11).
            CODE if schema_failed => v.or_escalate_to(SCHEMA),
            CODE => v.or_stop(format!(
                "the code rollback did not bring the service back, and no schema check failed ({}): the next level, the down migration (5.1), changes the schema and would not fix what failed; a person decides (the errors are in the stable code or its environment; `rewind run --level 5` runs the down migration all the same)",
                if cfg.stable_schema.is_empty() {
                    "none is configured: set stable_schema to let a schema that the stable code does not expect lead to the down migration".to_string()
                } else {
                    format!(
                        "{} as the stable version has them",
                        cfg.stable_schema.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                }
            )),
            SCHEMA => v.or_stop(
                "the schema rollback (down migration) did not bring the service back; the next level drops the database and restores a backup (5.1 method 2, \"DANGEROUS\"): a person decides, after checking the backup and what the migration left",
            ),
            RESTORE => v.or_stop(
                "the database was restored from the backup and the service is still not healthy: a person decides (check the restored data, the backup chosen, and the code running against it)",
            ),
            _ => v,
        })
    }
}

rewind_sdk::export_plugin!(QueueApp);
