#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| decpo::fuzzing::hf_dir(data));
