//! Layered configuration: each setting comes from its flag, else its environment variable,
//! else the YAML file given with `--config`, else its default. Every value is checked where
//! it came from, so an error names the flag, variable or file key and what it accepts.

use std::{collections::BTreeMap, path::Path};

use openledger_core::Config;
use serde_json::{Map, Value};

/// One configurable setting and the names it goes by.
pub struct Setting {
    /// Key in the YAML file and in `Config`.
    pub key: &'static str,
    pub flag: &'static str,
    pub env: &'static str,
    pub help: &'static str,
}

/// Every setting, in the order `config print` shows them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "data_dir",
        flag: "--data-dir",
        env: "OPENLEDGER_DATA_DIR",
        help: "directory of the embedded database and object store",
    },
    Setting {
        key: "database_url",
        flag: "--database-url",
        env: "DATABASE_URL",
        help: "sqlite://PATH or postgres://USER@HOST:PORT/DB (empty: SQLite in data_dir)",
    },
    Setting { key: "nats_url", flag: "--nats-url", env: "NATS_URL", help: "nats://HOST:PORT (empty: in-process bus)" },
    Setting {
        key: "object_store_url",
        flag: "--object-store-url",
        env: "OBJECT_STORE_URL",
        help: "file:///DIR, s3://BUCKET[/PREFIX] or memory:// (empty: data_dir/objects)",
    },
    Setting {
        key: "ledger_url",
        flag: "--ledger-url",
        env: "OPENLEDGER_LEDGER_URL",
        help: "http://HOST:PORT of the ledger's gRPC API (empty: this process, else listen_host)",
    },
    Setting {
        key: "datanet_url",
        flag: "--datanet-url",
        env: "OPENLEDGER_DATANET_URL",
        help: "http://HOST:PORT of datanet-ingest's gRPC API (empty: this process, else listen_host)",
    },
    Setting {
        key: "model_factory_url",
        flag: "--model-factory-url",
        env: "OPENLEDGER_MODEL_FACTORY_URL",
        help: "http://HOST:PORT of model-factory's gRPC API (empty: this process, else listen_host)",
    },
    Setting {
        key: "attribution_url",
        flag: "--attribution-url",
        env: "OPENLEDGER_ATTRIBUTION_URL",
        help: "http://HOST:PORT of the attribution-worker's gRPC API (empty: this process, else listen_host)",
    },
    Setting {
        key: "base_model",
        flag: "--base-model",
        env: "OPENLEDGER_BASE_MODEL",
        help: "GGUF/safetensors path or hf://owner/name[@rev]/file the engines serve (empty: packaged SmolLM2 if found)",
    },
    Setting {
        key: "engine_urls",
        flag: "--engine-urls",
        env: "OPENLEDGER_ENGINE_URLS",
        help: "comma-separated http://HOST:PORT of engine replicas, or kubernetes://SERVICE[.NAMESPACE]:PORT (the ready replicas behind a Service, followed through its EndpointSlices; empty: engine in the gateway's process)",
    },
    Setting {
        key: "engine_port",
        flag: "--engine-port",
        env: "OPENLEDGER_ENGINE_PORT",
        help: "gRPC port of an engine replica (`openledger engine`)",
    },
    Setting {
        key: "engine_threads",
        flag: "--engine-threads",
        env: "OPENLEDGER_ENGINE_THREADS",
        help: "compute threads of an engine (0: every core)",
    },
    Setting {
        key: "engine_max_batch_size",
        flag: "--engine-max-batch-size",
        env: "OPENLEDGER_ENGINE_MAX_BATCH_SIZE",
        help: "sequences an engine decodes together",
    },
    Setting {
        key: "engine_max_queue",
        flag: "--engine-max-queue",
        env: "OPENLEDGER_ENGINE_MAX_QUEUE",
        help: "requests an engine queues before answering overloaded",
    },
    Setting {
        key: "adapter_cache_bytes",
        flag: "--adapter-cache-bytes",
        env: "OPENLEDGER_ADAPTER_CACHE_BYTES",
        help: "bytes of adapter weights an engine keeps in memory",
    },
    Setting {
        key: "engine_preload_adapters",
        flag: "--engine-preload-adapters",
        env: "OPENLEDGER_ENGINE_PRELOAD_ADAPTERS",
        help: "comma-separated adapter ids an engine replica loads at start",
    },
    Setting {
        key: "job_executor",
        flag: "--job-executor",
        env: "OPENLEDGER_JOB_EXECUTOR",
        help: "where fine-tuning jobs and index builds run: local or kubernetes",
    },
    Setting {
        key: "job_memory_limit_bytes",
        flag: "--job-memory-limit-bytes",
        env: "OPENLEDGER_JOB_MEMORY_LIMIT_BYTES",
        help: "bytes one fine-tuning job may take at its peak (0: what is available when it starts)",
    },
    Setting {
        key: "attribution_influence_max_lag_ms",
        flag: "--attribution-influence-max-lag-ms",
        env: "OPENLEDGER_ATTRIBUTION_INFLUENCE_MAX_LAG_MS",
        help: "how far behind its inferences the attribution-worker may be and still compute influence (0: always)",
    },
    Setting {
        key: "kubernetes_namespace",
        flag: "--kubernetes-namespace",
        env: "OPENLEDGER_KUBERNETES_NAMESPACE",
        help: "namespace of the kubernetes executor's resources (empty: the pod's own)",
    },
    Setting {
        key: "kubernetes_job_image",
        flag: "--kubernetes-job-image",
        env: "OPENLEDGER_KUBERNETES_JOB_IMAGE",
        help: "container image of job pods (kubernetes executor)",
    },
    Setting {
        key: "kubernetes_job_env_from",
        flag: "--kubernetes-job-env-from",
        env: "OPENLEDGER_KUBERNETES_JOB_ENV_FROM",
        help: "comma-separated configmap:NAME / secret:NAME job pods get as environment",
    },
    Setting {
        key: "kubernetes_data_claim",
        flag: "--kubernetes-data-claim",
        env: "OPENLEDGER_KUBERNETES_DATA_CLAIM",
        help: "ReadWriteMany PVC shared with job pods: checkpoints, indexes (empty: pod scratch)",
    },
    Setting {
        key: "kubernetes_training_gpus",
        flag: "--kubernetes-training-gpus",
        env: "OPENLEDGER_KUBERNETES_TRAINING_GPUS",
        help: "nvidia.com/gpu per training job (0: CPU)",
    },
    Setting {
        key: "kubernetes_queue",
        flag: "--kubernetes-queue",
        env: "OPENLEDGER_KUBERNETES_QUEUE",
        help: "Kueue LocalQueue of job pods (empty: no queue)",
    },
    Setting {
        key: "api_key_requests_per_minute",
        flag: "--api-key-requests-per-minute",
        env: "OPENLEDGER_API_KEY_REQUESTS_PER_MINUTE",
        help: "default request limit of an API key",
    },
    Setting {
        key: "api_key_tokens_per_minute",
        flag: "--api-key-tokens-per-minute",
        env: "OPENLEDGER_API_KEY_TOKENS_PER_MINUTE",
        help: "default token limit (prompt + max_tokens) of an API key",
    },
    Setting {
        key: "listen_host",
        flag: "--listen-host",
        env: "OPENLEDGER_LISTEN_HOST",
        help: "address every listener binds to",
    },
    Setting {
        key: "http_port",
        flag: "--http-port",
        env: "OPENLEDGER_HTTP_PORT",
        help: "port of the public REST edge",
    },
    Setting {
        key: "grpc_base_port",
        flag: "--grpc-base-port",
        env: "OPENLEDGER_GRPC_BASE_PORT",
        help: "gRPC port of the ledger; the other services follow (0: free ports)",
    },
    Setting {
        key: "ops_base_port",
        flag: "--ops-base-port",
        env: "OPENLEDGER_OPS_BASE_PORT",
        help: "ops HTTP port of the ledger; the others follow (0: free ports)",
    },
    Setting { key: "log_format", flag: "--log-format", env: "OPENLEDGER_LOG_FORMAT", help: "pretty or json" },
    Setting {
        key: "log_level",
        flag: "--log-level",
        env: "OPENLEDGER_LOG_LEVEL",
        help: "tracing filter, e.g. info or openledger=debug,info",
    },
    Setting {
        key: "max_body_bytes",
        flag: "--max-body-bytes",
        env: "OPENLEDGER_MAX_BODY_BYTES",
        help: "largest REST request body",
    },
    Setting {
        key: "request_timeout_ms",
        flag: "--request-timeout-ms",
        env: "OPENLEDGER_REQUEST_TIMEOUT_MS",
        help: "REST request timeout",
    },
    Setting {
        key: "shutdown_timeout_ms",
        flag: "--shutdown-timeout-ms",
        env: "OPENLEDGER_SHUTDOWN_TIMEOUT_MS",
        help: "time to drain and flush on shutdown",
    },
    Setting { key: "bus_stream", flag: "--bus-stream", env: "OPENLEDGER_BUS_STREAM", help: "JetStream stream name" },
    Setting {
        key: "bus_subject_prefix",
        flag: "--bus-subject-prefix",
        env: "OPENLEDGER_BUS_SUBJECT_PREFIX",
        help: "root token of every subject",
    },
    Setting {
        key: "bus_duplicate_window_ms",
        flag: "--bus-duplicate-window-ms",
        env: "OPENLEDGER_BUS_DUPLICATE_WINDOW_MS",
        help: "message-id dedup window",
    },
    Setting {
        key: "governance_voting_seconds",
        flag: "--governance-voting-seconds",
        env: "OPENLEDGER_GOVERNANCE_VOTING_SECONDS",
        help: "how long a governance proposal is open for votes",
    },
    Setting {
        key: "governance_timelock_seconds",
        flag: "--governance-timelock-seconds",
        env: "OPENLEDGER_GOVERNANCE_TIMELOCK_SECONDS",
        help: "how long a passed proposal waits before it is executed",
    },
    Setting {
        key: "genesis_epoch_seconds",
        flag: "--genesis-epoch-seconds",
        env: "OPENLEDGER_GENESIS_EPOCH_SECONDS",
        help: "epoch length of the genesis parameter set, used at the ledger's first start",
    },
    Setting {
        key: "genesis_allocations",
        flag: "--genesis-allocations",
        env: "OPENLEDGER_GENESIS_ALLOCATIONS",
        help: "name=basis_points,… summing to 10000, used at the ledger's first start",
    },
];

