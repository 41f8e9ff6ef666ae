//! `rewind:plugin/health`: read-only observation of the machine and its
//! services. Probes check their grants (`http`, `tcp`) but are never side
//! effects: they run in every mode, dry runs included. Machine statistics
//! (memory, CPU, processes, disks) need no grant: they expose only counts
//! and sizes.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use sysinfo::{Disks, System};

use super::http::{describe_error, read_capped};
use crate::bindings::health::{
    DiskStats, Host, HttpCheck, ProbeResult, ProcessStats, StatusRange, SystemStats, Target,
    WaitPolicy, WaitResult,
};
use crate::bindings::types::Error;
use crate::state::{HostState, PluginEnv};

/// Probe bodies beyond this are cut.
pub const PROBE_BODY_CAP: usize = 64 << 10;
/// Per-probe timeout when the plugin gives 0.
const DEFAULT_PROBE_TIMEOUT_MS: u64 = 1000;
/// Kubernetes' default healthy statuses.
const DEFAULT_STATUS: StatusRange = StatusRange { min: 200, max: 399 };

impl Host for HostState {
    async fn http_probe(&mut self, probe: HttpCheck) -> Result<ProbeResult, Error> {
        let client = self.http.clone();
        self.timed_async(|env| async move { http_probe(&env, &client, probe).await })
            .await
    }

    async fn tcp_probe(
        &mut self,
        host: String,
        port: u16,
        timeout_ms: u64,
    ) -> Result<ProbeResult, Error> {
        let client = self.http.clone();
        self.timed_async(
            |env| async move { tcp_probe(&env, &client, &host, port, timeout_ms).await },
        )
        .await
    }

    async fn wait_healthy(
        &mut self,
        target: Target,
        policy: WaitPolicy,
    ) -> Result<WaitResult, Error> {
        let client = self.http.clone();
        self.timed_async(|env| async move { wait_healthy(&env, &client, target, policy).await })
            .await
    }

    async fn system(&mut self) -> SystemStats {
        self.blocking(move |_env| system()).await
    }

    async fn processes(&mut self, pattern: String) -> Result<ProcessStats, Error> {
        self.blocking(move |_env| processes(&pattern)).await
    }

    async fn disk(&mut self, path: String) -> Result<DiskStats, Error> {
        self.blocking(move |env| disk(env, &path)).await
    }
}

/// A probe whose grant was checked and whose arguments were validated, ready
/// to be sent any number of times.
enum Prepared {
    Http(Box<PreparedHttp>),
    Tcp {
        host: String,
        port: u16,
        timeout: Duration,
    },
}

struct PreparedHttp {
    url: url::Url,
    method: reqwest::Method,
    headers: HeaderMap,
    timeout: Duration,
    expect: StatusRange,
    body_contains: Option<String>,
}

fn timeout_or_default(ms: u64) -> Duration {
    Duration::from_millis(if ms == 0 {
        DEFAULT_PROBE_TIMEOUT_MS
    } else {
        ms
    })
}

fn prepare_http(env: &PluginEnv, probe: HttpCheck) -> Result<PreparedHttp, Error> {
    let url = env.sandbox.check_http(&probe.url)?;
    let method = if probe.method.is_empty() {
        "GET".to_string()
    } else {
        probe.method.to_ascii_uppercase()
    };
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| Error::invalid(format!("bad HTTP method {:?}", probe.method)))?;
    // Probes are observations, carried out even in dry runs, so they may
    // not change anything: a request with side effects goes through
    // `http.request`, where dry runs hold it back.
    if !matches!(
        method,
        reqwest::Method::GET | reqwest::Method::HEAD | reqwest::Method::OPTIONS
    ) {
        return Err(Error::invalid(format!(
            "a probe must be GET, HEAD or OPTIONS, not {method}; use http.request for calls that change things"
        )));
    }
    let mut headers = HeaderMap::new();
    for (k, v) in &probe.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| Error::invalid(format!("bad HTTP header name {k:?}")))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| Error::invalid(format!("bad value {v:?} for HTTP header {k:?}")))?;
        headers.append(name, value);
    }
    let expect = probe.expect_status.unwrap_or(DEFAULT_STATUS);
    if expect.min > expect.max {
        return Err(Error::invalid(format!(
            "bad expected status range {}-{}: min is above max",
            expect.min, expect.max
        )));
    }
    Ok(PreparedHttp {
        url,
        method,
        headers,
        timeout: env.cap(timeout_or_default(probe.timeout_ms)),
        expect,
        body_contains: probe.body_contains,
    })
}

