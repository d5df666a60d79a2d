//! Contributor quality, once per Datanet version: when the gradient index of the first adapter
//! trained on a version is built, `openledger_attribution::quality` measures each training
//! record's influence on the adapter's held-out split, and `ol.attribution.quality.assessed`
//! names every contribution assessed and the slashing candidates with their evidence.
//! datanet-ingest consumes it to release the version's bonds and slash the candidates'.
//!
//! The `attribution_quality` row and the event are written in one transaction, the row keyed
//! by the version: a second adapter, a rebuilt index or a restart finds the row and emits
//! nothing.

use openledger_attribution::quality::QualityReport;
use openledger_core::ErrorCode;
use openledger_proto::events::v1::{QualityAssessed, SlashingCandidate};
use openledger_store::{NewEvent, now_ms, outbox::enqueue};
use prost::Message;
use sea_orm::{DatabaseConnection, EntityTrait, Set, TransactionTrait, sea_query::OnConflict};

use crate::{WorkerError, attribute::PRODUCER, entities::quality};

pub const SUBJECT_QUALITY_ASSESSED: &str = "ol.attribution.quality.assessed";
/// Most records of a candidate its evidence lists (the lowest scores first).
pub const MAX_EVIDENCE_RECORDS: usize = 8;

/// Which version and adapter a report is about.
#[derive(Clone, Debug)]
pub struct Assessed {
    pub datanet_id: String,
    pub snapshot_id: String,
    pub adapter_id: String,
}

/// The event of a report: every contribution assessed, the candidates with their evidence.
pub fn event_of(assessed: &Assessed, report: &QualityReport, at_ms: i64) -> QualityAssessed {
    let mut contribution_ids: Vec<String> = report.contributions.iter().map(|c| c.contribution.clone()).collect();
    contribution_ids.sort();
    let candidates = report
        .contributions
        .iter()
        .filter(|c| report.slashing_candidates.contains(&c.contribution))
        .map(|c| SlashingCandidate {
            contribution_id: c.contribution.clone(),
            contributor: hex::decode(&c.contributor).unwrap_or_default(),
            score: c.score,
            evidence: evidence(report, c),
        })
        .collect();
    QualityAssessed {
        datanet_id: assessed.datanet_id.clone(),
        snapshot_id: assessed.snapshot_id.clone(),
        adapter_id: assessed.adapter_id.clone(),
        contribution_ids,
        candidates,
        estimator: report.estimator.name().to_owned(),
        threshold: report.threshold,
        at: Some(openledger_proto::timestamp(at_ms)),
    }
}

/// What a slash records: the estimator and validation set, the score against the threshold,
/// the rank, and the lowest-scoring records.
fn evidence(report: &QualityReport, contribution: &openledger_attribution::quality::ContributionQuality) -> String {
    let mut records: Vec<_> = contribution.records.iter().collect();
    records.sort_by(|a, b| a.score.total_cmp(&b.score));
    let listed: Vec<String> = records
        .iter()
        .take(MAX_EVIDENCE_RECORDS)
        .map(|r| format!("{} score {:.3} influence {:+.4e}", r.record, r.score, r.influence))
        .collect();
    format!(
        "{} with {} on {:?}: contribution score {:.3} below threshold {} (rank {} of {}); {} records, lowest: {}",
        report.method,
        report.estimator.name(),
        report.validation,
        contribution.score,
        report.threshold,
        contribution.rank,
        report.contributions.len(),
        contribution.records.len(),
        listed.join("; ")
    )
}

/// Whether the version's quality was assessed already.
pub async fn assessed(db: &DatabaseConnection, snapshot_id: &str) -> Result<bool, WorkerError> {
    Ok(quality::Entity::find_by_id(snapshot_id).one(db).await?.is_some())
}

