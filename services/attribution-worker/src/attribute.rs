//! One paid inference attributed: its adapter's Datanet version (through the adapter's
//! lineage), the version's span index, Proof of Attribution's blend, the receipt, and the row
//! and `ol.attribution.computed` event written in one transaction, so a redelivered inference
//! is recognised by its id and changes nothing.
//!
//! Rules, in the receipt and the notes of every attribution they touch:
//! - the output attributed is every choice's text, joined by [`CHOICE_SEPARATOR`];
//! - the first adapter of the request is the model: its owner is paid the model owner's share,
//!   its lineage names the version; the base model alone has no owner and no version;
//! - an inference whose version's index is not ready waits up to [`INDEX_WAIT`] from its
//!   completion, then is attributed without it (`completeness: partial`, no weights): its
//!   contributors' share goes to the treasury, as for an output that quotes nothing;
//! - influence is blended in when the adapter's gradient index is ready and was built for the
//!   adapter files the inference names (read with [`INFLUENCE_ESTIMATOR`]; the receipt names
//!   the index and the estimator); an inference never waits for a gradient index: without one
//!   it is attributed span-only, and its notes say why; nor is influence computed for an
//!   inference handled more than the worker's `influence_max_lag` after its completion (the
//!   worker is behind: it attributes span-only until it has caught up, notes saying so);
//! - a contribution is paid to the bond account it named, else to its contributor's earnings
//!   account (`openledger_core::fee::earnings_account_id`), which the event leaves as 0 for the
//!   ledger to resolve and the receipt names.

use std::{collections::HashMap, sync::Arc, time::Duration};

use openledger_attribution::{
    attribute::{Attributor, Explained, Influence},
    blend::Method,
    credit::CreditParams,
    influence::Estimator,
    span::SpanParams,
};
use openledger_core::{ContentHash, ErrorCode, fee::earnings_account_id};
use openledger_proto::{
    common::v1::Hash,
    events::v1::{AttributionComputed, AttributionWeight, InferenceAdapter, InferenceCompleted},
    u128_of, uint128,
};
use openledger_store::{NewEvent, now_ms, outbox::enqueue};
use parking_lot::Mutex;
use prost::Message;
use sea_orm::{DatabaseConnection, EntityTrait, Set, TransactionTrait, sea_query::OnConflict};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::{
    WorkerError,
    entities::attribution,
    gradients::{AdapterGradients, gradient_index_id},
    indexes::{FAILED, Indexes, Version, VersionRef},
    limits::{INDEX_WAIT, RETRY_DELAY},
    receipt::{CHOICE_SEPARATOR, RECEIPT_FORMAT, Receipt, ReceiptParameters, ReceiptWeight, token_hash},
    upstream::{AdapterLineage, Upstream},
};

pub const SUBJECT_COMPUTED: &str = "ol.attribution.computed";
pub const PRODUCER: &str = "attribution-worker";
pub const COMPLETE: &str = "complete";
pub const PARTIAL: &str = "partial";
/// Longest inference id accepted (the column's width).
pub const MAX_INFERENCE_ID_BYTES: usize = 128;
/// How a gradient index is read for attribution: the estimator `openledger attribution score`
/// and contributor quality default to.
pub const INFLUENCE_ESTIMATOR: Estimator = openledger_attribution::quality::DEFAULT_QUALITY_ESTIMATOR;

/// What handling an inference came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Attributed,
    /// Attributed before (a redelivery): nothing changed.
    AlreadyAttributed,
    /// The version's index is being built: try again after this long.
    Wait(Duration),
}

/// The inputs a receipt hashes, kept for whoever verifies it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inputs {
    pub prompt_text: String,
    pub prompt_token_ids: Vec<u32>,
    pub completions: Vec<InputCompletion>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputCompletion {
    pub text: String,
    pub token_ids: Vec<u32>,
}

impl Inputs {
    /// The text attributed.
    pub fn completion_text(&self) -> String {
        self.completions.iter().map(|c| c.text.as_str()).collect::<Vec<_>>().join(CHOICE_SEPARATOR)
    }

