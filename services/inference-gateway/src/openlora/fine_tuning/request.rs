//! What callers send, read into model-factory's requests: a job creation body
//! ([`CreateFineTuningJobRequest::parse`], then [`CreateFineTuningJobRequest::wire`]) and the
//! job list's query (`metadata[key]=value` filters). A body is read field by field from its
//! JSON so each refusal names the field at fault (`hyperparameters.n_epochs must be a
//! positive integer or "auto"`). Unknown top-level fields are ignored (OpenAI's clients send
//! some); unknown fields inside `hyperparameters` and `lora` are refused, as they are typos
//! that would otherwise train with a setting the caller did not mean.

use std::collections::{BTreeMap, HashMap};

use openledger_proto::{common::v1::PageRequest, modelfactory::v1 as pb};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::{
    auto::{AUTO, AutoInteger, AutoModules, AutoNumber},
    view::{Hyperparameters, LoraSettings, Method},
};
use crate::edge::{ApiError, page};

/// OpenAI's limits on `metadata`.
pub const MAX_METADATA_PAIRS: usize = 16;
pub const MAX_METADATA_KEY_CHARS: usize = 64;
pub const MAX_METADATA_VALUE_CHARS: usize = 512;
/// OpenAI's limit on `suffix`.
pub const MAX_SUFFIX_CHARS: usize = 64;
/// Longest `model`, `training_file`, `validation_file` and `grant_id`.
pub const MAX_NAME_CHARS: usize = 256;
/// Longest `Idempotency-Key` header.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 256;
/// Most names in `lora.target_modules`.
pub const MAX_TARGET_MODULES: usize = 16;
/// Longest name in `lora.target_modules`.
pub const MAX_MODULE_NAME_CHARS: usize = 64;

/// `POST /v1/fine_tuning/jobs`: OpenAI's body with our `training_file` syntax and two
/// extensions, `lora` and `grant_id`. Every hyper-parameter is optional: absent or `"auto"`
/// lets the service choose from the data size.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct CreateFineTuningJobRequest {
    /// A base model id (`GET /v1/models`).
    #[schema(min_length = 1, max_length = 256)]
    pub model: String,
    /// A sealed Datanet version the caller holds a grant on: `datanet:<slug-or-id>@<version>`,
    /// the version a number or `latest`.
    #[schema(pattern = "^datanet:[^@\\s]+@([0-9]+|latest)$", max_length = 256)]
    pub training_file: String,
    /// Another sealed version to evaluate on instead of a held-out split (same syntax).
    #[schema(pattern = "^datanet:[^@\\s]+@([0-9]+|latest)$", max_length = 256)]
    pub validation_file: Option<String>,
    /// OpenAI's older spelling of `method.supervised.hyperparameters`; both may be sent if
    /// they agree.
    pub hyperparameters: Option<Hyperparameters>,
    pub method: Option<Method>,
    /// Up to 64 characters, part of `fine_tuned_model`.
    #[schema(max_length = 64)]
    pub suffix: Option<String>,
    /// Makes the run repeatable (default: chosen by the service and answered in the job).
    #[schema(minimum = 0)]
    pub seed: Option<u64>,
    /// Up to 16 pairs; keys up to 64 characters, values up to 512. Jobs can be listed by it.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Not supported: absent or empty.
    #[schema(value_type = Option<Vec<Object>>, max_items = 0)]
    pub integrations: Option<Vec<Value>>,
    /// Extension: LoRA settings; each absent or "auto" is the service's choice.
    pub lora: Option<LoraSettings>,
    /// Extension: the caller's grant on the Datanet (default: its approved grant there).
    #[schema(max_length = 256)]
    pub grant_id: Option<String>,
}

/// A 400 naming `field`.
fn invalid(field: &str, what: &str) -> ApiError {
    ApiError::invalid(format!("{field} {what}"))
}

/// An integer setting's bounds and how a refusal describes them.
#[derive(Clone, Copy)]
struct Integer {
    minimum: u64,
    maximum: u64,
}

