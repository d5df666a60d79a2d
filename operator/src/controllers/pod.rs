//! The pod template every workload of the operator shares: non-root, read-only root file
//! system, the data volume at the data directory, the platform's settings as environment.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, PersistentVolumeClaimVolumeSource,
        PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile, SecurityContext, Volume,
        VolumeMount,
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};

use crate::crd::PodSettings;

/// Where job pods and engine replicas keep their data (checkpoints, indexes, adapter cache).
pub const DATA_DIR: &str = "/var/lib/openledger";
/// The user the image runs as (non-root).
pub const USER_ID: i64 = 10001;
/// The GPU resource of NVIDIA's device plugin.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// The one container of a pod.
pub struct Workload<'a> {
    pub container: &'a str,
    pub args: Vec<String>,
    pub env: Vec<(&'a str, String)>,
    pub ports: Vec<ContainerPort>,
    pub gpus: u32,
    pub restart_policy: Option<&'a str>,
}

/// The pod template for `workload` with `settings`, labelled `labels`.
pub fn template(settings: &PodSettings, workload: Workload<'_>, labels: BTreeMap<String, String>) -> PodTemplateSpec {
    let mut env: Vec<EnvVar> =
        [("OPENLEDGER_DATA_DIR", DATA_DIR.to_owned()), ("OPENLEDGER_LOG_FORMAT", "json".to_owned())]
            .into_iter()
            .chain(workload.env)
            .map(|(name, value)| EnvVar { name: name.to_owned(), value: Some(value), value_from: None })
            .collect();
    env.extend(settings.env.iter().cloned());
    let mut resources = settings.resources.clone().unwrap_or_default();
    if workload.gpus > 0 {
        let gpus = Quantity(workload.gpus.to_string());
        resources.limits.get_or_insert_with(BTreeMap::new).insert(GPU_RESOURCE.to_owned(), gpus.clone());
        resources.requests.get_or_insert_with(BTreeMap::new).insert(GPU_RESOURCE.to_owned(), gpus);
    }
    let data = match &settings.data_volume_claim {
        Some(claim) => Volume {
            name: "data".to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: None,
            }),
            ..Volume::default()
        },
        None => empty_dir("data"),
    };
    let container = Container {
        name: workload.container.to_owned(),
        image: Some(settings.image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        args: Some(workload.args),
        env: Some(env),
        env_from: (!settings.env_from.is_empty()).then(|| settings.env_from.clone()),
        ports: (!workload.ports.is_empty()).then_some(workload.ports),
        resources: (resources != ResourceRequirements::default()).then_some(resources),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), add: None }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount { name: "data".to_owned(), mount_path: DATA_DIR.to_owned(), ..VolumeMount::default() },
            VolumeMount { name: "tmp".to_owned(), mount_path: "/tmp".to_owned(), ..VolumeMount::default() },
        ]),
        ..Container::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
        spec: Some(PodSpec {
            containers: vec![container],
            restart_policy: workload.restart_policy.map(str::to_owned),
            service_account_name: settings.service_account_name.clone(),
            node_selector: (!settings.node_selector.is_empty()).then(|| settings.node_selector.clone()),
            tolerations: (!settings.tolerations.is_empty()).then(|| settings.tolerations.clone()),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(USER_ID),
                run_as_group: Some(USER_ID),
                fs_group: Some(USER_ID),
                seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_owned(), localhost_profile: None }),
                ..PodSecurityContext::default()
            }),
            volumes: Some(vec![data, empty_dir("tmp")]),
            ..PodSpec::default()
        }),
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume { name: name.to_owned(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() }
}

/// The labels of everything made for the resource `name` of `kind` (`lora-job`, …).
pub fn labels(component: &str, kind: &str, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), component.to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), "openledger".to_owned()),
        (super::MANAGED_BY.0.to_owned(), super::MANAGED_BY.1.to_owned()),
        (format!("openledger.io/{kind}"), name.to_owned()),
    ])
}
