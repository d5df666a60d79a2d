//! `openledger attribution …`: Proof of Attribution on this machine, over a Datanet version
//! exported with `openledger datanet export`: build its span index (and an adapter's gradient
//! index), trace any text to the records it quotes, attribute one output to contributions, and
//! report contributor quality; and measure how well all of it works (`evaluate`). Every command
//! prints a table, or JSON with `--json`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use openledger_attribution::attribute::{Attributor, Explained, Influence};
use openledger_attribution::corpus::Corpus;
use openledger_attribution::credit::{CreditGroups, CreditParams};
use openledger_attribution::influence::{Estimator, GradientIndex, Probing, default_first_layer};
use openledger_attribution::quality::{self, DEFAULT_QUALITY_ESTIMATOR, DEFAULT_SLASHING_THRESHOLD, QualityReport};
use openledger_attribution::span::{SpanIndex, SpanParams};
use openledger_ml::AdapterPrecision;
use openledger_ml::adapters::load_adapter_dir_as;
use openledger_ml::train::grads::{Projection, ProjectionKind};

use crate::model::{bar, compute, load};

/// The span index's directory inside an export unless `--span-index` says otherwise.
const SPAN_INDEX_DIR: &str = "span-index";
/// Tokens per span-index shard: about 1.5 GB of suffix array per shard at 6 bytes per token.
const DEFAULT_SHARD_TOKENS: usize = 256 * 1024 * 1024;

