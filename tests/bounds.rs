//! Bounds a run keeps whatever its input and its reader do: memory when every small record
//! becomes a long tagged line and the reader is slow, and the end of a run whose output
//! was closed while its input is idle.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{kubetag, kubetag_tool, spawn_piped};

const PLEG: &[u8] =
    b"{\"_SYSTEMD_UNIT\":\"kubelet.service\",\"MESSAGE\":\"PLEG is not healthy\"}\n";

/// The peak resident memory of a running process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Waits for `child` to exit, at most `limit`.
fn exit_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    None
}

#[test]
fn memory_stays_bounded_when_small_records_become_long_lines() {
    // 70-byte records, each forwarded as a tagged line some twenty times longer: 2.8 MB
    // of input make 60 MB of output.
    const RECORDS: usize = 40_000;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("storm.jsonl");
    std::fs::write(&input, PLEG.repeat(RECORDS)).unwrap();

    let mut child = kubetag()
        .args(["-q", "--threads", "2"])
        .arg(&input)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    // A reader slower than the pipeline: every queue behind it fills.
    let mut buffer = vec![0; 64 * 1024];
    let (mut peak, mut lines) = (0, 0);
    loop {
        let n = stdout.read(&mut buffer).unwrap();
        if n == 0 {
            break;
        }
        lines += buffer[..n].iter().filter(|&&b| b == b'\n').count();
        peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
        std::thread::sleep(Duration::from_micros(300));
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(lines, RECORDS);
    assert!(peak > 0, "no peak RSS read");
    assert!(peak < 48 * 1024, "peak RSS {peak} KiB");
}

#[test]
fn a_closed_output_ends_a_run_whose_input_is_idle() {
    let mut child = spawn_piped(kubetag().arg("-q"), Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdin.write_all(PLEG).unwrap();
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("\"kubetag\""), "{first}");

    // The reader had enough (`| head -1`); the next tagged line finds the pipe closed,
    // while the input stays open and idle.
    drop(stdout);
    stdin.write_all(PLEG).unwrap();
    let status = exit_within(&mut child, Duration::from_secs(10));
    drop(stdin);
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?} {stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn a_stop_ends_a_run_that_waits_for_a_fifos_writer() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("journal.fifo");
    mkfifo(&fifo);
    let mut child =
        kubetag_tool().arg(&fifo).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    // Started (signals are watched) and no writer has come: the reader waits in its open.
    let mut line = String::new();
    while !line.contains("started") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "kubetag ended before it started");
    }
    terminate(&child);
    let status = exit_within(&mut child, Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// Sends SIGTERM to `child`.
fn terminate(child: &Child) {
    let pid = child.id().to_string();
    let kill = std::process::Command::new("kill").args(["-TERM", &pid]).status();
    assert!(kill.unwrap().success());
}

/// Waits for a run to exit 1 within 10 s; its stderr and its stats file.
fn failed_run(child: &mut Child, stats: &std::path::Path) -> (String, serde_json::Value) {
    let status = exit_within(child, Duration::from_secs(10));
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{stderr}");
    (stderr, common::stats(stats))
}

/// Waits until the file at `path` holds something, 20 s at most.
fn wait_for_content(path: &std::path::Path, never: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(path).map_or(0, |m| m.len()) == 0 {
        assert!(Instant::now() < deadline, "{never}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads `child`'s stderr until a line holds `text`; the lines read, for a report.
fn read_until(stderr: &mut impl BufRead, text: &str) -> String {
    let mut read = String::new();
    while !read.lines().last().is_some_and(|l| l.contains(text)) {
        assert!(stderr.read_line(&mut read).unwrap() > 0, "no {text:?} in {read}");
    }
    read
}

#[test]
fn a_stop_ends_a_run_whose_output_fifo_has_no_reader() {
    // The input still open when the stop comes, or already read to its end: either way the
    // run gives up at the shutdown timeout and says what it did not deliver.
    for input_ended in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out.fifo");
        mkfifo(&fifo);
        let config = stopping_config(dir.path());
        let (stats, dead) = (dir.path().join("stats.json"), dir.path().join("dead.jsonl"));
        let mut child = kubetag_tool()
            .args(["--log-level", "debug", "--config", config.to_str().unwrap(), "--output"])
            .arg(&fifo)
            .arg("--stats-file")
            .arg(&stats)
            .arg("--dead-letter")
            .arg(&dead)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The malformed line after the record reaches the dead-letter file once the record
        // before it was handed to the sink.
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&[PLEG, b"not a record\n"].concat()).unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        if input_ended {
            drop(stdin);
            read_until(&mut stderr, "input read to its end");
        }
        wait_for_content(&dead, "the malformed line never came through");
        terminate(&child);
        let status = exit_within(&mut child, Duration::from_secs(10));
        // The record read could not be delivered: the run fails, but it ends, and says so.
        assert_eq!(status.and_then(|s| s.code()), Some(1), "input ended: {input_ended}");
        let mut rest = String::new();
        stderr.read_to_string(&mut rest).unwrap();
        assert!(rest.contains("1 record(s) not known to be delivered"), "{rest}");
        let stats = common::stats(&stats);
        assert_eq!(stats["undelivered_by_sink"][fifo.to_str().unwrap()], 1, "{stats}");
    }
}

/// A configuration in `dir` that gives up 1 s after a stop.
fn stopping_config(dir: &std::path::Path) -> PathBuf {
    let config = dir.join("pipeline.toml");
    std::fs::write(&config, "[run]\nshutdown_timeout_secs = 1\n").unwrap();
    config
}

/// Makes a FIFO at `path`.
fn mkfifo(path: &std::path::Path) {
    assert!(std::process::Command::new("mkfifo").arg(path).status().unwrap().success());
}

/// A run over a file of `records` error records that gives up 1 s after a stop, and the
/// path of its stats file.
fn stopping_run(dir: &std::path::Path, records: usize) -> (std::process::Command, PathBuf) {
    let input = dir.join("in.jsonl");
    std::fs::write(&input, PLEG.repeat(records)).unwrap();
    let config = stopping_config(dir);
    let stats = dir.join("stats.json");
    let mut command = kubetag_tool();
    command.arg("-q").arg("--config").arg(&config).arg("--stats-file").arg(&stats).arg(&input);
    (command, stats)
}

#[test]
fn a_stop_with_a_slow_reader_counts_every_record_it_could_not_deliver() {
    let dir = tempfile::tempdir().unwrap();
    let (mut command, stats) = stopping_run(dir.path(), 300_000);
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();

    // A reader of 16 KiB every 10 ms, stopped while it reads and reading on to the end.
    let mut stdout = child.stdout.take().unwrap();
    let (mut received, mut chunk, mut signalled) = (0, vec![0; 16 * 1024], false);
    loop {
        let n = stdout.read(&mut chunk).unwrap();
        if n == 0 {
            break;
        }
        received += chunk[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        if received > 5_000 && !signalled {
            terminate(&child);
            signalled = true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (stderr, stats) = failed_run(&mut child, &stats);
    let forwarded = stats["forwarded"].as_u64().unwrap();
    let undelivered = stats["undelivered_by_sink"]["stdout"].as_u64().unwrap_or(0);
    assert!(undelivered > 0 && forwarded < 300_000, "{stats}");
    // Every record forwarded was received or counted; only the write under way when the
    // run gave up (one write buffer at most) can be both.
    let both = (received + undelivered).checked_sub(forwarded);
    let one_write = (256 * 1024 / PLEG.len()) as u64;
    assert!(both.is_some_and(|n| n <= one_write), "{received} received, {stats} {stderr}");
    assert!(stderr.contains(&format!("{undelivered} record(s) not known")), "{stderr}");
}

#[test]
fn a_stalled_sink_does_not_cost_a_healthy_one_its_records_at_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (fifo, file) = (dir.path().join("out.fifo"), dir.path().join("out.jsonl"));
    mkfifo(&fifo);
    let (mut command, stats) = stopping_run(dir.path(), 20_000);
    let mut child = command
        .arg("-o")
        .arg(&fifo)
        .arg("-o")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Both sinks are handed records; the FIFO's queue fills and holds the run.
    wait_for_content(&file, "the file sink got nothing");
    terminate(&child);
    let (_, stats) = failed_run(&mut child, &stats);
    let forwarded = stats["forwarded"].as_u64().unwrap();
    let written = std::fs::read(&file).unwrap().iter().filter(|&&b| b == b'\n').count() as u64;
    assert_eq!(written, forwarded, "the healthy sink has every record: {stats}");
    let undelivered = &stats["undelivered_by_sink"];
    assert_eq!(undelivered[fifo.to_str().unwrap()], forwarded, "{stats}");
    assert!(undelivered.get(file.to_str().unwrap()).is_none(), "{stats}");
}
