//! The `fog-orchestrator` binary: parse the command line and hand over to [`fog_orchestrator::cli`].

use std::process::ExitCode;

use clap::Parser;
use fog_orchestrator::cli::{Cli, execute};
use fog_orchestrator::supervisor::containment;

fn main() -> ExitCode {
    // The spawn helper each service starts through (see `supervisor::containment`): first, before anything
    // else is set up, so a helper costs nothing but its exec.
    containment::helper_entry();
    // Hundreds of services need more descriptors than the usual soft limit of 1,024; services themselves
    // still start with that one.
    containment::raise_open_file_limit();
    fog_orchestrator::tune_malloc();
    execute(Cli::parse())
}
