//! Fuzz target `extra_model_paths`: see `amalgam::fuzzing::extra_model_paths`.
#![no_main]

mod budget;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    budget::within(1 << 20, data.len(), || amalgam::fuzzing::extra_model_paths(data));
});
