//! Fuzz target `workflow`: see `amalgam::fuzzing::workflow`.
#![no_main]

mod budget;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    budget::within(1 << 20, data.len(), || amalgam::fuzzing::workflow(data));
});
