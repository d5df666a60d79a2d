//! Making the objects a resource stands for exist as they should, with as few writes as
//! possible: each carries the hash of what the operator wants of it, so an object in sync is
//! recognised from one read and left alone; one that differs or is missing is (re)made by
//! server-side apply (the operator owns exactly the fields it sets, so a field it stops setting
//! goes).

use std::fmt::Debug;

use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PropagationPolicy},
};
use serde::{Serialize, de::DeserializeOwned};

use super::{Error, MANAGER};

/// The annotation holding the hash of the operator's wanted state of an object.
pub const SPEC_HASH: &str = "openledger.io/spec-hash";

/// What [`ensure`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    InSync,
}

/// Makes `wanted` (with name, namespace, labels and owner set) exist as it is; returns the
/// object as the API server has it and what was done.
pub async fn ensure<K>(api: &Api<K>, mut wanted: K) -> Result<(K, Change), Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let hash = hash(&wanted);
    wanted.annotations_mut().insert(SPEC_HASH.to_owned(), hash.clone());
    let name = wanted.name_any();
    let change = match api.get_opt(&name).await? {
        Some(current) if current.annotations().get(SPEC_HASH) == Some(&hash) => return Ok((current, Change::InSync)),
        Some(_) => Change::Updated,
        None => Change::Created,
    };
    // Server-side apply creates as well as updates, under one field manager and one operation:
    // a field the operator stops setting is removed (a POST would have recorded the fields under
    // an `Update` entry that a later apply cannot take back).
    let applied = api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&with_type(&wanted))).await?;
    Ok((applied, change))
}

/// Deletes the object `name` if it exists (its dependents in the background); whether it did.
pub async fn ensure_absent<K>(api: &Api<K>, name: &str) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    if api.get_opt(name).await?.is_none() {
        return Ok(false);
    }
    let params = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..DeleteParams::default() };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// The hash of an object's wanted state (its serialized form without the hash annotation).
pub fn hash<K: Serialize>(object: &K) -> String {
    let json = serde_json::to_vec(object).expect("a Kubernetes object serializes");
    blake3::hash(&json).to_hex()[..16].to_owned()
}

/// Server-side apply needs `apiVersion` and `kind` in the body.
fn with_type<K: Resource<DynamicType = ()> + Serialize>(object: &K) -> serde_json::Value {
    let mut value = serde_json::to_value(object).expect("a Kubernetes object serializes");
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    value
}
