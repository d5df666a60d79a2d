//! Bonds held until quality is known. An accepted contribution's bond stays held
//! ([`BondState::QualityPending`]) until an `ol.attribution.quality.assessed` event measures a
//! sealed version containing it: the bonds of the version's assessed contributions are then
//! released, and those of the slashing candidates slashed with their evidence recorded
//! (`datanet_bond_slashes`). Bonds never assessed are released after
//! [`limits::BOND_QUALITY_TIMEOUT_MS`] (see [`super::bond_saga`]).
//!
//! Exactly once: the decisions are committed with the event's id in the inbox
//! ([`openledger_store::inbox::first_delivery`]), only bonds still waiting for quality change,
//! and the ledger applies each decision idempotently by contribution id; a redelivered or
//! republished assessment changes nothing.

use std::{sync::Arc, time::Duration};

use openledger_core::ErrorCode;
use openledger_proto::events::v1::{QualityAssessed, SlashingCandidate};
use openledger_runtime::consume::Handled;
use openledger_store::{db::retry_when_busy, inbox, now_ms};
use prost::Message;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, QuerySelect, Set, TransactionTrait,
    sea_query::{Expr, Query},
};

use crate::{
    DatanetError,
    entities::{bond_slash, contribution, snapshot, snapshot_record},
    limits,
};

use super::Datanets;
use super::states::BondState;

/// The subject of quality assessments (published by the attribution-worker).
pub const SUBJECT_QUALITY_ASSESSED: &str = "ol.attribution.quality.assessed";

/// What an assessment decided: the contributions whose bonds it released and slashed (empty
/// for a repeated delivery or for bonds decided before it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct QualityDecisions {
    pub released: Vec<String>,
    pub slashed: Vec<String>,
    /// The event was applied before (a redelivery): nothing changed.
    pub repeated: bool,
}

impl QualityDecisions {
    /// Every contribution whose bond now waits for the ledger.
    pub fn decided(&self) -> impl Iterator<Item = &String> {
        self.slashed.iter().chain(&self.released)
    }
}

impl Datanets {
    /// Handles one delivery (`event_id`, `payload`) of the `datanet-quality` consumer (run by
    /// the runtime's consumer loop, which then settles it): records the assessment once and
    /// starts taking its bond decisions to the ledger in the background (what the ledger does
    /// not take now, the housekeeping worker retries). An assessment that cannot be decoded or
    /// names a version never sealed here is poison (dead-lettered at once); one that could not
    /// be recorded is delivered again after [`limits::QUALITY_RETRY_DELAY_MS`].
    pub async fn handle_quality(self: &Arc<Self>, event_id: &str, payload: &[u8]) -> Handled {
        let recorded = match QualityAssessed::decode(payload) {
            Ok(assessed) => self.record_quality(event_id, &assessed).await,
            Err(error) => return Handled::Poison(format!("the quality assessment cannot be decoded: {error}")),
        };
        match recorded {
            Ok(decisions) => {
                tracing::info!(
                    event = %event_id,
                    released = decisions.released.len(),
                    slashed = decisions.slashed.len(),
                    repeated = decisions.repeated,
                    "quality assessment recorded"
                );
                let datanets = self.clone();
                tokio::spawn(async move { datanets.apply_bond_decisions(decisions.decided()).await });
                Handled::Ack
            }
            Err(error) if error.code == ErrorCode::InvalidArgument => Handled::Poison(error.message),
            Err(error) => {
                tracing::warn!(event = %event_id, %error, "a quality assessment waits");
                Handled::Retry(Duration::from_millis(limits::QUALITY_RETRY_DELAY_MS))
            }
        }
    }

    /// Records what a quality assessment decides for the bonds still waiting for it, once per
    /// event id; [`Datanets::apply_bond_decisions`] then takes them to the ledger (and the
    /// housekeeping worker retries what it did not take).
    pub async fn record_quality(
        &self,
        event_id: &str,
        assessed: &QualityAssessed,
    ) -> Result<QualityDecisions, DatanetError> {
        let version = self.assessed_version(assessed).await?;
        retry_when_busy(|| async {
            let txn = self.db.begin().await?;
            if !inbox::first_delivery(&txn, limits::QUALITY_CONSUMER, event_id).await? {
                return Ok(QualityDecisions { repeated: true, ..Default::default() });
            }
            let decisions = decide_quality(&txn, event_id, assessed, &version).await?;
            txn.commit().await?;
            Ok(decisions)
        })
        .await
    }

    /// Takes decided bonds to the ledger, a few at a time; one the ledger does not take now
    /// waits for the housekeeping worker.
    pub async fn apply_bond_decisions<'a>(&self, contribution_ids: impl IntoIterator<Item = &'a String>) {
        use futures::StreamExt;
        futures::stream::iter(contribution_ids)
            .for_each_concurrent(limits::BOND_APPLY_CONCURRENCY, |id| self.resolve_bond(id))
            .await;
    }

    /// The sealed version an assessment names, which must be of the Datanet it names.
    async fn assessed_version(&self, assessed: &QualityAssessed) -> Result<snapshot::Model, DatanetError> {
        snapshot::Entity::find_by_id(&assessed.snapshot_id)
            .filter(snapshot::Column::DatanetId.eq(&assessed.datanet_id))
            .one(&self.db)
            .await?
            .ok_or_else(|| {
                DatanetError::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "the quality assessment names version {:?} of Datanet {:?}, which was never sealed here",
                        assessed.snapshot_id, assessed.datanet_id
                    ),
                )
            })
    }
}

