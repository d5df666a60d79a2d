//! OpenAI's answers from the driver's [`Output`]s: one JSON body (collected), or SSE chunks in
//! OpenAI's chunk format ending with `data: [DONE]`. Dropping a streamed body (the caller went
//! away) drops the output receiver, which the driver notices and cancels at once.

use std::{collections::BTreeMap, convert::Infallible, sync::Arc};

use axum::response::sse::{Event as SseEvent, Sse};
use futures::{Stream, StreamExt, stream};
use openledger_core::ErrorCode;
use openledger_ml::{FinishReason, TokenLogprobs, Tokenizer};

use super::{
    run::{Output, Started},
    types::{
        AssistantMessage, AttributionRef, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatDelta,
        ChatLogprobs, Completion, CompletionChoice, CompletionLogprobs, TokenLogprob, TopLogprob, Usage,
    },
};
use crate::edge::{ApiError, ErrorBody, ErrorDetail};

fn finish_name(reason: FinishReason) -> String {
    match reason {
        FinishReason::Stop => "stop".into(),
        FinishReason::Length => "length".into(),
    }
}

fn token_text(tokenizer: &Tokenizer, id: u32) -> String {
    tokenizer.decode(&[id]).unwrap_or_default()
}

fn chat_logprob(tokenizer: &Tokenizer, id: u32, logprobs: &TokenLogprobs) -> TokenLogprob {
    let token = token_text(tokenizer, id);
    TokenLogprob {
        bytes: token.as_bytes().to_vec(),
        token,
        logprob: logprobs.logprob,
        top_logprobs: logprobs
            .top
            .iter()
            .map(|&(alt, logprob)| {
                let token = token_text(tokenizer, alt);
                TopLogprob { bytes: token.as_bytes().to_vec(), token, logprob }
            })
            .collect(),
    }
}

fn usage(prompt_tokens: u32, completion_tokens: u32) -> Usage {
    Usage { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens }
}

fn attribution(inference_id: &str, fee: Option<u128>) -> AttributionRef {
    AttributionRef { inference_id: inference_id.to_owned(), fee: fee.map(|fee| fee.to_string()) }
}

/// One choice as collected: its text, its tokens' log-probabilities and its finish reason.
#[derive(Default)]
struct CollectedChoice {
    text: String,
    logprobs: Vec<(u32, TokenLogprobs)>,
    finish: Option<String>,
}

/// What every answer and chunk of one generation repeats.
struct Header {
    id: String,
    model: String,
    created: u64,
    inference_id: String,
}

impl Header {
    /// `prefix` is OpenAI's id prefix (`chatcmpl`, `cmpl`).
    fn of(started: &Started, prefix: &str) -> Self {
        Self {
            id: format!("{prefix}-{}", started.inference_id),
            model: started.model.clone(),
            created: started.created,
            inference_id: started.inference_id.clone(),
        }
    }
}

/// Everything the driver produced, per choice.
#[derive(Default)]
struct Collected {
    choices: BTreeMap<u32, CollectedChoice>,
    usage: Option<(u32, u32, Option<u128>)>,
    failure: Option<ApiError>,
}

async fn collect(mut started: Started) -> Result<Collected, ApiError> {
    let mut collected = Collected::default();
    while let Some(output) = started.outputs.recv().await {
        match output {
            Output::Token { choice, id, text, logprobs } => {
                let entry = collected.choices.entry(choice).or_default();
                entry.text.push_str(&text);
                if let Some(logprobs) = logprobs {
                    entry.logprobs.push((id, logprobs));
                }
            }
            Output::Finished { choice, reason } => {
                collected.choices.entry(choice).or_default().finish = Some(finish_name(reason));
            }
            Output::Failed(error) => collected.failure = Some(error),
            Output::Summary { prompt_tokens, completion_tokens, fee } => {
                collected.usage = Some((prompt_tokens, completion_tokens, fee));
                break;
            }
        }
    }
    if let Some(failure) = collected.failure.take() {
        return Err(failure);
    }
    if collected.usage.is_none() {
        return Err(ApiError::new(ErrorCode::Internal, "the generation ended without a summary"));
    }
    Ok(collected)
}

