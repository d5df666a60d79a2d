//! `Datanet` → the Datanet it declares, ensured through datanet-ingest's `DatanetService`:
//! created (signed by the owner's key from a Secret) when its slug is unknown, its editable
//! fields (summary, description, tags, policy) updated when they differ, never deleted (the
//! finalizer only lets the resource go). Reads first, and writes only what differs: a resource
//! in sync costs one Secret read and one `GetDatanet`.

use std::{sync::Arc, time::Duration};

use ed25519_dalek::SigningKey;
use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{controller::Action, finalizer},
};
use openledger_proto::datanet::v1::{self as pb, datanet_service_client::DatanetServiceClient};
use openledger_signing::{
    now_unix,
    proto::{datanet_create_message, datanet_update_message, sign, signed_caller},
};
use serde_json::json;
use tonic::{Code, transport::Channel};

use super::{Context, Error, RESYNC};
use crate::{
    conditions::{self, Observed},
    crd::{Datanet, DatanetPolicy, DatanetSpec, DatanetStatus, DeletionPolicy},
};

/// The finalizer on `Datanet` resources: the resource goes only once its deletion policy ran.
pub const FINALIZER: &str = "openledger.io/datanet";
/// When a missing or unusable owner-key Secret is looked at again (Secrets are not watched).
pub const SECRET_RETRY: Duration = Duration::from_secs(60);
/// How long one call to datanet-ingest (and its connection) may take.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// The fields of a Datanet that may change after its creation, as `update_mask` names them.
pub const EDITABLE: [&str; 4] = ["summary", "description_markdown", "tags", "policy"];

const KIND: &str = "Datanet";

/// Reconciles one `Datanet` resource.
pub async fn reconcile(object: Arc<Datanet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = object.namespace().ok_or_else(|| Error::Other("the resource has no namespace".into()))?;
    let api: Api<Datanet> = Api::namespaced(ctx.client.clone(), &namespace);
    let key = super::key(object.as_ref());
    ctx.metrics.reconciled(KIND);
    let action = finalizer::finalizer(&api, FINALIZER, object, |event| async {
        match event {
            finalizer::Event::Apply(object) => apply(object.as_ref(), &ctx, &api, &namespace).await,
            finalizer::Event::Cleanup(object) => Ok(cleanup(object.as_ref())),
        }
    })
    .await
    .map_err(Error::from_finalizer)?;
    ctx.succeeded(&key);
    Ok(action)
}

