//! The AIVillage plugin: the "Emergency Rollback Procedures, AIVillage
//! System Recovery Guide" runbook (`shared/seeds/002_60f3d3f12fe8aa04.txt`).
//!
//! AIVillage runs four services, restarted in this order: `gateway`, `p2p`,
//! `agents`, `rag`. Each has a health URL. The assessment probes them and
//! applies the runbook's decision matrix:
//!
//! | severity | users affected | downtime | action |
//! | --- | --- | --- | --- |
//! | critical | > 50 % | > 5 min | level 2, full rollback |
//! | high | 10-50 % | 1-5 min | level 1, component isolation; level 2 if it does not verify |
//! | medium | < 10 % | < 1 min | fix in place: no automatic rollback |
//! | low | none | none | healthy |
//!
//! - "Users affected" is the share of components whose health check fails
//!   (or that are degraded, see below).
//! - "Downtime" is how long the failing components have been failing. The
//!   plugin writes the time it first sees a component fail to its key-value
//!   state (`down_since:<component>`, kept across runs, cleared when the
//!   component is healthy again). Only real runs keep it (dry runs and plans
//!   write to an in-memory overlay), so downtime counts from the first
//!   `rewind run` that saw the failure.
//! - The runbook's "performance degraded > 50 % from baseline" makes it
//!   critical; a degradation under 25 % needs no rollback. The baseline is
//!   the runbook's 100 ms; a component whose median latency is more than
//!   25 % over it counts as degraded.
//!
//! The severity is the highest of the three. Level 1 ("component
//! isolation") touches only the failed components: stop them, restore their
//! own files from `*.backup` ("Restore Specific Components"), start them
//! again with a health gate. Level 2 ("full rollback") is the runbook's
//! phases 1-4: isolate, maintenance page, every `*.backup` under the tree
//! restored, configuration restored, imports restored and checked, the four
//! services restarted in order with a health gate after each (stopping at
//! the first one that does not come back), the validation scripts, and the
//! maintenance page removed. Both end by writing a rollback record.
//!
//! The service manager, proxy and scripts are commands from the config
//! (`{name}` is replaced by the component's name), defaulting to the
//! runbook's `systemctl`, `nginx` and `python` commands. Every key and its
//! default is in `docs/plugins/aivillage.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use rewind_sdk::prelude::*;
use rewind_sdk::storage::EntryKind;
use serde::{Deserialize, Serialize};

/// The components, in the runbook's restart order.
const COMPONENTS: [&str; 4] = ["gateway", "p2p", "agents", "rag"];

// ---------------------------------------------------------------- config

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComponentSpec {
    health_url: Option<String>,
    files: Option<Vec<String>>,
    remove: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComponentsSpec {
    gateway: Option<ComponentSpec>,
    p2p: Option<ComponentSpec>,
    agents: Option<ComponentSpec>,
    rag: Option<ComponentSpec>,
}

/// `[plugin.config]` as written; defaults are the runbook's values.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "d_root")]
    root: String,
    #[serde(default)]
    components: ComponentsSpec,
    #[serde(default = "d_stop")]
    stop_command: Vec<String>,
    #[serde(default = "d_start")]
    start_command: Vec<String>,
    #[serde(default = "d_status")]
    status_command: Vec<String>,
    #[serde(default = "d_page")]
    maintenance_page: String,
    #[serde(default = "d_text")]
    maintenance_text: String,
    #[serde(default = "d_reload")]
    reload_command: Vec<String>,
    #[serde(default = "d_config_files")]
    config_files: Vec<String>,
    #[serde(default = "d_systemd_source")]
    systemd_source: String,
    #[serde(default = "d_systemd_dir")]
    systemd_unit_dir: String,
    #[serde(default = "d_daemon_reload")]
    daemon_reload_command: Vec<String>,
    #[serde(default = "d_restore_imports")]
    restore_imports_command: Vec<String>,
    #[serde(default = "d_import_check")]
    import_check_command: Vec<String>,
    #[serde(default = "d_validation")]
    validation_commands: Vec<Vec<String>>,
    #[serde(default = "d_query_url")]
    query_url: String,
    #[serde(default = "d_query_body")]
    query_body: String,
    #[serde(default = "d_query_max_ms")]
    query_max_ms: u64,
    #[serde(default = "d_baseline")]
    baseline_latency_ms: f64,
    #[serde(default = "d_critical_impact")]
    critical_impact_percent: f64,
    #[serde(default = "d_high_impact")]
    high_impact_percent: f64,
    #[serde(default = "d_critical_downtime")]
    critical_downtime_ms: u64,
    #[serde(default = "d_high_downtime")]
    high_downtime_ms: u64,
    #[serde(default = "d_critical_degradation")]
    critical_degradation_percent: f64,
    #[serde(default = "d_minor_degradation")]
    minor_degradation_percent: f64,
    #[serde(default = "d_health_timeout")]
    health_timeout_ms: u64,
    #[serde(default = "d_health_interval")]
    health_interval_ms: u64,
    #[serde(default = "d_probe_timeout")]
    probe_timeout_ms: u64,
    #[serde(default = "d_command_timeout")]
    command_timeout_ms: u64,
    #[serde(default = "d_records_dir")]
    records_dir: String,
    #[serde(default = "d_git_fallback_ref")]
    git_fallback_ref: String,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}