/// A whole chat completion.
pub async fn chat(started: Started, logprobs: bool, tokenizer: &Tokenizer) -> Result<ChatCompletion, ApiError> {
    let Header { id, model, created, inference_id } = Header::of(&started, "chatcmpl");
    let collected = collect(started).await?;
    let (prompt_tokens, completion_tokens, fee) = collected.usage.unwrap_or_default();
    let choices = collected
        .choices
        .into_iter()
        .map(|(index, choice)| ChatChoice {
            index,
            message: AssistantMessage { role: "assistant".into(), content: choice.text },
            logprobs: logprobs.then(|| ChatLogprobs {
                content: choice.logprobs.iter().map(|(id, lp)| chat_logprob(tokenizer, *id, lp)).collect(),
            }),
            finish_reason: choice.finish.unwrap_or_else(|| "stop".into()),
        })
        .collect();
    Ok(ChatCompletion {
        id,
        object: "chat.completion".into(),
        created,
        model,
        choices,
        usage: usage(prompt_tokens, completion_tokens),
        attribution: attribution(&inference_id, fee),
    })
}

fn completion_logprobs(tokenizer: &Tokenizer, tokens: &[(u32, TokenLogprobs)], mut offset: u32) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for (id, lp) in tokens {
        let text = token_text(tokenizer, *id);
        out.text_offset.push(offset);
        offset += text.len() as u32;
        out.tokens.push(text);
        out.token_logprobs.push(lp.logprob);
        out.top_logprobs.push(lp.top.iter().map(|&(alt, logprob)| (token_text(tokenizer, alt), logprob)).collect());
    }
    out
}

/// A whole text completion.
pub async fn completion(started: Started, logprobs: bool, tokenizer: &Tokenizer) -> Result<Completion, ApiError> {
    let Header { id, model, created, inference_id } = Header::of(&started, "cmpl");
    let collected = collect(started).await?;
    let (prompt_tokens, completion_tokens, fee) = collected.usage.unwrap_or_default();
    let choices = collected
        .choices
        .into_iter()
        .map(|(index, choice)| CompletionChoice {
            index,
            logprobs: logprobs.then(|| completion_logprobs(tokenizer, &choice.logprobs, 0)),
            text: choice.text,
            finish_reason: Some(choice.finish.unwrap_or_else(|| "stop".into())),
        })
        .collect();
    Ok(Completion {
        id,
        object: "text_completion".into(),
        created,
        model,
        choices,
        usage: Some(usage(prompt_tokens, completion_tokens)),
        attribution: attribution(&inference_id, fee),
    })
}

fn json_event(value: &impl serde::Serialize) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(value).unwrap_or_else(|_| "{}".into()))
}

fn error_event(error: ApiError) -> SseEvent {
    let code = error.detail_code.unwrap_or(error.code.as_str()).to_owned();
    json_event(&ErrorBody { error: ErrorDetail { code, message: error.message } })
}

/// The last chunk of a stream, when `stream_options.include_usage` asked for it: no choices,
/// the usage and the fee captured.
fn usage_events<T: serde::Serialize>(
    include_usage: bool,
    usage: Usage,
    fee: Option<u128>,
    chunk: impl FnOnce(Option<Usage>, Option<u128>) -> T,
) -> Vec<SseEvent> {
    if include_usage { vec![json_event(&chunk(Some(usage), fee))] } else { Vec::new() }
}

type SseStream = Sse<std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, Infallible>> + Send>>>;

/// Turns the driver's outputs into SSE events with `shape`, then `data: [DONE]`.
fn sse(started: Started, mut shape: impl FnMut(Output) -> Vec<SseEvent> + Send + 'static) -> SseStream {
    let outputs = tokio_stream::wrappers::UnboundedReceiverStream::new(started.outputs);
    let events = outputs
        .flat_map(move |output| stream::iter(shape(output)))
        .chain(stream::once(async { SseEvent::default().data("[DONE]") }))
        .map(Ok::<_, Infallible>);
    Sse::new(Box::pin(events))
}

