//! The demo plugin: rolls `rewind-demo-service` back to its previous
//! release.
//!
//! The service keeps its releases in `<root>/releases/<version>/`, serves the
//! one `<root>/current` links to, and writes its pid to
//! `<root>/run/service.pid`. Level 1 ("previous release") snapshots the link
//! and the pid file, points `current` at the release just below it, restarts
//! the service and waits for `/healthz`.
//!
//! Config (`[plugin.config]` in the runbook):
//!
//! | key | meaning | default |
//! | --- | --- | --- |
//! | `root` | the service's root directory (absolute) | required |
//! | `url` | base URL, e.g. `http://127.0.0.1:18080` | required |
//! | `service` | path of the `rewind-demo-service` binary | required |
//! | `port` | the port the service must listen on | required |
//! | `stop_grace_ms` | TERM, then KILL after this long | 5000 |
//! | `health_timeout_ms` | how long to wait for `/healthz` after the restart | 15000 |
//! | `max_latency_ms` | `/healthz` slower than this is a breached finding | 500 |

use std::cmp::Ordering;

use rewind_sdk::prelude::*;
use rewind_sdk::storage::EntryKind;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    root: String,
    url: String,
    service: String,
    port: u16,
    #[serde(default = "default_stop_grace_ms")]
    stop_grace_ms: u64,
    #[serde(default = "default_health_timeout_ms")]
    health_timeout_ms: u64,
    #[serde(default = "default_max_latency_ms")]
    max_latency_ms: u64,
}

fn default_stop_grace_ms() -> u64 {
    5000
}
fn default_health_timeout_ms() -> u64 {
    15_000
}
fn default_max_latency_ms() -> u64 {
    500
}

impl Config {
    fn load(ctx: &Context) -> Result<Self> {
        let mut cfg: Config = ctx.config()?;
        while cfg.root.len() > 1 && cfg.root.ends_with('/') {
            cfg.root.pop();
        }
        while cfg.url.ends_with('/') {
            cfg.url.pop();
        }
        Ok(cfg)
    }
    fn path(&self, rel: &str) -> String {
        format!("{}/{rel}", self.root)
    }
    /// The command-line pattern of the service's `serve` processes.
    fn serve_pattern(&self) -> String {
        format!("rewind-demo-service serve --root {}", self.root)
    }
    fn healthz(&self) -> HttpProbe {
        HttpProbe::get(format!("{}/healthz", self.url)).timeout_ms(1000)
    }
    fn version_probe(&self) -> HttpProbe {
        HttpProbe::get(format!("{}/version", self.url)).timeout_ms(1000)
    }
}

/// A version's sort key: dotted numbers compare as numbers; a pre-release
/// (`1.0.0-rc1`) sorts below its release.
fn cmp_versions(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (Vec<&str>, Option<&str>) {
        let v = v.trim_start_matches('v');
        let (core, pre) = match v.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (v, None),
        };
        (core.split('.').collect(), pre)
    }
    let ((ac, ap), (bc, bp)) = (split(a), split(b));
    for i in 0..ac.len().max(bc.len()) {
        let (x, y) = (
            ac.get(i).copied().unwrap_or("0"),
            bc.get(i).copied().unwrap_or("0"),
        );
        let o = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    match (ap, bp) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => x.cmp(y),
    }
}

fn last_component(p: &str) -> &str {
    p.trim_end_matches('/').rsplit('/').next().unwrap_or(p)
}

fn current_release(cfg: &Config) -> Result<String> {
    let link = storage::read_link(&cfg.path("current"))
        .context(format!("reading {}", cfg.path("current")))?;
    Ok(last_component(&link).to_string())
}

/// The newest release older than the one `current` points at.
fn previous_release(cfg: &Config) -> Result<String> {
    let current = current_release(cfg)?;
    let releases = cfg.path("releases");
    let mut versions: Vec<String> = storage::list_dir(&releases, false)
        .context(format!("listing {releases}"))?
        .into_iter()
        .filter(|e| matches!(e.kind, EntryKind::Dir | EntryKind::Symlink))
        .map(|e| last_component(&e.path).to_string())
        .collect();
    versions.sort_by(|a, b| cmp_versions(a, b));
    let previous = versions
        .iter()
        .rev()
        .find(|v| cmp_versions(v, &current) == Ordering::Less)
        .cloned();
    match previous {
        Some(previous) => Ok(previous),
        None => bail!(
            "no release older than {current} in {releases} (found: {}); nothing to roll back to",
            versions.join(", ")
        ),
    }
}

