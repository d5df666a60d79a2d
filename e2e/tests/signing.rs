//! Every signed REST route against `openledger dev`: a well-formed signature that is wrong
//! (made by another key, or over other bytes) is HTTP 401 with code `unauthenticated`,
//! whichever service checks it, and the correctly signed twin of the same request goes
//! through (so the 401 is the signature's doing). Messages are built with `openledger_signing`
//! alone, as a client without protobuf would.

use std::net::SocketAddr;

use ed25519_dalek::SigningKey;
use openledger_core::{ContentHash, ServiceKind};
use openledger_signing::{
    self as signing, StakeAction,
    canonical::{ContributionPolicy, DatanetDefinition, Parameters},
    headers,
};
use serde_json::{Value, json};

use crate::support::{self, Platform};

/// The account the owner stakes from (created over REST, funded from the community).
const ACCOUNT: u128 = 93_000;
const OPEN: u128 = 1_000_000_000_000_000_000;

/// The owner's key, another key, and what the two kinds of wrong signature look like.
struct Keys {
    owner: SigningKey,
    other: SigningKey,
}

impl Keys {
    fn owner_hex(&self) -> String {
        hex::encode(self.owner.verifying_key().to_bytes())
    }

    /// The right signature of `message`, then two wrong ones presented with the owner's key:
    /// another key's signature of it, and the owner's signature of other bytes.
    fn signatures(&self, message: &[u8]) -> (String, [String; 2]) {
        let mut other_bytes = message.to_vec();
        other_bytes.push(b'!');
        (
            signing::sign(&self.owner, message).signature_hex(),
            [
                signing::sign(&self.other, message).signature_hex(),
                signing::sign(&self.owner, &other_bytes).signature_hex(),
            ],
        )
    }
}

struct Rest {
    addr: SocketAddr,
    http: reqwest::Client,
}

impl Rest {
    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).expect("json") })
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(format!("http://{}{path}", self.addr)).json(&body)).await
    }

    /// Posts `body(wrong)` for each wrong signature (401 `unauthenticated`), then `body(right)`,
    /// whose answer is returned.
    async fn refused_then_accepted(
        &self,
        path: &str,
        (right, wrong): (String, [String; 2]),
        body: impl Fn(String) -> Value,
    ) -> (u16, Value) {
        for signature in wrong {
            assert_unauthenticated(path, self.post(path, body(signature)).await);
        }
        self.post(path, body(right)).await
    }
}

fn assert_unauthenticated(route: &str, (status, body): (u16, Value)) {
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthenticated")), "{route}: {body}");
}

fn definition(slug: &str, visibility: &str) -> DatanetDefinition {
    DatanetDefinition {
        slug: slug.into(),
        name: format!("Signed {slug}"),
        schema: "free_text".into(),
        licence: "CC-BY-4.0".into(),
        visibility: visibility.into(),
        policy: ContributionPolicy { review_all: true, ..ContributionPolicy::default() },
        ..DatanetDefinition::default()
    }
}

/// Creates the Datanet over REST after two wrongly signed attempts; returns its id.
async fn create(rest: &Rest, keys: &Keys, slug: &str, visibility: &str) -> String {
    let wanted = definition(slug, visibility);
    // The REST body carries the same fields, in the REST spellings the definition uses.
    let datanet = json!({
        "slug": wanted.slug, "name": wanted.name, "schema": wanted.schema, "licence": wanted.licence,
        "visibility": wanted.visibility, "policy": {"review_all": true},
    });
    let signatures = keys.signatures(&signing::datanet_create_message(&wanted));
    let (status, body) = rest
        .refused_then_accepted("/v1/datanets", signatures, |signature| {
            json!({"datanet": datanet, "signature": {"public_key": keys.owner_hex(), "signature": signature}})
        })
        .await;
    assert_eq!(status, 201, "create {slug}: {body}");
    body["id"].as_str().expect("id").to_owned()
}

/// A JSONL contribution signed in headers, refused twice then accepted; returns it.
async fn contribute_jsonl(rest: &Rest, keys: &Keys, datanet: &str) -> Value {
    let body = "{\"text\": \"Iron deficiency is the most common cause of anaemia worldwide, and a diet with leafy greens, beans and meat helps prevent it.\"}\n";
    let message = signing::contribution_message(datanet, "iron.jsonl", &ContentHash::of(body.as_bytes()), None);
    let (right, wrong) = keys.signatures(&message);
    let path = format!("/v1/datanets/{datanet}/contributions");
    let upload = |signature: String| {
        rest.http
            .post(format!("http://{}{path}", rest.addr))
            .header(headers::KEY, keys.owner_hex())
            .header(headers::SIGNATURE, signature)
            .header(headers::FILE_NAME, "iron.jsonl")
            .body(body)
    };
    for signature in wrong {
        assert_unauthenticated("contribution (JSONL)", rest.send(upload(signature)).await);
    }
    let (status, taken) = rest.send(upload(right)).await;
    assert_eq!((status, taken["status"].as_str()), (201, Some("pending_review")), "{taken}");
    taken
}

