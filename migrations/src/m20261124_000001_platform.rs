//! The platform schema every service shares: the transactional outbox (events written in the
//! same transaction as a state change, relayed to the bus later) and the inbox of processed
//! event ids (so consumers apply each event once).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    EventId,
    Producer,
    Subject,
    Payload,
    Headers,
    CreatedAtMs,
    SentAtMs,
}

#[derive(DeriveIden)]
enum ProcessedEvents {
    Table,
    Consumer,
    EventId,
    ProcessedAtMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Outbox::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Outbox::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(Outbox::EventId).string_len(64).not_null().unique_key())
                    .col(ColumnDef::new(Outbox::Producer).string_len(64).not_null())
                    .col(ColumnDef::new(Outbox::Subject).string_len(512).not_null())
                    .col(ColumnDef::new(Outbox::Payload).blob().not_null())
                    .col(ColumnDef::new(Outbox::Headers).text().not_null())
                    .col(ColumnDef::new(Outbox::CreatedAtMs).big_integer().not_null())
                    .col(ColumnDef::new(Outbox::SentAtMs).big_integer().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("outbox_unsent")
                    .table(Outbox::Table)
                    .col(Outbox::Producer)
                    .col(Outbox::SentAtMs)
                    .col(Outbox::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ProcessedEvents::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(ProcessedEvents::Consumer).string_len(128).not_null())
                    .col(ColumnDef::new(ProcessedEvents::EventId).string_len(300).not_null())
                    .col(ColumnDef::new(ProcessedEvents::ProcessedAtMs).big_integer().not_null())
                    .primary_key(Index::create().col(ProcessedEvents::Consumer).col(ProcessedEvents::EventId))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(ProcessedEvents::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(Outbox::Table).to_owned()).await
    }
}
