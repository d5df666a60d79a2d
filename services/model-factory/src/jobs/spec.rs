//! What a job asks for, checked before anything runs: the `training_file` syntax, the suffix
//! and metadata, and the hyper-parameters, with `"auto"` (an unset field) resolved from the
//! size of the sealed version into the [`TrainConfig`] the trainer runs.
//!
//! Auto rules (documented in the README), with `n` the version's record count:
//! - `n_epochs`: `clamp(ceil(100 / n), 1, 10)`, so small sets are seen about 100 times in all;
//! - `batch_size` (examples per step, at most): `clamp(n / 100, 1, 8)`;
//! - `learning_rate_multiplier`: 1 (the base rate is [`BASE_LEARNING_RATE`]);
//! - `eval_split`: 0.1 from 10 records, one record from 3, none below; none with a
//!   `validation_file` (its version is the held-out set and every training record trains);
//! - LoRA: rank 16, alpha 2 × rank, dropout 0.05, `q_proj,v_proj`, 2048 batch tokens,
//!   weight decay 0.01, warmup a tenth of the steps, a checkpoint and an evaluation every
//!   50 steps.

use std::collections::BTreeMap;

use openledger_core::ErrorCode;
use openledger_ml::{Target, train::TrainConfig};
use openledger_proto::modelfactory::v1 as pb;

use crate::RegistryError;
use crate::limits::{
    MAX_BATCH_SIZE, MAX_JOB_EPOCHS, MAX_LEARNING_RATE_MULTIPLIER, MAX_METADATA_KEY_CHARS, MAX_METADATA_PAIRS,
    MAX_METADATA_VALUE_CHARS, MAX_REGISTRY_RANK, MAX_SUFFIX_CHARS,
};

/// The learning rate a multiplier of 1 means.
pub const BASE_LEARNING_RATE: f64 = 2e-4;
/// The prefix of a `training_file` naming a Datanet version.
pub const DATANET_FILE_PREFIX: &str = "datanet:";

/// A `training_file`: `datanet:<slug-or-id>@<version>` (`@latest` or no `@`: the newest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainingFile {
    pub datanet: String,
    /// A version number, a snapshot id or `latest`.
    pub version: String,
}

impl TrainingFile {
    pub fn parse(text: &str, param: &str) -> Result<Self, RegistryError> {
        let bad = || {
            invalid(format!(
                "{param} {text:?} must name a sealed Datanet version as datanet:<slug-or-id>@<version> (a number or latest)"
            ))
        };
        let rest = text.strip_prefix(DATANET_FILE_PREFIX).ok_or_else(bad)?;
        let (datanet, version) = rest.split_once('@').unwrap_or((rest, "latest"));
        let plain = |s: &str| {
            !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        };
        if !plain(datanet) || !plain(version) {
            return Err(bad());
        }
        Ok(Self { datanet: datanet.to_owned(), version: version.to_owned() })
    }
}

/// The suffix of `ft:` names: `[A-Za-z0-9._-]{0,MAX_SUFFIX_CHARS}`.
pub fn check_suffix(suffix: &str) -> Result<(), RegistryError> {
    if suffix.chars().count() > MAX_SUFFIX_CHARS
        || !suffix.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(invalid(format!("suffix {suffix:?} must be at most {MAX_SUFFIX_CHARS} of A-Z a-z 0-9 . _ -")));
    }
    Ok(())
}

/// OpenAI's metadata limits: at most 16 pairs, keys of 64 and values of 512 characters.
pub fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), RegistryError> {
    if metadata.len() > MAX_METADATA_PAIRS {
        return Err(invalid(format!("metadata has {} pairs; at most {MAX_METADATA_PAIRS}", metadata.len())));
    }
    for (key, value) in metadata {
        if key.is_empty() || key.chars().count() > MAX_METADATA_KEY_CHARS {
            return Err(invalid(format!("metadata key {key:?} must have 1 to {MAX_METADATA_KEY_CHARS} characters")));
        }
        if value.chars().count() > MAX_METADATA_VALUE_CHARS {
            return Err(invalid(format!("metadata[{key:?}] is longer than {MAX_METADATA_VALUE_CHARS} characters")));
        }
    }
    Ok(())
}