/// What one reconcile found, and what comes next.
#[derive(Debug)]
enum Outcome {
    /// The Datanet exists as declared (after `change`).
    Ready { id: String, change: Change },
    /// A problem only a change to the resource, its Secret or the Datanet's owner mends.
    Refused { reason: &'static str, message: String, id: Option<String>, retry: Option<Duration> },
    /// datanet-ingest could not answer: tried again after a back-off.
    Unavailable { message: String },
}

#[derive(Debug, PartialEq, Eq)]
enum Change {
    None,
    Created,
    Updated(Vec<&'static str>),
}

impl Outcome {
    fn refused(reason: &'static str, message: impl Into<String>) -> Self {
        Self::Refused { reason, message: message.into(), id: None, retry: None }
    }
}

async fn apply(object: &Datanet, ctx: &Context, api: &Api<Datanet>, namespace: &str) -> Result<Action, Error> {
    let outcome = ensure(object, ctx, namespace).await?;
    let name = object.name_any();
    match &outcome {
        Outcome::Ready { id, change: Change::Created } => {
            ctx.metrics.wrote(KIND);
            let note = format!("created Datanet {} ({id})", object.spec.slug);
            ctx.event(object, false, "Created", note).await;
        }
        Outcome::Ready { change: Change::Updated(fields), .. } => {
            ctx.metrics.wrote(KIND);
            let note = format!("updated {} of Datanet {}", fields.join(", "), object.spec.slug);
            ctx.event(object, false, "Updated", note).await;
        }
        _ => {}
    }
    let before = object.status.clone().unwrap_or_default();
    let status = status_for(object, &before, &outcome, Timestamp::now());
    if object.status.as_ref() != Some(&status) {
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await?;
        ctx.metrics.wrote(KIND);
        announce_failure(object, ctx, &before, &status).await;
    }
    match outcome {
        Outcome::Ready { .. } => Ok(Action::requeue(RESYNC)),
        Outcome::Refused { retry: Some(wait), .. } => Ok(Action::requeue(wait)),
        Outcome::Refused { retry: None, .. } => Ok(Action::await_change()),
        Outcome::Unavailable { message } => Err(Error::Datanet(message)),
    }
}

/// The status for `outcome`: the `Ready` condition, the generation it saw, the Datanet's id
/// (kept from before when this reconcile did not learn it).
fn status_for(object: &Datanet, before: &DatanetStatus, outcome: &Outcome, now: Timestamp) -> DatanetStatus {
    let generation = object.meta().generation;
    let (ready, id) = match outcome {
        Outcome::Ready { id, .. } => {
            let message = format!("Datanet {} exists as declared", object.spec.slug);
            (Observed { type_: "Ready", status: true, reason: "Ready", message }, Some(id.clone()))
        }
        Outcome::Refused { reason, message, id, .. } => {
            (Observed { type_: "Ready", status: false, reason, message: message.clone() }, id.clone())
        }
        Outcome::Unavailable { message } => {
            (Observed { type_: "Ready", status: false, reason: "Unavailable", message: message.clone() }, None)
        }
    };
    let mut conditions = before.conditions.clone();
    conditions::set(&mut conditions, ready, generation, now);
    DatanetStatus { conditions, observed_generation: generation, datanet_id: id.or_else(|| before.datanet_id.clone()) }
}

/// A warning event when the resource turns not ready, or not ready for another reason.
async fn announce_failure(object: &Datanet, ctx: &Context, before: &DatanetStatus, now: &DatanetStatus) {
    let Some(ready) = conditions::get(&now.conditions, "Ready").filter(|ready| ready.status == "False") else {
        return;
    };
    let old = conditions::get(&before.conditions, "Ready");
    if old.is_some_and(|old| old.status == ready.status && old.reason == ready.reason && old.message == ready.message) {
        return;
    }
    ctx.event(object, true, &ready.reason, ready.message.clone()).await;
}

/// Deleting the resource never deletes the Datanet: contributors' data outlives its manifest.
fn cleanup(object: &Datanet) -> Action {
    match object.spec.deletion_policy {
        DeletionPolicy::Retain => {
            tracing::info!(slug = %object.spec.slug, "the resource goes; its Datanet stays (deletionPolicy Retain)");
            Action::await_change()
        }
    }
}

/// Brings datanet-ingest's Datanet to the spec; errors only for the Kubernetes API.
async fn ensure(object: &Datanet, ctx: &Context, namespace: &str) -> Result<Outcome, Error> {
    let spec = &object.spec;
    let wanted = match wanted(spec) {
        Ok(wanted) => wanted,
        Err(problem) => return Ok(Outcome::refused("InvalidSpec", problem)),
    };
    let owner = match owner_key(ctx, namespace, spec).await? {
        Ok(owner) => owner,
        Err(refused) => return Ok(refused),
    };
    let Some(url) = ctx.datanet_url.as_deref() else {
        let message = "the operator has no datanet-ingest address: run it with --datanet-url".to_owned();
        return Ok(Outcome::Unavailable { message });
    };
    let mut client = match client(url) {
        Ok(client) => client,
        Err(message) => return Ok(Outcome::Unavailable { message }),
    };
    let get = pb::GetDatanetRequest { id_or_slug: spec.slug.clone() };
    let present = match client.get_datanet(signed_caller(get, &owner)).await {
        Ok(present) => present.into_inner(),
        // Unknown, or private and someone else's (then creating it says the slug is taken).
        Err(status) if status.code() == Code::NotFound => return Ok(create(&mut client, wanted, &owner).await),
        Err(status) => return Ok(refusal(&status, None)),
    };
    Ok(sync(&mut client, spec, &wanted, present, &owner).await)
}

/// Brings the existing Datanet `present` to the spec: only its owner may, only the editable
/// fields can change, and only those that differ are written.
async fn sync(
    client: &mut DatanetServiceClient<Channel>,
    spec: &DatanetSpec,
    wanted: &pb::Datanet,
    present: pb::Datanet,
    owner: &SigningKey,
) -> Outcome {
    let id = present.id.clone();
    if present.owner != owner.verifying_key().as_bytes() {
        let message = format!(
            "Datanet {} is owned by {}, not by the key in Secret {}: name the owner's key",
            spec.slug,
            hex::encode(&present.owner),
            spec.owner_key_secret.name
        );
        return Outcome::Refused { reason: "OwnerMismatch", message, id: Some(id), retry: Some(RESYNC) };
    }
    // A resource that disagrees on what cannot change may name the wrong Datanet: no write.
    let fixed = immutable_differences(wanted, &present);
    if !fixed.is_empty() {
        let message = format!(
            "{} of Datanet {} cannot change after its creation: declare what datanet-ingest has",
            fixed.join(", "),
            spec.slug
        );
        return Outcome::Refused { reason: "Immutable", message, id: Some(id), retry: None };
    }
    let change = match update(spec, &present) {
        Err(problem) => {
            return Outcome::Refused { reason: "InvalidSpec", message: problem, id: Some(id), retry: None };
        }
        Ok(None) => Change::None,
        Ok(Some(request)) => {
            let fields = EDITABLE.into_iter().filter(|field| request.update_mask.iter().any(|masked| masked == field));
            let fields = fields.collect();
            if let Err(status) = client.update_datanet(sign_update(request, owner)).await {
                return refusal(&status, Some(id));
            }
            Change::Updated(fields)
        }
    };
    Outcome::Ready { id, change }
}

async fn create(client: &mut DatanetServiceClient<Channel>, wanted: pb::Datanet, owner: &SigningKey) -> Outcome {
    let signature = sign(owner, &datanet_create_message(&wanted));
    let request = pb::CreateDatanetRequest { datanet: Some(wanted), signature: Some(signature) };
    match client.create_datanet(request).await {
        Ok(created) => Outcome::Ready { id: created.into_inner().id, change: Change::Created },
        Err(status) => refusal(&status, None),
    }
}

/// datanet-ingest's refusal as an outcome, by its code: the spec or the owner is wrong (no
/// retry until something changes), or the service is unavailable (back-off).
fn refusal(status: &tonic::Status, id: Option<String>) -> Outcome {
    let message = status.message().to_owned();
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            Outcome::Refused { reason: "InvalidSpec", message, id, retry: None }
        }
        Code::AlreadyExists | Code::PermissionDenied => {
            Outcome::Refused { reason: "OwnerMismatch", message, id, retry: Some(RESYNC) }
        }
        code => Outcome::Unavailable { message: format!("{code:?}: {message}") },
    }
}

