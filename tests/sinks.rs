//! The TCP and HTTP sinks against real peers on loopback: peers that are down, that close
//! the connection, that fail, refuse or want gzip. Every wait has a deadline.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(30);

/// A kubelet record the shipped rules tag, numbered through its image's tag.
fn record(id: usize) -> String {
    let message = format!("Failed to pull image \"x:{id}\": rpc error: code = NotFound");
    let record = json!({"_SYSTEMD_UNIT": "kubelet.service", "_HOSTNAME": "node-1",
        "__REALTIME_TIMESTAMP": "1796374803000000", "MESSAGE": message});
    format!("{record}\n")
}

/// The number of a tagged record `record` made.
fn id(line: &str) -> usize {
    let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(value["kubetag"]["category"], "image_pull", "{line}");
    let message = value["MESSAGE"].as_str().unwrap();
    let tag = message.split("x:").nth(1).and_then(|rest| rest.split('"').next()).unwrap();
    tag.parse().unwrap()
}

/// kubetag running with JSON logs on stderr, fed through its stdin.
struct Kubetag {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    logs: Receiver<Value>,
    stderr: Option<JoinHandle<String>>,
}

impl Kubetag {
    fn start(args: &[&str]) -> Kubetag {
        let mut command = common::kubetag_tool();
        for proxy in ["ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"] {
            command.env_remove(proxy);
        }
        let mut child = command
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("RUST_LOG")
            .args(["--log-level", "info", "--log-format", "json"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubetag starts");
        let stdin = child.stdin.take();
        let (logs, stderr) = read_logs(child.stderr.take().unwrap());
        Kubetag { child: Some(child), stdin, logs, stderr: Some(stderr) }
    }

    fn feed(&mut self, ids: std::ops::Range<usize>) {
        let text: String = ids.map(record).collect();
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for a log line with this message: the signal that kubetag got that far.
    fn wait_log(&self, message: &str) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(log) if log["fields"]["message"] == message => return log,
                Ok(_) => {}
                Err(_) => panic!("no {message:?} log within {DEADLINE:?}"),
            }
        }
    }

    /// Closes stdin and waits for the exit; returns the status and all of stderr.
    fn finish(mut self) -> (ExitStatus, String) {
        drop(self.stdin.take());
        let mut child = self.child.take().unwrap();
        let pid = child.id();
        let (done, exited) = channel();
        std::thread::spawn(move || done.send(child.wait()));
        let Ok(status) = exited.recv_timeout(DEADLINE) else {
            kill(pid);
            panic!("kubetag did not exit within {DEADLINE:?}");
        };
        let stderr = self.stderr.take().unwrap().join().unwrap();
        (status.unwrap(), stderr)
    }
}

impl Drop for Kubetag {
    /// A failed test must not leave kubetag waiting on its stdin.
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn kill(pid: u32) {
    let _ = std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
}

/// Parsed log lines on a channel as they come; the whole text when stderr closes.
fn read_logs(stderr: impl Read + Send + 'static) -> (Receiver<Value>, JoinHandle<String>) {
    let (tx, rx) = channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Ok(log) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(log);
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    (rx, reader)
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// A loopback port with nothing listening on it, until a test binds it again.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Accepts connections one after another and sends each line read with the number of its
/// connection. With `close_first_after`, the first connection is closed once it has
/// delivered that many lines, before the last of them is reported.
fn tcp_peer(listener: TcpListener, close_first_after: Option<usize>) -> Receiver<(usize, String)> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for (connection, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { return };
            if !read_connection(connection, stream, close_first_after, &tx) {
                return;
            }
        }
    });
    rx
}

fn read_connection(
    connection: usize,
    stream: TcpStream,
    close_first_after: Option<usize>,
    tx: &Sender<(usize, String)>,
) -> bool {
    let mut lines = BufReader::new(stream).lines();
    let mut read = 0;
    while let Some(Ok(line)) = lines.next() {
        read += 1;
        if connection == 0 && close_first_after == Some(read) {
            // Closed before the test hears of the line, so it feeds more only after.
            drop(lines);
            return tx.send((connection, line)).is_ok();
        }
        if tx.send((connection, line)).is_err() {
            return false;
        }
    }
    true
}

