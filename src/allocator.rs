//! The server's allocator: mimalloc instead of glibc's malloc, set to give freed
//! memory back to the system promptly.
//!
//! Why: an audit line is allocated on a Check's worker thread and freed on the
//! audit writer's (and tokio moves tasks, with their buffers, between workers).
//! glibc's `free` of another thread's chunk takes that thread's arena lock, which
//! the owner's own allocations then wait on: under h2load that made 0.49 futex
//! calls per cache-hit Check against the no-op server's 0.38. mimalloc frees
//! across threads without a lock (0.12 per Check).
//!
//! Only the `cedargate` binary (and the benchmarks that measure it) use this: the
//! library allocates with whatever allocator its host has, and the in-process
//! module with Envoy's.

use libmimalloc_sys::{mi_option_set, mi_option_t};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// libmimalloc-sys names only some of the options; these are their places in
// `mi_option_e` of the mimalloc it builds (v2, its `v2` feature: with v3 the same
// settings left 68 MiB resident), checked by the test below against their
// documented defaults.
/// Milliseconds before freed pages are given back (default 10; 0: at once).
const PURGE_DELAY: mi_option_t = 15;
/// Whether a new arena is committed whole (default 2: on overcommitting systems).
const ARENA_EAGER_COMMIT: mi_option_t = 4;

/// Gives freed memory back at once and commits arenas as they are used: 10,000
/// policies and 100,000 cached decisions keep 62 MiB resident, as with glibc, where
/// mimalloc's defaults kept 74 (`cargo bench --bench memory`), for 0.03 `madvise`
/// calls per Check. Call first thing in `main`.
pub fn configure() {
    // SAFETY: `mi_option_set` only stores an option's value; it is safe to call
    // at any time from any thread, and both options are read at their next use.
    #[allow(unsafe_code)]
    unsafe {
        mi_option_set(PURGE_DELAY, 0);
        mi_option_set(ARENA_EAGER_COMMIT, 0);
    }
}

#[cfg(test)]
mod tests {
    // Paths, not imports: benches include this file, where `#[test]` functions
    // are not compiled and imports would go unused.

    /// The two places above name the options they mean: read before `configure`,
    /// each holds its documented default (unless the environment set it).
    #[test]
    #[allow(unsafe_code)]
    fn the_option_numbers_name_purge_delay_and_arena_eager_commit() {
        // SAFETY: `mi_option_get` only reads an option's value.
        let (purge_delay, eager_commit) = unsafe {
            (
                libmimalloc_sys::mi_option_get(super::PURGE_DELAY),
                libmimalloc_sys::mi_option_get(super::ARENA_EAGER_COMMIT),
            )
        };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge_delay, 10);
        }
        if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
            assert_eq!(eager_commit, 2);
        }
    }
}
