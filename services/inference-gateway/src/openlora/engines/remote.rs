//! Engine replicas over gRPC `EngineService` (cluster mode): [`RemoteEngines`] routes each
//! request by its first adapter on a consistent-hash ring with bounded loads (`ring`), so an
//! adapter stays on the replica that has it loaded; base-model requests go to the least loaded
//! replica. A background task per replica checks it with `GetEngineInfo` (and refuses one
//! serving another base model); a replica whose connection fails is marked down at once and its
//! keys move to the next replica on the ring. The set of replicas may change while serving
//! ([`RemoteEngines::set_replicas`], fed by `discovery`): replicas that stay keep their state
//! and their place on the ring, so only the keys of those that came or went move. Dropping an
//! [`EngineStream`] aborts the task forwarding it, which drops the gRPC stream and so cancels
//! the generation on the replica.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use openledger_core::{ContentHash, ErrorCode};
use openledger_ml::{Event, FinishReason, GenerateRequest, MlError, Prompt, TokenLogprobs, Usage};
use openledger_proto::inference::v1 as pb;
use openledger_proto::inference::v1::engine_service_client::EngineServiceClient;
use openledger_runtime::grpc::{ERROR_CODE_METADATA, error_code_of};
use openledger_telemetry::Metrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::sync::{Notify, mpsc};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use super::host::HostError;
use super::ring::Ring;
use super::{BaseModel, EngineHost, EngineStatus, EngineStream};

/// Longest a connection attempt to a replica may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a `GetEngineInfo` check may take before the replica counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a healthy replica is checked (its running and waiting counts refresh).
const HEALTHY_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// First and longest pause between checks of a replica that is down.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// Pause between checks of a replica refused for serving another base model.
const REFUSED_RETRY: Duration = Duration::from_secs(30);

/// One replica as the edge sees it.
struct Replica {
    url: String,
    client: EngineServiceClient<Channel>,
    healthy: AtomicBool,
    /// Requests this edge has running there (the load the ring bounds).
    in_flight: AtomicUsize,
    /// Running and waiting as the replica last reported them.
    reported: Mutex<(usize, usize)>,
    /// Wakes the checker at once (a request saw the connection fail).
    recheck: Notify,
}

impl Replica {
    /// A request could not reach the replica: down at once, and checked again at once.
    fn mark_down(&self, status: &Status) {
        self.set_down(status.message());
        self.recheck.notify_one();
    }

    fn set_down(&self, reason: &str) {
        if self.healthy.swap(false, Ordering::SeqCst) {
            tracing::warn!(replica = %self.url, error = %reason, "engine replica unreachable; its adapters move to the next replica");
        }
    }

    fn reported(&self) -> (usize, usize) {
        *self.reported.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A replica in the current set and the task checking it, stopped when the replica leaves
/// the set (and no request still holds the set it was in).
struct Member {
    replica: Arc<Replica>,
    checker: tokio::task::AbortHandle,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.checker.abort();
    }
}

/// The replicas at one moment and their ring (indexes of one are indexes of the other).
struct ReplicaSet {
    ring: Ring,
    members: Vec<Arc<Member>>,
}

impl ReplicaSet {
    fn new(members: Vec<Arc<Member>>) -> Self {
        let names: Vec<&str> = members.iter().map(|m| m.replica.url.as_str()).collect();
        Self { ring: Ring::new(&names), members }
    }
}

/// The current replica set; a request routes on the snapshot it took.
type Members = Arc<parking_lot::RwLock<Arc<ReplicaSet>>>;

/// Engine replicas behind one [`EngineHost`].
pub struct RemoteEngines {
    base: BaseModel,
    set: Members,
    /// Tasks that live as long as these engines (discovery feeding [`Self::set_replicas`]).
    tasks: Mutex<Vec<AbortOnDrop>>,
}

impl std::fmt::Debug for RemoteEngines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteEngines").field("replicas", &self.describe()).finish_non_exhaustive()
    }
}

impl RemoteEngines {
    /// Routes to the replicas at `urls` (gRPC `http://host:port`), all serving `base`. Starts
    /// one checker task per replica; a replica takes requests once its check has passed.
    /// Registers per-replica gauges on `metrics` when given. `urls` may be empty and change
    /// later ([`Self::set_replicas`]).
    pub fn start(base: BaseModel, urls: &[String], metrics: Option<&Metrics>) -> Result<Self, HostError> {
        let members = unique(urls).map(|url| member(url, base.hash)).collect::<Result<Vec<_>, _>>()?;
        let set: Members = Arc::new(parking_lot::RwLock::new(Arc::new(ReplicaSet::new(members))));
        if let Some(metrics) = metrics {
            let collector = ReplicaCollector(Arc::downgrade(&set));
            metrics.register("engine_replica", |registry| registry.register_collector(Box::new(collector)));
        }
        Ok(Self { base, set, tasks: Mutex::default() })
    }

