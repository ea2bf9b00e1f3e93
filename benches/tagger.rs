//! The tagger alone, in bytes per second, on a generated corpus of ~1 KB journald records:
//! chatter with a share of real errors, and all chatter.

mod corpus;

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kubetag::tag::{Tagger, Unmatched, Worker};
use kubetag::{RuleSet, Shape};

fn tag_corpus(c: &mut Criterion) {
    let rules = Arc::new(RuleSet::shipped().expect("shipped rules load"));
    let errors: Vec<String> = rules.rules().iter().flat_map(|r| r.examples.clone()).collect();
    let tagger = Arc::new(Tagger { rules, shape: Shape::journald(), unmatched: Unmatched::Drop });

    let mut group = c.benchmark_group("tag");
    for (name, per_mille) in [("3% errors", 30), ("chatter only", 0)] {
        let mut input = Vec::new();
        corpus::generate(8 << 20, per_mille, &errors, &mut input);
        group.throughput(Throughput::Bytes(input.len() as u64));
        let mut worker = Worker::new(tagger.clone());
        let mut out = Vec::with_capacity(1 << 20);
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

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = tag_corpus
}
criterion_main!(benches);