/// A configuration error, printed as is; the process exits with code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

/// The effective configuration and where each setting came from.
pub struct Resolved {
    pub config: Config,
    pub origins: BTreeMap<&'static str, String>,
}

/// Resolves the configuration from `flags` (key → raw value), the environment and the file.
pub fn resolve(
    flags: &BTreeMap<&'static str, String>,
    env: &dyn Fn(&str) -> Option<String>,
    file: Option<&Path>,
) -> Result<Resolved, SettingsError> {
    let defaults = to_map(&Config::default());
    let mut merged = defaults.clone();
    let mut origins: BTreeMap<&'static str, String> = SETTINGS.iter().map(|s| (s.key, "default".to_owned())).collect();

    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|error| SettingsError(format!("cannot read config file {}: {error}", path.display())))?;
        let yaml: Value = serde_norway::from_str(&text)
            .map_err(|error| SettingsError(format!("config file {} is not valid YAML: {error}", path.display())))?;
        let entries = match yaml {
            Value::Object(entries) => entries,
            Value::Null => Map::new(),
            _ => {
                return Err(SettingsError(format!(
                    "config file {} must be a mapping of setting: value",
                    path.display()
                )));
            }
        };
        for (key, value) in entries {
            let setting = SETTINGS.iter().find(|s| s.key == key).ok_or_else(|| {
                SettingsError(format!(
                    "unknown setting {key:?} in config file {}: accepted settings are {}",
                    path.display(),
                    SETTINGS.iter().map(|s| s.key).collect::<Vec<_>>().join(", ")
                ))
            })?;
            let origin = format!("{} in {}", setting.key, path.display());
            let value =
                if value.is_string() { typed(setting, value.as_str().unwrap_or_default(), &defaults) } else { value };
            check_one(&defaults, setting, &value, &origin)?;
            merged.insert(setting.key.to_owned(), value);
            origins.insert(setting.key, origin);
        }
    }
    for setting in SETTINGS {
        if let Some(raw) = env(setting.env) {
            let value = typed(setting, &raw, &defaults);
            check_one(&defaults, setting, &value, setting.env)?;
            merged.insert(setting.key.to_owned(), value);
            origins.insert(setting.key, setting.env.to_owned());
        }
    }
    for setting in SETTINGS {
        if let Some(raw) = flags.get(setting.key) {
            let value = typed(setting, raw, &defaults);
            check_one(&defaults, setting, &value, setting.flag)?;
            merged.insert(setting.key.to_owned(), value);
            origins.insert(setting.key, setting.flag.to_owned());
        }
    }
    let config: Config =
        serde_json::from_value(Value::Object(merged)).map_err(|error| SettingsError(error.to_string()))?;
    config.validate().map_err(|error| {
        let origin = match origins.get(error.key).map(String::as_str) {
            Some("default") | None => format!("{} (not set)", error.key),
            Some(origin) => origin.to_owned(),
        };
        SettingsError(format!("invalid {origin} {:?}: {}", error.value, error.accepted))
    })?;
    Ok(Resolved { config, origins })
}

