use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{files, kv, snapshot, sqlite};
use crate::bindings::storage::{EntryKind, SqlValue};
use crate::bindings::types::{Error, Mode};
use crate::sandbox::{GrantOrigin, GrantsSpec, Sandbox};
use crate::state::{PluginEnv, StateDir};

struct Fixture {
    _tmp: tempfile::TempDir,
    /// The granted directory (`write` and `sqlite`).
    work: PathBuf,
    state: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let work = root.join("work");
    fs::create_dir(&work).unwrap();
    Fixture {
        _tmp: tmp,
        work,
        state: root.join("state"),
    }
}

fn env_named(f: &Fixture, name: &str, mode: Mode) -> PluginEnv {
    let dir = f.work.to_str().unwrap().to_string();
    let sandbox = Sandbox::new(
        GrantsSpec {
            write: vec![dir.clone()],
            sqlite: vec![dir],
            ..Default::default()
        },
        GrantOrigin {
            plugin: "t".into(),
            runbook: "rewind.toml".into(),
            line: 1,
        },
        &f.work,
    )
    .unwrap();
    PluginEnv::new(
        name.to_string(),
        sandbox,
        mode,
        None,
        StateDir::new(&f.state),
        reqwest::blocking::Client::new(),
    )
}

fn env(f: &Fixture, mode: Mode) -> PluginEnv {
    env_named(f, "t", mode)
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn failed(r: Result<impl std::fmt::Debug, Error>) -> String {
    match r {
        Err(Error::Failed(m)) => m,
        other => panic!("expected Failed, got {other:?}"),
    }
}

/// A tree with a file, a binary file, a symlink, an empty directory.
fn make_app(dir: &Path) -> Vec<u8> {
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join("empty")).unwrap();
    fs::write(dir.join("config.toml"), "port = 8080\n").unwrap();
    fs::set_permissions(dir.join("config.toml"), fs::Permissions::from_mode(0o640)).unwrap();
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(dir.join("bin/data"), &data).unwrap();
    fs::set_permissions(dir.join("bin/data"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("config.toml", dir.join("current")).unwrap();
    data
}

#[test]
fn snapshot_modify_restore_brings_back_exact_bytes() {
    let f = fixture();
    let e = env(&f, Mode::Execute);
    let app = f.work.join("app");
    let data = make_app(&app);
    let single = f.work.join("single.txt");
    fs::write(&single, "one\n").unwrap();
    let absent = f.work.join("absent");

    let info = snapshot::snapshot(&e, "pre deploy/1", &[s(&app), s(&single), s(&absent)]).unwrap();
    assert!(info.id.starts_with("pre-deploy-1-"), "{}", info.id);
    assert_eq!(info.files, 3);
    assert_eq!(info.bytes, 12 + data.len() as u64 + 4);
    assert_eq!(info.paths, vec![s(&absent), s(&app), s(&single)]);
    assert_eq!(info.sha256.len(), 64);
    let dir = &e.storage.snapshots_dir;
    assert_eq!(
        names(dir),
        vec![format!("{}.json", info.id), format!("{}.tar.zst", info.id)]
    );
    let m = snapshot::load_manifest(dir, &info.id).unwrap();
    assert_eq!(m.absent, vec![s(&absent)]);
    assert_eq!(m.symlinks[0].target, "config.toml");
    assert_eq!(
        format!("{:?}", snapshot::verify(&e, &info.id).unwrap()),
        format!("{info:?}")
    );

    // Break everything.
    fs::write(app.join("config.toml"), "port = 9090\n").unwrap();
    fs::set_permissions(app.join("config.toml"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(app.join("bin/data")).unwrap();
    fs::write(app.join("new-file"), "x").unwrap();
    fs::remove_dir(app.join("empty")).unwrap();
    fs::remove_file(app.join("current")).unwrap();
    std::os::unix::fs::symlink("new-file", app.join("current")).unwrap();
    fs::write(&single, "two\n").unwrap();
    fs::write(&absent, "now here").unwrap();

    let report = snapshot::restore(&e, &info.id).unwrap();
    assert_eq!(report.files, 3);
    assert_eq!(report.paths, info.paths);
    assert_eq!(fs::read(app.join("config.toml")).unwrap(), b"port = 8080\n");
    assert_eq!(
        fs::metadata(app.join("config.toml"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o640
    );
    assert_eq!(fs::read(app.join("bin/data")).unwrap(), data);
    assert_eq!(
        fs::metadata(app.join("bin/data"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
    assert!(!app.join("new-file").exists());
    assert!(app.join("empty").is_dir());
    assert_eq!(
        fs::read_link(app.join("current")).unwrap(),
        Path::new("config.toml")
    );
    assert_eq!(fs::read(&single).unwrap(), b"one\n");
    assert!(fs::symlink_metadata(&absent).is_err());
    // Nothing left behind next to the roots.
    assert_eq!(names(&f.work), vec!["app", "single.txt"]);
    let actions: Vec<_> = e
        .take_actions()
        .into_iter()
        .map(|a| (a.what, a.executed))
        .collect();
    assert!(actions.iter().all(|(_, x)| *x), "{actions:?}");
    assert!(
        actions[1]
            .0
            .starts_with(&format!("restore snapshot {}", info.id)),
        "{actions:?}"
    );
}

#[test]
fn restore_creates_a_root_removed_since() {
    let f = fixture();
    let e = env(&f, Mode::Execute);
    let app = f.work.join("app");
    make_app(&app);
    let info = snapshot::snapshot(&e, "x", &[s(&app)]).unwrap();
    fs::remove_dir_all(&app).unwrap();
    snapshot::restore(&e, &info.id).unwrap();
    assert_eq!(fs::read(app.join("config.toml")).unwrap(), b"port = 8080\n");
    assert_eq!(names(&f.work), vec!["app"]);
}

#[test]
fn verify_detects_corruption_and_restore_leaves_files_untouched() {
    let f = fixture();
    let e = env(&f, Mode::Execute);
    let app = f.work.join("app");
    make_app(&app);
    let info = snapshot::snapshot(&e, "pre", &[s(&app)]).unwrap();
    fs::write(app.join("config.toml"), "port = 9090\n").unwrap();

    let archive = snapshot::archive_path(&e.storage.snapshots_dir, &info.id);
    let mut bytes = fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 8] {
        *b ^= 0xff;
    }
    fs::write(&archive, &bytes).unwrap();

    let msg = failed(snapshot::verify(&e, &info.id));
    assert!(
        msg.contains(&format!("snapshot {}", info.id)) && msg.contains("sha256 mismatch"),
        "{msg}"
    );
    let msg = failed(snapshot::restore(&e, &info.id));
    assert!(msg.contains("sha256 mismatch"), "{msg}");
    assert_eq!(fs::read(app.join("config.toml")).unwrap(), b"port = 9090\n");
    assert_eq!(names(&f.work), vec!["app"]);
    // A failed restore records no side effect: it never got that far.
    assert!(
        e.take_actions()
            .iter()
            .all(|a| !a.what.starts_with("restore"))
    );
}

#[test]
fn verify_detects_a_file_that_does_not_match_the_manifest() {
    let f = fixture();
    let e = env(&f, Mode::Execute);
    let app = f.work.join("app");
    make_app(&app);
    let first = snapshot::snapshot(&e, "a", &[s(&app)]).unwrap();
    fs::write(app.join("config.toml"), "port = 9090\n").unwrap();
    let second = snapshot::snapshot(&e, "b", &[s(&app)]).unwrap();
    // The first manifest, over the second archive (with its hash): the
    // archive is intact but a file differs.
    let dir = &e.storage.snapshots_dir;
    fs::copy(
        snapshot::archive_path(dir, &second.id),
        snapshot::archive_path(dir, &first.id),
    )
    .unwrap();
    let mp = snapshot::manifest_path(dir, &first.id);
    let mut m: snapshot::Manifest = serde_json::from_slice(&fs::read(&mp).unwrap()).unwrap();
    m.archive_sha256 = second.sha256.clone();
    fs::write(&mp, serde_json::to_vec(&m).unwrap()).unwrap();

    let msg = failed(snapshot::verify(&e, &first.id));
    let want = format!(
        "snapshot {}: file {} sha256 mismatch",
        first.id,
        s(&app.join("config.toml"))
    );
    assert!(msg.starts_with(&want), "{msg}");
    assert!(snapshot::restore(&e, &first.id).is_err());
    assert_eq!(fs::read(app.join("config.toml")).unwrap(), b"port = 9090\n");
}

#[test]
fn snapshot_ids_are_validated_and_paths_checked() {
    let f = fixture();
    let e = env(&f, Mode::Execute);
    for bad in ["../x", "a/b", "..", "", ".hidden", "a..b"] {
        assert!(
            matches!(snapshot::verify(&e, bad), Err(Error::Invalid(_))),
            "{bad:?}"
        );
        assert!(
            matches!(snapshot::restore(&e, bad), Err(Error::Invalid(_))),
            "{bad:?}"
        );
    }
    assert!(failed(snapshot::verify(&e, "nope-20250101T000000000Z-0000")).contains("not found"));
    let outside = f.state.parent().unwrap().join("outside");
    fs::create_dir(&outside).unwrap();
    assert!(matches!(
        snapshot::snapshot(&e, "x", &[s(&outside)]),
        Err(Error::Denied(_))
    ));
    fs::create_dir(f.work.join("a")).unwrap();
    let r = snapshot::snapshot(&e, "x", &[s(&f.work.join("a")), s(&f.work)]);
    assert!(
        matches!(r, Err(Error::Invalid(ref m)) if m.contains("overlap")),
        "{r:?}"
    );
    assert!(matches!(
        snapshot::snapshot(&e, "x", &[]),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn prune_keeps_the_newest() {
    let f = fixture();
    let e = env(&f, Mode::Execute);
    let file = f.work.join("f");
    let mut ids = Vec::new();
    for i in 0..4 {
        fs::write(&file, format!("{i}")).unwrap();
        ids.push(snapshot::snapshot(&e, "nightly", &[s(&file)]).unwrap().id);
    }
    let other = snapshot::snapshot(&e, "other", &[s(&file)]).unwrap().id;
    let listed: Vec<String> = snapshot::list_snapshots(&e, "nightly")
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(listed, newest_first);

    // A dry run says how many would go, and deletes nothing.
    let dry = env(&f, Mode::DryRun);
    assert_eq!(snapshot::prune(&dry, "nightly", 2).unwrap(), 2);
    assert_eq!(snapshot::list_snapshots(&e, "").unwrap().len(), 5);

    assert_eq!(snapshot::prune(&e, "nightly", 2).unwrap(), 2);
    let left: Vec<String> = snapshot::list_snapshots(&e, "nightly")
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(left, newest_first[..2].to_vec());
    assert_eq!(snapshot::list_snapshots(&e, "other").unwrap()[0].id, other);
    let dir = &e.storage.snapshots_dir;
    for id in &ids[..2] {
        assert!(
            !snapshot::archive_path(dir, id).exists() && !snapshot::manifest_path(dir, id).exists()
        );
    }
    assert_eq!(names(dir).len(), 6);
    assert_eq!(snapshot::prune(&e, "nightly", 2).unwrap(), 0);
    assert_eq!(snapshot::prune(&e, "", 0).unwrap(), 3);
    assert!(names(dir).is_empty());
}

#[test]
fn dry_run_changes_nothing_on_disk() {
    let f = fixture();
    let app = f.work.join("app");
    let data = make_app(&app);
    let e = env(&f, Mode::DryRun);

    files::write_file(&e, &s(&f.work.join("new.txt")), b"hello").unwrap();
    assert!(!f.work.join("new.txt").exists());
    files::write_file(&e, &s(&app.join("config.toml")), b"changed").unwrap();
    assert_eq!(fs::read(app.join("config.toml")).unwrap(), b"port = 8080\n");
    assert_eq!(
        files::copy(&e, &s(&app.join("bin/data")), &s(&f.work.join("c"))).unwrap(),
        data.len() as u64
    );
    files::remove(&e, &s(&app)).unwrap();
    files::symlink(&e, "app/bin", &s(&f.work.join("link"))).unwrap();
    assert_eq!(names(&f.work), vec!["app"]);

    let info = snapshot::snapshot(&e, "pre", &[s(&app)]).unwrap();
    assert_eq!(info.id, snapshot::DRY_RUN_ID);
    assert_eq!((info.files, info.bytes), (2, 12 + data.len() as u64));
    assert!(!e.storage.snapshots_dir.exists());

    kv::set(&e, "release", "v2").unwrap();
    assert_eq!(kv::get(&e, "release").unwrap().as_deref(), Some("v2"));
    assert_eq!(kv::keys(&e, "rel").unwrap(), vec!["release"]);
    assert!(kv::delete(&e, "release").unwrap());
    assert_eq!(kv::get(&e, "release").unwrap(), None);
    kv::set(&e, "release", "v3").unwrap();
    assert!(!e.state.kv_db().exists());
    assert!(!f.state.exists());
    // Another run (a fresh environment) sees nothing of it.
    assert_eq!(kv::get(&env(&f, Mode::Execute), "release").unwrap(), None);

    let actions = e.take_actions();
    assert!(actions.iter().all(|a| !a.executed));
    let whats: Vec<&str> = actions.iter().map(|a| a.what.as_str()).collect();
    assert!(whats.contains(&"set key release"), "{whats:?}");
    assert!(
        whats.iter().any(|w| w.starts_with("write 5 bytes to ")),
        "{whats:?}"
    );
}

#[test]
fn dry_run_restore_reports_without_touching() {
    let f = fixture();
    let app = f.work.join("app");
    make_app(&app);
    let info = snapshot::snapshot(&env(&f, Mode::Execute), "pre", &[s(&app)]).unwrap();
    fs::write(app.join("config.toml"), "changed").unwrap();
    let e = env(&f, Mode::Check);
    let report = snapshot::restore(&e, &info.id).unwrap();
    assert_eq!((report.paths, report.files), (vec![s(&app)], 2));
    assert_eq!(fs::read(app.join("config.toml")).unwrap(), b"changed");
    assert_eq!(names(&f.work), vec!["app"]);
}

#[test]
fn kv_is_durable_and_scoped_per_plugin() {
    let f = fixture();
    let e = env(&f, Mode::Execute);
    assert_eq!(kv::get(&e, "a").unwrap(), None);
    assert!(
        !e.state.kv_db().exists(),
        "reads do not create the database"
    );
    kv::set(&e, "a/1", "x").unwrap();
    kv::set(&e, "a/2", "y").unwrap();
    kv::set(&e, "b", "z").unwrap();
    kv::set(&e, "a/1", "x2").unwrap();
    assert_eq!(kv::keys(&e, "a/").unwrap(), vec!["a/1", "a/2"]);
    assert_eq!(kv::keys(&e, "").unwrap(), vec!["a/1", "a/2", "b"]);
    assert!(kv::delete(&e, "a/2").unwrap());
    assert!(!kv::delete(&e, "a/2").unwrap());

    let again = env(&f, Mode::Execute);
    assert_eq!(kv::get(&again, "a/1").unwrap().as_deref(), Some("x2"));
    assert_eq!(kv::keys(&again, "").unwrap(), vec!["a/1", "b"]);
    let other = env_named(&f, "other", Mode::Execute);
    assert_eq!(kv::get(&other, "a/1").unwrap(), None);
    assert!(kv::keys(&other, "").unwrap().is_empty());
    // The overlay of a dry run starts from what is stored.
    let dry = env(&f, Mode::DryRun);
    kv::set(&dry, "c", "w").unwrap();
    assert_eq!(kv::keys(&dry, "").unwrap(), vec!["a/1", "b", "c"]);
    assert!(kv::delete(&dry, "b").unwrap());
    assert_eq!(kv::keys(&dry, "").unwrap(), vec!["a/1", "c"]);
    assert_eq!(kv::keys(&again, "").unwrap(), vec!["a/1", "b"]);
    assert!(matches!(kv::set(&e, "", "v"), Err(Error::Invalid(_))));
}

#[test]
fn atomic_writes_leave_no_temp_files_and_keep_permissions() {
    let f = fixture();
    let e = env(&f, Mode::Execute);
    let p = f.work.join("etc/app/config");
    files::write_file(&e, &s(&p), b"one").unwrap();
    assert_eq!(files::read_file(&e, &s(&p)).unwrap(), b"one");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o604)).unwrap();
    files::write_file(&e, &s(&p), b"two").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"two");
    assert_eq!(
        fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
        0o604
    );
    assert_eq!(names(p.parent().unwrap()), vec!["config"]);

    assert_eq!(
        files::copy(&e, &s(&p), &s(&f.work.join("copy"))).unwrap(),
        3
    );
    assert_eq!(fs::read(f.work.join("copy")).unwrap(), b"two");
    files::rename(&e, &s(&f.work.join("copy")), &s(&f.work.join("moved"))).unwrap();
    assert_eq!(names(&f.work), vec!["etc", "moved"]);

    let outside = f.state.parent().unwrap().join("x");
    assert!(matches!(
        files::write_file(&e, &s(&outside), b"x"),
        Err(Error::Denied(_))
    ));
    let msg = failed(files::read_file(&e, &s(&f.work.join("missing"))));
    assert_eq!(
        msg,
        format!(
            "cannot read {}: No such file or directory",
            s(&f.work.join("missing"))
        )
    );
    assert!(
        failed(files::write_file(&e, &s(&f.work.join("etc")), b"x")).contains("Is a directory")
    );
}

#[test]
fn symlink_switch_stat_list_and_remove() {
    let f = fixture();
    let e = env(&f, Mode::Execute);
    let w = &f.work;
    fs::create_dir_all(w.join("releases/v1")).unwrap();
    fs::create_dir_all(w.join("releases/v2")).unwrap();
    fs::write(w.join("releases/v1/app"), "1").unwrap();
    fs::write(w.join("releases/v2/app"), "22").unwrap();
    let current = s(&w.join("current"));
    files::symlink(&e, "releases/v1", &current).unwrap();
    files::symlink(&e, "releases/v2", &current).unwrap();
    assert_eq!(files::read_link(&e, &current).unwrap(), "releases/v2");
    assert_eq!(fs::read(w.join("current/app")).unwrap(), b"22");
    assert_eq!(names(w), vec!["current", "releases"]);
    let st = files::stat(&e, &current).unwrap().unwrap();
    assert_eq!(
        (st.kind, st.path.as_str()),
        (EntryKind::Symlink, current.as_str())
    );
    assert!(files::stat(&e, &s(&w.join("nope"))).unwrap().is_none());
    // A target outside the grants is refused.
    assert!(matches!(
        files::symlink(&e, "/etc", &current),
        Err(Error::Denied(_))
    ));

    let list = files::list_dir(&e, &s(w), true).unwrap();
    let got: Vec<(String, EntryKind, u64)> = list
        .into_iter()
        .filter(|d| d.kind != EntryKind::Dir)
        .map(|d| {
            (
                d.path.strip_prefix(&s(w)).unwrap().to_string(),
                d.kind,
                d.size,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("/current".to_string(), EntryKind::Symlink, 11),
            ("/releases/v1/app".to_string(), EntryKind::File, 1),
            ("/releases/v2/app".to_string(), EntryKind::File, 2),
        ]
    );
    assert_eq!(files::list_dir(&e, &s(w), false).unwrap().len(), 2);

    // Removing a link removes the link, not what it points to.
    files::remove(&e, &current).unwrap();
    assert!(w.join("releases/v2/app").exists());
    files::make_dir(&e, &s(&w.join("a/b/c"))).unwrap();
    assert!(w.join("a/b/c").is_dir());
    files::remove(&e, &s(&w.join("a"))).unwrap();
    assert_eq!(names(w), vec!["releases"]);
}

#[test]
fn sqlite_exec_query_backup_round_trip() {
    let f = fixture();
    let e = env(&f, Mode::Execute);
    let db = s(&f.work.join("app.db"));
    let changed = sqlite::exec(
        &e,
        &db,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL, raw BLOB);
         INSERT INTO t (name, score, raw) VALUES ('a', 1.5, x'0102'), ('b', NULL, NULL);
         UPDATE t SET score = 2.5 WHERE name = 'b';",
    )
    .unwrap();
    assert_eq!(changed, 3);
    let rows = sqlite::query(
        &e,
        &db,
        "SELECT id, name, score, raw FROM t WHERE id >= ?1 AND name <> ?2 ORDER BY id",
        vec![SqlValue::Integer(1), SqlValue::Text("zzz".into())],
    )
    .unwrap();
    assert_eq!(rows.columns, vec!["id", "name", "score", "raw"]);
    assert_eq!(rows.rows.len(), 2);
    assert!(matches!(&rows.rows[0][..], [
        SqlValue::Integer(1),
        SqlValue::Text(n),
        SqlValue::Real(r),
        SqlValue::Blob(b)
    ] if n == "a" && *r == 1.5 && b == &[1, 2]));
    assert!(matches!(rows.rows[1][3], SqlValue::Null));

    // A failing batch changes nothing.
    assert!(
        sqlite::exec(
            &e,
            &db,
            "INSERT INTO t (name) VALUES ('c'); INSERT INTO nope VALUES (1);"
        )
        .is_err()
    );
    let count = |db: &str| match &sqlite::query(&e, db, "SELECT count(*) FROM t", vec![])
        .unwrap()
        .rows[0][0]
    {
        SqlValue::Integer(n) => *n,
        other => panic!("{other:?}"),
    };
    assert_eq!(count(&db), 2);

    let backup = s(&f.work.join("backups/app.db"));
    let size = sqlite::backup(&e, &db, &backup).unwrap();
    assert_eq!(size, fs::metadata(&backup).unwrap().len());
    assert!(size > 0);
    assert_eq!(count(&backup), 2);
    assert_eq!(names(&f.work.join("backups")), vec!["app.db"]);
    // Again, over the previous backup.
    sqlite::exec(&e, &db, "INSERT INTO t (name) VALUES ('c')").unwrap();
    sqlite::backup(&e, &db, &backup).unwrap();
    assert_eq!(count(&backup), 3);
    assert_eq!(names(&f.work.join("backups")), vec!["app.db"]);

    let dry = env(&f, Mode::DryRun);
    assert_eq!(sqlite::exec(&dry, &db, "DELETE FROM t").unwrap(), 0);
    assert_eq!(count(&db), 3);
}

#[test]
fn sqlite_cannot_reach_files_outside_the_grant() {
    let f = fixture();
    let e = env(&f, Mode::Execute);
    let db = s(&f.work.join("app.db"));
    sqlite::exec(&e, &db, "CREATE TABLE t (x); INSERT INTO t VALUES (1);").unwrap();
    let outside = f.state.parent().unwrap().join("escape.db");
    let attach = format!(
        "COMMIT; ATTACH DATABASE '{}' AS o; CREATE TABLE o.t(x); BEGIN;",
        outside.display()
    );
    assert!(sqlite::exec(&e, &db, &attach).is_err());
    let vacuum_into = format!("COMMIT; VACUUM INTO '{}'; BEGIN;", outside.display());
    assert!(sqlite::exec(&e, &db, &vacuum_into).is_err());
    assert!(!outside.exists(), "no file was created outside the grant");
    // The filename as an expression, which the authorizer sees as none.
    let expr = format!(
        "COMMIT; ATTACH ('{}' || '') AS o; CREATE TABLE o.t(x); BEGIN;",
        outside.display()
    );
    let msg = failed(sqlite::exec(&e, &db, &expr));
    assert!(
        msg.contains("SQL stays inside the granted database"),
        "{msg}"
    );
    // Through a query too: VACUUM INTO works on a read-only connection.
    for sql in [
        format!("VACUUM INTO '{}'", outside.display()),
        format!("VACUUM INTO ('{}' || '')", outside.display()),
        format!("ATTACH ('{}' || '') AS o", outside.display()),
        "DETACH main".to_string(),
        "SELECT load_extension('/tmp/x.so')".to_string(),
        "PRAGMA temp_store_directory = '/tmp'".to_string(),
    ] {
        assert!(sqlite::query(&e, &db, &sql, vec![]).is_err(), "{sql}");
    }
    assert!(!outside.exists(), "no file was created outside the grant");
    // A plain VACUUM (disk-space recovery) attaches a nameless database of
    // its own: allowed for that statement alone. An attach by expression
    // in the same batch, before or after it, is still refused.
    sqlite::exec(&e, &db, "COMMIT; VACUUM; BEGIN;").unwrap();
    sqlite::exec(&e, &db, "COMMIT; vacuum main; BEGIN;").unwrap();
    for around in [
        format!(
            "COMMIT; VACUUM; ATTACH ('{}' || '') AS o; BEGIN;",
            outside.display()
        ),
        format!(
            "COMMIT; ATTACH ('{}' || '') AS o; VACUUM; BEGIN;",
            outside.display()
        ),
    ] {
        assert!(sqlite::exec(&e, &db, &around).is_err(), "{around}");
    }
    assert!(sqlite::query(&e, &db, "VACUUM", vec![]).is_err());
    assert!(!outside.exists(), "no file was created outside the grant");
    let n = sqlite::query(&e, &db, "SELECT count(*) FROM t", vec![]).unwrap();
    assert!(matches!(n.rows.as_slice(), [r] if matches!(r.as_slice(), [SqlValue::Integer(1)])));
}

#[test]
fn sqlite_query_is_read_only() {
    let f = fixture();
    let e = env(&f, Mode::Execute);
    let db = s(&f.work.join("app.db"));
    sqlite::exec(&e, &db, "CREATE TABLE t (x); INSERT INTO t VALUES (1);").unwrap();
    for write in ["INSERT INTO t VALUES (2)", "DELETE FROM t RETURNING x"] {
        match sqlite::query(&e, &db, write, vec![]) {
            Err(Error::Invalid(m)) => assert!(m.contains("only statements that read"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    let rows = sqlite::query(&e, &db, "SELECT count(*) FROM t", vec![]).unwrap();
    assert!(matches!(rows.rows[0][0], SqlValue::Integer(1)));

    let missing = f.work.join("missing.db");
    assert!(failed(sqlite::query(&e, &s(&missing), "SELECT 1", vec![])).contains("No such file"));
    assert!(!missing.exists());
    assert!(matches!(
        sqlite::query(&e, &db, "SELEC 1", vec![]),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        sqlite::query(&e, &db, "SELECT ?1", vec![]),
        Err(Error::Invalid(_))
    ));
    let many = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10001) SELECT i FROM n";
    let r = sqlite::query(&e, &db, many, vec![]);
    assert!(
        matches!(r, Err(Error::Invalid(ref m)) if m.contains("LIMIT")),
        "{r:?}"
    );
    let outside = f.state.parent().unwrap().join("x.db");
    assert!(matches!(
        sqlite::query(&e, &s(&outside), "SELECT 1", vec![]),
        Err(Error::Denied(_))
    ));
}

#[test]
fn a_failed_swap_puts_back_the_roots_already_swapped() {
    let f = fixture();
    let e = env(&f, Mode::Execute);
    let (a, b) = (f.work.join("a"), f.work.join("b"));
    make_app(&a);
    fs::write(&b, "b1").unwrap();
    let info = snapshot::snapshot(&e, "two", &[s(&a), s(&b)]).unwrap();
    fs::write(a.join("config.toml"), "a2").unwrap();
    // Read-only directories in the current copy must not stop the cleanup.
    fs::set_permissions(a.join("bin"), fs::Permissions::from_mode(0o555)).unwrap();
    fs::write(&b, "b2").unwrap();

    snapshot::FAIL_SWAP_AT.with(|c| c.set(Some(1)));
    let msg = failed(snapshot::restore(&e, &info.id));
    snapshot::FAIL_SWAP_AT.with(|c| c.set(None));
    assert!(
        msg.starts_with(&format!(
            "cannot restore {} from snapshot {}",
            s(&b),
            info.id
        )),
        "{msg}"
    );
    assert_eq!(fs::read(a.join("config.toml")).unwrap(), b"a2");
    assert_eq!(fs::read(&b).unwrap(), b"b2");
    assert_eq!(names(&f.work), vec!["a", "b"]);

    snapshot::restore(&e, &info.id).unwrap();
    assert_eq!(fs::read(a.join("config.toml")).unwrap(), b"port = 8080\n");
    assert_eq!(
        fs::metadata(a.join("bin")).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(fs::read(&b).unwrap(), b"b1");
    assert_eq!(names(&f.work), vec!["a", "b"]);
}

#[test]
fn a_write_swapped_out_of_the_grant_after_the_check_lands_nowhere() {
    let f = fixture();
    let e = env(&f, Mode::Execute);
    let outside = f.work.parent().unwrap().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::create_dir_all(f.work.join("conf")).unwrap();
    let p = e
        .sandbox
        .check_write(&s(&f.work.join("conf/app.toml")))
        .unwrap();
    let b = e
        .sandbox
        .beneath(crate::sandbox::Capability::Write, &p)
        .unwrap();
    // After the check (and even after the grant's handle is open), the
    // directory is swapped for a link out of the grant.
    fs::rename(f.work.join("conf"), f.work.join("conf.old")).unwrap();
    std::os::unix::fs::symlink(&outside, f.work.join("conf")).unwrap();
    let err = files::atomic_write(&b, &p, 0o644, |file| {
        std::io::Write::write_all(file, b"pwned").unwrap();
        Ok(5)
    });
    assert!(err.is_err(), "{err:?}");
    assert_eq!(names(&outside), Vec::<String>::new());
    assert_eq!(names(&f.work.join("conf.old")), Vec::<String>::new());
}
