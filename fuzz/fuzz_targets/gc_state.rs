#![no_main]
//! `cargo fuzz run gc_state`: see hoard_engine::fuzzing::gc_state.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::gc_state(data));