fn to_map(config: &Config) -> Map<String, Value> {
    match serde_json::to_value(config).expect("config serializes") {
        Value::Object(map) => map,
        _ => unreachable!("Config is a struct"),
    }
}

/// A raw text value typed like the setting's default: numbers for numeric settings, an
/// empty text for "unset" on optional ones.
fn typed(setting: &Setting, raw: &str, defaults: &Map<String, Value>) -> Value {
    match defaults.get(setting.key) {
        Some(Value::Number(_)) => {
            raw.trim().parse::<u64>().map(Value::from).unwrap_or_else(|_| Value::String(raw.to_owned()))
        }
        Some(Value::Null) if raw.is_empty() => Value::Null,
        _ => Value::String(raw.to_owned()),
    }
}

/// Checks that `value` has the setting's type, naming where it came from if not.
fn check_one(
    defaults: &Map<String, Value>,
    setting: &Setting,
    value: &Value,
    origin: &str,
) -> Result<(), SettingsError> {
    let mut probe = defaults.clone();
    probe.insert(setting.key.to_owned(), value.clone());
    match serde_json::from_value::<Config>(Value::Object(probe)) {
        Ok(config) => match config.validate() {
            Ok(()) => Ok(()),
            Err(error) if error.key == setting.key => {
                Err(SettingsError(format!("invalid {origin} {:?}: {}", error.value, error.accepted)))
            }
            // A rule between settings (`job_executor: kubernetes` needs `kubernetes_job_image`)
            // is checked once every layer is merged, not against the others' defaults.
            Err(_) => Ok(()),
        },
        Err(_) => {
            let accepted = match setting.key {
                "log_format" => "accepted values are pretty, json".to_owned(),
                key if key.ends_with("_port") => "accepted values are port numbers 0..=65535".to_owned(),
                key if key.ends_with("_ms") || key.ends_with("_bytes") => {
                    "accepted values are whole numbers".to_owned()
                }
                _ => format!("expected {}", setting.help),
            };
            let shown = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            Err(SettingsError(format!("invalid {origin} {shown:?}: {accepted}")))
        }
    }
}

