//! Measuring the app, its queues, Redis and PostgreSQL, and the runbook's
//! decision matrix and flowchart applied to the measurements.

use std::time::{SystemTime, UNIX_EPOCH};

use rewind_sdk::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{Config, db_host_port};

pub const FLAG: u8 = 1;
pub const CACHE: u8 = 2;
pub const QUEUE: u8 = 3;
pub const CODE: u8 = 4;
pub const SCHEMA: u8 = 5;
pub const RESTORE: u8 = 6;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ------------------------------------------------------------- queues

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueStats {
    pub name: String,
    pub waiting: u64,
    pub active: u64,
    pub completed: u64,
    pub failed: u64,
    pub paused: bool,
}

impl QueueStats {
    /// The jobs done since `base` (an earlier read of the same queue).
    /// A counter below its base was reset (Bull's `clean` removes failed
    /// jobs, and their count with them): all it holds is new.
    pub fn since(&self, base: &QueueStats) -> QueueStats {
        let d = |now: u64, then: u64| if now >= then { now - then } else { now };
        QueueStats {
            completed: d(self.completed, base.completed),
            failed: d(self.failed, base.failed),
            ..self.clone()
        }
    }

    pub fn failure_percent(&self) -> f64 {
        let done = self.completed + self.failed;
        if done == 0 {
            0.0
        } else {
            self.failed as f64 * 100.0 / done as f64
        }
    }
}

