//! The steps of every level, as the runbook orders them.

use rewind_sdk::http::HttpRequest;
use rewind_sdk::prelude::*;
use rewind_sdk::storage::EntryKind;

use crate::config::{Config, db_name_and_maintenance};
use crate::measure::*;

pub type Out = Result<StepOutcome>;

/// A configured command as one step; skipped when configured empty.
pub fn command_step(cfg: &Config, argv: &[String], what: &str) -> Out {
    let Some(cmd) = cfg.cmd(argv) else {
        return Ok(StepOutcome::ok(format!(
            "{what}: no command configured, skipped"
        )));
    };
    Ok(match cmd.run_ok(what)? {
        Ok(m) => StepOutcome::ok(m),
        Err(e) => StepOutcome::failed(e),
    })
}

/// `POST` a control endpoint; 2xx expected.
pub fn post(
    ctx: &Context,
    cfg: &Config,
    url: &str,
    what: &str,
) -> Result<std::result::Result<String, String>> {
    let r = HttpRequest::post(url, "{}")
        .header("content-type", "application/json")
        .timeout_ms(cfg.probe_timeout_ms.max(5000))
        .send();
    match r {
        Ok(r) if r.simulated => Ok(Ok(format!("would POST {url}"))),
        Ok(r) if (200..300).contains(&r.status) => Ok(Ok(format!("POST {url} -> {}", r.status))),
        Ok(r) => Ok(Err(format!(
            "{what}: POST {url} -> {} {}",
            r.status,
            one_line(&r.body, 120)
        ))),
        Err(Error::Failed(m)) | Err(Error::Timeout(m)) if ctx.executes() => {
            Ok(Err(format!("{what}: POST {url}: {m}")))
        }
        Err(e) => Err(e.into()),
    }
}

fn post_step(ctx: &Context, cfg: &Config, path: &str, what: &str) -> Out {
    if path.is_empty() {
        return Ok(StepOutcome::ok(format!(
            "{what}: no endpoint configured, skipped"
        )));
    }
    Ok(match post(ctx, cfg, &cfg.url(path), what)? {
        Ok(m) => StepOutcome::ok(m),
        Err(e) => StepOutcome::failed(e),
    })
}

/// Pause every queue. At the code level this is best effort, as in the
/// runbook's emergency rollback (`curl .../pause-all || echo "Warning:
/// Could not pause queues"`): when the API is down, nothing can be paused
/// through it, and stopping there would leave the broken release serving.
/// Elsewhere (queue code, schema, restore) a failed pause stops the level.
pub fn pause_all(ctx: &Context, cfg: &Config) -> Out {
    let out = post_step(ctx, cfg, &cfg.pause_all_path, "pausing all queues")?;
    Ok(if out.ok || ctx.level != CODE {
        out
    } else {
        best_effort(out, "queues paused")
    })
}

/// A failed best-effort step: reported as done with a warning and a
/// breached finding, so the run carries on and the report says what did
/// not happen.
fn best_effort(failed: StepOutcome, what: &str) -> StepOutcome {
    let finding = Finding::new(what, "no", "yes", true);
    StepOutcome::ok(format!(
        "warning: {}; carrying on (best effort at this level, as the runbook's emergency rollback does)",
        failed.message
    ))
    .with_findings(vec![finding])
}

/// Wait until no queue has an active job, for at most `drain_timeout_ms`:
/// one GET of the stats every `drain_poll_ms`, and between two polls the
/// plugin sleeps (a WASI sleep: no CPU, cut at the call's deadline).
///
/// At the code level the drain is best effort: the runbook's emergency
/// rollback does not drain at all, and an API that cannot say how many
/// jobs run (500, connection refused, at the first poll or a later one) or
/// jobs that outlast the deadline must not leave the broken release
/// serving. Elsewhere (queue code, schema, restore) it stops the level.
pub fn drain(ctx: &Context, cfg: &Config) -> Out {
    let url = cfg.url(&cfg.queue_stats_path);
    if !ctx.executes() {
        let now = match queue_stats(cfg)? {
            Ok(q) => format!("{} active now", q.iter().map(|q| q.active).sum::<u64>()),
            Err(e) => e,
        };
        return Ok(StepOutcome::ok(format!(
            "would wait until GET {url} shows 0 active jobs, polling every {} for at most {} ({now})",
            fmt_ms(cfg.drain_poll_ms),
            fmt_ms(cfg.drain_timeout_ms)
        )));
    }
    let best = ctx.level == CODE;
    let start = now_ms();
    let mut seen = Vec::new();
    let mut polls = 0u32;
    loop {
        let stats = queue_stats(cfg)?;
        polls += 1;
        let stats = match stats {
            Ok(s) => s,
            Err(e) if best => {
                return Ok(best_effort(
                    StepOutcome::failed(format!("cannot watch the drain (poll {polls}): {e}")),
                    "active jobs drained",
                ));
            }
            Err(e) => return Ok(StepOutcome::failed(format!("draining: {e}"))),
        };
        let active: u64 = stats.iter().map(|q| q.active).sum();
        if seen.last() != Some(&active) {
            seen.push(active);
        }
        let elapsed = now_ms().saturating_sub(start);
        let finding = Finding::at_most("active jobs after the drain", active as f64, 0.0, "jobs");
        if active == 0 {
            return Ok(StepOutcome::ok(format!(
                "drained: active jobs {} -> 0 in {} ({polls} polls, every {})",
                seen.iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(" -> "),
                fmt_ms(elapsed),
                fmt_ms(cfg.drain_poll_ms)
            ))
            .with_findings(vec![finding]));
        }
        if elapsed >= cfg.drain_timeout_ms {
            let msg = format!(
                "{active} jobs still active after {} ({polls} polls, deadline {})",
                fmt_ms(elapsed),
                fmt_ms(cfg.drain_timeout_ms)
            );
            return Ok(if best {
                best_effort(StepOutcome::failed(msg), "active jobs drained")
            } else {
                StepOutcome::failed(format!("{msg}: not rolling back under running jobs"))
                    .with_findings(vec![finding])
            });
        }
        sleep_ms(cfg.drain_poll_ms.min(cfg.drain_timeout_ms - elapsed).max(1));
    }
}