/// A streamed chat completion.
pub fn chat_stream(started: Started, include_usage: bool, logprobs: bool, tokenizer: Arc<Tokenizer>) -> SseStream {
    let Header { id, model, created, inference_id } = Header::of(&started, "chatcmpl");
    let mut opened = std::collections::HashSet::new();
    let chunk = move |choices: Vec<ChatChunkChoice>, usage: Option<Usage>, fee: Option<u128>| ChatCompletionChunk {
        id: id.clone(),
        object: "chat.completion.chunk".into(),
        created,
        model: model.clone(),
        choices,
        usage,
        attribution: attribution(&inference_id, fee),
    };
    sse(started, move |output| match output {
        Output::Token { choice, id, text, logprobs: lp } => {
            let mut events = Vec::new();
            if opened.insert(choice) {
                let delta = ChatDelta { role: Some("assistant".into()), content: Some(String::new()) };
                let first = ChatChunkChoice { index: choice, delta, logprobs: None, finish_reason: None };
                events.push(json_event(&chunk(vec![first], None, None)));
            }
            let logprobs =
                lp.filter(|_| logprobs).map(|lp| ChatLogprobs { content: vec![chat_logprob(&tokenizer, id, &lp)] });
            if !text.is_empty() || logprobs.is_some() {
                let delta = ChatDelta { role: None, content: Some(text) };
                let piece = ChatChunkChoice { index: choice, delta, logprobs, finish_reason: None };
                events.push(json_event(&chunk(vec![piece], None, None)));
            }
            events
        }
        Output::Finished { choice, reason } => {
            let last = ChatChunkChoice {
                index: choice,
                delta: ChatDelta::default(),
                logprobs: None,
                finish_reason: Some(finish_name(reason)),
            };
            vec![json_event(&chunk(vec![last], None, None))]
        }
        Output::Failed(error) => vec![error_event(error)],
        Output::Summary { prompt_tokens, completion_tokens, fee } => {
            usage_events(include_usage, usage(prompt_tokens, completion_tokens), fee, |u, f| chunk(Vec::new(), u, f))
        }
    })
}

/// A streamed text completion.
pub fn completion_stream(
    started: Started,
    include_usage: bool,
    logprobs: bool,
    tokenizer: Arc<Tokenizer>,
) -> SseStream {
    let Header { id, model, created, inference_id } = Header::of(&started, "cmpl");
    let mut offsets: BTreeMap<u32, u32> = BTreeMap::new();
    let chunk = move |choices: Vec<CompletionChoice>, usage: Option<Usage>, fee: Option<u128>| Completion {
        id: id.clone(),
        object: "text_completion".into(),
        created,
        model: model.clone(),
        choices,
        usage,
        attribution: attribution(&inference_id, fee),
    };
    sse(started, move |output| match output {
        Output::Token { choice, id, text, logprobs: lp } => {
            let offset = offsets.entry(choice).or_default();
            let logprobs = lp.filter(|_| logprobs).map(|lp| completion_logprobs(&tokenizer, &[(id, lp)], *offset));
            *offset += text.len() as u32;
            if text.is_empty() && logprobs.is_none() {
                return Vec::new();
            }
            vec![json_event(&chunk(
                vec![CompletionChoice { index: choice, text, logprobs, finish_reason: None }],
                None,
                None,
            ))]
        }
        Output::Finished { choice, reason } => {
            let last = CompletionChoice {
                index: choice,
                text: String::new(),
                logprobs: None,
                finish_reason: Some(finish_name(reason)),
            };
            vec![json_event(&chunk(vec![last], None, None))]
        }
        Output::Failed(error) => vec![error_event(error)],
        Output::Summary { prompt_tokens, completion_tokens, fee } => {
            usage_events(include_usage, usage(prompt_tokens, completion_tokens), fee, |u, f| chunk(Vec::new(), u, f))
        }
    })
}
