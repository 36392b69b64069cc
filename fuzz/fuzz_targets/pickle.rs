//! Fuzz target `pickle`: see `amalgam::fuzzing::pickle`.
#![no_main]

mod budget;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    budget::within(1 << 20, data.len(), || amalgam::fuzzing::pickle(data));
});
