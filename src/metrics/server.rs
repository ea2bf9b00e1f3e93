//! The metrics endpoint: a small HTTP/1.1 server for `/metrics`, `/healthz` and `/readyz`.
//!
//! Scrapers and probes send one short GET and read one answer, so each connection serves
//! one request and closes. Everything a peer can make it hold is bounded: connections (the
//! cap is taken before accepting, so peers over it wait in the backlog), the request's size,
//! and the time a peer may take to send it.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::Metrics;

fn default_max_connections() -> usize {
    32
}

fn default_request_timeout_ms() -> u64 {
    2000
}

/// `[metrics]`: off unless an address is given.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `HOST:PORT`, or a port alone for loopback.
    pub address: Option<String>,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A peer must have sent its whole request within this long.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            address: None,
            max_connections: default_max_connections(),
            request_timeout_ms: default_request_timeout_ms(),
        }
    }
}

/// Where to listen: a port alone (`9464` or `:9464`) is a loopback port.
pub(crate) fn listen_address(address: &str) -> String {
    let port = address.strip_prefix(':').unwrap_or(address);
    if port.parse::<u16>().is_ok() {
        format!("127.0.0.1:{port}")
    } else {
        address.to_string()
    }
}

/// The largest request taken: a request line and a few headers.
const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// How often a full accept loop looks whether a connection closed.
const POLL: Duration = Duration::from_millis(20);

/// A bound listener, ready to serve.
pub(crate) struct Server {
    listener: TcpListener,
    config: MetricsConfig,
}

impl Server {
    pub(crate) fn bind(config: &MetricsConfig, address: &str) -> io::Result<Server> {
        let address = listen_address(address);
        let listener = TcpListener::bind(&address).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen for metrics on {address}: {e}"))
        })?;
        tracing::info!(address = %listener.local_addr()?, "metrics listening");
        Ok(Server { listener, config: config.clone() })
    }

    /// Serves on a thread of its own for the rest of the process, so probes are answered
    /// while the pipeline drains.
    pub(crate) fn spawn(self, metrics: Metrics) -> io::Result<()> {
        let thread = std::thread::Builder::new().name("metrics".into());
        thread.spawn(move || self.run(metrics)).map(drop)
    }

    fn run(self, metrics: Metrics) {
        let open = Arc::new(AtomicUsize::new(0));
        let timeout = Duration::from_millis(self.config.request_timeout_ms.max(1));
        loop {
            if open.load(Ordering::SeqCst) >= self.config.max_connections.max(1) {
                std::thread::sleep(POLL);
                continue;
            }
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "accepting a metrics connection");
                    std::thread::sleep(POLL);
                    continue;
                }
            };
            open.fetch_add(1, Ordering::SeqCst);
            let guard = Open(open.clone());
            let metrics = metrics.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics peer".into())
                .spawn(move || serve(stream, &metrics, timeout, guard));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a metrics connection thread");
            }
        }
    }
}

/// Counts an open connection for as long as it lives.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve(mut stream: TcpStream, metrics: &Metrics, timeout: Duration, _open: Open) {
    let response = match read_request(&mut stream, Instant::now() + timeout) {
        Ok(request) => answer(&request, metrics),
        Err(Unread::TooLarge) => Response::text(431, "request too large\n"),
        Err(Unread::TimedOut) => Response::text(408, "request timeout\n"),
        Err(Unread::Closed) => return,
    };
    let _ = stream.set_write_timeout(Some(timeout));
    let _ = stream.write_all(&response.bytes());
    let _ = stream.shutdown(std::net::Shutdown::Write);
    linger(&mut stream);
}

/// What the peer sent past the request is read and dropped for a moment before closing:
/// closing with unread bytes resets the connection, and the peer could lose the answer.
fn linger(stream: &mut TcpStream) {
    let deadline = Instant::now() + LINGER;
    let mut buffer = [0u8; 4096];
    let mut left = MAX_LINGER_BYTES;
    while left > 0 {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() || stream.set_read_timeout(Some(wait)).is_err() {
            return;
        }
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// How long and how much a closing connection is drained.
const LINGER: Duration = Duration::from_millis(200);
const MAX_LINGER_BYTES: usize = 256 * 1024;

/// Why no whole request was read.
#[derive(Debug, PartialEq, Eq)]
enum Unread {
    TooLarge,
    TimedOut,
    Closed,
}

/// Reads up to the blank line that ends the headers, by `deadline`, within the size cap.
/// A body is never read: no request this server answers has one.
fn read_request(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, Unread> {
    let mut request = Vec::new();
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(Unread::TimedOut);
        }
        let n = match stream.read(&mut buffer) {
            Ok(0) => return Err(Unread::Closed),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(Unread::TimedOut)
            }
            Err(_) => return Err(Unread::Closed),
        };
        request.extend_from_slice(&buffer[..n]);
        if request.len() > MAX_REQUEST_BYTES {
            return Err(Unread::TooLarge);
        }
    }
    Ok(request)
}

