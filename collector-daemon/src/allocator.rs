//! The daemon's memory allocator and how the kernel backs it.
//!
//! mimalloc instead of glibc's allocator: with thousands of sessions each
//! allocating and freeing per read on two runtime threads, glibc's arenas
//! fragment. Transparent huge pages off for this process: mimalloc asks
//! for them, and where the kernel grants them (`always`, the default of
//! many distributions and Kubernetes nodes), the first touch of each
//! fresh 2 MiB region is zeroed whole. The memory of every 10 s batch is
//! fresh again after mimalloc returns it, so at the reference workload
//! this cost ~14 % of the collector's CPU in page faults and ~30-50 MiB of
//! RSS in partly used huge pages (BENCHMARKS.md, "Toward the floor").
//! `MIMALLOC_ALLOW_THP=1` in the environment keeps them.
//!
//! Freed memory goes back to the kernel at once (mimalloc's purge delay 0
//! instead of its 1 s): mimalloc purges freed pages only once the delay
//! has passed and the thread that freed them allocates again, so the
//! ~40 MB of each 10 s batch freed on a blocking-pool thread stayed
//! resident long after; 0 cut peak RSS at the reference workload by
//! ~25 MiB at the same CPU (BENCHMARKS.md, "Memory per session").
//! `MIMALLOC_PURGE_DELAY` in the environment overrides it.
//!
//! The `system-allocator` feature keeps glibc's, for heap profilers.

#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process, unless
/// `MIMALLOC_ALLOW_THP=1` says otherwise. Call first thing in `main`: the
/// flag applies to pages faulted in from then on.
pub(crate) fn no_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some_and(|v| v == "1") {
        return;
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    // SAFETY: prctl(PR_SET_THP_DISABLE) takes integer arguments only and
    // changes a flag of this process; a kernel without it returns EINVAL.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// mimalloc's `mi_option_purge_delay` (its index in both the v2 and v3
/// headers; the Rust bindings do not name it).
#[cfg(not(feature = "system-allocator"))]
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// mimalloc's default purge delays (ms; v3: 1000, v2: 10): seen only if
/// the index above is still the purge delay, so a future mimalloc that
/// moved it is left alone.
#[cfg(not(feature = "system-allocator"))]
const MI_DEFAULT_PURGE_DELAYS: [std::ffi::c_long; 2] = [1000, 10];

#[cfg(not(feature = "system-allocator"))]
extern "C" {
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Freed memory returns to the kernel at once, unless
/// `MIMALLOC_PURGE_DELAY` says otherwise. Call first thing in `main`.
pub(crate) fn purge_at_once() {
    #[cfg(not(feature = "system-allocator"))]
    {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: mimalloc's option getters and setters take and return
        // integers; an index mimalloc does not know is ignored by both.
        unsafe {
            if MI_DEFAULT_PURGE_DELAYS.contains(&mi_option_get(MI_OPTION_PURGE_DELAY)) {
                mi_option_set(MI_OPTION_PURGE_DELAY, 0);
            }
        }
    }
}

#[cfg(all(test, not(feature = "system-allocator")))]
mod tests {
    use super::*;

    /// The index named above is mimalloc's purge delay: it reads the
    /// documented default before and 0 after (were it another option, the
    /// default would not match and nothing would be set).
    #[test]
    fn freed_memory_is_purged_at_once() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // the operator's value wins; nothing to check
        }
        // SAFETY: as in `purge_at_once`.
        let before = unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert!(MI_DEFAULT_PURGE_DELAYS.contains(&before), "{before}");
        purge_at_once();
        // SAFETY: as in `purge_at_once`.
        assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, 0);
    }
}
