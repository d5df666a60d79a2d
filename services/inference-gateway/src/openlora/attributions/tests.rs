//! The views of attributions and indexes (pure), then the routes against a scripted
//! attribution-worker: the Bearer check, the key's account as the caller the worker decides
//! inputs for, the worker's 404 while an inference is not attributed yet, ids refused at the
//! edge, and a receipt that does not decode.

use std::sync::Arc;

use axum::body::Body;
use http_body_util::BodyExt;
use openledger_core::ServiceKind;
use openledger_proto::{
    attribution::v1::attribution_service_server::{AttributionService, AttributionServiceServer},
    common::v1::{Hash, MerkleProof},
};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{view::method_name, *};
use crate::edge::upstream::testing::serve;

/// The account that paid for the scripted inferences.
const PAYER: u128 = 70_001;
/// Another account with a key of its own.
const OTHER: u128 = 70_002;
const OWNER: u128 = 60_000;
const CONTRIBUTOR: u128 = 80_000;

const RECEIPT: &str = r#"{"inference_id":"inf-1","method":"span_match","weights":[["c-1",750000000]]}"#;
const INPUTS: &str = r#"{"prompt":"hello","completion":"world","completion_token_ids":[1,2]}"#;

fn hash(byte: u8) -> Option<Hash> {
    Some(Hash { value: vec![byte; 32] })
}

/// An attribution as the worker answers a batched one, every field set (inputs only when
/// `inputs` is true).
fn batched(inputs: bool) -> pb::Attribution {
    pb::Attribution {
        inference_id: "inf-1".into(),
        method: pb::Method::SpanMatch as i32,
        weights: vec![pb::ContributionWeight {
            contribution_id: "c-1".into(),
            contributor: vec![0xcd; 32],
            weight_ppb: 750_000_000,
            spans: vec![pb::Span { completion_start: 0, completion_end: 5, record_hash: hash(0xee) }],
            contributor_account_id: Some(CONTRIBUTOR.into()),
        }],
        batch_proof: Some(MerkleProof {
            leaf_index: 3,
            tree_size: 8,
            path: vec![Hash { value: vec![0x01; 32] }, Hash { value: vec![0x02; 32] }],
            root: hash(0xaa),
        }),
        method_version: "span-match/1".into(),
        adapter_id: "ad-1".into(),
        datanet_id: "dn-1".into(),
        snapshot_id: "snap-1".into(),
        receipt: RECEIPT.as_bytes().to_vec(),
        receipt_hash: Some(Hash { value: blake3::hash(RECEIPT.as_bytes()).as_bytes().to_vec() }),
        batch_sequence: 12,
        journal_sequence: 345,
        notes: vec!["span index of snap-1".into()],
        span_coverage_ppm: 500_000,
        model_owner_account_id: Some(OWNER.into()),
        created_at_ms: 1_700_000_000_999,
        inputs_json: if inputs { INPUTS.into() } else { String::new() },
        completeness: "complete".into(),
        app_account_id: Some(PAYER.into()),
    }
}

fn ready_index() -> pb::AttributionIndex {
    pb::AttributionIndex {
        id: "span:snap-1".into(),
        snapshot_id: "snap-1".into(),
        adapter_id: String::new(),
        method: pb::Method::SpanMatch as i32,
        state: "ready".into(),
        records_indexed: 42,
        location: "attribution/indexes/snap-1".into(),
        datanet_id: "dn-1".into(),
        error: String::new(),
        files_hash: hash(0xbb),
        created_at_ms: 1_700_000_000_000,
        updated_at_ms: 1_700_000_060_500,
    }
}

