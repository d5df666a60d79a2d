//! `openledger train-job <jobId>`: the entrypoint of the job pods the operator runs for a
//! `LoraJob`. It trains that one model-factory job with the service's own code and settings
//! (`openledger_model_factory::run_job`) and exits: 0 when the job succeeded or was cancelled
//! or paused, 1 when it failed, 75 when it is left running for a next pod (SIGTERM, or a
//! service it needs, the database included, was unreachable), 2 when it cannot run the job at
//! all (unknown job, another executor's): the Job fails at once on 1 and 2 and retries 75.

use std::{process::ExitCode, sync::Arc};

use openledger_core::Config;

pub fn run(config: Config, job_id: String) -> ExitCode {
    let config = Arc::new(config);
    crate::run::with_runtime(&config.clone(), "openledger-train-job", |shutdown| async move {
        match openledger_model_factory::run_job(config, &job_id, shutdown).await {
            Ok(outcome) => {
                tracing::info!(job = %job_id, ?outcome, "train-job ends");
                ExitCode::from(outcome.exit_code())
            }
            Err(error) => {
                tracing::error!(job = %job_id, %error, "train-job could not run the job");
                eprintln!("error: {error}");
                // A database or service away for a moment is worth another pod; the rest is not.
                let retry = openledger_model_factory::JobOutcome::Interrupted.exit_code();
                ExitCode::from(if error.is_transient() { retry } else { 2 })
            }
        }
    })
}
