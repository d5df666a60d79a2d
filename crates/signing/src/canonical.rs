//! The canonical JSON of structured values a message signs by digest: a Datanet's definition
//! ([`DatanetDefinition`]), an edit of it ([`DatanetEdit`]) and an economic parameter set
//! ([`Parameters`]).
//!
//! # Canonical JSON
//!
//! Every field is present (a default value is written, never left out); object keys are sorted
//! by their bytes (all keys are ASCII); no whitespace; strings are written as JSON strings with
//! only `"`, `\` and control characters escaped (`\b \t \n \f \r`, others `\u00xx` with
//! lowercase hex; non-ASCII characters as themselves, in UTF-8); arrays keep their order;
//! booleans are `true`/`false`; integers are plain decimal digits (after a `-` when negative);
//! amounts (128-bit base units) are decimal strings; keys (ed25519 public keys) are lowercase
//! hex strings. There are
//! no floats, so this is the output of RFC 8785 (JCS) for the same value as long as integer
//! fields stay below 2^53 (every limit the services accept does).
//!
//! The field names and value spellings are the REST API's: a REST client takes the object it
//! sends, drops what the server assigns, fills in every missing field with its default,
//! serializes it this way and hashes it with BLAKE3.

use serde_json::{Value, json};

/// The contribution policy inside a [`DatanetDefinition`] or [`DatanetEdit`], as sent (zeros
/// mean "the service's default" and are signed as zeros).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContributionPolicy {
    pub allow_list_only: bool,
    pub allowed_contributors: Vec<Vec<u8>>,
    pub stake_per_contribution: u128,
    pub max_bytes_per_contributor_per_day: u64,
    pub max_files_per_contributor_per_day: u32,
    pub max_bytes_per_day: u64,
    pub max_files_per_day: u32,
    pub max_file_bytes: u64,
    pub auto_accept_score: u32,
    pub reject_below_score: u32,
    pub near_duplicate_jaccard_ppt: u32,
    pub review_all: bool,
}

impl ContributionPolicy {
    /// `{"allow_list_only":<bool>,"allowed_contributors":[<key hex>…],"auto_accept_score":<int>,
    /// "max_bytes_per_contributor_per_day":<int>,"max_bytes_per_day":<int>,"max_file_bytes":<int>,
    /// "max_files_per_contributor_per_day":<int>,"max_files_per_day":<int>,
    /// "near_duplicate_jaccard_ppt":<int>,"reject_below_score":<int>,"review_all":<bool>,
    /// "stake_per_contribution":"<decimal>"}`
    fn value(&self) -> Value {
        json!({
            "allow_list_only": self.allow_list_only,
            "allowed_contributors": hex_keys(&self.allowed_contributors),
            "stake_per_contribution": self.stake_per_contribution.to_string(),
            "max_bytes_per_contributor_per_day": self.max_bytes_per_contributor_per_day,
            "max_files_per_contributor_per_day": self.max_files_per_contributor_per_day,
            "max_bytes_per_day": self.max_bytes_per_day,
            "max_files_per_day": self.max_files_per_day,
            "max_file_bytes": self.max_file_bytes,
            "auto_accept_score": self.auto_accept_score,
            "reject_below_score": self.reject_below_score,
            "near_duplicate_jaccard_ppt": self.near_duplicate_jaccard_ppt,
            "review_all": self.review_all,
        })
    }
}

/// What a Datanet's owner signs on creation: the definition without what the server assigns
/// (id, owner, creation time).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatanetDefinition {
    pub slug: String,
    pub name: String,
    pub summary: String,
    pub description_markdown: String,
    pub tags: Vec<String>,
    /// `free_text`, `instruction_response`, `labelled_text` (`unspecified` when unset; an
    /// unknown protobuf value as its decimal number).
    pub schema: String,
    pub label_set: Vec<String>,
    pub licence: String,
    /// `public` or `private` (`unspecified` when unset, as for `schema`).
    pub visibility: String,
    pub policy: ContributionPolicy,
    pub validators: Vec<Vec<u8>>,
}