/// One answer, always closing the connection.
struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    /// HEAD: the headers of a GET, no body.
    head: bool,
    allow: bool,
}

impl Response {
    fn text(status: u16, body: &str) -> Response {
        let content_type = "text/plain; charset=utf-8";
        Response { status, content_type, body: body.into(), head: false, allow: false }
    }

    fn bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            _ => "Service Unavailable",
        };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Connection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            head.push_str("Allow: GET, HEAD\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if !self.head {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

/// The answer to one whole request head.
fn answer(request: &[u8], metrics: &Metrics) -> Response {
    let Some((method, path)) = parse(request) else {
        return Response::text(400, "bad request\n");
    };
    let path = path.split('?').next().unwrap_or_default();
    let mut response = match path {
        "/metrics" => Response {
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            ..Response::text(200, &metrics.render())
        },
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => match metrics.ready() {
            Ok(()) => Response::text(200, "ready\n"),
            Err(why) => Response::text(503, &format!("not ready: {why}\n")),
        },
        _ => return Response::text(404, "not found\n"),
    };
    match method {
        "GET" => response,
        "HEAD" => {
            response.head = true;
            response
        }
        _ => Response { allow: true, ..Response::text(405, "method not allowed\n") },
    }
}

/// The method and target of a well-formed HTTP/1.x request head, else `None`.
fn parse(request: &[u8]) -> Option<(&str, &str)> {
    let head = std::str::from_utf8(request).ok()?;
    let mut lines = head.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase());
    let version_ok = matches!(version, "HTTP/1.0" | "HTTP/1.1");
    if parts.next().is_some() || !token(method) || !target.starts_with('/') || !version_ok {
        return None;
    }
    // Header lines up to the blank one must each be `name: value`.
    let headers_ok = lines
        .take_while(|line| !line.is_empty())
        .all(|line| line.split_once(':').is_some_and(|(name, _)| !name.trim().is_empty()));
    headers_ok.then_some((method, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(request: &str) -> u16 {
        let metrics = Metrics::new(&[], &[]);
        metrics.rules_loaded(1);
        metrics.running(true);
        answer(request.as_bytes(), &metrics).status
    }

    #[test]
    fn requests_are_answered_by_path_and_method() {
        let cases = [
            ("metrics", "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 200),
            ("query ignored", "GET /metrics?x=1 HTTP/1.1\r\n\r\n", 200),
            ("health", "GET /healthz HTTP/1.0\r\n\r\n", 200),
            ("ready", "GET /readyz HTTP/1.1\r\n\r\n", 200),
            ("head", "HEAD /metrics HTTP/1.1\r\n\r\n", 200),
            ("unknown path", "GET /other HTTP/1.1\r\n\r\n", 404),
            ("post", "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
            ("no version", "GET /metrics\r\n\r\n", 400),
            ("http 2", "GET /metrics HTTP/2\r\n\r\n", 400),
            ("bad header", "GET /metrics HTTP/1.1\r\nno colon\r\n\r\n", 400),
            ("lowercase method", "get /metrics HTTP/1.1\r\n\r\n", 400),
            ("not utf-8", "GET /\u{fffd} HTTP/1.1\r\n\r\n", 404),
        ];
        for (name, request, want) in cases {
            assert_eq!(status(request), want, "{name}");
        }
        assert_eq!(answer(b"GET /\xff HTTP/1.1\r\n\r\n", &Metrics::new(&[], &[])).status, 400);
    }

    #[test]
    fn head_has_no_body_and_405_says_what_is_allowed() {
        let metrics = Metrics::new(&[], &[]);
        let head = answer(b"HEAD /healthz HTTP/1.1\r\n\r\n", &metrics).bytes();
        assert!(String::from_utf8(head)
            .unwrap()
            .ends_with("Content-Length: 3\r\nConnection: close\r\n\r\n"));
        let post = answer(b"DELETE /healthz HTTP/1.1\r\n\r\n", &metrics).bytes();
        assert!(String::from_utf8(post).unwrap().contains("\r\nAllow: GET, HEAD\r\n"));
    }

    #[test]
    fn a_port_alone_is_loopback() {
        assert_eq!(listen_address("9464"), "127.0.0.1:9464");
        assert_eq!(listen_address(":0"), "127.0.0.1:0");
        assert_eq!(listen_address("[::1]:9464"), "[::1]:9464");
        assert_eq!(listen_address("0.0.0.0:9464"), "0.0.0.0:9464");
    }
}
