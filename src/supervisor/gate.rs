//! When a service may start: the pure rule of DESIGN.md section 4.
//!
//! A required dependency must be ready. An optional one (and, for a service with `priority = p`, every
//! service of a layer below p) must be ready or have settled its first start attempt: it orders the start
//! but never prevents it.

use super::state::Snapshot;

/// What the dependencies of a service allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Every dependency allows the start.
    Open,
    /// A dependency is still on its way up; the start waits for it.
    Waiting {
        /// The dependency.
        dependency: String,
        /// It is a required dependency (not an optional one or a lower-priority service).
        required: bool,
    },
    /// A required dependency settled without being ready (failed, stopped, down): the start waits for it
    /// to recover, and the startup sequence no longer waits for this service.
    Blocked(String),
}

/// Evaluates the gate from the dependencies' current snapshots, required ones first, each in declaration
/// order, so the dependency named is stable.
pub fn evaluate<'a>(
    required: impl IntoIterator<Item = (&'a str, &'a Snapshot)>,
    optional: impl IntoIterator<Item = (&'a str, &'a Snapshot)>,
) -> Gate {
    let mut waiting = None;
    for (name, snapshot) in required {
        if snapshot.ready {
            continue;
        }
        if snapshot.settled {
            return Gate::Blocked(name.to_owned());
        }
        waiting.get_or_insert_with(|| name.to_owned());
    }
    if let Some(dependency) = waiting {
        return Gate::Waiting {
            dependency,
            required: true,
        };
    }
    for (name, snapshot) in optional {
        if !(snapshot.ready || snapshot.settled) {
            return Gate::Waiting {
                dependency: name.to_owned(),
                required: false,
            };
        }
    }
    Gate::Open
}

/// The first required dependency being stopped on request, if any: its running dependents stop first and
/// wait in `pending` until it is ready again.
pub fn held_by<'a>(required: impl IntoIterator<Item = (&'a str, &'a Snapshot)>) -> Option<String> {
    required
        .into_iter()
        .find(|(_, snapshot)| snapshot.stop_requested)
        .map(|(name, _)| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(dependency: &str, required: bool) -> Gate {
        Gate::Waiting {
            dependency: dependency.into(),
            required,
        }
    }

    fn snapshot(ready: bool, settled: bool) -> Snapshot {
        Snapshot {
            ready,
            settled,
            ..Snapshot::initial()
        }
    }

    #[test]
    fn no_dependencies_open_the_gate() {
        assert_eq!(evaluate([], []), Gate::Open);
    }

    #[test]
    fn a_required_dependency_must_be_ready() {
        let starting = snapshot(false, false);
        assert_eq!(evaluate([("db", &starting)], []), waiting("db", true));
        let ready = snapshot(true, true);
        assert_eq!(evaluate([("db", &ready)], []), Gate::Open);
    }

    #[test]
    fn a_required_dependency_that_settled_unready_blocks() {
        let failed = snapshot(false, true);
        let starting = snapshot(false, false);
        assert_eq!(
            evaluate([("cache", &starting), ("db", &failed)], []),
            Gate::Blocked("db".into())
        );
    }

    #[test]
    fn an_optional_dependency_orders_but_never_prevents() {
        let starting = snapshot(false, false);
        let failed = snapshot(false, true);
        let ready = snapshot(true, true);
        assert_eq!(evaluate([], [("p2p", &starting)]), waiting("p2p", false));
        assert_eq!(evaluate([], [("p2p", &failed)]), Gate::Open);
        assert_eq!(evaluate([], [("p2p", &ready)]), Gate::Open);
    }

    #[test]
    fn required_dependencies_are_named_before_optional_ones() {
        let starting = snapshot(false, false);
        assert_eq!(
            evaluate([("db", &starting)], [("p2p", &starting)]),
            waiting("db", true)
        );
    }
}
