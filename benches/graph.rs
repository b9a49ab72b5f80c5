//! Building and ordering large dependency graphs. Run with `cargo bench --bench graph`.
//!
//! Prints the median and worst of several runs for 10,000 services with ~30,000 edges (the foundation issue's
//! target: well under 100 ms), and for loading the same topology through the whole config pipeline.

use std::hint::black_box;
use std::time::{Duration, Instant};

use fog_orchestrator::config::Config;
use fog_orchestrator::graph::{DependencyGraph, Node};

const SERVICES: usize = 10_000;
const EDGES_PER_SERVICE: usize = 3;
const RUNS: usize = 15;

/// A deterministic pseudo-random DAG: each service depends on up to three earlier ones, a quarter of the
/// edges optional, one service in fifty with a priority.
fn nodes() -> Vec<Node> {
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |bound: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % bound as u64) as usize
    };
    (0..SERVICES)
        .map(|i| {
            let mut node = Node {
                name: format!("service-{i}"),
                service_type: "bench".to_owned(),
                priority: if next(50) == 0 { next(20) as u32 } else { 0 },
                depends_on: Vec::new(),
                optional_depends_on: Vec::new(),
            };
            for _ in 0..EDGES_PER_SERVICE.min(i) {
                let dependency = format!("service-{}", next(i));
                if node.depends_on.contains(&dependency) || node.optional_depends_on.contains(&dependency) {
                    continue;
                }
                if next(4) == 0 {
                    node.optional_depends_on.push(dependency);
                } else {
                    node.depends_on.push(dependency);
                }
            }
            node
        })
        .collect()
}

fn toml(nodes: &[Node]) -> String {
    let list = |names: &[String]| {
        names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    nodes
        .iter()
        .map(|n| {
            format!(
                "[services.{}]\npriority = {}\ndepends_on = [{}]\noptional_depends_on = [{}]\n",
                n.name,
                n.priority,
                list(&n.depends_on),
                list(&n.optional_depends_on)
            )
        })
        .collect()
}

fn measure(label: &str, mut run: impl FnMut()) {
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed()
        })
        .collect();
    times.sort_unstable();
    println!(
        "{label:<58} median {:>9.2} ms   worst {:>9.2} ms   ({RUNS} runs)",
        times[RUNS / 2].as_secs_f64() * 1e3,
        times[RUNS - 1].as_secs_f64() * 1e3
    );
}

fn main() {
    let nodes = nodes();
    let edges: usize = nodes
        .iter()
        .map(|n| n.depends_on.len() + n.optional_depends_on.len())
        .sum();
    println!("graph: {SERVICES} services, {edges} edges");

    measure("build + layers + startup/shutdown order", || {
        let graph = DependencyGraph::new(black_box(nodes.clone())).expect("acyclic");
        black_box((graph.startup_order(), graph.shutdown_order()));
    });
    let graph = DependencyGraph::new(nodes.clone()).expect("acyclic");
    measure("render text visualization", || {
        black_box(graph.visualization());
    });
    measure("render /dependencies JSON body", || {
        black_box(graph.to_json());
    });

    let text = toml(&nodes);
    measure("load + validate TOML config (config crate, all layers)", || {
        black_box(Config::from_toml(&text).expect("valid"));
    });

    let mut cyclic = nodes.clone();
    cyclic[0].depends_on.push(format!("service-{}", SERVICES - 1));
    measure("reject a graph with a cycle (and find its path)", || {
        black_box(DependencyGraph::new(cyclic.clone()).expect_err("cyclic"));
    });
}
