//! `[plugin.config]`: every path, port, command, ref, threshold and wait of
//! the runbook, with the runbook's values as defaults.

use rewind_sdk::prelude::*;
use serde::{Deserialize, Serialize};

use crate::logscan::Matcher;

/// A feature behind a flag (the runbook's GAP-001, QW-001, QW-002).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    /// Short name, used by `disable` (`spawning`, `uploads`, `mcp`).
    pub name: String,
    /// The `.env` variable that turns it on.
    pub flag: String,
    /// What the incident record calls it.
    #[serde(default)]
    pub label: String,
    /// Log lines matching this (case-insensitive) belong to the feature.
    pub log_match: String,
    /// Any of these in the log after the restart confirms the fallback
    /// (`grep` patterns; `.*` matches anything).
    pub markers: Vec<String>,
}

fn feature(name: &str, flag: &str, label: &str, log_match: &str, markers: &[&str]) -> Feature {
    Feature {
        name: name.into(),
        flag: flag.into(),
        label: label.into(),
        log_match: log_match.into(),
        markers: markers.iter().map(|m| m.to_string()).collect(),
    }
}

pub fn default_features() -> Vec<Feature> {
    vec![
        feature(
            "spawning",
            "ENABLE_PARALLEL_SPAWNING",
            "Agent spawning (GAP-001)",
            "spawn",
            &["sequential spawning", "sequential agent spawning"],
        ),
        feature(
            "uploads",
            "ENABLE_PARALLEL_UPLOADS",
            "File uploads (QW-001)",
            "upload",
            &["sequential upload"],
        ),
        feature(
            "mcp",
            "ENABLE_MCP_TRACKING",
            "MCP tracking (QW-002)",
            "mcp",
            &["MCP.*unavailable", "MCP.*disabled"],
        ),
    ]
}

