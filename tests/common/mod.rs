//! Helpers for driving the real binary with real journalctl output.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn kubetag() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kubetag"));
    command.env_remove("RUST_LOG").arg("--log-level=warn");
    command
}

/// A command that is not the pipeline takes no run flags.
pub fn kubetag_tool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kubetag"))
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One journal entry: fields in order, values as bytes.
#[derive(Clone, Default)]
pub struct Entry(pub Vec<(String, Vec<u8>)>);

impl Entry {
    /// An entry from `unit` with the usual trusted fields.
    pub fn new(seq: u64, unit: &str, message: impl Into<Vec<u8>>) -> Entry {
        let mut entry = Entry::default();
        entry.set("__REALTIME_TIMESTAMP", (1_796_374_801_000_000 + seq * 1000).to_string());
        entry.set("__MONOTONIC_TIMESTAMP", (1_000_000 + seq).to_string());
        entry.set("_BOOT_ID", "6d1a2f0c9e8b4d7a8c5b3e2f1a0d9c8b");
        entry.set("_HOSTNAME", "node-1");
        entry.set("_TRANSPORT", "journal");
        entry.set("_SYSTEMD_UNIT", unit);
        entry.set("MESSAGE", message);
        entry
    }

    pub fn set(&mut self, name: &str, value: impl Into<Vec<u8>>) -> &mut Entry {
        self.0.push((name.to_string(), value.into()));
        self
    }
}

/// The journal export format: text fields as `NAME=value`, values holding a newline as
/// binary fields (name, newline, 64-bit little-endian length, bytes).
pub fn export(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        for (name, value) in &entry.0 {
            if value.contains(&b'\n') {
                out.extend_from_slice(name.as_bytes());
                out.push(b'\n');
                out.extend_from_slice(&(value.len() as u64).to_le_bytes());
                out.extend_from_slice(value);
            } else {
                out.extend_from_slice(format!("{name}=").as_bytes());
                out.extend_from_slice(value);
            }
            out.push(b'\n');
        }
        out.push(b'\n');
    }
    out
}

fn journal_remote() -> PathBuf {
    ["/lib/systemd/systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("systemd-journal-remote is installed (Debian package systemd-journal-remote)")
}

/// Writes an export stream into a real journal file with systemd-journal-remote.
pub fn journal_from_export(dir: &Path, export: &[u8]) -> PathBuf {
    let path = dir.join(format!("test-{}.journal", std::process::id()));
    let mut child = Command::new(journal_remote())
        .arg("-o")
        .arg(&path)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-journal-remote starts");
    child.stdin.take().unwrap().write_all(export).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    path
}

pub fn journal(dir: &Path, entries: &[Entry]) -> PathBuf {
    journal_from_export(dir, &export(entries))
}

/// `journalctl --file JOURNAL -o json` plus `extra`.
pub fn journalctl_json(journal: &Path, extra: &[&str]) -> Vec<u8> {
    let output = Command::new("journalctl")
        .arg("--file")
        .arg(journal)
        .args(["-o", "json", "--no-pager"])
        .args(extra)
        .output()
        .expect("journalctl runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

/// Runs kubetag with `args`, feeding `input` on stdin.
pub fn run(args: &[&str], input: &[u8]) -> Output {
    let mut child = kubetag()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubetag starts");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    output
}

pub fn lines(bytes: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

pub fn stats(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Appends entries to an existing journal file.
pub fn journal_append(journal: &Path, entries: &[Entry]) {
    let mut child = Command::new(journal_remote())
        .arg("-o")
        .arg(journal)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-journal-remote starts");
    child.stdin.take().unwrap().write_all(&export(entries)).unwrap();
    assert!(child.wait().unwrap().success());
}

/// Starts `command` with stdin and stdout on pipes, for tests that feed and read it live.
pub fn spawn_piped(command: &mut Command, stderr: Stdio) -> std::process::Child {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("kubetag starts")
}

/// The lines of a child's output as they come, read on a thread of their own.
pub fn lines_of(output: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(output)) {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for `child` to exit and collects its output; a child still running after `limit`
/// is killed and the test fails, so a hang shows as a failure instead of a stuck run.
pub fn output_within(child: std::process::Child, limit: std::time::Duration) -> Output {
    let pid = child.id().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    if let Ok(output) = rx.recv_timeout(limit) {
        return output.expect("the child is waited for");
    }
    let _ = Command::new("kill").args(["-KILL", &pid]).status();
    let stderr = rx.recv().ok().and_then(Result::ok).map(|o| o.stderr).unwrap_or_default();
    panic!("still running after {limit:?}, killed: {}", String::from_utf8_lossy(&stderr));
}
