//! Fuzz target: kubetag::fuzz::record.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kubetag::fuzz::record(data));
