//! A local stand-in for AIDIS: a real git checkout in a temporary directory
//! whose `refactor/phase-0-baseline` branch serves healthy endpoints and
//! whose `phase-4` branch serves 500s on `/healthz /readyz /livez`; real
//! python3 HTTP servers on free loopback ports (MCP server, HTTP-MCP bridge,
//! frontend, backend API), started and stopped by the checkout's own
//! `start-aidis.sh` / `stop-aidis.sh` / `restart-aidis.sh` / `bin/npm`; a
//! private PostgreSQL with the `aidis_production` tables; and a spawner of
//! runaway `concurrently` processes. Every process it runs has the
//! checkout's path on its command line; all of them are killed by pid when
//! it is dropped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::postgres::PgServer;
use crate::util::*;

pub const BASELINE: &str = "refactor/phase-0-baseline";
pub const PHASE4: &str = "phase-4";
pub const DB: &str = "aidis_production";

/// One python file for every service; what it serves comes from its path.
const SERVICE_PY: &str = r#"#!/usr/bin/env python3
"""AIDIS stand-in service for rewind's tests: what it serves comes from its path."""
import json, os, signal, subprocess, threading, time, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HEALTH_STATUS = 200
DELAY_MS = 0
HANG = False

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(HERE)
while not os.path.exists(os.path.join(ROOT, "start-aidis.sh")):
    ROOT = os.path.dirname(ROOT)
ROLE = {
    "src/server.py": "mcp",
    "claude-http-mcp-bridge.py": "bridge",
    "frontend/react-scripts.py": "frontend",
    "backend/server.py": "backend",
}[os.path.relpath(HERE, ROOT)]
ENV = {}
with open(os.path.join(ROOT, "config", "stand-in.env")) as f:
    for line in f:
        k, _, v = line.strip().partition("=")
        if k:
            ENV[k] = v


