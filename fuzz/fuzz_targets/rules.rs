//! Fuzz target: kubetag::fuzz::rules.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kubetag::fuzz::rules(data));