macro_rules! defaults {
    ($($name:ident: $ty:ty = $value:expr;)*) => {
        mod d {
            #[allow(unused_imports)]
            use super::*;
            $(pub fn $name() -> $ty { $value })*
        }
    };
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

defaults! {
    app_dir: String = "/opt/app".into();
    log_file: String = "/var/log/app.log".into();
    health_url: String = "http://localhost:3000/api/health".into();
    version_field: String = "version".into();
    served_version: String = "{version}".into();
    smoke_spawn_path: String = "/api/agents/spawn".into();
    smoke_upload_path: String = "/api/upload".into();
    restart_cmd: Vec<String> = strings(&["pm2", "restart", "app"]);
    status_cmd: Vec<String> = strings(&["pm2", "status", "app"]);
    reload_cmd: Vec<String> = strings(&["pm2", "reload", "app"]);
    stop_cmd: Vec<String> = strings(&["pm2", "stop", "app"]);
    start_cmd: Vec<String> = strings(&["pm2", "start", "app"]);
    install_cmd: Vec<String> = strings(&["npm", "ci", "--production"]);
    build_cmd: Vec<String> = strings(&["npm", "run", "build"]);
    git: String = "git".into();
    git_remote: String = "origin".into();
    tar: String = "tar".into();
    command_timeout_ms: u64 = 900_000;
    disable: String = "all".into();
    stable_tag_pattern: String = "stable".into();
    rollback_backup_dir: String = "/tmp".into();
    clean_paths: Vec<String> = strings(&["node_modules"]);
    app_backups_dir: String = "/backups/app-backups".into();
    memory_db: String = ".swarm/memory.db".into();
    memory_backups_dir: String = "/backups/memory-backups".into();
    memory_tables: Vec<String> = strings(&["agent_activities"]);
    check_row_loss: bool = true;
    build_dirs: Vec<String> = strings(&[".next", "dist", "build"]);
    build_marker: String = ".next".into();
    critical_error_rate_pct: f64 = 5.0;
    critical_window_s: u64 = 300;
    major_error_rate_pct: f64 = 1.0;
    major_window_s: u64 = 900;
    window_buckets: usize = 5;
    untimed_tail_lines: usize = 100;
    partial_failure_pct: f64 = 25.0;
    minor_failure_pct: f64 = 10.0;
    min_feature_events: u64 = 10;
    perf_major_pct: f64 = 50.0;
    perf_minor_pct: f64 = 25.0;
    error_pattern: String = "error".into();
    duration_key: String = "duration_ms=".into();
    recent_lines: usize = 100;
    max_recent_errors: u64 = 1;
    probe_interval_ms: u64 = 1000;
    probe_timeout_ms: u64 = 2000;
    failure_threshold: u32 = 10;
    restart_timeout_ms: u64 = 120_000;
    reload_timeout_ms: u64 = 60_000;
    start_timeout_ms: u64 = 10_000;
    level1_stable_ms: u64 = 30_000;
    level2_stable_ms: u64 = 300_000;
    level3_stable_ms: u64 = 900_000;
    incident_dir: String = "/var/log/app-incidents".into();
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    // The system.
    #[serde(default = "d::app_dir")]
    pub app_dir: String,
    #[serde(default)]
    pub env_file: Option<String>,
    #[serde(default = "d::log_file")]
    pub log_file: String,
    #[serde(default)]
    pub log_utc_offset_min: i64,
    #[serde(default = "d::health_url")]
    pub health_url: String,
    #[serde(default = "d::version_field")]
    pub version_field: String,
    /// What Level 2 expects the app to serve for the stable tag: a template
    /// with `{tag}` (`v1.0.0-stable`), `{version}` (the tag without its
    /// leading `v`: `1.0.0-stable`), `{semver}` (its first dotted number:
    /// `1.0.0`), and `*` for any text.
    #[serde(default = "d::served_version")]
    pub served_version: String,
    #[serde(default = "d::smoke_spawn_path")]
    pub smoke_spawn_path: String,
    #[serde(default = "d::smoke_upload_path")]
    pub smoke_upload_path: String,
    #[serde(default)]
    pub process_pattern: Option<String>,
    // Commands.
    #[serde(default = "d::restart_cmd")]
    pub restart_cmd: Vec<String>,
    #[serde(default = "d::status_cmd")]
    pub status_cmd: Vec<String>,
    #[serde(default = "d::reload_cmd")]
    pub reload_cmd: Vec<String>,
    #[serde(default = "d::stop_cmd")]
    pub stop_cmd: Vec<String>,
    #[serde(default = "d::start_cmd")]
    pub start_cmd: Vec<String>,
    #[serde(default = "d::install_cmd")]
    pub install_cmd: Vec<String>,
    #[serde(default = "d::build_cmd")]
    pub build_cmd: Vec<String>,
    #[serde(default = "d::git")]
    pub git: String,
    #[serde(default = "d::git_remote")]
    pub git_remote: String,
    #[serde(default = "d::tar")]
    pub tar: String,
    #[serde(default = "d::command_timeout_ms")]
    pub command_timeout_ms: u64,
    // Level 1.
    #[serde(default = "default_features")]
    pub features: Vec<Feature>,
    #[serde(default = "d::disable")]
    pub disable: String,
    // Level 2.
    #[serde(default = "d::stable_tag_pattern")]
    pub stable_tag_pattern: String,
    #[serde(default = "d::rollback_backup_dir")]
    pub rollback_backup_dir: String,
    #[serde(default = "d::clean_paths")]
    pub clean_paths: Vec<String>,
    // Level 3.
    #[serde(default = "d::app_backups_dir")]
    pub app_backups_dir: String,
    #[serde(default)]
    pub app_backup: Option<String>,
    #[serde(default)]
    pub failed_dir: Option<String>,
    /// When the release was deployed (`2025-11-12T14:00:00Z`): Level 3
    /// restores the newest backups taken before it. Unset: the time HEAD
    /// moved to the deployed commit, from git's reflog.
    #[serde(default)]
    pub deployed_at: Option<String>,
    #[serde(default = "d::memory_db")]
    pub memory_db: String,
    #[serde(default = "d::memory_backups_dir")]
    pub memory_backups_dir: String,
    #[serde(default)]
    pub memory_backup: Option<String>,
    #[serde(default = "d::memory_tables")]
    pub memory_tables: Vec<String>,
    #[serde(default = "d::check_row_loss")]
    pub check_row_loss: bool,
    /// The tables compared with the backup for data loss (`memory_tables`
    /// when unset).
    #[serde(default)]
    pub row_loss_tables: Option<Vec<String>>,
    #[serde(default = "d::build_dirs")]
    pub build_dirs: Vec<String>,
    #[serde(default = "d::build_marker")]
    pub build_marker: String,
    // Decision criteria.
    #[serde(default = "d::critical_error_rate_pct")]
    pub critical_error_rate_pct: f64,
    #[serde(default = "d::critical_window_s")]
    pub critical_window_s: u64,
    #[serde(default = "d::major_error_rate_pct")]
    pub major_error_rate_pct: f64,
    #[serde(default = "d::major_window_s")]
    pub major_window_s: u64,
    #[serde(default = "d::window_buckets")]
    pub window_buckets: usize,
    /// A log without timestamps is measured over its last lines (the
    /// runbook's `tail -100 /var/log/app.log | grep -i error`).
    #[serde(default = "d::untimed_tail_lines")]
    pub untimed_tail_lines: usize,
    #[serde(default = "d::partial_failure_pct")]
    pub partial_failure_pct: f64,
    #[serde(default = "d::minor_failure_pct")]
    pub minor_failure_pct: f64,
    #[serde(default = "d::min_feature_events")]
    pub min_feature_events: u64,
    #[serde(default)]
    pub baseline_ms: Option<f64>,
    #[serde(default = "d::perf_major_pct")]
    pub perf_major_pct: f64,
    #[serde(default = "d::perf_minor_pct")]
    pub perf_minor_pct: f64,
    #[serde(default)]
    pub max_rss_mb: Option<u64>,
    #[serde(default = "d::error_pattern")]
    pub error_pattern: String,
    #[serde(default = "d::duration_key")]
    pub duration_key: String,
    #[serde(default = "d::recent_lines")]
    pub recent_lines: usize,
    #[serde(default = "d::max_recent_errors")]
    pub max_recent_errors: u64,
    // Waits.
    #[serde(default = "d::probe_interval_ms")]
    pub probe_interval_ms: u64,
    #[serde(default = "d::probe_timeout_ms")]
    pub probe_timeout_ms: u64,
    /// A level's health wait gives up after this many failed answers in a
    /// row once the app answers (0: wait the whole timeout).
    #[serde(default = "d::failure_threshold")]
    pub failure_threshold: u32,
    #[serde(default = "d::restart_timeout_ms")]
    pub restart_timeout_ms: u64,
    #[serde(default = "d::reload_timeout_ms")]
    pub reload_timeout_ms: u64,
    #[serde(default = "d::start_timeout_ms")]
    pub start_timeout_ms: u64,
    #[serde(default = "d::level1_stable_ms")]
    pub level1_stable_ms: u64,
    #[serde(default = "d::level2_stable_ms")]
    pub level2_stable_ms: u64,
    #[serde(default = "d::level3_stable_ms")]
    pub level3_stable_ms: u64,
    // Records.
    #[serde(default = "d::incident_dir")]
    pub incident_dir: String,
}

fn trim_dir(s: &mut String) {
    while s.len() > 1 && s.ends_with('/') {
        s.pop();
    }
}

/// The directory part of a path (`/opt` for `/opt/app`).
pub fn parent(path: &str) -> String {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) => "/".into(),
        Some((p, _)) => p.into(),
        None => ".".into(),
    }
}

