//! A private PostgreSQL server for one test: its own data directory in a
//! temporary directory, `initdb`, `postgres` on a free loopback port with
//! its socket in the temporary directory, stopped by pid when dropped. It
//! never touches the machine's own cluster or port 5432.
//!
//! `initdb` and `postgres` refuse to run as root; when the tests run as root
//! (as in CI), they run as the `postgres` OS user (`runuser -u postgres --`)
//! and the temporary directory is handed to that user. Clients (`psql`,
//! `pg_dump`) connect over TCP as the database superuser `postgres`, with
//! trust authentication, from any OS user.
//!
//! ```ignore
//! #[path = "../support/postgres.rs"]
//! mod postgres;
//! let pg = postgres::PgServer::start();
//! pg.create_db("app");
//! pg.psql_in("app", "CREATE TABLE t (x int); INSERT INTO t VALUES (1);");
//! assert_eq!(pg.psql_in("app", "SELECT count(*) FROM t"), "1");
//! ```

#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The OS user that runs the server when the tests run as root.
const OS_USER: &str = "postgres";

pub struct PgServer {
    /// `127.0.0.1`.
    pub host: String,
    pub port: u16,
    /// The database superuser (`postgres`).
    pub user: String,
    /// The temporary directory holding everything below; removed on drop.
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    /// The server's log (stdout and stderr).
    pub log_file: PathBuf,
    /// Where `initdb`, `postgres`, `pg_ctl`, `psql`, `pg_dump` are.
    pub bin_dir: PathBuf,
    /// True when server programs run through `runuser -u postgres --`.
    pub as_os_user: bool,
    child: Option<Child>,
}

