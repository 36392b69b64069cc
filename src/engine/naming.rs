//! Output file names exactly as ComfyUI's `get_save_image_path` makes them (reference §2.1).
//!
//! `filename_prefix` gets `%year%`, `%month%`, `%day%`, `%hour%`, `%minute%`, `%second%` (local
//! time, all but the year zero-padded to 2 digits) and `%width%`/`%height%` (0 for model savers)
//! substituted, is split into a subfolder and a file name, and the counter is one more than the
//! highest `<name>_<int>…` among *all* files of that folder (non-recursive, any extension). The
//! file is `<output>/<subfolder>/<name>_<NNNNN>_.safetensors`.
//!
//! A prefix that would leave the output folder (`..`, an absolute path, a drive letter) is refused
//! with ComfyUI's message; so is a NUL byte. `\` counts as a separator on every OS, so a workflow
//! made on Windows saves to the same subfolder everywhere.

use std::path::{Component, Path, PathBuf};

use chrono::{Datelike, Local, Timelike};

/// Why an output name could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NamingError {
    #[error(
        "**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: {full}\n output_dir: {output}"
    )]
    OutsideOutput { full: String, output: String },
    #[error("filename_prefix {0:?} contains a NUL byte")]
    Nul(String),
    #[error("filename_prefix is empty")]
    Empty,
    #[error(
        "refusing to save into {}: a symlink takes it to {}, outside the output folder {} (point the output folder at the real location instead)",
        folder.display(), target.display(), output.display()
    )]
    SymlinkOutside {
        folder: PathBuf,
        target: PathBuf,
        output: PathBuf,
    },
}

/// Checks that `folder` (below `output_dir`, perhaps not created yet) really is inside the
/// output folder once symlinks are followed: its nearest existing ancestor must resolve to a
/// place under the resolved output folder. The output folder itself may be a symlink.
pub fn check_inside_output(folder: &Path, output_dir: &Path) -> Result<(), NamingError> {
    let Ok(output) = output_dir.canonicalize() else {
        return Ok(()); // not created yet: nothing below it can be a symlink either
    };
    let mut existing = folder;
    while std::fs::symlink_metadata(existing).is_err() {
        match existing.parent() {
            Some(p) => existing = p,
            None => return Ok(()),
        }
    }
    // A dangling symlink does not resolve; treat it as leading nowhere safe.
    let target = existing
        .canonicalize()
        .unwrap_or_else(|_| std::fs::read_link(existing).unwrap_or_else(|_| existing.to_owned()));
    if target.starts_with(&output) {
        Ok(())
    } else {
        Err(NamingError::SymlinkOutside {
            folder: folder.to_owned(),
            target,
            output,
        })
    }
}

/// Where one saved file goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputName {
    pub folder: PathBuf,
    /// The file-name part of the prefix (after substitution), e.g. `ComfyUI`.
    pub filename: String,
    /// The subfolder relative to the output folder (`checkpoints`), `/`-separated.
    pub subfolder: String,
    pub counter: i64,
}

impl OutputName {
    /// `<filename>_<counter:05>_.safetensors`.
    pub fn file_name(&self) -> String {
        format!("{}_{:05}_.safetensors", self.filename, self.counter)
    }

    /// Image `index` of a batch saved by SaveImage: `%batch_num%` in the name replaced by the
    /// index, the counter advanced by it, `.png`.
    pub fn image_file_name(&self, index: usize) -> String {
        format!(
            "{}_{:05}_.png",
            self.filename.replace("%batch_num%", &index.to_string()),
            self.counter + index as i64
        )
    }
    pub fn path(&self) -> PathBuf {
        self.folder.join(self.file_name())
    }
}

/// Substitutes ComfyUI's `%…%` tokens (local time; width and height are 0 for models).
pub fn substitute(prefix: &str) -> String {
    substitute_sized(prefix, 0, 0)
}

