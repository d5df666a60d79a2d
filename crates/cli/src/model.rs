//! `openledger model …`: inspect a model and generate text with it (optionally through LoRA
//! adapters) on this machine, with the same engine the inference gateway hosts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use openledger_ml::adapters::AdapterSource;
use openledger_ml::sampling::SamplingParams;
use openledger_ml::{ChatMessage, Engine, EngineConfig, Event, GenerateRequest, Prompt, Source, load_model};

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
            let sampling = SamplingParams { temperature, top_p, top_k, repetition_penalty, seed };
            let prompt =
                if chat { Prompt::Chat(vec![ChatMessage::new("user", &prompt)]) } else { Prompt::Text(prompt) };
            generate(
                &model,
                &adapters,
                GenerateRequest { prompt, adapters: Vec::new(), sampling, max_tokens, stop },
                threads,
            )
            .await
        }
    }
}

async fn load(model: &str) -> anyhow::Result<(openledger_ml::LlamaModel, openledger_ml::Tokenizer)> {
    let source: Source = model.parse()?;
    let path = source.resolve_model().await.with_context(|| format!("resolving {source}"))?;
    let spinner = ProgressBar::new_spinner().with_message(format!("loading {}", path.display()));
    spinner.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("template"));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let loaded = tokio::task::spawn_blocking(move || load_model(&path, &candle_core::Device::Cpu)).await?;
    spinner.finish_and_clear();
    Ok(loaded?)
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
        if name.starts_with("hf://") {
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