    /// The prompt as attribution sees it (`None` when empty).
    pub fn prompt(&self) -> Option<&str> {
        (!self.prompt_text.is_empty()).then_some(self.prompt_text.as_str())
    }
}

/// The method's name as receipts and events spell it.
pub fn method_name(method: Method) -> &'static str {
    match method {
        Method::SpanMatch => "span_match",
        Method::GradientInfluence => "gradient_influence",
        Method::Blended => "blended",
    }
}

/// Attributes `inputs` against `version` with the receipt's parameters, and with the adapter's
/// gradient index read by an estimator when given: what the worker runs and what `verify` runs
/// again.
pub fn attribute_text(
    version: &Version,
    inputs: &Inputs,
    parameters: &ReceiptParameters,
    influence: Option<(&AdapterGradients, Estimator)>,
) -> Result<Explained, WorkerError> {
    if parameters.credit_params() != CreditParams::default() {
        return Err(WorkerError::new(
            ErrorCode::FailedPrecondition,
            "the receipt names credit parameters this worker does not build its groups with",
        ));
    }
    let attributor = Attributor {
        corpus: &version.corpus,
        groups: &version.groups,
        tokenizer: &version.tokenizer,
        spans: &version.spans,
        span_params: parameters.span_params(),
        influence: influence.map(|(gradients, estimator)| Influence {
            gradients: &gradients.gradients,
            probe: &gradients.probe,
            estimator,
        }),
    };
    attributor.attribute(inputs.prompt(), &inputs.completion_text()).map_err(WorkerError::attribution)
}

/// [`attribute_text`] on a blocking thread (the model's compute must not hold the runtime).
async fn attribute_blocking(
    version: &Arc<Version>,
    inputs: &Inputs,
    parameters: &ReceiptParameters,
    gradients: Option<Arc<AdapterGradients>>,
) -> Result<Result<Explained, WorkerError>, WorkerError> {
    let (version, inputs, parameters) = (version.clone(), inputs.clone(), parameters.clone());
    tokio::task::spawn_blocking(move || {
        let influence = gradients.as_deref().map(|g| (g, INFLUENCE_ESTIMATOR));
        attribute_text(&version, &inputs, &parameters, influence)
    })
    .await
    .map_err(WorkerError::internal)
}

/// The receipt's weights: each contribution's weight and the account it is paid to.
pub fn receipt_weights(version: &Version, explained: &Explained) -> Vec<ReceiptWeight> {
    explained
        .attribution
        .weights
        .iter()
        .map(|w| ReceiptWeight {
            contribution: w.contribution.clone(),
            contributor: w.contributor.clone(),
            account: version
                .accounts
                .get(&w.contribution)
                .copied()
                .unwrap_or_else(|| earnings_account_id(&hex::decode(&w.contributor).unwrap_or_default()))
                .to_string(),
            weight_ppb: w.weight_ppb,
        })
        .collect()
}

/// One span as stored and answered: where it is in the output, the record credited and its
/// contribution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredSpan {
    pub start: usize,
    pub end: usize,
    pub tokens: usize,
    pub occurrences: u64,
    /// The record's content hash, hex.
    pub record: String,
    pub contribution: String,
}

/// What is stored beside the weights: the spans (with their contributions) and the most
/// influential records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub spans: Vec<StoredSpan>,
    pub top_records: Vec<openledger_attribution::blend::RecordScore>,
}

pub fn stored_explanation(version: &Version, explained: &Explained) -> Explanation {
    let spans = explained
        .attribution
        .spans
        .iter()
        .map(|span| StoredSpan {
            start: span.start,
            end: span.end,
            tokens: span.tokens,
            occurrences: span.occurrences,
            record: span.record.to_hex(),
            contribution: version
                .corpus
                .position_of(&span.record)
                .map(|i| version.corpus.records[i].contribution.clone())
                .unwrap_or_default(),
        })
        .collect();
    Explanation { spans, top_records: explained.top_records.clone() }
}

