//! Who decides: the runbook's `[policy]` says which effects rewind carries
//! out without a person, and how far it escalates on its own. A step (or an
//! escalation) beyond that waits for a person: asked on a terminal, given
//! up front with `--approve`, or, when nobody is at a terminal (`watch`,
//! cron, Ansible), asked for from another shell with `rewind approve` /
//! `rewind deny`, which answer through a file in the state dir that the
//! waiting run reads.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::state::StateDir;

/// A step's effect on the system, ordered from harmless to harmful (the
/// WIT `effect`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Observe,
    Reversible,
    #[default]
    Disruptive,
    Destructive,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Observe => "observe",
            Self::Reversible => "reversible",
            Self::Disruptive => "disruptive",
            Self::Destructive => "destructive",
        }
    }

    /// An effect by name; anything else (an older journal) is taken as the
    /// worst.
    pub fn from_name(name: &str) -> Self {
        match name {
            "observe" => Self::Observe,
            "reversible" => Self::Reversible,
            "disruptive" => Self::Disruptive,
            _ => Self::Destructive,
        }
    }
}

/// The contract's effect and this one are the same four words; this one
/// is ordered and serializable.
impl From<crate::bindings::rollback::Effect> for Effect {
    fn from(e: crate::bindings::rollback::Effect) -> Self {
        use crate::bindings::rollback::Effect as Wit;
        match e {
            Wit::Observe => Self::Observe,
            Wit::Reversible => Self::Reversible,
            Wit::Disruptive => Self::Disruptive,
            Wit::Destructive => Self::Destructive,
        }
    }
}

impl From<Effect> for crate::bindings::rollback::Effect {
    fn from(e: Effect) -> Self {
        match e {
            Effect::Observe => Self::Observe,
            Effect::Reversible => Self::Reversible,
            Effect::Disruptive => Self::Disruptive,
            Effect::Destructive => Self::Destructive,
        }
    }
}

/// `[policy]`, or a plugin's `[plugin.policy]` over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The worst effect a step may have and run without a person.
    pub unattended: Effect,
    /// The worst effect of a level rewind escalates into on its own.
    pub auto_escalate: Effect,
    /// How long a run without a terminal waits for `rewind approve`.
    pub approval_timeout: Duration,
}

impl Default for Policy {
    /// Nothing destructive without a person: restarts and switches that a
    /// snapshot can undo run unattended; drops, restores over live data and
    /// prunes wait.
    fn default() -> Self {
        Self {
            unattended: Effect::Disruptive,
            auto_escalate: Effect::Disruptive,
            approval_timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// `[policy]` as written.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub unattended: Option<Effect>,
    pub auto_escalate: Option<Effect>,
    #[serde(default, deserialize_with = "crate::runbook::de_duration_opt")]
    pub approval_timeout: Option<Duration>,
}

impl RawPolicy {
    /// This table over `base`.
    pub fn over(self, base: Policy) -> Policy {
        Policy {
            unattended: self.unattended.unwrap_or(base.unattended),
            auto_escalate: self.auto_escalate.unwrap_or(base.auto_escalate),
            approval_timeout: self.approval_timeout.unwrap_or(base.approval_timeout),
        }
    }
}

/// What `--approve` grants up front: every step up to an effect, a whole
/// level, or one step by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreApproval {
    Effect(Effect),
    Level(u8),
    Step(String),
}

impl PreApproval {
    pub fn parse(text: &str) -> Self {
        if let Ok(level) = text.parse::<u8>() {
            return Self::Level(level);
        }
        match text {
            "observe" | "reversible" | "disruptive" | "destructive" => {
                Self::Effect(Effect::from_name(text))
            }
            _ => Self::Step(text.to_string()),
        }
    }

    /// As given on the command line.
    pub fn text(&self) -> String {
        match self {
            Self::Effect(e) => e.as_str().into(),
            Self::Level(l) => l.to_string(),
            Self::Step(s) => s.clone(),
        }
    }

    pub fn covers(&self, level: u8, step: &str, effect: Effect) -> bool {
        match self {
            Self::Effect(e) => effect <= *e,
            Self::Level(l) => *l == level,
            Self::Step(id) => id == step,
        }
    }
}

/// Who answered, as the journal records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Who {
    pub user: String,
    pub uid: u32,
    pub host: String,
}

impl Who {
    /// The person behind this process: `SUDO_USER` when run through sudo
    /// (the uid is then root's), else `USER`/`LOGNAME`.
    pub fn me() -> Self {
        use std::os::unix::fs::MetadataExt as _;
        let uid = std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid());
        let user = ["SUDO_USER", "USER", "LOGNAME"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
            .or_else(|| user_name(uid))
            .unwrap_or_else(|| format!("uid {uid}"));
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        Self { user, uid, host }
    }
}

