//! The OpenLoRA engine: Llama-family decoders on candle (GGUF and safetensors), tokenizers,
//! PEFT LoRA adapters and batched generation with a different adapter mix per sequence.
//! It owns no network surface: today only the CLI drives it (`openledger model ...`); the
//! inference gateway is to host it next, behind the REST edge.

pub mod adapters;
pub mod config;
pub mod embed;
pub mod engine;
pub mod error;
mod host;
pub mod kernels;
pub mod lora;
// Maps files and advises the kernel about buffers: the crate's only system calls on memory.
#[allow(unsafe_code)]
mod memory;
pub mod model;
mod pool;
pub mod sampling;
mod saved_panels;
pub mod source;
pub mod testing;
pub mod tokenizer;
pub mod train;
pub mod validate;

pub use config::ModelConfig;
pub use engine::{
    Engine, EngineConfig, EngineStats, Event, FinishReason, GenerateRequest, Generation, MAX_TOP_LOGPROBS, Prompt,
    TokenLogprobs, Usage,
};
pub use error::{MlError, Result};
pub use lora::{AdapterConfig, AdapterMix, AdapterPrecision, LoraAdapter, Target};
pub use model::{KvCache, LlamaModel, SeqStep};
pub use pool::ComputePool;
pub use source::{Source, load_model};
pub use tokenizer::{ChatFormat, ChatMessage, Tokenizer};
