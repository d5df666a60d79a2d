//! `openledger model …`: inspect a model and generate text with it (optionally through LoRA
//! adapters) on this machine, with the same engine the inference gateway hosts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use openledger_core::ContentHash;
use openledger_ml::AdapterPrecision;
use openledger_ml::adapters::AdapterSource;
use openledger_ml::adapters::{load_adapter_dir, load_adapter_dir_as};
use openledger_ml::lora::AdapterMix;
use openledger_ml::sampling::SamplingParams;
use openledger_ml::train::data::{Dataset, Tokenize, read_records};
use openledger_ml::train::grads::{GradDType, GradientProbe, Projection, ProjectionKind};
use openledger_ml::train::{
    Control, EvalReport, Finish, Footprint, TrainConfig, TrainEvent, TrainJob, available_bytes, evaluate, train,
};
use openledger_ml::{ChatMessage, Engine, EngineConfig, Event, GenerateRequest, Prompt, Source, Target, load_model};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Show a model's architecture, size, weight types, tokenizer and chat format
    Info {
        /// A .gguf file, a Hugging Face checkpoint directory, or hf://owner/name[@rev][:file]
        model: String,
    },
    /// Generate text, streaming it to the terminal, and print tokens/s
    Generate {
        /// A .gguf file, a Hugging Face checkpoint directory, or hf://owner/name[@rev][:file]
        #[arg(long)]
        model: String,
        /// A PEFT adapter directory or hf://owner/name, optionally with a mixing weight
        /// (`DIR=0.5`); repeat to mix adapters linearly
        #[arg(long = "adapter", value_name = "ADAPTER[=WEIGHT]")]
        adapters: Vec<String>,
        #[arg(long)]
        prompt: String,
        /// Wrap the prompt as a user turn in the model's chat format
        #[arg(long)]
        chat: bool,
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        /// 0 is greedy
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        /// 0 is no limit
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 1.0)]
        repetition_penalty: f32,
        #[arg(long)]
        seed: Option<u64>,
        /// Stop before this text (repeatable)
        #[arg(long)]
        stop: Vec<String>,
        /// Compute threads [default: all cores]
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Print the next-token logits after TOKENS as JSON {"tokens", "logits"} (for checks
    /// against other engines, e.g. bench/peft/interop.py)
    Logits {
        #[arg(long)]
        model: String,
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Comma-separated token ids
        #[arg(long)]
        tokens: String,
    },
    /// Fine-tune a LoRA adapter on a JSONL dataset (free text, instruction/response, chat or
    /// labelled text); writes a PEFT adapter, checkpoints and lineage.json to OUT
    Finetune {
        /// The base model: a .gguf file, a Hugging Face checkpoint directory, or hf://…
        #[arg(long)]
        base: String,
        /// JSONL records, one kind per file
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        train: TrainArgs,
        /// Continue from the newest checkpoint in OUT/checkpoints
        #[arg(long)]
        resume: bool,
    },
    /// Held-out loss, perplexity and (labelled data) accuracy of an adapter next to its base
    Eval {
        #[arg(long)]
        base: String,
        /// A PEFT adapter directory (omit to evaluate the base alone)
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[arg(long)]
        data: PathBuf,
        #[command(flatten)]
        data_args: DataArgs,
    },
    /// Per-example gradients of an adapter's LoRA parameters for every record of a dataset
    Grads {
        #[arg(long)]
        base: String,
        #[arg(long)]
        adapter: PathBuf,
        #[arg(long)]
        data: PathBuf,
        /// Output directory (header.json, grads.bin, index.bin)
        #[arg(long)]
        out: PathBuf,
        /// Project each layer's gradient to this many dimensions (a multiple of 2 × rank × targets)
        #[arg(long)]
        project: Option<usize>,
        /// rademacher or gaussian
        #[arg(long, default_value = "rademacher")]
        projection: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// f32 or bf16
        #[arg(long, default_value = "bf16")]
        dtype: String,
        #[command(flatten)]
        data_args: DataArgs,
    },
}

