//! The run journal: one JSON object per line under
//! `state_dir/runs/<run-id>.jsonl`. It is what `history`, `show` and
//! reports read, and what survives a crash.
//!
//! Durability costs one `fdatasync` (~0.3 ms on a disk, more when it is
//! busy), so it is paid where a crash would otherwise lose what matters:
//! before every side effect (the `action` record is the intent, written
//! and synced before the effect happens), for a manual approval, and at
//! the end of a run. Every other event (step starts and ends, assessments,
//! probes, logs) is appended without a sync of its own and becomes
//! durable with the next synced one, since a sync covers all earlier
//! writes of the file. After a crash the journal therefore holds every
//! side effect that may have happened, in order.

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
    /// The first write that failed: from then on the journal may be
    /// missing lines, and the run starts nothing new (see `broken`).
    broken: Mutex<Option<String>>,
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
            broken: Mutex::new(None),
        })
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one event with a timestamp and the run id; fsync it when it
    /// is one that must survive a crash (see the module doc).
    /// Secrets are masked on the way (see `redact`): a journal never holds
    /// one, whatever text a plugin put in the event. A journal that cannot
    /// be written is reported on the terminal and marked broken: the step
    /// under way finishes (stopping it halfway would be worse), and the run
    /// starts no other.
    pub fn record(&self, mut event: Value) {
        let durable = matches!(
            event.get("event").and_then(Value::as_str),
            Some("action" | "decision" | "manual-approved" | "run-end" | "watch-end")
        );
        if let Value::Object(map) = &mut event {
            map.insert("ts".into(), Value::String(now_rfc3339()));
            map.insert("run".into(), Value::String(self.run_id.clone()));
        }
        let mut line = crate::redact::json_string(&event, false);
        line.push('\n');
        let mut f = self.file.lock().unwrap();
        let written = f
            .write_all(line.as_bytes())
            .and_then(|_| if durable { f.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            tracing::error!("cannot write the journal {}: {e}", self.path.display());
            let mut b = self.broken.lock().unwrap();
            if b.is_none() {
                *b = Some(format!(
                    "the journal {} can no longer be written ({e}); nothing more is started on a journal that lost lines: free space (or fix the disk) and look at the service",
                    self.path.display()
                ));
            }
        }
    }

    /// Why the journal can no longer be trusted to hold every event, if a
    /// write failed. The run checks it before each step: the step under
    /// way finishes, nothing new starts.
    pub fn broken(&self) -> Option<String> {
        self.broken.lock().unwrap().clone()
    }
}

/// Read a journal back, byte-safe: a line that is not a JSON event (bytes
/// that are not UTF-8, a line damaged on disk, a torn last line after a
/// crash mid-write) is reported with its number and skipped, and the rest
/// is read. One bad line never hides a whole run, nor every run.
pub fn read(path: &Path) -> std::io::Result<Vec<Value>> {
    let bytes = std::fs::read(path)?;
    let mut events = Vec::new();
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let last = lines.len().saturating_sub(1);
    for (i, raw) in lines.iter().enumerate() {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Value>(raw) {
            Ok(v @ Value::Object(_)) => events.push(v),
            _ if i == last => tracing::warn!(
                "{}: line {} is incomplete (the run was cut off while writing it); skipped",
                path.display(),
                i + 1
            ),
            _ => tracing::warn!(
                "{}: line {} is damaged ({} bytes that are not a JSON event); skipped, the rest is read",
                path.display(),
                i + 1,
                raw.len()
            ),
        }
    }
    Ok(events)
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_lines_are_skipped_and_the_rest_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.jsonl");
        let mut bytes = b"{\"event\":\"run-start\",\"run\":\"r\"}\n".to_vec();
        bytes.extend_from_slice(b"\xff\xfe not utf-8\n");
        bytes.extend_from_slice(b"not json\n");
        bytes.extend_from_slice(b"{\"event\":\"run-end\",\"run\":\"r\"}\n");
        bytes.extend_from_slice(b"{\"event\":\"ste");
        std::fs::write(&p, bytes).unwrap();
        let events = read(&p).unwrap();
        let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
        assert_eq!(names, ["run-start", "run-end"]);
    }
}
