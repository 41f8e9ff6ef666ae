//! The escalation-chain tests' side of a run that waits for a person: a
//! real webhook receiver on loopback (what `[[notify]]` posts to), the
//! `.waiting` file a gated run writes in its state dir, and the example
//! runbook copied next to the test with a `[[notify]]` target added.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a notice or a gate may take to show up on a loaded machine.
pub const NOTICE_PATIENCE: Duration = Duration::from_secs(120);

/// A generic JSON webhook target on 127.0.0.1: every POST body it gets,
/// in arrival order.
pub struct Receiver {
    pub port: u16,
    rx: Mutex<mpsc::Receiver<Value>>,
    got: Mutex<Vec<Value>>,
    server: std::sync::Arc<tiny_http::Server>,
}

impl Receiver {
    pub fn start() -> Self {
        let server = std::sync::Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let (tx, rx) = mpsc::channel();
        let s = server.clone();
        std::thread::spawn(move || {
            for mut req in s.incoming_requests() {
                let mut body = String::new();
                let _ = std::io::Read::read_to_string(req.as_reader(), &mut body);
                // Answer as a real receiver does, before anything else.
                let _ = req.respond(tiny_http::Response::empty(202));
                let v = serde_json::from_str(&body).unwrap_or(Value::String(body));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Self {
            port,
            rx: Mutex::new(rx),
            got: Mutex::new(Vec::new()),
            server,
        }
    }

    /// The `[[notify]]` table that sends every event here.
    pub fn notify_toml(&self) -> String {
        format!(
            "\n[[notify]]\nname = \"oncall\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{}/hook\"\ntimeout = \"10s\"\n",
            self.port
        )
    }

    /// The first notice of `event` (one already received, or the next to
    /// come), for `NOTICE_PATIENCE` at most.
    pub fn wait_for(&self, event: &str) -> Value {
        self.wait_for_where(event, |_| true)
    }

    /// The first notice of `event` that `pred` accepts.
    pub fn wait_for_where(&self, event: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + NOTICE_PATIENCE;
        loop {
            if let Some(v) = self
                .got
                .lock()
                .unwrap()
                .iter()
                .find(|v| v["event"] == event && pred(v))
            {
                return v.clone();
            }
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.lock().unwrap().recv_timeout(left) {
                Ok(v) => self.got.lock().unwrap().push(v),
                Err(_) => panic!(
                    "no {event:?} notice within {NOTICE_PATIENCE:?}; got {:#?}",
                    self.got.lock().unwrap()
                ),
            }
        }
    }

    /// The events of the notices received so far.
    pub fn events(&self) -> Vec<String> {
        let rx = self.rx.lock().unwrap();
        let mut got = self.got.lock().unwrap();
        while let Ok(v) = rx.try_recv() {
            got.push(v);
        }
        got.iter()
            .map(|v| v["event"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

/// The run waiting for a person in `state` (the runbook's state dir):
/// its id and the gate (step id or `escalate-to-N`) it waits on.
pub fn waiting(state: &Path) -> Option<(String, String)> {
    std::fs::read_dir(state.join("approvals"))
        .ok()?
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let run = name.strip_suffix(".waiting")?.to_string();
            let text = std::fs::read_to_string(e.path()).ok()?;
            Some((run, text.lines().next()?.trim().to_string()))
        })
}

/// Poll `check` until it gives a value: the one place these tests wait,
/// always for a condition (a file, a process state), never for a time;
/// `NOTICE_PATIENCE` is only the bound after which the test fails,
/// saying `what` it waited for.
pub fn poll<T>(what: impl Fn() -> String, mut check: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + NOTICE_PATIENCE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < end, "{} after {NOTICE_PATIENCE:?}", what());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait for a run in `state` to wait for a person; its id and gate.
pub fn wait_for_gate(state: &Path) -> (String, String) {
    poll(
        || format!("no run waits for an approval in {}", state.display()),
        || waiting(state),
    )
}

/// Wait for a run in `state` to wait on `gate` (after an earlier gate was
/// answered): its id.
pub fn wait_for_gate_named(state: &Path, gate: &str) -> String {
    poll(
        || {
            format!(
                "no run waits on {gate:?} in {} (waiting: {:?})",
                state.display(),
                waiting(state)
            )
        },
        || {
            waiting(state)
                .filter(|(_, g)| g == gate)
                .map(|(run, _)| run)
        },
    )
}

/// The example runbook at `example` copied into `dir` with `extra`
/// appended; its relative paths (the component, the stand-in's scripts)
/// made absolute, since the copy no longer sits next to them.
pub fn runbook_copy(example: &Path, dir: &Path, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(example).unwrap();
    let base = example.parent().unwrap().canonicalize().unwrap();
    let base = base.display();
    let text = text
        .replace("\"../", &format!("\"{base}/../"))
        .replace("\"./", &format!("\"{base}/"))
        .replace("\"standin/", &format!("\"{base}/standin/"));
    let path = dir.join("rewind-escalation.toml");
    std::fs::write(&path, format!("{text}\n{extra}")).unwrap();
    path
}

/// The journal lines of the runs in `state`.
pub fn journal(state: &Path) -> String {
    let mut out = String::new();
    if let Ok(d) = std::fs::read_dir(state.join("runs")) {
        let mut files: Vec<PathBuf> = d.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            out.push_str(&std::fs::read_to_string(&f).unwrap_or_default());
        }
    }
    out
}

/// The journal's events, in order.
pub fn events(state: &Path) -> Vec<Value> {
    journal(state)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The steps that ended, in order, with their status.
pub fn ended(state: &Path) -> Vec<(String, String)> {
    events(state)
        .iter()
        .filter(|e| e["event"] == "step-end")
        .map(|e| {
            (
                e["step"].as_str().unwrap_or_default().to_string(),
                e["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Whether any step with this id started.
pub fn started(state: &Path, step: &str) -> bool {
    events(state)
        .iter()
        .any(|e| e["event"] == "step-start" && e["step"] == step)
}

/// The levels the journal shows planned, in order.
pub fn levels(state: &Path) -> Vec<u64> {
    events(state)
        .iter()
        .filter(|e| e["event"] == "plan")
        .filter_map(|e| e["level"].as_u64())
        .collect()
}

/// `rewind approve|deny [--step STEP]` from another process: its output.
pub fn answer(mut cmd: std::process::Command) -> std::process::Output {
    let out = cmd.stdin(std::process::Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What an `approval-needed` notice must say: this run, this plugin, this
/// gate, and how to answer.
pub fn assert_asked(notice: &Value, run: &str, plugin: &str, gate: &str) {
    assert_eq!(notice["event"], "approval-needed", "{notice:#}");
    assert_eq!(notice["run_id"], run, "{notice:#}");
    assert_eq!(notice["details"]["plugin"], plugin, "{notice:#}");
    assert_eq!(notice["details"]["step"], gate, "{notice:#}");
    assert_eq!(notice["details"]["effect"], "destructive", "{notice:#}");
    let summary = notice["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(&format!("rewind approve {run}")) && summary.contains("rewind deny"),
        "{notice:#}"
    );
}

/// Wait for `run` to end on its own; a run that starts waiting for a
/// person in `state` instead fails the test at once.
pub fn ends_without_waiting(run: &mut std::process::Child, state: &Path) {
    poll(
        || "the run neither ended nor waited".to_string(),
        || {
            if run.try_wait().unwrap().is_some() {
                return Some(());
            }
            if let Some(w) = waiting(state) {
                panic!("the run waits for a person ({w:?}) instead of stopping");
            }
            None
        },
    )
}
