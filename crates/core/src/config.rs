//! The platform configuration every process reads: where state lives (database, bus, object
//! store), where it listens, and its limits. The CLI fills it from flags, then `OPENLEDGER_*`
//! environment variables, then a YAML file, then these defaults; `validate` says what is wrong
//! in terms of the setting's name and the values it accepts.

use std::{fmt, path::PathBuf, str::FromStr};

use serde::{Deserialize, Serialize};

/// The five services of the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceKind {
    Ledger,
    DatanetIngest,
    AttributionWorker,
    ModelFactory,
    InferenceGateway,
}

impl ServiceKind {
    pub const ALL: [ServiceKind; 5] =
        [Self::Ledger, Self::DatanetIngest, Self::AttributionWorker, Self::ModelFactory, Self::InferenceGateway];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Ledger => "ledger",
            Self::DatanetIngest => "datanet-ingest",
            Self::AttributionWorker => "attribution-worker",
            Self::ModelFactory => "model-factory",
            Self::InferenceGateway => "inference-gateway",
        }
    }

    /// Position used to derive this service's default ports from the base ports.
    pub const fn port_offset(self) -> u16 {
        match self {
            Self::Ledger => 0,
            Self::DatanetIngest => 1,
            Self::AttributionWorker => 2,
            Self::ModelFactory => 3,
            Self::InferenceGateway => 4,
        }
    }

    pub fn accepted_names() -> String {
        Self::ALL.map(Self::name).join(", ")
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ServiceKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == text)
            .ok_or_else(|| format!("unknown service {text:?}: accepted values are {}", Self::accepted_names()))
    }
}

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "pretty" => Ok(Self::Pretty),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?}: accepted values are pretty, json")),
        }
    }
}

