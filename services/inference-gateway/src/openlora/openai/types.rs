//! OpenAI's request and response shapes, as the official clients send and read them. Unknown
//! request fields are ignored; the extensions (`adapters`, `top_k`, `repetition_penalty`) are
//! LoRAX's names. Every response also carries `attribution: {inference_id}`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A string or a list of strings (`stop`, `prompt`).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(one) => vec![one],
            Self::Many(many) => many,
        }
    }
}

/// One adapter of a weighted mix (extension).
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct AdapterWeight {
    /// A registry adapter id.
    pub id: String,
    /// Its weight in the linear mix of deltas (default 1).
    #[serde(default = "one")]
    pub weight: f32,
}

fn one() -> f32 {
    1.0
}

#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and no choices) before `data: [DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// The fields chat and text completions share.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct Sampling {
    /// The most tokens to generate per choice (default: what the context leaves).
    pub max_tokens: Option<u32>,
    /// OpenAI's newer name for `max_tokens`; it wins when both are given.
    pub max_completion_tokens: Option<u32>,
    /// 0..=2 (default 1); 0 is greedy.
    pub temperature: Option<f32>,
    /// (0, 1] (default 1).
    pub top_p: Option<f32>,
    /// Makes sampling repeatable: the same seed and request give the same tokens.
    pub seed: Option<i64>,
    /// Up to 8 strings; generation stops before any of them.
    pub stop: Option<OneOrMany>,
    /// How many choices to generate (1..=8, default 1).
    pub n: Option<u32>,
    /// -2..=2: lowers the logits of tokens already generated, once.
    pub presence_penalty: Option<f32>,
    /// -2..=2: lowers the logits of tokens already generated, per occurrence.
    pub frequency_penalty: Option<f32>,
    /// An end-user id, for the app's own abuse tracking (recorded, not interpreted).
    pub user: Option<String>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// Extension: a weighted linear mix of registry adapters.
    pub adapters: Option<Vec<AdapterWeight>>,
    /// Extension: how the mix is merged; only `linear`.
    pub merge_strategy: Option<String>,
    /// Extension: keep only the k most likely tokens (0: off).
    pub top_k: Option<u32>,
    /// Extension: CTRL-style penalty on tokens of the prompt and output, (0, 10] (1: off).
    pub repetition_penalty: Option<f32>,
}

/// A message's content: text, or a list of parts of which only `text` parts are accepted.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct ChatMessage {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    pub content: Option<MessageContent>,
}

/// `POST /v1/chat/completions`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// The base model's id or an adapter id (see `GET /v1/models`).
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// Return the log-probability of each output token.
    #[serde(default)]
    pub logprobs: bool,
    /// 0..=20 most likely alternatives per token (needs `logprobs`).
    pub top_logprobs: Option<u32>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// A completion prompt: text, or token ids (one prompt per request).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    /// 0..=5: log-probabilities of each token and of this many alternatives.
    pub logprobs: Option<u32>,
    /// Not supported: echoing the prompt back (400 when true).
    #[serde(default)]
    pub echo: bool,
    /// Not supported (400 when set).
    pub suffix: Option<String>,
    /// Not supported above `n` (400).
    pub best_of: Option<u32>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

/// Where the attribution of this output will be (`GET /v1/attributions/{inference_id}`), and
/// what it cost.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AttributionRef {
    pub inference_id: String,
    /// The fee captured, in base units (a decimal string); absent on chunks before the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fee: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<TokenLogprob>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AssistantMessage {
    pub role: String,
    pub content: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    /// `stop` or `length`.
    pub finish_reason: String,
}

/// The answer of `POST /v1/chat/completions` without `stream`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    pub attribution: AttributionRef,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

/// One SSE event of a streamed chat completion.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    /// Only on the last chunk, when `stream_options.include_usage` asked for it.
    pub usage: Option<Usage>,
    pub attribution: AttributionRef,
}

/// Log-probabilities in the legacy completions shape.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<std::collections::BTreeMap<String, f32>>,
    pub text_offset: Vec<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    /// `stop` or `length`; null on chunks before the last.
    pub finish_reason: Option<String>,
}

/// The answer of `POST /v1/completions` (and each SSE event when streamed).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Completion {
    pub id: String,
    /// `text_completion`.
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Option<Usage>,
    pub attribution: AttributionRef,
}

/// One entry of `GET /v1/models`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    /// `model`.
    pub object: String,
    pub created: u64,
    /// The owner: `openledger` for the base model, else the adapter owner's account id.
    pub owned_by: String,
    /// The base model an adapter applies to; null for the base model.
    pub parent: Option<String>,
    /// Base units per 1,000 prompt tokens (decimal string).
    pub price_in: String,
    /// Base units per 1,000 completion tokens (decimal string).
    pub price_out: String,
    /// The platform fee added to every call (decimal string of base units).
    pub platform_fee: String,
    /// Where its lineage is: the adapter's registry entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lineage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `GET /v1/models`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    /// `list`.
    pub object: String,
    pub data: Vec<ModelCard>,
}
