//! What a training run holds in memory at its peak, estimated from the model's shape and the
//! run's settings before anything is allocated, so that a service can refuse a job that would
//! not fit instead of letting the kernel kill it halfway.
//!
//! The terms, as the trainer allocates them:
//! - the base model as loaded (its file's bytes: the quantized weights);
//! - its f32 copy for training and a transposed copy of every projection (`net.rs`);
//! - the activations one micro-batch keeps for its backward pass, per padded token and layer
//!   (`4 × intermediate + 5 × hidden + 2 × heads·d + 2 × kv_heads·d` floats: norms, projections,
//!   the gated MLP) plus one vocabulary chunk of the fused output loss (`lm_head.rs`);
//! - the attention scratch of the threads' (example, kv head) blocks: the probabilities and
//!   their gradients, `seq × seq` per query head of the group (`attention.rs`);
//! - the adapter, its gradients and AdamW's two moments;
//! - [`RUNTIME_BYTES`] for the tokenizer, the dataset and the allocator's slack.
//!
//! Against measured peaks (SmolLM2-135M, 256 to 4,096 tokens per micro-batch and examples of
//! ~1,000 tokens, `bench/RESULTS.md`) the estimate is 6–11% above the peak, never below.

use std::path::Path;

use super::TrainConfig;
use super::data::Dataset;
use super::lm_head::VOCAB_CHUNK;
use crate::config::ModelConfig;
use crate::error::{MlError, Result};
use crate::lora::Target;
use crate::model::LlamaModel;

/// The process's own share besides the model and the run: tokenizer, dataset, allocator slack.
pub const RUNTIME_BYTES: u64 = 64 << 20;

const F32: u64 = 4;

/// A run's estimated peak memory, in parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// The model as loaded, its f32 copy with transposed projections, the adapter and its
    /// optimizer state, and [`RUNTIME_BYTES`].
    pub fixed: u64,
    /// Activations kept per padded token of a micro-batch.
    pub per_token: u64,
    /// Attention scratch of the longest sequence on every thread.
    pub attention: u64,
    /// Padded tokens of the largest micro-batch: `batch_tokens`, or the longest example when
    /// that is longer (it forms a micro-batch of its own).
    pub tokens: u64,
    /// Tokens of the longest example.
    pub longest: u64,
}

impl Footprint {
    /// The estimate for `config` on a model of shape `model` whose file holds `model_bytes`,
    /// with examples of at most `longest` tokens, on `threads` threads.
    pub fn of(model: &ModelConfig, model_bytes: u64, config: &TrainConfig, longest: usize, threads: usize) -> Self {
        let (h, i, layers) = (model.hidden_size as u64, model.intermediate_size as u64, model.num_layers as u64);
        let (q, kv) = ((model.num_heads * model.head_dim) as u64, (model.num_kv_heads * model.head_dim) as u64);
        let weights = |target: &Target| {
            let (input, output) = model.projection_shape(*target);
            (input * output) as u64
        };
        let projections = layers * Target::ALL.iter().map(weights).sum::<u64>();
        let embeddings = model.vocab_size as u64 * h * if model.tie_word_embeddings { 1 } else { 2 };
        let norms = (2 * layers + 1) * h;
        let f32_base = F32 * (embeddings + norms + 2 * projections);
        let rank = config.rank as u64;
        let adapter: u64 = config
            .targets
            .iter()
            .map(|target| {
                let (input, output) = model.projection_shape(*target);
                layers * rank * (input + output) as u64
            })
            .sum();
        // The adapter's values, gradients and AdamW's two moments.
        let adapter_bytes = 4 * F32 * adapter;
        let per_token = F32 * (layers * (4 * i + 5 * h + 2 * q + 2 * kv) + VOCAB_CHUNK as u64);
        let group = (model.num_heads / model.num_kv_heads.max(1)).max(1) as u64;
        let seq = longest as u64;
        let attention = threads.max(1) as u64 * group * 2 * F32 * seq * seq;
        Self {
            fixed: model_bytes + f32_base + adapter_bytes + RUNTIME_BYTES,
            per_token,
            attention,
            tokens: config.batch_tokens.max(longest) as u64,
            longest: seq,
        }
    }

