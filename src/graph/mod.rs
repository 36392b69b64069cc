//! The workflow document and its resolution into a runnable prompt.
//!
//! - [`document`]: ComfyUI's UI workflow, read and written losslessly.
//! - [`prompt`]: the API prompt the backend runs.
//! - [`load`]: reading a workflow from a PNG, UI JSON, API JSON or `.safetensors`, detected by
//!   content; API prompts are laid out into a document.
//! - [`edit`]: a node from its registry schema, and the edits a user makes to a document.
//! - [`estimate`]: how much sampling a prompt asks for (the time estimate before Queue).
//! - [`examples`]: the default merge graph and the Examples menu's documents.
//! - [`resolve`]: document → prompt as the frontend's `graphToPrompt` does (mute, bypass,
//!   reroute, primitive values, notes).
//! - [`seeds`]: `control_after_generate`, applied to the document after each queue.
//! - [`subgraph`]: subgraph definitions, which [`resolve`] flattens into the prompt.
//! - [`validate`]: the prompt checked against the node registry as ComfyUI's
//!   `validate_prompt` does, with its error types.

pub mod document;
pub mod edit;
pub mod estimate;
pub mod examples;
pub mod load;
pub mod prompt;
pub mod resolve;
pub mod seeds;
pub mod subgraph;
pub mod validate;

pub use document::{Document, Link, LoadReport, Mode, Node, NodeId};
pub use edit::Edit;
pub use prompt::{Prompt, PromptInput, PromptNode};

/// A problem attached to a node (or to the whole prompt), with ComfyUI's error type names so the
/// canvas and the CLI can show it like ComfyUI does.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NodeError {
    /// Prompt id of the node, `None` for prompt-wide errors.
    pub node: Option<String>,
    /// ComfyUI's error type (`required_input_missing`, `value_not_in_list`, …).
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    pub details: String,
}

impl NodeError {
    pub fn new(
        node: Option<&str>,
        kind: &str,
        message: impl Into<String>,
        details: impl Into<String>,
    ) -> Self {
        NodeError {
            node: node.map(str::to_owned),
            kind: kind.to_owned(),
            message: message.into(),
            details: details.into(),
        }
    }
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(n) = &self.node {
            write!(f, "node #{n}: ")?;
        }
        write!(f, "{} [{}]", self.message, self.kind)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}
