//! Transfers per second through `Ledger::create_transfers` for batch sizes 1, 100 and 1000,
//! on SQLite (file, WAL) and PostgreSQL (testkit server), next to a naive baseline that
//! applies one transfer per database transaction (read both accounts, update both, insert).
//! Run: `cargo bench -p openledger-ledger --bench transfers [-- TRANSFERS]`.

use std::time::Instant;

use openledger_ledger::{
    Ledger,
    model::{Account, AccountFlags, OPEN_LEDGER, Owner, Transfer},
};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement, TransactionTrait};

const ACCOUNTS: u128 = 1_000;
const FIRST: u128 = 1 << 20;

async fn setup(db: &DatabaseConnection) -> Ledger {
    openledger_store::migrate(db).await.expect("migrate");
    let ledger = Ledger::new(db.clone());
    let accounts: Vec<Account> = (0..ACCOUNTS)
        .map(|i| Account::new(FIRST + i, Owner::Key([7; 32]), OPEN_LEDGER, 1, AccountFlags::default()))
        .collect();
    ledger.create_accounts(&accounts).await.expect("accounts");
    ledger
}

fn transfer(n: u128) -> Transfer {
    let debit = FIRST + (n * 7919) % ACCOUNTS;
    let credit = FIRST + (n * 104_729 + 1) % ACCOUNTS;
    let credit = if credit == debit { FIRST + (credit - FIRST + 1) % ACCOUNTS } else { credit };
    Transfer {
        id: n + 1,
        debit_account_id: debit,
        credit_account_id: credit,
        amount: 1 + n % 100,
        ledger: OPEN_LEDGER,
        ..Transfer::default()
    }
}

async fn batched(ledger: &Ledger, offset: u128, total: u128, batch_size: u128) -> f64 {
    let started = Instant::now();
    let mut next = offset;
    while next < offset + total {
        let batch: Vec<Transfer> = (next..(next + batch_size).min(offset + total)).map(transfer).collect();
        let results = ledger.create_transfers(&batch).await.expect("batch");
        debug_assert!(results.iter().all(|r| r.is_success()));
        next += batch_size;
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// One transaction per transfer, the way a first implementation would write it.
async fn naive(db: &DatabaseConnection, offset: u128, total: u128) -> f64 {
    let backend = db.get_database_backend();
    let placeholder =
        |n: usize| if backend == sea_orm::DatabaseBackend::Postgres { format!("${n}") } else { "?".to_owned() };
    let started = Instant::now();
    for n in offset..offset + total {
        let t = transfer(n);
        let txn = db.begin().await.expect("begin");
        for (account, column) in [(t.debit_account_id, "debits_posted"), (t.credit_account_id, "credits_posted")] {
            let select = format!("SELECT {column} FROM ledger_accounts WHERE id = {}", placeholder(1));
            let row = txn
                .query_one(Statement::from_sql_and_values(backend, &select, [account.to_be_bytes().to_vec().into()]))
                .await
                .expect("select")
                .expect("account");
            let current: Vec<u8> = row.try_get("", column).expect("column");
            let updated = u128::from_be_bytes(current.try_into().expect("16 bytes")) + t.amount;
            let update =
                format!("UPDATE ledger_accounts SET {column} = {} WHERE id = {}", placeholder(1), placeholder(2));
            txn.execute(Statement::from_sql_and_values(
                backend,
                &update,
                [updated.to_be_bytes().to_vec().into(), account.to_be_bytes().to_vec().into()],
            ))
            .await
            .expect("update");
        }
        let insert = format!(
            "INSERT INTO ledger_transfers (id, debit_account_id, credit_account_id, amount, pending_id, user_data, timeout_seconds, ledger, code, flags, timestamp, journal_sequence) VALUES ({}, {}, {}, {}, {}, {}, 0, 1, 0, 0, {}, 0)",
            placeholder(1),
            placeholder(2),
            placeholder(3),
            placeholder(4),
            placeholder(5),
            placeholder(6),
            placeholder(7)
        );
        let zero = 0u128.to_be_bytes().to_vec();
        txn.execute(Statement::from_sql_and_values(
            backend,
            &insert,
            [
                (t.id + (1 << 100)).to_be_bytes().to_vec().into(),
                t.debit_account_id.to_be_bytes().to_vec().into(),
                t.credit_account_id.to_be_bytes().to_vec().into(),
                t.amount.to_be_bytes().to_vec().into(),
                zero.clone().into(),
                zero.into(),
                (i64::try_from(n).expect("fits") + (1 << 61)).into(),
            ],
        ))
        .await
        .expect("insert");
        txn.commit().await.expect("commit");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

async fn run(name: &str, db: DatabaseConnection, total: u128) {
    let ledger = setup(&db).await;
    let mut offset = 0;
    for (batch_size, count) in [(1, total / 10), (100, total), (1000, total)] {
        let rate = batched(&ledger, offset, count, batch_size).await;
        offset += count;
        println!("{name:<10} batch {batch_size:>4}: {rate:>9.0} transfers/s ({count} transfers)");
    }
    let rate = naive(&db, 10_000_000, total / 10).await;
    println!("{name:<10} naive     : {rate:>9.0} transfers/s ({} transfers, one transaction each)", total / 10);
    let report = ledger.verify().await.expect("verify");
    println!("{name:<10} journal   : {} entries, {} transfers", report.entries, report.transfers);
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let total: u128 = std::env::args().filter_map(|arg| arg.parse().ok()).next().unwrap_or(20_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = openledger_store::connect(&format!("sqlite://{}/bench.db?mode=rwc", dir.path().display()))
        .await
        .expect("sqlite");
    run("sqlite", sqlite, total).await;
    let server = openledger_testkit::Postgres::start();
    let postgres = openledger_store::connect(&server.create_database("bench")).await.expect("postgres");
    run("postgres", postgres, total).await;
}