/// Takes lines until every id below `want` has been seen; returns them all.
fn collect_lines(lines: &Receiver<(usize, String)>, want: usize) -> Vec<(usize, usize)> {
    let deadline = Instant::now() + DEADLINE;
    let (mut got, mut seen) = (Vec::new(), BTreeSet::new());
    while seen.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((connection, line)) = lines.recv_timeout(left) else {
            panic!("only {} of {want} records arrived: {seen:?}", seen.len());
        };
        let id = id(&line);
        seen.insert(id);
        got.push((connection, id));
    }
    got
}

#[test]
fn tcp_peer_receives_every_record_as_a_line() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let lines = tcp_peer(listener, None);
    let mut kubetag = Kubetag::start(&["--output", &format!("tcp://{address}")]);
    kubetag.feed(0..50);
    let got = collect_lines(&lines, 50);
    let (status, stderr) = kubetag.finish();
    assert!(status.success(), "{stderr}");
    let ids: Vec<usize> = got.iter().map(|&(_, id)| id).collect();
    assert_eq!(ids, (0..50).collect::<Vec<_>>(), "in order, once each");
    assert_eq!(count(&stderr, "sink delivery failed"), 0, "{stderr}");
}

#[test]
fn tcp_peer_down_at_start_loses_nothing() {
    let port = free_port();
    let mut kubetag = Kubetag::start(&["--output", &format!("tcp://127.0.0.1:{port}")]);
    kubetag.feed(0..20);
    let failed = kubetag.wait_log("sink delivery failed, retrying");
    assert_eq!(failed["fields"]["sink"], format!("tcp://127.0.0.1:{port}"));

    let lines = tcp_peer(TcpListener::bind(("127.0.0.1", port)).unwrap(), None);
    let got = collect_lines(&lines, 20);
    kubetag.wait_log("sink delivering again");
    kubetag.feed(20..30);
    let more = collect_lines(&lines, 10);
    let (status, stderr) = kubetag.finish();
    assert!(status.success(), "{stderr}");
    assert_eq!(got.len() + more.len(), 30, "no record twice: {got:?} {more:?}");
    assert_eq!(count(&stderr, "sink delivery failed, retrying"), 1, "logged once: {stderr}");
}

#[test]
fn tcp_peer_closing_mid_stream_gets_everything_at_least_once() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let lines = tcp_peer(listener, Some(15));
    let mut kubetag = Kubetag::start(&["--output", &format!("tcp://{address}")]);
    kubetag.feed(0..15);
    let first = collect_lines(&lines, 15);
    assert!(first.iter().all(|&(connection, _)| connection == 0));

    // The peer has closed: the next batches must go to a new connection, none be lost.
    kubetag.feed(15..40);
    let deadline = Instant::now() + DEADLINE;
    let mut seen: BTreeSet<usize> = first.iter().map(|&(_, id)| id).collect();
    while seen.len() < 40 {
        let left = deadline.saturating_duration_since(Instant::now());
        let (connection, line) = lines.recv_timeout(left).expect("the rest arrives");
        assert!(connection >= 1, "written after the close, read on a new connection");
        seen.insert(id(&line));
    }
    let (status, stderr) = kubetag.finish();
    assert!(status.success(), "{stderr}");
}

#[test]
fn tcp_peer_never_up_fails_the_run_and_names_the_sink() {
    let port = free_port();
    let sink = format!("tcp://127.0.0.1:{port}");
    let mut kubetag = Kubetag::start(&["--output", &sink]);
    kubetag.feed(0..5);
    let (status, stderr) = kubetag.finish();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{sink}: gave up on")), "{stderr}");
    assert!(stderr.contains("(5 records)"), "{stderr}");
}

/// One request as the server read it.
struct Request {
    line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    at: Instant,
    status: u16,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text, gunzipped when it says it is gzip.
    fn text(&self) -> String {
        if self.header("content-encoding") != Some("gzip") {
            return String::from_utf8(self.body.clone()).unwrap();
        }
        let mut text = String::new();
        flate2::read::GzDecoder::new(&self.body[..]).read_to_string(&mut text).unwrap();
        text
    }

    fn ids(&self) -> Vec<usize> {
        self.text().lines().map(id).collect()
    }
}

/// What the test server answers to its n-th request (from 0): a status and extra headers.
type Respond = fn(usize) -> (u16, &'static str);

/// An HTTP/1.1 server on loopback; each request is reported before it is answered.
fn http_server(respond: Respond) -> (String, Receiver<Request>) {
    http_server_on(TcpListener::bind("127.0.0.1:0").unwrap(), respond)
}

fn http_server_on(listener: TcpListener, respond: Respond) -> (String, Receiver<Request>) {
    let url = format!("http://{}/ingest", listener.local_addr().unwrap());
    let (tx, rx) = channel();
    let served = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let (tx, served) = (tx.clone(), served.clone());
            std::thread::spawn(move || serve(stream, respond, &served, &tx));
        }
    });
    (url, rx)
}