const POSITIVE_U32: Integer = Integer { minimum: 1, maximum: u32::MAX as u64 };
const POSITIVE_U64: Integer = Integer { minimum: 1, maximum: u64::MAX };
const COUNT_U64: Integer = Integer { minimum: 0, maximum: u64::MAX };

impl Integer {
    fn kind(self) -> &'static str {
        if self.minimum == 0 { "a non-negative integer" } else { "a positive integer" }
    }

    fn read(self, value: &Value, field: &str, or_auto: bool) -> Result<u64, ApiError> {
        let auto = if or_auto { " or \"auto\"" } else { "" };
        let number = value.as_u64().filter(|number| *number >= self.minimum);
        let number = number.ok_or_else(|| invalid(field, &format!("must be {}{auto}", self.kind())))?;
        if number > self.maximum {
            return Err(invalid(field, &format!("must be at most {}", self.maximum)));
        }
        Ok(number)
    }
}

/// A real-number setting's range: `minimum < value` (or `<=` when `minimum_included`), and
/// `value < maximum` when there is one.
#[derive(Clone, Copy)]
struct Number {
    minimum: f64,
    minimum_included: bool,
    maximum: Option<f64>,
    description: &'static str,
}

const POSITIVE: Number =
    Number { minimum: 0.0, minimum_included: false, maximum: None, description: "a positive number" };
const NON_NEGATIVE: Number =
    Number { minimum: 0.0, minimum_included: true, maximum: None, description: "a non-negative number" };
const SHARE: Number =
    Number { minimum: 0.0, minimum_included: true, maximum: Some(1.0), description: "a number from 0 up to (not) 1" };

impl Number {
    fn read(self, value: &Value, field: &str) -> Result<f64, ApiError> {
        let fits = |number: &f64| {
            number.is_finite()
                && (*number > self.minimum || (self.minimum_included && *number == self.minimum))
                && self.maximum.is_none_or(|maximum| *number < maximum)
        };
        value.as_f64().filter(fits).ok_or_else(|| invalid(field, &format!("must be {} or \"auto\"", self.description)))
    }
}

/// Absent, `null` and `"auto"` leave a setting to the service.
fn is_auto(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::String(text)) => text == AUTO,
        Some(_) => false,
    }
}

fn auto_integer(value: Option<&Value>, field: &str, bounds: Integer) -> Result<AutoInteger, ApiError> {
    if is_auto(value) {
        return Ok(AutoInteger(None));
    }
    value.map(|value| bounds.read(value, field, true)).transpose().map(AutoInteger)
}

fn auto_number(value: Option<&Value>, field: &str, range: Number) -> Result<AutoNumber, ApiError> {
    if is_auto(value) {
        return Ok(AutoNumber(None));
    }
    value.map(|value| range.read(value, field)).transpose().map(AutoNumber)
}

fn string(value: Option<&Value>, field: &str, max_chars: usize) -> Result<Option<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.chars().count() > max_chars => {
            Err(invalid(field, &format!("must be at most {max_chars} characters")))
        }
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(invalid(field, "must be a string")),
    }
}

/// An object field (absent and `null` are `None`) whose keys are all in `known`.
fn object<'a>(
    value: Option<&'a Value>,
    field: &str,
    known: &[&str],
) -> Result<Option<&'a Map<String, Value>>, ApiError> {
    let fields = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(fields)) => fields,
        Some(_) => return Err(invalid(field, "must be an object")),
    };
    if !known.is_empty()
        && let Some(unknown) = fields.keys().find(|key| !known.contains(&key.as_str()))
    {
        return Err(invalid(
            &format!("{field}.{unknown}"),
            &format!("is not a setting: expected {}", known.join(", ")),
        ));
    }
    Ok(Some(fields))
}

/// `datanet:<slug-or-id>@<version>`, the version a number or `latest`.
fn datanet_file(text: &str, field: &str) -> Result<(), ApiError> {
    let well_formed =
        text.strip_prefix("datanet:").and_then(|rest| rest.split_once('@')).is_some_and(|(datanet, version)| {
            !datanet.is_empty()
                && !datanet.chars().any(|c| c.is_whitespace() || c.is_control())
                && (version == "latest" || (!version.is_empty() && version.bytes().all(|b| b.is_ascii_digit())))
        });
    if well_formed {
        return Ok(());
    }
    Err(invalid(
        field,
        &format!(
            "must name a sealed Datanet version as datanet:<slug-or-id>@<version> (a number or latest), got {text:?}"
        ),
    ))
}

