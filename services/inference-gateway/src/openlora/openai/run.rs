//! One paid generation from admission to capture. [`start`] resolves the model, tokenizes,
//! checks the context and the key's limits, starts the choices on the engines (an engine's
//! refusal costs nothing) and holds the largest fee; [`drive`] then runs in its own task: it
//! forwards tokens as [`Output`]s, notices a caller that went away (cancelling at once),
//! publishes `ol.inference.completed`, captures the fee of what was produced and records metrics.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, stream::SelectAll};
use openledger_core::{ErrorCode, Id};
use openledger_ml::{Event, FinishReason, GenerateRequest, MlError, Prompt, TokenLogprobs};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::plan::Plan;
use crate::{
    edge::ApiError,
    openlora::{
        OpenLora,
        catalog::Choice,
        engines::{EngineHost, EngineStream},
        events::Completed,
        keys::Caller,
        metering::Tariff,
        metrics::{AdapterLabels, OutcomeLabels},
    },
};

/// Attempts at capturing a fee before the request is logged as unpaid (the hold then expires).
pub const CAPTURE_ATTEMPTS: u32 = 5;

/// What the driver sends to the response.
#[derive(Debug)]
pub enum Output {
    Token {
        choice: u32,
        id: u32,
        text: String,
        logprobs: Option<TokenLogprobs>,
    },
    Finished {
        choice: u32,
        reason: FinishReason,
    },
    /// The last message: usage and the captured fee (`None` when the capture failed).
    Summary {
        prompt_tokens: u32,
        completion_tokens: u32,
        fee: Option<u128>,
    },
    /// A choice failed inside the engine; the summary still follows.
    Failed(ApiError),
}

/// A started generation: its ids and the driver's output.
pub struct Started {
    pub inference_id: String,
    pub created: u64,
    pub model: String,
    pub outputs: UnboundedReceiver<Output>,
}

/// The engine refusals, as the edge answers them.
pub fn engine_error(error: MlError) -> ApiError {
    match error {
        MlError::Overloaded(message) => ApiError::new(
            ErrorCode::Unavailable,
            format!("the engines are at capacity ({message}): retry after the indicated time"),
        )
        .with_detail_code("overloaded")
        .with_retry_after(1),
        MlError::ContextOverflow { prompt_tokens, max_tokens, context } => ApiError::invalid(format!(
            "max_tokens: the prompt's {prompt_tokens} tokens plus max_tokens {max_tokens} exceed the context of {context} tokens"
        )),
        MlError::InvalidRequest(message) => ApiError::invalid(message),
        MlError::NotFound { what, path } => {
            ApiError::new(ErrorCode::NotFound, format!("{what} {path} cannot be loaded by the engines"))
                .with_detail_code("model_not_found")
        }
        MlError::EngineStopped => ApiError::new(ErrorCode::Unavailable, "the engine is stopping: retry shortly"),
        other => ApiError::new(ErrorCode::Internal, other.to_string()),
    }
}

/// Admits, starts and pays for one request; errors here cost the caller nothing.
pub async fn start(state: &OpenLora, caller: Caller, plan: Plan, arrived: Instant) -> Result<Started, ApiError> {
    let engines = state.engines()?;
    let base = engines.base().clone();
    let choice = state.catalog.resolve(&base, &plan.model, &plan.mix, &caller).await?;
    let prompt = plan.tokenize(&base.tokenizer)?;
    let context = base.context_length;
    if prompt.len() >= context {
        return Err(ApiError::invalid(format!(
            "messages: the prompt is {} tokens, but the context of {} is {context} tokens",
            prompt.len(),
            base.id
        )));
    }
    let room = (context - prompt.len()) as u32;
    let max_tokens = match plan.max_tokens {
        Some(max) if max > room => {
            return Err(ApiError::invalid(format!(
                "max_tokens: {max} plus the prompt's {} tokens exceed the context of {context} tokens: ask for at most {room}",
                prompt.len()
            )));
        }
        Some(max) => max,
        None => room,
    };
    let tokens_in = prompt.len() as u32;
    let most_out = max_tokens.saturating_mul(plan.n);
    state.keys.admit(&caller, u64::from(tokens_in) + u64::from(most_out))?;
    let tariff = Tariff {
        price_in: choice.price_in,
        price_out: choice.price_out,
        platform_fee: state.metering.platform_fee().await?,
    };
    let max_fee = tariff.fee(tokens_in, most_out)?;
    let inference_id = Id::new().to_string();
    let mut streams = Vec::with_capacity(plan.n as usize);
    for index in 0..plan.n {
        let request = generate_request(&plan, &choice, &prompt, max_tokens, index);
        streams.push(engines.generate(&inference_id, request).await.map_err(engine_error)?);
    }
    // Held after the engines accepted, so a refused request holds nothing; a failed hold drops
    // the streams, which cancels them.
    state.metering.hold(&inference_id, caller.account_id, max_fee).await?;
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs());
    let (sender, outputs) = unbounded_channel();
    let run = Run {
        state: state.clone(),
        inference_id: inference_id.clone(),
        caller,
        choice,
        tariff,
        prompt,
        base_model: base,
        arrived,
        started_at: SystemTime::now(),
    };
    tokio::spawn(run.drive(streams, sender));
    Ok(Started { inference_id, created, model: plan.model, outputs })
}

