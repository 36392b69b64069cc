//! Re-queue cache: an identical graph on unchanged inputs reports the file it already wrote.
//!
//! Like ComfyUI's cache, the key of a save node is its class and literal inputs plus, through
//! its links, the same for every ancestor — node ids do not matter, and neither does the
//! workflow that is only stored as metadata. Unlike ComfyUI, the key also covers each input
//! file's size and modification time (a checkpoint replaced under the same name runs again) and
//! the precision setting, and a hit counts only while the earlier output still exists.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;

use crate::format::pyjson;
use crate::graph::{Prompt, PromptInput};
use crate::model::ModelFolders;
use crate::nodes::{Choices, InputKind, Registry};

use super::{Precision, SavedFile};

/// Signatures of save nodes → the files they wrote, and the networks the last job built. Lives
/// as long as the worker.
#[derive(Debug, Default)]
pub struct RunCache {
    done: HashMap<u64, Vec<SavedFile>>,
    pub networks: super::images::NetworkCache,
}

impl RunCache {
    /// The earlier files for this signature, if every one of them still exists.
    pub fn lookup(&self, signature: u64) -> Option<Vec<SavedFile>> {
        let files = self.done.get(&signature)?;
        files.iter().all(|f| f.path.is_file()).then(|| {
            files
                .iter()
                .map(|f| SavedFile {
                    cached: true,
                    ..f.clone()
                })
                .collect()
        })
    }

    pub fn insert(&mut self, signature: u64, files: Vec<SavedFile>) {
        self.done.insert(signature, files);
    }
}

/// The signature of output node `id` of a (validated) prompt, run with `precision` and (for
/// image outputs) `first_image_only`.
pub fn signature(
    prompt: &Prompt,
    id: &str,
    folders: &ModelFolders,
    precision: Precision,
    first_image_only: bool,
    metadata: &super::SaveMetadata,
) -> u64 {
    let mut h = DefaultHasher::new();
    precision.hash(&mut h);
    first_image_only.hash(&mut h);
    // Other metadata, another file (the workflow itself stays out: see the module docs).
    metadata.hash(&mut h);
    let mut memo = HashMap::new();
    node_signature(prompt, id, folders, &mut memo, 0).hash(&mut h);
    h.finish()
}

fn node_signature(
    prompt: &Prompt,
    id: &str,
    folders: &ModelFolders,
    memo: &mut HashMap<String, u64>,
    depth: usize,
) -> u64 {
    if let Some(&s) = memo.get(id) {
        return s;
    }
    let mut h = DefaultHasher::new();
    let Some(node) = prompt.get(id) else {
        return 0;
    };
    node.class_type.hash(&mut h);
    let schema = Registry::builtin().get(&node.class_type);
    let mut inputs: Vec<&(String, PromptInput)> = node.inputs.iter().collect();
    inputs.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, value) in inputs {
        name.hash(&mut h);
        match value {
            PromptInput::Value(v) => {
                pyjson::dumps(v).hash(&mut h);
                // A model file: its identity on disk is part of the input.
                if let Some(InputKind::Combo(Choices::ModelFolder(kind))) =
                    schema.and_then(|s| s.input(name)).map(|i| &i.kind)
                {
                    file_identity(folders.resolve(kind, &pyjson::py_str(v))).hash(&mut h);
                }
            }
            PromptInput::Link { node: from, slot } => {
                slot.hash(&mut h);
                if depth < 10_000 {
                    node_signature(prompt, from, folders, memo, depth + 1).hash(&mut h);
                }
            }
        }
    }
    // Ordered kwargs matter for block merges (the first ratio is the default).
    for (name, _) in &node.inputs {
        name.hash(&mut h);
    }
    let s = h.finish();
    memo.insert(id.to_owned(), s);
    s
}

fn file_identity(path: Option<PathBuf>) -> Option<(PathBuf, u64, Option<std::time::SystemTime>)> {
    let path = path?;
    let meta = std::fs::metadata(&path).ok()?;
    Some((path, meta.len(), meta.modified().ok()))
}