/// The effective configuration of one process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for the embedded database and object store.
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; empty means SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// `nats://…`; empty means the in-process event bus (one process only).
    pub nats_url: Option<String>,
    /// `file://…`, `s3://bucket[/prefix]` or `memory://`; empty means `data_dir/objects`.
    pub object_store_url: Option<String>,
    /// gRPC URL of the ledger for services that call it (`http://ledger:50051`); empty means
    /// the ledger in this process, else `listen_host` at the ledger's gRPC port.
    pub ledger_url: Option<String>,
    /// gRPC URL of datanet-ingest for services that call it (the gateway); empty means the
    /// service in this process, else `listen_host` at its gRPC port.
    pub datanet_url: Option<String>,
    /// gRPC URL of model-factory (the adapter registry) for services that call it; empty means
    /// the service in this process, else `listen_host` at its gRPC port.
    pub model_factory_url: Option<String>,
    /// gRPC URL of the attribution-worker for services that call it (the gateway's
    /// `/v1/attributions/**` routes); empty means the service in this process, else
    /// `listen_host` at its gRPC port.
    pub attribution_url: Option<String>,
    /// The base model the OpenLoRA engines serve: a GGUF or safetensors path, or
    /// `hf://owner/name[@rev]/file`. Empty: the packaged SmolLM2-135M-Instruct Q4_1 if found
    /// (see `openledger dev`'s message), else no engine.
    pub base_model: Option<String>,
    /// Comma-separated gRPC URLs of OpenLoRA engine replicas (`http://engine-0:50060,…`); empty
    /// means the gateway runs the engine in its own process.
    pub engine_urls: String,
    /// gRPC port an engine replica (`openledger engine`) listens on.
    pub engine_port: u16,
    /// Compute threads of an in-process engine or replica; 0 uses every core.
    pub engine_threads: u64,
    /// Sequences one engine decodes together.
    pub engine_max_batch_size: u64,
    /// Requests an engine queues before answering overloaded (503).
    pub engine_max_queue: u64,
    /// Bytes of adapter weights an engine keeps in memory (least recently used evicted).
    pub adapter_cache_bytes: u64,
    /// Comma-separated adapter ids an engine replica loads into its cache at start.
    pub engine_preload_adapters: String,
    /// Where fine-tuning jobs and attribution index builds run: `local` (threads of the
    /// service's own process) or `kubernetes` (`LoraJob` and `AttributionJob` resources the
    /// operator runs as Jobs).
    pub job_executor: String,
    /// Bytes one fine-tuning job may take at its peak (its estimate, from the model's shape and
    /// the run's settings, is checked before training starts); 0: the memory available when it
    /// starts (`MemAvailable`, or the container's cgroup limit less its usage, the smaller).
    pub job_memory_limit_bytes: u64,
    /// How far behind its inferences the attribution-worker may fall and still compute
    /// influence: an inference older than this when its turn comes is attributed span-only
    /// (its notes say so), so the worker keeps up with the engines it follows. 0: always
    /// influence, however far behind.
    pub attribution_influence_max_lag_ms: u64,
    /// Namespace of the `kubernetes` executor's resources; empty means the pod's own.
    pub kubernetes_namespace: String,
    /// Container image of the `kubernetes` executor's job pods (the platform's, or its CUDA
    /// variant for GPU nodes).
    pub kubernetes_job_image: String,
    /// Comma-separated `configmap:NAME` / `secret:NAME` whose entries job pods get as
    /// environment (the settings and credentials the service itself has).
    pub kubernetes_job_env_from: String,
    /// A PersistentVolumeClaim (ReadWriteMany) shared by the service and its job pods:
    /// checkpoints and indexes; empty means each pod's own scratch volume.
    pub kubernetes_data_claim: String,
    /// `nvidia.com/gpu` each training job requests (0: CPU).
    pub kubernetes_training_gpus: u64,
    /// A Kueue `LocalQueue` for job pods: the Jobs start suspended and Kueue admits them.
    pub kubernetes_queue: String,
    /// Default per-API-key limits (a key may set lower ones).
    pub api_key_requests_per_minute: u64,
    pub api_key_tokens_per_minute: u64,
    /// Address every listener binds to.
    pub listen_host: String,
    /// Port of the public REST edge (inference-gateway).
    pub http_port: u16,
    /// gRPC port of the first service; service i listens on base + i. 0 picks free ports.
    pub grpc_base_port: u16,
    /// Port of the first service's ops HTTP (/healthz, /readyz, /metrics); 0 picks free ports.
    pub ops_base_port: u16,
    pub log_format: LogFormat,
    /// A tracing env-filter directive, e.g. `info` or `openledger=debug,info`.
    pub log_level: String,
    /// Largest request body the REST edge accepts.
    pub max_body_bytes: u64,
    /// Time a REST request may take before it is answered with a timeout error.
    pub request_timeout_ms: u64,
    /// Time given to drain in-flight work and flush the outbox on shutdown.
    pub shutdown_timeout_ms: u64,
    /// JetStream stream that holds every platform subject.
    pub bus_stream: String,
    /// Root of every subject (`ol.` in the architecture).
    pub bus_subject_prefix: String,
    /// Window in which a repeated message id is dropped as a duplicate.
    pub bus_duplicate_window_ms: u64,
    /// How long a governance proposal is open for votes (not itself governed).
    pub governance_voting_seconds: u64,
    /// How long a passed proposal waits before it is executed (not itself governed); its
    /// parameters then take effect from the next epoch.
    pub governance_timelock_seconds: u64,
    /// The epoch length of the genesis parameter set (governance may change it later). Used
    /// once, when the ledger first starts on an empty database.
    pub genesis_epoch_seconds: u64,
    /// How genesis splits the supply: `name=basis_points,…`, summing to 10000. Used once,
    /// when the ledger first starts on an empty database.
    pub genesis_allocations: String,
}

