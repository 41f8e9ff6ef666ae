//! End-to-end tests of the queue-app plugin against a local stand-in.
//!
//! Each test builds the app in its own temporary directory: a git
//! repository (`app.json`, the queue code under `backend/src/queues/`, a
//! down migration) with release 1.0.0 committed, its own Redis
//! (tests/support/redis.rs) and PostgreSQL (tests/support/postgres.rs)
//! servers on free loopback ports, and `examples/queue-app/standin/app.py`
//! (the API with the runbook's endpoints and Bull-like queues in memory,
//! started through `standin/ctl.py`, which stands in for npm and pm2). It
//! breaks it the way the runbook's triggers describe and runs the real
//! `rewind` binary on `examples/queue-app/rewind.toml` pointed at it.

#[path = "../support/cli.rs"]
mod cli;
mod escalation;
#[allow(dead_code)]
#[path = "../e2e/util.rs"]
mod util;

#[path = "../support/postgres.rs"]
mod postgres;
#[path = "../support/redis.rs"]
mod redis;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

use util::*;

const QUEUES: [&str; 2] = ["ai-analysis", "document-processing"];

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/queue-app")
}

fn ctl_path() -> PathBuf {
    example_dir().join("standin/ctl.py")
}

fn app_json(version: &str, deps: &str, extra: Value) -> String {
    let mut v = json!({
        "version": version,
        "deps": deps,
        "healthy": true,
        "error_percent": 0,
        "delay_ms": 0,
        "features": {"export": "ok", "search": "ok"},
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    serde_json::to_string_pretty(&v).unwrap()
}

fn worker_json(version: &str, fail_percent: u32) -> String {
    serde_json::to_string_pretty(&json!({"version": version, "fail_percent": fail_percent}))
        .unwrap()
}

const SCHEMA_V1: &str = "
CREATE TABLE projects (id serial PRIMARY KEY, name text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE scenes (id serial PRIMARY KEY, project_id integer NOT NULL, title text NOT NULL);
INSERT INTO projects (name) SELECT 'project ' || g FROM generate_series(1, 12) g;
INSERT INTO scenes (project_id, title) SELECT 1 + (g % 12), 'scene ' || g FROM generate_series(1, 40) g;
";

const MIGRATION_UP_0002: &str = "
ALTER TABLE projects ADD COLUMN new_column text;
CREATE INDEX idx_new_index ON projects (new_column);
UPDATE projects SET new_column = 'x' || id;
";

const MIGRATION_DOWN_0002: &str = "-- Reverse the changes from migration 0002
DROP INDEX IF EXISTS idx_new_index;
ALTER TABLE projects DROP COLUMN IF EXISTS new_column;
";

/// The stand-in: app repo, servers, app process; everything it started is
/// stopped by pid when dropped.
struct Stand {
    base: tempfile::TempDir,
    port: u16,
    redis: redis::RedisServer,
    pg: postgres::PgServer,
    env: Vec<(String, String)>,
    v1: String,
}

impl Stand {
    /// Release 1.0.0, healthy; queues each with `active` running jobs and
    /// a backlog of `waiting`, a worker tick of `tick_ms`.
    fn new(active: u32, waiting: u32, tick_ms: u32) -> Self {
        Self::with_counts(active, waiting, tick_ms, json!({}))
    }

    /// The same, each queue's Bull-like counters starting from `counts`
    /// (`completed`, `failed`: Bull keeps them in Redis across restarts,
    /// so every start of the stand-in begins from them).
    fn with_counts(active: u32, waiting: u32, tick_ms: u32, counts: Value) -> Self {
        let base = tempfile::Builder::new()
            .prefix("rewind-queue-app-")
            .tempdir()
            .unwrap();
        let redis = redis::RedisServer::start();
        let pg = postgres::PgServer::start();
        pg.create_db("app");
        pg.psql_in("app", SCHEMA_V1);
        let mut s = Self {
            port: free_port(),
            base,
            redis,
            pg,
            env: Vec::new(),
            v1: String::new(),
        };
        for d in ["app/run", "logs", "backups"] {
            std::fs::create_dir_all(s.base.path().join(d)).unwrap();
        }
        s.git(&["init", "-q", "-b", "main"]);
        s.write(".gitignore", "run/\ndist/\nnode_modules/\n");
        s.write("app.json", &app_json("1.0.0", "1", json!({})));
        s.write("backend/src/queues/worker.json", &worker_json("1.0.0", 0));
        s.write("backend/src/server.txt", "server 1.0.0\n");
        s.write("migrations/down_0002_rollback.sql", MIGRATION_DOWN_0002);
        s.commit("release 1.0.0");
        s.git(&["tag", "v1.0.0"]);
        s.v1 = s.head();
        let initial: serde_json::Map<String, Value> = QUEUES
            .iter()
            .map(|q| {
                let mut c = json!({"active": active, "waiting": waiting});
                for (k, v) in counts.as_object().unwrap() {
                    c[k] = v.clone();
                }
                (q.to_string(), c)
            })
            .collect();
        let settings = json!({
            "port": s.port,
            "queues": QUEUES,
            "initial": initial,
            "tick_ms": tick_ms,
            "app_log": s.base.path().join("logs/app.log"),
            "calls_log": s.base.path().join("logs/calls.log"),
            "redis_port": s.redis.port,
        });
        std::fs::write(
            s.app().join("run/standin.json"),
            serde_json::to_string_pretty(&settings).unwrap(),
        )
        .unwrap();
        for c in ["install", "build", "start"] {
            s.ctl(c);
        }
        assert!(wait_until(PATIENCE, || s.status("/health") == Some(200)));
        s
    }

    fn base(&self) -> &Path {
        self.base.path()
    }
    fn app(&self) -> PathBuf {
        self.base().join("app")
    }
    fn write(&self, rel: &str, text: &str) {
        let p = self.app().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.app().join(rel)).unwrap_or_default()
    }
    fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(self.app())
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
    fn commit(&self, msg: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", msg]);
    }
    /// Release 1.2.0, which fails one request in five, then 1.3.0, which
    /// takes the API down (the stats answer 500); the drain gives up after
    /// 5 s. Returns 1.2.0's commit: what the code rollback goes back to.
    fn deploy_buggy_then_down(&mut self) -> String {
        self.deploy(
            &[(
                "app.json",
                &app_json("1.2.0", "1", json!({"error_percent": 20})),
            )],
            "release 1.2.0",
        );
        let v12 = self.head();
        self.deploy(
            &[
                (
                    "app.json",
                    &app_json("1.3.0", "2", json!({"healthy": false, "down": true})),
                ),
                ("backend/src/server.txt", "server 1.3.0\n"),
            ],
            "release 1.3.0",
        );
        assert_eq!(self.status("/api/queue/stats"), Some(500));
        self.set("QUEUE_APP_DRAIN_TIMEOUT_MS", "5000");
        v12
    }

    fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }
    fn ctl(&self, cmd: &str) {
        let out = Command::new(ctl_path())
            .args(["--dir"])
            .arg(self.app())
            .arg(cmd)
            .output()
            .unwrap();
        assert!(out.status.success(), "ctl {cmd}: {}", text(&out));
    }
    /// The team's deployment: commit, install, build, restart.
    fn deploy(&self, files: &[(&str, &str)], msg: &str) {
        for (rel, t) in files {
            self.write(rel, t);
        }
        self.commit(msg);
        for c in ["install", "build", "restart-all"] {
            self.ctl(c);
        }
    }
    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.app().join("run/app.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let r = reqwest::blocking::Client::new()
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .timeout(PATIENCE)
            .send()
            .ok()?;
        Some((r.status().as_u16(), r.text().unwrap_or_default()))
    }
    fn status(&self, path: &str) -> Option<u16> {
        self.get(path).map(|(s, _)| s)
    }
    fn stats(&self) -> Value {
        serde_json::from_str(&self.get("/api/queue/stats").unwrap().1).unwrap()
    }
    /// Every request the app got: (time, method, path, total active jobs).
    fn calls(&self) -> Vec<Value> {
        std::fs::read_to_string(self.base().join("logs/calls.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
    fn posts_since(&self, n: usize) -> Vec<String> {
        self.calls()[n..]
            .iter()
            .filter(|c| c["m"] == "POST")
            .map(|c| c["p"].as_str().unwrap().to_string())
            .collect()
    }
    /// ctl.py invocations: (time, command).
    fn ctl_log(&self) -> Vec<(f64, String)> {
        std::fs::read_to_string(self.app().join("run/ctl.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let (t, c) = l.split_once(' ').unwrap();
                (t.parse().unwrap(), c.to_string())
            })
            .collect()
    }
    fn set(&mut self, k: &str, v: &str) {
        self.env.push((k.to_string(), v.to_string()));
    }
    /// The CLI on examples/queue-app/rewind.toml, pointed at this stand-in.
    fn rewind(&self, args: &[&str]) -> Output {
        self.command(&cli::approving(args), &example_dir().join("rewind.toml"))
            .output()
            .unwrap()
    }
    /// The CLI with exactly `args` (no approval added) on `runbook`,
    /// pointed at this stand-in.
    fn command(&self, args: &[String], runbook: &Path) -> Command {
        let mut cmd = Command::new(REWIND);
        cmd.args(args)
            .arg(runbook)
            .env("REWIND_CACHE_DIR", cache_dir())
            .env("REWIND_LOCK_DIR", Path::new(&self.base()).join("locks"))
            .env_remove("REWIND_LOG")
            .env("QUEUE_APP_STANDIN", self.base())
            .env("QUEUE_APP_PORT", self.port.to_string())
            .env("QUEUE_APP_REDIS_PORT", self.redis.port.to_string())
            .env("QUEUE_APP_PG_PORT", self.pg.port.to_string())
            .env("QUEUE_APP_PG_BIN", &self.pg.bin_dir)
            .env("QUEUE_APP_POLL_MS", "100")
            .env("QUEUE_APP_MONITOR_MS", "500")
            .env("QUEUE_APP_HEALTH_TIMEOUT_MS", "10000")
            // No test here is about latency: a loaded machine must not make
            // the healthy stand-in "slow" (P95 over the 300 ms baseline)
            // or time a probe out (2 s), which would change the decision.
            .env("QUEUE_APP_BASELINE_MS", "10000")
            .env("QUEUE_APP_PROBE_TIMEOUT_MS", "30000")
            .env("QUEUE_APP_DRAIN_TIMEOUT_MS", "20000");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }
    fn run_json(&self, args: &[&str]) -> (i32, Value, String) {
        let mut all = vec!["run", "--json"];
        all.extend_from_slice(args);
        let out = self.rewind(&all);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "no JSON report ({e}); stdout: {}\nstderr: {stderr}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        (out.status.code().unwrap_or(-1), report, stderr)
    }
    /// The runbook's pre-deploy backup of the app database, taken now with
    /// pg_dump into `backups/`.
    fn pre_deploy_dump(&self) -> PathBuf {
        let dump = self.base().join("backups/backup_pre_deploy_20251107.sql");
        let out = Command::new(self.pg.bin("pg_dump"))
            .arg(self.pg.url("app"))
            .arg("-f")
            .arg(&dump)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        dump
    }
    fn files(&self, dir: &str) -> Vec<(PathBuf, Vec<u8>)> {
        tree(&self.base().join(dir))
    }
    fn sql(&self, q: &str) -> String {
        self.pg.psql_in("app", q)
    }

    /// `rewind plan` and `rewind run --dry-run`: both print findings and
    /// touch nothing (files, pid, HEAD, no POST, no command run).
    fn plan_and_dry_run_touch_nothing(&self) -> (String, String) {
        self.plan_and_dry_run_with(&[])
    }

    /// The same with extra arguments (`--level N`: a dry run cannot run
    /// redis-cli or psql, so it cannot see a cache or data problem itself).
    fn plan_and_dry_run_with(&self, extra: &[&str]) -> (String, String) {
        let pid = self.pid().unwrap();
        let head = self.head();
        let (app, backups) = (self.files("app"), self.files("backups"));
        let n = self.calls().len();
        let keys = self.redis.cli(&["DBSIZE"]);
        let out = self.rewind(&[&["plan"], extra].concat());
        let plan = text(&out);
        assert!(out.status.success(), "{plan}");
        let out = self.rewind(&[&["run", "--dry-run"], extra].concat());
        let t = text(&out);
        assert!(out.status.success(), "{t}");
        assert!(t.contains("would "), "{t}");
        assert_eq!(self.pid(), Some(pid));
        assert!(alive(pid), "the dry run stopped nothing");
        assert_eq!(self.head(), head, "the dry run checked nothing out");
        assert!(
            self.files("app") == app,
            "plan and dry run changed no file of the app"
        );
        assert!(self.files("backups") == backups, "no backup written");
        assert_eq!(self.posts_since(n), Vec::<String>::new(), "no POST sent");
        assert_eq!(self.redis.cli(&["DBSIZE"]), keys, "no key deleted");
        (plan, t)
    }
}

impl Drop for Stand {
    fn drop(&mut self) {
        // The app by its pid file, and anything whose command line holds
        // this stand-in's unique temporary path. Only pids, never a name.
        let base = self.base().to_string_lossy().into_owned();
        let mut pids: Vec<u32> = self.pid().into_iter().collect();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                if let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>()
                    && let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
                    && String::from_utf8_lossy(&cmd).contains(&base)
                    && pid != std::process::id()
                {
                    pids.push(pid);
                }
            }
        }
        for pid in pids {
            kill_pid(pid);
        }
    }
}

/// The verification of the last level run.
fn verification(report: &Value) -> Value {
    plugin(report)["levels"]
        .as_array()
        .unwrap()
        .last()
        .map_or(Value::Null, |l| l["verification"].clone())
}

fn message<'a>(steps: &'a [(String, String, String)], id: &str) -> &'a str {
    &steps.iter().find(|(i, _, _)| i == id).unwrap().2
}