#[test]
fn an_attribution_is_written_with_every_field_in_the_documented_shape() {
    let view = serde_json::to_value(Attribution::try_from(batched(true)).expect("decodes")).expect("json");
    assert_eq!(
        view,
        json!({
            "inference_id": "inf-1", "method": "span_match", "method_version": "span-match/1",
            "adapter_id": "ad-1", "datanet_id": "dn-1", "snapshot_id": "snap-1", "completeness": "complete",
            "notes": ["span index of snap-1"], "span_coverage_ppm": 500_000,
            "model_owner_account_id": OWNER.to_string(), "app_account_id": PAYER.to_string(),
            "weights": [{
                "contribution_id": "c-1", "contributor": "cd".repeat(32), "account_id": CONTRIBUTOR.to_string(),
                "weight_ppb": 750_000_000, "spans": [{"start": 0, "end": 5, "record_hash": "ee".repeat(32)}],
            }],
            "receipt": {"inference_id": "inf-1", "method": "span_match", "weights": [["c-1", 750_000_000]]},
            "receipt_canonical": RECEIPT,
            "receipt_hash": blake3::hash(RECEIPT.as_bytes()).to_hex().to_string(),
            "batch": {
                "sequence": 12, "journal_sequence": 345,
                "proof": {"leaf_index": 3, "tree_size": 8, "path": ["01".repeat(32), "02".repeat(32)], "root": "aa".repeat(32)},
            },
            "created_at": 1_700_000_000,
            "inputs": {"prompt": "hello", "completion": "world", "completion_token_ids": [1, 2]},
        })
    );
}

#[test]
fn the_canonical_receipt_rehashes_to_the_receipt_hash() {
    let view = Attribution::try_from(batched(false)).expect("decodes");
    assert_eq!(blake3::hash(view.receipt_canonical.as_bytes()).to_hex().as_str(), view.receipt_hash);
}

#[test]
fn an_unbatched_attribution_has_a_null_batch_and_no_inputs() {
    let attribution = pb::Attribution {
        batch_proof: None,
        batch_sequence: 0,
        journal_sequence: 0,
        model_owner_account_id: None,
        ..batched(false)
    };
    let view = serde_json::to_value(Attribution::try_from(attribution).expect("decodes")).expect("json");
    assert_eq!((view["batch"].clone(), view["model_owner_account_id"].clone()), (Value::Null, Value::Null));
    assert!(view.get("inputs").is_none(), "{view}");

    let recording = pb::Attribution { journal_sequence: 0, ..batched(false) };
    let view = serde_json::to_value(Attribution::try_from(recording).expect("decodes")).expect("json");
    assert_eq!(
        (view["batch"]["sequence"].as_u64(), view["batch"]["journal_sequence"].clone()),
        (Some(12), Value::Null)
    );
}

#[test]
fn a_receipt_or_inputs_that_do_not_decode_are_an_error_never_a_guess() {
    for attribution in [
        pb::Attribution { receipt: b"not json".to_vec(), ..batched(false) },
        pb::Attribution { receipt: vec![0xff, 0xfe], ..batched(false) },
        pb::Attribution { receipt: b"[1,2]".to_vec(), ..batched(false) },
        pb::Attribution { inputs_json: "{".into(), ..batched(false) },
    ] {
        let error = Attribution::try_from(attribution).expect_err("undecodable");
        assert_eq!(error.code, openledger_core::ErrorCode::Internal);
        assert!(error.message.contains("\"inf-1\""), "{}", error.message);
    }
}

#[test]
fn an_index_is_written_with_its_method_state_and_hash() {
    let view = serde_json::to_value(AttributionIndex::from(ready_index())).expect("json");
    assert_eq!(
        view,
        json!({
            "id": "span:snap-1", "method": "span_match", "datanet_id": "dn-1", "snapshot_id": "snap-1",
            "adapter_id": null, "state": "ready", "records_indexed": 42, "error": null,
            "files_hash": "bb".repeat(32), "created_at": 1_700_000_000, "updated_at": 1_700_000_060,
        })
    );
    let failed = pb::AttributionIndex {
        state: "failed".into(),
        error: "object store unreachable".into(),
        files_hash: None,
        ..ready_index()
    };
    let view = serde_json::to_value(AttributionIndex::from(failed)).expect("json");
    assert_eq!((view["error"].as_str(), view["files_hash"].clone()), (Some("object store unreachable"), Value::Null));
}

