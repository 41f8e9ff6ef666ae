//! Measuring AIDIS the way the runbook's detection commands do, and turning
//! the measurements into findings (observed vs threshold), a scenario and a
//! severity; and the post-rollback validation checklist.

use std::collections::{BTreeMap, BTreeSet};

use rewind_sdk::health::{ProbeResult, SystemStats};
use rewind_sdk::prelude::*;
use rewind_sdk::report::num;
use rewind_sdk::storage::EntryKind;

use crate::clock;
use crate::config::{Config, Endpoint, Service};
use crate::gitref::{Head, Repo};

const MIB: f64 = 1024.0 * 1024.0;

/// The runbook's five rollback scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Health,
    Performance,
    Database,
    Processes,
    Mesh,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Self::Health,
        Self::Performance,
        Self::Database,
        Self::Processes,
        Self::Mesh,
    ];
    pub fn id(self) -> &'static str {
        match self {
            Self::Health => "service-health",
            Self::Performance => "performance",
            Self::Database => "database",
            Self::Processes => "process-explosion",
            Self::Mesh => "service-mesh",
        }
    }
    pub fn title(self) -> &'static str {
        match self {
            Self::Health => "Scenario 1: service health failures",
            Self::Performance => "Scenario 2: performance degradation",
            Self::Database => "Scenario 3: database connection issues",
            Self::Processes => "Scenario 4: process count explosion",
            Self::Mesh => "Scenario 5: service mesh failures",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.id() == s)
    }
}

/// Processes matching any of the patterns, counted once each.
#[derive(Debug, Clone, Default)]
pub struct Procs {
    pub count: u32,
    /// Resident memory of those processes. A process that matches several
    /// patterns is counted once when the host's per-pattern sums allow it
    /// (disjoint or nested pid sets); a partial overlap is estimated.
    pub rss_mb: f64,
    /// Their pids, ascending.
    pub pids: Vec<u32>,
}

impl Procs {
    /// `<n> MB in <count> processes (pids 1, 2, ...)`: which processes
    /// were counted.
    pub fn memory_shown(&self) -> String {
        const SHOWN: usize = 20;
        let mut pids: Vec<String> = self
            .pids
            .iter()
            .take(SHOWN)
            .map(|p| p.to_string())
            .collect();
        if self.pids.len() > SHOWN {
            pids.push(format!("and {} more", self.pids.len() - SHOWN));
        }
        format!(
            "{} MB in {} processes (pids {})",
            num(self.rss_mb.round()),
            self.count,
            if pids.is_empty() {
                "none".to_string()
            } else {
                pids.join(", ")
            }
        )
    }
}

pub fn count_processes(patterns: &[String]) -> Result<Procs> {
    let mut seen = BTreeSet::new();
    let mut rss = 0.0;
    for p in patterns.iter().filter(|p| !p.is_empty()) {
        let s = health::processes(p).context(format!("counting processes matching {p:?}"))?;
        let new = s.pids.iter().filter(|pid| !seen.contains(*pid)).count();
        if !s.pids.is_empty() && new > 0 {
            rss += s.rss_bytes as f64 * new as f64 / s.pids.len() as f64;
        }
        seen.extend(s.pids);
    }
    Ok(Procs {
        count: seen.len() as u32,
        rss_mb: rss / MIB,
        pids: seen.into_iter().collect(),
    })
}

/// The runbook's "Memory usage >3000MB" / "<3000MB" (and the 2500 MB
/// warning), measured on the AIDIS processes (`process_patterns`), not the
/// whole machine: on a shared server, other programs' memory is not
/// AIDIS's doing and must neither trigger nor block a rollback.
pub fn memory_finding(cfg: &Config, procs: &Procs, limit_mb: f64, warning: bool) -> Finding {
    let mut f = Finding::at_most(
        format!(
            "memory of the AIDIS processes, matching {}{}",
            patterns_shown(&cfg.process_patterns),
            if warning { " (warning)" } else { "" }
        ),
        procs.rss_mb.round(),
        limit_mb,
        "MB",
    );
    f.observed = procs.memory_shown();
    f
}