/// How records become examples.
#[derive(clap::Args, Clone)]
pub struct DataArgs {
    /// Padded tokens per batch
    #[arg(long, default_value_t = 2048)]
    batch_tokens: usize,
    /// Longest example in tokens [default: the model's context]
    #[arg(long)]
    max_seq_tokens: Option<usize>,
    /// Comma-separated label set for labelled data [default: the labels the data uses]
    #[arg(long)]
    labels: Option<String>,
    /// Compute threads [default: all cores]
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(clap::Args)]
pub struct TrainArgs {
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// [default: 2 × rank]
    #[arg(long)]
    alpha: Option<f64>,
    #[arg(long, default_value_t = 0.05)]
    dropout: f32,
    /// Comma-separated modules (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj or all-linear)
    #[arg(long, default_value = "q_proj,v_proj")]
    targets: String,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// [default: a tenth of the steps]
    #[arg(long)]
    warmup_steps: Option<u64>,
    #[arg(long)]
    max_steps: Option<u64>,
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// 0 turns clipping off
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Share of records held out for evaluation
    #[arg(long, default_value_t = 0.1)]
    eval_split: f64,
    /// Held-out records of their own (JSONL of the training data's kind): every training record
    /// trains and these are evaluated instead of an --eval-split share
    #[arg(long, conflicts_with = "eval_split")]
    validation: Option<PathBuf>,
    #[arg(long, default_value_t = 50)]
    eval_every: u64,
    /// Stop after this many evaluations without a better held-out loss
    #[arg(long)]
    patience: Option<usize>,
    #[arg(long, default_value_t = 100)]
    checkpoint_every: u64,
    #[command(flatten)]
    data: DataArgs,
}

impl TrainArgs {
    fn config(&self) -> anyhow::Result<TrainConfig> {
        let targets = if self.targets == "all-linear" {
            Target::ALL.to_vec()
        } else {
            self.targets
                .split(',')
                .map(|t| Target::from_module_name(t.trim()).with_context(|| format!("unknown target module {t:?}")))
                .collect::<anyhow::Result<Vec<_>>>()?
        };
        Ok(TrainConfig {
            rank: self.rank,
            alpha: self.alpha.unwrap_or(2.0 * self.rank as f64),
            dropout: self.dropout,
            targets,
            learning_rate: self.lr,
            weight_decay: self.weight_decay,
            warmup_steps: self.warmup_steps,
            epochs: self.epochs,
            max_steps: self.max_steps,
            batch_tokens: self.data.batch_tokens,
            grad_accum: self.grad_accum,
            max_grad_norm: self.max_grad_norm,
            seed: self.seed,
            eval_split: self.eval_split,
            eval_every: self.eval_every,
            early_stopping_patience: self.patience,
            checkpoint_every: self.checkpoint_every,
            max_seq_tokens: self.data.max_seq_tokens,
            ..TrainConfig::default()
        })
    }
}

pub async fn run(command: ModelCommand) -> anyhow::Result<bool> {
    match command {
        ModelCommand::Info { model } => info(&model).await,
        ModelCommand::Generate {
            model,
            adapters,
            prompt,
            chat,
            max_tokens,
            temperature,
            top_p,
            top_k,
            repetition_penalty,
            seed,
            stop,
            threads,
        } => {
            let sampling = SamplingParams { temperature, top_p, top_k, repetition_penalty, seed, ..Default::default() };
            let prompt =
                if chat { Prompt::Chat(vec![ChatMessage::new("user", &prompt)]) } else { Prompt::Text(prompt) };
            generate(
                &model,
                &adapters,
                GenerateRequest { prompt, adapters: Vec::new(), sampling, max_tokens, stop, logprobs: None },
                threads,
            )
            .await
        }
        ModelCommand::Logits { model, adapter, tokens } => logits(&model, adapter.as_deref(), &tokens).await,
        ModelCommand::Finetune { base, data, out, train, resume } => finetune(&base, &data, &out, &train, resume).await,
        ModelCommand::Eval { base, adapter, data, data_args } => {
            eval(&base, adapter.as_deref(), &data, &data_args).await
        }
        ModelCommand::Grads { base, adapter, data, out, project, projection, seed, dtype, data_args } => {
            let kind = match projection.as_str() {
                "rademacher" => ProjectionKind::Rademacher,
                "gaussian" => ProjectionKind::Gaussian,
                other => bail!("unknown projection {other:?}: rademacher or gaussian"),
            };
            let dtype = match dtype.as_str() {
                "f32" => GradDType::F32,
                "bf16" => GradDType::Bf16,
                other => bail!("unknown dtype {other:?}: f32 or bf16"),
            };
            let projection = project.map(|dim| Projection { kind, dim, seed });
            grads(&base, &adapter, &data, &out, projection, dtype, &data_args).await
        }
    }
}

