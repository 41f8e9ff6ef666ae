//! The escalation chain under the default policy, on the stand-in: no
//! `--approve`, no terminal, a `[[notify]]` webhook on a real loopback
//! receiver. A deployment broke p2p in two files, and the isolation of
//! level 1 (p2p stopped, its own module restored, started) does not bring
//! it back. Level 2, the full rollback, runs the team's import-restoring
//! script, which no snapshot can undo (destructive with this runbook): the run stops before escalating into
//! it, tells the receiver, and waits; `rewind deny --step escalate-to-2`
//! from another process ends the run there, the system as level 1 left it.

#[allow(dead_code)]
#[path = "../support/receiver.rs"]
mod receiver;

use std::process::Stdio;

use receiver::*;

use crate::util::{Proc, text, tree};
use crate::{BROKEN_TRANSPORT, Village, broken_module, example_dir};

#[test]
fn isolation_that_does_not_fix_it_waits_before_the_full_rollback_and_is_denied() {
    let v = Village::new();
    v.deploy(
        &[
            ("core/p2p/mesh_protocol.py", &broken_module("p2p")),
            ("core/p2p/transport.py", BROKEN_TRANSPORT),
        ],
        &["p2p"],
    );
    assert_eq!(v.status("p2p"), Some(500));
    let state = v.base().join("rewind-state");
    let r = Receiver::start();
    let runbook = runbook_copy(
        &example_dir().join("rewind.toml"),
        v.base(),
        &r.notify_toml(),
    );
    let mut run = Proc::spawn(
        v.command(&["run".into(), "--json".into()], &runbook)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );

    let (run_id, gate) = wait_for_gate(&state);
    assert_eq!(gate, "escalate-to-2");
    let asked = r.wait_for("approval-needed");
    assert_asked(&asked, &run_id, "aivillage", "escalate-to-2");
    assert_eq!(asked["details"]["level"], 2);
    // Level 1 ran unattended, did not verify, and escalated.
    let done: Vec<String> = ended(&state).into_iter().map(|(id, _)| id).collect();
    assert!(!done.is_empty(), "level 1 ran");
    assert_eq!(levels(&state), [1, 2]);
    let escalate = r.wait_for("escalate");
    assert_eq!(escalate["details"]["from"], 1);
    assert_eq!(escalate["details"]["to"], 2);
    assert!(!started(&state, "restore-config") && !started(&state, "restore-imports"));
    // What level 1 left: the transport the deployment broke, its backup,
    // the deployed units, no maintenance page.
    let units = tree(&v.base().join("systemd"));
    let backups = v.backups();
    assert!(
        backups.contains(&v.root().join("core/p2p/transport.py.backup")),
        "{backups:?}"
    );
    assert_eq!(v.file("core/p2p/transport.py"), BROKEN_TRANSPORT);

    // Denied for exactly the gate that waits.
    let args: Vec<String> = ["deny", "--step", "escalate-to-2"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    let said = text(&answer(v.command(&args, &runbook)));
    assert!(said.contains("denied escalate-to-2"), "{said}");
    let out = run.output();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let j = journal(&state);
    assert!(j.contains("escalate-to-2 was denied by"), "{j}");
    for step in [
        "maintenance-on",
        "restore-backups",
        "restore-config",
        "restore-imports",
    ] {
        assert!(!started(&state, step), "{step} ran after the denial");
    }
    // Untouched since: same units, same backups, the broken transport, no
    // maintenance page; p2p still down, and the others never stopped.
    assert!(
        tree(&v.base().join("systemd")) == units,
        "unit files changed"
    );
    assert_eq!(v.backups(), backups);
    assert_eq!(v.file("core/p2p/transport.py"), BROKEN_TRANSPORT);
    assert!(!v.base().join("www/maintenance.html").exists());
    assert_eq!(v.status("p2p"), Some(500));
    for c in ["gateway", "agents", "rag"] {
        assert_eq!(v.status(c), Some(200), "{c}");
    }
    let end = r.wait_for("run-end");
    assert_eq!(end["run_id"], run_id);
}