/// The HTTP probes of one sweep share `probe_budget_ms`: the host probes
/// one URL at a time, so each probe gets the time left divided by the
/// probes left (at most `response_timeout_ms`, at least 1 s). A hung
/// service (it accepts, never answers) is then found within the budget,
/// not after 30 s per endpoint.
pub struct Budget {
    left_ms: u64,
    probes: u32,
    max_ms: u64,
}

impl Budget {
    pub const MIN_MS: u64 = 1000;

    pub fn new(cfg: &Config, probes: u32) -> Self {
        Self {
            left_ms: cfg.probe_budget_ms,
            probes: probes.max(1),
            max_ms: cfg.response_timeout_ms,
        }
    }

    /// The timeout of the next probe.
    pub fn next_ms(&self) -> u64 {
        (self.left_ms / u64::from(self.probes.max(1)))
            .min(self.max_ms)
            .max(Self::MIN_MS.min(self.max_ms))
    }

    /// A probe took `ms`.
    pub fn spend(&mut self, ms: u64) {
        self.left_ms = self.left_ms.saturating_sub(ms);
        self.probes = self.probes.saturating_sub(1).max(1);
    }

    pub fn probe(&mut self, p: HttpProbe) -> Result<ProbeResult> {
        let r = p.timeout_ms(self.next_ms()).probe()?;
        self.spend(r.latency_us / 1000);
        Ok(r)
    }
}

pub fn patterns_shown(patterns: &[String]) -> String {
    format!("({})", patterns.join("|"))
}

/// The database check: `psql ... -c <sql>` when commands run, a TCP connect
/// to the database port in dry runs (where commands are only recorded).
#[derive(Debug, Clone)]
pub struct DbCheck {
    pub ok: bool,
    pub observed: String,
    pub check: String,
}

pub fn db_check(ctx: &Context, cfg: &Config, sql: &str, expect: Option<&str>) -> Result<DbCheck> {
    let target = format!("{}:{}/{}", cfg.db_host, cfg.db_port, cfg.db_name);
    if !ctx.executes() {
        let tcp = TcpProbe::new(&cfg.db_host, cfg.db_port)
            .timeout_ms(cfg.db_timeout_ms.min(5000))
            .probe()?;
        return Ok(DbCheck {
            ok: tcp.healthy,
            observed: if tcp.healthy {
                "port accepts connections (psql not run in a dry run)".into()
            } else {
                format!("{} (psql not run in a dry run)", tcp.detail)
            },
            check: format!("database {target}: TCP connect"),
        });
    }
    let check = format!("database {target}: psql -c \"{sql}\"");
    let out = match cfg.psql_cmd(sql).run() {
        Ok(o) => o,
        Err(Error::Timeout(m)) => {
            return Ok(DbCheck {
                ok: false,
                observed: format!("timed out ({m})"),
                check,
            });
        }
        Err(e) => return Err(e).context("running psql"),
    };
    let stdout = out.stdout.trim();
    let ok = out.success() && expect.is_none_or(|e| stdout.lines().any(|l| l.trim() == e));
    let observed = if out.success() {
        format!("exit 0, {:?}", first_line(stdout))
    } else {
        format!(
            "exit {}: {}",
            out.exit_code
                .map_or_else(|| "by signal".to_string(), |c| c.to_string()),
            first_line(out.stderr.trim())
        )
    };
    Ok(DbCheck {
        ok,
        observed,
        check,
    })
}

pub fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("").trim()
}

fn probe_finding(ep: &Endpoint, r: &ProbeResult) -> Finding {
    let mut f = Finding::status(format!("{} GET {}", ep.label, ep.url), r.status, 200, 399);
    if r.status.is_none() {
        f.observed = format!("no answer ({})", r.detail);
    }
    f
}