fn d_root() -> String {
    "/opt/aivillage".into()
}
fn d_stop() -> Vec<String> {
    strings(&["systemctl", "stop", "aivillage-{name}"])
}
fn d_start() -> Vec<String> {
    strings(&["systemctl", "start", "aivillage-{name}"])
}
fn d_status() -> Vec<String> {
    strings(&["systemctl", "status", "aivillage-{name}"])
}
fn d_page() -> String {
    "/var/www/html/maintenance.html".into()
}
fn d_text() -> String {
    "System maintenance in progress".into()
}
fn d_reload() -> Vec<String> {
    strings(&["nginx", "-s", "reload"])
}
fn d_config_files() -> Vec<String> {
    strings(&["config/.env", "config/database_config.json"])
}
fn d_systemd_source() -> String {
    "config/systemd".into()
}
fn d_systemd_dir() -> String {
    "/etc/systemd/system".into()
}
fn d_daemon_reload() -> Vec<String> {
    strings(&["systemctl", "daemon-reload"])
}
fn d_restore_imports() -> Vec<String> {
    strings(&["python", "scripts/restore_imports.py", "--from-backup"])
}
fn d_import_check() -> Vec<String> {
    strings(&[
        "python",
        "-c",
        "import sys; sys.path.append('.'); from core.gateway.server import app; print('Gateway imports OK')",
    ])
}
fn d_validation() -> Vec<Vec<String>> {
    vec![
        strings(&["python", "scripts/test_p2p_connection.py"]),
        strings(&["python", "scripts/test_agent_response.py"]),
        strings(&["python", "scripts/test_full_system.py"]),
    ]
}
fn d_query_url() -> String {
    "http://localhost:8000/api/query".into()
}
fn d_query_body() -> String {
    r#"{"query": "test rollback system", "user_id": "rollback_test"}"#.into()
}
fn d_query_max_ms() -> u64 {
    2000
}
fn d_baseline() -> f64 {
    100.0
}
fn d_critical_impact() -> f64 {
    50.0
}
fn d_high_impact() -> f64 {
    10.0
}
fn d_critical_downtime() -> u64 {
    5 * 60_000
}
fn d_high_downtime() -> u64 {
    60_000
}
fn d_critical_degradation() -> f64 {
    50.0
}
fn d_minor_degradation() -> f64 {
    25.0
}
fn d_health_timeout() -> u64 {
    60_000
}
fn d_health_interval() -> u64 {
    1000
}
fn d_probe_timeout() -> u64 {
    2000
}
fn d_command_timeout() -> u64 {
    60_000
}
fn d_records_dir() -> String {
    "logs/rollbacks".into()
}
/// The runbook's "Backup Files Missing": `git checkout HEAD~1 -- <file>`.
fn d_git_fallback_ref() -> String {
    "HEAD~1".into()
}

/// One service, with its defaults filled in.
#[derive(Debug, Clone)]
struct Component {
    name: &'static str,
    health_url: String,
    /// Its own files, restored from `<file>.backup` by component isolation.
    files: Vec<String>,
    /// Files the deployment added, removed by the rollback.
    remove: Vec<String>,
}

fn default_files(name: &str) -> (Vec<String>, Vec<String>) {
    match name {
        "gateway" => (strings(&["core/gateway/server.py"]), Vec::new()),
        "p2p" => (strings(&["core/p2p/mesh_protocol.py"]), Vec::new()),
        "agents" => (
            strings(&["core/agents/cognative_nexus_controller.py"]),
            strings(&["packages/core/legacy/error_handling.py"]),
        ),
        _ => (strings(&["core/rag/hyper_rag.py"]), Vec::new()),
    }
}

#[derive(Debug)]
struct Config {
    raw: RawConfig,
    components: Vec<Component>,
}

impl Config {
    fn load(ctx: &Context) -> Result<Self> {
        let mut raw: RawConfig = ctx.config()?;
        while raw.root.len() > 1 && raw.root.ends_with('/') {
            raw.root.pop();
        }
        let specs = std::mem::take(&mut raw.components);
        let mut components = Vec::new();
        for (name, spec) in [
            ("gateway", specs.gateway),
            ("p2p", specs.p2p),
            ("agents", specs.agents),
            ("rag", specs.rag),
        ] {
            let spec = spec.unwrap_or_default();
            let (files, remove) = default_files(name);
            let health_url = match (spec.health_url, name) {
                (Some(u), _) => u,
                (None, "gateway") => "http://localhost:8000/health".to_string(),
                (None, _) => bail!(
                    "bad [plugin.config] of plugin {:?}: components.{name}.health_url is not set; the runbook gives a health URL only for the gateway (http://localhost:8000/health), so set the {name} service's one, e.g. [plugin.config.components.{name}] health_url = \"http://127.0.0.1:PORT/health\"",
                    ctx.plugin
                ),
            };
            components.push(Component {
                name,
                health_url,
                files: spec.files.unwrap_or(files),
                remove: spec.remove.unwrap_or(remove),
            });
        }
        for (key, argv) in [
            ("stop_command", &raw.stop_command),
            ("start_command", &raw.start_command),
            ("status_command", &raw.status_command),
        ] {
            if argv.is_empty() || argv[0].trim().is_empty() {
                bail!(
                    "bad [plugin.config] of plugin {:?}: {key} must name a program",
                    ctx.plugin
                );
            }
        }
        if raw.baseline_latency_ms <= 0.0 {
            bail!(
                "bad [plugin.config] of plugin {:?}: baseline_latency_ms must be above 0",
                ctx.plugin
            );
        }
        Ok(Self { raw, components })
    }

    /// A path relative to the root (or absolute as written).
    fn path(&self, rel: &str) -> String {
        if rel.starts_with('/') {
            rel.to_string()
        } else {
            format!("{}/{}", self.raw.root, rel.trim_start_matches("./"))
        }
    }

    fn component(&self, name: &str) -> Result<&Component> {
        match self.components.iter().find(|c| c.name == name) {
            Some(c) => Ok(c),
            None => bail!("unknown component {name:?}"),
        }
    }

