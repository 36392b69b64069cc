//! Model folders, laid out and searched the way ComfyUI does.
//!
//! A base directory holds `models/<kind>/` and `output/`. Each kind (checkpoints, vae, loras, …)
//! has an ordered list of folders: the defaults (with ComfyUI's aliases: `text_encoders` also
//! searches `models/clip`, `diffusion_models` also `models/unet`), then any from
//! `extra_model_paths.yaml` (an `is_default` section goes first), then `output/<kind>` so saved
//! merges can be loaded again under their bare names.
//!
//! Names are relative paths with `/` whatever the OS (`sub/model.safetensors`); a name with `..`,
//! a root, a drive letter or a NUL can never resolve, so a workflow cannot reach outside the
//! folders. Listings are recursive, follow symlinks (guarding against loops), skip `.git` and
//! are sorted.

use std::collections::{BTreeMap, HashSet};
use std::path::{Component as PathComponent, Path, PathBuf};

/// File extensions ComfyUI accepts in model folders (compared case-insensitively).
pub const MODEL_EXTENSIONS: [&str; 8] = [
    "ckpt",
    "pt",
    "pt2",
    "bin",
    "pth",
    "safetensors",
    "pkl",
    "sft",
];

/// Folder kinds every installation has, with their default subfolders of `models/`.
const DEFAULT_KINDS: [(&str, &[&str]); 7] = [
    ("checkpoints", &["checkpoints"]),
    ("vae", &["vae"]),
    ("loras", &["loras"]),
    ("diffusion_models", &["unet", "diffusion_models"]),
    ("text_encoders", &["text_encoders", "clip"]),
    ("clip_vision", &["clip_vision"]),
    ("embeddings", &["embeddings"]),
];

/// The folder kind of LoadImage's images (`<base>/input`).
pub const INPUT_KIND: &str = "input";

/// Image files LoadImage lists (ComfyUI lists any image; Amalgam decodes PNG and says so for
/// the others).
const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "bmp"];

/// Deepest folder nesting a listing descends into.
const MAX_DEPTH: usize = 32;

/// Why the folder configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("cannot read {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("invalid extra model paths file: {problem}: {}", path.display())]
    Yaml { path: PathBuf, problem: String },
}

/// Where models are read from and outputs written to.
#[derive(Clone, Debug)]
pub struct ModelFolders {
    base_dir: PathBuf,
    output_dir: PathBuf,
    kinds: BTreeMap<String, Vec<PathBuf>>,
}

/// Maps ComfyUI's legacy folder names to current ones.
fn canonical_kind(kind: &str) -> &str {
    match kind {
        "unet" => "diffusion_models",
        "clip" => "text_encoders",
        other => other,
    }
}

impl ModelFolders {
    /// Folders under `base_dir`, with optional overrides for `models/` and `output/`.
    pub fn new(base_dir: &Path, models_dir: Option<&Path>, output_dir: Option<&Path>) -> Self {
        let models = models_dir.map_or_else(|| base_dir.join("models"), Path::to_owned);
        let output_dir = output_dir.map_or_else(|| base_dir.join("output"), Path::to_owned);
        let kinds = DEFAULT_KINDS
            .iter()
            .map(|(kind, subs)| {
                let mut dirs: Vec<PathBuf> = subs.iter().map(|s| models.join(s)).collect();
                dirs.push(output_dir.join(kind));
                ((*kind).to_owned(), dirs)
            })
            .collect();
        let mut folders = ModelFolders {
            base_dir: base_dir.to_owned(),
            output_dir,
            kinds,
        };
        // LoadImage's images: ComfyUI's `input/` folder, beside `models/`.
        folders
            .kinds
            .insert(INPUT_KIND.to_owned(), vec![base_dir.join("input")]);
        folders
    }

    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// The output folder (save nodes write below it, never outside).
    pub fn output_dir(&self) -> &Path {
        &self.output_dir
    }

