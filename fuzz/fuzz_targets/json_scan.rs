//! Fuzz target: kubetag::fuzz::json_scan.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kubetag::fuzz::json_scan(data));
