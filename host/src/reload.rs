//! Hot reload: watch plugin component files and, when one changes, compile
//! and validate the new file on a background thread, away from the run.
//! The run picks finished reloads up between two steps (see `drill`). A file
//! that does not validate (garbage, a core module, a wrong WIT version, or a
//! build still writing it) is refused and the old version keeps running.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};

use crate::runtime::{LoadedPlugin, Runtime};

/// A quiet period after the last write before a file is read, for writers
/// that give no sign of being done: a build or a copy that writes in
/// several chunks is done by then. A file renamed into place or closed
/// after writing is read at once (the writer said it is complete); a file
/// read too early fails validation, is refused, and the next write (a new
/// hash) reloads it.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// What became of a changed component file.
pub enum Reload {
    Ready {
        path: PathBuf,
        plugin: Box<LoadedPlugin>,
        /// From the quiet period's end to a validated, linked component.
        compile: Duration,
        /// When the first change of this burst was seen.
        changed_at: Instant,
    },
    Refused {
        path: PathBuf,
        sha256: String,
        error: String,
    },
}

/// Watches component files; finished reloads are collected with `poll`.
pub struct Reloader {
    rx: Receiver<Reload>,
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Reloader {
    /// Watch these files (their directories, so that a file replaced by a
    /// rename is still seen). `current` maps each file to the SHA-256 of
    /// the version running now, so touching a file without changing it is
    /// not a reload.
    pub fn start(rt: Arc<Runtime>, current: HashMap<PathBuf, String>) -> notify::Result<Self> {
        let (raw_tx, raw_rx) = mpsc::channel::<(PathBuf, bool)>();
        let files: Vec<PathBuf> = current.keys().cloned().collect();
        let wanted = files.clone();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res {
                    let done = written_completely(&ev.kind);
                    // Opens and reads (ours included) change nothing.
                    if matches!(ev.kind, notify::EventKind::Access(_)) && !done {
                        return;
                    }
                    for p in ev.paths {
                        if wanted.iter().any(|w| same_file(w, &p)) {
                            let _ = raw_tx.send((p, done));
                        }
                    }
                }
            })?;
        let mut dirs: Vec<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        for d in &dirs {
            watcher.watch(d, RecursiveMode::NonRecursive)?;
        }
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("rewind-reload".into())
            .spawn(move || debounce_and_load(rt, files, current, raw_rx, tx))
            .map_err(|e| notify::Error::generic(&e.to_string()))?;
        Ok(Self {
            rx,
            _watcher: watcher,
        })
    }

    /// Reloads finished since the last call, oldest first. Never blocks.
    pub fn poll(&self) -> Vec<Reload> {
        self.rx.try_iter().collect()
    }
}

/// Events after which a file is complete: it was renamed into place (the
/// atomic way to publish a file) or a writer closed it.
fn written_completely(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
    matches!(
        kind,
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write))
            | notify::EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
    )
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || (a.file_name() == b.file_name()
            && a.parent().and_then(|p| p.canonicalize().ok())
                == b.parent().and_then(|p| p.canonicalize().ok()))
}

fn debounce_and_load(
    rt: Arc<Runtime>,
    files: Vec<PathBuf>,
    mut current: HashMap<PathBuf, String>,
    raw: Receiver<(PathBuf, bool)>,
    tx: mpsc::Sender<Reload>,
) {
    // file -> (first change of the burst, when it may be read)
    let mut pending: HashMap<PathBuf, (Instant, Instant)> = HashMap::new();
    loop {
        // Sleep until the next file is due, or a new event.
        let wait = pending
            .values()
            .map(|(_, due)| due.saturating_duration_since(Instant::now()))
            .min()
            .unwrap_or(Duration::from_secs(3600));
        match raw.recv_timeout(wait) {
            Ok((p, done)) => {
                let Some(file) = files.iter().find(|f| same_file(f, &p)).cloned() else {
                    continue;
                };
                let now = Instant::now();
                let due = if done { now } else { now + DEBOUNCE };
                pending
                    .entry(file)
                    .and_modify(|e| e.1 = due)
                    .or_insert((now, due));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let quiet: Vec<PathBuf> = pending
            .iter()
            .filter(|(_, (_, due))| *due <= now)
            .map(|(f, _)| f.clone())
            .collect();
        for file in quiet {
            let (first, _) = pending.remove(&file).expect("pending");
            let Ok(bytes) = std::fs::read(&file) else {
                continue;
            };
            let sha = hex::encode(Sha256::digest(&bytes));
            if current.get(&file) == Some(&sha) {
                continue;
            }
            let start = Instant::now();
            let msg = match rt.load(&file) {
                Ok(plugin) if plugin.sha256 == sha => {
                    current.insert(file.clone(), sha);
                    Reload::Ready {
                        path: file,
                        plugin: Box::new(plugin),
                        compile: start.elapsed(),
                        changed_at: first,
                    }
                }
                // Changed again while compiling: the next event reloads it.
                Ok(_) => continue,
                Err(e) => {
                    current.insert(file.clone(), sha.clone());
                    Reload::Refused {
                        path: file,
                        sha256: sha,
                        error: e.to_string(),
                    }
                }
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
    }
}
