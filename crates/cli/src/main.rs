//! `openledger`: the whole platform in one binary. `dev` runs all five services in one
//! process on SQLite, the local file system and an in-process bus; `serve` runs chosen
//! services against PostgreSQL, NATS JetStream and S3-compatible storage.

mod datanet;
mod ledger;
mod model;
mod run;
mod settings;

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use openledger_core::ServiceKind;

const ABOUT: &str = "OpenLedger: pay people for the data that makes AI outputs good.";

const LONG_ABOUT: &str = "OpenLedger: pay people for the data that makes AI outputs good.

Start here:   openledger dev
              (all five services in one process; state in ./.openledger; REST on http://127.0.0.1:8080)

In a cluster: openledger serve ledger
              (with DATABASE_URL=postgres://…, NATS_URL=nats://…, OBJECT_STORE_URL=s3://…)

Every setting can come from a flag, an environment variable or a YAML file (--config);
flags win over the environment, which wins over the file. `openledger config print` shows
the effective settings and where each one came from.";

#[derive(Parser)]
#[command(name = "openledger", version, about = ABOUT, long_about = LONG_ABOUT, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    settings: SettingFlags,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole platform in one process (SQLite, local files, in-process bus)
    Dev,
    /// Run one or more services in this process, e.g. `serve ledger datanet-ingest`
    Serve {
        /// Services to run: ledger, datanet-ingest, attribution-worker, model-factory, inference-gateway
        #[arg(required = true, value_parser = parse_service)]
        services: Vec<ServiceKind>,
    },
    /// Inspect the configuration
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Ledger: balances, transfers, history, journal verification
    #[command(subcommand)]
    Ledger(ledger::LedgerCommand),
    /// Datanets: create, contribute files, review, publish versions, proofs, access grants
    #[command(subcommand)]
    Datanet(datanet::DatanetCommand),
    /// Models: inspect one, generate text with it and LoRA adapters on this machine
    #[command(subcommand)]
    Model(model::ModelCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration as YAML, with where each value came from
    Print,
}

fn parse_service(text: &str) -> Result<ServiceKind, String> {
    text.parse()
}

/// Flags for every setting; each also reads its environment variable (see `settings.rs`).
#[derive(Args)]
struct SettingFlags {
    /// YAML file with settings (lowest precedence) [env: OPENLEDGER_CONFIG]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of the embedded database and object store [env: OPENLEDGER_DATA_DIR] [default: .openledger]
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<String>,
    /// sqlite://PATH or postgres://USER@HOST:PORT/DB [env: DATABASE_URL] [default: SQLite in the data dir]
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    /// nats://HOST:PORT for JetStream [env: NATS_URL] [default: in-process bus]
    #[arg(long, global = true, value_name = "URL")]
    nats_url: Option<String>,
    /// file:///DIR, s3://BUCKET[/PREFIX] or memory:// [env: OBJECT_STORE_URL] [default: DATA_DIR/objects]
    #[arg(long, global = true, value_name = "URL")]
    object_store_url: Option<String>,
    /// gRPC URL of the ledger, for services and commands that call it [env: OPENLEDGER_LEDGER_URL] [default: this process, else the local ledger port]
    #[arg(long, global = true, value_name = "URL")]
    ledger_url: Option<String>,
    /// gRPC URL of datanet-ingest, for the gateway and `datanet` commands [env: OPENLEDGER_DATANET_URL] [default: this process, else the local datanet-ingest port]
    #[arg(long, global = true, value_name = "URL")]
    datanet_url: Option<String>,
    /// Address every listener binds to [env: OPENLEDGER_LISTEN_HOST] [default: 127.0.0.1]
    #[arg(long, global = true, value_name = "IP")]
    listen_host: Option<String>,
    /// Port of the public REST API [env: OPENLEDGER_HTTP_PORT] [default: 8080]
    #[arg(long, global = true, value_name = "PORT")]
    http_port: Option<String>,
    /// gRPC port of the ledger; the other services use the next ports, 0 picks free ones [env: OPENLEDGER_GRPC_BASE_PORT] [default: 50051]
    #[arg(long, global = true, value_name = "PORT")]
    grpc_base_port: Option<String>,
    /// Health/metrics port of the ledger; the others use the next ports, 0 picks free ones [env: OPENLEDGER_OPS_BASE_PORT] [default: 9091]
    #[arg(long, global = true, value_name = "PORT")]
    ops_base_port: Option<String>,
    /// pretty or json [env: OPENLEDGER_LOG_FORMAT] [default: pretty]
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Log filter, e.g. info or openledger=debug,info (RUST_LOG overrides) [env: OPENLEDGER_LOG_LEVEL] [default: info]
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    /// Largest REST request body in bytes [env: OPENLEDGER_MAX_BODY_BYTES] [default: 10485760]
    #[arg(long, global = true, value_name = "BYTES")]
    max_body_bytes: Option<String>,
    /// REST request timeout [env: OPENLEDGER_REQUEST_TIMEOUT_MS] [default: 30000]
    #[arg(long, global = true, value_name = "MS")]
    request_timeout_ms: Option<String>,
    /// Time to drain in-flight work and flush the outbox on shutdown [env: OPENLEDGER_SHUTDOWN_TIMEOUT_MS] [default: 20000]
    #[arg(long, global = true, value_name = "MS")]
    shutdown_timeout_ms: Option<String>,
    /// JetStream stream name [env: OPENLEDGER_BUS_STREAM] [default: OPENLEDGER]
    #[arg(long, global = true, value_name = "NAME")]
    bus_stream: Option<String>,
    /// Root token of every event subject [env: OPENLEDGER_BUS_SUBJECT_PREFIX] [default: ol]
    #[arg(long, global = true, value_name = "TOKEN")]
    bus_subject_prefix: Option<String>,
    /// Window in which a repeated event id is dropped [env: OPENLEDGER_BUS_DUPLICATE_WINDOW_MS] [default: 120000]
    #[arg(long, global = true, value_name = "MS")]
    bus_duplicate_window_ms: Option<String>,
    /// How genesis splits the 1,000,000,000 OPEN, used at the ledger's first start [env: OPENLEDGER_GENESIS_ALLOCATIONS] [default: community=5171,investors=1829,team=1500,ecosystem=1000,liquidity=500]
    #[arg(long, global = true, value_name = "NAME=BPS,…")]
    genesis_allocations: Option<String>,
}

impl SettingFlags {
    fn values(&self) -> BTreeMap<&'static str, String> {
        let pairs = [
            ("data_dir", &self.data_dir),
            ("database_url", &self.database_url),
            ("nats_url", &self.nats_url),
            ("object_store_url", &self.object_store_url),
            ("ledger_url", &self.ledger_url),
            ("datanet_url", &self.datanet_url),
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
            ("genesis_allocations", &self.genesis_allocations),
        ];
        debug_assert_eq!(pairs.len(), settings::SETTINGS.len());
        pairs.into_iter().filter_map(|(key, value)| value.clone().map(|value| (key, value))).collect()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_file = cli.settings.config.clone().or_else(|| std::env::var_os("OPENLEDGER_CONFIG").map(PathBuf::from));
    let env = |name: &str| std::env::var(name).ok();
    let resolved = match settings::resolve(&cli.settings.values(), &env, config_file.as_deref()) {
        Ok(resolved) => resolved,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Config(ConfigCommand::Print) => {
            print!("{}", settings::print_yaml(&resolved));
            ExitCode::SUCCESS
        }
        Command::Ledger(command) => client_command(ledger::run(command, &resolved.config)),
        Command::Datanet(command) => client_command(datanet::run(command, &resolved.config)),
        Command::Model(command) => client_command(model::run(command)),
        Command::Dev => run::run(resolved.config, ServiceKind::ALL.to_vec(), true),
        Command::Serve { mut services } => {
            services.sort();
            services.dedup();
            run::run(resolved.config, services, false)
        }
    }
}

/// Runs a client command: success, a check that failed (`Ok(false)`), or an error.
fn client_command(command: impl Future<Output = anyhow::Result<bool>>) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    match runtime.block_on(command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