/// The fine-tuned model's name: `ft:<base>:<owner account>:<suffix>:<job id hex>`, which must
/// fit an adapter id.
pub fn fine_tuned_name(base: &str, owner_account: u128, suffix: &str, job_id: &str) -> Result<String, RegistryError> {
    let hex = job_id.strip_prefix(super::JOB_ID_PREFIX).unwrap_or(job_id);
    let name = format!("ft:{base}:{owner_account}:{suffix}:{hex}");
    if name.len() > crate::limits::MAX_ADAPTER_ID_BYTES {
        return Err(invalid(format!(
            "the fine-tuned model's name {name:?} would be longer than {} bytes: choose a shorter suffix",
            crate::limits::MAX_ADAPTER_ID_BYTES
        )));
    }
    Ok(name)
}

/// The resolved hyper-parameters: every field set, and the trainer's configuration.
#[derive(Clone, Debug)]
pub struct Plan {
    pub hyperparameters: pb::Hyperparameters,
    pub config: TrainConfig,
}

/// Resolves `asked` ("auto" where unset) for a version of `records` records and a run `seed`;
/// `validation_file` when the held-out records are a version of their own.
pub fn resolve(
    asked: &pb::Hyperparameters,
    records: u64,
    seed: u64,
    validation_file: bool,
) -> Result<Plan, RegistryError> {
    let n = records.max(1);
    let n_epochs = ranged("hyperparameters.n_epochs", asked.n_epochs, 1, MAX_JOB_EPOCHS)?
        .unwrap_or_else(|| 100u64.div_ceil(n).clamp(1, 10) as u32);
    let batch_size = ranged("hyperparameters.batch_size", asked.batch_size, 1, MAX_BATCH_SIZE)?
        .unwrap_or((n / 100).clamp(1, 8) as u32);
    let multiplier = asked.learning_rate_multiplier.unwrap_or(1.0);
    if !(multiplier.is_finite() && multiplier > 0.0 && multiplier <= MAX_LEARNING_RATE_MULTIPLIER) {
        return Err(invalid(format!(
            "hyperparameters.learning_rate_multiplier {multiplier} must be in (0, {MAX_LEARNING_RATE_MULTIPLIER}]"
        )));
    }
    let rank = ranged("lora.rank", asked.rank, 1, MAX_REGISTRY_RANK as u32)?.unwrap_or(16);
    let alpha = asked.alpha.unwrap_or(2.0 * f64::from(rank));
    if !(alpha.is_finite() && alpha > 0.0 && alpha <= 4096.0) {
        return Err(invalid(format!("lora.alpha {alpha} must be in (0, 4096]")));
    }
    let dropout = asked.dropout.unwrap_or(0.05);
    if !(0.0..1.0).contains(&dropout) {
        return Err(invalid(format!("lora.dropout {dropout} must be in [0, 1)")));
    }
    let targets = targets(&asked.target_modules)?;
    let batch_tokens =
        ranged("lora.batch_tokens", asked.batch_tokens, 16, openledger_ml::train::MAX_BATCH_TOKENS as u32)?
            .unwrap_or(2048);
    let eval_split = match asked.eval_split {
        Some(share) if !(0.0..0.9).contains(&share) => {
            return Err(invalid(format!("lora.eval_split {share} must be in [0, 0.9)")));
        }
        Some(share) if validation_file && share > 0.0 => {
            return Err(invalid(format!(
                "lora.eval_split {share} and validation_file exclude each other: the validation version is the held-out set"
            )));
        }
        _ if validation_file => 0.0,
        Some(share) => share,
        None if n >= 10 => 0.1,
        None if n >= 3 => 1.0 / n as f64,
        None => 0.0,
    };
    let weight_decay = asked.weight_decay.unwrap_or(0.01);
    if !(weight_decay.is_finite() && (0.0..1.0).contains(&weight_decay)) {
        return Err(invalid(format!("lora.weight_decay {weight_decay} must be in [0, 1)")));
    }
    let positive = |param: &str, value: Option<u64>| match value {
        Some(0) => Err(invalid(format!("{param} must be at least 1"))),
        other => Ok(other),
    };
    let max_steps = positive("lora.max_steps", asked.max_steps)?;
    let checkpoint_every = positive("lora.checkpoint_every", asked.checkpoint_every)?.unwrap_or(50);
    let eval_every = positive("lora.eval_every", asked.eval_every)?.unwrap_or(50);
    let max_seq_tokens = ranged("lora.max_seq_tokens", asked.max_seq_tokens, 8, 1 << 20)?;
    let config = TrainConfig {
        rank: rank as usize,
        alpha,
        dropout,
        targets: targets.clone(),
        learning_rate: BASE_LEARNING_RATE * multiplier,
        weight_decay,
        warmup_steps: asked.warmup_steps,
        epochs: n_epochs as usize,
        max_steps,
        batch_tokens: batch_tokens as usize,
        grad_accum: 1,
        max_batch_examples: Some(batch_size as usize),
        max_grad_norm: 1.0,
        seed,
        eval_split,
        eval_every,
        early_stopping_patience: None,
        checkpoint_every,
        keep_checkpoints: 2,
        max_seq_tokens: max_seq_tokens.map(|t| t as usize),
    };
    config.validate().map_err(|error| invalid(format!("hyperparameters: {error}")))?;
    let hyperparameters = pb::Hyperparameters {
        n_epochs: Some(n_epochs),
        batch_size: Some(batch_size),
        learning_rate_multiplier: Some(multiplier),
        rank: Some(rank),
        alpha: Some(alpha),
        dropout: Some(dropout),
        target_modules: targets.iter().map(|t| t.module_name().to_owned()).collect(),
        batch_tokens: Some(batch_tokens),
        eval_split: Some(eval_split),
        weight_decay: Some(weight_decay),
        warmup_steps: asked.warmup_steps,
        max_steps,
        checkpoint_every: Some(checkpoint_every),
        eval_every: Some(eval_every),
        max_seq_tokens,
    };
    Ok(Plan { hyperparameters, config })
}

