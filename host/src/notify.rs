//! Telling people: the runbook's `[[notify]]` targets (a generic JSON
//! webhook, a Slack incoming webhook, the PagerDuty Events API v2) get the
//! events they ask for. Sending happens on a thread of its own, bounded in
//! time, retried with backoff, and journaled; it never blocks a step nor
//! fails the rollback. At the end of a run the session waits a bounded
//! time for the last notices to go out.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::journal::{Event, Journal};

/// One `[[notify]]` target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySpec {
    /// How it is named in the journal (the URL may hold a secret).
    #[serde(default)]
    pub name: String,
    pub kind: Kind,
    pub url: String,
    /// PagerDuty's integration key.
    #[serde(default)]
    pub routing_key: String,
    /// The events it wants; empty: all of them.
    #[serde(default)]
    pub events: Vec<String>,
    /// Only runs at least this severe (the worst assessment's): `none`,
    /// `minor`, `major`, `critical`.
    #[serde(default)]
    pub min_severity: Option<String>,
    #[serde(default, deserialize_with = "crate::runbook::de_duration_opt")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Webhook,
    Slack,
    Pagerduty,
}

/// The events a target can ask for.
pub const EVENTS: [&str; 7] = [
    "run-start",
    "approval-needed",
    "step-failed",
    "escalate",
    "run-end",
    "drill-end",
    "watch-triggered",
];

fn severity_rank(s: &str) -> u8 {
    match s {
        "critical" => 3,
        "major" => 2,
        "minor" => 1,
        _ => 0,
    }
}

impl NotifySpec {
    /// What is wrong with it, for the runbook's error.
    pub fn check(&self) -> Result<(), String> {
        if let Some(e) = self.events.iter().find(|e| !EVENTS.contains(&e.as_str())) {
            return Err(format!(
                "[[notify]] {:?}: unknown event {e:?} (known: {})",
                self.label(),
                EVENTS.join(", ")
            ));
        }
        if let Some(s) = &self.min_severity
            && !matches!(s.as_str(), "none" | "minor" | "major" | "critical")
        {
            return Err(format!(
                "[[notify]] {:?}: min_severity {s:?} is none of none, minor, major, critical",
                self.label()
            ));
        }
        if self.kind == Kind::Pagerduty && self.routing_key.is_empty() {
            return Err(format!(
                "[[notify]] {:?}: kind = \"pagerduty\" needs routing_key",
                self.label()
            ));
        }
        url::Url::parse(&self.url)
            .map_err(|e| format!("[[notify]] {:?}: url is not a URL: {e}", self.label()))?;
        Ok(())
    }

    pub fn label(&self) -> String {
        if self.name.is_empty() {
            format!("{:?}", self.kind).to_lowercase()
        } else {
            self.name.clone()
        }
    }

    fn wants(&self, event: &str, severity: &str) -> bool {
        (self.events.is_empty() || self.events.iter().any(|e| e == event))
            && severity_rank(severity)
                >= severity_rank(self.min_severity.as_deref().unwrap_or("none"))
    }
}

/// One thing to tell.
#[derive(Debug, Clone)]
pub struct Notice {
    pub event: &'static str,
    pub run_id: String,
    pub runbook: String,
    /// The worst assessment's severity so far (`none` before one).
    pub severity: String,
    pub summary: String,
    pub details: Value,
    /// For PagerDuty: the incident is over (resolve instead of trigger).
    pub resolved: bool,
}

/// Sends notices for one session.
pub struct Notifier {
    targets: Vec<NotifySpec>,
    journal: Option<Arc<Journal>>,
    client: reqwest::blocking::Client,
    pending: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("targets", &self.targets.len())
            .finish()
    }
}

/// Attempts per notice, and the pause before each retry.
const BACKOFF: [Duration; 2] = [Duration::from_millis(500), Duration::from_secs(2)];

