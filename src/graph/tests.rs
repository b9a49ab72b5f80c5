use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn node(name: &str, priority: u32, required: &[&str], optional: &[&str]) -> Node {
    Node {
        name: name.to_owned(),
        service_type: name.to_owned(),
        priority,
        depends_on: required.iter().map(|s| s.to_string()).collect(),
        optional_depends_on: optional.iter().map(|s| s.to_string()).collect(),
    }
}

/// The seed's FOG topology, declared in the order of `examples/fog.toml`.
fn fog() -> DependencyGraph {
    DependencyGraph::new(vec![
        node("dao", 0, &[], &[]),
        node("scheduler", 0, &[], &["dao"]),
        node("edge", 0, &[], &["dao"]),
        node("fog_coordinator", 2, &[], &[]),
        node("harvest", 0, &["edge"], &[]),
        node("onion", 0, &["fog_coordinator"], &[]),
        node("p2p", 0, &[], &["fog_coordinator"]),
        node("vpn_coordinator", 0, &["fog_coordinator", "onion"], &[]),
        node("betanet", 5, &[], &["p2p", "onion"]),
        node("bitchat", 5, &[], &["p2p"]),
    ])
    .unwrap()
}

#[test]
fn fog_layers_match_the_seed() {
    let graph = fog();
    let layers: Vec<(u32, Vec<&str>)> = graph.layers();
    assert_eq!(
        layers,
        vec![
            (0, vec!["dao"]),
            (1, vec!["scheduler", "edge"]),
            (2, vec!["fog_coordinator", "harvest"]),
            (3, vec!["onion", "p2p"]),
            (4, vec!["vpn_coordinator"]),
            (5, vec!["betanet", "bitchat"]),
        ]
    );
    assert_eq!(graph.layer_count(), 6);
}

#[test]
fn fog_orders_match_the_seed() {
    let graph = fog();
    assert_eq!(graph.startup_order()[..3], ["dao", "scheduler", "edge"]);
    assert_eq!(graph.shutdown_order()[..2], ["bitchat", "betanet"]);
    let mut reversed = graph.startup_order();
    reversed.reverse();
    assert_eq!(graph.shutdown_order(), reversed);
}

#[test]
fn fog_visualization_is_the_seed_text_byte_for_byte() {
    let seed = include_str!("../../tests/data/seed_graph.txt");
    assert_eq!(graph_text_with_newline(&fog()), seed);
}

fn graph_text_with_newline(graph: &DependencyGraph) -> String {
    graph.visualization() + "\n"
}

#[test]
fn a_root_is_layer_zero_and_priority_is_a_floor() {
    let graph = DependencyGraph::new(vec![
        node("root", 0, &[], &[]),
        node("floored", 3, &[], &[]),
        node("above_floor", 0, &["floored"], &[]),
        node("floor_below_dependencies", 1, &["above_floor"], &[]),
    ])
    .unwrap();
    assert_eq!(graph.layer("root"), Some(0));
    assert_eq!(graph.layer("floored"), Some(3));
    assert_eq!(graph.layer("above_floor"), Some(4));
    assert_eq!(graph.layer("floor_below_dependencies"), Some(5));
    assert_eq!(graph.layer("missing"), None);
}

#[test]
fn optional_dependencies_raise_the_layer_like_required_ones() {
    let graph = DependencyGraph::new(vec![
        node("a", 0, &[], &[]),
        node("b", 0, &[], &["a"]),
        node("c", 0, &["a"], &["b"]),
    ])
    .unwrap();
    assert_eq!(
        (graph.layer("a"), graph.layer("b"), graph.layer("c")),
        (Some(0), Some(1), Some(2))
    );
}

#[test]
fn startup_order_breaks_ties_by_declaration_order() {
    let graph = DependencyGraph::new(vec![
        node("z", 0, &[], &[]),
        node("y", 0, &["z"], &[]),
        node("a", 0, &[], &[]),
        node("b", 0, &["a"], &[]),
    ])
    .unwrap();
    assert_eq!(graph.startup_order(), ["z", "a", "y", "b"]);
    assert_eq!(graph.shutdown_order(), ["b", "y", "a", "z"]);
}

#[test]
fn dependents_and_dependencies_keep_declaration_order() {
    let graph = fog();
    assert_eq!(graph.dependents("dao"), ["scheduler", "edge"]);
    assert_eq!(
        graph.dependents("fog_coordinator"),
        ["onion", "p2p", "vpn_coordinator"]
    );
    assert_eq!(
        graph.dependencies("vpn_coordinator"),
        ["fog_coordinator", "onion"]
    );
    assert_eq!(graph.optional_dependencies("betanet"), ["p2p", "onion"]);
    assert!(graph.dependents("bitchat").is_empty());
}

