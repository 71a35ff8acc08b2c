#![no_main]
//! `cargo fuzz run protect_marker`: see hoard_engine::fuzzing::protect_marker.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::protect_marker(data));
