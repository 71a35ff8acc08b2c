#![no_main]
//! `cargo fuzz run job_file`: see hoard_engine::fuzzing::job_file.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::job_file(data));
