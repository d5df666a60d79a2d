//! Text ↔ token ids: a Hugging Face `tokenizer.json`, or a byte-level BPE rebuilt from a GGUF
//! file's own vocabulary so that a lone GGUF is enough. Also the chat formats and stop tokens.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{MlError, Result};

/// One chat message (`role` is `system`, `user` or `assistant`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// Chat prompt formats of the common instruction-tuned families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatFormat {
    /// `<|im_start|>role\n…<|im_end|>\n` (SmolLM2, Qwen, many fine-tunes).
    ChatMl,
    /// `<|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>` (Llama 3).
    Llama3,
    /// `[INST] … [/INST]` (Llama 2 chat, Mistral instruct).
    Instruct,
}

impl ChatFormat {
    /// Picks the format from a Jinja chat template's text (GGUF `tokenizer.chat_template`, or
    /// `tokenizer_config.json`) or, failing that, from the special tokens the vocabulary has.
    fn detect(template: Option<&str>, has_token: impl Fn(&str) -> bool) -> Option<Self> {
        let t = template.unwrap_or("");
        if t.contains("<|im_start|>") || (template.is_none() && has_token("<|im_start|>")) {
            Some(Self::ChatMl)
        } else if t.contains("<|start_header_id|>") || (template.is_none() && has_token("<|start_header_id|>")) {
            Some(Self::Llama3)
        } else if t.contains("[INST]") {
            Some(Self::Instruct)
        } else {
            None
        }
    }

    /// The prompt text for `messages`, ending where the assistant's reply begins.
    pub fn render(self, messages: &[ChatMessage]) -> String {
        let mut out = String::new();
        match self {
            Self::ChatMl => {
                for m in messages {
                    out.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
                }
                out.push_str("<|im_start|>assistant\n");
            }
            Self::Llama3 => {
                out.push_str("<|begin_of_text|>");
                for m in messages {
                    out.push_str(&format!(
                        "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>",
                        m.role,
                        m.content.trim()
                    ));
                }
                out.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
            }
            Self::Instruct => {
                let mut system = String::new();
                for m in messages {
                    match m.role.as_str() {
                        "system" => system = format!("{}\n\n", m.content.trim()),
                        "user" => {
                            out.push_str(&format!("[INST] {}{} [/INST]", std::mem::take(&mut system), m.content.trim()))
                        }
                        _ => out.push_str(&format!(" {}</s>", m.content.trim())),
                    }
                }
            }
        }
        out
    }

    fn stop_tokens(self) -> &'static [&'static str] {
        match self {
            Self::ChatMl => &["<|im_end|>"],
            Self::Llama3 => &["<|eot_id|>", "<|end_of_text|>"],
            Self::Instruct => &["</s>"],
        }
    }
}

/// A tokenizer with the model's special tokens and chat format.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    add_bos: bool,
    stop_ids: Vec<u32>,
    chat: Option<ChatFormat>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("bos", &self.bos)
            .field("stop_ids", &self.stop_ids)
            .field("chat", &self.chat)
            .finish()
    }
}

/// Token ids and, for each, its byte range `(start, end)` in the text encoded.
pub type IdsWithOffsets = (Vec<u32>, Vec<(usize, usize)>);

/// Largest prompt text accepted by `encode` (bytes); the context window bounds tokens later.
pub const MAX_PROMPT_BYTES: usize = 1 << 20;