fn ping_finding(cfg: &Config, r: &ProbeResult) -> Finding {
    let mut f = Finding::status(
        format!("MCP bridge GET {}", cfg.ping_url()),
        r.status,
        200,
        499,
    );
    if r.status.is_none() {
        f.observed = format!("no answer ({})", r.detail);
    }
    f
}

/// The checklist's MCP tool call, `curl -X POST .../mcp/tools/aidis_ping
/// -H "Content-Type: application/json" -d '{}'`, and its response time.
/// POSTs are not sent in dry runs: there, the bridge detection (a GET).
pub fn tool_call(ctx: &Context, cfg: &Config, budget: &mut Budget) -> Result<Vec<Finding>> {
    if !ctx.executes() {
        let r = budget.probe(cfg.ping_probe())?;
        let mut f = ping_finding(cfg, &r);
        f.observed = format!("{} (the POST is not sent in a dry run)", f.observed);
        return Ok(vec![f]);
    }
    let check = format!("MCP tool POST {}", cfg.ping_url());
    let timeout = budget.next_ms();
    let r = http::HttpRequest::post(cfg.ping_url(), "{}")
        .header("Content-Type", "application/json")
        .timeout_ms(timeout)
        .send();
    match r {
        Ok(r) => Ok({
            budget.spend(r.latency_us / 1000);
            vec![
                Finding::status(&check, Some(r.status), 200, 399),
                Finding::at_most(
                    "MCP tool response time",
                    (r.latency_us as f64 / 1000.0).round(),
                    cfg.max_latency_ms,
                    "ms",
                ),
            ]
        }),
        Err(Error::Failed(m)) | Err(Error::Timeout(m)) => {
            budget.spend(timeout);
            let mut f = Finding::status(&check, None, 200, 399);
            f.observed = format!("no answer ({m})");
            Ok(vec![f])
        }
        Err(e) => Err(e.into()),
    }
}

/// Everything the assessment measured.
pub struct Measured {
    pub endpoints: Vec<(Endpoint, ProbeResult)>,
    pub ping: ProbeResult,
    pub latencies: Vec<f64>,
    pub db: DbCheck,
    pub sys: SystemStats,
    pub procs: Procs,
    pub server_cpu: f64,
    pub server_count: u32,
    /// How long the server's CPU has been over the threshold, as recorded by
    /// earlier assessments (0 when it is over now for the first time).
    pub cpu_high_for_s: Option<u64>,
}

pub fn measure(ctx: &Context, cfg: &Config) -> Result<Measured> {
    // The five endpoints, the bridge, and the extra /healthz samples share
    // one time budget (the runbook's 1-minute detection).
    let eps = cfg.endpoints();
    let mut budget = Budget::new(cfg, eps.len() as u32 + cfg.perf_samples);
    let mut endpoints = Vec::new();
    for ep in eps {
        let r = budget.probe(cfg.probe(&ep.url))?;
        endpoints.push((ep, r));
    }
    let ping = budget.probe(cfg.ping_probe())?;
    // `time curl .../healthz`, several times: "consistently" over the limit.
    let mut latencies = Vec::new();
    if let Some((_, r)) = endpoints.iter().find(|(e, _)| e.url == cfg.healthz())
        && r.status.is_some()
    {
        latencies.push(r.latency_ms());
        for _ in 1..cfg.perf_samples {
            let r = budget.probe(cfg.probe(&cfg.healthz()))?;
            if r.status.is_some() {
                latencies.push(r.latency_ms());
            }
        }
    }
    let db = db_check(ctx, cfg, "SELECT 1;", Some("1"))?;
    let sys = health::system();
    let procs = count_processes(&cfg.process_patterns)?;
    let server = health::processes(&cfg.server_pattern)?;
    let server_cpu = f64::from(server.cpu_percent);
    // CPU over the limit "for >5 minutes": when it was first seen over,
    // kept across runs (so a monitor running rewind every minute sees it).
    let key = "cpu-high-since";
    let cpu_high_for_s = if server.count > 0 && server_cpu > cfg.max_cpu_percent {
        let now = clock::now_s();
        let since = match storage::get(key)?.and_then(|v| v.parse::<u64>().ok()) {
            Some(s) => s,
            None => {
                storage::set(key, &now.to_string())?;
                now
            }
        };
        Some(now.saturating_sub(since))
    } else {
        if storage::get(key)?.is_some() {
            storage::delete(key)?;
        }
        None
    };
    Ok(Measured {
        endpoints,
        ping,
        latencies,
        db,
        sys,
        procs,
        server_cpu,
        server_count: server.count,
        cpu_high_for_s,
    })
}