/// The release this incident rolls back to: decided once, from the system
/// as it was before the rollback touched it, and pinned (`Context::pin`),
/// so a run resumed (or run again) after `current` was already switched
/// does not go one release further back.
fn target_version(ctx: &Context, cfg: &Config) -> Result<String> {
    ctx.pin("target", || previous_release(cfg))
}

/// The pid of the service when it is running, from its pid file.
fn running_pid(cfg: &Config) -> Result<Option<u32>> {
    match read_pid(cfg)? {
        Some(pid) if is_running(cfg, pid)? => Ok(Some(pid)),
        _ => Ok(None),
    }
}

fn read_pid(cfg: &Config) -> Result<Option<u32>> {
    let file = cfg.path("run/service.pid");
    if !storage::exists(&file)? {
        return Ok(None);
    }
    let text = storage::read_to_string(&file)?;
    match text.trim().parse::<u32>() {
        Ok(pid) if pid > 1 => Ok(Some(pid)),
        _ => bail!("{file} does not hold a pid: {:?}", text.trim()),
    }
}

fn is_running(cfg: &Config, pid: u32) -> Result<bool> {
    Ok(rewind_sdk::health::processes(&cfg.serve_pattern())?
        .pids
        .contains(&pid))
}

struct Demo;

impl Plugin for Demo {
    fn describe(ctx: &Context) -> Result<PluginInfo> {
        let cfg = Config::load(ctx)?;
        Ok(PluginInfo::new(
            "demo",
            env!("CARGO_PKG_VERSION"),
            "rewind-demo-service",
            "Rolls the demo service back to its previous release",
        )
        .level(
            LevelInfo::new(
                1,
                "previous release",
                "Point current at the previous release, restart the service, wait for /healthz",
            )
            .rto_ms(60_000)
            .effect(Effect::Disruptive),
        )
        .needs(
            Needs::default()
                .http(format!("{}/", cfg.url))
                .exec(&cfg.service)
                .signal(cfg.serve_pattern())
                .read(&cfg.root)
                .write(&cfg.root),
        ))
    }

    fn assess(ctx: &Context) -> Result<Assessment> {
        let cfg = Config::load(ctx)?;
        let probe = cfg.healthz();
        let health = probe.probe()?;
        let version = cfg.version_probe().probe()?;
        let served = match version.status {
            Some(200) => version.body.trim().to_string(),
            _ => "unknown".to_string(),
        };
        let linked = current_release(&cfg).unwrap_or_else(|_| "unknown".into());
        let findings = vec![
            Finding::status("GET /healthz status", health.status, 200, 399),
            Finding::at_most(
                "GET /healthz latency",
                health.latency_ms(),
                cfg.max_latency_ms as f64,
                "ms",
            ),
            Finding::equals("version served (GET /version)", &served, &linked),
        ];
        let answer = match health.status {
            Some(s) => format!("answered {s} ({})", health.body.trim()),
            None => format!("did not answer ({})", health.detail),
        };
        let summary = format!(
            "GET {} {answer} in {:.0} ms; serving {served}, current -> {linked}",
            probe.url,
            health.latency_ms()
        );
        if health.healthy {
            return Ok(Assessment::healthy(summary).with_findings(findings));
        }
        let severity = match health.status {
            None => Severity::Critical,
            Some(s) if s >= 500 => Severity::Critical,
            Some(_) => Severity::Major,
        };
        Ok(
            Assessment::rollback(severity, 1, "health-check failing", summary)
                .with_findings(findings),
        )
    }

