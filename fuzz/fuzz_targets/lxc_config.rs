#![no_main]
//! `cargo fuzz run lxc_config`: see hoard_engine::fuzzing::lxc_config.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::lxc_config(data));
