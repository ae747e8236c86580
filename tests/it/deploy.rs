//! The Kubernetes manifests configure Smelter with settings it accepts: every
//! `SMELTER__*` variable in `deploy/k8s` loads into the configuration (unknown or
//! mistyped keys are errors there), so the manifests cannot drift from the code unnoticed.

use serde::Deserialize;
use smelter_common::config::{SmelterConfig, StoreKind};

fn manifest(name: &str) -> Vec<serde_yaml::Value> {
    let path = format!("{}/../deploy/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .collect()
}

/// `SMELTER__*` variables of a container, `$(VAR)` references filled with a sample.
fn container_env(doc: &serde_yaml::Value) -> Vec<(String, String)> {
    let containers = &doc["spec"]["template"]["spec"]["containers"];
    let mut out = Vec::new();
    for container in containers.as_sequence().into_iter().flatten() {
        for var in container["env"].as_sequence().into_iter().flatten() {
            if let (Some(name), Some(value)) = (var["name"].as_str(), var["value"].as_str()) {
                let value = value
                    .replace("$(POD_NAME)", "smelter-coordinator-0")
                    .replace("$(POD_IP)", "10.0.0.7");
                out.push((name.to_string(), value));
            }
        }
    }
    out
}

/// The data of a ConfigMap manifest.
fn config_map(name: &str) -> Vec<(String, String)> {
    manifest(name)[0]["data"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_string(),
                v.as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The `SMELTER__*` variables of the workload in `file`.
fn workload_env(file: &str) -> Vec<(String, String)> {
    let workload = manifest(file)
        .into_iter()
        .find(|d| d["kind"] == "StatefulSet" || d["kind"] == "Deployment")
        .unwrap();
    container_env(&workload)
}

#[test]
fn the_secure_overlay_turns_on_tls_and_tokens_with_valid_settings() {
    // Later entries win, as the overlay's patches do over the base.
    for role in ["coordinator.yaml", "worker.yaml"] {
        let mut env = config_map("k8s/configmap.yaml");
        env.extend(config_map("k8s-secure/configmap.yaml"));
        env.extend(workload_env(&format!("k8s/{role}")));
        env.extend(workload_env(&format!("k8s-secure/{role}")));
        let config = SmelterConfig::load(None, env)
            .unwrap_or_else(|e| panic!("{role}: settings rejected: {e}"));
        assert!(config.security.serves_tls() && config.security.tls_ca.is_some());
        assert!(config.security.requires_tokens());
        assert!(
            config
                .coordinator
                .endpoint_list()
                .iter()
                .all(|e| e.starts_with("https://")),
            "{role}"
        );
        if let Some(advertise) = &config.coordinator.advertise {
            assert!(advertise.starts_with("https://"), "{role}: {advertise}");
        }
    }
}

#[test]
fn manifests_configure_smelter_with_valid_settings() {
    let config_map = config_map("k8s/configmap.yaml");
    for file in ["coordinator.yaml", "worker.yaml"] {
        let mut env = config_map.clone();
        env.extend(workload_env(&format!("k8s/{file}")));
        let config = SmelterConfig::load(None, env)
            .unwrap_or_else(|e| panic!("{file}: settings rejected: {e}"));
        assert_eq!(config.coordinator.store, StoreKind::Etcd);
        assert_eq!(
            config.coordinator.endpoint_list().len(),
            2,
            "both replicas listed"
        );
        assert_eq!(config.storage.root, std::path::PathBuf::from("/lake"));
    }
}
