//! Setting flags, grouped by who uses them, so each command's help shows its own options
//! first and then, under "Settings", only the settings it reads: service commands (`dev`,
//! `serve`, `config print`) take every setting, client commands the URL of the service they
//! call (and `ledger verify|export` the database), model commands none. Every setting is
//! also accepted before the command (`openledger --data-dir DIR ledger verify`), and from its
//! environment variable or the `--config` file whatever the command (see `settings.rs`).

use std::{collections::BTreeMap, path::PathBuf};

use clap::Args;

/// Flag values by setting key (`settings::SETTINGS`), as typed.
pub type FlagValues = BTreeMap<&'static str, String>;

/// A group of setting flags.
pub trait SettingFlags {
    /// Adds the flags given in this group to `values`.
    fn collect(&self, values: &mut FlagValues);

    /// The `--config` file given in this group, if it has that flag.
    fn config_file(&self) -> Option<PathBuf> {
        None
    }
}

fn put(values: &mut FlagValues, key: &'static str, value: &Option<String>) {
    if let Some(value) = value {
        values.insert(key, value.clone());
    }
}

/// The settings file.
#[derive(Args, Clone, Default)]
#[command(next_help_heading = "Settings")]
pub struct ConfigFile {
    /// YAML file with settings (lowest precedence) [env: OPENLEDGER_CONFIG]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl SettingFlags for ConfigFile {
    fn collect(&self, _values: &mut FlagValues) {}

    fn config_file(&self) -> Option<PathBuf> {
        self.config.clone()
    }
}

/// Where the books are: what `ledger verify` and `ledger export` read.
#[derive(Args, Clone, Default)]
#[command(next_help_heading = "Settings")]
pub struct DatabaseFlags {
    /// Directory of the embedded database and object store [env: OPENLEDGER_DATA_DIR] [default: .openledger]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<String>,
    /// sqlite://PATH or postgres://USER@HOST:PORT/DB [env: DATABASE_URL] [default: SQLite in the data dir]
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    #[command(flatten)]
    file: ConfigFile,
}

impl SettingFlags for DatabaseFlags {
    fn collect(&self, values: &mut FlagValues) {
        put(values, "data_dir", &self.data_dir);
        put(values, "database_url", &self.database_url);
    }

    fn config_file(&self) -> Option<PathBuf> {
        self.file.config_file()
    }
}

/// The ledger's address, for commands that call it.
#[derive(Args, Clone, Default)]
#[command(next_help_heading = "Settings")]
pub struct LedgerUrlFlags {
    /// gRPC URL of the ledger [env: OPENLEDGER_LEDGER_URL] [default: the local ledger port]
    #[arg(long, value_name = "URL")]
    ledger_url: Option<String>,
    #[command(flatten)]
    file: ConfigFile,
}

impl SettingFlags for LedgerUrlFlags {
    fn collect(&self, values: &mut FlagValues) {
        put(values, "ledger_url", &self.ledger_url);
    }

    fn config_file(&self) -> Option<PathBuf> {
        self.file.config_file()
    }
}

/// Datanet-ingest's address, for `datanet` commands (given anywhere after `datanet`).
#[derive(Args, Clone, Default)]
#[command(next_help_heading = "Settings")]
pub struct DatanetUrlFlags {
    /// gRPC URL of datanet-ingest [env: OPENLEDGER_DATANET_URL] [default: the local datanet-ingest port]
    #[arg(long, global = true, value_name = "URL")]
    datanet_url: Option<String>,
    /// YAML file with settings (lowest precedence) [env: OPENLEDGER_CONFIG]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl SettingFlags for DatanetUrlFlags {
    fn collect(&self, values: &mut FlagValues) {
        put(values, "datanet_url", &self.datanet_url);
    }

    fn config_file(&self) -> Option<PathBuf> {
        self.config.clone()
    }
}

