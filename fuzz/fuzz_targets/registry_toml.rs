#![no_main]
//! Fuzz target `registry_toml`: see `lgsp_fuzz::registry_toml`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| lgsp_fuzz::registry_toml(data));
