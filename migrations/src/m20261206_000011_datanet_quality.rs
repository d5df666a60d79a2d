//! Datanet bonds held until quality is known: why a decided bond is released or slashed when
//! that is not the contribution's own reason (`datanet_contributions.bond_reason`), an index
//! for the bonds whose quality was never assessed in time, and the evidence of every bond
//! slashed for harmful data (`datanet_bond_slashes`, one row per contribution).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum DatanetContributions {
    Table,
    BondState,
    DecidedAt,
    BondReason,
}

#[derive(DeriveIden)]
enum DatanetBondSlashes {
    Table,
    ContributionId,
    DatanetId,
    SnapshotId,
    AdapterId,
    Estimator,
    Score,
    Threshold,
    Evidence,
    EventId,
    At,
}

const UNASSESSED_INDEX: &str = "datanet_contributions_by_bond_state_decided";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(DatanetContributions::Table)
                    .add_column(ColumnDef::new(DatanetContributions::BondReason).text().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name(UNASSESSED_INDEX)
                    .table(DatanetContributions::Table)
                    .col(DatanetContributions::BondState)
                    .col(DatanetContributions::DecidedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(DatanetBondSlashes::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(DatanetBondSlashes::ContributionId).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(DatanetBondSlashes::DatanetId).string_len(64).not_null())
                    .col(ColumnDef::new(DatanetBondSlashes::SnapshotId).string_len(64).not_null())
                    .col(ColumnDef::new(DatanetBondSlashes::AdapterId).text().not_null())
                    .col(ColumnDef::new(DatanetBondSlashes::Estimator).text().not_null())
                    .col(ColumnDef::new(DatanetBondSlashes::Score).double().not_null())
                    .col(ColumnDef::new(DatanetBondSlashes::Threshold).double().not_null())
                    .col(ColumnDef::new(DatanetBondSlashes::Evidence).text().not_null())
                    .col(ColumnDef::new(DatanetBondSlashes::EventId).text().not_null())
                    .col(ColumnDef::new(DatanetBondSlashes::At).big_integer().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(DatanetBondSlashes::Table).if_exists().to_owned()).await?;
        manager.drop_index(Index::drop().name(UNASSESSED_INDEX).table(DatanetContributions::Table).to_owned()).await?;
        manager
            .alter_table(
                Table::alter()
                    .table(DatanetContributions::Table)
                    .drop_column(DatanetContributions::BondReason)
                    .to_owned(),
            )
            .await
    }
}
