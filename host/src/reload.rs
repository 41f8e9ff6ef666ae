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

/// A quiet period after the last change before a file is read: a build or
/// a copy that writes in several chunks is done by then.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

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
        let (raw_tx, raw_rx) = mpsc::channel::<PathBuf>();
        let files: Vec<PathBuf> = current.keys().cloned().collect();
        let wanted = files.clone();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res {
                    for p in ev.paths {
                        if wanted.iter().any(|w| same_file(w, &p)) {
                            let _ = raw_tx.send(p);
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
    raw: Receiver<PathBuf>,
    tx: mpsc::Sender<Reload>,
) {
    // file -> (first change of the burst, last change)
    let mut pending: HashMap<PathBuf, (Instant, Instant)> = HashMap::new();
    loop {
        match raw.recv_timeout(Duration::from_millis(50)) {
            Ok(p) => {
                let Some(file) = files.iter().find(|f| same_file(f, &p)).cloned() else {
                    continue;
                };
                let now = Instant::now();
                pending
                    .entry(file)
                    .and_modify(|e| e.1 = now)
                    .or_insert((now, now));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let quiet: Vec<PathBuf> = pending
            .iter()
            .filter(|(_, (_, last))| last.elapsed() >= DEBOUNCE)
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
