//! The escalation chain under the default policy, on the stand-in: no
//! `--approve`, no terminal, a `[[notify]]` webhook on a real loopback
//! receiver. Every abathur level holds a destructive step (a backup whose
//! retention prunes, a drop, a swap, a restore, a prune), so a run does
//! what it may unattended, stops before the first destructive step, tells
//! the receiver, and waits for `rewind approve` from another process; and
//! when its verification fails in a way the next level would not fix, the
//! plugin says stop: the run ends with the plugin's reason and never
//! escalates (a failed restore never leads to pruning backups).

#[allow(dead_code)]
#[path = "../support/receiver.rs"]
mod receiver;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use receiver::*;

use crate::util::{Proc, text};
use crate::{ALL, CORE, MEMORY, Stand, backups_in, example, manual_backups_in};

impl Stand {
    fn state(&self) -> PathBuf {
        self.root().join("rewind-state")
    }

    /// The example runbook with the receiver as a `[[notify]]` target and
    /// no `[policy]`: the defaults.
    fn notifying(&self, r: &Receiver) -> PathBuf {
        runbook_copy(&example(), self.root(), &r.notify_toml())
    }

    /// `rewind run` without `--approve`, in the background.
    fn spawn_run(&self, runbook: &Path) -> Proc {
        Proc::spawn(
            self.command(&["run".into(), "--json".into()], runbook)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
    }

    /// `rewind approve|deny` with `args`, from another process.
    fn answer(&self, runbook: &Path, args: &[&str]) -> String {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let out = answer(self.command(&args, runbook));
        text(&out)
    }
}

/// Milestone 3 failed (a half-deployed vector search); the API falls over
/// during the rollback. The backup and the reversible steps run
/// unattended; the drop of the vector tables waits for a person, and
/// approved with `--step`, it runs. The verification then finds the database
/// checks passing and only the API down: the plugin says stop, with its
/// reason, the receiver is told, and the run never escalates to milestone
/// 2's drop of the memory tables.
#[test]
fn milestone_3_waits_before_the_drop_and_stops_when_only_the_api_is_down() {
    let s = Stand::new();
    s.half_applied_vector_search();
    s.start_all();
    let r = Receiver::start();
    let runbook = s.notifying(&r);
    let before = s.counts(&s.db(), &ALL);
    let mut run = s.spawn_run(&runbook);

    // The backup (it deletes nothing: observe), the embedding services
    // stopped and the flags turned off run unattended (disruptive,
    // reversible); the drop of the vector tables waits for a person.
    let (run_id, gate) = wait_for_gate(&s.state());
    assert_eq!(gate, "drop-vector");
    assert_asked(
        &r.wait_for_where("approval-needed", |n| n["details"]["step"] == "drop-vector"),
        &run_id,
        "abathur",
        "drop-vector",
    );
    assert_eq!(r.wait_for("run-start")["run_id"], run_id);
    assert_eq!(manual_backups_in(&s.backups()).len(), 1);
    assert_eq!(
        ended(&s.state()),
        [
            ("backup".to_string(), "ok".to_string()),
            ("stop-embedding".into(), "ok".into()),
            ("disable-features".into(), "ok".into()),
        ]
    );
    assert_eq!(levels(&s.state()), [1]);
    assert!(
        s.names("table")
            .contains(&"document_embeddings_data".into())
    );
    assert_eq!(s.counts(&s.db(), &ALL), before, "no row touched yet");

    // The API crashes while the person looks.
    assert!(s.svc("stop", "abathur-api").status.success());
    let said = s.answer(&runbook, &["approve", "--step", "drop-vector"]);
    assert!(said.contains("approved drop-vector"), "{said}");
    let out = run.output();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // The drop ran: the vector tables are gone, documents pending.
    assert!(!s.started_level(2));
    assert!(
        !s.names("table")
            .contains(&"document_embeddings_data".into())
    );
    let pending: i64 = s
        .conn()
        .query_row(
            "SELECT sum(sync_status = 'pending') FROM document_index",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(pending, 200);
    // Stopped with the plugin's reason, told, never escalated: the
    // memory tables milestone 2 would drop are all there, with their rows.
    let t = text(&out);
    assert!(
        t.contains("the plugin says not to escalate")
            && t.contains("only the API health check failed"),
        "{t}"
    );
    let failed = r.wait_for_where("step-failed", |n| !n["details"]["stop"].is_null());
    assert_eq!(failed["run_id"], run_id);
    assert_eq!(failed["details"]["plugin"], "abathur");
    assert_eq!(failed["details"]["level"], 1);
    assert!(
        failed["details"]["stop"]
            .as_str()
            .unwrap()
            .contains("only the API health check failed"),
        "{failed:#}"
    );
    assert!(
        !r.events().contains(&"escalate".to_string()),
        "{:?}",
        r.events()
    );
    assert!(!events(&s.state()).iter().any(|e| e["event"] == "escalate"));
    assert_eq!(levels(&s.state()), [1]);
    assert_eq!(s.counts(&s.db(), &MEMORY), before[6..].to_vec());
    assert_eq!(s.counts(&s.db(), &CORE), before[..6].to_vec());
    let approvals: Vec<_> = events(&s.state())
        .into_iter()
        .filter(|e| e["event"] == "approval")
        .collect();
    assert_eq!(approvals.len(), 1, "{approvals:#?}");
    assert!(
        approvals.iter().all(|a| a["approved"] == true
            && a["by"] == "rewind approve"
            && a["who"]["uid"].is_u64())
    );
}

/// A core table is lost: the emergency production rollback stops the
/// services, keeps the failed database, and waits before restoring over
/// it. Approved, it restores the backup; the API comes up once and falls
/// over again, so the restore does not verify: the plugin says stop (the
/// next level prunes backups, which could lose the last good one), and the
/// run ends there. The old backup that level 5 would prune is still there.
#[test]
fn a_restore_that_does_not_verify_stops_and_never_prunes_backups() {
    let mut s = Stand::new();
    let old = s.daily_backup(
        "abathur_2025-08-01_02-00-00.db",
        Duration::from_secs(40 * 86_400),
    );
    let good = s.daily_backup(
        "abathur_2025-10-09_02-00-00.db",
        Duration::from_secs(2 * 3600),
    );
    let at_backup = s.counts(&s.db(), &ALL);
    s.start_all();
    s.conn()
        .execute_batch("PRAGMA foreign_keys = OFF; DROP TABLE agents")
        .unwrap();
    // The API's port, held by a server that answers as the API does
    // without its agents table (503), and as the test says below.
    let api = FlappingApi::start();
    s.set("ABATHUR_API_PORT", &api.port.to_string());
    let r = Receiver::start();
    let runbook = s.notifying(&r);
    let mut run = s.spawn_run(&runbook);

    let (run_id, gate) = wait_for_gate(&s.state());
    assert_eq!(gate, "restore");
    assert_asked(
        &r.wait_for("approval-needed"),
        &run_id,
        "abathur",
        "restore",
    );
    assert_eq!(levels(&s.state()), [4]);
    assert_eq!(
        ended(&s.state()),
        [
            ("stop".to_string(), "ok".to_string()),
            ("assess".into(), "ok".into()),
            ("forensics".into(), "ok".into()),
        ]
    );
    assert!(
        !s.names("table").contains(&"agents".into()),
        "nothing restored yet"
    );
    assert_eq!(backups_in(&s.backups()).len(), 2);

    // After the restart, the API answers once, then fails again.
    api.healthy_answers(1);
    let said = s.answer(&runbook, &["approve"]);
    assert!(said.contains("approved restore"), "{said}");
    let out = run.output();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    // Restored: the backup's rows are back.
    assert_eq!(s.counts(&s.db(), &ALL), at_backup);
    assert!(
        t.contains("the plugin says not to escalate")
            && t.contains("the restore did not verify")
            && t.contains("prunes backups"),
        "{t}"
    );
    let failed = r.wait_for_where("step-failed", |n| !n["details"]["stop"].is_null());
    assert_eq!(failed["run_id"], run_id);
    assert_eq!(failed["details"]["level"], 4);
    // Never escalated to the disk level: nothing pruned.
    assert_eq!(levels(&s.state()), [4]);
    assert!(!started(&s.state(), "prune-backups"));
    assert!(old.exists() && good.exists(), "no backup pruned");
    assert!(
        !r.events().contains(&"escalate".to_string()),
        "{:?}",
        r.events()
    );
    let end = r.wait_for("run-end");
    assert_eq!(end["run_id"], run_id);
}

impl Stand {
    fn started_level(&self, level: u64) -> bool {
        levels(&self.state()).contains(&level)
    }
}

/// The API's `/health` as it crash-loops: 503 (`{"status": "unhealthy"}`),
/// except for as many healthy answers as the test allows.
struct FlappingApi {
    port: u16,
    healthy: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    server: std::sync::Arc<tiny_http::Server>,
}

impl FlappingApi {
    fn start() -> Self {
        use std::sync::atomic::Ordering;
        let server = std::sync::Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let healthy = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (srv, left) = (server.clone(), healthy.clone());
        std::thread::spawn(move || {
            for req in srv.incoming_requests() {
                let up = left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                let (status, body) = if up {
                    (200, r#"{"status": "healthy"}"#)
                } else {
                    (
                        503,
                        r#"{"status": "unhealthy", "error": "no such table: agents"}"#,
                    )
                };
                let _ =
                    req.respond(tiny_http::Response::from_string(body).with_status_code(status));
            }
        });
        Self {
            port,
            healthy,
            server,
        }
    }

    fn healthy_answers(&self, n: usize) {
        self.healthy.store(n, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for FlappingApi {
    fn drop(&mut self) {
        self.server.unblock();
    }
}
