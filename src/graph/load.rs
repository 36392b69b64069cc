//! Reading a workflow from whatever file a user has: a ComfyUI PNG, UI workflow JSON, an API
//! prompt, or a `.safetensors` with the workflow in its metadata — recognised by content, not
//! by extension. An API prompt (or a PNG/checkpoint that only has one) is laid out into a
//! document, left to right by dependency depth.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::format::png::{self, PngError};
use crate::format::{ReadError, TensorFile};
use crate::nodes::{Registry, types};

use super::document::{Document, DocumentError, InputSlot, LoadReport, Node, NodeId, OutputSlot};
use super::edit::{Given, default_size, node_from_schema};
use super::prompt::{Prompt, PromptError, PromptInput};

/// Largest workflow JSON or PNG read (a big workflow is a few MiB).
pub const MAX_WORKFLOW_FILE_BYTES: u64 = 256 << 20;

/// What the workflow came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Png,
    UiJson,
    ApiJson,
    Safetensors,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Png => "png",
            SourceKind::UiJson => "workflow-json",
            SourceKind::ApiJson => "api-prompt-json",
            SourceKind::Safetensors => "safetensors",
        }
    }
}

/// A loaded workflow.
#[derive(Debug)]
pub struct Loaded {
    pub document: Document,
    pub source: SourceKind,
    /// True when the file had only an API prompt (the layout was computed).
    pub from_prompt: bool,
    pub report: LoadReport,
}

/// Why a file gave no workflow. Always names the file.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {}", path.display())]
pub struct LoadError {
    pub path: PathBuf,
    pub kind: LoadErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadErrorKind {
    #[error("cannot read file ({0})")]
    Io(std::io::Error),
    #[error("file is larger than {MAX_WORKFLOW_FILE_BYTES} bytes; not a workflow")]
    TooLarge,
    #[error("{0}")]
    Png(PngError),
    #[error("{0}")]
    Checkpoint(String),
    #[error("PNG has no ComfyUI workflow or prompt in its text chunks")]
    NoWorkflowInPng,
    #[error("checkpoint has no ComfyUI workflow or prompt in its metadata")]
    NoWorkflowInCheckpoint,
    #[error("{what} is not valid JSON: {error}")]
    Json { what: &'static str, error: String },
    #[error("{0}")]
    Document(DocumentError),
    #[error("{0}")]
    Prompt(PromptError),
    #[error(
        "not a workflow: expected a ComfyUI PNG, workflow or prompt JSON, or a .safetensors file"
    )]
    UnknownFormat,
}

from_printed_cause!(
    LoadErrorKind::Io(std::io::Error),
    LoadErrorKind::Png(PngError),
    LoadErrorKind::Document(DocumentError),
    LoadErrorKind::Prompt(PromptError),
);

/// Reads a workflow from a file of any supported kind.
pub fn load_file(path: &Path) -> Result<Loaded, LoadError> {
    let err = |kind| LoadError {
        path: path.to_owned(),
        kind,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.into()))?;
    if meta.is_dir() {
        return Err(err(LoadErrorKind::Io(std::io::Error::other(
            "is a directory",
        ))));
    }
    let mut head = [0u8; 9];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| err(e.into()))?;
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => return Err(err(e.into())),
            }
        }
        n
    };
    // A checkpoint is mapped, not read: only its header is touched, whatever its size. Its
    // first 8 bytes are the header length, which must fit in the file: JSON indented by one
    // space also has `{` at byte 8, but its first 8 bytes read as an absurd length.
    let header_len = u64::from_le_bytes([
        head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7],
    ]);
    if n == 9 && head[8] == b'{' && header_len <= meta.len().saturating_sub(8) {
        return load_checkpoint(path).map_err(err);
    }
    if meta.len() > MAX_WORKFLOW_FILE_BYTES {
        return Err(err(LoadErrorKind::TooLarge));
    }
    let bytes = std::fs::read(path).map_err(|e| err(e.into()))?;
    load_bytes(&bytes).map_err(err)
}

