//! Read-only observation (the WIT `health` interface), carried out in every
//! mode, with probe builders that read like a runbook:
//!
//! ```no_run
//! use rewind_sdk::{HttpProbe, TcpProbe, WaitPolicy};
//! # fn f() -> rewind_sdk::Result<()> {
//! let now = HttpProbe::get("http://127.0.0.1:8080/healthz")
//!     .expect(200, 299)
//!     .contains("ok")
//!     .timeout_ms(500)
//!     .probe()?;
//! let waited = HttpProbe::get("http://127.0.0.1:8080/healthz")
//!     .wait(WaitPolicy::every(200).timeout_ms(15_000).successes(2))?;
//! let db = TcpProbe::new("127.0.0.1", 5432).probe()?;
//! # let _ = (now, waited, db); Ok(()) }
//! ```

use crate::Error;
pub use crate::bindings::rewind::plugin::health::*;

/// The SDK's name for the WIT `http-check` record: an HTTP health check.
pub type HttpProbe = HttpCheck;

impl HttpCheck {
    /// A `GET` of `url`, healthy on 200-399 (the defaults of the contract).
    pub fn get(url: impl Into<String>) -> Self {
        Self::request("GET", url)
    }
    /// A request with another method (`HEAD`, `POST` ...).
    pub fn request(method: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            method: method.into(),
            headers: Vec::new(),
            expect_status: None,
            body_contains: None,
            timeout_ms: 0,
        }
    }
    /// Add a request header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// Healthy statuses, inclusive.
    pub fn expect(mut self, min: u16, max: u16) -> Self {
        self.expect_status = Some(StatusRange { min, max });
        self
    }
    /// The body must contain `text` to be healthy.
    pub fn contains(mut self, text: impl Into<String>) -> Self {
        self.body_contains = Some(text.into());
        self
    }
    /// Per-request timeout (1000 ms when not set).
    pub fn timeout_ms(mut self, ms: Millis) -> Self {
        self.timeout_ms = ms;
        self
    }
    /// Probe once.
    pub fn probe(&self) -> Result<ProbeResult, Error> {
        http_probe(self)
    }
    /// Probe until healthy, polled by the host.
    pub fn wait(&self, policy: WaitPolicy) -> Result<WaitResult, Error> {
        wait_healthy(&Target::Http(self.clone()), policy)
    }
    /// The range this probe counts as healthy, as text (`200-399`).
    pub fn expected(&self) -> String {
        let r = self
            .expect_status
            .unwrap_or(StatusRange { min: 200, max: 399 });
        format!("{}-{}", r.min, r.max)
    }
}

/// A TCP connect check (`tcp` grant on `host:port`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TcpProbe {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Connect timeout; 1000 ms when 0.
    pub timeout_ms: Millis,
}

impl TcpProbe {
    /// A connect check of `host:port`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            timeout_ms: 0,
        }
    }
    /// Connect timeout.
    pub fn timeout_ms(mut self, ms: Millis) -> Self {
        self.timeout_ms = ms;
        self
    }
    /// Probe once.
    pub fn probe(&self) -> Result<ProbeResult, Error> {
        tcp_probe(&self.host, self.port, self.timeout_ms)
    }
    /// Probe until it connects, polled by the host.
    pub fn wait(&self, policy: WaitPolicy) -> Result<WaitResult, Error> {
        wait_healthy(
            &Target::Tcp((self.host.clone(), self.port, self.timeout_ms)),
            policy,
        )
    }
}

impl WaitPolicy {
    /// Probe every `interval_ms`, for up to 30 s, until one probe is healthy.
    pub fn every(interval_ms: Millis) -> Self {
        Self {
            interval_ms,
            timeout_ms: 30_000,
            success_threshold: 1,
            failure_threshold: 0,
        }
    }
    /// Give up after this long in all.
    pub fn timeout_ms(mut self, ms: Millis) -> Self {
        self.timeout_ms = ms;
        self
    }
    /// Consecutive healthy probes needed.
    pub fn successes(mut self, n: u32) -> Self {
        self.success_threshold = n;
        self
    }
    /// Give up after this many consecutive failures (0: only the timeout).
    pub fn failures(mut self, n: u32) -> Self {
        self.failure_threshold = n;
        self
    }
}

impl ProbeResult {
    /// Latency in milliseconds.
    pub fn latency_ms(&self) -> f64 {
        self.latency_us as f64 / 1000.0
    }
}
