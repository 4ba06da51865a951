#![no_main]
//! Fuzz target `dataset_csv`: see `lgsp_fuzz::dataset_csv`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| lgsp_fuzz::dataset_csv(data));
