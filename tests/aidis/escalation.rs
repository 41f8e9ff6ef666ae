//! The escalation chain under the default policy, on the stand-in: no
//! `--approve`, no terminal, a `[[notify]]` webhook on a real loopback
//! receiver. In both tests the MCP server's database settings point at a
//! port where no PostgreSQL listens (the settings live outside git, so no
//! revert fixes them): `/readyz` stays 503 whatever rewind does.
//!
//! - With phase 4 deployed as well (500s), the phase 0 rollback (level 2,
//!   disruptive) runs unattended and does not make AIDIS ready; level 3 is
//!   the DBA's point-in-time recovery, destructive: the run stops before
//!   escalating into it, tells the receiver, and waits; `rewind deny` from
//!   another process ends it there, the data untouched.
//! - On the baseline, it is Scenario 3 (database connection issues): the
//!   pool reset and database recovery of level 1 run, the database is
//!   still not ready, and the plugin says stop: the runbook's next step is
//!   "CONTACT DBA", not a code revert. The run ends with that reason and
//!   tells the receiver; it never reverts the code nor asks to escalate.

#[allow(dead_code)]
#[path = "../support/receiver.rs"]
mod receiver;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use receiver::*;

use crate::standin::*;
use crate::util::*;

/// `rewind` with exactly `args` and the runbook, in the stand-in's dir.
fn command(s: &StandIn, runbook: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(REWIND);
    c.args(args)
        .arg(runbook)
        .current_dir(s.dir.path())
        .env("REWIND_CACHE_DIR", cache_dir())
        .env("REWIND_LOCK_DIR", s.dir.path().join("locks"))
        .env_remove("REWIND_LOG")
        .stdin(Stdio::null());
    c
}

/// The MCP server's database settings name a port nobody listens on;
/// restarted, it is not ready (and on phase 4 not healthy either).
fn break_the_database_settings(s: &StandIn) {
    let env_file = s.path("config/stand-in.env");
    let env = std::fs::read_to_string(&env_file).unwrap();
    let env = env.replace(
        &format!("PGPORT={}\n", s.pg.port),
        &format!("PGPORT={}\n", free_port()),
    );
    std::fs::write(&env_file, env).unwrap();
    let out = Command::new(s.path("restart-aidis.sh"))
        .current_dir(&s.root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(wait_until(PATIENCE, || {
        matches!(s.get(s.ports.mcp, "/readyz"), Some(500 | 503))
    }));
}

/// The stand-in's runbook with short readiness waits and the receiver.
fn notifying(s: &StandIn, r: &Receiver) -> PathBuf {
    let runbook = s.runbook(|c| {
        // The readiness waits run out, not the test's patience.
        c["startup_timeout_ms"] = 3000.into();
    });
    let text_rb = std::fs::read_to_string(&runbook).unwrap();
    std::fs::write(&runbook, format!("{text_rb}\n{}", r.notify_toml())).unwrap();
    runbook
}

fn spawn_run(s: &StandIn, runbook: &Path) -> Proc {
    Proc::spawn(
        command(s, runbook, &["run", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
}

#[test]
fn a_phase_0_rollback_that_leaves_the_database_unreachable_waits_before_the_dba_level_and_is_denied()
 {
    let s = StandIn::new(PHASE4);
    let counts = s.db_counts();
    break_the_database_settings(&s);
    assert_eq!(s.get(s.ports.mcp, "/healthz"), Some(500));
    let r = Receiver::start();
    let runbook = notifying(&s, &r);
    let state = s.dir.path().join("state");
    let mut run = spawn_run(&s, &runbook);

    let (run_id, gate) = wait_for_gate(&state);
    assert_eq!(gate, "escalate-to-3");
    let asked = r.wait_for("approval-needed");
    assert_asked(&asked, &run_id, "aidis", "escalate-to-3");
    assert_eq!(asked["details"]["level"], 3);
    // Level 2 ran unattended (Scenario 1 starts there): backups, the
    // revert to the baseline; level 3 is planned, not started.
    assert_eq!(levels(&state), [2, 3]);
    let done: Vec<String> = ended(&state).into_iter().map(|(id, _)| id).collect();
    assert!(done.contains(&"backup-database".into()), "{done:?}");
    assert_eq!(s.head(), BASELINE, "reverted");
    assert!(!s.refs("branch", "rollback-point-").is_empty());
    let told = r.wait_for("escalate");
    assert_eq!(told["run_id"], run_id);
    assert_eq!(told["details"]["plugin"], "aidis");
    assert_eq!(
        (
            told["details"]["from"].as_u64(),
            told["details"]["to"].as_u64()
        ),
        (Some(2), Some(3))
    );
    assert!(!started(&state, "manual-intervention"));
    assert_eq!(s.db_counts(), counts);

    let out = answer(command(&s, &runbook, &["deny", &run_id]));
    assert!(
        text(&out).contains("denied escalate-to-3"),
        "{}",
        text(&out)
    );
    let out = run.output();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let j = journal(&state);
    assert!(j.contains("escalate-to-3 was denied by"), "{j}");
    assert!(
        events(&state)
            .iter()
            .any(|e| e["event"] == "approval" && e["approved"] == false),
        "{j}"
    );
    assert!(!started(&state, "manual-intervention"));
    assert!(waiting(&state).is_none(), "nothing waits any more");
    // The data as it was; the checkout where level 2 left it.
    assert_eq!(s.db_counts(), counts);
    assert_eq!(s.head(), BASELINE);
    let end = r.wait_for("run-end");
    assert_eq!(end["run_id"], run_id);
}

#[test]
fn a_database_the_pool_reset_does_not_bring_back_stops_for_the_dba() {
    let s = StandIn::new(BASELINE);
    let counts = s.db_counts();
    let base = s.rev("HEAD");
    break_the_database_settings(&s);
    assert_eq!(s.get(s.ports.mcp, "/healthz"), Some(200));
    let r = Receiver::start();
    let runbook = notifying(&s, &r);
    let state = s.dir.path().join("state");
    let mut run = spawn_run(&s, &runbook);
    ends_without_waiting(&mut run.0, &state);
    let out = run.output();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("the plugin says not to escalate")
            && t.contains("contact the DBA")
            && t.contains("MCP ready GET"),
        "{t}"
    );
    // Level 1 (Scenario 3's pool reset) ran; no code revert, no backup of
    // level 2, nothing asked.
    assert_eq!(levels(&state), [1]);
    assert!(started(&state, "restart-services"));
    assert!(!started(&state, "backup-database"));
    assert_eq!(s.rev("HEAD"), base);
    assert!(s.refs("branch", "rollback-point-").is_empty());
    let stop = r.wait_for_where("step-failed", |n| !n["details"]["stop"].is_null());
    assert_eq!(stop["details"]["plugin"], "aidis");
    assert_eq!(stop["details"]["level"], 1);
    assert!(
        stop["details"]["stop"]
            .as_str()
            .unwrap()
            .contains("point-in-time recovery"),
        "{stop:#}"
    );
    assert!(!r.events().contains(&"approval-needed".to_string()));
    assert!(!r.events().contains(&"escalate".to_string()));
    assert_eq!(s.db_counts(), counts);
}
