//! `[plugin.config]`: the keys, the runbook's values as defaults, and the
//! components with their health URLs and files.

use rewind_sdk::prelude::*;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ComponentSpec {
    pub(crate) health_url: Option<String>,
    pub(crate) files: Option<Vec<String>>,
    pub(crate) remove: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ComponentsSpec {
    pub(crate) gateway: Option<ComponentSpec>,
    pub(crate) p2p: Option<ComponentSpec>,
    pub(crate) agents: Option<ComponentSpec>,
    pub(crate) rag: Option<ComponentSpec>,
}

/// `[plugin.config]` as written; defaults are the runbook's values.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default = "d_root")]
    pub(crate) root: String,
    #[serde(default)]
    pub(crate) components: ComponentsSpec,
    #[serde(default = "d_stop")]
    pub(crate) stop_command: Vec<String>,
    #[serde(default = "d_start")]
    pub(crate) start_command: Vec<String>,
    #[serde(default = "d_status")]
    pub(crate) status_command: Vec<String>,
    #[serde(default = "d_page")]
    pub(crate) maintenance_page: String,
    #[serde(default = "d_text")]
    pub(crate) maintenance_text: String,
    #[serde(default = "d_reload")]
    pub(crate) reload_command: Vec<String>,
    #[serde(default = "d_config_files")]
    pub(crate) config_files: Vec<String>,
    #[serde(default = "d_systemd_source")]
    pub(crate) systemd_source: String,
    #[serde(default = "d_systemd_dir")]
    pub(crate) systemd_unit_dir: String,
    #[serde(default = "d_daemon_reload")]
    pub(crate) daemon_reload_command: Vec<String>,
    #[serde(default = "d_restore_imports")]
    pub(crate) restore_imports_command: Vec<String>,
    #[serde(default = "d_import_check")]
    pub(crate) import_check_command: Vec<String>,
    #[serde(default = "d_validation")]
    pub(crate) validation_commands: Vec<Vec<String>>,
    #[serde(default = "d_query_url")]
    pub(crate) query_url: String,
    #[serde(default = "d_query_body")]
    pub(crate) query_body: String,
    #[serde(default = "d_query_max_ms")]
    pub(crate) query_max_ms: u64,
    #[serde(default = "d_baseline")]
    pub(crate) baseline_latency_ms: f64,
    #[serde(default = "d_critical_impact")]
    pub(crate) critical_impact_percent: f64,
    #[serde(default = "d_high_impact")]
    pub(crate) high_impact_percent: f64,
    #[serde(default = "d_critical_downtime")]
    pub(crate) critical_downtime_ms: u64,
    #[serde(default = "d_high_downtime")]
    pub(crate) high_downtime_ms: u64,
    #[serde(default = "d_critical_degradation")]
    pub(crate) critical_degradation_percent: f64,
    #[serde(default = "d_minor_degradation")]
    pub(crate) minor_degradation_percent: f64,
    #[serde(default = "d_health_timeout")]
    pub(crate) health_timeout_ms: u64,
    #[serde(default = "d_health_interval")]
    pub(crate) health_interval_ms: u64,
    #[serde(default = "d_probe_timeout")]
    pub(crate) probe_timeout_ms: u64,
    #[serde(default = "d_command_timeout")]
    pub(crate) command_timeout_ms: u64,
    #[serde(default = "d_records_dir")]
    pub(crate) records_dir: String,
    #[serde(default = "d_git_fallback_ref")]
    pub(crate) git_fallback_ref: String,
}

