//! The crate's one error type: variants a caller can act on.

use std::path::{Path, PathBuf};

pub type Result<T, E = AttributionError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum AttributionError {
    /// The caller asked for something the inputs cannot give (bad parameters, too long a text,
    /// an empty corpus, a version that is not sealed).
    #[error("{0}")]
    InvalidInput(String),
    /// An index or corpus file is damaged, truncated or of another format.
    #[error("{what} is corrupt: {detail}")]
    Corrupt { what: String, detail: String },
    /// An index built for other inputs (another tokenizer, adapter or corpus).
    #[error("{0}")]
    Mismatch(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Ml(#[from] openledger_ml::MlError),
}

impl AttributionError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), source }
    }

    pub fn corrupt(what: impl Into<String>, detail: impl ToString) -> Self {
        Self::Corrupt { what: what.into(), detail: detail.to_string() }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidInput(message.into())
    }
}
