#![no_main]
//! `cargo fuzz run serve_config`: see hoard_engine::fuzzing::serve_config.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::serve_config(data));
