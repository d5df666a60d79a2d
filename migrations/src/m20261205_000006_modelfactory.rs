//! The adapter registry of model-factory: one row per adapter (its owner, base, files with
//! their hashes, prices, visibility and listing state) and its allow-list, one row per
//! account. A row is `pending` while its files are written to the object store and `ready`
//! once they are there; only ready rows are served.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ModelfactoryAdapters {
    Table,
    Id,
    State,
    Owner,
    OwnerAccount,
    BaseModel,
    BaseModelHash,
    Location,
    Source,
    ConfigHash,
    ConfigBytes,
    WeightsHash,
    WeightsBytes,
    Rank,
    TargetModules,
    PriceIn,
    PriceOut,
    Visibility,
    Description,
    Listed,
    DatanetId,
    SnapshotId,
    SnapshotRoot,
    CreatedAtMs,
    UpdatedAtMs,
}

#[derive(DeriveIden)]
enum ModelfactoryAdapterAccess {
    Table,
    AdapterId,
    Account,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use ModelfactoryAdapters as A;
        manager
            .create_table(
                Table::create()
                    .table(A::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(A::Id).string_len(128).not_null().primary_key())
                    .col(ColumnDef::new(A::State).small_integer().not_null())
                    .col(ColumnDef::new(A::Owner).binary().not_null())
                    .col(ColumnDef::new(A::OwnerAccount).string_len(40).not_null())
                    .col(ColumnDef::new(A::BaseModel).text().not_null())
                    .col(ColumnDef::new(A::BaseModelHash).binary().not_null())
                    .col(ColumnDef::new(A::Location).text().not_null())
                    .col(ColumnDef::new(A::Source).text().not_null())
                    .col(ColumnDef::new(A::ConfigHash).binary().not_null())
                    .col(ColumnDef::new(A::ConfigBytes).big_integer().not_null())
                    .col(ColumnDef::new(A::WeightsHash).binary().not_null())
                    .col(ColumnDef::new(A::WeightsBytes).big_integer().not_null())
                    .col(ColumnDef::new(A::Rank).integer().not_null())
                    .col(ColumnDef::new(A::TargetModules).text().not_null())
                    .col(ColumnDef::new(A::PriceIn).string_len(40).not_null())
                    .col(ColumnDef::new(A::PriceOut).string_len(40).not_null())
                    .col(ColumnDef::new(A::Visibility).small_integer().not_null())
                    .col(ColumnDef::new(A::Description).text().not_null())
                    .col(ColumnDef::new(A::Listed).boolean().not_null())
                    .col(ColumnDef::new(A::DatanetId).text().not_null())
                    .col(ColumnDef::new(A::SnapshotId).text().not_null())
                    .col(ColumnDef::new(A::SnapshotRoot).binary().not_null())
                    .col(ColumnDef::new(A::CreatedAtMs).big_integer().not_null())
                    .col(ColumnDef::new(A::UpdatedAtMs).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("modelfactory_adapters_by_owner_account")
                    .table(A::Table)
                    .col(A::OwnerAccount)
                    .col(A::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ModelfactoryAdapterAccess::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(ModelfactoryAdapterAccess::AdapterId).string_len(128).not_null())
                    .col(ColumnDef::new(ModelfactoryAdapterAccess::Account).string_len(40).not_null())
                    .primary_key(
                        Index::create()
                            .col(ModelfactoryAdapterAccess::AdapterId)
                            .col(ModelfactoryAdapterAccess::Account),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("modelfactory_adapter_access_by_account")
                    .table(ModelfactoryAdapterAccess::Table)
                    .col(ModelfactoryAdapterAccess::Account)
                    .col(ModelfactoryAdapterAccess::AdapterId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(ModelfactoryAdapterAccess::Table).if_exists().to_owned()).await?;
        manager.drop_table(Table::drop().table(ModelfactoryAdapters::Table).if_exists().to_owned()).await
    }
}