fn all_ok(steps: &[(String, String, String)], report: &Value) {
    for (i, s, m) in steps {
        assert_eq!(s, "ok", "step {i}: {m}\n{report:#}");
    }
}

/// The queues were resumed one at a time: the second resume comes after
/// at least `min_checks` health checks that followed the first, and no
/// queue was resumed all at once.
fn assert_resumed_one_at_a_time(s: &Stand, from: usize, min_checks: usize) {
    let calls = &s.calls()[from..];
    let resumes: Vec<(usize, &str)> = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| c["m"] == "POST" && c["p"].as_str().unwrap().ends_with("/resume"))
        .map(|(i, c)| (i, c["p"].as_str().unwrap()))
        .collect();
    let order: Vec<&str> = resumes.iter().map(|(_, p)| *p).collect();
    assert_eq!(
        order,
        QUEUES.map(|q| format!("/api/queue/{q}/resume")),
        "resumed one by one, in order"
    );
    assert!(
        !calls.iter().any(|c| c["p"] == "/api/queue/resume-all"),
        "never resume-all"
    );
    let between: Vec<&Value> = calls[resumes[0].0..resumes[1].0]
        .iter()
        .filter(|c| c["p"] == "/health" && c["s"] == 200)
        .collect();
    assert!(
        between.len() >= min_checks,
        "{} healthy /health checks between the resumes",
        between.len()
    );
    let (t0, t1) = (
        calls[resumes[0].0]["t"].as_f64().unwrap(),
        calls[resumes[1].0]["t"].as_f64().unwrap(),
    );
    assert!(
        t1 - t0 >= 0.4,
        "monitored {:.2} s between the resumes",
        t1 - t0
    );
    // The first queue was running while the second was still paused.
    let mid = &calls[resumes[1].0 - 1];
    assert_eq!(mid["paused"], json!([QUEUES[1]]), "{mid}");
    for q in QUEUES {
        assert_eq!(s.stats()["queues"][q]["paused"], false, "{q} resumed");
    }
}