def db_ok():
    try:
        r = subprocess.run(
            [ENV["PSQL"], "-h", ENV["PGHOST"], "-p", ENV["PGPORT"], "-U", ENV["PGUSER"],
             "-d", ENV["PGDATABASE"], "-X", "-w", "-Atc", "SELECT 1"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        return r.returncode == 0
    except Exception:
        return False


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        self.route("POST")

    def route(self, method):
        p = self.path.split("?")[0]
        if ROLE == "mcp":
            if HANG and p in ("/healthz", "/readyz", "/livez"):
                # A hung service: the connection is accepted, no answer comes.
                time.sleep(3600)
            if p in ("/healthz", "/livez"):
                time.sleep(DELAY_MS / 1000)
                ok = HEALTH_STATUS == 200
                return self.reply(HEALTH_STATUS, {"status": "healthy" if ok else "unhealthy"})
            if p == "/readyz":
                if HEALTH_STATUS != 200:
                    return self.reply(HEALTH_STATUS, {"status": "unhealthy"})
                if db_ok():
                    return self.reply(200, {"status": "ready", "database": "connected"})
                return self.reply(503, {"status": "not ready", "database": "disconnected"})
            if p == "/mcp/tools/aidis_ping":
                try:
                    url = "http://127.0.0.1:%s/ping" % ENV["BRIDGE_PORT"]
                    with urllib.request.urlopen(url, timeout=30) as r:
                        return self.reply(200, {"success": True, "result": json.loads(r.read())})
                except Exception as e:
                    return self.reply(502, {"success": False, "error": "bridge: %s" % e})
        elif ROLE == "bridge" and p == "/ping":
            return self.reply(200, {"pong": True})
        elif ROLE == "frontend" and p == "/":
            return self.reply(200, {"app": "aidis-frontend"})
        elif ROLE == "backend":
            if p == "/health":
                return self.reply(200, {"status": "ok"})
            if p == "/admin/graceful-shutdown" and method == "POST":
                # Stopping: a new backend may be started at once.
                try:
                    os.remove(os.path.join(ROOT, "run", "backend.pid"))
                except OSError:
                    pass
                self.reply(202, {"status": "shutting down"})
                threading.Thread(target=lambda: (time.sleep(0.1), os._exit(0))).start()
                return
        self.reply(404, {"error": "not found"})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    port = int(ENV[ROLE.upper() + "_PORT"])
    deadline = time.time() + 60
    while True:
        try:
            srv = Server(("127.0.0.1", port), Handler)
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
    pid_file = os.path.join(ROOT, "run", ROLE + ".pid")
    os.makedirs(os.path.dirname(pid_file), exist_ok=True)
    with open(pid_file + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(pid_file + ".tmp", pid_file)
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    srv.serve_forever()


main()
"#;

const SERVICES_SH: &str = r#"# Shared by the stand-in's scripts (sourced from the checkout's root).
alive() {
  [ -r "/proc/$1/stat" ] && [ "$(sed 's/^.*) //' "/proc/$1/stat" | cut -c1)" != Z ]
}
start_service() {
  local name=$1 script=$2 pid
  if [ -f "run/$name.pid" ] && pid=$(cat "run/$name.pid") && [ -n "$pid" ] && alive "$pid"; then
    echo "$name already running (pid $pid)"
    return 0
  fi
  # $script may carry arguments.
  python3 "$ROOT/"$script >> "logs/$name.log" 2>&1 < /dev/null &
  echo $! > "run/$name.pid"
  echo "started $name (pid $!)"
}
"#;

const START_SH: &str = r#"#!/bin/bash
# AIDIS stand-in: start the MCP server and the HTTP-MCP bridge.
set -e
ROOT="$(cd "$(dirname "$0")" && pwd)"
cd "$ROOT"
mkdir -p run logs
. lib/services.sh
start_service mcp src/server.py
start_service bridge claude-http-mcp-bridge.py
"#;

const STOP_SH: &str = r#"#!/bin/bash
# AIDIS stand-in: stop what start-aidis.sh started, by pid file.
ROOT="$(cd "$(dirname "$0")" && pwd)"
cd "$ROOT"
. lib/services.sh
n=0
for name in mcp bridge; do
  f="run/$name.pid"
  [ -e "$f" ] || continue
  pid=$(cat "$f")
  rm -f "$f"
  [ -n "$pid" ] && alive "$pid" || continue
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 100); do alive "$pid" || break; sleep 0.05; done
  alive "$pid" && kill -9 "$pid" 2>/dev/null
  n=$((n + 1))
done
echo "stopped $n services"
"#;

const RESTART_SH: &str = r#"#!/bin/bash
# AIDIS stand-in: stop, then start, then wait (at most 60 s) until the MCP
# server listens again, so that "restarted" means it is serving (whatever
# it serves: phase-4 answers 500).
ROOT="$(cd "$(dirname "$0")" && pwd)"
"$ROOT/stop-aidis.sh" && "$ROOT/start-aidis.sh" || exit
port=$(sed -n 's/^MCP_PORT=//p' "$ROOT/config/stand-in.env")
for _ in $(seq 1200); do
  (: < "/dev/tcp/127.0.0.1/$port") 2>/dev/null && exit 0
  sleep 0.05
done
echo "restart: the MCP server does not listen on port $port after 60 s" >&2
exit 1
"#;

const NPM: &str = r#"#!/bin/bash
# Stand-in for `npm run dev` (the command services, frontend and backend,
# under `concurrently`) and `npm run dev:backend`.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
mkdir -p run logs
. lib/services.sh
case "$1 $2" in
  "run dev") start_service dev "concurrently.py --dev frontend/react-scripts.py backend/server.py" ;;
  "run dev:backend") start_service backend backend/server.py ;;
  *) echo "usage: npm run dev|dev:backend" >&2; exit 1 ;;
esac
"#;

