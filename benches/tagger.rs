//! The tagger alone, in bytes per second, on a generated corpus of ~1 KB journald records:
//! chatter with a share of real errors, and all chatter; then every record passed through,
//! with secret masking on and off, to price the masker on the most it ever sees; then the
//! automaton alone over whole lines and over MESSAGE values.

mod corpus;

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kubetag::tag::mask::{MaskConfig, Masker};
use kubetag::tag::{Tagger, Unmatched, Worker};
use kubetag::{RuleSet, Shape};

fn tag_corpus(c: &mut Criterion) {
    let rules = Arc::new(RuleSet::shipped().expect("shipped rules load"));
    let errors: Vec<String> = rules.rules().iter().flat_map(|r| r.examples.clone()).collect();
    let on = Arc::new(Masker::new(&MaskConfig::default()).expect("shipped detectors build"));
    let off = Arc::new(Masker::off());
    let cases = [
        ("3% errors", 30, Unmatched::Drop, &on),
        ("3% errors, masking off", 30, Unmatched::Drop, &off),
        ("chatter only", 0, Unmatched::Drop, &on),
        ("3% errors, all passed, masking on", 30, Unmatched::Pass, &on),
        ("3% errors, all passed, masking off", 30, Unmatched::Pass, &off),
    ];

    let mut group = c.benchmark_group("tag");
    for (name, per_mille, unmatched, mask) in cases {
        let rules = rules.clone();
        let tagger =
            Arc::new(Tagger { rules, shape: Shape::journald(), unmatched, mask: mask.clone() });
        let mut input = Vec::new();
        corpus::generate(8 << 20, per_mille, &errors, &mut input);
        group.throughput(Throughput::Bytes(input.len() as u64));
        let mut worker = Worker::new(tagger);
        let mut out = Vec::with_capacity(16 << 20);
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                for line in input.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    worker.line(line, &mut out);
                }
                out.len()
            })
        });
    }
    group.finish();
}

/// What restricting the automaton to the MESSAGE value buys: the automaton over whole
/// lines, against the automaton over the MESSAGE values alone (decoded beforehand, out of
/// the timing). Prints how many of each the automaton flags: a whole line also hits on
/// `_CMDLINE`, `_EXE` and the other fields.
fn scan_scope(c: &mut Criterion) {
    let rules = RuleSet::shipped().expect("shipped rules load");
    let errors: Vec<String> = rules.rules().iter().flat_map(|r| r.examples.clone()).collect();
    let mut input = Vec::new();
    corpus::generate(8 << 20, 30, &errors, &mut input);
    let lines: Vec<&[u8]> = input.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let messages: Vec<Vec<u8>> = lines
        .iter()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_slice(line).expect("corpus is JSON");
            record["MESSAGE"].as_str().expect("a text MESSAGE").as_bytes().to_vec()
        })
        .collect();
    let flagged =
        |texts: &mut dyn Iterator<Item = &[u8]>| texts.filter(|t| rules.any_pattern(t)).count();
    println!(
        "{} records: {} lines flagged by the automaton, {} messages",
        lines.len(),
        flagged(&mut lines.iter().copied()),
        flagged(&mut messages.iter().map(Vec::as_slice))
    );

    let mut group = c.benchmark_group("automaton");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("whole lines", |b| {
        b.iter(|| lines.iter().filter(|l| rules.any_pattern(l)).count())
    });
    group.bench_function("MESSAGE values", |b| {
        b.iter(|| messages.iter().filter(|m| rules.any_pattern(m)).count())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = tag_corpus, scan_scope
}
criterion_main!(benches);
