//! The journal source: kubetag runs journalctl itself over real journal files, and its
//! checkpoint survives clean restarts and SIGKILL without loss.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn config(dir: &Path, journal: &Path, follow: bool, extra: &str) -> std::path::PathBuf {
    let path = dir.join("pipeline.toml");
    let text = format!(
        "[sources.node]\ntype = \"journal\"\nfiles = [{:?}]\nunits = []\nfollow = {follow}\n\
         state_file = {:?}\ncheckpoint_interval_ms = 50\n{extra}",
        journal.display().to_string(),
        dir.join("state.json").display().to_string(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn pull_error(seq: u64) -> Entry {
    Entry::new(
        seq,
        "kubelet.service",
        format!("Failed to pull image \"app:{seq}\": rpc error: code = NotFound"),
    )
}

fn chatter(seq: u64) -> Entry {
    Entry::new(seq, "kubelet.service", format!("Started container {seq}"))
}

#[test]
fn records_look_like_journalctl_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut entries = Vec::new();
    let mut multi = Entry::new(1, "containerd.service", "first");
    multi.set("MESSAGE", "Failed to pull image \"m:1\": rpc error: code = NotFound");
    entries.push(multi);
    entries.push(Entry::new(
        2,
        "kubelet.service",
        b"Failed to pull image \"b:1\" \x01\xff".to_vec(),
    ));
    entries.push(Entry::new(
        3,
        "kubelet.service",
        "multi\nline\twith tab: Failed to pull image \"c:1\"",
    ));
    entries.push(Entry::new(
        4,
        "kubelet.service",
        format!("Failed to pull image \"d:1\" {}", "x".repeat(6000)),
    ));
    entries.push(chatter(5));
    let journal = journal(dir.path(), &entries);

    let piped = run(&["--unmatched", "pass"], &journalctl_json(&journal, &["--all"]));
    let cfg = config(dir.path(), &journal, false, "");
    let direct = run(&["--config", cfg.to_str().unwrap(), "--unmatched", "pass"], b"");
    assert!(direct.status.success(), "{}", String::from_utf8_lossy(&direct.stderr));
    assert_eq!(lines(&direct.stdout), lines(&piped.stdout), "same fields, same output");
    assert_eq!(lines(&direct.stdout).len(), 5);
}

#[test]
fn a_clean_restart_goes_on_after_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let first: Vec<Entry> =
        (1..=30).map(|n| if n % 3 == 0 { pull_error(n) } else { chatter(n) }).collect();
    let journal = journal(dir.path(), &first);
    let cfg = config(dir.path(), &journal, false, "");
    let args = ["--config", cfg.to_str().unwrap()];

    let output = run(&args, b"");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(lines(&output.stdout).len(), 10);
    assert!(std::fs::read_to_string(dir.path().join("state.json")).unwrap().contains("cursor"));

    let output = run(&args, b"");
    assert!(lines(&output.stdout).is_empty(), "nothing is repeated");

    // New entries appended to the same journal file are read, and only they.
    let more: Vec<Entry> = (31..=36).map(pull_error).collect();
    common::journal_append(&journal, &more);
    let output = run(&args, b"");
    let images: Vec<String> = lines(&output.stdout)
        .iter()
        .map(|r| r["kubetag"]["attributes"]["container.image.name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(images, (31..=36).map(|n| format!("app:{n}")).collect::<Vec<_>>());
}

#[test]
fn sigkill_loses_nothing_and_repeats_little() {
    let dir = tempfile::tempdir().unwrap();
    let total = 40_000;
    let entries: Vec<Entry> =
        (1..=total).map(|n| if n % 4 == 0 { pull_error(n) } else { chatter(n) }).collect();
    let journal = journal(dir.path(), &entries);
    let out = dir.path().join("out.jsonl");
    let cfg = config(
        dir.path(),
        &journal,
        true,
        &format!("[sinks.out]\ntype = \"file\"\npath = {:?}\n", out.display().to_string()),
    );

    // Follow mode never ends by itself: kill it once some output is there.
    let mut child = kubetag()
        .args(["--config", cfg.to_str().unwrap(), "--threads", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::fs::metadata(&out).map_or(0, |m| m.len()) < 200_000 {
        assert!(started.elapsed() < Duration::from_secs(60), "kubetag writes output");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = count_images(&out);
    assert!(before.len() < (total / 4) as usize, "killed mid-stream: {}", before.len());

    // Restarted, it reads to the end of the journal from its checkpoint.
    let cfg = config(
        dir.path(),
        &journal,
        false,
        &format!("[sinks.out]\ntype = \"file\"\npath = {:?}\n", out.display().to_string()),
    );
    let output = kubetag().args(["--config", cfg.to_str().unwrap()]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let after = count_images(&out);
    for n in (4..=total).step_by(4) {
        assert!(after.contains_key(&format!("app:{n}")), "app:{n} was lost");
    }
    let repeated: u64 = after.values().map(|&c| c - 1).sum();
    assert!(repeated < 10_000, "duplicates stay within the in-flight window: {repeated}");
}

fn count_images(path: &Path) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for record in lines(&std::fs::read(path).unwrap_or_default()) {
        let image =
            record["kubetag"]["attributes"]["container.image.name"].as_str().unwrap().to_string();
        *counts.entry(image).or_insert(0) += 1;
    }
    counts
}

#[test]
fn journalctl_that_dies_is_restarted_after_the_last_entry() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<Entry> = (1..=20).map(pull_error).collect();
    let journal = journal(dir.path(), &entries);
    // A journalctl that stops after five entries the first time it runs.
    let wrapper = dir.path().join("journalctl");
    let marker = dir.path().join("ran-once");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ ! -e {m} ]; then touch {m}; timeout 2 journalctl \"$@\" | awk 'BEGIN{{RS=\"\";ORS=\"\\n\\n\"}} {{print}} NR==5 {{exit}}'; exit 1; fi\nexec journalctl \"$@\"\n",
            m = marker.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod").arg("+x").arg(&wrapper).status().unwrap();
    let extra = format!("journalctl = {:?}\n", wrapper.display().to_string());
    let cfg = config(dir.path(), &journal, true, &extra);

    let mut child = kubetag()
        .args(["--config", cfg.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let got: Vec<String> = (0..20)
        .map_while(|_| lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).ok())
        .collect();
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    let images: Vec<String> = got
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|r| r["kubetag"]["attributes"]["container.image.name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        images,
        (1..=20).map(|n| format!("app:{n}")).collect::<Vec<_>>(),
        "each entry once, in order"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.matches("restarting").count(), 1, "{stderr}");
}

#[test]
fn report_reads_export_format_and_the_journal_itself() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<Entry> =
        (1..=12).map(|n| if n % 3 == 0 { pull_error(n) } else { chatter(n) }).collect();
    let journal = journal(dir.path(), &entries);
    let report = |args: &[&str], input: &[u8]| {
        let mut child = kubetag_tool()
            .arg("report")
            .args(["--format", "json"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(input).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success());
        let mut value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        // Byte counts differ between the two formats; what was found must not.
        value.as_object_mut().unwrap().remove("bytes");
        value
    };
    let from_json = report(&[], &journalctl_json(&journal, &[]));
    let export = std::process::Command::new("journalctl")
        .arg("--file")
        .arg(&journal)
        .args(["-o", "export"])
        .output()
        .unwrap()
        .stdout;
    let from_export = report(&[], &export);
    assert_eq!(from_export, from_json);
    assert_eq!(from_json["tagged"], 4);
    let directory = dir.path().to_str().unwrap();
    let from_journal = report(&["--journal", "--directory", directory, "--unit", "kubelet"], b"");
    assert_eq!(from_journal["tagged"], 4);

    // A journalctl that fails is not a clean journal.
    let missing = dir.path().join("missing");
    let output = kubetag_tool()
        .args(["report", "--journal", "--directory"])
        .arg(&missing)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("journalctl failed"));
}
