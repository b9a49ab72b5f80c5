//! Configuration reload (DESIGN.md section 8), whatever asked for it: `SIGHUP`, `POST
//! /api/orchestration/reload` or `fog-orchestrator reload` (which asks the API).
//!
//! [`Reloader::reload`] reads the configuration again through the same layering and validation as at
//! start, compares it with the running one ([`Plan::between`]) and, unless it is a dry run, has the
//! supervisor apply only the difference ([`Supervisor::reload`]). A file with any problem changes nothing.
//! One reload at a time: another one meanwhile is refused. Each reload is a `reload configuration` span
//! (a child of the API request that asked, or a root for SIGHUP) whose children are the stops, restarts and
//! starts it caused; it is counted in `config_reloads_total{result}`, and a successful one moves
//! `config_last_reload_success_timestamp_seconds` and `config_info{hash}`.

use std::time::SystemTime;

use tracing::Instrument;
use tracing::field::Empty;

use serde_json::json;

use crate::config::{Config, ConfigError, Plan, Source};
use crate::events::EventKind;
use crate::supervisor::{Applied, ControlError, Supervisor};
use crate::telemetry::metrics::ReloadResult;

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `POST /api/orchestration/reload` (and so `fog-orchestrator reload`).
    Api,
    /// `SIGHUP`.
    Signal,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Api => "api",
            Trigger::Signal => "signal",
        }
    }
}

/// Why a reload was not even tried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The configuration did not come from a file that can be read again (an embedding program's).
    #[error("this orchestrator has no configuration file to read again")]
    NoSource,
    /// Another reload is being planned or applied.
    #[error("another configuration reload is in progress")]
    Busy,
    /// The orchestrator is shutting down.
    #[error("the orchestrator is shutting down")]
    ShuttingDown,
}

/// How a reload ended.
#[derive(Debug)]
pub enum Reloaded {
    /// The file has problems: nothing changed.
    Invalid(ConfigError),
    /// A dry run: what applying would do.
    Planned {
        /// The plan.
        plan: Plan,
        /// The configuration read again.
        new: Config,
        /// Its fingerprint (`config_info{hash}` once applied).
        hash: String,
    },
    /// Applied.
    Applied {
        /// What was applied.
        plan: Plan,
        /// The configuration now running.
        new: Config,
        /// Its fingerprint (`config_info{hash}`).
        hash: String,
        /// What happened to each service added, removed, restarted or updated.
        applied: Vec<Applied>,
    },
}

/// Reads the configuration again and applies the difference; one reload at a time.
#[derive(Debug)]
pub struct Reloader {
    supervisor: Supervisor,
    source: Option<Source>,
    /// The configuration running now: what the next reload is compared with.
    running: tokio::sync::Mutex<Config>,
}

impl Reloader {
    /// A reloader for `supervisor`, which runs `running`, read from `source` (none: every reload is
    /// refused). Exports the running configuration's fingerprint.
    pub fn new(supervisor: Supervisor, source: Option<Source>, running: Config) -> Self {
        supervisor
            .metrics()
            .config_loaded(&running.fingerprint(), SystemTime::now());
        Self {
            supervisor,
            source,
            running: tokio::sync::Mutex::new(running),
        }
    }

