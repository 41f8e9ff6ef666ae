//! `rewind:plugin/http`: requests to granted URLs. GET and HEAD are
//! observations and always sent; other methods are side effects.

use std::time::{Duration, Instant};

use crate::bindings::http::{Host, HttpRequest as Request, HttpResponse as Response};
use crate::bindings::types::Error;
use crate::state::{HostState, PluginEnv};

/// Bodies beyond this are cut: plugins read status pages, not downloads.
pub const BODY_CAP: usize = 1 << 20;

impl Host for HostState {
    async fn request(&mut self, req: Request) -> Result<Response, Error> {
        let client = self.http.clone();
        self.timed_async(|env| async move { request(&env, &client, req).await })
            .await
    }
}

/// Send a request; dropping the future (the call's deadline, a cancel)
/// abandons it and closes its connection.
async fn request(
    env: &PluginEnv,
    client: &reqwest::Client,
    req: Request,
) -> Result<Response, Error> {
    let url = env.sandbox.check_http(&req.url)?;
    let method = if req.method.is_empty() {
        "GET".to_string()
    } else {
        req.method.to_ascii_uppercase()
    };
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| Error::invalid(format!("bad HTTP method {:?}", req.method)))?;
    if !matches!(method, reqwest::Method::GET | reqwest::Method::HEAD)
        && !env.side_effect(format!("send {method} {url}"))?
    {
        return Ok(Response {
            status: 0,
            headers: Vec::new(),
            body: String::new(),
            latency_us: 0,
            simulated: true,
        });
    }
    let timeout = env.cap(Duration::from_millis(if req.timeout_ms == 0 {
        10_000
    } else {
        req.timeout_ms
    }));
    let mut builder = client.request(method.clone(), url.clone()).timeout(timeout);
    for (k, v) in &req.headers {
        builder = builder.header(k, v);
    }
    if let Some(body) = req.body {
        builder = builder.body(body);
    }
    let start = Instant::now();
    let resp = builder
        .send()
        .await
        .map_err(|e| describe_error(&method, &url, timeout, &e))?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = read_capped(resp, BODY_CAP).await;
    Ok(Response {
        status,
        headers,
        body,
        latency_us: start.elapsed().as_micros() as u64,
        simulated: false,
    })
}

/// Read at most `cap` bytes of a body, lossily decoded; the rest is not
/// read (dropping the response closes the connection).
pub async fn read_capped(mut resp: reqwest::Response, cap: usize) -> String {
    let mut buf = Vec::new();
    // A body that errors midway keeps what arrived; the status is what counts.
    while buf.len() < cap {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let keep = chunk.len().min(cap - buf.len());
                buf.extend_from_slice(&chunk[..keep]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Turn a reqwest error into a call error that says what happened.
pub fn describe_error(
    method: &reqwest::Method,
    url: &url::Url,
    timeout: Duration,
    e: &reqwest::Error,
) -> Error {
    if e.is_timeout() {
        Error::timeout(format!(
            "{method} {url}: no answer within {} ms",
            timeout.as_millis()
        ))
    } else if e.is_connect() {
        Error::failed(format!(
            "{method} {url}: connection failed: {}",
            root_cause(e)
        ))
    } else {
        Error::failed(format!("{method} {url}: {}", root_cause(e)))
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