#[derive(Subcommand)]
pub enum AttributionCommand {
    /// Build the indexes attribution reads
    #[command(subcommand)]
    Index(IndexCommand),
    /// Find the spans of a text that occur verbatim in the version, and the records holding them
    Trace {
        #[command(flatten)]
        version: VersionArgs,
        /// The text to trace
        text: String,
        #[arg(long)]
        json: bool,
    },
    /// Attribute one output (a prompt and its completion) to contributions: weights in parts per billion
    Score {
        #[command(flatten)]
        version: VersionArgs,
        /// The adapter that produced the output; influence is used when it has a gradient index
        #[arg(long, value_name = "DIR")]
        adapter: Option<PathBuf>,
        #[arg(long)]
        prompt: Option<String>,
        #[arg(long)]
        completion: String,
        /// tracin, cosine, datainf or datainf_normalized
        #[arg(long, default_value = DEFAULT_QUALITY_ESTIMATOR.name())]
        estimator: Estimator,
        #[arg(long)]
        json: bool,
    },
    /// Contributor quality: each training record's influence on a validation loss, per
    /// contribution and contributor, with slashing candidates
    Quality {
        #[command(flatten)]
        version: VersionArgs,
        #[arg(long, value_name = "DIR")]
        adapter: PathBuf,
        /// A trusted validation set (JSONL records of the training kind); else the adapter's held-out split
        #[arg(long, value_name = "FILE")]
        validation: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_QUALITY_ESTIMATOR.name())]
        estimator: Estimator,
        /// Contributions scoring below this (in deviations from the typical record) are slashing candidates
        #[arg(long, default_value_t = DEFAULT_SLASHING_THRESHOLD, allow_negative_numbers = true)]
        threshold: f64,
        #[arg(long)]
        json: bool,
    },
    /// Check a paid inference's attribution from outside: its receipt is canonical and
    /// published, its inputs are the ones hashed, the weights recomputed from the version are
    /// the receipt's, and the receipt is in a batch whose root the ledger's journal recorded
    /// (and the journal verifies). Prints each check; stops at the first difference.
    Verify(VerifyArgs),
    /// Measure attribution on a generated labelled corpus split among honest, label-flipping,
    /// off-domain, spam and copying contributors: detection AUC and LDS per estimator next to
    /// KNN-Shapley and random, payout inflation under copies, verbatim credit
    Evaluate {
        /// A base model to fine-tune (a .gguf file, a checkpoint directory or hf://owner/name);
        /// without it, a tiny random model (the CI-size run, seconds)
        #[arg(long)]
        base: Option<String>,
        /// all-MiniLM-L6-v2's directory, for KNN-Shapley on sentence embeddings
        #[arg(long, value_name = "DIR")]
        minilm: Option<PathBuf>,
        /// Random half subsets retrained for the LDS (0 skips it; each is a fine-tuning run)
        #[arg(long, default_value_t = 8)]
        subsets: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Keep adapters here (a rerun with the same settings reuses them) [default: a temporary directory]
        #[arg(long, value_name = "DIR")]
        work_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

/// What `verify` reads besides the services.
#[derive(Args)]
pub struct VerifyArgs {
    /// The paid inference (its response's `attribution.inference_id`)
    inference_id: String,
    /// gRPC URL of the attribution-worker [default: the local port]
    #[arg(long, value_name = "URL")]
    attribution_url: Option<String>,
    /// gRPC URL of the ledger [default: the local port]
    #[arg(long, value_name = "URL")]
    ledger_url: Option<String>,
    /// The version to recompute the weights with (the worker's copy, or `datanet export` +
    /// its span index) [default: DATA_DIR/attribution/versions/<snapshot id>]
    #[arg(long, value_name = "DIR")]
    version_dir: Option<PathBuf>,
    /// The base model whose tokenizer indexed the version [default: the configured or packaged one]
    #[arg(long)]
    base: Option<String>,
}

#[derive(Subcommand)]
pub enum IndexCommand {
    /// Build the span index of an exported version and, with --adapter, the adapter's gradient index
    Build {
        #[command(flatten)]
        version: VersionArgs,
        /// Also build this adapter's gradient index (into DIR/gradient-index)
        #[arg(long, value_name = "DIR")]
        adapter: Option<PathBuf>,
        /// Tokens per span-index shard
        #[arg(long, default_value_t = DEFAULT_SHARD_TOKENS)]
        shard_tokens: usize,
        /// Project each layer's gradient to this many dimensions (a multiple of 2 × rank × targets); none keeps them whole
        #[arg(long)]
        project: Option<usize>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Index the gradients of the layers from this one on (0-based; the earlier layers run
        /// forward only: a smaller index, faster probes); 0 keeps every layer [default: the upper
        /// half, as the platform's indexes]
        #[arg(long)]
        from_layer: Option<usize>,
    },
}

/// Which version and base model a command works on.
#[derive(Args)]
pub struct VersionArgs {
    /// The export directory (`openledger datanet export … --out DIR`)
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// The base model (its tokenizer indexes the text): a .gguf file, a checkpoint directory or hf://owner/name
    #[arg(long)]
    base: String,
    /// The span index directory [default: DATA/span-index]
    #[arg(long, value_name = "DIR")]
    span_index: Option<PathBuf>,
}

impl VersionArgs {
    fn span_dir(&self) -> PathBuf {
        self.span_index.clone().unwrap_or_else(|| self.data.join(SPAN_INDEX_DIR))
    }

    fn corpus(&self) -> anyhow::Result<Corpus> {
        Corpus::read_export(&self.data).with_context(|| format!("reading the export {}", self.data.display()))
    }
}

pub async fn run(command: AttributionCommand, config: &openledger_core::Config) -> anyhow::Result<bool> {
    match command {
        AttributionCommand::Verify(args) => verify(args, config).await,
        AttributionCommand::Index(IndexCommand::Build {
            version,
            adapter,
            shard_tokens,
            project,
            seed,
            from_layer,
        }) => {
            let projection = project.map(|dim| Projection { kind: ProjectionKind::Rademacher, dim, seed });
            build(&version, adapter.as_deref(), shard_tokens, projection, from_layer).await
        }
        AttributionCommand::Trace { version, text, json } => trace(&version, &text, json).await,
        AttributionCommand::Score { version, adapter, prompt, completion, estimator, json } => {
            score(&version, adapter, prompt, completion, estimator, json).await
        }
        AttributionCommand::Quality { version, adapter, validation, estimator, threshold, json } => {
            assess(&version, adapter, validation, estimator, threshold, json).await
        }
        AttributionCommand::Evaluate { base, minilm, subsets, seed, work_dir, json } => {
            run_evaluation(base, minilm, subsets, seed, work_dir, json).await
        }
    }
}

async fn run_evaluation(
    base: Option<String>,
    minilm: Option<PathBuf>,
    subsets: usize,
    seed: u64,
    work_dir: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<bool> {
    use openledger_attribution::evaluate::{EvaluationSpec, evaluate};

    let temporary = tempfile::tempdir()?;
    let work = work_dir.unwrap_or_else(|| temporary.path().to_path_buf());
    let spec = match base {
        Some(base) => {
            let source: openledger_ml::Source = base.parse()?;
            let path = source.resolve_model().await.with_context(|| format!("resolving {source}"))?;
            EvaluationSpec::bench(work, path, minilm, subsets, seed)
        }
        None => EvaluationSpec { subsets, minilm, ..EvaluationSpec::ci(work, seed) },
    };
    let progress = bar(0, "{msg:>10} {bar:30} {pos}/{len} [{elapsed}]");
    let p = progress.clone();
    let report = compute(None, move || {
        Ok(evaluate(&spec, &mut |stage, done, total| {
            p.set_message(stage.to_string());
            p.set_length(total);
            p.set_position(done);
        })?)
    })
    .await;
    progress.finish_and_clear();
    let report = report?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(true)
}

async fn build(
    version: &VersionArgs,
    adapter: Option<&Path>,
    shard_tokens: usize,
    projection: Option<Projection>,
    from_layer: Option<usize>,
) -> anyhow::Result<bool> {
    let corpus = version.corpus()?;
    let (model, tokenizer) = load(&version.base).await?;
    let layers = model.config().num_layers;
    let first_layer = from_layer.unwrap_or_else(|| default_first_layer(layers));
    if adapter.is_some() && first_layer >= layers {
        anyhow::bail!(
            "--from-layer {first_layer}: the base model has {layers} layers (0-based, so at most {})",
            layers - 1
        );
    }
    let probing = Probing { projection, first_layer };
    let span_dir = version.span_dir();
    let spans = bar(corpus.records.len() as u64, "span index {bar:30} {pos}/{len} records [{elapsed} < {eta}]");
    let gradients = bar(0, "gradient index {bar:30} {pos}/{len} records [{elapsed} < {eta}] {per_sec}");
    let (p, q) = (spans.clone(), gradients.clone());
    let (out, adapter_dir, data) = (span_dir.clone(), adapter.map(Path::to_path_buf), version.data.clone());
    let built = compute(None, move || {
        let header = SpanIndex::build(&corpus, &tokenizer, &out, shard_tokens, &mut |done, total| {
            p.set_length(total);
            p.set_position(done);
        })?;
        p.finish_and_clear();
        println!("span index of {} in {}: {} tokens", corpus.name, out.display(), header.tokens);
        let Some(adapter_dir) = adapter_dir else { return Ok(None) };
        let index_dir = GradientIndex::default_dir(&adapter_dir);
        let index =
            GradientIndex::build(&model, &tokenizer, &adapter_dir, &data, &index_dir, probing, &mut |done, total| {
                q.set_length(total as u64);
                q.set_position(done as u64);
            })?;
        Ok(Some((index_dir, index.len(), index.bytes_per_record())))
    })
    .await;
    spans.finish_and_clear();
    gradients.finish_and_clear();
    if let Some((dir, records, bytes)) = built? {
        println!(
            "gradient index in {}: {records} records, {bytes} bytes each (layers from {first_layer})",
            dir.display()
        );
    }
    Ok(true)
}

async fn trace(version: &VersionArgs, text: &str, json: bool) -> anyhow::Result<bool> {
    let corpus = version.corpus()?;
    let (_, tokenizer) = load(&version.base).await?;
    let index = SpanIndex::open_for(&version.span_dir(), &tokenizer)?;
    let spans = index.trace(&tokenizer, text, &SpanParams::default())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&spans)?);
        return Ok(true);
    }
    if spans.is_empty() {
        println!(
            "no span of {} or more tokens occurs verbatim in {}",
            SpanParams::default().min_span_tokens,
            corpus.name
        );
    }
    for span in &spans {
        let record = corpus.position_of(&span.record).map(|i| &corpus.records[i]);
        println!(
            "{:?}  ({} tokens, {} occurrences) first in record {} of contribution {} by {}",
            &text[span.start..span.end],
            span.tokens,
            span.occurrences,
            span.record,
            record.map_or("?", |r| r.contribution.as_str()),
            record.map_or("?", |r| r.contributor.as_str()),
        );
    }
    Ok(true)
}