    /// Reads the configuration again and, unless `dry_run`, applies what changed.
    pub async fn reload(&self, trigger: Trigger, dry_run: bool) -> Result<Reloaded, Refusal> {
        let Some(source) = &self.source else {
            return Err(Refusal::NoSource);
        };
        let Ok(mut running) = self.running.try_lock() else {
            return Err(Refusal::Busy);
        };
        let span = tracing::info_span!(
            "reload configuration",
            orchestrator.reload.trigger = trigger.as_str(),
            orchestrator.reload.dry_run = dry_run,
            orchestrator.config.hash = Empty,
            orchestrator.reload.added = Empty,
            orchestrator.reload.removed = Empty,
            orchestrator.reload.restarted = Empty,
            orchestrator.reload.updated = Empty,
            error.type = Empty,
            otel.status_code = Empty,
            otel.status_description = Empty,
        );
        tracing::info!(parent: &span, trigger = trigger.as_str(), dry_run, "reading the configuration again");
        let new = match Config::load(source) {
            Ok(new) => new,
            Err(error) => {
                span.record("error.type", "invalid_configuration");
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_description", error.to_string());
                tracing::error!(parent: &span, trigger = trigger.as_str(), %error, "configuration reload refused: nothing changed");
                if !dry_run {
                    self.supervisor.metrics().reloaded(ReloadResult::Failure);
                    self.event(
                        &span,
                        trigger,
                        json!({"result": "failure", "error": error.to_string()}),
                    );
                }
                return Ok(Reloaded::Invalid(error));
            }
        };
        let plan = Plan::between(&running, &new);
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let hash = new.fingerprint();
        span.record("orchestrator.config.hash", hash.as_str());
        span.record("orchestrator.reload.added", count(plan.add.len()));
        span.record("orchestrator.reload.removed", count(plan.remove.len()));
        span.record("orchestrator.reload.restarted", count(plan.restart.len()));
        span.record("orchestrator.reload.updated", count(plan.update.len()));
        if dry_run {
            return Ok(Reloaded::Planned { plan, new, hash });
        }
        let applied = match self
            .supervisor
            .reload(new.clone(), &plan)
            .instrument(span.clone())
            .await
        {
            Ok(applied) => applied,
            Err(ControlError::ReloadInProgress) => return Err(Refusal::Busy),
            Err(_) => return Err(Refusal::ShuttingDown),
        };
        let metrics = self.supervisor.metrics();
        metrics.reloaded(ReloadResult::Success);
        metrics.config_loaded(&hash, SystemTime::now());
        self.event(
            &span,
            trigger,
            json!({
                "result": "success",
                "config_hash": hash,
                "added": plan.add,
                "removed": plan.remove,
                "restarted": plan.restart.iter().map(|c| &c.service).collect::<Vec<_>>(),
                "updated": plan.update.iter().map(|c| &c.service).collect::<Vec<_>>(),
                "needs_orchestrator_restart": plan.needs_orchestrator_restart,
            }),
        );
        let trouble: Vec<String> = applied
            .iter()
            .filter(|a| !a.ok)
            .map(|a| format!("{} ({})", a.service, a.error.as_deref().unwrap_or("not ok")))
            .collect();
        if trouble.is_empty() {
            tracing::info!(parent: &span, trigger = trigger.as_str(), added = plan.add.len(), removed = plan.remove.len(),
                restarted = plan.restart.len(), updated = plan.update.len(), "configuration reloaded");
        } else {
            tracing::warn!(parent: &span, trigger = trigger.as_str(), services = %trouble.join(", "),
                "configuration reloaded; some services did not come up");
        }
        if !plan.needs_orchestrator_restart.is_empty() {
            tracing::warn!(parent: &span, keys = %plan.needs_orchestrator_restart.join(", "),
                "these settings changed but apply only when the orchestrator restarts");
        }
        *running = in_effect(&running, new.clone());
        Ok(Reloaded::Applied {
            plan,
            new,
            hash,
            applied,
        })
    }
}

impl Reloader {
    /// Publishes the reload on the event stream, with its trace.
    fn event(&self, span: &tracing::Span, trigger: Trigger, mut details: serde_json::Value) {
        details["trigger"] = json!(trigger.as_str());
        let trace = crate::telemetry::trace::trace_id(span);
        self.supervisor
            .events()
            .publish(EventKind::Reload, None, trace, details);
    }
}

/// What runs after `new` was applied over `running`: `new`, but for the settings that only a restart of
/// the orchestrator applies, which stay as they were (the next reload still reports them as pending).
fn in_effect(running: &Config, mut new: Config) -> Config {
    if new.api.listen != running.api.listen {
        // The access rules wait for the new address with it (see `Plan::between`).
        new.api = running.api.clone();
    }
    let (old, telemetry) = (&running.telemetry, &mut new.telemetry);
    telemetry.log_format = old.log_format;
    telemetry.otlp_endpoint.clone_from(&old.otlp_endpoint);
    telemetry.otlp_protocol = old.otlp_protocol;
    new
}
