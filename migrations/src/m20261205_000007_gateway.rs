//! The inference gateway's API keys: the account each acts for, its name, the BLAKE3 hash of
//! its secret (never the secret), its limits, when it was made and revoked, and the digest of
//! the signed request that made it (so a replayed request makes no second key).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum GatewayApiKeys {
    Table,
    Id,
    AccountId,
    Name,
    SecretHash,
    RequestsPerMinute,
    TokensPerMinute,
    CreatedAtMs,
    RevokedAtMs,
    RequestDigest,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(GatewayApiKeys::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(GatewayApiKeys::Id).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(GatewayApiKeys::AccountId).binary().not_null())
                    .col(ColumnDef::new(GatewayApiKeys::Name).text().not_null())
                    .col(ColumnDef::new(GatewayApiKeys::SecretHash).binary().not_null())
                    .col(ColumnDef::new(GatewayApiKeys::RequestsPerMinute).big_integer().not_null())
                    .col(ColumnDef::new(GatewayApiKeys::TokensPerMinute).big_integer().not_null())
                    .col(ColumnDef::new(GatewayApiKeys::CreatedAtMs).big_integer().not_null())
                    .col(ColumnDef::new(GatewayApiKeys::RevokedAtMs).big_integer().null())
                    .col(ColumnDef::new(GatewayApiKeys::RequestDigest).binary().not_null().unique_key())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("gateway_api_keys_by_account")
                    .table(GatewayApiKeys::Table)
                    .col(GatewayApiKeys::AccountId)
                    .col(GatewayApiKeys::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(GatewayApiKeys::Table).if_exists().to_owned()).await
    }
}