#[test]
fn every_method_has_its_rest_name() {
    let names: Vec<&str> = (0..=3).map(method_name).collect();
    assert_eq!(names, ["unspecified", "span_match", "gradient_influence", "blended"]);
}

/// What the scripted worker received.
#[derive(Default)]
struct Received {
    get: Vec<pb::GetAttributionRequest>,
    list_indexes: Vec<pb::ListIndexesRequest>,
    get_index: Vec<pb::GetIndexRequest>,
}

/// An attribution-worker that decides inputs as the real one does (only for the paying account
/// or a caller naming none), answers NOT_FOUND for `inf-pending` and `span:missing`, a receipt
/// that is not JSON for `inf-corrupt`, and one index.
#[derive(Clone, Default)]
struct ScriptedWorker {
    received: Arc<Mutex<Received>>,
}

fn unscripted<T>() -> Result<tonic::Response<T>, tonic::Status> {
    Err(tonic::Status::unimplemented("not scripted"))
}

#[tonic::async_trait]
impl AttributionService for ScriptedWorker {
    async fn attribute(
        &self,
        _request: tonic::Request<pb::AttributeRequest>,
    ) -> Result<tonic::Response<pb::Attribution>, tonic::Status> {
        unscripted()
    }

    async fn get_attribution(
        &self,
        request: tonic::Request<pb::GetAttributionRequest>,
    ) -> Result<tonic::Response<pb::Attribution>, tonic::Status> {
        let request = request.into_inner();
        self.received.lock().get.push(request.clone());
        match request.inference_id.as_str() {
            "inf-pending" => Err(tonic::Status::not_found(
                "no attribution of inference \"inf-pending\" (yet: attribution follows the inference)",
            )),
            "inf-corrupt" => Ok(tonic::Response::new(pb::Attribution {
                inference_id: request.inference_id,
                receipt: b"{truncated".to_vec(),
                ..batched(false)
            })),
            _ => {
                let caller = request.caller_account_id.map(u128::from);
                let allowed = caller.is_none_or(|caller| caller == PAYER);
                Ok(tonic::Response::new(batched(request.include_inputs && allowed)))
            }
        }
    }

    async fn list_attributions(
        &self,
        _request: tonic::Request<pb::ListAttributionsRequest>,
    ) -> Result<tonic::Response<pb::ListAttributionsResponse>, tonic::Status> {
        unscripted()
    }

    async fn build_index(
        &self,
        _request: tonic::Request<pb::BuildIndexRequest>,
    ) -> Result<tonic::Response<pb::AttributionIndex>, tonic::Status> {
        unscripted()
    }

    async fn get_index(
        &self,
        request: tonic::Request<pb::GetIndexRequest>,
    ) -> Result<tonic::Response<pb::AttributionIndex>, tonic::Status> {
        let request = request.into_inner();
        self.received.lock().get_index.push(request.clone());
        if request.id == "span:missing" {
            return Err(tonic::Status::not_found("no index \"span:missing\""));
        }
        Ok(tonic::Response::new(pb::AttributionIndex { id: request.id, ..ready_index() }))
    }

    async fn list_indexes(
        &self,
        request: tonic::Request<pb::ListIndexesRequest>,
    ) -> Result<tonic::Response<pb::ListIndexesResponse>, tonic::Status> {
        self.received.lock().list_indexes.push(request.into_inner());
        let building = pb::AttributionIndex {
            id: "span:snap-2".into(),
            snapshot_id: "snap-2".into(),
            state: "building".into(),
            records_indexed: 0,
            files_hash: None,
            ..ready_index()
        };
        let page = Some(openledger_proto::common::v1::PageResponse { next_page_token: "span:snap-2".into() });
        Ok(tonic::Response::new(pb::ListIndexesResponse { indexes: vec![ready_index(), building], page }))
    }
}

struct Edge {
    router: Router,
    /// Secrets of a key of `PAYER`, then of `OTHER`.
    payer: String,
    other: String,
    worker: ScriptedWorker,
    _dir: tempfile::TempDir,
}