/// A multipart contribution, refused twice then accepted.
async fn contribute_multipart(rest: &Rest, keys: &Keys, datanet: &str) {
    let csv = "text\n\"Vaccines train the immune system to recognise a germ without causing the illness, so the body can fight it off quickly later.\"\n";
    let message = signing::contribution_message(datanet, "facts.csv", &ContentHash::of(csv.as_bytes()), None);
    let (right, wrong) = keys.signatures(&message);
    let upload = |signature: String| {
        let file = reqwest::multipart::Part::bytes(csv.as_bytes().to_vec())
            .file_name("facts.csv")
            .mime_str("text/csv")
            .expect("mime");
        let form = reqwest::multipart::Form::new()
            .part("file", file)
            .text("public_key", keys.owner_hex())
            .text("signature", signature);
        rest.http.post(format!("http://{}/v1/datanets/{datanet}/contributions", rest.addr)).multipart(form)
    };
    for signature in wrong {
        assert_unauthenticated("contribution (multipart)", rest.send(upload(signature)).await);
    }
    let (status, taken) = rest.send(upload(right)).await;
    assert_eq!(status, 201, "{taken}");
}

/// The Datanet routes, in the order a Datanet's life takes them.
async fn datanet_routes(rest: &Rest, keys: &Keys) {
    let id = create(rest, keys, "signed-open", "public").await;
    let contribution = contribute_jsonl(rest, keys, &id).await;
    let contribution_id = contribution["id"].as_str().expect("contribution id");
    contribute_multipart(rest, keys, &id).await;

    let signatures = keys.signatures(&signing::review_message(&id, contribution_id, true, "good"));
    let path = format!("/v1/datanets/{id}/contributions/{contribution_id}/review");
    let (status, body) = rest
        .refused_then_accepted(&path, signatures, |signature| {
            json!({"approve": true, "reason": "good", "signature": {"public_key": keys.owner_hex(), "signature": signature}})
        })
        .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("accepted")), "{body}");

    let signed_at = signing::now_unix();
    let owner_body =
        |signature: String| json!({"public_key": keys.owner_hex(), "signature": signature, "signed_at": signed_at});
    let signatures = keys.signatures(&signing::publish_message(&id, signed_at));
    let (status, body) =
        rest.refused_then_accepted(&format!("/v1/datanets/{id}/snapshots"), signatures, owner_body).await;
    assert_eq!(status, 201, "publish: {body}");

    let record = contribution["records"][0]["hash"].as_str().expect("record hash");
    let record_hash = ContentHash::from_bytes(hex::decode(record).expect("hex").try_into().expect("32 bytes"));
    let signatures = keys.signatures(&signing::remove_record_message(&id, &record_hash, signed_at));
    let path = format!("/v1/datanets/{id}/records/{record}/remove");
    let (status, body) = rest.refused_then_accepted(&path, signatures, owner_body).await;
    assert_eq!(status, 204, "remove: {body}");

    // Access is asked by the other key for itself; a wrong signature is still refused first.
    let purpose = "fine-tune a first-aid helper";
    let asker = Keys { owner: keys.other.clone(), other: keys.owner.clone() };
    let signatures = asker.signatures(&signing::access_request_message(&id, purpose));
    let (status, grant) = rest
        .refused_then_accepted(
            &format!("/v1/datanets/{id}/access"),
            signatures,
            |signature| json!({"purpose": purpose, "public_key": asker.owner_hex(), "signature": signature}),
        )
        .await;
    assert_eq!(status, 201, "access request: {grant}");
    let grant_id = grant["id"].as_str().expect("grant id");
    let signatures = keys.signatures(&signing::access_decision_message(&id, grant_id, true, signed_at));
    let (status, body) = rest
        .refused_then_accepted(&format!("/v1/datanets/{id}/access/{grant_id}"), signatures, |signature| {
            json!({"approve": true, "public_key": keys.owner_hex(), "signature": signature, "signed_at": signed_at})
        })
        .await;
    assert_eq!((status, body["state"].as_str()), (200, Some("approved")), "{body}");
}

/// A private Datanet read with the caller headers: wrong signatures, a stale time, the right one.
async fn private_read(rest: &Rest, keys: &Keys) {
    let id = create(rest, keys, "signed-closed", "private").await;
    let now = signing::now_unix();
    let read = |at: i64, signature: String| {
        rest.http
            .get(format!("http://{}/v1/datanets/{id}", rest.addr))
            .header(headers::KEY, keys.owner_hex())
            .header(headers::TIMESTAMP, at.to_string())
            .header(headers::SIGNATURE, signature)
    };
    let (right, wrong) = keys.signatures(&signing::caller_message(now));
    for signature in wrong {
        assert_unauthenticated("private read", rest.send(read(now, signature)).await);
    }
    let stale = now - 2 * signing::MAX_CLOCK_SKEW_SECONDS;
    let stale_signature = signing::sign(&keys.owner, &signing::caller_message(stale)).signature_hex();
    assert_unauthenticated("private read, stale", rest.send(read(stale, stale_signature)).await);
    let (status, body) = rest.send(read(now, right)).await;
    assert_eq!((status, body["slug"].as_str()), (200, Some("signed-closed")), "{body}");
    let (status, _) = rest.send(rest.http.get(format!("http://{}/v1/datanets/{id}", rest.addr))).await;
    assert_eq!(status, 404, "invisible without the caller headers");
}