const HYPERPARAMETERS: [&str; 3] = ["n_epochs", "batch_size", "learning_rate_multiplier"];
const LORA: [&str; 12] = [
    "rank",
    "alpha",
    "dropout",
    "target_modules",
    "batch_tokens",
    "eval_split",
    "weight_decay",
    "warmup_steps",
    "max_steps",
    "checkpoint_every",
    "eval_every",
    "max_seq_tokens",
];

fn hyperparameters(value: Option<&Value>, field: &str) -> Result<Option<Hyperparameters>, ApiError> {
    let Some(fields) = object(value, field, &HYPERPARAMETERS)? else { return Ok(None) };
    let at = |name: &str| format!("{field}.{name}");
    Ok(Some(Hyperparameters {
        n_epochs: auto_integer(fields.get("n_epochs"), &at("n_epochs"), POSITIVE_U32)?,
        batch_size: auto_integer(fields.get("batch_size"), &at("batch_size"), POSITIVE_U32)?,
        learning_rate_multiplier: auto_number(
            fields.get("learning_rate_multiplier"),
            &at("learning_rate_multiplier"),
            POSITIVE,
        )?,
    }))
}

fn method(value: Option<&Value>) -> Result<Option<Method>, ApiError> {
    let Some(fields) = object(value, "method", &[])? else { return Ok(None) };
    match fields.get("type") {
        Some(Value::String(kind)) if kind == Method::SUPERVISED => {}
        Some(Value::String(kind)) => {
            return Err(invalid(
                "method.type",
                &format!("must be \"supervised\" (the only method this platform trains), got {kind:?}"),
            ));
        }
        _ => return Err(invalid("method.type", "must be \"supervised\"")),
    }
    let supervised = object(fields.get("supervised"), "method.supervised", &["hyperparameters"])?;
    let hyperparameters = supervised
        .map(|supervised| hyperparameters(supervised.get("hyperparameters"), "method.supervised.hyperparameters"))
        .transpose()?
        .flatten()
        .unwrap_or_default();
    Ok(Some(Method::supervised(hyperparameters)))
}

fn target_modules(value: Option<&Value>) -> Result<AutoModules, ApiError> {
    const FIELD: &str = "lora.target_modules";
    if is_auto(value) {
        return Ok(AutoModules(None));
    }
    let refusal = || {
        invalid(FIELD, "must be a list of module names (e.g. [\"q_proj\", \"v_proj\"] or [\"all-linear\"]) or \"auto\"")
    };
    let Some(Value::Array(items)) = value else { return Err(refusal()) };
    if items.is_empty() || items.len() > MAX_TARGET_MODULES {
        return Err(invalid(FIELD, &format!("must hold 1 to {MAX_TARGET_MODULES} module names")));
    }
    let names = items
        .iter()
        .map(|item| item.as_str().filter(|name| !name.is_empty() && name.len() <= MAX_MODULE_NAME_CHARS))
        .map(|name| name.map(str::to_owned).ok_or_else(refusal))
        .collect::<Result<Vec<_>, _>>()?;
    if names.len() > 1 && names.iter().any(|name| name == "all-linear") {
        return Err(invalid(FIELD, "names \"all-linear\" alone (it means every linear module)"));
    }
    Ok(AutoModules(Some(names)))
}

