//! `?scope=fleet`: the services, registry and service-discovery targets of every node of the fleet, read
//! from what each node publishes in etcd (DESIGN.md section 9). Entries are keyed `<node>/<name>` (two
//! nodes may run services of the same name) and carry their `node`.

use hyper::StatusCode;
use serde_json::{Map, Value, json};

use super::reply::json_reply;
use super::views::{Page, target_group_of};
use super::{Api, ApiError, Reply, query_value};
use crate::cluster::Cluster;

/// Which nodes a read covers.
pub(super) enum Scope<'a> {
    /// This node (the default).
    Local,
    /// Every node of the fleet.
    Fleet(&'a Cluster),
}

impl Api {
    /// `?scope=local` (the default) or `?scope=fleet`, which needs fleet mode.
    pub(super) fn scope(&self, query: &[(String, String)]) -> Result<Scope<'_>, ApiError> {
        match query_value(query, "scope") {
            None | Some("local") => Ok(Scope::Local),
            Some("fleet") => self.state.cluster.get().map(Scope::Fleet).ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "fleet mode is off: set [cluster] etcd_endpoints to read the fleet",
                )
            }),
            Some(other) => Err(ApiError::bad_request(format!(
                "scope must be local or fleet, not {other:?}"
            ))),
        }
    }

    /// `GET /services?scope=fleet`.
    pub(super) async fn fleet_services(&self, cluster: &Cluster) -> Result<Reply, ApiError> {
        let (nodes, services) = read(cluster, "services").await?;
        Ok(json_reply(
            StatusCode::OK,
            &json!({
                "success": true,
                "scope": "fleet",
                "fleet": cluster.fleet(),
                "nodes": nodes,
                "total_services": services.len(),
                "services": services,
            }),
        ))
    }

    /// `GET /registry?scope=fleet`, with the same filters and paging as the local list.
    pub(super) async fn fleet_registry(&self, cluster: &Cluster, page: Page) -> Result<Reply, ApiError> {
        let (nodes, entries) = read(cluster, "registry").await?;
        let kept: Vec<(String, Value)> = entries
            .into_iter()
            .filter(|(_, entry)| {
                let service_type = entry["type"].as_str().unwrap_or_default();
                page.filter
                    .keeps(service_type, entry["alive"].as_bool().unwrap_or(false))
            })
            .collect();
        let total = kept.len();
        let services: Map<String, Value> = kept.into_iter().skip(page.offset).take(page.limit).collect();
        let next_offset = (page.offset + services.len() < total).then_some(page.offset + services.len());
        Ok(json_reply(
            StatusCode::OK,
            &json!({
                "success": true,
                "scope": "fleet",
                "fleet": cluster.fleet(),
                "nodes": nodes,
                "total_services": total,
                "offset": page.offset,
                "limit": page.limit,
                "next_offset": next_offset,
                "services": services,
            }),
        ))
    }

    /// `GET /sd?scope=fleet`: every node's targets, labelled with their `node`.
    pub(super) async fn fleet_service_discovery(&self, cluster: &Cluster) -> Result<Reply, ApiError> {
        let (_, entries) = read(cluster, "registry").await?;
        let groups: Vec<Value> = entries
            .values()
            .filter_map(|entry| target_group_of(entry, entry["node"].as_str()))
            .collect();
        Ok(json_reply(StatusCode::OK, &groups))
    }
}

/// The fleet's nodes (what each published about itself), and every node's published `kind` entries, keyed
/// `<node>/<name>` in that order.
async fn read(cluster: &Cluster, kind: &str) -> Result<(Vec<Value>, Map<String, Value>), ApiError> {
    let unavailable =
        |error: crate::cluster::FleetError| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string());
    let nodes = cluster.members().await.map_err(unavailable)?;
    let found = cluster.published(kind).await.map_err(unavailable)?;
    let mut entries: Vec<(String, Value)> = found
        .into_iter()
        .map(|(node, name, value)| (format!("{node}/{name}"), value))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((nodes, entries.into_iter().collect()))
}