/// Attributes paid inferences.
pub struct Attributions {
    db: DatabaseConnection,
    indexes: Arc<Indexes>,
    upstream: Arc<dyn Upstream>,
    outbox_wake: Option<Arc<Notify>>,
    adapters: Mutex<HashMap<String, AdapterLineage>>,
    /// Inferences older than this when handled are attributed span-only; zero: never.
    influence_max_lag: Duration,
}

/// How long before `now_ms` the inference completed: the gateway's completion time by this
/// worker's clock (the hosts' clocks are taken to agree, as NTP keeps them); 0 for an event
/// without one (refused by `handle`).
fn age_ms(event: &InferenceCompleted, now_ms: i64) -> i64 {
    event.completed_at.as_ref().map_or(0, |at| now_ms.saturating_sub(openledger_proto::unix_ms(at)))
}

/// A stored value as JSON text.
fn json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("stored values always serialise")
}

impl Attributions {
    pub fn new(
        db: DatabaseConnection,
        indexes: Arc<Indexes>,
        upstream: Arc<dyn Upstream>,
        outbox_wake: Option<Arc<Notify>>,
    ) -> Self {
        Self {
            db,
            indexes,
            upstream,
            outbox_wake,
            adapters: Mutex::new(HashMap::new()),
            influence_max_lag: crate::limits::INFLUENCE_MAX_LAG,
        }
    }

    /// Computes influence only for inferences at most `lag` old when their turn comes (zero:
    /// any): a worker that falls behind attributes span-only, in milliseconds each, until it
    /// has caught up, so the lag from inference to settlement stays bounded whatever the
    /// engines it follows answer.
    pub fn with_influence_max_lag(mut self, lag: Duration) -> Self {
        self.influence_max_lag = lag;
        self
    }

    pub fn db(&self) -> DatabaseConnection {
        self.db.clone()
    }

    /// The ready version an adapter was trained on (what `Attribute` reads).
    pub async fn version_of(&self, adapter_id: &str) -> Result<Arc<Version>, WorkerError> {
        let lineage = self
            .lineage(adapter_id)
            .await?
            .ok_or_else(|| WorkerError::new(ErrorCode::NotFound, format!("no adapter {adapter_id:?}")))?;
        if lineage.snapshot_id.is_empty() {
            return Err(WorkerError::new(
                ErrorCode::FailedPrecondition,
                format!("adapter {adapter_id:?} names no Datanet version it was trained on"),
            ));
        }
        self.indexes.version(&lineage.snapshot_id).await?.ok_or_else(|| {
            WorkerError::new(
                ErrorCode::FailedPrecondition,
                format!("the span index of version {:?} is not ready", lineage.snapshot_id),
            )
        })
    }

    async fn lineage(&self, adapter_id: &str) -> Result<Option<AdapterLineage>, WorkerError> {
        if let Some(found) = self.adapters.lock().get(adapter_id) {
            return Ok(Some(found.clone()));
        }
        let found = self.upstream.adapter(adapter_id).await?;
        if let Some(found) = &found {
            self.adapters.lock().insert(adapter_id.to_owned(), found.clone());
        }
        Ok(found)
    }

