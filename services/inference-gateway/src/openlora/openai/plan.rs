//! A request checked field by field and turned into a [`Plan`]: what to generate, how many
//! choices, with which sampling. Every refusal is a 400 naming the field and what it accepts.

use openledger_ml::{MAX_TOP_LOGPROBS, sampling::SamplingParams, tokenizer::ChatMessage as MlMessage};

use super::types::{ChatCompletionRequest, CompletionRequest, MessageContent, Prompt, Sampling};
use crate::edge::ApiError;

/// Most choices one request may ask for (`n`).
pub const MAX_CHOICES: u32 = 8;
/// Most stop strings (the engine's limit).
pub const MAX_STOP: usize = openledger_ml::engine::MAX_STOP_STRINGS;
/// Most alternatives the legacy completions `logprobs` may ask for (OpenAI's limit).
pub const MAX_COMPLETION_LOGPROBS: u32 = 5;
/// Most messages in one chat request.
pub const MAX_MESSAGES: usize = 1_024;
/// Longest `user` value kept.
pub const MAX_USER_BYTES: usize = 256;

/// Chat or text completion: decides the response shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Text,
}

/// The prompt before tokenization.
#[derive(Clone, Debug)]
pub enum PromptInput {
    Chat(Vec<MlMessage>),
    Text(String),
    Tokens(Vec<u32>),
}

/// A validated request.
#[derive(Clone, Debug)]
pub struct Plan {
    pub kind: Kind,
    pub model: String,
    /// The `adapters` mix; empty when `model` alone decides.
    pub mix: Vec<(String, f32)>,
    pub prompt: PromptInput,
    pub max_tokens: Option<u32>,
    pub n: u32,
    /// Choice `i` samples with `seed + i` when a seed is given.
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
    pub user: Option<String>,
}

fn field(name: &str, accepted: &str) -> ApiError {
    ApiError::invalid(format!("{name}: {accepted}"))
}

/// Checks a chat request.
pub fn chat(request: ChatCompletionRequest) -> Result<Plan, ApiError> {
    if request.messages.is_empty() {
        return Err(field("messages", "at least one message is required"));
    }
    if request.messages.len() > MAX_MESSAGES {
        return Err(field("messages", &format!("at most {MAX_MESSAGES} messages")));
    }
    let mut messages = Vec::with_capacity(request.messages.len());
    for (i, message) in request.messages.into_iter().enumerate() {
        let role = match message.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(field(
                    &format!("messages[{i}].role"),
                    &format!("{other:?} is not accepted: use system, developer, user or assistant"),
                ));
            }
        };
        let content = match message.content {
            None => String::new(),
            Some(MessageContent::Text(text)) => text,
            Some(MessageContent::Parts(parts)) => {
                let mut text = String::new();
                for (j, part) in parts.into_iter().enumerate() {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(piece)) => text.push_str(&piece),
                        (kind, _) => {
                            return Err(field(
                                &format!("messages[{i}].content[{j}]"),
                                &format!("only text parts are accepted, not {kind:?}"),
                            ));
                        }
                    }
                }
                text
            }
        };
        messages.push(MlMessage::new(role, &content));
    }
    let top = match (request.logprobs, request.top_logprobs) {
        (false, Some(_)) => return Err(field("top_logprobs", "needs logprobs: true")),
        (false, None) => None,
        (true, top) => {
            let top = top.unwrap_or(0);
            if top as usize > MAX_TOP_LOGPROBS {
                return Err(field("top_logprobs", &format!("accepted values are 0..={MAX_TOP_LOGPROBS}")));
            }
            Some(top as usize)
        }
    };
    common(Kind::Chat, request.model, PromptInput::Chat(messages), top, request.sampling)
}

/// Checks a text completion request.
pub fn completion(request: CompletionRequest) -> Result<Plan, ApiError> {
    if request.echo {
        return Err(field("echo", "echoing the prompt is not supported: send echo: false"));
    }
    if request.suffix.is_some() {
        return Err(field("suffix", "insertion (suffix) is not supported"));
    }
    let n = request.sampling.n.unwrap_or(1);
    if request.best_of.is_some_and(|best_of| best_of != n) {
        return Err(field("best_of", "only best_of equal to n (or unset) is supported"));
    }
    let prompt = match request.prompt {
        Prompt::Text(text) => PromptInput::Text(text),
        Prompt::Texts(texts) => PromptInput::Text(one(texts)?),
        Prompt::Tokens(tokens) => PromptInput::Tokens(tokens),
        Prompt::TokenLists(lists) => PromptInput::Tokens(one(lists)?),
    };
    let top = match request.logprobs {
        Some(top) if top > MAX_COMPLETION_LOGPROBS => {
            return Err(field("logprobs", &format!("accepted values are 0..={MAX_COMPLETION_LOGPROBS}")));
        }
        top => top.map(|top| top as usize),
    };
    common(Kind::Text, request.model, prompt, top, request.sampling)
}

