//! Database migrations for every service, one module per schema, applied at start by
//! `openledger-store`. The same migrations run on SQLite (embedded) and PostgreSQL (cluster);
//! they are written with sea-query so that each backend gets its own dialect.

pub use sea_orm_migration::prelude::*;

mod m20261124_000001_platform;
mod m20261124_000002_ledger;
mod m20261124_000003_ledger_codes;
mod m20261124_000004_governance;
mod m20261125_000005_datanet;
mod m20261205_000006_modelfactory;
mod m20261205_000007_gateway;
mod m20261206_000008_finetune;
mod m20261206_000010_attribution;
mod m20261206_000011_datanet_quality;
mod m20261206_000012_attribution_quality;
mod m20261206_000013_finetune_validation;
mod m20261206_000014_ledger_earnings;

/// Applies every schema in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_platform::Migration),
            Box::new(m20261124_000002_ledger::Migration),
            Box::new(m20261124_000003_ledger_codes::Migration),
            Box::new(m20261124_000004_governance::Migration),
            Box::new(m20261125_000005_datanet::Migration),
            Box::new(m20261205_000006_modelfactory::Migration),
            Box::new(m20261205_000007_gateway::Migration),
            Box::new(m20261206_000008_finetune::Migration),
            Box::new(m20261206_000010_attribution::Migration),
            Box::new(m20261206_000011_datanet_quality::Migration),
            Box::new(m20261206_000012_attribution_quality::Migration),
            Box::new(m20261206_000013_finetune_validation::Migration),
            Box::new(m20261206_000014_ledger_earnings::Migration),
        ]
    }
}
