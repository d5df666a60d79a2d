//! The ledger: double-entry OPEN accounting on the model of TigerBeetle (immutable transfers,
//! client-chosen ids, two-phase holds, linked chains, per-event results), kept in PostgreSQL
//! or SQLite, with a genesis mint, expiry of holds by the service, and a hash-chained journal
//! that `verify` recomputes. Platform operations (inference fees and settlement, bonds,
//! staking, epochs, governance) build on this core as linked chains of transfers.
//!
//! Settlement is driven by attribution: the service consumes `ol.attribution.computed` and
//! settles many inferences per transaction, exactly once; attribution receipt batch roots are
//! recorded in the journal; an audit checks the books against the attributions.
//!
//! Layout: `model` (the data model) and `engine` (applying a batch in memory, no I/O) are the
//! core; `books` keeps them in the database; `operations`, `settlement`, `receipts`,
//! `staking`, `epochs` and `governance` are the platform operations; `consumer` settles from
//! the bus; `audit` checks settlements; `api` is the gRPC surface; `limits` holds every limit.

mod api;
pub mod audit;
pub mod books;
pub mod capture;
pub mod consumer;
pub mod engine;
mod entities;
pub mod epochs;
pub mod governance;
pub mod limits;
pub mod model;
pub mod operations;
pub mod receipts;
pub mod settlement;
pub mod staking;

use std::sync::Arc;

use tokio::sync::Notify;

use openledger_proto::ledger::v1::ledger_service_server::LedgerServiceServer;
use openledger_runtime::{Config, Deps, RuntimeError, ServiceKind, ServiceSpec, Worker, run_service};

pub use books::{Allocation, JournalReport, Ledger, LedgerError, default_allocations};

/// Runs the ledger service until the process shuts down.
pub async fn serve(config: Arc<Config>, deps: Deps) -> Result<(), RuntimeError> {
    let shared = api::SharedLedger::new(deps.backends.clone());
    let allocations: Vec<Allocation> = config
        .genesis_shares()
        .unwrap_or_default()
        .into_iter()
        .map(|(name, basis_points)| Allocation { name, basis_points })
        .collect();
    let metrics = consumer::SettlementMetrics::default();
    deps.metrics.register("ledger_settlement", |registry| metrics.register(registry));
    let capture_metrics = capture::CaptureMetrics::default();
    deps.metrics.register("ledger_capture", |registry| capture_metrics.register(registry));
    let rules = governance::GovernanceRules::from_config(&config);
    let genesis = operations::Economics { epoch_seconds: config.genesis_epoch_seconds, ..Default::default() };
    let spec = ServiceSpec::new(ServiceKind::Ledger, LedgerServiceServer::new(api::Api::new(shared.clone(), rules)));
    let outbox = spec.outbox_waker();
    let spec = spec
        .worker(housekeeping(shared.clone(), allocations, genesis, rules))
        .worker(settlement(shared.clone(), metrics, outbox))
        .worker(late_capture(shared, capture_metrics));
    run_service(spec, &config, deps).await
}

/// The epochs a housekeeping tick closes: those after the last one it closed (`closed_up_to`:
/// its length and number) up to `last_ended`, at most [`limits::MAX_EPOCHS_CLOSED_PER_TICK`]
/// (the rest at the next ticks); only `last_ended` at start or when the epoch length changed
/// (epochs are numbered by their length).
fn epochs_to_close(closed_up_to: Option<(u64, u64)>, length: u64, last_ended: u64) -> std::ops::RangeInclusive<u64> {
    match closed_up_to {
        // Empty when `epoch` is `last_ended`: nothing ended since.
        Some((same_length, epoch)) if same_length == length && epoch <= last_ended => {
            epoch + 1..=last_ended.min(epoch + limits::MAX_EPOCHS_CLOSED_PER_TICK)
        }
        _ => last_ended..=last_ended,
    }
}

/// Settles inferences as their attributions arrive (see `consumer`).
fn settlement(shared: api::SharedLedger, metrics: consumer::SettlementMetrics, outbox: Arc<Notify>) -> Worker {
    Box::new(move |backends, shutdown| {
        Box::pin(async move {
            let Some(ledger) = shared.get() else { return };
            let config = consumer::consumer_config();
            consumer::consume_attributions(ledger, backends.bus, config, metrics, outbox, shutdown).await;
        })
    })
}

/// Captures the fees of answered inferences the gateway could not capture (see `capture`).
fn late_capture(shared: api::SharedLedger, metrics: capture::CaptureMetrics) -> Worker {
    Box::new(move |backends, shutdown| {
        Box::pin(async move {
            let Some(ledger) = shared.get() else { return };
            capture::consume_completions(ledger, backends.bus, capture::consumer_config(), metrics, shutdown).await;
        })
    })
}

