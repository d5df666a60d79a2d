//! `openledger finetune …`: fine-tuning jobs through the REST edge's OpenAI-compatible routes
//! (`/v1/fine_tuning/jobs/**`) with an API key: create one, list, show, follow its events with
//! a progress bar, cancel, pause and resume. Training itself runs in model-factory;
//! `openledger model finetune` is the local trainer.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use openledger_core::Config;
use serde_json::{Value, json};

use crate::model::bar;

/// How often `--follow` asks for new events.
const FOLLOW_POLL: Duration = Duration::from_millis(500);
/// Events asked for per page while following.
const FOLLOW_PAGE_EVENTS: u32 = 100;
/// Pages read per poll to catch up (then the older events are skipped, said in a line).
const FOLLOW_MAX_PAGES: usize = 20;
/// Longest wait for one answer from the edge.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Failed polls in a row before `--follow` gives up.
const FOLLOW_MAX_FAILURES: u32 = 20;

/// Where the edge is and the key to call it with (given anywhere after `finetune`).
#[derive(Args, Clone, Default)]
#[command(next_help_heading = "Edge")]
pub struct EdgeFlags {
    /// URL of the REST edge [default: http://127.0.0.1:<http port>]
    #[arg(long, global = true, env = "OPENLEDGER_URL", value_name = "URL")]
    url: Option<String>,
    /// API key (`olk_…`) [default: the development key `openledger dev` keeps in its data dir]
    #[arg(long, global = true, env = "OPENLEDGER_API_KEY", hide_env_values = true, value_name = "KEY")]
    api_key: Option<String>,
}

