#![no_main]
//! Fuzz target `csr`: see `lgsp_fuzz::csr`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| lgsp_fuzz::csr(data));