/// Sleep between two polls. A WASI sleep: the host spends no CPU of the
/// plugin's budget on it and cuts it at the call's deadline (`[limits]
/// call_time`). Not for fixed waits before a check: those are host-polled
/// waits (`wait_health`).
fn sleep_ms(ms: u64) {
    std::thread::sleep(std::time::Duration::from_millis(ms));
}

/// Wait until /health is healthy: the runbook's `sleep 10; curl /health`.
pub fn wait_health(ctx: &Context, cfg: &Config, successes: u32) -> Out {
    let probe = cfg.health_probe();
    if !ctx.executes() {
        return Ok(StepOutcome::ok(format!(
            "would wait for GET {} (200-399), up to {}",
            probe.url,
            fmt_ms(cfg.health_timeout_ms)
        )));
    }
    let w = probe.wait(
        WaitPolicy::every(cfg.health_interval_ms)
            .timeout_ms(cfg.health_timeout_ms)
            .successes(successes.max(1)),
    )?;
    let f = vec![
        Finding::status(format!("GET {}", probe.url), w.last.status, 200, 399),
        Finding::at_most(
            "time to healthy",
            w.elapsed_ms as f64,
            cfg.health_timeout_ms as f64,
            "ms",
        ),
    ];
    let msg = format!(
        "{} after {} probes in {} (last: {})",
        if w.healthy { "healthy" } else { "not healthy" },
        w.attempts,
        fmt_ms(w.elapsed_ms),
        match w.last.status {
            Some(s) => format!("{s} {}", one_line(&w.last.body, 100)),
            None => w.last.detail.clone(),
        }
    );
    Ok(if w.healthy {
        StepOutcome::ok(msg)
    } else {
        StepOutcome::failed(msg)
    }
    .with_findings(f))
}

/// Resume one queue, then "wait and monitor": /health must stay healthy
/// for `resume_monitor_ms` and the queue must be running and not failing.
pub fn resume_queue(ctx: &Context, cfg: &Config, queue: &str) -> Out {
    let url = cfg.resume_url(queue);
    if ctx.executes() {
        baseline(ctx, cfg, queue)?;
    }
    let said = match post(ctx, cfg, &url, &format!("resuming {queue}"))? {
        Ok(m) => m,
        Err(e) => return Ok(StepOutcome::failed(e)),
    };
    if !ctx.executes() {
        return Ok(StepOutcome::ok(format!(
            "{said}, then watch GET {} for {} before the next queue",
            cfg.url(&cfg.health_path),
            fmt_ms(cfg.resume_monitor_ms)
        )));
    }
    let n = (cfg.resume_monitor_ms / cfg.health_interval_ms.max(1)).max(1) as u32;
    let w = cfg.health_probe().wait(
        WaitPolicy::every(cfg.health_interval_ms)
            .timeout_ms(cfg.resume_monitor_ms + cfg.health_timeout_ms)
            .successes(n),
    )?;
    let mut f = vec![Finding::status(
        format!("GET {} after resuming {queue}", cfg.url(&cfg.health_path)),
        w.last.status,
        200,
        399,
    )];
    if !w.healthy {
        return Ok(StepOutcome::failed(format!(
            "{said}; /health did not stay healthy ({}): the next queues stay paused",
            w.last.detail
        ))
        .with_findings(f));
    }
    let stats = match queue_stats(cfg)? {
        Ok(s) => s,
        Err(e) => return Ok(StepOutcome::failed(format!("{said}; {e}")).with_findings(f)),
    };
    let Some(q) = stats.iter().find(|q| q.name == queue) else {
        return Ok(
            StepOutcome::failed(format!("{said}; no queue {queue:?} in the stats"))
                .with_findings(f),
        );
    };
    let (d, since) = since_resume(ctx, q)?;
    f.extend(queue_findings(q, &d, &since, cfg));
    let ok = !q.paused && d.failure_percent() <= cfg.queue_failure_percent;
    let msg = format!(
        "{said}; healthy for {} probes; {queue}: {} active, {} waiting, {} completed and {} failed {since}{}",
        w.attempts,
        q.active,
        q.waiting,
        d.completed,
        d.failed,
        if q.paused { ", still paused" } else { "" }
    );
    Ok(if ok {
        StepOutcome::ok(msg)
    } else {
        StepOutcome::failed(msg)
    }
    .with_findings(f))
}

/// The queue's counters before its resume at this level, kept for the run
/// (a resumed run keeps the first; a higher level after this one takes
/// its own, so jobs that failed under a lower level do not count): Bull's `completed` and `failed` count every job
/// since the queue was made, so the bad release's failures are in them.
/// What the rollback is judged on is what happened after the resume.
fn baseline(ctx: &Context, cfg: &Config, queue: &str) -> Result<()> {
    let key = ctx.run_key(&format!("baseline-{}-{queue}", ctx.level));
    if storage::get(&key)?.is_some() {
        return Ok(());
    }
    if let Ok(stats) = queue_stats(cfg)?
        && let Some(q) = stats.into_iter().find(|q| q.name == queue)
    {
        storage::set_json(&key, &q)?;
    }
    Ok(())
}

