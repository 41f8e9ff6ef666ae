//! The plugin's configuration: every default is the runbook's value.

use rewind_sdk::prelude::*;
use serde::Deserialize;

fn s(v: &str) -> String {
    v.to_string()
}
fn sv(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| s(x)).collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The database (`/var/lib/abathur/abathur.db`).
    pub db_path: String,
    /// Where backups live (`/backups/abathur`).
    pub backup_dir: String,
    /// Backups are `<backup_prefix><YYYY-MM-DD_HH-MM-SS>.db.gz` (the daily script's names).
    pub backup_prefix: String,
    /// The backups the plugin takes before it changes anything are
    /// `<manual_backup_prefix><YYYYmmdd_HHMMSS>.db.gz` (the runbook's
    /// "Manual Backup Procedure"): taken of the failing database, they are
    /// never "the last good backup" while a daily one verifies.
    pub manual_backup_prefix: String,
    /// The backup to restore (and to compare a salvage with): a file name
    /// in `backup_dir` or a path; `""`: the newest daily backup that verifies.
    pub restore_backup: String,
    /// Where a service's pid is written (`{service}`), e.g.
    /// `/run/abathur/{service}.pid`; `""`: none. Those pids are the
    /// service's own processes when checking that it stopped.
    pub pid_file: String,
    /// Backups older than this are pruned after a new one is verified (`RETENTION_DAYS=30`).
    pub retention_days: u64,
    /// The disk-full procedure prunes backups older than this (`-mtime +7`).
    pub disk_retention_days: u64,
    /// Compresses `{file}` into `{file}.gz` (`gzip`).
    pub compress_command: Vec<String>,
    /// Decompresses `{file}` (a `.gz`) next to itself (`gunzip`, i.e. `gzip -d`).
    pub decompress_command: Vec<String>,
    /// Writes the `.recover` SQL of `{db}` to `{sql}`; `[]`: skip straight to rewind's reader.
    pub recover_command: Vec<String>,
    /// Loads `{sql}` into the new database `{recovered}`.
    pub recover_load_command: Vec<String>,
    /// Stops one service (`systemctl stop {service}`).
    pub stop_command: Vec<String>,
    /// Starts one service (`systemctl start {service}`).
    pub start_command: Vec<String>,
    pub milestone2_services: Vec<String>,
    pub milestone3_services: Vec<String>,
    pub production_stop_services: Vec<String>,
    pub production_start_services: Vec<String>,
    pub corruption_services: Vec<String>,
    /// `ps aux | grep abathur` after stopping: no process may match; `""`: skip.
    pub process_pattern: String,
    /// `curl http://localhost:8000/health`; `""`: no health checks.
    pub health_url: String,
    /// The healthy answer contains this (`"healthy"`).
    pub health_contains: String,
    pub health_timeout_ms: u64,
    pub health_interval_ms: u64,
    /// One GET of `health_url` (a timeout reads as "not healthy").
    pub probe_timeout_ms: u64,
    /// Post-rollback validation (smoke tests, benchmark, validate_database).
    pub validation_commands: Vec<Vec<String>>,
    /// Working directory of the commands; the runbook's directory when empty.
    pub workdir: String,
    /// A JSON file of the application's feature flags; `""`: a manual step.
    pub feature_flags_file: String,
    pub core_tables: Vec<String>,
    pub memory_tables: Vec<String>,
    pub memory_indexes: Vec<String>,
    pub vector_tables: Vec<String>,
    /// "Expected: 9 tables" and "33+ indexes" after a restore. Unset: every
    /// table and index of the reference schema (the backup restored, or the
    /// database before the rollback) must be there, whatever their number.
    pub min_tables: Option<u64>,
    pub min_indexes: Option<u64>,
    /// Free space on the database's filesystem below this is "disk full".
    pub min_free_bytes: u64,
    /// A WAL larger than this is "disk full" too (checkpoints are not keeping up).
    pub max_wal_bytes: u64,
    /// More documents than this share with `sync_status = 'failed'`: vector search failed.
    pub max_failed_sync_percent: f64,
    /// A semantic search request, probed with GET; `""`: not probed.
    pub search_url: String,
    pub search_max_ms: u64,
    pub command_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            db_path: s("/var/lib/abathur/abathur.db"),
            backup_dir: s("/backups/abathur"),
            backup_prefix: s("abathur_"),
            manual_backup_prefix: s("manual_"),
            restore_backup: String::new(),
            pid_file: String::new(),
            retention_days: 30,
            disk_retention_days: 7,
            compress_command: sv(&["gzip", "{file}"]),
            decompress_command: sv(&["gzip", "-d", "{file}"]),
            recover_command: sv(&["sqlite3", "-cmd", ".output {sql}", "{db}", ".recover"]),
            recover_load_command: sv(&["sqlite3", "{recovered}", ".read {sql}"]),
            stop_command: sv(&["systemctl", "stop", "{service}"]),
            start_command: sv(&["systemctl", "start", "{service}"]),
            milestone2_services: sv(&["abathur-api"]),
            milestone3_services: sv(&["abathur-document-sync", "ollama"]),
            production_stop_services: sv(&[
                "abathur-api",
                "abathur-workers",
                "abathur-document-sync",
            ]),
            production_start_services: sv(&["abathur-api", "abathur-workers"]),
            corruption_services: sv(&["abathur-api"]),
            process_pattern: s("abathur"),
            health_url: s("http://localhost:8000/health"),
            health_contains: s("healthy"),
            health_timeout_ms: 30_000,
            health_interval_ms: 1000,
            probe_timeout_ms: 2000,
            validation_commands: vec![
                sv(&[
                    "python",
                    "-m",
                    "pytest",
                    "tests/smoke/production_smoke_tests.py",
                    "-v",
                ]),
                sv(&["python", "-m", "abathur.utils.benchmark", "--quick"]),
                sv(&["python", "-m", "abathur.utils.validate_database"]),
            ],
            workdir: String::new(),
            feature_flags_file: String::new(),
            core_tables: sv(&[
                "tasks",
                "agents",
                "audit",
                "checkpoints",
                "state",
                "metrics",
            ]),
            memory_tables: sv(&["sessions", "memory_entries", "document_index"]),
            memory_indexes: sv(&[
                "idx_sessions_status_updated",
                "idx_sessions_user_created",
                "idx_sessions_project_id",
                "idx_sessions_app_user",
                "idx_memory_namespace_key_version",
                "idx_memory_type_updated",
                "idx_memory_namespace_prefix",
                "idx_memory_created_by",
                "idx_memory_updated_at",
                "idx_memory_type_namespace",
                "idx_memory_is_deleted",
                "idx_document_file_path",
                "idx_document_type",
                "idx_document_sync_status",
                "idx_document_hash",
                "idx_document_updated",
            ]),
            vector_tables: sv(&["document_embeddings", "document_embeddings_data"]),
            min_tables: None,
            min_indexes: None,
            min_free_bytes: 1 << 30,
            max_wal_bytes: 64 << 20,
            max_failed_sync_percent: 10.0,
            search_url: String::new(),
            search_max_ms: 1000,
            command_timeout_ms: 60_000,
        }
    }
}

