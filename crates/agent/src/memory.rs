//! Giving the heap's free memory back to the kernel after a full sync.
//!
//! A full sync (the first programming, a periodic resync) goes through data as large as the
//! cluster for a short time: the first read of every object, the whole plan handed to the
//! dataplane, the dataplane's table rebuild. glibc keeps what is freed for later allocations,
//! in the arena of the thread that allocated it, so the agent's RSS would stay at that peak
//! (about 20 MiB above what it holds at 10,000 Services).

/// Returns the free pages of every malloc arena to the kernel. A few milliseconds at most;
/// called on the dataplane's blocking thread after a full sync, never per change.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own arenas under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    /// Resident memory of this process, from /proc/self/statm (pages).
    fn resident_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_below_a_live_allocation_goes_back_to_the_kernel() {
        // On a thread of its own, so its arena holds nothing of the other tests.
        std::thread::spawn(|| {
            let mut chunks: Vec<Vec<u8>> = (0..100_000).map(|_| vec![1u8; 1000]).collect();
            let pinned = chunks.pop();
            drop(chunks);
            let held = resident_bytes();
            super::release_free_heap();
            let released = held.saturating_sub(resident_bytes());
            assert!(released > 50 << 20, "only {released} bytes released");
            drop(pinned);
        })
        .join()
        .unwrap();
    }
}
