#![no_main]
//! `cargo fuzz run session_record`: see hoard_engine::fuzzing::session_record.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::session_record(data));