    /// ComfyUI's temporary folder (`<base>/temp`), where PreviewImage writes.
    pub fn temp_dir(&self) -> PathBuf {
        self.base_dir.join("temp")
    }

    /// The folders searched for `kind`, in order.
    pub fn folders(&self, kind: &str) -> &[PathBuf] {
        self.kinds
            .get(canonical_kind(kind))
            .map_or(&[], Vec::as_slice)
    }

    /// The first folder of `kind`: where new files of that kind (samples, copies) go.
    pub fn primary(&self, kind: &str) -> Option<&Path> {
        self.folders(kind).first().map(PathBuf::as_path)
    }

    /// The folder configuration of a base directory, as both the app and the command line
    /// build it: `<base>/models/…` and `<base>/output` (or the given overrides), then
    /// `<base>/extra_model_paths.yaml` when it exists, then each of `extra` in order — ComfyUI's
    /// order (its own file first, then `--extra-model-paths-config`). A file that cannot be read
    /// adds nothing and its error is returned beside the folders, in that order, so every caller
    /// resolves a `ckpt_name` to the same file.
    pub fn from_config(
        base: &Path,
        models_dir: Option<&Path>,
        output_dir: Option<&Path>,
        extra: &[PathBuf],
    ) -> (ModelFolders, Vec<FolderError>) {
        let mut folders = ModelFolders::new(base, models_dir, output_dir);
        let default_yaml = base.join("extra_model_paths.yaml");
        let mut problems = Vec::new();
        for yaml in default_yaml
            .is_file()
            .then_some(&default_yaml)
            .into_iter()
            .chain(extra)
        {
            if let Err(e) = folders.add_extra_paths_file(yaml) {
                problems.push(e);
            }
        }
        (folders, problems)
    }

    /// Adds the folders of an `extra_model_paths.yaml` file (ComfyUI's format).
    pub fn add_extra_paths_file(&mut self, yaml_path: &Path) -> Result<(), FolderError> {
        let text = std::fs::read_to_string(yaml_path).map_err(|error| FolderError::Io {
            path: yaml_path.to_owned(),
            error,
        })?;
        let yaml_dir = yaml_path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_owned);
        for (kind, dirs, is_default) in
            parse_extra_paths(&text, &yaml_dir).map_err(|problem| FolderError::Yaml {
                path: yaml_path.to_owned(),
                problem,
            })?
        {
            let list = self.kinds.entry(kind).or_default();
            if is_default {
                for (i, d) in dirs.into_iter().enumerate() {
                    list.insert(i, d);
                }
            } else {
                // Keep output/<kind> last, as ComfyUI appends it after the yaml paths.
                let at = list
                    .iter()
                    .position(|d| d.starts_with(&self.output_dir))
                    .unwrap_or(list.len());
                for (i, d) in dirs.into_iter().enumerate() {
                    list.insert(at + i, d);
                }
            }
        }
        Ok(())
    }

    /// All model files of `kind`, as sorted `/`-separated names relative to their folder. A name
    /// found in several folders is listed once (the first folder wins, as in resolution).
    pub fn list(&self, kind: &str) -> Vec<String> {
        let mut names = std::collections::BTreeSet::new();
        let extensions: &[&str] = if kind == INPUT_KIND {
            &IMAGE_EXTENSIONS
        } else {
            &MODEL_EXTENSIONS
        };
        for dir in self.folders(kind) {
            let mut visited = HashSet::new();
            walk(dir, "", 0, extensions, &mut visited, &mut names);
        }
        names.into_iter().collect()
    }

    /// The file a model name refers to, or `None` if the name is unsafe or not found.
    pub fn resolve(&self, kind: &str, name: &str) -> Option<PathBuf> {
        let rel = safe_relative(name)?;
        self.folders(kind)
            .iter()
            .map(|dir| dir.join(&rel))
            .find(|p| p.is_file())
    }
}