fn generate_request(plan: &Plan, choice: &Choice, prompt: &[u32], max_tokens: u32, index: u32) -> GenerateRequest {
    let mut sampling = plan.sampling.clone();
    sampling.seed = sampling.seed.map(|seed| seed.wrapping_add(u64::from(index)));
    GenerateRequest {
        prompt: Prompt::Tokens(prompt.to_vec()),
        adapters: choice.adapters.iter().map(|adapter| (adapter.id.clone(), adapter.weight)).collect(),
        sampling,
        max_tokens: max_tokens as usize,
        stop: plan.stop.clone(),
        logprobs: plan.logprobs,
    }
}

/// One choice's progress.
#[derive(Default)]
struct ChoiceState {
    ids: Vec<u32>,
    text: String,
    finish: Option<&'static str>,
    last_token_at: Option<Instant>,
}

struct Run {
    state: OpenLora,
    inference_id: String,
    caller: Caller,
    choice: Choice,
    tariff: Tariff,
    prompt: Vec<u32>,
    base_model: crate::openlora::engines::BaseModel,
    arrived: Instant,
    started_at: SystemTime,
}

impl Run {
    async fn drive(self, mut streams: Vec<EngineStream>, out: UnboundedSender<Output>) {
        let mut choices: Vec<ChoiceState> = streams.iter().map(|_| ChoiceState::default()).collect();
        let mut merged: SelectAll<_> =
            futures::stream::select_all(streams.iter_mut().enumerate().map(|(i, stream)| {
                let (_, empty) = unbounded_channel();
                let events = std::mem::replace(&mut stream.events, empty);
                UnboundedReceiverStream::new(events).map(move |event| (i, event))
            }));
        let mut caller_gone = false;
        let mut first_token = true;
        loop {
            let next = tokio::select! {
                () = out.closed() => { caller_gone = true; break; }
                next = merged.next() => next,
            };
            let Some((i, event)) = next else { break };
            let state = &mut choices[i];
            match event {
                Event::Token { id, text, logprobs } => {
                    let now = Instant::now();
                    if first_token {
                        self.state.metrics.time_to_first_token.observe((now - self.arrived).as_secs_f64());
                        first_token = false;
                    }
                    if let Some(last) = state.last_token_at.replace(now) {
                        self.state.metrics.inter_token_latency.observe((now - last).as_secs_f64());
                    }
                    state.ids.push(id);
                    state.text.push_str(&text);
                    if out.send(Output::Token { choice: i as u32, id, text, logprobs }).is_err() {
                        caller_gone = true;
                        break;
                    }
                }
                Event::Done { finish_reason, .. } => {
                    state.finish = Some(match finish_reason {
                        FinishReason::Stop => "stop",
                        FinishReason::Length => "length",
                    });
                    let _ = out.send(Output::Finished { choice: i as u32, reason: finish_reason });
                }
                Event::Error(error) => {
                    tracing::warn!(inference_id = %self.inference_id, %error, "a choice failed in the engine");
                    state.finish = Some("error");
                    let _ = out.send(Output::Failed(engine_error(error)));
                }
            }
        }
        // Tokens the engines produced but the caller never read are still paid for.
        drop(merged);
        for (stream, state) in streams.iter_mut().zip(&mut choices) {
            stream.events.close();
            while let Ok(event) = stream.events.try_recv() {
                if let Event::Token { id, text, .. } = event {
                    state.ids.push(id);
                    state.text.push_str(&text);
                }
            }
        }
        drop(streams);
        let outcome = if caller_gone { "cancelled" } else { self.outcome(&choices) };
        for state in &mut choices {
            state.finish.get_or_insert("cancelled");
        }
        let fee = self.settle(&choices).await;
        self.record(&choices, outcome);
        let completion_tokens = choices.iter().map(|c| c.ids.len() as u32).sum();
        let _ = out.send(Output::Summary { prompt_tokens: self.prompt.len() as u32, completion_tokens, fee });
    }

