#![no_main]
//! Fuzz target `envelope`: see `lgsp_fuzz::envelope`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| lgsp_fuzz::envelope(data));
