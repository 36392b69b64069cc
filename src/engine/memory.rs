//! The process allocator, tuned for the image steps.
//!
//! A sampler step allocates and frees tensors of tens to hundreds of megabytes hundreds of times
//! (activations, attention scores). glibc serves blocks above its mmap threshold (at most 32 MB
//! by default) with fresh `mmap`s and returns them on free, so every such tensor is zero-filled
//! page by page by the kernel again: measured on SD1.5 at 512², page faults and page clearing
//! were 29 % of the run, and a step took 27.4 s. Keeping big blocks on the heap
//! (`M_MMAP_THRESHOLD` 1 GiB), not trimming the heap during a job (`M_TRIM_THRESHOLD`), and one
//! arena (`M_ARENA_MAX` 1: a thread other than the main one — the app's worker — would otherwise
//! get 64 MB heaps and fall back to `mmap` for anything larger) made the step 17.2 s with the
//! same peak RSS (5.5 GB). After an image job the worker hands the freed memory back
//! ([`release_freed_memory`]), so an idle app does not hold it.
//!
//! Only glibc is tuned; on other platforms these do nothing.

/// Tunes the allocator; call once, first thing in `main`, before any thread starts.
#[allow(unsafe_code)]
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation parameters; it is called before other
    // threads exist, and a refused setting (return 0) leaves glibc's default, which is correct
    // too, only slower.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
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