async fn edge() -> Edge {
    let dir = tempfile::tempdir().expect("temp dir");
    let (keys, mut secrets) = crate::openlora::keys::testing::keys_of_accounts(dir.path(), &[PAYER, OTHER]).await;
    let worker = ScriptedWorker::default();
    let served = tonic::service::Routes::new(AttributionServiceServer::new(worker.clone()));
    let channel = serve(ServiceKind::AttributionWorker, served).await;
    let other = secrets.pop().expect("other");
    let payer = secrets.pop().expect("payer");
    Edge { router: routes(keys, channel), payer, other, worker, _dir: dir }
}

impl Edge {
    async fn call(&self, request: http::Request<Body>) -> (http::StatusCode, Value) {
        let response = self.router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let body = response.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// `GET uri` with `secret` as the Bearer key.
    async fn get(&self, uri: &str, secret: &str) -> (http::StatusCode, Value) {
        let request = http::Request::get(uri).header("authorization", format!("Bearer {secret}"));
        self.call(request.body(Body::empty()).expect("request")).await
    }

    fn calls(&self) -> usize {
        let received = self.worker.received.lock();
        received.get.len() + received.list_indexes.len() + received.get_index.len()
    }
}

#[tokio::test]
async fn every_route_needs_an_api_key_before_the_worker_is_asked() {
    let edge = edge().await;
    for uri in ["/v1/attributions/inf-1", "/v1/attribution/indexes", "/v1/attribution/indexes/span:snap-1"] {
        let (status, body) = edge.call(http::Request::get(uri).body(Body::empty()).expect("request")).await;
        assert_eq!(status, http::StatusCode::UNAUTHORIZED, "{uri}: {body}");
        assert_eq!(body["error"]["code"], "invalid_api_key", "{uri}");
        let (status, body) = edge.get(uri, "olk_not-a-key").await;
        assert_eq!((status, body["error"]["code"].as_str()), (http::StatusCode::UNAUTHORIZED, Some("invalid_api_key")));
    }
    assert_eq!(edge.calls(), 0, "an unauthenticated request never reaches the worker");
}

#[tokio::test]
async fn an_attribution_is_answered_to_any_key_for_its_account_without_inputs() {
    let edge = edge().await;
    let (status, view) = edge.get("/v1/attributions/inf-1", &edge.other).await;
    assert_eq!(status, http::StatusCode::OK, "{view}");
    assert_eq!(view, serde_json::to_value(Attribution::try_from(batched(false)).expect("decodes")).expect("json"));
    let received = edge.worker.received.lock().get.pop().expect("asked");
    assert_eq!(
        received,
        pb::GetAttributionRequest {
            inference_id: "inf-1".into(),
            include_inputs: false,
            caller_account_id: Some(OTHER.into())
        }
    );
}

#[tokio::test]
async fn inputs_are_answered_only_to_the_account_that_paid() {
    let edge = edge().await;
    let (status, view) = edge.get("/v1/attributions/inf-1?include=inputs", &edge.payer).await;
    assert_eq!(status, http::StatusCode::OK, "{view}");
    assert_eq!(view["inputs"]["completion"], "world");
    let received = edge.worker.received.lock().get.pop().expect("asked");
    assert_eq!((received.include_inputs, received.caller_account_id), (true, Some(PAYER.into())));

    let (status, view) = edge.get("/v1/attributions/inf-1?include=inputs", &edge.other).await;
    assert_eq!(status, http::StatusCode::OK, "{view}");
    assert!(view.get("inputs").is_none(), "another account's key never sees the inputs: {view}");
    let received = edge.worker.received.lock().get.pop().expect("asked");
    assert_eq!((received.include_inputs, received.caller_account_id), (true, Some(OTHER.into())));

    let (_, view) = edge.get("/v1/attributions/inf-1", &edge.payer).await;
    assert!(view.get("inputs").is_none(), "inputs only when asked for: {view}");
}

#[tokio::test]
async fn an_inference_not_attributed_yet_is_a_404_saying_attribution_follows() {
    let edge = edge().await;
    let (status, error) = edge.get("/v1/attributions/inf-pending", &edge.payer).await;
    assert_eq!((status, error["error"]["code"].as_str()), (http::StatusCode::NOT_FOUND, Some("not_found")));
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("attribution follows the inference"), "{message}");
}

