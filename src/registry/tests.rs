use std::time::{Duration, SystemTime};

use serde_json::json;

use super::*;
use crate::config::Config;

fn registry() -> RegistryHandle {
    let config = Config::from_toml(
        "[registry]\nheartbeat_interval = \"10s\"\nheartbeat_timeout = \"30s\"\n\
         [services.dao]\nmetadata = { metrics = \"127.0.0.1:7100\" }\n[services.edge]\n",
    )
    .unwrap();
    RegistryHandle::start(
        &config,
        Clock::anchored(SystemTime::UNIX_EPOCH),
        crate::telemetry::metrics::Metrics::new().for_registry(),
        crate::events::EventHub::new(
            Clock::anchored(SystemTime::UNIX_EPOCH),
            crate::telemetry::metrics::Metrics::new().for_events(),
        ),
    )
}

fn registration(name: &str) -> Registration {
    Registration {
        name: name.to_owned(),
        service_type: None,
        address: Some("10.0.0.7".into()),
        port: Some(9000),
        tags: vec!["edge".into()],
        metadata: serde_json::from_value(json!({"version": "1.4.2"})).unwrap(),
    }
}

#[tokio::test(start_paused = true)]
async fn configured_services_are_registered_and_not_alive_until_a_heartbeat() {
    let registry = registry();
    let entries = registry.entries().await.unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["dao", "edge"]);
    assert!(
        entries
            .iter()
            .all(|e| e.managed && !e.alive && e.last_heartbeat.is_none())
    );
    assert_eq!(entries[0].metadata["metrics"], "127.0.0.1:7100");
    assert_eq!(entries[0].status.as_str(), "pending");
}

#[tokio::test(start_paused = true)]
async fn a_missed_heartbeat_deadline_is_one_timeout() {
    let registry = registry();
    registry.observed_alive("dao");
    let dao = registry.heartbeat("dao").await.unwrap();
    assert!(dao.alive);
    assert_eq!(dao.heartbeats_received, 2);

    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(
        registry.entry("dao").await.unwrap().unwrap().alive,
        "still within the timeout"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dao = registry.entry("dao").await.unwrap().unwrap();
    assert!(!dao.alive);
    assert_eq!(dao.heartbeat_timeouts, 1);
    assert_eq!(dao.heartbeat_age_seconds, Some(31.0));
    assert_eq!(dao.last_heartbeat, Some(SystemTime::UNIX_EPOCH));

    // Staying dead is not another timeout; coming back and going again is.
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(registry.stats().await.unwrap().heartbeat_timeouts, 1);
    registry.heartbeat("dao").await.unwrap();
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(registry.stats().await.unwrap().heartbeat_timeouts, 2);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_a_service_alive() {
    let registry = registry();
    for _ in 0..10 {
        registry.heartbeat("edge").await.unwrap();
        tokio::time::sleep(Duration::from_secs(20)).await;
    }
    let edge = registry.entry("edge").await.unwrap().unwrap();
    assert!(edge.alive);
    assert_eq!(edge.heartbeat_timeouts, 0);
}

#[tokio::test(start_paused = true)]
async fn services_register_update_and_deregister_themselves() {
    let registry = registry();
    let entry = registry.register(registration("cache")).await.unwrap();
    assert!(entry.alive, "registering counts as a heartbeat");
    assert!(!entry.managed);
    assert_eq!(entry.service_type, "cache");
    assert_eq!(entry.status.as_str(), "registered");
    assert_eq!(
        (entry.address.as_deref(), entry.port),
        (Some("10.0.0.7"), Some(9000))
    );

    let mut update = registration("cache");
    update.port = Some(9100);
    update.service_type = Some("redis".into());
    let updated = registry.register(update).await.unwrap();
    assert_eq!(
        (updated.port, updated.service_type.as_str()),
        (Some(9100), "redis")
    );
    assert_eq!(updated.heartbeats_received, 2);
    assert_eq!(registry.entries().await.unwrap().len(), 3);

    let removed = registry.deregister("cache").await.unwrap();
    assert_eq!(removed.name, "cache");
    assert_eq!(registry.entry("cache").await.unwrap(), None);
    assert_eq!(
        registry.deregister("cache").await,
        Err(RegistryError::UnknownService("cache".into()))
    );
    assert_eq!(
        registry.heartbeat("cache").await,
        Err(RegistryError::UnknownService("cache".into()))
    );
}

#[tokio::test(start_paused = true)]
async fn configured_services_cannot_be_registered_or_deregistered() {
    let registry = registry();
    assert_eq!(
        registry.register(registration("dao")).await,
        Err(RegistryError::Configured("dao".into()))
    );
    assert_eq!(
        registry.deregister("dao").await,
        Err(RegistryError::Configured("dao".into()))
    );
    let invalid = registry.register(registration("Not Valid")).await;
    assert!(matches!(invalid, Err(RegistryError::Invalid(_))), "{invalid:?}");
}

#[tokio::test(start_paused = true)]
async fn stats_count_alive_dead_and_states() {
    let registry = registry();
    registry.state_changed("dao", crate::status::ServiceState::Running);
    registry.heartbeat("dao").await.unwrap();
    registry.register(registration("cache")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stats = registry.stats().await.unwrap();
    assert_eq!(stats.total_services, 3);
    assert_eq!((stats.managed_services, stats.registered_services), (2, 1));
    assert_eq!((stats.alive_services, stats.dead_services), (2, 1));
    assert_eq!(stats.by_status["running"], 1);
    assert_eq!(stats.by_status["pending"], 1);
    assert_eq!(stats.by_status["registered"], 1);
    assert_eq!(stats.oldest_heartbeat_age_seconds, Some(5.0));
    assert_eq!(stats.heartbeat_timeout_seconds, 30.0);
}