impl Config {
    pub fn load(ctx: &Context) -> Result<Self> {
        let mut c: Config = ctx.config()?;
        for p in [&mut c.backup_dir, &mut c.db_path] {
            while p.len() > 1 && p.ends_with('/') {
                p.pop();
            }
        }
        if c.db_path.is_empty() || c.backup_dir.is_empty() {
            bail!("db_path and backup_dir must not be empty");
        }
        if c.manual_backup_prefix.is_empty()
            || c.backup_prefix.starts_with(&c.manual_backup_prefix)
            || c.manual_backup_prefix.starts_with(&c.backup_prefix)
        {
            bail!(
                "manual_backup_prefix {:?} must differ from backup_prefix {:?} (neither a prefix of the other): the plugin's own backups of the failing database must not pass for daily ones",
                c.manual_backup_prefix,
                c.backup_prefix
            );
        }
        Ok(c)
    }

    /// The directory holding the database.
    pub fn db_dir(&self) -> String {
        match self.db_path.rsplit_once('/') {
            Some(("", _)) => "/".into(),
            Some((d, _)) => d.into(),
            None => ".".into(),
        }
    }
    /// The database's file name without `.db` (`abathur`).
    pub fn db_stem(&self) -> String {
        let name = self.db_path.rsplit('/').next().unwrap_or(&self.db_path);
        name.strip_suffix(".db").unwrap_or(name).to_string()
    }
    pub fn in_db_dir(&self, name: &str) -> String {
        format!("{}/{name}", self.db_dir())
    }
    pub fn in_backup_dir(&self, name: &str) -> String {
        format!("{}/{name}", self.backup_dir)
    }
    pub fn wal(&self) -> String {
        format!("{}-wal", self.db_path)
    }
    pub fn shm(&self) -> String {
        format!("{}-shm", self.db_path)
    }
    /// `.recover` writes here (`abathur_recovered.db`, as in the runbook).
    pub fn recovered(&self) -> String {
        self.in_db_dir(&format!("{}_recovered.db", self.db_stem()))
    }
    pub fn recover_sql(&self) -> String {
        self.in_db_dir(&format!("{}_recovered.sql", self.db_stem()))
    }
    /// A backup is decompressed here to be restored.
    pub fn restore_tmp(&self) -> String {
        self.in_db_dir(&format!(".{}_restore.db", self.db_stem()))
    }
    /// A backup is decompressed here to be verified.
    pub fn verify_tmp(&self) -> String {
        self.in_backup_dir(&format!(".{}_verify.db", self.db_stem()))
    }

