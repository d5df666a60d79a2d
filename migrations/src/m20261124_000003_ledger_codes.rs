//! Lets the ledger find its own operation transfers (unbonding stakes, epoch rewards) by code
//! and time without scanning every transfer.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum LedgerTransfers {
    Table,
    Code,
    Timestamp,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("ledger_transfers_code")
                    .table(LedgerTransfers::Table)
                    .col(LedgerTransfers::Code)
                    .col(LedgerTransfers::Timestamp)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name("ledger_transfers_code").table(LedgerTransfers::Table).to_owned()).await
    }
}