async fn logits(model: &str, adapter: Option<&Path>, tokens: &str) -> anyhow::Result<bool> {
    let tokens: Vec<u32> = tokens
        .split(',')
        .map(|t| t.trim().parse().with_context(|| format!("token id {t:?}")))
        .collect::<anyhow::Result<_>>()?;
    let (model, _) = load(model).await?;
    let mix = match adapter {
        Some(dir) => AdapterMix(vec![(Arc::new(load_adapter_dir("adapter", dir, &model)?), 1.0)]),
        None => AdapterMix::default(),
    };
    let mut cache = model.new_cache(tokens.len())?;
    let logits = model.logits_for(&tokens, &mut cache, &mix)?;
    println!("{}", serde_json::json!({ "tokens": tokens, "logits": logits }));
    Ok(true)
}

/// Model, tokenizer and the tokenized dataset.
async fn load_with_data(
    base: &str,
    data: &Path,
    args: &DataArgs,
) -> anyhow::Result<(openledger_ml::LlamaModel, PathBuf, Dataset)> {
    let (model, path, dataset, _) = load_with_validation(base, data, None, args).await?;
    Ok((model, path, dataset))
}

/// Model, tokenizer, the tokenized dataset and, when given, the validation records tokenized
/// with the dataset's labels.
async fn load_with_validation(
    base: &str,
    data: &Path,
    validation: Option<&Path>,
    args: &DataArgs,
) -> anyhow::Result<(openledger_ml::LlamaModel, PathBuf, Dataset, Option<Dataset>)> {
    let (model, tokenizer, path) = load_from(base).await?;
    let (kind, records) = read_records(data)?;
    let max_tokens = args.max_seq_tokens.unwrap_or(model.config().context_length).min(model.config().context_length);
    let labels: Option<Vec<String>> =
        args.labels.as_ref().map(|l| l.split(',').map(|s| s.trim().to_string()).collect());
    let tokenize = Tokenize { tokenizer: &tokenizer, max_tokens };
    let dataset = tokenize.dataset(kind, &records, labels.as_deref())?;
    let validation = match validation {
        Some(file) => {
            let (held_kind, held) = read_records(file)?;
            anyhow::ensure!(
                held_kind == kind,
                "{} holds {held_kind:?} records but {} holds {kind:?}: both must be of one kind",
                file.display(),
                data.display()
            );
            Some(tokenize.dataset(kind, &held, Some(&dataset.labels)).with_context(|| file.display().to_string())?)
        }
        None => None,
    };
    Ok((model, path, dataset, validation))
}

/// A data file's name in the lineage: an exported Datanet version names itself
/// (`datanet:<slug>@<version>`), any other file by its path.
fn dataset_name(file: &Path) -> anyhow::Result<String> {
    Ok(match openledger_attribution::corpus::Manifest::beside(file)? {
        Some(manifest) => manifest.dataset_name(),
        None => file.display().to_string(),
    })
}

/// Runs `work` on a blocking thread inside a thread pool of `threads` (all cores by default).
pub(crate) async fn compute<T: Send + 'static>(
    threads: Option<usize>,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(move || {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads.unwrap_or(0)).build()?;
        pool.install(work)
    })
    .await?
}