/// Records the version's assessment and enqueues its event, unless it was recorded before;
/// `true` when this call recorded it.
pub async fn record(db: &DatabaseConnection, assessed: &Assessed, report: &QualityReport) -> Result<bool, WorkerError> {
    let now = now_ms();
    let event = event_of(assessed, report, now);
    let row = quality::ActiveModel {
        snapshot_id: Set(assessed.snapshot_id.clone()),
        datanet_id: Set(assessed.datanet_id.clone()),
        adapter_id: Set(assessed.adapter_id.clone()),
        estimator: Set(event.estimator.clone()),
        threshold: Set(report.threshold),
        contributions: Set(event.contribution_ids.len() as i64),
        candidates: Set(event.candidates.len() as i64),
        report: Set(serde_json::to_string(report).map_err(WorkerError::internal)?),
        assessed_at_ms: Set(now),
    };
    let txn = db.begin().await?;
    let inserted = quality::Entity::insert(row)
        .on_conflict(OnConflict::column(quality::Column::SnapshotId).do_nothing().to_owned())
        .exec_without_returning(&txn)
        .await?;
    if inserted == 0 {
        txn.rollback().await?;
        return Ok(false);
    }
    enqueue(&txn, PRODUCER, NewEvent::new(SUBJECT_QUALITY_ASSESSED, event.encode_to_vec()))
        .await
        .map_err(|e| WorkerError::new(ErrorCode::Internal, e.to_string()))?;
    txn.commit().await?;
    tracing::info!(
        snapshot = %assessed.snapshot_id,
        adapter = %assessed.adapter_id,
        contributions = event.contribution_ids.len(),
        candidates = event.candidates.len(),
        "contributor quality assessed"
    );
    Ok(true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use openledger_attribution::{
        influence::Estimator,
        quality::{ContributionQuality, RecordQuality, ValidationSet},
    };

    use super::*;

    fn contribution(id: &str, contributor: u8, score: f64, rank: usize, candidate: bool) -> ContributionQuality {
        ContributionQuality {
            contribution: id.into(),
            contributor: hex::encode([contributor; 32]),
            score,
            rank,
            records: vec![
                RecordQuality { record: "aa".repeat(32), influence: 0.5, score: score + 0.5 },
                RecordQuality { record: "bb".repeat(32), influence: -0.5, score: score - 0.5 },
            ],
            slashing_candidate: candidate,
        }
    }

    #[test]
    fn the_event_names_every_contribution_and_each_candidate_with_its_evidence() {
        let report = QualityReport {
            method: "influence on the mean validation loss".into(),
            estimator: Estimator::DataInfNormalized,
            validation: ValidationSet::HeldOut { records: 4 },
            threshold: -1.0,
            center: 0.1,
            scale: 0.2,
            contributors: Vec::new(),
            contributions: vec![
                contribution("c-bad", 3, -2.5, 1, true),
                contribution("c-good", 1, 0.4, 2, false),
                contribution("a-fine", 2, 0.9, 3, false),
            ],
            slashing_candidates: vec!["c-bad".into()],
        };
        let assessed = Assessed { datanet_id: "d".into(), snapshot_id: "s".into(), adapter_id: "ft:a".into() };
        let event = event_of(&assessed, &report, 1_500);
        assert_eq!(event.contribution_ids, ["a-fine", "c-bad", "c-good"]);
        assert_eq!((event.estimator.as_str(), event.threshold), ("datainf_normalized", -1.0));
        assert_eq!(event.at, Some(prost_types::Timestamp { seconds: 1, nanos: 500_000_000 }));
        assert_eq!(event.candidates.len(), 1);
        let candidate = &event.candidates[0];
        assert_eq!((candidate.contribution_id.as_str(), candidate.score), ("c-bad", -2.5));
        assert_eq!(candidate.contributor, vec![3; 32]);
        let evidence = &candidate.evidence;
        assert!(evidence.contains("datainf_normalized") && evidence.contains("-2.500"), "{evidence}");
        assert!(evidence.contains("rank 1 of 3") && evidence.contains("threshold -1"), "{evidence}");
        let lowest = evidence.find(&"bb".repeat(32)).unwrap();
        assert!(lowest < evidence.find(&"aa".repeat(32)).unwrap(), "lowest-scoring records first: {evidence}");
    }
}
