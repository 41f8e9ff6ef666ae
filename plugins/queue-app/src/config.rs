//! `[plugin.config]`: every key with the runbook's value as its default.

use std::collections::BTreeMap;

use rewind_sdk::prelude::*;
use serde::Deserialize;

fn s(v: &str) -> String {
    v.to_string()
}
fn argv(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// A feature of the app that can break on its own ("Single feature
/// broken"), and the flag that disables it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    pub name: String,
    /// Path under `app_url` (or a full URL) answering 200-399 when it works.
    pub path: String,
    /// Path (or URL) that disables the feature ("Use feature flag"); none:
    /// it cannot be disabled, so a broken feature means a rollback.
    #[serde(default)]
    pub flag_path: Option<String>,
    #[serde(default = "d_flag_method")]
    pub flag_method: String,
    #[serde(default = "d_flag_body")]
    pub flag_body: String,
}

fn d_flag_method() -> String {
    s("POST")
}
fn d_flag_body() -> String {
    s("{}")
}

/// A data-validation query: the count of bad rows, 0 when the data is sound.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrityCheck {
    pub name: String,
    pub sql: String,
}

macro_rules! defaults {
    ($($f:ident: $t:ty = $v:expr;)*) => { $(fn $f() -> $t { $v })* };
}

defaults! {
    d_app_url: String = s("http://localhost:3001");
    d_health_path: String = s("/health");
    d_version_path: String = s("/api/version");
    d_api_paths: Vec<String> = argv(&["/api/projects", "/api/analysis"]);
    d_samples: u32 = 5;
    d_probe_timeout: u64 = 2000;
    d_baseline: f64 = 300.0;
    d_slow_factor: f64 = 2.0;
    d_err_rollback: f64 = 10.0;
    d_err_investigate: f64 = 5.0;
    d_err_verify: f64 = 1.0;
    d_quick_fix: u64 = 5 * 60_000;
    d_queues: Vec<String> = argv(&["ai-analysis", "document-processing"]);
    d_stats_path: String = s("/api/queue/stats");
    d_pause_path: String = s("/api/queue/pause-all");
    d_resume_path: String = s("/api/queue/{queue}/resume");
    d_clean_path: String = s("/api/queue/clean-all");
    d_queue_fail: f64 = 2.0;
    d_queue_waiting: u64 = 50;
    d_drain_timeout: u64 = 5 * 60_000;
    d_drain_poll: u64 = 1000;
    d_resume_monitor: u64 = 5000;
    d_maint_on: String = s("/api/maintenance/enable");
    d_maint_off: String = s("/api/maintenance/disable");
    d_warm_path: String = s("/api/cache/warm");
    d_stable_ref: String = s("HEAD~1");
    d_queue_code: String = s("backend/src/queues/");
    d_git: String = s("git");
    d_install: Vec<String> = argv(&["npm", "install"]);
    d_build: Vec<String> = argv(&["npm", "run", "build"]);
    d_restart: Vec<String> = argv(&["pm2", "restart", "all"]);
    d_smoke: Vec<String> = argv(&["npm", "run", "test:smoke"]);
    d_worker_stop: Vec<String> = argv(&["pm2", "stop", "queue-worker"]);
    d_worker_restart: Vec<String> = argv(&["pm2", "restart", "queue-worker"]);
    d_health_timeout: u64 = 10_000;
    d_health_interval: u64 = 1000;
    d_command_timeout: u64 = 600_000;
    d_redis_cli: String = s("redis-cli");
    d_redis_host: String = s("127.0.0.1");
    d_redis_port: u16 = 6379;
    d_cache_max_mb: f64 = 1024.0;
    d_del_batch: usize = 100;
    d_redis_restart: Vec<String> = argv(&["sudo", "systemctl", "restart", "redis"]);
    d_psql: String = s("psql");
    d_pg_dump: String = s("pg_dump");
    d_dropdb: String = s("dropdb");
    d_createdb: String = s("createdb");
    d_cache_patterns: Vec<String> = argv(&["*"]);
    d_keep_prefixes: Vec<String> = argv(&["bull:"]);
    d_backup_dir: String = s("/backups/database");
    d_keep_backups: usize = 10;
    d_restore_prefix: String = s("backup_pre_deploy_");
    d_count_tables: Vec<String> = argv(&["projects"]);
    d_integrity: Vec<IntegrityCheck> = vec![IntegrityCheck {
        name: s("scenes without a project"),
        sql: s("SELECT count(*) FROM scenes s LEFT JOIN projects p ON p.id = s.project_id WHERE p.id IS NULL"),
    }];
    d_app_log: String = s("/var/log/app.log");
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The app's git checkout: git, install, build and smoke tests run here.
    pub app_dir: String,
    #[serde(default = "d_app_url")]
    pub app_url: String,
    #[serde(default = "d_health_path")]
    pub health_path: String,
    #[serde(default = "d_version_path")]
    pub version_path: String,
    #[serde(default = "d_api_paths")]
    pub api_paths: Vec<String>,
    #[serde(default = "d_samples")]
    pub samples: u32,
    #[serde(default = "d_probe_timeout")]
    pub probe_timeout_ms: u64,
    #[serde(default = "d_baseline")]
    pub baseline_ms: f64,
    #[serde(default = "d_slow_factor")]
    pub slow_factor: f64,
    #[serde(default = "d_err_rollback")]
    pub error_rate_rollback_percent: f64,
    #[serde(default = "d_err_investigate")]
    pub error_rate_investigate_percent: f64,
    #[serde(default = "d_err_verify")]
    pub error_rate_verify_percent: f64,
    #[serde(default = "d_quick_fix")]
    pub quick_fix_ms: u64,
    #[serde(default)]
    pub features: Vec<Feature>,
    #[serde(default = "d_queues")]
    pub queues: Vec<String>,
    #[serde(default = "d_stats_path")]
    pub queue_stats_path: String,
    #[serde(default = "d_pause_path")]
    pub pause_all_path: String,
    #[serde(default = "d_resume_path")]
    pub resume_path: String,
    #[serde(default = "d_clean_path")]
    pub clean_all_path: String,
    #[serde(default = "d_queue_fail")]
    pub queue_failure_percent: f64,
    #[serde(default = "d_queue_waiting")]
    pub queue_max_waiting: u64,
    #[serde(default = "d_drain_timeout")]
    pub drain_timeout_ms: u64,
    #[serde(default = "d_drain_poll")]
    pub drain_poll_ms: u64,
    #[serde(default = "d_resume_monitor")]
    pub resume_monitor_ms: u64,
    #[serde(default = "d_maint_on")]
    pub maintenance_enable_path: String,
    #[serde(default = "d_maint_off")]
    pub maintenance_disable_path: String,
    #[serde(default = "d_warm_path")]
    pub cache_warm_path: String,
    #[serde(default = "d_stable_ref")]
    pub stable_ref: String,
    #[serde(default = "d_queue_code")]
    pub queue_code_path: String,
    #[serde(default = "d_git")]
    pub git: String,
    #[serde(default = "d_install")]
    pub install_command: Vec<String>,
    #[serde(default = "d_build")]
    pub build_command: Vec<String>,
    #[serde(default = "d_restart")]
    pub restart_command: Vec<String>,
    #[serde(default = "d_smoke")]
    pub smoke_command: Vec<String>,
    #[serde(default = "d_worker_stop")]
    pub worker_stop_command: Vec<String>,
    #[serde(default = "d_worker_restart")]
    pub worker_restart_command: Vec<String>,
    #[serde(default = "d_health_timeout")]
    pub health_timeout_ms: u64,
    #[serde(default = "d_health_interval")]
    pub health_interval_ms: u64,
    #[serde(default = "d_command_timeout")]
    pub command_timeout_ms: u64,
    #[serde(default = "d_redis_cli")]
    pub redis_cli: String,
    #[serde(default = "d_redis_host")]
    pub redis_host: String,
    #[serde(default = "d_redis_port")]
    pub redis_port: u16,
    /// What the cache level deletes (SCAN + DEL): `*` is every cache key.
    #[serde(default = "d_cache_patterns")]
    pub cache_patterns: Vec<String>,
    /// Keys that are never deleted, whatever the patterns: Bull keeps its
    /// queues (waiting, active, delayed jobs) as `bull:*` in the same Redis.
    #[serde(default = "d_keep_prefixes")]
    pub keep_key_prefixes: Vec<String>,
    #[serde(default = "d_cache_max_mb")]
    pub cache_max_memory_mb: f64,
    #[serde(default = "d_del_batch")]
    pub del_batch: usize,
    #[serde(default = "d_redis_restart")]
    pub redis_restart_command: Vec<String>,
    /// Empty: the `DATABASE_URL` environment variable (an `env` grant).
    #[serde(default)]
    pub database_url: String,
    #[serde(default = "d_psql")]
    pub psql: String,
    #[serde(default = "d_pg_dump")]
    pub pg_dump: String,
    #[serde(default = "d_dropdb")]
    pub dropdb: String,
    #[serde(default = "d_createdb")]
    pub createdb: String,
    /// The command applying the down migration; `npm run migrate:down`
    /// when neither this nor `down_migration` is set.
    #[serde(default)]
    pub migrate_down_command: Option<Vec<String>>,
    /// A down-migration SQL file (relative to `app_dir`) applied with
    /// `psql -1 -f`. Read before the code level checks out the stable
    /// commit (the file usually comes with the release being rolled back)
    /// and kept for the incident.
    #[serde(default)]
    pub down_migration: String,
    #[serde(default = "d_backup_dir")]
    pub backup_dir: String,
    #[serde(default = "d_keep_backups")]
    pub keep_backups: usize,
    #[serde(default)]
    pub restore_from: String,
    #[serde(default = "d_restore_prefix")]
    pub restore_prefix: String,
    #[serde(default = "d_count_tables")]
    pub count_tables: Vec<String>,
    #[serde(default)]
    pub stable_schema: BTreeMap<String, Vec<String>>,
    #[serde(default = "d_integrity")]
    pub integrity_checks: Vec<IntegrityCheck>,
    #[serde(default = "d_app_log")]
    pub app_log: String,
}