pub struct Verdict {
    pub scenario: Option<Scenario>,
    pub severity: Severity,
    pub level: u8,
    pub summary: String,
    pub findings: Vec<Finding>,
}

/// The flags the scenario choice depends on (pure, unit-tested).
#[derive(Debug, Default, Clone, Copy)]
pub struct Flags {
    pub processes: bool,
    pub db_down: bool,
    pub ready_down: bool,
    pub mcp_down: bool,
    pub services_down: usize,
    pub bridge_down: bool,
    pub performance: bool,
    pub warning: bool,
}

/// Triage: which scenario the measurements match, how bad it is, and the
/// level to start at. The most specific cause wins: runaway processes, then
/// the database, then failing health endpoints, then the bridge, then
/// performance.
pub fn choose(f: Flags) -> (Option<Scenario>, Severity, u8) {
    let any_down = f.services_down > 0;
    if f.processes {
        let sev = if any_down {
            Severity::Critical
        } else {
            Severity::Major
        };
        return (Some(Scenario::Processes), sev, 1);
    }
    if f.db_down || (f.ready_down && !f.mcp_down) {
        return (Some(Scenario::Database), Severity::Critical, 1);
    }
    if any_down {
        // The Scenario 1 procedure reverts to the Phase 0 baseline at once.
        let sev = if f.services_down > 1 || f.mcp_down {
            Severity::Critical
        } else {
            Severity::Major
        };
        return (Some(Scenario::Health), sev, 2);
    }
    if f.bridge_down {
        return (Some(Scenario::Mesh), Severity::Major, 1);
    }
    if f.performance {
        return (Some(Scenario::Performance), Severity::Major, 1);
    }
    if f.warning {
        return (None, Severity::Minor, 0);
    }
    (None, Severity::None, 0)
}