/// Turns a model name into a relative path, refusing anything that could leave its folder.
pub fn safe_relative(name: &str) -> Option<PathBuf> {
    if name.is_empty() || name.contains('\0') {
        return None;
    }
    let normalised = name.replace('\\', "/");
    let bytes = normalised.as_bytes();
    if bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic() {
        return None; // C:… drive letters
    }
    let path = Path::new(&normalised);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            PathComponent::Normal(part) => out.push(part),
            PathComponent::CurDir => {}
            PathComponent::ParentDir | PathComponent::RootDir | PathComponent::Prefix(_) => {
                return None;
            }
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

fn has_extension(name: &str, extensions: &[&str]) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(_, ext)| extensions.iter().any(|e| e.eq_ignore_ascii_case(ext)))
}

fn walk(
    dir: &Path,
    rel: &str,
    depth: usize,
    extensions: &[&str],
    visited: &mut HashSet<PathBuf>,
    names: &mut std::collections::BTreeSet<String>,
) {
    if depth > MAX_DEPTH {
        return;
    }
    // Following symlinks (as ComfyUI does) could loop; a canonical path is visited once.
    let Ok(canonical) = dir.canonicalize() else {
        return;
    };
    if !visited.insert(canonical) {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(file_name) = entry.file_name().into_string() else {
            continue; // names that are not UTF-8 cannot be written into a workflow
        };
        if file_name == ".git" || file_name.starts_with(crate::format::safetensors::TEMP_PREFIX) {
            continue;
        }
        let path = entry.path();
        let name = if rel.is_empty() {
            file_name.clone()
        } else {
            format!("{rel}/{file_name}")
        };
        if path.is_dir() {
            walk(&path, &name, depth + 1, extensions, visited, names);
        } else if path.is_file() && has_extension(&file_name, extensions) {
            names.insert(name);
        }
    }
}

type ExtraPaths = Vec<(String, Vec<PathBuf>, bool)>;

