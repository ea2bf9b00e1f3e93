//! The main job end to end: real journal files, real `journalctl -o json`, the real binary.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn categories(out: &[u8]) -> Vec<String> {
    lines(out).iter().map(|v| v["kubetag"]["category"].as_str().unwrap().to_string()).collect()
}

#[test]
fn shipped_sample_journal_yields_exactly_the_errors() {
    let dir = tempfile::tempdir().unwrap();
    let export = std::fs::read(root().join("examples/node.export")).unwrap();
    let journal = journal_from_export(dir.path(), &export);
    let input = journalctl_json(&journal, &[]);
    let output = run(&["--stats-file", dir.path().join("s.json").to_str().unwrap()], &input);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let records = lines(&output.stdout);
    let got: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r["MESSAGE"].as_str().unwrap(), r["kubetag"]["category"].as_str().unwrap()))
        .collect();
    let want = [
        ("pull access denied", "image_pull"),
        ("failed to create shim task", "container_runtime"),
        ("cgroup: cannot allocate resource", "cgroup"),
        ("MountVolume.MountDevice failed", "volume_mount"),
        ("Unable to register node", "node_registration"),
        ("Error getting node", "node_registration"),
        ("cni plugin not initialized", "cni_network"),
        ("PLEG is not healthy", "pleg"),
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for ((message, category), (needle, expected)) in got.iter().zip(want) {
        assert!(message.contains(needle), "{message} lacks {needle}");
        assert_eq!(*category, expected, "{message}");
    }
    for record in &records {
        let tag = &record["kubetag"];
        assert!(!tag["cause"].as_array().unwrap().is_empty(), "{tag}");
        assert!(!tag["remediation"].as_array().unwrap().is_empty(), "{tag}");
        assert_eq!(tag["attributes"]["k8s.node.name"], "node-1");
        assert_eq!(tag["component"], "kubelet");
        assert!(tag["timestamp"].as_str().unwrap().starts_with("2026-12-04T09:00:"));
    }
    assert_eq!(records[0]["kubetag"]["attributes"]["container.image.name"], "myrepo/myapp:v1.0");
    assert_eq!(
        records[3]["kubetag"]["attributes"]["k8s.volume.name"],
        "pvc-8e4b2a10-1c3d-4e5f-a6b7-c8d9e0f1a2b3"
    );
    assert_eq!(records[1]["kubetag"]["attributes"]["k8s.pod.name"], "cart-5f6d");

    let stats = stats(&dir.path().join("s.json"));
    assert_eq!(stats["records_read"], 20);
    assert_eq!(stats["tagged"], 8);
    assert_eq!(stats["unmatched"], 12);
    assert_eq!(stats["malformed"], 0);
}

#[test]
fn byte_array_null_and_multi_valued_messages() {
    let dir = tempfile::tempdir().unwrap();
    let long = format!("Failed to pull image \"big:1\": {}", "x".repeat(5000));
    let mut multi = Entry::new(3, "kubelet.service", "first line, nothing wrong");
    multi.set("MESSAGE", "Failed to pull image \"multi:2\": rpc error: code = NotFound");
    let entries = [
        Entry::new(
            1,
            "kubelet.service",
            b"\x1b[31mFailed to pull image \"colour:1\": not found\xff".to_vec(),
        ),
        Entry::new(2, "kubelet.service", long.as_bytes().to_vec()),
        multi,
    ];
    let journal = journal(dir.path(), &entries);
    let input = journalctl_json(&journal, &[]);
    let text = String::from_utf8_lossy(&input);
    assert!(text.contains("\"MESSAGE\":[27,"), "journalctl prints bytes: {text}");
    assert!(text.contains("\"MESSAGE\":null"), "journalctl omits long values: {text}");
    assert!(text.contains("\"MESSAGE\":[\"first line"), "several values: {text}");

    let output = run(&["--unmatched", "pass"], &input);
    assert!(output.status.success());
    let records = lines(&output.stdout);
    assert_eq!(records.len(), 3);
    assert_eq!(records[0]["kubetag"]["category"], "image_pull");
    assert_eq!(records[0]["MESSAGE"][0], 27, "the byte array is forwarded unchanged");
    assert!(records[1].get("kubetag").is_none(), "null message stays unmatched");
    assert!(records[1]["MESSAGE"].is_null());
    assert_eq!(records[2]["kubetag"]["category"], "image_pull");
    assert_eq!(records[2]["kubetag"]["attributes"]["container.image.name"], "multi:2");

    // With --all journalctl prints the long value, and it is tagged.
    let input = journalctl_json(&journal, &["--all"]);
    assert_eq!(categories(&run(&[], &input).stdout), ["image_pull"; 3]);
}