const NODE: &str = r#"#!/bin/bash
# Stand-in for node: the stand-in's services are python scripts.
exec python3 "$@"
"#;

/// `ps aux` for machines without procps: pid and command line of every
/// process, from /proc.
const PS: &str = r#"#!/bin/bash
# Stand-in for `ps aux` where procps is not installed.
echo "PID COMMAND"
for p in /proc/[0-9]*; do
  [ -r "$p/cmdline" ] || continue
  cmd=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)
  [ -n "$cmd" ] && echo "${p#/proc/} $cmd"
done
"#;

const CONCURRENTLY_PY: &str = r#"#!/usr/bin/env python3
"""Stand-in for `concurrently`. `concurrently.py --dev SCRIPT...` runs the
command services (what `npm run dev` starts) and stops them when it is
stopped; `concurrently.py N` is a runaway that starts N idle children."""
import os, signal, subprocess, sys

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(HERE)
args = sys.argv[1:]
if args == ["--child"]:
    while True:
        signal.pause()
if args[:1] == ["--dev"]:
    cmds = [[sys.executable, os.path.join(ROOT, p)] for p in args[1:]]
else:
    cmds = [[sys.executable, HERE, "--child"]] * int(args[0])
kids = [subprocess.Popen(c, stdin=subprocess.DEVNULL) for c in cmds]


def stop(*_):
    for k in kids:
        try:
            k.terminate()
        except Exception:
            pass
    for k in kids:
        try:
            k.wait(timeout=5)
        except Exception:
            k.kill()
    os._exit(0)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
while True:
    signal.pause()
"#;

pub struct Ports {
    pub frontend: u16,
    pub backend: u16,
    pub mcp: u16,
    pub bridge: u16,
}

pub struct StandIn {
    pub dir: tempfile::TempDir,
    /// The AIDIS checkout: `<dir>/aidis`.
    pub root: PathBuf,
    pub ports: Ports,
    pub pg: PgServer,
    spawners: Vec<Proc>,
}

fn sh(cwd: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn write(path: &Path, body: &str, exec: bool) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
    if exec {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// Pids of live processes whose command line contains `pattern`.
pub fn pids_matching(pattern: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut out: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && alive(pid))
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(pattern)
                })
                .unwrap_or(false)
        })
        .collect();
    out.sort_unstable();
    out
}

impl StandIn {
    /// The checkout with both branches, the database with its data, and
    /// every service running, on `branch`; `phase-4` answers 500 on
    /// `/healthz /readyz /livez`.
    pub fn new(branch: &str) -> Self {
        Self::build(
            branch,
            ("HEALTH_STATUS = 200", "HEALTH_STATUS = 500".into()),
        )
    }

    /// Like `new`, but `phase-4` answers `/healthz` and `/livez` after
    /// `delay_ms` (a performance regression) instead of failing.
    pub fn slow(branch: &str, delay_ms: u64) -> Self {
        Self::build(branch, ("DELAY_MS = 0", format!("DELAY_MS = {delay_ms}")))
    }

    /// Like `new`, but `phase-4`'s MCP server hangs on `/healthz /readyz
    /// /livez`: it accepts the connection and never answers.
    pub fn hung(branch: &str) -> Self {
        Self::build(branch, ("HANG = False", "HANG = True".into()))
    }

    fn build(branch: &str, phase4: (&str, String)) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rewind-aidis-")
            .tempdir()
            .unwrap();
        let root = dir.path().join("aidis");
        let pg = PgServer::start();
        pg.create_db(DB);
        pg.psql_in(
            DB,
            "CREATE TABLE contexts (id serial PRIMARY KEY, content text NOT NULL);
             CREATE TABLE technical_decisions (id serial PRIMARY KEY, title text NOT NULL);
             INSERT INTO contexts (content) VALUES ('phase 4 plan'), ('service de-duplication'), ('oracle refactor');
             INSERT INTO technical_decisions (title) VALUES ('one MCP server'), ('bridge over HTTP');",
        );
        let ports = Ports {
            frontend: free_port(),
            backend: free_port(),
            mcp: free_port(),
            bridge: free_port(),
        };
        let s = Self {
            dir,
            root,
            ports,
            pg,
            spawners: Vec::new(),
        };
        s.write_checkout(phase4);
        s.checkout(branch);
        s.start_all();
        s
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn root_str(&self) -> String {
        self.root.display().to_string()
    }

