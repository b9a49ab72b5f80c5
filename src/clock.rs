//! Wall-clock time for the API, derived from tokio's clock so that paused-time tests see deterministic
//! timestamps and production sees the real time.

use std::time::{Duration, SystemTime};

use serde::Serializer;
use tokio::time::Instant;

/// Maps tokio instants to wall-clock times from one reading taken at creation.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall: SystemTime,
    monotonic: Instant,
}

impl Clock {
    /// A clock anchored at the current wall time.
    pub fn system() -> Self {
        Self::anchored(SystemTime::now())
    }

    /// A clock whose `now()` is `wall` at the moment of creation (tests use a fixed epoch).
    pub fn anchored(wall: SystemTime) -> Self {
        Self {
            wall,
            monotonic: Instant::now(),
        }
    }

    /// The wall time now.
    pub fn now(&self) -> SystemTime {
        self.at(Instant::now())
    }

    /// The wall time at `instant`.
    pub fn at(&self, instant: Instant) -> SystemTime {
        match instant.checked_duration_since(self.monotonic) {
            Some(later) => self.wall + later,
            None => self.wall - self.monotonic.duration_since(instant),
        }
    }
}

/// RFC 3339 UTC with whole seconds, as the seed shows: `2025-10-22T04:00:00Z`.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// RFC 3339 UTC with milliseconds, for check results and history: `2025-10-22T04:00:00.123Z`.
pub fn rfc3339_millis(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// Seconds since the Unix epoch (for metrics).
pub fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// Serde helper: a `SystemTime` as RFC 3339.
pub fn serialize_rfc3339<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&rfc3339(*time))
}

/// Serde helper: a `SystemTime` as RFC 3339 with milliseconds (check results and history).
pub fn serialize_rfc3339_millis<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&rfc3339_millis(*time))
}

/// Serde helper: an optional `SystemTime` as RFC 3339 or null.
pub fn serialize_rfc3339_option<S: Serializer>(
    time: &Option<SystemTime>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => serializer.serialize_str(&rfc3339(*time)),
        None => serializer.serialize_none(),
    }
}