    /// The configured `restore_backup` as a path (a bare name is in `backup_dir`).
    pub fn restore_backup_path(&self) -> Option<String> {
        match self.restore_backup.as_str() {
            "" => None,
            p if p.contains('/') => Some(p.to_string()),
            name => Some(self.in_backup_dir(name)),
        }
    }

    /// A configured command with its placeholders filled in.
    pub fn cmd(&self, template: &[String], vars: &[(&str, &str)]) -> Option<Cmd> {
        let mut parts = template.iter().map(|a| {
            let mut a = a.clone();
            for (k, v) in vars {
                a = a.replace(&format!("{{{k}}}"), v);
            }
            a
        });
        let program = parts.next()?;
        let mut c = Cmd::new(program)
            .args(parts)
            .timeout_ms(self.command_timeout_ms);
        if !self.workdir.is_empty() {
            c = c.cwd(&self.workdir);
        }
        Some(c)
    }

    pub fn health(&self) -> Option<HttpProbe> {
        if self.health_url.is_empty() {
            return None;
        }
        let mut p = HttpProbe::get(&self.health_url)
            .expect(200, 299)
            .timeout_ms(self.probe_timeout_ms);
        if !self.health_contains.is_empty() {
            p = p.contains(&self.health_contains);
        }
        Some(p)
    }

    /// Every program the config runs.
    pub fn programs(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |c: &[String]| {
            if let Some(p) = c.first()
                && !out.contains(p)
            {
                out.push(p.clone());
            }
        };
        add(&self.compress_command);
        add(&self.decompress_command);
        add(&self.recover_command);
        if !self.recover_command.is_empty() {
            add(&self.recover_load_command);
        }
        let any_services = [
            &self.milestone2_services,
            &self.milestone3_services,
            &self.production_stop_services,
            &self.corruption_services,
        ]
        .iter()
        .any(|l| !l.is_empty());
        if any_services {
            add(&self.stop_command);
        }
        let any_start = [
            &self.milestone2_services,
            &self.production_start_services,
            &self.corruption_services,
        ]
        .iter()
        .any(|l| !l.is_empty());
        if any_start {
            add(&self.start_command);
        }
        for v in &self.validation_commands {
            add(v);
        }
        out
    }
}
