//! The ledger's schema. Ids and amounts are `u128`, stored as 16 big-endian bytes (exact,
//! and byte order is numeric order); timestamps are nanoseconds in a BIGINT. Transfers are
//! never updated or deleted; the state of a pending transfer lives in `ledger_pending`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum LedgerAccounts {
    Table,
    Id,
    OwnerKind,
    Owner,
    Ledger,
    Code,
    Flags,
    DebitsPending,
    DebitsPosted,
    CreditsPending,
    CreditsPosted,
    Timestamp,
}

#[derive(DeriveIden)]
enum LedgerTransfers {
    Table,
    Id,
    DebitAccountId,
    CreditAccountId,
    Amount,
    PendingId,
    UserData,
    TimeoutSeconds,
    Ledger,
    Code,
    Flags,
    Timestamp,
    JournalSequence,
}

#[derive(DeriveIden)]
enum LedgerPending {
    Table,
    Id,
    State,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum LedgerJournal {
    Table,
    Sequence,
    Previous,
    BatchHash,
    EntryHash,
    TransferCount,
    LastTimestamp,
}

#[derive(DeriveIden)]
enum LedgerMeta {
    Table,
    Key,
    Value,
}

fn bytes(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column).binary().not_null().to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(LedgerAccounts::Table)
                    .if_not_exists()
                    .col(bytes(LedgerAccounts::Id).primary_key())
                    .col(ColumnDef::new(LedgerAccounts::OwnerKind).small_integer().not_null())
                    .col(bytes(LedgerAccounts::Owner))
                    .col(ColumnDef::new(LedgerAccounts::Ledger).big_integer().not_null())
                    .col(ColumnDef::new(LedgerAccounts::Code).integer().not_null())
                    .col(ColumnDef::new(LedgerAccounts::Flags).integer().not_null())
                    .col(bytes(LedgerAccounts::DebitsPending))
                    .col(bytes(LedgerAccounts::DebitsPosted))
                    .col(bytes(LedgerAccounts::CreditsPending))
                    .col(bytes(LedgerAccounts::CreditsPosted))
                    .col(ColumnDef::new(LedgerAccounts::Timestamp).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LedgerTransfers::Table)
                    .if_not_exists()
                    .col(bytes(LedgerTransfers::Id).primary_key())
                    .col(bytes(LedgerTransfers::DebitAccountId))
                    .col(bytes(LedgerTransfers::CreditAccountId))
                    .col(bytes(LedgerTransfers::Amount))
                    .col(bytes(LedgerTransfers::PendingId))
                    .col(bytes(LedgerTransfers::UserData))
                    .col(ColumnDef::new(LedgerTransfers::TimeoutSeconds).big_integer().not_null())
                    .col(ColumnDef::new(LedgerTransfers::Ledger).big_integer().not_null())
                    .col(ColumnDef::new(LedgerTransfers::Code).integer().not_null())
                    .col(ColumnDef::new(LedgerTransfers::Flags).integer().not_null())
                    .col(ColumnDef::new(LedgerTransfers::Timestamp).big_integer().not_null().unique_key())
                    .col(ColumnDef::new(LedgerTransfers::JournalSequence).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        for (name, column) in [
            ("ledger_transfers_debit", LedgerTransfers::DebitAccountId),
            ("ledger_transfers_credit", LedgerTransfers::CreditAccountId),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(LedgerTransfers::Table)
                        .col(column)
                        .col(LedgerTransfers::Timestamp)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("ledger_transfers_journal")
                    .table(LedgerTransfers::Table)
                    .col(LedgerTransfers::JournalSequence)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LedgerPending::Table)
                    .if_not_exists()
                    .col(bytes(LedgerPending::Id).primary_key())
                    .col(ColumnDef::new(LedgerPending::State).small_integer().not_null())
                    .col(ColumnDef::new(LedgerPending::ExpiresAt).big_integer().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ledger_pending_expiry")
                    .table(LedgerPending::Table)
                    .col(LedgerPending::State)
                    .col(LedgerPending::ExpiresAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LedgerJournal::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(LedgerJournal::Sequence).big_integer().not_null().primary_key())
                    .col(bytes(LedgerJournal::Previous))
                    .col(bytes(LedgerJournal::BatchHash))
                    .col(bytes(LedgerJournal::EntryHash))
                    .col(ColumnDef::new(LedgerJournal::TransferCount).big_integer().not_null())
                    .col(ColumnDef::new(LedgerJournal::LastTimestamp).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LedgerMeta::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(LedgerMeta::Key).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(LedgerMeta::Value).text().not_null())
                    .to_owned(),
            )
            .await?;
        // The row every writer locks first, so batches (and journal entries) are serial
        // across replicas.
        let insert = Query::insert()
            .into_table(LedgerMeta::Table)
            .columns([LedgerMeta::Key, LedgerMeta::Value])
            .values_panic(["writer".into(), "".into()])
            .to_owned();
        manager.exec_stmt(insert).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            LedgerMeta::Table.into_iden(),
            LedgerJournal::Table.into_iden(),
            LedgerPending::Table.into_iden(),
            LedgerTransfers::Table.into_iden(),
            LedgerAccounts::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
