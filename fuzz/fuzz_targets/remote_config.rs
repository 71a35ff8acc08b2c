#![no_main]
//! `cargo fuzz run remote_config`: see hoard_engine::fuzzing::remote_config.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::remote_config(data));