    /// The estimate for a run of `config` on `model` (loaded from `model_path`) over the
    /// examples of `datasets` (training and validation), on `threads` threads.
    pub fn for_run(
        model: &LlamaModel,
        model_path: &Path,
        datasets: &[&Dataset],
        config: &TrainConfig,
        threads: usize,
    ) -> Self {
        let longest = datasets.iter().flat_map(|d| d.examples.iter()).map(|e| e.tokens.len()).max().unwrap_or(0);
        Self::of(model.config(), bytes_on_disk(model_path), config, longest, threads)
    }

    /// The most a run of `config` on the model at `model_path` can take, before its examples are
    /// known: its longest example as long as `max_seq_tokens` allows (or the model's context).
    /// What a job's pod requests from its cluster before it has read its data.
    pub fn upper_bound(model_path: &Path, config: &TrainConfig, threads: usize) -> Result<Self> {
        let model = crate::source::read_model_config(model_path)?;
        let longest = config.max_seq_tokens.unwrap_or(model.context_length).min(model.context_length);
        Ok(Self::of(&model, bytes_on_disk(model_path), config, longest, threads))
    }

    /// `estimated peak memory <peak>`, and `of <limit> it may take` when a limit is given.
    pub fn describe(&self, limit: Option<u64>) -> String {
        match limit {
            Some(limit) => format!("estimated peak memory {} of {} it may take", gib(self.peak()), gib(limit)),
            None => format!("estimated peak memory {}", gib(self.peak())),
        }
    }

    /// `Ok` when the peak fits in `limit` bytes, else what the run needs and what to lower.
    pub fn check(&self, limit: u64) -> Result<()> {
        let peak = self.peak();
        if peak <= limit {
            return Ok(());
        }
        let advice = match self.batch_tokens_within(limit) {
            Some(tokens) if tokens >= self.longest.max(16) => {
                format!("lower the padded tokens per micro-batch (batch_tokens) to {tokens} or fewer")
            }
            Some(tokens) if tokens >= 16 => format!(
                "examples of {} tokens do not fit: lower max_seq_tokens and batch_tokens to {tokens} or fewer",
                self.longest
            ),
            _ => "the model with its f32 training copy does not fit: train on a machine with more memory".to_owned(),
        };
        Err(MlError::InsufficientMemory(format!(
            "the run needs about {} (model and f32 copy {}, activations {} for {} tokens per micro-batch, attention {}) but may take {}: {advice}",
            gib(peak),
            gib(self.fixed),
            gib(self.per_token * self.tokens),
            self.tokens,
            gib(self.attention),
            gib(limit),
        )))
    }

    /// The estimated peak in bytes.
    pub fn peak(&self) -> u64 {
        self.fixed + self.per_token * self.tokens + self.attention
    }

    /// The most padded tokens per micro-batch that keep the peak within `limit`, if any do.
    pub fn batch_tokens_within(&self, limit: u64) -> Option<u64> {
        let room = limit.checked_sub(self.fixed + self.attention)?;
        Some(room / self.per_token).filter(|&tokens| tokens > 0)
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// A model file's size, or the sum of a checkpoint directory's files (0 where unreadable: the
/// estimate then leaves the loaded model out).
fn bytes_on_disk(path: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
        })
        .unwrap_or(0)
}