    /// Attributes one paid inference (see the module doc); `now_ms` decides whether it still
    /// waits for its index.
    pub async fn handle(&self, event: &InferenceCompleted, now_ms: i64) -> Result<Outcome, WorkerError> {
        let id = &event.inference_id;
        if id.is_empty() || id.len() > MAX_INFERENCE_ID_BYTES {
            return Err(WorkerError::new(
                ErrorCode::InvalidArgument,
                format!("inference id {id:?} must be 1..={MAX_INFERENCE_ID_BYTES} bytes"),
            ));
        }
        if event.completed_at.is_none() {
            return Err(WorkerError::new(
                ErrorCode::InvalidArgument,
                format!("inference {id:?} names no completion time"),
            ));
        }
        if attribution::Entity::find_by_id(id.as_str()).one(&self.db).await?.is_some() {
            return Ok(Outcome::AlreadyAttributed);
        }
        let age_ms = age_ms(event, now_ms);
        let adapter = event.adapters.first();
        let lineage = match adapter {
            Some(adapter) => self.lineage(&adapter.adapter_id).await?,
            None => None,
        };
        let mut notes = Vec::new();
        let mut completeness = COMPLETE;
        let mut version = None;
        match (&adapter, &lineage) {
            (None, _) => notes.push("the base model alone answered: no Datanet version to attribute to".to_owned()),
            (Some(adapter), None) => notes.push(format!("adapter {:?} is not in the registry", adapter.adapter_id)),
            (Some(_), Some(lineage)) if lineage.snapshot_id.is_empty() => {
                notes.push(format!("adapter {:?} names no Datanet version it was trained on", lineage.id))
            }
            (Some(_), Some(lineage)) => match self.indexes.version(&lineage.snapshot_id).await? {
                Some(found) => version = Some(found),
                None => {
                    let root = lineage.snapshot_root.ok_or_else(|| {
                        WorkerError::new(ErrorCode::Internal, "the adapter names a version without its root")
                    })?;
                    let row = self
                        .indexes
                        .request(&VersionRef {
                            datanet_id: lineage.datanet_id.clone(),
                            snapshot_id: lineage.snapshot_id.clone(),
                            root,
                            version: 0,
                        })
                        .await?;
                    if row.state != FAILED && age_ms < INDEX_WAIT.as_millis() as i64 {
                        return Ok(Outcome::Wait(RETRY_DELAY));
                    }
                    completeness = PARTIAL;
                    notes.push(format!(
                        "the span index of version {} was {} after {} s: attributed without it, so the contributors' \
                         share goes to the treasury",
                        lineage.snapshot_id,
                        row.state,
                        INDEX_WAIT.as_secs()
                    ));
                }
            },
        }
        let inputs = Inputs {
            prompt_text: event.prompt_text.clone(),
            prompt_token_ids: event.prompt_token_ids.clone(),
            completions: event
                .completions
                .iter()
                .map(|c| InputCompletion { text: c.text.clone(), token_ids: c.token_ids.clone() })
                .collect(),
        };
        let max_lag_ms = i64::try_from(self.influence_max_lag.as_millis()).unwrap_or(i64::MAX);
        let mut gradients = match (adapter, &version) {
            (Some(_), Some(_)) if max_lag_ms > 0 && age_ms > max_lag_ms => {
                notes.push(format!(
                    "attributed {:.1} s after it completed, behind the {:.1} s within which influence is \
                     computed: attributed span-only so the worker catches up",
                    age_ms as f64 / 1000.0,
                    max_lag_ms as f64 / 1000.0
                ));
                None
            }
            (Some(adapter), Some(_)) => self.gradients_for(adapter, &mut notes).await,
            _ => None,
        };
        let parameters = ReceiptParameters::of(&SpanParams::default(), &CreditParams::default());
        let explained = match &version {
            Some(found) => {
                let mut attributed = attribute_blocking(found, &inputs, &parameters, gradients.clone()).await?;
                if let Err(error) = &attributed
                    && error.code == ErrorCode::InvalidArgument
                    && gradients.is_some()
                {
                    // An output the probe refuses (too long, say) is still attributed by its spans.
                    notes.push(format!(
                        "influence cannot be computed for this output ({}): attributed span-only",
                        error
                    ));
                    gradients = None;
                    attributed = attribute_blocking(found, &inputs, &parameters, None).await?;
                }
                match attributed {
                    Ok(explained) => Some(explained),
                    Err(error) if error.code == ErrorCode::InvalidArgument => {
                        notes.push(format!("the output cannot be attributed: {}", error.message));
                        None
                    }
                    Err(error) => return Err(error),
                }
            }
            None => None,
        };
        let weights = match (&version, &explained) {
            (Some(found), Some(explained)) => receipt_weights(found, explained),
            _ => Vec::new(),
        };
        let method = explained.as_ref().map_or(Method::SpanMatch, |e| e.attribution.method);
        if let Some(explained) = &explained {
            notes.extend(explained.attribution.notes.iter().cloned());
        }
        let owner = adapter.map(|a| u128_of(a.owner_account_id.as_ref())).filter(|owner| *owner != 0);
        let receipt = Receipt {
            format: RECEIPT_FORMAT.into(),
            inference_id: id.clone(),
            base_model_hash: event.base_model_hash.as_ref().map(|h| hex::encode(&h.value)).unwrap_or_default(),
            prompt_tokens: token_hash(&inputs.prompt_token_ids),
            completion_tokens: inputs.completions.iter().map(|c| token_hash(&c.token_ids)).collect(),
            completion_text: ContentHash::of(inputs.completion_text().as_bytes()).to_hex(),
            adapter_id: adapter.map(|a| a.adapter_id.clone()).unwrap_or_default(),
            adapter_files: adapter
                .map(|a| a.file_hashes.iter().map(|h| hex::encode(&h.value)).collect())
                .unwrap_or_default(),
            datanet_id: lineage.as_ref().map(|l| l.datanet_id.clone()).unwrap_or_default(),
            snapshot_id: lineage.as_ref().map(|l| l.snapshot_id.clone()).unwrap_or_default(),
            snapshot_root: lineage.as_ref().and_then(|l| l.snapshot_root).map(|r| r.to_hex()).unwrap_or_default(),
            span_index: version.as_ref().map(|v| v.files_hash.to_hex()).unwrap_or_default(),
            gradient_index: gradients.as_ref().map(|g| g.files_hash.to_hex()).unwrap_or_default(),
            estimator: gradients.as_ref().map(|_| INFLUENCE_ESTIMATOR.name().to_owned()).unwrap_or_default(),
            method: method_name(method).into(),
            method_version: openledger_attribution::METHOD_VERSION.into(),
            parameters,
            weights,
            model_owner_account: owner.map(|o| o.to_string()).unwrap_or_default(),
            completeness: completeness.into(),
        };
        let explanation = match (&version, &explained) {
            (Some(found), Some(explained)) => Some(stored_explanation(found, explained)),
            _ => None,
        };
        self.store(event, &receipt, &inputs, explained.as_ref(), explanation.as_ref(), &notes).await
    }

