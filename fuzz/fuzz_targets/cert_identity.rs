#![no_main]
//! Fuzz target `cert_identity`: see `lgsp_fuzz::cert_identity`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| lgsp_fuzz::cert_identity(data));
