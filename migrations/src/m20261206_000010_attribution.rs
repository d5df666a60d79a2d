//! The attribution-worker's tables: the indexes it builds (a span index per sealed Datanet
//! version, a gradient index per adapter trained with lineage) and their state; one attribution
//! per paid inference with its canonical receipt; and the receipt batches, each a Merkle tree
//! whose root the ledger's journal records.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AttributionIndexes {
    Table,
    Id,
    Kind,
    DatanetId,
    SnapshotId,
    SnapshotRoot,
    Version,
    AdapterId,
    State,
    RecordsIndexed,
    Location,
    FilesHash,
    Error,
    CreatedAtMs,
    UpdatedAtMs,
}

#[derive(DeriveIden)]
enum Attributions {
    Table,
    InferenceId,
    AdapterId,
    DatanetId,
    SnapshotId,
    Method,
    MethodVersion,
    Weights,
    Explained,
    Notes,
    SpanCoveragePpm,
    Completeness,
    ModelOwnerAccount,
    AppAccount,
    Inputs,
    Receipt,
    ReceiptHash,
    BatchSequence,
    LeafIndex,
    CreatedAtMs,
}

#[derive(DeriveIden)]
enum AttributionBatches {
    Table,
    Sequence,
    Root,
    Size,
    CreatedAtMs,
    JournalSequence,
    JournalEntryHash,
    RecordedAtMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use AttributionIndexes as I;
        manager
            .create_table(
                Table::create()
                    .table(I::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(I::Id).string_len(200).not_null().primary_key())
                    .col(ColumnDef::new(I::Kind).string_len(16).not_null())
                    .col(ColumnDef::new(I::DatanetId).text().not_null())
                    .col(ColumnDef::new(I::SnapshotId).text().not_null())
                    .col(ColumnDef::new(I::SnapshotRoot).binary().not_null())
                    .col(ColumnDef::new(I::Version).big_integer().not_null())
                    .col(ColumnDef::new(I::AdapterId).text().not_null())
                    .col(ColumnDef::new(I::State).string_len(16).not_null())
                    .col(ColumnDef::new(I::RecordsIndexed).big_integer().not_null())
                    .col(ColumnDef::new(I::Location).text().not_null())
                    .col(ColumnDef::new(I::FilesHash).binary().not_null())
                    .col(ColumnDef::new(I::Error).text().not_null())
                    .col(ColumnDef::new(I::CreatedAtMs).big_integer().not_null())
                    .col(ColumnDef::new(I::UpdatedAtMs).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        use Attributions as A;
        manager
            .create_table(
                Table::create()
                    .table(A::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(A::InferenceId).string_len(128).not_null().primary_key())
                    .col(ColumnDef::new(A::AdapterId).text().not_null())
                    .col(ColumnDef::new(A::DatanetId).text().not_null())
                    .col(ColumnDef::new(A::SnapshotId).text().not_null())
                    .col(ColumnDef::new(A::Method).string_len(32).not_null())
                    .col(ColumnDef::new(A::MethodVersion).text().not_null())
                    .col(ColumnDef::new(A::Weights).text().not_null())
                    .col(ColumnDef::new(A::Explained).text().not_null())
                    .col(ColumnDef::new(A::Notes).text().not_null())
                    .col(ColumnDef::new(A::SpanCoveragePpm).big_integer().not_null())
                    .col(ColumnDef::new(A::Completeness).string_len(16).not_null())
                    .col(ColumnDef::new(A::ModelOwnerAccount).string_len(40).not_null())
                    .col(ColumnDef::new(A::AppAccount).string_len(40).not_null())
                    .col(ColumnDef::new(A::Inputs).text().not_null())
                    .col(ColumnDef::new(A::Receipt).binary().not_null())
                    .col(ColumnDef::new(A::ReceiptHash).binary().not_null())
                    .col(ColumnDef::new(A::BatchSequence).big_integer().null())
                    .col(ColumnDef::new(A::LeafIndex).big_integer().null())
                    .col(ColumnDef::new(A::CreatedAtMs).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("attributions_by_batch")
                    .table(A::Table)
                    .col(A::BatchSequence)
                    .col(A::LeafIndex)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        use AttributionBatches as B;
        manager
            .create_table(
                Table::create()
                    .table(B::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(B::Sequence).big_integer().not_null().primary_key())
                    .col(ColumnDef::new(B::Root).binary().not_null())
                    .col(ColumnDef::new(B::Size).big_integer().not_null())
                    .col(ColumnDef::new(B::CreatedAtMs).big_integer().not_null())
                    .col(ColumnDef::new(B::JournalSequence).big_integer().null())
                    .col(ColumnDef::new(B::JournalEntryHash).binary().null())
                    .col(ColumnDef::new(B::RecordedAtMs).big_integer().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            AttributionBatches::Table.into_iden(),
            Attributions::Table.into_iden(),
            AttributionIndexes::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