    fn outcome(&self, choices: &[ChoiceState]) -> &'static str {
        if choices.iter().any(|c| c.finish == Some("error")) {
            "error"
        } else if choices.iter().all(|c| c.finish == Some("stop")) {
            "stop"
        } else {
            "length"
        }
    }

    /// Publishes the completion, then captures the fee of what was produced (retrying).
    ///
    /// The event goes to the outbox first, so a capture can never exist without the event that
    /// gets it settled: a gateway killed after its capture would otherwise leave the fee in
    /// escrow with nobody to attribute it. Killed between the two (or the ledger away past the
    /// retries), the event exists and the capture does not: the ledger's `ledger-capture`
    /// consumer captures the event's `fee` from the hold a few seconds later (the same
    /// transfer id, so never twice). The ledger settles what it captured; the event's `fee` is
    /// the same formula over the same tariff.
    async fn settle(&self, choices: &[ChoiceState]) -> Option<u128> {
        let tokens_in = self.prompt.len() as u32;
        let tokens_out: u32 = choices.iter().map(|c| c.ids.len() as u32).sum();
        let expected = self.tariff.fee(tokens_in, tokens_out).ok()?;
        let completed = Completed {
            inference_id: &self.inference_id,
            base: &self.base_model,
            choice: &self.choice,
            caller: &self.caller,
            prompt: &self.prompt,
            completions: choices
                .iter()
                .map(|c| (c.ids.as_slice(), c.text.as_str(), c.finish.unwrap_or("cancelled")))
                .collect(),
            tariff: &self.tariff,
            fee: expected,
            started_at: self.started_at,
        };
        if !self.state.events.completed(completed).await {
            return None;
        }
        for attempt in 0..CAPTURE_ATTEMPTS {
            match self.state.metering.capture(&self.inference_id, tokens_in, tokens_out, &self.tariff).await {
                Ok(captured) => return Some(captured),
                Err(error) => {
                    tracing::warn!(inference_id = %self.inference_id, attempt, error = %error.message, "capturing the fee failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
                }
            }
        }
        tracing::error!(inference_id = %self.inference_id, "the fee was not captured: the hold will expire unpaid");
        None
    }

    fn record(&self, choices: &[ChoiceState], outcome: &str) {
        let metrics = &self.state.metrics;
        let tokens_out: u64 = choices.iter().map(|c| c.ids.len() as u64).sum();
        metrics.request_latency.observe(self.arrived.elapsed().as_secs_f64());
        metrics.prompt_tokens.inc_by(self.prompt.len() as u64);
        metrics.completion_tokens.inc_by(tokens_out);
        metrics.requests.get_or_create(&OutcomeLabels { outcome: outcome.to_owned() }).inc();
        let names: Vec<String> = if self.choice.adapters.is_empty() {
            vec!["base".to_owned()]
        } else {
            self.choice.adapters.iter().map(|a| a.id.clone()).collect()
        };
        for adapter in names {
            let labels = AdapterLabels { adapter };
            metrics.adapter_requests.get_or_create(&labels).inc();
            metrics.adapter_tokens.get_or_create(&labels).inc_by(tokens_out);
        }
    }
}

impl OpenLora {
    /// The engines, or 503 saying why there are none (still loading, or no base model).
    pub fn engines(&self) -> Result<std::sync::Arc<dyn EngineHost>, ApiError> {
        self.engines.get().map_err(|message| ApiError::new(ErrorCode::Unavailable, message))
    }
}