pub fn assess(cfg: &Config, m: &Measured) -> Verdict {
    let mut findings = Vec::new();
    let mut down: BTreeSet<Service> = BTreeSet::new();
    let mut failed = Vec::new();
    for (ep, r) in &m.endpoints {
        let f = probe_finding(ep, r);
        if f.breached {
            down.insert(ep.service);
            failed.push(format!("{} {}", ep.label, f.observed));
        }
        findings.push(f);
    }
    let mcp_down = m
        .endpoints
        .iter()
        .any(|(e, r)| e.url == cfg.healthz() && !r.healthy);
    let ready_down = m
        .endpoints
        .iter()
        .any(|(e, r)| e.url == cfg.readyz() && !r.healthy);
    findings.push(Finding::new(
        "services down at once",
        if down.is_empty() {
            "0".to_string()
        } else {
            format!(
                "{} ({})",
                down.len(),
                down.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
            )
        },
        "<= 1",
        down.len() > 1,
    ));

    // Scenario 3: the database itself.
    findings.push(Finding::check(
        &m.db.check,
        m.db.ok,
        &m.db.observed,
        "answers",
    ));

    // Scenario 5: the HTTP-MCP bridge.
    let ping = ping_finding(cfg, &m.ping);
    let bridge_down = ping.breached;
    findings.push(ping);

    // Scenario 2: performance.
    let lat_min = m.latencies.iter().copied().fold(f64::INFINITY, f64::min);
    let (lat_breach, lat_warn) = if m.latencies.is_empty() {
        (false, false)
    } else {
        let shown: Vec<String> = m.latencies.iter().map(|l| format!("{l:.0}")).collect();
        let observed = format!(
            "{} ms at least, in {} samples ({} ms)",
            num(lat_min.round()),
            m.latencies.len(),
            shown.join(", ")
        );
        findings.push(Finding::new(
            "MCP /healthz response time, consistently",
            &observed,
            format!("<= {} ms", num(cfg.max_latency_ms)),
            lat_min > cfg.max_latency_ms,
        ));
        findings.push(Finding::new(
            "MCP /healthz response time (warning)",
            &observed,
            format!("<= {} ms", num(cfg.warn_latency_ms)),
            lat_min > cfg.warn_latency_ms,
        ));
        (lat_min > cfg.max_latency_ms, lat_min > cfg.warn_latency_ms)
    };
    // "Memory usage >3000MB": the AIDIS processes' resident memory.
    let used_mb = m.procs.rss_mb;
    findings.push(memory_finding(cfg, &m.procs, cfg.max_memory_mb, false));
    findings.push(memory_finding(cfg, &m.procs, cfg.warn_memory_mb, true));
    let cpu_breach = m.cpu_high_for_s.is_some_and(|s| s >= cfg.cpu_sustain_s);
    findings.push(Finding::new(
        format!("CPU of {:?}", cfg.server_pattern),
        match (m.server_count, m.cpu_high_for_s) {
            (0, _) => "no such process".to_string(),
            (_, Some(s)) => format!("{}% for {s} s", num(m.server_cpu)),
            (_, None) => format!("{}%", num(m.server_cpu)),
        },
        format!(
            "<= {}%, or over it for less than {} s",
            num(cfg.max_cpu_percent),
            cfg.cpu_sustain_s
        ),
        cpu_breach,
    ));
    let performance = lat_breach || used_mb > cfg.max_memory_mb || cpu_breach;

    // Scenario 4: processes.
    let pats = patterns_shown(&cfg.process_patterns);
    findings.push(Finding::at_most(
        format!("processes matching {pats}"),
        f64::from(m.procs.count),
        f64::from(cfg.max_processes),
        "",
    ));
    findings.push(Finding::at_most(
        format!("processes matching {pats} (warning)"),
        f64::from(m.procs.count),
        f64::from(cfg.max_processes_after),
        "",
    ));
    findings.push(Finding::at_most(
        format!("memory of processes matching {pats}"),
        m.procs.rss_mb.round(),
        cfg.leak_memory_mb,
        "MB",
    ));
    findings.push(Finding::at_most(
        "system load (1 min)",
        m.sys.load_one,
        cfg.max_load,
        "",
    ));
    let processes = m.procs.count > cfg.max_processes
        || m.procs.rss_mb > cfg.leak_memory_mb
        || m.sys.load_one > cfg.max_load;

    let warning =
        lat_warn || m.procs.count > cfg.max_processes_after || used_mb > cfg.warn_memory_mb;
    let flags = Flags {
        processes,
        db_down: !m.db.ok,
        ready_down,
        mcp_down,
        services_down: down.len(),
        bridge_down,
        performance,
        warning,
    };
    let (scenario, severity, level) = choose(flags);
    let summary = match scenario {
        None if severity == Severity::Minor => {
            "all services answer; warning thresholds crossed (see findings)".to_string()
        }
        None => format!(
            "all {} health endpoints and the MCP tool answer; {} processes; database answers",
            m.endpoints.len(),
            m.procs.count
        ),
        Some(Scenario::Health) => format!("{} service(s) down: {}", down.len(), failed.join("; ")),
        Some(Scenario::Database) => format!("database: {}; {}", m.db.observed, {
            if ready_down {
                "/readyz fails"
            } else {
                "/readyz answers"
            }
        }),
        Some(Scenario::Processes) => format!(
            "{} processes match {pats} (limit {}), {} MB resident, load {}",
            m.procs.count,
            cfg.max_processes,
            num(m.procs.rss_mb.round()),
            num(m.sys.load_one)
        ),
        Some(Scenario::Mesh) => format!("the MCP bridge fails: {}", m.ping.detail),
        Some(Scenario::Performance) => "performance over the limits (see findings)".to_string(),
    };
    Verdict {
        scenario,
        severity,
        level,
        summary,
        findings,
    }
}