fn ranged(param: &str, value: Option<u32>, min: u32, max: u32) -> Result<Option<u32>, RegistryError> {
    match value {
        Some(v) if !(min..=max).contains(&v) => Err(invalid(format!("{param} {v} must be in {min}..={max}"))),
        other => Ok(other),
    }
}

fn targets(names: &[String]) -> Result<Vec<Target>, RegistryError> {
    if names.is_empty() {
        return Ok(vec![Target::Q, Target::V]);
    }
    if names.len() == 1 && names[0] == "all-linear" {
        return Ok(Target::ALL.to_vec());
    }
    let mut targets = Vec::new();
    for name in names {
        let target = Target::from_module_name(name).ok_or_else(|| {
            invalid(format!(
                "lora.target_modules: unknown module {name:?}: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj or all-linear"
            ))
        })?;
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    Ok(targets)
}

fn invalid(message: String) -> RegistryError {
    RegistryError::new(ErrorCode::InvalidArgument, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_files_name_a_datanet_version() {
        let parsed = TrainingFile::parse("datanet:med-notes@3", "training_file").expect("valid");
        assert_eq!(parsed, TrainingFile { datanet: "med-notes".into(), version: "3".into() });
        assert_eq!(TrainingFile::parse("datanet:med-notes", "training_file").expect("latest").version, "latest");
        for bad in ["file-abc123", "datanet:", "datanet:@3", "datanet:a@", "datanet:a b@1", "datanet:a@1@2"] {
            let error = TrainingFile::parse(bad, "training_file").expect_err(bad);
            assert_eq!(error.code, ErrorCode::InvalidArgument);
            assert!(error.message.starts_with("training_file"), "{}", error.message);
        }
    }

    #[test]
    fn auto_follows_the_data_size() {
        let auto = pb::Hyperparameters::default();
        let small = resolve(&auto, 6, 1, false).expect("resolves");
        assert_eq!(small.hyperparameters.n_epochs, Some(10));
        assert_eq!(small.hyperparameters.batch_size, Some(1));
        assert!((small.config.eval_split - 1.0 / 6.0).abs() < 1e-12);
        assert_eq!(small.config.learning_rate, BASE_LEARNING_RATE);
        let large = resolve(&auto, 5_000, 1, false).expect("resolves");
        assert_eq!(large.hyperparameters.n_epochs, Some(1));
        assert_eq!(large.hyperparameters.batch_size, Some(8));
        assert_eq!(large.config.eval_split, 0.1);
        assert_eq!(resolve(&auto, 2, 1, false).expect("resolves").config.eval_split, 0.0);
        // A validation version is the held-out set: nothing of the training version is held out.
        assert_eq!(resolve(&auto, 5_000, 1, true).expect("resolves").config.eval_split, 0.0);
        let zero = pb::Hyperparameters { eval_split: Some(0.0), ..Default::default() };
        assert_eq!(resolve(&zero, 5_000, 1, true).expect("resolves").config.eval_split, 0.0);
        let both = pb::Hyperparameters { eval_split: Some(0.2), ..Default::default() };
        let error = resolve(&both, 5_000, 1, true).expect_err("eval_split beside a validation version");
        assert!(error.message.starts_with("lora.eval_split"), "{}", error.message);
    }

    #[test]
    fn explicit_values_are_kept_and_bad_ones_name_their_field() {
        let asked = pb::Hyperparameters {
            n_epochs: Some(2),
            batch_size: Some(4),
            learning_rate_multiplier: Some(0.5),
            rank: Some(8),
            target_modules: vec!["all-linear".into()],
            max_steps: Some(5),
            ..Default::default()
        };
        let plan = resolve(&asked, 100, 9, false).expect("resolves");
        assert_eq!((plan.config.epochs, plan.config.max_batch_examples, plan.config.rank), (2, Some(4), 8));
        assert_eq!(plan.config.alpha, 16.0);
        assert_eq!(plan.config.learning_rate, BASE_LEARNING_RATE * 0.5);
        assert_eq!(plan.config.targets.len(), 7);
        assert_eq!(plan.hyperparameters.max_steps, Some(5));
        for (asked, field) in [
            (pb::Hyperparameters { n_epochs: Some(0), ..Default::default() }, "hyperparameters.n_epochs"),
            (pb::Hyperparameters { batch_size: Some(100_000), ..Default::default() }, "hyperparameters.batch_size"),
            (
                pb::Hyperparameters { learning_rate_multiplier: Some(f64::NAN), ..Default::default() },
                "hyperparameters.learning_rate_multiplier",
            ),
            (pb::Hyperparameters { rank: Some(10_000), ..Default::default() }, "lora.rank"),
            (pb::Hyperparameters { dropout: Some(1.5), ..Default::default() }, "lora.dropout"),
            (pb::Hyperparameters { target_modules: vec!["qq".into()], ..Default::default() }, "lora.target_modules"),
            (pb::Hyperparameters { eval_split: Some(0.95), ..Default::default() }, "lora.eval_split"),
            (pb::Hyperparameters { max_steps: Some(0), ..Default::default() }, "lora.max_steps"),
        ] {
            let error = resolve(&asked, 100, 0, false).expect_err(field);
            assert_eq!(error.code, ErrorCode::InvalidArgument);
            assert!(error.message.starts_with(field), "{field}: {}", error.message);
        }
    }

    #[test]
    fn names_suffixes_and_metadata_have_limits() {
        let name = fine_tuned_name("SmolLM2", 1001, "notes", "ftjob-0190abcd").expect("fits");
        assert_eq!(name, "ft:SmolLM2:1001:notes:0190abcd");
        assert!(fine_tuned_name(&"b".repeat(120), 1, "s", "ftjob-0190abcd").is_err());
        assert!(check_suffix("my-model_1.0").is_ok());
        assert!(check_suffix("no spaces").is_err());
        assert!(check_suffix(&"a".repeat(MAX_SUFFIX_CHARS + 1)).is_err());
        let mut metadata: BTreeMap<String, String> = (0..16).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(check_metadata(&metadata).is_ok());
        metadata.insert("one-more".into(), "v".into());
        assert!(check_metadata(&metadata).is_err());
        assert!(check_metadata(&BTreeMap::from([("k".into(), "v".repeat(513))])).is_err());
    }
}
