//! The run journal: one JSON object per line under
//! `state_dir/runs/<run-id>.jsonl`, each an [`Event`] with a sequence
//! number, a timestamp and the run id. It is what `history`, `show`,
//! reports and `rewind resume` read, and what survives a crash.
//!
//! It is written ahead: a step's start is recorded before the step runs,
//! every side effect (`action`) and every decision a plugin pins before it
//! happens, and a step's end after it. Durability costs one `fdatasync`
//! (~0.3 ms on a disk, more when it is busy), so it is paid once per side
//! effect, where a crash would otherwise lose what resume needs: the
//! intent record before every side effect and decision, a manual
//! approval, and the end of each plugin and of the run. Observations cost
//! no sync, and neither do step boundaries: they ride on the next sync,
//! since a sync covers all earlier writes of the file. After a crash (a
//! power cut; a killed process loses nothing it wrote) the journal
//! therefore holds every side effect that may have happened, in order; a
//! step whose end was not yet synced reads as in flight, with its side
//! effects, and `rewind resume` runs it again only if the plugin marks it
//! repeatable, else asks a person, as for any step cut short.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::imports::storage::kv::Pin;
use crate::run::{AssessmentReport, FindingReport, StepStatus, VerificationReport};

/// A step as the plan gave it, kept whole in the journal so that
/// `rewind resume` carries on with the very steps the run planned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub id: String,
    pub title: String,
    pub manual: bool,
    pub detail: String,
    pub effect: String,
    pub repeatable: bool,
}

/// Everything a journal holds. The tag is the line's `event` field.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    RunStart {
        runbook: String,
        name: String,
        mode: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plugin: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        level: Option<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        drill: Option<String>,
        /// `rewind restore`: the snapshot put back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        restore: Option<String>,
        pid: u32,
        host_version: String,
        /// SHA-256 of the runbook as run (after `${env:...}` substitution,
        /// secrets included, so only the hash is kept).
        #[serde(default)]
        runbook_sha256: String,
        /// SHA-256 of each plugin's `[plugin.config]`, by plugin name.
        #[serde(default)]
        configs: BTreeMap<String, String>,
    },
    /// `rewind resume` took the run over from here.
    Resume {
        pid: u32,
        host_version: String,
        /// What changed since the run started, accepted with `--force`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        forced: Vec<String>,
    },
    PluginLoaded {
        plugin: String,
        component: String,
        sha256: String,
        version: String,
        #[serde(default)]
        service: String,
        compiled: bool,
        #[serde(default)]
        load_ms: f64,
        /// Why a compiled-cache entry was not trusted and the component
        /// compiled again, if one was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_rejected: Option<String>,
    },
    /// Decisions pinned by earlier runs of the incident that this run keeps.
    DecisionsKept {
        plugin: String,
        decisions: Vec<Pin>,
    },
    /// The incident's decisions were forgotten: the service was verified
    /// back, or the operator asked to decide again.
    DecisionsCleared {
        plugin: String,
        reason: String,
        decisions: Vec<Pin>,
    },
    Decision {
        plugin: String,
        key: String,
        value: String,
    },
    Assessment {
        plugin: String,
        assessment: AssessmentReport,
    },
    Plan {
        plugin: String,
        level: u8,
        level_name: String,
        /// The worst effect of the planned steps.
        #[serde(default)]
        effect: String,
        steps: Vec<PlannedStep>,
    },
    StepStart {
        plugin: String,
        level: u8,
        step: String,
        title: String,
        #[serde(default)]
        effect: String,
        #[serde(default)]
        repeatable: bool,
        plugin_sha256: String,
        /// Run again by `rewind resume` after it was cut short.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        again: bool,
    },
    Action {
        plugin: String,
        #[serde(default)]
        step: Option<String>,
        what: String,
        executed: bool,
    },
    Log {
        plugin: String,
        #[serde(default)]
        step: Option<String>,
        level: String,
        message: String,
    },
    ManualApproved {
        plugin: String,
        step: String,
        by: String,
    },
    /// A step (or an escalation) beyond the policy waits for a person.
    ApprovalNeeded {
        plugin: String,
        level: u8,
        /// The step's id, or `escalate-to-N`.
        step: String,
        effect: String,
        /// The policy's limit it is over.
        limit: String,
        detail: String,
    },
    /// A person's answer to an `approval-needed`.
    Approval {
        plugin: String,
        level: u8,
        step: String,
        approved: bool,
        /// How: `terminal`, `--approve X`, `rewind approve`.
        by: String,
        who: crate::policy::Who,
    },
    StepEnd {
        plugin: String,
        level: u8,
        step: String,
        status: StepStatus,
        message: String,
        duration_ms: f64,
        #[serde(default)]
        findings: Vec<FindingReport>,
    },
    StepSkipped {
        plugin: String,
        step: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Verification {
        plugin: String,
        level: u8,
        verification: VerificationReport,
    },
    Escalate {
        plugin: String,
        from: u8,
        to: u8,
        reason: String,
    },
    PluginEnd {
        plugin: String,
        outcome: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        level: Option<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    PluginSkipped {
        plugin: String,
        reason: String,
    },
    Reload {
        plugin: String,
        reload: Value,
    },
    ReloadRefused {
        plugin: String,
        sha256: String,
        error: String,
    },
    ReloadLate {
        plugin: String,
        sha256: String,
        note: String,
    },
    DrillPhase {
        phase: String,
        ms: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rounds: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detected: Option<bool>,
    },
    /// A `[[notify]]` target was told (or could not be).
    Notified {
        target: String,
        /// The event the target was told of.
        about: String,
        ok: bool,
        attempts: u32,
        result: String,
    },
    RunEnd {
        outcome: String,
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        drill: Option<Value>,
    },
}

impl Event {
    /// Whether the event must be on disk before the run goes on (see the
    /// module doc).
    fn durable(&self) -> bool {
        matches!(
            self,
            Self::Action { .. }
                | Self::Decision { .. }
                | Self::DecisionsCleared { .. }
                | Self::ManualApproved { .. }
                | Self::ApprovalNeeded { .. }
                | Self::Approval { .. }
                | Self::PluginEnd { .. }
                | Self::RunEnd { .. }
                | Self::Resume { .. }
        )
    }
}

#[derive(Debug)]
pub struct Journal {
    run_id: String,
    path: PathBuf,
    file: Mutex<File>,
    /// The next line's sequence number.
    seq: AtomicU64,
    /// Crash testing: kill this process right after writing the line with
    /// this number (`REWIND_CRASH_AFTER_EVENT`).
    crash_after: Option<u64>,
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
            seq: AtomicU64::new(1),
            crash_after: crash_after(),
            broken: Mutex::new(None),
        })
    }

    /// Open an interrupted run's journal to carry on writing it
    /// (`rewind resume`): lines go on after the last one, numbered on from
    /// the highest sequence number found. A torn last line (a crash in the
    /// middle of a write) is ended first, so the next event starts a line
    /// of its own.
    pub fn reopen(path: &Path, run_id: &str) -> std::io::Result<Self> {
        let bytes = std::fs::read(path)?;
        let last_seq = read_bytes(&bytes, path)
            .iter()
            .filter_map(|(_, v)| v["seq"].as_u64())
            .max()
            .unwrap_or(0);
        let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
        if !bytes.is_empty() && !bytes.ends_with(b"\n") {
            file.write_all(b"\n")?;
        }
        Ok(Self {
            run_id: run_id.to_string(),
            path: path.to_path_buf(),
            file: Mutex::new(file),
            seq: AtomicU64::new(last_seq + 1),
            crash_after: crash_after(),
            broken: Mutex::new(None),
        })
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one event with its sequence number, a timestamp and the run
    /// id; fsync it when it is one that must survive a crash (see the
    /// module doc). Secrets are masked on the way (see `redact`): a journal
    /// never holds one, whatever text a plugin put in the event. A journal
    /// that cannot be written is reported on the terminal and marked
    /// broken: the step under way finishes (stopping it halfway would be
    /// worse), and the run starts no other.
    pub fn record(&self, event: Event) {
        let durable = event.durable();
        let mut value = match serde_json::to_value(&event) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!("cannot encode a journal event: {e}");
                return;
            }
        };
        // Lines are numbered under the file's lock, so numbers follow the
        // order of the lines.
        let mut f = self.file.lock().unwrap();
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        if let Value::Object(map) = &mut value {
            map.insert("seq".into(), Value::from(seq));
            map.insert("ts".into(), Value::String(now_rfc3339()));
            map.insert("run".into(), Value::String(self.run_id.clone()));
        }
        let mut line = crate::redact::json_string(&value, false);
        line.push('\n');
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
        if self.crash_after == Some(seq) {
            // As a power cut or `kill -9` would: no destructor, no flush
            // beyond what was synced, children left as they are.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::SIGKILL);
        }
    }

    /// Why the journal can no longer be trusted to hold every event, if a
    /// write failed. The run checks it before each step: the step under
    /// way finishes, nothing new starts.
    pub fn broken(&self) -> Option<String> {
        self.broken.lock().unwrap().clone()
    }
}