/// Slashes the candidates' bonds (with their evidence) and releases the other assessed
/// contributions' bonds, among those of the version still waiting for quality.
async fn decide_quality(
    txn: &DatabaseTransaction,
    event_id: &str,
    assessed: &QualityAssessed,
    version: &snapshot::Model,
) -> Result<QualityDecisions, DatanetError> {
    let mut decisions = QualityDecisions::default();
    for candidate in &assessed.candidates {
        if waiting_in_version(txn, version, std::slice::from_ref(&candidate.contribution_id)).await?.is_empty() {
            continue;
        }
        let reason = slash_reason(assessed, version, candidate);
        if decide_bonds(txn, std::slice::from_ref(&candidate.contribution_id), BondState::ToSlash, reason).await? == 1 {
            record_evidence(txn, event_id, assessed, candidate).await?;
            decisions.slashed.push(candidate.contribution_id.clone());
        }
    }
    let others: Vec<String> = assessed
        .contribution_ids
        .iter()
        .filter(|id| !assessed.candidates.iter().any(|candidate| candidate.contribution_id == **id))
        .cloned()
        .collect();
    let reason = format!(
        "bond released: quality assessed by {} on adapter {} trained on version {}",
        assessed.estimator, assessed.adapter_id, version.version
    );
    for chunk in others.chunks(limits::QUALITY_IDS_PER_STATEMENT) {
        let waiting = waiting_in_version(txn, version, chunk).await?;
        decide_bonds(txn, &waiting, BondState::ToRelease, reason.clone()).await?;
        decisions.released.extend(waiting);
    }
    debug_assert!(
        decisions.slashed.iter().all(|id| !decisions.released.contains(id)),
        "a bond is released or slashed, never both"
    );
    Ok(decisions)
}

/// Those of `ids` whose bonds wait for quality and whose records are in the version.
async fn waiting_in_version(
    txn: &DatabaseTransaction,
    version: &snapshot::Model,
    ids: &[String],
) -> Result<Vec<String>, DatanetError> {
    debug_assert!(ids.len() <= limits::QUALITY_IDS_PER_STATEMENT);
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let in_version = Query::select()
        .column(snapshot_record::Column::ContributionId)
        .from(snapshot_record::Entity)
        .and_where(snapshot_record::Column::SnapshotId.eq(&version.id))
        .to_owned();
    Ok(contribution::Entity::find()
        .select_only()
        .column(contribution::Column::Id)
        .filter(contribution::Column::Id.is_in(ids.iter().cloned()))
        .filter(contribution::Column::DatanetId.eq(&version.datanet_id))
        .filter(contribution::Column::BondState.eq(BondState::QualityPending))
        .filter(contribution::Column::Id.in_subquery(in_version))
        .into_tuple()
        .all(txn)
        .await?)
}

/// Moves bonds still waiting for quality to `decided`; returns how many moved.
async fn decide_bonds(
    txn: &DatabaseTransaction,
    ids: &[String],
    decided: BondState,
    reason: String,
) -> Result<u64, DatanetError> {
    debug_assert!(matches!(decided, BondState::ToRelease | BondState::ToSlash));
    if ids.is_empty() {
        return Ok(0);
    }
    Ok(contribution::Entity::update_many()
        .col_expr(contribution::Column::BondState, Expr::value(decided))
        .col_expr(contribution::Column::BondReason, Expr::value(reason))
        .filter(contribution::Column::Id.is_in(ids.iter().cloned()))
        .filter(contribution::Column::BondState.eq(BondState::QualityPending))
        .exec(txn)
        .await?
        .rows_affected)
}

async fn record_evidence(
    txn: &DatabaseTransaction,
    event_id: &str,
    assessed: &QualityAssessed,
    candidate: &SlashingCandidate,
) -> Result<(), DatanetError> {
    bond_slash::ActiveModel {
        contribution_id: Set(candidate.contribution_id.clone()),
        datanet_id: Set(assessed.datanet_id.clone()),
        snapshot_id: Set(assessed.snapshot_id.clone()),
        adapter_id: Set(assessed.adapter_id.clone()),
        estimator: Set(assessed.estimator.clone()),
        score: Set(candidate.score),
        threshold: Set(assessed.threshold),
        evidence: Set(candidate.evidence.clone()),
        event_id: Set(event_id.to_owned()),
        at: Set(now_ms()),
    }
    .insert(txn)
    .await?;
    Ok(())
}

/// What the ledger records with a slash: who measured what, against which threshold.
fn slash_reason(assessed: &QualityAssessed, version: &snapshot::Model, candidate: &SlashingCandidate) -> String {
    format!(
        "bond slashed for harmful data: {} scored the contribution {} (threshold {}) on adapter {} trained on version {}",
        assessed.estimator, candidate.score, assessed.threshold, assessed.adapter_id, version.version
    )
}