/// Stake, a proposal, a vote and unstake, each refused twice then accepted.
async fn ledger_routes(rest: &Rest, keys: &Keys, platform: &mut Platform) {
    let (status, body) =
        rest.post("/v1/accounts", json!({"id": ACCOUNT.to_string(), "public_key": keys.owner_hex()})).await;
    assert_eq!(status, 201, "{body}");
    let ledger = platform.wait_endpoint(ServiceKind::Ledger, "grpc");
    let mut client =
        openledger_proto::ledger::v1::ledger_service_client::LedgerServiceClient::connect(format!("http://{ledger}"))
            .await
            .expect("connect");
    support::fund_from_community(&mut client, 93, ACCOUNT, 5_000 * OPEN).await;

    for (action, operation, amount, path) in [
        (StakeAction::Stake, "sign-stake", 2_000 * OPEN, "stake"),
        (StakeAction::Unstake, "sign-unstake", 100 * OPEN, "unstake"),
    ] {
        let signatures = keys.signatures(&signing::staking_message(action, operation, ACCOUNT, amount));
        let (status, body) = rest
            .refused_then_accepted(&format!("/v1/accounts/{ACCOUNT}/{path}"), signatures, |signature| {
                json!({"operation_id": operation, "amount": amount.to_string(), "public_key": keys.owner_hex(), "signature": signature})
            })
            .await;
        assert_eq!(status, 200, "{path}: {body}");
        if action == StakeAction::Stake {
            ledger_governance(rest, keys).await;
        }
    }
}

async fn ledger_governance(rest: &Rest, keys: &Keys) {
    let (status, current) = support::get(rest.addr, "/v1/governance/parameters").await;
    assert_eq!(status, 200, "{current}");
    let mut parameters: Value = serde_json::from_str(&current).expect("json");
    parameters["model_owner_bps"] = 2_500.into();
    parameters["contributors_bps"] = 5_500.into();
    assert_eq!(parameters["slashing_threshold_milli"], -1_000, "the default threshold: {current}");
    parameters["slashing_threshold_milli"] = (-2_000).into();
    let number = |key: &str| parameters[key].as_u64().expect("number");
    let amount = |key: &str| parameters[key].as_str().and_then(|text| text.parse().ok()).expect("amount");
    let proposed = Parameters {
        model_owner_bps: 2_500,
        stakers_bps: u32::try_from(number("stakers_bps")).expect("bps"),
        contributors_bps: 5_500,
        platform_fee: amount("platform_fee"),
        slashing_bps: u32::try_from(number("slashing_bps")).expect("bps"),
        minimum_stake: amount("minimum_stake"),
        unbonding_seconds: number("unbonding_seconds"),
        epoch_seconds: number("epoch_seconds"),
        slashing_threshold_milli: -2_000,
    };
    let signatures = keys.signatures(&signing::proposal_message("signed-proposal", ACCOUNT, &proposed));
    let (status, body) = rest
        .refused_then_accepted("/v1/governance/proposals", signatures, |signature| {
            json!({"id": "signed-proposal", "account": ACCOUNT.to_string(), "parameters": parameters,
                   "public_key": keys.owner_hex(), "signature": signature})
        })
        .await;
    assert_eq!(status, 201, "proposal: {body}");
    let signatures = keys.signatures(&signing::vote_message("signed-proposal", ACCOUNT, true));
    let (status, body) = rest
        .refused_then_accepted("/v1/governance/proposals/signed-proposal/votes", signatures, |signature| {
            json!({"account": ACCOUNT.to_string(), "approve": true, "public_key": keys.owner_hex(), "signature": signature})
        })
        .await;
    assert_eq!(status, 200, "vote: {body}");
}

#[tokio::test]
async fn every_signed_route_answers_a_wrong_signature_with_401_unauthenticated() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut platform = Platform::spawn::<&str>(&["--data-dir", &data_dir.path().display().to_string(), "dev"], &[]);
    let addr = platform.wait_endpoint(ServiceKind::InferenceGateway, "rest");
    platform.wait_ready(addr).await;
    let rest = Rest { addr, http: reqwest::Client::new() };
    let keys = Keys { owner: SigningKey::from_bytes(&[31; 32]), other: SigningKey::from_bytes(&[32; 32]) };

    datanet_routes(&rest, &keys).await;
    private_read(&rest, &keys).await;
    ledger_routes(&rest, &keys, &mut platform).await;
    assert_eq!(platform.terminate().code(), Some(0));
}
