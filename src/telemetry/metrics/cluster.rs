//! Fleet mode's metrics (DESIGN.md section 9): etcd reachability, the fleet's size, which singletons this
//! node leads, elections, failovers and the traffic to etcd.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use super::{opts, register};

/// Handles of the fleet metrics.
#[derive(Debug, Clone)]
pub struct ClusterMetrics {
    /// 1 while this node holds a live etcd lease (its keys are published and it may lead singletons).
    pub up: IntGauge,
    /// Nodes with a live lease in the fleet, as last read.
    pub nodes: IntGauge,
    /// 1 on the node that leads (runs) the singleton.
    pub leader: IntGaugeVec,
    /// Elections this node won, by singleton.
    pub elections: IntCounterVec,
    /// Elections won from another node that had held the singleton (its lease ended, or it gave it up).
    pub failovers: IntCounterVec,
    /// Leases this node lost (expired at etcd, or no longer certainly held).
    pub lease_losses: IntCounter,
    /// Calls to etcd, by result (`ok`, `error`).
    pub requests: IntCounterVec,
    /// Bytes sent to etcd.
    pub sent: IntCounter,
    /// Bytes received from etcd.
    pub received: IntCounter,
}

impl ClusterMetrics {
    pub(super) fn register(registry: &Registry) -> Self {
        let gauge = |name: &str, help: &str| {
            register(
                registry,
                IntGauge::with_opts(opts(name, help)).expect("valid metric"),
            )
        };
        let counter = |name: &str, help: &str| {
            register(
                registry,
                IntCounter::with_opts(opts(name, help)).expect("valid metric"),
            )
        };
        let counters = |name: &str, help: &str, labels: &[&str]| {
            register(
                registry,
                IntCounterVec::new(opts(name, help), labels).expect("valid metric"),
            )
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| -> IntGaugeVec {
            register(
                registry,
                IntGaugeVec::new(opts(name, help), labels).expect("valid metric"),
            )
        };
        Self {
            up: gauge(
                "cluster_up",
                "1 while this node holds a live etcd lease (fleet mode); 0 while etcd is unreachable or the lease is lost.",
            ),
            nodes: gauge(
                "cluster_nodes",
                "Nodes of the fleet with a live lease, as this node last read them.",
            ),
            leader: gauges(
                "singleton_leader",
                "1 on the node that leads (runs) the fleet singleton, 0 on the others.",
                &["service"],
            ),
            elections: counters(
                "singleton_elections_total",
                "Singleton elections this node won.",
                &["service"],
            ),
            failovers: counters(
                "singleton_failovers_total",
                "Singleton elections this node won from another node that had held it (fail-overs).",
                &["service"],
            ),
            lease_losses: counter(
                "cluster_lease_losses_total",
                "Times this node lost its etcd lease (expired, or not renewed for half its TTL).",
            ),
            requests: counters(
                "cluster_requests_total",
                "Calls to etcd, by result (ok, error).",
                &["result"],
            ),
            sent: counter("cluster_sent_bytes_total", "Bytes sent to etcd."),
            received: counter("cluster_received_bytes_total", "Bytes received from etcd."),
        }
    }
}