/// The jobs a queue completed and failed since its baseline, and how that
/// window reads ("since the resume", or the whole history when no
/// baseline could be read).
pub fn since_resume(ctx: &Context, q: &QueueStats) -> Result<(QueueStats, String)> {
    let base: Option<QueueStats> =
        storage::get_json(&ctx.run_key(&format!("baseline-{}-{}", ctx.level, q.name)))?;
    Ok(match base {
        Some(b) => (q.since(&b), "since the resume".to_string()),
        None => (q.clone(), "in all (no count before the resume)".to_string()),
    })
}

/// "Queue running" and "failure rate normal" of one queue, the rate over
/// the jobs since its resume.
pub fn queue_findings(q: &QueueStats, d: &QueueStats, since: &str, cfg: &Config) -> Vec<Finding> {
    vec![
        Finding::check(
            format!("queue {} running", q.name),
            !q.paused,
            if q.paused { "paused" } else { "running" },
            "running",
        ),
        Finding::at_most(
            format!(
                "queue {}: failure rate ({} failed of {} jobs done {since})",
                q.name,
                d.failed,
                d.failed + d.completed
            ),
            (d.failure_percent() * 10.0).round() / 10.0,
            cfg.queue_failure_percent,
            "%",
        ),
    ]
}

// ----------------------------------------------------------------- git

/// Where HEAD points now, read from `.git` (works in every mode).
pub fn head(cfg: &Config) -> Result<String> {
    let git = cfg.app_path(".git");
    let h =
        storage::read_to_string(&format!("{git}/HEAD")).context(format!("reading {git}/HEAD"))?;
    let h = h.trim();
    let Some(r) = h.strip_prefix("ref: ") else {
        return Ok(h.to_string());
    };
    if let Ok(v) = storage::read_to_string(&format!("{git}/{r}")) {
        return Ok(v.trim().to_string());
    }
    if let Ok(p) = storage::read_to_string(&format!("{git}/packed-refs")) {
        for l in p.lines() {
            if let Some((sha, name)) = l.split_once(' ')
                && name == r
            {
                return Ok(sha.to_string());
            }
        }
    }
    bail!("cannot resolve {r} in {git}")
}

pub fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// The stable commit this incident goes back to: `git rev-parse` of
/// `stable_ref`, decided once and pinned (`Context::pin`). `stable_ref` is
/// relative (`HEAD~1`): computed again after the checkout it would name
/// the commit below the stable one, so a resumed run, or a second run of
/// the same incident, would walk one more commit back. `None` when git
/// cannot run (a dry run) and nothing was pinned before.
pub fn target(ctx: &Context, cfg: &Config) -> Result<Option<String>> {
    if let Some(t) = ctx.pinned(STABLE_COMMIT)? {
        return Ok(Some(t));
    }
    let spec = format!("{}^{{commit}}", cfg.stable_ref);
    let out = cfg.git(&["rev-parse", "--verify", &spec]).run()?;
    if out.simulated {
        return Ok(None);
    }
    if out.exit_code != Some(0) {
        bail!(
            "`git rev-parse --verify {spec}` in {}: {}",
            cfg.app_dir,
            one_line(&out.stderr, 200)
        );
    }
    let sha = out.stdout.trim().to_string();
    Ok(Some(ctx.pin(STABLE_COMMIT, || Ok(sha))?))
}

/// The pin key of the stable commit.
pub const STABLE_COMMIT: &str = "stable_commit";

/// Resolve and pin the stable commit, and pin the commit the rollback
/// leaves (the broken release, for whoever wants to go forward again).
/// Reads only, so a second run does what the first did: both answers are
/// the pinned ones.
pub fn identify(ctx: &Context, cfg: &Config) -> Out {
    let now = head(cfg)?;
    keep_down_migration(ctx, cfg, "read before the checkout")?;
    let log = cfg.git(&["log", "--oneline", "-5"]).run()?;
    let t = target(ctx, cfg)?;
    let from = if ctx.executes() {
        ctx.pin("rolled_back_from", || Ok(now.clone()))?
    } else {
        now.clone()
    };
    let recent = one_line(&log.stdout.replace('\n', " | "), 300);
    Ok(StepOutcome::ok(match t {
        Some(t) if t == now && from != now => format!(
            "HEAD {} is the stable commit already (pinned for this incident; the rollback left {}); recent: {recent}",
            short(&now),
            short(&from)
        ),
        Some(t) => format!(
            "HEAD {} -> stable {} ({}); recent: {recent}",
            short(&now),
            short(&t),
            cfg.stable_ref
        ),
        None => format!(
            "HEAD {}; would resolve {} with git rev-parse",
            short(&now),
            cfg.stable_ref
        ),
    }))
}

