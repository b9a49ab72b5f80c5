//! A configuration reload reaching one actor: new settings, a new place in the graph, and, when what the
//! process was started with changed, its replacement (restart reason `reload`).
//!
//! Settings the engine reads as it goes (thresholds, cadence, backoff, attempts, timeouts) take effect at
//! once, without touching the instance: same pid, counters, history and uptime. The new gates are
//! evaluated before the replacement is decided, so a replaced instance waits for a dependency the reload
//! added, and a service held by a removed dependency starts again as soon as it no longer depends on it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Actor, Gates, probe_ticker};
use crate::config::ServiceSpec;
use crate::supervisor::backoff::Backoff;
use crate::supervisor::launcher::Launcher;
use crate::supervisor::lifecycle::{Event, Policy, Request};
use crate::supervisor::state::ServiceState;
use crate::supervisor::{ControlError, Reply};

/// What a reload tells one service.
pub struct Reconfiguration {
    pub(in crate::supervisor) spec: Arc<ServiceSpec>,
    pub(in crate::supervisor) layer: u32,
    pub(in crate::supervisor) launcher: Option<Arc<dyn Launcher>>,
    pub(in crate::supervisor) gates: Gates,
    pub(in crate::supervisor) heartbeat_timeout: Duration,
    pub(in crate::supervisor) heartbeat_interval: Duration,
    pub(in crate::supervisor) check_sample_ratio: f64,
    /// What the process was started with changed: replace it.
    pub(in crate::supervisor) replace: bool,
    pub(in crate::supervisor) reply: Reply,
    /// `reload configuration`: the stop and start this causes are its children.
    pub(in crate::supervisor) caller: tracing::Span,
}

impl std::fmt::Debug for Reconfiguration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconfiguration")
            .field("service", &self.spec.name)
            .field("replace", &self.replace)
            .finish_non_exhaustive()
    }
}

impl Actor {
    /// Takes the new settings and gates, then replaces the instance if asked.
    pub(super) async fn reconfigure(&mut self, change: Reconfiguration) {
        let Reconfiguration {
            spec,
            layer,
            launcher,
            gates,
            heartbeat_timeout,
            heartbeat_interval,
            check_sample_ratio,
            replace,
            reply,
            caller,
        } = change;
        if self.parts.launcher.is_some() && launcher.is_none() && self.instance.is_some() {
            // No longer ours to run (now only probed): its process goes, under the reload's trace.
            self.traces.request = Some(caller.clone());
            self.stop_instance().await;
        }
        let cadence_changed = self.parts.spec.health.check_interval != spec.health.check_interval;
        self.health().tracker.set_thresholds(&spec.health);
        self.backoff = Backoff::new(&spec.restart);
        self.lifecycle.set_policy(Policy {
            managed: launcher.is_some(),
            auto_recovery: spec.health.auto_recovery,
            max_attempts: spec.restart.max_attempts,
            // Fixed at start: a change of `singleton` needs an orchestrator restart.
            singleton: self.lifecycle.policy_singleton(),
        });
        let parts = &mut self.parts;
        parts.spec = spec;
        parts.layer = layer;
        parts.launcher = launcher;
        parts.required = gates.required;
        parts.optional = gates.optional;
        parts.dependents = gates.dependents;
        parts.required_dependents = gates.required_dependents;
        parts.heartbeat_timeout = heartbeat_timeout;
        parts.heartbeat_interval = heartbeat_interval;
        parts.check_sample_ratio = check_sample_ratio;
        if self.lifecycle.state() == ServiceState::Running {
            // The new interval, from the next step of the grid on; the checker, which holds the old
            // settings, is replaced (or stopped, or started, as the probe went or came).
            let interval = self.parts.spec.health.check_interval;
            let step = interval.min(super::actions::CHECK_GRID);
            let first = super::on_grid(self.parts.boot, Instant::now() + interval, step);
            if cadence_changed {
                self.ticker = probe_ticker(first, interval);
            }
            self.start_checker(first);
        }

        let reload = Event::Request {
            request: Request::Reload,
            force: false,
        };
        if replace && self.lifecycle.state() == ServiceState::Pending {
            // Not running (waiting, or held by a dependency the reload removes): it hears that its next
            // launch is the replacement before the new graph may let it launch.
            self.traces.request = Some(caller.clone());
            self.feed(reload, None).await;
            self.new_gates(caller).await;
            // Answered after the new gates, which decide whether it launches now.
            let _ = reply.send(Ok(self.snapshot.clone()));
            return;
        }
        // The new graph first: a replacement then waits for what it depends on now.
        self.new_gates(caller.clone()).await;
        if replace {
            self.traces.request = Some(caller);
            self.feed(reload, Some(reply)).await;
        } else {
            self.publish();
            let answer = if self.parts.shutdown.is_cancelled() {
                Err(ControlError::ShuttingDown)
            } else {
                Ok(self.snapshot.clone())
            };
            let _ = reply.send(answer);
        }
    }

    /// Evaluates the new gates, and acts on them, on behalf of `caller`.
    async fn new_gates(&mut self, caller: tracing::Span) {
        if let Some(event) = self.dependencies_changed() {
            self.traces.request = Some(caller);
            self.feed(event, None).await;
        }
    }
}
