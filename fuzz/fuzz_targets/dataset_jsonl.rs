#![no_main]
//! Fuzz target `dataset_jsonl`: see `lgsp_fuzz::dataset_jsonl`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| lgsp_fuzz::dataset_jsonl(data));