/// Answers the requests of one kept-alive connection until the client closes it.
fn serve(stream: TcpStream, respond: Respond, served: &AtomicUsize, tx: &Sender<Request>) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    while let Some(mut request) = read_request(&mut reader) {
        let (status, extra) = respond(served.fetch_add(1, Ordering::SeqCst));
        request.status = status;
        let body = if status == 200 { "" } else { "bad record\n" };
        if tx.send(request).is_err() {
            return;
        }
        let head =
            format!("HTTP/1.1 {status} Test\r\nContent-Length: {}\r\n{extra}\r\n", body.len());
        if writer.write_all(format!("{head}{body}").as_bytes()).is_err() {
            return;
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let at = Instant::now();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let mut request =
        Request { line: line.trim_end().into(), headers, body: Vec::new(), at, status: 0 };
    let length: usize = request.header("content-length").expect("a Content-Length").parse().ok()?;
    request.body = vec![0; length];
    reader.read_exact(&mut request.body).ok()?;
    Some(request)
}

/// Takes requests until the accepted ones hold every id below `want`.
fn collect_requests(requests: &Receiver<Request>, want: usize) -> Vec<Request> {
    let deadline = Instant::now() + DEADLINE;
    let (mut got, mut accepted) = (Vec::new(), 0);
    while accepted < want {
        let left = deadline.saturating_duration_since(Instant::now());
        let request = requests.recv_timeout(left).expect("a request within the deadline");
        if request.status == 200 {
            accepted += request.ids().len();
        }
        got.push(request);
    }
    got
}

fn accepted_ids(requests: &[Request]) -> Vec<usize> {
    let mut ids: Vec<usize> =
        requests.iter().filter(|r| r.status == 200).flat_map(Request::ids).collect();
    ids.sort_unstable();
    ids
}

#[test]
fn http_server_failing_twice_gets_every_record_after_retries() {
    let (url, requests) = http_server(|n| match n {
        0 => (503, "Retry-After: 1\r\n"),
        1 => (503, ""),
        _ => (200, ""),
    });
    let mut kubetag = Kubetag::start(&["--output", &url]);
    kubetag.feed(0..10);
    let got = collect_requests(&requests, 10);
    kubetag.wait_log("sink delivering again");
    let (status, stderr) = kubetag.finish();
    assert!(status.success(), "{stderr}");

    assert_eq!(accepted_ids(&got), (0..10).collect::<Vec<_>>(), "each record once");
    assert_eq!(got[0].body, got[1].body, "the same request again");
    assert_eq!(got[1].body, got[2].body);
    let waited = got[1].at - got[0].at;
    assert!(waited >= Duration::from_millis(900), "Retry-After honoured: {waited:?}");
    for request in &got {
        assert_eq!(request.line, "POST /ingest HTTP/1.1");
        assert_eq!(request.header("content-type"), Some("application/x-ndjson"));
        assert_eq!(request.header("content-encoding"), None);
    }
    assert_eq!(count(&stderr, "sink delivery failed, retrying"), 1, "{stderr}");
}

#[test]
fn http_server_down_at_start_loses_nothing() {
    let port = free_port();
    let mut kubetag = Kubetag::start(&["--output", &format!("http://127.0.0.1:{port}/ingest")]);
    kubetag.feed(0..10);
    kubetag.wait_log("sink delivery failed, retrying");
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (_, requests) = http_server_on(listener, |_| (200, ""));
    let got = collect_requests(&requests, 10);
    let (status, stderr) = kubetag.finish();
    assert!(status.success(), "{stderr}");
    assert_eq!(accepted_ids(&got), (0..10).collect::<Vec<_>>());
}

#[test]
fn http_server_refusing_fails_the_run_without_retrying() {
    let (url, requests) = http_server(|_| (400, ""));
    let mut kubetag = Kubetag::start(&["--output", &url]);
    kubetag.feed(0..6);
    let (status, stderr) = kubetag.finish();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let sink = url.as_str();
    assert!(stderr.contains(&format!("{sink}: refused")), "{stderr}");
    assert!(stderr.contains("(6 records), the last with HTTP 400"), "{stderr}");
    assert!(stderr.contains("bad record"), "the server's answer is logged: {stderr}");

    let got: Vec<Request> = requests.try_iter().collect();
    let mut ids: Vec<usize> = got.iter().flat_map(Request::ids).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..6).collect::<Vec<_>>(), "each record sent once, never retried");
}

