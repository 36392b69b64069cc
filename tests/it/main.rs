//! Amalgam's end-to-end tests, one binary with a module per topic (ripgrep's `tests/` shape):
//! real files written and read back, the real binary, the real app driven frame by frame.
//! If you add a test, it probably belongs in one of these modules. Only tests that need a
//! process of their own live beside this binary (`crash`: killing a save; `gui_x11`: a window
//! under Xvfb).

mod util;

mod corrupt;
mod diff;
mod engine;
mod fp8;
mod fuzz_regressions;
mod gallery;
mod generate;
mod gui;
mod inspect;
mod json;
mod lora;
mod metadata;
mod paths;
mod quantized;
mod subgraphs;
mod workflows;
