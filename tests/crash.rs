//! Crash safety of saves, with the real binary: killed at random points (SIGKILL), or running
//! out of space, a save never leaves a partial `.safetensors` in the output folder, its inputs
//! are untouched, and the temporary files a killed save leaves are removed on the next start.

// This binary uses only part of the shared fixtures.
#[allow(dead_code)]
#[path = "it/util.rs"]
mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use amalgam::format::DType;
use amalgam::model::layouts::{Layout, Scale};
use util::{ModelTree, amalgam, path_str, spec, stderr, write_layout};

/// Sample-size SD1.5 layout plus large extra UNet tensors, so a save takes long enough to be
/// interrupted in every phase (header, data, sync, rename).
fn big_checkpoint(path: &Path, seed: u64) {
    let extra: Vec<_> = (0..12)
        .map(|i| {
            spec(
                &format!("model.diffusion_model.zz_extra.{i}.weight"),
                DType::F16,
                &[2048, 2048],
            )
        })
        .collect();
    write_layout(path, &Layout::sd15(Scale::Sample), seed, &extra);
}

/// The shared model tree with two large checkpoints and a merge prompt file in its base.
struct Setup {
    tree: ModelTree,
    prompt: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let tree = ModelTree::new();
        let ck = tree.models("checkpoints");
        big_checkpoint(&ck.join("a.safetensors"), 1);
        big_checkpoint(&ck.join("b.safetensors"), 2);
        let prompt = tree.path().join("merge.json");
        let json = serde_json::json!({
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
            "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
            "3": {"class_type": "ModelMergeSimple",
                  "inputs": {"model1": ["1", 0], "model2": ["2", 0], "ratio": 0.3}},
            "4": {"class_type": "CheckpointSave", "inputs": {
                "model": ["3", 0], "clip": ["1", 1], "vae": ["1", 2],
                "filename_prefix": "checkpoints/crash"}}
        });
        std::fs::write(&prompt, json.to_string()).expect("write prompt");
        Setup { tree, prompt }
    }

    fn base(&self) -> &Path {
        self.tree.path()
    }

    fn output(&self) -> PathBuf {
        self.base().join("output/checkpoints")
    }

    fn command(&self) -> Command {
        let mut c = amalgam();
        c.args([
            "run",
            "--base-dir",
            path_str(self.base()),
            path_str(&self.prompt),
        ]);
        c
    }

    /// Starts the merge in the background, its output discarded.
    fn spawn_quiet(&self) -> std::process::Child {
        self.command()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn amalgam")
    }

    fn input_digests(&self) -> Vec<u64> {
        ["a", "b"]
            .iter()
            .map(|n| {
                let bytes = std::fs::read(
                    self.base()
                        .join(format!("models/checkpoints/{n}.safetensors")),
                )
                .expect("read input");
                fnv(&bytes)
            })
            .collect()
    }

    /// Files in the output folder: (finished checkpoints, temporary files).
    fn outputs(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let mut done = Vec::new();
        let mut temp = Vec::new();
        for e in std::fs::read_dir(self.output())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".amalgam-partial-") {
                temp.push(e.path());
            } else {
                done.push(e.path());
            }
        }
        done.sort();
        (done, temp)
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The tensor data of a saved checkpoint (everything after the header; metadata carries a date).
fn tensor_data(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).expect("read output");
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{} is not a complete safetensors file: {e}", path.display()));
    assert!(!st.names().is_empty());
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    bytes[8 + n..].to_vec()
}

#[test]
fn a_killed_save_leaves_no_partial_checkpoint_and_is_cleaned_up_next_start() {
    let s = Setup::new();
    let inputs = s.input_digests();

    // One complete run: the reference output and how long a save takes here.
    let started = Instant::now();
    let out = s.command().output().expect("run amalgam");
    let full = started.elapsed();
    assert!(out.status.success(), "{}", stderr(&out));
    let (done, temp) = s.outputs();
    assert_eq!((done.len(), temp.len()), (1, 0), "{done:?} {temp:?}");
    let reference = tensor_data(&done[0]);

    // Kill at seeded random points across the whole run (start-up, planning, writing, sync).
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut killed_mid_save = 0;
    // 12 in CI; AMALGAM_CRASH_KILLS=<n> for a longer run.
    let kills: usize = std::env::var("AMALGAM_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    for round in 0..kills {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let fraction = (state >> 11) as f64 / (1u64 << 53) as f64;
        let delay = full.mul_f64(0.05 + fraction * 1.0);
        let mut child = s.spawn_quiet();
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL on Unix
        let _ = child.wait();
        let (done, temp) = s.outputs();
        if !temp.is_empty() {
            killed_mid_save += 1;
        }
        for f in &done {
            assert_eq!(
                tensor_data(f),
                reference,
                "round {round} (killed after {delay:?}): {} differs from a complete save",
                f.display()
            );
        }
    }
    eprintln!("a save takes {full:?}; {killed_mid_save} of {kills} kills landed inside one");
    assert!(
        killed_mid_save >= kills / 4,
        "only {killed_mid_save} of {kills} kills landed inside a save; the test did not test much"
    );
    assert_eq!(s.input_digests(), inputs, "inputs changed");

    // The next start removes what the killed saves left (files younger than 2 s are spared, as
    // they may belong to a save that is just starting).
    std::thread::sleep(Duration::from_millis(2100));
    let out = s.command().output().expect("run amalgam");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("temporary file(s) left by an interrupted save"),
        "{}",
        stderr(&out)
    );
    let (done, temp) = s.outputs();
    assert!(temp.is_empty(), "left over: {temp:?}");
    for f in &done {
        assert_eq!(tensor_data(f), reference, "{}", f.display());
    }
}