#[test]
fn http_gzip_and_configured_headers() {
    let (url, requests) = http_server(|_| (200, ""));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    let text = format!(
        "[sinks.ingest]\ntype = \"http\"\nurl = \"{url}\"\ngzip = true\nbatch_bytes = 4096\n\
         [sinks.ingest.headers]\nAuthorization = \"Bearer test-token\"\n"
    );
    std::fs::write(&config, text).unwrap();
    let mut kubetag = Kubetag::start(&["--config", config.to_str().unwrap()]);
    kubetag.feed(0..40);
    let got = collect_requests(&requests, 40);
    let (status, stderr) = kubetag.finish();
    assert!(status.success(), "{stderr}");

    assert_eq!(accepted_ids(&got), (0..40).collect::<Vec<_>>());
    for request in &got {
        assert_eq!(request.header("content-encoding"), Some("gzip"));
        assert_eq!(request.header("authorization"), Some("Bearer test-token"));
        assert!(request.body.len() < request.text().len() / 2, "compressed");
    }
}

#[test]
fn bad_sink_addresses_are_usage_errors() {
    for output in ["tcp://127.0.0.1", "tcp://host:0", "http://", "https:///ingest"] {
        let out = common::run(&["--output", output], b"");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{output}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    let table = "[sinks.t]\ntype = \"tcp\"\naddress = \"127.0.0.1:9\"\nmax_backoff_ms = 0\n";
    std::fs::write(&config, table).unwrap();
    let out = common::run(&["--config", config.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("greater than 0"));
}

#[test]
fn sigterm_with_a_sink_down_gives_up_after_the_shutdown_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    std::fs::write(&config, "[run]\nshutdown_timeout_secs = 1\n[limits]\nqueue_batches = 1\n")
        .unwrap();
    let sink = format!("tcp://127.0.0.1:{}", free_port());
    let mut kubetag = Kubetag::start(&["--config", config.to_str().unwrap(), "--output", &sink]);
    // Enough for the sink's queue to fill while its peer is down; the writes block once
    // kubetag pushes back, so they go on beside the test.
    let mut stdin = kubetag.stdin.take().unwrap();
    std::thread::spawn(move || {
        for chunk in 0..20 {
            let text: String = (chunk * 500..(chunk + 1) * 500).map(record).collect();
            if stdin.write_all(text.as_bytes()).and_then(|()| stdin.flush()).is_err() {
                break;
            }
        }
    });
    kubetag.wait_log("sink delivery failed, retrying");
    let started = Instant::now();
    let pid = kubetag.child.as_ref().unwrap().id();
    std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    let (status, stderr) = kubetag.finish();
    assert_eq!(status.code(), Some(1), "undelivered records fail the run: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(30), "{stderr}");
    assert!(stderr.contains(&sink), "{stderr}");
}

#[test]
fn sigterm_with_a_sink_that_never_reads_exits_at_the_shutdown_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    std::fs::write(&config, "[run]\nshutdown_timeout_secs = 1\n[limits]\nqueue_batches = 1\n")
        .unwrap();
    // A peer that takes the connection and never reads: writes block, then time out.
    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink = format!("tcp://{}", peer.local_addr().unwrap());
    let held = std::thread::spawn(move || {
        let connections: Vec<_> = peer.incoming().take(8).collect();
        std::thread::sleep(Duration::from_secs(60));
        drop(connections);
    });
    let mut kubetag = Kubetag::start(&["--config", config.to_str().unwrap(), "--output", &sink]);
    let mut stdin = kubetag.stdin.take().unwrap();
    std::thread::spawn(move || {
        for chunk in 0..200 {
            let text: String = (chunk * 500..(chunk + 1) * 500).map(record).collect();
            if stdin.write_all(text.as_bytes()).and_then(|()| stdin.flush()).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let pid = kubetag.child.as_ref().unwrap().id();
    std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    let (status, stderr) = kubetag.finish();
    assert_eq!(status.code(), Some(1), "undelivered records fail the run: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}: {stderr}", started.elapsed());
    drop(held);
}