/// The only element of `many`: one prompt per request.
fn one<T>(mut many: Vec<T>) -> Result<T, ApiError> {
    if many.len() == 1 { Ok(many.remove(0)) } else { Err(field("prompt", "exactly one prompt per request")) }
}

fn common(
    kind: Kind,
    model: String,
    prompt: PromptInput,
    logprobs: Option<usize>,
    sampling: Sampling,
) -> Result<Plan, ApiError> {
    if model.is_empty() {
        return Err(field("model", "name a model: GET /v1/models lists them"));
    }
    let n = sampling.n.unwrap_or(1);
    if n == 0 || n > MAX_CHOICES {
        return Err(field("n", &format!("accepted values are 1..={MAX_CHOICES}")));
    }
    let max_tokens = sampling.max_completion_tokens.or(sampling.max_tokens);
    if max_tokens == Some(0) {
        return Err(field("max_tokens", "must be at least 1"));
    }
    let temperature = sampling.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(field("temperature", "accepted values are 0..=2"));
    }
    let top_p = sampling.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(field("top_p", "accepted values are within (0, 1]"));
    }
    let penalty = |name: &str, value: Option<f32>| match value.unwrap_or(0.0) {
        value if (-2.0..=2.0).contains(&value) => Ok(value),
        _ => Err(field(name, "accepted values are -2..=2")),
    };
    let presence_penalty = penalty("presence_penalty", sampling.presence_penalty)?;
    let frequency_penalty = penalty("frequency_penalty", sampling.frequency_penalty)?;
    let repetition_penalty = sampling.repetition_penalty.unwrap_or(1.0);
    if !(repetition_penalty > 0.0 && repetition_penalty <= 10.0) {
        return Err(field("repetition_penalty", "accepted values are within (0, 10]"));
    }
    let stop = sampling.stop.map(|stop| stop.into_vec()).unwrap_or_default();
    if stop.len() > MAX_STOP || stop.iter().any(|s| s.is_empty() || s.len() > openledger_ml::engine::MAX_STOP_BYTES) {
        return Err(field(
            "stop",
            &format!("at most {MAX_STOP} non-empty strings of up to {} bytes", openledger_ml::engine::MAX_STOP_BYTES),
        ));
    }
    if sampling.stream_options.is_some() && !sampling.stream {
        return Err(field("stream_options", "only allowed when stream is true"));
    }
    let mix = mix_of(sampling.adapters, sampling.merge_strategy)?;
    if sampling.user.as_ref().is_some_and(|user| user.len() > MAX_USER_BYTES) {
        return Err(field("user", &format!("at most {MAX_USER_BYTES} bytes")));
    }
    Ok(Plan {
        kind,
        model,
        mix,
        prompt,
        max_tokens,
        n,
        sampling: SamplingParams {
            temperature,
            top_p,
            top_k: sampling.top_k.unwrap_or(0) as usize,
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            seed: sampling.seed.map(|seed| seed as u64),
        },
        stop,
        logprobs,
        stream: sampling.stream,
        include_usage: sampling.stream_options.is_some_and(|options| options.include_usage),
        user: sampling.user,
    })
}

fn mix_of(
    adapters: Option<Vec<super::types::AdapterWeight>>,
    merge_strategy: Option<String>,
) -> Result<Vec<(String, f32)>, ApiError> {
    match merge_strategy.as_deref() {
        None | Some("linear") => {}
        Some(other) => {
            return Err(field("merge_strategy", &format!("{other:?} is not supported: only linear")));
        }
    }
    let adapters = adapters.unwrap_or_default();
    if adapters.len() > openledger_ml::engine::MAX_ADAPTERS_PER_REQUEST {
        return Err(field(
            "adapters",
            &format!("at most {} adapters per request", openledger_ml::engine::MAX_ADAPTERS_PER_REQUEST),
        ));
    }
    let mut mix = Vec::with_capacity(adapters.len());
    for (i, adapter) in adapters.into_iter().enumerate() {
        if !adapter.weight.is_finite() || adapter.weight.abs() > 100.0 {
            return Err(field(&format!("adapters[{i}].weight"), "must be finite and within ±100"));
        }
        if mix.iter().any(|(id, _): &(String, f32)| *id == adapter.id) {
            return Err(field(&format!("adapters[{i}].id"), &format!("{:?} appears twice", adapter.id)));
        }
        mix.push((adapter.id, adapter.weight));
    }
    Ok(mix)
}

