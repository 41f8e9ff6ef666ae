//! The plugin's `[plugin.config]`: every port, path, ref, threshold,
//! timeout, process pattern and command of the runbook, with the runbook's
//! values as defaults.

use rewind_sdk::prelude::*;
use serde::Deserialize;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

macro_rules! defaults {
    ($($name:ident: $ty:ty = $val:expr;)*) => {
        $(fn $name() -> $ty { $val })*
    };
}

defaults! {
    d_host: String = "localhost".into();
    d_frontend_port: u16 = 3000;
    d_backend_port: u16 = 5000;
    d_mcp_port: u16 = 8080;
    d_response_timeout_ms: u64 = 30_000;
    d_startup_timeout_ms: u64 = 30_000;
    d_poll_interval_ms: u64 = 1000;
    d_stop_grace_ms: u64 = 10_000;
    d_mesh_grace_ms: u64 = 5000;
    d_command_timeout_ms: u64 = 120_000;
    d_dump_timeout_ms: u64 = 120_000;
    d_probe_budget_ms: u64 = 45_000;
    d_max_latency_ms: f64 = 1000.0;
    d_warn_latency_ms: f64 = 500.0;
    d_perf_samples: u32 = 3;
    d_max_memory_mb: f64 = 3000.0;
    d_warn_memory_mb: f64 = 2500.0;
    d_min_available_mb: f64 = 2048.0;
    d_max_cpu_percent: f64 = 80.0;
    d_cpu_sustain_s: u64 = 300;
    d_max_processes: u32 = 20;
    d_max_processes_after: u32 = 15;
    d_essential_max_processes: u32 = 5;
    d_leak_memory_mb: f64 = 4000.0;
    d_max_load: f64 = 5.0;
    d_process_patterns: Vec<String> = strings(&["node", "tsx", "npm"]);
    d_server_pattern: String = "tsx src/server.ts".into();
    d_stop_patterns: Vec<String> = strings(&["concurrently", "react-scripts"]);
    d_cleanup_patterns: Vec<String> = strings(&[
        "tsx src/server.ts",
        "concurrently",
        "react-scripts",
        "claude-http-mcp-bridge",
    ]);
    d_bridge_pattern: String = "claude-http-mcp-bridge".into();
    d_mesh_stop_patterns: Vec<String> = strings(&["concurrently"]);
    d_stop_command: Vec<String> = strings(&["./stop-aidis.sh"]);
    d_start_command: Vec<String> = strings(&["./start-aidis.sh"]);
    d_restart_command: Vec<String> = strings(&["./restart-aidis.sh"]);
    d_dev_command: Vec<String> = strings(&["npm", "run", "dev"]);
    d_backend_start_command: Vec<String> = strings(&["npm", "run", "dev:backend"]);
    d_bridge_start_command: Vec<String> = strings(&["node", "claude-http-mcp-bridge.js"]);
    d_db_status_command: Vec<String> = strings(&["sudo", "systemctl", "status", "postgresql"]);
    d_db_restart_command: Vec<String> = strings(&["sudo", "systemctl", "restart", "postgresql"]);
    d_ps_command: Vec<String> = strings(&["ps", "aux", "--sort=-%mem"]);
    d_db_port: u16 = 5432;
    d_db_name: String = "aidis_production".into();
    d_psql: String = "psql".into();
    d_pg_dump: String = "pg_dump".into();
    d_db_timeout_ms: u64 = 30_000;
    d_db_extension: String = "vector".into();
    d_true: bool = true;
    d_git: String = "git".into();
    d_baseline_ref: String = "refactor/phase-0-baseline".into();
    d_branch_prefix: String = "rollback-point-".into();
    d_tag_prefix: String = "phase-4-rollback-".into();
    d_config_dir: String = "config".into();
    d_logs_dir: String = "logs".into();
    d_backups_dir: String = "backups".into();
    d_count_tables: Vec<String> = strings(&["contexts", "technical_decisions"]);
    d_dirty_tree: String = "stash".into();
    d_pitr_target: String = "2025-09-19 18:00:00 UTC".into();
}