fn client(url: &str) -> Result<DatanetServiceClient<Channel>, String> {
    let endpoint = Channel::from_shared(url.to_owned())
        .map_err(|error| format!("the datanet-ingest address {url:?} is not a URL: {error}"))?;
    Ok(DatanetServiceClient::new(endpoint.connect_timeout(RPC_TIMEOUT).timeout(RPC_TIMEOUT).connect_lazy()))
}

/// The owner's signing key from the Secret the spec names, or why there is none.
async fn owner_key(ctx: &Context, namespace: &str, spec: &DatanetSpec) -> Result<Result<SigningKey, Outcome>, Error> {
    let reference = &spec.owner_key_secret;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let missing =
        |message: String| Outcome::Refused { reason: "SecretMissing", message, id: None, retry: Some(SECRET_RETRY) };
    let Some(secret) = secrets.get_opt(&reference.name).await? else {
        return Ok(Err(missing(format!(
            "Secret {} is not in namespace {namespace}: create it with the owner's ed25519 key (hex) under {}",
            reference.name, reference.key
        ))));
    };
    let Some(value) = secret.data.as_ref().and_then(|data| data.get(&reference.key)) else {
        return Ok(Err(missing(format!(
            "Secret {} has no key {}: put the owner's ed25519 key (32 bytes, hex) there",
            reference.name, reference.key
        ))));
    };
    let seed = std::str::from_utf8(&value.0)
        .ok()
        .and_then(|text| hex::decode(text.trim()).ok())
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
    Ok(seed.map(|seed| SigningKey::from_bytes(&seed)).ok_or_else(|| Outcome::Refused {
        reason: "InvalidSecret",
        message: format!(
            "{} in Secret {} is not an ed25519 key: it must be 32 bytes as 64 hex digits",
            reference.key, reference.name
        ),
        id: None,
        retry: Some(SECRET_RETRY),
    }))
}

/// The Datanet the spec declares, as `CreateDatanet` takes it.
fn wanted(spec: &DatanetSpec) -> Result<pb::Datanet, String> {
    let schema = match spec.schema.as_str() {
        "free-text" => pb::RecordSchema::FreeText,
        "instruction-response" => pb::RecordSchema::InstructionResponse,
        "labelled-text" => pb::RecordSchema::LabelledText,
        other => return Err(format!("spec.schema {other:?} is not free-text, instruction-response or labelled-text")),
    };
    let visibility = match spec.visibility.as_str() {
        "public" => pb::Visibility::Public,
        "private" => pb::Visibility::Private,
        other => return Err(format!("spec.visibility {other:?} is not public or private")),
    };
    Ok(pb::Datanet {
        slug: spec.slug.clone(),
        name: spec.name.clone(),
        summary: spec.summary.clone(),
        description_markdown: spec.description_markdown.clone(),
        tags: spec.tags.clone(),
        schema: schema as i32,
        label_set: spec.label_set.clone(),
        licence: spec.licence.clone(),
        visibility: visibility as i32,
        policy: Some(policy(&spec.policy, pb::ContributionPolicy::default())?),
        ..pb::Datanet::default()
    })
}