#[derive(Subcommand)]
pub enum FinetuneCommand {
    /// Start a job: a LoRA adapter trained on a sealed Datanet version you hold a grant on
    Create(Box<CreateArgs>),
    /// Your jobs, newest first
    List {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// A job id: list the jobs older than it
        #[arg(long)]
        after: Option<String>,
        /// Only jobs with this metadata pair (repeatable)
        #[arg(long = "metadata", value_name = "KEY=VALUE")]
        metadata: Vec<String>,
        /// Print the edge's JSON
        #[arg(long)]
        json: bool,
    },
    /// One job
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// A job's events, oldest first; with --follow, new ones under a progress bar until the job ends
    Events {
        id: String,
        #[arg(long)]
        follow: bool,
        /// How many of the newest events to print first
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long, conflicts_with = "follow")]
        json: bool,
    },
    /// A job's checkpoints
    Checkpoints {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job that has not finished
    Cancel {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Checkpoint a running job and stop it (resume continues from there)
    Pause {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Queue a paused job again
    Resume {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

/// What `finetune create` takes; unset settings are "auto" (the service chooses).
#[derive(Args, Default)]
pub struct CreateArgs {
    /// A base model id (see GET /v1/models)
    #[arg(long)]
    model: String,
    /// `datanet:<slug-or-id>@<version>`, the version a number or `latest`
    #[arg(long, value_name = "DATANET_FILE")]
    training_file: String,
    /// Another sealed version to evaluate on instead of a held-out split
    #[arg(long, value_name = "DATANET_FILE")]
    validation_file: Option<String>,
    /// Up to 64 characters, part of the fine-tuned model's name
    #[arg(long)]
    suffix: Option<String>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    n_epochs: Option<u32>,
    #[arg(long)]
    batch_size: Option<u32>,
    /// Times the base learning rate (2e-4)
    #[arg(long)]
    learning_rate_multiplier: Option<f64>,
    /// LoRA rank
    #[arg(long)]
    rank: Option<u32>,
    /// LoRA alpha (scale = alpha / rank)
    #[arg(long)]
    alpha: Option<f64>,
    /// Comma-separated modules (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj or all-linear)
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    #[arg(long)]
    max_steps: Option<u64>,
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Share of the records held out for evaluation
    #[arg(long)]
    eval_split: Option<f64>,
    /// Padded tokens per micro-batch
    #[arg(long)]
    batch_tokens: Option<u32>,
    /// Your grant on the Datanet [default: your approved grant there]
    #[arg(long)]
    grant: Option<String>,
    /// A metadata pair (repeatable, up to 16)
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    metadata: Vec<String>,
    /// Makes a retry of this command answer the job it created
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Then follow the job's events until it ends (as `events --follow`)
    #[arg(long)]
    follow: bool,
    #[arg(long, conflicts_with = "follow")]
    json: bool,
}

pub async fn run(command: FinetuneCommand, flags: EdgeFlags, config: &Config) -> anyhow::Result<bool> {
    let edge = Edge::new(&flags, config)?;
    match command {
        FinetuneCommand::Create(args) => {
            let body = create_body(&args)?;
            let job = edge
                .send(reqwest::Method::POST, "/v1/fine_tuning/jobs", Some(&body), args.idempotency_key.as_deref())
                .await?;
            if args.json {
                println!("{job:#}");
                return Ok(true);
            }
            print!("{}", job_summary(&job));
            if !args.follow {
                return Ok(true);
            }
            follow(&edge, text(&job["id"])).await
        }
        FinetuneCommand::List { limit, after, metadata, json } => {
            let mut query = vec![("limit".to_owned(), limit.to_string())];
            query.extend(after.map(|after| ("after".to_owned(), after)));
            for (key, value) in metadata_pairs(&metadata)? {
                query.push((format!("metadata[{key}]"), value));
            }
            let list = edge.get_query("/v1/fine_tuning/jobs", &query).await?;
            if json {
                println!("{list:#}");
            } else {
                print!("{}", job_table(&list, unix_now()));
            }
            Ok(true)
        }
        FinetuneCommand::Show { id, json } => {
            let job = edge.get(&job_path(&id, "")?).await?;
            if json {
                println!("{job:#}")
            } else {
                print!("{}", job_summary(&job))
            }
            Ok(true)
        }
        FinetuneCommand::Events { id, follow: true, .. } => follow(&edge, &id).await,
        FinetuneCommand::Events { id, limit, json, .. } => {
            let query = [("limit".to_owned(), limit.to_string())];
            let list = edge.get_query(&job_path(&id, "/events")?, &query).await?;
            if json {
                println!("{list:#}");
                return Ok(true);
            }
            for event in list["data"].as_array().into_iter().flatten().rev() {
                println!("{}", event_line(event));
            }
            Ok(true)
        }
        FinetuneCommand::Checkpoints { id, json } => {
            let list = edge.get(&job_path(&id, "/checkpoints")?).await?;
            if json {
                println!("{list:#}");
                return Ok(true);
            }
            for checkpoint in list["data"].as_array().into_iter().flatten() {
                let metrics = &checkpoint["metrics"];
                let valid =
                    metrics["valid_loss"].as_f64().map_or(String::new(), |loss| format!(" valid loss {loss:.4}"));
                println!(
                    "step {:>6}  train loss {:.4}{valid}  {}",
                    checkpoint["step_number"],
                    metrics["train_loss"].as_f64().unwrap_or(f64::NAN),
                    text(&checkpoint["fine_tuned_model_checkpoint"])
                );
            }
            Ok(true)
        }
        FinetuneCommand::Cancel { id, json } => act(&edge, &id, "cancel", json).await,
        FinetuneCommand::Pause { id, json } => act(&edge, &id, "pause", json).await,
        FinetuneCommand::Resume { id, json } => act(&edge, &id, "resume", json).await,
    }
}

async fn act(edge: &Edge, id: &str, action: &str, json: bool) -> anyhow::Result<bool> {
    let job = edge.send(reqwest::Method::POST, &job_path(id, &format!("/{action}"))?, None, None).await?;
    if json {
        println!("{job:#}")
    } else {
        print!("{}", job_summary(&job))
    }
    Ok(true)
}

/// The path of a job's route; an id is `ftjob-<hex>`, and nothing else may change the path.
fn job_path(id: &str, tail: &str) -> anyhow::Result<String> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        bail!("{id:?} is not a job id: ids look like ftjob-0192…; list yours with `openledger finetune list`");
    }
    Ok(format!("/v1/fine_tuning/jobs/{id}{tail}"))
}

/// `KEY=VALUE` flags as pairs.
fn metadata_pairs(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| {
            let (key, value) =
                pair.split_once('=').with_context(|| format!("--metadata {pair:?} must be KEY=VALUE"))?;
            Ok((key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// The JSON body of `finetune create`: only the settings given (the rest are "auto").
fn create_body(args: &CreateArgs) -> anyhow::Result<Value> {
    let mut body = json!({"model": args.model, "training_file": args.training_file});
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            body[key] = value;
        }
    };
    put("validation_file", args.validation_file.as_ref().map(|file| json!(file)));
    put("suffix", args.suffix.as_ref().map(|suffix| json!(suffix)));
    put("seed", args.seed.map(|seed| json!(seed)));
    put("grant_id", args.grant.as_ref().map(|grant| json!(grant)));
    let metadata = metadata_pairs(&args.metadata)?;
    put("metadata", (!metadata.is_empty()).then(|| json!(metadata)));
    let settings = |pairs: &[(&str, Option<Value>)]| -> Option<Value> {
        let set: serde_json::Map<String, Value> =
            pairs.iter().filter_map(|(key, value)| Some(((*key).to_owned(), value.clone()?))).collect();
        (!set.is_empty()).then_some(Value::Object(set))
    };
    put(
        "hyperparameters",
        settings(&[
            ("n_epochs", args.n_epochs.map(Value::from)),
            ("batch_size", args.batch_size.map(Value::from)),
            ("learning_rate_multiplier", args.learning_rate_multiplier.map(Value::from)),
        ]),
    );
    let targets = args.targets.iter().map(|target| target.trim()).filter(|target| !target.is_empty());
    let targets: Vec<&str> = targets.collect();
    put(
        "lora",
        settings(&[
            ("rank", args.rank.map(Value::from)),
            ("alpha", args.alpha.map(Value::from)),
            ("target_modules", (!targets.is_empty()).then(|| json!(targets))),
            ("max_steps", args.max_steps.map(Value::from)),
            ("checkpoint_every", args.checkpoint_every.map(Value::from)),
            ("eval_split", args.eval_split.map(Value::from)),
            ("batch_tokens", args.batch_tokens.map(Value::from)),
        ]),
    );
    Ok(body)
}

/// The REST edge, with the caller's key.
struct Edge {
    client: reqwest::Client,
    url: String,
    api_key: String,
}

/// The edge's address when no flag or variable names it: this machine's REST port.
fn default_url(config: &Config) -> String {
    let host = match config.listen_host.as_str() {
        "" | "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
        host => host,
    };
    format!("http://{host}:{}", config.http_port)
}

/// The key from the flag or variable, else the development key `openledger dev` keeps.
fn api_key(flag: Option<&str>, data_dir: &Path) -> anyhow::Result<String> {
    if let Some(key) = flag.map(str::trim).filter(|key| !key.is_empty()) {
        return Ok(key.to_owned());
    }
    let kept = data_dir.join(openledger_inference_gateway::openlora::keys::dev::DEV_API_KEY_FILE);
    match std::fs::read_to_string(&kept) {
        Ok(key) if !key.trim().is_empty() => Ok(key.trim().to_owned()),
        _ => bail!(
            "no API key: pass --api-key or set OPENLEDGER_API_KEY (`openledger dev` prints one and keeps it in {})",
            kept.display()
        ),
    }
}

impl Edge {
    fn new(flags: &EdgeFlags, config: &Config) -> anyhow::Result<Self> {
        let url = flags.url.clone().unwrap_or_else(|| default_url(config)).trim_end_matches('/').to_owned();
        let api_key = api_key(flags.api_key.as_deref(), Path::new(&config.data_dir))?;
        let client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()?;
        Ok(Self { client, url, api_key })
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.get_query(path, &[]).await
    }

    async fn get_query(&self, path: &str, query: &[(String, String)]) -> anyhow::Result<Value> {
        self.call(self.client.get(format!("{}{path}", self.url)).query(query)).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Value> {
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        self.call(request).await
    }

    /// The answer's JSON, or the edge's error message (and code) as the error.
    async fn call(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request.bearer_auth(&self.api_key).send().await.map_err(|error| {
            anyhow::anyhow!(
                "cannot reach the REST edge at {} ({error}): is `openledger dev` running? Name it with --url or \
                 OPENLEDGER_URL",
                self.url
            )
        })?;
        let status = response.status();
        let body = response.bytes().await.context("reading the edge's answer")?;
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        match (value["error"]["message"].as_str(), value["error"]["code"].as_str()) {
            (Some(message), Some(code)) => bail!("{message} ({code})"),
            _ => bail!("the edge answered {status}: {}", String::from_utf8_lossy(&body).trim()),
        }
    }
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("")
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "cancelled")
}

/// Seconds since 1970.
fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// `12s`, `5m`, `3h` or `2d`: how long before `now` `at` was.
fn age(at: i64, now: i64) -> String {
    let seconds = now.saturating_sub(at).max(0);
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3_600 => format!("{}m", seconds / 60),
        3_600..86_400 => format!("{}h", seconds / 3_600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// `1m30s`-style durations for ETAs.
fn duration_text(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3_600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3_600, seconds / 60 % 60),
    }
}

/// A job list as a table, newest first.
fn job_table(list: &Value, now: i64) -> String {
    let jobs = list["data"].as_array().map(Vec::as_slice).unwrap_or_default();
    if jobs.is_empty() {
        return "no fine-tuning jobs\n".to_owned();
    }
    let mut out =
        format!("{:<38} {:<16} {:>13} {:>5}  {:<24} {}\n", "ID", "STATUS", "STEP", "AGE", "MODEL", "FINE-TUNED MODEL");
    for job in jobs {
        let step = format!("{}/{}", job["step"].as_u64().unwrap_or(0), job["total_steps"].as_u64().unwrap_or(0));
        out += &format!(
            "{:<38} {:<16} {:>13} {:>5}  {:<24} {}\n",
            text(&job["id"]),
            text(&job["status"]),
            step,
            age(job["created_at"].as_i64().unwrap_or(now), now),
            text(&job["model"]),
            job["fine_tuned_model"].as_str().unwrap_or("-"),
        );
    }
    if list["has_more"].as_bool() == Some(true) {
        let last = jobs.last().map(|job| text(&job["id"])).unwrap_or_default();
        out += &format!("(more: --after {last})\n");
    }
    out
}

/// A setting as the job writes it: a number, "auto", or a list.
fn setting(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// A job as `name: value` lines.
fn job_summary(job: &Value) -> String {
    let mut lines = vec![
        ("id", text(&job["id"]).to_owned()),
        ("status", text(&job["status"]).to_owned()),
        ("model", text(&job["model"]).to_owned()),
        ("training file", text(&job["training_file"]).to_owned()),
    ];
    if let Some(file) = job["validation_file"].as_str() {
        lines.push(("validation file", file.to_owned()));
    }
    if let Some(datanet) = job["datanet"].as_object() {
        let version = datanet.get("version").map(setting).unwrap_or_default();
        let root = datanet.get("merkle_root").and_then(Value::as_str).unwrap_or_default();
        lines.push((
            "datanet",
            format!("{} v{version} (root {root})", datanet.get("id").map(setting).unwrap_or_default()),
        ));
    }
    let total = job["total_steps"].as_u64().unwrap_or(0);
    if total > 0 {
        lines.push(("step", format!("{}/{total}", job["step"].as_u64().unwrap_or(0))));
    }
    let hyper = &job["hyperparameters"];
    lines.push((
        "hyperparameters",
        format!(
            "epochs {}, batch size {}, learning rate × {}",
            setting(&hyper["n_epochs"]),
            setting(&hyper["batch_size"]),
            setting(&hyper["learning_rate_multiplier"])
        ),
    ));
    let lora = &job["lora"];
    lines.push((
        "lora",
        format!(
            "rank {}, alpha {}, targets {}, max steps {}",
            setting(&lora["rank"]),
            setting(&lora["alpha"]),
            setting(&lora["target_modules"]),
            setting(&lora["max_steps"])
        ),
    ));
    if let Some(metrics) = job["final_metrics"].as_object() {
        let figure = |name: &str| metrics.get(name).and_then(Value::as_f64).unwrap_or(f64::NAN);
        lines.push((
            "final metrics",
            format!(
                "valid loss {:.4} (base {:.4}), perplexity {:.2} (base {:.2})",
                figure("valid_loss"),
                figure("base_valid_loss"),
                figure("valid_perplexity"),
                figure("base_valid_perplexity")
            ),
        ));
    }
    if let Some(tokens) = job["trained_tokens"].as_u64() {
        lines.push(("trained tokens", tokens.to_string()));
    }
    if let Some(model) = job["fine_tuned_model"].as_str() {
        lines.push(("fine-tuned model", model.to_owned()));
    }
    if job["error"].is_object() {
        lines.push(("error", format!("{} ({})", text(&job["error"]["message"]), text(&job["error"]["code"]))));
    }
    lines.into_iter().map(|(name, value)| format!("{name:>16}: {value}\n")).collect()
}

/// One event as a line: its level (unless `info`) and message.
fn event_line(event: &Value) -> String {
    match text(&event["level"]) {
        "info" | "" => text(&event["message"]).to_owned(),
        level => format!("{level}: {}", text(&event["message"])),
    }
}

/// What an event does to the `--follow` display.
#[derive(Debug, PartialEq)]
enum Shown {
    /// A line above the bar.
    Line(String),
    /// The bar's position and length, and its message.
    Bar { step: u64, total_steps: u64, message: String },
}

fn shown(event: &Value) -> Shown {
    let data = &event["data"];
    let is_step = text(&event["type"]) == "metrics" && data.get("train_loss").is_some();
    if !is_step {
        return Shown::Line(event_line(event));
    }
    let figure = |name: &str| data[name].as_f64().unwrap_or(f64::NAN);
    let eta = data["eta_seconds"].as_u64().map_or(String::new(), |eta| format!(", eta {}", duration_text(eta)));
    Shown::Bar {
        step: data["step"].as_u64().unwrap_or(0),
        total_steps: data["total_steps"].as_u64().unwrap_or(0),
        message: format!(
            "loss {:.4}, lr {:.2e}, {:.0} tok/s{eta}",
            figure("train_loss"),
            figure("learning_rate"),
            figure("tokens_per_second")
        ),
    }
}

/// The sequence number of an event id (`ftevent-<job id>-<sequence>`).
fn sequence_of(event: &Value) -> Option<u64> {
    text(&event["id"]).rsplit_once('-').and_then(|(_, sequence)| sequence.parse().ok())
}

/// The events newer than `seen` of a page (newest first), oldest first, and whether the page
/// reached `seen` (else older new events may be on the next page).
fn newer_than(page: &[Value], seen: Option<u64>) -> (Vec<Value>, bool) {
    let mut newer = Vec::new();
    for event in page {
        match (sequence_of(event), seen) {
            (Some(sequence), Some(seen)) if sequence <= seen => return (newer.into_iter().rev().collect(), true),
            _ => newer.push(event.clone()),
        }
    }
    (newer.into_iter().rev().collect(), seen.is_none())
}

/// The events after `seen`, oldest first, reading back at most [`FOLLOW_MAX_PAGES`] pages.
async fn new_events(edge: &Edge, id: &str, seen: Option<u64>) -> anyhow::Result<Vec<Value>> {
    let path = job_path(id, "/events")?;
    let mut events = Vec::new();
    let mut after = None::<String>;
    for _ in 0..FOLLOW_MAX_PAGES {
        let mut query = vec![("limit".to_owned(), FOLLOW_PAGE_EVENTS.to_string())];
        query.extend(after.clone().map(|after| ("after".to_owned(), after)));
        let page = edge.get_query(&path, &query).await?;
        let data = page["data"].as_array().map(Vec::as_slice).unwrap_or_default();
        let (mut newer, reached) = newer_than(data, seen);
        newer.append(&mut events);
        events = newer;
        // The first time, the newest page is enough history.
        if reached || seen.is_none() || page["has_more"].as_bool() != Some(true) {
            return Ok(events);
        }
        after = data.last().map(|event| text(&event["id"]).to_owned());
    }
    events.insert(0, json!({"level": "warn", "message": "(older events skipped)"}));
    Ok(events)
}

/// Shows a job's events under a progress bar until it ends: success only when it succeeded.
async fn follow(edge: &Edge, id: &str) -> anyhow::Result<bool> {
    let progress = bar(0, "{bar:30} {pos}/{len} steps {msg} [{elapsed}]");
    let mut seen = None;
    let mut failures = 0;
    let job = loop {
        let polled = async {
            let events = new_events(edge, id, seen).await?;
            let job = edge.get(&job_path(id, "")?).await?;
            anyhow::Ok((events, job))
        };
        match polled.await {
            Ok((events, job)) => {
                failures = 0;
                seen = events.iter().filter_map(sequence_of).max().or(seen);
                events.iter().for_each(|event| display(&progress, shown(event)));
                if is_terminal(text(&job["status"])) || text(&job["status"]) == "paused" {
                    break job;
                }
            }
            Err(error) if failures < FOLLOW_MAX_FAILURES => {
                failures += 1;
                progress.set_message(format!("retrying: {error:#}"));
            }
            Err(error) => {
                progress.abandon();
                return Err(error);
            }
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    };
    progress.finish_and_clear();
    match text(&job["status"]) {
        "succeeded" => {
            println!("succeeded: {}", text(&job["fine_tuned_model"]));
            Ok(true)
        }
        "failed" => {
            println!("failed: {} ({})", text(&job["error"]["message"]), text(&job["error"]["code"]));
            Ok(false)
        }
        "paused" => {
            println!("paused at step {}: openledger finetune resume {id}", job["step"]);
            Ok(false)
        }
        status => {
            println!("{status}");
            Ok(false)
        }
    }
}

fn display(progress: &ProgressBar, shown: Shown) {
    match shown {
        Shown::Line(line) if progress.is_hidden() => eprintln!("{line}"),
        Shown::Line(line) => progress.println(line),
        Shown::Bar { step, total_steps, message } => {
            progress.set_length(total_steps);
            progress.set_position(step);
            progress.set_message(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sequence: u64, kind: &str, data: Value) -> Value {
        json!({"object": "fine_tuning.job.event", "id": format!("ftevent-ftjob-1-{sequence}"), "level": "info",
               "message": format!("event {sequence}"), "type": kind, "data": data})
    }

    #[test]
    fn step_events_move_the_bar_and_the_others_print_a_line() {
        let step = event(
            3,
            "metrics",
            json!({"step": 10, "total_steps": 100, "train_loss": 1.5, "learning_rate": 0.0002,
                   "tokens_per_second": 250.0, "eta_seconds": 90, "epoch": 1, "grad_norm": 0.5}),
        );
        assert_eq!(
            shown(&step),
            Shown::Bar { step: 10, total_steps: 100, message: "loss 1.5000, lr 2.00e-4, 250 tok/s, eta 1m30s".into() }
        );
        let eval = event(4, "metrics", json!({"step": 50, "valid_loss": 1.0, "valid_perplexity": 2.7}));
        assert_eq!(shown(&eval), Shown::Line("event 4".into()));
        let mut warning = event(5, "message", json!({}));
        warning["level"] = json!("warn");
        assert_eq!(shown(&warning), Shown::Line("warn: event 5".into()));
    }

    #[test]
    fn only_events_after_the_newest_seen_are_shown_oldest_first() {
        let page: Vec<Value> = (1..=5).rev().map(|sequence| event(sequence, "message", json!({}))).collect();
        let sequences = |events: Vec<Value>| events.iter().filter_map(sequence_of).collect::<Vec<_>>();
        let (first, reached) = newer_than(&page, None);
        assert_eq!((sequences(first), reached), (vec![1, 2, 3, 4, 5], true));
        let (new, reached) = newer_than(&page, Some(3));
        assert_eq!((sequences(new), reached), (vec![4, 5], true));
        let (none, reached) = newer_than(&page, Some(5));
        assert_eq!((sequences(none), reached), (vec![], true));
        let (all, reached) = newer_than(&page[..2], Some(1));
        assert_eq!((sequences(all), reached), (vec![4, 5], false), "older new events may be on the next page");
    }

    #[test]
    fn create_sends_only_the_settings_given() {
        let args = CreateArgs {
            model: "smollm2-135m".into(),
            training_file: "datanet:med-notes@3".into(),
            n_epochs: Some(2),
            rank: Some(8),
            targets: vec!["q_proj".into(), "v_proj".into()],
            metadata: vec!["team=triage".into()],
            ..Default::default()
        };
        assert_eq!(
            create_body(&args).expect("body"),
            json!({"model": "smollm2-135m", "training_file": "datanet:med-notes@3", "hyperparameters": {"n_epochs": 2},
                   "lora": {"rank": 8, "target_modules": ["q_proj", "v_proj"]}, "metadata": {"team": "triage"}})
        );
        let bare = CreateArgs { model: "m".into(), training_file: "datanet:a@latest".into(), ..Default::default() };
        assert_eq!(create_body(&bare).expect("body"), json!({"model": "m", "training_file": "datanet:a@latest"}));
        let bad = CreateArgs { metadata: vec!["team".into()], ..Default::default() };
        assert!(create_body(&bad).expect_err("no =").to_string().contains("KEY=VALUE"));
    }

    #[test]
    fn the_key_comes_from_the_flag_else_the_development_key_file() {
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(api_key(Some("olk_flag"), dir.path()).expect("flag"), "olk_flag");
        let missing = api_key(None, dir.path()).expect_err("no key");
        assert!(missing.to_string().contains("--api-key"), "{missing}");
        std::fs::write(dir.path().join("dev-api-key"), "olk_dev\n").expect("write");
        assert_eq!(api_key(None, dir.path()).expect("kept"), "olk_dev");
    }

    #[test]
    fn the_default_edge_is_this_machines_rest_port() {
        let config = Config { listen_host: "0.0.0.0".into(), http_port: 9000, ..Config::default() };
        assert_eq!(default_url(&config), "http://127.0.0.1:9000");
        assert_eq!(default_url(&Config::default()), "http://127.0.0.1:8080");
    }

    #[test]
    fn jobs_read_as_a_table_and_a_summary() {
        let job = json!({"id": "ftjob-1", "status": "running", "model": "smollm2-135m", "created_at": 1_000,
            "step": 5, "total_steps": 10, "fine_tuned_model": null, "training_file": "datanet:a@1",
            "hyperparameters": {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto"},
            "lora": {"rank": 8, "alpha": "auto", "target_modules": ["q_proj"], "max_steps": "auto"}, "error": null});
        let table = job_table(&json!({"data": [job], "has_more": true}), 1_000 + 125);
        assert!(table.contains("ftjob-1") && table.contains("5/10") && table.contains("2m"), "{table}");
        assert!(table.ends_with("(more: --after ftjob-1)\n"), "{table}");
        assert_eq!(job_table(&json!({"data": []}), 0), "no fine-tuning jobs\n");
        let summary = job_summary(&job);
        assert!(summary.contains("epochs 2, batch size auto"), "{summary}");
        assert!(summary.contains("rank 8, alpha auto, targets q_proj"), "{summary}");
        assert!(!summary.contains("fine-tuned model") && !summary.contains("error"), "{summary}");
        assert_eq!(job_path("ftjob-1", "/cancel").expect("id"), "/v1/fine_tuning/jobs/ftjob-1/cancel");
        assert!(job_path("ftjob-1/../x", "").is_err());
    }
}