/// A uid's name in /etc/passwd.
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (uid {}) on {}", self.user, self.uid, self.host)
    }
}

/// An answer to a waiting run, from `rewind approve` or `rewind deny`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub approve: bool,
    /// The gate it answers; none: whichever is waiting.
    pub step: Option<String>,
    pub who: Who,
    pub ts: String,
    #[serde(default)]
    pub note: Option<String>,
}

pub fn approvals_dir(state: &StateDir) -> PathBuf {
    state.path().join("approvals")
}

fn answer_file(state: &StateDir, run_id: &str) -> PathBuf {
    approvals_dir(state).join(format!("{run_id}.json"))
}

/// What a run waits on, so `rewind approve` can say what it approves.
pub fn waiting_file(state: &StateDir, run_id: &str) -> PathBuf {
    approvals_dir(state).join(format!("{run_id}.waiting"))
}

/// Write an answer for a run, atomically (a temporary file renamed over),
/// so the waiting run never reads half of one.
pub fn answer(state: &StateDir, run_id: &str, a: &Answer) -> std::io::Result<PathBuf> {
    let dir = approvals_dir(state);
    crate::state::create_private_dir(&dir)?;
    let path = answer_file(state, run_id);
    let tmp = dir.join(format!(".{run_id}.{}.tmp", std::process::id()));
    {
        use std::io::Write as _;
        let mut f = crate::state::private_file()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(serde_json::to_string(a).unwrap_or_default().as_bytes())?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// How a wait for a person ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waited {
    Answered(Answer),
    TimedOut,
    /// A signal asked the run to stop.
    Stopped,
}

/// Wait for `rewind approve`/`deny` of `gate` in run `run_id`, up to
/// `timeout`, waking on a signal. The answer file is consumed: the next
/// gate needs an answer of its own. An answer naming another gate answers
/// nothing now: it is removed, with a warning.
pub fn wait_for_answer(
    state: &StateDir,
    run_id: &str,
    gate: &str,
    what: &str,
    timeout: Duration,
) -> std::io::Result<Waited> {
    let dir = approvals_dir(state);
    crate::state::create_private_dir(&dir)?;
    let waiting = waiting_file(state, run_id);
    std::fs::write(&waiting, format!("{gate}\n{what}\n"))?;
    let path = answer_file(state, run_id);
    let end = Instant::now() + timeout;
    let result = loop {
        match read_answer(&path) {
            Some(a) if a.step.as_deref().is_none_or(|s| s == gate) => {
                let _ = std::fs::remove_file(&path);
                break Waited::Answered(a);
            }
            Some(a) => {
                let _ = std::fs::remove_file(&path);
                tracing::warn!(
                    "an answer for step {:?} arrived while step {gate:?} waits; ignored (answer again for {gate:?})",
                    a.step.unwrap_or_default()
                );
            }
            None => {}
        }
        if Instant::now() >= end {
            break Waited::TimedOut;
        }
        // Another shell writes the answer: look four times a second.
        if !crate::run::nap((end - Instant::now()).min(Duration::from_millis(250))) {
            break Waited::Stopped;
        }
    };
    let _ = std::fs::remove_file(&waiting);
    Ok(result)
}

fn read_answer(path: &Path) -> Option<Answer> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_approvals_cover_effects_levels_and_steps() {
        let d = PreApproval::parse("destructive");
        assert!(d.covers(3, "drop", Effect::Destructive));
        let r = PreApproval::parse("disruptive");
        assert!(!r.covers(3, "drop", Effect::Destructive));
        assert!(r.covers(1, "restart", Effect::Disruptive));
        assert!(PreApproval::parse("3").covers(3, "drop", Effect::Destructive));
        assert!(!PreApproval::parse("3").covers(2, "drop", Effect::Destructive));
        assert!(PreApproval::parse("drop").covers(2, "drop", Effect::Destructive));
        assert!(!PreApproval::parse("drop").covers(2, "prune", Effect::Destructive));
    }

    #[test]
    fn an_answer_for_the_waiting_gate_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let a = Answer {
            approve: true,
            step: Some("drop".into()),
            who: Who::me(),
            ts: "now".into(),
            note: None,
        };
        answer(&state, "r1", &a).unwrap();
        let got =
            wait_for_answer(&state, "r1", "drop", "drop it", Duration::from_secs(30)).unwrap();
        assert_eq!(got, Waited::Answered(a));
        // Consumed: the next gate waits for its own answer.
        let got = wait_for_answer(&state, "r1", "drop", "drop it", Duration::ZERO).unwrap();
        assert_eq!(got, Waited::TimedOut);
    }
}
