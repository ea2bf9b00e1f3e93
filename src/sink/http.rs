//! The HTTP sink: POSTs JSON lines, several queued batches to a request, retrying with
//! backoff while the server is unreachable, busy (429) or failing (5xx), and failing the
//! batches of a request it refuses (any other status), which would never succeed.

use std::collections::BTreeMap;
use std::io::{self, Write as _};
use std::time::Duration;

use serde::Deserialize;
use ureq::http::{HeaderName, HeaderValue, Response, StatusCode, Uri};

use super::retry::{count_records, positive, GaveUp, RefusalLog, Retry, SinkError};
use super::Batch;

fn default_batch_bytes() -> usize {
    1 << 20
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_max_backoff_ms() -> u64 {
    5000
}

/// `[sinks.NAME] type = "http"`: where to POST and how.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub url: Endpoint,
    /// Queued batches are combined into one request up to this size (before gzip); a
    /// larger batch goes alone.
    #[serde(default = "default_batch_bytes", deserialize_with = "positive")]
    pub batch_bytes: usize,
    #[serde(default)]
    pub gzip: bool,
    /// Sent with every request, e.g. `Authorization`.
    #[serde(default)]
    pub headers: Headers,
    /// For a whole request: connecting, sending and reading the answer.
    #[serde(default = "default_timeout_ms", deserialize_with = "positive")]
    pub timeout_ms: u64,
    #[serde(default = "default_max_backoff_ms", deserialize_with = "positive")]
    pub max_backoff_ms: u64,
}

impl HttpConfig {
    pub fn new(url: Endpoint) -> HttpConfig {
        HttpConfig {
            url,
            batch_bytes: default_batch_bytes(),
            gzip: false,
            headers: Headers::default(),
            timeout_ms: default_timeout_ms(),
            max_backoff_ms: default_max_backoff_ms(),
        }
    }
}

/// An `http://` or `https://` URL with a host, checked when the configuration is read.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub struct Endpoint(String);

impl TryFrom<String> for Endpoint {
    type Error = String;

    fn try_from(url: String) -> Result<Endpoint, String> {
        let uri: Uri = url.parse().map_err(|e| format!("http url {url:?}: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(format!("http url {url:?} must start with http:// or https://"));
        }
        if uri.host().map_or(true, str::is_empty) {
            return Err(format!("http url {url:?} has no host"));
        }
        Ok(Endpoint(url))
    }
}

impl Endpoint {
    /// The URL without credentials or query, which may hold secrets, for logs and errors.
    pub fn label(&self) -> String {
        let Ok(uri) = self.0.parse::<Uri>() else { return self.0.clone() };
        let (scheme, host) = (uri.scheme_str().unwrap_or("http"), uri.host().unwrap_or(""));
        let port = uri.port_u16().map_or(String::new(), |p| format!(":{p}"));
        format!("{scheme}://{host}{port}{}", uri.path())
    }
}

/// Extra request headers; names and values are checked when the configuration is read.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "BTreeMap<String, String>")]
pub struct Headers(BTreeMap<String, String>);

/// Headers the sink sets itself from the body it sends.
const RESERVED_HEADERS: [&str; 5] =
    ["content-length", "content-encoding", "transfer-encoding", "host", "connection"];

impl TryFrom<BTreeMap<String, String>> for Headers {
    type Error = String;