#[test]
fn a_save_in_progress_is_not_taken_for_a_leftover() {
    let s = Setup::new();
    let mut child = s.spawn_quiet();
    // Wait until the first run's temporary file exists and is old enough to be a candidate.
    let deadline = Instant::now() + Duration::from_secs(60);
    let temp = loop {
        if let Some(t) = s.outputs().1.first().cloned() {
            break t;
        }
        assert!(Instant::now() < deadline, "no temporary file appeared");
        std::thread::sleep(Duration::from_millis(5));
    };
    // The save creates its file, then locks it; backdating in between would make a file that no
    // real save ever is (older than the grace period and unlocked). Wait for the lock first.
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&temp).expect("temp"));
    while !flock_held(ino) {
        assert!(Instant::now() < deadline, "the save never locked its file");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Backdate it past both age rules: only its lock says it is in use.
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    let f = std::fs::File::options()
        .append(true)
        .open(&temp)
        .expect("open temp");
    f.set_modified(old).expect("backdate");
    let removed = amalgam::engine::execute::clean_stray_temp_files(&s.base().join("output"));
    let status = child.wait().expect("wait");
    assert!(status.success());
    assert_eq!(removed, 0, "a live save's temporary file was removed");
    let (done, temp) = s.outputs();
    assert_eq!((done.len(), temp.len()), (1, 0));
    tensor_data(&done[0]);
}

/// Whether some process holds a `flock` on the file with inode `ino` (`/proc/locks` lists each
/// lock's `major:minor:inode`).
fn flock_held(ino: u64) -> bool {
    std::fs::read_to_string("/proc/locks")
        .expect("/proc/locks")
        .lines()
        .filter(|l| l.contains("FLOCK"))
        .filter_map(|l| {
            l.split_whitespace()
                .nth(5)?
                .rsplit(':')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .any(|i| i == ino)
}

/// After a failed save: a clear error naming the file it was writing, nothing in the output
/// folder (the temporary file removed), inputs unchanged.
fn assert_clean_failure(s: &Setup, out: &std::process::Output, inputs: &[u64], expected: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "the save succeeded: {err}");
    assert!(err.contains(expected), "no {expected:?} in: {err}");
    assert!(
        err.contains("crash_00001_.safetensors"),
        "the error does not name the file: {err}"
    );
    let (done, temp) = s.outputs();
    assert!(
        done.is_empty() && temp.is_empty(),
        "left behind: {done:?} {temp:?}"
    );
    assert_eq!(s.input_digests(), inputs, "inputs changed");
}

#[test]
fn a_full_disk_fails_the_save_cleanly() {
    // A 40 MiB tmpfs as the output folder, in a private mount namespace (no root needed where
    // user namespaces are allowed); the save needs ~110 MB.
    let probe = Command::new("unshare").args(["-r", "-m", "true"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "skipped: `unshare -r -m` is not permitted here (the file-size limit test still runs)"
        );
        return;
    }
    let s = Setup::new();
    let inputs = s.input_digests();
    let output = s.base().join("output");
    std::fs::create_dir_all(&output).expect("mkdir");
    let exe = env!("CARGO_BIN_EXE_amalgam");
    // The tmpfs lives as long as the namespace, so the listing is taken inside it.
    let script = format!(
        "mount -t tmpfs -o size=40m tmpfs '{out}' && mkdir '{out}/checkpoints' || exit 99
         '{exe}' run --base-dir '{base}' '{prompt}'
         echo \"exit=$?\"; ls -A '{out}/checkpoints'",
        out = path_str(&output),
        base = path_str(s.base()),
        prompt = path_str(&s.prompt),
    );
    let out = Command::new("unshare")
        .args(["-r", "-m", "sh", "-c", &script])
        .output()
        .expect("run amalgam on a small tmpfs");
    let err = stderr(&out);
    eprintln!("{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (status, left) = stdout.split_once('\n').unwrap_or((&stdout, ""));
    assert_ne!(status, "exit=0", "the save succeeded on a full disk: {err}");
    assert!(status.starts_with("exit="), "{stdout} {err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("crash_00001_.safetensors"), "{err}");
    assert!(
        left.trim().is_empty(),
        "left on the full filesystem: {left}"
    );
    assert_eq!(s.input_digests(), inputs, "inputs changed");
}

#[test]
fn a_file_size_limit_fails_the_save_cleanly() {
    // RLIMIT_FSIZE (via util-linux `prlimit`) works everywhere without privileges; SIGXFSZ is
    // ignored (as a shell `trap ''` passes on through exec) so the write fails with EFBIG.
    let s = Setup::new();
    let inputs = s.input_digests();
    let exe = env!("CARGO_BIN_EXE_amalgam");
    let script = format!(
        "trap '' XFSZ; exec prlimit --fsize=30000000 '{exe}' run --base-dir '{base}' '{prompt}'",
        base = path_str(s.base()),
        prompt = path_str(&s.prompt),
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("run amalgam under prlimit");
    assert_clean_failure(&s, &out, &inputs, "File too large");
}