fn lora(value: Option<&Value>) -> Result<Option<LoraSettings>, ApiError> {
    let Some(fields) = object(value, "lora", &LORA)? else { return Ok(None) };
    let integer = |name: &str, bounds| auto_integer(fields.get(name), &format!("lora.{name}"), bounds);
    let number = |name: &str, range| auto_number(fields.get(name), &format!("lora.{name}"), range);
    Ok(Some(LoraSettings {
        rank: integer("rank", POSITIVE_U32)?,
        alpha: number("alpha", POSITIVE)?,
        dropout: number("dropout", SHARE)?,
        target_modules: target_modules(fields.get("target_modules"))?,
        batch_tokens: integer("batch_tokens", POSITIVE_U32)?,
        eval_split: number("eval_split", SHARE)?,
        weight_decay: number("weight_decay", NON_NEGATIVE)?,
        warmup_steps: integer("warmup_steps", COUNT_U64)?,
        max_steps: integer("max_steps", POSITIVE_U64)?,
        checkpoint_every: integer("checkpoint_every", POSITIVE_U64)?,
        eval_every: integer("eval_every", POSITIVE_U64)?,
        max_seq_tokens: integer("max_seq_tokens", POSITIVE_U32)?,
    }))
}

/// Checks metadata pairs against OpenAI's limits.
fn check_metadata<'a>(pairs: impl ExactSizeIterator<Item = (&'a str, &'a str)>, field: &str) -> Result<(), ApiError> {
    if pairs.len() > MAX_METADATA_PAIRS {
        return Err(invalid(field, &format!("holds {} pairs: at most {MAX_METADATA_PAIRS}", pairs.len())));
    }
    for (key, value) in pairs {
        if key.is_empty() || key.chars().count() > MAX_METADATA_KEY_CHARS {
            return Err(invalid(field, &format!("keys must be 1 to {MAX_METADATA_KEY_CHARS} characters, got {key:?}")));
        }
        if value.chars().count() > MAX_METADATA_VALUE_CHARS {
            return Err(invalid(field, &format!("[{key:?}] must be at most {MAX_METADATA_VALUE_CHARS} characters")));
        }
    }
    Ok(())
}

fn metadata(value: Option<&Value>) -> Result<Option<BTreeMap<String, String>>, ApiError> {
    let Some(fields) = object(value, "metadata", &[])? else { return Ok(None) };
    let pairs = fields
        .iter()
        .map(|(key, value)| match value {
            Value::String(text) => Ok((key.clone(), text.clone())),
            _ => Err(invalid("metadata", &format!("[{key:?}] must be a string"))),
        })
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    check_metadata(pairs.iter().map(|(key, value)| (key.as_str(), value.as_str())), "metadata")?;
    Ok(Some(pairs))
}

fn integrations(value: Option<&Value>) -> Result<Option<Vec<Value>>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) if items.is_empty() => Ok(Some(Vec::new())),
        Some(_) => Err(invalid("integrations", "are not supported: send none (or an empty list)")),
    }
}

fn seed(value: Option<&Value>) -> Result<Option<u64>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(value) => COUNT_U64.read(value, "seed", false).map(Some),
    }
}

/// One of the three hyper-parameters from either spelling: 400 when both hold values that differ.
fn agreed<T: PartialEq + Copy + std::fmt::Debug>(
    older: Option<T>,
    newer: Option<T>,
    name: &str,
) -> Result<Option<T>, ApiError> {
    match (older, newer) {
        (Some(older), Some(newer)) if older != newer => Err(ApiError::invalid(format!(
            "hyperparameters.{name} ({older:?}) and method.supervised.hyperparameters.{name} ({newer:?}) disagree: \
             send one of them"
        ))),
        (older, newer) => Ok(older.or(newer)),
    }
}

fn narrow(value: AutoInteger) -> Option<u32> {
    // Every u32 setting was read with `POSITIVE_U32`'s maximum.
    value.0.map(|value| u32::try_from(value).unwrap_or(u32::MAX))
}

impl CreateFineTuningJobRequest {
    /// Reads a body, or 400 naming the first field at fault.
    pub fn parse(body: &Value) -> Result<Self, ApiError> {
        let Value::Object(fields) = body else {
            return Err(ApiError::invalid("the body must be a JSON object"));
        };
        let required = |name: &str| -> Result<String, ApiError> {
            string(fields.get(name), name, MAX_NAME_CHARS)?
                .filter(|text| !text.is_empty())
                .ok_or_else(|| invalid(name, "is required"))
        };
        let model = required("model")?;
        let training_file = required("training_file")?;
        datanet_file(&training_file, "training_file")?;
        let validation_file =
            string(fields.get("validation_file"), "validation_file", MAX_NAME_CHARS)?.filter(|text| !text.is_empty());
        if let Some(file) = &validation_file {
            datanet_file(file, "validation_file")?;
        }
        Ok(Self {
            model,
            training_file,
            validation_file,
            hyperparameters: hyperparameters(fields.get("hyperparameters"), "hyperparameters")?,
            method: method(fields.get("method"))?,
            suffix: string(fields.get("suffix"), "suffix", MAX_SUFFIX_CHARS)?,
            seed: seed(fields.get("seed"))?,
            metadata: metadata(fields.get("metadata"))?,
            integrations: integrations(fields.get("integrations"))?,
            lora: lora(fields.get("lora"))?,
            grant_id: string(fields.get("grant_id"), "grant_id", MAX_NAME_CHARS)?,
        })
    }

