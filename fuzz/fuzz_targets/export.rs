//! Fuzz target: kubetag::fuzz::export.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kubetag::fuzz::export(data));
