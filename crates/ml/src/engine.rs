//! The OpenLoRA engine: one base model owned by a dedicated thread, requests through a bounded
//! queue, continuous batching (new sequences prefill and join the running batch; finished or
//! cancelled ones leave at once and free their KV memory), adapters loaded by a separate
//! thread so a cold adapter never stalls the decoding of others.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::adapters::{AdapterCache, AdapterSource, validate_adapter_id};
use crate::error::{MlError, Result};
use crate::lora::{AdapterMix, LoraAdapter};
use crate::model::{KvCache, LlamaModel, SeqStep};
use crate::pool::ComputePool;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{ChatMessage, Tokenizer};

/// Limits of one engine; every queue and buffer is bounded by one of these.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Sequences decoded together in one step.
    pub max_batch_size: usize,
    /// KV tokens reserved over all running sequences (each reserves prompt + max_tokens).
    pub max_kv_tokens: usize,
    /// Requests waiting for a batch slot or an adapter; beyond it `submit` says overloaded.
    pub max_queue: usize,
    /// Prompt tokens prefilled per step, so long prompts do not stall decoding of others.
    pub max_prefill_tokens_per_step: usize,
    pub adapter_cache_bytes: usize,
    /// Adapters loaded at start.
    pub preload: Vec<String>,
    /// Compute threads (the compute pool's, and rayon's for what still runs on it); `None` uses
    /// all cores.
    pub threads: Option<usize>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 16,
            max_kv_tokens: 16_384,
            max_queue: 256,
            max_prefill_tokens_per_step: 512,
            adapter_cache_bytes: 2 << 30,
            preload: Vec::new(),
            threads: None,
        }
    }
}

/// The prompt of a request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    Text(String),
    Chat(Vec<ChatMessage>),
    Tokens(Vec<u32>),
}

/// Largest number of adapters one request may mix.
pub const MAX_ADAPTERS_PER_REQUEST: usize = 8;
/// Largest number of stop strings per request, and their longest length in bytes.
pub const MAX_STOP_STRINGS: usize = 8;
pub const MAX_STOP_BYTES: usize = 128;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    /// Adapter ids and weights: empty for the base model, one for a single adapter, several
    /// for a linear combination of their deltas.
    #[serde(default)]
    pub adapters: Vec<(String, f32)>,
    #[serde(default)]
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    #[serde(default)]
    pub stop: Vec<String>,
    /// Log-probabilities of each sampled token and of this many alternatives
    /// (`0..=MAX_TOP_LOGPROBS`); `None` computes none.
    #[serde(default)]
    pub logprobs: Option<usize>,
}

/// Most alternatives a request may ask log-probabilities for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

impl GenerateRequest {
    pub fn new(prompt: Prompt, max_tokens: usize) -> Self {
        Self {
            prompt,
            adapters: Vec::new(),
            sampling: SamplingParams::default(),
            max_tokens,
            stop: Vec::new(),
            logprobs: None,
        }
    }