/// The last part of a path.
pub fn file_name(path: &str) -> &str {
    let p = path.trim_end_matches('/');
    p.rsplit('/').next().unwrap_or(p)
}

/// `a` is `b` or inside it.
pub fn is_under(a: &str, b: &str) -> bool {
    a == b || a.strip_prefix(b).is_some_and(|rest| rest.starts_with('/')) || b == "/"
}

impl Config {
    pub fn load(ctx: &Context) -> Result<Self> {
        let mut c: Config = ctx.config()?;
        for s in [
            &mut c.app_dir,
            &mut c.rollback_backup_dir,
            &mut c.app_backups_dir,
            &mut c.memory_backups_dir,
            &mut c.incident_dir,
        ] {
            trim_dir(s);
        }
        if let Some(f) = c.failed_dir.as_mut() {
            trim_dir(f);
        }
        if c.app_dir.is_empty() || c.app_dir == "/" {
            bail!(
                "bad [plugin.config] of plugin {:?}: app_dir must be the application's directory, not {:?}",
                ctx.plugin,
                c.app_dir
            );
        }
        for (key, cmd) in [
            ("restart_cmd", &c.restart_cmd),
            ("status_cmd", &c.status_cmd),
            ("reload_cmd", &c.reload_cmd),
            ("stop_cmd", &c.stop_cmd),
            ("start_cmd", &c.start_cmd),
            ("install_cmd", &c.install_cmd),
            ("build_cmd", &c.build_cmd),
        ] {
            // `[]` skips the step that runs it; a list must name a program.
            if cmd.first().is_some_and(|p| p.trim().is_empty()) {
                bail!(
                    "bad [plugin.config] of plugin {:?}: {key} must name a program, e.g. [\"pm2\", \"restart\", \"app\"], or be [] to skip its step",
                    ctx.plugin
                );
            }
        }
        if c.features.is_empty() {
            bail!(
                "bad [plugin.config] of plugin {:?}: features is empty",
                ctx.plugin
            );
        }
        c.features_to_disable_names()
            .map_err(|e| format!("bad [plugin.config] of plugin {:?}: {e}", ctx.plugin))?;
        Ok(c)
    }

