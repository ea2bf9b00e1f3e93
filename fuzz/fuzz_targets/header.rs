//! Fuzz target: kubetag::fuzz::header.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kubetag::fuzz::header(data));