    pub fn with_adapter(mut self, id: &str) -> Self {
        self.adapters.push((id.to_string(), 1.0));
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// What a generation streams back.
#[derive(Debug)]
pub enum Event {
    /// A generated token and the text it completes (may be empty while a multi-byte character
    /// or a possible stop string is pending).
    Token {
        id: u32,
        text: String,
        /// Set when the request asked for log-probabilities.
        logprobs: Option<TokenLogprobs>,
    },
    Done {
        finish_reason: FinishReason,
        usage: Usage,
    },
    Error(MlError),
}

/// The log-probability of a sampled token and of the most likely alternatives (most likely
/// first), from the model's distribution after penalties and before temperature.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// A running generation: its event stream. Dropping it cancels the request.
#[derive(Debug)]
pub struct Generation {
    pub events: UnboundedReceiver<Event>,
    pub prompt_tokens: usize,
    cancel: Arc<AtomicBool>,
}

impl Generation {
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Waits for the whole output: the text, the finish reason and usage.
    pub async fn collect(mut self) -> Result<(String, Vec<u32>, FinishReason, Usage)> {
        let (mut text, mut ids) = (String::new(), Vec::new());
        while let Some(event) = self.events.recv().await {
            match event {
                Event::Token { id, text: piece, .. } => {
                    ids.push(id);
                    text.push_str(&piece);
                }
                Event::Done { finish_reason, usage } => return Ok((text, ids, finish_reason, usage)),
                Event::Error(e) => return Err(e),
            }
        }
        Err(MlError::EngineStopped)
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.cancel();
    }
}

struct Pending {
    prompt: Vec<u32>,
    adapters: Vec<(String, f32)>,
    sampling: SamplingParams,
    max_tokens: usize,
    stop: Vec<String>,
    logprobs: Option<usize>,
    events: UnboundedSender<Event>,
    cancel: Arc<AtomicBool>,
}

enum Command {
    Submit(Box<Pending>),
    AdapterLoaded(String, Result<Arc<LoraAdapter>>),
}

/// What the engine holds right now, as of its last scheduling decision; see [`Engine::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Sequences in the running batch (batch slots taken).
    pub running: usize,
    /// Requests queued for a batch slot or an adapter.
    pub waiting: usize,
    /// KV tokens reserved by the running sequences (prompt + max_tokens each).
    pub kv_tokens_reserved: usize,
    /// Tokens sampled since the engine started, over every request.
    pub tokens_generated: u64,
}

/// The engine thread's published [`EngineStats`].
#[derive(Debug, Default)]
struct SharedStats {
    running: AtomicUsize,
    waiting: AtomicUsize,
    kv_tokens_reserved: AtomicUsize,
    tokens_generated: AtomicU64,
}

impl SharedStats {
    fn snapshot(&self) -> EngineStats {
        EngineStats {
            running: self.running.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            kv_tokens_reserved: self.kv_tokens_reserved.load(Ordering::Relaxed),
            tokens_generated: self.tokens_generated.load(Ordering::Relaxed),
        }
    }
}

/// A handle to the engine thread. Cheap to share behind an `Arc`.
pub struct Engine {
    commands: SyncSender<Command>,
    stats: Arc<SharedStats>,
    tokenizer: Arc<Tokenizer>,
    context_length: usize,
    adapters: Arc<AdapterCache>,
    config: EngineConfig,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("config", &self.config).finish()
    }
}

