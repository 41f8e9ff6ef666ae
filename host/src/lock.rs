//! Locks that keep two rollbacks apart: one per state directory (a runbook's
//! runs, journals and key-value state) and one per service (two runbooks,
//! with different state directories, that roll back the same service must
//! not both stop and start it). Both are `flock`s: the OS releases them when
//! the process dies, however it dies, so a lock is never left behind; the
//! file's text only names the holder for the refusal message.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::run::StartError;
use crate::state::StateDir;

/// The exclusive lock on a state directory, released on drop (and by the
/// OS if the process dies).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    pub fn acquire(state: &StateDir, run_id: &str) -> Result<Self, StartError> {
        let path = state.lock_file();
        crate::state::create_private_dir(state.path()).map_err(|source| StartError::State {
            path: path.clone(),
            source,
        })?;
        let file = lock_file(&path, run_id)?;
        Ok(Self { _file: file })
    }
}

/// The lock a `rewind watch` holds on its state directory for as long as
/// it watches: two watches of one runbook would both roll it back, and
/// `rewind status` reads who holds it.
#[derive(Debug)]
pub struct WatchLock {
    _file: File,
}

impl WatchLock {
    pub fn acquire(state: &StateDir) -> Result<Self, StartError> {
        let path = state.watch_lock_file();
        crate::state::create_private_dir(state.path()).map_err(|source| StartError::State {
            path: path.clone(),
            source,
        })?;
        match lock_file(&path, "watch") {
            Ok(file) => Ok(Self { _file: file }),
            Err(StartError::Locked { path, holder }) => {
                Err(StartError::WatchRunning { path, holder })
            }
            Err(e) => Err(e),
        }
    }
}

/// Who holds a lock file now, if its holder is alive (read, not tested
/// by locking, so looking never gets in a starting run's way).
pub fn live_holder(path: &Path) -> Option<Holder> {
    let text = std::fs::read_to_string(path).ok()?;
    Holder::parse(&text).filter(Holder::alive)
}

/// The lock on one service, whatever runbook rolls it back.
#[derive(Debug)]
pub struct ServiceLock {
    _file: File,
}