pub(crate) fn bar(total: u64, template: &str) -> ProgressBar {
    ProgressBar::new(total).with_style(ProgressStyle::with_template(template).expect("template").progress_chars("=> "))
}

async fn finetune(base: &str, data: &Path, out: &Path, args: &TrainArgs, resume: bool) -> anyhow::Result<bool> {
    let config = args.config()?;
    config.validate()?;
    let (model, model_path, dataset, held_out) =
        load_with_validation(base, data, args.validation.as_deref(), &args.data).await?;
    let progress = bar(0, "{bar:30} {pos}/{len} steps {msg} [{elapsed} < {eta}]");
    let stop = Arc::new(AtomicBool::new(false));
    let on_signal = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.store(true, Ordering::SeqCst);
        }
    });
    let name = dataset_name(data)?;
    let held_out_name = args.validation.as_deref().map(dataset_name).transpose()?;
    let (out, threads) = (out.to_path_buf(), args.data.threads);
    let p = progress.clone();
    let outcome = compute(threads, move || {
        // The run's memory, estimated before anything is allocated (a warning when it exceeds
        // what is free: the service refuses such a job, a person at a terminal may know better).
        let datasets: Vec<&Dataset> = std::iter::once(&dataset).chain(held_out.as_ref()).collect();
        let footprint = Footprint::for_run(&model, &model_path, &datasets, &config, rayon::current_num_threads());
        say(&p, footprint.describe(None));
        if let Some(Err(error)) = available_bytes().map(|available| footprint.check(available)) {
            say(&p, format!("warning: {error}"));
        }
        let validation = held_out
            .as_ref()
            .zip(held_out_name.as_deref())
            .map(|(dataset, name)| openledger_ml::train::Validation { dataset, name });
        let job = TrainJob { model: &model, model_path: &model_path, dataset: &dataset, dataset_name: &name, validation, out: &out, resume };
        let outcome = train(&job, &config, &mut |event| {
            match event {
                TrainEvent::Started { total_steps, start_step, train_examples, eval_examples, truncated_examples, base_f32_bytes } => {
                    p.set_length(*total_steps);
                    p.set_position(*start_step);
                    say(&p, format!(
                        "{train_examples} training and {eval_examples} held-out records ({truncated_examples} truncated); base held as f32: {:.0} MB",
                        *base_f32_bytes as f64 / 1e6
                    ));
                }
                TrainEvent::Step { step, loss, learning_rate, tokens_per_s, .. } => {
                    p.set_position(*step);
                    p.set_message(format!("loss {loss:.4} lr {learning_rate:.2e} {tokens_per_s:.0} tok/s"));
                }
                TrainEvent::Eval(r) => say(&p, eval_line(r)),
                TrainEvent::Checkpoint { dir, .. } => p.set_message(format!("checkpoint {}", dir.display())),
                TrainEvent::EarlyStopped { step } => say(&p, format!("early stop at step {step}")),
            }
            if stop.load(Ordering::SeqCst) { Control::Stop } else { Control::Continue }
        })?;
        Ok(outcome)
    })
    .await;
    progress.finish_and_clear();
    let outcome = outcome?;
    match outcome.finish {
        Finish::Interrupted => {
            println!(
                "interrupted after step {}: checkpoint {} (rerun with --resume)",
                outcome.steps,
                outcome.adapter_dir.display()
            )
        }
        finish => println!(
            "{finish:?} after {} steps: adapter and lineage.json in {}",
            outcome.steps,
            outcome.adapter_dir.display()
        ),
    }
    Ok(outcome.finish != Finish::Interrupted)
}

/// A line above the progress bar, or on stderr when there is no terminal to draw the bar on.
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() { eprintln!("{line}") } else { bar.println(line) }
}

