//! Fuzz target `lora`: see `amalgam::fuzzing::lora`.
#![no_main]

mod budget;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    budget::within(64 << 20, data.len(), || amalgam::fuzzing::lora(data));
});
