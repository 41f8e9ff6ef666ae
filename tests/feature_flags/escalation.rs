//! The escalation chain under the default policy, on the stand-in: no
//! `--approve`, no terminal, a `[[notify]]` webhook on a real loopback
//! receiver. Release 1.1.0 has a core bug and migrated the memory database
//! to a schema the stable code cannot read: the feature toggles (level 1)
//! and the code rollback (level 2) run unattended and do not bring the app
//! back; level 3 restores the pre-deployment backup over the live memory
//! database (destructive), so the run stops before escalating into it,
//! tells the receiver, and waits; `rewind approve` from another process
//! lets it go on, and the restore brings the app back.

#[allow(dead_code)]
#[path = "../support/receiver.rs"]
mod receiver;

use std::path::Path;
use std::process::Stdio;

use receiver::*;

use crate::standin::{BACKUP_ROWS, Breakage, LIVE_ROWS, Stand, example};
use crate::util::{Proc, text};

fn moved_aside(s: &Stand) -> usize {
    std::fs::read_dir(s.path("srv"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("app-failed-"))
        .count()
}

fn answer_from(s: &Stand, runbook: &Path, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    text(&answer(s.command(&args, runbook, &[])))
}

#[test]
fn a_schema_only_the_backup_fixes_waits_before_the_full_restore_until_approved() {
    let s = Stand::new(Breakage::CodeAndSchema);
    let state = s.path("state");
    let r = Receiver::start();
    let runbook = runbook_copy(&example(), &s.path("run"), &r.notify_toml());
    let mut run = Proc::spawn(
        // Levels 1 and 2 cannot bring the app back: they need not wait
        // the full 10 s each for it.
        s.command(
            &["run".into(), "--json".into()],
            &runbook,
            &[
                ("FF_RESTART_TIMEOUT_MS", "3000"),
                ("FF_RELOAD_TIMEOUT_MS", "3000"),
            ],
        )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );

    let (run_id, gate) = wait_for_gate(&state);
    assert_eq!(gate, "escalate-to-3");
    let asked = r.wait_for("approval-needed");
    assert_asked(&asked, &run_id, "feature-flags", "escalate-to-3");
    assert_eq!(asked["details"]["level"], 3);
    // Levels 1 and 2 ran on their own and escalated; level 3 is planned
    // and none of its steps started.
    assert_eq!(levels(&state), [1, 2, 3]);
    let told: Vec<u64> = events(&state)
        .iter()
        .filter(|e| e["event"] == "escalate")
        .map(|e| e["to"].as_u64().unwrap())
        .collect();
    assert_eq!(told, [2, 3]);
    for step in ["stop", "move-aside", "extract", "restore-db"] {
        assert!(!started(&state, step), "{step} started before approval");
    }
    // The live tree and memory database are as the code rollback left
    // them: nothing moved aside, nothing restored.
    assert_eq!(moved_aside(&s), 0);
    assert_eq!(s.rows(&s.memory_db()), LIVE_ROWS);
    assert_eq!(s.user_version(&s.memory_db()), 2);
    let before = r.events().len();
    assert!(before >= 4, "run-start, escalate x2, approval-needed: {:?}", r.events());

    let said = answer_from(&s, &runbook, &["approve", &run_id]);
    assert!(said.contains("approved escalate-to-3"), "{said}");
    let out = run.output();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The destructive level ran: the failed tree moved aside, the
    // pre-deployment memory database restored over the live one.
    assert_eq!(moved_aside(&s), 1);
    assert_eq!(s.rows(&s.memory_db()), BACKUP_ROWS);
    assert_eq!(s.user_version(&s.memory_db()), 1);
    assert!(started(&state, "restore-db"));
    let approval = events(&state)
        .into_iter()
        .find(|e| e["event"] == "approval")
        .expect("the approval is journaled");
    assert_eq!(approval["step"], "escalate-to-3");
    assert_eq!(approval["approved"], true);
    assert_eq!(approval["by"], "rewind approve");
    let end = r.wait_for("run-end");
    assert_eq!(end["run_id"], run_id);
    assert!(waiting(&state).is_none());
}