/// `attribution_influence_max_lag_ms` unless set: influence within 10 s of completion.
pub const DEFAULT_ATTRIBUTION_INFLUENCE_MAX_LAG_MS: u64 = 10_000;

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(".openledger"),
            database_url: None,
            nats_url: None,
            object_store_url: None,
            ledger_url: None,
            datanet_url: None,
            model_factory_url: None,
            attribution_url: None,
            base_model: None,
            engine_urls: String::new(),
            engine_port: 50060,
            engine_threads: 0,
            engine_max_batch_size: 16,
            engine_max_queue: 256,
            adapter_cache_bytes: 2 << 30,
            engine_preload_adapters: String::new(),
            job_executor: "local".to_owned(),
            job_memory_limit_bytes: 0,
            attribution_influence_max_lag_ms: DEFAULT_ATTRIBUTION_INFLUENCE_MAX_LAG_MS,
            kubernetes_namespace: String::new(),
            kubernetes_job_image: String::new(),
            kubernetes_job_env_from: String::new(),
            kubernetes_data_claim: String::new(),
            kubernetes_training_gpus: 0,
            kubernetes_queue: String::new(),
            api_key_requests_per_minute: 600,
            api_key_tokens_per_minute: 1_000_000,
            listen_host: "127.0.0.1".to_owned(),
            http_port: 8080,
            grpc_base_port: 50051,
            ops_base_port: 9091,
            log_format: LogFormat::Pretty,
            log_level: "info".to_owned(),
            max_body_bytes: 10 * 1024 * 1024,
            request_timeout_ms: 30_000,
            shutdown_timeout_ms: 20_000,
            bus_stream: "OPENLEDGER".to_owned(),
            bus_subject_prefix: "ol".to_owned(),
            bus_duplicate_window_ms: 120_000,
            governance_voting_seconds: crate::governance::DEFAULT_VOTING_SECONDS,
            governance_timelock_seconds: crate::governance::DEFAULT_TIMELOCK_SECONDS,
            genesis_epoch_seconds: crate::governance::DEFAULT_EPOCH_SECONDS,
            genesis_allocations: "community=5171,investors=1829,team=1500,ecosystem=1000,liquidity=500".to_owned(),
        }
    }
}

/// A setting with a value it does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {key} {value:?}: {accepted}")]
pub struct ConfigError {
    /// The setting's name as in the YAML file (`http_port`).
    pub key: &'static str,
    pub value: String,
    /// What the setting accepts.
    pub accepted: String,
}