/// `base` with the fields `declared` sets: a field the spec leaves out keeps the value
/// datanet-ingest has (its default, at creation).
fn policy(declared: &DatanetPolicy, base: pb::ContributionPolicy) -> Result<pb::ContributionPolicy, String> {
    let mut policy = base;
    policy.allow_list_only = declared.allow_list_only;
    policy.allowed_contributors = declared
        .allowed_contributors
        .iter()
        .map(|key| hex::decode(key).map_err(|_| format!("spec.policy.allowedContributors: {key:?} is not hex")))
        .collect::<Result<_, _>>()?;
    if let Some(stake) = &declared.stake_per_contribution {
        let stake: u128 = stake
            .parse()
            .map_err(|_| format!("spec.policy.stakePerContribution {stake:?} is not a whole number of base units"))?;
        policy.stake_per_contribution = Some(stake.into());
    }
    if let Some(bytes) = declared.max_file_bytes {
        policy.max_file_bytes = bytes;
    }
    let auto_accept = declared.auto_accept_score.unwrap_or(policy.auto_accept_score);
    let reject_below = declared.reject_below_score.unwrap_or(policy.reject_below_score);
    // Both zero is "the service's defaults" to datanet-ingest, which it fills in: declaring that
    // keeps what it has (else every reconcile would find a difference).
    if auto_accept != 0 || reject_below != 0 {
        (policy.auto_accept_score, policy.reject_below_score) = (auto_accept, reject_below);
    }
    policy.review_all = declared.review_all;
    Ok(policy)
}

/// The `UpdateDatanet` that brings `present` to `spec`, unsigned, if any field differs: the
/// declared editable fields, masked to those that differ.
fn update(spec: &DatanetSpec, present: &pb::Datanet) -> Result<Option<pb::UpdateDatanetRequest>, String> {
    let policy = policy(&spec.policy, present.policy.clone().unwrap_or_default())?;
    let differs = [
        spec.summary != present.summary,
        spec.description_markdown != present.description_markdown,
        spec.tags != present.tags,
        comparable(policy.clone()) != comparable(present.policy.clone().unwrap_or_default()),
    ];
    let update_mask: Vec<String> =
        EDITABLE.into_iter().zip(differs).filter(|(_, differs)| *differs).map(|(field, _)| field.to_owned()).collect();
    if update_mask.is_empty() {
        return Ok(None);
    }
    let datanet = pb::Datanet {
        summary: spec.summary.clone(),
        description_markdown: spec.description_markdown.clone(),
        tags: spec.tags.clone(),
        policy: Some(policy),
        ..pb::Datanet::default()
    };
    Ok(Some(pb::UpdateDatanetRequest {
        id: present.id.clone(),
        datanet: Some(datanet),
        update_mask,
        ..Default::default()
    }))
}

/// `request` signed by the owner now.
fn sign_update(mut request: pb::UpdateDatanetRequest, owner: &SigningKey) -> pb::UpdateDatanetRequest {
    request.signed_at = now_unix();
    request.signature = Some(sign(owner, &datanet_update_message(&request)));
    request
}

/// `policy` with an absent stake as the zero stake it means.
fn comparable(mut policy: pb::ContributionPolicy) -> pb::ContributionPolicy {
    policy.stake_per_contribution = Some(policy.stake_per_contribution.map_or(0, u128::from).into());
    policy
}

/// The immutable fields the spec declares otherwise than datanet-ingest has them.
fn immutable_differences(wanted: &pb::Datanet, present: &pb::Datanet) -> Vec<&'static str> {
    [
        ("name", wanted.name == present.name),
        ("schema", wanted.schema == present.schema),
        ("labelSet", wanted.label_set == present.label_set),
        ("licence", wanted.licence == present.licence),
        ("visibility", wanted.visibility == present.visibility),
    ]
    .into_iter()
    .filter(|(_, same)| !same)
    .map(|(field, _)| field)
    .collect()
}

#[cfg(test)]
mod tests;
