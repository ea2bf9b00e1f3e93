//! Fuzz target: kubetag::fuzz::mask.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kubetag::fuzz::mask(data));
