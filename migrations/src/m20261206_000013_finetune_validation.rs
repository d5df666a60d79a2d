//! A fine-tuning job's validation version (`validation_file`): the sealed Datanet version its
//! held-out records come from, resolved when the job was created (`modelfactory_jobs.validation`,
//! JSON: Datanet, snapshot, version, Merkle root, grant, record count), empty when the job holds
//! out a share of its training version instead.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ModelfactoryJobs {
    Table,
    Validation,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ModelfactoryJobs::Table)
                    .add_column(ColumnDef::new(ModelfactoryJobs::Validation).text().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter().table(ModelfactoryJobs::Table).drop_column(ModelfactoryJobs::Validation).to_owned(),
            )
            .await
    }
}