/// Reads a workflow from the bytes of a PNG or JSON file.
pub fn load_bytes(bytes: &[u8]) -> Result<Loaded, LoadErrorKind> {
    if png::is_png(bytes) {
        let chunks = png::text_chunks(bytes)?;
        return from_embedded(
            png::find_text(&chunks, "workflow"),
            png::find_text(&chunks, "prompt"),
            SourceKind::Png,
        )?
        .ok_or(LoadErrorKind::NoWorkflowInPng);
    }
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        // Python writes NaN / Infinity literals (`json.dump` of an API prompt); ComfyUI reads them.
        let (value, non_finite) =
            crate::format::pyjson::loads(bytes).map_err(|e| LoadErrorKind::Json {
                what: "file",
                error: e.to_string(),
            })?;
        return from_json_value(value, None, non_finite);
    }
    Err(LoadErrorKind::UnknownFormat)
}

fn load_checkpoint(path: &Path) -> Result<Loaded, LoadErrorKind> {
    let file = TensorFile::open(path)
        .map_err(|e: ReadError| LoadErrorKind::Checkpoint(e.kind.to_string()))?;
    let meta = file.metadata();
    let get = |k: &str| {
        meta.and_then(|m| m.iter().find(|(key, _)| key == k))
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    from_embedded(get("workflow"), get("prompt"), SourceKind::Safetensors)?
        .ok_or(LoadErrorKind::NoWorkflowInCheckpoint)
}

/// Workflow text wins over prompt text (as in the frontend).
fn from_embedded(
    workflow: Option<&str>,
    prompt: Option<&str>,
    source: SourceKind,
) -> Result<Option<Loaded>, LoadErrorKind> {
    let (text, what) = match (workflow, prompt) {
        (Some(w), _) => (w, "embedded workflow"),
        (None, Some(p)) => (p, "embedded prompt"),
        (None, None) => return Ok(None),
    };
    let (value, non_finite) =
        crate::format::pyjson::loads(text.as_bytes()).map_err(|e| LoadErrorKind::Json {
            what,
            error: e.to_string(),
        })?;
    from_json_value(value, Some(source), non_finite).map(Some)
}

/// `non_finite`: the text had Python's NaN / Infinity literals, which ComfyUI's backend reads
/// (an API prompt) but its frontend does not (a UI workflow: said in the report).
fn from_json_value(
    value: Value,
    source: Option<SourceKind>,
    non_finite: bool,
) -> Result<Loaded, LoadErrorKind> {
    if Prompt::looks_like(&value) {
        let prompt = Prompt::from_json(&value)?;
        let (document, report) = document_from_prompt(&prompt, Registry::builtin());
        return Ok(Loaded {
            document,
            source: source.unwrap_or(SourceKind::ApiJson),
            from_prompt: true,
            report,
        });
    }
    let (mut document, mut report) = Document::from_json(value)?;
    report
        .issues
        .extend(repair_widget_values(&mut document, Registry::builtin()));
    if non_finite {
        report.issues.push(super::document::LoadIssue {
            node: None,
            message: "the workflow has NaN or Infinity literals, which ComfyUI's frontend cannot read; they were read as Python reads them (as the strings \"NaN\" / \"Infinity\")".into(),
        });
    }
    Ok(Loaded {
        document,
        source: source.unwrap_or(SourceKind::UiJson),
        from_prompt: false,
        report,
    })
}

/// How many `widgets_values` entries a node of `schema` has: one per widget, plus the
/// `control_after_generate` companion of a seed.
fn widget_count(schema: &crate::nodes::NodeSchema) -> usize {
    schema.widget_slots().last().map_or(0, |(pos, spec)| {
        let control = matches!(
            spec.kind,
            crate::nodes::InputKind::Int {
                control_after_generate: true,
                ..
            }
        );
        pos + 1 + usize::from(control)
    })
}

/// Rebuilds a positional `widgets_values` list whose length does not match its node's
/// definition (a file from another version of the node) from `widgets_values_named`, which 2026
/// frontends write beside it — when that map names every widget. Both stay in the document;
/// entries past the definition's widgets (an upload button's value) are kept at the end. Each
/// repair is reported.
pub fn repair_widget_values(
    doc: &mut Document,
    registry: &Registry,
) -> Vec<super::document::LoadIssue> {
    let mut issues = Vec::new();
    for node in &mut doc.nodes {
        let Some(schema) = registry.get(&node.type_) else {
            continue;
        };
        let Some(Value::Object(named)) = node.fields.get("widgets_values_named") else {
            continue;
        };
        let expected = widget_count(schema);
        let had = node.widget_values().len();
        if had == expected || expected == 0 {
            continue;
        }
        let mut repaired = Vec::with_capacity(expected);
        for (_, spec) in schema.widget_slots() {
            let Some(v) = named.get(&spec.name) else {
                repaired.clear();
                break;
            };
            repaired.push(v.clone());
            if matches!(
                spec.kind,
                crate::nodes::InputKind::Int {
                    control_after_generate: true,
                    ..
                }
            ) {
                repaired.push(
                    named
                        .get("control_after_generate")
                        .cloned()
                        .unwrap_or_else(|| Value::from("fixed")),
                );
            }
        }
        if repaired.len() != expected {
            continue;
        }
        repaired.extend(node.widget_values().iter().skip(expected).cloned());
        node.widgets_values = Some(Value::Array(repaired));
        issues.push(super::document::LoadIssue {
            node: Some(node.id),
            message: format!(
                "node #{} ({}): widgets_values had {had} entries for {expected} widgets; repaired from widgets_values_named",
                node.id, node.type_
            ),
        });
    }
    issues
}

/// Most output slots inferred for a node of unknown type from the links that use it.
const MAX_INFERRED_OUTPUTS: usize = 64;

/// Lays an API prompt out as a document: registered nodes get their schema's slots and widget
/// values; unknown ones get slots inferred from their links. Columns follow dependency depth.
pub fn document_from_prompt(prompt: &Prompt, registry: &Registry) -> (Document, LoadReport) {
    let mut doc = Document::new();
    let mut report = LoadReport::default();
    // Prompt ids may be strings ("12:3" inside subgraphs); give each node an integer id.
    let mut ids: std::collections::HashMap<&str, NodeId> = Default::default();
    let mut taken: std::collections::HashSet<NodeId> = Default::default();
    // A node without a type cannot be a document node (the document reader refuses one too);
    // links to it are reported as links to a missing node.
    for (pid, pnode) in &prompt.nodes {
        if pnode.class_type.is_empty() {
            report.issues.push(super::document::LoadIssue {
                node: None,
                message: format!("node {pid} has an empty class_type; skipped"),
            });
        }
    }
    let typed = || {
        prompt
            .nodes
            .iter()
            .filter(|(_, n)| !n.class_type.is_empty())
    };
    for (pid, _) in typed() {
        if let Ok(n) = pid.parse::<NodeId>()
            && n > 0
            && taken.insert(n)
        {
            ids.insert(pid.as_str(), n);
        }
    }
    let mut next = 1;
    for (pid, _) in typed() {
        if !ids.contains_key(pid.as_str()) {
            while taken.contains(&next) {
                next += 1;
            }
            taken.insert(next);
            ids.insert(pid.as_str(), next);
        }
    }
    let id_of = |pid: &str| ids.get(pid).copied();

    // Output slot counts that links ask of each node (for nodes whose schema is unknown). A
    // link's slot number is the file's word, so it is capped: no node has hundreds of outputs.
    let mut wanted_outputs: std::collections::HashMap<&str, usize> = Default::default();
    for (_, n) in &prompt.nodes {
        for (_, v) in &n.inputs {
            if let PromptInput::Link { node, slot } = v
                && *slot < MAX_INFERRED_OUTPUTS
            {
                let e = wanted_outputs.entry(node.as_str()).or_default();
                *e = (*e).max(slot + 1);
            }
        }
    }

    let depth = depths(prompt);
    let mut rows: std::collections::HashMap<usize, f64> = Default::default();
    for (pid, pnode) in &prompt.nodes {
        let Some(id) = id_of(pid) else { continue };
        let d = depth.get(pid.as_str()).copied().unwrap_or(0);
        let y = rows.entry(d).or_insert(0.0);
        let schema = registry.get(&pnode.class_type);
        let pos = [d as f64 * 380.0, *y];
        let mut widgets = Vec::new();
        let mut node = match schema {
            Some(schema) => {
                let mut node = node_from_schema(schema, id, pos, |name| match pnode.input(name) {
                    Some(PromptInput::Value(v)) => Given::Value(v),
                    Some(PromptInput::Link { .. }) => Given::Linked,
                    None => Given::Default,
                });
                // Outputs of a laid-out prompt are written unlinked as `"links": null`.
                node.outputs = schema
                    .outputs
                    .iter()
                    .map(|o| output_slot(o.name, o.type_name))
                    .collect();
                node
            }
            None => Node::new(id, &pnode.class_type, pos, default_size(pnode.inputs.len())),
        };
        *y += node.size.get().map_or(0.0, |s| s[1]) + 60.0;
        node.title.clone_from(&pnode.title);
        // An unknown type: its inputs as the prompt gives them, its outputs as links ask.
        if schema.is_none() {
            for (name, v) in &pnode.inputs {
                match v {
                    PromptInput::Link { .. } => node.inputs.push(InputSlot {
                        name: name.clone(),
                        type_: json!(types::ANY),
                        link: None,
                        fields: serde_json::Map::from_iter([("link".to_owned(), Value::Null)]),
                    }),
                    PromptInput::Value(v) => widgets.push(v.clone()),
                }
            }
            for i in 0..wanted_outputs.get(pid.as_str()).copied().unwrap_or(0) {
                node.outputs
                    .push(output_slot(if i == 0 { "output" } else { "" }, types::ANY));
            }
        }
        if !widgets.is_empty() {
            node.widgets_values = Some(Value::Array(widgets));
        }
        doc.add_node(node);
    }
    // Links to missing nodes are reported here; the others are made in one pass.
    let mut wanted = Vec::new();
    let mut asked = Vec::new();
    for (pid, pnode) in &prompt.nodes {
        let Some(target) = id_of(pid) else { continue };
        for (name, v) in &pnode.inputs {
            let PromptInput::Link { node, slot } = v else {
                continue;
            };
            let Some(origin) = id_of(node) else {
                report.issues.push(super::document::LoadIssue {
                    node: Some(target),
                    message: format!("input {name:?} of node {pid} links to missing node {node}; it is left unconnected"),
                });
                continue;
            };
            wanted.push((origin, *slot, target, name.as_str()));
            asked.push((pid, node));
        }
    }
    let made = doc.connect_all(&wanted);
    for ((made, (_, slot, target, name)), (pid, node)) in made.iter().zip(&wanted).zip(asked) {
        if made.is_none() {
            report.issues.push(super::document::LoadIssue {
                node: Some(*target),
                message: format!(
                    "input {name:?} of node {pid} links to missing output {slot} of node {node}"
                ),
            });
        }
    }
    (doc, report)
}

fn output_slot(name: &str, type_name: &str) -> OutputSlot {
    OutputSlot {
        name: name.to_owned(),
        type_: json!(type_name),
        links: None,
        fields: serde_json::Map::from_iter([("links".to_owned(), Value::Null)]),
    }
}

/// Longest path from a source to each node (cycles are cut).
fn depths(prompt: &Prompt) -> std::collections::HashMap<&str, usize> {
    // Longest path from a source, in one pass over a topological order (Kahn); nodes on a
    // cycle keep the depth reached from outside it. Linear in nodes and links.
    let mut depth: std::collections::HashMap<&str, usize> = prompt
        .nodes
        .iter()
        .map(|(id, _)| (id.as_str(), 0))
        .collect();
    let mut pending: std::collections::HashMap<&str, usize> = Default::default();
    let mut consumers: std::collections::HashMap<&str, Vec<&str>> = Default::default();
    for (id, n) in &prompt.nodes {
        for (_, v) in &n.inputs {
            if let PromptInput::Link { node, .. } = v
                && depth.contains_key(node.as_str())
            {
                *pending.entry(id.as_str()).or_default() += 1;
                consumers
                    .entry(node.as_str())
                    .or_default()
                    .push(id.as_str());
            }
        }
    }
    let mut ready: Vec<&str> = prompt
        .nodes
        .iter()
        .map(|(id, _)| id.as_str())
        .filter(|id| !pending.contains_key(id))
        .collect();
    while let Some(id) = ready.pop() {
        let d = depth.get(id).copied().unwrap_or(0);
        for &c in consumers.get(id).map(Vec::as_slice).unwrap_or_default() {
            if let Some(cd) = depth.get_mut(c) {
                *cd = (*cd).max(d + 1);
            }
            if let Some(p) = pending.get_mut(c) {
                *p -= 1;
                if *p == 0 {
                    ready.push(c);
                }
            }
        }
    }
    depth
}
