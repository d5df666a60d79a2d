//! What the services' Kubernetes executors share (model-factory's `LoraJob`s, the
//! attribution-worker's `AttributionJob`s): the namespace they work in and the pod settings of
//! the resources they create, from the `kubernetes_*` configuration.

use std::path::Path;

use k8s_openapi::api::core::v1::{ConfigMapEnvSource, EnvFromSource, SecretEnvSource};
use openledger_core::Config;

/// Where a pod finds its own namespace (its service account's).
pub const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// How long a finished Job and its pods (their logs) are kept before Kubernetes removes them;
/// the resource that made the Job keeps its status.
pub const FINISHED_JOB_TTL_SECONDS: i32 = 86_400;

/// The `kubernetes_*` settings every executor uses.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecutorSettings {
    /// `kubernetes_namespace`, else the pod's own, else `default`.
    pub namespace: String,
    pub image: String,
    pub env_from: Vec<EnvFromSource>,
    pub data_claim: Option<String>,
    /// A Kueue `LocalQueue`.
    pub queue: Option<String>,
}

impl ExecutorSettings {
    pub fn from_config(config: &Config) -> Self {
        let named = |value: &str| Some(value.trim().to_owned()).filter(|value| !value.is_empty());
        Self {
            namespace: named(&config.kubernetes_namespace).unwrap_or_else(|| own_namespace(Path::new(NAMESPACE_FILE))),
            image: config.kubernetes_job_image.trim().to_owned(),
            env_from: env_from(&config.kubernetes_job_env_from),
            data_claim: named(&config.kubernetes_data_claim),
            queue: named(&config.kubernetes_queue),
        }
    }
}

/// The namespace written in `file`, else `default`.
pub fn own_namespace(file: &Path) -> String {
    std::fs::read_to_string(file)
        .ok()
        .map(|text| text.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "default".to_owned())
}

/// `configmap:NAME,secret:NAME` (as `Config::validate` accepts it) as a pod's `envFrom`.
pub fn env_from(setting: &str) -> Vec<EnvFromSource> {
    setting
        .split(',')
        .filter_map(|part| part.trim().split_once(':'))
        .filter_map(|(kind, name)| {
            let name = name.trim().to_owned();
            match kind.trim() {
                "configmap" => Some(EnvFromSource {
                    config_map_ref: Some(ConfigMapEnvSource { name, optional: None }),
                    ..EnvFromSource::default()
                }),
                "secret" => Some(EnvFromSource {
                    secret_ref: Some(SecretEnvSource { name, optional: None }),
                    ..EnvFromSource::default()
                }),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_come_from_the_configuration() {
        let config = Config {
            kubernetes_namespace: "ml".into(),
            kubernetes_job_image: "ghcr.io/openledger/openledger:0.1".into(),
            kubernetes_job_env_from: "configmap:ol-config, secret:ol-db".into(),
            kubernetes_data_claim: "ol-data".into(),
            ..Config::default()
        };
        let settings = ExecutorSettings::from_config(&config);
        assert_eq!(settings.namespace, "ml");
        assert_eq!(settings.data_claim.as_deref(), Some("ol-data"));
        assert_eq!(settings.queue, None);
        assert_eq!(settings.env_from.len(), 2);
        assert_eq!(settings.env_from[0].config_map_ref.as_ref().map(|source| source.name.as_str()), Some("ol-config"));
        assert_eq!(settings.env_from[1].secret_ref.as_ref().map(|source| source.name.as_str()), Some("ol-db"));
        assert_eq!(own_namespace(Path::new("/nonexistent/namespace")), "default");
    }
}