fn prepare_tcp(env: &PluginEnv, host: &str, port: u16, timeout_ms: u64) -> Result<Prepared, Error> {
    if host.trim().is_empty() {
        return Err(Error::invalid("empty host for a TCP probe"));
    }
    if port == 0 {
        return Err(Error::invalid(format!(
            "port 0 of {host:?} cannot be probed"
        )));
    }
    env.sandbox.check_tcp(host, port)?;
    Ok(Prepared::Tcp {
        host: host.to_string(),
        port,
        timeout: env.cap(timeout_or_default(timeout_ms)),
    })
}

async fn http_probe(
    env: &PluginEnv,
    client: &reqwest::Client,
    probe: HttpCheck,
) -> Result<ProbeResult, Error> {
    let prepared = prepare_http(env, probe)?;
    Ok(send_http(client, &prepared, prepared.timeout).await)
}

async fn tcp_probe(
    env: &PluginEnv,
    client: &reqwest::Client,
    host: &str,
    port: u16,
    timeout_ms: u64,
) -> Result<ProbeResult, Error> {
    let prepared = prepare_tcp(env, host, port, timeout_ms)?;
    Ok(run_probe(client, &prepared, None).await)
}

/// Send a prepared probe, its timeout capped at `cap` when given.
async fn run_probe(
    client: &reqwest::Client,
    probe: &Prepared,
    cap: Option<Duration>,
) -> ProbeResult {
    let capped = |t: Duration| cap.map_or(t, |c| t.min(c).max(Duration::from_millis(1)));
    match probe {
        Prepared::Http(p) => send_http(client, p, capped(p.timeout)).await,
        Prepared::Tcp {
            host,
            port,
            timeout,
        } => connect_tcp(host, *port, capped(*timeout)).await,
    }
}

fn unhealthy(status: Option<u16>, start: Instant, body: String, detail: String) -> ProbeResult {
    ProbeResult {
        healthy: false,
        status,
        latency_us: micros(start),
        body,
        detail,
    }
}

fn micros(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

async fn send_http(client: &reqwest::Client, p: &PreparedHttp, timeout: Duration) -> ProbeResult {
    let start = Instant::now();
    let resp = client
        .request(p.method.clone(), p.url.clone())
        .headers(p.headers.clone())
        .timeout(timeout)
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            let detail = if e.is_timeout() {
                format!(
                    "{} {}: no answer within {} ms",
                    p.method,
                    p.url,
                    timeout.as_millis()
                )
            } else {
                error_message(describe_error(&p.method, &p.url, timeout, &e))
            };
            return unhealthy(None, start, String::new(), detail);
        }
    };
    let status = resp.status().as_u16();
    let body = read_capped(resp, PROBE_BODY_CAP).await;
    let latency_us = micros(start);
    let range = format!("{}-{}", p.expect.min, p.expect.max);
    let detail = if !(p.expect.min..=p.expect.max).contains(&status) {
        format!("{} {}: status {status} is not in {range}", p.method, p.url)
    } else if let Some(needle) = p.body_contains.as_deref().filter(|n| !body.contains(*n)) {
        if body.len() >= PROBE_BODY_CAP {
            format!(
                "{} {}: status {status}, but the first {} KiB of the body do not contain {needle:?}",
                p.method,
                p.url,
                PROBE_BODY_CAP >> 10
            )
        } else {
            format!(
                "{} {}: status {status}, but the body does not contain {needle:?}",
                p.method, p.url
            )
        }
    } else {
        return ProbeResult {
            healthy: true,
            status: Some(status),
            latency_us,
            body,
            detail: "ok".to_string(),
        };
    };
    ProbeResult {
        healthy: false,
        status: Some(status),
        latency_us,
        body,
        detail,
    }
}

/// The message inside a call error, for a probe's `detail`.
fn error_message(e: Error) -> String {
    match e {
        Error::Timeout(m) | Error::Failed(m) | Error::Invalid(m) => m,
        Error::Denied(d) => format!("{} {:?} is not granted", d.capability, d.resource),
    }
}