impl ServiceLock {
    /// Lock `service` in [`service_lock_dir`].
    pub fn acquire(service: &str, run_id: &str) -> Result<Self, StartError> {
        let dir = service_lock_dir();
        crate::state::create_private_dir(&dir).map_err(|source| StartError::State {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(service_file(service));
        match lock_file(&path, run_id) {
            Ok(file) => Ok(Self { _file: file }),
            Err(StartError::Locked { path, holder }) => Err(StartError::ServiceLocked {
                service: service.to_string(),
                path,
                holder,
            }),
            Err(e) => Err(e),
        }
    }
}

/// Where service locks live: `REWIND_LOCK_DIR` when set (tests give each
/// sandbox its own), else `/run/lock/rewind` for root and
/// `$XDG_RUNTIME_DIR/rewind` (or `/tmp/rewind-locks-<uid>`) for others:
/// a place every rewind on the machine looks at.
pub fn service_lock_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("REWIND_LOCK_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    use std::os::unix::fs::MetadataExt as _;
    // The owner of /proc/self is this process's effective uid.
    let uid = std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid());
    if uid == 0 && Path::new("/run/lock").is_dir() {
        return PathBuf::from("/run/lock/rewind");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("rewind"),
        None => std::env::temp_dir().join(format!("rewind-locks-{uid}")),
    }
}

/// A file name for a service: its name made safe, and a hash of the exact
/// name so two names that make the same safe text do not share a lock.
fn service_file(service: &str) -> String {
    use sha2::Digest as _;
    let safe: String = service
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let hash = hex::encode(sha2::Sha256::digest(service.as_bytes()));
    format!("service-{safe}-{}.lock", &hash[..12])
}

fn lock_file(path: &Path, run_id: &str) -> Result<File, StartError> {
    let io = |source| StartError::State {
        path: path.to_path_buf(),
        source,
    };
    let file = crate::state::private_file()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(StartError::Locked {
                holder: read_holder(path),
                path: path.to_path_buf(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    // The holder's name replaces the last one in a single write at offset
    // 0, padded over the old text, then the file is cut to it: a run
    // refused meanwhile reads one name or the other, never an empty file.
    use std::os::unix::fs::FileExt as _;
    let pid = std::process::id();
    let since = start_ticks(pid).unwrap_or(0);
    let text = format!("run {run_id} (pid {pid}, since {since})");
    let old_len = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
    let padded = format!("{text:<old_len$}");
    file.write_all_at(padded.as_bytes(), 0).map_err(io)?;
    file.set_len(text.len() as u64).map_err(io)?;
    file.sync_data().map_err(io)?;
    Ok(file)
}

/// A holder as its lock file names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub run_id: String,
    pub pid: u32,
    /// The process's start time (clock ticks since boot), to tell it from
    /// a later process that got the same pid.
    pub since: Option<u64>,
}

impl Holder {
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.trim().strip_prefix("run ")?;
        let (run_id, rest) = rest.split_once(" (pid ")?;
        let rest = rest.trim_end_matches(')');
        let (pid, since) = match rest.split_once(", since ") {
            Some((p, s)) => (p, s.parse().ok()),
            None => (rest, None),
        };
        Some(Self {
            run_id: run_id.to_string(),
            pid: pid.parse().ok()?,
            since,
        })
    }

    /// Whether the process that wrote the lock is still the one running
    /// under its pid.
    pub fn alive(&self) -> bool {
        let running = crate::imports::health::proc_state(self.pid)
            .is_some_and(|s| !matches!(s, 'Z' | 'X' | 'x'));
        running && self.since.is_none_or(|t| start_ticks(self.pid) == Some(t))
    }
}

/// When a process started, in clock ticks since boot (`/proc/PID/stat`
/// field 22), read after the command name, which may hold spaces.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Who holds a lock, from its text, for the refusal message. The holder
/// writes its name right after it locks: a refused run that looks in that
/// instant finds the file still empty (the very first run), so it looks
/// again for a moment before saying it cannot tell.
fn read_holder(path: &Path) -> String {
    for _ in 0..100 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if !text.trim().is_empty() {
            return match Holder::parse(&text) {
                Some(h) if h.alive() => format!("run {} (pid {}, running)", h.run_id, h.pid),
                Some(h) => format!(
                    "run {} (pid {}, which is no longer running: a process it started and that kept the lock open holds it now)",
                    h.run_id, h.pid
                ),
                None => text.trim().to_string(),
            };
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    "a run that has not written its name yet".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_parse_old_and_new_texts() {
        let h = Holder::parse("run 20261202T1-abcd (pid 42, since 977)").unwrap();
        assert_eq!(h.run_id, "20261202T1-abcd");
        assert_eq!((h.pid, h.since), (42, Some(977)));
        let old = Holder::parse("run r1 (pid 7)").unwrap();
        assert_eq!((old.pid, old.since), (7, None));
        assert!(Holder::parse("garbage").is_none());
    }

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not() {
        let me = std::process::id();
        let since = start_ticks(me);
        assert!(since.is_some());
        let h = Holder {
            run_id: "r".into(),
            pid: me,
            since,
        };
        assert!(h.alive());
        let other = Holder {
            since: since.map(|t| t + 1),
            ..h
        };
        assert!(
            !other.alive(),
            "same pid, another start time: not the holder"
        );
    }

    #[test]
    fn a_service_lock_is_exclusive_across_state_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(service_file("my service"));
        let a = lock_file(&path, "run-a").unwrap();
        match lock_file(&path, "run-b") {
            Err(StartError::Locked { holder, .. }) => {
                assert!(holder.contains("run-a"), "{holder}")
            }
            other => panic!("{other:?}"),
        }
        drop(a);
        lock_file(&path, "run-b").unwrap();
        assert_ne!(service_file("a b"), service_file("a_b"));
    }
}