async fn score(
    version: &VersionArgs,
    adapter: Option<PathBuf>,
    prompt: Option<String>,
    completion: String,
    estimator: Estimator,
    json: bool,
) -> anyhow::Result<bool> {
    let corpus = version.corpus()?;
    let (model, tokenizer) = load(&version.base).await?;
    let spans = SpanIndex::open_for(&version.span_dir(), &tokenizer)?;
    let index = match &adapter {
        Some(dir) => GradientIndex::find(&GradientIndex::default_dir(dir))?,
        None => None,
    };
    let explained = compute(None, move || {
        let groups = CreditGroups::build(&corpus, &CreditParams::default())?;
        let mut attributor = Attributor {
            corpus: &corpus,
            groups: &groups,
            tokenizer: &tokenizer,
            spans: &spans,
            span_params: SpanParams::default(),
            influence: None,
        };
        let explained = match (&index, &adapter) {
            (Some(index), Some(dir)) => {
                index.check_adapter(dir)?;
                let gradients = index.gradients()?;
                let weights = load_adapter_dir_as("attribution", dir, &model, AdapterPrecision::Exact)?;
                let probe = index.probing().probe(&model, &weights)?;
                attributor.influence = Some(Influence { gradients: &gradients, probe: &probe, estimator });
                attributor.attribute(prompt.as_deref(), &completion)?
            }
            _ => attributor.attribute(prompt.as_deref(), &completion)?,
        };
        Ok((explained, corpus))
    })
    .await?;
    let (explained, corpus) = explained;
    if json {
        println!("{}", serde_json::to_string_pretty(&explained)?);
    } else {
        print_attribution(&explained, &corpus);
    }
    Ok(true)
}