/// Parses ComfyUI's `extra_model_paths.yaml`: named sections, each with an optional
/// `base_path` and `is_default`, and `<kind>: <path or multi-line paths>` entries.
///
/// Read from the parser's events rather than through a document tree: a tree would let a small
/// hostile file grow large (every `{a: b}` in a flow list becomes a hash map, and aliases are
/// copied where used), while only two levels of plain text matter here. Deeper structures are
/// skipped without being kept; aliases are refused.
pub(crate) fn parse_extra_paths(text: &str, yaml_dir: &Path) -> Result<ExtraPaths, String> {
    use yaml_rust2::parser::{Event, Parser};
    let mut parser = Parser::new_from_str(text);
    let mut next = move || -> Result<Event, String> {
        match parser.next_token() {
            Ok((Event::Alias(_), mark)) => Err(format!(
                "line {}: aliases (*name) are not supported here",
                mark.line()
            )),
            Ok((e, _)) => Ok(e),
            Err(e) => Err(e.to_string()),
        }
    };
    // Skips the rest of a collection whose start was just read, keeping nothing.
    fn skip(next: &mut impl FnMut() -> Result<Event, String>) -> Result<(), String> {
        let mut depth = 1usize;
        while depth > 0 {
            match next()? {
                Event::SequenceStart(..) | Event::MappingStart(..) => depth += 1,
                Event::SequenceEnd | Event::MappingEnd => depth -= 1,
                Event::StreamEnd => return Err("the file ends inside a list or map".into()),
                _ => {}
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    let top = loop {
        match next()? {
            Event::StreamStart | Event::DocumentStart | Event::Nothing => {}
            Event::StreamEnd => return Ok(out),
            e => break e,
        }
    };
    match top {
        Event::MappingStart(..) => {}
        Event::Scalar(ref v, style, ..) if plain_value(v, style) == Plain::Null => return Ok(out),
        _ => return Err("the top level must be a map of named sections".into()),
    }
    loop {
        let section_name = match next()? {
            Event::MappingEnd => break,
            Event::Scalar(name, ..) => name,
            _ => return Err("section names must be plain text".into()),
        };
        match next()? {
            Event::MappingStart(..) => {}
            Event::Scalar(ref v, style, ..) if plain_value(v, style) == Plain::Null => continue,
            Event::SequenceStart(..) | Event::Scalar(..) => {
                return Err(format!("section {section_name:?} must be a map"));
            }
            _ => return Err(format!("section {section_name:?} is malformed")),
        }
        // (key, Some(text) for a string value, None for anything else)
        let mut entries: Vec<(String, Option<String>, Plain)> = Vec::new();
        loop {
            let key = match next()? {
                Event::MappingEnd => break,
                Event::Scalar(k, ..) => Some(k),
                Event::SequenceStart(..) | Event::MappingStart(..) => {
                    skip(&mut next)?;
                    None
                }
                _ => return Err(format!("section {section_name:?} is malformed")),
            };
            let (text, plain) = match next()? {
                Event::Scalar(v, style, ..) => {
                    let plain = plain_value(&v, style);
                    (Some(v), plain)
                }
                Event::SequenceStart(..) | Event::MappingStart(..) => {
                    skip(&mut next)?;
                    (None, Plain::Other)
                }
                _ => return Err(format!("section {section_name:?} is malformed")),
            };
            if let Some(key) = key {
                entries.push((key, text, plain));
            }
        }
        let mut base: Option<PathBuf> = None;
        let mut is_default = false;
        for (k, v, plain) in &entries {
            match (k.as_str(), v, plain) {
                ("base_path", Some(s), Plain::Text) => {
                    let p = PathBuf::from(expand(s));
                    base = Some(if p.is_absolute() { p } else { yaml_dir.join(p) });
                }
                ("is_default", _, Plain::Bool(b)) => is_default = *b,
                _ => {}
            }
        }
        let root = base.unwrap_or_else(|| yaml_dir.to_owned());
        for (kind, v, plain) in entries {
            if kind == "base_path" || kind == "is_default" {
                continue;
            }
            let (Some(paths), Plain::Text) = (v, plain) else {
                return Err(format!(
                    "{section_name}.{kind} must be a path or a block of paths"
                ));
            };
            let dirs = paths
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let p = PathBuf::from(expand(l));
                    if p.is_absolute() { p } else { root.join(p) }
                })
                .collect();
            out.push((canonical_kind(&kind).to_owned(), dirs, is_default));
        }
    }
    Ok(out)
}

/// What a YAML scalar means under the YAML 1.2 core schema (what a document loader would have
/// made of it): quoted and block scalars are always text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plain {
    Null,
    Bool(bool),
    /// A number, or a collection.
    Other,
    Text,
}

fn plain_value(v: &str, style: yaml_rust2::scanner::TScalarStyle) -> Plain {
    if style != yaml_rust2::scanner::TScalarStyle::Plain {
        return Plain::Text;
    }
    match v {
        "" | "~" | "null" | "Null" | "NULL" => Plain::Null,
        "true" | "True" | "TRUE" => Plain::Bool(true),
        "false" | "False" | "FALSE" => Plain::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "-.inf" | ".nan" | ".NaN" | ".NAN" => Plain::Other,
        _ if v.parse::<i64>().is_ok()
            || (v.starts_with("0x") && i64::from_str_radix(&v[2..], 16).is_ok())
            || (v.starts_with("0o") && i64::from_str_radix(&v[2..], 8).is_ok())
            || (v.bytes().any(|b| b.is_ascii_digit()) && v.parse::<f64>().is_ok()) =>
        {
            Plain::Other
        }
        _ => Plain::Text,
    }
}

