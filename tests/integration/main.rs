//! Integration tests: the built binary and the engine driven from outside, as users meet them.

mod api;
mod binary;
mod cli;
mod containment;
mod deploy;
mod embed;
mod events;
mod fleet;
mod fuzz;
mod harness;
mod incident;
mod lifecycle;
mod metrics;
mod otlp;
mod page;
mod probes;
mod processes;
mod reload;
mod server;
mod supervision;
