//! EndpointSlices to replica URLs (pure), and the list-then-watch loop against the operator's
//! scripted API server.

use std::time::Duration;

use openledger_operator::testing::{self, Expect, status_body};
use serde_json::{Value, json};

use super::*;

const PATH: &str = "/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices";
const SELECTOR: &str = "labelSelector=kubernetes.io%2Fservice-name%3Dengines";

/// An EndpointSlice of the `engines` Service: `(address, ready)` endpoints on `port`.
fn slice_json(name: &str, version: &str, port: u16, endpoints: &[(&str, Option<bool>)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(address, ready)| match ready {
            Some(ready) => json!({"addresses": [address], "conditions": {"ready": ready}}),
            None => json!({"addresses": [address]}),
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "resourceVersion": version,
            "labels": {"kubernetes.io/service-name": "engines"},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
    })
}

fn slice(name: &str, port: u16, endpoints: &[(&str, Option<bool>)]) -> EndpointSlice {
    serde_json::from_value(slice_json(name, "1", port, endpoints)).expect("an EndpointSlice")
}

fn urls(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|u| (*u).to_owned()).collect()
}

#[test]
fn only_ready_endpoints_are_replicas_and_absent_readiness_counts_as_ready() {
    let slices = [slice("a", 50060, &[("10.0.0.1", Some(true)), ("10.0.0.2", Some(false)), ("10.0.0.3", None)])];
    assert_eq!(replica_urls(&slices, 50060), urls(&["http://10.0.0.1:50060", "http://10.0.0.3:50060"]));
}

#[test]
fn an_address_in_two_slices_is_one_replica_and_no_slices_are_no_replicas() {
    let slices =
        [slice("a", 50060, &[("10.0.0.1", None)]), slice("b", 50060, &[("10.0.0.1", None), ("10.0.0.4", None)])];
    assert_eq!(replica_urls(&slices, 50060), urls(&["http://10.0.0.1:50060", "http://10.0.0.4:50060"]));
    assert!(replica_urls(&[], 50060).is_empty());
    assert!(replica_urls(&[slice("a", 50060, &[])], 50060).is_empty());
}

#[test]
fn the_port_is_the_slices_own_when_it_lists_one_other_port_and_ipv6_is_bracketed() {
    // A Service port mapped to another target port: the slice carries the pods' port.
    assert_eq!(replica_urls(&[slice("a", 9000, &[("10.0.0.1", None)])], 50060), urls(&["http://10.0.0.1:9000"]));
    let mut two_ports = slice("a", 50060, &[("10.0.0.1", None)]);
    let mut metrics = two_ports.ports.as_ref().expect("ports")[0].clone();
    metrics.port = Some(9091);
    two_ports.ports.as_mut().expect("ports").push(metrics);
    assert_eq!(replica_urls(&[two_ports], 50060), urls(&["http://10.0.0.1:50060"]), "the named port among several");
    let mut v6 = slice("a", 50060, &[("fd00::1", None)]);
    v6.address_type = "IPv6".into();
    assert_eq!(replica_urls(&[v6], 50060), urls(&["http://[fd00::1]:50060"]));
}

#[test]
fn service_urls_name_a_service_an_optional_namespace_and_a_port() {
    let target = ServiceTarget::parse("kubernetes://engines:50060").expect("kubernetes scheme").expect("valid");
    assert_eq!(target, ServiceTarget { service: "engines".into(), namespace: None, port: 50060 });
    assert_eq!(target.label_selector(), "kubernetes.io/service-name=engines");
    let target = ServiceTarget::parse("kubernetes://engines.serving:7000").expect("kubernetes scheme").expect("valid");
    assert_eq!(target.namespace.as_deref(), Some("serving"));
    assert_eq!(target.to_string(), "kubernetes://engines.serving:7000");
    assert!(ServiceTarget::parse("http://engine-0:50060").is_none(), "a fixed replica is not a Service");
    for bad in ["kubernetes://engines", "kubernetes://engines:0", "kubernetes://Engines:50060", "kubernetes://a.b.c:1"]
    {
        let error = ServiceTarget::parse(bad).expect("kubernetes scheme").expect_err(bad);
        assert!(error.to_string().contains(bad), "{error}");
    }
}

