//! Fine-tuning jobs of model-factory: one row per job (its request, resolved hyper-parameters,
//! state, progress and outcome), its events (oldest first by sequence) and its checkpoints.
//! Also who read a Datanet version for training when a platform service read it for a grantee
//! (`datanet_reads.reader`, e.g. `job:<id>`).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ModelfactoryJobs {
    Table,
    Id,
    OwnerAccount,
    IdempotencyKey,
    State,
    BaseModel,
    TrainingFile,
    ValidationFile,
    DatanetId,
    SnapshotId,
    DatanetVersion,
    SnapshotRoot,
    GrantId,
    Request,
    Config,
    Suffix,
    Seed,
    Metadata,
    FineTunedModel,
    TrainedTokens,
    Step,
    TotalSteps,
    TrainingRecords,
    EstimatedFinishMs,
    ErrorCode,
    ErrorMessage,
    ErrorParam,
    FinalMetrics,
    Executor,
    CreatedAtMs,
    StartedAtMs,
    FinishedAtMs,
    UpdatedAtMs,
}

#[derive(DeriveIden)]
enum ModelfactoryJobEvents {
    Table,
    JobId,
    Sequence,
    AtMs,
    Level,
    Message,
    Kind,
    Data,
}

#[derive(DeriveIden)]
enum ModelfactoryJobCheckpoints {
    Table,
    JobId,
    Step,
    AtMs,
    TrainLoss,
    Eval,
}

#[derive(DeriveIden)]
enum DatanetReads {
    Table,
    Reader,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use ModelfactoryJobs as J;
        manager
            .create_table(
                Table::create()
                    .table(J::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(J::Id).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(J::OwnerAccount).string_len(40).not_null())
                    // Null without a key: a unique index allows many nulls on both backends.
                    .col(ColumnDef::new(J::IdempotencyKey).string_len(256).null())
                    .col(ColumnDef::new(J::State).small_integer().not_null())
                    .col(ColumnDef::new(J::BaseModel).text().not_null())
                    .col(ColumnDef::new(J::TrainingFile).text().not_null())
                    .col(ColumnDef::new(J::ValidationFile).text().not_null())
                    .col(ColumnDef::new(J::DatanetId).text().not_null())
                    .col(ColumnDef::new(J::SnapshotId).text().not_null())
                    .col(ColumnDef::new(J::DatanetVersion).big_integer().not_null())
                    .col(ColumnDef::new(J::SnapshotRoot).binary().not_null())
                    .col(ColumnDef::new(J::GrantId).text().not_null())
                    .col(ColumnDef::new(J::Request).binary().not_null())
                    .col(ColumnDef::new(J::Config).text().not_null())
                    .col(ColumnDef::new(J::Suffix).text().not_null())
                    .col(ColumnDef::new(J::Seed).string_len(20).not_null())
                    .col(ColumnDef::new(J::Metadata).text().not_null())
                    .col(ColumnDef::new(J::FineTunedModel).text().not_null())
                    .col(ColumnDef::new(J::TrainedTokens).big_integer().not_null())
                    .col(ColumnDef::new(J::Step).big_integer().not_null())
                    .col(ColumnDef::new(J::TotalSteps).big_integer().not_null())
                    .col(ColumnDef::new(J::TrainingRecords).big_integer().not_null())
                    .col(ColumnDef::new(J::EstimatedFinishMs).big_integer().null())
                    .col(ColumnDef::new(J::ErrorCode).text().not_null())
                    .col(ColumnDef::new(J::ErrorMessage).text().not_null())
                    .col(ColumnDef::new(J::ErrorParam).text().not_null())
                    .col(ColumnDef::new(J::FinalMetrics).binary().not_null())
                    .col(ColumnDef::new(J::Executor).text().not_null())
                    .col(ColumnDef::new(J::CreatedAtMs).big_integer().not_null())
                    .col(ColumnDef::new(J::StartedAtMs).big_integer().null())
                    .col(ColumnDef::new(J::FinishedAtMs).big_integer().null())
                    .col(ColumnDef::new(J::UpdatedAtMs).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("modelfactory_jobs_by_owner")
                    .table(J::Table)
                    .col(J::OwnerAccount)
                    .col(J::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("modelfactory_jobs_idempotency")
                    .table(J::Table)
                    .col(J::OwnerAccount)
                    .col(J::IdempotencyKey)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("modelfactory_jobs_by_state")
                    .table(J::Table)
                    .col(J::State)
                    .col(J::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        use ModelfactoryJobEvents as E;
        manager
            .create_table(
                Table::create()
                    .table(E::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(E::JobId).string_len(64).not_null())
                    .col(ColumnDef::new(E::Sequence).big_integer().not_null())
                    .col(ColumnDef::new(E::AtMs).big_integer().not_null())
                    .col(ColumnDef::new(E::Level).string_len(8).not_null())
                    .col(ColumnDef::new(E::Message).text().not_null())
                    .col(ColumnDef::new(E::Kind).small_integer().not_null())
                    .col(ColumnDef::new(E::Data).binary().not_null())
                    .primary_key(Index::create().col(E::JobId).col(E::Sequence))
                    .to_owned(),
            )
            .await?;
        use ModelfactoryJobCheckpoints as C;
        manager
            .create_table(
                Table::create()
                    .table(C::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(C::JobId).string_len(64).not_null())
                    .col(ColumnDef::new(C::Step).big_integer().not_null())
                    .col(ColumnDef::new(C::AtMs).big_integer().not_null())
                    .col(ColumnDef::new(C::TrainLoss).double().not_null())
                    .col(ColumnDef::new(C::Eval).binary().not_null())
                    .primary_key(Index::create().col(C::JobId).col(C::Step))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(DatanetReads::Table)
                    .add_column(ColumnDef::new(DatanetReads::Reader).text().not_null().default(""))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(DatanetReads::Table).drop_column(DatanetReads::Reader).to_owned())
            .await?;
        for table in [
            ModelfactoryJobCheckpoints::Table.into_iden(),
            ModelfactoryJobEvents::Table.into_iden(),
            ModelfactoryJobs::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