#[test]
fn dot_draws_optional_edges_dashed() {
    let dot = fog().to_dot();
    assert!(dot.starts_with("digraph dependencies {\n"));
    assert!(dot.contains("  \"harvest\" -> \"edge\";\n"));
    assert!(dot.contains("  \"edge\" -> \"dao\" [style=dashed, label=\"optional\"];\n"));
    assert!(dot.contains("\"vpn_coordinator\" [label=\"vpn_coordinator\\nlayer 4\"];"));
    assert_eq!(dot.matches(" -> ").count(), 10);
    assert!(dot.ends_with("}\n"));
}

#[test]
fn json_body_has_the_seed_shape() {
    let body = fog().to_json();
    assert_eq!(body["success"], true);
    assert_eq!(body["startup_order"][0], "dao");
    assert_eq!(body["shutdown_order"][0], "bitchat");
    assert_eq!(
        body["dependencies"]["harvest"],
        json!({
            "type": "harvest",
            "dependencies": ["edge"],
            "optional_dependencies": [],
            "dependents": [],
            "layer": 2
        })
    );
    assert_eq!(
        body["dependencies"]["betanet"]["optional_dependencies"],
        json!(["p2p", "onion"])
    );
    assert_eq!(body["dependencies"]["betanet"]["layer"], 5);
    assert!(
        body["visualization"]
            .as_str()
            .unwrap()
            .starts_with("Service Dependency Graph:\n")
    );
    let keys: Vec<&String> = body["dependencies"].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 10);
    assert_eq!(keys[0], "dao");
}

#[test]
fn graph_errors_are_all_reported() {
    let errors = DependencyGraph::new(vec![
        node("a", 0, &["a", "ghost"], &[]),
        node("b", 0, &["c"], &[]),
        node("c", 0, &[], &["b"]),
        node("b", 0, &[], &[]),
    ])
    .unwrap_err();
    assert_eq!(
        errors,
        vec![
            GraphError::DuplicateService("b".into()),
            GraphError::SelfDependency {
                service: "a".into(),
                kind: DependencyKind::Required
            },
            GraphError::UnknownDependency {
                service: "a".into(),
                dependency: "ghost".into(),
                kind: DependencyKind::Required
            },
            GraphError::Cycle {
                path: vec!["b".into(), "c".into(), "b".into()]
            },
        ]
    );
}

#[test]
fn an_empty_graph_is_valid() {
    let graph = DependencyGraph::new(Vec::new()).unwrap();
    assert!(graph.is_empty());
    assert_eq!(graph.layer_count(), 0);
    assert_eq!(
        graph.visualization(),
        "Service Dependency Graph:\n=================================================="
    );
}

/// A random DAG: `count` services with random priorities, each depending (required or optional) only on
/// services of lower rank, declared in a random order so declaration and topology are unrelated.
fn random_dag() -> impl Strategy<Value = Vec<Node>> {
    (1usize..60)
        .prop_flat_map(|count| {
            (
                Just(count),
                proptest::collection::vec((any::<u8>(), 0u32..4), count),
                proptest::collection::vec(any::<u16>(), count * count),
                Just(()).prop_perturb(move |(), mut rng| {
                    let mut order: Vec<usize> = (0..count).collect();
                    for i in (1..count).rev() {
                        order.swap(i, rng.random_range(0..=i));
                    }
                    order
                }),
            )
        })
        .prop_map(|(count, specs, coins, declaration)| {
            let mut nodes: Vec<Node> = (0..count)
                .map(|rank| {
                    let mut node = node(&format!("s{rank}"), 0, &[], &[]);
                    node.priority = if specs[rank].0 % 5 == 0 {
                        specs[rank].1 * 2
                    } else {
                        0
                    };
                    for lower in 0..rank {
                        match coins[rank * count + lower] % 10 {
                            0 => node.depends_on.push(format!("s{lower}")),
                            1 => node.optional_depends_on.push(format!("s{lower}")),
                            _ => {}
                        }
                    }
                    node
                })
                .collect();
            let mut declared = Vec::with_capacity(count);
            for &rank in &declaration {
                declared.push(std::mem::replace(&mut nodes[rank], node("", 0, &[], &[])));
            }
            declared
        })
}

