//! The `fog-orchestrator` binary: parse the command line and hand over to [`fog_orchestrator::cli`].

use std::process::ExitCode;

use clap::Parser;
use fog_orchestrator::cli::{Cli, execute};

fn main() -> ExitCode {
    execute(Cli::parse())
}