/// Memory this process could take now: `MemAvailable`, or inside a container with a cgroup v2
/// memory limit that limit less the cgroup's usage, whichever is smaller. `None` where neither
/// can be read (not Linux).
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| mem_available(&text));
    let cgroup = cgroup_room();
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|line| line.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The room left under this process's cgroup v2 memory limit, if it has one.
fn cgroup_room() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|line| line.strip_prefix("0::"))?;
    let dir = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).ok();
    let max: u64 = read("memory.max")?.trim().parse().ok()?; // "max": no limit
    let current: u64 = read("memory.current")?.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// SmolLM2-135M's shape.
    fn smollm2() -> ModelConfig {
        ModelConfig {
            architecture: "llama".into(),
            hidden_size: 576,
            intermediate_size: 1536,
            num_layers: 30,
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: 64,
            vocab_size: 49152,
            context_length: 8192,
            rms_norm_eps: 1e-5,
            rope_theta: 100_000.0,
            rope_scaling: None,
            rope_interleaved: true,
            tie_word_embeddings: true,
        }
    }

    #[test]
    fn the_estimate_grows_with_the_batch_and_says_what_fits() {
        let config = TrainConfig { batch_tokens: 2048, ..TrainConfig::default() };
        let estimate = Footprint::of(&smollm2(), 100 << 20, &config, 128, 1);
        // The f32 copy with transposed projections: 4 × (embeddings + 2 × projections) bytes.
        assert!((950e6..1000e6).contains(&((estimate.fixed - (100 << 20) - RUNTIME_BYTES) as f64)), "{estimate:?}");
        assert!((1.2e6..1.35e6).contains(&(estimate.per_token as f64)), "{estimate:?}");
        let wider = Footprint::of(&smollm2(), 100 << 20, &TrainConfig { batch_tokens: 4096, ..config.clone() }, 128, 1);
        assert_eq!(wider.peak() - estimate.peak(), 2048 * estimate.per_token);
        // An example longer than the budget is a micro-batch of its own, with its attention.
        let long = Footprint::of(&smollm2(), 100 << 20, &config, 4096, 2);
        assert_eq!(long.tokens, 4096);
        assert_eq!(long.attention, 2 * 3 * 2 * 4 * 4096 * 4096);

        assert!(estimate.describe(None).starts_with("estimated peak memory 3."), "{}", estimate.describe(None));
        assert!(estimate.describe(Some(8 << 30)).ends_with(" of 8.00 GiB it may take"));
        assert!(estimate.check(estimate.peak()).is_ok());
        let limit = estimate.peak() - 1;
        let fits = estimate.batch_tokens_within(limit).unwrap();
        assert_eq!(fits, 2047);
        let error = estimate.check(limit).unwrap_err().to_string();
        assert!(error.contains("lower the padded tokens per micro-batch (batch_tokens) to 2047 or fewer"), "{error}");
        let error = long.check(long.fixed + long.attention + 1000 * long.per_token).unwrap_err().to_string();
        assert!(error.contains("examples of 4096 tokens do not fit: lower max_seq_tokens"), "{error}");
        let error = estimate.check(1 << 20).unwrap_err().to_string();
        assert!(error.contains("does not fit: train on a machine with more memory"), "{error}");
    }

    /// Before its data is read, a job's bound takes its examples as long as it allows: at least
    /// any run's estimate within that length, and the model's context without a limit.
    #[test]
    fn the_upper_bound_covers_any_run_within_the_jobs_sequence_limit() {
        use candle_core::quantized::GgmlDType;
        let dir = tempfile::tempdir().expect("dir");
        let tiny = crate::testing::TinyModel::new(crate::testing::TinySpec::default()).expect("tiny");
        let path = tiny.write_gguf(&dir.path().join("t.gguf"), GgmlDType::F32).expect("gguf");
        let model = crate::source::read_model_config(&path).expect("config");
        let config = TrainConfig { max_seq_tokens: Some(48), batch_tokens: 32, ..TrainConfig::default() };
        let bound = Footprint::upper_bound(&path, &config, 2).expect("bound");
        let bytes = std::fs::metadata(&path).expect("file").len();
        assert_eq!(bound.longest, 48);
        for longest in [1, 16, 48] {
            assert!(bound.peak() >= Footprint::of(&model, bytes, &config, longest, 2).peak(), "{longest}");
        }
        let unlimited =
            Footprint::upper_bound(&path, &TrainConfig { max_seq_tokens: None, ..config }, 2).expect("bound");
        assert_eq!(unlimited.longest, model.context_length as u64);
        assert!(Footprint::upper_bound(&dir.path().join("absent.gguf"), &TrainConfig::default(), 1).is_err());
    }

    #[test]
    fn available_memory_is_read_from_the_system() {
        assert_eq!(mem_available("MemTotal: 100 kB\nMemAvailable:    2048 kB\n"), Some(2 << 20));
        assert_eq!(mem_available("MemTotal: 100 kB\n"), None);
        let available = available_bytes().expect("Linux");
        assert!(available > 0);
    }
}
