//! Helpers shared by the end-to-end tests: a temporary workspace per test,
//! runbook writing, running the real `rewind` binary, loopback HTTP servers
//! and processes that the test itself starts (and stops, by pid).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

#[allow(unused_imports)]
pub use rewind_test_artifacts::{
    ABATHUR, AIDIS, AIVILLAGE, DEMO, FEATURE_FLAGS, FIXTURE, FIXTURE_V2, FUTURE, PAST, QUEUE_APP,
};

pub const REWIND: &str = env!("CARGO_BIN_EXE_rewind");
pub const DEMO_SERVICE: &str = env!("CARGO_BIN_EXE_rewind-demo-service");

/// Compiled components are cached here for the whole test run, so each
/// plugin is compiled by Cranelift once.
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rewind-cache")
}

/// One test's private directory, removed at the end.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("rewind-e2e-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Write a runbook into the test dir and return its path.
    pub fn runbook(&self, text: &str) -> PathBuf {
        let p = self.join("rewind.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Run the real CLI with the shared compiled cache.
    pub fn rewind(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// The CLI in this sandbox: the shared compiled cache, the sandbox's
    /// own lock dir, no terminal on stdin.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(REWIND);
        c.args(args)
            .current_dir(self.path())
            .env("REWIND_CACHE_DIR", cache_dir())
            .env("REWIND_LOCK_DIR", self.path().join("state/locks"))
            .env_remove("REWIND_LOG")
            .stdin(Stdio::null());
        c
    }

    /// The real CLI started in the background (stdin closed: no terminal),
    /// stdout piped, stderr dropped.
    #[allow(dead_code)] // used by the e2e tests only
    pub fn spawn(&self, args: &[&str]) -> Proc {
        Proc::spawn(
            self.command(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        )
    }

    /// `rewind run --json` (plus args); returns the exit code and report.
    pub fn run_json(&self, args: &[&str]) -> (i32, Value, String) {
        let mut all = vec!["run", "--json"];
        all.extend_from_slice(args);
        let out = self.rewind(&all);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "no JSON report ({e}); stdout: {}\nstderr: {stderr}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        (out.status.code().unwrap_or(-1), report, stderr)
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A runbook running the fixture plugin with the given config and grants
/// (both JSON objects), rendered as TOML.
pub fn fixture_runbook(config: &Value, grants: &Value) -> String {
    runbook_with(FIXTURE, config, grants)
}

pub fn runbook_with(component: &str, config: &Value, grants: &Value) -> String {
    let mut config = config.clone();
    strip_nulls(&mut config);
    let doc = serde_json::json!({
        "name": "fixture",
        "state_dir": "state",
        "limits": {"cpu": "2s", "memory": "64MiB"},
        "plugin": [{"name": "fx", "component": component, "config": config, "grants": grants}],
    });
    toml::to_string(&doc).unwrap()
}

/// The first plugin's report in a run report.
#[allow(dead_code)] // used by the plugin tests
pub fn plugin(report: &Value) -> &Value {
    &report["plugins"][0]
}

/// The levels the first plugin ran, in order.
#[allow(dead_code)] // used by the plugin tests
pub fn level_numbers(report: &Value) -> Vec<u64> {
    plugin(report)["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["level"].as_u64().unwrap())
        .collect()
}

/// (id, status, message) of a level's steps.
#[allow(dead_code)] // used by the plugin tests
pub fn steps(report: &Value, level: u64) -> Vec<(String, String, String)> {
    plugin(report)["levels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["level"] == level)
        .unwrap_or_else(|| panic!("no level {level}: {report:#}"))["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
                s["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The ids of `steps`.
#[allow(dead_code)] // used by the plugin tests
pub fn ids(steps: &[(String, String, String)]) -> Vec<&str> {
    steps.iter().map(|(i, _, _)| i.as_str()).collect()
}

/// TOML has no null: a missing key is how an `option` says none.
pub fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(list) => list.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// The results of every step in a report, by step id: the value each host
/// call returned, as `{"Ok": ..}` or `{"Err": ..}`.
pub fn step_results(report: &Value) -> Vec<(String, Value, bool)> {
    let mut out = Vec::new();
    for p in report["plugins"].as_array().unwrap() {
        for l in p["levels"].as_array().unwrap() {
            for s in l["steps"].as_array().unwrap() {
                let msg = s["message"].as_str().unwrap_or_default();
                let v = serde_json::from_str(msg).unwrap_or(Value::String(msg.to_string()));
                out.push((
                    s["id"].as_str().unwrap().to_string(),
                    v,
                    s["status"] == "ok",
                ));
            }
        }
    }
    out
}

pub fn step<'a>(results: &'a [(String, Value, bool)], id: &str) -> &'a Value {
    &results
        .iter()
        .find(|(i, _, _)| i == id)
        .unwrap_or_else(|| panic!("no step {id} in {results:?}"))
        .1
}

/// The `denied` error of a step, if it was denied.
pub fn denial(v: &Value) -> Option<&Value> {
    v.get("Err")?.get("Denied")
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What a test HTTP server answers on a path.
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn ok(body: &str) -> Self {
        Self {
            status: 200,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
    pub fn status(status: u16) -> Self {
        Self {
            status,
            body: format!("status {status}"),
            delay: Duration::ZERO,
        }
    }
}

/// Per path, the statuses still to answer.
type Scripts = Vec<(String, std::collections::VecDeque<u16>)>;

/// A loopback HTTP server whose answers the test scripts per path, which
/// remembers the requests it got.
pub struct Server {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<(String, String, String)>>>,
    pub routes: Arc<Mutex<Vec<(String, Reply)>>>,
    /// Statuses answered in turn on a path; the last one repeats.
    scripts: Arc<Mutex<Scripts>>,
    server: Arc<tiny_http::Server>,
}

impl Server {
    pub fn start() -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let routes: Arc<Mutex<Vec<(String, Reply)>>> = Arc::new(Mutex::new(Vec::new()));
        let scripts: Arc<Mutex<Scripts>> = Arc::new(Mutex::new(Vec::new()));
        for _ in 0..4 {
            let (server, requests, routes, scripts) = (
                server.clone(),
                requests.clone(),
                routes.clone(),
                scripts.clone(),
            );
            std::thread::spawn(move || {
                for mut req in server.incoming_requests() {
                    let mut body = String::new();
                    let _ = std::io::Read::read_to_string(req.as_reader(), &mut body);
                    let path = req.url().to_string();
                    requests
                        .lock()
                        .unwrap()
                        .push((req.method().to_string(), path.clone(), body));
                    let scripted = scripts
                        .lock()
                        .unwrap()
                        .iter_mut()
                        .find(|(p, _)| *p == path)
                        .and_then(|(_, q)| {
                            if q.len() > 1 {
                                q.pop_front()
                            } else {
                                q.front().copied()
                            }
                        });
                    let reply = routes
                        .lock()
                        .unwrap()
                        .iter()
                        .find(|(p, _)| path.starts_with(p.as_str()))
                        .map(|(_, r)| r.clone())
                        .unwrap_or(Reply::status(404));
                    let reply = scripted.map(Reply::status).unwrap_or(reply);
                    std::thread::sleep(reply.delay);
                    let _ = req.respond(
                        tiny_http::Response::from_string(reply.body).with_status_code(reply.status),
                    );
                }
            });
        }
        Self {
            port,
            requests,
            routes,
            scripts,
            server,
        }
    }

    pub fn route(&self, path: &str, reply: Reply) {
        let mut r = self.routes.lock().unwrap();
        r.retain(|(p, _)| p != path);
        r.insert(0, (path.to_string(), reply));
    }

    /// Answer these statuses on `path`, one per request; the last repeats.
    pub fn script(&self, path: &str, statuses: &[u16]) {
        self.scripts
            .lock()
            .unwrap()
            .push((path.to_string(), statuses.iter().copied().collect()));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn methods(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|(m, p, _)| format!("{m} {p}"))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

/// A child process this test started; killed by pid when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Self {
        Self(cmd.stdin(Stdio::null()).spawn().unwrap())
    }
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Wait for it to exit, collecting its piped output.
    pub fn output(&mut self) -> Output {
        let err = self.0.stderr.take();
        let reader = std::thread::spawn(move || {
            let mut b = Vec::new();
            if let Some(mut e) = err {
                let _ = std::io::Read::read_to_end(&mut e, &mut b);
            }
            b
        });
        let mut stdout = Vec::new();
        if let Some(mut o) = self.0.stdout.take() {
            let _ = std::io::Read::read_to_end(&mut o, &mut stdout);
        }
        let stderr = reader.join().unwrap();
        let status = self.0.wait().unwrap();
        Output {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether a pid is alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Pids of the live processes whose command line has an argument
/// containing `marker` (a tag unique to the test), this process excluded.
pub fn pids_with_arg(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || !alive(pid) {
            continue;
        }
        if let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && raw
                .split(|b| *b == 0)
                .any(|a| String::from_utf8_lossy(a).contains(marker))
        {
            out.push(pid);
        }
    }
    out
}

/// Kill a pid this test caused to exist (a daemon spawned through rewind).
pub fn kill_pid(pid: u32) {
    if pid > 1 && alive(pid) {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    }
}

/// How long a test waits for something that must happen: a failure bound
/// only (every wait ends as soon as its condition holds), generous enough
/// for a loaded 2-core machine. Use it for timeouts that only say "it is
/// broken" (HTTP, health waits, readiness); never as "surely done by now".
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Poll `f` until it holds, at most `timeout` (a failure bound: pass
/// `PATIENCE` unless the test measures the time itself).
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Every file under a directory with its contents, for before/after checks.
pub fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    fn walk(d: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                out.push((
                    p.clone(),
                    std::fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                ));
            } else if ft.is_dir() {
                out.push((p.clone(), b"<dir>".to_vec()));
                walk(&p, out);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    walk(dir, &mut out);
    out
}