impl Config {
    /// The database URL in effect: the configured one, or SQLite in the data directory.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}?mode=rwc", absolute(&self.data_dir.join("openledger.db")).display()),
        }
    }

    /// The object store URL in effect: the configured one, or `data_dir/objects`.
    pub fn effective_object_store_url(&self) -> String {
        match &self.object_store_url {
            Some(url) => url.clone(),
            None => format!("file://{}", absolute(&self.data_dir.join("objects")).display()),
        }
    }

    /// The engine replicas of `engine_urls`; empty when the engine runs in-process.
    pub fn engine_url_list(&self) -> Vec<String> {
        self.engine_urls.split(',').map(str::trim).filter(|url| !url.is_empty()).map(str::to_owned).collect()
    }

    pub fn grpc_port(&self, service: ServiceKind) -> u16 {
        offset_port(self.grpc_base_port, service)
    }

    pub fn ops_port(&self, service: ServiceKind) -> u16 {
        offset_port(self.ops_base_port, service)
    }

    /// Checks every setting; the first bad one is reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, value: &dyn fmt::Display, accepted: &str| ConfigError {
            key,
            value: value.to_string(),
            accepted: accepted.to_owned(),
        };
        if let Some(url) = &self.database_url
            && !["sqlite:", "postgres://", "postgresql://"].iter().any(|scheme| url.starts_with(scheme))
        {
            return Err(bad("database_url", url, "accepted values are sqlite://PATH or postgres://USER@HOST:PORT/DB"));
        }
        if let Some(url) = &self.nats_url
            && !["nats://", "tls://"].iter().any(|scheme| url.starts_with(scheme))
        {
            return Err(bad("nats_url", url, "accepted values are nats://HOST:PORT or tls://HOST:PORT"));
        }
        if let Some(url) = &self.object_store_url
            && !["file://", "s3://", "memory://"].iter().any(|scheme| url.starts_with(scheme))
        {
            return Err(bad(
                "object_store_url",
                url,
                "accepted values are file:///PATH, s3://BUCKET[/PREFIX] or memory://",
            ));
        }
        for (key, url) in [
            ("ledger_url", &self.ledger_url),
            ("datanet_url", &self.datanet_url),
            ("model_factory_url", &self.model_factory_url),
            ("attribution_url", &self.attribution_url),
        ] {
            if let Some(url) = url
                && !["http://", "https://"].iter().any(|scheme| url.starts_with(scheme))
            {
                return Err(bad(key, url, "accepted values are http://HOST:PORT or https://HOST:PORT"));
            }
        }
        if self.listen_host.parse::<std::net::IpAddr>().is_err() {
            return Err(bad(
                "listen_host",
                &self.listen_host,
                "accepted values are IP addresses such as 127.0.0.1 or 0.0.0.0",
            ));
        }
        for (key, base) in [("grpc_base_port", self.grpc_base_port), ("ops_base_port", self.ops_base_port)] {
            if base != 0 && base > u16::MAX - ServiceKind::ALL.len() as u16 {
                return Err(bad(key, &base, "accepted values are 0 (free ports) or 1..=65530"));
            }
        }
        for url in self.engine_url_list() {
            if !["http://", "https://", "kubernetes://"].iter().any(|scheme| url.starts_with(scheme)) {
                return Err(bad(
                    "engine_urls",
                    &url,
                    "accepted values are comma-separated http://HOST:PORT URLs, or kubernetes://SERVICE[.NAMESPACE]:PORT \
                     (the replicas behind a Service, found through its EndpointSlices)",
                ));
            }
        }
        if !["local", "kubernetes"].contains(&self.job_executor.as_str()) {
            return Err(bad("job_executor", &self.job_executor, "accepted values are local, kubernetes"));
        }
        for (key, name) in [
            ("kubernetes_namespace", &self.kubernetes_namespace),
            ("kubernetes_data_claim", &self.kubernetes_data_claim),
            ("kubernetes_queue", &self.kubernetes_queue),
        ] {
            if !name.is_empty() && !dns_label(name) {
                return Err(bad(key, name, "accepted values are Kubernetes names: 1-63 of a-z, 0-9 and '-'"));
            }
        }
        for part in self.kubernetes_job_env_from.split(',').map(str::trim).filter(|part| !part.is_empty()) {
            let valid = match part.split_once(':') {
                Some(("configmap" | "secret", name)) => dns_label(name),
                _ => false,
            };
            if !valid {
                return Err(bad(
                    "kubernetes_job_env_from",
                    &part,
                    "accepted values are comma-separated configmap:NAME or secret:NAME",
                ));
            }
        }
        if self.job_executor == "kubernetes" && self.kubernetes_job_image.trim().is_empty() {
            return Err(bad(
                "kubernetes_job_image",
                &self.kubernetes_job_image,
                "the kubernetes job executor needs the job pods' container image",
            ));
        }
        if self.kubernetes_training_gpus > 16 {
            return Err(bad("kubernetes_training_gpus", &self.kubernetes_training_gpus, "accepted values are 0..=16"));
        }
        for (key, value, max) in [
            ("engine_threads", self.engine_threads, 1024),
            ("engine_max_batch_size", self.engine_max_batch_size, 1024),
            ("engine_max_queue", self.engine_max_queue, 1 << 20),
            ("api_key_requests_per_minute", self.api_key_requests_per_minute, 1 << 32),
            ("api_key_tokens_per_minute", self.api_key_tokens_per_minute, 1 << 40),
        ] {
            let min = u64::from(key != "engine_threads");
            if value < min || value > max {
                return Err(bad(key, &value, &format!("accepted values are {min}..={max}")));
            }
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > 1 << 30 {
            return Err(bad("max_body_bytes", &self.max_body_bytes, "accepted values are 1..=1073741824 bytes"));
        }
        for (key, value) in [
            ("request_timeout_ms", self.request_timeout_ms),
            ("shutdown_timeout_ms", self.shutdown_timeout_ms),
            ("bus_duplicate_window_ms", self.bus_duplicate_window_ms),
        ] {
            if value == 0 || value > 3_600_000 {
                return Err(bad(key, &value, "accepted values are 1..=3600000 milliseconds"));
            }
        }
        let token =
            |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !token(&self.bus_stream) {
            return Err(bad("bus_stream", &self.bus_stream, "accepted values are letters, digits, '_' and '-'"));
        }
        if !token(&self.bus_subject_prefix) {
            return Err(bad(
                "bus_subject_prefix",
                &self.bus_subject_prefix,
                "accepted values are letters, digits, '_' and '-'",
            ));
        }
        let max = crate::governance::MAX_SECONDS;
        for (key, value, min) in [
            ("governance_voting_seconds", self.governance_voting_seconds, 1),
            ("governance_timelock_seconds", self.governance_timelock_seconds, 0),
            ("genesis_epoch_seconds", self.genesis_epoch_seconds, 1),
        ] {
            if !(min..=max).contains(&value) {
                return Err(bad(key, &value, &format!("accepted values are {min}..={max} seconds (a year)")));
            }
        }
        if let Err(reason) = self.genesis_shares() {
            return Err(bad("genesis_allocations", &self.genesis_allocations, &reason));
        }
        Ok(())
    }

    /// The genesis allocations as (name, basis points), checked: 1 to 50 named shares, each
    /// positive, summing to 10000.
    pub fn genesis_shares(&self) -> Result<Vec<(String, u32)>, String> {
        let accepted = "accepted values are name=basis_points pairs separated by commas, summing to 10000 (e.g. community=6000,team=4000)";
        let mut shares = Vec::new();
        for part in self.genesis_allocations.split(',') {
            let (name, points) = part.trim().split_once('=').ok_or_else(|| accepted.to_owned())?;
            let valid_name = !name.is_empty()
                && name.len() <= 32
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
            let points: u32 = points.parse().map_err(|_| accepted.to_owned())?;
            if !valid_name || points == 0 {
                return Err(accepted.to_owned());
            }
            shares.push((name.to_owned(), points));
        }
        let total: u32 = shares.iter().map(|(_, points)| points).sum();
        if shares.is_empty() || shares.len() > 50 || total != 10_000 {
            return Err(format!("{accepted}; these sum to {total}"));
        }
        Ok(shares)
    }
}