#[test]
fn the_example_runbook_checks() {
    let out = Command::new(REWIND)
        .arg("check")
        .arg(example_dir().join("rewind.toml"))
        .env("REWIND_CACHE_DIR", cache_dir())
        .env("QUEUE_APP_PG_BIN", postgres::bin_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("grants cover everything"),
        "{}",
        text(&out)
    );
}

#[test]
fn an_api_down_deploy_is_rolled_back_to_the_stable_commit_draining_and_resuming_queues() {
    // Six jobs stay active per queue until the queues are paused, then one
    // finishes every 150 ms: the drain takes real time.
    let s = Stand::new(6, 10, 150);
    let out = s.rewind(&["run"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("healthy"), "{}", text(&out));

    // The bad deploy: new deps, and the API answers 500.
    s.deploy(
        &[
            (
                "app.json",
                &app_json("1.1.0", "2", json!({"healthy": false})),
            ),
            ("backend/src/server.txt", "server 1.1.0\n"),
        ],
        "release 1.1.0",
    );
    let broken_head = s.head();
    let broken_pid = s.pid().unwrap();
    assert_eq!(s.status("/health"), Some(500));

    let (plan, dry) = s.plan_and_dry_run_touch_nothing();
    assert!(plan.contains("P0 API completely down"), "{plan}");
    assert!(
        plan.contains("BREACHED") && plan.contains("observed 500") && plan.contains("200-399"),
        "{plan}"
    );
    assert!(plan.contains("git checkout"), "{plan}");
    assert!(
        dry.contains("would POST") && dry.contains("would run"),
        "{dry}"
    );

    let n = s.calls().len();
    let (code, report, stderr) = s.run_json(&[]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(level_numbers(&report), [4]);
    let st = steps(&report, 4);
    all_ok(&st, &report);
    assert_eq!(
        ids(&st),
        [
            "identify",
            "pause-queues",
            "drain",
            "checkout",
            "install",
            "build",
            "restart",
            "health",
            "smoke",
            "resume-ai-analysis",
            "resume-document-processing"
        ]
    );
    // Back on 1.0.0: HEAD, the version served, a new process.
    assert_eq!(s.head(), s.v1);
    assert_ne!(s.head(), broken_head);
    assert_eq!(s.get("/api/version").unwrap().1, "1.0.0");
    assert_eq!(s.status("/health"), Some(200));
    assert!(!alive(broken_pid), "the broken release's process is gone");
    assert!(s.pid().is_some_and(alive));

    // The drain was real: paused first, active jobs went down to 0 before
    // anything was checked out, installed or restarted.
    let drain = message(&st, "drain");
    let first: u64 = drain
        .strip_prefix("drained: active jobs ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{drain}"));
    assert!(first >= 8 && drain.contains(" -> 0 in "), "{drain}");
    let calls = s.calls()[n..].to_vec();
    let pause_t = calls
        .iter()
        .find(|c| c["p"] == "/api/queue/pause-all")
        .unwrap()["t"]
        .as_f64()
        .unwrap();
    let drained_t = calls
        .iter()
        .find(|c| {
            c["p"] == "/api/queue/stats" && c["active"] == 0 && c["t"].as_f64().unwrap() > pause_t
        })
        .unwrap()["t"]
        .as_f64()
        .unwrap();
    assert!(
        drained_t - pause_t >= 0.5,
        "drained in {:.2} s",
        drained_t - pause_t
    );
    // The drain waits between polls (QUEUE_APP_POLL_MS = 100): one stats
    // request per poll interval, whatever the machine's speed (a slower
    // one polls less often, never more). The tester's drain sent 53,099
    // in 182 s; one that probed the stats again to wait sent two a poll.
    let polls = calls
        .iter()
        .filter(|c| {
            let t = c["t"].as_f64().unwrap();
            c["p"] == "/api/queue/stats" && t > pause_t && t <= drained_t
        })
        .count() as f64;
    let bound = (drained_t - pause_t) / 0.1 + 2.0;
    assert!(
        polls <= bound,
        "{polls} stats requests in {:.2} s",
        drained_t - pause_t
    );
    let ctl: Vec<(f64, String)> = s
        .ctl_log()
        .into_iter()
        .filter(|(t, _)| *t > pause_t)
        .collect();
    assert_eq!(
        ctl.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>(),
        ["install", "build", "restart-all", "smoke"],
        "install, build, restart, smoke in order"
    );
    assert!(ctl[0].0 > drained_t, "nothing ran before the drain ended");
    assert_resumed_one_at_a_time(&s, n, 3);

    let v = verification(&report);
    assert_eq!(v["healthy"], true, "{v:#}");
}

#[test]
fn a_second_run_of_the_incident_keeps_the_pinned_stable_commit_after_the_checkout() {
    let s = Stand::new(1, 5, 100);
    // A good 1.0.1 on top of 1.0.0, then the broken 1.1.0: HEAD~1 (the
    // example's stable_ref) is 1.0.1 when the incident starts.
    s.deploy(
        &[
            ("app.json", &app_json("1.0.1", "1", json!({}))),
            ("backend/src/server.txt", "server 1.0.1\n"),
        ],
        "release 1.0.1",
    );
    let stable = s.head();
    s.deploy(
        &[(
            "app.json",
            &app_json("1.1.0", "2", json!({"healthy": false})),
        )],
        "release 1.1.0",
    );
    let broken = s.head();
    assert_eq!(s.status("/health"), Some(500));

    // The first run checks out 1.0.1 and stops at the install, which
    // cannot write node_modules/.installed (a directory in its way).
    let installed = s.app().join("node_modules/.installed");
    std::fs::remove_file(&installed).unwrap();
    std::fs::create_dir(&installed).unwrap();
    let (code, report, stderr) = s.run_json(&[]);
    assert_ne!(code, 0, "{report:#}\n{stderr}");
    let st = steps(&report, 4);
    let status = |st: &[(String, String, String)], id: &str| {
        st.iter().find(|(i, _, _)| i == id).unwrap().1.clone()
    };
    assert_eq!(status(&st, "checkout"), "ok", "{report:#}");
    assert_eq!(status(&st, "install"), "failed", "{report:#}");
    assert_eq!(s.head(), stable, "the first run checked out HEAD~1");
    assert_eq!(s.status("/health"), Some(500), "1.1.0 still serves");

    // Someone clears the way and runs rewind again: the same incident
    // (the service was never verified back). HEAD~1 of the HEAD now is
    // 1.0.0; the pinned 1.0.1 is what it must keep.
    std::fs::remove_dir(&installed).unwrap();
    let (code, report, stderr) = s.run_json(&[]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(level_numbers(&report), [4]);
    let st = steps(&report, 4);
    all_ok(&st, &report);
    assert_eq!(s.head(), stable, "not one more commit back");
    assert_ne!(s.head(), s.v1);
    let identify = message(&st, "identify");
    assert!(
        identify.contains("stable commit already") && identify.contains(&broken[..12]),
        "{identify}"
    );
    assert!(
        message(&st, "checkout").contains("nothing to check out"),
        "{}",
        message(&st, "checkout")
    );
    assert_eq!(s.get("/api/version").unwrap().1, "1.0.1");
    assert_eq!(s.status("/health"), Some(200));
    assert_eq!(verification(&report)["healthy"], true, "{report:#}");
}

#[test]
fn a_bloated_cache_is_cleared_by_pattern_with_scan_not_keys() {
    let mut s = Stand::new(1, 5, 100);
    // 300 entries of 10 KB under gemini:* (3 MB), and 50 other keys.
    let mut cmds = String::new();
    let big = "x".repeat(10_000);
    for i in 0..300 {
        cmds.push_str(&format!("SET gemini:analysis:{i} {big}\n"));
    }
    for i in 0..50 {
        cmds.push_str(&format!("SET session:{i} keep\n"));
    }
    s.redis.pipe(&cmds);
    s.set("QUEUE_APP_CACHE_MAX_MB", "2.5");
    // A dry run runs no redis-cli: the cache issue shows in a real run.
    let (plan, dry) = s.plan_and_dry_run_with(&["--level", "2"]);
    assert!(plan.contains("Redis 127.0.0.1"), "{plan}");
    assert!(plan.contains("--scan --pattern"), "{plan}");
    assert!(
        dry.contains("would run redis-cli") && dry.contains("--scan"),
        "{dry}"
    );
    s.redis.cli(&["CONFIG", "RESETSTAT"]);

    let (code, report, stderr) = s.run_json(&[]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    let a = &plugin(&report)["assessment"];
    assert_eq!(a["scenario"], "Cache causing issues", "{a:#}");
    let f = a["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"].as_str().unwrap().starts_with("Redis"))
        .unwrap();
    assert_eq!(f["breached"], true, "{f}");
    assert!(
        f["threshold"].as_str().unwrap().contains("<= 2.5 MB"),
        "{f}"
    );
    assert_eq!(level_numbers(&report), [2]);
    let st = steps(&report, 2);
    all_ok(&st, &report);
    assert_eq!(ids(&st), ["flush", "restart-redis", "ping", "warm"]);
    assert!(
        message(&st, "flush")
            .contains("gemini:*: 300 keys found with SCAN, 300 deleted in 3 DEL batches"),
        "{st:?}"
    );
    assert!(
        message(&st, "restart-redis").starts_with("not needed"),
        "{st:?}"
    );
    assert_eq!(s.redis.cli(&["--scan", "--pattern", "gemini:*"]), "");
    assert_eq!(
        s.redis
            .cli(&["--scan", "--pattern", "session:*"])
            .lines()
            .count(),
        50,
        "other keys kept"
    );
    assert_eq!(
        s.redis.cli(&["GET", "cache:warm:projects"]),
        "1.0.0",
        "cache warmed"
    );
    let stats = s.redis.cli(&["INFO", "commandstats"]);
    assert!(stats.contains("cmdstat_scan:"), "{stats}");
    assert!(
        !stats.contains("cmdstat_keys:"),
        "KEYS was never used: {stats}"
    );
    assert_eq!(verification(&report)["healthy"], true);
}

#[test]
fn failing_queue_workers_get_only_the_queue_code_rolled_back() {
    // One job finishes per queue every 50 ms.
    let s = Stand::new(2, 10, 50);
    s.deploy(
        &[
            ("app.json", &app_json("1.1.0", "1", json!({}))),
            ("backend/src/queues/worker.json", &worker_json("1.1.0", 50)),
        ],
        "release 1.1.0: new queue code",
    );
    let head = s.head();
    assert!(wait_until(PATIENCE, || {
        let st = s.stats();
        QUEUES
            .iter()
            .all(|q| st["queues"][q]["failed"].as_u64().unwrap() >= 5)
    }));
    let (plan, _) = s.plan_and_dry_run_touch_nothing();
    assert!(plan.contains("Queue workers causing issues"), "{plan}");
    assert!(plan.contains("-- backend/src/queues/"), "{plan}");

    let n = s.calls().len();
    let (code, report, stderr) = s.run_json(&[]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(level_numbers(&report), [3]);
    let st = steps(&report, 3);
    all_ok(&st, &report);
    assert_eq!(
        ids(&st),
        [
            "stop-workers",
            "drain",
            "pause-queues",
            "clean",
            "revert-queue-code",
            "build",
            "restart-workers",
            "resume-ai-analysis",
            "resume-document-processing"
        ]
    );
    // Only the queue code went back; HEAD and the rest stay on 1.1.0.
    assert_eq!(s.head(), head);
    assert_eq!(
        s.read("backend/src/queues/worker.json"),
        worker_json("1.0.0", 0)
    );
    assert!(s.read("app.json").contains("1.1.0"));
    assert_eq!(
        s.read("dist/queues.json"),
        worker_json("1.0.0", 0),
        "rebuilt"
    );
    let ctl: Vec<String> = s.ctl_log().into_iter().map(|(_, c)| c).collect();
    assert_eq!(
        ctl[ctl.len() - 3..],
        ["stop-worker", "build", "restart-worker"]
    );
    assert_eq!(
        s.posts_since(n)[..2],
        [
            "/api/queue/pause-all".to_string(),
            "/api/queue/clean-all".to_string()
        ]
    );
    assert_resumed_one_at_a_time(&s, n, 3);
    // The reverted workers process jobs without failures.
    let before: u64 = QUEUES
        .iter()
        .map(|q| s.stats()["queues"][q]["completed"].as_u64().unwrap())
        .sum();
    assert!(wait_until(PATIENCE, || {
        let st = s.stats();
        QUEUES
            .iter()
            .map(|q| st["queues"][q]["completed"].as_u64().unwrap())
            .sum::<u64>()
            > before + 5
    }));
    for q in QUEUES {
        assert_eq!(s.stats()["queues"][q]["failed"], 0, "{q}");
    }
    assert_eq!(verification(&report)["healthy"], true);
}

#[test]
fn the_schema_rollback_backs_up_applies_the_down_migration_and_keeps_ten_backups() {
    let s = Stand::new(1, 5, 100);
    // Migration 0002 ran with the deploy.
    s.sql(MIGRATION_UP_0002);
    // Eleven older backups of ours, and the pre-deploy one (never pruned).
    for i in 0..11 {
        let (name, when) = if i == 10 {
            (
                "20241231_000000_000".to_string(),
                "2024-12-31 00:00:00".to_string(),
            )
        } else {
            (
                format!("2025010{i}_000000_000"),
                format!("2025-01-01 00:00:{i:02}"),
            )
        };
        let p = s
            .base()
            .join(format!("backups/backup_before_rollback_{name}.sql"));
        std::fs::write(&p, "-- old\n").unwrap();
        let out = Command::new("touch")
            .args(["-d", &when])
            .arg(&p)
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    std::fs::write(
        s.base().join("backups/backup_pre_deploy_20251107.sql"),
        "-- pre deploy\n",
    )
    .unwrap();
    let rows = s.sql("SELECT count(*) FROM projects");

    let n = s.calls().len();
    let (code, report, stderr) = s.run_json(&["--level", "5"]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    let st = steps(&report, 5);
    all_ok(&st, &report);
    assert_eq!(
        ids(&st),
        [
            "maintenance-on",
            "pause-queues",
            "drain",
            "backup",
            "migrate-down",
            "verify-schema",
            "maintenance-off",
            "resume-ai-analysis",
            "resume-document-processing"
        ]
    );
    // The schema is back, no row lost.
    assert_eq!(
        s.sql("SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = 'projects'"),
        "id,name,updated_at"
    );
    assert_eq!(s.sql("SELECT count(*) FROM projects"), rows);
    assert!(
        message(&st, "verify-schema").contains("rows in projects (before -> after): 12 -> 12"),
        "{st:?}"
    );
    // The backup holds the state before the migration; ten of ours kept.
    let mut ours: Vec<PathBuf> = std::fs::read_dir(s.base().join("backups"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("backup_before_rollback_")
        })
        .collect();
    ours.sort();
    assert_eq!(ours.len(), 10, "{ours:?}");
    let newest = std::fs::read_to_string(ours.last().unwrap()).unwrap();
    assert!(
        newest.contains("CREATE TABLE public.projects") && newest.contains("new_column"),
        "the dump before the migration"
    );
    assert!(
        !s.base()
            .join("backups/backup_before_rollback_20241231_000000_000.sql")
            .exists(),
        "the oldest pruned"
    );
    assert!(
        s.base()
            .join("backups/backup_pre_deploy_20251107.sql")
            .exists()
    );
    // Writes stopped first and allowed again at the end.
    let posts = s.posts_since(n);
    assert_eq!(
        posts[..2],
        [
            "/api/maintenance/enable".to_string(),
            "/api/queue/pause-all".to_string()
        ]
    );
    assert!(posts.contains(&"/api/maintenance/disable".to_string()));
    assert_resumed_one_at_a_time(&s, n, 3);
}

#[test]
fn data_corruption_stops_writes_and_restores_the_pre_deploy_backup() {
    let s = Stand::new(1, 5, 100);
    s.pre_deploy_dump();
    // Corruption: projects deleted under their scenes.
    s.sql("DELETE FROM projects WHERE id IN (1, 2)");
    let (plan, dry) = s.plan_and_dry_run_with(&["--level", "6"]);
    assert!(plan.contains("data integrity"), "{plan}");
    assert!(plan.contains("backup_pre_deploy_20251107.sql"), "{plan}");
    assert!(dry.contains("would run") && dry.contains("dropdb"), "{dry}");

    let n = s.calls().len();
    let (code, report, stderr) = s.run_json(&[]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    let a = &plugin(&report)["assessment"];
    assert_eq!(a["scenario"], "Data corruption detected", "{a:#}");
    assert_eq!(a["severity"], "critical");
    let f = a["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "data integrity: scenes without a project")
        .unwrap();
    assert_eq!(
        (f["observed"].as_str(), f["breached"].as_bool()),
        (Some("7"), Some(true)),
        "{f}"
    );
    assert_eq!(level_numbers(&report), [6]);
    let st = steps(&report, 6);
    all_ok(&st, &report);
    assert_eq!(
        ids(&st),
        [
            "maintenance-on",
            "pause-queues",
            "drain",
            "backup",
            "restore",
            "verify-data",
            "maintenance-off",
            "resume-ai-analysis",
            "resume-document-processing"
        ]
    );
    assert!(
        message(&st, "restore").contains("backup_pre_deploy_20251107.sql"),
        "{st:?}"
    );
    assert_eq!(s.sql("SELECT count(*) FROM projects"), "12");
    assert_eq!(
        s.sql("SELECT count(*) FROM scenes s LEFT JOIN projects p ON p.id = s.project_id WHERE p.id IS NULL"),
        "0"
    );
    // The corrupted state was saved before the restore.
    let ours: Vec<PathBuf> = std::fs::read_dir(s.base().join("backups"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("backup_before_rollback_")
        })
        .collect();
    assert_eq!(ours.len(), 1);
    let posts = s.posts_since(n);
    assert_eq!(posts[0], "/api/maintenance/enable", "stop all writes first");
    assert_eq!(verification(&report)["healthy"], true);
}

#[test]
fn a_single_broken_feature_is_disabled_by_its_flag_not_rolled_back() {
    let s = Stand::new(1, 5, 100);
    s.deploy(
        &[(
            "app.json",
            &app_json(
                "1.1.0",
                "1",
                json!({"features": {"export": "broken", "search": "ok"}}),
            ),
        )],
        "release 1.1.0",
    );
    let head = s.head();
    let (plan, _) = s.plan_and_dry_run_touch_nothing();
    assert!(
        plan.contains("Single feature broken: feature flag"),
        "{plan}"
    );
    let n = s.calls().len();
    let (code, report, stderr) = s.run_json(&[]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(level_numbers(&report), [1]);
    let st = steps(&report, 1);
    all_ok(&st, &report);
    assert_eq!(ids(&st), ["flag-export", "health"]);
    assert_eq!(s.posts_since(n), ["/api/flags/export/disable"]);
    assert_eq!(s.head(), head, "fix forward: no code rollback");
    assert_eq!(s.status("/api/features/export"), Some(404));
    assert_eq!(verification(&report)["healthy"], true);
}

#[test]
fn error_rates_investigate_at_5_to_10_percent_and_roll_back_above_10_after_the_quick_fix_window() {
    let mut s = Stand::new(1, 5, 100);
    s.deploy(
        &[(
            "app.json",
            &app_json("1.1.0", "1", json!({"error_percent": 7})),
        )],
        "release 1.1.0",
    );
    s.set("QUEUE_APP_SAMPLES", "20");
    let head = s.head();
    let (code, report, stderr) = s.run_json(&[]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    let a = &plugin(&report)["assessment"];
    assert_eq!(
        (a["rollback"].as_bool(), a["severity"].as_str()),
        (Some(false), Some("major")),
        "{a:#}"
    );
    assert!(
        a["summary"].as_str().unwrap().contains("investigate"),
        "{a:#}"
    );
    assert!(level_numbers(&report).is_empty());
    assert_eq!(s.head(), head);

    // Over 10 %: a quick fix first (the window is 5 minutes) ...
    s.deploy(
        &[(
            "app.json",
            &app_json("1.2.0", "1", json!({"error_percent": 20})),
        )],
        "release 1.2.0",
    );
    let (code, report, stderr) = s.run_json(&[]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    let a = &plugin(&report)["assessment"];
    assert_eq!(a["rollback"], false, "{a:#}");
    assert!(
        a["scenario"].as_str().unwrap().contains("quick fix first"),
        "{a:#}"
    );
    let f = a["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"].as_str().unwrap().starts_with("error rate"))
        .unwrap();
    assert!(f["observed"].as_str().unwrap().starts_with("20.0%"), "{f}");
    assert_eq!(f["breached"], true);
    // ... and once it has failed for longer than the window: rollback.
    // A deliberate wait for time to pass: the plugin noted the high error
    // rate during the run above, so 1.2 s from now it has lasted more than
    // the 1 s window; a slow machine only makes it last longer.
    std::thread::sleep(Duration::from_millis(1200));
    s.set("QUEUE_APP_QUICK_FIX_MS", "1000");
    s.set("QUEUE_APP_STABLE_REF", "v1.0.0");
    let (code, report, stderr) = s.run_json(&[]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(plugin(&report)["assessment"]["scenario"], "Error rate >10%");
    assert_eq!(level_numbers(&report), [4]);
    all_ok(&steps(&report, 4), &report);
    assert_eq!(s.head(), s.v1, "back on the configured stable ref");
    assert_eq!(verification(&report)["healthy"], true);
}

/// A finding of a list, by the start of its check.
fn finding<'a>(list: &'a Value, starts: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"].as_str().unwrap().starts_with(starts))
        .unwrap_or_else(|| panic!("no finding {starts:?} in {list:#}"))
}

/// `rewind drill --json --scenario NAME` on the example runbook: its one
/// report, after checking what every drill of this runbook must show: a
/// recovery within the P0 RTO of 15 minutes, the five phases, every step
/// ok, and the reports written under the state dir's drills/.
fn drill(s: &Stand, scenario: &str) -> Value {
    let out = s.rewind(&["drill", "--json", "--scenario", scenario]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let reports: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON reports ({e}): {}", text(&out)));
    assert_eq!(out.status.code(), Some(0), "{reports:#}\n{stderr}");
    assert_eq!(reports.as_array().unwrap().len(), 1, "{reports:#}");
    let d = reports[0].clone();
    assert_eq!(d["scenario"], scenario);
    assert_eq!(d["plugin"], "queue-app");
    assert_eq!(
        (d["verdict"].as_str(), d["recovered"].as_bool()),
        (Some("pass"), Some(true)),
        "{d:#}\n{stderr}"
    );
    assert_eq!(d["error"], Value::Null, "{d:#}");
    assert_eq!(d["rto_ms"], 900_000, "P0: immediate rollback, < 15 minutes");
    let recovery = d["recovery_ms"].as_f64().unwrap();
    let margin = d["margin_ms"].as_f64().unwrap();
    assert!(recovery > 0.0 && margin > 0.0, "{d:#}");
    assert!((recovery + margin - 900_000.0).abs() < 1.0, "{d:#}");
    let phases: Vec<&str> = d["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["inject", "detect", "decide", "act", "verify"]);
    for st in d["steps"].as_array().unwrap() {
        assert_eq!(st["status"], "ok", "{st}\n{d:#}");
    }
    let id = d["id"].as_str().unwrap();
    let dir = s.base().join("rewind-state/drills");
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{id}.json"))).unwrap())
            .unwrap();
    assert_eq!(
        (&saved["scenario"], &saved["verdict"]),
        (&d["scenario"], &d["verdict"])
    );
    let md = std::fs::read_to_string(dir.join(format!("{id}.md"))).unwrap();
    assert!(
        md.contains(&format!("# Drill `{scenario}` of queue-app: PASS")),
        "{md}"
    );
    d
}

/// (level, step id) of a drill report's steps.
fn drill_steps(d: &Value) -> Vec<(u64, String)> {
    d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["level"].as_u64().unwrap(),
                s["step"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The example runbook's two P0 [[drill]] scenarios, one after the other
/// on one stand-in: a deployment that takes the API down (code rollback)
/// and data corruption (restore from the pre-deploy backup). Each recovers
/// and verifies within the 15 minute RTO; release 1.0.0 with its 12
/// projects is what runs afterwards. `rewind drills` lists both.
#[test]
fn the_example_p0_drills_recover_within_the_15_minute_rto() {
    let s = Stand::new(2, 5, 100);
    let healthy_again = |s: &Stand| {
        assert_eq!(s.status("/health"), Some(200));
        assert_eq!(s.get("/api/version").unwrap().1, "1.0.0");
        for q in QUEUES {
            assert_eq!(s.stats()["queues"][q]["paused"], false, "{q} resumed");
        }
    };

    // API completely down after a deployment: back to the commit before.
    let pid = s.pid().unwrap();
    let d = drill(&s, "api-down");
    let up = finding(&d["findings"], "API up");
    assert_eq!(
        (up["observed"].as_str(), up["breached"].as_bool()),
        (Some("500"), Some(true)),
        "{up}"
    );
    assert_eq!(
        drill_steps(&d),
        [
            "identify",
            "pause-queues",
            "drain",
            "checkout",
            "install",
            "build",
            "restart",
            "health",
            "smoke",
            "resume-ai-analysis",
            "resume-document-processing"
        ]
        .map(|id| (4, id.to_string()))
    );
    // The injection committed the bad release on main; HEAD is back on
    // 1.0.0, served by a new process.
    assert_eq!(s.git(&["rev-parse", "main~1"]), s.v1);
    assert!(
        s.git(&["log", "-1", "--format=%s", "main"])
            .contains("rewind drill api-down"),
    );
    assert!(s.read("app.json").contains("\"healthy\": true"));
    assert_eq!(s.head(), s.v1);
    assert!(!alive(pid), "the process that ran before the drill is gone");
    assert!(s.pid().is_some_and(|p| p != pid && alive(p)));
    healthy_again(&s);

    // Data corruption: writes stopped, the pre-deploy backup restored.
    let d = drill(&s, "data-corruption");
    let bad = finding(&d["findings"], "data integrity: scenes without a project");
    assert_eq!(
        (bad["observed"].as_str(), bad["breached"].as_bool()),
        (Some("7"), Some(true)),
        "{bad}"
    );
    assert_eq!(
        drill_steps(&d),
        [
            "maintenance-on",
            "pause-queues",
            "drain",
            "backup",
            "restore",
            "verify-data",
            "maintenance-off",
            "resume-ai-analysis",
            "resume-document-processing"
        ]
        .map(|id| (6, id.to_string()))
    );
    assert!(
        s.base()
            .join("backups/backup_pre_deploy_drill.sql")
            .exists()
    );
    assert_eq!(s.sql("SELECT count(*) FROM projects"), "12");
    assert_eq!(
        s.sql("SELECT count(*) FROM scenes s LEFT JOIN projects p ON p.id = s.project_id WHERE p.id IS NULL"),
        "0"
    );
    healthy_again(&s);

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
    assert_eq!(listed, [("api-down", "pass"), ("data-corruption", "pass")]);
    let out = s.rewind(&["drills"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("api-down") && t.contains("data-corruption"),
        "{t}"
    );
    assert_eq!(t.matches(" pass ").count(), 2, "{t}");
}

/// P0 "API completely down", as an operator meets it: every endpoint of the
/// bad release answers 500 (so neither pause-all nor the queue stats work),
/// or its process is gone and nothing answers at all. The runbook's
/// emergency rollback pauses "|| echo Warning" and goes on: the code must
/// be rolled back either way, and the report must say what could not be
/// done.
#[test]
fn an_api_completely_down_is_rolled_back_though_pause_and_drain_cannot_work() {
    for crashed in [false, true] {
        let s = Stand::new(2, 5, 150);
        s.deploy(
            &[
                (
                    "app.json",
                    &app_json("1.3.0", "2", json!({"healthy": false, "down": true})),
                ),
                ("backend/src/server.txt", "server 1.3.0\n"),
            ],
            "release 1.3.0",
        );
        assert_eq!(s.status("/api/queue/stats"), Some(500));
        if crashed {
            // The process is gone: connections are refused.
            let pid = s.pid().unwrap();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            assert!(wait_until(Duration::from_secs(60), || !alive(pid)));
            assert_eq!(s.status("/health"), None);
        }

        let (code, report, stderr) = s.run_json(&[]);
        assert_eq!(code, 0, "crashed={crashed}: {report:#}\n{stderr}");
        assert_eq!(level_numbers(&report), [4]);
        let st = steps(&report, 4);
        all_ok(&st, &report);
        for id in ["pause-queues", "drain"] {
            let m = message(&st, id);
            assert!(
                m.starts_with("warning: ") && m.contains("carrying on"),
                "crashed={crashed}: {id}: {m}"
            );
        }
        // Back on the stable commit, serving it, healthy.
        assert_eq!(s.head(), s.v1);
        assert_eq!(s.get("/api/version").unwrap().1, "1.0.0");
        assert_eq!(s.status("/health"), Some(200));
        assert_eq!(verification(&report)["healthy"], true, "{report:#}");
    }
}

/// A backup chosen by name is proven to load (into a scratch database)
/// before the live database is dropped: a truncated dump fails the restore
/// and leaves the data as it was, for a person to choose another backup.
#[test]
fn a_backup_that_does_not_load_never_replaces_the_live_database() {
    let s = Stand::new(1, 5, 100);
    let dump = s.pre_deploy_dump();
    // The dump is cut halfway through, as a full disk would leave it.
    let whole = std::fs::read_to_string(&dump).unwrap();
    std::fs::write(&dump, &whole[..whole.len() / 2]).unwrap();
    s.sql("DELETE FROM projects WHERE id IN (1, 2)");

    let (code, report, stderr) = s.run_json(&[]);
    assert_eq!(code, 1, "{report:#}\n{stderr}");
    let st = steps(&report, 6);
    let (_, status, msg) = st.iter().find(|(i, _, _)| i == "restore").unwrap();
    assert_eq!(status, "failed", "{msg}");
    assert!(
        msg.contains("does not load") && msg.contains("was not dropped"),
        "{msg}"
    );
    // The live database is the one it was: 10 projects, not 0 or 12.
    assert_eq!(s.sql("SELECT count(*) FROM projects"), "10");
    // No scratch database is left behind.
    assert_eq!(
        s.sql("SELECT count(*) FROM pg_database WHERE datname LIKE '%rewind_check%'"),
        "0"
    );
}

/// The whole cache, as the runbook's "Clear all cache (nuclear option)":
/// `cache_patterns = ["*"]`. Bull keeps its queues in the same Redis
/// (`bull:<queue>:id`, `:wait`, `:active`, job hashes, `:meta-paused`):
/// a FLUSHALL, or a DEL of every key, would lose every waiting job. Only
/// cache keys go; every `bull:*` key is left as it was.
#[test]
fn clearing_all_cache_never_deletes_bulls_queue_keys() {
    let mut s = Stand::new(1, 5, 100);
    let mut cmds = String::new();
    let big = "x".repeat(10_000);
    for i in 0..300 {
        cmds.push_str(&format!("SET gemini:analysis:{i} {big}\n"));
    }
    for i in 0..20 {
        cmds.push_str(&format!("SET project:{i}:summary cached\n"));
    }
    for q in QUEUES {
        cmds.push_str(&format!("SET bull:{q}:id 42\n"));
        for j in 1..=40 {
            cmds.push_str(&format!(
                "HSET bull:{q}:{j} name analyse data project-{j} timestamp 1762500000000\n"
            ));
            cmds.push_str(&format!("LPUSH bull:{q}:wait {j}\n"));
        }
        cmds.push_str(&format!("ZADD bull:{q}:failed 1762500000000 7\n"));
        cmds.push_str(&format!("SADD bull:{q}:completed 3\n"));
    }
    s.redis.pipe(&cmds);
    let bull_before = bull_dump(&s);
    assert_eq!(bull_before.len(), 2 * 44, "{bull_before:?}");
    s.set("QUEUE_APP_CACHE_MAX_MB", "2.5");
    s.set("QUEUE_APP_CACHE_PATTERN", "*");

    let (code, report, stderr) = s.run_json(&["--level", "2"]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    let st = steps(&report, 2);
    all_ok(&st, &report);
    let flush = message(&st, "flush");
    assert!(
        flush.contains("*: ") && flush.contains("88 kept (bull:)"),
        "{flush}"
    );
    // Every cache key is gone, every Bull key is there with its content.
    assert_eq!(s.redis.cli(&["--scan", "--pattern", "gemini:*"]), "");
    assert_eq!(s.redis.cli(&["--scan", "--pattern", "project:*"]), "");
    assert_eq!(bull_dump(&s), bull_before, "Bull's queues untouched");
    let stats = s.redis.cli(&["INFO", "commandstats"]);
    assert!(
        !stats.contains("cmdstat_flushall:") && !stats.contains("cmdstat_flushdb:"),
        "{stats}"
    );
    assert_eq!(verification(&report)["healthy"], true, "{report:#}");
}

/// Every `bull:*` key with its type and content, sorted.
fn bull_dump(s: &Stand) -> Vec<String> {
    let mut keys: Vec<String> = s
        .redis
        .cli(&["--scan", "--pattern", "bull:*"])
        .lines()
        .map(str::to_string)
        .collect();
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let ty = s.redis.cli(&["TYPE", &k]);
            let v = match ty.as_str() {
                "string" => s.redis.cli(&["GET", &k]),
                "hash" => s.redis.cli(&["HGETALL", &k]),
                "list" => s.redis.cli(&["LRANGE", &k, "0", "-1"]),
                "zset" => s.redis.cli(&["ZRANGE", &k, "0", "-1", "WITHSCORES"]),
                "set" => s.redis.cli(&["SMEMBERS", &k]),
                _ => String::new(),
            };
            format!("{k} {ty} {v}")
        })
        .collect()
}

/// "API completely down" on a queue whose Bull counters carry the bad
/// release's history (Bull keeps `completed` and `failed` in Redis, so
/// they survive the restart of the stable code): 60 failed of 460 done is
/// 13%, far over the runbook's "Failure rate normal (<2%)". The rollback
/// is judged on the jobs done after each queue's resume (0 failed), not on
/// the totals; and the API being down (500, or the process gone) does not
/// stop it at the pause or the drain.
#[test]
fn the_resume_is_judged_on_jobs_since_the_resume_not_bulls_totals() {
    for crashed in [false, true] {
        let s = Stand::with_counts(2, 5, 100, json!({"completed": 400, "failed": 60}));
        s.deploy(
            &[
                (
                    "app.json",
                    &app_json("1.3.0", "2", json!({"healthy": false, "down": true})),
                ),
                ("backend/src/queues/worker.json", &worker_json("1.3.0", 100)),
            ],
            "release 1.3.0",
        );
        if crashed {
            let pid = s.pid().unwrap();
            kill_pid(pid);
            assert!(wait_until(Duration::from_secs(60), || !alive(pid)));
            assert_eq!(s.status("/health"), None, "connection refused");
        } else {
            assert_eq!(s.status("/api/queue/stats"), Some(500));
        }
        let (code, report, stderr) = s.run_json(&[]);
        assert_eq!(code, 0, "crashed={crashed}: {report:#}\n{stderr}");
        assert_eq!(level_numbers(&report), [4]);
        let st = steps(&report, 4);
        all_ok(&st, &report);
        for id in ["pause-queues", "drain"] {
            let m = message(&st, id);
            assert!(m.starts_with("warning: "), "crashed={crashed}: {id}: {m}");
        }
        for q in QUEUES {
            let m = message(&st, &format!("resume-{q}"));
            assert!(m.contains("0 failed since the resume"), "{m}");
        }
        // The totals are still the bad ones; the rollback did not hide them.
        let stats = s.stats();
        assert!(stats["queues"][QUEUES[0]]["failed"].as_u64().unwrap() >= 60);
        let v = verification(&report);
        assert_eq!(v["healthy"], true, "crashed={crashed}: {v:#}");
        let f = finding(
            &v["findings"],
            &format!("queue {}: failure rate", QUEUES[0]),
        );
        assert!(
            f["check"].as_str().unwrap().contains("since the resume"),
            "{f}"
        );
        assert_eq!(s.head(), s.v1);
    }
}

/// Release 1.3.0 ships migration 0002 (applied on deploy) with its down
/// migration; 1.2.0, the stable one, has neither, and its search feature
/// fails on the migrated schema. The code rollback (level 4) checks 1.2.0
/// out, which takes `migrations/down_0002_rollback.sql` out of the tree,
/// and does not verify (search fails), so the run escalates to the schema
/// rollback (level 5): it applies the down migration read before the
/// checkout. Level 5 does not verify either (search still fails): a
/// failed schema rollback goes to a person, never on to level 6's dropdb.
#[test]
fn the_down_migration_is_read_before_the_checkout_and_a_failed_schema_rollback_stops_for_a_person()
{
    let s = Stand::new(1, 5, 100);
    std::fs::remove_file(s.app().join("migrations/down_0002_rollback.sql")).unwrap();
    s.deploy(
        &[(
            "app.json",
            &app_json(
                "1.2.0",
                "1",
                json!({"features": {"export": "ok", "search": "broken"}}),
            ),
        )],
        "release 1.2.0",
    );
    let stable = s.head();
    // The runbook's pre-deploy backup: what level 6 would restore.
    s.pre_deploy_dump();
    s.sql(MIGRATION_UP_0002);
    s.deploy(
        &[
            (
                "app.json",
                &app_json("1.3.0", "2", json!({"healthy": false, "down": true})),
            ),
            ("migrations/down_0002_rollback.sql", MIGRATION_DOWN_0002),
        ],
        "release 1.3.0: migration 0002",
    );
    s.sql("INSERT INTO projects (name, new_column) VALUES ('made on 1.3.0', 'y')");

    let (code, report, stderr) = s.run_json(&[]);
    assert_eq!(code, 1, "{report:#}\n{stderr}");
    assert_eq!(level_numbers(&report), [4, 5], "{report:#}");
    all_ok(&steps(&report, 4), &report);
    assert_eq!(s.head(), stable);
    assert!(
        !s.app().join("migrations/down_0002_rollback.sql").exists(),
        "the stable tree has no down migration"
    );
    let st = steps(&report, 5);
    all_ok(&st, &report);
    let m = message(&st, "migrate-down");
    assert!(
        m.contains("migrations/down_0002_rollback.sql") && m.contains("read before the checkout"),
        "{m}"
    );
    // Migration 0002 is gone, the row made on 1.3.0 is kept (no restore).
    assert_eq!(
        s.sql("SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = 'projects'"),
        "id,name,updated_at"
    );
    assert_eq!(s.sql("SELECT count(*) FROM projects"), "13");
    // Stopped for a person, with why; level 6 never ran.
    let error = plugin(&report)["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("not to escalate") && error.contains("a person decides"),
        "{report:#}"
    );
}

/// The API dies while the drain watches it: the pause went through and
/// the first stats showed jobs running, then the process is gone and every
/// later poll is refused. At the code level the drain is best effort: the
/// code is rolled back anyway (the emergency script does not drain at
/// all), and the report says the drain was not watched to its end.
#[test]
fn an_api_that_dies_during_the_drain_is_still_rolled_back() {
    let s = Stand::new(6, 10, 150);
    s.deploy(
        &[(
            "app.json",
            &app_json("1.3.0", "2", json!({"healthy": false})),
        )],
        "release 1.3.0",
    );
    let pid = s.pid().unwrap();
    let n = s.calls().len();
    let (code, report, stderr) = std::thread::scope(|scope| {
        scope.spawn(|| {
            // Killed once a stats request after the pause has been answered.
            assert!(wait_until(PATIENCE, || {
                let calls = s.calls();
                let Some(p) = calls[n..]
                    .iter()
                    .position(|c| c["p"] == "/api/queue/pause-all")
                else {
                    return false;
                };
                calls[n + p..]
                    .iter()
                    .any(|c| c["p"] == "/api/queue/stats" && c["active"] != 0)
            }));
            kill_pid(pid);
        });
        s.run_json(&[])
    });
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(level_numbers(&report), [4]);
    let st = steps(&report, 4);
    all_ok(&st, &report);
    let m = message(&st, "drain");
    assert!(
        m.starts_with("warning: cannot watch the drain (poll ") && m.contains("carrying on"),
        "{m}"
    );
    assert!(!m.contains("(poll 1)"), "the first poll was answered: {m}");
    assert_eq!(s.head(), s.v1);
    assert_eq!(s.get("/api/version").unwrap().1, "1.0.0");
    assert_eq!(verification(&report)["healthy"], true, "{report:#}");
}

/// Issue 11: a level escalates only when its failed verification names a
/// finding the next level addresses. Release 1.3.0 takes the API down; the
/// commit before it (1.2.0) fails one request in five, with no migration
/// and the schema as the stable version has it. The code rollback (level
/// 4) brings 1.2.0 back and its errors stay. The next level is the down
/// migration, which changes the schema and cannot fix a bug in the code:
/// the run stops after level 4 with the reason, no level 5, the schema
/// untouched and no pre-migration dump.
#[test]
fn a_code_rollback_whose_errors_are_not_a_schema_problem_stops_instead_of_migrating_down() {
    let mut s = Stand::new(1, 5, 100);
    let v12 = s.deploy_buggy_then_down();
    let columns = || {
        s.sql("SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = 'projects'")
    };
    assert_eq!(columns(), "id,name,updated_at");

    let (code, report, stderr) = s.run_json(&[]);
    assert_eq!(code, 1, "{report:#}\n{stderr}");
    assert_eq!(
        level_numbers(&report),
        [4],
        "no down migration for errors the schema does not cause: {report:#}"
    );
    all_ok(&steps(&report, 4), &report);
    assert_eq!(s.head(), v12, "back on the commit before the bad one");
    assert_eq!(s.get("/api/version").unwrap().1, "1.2.0");
    let v = verification(&report);
    assert_eq!(v["healthy"], false, "{v:#}");
    let f = &v["findings"];
    assert_eq!(finding(f, "error rate")["breached"], true, "{f:#}");
    assert_eq!(finding(f, "schema of projects")["breached"], false, "{f:#}");
    let error = plugin(&report)["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("not to escalate")
            && error.contains("no schema check failed")
            && error.contains("a person decides"),
        "{report:#}"
    );
    // Nothing of level 5 ran: the schema and the backups as they were.
    assert_eq!(columns(), "id,name,updated_at");
    let dumps = std::fs::read_dir(s.base().join("backups"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("backup_before_rollback_")
                })
                .count()
        })
        .unwrap_or(0);
    assert_eq!(dumps, 0, "no dump before a migration that did not run");
}
