//! Applying a configuration reload (DESIGN.md section 8): only the difference.
//!
//! [`Supervisor::reload`] takes a validated configuration and the [`Plan`] that leads to it, and applies it
//! in this order:
//! 1. removed services stop, dependents first (a stop on request: their running required dependents,
//!    which the reload changes too, stop before them and wait), and their actors, metric series and
//!    registry entries go;
//! 2. the registry takes the new entries and settings;
//! 3. the new roster replaces the old one at once (the API reads one or the other, never a mix);
//! 4. every remaining service gets its new settings and gates (untouched ones keep pid, counters, history,
//!    uptime and series; live keys apply at once), services whose process settings changed are replaced
//!    (restart reason `reload`), and added services start, each when its dependencies allow;
//! 5. it waits until every added or replaced service is ready, or has settled otherwise (failed, backing
//!    off, blocked), for at most the longest stop plus start those services are configured to take.
//!
//! It runs inside the caller's span (`reload configuration`): the stops, restarts and first starts it
//! causes are its children.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::actor::{Actor, Reconfiguration};
use super::builder::{self, launcher_for, resolve_gates};
use super::{ControlError, Roster, ServiceHandle, ServiceState, Snapshot, Supervisor};
use crate::config::{Config, Plan};

/// Beyond the configured stop and start times, how long a reload waits for the services it started.
const SETTLE_MARGIN: Duration = Duration::from_secs(5);

/// What a reload did to one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// The service.
    pub service: String,
    /// `removed`, `added`, `restarted` or `updated`.
    pub action: &'static str,
    /// Its state when the reload answered.
    pub state: ServiceState,
    /// Its process, when one runs.
    pub pid: Option<u32>,
    /// It reached what the reload meant for it: removed and stopped, added or restarted and ready,
    /// updated.
    pub ok: bool,
    /// Why not, when not.
    pub error: Option<String>,
}

impl Applied {
    fn of(service: &str, action: &'static str, snapshot: &Snapshot, ok: bool, error: Option<String>) -> Self {
        Self {
            service: service.to_owned(),
            action,
            state: snapshot.state,
            pid: snapshot.pid,
            ok,
            error,
        }
    }
}

