//! Requests from the operating system: SIGTERM and SIGINT ask for a shutdown, each delivery one request;
//! SIGHUP asks for the configuration to be read again (and no longer ends the process).

use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// The stream of shutdown requests. The first asks for a graceful shutdown, the second for an immediate one.
pub struct ShutdownSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl ShutdownSignals {
    /// Installs the handlers; from now on SIGTERM and SIGINT no longer end the process by themselves.
    pub fn install() -> io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT and names it.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

/// SIGHUP deliveries: each asks for the configuration file to be read again.
pub struct Hangups(Signal);

impl Hangups {
    /// Installs the handler; from now on SIGHUP no longer ends the process.
    pub fn install() -> io::Result<Self> {
        Ok(Self(signal(SignalKind::hangup())?))
    }

    /// Waits for the next SIGHUP.
    pub async fn recv(&mut self) {
        self.0.recv().await;
    }
}
