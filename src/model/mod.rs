//! What a checkpoint *is*: its architecture, its components, the folders models live in, and
//! reference layouts for generating real-shaped checkpoints, and reports of what a file holds.

pub mod arch;
pub mod checkpoint;
pub mod components;
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