impl Engine {
    /// Starts the engine thread and the adapter loader thread; preloads `config.preload`.
    pub fn start(model: LlamaModel, tokenizer: Tokenizer, source: AdapterSource, config: EngineConfig) -> Result<Self> {
        let limits = [config.max_batch_size, config.max_queue, config.max_prefill_tokens_per_step];
        if limits.contains(&0) || config.threads == Some(0) {
            return Err(MlError::InvalidRequest("engine limits must be positive".into()));
        }
        let model = Arc::new(model);
        let adapters = Arc::new(AdapterCache::new(source, config.adapter_cache_bytes));
        // A runtime with its own worker thread: `Handle::block_on` on a current-thread runtime
        // does not drive I/O, so an object-store or hub fetch from the loader would never finish.
        let loader_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("openlora-adapter-io")
            .enable_all()
            .build()
            .map_err(|e| MlError::Io { path: "tokio runtime".into(), source: e })?;
        for id in &config.preload {
            validate_adapter_id(id)?;
            adapters.load(id, &model, loader_runtime.handle())?;
        }
        // Queue slots plus one per possible adapter completion, so the loader never blocks.
        let (commands, inbox) = mpsc::sync_channel(config.max_queue);
        let (load_tx, load_rx) = mpsc::channel::<String>();
        let loader = Loader { model: model.clone(), cache: adapters.clone(), reply: commands.clone() };
        std::thread::Builder::new()
            .name("openlora-adapter-loader".into())
            .spawn(move || loader.run(load_rx, loader_runtime))
            .map_err(|e| MlError::Io { path: "adapter loader thread".into(), source: e })?;
        let pool = match config.threads {
            Some(n) => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("openlora-compute-{i}"))
                    .build()
                    .map_err(|e| MlError::InvalidRequest(format!("compute threads: {e}")))?,
            ),
            None => None,
        };
        // The forward pass's kernels dispatch to the compute pool, whose workers spin between a
        // step's operations; the rayon pool beside it serves what still runs on rayon (candle's
        // tensor operations off the host path).
        let threads = config.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        let compute =
            ComputePool::new(threads).map_err(|e| MlError::Io { path: "compute pool threads".into(), source: e })?;
        tracing::info!(
            kernels = crate::kernels::Isa::active().name(),
            detected = crate::kernels::Isa::detected().name(),
            threads,
            "engine compute: CPU kernels chosen at run time ({} overrides them)",
            crate::kernels::KERNELS_ENV
        );
        let tokenizer = Arc::new(tokenizer);
        let context_length = model.config().context_length;
        let stats = Arc::new(SharedStats::default());
        let scheduler = Scheduler {
            stats: stats.clone(),
            model,
            tokenizer: tokenizer.clone(),
            cache: adapters.clone(),
            config: config.clone(),
            load_requests: load_tx,
            waiting: VecDeque::new(),
            loading: HashSet::new(),
            running: Vec::new(),
        };
        std::thread::Builder::new()
            .name("openlora-engine".into())
            .spawn(move || match pool {
                // Inside rayon's install: it runs the closure on one of its own threads.
                Some(pool) => pool.install(|| compute.install(|| scheduler.run(inbox))),
                None => compute.install(|| scheduler.run(inbox)),
            })
            .map_err(|e| MlError::Io { path: "engine thread".into(), source: e })?;
        Ok(Self { commands, stats, tokenizer, context_length, adapters, config })
    }

    /// Batch slots, queue and KV reservation as of the engine's last scheduling decision (made
    /// after every step, so a cancelled request is gone from them one step after it is dropped).
    pub fn stats(&self) -> EngineStats {
        self.stats.snapshot()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Most tokens one sequence may hold (prompt + output): the model's context, capped by the
    /// engine's KV budget.
    pub fn context_length(&self) -> usize {
        self.context_length.min(self.config.max_kv_tokens)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn adapter_cache(&self) -> &AdapterCache {
        &self.adapters
    }

    /// Validates and queues a request. Fails at once with `Overloaded` when the queue is full,
    /// and with a clear error for bad input; never blocks.
    pub fn submit(&self, request: GenerateRequest) -> Result<Generation> {
        let prompt = match &request.prompt {
            Prompt::Text(text) => self.tokenizer.encode(text)?,
            Prompt::Chat(messages) => self.tokenizer.encode_chat(messages)?,
            Prompt::Tokens(ids) => ids.clone(),
        };
        self.validate(&request, &prompt)?;
        let (events, receiver) = unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let prompt_tokens = prompt.len();
        let pending = Pending {
            prompt,
            adapters: request.adapters,
            sampling: request.sampling,
            max_tokens: request.max_tokens,
            stop: request.stop,
            logprobs: request.logprobs,
            events,
            cancel: cancel.clone(),
        };
        match self.commands.try_send(Command::Submit(Box::new(pending))) {
            Ok(()) => Ok(Generation { events: receiver, prompt_tokens, cancel }),
            Err(TrySendError::Full(_)) => {
                Err(MlError::Overloaded(format!("{} requests are already queued", self.config.max_queue)))
            }
            Err(TrySendError::Disconnected(_)) => Err(MlError::EngineStopped),
        }
    }

    fn validate(&self, request: &GenerateRequest, prompt: &[u32]) -> Result<()> {
        let invalid = |m: String| Err(MlError::InvalidRequest(m));
        if prompt.is_empty() {
            return invalid("the prompt is empty".into());
        }
        if request.max_tokens == 0 {
            return invalid("max_tokens must be at least 1".into());
        }
        let need = prompt.len().saturating_add(request.max_tokens);
        if need > self.context_length || need > self.config.max_kv_tokens {
            return Err(MlError::ContextOverflow {
                prompt_tokens: prompt.len(),
                max_tokens: request.max_tokens,
                context: self.context_length.min(self.config.max_kv_tokens),
            });
        }
        request.sampling.validate()?;
        if request.logprobs.is_some_and(|top| top > MAX_TOP_LOGPROBS) {
            return invalid(format!("top_logprobs must be within 0..={MAX_TOP_LOGPROBS}"));
        }
        if request.adapters.len() > MAX_ADAPTERS_PER_REQUEST {
            return invalid(format!("at most {MAX_ADAPTERS_PER_REQUEST} adapters per request"));
        }
        for (id, weight) in &request.adapters {
            validate_adapter_id(id)?;
            if !weight.is_finite() || weight.abs() > 100.0 {
                return invalid(format!("adapter weight {weight} must be finite and within ±100"));
            }
        }
        if request.stop.len() > MAX_STOP_STRINGS
            || request.stop.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
        {
            return invalid(format!(
                "at most {MAX_STOP_STRINGS} non-empty stop strings of up to {MAX_STOP_BYTES} bytes"
            ));
        }
        Ok(())
    }
}

/// Loads adapters off the decode thread and reports back through the engine's inbox.
struct Loader {
    model: Arc<LlamaModel>,
    cache: Arc<AdapterCache>,
    reply: SyncSender<Command>,
}

impl Loader {
    fn run(self, requests: Receiver<String>, runtime: tokio::runtime::Runtime) {
        while let Ok(id) = requests.recv() {
            let result = self.cache.load(&id, &self.model, runtime.handle());
            if let Err(e) = &result {
                tracing::warn!(adapter = %id, error = %e, "adapter load failed");
            }
            if self.reply.send(Command::AdapterLoaded(id, result)).is_err() {
                return;
            }
        }
    }
}

/// One admitted sequence.
struct Running {
    request: Pending,
    mix: AdapterMix,
    cache: KvCache,
    sampler: Sampler,
    /// The prompt, then the generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens already in the KV cache.
    fed: usize,
    text: TextStream,
    reserved: usize,
}

impl Running {
    fn generated(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }
}

struct Scheduler {
    stats: Arc<SharedStats>,
    model: Arc<LlamaModel>,
    tokenizer: Arc<Tokenizer>,
    cache: Arc<AdapterCache>,
    config: EngineConfig,
    load_requests: mpsc::Sender<String>,
    waiting: VecDeque<Pending>,
    loading: HashSet<String>,
    running: Vec<Running>,
}

impl Scheduler {
    fn run(mut self, inbox: Receiver<Command>) {
        loop {
            // Idle: block for work. Busy: take what has arrived without waiting.
            if self.running.is_empty() && self.ready_count() == 0 {
                // Idle: say so before waiting, or the last batch's counts would stay published.
                self.publish_stats();
                match inbox.recv() {
                    Ok(command) => self.handle(command),
                    Err(_) => return,
                }
            }
            while self.waiting.len() < self.config.max_queue {
                match inbox.try_recv() {
                    Ok(command) => self.handle(command),
                    Err(_) => break,
                }
            }
            self.drop_cancelled();
            self.admit();
            self.publish_stats();
            if !self.running.is_empty() {
                fail::fail_point!("engine-before-step");
                self.step();
            }
        }
    }

    fn publish_stats(&self) {
        self.stats.running.store(self.running.len(), Ordering::Relaxed);
        self.stats.waiting.store(self.waiting.len(), Ordering::Relaxed);
        self.stats.kv_tokens_reserved.store(self.kv_reserved(), Ordering::Relaxed);
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Submit(pending) => {
                for (id, _) in &pending.adapters {
                    if !self.cache.contains(id) && self.loading.insert(id.clone()) {
                        let _ = self.load_requests.send(id.clone());
                    }
                }
                self.waiting.push_back(*pending);
            }
            Command::AdapterLoaded(id, result) => {
                self.loading.remove(&id);
                if let Err(e) = result {
                    let message = e.to_string();
                    self.waiting.retain(|p| {
                        let needs = p.adapters.iter().any(|(a, _)| *a == id);
                        if needs {
                            let _ = p.events.send(Event::Error(MlError::InvalidRequest(message.clone())));
                        }
                        !needs
                    });
                }
            }
        }
    }

    /// Requests whose adapters are all in memory.
    fn ready_count(&self) -> usize {
        self.waiting.iter().filter(|p| p.adapters.iter().all(|(id, _)| !self.loading.contains(id))).count()
    }

    fn drop_cancelled(&mut self) {
        self.waiting.retain(|p| !p.cancel.load(Ordering::Relaxed) && !p.events.is_closed());
        self.running.retain(|r| !r.request.cancel.load(Ordering::Relaxed) && !r.request.events.is_closed());
    }

    /// KV tokens reserved by the running sequences.
    fn kv_reserved(&self) -> usize {
        self.running.iter().map(|r| r.reserved).sum()
    }

    /// Admits waiting requests in arrival order while batch slots and KV budget allow.
    fn admit(&mut self) {
        let mut index = 0;
        while index < self.waiting.len() && self.running.len() < self.config.max_batch_size {
            let p = &self.waiting[index];
            if p.adapters.iter().any(|(id, _)| self.loading.contains(id)) {
                index += 1;
                continue;
            }
            let reserved = p.prompt.len() + p.max_tokens;
            if self.kv_reserved() + reserved > self.config.max_kv_tokens {
                break; // first come, first served: do not let small requests starve a big one
            }
            let Some(mut pending) = self.waiting.remove(index) else { break };
            match self.resources_for(&pending, reserved) {
                Ok((mix, cache)) => {
                    let tokens = std::mem::take(&mut pending.prompt);
                    self.running.push(Running {
                        mix,
                        cache,
                        sampler: Sampler::new(std::mem::take(&mut pending.sampling)),
                        prompt_len: tokens.len(),
                        tokens,
                        fed: 0,
                        text: TextStream::new(std::mem::take(&mut pending.stop)),
                        reserved,
                        request: pending,
                    });
                }
                Err(e) => {
                    let _ = pending.events.send(Event::Error(e));
                }
            }
        }
    }

    /// The adapter mix and the KV cache of a request about to run.
    fn resources_for(&self, pending: &Pending, reserved: usize) -> Result<(AdapterMix, KvCache)> {
        let mix = pending
            .adapters
            .iter()
            .map(|(id, weight)| {
                // Evicted between load and admission: an error rather than a silent base answer.
                let adapter = self
                    .cache
                    .get(id)
                    .ok_or_else(|| MlError::Overloaded(format!("adapter {id} was evicted before use")))?;
                Ok((adapter, *weight))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((AdapterMix(mix), self.model.new_cache(reserved)?))
    }

    /// One forward pass over every running sequence, then sampling and streaming.
    fn step(&mut self) {
        let started = Instant::now();
        // What each running sequence feeds this step: the next chunk of its prompt (within the
        // step's prefill budget), or its last generated token; `None` waits for budget.
        let mut budget = self.config.max_prefill_tokens_per_step;
        let feeds: Vec<Option<std::ops::Range<usize>>> = self
            .running
            .iter()
            .map(|r| {
                if r.fed >= r.prompt_len {
                    return Some(r.fed..r.tokens.len());
                }
                let to = r.prompt_len.min(r.fed + budget);
                budget -= to - r.fed;
                (to > r.fed).then_some(r.fed..to)
            })
            .collect();
        let result = {
            let mut steps: Vec<SeqStep<'_>> = self
                .running
                .iter_mut()
                .zip(&feeds)
                .filter_map(|(r, feed)| {
                    let feed = feed.clone()?;
                    Some(SeqStep { tokens: &r.tokens[feed], cache: &mut r.cache, adapters: &r.mix })
                })
                .collect();
            self.model.forward(&mut steps).and_then(|logits| Ok(logits.to_vec2::<f32>()?))
        };
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                // A failed step fails its sequences, not the engine.
                tracing::error!(error = %e, "forward pass failed");
                let mut fed = feeds.iter().map(Option::is_some);
                self.running.retain(|r| {
                    let failed = fed.next().unwrap_or(false);
                    if failed {
                        let _ = r.request.events.send(Event::Error(MlError::InvalidRequest(e.to_string())));
                    }
                    !failed
                });
                return;
            }
        };
        let fed_rows = feeds.into_iter().enumerate().filter_map(|(i, feed)| Some((i, feed?)));
        let mut finished = Vec::new();
        for ((i, feed), mut row) in fed_rows.zip(logits) {
            let r = &mut self.running[i];
            r.fed = feed.end;
            if r.fed < r.prompt_len {
                continue; // more prompt to prefill before the first token
            }
            r.sampler.penalize(&mut row, &r.tokens, r.prompt_len);
            let token = r.sampler.choose(&row);
            let logprobs = r.request.logprobs.map(|top| {
                let (logprob, top) = crate::sampling::logprobs(&row, token, top);
                TokenLogprobs { logprob, top }
            });
            r.tokens.push(token);
            self.stats.tokens_generated.fetch_add(1, Ordering::Relaxed);
            let is_stop_token = self.tokenizer.stop_ids().contains(&token);
            let (mut piece, stop_string) = if is_stop_token {
                (String::new(), false)
            } else {
                r.text.push(&self.tokenizer, &r.tokens[r.prompt_len..])
            };
            let generated = r.generated().len();
            let reason = if is_stop_token || stop_string {
                Some(FinishReason::Stop)
            } else if generated >= r.request.max_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            if reason == Some(FinishReason::Length) {
                // Text held back for a possible stop string belongs to the last token.
                piece.push_str(&r.text.flush());
            }
            let _ = r.request.events.send(Event::Token { id: token, text: piece, logprobs });
            if let Some(finish_reason) = reason {
                let usage = Usage { prompt_tokens: r.prompt_len, completion_tokens: generated };
                let _ = r.request.events.send(Event::Done { finish_reason, usage });
                finished.push(i);
            }
        }
        for i in finished.into_iter().rev() {
            self.running.swap_remove(i);
        }
        tracing::trace!(elapsed_us = started.elapsed().as_micros() as u64, batch = self.running.len(), "engine step");
    }
}

