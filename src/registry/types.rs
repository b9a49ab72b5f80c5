//! What the registry holds and answers, in the API's JSON shape.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::status::EntryStatus;

/// A service registering itself (the body of `POST /api/orchestration/registry`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Unique name: `[a-z0-9_-]`, 1 to 63 characters, not a configured service.
    pub name: String,
    /// Free-form type; defaults to the name.
    #[serde(default, rename = "type")]
    pub service_type: Option<String>,
    /// Host or IP address where it can be reached.
    #[serde(default)]
    pub address: Option<String>,
    /// Port where it can be reached.
    #[serde(default)]
    pub port: Option<u16>,
    /// Free-form tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Free-form metadata; `metrics = "host:port"` (or a URL) lists it for Prometheus service discovery.
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

/// One registered service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegistryEntry {
    /// Its name.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub service_type: String,
    /// Where it can be reached.
    pub address: Option<String>,
    /// Port where it can be reached.
    pub port: Option<u16>,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// Free-form metadata.
    pub metadata: Map<String, Value>,
    /// Configured (and supervised) rather than registered at run time.
    pub managed: bool,
    /// Lifecycle state for managed services; `registered` for the others.
    pub status: EntryStatus,
    /// When it was registered.
    #[serde(serialize_with = "crate::clock::serialize_rfc3339")]
    pub registered_at: SystemTime,
    /// When its last heartbeat arrived.
    #[serde(serialize_with = "crate::clock::serialize_rfc3339_option")]
    pub last_heartbeat: Option<SystemTime>,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_seconds: Option<f64>,
    /// A heartbeat arrived within the heartbeat timeout.
    pub alive: bool,
    /// Heartbeats received so far.
    pub heartbeats_received: u64,
    /// Alive → dead transitions so far.
    pub heartbeat_timeouts: u64,
}

/// Registry totals (`registry_stats` in the API).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegistryStats {
    /// Every entry.
    pub total_services: usize,
    /// Configured services.
    pub managed_services: usize,
    /// Services registered at run time.
    pub registered_services: usize,
    /// Entries with a recent heartbeat.
    pub alive_services: usize,
    /// Entries without one.
    pub dead_services: usize,
    /// Entries per status.
    pub by_status: BTreeMap<String, usize>,
    /// Alive → dead transitions so far.
    pub heartbeat_timeouts: u64,
    /// Age of the oldest last heartbeat among entries that have one.
    pub oldest_heartbeat_age_seconds: Option<f64>,
    /// Expected time between heartbeats.
    pub heartbeat_interval_seconds: f64,
    /// No heartbeat for this long means dead.
    pub heartbeat_timeout_seconds: f64,
}

/// Why a registry request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// No such entry.
    #[error("unknown service {0:?}")]
    UnknownService(String),
    /// Configured services are registered by the configuration only.
    #[error("service {0:?} is configured: it cannot be registered or deregistered through the API")]
    Configured(String),
    /// The registration is malformed.
    #[error("{0}")]
    Invalid(String),
    /// No room for another service registered at run time.
    #[error(
        "the registry is full: {0} services registered at run time (registry.max_registered); deregister one first"
    )]
    Full(u32),
    /// The registry has stopped.
    #[error("the registry is not running")]
    Unavailable,
}