    /// The hyper-parameters of both spellings, or 400 when they disagree.
    pub fn merged_hyperparameters(&self) -> Result<Hyperparameters, ApiError> {
        let older = self.hyperparameters.unwrap_or_default();
        let newer = self
            .method
            .as_ref()
            .and_then(|method| method.supervised.as_ref())
            .map(|supervised| supervised.hyperparameters)
            .unwrap_or_default();
        Ok(Hyperparameters {
            n_epochs: AutoInteger(agreed(older.n_epochs.0, newer.n_epochs.0, "n_epochs")?),
            batch_size: AutoInteger(agreed(older.batch_size.0, newer.batch_size.0, "batch_size")?),
            learning_rate_multiplier: AutoNumber(agreed(
                older.learning_rate_multiplier.0,
                newer.learning_rate_multiplier.0,
                "learning_rate_multiplier",
            )?),
        })
    }

    /// model-factory's request for `caller`.
    pub fn wire(
        self,
        caller_account_id: u128,
        idempotency_key: String,
    ) -> Result<pb::CreateFineTuneJobRequest, ApiError> {
        let openai = self.merged_hyperparameters()?;
        let lora = self.lora.unwrap_or_default();
        let hyperparameters = pb::Hyperparameters {
            n_epochs: narrow(openai.n_epochs),
            batch_size: narrow(openai.batch_size),
            learning_rate_multiplier: openai.learning_rate_multiplier.0,
            rank: narrow(lora.rank),
            alpha: lora.alpha.0,
            // Within [0, 1): exact enough as f32.
            dropout: lora.dropout.0.map(|dropout| dropout as f32),
            target_modules: lora.target_modules.0.unwrap_or_default(),
            batch_tokens: narrow(lora.batch_tokens),
            eval_split: lora.eval_split.0,
            weight_decay: lora.weight_decay.0,
            warmup_steps: lora.warmup_steps.0,
            max_steps: lora.max_steps.0,
            checkpoint_every: lora.checkpoint_every.0,
            eval_every: lora.eval_every.0,
            max_seq_tokens: narrow(lora.max_seq_tokens),
        };
        Ok(pb::CreateFineTuneJobRequest {
            caller_account_id: Some(caller_account_id.into()),
            model: self.model,
            training_file: self.training_file,
            validation_file: self.validation_file.unwrap_or_default(),
            hyperparameters: Some(hyperparameters),
            suffix: self.suffix.unwrap_or_default(),
            seed: self.seed,
            metadata: self.metadata.unwrap_or_default().into_iter().collect(),
            grant_id: self.grant_id.unwrap_or_default(),
            idempotency_key,
        })
    }
}

/// The `Idempotency-Key` header: empty when absent, else 1 to 256 visible ASCII characters.
pub fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(String::new()) };
    let refusal = || {
        ApiError::invalid(format!(
            "the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII characters"
        ))
    };
    let text = value.to_str().map_err(|_| refusal())?.trim();
    if text.is_empty() || text.len() > MAX_IDEMPOTENCY_KEY_CHARS || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(refusal());
    }
    Ok(text.to_owned())
}