    /// The adapter's gradient index when it is ready and was built for the files the inference
    /// names; else `None`, and a note saying why the attribution is span-only.
    async fn gradients_for(
        &self,
        adapter: &InferenceAdapter,
        notes: &mut Vec<String>,
    ) -> Option<Arc<AdapterGradients>> {
        let id = &adapter.adapter_id;
        match self.indexes.gradients(id).await {
            Ok(Some(found)) => {
                let named: Vec<String> = adapter.file_hashes.iter().map(|h| hex::encode(&h.value)).collect();
                if named == found.adapter_files {
                    return Some(found);
                }
                notes.push(format!(
                    "the inference names other files of adapter {id:?} than its gradient index was built for: \
                     attributed span-only"
                ));
            }
            Ok(None) => match self.indexes.row(&gradient_index_id(id)).await {
                Ok(Some(row)) => {
                    notes.push(format!("the gradient index of adapter {id:?} was {}: attributed span-only", row.state))
                }
                Ok(None) => notes.push(format!(
                    "adapter {id:?} has no gradient index (registered without lineage): attributed span-only"
                )),
                Err(error) => {
                    notes.push(format!("the gradient index of adapter {id:?}: {error}: attributed span-only"))
                }
            },
            Err(error) => {
                tracing::warn!(adapter = %id, %error, "opening the gradient index failed; attributing span-only");
                notes.push(format!(
                    "the gradient index of adapter {id:?} cannot be read ({error}): attributed span-only"
                ));
            }
        }
        None
    }