    fn plan(ctx: &Context) -> Result<Vec<Step>> {
        let cfg = Config::load(ctx)?;
        if ctx.level != 1 {
            bail!(
                "the demo plugin has one level (1); level {} was asked for",
                ctx.level
            );
        }
        let target = target_version(ctx, &cfg)?;
        let current = current_release(&cfg).unwrap_or_else(|_| "unknown".into());
        let pid_file = cfg.path("run/service.pid");
        let stop_what = match read_pid(&cfg) {
            Ok(Some(pid)) => format!("pid {pid} (from {pid_file})"),
            Ok(None) => format!("the pid in {pid_file} (no pid file now: nothing to stop)"),
            Err(e) => format!("the pid in {pid_file} ({})", e.message()),
        };
        let start = Cmd::new(&cfg.service).args([
            "serve".to_string(),
            "--root".into(),
            cfg.root.clone(),
            "--port".into(),
            cfg.port.to_string(),
        ]);
        Ok(vec![
            Step::auto(
                "snapshot",
                "Snapshot the release link and run state",
                format!(
                    "Archive {} (-> releases/{current}) and {} into a verified snapshot, so the state before the rollback can be restored",
                    cfg.path("current"),
                    cfg.path("run")
                ),
            )
            .observe()
            .repeatable(),
            Step::auto(
                "revert",
                format!("Switch current to {target}"),
                format!(
                    "Atomically point {} at releases/{target} (it points at releases/{current} now)",
                    cfg.path("current"),
                ),
            )
            .reversible()
            .repeatable(),
            Step::auto(
                "stop",
                "Stop the running service",
                format!(
                    "Stop {stop_what}: TERM, then KILL after {} ms; a dead pid is fine",
                    cfg.stop_grace_ms
                ),
            )
            .disruptive()
            .repeatable(),
            Step::auto(
                "start",
                format!("Start rewind-demo-service {target}"),
                format!(
                    "Run `{}` detached, output appended to {}, unless the service is running already",
                    start.display(),
                    cfg.path("logs/service.log")
                ),
            )
            .disruptive()
            .repeatable(),
            Step::auto(
                "wait",
                "Wait for /healthz",
                format!(
                    "Probe GET {}/healthz every 200 ms until 2 healthy answers in a row (200-399), for at most {} ms",
                    cfg.url, cfg.health_timeout_ms
                ),
            )
            .observe()
            .repeatable(),
        ])
    }