/// The PostgreSQL programs' directory: `$REWIND_PG_BIN`, the newest
/// `/usr/lib/postgresql/<version>/bin`, `pg_config --bindir`, or the
/// directory of `initdb` in PATH.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("REWIND_PG_BIN") {
        return PathBuf::from(d);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if d.join("initdb").exists() {
            return d;
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for d in std::env::split_paths(&path) {
        if d.join("initdb").exists() {
            return d;
        }
    }
    panic!("PostgreSQL server programs (initdb, postgres) not found; set REWIND_PG_BIN");
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A directory every user can traverse, for the temporary directory.
fn traversable_temp_base() -> PathBuf {
    let ok = |p: &Path| {
        p.ancestors()
            .all(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
    };
    let t = std::env::temp_dir();
    if ok(&t) {
        return t;
    }
    for c in ["/tmp", "/var/tmp", "/dev/shm"] {
        if ok(Path::new(c)) {
            return PathBuf::from(c);
        }
    }
    t
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn send(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

impl PgServer {
    /// initdb a fresh cluster, start it on a free port, wait until it
    /// accepts connections.
    pub fn start() -> Self {
        let bin_dir = bin_dir();
        let as_os_user = is_root();
        let dir = tempfile::Builder::new()
            .prefix("rewind-pg-")
            .tempdir_in(traversable_temp_base())
            .unwrap();
        let data_dir = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir(&socket_dir).unwrap();
        let log_file = dir.path().join("postgres.log");
        File::create(&log_file).unwrap();
        if as_os_user {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let out = Command::new("chown")
                .args(["-R", &format!("{OS_USER}:")])
                .arg(dir.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "chown: {}", text(&out));
        }
        let mut pg = Self {
            host: "127.0.0.1".into(),
            port: 0,
            user: "postgres".into(),
            dir,
            data_dir,
            socket_dir,
            log_file,
            bin_dir,
            as_os_user,
            child: None,
        };
        let out = pg
            .server_cmd("initdb")
            .arg("-D")
            .arg(&pg.data_dir)
            .args([
                "-U",
                &pg.user,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", text(&out));
        // A port can be taken between choosing it and binding it: retry.
        for attempt in 0..5 {
            pg.port = free_port();
            let log = File::options().append(true).open(&pg.log_file).unwrap();
            let child = pg
                .server_cmd("postgres")
                .args(pg.server_args())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            pg.child = Some(child);
            if pg.wait_ready(Duration::from_secs(60)) {
                return pg;
            }
            pg.kill_server();
            if attempt == 4 {
                panic!(
                    "PostgreSQL did not start; log:\n{}",
                    std::fs::read_to_string(&pg.log_file).unwrap_or_default()
                );
            }
        }
        unreachable!()
    }

    /// `postgres` options: this port, the socket in the temporary
    /// directory, loopback only, no fsync (a test server).
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "-D".into(),
            self.data_dir.display().to_string(),
            "-p".into(),
            self.port.to_string(),
            "-k".into(),
            self.socket_dir.display().to_string(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            "fsync=off".into(),
            "-c".into(),
            "full_page_writes=off".into(),
        ]
    }

    /// A server program (`initdb`, `postgres`, `pg_ctl`), as the postgres
    /// OS user when running as root.
    pub fn server_cmd(&self, program: &str) -> Command {
        let prog = self.bin(program);
        if self.as_os_user {
            let mut c = Command::new("runuser");
            c.args(["-u", OS_USER, "--"]).arg(prog);
            c
        } else {
            Command::new(prog)
        }
    }

    pub fn bin(&self, program: &str) -> PathBuf {
        self.bin_dir.join(program)
    }

    /// `postgresql://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgresql://{}@{}:{}/{db}",
            self.user, self.host, self.port
        )
    }

    /// psql's connection arguments for `db`.
    pub fn conn_args(&self, db: &str) -> Vec<String> {
        vec![
            "-h".into(),
            self.host.clone(),
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            self.user.clone(),
            "-d".into(),
            db.into(),
        ]
    }

    /// Run SQL in `db`; its unaligned, tuples-only output, trimmed.
    pub fn try_psql_in(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin("psql"))
            .args(self.conn_args(db))
            .args(["-X", "-w", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(text(&out))
        }
    }

    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        self.try_psql_in(db, sql)
            .unwrap_or_else(|e| panic!("psql {sql:?} in {db}: {e}"))
    }

    /// Run SQL in the `postgres` database.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    pub fn create_db(&self, name: &str) {
        self.psql(&format!("CREATE DATABASE \"{name}\""));
    }

    /// Whether the server answers a query now.
    pub fn accepts(&self) -> bool {
        self.try_psql_in("postgres", "SELECT 1").is_ok()
    }

    fn wait_ready(&mut self, within: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < within {
            if self.accepts() {
                return true;
            }
            if let Some(c) = &mut self.child
                && c.try_wait().ok().flatten().is_some()
            {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The postmaster's pid, from `postmaster.pid` (also when something
    /// else, e.g. a plugin's restart command, started the server again).
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        (pid > 1 && pid_alive(pid)).then_some(pid)
    }

    /// Fast shutdown (SIGINT to the postmaster), KILL after 10 s; waits
    /// until it is gone.
    pub fn stop(&mut self) {
        if let Some(pid) = self.postmaster_pid() {
            send(pid, "INT");
            let start = Instant::now();
            while pid_alive(pid) && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if pid_alive(pid) {
                send(pid, "KILL");
            }
            let start = Instant::now();
            while pid_alive(pid) && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(mut c) = self.child.take() {
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn kill_server(&mut self) {
        if let Some(pid) = self.postmaster_pid() {
            send(pid, "KILL");
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A script that starts this server again (or restarts it), waiting
    /// until it accepts connections: what `systemctl restart postgresql`
    /// is on a real machine. Written into the temporary directory.
    pub fn restart_script(&self) -> PathBuf {
        let path = self.dir.path().join("restart-postgres.sh");
        let opts = self.server_args()[2..].join(" ");
        let pg_ctl = format!(
            "{} -D {} -l {} -w -t 30 -m fast -o '{opts}' restart",
            self.bin("pg_ctl").display(),
            self.data_dir.display(),
            self.log_file.display()
        );
        let line = if self.as_os_user {
            format!("exec runuser -u {OS_USER} -- {pg_ctl}")
        } else {
            format!("exec {pg_ctl}")
        };
        std::fs::write(&path, format!("#!/bin/sh\n{line}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}
