//! The dependency graph: which service needs which, the startup layers, and the start and stop orders.
//!
//! Pure data, no async. Built once from the configuration with [`DependencyGraph::new`], which rejects
//! self-dependencies, unknown dependencies and cycles (naming each cycle's whole path) and otherwise
//! computes, per DESIGN.md section 4:
//!
//! - `layer(s) = max(priority(s), 1 + max layer of every dependency, required or optional)`, 0 for a root;
//! - the startup order: by layer, then by declaration order; the shutdown order is exactly its reverse.
//!
//! Rendering (the seed's text, Graphviz DOT, the `/dependencies` JSON body) lives in `render`.

mod render;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;

use petgraph::algo::{kosaraju_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};

/// One service as the graph sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Service name, unique in the graph.
    pub name: String,
    /// Free-form service type, shown in the `/dependencies` body.
    pub service_type: String,
    /// Floor for the service's layer.
    pub priority: u32,
    /// Required dependencies, in declaration order.
    pub depends_on: Vec<String>,
    /// Optional dependencies, in declaration order.
    pub optional_depends_on: Vec<String>,
}

/// Whether a dependency is required (must be ready) or optional (orders the start, never blocks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DependencyKind {
    /// Listed in `depends_on`.
    Required,
    /// Listed in `optional_depends_on`.
    Optional,
}

impl DependencyKind {
    /// The config key the dependency is listed under.
    pub fn config_key(self) -> &'static str {
        match self {
            DependencyKind::Required => "depends_on",
            DependencyKind::Optional => "optional_depends_on",
        }
    }
}

impl fmt::Display for DependencyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DependencyKind::Required => "required",
            DependencyKind::Optional => "optional",
        })
    }
}

/// Why a set of nodes does not form a valid dependency graph.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// Two nodes share a name.
    #[error("service {0:?} is declared more than once")]
    DuplicateService(String),
    /// A service lists itself as a dependency.
    #[error("service {service:?} depends on itself")]
    SelfDependency {
        /// The service.
        service: String,
        /// The list it appears in.
        kind: DependencyKind,
    },
    /// A dependency names no service of the graph.
    #[error("service {service:?} depends on unknown service {dependency:?}")]
    UnknownDependency {
        /// The dependent service.
        service: String,
        /// The missing name.
        dependency: String,
        /// The list it appears in.
        kind: DependencyKind,
    },
    /// Services that (transitively) depend on each other; the path starts and ends with the same name and
    /// reads "depends on" from left to right.
    #[error("dependency cycle: {}", path.join(" -> "))]
    Cycle {
        /// The services along the cycle, first one repeated at the end.
        path: Vec<String>,
    },
}

/// Per-service facts, indexed by declaration order.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    service_type: String,
    required: Vec<usize>,
    optional: Vec<usize>,
    dependents: Vec<usize>,
    layer: u32,
}

/// A validated, acyclic dependency graph with its layers and orders.
#[derive(Debug, Clone)]
pub struct DependencyGraph {
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
    startup: Vec<usize>,
}

impl DependencyGraph {
    /// Validates `nodes` (in declaration order) and computes layers and orders, or returns every problem.
    pub fn new(nodes: Vec<Node>) -> Result<Self, Vec<GraphError>> {
        let mut errors = Vec::new();
        let mut index = HashMap::with_capacity(nodes.len());
        for (position, node) in nodes.iter().enumerate() {
            if index.contains_key(&node.name) {
                errors.push(GraphError::DuplicateService(node.name.clone()));
            } else {
                index.insert(node.name.clone(), position);
            }
        }

        let mut graph: DiGraph<(), DependencyKind, u32> =
            DiGraph::with_capacity(nodes.len(), nodes.len() * 3);
        for _ in &nodes {
            graph.add_node(());
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(nodes.len());
        for (position, node) in nodes.iter().enumerate() {
            let mut resolve = |names: &[String], kind: DependencyKind| -> Vec<usize> {
                let mut resolved = Vec::with_capacity(names.len());
                for dependency in names {
                    match index.get(dependency) {
                        Some(&target) if target == position => errors.push(GraphError::SelfDependency {
                            service: node.name.clone(),
                            kind,
                        }),
                        Some(&target) => {
                            // Edges point from a dependency to its dependent: the direction startup flows.
                            graph.add_edge(NodeIndex::new(target), NodeIndex::new(position), kind);
                            resolved.push(target);
                        }
                        None => errors.push(GraphError::UnknownDependency {
                            service: node.name.clone(),
                            dependency: dependency.clone(),
                            kind,
                        }),
                    }
                }
                resolved
            };
            let required = resolve(&node.depends_on, DependencyKind::Required);
            let optional = resolve(&node.optional_depends_on, DependencyKind::Optional);
            entries.push(Entry {
                name: node.name.clone(),
                service_type: node.service_type.clone(),
                required,
                optional,
                dependents: Vec::new(),
                layer: node.priority,
            });
        }

        errors.extend(find_cycles(&graph, &entries));
        if !errors.is_empty() {
            return Err(errors);
        }
        let topological = toposort(&graph, None).map_err(|cycle| {
            // find_cycles reports every cycle toposort can meet; this only guards the invariant.
            let name = entries[cycle.node_id().index()].name.clone();
            vec![GraphError::Cycle {
                path: vec![name.clone(), name],
            }]
        })?;

        for node in topological {
            let position = node.index();
            let layer = entries[position].layer;
            for dependent in graph.neighbors(node) {
                let dependent = &mut entries[dependent.index()];
                dependent.layer = dependent.layer.max(layer + 1);
            }
        }
        for position in 0..entries.len() {
            let dependencies: Vec<usize> = entries[position]
                .required
                .iter()
                .chain(&entries[position].optional)
                .copied()
                .collect();
            for dependency in dependencies {
                entries[dependency].dependents.push(position);
            }
        }
        for entry in &mut entries {
            entry.dependents.sort_unstable();
            entry.dependents.dedup();
        }

        let mut startup: Vec<usize> = (0..entries.len()).collect();
        startup.sort_by_key(|&position| entries[position].layer);
        Ok(Self {
            entries,
            index,
            startup,
        })
    }

    /// Number of services.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the graph has no services.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Service names in declaration order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|entry| entry.name.as_str())
    }

