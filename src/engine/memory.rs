//! The process allocator, tuned for the image steps.
//!
//! A sampler step allocates and frees tensors of tens to hundreds of megabytes hundreds of times
//! (activations, attention scores). glibc serves blocks above its mmap threshold (at most 32 MB
//! by default) with fresh `mmap`s and returns them on free, so every such tensor is zero-filled
//! page by page by the kernel again: measured on SD1.5 at 512², page faults and page clearing
//! were 29 % of the run, and a step took 27.4 s. Keeping big blocks on the heap
//! (`M_MMAP_THRESHOLD` 1 GiB) and not trimming the heap during the image steps made the step
//! 17.2 s with the same peak RSS (5.5 GB). That holds only while images are made
//! ([`BigBlocks`]): merges ran slower with it in alternating runs of an SDXL merge (12.7 / 10.6
//! / 12.7 s against 9.9 / 10.7 / 9.9 s), so afterwards glibc's usual limits come back and the
//! freed memory is handed back to the system.
//!
//! One arena (`M_ARENA_MAX` 1, set in `main` before threads start): a thread other than the main
//! one — the app's worker — would otherwise get 64 MB heaps and fall back to `mmap` for anything
//! larger, whatever the threshold.
//!
//! Only glibc is tuned; on other platforms these do nothing.

/// One arena for every thread; call once, first thing in `main`, before any thread starts.
#[allow(unsafe_code)]
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation parameters; it is called before other
    // threads exist, and a refused setting (return 0) leaves glibc's default, which is correct
    // too, only slower.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// While held, big blocks stay on the heap and the heap is not trimmed; dropped, glibc's
/// steady-state limits (32 MiB mmap threshold, 64 MiB trim threshold) return and the freed
/// memory goes back to the system.
#[must_use = "the setting lasts as long as the guard"]
pub struct BigBlocks(());

impl BigBlocks {
    pub fn hold() -> BigBlocks {
        set_thresholds(1 << 30, i32::MAX);
        BigBlocks(())
    }
}

impl Drop for BigBlocks {
    fn drop(&mut self) {
        set_thresholds(32 << 20, 64 << 20);
        release_freed_memory();
    }
}

#[allow(unsafe_code, unused_variables)]
fn set_thresholds(mmap: i32, trim: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes glibc's main-arena lock and sets global parameters that other
    // threads only read; any value is valid (a refused one keeps the previous setting).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap);
        libc::mallopt(libc::M_TRIM_THRESHOLD, trim);
    }
}

/// Returns freed heap memory to the system (after a job that used a lot of it).
#[allow(unsafe_code)]
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory glibc holds; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
