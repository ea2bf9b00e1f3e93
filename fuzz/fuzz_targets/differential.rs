//! Fuzz target: kubetag::fuzz::differential.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kubetag::fuzz::differential(data));