fn expand(s: &str) -> String {
    let s = match s.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => match std::env::var("HOME") {
            Ok(home) => format!("{home}{rest}"),
            Err(_) => s.to_owned(),
        },
        _ => s.to_owned(),
    };
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, tail) = if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(end) => (&inner[..end], &inner[end + 1..]),
                None => ("", after),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        match std::env::var(name) {
            Ok(v) if !name.is_empty() => out.push_str(&v),
            _ => out.push_str(&rest[i..rest.len() - tail.len()]),
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_names_never_resolve() {
        for bad in [
            "../x.safetensors",
            "a/../../x",
            "/etc/passwd",
            "C:\\x.ckpt",
            "c:x",
            "a\0b",
            "",
            ".",
        ] {
            assert_eq!(safe_relative(bad), None, "{bad:?}");
        }
        assert_eq!(
            safe_relative("sub\\m.safetensors"),
            Some(PathBuf::from("sub/m.safetensors"))
        );
        assert_eq!(safe_relative("./m.ckpt"), Some(PathBuf::from("m.ckpt")));
    }

    #[test]
    fn lists_recursively_sorted_with_slashes_and_resolves() {
        let base = tempfile::tempdir().expect("tmp");
        let folders = ModelFolders::new(base.path(), None, None);
        let ck = base.path().join("models/checkpoints");
        std::fs::create_dir_all(ck.join("sub/.git")).expect("mkdir");
        for f in [
            "b.safetensors",
            "A.CKPT",
            "sub/c.sft",
            "notes.txt",
            "sub/.git/x.ckpt",
        ] {
            std::fs::write(ck.join(f), b"x").expect("write");
        }
        std::fs::create_dir_all(base.path().join("output/checkpoints")).expect("mkdir");
        std::fs::write(
            base.path()
                .join("output/checkpoints/ComfyUI_00001_.safetensors"),
            b"x",
        )
        .expect("write");
        #[cfg(unix)]
        std::os::unix::fs::symlink(&ck, ck.join("sub/loop")).expect("symlink loop");
        assert_eq!(
            folders.list("checkpoints"),
            vec![
                "A.CKPT",
                "ComfyUI_00001_.safetensors",
                "b.safetensors",
                "sub/c.sft"
            ]
        );
        assert_eq!(
            folders.resolve("checkpoints", "sub\\c.sft"),
            Some(ck.join("sub/c.sft"))
        );
        assert_eq!(
            folders.resolve("checkpoints", "../checkpoints/b.safetensors"),
            None
        );
        assert_eq!(folders.resolve("checkpoints", "missing.ckpt"), None);
        // Legacy alias.
        assert_eq!(folders.folders("clip"), folders.folders("text_encoders"));
    }

    #[test]
    fn hostile_or_odd_yaml_is_refused_or_skipped_not_expanded() {
        let parse = |t: &str| parse_extra_paths(t, Path::new("/y"));
        // Billion laughs: aliases are refused before anything is copied.
        let mut laughs = "s:\n  a: &a [x, x, x, x, x, x, x, x, x]\n".to_owned();
        for i in 0..9 {
            laughs += &format!(
                "  b{i}: &b{i} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n",
                p = if i == 0 {
                    "a".to_owned()
                } else {
                    format!("b{}", i - 1)
                }
            );
        }
        let err = parse(&laughs).expect_err("aliases");
        assert!(err.contains("aliases"), "{err}");
        // Collections where paths are expected are refused by name; elsewhere they are skipped.
        let err = parse("s:\n  checkpoints: [a, {b: c}]\n").expect_err("list");
        assert_eq!(err, "s.checkpoints must be a path or a block of paths");
        let ok = parse("s:\n  ? [odd, key]\n  : 1\n  loras: l\n").expect("skipped");
        assert_eq!(
            ok,
            vec![("loras".to_owned(), vec![PathBuf::from("/y/l")], false)]
        );
        // Numbers and booleans are not paths; quoted they are.
        assert!(parse("s:\n  vae: 12\n").is_err());
        assert!(parse("s:\n  vae: true\n").is_err());
        let ok = parse("s:\n  vae: '12'\n  is_default: TRUE\n").expect("quoted");
        assert_eq!(
            ok,
            vec![("vae".to_owned(), vec![PathBuf::from("/y/12")], true)]
        );
        assert_eq!(parse("").expect("empty"), vec![]);
        assert_eq!(parse("~").expect("null"), vec![]);
        assert!(parse("- a").is_err());
    }

    #[test]
    fn reads_comfyui_extra_model_paths_yaml() {
        let base = tempfile::tempdir().expect("tmp");
        let yaml = base.path().join("extra_model_paths.yaml");
        std::fs::write(
            &yaml,
            "a111:\n    base_path: webui/\n    checkpoints: models/Stable-diffusion\n    vae: models/VAE\n    loras: |\n         models/Lora\n         models/LyCORIS\n    unet: models/unet\nfirst:\n    is_default: true\n    checkpoints: /abs/ckpts\n",
        )
        .expect("write");
        let mut folders = ModelFolders::new(base.path(), None, None);
        folders.add_extra_paths_file(&yaml).expect("parse");
        let ck = folders.folders("checkpoints");
        assert_eq!(ck[0], PathBuf::from("/abs/ckpts"));
        assert_eq!(ck[1], base.path().join("models/checkpoints"));
        assert_eq!(ck[2], base.path().join("webui/models/Stable-diffusion"));
        assert_eq!(ck[3], base.path().join("output/checkpoints"));
        let loras = folders.folders("loras");
        assert!(loras.contains(&base.path().join("webui/models/Lora")));
        assert!(loras.contains(&base.path().join("webui/models/LyCORIS")));
        assert!(
            folders
                .folders("diffusion_models")
                .contains(&base.path().join("webui/models/unet"))
        );

        std::fs::write(&yaml, "a: [1, 2").expect("write");
        let err = folders.add_extra_paths_file(&yaml).expect_err("bad yaml");
        assert!(err.to_string().contains("extra_model_paths.yaml"), "{err}");
        std::fs::write(&yaml, "a:\n  checkpoints: [x]\n").expect("write");
        assert!(folders.add_extra_paths_file(&yaml).is_err());
    }

    /// Two extra paths files that both name a folder holding `x.safetensors`: the base's own
    /// file is read first (ComfyUI's order), so its folder wins, whatever order a caller lists
    /// the explicit files in; a file that cannot be read is reported and the rest still apply.
    #[test]
    fn the_base_yaml_comes_first_and_problems_are_returned_beside_the_folders() {
        let base = tempfile::tempdir().expect("tmp");
        let b = base.path();
        for dir in ["from-default", "from-explicit"] {
            std::fs::create_dir_all(b.join(dir)).expect("mkdir");
            std::fs::write(b.join(dir).join("x.safetensors"), b"x").expect("write");
        }
        std::fs::write(
            b.join("extra_model_paths.yaml"),
            "d:\n    checkpoints: from-default\n",
        )
        .expect("write");
        let explicit = b.join("explicit.yaml");
        std::fs::write(&explicit, "e:\n    checkpoints: from-explicit\n").expect("write");
        let missing = b.join("missing.yaml");
        let (folders, problems) =
            ModelFolders::from_config(b, None, None, &[missing.clone(), explicit.clone()]);
        assert_eq!(
            folders.resolve("checkpoints", "x.safetensors"),
            Some(b.join("from-default/x.safetensors"))
        );
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].to_string().contains("missing.yaml"),
            "{}",
            problems[0]
        );
        let ck = folders.folders("checkpoints");
        let at = |d: &str| ck.iter().position(|p| *p == b.join(d));
        let (first, second) = (at("from-default"), at("from-explicit"));
        assert!(
            first.expect("default") < second.expect("explicit"),
            "{ck:?}"
        );
    }

    #[test]
    fn expands_home_and_variables() {
        // SAFETY-free: only reads variables that the test process surely has.
        let home = std::env::var("HOME").unwrap_or_default();
        assert_eq!(expand("~/m"), format!("{home}/m"));
        assert_eq!(expand("$HOME/m"), format!("{home}/m"));
        assert_eq!(expand("${HOME}/m"), format!("{home}/m"));
        assert_eq!(
            expand("$AMALGAM_SURELY_UNSET_VAR/m"),
            "$AMALGAM_SURELY_UNSET_VAR/m"
        );
    }
}
