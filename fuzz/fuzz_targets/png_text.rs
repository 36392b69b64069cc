//! Fuzz target `png_text`: see `amalgam::fuzzing::png_text`.
#![no_main]

mod budget;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    budget::within(1 << 20, data.len(), || amalgam::fuzzing::png_text(data));
});
