//! kubetag as a sidecar: records from Fluent Bit and Vector, in their own field shapes, over
//! real TCP connections, tagged exactly like journalctl's.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const PULL: &str = r#"E1204 09:00:03.000000    2101 remote_image.go:180] "PullImage from image service failed" err="rpc error: code = NotFound desc = failed to pull and unpack image" image="shop/cart:2.1" pod="shop/cart-5f6d""#;

/// Starts kubetag with a TCP source and `extra` config; returns it, its address and its
/// stdout lines.
fn listen(extra: &str) -> (Child, String, Receiver<String>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    let text = format!("[sources.peer]\ntype = \"tcp\"\naddress = \"127.0.0.1:0\"\n{extra}");
    std::fs::write(&config, text).unwrap();
    let mut child = kubetag_tool()
        .args(["--config", config.to_str().unwrap(), "--log-level", "info", "--log-format", "json"])
        .arg("--stats-file")
        .arg(dir.path().join("stats.json"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Readiness: the "listening" log line names the bound address.
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines();
    let address = loop {
        let line = lines.next().expect("kubetag logs that it listens").unwrap();
        let log: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if log["fields"]["message"] == "listening" {
            break log["fields"]["address"].as_str().unwrap().to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let out = lines_of(child.stdout.take().unwrap());
    (child, address, out, dir)
}

fn next(out: &Receiver<String>) -> Value {
    let line = out.recv_timeout(Duration::from_secs(20)).expect("a tagged record");
    serde_json::from_str(&line).unwrap()
}

fn stop(mut child: Child, dir: &tempfile::TempDir) -> Value {
    std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(child.wait().unwrap().success());
    common::stats(&dir.path().join("stats.json"))
}

/// What journalctl's own record gets, to compare the shippers' records with.
fn journald_tag() -> Value {
    let record = json!({"_SYSTEMD_UNIT": "kubelet.service", "_HOSTNAME": "node-1",
        "__REALTIME_TIMESTAMP": "1796374803000000", "MESSAGE": PULL});
    let output = run(&[], format!("{record}\n").as_bytes());
    lines(&output.stdout).remove(0)["kubetag"].clone()
}

fn send(address: &str, records: &[Value]) {
    let mut stream = TcpStream::connect(address).unwrap();
    for record in records {
        writeln!(stream, "{record}").unwrap();
    }
}

#[test]
fn fluent_bit_records_are_tagged_like_journalctls() {
    let want = journald_tag();
    let (child, address, out, dir) = listen("[tag]\nshape = \"fluent-bit\"\n");
    // Fluent Bit's tcp output, json_lines: its systemd input as is, with Lowercase On, and
    // with Strip_Underscores On; the time key is `date`, epoch seconds.
    let records = [
        json!({"date": 1796374803.0, "_SYSTEMD_UNIT": "kubelet.service", "_HOSTNAME": "node-1", "MESSAGE": PULL}),
        json!({"date": 1796374803.0, "_systemd_unit": "kubelet.service", "_hostname": "node-1", "message": PULL}),
        json!({"date": 1796374803.0, "SYSTEMD_UNIT": "kubelet.service", "HOSTNAME": "node-1", "MESSAGE": PULL}),
    ];
    send(&address, &records);
    for record in &records {
        let got = next(&out);
        for key in ["category", "rule", "component", "attributes", "timestamp"] {
            assert_eq!(got["kubetag"][key], want[key], "{key} of {record}");
        }
        let mut original = got.clone();
        original.as_object_mut().unwrap().remove("kubetag");
        assert_eq!(&original, record, "forwarded in its own shape");
    }
    stop(child, &dir);
}

#[test]
fn vector_records_are_tagged_like_journalctls() {
    let want = journald_tag();
    let (child, address, out, dir) = listen("[tag]\nshape = \"vector\"\n");
    // Vector's journald source through its socket sink: message, host, timestamp, and the
    // journald fields beside them.
    let record = json!({"message": PULL, "host": "node-1", "timestamp": "2026-12-04T09:00:03Z",
        "source_type": "journald", "_SYSTEMD_UNIT": "kubelet.service", "PRIORITY": "3"});
    send(&address, std::slice::from_ref(&record));
    let got = next(&out);
    for key in ["category", "rule", "component", "attributes", "timestamp"] {
        assert_eq!(got["kubetag"][key], want[key], "{key}");
    }
    stop(child, &dir);
}

#[test]
fn a_long_line_is_skipped_and_the_connection_goes_on() {
    let (child, address, out, dir) = listen("[limits]\nmax_line_bytes = 65536\n");
    let mut stream = TcpStream::connect(&address).unwrap();
    let long = format!("{{\"MESSAGE\":\"{}\"}}\n", "z".repeat(1 << 20));
    stream.write_all(long.as_bytes()).unwrap();
    writeln!(stream, "{}", json!({"MESSAGE": PULL})).unwrap();
    assert_eq!(next(&out)["kubetag"]["category"], "image_pull");
    drop(stream);
    let stats = stop(child, &dir);
    assert_eq!(stats["malformed_by_reason"]["too_long"], 1);
}

#[test]
fn idle_peers_are_disconnected_and_connections_capped() {
    // Keys right after the source's address belong to its table.
    let (child, address, out, dir) = listen("idle_timeout_secs = 1\nmax_connections = 1\n");
    let mut idle = TcpStream::connect(&address).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // A second peer waits in the backlog while the first holds the only slot.
    let mut waiting = TcpStream::connect(&address).unwrap();
    writeln!(waiting, "{}", json!({"MESSAGE": PULL})).unwrap();
    // The idle peer is closed by kubetag: its read ends instead of timing out.
    let n = idle.read(&mut [0u8; 16]).expect("closed by kubetag, not timed out");
    assert_eq!(n, 0);
    assert_eq!(next(&out)["kubetag"]["category"], "image_pull", "the waiting peer is served");
    drop(waiting);
    stop(child, &dir);
}

#[test]
fn tls_peers_are_served_and_plain_ones_refused() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=kubetag",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let extra = format!(
        "tls_cert_file = {:?}\ntls_key_file = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let (child, address, out, dir) = listen(&extra);

    // A plain peer gets nothing through.
    let mut plain = TcpStream::connect(&address).unwrap();
    writeln!(plain, "{}", json!({"MESSAGE": PULL})).unwrap();
    drop(plain);

    // A TLS peer that trusts the certificate is served.
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&cert).unwrap()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, TcpStream::connect(&address).unwrap());
    writeln!(tls, "{}", json!({"MESSAGE": PULL})).unwrap();
    tls.flush().unwrap();
    assert_eq!(next(&out)["kubetag"]["category"], "image_pull");
    tls.conn.send_close_notify();
    let _ = tls.flush();
    drop(tls);
    let stats = stop(child, &dir);
    assert_eq!(stats["tagged"], 1, "only the TLS peer's record: {stats}");
}

#[test]
fn a_peer_trickling_a_line_is_cut_off_and_its_slot_freed() {
    let extra = "idle_timeout_secs = 30\nline_timeout_secs = 1\nmax_connections = 1\n";
    let (child, address, out, dir) = listen(extra);
    let mut slow = TcpStream::connect(&address).unwrap();
    let mut waiting = TcpStream::connect(&address).unwrap();
    writeln!(waiting, "{}", json!({"MESSAGE": PULL})).unwrap();

    // One byte every 200 ms: never idle for a second, but the line never ends in time.
    let started = std::time::Instant::now();
    let line = format!("{}\n", json!({"MESSAGE": PULL}));
    let mut cut = false;
    for byte in line.as_bytes().iter().cycle().take(200) {
        if slow.write_all(&[*byte]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(cut, "the trickling peer was never disconnected");
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    assert_eq!(next(&out)["kubetag"]["category"], "image_pull", "the waiting peer is served");
    drop(waiting);
    stop(child, &dir);
}

#[test]
fn a_tls_handshake_to_a_plain_listener_is_refused() {
    let (child, address, _out, dir) = listen("");
    use rustls::pki_types::ServerName;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let socket = TcpStream::connect(&address).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, socket);
    // The handshake fails at once: kubetag closes instead of waiting for a line.
    let refused = tls.write_all(b"x\n").and_then(|()| tls.flush());
    let mut buf = [0u8; 16];
    let read = tls.read(&mut buf);
    assert!(refused.is_err() || read.is_err() || read.is_ok_and(|n| n == 0));
    drop(tls);
    let stats = stop(child, &dir);
    assert_eq!(stats["records_read"], 0, "no byte of the handshake is a record: {stats}");
}