fn eval_line(r: &EvalReport) -> String {
    let accuracy = |a: Option<f64>| a.map_or(String::new(), |a| format!(", accuracy {:.1}%", a * 100.0));
    format!(
        "eval at step {}: loss {:.4}, perplexity {:.2}{} (base: loss {:.4}, perplexity {:.2}{})",
        r.step,
        r.loss,
        r.perplexity,
        accuracy(r.accuracy),
        r.base_loss,
        r.base_perplexity,
        accuracy(r.base_accuracy)
    )
}

async fn eval(base: &str, adapter: Option<&Path>, data: &Path, args: &DataArgs) -> anyhow::Result<bool> {
    let (model, _, dataset) = load_with_data(base, data, args).await?;
    let adapter =
        adapter.map(|dir| load_adapter_dir_as("adapter", dir, &model, AdapterPrecision::Exact)).transpose()?;
    let batch_tokens = args.batch_tokens;
    let report = compute(args.threads, move || Ok(evaluate(&model, adapter.as_ref(), &dataset, batch_tokens)?)).await?;
    println!("{}", serde_json::to_string(&report)?);
    eprintln!("{}", eval_line(&report));
    Ok(true)
}

async fn grads(
    base: &str,
    adapter: &Path,
    data: &Path,
    out: &Path,
    projection: Option<Projection>,
    dtype: GradDType,
    args: &DataArgs,
) -> anyhow::Result<bool> {
    let (model, _, dataset) = load_with_data(base, data, args).await?;
    let adapter = load_adapter_dir_as("adapter", adapter, &model, AdapterPrecision::Exact)?;
    let (out, batch_tokens, name) = (out.to_path_buf(), args.batch_tokens, adapter_name(adapter.id.as_str(), data));
    let progress = bar(dataset.examples.len() as u64, "{bar:30} {pos}/{len} records [{elapsed} < {eta}] {per_sec}");
    let p = progress.clone();
    let started = Instant::now();
    let header = compute(args.threads, move || {
        let probe = GradientProbe::new(&model, &adapter, projection)?;
        let records: Vec<(ContentHash, &[u32], usize)> =
            dataset.examples.iter().map(|e| (e.hash, e.tokens.as_slice(), e.first_scored)).collect();
        Ok(probe.write(&out, &records, batch_tokens, dtype, &name, &mut |done, total| {
            p.set_length(total as u64);
            p.set_position(done as u64);
        })?)
    })
    .await?;
    progress.finish_and_clear();
    let per_record: usize = header.layer_dims.iter().sum::<usize>() * if dtype == GradDType::F32 { 4 } else { 2 };
    println!(
        "{} records, {} values per record ({per_record} bytes), {:.1} records/s",
        header.records,
        header.layer_dims.iter().sum::<usize>(),
        header.records as f64 / started.elapsed().as_secs_f64()
    );
    Ok(true)
}

fn adapter_name(id: &str, data: &Path) -> String {
    format!("{id} on {}", data.display())
}

pub(crate) async fn load(model: &str) -> anyhow::Result<(openledger_ml::LlamaModel, openledger_ml::Tokenizer)> {
    let (model, tokenizer, _) = load_from(model).await?;
    Ok((model, tokenizer))
}

/// The model, its tokenizer and the local path its source resolved to.
async fn load_from(model: &str) -> anyhow::Result<(openledger_ml::LlamaModel, openledger_ml::Tokenizer, PathBuf)> {
    let source: Source = model.parse()?;
    let path = source.resolve_model().await.with_context(|| format!("resolving {source}"))?;
    let spinner = ProgressBar::new_spinner().with_message(format!("loading {}", path.display()));
    spinner.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("template"));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let at = path.clone();
    let loaded = tokio::task::spawn_blocking(move || load_model(&at, &candle_core::Device::Cpu)).await?;
    spinner.finish_and_clear();
    let (model, tokenizer) = loaded?;
    Ok((model, tokenizer, path))
}