proptest! {
    #[test]
    fn random_dags_are_layered_and_ordered_by_their_edges(nodes in random_dag()) {
        let graph = DependencyGraph::new(nodes.clone()).unwrap();
        let startup = graph.startup_order();
        let position: HashMap<&str, usize> = startup.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let declared: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
        prop_assert_eq!(startup.len(), nodes.len());
        for node in &nodes {
            let layer = graph.layer(&node.name).unwrap();
            let mut expected = node.priority;
            for dependency in node.depends_on.iter().chain(&node.optional_depends_on) {
                let dependency_layer = graph.layer(dependency).unwrap();
                prop_assert!(dependency_layer < layer, "edge {} -> {} does not rise", dependency, node.name);
                prop_assert!(position[dependency.as_str()] < position[node.name.as_str()]);
                expected = expected.max(dependency_layer + 1);
            }
            prop_assert_eq!(layer, expected, "layer rule broken for {}", &node.name);
        }
        for pair in startup.windows(2) {
            let key = |name: &str| (graph.layer(name).unwrap(), declared[name]);
            prop_assert!(key(pair[0]) < key(pair[1]), "startup order not by (layer, declaration)");
        }
        let mut reversed = startup.clone();
        reversed.reverse();
        prop_assert_eq!(graph.shutdown_order(), reversed);
    }

    #[test]
    fn planted_cycles_are_rejected_with_a_real_cycle(
        nodes in random_dag().prop_filter("room for a cycle", |n| n.len() >= 2),
        picks in proptest::collection::vec(any::<prop::sample::Index>(), 2..6),
        optional_back_edge in any::<bool>(),
    ) {
        // Plant a chain c0 <- c1 <- ... <- ck in rank order, then close it with c0 depending on ck.
        let mut nodes = nodes;
        let mut by_rank: Vec<usize> = (0..nodes.len()).collect();
        by_rank.sort_by_key(|&i| nodes[i].name[1..].parse::<usize>().unwrap());
        let mut chain: Vec<usize> = picks.iter().map(|pick| by_rank[pick.index(by_rank.len())]).collect();
        chain.sort_by_key(|&i| nodes[i].name[1..].parse::<usize>().unwrap());
        chain.dedup();
        prop_assume!(chain.len() >= 2);
        for pair in chain.windows(2) {
            let dependency = nodes[pair[0]].name.clone();
            let dependent = &mut nodes[pair[1]];
            if !dependent.depends_on.contains(&dependency) && !dependent.optional_depends_on.contains(&dependency) {
                dependent.depends_on.push(dependency);
            }
        }
        let last = nodes[*chain.last().unwrap()].name.clone();
        let first = &mut nodes[chain[0]];
        if optional_back_edge { first.optional_depends_on.push(last) } else { first.depends_on.push(last) }

        let edges: HashSet<(String, String)> = nodes
            .iter()
            .flat_map(|n| n.depends_on.iter().chain(&n.optional_depends_on).map(|d| (n.name.clone(), d.clone())))
            .collect();
        let errors = DependencyGraph::new(nodes).unwrap_err();
        prop_assert!(!errors.is_empty());
        for error in errors {
            let GraphError::Cycle { path } = error else {
                return Err(TestCaseError::fail(format!("unexpected error {error}")));
            };
            prop_assert!(path.len() >= 3);
            prop_assert_eq!(path.first(), path.last());
            let inner: HashSet<&String> = path[..path.len() - 1].iter().collect();
            prop_assert_eq!(inner.len(), path.len() - 1, "cycle repeats a service: {:?}", path);
            for step in path.windows(2) {
                prop_assert!(edges.contains(&(step[0].clone(), step[1].clone())), "{:?} is not an edge", step);
            }
        }
    }
}

#[test]
fn a_chain_of_a_hundred_thousand_services_does_not_overflow_the_stack() {
    // Test threads have 2 MiB stacks: a recursive walk overflows after some ten thousand nodes.
    let names: Vec<String> = (0..100_000).map(|i| format!("s{i}")).collect();
    let nodes = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let previous: Vec<&str> = i.checked_sub(1).map(|p| names[p].as_str()).into_iter().collect();
            node(name, 0, &previous, &[])
        })
        .collect();
    let graph = DependencyGraph::new(nodes).unwrap();
    assert_eq!(graph.layer("s99999"), Some(99_999));
    // And a cycle closing the whole chain is found and named.
    let mut nodes: Vec<Node> = (0..100_000)
        .map(|i| node(&names[i], 0, &[&names[(i + 1) % 100_000]], &[]))
        .collect();
    nodes.truncate(100_000);
    let Err(errors) = DependencyGraph::new(nodes) else {
        panic!("a cycle")
    };
    assert!(matches!(&errors[0], GraphError::Cycle { path } if path.len() == 100_001));
}