    /// A configured command for one component (`{name}` replaced), run in
    /// the root; `None` when the command is empty (skipped).
    fn cmd(&self, argv: &[String], name: &str) -> Option<Cmd> {
        let (program, args) = argv.split_first()?;
        if program.trim().is_empty() {
            return None;
        }
        Some(
            Cmd::new(program.replace("{name}", name))
                .args(args.iter().map(|a| a.replace("{name}", name)))
                .cwd(&self.raw.root)
                .timeout_ms(self.raw.command_timeout_ms),
        )
    }

    fn records_dir(&self) -> String {
        self.path(&self.raw.records_dir)
    }

    /// Under the root (so the root's grant covers it).
    fn under_root(&self, p: &str) -> bool {
        p == self.raw.root || p.starts_with(&format!("{}/", self.raw.root))
    }

    /// Every command the plugin may run with this config. The service
    /// manager's reload runs only after unit files were installed, so
    /// without a unit directory (`systemd_unit_dir = ""`) it never runs.
    fn all_commands(&self) -> Vec<&Vec<String>> {
        let r = &self.raw;
        let mut v = vec![
            &r.stop_command,
            &r.start_command,
            &r.status_command,
            &r.reload_command,
            &r.restore_imports_command,
            &r.import_check_command,
        ];
        if !r.systemd_unit_dir.is_empty() {
            v.push(&r.daemon_reload_command);
        }
        v.extend(r.validation_commands.iter());
        v
    }

    /// The files the git fallback restores: every component's own files
    /// (the runbook names the gateway's and the p2p's), in restart order.
    fn git_fallback_files(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for c in &self.components {
            for f in &c.files {
                if !v.contains(f) {
                    v.push(f.clone());
                }
            }
        }
        v
    }

    fn health(&self, c: &Component) -> HttpProbe {
        HttpProbe::get(&c.health_url).timeout_ms(self.raw.probe_timeout_ms)
    }

    fn degraded_above_ms(&self) -> f64 {
        self.raw.degraded_above_ms()
    }
}

impl RawConfig {
    /// The latency above which a component counts as degraded: more than
    /// `minor_degradation_percent` over the baseline ("Performance issues
    /// <25% degradation from baseline: Rollback Not Required"). The one
    /// definition the assessment (what to isolate) and the verification
    /// ("Response times within baseline") both use: a latency the
    /// assessment would not act on cannot fail a rollback's verification.
    fn degraded_above_ms(&self) -> f64 {
        self.baseline_latency_ms * (1.0 + self.minor_degradation_percent / 100.0)
    }
}

// ----------------------------------------------------------- measuring

/// One component's health, measured now.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Health {
    name: String,
    url: String,
    healthy: bool,
    status: Option<u16>,
    /// Median of three probes when it answers healthy, else the one probe.
    latency_ms: f64,
    detail: String,
}

fn measure(cfg: &Config, c: &Component) -> Result<Health> {
    let probe = cfg.health(c);
    let first = probe.probe()?;
    let mut latency = first.latency_ms();
    if first.healthy {
        // One slow answer on a busy machine is not a degradation: take the
        // median of three.
        let mut l = vec![latency];
        for _ in 0..2 {
            let r = probe.probe()?;
            l.push(if r.healthy { r.latency_ms() } else { f64::MAX });
        }
        l.sort_by(|a, b| a.total_cmp(b));
        latency = l[1];
    }
    let detail = match first.status {
        Some(s) => format!("{s} {}", one_line(&first.body, 120)),
        None => first.detail.clone(),
    };
    Ok(Health {
        name: c.name.to_string(),
        url: c.health_url.clone(),
        healthy: first.healthy && latency < f64::MAX,
        status: first.status,
        latency_ms: latency,
        detail,
    })
}

fn measure_all(cfg: &Config) -> Result<Vec<Health>> {
    cfg.components.iter().map(|c| measure(cfg, c)).collect()
}

fn one_line(s: &str, max: usize) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > max {
        format!("{}...", s.chars().take(max).collect::<String>())
    } else {
        s
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn fmt_ms(ms: u64) -> String {
    if ms >= 60_000 && ms.is_multiple_of(60_000) {
        format!("{} min", ms / 60_000)
    } else if ms >= 1000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{ms} ms")
    }
}

/// The runbook's severities, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Tier {
    Low,
    Medium,
    High,
    Critical,
}

impl Tier {
    fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

/// The decision matrix applied to the measurements.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Decision {
    /// Components failing their health check.
    failed: Vec<String>,
    /// Components answering, but more than the minor degradation slower
    /// than the baseline.
    degraded: Vec<String>,
    impact_percent: f64,
    downtime_ms: u64,
    /// Worst latency over the baseline, in percent (negative: faster).
    degradation_percent: f64,
    by_impact: Tier,
    by_downtime: Tier,
    by_degradation: Tier,
    tier: Tier,
}

impl Decision {
    /// The components level 1 isolates, in restart order.
    fn to_isolate(&self) -> Vec<String> {
        COMPONENTS
            .iter()
            .filter(|c| self.failed.iter().chain(&self.degraded).any(|f| f == *c))
            .map(|c| c.to_string())
            .collect()
    }
}