/// [`substitute`] with an image's width and height.
fn substitute_sized(prefix: &str, width: usize, height: usize) -> String {
    if !prefix.contains('%') {
        return prefix.to_owned();
    }
    let now = Local::now();
    prefix
        .replace("%width%", &width.to_string())
        .replace("%height%", &height.to_string())
        .replace("%year%", &now.year().to_string())
        .replace("%month%", &format!("{:02}", now.month()))
        .replace("%day%", &format!("{:02}", now.day()))
        .replace("%hour%", &format!("{:02}", now.hour()))
        .replace("%minute%", &format!("{:02}", now.minute()))
        .replace("%second%", &format!("{:02}", now.second()))
}

/// Splits a prefix into (subfolder, filename) after normalising it, refusing anything that
/// would leave the output folder.
fn split(prefix: &str, output_dir: &Path) -> Result<(Vec<String>, String), NamingError> {
    if prefix.contains('\0') {
        return Err(NamingError::Nul(prefix.to_owned()));
    }
    let unified = prefix.replace('\\', "/");
    let outside = || NamingError::OutsideOutput {
        full: output_dir.join(&unified).display().to_string(),
        output: output_dir.display().to_string(),
    };
    let b = unified.as_bytes();
    if b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic() {
        return Err(outside());
    }
    // Like os.path.normpath: resolve `.` and `..` lexically; going above the root is outside.
    let mut parts: Vec<String> = Vec::new();
    for c in Path::new(&unified).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(outside());
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err(outside()),
        }
    }
    let filename = parts.pop().ok_or(NamingError::Empty)?;
    Ok((parts, filename))
}

/// The next free name for `prefix` below `output_dir` (the folder is created if needed).
pub fn next_output_name(prefix: &str, output_dir: &Path) -> Result<OutputName, NamingError> {
    next_name(&substitute(prefix), output_dir)
}

/// The next free name for a batch of images of `width × height` (`get_save_image_path`).
pub fn next_image_name(
    prefix: &str,
    output_dir: &Path,
    width: usize,
    height: usize,
) -> Result<OutputName, NamingError> {
    next_name(&substitute_sized(prefix, width, height), output_dir)
}

fn next_name(prefix: &str, output_dir: &Path) -> Result<OutputName, NamingError> {
    let (sub, filename) = split(prefix, output_dir)?;
    let mut folder = output_dir.to_owned();
    for s in &sub {
        folder.push(s);
    }
    let counter = next_counter(&folder, &filename);
    Ok(OutputName {
        folder,
        filename,
        subfolder: sub.join("/"),
        counter,
    })
}

/// ComfyUI's counter: 1 + the highest `int(f[len+1:].split('_')[0])` over files whose first
/// `len` characters equal the name and whose next character is `_` (unparsable digits count 0).
pub fn next_counter(folder: &Path, filename: &str) -> i64 {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return 1;
    };
    let len = filename.chars().count();
    let mut best: Option<i64> = None;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let head: String = name.chars().take(len).collect();
        let mut rest = name.chars().skip(len);
        if head != filename || rest.next() != Some('_') {
            continue;
        }
        let tail: String = rest.collect();
        let digits = tail.split('_').next().unwrap_or("");
        let n = py_int(digits).unwrap_or(0);
        best = Some(best.map_or(n, |b| b.max(n)));
    }
    best.map_or(1, |b| b + 1)
}