    fn try_from(headers: BTreeMap<String, String>) -> Result<Headers, String> {
        for (name, value) in &headers {
            let parsed = HeaderName::try_from(name.as_str())
                .map_err(|e| format!("http header name {name:?}: {e}"))?;
            if RESERVED_HEADERS.contains(&parsed.as_str()) {
                return Err(format!("http header {name:?} is set by the sink"));
            }
            HeaderValue::try_from(value.as_str())
                .map_err(|e| format!("http header {name:?} value: {e}"))?;
        }
        Ok(Headers(headers))
    }
}

/// What the server made of one request.
enum Answer {
    Accepted,
    /// A status that retrying will not change.
    Refused {
        status: u16,
        body: String,
    },
    Retry {
        error: String,
        after: Option<Duration>,
    },
}

/// The configured client: one agent, so connections are kept alive between requests.
pub(crate) struct Client {
    agent: ureq::Agent,
    config: HttpConfig,
    label: String,
    content_type: bool,
}

impl Client {
    pub(crate) fn new(config: &HttpConfig) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // A redirect is a misconfigured URL; following it would turn a POST into a GET.
            .max_redirects(0)
            .timeout_global(Some(Duration::from_millis(config.timeout_ms)))
            .user_agent(concat!("kubetag/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        let content_type = config.headers.0.keys().any(|k| k.eq_ignore_ascii_case("content-type"));
        let label = config.url.label();
        Client { agent, config: config.clone(), label, content_type }
    }

    /// The request body: the batches' lines, back to back, gzipped if asked.
    fn body(&self, held: &[Batch]) -> Vec<u8> {
        let size = held.iter().map(|b| b.bytes.len()).sum();
        if !self.config.gzip {
            let mut body = Vec::with_capacity(size);
            held.iter().for_each(|b| body.extend_from_slice(&b.bytes));
            return body;
        }
        // The fastest level: tagged records repeat a lot, and the CPU is the node's.
        let level = flate2::Compression::fast();
        let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(size / 4), level);
        let written = held.iter().try_for_each(|b| encoder.write_all(&b.bytes));
        written.and_then(|()| encoder.finish()).expect("gzip into memory cannot fail")
    }