    /// Stops `task` when these engines are dropped.
    pub fn hold_task(&self, task: tokio::task::AbortHandle) {
        self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(AbortOnDrop(task));
    }

    /// Routes to the replicas at `urls` from now on: those already known keep their checks,
    /// loads and ring places; new ones start being checked; those gone stop taking requests
    /// (requests running there finish). A URL that is not a valid endpoint is skipped with an
    /// error log.
    pub fn set_replicas(&self, urls: &[String]) {
        let mut current = self.set.write();
        let ordered: Vec<&str> = unique(urls).collect();
        let wanted: BTreeSet<&str> = ordered.iter().copied().collect();
        let known: BTreeSet<&str> = current.members.iter().map(|m| m.replica.url.as_str()).collect();
        if wanted == known {
            return;
        }
        let mut members = Vec::with_capacity(wanted.len());
        for url in ordered {
            match current.members.iter().find(|m| m.replica.url == *url) {
                Some(kept) => members.push(kept.clone()),
                None => match member(url, self.base.hash) {
                    Ok(added) => members.push(added),
                    Err(error) => tracing::error!(%error, "engine replica skipped"),
                },
            }
        }
        let added: Vec<&&str> = wanted.difference(&known).collect();
        let removed: Vec<&&str> = known.difference(&wanted).collect();
        tracing::info!(
            replicas = members.len(),
            ?added,
            ?removed,
            "engine replicas changed; only the adapters of those that came or went move"
        );
        *current = Arc::new(ReplicaSet::new(members));
    }

    fn snapshot(&self) -> Arc<ReplicaSet> {
        self.set.read().clone()
    }

    /// The replica of `set` for a request: by `key` on the ring, else the least loaded; never
    /// one in `excluded`.
    fn pick(set: &ReplicaSet, key: Option<&str>, excluded: &[usize]) -> Option<usize> {
        let replicas = set.members.iter().map(|m| &m.replica);
        let loads: Vec<usize> = replicas.clone().map(|r| r.in_flight.load(Ordering::SeqCst)).collect();
        let available: Vec<bool> =
            replicas.enumerate().map(|(i, r)| r.healthy.load(Ordering::SeqCst) && !excluded.contains(&i)).collect();
        match key {
            Some(key) => set.ring.choose(key, &loads, &available),
            None => Ring::least_loaded(&loads, &available),
        }
    }

    /// The request as a replica takes it: token ids (tokenized here when given as text).
    fn to_proto(&self, inference_id: &str, request: GenerateRequest) -> Result<pb::GenerateRequest, MlError> {
        let prompt = match request.prompt {
            Prompt::Tokens(ids) => ids,
            Prompt::Text(text) => self.base.tokenizer.encode(&text)?,
            Prompt::Chat(messages) => self.base.tokenizer.encode_chat(&messages)?,
        };
        let context = self.base.context_length;
        if prompt.len().saturating_add(request.max_tokens) > context {
            return Err(MlError::ContextOverflow {
                prompt_tokens: prompt.len(),
                max_tokens: request.max_tokens,
                context,
            });
        }
        let s = request.sampling;
        let count = |n: usize, what: &str| {
            u32::try_from(n).map_err(|_| MlError::InvalidRequest(format!("{what} {n} is too large")))
        };
        Ok(pb::GenerateRequest {
            inference_id: inference_id.to_owned(),
            prompt_token_ids: prompt,
            adapters: request
                .adapters
                .into_iter()
                .map(|(adapter_id, weight)| pb::AdapterWeight { adapter_id, weight })
                .collect(),
            sampling: Some(pb::SamplingParameters {
                temperature: s.temperature,
                top_p: s.top_p,
                top_k: count(s.top_k, "top_k")?,
                repetition_penalty: s.repetition_penalty,
                seed: s.seed,
                presence_penalty: s.presence_penalty,
                frequency_penalty: s.frequency_penalty,
            }),
            max_tokens: count(request.max_tokens, "max_tokens")?,
            stop: request.stop,
            top_logprobs: request.logprobs.map(|top| count(top, "top_logprobs")).transpose()?,
        })
    }
}

