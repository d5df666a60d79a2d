//! Checks of what callers send: Datanet definitions (slug, text fields, tags, labels, keys)
//! and contribution policies (defaults filled in, ranges checked).

use std::collections::HashSet;

use openledger_core::Id;
use openledger_proto::datanet::v1::{self as pb};

use crate::{
    DatanetError,
    limits::{self, defaults},
    parse::RecordSchema,
    signing::Key,
};

use super::invalid;

/// Fills a policy's zeros with the defaults and checks its ranges.
pub fn complete_policy(mut policy: pb::ContributionPolicy) -> Result<pb::ContributionPolicy, DatanetError> {
    let or = |value: u64, default: u64| if value == 0 { default } else { value };
    policy.max_bytes_per_contributor_per_day =
        or(policy.max_bytes_per_contributor_per_day, defaults::MAX_BYTES_PER_CONTRIBUTOR_PER_DAY);
    policy.max_files_per_contributor_per_day =
        or(policy.max_files_per_contributor_per_day.into(), defaults::MAX_FILES_PER_CONTRIBUTOR_PER_DAY.into()) as u32;
    policy.max_bytes_per_day = or(policy.max_bytes_per_day, defaults::MAX_BYTES_PER_DAY);
    policy.max_files_per_day = or(policy.max_files_per_day.into(), defaults::MAX_FILES_PER_DAY.into()) as u32;
    policy.max_file_bytes = or(policy.max_file_bytes, defaults::MAX_FILE_BYTES);
    if policy.auto_accept_score == 0 && policy.reject_below_score == 0 {
        policy.auto_accept_score = defaults::AUTO_ACCEPT_SCORE;
        policy.reject_below_score = defaults::REJECT_BELOW_SCORE;
    }
    policy.near_duplicate_jaccard_ppt =
        or(policy.near_duplicate_jaccard_ppt.into(), defaults::NEAR_DUPLICATE_JACCARD_PPT.into()) as u32;
    if policy.max_file_bytes > limits::MAX_FILE_BYTES {
        return Err(invalid(format!(
            "policy.max_file_bytes is {}; the service takes files of at most {} bytes",
            policy.max_file_bytes,
            limits::MAX_FILE_BYTES
        )));
    }
    if policy.auto_accept_score > limits::PARTS_PER_THOUSAND || policy.reject_below_score > policy.auto_accept_score {
        return Err(invalid(format!(
            "policy scores must satisfy reject_below_score ≤ auto_accept_score ≤ 1000, got {} and {}",
            policy.reject_below_score, policy.auto_accept_score
        )));
    }
    if policy.near_duplicate_jaccard_ppt > limits::PARTS_PER_THOUSAND {
        return Err(invalid("policy.near_duplicate_jaccard_ppt must be in 1..=1000 (parts per thousand)"));
    }
    keys("policy.allowed_contributors", &policy.allowed_contributors, limits::MAX_ALLOWED_CONTRIBUTORS)?;
    if policy.allow_list_only && policy.allowed_contributors.is_empty() {
        return Err(invalid("policy.allow_list_only needs at least one key in policy.allowed_contributors"));
    }
    Ok(policy)
}

pub(super) fn keys(field: &str, keys: &[Vec<u8>], max: usize) -> Result<Vec<Key>, DatanetError> {
    if keys.len() > max {
        return Err(invalid(format!("{field} holds at most {max} keys, got {}", keys.len())));
    }
    keys.iter()
        .enumerate()
        .map(|(i, key)| {
            Key::try_from(key.as_slice()).map_err(|_| {
                invalid(format!("{field}[{i}] must be a 32-byte ed25519 public key, got {} bytes", key.len()))
            })
        })
        .collect()
}

pub(super) fn check_text(field: &str, value: &str, min_chars: usize, max_chars: usize) -> Result<(), DatanetError> {
    let chars = value.chars().count();
    if chars < min_chars || chars > max_chars {
        return Err(invalid(format!("{field} must have {min_chars} to {max_chars} characters, got {chars}")));
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(invalid(format!("{field} must not contain control characters")));
    }
    Ok(())
}

pub(super) fn check_slug(slug: &str) -> Result<(), DatanetError> {
    if slug.parse::<Id>().is_ok() {
        return Err(invalid(format!("slug {slug:?} has the form of a Datanet id: choose a name")));
    }
    let ok = (limits::MIN_SLUG_BYTES..=limits::MAX_SLUG_BYTES).contains(&slug.len())
        && slug.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-')
        && !slug.ends_with('-');
    if !ok {
        return Err(invalid(format!(
            "slug {slug:?} must be {} to {} characters of a-z, 0-9 and '-', not starting or ending with '-'",
            limits::MIN_SLUG_BYTES,
            limits::MAX_SLUG_BYTES
        )));
    }
    Ok(())
}

pub(super) fn check_description(description: &str) -> Result<(), DatanetError> {
    if description.len() > limits::MAX_DESCRIPTION_BYTES {
        return Err(invalid(format!(
            "description_markdown is {} bytes; at most {} are kept",
            description.len(),
            limits::MAX_DESCRIPTION_BYTES
        )));
    }
    Ok(())
}

pub(super) fn check_tags(tags: &[String]) -> Result<(), DatanetError> {
    if tags.len() > limits::MAX_TAGS {
        return Err(invalid(format!("at most {} tags, got {}", limits::MAX_TAGS, tags.len())));
    }
    for tag in tags {
        let ok = (1..=limits::MAX_TAG_CHARS).contains(&tag.len())
            && tag.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(invalid(format!(
                "tag {tag:?} must be 1 to {} characters of a-z, 0-9 and '-'",
                limits::MAX_TAG_CHARS
            )));
        }
    }
    Ok(())
}

/// The editable fields (summary, description, tags) of a new Datanet.
pub(super) fn check_editable(datanet: &pb::Datanet) -> Result<(), DatanetError> {
    check_text("summary", &datanet.summary, 0, limits::MAX_SUMMARY_CHARS)?;
    check_description(&datanet.description_markdown)?;
    check_tags(&datanet.tags)
}

pub(super) fn check_labels(schema: RecordSchema, labels: &[String]) -> Result<(), DatanetError> {
    match schema {
        RecordSchema::LabelledText if labels.is_empty() => {
            Err(invalid("labelled_text Datanets need a label_set (the labels records may carry)"))
        }
        RecordSchema::LabelledText => {
            if labels.len() > limits::MAX_LABELS {
                return Err(invalid(format!("label_set holds at most {} labels", limits::MAX_LABELS)));
            }
            let mut seen = HashSet::new();
            for label in labels {
                check_text("label", label, 1, limits::MAX_LABEL_CHARS)?;
                if !seen.insert(label) {
                    return Err(invalid(format!("label {label:?} appears twice in label_set")));
                }
            }
            Ok(())
        }
        _ if !labels.is_empty() => Err(invalid("label_set is only for labelled_text Datanets")),
        _ => Ok(()),
    }
}