/// Every key, with the runbook's value as its default. `docs/plugins/aidis.md`
/// lists them with their meaning.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The AIDIS checkout: the git repository holding `start-aidis.sh`,
    /// `config/`, `logs/`, `backups/` (absolute).
    pub root: String,

    // Endpoints.
    #[serde(default = "d_host")]
    pub host: String,
    #[serde(default = "d_frontend_port")]
    pub frontend_port: u16,
    #[serde(default = "d_backend_port")]
    pub backend_port: u16,
    #[serde(default = "d_mcp_port")]
    pub mcp_port: u16,

    // Waits and timeouts.
    #[serde(default = "d_response_timeout_ms")]
    pub response_timeout_ms: u64,
    #[serde(default = "d_startup_timeout_ms")]
    pub startup_timeout_ms: u64,
    #[serde(default = "d_poll_interval_ms")]
    pub poll_interval_ms: u64,
    #[serde(default = "d_stop_grace_ms")]
    pub stop_grace_ms: u64,
    #[serde(default = "d_mesh_grace_ms")]
    pub mesh_grace_ms: u64,
    #[serde(default = "d_command_timeout_ms")]
    pub command_timeout_ms: u64,
    /// How long `pg_dump` may take before the rollback goes on without it.
    #[serde(default = "d_dump_timeout_ms")]
    pub dump_timeout_ms: u64,
    /// The HTTP probes of one sweep (assessment, checklist) share this
    /// much time: the runbook detects a failure within 1 minute, and the
    /// host probes one URL at a time.
    #[serde(default = "d_probe_budget_ms")]
    pub probe_budget_ms: u64,

    // Thresholds.
    #[serde(default = "d_max_latency_ms")]
    pub max_latency_ms: f64,
    #[serde(default = "d_warn_latency_ms")]
    pub warn_latency_ms: f64,
    #[serde(default = "d_perf_samples")]
    pub perf_samples: u32,
    #[serde(default = "d_max_memory_mb")]
    pub max_memory_mb: f64,
    #[serde(default = "d_warn_memory_mb")]
    pub warn_memory_mb: f64,
    #[serde(default = "d_min_available_mb")]
    pub min_available_mb: f64,
    #[serde(default = "d_max_cpu_percent")]
    pub max_cpu_percent: f64,
    #[serde(default = "d_cpu_sustain_s")]
    pub cpu_sustain_s: u64,
    #[serde(default = "d_max_processes")]
    pub max_processes: u32,
    #[serde(default = "d_max_processes_after")]
    pub max_processes_after: u32,
    #[serde(default = "d_essential_max_processes")]
    pub essential_max_processes: u32,
    #[serde(default = "d_leak_memory_mb")]
    pub leak_memory_mb: f64,
    #[serde(default = "d_max_load")]
    pub max_load: f64,

    // Process patterns (substrings of command lines, like `pgrep -f`).
    #[serde(default = "d_process_patterns")]
    pub process_patterns: Vec<String>,
    #[serde(default = "d_server_pattern")]
    pub server_pattern: String,
    #[serde(default = "d_stop_patterns")]
    pub stop_patterns: Vec<String>,
    #[serde(default = "d_cleanup_patterns")]
    pub cleanup_patterns: Vec<String>,
    #[serde(default = "d_bridge_pattern")]
    pub bridge_pattern: String,
    #[serde(default = "d_mesh_stop_patterns")]
    pub mesh_stop_patterns: Vec<String>,

    // Commands (argv; a relative program path is taken from `root`; an
    // empty list turns the command off).
    #[serde(default = "d_stop_command")]
    pub stop_command: Vec<String>,
    #[serde(default = "d_start_command")]
    pub start_command: Vec<String>,
    #[serde(default = "d_restart_command")]
    pub restart_command: Vec<String>,
    #[serde(default = "d_start_command")]
    pub essential_start_command: Vec<String>,
    #[serde(default = "d_dev_command")]
    pub dev_command: Vec<String>,
    #[serde(default = "d_backend_start_command")]
    pub backend_start_command: Vec<String>,
    #[serde(default = "d_bridge_start_command")]
    pub bridge_start_command: Vec<String>,
    #[serde(default = "d_db_status_command")]
    pub db_status_command: Vec<String>,
    #[serde(default = "d_db_restart_command")]
    pub db_restart_command: Vec<String>,
    #[serde(default = "d_ps_command")]
    pub ps_command: Vec<String>,
    #[serde(default)]
    pub integration_command: Vec<String>,

    // Database.
    #[serde(default = "d_host")]
    pub db_host: String,
    #[serde(default = "d_db_port")]
    pub db_port: u16,
    #[serde(default = "d_db_name")]
    pub db_name: String,
    #[serde(default)]
    pub db_user: String,
    #[serde(default = "d_psql")]
    pub psql: String,
    #[serde(default = "d_pg_dump")]
    pub pg_dump: String,
    #[serde(default = "d_db_timeout_ms")]
    pub db_timeout_ms: u64,
    #[serde(default = "d_db_extension")]
    pub db_extension: String,
    #[serde(default = "d_true")]
    pub backup_database: bool,
    /// The tables whose rows the data recovery verification counts.
    #[serde(default = "d_count_tables")]
    pub count_tables: Vec<String>,
    #[serde(default = "d_pitr_target")]
    pub pitr_target: String,

    // Git.
    #[serde(default = "d_git")]
    pub git: String,
    #[serde(default = "d_baseline_ref")]
    pub baseline_ref: String,
    #[serde(default = "d_branch_prefix")]
    pub branch_prefix: String,
    #[serde(default = "d_tag_prefix")]
    pub tag_prefix: String,
    /// Uncommitted changes to tracked files before `git checkout`:
    /// `stash` (kept in `git stash`) or `refuse` (the revert stops).
    #[serde(default = "d_dirty_tree")]
    pub dirty_tree: String,

    // Files, relative to `root` unless absolute.
    #[serde(default = "d_config_dir")]
    pub config_dir: String,
    #[serde(default = "d_logs_dir")]
    pub logs_dir: String,
    #[serde(default = "d_backups_dir")]
    pub backups_dir: String,

    /// Host environment variables the commands get (e.g. `PGPASSWORD`).
    #[serde(default)]
    pub pass_env: Vec<String>,
}

