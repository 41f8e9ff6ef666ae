//! Prometheus metrics for `rewind watch`: served on `[watch] metrics`
//! (`GET /metrics`) and/or written to `[watch] metrics_file` after every
//! round (node_exporter's textfile collector). Both come from the watch's
//! `WatchStatus`, the same record `rewind status` reads. Names follow the
//! Prometheus conventions: a `rewind_` prefix, base units (seconds),
//! `_total` for counters, a `runbook` label on every series.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::state::StateDir;
use crate::watch::WatchStatus;

/// A label value with `\`, `"` and newlines escaped, as the text format
/// wants.
fn label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Approvals a run of this state dir waits for now.
fn approvals_waiting(state: &StateDir) -> usize {
    std::fs::read_dir(crate::policy::approvals_dir(state))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".waiting"))
                .count()
        })
        .unwrap_or(0)
}

/// The exposition text (format 0.0.4).
pub fn render(runbook: &str, state: &StateDir, s: &WatchStatus) -> String {
    let rb = label(runbook);
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{{runbook=\"{rb}\"{labels}}} {v}");
        }
    };
    let one = |v: f64| vec![(String::new(), v)];
    metric(
        "rewind_watch_up",
        "gauge",
        "1 while the watch runs.",
        &one(1.0),
    );
    metric(
        "rewind_watch_start_time_seconds",
        "gauge",
        "When the watch started, in seconds since the epoch.",
        &one(s.started_ms as f64 / 1e3),
    );
    metric(
        "rewind_watch_rounds_total",
        "counter",
        "Probe rounds run.",
        &one(s.rounds as f64),
    );
    let mut failures: Vec<(String, f64)> = s
        .probe_failures
        .iter()
        .map(|(p, n)| (format!(",plugin=\"{}\"", label(p)), *n as f64))
        .collect();
    if failures.is_empty() {
        failures.push((String::new(), 0.0));
    }
    metric(
        "rewind_watch_probe_failures_total",
        "counter",
        "Assessments that asked for a rollback or failed, by plugin.",
        &failures,
    );
    metric(
        "rewind_watch_consecutive_failures",
        "gauge",
        "Failed rounds in a row now.",
        &one(f64::from(s.consecutive_failures)),
    );
    metric(
        "rewind_watch_failure_threshold",
        "gauge",
        "Failed rounds in a row that start a rollback.",
        &one(f64::from(s.failure_threshold)),
    );
    metric(
        "rewind_watch_healthy",
        "gauge",
        "1 when the last round found every plugin healthy.",
        &one(if s.healthy { 1.0 } else { 0.0 }),
    );
    if let Some(t) = s.last_healthy_ms {
        let t = t as f64 / 1e3;
        metric(
            "rewind_watch_last_healthy_timestamp_seconds",
            "gauge",
            "When a round last found everything healthy, in seconds since the epoch.",
            &one(t),
        );
        metric(
            "rewind_watch_seconds_since_healthy",
            "gauge",
            "Seconds since a round last found everything healthy.",
            &one((now_s() - t).max(0.0)),
        );
    }
    metric(
        "rewind_watch_rollbacks_started_total",
        "counter",
        "Rollbacks the watch started.",
        &one(s.rollbacks_started as f64),
    );
    metric(
        "rewind_watch_rollbacks_finished_total",
        "counter",
        "Rollbacks the watch started that ended, by result.",
        &[
            (",result=\"succeeded\"".into(), s.rollbacks_succeeded as f64),
            (",result=\"failed\"".into(), s.rollbacks_failed as f64),
        ],
    );
    if let Some(ms) = s.last_rollback_ms {
        metric(
            "rewind_watch_last_rollback_duration_seconds",
            "gauge",
            "How long the last rollback took.",
            &one(ms as f64 / 1e3),
        );
    }
    metric(
        "rewind_approvals_waiting",
        "gauge",
        "Runs waiting for a person's approval now.",
        &one(approvals_waiting(state) as f64),
    );
    metric(
        "rewind_watch_plugin_reloads_total",
        "counter",
        "Plugin builds swapped in while watching.",
        &one(s.reloads as f64),
    );
    out
}

/// Serve `GET /metrics` on `addr` from a background thread, for as long as
/// the process lives. Binding is done here, so a taken address fails the
/// watch before it starts.
pub fn serve(
    addr: std::net::SocketAddr,
    runbook: String,
    state: StateDir,
    status: Arc<Mutex<WatchStatus>>,
) -> Result<(), String> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| format!("cannot serve metrics on {addr} ([watch] metrics): {e}"))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let resp = if req.url() == "/metrics" || req.url().starts_with("/metrics?") {
                    let text = render(&runbook, &state, &status.lock().unwrap());
                    tiny_http::Response::from_string(text).with_header(
                        tiny_http::Header::from_bytes(
                            &b"Content-Type"[..],
                            &b"text/plain; version=0.0.4; charset=utf-8"[..],
                        )
                        .expect("a valid header"),
                    )
                } else {
                    tiny_http::Response::from_string("rewind: metrics are at /metrics\n")
                        .with_status_code(404)
                };
                let _ = req.respond(resp);
            }
        })
        .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
    Ok(())
}

/// Replace the textfile whole, readable by node_exporter's user: it
/// never reads half of it.
pub fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    crate::state::write_atomic(path, text.as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_as_the_text_format_wants() {
        assert_eq!(label("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
    }
}