    /// The startup layer of `name`.
    pub fn layer(&self, name: &str) -> Option<u32> {
        self.entry(name).map(|entry| entry.layer)
    }

    /// Number of layers (highest layer + 1; layers may be empty when priorities leave gaps).
    pub fn layer_count(&self) -> u32 {
        self.entries
            .iter()
            .map(|entry| entry.layer + 1)
            .max()
            .unwrap_or(0)
    }

    /// The service type of `name`.
    pub fn service_type(&self, name: &str) -> Option<&str> {
        self.entry(name).map(|entry| entry.service_type.as_str())
    }

    /// Startup order: by layer, then by declaration order.
    pub fn startup_order(&self) -> Vec<&str> {
        self.startup
            .iter()
            .map(|&position| self.entries[position].name.as_str())
            .collect()
    }

    /// Shutdown order: exactly the reverse of the startup order.
    pub fn shutdown_order(&self) -> Vec<&str> {
        self.startup
            .iter()
            .rev()
            .map(|&position| self.entries[position].name.as_str())
            .collect()
    }

    /// Required dependencies of `name`, in declaration order.
    pub fn dependencies(&self, name: &str) -> Vec<&str> {
        self.names_of(name, |entry| &entry.required)
    }

    /// Optional dependencies of `name`, in declaration order.
    pub fn optional_dependencies(&self, name: &str) -> Vec<&str> {
        self.names_of(name, |entry| &entry.optional)
    }

    /// Services that depend on `name`, required or optional, in declaration order.
    pub fn dependents(&self, name: &str) -> Vec<&str> {
        self.names_of(name, |entry| &entry.dependents)
    }

    /// Services grouped by layer, lowest first, each group in declaration order; empty layers omitted.
    pub fn layers(&self) -> Vec<(u32, Vec<&str>)> {
        let mut layers: Vec<(u32, Vec<&str>)> = Vec::new();
        for &position in &self.startup {
            let entry = &self.entries[position];
            match layers.last_mut() {
                Some((layer, names)) if *layer == entry.layer => names.push(&entry.name),
                _ => layers.push((entry.layer, vec![&entry.name])),
            }
        }
        layers
    }

    fn entry(&self, name: &str) -> Option<&Entry> {
        self.index.get(name).map(|&position| &self.entries[position])
    }

    fn names_of(&self, name: &str, pick: impl Fn(&Entry) -> &Vec<usize>) -> Vec<&str> {
        self.entry(name)
            .map(|entry| {
                pick(entry)
                    .iter()
                    .map(|&p| self.entries[p].name.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One cycle per strongly connected component with more than one service, each starting at the component's
/// first-declared service and following "depends on" edges back to it along a shortest path.
fn find_cycles(graph: &DiGraph<(), DependencyKind, u32>, entries: &[Entry]) -> Vec<GraphError> {
    // Kosaraju, not Tarjan: petgraph's Tarjan recurses once per node of a path and overflows the stack on
    // long chains; Kosaraju walks with explicit stacks.
    let mut components: Vec<Vec<usize>> = kosaraju_scc(graph)
        .into_iter()
        .filter(|component| component.len() > 1)
        .map(|component| {
            let mut members: Vec<usize> = component.into_iter().map(NodeIndex::index).collect();
            members.sort_unstable();
            members
        })
        .collect();
    components.sort_unstable();
    components
        .into_iter()
        .map(|members| {
            let path = cycle_through(members[0], &members, entries)
                .into_iter()
                .map(|position| entries[position].name.clone())
                .collect();
            GraphError::Cycle { path }
        })
        .collect()
}

/// A shortest "depends on" path from `start` back to `start` inside one strongly connected component.
fn cycle_through(start: usize, members: &[usize], entries: &[Entry]) -> Vec<usize> {
    let inside: HashSet<usize> = members.iter().copied().collect();
    let dependencies = |position: usize| {
        let entry = &entries[position];
        entry
            .required
            .iter()
            .chain(&entry.optional)
            .copied()
            .filter(|d| inside.contains(d))
    };
    let mut parent: HashMap<usize, usize> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(current) = queue.pop_front() {
        for next in dependencies(current) {
            if next == start {
                return walk_order(start, current, &parent);
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = parent.entry(next) {
                slot.insert(current);
                queue.push_back(next);
            }
        }
    }
    // Unreachable for a real component (each member lies on a cycle); fall back to naming its members.
    let mut path = members.to_vec();
    path.push(start);
    path
}

/// The path start → … → `last` → start from BFS parents.
fn walk_order(start: usize, last: usize, parent: &HashMap<usize, usize>) -> Vec<usize> {
    let mut backwards = vec![last];
    let mut at = last;
    while at != start {
        at = parent[&at];
        backwards.push(at);
    }
    backwards.reverse();
    backwards.push(start);
    backwards
}

#[cfg(test)]
mod tests;