impl Config {
    pub fn load(ctx: &Context) -> Result<Self> {
        let mut c: Config = ctx.config()?;
        while c.app_url.ends_with('/') {
            c.app_url.pop();
        }
        while c.app_dir.len() > 1 && c.app_dir.ends_with('/') {
            c.app_dir.pop();
        }
        while c.backup_dir.len() > 1 && c.backup_dir.ends_with('/') {
            c.backup_dir.pop();
        }
        let bad = |m: String| -> Result<()> {
            bail!("bad [plugin.config] of plugin {:?}: {m}", ctx.plugin)
        };
        if c.samples == 0 {
            bad("samples must be at least 1".into())?;
        }
        if c.baseline_ms <= 0.0 || c.slow_factor <= 1.0 {
            bad("baseline_ms must be above 0 and slow_factor above 1".into())?;
        }
        if c.del_batch == 0 || c.keep_backups == 0 {
            bad("del_batch and keep_backups must be at least 1".into())?;
        }
        for t in c.count_tables.iter().chain(c.stable_schema.keys()) {
            if !is_ident(t) {
                bad(format!("table name {t:?} must be a plain SQL identifier"))?;
            }
        }
        if c.cache_patterns.is_empty() {
            bad(
                "cache_patterns must name at least one pattern (\"*\" for every cache key)".into(),
            )?;
        }
        for p in &c.cache_patterns {
            if p.trim().is_empty() {
                bad("cache_patterns must not hold an empty pattern".into())?;
            }
        }
        if c.keep_key_prefixes.iter().any(|p| p.is_empty()) {
            bad(
                "keep_key_prefixes must not hold an empty prefix (it would keep every key)".into(),
            )?;
        }
        if c.migrate_down_command.is_some() && !c.down_migration.is_empty() {
            bad("set either migrate_down_command or down_migration, not both".into())?;
        }
        if c.drain_poll_ms == 0 {
            bad("drain_poll_ms must be at least 1".into())?;
        }
        Ok(c)
    }

