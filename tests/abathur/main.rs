//! End-to-end tests of the abathur plugin against a local stand-in.
//!
//! Each test builds the stand-in in its own temporary directory: a real
//! SQLite database (rusqlite, WAL mode) with the runbook's nine tables and
//! 33 indexes and rows in them under `var/lib/abathur/abathur.db`, a backup
//! directory `backups/abathur`, and the services
//! (`examples/abathur/standin/service.py`: `abathur-api` answers `/health`
//! on its own loopback port after checking the database; the others just
//! run), started and stopped by pid file through
//! `examples/abathur/standin/svc` instead of systemctl. The tests break it
//! the way the runbook's triggers describe (pages overwritten in the middle
//! of the file, a half-deployed memory system, a failing vector search, a
//! dropped core table, a bloated WAL, a low-space threshold) and run the
//! real `rewind` binary on `examples/abathur/rewind.toml` pointed at it.
//! The example's `[[drill]]` scenarios (`rewind drill`, injected with
//! `examples/abathur/standin/inject.py`) run the same way.

#[path = "../support/cli.rs"]
mod cli;
mod escalation;
#[allow(dead_code)]
#[path = "../e2e/util.rs"]
mod util;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use rusqlite::Connection;
use serde_json::Value;

use util::{
    PATIENCE, Proc, REWIND, alive, cache_dir, free_port, kill_pid, level_numbers, text, tree,
    wait_until,
};

const CORE: [&str; 6] = [
    "tasks",
    "agents",
    "audit",
    "checkpoints",
    "state",
    "metrics",
];
const MEMORY: [&str; 3] = ["sessions", "memory_entries", "document_index"];
const ALL: [&str; 9] = [
    "tasks",
    "agents",
    "audit",
    "checkpoints",
    "state",
    "metrics",
    "sessions",
    "memory_entries",
    "document_index",
];

const SCHEMA: &str = r#"
CREATE TABLE agents (id INTEGER PRIMARY KEY, name TEXT NOT NULL, specialty TEXT, created_at TEXT);
CREATE TABLE tasks (id INTEGER PRIMARY KEY, agent_id INTEGER REFERENCES agents(id), status TEXT, priority INTEGER, payload TEXT, created_at TEXT, updated_at TEXT);
CREATE TABLE audit (id INTEGER PRIMARY KEY, task_id INTEGER REFERENCES tasks(id), action TEXT, detail TEXT, at TEXT);
CREATE TABLE checkpoints (id INTEGER PRIMARY KEY, task_id INTEGER REFERENCES tasks(id), iteration INTEGER, data BLOB, at TEXT);
CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT, updated_at TEXT);
CREATE TABLE metrics (id INTEGER PRIMARY KEY, name TEXT, value REAL, at TEXT);
CREATE INDEX idx_tasks_status ON tasks(status);
CREATE INDEX idx_tasks_agent ON tasks(agent_id);
CREATE INDEX idx_tasks_priority ON tasks(priority, created_at);
CREATE INDEX idx_tasks_created ON tasks(created_at);
CREATE INDEX idx_tasks_updated ON tasks(updated_at);
CREATE INDEX idx_agents_name ON agents(name);
CREATE INDEX idx_agents_specialty ON agents(specialty);
CREATE INDEX idx_audit_task ON audit(task_id);
CREATE INDEX idx_audit_action ON audit(action);
CREATE INDEX idx_audit_at ON audit(at);
CREATE INDEX idx_checkpoints_task ON checkpoints(task_id, iteration);
CREATE INDEX idx_checkpoints_at ON checkpoints(at);
CREATE INDEX idx_state_updated ON state(updated_at);
CREATE INDEX idx_metrics_name ON metrics(name);
CREATE INDEX idx_metrics_at ON metrics(at);
CREATE INDEX idx_metrics_name_at ON metrics(name, at);
CREATE INDEX idx_agents_created ON agents(created_at);
CREATE TABLE sessions (id TEXT PRIMARY KEY, app_name TEXT, user_id TEXT, project_id TEXT, status TEXT, created_at TEXT, updated_at TEXT);
CREATE TABLE memory_entries (id INTEGER PRIMARY KEY, namespace TEXT, key TEXT, value TEXT, memory_type TEXT, version INTEGER, created_by TEXT, session_id TEXT REFERENCES sessions(id), is_deleted INTEGER DEFAULT 0, created_at TEXT, updated_at TEXT);
CREATE TABLE document_index (id INTEGER PRIMARY KEY, file_path TEXT, title TEXT, document_type TEXT, content_hash TEXT, sync_status TEXT, embedding_blob BLOB, metadata TEXT, updated_at TEXT);
CREATE INDEX idx_sessions_status_updated ON sessions(status, updated_at);
CREATE INDEX idx_sessions_user_created ON sessions(user_id, created_at);
CREATE INDEX idx_sessions_project_id ON sessions(project_id);
CREATE INDEX idx_sessions_app_user ON sessions(app_name, user_id);
CREATE UNIQUE INDEX idx_memory_namespace_key_version ON memory_entries(namespace, key, version);
CREATE INDEX idx_memory_type_updated ON memory_entries(memory_type, updated_at);
CREATE INDEX idx_memory_namespace_prefix ON memory_entries(namespace);
CREATE INDEX idx_memory_created_by ON memory_entries(created_by);
CREATE INDEX idx_memory_updated_at ON memory_entries(updated_at);
CREATE INDEX idx_memory_type_namespace ON memory_entries(memory_type, namespace);
CREATE INDEX idx_memory_is_deleted ON memory_entries(is_deleted);
CREATE INDEX idx_document_file_path ON document_index(file_path);
CREATE INDEX idx_document_type ON document_index(document_type);
CREATE INDEX idx_document_sync_status ON document_index(sync_status);
CREATE INDEX idx_document_hash ON document_index(content_hash);
CREATE INDEX idx_document_updated ON document_index(updated_at);
"#;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/abathur/rewind.toml")
}

fn svc() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/abathur/standin/svc")
}

/// The stand-in; every service it or rewind started is killed by pid file
/// when dropped.
struct Stand {
    dir: tempfile::TempDir,
    port: u16,
    env: Vec<(String, String)>,
    /// A runbook of this test's (the example, edited), else the example.
    runbook: Option<PathBuf>,
}

