//! `openledger`: the whole platform in one binary. `dev` runs all five services in one
//! process on SQLite, the local file system and an in-process bus; `serve` runs chosen
//! services against PostgreSQL, NATS JetStream and S3-compatible storage.

mod attribution;
mod datanet;
mod engine;
mod finetune;
mod flags;
mod index_job;
mod ledger;
mod migrate;
mod model;
mod operator;
mod run;
mod settings;
mod train_job;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use flags::SettingFlags;
use openledger_core::ServiceKind;
use openledger_runtime::clients::ServiceChannel;

const ABOUT: &str = "OpenLedger: pay people for the data that makes AI outputs good.";

const LONG_ABOUT: &str = "OpenLedger: pay people for the data that makes AI outputs good.

Start here:   openledger dev
              (all five services in one process; state in ./.openledger; REST on http://127.0.0.1:8080)

In a cluster: openledger serve ledger
              (with DATABASE_URL=postgres://…, NATS_URL=nats://…, OBJECT_STORE_URL=s3://…)

Every setting can come from a flag, an environment variable or a YAML file (--config);
flags win over the environment, which wins over the file. Setting flags go before the
command, or after it where its help lists them. `openledger config print` shows
the effective settings and where each one came from.";

#[derive(Parser)]
#[command(name = "openledger", version, about = ABOUT, long_about = LONG_ABOUT, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Settings given before the command.
    #[command(flatten)]
    settings: flags::AllFlags,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole platform in one process (SQLite, local files, in-process bus)
    Dev {
        #[command(flatten)]
        settings: flags::AllFlags,
    },
    /// Run one or more services in this process, e.g. `serve ledger datanet-ingest`
    Serve {
        /// Services to run: ledger, datanet-ingest, attribution-worker, model-factory, inference-gateway
        #[arg(required = true, value_parser = parse_service)]
        services: Vec<ServiceKind>,
        #[command(flatten)]
        settings: flags::AllFlags,
    },
    /// Run one OpenLoRA engine replica (cluster mode): gRPC on --engine-port, health and metrics on --ops-base-port
    Engine {
        #[command(flatten)]
        settings: flags::AllFlags,
    },
    /// Inspect the configuration
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Ledger: balances, transfers, history, journal verification
    #[command(subcommand)]
    Ledger(ledger::LedgerCommand),
    /// Datanets: create, contribute files, review, publish versions, proofs, access grants
    Datanet {
        #[command(subcommand)]
        command: datanet::DatanetCommand,
        #[command(flatten)]
        settings: flags::DatanetUrlFlags,
    },
    /// Models: inspect one, generate text with it and LoRA adapters on this machine
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Fine-tuning jobs on the platform (through the REST edge, with an API key): create, list, follow, cancel
    Finetune {
        #[command(subcommand)]
        command: finetune::FinetuneCommand,
        #[command(flatten)]
        edge: finetune::EdgeFlags,
    },
    /// Proof of Attribution on an exported Datanet version: indexes, trace, score, quality
    #[command(subcommand)]
    Attribution(attribution::AttributionCommand),
    /// The Kubernetes operator and its CRDs
    #[command(subcommand)]
    Operator(operator::OperatorCommand),
    /// Build one shard of an attribution index into the data directory (the entrypoint of an AttributionJob's pods)
    IndexJob {
        #[command(flatten)]
        job: index_job::IndexJobArgs,
        #[command(flatten)]
        settings: flags::AllFlags,
    },
    /// Apply every pending database migration, then exit (the Helm chart's hook Job)
    Migrate {
        #[command(flatten)]
        settings: flags::AllFlags,
    },
    /// Train one fine-tuning job in this process, then exit (the entrypoint of the pods the operator runs for a LoraJob)
    TrainJob {
        /// The model-factory job (ftjob-…)
        job_id: String,
        #[command(flatten)]
        settings: flags::AllFlags,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration as YAML, with where each value came from
    Print {
        #[command(flatten)]
        settings: flags::AllFlags,
    },
}

impl Command {
    /// The setting flags given after the command.
    fn settings(&self) -> Option<&dyn SettingFlags> {
        match self {
            Self::Dev { settings }
            | Self::Serve { settings, .. }
            | Self::Engine { settings }
            | Self::IndexJob { settings, .. }
            | Self::TrainJob { settings, .. }
            | Self::Config(ConfigCommand::Print { settings })
            | Self::Migrate { settings } => Some(settings),
            Self::Operator(operator::OperatorCommand::Run { settings, .. }) => Some(settings.as_ref()),
            Self::Ledger(command) => command.settings(),
            Self::Datanet { settings, .. } => Some(settings),
            Self::Model(_) | Self::Attribution(_) | Self::Finetune { .. } | Self::Operator(_) => None,
        }
    }
}

fn parse_service(text: &str) -> Result<ServiceKind, String> {
    text.parse()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (flags, config_file) = flags::merged(&cli.settings, cli.command.settings());
    let config_file = config_file.or_else(|| std::env::var_os("OPENLEDGER_CONFIG").map(PathBuf::from));
    let env = |name: &str| std::env::var(name).ok();
    let resolved = match settings::resolve(&flags, &env, config_file.as_deref()) {
        Ok(resolved) => resolved,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Config(ConfigCommand::Print { .. }) => {
            print!("{}", settings::print_yaml(&resolved));
            ExitCode::SUCCESS
        }
        Command::Ledger(command) => client_command(ledger::run(command, &resolved.config)),
        Command::Datanet { command, .. } => client_command(datanet::run(command, &resolved.config)),
        Command::Model(command) => client_command(model::run(command)),
        Command::Finetune { command, edge } => client_command(finetune::run(command, edge, &resolved.config)),
        Command::Attribution(command) => client_command(attribution::run(command, &resolved.config)),
        Command::Operator(operator::OperatorCommand::Crdgen { dir, check }) => operator::crdgen(dir, check),
        Command::Operator(operator::OperatorCommand::Run { namespace, ops_port, .. }) => {
            let namespace = namespace.or_else(|| Some(resolved.config.kubernetes_namespace.clone()));
            operator::run(resolved.config, namespace, ops_port)
        }
        Command::Migrate { .. } => migrate::migrate(&resolved.config),
        Command::Dev { .. } => run::run(resolved.config, ServiceKind::ALL.to_vec(), true),
        Command::Engine { .. } => engine::run(resolved.config),
        Command::IndexJob { job, .. } => index_job::run(job, resolved.config),
        Command::TrainJob { job_id, .. } => train_job::run(resolved.config, job_id),
        Command::Serve { mut services, .. } => {
            services.sort();
            services.dedup();
            run::run(resolved.config, services, false)
        }
    }
}

/// A channel to `service` at `url`, else where the runtime's `ServiceChannel` finds it for
/// services (`listen_host` at the service's gRPC port). It connects on first use.
pub(crate) fn service_channel(
    service: ServiceKind,
    url: Option<String>,
    config: &openledger_core::Config,
) -> anyhow::Result<tonic::transport::Channel> {
    ServiceChannel::new(service, url, config, openledger_runtime::Endpoints::default())
        .channel()
        .map_err(|status| anyhow::anyhow!("cannot reach {service}: {}", status.message()))
}

/// A client command's error, with what to do when it is that `service` cannot be reached at
/// `url` (resolved like [`service_channel`]; `flag` and `env` name its address).
pub(crate) fn unreachable(
    service: ServiceKind,
    url: Option<String>,
    config: &openledger_core::Config,
    [flag, env]: [&str; 2],
    error: anyhow::Error,
) -> anyhow::Error {
    let Some(status) = error.downcast_ref::<tonic::Status>().filter(|s| s.code() == tonic::Code::Unavailable) else {
        return error;
    };
    let mut cause: &dyn std::error::Error = status;
    while let Some(source) = cause.source() {
        cause = source;
    }
    let cause = if std::ptr::addr_eq(cause, status) { status.message().to_owned() } else { cause.to_string() };
    let at = ServiceChannel::new(service, url, config, openledger_runtime::Endpoints::default())
        .url()
        .map_or_else(|_| String::new(), |url| format!(" at {url}"));
    anyhow::anyhow!("cannot reach {service}{at} ({cause}): is `openledger dev` running? Name it with {flag} or {env}")
}

/// Runs a client command: success, a check that failed (`Ok(false)`), or an error.
fn client_command(command: impl Future<Output = anyhow::Result<bool>>) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    match runtime.block_on(command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            // A service's refusal reads as its message and code, not as tonic's debug text.
            match error.downcast_ref::<tonic::Status>().filter(|_| error.chain().count() == 1) {
                Some(status) => {
                    eprintln!("error: {} ({})", status.message(), openledger_runtime::grpc::error_code_of(status))
                }
                None => eprintln!("error: {error:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The help text clap prints for `args … --help`.
    fn help(args: &[&str]) -> String {
        let line = [&["openledger"], args, &["--help"]].concat();
        match Cli::try_parse_from(line) {
            Err(error) if error.kind() == clap::error::ErrorKind::DisplayHelp => error.to_string(),
            Err(error) => panic!("{args:?}: {error}"),
            Ok(_) => panic!("{args:?}: --help did not print help"),
        }
    }

    fn flag_values(args: &[&str]) -> flags::FlagValues {
        let cli = Cli::try_parse_from([&["openledger"], args].concat()).expect("parses");
        flags::merged(&cli.settings, cli.command.settings()).0
    }

    const SERVICE_SETTINGS: [&str; 8] = [
        "--http-port",
        "--grpc-base-port",
        "--ops-base-port",
        "--database-url",
        "--data-dir",
        "--nats-url",
        "--object-store-url",
        "--listen-host",
    ];

    #[test]
    fn the_command_line_is_well_formed() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn finetune_help_lists_its_own_options_and_no_service_setting() {
        let text = help(&["model", "finetune"]);
        let position = |flag: &str| text.find(flag).unwrap_or_else(|| panic!("{flag} missing from:\n{text}"));
        assert!(position("--base") < position("--epochs") && position("--epochs") < position("--lr"), "{text}");
        for setting in SERVICE_SETTINGS.iter().chain(&["--ledger-url", "--datanet-url", "--config", "Settings:"]) {
            assert!(!text.contains(setting), "model finetune --help lists {setting}:\n{text}");
        }
    }

    #[test]
    fn finetune_create_help_lists_its_options_and_the_edge_but_no_service_setting() {
        let text = help(&["finetune", "create"]);
        for option in [
            "--model",
            "--training-file",
            "--validation-file",
            "--suffix",
            "--seed",
            "--n-epochs",
            "--batch-size",
            "--learning-rate-multiplier",
            "--rank",
            "--alpha",
            "--targets",
            "--max-steps",
            "--checkpoint-every",
            "--eval-split",
            "--batch-tokens",
            "--grant",
            "--metadata",
            "--follow",
            "--url",
            "--api-key",
        ] {
            assert!(text.contains(option), "finetune create --help misses {option}:\n{text}");
        }
        for setting in SERVICE_SETTINGS.iter().chain(&["--ledger-url", "--datanet-url", "Settings:"]) {
            assert!(!text.contains(setting), "finetune create --help lists {setting}:\n{text}");
        }
    }

    #[test]
    fn finetune_commands_parse_their_ids_and_flags_anywhere_after_finetune() {
        let cli =
            Cli::try_parse_from(["openledger", "finetune", "--api-key", "olk_x", "events", "ftjob-1", "--follow"])
                .expect("parses");
        let Command::Finetune { command: finetune::FinetuneCommand::Events { id, follow, .. }, .. } = cli.command
        else {
            panic!("not finetune events");
        };
        assert_eq!((id.as_str(), follow), ("ftjob-1", true));
        let cli = Cli::try_parse_from([
            "openledger",
            "finetune",
            "create",
            "--model",
            "m",
            "--training-file",
            "datanet:a@1",
            "--metadata",
            "a=1",
            "--metadata",
            "b=2",
            "--targets",
            "q_proj,v_proj",
            "--url",
            "http://edge:8080",
        ]);
        assert!(cli.is_ok(), "create parses");
        assert!(
            Cli::try_parse_from(["openledger", "finetune", "create", "--model", "m"]).is_err(),
            "needs a training file"
        );
        assert!(Cli::try_parse_from(["openledger", "finetune", "events", "x", "--follow", "--json"]).is_err());
    }

    #[test]
    fn an_unreachable_service_is_named_with_its_address_and_how_to_change_it() {
        let config = openledger_core::Config::default();
        let refused = anyhow::Error::new(tonic::Status::unavailable("connection refused"));
        let url = Some("http://127.0.0.1:1".to_owned());
        let flags = ["--ledger-url", "OPENLEDGER_LEDGER_URL"];
        let message = unreachable(ServiceKind::Ledger, url, &config, flags, refused).to_string();
        assert!(message.starts_with("cannot reach ledger at http://127.0.0.1:1 ("), "{message}");
        assert!(message.contains("--ledger-url or OPENLEDGER_LEDGER_URL"), "{message}");
        let other = anyhow::Error::new(tonic::Status::not_found("no account 7"));
        let message = unreachable(ServiceKind::Ledger, None, &config, flags, other).to_string();
        assert!(!message.contains("cannot reach"), "only unavailability is explained: {message}");
    }

    #[test]
    fn client_commands_list_their_options_then_only_the_service_url_they_call() {
        for (args, own, url) in [
            (&["ledger", "balance"][..], "--at", "--ledger-url"),
            (&["ledger", "stake"][..], "--operation-id", "--ledger-url"),
            (&["datanet", "show"][..], "--key-file", "--datanet-url"),
        ] {
            let text = help(args);
            let settings = text.find("Settings:").unwrap_or_else(|| panic!("{args:?}: no Settings heading:\n{text}"));
            assert!(text.find(own).is_some_and(|at| at < settings), "{args:?}:\n{text}");
            assert!(text.find(url).is_some_and(|at| at > settings), "{args:?}:\n{text}");
            for setting in SERVICE_SETTINGS {
                assert!(!text.contains(setting), "{args:?} --help lists {setting}:\n{text}");
            }
        }
        let text = help(&["ledger", "verify"]);
        assert!(text.contains("--database-url") && !text.contains("--ledger-url"), "{text}");
    }

    #[test]
    fn service_commands_list_every_setting() {
        let text = help(&["dev"]);
        for setting in SERVICE_SETTINGS.iter().chain(&["--ledger-url", "--genesis-allocations"]) {
            assert!(text.contains(setting), "dev --help misses {setting}:\n{text}");
        }
    }

    #[test]
    fn every_setting_has_a_flag_before_the_command_and_on_service_commands() {
        for setting in settings::SETTINGS {
            for args in [&[setting.flag, "x", "dev"][..], &["dev", setting.flag, "x"]] {
                assert_eq!(flag_values(args).get(setting.key).map(String::as_str), Some("x"), "{args:?}");
            }
        }
    }

    #[test]
    fn settings_are_accepted_before_the_command_and_after_it() {
        let values =
            flag_values(&["--data-dir", "d", "--ledger-url", "a", "ledger", "balance", "1", "--ledger-url", "b"]);
        assert_eq!((values["data_dir"].as_str(), values["ledger_url"].as_str()), ("d", "b"), "the later flag wins");
        let values = flag_values(&["ledger", "export", "--data-dir", "d"]);
        assert_eq!(values["data_dir"], "d");
        for args in
            [&["datanet", "--datanet-url", "u", "show", "x"][..], &["datanet", "show", "x", "--datanet-url", "u"]]
        {
            assert_eq!(flag_values(args)["datanet_url"], "u", "{args:?}");
        }
        assert_eq!(flag_values(&["dev", "--http-port", "9"])["http_port"], "9");
        assert_eq!(flag_values(&["--http-port", "9", "serve", "ledger"])["http_port"], "9");
        assert!(Cli::try_parse_from(["openledger", "model", "info", "m", "--http-port", "9"]).is_err());
    }
}