/// The runbook's post-rollback validation checklist, as findings.
pub fn checklist(ctx: &Context, cfg: &Config, level: u8) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    // 1. Service health: all five endpoints (and the tool call, 3.) share
    // one time budget.
    let eps = cfg.endpoints();
    let mut budget = Budget::new(cfg, eps.len() as u32 + 1);
    let mut healthz_latency = None;
    for ep in eps {
        let r = budget.probe(cfg.probe(&ep.url))?;
        if ep.url == cfg.healthz() && r.status.is_some() {
            healthz_latency = Some(r.latency_ms());
        }
        out.push(probe_finding(&ep, &r));
    }
    // 2. Database connectivity.
    let db = db_check(
        ctx,
        cfg,
        "SELECT current_database();",
        Some(cfg.db_name.as_str()),
    )?;
    out.push(Finding::check(&db.check, db.ok, &db.observed, "answers"));
    // 3. MCP tool, within the response-time limit.
    out.extend(tool_call(ctx, cfg, &mut budget)?);
    if let Some(l) = healthz_latency {
        out.push(Finding::at_most(
            "MCP /healthz response time",
            l.round(),
            cfg.max_latency_ms,
            "ms",
        ));
    }
    // 4. Process count.
    let procs = count_processes(&cfg.process_patterns)?;
    out.push(Finding::at_most(
        format!(
            "processes matching {}",
            patterns_shown(&cfg.process_patterns)
        ),
        f64::from(procs.count),
        f64::from(cfg.max_processes_after),
        "",
    ));
    // 5. Memory: the AIDIS processes under the limit ("Memory usage
    // <3000MB"); the machine's available memory (`free -h`: "Available
    // >2GB").
    out.push(memory_finding(cfg, &procs, cfg.max_memory_mb, false));
    let sys = health::system();
    let available = sys.memory_total_bytes.saturating_sub(sys.memory_used_bytes) as f64 / MIB;
    out.push(Finding::at_least(
        "memory available (machine)",
        available.round(),
        cfg.min_available_mb,
        "MB",
    ));
    // The version: after a Phase 0 rollback, the checkout is on the baseline.
    if level >= 2 {
        out.push(head_finding(ctx, cfg)?);
    }
    // The data recovery verification (row counts, `diff -r` of the config).
    out.extend(data_recovery(ctx, cfg)?);
    // 6. Integration suite, when configured.
    if let Some(cmd) = cfg.cmd(&cfg.integration_command) {
        let shown = cmd.display();
        let o = cmd.run()?;
        out.push(Finding::check(
            format!("integration tests: {shown}"),
            o.success(),
            if o.simulated {
                "not run in a dry run".to_string()
            } else {
                format!("exit {}", o.exit_code.unwrap_or(-1))
            },
            "exit 0",
        ));
    }
    Ok(out)
}

/// The run key of the row counts taken before the rollback.
pub const ROWS_BEFORE: &str = "rows-before";
/// The run key of the config copy taken before the rollback.
pub const CONFIG_COPY: &str = "config-copy";

/// The runbook's "Verify Database Integrity": `SELECT COUNT(*) FROM <t>`
/// for each of `count_tables` (only when commands run).
pub fn count_rows(cfg: &Config) -> Result<Vec<(String, std::result::Result<u64, String>)>> {
    let mut out = Vec::new();
    for t in &cfg.count_tables {
        let r = match cfg.psql_cmd(&format!("SELECT COUNT(*) FROM {t};")).run() {
            Ok(o) if o.success() => o
                .stdout
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("unexpected output {:?}", first_line(o.stdout.trim()))),
            Ok(o) => Err(format!(
                "exit {}: {}",
                o.exit_code.unwrap_or(-1),
                first_line(o.stderr.trim())
            )),
            Err(Error::Timeout(m)) => Err(format!("timed out ({m})")),
            Err(e) => return Err(e).context("running psql"),
        };
        out.push((t.clone(), r));
    }
    Ok(out)
}