    async fn store(
        &self,
        event: &InferenceCompleted,
        receipt: &Receipt,
        inputs: &Inputs,
        explained: Option<&Explained>,
        explanation: Option<&Explanation>,
        notes: &[String],
    ) -> Result<Outcome, WorkerError> {
        let bytes = receipt.canonical_bytes();
        let hash = receipt.hash();
        let row = attribution::ActiveModel {
            inference_id: Set(receipt.inference_id.clone()),
            adapter_id: Set(receipt.adapter_id.clone()),
            datanet_id: Set(receipt.datanet_id.clone()),
            snapshot_id: Set(receipt.snapshot_id.clone()),
            method: Set(receipt.method.clone()),
            method_version: Set(receipt.method_version.clone()),
            weights: Set(json(&receipt.weights)),
            explained: Set(explanation.map_or_else(|| "null".to_owned(), json)),
            notes: Set(json(notes)),
            span_coverage_ppm: Set(explained.map_or(0, |e| i64::from(e.attribution.span_coverage_ppm))),
            completeness: Set(receipt.completeness.clone()),
            model_owner_account: Set(receipt.model_owner_account.clone()),
            app_account: Set(u128_of(event.app_account_id.as_ref()).to_string()),
            inputs: Set(json(inputs)),
            receipt: Set(bytes),
            receipt_hash: Set(hash.as_bytes().to_vec()),
            batch_sequence: Set(None),
            leaf_index: Set(None),
            created_at_ms: Set(now_ms()),
        };
        let computed = AttributionComputed {
            inference_id: receipt.inference_id.clone(),
            method: receipt.method.clone(),
            weights: receipt
                .weights
                .iter()
                .zip(explained.map(|e| e.attribution.weights.as_slice()).unwrap_or_default())
                .map(|(paid, weight)| AttributionWeight {
                    contribution_id: paid.contribution.clone(),
                    contributor: hex::decode(&weight.contributor).unwrap_or_default(),
                    weight_ppb: weight.weight_ppb as i64,
                    // The bond account when the contribution named one; 0: the ledger pays the
                    // contributor's earnings account.
                    contributor_account_id: self_bond(paid, &weight.contributor),
                })
                .collect(),
            batch_proof: None,
            model_owner_account_id: receipt.model_owner_account.parse::<u128>().ok().and_then(uint128),
            receipt_hash: Some(Hash { value: hash.as_bytes().to_vec() }),
            adapter_id: receipt.adapter_id.clone(),
            snapshot_id: receipt.snapshot_id.clone(),
            method_version: receipt.method_version.clone(),
        };
        let txn = self.db.begin().await?;
        let inserted = attribution::Entity::insert(row)
            .on_conflict(OnConflict::column(attribution::Column::InferenceId).do_nothing().to_owned())
            .exec_without_returning(&txn)
            .await?;
        if inserted == 0 {
            txn.rollback().await?;
            return Ok(Outcome::AlreadyAttributed);
        }
        enqueue(&txn, PRODUCER, NewEvent::new(SUBJECT_COMPUTED, computed.encode_to_vec()))
            .await
            .map_err(|e| WorkerError::new(ErrorCode::Internal, e.to_string()))?;
        txn.commit().await?;
        if let Some(wake) = &self.outbox_wake {
            wake.notify_one();
        }
        tracing::info!(
            inference_id = %receipt.inference_id,
            method = %receipt.method,
            contributions = receipt.weights.len(),
            completeness = %receipt.completeness,
            lag_ms = age_ms(event, now_ms()),
            "inference attributed"
        );
        Ok(Outcome::Attributed)
    }
}

/// The account an event names for a paid contribution: its bond account, or `None` (0) when
/// it is the contributor's earnings account, which the ledger resolves from the key.
fn self_bond(paid: &ReceiptWeight, contributor_hex: &str) -> Option<openledger_proto::common::v1::Uint128> {
    let account: u128 = paid.account.parse().unwrap_or(0);
    let earnings = earnings_account_id(&hex::decode(contributor_hex).unwrap_or_default());
    (account != earnings).then(|| account.into())
}
