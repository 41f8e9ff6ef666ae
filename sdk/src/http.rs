//! HTTP calls to granted URLs (the WIT `http` interface). Methods other
//! than GET and HEAD are side effects: recorded and not sent in dry runs
//! (the response comes back `simulated`).
//!
//! ```no_run
//! use rewind_sdk::http::HttpRequest;
//! # fn f() -> rewind_sdk::Result<()> {
//! let r = HttpRequest::post("http://127.0.0.1:9000/admin/pause", "{}")
//!     .header("content-type", "application/json")
//!     .send()?;
//! # let _ = r; Ok(()) }
//! ```

use crate::Error;
pub use crate::bindings::rewind::plugin::http::*;

impl HttpRequest {
    /// A request with any method.
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
            timeout_ms: 0,
        }
    }
    /// A `GET`.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }
    /// A `POST` with a body.
    pub fn post(url: impl Into<String>, body: impl Into<String>) -> Self {
        Self::new("POST", url).body(body)
    }
    /// Add a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// Set the body.
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self
    }
    /// Timeout; 10 s when 0.
    pub fn timeout_ms(mut self, ms: Millis) -> Self {
        self.timeout_ms = ms;
        self
    }
    /// Send it.
    pub fn send(&self) -> Result<HttpResponse, Error> {
        request(self)
    }
}
