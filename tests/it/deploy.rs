//! The Kubernetes manifests configure Smelter with settings it accepts: every
//! `SMELTER__*` variable in `deploy/k8s` loads into the configuration (unknown or
//! mistyped keys are errors there), so the manifests cannot drift from the code unnoticed.

use serde::Deserialize;
use smelter_common::config::{SmelterConfig, StoreKind};

fn manifest(name: &str) -> Vec<serde_yaml::Value> {
    let path = format!("{}/../deploy/k8s/{name}", env!("CARGO_MANIFEST_DIR"));
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

#[test]
fn manifests_configure_smelter_with_valid_settings() {
    let config_map: Vec<(String, String)> = manifest("configmap.yaml")[0]["data"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_string(),
                v.as_str().unwrap().to_string(),
            )
        })
        .collect();
    for file in ["coordinator.yaml", "worker.yaml"] {
        let workload = manifest(file)
            .into_iter()
            .find(|d| d["kind"] == "StatefulSet" || d["kind"] == "Deployment")
            .unwrap();
        let mut env = config_map.clone();
        env.extend(container_env(&workload));
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
