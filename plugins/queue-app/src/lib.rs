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
//! 2. cache: flush all or delete keys by pattern (SCAN), restart Redis if
//!    needed, PING, warm;
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
        LevelInfo::new(1, "feature flag", "Single feature broken: disable it with its feature flag and fix forward").rto_ms(60 * 60_000),
        LevelInfo::new(2, "cache", "4.3 Cache/Redis rollback: flush all or delete keys by pattern, restart Redis if needed, PING, warm").rto_ms(60 * 60_000),
        LevelInfo::new(3, "queue workers", "4.2 Queue system rollback: stop workers, drain, pause, clean, revert the queue code, rebuild, restart workers, resume gradually").rto_ms(30 * 60_000),
        LevelInfo::new(4, "application code", "4.1 Application code rollback: pause queues, drain, checkout stable, install, build, restart, health, smoke tests, resume queues one at a time").rto_ms(15 * 60_000),
        LevelInfo::new(5, "database schema", "5.1 Method 1: stop writes, pause queues, pg_dump backup, down migration, verify schema and row counts").rto_ms(60 * 60_000),
        LevelInfo::new(6, "database restore", "5.1 Method 2: stop writes, pause queues, pg_dump backup, dropdb, createdb, restore from backup, verify").rto_ms(60 * 60_000),
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
    let best_effort = if ctx.level == CODE {
        "; best effort: if the API cannot do it, say so and roll the code back anyway"
    } else {
        ""
    };
    let pause = || {
        Step::auto(
            "pause-queues",
            "Pause all queues",
            format!(
                "POST {} (prevent new jobs){best_effort}",
                cfg.url(&cfg.pause_all_path)
            ),
        )
    };
    let drain = || {
        Step::auto(
            "drain",
            "Wait for active jobs to drain",
            format!(
                "Poll GET {} every {} until no queue has an active job; fail after {}{best_effort}",
                cfg.url(&cfg.queue_stats_path),
                fmt_ms(cfg.drain_poll_ms),
                fmt_ms(cfg.drain_timeout_ms)
            ),
        )
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
            ));
        }
    };
    let head_now = head(cfg)
        .map(|h| short(&h).to_string())
        .unwrap_or_else(|e| e.into_message());
    let db = cfg.db_url().unwrap_or_else(|_| "$DATABASE_URL".into());
    let mut v = Vec::new();
    match ctx.level {
        FLAG => {
            let flagged: Vec<String> = match storage::get_json(&ctx.run_key("to_flag"))? {
                Some(v) => v,
                None => {
                    let b: Vec<String> = broken_features(cfg)?
                        .into_iter()
                        .filter(|(_, f, _)| *f)
                        .map(|(n, _, _)| n)
                        .collect();
                    storage::set_json(&ctx.run_key("to_flag"), &b)?;
                    b
                }
            };
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
                v.push(Step::auto(
                    format!("flag-{n}"),
                    format!("Disable feature {n}"),
                    format!(
                        "{} {} with {} (use feature flag, fix forward)",
                        f.flag_method,
                        cfg.url(f.flag_path.as_deref().unwrap_or_default()),
                        f.flag_body
                    ),
                ));
            }
            v.push(Step::auto(
                "health",
                "Verify health",
                format!(
                    "Wait for GET {} (200-399), up to {}",
                    cfg.url(&cfg.health_path),
                    fmt_ms(cfg.health_timeout_ms)
                ),
            ));
        }
        CACHE => {
            v.push(Step::auto(
                "flush",
                if cfg.cache_patterns.is_empty() { "Clear all cache" } else { "Clear cache keys by pattern" },
                if cfg.cache_patterns.is_empty() {
                    format!("`{}` (nuclear option)", cfg.redis(&["FLUSHALL"]).display())
                } else {
                    format!(
                        "For each of {}: `{}` (SCAN, never KEYS), then DEL the keys in batches of {}",
                        cfg.cache_patterns.join(", "),
                        cfg.redis(&["--scan", "--pattern", "<pattern>"]).display(),
                        cfg.del_batch
                    )
                },
            ));
            v.push(Step::auto(
                "restart-redis",
                "Restart Redis if needed",
                format!(
                    "When Redis does not answer PING or uses more than {} MB after the flush: {}",
                    cfg.cache_max_memory_mb,
                    cmd(&cfg.redis_restart_command)
                ),
            ));
            v.push(Step::auto(
                "ping",
                "Verify Redis health",
                format!("`{}` must answer PONG", cfg.redis(&["PING"]).display()),
            ));
            v.push(Step::auto(
                "warm",
                "Warm the cache",
                format!("POST {}", cfg.url(&cfg.cache_warm_path)),
            ));
        }
        QUEUE => {
            v.push(Step::auto(
                "stop-workers",
                "Stop all workers",
                cmd(&cfg.worker_stop_command),
            ));
            v.push(drain());
            v.push(pause());
            v.push(Step::auto(
                "clean",
                "Clean failed jobs",
                format!("POST {}", cfg.url(&cfg.clean_all_path)),
            ));
            v.push(Step::auto(
                "revert-queue-code",
                "Roll back the queue code only",
                format!(
                    "`git checkout {} -- {}` in {} (HEAD {head_now} stays)",
                    cfg.stable_ref, cfg.queue_code_path, cfg.app_dir
                ),
            ));
            v.push(Step::auto("build", "Rebuild", cmd(&cfg.build_command)));
            v.push(Step::auto(
                "restart-workers",
                "Restart workers",
                cmd(&cfg.worker_restart_command),
            ));
            resumes(&mut v);
        }
        CODE => {
            v.push(Step::auto(
                "identify",
                "Identify the last stable commit",
                format!(
                    "`git rev-parse {}` and `git log --oneline -5` in {} (HEAD is {head_now})",
                    cfg.stable_ref, cfg.app_dir
                ),
            ));
            v.push(pause());
            v.push(drain());
            v.push(Step::auto(
                "checkout",
                "Check out the stable version",
                format!("`git checkout <{}>` in {}", cfg.stable_ref, cfg.app_dir),
            ));
            v.push(Step::auto(
                "install",
                "Install dependencies",
                cmd(&cfg.install_command),
            ));
            v.push(Step::auto(
                "build",
                "Build the application",
                cmd(&cfg.build_command),
            ));
            v.push(Step::auto(
                "restart",
                "Restart services",
                cmd(&cfg.restart_command),
            ));
            v.push(Step::auto(
                "health",
                "Verify health",
                format!(
                    "Wait for GET {} (200-399), up to {} (the runbook's sleep 10)",
                    cfg.url(&cfg.health_path),
                    fmt_ms(cfg.health_timeout_ms)
                ),
            ));
            v.push(Step::auto(
                "smoke",
                "Run smoke tests",
                cmd(&cfg.smoke_command),
            ));
            resumes(&mut v);
        }
        SCHEMA | RESTORE => {
            v.push(Step::auto(
                "maintenance-on",
                "Stop all writes",
                format!("POST {}", cfg.url(&cfg.maintenance_enable_path)),
            ));
            v.push(pause());
            v.push(drain());
            v.push(Step::auto(
                "backup",
                "Back up the current state",
                format!(
                    "`{} {db} -f {}/{}<timestamp>.sql`, then keep the newest {} of those backups",
                    cfg.pg_dump, cfg.backup_dir, OWN_PREFIX, cfg.keep_backups
                ),
            ));
            if ctx.level == SCHEMA {
                v.push(Step::auto(
                    "migrate-down",
                    "Apply the down migration",
                    cmd(&cfg.migrate_down_command),
                ));
                v.push(Step::auto(
                    "verify-schema",
                    "Verify schema and row counts",
                    format!(
                        "Columns of {} against stable_schema, row counts of {} equal to before the migration, the integrity queries return 0",
                        if cfg.stable_schema.is_empty() { "no table (stable_schema is empty)".into() } else { cfg.stable_schema.keys().cloned().collect::<Vec<_>>().join(", ") },
                        cfg.count_tables.join(", ")
                    ),
                ));
            } else {
                let file = restore_file(cfg).unwrap_or_else(|e| e.into_message());
                v.push(Step::auto(
                    "restore",
                    "Restore from backup",
                    format!(
                        "`{} --force` and `{}` of the database in {db}, then `{} {db} -f {file}`",
                        cfg.dropdb, cfg.createdb, cfg.psql
                    ),
                ));
                v.push(Step::auto(
                    "verify-data",
                    "Verify the restoration",
                    format!("Row counts of {} above 0, schema against stable_schema, the integrity queries return 0", cfg.count_tables.join(", ")),
                ));
            }
            v.push(Step::auto(
                "maintenance-off",
                "Allow writes again",
                format!("POST {}", cfg.url(&cfg.maintenance_disable_path)),
            ));
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
            (_, "migrate-down") => migrate_down(cfg),
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
                        f.push(Finding::check(
                            format!("queue {} running", q.name),
                            !q.paused,
                            if q.paused { "paused" } else { "running" },
                            "running",
                        ));
                        f.push(Finding::at_most(
                            format!("queue {}: failure rate", q.name),
                            (q.failure_percent() * 10.0).round() / 10.0,
                            cfg.queue_failure_percent,
                            "%",
                        ));
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
                if let Some(n) = pattern_keys(cfg)? {
                    f.push(Finding::at_most(
                        format!("keys matching {}", cfg.cache_patterns.join(", ")),
                        n as f64,
                        0.0,
                        "keys",
                    ));
                }
            }
            QUEUE => {
                if let Some(t) = storage::get(&ctx.run_key("target"))? {
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
                if let Some(t) = storage::get(&ctx.run_key("target"))? {
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
            }
            SCHEMA if ctx.executes() => f.extend(db_checks(ctx, cfg, true)?),
            RESTORE if ctx.executes() => f.extend(db_checks(ctx, cfg, false)?),
            _ => {}
        }
        Ok(Verification::from_findings(f))
    }
}

rewind_sdk::export_plugin!(QueueApp);