/// `GET /v1/fine_tuning/jobs`'s query (documentation: [`list_jobs_query`] reads the pairs, as
/// `metadata[key]=value` is not a shape serde's query reader knows).
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ListJobsQuery {
    /// Jobs per page, 1 to 1000 (default 20).
    #[param(minimum = 1, maximum = 1000, default = 20)]
    limit: Option<u32>,
    /// The id of the last job of the previous page; absent for the first page.
    after: Option<String>,
    /// Only jobs whose metadata holds every pair: `metadata[key]=value`, up to 16.
    #[param(style = DeepObject, explode)]
    metadata: Option<HashMap<String, String>>,
}

/// The page and the metadata filter of a job list's query pairs; other names are ignored.
pub fn list_jobs_query(pairs: Vec<(String, String)>) -> Result<(PageRequest, HashMap<String, String>), ApiError> {
    let (mut limit, mut after, mut filter) = (None, None, HashMap::new());
    for (name, value) in pairs {
        if let Some(key) = name.strip_prefix("metadata[").and_then(|rest| rest.strip_suffix(']')) {
            filter.insert(key.to_owned(), value);
            continue;
        }
        match name.as_str() {
            "limit" => {
                let number = value.trim().parse::<u32>().map_err(|_| {
                    ApiError::invalid(format!("limit must be between 1 and {}, got {value:?}", page::MAX_LIMIT))
                })?;
                limit = Some(number);
            }
            "after" => after = Some(value),
            _ => {}
        }
    }
    check_metadata(filter.iter().map(|(key, value)| (key.as_str(), value.as_str())), "metadata")?;
    let page = page::OpenAiPageQuery { limit, after }.request()?;
    Ok((page, filter))
}

#[cfg(test)]
mod tests {
    use openledger_core::ErrorCode;
    use serde_json::json;

    use super::*;

    fn minimal() -> Value {
        json!({"model": "smollm2-135m", "training_file": "datanet:med-notes@3"})
    }

    fn with(changes: Value) -> Value {
        let mut body = minimal();
        for (key, value) in changes.as_object().expect("object") {
            body[key] = value.clone();
        }
        body
    }

    fn wire(body: Value) -> Result<pb::CreateFineTuneJobRequest, ApiError> {
        CreateFineTuningJobRequest::parse(&body)?.wire(7, String::new())
    }

    /// The 400's message, which must name `field`.
    fn refused(body: Value, field: &str) -> String {
        let error = wire(body.clone()).expect_err("refused");
        assert_eq!(error.code, ErrorCode::InvalidArgument, "{body}");
        assert!(error.message.contains(field), "{body}: {:?} does not name {field}", error.message);
        error.message
    }

    #[test]
    fn a_minimal_body_leaves_every_setting_auto() {
        let request = wire(minimal()).expect("valid");
        assert_eq!(request.caller_account_id, Some(7u128.into()));
        assert_eq!((request.model.as_str(), request.training_file.as_str()), ("smollm2-135m", "datanet:med-notes@3"));
        assert_eq!(request.hyperparameters, Some(pb::Hyperparameters::default()));
        assert_eq!((request.seed, request.suffix.as_str(), request.validation_file.as_str()), (None, "", ""));
        assert!(request.metadata.is_empty());
    }

