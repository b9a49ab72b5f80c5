//! Time spent healthy over sliding windows (1 h, 24 h, 7 d), from a log of status changes.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::HealthStatus;

/// The longest window asked for; older changes are dropped.
const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Status changes with their times, pruned to the last seven days.
#[derive(Debug, Clone)]
pub struct UptimeLog {
    changes: VecDeque<(Instant, HealthStatus)>,
}

impl UptimeLog {
    /// A log that starts with no data at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            changes: VecDeque::from([(now, HealthStatus::Unknown)]),
        }
    }

    /// Whether `status` differs from the status in force (observing it would change the log).
    pub fn changes_with(&self, status: HealthStatus) -> bool {
        self.changes.back().is_none_or(|(_, last)| *last != status)
    }

    /// Notes the status in force from `now` on.
    pub fn observe(&mut self, status: HealthStatus, now: Instant) {
        if self.changes.back().is_some_and(|(_, last)| *last == status) {
            return;
        }
        self.changes.push_back((now, status));
        if let Some(horizon) = now.checked_sub(RETENTION) {
            while self.changes.len() > 1 && self.changes[1].0 <= horizon {
                self.changes.pop_front();
            }
        }
    }

    /// Percentage of the known (not `unknown`) time within the last `window` that was healthy. With no known
    /// time yet, 100 when the service is healthy now and 0 otherwise.
    pub fn percent_healthy(&self, window: Duration, now: Instant) -> f64 {
        let window_start = now.checked_sub(window);
        let (mut known, mut healthy) = (Duration::ZERO, Duration::ZERO);
        for (position, &(start, status)) in self.changes.iter().enumerate() {
            let end = self.changes.get(position + 1).map_or(now, |(next, _)| *next);
            let start = window_start.map_or(start, |w| start.max(w));
            let Some(span) = end.checked_duration_since(start) else {
                continue;
            };
            if status != HealthStatus::Unknown {
                known += span;
            }
            if status == HealthStatus::Healthy {
                healthy += span;
            }
        }
        if known.is_zero() {
            let healthy_now = self
                .changes
                .back()
                .is_some_and(|(_, s)| *s == HealthStatus::Healthy);
            return if healthy_now { 100.0 } else { 0.0 };
        }
        healthy.as_secs_f64() / known.as_secs_f64() * 100.0
    }
}
