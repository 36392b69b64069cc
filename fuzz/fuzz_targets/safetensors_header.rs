//! Fuzz target `safetensors_header`: see `amalgam::fuzzing::safetensors_header`.
#![no_main]

mod budget;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    budget::within(1 << 20, data.len(), || amalgam::fuzzing::safetensors_header(data));
});
