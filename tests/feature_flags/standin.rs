//! A local stand-in of the system the feature-flags runbook rolls back: a
//! git repository with the runbook's refs (`v0.9.0-stable`,
//! `v1.0.0-stable`, the deployed `v1.1.0-agent-optimizations`) pushed to a
//! bare `origin`, a python3 app serving /api/health on loopback from that
//! tree (examples/feature-flags/standin/server.py), pm2 and npm stand-ins,
//! a log with timestamps (with `Opts::untimed_work`, only on the app's
//! start: its work is logged like `console.log`), an SQLite memory
//! database, and the pre-deployment
//! backups (an app tarball and a memory.db copy, plus older decoys). It is
//! either deployed (running v1.1.0) or, for drills, about to be: running
//! `v1.0.0-stable`, healthy, with v1.1.0 tagged and pushed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use crate::util::{self, alive, kill_pid, wait_until};

const SERVER_PY: &str = include_str!("../../examples/feature-flags/standin/server.py");
const PM2: &str = include_str!("../../examples/feature-flags/standin/pm2");
const NPM: &str = include_str!("../../examples/feature-flags/standin/npm");

/// The example runbook the tests run.
pub fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/feature-flags/rewind.toml")
}

pub const STABLE: &str = "v1.0.0-stable";
pub const DEPLOYED: &str = "v1.1.0-agent-optimizations";
/// Rows in agent_activities in the pre-deployment memory backup.
pub const BACKUP_ROWS: i64 = 42;
/// Rows after the deployment ran a while (the live database).
pub const LIVE_ROWS: i64 = 50;

/// The `.env` the app was deployed with: the flags on, one of them twice,
/// MCP tracking not mentioned (on by default).
pub const ENV: &str = "# app configuration\nNODE_ENV=production\nPORT=3000\nENABLE_PARALLEL_SPAWNING=true\nDATABASE_URL=postgres://app@localhost/appdb\nexport ENABLE_PARALLEL_UPLOADS=true\nLOG_LEVEL=info\nENABLE_PARALLEL_SPAWNING=true\nS3_BUCKET=uploads\n";

/// How the deployment of v1.1.0 is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breakage {
    /// Not broken at all.
    None,
    /// All three parallel features fail while their flags are on: turning
    /// the flags off fixes it (Level 1).
    Features,
    /// Only parallel uploads fail (QW-001).
    Uploads,
    /// A bug in the core code, whatever the flags: Level 1 cannot fix it,
    /// the stable tag can (Level 2).
    Code,
    /// The core bug, and v1.1.0 migrated the memory database to a schema
    /// the stable code cannot read: only the backups fix it (Level 3).
    CodeAndSchema,
}

impl Breakage {
    fn release_json(self) -> String {
        let broken: &[&str] = match self {
            Self::None => &[],
            Self::Uploads => &["uploads"],
            _ => &["spawning", "uploads", "mcp"],
        };
        let core = matches!(self, Self::Code | Self::CodeAndSchema);
        let migrate = self == Self::CodeAndSchema;
        serde_json::json!({
            "broken_features": broken,
            "core_broken": core,
            "schema": if migrate { 2 } else { 1 },
            "migrate": migrate,
        })
        .to_string()
    }

    /// Whether a feature fails in v1.1.0 with its flag on.
    fn fails(self, feature: &str) -> bool {
        match self {
            Self::None => false,
            Self::Uploads => feature == "uploads",
            _ => true,
        }
    }
}

/// How the stand-in differs from the runbook's example.
#[derive(Debug, Clone, Copy)]
pub struct Opts {
    pub breakage: Breakage,
    /// Running the release (else `v1.0.0-stable`, for drills).
    pub deployed: bool,
    /// What `v1.0.0-stable` serves as its version (`GET /api/health`
    /// `.version`): the tag without its `v` unless set.
    pub stable_served: Option<&'static str>,
    /// The app logs its work with `console.log`: only its lifecycle lines
    /// (started, stopping) carry a timestamp.
    pub untimed_work: bool,
}

impl Opts {
    pub fn new(breakage: Breakage) -> Self {
        Self {
            breakage,
            deployed: true,
            stable_served: None,
            untimed_work: false,
        }
    }
}

pub struct Stand {
    pub sb: util::Sandbox,
    pub port: u16,
    pub breakage: Breakage,
    pub opts: Opts,
    /// Lines added to `[plugin.config]` of the example runbook.
    config: Vec<String>,
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed: {}", util::text(&out));
    out
}

