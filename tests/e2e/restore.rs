//! `rewind snapshots` and `rewind restore`: a person puts back what a
//! rollback snapshotted, with the plugin's grants, the policy's gate, a
//! preview first, an undo snapshot, and a check of the result.

use serde_json::{Value, json};

use crate::util::*;

/// A site snapshotted by a run of the fixture plugin, then changed: one
/// file edited, one removed, one added.
fn snapshotted_site(sb: &Sandbox, grants: &Value) -> (String, Vec<(std::path::PathBuf, Vec<u8>)>) {
    let site = sb.join("site");
    std::fs::create_dir_all(site.join("conf")).unwrap();
    std::fs::write(site.join("conf/app.env"), "MODE=good\n").unwrap();
    std::fs::write(site.join("index.html"), "v1").unwrap();
    let config = json!({"steps": [{"id": "snap", "effect": "reversible", "op": {"call": "snapshot", "args": {"label": "pre-rollback", "paths": [site]}}}]});
    sb.runbook(&fixture_runbook(&config, grants));
    let (code, report, stderr) = sb.run_json(&[]);
    assert_eq!(code, 0, "{report} {stderr}");
    let id = step(&step_results(&report), "snap")["Ok"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{report} {stderr}"))
        .to_string();
    let good = tree(&site);
    std::fs::write(site.join("conf/app.env"), "MODE=broken\n").unwrap();
    std::fs::remove_file(site.join("index.html")).unwrap();
    std::fs::write(site.join("stray.tmp"), "junk").unwrap();
    (id, good)
}

fn waiting(sb: &Sandbox) -> bool {
    std::fs::read_dir(sb.join("state/approvals")).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".waiting"))
    })
}

#[test]
fn a_snapshot_is_listed_previewed_restored_behind_the_gate_and_undone() {
    let sb = Sandbox::new();
    let site = sb.join("site");
    let (id, good) = snapshotted_site(&sb, &json!({"write": [site]}));
    let broken = tree(&site);

    // Listed, with the plugin and the run that took it.
    let out = sb.rewind(&["--json", "snapshots"]);
    assert!(out.status.success(), "{}", text(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["plugin"], "fx");
    assert_eq!(list[0]["label"], "pre-rollback");
    assert!(
        !list[0]["run"].as_str().unwrap().is_empty(),
        "the run that took it: {list:?}"
    );
    let out = sb.rewind(&["snapshots"]);
    assert!(text(&out).contains(&id), "{}", text(&out));

    // A dry run (by a unique prefix of the id) says what would change and
    // changes nothing.
    let prefix = &id[..id.len() - 2];
    let out = sb.rewind(&["restore", prefix, "--dry-run"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("1 changed and 1 missing entries and remove 1"),
        "{t}"
    );
    for p in ["conf/app.env", "index.html", "stray.tmp"] {
        assert!(t.contains(&site.join(p).display().to_string()), "{p}: {t}");
    }
    assert_eq!(tree(&site), broken, "a dry run changes nothing");

    // Restoring over live files is destructive: under the default policy
    // it waits for a person; approved from another shell, it restores and
    // checks the result.
    let mut restore = sb.spawn(&["--json", "restore", &id]);
    assert!(wait_until(PATIENCE, || waiting(&sb)), "the restore waits");
    assert_eq!(tree(&site), broken, "nothing changed before the approval");
    let out = sb.rewind(&["approve", "--step", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let out = restore.output();
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "restored", "{report}");
    assert_eq!(tree(&site), good, "the snapshot's exact files are back");
    let undo = report["undo"].as_str().unwrap().to_string();

    // The journal says who approved it; a restore is never taken for an
    // interrupted run.
    let run = report["run_id"].as_str().unwrap();
    let out = sb.rewind(&["--json", "show", run]);
    let t = text(&out);
    assert!(
        t.contains("\"approval\"") && t.contains("rewind approve"),
        "{t}"
    );
    assert!(
        t.contains("restore snapshot"),
        "the side effect is journaled: {t}"
    );

    // Again: nothing to do.
    let out = sb.rewind(&["--json", "restore", &id, "--approve", "destructive"]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["outcome"], "unchanged", "{r}");

    // The undo snapshot puts back what the restore replaced.
    let out = sb.rewind(&["restore", &undo, "--approve", &undo]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(tree(&site), broken, "undone");

    // A later rollback is not blocked by the restores.
    let out = sb.rewind(&["run", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_restore_is_denied_refused_without_a_grant_and_refused_when_damaged() {
    let sb = Sandbox::new();
    let site = sb.join("site");
    let (id, _) = snapshotted_site(&sb, &json!({"write": [site]}));
    let broken = tree(&site);

    // Denied from another shell: nothing changes, the journal says why.
    let mut restore = sb.spawn(&["restore", &id]);
    assert!(wait_until(PATIENCE, || waiting(&sb)));
    let out = sb.rewind(&["deny"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = restore.output();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(tree(&site), broken);
    let out = sb.rewind(&["history"]);
    assert!(text(&out).contains("denied"), "{}", text(&out));

    // A runbook that grants the plugin only reading the site cannot have
    // rewind write there on its behalf.
    let config = json!({"steps": []});
    sb.runbook(&fixture_runbook(&config, &json!({"read": [site]})));
    let out = sb.rewind(&["restore", &id, "--approve", "destructive"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("may not write") && t.contains("not granted"),
        "{t}"
    );
    assert_eq!(tree(&site), broken);

    // A damaged archive is refused before anything is compared or asked.
    sb.runbook(&fixture_runbook(&config, &json!({"write": [site]})));
    let archive = sb.join(&format!("state/snapshots/fx/{id}.tar.zst"));
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&archive, bytes).unwrap();
    let out = sb.rewind(&["restore", &id, "--approve", "destructive"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("damaged"), "{t}");
    assert_eq!(tree(&site), broken);

    // An unknown id says where it looked.
    let out = sb.rewind(&["restore", "no-such-snapshot"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("rewind snapshots"), "{}", text(&out));
}