/// `REWIND_CRASH_AFTER_EVENT=N`: a crash-testing point. The process kills
/// itself with SIGKILL right after journal line N is written, so a test can
/// stop a run at every boundary of its journal, deterministically, and
/// check that `rewind resume` puts the service back from there.
fn crash_after() -> Option<u64> {
    std::env::var("REWIND_CRASH_AFTER_EVENT")
        .ok()
        .and_then(|v| v.trim().parse().ok())
}

/// Read a journal back, byte-safe: a line that is not a JSON event (bytes
/// that are not UTF-8, a line damaged on disk, a torn last line after a
/// crash mid-write) is reported with its number and skipped, and the rest
/// is read. One bad line never hides a whole run, nor every run.
pub fn read(path: &Path) -> std::io::Result<Vec<Value>> {
    let bytes = std::fs::read(path)?;
    Ok(read_bytes(&bytes, path)
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

/// The events of a journal with their line numbers, as typed [`Event`]s;
/// a line that is JSON but no event this rewind knows is reported and
/// skipped like a damaged one.
pub fn read_events(path: &Path) -> std::io::Result<Vec<(usize, Event)>> {
    let bytes = std::fs::read(path)?;
    let mut out = Vec::new();
    for (line, v) in read_bytes(&bytes, path) {
        match serde_json::from_value::<Event>(v) {
            Ok(e) => out.push((line, e)),
            Err(e) => tracing::warn!(
                "{}: line {line} is not an event this rewind knows ({e}); skipped",
                path.display()
            ),
        }
    }
    Ok(out)
}

fn read_bytes(bytes: &[u8], path: &Path) -> Vec<(usize, Value)> {
    let mut events = Vec::new();
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let last = lines.len().saturating_sub(1);
    for (i, raw) in lines.iter().enumerate() {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Value>(raw) {
            Ok(v @ Value::Object(_)) => events.push((i + 1, v)),
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
    events
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
