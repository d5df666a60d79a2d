//! `openledger index-job`: the container command of an `AttributionJob`'s pods. It builds one
//! shard of an attribution index into the data directory (the claim shared with the
//! attribution-worker) and exits 0, or 1 with the reason on stderr; the worker follows the
//! resource and takes the files from there.

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use openledger_core::Config;
use openledger_operator::crd::IndexKind;

#[derive(Args)]
pub struct IndexJobArgs {
    /// Which index: the span index of a sealed version, or the gradient index of an adapter
    #[arg(value_enum)]
    index: Index,
    /// The snapshot id (span) or the adapter id (gradient)
    target: String,
    /// Shards of the index; this pod builds shard $JOB_COMPLETION_INDEX (0 when unset)
    #[arg(long, default_value_t = 1)]
    shards: u32,
}

#[derive(Clone, Copy, ValueEnum)]
enum Index {
    Span,
    Gradient,
}

/// The shard an Indexed Job's pod builds.
const COMPLETION_INDEX: &str = "JOB_COMPLETION_INDEX";

pub fn run(args: IndexJobArgs, config: Config) -> ExitCode {
    let shard = match std::env::var(COMPLETION_INDEX) {
        Err(_) => 0,
        Ok(text) => match text.parse::<u32>() {
            Ok(shard) => shard,
            Err(_) => {
                eprintln!("error: {COMPLETION_INDEX}={text:?} is not a shard number");
                return ExitCode::from(2);
            }
        },
    };
    let kind = match args.index {
        Index::Span => IndexKind::Span,
        Index::Gradient => IndexKind::Gradient,
    };
    crate::run::with_runtime(&config.clone(), "openledger-index-job", |_shutdown| async move {
        let built =
            openledger_attribution_worker::build_index_shard(&config, kind, &args.target, shard, args.shards).await;
        match built {
            Ok(built) => {
                println!(
                    "{} index of {}: shard {shard} of {} written ({} records, files {})",
                    kind.as_str(),
                    args.target,
                    args.shards,
                    built.records,
                    built.files_hash
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {} index of {}: {error} ({})", kind.as_str(), args.target, error.code);
                ExitCode::FAILURE
            }
        }
    })
}