fn num(v: &Value, k: &str) -> u64 {
    match &v[k] {
        Value::Number(n) => n.as_u64().unwrap_or(0),
        Value::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

/// Queue stats as Bull-like JSON: `{"queues": {name: counts}}`,
/// `{"queues": [{"name": .., counts}]}` or `{name: counts}`.
pub fn parse_stats(body: &str) -> Option<Vec<QueueStats>> {
    let v: Value = serde_json::from_str(body).ok()?;
    let q = if v.get("queues").is_some() {
        &v["queues"]
    } else {
        &v
    };
    let one = |name: String, c: &Value| QueueStats {
        name,
        waiting: num(c, "waiting"),
        active: num(c, "active"),
        completed: num(c, "completed"),
        failed: num(c, "failed"),
        // A flag (`isPaused()`), or Bull's `getJobCounts()` count of jobs
        // held in the paused list: some held means the queue is paused.
        paused: match &c["paused"] {
            Value::Bool(b) => *b,
            Value::Number(_) | Value::String(_) => num(c, "paused") > 0,
            _ => false,
        },
    };
    match q {
        Value::Object(m) => Some(
            m.iter()
                .filter(|(_, c)| c.is_object())
                .map(|(n, c)| one(n.clone(), c))
                .collect(),
        ),
        Value::Array(a) => Some(
            a.iter()
                .map(|c| one(c["name"].as_str().unwrap_or("?").to_string(), c))
                .collect(),
        ),
        _ => None,
    }
}

/// GET the queue stats now.
pub fn queue_stats(cfg: &Config) -> Result<std::result::Result<Vec<QueueStats>, String>> {
    let url = cfg.url(&cfg.queue_stats_path);
    let r = HttpProbe::get(&url)
        .timeout_ms(cfg.probe_timeout_ms)
        .probe()?;
    if !r.healthy {
        return Ok(Err(format!("GET {url}: {}", r.detail)));
    }
    Ok(parse_stats(&r.body).ok_or_else(|| format!("GET {url}: not queue stats JSON")))
}

/// What is wrong with the queues, if anything ("high failure rates",
/// "Queue Length <50").
pub fn queue_problem(cfg: &Config, stats: &[QueueStats]) -> Option<String> {
    let mut bad = Vec::new();
    for q in stats {
        if q.failure_percent() > cfg.queue_failure_percent {
            bad.push(format!(
                "{} fails {:.1}% of its jobs ({} failed, {} completed)",
                q.name,
                q.failure_percent(),
                q.failed,
                q.completed
            ));
        }
        if q.waiting > cfg.queue_max_waiting {
            bad.push(format!("{} has {} jobs waiting", q.name, q.waiting));
        }
    }
    (!bad.is_empty()).then(|| bad.join("; "))
}

// ---------------------------------------------------------------- cache

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheState {
    pub answers: bool,
    /// `INFO memory` used_memory in MB; none when not measured (dry run).
    pub used_mb: Option<f64>,
    pub detail: String,
}

/// Redis: a TCP connect in every mode, `redis-cli PING` and `INFO memory`
/// when commands run.
pub fn cache_state(ctx: &Context, cfg: &Config) -> Result<CacheState> {
    let tcp = TcpProbe::new(&cfg.redis_host, cfg.redis_port)
        .timeout_ms(cfg.probe_timeout_ms)
        .probe()?;
    if !ctx.executes() || !tcp.healthy {
        return Ok(CacheState {
            answers: tcp.healthy,
            used_mb: None,
            detail: if tcp.healthy {
                "port accepts connections (redis-cli not run in a dry run)".into()
            } else {
                tcp.detail
            },
        });
    }
    let ping = cfg.redis(&["PING"]).run()?;
    if ping.stdout.trim() != "PONG" {
        return Ok(CacheState {
            answers: false,
            used_mb: None,
            detail: format!(
                "PING answered {:?}",
                one_line(&format!("{}{}", ping.stdout, ping.stderr), 100)
            ),
        });
    }
    let info = cfg.redis(&["INFO", "memory"]).run()?;
    let used = info
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|b| b / (1024.0 * 1024.0));
    Ok(CacheState {
        answers: true,
        used_mb: used,
        detail: "PONG".into(),
    })
}

pub fn cache_problem(cfg: &Config, c: &CacheState) -> Option<String> {
    if !c.answers {
        return Some(format!("Redis does not answer ({})", c.detail));
    }
    match c.used_mb {
        Some(mb) if mb > cfg.cache_max_memory_mb => Some(format!(
            "Redis uses {mb:.1} MB (more than {} MB)",
            cfg.cache_max_memory_mb
        )),
        _ => None,
    }
}

// ------------------------------------------------------------- database

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Db {
    Ok(String),
    Failed(String),
    /// Dry run: only a TCP connect was tried.
    Reachable(String),
}

/// Run SQL, its tuples-only output; `Err(why)` when psql fails.
pub fn sql(cfg: &Config, q: &str) -> Result<std::result::Result<String, String>> {
    let out = cfg.psql_cmd(q)?.run()?;
    if out.simulated {
        return Ok(Err("not run in a dry run".into()));
    }
    if out.exit_code == Some(0) {
        Ok(Ok(out.stdout.trim().to_string()))
    } else {
        Ok(Err(one_line(&out.stderr, 200)))
    }
}

/// "Database connection failed": `psql -c "SELECT 1;"` when commands run,
/// a TCP connect to the database's port in a dry run.
pub fn db_state(ctx: &Context, cfg: &Config) -> Result<Db> {
    let url = match cfg.db_url() {
        Ok(u) => u,
        Err(e) => return Ok(Db::Failed(e.into_message())),
    };
    if !ctx.executes() {
        let Some((host, port)) = db_host_port(&url) else {
            return Ok(Db::Failed(format!("cannot read host and port from {url}")));
        };
        return Ok(
            match TcpProbe::new(&host, port)
                .timeout_ms(cfg.probe_timeout_ms)
                .probe()
            {
                Ok(r) if r.healthy => Db::Reachable(format!(
                    "{host}:{port} accepts connections (psql not run in a dry run)"
                )),
                Ok(r) => Db::Failed(format!("{host}:{port}: {}", r.detail)),
                Err(e) if e.is_denied() => Db::Reachable(format!(
                    "not measured in a dry run (no tcp grant for {host}:{port})"
                )),
                Err(e) => return Err(e.into()),
            },
        );
    }
    Ok(match sql(cfg, "SELECT 1;")? {
        Ok(v) if v == "1" => Db::Ok("SELECT 1 -> 1".into()),
        Ok(v) => Db::Failed(format!("SELECT 1 -> {v:?}")),
        Err(e) => Db::Failed(e),
    })
}

/// "Data corruption detected": each integrity query's count of bad rows.
/// None when not measured (dry run, or the database does not answer).
pub fn corruption(cfg: &Config, db: &Db) -> Result<Option<Vec<(String, String, bool)>>> {
    if !matches!(db, Db::Ok(_)) {
        return Ok(None);
    }
    let mut out = Vec::new();
    for c in &cfg.integrity_checks {
        out.push(match sql(cfg, &c.sql)? {
            Ok(v) => {
                let bad = v.parse::<i64>() != Ok(0);
                (c.name.clone(), v, bad)
            }
            Err(e) => (c.name.clone(), format!("query failed: {e}"), true),
        });
    }
    Ok(Some(out))
}

// --------------------------------------------------------------- the API

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Api {
    pub health_status: Option<u16>,
    pub health_ok: bool,
    pub health_detail: String,
    pub requests: u32,
    pub errors: u32,
    /// 95th percentile latency of the sampled API requests, ms.
    pub p95_ms: f64,
}

impl Api {
    pub fn error_percent(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 * 100.0 / self.requests as f64
        }
    }
}

