//! The run journal: one JSON object per line, fsynced after every event,
//! under `state_dir/runs/<run-id>.jsonl`. It is what `history`, `show` and
//! reports read, and what survives a crash.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value;

#[derive(Debug)]
pub struct Journal {
    run_id: String,
    path: PathBuf,
    file: Mutex<File>,
}

impl Journal {
    /// Create the journal of a new run.
    pub fn create(runs_dir: &Path, run_id: &str) -> std::io::Result<Self> {
        crate::state::create_private_dir(runs_dir)?;
        let path = runs_dir.join(format!("{run_id}.jsonl"));
        let file = crate::state::private_file()
            .create_new(true)
            .append(true)
            .open(&path)?;
        // Make the new directory entry durable too.
        if let Ok(d) = File::open(runs_dir) {
            let _ = d.sync_all();
        }
        Ok(Self {
            run_id: run_id.to_string(),
            path,
            file: Mutex::new(file),
        })
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one event with a timestamp and the run id, and fsync it.
    /// Secrets are masked on the way (see `redact`): a journal never holds
    /// one, whatever text a plugin put in the event. A
    /// journal that cannot be written is reported on the terminal; the run
    /// goes on (stopping a rollback halfway for want of a log line would be
    /// worse).
    pub fn record(&self, mut event: Value) {
        if let Value::Object(map) = &mut event {
            map.insert("ts".into(), Value::String(now_rfc3339()));
            map.insert("run".into(), Value::String(self.run_id.clone()));
        }
        let mut line = crate::redact::json_string(&event, false);
        line.push('\n');
        let mut f = self.file.lock().unwrap();
        if let Err(e) = f.write_all(line.as_bytes()).and_then(|_| f.sync_data()) {
            tracing::error!("cannot write the journal {}: {e}", self.path.display());
        }
    }
}

/// Read a journal back, skipping a torn last line (a crash mid-write).
pub fn read(path: &Path) -> std::io::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
