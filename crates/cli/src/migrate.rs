//! `openledger migrate`: the schema migrations alone (the Helm chart's hook Job runs it before
//! the services start, so no service migrates under traffic).

use std::process::ExitCode;

use openledger_core::Config;

/// `openledger migrate`: applies every pending schema migration to the configured database
/// (the Helm chart's pre-install and pre-upgrade hook), then exits.
pub fn migrate(config: &Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let url = config.effective_database_url();
    let shown = openledger_core::redact_url(&url);
    runtime.block_on(async {
        let outcome = async {
            let db = openledger_store::connect(&url).await?;
            let pending = openledger_store::pending_migrations(&db).await?;
            openledger_store::migrate(&db).await?;
            Ok::<_, openledger_store::StoreError>(pending)
        };
        match outcome.await {
            Ok(pending) => {
                println!("{shown}: {pending} migrations applied, the schema is current");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: migrating {shown} failed: {error}");
                ExitCode::FAILURE
            }
        }
    })
}
