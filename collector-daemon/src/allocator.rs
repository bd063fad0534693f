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
//! `MIMALLOC_ALLOW_THP=1` in the environment keeps them. The
//! `system-allocator` feature keeps glibc's, for heap profilers.

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
