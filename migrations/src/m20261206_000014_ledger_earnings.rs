//! Each account's running total of settlement payouts to contributors (`ledger_earnings`:
//! the sum as a big-endian u128 like every ledger amount, and the count), kept by the ledger in
//! the transaction that writes the payouts, so `GetEarnings` and the Datanet leaderboard read
//! one row per account instead of every payout. Filled here from the payouts already in the
//! books (transfers of code 15, `SETTLE_CONTRIBUTOR`), read whole: a one-off pass.

use std::collections::BTreeMap;

use sea_orm_migration::{
    prelude::*,
    sea_orm::{ConnectionTrait, DbErr},
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum LedgerEarnings {
    Table,
    AccountId,
    Earned,
    Payouts,
}

#[derive(DeriveIden)]
enum LedgerTransfers {
    Table,
    CreditAccountId,
    Amount,
    Code,
}

/// `operations::codes::SETTLE_CONTRIBUTOR` of the ledger service.
const SETTLE_CONTRIBUTOR: i32 = 15;
/// Rows per insert of the backfill.
const INSERT_ROWS: usize = 500;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(LedgerEarnings::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(LedgerEarnings::AccountId).binary().not_null().primary_key())
                    .col(ColumnDef::new(LedgerEarnings::Earned).binary().not_null())
                    .col(ColumnDef::new(LedgerEarnings::Payouts).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        let payouts = Query::select()
            .columns([LedgerTransfers::CreditAccountId, LedgerTransfers::Amount])
            .from(LedgerTransfers::Table)
            .and_where(Expr::col(LedgerTransfers::Code).eq(SETTLE_CONTRIBUTOR))
            .to_owned();
        let mut totals: BTreeMap<Vec<u8>, (u128, i64)> = BTreeMap::new();
        for row in db.query_all(backend.build(&payouts)).await? {
            let account: Vec<u8> = row.try_get("", "credit_account_id")?;
            let amount: Vec<u8> = row.try_get("", "amount")?;
            let amount = <[u8; 16]>::try_from(amount.as_slice())
                .map(u128::from_be_bytes)
                .map_err(|_| DbErr::Custom(format!("a payout amount of {} bytes", amount.len())))?;
            let total = totals.entry(account).or_default();
            total.0 =
                total.0.checked_add(amount).ok_or_else(|| DbErr::Custom("an account's payouts overflow".into()))?;
            total.1 += 1;
        }
        let rows: Vec<_> = totals.into_iter().collect();
        for chunk in rows.chunks(INSERT_ROWS) {
            let mut insert = Query::insert()
                .into_table(LedgerEarnings::Table)
                .columns([LedgerEarnings::AccountId, LedgerEarnings::Earned, LedgerEarnings::Payouts])
                .to_owned();
            for (account, (earned, payouts)) in chunk {
                insert
                    .values([account.clone().into(), earned.to_be_bytes().to_vec().into(), (*payouts).into()])
                    .map_err(|error| DbErr::Custom(error.to_string()))?;
            }
            db.execute(backend.build(&insert)).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(LedgerEarnings::Table).to_owned()).await
    }
}
