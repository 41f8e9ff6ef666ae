//! End-to-end tests of the aivillage plugin against a local stand-in.
//!
//! Each test builds an AIVillage tree in its own temporary directory
//! (`opt/aivillage` with `config/.env`, the four components' modules under
//! `core/`, unit files, scripts), starts the four services
//! (`examples/aivillage/standin/service.py`, one python3 HTTP server per
//! component on its own loopback port, started and stopped by pid file
//! through `examples/aivillage/standin/svc`), breaks it the way the runbook's
//! triggers describe (a deployment that leaves `*.backup` files behind),
//! and runs the real `rewind` binary on `examples/aivillage/rewind.toml`
//! pointed at the stand-in.

#[path = "../support/cli.rs"]
mod cli;
mod escalation;
#[allow(dead_code)]
#[path = "../e2e/util.rs"]
mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use util::*;

const COMPONENTS: [&str; 4] = ["gateway", "p2p", "agents", "rag"];

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/aivillage")
}

fn svc_path() -> PathBuf {
    example_dir().join("standin/svc")
}

/// The module file of each component, as the runbook names them.
fn module(name: &str) -> &'static str {
    match name {
        "gateway" => "core/gateway/server.py",
        "p2p" => "core/p2p/mesh_protocol.py",
        "agents" => "core/agents/cognative_nexus_controller.py",
        _ => "core/rag/hyper_rag.py",
    }
}

/// A component's module at release 1.0.0: healthy when the .env says
/// SCHEMA=1 (p2p also needs its transport's handshake).
fn good_module(name: &str) -> String {
    match name {
        "gateway" => r#"VERSION = "1.0.0"


class GatewayConfig:
    def __init__(self):
        self.routes = ["/health", "/api/query"]


app = {"name": "gateway", "version": VERSION}


def health(env):
    return env.get("SCHEMA") == "1"


def answer(query):
    return "gateway %s answers %r" % (VERSION, query)
"#
        .to_string(),
        "p2p" => r#"from core.p2p.transport import handshake

VERSION = "1.0.0"


class UnifiedMeshProtocol:
    def __init__(self, node_id):
        self.node_id = node_id


def health(env):
    return env.get("SCHEMA") == "1" and handshake()
"#
        .to_string(),
        _ => format!(
            "VERSION = \"1.0.0\"\n\n\ndef health(env):\n    return env.get(\"SCHEMA\") == \"1\"  # {name}\n"
        ),
    }
}

/// The same module at the broken release 2.0.0.
fn broken_module(name: &str) -> String {
    format!(
        "VERSION = \"2.0.0\"\napp = None\n\n\ndef health(env):\n    raise RuntimeError(\"{name} 2.0.0: cannot reach its peers\")\n"
    )
}

const GOOD_TRANSPORT: &str = "def handshake():\n    return True\n";
const BROKEN_TRANSPORT: &str =
    "def handshake():\n    raise RuntimeError(\"transport 2.0.0: handshake refused\")\n";

/// A script of the tree that GETs some components' /health (ports from the .env).
fn check_script(names: &[&str]) -> String {
    format!(
        r#"import json, os, sys, urllib.request
env = dict(l.strip().split("=", 1) for l in open("config/.env") if "=" in l)
for name in {names:?}:
    url = "http://127.0.0.1:%s/health" % env[name.upper() + "_PORT"]
    try:
        body = json.load(urllib.request.urlopen(url, timeout=30))
    except Exception as e:
        sys.exit("%s: %s" % (name, e))
    print(name, body["status"], body["version"])
"#
    )
}

/// The stand-in: a tree, four services, ports; everything it started is
/// killed by pid when dropped.
struct Village {
    dir: tempfile::TempDir,
    ports: [u16; 4],
    env: Vec<(String, String)>,
}