/// A URL without its password, for logs, errors and `config print`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => match url[scheme_end + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

/// A Kubernetes object name of the DNS-label kind (RFC 1123): 1-63 of `a-z`, `0-9`, `-`,
/// starting and ending with a letter or digit.
pub fn dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn offset_port(base: u16, service: ServiceKind) -> u16 {
    if base == 0 { 0 } else { base + service.port_offset() }
}

fn absolute(path: &std::path::Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir().map(|dir| dir.join(path)).unwrap_or_else(|_| path.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(redact_url("postgres://app:secret@db:5432/ol"), "postgres://app:***@db:5432/ol");
        assert_eq!(redact_url("postgres://app@db/ol"), "postgres://app@db/ol");
        assert_eq!(redact_url("sqlite://x.db?mode=rwc"), "sqlite://x.db?mode=rwc");
    }

    #[test]
    fn defaults_are_valid_and_embedded() {
        let config = Config::default();
        assert_eq!(config.validate(), Ok(()));
        assert!(config.effective_database_url().starts_with("sqlite:///"));
        assert!(config.effective_database_url().ends_with(".openledger/openledger.db?mode=rwc"));
        assert!(config.effective_object_store_url().starts_with("file:///"));
        assert_eq!(config.grpc_port(ServiceKind::InferenceGateway), 50055);
        assert_eq!(Config { grpc_base_port: 0, ..Config::default() }.grpc_port(ServiceKind::Ledger), 0);
    }

    #[test]
    fn bad_values_name_the_setting_and_what_it_accepts() {
        let error =
            Config { database_url: Some("mysql://x".into()), ..Config::default() }.validate().expect_err("invalid");
        assert_eq!(error.key, "database_url");
        assert!(error.to_string().contains("postgres://"), "{error}");
        let error = Config { request_timeout_ms: 0, ..Config::default() }.validate().expect_err("invalid");
        assert_eq!(error.key, "request_timeout_ms");
        let error = Config { genesis_allocations: "a=5000,b=4000".into(), ..Config::default() }
            .validate()
            .expect_err("invalid");
        assert_eq!(error.key, "genesis_allocations");
        assert!(error.accepted.ends_with("these sum to 9000"), "{error}");
        assert!(Config { genesis_allocations: "A=10000".into(), ..Config::default() }.validate().is_err());
        // A test network's governance in seconds is fine; no vote at all, or past a year, is not.
        let fast = Config {
            governance_voting_seconds: 1,
            governance_timelock_seconds: 0,
            genesis_epoch_seconds: 1,
            ..Config::default()
        };
        assert_eq!(fast.validate(), Ok(()));
        for bad in [
            Config { governance_voting_seconds: 0, ..Config::default() },
            Config { governance_timelock_seconds: crate::governance::MAX_SECONDS + 1, ..Config::default() },
            Config { genesis_epoch_seconds: 0, ..Config::default() },
        ] {
            let error = bad.validate().expect_err("invalid");
            assert!(error.key.contains("seconds") && error.accepted.contains("31536000"), "{error}");
        }
        assert_eq!(Config::default().genesis_shares().map(|shares| shares.len()), Ok(5));
        assert_eq!(
            "nope".parse::<ServiceKind>().expect_err("unknown"),
            "unknown service \"nope\": accepted values are ledger, datanet-ingest, attribution-worker, model-factory, inference-gateway"
        );
    }
}