    /// A pattern unique to this stand-in: `<root>/<rel>`.
    pub fn pat(&self, rel: &str) -> String {
        format!("{}/{rel}", self.root_str())
    }

    fn git(&self, args: &[&str]) -> String {
        let mut full = vec![
            "-c",
            "user.name=AIDIS Team",
            "-c",
            "user.email=aidis@example.invalid",
            "-c",
            "commit.gpgsign=false",
        ];
        full.extend_from_slice(args);
        sh(&self.root, "git", &full)
    }

    fn write_checkout(&self, phase4: (&str, String)) {
        std::fs::create_dir_all(&self.root).unwrap();
        for rel in [
            "src/server.py",
            "claude-http-mcp-bridge.py",
            "frontend/react-scripts.py",
            "backend/server.py",
        ] {
            write(&self.path(rel), SERVICE_PY, true);
        }
        write(&self.path("lib/services.sh"), SERVICES_SH, false);
        write(&self.path("start-aidis.sh"), START_SH, true);
        write(&self.path("stop-aidis.sh"), STOP_SH, true);
        write(&self.path("restart-aidis.sh"), RESTART_SH, true);
        write(&self.path("bin/npm"), NPM, true);
        write(&self.path("bin/node"), NODE, true);
        write(&self.path("bin/ps"), PS, true);
        write(&self.path("concurrently.py"), CONCURRENTLY_PY, true);
        write(
            &self.path("config/aidis.json"),
            "{\n  \"phase\": 4,\n  \"services\": [\"mcp\", \"bridge\", \"frontend\", \"backend\"]\n}\n",
            false,
        );
        write(
            &self.path(".gitignore"),
            "/logs/\n/backups/\n/run/\n/config/stand-in.env\n",
            false,
        );
        let env = format!(
            "FRONTEND_PORT={}\nBACKEND_PORT={}\nMCP_PORT={}\nBRIDGE_PORT={}\nPSQL={}\nPGHOST={}\nPGPORT={}\nPGUSER={}\nPGDATABASE={DB}\n",
            self.ports.frontend,
            self.ports.backend,
            self.ports.mcp,
            self.ports.bridge,
            self.pg.bin("psql").display(),
            self.pg.host,
            self.pg.port,
            self.pg.user,
        );
        write(&self.path("config/stand-in.env"), &env, false);
        std::fs::create_dir_all(self.path("logs")).unwrap();
        std::fs::write(self.path("logs/aidis.log"), "AIDIS started\n").unwrap();

        self.git(&["init", "-q"]);
        self.git(&["checkout", "-q", "-b", BASELINE]);
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", "Phase 0 baseline"]);
        self.git(&["checkout", "-q", "-b", PHASE4]);
        let server = std::fs::read_to_string(self.path("src/server.py")).unwrap();
        std::fs::write(
            self.path("src/server.py"),
            server.replace(phase4.0, &phase4.1),
        )
        .unwrap();
        self.git(&["commit", "-q", "-am", "Phase 4: service de-duplication"]);
    }

    pub fn checkout(&self, branch: &str) {
        self.git(&["checkout", "-q", branch]);
    }