impl Notifier {
    pub fn new(targets: Vec<NotifySpec>, journal: Option<Arc<Journal>>) -> Self {
        // Notifications go where the operator wrote, and nowhere else: no
        // proxy from the environment, no redirects.
        let client = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap_or_default();
        Self {
            targets,
            journal,
            client,
            pending: Mutex::new(Vec::new()),
        }
    }

    /// Send `n` to every target that wants it, in the background.
    pub fn send(&self, n: Notice) {
        for t in self
            .targets
            .iter()
            .filter(|t| t.wants(n.event, &n.severity))
        {
            let t = t.clone();
            let n = n.clone();
            let client = self.client.clone();
            let journal = self.journal.clone();
            let handle = std::thread::Builder::new()
                .name("rewind-notify".into())
                .spawn(move || deliver(&client, &t, &n, journal.as_deref()));
            if let Ok(h) = handle {
                self.pending.lock().unwrap().push(h);
            }
        }
    }

    /// Wait for the notices under way, up to `bound` in all: the run is
    /// over, and the process should not exit before it has told anyone.
    pub fn flush(&self, bound: Duration) {
        let end = Instant::now() + bound;
        let handles: Vec<JoinHandle<()>> = std::mem::take(&mut *self.pending.lock().unwrap());
        for h in handles {
            while !h.is_finished() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

fn body(t: &NotifySpec, n: &Notice) -> Value {
    match t.kind {
        Kind::Webhook => json!({
            "event": n.event, "run_id": n.run_id, "runbook": n.runbook,
            "severity": n.severity, "summary": n.summary, "details": n.details,
            "ts": crate::journal::now_rfc3339(),
        }),
        Kind::Slack => json!({
            "text": format!("rewind {} | {} | run {} | {}", n.event, n.runbook, n.run_id, n.summary),
        }),
        Kind::Pagerduty => {
            let severity = match n.severity.as_str() {
                "critical" => "critical",
                "major" => "error",
                "minor" => "warning",
                _ => "info",
            };
            json!({
                "routing_key": t.routing_key,
                "event_action": if n.resolved { "resolve" } else { "trigger" },
                "dedup_key": format!("rewind-{}", n.run_id),
                "payload": {
                    "summary": format!("{}: {}", n.runbook, n.summary),
                    "source": hostname(),
                    "severity": severity,
                    "component": n.runbook,
                    "custom_details": {"event": n.event, "run_id": n.run_id, "details": n.details},
                },
            })
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// POST it, retrying a failure twice with backoff, each attempt bounded by
/// the target's timeout (5 s by default); journal what happened.
fn deliver(
    client: &reqwest::blocking::Client,
    t: &NotifySpec,
    n: &Notice,
    journal: Option<&Journal>,
) {
    // Secrets the runbook marked are masked on the way out of the journal;
    // the body itself must carry them (a routing key) to the target.
    let text = serde_json::to_string(&body(t, n)).unwrap_or_default();
    let timeout = t.timeout.unwrap_or(Duration::from_secs(5));
    let mut attempts = 0;
    let mut last = String::new();
    let mut ok = false;
    for pause in std::iter::once(None).chain(BACKOFF.iter().map(Some)) {
        if let Some(p) = pause {
            std::thread::sleep(*p);
        }
        attempts += 1;
        match client
            .post(&t.url)
            .header("content-type", "application/json")
            .timeout(timeout)
            .body(text.clone())
            .send()
        {
            Ok(r) if r.status().is_success() => {
                last = format!("HTTP {}", r.status().as_u16());
                ok = true;
                break;
            }
            Ok(r) => last = format!("HTTP {}", r.status().as_u16()),
            // Without the URL: it may hold a token.
            Err(e) => last = without_url(&e),
        }
    }
    if !ok {
        tracing::warn!(
            "could not notify {} of {} after {attempts} attempts: {last}",
            t.label(),
            n.event
        );
    }
    if let Some(j) = journal {
        j.record(Event::Notified {
            target: t.label(),
            about: n.event.to_string(),
            ok,
            attempts,
            result: last,
        });
    }
}

fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}