/// Mints the genesis supply and records the genesis parameters once, then every second voids
/// expired holds, pays back stakes whose unbonding period has passed, closes the epochs that
/// ended since (each once; at start, the last one), and decides and executes governance
/// proposals under `rules`.
fn housekeeping(
    shared: api::SharedLedger,
    allocations: Vec<Allocation>,
    genesis: operations::Economics,
    rules: governance::GovernanceRules,
) -> Worker {
    Box::new(move |_backends, shutdown| {
        Box::pin(async move {
            let Some(ledger) = shared.get() else { return };
            if let Err(error) = ledger.ensure_genesis(&allocations, &genesis).await {
                tracing::error!(%error, "genesis failed");
            }
            // The books check themselves at every start: the journal chain, every balance
            // replayed from the transfers, debits equal to credits, no limit exceeded.
            match ledger.verify().await {
                Ok(report) if report.ok() => {
                    tracing::info!(entries = report.entries, transfers = report.transfers, "books verified")
                }
                Ok(report) => tracing::error!(
                    first_mismatch = ?report.first_mismatch,
                    errors = ?report.book_errors,
                    "THE BOOKS DO NOT VERIFY: run `openledger ledger verify` and stop writing until this is understood"
                ),
                Err(error) => tracing::error!(%error, "verifying the books failed"),
            }
            // The epoch length and the last epoch closed by this loop.
            let mut closed_up_to: Option<(u64, u64)> = None;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(limits::HOUSEKEEPING_INTERVAL) => {}
                }
                match ledger.expire_holds_at(Ledger::now_ns()).await {
                    Ok(0) => {}
                    Ok(expired) => tracing::info!(expired, "expired holds voided"),
                    Err(error) => tracing::warn!(%error, "voiding expired holds failed"),
                }
                let parameters = match ledger.parameters_at(Ledger::now_ns()).await {
                    Ok(parameters) => parameters,
                    Err(error) => {
                        tracing::warn!(%error, "reading the parameters in force failed");
                        continue;
                    }
                };
                match ledger.release_unbonded_at(Ledger::now_ns(), &parameters).await {
                    Ok(0) => {}
                    Ok(released) => tracing::info!(released, "unbonded stakes paid back"),
                    Err(error) => tracing::warn!(%error, "paying back unbonded stakes failed"),
                }
                let now = Ledger::now_ns();
                let length = parameters.epoch_seconds.max(1) * limits::NANOS_PER_SECOND;
                if let Some(last_ended) = (now / length).checked_sub(1) {
                    // Every epoch that ended since the last tick, not only the latest: a tick
                    // takes a little over its interval, so with epochs as short as it one
                    // would otherwise be skipped now and then (its stakers never rewarded).
                    for epoch in epochs_to_close(closed_up_to, length, last_ended) {
                        match ledger.close_epoch_at(epoch, now, &parameters).await {
                            Ok(closed) => {
                                if !closed.already_closed {
                                    tracing::info!(epoch, distributed = %closed.distributed, stakers = closed.stakers, "epoch closed");
                                }
                                closed_up_to = Some((length, epoch));
                            }
                            Err(error) => {
                                tracing::warn!(epoch, %error, "closing the epoch failed");
                                break;
                            }
                        }
                    }
                }
                match ledger.advance_governance_at(Ledger::now_ns(), &rules).await {
                    Ok(0) => {}
                    Ok(executed) => tracing::info!(executed, "governance proposals executed"),
                    Err(error) => tracing::warn!(%error, "advancing governance failed"),
                }
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_epoch_that_ended_since_the_last_tick_is_closed_a_bounded_number_at_a_time() {
        let length = 1_000_000_000;
        assert_eq!(epochs_to_close(None, length, 41), 41..=41, "at start, the last one");
        assert_eq!(epochs_to_close(Some((length, 40)), length, 41), 41..=41);
        assert_eq!(epochs_to_close(Some((length, 39)), length, 41), 40..=41, "none skipped");
        assert!(epochs_to_close(Some((length, 41)), length, 41).is_empty(), "already closed this one");
        let max = limits::MAX_EPOCHS_CLOSED_PER_TICK;
        assert_eq!(epochs_to_close(Some((length, 0)), length, 1000), 1..=max, "the rest at the next ticks");
        assert_eq!(epochs_to_close(Some((86_400 * length, 7)), length, 41), 41..=41, "the length changed");
    }
}
