//! Properties of the whole pipeline, run in process on a file input and a file output for
//! generated streams of records and malformed lines: the counters add up to the lines read,
//! passed-through records come out byte for byte and in their source's order.

use std::sync::{Arc, OnceLock};

use kubetag::config::{PipelineConfig, Settings};
use kubetag::metrics::Metrics;
use kubetag::pipeline::{self, Stop};
use kubetag::sink::SinkConfig;
use kubetag::source::SourceConfig;
use kubetag::tag::mask::Masker;
use kubetag::tag::{Tagger, TaggerSlot, Unmatched};
use kubetag::{RuleSet, Shape};
use proptest::prelude::*;

/// One line of a generated stream.
#[derive(Clone, Debug)]
enum Line {
    Record { unit: &'static str, message: String, extra: Option<String> },
    Malformed(Vec<u8>),
}

const UNITS: &[&str] = &["kubelet.service", "containerd.service", "sshd.service", ""];

fn masker() -> Arc<Masker> {
    static MASKER: OnceLock<Arc<Masker>> = OnceLock::new();
    MASKER.get_or_init(|| Arc::new(Masker::new(&Default::default()).unwrap())).clone()
}

/// Whether masking would leave the line as it is.
fn holds_no_secret(line: &Line) -> bool {
    let mut bytes = bytes_of(line);
    match line {
        Line::Record { .. } => masker().mask(&mut bytes, 0, &mut Default::default()) == 0,
        Line::Malformed(_) => true,
    }
}

fn rules() -> Arc<RuleSet> {
    static RULES: OnceLock<Arc<RuleSet>> = OnceLock::new();
    RULES.get_or_init(|| Arc::new(RuleSet::shipped().expect("shipped rules load"))).clone()
}

/// Messages: every rule's examples (tagged), chatter, and arbitrary text.
fn message() -> impl Strategy<Value = String> {
    let examples: Vec<String> = rules().rules().iter().flat_map(|r| r.examples.clone()).collect();
    prop_oneof![
        proptest::sample::select(examples),
        Just("Started Kubernetes systemd probe.".to_string()),
        "[ -~]{0,80}",
        "\\PC{0,40}",
    ]
}

fn malformed() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        Just(b"{\"MESSAGE\":".to_vec()),
        Just(b"[1,2]".to_vec()),
        Just(b"{\"MESSAGE\":7}".to_vec()),
        Just(b"{\"OTHER\":\"x\"}".to_vec()),
        Just(vec![b'{', 0xff, b'}']),
        "[ -~]{1,40}".prop_map(|s| format!("x{s}").into_bytes()),
    ]
}

fn line() -> impl Strategy<Value = Line> {
    let record = (proptest::sample::select(UNITS), message(), proptest::option::of("[a-z]{1,8}"))
        .prop_map(|(unit, message, extra)| Line::Record { unit, message, extra });
    prop_oneof![4 => record, 1 => malformed().prop_map(Line::Malformed)]
}

fn bytes_of(line: &Line) -> Vec<u8> {
    match line {
        Line::Record { unit, message, extra } => {
            let mut value = serde_json::json!({ "MESSAGE": message });
            if !unit.is_empty() {
                value["_SYSTEMD_UNIT"] = (*unit).into();
            }
            if let Some(extra) = extra {
                value["X_EXTRA"] = extra.as_str().into();
            }
            serde_json::to_vec(&value).unwrap()
        }
        Line::Malformed(bytes) => bytes.clone(),
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs the pipeline over `input` with `--unmatched pass`; returns the counts and output.
fn run(input: &[u8], threads: usize, mask: Arc<Masker>) -> (kubetag::stats::Counts, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    std::fs::write(&from, input).unwrap();
    let mut settings = Settings::from_config(PipelineConfig::default()).unwrap();
    settings.sources = vec![SourceConfig::File { path: from }];
    settings.sinks = vec![SinkConfig::File { path: to.clone() }];
    settings.threads = threads;
    settings.read_bytes = 512;
    let tagger =
        Tagger { rules: rules(), shape: Shape::journald(), unmatched: Unmatched::Pass, mask };
    let slot = TaggerSlot::new(Arc::new(tagger));
    let metrics = Metrics::new(&settings.source_names, &settings.sink_names);
    let finished = pipeline::run(&settings, slot, Stop::default(), metrics).unwrap();
    assert!(finished.failures.is_empty(), "{:?}", finished.failures);
    (finished.counts, std::fs::read(&to).unwrap())
}

/// An output line with the kubetag object taken off again.
fn untagged(output: &[u8]) -> &[u8] {
    const TAG: &[u8] = b",\"kubetag\":{";
    match output.windows(TAG.len()).rposition(|w| w == TAG) {
        Some(at) => &output[..at],
        None => &output[..output.len() - 1],
    }
}

fn check(lines: &[Line], final_newline: bool, threads: usize, mask: Arc<Masker>) {
    let mut input: Vec<u8> = Vec::new();
    for line in lines {
        input.extend(bytes_of(line));
        input.push(b'\n');
    }
    if !final_newline && !input.is_empty() {
        input.pop();
    }
    let (counts, output) = run(&input, threads, mask);

    // Lines as a reader sees them: each newline ends one, and a last one may lack it.
    let newlines = input.iter().filter(|&&b| b == b'\n').count();
    let read = newlines + usize::from(input.last().is_some_and(|&b| b != b'\n'));
    assert_eq!(counts.records as usize, read);
    assert_eq!(counts.tagged + counts.unmatched + counts.malformed_total(), counts.records);
    assert_eq!(counts.forwarded, counts.tagged + counts.unmatched);

    let records: Vec<&[u8]> = input
        .split(|&b| b == b'\n')
        .filter(|l| {
            serde_json::from_slice::<serde_json::Value>(l).is_ok_and(|v| v["MESSAGE"].is_string())
        })
        .collect();
    let outputs: Vec<&[u8]> = output.split_inclusive(|&b| b == b'\n').collect();
    assert_eq!(outputs.len(), records.len(), "every record is forwarded");
    for (record, out) in records.iter().zip(&outputs) {
        let body = &record[..record.len() - 1];
        let original = untagged(out);
        assert!(
            original == *record || original == body,
            "changed or out of order:\n{}\n{}",
            String::from_utf8_lossy(record),
            String::from_utf8_lossy(out)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn counters_add_up_and_records_pass_in_order(
        lines in proptest::collection::vec(line(), 0..60),
        final_newline: bool,
        // One thread (with a reader thread beside it) and one per core (the workers read
        // the file themselves).
        threads in prop_oneof![Just(1usize), Just(2), Just(cores())],
    ) {
        check(&lines, final_newline, threads, Arc::new(Masker::off()));
    }

    #[test]
    fn masking_leaves_records_without_secrets_byte_for_byte(
        lines in proptest::collection::vec(line(), 0..40),
    ) {
        // Only lines without a secret a detector knows: masking must then change nothing.
        let lines: Vec<Line> = lines.into_iter().filter(holds_no_secret).collect();
        check(&lines, true, 2, masker());
    }
}