    fn post(&self, body: &[u8]) -> Answer {
        let mut request = self.agent.post(self.config.url.0.as_str());
        if !self.content_type {
            request = request.header("content-type", "application/x-ndjson");
        }
        if self.config.gzip {
            request = request.header("content-encoding", "gzip");
        }
        for (name, value) in &self.config.headers.0 {
            request = request.header(name.as_str(), value.as_str());
        }
        match request.send(body) {
            Ok(response) => answer(response),
            Err(e) => Answer::Retry { error: e.to_string(), after: None },
        }
    }
}

/// Most of a response body read, so the connection can be used again, and its start kept
/// for the log.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;
const LOGGED_RESPONSE_CHARS: usize = 200;

fn answer(mut response: Response<ureq::Body>) -> Answer {
    let status = response.status();
    let after = retry_after(&response);
    let body = response.body_mut().with_config().limit(MAX_RESPONSE_BYTES).read_to_vec();
    let body = String::from_utf8_lossy(&body.unwrap_or_default()).trim().to_string();
    if status.is_success() {
        return Answer::Accepted;
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Answer::Retry { error: format!("HTTP {status}"), after };
    }
    let body = body.chars().take(LOGGED_RESPONSE_CHARS).collect();
    Answer::Refused { status: status.as_u16(), body }
}

/// Retry-After in seconds; the HTTP-date form is rare for these answers and is ignored,
/// leaving the backoff in charge.
fn retry_after(response: &Response<ureq::Body>) -> Option<Duration> {
    let value = response.headers().get("retry-after")?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Posts every batch from the queue, in order; returns an error naming what was refused
/// or abandoned.
pub(crate) fn run(client: Client, batches: flume::Receiver<Batch>) -> io::Result<()> {
    let mut retry = Retry::new(&client.label, client.config.max_backoff_ms);
    let mut refusals = Refusals { batches: 0, records: 0, status: None, log: RefusalLog::new() };
    let mut carry = None;
    while let Some(mut held) = gather(&batches, &mut carry, client.config.batch_bytes) {
        let body = client.body(&held);
        match deliver(&client, &body, &mut retry, &batches) {
            Ok(Answer::Refused { status, body }) => {
                refusals.add(&client.label, &held, status, &body)
            }
            Ok(_) => {}
            Err(gave_up) => {
                held.extend(carry.take());
                return Err(gave_up.fail(&client.label, &held, &batches).into());
            }
        }
        // Delivered, or failed as refused: dropping them releases their acknowledgements.
        drop(held);
    }
    refusals.result(&client.label)
}

/// The next request's batches: one waited for, then whatever is queued up to `limit`
/// bytes. A batch that would go over is carried to the next request.
fn gather(
    batches: &flume::Receiver<Batch>,
    carry: &mut Option<Batch>,
    limit: usize,
) -> Option<Vec<Batch>> {
    let first = match carry.take() {
        Some(batch) => batch,
        None => batches.recv().ok()?,
    };
    let mut size = first.bytes.len();
    let mut held = vec![first];
    while size < limit {
        let Ok(next) = batches.try_recv() else { break };
        if size + next.bytes.len() > limit {
            *carry = Some(next);
            break;
        }
        size += next.bytes.len();
        held.push(next);
    }
    Some(held)
}

/// Sends one request until it is accepted or refused, or the drain gives up.
fn deliver(
    client: &Client,
    body: &[u8],
    retry: &mut Retry,
    batches: &flume::Receiver<Batch>,
) -> Result<Answer, GaveUp> {
    loop {
        match client.post(body) {
            Answer::Retry { error, after } => retry.failed(&error, after, batches)?,
            // The server answered: whatever the outage was, it is over.
            answer => {
                retry.succeeded();
                return Ok(answer);
            }
        }
    }
}

/// Requests the server refused: failed, counted, logged (rate-limited) and reported.
struct Refusals {
    batches: u64,
    records: u64,
    status: Option<u16>,
    log: RefusalLog,
}

impl Refusals {
    fn add(&mut self, sink: &str, held: &[Batch], status: u16, body: &str) {
        let records: u64 = held.iter().map(count_records).sum();
        held.iter().for_each(|batch| batch.fail());
        self.batches += held.len() as u64;
        self.records += records;
        self.status = Some(status);
        if let Some(suppressed) = self.log.allow() {
            tracing::warn!(
                sink = %sink, status, response = body, records, suppressed,
                "http sink request refused; its records are failed, not retried"
            );
        }
    }

    fn result(self, sink: &str) -> io::Result<()> {
        let Some(status) = self.status else { return Ok(()) };
        let (batches, records) = (self.batches, self.records);
        Err(SinkError::Refused { sink: sink.into(), batches, records, status }.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_an_http_scheme_and_a_host() {
        for good in ["http://127.0.0.1:8080/ingest", "https://logs.example/v1/logs?x=1"] {
            assert!(Endpoint::try_from(good.to_string()).is_ok(), "{good}");
        }
        for bad in ["ftp://host/", "http:///path", "127.0.0.1:8080", "http://bad host/"] {
            assert!(Endpoint::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels_leave_out_credentials_and_queries() {
        let url = Endpoint("https://user:secret@logs.example:8443/ingest?token=t".into());
        assert_eq!(url.label(), "https://logs.example:8443/ingest");
    }

    #[test]
    fn headers_are_checked_and_body_headers_reserved() {
        let map = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(Headers::try_from(map("Authorization", "Bearer t")).is_ok());
        assert!(Headers::try_from(map("Content-Length", "5")).is_err());
        assert!(Headers::try_from(map("bad name", "x")).is_err());
        assert!(Headers::try_from(map("X-Ok", "line\nbreak")).is_err());
    }

    fn batch(bytes: &[u8]) -> Batch {
        std::sync::Arc::new(super::super::Output {
            bytes: bytes.to_vec(),
            ack: None,
            records: Vec::new(),
        })
    }

    #[test]
    fn queued_batches_are_combined_up_to_the_limit() {
        let (queue, batches) = flume::bounded(8);
        for bytes in [&b"a\n"[..], b"bb\n", b"ccc\n", b"dddddddddd\n"] {
            queue.send(batch(bytes)).unwrap();
        }
        let mut carry = None;
        let sizes = |held: Vec<Batch>| held.iter().map(|b| b.bytes.len()).collect::<Vec<_>>();
        assert_eq!(sizes(gather(&batches, &mut carry, 9).unwrap()), [2, 3, 4]);
        assert_eq!(sizes(gather(&batches, &mut carry, 9).unwrap()), [11], "too big goes alone");
        drop(queue);
        assert!(gather(&batches, &mut carry, 9).is_none());
    }
}
