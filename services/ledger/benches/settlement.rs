//! Settlements per second on PostgreSQL (testkit server): captured inferences of 10
//! contributors each, paid to their earnings accounts (created by the first payout), settled
//! through `Ledger::settle_inferences_at` in batches of `SETTLEMENT_BATCH` (what the
//! attribution consumer does) side by side with one settlement per transaction
//! (`settle_inference_at`, a batch of one), in one run. Holds and captures are made before
//! the clock starts.
//! Run: `cargo bench -p openledger-ledger --bench settlement [-- SETTLEMENTS]`.

use std::time::Instant;

use openledger_ledger::{
    Ledger, default_allocations,
    limits::SETTLEMENT_BATCH,
    model::{Account, AccountFlags, OPEN_LEDGER, Owner, Transfer},
    operations::{Economics, capture_transfer, hold_transfer},
    settlement::{SettleOrder, SettleOutcome},
};

const CONTRIBUTORS_PER_SETTLEMENT: u64 = 10;
/// Distinct contributor keys the weights are drawn from.
const CONTRIBUTOR_KEYS: u64 = 1_000;
const MODEL_OWNERS: u128 = 16;
const APP: u128 = 1 << 20;
const FIRST_OWNER: u128 = APP + 1;
/// The default platform fee and 10^9 base units to split (so every leg is paid).
const FEE: u128 = 10u128.pow(15) + 1_000_000_000;

fn contributor_key(n: u64) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&n.to_be_bytes());
    key[31] = 0xC0;
    key
}

fn order(name: &str, n: u64) -> SettleOrder {
    let owner = FIRST_OWNER + u128::from(n) % MODEL_OWNERS;
    (0..CONTRIBUTORS_PER_SETTLEMENT).fold(SettleOrder::new(inference_id(name, n), owner), |order, k| {
        let key = contributor_key((n * 7 + k * 101) % CONTRIBUTOR_KEYS);
        order.weight(0, &key, 50_000_000 + 10_000_000 * k as i64)
    })
}

fn inference_id(name: &str, n: u64) -> String {
    format!("bench-{name}-{n}")
}

async fn setup(ledger: &Ledger) {
    ledger.ensure_genesis(&default_allocations(), &Economics::default()).await.expect("genesis");
    let guarded = AccountFlags(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS);
    let mut accounts = vec![Account::new(APP, Owner::Key([1; 32]), OPEN_LEDGER, 0, guarded)];
    accounts
        .extend((0..MODEL_OWNERS).map(|i| Account::new(FIRST_OWNER + i, Owner::Key([2; 32]), OPEN_LEDGER, 0, guarded)));
    ledger.create_accounts(&accounts).await.expect("accounts");
    let funding = Transfer {
        id: 1,
        debit_account_id: 101,
        credit_account_id: APP,
        amount: 10u128.pow(24),
        ledger: OPEN_LEDGER,
        ..Transfer::default()
    };
    let funded = ledger.create_transfers(&[funding]).await.expect("funding");
    assert!(funded.iter().all(|r| r.is_success()), "{funded:?}");
}

/// Holds and captures `count` inferences' fees, 1,000 per batch.
async fn capture(ledger: &Ledger, name: &str, count: u64) {
    let ids: Vec<String> = (0..count).map(|n| inference_id(name, n)).collect();
    for chunk in ids.chunks(1000) {
        let holds: Vec<Transfer> = chunk.iter().map(|id| hold_transfer(id, APP, FEE, 0)).collect();
        let captures: Vec<Transfer> = chunk.iter().map(|id| capture_transfer(id, FEE)).collect();
        for batch in [holds, captures] {
            let results = ledger.create_transfers(&batch).await.expect("batch");
            assert!(results.iter().all(|r| r.is_success()), "{:?}", results.iter().find(|r| !r.is_success()));
        }
    }
}

/// Every settlement paid now, with a leg for the platform, the owner, the stakers and each
/// of the 10 contributors.
fn check(outcomes: &[SettleOutcome]) {
    for outcome in outcomes {
        let legs = 3 + CONTRIBUTORS_PER_SETTLEMENT as usize;
        assert!(
            matches!(outcome, SettleOutcome::Settled(s) if !s.already_settled && s.transfers.len() >= legs),
            "{outcome:?}"
        );
    }
}

/// Settles `count` inferences of their own (named `name`) in batches of `SETTLEMENT_BATCH`.
async fn batched(ledger: &Ledger, name: &str, count: u64, economics: &Economics) -> f64 {
    capture(ledger, name, count).await;
    let orders: Vec<SettleOrder> = (0..count).map(|n| order(name, n)).collect();
    let started = Instant::now();
    for chunk in orders.chunks(SETTLEMENT_BATCH) {
        check(&ledger.settle_inferences_at(chunk, economics, Ledger::now_ns()).await.expect("settle"));
    }
    count as f64 / started.elapsed().as_secs_f64()
}

async fn one_per_transaction(ledger: &Ledger, count: u64, economics: &Economics) -> f64 {
    capture(ledger, "single", count).await;
    let orders: Vec<SettleOrder> = (0..count).map(|n| order("single", n)).collect();
    let started = Instant::now();
    for order in orders {
        let settlement = ledger.settle_order_at(order, economics, Ledger::now_ns()).await.expect("settle");
        check(&[SettleOutcome::Settled(settlement)]);
    }
    count as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let total: u64 = std::env::args().filter_map(|arg| arg.parse().ok()).next().unwrap_or(10_240);
    let server = openledger_testkit::Postgres::start();
    let db = openledger_store::connect(&server.create_database("settlement")).await.expect("postgres");
    openledger_store::migrate(&db).await.expect("migrate");
    let ledger = Ledger::new(db);
    setup(&ledger).await;
    let economics = Economics::default();
    // A first pass creates the contributors' earnings accounts; the measured passes find them.
    let warm = batched(&ledger, "warm-up", 1_024, &economics).await;
    println!(
        "postgres  warm-up, batch {SETTLEMENT_BATCH}: {warm:>7.0} settlements/s (1024, earnings accounts created)"
    );
    let single_count = (total / 10).max(100);
    let single = one_per_transaction(&ledger, single_count, &economics).await;
    let many = batched(&ledger, "measured", total, &economics).await;
    println!(
        "postgres  batch {SETTLEMENT_BATCH:>4}     : {many:>7.0} settlements/s ({total} settlements, 10 contributors each)"
    );
    println!(
        "postgres  one per txn   : {single:>7.0} settlements/s ({single_count} settlements, 10 contributors each)"
    );
    println!("postgres  batched ÷ one : {:>7.1}×", many / single);
    let report = ledger.verify().await.expect("verify");
    assert!(report.ok(), "{report:?}");
    println!("postgres  journal       : {} entries, {} transfers, verified", report.entries, report.transfers);
    let settled = 1_024 + single_count + total;
    let setup = 2 * settled + 1 + default_allocations().len() as u64;
    println!("postgres  per settlement: {:.2} transfers", (report.transfers - setup) as f64 / settled as f64);
}