/// The files under `dir`, by their path relative to it.
pub fn files_under(dir: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if !storage::exists(dir)? {
        return Ok(out);
    }
    let entries = storage::list_dir(dir, true)?;
    // Entries come back under the directory's canonical path: the
    // shortest parent is the directory itself.
    let Some(base) = entries
        .iter()
        .filter_map(|e| e.path.rsplit_once('/').map(|(d, _)| d.to_string()))
        .min_by_key(|d| d.len())
    else {
        return Ok(out);
    };
    for e in entries.iter().filter(|e| e.kind == EntryKind::File) {
        let rel = e
            .path
            .strip_prefix(&base)
            .unwrap_or(&e.path)
            .trim_start_matches('/');
        out.insert(rel.to_string(), e.path.clone());
    }
    Ok(out)
}

/// The runbook's data recovery verification, after a rollback that took
/// the pre-rollback backups: the row counts (no fewer rows than before the
/// rollback) and `diff -r config/ backups/config-<ts>/` (files git does not
/// track must come through unchanged; tracked ones change with the
/// checkout, and are listed). Nothing in a dry run, which changed nothing.
pub fn data_recovery(ctx: &Context, cfg: &Config) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    if !ctx.executes() {
        return Ok(out);
    }
    let before: BTreeMap<String, u64> =
        storage::get_json(&ctx.run_key(ROWS_BEFORE))?.unwrap_or_default();
    for (table, now) in count_rows(cfg)? {
        let check = format!("rows in {table} (SELECT COUNT(*))");
        out.push(match (now, before.get(&table)) {
            (Ok(n), Some(&b)) => {
                let mut f = Finding::at_least(&check, n as f64, b as f64, "");
                f.threshold = format!(">= {b} (before the rollback)");
                f
            }
            (Ok(n), None) => Finding::check(&check, true, n.to_string(), "a count"),
            (Err(e), _) => Finding::check(&check, false, e, "a count"),
        });
    }
    if let Some(copy) = storage::get(&ctx.run_key(CONFIG_COPY))? {
        out.push(config_consistency(cfg, &copy)?);
    }
    Ok(out)
}