impl Tokenizer {
    /// Rebuilds the tokenizer from GGUF metadata (`tokenizer.ggml.*`). Byte-level BPE
    /// vocabularies (`gpt2`: SmolLM2, Llama 3, Qwen) are supported; SentencePiece (`llama`)
    /// vocabularies need a `tokenizer.json` beside the model.
    pub fn from_gguf(metadata: &HashMap<String, Value>) -> Result<Self> {
        let text = |key: &str| metadata.get(key).and_then(|v| v.to_string().ok()).map(String::as_str);
        let strings = |key: &str| -> Result<Vec<&str>> {
            let values = metadata
                .get(key)
                .and_then(|v| v.to_vec().ok())
                .ok_or_else(|| MlError::corrupt("tokenizer", format!("GGUF lacks {key}")))?;
            values
                .iter()
                .map(|v| {
                    v.to_string()
                        .map(String::as_str)
                        .map_err(|_| MlError::corrupt("tokenizer", format!("{key} holds a non-string")))
                })
                .collect()
        };
        let id = |key: &str| metadata.get(key).and_then(|v| v.to_u32().ok());
        match text("tokenizer.ggml.model") {
            Some("gpt2") => {}
            other => {
                return Err(MlError::unsupported(
                    "tokenizer",
                    format!(
                        "GGUF vocabulary type {other:?}: only byte-level BPE (gpt2) is rebuilt from GGUF; pass a tokenizer.json"
                    ),
                ));
            }
        }
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<i32> = match metadata.get("tokenizer.ggml.token_type").and_then(|v| v.to_vec().ok()) {
            Some(values) => values.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| MlError::corrupt("tokenizer", format!("merge {m:?} is not two tokens")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe =
            BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| MlError::corrupt("tokenizer", e))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer(text("tokenizer.ggml.pre").unwrap_or("default"))?));
        inner.with_decoder(Some(ByteLevel::default()));
        // Control (3) and user-defined (4) tokens are matched whole in text, like llama.cpp does.
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| matches!(**t, 3 | 4))
            .map(|(tok, _)| AddedToken::from(tok.to_string(), true))
            .collect();
        inner.add_special_tokens(&special);
        let bos = id("tokenizer.ggml.bos_token_id");
        let add_bos = metadata.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false);
        let eos = id("tokenizer.ggml.eos_token_id");
        Ok(Self::finish(inner, bos, add_bos, eos, text("tokenizer.chat_template")))
    }

    /// Loads `tokenizer.json`, reading special tokens and the chat template from a
    /// `tokenizer_config.json` beside it when there is one.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| MlError::io(path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| MlError::corrupt("tokenizer.json", e))?;
        let config: serde_json::Value = path
            .parent()
            .map(|d| d.join("tokenizer_config.json"))
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(serde_json::Value::Null);
        let token = |key: &str| -> Option<u32> {
            let value = config.get(key)?;
            let text = value.as_str().or_else(|| value.get("content").and_then(|c| c.as_str()))?;
            inner.token_to_id(text)
        };
        let bos = token("bos_token");
        let add_bos = config.get("add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false);
        let eos = token("eos_token");
        let template = config.get("chat_template").and_then(|v| v.as_str()).map(str::to_string);
        Ok(Self::finish(inner, bos, add_bos, eos, template.as_deref()))
    }

    fn finish(
        inner: tokenizers::Tokenizer,
        bos: Option<u32>,
        add_bos: bool,
        eos: Option<u32>,
        template: Option<&str>,
    ) -> Self {
        let chat = ChatFormat::detect(template, |t| inner.token_to_id(t).is_some());
        let mut stop_ids: Vec<u32> = eos.into_iter().collect();
        for name in chat.map(ChatFormat::stop_tokens).unwrap_or_default() {
            if let Some(id) = inner.token_to_id(name) {
                stop_ids.push(id);
            }
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        Self { inner, bos, add_bos, stop_ids, chat }
    }

    /// Token ids of `text`; special-token text (`<|im_start|>`) maps to its special id.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, self.add_bos)
    }

    /// Token ids of text that continues a sequence (no beginning-of-sequence token).
    pub fn encode_continuation(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, false)
    }

    /// The token that ends a reply: the chat format's end of turn, else end of sequence.
    pub fn end_of_turn(&self) -> Option<u32> {
        let by_chat = self.chat.and_then(|c| c.stop_tokens().iter().find_map(|t| self.inner.token_to_id(t)));
        by_chat.or_else(|| self.stop_ids.first().copied())
    }

    fn encode_with(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        if text.len() > MAX_PROMPT_BYTES {
            return Err(MlError::InvalidRequest(format!("prompt of {} bytes exceeds {MAX_PROMPT_BYTES}", text.len())));
        }
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| MlError::InvalidRequest(format!("cannot tokenize: {e}")))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if add_bos
            && let Some(bos) = self.bos
            && !text.starts_with(&self.token_text(bos))
        {
            ids.push(bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// The prompt ids for a conversation in the model's chat format.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let format = self.chat.ok_or_else(|| {
            MlError::InvalidRequest("this model has no known chat format: send a plain prompt".into())
        })?;
        if messages.is_empty() {
            return Err(MlError::InvalidRequest("no chat messages".into()));
        }
        self.encode(&format.render(messages))
    }

    /// Text of `ids`; special tokens are dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| MlError::corrupt("tokenizer", e))
    }

    fn token_text(&self, id: u32) -> String {
        self.inner.id_to_token(id).unwrap_or_default()
    }

    /// Ids that end generation (end-of-sequence and the chat format's end-of-turn).
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    pub fn chat_format(&self) -> Option<ChatFormat> {
        self.chat
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// A BLAKE3 digest (hex) of the tokenizer's whole definition as `tokenizer.json` holds it
    /// (model, vocabulary and merges in id order, pre-tokenizer, added tokens): tokenizers with
    /// the same fingerprint turn every text into the same ids, so an index built with one can be
    /// queried with the other. It serializes the definition, so call it once, not per query.
    pub fn fingerprint(&self) -> Result<String> {
        let json = self.inner.to_string(false).map_err(|e| MlError::corrupt("tokenizer", e))?;
        Ok(blake3::hash(json.as_bytes()).to_hex().to_string())
    }

    /// Token ids of `text` as [`Self::encode_continuation`] gives them, with each token's byte
    /// range in `text` (a token inside a multi-byte character spans the whole character).
    pub fn encode_with_offsets(&self, text: &str) -> Result<IdsWithOffsets> {
        if text.len() > MAX_PROMPT_BYTES {
            return Err(MlError::InvalidRequest(format!("text of {} bytes exceeds {MAX_PROMPT_BYTES}", text.len())));
        }
        let encoding =
            self.inner.encode(text, false).map_err(|e| MlError::InvalidRequest(format!("cannot tokenize: {e}")))?;
        Ok((encoding.get_ids().to_vec(), encoding.get_offsets().to_vec()))
    }

    /// Writes the tokenizer as a Hugging Face `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner
            .save(path, false)
            .map_err(|e| MlError::Io { path: path.display().to_string(), source: std::io::Error::other(e.to_string()) })
    }
}

/// The pre-tokenizer llama.cpp uses for a GGUF `tokenizer.ggml.pre` value.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let byte_level = |use_regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, use_regex));
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        // SmolLM's tokenizer splits digits one by one before the GPT-2 rules.
        "smollm" | "starcoder" | "refact" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            byte_level(true),
        ])),
        "llama3" | "llama-bpe" | "llama-v3" => {
            let split = Split::new(SplitPattern::Regex(LLAMA3.into()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| MlError::corrupt("tokenizer", e))?;
            PreTokenizerWrapper::Sequence(Sequence::new(vec![PreTokenizerWrapper::Split(split), byte_level(false)]))
        }
        other => {
            return Err(MlError::unsupported(
                "tokenizer",
                format!("GGUF pre-tokenizer {other:?} (known: gpt2, smollm, llama-bpe); pass a tokenizer.json"),
            ));
        }
    })
}