pub(crate) fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}
pub(crate) fn d_root() -> String {
    "/opt/aivillage".into()
}
pub(crate) fn d_stop() -> Vec<String> {
    strings(&["systemctl", "stop", "aivillage-{name}"])
}
pub(crate) fn d_start() -> Vec<String> {
    strings(&["systemctl", "start", "aivillage-{name}"])
}
pub(crate) fn d_status() -> Vec<String> {
    strings(&["systemctl", "status", "aivillage-{name}"])
}
pub(crate) fn d_page() -> String {
    "/var/www/html/maintenance.html".into()
}
pub(crate) fn d_text() -> String {
    "System maintenance in progress".into()
}
pub(crate) fn d_reload() -> Vec<String> {
    strings(&["nginx", "-s", "reload"])
}
pub(crate) fn d_config_files() -> Vec<String> {
    strings(&["config/.env", "config/database_config.json"])
}
pub(crate) fn d_systemd_source() -> String {
    "config/systemd".into()
}
pub(crate) fn d_systemd_dir() -> String {
    "/etc/systemd/system".into()
}
pub(crate) fn d_daemon_reload() -> Vec<String> {
    strings(&["systemctl", "daemon-reload"])
}
pub(crate) fn d_restore_imports() -> Vec<String> {
    strings(&["python", "scripts/restore_imports.py", "--from-backup"])
}
pub(crate) fn d_import_check() -> Vec<String> {
    strings(&[
        "python",
        "-c",
        "import sys; sys.path.append('.'); from core.gateway.server import app; print('Gateway imports OK')",
    ])
}
pub(crate) fn d_validation() -> Vec<Vec<String>> {
    vec![
        strings(&["python", "scripts/test_p2p_connection.py"]),
        strings(&["python", "scripts/test_agent_response.py"]),
        strings(&["python", "scripts/test_full_system.py"]),
    ]
}
pub(crate) fn d_query_url() -> String {
    "http://localhost:8000/api/query".into()
}
pub(crate) fn d_query_body() -> String {
    r#"{"query": "test rollback system", "user_id": "rollback_test"}"#.into()
}
pub(crate) fn d_query_max_ms() -> u64 {
    2000
}
pub(crate) fn d_baseline() -> f64 {
    100.0
}
pub(crate) fn d_critical_impact() -> f64 {
    50.0
}
pub(crate) fn d_high_impact() -> f64 {
    10.0
}
pub(crate) fn d_critical_downtime() -> u64 {
    5 * 60_000
}
pub(crate) fn d_high_downtime() -> u64 {
    60_000
}
pub(crate) fn d_critical_degradation() -> f64 {
    50.0
}
pub(crate) fn d_minor_degradation() -> f64 {
    25.0
}
pub(crate) fn d_health_timeout() -> u64 {
    60_000
}
pub(crate) fn d_health_interval() -> u64 {
    1000
}
pub(crate) fn d_probe_timeout() -> u64 {
    2000
}
pub(crate) fn d_command_timeout() -> u64 {
    60_000
}
pub(crate) fn d_records_dir() -> String {
    "logs/rollbacks".into()
}
/// The runbook's "Backup Files Missing": `git checkout HEAD~1 -- <file>`.
pub(crate) fn d_git_fallback_ref() -> String {
    "HEAD~1".into()
}

/// One service, with its defaults filled in.
#[derive(Debug, Clone)]
pub(crate) struct Component {
    pub(crate) name: &'static str,
    pub(crate) health_url: String,
    /// Its own files, restored from `<file>.backup` by component isolation.
    pub(crate) files: Vec<String>,
    /// Files the deployment added, removed by the rollback.
    pub(crate) remove: Vec<String>,
}

pub(crate) fn default_files(name: &str) -> (Vec<String>, Vec<String>) {
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
pub(crate) struct Config {
    pub(crate) raw: RawConfig,
    pub(crate) components: Vec<Component>,
}

impl Config {
    pub(crate) fn load(ctx: &Context) -> Result<Self> {
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
    pub(crate) fn path(&self, rel: &str) -> String {
        if rel.starts_with('/') {
            rel.to_string()
        } else {
            format!("{}/{}", self.raw.root, rel.trim_start_matches("./"))
        }
    }

    pub(crate) fn component(&self, name: &str) -> Result<&Component> {
        match self.components.iter().find(|c| c.name == name) {
            Some(c) => Ok(c),
            None => bail!("unknown component {name:?}"),
        }
    }

    /// A configured command for one component (`{name}` replaced), run in
    /// the root; `None` when the command is empty (skipped).
    pub(crate) fn cmd(&self, argv: &[String], name: &str) -> Option<Cmd> {
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

    pub(crate) fn records_dir(&self) -> String {
        self.path(&self.raw.records_dir)
    }

    /// Under the root (so the root's grant covers it).
    pub(crate) fn under_root(&self, p: &str) -> bool {
        p == self.raw.root || p.starts_with(&format!("{}/", self.raw.root))
    }

    /// Every command the plugin may run with this config. The service
    /// manager's reload runs only after unit files were installed, so
    /// without a unit directory (`systemd_unit_dir = ""`) it never runs.
    pub(crate) fn all_commands(&self) -> Vec<&Vec<String>> {
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
    pub(crate) fn git_fallback_files(&self) -> Vec<String> {
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

    pub(crate) fn health(&self, c: &Component) -> HttpProbe {
        HttpProbe::get(&c.health_url).timeout_ms(self.raw.probe_timeout_ms)
    }

    pub(crate) fn degraded_above_ms(&self) -> f64 {
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
    pub(crate) fn degraded_above_ms(&self) -> f64 {
        self.baseline_latency_ms * (1.0 + self.minor_degradation_percent / 100.0)
    }
}
