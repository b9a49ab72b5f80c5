//! The registry's per-entry heartbeat series, kept as atomics in a name-ordered map and written straight
//! into the exposition (like the per-service families): the registry may hold 100,000 entries, and the
//! prometheus crate's gather would copy each of their series on every scrape.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::service::{escape, header, number, series_start};
use super::{Changes, Format, Part};

/// The heartbeat series of one registry entry.
#[derive(Debug)]
struct Heartbeat {
    /// The entry's name as a label value.
    label: String,
    received: AtomicU64,
    /// Unix seconds of the last heartbeat, as `f64` bits (0 before the first).
    last_received: AtomicU64,
    timeouts: AtomicU64,
}

/// A family's name, help, type, and value of one entry's series.
type Family = (&'static str, &'static str, &'static str, fn(&Heartbeat) -> f64);

/// Every entry's heartbeat series, by entry name, and where their changes are counted.
#[derive(Debug)]
pub(super) struct Heartbeats {
    entries: Mutex<BTreeMap<String, Arc<Heartbeat>>>,
    changes: Arc<Changes>,
}

/// The three families.
const FAMILIES: [Part; 3] = [
    Part::HeartbeatLast,
    Part::HeartbeatTimeouts,
    Part::HeartbeatsReceived,
];

impl Heartbeats {
    /// No entries yet; their changes counted in `changes`.
    pub(super) fn new(changes: Arc<Changes>) -> Self {
        Self {
            entries: Mutex::default(),
            changes,
        }
    }

    fn entry(&self, name: &str) -> Arc<Heartbeat> {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = entries.get(name) {
            return entry.clone();
        }
        let entry = Arc::new(Heartbeat {
            label: escape(name),
            received: AtomicU64::new(0),
            last_received: AtomicU64::new(0f64.to_bits()),
            timeouts: AtomicU64::new(0),
        });
        entries.insert(name.to_owned(), entry.clone());
        self.changes.changed_each(&FAMILIES);
        entry
    }

    /// Creates `name`'s series (at zero) if it has none.
    pub(super) fn series(&self, name: &str) {
        self.entry(name);
    }

    /// A heartbeat of `name` arrived at `unix_seconds`.
    pub(super) fn received(&self, name: &str, unix_seconds: f64) {
        let entry = self.entry(name);
        entry.received.fetch_add(1, Ordering::Relaxed);
        entry
            .last_received
            .store(unix_seconds.to_bits(), Ordering::Relaxed);
        self.changes
            .changed_each(&[Part::HeartbeatLast, Part::HeartbeatsReceived]);
    }

    /// `name` went from alive to dead.
    pub(super) fn timed_out(&self, name: &str) {
        self.entry(name).timeouts.fetch_add(1, Ordering::Relaxed);
        self.changes.changed(Part::HeartbeatTimeouts);
    }

    /// Forgets `name`'s series.
    pub(super) fn remove(&self, name: &str) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if entries.remove(name).is_some() {
            self.changes.changed_each(&FAMILIES);
        }
    }

    /// Writes one of the three families (`part`), entries in name order.
    pub(super) fn write(&self, text: &mut String, format: Format, part: Part) {
        let (name, help, kind, value): Family = match part {
            Part::HeartbeatLast => (
                "heartbeat_last_received_timestamp_seconds",
                "When the last heartbeat arrived (Unix time), 0 before the first.",
                "gauge",
                |h| f64::from_bits(h.last_received.load(Ordering::Relaxed)),
            ),
            Part::HeartbeatTimeouts => (
                "heartbeat_timeouts_total",
                "Alive to dead transitions: no heartbeat within the heartbeat timeout.",
                "counter",
                |h| h.timeouts.load(Ordering::Relaxed) as f64,
            ),
            Part::HeartbeatsReceived => (
                "heartbeats_received_total",
                "Heartbeats received.",
                "counter",
                |h| h.received.load(Ordering::Relaxed) as f64,
            ),
            _ => return,
        };
        // Copied out, so heartbeats are not held up while the family is written.
        let entries: Vec<Arc<Heartbeat>> = {
            let entries = self
                .entries
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            entries.values().cloned().collect()
        };
        if entries.is_empty() {
            return;
        }
        header(text, format, name, help, kind);
        for entry in &entries {
            series_start(text, name, &entry.label);
            text.push_str("\"} ");
            number(text, value(entry));
        }
    }
}
