#![no_main]
//! `cargo fuzz run chunk_record`: see hoard_engine::fuzzing::chunk_record.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::chunk_record(data));