/// `urls` without repeats, in their order (which `describe` keeps; the ring ignores it).
fn unique(urls: &[String]) -> impl Iterator<Item = &str> {
    let mut seen = BTreeSet::new();
    urls.iter().map(String::as_str).filter(move |url| seen.insert(*url))
}

/// A replica at `url` and its checker task.
fn member(url: &str, base_hash: ContentHash) -> Result<Arc<Member>, HostError> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| HostError::ReplicaUrl { url: url.to_owned(), reason: e.to_string() })?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let replica = Arc::new(Replica {
        url: url.to_owned(),
        client: EngineServiceClient::new(endpoint.connect_lazy()),
        healthy: AtomicBool::new(false),
        in_flight: AtomicUsize::new(0),
        reported: Mutex::new((0, 0)),
        recheck: Notify::new(),
    });
    let checker = tokio::spawn(check_replica(replica.clone(), base_hash)).abort_handle();
    Ok(Arc::new(Member { replica, checker }))
}

#[async_trait]
impl EngineHost for RemoteEngines {
    fn base(&self) -> &BaseModel {
        &self.base
    }

    async fn generate(&self, inference_id: &str, request: GenerateRequest) -> Result<EngineStream, MlError> {
        let key = request.adapters.first().map(|(id, _)| id.clone());
        let request = self.to_proto(inference_id, request)?;
        let set = self.snapshot();
        let mut tried = Vec::new();
        loop {
            let Some(index) = Self::pick(&set, key.as_deref(), &tried) else {
                return Err(MlError::Overloaded(format!(
                    "no engine replica is reachable ({} known)",
                    set.members.len()
                )));
            };
            let replica = &set.members[index].replica;
            let in_flight = InFlight::take(replica.clone());
            match replica.client.clone().generate(request.clone()).await {
                Ok(response) => {
                    let (events, receiver) = mpsc::unbounded_channel();
                    let forward = tokio::spawn(forward(response.into_inner(), events, in_flight));
                    return Ok(EngineStream::new(receiver, AbortOnDrop(forward.abort_handle())));
                }
                Err(status) if is_connection_failure(&status) => {
                    replica.mark_down(&status);
                    tried.push(index);
                    // Retried once, on the next replica of the ring.
                    if tried.len() > 1 {
                        return Err(ml_error_of(&status, &replica.url));
                    }
                }
                Err(status) => return Err(ml_error_of(&status, &replica.url)),
            }
        }
    }

    fn describe(&self) -> Vec<EngineStatus> {
        self.snapshot()
            .members
            .iter()
            .map(|m| {
                let r = &m.replica;
                let (running, waiting) = r.reported();
                EngineStatus { name: r.url.clone(), healthy: r.healthy.load(Ordering::SeqCst), running, waiting }
            })
            .collect()
    }
}

/// Counts a request against its replica's load until dropped.
struct InFlight(Arc<Replica>);