impl Village {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rewind-aivillage-")
            .tempdir()
            .unwrap();
        let mut ports = [0u16; 4];
        for i in 0..4 {
            ports[i] = loop {
                let p = free_port();
                if !ports[..i].contains(&p) {
                    break p;
                }
            };
        }
        let v = Self {
            dir,
            ports,
            env: Vec::new(),
        };
        v.write_tree();
        for c in COMPONENTS {
            v.start(c);
        }
        for c in COMPONENTS {
            assert!(
                wait_until(util::PATIENCE, || v.status(c) == Some(200)),
                "{c} up"
            );
        }
        v
    }

    fn base(&self) -> &Path {
        self.dir.path()
    }
    fn root(&self) -> PathBuf {
        self.base().join("opt/aivillage")
    }
    fn page(&self) -> PathBuf {
        self.base().join("www/maintenance.html")
    }
    fn units(&self) -> PathBuf {
        self.base().join("systemd")
    }
    fn port(&self, name: &str) -> u16 {
        self.ports[COMPONENTS.iter().position(|c| *c == name).unwrap()]
    }
    fn file(&self, rel: &str) -> String {
        std::fs::read_to_string(self.root().join(rel)).unwrap_or_default()
    }
    fn write(&self, rel: &str, text: &str) {
        let p = self.root().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn env_file(&self, release: &str, schema: u32) -> String {
        let mut s = format!("RELEASE={release}\nSCHEMA={schema}\n");
        for c in COMPONENTS {
            s.push_str(&format!("{}_PORT={}\n", c.to_uppercase(), self.port(c)));
        }
        s
    }

    /// Release 1.0.0 of the tree.
    fn write_tree(&self) {
        self.write("config/.env", &self.env_file("1.0.0", 1));
        self.write(
            "config/database_config.json",
            "{\"url\": \"postgresql://localhost/aivillage\", \"schema\": 1}\n",
        );
        for c in COMPONENTS {
            self.write(
                &format!("config/systemd/aivillage-{c}.service"),
                &format!("[Service]\nExecStart=/opt/aivillage/bin/{c} --release 1.0.0\n"),
            );
            self.write(module(c), &good_module(c));
        }
        self.write("core/p2p/transport.py", GOOD_TRANSPORT);
        self.write(
            "scripts/restore_imports.py",
            "import os\nassert os.path.isdir('core'), 'run me in the AIVillage root'\nprint('import paths restored from backup')\n",
        );
        self.write("scripts/test_p2p_connection.py", &check_script(&["p2p"]));
        self.write("scripts/test_agent_response.py", &check_script(&["agents"]));
        self.write("scripts/test_full_system.py", &check_script(&COMPONENTS));
        std::fs::create_dir_all(self.base().join("www")).unwrap();
        std::fs::create_dir_all(self.units()).unwrap();
    }

    fn svc(&self, args: &[&str]) -> Output {
        Command::new(svc_path())
            .arg("--root")
            .arg(self.root())
            .args(args)
            .output()
            .unwrap()
    }
    fn start(&self, name: &str) {
        let out = self.svc(&["start", name]);
        assert!(out.status.success(), "start {name}: {}", text(&out));
    }
    fn stop(&self, name: &str) {
        let out = self.svc(&["stop", name]);
        assert!(out.status.success(), "stop {name}: {}", text(&out));
    }

    /// The pid in a component's pid file, if that process is alive.
    fn pid(&self, name: &str) -> Option<u32> {
        let p = std::fs::read_to_string(self.root().join(format!("run/{name}.pid"))).ok()?;
        let pid = p.trim().parse().ok()?;
        alive(pid).then_some(pid)
    }
    fn pids(&self) -> Vec<Option<u32>> {
        COMPONENTS.iter().map(|c| self.pid(c)).collect()
    }

    fn get(&self, name: &str) -> Option<(u16, Value)> {
        let resp = reqwest::blocking::Client::new()
            .get(format!("http://127.0.0.1:{}/health", self.port(name)))
            .timeout(util::PATIENCE)
            .send()
            .ok()?;
        let status = resp.status().as_u16();
        let body = resp.text().unwrap_or_default();
        Some((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
    }
    fn status(&self, name: &str) -> Option<u16> {
        self.get(name).map(|(s, _)| s)
    }
    /// (status, module version, release) as the service reports them.
    fn state(&self, name: &str) -> (Option<u16>, String, String) {
        match self.get(name) {
            Some((s, v)) => (
                Some(s),
                v["version"].as_str().unwrap_or_default().to_string(),
                v["release"].as_str().unwrap_or_default().to_string(),
            ),
            None => (None, String::new(), String::new()),
        }
    }

    /// A deployment: each changed file is first copied to `<file>.backup`
    /// (the runbook's "backup files created during deployment"), files
    /// without a previous version are just added; then the services named
    /// are restarted on the new code.
    fn deploy(&self, files: &[(&str, &str)], restart: &[&str]) {
        for (rel, text) in files {
            let p = self.root().join(rel);
            if p.exists() {
                std::fs::copy(&p, self.root().join(format!("{rel}.backup"))).unwrap();
            }
            self.write(rel, text);
        }
        for c in restart {
            self.stop(c);
            self.start(c);
        }
    }

    /// `cp config/systemd/*.service` into the unit directory, as a
    /// deployment installs its units.
    fn install_units(&self) {
        for c in COMPONENTS {
            let name = format!("aivillage-{c}.service");
            std::fs::copy(
                self.root().join("config/systemd").join(&name),
                self.units().join(&name),
            )
            .unwrap();
        }
    }

    /// `git` in the root, failing the test when it fails.
    fn git(&self, args: &[&str]) {
        let out = Command::new("git")
            .arg("-C")
            .arg(self.root())
            .args([
                "-c",
                "user.name=deploy",
                "-c",
                "user.email=deploy@localhost",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
    }

    /// Every `*.backup` under the root.
    fn backups(&self) -> Vec<PathBuf> {
        tree(&self.root())
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| p.to_string_lossy().ends_with(".backup"))
            .collect()
    }

    /// The stand-in's files (the state dir is rewind's, not the system's).
    fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        tree(self.base())
            .into_iter()
            .filter(|(p, _)| !p.starts_with(self.base().join("rewind-state")))
            .collect()
    }

    fn ops_log(&self) -> Vec<String> {
        self.file("logs/ops.log")
            .lines()
            .map(str::to_string)
            .collect()
    }
    fn starts(&self) -> Vec<String> {
        self.file("logs/starts.log")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Set an environment variable for the runbook (thresholds, timeouts).
    fn set(&mut self, k: &str, v: &str) {
        self.env.push((k.to_string(), v.to_string()));
    }

    /// The CLI on examples/aivillage/rewind.toml, pointed at this stand-in.
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
            .env("AIVILLAGE_STANDIN", self.base())
            .env("AIVILLAGE_HEALTH_INTERVAL_MS", "100")
            .env("AIVILLAGE_HEALTH_TIMEOUT_MS", HEALTH_TIMEOUT_MS)
            // A loaded machine must not turn a healthy stand-in into a
            // failed (probe timeout) or degraded (over the latency
            // baseline) component: the timeouts are failure bounds, the
            // baseline 1 s (degraded above 1.25 s) and the slow-gateway
            // drill's fault 4 s (+300 %: slower only makes it worse).
            .env("AIVILLAGE_PROBE_TIMEOUT_MS", "30000")
            .env("AIVILLAGE_QUERY_MAX_MS", "30000")
            .env("AIVILLAGE_BASELINE_MS", "1000")
            .env("AIVILLAGE_DRILL_SLOW_MS", "4000");
        for c in COMPONENTS {
            cmd.env(
                format!("AIVILLAGE_{}_PORT", c.to_uppercase()),
                self.port(c).to_string(),
            );
        }
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

    /// `rewind plan` and `rewind run --dry-run` on the broken stand-in:
    /// both print the findings, neither touches anything. Returns the texts
    /// of the plan and of the dry run.
    fn plan_and_dry_run_touch_nothing(&self) -> (String, String) {
        let pids = self.pids();
        let before = self.snapshot();
        let out = self.rewind(&["plan"]);
        let plan = text(&out);
        assert!(out.status.success(), "{plan}");
        let out = self.rewind(&["run", "--dry-run"]);
        let t = text(&out);
        assert!(out.status.success(), "{t}");
        assert!(t.contains("would "), "{t}");
        assert_eq!(self.pids(), pids, "the dry run stopped or started nothing");
        assert!(pids.iter().flatten().all(|p| alive(*p)));
        assert!(
            self.snapshot() == before,
            "plan and dry run changed no file"
        );
        (plan, t)
    }
}

impl Drop for Village {
    fn drop(&mut self) {
        // Every service this stand-in ran: by pid file, and by the unique
        // temporary path on their command line (a service whose pid file is
        // gone). Only pids, never a name.
        let base = self.base().to_string_lossy().into_owned();
        let mut pids: Vec<u32> = COMPONENTS.iter().filter_map(|c| self.pid(c)).collect();
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

fn finding<'a>(list: &'a Value, starts: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"].as_str().unwrap().starts_with(starts))
        .unwrap_or_else(|| panic!("no finding {starts:?} in {list:#}"))
}

/// The rollback record the run wrote.
fn record(v: &Village, report: &Value) -> Value {
    let run_id = report["run_id"].as_str().unwrap();
    let p = v
        .root()
        .join(format!("logs/rollbacks/rollback-{run_id}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!("no record {}: {e}", p.display());
    }))
    .unwrap()
}

#[test]
fn the_example_runbook_is_what_check_and_the_tests_use() {
    let runbook = example_dir().join("rewind.toml");
    let out = Command::new(REWIND)
        .arg("check")
        .arg(&runbook)
        .env("REWIND_CACHE_DIR", cache_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("grants cover everything"),
        "{}",
        text(&out)
    );
    // The component the runbook names is the one the tests built.
    assert_eq!(
        std::fs::canonicalize(
            example_dir()
                .join("../../target/plugins/wasm32-wasip2/plugin/rewind_plugin_aivillage.wasm")
        )
        .unwrap(),
        std::fs::canonicalize(AIVILLAGE).unwrap()
    );
}

/// One component broken (25 % of users, just now): level 1 stops, restores
/// and restarts only that component; the others keep their pids.
#[test]
fn component_isolation_restarts_only_the_broken_component() {
    let v = Village::new();

    // Healthy: nothing to do.
    let (code, report, stderr) = v.run_json(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(plugin(&report)["outcome"], "healthy", "{report:#}");

    // A deployment breaks the P2P mesh protocol.
    v.deploy(
        &[("core/p2p/mesh_protocol.py", &broken_module("p2p"))],
        &["p2p"],
    );
    assert_eq!(v.status("p2p"), Some(500));
    let before = v.pids();

    let (plan, dry) = v.plan_and_dry_run_touch_nothing();
    assert!(dry.contains("would isolate p2p"), "{dry}");
    for want in [
        "BREACHED p2p: GET",
        "observed 500, threshold 200-399",
        "observed 25% (1 of 4: p2p) -> high",
        "level 1 (component isolation)",
        "restart-p2p",
        "core/p2p/mesh_protocol.py.backup -> core/p2p/mesh_protocol.py",
    ] {
        assert!(plan.contains(want), "plan lacks {want:?}:\n{plan}");
    }
    assert!(!plan.contains("restart-gateway"), "{plan}");

    let (code, report, stderr) = v.run_json(&[]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(plugin(&report)["outcome"], "rolled-back");
    let a = &plugin(&report)["assessment"];
    assert_eq!(
        (a["severity"].as_str(), a["level"].as_u64()),
        (Some("major"), Some(1))
    );
    assert_eq!(level_numbers(&report), [1]);
    let s = steps(&report, 1);
    assert_eq!(
        ids(&s),
        [
            "snapshot",
            "isolate",
            "restore-components",
            "restart-p2p",
            "record"
        ]
    );
    assert!(s.iter().all(|(_, st, _)| st == "ok"), "{s:?}");

    // Only p2p was stopped and started again; it runs 1.0.0 again.
    let after = v.pids();
    for (i, c) in COMPONENTS.iter().enumerate() {
        assert!(after[i].is_some(), "{c} runs");
        if *c == "p2p" {
            assert_ne!(after[i], before[i], "p2p was restarted");
            assert!(!alive(before[i].unwrap()));
        } else {
            assert_eq!(after[i], before[i], "{c} kept its pid");
        }
        assert_eq!(
            v.state(c),
            (Some(200), "1.0.0".into(), "1.0.0".into()),
            "{c}"
        );
    }
    assert_eq!(v.file("core/p2p/mesh_protocol.py"), good_module("p2p"));
    // `cp` as the runbook says: the backup stays; no maintenance page.
    assert!(v.root().join("core/p2p/mesh_protocol.py.backup").exists());
    assert!(v.ops_log().is_empty(), "{:?}", v.ops_log());
    assert!(!v.page().exists());

    // Validation: latency within the baseline (1 s here, with the
    // assessment's 25 % tolerance) and a user request.
    let vf = &plugin(&report)["levels"][0]["verification"]["findings"];
    let lat = finding(vf, "p2p: latency");
    assert_eq!(
        (lat["threshold"].as_str(), lat["breached"].as_bool()),
        (Some("<= 1250 ms"), Some(false))
    );
    assert_eq!(finding(vf, "user request: POST")["observed"], "200");
    assert!(v.file("logs/queries.log").contains("rollback_test"));

    // The record.
    let r = record(&v, &report);
    assert_eq!(r["level"], 1);
    assert_eq!(r["isolated"], serde_json::json!(["p2p"]));
    assert_eq!(r["assessment"]["failed"], serde_json::json!(["p2p"]));
    assert_eq!(r["timeline"].as_array().unwrap().len(), 4);

    // And healthy again afterwards.
    let (code, report, _) = v.run_json(&[]);
    assert_eq!(
        (code, plugin(&report)["outcome"].as_str()),
        (0, Some("healthy"))
    );
}

/// Every component down after a bad release (100 % of users): straight to
/// the full rollback.
#[test]
fn a_critical_failure_gets_the_full_rollback_in_order() {
    let v = Village::new();
    let env_before = v.file("config/.env");
    let db_before = v.file("config/database_config.json");
    let unit_before = v.file("config/systemd/aivillage-gateway.service");
    let mut release: Vec<(String, String)> = vec![
        ("config/.env".into(), v.env_file("2.0.0", 2)),
        (
            "config/database_config.json".into(),
            "{\"url\": \"postgresql://localhost/aivillage_v2\", \"schema\": 2}\n".into(),
        ),
        (
            "config/systemd/aivillage-gateway.service".into(),
            "[Service]\nExecStart=/opt/aivillage/bin/gateway --release 2.0.0\n".into(),
        ),
        (
            "packages/core/legacy/error_handling.py".into(),
            "raise ImportError('legacy shim')\n".into(),
        ),
    ];
    for c in COMPONENTS {
        release.push((module(c).into(), broken_module(c)));
    }
    let files: Vec<(&str, &str)> = release
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    // The units of 1.0.0 are installed in the unit directory; the
    // deployment installs its new gateway unit there too.
    v.install_units();
    v.deploy(&files, &COMPONENTS);
    v.install_units();
    let unit_deployed = v.file("config/systemd/aivillage-gateway.service");
    assert_eq!(v.backups().len(), 7);
    for c in COMPONENTS {
        assert_eq!(v.status(c), Some(500), "{c}");
    }
    let before = v.pids();

    let (plan, dry) = v.plan_and_dry_run_touch_nothing();
    for want in [
        "would move 7 *.backup files back in place",
        "config/.env would be restored from config/.env.backup by restore-backups",
        "would copy aivillage-gateway.service to",
        "would remove packages/core/legacy/error_handling.py",
        "would write \"System maintenance in progress\"",
    ] {
        assert!(dry.contains(want), "dry run lacks {want:?}:\n{dry}");
    }
    for want in [
        "critical severity",
        "observed 100% (4 of 4: gateway, p2p, agents, rag) -> critical",
        "level 2 (full rollback)",
        "Restore 7 *.backup files",
        "packages/core/legacy/error_handling.py",
    ] {
        assert!(plan.contains(want), "plan lacks {want:?}:\n{plan}");
    }

    let starts_before = v.starts().len();
    let (code, report, stderr) = v.run_json(&[]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(plugin(&report)["outcome"], "rolled-back");
    assert_eq!(level_numbers(&report), [2]);
    let s = steps(&report, 2);
    assert_eq!(
        ids(&s),
        [
            "snapshot",
            "isolate",
            "maintenance-on",
            "restore-backups",
            "remove-added",
            "restore-config",
            "restore-imports",
            "restart-gateway",
            "restart-p2p",
            "restart-agents",
            "restart-rag",
            "validate",
            "maintenance-off",
            "record"
        ]
    );
    assert!(s.iter().all(|(_, st, _)| st == "ok"), "{s:#?}");

    // Every *.backup restored; none left.
    assert_eq!(v.backups(), Vec::<PathBuf>::new());
    for c in COMPONENTS {
        assert_eq!(v.file(module(c)), good_module(c), "{c}");
    }
    assert_eq!(v.file("config/.env"), env_before);
    assert_eq!(v.file("config/database_config.json"), db_before);
    assert!(
        !v.root()
            .join("packages/core/legacy/error_handling.py")
            .exists()
    );
    // The restored unit is installed and the service manager reloaded.
    assert_eq!(
        std::fs::read_to_string(v.units().join("aivillage-gateway.service")).unwrap(),
        unit_before
    );
    // Maintenance page written, traffic routed to it, then removed.
    assert_eq!(
        v.ops_log(),
        [
            "proxy reload: maintenance on: System maintenance in progress",
            "daemon-reload: aivillage-agents.service aivillage-gateway.service aivillage-p2p.service aivillage-rag.service ",
            "proxy reload: maintenance off"
        ]
    );
    assert!(!v.page().exists());

    // Restarted in order gateway -> p2p -> agents -> rag, on release 1.0.0.
    let starts: Vec<String> = v.starts()[starts_before..]
        .iter()
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(starts, COMPONENTS);
    let after = v.pids();
    for (i, c) in COMPONENTS.iter().enumerate() {
        assert!(after[i].is_some() && after[i] != before[i], "{c} restarted");
        assert_eq!(
            v.state(c),
            (Some(200), "1.0.0".into(), "1.0.0".into()),
            "{c}"
        );
    }

    let level = &plugin(&report)["levels"][0];
    let vf = &level["verification"]["findings"];
    assert_eq!(level["verification"]["healthy"], true);
    assert_eq!(finding(vf, "*.backup files remaining")["observed"], "0");
    assert_eq!(finding(vf, "maintenance page")["observed"], "removed");
    let r = record(&v, &report);
    assert_eq!(r["level"], 2);
    assert_eq!(r["restored"].as_array().unwrap().len(), 7);
    assert_eq!(
        r["removed"],
        serde_json::json!(["packages/core/legacy/error_handling.py"])
    );
    assert!(r["snapshot"].is_string(), "{r:#}");
    assert_eq!(r["timeline"].as_array().unwrap().len(), 13);

    // The pre-rollback snapshot is listed, and a person can put back what
    // the rollback replaced (here: the release it rolled back from).
    let id = r["snapshot"].as_str().unwrap();
    let out = v.rewind(&["--json", "snapshots"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let snap = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("{list:#}"));
    // It holds the unit file the rollback overwrote in the unit directory
    // (outside the root), not only the tree.
    let unit = std::fs::canonicalize(v.units())
        .unwrap()
        .join("aivillage-gateway.service");
    assert!(
        snap["paths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str() == Some(unit.to_str().unwrap())),
        "{snap:#}"
    );
    let out = v.rewind(&["--json", "restore", id, "--approve", "destructive"]);
    let restored: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(restored["outcome"], "restored", "{restored:#}");
    assert_eq!(v.file("config/.env"), v.env_file("2.0.0", 2));
    for c in COMPONENTS {
        assert_eq!(v.file(module(c)), broken_module(c), "{c}");
    }
    assert_eq!(
        std::fs::read_to_string(v.units().join("aivillage-gateway.service")).unwrap(),
        unit_deployed,
        "the restore put back the unit the rollback overwrote"
    );
    assert!(
        v.root()
            .join("packages/core/legacy/error_handling.py")
            .exists()
    );
}

/// Isolation first; when the restarted component is still broken (a file
/// the component-specific restore does not cover), the verification fails
/// and the host escalates to the full rollback.
#[test]
fn isolation_that_does_not_fix_it_escalates_to_the_full_rollback() {
    let v = Village::new();
    v.deploy(
        &[
            ("core/p2p/mesh_protocol.py", &broken_module("p2p")),
            ("core/p2p/transport.py", BROKEN_TRANSPORT),
        ],
        &["p2p"],
    );
    assert_eq!(v.status("p2p"), Some(500));

    let (code, report, stderr) = v.run_json(&[]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(plugin(&report)["outcome"], "rolled-back");
    assert_eq!(level_numbers(&report), [1, 2]);
    let levels = plugin(&report)["levels"].as_array().unwrap();
    assert_eq!(levels[0]["verification"]["healthy"], false);
    let l1 = steps(&report, 1);
    let (_, st, msg) = &l1[3];
    assert_eq!(st, "ok");
    assert!(msg.contains("escalate to the full rollback"), "{msg}");
    assert_eq!(levels[1]["verification"]["healthy"], true);
    assert_eq!(v.file("core/p2p/transport.py"), GOOD_TRANSPORT);
    assert_eq!(v.backups(), Vec::<PathBuf>::new());
    for c in COMPONENTS {
        assert_eq!(
            v.state(c),
            (Some(200), "1.0.0".into(), "1.0.0".into()),
            "{c}"
        );
    }
}

/// A component whose restored code still does not come up: the ordered
/// restart stops there, reports which, and starts none after it.
#[test]
fn a_component_that_never_comes_back_stops_the_run_there() {
    let v = Village::new();
    // The p2p backup taken by the deployment is itself bad.
    v.write(
        "core/p2p/mesh_protocol.py",
        "VERSION = \"1.0.0-bad\"\n\n\ndef health(env):\n    return False\n",
    );
    let mut release: Vec<(String, String)> = vec![("config/.env".into(), v.env_file("2.0.0", 2))];
    for c in COMPONENTS {
        release.push((module(c).into(), broken_module(c)));
    }
    let files: Vec<(&str, &str)> = release
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    v.deploy(&files, &COMPONENTS);
    let starts_before = v.starts().len();

    let (code, report, stderr) = v.run_json(&[]);
    assert_eq!(code, 1, "{report:#}\n{stderr}");
    assert_eq!(plugin(&report)["outcome"], "failed");
    assert_eq!(level_numbers(&report), [2]);
    let s = steps(&report, 2);
    let status = |id: &str| {
        s.iter()
            .find(|(i, _, _)| i == id)
            .map(|(_, st, m)| (st.clone(), m.clone()))
            .unwrap()
    };
    assert_eq!(status("restart-gateway").0, "ok");
    let (st, msg) = status("restart-p2p");
    assert_eq!(st, "failed");
    assert!(
        msg.contains("stopped at p2p") && msg.contains("not started: agents, rag"),
        "{msg}"
    );
    for id in [
        "restart-agents",
        "restart-rag",
        "validate",
        "maintenance-off",
        "record",
    ] {
        assert_eq!(status(id).0, "skipped", "{id}");
    }
    let error = plugin(&report)["error"].as_str().unwrap();
    assert!(error.contains("restart-p2p"), "{error}");

    // gateway is back; p2p started but unhealthy; agents and rag were not started.
    assert_eq!(
        v.state("gateway"),
        (Some(200), "1.0.0".into(), "1.0.0".into())
    );
    assert_eq!(v.status("p2p"), Some(500));
    assert_eq!(v.pid("agents"), None);
    assert_eq!(v.pid("rag"), None);
    assert_eq!(v.status("agents"), None);
    let starts: Vec<String> = v.starts()[starts_before..]
        .iter()
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(starts, ["gateway", "p2p"]);
    // The system is not back: the maintenance page stays up.
    assert!(v.page().exists());
    // The files were restored all the same.
    assert_eq!(v.backups(), Vec::<PathBuf>::new());
}

/// The *.backup files the first full rollback moved in place are gone: a
/// second run of the incident knows them from the pinned list (and does
/// not report "nothing restored"), and leaves the file a person fixed by
/// hand in between as it is.
#[test]
fn a_second_full_rollback_knows_the_backups_the_first_moved_in_place() {
    let v = Village::new();
    v.write(
        "core/p2p/mesh_protocol.py",
        "VERSION = \"1.0.0-bad\"\n\n\ndef health(env):\n    return False\n",
    );
    let mut release: Vec<(String, String)> = vec![("config/.env".into(), v.env_file("2.0.0", 2))];
    for c in COMPONENTS {
        release.push((module(c).into(), broken_module(c)));
    }
    let files: Vec<(&str, &str)> = release
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    v.deploy(&files, &COMPONENTS);
    let (code, report, stderr) = v.run_json(&[]);
    assert_eq!(code, 1, "{report:#}\n{stderr}");
    assert_eq!(level_numbers(&report), [2]);
    assert_eq!(v.backups(), Vec::<PathBuf>::new());

    // Someone fixes p2p by hand; rewind runs again.
    v.write(module("p2p"), &good_module("p2p"));
    let (code, report, stderr) = v.run_json(&[]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(plugin(&report)["outcome"], "rolled-back", "{report:#}");
    let s = steps(&report, 2);
    let (_, st, msg) = s.iter().find(|(i, _, _)| i == "restore-backups").unwrap();
    assert_eq!(st, "ok", "{msg}");
    assert!(
        msg.contains("in place already") && msg.contains("changed since"),
        "{msg}"
    );
    assert!(!msg.contains("nothing restored"), "{msg}");
    assert_eq!(v.file(module("p2p")), good_module("p2p"));
    for c in COMPONENTS {
        assert_eq!(v.status(c), Some(200), "{c}");
    }
}

/// Downtime from the plugin's state: a run that fails leaves p2p down; once
/// it has been down longer than the critical threshold, the next run goes
/// straight to the full rollback.
#[test]
fn downtime_beyond_the_threshold_goes_straight_to_the_full_rollback() {
    let mut v = Village::new();
    v.set("AIVILLAGE_HIGH_DOWNTIME_MS", "500");
    v.set("AIVILLAGE_CRITICAL_DOWNTIME_MS", "1000");

    // A deployment of p2p 2.0.0 (its backup kept) crashes it, and a
    // stray process holds its port, answering 503.
    v.deploy(&[("core/p2p/mesh_protocol.py", &broken_module("p2p"))], &[]);
    v.stop("p2p");
    let squatter = Squatter::bind(v.port("p2p"));
    assert_eq!(v.status("p2p"), Some(503));

    let (code, report, stderr) = v.run_json(&[]);
    assert_eq!(code, 1, "{report:#}\n{stderr}");
    let a = &plugin(&report)["assessment"];
    assert_eq!(a["level"], 1, "{a:#}");
    assert_eq!(
        level_numbers(&report),
        [1, 2],
        "isolation, then the full rollback"
    );
    let (_, st, msg) = steps(&report, 2)
        .into_iter()
        .find(|(i, _, _)| i == "restart-p2p")
        .unwrap();
    assert_eq!(st, "failed", "{msg}");
    assert!(msg.contains("stopped at p2p"), "{msg}");

    // The stray process goes away; p2p is still down.
    drop(squatter);
    assert_eq!(v.status("p2p"), None);
    // The plugin recorded when it first saw p2p down, during the first
    // run. Rather than wait for the clock to pass the threshold, the
    // second run is given thresholds that the downtime since then (at
    // least the first run's own duration) has surely passed: the same
    // decision, reached without waiting for time.
    v.set("AIVILLAGE_HIGH_DOWNTIME_MS", "1");
    v.set("AIVILLAGE_CRITICAL_DOWNTIME_MS", "1");

    let (code, report, stderr) = v.run_json(&[]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    let a = &plugin(&report)["assessment"];
    assert_eq!(
        (a["severity"].as_str(), a["level"].as_u64()),
        (Some("critical"), Some(2)),
        "{a:#}"
    );
    let down = finding(&a["findings"], "downtime");
    assert_eq!(down["breached"], true);
    assert!(
        down["observed"].as_str().unwrap().ends_with("-> critical"),
        "{down}"
    );
    let users = finding(&a["findings"], "users affected");
    assert!(
        users["observed"].as_str().unwrap().starts_with("25%"),
        "{users}"
    );
    assert_eq!(level_numbers(&report), [2]);
    assert_eq!(plugin(&report)["outcome"], "rolled-back");
    for c in COMPONENTS {
        assert_eq!(
            v.state(c),
            (Some(200), "1.0.0".into(), "1.0.0".into()),
            "{c}"
        );
    }
    assert!(!v.page().exists());

    // Healthy again, and the downtime is forgotten.
    let (code, report, _) = v.run_json(&[]);
    assert_eq!(code, 0);
    let a = &plugin(&report)["assessment"];
    assert_eq!(a["severity"], "none");
    assert!(
        finding(&a["findings"], "downtime")["observed"]
            .as_str()
            .unwrap()
            .starts_with("0 ms"),
        "{a:#}"
    );
}

/// `rewind drill --json --scenario NAME` on the example runbook: its one
/// report, after checking what every drill of this runbook must show: a
/// recovery within the runbook's 15 minute RTO, the five phases, every step
/// ok, and the reports written under the state dir's drills/.
fn drill(v: &Village, scenario: &str) -> Value {
    let out = v.rewind(&["drill", "--json", "--scenario", scenario]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let reports: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON reports ({e}): {}", text(&out)));
    assert_eq!(out.status.code(), Some(0), "{reports:#}\n{stderr}");
    assert_eq!(reports.as_array().unwrap().len(), 1, "{reports:#}");
    let d = reports[0].clone();
    assert_eq!(d["scenario"], scenario);
    assert_eq!(d["plugin"], "aivillage");
    assert_eq!(
        (d["verdict"].as_str(), d["recovered"].as_bool()),
        (Some("pass"), Some(true)),
        "{d:#}\n{stderr}"
    );
    assert_eq!(d["error"], Value::Null, "{d:#}");
    assert_eq!(d["rto_ms"], 900_000, "the runbook's RTO: < 15 minutes");
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
    let steps = d["steps"].as_array().unwrap();
    assert!(!steps.is_empty(), "{d:#}");
    for s in steps {
        assert_eq!(s["status"], "ok", "{s}\n{d:#}");
    }
    // The reports, and the plugin's rollback record of the drill's run.
    let id = d["id"].as_str().unwrap();
    let dir = v.base().join("rewind-state/drills");
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{id}.json"))).unwrap())
            .unwrap();
    assert_eq!(
        (&saved["scenario"], &saved["verdict"]),
        (&d["scenario"], &d["verdict"])
    );
    let md = std::fs::read_to_string(dir.join(format!("{id}.md"))).unwrap();
    assert!(
        md.contains(&format!("# Drill `{scenario}` of aivillage: PASS")),
        "{md}"
    );
    assert!(
        v.root()
            .join(format!("logs/rollbacks/rollback-{id}.json"))
            .exists()
    );
    d
}

/// The step ids of a drill report, with their level.
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

/// The example runbook's three [[drill]] scenarios, one after the other on
/// one stand-in: each injects its bad deployment (standin/deploy.py), the
/// plugin detects it, rolls back and verifies within the 15 minute RTO, and
/// release 1.0.0 is what runs afterwards. `rewind drills` lists all three.
#[test]
fn the_example_drills_recover_within_the_15_minute_rto() {
    let v = Village::new();
    let env_before = v.file("config/.env");
    let db_before = v.file("config/database_config.json");
    let unit_before = v.file("config/systemd/aivillage-gateway.service");
    let all_back = |v: &Village| {
        for c in COMPONENTS {
            assert_eq!(
                v.state(c),
                (Some(200), "1.0.0".into(), "1.0.0".into()),
                "{c}"
            );
            assert_eq!(v.file(module(c)), good_module(c), "{c}");
        }
        assert!(!v.page().exists(), "maintenance page removed");
    };

    // Every component fails: the full rollback, in the runbook's order.
    let d = drill(&v, "bad-release");
    let users = finding(&d["findings"], "users affected");
    assert!(
        users["observed"].as_str().unwrap().starts_with("100%"),
        "{users}"
    );
    let s = drill_steps(&d);
    assert!(s.iter().all(|(l, _)| *l == 2), "{s:?}");
    let restarts: Vec<&str> = s
        .iter()
        .filter_map(|(_, id)| id.strip_prefix("restart-"))
        .collect();
    assert_eq!(restarts, COMPONENTS);
    assert!(s.iter().any(|(_, id)| id == "restore-backups"), "{s:?}");
    all_back(&v);
    assert_eq!(v.backups(), Vec::<PathBuf>::new());
    assert_eq!(v.file("config/.env"), env_before);
    assert_eq!(v.file("config/database_config.json"), db_before);
    assert!(
        !v.root()
            .join("packages/core/legacy/error_handling.py")
            .exists()
    );
    assert_eq!(
        std::fs::read_to_string(v.units().join("aivillage-gateway.service")).unwrap(),
        unit_before
    );

    // Performance degraded > 50 % from the baseline: critical as well.
    let d = drill(&v, "slow-gateway");
    let perf = finding(&d["findings"], "performance vs baseline");
    assert_eq!(perf["breached"], true, "{perf}");
    assert!(
        perf["observed"].as_str().unwrap().ends_with("-> critical"),
        "{perf}"
    );
    assert!(drill_steps(&d).iter().all(|(l, _)| *l == 2));
    all_back(&v);
    assert_eq!(v.backups(), Vec::<PathBuf>::new());

    // One component of four: isolation of p2p only; the others keep
    // running with the same pids.
    let before = v.pids();
    let d = drill(&v, "p2p-regression");
    let users = finding(&d["findings"], "users affected");
    assert!(
        users["observed"].as_str().unwrap().starts_with("25%"),
        "{users}"
    );
    let s = drill_steps(&d);
    assert_eq!(
        s,
        [
            "snapshot",
            "isolate",
            "restore-components",
            "restart-p2p",
            "record"
        ]
        .map(|id| (1, id.to_string()))
    );
    let after = v.pids();
    for (i, c) in COMPONENTS.iter().enumerate() {
        if *c == "p2p" {
            assert_ne!(after[i], before[i], "p2p restarted");
        } else {
            assert_eq!(after[i], before[i], "{c} kept its pid");
        }
    }
    all_back(&v);
    // `cp`, as the runbook's component restore says: the backup stays.
    assert_eq!(
        v.backups(),
        [v.root().join("core/p2p/mesh_protocol.py.backup")]
    );

    // `rewind drills` lists the three, all passed.
    let out = v.rewind(&["drills", "--json"]);
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
        [
            ("bad-release", "pass"),
            ("slow-gateway", "pass"),
            ("p2p-regression", "pass")
        ]
    );
    let out = v.rewind(&["drills"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for name in ["bad-release", "slow-gateway", "p2p-regression"] {
        assert!(t.contains(name), "{t}");
    }
    assert_eq!(t.matches(" pass ").count(), 3, "{t}");
}

/// How long a restarted component may take to answer healthy: a failure
/// bound for a python3 start on a loaded machine; a test whose component
/// never comes back waits it out once per restart.
const HEALTH_TIMEOUT_MS: &str = "20000";

/// A test-owned process squatting a port: answers every request 503.
struct Squatter {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Squatter {
    fn bind(port: u16) -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                if let Ok(mut c) = conn {
                    let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
                    let mut buf = [0u8; 4096];
                    let _ = c.read(&mut buf);
                    let _ = c.write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\nConnection: close\r\n\r\nstray",
                    );
                }
            }
        });
        Self {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// "Backup Files Missing" (the runbook's troubleshooting): three
/// components crashed and no deployment left `*.backup` files, and the
/// tree is not under git. The full rollback has nothing to roll back to:
/// restarting the services on whatever code is there is not a rollback,
/// so it must not report one. It stops at restore-backups, says why and
/// what to do, and restarts nothing.
#[test]
fn a_full_rollback_with_nothing_to_restore_fails_instead_of_restarting() {
    let v = Village::new();
    for c in ["p2p", "agents", "rag"] {
        v.stop(c);
    }
    assert_eq!(v.backups(), Vec::<PathBuf>::new());
    let starts_before = v.starts().len();

    let (code, report, stderr) = v.run_json(&[]);
    assert_eq!(code, 1, "{report:#}\n{stderr}");
    assert_eq!(plugin(&report)["outcome"], "failed");
    assert_eq!(level_numbers(&report), [2]);
    let s = steps(&report, 2);
    let (_, st, msg) = s.iter().find(|(i, _, _)| i == "restore-backups").unwrap();
    assert_eq!(st, "failed", "{msg}");
    assert!(
        msg.contains("nothing was restored")
            && msg.contains("no *.backup files")
            && msg.contains("git checkout HEAD~1"),
        "{msg}"
    );
    for c in COMPONENTS {
        let (_, st, _) = s
            .iter()
            .find(|(i, _, _)| *i == format!("restart-{c}"))
            .unwrap();
        assert_eq!(st, "skipped", "restart-{c}");
    }
    assert_eq!(v.starts().len(), starts_before, "nothing was started");
    assert!(v.page().exists(), "the maintenance page stays up");
}

/// "Backup Files Missing", with the runbook's fix: the tree is a git
/// checkout and the bad release 2.0.0 was committed without `*.backup`
/// files. The full rollback restores the components' files from the
/// previous commit (`git checkout HEAD~1 -- <file>`), snapshotted first,
/// and continues with the restart.
#[test]
fn a_full_rollback_without_backup_files_restores_the_previous_commit_with_git() {
    let v = Village::new();
    v.write(".gitignore", "run/\nlogs/\n");
    v.git(&["init", "-q"]);
    v.git(&["add", "-A"]);
    v.git(&["commit", "-q", "-m", "release 1.0.0"]);
    for c in COMPONENTS {
        v.write(module(c), &broken_module(c));
    }
    v.git(&["commit", "-q", "-a", "-m", "release 2.0.0"]);
    for c in COMPONENTS {
        v.stop(c);
        v.start(c);
        assert_eq!(v.status(c), Some(500), "{c}");
    }
    assert_eq!(v.backups(), Vec::<PathBuf>::new());

    let (code, report, stderr) = v.run_json(&[]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(plugin(&report)["outcome"], "rolled-back");
    assert_eq!(level_numbers(&report), [2]);
    let s = steps(&report, 2);
    assert!(s.iter().all(|(_, st, _)| st == "ok"), "{s:#?}");
    let (_, _, msg) = s.iter().find(|(i, _, _)| i == "restore-backups").unwrap();
    assert!(
        msg.contains("no *.backup files")
            && msg.contains("restored 4 files with `git checkout HEAD~1"),
        "{msg}"
    );
    for c in COMPONENTS {
        assert_eq!(v.file(module(c)), good_module(c), "{c}");
        assert_eq!(
            v.state(c),
            (Some(200), "1.0.0".into(), "1.0.0".into()),
            "{c}"
        );
    }
    let r = record(&v, &report);
    assert_eq!(r["restored"].as_array().unwrap().len(), 4, "{r:#}");
    // The snapshot taken first holds release 2.0.0's files.
    let id = r["snapshot"].as_str().unwrap();
    let out = v.rewind(&["--json", "restore", id, "--approve", "destructive"]);
    let restored: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(restored["outcome"], "restored", "{restored:#}");
    for c in COMPONENTS {
        assert_eq!(v.file(module(c)), broken_module(c), "{c}");
    }
}

/// The git fallback's files are this incident's: a run that restored them
/// and then stopped (p2p's port held by a stray process) leaves them at
/// the previous commit, and the next run of the incident must not take
/// "the commit holds the same files" for "nothing to restore".
#[test]
fn a_second_run_after_the_git_fallback_knows_the_files_it_restored() {
    let v = Village::new();
    v.write(".gitignore", "run/\nlogs/\n");
    v.git(&["init", "-q"]);
    v.git(&["add", "-A"]);
    v.git(&["commit", "-q", "-m", "release 1.0.0"]);
    for c in COMPONENTS {
        v.write(module(c), &broken_module(c));
    }
    v.git(&["commit", "-q", "-a", "-m", "release 2.0.0"]);
    for c in COMPONENTS {
        v.stop(c);
        v.start(c);
    }
    v.stop("p2p");
    let squatter = Squatter::bind(v.port("p2p"));

    let (code, report, stderr) = v.run_json(&[]);
    assert_eq!(code, 1, "{report:#}\n{stderr}");
    let s = steps(&report, 2);
    let (_, st, msg) = s.iter().find(|(i, _, _)| i == "restore-backups").unwrap();
    assert_eq!(st, "ok", "{msg}");
    assert!(
        msg.contains("restored 4 files with `git checkout HEAD~1"),
        "{msg}"
    );
    let (_, st, msg) = s.iter().find(|(i, _, _)| i == "restart-p2p").unwrap();
    assert_eq!(st, "failed", "{msg}");
    for c in COMPONENTS {
        assert_eq!(v.file(module(c)), good_module(c), "{c}");
    }

    drop(squatter);
    let (code, report, stderr) = v.run_json(&[]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(plugin(&report)["outcome"], "rolled-back");
    let s = steps(&report, 2);
    let (_, st, msg) = s.iter().find(|(i, _, _)| i == "restore-backups").unwrap();
    assert_eq!(st, "ok", "{msg}");
    assert!(msg.contains("in place already"), "{msg}");
    for c in COMPONENTS {
        assert_eq!(
            v.state(c),
            (Some(200), "1.0.0".into(), "1.0.0".into()),
            "{c}"
        );
    }
}

/// The runbook's success criterion "Gateway <100ms" and its "Rollback Not
/// Required: performance issues <25% degradation" are one threshold: a
/// component 10 % over the baseline is not degraded to the assessment, so
/// it must not fail the verification either. p2p breaks (high: isolate
/// p2p); the gateway answers 10 % over the baseline all along. Level 1
/// fixes p2p and verifies; it does not escalate to the full rollback over
/// the gateway's latency.
#[test]
fn a_component_10_percent_over_the_baseline_does_not_fail_the_verification() {
    let mut v = Village::new();
    // Baseline 3 s, the gateway at 3.3 s (+10 %, the runbook's 110 ms
    // against 100 ms); scaled up so that a loaded machine cannot push it
    // over the 25 % (3.75 s).
    v.set("AIVILLAGE_BASELINE_MS", "3000");
    let slow_gateway = good_module("gateway").replace(
        "def health(env):\n",
        "def health(env):\n    import time\n    time.sleep(3.3)\n",
    );
    v.deploy(&[(module("gateway"), &slow_gateway)], &["gateway"]);
    v.deploy(
        &[("core/p2p/mesh_protocol.py", &broken_module("p2p"))],
        &["p2p"],
    );
    assert_eq!(v.status("p2p"), Some(500));

    let (code, report, stderr) = v.run_json(&[]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    let a = &plugin(&report)["assessment"];
    assert_eq!(a["level"], 1, "{a:#}");
    let lat = finding(&a["findings"], "gateway: latency");
    assert_eq!(lat["breached"], false, "{lat}");
    assert_eq!(
        level_numbers(&report),
        [1],
        "no escalation over the gateway's latency: {report:#}"
    );
    let level = &plugin(&report)["levels"][0];
    assert_eq!(level["verification"]["healthy"], true, "{level:#}");
    let lat = finding(&level["verification"]["findings"], "gateway: latency");
    assert_eq!(lat["breached"], false, "{lat}");
    assert_eq!(lat["threshold"], "<= 3750 ms", "{lat}");
    assert_eq!(v.state("p2p"), (Some(200), "1.0.0".into(), "1.0.0".into()));
}

/// `systemd_unit_dir = ""` skips the unit files, and with them the
/// service manager's reload: the plugin must not ask for the reload
/// command's program (`systemctl` by default) when there is nothing to
/// reload.
#[test]
fn no_unit_directory_needs_no_daemon_reload_program() {
    let dir = tempfile::tempdir().unwrap();
    let example = example_dir().canonicalize().unwrap();
    let example_text = std::fs::read_to_string(example.join("rewind.toml")).unwrap();
    let toml: String = example_text
        .lines()
        .filter(|l| {
            !l.starts_with("daemon_reload_command")
                && !l.starts_with("systemd_unit_dir")
                && !l
                    .trim_start()
                    .starts_with("\"${AIVILLAGE_STANDIN:-/tmp/aivillage-standin}/systemd\"")
        })
        .map(|l| {
            let l = l
                .replace("\"../", &format!("\"{}/../", example.display()))
                .replace("\"standin/", &format!("\"{}/standin/", example.display()));
            if l.starts_with("systemd_source") {
                format!("{l}\nsystemd_unit_dir = \"\"")
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!toml.contains("daemon_reload_command"), "{toml}");
    let runbook = dir.path().join("rewind.toml");
    std::fs::write(&runbook, toml).unwrap();
    let out = Command::new(REWIND)
        .arg("check")
        .arg(&runbook)
        .env("REWIND_CACHE_DIR", cache_dir())
        .env("AIVILLAGE_STANDIN", dir.path())
        .env("REWIND_LOCK_DIR", dir.path().join("locks"))
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("grants cover everything"), "{t}");
    assert!(!t.contains("systemctl"), "{t}");
}