/// One of the health endpoints of the validation checklist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Service {
    Frontend,
    Backend,
    Mcp,
    Database,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Self::Frontend => "frontend",
            Self::Backend => "backend",
            Self::Mcp => "MCP",
            Self::Database => "database",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub service: Service,
    /// `frontend`, `backend API`, `MCP health` ...
    pub label: &'static str,
    pub url: String,
}

impl Config {
    pub fn load(ctx: &Context) -> Result<Self> {
        let mut cfg: Config = ctx.config()?;
        while cfg.root.len() > 1 && cfg.root.ends_with('/') {
            cfg.root.pop();
        }
        if cfg.root.is_empty() {
            bail!(
                "bad [plugin.config] of plugin {:?}: root is empty",
                ctx.plugin
            );
        }
        if cfg.baseline_ref.trim().is_empty() {
            bail!(
                "bad [plugin.config] of plugin {:?}: baseline_ref is empty",
                ctx.plugin
            );
        }
        if !matches!(cfg.dirty_tree.as_str(), "stash" | "refuse") {
            bail!(
                "bad [plugin.config] of plugin {:?}: dirty_tree = {:?}; use \"stash\" (put uncommitted changes aside with git stash before the checkout) or \"refuse\" (stop the revert)",
                ctx.plugin,
                cfg.dirty_tree
            );
        }
        for t in &cfg.count_tables {
            let ok = !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
            if !ok {
                bail!(
                    "bad [plugin.config] of plugin {:?}: count_tables has {t:?}; use table names (letters, digits, _ and a schema .)",
                    ctx.plugin
                );
            }
        }
        cfg.perf_samples = cfg.perf_samples.max(1);
        Ok(cfg)
    }

    /// A path from the config: absolute as is, otherwise under `root`.
    pub fn path(&self, p: &str) -> String {
        let p = p.trim_end_matches('/');
        if p.starts_with('/') {
            p.to_string()
        } else {
            format!("{}/{}", self.root, p.trim_start_matches("./"))
        }
    }

    pub fn logs(&self) -> String {
        self.path(&self.logs_dir)
    }
    pub fn backups(&self) -> String {
        self.path(&self.backups_dir)
    }
    pub fn config_path(&self) -> String {
        self.path(&self.config_dir)
    }
    pub fn rollback_log(&self) -> String {
        format!("{}/rollback.log", self.logs())
    }

    fn base(&self, port: u16) -> String {
        format!("http://{}:{port}", self.host)
    }
    pub fn mcp(&self, path: &str) -> String {
        format!("{}{path}", self.base(self.mcp_port))
    }
    pub fn healthz(&self) -> String {
        self.mcp("/healthz")
    }
    pub fn readyz(&self) -> String {
        self.mcp("/readyz")
    }
    pub fn ping_url(&self) -> String {
        self.mcp("/mcp/tools/aidis_ping")
    }
    pub fn backend_health(&self) -> String {
        format!("{}/health", self.base(self.backend_port))
    }
    pub fn graceful_shutdown_url(&self) -> String {
        format!("{}/admin/graceful-shutdown", self.base(self.backend_port))
    }

