//! kubetag run as a service: metrics and probes scraped over loopback, the metrics
//! server's limits, reload on SIGHUP, burst control, and stopping on signals.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const PULL: &str = r#"E1204 09:00:03.000000    2101 remote_image.go:180] "PullImage from image service failed" err="rpc error: code = NotFound desc = failed to pull and unpack image" image="shop/cart:2.1" pod="shop/cart-5f6d""#;

fn record(seq: u64, message: &str) -> String {
    let time = (1_796_374_801_000_000 + seq * 1_000_000).to_string();
    let record = json!({"__REALTIME_TIMESTAMP": time, "_HOSTNAME": "node-1",
        "_SYSTEMD_UNIT": "kubelet.service", "MESSAGE": message});
    format!("{record}\n")
}

/// A running kubetag fed on stdin, with its metrics address, stdout lines and logs.
struct Service {
    child: Child,
    stdin: Option<ChildStdin>,
    address: String,
    out: Receiver<String>,
    logs: Receiver<Value>,
    dir: tempfile::TempDir,
}

impl Service {
    /// Starts kubetag with `config` (a pipeline.toml body) and `args`, metrics on port 0;
    /// returns once it logs the metrics address.
    fn start(config: &str, args: &[&str]) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipeline.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = kubetag_tool()
            .args(["--config", path.to_str().unwrap(), "--metrics", "127.0.0.1:0"])
            .args(["--log-level", "info", "--log-format", "json", "--threads", "2"])
            .arg("--stats-file")
            .arg(dir.path().join("stats.json"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = json_lines(child.stderr.take().unwrap());
        let address = loop {
            let log = logs.recv_timeout(Duration::from_secs(20)).expect("metrics are served");
            if log["fields"]["message"] == "metrics listening" {
                break log["fields"]["address"].as_str().unwrap().to_string();
            }
        };
        let out = lines_of(child.stdout.take().unwrap());
        let stdin = child.stdin.take();
        let mut service = Service { child, stdin, address, out, logs, dir };
        service.wait_for_log("started");
        service.wait_until_ready();
        service
    }

    /// Asks /readyz until it answers 200, as a kubelet would.
    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while get(&self.address, "/readyz").0 != 200 {
            assert!(Instant::now() < deadline, "never ready");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn next(&self) -> Value {
        let line = self.out.recv_timeout(Duration::from_secs(20)).expect("an output record");
        serde_json::from_str(&line).unwrap()
    }

    fn wait_for_log(&mut self, message: &str) -> Value {
        loop {
            let log = self.logs.recv_timeout(Duration::from_secs(20)).expect(message);
            if log["fields"]["message"] == message {
                return log;
            }
        }
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").arg(format!("-{name}")).arg(pid).status().unwrap().success());
    }

    /// Closes stdin and waits for the end; the stats file.
    fn finish(mut self) -> (Value, Vec<String>) {
        drop(self.stdin.take());
        assert!(self.child.wait().unwrap().success());
        let rest = self.out.iter().collect();
        (stats(&self.dir.path().join("stats.json")), rest)
    }
}

fn json_lines(output: impl Read + Send + 'static) -> Receiver<Value> {
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = lines_of(output);
    std::thread::spawn(move || {
        for line in lines {
            let _ = tx.send(serde_json::from_str(&line).unwrap_or(Value::Null));
        }
    });
    rx
}

/// One raw request; the status and the body of the answer.
fn request(address: &str, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_string();
    (status, body)
}

fn get(address: &str, path: &str) -> (u16, String) {
    request(address, format!("GET {path} HTTP/1.1\r\nHost: kubetag\r\n\r\n").as_bytes())
}

/// The value of one sample, `name{labels}` as written.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until `series` reads `want`: counters are published per batch, a moment after
/// the output a test waits for.
fn scrape_until(address: &str, series: &str, want: f64) -> String {
    scrape_until_true(address, |metrics| sample(metrics, series) == Some(want))
}

fn scrape_until_true(address: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, metrics) = get(address, "/metrics");
        assert_eq!(status, 200);
        if done(&metrics) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "never as expected:\n{metrics}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn metrics_count_a_known_input() {
    let mut service = Service::start("", &[]);
    assert_eq!(get(&service.address, "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(&service.address, "/readyz"), (200, "ready\n".into()));

    // Unmatched and malformed lines first: once the last tagged record is out, every
    // frame before it has been counted.
    let mut input = record(1, "Started Kubernetes systemd probe.");
    input += &record(2, "Reached target Network.");
    input += "{\"MESSAGE\": nope}\n";
    input += "{}\n";
    for seq in 3..6 {
        input += &record(seq, PULL);
    }
    let bytes = input.len() as f64;
    service.send(&input);
    let tagged: Vec<Value> = (0..3).map(|_| service.next()).collect();
    let rule = tagged[2]["kubetag"]["rule"].as_str().unwrap().to_string();

    let address = service.address.clone();
    let metrics = scrape_until(&address, "kubetag_sink_records_sent_total{sink=\"stdout\"}", 3.0);
    let want = [
        ("kubetag_records_read_total{source=\"stdin\"}".to_string(), 7.0),
        ("kubetag_bytes_read_total{source=\"stdin\"}".into(), bytes),
        ("kubetag_records_tagged_total{category=\"image_pull\"}".into(), 3.0),
        ("kubetag_records_tagged_total{category=\"pleg\"}".into(), 0.0),
        (format!("kubetag_rule_matches_total{{rule=\"{rule}\"}}"), 3.0),
        ("kubetag_records_unmatched_total".into(), 2.0),
        ("kubetag_records_malformed_total{reason=\"syntax\"}".into(), 1.0),
        ("kubetag_records_malformed_total{reason=\"no_message\"}".into(), 1.0),
        ("kubetag_records_forwarded_total".into(), 3.0),
        ("kubetag_records_deduplicated_total".into(), 0.0),
        ("kubetag_sink_records_failed_total{sink=\"stdout\"}".into(), 0.0),
        ("kubetag_sink_queue_batches{sink=\"stdout\"}".into(), 0.0),
        ("kubetag_sink_up{sink=\"stdout\"}".into(), 1.0),
        ("kubetag_ready".into(), 1.0),
    ];
    for (series, value) in want {
        assert_eq!(sample(&metrics, &series), Some(value), "{series} in\n{metrics}");
    }
    let reason: String = rule.split(['.', '_']).map(|w| w[..1].to_uppercase() + &w[1..]).collect();
    let problem = format!("problem_counter{{reason=\"{reason}\"}}");
    assert_eq!(sample(&metrics, &problem), Some(3.0), "{problem} in\n{metrics}");
    assert!(sample(&metrics, "kubetag_rules_loaded").unwrap() > 50.0);
    assert!(!metrics.contains("PullImage"), "no message text in labels");

    let (stats, _) = service.finish();
    assert_eq!(stats["records_read"], 7);
    assert_eq!(stats["forwarded"], 3);
}

#[test]
fn the_metrics_server_answers_only_what_it_understands() {
    let service = Service::start("[metrics]\nrequest_timeout_ms = 400\n", &[]);
    let address = &service.address;
    let cases: [(&str, &[u8], u16); 6] = [
        ("unknown path", b"GET /nothing HTTP/1.1\r\n\r\n", 404),
        ("post", b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 405),
        ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
        ("no version", b"GET /metrics\r\n\r\n", 400),
        ("head", b"HEAD /healthz HTTP/1.1\r\n\r\n", 200),
        ("half a request, then silence", b"GET /metrics HTTP/1.1\r\n", 408),
    ];
    for (name, bytes, want) in cases {
        assert_eq!(request(address, bytes).0, want, "{name}");
    }
    let huge = format!("GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(64 * 1024));
    let mut stream = TcpStream::connect(address).unwrap();
    // The server may close before all of it is written; the answer is still there.
    let _ = stream.write_all(huge.as_bytes());
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:.40}");
    service.finish();
}

#[test]
fn a_slow_peer_is_cut_off_at_the_request_timeout() {
    let service = Service::start("[metrics]\nrequest_timeout_ms = 500\n", &[]);
    let mut stream = TcpStream::connect(&service.address).unwrap();
    let started = Instant::now();
    // A byte every 50 ms: each read is prompt, the whole request never comes.
    let mut writer = stream.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: ".iter().chain([b'a'; 64].iter()) {
            if writer.write_all(&[*byte]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let mut answer = String::new();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    trickle.join().unwrap();
    service.finish();
}

#[test]
fn connections_over_the_cap_wait_for_a_free_one() {
    let config = "[metrics]\nmax_connections = 1\nrequest_timeout_ms = 600\n";
    let service = Service::start(config, &[]);
    let mut idle = TcpStream::connect(&service.address).unwrap();
    // Accepted before the next one connects: the healthz answer says the server is up.
    let mut waiting = TcpStream::connect(&service.address).unwrap();
    let started = Instant::now();
    waiting.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
    let mut answer = String::new();
    idle.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    idle.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408 "), "the idle peer is timed out: {answer}");
    let mut answer = String::new();
    waiting.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    waiting.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    // Served only once the idle peer's slot was free.
    assert!(started.elapsed() >= Duration::from_millis(500), "{:?}", started.elapsed());
    service.finish();
}

/// A rule file with one rule, `test.NAME`, tagging messages that hold `pattern`.
fn rule_file(name: &str, pattern: &str) -> String {
    format!(
        "# test rules\n\n[[rule]]\nid = \"test.{name}\"\ncategory = \"image_pull\"\n\
         severity = \"error\"\npatterns = [\"{pattern}\"]\nsummary = \"{name}\"\n"
    )
}

fn write_rules(dir: &Path, text: &str) {
    std::fs::write(dir.join("test.toml"), text).unwrap();
}

#[test]
fn sighup_swaps_in_good_rules_and_refuses_broken_ones() {
    let rules = tempfile::tempdir().unwrap();
    write_rules(
        rules.path(),
        &(rule_file("alpha", "alpha failed")
            + &rule_file("beta", "beta failed").replace("# test rules\n", "")),
    );
    let mut service = Service::start("", &["--rules", rules.path().to_str().unwrap()]);
    let rules_loaded = "kubetag_rules_loaded";

    service.send(&record(1, "alpha failed here"));
    assert_eq!(service.next()["kubetag"]["rule"], "test.alpha");

    // A good set: gamma added, alpha gone.
    let good = rule_file("beta", "beta failed")
        + &rule_file("gamma", "gamma failed").replace("# test rules\n", "");
    write_rules(rules.path(), &good);
    service.signal("HUP");
    let log = service.wait_for_log("rules reloaded");
    assert_eq!(log["fields"]["rules"], 2);
    service.send(&(record(2, "alpha failed here") + &record(3, "gamma failed here")));
    assert_eq!(service.next()["kubetag"]["rule"], "test.gamma", "alpha no longer tags");

    // A broken set: refused, named in the log, and the last good one goes on.
    write_rules(rules.path(), "[[rule]]\nid = \"test.broken\"\ncategory = \"nonsense\"\n");
    service.signal("HUP");
    let log = service.wait_for_log("new rules refused, the old ones go on");
    assert_eq!(log["level"], "ERROR");
    assert!(log["fields"]["error"].as_str().unwrap().contains("test.toml"), "{log}");
    service.send(&record(4, "gamma failed again"));
    assert_eq!(service.next()["kubetag"]["rule"], "test.gamma");

    let metrics = get(&service.address, "/metrics").1;
    assert_eq!(sample(&metrics, rules_loaded), Some(2.0));
    assert_eq!(sample(&metrics, "kubetag_rules_reloads_total{result=\"ok\"}"), Some(1.0));
    assert_eq!(sample(&metrics, "kubetag_rules_reloads_total{result=\"refused\"}"), Some(1.0));
    assert_eq!(get(&service.address, "/readyz").0, 200);

    let (stats, _) = service.finish();
    assert_eq!(stats["tagged_by_rule"], json!({"test.alpha": 1, "test.gamma": 2}));
}

#[test]
fn reloads_under_load_lose_no_record() {
    let rules = tempfile::tempdir().unwrap();
    write_rules(rules.path(), &rule_file("pull", "PullImage"));
    let mut service = Service::start("", &["--rules", rules.path().to_str().unwrap()]);
    let mut stdin = service.stdin.take().unwrap();
    const RECORDS: u64 = 20_000;
    let feeder = std::thread::spawn(move || {
        for seq in 0..RECORDS {
            stdin.write_all(record(seq, PULL).as_bytes()).unwrap();
        }
    });
    for round in 0..5 {
        // The same rule under another name each time, so each swap is a new set.
        write_rules(rules.path(), &rule_file(&format!("pull{round}"), "PullImage"));
        service.signal("HUP");
        service.wait_for_log("rules reloaded");
    }
    feeder.join().unwrap();
    let (stats, _) = service.finish();
    assert_eq!(stats["records_read"], RECORDS);
    assert_eq!(stats["tagged"], RECORDS, "{stats}");
    assert_eq!(stats["forwarded"], RECORDS);
    let by_rule = stats["tagged_by_rule"].as_object().unwrap();
    assert_eq!(by_rule.values().map(|n| n.as_u64().unwrap()).sum::<u64>(), RECORDS);
}

#[test]
fn repeats_are_summarised_when_the_window_closes() {
    let config = "[dedupe]\nwindow_secs = 1\n[dedupe.categories]\npleg = 0\n";
    let mut service = Service::start(config, &[]);
    let other_pod = PULL.replace("cart-5f6d", "cart-9a9a");
    let mut input = String::new();
    for seq in 0..4 {
        input += &record(seq, PULL);
    }
    input += &record(4, &other_pod);
    service.send(&input);
    assert_eq!(service.next()["MESSAGE"], PULL, "the first at once");
    assert_eq!(service.next()["MESSAGE"], other_pod, "another pod is not a repeat");
    // The window closes on the clock, with no more input.
    let summary = service.next();
    let repeats = &summary["kubetag"]["repeats"];
    assert_eq!(repeats["count"], 3, "{summary}");
    assert_eq!(repeats["first"], "2026-12-04T09:00:01.000000Z");
    assert_eq!(repeats["last"], "2026-12-04T09:00:04.000000Z");
    assert_eq!(summary["__REALTIME_TIMESTAMP"], "1796374804000000", "the last repeat");

    let address = service.address.clone();
    let metrics = scrape_until(&address, "kubetag_summaries_total", 1.0);
    assert_eq!(sample(&metrics, "kubetag_records_deduplicated_total"), Some(3.0));
    let (stats, rest) = service.finish();
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!((stats["records_read"].as_u64(), stats["tagged"].as_u64()), (Some(5), Some(5)));
    assert_eq!(stats["forwarded"], 2);
    assert_eq!(stats["deduplicated"], 3);
    assert_eq!(stats["summaries"], 1);
}

#[test]
fn open_windows_are_summarised_when_the_run_ends() {
    let config = "[dedupe]\nwindow_secs = 3600\n";
    let input: String = (0..5).map(|seq| record(seq, PULL)).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, config).unwrap();
    let stats_file = dir.path().join("stats.json");
    let output = run(
        &["--config", path.to_str().unwrap(), "--stats-file", stats_file.to_str().unwrap()],
        input.as_bytes(),
    );
    assert!(output.status.success());
    let out = lines(&output.stdout);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1]["kubetag"]["repeats"]["count"], 4);
    let stats = stats(&stats_file);
    assert_eq!((stats["forwarded"].as_u64(), stats["deduplicated"].as_u64()), (Some(1), Some(4)));
}

#[test]
fn sigterm_mid_stream_loses_nothing() {
    let mut service = Service::start("", &[]);
    let mut stdin = service.stdin.take().unwrap();
    // Fed until kubetag stops reading: a pipe that breaks ends the feeder.
    let feeder = std::thread::spawn(move || {
        let mut sent = 0u64;
        while stdin.write_all(record(sent, PULL).as_bytes()).is_ok() && sent < 5_000_000 {
            sent += 1;
        }
    });
    for _ in 0..1000 {
        service.next();
    }
    service.signal("TERM");
    service.wait_for_log("draining");
    let status = service.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let stopped = service.wait_for_log("stopped");
    let written = 1000 + service.out.iter().count() as u64;
    drop(feeder);
    let stats = stats(&service.dir.path().join("stats.json"));
    assert_eq!(stats["forwarded"].as_u64(), Some(written), "{stats}");
    assert_eq!(stats["records_read"], stats["tagged"], "no line cut in half: {stats}");
    assert_eq!(stopped["fields"]["forwarded"].as_u64(), Some(written));
}

#[test]
fn a_second_signal_exits_at_once() {
    // A sink that never takes anything, behind a queue of one batch: the drain would wait
    // the whole shutdown timeout.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let config = format!(
        "[limits]\nqueue_batches = 1\n[run]\nshutdown_timeout_secs = 600\n\
         [sinks.stuck]\ntype = \"tcp\"\naddress = \"127.0.0.1:{port}\"\nmax_backoff_ms = 100\n"
    );
    let mut service = Service::start(&config, &[]);
    let mut stdin = service.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let mut seq = 0;
        while seq < 100_000 && stdin.write_all(record(seq, PULL).as_bytes()).is_ok() {
            seq += 1;
        }
    });
    let address = service.address.clone();
    scrape_until_true(&address, |metrics| {
        let retries = sample(metrics, "kubetag_sink_retries_total{sink=\"stuck\"}");
        let queued = sample(metrics, "kubetag_sink_queue_batches{sink=\"stuck\"}");
        retries.is_some_and(|n| n >= 1.0) && queued == Some(1.0)
    });
    service.signal("TERM");
    service.wait_for_log("draining");
    assert_eq!(get(&address, "/readyz").0, 503, "not ready while draining");
    let started = Instant::now();
    service.signal("TERM");
    let status = service.child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    feeder.join().unwrap();
}

#[test]
fn a_followed_journal_reports_its_source_and_checkpoint_age() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<Entry> = (0..3).map(|seq| Entry::new(seq, "kubelet.service", PULL)).collect();
    let journal = journal(dir.path(), &entries);
    let state = dir.path().join("cursor.json");
    let config = format!(
        "[sources.node]\ntype = \"journal\"\nfiles = [{journal:?}]\nunits = []\nfollow = true\n\
         state_file = {state:?}\ncheckpoint_interval_ms = 50\n"
    );
    let mut service = Service::start(&config, &[]);
    for _ in 0..3 {
        assert_eq!(service.next()["kubetag"]["category"], "image_pull");
    }
    let age = "kubetag_journal_checkpoint_age_seconds{source=\"node\"}";
    let metrics = scrape_until_true(&service.address, |metrics| {
        sample(metrics, age).is_some_and(|age| age < 1.0)
    });
    assert_eq!(sample(&metrics, "kubetag_records_read_total{source=\"node\"}"), Some(3.0));
    service.signal("TERM");
    assert!(service.child.wait().unwrap().success());
    assert!(state.exists());
}