    /// `start-aidis.sh` and `npm run dev`, as the team would; waits until
    /// every endpoint answers.
    pub fn start_all(&self) {
        sh(
            &self.root,
            &self.path("start-aidis.sh").display().to_string(),
            &[],
        );
        sh(
            &self.root,
            &self.path("bin/npm").display().to_string(),
            &["run", "dev"],
        );
        // Any answer will do (a hung phase-4 never answers /livez).
        for (port, path) in [
            (self.ports.mcp, "/"),
            (self.ports.bridge, "/ping"),
            (self.ports.frontend, "/"),
            (self.ports.backend, "/health"),
        ] {
            assert!(
                wait_until(crate::util::PATIENCE, || self.get(port, path).is_some()),
                "stand-in service on port {port} did not come up"
            );
        }
    }

    pub fn get(&self, port: u16, path: &str) -> Option<u16> {
        reqwest::blocking::Client::new()
            .get(format!("http://127.0.0.1:{port}{path}"))
            .timeout(crate::util::PATIENCE)
            .send()
            .ok()
            .map(|r| r.status().as_u16())
    }

    pub fn ping(&self) -> Option<u16> {
        reqwest::blocking::Client::new()
            .post(format!(
                "http://127.0.0.1:{}/mcp/tools/aidis_ping",
                self.ports.mcp
            ))
            .header("Content-Type", "application/json")
            .body("{}")
            .timeout(crate::util::PATIENCE)
            .send()
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// The statuses of the five health endpoints and the MCP tool.
    pub fn statuses(&self) -> Vec<(String, Option<u16>)> {
        let mut v: Vec<(String, Option<u16>)> = [
            (self.ports.frontend, "/"),
            (self.ports.backend, "/health"),
            (self.ports.mcp, "/healthz"),
            (self.ports.mcp, "/readyz"),
            (self.ports.mcp, "/livez"),
        ]
        .into_iter()
        .map(|(port, path)| (format!(":{port}{path}"), self.get(port, path)))
        .collect();
        v.push(("ping".into(), self.ping()));
        v
    }

    pub fn all_healthy(&self) -> bool {
        self.statuses().iter().all(|(_, s)| *s == Some(200))
    }

    /// The branch HEAD is on.
    pub fn head(&self) -> String {
        self.git(&["rev-parse", "--abbrev-ref", "HEAD"])
    }

    pub fn rev(&self, r: &str) -> String {
        self.git(&["rev-parse", r])
    }

    pub fn refs(&self, kind: &str, prefix: &str) -> Vec<String> {
        let out = self.git(&[kind, "--list", &format!("{prefix}*")]);
        out.lines()
            .map(|l| l.trim_start_matches(['*', ' ']).trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// The pid a service wrote to `run/<name>.pid`.
    pub fn pid(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.path(&format!("run/{name}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Every live process of this stand-in.
    pub fn pids(&self) -> Vec<u32> {
        pids_matching(&format!("{}/", self.root_str()))
    }

    /// Live processes whose command line contains `<root>/<rel>`.
    pub fn pids_of(&self, rel: &str) -> Vec<u32> {
        pids_matching(&self.pat(rel))
    }

    /// Start `concurrently.py n`: n + 1 runaway processes (and the
    /// command services' `concurrently --dev` is one more).
    pub fn runaway(&mut self, n: usize) -> u32 {
        let p = Proc::spawn(
            Command::new("python3")
                .arg(self.path("concurrently.py"))
                .arg(n.to_string())
                .current_dir(&self.root)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let pid = p.pid();
        self.spawners.push(p);
        let pat = self.pat("concurrently.py --child");
        assert!(
            wait_until(crate::util::PATIENCE, || pids_matching(&pat).len() >= n),
            "the spawner started {} of {n} processes",
            pids_matching(&pat).len()
        );
        pid
    }

    pub fn db_counts(&self) -> (String, String) {
        (
            self.pg.psql_in(DB, "SELECT count(*) FROM contexts"),
            self.pg
                .psql_in(DB, "SELECT count(*) FROM technical_decisions"),
        )
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    pub fn files(&self, rel_dir: &str, prefix: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.path(rel_dir))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .collect();
        v.sort();
        v
    }

    /// `ps`, or the checkout's stand-in where procps is not installed.
    pub fn ps(&self) -> String {
        if which::which("ps").is_ok() {
            "ps".into()
        } else {
            self.pat("bin/ps")
        }
    }

    /// The plugin's config for this stand-in: its ports, its database, its
    /// scripts, patterns unique to it, and short waits.
    pub fn config(&self) -> Value {
        let bin = |p: &str| self.pg.bin(p).display().to_string();
        json!({
            "root": self.root_str(),
            "host": "127.0.0.1",
            "frontend_port": self.ports.frontend,
            "backend_port": self.ports.backend,
            "mcp_port": self.ports.mcp,
            // Failure bounds: one GET, and how long a (re)started service
            // may take, on a loaded machine.
            "response_timeout_ms": 30000,
            "startup_timeout_ms": 20000,
            "poll_interval_ms": 100,
            "stop_grace_ms": 3000,
            "mesh_grace_ms": 2000,
            "command_timeout_ms": 30000,
            "perf_samples": 2,
            // Latency is judged on single answers (the validation's GET
            // /healthz and tool call): a loaded machine must not make a
            // healthy stand-in "slow". The slow-phase-4 test sets its own.
            "max_latency_ms": 20000,
            "warn_latency_ms": 10000,
            // The machine is shared: its memory and load are not the
            // stand-in's doing.
            "max_memory_mb": 1.0e9,
            "warn_memory_mb": 1.0e9,
            "min_available_mb": 1,
            "max_load": 1.0e6,
            "process_patterns": [format!("{}/", self.root_str())],
            "server_pattern": self.pat("src/server.py"),
            "stop_patterns": [self.pat("concurrently.py"), self.pat("frontend/react-scripts.py")],
            "cleanup_patterns": [
                self.pat("src/server.py"),
                self.pat("concurrently.py"),
                self.pat("frontend/react-scripts.py"),
                self.pat("claude-http-mcp-bridge.py"),
            ],
            "bridge_pattern": self.pat("claude-http-mcp-bridge.py"),
            "mesh_stop_patterns": [self.pat("concurrently.py")],
            "dev_command": ["./bin/npm", "run", "dev"],
            "backend_start_command": ["./bin/npm", "run", "dev:backend"],
            "bridge_start_command": ["./bin/node", self.pat("claude-http-mcp-bridge.py")],
            "ps_command": [self.ps(), "aux", "--sort=-%mem"],
            "db_status_command": [bin("pg_isready"), "-h", self.pg.host, "-p", self.pg.port.to_string()],
            "db_restart_command": [self.pg.restart_script().display().to_string()],
            "db_host": self.pg.host,
            "db_port": self.pg.port,
            "db_name": DB,
            "db_user": self.pg.user,
            "psql": bin("psql"),
            "pg_dump": bin("pg_dump"),
            "db_timeout_ms": 15000,
            // The stand-in's PostgreSQL has no pgvector.
            "db_extension": "plpgsql",
        })
    }

    /// Exactly the grants the plugin needs with `config()`.
    pub fn grants(&self) -> Value {
        let bin = |p: &str| self.pg.bin(p).display().to_string();
        json!({
            "http": [
                format!("http://127.0.0.1:{}/", self.ports.frontend),
                format!("http://127.0.0.1:{}/", self.ports.backend),
                format!("http://127.0.0.1:{}/", self.ports.mcp),
            ],
            "tcp": [
                format!("127.0.0.1:{}", self.ports.frontend),
                format!("127.0.0.1:{}", self.ports.backend),
                format!("127.0.0.1:{}", self.ports.mcp),
                format!("{}:{}", self.pg.host, self.pg.port),
            ],
            "exec": [
                self.pat("stop-aidis.sh"),
                self.pat("start-aidis.sh"),
                self.pat("restart-aidis.sh"),
                self.pat("bin/npm"),
                self.pat("bin/node"),
                bin("pg_isready"),
                self.pg.restart_script().display().to_string(),
                self.ps(),
                "git",
                bin("psql"),
                bin("pg_dump"),
            ],
            "signal": [
                self.pat("src/server.py"),
                self.pat("concurrently.py"),
                self.pat("frontend/react-scripts.py"),
                self.pat("claude-http-mcp-bridge.py"),
            ],
            "read": [self.root_str()],
            "write": [self.pat("logs"), self.pat("backups")],
        })
    }

    /// A runbook in the test's directory (outside the checkout) running the
    /// plugin on this stand-in with `config()` changed by `tweak`.
    pub fn runbook(&self, tweak: impl FnOnce(&mut Value)) -> PathBuf {
        let mut config = self.config();
        tweak(&mut config);
        let doc = json!({
            "name": "aidis",
            "state_dir": self.dir.path().join("state").display().to_string(),
            "limits": {"cpu": "10s", "memory": "128MiB"},
            "plugin": [{
                "name": "aidis",
                "component": AIDIS,
                "config": config,
                "grants": self.grants(),
            }],
        });
        let path = self.dir.path().join("rewind.toml");
        std::fs::write(&path, toml::to_string(&doc).unwrap()).unwrap();
        path
    }

    /// Like `runbook`, with the grants changed by `grants` too.
    pub fn runbook_granting(
        &self,
        tweak: impl FnOnce(&mut Value),
        grants: impl FnOnce(&mut Value),
    ) -> PathBuf {
        let path = self.runbook(tweak);
        let mut doc: Value = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        grants(&mut doc["plugin"][0]["grants"]);
        std::fs::write(&path, toml::to_string(&doc).unwrap()).unwrap();
        path
    }

    /// An executable script in the test's directory (outside the checkout).
    pub fn script(&self, name: &str, body: &str) -> String {
        let path = self.dir.path().join("bin").join(name);
        write(&path, body, true);
        path.display().to_string()
    }

    /// Every file rewind wrote under the state directory, concatenated
    /// (the journal among them).
    pub fn state_text(&self) -> String {
        let mut out = String::new();
        let mut dirs = vec![self.dir.path().join("state")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if let Ok(t) = std::fs::read_to_string(&p) {
                    out.push_str(&t);
                }
            }
        }
        out
    }

    /// Run the CLI with `args` and then the runbook path.
    pub fn rewind(&self, runbook: &Path, args: &[&str]) -> std::process::Output {
        Command::new(REWIND)
            .args(crate::cli::approving(args))
            .arg(runbook)
            .current_dir(self.dir.path())
            .env("REWIND_CACHE_DIR", cache_dir())
            .env("REWIND_LOCK_DIR", self.dir.path().join("locks"))
            .env_remove("REWIND_LOG")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `rewind run --json` (plus args): exit code, report, text on stderr.
    pub fn run_json(&self, runbook: &Path, args: &[&str]) -> (i32, Value, String) {
        let mut all = vec!["run", "--json"];
        all.extend_from_slice(args);
        let out = self.rewind(runbook, &all);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "no JSON report ({e}); stdout: {}\nstderr: {stderr}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        (out.status.code().unwrap_or(-1), report, stderr)
    }

    /// Every file of the checkout (with `.git`), for before/after checks.
    pub fn tree(&self) -> Vec<(PathBuf, Vec<u8>)> {
        tree(&self.root)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.spawners.clear();
        // Everything this stand-in started has its checkout's path on its
        // command line (services, spawned children, restarted bridges).
        // Until none is left (a spawner may start more while it dies).
        wait_until(crate::util::PATIENCE, || {
            let pids = self.pids();
            for pid in &pids {
                kill_pid(*pid);
            }
            pids.is_empty()
        });
    }
}