impl Stand {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rewind-abathur-")
            .tempdir()
            .unwrap();
        let s = Self {
            dir,
            port: free_port(),
            env: Vec::new(),
            runbook: None,
        };
        for d in ["var/lib/abathur", "backups/abathur", "app"] {
            std::fs::create_dir_all(s.root().join(d)).unwrap();
        }
        std::fs::write(
            s.root().join("app/feature_flags.json"),
            "{\n  \"semantic_search_enabled\": true,\n  \"background_document_sync\": true,\n  \"embedding_generation\": true\n}\n",
        )
        .unwrap();
        s.build_db();
        s
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }
    fn db(&self) -> PathBuf {
        self.root().join("var/lib/abathur/abathur.db")
    }
    fn backups(&self) -> PathBuf {
        self.root().join("backups/abathur")
    }
    fn conn(&self) -> Connection {
        Connection::open(self.db()).unwrap()
    }

    /// The runbook's schema with rows (WAL mode, as Abathur runs it).
    fn build_db(&self) {
        let c = self.conn();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch(SCHEMA).unwrap();
        let tx = c.unchecked_transaction().unwrap();
        for i in 1..=20 {
            tx.execute(
                "INSERT INTO agents VALUES (?1, ?2, ?3, '2025-10-01')",
                (i, format!("agent-{i}"), format!("specialty-{}", i % 4)),
            )
            .unwrap();
        }
        for i in 1..=3000 {
            tx.execute(
                "INSERT INTO tasks VALUES (?1, ?2, ?3, ?4, ?5, '2025-10-01', '2025-10-02')",
                (
                    i,
                    i % 20 + 1,
                    ["pending", "running", "done"][i % 3],
                    i % 5,
                    format!("task {i} {}", "p".repeat(150)),
                ),
            )
            .unwrap();
        }
        for i in 1..=2000 {
            tx.execute(
                "INSERT INTO audit VALUES (?1, ?2, 'update', ?3, '2025-10-02')",
                (i, i % 3000 + 1, format!("audit {i} {}", "a".repeat(60))),
            )
            .unwrap();
        }
        for i in 1..=200 {
            tx.execute(
                "INSERT INTO checkpoints VALUES (?1, ?2, ?3, ?4, '2025-10-02')",
                (i, i, i % 7, vec![(i % 251) as u8; 300]),
            )
            .unwrap();
        }
        for i in 1..=50 {
            tx.execute(
                "INSERT INTO state VALUES (?1, ?2, '2025-10-02')",
                (format!("key-{i}"), format!("value-{i}")),
            )
            .unwrap();
        }
        for i in 1..=1000 {
            tx.execute(
                "INSERT INTO metrics VALUES (?1, ?2, ?3, '2025-10-02')",
                (i, format!("m{}", i % 10), i as f64 * 0.5),
            )
            .unwrap();
        }
        for i in 1..=100 {
            tx.execute(
                "INSERT INTO sessions VALUES (?1, 'abathur', ?2, 'p1', 'active', '2025-10-03', '2025-10-03')",
                (format!("s{i}"), format!("u{}", i % 9)),
            )
            .unwrap();
        }
        for i in 1..=1000 {
            tx.execute(
                "INSERT INTO memory_entries VALUES (?1, ?2, ?3, ?4, 'semantic', 1, 'agent', ?5, 0, '2025-10-03', '2025-10-03')",
                (i, format!("ns{}", i % 10), format!("k{i}"), format!("memory {i}"), format!("s{}", i % 100 + 1)),
            )
            .unwrap();
        }
        for i in 1..=200 {
            tx.execute(
                "INSERT INTO document_index VALUES (?1, ?2, ?3, 'md', ?4, 'synced', ?5, '{}', '2025-10-03')",
                (i, format!("docs/{i}.md"), format!("Doc {i}"), format!("h{i}"), vec![1u8; 64]),
            )
            .unwrap();
        }
        tx.commit().unwrap();
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    }

    fn counts(&self, db: &Path, tables: &[&str]) -> Vec<(String, i64)> {
        let c = Connection::open(db).unwrap();
        tables
            .iter()
            .map(|t| {
                (
                    t.to_string(),
                    c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                        .unwrap(),
                )
            })
            .collect()
    }

    fn integrity(&self, db: &Path) -> String {
        let c = Connection::open(db).unwrap();
        let mut stmt = match c.prepare("PRAGMA integrity_check") {
            Ok(s) => s,
            Err(e) => return e.to_string(),
        };
        let v: Result<Vec<String>, _> = stmt
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect());
        match v {
            Ok(v) => v.join("; "),
            Err(e) => e.to_string(),
        }
    }

    fn names(&self, kind: &str) -> Vec<String> {
        let c = self.conn();
        c.prepare("SELECT name FROM sqlite_master WHERE type = ?1 ORDER BY name")
            .unwrap()
            .query_map([kind], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn svc(&self, action: &str, name: &str) -> Output {
        Command::new("python3")
            .arg(svc())
            .args(["--root", self.root().to_str().unwrap()])
            .args(["--db", self.db().to_str().unwrap()])
            .args(["--port", &self.port.to_string()])
            .args([action, name])
            .output()
            .unwrap()
    }

    fn pid(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.root().join(format!("run/{name}.pid")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|p| alive(*p))
    }

    /// Milestone 3 half applied: what sqlite-vss leaves in the schema (a
    /// virtual table that, without the extension, cannot be read nor
    /// dropped with DROP TABLE), its data table, and half the documents
    /// failed to sync.
    fn half_applied_vector_search(&self) {
        self.conn()
            .execute_batch(
                "PRAGMA writable_schema = ON;
                 INSERT INTO sqlite_master (type, name, tbl_name, rootpage, sql) VALUES ('table', 'document_embeddings', 'document_embeddings', 0, 'CREATE VIRTUAL TABLE document_embeddings USING vss0(embedding(384))');
                 PRAGMA writable_schema = OFF;",
            )
            .unwrap();
        // A new connection: the schema written above is read afresh.
        self.conn()
            .execute_batch(
                "CREATE TABLE document_embeddings_data (rowid INTEGER PRIMARY KEY, data BLOB);
                 INSERT INTO document_embeddings_data (data) VALUES (x'0102'), (x'0304');
                 UPDATE document_index SET sync_status = 'failed' WHERE id % 2 = 0;",
            )
            .unwrap();
    }

    fn start_all(&self) {
        for s in [
            "abathur-api",
            "abathur-workers",
            "abathur-document-sync",
            "ollama",
        ] {
            assert!(self.svc("start", s).status.success(), "start {s}");
        }
        assert!(
            wait_until(PATIENCE, || self.health() == Some(200)),
            "abathur-api up"
        );
    }

    fn health(&self) -> Option<u16> {
        let url = format!("http://127.0.0.1:{}/health", self.port);
        match reqwest::blocking::Client::new()
            .get(url)
            .timeout(PATIENCE)
            .send()
        {
            Ok(r) => Some(r.status().as_u16()),
            Err(_) => None,
        }
    }

    fn set(&mut self, k: &str, v: &str) {
        self.env.retain(|(a, _)| a != k);
        self.env.push((k.into(), v.into()));
    }

    /// Run on a copy of the example runbook, edited by `edit` (as an
    /// operator would write their own), written into the stand-in with
    /// the example's relative paths made absolute.
    fn edit_runbook(&mut self, edit: impl FnOnce(String) -> String) {
        let here = example().parent().unwrap().canonicalize().unwrap();
        let repo = here.join("../..").canonicalize().unwrap();
        let text = std::fs::read_to_string(example())
            .unwrap()
            .replace("\"standin/", &format!("\"{}/standin/", here.display()))
            .replace("\"../../target/", &format!("\"{}/target/", repo.display()));
        let path = self.root().join("rewind.toml");
        std::fs::write(&path, edit(text)).unwrap();
        self.runbook = Some(path);
    }

    /// The real CLI on the example runbook, pointed at this stand-in.
    fn rewind(&self, args: &[&str]) -> Output {
        let runbook = self.runbook.clone().unwrap_or_else(example);
        self.command(&cli::approving(args), &runbook)
            .output()
            .unwrap()
    }

    /// The CLI with exactly `args` (no approval added) on `runbook`.
    fn command(&self, args: &[String], runbook: &Path) -> Command {
        let mut c = Command::new(REWIND);
        c.args(args)
            .arg(runbook)
            .env("REWIND_CACHE_DIR", cache_dir())
            .env("REWIND_LOCK_DIR", Path::new(&self.root()).join("locks"))
            .env_remove("REWIND_LOG")
            .env("ABATHUR_STANDIN", self.root())
            .env("ABATHUR_API_PORT", self.port.to_string())
            .env("ABATHUR_HEALTH_TIMEOUT_MS", "30000")
            // One health GET: a failure bound only, so a loaded machine
            // does not read a slow answer as a failed service.
            .env("ABATHUR_PROBE_TIMEOUT_MS", "30000")
            .env("ABATHUR_HEALTH_INTERVAL_MS", "100")
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    fn run_json(&self, args: &[&str]) -> (i32, Value, String) {
        let mut all = vec!["run", "--json"];
        all.extend_from_slice(args);
        let out = self.rewind(&all);
        let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("no JSON report ({e}): {}", text(&out));
        });
        (out.status.code().unwrap_or(-1), report, text(&out))
    }

    /// A daily backup as the runbook's cron script takes it: checkpoint,
    /// copy, gzip; its mtime set `age` in the past.
    fn daily_backup(&self, name: &str, age: Duration) -> PathBuf {
        let c = self.conn();
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
        let copy = self.backups().join(name);
        c.backup(rusqlite::MAIN_DB, &copy, None).unwrap();
        assert!(Command::new("gzip").arg(&copy).status().unwrap().success());
        let gz = PathBuf::from(format!("{}.gz", copy.display()));
        set_age(&gz, age);
        gz
    }

    /// Rows written after a backup: every table's rows copied once more
    /// (new keys), so each table holds twice what it did.
    fn write_more_rows(&self) {
        self.conn()
            .execute_batch(
                "BEGIN;
                 INSERT INTO agents(name, specialty, created_at) SELECT name || '-late', specialty, created_at FROM agents;
                 INSERT INTO tasks(agent_id, status, priority, payload, created_at, updated_at) SELECT agent_id, status, priority, payload, created_at, updated_at FROM tasks;
                 INSERT INTO audit(task_id, action, detail, at) SELECT task_id, action, detail, at FROM audit;
                 INSERT INTO checkpoints(task_id, iteration, data, at) SELECT task_id, iteration, data, at FROM checkpoints;
                 INSERT INTO state SELECT key || '-late', value, updated_at FROM state;
                 INSERT INTO metrics(name, value, at) SELECT name, value, at FROM metrics;
                 INSERT INTO sessions SELECT id || '-late', app_name, user_id, project_id, status, created_at, updated_at FROM sessions;
                 INSERT INTO memory_entries(namespace, key, value, memory_type, version, created_by, session_id, is_deleted, created_at, updated_at) SELECT namespace, key || '-late', value, memory_type, version, created_by, session_id, is_deleted, created_at, updated_at FROM memory_entries;
                 INSERT INTO document_index(file_path, title, document_type, content_hash, sync_status, embedding_blob, metadata, updated_at) SELECT file_path, title, document_type, content_hash, sync_status, embedding_blob, metadata, updated_at FROM document_index;
                 COMMIT;
                 PRAGMA wal_checkpoint(TRUNCATE);",
            )
            .unwrap();
    }

    /// Overwrite `n` pages in the middle of the database file (not the
    /// header page), so that `PRAGMA integrity_check` fails.
    fn corrupt_pages(&self, n: u64) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.db())
            .unwrap();
        let len = f.metadata().unwrap().len();
        let pages = len / 4096;
        let first = pages / 2;
        for p in first..first + n {
            f.seek(SeekFrom::Start(p * 4096)).unwrap();
            f.write_all(&[0xA5u8; 4096]).unwrap();
        }
        f.sync_all().unwrap();
    }
}