/// Every setting: what running services reads (`dev`, `serve`, `config print`, and before
/// any command).
#[derive(Args, Clone, Default)]
#[command(next_help_heading = "Settings")]
pub struct AllFlags {
    /// `--data-dir`, `--database-url` and `--config`.
    #[command(flatten)]
    database: DatabaseFlags,
    /// nats://HOST:PORT for JetStream [env: NATS_URL] [default: in-process bus]
    #[arg(long, value_name = "URL")]
    nats_url: Option<String>,
    /// file:///DIR, s3://BUCKET[/PREFIX] or memory:// [env: OBJECT_STORE_URL] [default: DATA_DIR/objects]
    #[arg(long, value_name = "URL")]
    object_store_url: Option<String>,
    /// gRPC URL of the ledger, for services and commands that call it [env: OPENLEDGER_LEDGER_URL] [default: this process, else the local ledger port]
    #[arg(long, value_name = "URL")]
    ledger_url: Option<String>,
    /// gRPC URL of datanet-ingest, for the gateway and `datanet` commands [env: OPENLEDGER_DATANET_URL] [default: this process, else the local datanet-ingest port]
    #[arg(long, value_name = "URL")]
    datanet_url: Option<String>,
    /// gRPC URL of model-factory (the adapter registry) [env: OPENLEDGER_MODEL_FACTORY_URL] [default: this process, else the local model-factory port]
    #[arg(long, value_name = "URL")]
    model_factory_url: Option<String>,
    /// gRPC URL of the attribution-worker, for the gateway's attribution routes [env: OPENLEDGER_ATTRIBUTION_URL] [default: this process, else the local attribution-worker port]
    #[arg(long, value_name = "URL")]
    attribution_url: Option<String>,
    /// Base model the engines serve: GGUF/safetensors path or hf://owner/name[@rev]/file [env: OPENLEDGER_BASE_MODEL] [default: the packaged SmolLM2 if found]
    #[arg(long, value_name = "MODEL")]
    base_model: Option<String>,
    /// Comma-separated gRPC URLs of engine replicas, or kubernetes://SERVICE[.NAMESPACE]:PORT for the ready replicas behind a Service [env: OPENLEDGER_ENGINE_URLS] [default: the engine runs in the gateway's process]
    #[arg(long, value_name = "URLS")]
    engine_urls: Option<String>,
    /// gRPC port of an engine replica [env: OPENLEDGER_ENGINE_PORT] [default: 50060]
    #[arg(long, value_name = "PORT")]
    engine_port: Option<String>,
    /// Compute threads of an engine, 0 for every core [env: OPENLEDGER_ENGINE_THREADS] [default: 0]
    #[arg(long, value_name = "N")]
    engine_threads: Option<String>,
    /// Sequences an engine decodes together [env: OPENLEDGER_ENGINE_MAX_BATCH_SIZE] [default: 16]
    #[arg(long, value_name = "N")]
    engine_max_batch_size: Option<String>,
    /// Requests an engine queues before answering overloaded [env: OPENLEDGER_ENGINE_MAX_QUEUE] [default: 256]
    #[arg(long, value_name = "N")]
    engine_max_queue: Option<String>,
    /// Bytes of adapter weights an engine keeps in memory [env: OPENLEDGER_ADAPTER_CACHE_BYTES] [default: 2147483648]
    #[arg(long, value_name = "BYTES")]
    adapter_cache_bytes: Option<String>,
    /// Comma-separated adapter ids an engine replica loads at start [env: OPENLEDGER_ENGINE_PRELOAD_ADAPTERS]
    #[arg(long, value_name = "IDS")]
    engine_preload_adapters: Option<String>,
    /// Bytes one fine-tuning job may take at its peak; 0: what is available when it starts [env: OPENLEDGER_JOB_MEMORY_LIMIT_BYTES] [default: 0]
    #[arg(long, value_name = "BYTES")]
    job_memory_limit_bytes: Option<String>,
    /// How far behind its inferences the attribution-worker may be and still compute influence; 0: always [env: OPENLEDGER_ATTRIBUTION_INFLUENCE_MAX_LAG_MS] [default: 10000]
    #[arg(long, value_name = "MS")]
    attribution_influence_max_lag_ms: Option<String>,
    /// Where fine-tuning jobs and index builds run: local or kubernetes [env: OPENLEDGER_JOB_EXECUTOR] [default: local]
    #[arg(long, value_name = "EXECUTOR")]
    job_executor: Option<String>,
    /// Namespace of the kubernetes executor's resources [env: OPENLEDGER_KUBERNETES_NAMESPACE] [default: the pod's own]
    #[arg(long, value_name = "NAME")]
    kubernetes_namespace: Option<String>,
    /// Container image of job pods (kubernetes executor) [env: OPENLEDGER_KUBERNETES_JOB_IMAGE]
    #[arg(long, value_name = "IMAGE")]
    kubernetes_job_image: Option<String>,
    /// Comma-separated configmap:NAME / secret:NAME job pods get as environment [env: OPENLEDGER_KUBERNETES_JOB_ENV_FROM]
    #[arg(long, value_name = "SOURCES")]
    kubernetes_job_env_from: Option<String>,
    /// ReadWriteMany PVC shared with job pods (checkpoints, indexes) [env: OPENLEDGER_KUBERNETES_DATA_CLAIM] [default: pod scratch]
    #[arg(long, value_name = "CLAIM")]
    kubernetes_data_claim: Option<String>,
    /// nvidia.com/gpu per training job [env: OPENLEDGER_KUBERNETES_TRAINING_GPUS] [default: 0]
    #[arg(long, value_name = "N")]
    kubernetes_training_gpus: Option<String>,
    /// Kueue LocalQueue of job pods [env: OPENLEDGER_KUBERNETES_QUEUE] [default: none]
    #[arg(long, value_name = "QUEUE")]
    kubernetes_queue: Option<String>,
    /// Default request limit per API key per minute [env: OPENLEDGER_API_KEY_REQUESTS_PER_MINUTE] [default: 600]
    #[arg(long, value_name = "N")]
    api_key_requests_per_minute: Option<String>,
    /// Default token limit per API key per minute [env: OPENLEDGER_API_KEY_TOKENS_PER_MINUTE] [default: 1000000]
    #[arg(long, value_name = "N")]
    api_key_tokens_per_minute: Option<String>,
    /// Address every listener binds to [env: OPENLEDGER_LISTEN_HOST] [default: 127.0.0.1]
    #[arg(long, value_name = "IP")]
    listen_host: Option<String>,
    /// Port of the public REST API [env: OPENLEDGER_HTTP_PORT] [default: 8080]
    #[arg(long, value_name = "PORT")]
    http_port: Option<String>,
    /// gRPC port of the ledger; the other services use the next ports, 0 picks free ones [env: OPENLEDGER_GRPC_BASE_PORT] [default: 50051]
    #[arg(long, value_name = "PORT")]
    grpc_base_port: Option<String>,
    /// Health/metrics port of the ledger; the others use the next ports, 0 picks free ones [env: OPENLEDGER_OPS_BASE_PORT] [default: 9091]
    #[arg(long, value_name = "PORT")]
    ops_base_port: Option<String>,
    /// pretty or json [env: OPENLEDGER_LOG_FORMAT] [default: pretty]
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Log filter, e.g. info or openledger=debug,info (RUST_LOG overrides) [env: OPENLEDGER_LOG_LEVEL] [default: info]
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Largest REST request body in bytes [env: OPENLEDGER_MAX_BODY_BYTES] [default: 10485760]
    #[arg(long, value_name = "BYTES")]
    max_body_bytes: Option<String>,
    /// REST request timeout [env: OPENLEDGER_REQUEST_TIMEOUT_MS] [default: 30000]
    #[arg(long, value_name = "MS")]
    request_timeout_ms: Option<String>,
    /// Time to drain in-flight work and flush the outbox on shutdown [env: OPENLEDGER_SHUTDOWN_TIMEOUT_MS] [default: 20000]
    #[arg(long, value_name = "MS")]
    shutdown_timeout_ms: Option<String>,
    /// JetStream stream name [env: OPENLEDGER_BUS_STREAM] [default: OPENLEDGER]
    #[arg(long, value_name = "NAME")]
    bus_stream: Option<String>,
    /// Root token of every event subject [env: OPENLEDGER_BUS_SUBJECT_PREFIX] [default: ol]
    #[arg(long, value_name = "TOKEN")]
    bus_subject_prefix: Option<String>,
    /// Window in which a repeated event id is dropped [env: OPENLEDGER_BUS_DUPLICATE_WINDOW_MS] [default: 120000]
    #[arg(long, value_name = "MS")]
    bus_duplicate_window_ms: Option<String>,
    /// How long a governance proposal is open for votes [env: OPENLEDGER_GOVERNANCE_VOTING_SECONDS] [default: 259200]
    #[arg(long, value_name = "SECONDS")]
    governance_voting_seconds: Option<String>,
    /// How long a passed proposal waits before it is executed [env: OPENLEDGER_GOVERNANCE_TIMELOCK_SECONDS] [default: 86400]
    #[arg(long, value_name = "SECONDS")]
    governance_timelock_seconds: Option<String>,
    /// Epoch length of the genesis parameter set, used at the ledger's first start [env: OPENLEDGER_GENESIS_EPOCH_SECONDS] [default: 86400]
    #[arg(long, value_name = "SECONDS")]
    genesis_epoch_seconds: Option<String>,
    /// How genesis splits the 1,000,000,000 OPEN, used at the ledger's first start [env: OPENLEDGER_GENESIS_ALLOCATIONS] [default: community=5171,investors=1829,team=1500,ecosystem=1000,liquidity=500]
    #[arg(long, value_name = "NAME=BPS,…")]
    genesis_allocations: Option<String>,
}

