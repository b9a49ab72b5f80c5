//! The graph as people and programs read it: the seed's text block, Graphviz DOT, and the
//! `/api/orchestration/dependencies` JSON body.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use super::DependencyGraph;

impl DependencyGraph {
    /// The seed's "Service Dependency Graph" block: one section per layer, names sorted within a layer,
    /// `<- a, b` for required and `[optional: c]` for optional dependencies (each sorted). No final newline.
    pub fn visualization(&self) -> String {
        let mut text = String::from("Service Dependency Graph:\n");
        text.push_str(&"=".repeat(50));
        text.push('\n');
        for (layer, names) in self.layers() {
            let _ = write!(text, "\nLayer {layer} (Startup Priority):\n");
            let mut names = names;
            names.sort_unstable();
            for name in names {
                let _ = write!(text, "  • {name}");
                let mut required = self.dependencies(name);
                if !required.is_empty() {
                    required.sort_unstable();
                    let _ = write!(text, " <- {}", required.join(", "));
                }
                let mut optional = self.optional_dependencies(name);
                if !optional.is_empty() {
                    optional.sort_unstable();
                    let _ = write!(text, " [optional: {}]", optional.join(", "));
                }
                text.push('\n');
            }
        }
        if text.ends_with('\n') {
            text.pop();
        }
        text
    }

    /// Graphviz DOT: an arrow from each service to what it depends on (dashed when optional), layer 0 at the
    /// top, services of one layer side by side.
    pub fn to_dot(&self) -> String {
        let mut dot = String::from("digraph dependencies {\n");
        dot.push_str("  rankdir=BT;\n");
        dot.push_str("  node [shape=box, style=rounded, fontname=\"Helvetica\"];\n");
        dot.push_str("  edge [fontname=\"Helvetica\"];\n");
        for (layer, names) in self.layers() {
            let _ = writeln!(dot, "  subgraph layer_{layer} {{");
            dot.push_str("    rank=same;\n");
            for name in names {
                let _ = writeln!(dot, "    \"{name}\" [label=\"{name}\\nlayer {layer}\"];");
            }
            dot.push_str("  }\n");
        }
        for name in self.names() {
            for dependency in self.dependencies(name) {
                let _ = writeln!(dot, "  \"{name}\" -> \"{dependency}\";");
            }
            for dependency in self.optional_dependencies(name) {
                let _ = writeln!(
                    dot,
                    "  \"{name}\" -> \"{dependency}\" [style=dashed, label=\"optional\"];"
                );
            }
        }
        dot.push_str("}\n");
        dot
    }

    /// The `/api/orchestration/dependencies` body of the seed: `startup_order`, `shutdown_order`,
    /// `dependencies` (per service, in declaration order) and `visualization`.
    pub fn to_json(&self) -> Value {
        let dependencies: Map<String, Value> = self
            .names()
            .map(|name| {
                let detail = json!({
                    "type": self.service_type(name),
                    "dependencies": self.dependencies(name),
                    "optional_dependencies": self.optional_dependencies(name),
                    "dependents": self.dependents(name),
                    "layer": self.layer(name),
                });
                (name.to_owned(), detail)
            })
            .collect();
        json!({
            "success": true,
            "startup_order": self.startup_order(),
            "shutdown_order": self.shutdown_order(),
            "dependencies": dependencies,
            "visualization": self.visualization(),
        })
    }
}
