//! kubetag between Kafka topics, against a real Kafka-protocol broker (tansu) on loopback:
//! category topics, keys and headers, the dead-letter path, at-least-once through
//! SIGTERM, SIGKILL, broker outages and a consumer group losing a member.
//!
//! The broker is found as `$TANSU`, on the PATH, or in cargo's bin directory;
//! scripts/test.sh installs it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

const CATEGORIES: [&str; 17] = [
    "image_pull",
    "container_runtime",
    "cgroup",
    "volume_mount",
    "node_registration",
    "certificate",
    "cni_network",
    "pleg",
    "eviction",
    "oom",
    "probe",
    "crashloop",
    "swap",
    "image_gc",
    "dns",
    "config",
    "unmatched",
];

/// Broker tests run one at a time: several brokers, groups and kubetag instances at once
/// on two cores stretch heartbeats and rebalances past the timeouts these tests set.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A name no other test or run uses.
fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}-{}-{}-{n}", std::process::id(), nanos.subsec_nanos())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn tansu() -> PathBuf {
    if let Some(path) = std::env::var_os("TANSU") {
        return path.into();
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).map(|d| d.join("tansu")).collect::<Vec<_>>());
    let in_cargo = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/tansu"));
    on_path.chain(in_cargo).find(|p| p.is_file()).expect(
        "tansu is needed: `cargo install tansu --locked --features dynostore` (scripts/test.sh does it)",
    )
}

