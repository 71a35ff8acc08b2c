#![no_main]
//! `cargo fuzz run sealed_record`: see hoard_engine::fuzzing::sealed_record.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::sealed_record(data));