impl InFlight {
    fn take(replica: Arc<Replica>) -> Self {
        replica.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(replica)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Relays a replica's stream as engine events until it finishes or fails.
async fn forward(
    mut stream: tonic::Streaming<pb::GenerateResponse>,
    events: mpsc::UnboundedSender<Event>,
    in_flight: InFlight,
) {
    let replica = in_flight.0.clone();
    loop {
        let event = match stream.message().await {
            Ok(Some(pb::GenerateResponse { event: Some(event) })) => event,
            Ok(Some(pb::GenerateResponse { event: None })) => continue,
            Ok(None) => {
                let ended = Status::unavailable("the replica ended the stream before it finished");
                let _ = events.send(Event::Error(ml_error_of(&ended, &replica.url)));
                return;
            }
            Err(status) => {
                if is_connection_failure(&status) {
                    replica.mark_down(&status);
                }
                let _ = events.send(Event::Error(ml_error_of(&status, &replica.url)));
                return;
            }
        };
        match event {
            pb::generate_response::Event::Token(token) => {
                let logprobs = token.logprob.map(|logprob| TokenLogprobs {
                    logprob,
                    top: token.top_logprobs.iter().map(|t| (t.token_id, t.logprob)).collect(),
                });
                if events.send(Event::Token { id: token.token_id, text: token.text, logprobs }).is_err() {
                    return;
                }
            }
            pb::generate_response::Event::Finished(finished) => {
                let finish_reason =
                    if finished.finish_reason == "length" { FinishReason::Length } else { FinishReason::Stop };
                let usage = Usage {
                    prompt_tokens: finished.prompt_tokens as usize,
                    completion_tokens: finished.completion_tokens as usize,
                };
                // The replica's slot is free before the caller hears the end, so a caller that
                // sends its next request at once sees the load it left.
                drop(in_flight);
                let _ = events.send(Event::Done { finish_reason, usage });
                return;
            }
        }
    }
}

/// A failure to reach the replica (as opposed to the replica's own answer, which carries the
/// platform error code in its metadata).
fn is_connection_failure(status: &Status) -> bool {
    matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled)
        && status.metadata().get(ERROR_CODE_METADATA).is_none()
}

/// The engine error a replica's status stands for (the reverse of `server::status_of`).
pub fn ml_error_of(status: &Status, url: &str) -> MlError {
    let message = status.message().to_owned();
    match error_code_of(status) {
        ErrorCode::InvalidArgument => MlError::InvalidRequest(message),
        ErrorCode::ResourceExhausted => MlError::Overloaded(message),
        ErrorCode::NotFound => MlError::NotFound { what: "adapter", path: message },
        ErrorCode::Unavailable => MlError::Fetch { what: format!("from engine replica {url}"), detail: message },
        _ => MlError::Io { path: format!("engine replica {url}"), source: std::io::Error::other(message) },
    }
}

/// Checks one replica until the host is dropped: often while healthy (refreshing its counts),
/// with growing pauses while down, rarely while refused for serving another base model.
async fn check_replica(replica: Arc<Replica>, base_hash: ContentHash) {
    let mut pause = FIRST_RETRY;
    let mut refused = false;
    loop {
        let mut client = replica.client.clone();
        match tokio::time::timeout(CHECK_TIMEOUT, client.get_engine_info(pb::GetEngineInfoRequest {})).await {
            Ok(Ok(info)) => {
                let info = info.into_inner();
                let hash = info.base_model_hash.as_ref().and_then(|h| ContentHash::try_from(h.value.as_slice()).ok());
                if hash == Some(base_hash) {
                    *replica.reported.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                        (info.running as usize, info.waiting as usize);
                    if !replica.healthy.swap(true, Ordering::SeqCst) {
                        tracing::info!(replica = %replica.url, base_model = %info.base_model, "engine replica up");
                    }
                    refused = false;
                    pause = HEALTHY_CHECK_INTERVAL;
                } else {
                    replica.healthy.store(false, Ordering::SeqCst);
                    if !refused {
                        let theirs = hash.map_or_else(|| "none".to_owned(), |h| h.to_hex());
                        tracing::error!(
                            replica = %replica.url,
                            replica_base_model = %info.base_model,
                            replica_base_model_hash = %theirs,
                            base_model_hash = %base_hash,
                            "engine replica refused: it serves another base model; start it with the same --base-model as the edge"
                        );
                    }
                    refused = true;
                    pause = REFUSED_RETRY;
                }
            }
            Ok(Err(status)) => {
                replica.set_down(status.message());
                pause = next_pause(pause, refused);
                refused = false;
            }
            Err(_) => {
                replica.set_down(&format!("no answer within {} ms", CHECK_TIMEOUT.as_millis()));
                pause = next_pause(pause, refused);
                refused = false;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = replica.recheck.notified() => {}
        }
    }
}

/// The pause after a failed check: the shortest right after the replica was up (or refused),
/// then doubling up to [`MAX_RETRY`].
fn next_pause(pause: Duration, refused: bool) -> Duration {
    if refused || pause == HEALTHY_CHECK_INTERVAL { FIRST_RETRY } else { (pause * 2).min(MAX_RETRY) }
}

/// Per-replica gauges read at each scrape.
#[derive(Debug)]
struct ReplicaCollector(std::sync::Weak<parking_lot::RwLock<Arc<ReplicaSet>>>);

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Collector for ReplicaCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(set) = self.0.upgrade() else { return Ok(()) };
        let set = set.read().clone();
        type Read = fn(&Replica) -> i64;
        let gauges: [(&str, &str, Read); 4] = [
            ("healthy", "1 while the replica passes its checks", |r| i64::from(r.healthy.load(Ordering::SeqCst))),
            ("in_flight", "requests this edge has running on the replica", |r| {
                r.in_flight.load(Ordering::SeqCst) as i64
            }),
            ("running_batch_size", "sequences in the replica's running batch", |r| r.reported().0 as i64),
            ("queue_depth", "requests queued on the replica", |r| r.reported().1 as i64),
        ];
        for (name, help, read) in gauges {
            let kind = ConstGauge::<i64>::default().metric_type();
            let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
            for replica in set.members.iter().map(|m| &m.replica) {
                let labels = [("replica", replica.url.as_str())];
                ConstGauge::new(read(replica)).encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
