//! Secret masking through the real binary: tagged and passed-through records, the kubetag
//! object, the counter, and the ways to turn it off.

mod common;

use common::*;

fn record(message: &str, cmdline: &str) -> String {
    let value = serde_json::json!({
        "__REALTIME_TIMESTAMP": "1796374801000000",
        "_HOSTNAME": "node-1",
        "_SYSTEMD_UNIT": "kubelet.service",
        "_CMDLINE": cmdline,
        "MESSAGE": message,
    });
    format!("{value}\n")
}

const PULL: &str = "E1204 09:00:03.000000 2101 remote_image.go:180] \"PullImage from image \
    service failed\" err=\"rpc error: code = Unknown desc = failed to pull and unpack image \
    \\\"registry.internal/app:v1\\\": failed to resolve reference: pulling from \
    https://robot:gh7Kq2LmN9xZ@registry.internal/v2/: 401 Unauthorized\" \
    image=\"registry.internal/app:v1\"";
const CMDLINE: &str = "/usr/bin/kubelet --bootstrap-token=07401b.f395accd246ae52d --v=2";
const SECRETS: [&str; 2] = ["gh7Kq2LmN9xZ", "07401b.f395accd246ae52d"];

fn input() -> String {
    let quiet = record("Started Kubernetes systemd probe.", "/usr/bin/kubelet --v=2");
    let chatter = record("Using token file /etc/kubernetes/token", CMDLINE);
    format!("{}{quiet}{chatter}", record(PULL, CMDLINE))
}

#[test]
fn secrets_are_masked_in_tagged_and_passed_records_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let stats_path = dir.path().join("stats.json");
    let args = ["--unmatched", "pass", "--stats-file", stats_path.to_str().unwrap()];
    let input = input();
    let output = run(&args, input.as_bytes());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout.clone()).unwrap();
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} forwarded: {text}");
    }

    let records = lines(&output.stdout);
    assert_eq!(records.len(), 3);
    let tag = &records[0]["kubetag"];
    assert_eq!(tag["category"], "image_pull", "{text}");
    assert!(records[0]["MESSAGE"].as_str().unwrap().contains("https://robot:***@registry"));
    assert!(tag["log"]["fields"]["err"].as_str().unwrap().contains("robot:***@"), "{tag}");
    assert_eq!(records[2]["_CMDLINE"], "/usr/bin/kubelet --bootstrap-token=*** --v=2");

    // The record without a secret passes byte for byte.
    let quiet = input.lines().nth(1).unwrap();
    assert_eq!(text.lines().nth(1).unwrap(), quiet);
    // MESSAGE, _CMDLINE and log.fields.err in the first; _CMDLINE in the last.
    let stats = stats(&stats_path);
    assert_eq!(stats["masked"], 4, "{stats}");
}

#[test]
fn masking_can_be_turned_off_by_flag_environment_or_file() {
    let input = input();
    let plain = run(&["--unmatched", "pass", "--no-mask"], input.as_bytes());
    assert_eq!(String::from_utf8(plain.stdout).unwrap().lines().nth(2), input.lines().nth(2));

    let mut command = kubetag();
    command.env("KUBETAG_MASK__ENABLED", "false").args(["--unmatched", "pass", "-q"]);
    let child = spawn_piped(&mut command, std::process::Stdio::piped());
    let output = feed(child, input.as_bytes());
    assert!(String::from_utf8(output).unwrap().contains(SECRETS[1]));

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    std::fs::write(&config, "[mask]\ndetectors = [\"jwt\"]\n").unwrap();
    let output =
        run(&["--config", config.to_str().unwrap(), "--unmatched", "pass"], input.as_bytes());
    assert!(String::from_utf8(output.stdout).unwrap().contains(SECRETS[1]));
}

#[test]
fn an_unknown_detector_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    std::fs::write(&config, "[mask]\ndetectors = [\"telepathy\"]\n").unwrap();
    let output = run(&["--config", config.to_str().unwrap()], b"");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("telepathy"), "{stderr}");
}

fn feed(mut child: std::process::Child, input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}
