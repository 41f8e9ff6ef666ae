//! The escalation chain under the default policy, on the stand-in: no
//! `--approve`, no terminal, a `[[notify]]` webhook on a real loopback
//! receiver. The MCP server's database settings point at a port where no
//! PostgreSQL listens (the settings live outside git, so no revert fixes
//! them): `/readyz` stays 503 whatever rewind does. Level 1 (restarts) and
//! level 2 (backups, revert to the baseline) run unattended; level 3 is
//! the DBA's point-in-time recovery, destructive: the run stops before
//! escalating into it, tells the receiver, and waits. `rewind deny` from
//! another process ends the run there, the data untouched.

#[allow(dead_code)]
#[path = "../support/receiver.rs"]
mod receiver;

use std::process::{Command, Stdio};

use receiver::*;

use crate::standin::*;
use crate::util::*;

/// `rewind` with exactly `args` and the runbook, in the stand-in's dir.
fn command(s: &StandIn, runbook: &std::path::Path, args: &[&str]) -> Command {
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

#[test]
fn a_database_the_mcp_server_cannot_reach_climbs_to_the_dba_level_and_is_denied() {
    let s = StandIn::new(BASELINE);
    let counts = s.db_counts();
    // The MCP server's database settings now name a port nobody listens
    // on; restarted, it answers /healthz but not /readyz.
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
    assert!(wait_until(PATIENCE, || s.get(s.ports.mcp, "/readyz")
        == Some(503)));
    assert_eq!(s.get(s.ports.mcp, "/healthz"), Some(200));

    let r = Receiver::start();
    let runbook = s.runbook(|c| {
        // The readiness waits run out, not the test's patience.
        c["startup_timeout_ms"] = 3000.into();
    });
    let text_rb = std::fs::read_to_string(&runbook).unwrap();
    std::fs::write(&runbook, format!("{text_rb}\n{}", r.notify_toml())).unwrap();
    let state = s.dir.path().join("state");
    let mut run = Proc::spawn(
        command(&s, &runbook, &["run", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );

    let (run_id, gate) = wait_for_gate(&state);
    assert_eq!(gate, "escalate-to-3");
    let asked = r.wait_for("approval-needed");
    assert_asked(&asked, &run_id, "aidis", "escalate-to-3");
    assert_eq!(asked["details"]["level"], 3);
    // Levels 1 and 2 ran unattended, each escalated on its own; level 3
    // is planned, not started.
    assert_eq!(levels(&state), [1, 2, 3]);
    let done: Vec<String> = ended(&state).into_iter().map(|(id, _)| id).collect();
    assert!(
        done.contains(&"restart-services".into()) && done.contains(&"backup-database".into()),
        "{done:?}"
    );
    let escalated: Vec<(u64, u64)> = events(&state)
        .iter()
        .filter(|e| e["event"] == "escalate")
        .map(|e| (e["from"].as_u64().unwrap(), e["to"].as_u64().unwrap()))
        .collect();
    assert_eq!(escalated, [(1, 2), (2, 3)]);
    let told = r.wait_for_where("escalate", |n| n["details"]["to"] == 2);
    assert_eq!(told["run_id"], run_id);
    assert_eq!(told["details"]["plugin"], "aidis");
    assert!(!started(&state, "manual-intervention"));
    assert_eq!(s.db_counts(), counts);

    let out = answer(command(&s, &runbook, &["deny", &run_id]));
    assert!(text(&out).contains("denied escalate-to-3"), "{}", text(&out));
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
    assert_eq!(levels(&state), [1, 2, 3]);
    assert!(waiting(&state).is_none(), "nothing waits any more");
    // The data as it was; the checkout on the baseline it was on.
    assert_eq!(s.db_counts(), counts);
    assert_eq!(s.head(), BASELINE);
    let end = r.wait_for("run-end");
    assert_eq!(end["run_id"], run_id);
}