    /// The command of the down migration when no `down_migration` file is
    /// set (the runbook's default `npm run migrate:down`).
    pub fn migrate_down_argv(&self) -> Vec<String> {
        self.migrate_down_command
            .clone()
            .unwrap_or_else(|| argv(&["npm", "run", "migrate:down"]))
    }

    /// Whether a key may be deleted by the cache level.
    pub fn deletable(&self, key: &str) -> bool {
        !self
            .keep_key_prefixes
            .iter()
            .any(|p| key.starts_with(p.as_str()))
    }

    /// A path under the app's URL, or a full URL as written.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.app_url)
        }
    }

    pub fn health_probe(&self) -> HttpProbe {
        HttpProbe::get(self.url(&self.health_path)).timeout_ms(self.probe_timeout_ms)
    }

    pub fn resume_url(&self, queue: &str) -> String {
        self.url(&self.resume_path.replace("{queue}", queue))
    }

    /// A configured command run in the app dir; `None` when empty (skipped).
    pub fn cmd(&self, argv: &[String]) -> Option<Cmd> {
        let (program, args) = argv.split_first()?;
        if program.trim().is_empty() {
            return None;
        }
        let mut c = Cmd::new(program)
            .args(args.iter().map(|a| self.subst(a)))
            .cwd(&self.app_dir)
            .timeout_ms(self.command_timeout_ms);
        if let Ok(url) = self.db_url() {
            c = c.env("DATABASE_URL", url);
        }
        Some(c)
    }

    fn subst(&self, a: &str) -> String {
        let mut a = a.to_string();
        if a.contains("{database_url}")
            && let Ok(u) = self.db_url()
        {
            a = a.replace("{database_url}", &u);
        }
        a.replace("{stable_ref}", &self.stable_ref)
            .replace("{app_dir}", &self.app_dir)
    }

    pub fn git(&self, args: &[&str]) -> Cmd {
        Cmd::new(&self.git)
            .args(args.iter().copied())
            .cwd(&self.app_dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            .timeout_ms(self.command_timeout_ms)
    }

    pub fn redis(&self, args: &[&str]) -> Cmd {
        Cmd::new(&self.redis_cli)
            .args(["-h", &self.redis_host, "-p", &self.redis_port.to_string()])
            .args(args.iter().copied())
            .timeout_ms(self.command_timeout_ms)
    }

    /// The database URL: configured, or `$DATABASE_URL`.
    pub fn db_url(&self) -> Result<String> {
        if !self.database_url.is_empty() {
            return Ok(self.database_url.clone());
        }
        match process::env("DATABASE_URL") {
            Ok(Some(v)) if !v.is_empty() => Ok(v),
            Ok(_) => bail!("database_url is not set and DATABASE_URL is empty"),
            Err(e) => bail!("reading DATABASE_URL: {e}"),
        }
    }

    /// `psql <url> -X -w -v ON_ERROR_STOP=1 -At -c <sql>`.
    pub fn psql_cmd(&self, sql: &str) -> Result<Cmd> {
        Ok(Cmd::new(&self.psql)
            .arg(self.db_url()?)
            .args(["-X", "-w", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .timeout_ms(self.command_timeout_ms))
    }

    pub fn backup_path(&self, name: &str) -> String {
        format!("{}/{name}", self.backup_dir)
    }

    pub fn app_path(&self, rel: &str) -> String {
        format!("{}/{}", self.app_dir, rel.trim_start_matches("./"))
    }

    /// Every program the plugin may run with this config.
    pub fn programs(&self) -> Vec<String> {
        let mut v = vec![
            self.git.clone(),
            self.redis_cli.clone(),
            self.psql.clone(),
            self.pg_dump.clone(),
            self.dropdb.clone(),
            self.createdb.clone(),
        ];
        for a in [
            &self.install_command,
            &self.build_command,
            &self.restart_command,
            &self.smoke_command,
            &self.worker_stop_command,
            &self.worker_restart_command,
            &self.redis_restart_command,
            // A down_migration file is applied with `psql`, listed above.
            &if self.down_migration.is_empty() {
                self.migrate_down_argv()
            } else {
                Vec::new()
            },
        ] {
            if let Some(p) = a.first()
                && !p.trim().is_empty()
            {
                v.push(p.clone());
            }
        }
        let mut out: Vec<String> = Vec::new();
        for p in v {
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    /// Origins (`scheme://host:port/`) of every URL used.
    pub fn http_needs(&self) -> Vec<String> {
        let mut out = vec![format!("{}/", self.app_url)];
        for f in &self.features {
            for p in std::iter::once(&f.path).chain(f.flag_path.iter()) {
                let u = self.url(p);
                if !u.starts_with(&format!("{}/", self.app_url)) && !out.contains(&u) {
                    out.push(u);
                }
            }
        }
        out
    }
}

pub fn is_ident(t: &str) -> bool {
    !t.is_empty()
        && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !t.starts_with(|c: char| c.is_ascii_digit())
}

/// `host:port` of a `postgres://` / `postgresql://` URL (5432 by default).
pub fn db_host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().ok()?),
        _ => (hostport, 5432),
    };
    let host = if host.is_empty() { "localhost" } else { host };
    Some((host.to_string(), port))
}

/// The database name of a URL, and the same URL pointing at `postgres`
/// (the maintenance database `dropdb`/`createdb` connect to).
pub fn db_name_and_maintenance(url: &str) -> Option<(String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = rest.split_once('/')?;
    let (name, query) = match path.split_once('?') {
        Some((n, q)) => (n, Some(q)),
        None => (path, None),
    };
    if name.is_empty() {
        return None;
    }
    let maint = match query {
        Some(q) => format!("{scheme}://{authority}/postgres?{q}"),
        None => format!("{scheme}://{authority}/postgres"),
    };
    Some((name.to_string(), maint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_database_urls() {
        assert_eq!(
            db_host_port("postgresql://postgres@127.0.0.1:5544/app"),
            Some(("127.0.0.1".into(), 5544))
        );
        assert_eq!(
            db_host_port("postgres://u:p@db/app?sslmode=disable"),
            Some(("db".into(), 5432))
        );
        assert_eq!(
            db_name_and_maintenance("postgresql://postgres@127.0.0.1:5544/app"),
            Some((
                "app".into(),
                "postgresql://postgres@127.0.0.1:5544/postgres".into()
            ))
        );
        assert!(is_ident("projects") && !is_ident("p; drop"));
    }
}