/// Turns generated ids into text pieces: waits for whole UTF-8 characters, and holds back text
/// that could be the start of a stop string so a stop string is never streamed.
struct TextStream {
    stop: Vec<String>,
    decoded: String,
    emitted: usize,
}

impl TextStream {
    fn new(stop: Vec<String>) -> Self {
        Self { stop, decoded: String::new(), emitted: 0 }
    }

    /// The new safe text after `generated`, and whether a stop string appeared.
    fn push(&mut self, tokenizer: &Tokenizer, generated: &[u32]) -> (String, bool) {
        let Ok(text) = tokenizer.decode(generated) else { return (String::new(), false) };
        if text.ends_with('\u{FFFD}') {
            return (String::new(), false); // an incomplete multi-byte character
        }
        self.decoded = text;
        if let Some(at) = self
            .stop
            .iter()
            .filter_map(|s| {
                self.decoded[self.emitted.min(self.decoded.len())..].find(s.as_str()).map(|p| p + self.emitted)
            })
            .min()
        {
            let piece = self.decoded.get(self.emitted..at).unwrap_or_default().to_string();
            self.emitted = at;
            return (piece, true);
        }
        let hold = self.stop.iter().map(|s| s.len().saturating_sub(1)).max().unwrap_or(0);
        let mut safe = self.decoded.len().saturating_sub(hold).max(self.emitted);
        while !self.decoded.is_char_boundary(safe) {
            safe -= 1;
        }
        let piece = self.decoded.get(self.emitted..safe).unwrap_or_default().to_string();
        self.emitted = self.emitted.max(safe);
        (piece, false)
    }

    fn flush(&mut self) -> String {
        let piece = self.decoded.get(self.emitted..).unwrap_or_default().to_string();
        self.emitted = self.decoded.len();
        piece
    }
}
