//! Replays every fuzz target's seeds and every input the fuzzers ever flagged
//! (`fuzz/regressions/<target>/`) through the same entry points the fuzzers use, on stable Rust,
//! so a fixed finding stays fixed. With `AMALGAM_WRITE_SEEDS=<dir>` it also writes the seed
//! corpora to `<dir>/<target>/` for `fuzz/run.sh`.

use std::path::{Path, PathBuf};

use amalgam::fuzzing;

fn shared_workflows() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/workflows");
    p.is_dir().then_some(p)
}

#[test]
fn seeds_and_past_findings_run_clean() {
    let write_to = std::env::var_os("AMALGAM_WRITE_SEEDS").map(PathBuf::from);
    let regressions = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for target in fuzzing::TARGETS {
        let seeds = fuzzing::seeds(target, shared_workflows().as_deref());
        assert!(!seeds.is_empty(), "{target} has no seeds");
        if let Some(dir) = &write_to {
            let d = dir.join(target);
            std::fs::create_dir_all(&d).expect("seed folder");
            for (i, s) in seeds.iter().enumerate() {
                std::fs::write(d.join(format!("seed-{i:02}")), s).expect("write seed");
            }
        }
        let mut inputs = seeds;
        if let Ok(entries) = std::fs::read_dir(regressions.join(target)) {
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for p in paths {
                inputs.push(std::fs::read(&p).expect("regression input"));
            }
        }
        for input in &inputs {
            assert!(fuzzing::run(target, input));
            replayed += 1;
        }
    }
    fuzzing::remove_scratch();
    assert!(replayed >= 20, "only {replayed} inputs replayed");
}