/// A watch answer holding one event.
fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

/// Checks, when the request arrives, that discovery has published `expected` (each request
/// follows the publication of everything before it, so this is no race).
fn published(receiver: &watch::Receiver<Discovered>, expected: &[&str]) -> impl Fn(&Value) + Send + 'static {
    let receiver = receiver.clone();
    let expected = urls(expected);
    move |_| assert_eq!(receiver.borrow().replicas, expected)
}

#[tokio::test]
async fn discovery_lists_then_follows_replicas_coming_going_and_turning_unready() {
    let (client, script) = testing::pair();
    let (publish, mut receiver) = watch::channel(Discovered::default());
    let one = |ready| slice_json("engines-a", "10", 50060, &[("10.0.0.1", Some(true)), ("10.0.0.2", Some(ready))]);
    let gone = status_body(410, "Expired", "too old resource version: 13 (20)");
    let server = script.run(vec![
        Expect::get(PATH).query(SELECTOR).returns(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
            "metadata": {"resourceVersion": "10"},
            "items": [one(false)],
        })),
        // Watched from the list's version: a second slice adds a replica.
        Expect::get(PATH)
            .query(SELECTOR)
            .query("watch=true")
            .query("resourceVersion=10")
            .check(published(&receiver, &["http://10.0.0.1:50060"]))
            .returns(event("ADDED", slice_json("engines-b", "11", 50060, &[("10.0.0.3", None)]))),
        // Watched again from the event's version: the unready endpoint turns ready.
        Expect::get(PATH)
            .query("watch=true")
            .query("resourceVersion=11")
            .check(published(&receiver, &["http://10.0.0.1:50060", "http://10.0.0.3:50060"]))
            .returns(event("MODIFIED", {
                let mut modified = one(true);
                modified["metadata"]["resourceVersion"] = json!("12");
                modified
            })),
        // The second slice goes: only its replica leaves.
        Expect::get(PATH)
            .query("watch=true")
            .query("resourceVersion=12")
            .check(published(&receiver, &["http://10.0.0.1:50060", "http://10.0.0.2:50060", "http://10.0.0.3:50060"]))
            .returns(event("DELETED", slice_json("engines-b", "13", 50060, &[("10.0.0.3", None)]))),
        // The version expired: listed again at once, then watched from the new list.
        Expect::get(PATH)
            .query("watch=true")
            .query("resourceVersion=13")
            .check(published(&receiver, &["http://10.0.0.1:50060", "http://10.0.0.2:50060"]))
            .returns(event("ERROR", gone)),
        Expect::get(PATH).query(SELECTOR).returns(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
            "metadata": {"resourceVersion": "20"},
            "items": [slice_json("engines-a", "20", 50060, &[("10.0.0.2", Some(true))])],
        })),
        // A failing API server: the replicas known stay, the error is published, and the
        // retry waits (an hour here, so the script ends first).
        Expect::get(PATH)
            .query("watch=true")
            .query("resourceVersion=20")
            .check(published(&receiver, &["http://10.0.0.2:50060"]))
            .respond(500, status_body(500, "InternalError", "etcd is sad")),
    ]);
    let target = ServiceTarget { service: "engines".into(), namespace: Some("ns".into()), port: 50060 };
    let retry = Retry { first: Duration::from_secs(3600), longest: Duration::from_secs(3600) };
    let follower = tokio::spawn(follow(target.api(client), target, publish, retry));
    let failed = tokio::time::timeout(Duration::from_secs(20), receiver.wait_for(|d| d.error.is_some()))
        .await
        .expect("discovery reported the failing API server")
        .expect("discovery still running")
        .clone();
    assert_eq!(failed.replicas, urls(&["http://10.0.0.2:50060"]), "the replicas known are kept through errors");
    assert!(failed.error.as_deref().is_some_and(|e| e.contains("etcd is sad")), "{failed:?}");
    follower.abort();
    let requests = server.finish().await;
    assert!(requests.iter().all(|r| !r.is_write()), "discovery only reads");
}
