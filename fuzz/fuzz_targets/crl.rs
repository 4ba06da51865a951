#![no_main]
//! Fuzz target `crl`: see `lgsp_fuzz::crl`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| lgsp_fuzz::crl(data));