impl Drop for Stand {
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir(self.root().join("run")) {
            for e in rd.flatten() {
                if let Some(pid) = std::fs::read_to_string(e.path())
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
                {
                    kill_pid(pid);
                }
            }
        }
    }
}

fn set_age(p: &Path, age: Duration) {
    let f = std::fs::File::options().write(true).open(p).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

fn gunzip_counts(gz: &Path, tables: &[&str]) -> Vec<(String, i64)> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.db");
    let bytes = Command::new("gzip")
        .arg("-dc")
        .arg(gz)
        .output()
        .unwrap()
        .stdout;
    std::fs::write(&out, bytes).unwrap();
    let c = Connection::open(&out).unwrap();
    tables
        .iter()
        .map(|t| {
            (
                t.to_string(),
                c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                    .unwrap(),
            )
        })
        .collect()
}

fn assessment(report: &Value) -> &Value {
    &report["plugins"][0]["assessment"]
}

fn steps(report: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for l in report["plugins"][0]["levels"].as_array().unwrap() {
        for s in l["steps"].as_array().unwrap() {
            out.push((
                s["id"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
                s["message"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    out
}

fn message(report: &Value, id: &str) -> String {
    steps(report)
        .into_iter()
        .find(|(i, _, _)| i == id)
        .unwrap_or_else(|| panic!("no step {id}"))
        .2
}

/// The daily backups (`abathur_*.db.gz`).
fn backups_in(dir: &Path) -> Vec<String> {
    prefixed_in(dir, "abathur_")
}

/// The backups the plugin takes before it changes anything: the runbook's
/// manual backups, `manual_<YYYYmmdd_HHMMSS>.db.gz`.
fn manual_backups_in(dir: &Path) -> Vec<String> {
    prefixed_in(dir, "manual_")
}

fn prefixed_in(dir: &Path, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix) && n.ends_with(".db.gz"))
        .collect();
    v.sort();
    v
}

/// The stand-in's files, without rewind's own state directory (its journal
/// records the dry run), SQLite's `-shm` index and an empty `-wal`, which
/// readers (the API's health check, the plugin's read-only queries) create
/// or rewrite without changing any data.
fn untouchable(s: &Stand, t: Vec<(PathBuf, Vec<u8>)>) -> Vec<(PathBuf, Vec<u8>)> {
    let state = s.root().join("rewind-state");
    t.into_iter()
        .filter(|(p, c)| {
            let name = p.to_string_lossy();
            !p.starts_with(&state)
                && !name.ends_with("-shm")
                && (!name.ends_with("-wal") || !c.is_empty())
        })
        .collect()
}

/// A dry run and a plan on the broken stand-in change nothing: same files,
/// same service pids.
fn assert_dry_run_untouched(s: &Stand, expect_level: u64, expect_scenario: &str) {
    let before = tree(s.root());
    let pids: Vec<Option<u32>> = ["abathur-api", "abathur-workers"]
        .iter()
        .map(|n| s.pid(n))
        .collect();
    let plan = s.rewind(&["plan"]);
    let plan_text = text(&plan);
    assert!(plan_text.contains("observed"), "{plan_text}");
    assert!(plan_text.contains("threshold"), "{plan_text}");
    let (code, report, out) = s.run_json(&["--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(assessment(&report)["level"], expect_level, "{out}");
    assert_eq!(assessment(&report)["scenario"], expect_scenario, "{out}");
    let after = tree(s.root());
    let (before, after) = (untouchable(s, before), untouchable(s, after));
    let changed: Vec<String> = after
        .iter()
        .filter(|e| !before.contains(e))
        .chain(before.iter().filter(|e| !after.contains(e)))
        .map(|(p, _)| p.display().to_string())
        .collect();
    assert!(changed.is_empty(), "dry run changed {changed:?}");
    let pids_after: Vec<Option<u32>> = ["abathur-api", "abathur-workers"]
        .iter()
        .map(|n| s.pid(n))
        .collect();
    assert_eq!(pids, pids_after);
}

#[test]
fn example_runbook_is_granted_exactly_what_it_needs() {
    let s = Stand::new();
    let out = s.rewind(&["check"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("grants cover everything"),
        "{}",
        text(&out)
    );
}

#[test]
fn healthy_database_needs_nothing() {
    let s = Stand::new();
    s.start_all();
    let (code, report, out) = s.run_json(&[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["plugins"][0]["outcome"], "healthy", "{out}");
    let findings = assessment(&report)["findings"].as_array().unwrap();
    assert!(findings.iter().all(|f| f["breached"] == false), "{out}");
    assert!(
        findings
            .iter()
            .any(|f| f["check"] == "PRAGMA integrity_check" && f["observed"] == "ok"),
        "{out}"
    );
}

/// The salvage is used when it holds at least every row of the newest
/// daily backup (it loses less than the restore would): rows were written
/// after the backup, and two overwritten pages lose a few dozen of them.
#[test]
fn corrupted_pages_are_recovered_into_a_new_database_and_swapped_in() {
    let s = Stand::new();
    let gz = s.daily_backup("abathur_2025-10-10_02-00-00.db", Duration::from_secs(3600));
    let at_backup = s.counts(&s.db(), &ALL);
    s.write_more_rows();
    let before = s.counts(&s.db(), &ALL);
    s.start_all();
    s.corrupt_pages(2);
    assert_ne!(s.integrity(&s.db()), "ok");
    assert_dry_run_untouched(&s, 3, "database corruption");
    let api_before = s.pid("abathur-api").unwrap();

    let (code, report, out) = s.run_json(&[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["plugins"][0]["outcome"], "rolled-back", "{out}");
    // Recovered, verified, swapped in; the corrupted file is kept.
    assert_eq!(s.integrity(&s.db()), "ok");
    let after = s.counts(&s.db(), &ALL);
    let recover = message(&report, "recover");
    let mut lost = 0;
    for ((t, n0), (_, n1)) in before.iter().zip(after.iter()) {
        assert!(n1 <= n0, "{t}: {n1} > {n0}");
        lost += n0 - n1;
        // What was recoverable is what the recovery reported.
        assert!(
            recover.contains(&format!("{t} {n1} rows")),
            "{t} {n1}: {recover}"
        );
    }
    // Two 4 KiB pages hold at most a few dozen of these rows.
    assert!(lost < 100, "lost {lost} rows: {before:?} -> {after:?}");
    // No table holds fewer rows than the backup: nothing it has was lost.
    for ((t, b), (_, n)) in at_backup.iter().zip(after.iter()) {
        assert!(n >= b, "{t}: {n} < {b} in the backup");
    }
    assert!(
        message(&report, "verify-recovered").contains("holds every row of the reference backup"),
        "{out}"
    );
    assert!(gz.exists());
    assert_eq!(s.names("table").len(), 9);
    assert!(s.names("index").len() >= 33);
    let kept: Vec<String> = std::fs::read_dir(s.root().join("var/lib/abathur"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("abathur_corrupted_") && n.ends_with(".db"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_ne!(
        s.integrity(&s.root().join("var/lib/abathur").join(&kept[0])),
        "ok"
    );
    // The API was restarted and is healthy on the recovered database.
    let api_after = s.pid("abathur-api").unwrap();
    assert_ne!(api_before, api_after);
    assert_eq!(s.health(), Some(200));
    // The recovery attempt, the swap and the restart are in the journal.
    let show = s.rewind(&["history"]);
    assert!(text(&show).contains("abathur"), "{}", text(&show));
}

#[test]
fn unrecoverable_database_falls_back_to_the_latest_verified_backup() {
    let s = Stand::new();
    let gz = s.daily_backup("abathur_2025-10-10_02-00-00.db", Duration::from_secs(3600));
    let at_backup = s.counts(&s.db(), &ALL);
    // Rows written after the backup: lost with the backup restore.
    s.conn()
        .execute("INSERT INTO state VALUES ('late', 'x', 'now')", [])
        .unwrap();
    s.start_all();
    // Destroy every page after the header: nothing is readable.
    let len = std::fs::metadata(s.db()).unwrap().len();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(s.db())
        .unwrap();
    f.seek(SeekFrom::Start(4096)).unwrap();
    f.write_all(&vec![0u8; (len - 4096) as usize]).unwrap();
    drop(f);

    let (code, report, out) = s.run_json(&[]);
    assert_eq!(code, 0, "{out}");
    assert_level_3_restored_the_backup(&s, &report, &out, &gz, &at_backup);
}

/// Level 3 gave up on the recovery and restored the given backup: every
/// row it holds is back, it is kept, and the API is healthy.
fn assert_level_3_restored_the_backup(
    s: &Stand,
    report: &Value,
    out: &str,
    gz: &Path,
    at_backup: &[(String, i64)],
) {
    assert_eq!(assessment(report)["level"], 3, "{out}");
    let swap = message(report, "swap");
    assert!(swap.contains("recovery failed"), "{out}");
    let name = gz.file_name().unwrap().to_string_lossy();
    assert!(swap.contains(name.as_ref()), "{out}");
    assert_eq!(s.integrity(&s.db()), "ok");
    assert_eq!(s.counts(&s.db(), &ALL), at_backup);
    assert!(gz.exists(), "the backup stays");
    assert_eq!(s.health(), Some(200));
}

#[test]
fn failed_memory_milestone_is_rolled_back_to_the_core_schema() {
    let s = Stand::new();
    let core_before = s.counts(&s.db(), &CORE);
    // A half-deployed memory system: two indexes missing, and an entry
    // pointing at a session that does not exist.
    s.conn()
        .execute_batch(
            "PRAGMA foreign_keys = OFF; DROP INDEX idx_memory_updated_at; DROP INDEX idx_document_hash;
             INSERT INTO memory_entries (namespace, key, value, version, session_id) VALUES ('ns', 'orphan', 'v', 1, 'no-such-session');",
        )
        .unwrap();
    let mem_before = s.counts(&s.db(), &MEMORY);
    s.start_all();
    assert_dry_run_untouched(&s, 2, "milestone 2 (memory system) failed");
    let api_before = s.pid("abathur-api").unwrap();

    let (code, report, out) = s.run_json(&[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["plugins"][0]["outcome"], "rolled-back", "{out}");
    let tables = s.names("table");
    for t in MEMORY {
        assert!(
            !tables.contains(&t.to_string()),
            "{t} still there: {tables:?}"
        );
    }
    assert!(s.names("index").iter().all(|i| !i.starts_with("idx_memory")
        && !i.starts_with("idx_sessions")
        && !i.starts_with("idx_document")));
    assert_eq!(s.counts(&s.db(), &CORE), core_before);
    assert_eq!(s.integrity(&s.db()), "ok");
    // The backup taken first holds the memory tables as they were; it is a
    // manual backup, not a daily one.
    assert_eq!(backups_in(&s.backups()), Vec::<String>::new());
    let b = manual_backups_in(&s.backups());
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(gunzip_counts(&s.backups().join(&b[0]), &MEMORY), mem_before);
    assert_eq!(gunzip_counts(&s.backups().join(&b[0]), &CORE), core_before);
    // The API was stopped and started again.
    assert_ne!(s.pid("abathur-api"), Some(api_before));
    assert_eq!(s.health(), Some(200));
}

#[test]
fn failed_vector_search_is_rolled_back() {
    let s = Stand::new();
    s.half_applied_vector_search();
    s.start_all();
    assert_dry_run_untouched(&s, 1, "milestone 3 (vector search) failed");
    let api = s.pid("abathur-api").unwrap();
    let core_before = s.counts(&s.db(), &CORE);

    let (code, report, out) = s.run_json(&[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["plugins"][0]["outcome"], "rolled-back", "{out}");
    let tables = s.names("table");
    assert!(
        !tables.iter().any(|t| t.starts_with("document_embeddings")),
        "{tables:?}"
    );
    let c = s.conn();
    let (pending, blobs): (i64, i64) = c
        .query_row(
            "SELECT sum(sync_status = 'pending'), count(embedding_blob) FROM document_index",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((pending, blobs), (200, 0));
    assert_eq!(s.counts(&s.db(), &CORE), core_before);
    assert_eq!(s.integrity(&s.db()), "ok");
    // Embedding services stopped, the API kept running, flags off.
    assert!(s.pid("abathur-document-sync").is_none());
    assert!(s.pid("ollama").is_none());
    assert_eq!(s.pid("abathur-api"), Some(api));
    let flags: Value = serde_json::from_str(
        &std::fs::read_to_string(s.root().join("app/feature_flags.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(flags["semantic_search_enabled"], false);
    assert_eq!(flags["embedding_generation"], false);
    assert_eq!(manual_backups_in(&s.backups()).len(), 1);
}

#[test]
fn lost_core_table_restores_the_latest_verified_backup() {
    let s = Stand::new();
    // An old backup (pruned by retention later), a good one, and a newer
    // one that does not verify (truncated upload).
    s.daily_backup(
        "abathur_2025-08-01_02-00-00.db",
        Duration::from_secs(40 * 86_400),
    );
    let good = s.daily_backup(
        "abathur_2025-10-09_02-00-00.db",
        Duration::from_secs(2 * 3600),
    );
    let at_backup = s.counts(&s.db(), &ALL);
    let bad = s.backups().join("abathur_2025-10-10_02-00-00.db.gz");
    std::fs::write(&bad, b"\x1f\x8b\x08\x00not really gzip").unwrap();
    set_age(&bad, Duration::from_secs(60));
    s.start_all();
    s.conn()
        .execute_batch("PRAGMA foreign_keys = OFF; DROP TABLE agents")
        .unwrap();
    assert_dry_run_untouched(&s, 4, "data integrity failure");

    let (code, report, out) = s.run_json(&[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["plugins"][0]["outcome"], "rolled-back", "{out}");
    assert!(
        message(&report, "restore").contains("abathur_2025-10-09_02-00-00.db.gz"),
        "{out}"
    );
    assert!(message(&report, "restore").contains("skipped"), "{out}");
    assert_eq!(s.counts(&s.db(), &ALL), at_backup);
    assert_eq!(s.integrity(&s.db()), "ok");
    assert!(good.exists());
    // The failed database is kept for forensics, without agents.
    let forensic: Vec<PathBuf> = std::fs::read_dir(s.backups())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("failed_production_") && n.ends_with(".db")
        })
        .collect();
    assert_eq!(forensic.len(), 1);
    let c = Connection::open(&forensic[0]).unwrap();
    let n: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'agents'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0);
    // Services: the API and the workers run again, the sync stays stopped.
    assert!(s.pid("abathur-api").is_some());
    assert!(s.pid("abathur-workers").is_some());
    assert!(s.pid("abathur-document-sync").is_none());
    assert_eq!(s.health(), Some(200));
    assert!(
        message(&report, "post-validate").contains("passed"),
        "{out}"
    );
}

#[test]
fn a_second_run_restores_the_backup_the_first_chose_not_a_newer_one() {
    let mut s = Stand::new();
    let good = s.daily_backup(
        "abathur_2025-10-09_02-00-00.db",
        Duration::from_secs(2 * 3600),
    );
    let at_backup = s.counts(&s.db(), &ALL);
    s.start_all();
    s.conn()
        .execute_batch("PRAGMA foreign_keys = OFF; DROP TABLE agents")
        .unwrap();

    // The first run restores the good backup, then its start step gives
    // the API no time to come up: the incident is not over.
    s.set("ABATHUR_HEALTH_TIMEOUT_MS", "1");
    let (code, report, out) = s.run_json(&[]);
    assert_ne!(code, 0, "{out}");
    assert!(
        message(&report, "restore").contains("abathur_2025-10-09_02-00-00.db.gz"),
        "{out}"
    );
    let start = steps(&report)
        .into_iter()
        .find(|(id, _, _)| id == "start")
        .unwrap();
    assert_eq!(start.1, "failed", "{out}");

    // The table is lost again, and meanwhile the nightly backup took the
    // broken database: a newer backup that verifies, without agents.
    s.conn()
        .execute_batch("PRAGMA foreign_keys = OFF; DROP TABLE agents")
        .unwrap();
    let newer = s.daily_backup("abathur_2025-10-10_02-00-00.db", Duration::from_secs(60));

    // The second run of the incident restores the backup the first chose.
    s.set("ABATHUR_HEALTH_TIMEOUT_MS", "30000");
    let (code, report, out) = s.run_json(&[]);
    assert_eq!(code, 0, "{out}");
    let restore = message(&report, "restore");
    assert!(
        restore.contains("abathur_2025-10-09_02-00-00.db.gz") && !restore.contains("2025-10-10"),
        "{out}"
    );
    assert_eq!(s.counts(&s.db(), &ALL), at_backup);
    assert!(good.exists() && newer.exists());
    assert_eq!(s.health(), Some(200));
}

#[test]
fn bloated_wal_is_truncated_old_backups_pruned_and_space_reclaimed() {
    let mut s = Stand::new();
    s.daily_backup(
        "abathur_2025-09-01_02-00-00.db",
        Duration::from_secs(20 * 86_400),
    );
    s.daily_backup(
        "abathur_2025-10-09_02-00-00.db",
        Duration::from_secs(3 * 86_400),
    );
    s.daily_backup("abathur_2025-10-12_02-00-00.db", Duration::from_secs(3600));
    // Free pages for VACUUM, then a WAL the checkpoints did not keep up
    // with: an open connection with autocheckpoint off.
    s.conn()
        .execute_batch("DELETE FROM audit; PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    let holder = s.conn();
    holder.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    holder
        .execute_batch(
            "UPDATE tasks SET payload = payload || 'x'; UPDATE tasks SET payload = payload || 'y';",
        )
        .unwrap();
    let wal = PathBuf::from(format!("{}-wal", s.db().display()));
    let wal_before = std::fs::metadata(&wal).unwrap().len();
    assert!(wal_before > 1 << 20, "WAL {wal_before}");
    let db_before = std::fs::metadata(s.db()).unwrap().len();
    s.start_all();
    s.set("ABATHUR_MAX_WAL_BYTES", "1048576");
    s.set("ABATHUR_MIN_FREE_BYTES", "0");
    assert_dry_run_untouched(&s, 5, "disk space exhaustion");

    let (code, report, out) = s.run_json(&[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["plugins"][0]["outcome"], "rolled-back", "{out}");
    assert_eq!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0), 0);
    assert!(std::fs::metadata(s.db()).unwrap().len() < db_before + wal_before);
    assert_eq!(
        backups_in(&s.backups()),
        [
            "abathur_2025-10-09_02-00-00.db.gz",
            "abathur_2025-10-12_02-00-00.db.gz"
        ]
    );
    assert!(
        message(&report, "report").contains("space reclaimed"),
        "{out}"
    );
    assert!(message(&report, "vacuum").contains("VACUUM"), "{out}");
    assert_eq!(s.integrity(&s.db()), "ok");
    drop(holder);

    // A low-space threshold above what the filesystem has (a simulated
    // full disk): the level runs, reports what it reclaimed, and does not
    // verify, since no amount of VACUUM makes that much room.
    s.set("ABATHUR_MAX_WAL_BYTES", "67108864");
    s.set("ABATHUR_MIN_FREE_BYTES", &i64::MAX.to_string());
    let (code, report, out) = s.run_json(&[]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(assessment(&report)["level"], 5, "{out}");
    assert!(out.contains("free space on"), "{out}");
    assert!(
        message(&report, "report").contains("space reclaimed"),
        "{out}"
    );
    let v = &report["plugins"][0]["levels"][0]["verification"];
    assert_eq!(v["healthy"], false, "{out}");
    assert_eq!(s.integrity(&s.db()), "ok");
}

/// `rewind drill --json --scenario NAME` on the example runbook: one
/// report, passed against the runbook's RTO (< 1 hour), every phase and
/// step there and ok, the reports saved under the state dir's drills/.
fn drill(s: &Stand, scenario: &str) -> Value {
    let out = s.rewind(&["drill", "--json", "--scenario", scenario]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let reports: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON reports ({e}): {}", text(&out)));
    assert_eq!(out.status.code(), Some(0), "{reports:#}\n{stderr}");
    assert_eq!(reports.as_array().unwrap().len(), 1, "{reports:#}");
    let d = reports[0].clone();
    assert_eq!(d["scenario"], scenario);
    assert_eq!(d["plugin"], "abathur");
    assert_eq!(
        (d["verdict"].as_str(), d["recovered"].as_bool()),
        (Some("pass"), Some(true)),
        "{d:#}\n{stderr}"
    );
    assert_eq!(d["error"], Value::Null, "{d:#}");
    assert_eq!(d["rto_ms"], 3_600_000, "the runbook's RTO: < 1 hour");
    let recovery = d["recovery_ms"].as_f64().unwrap();
    let margin = d["margin_ms"].as_f64().unwrap();
    assert!(recovery > 0.0 && margin > 0.0, "{d:#}");
    assert!((recovery + margin - 3_600_000.0).abs() < 1.0, "{d:#}");
    let phases: Vec<&str> = d["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["inject", "detect", "decide", "act", "verify"]);
    let steps = d["steps"].as_array().unwrap();
    assert!(!steps.is_empty(), "{d:#}");
    for st in steps {
        assert_eq!(st["status"], "ok", "{st}\n{d:#}");
    }
    let id = d["id"].as_str().unwrap();
    let dir = s.root().join("rewind-state/drills");
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{id}.json"))).unwrap())
            .unwrap();
    assert_eq!(
        (&saved["scenario"], &saved["verdict"]),
        (&d["scenario"], &d["verdict"])
    );
    let md = std::fs::read_to_string(dir.join(format!("{id}.md"))).unwrap();
    assert!(
        md.contains(&format!("# Drill `{scenario}` of abathur: PASS")),
        "{md}"
    );
    d
}

/// The levels a drill's steps ran at.
fn drill_levels(d: &Value) -> Vec<u64> {
    let mut l: Vec<u64> = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["level"].as_u64().unwrap())
        .collect();
    l.dedup();
    l
}

#[test]
fn the_example_drills_recover_within_the_1_hour_rto() {
    let s = Stand::new();
    s.start_all();
    let before = s.counts(&s.db(), &ALL);
    let all: Vec<String> = {
        let mut v: Vec<String> = ALL.iter().map(|t| t.to_string()).collect();
        v.sort();
        v
    };

    // The daily backup, then a core table lost: level 4 restores that
    // backup; the database is back as the backup has it.
    let d = drill(&s, "lost-core-table");
    assert_eq!(drill_levels(&d), [4], "{d:#}");
    assert!(
        d["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["breached"] == true),
        "{d:#}"
    );
    let b = backups_in(&s.backups());
    assert_eq!(b.len(), 1, "the drill's backup: {b:?}");
    let at_backup = gunzip_counts(&s.backups().join(&b[0]), &ALL);
    assert_eq!(at_backup, before);
    assert_eq!(s.integrity(&s.db()), "ok");
    assert_eq!(s.names("table"), all);
    assert!(s.names("index").len() >= 33);
    assert_eq!(s.counts(&s.db(), &ALL), at_backup);
    assert!(s.pid("abathur-api").is_some());
    assert!(s.pid("abathur-workers").is_some());
    assert_eq!(s.health(), Some(200));

    // Two pages overwritten: level 3 recovers the readable rows into a new
    // database and swaps it in; at most a few dozen rows are lost.
    let d = drill(&s, "corrupted-pages");
    assert_eq!(drill_levels(&d), [3], "{d:#}");
    assert_eq!(s.integrity(&s.db()), "ok");
    assert_eq!(s.names("table"), all);
    assert!(s.names("index").len() >= 33);
    let after = s.counts(&s.db(), &ALL);
    let mut lost = 0;
    for ((t, n0), (_, n1)) in at_backup.iter().zip(after.iter()) {
        assert!(n1 <= n0, "{t}: {n1} > {n0}");
        lost += n0 - n1;
    }
    assert!(lost < 100, "lost {lost} rows: {at_backup:?} -> {after:?}");
    assert_eq!(s.health(), Some(200));

    // `rewind drills` lists both, passed.
    let out = s.rewind(&["drills", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<(&str, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["scenario"].as_str().unwrap(),
                d["verdict"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [("lost-core-table", "pass"), ("corrupted-pages", "pass")]
    );
    let out = s.rewind(&["drills"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("lost-core-table") && t.contains("corrupted-pages"),
        "{t}"
    );
    assert_eq!(t.matches(" pass ").count(), 2, "{t}");
}

/// A salvage that reads an intact but emptier database is not a recovery:
/// the checklist's "No data loss detected" holds only when every table has
/// at least the rows of the newest verified backup; otherwise that backup
/// is restored. (Before: the half-empty salvage was swapped in, verified
/// "healthy", exit 0.)
#[test]
fn a_recovery_that_lost_rows_the_backup_has_restores_the_backup_instead() {
    let s = Stand::new();
    let gz = s.daily_backup("abathur_2025-10-10_02-00-00.db", Duration::from_secs(3600));
    let at_backup = s.counts(&s.db(), &ALL);
    s.start_all();
    // Overwrite a third of the pages from the middle on: the file still
    // opens and the salvage produces an intact database, missing rows.
    let pages = std::fs::metadata(s.db()).unwrap().len() / 4096;
    s.corrupt_pages(pages / 3);
    assert_ne!(s.integrity(&s.db()), "ok");

    let (code, report, out) = s.run_json(&[]);
    assert_eq!(code, 0, "{out}");
    let verified = message(&report, "verify-recovered");
    assert!(
        verified.contains("lost rows that the latest verified backup has"),
        "{verified}\n{out}"
    );
    assert_level_3_restored_the_backup(&s, &report, &out, &gz, &at_backup);
}

/// A salvage that could not read every row, with no verified backup to
/// compare it with, is the best there is, but not a recovery: the
/// checklist's "No data loss detected" fails, so verification fails and
/// stops there (the next level would restore a backup there is none of).
/// (Before: swapped in, `verify: healthy`, exit 0, rows gone.)
#[test]
fn a_salvage_that_lost_rows_with_no_backup_to_compare_does_not_verify() {
    let s = Stand::new();
    s.start_all();
    let before = s.counts(&s.db(), &ALL);
    let pages = std::fs::metadata(s.db()).unwrap().len() / 4096;
    s.corrupt_pages(pages / 3);
    assert_ne!(s.integrity(&s.db()), "ok");

    let (code, report, out) = s.run_json(&[]);
    assert_ne!(code, 0, "{out}");
    assert_eq!(report["plugins"][0]["outcome"], "failed", "{out}");
    assert_eq!(level_numbers(&report), [3], "{out}");
    let v = &report["plugins"][0]["levels"][0]["verification"];
    assert_eq!(v["healthy"], false, "{out}");
    let summary = v["summary"].as_str().unwrap();
    assert!(
        summary.contains("rows unreadable in the salvage") && summary.contains("unreadable ranges"),
        "{summary}\n{out}"
    );
    // The salvage is what the database holds now, short of rows; the
    // corrupted file is kept beside it.
    let after = s.counts(&s.db(), &ALL);
    assert!(
        before.iter().zip(&after).any(|((_, b), (_, a))| a < b),
        "{before:?} -> {after:?}"
    );
    assert_eq!(s.integrity(&s.db()), "ok");
}

/// The backups the plugin takes before changing anything are the runbook's
/// manual backups (`manual_*`), not daily ones: a later restore takes the
/// last good daily backup, not the copy of the failing database. (Before:
/// the pre-rollback copy was `abathur_<date>.db.gz`, the newest "daily",
/// and level 4 restored the half-deployed milestone it had rolled back.)
#[test]
fn a_pre_rollback_backup_is_never_the_last_good_backup() {
    let s = Stand::new();
    let daily = s.daily_backup(
        "abathur_2025-10-09_02-00-00.db",
        Duration::from_secs(2 * 3600),
    );
    let at_daily = s.counts(&s.db(), &ALL);
    // A half-deployed memory system: level 2 backs the database up, then
    // rolls it back to the core schema.
    s.conn()
        .execute_batch(
            "PRAGMA foreign_keys = OFF; DROP INDEX idx_memory_updated_at;
             INSERT INTO memory_entries (namespace, key, value, version, session_id) VALUES ('ns', 'orphan', 'v', 1, 'no-such-session');",
        )
        .unwrap();
    s.start_all();
    let (code, report, out) = s.run_json(&[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(assessment(&report)["level"], 2, "{out}");
    let manual = manual_backups_in(&s.backups());
    assert_eq!(manual.len(), 1, "{manual:?}\n{out}");
    assert!(message(&report, "backup").contains(&manual[0]), "{out}");
    assert_eq!(
        backups_in(&s.backups()),
        ["abathur_2025-10-09_02-00-00.db.gz"]
    );

    // Then a core table is lost: level 4 restores the daily backup.
    s.conn()
        .execute_batch("PRAGMA foreign_keys = OFF; DROP TABLE agents")
        .unwrap();
    let (code, report, out) = s.run_json(&[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(assessment(&report)["level"], 4, "{out}");
    let restore = message(&report, "restore");
    assert!(
        restore.contains("abathur_2025-10-09_02-00-00.db.gz") && !restore.contains("manual_"),
        "{out}"
    );
    assert_eq!(s.counts(&s.db(), &ALL), at_daily);
    assert!(daily.exists());
    assert!(s.backups().join(&manual[0]).exists());
}

/// `restore_backup` picks the backup to restore (an older daily one here,
/// though a newer one verifies), and it is pinned for the incident: a
/// later run with another `restore_backup` says what is pinned and how to
/// choose again, and changes nothing.
#[test]
fn restore_backup_picks_the_backup_and_it_stays_pinned() {
    let mut s = Stand::new();
    let older = s.daily_backup(
        "abathur_2025-10-08_02-00-00.db",
        Duration::from_secs(26 * 3600),
    );
    let at_older = s.counts(&s.db(), &ALL);
    s.write_more_rows();
    s.daily_backup(
        "abathur_2025-10-09_02-00-00.db",
        Duration::from_secs(2 * 3600),
    );
    s.edit_runbook(|t| {
        t.replace(
            "retention_days = 30\n",
            "retention_days = 30\nrestore_backup = \"abathur_2025-10-08_02-00-00.db.gz\"\n",
        )
    });
    s.start_all();
    s.conn()
        .execute_batch("PRAGMA foreign_keys = OFF; DROP TABLE agents")
        .unwrap();
    // The first run restores it, but the API gets no time to come up.
    s.set("ABATHUR_HEALTH_TIMEOUT_MS", "1");
    let (code, report, out) = s.run_json(&[]);
    assert_ne!(code, 0, "{out}");
    let restore = message(&report, "restore");
    assert!(
        restore.contains("abathur_2025-10-08_02-00-00.db.gz") && restore.contains("restore_backup"),
        "{out}"
    );
    assert_eq!(s.counts(&s.db(), &ALL), at_older);
    assert!(older.exists());

    // Another restore_backup while the first is pinned: refused, with what
    // to do.
    s.set("ABATHUR_HEALTH_TIMEOUT_MS", "30000");
    s.conn()
        .execute_batch("PRAGMA foreign_keys = OFF; DROP TABLE agents")
        .unwrap();
    let text = std::fs::read_to_string(s.runbook.as_ref().unwrap()).unwrap();
    std::fs::write(
        s.runbook.as_ref().unwrap(),
        text.replace("2025-10-08_02-00-00", "2025-10-09_02-00-00"),
    )
    .unwrap();
    let (code, report, out) = s.run_json(&[]);
    assert_ne!(code, 0, "{out}");
    let restore = message(&report, "restore");
    assert!(
        restore.contains("pinned") && restore.contains("--redecide"),
        "{out}"
    );
}

/// The failed database's WAL is not dropped silently: when the database
/// reads intact, the forensic copy gets the WAL checkpointed into it, and
/// the outcome says how much it held (bytes, frames).
#[test]
fn the_failed_databases_wal_is_checkpointed_into_the_forensic_copy_and_reported() {
    let s = Stand::new();
    s.daily_backup(
        "abathur_2025-10-09_02-00-00.db",
        Duration::from_secs(2 * 3600),
    );
    s.start_all();
    // Written after the backup and still only in the WAL: a connection
    // with autocheckpoint off, open while rewind runs.
    let holder = s.conn();
    holder.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    holder
        .execute_batch(
            "PRAGMA foreign_keys = OFF; DROP TABLE agents;
             INSERT INTO state VALUES ('after-backup', 'in the WAL', 'now');",
        )
        .unwrap();
    let wal = PathBuf::from(format!("{}-wal", s.db().display()));
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);

    let (code, report, out) = s.run_json(&[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(assessment(&report)["level"], 4, "{out}");
    let forensics = message(&report, "forensics");
    assert!(
        forensics.contains("frames") && forensics.contains("checkpointed into it"),
        "{out}"
    );
    // The forensic copy holds the row without its WAL.
    let copy = std::fs::read_dir(s.backups())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("failed_production_") && n.ends_with(".db")
        })
        .unwrap();
    let only = tempfile::tempdir().unwrap();
    let alone = only.path().join("copy.db");
    std::fs::copy(&copy, &alone).unwrap();
    let n: i64 = Connection::open(&alone)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM state WHERE key = 'after-backup'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
    drop(holder);
}

/// `process_pattern = "abathur"` (the runbook's `ps aux | grep abathur`,
/// no `{service}`): the stop checks the stopped services' own processes;
/// another process whose command line contains "abathur" is left alone,
/// named, and does not fail the step. (Before: level 4's first step
/// failed on it.) The services' own processes are the pids in their pid
/// files, read before they are stopped.
#[test]
fn an_unrelated_process_named_abathur_does_not_fail_the_stop() {
    let mut s = Stand::new();
    s.daily_backup(
        "abathur_2025-10-09_02-00-00.db",
        Duration::from_secs(2 * 3600),
    );
    // The services' pid files (systemd's PIDFile=; the stand-in's svc
    // writes them): other stand-ins' services run on this machine too.
    s.edit_runbook(|t| {
        let start = t.find("process_pattern = ").unwrap();
        let end = start + t[start..].find('\n').unwrap();
        format!(
            "{}process_pattern = \"abathur\"\npid_file = \"${{ABATHUR_STANDIN:-/tmp/abathur-standin}}/run/{{service}}.pid\"{}",
            &t[..start],
            &t[end..]
        )
        .replace(
            "sqlite = [\n",
            "read = [\"${ABATHUR_STANDIN:-/tmp/abathur-standin}/run\"]\nsqlite = [\n",
        )
    });
    s.start_all();
    let other = Proc::spawn(Command::new("python3").args([
        "-c",
        "import time\nwhile True: time.sleep(1)",
        "tail-abathur-logs",
    ]));
    assert!(wait_until(PATIENCE, || util::pids_with_arg(
        "tail-abathur-logs"
    )
    .contains(&other.pid())));
    s.conn()
        .execute_batch("PRAGMA foreign_keys = OFF; DROP TABLE agents")
        .unwrap();

    let (code, report, out) = s.run_json(&[]);
    assert_eq!(code, 0, "{out}");
    let stop = message(&report, "stop");
    assert!(stop.contains("left alone"), "{out}");
    assert!(stop.contains(&other.pid().to_string()), "{out}");
    assert!(alive(other.pid()));
    assert!(s.pid("abathur-api").is_some() && s.health() == Some(200));
}

/// A smaller installation (20 indexes, not the runbook's 33): without
/// `min_indexes` the restore is checked against the backup's own schema
/// and the API comes back; with `min_indexes = 33` the validation fails and
/// says which key, its value, the backup's count and what to set. (Before:
/// the default 33 failed the validation and left the API stopped.)
#[test]
fn a_smaller_schema_is_validated_against_its_backup_not_33_indexes() {
    let mut s = Stand::new();
    s.conn()
        .execute_batch(
            "DROP INDEX idx_tasks_created; DROP INDEX idx_tasks_updated; DROP INDEX idx_agents_name;
             DROP INDEX idx_agents_specialty; DROP INDEX idx_audit_action; DROP INDEX idx_audit_at;
             DROP INDEX idx_checkpoints_at; DROP INDEX idx_state_updated; DROP INDEX idx_metrics_at;
             DROP INDEX idx_metrics_name_at; DROP INDEX idx_agents_created; DROP INDEX idx_tasks_priority;
             DROP INDEX idx_metrics_name;",
        )
        .unwrap();
    let indexes = s.names("index").len();
    assert!(indexes < 33, "{indexes}");
    s.daily_backup(
        "abathur_2025-10-09_02-00-00.db",
        Duration::from_secs(2 * 3600),
    );
    let at_backup = s.counts(&s.db(), &ALL);
    let no_minimums = |t: String| {
        t.replace("min_tables = 9\n", "")
            .replace("min_indexes = 33\n", "")
    };
    s.edit_runbook(no_minimums);
    s.start_all();
    s.conn()
        .execute_batch("PRAGMA foreign_keys = OFF; DROP TABLE agents")
        .unwrap();
    let (code, report, out) = s.run_json(&[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["plugins"][0]["outcome"], "rolled-back", "{out}");
    assert_eq!(s.counts(&s.db(), &ALL), at_backup);
    assert_eq!(s.names("index").len(), indexes);
    assert_eq!(s.health(), Some(200));

    // The runbook's 33, set explicitly on this installation: a clear failure.
    s.edit_runbook(|t| t);
    s.conn()
        .execute_batch("PRAGMA foreign_keys = OFF; DROP TABLE agents")
        .unwrap();
    let (code, report, out) = s.run_json(&[]);
    assert_ne!(code, 0, "{out}");
    let validate = steps(&report)
        .into_iter()
        .find(|(id, _, _)| id == "validate")
        .unwrap();
    assert_eq!(validate.1, "failed", "{out}");
    assert!(
        out.contains("min_indexes = 33")
            && out.contains(&format!("has {indexes}"))
            && out.contains("set min_indexes"),
        "{out}"
    );
}

/// A level 4 restore that does not verify stops there: the next level
/// prunes backups, which could lose the last good one. Here the
/// post-rollback validation (a smoke test gone wrong) drops a core table
/// after the restore's own checks passed.
#[test]
fn a_restore_that_does_not_verify_never_goes_on_to_prune_backups() {
    let mut s = Stand::new();
    let old = s.daily_backup(
        "abathur_2025-08-01_02-00-00.db",
        Duration::from_secs(40 * 86_400),
    );
    let good = s.daily_backup(
        "abathur_2025-10-09_02-00-00.db",
        Duration::from_secs(2 * 3600),
    );
    s.edit_runbook(|t| {
        let start = t.find("validation_commands = [").unwrap();
        let end = start + t[start..].find("\n]\n").unwrap() + 3;
        format!(
            "{}validation_commands = [[\"sqlite3\", \"${{ABATHUR_STANDIN:-/tmp/abathur-standin}}/var/lib/abathur/abathur.db\", \"PRAGMA foreign_keys = OFF; DROP TABLE metrics;\"]]\n{}",
            &t[..start],
            &t[end..]
        )
    });
    s.start_all();
    s.conn()
        .execute_batch("PRAGMA foreign_keys = OFF; DROP TABLE agents")
        .unwrap();
    let (code, report, out) = s.run_json(&[]);
    assert_ne!(code, 0, "{out}");
    assert_eq!(level_numbers(&report), [4], "{out}");
    let v = &report["plugins"][0]["levels"][0]["verification"];
    assert_eq!(v["healthy"], false, "{out}");
    assert!(out.contains("prunes backups"), "{out}");
    assert!(old.exists() && good.exists());
}

/// A `restore_backup` that does not verify is neither compared with nor
/// fallen back on: level 3 stops before it swaps anything, saying which
/// backup and what to set, and the corrupted database stays in place.
#[test]
fn a_restore_backup_that_does_not_verify_stops_level_3_before_the_swap() {
    let mut s = Stand::new();
    s.daily_backup("abathur_2025-10-10_02-00-00.db", Duration::from_secs(3600));
    s.edit_runbook(|t| {
        t.replace(
            "retention_days = 30\n",
            "retention_days = 30\nrestore_backup = \"abathur_2025-10-11_02-00-00.db.gz\"\n",
        )
    });
    s.start_all();
    s.corrupt_pages(2);
    let corrupted = std::fs::read(s.db()).unwrap();

    let (code, report, out) = s.run_json(&[]);
    assert_ne!(code, 0, "{out}");
    let (_, status, msg) = steps(&report)
        .into_iter()
        .find(|(id, _, _)| id == "verify-recovered")
        .unwrap();
    assert_eq!(status, "failed", "{out}");
    assert!(
        msg.contains("abathur_2025-10-11_02-00-00.db.gz") && msg.contains("set restore_backup"),
        "{out}"
    );
    assert_eq!(std::fs::read(s.db()).unwrap(), corrupted);
}
