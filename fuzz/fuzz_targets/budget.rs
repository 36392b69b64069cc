//! The allocation budget every fuzz target runs under: while one input is processed, live heap
//! may not exceed a small multiple of the input's size (plus a fixed allowance for buffers that
//! do not depend on the input). An input that makes Amalgam allocate more — a header claiming a
//! huge length, a shape whose product overflows, a pickle or zip member that lies about its size,
//! a PNG chunk length — aborts the run and becomes a finding like a crash.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Live heap may grow by at most this many bytes per byte of input, plus a fixed allowance that
/// each target states (parsers: 1 MiB; the LoRA target runs a whole merge of a tiny checkpoint,
/// whose chunk buffers do not depend on the input).
const PER_INPUT_BYTE: usize = 64;

static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Live heap allowed while an input runs; `usize::MAX` outside a run.
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; the wrapper only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        charge(layout.size());
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        charge(layout.size());
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            charge(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn charge(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    let limit = LIMIT.load(Ordering::Relaxed);
    if live > limit {
        // No allocation from here on: print with a fixed buffer, then abort (a panic would
        // allocate, and libFuzzer treats an abort as a crash and saves the input).
        let mut buf = [0u8; 96];
        let msg = format_no_alloc(&mut buf, live, limit);
        let _ = std::io::Write::write_all(&mut std::io::stderr(), msg);
        std::process::abort();
    }
}

fn format_no_alloc(buf: &mut [u8; 96], live: usize, limit: usize) -> &[u8] {
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = std::io::Write::write_fmt(
        &mut cursor,
        format_args!("allocation budget exceeded: {live} > {limit} bytes\n"),
    );
    let n = cursor.position() as usize;
    &buf[..n]
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` with the live heap capped at `fixed` bytes plus the budget for an input of
/// `input_len` bytes.
pub fn within(fixed: usize, input_len: usize, f: impl FnOnce()) {
    let base = LIVE.load(Ordering::Relaxed);
    LIMIT.store(
        base + fixed + input_len.saturating_mul(PER_INPUT_BYTE),
        Ordering::Relaxed,
    );
    f();
    LIMIT.store(usize::MAX, Ordering::Relaxed);
}