/// `git checkout <stable>`, or with `path` `git checkout <stable> --
/// <path>` (HEAD stays). Repeatable: when HEAD (or the path) is at the
/// pinned commit already, nothing is done. For a path, uncommitted changes
/// under it are not overwritten: the step fails and says so (HEAD still
/// holds what the checkout replaces, which is what makes it reversible).
pub fn checkout(ctx: &Context, cfg: &Config, path: Option<&str>) -> Out {
    let t = target(ctx, cfg)?.unwrap_or_else(|| cfg.stable_ref.clone());
    // The down migration comes with the release left behind: kept before
    // the tree moves, for a schema rollback after this one.
    keep_down_migration(ctx, cfg, "read before the checkout")?;
    if ctx.executes() {
        match path {
            None if head(cfg)? == t => {
                return Ok(StepOutcome::ok(format!(
                    "HEAD is {} already (the pinned stable commit): nothing to check out",
                    short(&t)
                )));
            }
            None => {}
            Some(p) => {
                let same = cfg.git(&["diff", "--quiet", &t, "--", p]).run()?;
                if same.exit_code == Some(0) {
                    return Ok(StepOutcome::ok(format!(
                        "{p} is at {} already (the pinned stable commit): nothing to check out",
                        short(&t)
                    )));
                }
                // A file that differs from HEAD and from the target is
                // someone's uncommitted work; one that differs from HEAD
                // only is ours, from a checkout cut short.
                let vs_head = changed_files(cfg, "HEAD", p)?;
                let foreign: Vec<String> = changed_files(cfg, &t, p)?
                    .into_iter()
                    .filter(|f| vs_head.contains(f))
                    .collect();
                if !foreign.is_empty() {
                    return Ok(StepOutcome::failed(format!(
                        "uncommitted changes in {} that `git checkout {} -- {p}` would overwrite; commit or stash them and run again",
                        foreign.join(", "),
                        short(&t),
                    )));
                }
            }
        }
    }
    let mut args = vec!["checkout", t.as_str()];
    if let Some(p) = path {
        args.extend(["--", p]);
    }
    let cmd = cfg.git(&args);
    Ok(match cmd.run_ok("checking out the stable version")? {
        Ok(_) if !ctx.executes() => StepOutcome::ok(format!("would run `{}`", cmd.display())),
        Ok(_) => {
            let now = head(cfg)?;
            StepOutcome::ok(match path {
                None => format!("`{}`: HEAD is {}", cmd.display(), short(&now)),
                Some(p) => format!(
                    "`{}`: only {p} is at {}, HEAD stays {}",
                    cmd.display(),
                    short(&t),
                    short(&now)
                ),
            })
        }
        Err(e) => StepOutcome::failed(e),
    })
}

/// Files under `path` whose working copy differs from `commit`.
fn changed_files(cfg: &Config, commit: &str, path: &str) -> Result<Vec<String>> {
    let out = cfg
        .git(&["diff", "--name-only", commit, "--", path])
        .run()?;
    if out.exit_code != Some(0) {
        bail!(
            "`git diff --name-only {commit} -- {path}`: {}",
            one_line(&out.stderr, 200)
        );
    }
    Ok(out.stdout.lines().map(str::to_string).collect())
}

/// The app log's size when the services were restarted: "No errors in
/// logs" counts ERROR lines written after it.
pub fn mark_log(ctx: &Context, cfg: &Config) -> Result<()> {
    if cfg.app_log.is_empty() {
        return Ok(());
    }
    let size = storage::stat(&cfg.app_log)?.map_or(0, |e| e.size);
    Ok(storage::set(&ctx.run_key("log_offset"), &size.to_string())?)
}

pub fn restart(ctx: &Context, cfg: &Config, argv: &[String], what: &str) -> Out {
    mark_log(ctx, cfg)?;
    command_step(cfg, argv, what)
}

// ---------------------------------------------------------------- cache

/// The runbook's "clear specific patterns" (`KEYS "gemini:*" | xargs
/// redis-cli DEL`) with SCAN instead of KEYS, for every pattern (`*`: every
/// cache key). Never FLUSHALL, and never a key of `keep_key_prefixes`:
/// Bull keeps its queues (waiting, active, delayed jobs) as `bull:*` in the
/// same Redis, and flushing them would lose the jobs.
pub fn flush(ctx: &Context, cfg: &Config) -> Out {
    let mut said = Vec::new();
    let mut kept_total = 0usize;
    let mut deleted_total = 0u64;
    for p in &cfg.cache_patterns {
        // SCAN, never KEYS: redis-cli --scan iterates with the cursor.
        let scan = cfg.redis(&["--scan", "--pattern", p]);
        let out = scan.run()?;
        if out.simulated {
            said.push(format!(
                "would run `{}` and DEL the keys in batches of {}, keeping {}",
                scan.display(),
                cfg.del_batch,
                cfg.keep_key_prefixes.join(", ")
            ));
            continue;
        }
        if out.exit_code != Some(0) {
            return Ok(StepOutcome::failed(format!(
                "`{}`: {}",
                scan.display(),
                one_line(&out.stderr, 200)
            )));
        }
        let mut keys: Vec<&str> = out.stdout.lines().filter(|k| !k.is_empty()).collect();
        keys.sort_unstable();
        keys.dedup();
        let found = keys.len();
        keys.retain(|k| cfg.deletable(k));
        let kept = found - keys.len();
        kept_total += kept;
        let mut deleted = 0u64;
        for batch in keys.chunks(cfg.del_batch) {
            let mut args = vec!["DEL"];
            args.extend(batch.iter().copied());
            let del = cfg.redis(&args).run()?;
            let n: u64 = del.stdout.trim().parse().unwrap_or(0);
            if del.exit_code != Some(0) || del.stdout.starts_with("ERR") {
                return Ok(StepOutcome::failed(format!(
                    "DEL of {} keys matching {p}: {}",
                    batch.len(),
                    one_line(&format!("{}{}", del.stdout, del.stderr), 200)
                )));
            }
            deleted += n;
        }
        deleted_total += deleted;
        said.push(format!(
            "{p}: {found} keys found with SCAN, {deleted} deleted in {} DEL batches{}",
            keys.len().div_ceil(cfg.del_batch),
            if kept > 0 {
                format!(", {kept} kept ({})", cfg.keep_key_prefixes.join(", "))
            } else {
                String::new()
            }
        ));
    }
    if ctx.executes() {
        storage::set(&ctx.run_key("cache_deleted"), &deleted_total.to_string())?;
    }
    let f = if ctx.executes() {
        vec![Finding::new(
            format!("keys kept ({})", cfg.keep_key_prefixes.join(", ")),
            kept_total,
            "never deleted",
            false,
        )]
    } else {
        Vec::new()
    };
    Ok(StepOutcome::ok(said.join("; ")).with_findings(f))
}

