#![no_main]
//! `cargo fuzz run wire_answers`: see hoard_engine::fuzzing::wire_answers.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::wire_answers(data));