fn print_attribution(explained: &Explained, corpus: &Corpus) {
    let attribution = &explained.attribution;
    println!(
        "{:?} ({}), {:.1}% of the output in quoted spans",
        attribution.method,
        attribution.method_version,
        f64::from(attribution.span_coverage_ppm) / 1e4
    );
    for note in &attribution.notes {
        println!("  note: {note}");
    }
    println!("  {:>12}  {:<36}  contributor", "weight (ppb)", "contribution");
    for weight in &attribution.weights {
        println!("  {:>12}  {:<36}  {}", weight.weight_ppb, weight.contribution, weight.contributor);
    }
    for record in &explained.top_records {
        let found = corpus.position_of(&record.record).map(|i| &corpus.records[i]);
        println!(
            "  influence {:+.4e}  record {} ({})",
            record.score,
            record.record,
            found.map_or("?", |r| r.contribution.as_str())
        );
    }
}

async fn assess(
    version: &VersionArgs,
    adapter: PathBuf,
    validation: Option<PathBuf>,
    estimator: Estimator,
    threshold: f64,
    json: bool,
) -> anyhow::Result<bool> {
    let (model, tokenizer) = load(&version.base).await?;
    let index = GradientIndex::find(&GradientIndex::default_dir(&adapter))?.with_context(|| {
        format!(
            "{} has no gradient index: build it with `openledger attribution index build --adapter {}`",
            adapter.display(),
            adapter.display()
        )
    })?;
    let data = version.data.clone();
    let report: QualityReport = compute(None, move || {
        Ok(quality::assess(&model, &tokenizer, &adapter, &data, &index, validation.as_deref(), estimator, threshold)?)
    })
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(true);
    }
    println!("{} ({:?}), validated on {:?}", report.method, report.estimator, report.validation);
    println!("  {:>8}  {:>7}  contributor", "score", "records");
    for contributor in &report.contributors {
        println!("  {:>8.3}  {:>7}  {}", contributor.score, contributor.records, contributor.contributor);
    }
    println!("  slashing candidates (score below {}): {}", report.threshold, report.slashing_candidates.len());
    for id in &report.slashing_candidates {
        println!("    {id}");
    }
    Ok(true)
}