async fn info(model: &str) -> anyhow::Result<bool> {
    let (model, tokenizer) = load(model).await?;
    let c = model.config();
    let f = model.format();
    let types: Vec<String> = f.tensor_types.iter().map(|(t, n)| format!("{t} ×{n}")).collect();
    println!(
        "architecture   {} ({} layers, hidden {}, MLP {})",
        c.architecture, c.num_layers, c.hidden_size, c.intermediate_size
    );
    println!("attention      {} heads, {} KV heads, head dim {}", c.num_heads, c.num_kv_heads, c.head_dim);
    println!(
        "context        {} tokens (RoPE θ {}, {})",
        c.context_length,
        c.rope_theta,
        if c.rope_interleaved { "interleaved" } else { "half-split" }
    );
    println!("weights        {} format, {:.1} MB: {}", f.kind, f.weight_bytes as f64 / 1e6, types.join(", "));
    println!(
        "vocabulary     {} tokens (tokenizer {}), stop ids {:?}",
        c.vocab_size,
        tokenizer.vocab_size(),
        tokenizer.stop_ids()
    );
    println!("chat format    {}", tokenizer.chat_format().map_or("none".to_string(), |f| format!("{f:?}")));
    println!("KV cache       {} bytes per token", model.kv_bytes_per_token());
    let (active, detected) = (openledger_ml::kernels::Isa::active(), openledger_ml::kernels::Isa::detected());
    println!(
        "CPU kernels    {} (this CPU runs up to {}; {} picks a lower one)",
        active.name(),
        detected.name(),
        openledger_ml::kernels::KERNELS_ENV
    );
    Ok(true)
}

/// Splits `ADAPTER[=WEIGHT]` and maps local directories to (source root, id).
fn adapter_plan(args: &[String]) -> anyhow::Result<(AdapterSource, Vec<(String, f32)>)> {
    let mut root: Option<PathBuf> = None;
    let mut mix = Vec::new();
    for arg in args {
        let (name, weight) = match arg.rsplit_once('=') {
            Some((n, w)) => (n, w.parse::<f32>().with_context(|| format!("weight in {arg:?}"))?),
            None => (arg.as_str(), 1.0),
        };
        if openledger_ml::adapters::is_hub_id(name) {
            mix.push((name.to_string(), weight));
            continue;
        }
        let path = Path::new(name);
        if !path.is_dir() {
            bail!("adapter {name:?} is not a directory with adapter_config.json and adapter_model.safetensors");
        }
        let path = path.canonicalize()?;
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if root.get_or_insert_with(|| parent.clone()) != &parent {
            bail!("local adapters must sit in one directory");
        }
        let id = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        mix.push((id, weight));
    }
    Ok((root.map_or(AdapterSource::HubOnly, AdapterSource::Dir), mix))
}

async fn generate(
    model: &str,
    adapters: &[String],
    mut request: GenerateRequest,
    threads: Option<usize>,
) -> anyhow::Result<bool> {
    let (source, mix) = adapter_plan(adapters)?;
    request.adapters = mix;
    let (model, tokenizer) = load(model).await?;
    let config = EngineConfig { threads, max_batch_size: 1, ..Default::default() };
    let engine = Engine::start(model, tokenizer, source, config)?;
    let mut generation = engine.submit(request)?;
    let started = Instant::now();
    let mut first_token: Option<Instant> = None;
    let mut stdout = std::io::stdout();
    while let Some(event) = generation.events.recv().await {
        match event {
            Event::Token { text, .. } => {
                first_token.get_or_insert_with(Instant::now);
                write!(stdout, "{text}")?;
                stdout.flush()?;
            }
            Event::Done { finish_reason, usage } => {
                let first = first_token.unwrap_or(started);
                let decode = first.elapsed().as_secs_f64();
                let rate =
                    if usage.completion_tokens > 1 { (usage.completion_tokens - 1) as f64 / decode } else { 0.0 };
                eprintln!(
                    "\n[{} prompt + {} generated tokens, finish {finish_reason:?}; first token after {:.0} ms, {rate:.1} tokens/s]",
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    (first - started).as_secs_f64() * 1e3,
                );
                return Ok(true);
            }
            Event::Error(e) => return Err(e.into()),
        }
    }
    bail!("the engine stopped before finishing")
}
