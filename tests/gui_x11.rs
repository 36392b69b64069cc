//! The real binary in a real X11 window (Xvfb): it opens the workflow given on its command line,
//! a keystroke queues it, and the output file appears. `.ci/run` installs Xvfb and xdotool; on a machine without them the test
//! says so and passes, except under CI (`CI` set), where their absence is a failure.
//!
//! With `AMALGAM_SCREENSHOT=path`, the same harness makes the README screenshot: it opens a real
//! ComfyUI workflow on full-size SD1.5 checkpoints and captures the window mid-merge. With
//! `AMALGAM_COMPARE_SCREENSHOT=path`, it captures the Compare window of a checkpoint whose
//! output blocks were fine-tuned against its original. With `AMALGAM_SWEEP_SCREENSHOT=path`, it
//! captures a 2-D sweep (merge ratio × cfg) of the text-to-image example on the runnable samples.

// This binary uses only part of the shared fixtures.
#[allow(dead_code)]
#[path = "it/util.rs"]
mod util;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use util::*;

/// Kills a child process when dropped; an X server's guard also holds [`ONE_X_SERVER`] until then.
struct Guard(
    Child,
    #[allow(dead_code)] // held, never read: released when the server is gone
    Option<std::sync::MutexGuard<'static, ()>>,
);