#[test]
fn unmatched_pass_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let export = std::fs::read(root().join("examples/node.export")).unwrap();
    let input = journalctl_json(&journal_from_export(dir.path(), &export), &[]);
    let output = run(&["--unmatched", "pass"], &input);
    assert!(output.status.success());

    let inputs: Vec<&[u8]> = input.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let outputs: Vec<&[u8]> =
        output.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(inputs.len(), outputs.len());
    let mut tagged = 0;
    for (input, output) in inputs.iter().zip(&outputs) {
        if input == output {
            continue;
        }
        // A tagged record is the original with the tag appended before the closing brace.
        let body = &input[..input.len() - 1];
        assert!(output.starts_with(body), "{}", String::from_utf8_lossy(output));
        assert!(output[body.len()..].starts_with(b",\"kubetag\":{"));
        tagged += 1;
    }
    assert_eq!(tagged, 8);
}

#[test]
fn every_kind_of_bad_input_is_counted_and_survived() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"_SYSTEMD_UNIT":"kubelet.service","MESSAGE":"Failed to pull image \"a:1\": rpc error: code = NotFound"}"#;
    let mut input = Vec::new();
    let mut add = |line: &[u8]| {
        input.extend_from_slice(line);
        input.push(b'\n');
    };
    add(good.as_bytes());
    add(b"not json at all");
    add(br#"{"MESSAGE":"Failed to pull image \"cut"#);
    add(b"[1,2,3]");
    add(b"");
    add(format!("{good}\r").as_bytes());
    add(b"{\"MESSAGE\":\"Failed to pull image \xff\"}");
    add(format!("{{\"MESSAGE\":{}1{}}}", "[".repeat(500), "]".repeat(500)).as_bytes());
    add(format!("{{\"MESSAGE\":\"{}\"}}", "y".repeat(3 << 20)).as_bytes());
    add(good.as_bytes());
    add(br#"{"_SYSTEMD_UNIT":"kubelet.service"}"#);
    add(br#"{"MESSAGE":42}"#);
    input.extend_from_slice(good.as_bytes()); // no final newline

    let stats_path = dir.path().join("stats.json");
    let dead_path = dir.path().join("dead.jsonl");
    let args = [
        "--stats-file",
        stats_path.to_str().unwrap(),
        "--dead-letter",
        dead_path.to_str().unwrap(),
    ];
    let output = run(&args, &input);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(categories(&output.stdout), ["image_pull"; 4]);

    let stats = stats(&stats_path);
    assert_eq!(stats["records_read"], 13);
    assert_eq!(stats["tagged"], 4);
    assert_eq!(stats["unmatched"], 0);
    assert_eq!(stats["malformed"], 9);
    assert_eq!(stats["dead_lettered"], 9);
    let reasons = &stats["malformed_by_reason"];
    for (reason, n) in [
        ("syntax", 2),
        ("truncated", 1),
        ("not_object", 1),
        ("empty", 1),
        ("invalid_utf8", 1),
        ("too_long", 1),
        ("no_message", 1),
        ("message_type", 1),
    ] {
        assert_eq!(reasons[reason], n, "{reason}: {reasons}");
    }

    let dead = lines(&std::fs::read(&dead_path).unwrap());
    let where_: Vec<(u64, &str)> =
        dead.iter().map(|d| (d["line"].as_u64().unwrap(), d["reason"].as_str().unwrap())).collect();
    assert_eq!(
        where_,
        [
            (2, "syntax"),
            (3, "truncated"),
            (4, "not_object"),
            (5, "empty"),
            (7, "invalid_utf8"),
            (8, "syntax"),
            (9, "too_long"),
            (11, "no_message"),
            (12, "message_type"),
        ]
    );
    assert_eq!(dead[0]["raw"], "not json at all");
    assert!(dead[4]["raw"].is_array(), "invalid UTF-8 is kept as bytes");
    assert_eq!(dead[6]["truncated"], true);
    assert_eq!(dead[6]["bytes"], (3 << 20) + 14);
}

#[test]
fn a_long_line_split_across_reads_is_skipped_in_bounded_memory() {
    let good = r#"{"MESSAGE":"Failed to pull image \"a:1\": rpc error: code = NotFound"}"#;
    let mut input = format!("{{\"MESSAGE\":\"{}\"}}\n", "z".repeat(20 << 20)).into_bytes();
    input.extend_from_slice(good.as_bytes());
    input.push(b'\n');
    let output = run(&["--max-line-bytes", "65536"], &input);
    assert!(output.status.success());
    assert_eq!(categories(&output.stdout), ["image_pull"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("too_long 1"), "{stderr}");
}

#[test]
fn follow_mode_writes_each_tagged_line_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let entries = [Entry::new(
        1,
        "kubelet.service",
        "Failed to pull image \"f:1\": rpc error: code = NotFound",
    )];
    let journal = journal(dir.path(), &entries);

    // journalctl -f never ends; the record must come through while it runs.
    let mut journalctl = std::process::Command::new("journalctl")
        .arg("--file")
        .arg(&journal)
        .args(["-o", "json", "-f", "--no-pager"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = kubetag()
        .stdin(journalctl.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = line_reader(child.stdout.take().unwrap());
    let line = lines.recv_timeout(Duration::from_secs(20)).expect("a tagged line while -f runs");
    assert!(line.contains("\"category\":\"image_pull\""), "{line}");
    journalctl.kill().unwrap();
    let _ = journalctl.wait();
    assert!(child.wait().unwrap().success());

    // A line written to an open stdin appears without the stream ending.
    let mut child = spawn_piped(&mut kubetag(), Stdio::null());
    let mut stdin = child.stdin.take().unwrap();
    let lines = line_reader(child.stdout.take().unwrap());
    for n in 0..3 {
        let started = Instant::now();
        let record = format!(
            r#"{{"MESSAGE":"Failed to pull image \"app{n}\": rpc error: code = NotFound"}}"#
        );
        writeln!(stdin, "{record}").unwrap();
        stdin.flush().unwrap();
        let line = lines.recv_timeout(Duration::from_secs(20)).expect("the line comes at once");
        assert!(line.contains(&format!("app{n}")), "{line}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

/// Lines of `output` on a channel, so a test can wait for one with a deadline.
fn line_reader(output: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let record = r#"{"MESSAGE":"Failed to pull image \"app\": rpc error: code = NotFound"}"#;
    let mut child = spawn_piped(&mut kubetag(), Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    writeln!(stdin, "{record}").unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("image_pull"), "{line}");
    drop(reader);
    // Keep writing until kubetag notices its output is gone.
    for _ in 0..10_000 {
        if writeln!(stdin, "{record}").is_err() {
            break;
        }
    }
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn files_and_stdin_as_inputs_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.json");
    std::fs::write(
        &file,
        "{\"MESSAGE\":\"Failed to pull image one:1: rpc error: code = NotFound\"}\n",
    )
    .unwrap();
    let stdin = b"{\"MESSAGE\":\"Failed to pull image two:1: rpc error: code = NotFound\"}\n";
    let output = run(&[file.to_str().unwrap(), "-"], stdin);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("one") && text.contains("two"), "{text}");

    let output = run(&[dir.path().join("missing").to_str().unwrap()], b"");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot open input"));
}

#[test]
fn config_file_environment_and_flags_layer() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    std::fs::write(&config, "[tag]\nunmatched = \"pass\"\n").unwrap();
    let chatter = b"{\"MESSAGE\":\"Started Kubernetes kubelet.\"}\n";
    let config = config.to_str().unwrap();

    let output = run(&["--config", config], chatter);
    assert_eq!(output.stdout, chatter, "the file turns pass-through on");

    let mut child = kubetag();
    child.env("KUBETAG_TAG__UNMATCHED", "drop");
    let output = with_env_run(child, &["--config", config], chatter);
    assert!(output.stdout.is_empty(), "the environment overrides the file");

    let mut child = kubetag();
    child.env("KUBETAG_TAG__UNMATCHED", "drop");
    let output = with_env_run(child, &["--config", config, "--unmatched", "pass"], chatter);
    assert_eq!(output.stdout, chatter, "flags override the environment");

    std::fs::write(dir.path().join("bad.toml"), "[limits]\nmax_line_bytes = \"lots\"\n").unwrap();
    let bad = dir.path().join("bad.toml");
    let output = run(&["--config", bad.to_str().unwrap()], b"");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("max_line_bytes"));
}

fn with_env_run(
    mut command: std::process::Command,
    args: &[&str],
    input: &[u8],
) -> std::process::Output {
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn a_broken_rules_directory_is_refused_with_file_rule_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let rule = "[[rule]]\nid = \"demo.one\"\ncategory = \"image_pulls\"\nseverity = \"error\"\n\
                patterns = [\"failed to pull image\"]\nsummary = \"x\"\n";
    std::fs::write(dir.path().join("demo.toml"), rule).unwrap();
    let rules = dir.path().to_str().unwrap();

    let output = run(&["--rules", rules], b"");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("demo.toml: rule demo.one: key category"), "{stderr}");

    let output = kubetag_tool().args(["check", "--rules", rules]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("key category"));

    let output = kubetag_tool()
        .args(["check", "--config"])
        .arg(root().join("pipeline.toml"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// Extractors compile when a record first needs one. One too large to compile still lets
/// its rule tag (without the fields it would extract), and `check` finds it before a run.
#[test]
fn an_extractor_too_large_to_compile_is_found_by_check_and_tags_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let rule = "[[rule]]\nid = \"demo.one\"\ncategory = \"image_pull\"\nseverity = \"error\"\n\
                patterns = [\"failed to pull image\"]\nsummary = \"x\"\n\
                extract = ['(?P<pod>(?:\\w{100}){100})']\n";
    std::fs::write(dir.path().join("demo.toml"), rule).unwrap();
    let rules = dir.path().to_str().unwrap();

    let record = b"{\"MESSAGE\":\"Failed to pull image x\"}\n";
    let output = run(&["--rules", rules], record);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("\"rule\":\"demo.one\""), "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("an extractor cannot be compiled"), "{stderr}");

    let output = kubetag_tool().args(["check", "--rules", rules]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("rule demo.one: extractor") && stderr.contains("size limit"),
        "{stderr}"
    );
}

#[test]
fn shipped_rules_pass_their_examples_near_misses_and_the_real_cases() {
    let mut command = kubetag_tool();
    command.args(["rules", "test"]);
    let mut files: Vec<_> = std::fs::read_dir(root().join("tests/cases"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    for file in &files {
        command.arg("--cases").arg(file);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}

#[test]
fn shipped_rules_pass_the_lint() {
    let output = kubetag_tool().args(["rules", "lint"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.starts_with("ok: "), "{stdout}");
}

#[test]
fn rules_patterns_lists_the_automaton() {
    let output = kubetag_tool().args(["rules", "patterns"]).output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.lines().count() > 50);
    assert!(text.lines().any(|l| l.eq_ignore_ascii_case("PLEG is not healthy")), "{text}");
}

#[test]
fn threads_keep_each_sources_order_and_bytes() {
    // Enough records for many batches, so two workers finish them out of order.
    let mut input = Vec::new();
    for n in 0..60_000 {
        let message = if n % 97 == 0 {
            format!("Failed to pull image \\\"app:{n}\\\": rpc error: code = NotFound")
        } else {
            format!("Started container {n} in pod default/web-{n}")
        };
        let line =
            format!(r#"{{"_SYSTEMD_UNIT":"kubelet.service","N":{n},"MESSAGE":"{message}"}}"#);
        input.extend_from_slice(line.as_bytes());
        input.push(b'\n');
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.json");
    std::fs::write(&file, &input).unwrap();
    let output = run(&["--threads", "2", "--unmatched", "pass", file.to_str().unwrap()], b"");
    assert!(output.status.success());
    let records = lines(&output.stdout);
    assert_eq!(records.len(), 60_000);
    for (n, record) in records.iter().enumerate() {
        assert_eq!(record["N"], n, "order kept");
        assert_eq!(record.get("kubetag").is_some(), n % 97 == 0, "record {n}");
    }
    let untagged: Vec<&[u8]> = output
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty() && !l.ends_with(b"}}"))
        .collect();
    let originals: Vec<&[u8]> = input
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(n, l)| !l.is_empty() && n % 97 != 0)
        .map(|(_, l)| l)
        .collect();
    assert_eq!(untagged, originals, "pass-through is byte-identical");
}

#[test]
fn a_sink_that_fails_mid_run_fails_the_run() {
    let record = "{\"MESSAGE\":\"Failed to pull image \\\"x:1\\\": rpc error: code = NotFound\"}\n";
    let input = record.repeat(50_000);
    let output = run(&["--output", "/dev/full"], input.as_bytes());
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/dev/full"));
}

#[test]
fn sigterm_on_an_idle_stdin_drains_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("stats.json");
    let mut child =
        spawn_piped(kubetag().args(["--stats-file", stats.to_str().unwrap()]), Stdio::null());
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, r#"{{"MESSAGE":"Failed to pull image \"a:1\": rpc error: code = NotFound"}}"#)
        .unwrap();
    let lines = line_reader(child.stdout.take().unwrap());
    lines.recv_timeout(Duration::from_secs(20)).expect("the record comes through");
    let started = Instant::now();
    std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(5), "exits without waiting for stdin");
    assert_eq!(common::stats(&stats)["tagged"], 1);
    drop(stdin);
}

#[test]
fn unrelated_kubetag_variables_are_ignored() {
    let mut command = kubetag();
    command.env("KUBETAG_PORT", "tcp://127.0.0.1:8080").env("KUBETAG_SERVICE_HOST", "127.0.0.1");
    let output = with_env_run(command, &[], b"{\"MESSAGE\":\"hello\"}\n");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn inputs_are_read_one_after_another() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, tag: &str| {
        let path = dir.path().join(name);
        let body: String = (0..20_000)
            .map(|n| format!("{{\"F\":\"{tag}\",\"N\":{n},\"MESSAGE\":\"x\"}}\n"))
            .collect();
        std::fs::write(&path, body).unwrap();
        path
    };
    let (a, b) = (write("a.json", "a"), write("b.json", "b"));
    let output = run(&["--unmatched", "pass", a.to_str().unwrap(), b.to_str().unwrap()], b"");
    let files: Vec<String> =
        lines(&output.stdout).iter().map(|r| r["F"].as_str().unwrap().to_string()).collect();
    let switches = files.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!((files.len(), switches), (40_000, 1), "a, then b");
    let output = run(&["-", "-"], b"");
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn explain_tells_what_a_category_and_a_rule_mean() {
    let output = kubetag_tool().args(["explain", "image_pull"]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(text.contains("Image pull failures") && text.contains("image_pull."), "{text}");
    let rule =
        text.lines().find_map(|l| l.split_whitespace().find(|w| w.starts_with("image_pull.")));
    let output = kubetag_tool().args(["explain", rule.unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("Probable causes") && text.contains("Remediation"), "{text}");
    let output = kubetag_tool().args(["explain", "no_such_thing"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn an_explicit_shape_maps_other_field_names() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    let shape = "[tag]\nshape = { message = [\"log\"], component = [\"unit\"], host = [\"node\"], time = [\"ts\"] }\n";
    std::fs::write(&config, shape).unwrap();
    let record = r#"{"log":"Failed to pull image \"a:1\": rpc error: code = NotFound","unit":"kubelet.service","node":"n7","ts":"2026-12-04T09:00:01Z"}"#;
    let output = run(&["--config", config.to_str().unwrap()], format!("{record}\n").as_bytes());
    let records = lines(&output.stdout);
    assert_eq!(records.len(), 1, "{}", String::from_utf8_lossy(&output.stderr));
    let tag = &records[0]["kubetag"];
    assert_eq!(
        (tag["category"].as_str(), tag["component"].as_str()),
        (Some("image_pull"), Some("kubelet"))
    );
    assert_eq!(tag["attributes"]["k8s.node.name"], "n7");
    assert_eq!(tag["timestamp"], "2026-12-04T09:00:01.000000Z");
}

#[test]
fn a_closed_stderr_neither_crashes_nor_blocks_the_stop() {
    let mut child = spawn_piped(&mut kubetag_tool(), Stdio::piped());
    drop(child.stderr.take());
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, r#"{{"MESSAGE":"Failed to pull image \"a:1\": rpc error: code = NotFound"}}"#)
        .unwrap();
    let lines = line_reader(child.stdout.take().unwrap());
    lines.recv_timeout(Duration::from_secs(20)).expect("the record comes through");
    std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let (done, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait()));
    let status =
        exited.recv_timeout(Duration::from_secs(20)).expect("exits after SIGTERM").unwrap();
    assert!(status.success(), "{status}");
    drop(stdin);
}

const PLEG: &str = r#"{"_SYSTEMD_UNIT":"kubelet.service","MESSAGE":"PLEG is not healthy"}"#;

#[test]
fn a_fifo_given_as_file_delivers_what_its_writer_sends() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("journal.fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs");
    assert!(made.success());
    let child = kubetag()
        .arg(&fifo)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubetag starts");
    // The open for writing waits until kubetag opens the FIFO for reading.
    let writer = std::thread::spawn(move || {
        let mut fifo = std::fs::OpenOptions::new().write(true).open(&fifo)?;
        writeln!(fifo, "{PLEG}")
    });
    let output = output_within(child, Duration::from_secs(30));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(categories(&output.stdout), ["pleg"]);
    writer.join().unwrap().expect("the writer's line is taken");
}

#[test]
fn a_directory_among_the_files_is_refused_before_anything_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.jsonl");
    std::fs::write(&file, format!("{PLEG}\n")).unwrap();
    let sub = dir.path().join("logs");
    std::fs::create_dir(&sub).unwrap();
    let (file, sub_arg) = (file.to_str().unwrap(), sub.to_str().unwrap());
    let output = run(&[file, sub_arg, file], b"");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing is read");
    assert!(stderr.contains(&format!("{}: is a directory", sub.display())), "{stderr}");
}

#[test]
fn outputs_that_are_one_file_are_refused() {
    // OUT stands for one path, spelled two ways; it may not exist before the run.
    // LINK is a link to OUT, made before the run whether or not OUT exists.
    let cases: [(&str, &[&str], bool); 6] = [
        ("an output and the stats file", &["--output", "OUT", "--stats-file", "./OUT"], false),
        ("two outputs", &["--output", "OUT", "--output", "file:./OUT"], true),
        ("two outputs not made yet", &["--output", "OUT", "--output", "file:./OUT"], false),
        ("an output through a link", &["-o", "OUT", "-o", "LINK"], true),
        ("an output through a dangling link", &["-o", "LINK", "-o", "OUT"], false),
        ("an output and the dead-letter file", &["--dead-letter", "OUT", "-o", "OUT"], false),
    ];
    for (name, flags, exists) in cases {
        let dir = tempfile::tempdir().unwrap();
        if exists {
            std::fs::write(dir.path().join("OUT"), "").unwrap();
        }
        std::os::unix::fs::symlink("OUT", dir.path().join("LINK")).unwrap();
        let mut command = kubetag();
        command.current_dir(dir.path()).args(flags).stdin(Stdio::piped());
        let output =
            output_within(spawn_piped(&mut command, Stdio::piped()), Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains("one would overwrite the other"), "{name}: {stderr}");
        assert_eq!(dir.path().join("OUT").exists(), exists, "{name}: a refused run makes nothing");
    }

    let dir = tempfile::tempdir().unwrap();
    let output = run(&["--output", dir.path().to_str().unwrap()], format!("{PLEG}\n").as_bytes());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is a directory"), "{stderr}");
}

/// `check` reports what a run would refuse in a configuration's files, every problem of
/// it, and creates nothing.
#[test]
fn check_finds_every_problem_a_run_would_refuse() {
    let sink =
        |name: &str, path: &str| format!("[sinks.{name}]\ntype = \"file\"\npath = \"{path}\"\n");
    let cases: [(&str, String, &[&str]); 8] = [
        ("a sink name ending in /", sink("a", "new.jsonl/"), &["names a directory"]),
        ("an empty stats path", "[run]\nstats_file = \"\"\n".into(), &["an empty path"]),
        (
            "a sink through a link into a missing directory",
            sink("a", "dangling"),
            &["output dangling:", "nowhere: No such file"],
        ),
        ("two sinks, one file", sink("a", "z.jsonl") + &sink("b", "./z.jsonl"), &["overwrite"]),
        (
            "a sink and the stats file",
            format!("[run]\nstats_file = \"out.jsonl\"\n{}", sink("a", "out.jsonl")),
            &["the output out.jsonl is also the stats file out.jsonl"],
        ),
        (
            "a dead-letter file in a missing directory",
            "[dead_letter]\npath = \"nodir/dead.jsonl\"\n".into(),
            &["the dead-letter file nodir/dead.jsonl: nodir"],
        ),
        ("a dead-letter FIFO", "[dead_letter]\npath = \"ff\"\n".into(), &["is a FIFO"]),
        (
            "a bad value beside bad files",
            format!("[run]\nthreads = 65\n{}{}", sink("a", "o"), sink("b", "./o")),
            &["run.threads", "overwrite", "2 problem(s)"],
        ),
    ];
    for (name, config, problems) in cases {
        let dir = tempfile::tempdir().unwrap();
        assert!(std::process::Command::new("mkfifo")
            .arg(dir.path().join("ff"))
            .status()
            .unwrap()
            .success());
        std::os::unix::fs::symlink("nowhere/x", dir.path().join("dangling")).unwrap();
        std::fs::write(dir.path().join("c.toml"), config).unwrap();
        let output = kubetag_tool()
            .current_dir(dir.path())
            .args(["check", "--config", "c.toml"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        for problem in problems {
            assert!(stderr.contains(problem), "{name}: no {problem:?} in {stderr}");
        }
        let mut made: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        made.sort();
        assert_eq!(made, ["c.toml", "dangling", "ff"], "{name}: check makes nothing");
    }
}

#[test]
fn an_output_that_is_an_input_file_is_refused() {
    // How the input file is made an output: flags (PATH stands for it), or stdout.
    let cases: [(&str, &[&str], bool); 4] = [
        ("stdout appends to the file", &[], true),
        ("--output names the file", &["--output", "file:PATH"], false),
        ("--dead-letter names the file", &["--dead-letter", "PATH"], false),
        ("--stats-file names the file", &["--stats-file", "PATH"], false),
    ];
    for (name, flags, stdout_to_file) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("self.jsonl");
        std::fs::write(&path, format!("{PLEG}\n")).unwrap();
        let mut command = kubetag();
        command.args(["--unmatched", "pass"]).arg(&path);
        command.args(flags.iter().map(|f| f.replace("PATH", path.to_str().unwrap())));
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if stdout_to_file {
            command.stdout(std::fs::File::options().append(true).open(&path).unwrap());
        }
        let output = output_within(command.spawn().unwrap(), Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(&format!("input {} is also", path.display())), "{name}: {stderr}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{PLEG}\n"), "{name}");
    }
}

#[test]
fn stats_dead_letter_and_output_paths_that_cannot_be_written_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir/out.json");
    let missing = missing.to_str().unwrap();
    for flag in ["--stats-file", "--dead-letter", "--output"] {
        let output = run(&[flag, missing], format!("{PLEG}\n").as_bytes());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag}: {stderr}");
        assert!(output.stdout.is_empty(), "{flag}: nothing is read");
        assert!(stderr.contains(missing), "{flag}: {stderr}");
    }

    // Opened before the run, a FIFO would wait there for a reader.
    let fifo = dir.path().join("counters.fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for flag in ["--stats-file", "--dead-letter"] {
        let mut command = kubetag();
        command.args([flag, fifo.to_str().unwrap()]).stdin(Stdio::piped());
        let output =
            output_within(spawn_piped(&mut command, Stdio::piped()), Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag}: {stderr}");
        assert!(stderr.contains("is a FIFO"), "{flag}: {stderr}");
    }
}

#[test]
fn threads_beyond_the_cap_are_capped_with_a_warning() {
    let output = run(&["--threads", "1000"], format!("{PLEG}\n").as_bytes());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("--threads out of range") && stderr.contains("using=64"), "{stderr}");
    assert_eq!(categories(&output.stdout), ["pleg"]);
}

#[test]
fn bytes_read_counts_a_long_line_as_the_bytes_it_took() {
    let long = "x".repeat(2000);
    let cases = [
        ("last line without a newline", format!("{PLEG}\n{long}")),
        ("last line with a newline", format!("{PLEG}\n{long}\n")),
        ("crlf line, then another", format!("{long}\r\n{PLEG}\n")),
        ("last line ending in a cr", format!("{PLEG}\n{long}\r")),
    ];
    let dir = tempfile::tempdir().unwrap();
    let (stats, file) = (dir.path().join("stats.json"), dir.path().join("in.jsonl"));
    let (stats_arg, file_arg) = (stats.to_str().unwrap(), file.to_str().unwrap());
    for (name, input) in cases {
        std::fs::write(&file, &input).unwrap();
        let flags = ["--max-line-bytes", "100", "--stats-file", stats_arg];
        for (how, args, stdin) in
            [("stdin", vec![], input.as_bytes()), ("file", vec![file_arg], b"")]
        {
            let output = run(&[&flags[..], &args].concat(), stdin);
            assert!(output.status.success(), "{name}, {how}");
            let stats = common::stats(&stats);
            assert_eq!(stats["bytes_read"], input.len(), "{name}, {how}");
            assert_eq!(stats["malformed_by_reason"]["too_long"], 1, "{name}, {how}");
        }
    }
}
