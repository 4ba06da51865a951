#![no_main]
//! Fuzz target `node_toml`: see `lgsp_fuzz::node_toml`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| lgsp_fuzz::node_toml(data));
