//! Every input a fuzz target once failed on, kept in `fuzz/regressions/TARGET/`, run
//! through the same target again; and the seed corpora, so that a target that breaks on
//! ordinary input fails here before any fuzzing.

use std::path::Path;

fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut inputs: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    inputs.sort();
    inputs
}

#[test]
fn every_kept_failure_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut count = 0;
    for &(name, target) in kubetag::fuzz::TARGETS {
        for (path, input) in inputs(&root.join(name)) {
            let outcome = std::panic::catch_unwind(|| target(&input));
            assert!(outcome.is_ok(), "{path} fails {name} again");
            count += 1;
        }
    }
    assert!(count > 0, "no regressions found under {}", root.display());
}

/// The case files' messages as journald records, the way the seed corpora hold them.
fn case_records(root: &Path) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    for (_, text) in inputs(&root.join("tests/cases")) {
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let case: serde_json::Value = serde_json::from_slice(line).unwrap();
            let record = serde_json::json!({
                "_SYSTEMD_UNIT": case["unit"],
                "MESSAGE": case["message"],
            });
            records.push(serde_json::to_vec(&record).unwrap());
        }
    }
    records
}

#[test]
fn every_target_passes_on_the_seed_inputs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds = case_records(root);
    seeds.push(std::fs::read(root.join("examples/node.export")).unwrap());
    for (_, rules) in inputs(&root.join("rules")) {
        seeds.push(rules);
    }
    for &(_, target) in kubetag::fuzz::TARGETS {
        for seed in &seeds {
            target(seed);
        }
    }
}
