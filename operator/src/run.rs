//! Hosting the controllers: one kube-runtime `Controller` per custom resource, watching the
//! resource and the objects it owns (changes to either trigger a reconcile), until shutdown.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use futures::StreamExt;
use k8s_openapi::api::{apps::v1::Deployment, batch::v1::Job};
use kube::{
    Api, Client, Resource,
    api::ListParams,
    runtime::{Controller, watcher},
};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::{
    controllers::{self, Context, MANAGED_BY, error_policy, job},
    crd::{AttributionJob, Datanet, LoraJob, LoraServer},
};

/// Where the operator looks.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// One namespace, or every namespace when `None` (needs a ClusterRole).
    pub namespace: Option<String>,
}

impl Scope {
    fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
    {
        match &self.namespace {
            Some(namespace) => Api::namespaced(client.clone(), namespace),
            None => Api::all(client.clone()),
        }
    }
}

/// Whether every CRD answers a list (installed, and this operator may read it): what `/readyz`
/// reports.
pub async fn check_crds(client: &Client, scope: &Scope) -> Result<(), String> {
    async fn one<K>(api: Api<K>) -> Result<(), String>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        api.list(&ListParams::default().limit(1))
            .await
            .map(|_| ())
            .map_err(|error| format!("{}: {error}", K::plural(&())))
    }
    one(scope.api::<LoraJob>(client)).await?;
    one(scope.api::<AttributionJob>(client)).await?;
    one(scope.api::<LoraServer>(client)).await?;
    one(scope.api::<Datanet>(client)).await
}

/// Runs the four controllers until `shutdown`; `ready` turns true once the CRDs answer.
pub async fn run(ctx: Arc<Context>, scope: Scope, ready: Arc<AtomicBool>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    loop {
        match check_crds(&client, &scope).await {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(%error, "the operator's custom resources do not answer yet; trying again in 5 s");
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }
    ready.store(true, Ordering::Relaxed);
    tracing::info!(namespace = scope.namespace.as_deref().unwrap_or("(all)"), "operator controllers starting");
    let owned = || watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    let stop = || {
        let shutdown = shutdown.clone();
        async move { shutdown.cancelled().await }
    };
    let lora_jobs = Controller::new(scope.api::<LoraJob>(&client), watcher::Config::default())
        .owns(scope.api::<Job>(&client), owned())
        .graceful_shutdown_on(stop())
        .run(job::reconcile::<LoraJob>, error_policy, ctx.clone())
        .for_each(report);
    let attribution_jobs = Controller::new(scope.api::<AttributionJob>(&client), watcher::Config::default())
        .owns(scope.api::<Job>(&client), owned())
        .graceful_shutdown_on(stop())
        .run(job::reconcile::<AttributionJob>, error_policy, ctx.clone())
        .for_each(report);
    let lora_servers = Controller::new(scope.api::<LoraServer>(&client), watcher::Config::default())
        .owns(scope.api::<Deployment>(&client), owned())
        .graceful_shutdown_on(stop())
        .run(controllers::lora_server::reconcile, error_policy, ctx.clone())
        .for_each(report);
    let datanets = Controller::new(scope.api::<Datanet>(&client), watcher::Config::default())
        .graceful_shutdown_on(stop())
        .run(controllers::datanet::reconcile, error_policy, ctx.clone())
        .for_each(report);
    tokio::join!(lora_jobs, attribution_jobs, lora_servers, datanets);
    tracing::info!("operator controllers stopped");
}

async fn report<T: std::fmt::Debug, E: std::fmt::Display>(outcome: Result<T, E>) {
    match outcome {
        Ok(object) => tracing::debug!(?object, "reconciled"),
        Err(error) => tracing::debug!(%error, "reconcile not done"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{self, Expect};

    fn empty_list() -> serde_json::Value {
        json!({"apiVersion": "openledger.io/v1alpha1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []})
    }

    #[tokio::test]
    async fn the_operator_is_ready_once_every_crd_answers_in_its_namespace() {
        let (client, script) = testing::pair();
        let base = "/apis/openledger.io/v1alpha1/namespaces/ml";
        let server = script.run(
            ["lorajobs", "attributionjobs", "loraservers", "datanets"]
                .into_iter()
                .map(|plural| Expect::get(format!("{base}/{plural}")).query("limit=1").returns(empty_list()))
                .collect(),
        );
        check_crds(&client, &Scope { namespace: Some("ml".into()) }).await.expect("ready");
        server.finish().await;
    }

    #[tokio::test]
    async fn a_missing_crd_is_named() {
        let (client, script) = testing::pair();
        let server = script.run(vec![
            Expect::get("/apis/openledger.io/v1alpha1/lorajobs").returns(empty_list()),
            Expect::get("/apis/openledger.io/v1alpha1/attributionjobs").not_found(),
        ]);
        let error = check_crds(&client, &Scope::default()).await.expect_err("not installed");
        assert!(error.starts_with("attributionjobs: "), "{error}");
        server.finish().await;
    }
}