/// Pure: the tiers from the measurements (unit-tested natively).
fn decide(raw: &RawConfig, health: &[Health], down_since: &[(String, u64)], now: u64) -> Decision {
    let failed: Vec<String> = health
        .iter()
        .filter(|h| !h.healthy)
        .map(|h| h.name.clone())
        .collect();
    let limit = raw.degraded_above_ms();
    let degraded: Vec<String> = health
        .iter()
        .filter(|h| h.healthy && h.latency_ms > limit)
        .map(|h| h.name.clone())
        .collect();
    let affected = failed.len() + degraded.len();
    let impact = if health.is_empty() {
        0.0
    } else {
        affected as f64 * 100.0 / health.len() as f64
    };
    let downtime = down_since
        .iter()
        .filter(|(n, _)| failed.contains(n))
        .map(|(_, t)| now.saturating_sub(*t))
        .max()
        .unwrap_or(0);
    let worst = health
        .iter()
        .filter(|h| h.healthy)
        .map(|h| h.latency_ms)
        .fold(f64::NEG_INFINITY, f64::max);
    let degradation = if worst.is_finite() {
        (worst - raw.baseline_latency_ms) * 100.0 / raw.baseline_latency_ms
    } else {
        0.0
    };
    let by_impact = if impact > raw.critical_impact_percent {
        Tier::Critical
    } else if impact >= raw.high_impact_percent {
        Tier::High
    } else if affected > 0 {
        Tier::Medium
    } else {
        Tier::Low
    };
    let by_downtime = if failed.is_empty() {
        Tier::Low
    } else if downtime > raw.critical_downtime_ms {
        Tier::Critical
    } else if downtime >= raw.high_downtime_ms {
        Tier::High
    } else {
        Tier::Medium
    };
    let by_degradation = if degradation > raw.critical_degradation_percent {
        Tier::Critical
    } else if degradation >= raw.minor_degradation_percent {
        Tier::High
    } else {
        Tier::Low
    };
    let tier = by_impact.max(by_downtime).max(by_degradation);
    Decision {
        failed,
        degraded,
        impact_percent: impact,
        downtime_ms: downtime,
        degradation_percent: degradation,
        by_impact,
        by_downtime,
        by_degradation,
        tier,
    }
}

fn down_key(name: &str) -> String {
    format!("down_since:{name}")
}

/// Remember when each failing component was first seen failing; forget
/// the healthy ones. Returns (component, first seen) of the failing ones.
fn track_downtime(health: &[Health], now: u64) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for h in health {
        let key = down_key(&h.name);
        let since = storage::get(&key)?.and_then(|v| v.parse::<u64>().ok());
        if h.healthy {
            if since.is_some() {
                storage::delete(&key)?;
            }
        } else {
            let since = match since {
                Some(t) => t,
                None => {
                    storage::set(&key, &now.to_string())?;
                    now
                }
            };
            out.push((h.name.clone(), since));
        }
    }
    Ok(out)
}

/// Measure, track downtime and decide.
fn assess_now(cfg: &Config) -> Result<(Vec<Health>, Decision)> {
    let health = measure_all(cfg)?;
    let now = now_ms();
    let down = track_downtime(&health, now)?;
    let d = decide(&cfg.raw, &health, &down, now);
    Ok((health, d))
}

fn health_findings(cfg: &Config, health: &[Health]) -> Vec<Finding> {
    let mut out = Vec::new();
    for h in health {
        out.push(Finding::status(
            format!("{}: GET {}", h.name, h.url),
            h.status,
            200,
            399,
        ));
        if h.healthy {
            out.push(Finding::at_most(
                format!("{}: latency (median of 3)", h.name),
                (h.latency_ms * 10.0).round() / 10.0,
                cfg.degraded_above_ms(),
                "ms",
            ));
        }
    }
    out
}

fn decision_findings(raw: &RawConfig, d: &Decision, total: usize) -> Vec<Finding> {
    let affected: Vec<&String> = d.failed.iter().chain(&d.degraded).collect();
    let names = if affected.is_empty() {
        "none".to_string()
    } else {
        affected
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        Finding::new(
            "users affected (share of components failing health or degraded)",
            format!(
                "{:.0}% ({} of {total}: {names}) -> {}",
                d.impact_percent,
                affected.len(),
                d.by_impact.as_str()
            ),
            format!(
                "< {:.0}% medium, {:.0}-{:.0}% high (isolate), > {:.0}% critical (full rollback)",
                raw.high_impact_percent,
                raw.high_impact_percent,
                raw.critical_impact_percent,
                raw.critical_impact_percent
            ),
            d.by_impact >= Tier::High,
        ),
        Finding::new(
            "downtime (since a failing component was first seen failing)",
            format!("{} -> {}", fmt_ms(d.downtime_ms), d.by_downtime.as_str()),
            format!(
                "< {} medium, {}-{} high, > {} critical (full rollback)",
                fmt_ms(raw.high_downtime_ms),
                fmt_ms(raw.high_downtime_ms),
                fmt_ms(raw.critical_downtime_ms),
                fmt_ms(raw.critical_downtime_ms)
            ),
            d.by_downtime >= Tier::High,
        ),
        Finding::new(
            format!(
                "performance vs baseline {} ms (worst answering component)",
                raw.baseline_latency_ms
            ),
            if d.failed.len() == total {
                "no component answers: not measurable -> low".to_string()
            } else {
                format!(
                    "{:+.0}% -> {}",
                    d.degradation_percent,
                    d.by_degradation.as_str()
                )
            },
            format!(
                "< +{:.0}% no rollback, > +{:.0}% critical (full rollback)",
                raw.minor_degradation_percent, raw.critical_degradation_percent
            ),
            d.by_degradation >= Tier::High,
        ),
    ]
}

// ------------------------------------------------------- files, backups

/// A `*.backup` file and the file it restores, both absolute.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Restored {
    backup: String,
    target: String,
    bytes: u64,
    /// FNV-1a of the backup's contents, to check the restored file later.
    fnv: String,
}