/// "Restart Redis if needed": only when it does not answer or still uses
/// too much memory after the flush.
pub fn restart_redis(ctx: &Context, cfg: &Config) -> Out {
    let c = cache_state(ctx, cfg)?;
    if ctx.executes() && cache_problem(cfg, &c).is_none() {
        return Ok(StepOutcome::ok(format!(
            "not needed: Redis answers {}{}",
            c.detail,
            c.used_mb
                .map(|m| format!(", used_memory {m:.1} MB"))
                .unwrap_or_default()
        )));
    }
    command_step(cfg, &cfg.redis_restart_command, "restarting Redis")
}

pub fn ping(ctx: &Context, cfg: &Config) -> Out {
    let cmd = cfg.redis(&["PING"]);
    let out = cmd.run()?;
    if out.simulated {
        return Ok(StepOutcome::ok(format!(
            "would run `{}` (expect PONG)",
            cmd.display()
        )));
    }
    let said = out.stdout.trim().to_string();
    let f = Finding::equals("redis-cli PING", &said, "PONG");
    let _ = ctx;
    Ok(if said == "PONG" {
        StepOutcome::ok("PONG")
    } else {
        StepOutcome::failed(format!(
            "PING answered {said:?} {}",
            one_line(&out.stderr, 100)
        ))
    }
    .with_findings(vec![f]))
}

pub fn warm(ctx: &Context, cfg: &Config) -> Out {
    post_step(ctx, cfg, &cfg.cache_warm_path, "warming the cache")
}

/// Keys matching the patterns now (SCAN), for verification.
pub fn pattern_keys(cfg: &Config) -> Result<Option<usize>> {
    let mut n = 0;
    for p in &cfg.cache_patterns {
        let out = cfg.redis(&["--scan", "--pattern", p]).run()?;
        if out.simulated || out.exit_code != Some(0) {
            return Ok(None);
        }
        n += out
            .stdout
            .lines()
            .filter(|k| !k.is_empty() && cfg.deletable(k))
            .count();
    }
    Ok(Some(n))
}

// ------------------------------------------------------------- database

pub fn maintenance(ctx: &Context, cfg: &Config, on: bool) -> Out {
    if on {
        post_step(
            ctx,
            cfg,
            &cfg.maintenance_enable_path,
            "stopping all writes (maintenance on)",
        )
    } else {
        post_step(ctx, cfg, &cfg.maintenance_disable_path, "maintenance off")
    }
}

fn stamp() -> String {
    // UTC date_time like `date +%Y%m%d_%H%M%S`.
    let ms = now_ms();
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil from days (Howard Hinnant).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}{mo:02}{d:02}_{h:02}{m:02}{s:02}_{:03}", ms % 1000)
}

pub const OWN_PREFIX: &str = "backup_before_rollback_";

/// Row counts of `count_tables`: "SELECT count(*) FROM projects;".
pub fn counts(cfg: &Config) -> Result<std::result::Result<Vec<(String, i64)>, String>> {
    let mut out = Vec::new();
    for t in &cfg.count_tables {
        match sql(cfg, &format!("SELECT count(*) FROM {t};"))? {
            Ok(v) => out.push((t.clone(), v.parse().unwrap_or(-1))),
            Err(e) => return Ok(Err(format!("count of {t}: {e}"))),
        }
    }
    Ok(Ok(out))
}

/// `pg_dump $DATABASE_URL > backup_before_rollback_<stamp>.sql`, then keep
/// the newest `keep_backups` of them.
pub fn backup(ctx: &Context, cfg: &Config) -> Out {
    // The run's stamp, not the clock's: a resumed backup writes the same
    // file again instead of a second one (and prunes the same set).
    let file = cfg.backup_path(&format!("{OWN_PREFIX}{}.sql", ctx.run_stamp(stamp)?));
    storage::make_dir(&cfg.backup_dir)?;
    let dump = Cmd::new(&cfg.pg_dump)
        .arg(cfg.db_url()?)
        .args(["--no-password", "-f", &file])
        .timeout_ms(cfg.command_timeout_ms);
    if let Err(e) = dump.run_ok("backing up the database")? {
        return Ok(StepOutcome::failed(e));
    }
    let before = if ctx.executes() {
        match counts(cfg)? {
            Ok(c) => c,
            Err(e) => return Ok(StepOutcome::failed(e)),
        }
    } else {
        Vec::new()
    };
    storage::set_json(&ctx.run_key("counts"), &before)?;
    let size = storage::stat(&file)?.map_or(0, |e| e.size);
    if ctx.executes() && size == 0 {
        return Ok(StepOutcome::failed(format!(
            "{file} is empty after pg_dump"
        )));
    }
    storage::set(&ctx.run_key("backup"), &file)?;
    // Keep the last N backups (ls -t | tail -n +11 | xargs rm -f).
    let mut own: Vec<(u64, String)> = storage::list_dir(&cfg.backup_dir, false)?
        .into_iter()
        .filter(|e| matches!(e.kind, EntryKind::File))
        .filter(|e| {
            e.path
                .rsplit('/')
                .next()
                .unwrap_or("")
                .starts_with(OWN_PREFIX)
        })
        .map(|e| (e.modified_ms, e.path))
        .collect();
    own.sort_by(|a, b| b.cmp(a));
    let mut pruned = Vec::new();
    for (_, p) in own.iter().skip(cfg.keep_backups) {
        storage::remove(p)?;
        pruned.push(p.rsplit('/').next().unwrap_or(p).to_string());
    }
    let counts: Vec<String> = before
        .iter()
        .map(|(t, n)| format!("{t}: {n} rows"))
        .collect();
    Ok(StepOutcome::ok(format!(
        "{} {file} ({size} bytes){}; kept the newest {} backups{}",
        ctx.would("dumped the database to", "would dump the database to"),
        if counts.is_empty() {
            String::new()
        } else {
            format!(", {}", counts.join(", "))
        },
        cfg.keep_backups,
        if pruned.is_empty() {
            String::new()
        } else {
            format!(", removed {}", pruned.join(", "))
        }
    )))
}