    /// The five health endpoints of the validation checklist, in its order.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        vec![
            Endpoint {
                service: Service::Frontend,
                label: "frontend",
                url: format!("{}/", self.base(self.frontend_port)),
            },
            Endpoint {
                service: Service::Backend,
                label: "backend API",
                url: self.backend_health(),
            },
            Endpoint {
                service: Service::Mcp,
                label: "MCP health",
                url: self.healthz(),
            },
            Endpoint {
                service: Service::Database,
                label: "MCP ready",
                url: self.readyz(),
            },
            Endpoint {
                service: Service::Mcp,
                label: "MCP live",
                url: self.mcp("/livez"),
            },
        ]
    }

    pub fn probe(&self, url: &str) -> HttpProbe {
        HttpProbe::get(url).timeout_ms(self.response_timeout_ms)
    }

    /// The runbook's bridge detection, `curl .../mcp/tools/aidis_ping`: a
    /// GET that must be answered, without a server error (the tool itself
    /// is called with POST, so a 4xx to a GET still means the bridge
    /// answers).
    pub fn ping_probe(&self) -> HttpProbe {
        HttpProbe::get(self.ping_url())
            .expect(200, 499)
            .timeout_ms(self.response_timeout_ms)
    }

    /// A program as the host will run it: a relative path (`./start-aidis.sh`)
    /// is taken from `root`; a bare name is looked up in PATH.
    pub fn program(&self, p: &str) -> String {
        if p.contains('/') && !p.starts_with('/') {
            self.path(p)
        } else {
            p.to_string()
        }
    }

    /// A configured command, run in `root`. `None` when it is turned off.
    pub fn cmd(&self, argv: &[String]) -> Option<Cmd> {
        let (program, args) = argv.split_first()?;
        Some(
            Cmd::new(self.program(program))
                .args(args.iter().cloned())
                .cwd(&self.root)
                .timeout_ms(self.command_timeout_ms),
        )
    }

    fn db_conn_args(&self) -> Vec<String> {
        let mut a = vec![
            "-h".to_string(),
            self.db_host.clone(),
            "-p".into(),
            self.db_port.to_string(),
        ];
        if !self.db_user.is_empty() {
            a.push("-U".into());
            a.push(self.db_user.clone());
        }
        a.push("-d".into());
        a.push(self.db_name.clone());
        a
    }

    /// `psql -h <host> -p <port> -d <db> -c <sql>`, never prompting for a
    /// password, ignoring ~/.psqlrc, failing on the first error.
    pub fn psql_cmd(&self, sql: &str) -> Cmd {
        Cmd::new(self.program(&self.psql))
            .args(self.db_conn_args())
            .args(["-X", "-w", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .cwd(&self.root)
            .timeout_ms(self.db_timeout_ms)
    }

    /// `pg_dump -h <host> -p <port> -d <db> -f <file>`.
    pub fn dump_cmd(&self, file: &str) -> Cmd {
        Cmd::new(self.program(&self.pg_dump))
            .args(self.db_conn_args())
            .args(["-w", "-f", file])
            .cwd(&self.root)
            .timeout_ms(self.dump_timeout_ms)
    }

    /// Every pattern the plugin may stop, deduplicated.
    pub fn signal_patterns(&self) -> Vec<String> {
        let mut all = Vec::new();
        for p in self
            .stop_patterns
            .iter()
            .chain(&self.cleanup_patterns)
            .chain(&self.mesh_stop_patterns)
            .chain(std::iter::once(&self.bridge_pattern))
        {
            if !p.trim().is_empty() && !all.contains(p) {
                all.push(p.clone());
            }
        }
        all
    }

    /// Every configured command, for the `exec` needs.
    fn commands(&self) -> Vec<&Vec<String>> {
        vec![
            &self.stop_command,
            &self.start_command,
            &self.restart_command,
            &self.essential_start_command,
            &self.dev_command,
            &self.backend_start_command,
            &self.bridge_start_command,
            &self.db_status_command,
            &self.db_restart_command,
            &self.ps_command,
            &self.integration_command,
        ]
    }

    /// What the plugin needs granted with this config.
    pub fn needs(&self) -> Needs {
        let mut exec: Vec<String> = Vec::new();
        let mut add = |p: String| {
            if !exec.contains(&p) {
                exec.push(p);
            }
        };
        for c in self.commands() {
            if let Some(p) = c.first() {
                add(self.program(p));
            }
        }
        add(self.program(&self.git));
        add(self.program(&self.psql));
        if self.backup_database {
            add(self.program(&self.pg_dump));
        }
        let mut n = Needs::default();
        for port in [self.frontend_port, self.backend_port, self.mcp_port] {
            let url = format!("{}/", self.base(port));
            if !n.http.contains(&url) {
                n.http.push(url);
            }
        }
        // `ss -tulpn | grep -E "(3000|5000|8080)"` in the performance
        // triage, and the database port.
        for (h, port) in [
            (&self.host, self.frontend_port),
            (&self.host, self.backend_port),
            (&self.host, self.mcp_port),
            (&self.db_host, self.db_port),
        ] {
            let t = format!("{h}:{port}");
            if !n.tcp.contains(&t) {
                n.tcp.push(t);
            }
        }
        n.exec = exec;
        n.signal = self.signal_patterns();
        n.read.push(self.root.clone());
        n.write.push(self.logs());
        n.write.push(self.backups());
        n.env = self.pass_env.clone();
        n
    }
}