fn fnv64(b: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Every `*.backup` file under the root (recursively), sorted. Paths are
/// the host's (canonical, absolute).
fn find_backups(cfg: &Config) -> Result<Vec<String>> {
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
fn pinned_backups(ctx: &Context, cfg: &Config) -> Result<Vec<Restored>> {
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
fn canonical_root(cfg: &Config) -> Result<Option<String>> {
    let top = storage::list_dir(&cfg.raw.root, false)?;
    Ok(top
        .first()
        .and_then(|e| e.path.rsplit_once('/').map(|(dir, _)| dir.to_string())))
}

/// `path` relative to the root, for messages and records.
fn rel(canon: &Option<String>, cfg: &Config, path: &str) -> String {
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

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// Keep the outermost of overlapping paths (snapshots refuse overlaps).
fn outermost(mut paths: Vec<String>) -> Vec<String> {
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

fn failed_key(ctx: &Context) -> String {
    ctx.run_key(&format!("isolate-l{}", ctx.level))
}

/// The components this level acts on: decided in `plan`, read back by the
/// steps (each call is a fresh instance); measured again when missing.
fn planned_failed(ctx: &Context, cfg: &Config) -> Result<Vec<String>> {
    if let Some(v) = storage::get_json::<Vec<String>>(&failed_key(ctx))? {
        return Ok(v);
    }
    let (_, d) = assess_now(cfg)?;
    Ok(d.to_isolate())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Event {
    step: String,
    ok: bool,
    message: String,
    at_ms: u64,
}

fn push_event(ctx: &Context, step: &str, o: &StepOutcome) -> Result<()> {
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

/// Run a command; a non-zero exit is a failure with its output.
fn run_ok(cmd: &Cmd, what: &str) -> Result<std::result::Result<String, String>> {
    let out = cmd.run()?;
    if out.simulated {
        return Ok(Ok(format!("would run `{}`", cmd.display())));
    }
    if out.exit_code == Some(0) {
        let said = one_line(&out.stdout, 160);
        Ok(Ok(if said.is_empty() {
            format!("`{}` ok", cmd.display())
        } else {
            format!("`{}`: {said}", cmd.display())
        }))
    } else {
        let code = out
            .exit_code
            .map_or("was killed by a signal".to_string(), |c| {
                format!("exited {c}")
            });
        let said = one_line(&format!("{} {}", out.stderr, out.stdout), 200);
        Ok(Err(format!("{what}: `{}` {code}: {said}", cmd.display())))
    }
}

/// Whether the status command says the component is running (`None` in dry
/// runs, where nothing ran).
fn is_running(cfg: &Config, name: &str) -> Result<Option<bool>> {
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
fn restart(
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
            match run_ok(&stop, &format!("stopping {}", c.name))? {
                Ok(m) if running.is_none() => said.push(m),
                Ok(_) => said.push(format!("stopped {}", c.name)),
                Err(e) => return Ok(Err(e)),
            }
        }
    }
    let start = cfg
        .cmd(&cfg.raw.start_command, c.name)
        .ok_or("no start command")?;
    match run_ok(&start, &format!("starting {}", c.name))? {
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
        match run_ok(&status, &format!("{} status after start", c.name))? {
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

fn would(ctx: &Context, done: &str, would: &str) -> String {
    if ctx.executes() {
        done.to_string()
    } else {
        would.to_string()
    }
}

fn step_snapshot(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
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
            would(ctx, "snapshot", "would snapshot"),
            snap.id,
            snap.files,
            snap.bytes,
            paths.join(", ")
        ),
    );
    Ok(StepOutcome::ok(notes.join("; ")))
}

fn step_isolate(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let failed = planned_failed(ctx, cfg)?;
    if failed.is_empty() {
        return Ok(StepOutcome::ok("no failed component: nothing to isolate"));
    }
    let mut said = Vec::new();
    for name in &failed {
        let stop = cfg
            .cmd(&cfg.raw.stop_command, name)
            .ok_or("no stop command")?;
        match run_ok(&stop, &format!("stopping {name}"))? {
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
        would(ctx, "isolated", "would isolate"),
        failed.join(", "),
        said.join("; ")
    )))
}

fn step_maintenance_on(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let mut said = Vec::new();
    if !cfg.raw.maintenance_page.is_empty() {
        storage::write_string(
            &cfg.raw.maintenance_page,
            &format!("{}\n", cfg.raw.maintenance_text),
        )?;
        said.push(format!(
            "{} {:?} to {}",
            would(ctx, "wrote", "would write"),
            cfg.raw.maintenance_text,
            cfg.raw.maintenance_page
        ));
    }
    if let Some(reload) = cfg.cmd(&cfg.raw.reload_command, "proxy") {
        match run_ok(&reload, "routing traffic to the maintenance page")? {
            Ok(m) => said.push(m),
            Err(e) => return Ok(StepOutcome::failed(e)),
        }
    }
    Ok(StepOutcome::ok(said.join("; ")))
}

fn step_maintenance_off(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let mut said = Vec::new();
    if !cfg.raw.maintenance_page.is_empty() {
        if storage::exists(&cfg.raw.maintenance_page)? {
            storage::remove(&cfg.raw.maintenance_page)?;
            said.push(format!(
                "{} {}",
                would(ctx, "removed", "would remove"),
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
        match run_ok(&reload, "routing traffic back to the services")? {
            Ok(m) => said.push(m),
            Err(e) => return Ok(StepOutcome::failed(e)),
        }
    }
    Ok(StepOutcome::ok(said.join("; ")))
}

/// `mv` each pinned `*.backup` in place. One moved already (its target
/// holds the backup's contents) is left as it is, so the step can run again
/// after it was cut short; a `*.backup` that appeared after the incident
/// began is not this incident's and is left alone.
fn step_restore_backups(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
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
fn restore_from_git(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
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
    // Files an earlier try of this run restored already hold the commit's.
    let key = ctx.run_key("git-restored");
    let mut restored: Vec<Restored> = storage::get_json(&key)?.unwrap_or_default();
    let mut now_restored = Vec::new();
    let mut same = Vec::new();
    let mut errors = Vec::new();
    for f in &files {
        let target = cfg.path(f);
        let before = if storage::exists(&target)? {
            Some(fnv64(&storage::read_file(&target)?))
        } else {
            None
        };
        let cmd = Cmd::new("git")
            .args(["checkout", reff, "--", f.as_str()])
            .cwd(&cfg.raw.root)
            .timeout_ms(cfg.raw.command_timeout_ms);
        match run_ok(&cmd, &format!("restoring {f} from git {reff}"))? {
            Ok(_) => {
                let bytes = storage::read_file(&target)?;
                let fnv = fnv64(&bytes);
                if before.as_deref() == Some(fnv.as_str()) {
                    same.push(f.clone());
                } else {
                    now_restored.push(f.clone());
                    restored.retain(|r| r.target != target);
                    restored.push(Restored {
                        backup: format!("git {reff}:{f}"),
                        target,
                        bytes: bytes.len() as u64,
                        fnv,
                    });
                }
            }
            Err(e) => errors.push(e),
        }
    }
    storage::set_json(&key, &restored)?;
    storage::set_json(&ctx.run_key("restored"), &restored)?;
    if restored.is_empty() {
        let why = if errors.is_empty() {
            format!(
                "`{shown}` changed none of {} (the commit holds the same files)",
                list(&files)
            )
        } else {
            format!(
                "the runbook's fallback `{shown}` failed: {}",
                errors.join("; ")
            )
        };
        return Ok(StepOutcome::failed(format!(
            "nothing was restored: {none}, and {why}; {by_hand}"
        ))
        .with_findings(vec![finding(0)]));
    }
    let mut msg = format!(
        "{none}: restored {} files with `{shown}` (the runbook's \"Backup Files Missing\"): {}",
        now_restored.len(),
        list(&now_restored)
    );
    if !same.is_empty() {
        msg.push_str(&format!("; the same at {reff} already: {}", list(&same)));
    }
    if !errors.is_empty() {
        msg.push_str(&format!("; not restored: {}", errors.join("; ")));
    }
    Ok(StepOutcome::ok(msg).with_findings(vec![finding(restored.len())]))
}

fn remove_files(ctx: &Context, cfg: &Config, names: &[String]) -> Result<Vec<String>> {
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

fn step_remove_added(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
    let all: Vec<String> = COMPONENTS.iter().map(|s| s.to_string()).collect();
    let removed = remove_files(ctx, cfg, &all)?;
    Ok(StepOutcome::ok(if removed.is_empty() {
        "none of the files the deployment adds is there: nothing to remove".to_string()
    } else {
        format!(
            "{} {}",
            would(ctx, "removed", "would remove"),
            removed.join(", ")
        )
    }))
}

fn step_restore_components(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
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
                    would(ctx, "restored", "would restore")
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
            would(ctx, "removed", "would remove"),
            removed.join(", ")
        ));
    }
    if said.is_empty() {
        said.push("no failed component: nothing to restore".into());
    }
    Ok(StepOutcome::ok(said.join("; ")))
}

fn step_restore_config(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
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
                would(ctx, "copied", "would copy")
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
                would(ctx, "copied", "would copy"),
                copied.join(", "),
                cfg.raw.systemd_unit_dir
            ));
            if let Some(reload) = cfg.cmd(&cfg.raw.daemon_reload_command, "systemd") {
                match run_ok(&reload, "reloading the service manager")? {
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
fn units_to_install(
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

fn step_restore_imports(cfg: &Config) -> Result<StepOutcome> {
    let mut said = Vec::new();
    for (argv, what) in [
        (&cfg.raw.restore_imports_command, "restoring import paths"),
        (
            &cfg.raw.import_check_command,
            "checking the gateway's imports",
        ),
    ] {
        if let Some(cmd) = cfg.cmd(argv, "imports") {
            match run_ok(&cmd, what)? {
                Ok(m) => said.push(m),
                Err(e) => return Ok(StepOutcome::failed(e)),
            }
        }
    }
    Ok(StepOutcome::ok(said.join("; ")))
}

fn step_restart(ctx: &Context, cfg: &Config, name: &str) -> Result<StepOutcome> {
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

fn step_validate(cfg: &Config) -> Result<StepOutcome> {
    let mut said = Vec::new();
    for argv in &cfg.raw.validation_commands {
        if let Some(cmd) = cfg.cmd(argv, "validate") {
            match run_ok(&cmd, "validation")? {
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

#[derive(Debug, Serialize)]
struct Record<'a> {
    runbook: &'static str,
    run_id: &'a str,
    mode: &'static str,
    level: u8,
    level_name: &'static str,
    assessment: Option<serde_json::Value>,
    isolated: Vec<String>,
    restored: Vec<Restored>,
    removed: Vec<String>,
    snapshot: Option<String>,
    timeline: Vec<Event>,
    written_ms: u64,
}

fn step_record(ctx: &Context, cfg: &Config) -> Result<StepOutcome> {
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
        would(ctx, "wrote", "would write"),
        record.timeline.len()
    )))
}

fn level_name(level: u8) -> &'static str {
    if level >= 2 {
        "full rollback"
    } else {
        "component isolation"
    }
}

// --------------------------------------------------------------- plugin

fn cmd_text(cfg: &Config, argv: &[String], name: &str) -> String {
    cfg.cmd(argv, name)
        .map(|c| format!("`{}`", c.display()))
        .unwrap_or_else(|| "(no command configured)".into())
}

/// A command for each of `names`, e.g. "`systemctl stop aivillage-p2p`".
fn per_component(cfg: &Config, argv: &[String], names: &[String]) -> String {
    if names.is_empty() {
        return "nothing".into();
    }
    names
        .iter()
        .map(|n| cmd_text(cfg, argv, n))
        .collect::<Vec<_>>()
        .join(", ")
}

fn restart_step(cfg: &Config, c: &Component, level: u8, after: &[String]) -> Step {
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

fn plan_level1(cfg: &Config, failed: &[String]) -> Result<Vec<Step>> {
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

fn record_step(cfg: &Config) -> Step {
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
fn level2_effect(cfg: &Config) -> Effect {
    if !cfg.raw.restore_imports_command.is_empty() {
        Effect::Destructive
    } else {
        Effect::Disruptive
    }
}

fn plan_level2(ctx: &Context, cfg: &Config, failed: &[String]) -> Result<Vec<Step>> {
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

struct AiVillage;

impl Plugin for AiVillage {
    fn describe(ctx: &Context) -> Result<PluginInfo> {
        let cfg = Config::load(ctx)?;
        let mut needs = Needs::default().write(&cfg.raw.root);
        let mut urls: BTreeSet<String> = cfg
            .components
            .iter()
            .map(|c| c.health_url.clone())
            .collect();
        urls.insert(cfg.raw.query_url.clone());
        for u in urls {
            needs = needs.http(u);
        }
        let programs: BTreeSet<String> = cfg
            .all_commands()
            .into_iter()
            .filter_map(|argv| argv.first())
            .filter(|p| !p.trim().is_empty())
            .cloned()
            .collect();
        let mut programs = programs;
        if !cfg.raw.git_fallback_ref.trim().is_empty() {
            // "Backup Files Missing": git restores the previous version.
            programs.insert("git".to_string());
        }
        for p in programs {
            needs = needs.exec(p);
        }
        let mut extra_writes = vec![cfg.raw.maintenance_page.clone(), cfg.records_dir()];
        if !cfg.raw.systemd_unit_dir.is_empty() {
            extra_writes.push(cfg.raw.systemd_unit_dir.clone());
        }
        for f in &cfg.raw.config_files {
            extra_writes.push(cfg.path(f));
        }
        let extra: BTreeSet<String> = extra_writes
            .into_iter()
            .filter(|p| !p.is_empty() && !cfg.under_root(p))
            .collect();
        for p in extra {
            needs = needs.write(p);
        }
        Ok(PluginInfo::new(
            "aivillage",
            env!("CARGO_PKG_VERSION"),
            "aivillage",
            "AIVillage emergency rollback: component isolation, then full rollback from *.backup files with an ordered, health-gated restart",
        )
        .level(
            LevelInfo::new(
                1,
                level_name(1),
                "Stop only the failed components, restore their own files from .backup, start them again with a health gate",
            )
            .rto_ms(3 * 60_000)
            // The restarts; files are snapshotted before they change.
            .effect(Effect::Disruptive),
        )
        .level(
            LevelInfo::new(
                2,
                level_name(2),
                "Isolate, maintenance page, every *.backup restored, configuration and imports restored, restart gateway -> p2p -> agents -> rag with a health gate after each, validate, maintenance page removed",
            )
            .rto_ms(15 * 60_000)
            .effect(level2_effect(&cfg)),
        )
        .needs(needs))
    }

    fn assess(ctx: &Context) -> Result<Assessment> {
        let cfg = Config::load(ctx)?;
        let (health, d) = assess_now(&cfg)?;
        let mut findings = health_findings(&cfg, &health);
        findings.extend(decision_findings(&cfg.raw, &d, health.len()));
        if d.tier >= Tier::High {
            // For the rollback record.
            storage::set_json(&ctx.run_key("assessment"), &d)?;
        }
        let states: Vec<String> = health
            .iter()
            .map(|h| {
                if h.healthy {
                    format!("{} ok ({:.1} ms)", h.name, h.latency_ms)
                } else {
                    format!("{} FAILING ({})", h.name, h.detail)
                }
            })
            .collect();
        let isolate = d.to_isolate();
        let summary = format!(
            "{}; {} severity: {:.0}% of users affected, down {}, {:+.0}% vs the {} ms baseline",
            states.join(", "),
            d.tier.as_str(),
            d.impact_percent,
            fmt_ms(d.downtime_ms),
            d.degradation_percent,
            cfg.raw.baseline_latency_ms
        );
        Ok(match d.tier {
            Tier::Critical => Assessment::rollback(
                Severity::Critical,
                2,
                "critical: immediate full rollback",
                summary,
            ),
            Tier::High => Assessment::rollback(
                Severity::Major,
                1,
                format!(
                    "high: component isolation of {} first, full rollback if needed",
                    list(&isolate)
                ),
                summary,
            ),
            Tier::Medium => Assessment {
                severity: Severity::Minor,
                rollback: false,
                level: 0,
                scenario: "medium: fix in place, schedule a rollback if needed".into(),
                summary,
                findings: Vec::new(),
            },
            Tier::Low => Assessment::healthy(summary),
        }
        .with_findings(findings))
    }

    fn plan(ctx: &Context) -> Result<Vec<Step>> {
        let cfg = Config::load(ctx)?;
        let (_, d) = assess_now(&cfg)?;
        let failed = d.to_isolate();
        storage::set_json(&failed_key(ctx), &failed)?;
        match ctx.level {
            1 => plan_level1(&cfg, &failed),
            2 => plan_level2(ctx, &cfg, &failed),
            l => bail!("the aivillage plugin has levels 1 and 2; level {l} was asked for"),
        }
    }

    fn run_step(ctx: &Context, step: &str) -> Result<StepOutcome> {
        let cfg = Config::load(ctx)?;
        let outcome = match step {
            "snapshot" => step_snapshot(ctx, &cfg),
            "isolate" => step_isolate(ctx, &cfg),
            "maintenance-on" => step_maintenance_on(ctx, &cfg),
            "restore-backups" => step_restore_backups(ctx, &cfg),
            "remove-added" => step_remove_added(ctx, &cfg),
            "restore-components" => step_restore_components(ctx, &cfg),
            "restore-config" => step_restore_config(ctx, &cfg),
            "restore-imports" => step_restore_imports(&cfg),
            "validate" => step_validate(&cfg),
            "maintenance-off" => step_maintenance_off(ctx, &cfg),
            "record" => step_record(ctx, &cfg),
            s => match s.strip_prefix("restart-") {
                Some(name) if COMPONENTS.contains(&name) => step_restart(ctx, &cfg, name),
                _ => bail!("unknown step {s:?} of the aivillage plugin"),
            },
        };
        // Every step goes on the timeline the record step writes out.
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => StepOutcome::failed(e.into_message()),
        };
        push_event(ctx, step, &outcome)?;
        Ok(outcome)
    }

    fn verify(ctx: &Context) -> Result<Verification> {
        let cfg = Config::load(ctx)?;
        let health = measure_all(&cfg)?;
        // Success criteria: every health check OK, response times within
        // the baseline with the assessment's tolerance (the same findings,
        // one threshold: `degraded_above_ms`).
        let mut findings = health_findings(&cfg, &health);
        if ctx.executes() {
            track_downtime(&health, now_ms())?;
        }
        // "Simulate user request" (a POST: not sent in dry runs).
        let req = http::HttpRequest::post(&cfg.raw.query_url, &cfg.raw.query_body)
            .header("Content-Type", "application/json")
            .timeout_ms(cfg.raw.query_max_ms.max(1) * 2);
        match req.send() {
            Ok(r) if r.simulated => {}
            Ok(r) => {
                findings.push(Finding::status(
                    format!("user request: POST {}", cfg.raw.query_url),
                    Some(r.status),
                    200,
                    299,
                ));
                findings.push(Finding::at_most(
                    "user request: response time",
                    (r.latency_us as f64 / 100.0).round() / 10.0,
                    cfg.raw.query_max_ms as f64,
                    "ms",
                ));
            }
            Err(e) => findings.push(Finding::check(
                format!("user request: POST {}", cfg.raw.query_url),
                false,
                one_line(&e.to_string(), 160),
                "200-299",
            )),
        }
        if ctx.level >= 2 {
            let left = find_backups(&cfg)?;
            findings.push(Finding::new(
                "*.backup files remaining under the root",
                left.len(),
                "= 0",
                !left.is_empty(),
            ));
            if !cfg.raw.maintenance_page.is_empty() {
                let up = storage::exists(&cfg.raw.maintenance_page)?;
                findings.push(Finding::check(
                    format!("maintenance page {}", cfg.raw.maintenance_page),
                    !up,
                    if up { "present" } else { "removed" },
                    "removed",
                ));
            }
        }
        Ok(Verification::from_findings(findings))
    }
}

rewind_sdk::export_plugin!(AiVillage);

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawConfig {
        serde_json::from_str("{}").unwrap()
    }

    fn h(name: &str, healthy: bool, latency: f64) -> Health {
        Health {
            name: name.into(),
            url: format!("http://x/{name}"),
            healthy,
            status: Some(if healthy { 200 } else { 500 }),
            latency_ms: latency,
            detail: String::new(),
        }
    }

    fn all(bad: &[&str], latency: f64) -> Vec<Health> {
        COMPONENTS
            .iter()
            .map(|c| h(c, !bad.contains(c), latency))
            .collect()
    }

    #[test]
    fn the_decision_matrix() {
        let r = raw();
        let now = 10 * 60_000;
        // Healthy and fast: low.
        let d = decide(&r, &all(&[], 5.0), &[], now);
        assert_eq!(d.tier, Tier::Low);
        // One of four failing (25% of users), just seen: high, isolate it.
        let d = decide(&r, &all(&["p2p"], 5.0), &[("p2p".into(), now)], now);
        assert_eq!((d.tier, d.to_isolate()), (Tier::High, vec!["p2p".into()]));
        // Two of four is 50%: still high (critical is > 50%).
        let d = decide(&r, &all(&["p2p", "rag"], 5.0), &[], now);
        assert_eq!(d.tier, Tier::High);
        assert_eq!(d.to_isolate(), vec!["p2p".to_string(), "rag".to_string()]);
        // Three of four: critical.
        let d = decide(&r, &all(&["gateway", "p2p", "rag"], 5.0), &[], now);
        assert_eq!(d.tier, Tier::Critical);
        // One failing for more than 5 minutes: critical by downtime.
        let d = decide(
            &r,
            &all(&["rag"], 5.0),
            &[("rag".into(), now - 6 * 60_000)],
            now,
        );
        assert_eq!(
            (d.by_impact, d.by_downtime, d.tier),
            (Tier::High, Tier::Critical, Tier::Critical)
        );
        // Performance: 40% over the baseline is degraded (high), 60% is critical.
        let d = decide(&r, &all(&[], 140.0), &[], now);
        assert_eq!(d.tier, Tier::Critical, "all four degraded is 100% of users");
        let mut hs = all(&[], 5.0);
        hs[3].latency_ms = 140.0;
        let d = decide(&r, &hs, &[], now);
        assert_eq!((d.by_degradation, d.tier), (Tier::High, Tier::High));
        assert_eq!(d.degraded, vec!["rag".to_string()]);
        hs[3].latency_ms = 160.0;
        assert_eq!(decide(&r, &hs, &[], now).by_degradation, Tier::Critical);
        // Under 25% slower: no rollback.
        hs[3].latency_ms = 120.0;
        assert_eq!(decide(&r, &hs, &[], now).tier, Tier::Low);
    }

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