fn write(path: &Path, text: &str) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, text).unwrap();
}

fn executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    write(path, text);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn set_mtime(path: &Path, days_ago: u64) {
    let t = SystemTime::now() - Duration::from_secs(days_ago * 86_400);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

pub fn rfc3339(t: SystemTime) -> String {
    // Format with the `date` command's algorithm, without a date crate.
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

impl Stand {
    /// Deployed: the app runs v1.1.0, broken as `breakage` says, and the
    /// log has six and a half minutes of it.
    pub fn new(breakage: Breakage) -> Self {
        Self::with(breakage, true)
    }

    /// Not deployed yet: v1.1.0 (broken as `breakage` says) is committed,
    /// tagged and pushed, but the checkout is on `v1.0.0-stable`,
    /// installed and built, and the app serves it, healthy, with a healthy
    /// log. A drill deploys the release.
    pub fn before_deploy(breakage: Breakage) -> Self {
        Self::with(breakage, false)
    }

    fn with(breakage: Breakage, deployed: bool) -> Self {
        Self::with_opts(Opts {
            deployed,
            ..Opts::new(breakage)
        })
    }

    pub fn with_opts(opts: Opts) -> Self {
        let s = Self {
            sb: util::Sandbox::new(),
            port: util::free_port(),
            breakage: opts.breakage,
            opts,
            config: Vec::new(),
        };
        s.build(opts.deployed);
        s
    }

    /// Add a line (`key = value`) to the runbook's `[plugin.config]`.
    pub fn config(&mut self, line: &str) {
        self.config.push(line.to_string());
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.sb.join(rel)
    }
    pub fn app(&self) -> PathBuf {
        self.path("srv/app")
    }
    pub fn log(&self) -> PathBuf {
        self.path("log/app.log")
    }
    pub fn memory_db(&self) -> PathBuf {
        self.app().join(".swarm/memory.db")
    }
    pub fn memory_backup(&self) -> PathBuf {
        self.path("backups/memory-backups/memory-20251111-140000.db")
    }
    pub fn app_backup(&self) -> PathBuf {
        self.path("backups/app-backups/backup-20251111-140000.tar.gz")
    }

    pub fn git(&self, args: &[&str]) -> String {
        let out = run(Command::new("git")
            .args([
                "-c",
                "user.name=Deployer",
                "-c",
                "user.email=deploy@example.invalid",
                "-c",
                "commit.gpgsign=false",
                "-c",
                "tag.gpgsign=false",
                "-c",
                "advice.detachedHead=false",
            ])
            .args(args)
            .current_dir(self.app()));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn npm(&self, args: &[&str]) {
        run(Command::new(self.path("bin/npm"))
            .args(args)
            .current_dir(self.app()));
    }

    pub fn pm2(&self, args: &[&str]) -> Output {
        Command::new(self.path("bin/pm2"))
            .args(args)
            .output()
            .unwrap()
    }

    fn release(&self, version: &str, pkg: &str, release_json: &str) {
        let app = self.app();
        write(&app.join("server.py"), SERVER_PY);
        write(&app.join("VERSION"), &format!("{version}\n"));
        write(
            &app.join("package.json"),
            &format!("{{\n  \"name\": \"app\",\n  \"version\": \"{pkg}\"\n}}\n"),
        );
        write(
            &app.join("package-lock.json"),
            &format!(
                "{{\n  \"name\": \"app\",\n  \"version\": \"{pkg}\",\n  \"lockfileVersion\": 3\n}}\n"
            ),
        );
        write(&app.join("release.json"), &format!("{release_json}\n"));
        write(
            &app.join(".gitignore"),
            ".env\nnode_modules/\n.next/\n.swarm/\n",
        );
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.memory_db()).unwrap()
    }

    fn add_rows(&self, conn: &rusqlite::Connection, from: i64, to: i64) {
        for i in from..to {
            conn.execute(
                "INSERT INTO agent_activities (agent, activity, at) VALUES (?1, ?2, ?3)",
                (
                    format!("agent-{}", i % 7),
                    format!("activity {i}"),
                    format!("2025-11-1{} 12:00:{:02}", 1 + i / 40, i % 60),
                ),
            )
            .unwrap();
        }
    }

    fn build(&self, deployed: bool) {
        for d in [
            "srv",
            "bin",
            "log",
            "run",
            "backups/app-backups",
            "backups/memory-backups",
            "backups/pre-rollback",
            "state",
        ] {
            std::fs::create_dir_all(self.path(d)).unwrap();
        }
        executable(&self.path("bin/pm2"), PM2);
        executable(&self.path("bin/npm"), NPM);
        let s = |p: PathBuf| p.display().to_string();
        write(
            &self.path("bin/pm2.json"),
            &serde_json::json!({
                "name": "app",
                "cwd": s(self.app()),
                "script": "server.py",
                "args": if self.opts.untimed_work {
                    serde_json::json!(["--port", self.port.to_string(), "--log", s(self.log()), "--tick", "0.05", "--untimed-work"])
                } else {
                    serde_json::json!(["--port", self.port.to_string(), "--log", s(self.log()), "--tick", "0.05"])
                },
                "pid_file": s(self.path("run/app.pid")),
                "out_log": s(self.path("log/app-out.log")),
                "history": s(self.path("run/history.log")),
                // pm2 returns once the app listens: a failure bound, long
                // enough for a python3 start on a loaded machine.
                "listen_timeout_s": 60,
            })
            .to_string(),
        );
        write(
            &self.path("bin/npm.json"),
            &serde_json::json!({"history": s(self.path("run/history.log"))}).to_string(),
        );

        // The repository and its releases.
        std::fs::create_dir_all(self.app()).unwrap();
        self.git(&["init", "-q", "-b", "main"]);
        let healthy = Breakage::None.release_json();
        self.release("0.9.0-stable", "0.9.0", &healthy);
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", "release 0.9.0"]);
        self.git(&["tag", "v0.9.0-stable"]);
        write(&self.app().join(".env"), ENV);
        self.npm(&["ci", "--production"]);
        let decoy = self.path("backups/app-backups/backup-20251101-090000.tar.gz");
        run(Command::new("tar")
            .arg("-czf")
            .arg(&decoy)
            .args(["--exclude=./.swarm", "--exclude=./.next", "-C"])
            .arg(self.app())
            .arg("."));
        set_mtime(&decoy, 22);

        self.release(
            self.opts.stable_served.unwrap_or("1.0.0-stable"),
            "1.0.0",
            &healthy,
        );
        write(
            &self.app().join("lib/orchestration/agent-spawner.ts"),
            "export function spawnSequential() {}\n",
        );
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", "release 1.0.0"]);
        self.git(&["tag", STABLE]);
        // The pre-deployment state: installed, built, memory database.
        self.npm(&["ci", "--production"]);
        self.npm(&["run", "build"]);
        std::fs::create_dir_all(self.app().join(".swarm")).unwrap();
        {
            let conn = self.db();
            conn.execute_batch(
                "CREATE TABLE agent_activities (id INTEGER PRIMARY KEY, agent TEXT NOT NULL, activity TEXT NOT NULL, at TEXT NOT NULL);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
            self.add_rows(&conn, 0, 30);
            conn.close().unwrap();
            std::fs::copy(
                self.memory_db(),
                self.path("backups/memory-backups/memory-20251101-090000.db"),
            )
            .unwrap();
            set_mtime(
                &self.path("backups/memory-backups/memory-20251101-090000.db"),
                22,
            );
            let conn = self.db();
            self.add_rows(&conn, 30, BACKUP_ROWS);
            conn.close().unwrap();
        }
        std::fs::copy(self.memory_db(), self.memory_backup()).unwrap();
        set_mtime(&self.memory_backup(), 12);
        // The nightly backup leaves the data and the build out.
        run(Command::new("tar")
            .arg("-czf")
            .arg(self.app_backup())
            .args(["--exclude=./.swarm", "--exclude=./.next", "-C"])
            .arg(self.app())
            .arg("."));
        set_mtime(&self.app_backup(), 12);

        // The deployment.
        self.release(
            "1.1.0-agent-optimizations",
            "1.1.0",
            &self.breakage.release_json(),
        );
        write(
            &self
                .app()
                .join("lib/orchestration/parallel-agent-spawner.ts"),
            "export async function spawnParallel() {}\n",
        );
        self.git(&["add", "-A"]);
        self.git(&[
            "commit",
            "-q",
            "-m",
            "release 1.1.0: parallel spawning, parallel uploads, MCP tracking",
        ]);
        self.git(&["tag", DEPLOYED]);
        let origin = self.path("origin.git");
        run(Command::new("git")
            .args(["init", "-q", "--bare"])
            .arg(&origin));
        self.git(&["remote", "add", "origin", origin.to_str().unwrap()]);
        self.git(&["push", "-q", "origin", "main", "--tags"]);
        if !deployed {
            self.git(&["checkout", "-q", STABLE]);
        }
        self.npm(&["ci", "--production"]);
        self.npm(&["run", "build"]);
        {
            let conn = self.db();
            self.add_rows(&conn, BACKUP_ROWS, LIVE_ROWS);
            conn.close().unwrap();
        }
        self.write_history(deployed);
        let out = self.pm2(&["start", "app"]);
        assert!(out.status.success(), "{}", util::text(&out));
        assert!(
            wait_until(util::PATIENCE, || self.health().is_some()),
            "the stand-in app answers"
        );
        if deployed && self.breakage == Breakage::CodeAndSchema {
            assert_eq!(
                self.user_version(&self.memory_db()),
                2,
                "v1.1.0 migrated the db"
            );
        }
        // A few live lines after the history: the app logs "server
        // started" once it listens, then a line per unit of work.
        assert!(
            wait_until(util::PATIENCE, || {
                let log = std::fs::read_to_string(self.log()).unwrap_or_default();
                log.rfind("server started")
                    .is_some_and(|at| log[at..].lines().count() > 3)
            }),
            "the stand-in app logs its work"
        );
    }

    /// Six and a half minutes of the log before now, as the app wrote it
    /// (the deployed release, or the healthy stable one): one line per
    /// feature every 2 s.
    fn write_history(&self, deployed: bool) {
        let now = SystemTime::now();
        let mut text = String::new();
        if self.opts.untimed_work {
            // The last start, an hour ago, is the only stamped line.
            text.push_str(&format!(
                "{} INFO  server started version=1.1.0-agent-optimizations pid=1\n",
                rfc3339(now - Duration::from_secs(3600))
            ));
        }
        for i in (1..=195).rev() {
            let ts = if self.opts.untimed_work {
                String::new()
            } else {
                rfc3339(now - Duration::from_secs(i * 2)) + " "
            };
            for (feature, word) in [
                ("spawning", "spawn"),
                ("uploads", "upload"),
                ("mcp", "mcp tracking"),
            ] {
                let core = matches!(self.breakage, Breakage::Code | Breakage::CodeAndSchema);
                if deployed && (core || self.breakage.fails(feature)) {
                    text.push_str(&format!(
                        "{ts}ERROR {word} failed: it broke duration_ms=5000\n"
                    ));
                } else {
                    text.push_str(&format!(
                        "{ts}INFO  {word} ok mode=parallel duration_ms=120\n"
                    ));
                }
            }
        }
        write(&self.log(), &text);
    }

    /// (status, body) of GET /api/health.
    pub fn health(&self) -> Option<(u16, serde_json::Value)> {
        let resp = reqwest::blocking::Client::new()
            .get(format!("http://127.0.0.1:{}/api/health", self.port))
            .timeout(util::PATIENCE)
            .send()
            .ok()?;
        let status = resp.status().as_u16();
        let body = resp.text().unwrap_or_default();
        Some((status, serde_json::from_str(&body).unwrap_or_default()))
    }

    pub fn pid(&self) -> u32 {
        std::fs::read_to_string(self.path("run/app.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    pub fn rev(&self, r: &str) -> String {
        self.git(&["rev-parse", &format!("{r}^{{commit}}")])
    }

    pub fn history(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("run/history.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn user_version(&self, db: &Path) -> i64 {
        rusqlite::Connection::open(db)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    pub fn rows(&self, db: &Path) -> i64 {
        rusqlite::Connection::open(db)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM agent_activities", [], |r| r.get(0))
            .unwrap()
    }

    /// The example runbook, pointed at this stand-in.
    pub fn rewind(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
        let runbook = self.runbook();
        self.command(&crate::cli::approving(args), &runbook, extra_env)
            .output()
            .unwrap()
    }

    /// The example runbook, or a copy of it with the `config` keys set.
    pub fn runbook(&self) -> PathBuf {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/feature-flags");
        let mut runbook = example.join("rewind.toml");
        if !self.config.is_empty() {
            // A copy with the keys set (replacing the example's line of
            // the same key in [plugin.config]); the plugin path absolute.
            let original = std::fs::read_to_string(&runbook).unwrap();
            let keys: Vec<&str> = self
                .config
                .iter()
                .map(|l| l.split('=').next().unwrap().trim())
                .collect();
            let mut section = String::new();
            let mut kept = Vec::new();
            for line in original.lines() {
                if line.starts_with('[') {
                    section = line.to_string();
                }
                let key = line.split('=').next().unwrap_or("").trim();
                if section == "[plugin.config]" && line.contains('=') && keys.contains(&key) {
                    continue;
                }
                kept.push(line);
            }
            let text = (kept.join("\n") + "\n")
                .replace(
                    "[plugin.config]\n",
                    &format!("[plugin.config]\n{}\n", self.config.join("\n")),
                )
                .replace(
                    "component = \"../../",
                    &format!("component = \"{}/../../", example.display()),
                );
            runbook = self.path("rewind.toml");
            write(&runbook, &text);
        }
        runbook
    }

    /// The CLI with exactly `args` (no approval added) on `runbook`,
    /// pointed at this stand-in.
    pub fn command(&self, args: &[String], runbook: &Path, extra_env: &[(&str, &str)]) -> Command {
        let s = |p: PathBuf| p.display().to_string();
        let mut cmd = Command::new(util::REWIND);
        cmd.args(args)
            .arg(runbook)
            .current_dir(self.sb.path())
            .env("REWIND_CACHE_DIR", util::cache_dir())
            .env("REWIND_LOCK_DIR", self.sb.path().join("locks"))
            .env_remove("REWIND_LOG")
            .env("FF_STATE_DIR", s(self.path("state")))
            .env("FF_APP_DIR", s(self.app()))
            .env("FF_LOG_FILE", s(self.log()))
            .env("FF_HOST", "127.0.0.1")
            .env("FF_PORT", self.port.to_string())
            .env("FF_PM2", s(self.path("bin/pm2")))
            .env("FF_NPM", s(self.path("bin/npm")))
            .env(
                "FF_ROLLBACK_BACKUP_DIR",
                s(self.path("backups/pre-rollback")),
            )
            .env("FF_APP_BACKUPS", s(self.path("backups/app-backups")))
            .env("FF_MEMORY_BACKUPS", s(self.path("backups/memory-backups")))
            .env("FF_FAILED_DIR", s(self.path("srv")))
            .env("FF_INCIDENT_DIR", s(self.path("incidents")))
            .env("FF_PROBE_INTERVAL_MS", "100")
            // One GET of the health URL: a failure bound only (the app
            // answers or refuses at once), so a loaded machine does not
            // turn a slow answer into an outage.
            .env("FF_PROBE_TIMEOUT_MS", "30000")
            // How long a level waits for the app to be healthy: also how
            // long a level that cannot fix it waits before escalating.
            .env("FF_RESTART_TIMEOUT_MS", "10000")
            .env("FF_RELOAD_TIMEOUT_MS", "10000")
            .env("FF_START_TIMEOUT_MS", "15000")
            .env("FF_L1_STABLE_MS", "500")
            .env("FF_L2_STABLE_MS", "500")
            .env("FF_L3_STABLE_MS", "500")
            .env_remove("FF_DISABLE");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd
    }

    /// `rewind run --json` on the example runbook: (exit code, report, stderr).
    pub fn run_json(
        &self,
        args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> (i32, serde_json::Value, String) {
        let mut all = vec!["run", "--json"];
        all.extend_from_slice(args);
        let out = self.rewind(&all, extra_env);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "no JSON report ({e}); stdout: {}\nstderr: {stderr}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        (out.status.code().unwrap_or(-1), report, stderr)
    }

    /// The processes of this stand-in: the pid in the pid file and any
    /// process whose command line names this test's directory.
    fn own_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        if let Ok(p) = std::fs::read_to_string(self.path("run/app.pid"))
            && let Ok(p) = p.trim().parse::<u32>()
        {
            pids.push(p);
        }
        let marker = self.path("srv").display().to_string();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if pid == std::process::id() {
                    continue;
                }
                if let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline"))
                    && String::from_utf8_lossy(&raw).contains(&marker)
                {
                    pids.push(pid);
                }
            }
        }
        pids
    }
}

impl Drop for Stand {
    fn drop(&mut self) {
        for pid in self.own_pids() {
            if alive(pid) {
                kill_pid(pid);
            }
        }
    }
}