async fn connect_tcp(host: &str, port: u16, timeout: Duration) -> ProbeResult {
    let start = Instant::now();
    let addrs: Vec<_> = match tokio::net::lookup_host((host, port)).await {
        Ok(a) => a.collect(),
        Err(e) => {
            return unhealthy(
                None,
                start,
                String::new(),
                format!("cannot resolve {host:?}: {e}"),
            );
        }
    };
    if addrs.is_empty() {
        return unhealthy(
            None,
            start,
            String::new(),
            format!("{host:?} has no address"),
        );
    }
    let deadline = start + timeout;
    let mut last = String::new();
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let connect = tokio::time::timeout(left, tokio::net::TcpStream::connect(addr)).await;
        let connect = connect.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
        match connect {
            Ok(_stream) => {
                return ProbeResult {
                    healthy: true,
                    status: None,
                    latency_us: micros(start),
                    body: String::new(),
                    detail: "ok".to_string(),
                };
            }
            Err(e) => {
                last = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => format!("{addr}: connection refused"),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                        format!("{addr}: no answer within {} ms", timeout.as_millis())
                    }
                    _ => format!("{addr}: {e}"),
                };
            }
        }
    }
    if last.is_empty() {
        last = format!("{host}:{port}: no answer within {} ms", timeout.as_millis());
    }
    unhealthy(None, start, String::new(), last)
}

async fn wait_healthy(
    env: &PluginEnv,
    client: &reqwest::Client,
    target: Target,
    policy: WaitPolicy,
) -> Result<WaitResult, Error> {
    // Grants and arguments are checked once, before the first probe.
    let probe = match target {
        Target::Http(p) => Prepared::Http(Box::new(prepare_http(env, p)?)),
        Target::Tcp((host, port, timeout_ms)) => prepare_tcp(env, &host, port, timeout_ms)?,
    };
    let interval = Duration::from_millis(if policy.interval_ms == 0 {
        1000
    } else {
        policy.interval_ms
    });
    let success = policy.success_threshold.max(1);
    let start = Instant::now();
    // Never past the export call's own deadline (`[limits] call_time`).
    let deadline = start + env.cap(Duration::from_millis(policy.timeout_ms));
    let (mut attempts, mut oks, mut fails) = (0u32, 0u32, 0u32);
    loop {
        let probe_start = Instant::now();
        // A probe never runs past the overall deadline (a timeout of 0 still
        // gets one attempt with the probe's own timeout).
        let cap = (policy.timeout_ms > 0).then(|| deadline.saturating_duration_since(probe_start));
        let last = run_probe(client, &probe, cap).await;
        attempts += 1;
        if last.healthy {
            oks += 1;
            fails = 0;
        } else {
            fails += 1;
            oks = 0;
        }
        let done = if oks >= success {
            Some(true)
        } else if policy.failure_threshold > 0 && fails >= policy.failure_threshold {
            Some(false)
        } else {
            // Never probe or sleep past the deadline: when the next probe
            // would start at or after it, wait out the rest of the time and
            // give up. A plugin asking to wait up to `timeout-ms` gets that
            // wait, not an early "unhealthy" it would poll again at once.
            let next = probe_start + interval;
            if next >= deadline {
                tokio::time::sleep(deadline.saturating_duration_since(Instant::now())).await;
                Some(false)
            } else {
                tokio::time::sleep(next.saturating_duration_since(Instant::now())).await;
                None
            }
        };
        if let Some(healthy) = done {
            let elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
            return Ok(WaitResult {
                healthy,
                attempts,
                elapsed_ms,
                last,
            });
        }
    }
}

fn system() -> SystemStats {
    // Memory and load need no sampling; CPU is measured across calls
    // (`cpu.rs`), so this call never sleeps.
    let mut sys = System::new();
    sys.refresh_memory();
    let load = System::load_average();
    SystemStats {
        memory_total_bytes: sys.total_memory(),
        memory_used_bytes: sys.used_memory(),
        cpu_percent: super::cpu::machine_cpu_percent(),
        load_one: load.one,
        load_five: load.five,
        load_fifteen: load.fifteen,
        uptime_s: System::uptime(),
    }
}

/// Pids of the live processes whose command line (arguments joined by
/// spaces, like `pgrep -f`) contains `pattern`, sorted. The host itself,
/// zombies and kernel threads (no command line) are never listed.
pub(crate) fn matching_pids(pattern: &str) -> Vec<u32> {
    if pattern.is_empty() {
        return Vec::new();
    }
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| crate::sandbox::cmdline(pid).is_some_and(|c| c.contains(pattern)))
        .filter(|&pid| !is_zombie(pid))
        .collect();
    pids.sort_unstable();
    pids
}

