//! Governance of the ledger's economic parameters: proposals, stake-weighted votes, and the
//! history of parameters with the epoch from which each set applies.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum LedgerParameters {
    Table,
    EffectiveFrom,
    EffectiveFromEpoch,
    Parameters,
    ProposalId,
}

#[derive(DeriveIden)]
enum LedgerProposals {
    Table,
    Id,
    Proposer,
    Parameters,
    Rationale,
    CreatedAt,
    VotingEnds,
    ExecutableAfter,
    State,
    EffectiveFromEpoch,
}

#[derive(DeriveIden)]
enum LedgerVotes {
    Table,
    ProposalId,
    Account,
    Approve,
    Weight,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(LedgerParameters::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(LedgerParameters::EffectiveFrom).big_integer().not_null().primary_key())
                    .col(ColumnDef::new(LedgerParameters::EffectiveFromEpoch).big_integer().not_null())
                    .col(ColumnDef::new(LedgerParameters::Parameters).text().not_null())
                    .col(ColumnDef::new(LedgerParameters::ProposalId).string_len(128).not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LedgerProposals::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(LedgerProposals::Id).string_len(128).not_null().primary_key())
                    .col(ColumnDef::new(LedgerProposals::Proposer).binary().not_null())
                    .col(ColumnDef::new(LedgerProposals::Parameters).text().not_null())
                    .col(ColumnDef::new(LedgerProposals::Rationale).text().not_null())
                    .col(ColumnDef::new(LedgerProposals::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(LedgerProposals::VotingEnds).big_integer().not_null())
                    .col(ColumnDef::new(LedgerProposals::ExecutableAfter).big_integer().not_null())
                    .col(ColumnDef::new(LedgerProposals::State).small_integer().not_null())
                    .col(ColumnDef::new(LedgerProposals::EffectiveFromEpoch).big_integer().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LedgerVotes::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(LedgerVotes::ProposalId).string_len(128).not_null())
                    .col(ColumnDef::new(LedgerVotes::Account).binary().not_null())
                    .col(ColumnDef::new(LedgerVotes::Approve).boolean().not_null())
                    .col(ColumnDef::new(LedgerVotes::Weight).binary().not_null())
                    .primary_key(Index::create().col(LedgerVotes::ProposalId).col(LedgerVotes::Account))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in
            [LedgerVotes::Table.into_iden(), LedgerProposals::Table.into_iden(), LedgerParameters::Table.into_iden()]
        {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
