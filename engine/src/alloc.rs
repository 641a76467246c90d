//! A counting global allocator: live and peak heap bytes of the process, for memory telemetry.
//!
//! Installed only by the `tessera-worker` binary (`#[global_allocator] static A: CountingAlloc`);
//! elsewhere the counters stay at zero and [`HeapStats::tracked`] is false. Peaks can be scoped
//! (per job, per phase) with [`begin_peak_scope`] / [`end_peak_scope`].

// `GlobalAlloc` is an `unsafe` trait and its methods are `unsafe fn`s: a global allocator cannot be
// written without `unsafe`. Every block here only forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// `System` plus two relaxed atomics per call.
pub struct CountingAlloc;

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so `System`'s
// guarantees (valid, aligned, non-overlapping blocks) are ours; the counters are plain atomics, never
// allocate (no re-entry) and never unwind.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: `GlobalAlloc::alloc` has the same contract as ours (non-zero-size `layout`), which
        // our caller upholds.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as `alloc` (non-zero-size `layout`), upheld by our caller.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator with `layout` (our caller's contract), and every block
        // this allocator hands out is a `System` block, so it is `System`'s to free.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr`/`layout` describe a `System` block (as in `dealloc`) and `new_size` is non-zero
        // and does not overflow `isize` once rounded to `layout.align()`: our caller's contract.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        new
    }
}

impl CountingAlloc {
    /// Marks the counters as meaningful; call once at the start of `main` of a binary that installs it.
    pub fn activate(&self) {
        ACTIVE.store(true, Ordering::Relaxed);
    }
}

/// A snapshot of the heap counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    pub live_bytes: u64,
    pub peak_bytes: u64,
    /// False when `CountingAlloc` is not the global allocator (the numbers are then zero).
    pub tracked: bool,
}

pub fn stats() -> HeapStats {
    HeapStats {
        live_bytes: LIVE.load(Ordering::Relaxed) as u64,
        peak_bytes: PEAK.load(Ordering::Relaxed) as u64,
        tracked: ACTIVE.load(Ordering::Relaxed),
    }
}

/// Starts a peak scope: resets the peak to the live bytes and returns the outer peak to restore.
pub fn begin_peak_scope() -> u64 {
    PEAK.swap(LIVE.load(Ordering::Relaxed), Ordering::Relaxed) as u64
}

/// Ends a peak scope: returns its peak and folds it back into the outer scope's peak.
pub fn end_peak_scope(outer_peak: u64) -> u64 {
    PEAK.fetch_max(outer_peak as usize, Ordering::Relaxed) as u64
}