/// Whether `/proc/<pid>/stat` shows a zombie (or dead) process.
fn is_zombie(pid: u32) -> bool {
    proc_state(pid).is_some_and(|s| matches!(s, 'Z' | 'X' | 'x'))
}

/// The state letter of `/proc/<pid>/stat`, when the process exists.
pub(crate) fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

fn processes(pattern: &str) -> Result<ProcessStats, Error> {
    if pattern.is_empty() {
        return Err(Error::invalid(
            "empty process pattern: it would match every process",
        ));
    }
    let mut stats = ProcessStats {
        count: 0,
        rss_bytes: 0,
        cpu_percent: 0.0,
        pids: Vec::new(),
    };
    // One read of /proc/<pid>/stat and /status per match; CPU is measured
    // across calls (`cpu.rs`), so a probe costs no sampling sleep.
    for pid in matching_pids(pattern) {
        // Processes that ended while they were read are not counted.
        let Some(t) = super::cpu::proc_times(pid) else {
            continue;
        };
        if matches!(t.state, 'Z' | 'X' | 'x') {
            continue;
        }
        let Some(rss) = super::cpu::rss_bytes(pid) else {
            continue;
        };
        stats.count += 1;
        stats.rss_bytes += rss;
        stats.cpu_percent += super::cpu::process_cpu_percent(pid, t);
        stats.pids.push(pid);
    }
    Ok(stats)
}

fn disk(env: &PluginEnv, path: &str) -> Result<DiskStats, Error> {
    if path.is_empty() {
        return Err(Error::invalid("empty path"));
    }
    let resolved = crate::sandbox::resolve_path(env.sandbox.base_dir(), path)
        .map_err(|e| Error::invalid(format!("path {path:?}: {e}")))?;
    let disks = Disks::new_with_refreshed_list();
    disks
        .list()
        .iter()
        .filter(|d| resolved.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| DiskStats {
            mount: d.mount_point().display().to_string(),
            total_bytes: d.total_space(),
            available_bytes: d.available_space(),
        })
        .ok_or_else(|| no_disk(path, &resolved))
}

