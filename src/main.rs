//! The `fog-orchestrator` binary: parse the command line and hand over to [`fog_orchestrator::cli`].

use std::process::ExitCode;

use clap::Parser;
use fog_orchestrator::cli::{Cli, execute};
use fog_orchestrator::supervisor::containment;

fn main() -> ExitCode {
    // The spawn helper each service starts through (see `supervisor::containment`): first, before anything
    // else is set up, so a helper costs nothing but its exec.
    containment::helper_entry();
    tune_malloc();
    execute(Cli::parse())
}

/// glibc's malloc gives large blocks back to the kernel as soon as they are freed (a `/metrics` body of
/// 4 MB is mmapped and unmapped on every scrape, page by page faulted in again; heaps are trimmed with
/// `madvise` after each response). Keep blocks up to 32 MiB in the heap and trim only past 64 MiB free:
/// the resident size stays at the working set's high-water mark instead of rising and falling on every
/// request (BENCHMARKS.md, "REST API").
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}
