//! `Datanet`: a Datanet and its policy declared as a resource (GitOps), ensured through
//! datanet-ingest's `DatanetService`.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::Condition;

/// A Datanet to exist with this description and contribution policy. The operator creates it
/// (signed by the owner's key, read from a Secret) when its slug is unknown, and updates the
/// fields that may change (summary, description, tags, policy) when they differ. Deleting the
/// resource never deletes contributors' data: the Datanet stays (`deletionPolicy: Retain`).
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "openledger.io",
    version = "v1alpha1",
    kind = "Datanet",
    namespaced,
    status = "DatanetStatus",
    shortname = "dn",
    category = "openledger",
    derive = "PartialEq",
    printcolumn(name = "Slug", type_ = "string", json_path = ".spec.slug"),
    printcolumn(name = "Id", type_ = "string", json_path = ".status.datanetId"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self.slug == oldSelf.slug").message("a Datanet's slug cannot change"))]
#[x_kube(validation = Rule::new("self.schema != 'labelled-text' || (has(self.labelSet) && size(self.labelSet) > 0)")
    .message("a labelled-text Datanet needs a labelSet"))]
#[serde(rename_all = "camelCase")]
pub struct DatanetSpec {
    /// The Datanet's stable handle (`medical-qa`).
    #[schemars(length(min = 3, max = 64), regex(pattern = r"^[a-z0-9][a-z0-9-]*[a-z0-9]$"))]
    pub slug: String,
    #[schemars(length(min = 1, max = 200))]
    pub name: String,
    #[serde(default)]
    #[schemars(length(max = 500))]
    pub summary: String,
    #[serde(default)]
    #[schemars(length(max = 65536))]
    pub description_markdown: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tags: Vec<String>,
    /// `free-text`, `instruction-response` or `labelled-text`.
    #[schemars(regex(pattern = r"^(free-text|instruction-response|labelled-text)$"))]
    pub schema: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub label_set: Vec<String>,
    /// An SPDX licence id.
    #[schemars(length(min = 1, max = 64))]
    pub licence: String,
    /// `public` or `private`.
    #[schemars(regex(pattern = r"^(public|private)$"))]
    pub visibility: String,
    /// The contribution policy; absent fields take datanet-ingest's defaults.
    #[serde(default)]
    pub policy: DatanetPolicy,
    /// The Secret key holding the owner's ed25519 signing key (32 bytes, hex).
    pub owner_key_secret: SecretKeyRef,
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// The contribution policy of a `Datanet` (see datanet-ingest's `ContributionPolicy`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatanetPolicy {
    #[serde(default)]
    pub allow_list_only: bool,
    /// Contributors' public keys (hex) when `allowListOnly`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_contributors: Vec<String>,
    /// Bond per contribution in base units of OPEN, as a decimal string (`"0"`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,38}$"))]
    pub stake_per_contribution: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_file_bytes: Option<u64>,
    /// Quality score in [0, 1000] from which a contribution is accepted without review.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub auto_accept_score: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub reject_below_score: Option<u32>,
    #[serde(default)]
    pub review_all: bool,
}

/// A key of a Secret in the resource's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// What deleting the resource does to the Datanet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum DeletionPolicy {
    /// The Datanet and its data stay; only the resource goes.
    #[default]
    Retain,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatanetStatus {
    /// `Ready`: the Datanet exists as declared.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datanet_id: Option<String>,
}