/// One check's outcome, printed as it is made.
fn report(name: &str, outcome: Result<String, String>) -> bool {
    match outcome {
        Ok(detail) => {
            println!("ok    {name}: {detail}");
            true
        }
        Err(difference) => {
            println!("FAIL  {name}: {difference}");
            false
        }
    }
}

async fn verify(args: VerifyArgs, config: &openledger_core::Config) -> anyhow::Result<bool> {
    use openledger_attribution_worker::{
        attribute::Inputs,
        gradients::open_adapter_gradients,
        indexes::version_dir,
        open_version,
        receipt::ReceiptWeight,
        verify::{check_answered, check_inclusion, check_inputs, check_receipt, check_recomputed_with},
    };
    use openledger_core::{ContentHash, MerkleProof, ServiceKind};
    use openledger_proto::{
        attribution::v1::{GetAttributionRequest, attribution_service_client::AttributionServiceClient},
        ledger::v1::{GetReceiptBatchRequest, VerifyJournalRequest, ledger_service_client::LedgerServiceClient},
    };

    let hash = |bytes: Option<&openledger_proto::common::v1::Hash>, what: &str| {
        bytes
            .and_then(|h| ContentHash::try_from(h.value.as_slice()).ok())
            .ok_or_else(|| anyhow::anyhow!("the answer carries no valid {what}"))
    };
    let channel = crate::service_channel(ServiceKind::AttributionWorker, args.attribution_url.clone(), config)?;
    let request =
        GetAttributionRequest { inference_id: args.inference_id.clone(), include_inputs: true, ..Default::default() };
    let answer = AttributionServiceClient::new(channel).get_attribution(request).await?.into_inner();
    let published = hash(answer.receipt_hash.as_ref(), "receipt hash")?;

    let receipt = check_receipt(&answer.receipt, &published);
    if !report(
        "receipt",
        receipt.as_ref().map(|r| format!("canonical, {} ({})", published, r.method)).map_err(Clone::clone),
    ) {
        return Ok(false);
    }
    let receipt = receipt.map_err(anyhow::Error::msg)?;
    let answered: Vec<ReceiptWeight> = answer
        .weights
        .iter()
        .map(|w| ReceiptWeight {
            contribution: w.contribution_id.clone(),
            contributor: hex::encode(&w.contributor),
            account: openledger_proto::u128_of(w.contributor_account_id.as_ref()).to_string(),
            weight_ppb: w.weight_ppb.max(0) as u64,
        })
        .collect();
    if !report(
        "weights",
        check_answered(&receipt, &answered).map(|()| format!("{} contributions, as in the receipt", answered.len())),
    ) {
        return Ok(false);
    }
    let inputs: Inputs = serde_json::from_str(&answer.inputs_json)
        .with_context(|| "the attribution-worker did not answer the inputs")?;
    if !report(
        "inputs",
        check_inputs(&receipt, &inputs).map(|()| "prompt and completion hash as in the receipt".into()),
    ) {
        return Ok(false);
    }
    if receipt.snapshot_id.is_empty() {
        report("recompute", Ok("no Datanet version behind this output: nothing to recompute".into()));
    } else {
        let dir = args
            .version_dir
            .clone()
            .unwrap_or_else(|| version_dir(&config.data_dir.join("attribution"), &receipt.snapshot_id));
        anyhow::ensure!(
            dir.exists(),
            "cannot recompute: no copy of version {} at {} (give --version-dir)",
            receipt.snapshot_id,
            dir.display()
        );
        let base = match &args.base {
            Some(base) => base.parse::<openledger_ml::Source>()?.resolve_model().await?,
            None => openledger_model_factory::base::BaseModels::from_config(config)
                .require()
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?
                .path
                .clone(),
        };
        let (receipt_copy, inputs_copy) = (receipt.clone(), inputs.clone());
        let worker_dir = config.data_dir.join("attribution");
        let checked = compute(None, move || {
            let tokenizer = std::sync::Arc::new(openledger_ml::source::load_tokenizer(&base)?);
            let version = open_version(&dir, tokenizer).map_err(|e| anyhow::anyhow!(e.message))?;
            // A receipt computed with influence is recomputed with the adapter's gradient index.
            let gradients = (!receipt_copy.gradient_index.is_empty())
                .then(|| open_adapter_gradients(&worker_dir, &receipt_copy.adapter_id, &base))
                .transpose()
                .map_err(|e| anyhow::anyhow!(e.message))?;
            Ok(check_recomputed_with(&receipt_copy, &inputs_copy, &version, gradients.as_ref()))
        })
        .await?;
        if !report("recompute", checked.map(|()| format!("the same weights from version {}", receipt.snapshot_id))) {
            return Ok(false);
        }
    }
    let Some(proof) = answer.batch_proof else {
        report("batch", Err("not batched yet (batches are sealed every second): try again".into()));
        return Ok(false);
    };
    let root = hash(proof.root.as_ref(), "batch root")?;
    let path: Vec<ContentHash> = proof.path.iter().map(|h| hash(Some(h), "proof hash")).collect::<Result<_, _>>()?;
    let merkle = MerkleProof { leaf_index: proof.leaf_index, tree_size: proof.tree_size, path };
    if !report(
        "inclusion",
        check_inclusion(&published, &merkle, &root)
            .map(|()| format!("leaf {} of {} in batch {}", proof.leaf_index, proof.tree_size, answer.batch_sequence)),
    ) {
        return Ok(false);
    }
    let mut ledger =
        LedgerServiceClient::new(crate::service_channel(ServiceKind::Ledger, args.ledger_url.clone(), config)?);
    let recorded = ledger.get_receipt_batch(GetReceiptBatchRequest { sequence: answer.batch_sequence }).await;
    let recorded = match recorded {
        Ok(recorded) => recorded.into_inner(),
        Err(status) => {
            report(
                "journal",
                Err(format!("the ledger has no record of batch {}: {}", answer.batch_sequence, status.message())),
            );
            return Ok(false);
        }
    };
    let recorded_root = hash(recorded.root.as_ref(), "recorded root")?;
    if !report(
        "journal",
        (recorded_root == root)
            .then(|| {
                format!("batch {} root recorded in journal entry {}", answer.batch_sequence, recorded.journal_sequence)
            })
            .ok_or_else(|| format!("the journal recorded root {recorded_root}, the proof leads to {root}")),
    ) {
        return Ok(false);
    }
    let books = ledger.verify_journal(VerifyJournalRequest {}).await?.into_inner();
    Ok(report(
        "books",
        if books.ok {
            Ok(format!("the journal's {} entries verify", books.entries_checked))
        } else {
            Err(format!("the journal does not verify from entry {}: {}", books.first_mismatch, books.detail))
        },
    ))
}
