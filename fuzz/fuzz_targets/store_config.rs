#![no_main]
//! `cargo fuzz run store_config`: see hoard_engine::fuzzing::store_config.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::store_config(data));