impl SettingFlags for AllFlags {
    fn collect(&self, values: &mut FlagValues) {
        self.database.collect(values);
        let pairs = [
            ("nats_url", &self.nats_url),
            ("object_store_url", &self.object_store_url),
            ("ledger_url", &self.ledger_url),
            ("datanet_url", &self.datanet_url),
            ("model_factory_url", &self.model_factory_url),
            ("attribution_url", &self.attribution_url),
            ("base_model", &self.base_model),
            ("engine_urls", &self.engine_urls),
            ("engine_port", &self.engine_port),
            ("engine_threads", &self.engine_threads),
            ("engine_max_batch_size", &self.engine_max_batch_size),
            ("engine_max_queue", &self.engine_max_queue),
            ("adapter_cache_bytes", &self.adapter_cache_bytes),
            ("engine_preload_adapters", &self.engine_preload_adapters),
            ("job_executor", &self.job_executor),
            ("job_memory_limit_bytes", &self.job_memory_limit_bytes),
            ("attribution_influence_max_lag_ms", &self.attribution_influence_max_lag_ms),
            ("kubernetes_namespace", &self.kubernetes_namespace),
            ("kubernetes_job_image", &self.kubernetes_job_image),
            ("kubernetes_job_env_from", &self.kubernetes_job_env_from),
            ("kubernetes_data_claim", &self.kubernetes_data_claim),
            ("kubernetes_training_gpus", &self.kubernetes_training_gpus),
            ("kubernetes_queue", &self.kubernetes_queue),
            ("api_key_requests_per_minute", &self.api_key_requests_per_minute),
            ("api_key_tokens_per_minute", &self.api_key_tokens_per_minute),
            ("listen_host", &self.listen_host),
            ("http_port", &self.http_port),
            ("grpc_base_port", &self.grpc_base_port),
            ("ops_base_port", &self.ops_base_port),
            ("log_format", &self.log_format),
            ("log_level", &self.log_level),
            ("max_body_bytes", &self.max_body_bytes),
            ("request_timeout_ms", &self.request_timeout_ms),
            ("shutdown_timeout_ms", &self.shutdown_timeout_ms),
            ("bus_stream", &self.bus_stream),
            ("bus_subject_prefix", &self.bus_subject_prefix),
            ("bus_duplicate_window_ms", &self.bus_duplicate_window_ms),
            ("governance_voting_seconds", &self.governance_voting_seconds),
            ("governance_timelock_seconds", &self.governance_timelock_seconds),
            ("genesis_epoch_seconds", &self.genesis_epoch_seconds),
            ("genesis_allocations", &self.genesis_allocations),
        ];
        for (key, value) in pairs {
            put(values, key, value);
        }
    }

    fn config_file(&self) -> Option<PathBuf> {
        self.database.config_file()
    }
}

/// The flags of one command line: those before the command, then the command's own (which
/// win when both name a setting).
pub fn merged(before: &dyn SettingFlags, command: Option<&dyn SettingFlags>) -> (FlagValues, Option<PathBuf>) {
    let mut values = FlagValues::new();
    before.collect(&mut values);
    let mut file = before.config_file();
    if let Some(command) = command {
        command.collect(&mut values);
        file = command.config_file().or(file);
    }
    (values, file)
}
