//! What a checkpoint *is*: its architecture, its components, the folders models live in, and
//! reference layouts for generating real-shaped checkpoints, reports of what a file holds, and
//! comparisons of two files.

pub mod arch;
pub mod checkpoint;
pub mod components;
pub mod diff;
pub mod folders;
pub mod layouts;
pub mod lora;
pub mod report;
pub mod samples;
pub mod save_layout;

pub use arch::{Architecture, Detection, Prediction, Variant};
pub use checkpoint::Checkpoint;
pub use components::Component;
pub use folders::ModelFolders;