    #[test]
    fn auto_and_numbers_are_read_into_unset_and_set_fields() {
        let body = with(json!({
            "hyperparameters": {"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 0.5},
            "seed": 42, "suffix": "triage", "validation_file": "datanet:med-notes@latest",
            "grant_id": "grant-1", "unknown_openai_field": {"ignored": true},
        }));
        let request = wire(body).expect("valid");
        let settings = request.hyperparameters.expect("settings");
        assert_eq!(
            (settings.n_epochs, settings.batch_size, settings.learning_rate_multiplier),
            (Some(3), None, Some(0.5))
        );
        assert_eq!((request.seed, request.suffix.as_str()), (Some(42), "triage"));
        assert_eq!(
            (request.validation_file.as_str(), request.grant_id.as_str()),
            ("datanet:med-notes@latest", "grant-1")
        );
    }

    #[test]
    fn method_supervised_is_merged_with_hyperparameters_and_a_disagreement_is_400() {
        let newer = json!({"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 8}}});
        let request = wire(with(json!({"method": newer.clone(), "hyperparameters": {"n_epochs": 2}}))).expect("agree");
        let settings = request.hyperparameters.expect("settings");
        assert_eq!((settings.n_epochs, settings.batch_size), (Some(2), Some(8)));
        let request =
            wire(with(json!({"method": newer.clone(), "hyperparameters": {"n_epochs": "auto"}}))).expect("auto defers");
        assert_eq!(request.hyperparameters.expect("settings").n_epochs, Some(2));
        let message = refused(with(json!({"method": newer, "hyperparameters": {"n_epochs": 3}})), "n_epochs");
        assert!(message.contains("disagree"), "{message}");
        let message = refused(with(json!({"method": {"type": "dpo"}})), "method.type");
        assert!(message.contains("\"dpo\""), "{message}");
        refused(with(json!({"method": {}})), "method.type");
        refused(with(json!({"method": "supervised"})), "method");
        let request = wire(with(json!({"method": {"type": "supervised"}}))).expect("no settings");
        assert_eq!(request.hyperparameters, Some(pb::Hyperparameters::default()));
    }

    #[test]
    fn a_field_of_the_wrong_type_is_400_naming_it() {
        let message = refused(with(json!({"hyperparameters": {"n_epochs": "three"}})), "hyperparameters.n_epochs");
        assert_eq!(message, "hyperparameters.n_epochs must be a positive integer or \"auto\"");
        refused(with(json!({"hyperparameters": {"n_epochs": 0}})), "hyperparameters.n_epochs");
        refused(with(json!({"hyperparameters": {"batch_size": 2.5}})), "hyperparameters.batch_size");
        refused(with(json!({"hyperparameters": {"batch_size": 5_000_000_000u64}})), "hyperparameters.batch_size");
        refused(with(json!({"hyperparameters": {"learning_rate_multiplier": -1}})), "learning_rate_multiplier");
        refused(with(json!({"hyperparameters": {"epochs": 3}})), "hyperparameters.epochs");
        refused(with(json!({"hyperparameters": 3})), "hyperparameters");
        refused(
            with(json!({"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": true}}}})),
            "method.supervised.hyperparameters.n_epochs",
        );
        refused(with(json!({"seed": -1})), "seed");
        refused(with(json!({"suffix": 7})), "suffix");
        refused(with(json!({"suffix": "x".repeat(65)})), "suffix");
        refused(with(json!({"model": 1})), "model");
        refused(json!({"training_file": "datanet:a@1"}), "model");
        refused(json!({"model": "m"}), "training_file");
        refused(json!([]), "JSON object");
    }

    #[test]
    fn files_name_a_sealed_datanet_version() {
        for file in ["datanet:med-notes@3", "datanet:0192f0c4-aaaa@latest"] {
            assert!(wire(with(json!({"training_file": file}))).is_ok(), "{file}");
        }
        for file in
            ["file-abc123", "datanet:med-notes", "datanet:@3", "datanet:med notes@3", "datanet:a@v3", "datanet:a@"]
        {
            let message = refused(with(json!({"training_file": file})), "training_file");
            assert!(message.contains("datanet:<slug-or-id>@<version>"), "{message}");
        }
        refused(with(json!({"validation_file": "file-x"})), "validation_file");
    }

    #[test]
    fn metadata_keeps_to_openais_limits() {
        let request = wire(with(json!({"metadata": {"team": "triage"}}))).expect("valid");
        assert_eq!(request.metadata.get("team").map(String::as_str), Some("triage"));
        let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
        refused(with(json!({"metadata": many})), "metadata");
        refused(with(json!({"metadata": {"k".repeat(65): "v"}})), "metadata");
        refused(with(json!({"metadata": {"k": "v".repeat(513)}})), "metadata");
        refused(with(json!({"metadata": {"k": 1}})), "metadata");
        refused(with(json!({"metadata": ["k"]})), "metadata");
        let sixteen: Map<String, Value> = (0..16).map(|i| (format!("k{i}"), json!("v".repeat(512)))).collect();
        assert!(wire(with(json!({"metadata": sixteen}))).is_ok());
    }

