//! The crate's one error type: variants a caller (the engine, the CLI, later the gateway) can act on.

/// Errors of model, tokenizer, adapter and engine operations.
#[derive(Debug, thiserror::Error)]
pub enum MlError {
    /// A model, adapter or tokenizer file does not exist.
    #[error("{what} not found: {path}")]
    NotFound { what: &'static str, path: String },
    /// A file exists but cannot be parsed (truncated, wrong format, inconsistent metadata).
    #[error("{what} is corrupt or unreadable: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// The model uses an architecture, quantization or option this engine does not implement.
    #[error("unsupported {what}: {detail}")]
    Unsupported { what: &'static str, detail: String },
    /// An adapter does not fit the loaded base model (trained for another base).
    #[error("adapter {adapter} does not fit the base model: {detail}")]
    AdapterMismatch { adapter: String, detail: String },
    /// A request is malformed (bad sampling values, empty prompt, unknown adapter id ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The prompt plus the tokens to generate exceed the model's context window.
    #[error(
        "prompt of {prompt_tokens} tokens plus max_tokens {max_tokens} exceeds the context of {context} tokens: shorten the prompt or lower max_tokens"
    )]
    ContextOverflow { prompt_tokens: usize, max_tokens: usize, context: usize },
    /// The engine's queue is full: the caller should retry later (HTTP 429 / RESOURCE_EXHAUSTED).
    #[error("engine overloaded: {0}; retry later")]
    Overloaded(String),
    /// The engine has stopped (shut down or its thread died).
    #[error("engine is not running")]
    EngineStopped,
    /// Downloading from the Hugging Face hub or an object store failed.
    #[error("fetching {what} failed: {detail}")]
    Fetch { what: String, detail: String },
    /// A tensor operation failed: a bug or an inconsistency the loaders did not catch.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Training diverged (a NaN or infinite loss or gradient); the message names the last good
    /// checkpoint.
    #[error("training stopped: {0}")]
    Diverged(String),
    /// A run would need more memory than it may take; the message says how much and what to
    /// lower.
    #[error("not enough memory: {0}")]
    InsufficientMemory(String),
    /// Writing a checkpoint failed (disk full, permissions); earlier checkpoints are intact.
    #[error("checkpoint not written: {0}")]
    Checkpoint(String),
    #[error("i/o error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl MlError {
    pub(crate) fn corrupt(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Self::Corrupt { what, detail: detail.to_string() }
    }

    pub(crate) fn unsupported(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Self::Unsupported { what, detail: detail.to_string() }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            return Self::NotFound { what: "file", path: path.display().to_string() };
        }
        Self::Io { path: path.display().to_string(), source }
    }
}

pub type Result<T, E = MlError> = std::result::Result<T, E>;