/// Columns of a table, in order (`\d projects`).
pub fn columns(cfg: &Config, table: &str) -> Result<std::result::Result<Vec<String>, String>> {
    let q = format!(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = '{table}' ORDER BY ordinal_position;"
    );
    Ok(sql(cfg, &q)?.map(|v| {
        v.lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }))
}

/// The check names of [`schema_findings`].
const SCHEMA_CHECK: &str = "schema of ";

/// Each table of `stable_schema` has exactly the stable version's columns
/// (5.3 "Check schema": `\d projects`).
pub fn schema_findings(cfg: &Config) -> Result<Vec<Finding>> {
    let mut f = Vec::new();
    for (t, want) in &cfg.stable_schema {
        let got = match columns(cfg, t)? {
            Ok(c) => c.join(", "),
            Err(e) => format!("query failed: {e}"),
        };
        f.push(Finding::equals(
            format!("{SCHEMA_CHECK}{t} (\\d {t})"),
            got,
            want.join(", "),
        ));
    }
    Ok(f)
}

/// Whether a finding is one of [`schema_findings`]: what a schema rollback
/// addresses.
pub fn is_schema_finding(f: &Finding) -> bool {
    f.check.starts_with(SCHEMA_CHECK)
}

/// Schema, row counts and relationships after a database rollback.
pub fn db_checks(ctx: &Context, cfg: &Config, compare_counts: bool) -> Result<Vec<Finding>> {
    let mut f = schema_findings(cfg)?;
    let before: Vec<(String, i64)> = storage::get_json(&ctx.run_key("counts"))?.unwrap_or_default();
    match counts(cfg)? {
        Ok(now) => {
            for (t, n) in now {
                match before.iter().find(|(b, _)| *b == t) {
                    Some((_, b)) if compare_counts => f.push(Finding::new(
                        format!("rows in {t} (before -> after)"),
                        format!("{b} -> {n}"),
                        format!("= {b}"),
                        n != *b,
                    )),
                    _ => f.push(Finding::new(format!("rows in {t}"), n, "> 0", n <= 0)),
                }
            }
        }
        Err(e) => f.push(Finding::new("row counts", e, "SELECT count(*) works", true)),
    }
    if let Some(list) = corruption(cfg, &Db::Ok(String::new()))? {
        for (n, v, bad) in list {
            f.push(Finding::new(format!("data integrity: {n}"), v, "= 0", bad));
        }
    }
    Ok(f)
}

fn checks_outcome(ctx: &Context, f: Vec<Finding>, what: &str) -> StepOutcome {
    if !ctx.executes() {
        return StepOutcome::ok(format!("would check {what}"));
    }
    let bad: Vec<String> = f
        .iter()
        .filter(|x| x.breached)
        .map(|x| format!("{}: {} (want {})", x.check, x.observed, x.threshold))
        .collect();
    let all: Vec<String> = f
        .iter()
        .map(|x| format!("{}: {}", x.check, x.observed))
        .collect();
    if bad.is_empty() {
        StepOutcome::ok(all.join("; "))
    } else {
        StepOutcome::failed(bad.join("; "))
    }
    .with_findings(f)
}

/// The pin key of the down migration's SQL.
const DOWN_SQL: &str = "down_migration";
/// The pin key of where that SQL was read.
const DOWN_FROM: &str = "down_migration_from";

/// Read the down migration from the working tree and keep it for the
/// incident, when it is there and nothing is kept yet. Called before the
/// code level checks out the stable commit: the file usually comes with
/// the release being rolled back, and is gone from the tree after.
pub fn keep_down_migration(ctx: &Context, cfg: &Config, when: &str) -> Result<()> {
    if cfg.down_migration.is_empty() || !ctx.executes() || ctx.pinned(DOWN_SQL)?.is_some() {
        return Ok(());
    }
    let path = cfg.app_path(&cfg.down_migration);
    if let Ok(sql) = storage::read_to_string(&path) {
        let at = head(cfg).map(|h| short(&h).to_string()).unwrap_or_default();
        ctx.pin(DOWN_FROM, || Ok(format!("{path} at {at}, {when}")))?;
        ctx.pin(DOWN_SQL, || Ok(sql))?;
    }
    Ok(())
}