/// GET /health, then `samples` GETs of each API path: the error rate
/// (answers outside 200-399 or none) and the P95 latency.
pub fn api(cfg: &Config) -> Result<Api> {
    let h = cfg.health_probe().probe()?;
    let mut lat = Vec::new();
    let (mut requests, mut errors) = (0u32, 0u32);
    if h.healthy {
        for _ in 0..cfg.samples {
            for p in &cfg.api_paths {
                let r = HttpProbe::get(cfg.url(p))
                    .timeout_ms(cfg.probe_timeout_ms)
                    .probe()?;
                requests += 1;
                if !r.healthy {
                    errors += 1;
                }
                lat.push(r.latency_ms());
            }
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let p95 = if lat.is_empty() {
        0.0
    } else {
        lat[((lat.len() as f64 * 0.95).ceil() as usize).clamp(1, lat.len()) - 1]
    };
    Ok(Api {
        health_status: h.status,
        health_ok: h.healthy,
        health_detail: match h.status {
            Some(s) => format!("{s} {}", one_line(&h.body, 100)),
            None => h.detail,
        },
        requests,
        errors,
        p95_ms: p95,
    })
}

/// Features whose probe fails: (name, can be disabled by a flag).
pub fn broken_features(cfg: &Config) -> Result<Vec<(String, bool, String)>> {
    let mut out = Vec::new();
    for f in &cfg.features {
        let r = HttpProbe::get(cfg.url(&f.path))
            .timeout_ms(cfg.probe_timeout_ms)
            .probe()?;
        if !r.healthy {
            let why = match r.status {
                Some(s) => format!("{s}"),
                None => r.detail,
            };
            out.push((f.name.clone(), f.flag_path.is_some(), why));
        }
    }
    Ok(out)
}

// ------------------------------------------------------------- decision

/// Everything the decision is made from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurements {
    pub api: Api,
    pub db: Db,
    pub corruption: Option<Vec<(String, String, bool)>>,
    pub features: Vec<(String, bool, String)>,
    pub queues: std::result::Result<Vec<QueueStats>, String>,
    pub queue_problem: Option<String>,
    pub cache: CacheState,
    pub cache_problem: Option<String>,
    /// How long the error rate has been above the rollback threshold.
    pub high_errors_for_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Priority {
    P0,
    P1,
    P2,
    P3,
    Healthy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    pub priority: Priority,
    pub rollback: bool,
    pub level: u8,
    pub scenario: String,
    pub why: String,
}

fn d(priority: Priority, level: u8, scenario: &str, why: String) -> Decision {
    Decision {
        priority,
        rollback: level > 0,
        level,
        scenario: scenario.to_string(),
        why,
    }
}

/// The decision matrix and flowchart (pure, unit-tested natively).
pub fn decide(cfg: &Config, m: &Measurements) -> Decision {
    use Priority::*;
    // Is service down or data at risk? -> Rollback immediately.
    if !m.api.health_ok {
        return d(
            P0,
            CODE,
            "API completely down",
            format!("GET {}: {}", cfg.health_path, m.api.health_detail),
        );
    }
    if let Db::Failed(why) = &m.db {
        return d(P0, CODE, "Database connection failed", why.clone());
    }
    if let Some(bad) = &m.corruption {
        let bad: Vec<String> = bad
            .iter()
            .filter(|(_, _, b)| *b)
            .map(|(n, v, _)| format!("{n}: {v}"))
            .collect();
        if !bad.is_empty() {
            return d(
                P0,
                RESTORE,
                "Data corruption detected",
                format!("{}; stop all writes first", bad.join("; ")),
            );
        }
    }
    // Error rate >10%? -> Attempt quick fix (5 min) -> Failed? -> Rollback.
    let err = m.api.error_percent();
    if err > cfg.error_rate_rollback_percent {
        let for_ms = m.high_errors_for_ms.unwrap_or(0);
        return if for_ms >= cfg.quick_fix_ms {
            d(
                P1,
                CODE,
                "Error rate >10%",
                format!(
                    "{err:.1}% of {} requests failed, for {} (quick-fix window {} is over)",
                    m.api.requests,
                    fmt_ms(for_ms),
                    fmt_ms(cfg.quick_fix_ms)
                ),
            )
        } else {
            d(
                P1,
                0,
                "Error rate >10%: quick fix first",
                format!(
                    "{err:.1}% of {} requests failed; attempt a quick fix: rollback once it has lasted {} (now {})",
                    m.api.requests,
                    fmt_ms(cfg.quick_fix_ms),
                    fmt_ms(for_ms)
                ),
            )
        };
    }
    if err >= cfg.error_rate_investigate_percent {
        return d(
            P1,
            0,
            "Error rate 5-10%: investigate first",
            format!(
                "{err:.1}% of {} requests failed: investigate before rolling back",
                m.api.requests
            ),
        );
    }
    // Performance degraded >50%? -> Check if queue/cache issue -> Not fixable? -> Rollback.
    let slow = m.api.p95_ms > cfg.baseline_ms * cfg.slow_factor;
    if slow {
        let why = format!(
            "P95 {:.0} ms is more than {}x the {} ms baseline",
            m.api.p95_ms, cfg.slow_factor, cfg.baseline_ms
        );
        return match (&m.cache_problem, &m.queue_problem) {
            (None, Some(q)) => d(
                P2,
                QUEUE,
                "Response time >2x baseline: queue issue",
                format!("{why}; {q}"),
            ),
            (Some(c), _) => d(
                P2,
                CACHE,
                "Response time >2x baseline: cache issue",
                format!("{why}; {c}"),
            ),
            (None, None) => d(
                P2,
                CACHE,
                "Response time >2x baseline",
                format!(
                    "{why}; no queue or cache issue measured: flush the cache first, then the queue workers, then the code"
                ),
            ),
        };
    }
    if let Some(q) = &m.queue_problem {
        return d(P2, QUEUE, "Queue workers causing issues", q.clone());
    }
    if let Some(c) = &m.cache_problem {
        return d(P2, CACHE, "Cache causing issues", c.clone());
    }
    // Single feature broken? -> Can disable feature? -> NO -> Rollback.
    match m.features.as_slice() {
        [] => {}
        [(name, true, why)] => {
            return d(
                P2,
                FLAG,
                "Single feature broken: feature flag",
                format!("{name} fails ({why}); disable it with its flag and fix forward"),
            );
        }
        [(name, false, why)] => {
            return d(
                P2,
                CODE,
                "Single feature broken, no flag",
                format!("{name} fails ({why}) and has no flag to disable it"),
            );
        }
        many => {
            let names: Vec<&str> = many.iter().map(|(n, _, _)| n.as_str()).collect();
            return d(
                P1,
                CODE,
                "Critical feature broken",
                format!("{} features fail: {}", many.len(), names.join(", ")),
            );
        }
    }
    if m.api.p95_ms > cfg.baseline_ms {
        return d(
            P3,
            0,
            "Performance slightly degraded",
            format!(
                "P95 {:.0} ms over the {} ms baseline: monitor and optimize, no rollback",
                m.api.p95_ms, cfg.baseline_ms
            ),
        );
    }
    d(
        Healthy,
        0,
        "healthy",
        "no trigger of the decision matrix".into(),
    )
}

pub fn severity(p: Priority) -> Severity {
    match p {
        Priority::P0 => Severity::Critical,
        Priority::P1 => Severity::Major,
        Priority::P2 | Priority::P3 => Severity::Minor,
        Priority::Healthy => Severity::None,
    }
}

pub fn pname(p: Priority) -> &'static str {
    match p {
        Priority::P0 => "P0",
        Priority::P1 => "P1",
        Priority::P2 => "P2",
        Priority::P3 => "P3",
        Priority::Healthy => "none",
    }
}

const HIGH_ERRORS_KEY: &str = "high_errors_since";

/// Measure everything; remember since when the error rate has been above
/// the rollback threshold (kept across runs, cleared when it is not).
pub fn measure(ctx: &Context, cfg: &Config) -> Result<Measurements> {
    let api = api(cfg)?;
    let db = db_state(ctx, cfg)?;
    let corruption = corruption(cfg, &db)?;
    let features = if api.health_ok {
        broken_features(cfg)?
    } else {
        Vec::new()
    };
    let queues = queue_stats(cfg)?;
    let queue_problem = queues.as_ref().ok().and_then(|q| queue_problem(cfg, q));
    let cache = cache_state(ctx, cfg)?;
    let cache_problem = cache_problem(cfg, &cache);
    let now = now_ms();
    let high_errors_for_ms =
        if api.health_ok && api.error_percent() > cfg.error_rate_rollback_percent {
            let since = match storage::get(HIGH_ERRORS_KEY)?.and_then(|v| v.parse::<u64>().ok()) {
                Some(t) => t,
                None => {
                    storage::set(HIGH_ERRORS_KEY, &now.to_string())?;
                    now
                }
            };
            Some(now.saturating_sub(since))
        } else {
            if storage::get(HIGH_ERRORS_KEY)?.is_some() {
                storage::delete(HIGH_ERRORS_KEY)?;
            }
            None
        };
    Ok(Measurements {
        api,
        db,
        corruption,
        features,
        queues,
        queue_problem,
        cache,
        cache_problem,
        high_errors_for_ms,
    })
}

pub fn findings(cfg: &Config, m: &Measurements) -> Vec<Finding> {
    let mut f = vec![Finding::status(
        format!("API up: GET {}", cfg.url(&cfg.health_path)),
        m.api.health_status,
        200,
        399,
    )];
    f.push(match &m.db {
        Db::Ok(v) | Db::Reachable(v) => Finding::new("database connection", v, "connects", false),
        Db::Failed(v) => Finding::new("database connection", v, "connects", true),
    });
    match &m.corruption {
        None => f.push(Finding::new(
            "data integrity",
            "not measured (psql not run)",
            "= 0 bad rows",
            false,
        )),
        Some(list) => {
            for (n, v, bad) in list {
                f.push(Finding::new(format!("data integrity: {n}"), v, "= 0", *bad));
            }
        }
    }
    if m.api.requests > 0 {
        let e = m.api.error_percent();
        f.push(Finding::new(
            format!("error rate ({} sampled API requests)", m.api.requests),
            format!("{e:.1}% ({} errors)", m.api.errors),
            format!(
                "< {}% (5-10% investigate, > {}% rollback after a {} quick-fix window)",
                cfg.error_rate_investigate_percent,
                cfg.error_rate_rollback_percent,
                fmt_ms(cfg.quick_fix_ms)
            ),
            e >= cfg.error_rate_investigate_percent,
        ));
        f.push(Finding::new(
            "response time (P95 of the sampled API requests)",
            format!("{:.1} ms", m.api.p95_ms),
            format!(
                "<= {} ms baseline; > {} ms ({}x) degraded",
                cfg.baseline_ms,
                cfg.baseline_ms * cfg.slow_factor,
                cfg.slow_factor
            ),
            m.api.p95_ms > cfg.baseline_ms * cfg.slow_factor,
        ));
    }
    if let Some(t) = m.high_errors_for_ms {
        f.push(Finding::at_most(
            "time with error rate over the rollback threshold (quick-fix window)",
            t as f64,
            cfg.quick_fix_ms as f64,
            "ms",
        ));
    }
    for fe in &cfg.features {
        let broken = m.features.iter().find(|(n, _, _)| *n == fe.name);
        f.push(Finding::new(
            format!("feature {}: GET {}", fe.name, cfg.url(&fe.path)),
            broken.map_or("ok".to_string(), |(_, _, w)| w.clone()),
            "200-399",
            broken.is_some(),
        ));
    }
    match &m.queues {
        Ok(qs) => {
            for q in qs {
                f.push(Finding::new(
                    format!("queue {}: failure rate", q.name),
                    format!(
                        "{:.1}% ({} failed, {} completed, {} active, {} waiting{})",
                        q.failure_percent(),
                        q.failed,
                        q.completed,
                        q.active,
                        q.waiting,
                        if q.paused { ", paused" } else { "" }
                    ),
                    format!(
                        "<= {}% and <= {} waiting",
                        cfg.queue_failure_percent, cfg.queue_max_waiting
                    ),
                    q.failure_percent() > cfg.queue_failure_percent
                        || q.waiting > cfg.queue_max_waiting,
                ));
            }
        }
        Err(e) => f.push(Finding::new("queue stats", e, "JSON queue counts", true)),
    }
    f.push(Finding::new(
        format!("Redis {}:{}", cfg.redis_host, cfg.redis_port),
        match m.cache.used_mb {
            Some(mb) => format!("{}, used_memory {mb:.1} MB", m.cache.detail),
            None => m.cache.detail.clone(),
        },
        format!("PONG, used_memory <= {} MB", cfg.cache_max_memory_mb),
        m.cache_problem.is_some(),
    ));
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        serde_json::from_str(r#"{"app_dir": "/srv/app", "database_url": "postgresql://x@h:1/app", "features": [{"name": "export", "path": "/api/export", "flag_path": "/flags/export/off"}]}"#).unwrap()
    }

    fn healthy() -> Measurements {
        Measurements {
            api: Api {
                health_status: Some(200),
                health_ok: true,
                health_detail: "200 ok".into(),
                requests: 20,
                errors: 0,
                p95_ms: 20.0,
            },
            db: Db::Ok("1".into()),
            corruption: Some(vec![("orphans".into(), "0".into(), false)]),
            features: vec![],
            queues: Ok(vec![]),
            queue_problem: None,
            cache: CacheState {
                answers: true,
                used_mb: Some(1.0),
                detail: "PONG".into(),
            },
            cache_problem: None,
            high_errors_for_ms: None,
        }
    }

    #[test]
    fn the_decision_matrix() {
        let c = cfg();
        let ok = healthy();
        assert_eq!(decide(&c, &ok).priority, Priority::Healthy);

        let mut m = ok.clone();
        m.api.health_ok = false;
        let x = decide(&c, &m);
        assert_eq!((x.priority, x.level), (Priority::P0, CODE));

        let mut m = ok.clone();
        m.db = Db::Failed("refused".into());
        assert_eq!(decide(&c, &m).level, CODE);

        let mut m = ok.clone();
        m.corruption = Some(vec![("orphans".into(), "3".into(), true)]);
        assert_eq!(decide(&c, &m).level, RESTORE);

        // > 10 %: quick fix first, rollback after 5 min.
        let mut m = ok.clone();
        m.api.errors = 3;
        m.high_errors_for_ms = Some(1000);
        let x = decide(&c, &m);
        assert_eq!((x.priority, x.rollback), (Priority::P1, false));
        m.high_errors_for_ms = Some(300_000);
        assert_eq!(decide(&c, &m).level, CODE);

        // 5-10 %: investigate.
        let mut m = ok.clone();
        m.api.errors = 1;
        let x = decide(&c, &m);
        assert_eq!((x.priority, x.rollback), (Priority::P1, false));

        // Slow: queue or cache first.
        let mut m = ok.clone();
        m.api.p95_ms = 700.0;
        assert_eq!(decide(&c, &m).level, CACHE);
        m.queue_problem = Some("q".into());
        assert_eq!(decide(&c, &m).level, QUEUE);
        m.api.p95_ms = 400.0;
        assert_eq!(decide(&c, &m).level, QUEUE);
        m.queue_problem = None;
        let x = decide(&c, &m);
        assert_eq!((x.priority, x.rollback), (Priority::P3, false));

        // One feature: flag when it can be disabled, else roll back.
        let mut m = ok.clone();
        m.features = vec![("export".into(), true, "500".into())];
        assert_eq!(decide(&c, &m).level, FLAG);
        m.features = vec![("export".into(), false, "500".into())];
        assert_eq!(decide(&c, &m).level, CODE);
        m.features.push(("search".into(), true, "500".into()));
        assert_eq!(decide(&c, &m).priority, Priority::P1);
    }

    #[test]
    fn parses_queue_stats() {
        let a = parse_stats(r#"{"queues": {"ai-analysis": {"waiting": 3, "active": 2, "completed": 90, "failed": 10, "paused": true}}}"#).unwrap();
        assert_eq!(a[0].name, "ai-analysis");
        assert!(a[0].paused && a[0].active == 2);
        assert!((a[0].failure_percent() - 10.0).abs() < 1e-9);
        let b = parse_stats(r#"[{"name": "x", "active": "4"}]"#).unwrap();
        assert_eq!(b[0].active, 4);
        // Bull's getJobCounts(): `paused` counts the jobs a pause holds.
        let c = parse_stats(r#"{"a": {"waiting": 0, "active": 0, "completed": 12, "failed": 1, "delayed": 0, "paused": 7}, "b": {"completed": 3, "paused": 0}}"#).unwrap();
        assert!(c[0].paused && !c[1].paused);
        assert_eq!((c[0].completed, c[0].failed), (12, 1));
    }

    #[test]
    fn failure_rate_since_a_baseline_leaves_out_the_history() {
        let q = |completed, failed| QueueStats {
            name: "q".into(),
            completed,
            failed,
            ..Default::default()
        };
        // 60 of 460 failed before (13%); since then 50 done, none failed.
        let d = q(450, 60).since(&q(400, 60));
        assert_eq!((d.completed, d.failed), (50, 0));
        assert_eq!(d.failure_percent(), 0.0);
        // clean-all removed the failed jobs: the counter starts again.
        let d = q(450, 2).since(&q(400, 60));
        assert_eq!((d.completed, d.failed), (50, 2));
    }
}