    pub fn app(&self, rel: &str) -> String {
        format!("{}/{}", self.app_dir, rel.trim_start_matches("./"))
    }

    pub fn env_file(&self) -> String {
        self.env_file.clone().unwrap_or_else(|| self.app(".env"))
    }

    pub fn failed_dir(&self) -> String {
        self.failed_dir
            .clone()
            .unwrap_or_else(|| parent(&self.app_dir))
    }

    pub fn memory_db_path(&self) -> String {
        self.app(&self.memory_db)
    }

    pub fn process_pattern(&self) -> String {
        self.process_pattern
            .clone()
            .unwrap_or_else(|| format!("{}/", self.app_dir))
    }

    /// `http://host:port/` of the health URL.
    pub fn origin(&self) -> String {
        let u = &self.health_url;
        match u.find("://") {
            Some(i) => {
                let rest = &u[i + 3..];
                let end = rest.find('/').unwrap_or(rest.len());
                format!("{}{}/", &u[..i + 3], &rest[..end])
            }
            None => u.clone(),
        }
    }

    /// A path on the application's origin.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.origin().trim_end_matches('/'), path)
    }

    /// The path of the health URL (`/api/health`), for finding names.
    pub fn health_path(&self) -> String {
        let origin = self.origin();
        let o = origin.trim_end_matches('/');
        match self.health_url.strip_prefix(o) {
            Some("") => "/".into(),
            Some(p) => p.into(),
            None => self.health_url.clone(),
        }
    }

    pub fn health_probe(&self) -> HttpProbe {
        HttpProbe::get(&self.health_url).timeout_ms(self.probe_timeout_ms)
    }

    pub fn matcher(&self) -> Matcher {
        Matcher {
            error: self.error_pattern.clone(),
            features: self.features.iter().map(|f| f.log_match.clone()).collect(),
            duration_key: self.duration_key.clone(),
        }
    }

    /// The tables compared with the backup for data loss.
    pub fn row_loss_tables(&self) -> &[String] {
        self.row_loss_tables
            .as_deref()
            .unwrap_or(&self.memory_tables)
    }

    /// A command of the config, run in `app_dir`. The steps check for a
    /// `[]` command first and skip it; this is never asked to run one.
    pub fn cmd(&self, argv: &[String]) -> Cmd {
        let (program, args) = argv.split_first().unwrap_or((&self.git, &[]));
        Cmd::new(program)
            .args(args.iter().cloned())
            .cwd(&self.app_dir)
            .timeout_ms(self.command_timeout_ms)
    }

    pub fn git(&self, args: &[&str]) -> Cmd {
        Cmd::new(&self.git)
            .args(args.iter().copied())
            .cwd(&self.app_dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            .timeout_ms(self.command_timeout_ms)
    }

    pub fn stable_ms(&self, level: u8) -> u64 {
        match level {
            1 => self.level1_stable_ms,
            2 => self.level2_stable_ms,
            _ => self.level3_stable_ms,
        }
    }

    /// How long the `health` step of a level waits.
    pub fn wait_ms(&self, level: u8) -> u64 {
        match level {
            1 => self.restart_timeout_ms,
            2 => self.reload_timeout_ms,
            _ => self.start_timeout_ms,
        }
    }

    /// Every program the plugin runs, once each.
    pub fn programs(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for cmd in [
            &self.restart_cmd,
            &self.status_cmd,
            &self.reload_cmd,
            &self.stop_cmd,
            &self.start_cmd,
            &self.install_cmd,
            &self.build_cmd,
        ] {
            if let Some(p) = cmd.first() {
                out.push(p.clone());
            }
        }
        out.push(self.git.clone());
        out.push(self.tar.clone());
        let mut seen = Vec::new();
        out.retain(|p| {
            if seen.contains(p) {
                false
            } else {
                seen.push(p.clone());
                true
            }
        });
        out
    }

    /// `disable` as a list of feature names, or `None` for `"failing"`.
    pub fn features_to_disable_names(&self) -> std::result::Result<Option<Vec<String>>, String> {
        match self.disable.trim() {
            "all" => Ok(Some(self.features.iter().map(|f| f.name.clone()).collect())),
            "failing" => Ok(None),
            list => {
                let names: Vec<String> = list
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                let known: Vec<&str> = self.features.iter().map(|f| f.name.as_str()).collect();
                if names.is_empty() {
                    return Err(
                        "disable is empty; use \"all\", \"failing\" or feature names".into(),
                    );
                }
                for n in &names {
                    if !known.contains(&n.as_str()) {
                        return Err(format!(
                            "disable names {n:?}, which is not a feature (features: {}; or \"all\", \"failing\")",
                            known.join(", ")
                        ));
                    }
                }
                Ok(Some(names))
            }
        }
    }

    pub fn needs(&self) -> Needs {
        let mut n = Needs::default().http(self.origin());
        for p in self.programs() {
            n = n.exec(p);
        }
        n = n
            .read(&self.log_file)
            .read(self.app_backup.as_deref().unwrap_or(&self.app_backups_dir))
            .read(
                self.memory_backup
                    .as_deref()
                    .unwrap_or(&self.memory_backups_dir),
            )
            .write(&self.app_dir);
        let env = self.env_file();
        if !is_under(&env, &self.app_dir) {
            n = n.write(env);
        }
        n.write(self.failed_dir())
            .write(&self.incident_dir)
            .sqlite(self.memory_db_path())
            .sqlite(
                self.memory_backup
                    .as_deref()
                    .unwrap_or(&self.memory_backups_dir),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(parent("/opt/app"), "/opt");
        assert_eq!(parent("/app"), "/");
        assert_eq!(file_name("/opt/app/"), "app");
        assert!(is_under("/opt/app/.env", "/opt/app"));
        assert!(!is_under("/opt/app-failed", "/opt/app"));
    }
}
