//! What the app remembers between runs (eframe persistence): folders, precision, theme, recent
//! files, and the last workflow.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::engine::{Precision, SaveMetadata};
use crate::model::ModelFolders;

/// Settings that persist between runs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    pub base_dir: PathBuf,
    pub models_dir: Option<PathBuf>,
    pub output_dir: Option<PathBuf>,
    pub extra_model_paths: Option<PathBuf>,
    pub precision: Precision,
    /// Sample only image 0 of each batch (on by default: a CPU takes minutes per image).
    #[serde(default = "on")]
    pub first_image_only: bool,
    pub dark: bool,
    pub recent: Vec<PathBuf>,
    /// No prompt/workflow in saved files (`--disable-metadata`); modelspec title, author and
    /// description.
    #[serde(default)]
    pub metadata: SaveMetadata,
}

impl Settings {
    pub fn new(base_dir: PathBuf) -> Settings {
        Settings {
            base_dir,
            models_dir: None,
            output_dir: None,
            extra_model_paths: None,
            precision: Precision::Keep,
            first_image_only: true,
            dark: true,
            recent: Vec::new(),
            metadata: SaveMetadata::default(),
        }
    }

    /// The model folders these settings describe ([`ModelFolders::from_config`], the same
    /// function and order as the command line), and what went wrong reading extra paths files.
    pub fn folders(&self) -> (ModelFolders, Option<String>) {
        let (folders, problems) = ModelFolders::from_config(
            &self.base_dir,
            self.models_dir.as_deref(),
            self.output_dir.as_deref(),
            self.extra_model_paths.as_slice(),
        );
        let problem = (!problems.is_empty()).then(|| {
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        });
        (folders, problem)
    }
}

fn on() -> bool {
    true
}

/// What is saved between runs (eframe persistence).
#[derive(Serialize, Deserialize)]
pub struct Persisted {
    pub settings: Settings,
    /// The workflow on the canvas, as ComfyUI workflow JSON.
    pub workflow: String,
    pub workflow_path: Option<PathBuf>,
}
