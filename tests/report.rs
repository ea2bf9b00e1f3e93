//! `kubetag report` end to end: a journal with mixed problems written by
//! systemd-journal-remote, read back with `journalctl -o json`, diagnosed by the real binary
//! and compared in every format with the expected files in `tests/report/`.
//!
//! After a deliberate change to the report, `BLESS_REPORT=1 cargo test --test report`
//! rewrites the expected files; review their diff before committing it.

mod common;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::OnceLock;

use common::*;

/// 2026-12-04 09:00:00 UTC, in microseconds.
const T0: u64 = 1_796_374_800_000_000;

/// An entry `seconds` after [`T0`] from `unit` on `host`; an empty unit is the kernel.
fn at(seconds: u64, host: &str, unit: &str, message: &str) -> Entry {
    let mut entry = Entry::new(seconds, unit, message);
    for (name, value) in &mut entry.0 {
        match name.as_str() {
            "__REALTIME_TIMESTAMP" => *value = (T0 + seconds * 1_000_000).to_string().into(),
            "_HOSTNAME" => *value = host.into(),
            _ => {}
        }
    }
    if unit.is_empty() {
        entry.0.retain(|(name, _)| name != "_SYSTEMD_UNIT");
        entry.set("_TRANSPORT", "kernel").set("SYSLOG_IDENTIFIER", "kernel");
    }
    entry
}

/// One line of `tests/report/node.jsonl`.
#[derive(serde::Deserialize)]
struct Line {
    seconds: u64,
    host: String,
    unit: String,
    message: String,
}

/// A node's hour, from `tests/report/node.jsonl`: an expired client certificate, then
/// registration failing; containerd down, then PLEG and CNI failing; pulls of a missing
/// image; an OOM kill, then a crash loop; image GC failing, then an eviction; routine
/// chatter in between.
fn node_journal() -> Vec<Entry> {
    let text = std::fs::read_to_string(root().join("tests/report/node.jsonl"))
        .expect("tests/report/node.jsonl is readable");
    text.lines()
        .map(|line| serde_json::from_str::<Line>(line).expect("a node.jsonl line"))
        .map(|l| at(l.seconds, &l.host, &l.unit, &l.message))
        .collect()
}

/// `journalctl -o json` of [`node_journal`], with three broken lines spliced in after the
/// third record as a damaged dump would have them.
fn input() -> &'static [u8] {
    static INPUT: OnceLock<Vec<u8>> = OnceLock::new();
    INPUT.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let json = journalctl_json(&journal(dir.path(), &node_journal()), &[]);
        let mut lines: Vec<&[u8]> = json.split_inclusive(|&b| b == b'\n').collect();
        let broken: [&[u8]; 3] = [b"this is not json\n", b"\n", b"{\"MESSAGE\":\"Failed to pull\n"];
        lines.splice(3..3, broken);
        lines.concat()
    })
}

/// Runs `kubetag report ARGS`, feeding `stdin`.
fn report(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = kubetag_tool()
        .arg("report")
        .args(args)
        .env_remove("NO_COLOR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubetag starts");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    let stdin = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = pipe.write_all(&stdin);
    });
    let output = child.wait_with_output().expect("kubetag runs");
    feeder.join().expect("the feeder thread ends");
    output
}

fn stdout(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    String::from_utf8(output.stdout.clone()).expect("the report is UTF-8")
}

/// The input's size depends on the fields this systemd's journalctl adds, so it is masked
/// before comparing: in JSON only where it equals the input's length, which checks it.
fn mask_size(got: &str) -> String {
    let bytes = format!("\"bytes\": {},", input().len());
    let got = got.replacen(&bytes, "\"bytes\": \"<input size>\",", 1);
    let Some(start) = got.find(" records (").map(|at| at + " records (".len()) else {
        return got;
    };
    match got[start..].find(')') {
        Some(len) => format!("{}<input size>{}", &got[..start], &got[start + len..]),
        None => got,
    }
}

/// Compares with `tests/report/NAME`, or rewrites it under `BLESS_REPORT=1`.
fn expect(name: &str, got: &str) {
    let got = mask_size(got);
    let path: PathBuf = root().join("tests/report").join(name);
    if std::env::var_os("BLESS_REPORT").is_some() {
        std::fs::write(&path, got).expect("the expected file is writable");
        return;
    }
    let want = std::fs::read_to_string(&path).expect("the expected file exists");
    if got != want {
        let first = got
            .lines()
            .zip(want.lines())
            .position(|(g, w)| g != w)
            .unwrap_or(got.lines().count().min(want.lines().count()));
        panic!(
            "{name} differs from line {}:\n got: {:?}\nwant: {:?}\n(BLESS_REPORT=1 rewrites it)",
            first + 1,
            got.lines().nth(first),
            want.lines().nth(first)
        );
    }
}