    #[test]
    fn integrations_must_be_absent_or_empty() {
        assert!(wire(with(json!({"integrations": []}))).is_ok());
        assert!(wire(with(json!({"integrations": null}))).is_ok());
        refused(with(json!({"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]})), "integrations");
    }

    #[test]
    fn lora_extensions_reach_the_request_and_are_checked_field_by_field() {
        let body = with(json!({"lora": {
            "rank": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"], "batch_tokens": 4096,
            "eval_split": 0.05, "weight_decay": 0, "warmup_steps": 0, "max_steps": 500, "checkpoint_every": 100,
            "eval_every": 50, "max_seq_tokens": "auto",
        }}));
        let settings = wire(body).expect("valid").hyperparameters.expect("settings");
        assert_eq!((settings.rank, settings.alpha, settings.dropout), (Some(8), Some(16.0), Some(0.1)));
        assert_eq!(settings.target_modules, ["q_proj", "v_proj"]);
        assert_eq!(
            (settings.batch_tokens, settings.eval_split, settings.weight_decay),
            (Some(4096), Some(0.05), Some(0.0))
        );
        assert_eq!(
            (settings.warmup_steps, settings.max_steps, settings.checkpoint_every),
            (Some(0), Some(500), Some(100))
        );
        assert_eq!((settings.eval_every, settings.max_seq_tokens), (Some(50), None));
        let all = wire(with(json!({"lora": {"target_modules": ["all-linear"]}}))).expect("valid");
        assert_eq!(all.hyperparameters.expect("settings").target_modules, ["all-linear"]);

        refused(with(json!({"lora": {"rank": 0}})), "lora.rank");
        refused(with(json!({"lora": {"rank": "8"}})), "lora.rank");
        refused(with(json!({"lora": {"dropout": 1}})), "lora.dropout");
        refused(with(json!({"lora": {"eval_split": -0.1}})), "lora.eval_split");
        refused(with(json!({"lora": {"alpha": 0}})), "lora.alpha");
        refused(with(json!({"lora": {"max_steps": 0}})), "lora.max_steps");
        refused(with(json!({"lora": {"target_modules": "q_proj"}})), "lora.target_modules");
        refused(with(json!({"lora": {"target_modules": []}})), "lora.target_modules");
        refused(with(json!({"lora": {"target_modules": ["all-linear", "q_proj"]}})), "lora.target_modules");
        refused(with(json!({"lora": {"ranks": 8}})), "lora.ranks");
    }

    #[test]
    fn the_idempotency_key_header_is_optional_and_bounded() {
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(idempotency_key(&headers).expect("absent"), "");
        headers.insert("idempotency-key", "retry-1".parse().expect("header"));
        assert_eq!(idempotency_key(&headers).expect("valid"), "retry-1");
        headers.insert("idempotency-key", "k".repeat(257).parse().expect("header"));
        assert!(idempotency_key(&headers).expect_err("long").message.contains("Idempotency-Key"));
    }

    fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
    }

    #[test]
    fn metadata_query_pairs_become_the_list_filter() {
        let (page, filter) = list_jobs_query(pairs(&[
            ("metadata[team]", "triage"),
            ("metadata[run]", "a b"),
            ("after", "ftjob-1"),
            ("limit", "5"),
            ("other", "ignored"),
        ]))
        .expect("valid");
        assert_eq!(page, PageRequest { page_size: 5, page_token: "ftjob-1".into() });
        assert_eq!(filter, HashMap::from([("team".into(), "triage".into()), ("run".into(), "a b".into())]));
        let (page, filter) = list_jobs_query(Vec::new()).expect("empty");
        assert_eq!((page.page_size, filter.len()), (page::OPENAI_DEFAULT_LIMIT, 0));
        assert!(list_jobs_query(pairs(&[("limit", "0")])).expect_err("zero").message.contains("limit"));
        assert!(list_jobs_query(pairs(&[("limit", "x")])).expect_err("text").message.contains("limit"));
        assert!(list_jobs_query(pairs(&[("metadata[]", "v")])).expect_err("empty key").message.contains("metadata"));
        let many: Vec<_> = (0..17).map(|i| (format!("metadata[k{i}]"), "v".to_owned())).collect();
        assert!(list_jobs_query(many).expect_err("17 pairs").message.contains("metadata"));
    }
}