/// Python's `int(str)` for the counter digits.
fn py_int(s: &str) -> Option<i64> {
    let t = s.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    if t.is_empty()
        || !t
            .trim_start_matches('-')
            .chars()
            .all(|c| c.is_ascii_digit() || c == '_')
    {
        return None;
    }
    t.replace('_', "").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, name: &str) {
        std::fs::write(dir.join(name), b"").expect("touch");
    }

    #[test]
    fn counter_follows_comfyui() {
        let out = tempfile::tempdir().expect("tmp");
        let n = next_output_name("checkpoints/ComfyUI", out.path()).expect("name");
        assert_eq!(
            n.path(),
            out.path().join("checkpoints/ComfyUI_00001_.safetensors")
        );
        assert_eq!(n.subfolder, "checkpoints");
        let ck = out.path().join("checkpoints");
        std::fs::create_dir_all(&ck).expect("mkdir");
        touch(&ck, "ComfyUI_00001_.safetensors");
        assert_eq!(next_counter(&ck, "ComfyUI"), 2);
        // Any extension counts, as does a higher number from an image.
        touch(&ck, "ComfyUI_00007_.png");
        assert_eq!(next_counter(&ck, "ComfyUI"), 8);
        // `ComfyUI_clip_l_00009_` does not: "clip" is not an int (counts as 0).
        touch(&ck, "ComfyUI_clip_l_00009_.safetensors");
        assert_eq!(next_counter(&ck, "ComfyUI"), 8);
        // Names that merely start alike do not count.
        touch(&ck, "ComfyUIX_00050_.safetensors");
        touch(&ck, "Comfy_00060_.safetensors");
        assert_eq!(next_counter(&ck, "ComfyUI"), 8);
        // A file of an unrelated prefix yields counter 1 for it.
        assert_eq!(next_counter(&ck, "merge"), 1);
    }

    #[test]
    fn prefixes_outside_the_output_folder_are_refused() {
        let out = tempfile::tempdir().expect("tmp");
        for bad in [
            "../evil",
            "checkpoints/../../evil",
            "/etc/evil",
            "C:\\evil",
            "..\\..\\evil",
        ] {
            let e = next_output_name(bad, out.path()).expect_err(bad);
            assert!(
                e.to_string().starts_with(
                    "**** ERROR: Saving image outside the output folder is not allowed."
                ),
                "{bad}: {e}"
            );
        }
        assert!(matches!(
            next_output_name("a\0b", out.path()),
            Err(NamingError::Nul(_))
        ));
        assert!(matches!(
            next_output_name("", out.path()),
            Err(NamingError::Empty)
        ));
        // `..` that stays inside is fine, and `\` separates folders.
        let n = next_output_name("a/../b\\c", out.path()).expect("inside");
        assert_eq!(n.path(), out.path().join("b/c_00001_.safetensors"));
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_out_of_the_output_folder_are_refused() {
        let out = tempfile::tempdir().expect("tmp");
        let elsewhere = tempfile::tempdir().expect("tmp");
        let output = out.path().join("output");
        std::fs::create_dir_all(output.join("real")).expect("mkdir");
        std::os::unix::fs::symlink(elsewhere.path(), output.join("away")).expect("link");
        std::os::unix::fs::symlink(output.join("real"), output.join("inside")).expect("link");
        std::os::unix::fs::symlink("/nonexistent", output.join("dangling")).expect("link");
        // The output folder itself through a symlink is fine.
        std::os::unix::fs::symlink(&output, out.path().join("linked-output")).expect("link");
        let ok = |f: &Path, o: &Path| check_inside_output(f, o).is_ok();
        assert!(ok(&output.join("real/new/deeper"), &output));
        assert!(ok(&output.join("inside/new"), &output));
        assert!(ok(&output.join("not-yet"), &output));
        let linked = out.path().join("linked-output");
        assert!(ok(&linked.join("real"), &linked));
        for bad in ["away", "away/new/deeper", "dangling/x"] {
            let err = check_inside_output(&output.join(bad), &output).expect_err(bad);
            assert!(
                err.to_string().contains("outside the output folder"),
                "{err}"
            );
        }
    }

    #[test]
    fn date_tokens_are_substituted() {
        let s = substitute("m_%year%-%month%-%day%_%hour%%minute%%second%_%width%x%height%");
        let now = Local::now();
        assert!(
            s.starts_with(&format!("m_{}-{:02}-", now.year(), now.month())),
            "{s}"
        );
        assert!(s.ends_with("_0x0"), "{s}");
        assert!(!s.contains('%'));
        assert_eq!(substitute("plain"), "plain");
    }
}
