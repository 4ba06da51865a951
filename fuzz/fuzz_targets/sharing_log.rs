#![no_main]
//! Fuzz target `sharing_log`: see `lgsp_fuzz::sharing_log`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| lgsp_fuzz::sharing_log(data));
