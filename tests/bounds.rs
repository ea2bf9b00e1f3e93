//! Bounds a run keeps whatever its input and its reader do: the end of a run whose output
//! was closed while its input is idle.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{kubetag, spawn_piped};

const PLEG: &[u8] =
    b"{\"_SYSTEMD_UNIT\":\"kubelet.service\",\"MESSAGE\":\"PLEG is not healthy\"}\n";

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