/// The down migration's SQL and where it was read: kept for the incident
/// (read before a checkout), else the working tree, else the newest commit
/// of any branch that wrote the file (the release rolled back from is
/// still on its branch after a checkout of the stable commit).
fn down_migration_sql(
    ctx: &Context,
    cfg: &Config,
) -> Result<std::result::Result<(String, String), String>> {
    keep_down_migration(ctx, cfg, "read from the working tree")?;
    if let (Some(sql), Some(from)) = (ctx.pinned(DOWN_SQL)?, ctx.pinned(DOWN_FROM)?) {
        return Ok(Ok((sql, from)));
    }
    let rel = cfg.down_migration.trim_start_matches("./");
    let mut tried = vec![format!("{} (not in the working tree)", cfg.app_path(rel))];
    let mut commits = Vec::new();
    if let Some(c) = ctx.pinned("rolled_back_from")? {
        commits.push(c);
    }
    let log = cfg
        .git(&[
            "log",
            "--all",
            "-1",
            "--format=%H",
            "--diff-filter=AM",
            "--",
            rel,
        ])
        .run()?;
    if log.exit_code == Some(0) && !log.stdout.trim().is_empty() {
        commits.push(log.stdout.trim().to_string());
    }
    for c in commits {
        let out = cfg.git(&["show", &format!("{c}:{rel}")]).run()?;
        if out.exit_code == Some(0) {
            let from = format!("{rel} at commit {} (git history)", short(&c));
            if ctx.executes() {
                ctx.pin(DOWN_FROM, || Ok(from.clone()))?;
                ctx.pin(DOWN_SQL, || Ok(out.stdout.clone()))?;
            }
            return Ok(Ok((out.stdout, from)));
        }
        tried.push(format!(
            "{rel} at {}: {}",
            short(&c),
            one_line(&out.stderr, 120)
        ));
    }
    if ctx.executes() {
        Ok(Err(format!(
            "no down migration to apply: {}; put the file back in {} (or set down_migration) and run again",
            tried.join("; "),
            cfg.app_dir
        )))
    } else {
        Ok(Ok((
            String::new(),
            format!("{rel} (read when the step runs)"),
        )))
    }
}

