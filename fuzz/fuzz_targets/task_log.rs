#![no_main]
//! `cargo fuzz run task_log`: see hoard_engine::fuzzing::task_log.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::task_log(data));
