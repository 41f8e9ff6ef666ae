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
    // Each notice is sent by its own background thread: they arrive in
    // any order, so wait for both escalations rather than count what has
    // come so far.
    for to in [2, 3] {
        r.wait_for_where("escalate", |n| n["details"]["to"] == to);
    }

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

/// The code rollback brings the app back, but the stable release reports
/// its version as `v1.0.0` where the plugin expects the tag's
/// `1.0.0-stable`: only that finding fails. The plugin says stop (a full
/// restore would not change a version label and would lose the data
/// written since the backup); the run ends with that reason, tells the
/// receiver, and never asks to escalate into level 3. (Before, level 2's
/// failure escalated into the restore.)
#[test]
fn a_version_label_that_differs_after_the_code_rollback_stops_instead_of_restoring() {
    let s = Stand::new(Breakage::Code);
    // The stable tag, as its build tool writes the version.
    s.git(&["checkout", "-q", crate::standin::STABLE]);
    std::fs::write(s.app().join("VERSION"), "v1.0.0\n").unwrap();
    s.git(&[
        "commit",
        "-q",
        "-am",
        "VERSION as the release tool writes it",
    ]);
    s.git(&["tag", "-f", crate::standin::STABLE]);
    s.git(&["push", "-q", "-f", "origin", "--tags"]);
    s.git(&["checkout", "-q", "main"]);
    let state = s.path("state");
    let r = Receiver::start();
    let runbook = runbook_copy(&example(), &s.path("run"), &r.notify_toml());
    let mut run = Proc::spawn(
        s.command(
            &["run".into(), "--json".into()],
            &runbook,
            &[("FF_RESTART_TIMEOUT_MS", "3000")],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped()),
    );
    // It ends on its own: it must not wait to escalate.
    ends_without_waiting(&mut run.0, &state);
    let out = run.output();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("the plugin says not to escalate")
            && t.contains("only the version it reports differs (v1.0.0, expected 1.0.0-stable"),
        "{t}"
    );
    assert_eq!(levels(&state), [1, 2]);
    assert!(!started(&state, "restore-db"));
    let stop = r.wait_for_where("step-failed", |n| !n["details"]["stop"].is_null());
    assert_eq!(stop["details"]["plugin"], "feature-flags");
    assert_eq!(stop["details"]["level"], 2);
    assert!(!r.events().contains(&"approval-needed".to_string()));
    // Level 3 never touched the tree nor the memory database.
    assert_eq!(moved_aside(&s), 0);
    assert_eq!(s.rows(&s.memory_db()), LIVE_ROWS);
    assert_eq!(
        s.health().map(|(st, _)| st),
        Some(200),
        "back up on the stable tag"
    );
}