impl Plan {
    /// The prompt's token ids (chat through the model's template).
    pub fn tokenize(&self, tokenizer: &openledger_ml::Tokenizer) -> Result<Vec<u32>, ApiError> {
        let ids = match &self.prompt {
            PromptInput::Chat(messages) => tokenizer.encode_chat(messages),
            PromptInput::Text(text) => tokenizer.encode(text),
            PromptInput::Tokens(ids) => {
                let vocab = tokenizer.vocab_size();
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(field("prompt", &format!("token id {bad} is outside the vocabulary of {vocab}")));
                }
                Ok(ids.clone())
            }
        }
        .map_err(|error| field("prompt", &error.to_string()))?;
        if ids.is_empty() {
            return Err(field(if self.kind == Kind::Chat { "messages" } else { "prompt" }, "the prompt is empty"));
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_request(json: serde_json::Value) -> Result<Plan, ApiError> {
        chat(serde_json::from_value(json).expect("shape"))
    }

    #[test]
    fn defaults_follow_openai() {
        let plan = chat_request(serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
            .expect("valid");
        assert_eq!((plan.n, plan.sampling.temperature, plan.sampling.top_p), (1, 1.0, 1.0));
        assert_eq!((plan.max_tokens, plan.logprobs, plan.stream), (None, None, false));
    }

    #[test]
    fn bad_fields_are_refused_by_name() {
        let cases = [
            (serde_json::json!({"n": 9}), "n"),
            (serde_json::json!({"temperature": 2.5}), "temperature"),
            (serde_json::json!({"top_p": 0}), "top_p"),
            (serde_json::json!({"presence_penalty": 3}), "presence_penalty"),
            (serde_json::json!({"stop": ["", "x"]}), "stop"),
            (serde_json::json!({"stream_options": {"include_usage": true}}), "stream_options"),
            (serde_json::json!({"top_logprobs": 2}), "top_logprobs"),
            (serde_json::json!({"logprobs": true, "top_logprobs": 21}), "top_logprobs"),
            (serde_json::json!({"max_tokens": 0}), "max_tokens"),
            (serde_json::json!({"merge_strategy": "ties"}), "merge_strategy"),
            (serde_json::json!({"messages": [{"role": "tool", "content": "x"}]}), "messages[0].role"),
        ];
        for (patch, name) in cases {
            let mut request = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            for (key, value) in patch.as_object().expect("object") {
                request[key] = value.clone();
            }
            let error = chat_request(request).expect_err(name);
            assert!(error.message.starts_with(name), "{name}: {}", error.message);
        }
    }

    #[test]
    fn max_completion_tokens_wins_and_stop_takes_a_string_or_a_list() {
        let plan = chat_request(serde_json::json!({
            "model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}],
            "max_tokens": 5, "max_completion_tokens": 7, "stop": "\n", "seed": 3, "n": 2,
            "stream": true, "stream_options": {"include_usage": true}, "unknown_field": {"ignored": true}
        }))
        .expect("valid");
        assert_eq!((plan.max_tokens, plan.stop.clone(), plan.sampling.seed), (Some(7), vec!["\n".to_owned()], Some(3)));
        assert!(plan.include_usage && plan.stream);
        let plan = chat_request(
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "a"}], "stop": ["x", "y"]}),
        )
        .expect("valid");
        assert_eq!(plan.stop, vec!["x".to_owned(), "y".to_owned()]);
    }

    #[test]
    fn completions_take_one_prompt_and_refuse_what_is_not_built() {
        let request = |json| completion(serde_json::from_value(json).expect("shape"));
        assert!(matches!(
            request(serde_json::json!({"model": "m", "prompt": ["one"]})).expect("one").prompt,
            PromptInput::Text(_)
        ));
        assert!(matches!(
            request(serde_json::json!({"model": "m", "prompt": [1, 2, 3]})).expect("ids").prompt,
            PromptInput::Tokens(_)
        ));
        for (json, name) in [
            (serde_json::json!({"model": "m", "prompt": ["a", "b"]}), "prompt"),
            (serde_json::json!({"model": "m", "prompt": "a", "echo": true}), "echo"),
            (serde_json::json!({"model": "m", "prompt": "a", "logprobs": 6}), "logprobs"),
            (serde_json::json!({"model": "m", "prompt": "a", "best_of": 3}), "best_of"),
        ] {
            assert!(request(json).expect_err(name).message.starts_with(name));
        }
    }
}
