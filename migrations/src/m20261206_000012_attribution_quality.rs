//! The attribution-worker's contributor quality: where a gradient index's adapter came from
//! (`attribution_indexes.source`: the object store keys and file hashes its registration
//! named), and one row per Datanet version whose contributor quality was assessed
//! (`attribution_quality`), written with its `ol.attribution.quality.assessed` event so the
//! event goes out once per version.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AttributionIndexes {
    Table,
    Source,
}

#[derive(DeriveIden)]
enum AttributionQuality {
    Table,
    SnapshotId,
    DatanetId,
    AdapterId,
    Estimator,
    Threshold,
    Contributions,
    Candidates,
    Report,
    AssessedAtMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(AttributionIndexes::Table)
                    .add_column(ColumnDef::new(AttributionIndexes::Source).text().not_null().default(""))
                    .to_owned(),
            )
            .await?;
        use AttributionQuality as Q;
        manager
            .create_table(
                Table::create()
                    .table(Q::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Q::SnapshotId).string_len(128).not_null().primary_key())
                    .col(ColumnDef::new(Q::DatanetId).text().not_null())
                    .col(ColumnDef::new(Q::AdapterId).text().not_null())
                    .col(ColumnDef::new(Q::Estimator).string_len(32).not_null())
                    .col(ColumnDef::new(Q::Threshold).double().not_null())
                    .col(ColumnDef::new(Q::Contributions).big_integer().not_null())
                    .col(ColumnDef::new(Q::Candidates).big_integer().not_null())
                    .col(ColumnDef::new(Q::Report).text().not_null())
                    .col(ColumnDef::new(Q::AssessedAtMs).big_integer().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(AttributionQuality::Table).if_exists().to_owned()).await?;
        manager
            .alter_table(
                Table::alter().table(AttributionIndexes::Table).drop_column(AttributionIndexes::Source).to_owned(),
            )
            .await
    }
}