/// A tansu broker with memory storage, listening on loopback only. Clients reach it at
/// `advertised`, which may be a [`Proxy`] in front of it.
struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    fn start() -> Broker {
        let port = free_port();
        Broker::start_at(port, port)
    }

    fn start_at(port: u16, advertised: u16) -> Broker {
        let child = Command::new(tansu())
            .args(["broker", "--listener-url", &format!("tcp://127.0.0.1:{port}")])
            .args(["--advertised-listener-url", &format!("tcp://127.0.0.1:{advertised}")])
            .args(["--storage-engine", "memory://tansu/"])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu listens within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { child, port }
    }

    fn create_topic(&self, name: &str, partitions: u32) {
        let status = Command::new(tansu())
            .args(["topic", "create", name, "--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .args(["--partitions", &partitions.to_string()])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "topic {name} created");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP relay on loopback that can be cut and restored: the broker going away and
/// coming back, as its clients see it.
struct Proxy {
    port: u16,
    target: u16,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn new(target: u16) -> Proxy {
        let up = Arc::new(AtomicBool::new(false));
        let port = free_port();
        Proxy { port, target, up, connections: Arc::default(), acceptor: None }
    }

    fn up(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        self.up.store(true, Ordering::SeqCst);
        let (up, connections, target) = (self.up.clone(), self.connections.clone(), self.target);
        self.acceptor = Some(std::thread::spawn(move || {
            while up.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                let mut held = connections.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(server.try_clone().unwrap());
                relay(client.try_clone().unwrap(), server.try_clone().unwrap());
                relay(server, client);
            }
        }));
    }

    /// Closes the listener and every relayed connection.
    fn down(&mut self) {
        self.up.store(false, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.join().unwrap();
        }
        for stream in self.connections.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn relay(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buffer = [0; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buffer) {
            if to.write_all(&buffer[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

/// The test's producer writes one message a record batch: tansu 0.6 answers a fetch that
/// starts inside a batch (where a group's committed offset may fall) with the wrong records.
fn producer(servers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("linger.ms", "5")
        .set("batch.num.messages", "1")
        .create()
        .unwrap()
}

/// Produces each line as one message, round-robin over `partitions`, with a header.
fn produce(servers: &str, topic: &str, partitions: i32, lines: &[Vec<u8>]) {
    let producer = producer(servers);
    for (i, line) in lines.iter().enumerate() {
        // A shipper's header passes through; a forged kubetag-category does not.
        let headers = OwnedHeaders::new()
            .insert(Header { key: "shipper", value: Some("test") })
            .insert(Header { key: "kubetag-category", value: Some("forged") });
        let mut record = BaseRecord::to(topic)
            .payload(&line[..])
            .key("k")
            .partition(i as i32 % partitions)
            .headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("the test's records are delivered");
}

/// One message read back.
#[derive(Debug)]
struct Got {
    topic: String,
    key: String,
    headers: BTreeMap<String, String>,
    /// How many `kubetag-category` headers the message has.
    category_headers: usize,
    payload: Vec<u8>,
}

/// Reads every message of `topics` (one partition each unless said) from the start until
/// `want` are read or `wait` passes.
fn consume(servers: &str, topics: &[(String, i32)], want: usize, wait: Duration) -> Vec<Got> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        // Whole batches in every fetch: tansu 0.6 mishandles one that resumes inside a batch.
        .set("max.partition.fetch.bytes", "104857600")
        .set("fetch.max.bytes", "104857600")
        .set("receive.message.max.bytes", "209715200")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for (topic, partitions) in topics {
        for partition in 0..*partitions {
            list.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
        }
    }
    consumer.assign(&list).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + wait;
    let mut last = Instant::now();
    while got.len() < want && Instant::now() < deadline {
        // Reading everything: a quiet topic is read to its end.
        if want == usize::MAX && last.elapsed() > Duration::from_secs(2) {
            break;
        }
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else { continue };
        last = Instant::now();
        let headers = message.headers().map_or_else(BTreeMap::new, |h| {
            h.iter()
                .map(|h| {
                    let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                    (h.key.to_string(), value.into_owned())
                })
                .collect()
        });
        let category_headers = message
            .headers()
            .map_or(0, |h| h.iter().filter(|h| h.key == "kubetag-category").count());
        got.push(Got {
            category_headers,
            topic: message.topic().to_string(),
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            headers,
            payload: message.payload().unwrap_or_default().to_vec(),
        });
    }
    got
}

/// The group's committed offsets of `topic`, partition by partition.
fn committed(servers: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let offsets = consumer.committed_offsets(list, Duration::from_secs(10)).unwrap();
    (0..partitions)
        .map(|p| match offsets.find_partition(topic, p).unwrap().offset() {
            Offset::Offset(n) => n,
            _ => -1,
        })
        .collect()
}

/// Real journalctl JSON lines: `count` records from kubelet and containerd, one in ten an
/// error of some category, each with its own timestamp to tell them apart.
fn journal_lines(dir: &Path, count: u64) -> Vec<Vec<u8>> {
    let errors = [
        (
            "kubelet.service",
            r#"E1204 09:00:03.000000    2101 kuberuntime_image.go:53] "Failed to pull image" err="rpc error: code = Unknown desc = Error response from daemon: pull access denied for shop/cart, repository does not exist" image="shop/cart:2.1" pod="shop/cart-5f6d""#,
        ),
        (
            "containerd.service",
            r#"time="2026-12-04T09:00:04Z" level=error msg="RunPodSandbox for &PodSandboxMetadata{Name:web-1,Uid:0f1e2d3c,Namespace:default,Attempt:0,} failed, error" error="failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process""#,
        ),
        (
            "kubelet.service",
            r#"E1204 09:00:05.000000    2101 kubelet.go:2412] "Skipping pod synchronization" err="PLEG is not healthy: pleg was last seen active 3m0s ago; threshold is 3m0s""#,
        ),
        (
            "kubelet.service",
            r#"E1204 09:00:06.000000    2101 nestedpendingoperations.go:348] Operation for "{volumeName:kubernetes.io/csi/ebs.csi.aws.com^vol-1 podName: nodeName:}" failed. Error: MountVolume.MountDevice failed for volume "pvc-4d70c760-a4b0-11e9-8376-1866da0e836f" : rpc error: code = DeadlineExceeded desc = context deadline exceeded"#,
        ),
    ];
    let entries: Vec<Entry> = (0..count)
        .map(|seq| match seq % 10 {
            0 => {
                let (unit, message) = errors[(seq / 10) as usize % errors.len()];
                Entry::new(seq, unit, message)
            }
            _ => Entry::new(
                seq,
                "kubelet.service",
                format!("I1204 09:00:00.000000 2101 reconciler.go:224] routine chatter {seq}"),
            ),
        })
        .collect();
    let journal = journal(dir, &entries);
    journalctl_json(&journal, &[])
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// What kubetag's main job makes of the same lines on stdin: the expected output.
fn expected(lines: &[Vec<u8>], args: &[&str]) -> Vec<Vec<u8>> {
    let input: Vec<u8> = lines.iter().flat_map(|l| l.iter().copied().chain([b'\n'])).collect();
    let output = run(args, &input);
    output.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect()
}

fn timestamp(payload: &[u8]) -> String {
    let record: Value = serde_json::from_slice(payload).unwrap();
    record["__REALTIME_TIMESTAMP"].as_str().unwrap().to_string()
}

/// A kubetag process, killed when the test lets go of it (also when the test fails).
struct Running(Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts kubetag with `args`, its stderr (JSON logs, at info unless `args` say) collected.
fn start(args: &[String]) -> (Running, Arc<Mutex<Vec<Value>>>) {
    let level =
        if args.iter().any(|a| a == "--log-level") { &[][..] } else { &["--log-level", "info"] };
    let mut child = kubetag_tool()
        .args(level)
        .args(["--log-format", "json"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (stderr, held) = (child.stderr.take().unwrap(), logs.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let log = serde_json::from_str(&line).unwrap_or(Value::String(line));
            held.lock().unwrap().push(log);
        }
    });
    (Running(child), logs)
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kubetag did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").args([name, &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// Waits up to 20 s for a log line with `message`.
fn wait_log(logs: &Mutex<Vec<Value>>, message: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(log) = messages(logs, message).pop() {
            return log;
        }
        assert!(Instant::now() < deadline, "no {message:?} log");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One scrape of the metrics endpoint.
fn scrape(address: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: kubetag\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn messages(logs: &Mutex<Vec<Value>>, message: &str) -> Vec<Value> {
    let logs = logs.lock().unwrap();
    logs.iter().filter(|l| l["fields"]["message"] == message).cloned().collect()
}

/// Client settings for quick tests: fast fetches, commits and group moves.
const QUICK: &str = "fetch.wait.max.ms=20&auto.commit.interval.ms=200&session.timeout.ms=6000&heartbeat.interval.ms=500";

#[test]
fn a_journal_topic_yields_its_errors_on_category_topics() {
    let _serial = one_at_a_time();
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let (input, prefix, group) = (unique("journal"), unique("kube-errors"), unique("group"));
    broker.create_topic(&input, 2);
    let outputs: Vec<(String, i32)> =
        CATEGORIES.iter().map(|c| (format!("{prefix}.{c}"), 1)).collect();
    for (topic, _) in &outputs {
        broker.create_topic(topic, 1);
    }
    let mut lines = journal_lines(dir.path(), 400);
    let malformed: [&[u8]; 3] = [b"{\"MESSAGE\":", b"not json at all", b"{\"_HOSTNAME\":\"n\"}"];
    lines.splice(100..100, malformed.iter().map(|l| l.to_vec()));
    // The main job's output for the same records is what the topics must hold.
    let compact = lines.clone();
    // A record pretty-printed over several lines is still one record (fields in another
    // order, so records are compared as JSON values).
    let pretty: Value = serde_json::from_slice(&lines[0]).unwrap();
    lines[0] = serde_json::to_vec_pretty(&pretty).unwrap();
    let port = broker.port;
    let servers = format!("127.0.0.1:{port}");
    produce(&servers, &input, 2, &lines);

    let (dead, stats) = (dir.path().join("dead.jsonl"), dir.path().join("stats.json"));
    let copy = dir.path().join("copy.jsonl");
    let args = [
        "--input".into(),
        format!("kafka://127.0.0.1:{port}/{input}?group={group}&until_end=true&{QUICK}"),
        "--output".into(),
        format!("kafka://127.0.0.1:{port}/{prefix}.{{category}}"),
        "--output".into(),
        format!("file:{}", copy.display()),
        "--dead-letter".into(),
        dead.display().to_string(),
        "--stats-file".into(),
        stats.display().to_string(),
    ];
    let (mut child, logs) = start(&args);
    let status = wait_exit(&mut child, Duration::from_secs(90));
    assert!(status.success(), "{:#?}", logs.lock().unwrap());

    // The same records as the main job tags them from stdin, each on its category's topic.
    let want = expected(&compact, &[]);
    assert_eq!(want.len(), 40);
    let got = consume(&servers, &outputs, want.len(), Duration::from_secs(30));
    let values = |payloads: &mut dyn Iterator<Item = &[u8]>| -> Vec<String> {
        let mut values: Vec<String> = payloads
            .map(|p| {
                assert!(!p.contains(&b'\n'), "one line a record");
                serde_json::from_slice::<Value>(p).unwrap().to_string()
            })
            .collect();
        values.sort();
        values
    };
    let want_values = values(&mut want.iter().map(|w| &w[..]));
    let got_values = values(&mut got.iter().map(|g| &g.payload[..]));
    assert!(got_values == want_values, "{} records out, {} expected", got.len(), want.len());
    for message in &got {
        let record: Value = serde_json::from_slice(&message.payload).unwrap();
        let category = record["kubetag"]["category"].as_str().unwrap();
        assert_eq!(message.topic, format!("{prefix}.{category}"));
        assert_eq!(message.headers["kubetag-category"], category);
        assert_eq!(message.category_headers, 1, "the input's forged one is gone");
        assert_eq!(message.headers["shipper"], "test", "input headers pass through");
        let attributes = &record["kubetag"]["attributes"];
        let part = |key: &str| attributes[key].as_str().unwrap_or_default().to_string();
        let key = format!(
            "{}/{}/{}",
            part("k8s.node.name"),
            part("k8s.namespace.name"),
            part("k8s.pod.name")
        );
        assert_eq!(message.key, key);
    }
    assert!(got.iter().any(|g| g.key == "node-1/shop/cart-5f6d"), "a pod's key");

    // The file sink beside it received the same records.
    let copied = std::fs::read(&copy).unwrap();
    let copied = values(&mut copied.split(|&b| b == b'\n').filter(|l| !l.is_empty()));
    assert!(copied == want_values, "the file sink holds what the topics hold");

    // Malformed messages went to the dead-letter file, with where they were.
    let dead = lines_of(&std::fs::read(&dead).unwrap());
    assert_eq!(dead.len(), 3, "{dead:#?}");
    for envelope in &dead {
        assert_eq!(envelope["topic"], input.as_str());
        assert!(envelope["partition"].as_i64().unwrap() < 2);
        assert!(envelope["offset"].as_i64().unwrap() >= 0);
    }
    let stats = common::stats(&stats);
    assert_eq!(stats["records_read"], lines.len() as u64);
    assert_eq!(stats["forwarded"], want.len() as u64);
    assert_eq!(stats["dead_lettered"], 3);

    // Everything was delivered, so the group's offsets are at the end of each partition.
    let per_partition = [lines.len().div_ceil(2) as i64, (lines.len() / 2) as i64];
    assert_eq!(committed(&servers, &group, &input, 2), per_partition);
}

fn lines_of(bytes: &[u8]) -> Vec<Value> {
    common::lines(bytes)
}

/// Waits until `topic` (of `partitions`) holds at least `want` messages.
fn wait_for(
    servers: &str,
    topic: &str,
    partitions: i32,
    want: usize,
    within: Duration,
) -> Vec<Got> {
    let got = consume(servers, &[(topic.to_string(), partitions)], want, within);
    assert!(got.len() >= want, "{} of {want} records on {topic}", got.len());
    got
}

#[test]
fn sigterm_drains_commits_and_a_restart_repeats_nothing() {
    let _serial = one_at_a_time();
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let (input, output, group) = (unique("journal"), unique("out"), unique("group"));
    broker.create_topic(&input, 3);
    broker.create_topic(&output, 1);
    let port = broker.port;
    let servers = format!("127.0.0.1:{port}");
    let url = format!("kafka://127.0.0.1:{port}/{input}?group={group}&{QUICK}");
    let args = |extra: &str| {
        vec![
            "--input".into(),
            format!("{url}{extra}"),
            "--output".into(),
            format!("kafka://127.0.0.1:{port}/{output}"),
            "--stats-file".into(),
            dir.path().join("stats.json").display().to_string(),
        ]
    };

    let mut with_metrics = args("");
    with_metrics.extend(["--metrics".into(), "127.0.0.1:0".into()]);
    let (mut child, logs) = start(&with_metrics);
    let lines = journal_lines(dir.path(), 300);
    produce(&servers, &input, 3, &lines);
    wait_for(&servers, &output, 1, 30, Duration::from_secs(60));

    // The consumer's lag reaches 0 on every partition once everything is read.
    let address = {
        let listening = wait_log(&logs, "metrics listening");
        listening["fields"]["address"].as_str().unwrap().to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = scrape(&address);
        let lags: Vec<&str> =
            metrics.lines().filter(|l| l.starts_with("kubetag_kafka_consumer_lag{")).collect();
        if lags.len() == 3 && lags.iter().all(|l| l.ends_with(" 0")) {
            assert!(metrics.contains("kubetag_records_read_total{source=\"kafka\"} 300"));
            break;
        }
        assert!(Instant::now() < deadline, "lag never 0 on 3 partitions:\n{metrics}");
        std::thread::sleep(Duration::from_millis(200));
    }
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert!(status.success(), "{:#?}", logs.lock().unwrap());
    assert_eq!(committed(&servers, &group, &input, 3), [100, 100, 100]);

    // The same group again: nothing left to read, nothing produced twice.
    let (mut again, logs) = start(&args("&until_end=true"));
    assert!(
        wait_exit(&mut again, Duration::from_secs(60)).success(),
        "{:#?}",
        logs.lock().unwrap()
    );
    assert_eq!(common::stats(&dir.path().join("stats.json"))["records_read"], 0);
    let got = consume(&servers, &[(output.clone(), 1)], 31, Duration::from_secs(3));
    assert_eq!(got.len(), 30);
}

/// Produces `lines` over about `secs` seconds, from a thread.
fn produce_slowly(
    servers: &str,
    topic: &str,
    partitions: i32,
    lines: Vec<Vec<u8>>,
    secs: u64,
) -> std::thread::JoinHandle<()> {
    let (topic, servers) = (topic.to_string(), servers.to_string());
    std::thread::spawn(move || {
        let chunk = lines.len().div_ceil(secs as usize * 10).max(1);
        for part in lines.chunks(chunk) {
            produce(&servers, &topic, partitions, part);
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// Reads `topic` (one partition) again and again until every line's record is there or a
/// minute has passed.
fn read_until_complete(servers: &str, topic: &str, lines: &[Vec<u8>]) -> Vec<Got> {
    let want: BTreeSet<String> = lines.iter().map(|l| timestamp(l)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = consume(servers, &[(topic.to_string(), 1)], usize::MAX, Duration::from_secs(30));
        let seen: BTreeSet<String> = got.iter().map(|g| timestamp(&g.payload)).collect();
        if seen.is_superset(&want) || Instant::now() > deadline {
            return got;
        }
    }
}

/// Checks that every input line's record is in `got`; returns how many came twice or more.
fn every_record_once_or_more(lines: &[Vec<u8>], got: &[Got]) -> usize {
    let want: BTreeSet<String> = lines.iter().map(|l| timestamp(l)).collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for message in got {
        *seen.entry(timestamp(&message.payload)).or_default() += 1;
    }
    let missing: Vec<&String> = want.iter().filter(|t| !seen.contains_key(*t)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} records missing, e.g. {:?}",
        missing.len(),
        want.len(),
        &missing[..missing.len().min(5)]
    );
    seen.values().map(|n| n - 1).sum()
}

#[test]
fn sigkill_mid_stream_then_restart_loses_nothing() {
    let _serial = one_at_a_time();
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let (input, output, group) = (unique("journal"), unique("out"), unique("group"));
    broker.create_topic(&input, 2);
    broker.create_topic(&output, 1);
    let port = broker.port;
    let servers = format!("127.0.0.1:{port}");
    let args = |extra: &str| {
        vec![
            "--input".into(),
            format!(
                "kafka://127.0.0.1:{port}/{input}?group={group}&batch_records=100&{QUICK}{extra}"
            ),
            "--output".into(),
            format!("kafka://127.0.0.1:{port}/{output}"),
            "--unmatched".into(),
            "pass".into(),
            "--threads".into(),
            "2".into(),
        ]
    };
    let lines = journal_lines(dir.path(), 6000);
    let feeder = produce_slowly(&servers, &input, 2, lines.clone(), 6);
    let (mut child, _) = start(&args(""));
    wait_for(&servers, &output, 1, 1000, Duration::from_secs(60));
    signal(&child, "-KILL");
    child.wait().unwrap();
    feeder.join().unwrap();

    let (mut again, logs) = start(&args("&until_end=true"));
    assert!(
        wait_exit(&mut again, Duration::from_secs(90)).success(),
        "{:#?}",
        logs.lock().unwrap()
    );
    let got = consume(&servers, &[(output.clone(), 1)], usize::MAX, Duration::from_secs(5));
    let repeated = every_record_once_or_more(&lines, &got);
    // At most what was in flight: the queues between the stages and one commit interval.
    assert!(repeated < 3000, "{repeated} records repeated");
}

#[test]
fn two_instances_share_a_group_and_one_takes_over_when_the_other_stops() {
    let _serial = one_at_a_time();
    let broker = Broker::start();
    let servers = format!("127.0.0.1:{}", broker.port);
    let (input, output) = (unique("journal"), unique("out"));
    broker.create_topic(&input, 6);
    broker.create_topic(&output, 1);
    group_takeover(&servers, &input, &output, "-TERM");
}

/// librdkafka's mock cluster, on loopback, expires a member that dies without leaving;
/// tansu 0.6 keeps such a member's partitions unassigned, so the crash case runs here.
#[test]
fn a_group_member_killed_mid_stream_is_replaced() {
    let _serial = one_at_a_time();
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let servers = cluster.bootstrap_servers();
    assert!(servers.split(',').all(|s| s.starts_with("127.0.0.1:")), "{servers}");
    let (input, output) = (unique("journal"), unique("out"));
    cluster.create_topic(&input, 6, 1).unwrap();
    cluster.create_topic(&output, 1, 1).unwrap();
    group_takeover(&servers, &input, &output, "-KILL");
}

/// Two instances share `input`'s six partitions; one is stopped with `signal` mid-stream,
/// the other takes its partitions, and the output holds every record.
fn group_takeover(servers: &str, input: &str, output: &str, signal_name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let group = unique("group");
    let args = vec![
        "--input".into(),
        format!("kafka://{servers}/{input}?group={group}&batch_records=50&{QUICK}"),
        "--output".into(),
        format!("kafka://{servers}/{output}"),
        "--unmatched".into(),
        "pass".into(),
        "--threads".into(),
        "1".into(),
    ];
    let lines = journal_lines(dir.path(), 6000);
    let (mut first, first_logs) = start(&args);
    let (mut second, second_logs) = start(&args);
    let feeder = produce_slowly(servers, input, 6, lines.clone(), 8);

    // Both take a share once the group has settled.
    let share = |logs: &Mutex<Vec<Value>>| {
        let assigned = messages(logs, "kafka: partitions assigned");
        assigned.last().and_then(|l| l["fields"]["partitions"].as_u64()).unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (a, b) = (share(&first_logs), share(&second_logs));
        if a > 0 && b > 0 && a + b == 6 {
            break;
        }
        assert!(Instant::now() < deadline, "both members take partitions: {a} and {b}");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for(servers, output, 1, 1000, Duration::from_secs(60));
    signal(&first, signal_name);
    first.wait().unwrap();

    // The survivor takes every partition and the output fills up.
    let deadline = Instant::now() + Duration::from_secs(60);
    while share(&second_logs) != 6 {
        if Instant::now() > deadline {
            let logs = |l: &Mutex<Vec<Value>>| -> Vec<String> {
                l.lock()
                    .unwrap()
                    .iter()
                    .map(|v| format!("{} {}", v["timestamp"], v["fields"]))
                    .collect()
            };
            panic!("the survivor takes over: {:#?} {:#?}", logs(&first_logs), logs(&second_logs));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    feeder.join().unwrap();
    let got = read_until_complete(servers, output, &lines);
    every_record_once_or_more(&lines, &got);
    signal(&second, "-TERM");
    assert!(wait_exit(&mut second, Duration::from_secs(20)).success());
}

#[test]
fn a_broker_away_at_start_and_mid_stream_is_waited_for() {
    let _serial = one_at_a_time();
    let port = free_port();
    let mut proxy = Proxy::new(port);
    let dir = tempfile::tempdir().unwrap();
    let (input, output, group) = (unique("journal"), unique("out"), unique("group"));
    let args = vec![
        "--input".into(),
        format!("kafka://127.0.0.1:{}/{input}?group={group}&{QUICK}", proxy.port),
        "--output".into(),
        format!("kafka://127.0.0.1:{}/{output}", proxy.port),
        "--unmatched".into(),
        "pass".into(),
    ];

    // Not up at start: kubetag waits and says so, once, not once a record.
    let (mut child, logs) = start(&args);
    std::thread::sleep(Duration::from_secs(3));
    assert!(child.try_wait().unwrap().is_none(), "kubetag waits for the brokers");
    let broker = Broker::start_at(port, proxy.port);
    broker.create_topic(&input, 2);
    broker.create_topic(&output, 1);
    proxy.up();
    let proxied = format!("127.0.0.1:{}", proxy.port);
    let lines = journal_lines(dir.path(), 2000);
    produce(&proxied, &input, 2, &lines[..1000]);
    let got = consume(&proxied, &[(output.clone(), 1)], 200, Duration::from_secs(90));
    assert!(got.len() >= 200, "{} of 200 records out: {:#?}", got.len(), logs.lock().unwrap());

    // Away mid-stream, back a few seconds later.
    proxy.down();
    std::thread::sleep(Duration::from_secs(4));
    proxy.up();
    produce(&proxied, &input, 2, &lines[1000..]);
    let got = read_until_complete(&proxied, &output, &lines);
    signal(&child, "-TERM");
    assert!(
        wait_exit(&mut child, Duration::from_secs(30)).success(),
        "{:#?}",
        logs.lock().unwrap()
    );
    every_record_once_or_more(&lines, &got);

    let waiting = messages(&logs, "kafka: brokers unreachable, waiting");
    assert!(!waiting.is_empty(), "the outage is logged");
    assert!(waiting.len() <= 6, "logged per outage, not per record: {}", waiting.len());
    assert!(!messages(&logs, "kafka: brokers reachable again").is_empty());
}

#[test]
fn kafka_settings_are_checked_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    let table = |property: &str| {
        format!(
            "[sources.topics]\ntype = \"kafka\"\nbrokers = \"127.0.0.1:9\"\ntopics = [\"journal\"]\n\
             group = \"g\"\n[sources.topics.properties]\n\"fetch.wait.max.ms\" = \"20\"\n\
             [sinks.errors]\ntype = \"kafka\"\nbrokers = \"127.0.0.1:9\"\n\
             topic = \"kube-errors.{{category}}\"\n[sinks.errors.properties]\n{property}\n"
        )
    };
    std::fs::write(&config, table("\"linger.ms\" = \"10\"")).unwrap();
    let output = kubetag_tool().args(["check", "--config"]).arg(&config).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    std::fs::write(&config, table("\"lingr.ms\" = \"10\"")).unwrap();
    let output = kubetag_tool().args(["check", "--config"]).arg(&config).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("lingr.ms"));

    let bad = [
        ("--input", "kafka://127.0.0.1:9/journal", "group"),
        ("--input", "kafka://127.0.0.1:9/journal?group=g&until_end=maybe", "until_end"),
        ("--output", "kafka://127.0.0.1:9/kube-errors.{categroy}", "unknown field"),
        ("--input", "kafka://127.0.0.1:9/a,b?group=g&until_end=true", "one topic"),
        ("--output", "kafka://nowhere/t", "HOST:PORT"),
    ];
    for (flag, url, says) in bad {
        let output = kubetag().args([flag, url]).stdin(Stdio::null()).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{url}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{url}: {stderr}");
    }
}

/// A file sink writing into a pipe nobody reads for longer than the group's poll interval:
/// the source pauses its partitions and keeps polling, so it stays in the group, and
/// everything arrives once the pipe is read. Each batch of records makes more than one part
/// of output and the sink's queue holds one batch, so the worker too waits for the
/// collector, and the workers' queue fills. On the mock cluster: tansu 0.6 returns nothing
/// to a fetch that starts inside a record batch, which is where a paused partition resumes.
#[test]
fn a_stalled_sink_pauses_the_partitions_and_the_member_stays_in_its_group() {
    let _serial = one_at_a_time();
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let servers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (input, group) = (unique("journal"), unique("group"));
    cluster.create_topic(&input, 2, 1).unwrap();
    let lines = journal_lines(dir.path(), 3000);
    produce(&servers, &input, 2, &lines);

    let fifo = dir.path().join("out.pipe");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let stall = Duration::from_secs(12);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut pipe = std::fs::File::open(&fifo).unwrap();
            std::thread::sleep(stall);
            let mut out = Vec::new();
            pipe.read_to_end(&mut out).unwrap();
            out
        })
    };
    let properties = "max.poll.interval.ms=7000&session.timeout.ms=6000&heartbeat.interval.ms=500";
    let config = dir.path().join("pipeline.toml");
    std::fs::write(&config, "[limits]\nqueue_batches = 1\n").unwrap();
    let args = vec![
        "--config".into(),
        config.display().to_string(),
        "--input".into(),
        format!(
            "kafka://{servers}/{input}?group={group}&until_end=true&batch_records=500&{properties}"
        ),
        "--output".into(),
        format!("file:{}", fifo.display()),
        "--unmatched".into(),
        "pass".into(),
        "--threads".into(),
        "1".into(),
    ];
    let started = Instant::now();
    let (mut child, logs) = start(&args);
    assert!(
        wait_exit(&mut child, Duration::from_secs(90)).success(),
        "{:#?}",
        logs.lock().unwrap()
    );
    assert!(started.elapsed() >= stall, "the sink was stalled");
    let out = reader.join().unwrap();

    let got: Vec<String> = lines_of(&out)
        .iter()
        .map(|r| r["__REALTIME_TIMESTAMP"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = lines.iter().map(|l| timestamp(l)).collect();
    let (mut sorted_got, mut sorted_want) = (got.clone(), want.clone());
    sorted_got.sort();
    sorted_want.sort();
    assert_eq!(sorted_got, sorted_want, "every record once, none repeated");
    // One assignment, and no revocation but the member leaving at the end.
    let moves = |m: &str| messages(&logs, m).len();
    assert_eq!(moves("kafka: partitions assigned"), 1, "the member kept its partitions");
    assert!(moves("kafka: partitions revoked") <= 1);
}

/// A stop while the sink takes nothing and every batch of records makes several parts of
/// output: the workers wait for the collector, the source for room among the workers'
/// jobs. The run gives up at the shutdown timeout and exits 1, as the README says.
#[test]
fn a_stop_with_a_stalled_sink_ends_at_the_shutdown_timeout() {
    let _serial = one_at_a_time();
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let servers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (input, group) = (unique("journal"), unique("group"));
    cluster.create_topic(&input, 1, 1).unwrap();
    // More batches than the pipeline's queues hold.
    produce(&servers, &input, 1, &journal_lines(dir.path(), 10_000));

    // A pipe whose reader never reads: the sink's writes stop once it holds 64 KiB.
    let fifo = dir.path().join("out.pipe");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let sink = format!("file:{}", fifo.display());
    let held = std::thread::spawn(move || {
        let pipe = std::fs::File::open(&fifo).unwrap();
        std::thread::sleep(Duration::from_secs(60));
        drop(pipe);
    });
    let config = dir.path().join("pipeline.toml");
    let limits = "[run]\nshutdown_timeout_secs = 1\n[limits]\nqueue_batches = 1\n";
    std::fs::write(&config, limits).unwrap();
    let args: Vec<String> = [
        "--config",
        config.to_str().unwrap(),
        "--input",
        &format!("kafka://{servers}/{input}?group={group}&batch_records=500&{QUICK}"),
        "--output",
        &sink,
        "--unmatched",
        "pass",
        "--log-level",
        "debug",
    ]
    .map(String::from)
    .to_vec();
    let (mut child, logs) = start(&args);
    wait_log(&logs, "kafka: sinks are slow, partitions paused");

    signal(&child, "-TERM");
    let started = Instant::now();
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "undelivered records fail the run");
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    drop(held);
}