#[tokio::test]
async fn a_receipt_the_worker_cannot_decode_is_a_500() {
    let edge = edge().await;
    let (status, error) = edge.get("/v1/attributions/inf-corrupt", &edge.payer).await;
    assert_eq!((status, error["error"]["code"].as_str()), (http::StatusCode::INTERNAL_SERVER_ERROR, Some("internal")));
}

#[tokio::test]
async fn malformed_ids_and_includes_are_refused_at_the_edge_naming_the_field() {
    let edge = edge().await;
    let longest = "a".repeat(MAX_ID_BYTES);
    let (status, view) = edge.get(&format!("/v1/attributions/{longest}"), &edge.payer).await;
    assert_eq!(status, http::StatusCode::OK, "{view}");
    let asked = edge.calls();
    for (uri, field) in [
        (format!("/v1/attributions/{longest}a"), "inference_id"),
        ("/v1/attributions/inf%201".to_owned(), "inference_id"),
        ("/v1/attributions/inf-%C3%A9".to_owned(), "inference_id"),
        ("/v1/attributions/inf-1?include=prompt".to_owned(), "include"),
        ("/v1/attribution/indexes?snapshot_id=".to_owned(), "snapshot_id"),
        (format!("/v1/attribution/indexes/{longest}a"), "id"),
    ] {
        let (status, error) = edge.get(&uri, &edge.payer).await;
        assert_eq!(status, http::StatusCode::BAD_REQUEST, "{uri}: {error}");
        assert_eq!(error["error"]["code"], "invalid_argument", "{uri}");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(field), "{uri}: {message}");
    }
    assert_eq!(edge.calls(), asked, "a refused id never reaches the worker");
}

#[tokio::test]
async fn indexes_are_listed_for_a_version_and_read_one_by_one() {
    let edge = edge().await;
    let (status, list) = edge.get("/v1/attribution/indexes?snapshot_id=snap-1", &edge.other).await;
    assert_eq!(status, http::StatusCode::OK, "{list}");
    let states: Vec<(&str, &str)> = list["indexes"]
        .as_array()
        .expect("indexes")
        .iter()
        .filter_map(|index| Some((index["id"].as_str()?, index["state"].as_str()?)))
        .collect();
    assert_eq!(states, [("span:snap-1", "ready"), ("span:snap-2", "building")]);
    assert_eq!(list["next_cursor"], "span:snap-2", "the worker's next page token");
    let asked = edge.worker.received.lock().list_indexes.pop().expect("listed");
    assert_eq!((asked.snapshot_id.as_str(), asked.page.expect("page").page_size), ("snap-1", 100), "the default page");
    let (status, _) = edge.get("/v1/attribution/indexes?adapter_id=ft:x&limit=2&after=span:a", &edge.other).await;
    assert_eq!(status, http::StatusCode::OK);
    let asked = edge.worker.received.lock().list_indexes.pop().expect("listed");
    let page = asked.page.expect("page");
    assert_eq!(
        (asked.snapshot_id.as_str(), asked.adapter_id.as_str(), page.page_size, page.page_token.as_str()),
        ("", "ft:x", 2, "span:a"),
        "every version, one adapter, the page asked for"
    );
    let (status, error) = edge.get("/v1/attribution/indexes?limit=0", &edge.other).await;
    assert_eq!(status, http::StatusCode::BAD_REQUEST, "{error}");

    let (status, index) = edge.get("/v1/attribution/indexes/span:snap-1", &edge.other).await;
    assert_eq!(status, http::StatusCode::OK, "{index}");
    assert_eq!(index, serde_json::to_value(AttributionIndex::from(ready_index())).expect("json"));
    let (status, error) = edge.get("/v1/attribution/indexes/span:missing", &edge.other).await;
    assert_eq!(
        (status, error["error"]["message"].as_str()),
        (http::StatusCode::NOT_FOUND, Some("no index \"span:missing\""))
    );
}