impl Supervisor {
    /// Applies `plan`, which takes the running configuration to `new` (both validated: see
    /// [`Plan::between`]); answers what happened to every service that was added, removed, restarted or
    /// updated. Refused while another reload is applied, or during shutdown.
    pub async fn reload(&self, new: Config, plan: &Plan) -> Result<Vec<Applied>, ControlError> {
        let engine = &self.engine;
        let _turn = engine
            .reloading
            .try_lock()
            .map_err(|_| ControlError::ReloadInProgress)?;
        if engine.shutdown.is_cancelled() {
            return Err(ControlError::ShuttingDown);
        }
        let new = Arc::new(new);
        let old = self.services();
        let mut applied = Vec::new();

        // 1. Removed services, dependents first.
        for name in &plan.remove {
            let Some(handle) = old.get(name) else { continue };
            let stopped = match handle.stop(true).await {
                Ok(snapshot) => Ok(snapshot),
                // Only probed: nothing runs to be stopped.
                Err(ControlError::NotManaged(_)) => Ok(handle.snapshot()),
                Err(error) => Err(error),
            };
            handle.retire().await;
            engine.metrics.remove_service(name);
            let last = handle.snapshot();
            applied.push(match stopped {
                Ok(_) => Applied::of(name, "removed", &last, true, None),
                Err(error) => Applied::of(name, "removed", &last, false, Some(error.to_string())),
            });
        }

        // 2. The registry's entries and settings.
        if let Err(error) = engine.registry.reconfigure(new.clone()).await {
            tracing::error!(%error, "reload: the registry did not take the new configuration");
        }

        // 3. The new roster: the same handles (channels, snapshots, series) for the services that stay.
        let mut handles = Vec::with_capacity(new.services.len());
        let mut added = Vec::new();
        for spec in &new.services {
            let layer = new.graph.layer(&spec.name).unwrap_or(0);
            match old.get(&spec.name) {
                Some(kept) => {
                    engine.metrics.set_service_info(
                        &spec.name,
                        &spec.service_type,
                        spec.critical,
                        spec.is_external(),
                        layer,
                    );
                    handles.push(ServiceHandle {
                        spec: Arc::new(spec.clone()),
                        layer,
                        ..kept.clone()
                    });
                }
                None => {
                    let (handle, channels) =
                        builder::new_handle(spec, &new.graph, &engine.registry, &engine.metrics);
                    added.push((handles.len(), channels));
                    handles.push(handle);
                }
            }
        }
        let gates = resolve_gates(&new.graph, &handles);
        let roster = Arc::new(Roster::new(handles, new.graph.clone(), old.version() + 1));
        *self
            .roster
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = roster.clone();
        engine.metrics.record_graph(&new.graph);
        engine
            .published
            .fetch_add(1, std::sync::atomic::Ordering::Release);

        // 4. New settings and gates for every service; replacements; added services' actors.
        let caller = tracing::Span::current();
        let mut added = added.into_iter().peekable();
        let mut answers = Vec::new();
        for (index, (handle, gates)) in roster.iter().zip(gates).enumerate() {
            if added.peek().is_some_and(|(at, _)| *at == index) {
                let Some((_, channels)) = added.next() else {
                    continue;
                };
                let parts = builder::actor_parts(engine, &new, handle, channels, gates, &caller);
                engine.tasks.spawn_on(Actor::new(parts).run(), &engine.runtime);
                continue;
            }
            let replace = plan.restart.iter().any(|change| change.service == handle.name());
            let (launcher, caller, kept) =
                (launcher_for(engine, &handle.spec), caller.clone(), handle.clone());
            let (registry, telemetry) = (&new.registry, &new.telemetry);
            let (heartbeat_timeout, heartbeat_interval) =
                (registry.heartbeat_timeout, registry.heartbeat_interval);
            let check_sample_ratio = telemetry.check_sample_ratio;
            // Every service at once: one being replaced does not hold up the others.
            let answer = tokio::spawn(async move {
                kept.reconfigure(|reply| Reconfiguration {
                    spec: kept.spec.clone(),
                    layer: kept.layer,
                    launcher,
                    gates,
                    heartbeat_timeout,
                    heartbeat_interval,
                    check_sample_ratio,
                    replace,
                    reply,
                    caller,
                })
                .await
            });
            answers.push((handle.name(), replace, answer));
        }
        // Wake the gates that watch the services just spawned.
        engine
            .changes
            .send_modify(|generation| *generation = generation.wrapping_add(1));
        let mut replaced = Vec::new();
        for (name, replace, answer) in answers {
            let answer = answer.await.unwrap_or(Err(ControlError::ShuttingDown));
            if replace {
                replaced.push((name, answer));
            } else if plan.update.iter().any(|change| change.service == name) {
                let (ok, error) = match &answer {
                    Ok(_) => (true, None),
                    Err(error) => (false, Some(error.to_string())),
                };
                let snapshot = roster
                    .get(name)
                    .map(ServiceHandle::snapshot)
                    .unwrap_or_else(Snapshot::initial);
                applied.push(Applied::of(name, "updated", &snapshot, ok, error));
            }
        }

        // 5. Until what was started has settled.
        let limit = plan
            .add
            .iter()
            .chain(plan.restart.iter().map(|change| &change.service))
            .filter_map(|name| roster.get(name))
            .map(|handle| handle.spec.shutdown.timeout + handle.spec.health.startup_timeout)
            .max()
            .unwrap_or_default();
        let deadline = Instant::now() + limit + SETTLE_MARGIN;
        for name in &plan.add {
            if let Some(handle) = roster.get(name) {
                applied.push(self.settled(handle, "added", Ok(()), deadline).await);
            }
        }
        for (name, answer) in replaced {
            if let Some(handle) = roster.get(name) {
                let answer = answer.map(|_| ());
                applied.push(self.settled(handle, "restarted", answer, deadline).await);
            }
        }
        Ok(applied)
    }

    /// Waits (until `deadline`, or the shutdown) for a service the reload started to be ready or to have
    /// settled otherwise, and says how it ended.
    async fn settled(
        &self,
        handle: &ServiceHandle,
        action: &'static str,
        answer: Result<(), ControlError>,
        deadline: Instant,
    ) -> Applied {
        let name = handle.name();
        if let Err(error) = answer {
            return Applied::of(name, action, &handle.snapshot(), false, Some(error.to_string()));
        }
        let settled = |s: &Snapshot| {
            s.ready
                || matches!(
                    s.state,
                    ServiceState::Failed | ServiceState::Stopped | ServiceState::Backoff
                )
                || (s.state == ServiceState::Pending && s.blocked)
        };
        let waited = tokio::select! {
            snapshot = tokio::time::timeout_at(deadline, handle.wait_for(settled)) => snapshot.ok(),
            () = self.engine.shutdown.cancelled() => None,
        };
        let timed_out = waited.is_none();
        let snapshot = waited.unwrap_or_else(|| handle.snapshot());
        if snapshot.ready {
            return Applied::of(name, action, &snapshot, true, None);
        }
        let error = match (&snapshot.waiting_on, &snapshot.last_error) {
            (Some(dependency), _) if snapshot.state == ServiceState::Pending => {
                format!("waiting on {dependency}")
            }
            (_, Some(error)) if settled(&snapshot) => error.clone(),
            _ if timed_out => format!("still {} when the reload stopped waiting", snapshot.state),
            _ => format!("{}", snapshot.state),
        };
        Applied::of(name, action, &snapshot, false, Some(error))
    }
}
