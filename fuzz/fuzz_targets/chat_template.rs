#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| decpo::fuzzing::chat_template(data));