/// The effective configuration as YAML, each line saying where the value came from.
pub fn print_yaml(resolved: &Resolved) -> String {
    let map = to_map(&resolved.config);
    let mut out = String::new();
    for setting in SETTINGS {
        let value = map.get(setting.key).cloned().unwrap_or(Value::Null);
        let rendered = serde_norway::to_string(&value).unwrap_or_default();
        let origin = resolved.origins.get(setting.key).map(String::as_str).unwrap_or("default");
        out.push_str(&format!("{}: {}  # {origin}\n", setting.key, rendered.trim_end()));
    }
    out.push_str(&format!(
        "# effective database: {}\n# effective object store: {}\n# effective event bus: {}\n",
        openledger_core::redact_url(&resolved.config.effective_database_url()),
        resolved.config.effective_object_store_url(),
        resolved.config.nats_url.as_deref().unwrap_or("in-process"),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn flags_beat_environment_beat_file_beat_defaults() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, "http_port: 7000\nops_base_port: 7100\nlog_format: json\n").expect("write");
        let env = |name: &str| match name {
            "OPENLEDGER_HTTP_PORT" => Some("7001".to_owned()),
            "OPENLEDGER_OPS_BASE_PORT" => Some("7101".to_owned()),
            _ => None,
        };
        let flags = BTreeMap::from([("http_port", "7002".to_owned())]);
        let resolved = resolve(&flags, &env, Some(&file)).expect("valid");
        assert_eq!(resolved.config.http_port, 7002);
        assert_eq!(resolved.config.ops_base_port, 7101);
        assert_eq!(resolved.config.log_format, openledger_core::LogFormat::Json);
        assert_eq!(resolved.config.grpc_base_port, 50051);
        assert_eq!(resolved.origins["http_port"], "--http-port");
        assert_eq!(resolved.origins["ops_base_port"], "OPENLEDGER_OPS_BASE_PORT");
        assert!(resolved.origins["log_format"].starts_with("log_format in "));
        let printed = print_yaml(&resolved);
        assert!(printed.contains("http_port: 7002  # --http-port"), "{printed}");
    }

    #[test]
    fn a_rule_between_settings_is_checked_on_the_merged_layers() {
        let env = |name: &str| match name {
            "OPENLEDGER_JOB_EXECUTOR" => Some("kubernetes".to_owned()),
            "OPENLEDGER_KUBERNETES_JOB_IMAGE" => Some("ghcr.io/openledger/openledger:0.1".to_owned()),
            _ => None,
        };
        let resolved = resolve(&BTreeMap::new(), &env, None).expect("the image comes with the executor");
        assert_eq!(resolved.config.job_executor, "kubernetes");
        let flags = BTreeMap::from([("job_executor", "kubernetes".to_owned())]);
        let error = resolve(&flags, &no_env, None).err().expect("no image").0;
        assert!(
            error.starts_with("invalid kubernetes_job_image (not set) \"\": the kubernetes job executor needs"),
            "{error}"
        );
    }

    #[test]
    fn errors_name_the_source_and_the_accepted_values() {
        let flags = BTreeMap::from([("http_port", "eighty".to_owned())]);
        let error = resolve(&flags, &no_env, None).err().expect("invalid").0;
        assert_eq!(error, "invalid --http-port \"eighty\": accepted values are port numbers 0..=65535");

        let env = |name: &str| (name == "OPENLEDGER_LOG_FORMAT").then(|| "xml".to_owned());
        let error = resolve(&BTreeMap::new(), &env, None).err().expect("invalid").0;
        assert_eq!(error, "invalid OPENLEDGER_LOG_FORMAT \"xml\": accepted values are pretty, json");

        let env = |name: &str| (name == "DATABASE_URL").then(|| "mysql://db".to_owned());
        let error = resolve(&BTreeMap::new(), &env, None).err().expect("invalid").0;
        assert!(error.starts_with("invalid DATABASE_URL \"mysql://db\": accepted values are sqlite://"), "{error}");

        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "htp_port: 1\n").expect("write");
        let error = resolve(&BTreeMap::new(), &no_env, Some(&file)).err().expect("invalid").0;
        assert!(error.starts_with("unknown setting \"htp_port\" in config file"), "{error}");
        assert!(error.contains("http_port"));

        std::fs::write(&file, "request_timeout_ms: 0\n").expect("write");
        let error = resolve(&BTreeMap::new(), &no_env, Some(&file)).err().expect("invalid").0;
        assert!(error.starts_with("invalid request_timeout_ms in "), "{error}");
        assert!(error.ends_with("\"0\": accepted values are 1..=3600000 milliseconds"), "{error}");
    }

    #[test]
    fn empty_values_unset_optional_urls() {
        let env = |name: &str| (name == "NATS_URL").then(String::new);
        let resolved = resolve(&BTreeMap::new(), &env, None).expect("valid");
        assert_eq!(resolved.config.nats_url, None);
    }
}
