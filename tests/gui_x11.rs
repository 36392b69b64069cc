//! The real binary in a real X11 window (Xvfb): it opens the workflow given on its command line,
//! a keystroke queues it, and the output file appears. `.ci/run` installs Xvfb and xdotool; on a machine without them the test
//! says so and passes, except under CI (`CI` set), where their absence is a failure.
//!
//! With `AMALGAM_SCREENSHOT=path`, the same harness makes the README screenshot: it opens a real
//! ComfyUI workflow on full-size SD1.5 checkpoints and captures the window mid-merge.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// Kills a child process when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SIGTERM first: a SIGKILLed Xvfb leaves its lock file and socket behind, and a stale
        // socket would make a later run think its server is ready before it is.
        let terminated = Command::new("kill")
            .arg(self.0.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        if terminated {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(self.0.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn xdotool(display: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("xdotool")
        .args(args)
        .env("DISPLAY", display)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn start_xvfb() -> (Guard, String) {
    // Each call needs its own display: tests in this file run in parallel in one process, and a
    // shared server would let `xdotool search` find the other test's window. The number comes
    // from the process id plus a per-call counter, skipping displays whose lock file exists.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = loop {
        let n = 100 + (std::process::id() % 400) * 2 + NEXT.fetch_add(1, Ordering::Relaxed);
        if !Path::new(&format!("/tmp/.X{n}-lock")).exists() {
            break n;
        }
    };
    let display = format!(":{n}");
    let xvfb = Command::new("Xvfb")
        .args([
            display.as_str(),
            "-screen",
            "0",
            "1400x900x24",
            "-nolisten",
            "tcp",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start Xvfb");
    let socket = PathBuf::from(format!("/tmp/.X11-unix/X{n}"));
    wait_until("Xvfb", Duration::from_secs(20), || socket.exists());
    (Guard(xvfb), display)
}

fn start_app(display: &str, base: &Path, workflow: Option<&Path>) -> Guard {
    let home = base.join("home");
    std::fs::create_dir_all(&home).expect("home");
    let mut cmd = amalgam();
    cmd.arg("--base-dir").arg(base);
    if let Some(w) = workflow {
        cmd.arg(w);
    }
    let child = cmd
        .env("DISPLAY", display)
        .env_remove("WAYLAND_DISPLAY")
        // Persistence and caches go to the temp dir, never the user's.
        .env("HOME", &home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("LIBGL_ALWAYS_SOFTWARE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(base.join("app.log")).expect("log"),
        ))
        .spawn()
        .expect("start amalgam");
    Guard(child)
}

fn window(display: &str) -> String {
    let mut id = String::new();
    wait_until(
        "the Amalgam window",
        Duration::from_secs(60),
        || match xdotool(display, &["search", "--name", "^Amalgam$"]) {
            Some(s) if !s.is_empty() => {
                id = s.lines().next().unwrap_or_default().to_owned();
                true
            }
            _ => false,
        },
    );
    // Without a window manager, focus has to be given explicitly.
    let _ = xdotool(display, &["windowfocus", "--sync", &id]);
    std::thread::sleep(Duration::from_millis(800));
    id
}

#[test]
fn the_real_window_queues_a_merge_from_a_keystroke() {
    if !(have("Xvfb") && have("xdotool")) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install xvfb and xdotool (see .ci/run)"
        );
        eprintln!("skipped: Xvfb or xdotool is not installed");
        return;
    }
    let base = tempdir();
    let out = run(&["--base-dir", path_str(base.path()), "samples"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A workflow given on the command line opens at start-up.
    let wf = base.path().join("blocks.json");
    let doc = amalgam::ui::examples::block_merge(
        "sample-sd15-a.safetensors",
        "sample-sd15-b.safetensors",
    );
    std::fs::write(&wf, serde_json::to_vec(&doc.to_json()).expect("json")).expect("write");
    let (_xvfb, display) = start_xvfb();
    let _app = start_app(&display, base.path(), Some(&wf));
    let id = window(&display);
    let file = base
        .path()
        .join("output/checkpoints/blocks_00001_.safetensors");
    // Keystrokes can be lost while the window maps; press again until the job is queued.
    let start = Instant::now();
    while !file.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no output after Ctrl+Enter; app log:\n{}",
            std::fs::read_to_string(base.path().join("app.log")).unwrap_or_default()
        );
        // Focus again each time and type through XTEST (no --window): synthetic XSendEvent keys
        // were sometimes ignored, and a focus set while the window mapped can be lost.
        let _ = xdotool(&display, &["windowfocus", "--sync", &id]);
        let _ = xdotool(&display, &["key", "ctrl+Return"]);
        std::thread::sleep(Duration::from_millis(1500));
    }
    let (tensors, meta) = read_reference(&file);
    assert_eq!(tensors.len(), 1130);
    let embedded: serde_json::Value = serde_json::from_str(&meta["workflow"]).expect("workflow");
    assert_eq!(
        embedded,
        doc.to_json(),
        "the window ran the workflow it was given"
    );
}

#[test]
fn readme_screenshot_mid_merge() {
    let Some(target) = std::env::var_os("AMALGAM_SCREENSHOT").map(PathBuf::from) else {
        return; // only on request: it writes 4 GB of checkpoints
    };
    let base = tempdir();
    let ck = base.path().join("models/checkpoints");
    let out = run(&[
        "samples",
        "--full-size",
        "--family",
        "sd15",
        "--dir",
        path_str(&ck),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The shared ComfyUI example, with its save node unmuted and its models present.
    for (name, src) in [
        ("v1-5-pruned-emaonly.ckpt", "full-sd15-a.safetensors"),
        ("cardosAnime_v10.safetensors", "full-sd15-b.safetensors"),
    ] {
        std::os::unix::fs::symlink(ck.join(src), ck.join(name)).expect("link");
    }
    std::fs::create_dir_all(base.path().join("models/vae")).expect("vae dir");
    std::os::unix::fs::symlink(
        ck.join("full-sd15-a.safetensors"),
        base.path().join("models/vae/kl-f8-anime2.ckpt"),
    )
    .expect("link");
    let png =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/workflows/model_merging_basic.png");
    let mut doc = amalgam::graph::load::load_file(&png).expect("png").document;
    doc.node_mut(14).expect("save").mode = amalgam::graph::Mode::Always;
    let wf = base.path().join("model_merging_basic.json");
    std::fs::write(&wf, serde_json::to_vec(&doc.to_json()).expect("json")).expect("write");

    let (_xvfb, display) = start_xvfb();
    let _app = start_app(&display, base.path(), Some(&wf));
    let id = window(&display);
    std::thread::sleep(Duration::from_secs(2));
    let _ = xdotool(&display, &["key", "--window", &id, "ctrl+Return"]);
    // Mid-merge: the temp file exists and the output does not yet.
    let outdir = base.path().join("output/checkpoints");
    wait_until("the merge to start", Duration::from_secs(60), || {
        std::fs::read_dir(&outdir).is_ok_and(|d| {
            d.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".amalgam-partial-")
            })
        })
    });
    std::thread::sleep(Duration::from_millis(1200));
    let status = Command::new("import")
        .args(["-window", "root", "-crop", "1400x850+0+0"])
        .arg(&target)
        .env("DISPLAY", &display)
        .status()
        .expect("import");
    assert!(status.success());
    wait_until("the merge to finish", Duration::from_secs(180), || {
        outdir.join("ComfyUI_00001_.safetensors").exists()
    });
}
