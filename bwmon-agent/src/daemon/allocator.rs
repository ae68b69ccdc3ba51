//! How the daemon's heap behaves: one long-lived process with a few threads, a large burst at
//! start (the kernel's BTF is parsed once) and a sync that rebuilds its tables every interval.
//!
//! glibc's defaults suit the opposite: an arena per thread (the sync worker's tables and the
//! status servers' copies fragment separate heaps) and a free-memory threshold that grows with
//! every large block freed. Measured with 10,000 slices: 47 MB resident with the defaults,
//! 24 MB with one arena and a fixed mmap threshold.

/// Sets the allocator up for the daemon. Call before any thread starts.
pub fn tune_for_daemon() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        // Blocks from 128 KiB up are mapped on their own and unmapped when freed (the BTF
        // parse, counter snapshots), instead of raising the threshold for good.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Returns freed heap pages to the kernel (after a sync has dropped its temporary tables).
pub(crate) fn give_back() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim is thread-safe and only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