fn config_consistency(cfg: &Config, copy: &str) -> Result<Finding> {
    let now = files_under(&cfg.config_path())?;
    let before = files_under(copy)?;
    let mut changed = Vec::new();
    for (rel, old) in &before {
        match now.get(rel) {
            None => changed.push((rel.clone(), "missing")),
            Some(new) => {
                if storage::read_to_string(old)? != storage::read_to_string(new)? {
                    changed.push((rel.clone(), "differs"));
                }
            }
        }
    }
    let added: Vec<&String> = now.keys().filter(|k| !before.contains_key(*k)).collect();
    // What git tracks changes with the checkout (or was stashed).
    let tracked: BTreeSet<String> = if changed.is_empty() && added.is_empty() {
        BTreeSet::new()
    } else {
        let o = Cmd::new(cfg.program(&cfg.git))
            .args(["ls-files"])
            .cwd(cfg.config_path())
            .timeout_ms(cfg.command_timeout_ms)
            .run()?;
        if o.success() {
            o.stdout.lines().map(|l| l.trim().to_string()).collect()
        } else {
            BTreeSet::new()
        }
    };
    let (expected, lost): (Vec<_>, Vec<_>) = changed
        .into_iter()
        .partition(|(rel, _)| tracked.contains(rel));
    let list = |v: &[(String, &str)]| {
        v.iter()
            .map(|(r, how)| format!("{r} {how}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut observed = if lost.is_empty() {
        format!("{} files identical", before.len() - expected.len())
    } else {
        format!("not in git and not as before: {}", list(&lost))
    };
    if !expected.is_empty() {
        observed.push_str(&format!(
            "; changed with the checkout (tracked by git): {}",
            list(&expected)
        ));
    }
    if !added.is_empty() {
        observed.push_str(&format!(
            "; new: {}",
            added
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(Finding::new(
        format!(
            "configuration consistency: diff -r {} {copy}",
            cfg.config_path()
        ),
        observed,
        "files git does not track unchanged",
        !lost.is_empty(),
    ))
}

/// Whether the checkout is on the baseline ref.
pub fn head_finding(ctx: &Context, cfg: &Config) -> Result<Finding> {
    let repo = Repo::new(&cfg.root);
    let (head, shown, head_sha) = repo.head_described()?;
    // The commit this incident pinned, when it pinned one: the branch may
    // have moved on since.
    let pinned = ctx.pinned(crate::steps::BASELINE_COMMIT)?;
    let target = pinned.clone().or_else(|| repo.resolve(&cfg.baseline_ref));
    let mut ok = match &head {
        Head::Branch(b) if pinned.is_none() => {
            *b == cfg.baseline_ref || (target.is_some() && head_sha == target)
        }
        _ => target.is_some() && head_sha == target,
    };
    if !ok && pinned.is_none() && ctx.executes() {
        // A ref the files do not resolve (a loose annotated tag, a short
        // sha): ask git.
        let rev = |r: &str| -> Result<Option<String>> {
            let o = Cmd::new(cfg.program(&cfg.git))
                .args(["rev-parse", "--verify", "--quiet", r])
                .cwd(&cfg.root)
                .timeout_ms(cfg.command_timeout_ms)
                .run()?;
            Ok(o.success().then(|| o.stdout.trim().to_string()))
        };
        let h = rev("HEAD")?;
        ok = h.is_some() && h == rev(&format!("{}^{{commit}}", cfg.baseline_ref))?;
    }
    let expected = match &target {
        Some(s) => format!("= {} ({})", cfg.baseline_ref, &s[..7]),
        None => format!("= {}", cfg.baseline_ref),
    };
    Ok(Finding::new(
        format!("git HEAD of {}", cfg.root),
        shown,
        expected,
        !ok,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triage_picks_the_most_specific_scenario() {
        let none = Flags::default();
        assert_eq!(choose(none), (None, Severity::None, 0));
        let warn = Flags {
            warning: true,
            ..none
        };
        assert_eq!(choose(warn), (None, Severity::Minor, 0));
        // Phase 4 serving 500s on the MCP endpoints: Scenario 1, at the
        // Phase 0 rollback.
        let phase4 = Flags {
            mcp_down: true,
            ready_down: true,
            services_down: 2,
            ..none
        };
        assert_eq!(
            choose(phase4),
            (Some(Scenario::Health), Severity::Critical, 2)
        );
        let frontend = Flags {
            services_down: 1,
            ..none
        };
        assert_eq!(
            choose(frontend),
            (Some(Scenario::Health), Severity::Major, 2)
        );
        // Readiness down while the MCP server is up: the database.
        let ready = Flags {
            ready_down: true,
            services_down: 1,
            ..none
        };
        assert_eq!(choose(ready).0, Some(Scenario::Database));
        let db = Flags {
            db_down: true,
            ..phase4
        };
        assert_eq!(choose(db).0, Some(Scenario::Database));
        let explosion = Flags {
            processes: true,
            ..phase4
        };
        assert_eq!(
            choose(explosion),
            (Some(Scenario::Processes), Severity::Critical, 1)
        );
        let explosion = Flags {
            processes: true,
            ..none
        };
        assert_eq!(
            choose(explosion),
            (Some(Scenario::Processes), Severity::Major, 1)
        );
        let mesh = Flags {
            bridge_down: true,
            performance: true,
            ..none
        };
        assert_eq!(choose(mesh), (Some(Scenario::Mesh), Severity::Major, 1));
        let perf = Flags {
            performance: true,
            ..none
        };
        assert_eq!(
            choose(perf),
            (Some(Scenario::Performance), Severity::Major, 1)
        );
        for s in Scenario::ALL {
            assert_eq!(Scenario::parse(s.id()), Some(s));
        }
    }
}