/// One X server at a time in this binary: two Xvfb started together sometimes left an app
/// unable to connect to its own (seen as "Failed to open connection to X server", 1 run in 4).
static ONE_X_SERVER: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Drop for Guard {
    fn drop(&mut self) {
        // SIGTERM first: a SIGKILLed Xvfb leaves its lock file and socket behind, and a stale
        // socket would make a later run think its server is ready before it is.
        let terminated = Command::new("kill")
            .arg(self.0.id().to_string())
            .stderr(Stdio::null())
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

/// Whether Xvfb and xdotool are installed; without them a test says so and passes, except under
/// CI, where their absence is a failure.
fn x11_available() -> bool {
    if have("Xvfb") && have("xdotool") {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install xvfb and xdotool (see .ci/run)"
    );
    eprintln!("skipped: Xvfb or xdotool is not installed");
    false
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits until `ok`; on timeout, panics with `what` and whatever `diagnose` can tell.
fn wait_until(
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut() -> bool,
    mut diagnose: impl FnMut() -> String,
) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}\n{}",
            diagnose()
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

/// Starts a private X server and returns it with its display once it accepts clients.
///
/// Xvfb picks a free display itself and writes its number to `-displayfd` only when it is ready
/// (`3>&1` makes that descriptor the pipe we read). Choosing a number ourselves raced with other
/// X servers on the machine, and a socket file can exist before the server answers.
fn start_xvfb(log: &Path) -> (Guard, String) {
    let lock = ONE_X_SERVER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut xvfb = Command::new("sh")
        .args([
            "-c",
            "exec Xvfb -displayfd 3 -screen 0 1400x900x24 -nolisten tcp 3>&1 >/dev/null",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(log).expect("Xvfb log")))
        .spawn()
        .expect("start Xvfb");
    let stdout = xvfb.stdout.take().expect("Xvfb stdout");
    let guard = Guard(xvfb, Some(lock));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("xvfb-displayfd".into())
        .spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
            let _ = tx.send(line);
        })
        .expect("start the Xvfb reader thread");
    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
    let n: u32 = line.trim().parse().unwrap_or_else(|_| {
        panic!(
            "Xvfb did not report a display (got {line:?}); its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    });
    let display = format!(":{n}");
    // A client must get through before the app is started: under load (CI stop 21, a build
    // beside the tests) an app started right after the report failed to connect ("Failed to
    // open connection to X server") while every rerun passed.
    wait_until(
        "Xvfb to accept a client",
        Duration::from_secs(30),
        || xdotool(&display, &["getdisplaygeometry"]).is_some(),
        || std::fs::read_to_string(log).unwrap_or_default(),
    );
    (guard, display)
}

/// The app, started on `display` with its stderr in `base/app.log`.
struct App {
    guard: Guard,
    log: PathBuf,
}

impl App {
    /// What to print when the app does not do what a test waits for: whether it is still
    /// running, and its log.
    fn diagnosis(&mut self) -> String {
        let state = match self.guard.0.try_wait() {
            Ok(Some(status)) => format!("the app exited ({status})"),
            Ok(None) => "the app is still running".to_owned(),
            Err(e) => format!("the app's state is unknown ({e})"),
        };
        format!(
            "{state}; app log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

fn start_app(display: &str, base: &Path, workflow: Option<&Path>) -> App {
    let args: Vec<&std::ffi::OsStr> = workflow.iter().map(|w| w.as_os_str()).collect();
    start_app_with(display, base, &args)
}

fn start_app_with(display: &str, base: &Path, args: &[&std::ffi::OsStr]) -> App {
    let home = base.join("home");
    std::fs::create_dir_all(&home).expect("home");
    let log = base.join("app.log");
    let mut cmd = amalgam();
    cmd.arg("--base-dir").arg(base).args(args);
    let child = cmd
        .env("DISPLAY", display)
        .env_remove("WAYLAND_DISPLAY")
        // Persistence and caches go to the temp dir, never the user's.
        .env("HOME", &home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("LIBGL_ALWAYS_SOFTWARE", "1")
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
        .spawn()
        .expect("start amalgam");
    App {
        guard: Guard(child, None),
        log,
    }
}

/// Saves the screen's top-left 1400×850 (the window) as a PNG, with ImageMagick's `import`.
fn capture(display: &str, target: &Path) {
    let status = Command::new("import")
        .args(["-window", "root", "-crop", "1400x850+0+0"])
        .arg(target)
        .env("DISPLAY", display)
        .status()
        .expect("import");
    assert!(status.success());
}

fn window(display: &str, app: &mut App) -> String {
    let start = Instant::now();
    let id = loop {
        let found = xdotool(display, &["search", "--name", "^Amalgam$"]);
        if let Some(first) = found.as_deref().and_then(|s| s.lines().next()) {
            break first.to_owned();
        }
        let exited = matches!(app.guard.0.try_wait(), Ok(Some(_)));
        assert!(
            !exited && start.elapsed() < Duration::from_secs(90),
            "no Amalgam window after {:?}: {}",
            start.elapsed(),
            app.diagnosis()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Without a window manager, focus has to be given explicitly.
    let _ = xdotool(display, &["windowfocus", "--sync", &id]);
    std::thread::sleep(Duration::from_millis(800));
    id
}

#[test]
fn the_real_window_queues_a_merge_from_a_keystroke() {
    if !x11_available() {
        return;
    }
    let base = tempdir();
    let out = run(&["--base-dir", path_str(base.path()), "samples"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A workflow given on the command line opens at start-up.
    let wf = base.path().join("blocks.json");
    let doc = amalgam::graph::examples::block_merge(
        "sample-sd15-a.safetensors",
        "sample-sd15-b.safetensors",
    );
    std::fs::write(&wf, serde_json::to_vec(&doc.to_json()).expect("json")).expect("write");
    let (_xvfb, display) = start_xvfb(&base.path().join("xvfb.log"));
    let mut app = start_app(&display, base.path(), Some(&wf));
    let id = window(&display, &mut app);
    let file = base
        .path()
        .join("output/checkpoints/blocks_00001_.safetensors");
    // Keystrokes can be lost while the window maps; press again until the job is queued.
    let start = Instant::now();
    while !file.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no output after Ctrl+Enter: {}",
            app.diagnosis()
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

    let (_xvfb, display) = start_xvfb(&base.path().join("xvfb.log"));
    let mut app = start_app(&display, base.path(), Some(&wf));
    let id = window(&display, &mut app);
    std::thread::sleep(Duration::from_secs(2));
    let _ = xdotool(&display, &["key", "--window", &id, "ctrl+Return"]);
    // Mid-merge: the temp file exists and the output does not yet.
    let outdir = base.path().join("output/checkpoints");
    wait_until(
        "the merge to start",
        Duration::from_secs(60),
        || {
            std::fs::read_dir(&outdir).is_ok_and(|d| {
                d.flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(".amalgam-partial-")
                })
            })
        },
        || app.diagnosis(),
    );
    std::thread::sleep(Duration::from_millis(1200));
    capture(&display, &target);
    wait_until(
        "the merge to finish",
        Duration::from_secs(180),
        || outdir.join("ComfyUI_00001_.safetensors").exists(),
        || app.diagnosis(),
    );
}

#[test]
fn readme_screenshot_compare() {
    let Some(target) = std::env::var_os("AMALGAM_COMPARE_SCREENSHOT").map(PathBuf::from) else {
        return; // only on request
    };
    let base = tempdir();
    let ck = base.path().join("models/checkpoints");
    let out = run(&["--base-dir", path_str(base.path()), "samples"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // "tuned": the input blocks and everything outside the UNet as in sample A, the middle
    // block nudged by 0.1 %, output blocks 0–5 by 3 %, output blocks 6–11 from sample B.
    let (a, _) = read_reference(&ck.join("sample-sd15-a.safetensors"));
    let (b, _) = read_reference(&ck.join("sample-sd15-b.safetensors"));
    let specs =
        amalgam::model::layouts::Layout::sd15(amalgam::model::layouts::Scale::Sample).tensors();
    let mut overrides = std::collections::HashMap::new();
    for s in &specs {
        let name = s.name.as_str();
        let t = &a[name];
        let scaled = |f: f32| {
            let v: Vec<f32> = t.f32s().iter().map(|x| x * f).collect();
            to_bytes(&v, &t.dtype)
        };
        let block = name
            .strip_prefix("model.diffusion_model.output_blocks.")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse::<usize>().ok());
        let bytes = match block {
            Some(n) if n >= 6 => b[name].bytes.clone(),
            Some(_) => scaled(1.03),
            None if name.starts_with("model.diffusion_model.middle_block.") => scaled(1.001),
            None => t.bytes.clone(),
        };
        overrides.insert(s.name.clone(), bytes);
    }
    let tuned = ck.join("tuned.safetensors");
    write_safetensors(&tuned, &specs, 0, &overrides, &[]);

    let (_xvfb, display) = start_xvfb(&base.path().join("xvfb.log"));
    let original = ck.join("sample-sd15-a.safetensors");
    let mut app = start_app_with(
        &display,
        base.path(),
        &[
            "--compare".as_ref(),
            original.as_os_str(),
            tuned.as_os_str(),
        ],
    );
    let _id = window(&display, &mut app);
    std::thread::sleep(Duration::from_secs(4));
    capture(&display, &target);
}

/// The window opened on the text-to-image example with `--sweep` specs; returns once every
/// cell's image is written (or panics with the app's log).
fn sweep_in_window(base: &Path, specs: &[&str], cells: usize) -> (Guard, String, App) {
    let out = run(&["--base-dir", path_str(base), "samples"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let wf = base.join("t2i.json");
    let doc = amalgam::graph::examples::text_to_image(
        amalgam::model::samples::RUNNABLE_SAMPLES[0],
        amalgam::model::samples::RUNNABLE_SAMPLES[1],
    );
    std::fs::write(&wf, serde_json::to_vec(&doc.to_json()).expect("json")).expect("write");
    let (xvfb, display) = start_xvfb(&base.join("xvfb.log"));
    let mut args: Vec<&std::ffi::OsStr> = vec![wf.as_os_str()];
    for s in specs {
        args.push(std::ffi::OsStr::new("--sweep"));
        args.push(std::ffi::OsStr::new(s));
    }
    let mut app = start_app_with(&display, base, &args);
    let _id = window(&display, &mut app);
    let output = base.join("output");
    let images = || {
        std::fs::read_dir(&output).map_or(0, |d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with("_.png"))
                .count()
        })
    };
    wait_until(
        "every cell's image",
        Duration::from_secs(240),
        || images() == cells,
        || app.diagnosis(),
    );
    (xvfb, display, app)
}

#[test]
fn the_real_window_queues_a_command_line_sweep_one_job_per_ratio() {
    if !x11_available() {
        return;
    }
    let base = tempdir();
    let (_xvfb, _display, mut app) = sweep_in_window(base.path(), &["3.ratio=0:1:3"], 3);
    // Three images, three different merges, and the app still running its window.
    let mut pictures = Vec::new();
    for n in 1..=3 {
        let p = base.path().join(format!("output/merge_{n:05}_.png"));
        let png = std::fs::read(&p).expect("cell image");
        let texts = amalgam::format::png::text_chunks(&png).expect("text");
        let prompt: serde_json::Value = serde_json::from_str(
            amalgam::format::png::find_text(&texts, "prompt").expect("prompt"),
        )
        .expect("json");
        pictures.push((prompt["3"]["inputs"]["ratio"].clone(), png));
    }
    let ratios: Vec<_> = pictures.iter().map(|(r, _)| r.clone()).collect();
    assert_eq!(
        ratios,
        [
            serde_json::json!(0.0),
            serde_json::json!(0.5),
            serde_json::json!(1.0)
        ]
    );
    assert_ne!(pictures[0].1, pictures[2].1);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        matches!(app.guard.0.try_wait(), Ok(None)),
        "{}",
        app.diagnosis()
    );
}

#[test]
fn readme_screenshot_sweep() {
    let Some(target) = std::env::var_os("AMALGAM_SWEEP_SCREENSHOT").map(PathBuf::from) else {
        return; // only on request
    };
    let base = tempdir();
    let (_xvfb, display, _app) =
        sweep_in_window(base.path(), &["3.ratio=0:1:3", "7.cfg=4:10:3"], 9);
    // The pointer off the grid (no tooltip), the toasts gone.
    let _ = xdotool(&display, &["mousemove", "1000", "700"]);
    std::thread::sleep(Duration::from_secs(6));
    capture(&display, &target);
}