impl DatanetDefinition {
    /// `{"description_markdown":"…","label_set":["…"…],"licence":"…","name":"…","policy":<policy>,
    /// "schema":"…","slug":"…","summary":"…","tags":["…"…],"validators":[<key hex>…],
    /// "visibility":"…"}`, canonical (see the module doc; `<policy>` is
    /// [`ContributionPolicy`]'s object).
    pub fn canonical_json(&self) -> String {
        canonical(&json!({
            "slug": self.slug,
            "name": self.name,
            "summary": self.summary,
            "description_markdown": self.description_markdown,
            "tags": self.tags,
            "schema": self.schema,
            "label_set": self.label_set,
            "licence": self.licence,
            "visibility": self.visibility,
            "policy": self.policy.value(),
            "validators": hex_keys(&self.validators),
        }))
    }
}

/// What a Datanet's owner signs to edit it: the editable fields as sent (whether or not the
/// mask names them) and the mask.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatanetEdit {
    pub summary: String,
    pub description_markdown: String,
    pub tags: Vec<String>,
    pub policy: ContributionPolicy,
    /// The fields to change, as sent (empty: all four).
    pub update_mask: Vec<String>,
}

impl DatanetEdit {
    /// `{"description_markdown":"…","policy":<policy>,"summary":"…","tags":["…"…],
    /// "update_mask":["…"…]}`, canonical (see the module doc).
    pub fn canonical_json(&self) -> String {
        canonical(&json!({
            "summary": self.summary,
            "description_markdown": self.description_markdown,
            "tags": self.tags,
            "policy": self.policy.value(),
            "update_mask": self.update_mask,
        }))
    }
}

/// A full set of economic parameters, as a governance proposal carries it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Parameters {
    pub model_owner_bps: u32,
    pub stakers_bps: u32,
    pub contributors_bps: u32,
    /// Base units.
    pub platform_fee: u128,
    pub slashing_bps: u32,
    /// Base units.
    pub minimum_stake: u128,
    pub unbonding_seconds: u64,
    pub epoch_seconds: u64,
    /// Quality score below which a contribution's bond is slashed, in thousandths of a score
    /// unit (the records' median deviation): −1000 is one deviation below the typical record.
    pub slashing_threshold_milli: i32,
}

impl Parameters {
    /// `{"contributors_bps":<int>,"epoch_seconds":<int>,"minimum_stake":"<decimal>",
    /// "model_owner_bps":<int>,"platform_fee":"<decimal>","slashing_bps":<int>,
    /// "slashing_threshold_milli":<int>,"stakers_bps":<int>,"unbonding_seconds":<int>}`,
    /// canonical (see the module doc; the threshold may be negative). The
    /// ledger stores parameter sets in this form too.
    pub fn canonical_json(&self) -> String {
        canonical(&json!({
            "model_owner_bps": self.model_owner_bps,
            "stakers_bps": self.stakers_bps,
            "contributors_bps": self.contributors_bps,
            "platform_fee": self.platform_fee.to_string(),
            "slashing_bps": self.slashing_bps,
            "minimum_stake": self.minimum_stake.to_string(),
            "unbonding_seconds": self.unbonding_seconds,
            "epoch_seconds": self.epoch_seconds,
            "slashing_threshold_milli": self.slashing_threshold_milli,
        }))
    }
}

fn hex_keys(keys: &[Vec<u8>]) -> Vec<String> {
    keys.iter().map(hex::encode).collect()
}

/// Writes `value` canonically: keys sorted here (not by the map's order, which a cargo feature
/// elsewhere in the build could change), no whitespace, serde_json's string and integer forms.
fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write(value, &mut out);
    out
}

fn write(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|(a, _), (b, _)| a.as_bytes().cmp(b.as_bytes()));
            out.push('{');
            for (index, (key, value)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(key.as_str()).to_string());
                out.push(':');
                write(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        scalar => {
            debug_assert!(!matches!(scalar, Value::Number(number) if number.is_f64()), "canonical JSON has no floats");
            out.push_str(&scalar.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_escape_like_rfc_8785() {
        let written =
            canonical(&json!({"b": "q\"\\/\u{1}\u{1f}\n\té", "a": [true, false, null, 0, 18446744073709551615u64]}));
        assert_eq!(written, r#"{"a":[true,false,null,0,18446744073709551615],"b":"q\"\\/\u0001\u001f\n\té"}"#);
    }

    #[test]
    fn keys_sort_by_bytes_at_every_depth() {
        let written = canonical(&json!({"b": {"z": 1, "allow_list_only": 2, "allowed": 3}, "a_b": 0, "ab": 0}));
        assert_eq!(written, r#"{"a_b":0,"ab":0,"b":{"allow_list_only":2,"allowed":3,"z":1}}"#);
    }
}
