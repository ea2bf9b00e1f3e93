//! Writes a benchmark corpus to stdout: `corpus MEGABYTES [ERRORS_PER_MILLE]`.

#[path = "../benches/corpus.rs"]
mod corpus;

use std::io::Write;

fn main() {
    let mut args = std::env::args().skip(1);
    let megabytes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let per_mille: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(30);
    let rules = kubetag::RuleSet::shipped().expect("shipped rules load");
    let errors: Vec<String> = rules.rules().iter().flat_map(|r| r.examples.clone()).collect();
    let mut out = Vec::with_capacity(megabytes << 20);
    corpus::generate(megabytes << 20, per_mille, &errors, &mut out);
    std::io::stdout().lock().write_all(&out).expect("stdout takes the corpus");
}
