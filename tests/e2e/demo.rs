//! The demo end to end, on the example runbook itself: a service on a
//! broken release is rolled back to the previous one and is healthy again;
//! a dry run leaves it exactly as it was.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

/// The example runbook's latency and round bounds (500 ms, 5 s) are for a
/// real service; a loaded test machine can exceed them on a healthy
/// stand-in, which would turn a healthy round into a failed one. These
/// tests count failures, so the bounds are failure bounds only here.
const LOADED_MACHINE: [(&str, &str); 2] = [
    ("REWIND_DEMO_MAX_LATENCY_MS", "30000"),
    ("REWIND_DEMO_WATCH_TIMEOUT", "60s"),
];

/// The demo service, started by this test; stopped by pid at the end.
struct DemoSite {
    root: tempfile::TempDir,
    /// rewind's state, beside the site: the runbook's write grant covers
    /// the whole site, and a grant may not hold rewind's state.
    state: tempfile::TempDir,
    port: u16,
}

impl DemoSite {
    fn new() -> Self {
        Self::with_releases(&["1.0.0:healthy", "1.1.0:broken"], "1.0.0")
    }

    /// A site with these releases (`VERSION:healthy|broken`), serving
    /// `current`.
    fn with_releases(releases: &[&str], current: &str) -> Self {
        let root = tempfile::Builder::new()
            .prefix("rewind-demo-")
            .tempdir()
            .unwrap();
        let state = tempfile::Builder::new()
            .prefix("rewind-demo-state-")
            .tempdir()
            .unwrap();
        let site = Self {
            root,
            state,
            port: free_port(),
        };
        let mut init = vec!["init"];
        for r in releases {
            init.extend(["--release", r]);
        }
        init.extend(["--current", current]);
        site.service(&init);
        site.service(&[
            "deploy",
            "--port",
            &site.port.to_string(),
            "--version",
            current,
        ]);
        assert!(
            wait_until(PATIENCE, || site
                .get("/healthz")
                .is_some_and(|(s, _)| s == 200)),
            "demo service up"
        );
        site
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    fn service(&self, args: &[&str]) {
        let mut full = vec![args[0], "--root", self.root().to_str().unwrap()];
        full.extend_from_slice(&args[1..]);
        let out = Command::new(DEMO_SERVICE).args(&full).output().unwrap();
        assert!(out.status.success(), "{full:?}: {}", text(&out));
    }

    fn pid(&self) -> u32 {
        std::fs::read_to_string(self.root().join("run/service.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn current(&self) -> PathBuf {
        std::fs::read_link(self.root().join("current")).unwrap()
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        let resp = reqwest::blocking::Client::new()
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .timeout(PATIENCE)
            .send()
            .ok()?;
        Some((resp.status().as_u16(), resp.text().unwrap_or_default()))
    }

    /// Run the CLI on examples/demo/rewind.toml pointed at this site.
    fn rewind(&self, args: &[&str]) -> std::process::Output {
        self.rewind_env(args, &[])
    }

    /// `rewind`, with more variables.
    fn rewind_env(&self, args: &[&str], env: &[(&str, String)]) -> std::process::Output {
        let runbook = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo/rewind.toml");
        let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        full.push(runbook.display().to_string());
        Command::new(REWIND)
            .args(&full)
            .env("REWIND_DEMO_ROOT", self.root())
            .env("REWIND_DEMO_STATE", self.state.path())
            .env("REWIND_LOCK_DIR", self.state.path().join("locks"))
            .env("REWIND_DEMO_PORT", self.port.to_string())
            .envs(LOADED_MACHINE)
            .env("REWIND_CACHE_DIR", cache_dir())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    }

    /// Deploy `version` and wait until it answers /healthz with `status`.
    fn deploy(&self, version: &str, status: u16) {
        self.service(&[
            "deploy",
            "--port",
            &self.port.to_string(),
            "--version",
            version,
        ]);
        assert!(
            wait_until(PATIENCE, || self
                .get("/healthz")
                .is_some_and(|(s, _)| s == status)),
            "{version} answers {status}"
        );
    }

    fn serves(&self) -> Option<String> {
        self.get("/version").map(|(_, b)| b.trim().to_string())
    }
}

impl Drop for DemoSite {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.root().join("run/service.pid"))
            && let Ok(pid) = pid.trim().parse::<u32>()
        {
            kill_pid(pid);
        }
    }
}

#[test]
fn the_demo_rolls_a_broken_release_back_and_a_dry_run_changes_nothing() {
    let site = DemoSite::new();
    let out = site.rewind(&["check"]);
    assert!(out.status.success(), "{}", text(&out));

    // Healthy: nothing to do.
    let out = site.rewind(&["run"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("healthy"), "{}", text(&out));

    // The team deploys a broken release.
    site.service(&[
        "deploy",
        "--port",
        &site.port.to_string(),
        "--version",
        "1.1.0",
    ]);
    assert!(wait_until(PATIENCE, || site
        .get("/healthz")
        .is_some_and(|(s, _)| s == 500)));
    let broken_pid = site.pid();

    // plan and dry run: findings printed, nothing touched.
    let out = site.rewind(&["plan"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("BREACHED") && t.contains("observed 500") && t.contains("200-399"),
        "{t}"
    );
    assert!(
        t.contains("1.0.0"),
        "the plan names the release it will go back to: {t}"
    );
    let before = tree(site.root());
    let out = site.rewind(&["run", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("would"), "{}", text(&out));
    assert_eq!(site.pid(), broken_pid);
    assert!(alive(broken_pid), "the dry run stopped nothing");
    assert!(site.current().ends_with("1.1.0"));
    assert_eq!(
        tree(site.root()),
        before,
        "the dry run changed no file of the site"
    );

    // The real rollback.
    let out = site.rewind(&["run"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("rolled back"), "{t}");
    assert_eq!(site.get("/healthz").map(|(s, _)| s), Some(200));
    assert_eq!(
        site.get("/version").map(|(_, b)| b.trim().to_string()),
        Some("1.0.0".into())
    );
    assert!(site.current().ends_with("1.0.0"));
    assert!(
        !alive(broken_pid),
        "the broken release's process was stopped"
    );

    // history and show on the same runbook.
    let out = site.rewind(&["history"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert_eq!(t.matches("rolled-back").count(), 1, "{t}");
    let run_id = t
        .lines()
        .rev()
        .find(|l| l.contains("rolled-back"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let out = site.rewind(&["show", &run_id]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("step revert") && t.contains("step wait"), "{t}");
}

#[test]
fn the_demo_drill_meets_its_rto_and_watch_rolls_back_by_itself() {
    let site = DemoSite::new();
    // Drill: inject the bad deploy, time the recovery against the 1m RTO.
    let out = site.rewind(&["drill", "--json"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &d[0];
    assert_eq!(d["scenario"], "bad-deploy");
    assert_eq!(d["verdict"], "pass", "{d}");
    assert_eq!(d["rto_ms"], 60_000);
    // Shown with --nocapture: the 1 min RTO against a recovery of seconds.
    eprintln!(
        "drill bad-deploy: recovered in {} ms, RTO 60000 ms",
        d["recovery_ms"]
    );
    assert!(d["findings"].to_string().contains("observed"), "{d}");
    assert_eq!(
        site.get("/version").map(|(_, b)| b.trim().to_string()),
        Some("1.0.0".into())
    );
    let out = site.rewind(&["drills"]);
    assert!(
        text(&out).contains("bad-deploy") && text(&out).contains("pass"),
        "{}",
        text(&out)
    );

    // Watch: after the next bad deploy, it rolls back after exactly 3
    // failed rounds, by itself.
    site.service(&[
        "deploy",
        "--port",
        &site.port.to_string(),
        "--version",
        "1.1.0",
    ]);
    assert!(wait_until(PATIENCE, || site
        .get("/healthz")
        .is_some_and(|(s, _)| s == 500)));
    let runbook = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo/rewind.toml");
    let out = Command::new(REWIND)
        .args(["watch", "--json", "--max-rounds", "5"])
        .arg(&runbook)
        .env("REWIND_DEMO_ROOT", site.root())
        .env("REWIND_DEMO_STATE", site.state.path())
        .env("REWIND_LOCK_DIR", site.state.path().join("locks"))
        .env("REWIND_DEMO_PORT", site.port.to_string())
        .env("REWIND_DEMO_WATCH_PERIOD", "100ms")
        .envs(LOADED_MACHINE)
        .env("REWIND_CACHE_DIR", cache_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let probes: Vec<&serde_json::Value> = lines.iter().filter(|l| l["event"] == "probe").collect();
    assert_eq!(probes[1]["action"], "none");
    assert_eq!(probes[2]["action"], "rollback", "{lines:?}");
    let rollback = lines.iter().find(|l| l["event"] == "rollback").unwrap();
    assert_eq!(rollback["outcome"], "rolled-back", "{rollback}");
    assert_eq!(probes[3]["healthy"], true, "{lines:?}");
    assert_eq!(
        site.get("/version").map(|(_, b)| b.trim().to_string()),
        Some("1.0.0".into())
    );
}

/// A rollback killed (SIGKILL, as a crash or the OOM killer would) right
/// after each line of its journal, one run per line, then `rewind resume`:
/// every time the service ends up serving exactly the release the first
/// decision chose (1.0.0, the one below the broken 1.1.0), never one
/// release further back (0.9.0), and a plain `rewind run` in between
/// refuses to start over the interrupted run.
#[test]
fn a_run_killed_after_any_journal_line_resumes_to_the_release_first_decided() {
    use std::os::unix::process::ExitStatusExt as _;
    let site =
        DemoSite::with_releases(&["0.9.0:healthy", "1.0.0:healthy", "1.1.0:broken"], "1.0.0");
    let mut completed = false;
    let mut kills = 0;
    for line in 1..200u32 {
        site.deploy("1.1.0", 500);
        let out = site.rewind_env(&["run"], &[("REWIND_CRASH_AFTER_EVENT", line.to_string())]);
        if out.status.signal() != Some(9) {
            // The journal had fewer lines: the run finished on its own.
            assert!(out.status.success(), "line {line}: {}", text(&out));
            completed = true;
        } else {
            kills += 1;
            if line % 4 == 1 {
                let refused = site.rewind(&["run"]);
                let t = text(&refused);
                assert_eq!(refused.status.code(), Some(7), "line {line}: {t}");
                assert!(t.contains("rewind resume"), "line {line}: {t}");
            }
            let out = site.rewind(&["resume"]);
            let t = text(&out);
            if out.status.code() == Some(2) && t.contains("nothing to resume") {
                // Killed after the run's last line: it had finished.
                completed = true;
            } else {
                assert!(out.status.success(), "resume after line {line}: {t}");
            }
        }
        assert_eq!(
            site.serves().as_deref(),
            Some("1.0.0"),
            "after a kill at line {line}, the release first decided is served"
        );
        assert!(site.current().ends_with("1.0.0"), "line {line}");
        assert_eq!(site.get("/healthz").map(|(s, _)| s), Some(200));
        if completed {
            break;
        }
    }
    assert!(completed, "the run finished within 200 journal lines");
    assert!(kills >= 15, "killed at {kills} journal lines only");
}
