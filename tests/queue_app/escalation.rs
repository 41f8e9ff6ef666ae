//! The escalation chain under the default policy, on the stand-in: no
//! `--approve`, no terminal, a `[[notify]]` webhook on a real loopback
//! receiver. Release 1.3.0 is down; the commit before it (1.2.0, which
//! also ran migration 0002) fails one request in five, so every level's
//! verification sees failed requests and ERROR lines. The code rollback
//! (level 4, disruptive) runs unattended; its verification also finds the
//! schema of migration 0002, which the down migration (level 5,
//! destructive) addresses: the run stops before it, tells the receiver,
//! and waits. Approved from another process, the down migration runs; it
//! does not fix the bug either, and a failed database rollback stops for a
//! person: the drop-and-restore (level 6) is never reached.

#[allow(dead_code)]
#[path = "../support/receiver.rs"]
mod receiver;

use std::process::Stdio;

use receiver::*;

use crate::util::{Proc, text};
use crate::{MIGRATION_UP_0002, Stand, example_dir};

#[test]
fn a_bad_previous_release_climbs_to_the_down_migration_only_when_approved_and_never_drops_the_database()
 {
    let mut s = Stand::new(1, 5, 100);
    s.pre_deploy_dump();
    // Release 1.2.0 migrated the schema and carries a latent bug; 1.3.0
    // takes the API down.
    s.sql(MIGRATION_UP_0002);
    let v12 = s.deploy_buggy_then_down();
    let s = s;
    let rows = s.sql("SELECT count(*) FROM projects");
    let columns = || {
        s.sql("SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = 'projects'")
    };
    assert_eq!(columns(), "id,name,updated_at,new_column");
    let state = s.base().join("rewind-state");
    let r = Receiver::start();
    let runbook = runbook_copy(
        &example_dir().join("rewind.toml"),
        s.base(),
        &r.notify_toml(),
    );
    let mut run = Proc::spawn(
        s.command(&["run".into(), "--json".into()], &runbook)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );

    // The code rollback ran on its own; the down migration waits.
    let (run_id, gate) = wait_for_gate(&state);
    assert_eq!(gate, "escalate-to-5");
    let asked = r.wait_for("approval-needed");
    assert_asked(&asked, &run_id, "queue-app", "escalate-to-5");
    assert_eq!(levels(&state), [4, 5]);
    assert!(
        ended(&state).iter().all(|(_, st)| st == "ok"),
        "{:?}",
        ended(&state)
    );
    assert_eq!(s.head(), v12, "back on the commit before the bad one");
    assert_eq!(s.get("/api/version").unwrap().1, "1.2.0");
    assert!(!started(&state, "migrate-down"));
    assert_eq!(columns(), "id,name,updated_at,new_column");
    let escalate = r.wait_for("escalate");
    assert_eq!(escalate["details"]["from"], 4);
    assert_eq!(escalate["details"]["to"], 5);

    let args = |a: &[&str]| -> Vec<String> { a.iter().map(|x| x.to_string()).collect() };
    let said = text(&answer(s.command(&args(&["approve", &run_id]), &runbook)));
    assert!(said.contains("approved escalate-to-5"), "{said}");

    // The down migration ran (backed up first); it does not fix a bug in
    // the code either, and the run stops there for a person: no gate to
    // the drop-and-restore.
    let out = run.output();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(started(&state, "migrate-down"));
    assert_eq!(columns(), "id,name,updated_at", "migrated down");
    let ours = std::fs::read_dir(s.base().join("backups"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("backup_before_rollback_")
        })
        .count();
    assert_eq!(ours, 1, "the dump before the migration");
    assert!(text(&out).contains("a person decides"), "{}", text(&out));
    assert_eq!(levels(&state), [4, 5]);
    // Never dropped: the live database with every row.
    assert!(!started(&state, "restore") && !started(&state, "verify-data"));
    assert_eq!(s.sql("SELECT count(*) FROM projects"), rows);
    let answers: Vec<(String, bool)> = events(&state)
        .iter()
        .filter(|e| e["event"] == "approval")
        .map(|e| {
            (
                e["step"].as_str().unwrap().to_string(),
                e["approved"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(answers, [("escalate-to-5".to_string(), true)]);
    let end = r.wait_for("run-end");
    assert_eq!(end["run_id"], run_id);
}