fn no_disk(path: &str, resolved: &Path) -> Error {
    Error::failed(format!(
        "no mounted filesystem found for {path:?} ({})",
        resolved.display()
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;
    use crate::bindings::types::Mode;
    use crate::sandbox::{GrantOrigin, GrantsSpec, Sandbox};
    use crate::state::StateDir;

    /// The async imports, driven to their end from a plain test, each on a
    /// runtime and client of its own (as a `Runtime` has).
    fn block_on<F: Future>(f: impl FnOnce(reqwest::Client) -> F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        rt.block_on(f(client))
    }

    fn http_probe(env: &PluginEnv, probe: HttpCheck) -> Result<ProbeResult, Error> {
        block_on(|c| async move { super::http_probe(env, &c, probe).await })
    }

    fn tcp_probe(
        env: &PluginEnv,
        host: &str,
        port: u16,
        timeout_ms: u64,
    ) -> Result<ProbeResult, Error> {
        block_on(|c| async move { super::tcp_probe(env, &c, host, port, timeout_ms).await })
    }

    fn wait_healthy(
        env: &PluginEnv,
        target: Target,
        policy: WaitPolicy,
    ) -> Result<WaitResult, Error> {
        block_on(|c| async move { super::wait_healthy(env, &c, target, policy).await })
    }

    /// A plugin environment over a temporary directory (the runbook's
    /// directory and the state directory), with the given grants.
    pub(crate) fn test_env(spec: GrantsSpec, mode: Mode) -> (tempfile::TempDir, PluginEnv) {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let origin = GrantOrigin {
            plugin: "t".into(),
            runbook: base.join("rewind.toml"),
            line: 1,
        };
        let sandbox = Sandbox::new(spec, origin, &base).unwrap();
        let state = StateDir::new(base.join(".rewind"));
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .build()
            .unwrap();
        (
            dir,
            PluginEnv::new("t".into(), sandbox, mode, None, state, http),
        )
    }

    /// A string no other process's command line contains.
    pub(crate) fn unique_marker(tag: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("rewind-{tag}-test-{}-{nanos}", std::process::id())
    }

    /// Serve canned HTTP responses, one per connection, in order.
    fn serve(responses: Vec<&'static str>) -> (String, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            for resp in responses {
                let (mut conn, _) = listener.accept().unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(resp.as_bytes());
            }
        });
        (addr, handle)
    }

    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nhealthy";
    const DOWN: &str =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndown";

    fn probe(url: &str) -> HttpCheck {
        HttpCheck {
            url: url.to_string(),
            method: String::new(),
            headers: vec![("x-probe".into(), "rewind".into())],
            expect_status: None,
            body_contains: None,
            timeout_ms: 0,
        }
    }

    fn http_grant(addr: &str) -> GrantsSpec {
        GrantsSpec {
            http: vec![format!("{addr}/")],
            ..Default::default()
        }
    }

    /// A local port with nothing listening on it.
    fn closed_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn http_probe_judges_status_and_body() {
        let (addr, server) = serve(vec![OK, DOWN, OK]);
        let (_dir, env) = test_env(http_grant(&addr), Mode::DryRun);
        let r = http_probe(&env, probe(&format!("{addr}/healthz"))).unwrap();
        assert!(r.healthy, "{r:?}");
        assert_eq!(
            (r.status, r.body.as_str(), r.detail.as_str()),
            (Some(200), "healthy", "ok")
        );
        let r = http_probe(&env, probe(&format!("{addr}/healthz"))).unwrap();
        assert!(!r.healthy);
        assert_eq!(r.status, Some(503));
        assert!(
            r.detail.contains("status 503 is not in 200-399"),
            "{}",
            r.detail
        );
        let mut p = probe(&format!("{addr}/healthz"));
        p.body_contains = Some("ready".into());
        let r = http_probe(&env, p).unwrap();
        assert!(!r.healthy);
        assert!(
            r.detail.contains("does not contain \"ready\""),
            "{}",
            r.detail
        );
        server.join().unwrap();
        // Probes are observations: recorded as nothing, even in dry runs.
        assert!(env.take_actions().is_empty());
    }

    #[test]
    fn http_probe_unreachable_or_silent_is_unhealthy_not_an_error() {
        let port = closed_port();
        let addr = format!("http://127.0.0.1:{port}");
        let (_dir, env) = test_env(http_grant(&addr), Mode::Execute);
        let r = http_probe(&env, probe(&format!("{addr}/"))).unwrap();
        assert!(!r.healthy);
        assert_eq!(r.status, None);
        assert!(
            r.detail.contains("refused") || r.detail.contains("connect"),
            "{}",
            r.detail
        );

        // A server that accepts and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let (_dir, env) = test_env(http_grant(&addr), Mode::Execute);
        let mut p = probe(&format!("{addr}/"));
        p.timeout_ms = 200;
        let start = Instant::now();
        let r = http_probe(&env, p).unwrap();
        assert!(!r.healthy);
        assert!(r.detail.contains("no answer within 200 ms"), "{}", r.detail);
        assert!(start.elapsed() < Duration::from_secs(5));
        drop(listener);
    }

    #[test]
    fn http_probe_checks_grant_and_arguments() {
        let (_dir, env) = test_env(http_grant("http://127.0.0.1:1"), Mode::Execute);
        match http_probe(&env, probe("http://127.0.0.1:2/x")) {
            Err(Error::Denied(d)) => assert_eq!(d.capability, "http"),
            other => panic!("{other:?}"),
        }
        let mut p = probe("http://127.0.0.1:1/x");
        p.method = "BAD METHOD".into();
        assert!(matches!(http_probe(&env, p), Err(Error::Invalid(_))));
        let mut p = probe("http://127.0.0.1:1/x");
        p.expect_status = Some(StatusRange { min: 300, max: 200 });
        assert!(matches!(http_probe(&env, p), Err(Error::Invalid(_))));
    }

    #[test]
    fn tcp_probe_connects_refuses_and_denies() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().port();
        let closed = closed_port();
        let spec = GrantsSpec {
            tcp: vec!["127.0.0.1:*".into()],
            ..Default::default()
        };
        let (_dir, env) = test_env(spec, Mode::Execute);
        let r = tcp_probe(&env, "127.0.0.1", open, 500).unwrap();
        assert!(r.healthy, "{r:?}");
        let r = tcp_probe(&env, "127.0.0.1", closed, 500).unwrap();
        assert!(!r.healthy);
        assert!(r.detail.contains("connection refused"), "{}", r.detail);
        match tcp_probe(&env, "localhost", open, 500) {
            Err(Error::Denied(d)) => assert_eq!(d.resource, format!("localhost:{open}")),
            other => panic!("{other:?}"),
        }
    }

    fn policy(interval_ms: u64, timeout_ms: u64, success: u32, failure: u32) -> WaitPolicy {
        WaitPolicy {
            interval_ms,
            timeout_ms,
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn wait_healthy_polls_until_success_threshold() {
        let (addr, server) = serve(vec![DOWN, OK, DOWN, OK, OK]);
        let (_dir, env) = test_env(http_grant(&addr), Mode::DryRun);
        let target = Target::Http(probe(&format!("{addr}/healthz")));
        let r = wait_healthy(&env, target, policy(20, 10_000, 2, 0)).unwrap();
        assert!(r.healthy, "{r:?}");
        assert_eq!(r.attempts, 5);
        assert!(r.last.healthy);
        server.join().unwrap();
    }

    #[test]
    fn wait_healthy_gives_up_on_failures_or_deadline() {
        let port = closed_port();
        let spec = GrantsSpec {
            tcp: vec![format!("127.0.0.1:{port}")],
            ..Default::default()
        };
        let (_dir, env) = test_env(spec, Mode::Execute);
        let target = || Target::Tcp(("127.0.0.1".into(), port, 100));
        let r = wait_healthy(&env, target(), policy(10, 60_000, 1, 3)).unwrap();
        assert!(!r.healthy);
        assert_eq!(r.attempts, 3);
        // Stopped by the failure threshold, not by the 60 s deadline.
        assert!(r.elapsed_ms < 60_000, "{r:?}");

        // Probes at 0, 100, 200, 300 ms at most (a loaded machine may fit
        // fewer), none at 400: then the call waits out the deadline.
        let r = wait_healthy(&env, target(), policy(100, 350, 0, 0)).unwrap();
        assert!(!r.healthy);
        assert!((1..=4).contains(&r.attempts), "{r:?}");
        assert!(r.elapsed_ms >= 350, "gave up before the deadline: {r:?}");

        let denied = Target::Tcp(("localhost".into(), port, 100));
        assert!(matches!(
            wait_healthy(&env, denied, policy(10, 100, 1, 1)),
            Err(Error::Denied(_))
        ));
    }

    #[test]
    fn system_stats_are_plausible() {
        let s = system();
        assert!(s.memory_total_bytes > 0);
        assert!(s.memory_used_bytes <= s.memory_total_bytes);
        assert!((0.0..=100.0).contains(&s.cpu_percent), "{}", s.cpu_percent);
        assert!(s.load_one >= 0.0);
    }

    #[test]
    fn processes_match_command_lines_but_never_the_host() {
        assert!(matches!(processes(""), Err(Error::Invalid(_))));
        let marker = unique_marker("health");
        // A builtin `read` on a pipe: it blocks without forking.
        let mut children: Vec<_> = (0..2)
            .map(|_| {
                std::process::Command::new("sh")
                    .args(["-c", "read x", &marker])
                    .stdin(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut expected: Vec<u32> = children.iter().map(|c| c.id()).collect();
        expected.sort_unstable();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matching_pids(&marker) != expected && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let stats = processes(&marker).unwrap();
        for c in &mut children {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        assert_eq!(stats.pids, expected);
        assert_eq!(stats.count, 2);
        assert!(stats.rss_bytes > 0);
        // Killed and reaped: gone.
        assert!(matching_pids(&marker).is_empty());
        // The test binary's own command line is never counted.
        let me = crate::sandbox::cmdline(std::process::id()).unwrap();
        assert!(!matching_pids(&me).contains(&std::process::id()));
    }

    #[test]
    fn disk_finds_the_mount_holding_a_path() {
        let (dir, env) = test_env(GrantsSpec::default(), Mode::Execute);
        let d = disk(&env, "not/yet/created").unwrap();
        assert!(
            dir.path().canonicalize().unwrap().starts_with(&d.mount),
            "{}",
            d.mount
        );
        assert!(d.total_bytes > 0);
        assert!(d.available_bytes <= d.total_bytes);
        assert!(matches!(disk(&env, ""), Err(Error::Invalid(_))));
    }
}
