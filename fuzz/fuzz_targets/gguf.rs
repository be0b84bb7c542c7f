#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (_, target) = decpo::fuzzing::TARGETS
        .iter()
        .find(|(name, _)| *name == "gguf")
        .expect("a target of decpo::fuzzing");
    target(data);
});