#[test]
fn text_report_matches_expected() {
    let text = stdout(&report(&[], input()));
    assert!(!text.contains('\x1b'), "no colour when stdout is not a terminal");
    expect("expected.txt", &text);
}

#[test]
fn markdown_report_matches_expected() {
    expect("expected.md", &stdout(&report(&["--format", "markdown"], input())));
}

#[test]
fn json_report_matches_expected() {
    expect("expected.json", &stdout(&report(&["--format", "json"], input())));
}

#[test]
fn json_report_adds_up_and_names_the_root_causes() {
    let value: serde_json::Value =
        serde_json::from_str(&stdout(&report(&["--format=json"], input()))).expect("JSON");
    let n = |key: &str| value[key].as_u64().expect("a count");
    assert_eq!(n("records"), node_journal().len() as u64 + 3);
    assert_eq!(n("tagged") + n("unmatched") + n("malformed"), n("records"));
    assert_eq!(n("malformed"), 3);

    let pairs: Vec<(&str, &str)> = value["root_causes"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| (c["earlier"].as_str().unwrap(), c["later"].as_str().unwrap()))
        .collect();
    let want = [
        ("certificate", "node_registration"),
        ("container_runtime", "pleg"),
        ("container_runtime", "cni_network"),
        ("image_gc", "eviction"),
        ("oom", "crashloop"),
    ];
    assert_eq!(pairs, want);

    let categories = value["categories"].as_array().expect("a list");
    let severities: Vec<&str> =
        categories.iter().map(|c| c["severity"].as_str().unwrap()).collect();
    let mut sorted = severities.clone();
    let rank = |s: &&str| ["critical", "error", "warning", "info"].iter().position(|r| r == s);
    sorted.sort_by_key(rank);
    assert_eq!(severities, sorted, "most severe first");
    let image_pull =
        categories.iter().find(|c| c["category"] == "image_pull").expect("image pulls were found");
    let commands = image_pull["commands"].as_array().expect("a list");
    assert!(commands.contains(&"crictl pull ghcr.io/acme/billing:v3.14".into()), "{commands:?}");
}

#[test]
fn the_report_does_not_depend_on_threads_or_where_input_comes_from() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("node.json");
    std::fs::write(&path, input()).expect("the input is written");
    let path = path.to_str().expect("a UTF-8 path");
    let stdin = stdout(&report(&["--threads", "1"], input()));
    let file = stdout(&report(&["--threads", "4", path], b""));
    let url = format!("file:{path}");
    let split = stdout(&report(&["--threads", "3", &url], b""));
    assert_eq!(stdin, file);
    assert_eq!(stdin, split);
}

#[test]
fn distinct_values_past_the_cap_are_counted_not_listed() {
    let entries: Vec<Entry> = (0..25)
        .map(|i| {
            let header = "E1204 09:00:00.000000    2101 kuberuntime_image.go:53]";
            let fields = format!(r#"image="ghcr.io/acme/app:{i}" pod="shop/app-{i}""#);
            let message = format!(r#"{header} "Failed to pull image" err="not found" {fields}"#);
            at(i, "node-1", "kubelet.service", &message)
        })
        .collect();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let json = journalctl_json(&journal(dir.path(), &entries), &[]);
    let value: serde_json::Value =
        serde_json::from_str(&stdout(&report(&["--format", "json"], &json))).expect("JSON");
    let category = &value["categories"][0];
    assert_eq!(category["count"], 25);
    let pods = category["affected"]
        .as_array()
        .expect("a list")
        .iter()
        .find(|a| a["kind"] == "pods")
        .expect("pods are listed");
    assert_eq!(pods["values"].as_array().map(Vec::len), Some(20));
    assert_eq!(pods["values"][0]["value"], "shop/app-0");
    assert_eq!(pods["more"], 5);
    let pull_commands = category["commands"]
        .as_array()
        .expect("a list")
        .iter()
        .filter(|c| c.as_str().is_some_and(|c| c.starts_with("crictl pull")))
        .count();
    assert_eq!(pull_commands, 3, "a few commands per template, not one per image");
}

#[test]
fn empty_input_missing_files_and_bad_flags() {
    let empty = stdout(&report(&[], b""));
    assert!(empty.contains("no kubelet or container-runtime errors found"), "{empty}");

    let missing = report(&["/nonexistent/journal.json"], b"");
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("/nonexistent/journal.json"), "{stderr}");

    let bad = report(&["--format", "yaml"], b"");
    assert_eq!(bad.status.code(), Some(2));
}
