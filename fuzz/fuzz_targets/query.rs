#![no_main]
//! Fuzz target `query`: see `lgsp_fuzz::query`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| lgsp_fuzz::query(data));