    fn run_step(ctx: &Context, step: &str) -> Result<StepOutcome> {
        let cfg = Config::load(ctx)?;
        match step {
            "snapshot" => {
                let target = target_version(ctx, &cfg)?;
                let label = format!("demo-pre-rollback-{}", ctx.run_id);
                log::info(format_args!(
                    "target release {target}; saving the current state first"
                ));
                let snap = storage::snapshot(&label, &[cfg.path("current"), cfg.path("run")])?;
                let what = if ctx.executes() {
                    "snapshot"
                } else {
                    "would snapshot"
                };
                Ok(StepOutcome::ok(format!(
                    "{what} {} ({} files, {} bytes); target release {target}",
                    snap.id, snap.files, snap.bytes
                )))
            }
            "revert" => {
                let target = target_version(ctx, &cfg)?;
                let link = cfg.path("current");
                let to = format!("releases/{target}");
                let from = current_release(&cfg).unwrap_or_else(|_| "unknown".into());
                if from == target {
                    // Switched already (a resumed run): nothing to do.
                    return Ok(StepOutcome::ok(format!("{link} points at {to} already")));
                }
                log::info(format_args!("rolling back: release {from} -> {target}"));
                storage::symlink(&to, &link)?;
                Ok(StepOutcome::ok(if ctx.executes() {
                    format!("{link} -> {to}")
                } else {
                    format!("would point {link} at {to}")
                }))
            }
            "stop" => {
                let Some(pid) = read_pid(&cfg)? else {
                    log::info("no pid file: nothing to stop");
                    return Ok(StepOutcome::ok("no pid file: nothing to stop"));
                };
                if !is_running(&cfg, pid)? {
                    log::info(format_args!("pid {pid} is not running (stale pid file)"));
                    return Ok(StepOutcome::ok(format!("pid {pid} was not running")));
                }
                log::info(format_args!("stopping the running service, pid {pid}"));
                match process::stop(pid, cfg.stop_grace_ms) {
                    Ok(_) if !ctx.executes() => Ok(StepOutcome::ok(format!(
                        "would stop pid {pid}: TERM, then KILL after {} ms",
                        cfg.stop_grace_ms
                    ))),
                    Ok(killed) => Ok(StepOutcome::ok(if killed {
                        format!(
                            "pid {pid} did not stop within {} ms and was killed",
                            cfg.stop_grace_ms
                        )
                    } else {
                        format!("pid {pid} stopped")
                    })),
                    // It may have exited on its own between the check and the stop.
                    Err(Error::Failed(_)) if !is_running(&cfg, pid)? => {
                        Ok(StepOutcome::ok(format!("pid {pid} had already exited")))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            "start" => {
                // A resumed run may have started it already: never two.
                if let Some(pid) = running_pid(&cfg)? {
                    return Ok(StepOutcome::ok(format!(
                        "already running as pid {pid}; not started again"
                    )));
                }
                let cmd = Cmd::new(&cfg.service).args([
                    "serve".to_string(),
                    "--root".into(),
                    cfg.root.clone(),
                    "--port".into(),
                    cfg.port.to_string(),
                ]);
                let log_path = cfg.path("logs/service.log");
                log::info(format_args!("starting the service on port {}", cfg.port));
                let pid = cmd.spawn(&log_path)?;
                Ok(StepOutcome::ok(if ctx.executes() {
                    format!("started pid {pid}")
                } else {
                    format!("would start {}", cmd.display())
                }))
            }
            "wait" => {
                let probe = cfg.healthz();
                if !ctx.executes() {
                    return Ok(StepOutcome::ok(format!(
                        "would wait for GET {} (nothing was restarted in a {} run)",
                        probe.url,
                        ctx.mode.as_str()
                    )));
                }
                log::info(format_args!(
                    "wait for GET {} (up to {} ms)",
                    probe.url, cfg.health_timeout_ms
                ));
                let w = probe.wait(
                    WaitPolicy::every(200)
                        .timeout_ms(cfg.health_timeout_ms)
                        .successes(2),
                )?;
                let findings = vec![
                    Finding::status("GET /healthz status", w.last.status, 200, 399),
                    Finding::at_most(
                        "time to healthy",
                        w.elapsed_ms as f64,
                        cfg.health_timeout_ms as f64,
                        "ms",
                    ),
                ];
                let msg = format!(
                    "{} after {} probes in {} ms (last: {})",
                    if w.healthy { "healthy" } else { "not healthy" },
                    w.attempts,
                    w.elapsed_ms,
                    w.last.detail
                );
                let outcome = if w.healthy {
                    StepOutcome::ok(msg)
                } else {
                    StepOutcome::failed(msg)
                };
                Ok(outcome.with_findings(findings))
            }
            other => bail!(
                "unknown step {other:?}: the demo plugin's steps are snapshot, revert, stop, start, wait"
            ),
        }
    }

    fn verify(ctx: &Context) -> Result<Verification> {
        let cfg = Config::load(ctx)?;
        // The pinned target; without one (verify called on its own), the
        // release `current` points at.
        let target = match ctx.pinned("target")? {
            Some(t) => t,
            None => current_release(&cfg)?,
        };
        let health = cfg.healthz().probe()?;
        let version = cfg.version_probe().probe()?;
        let served = match version.status {
            Some(200) => version.body.trim().to_string(),
            Some(s) => format!("HTTP {s}"),
            None => "no answer".to_string(),
        };
        Ok(Verification::from_findings(vec![
            Finding::status("GET /healthz status", health.status, 200, 399),
            Finding::equals("GET /version", served, &target),
        ]))
    }
}

rewind_sdk::export_plugin!(Demo);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_like_semver() {
        let mut v = vec!["1.10.0", "1.2.0", "1.0.0-rc1", "1.0.0", "0.9"];
        v.sort_by(|a, b| cmp_versions(a, b));
        assert_eq!(v, ["0.9", "1.0.0-rc1", "1.0.0", "1.2.0", "1.10.0"]);
        assert_eq!(last_component("releases/1.1.0/"), "1.1.0");
    }
}