/// Apply the down migration: `migrate_down_command`, or the kept copy of
/// `down_migration` with `psql -1` (one transaction: all of it or none).
pub fn migrate_down(ctx: &Context, cfg: &Config) -> Out {
    if cfg.down_migration.is_empty() {
        return command_step(cfg, &cfg.migrate_down_argv(), "applying the down migration");
    }
    let (sql, from) = match down_migration_sql(ctx, cfg)? {
        Ok(x) => x,
        Err(e) => return Ok(StepOutcome::failed(e)),
    };
    let name = cfg
        .down_migration
        .rsplit('/')
        .next()
        .unwrap_or("down.sql")
        .to_string();
    let copy = cfg.backup_path(&format!("applied_{}_{name}", ctx.run_stamp(stamp)?));
    if ctx.executes() {
        storage::make_dir(&cfg.backup_dir)?;
        storage::write_string(&copy, &sql)?;
    }
    let cmd = Cmd::new(&cfg.psql)
        .arg(cfg.db_url()?)
        .args(["-X", "-w", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-f", &copy])
        .timeout_ms(cfg.command_timeout_ms);
    Ok(match cmd.run_ok("applying the down migration")? {
        Ok(_) if !ctx.executes() => {
            StepOutcome::ok(format!("would apply {from} with `{}`", cmd.display()))
        }
        Ok(_) => StepOutcome::ok(format!(
            "applied {from} ({} bytes, copy {copy}) in one transaction",
            sql.len()
        )),
        Err(e) => StepOutcome::failed(format!(
            "{e} (the migration was {from}; nothing of it was committed)"
        )),
    })
}

pub fn verify_schema(ctx: &Context, cfg: &Config) -> Out {
    let f = if ctx.executes() {
        db_checks(ctx, cfg, true)?
    } else {
        Vec::new()
    };
    Ok(checks_outcome(
        ctx,
        f,
        "the schema against stable_schema, the row counts against the backup's, and the integrity queries",
    ))
}

pub fn verify_data(ctx: &Context, cfg: &Config) -> Out {
    let f = if ctx.executes() {
        db_checks(ctx, cfg, false)?
    } else {
        Vec::new()
    };
    Ok(checks_outcome(
        ctx,
        f,
        "the schema, that the row counts are above 0, and the integrity queries",
    ))
}

/// The backup this incident restores: `restore_from` when the operator
/// named one (their choice, read afresh so that naming another one after
/// a failed load takes effect), else the newest `<restore_prefix>*.sql`,
/// decided once and pinned: a backup written while the incident runs
/// (another deploy's) must not become the one a second run restores.
pub fn restore_choice(ctx: &Context, cfg: &Config) -> Result<String> {
    if !cfg.restore_from.is_empty() {
        return restore_file(cfg);
    }
    ctx.pin("restore_file", || restore_file(cfg))
}

/// The backup to restore: `restore_from`, or the newest
/// `<restore_prefix>*` in the backup dir.
pub fn restore_file(cfg: &Config) -> Result<String> {
    if !cfg.restore_from.is_empty() {
        return Ok(if cfg.restore_from.starts_with('/') {
            cfg.restore_from.clone()
        } else {
            cfg.backup_path(&cfg.restore_from)
        });
    }
    let mut found: Vec<String> = storage::list_dir(&cfg.backup_dir, false)
        .context(format!("listing {}", cfg.backup_dir))?
        .into_iter()
        .filter(|e| matches!(e.kind, EntryKind::File))
        .map(|e| e.path)
        .filter(|p| {
            let n = p.rsplit('/').next().unwrap_or("");
            n.starts_with(&cfg.restore_prefix) && n.ends_with(".sql")
        })
        .collect();
    found.sort();
    match found.pop() {
        Some(p) => Ok(p),
        None => bail!(
            "no {}*.sql backup in {} to restore from (set restore_from)",
            cfg.restore_prefix,
            cfg.backup_dir
        ),
    }
}

/// The runbook's restore of `db` (reached at `url`) from `file`: dropdb
/// (forced, through the maintenance database `m`), createdb, and
/// `psql -f` stopping at the first error.
fn load_db_cmds(cfg: &Config, m: &str, db: &str, url: &str, file: &str) -> [Cmd; 3] {
    [
        Cmd::new(&cfg.dropdb).args([m, "--no-password", "--if-exists", "--force", db]),
        Cmd::new(&cfg.createdb).args([m, "--no-password", db]),
        Cmd::new(&cfg.psql).args([url, "-X", "-w", "-q", "-v", "ON_ERROR_STOP=1", "-f", file]),
    ]
    .map(|c| c.timeout_ms(cfg.command_timeout_ms))
}

/// Load `file` into a scratch database next to `db` and drop it again:
/// the dump is proven to load before the live database is dropped (a dump
/// chosen by name could be truncated, empty or of another schema).
fn check_dump_loads(
    cfg: &Config,
    url: &str,
    db: &str,
    m: &str,
    file: &str,
) -> Result<Result<String, String>> {
    // A plain pg_dump ends with this line: a dump cut short (a full disk,
    // a killed backup) loads without an error up to where it stops, so the
    // load alone does not prove it whole.
    const COMPLETE: &str = "PostgreSQL database dump complete";
    let size = storage::stat(file)?.map_or(0, |e| e.size);
    let whole = match storage::read_file(file) {
        Ok(bytes) => {
            let tail = &bytes[bytes.len().saturating_sub(4096)..];
            if !String::from_utf8_lossy(tail).contains(COMPLETE) {
                return Ok(Err(format!(
                    "{file} ({size} bytes) does not end with pg_dump's \"{COMPLETE}\" line: it was cut short"
                )));
            }
            "whole"
        }
        // Larger than a plugin may read: the load below is the check.
        Err(_) => "too large to check for pg_dump's closing line",
    };
    let scratch = format!("{db}_rewind_check");
    // The database is the URL's path: its last `/<db>`.
    let Some(at) = url.rfind(&format!("/{db}")) else {
        return Ok(Err(format!(
            "cannot derive a scratch database URL from {url} to check {file}"
        )));
    };
    let scratch_url = format!("{}/{scratch}{}", &url[..at], &url[at + 1 + db.len()..]);
    let [drop, create, load] = load_db_cmds(cfg, m, &scratch, &scratch_url, file);
    let checked = (|| -> Result<Result<String, String>> {
        for (c, what) in [
            (&drop, "clearing the scratch database"),
            (&create, "creating the scratch database"),
            (&load, "loading the backup into the scratch database"),
        ] {
            if let Err(e) = c.run_ok(what)? {
                return Ok(Err(e));
            }
        }
        Ok(Ok(format!(
            "{file} loads cleanly (checked in {scratch}; {whole})"
        )))
    })();
    // The scratch copy goes whatever happened.
    let _ = drop.run_ok("dropping the scratch database");
    checked
}

/// Check the dump loads (into a scratch database), then dropdb, createdb,
/// `psql $DATABASE_URL < backup`: the live database is dropped only for a
/// backup that is known to load.
pub fn restore(ctx: &Context, cfg: &Config) -> Out {
    let file = restore_choice(ctx, cfg)?;
    let url = cfg.db_url()?;
    let Some((db, maint)) = db_name_and_maintenance(&url) else {
        bail!("cannot read the database name from {url}");
    };
    let m = format!("--maintenance-db={maint}");
    let mut said = Vec::new();
    if ctx.executes() {
        match check_dump_loads(cfg, &url, &db, &m, &file)? {
            Ok(m) => said.push(m),
            Err(e) => {
                return Ok(StepOutcome::failed(format!(
                    "{e}: the backup does not load, so {db} was not dropped; choose another backup (restore_from) and run again{}",
                    if cfg.restore_from.is_empty() {
                        " (this incident pinned it: or run again with --redecide)"
                    } else {
                        ""
                    }
                ))
                .with_findings(vec![Finding::new("backup loads", "no", "yes", true)]));
            }
        }
    } else {
        said.push(format!(
            "would first load {file} into a scratch database {db}_rewind_check"
        ));
    }
    let steps = load_db_cmds(cfg, &m, &db, &url, &file);
    for c in steps {
        match c.run_ok("restoring from the backup")? {
            Ok(_) => said.push(format!("`{}`", c.display())),
            Err(e) => {
                return Ok(StepOutcome::failed(format!(
                    "{e} (done before: {})",
                    said.join(", ")
                )));
            }
        }
    }
    storage::set(&ctx.run_key("restored_from"), &file)?;
    Ok(StepOutcome::ok(format!(
        "{} {file}: {}",
        ctx.would("restored", "would restore"),
        said.join(", ")
    )))
}

// -------------------------------------------------------------- features

pub fn flag(ctx: &Context, cfg: &Config, name: &str) -> Out {
    let Some(f) = cfg.features.iter().find(|f| f.name == name) else {
        bail!("no feature {name:?} in the config");
    };
    let Some(p) = &f.flag_path else {
        bail!("feature {name} has no flag_path");
    };
    let url = cfg.url(p);
    let r = HttpRequest::new(&f.flag_method, &url)
        .body(&f.flag_body)
        .header("content-type", "application/json")
        .send()?;
    if r.simulated {
        return Ok(StepOutcome::ok(format!("would {} {url}", f.flag_method)));
    }
    if !(200..300).contains(&r.status) {
        return Ok(StepOutcome::failed(format!(
            "{} {url} -> {} {}",
            f.flag_method,
            r.status,
            one_line(&r.body, 120)
        )));
    }
    let mut flagged: Vec<String> = storage::get_json(&ctx.run_key("flagged"))?.unwrap_or_default();
    if !flagged.iter().any(|f| f == name) {
        flagged.push(name.to_string());
    }
    storage::set_json(&ctx.run_key("flagged"), &flagged)?;
    Ok(StepOutcome::ok(format!(
        "{} {url} -> {}: {name} disabled, fix forward",
        f.flag_method, r.status
    )))
}
