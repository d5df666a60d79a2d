//! API keys on the inference gateway with the real ledger, both in this process: the life of
//! a key over REST and gRPC on SQLite and on PostgreSQL (signed create, the owner check, list
//! without secrets, revoke, limits), the development account an embedded process makes once
//! and reuses, cluster mode making none, and `openledger dev`'s ready banner showing the key.

use std::{net::SocketAddr, os::unix::fs::PermissionsExt, path::Path, sync::Arc};

use ed25519_dalek::SigningKey;
use openledger_core::{Config, ErrorCode, ServiceKind};
use openledger_inference_gateway::openlora::keys::{
    Keys, Limits, default_limits,
    dev::{DEV_ACCOUNT_FUNDS, DEV_ACCOUNT_KEY_FILE, DEV_API_KEY_FILE, dev_account_id},
};
use openledger_proto::{
    inference::v1::{self as pb, inference_service_client::InferenceServiceClient},
    ledger::v1::{self as lpb, ledger_service_client::LedgerServiceClient},
    uint128,
};
use openledger_runtime::{Deps, Endpoints, clients::ServiceChannel};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::support::{Platform, eventually};

/// The ledger and the gateway running in this process on one set of backends.
struct Gateway {
    config: Arc<Config>,
    deps: Deps,
    rest: SocketAddr,
    ledger_url: String,
    ledger: LedgerServiceClient<Channel>,
    grpc: InferenceServiceClient<Channel>,
    http: reqwest::Client,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    async fn start(config: Config, embedded: bool) -> Self {
        let config = Arc::new(Config { grpc_base_port: 0, ops_base_port: 0, http_port: 0, ..config });
        let shutdown = CancellationToken::new();
        let mut deps = Deps::start(config.clone(), shutdown.clone());
        deps.embedded = embedded;
        let tasks = vec![
            tokio::spawn(serve(openledger_ledger::serve(config.clone(), deps.clone()))),
            tokio::spawn(serve(openledger_inference_gateway::serve(config.clone(), deps.clone()))),
        ];
        let (ledger_url, gateway_url, rest) = eventually("the ledger and the gateway are ready", async || {
            let ready = deps.readiness.services();
            if ready.len() < 2 || !ready.values().all(|ready| *ready) {
                return Err(format!("{ready:?}"));
            }
            let endpoints = deps.endpoints.all();
            let find = |kind, role| {
                endpoints.iter().find(|e| e.service == kind && e.role == role).map(|e| e.addr).expect("endpoint")
            };
            Ok((
                format!("http://{}", find(ServiceKind::Ledger, "grpc")),
                format!("http://{}", find(ServiceKind::InferenceGateway, "grpc")),
                find(ServiceKind::InferenceGateway, "rest"),
            ))
        })
        .await;
        let connect =
            async |url: &str| Channel::from_shared(url.to_owned()).expect("url").connect().await.expect("connect");
        Self {
            ledger: LedgerServiceClient::new(connect(&ledger_url).await),
            grpc: InferenceServiceClient::new(connect(&gateway_url).await),
            ledger_url,
            rest,
            http: reqwest::Client::new(),
            config,
            deps,
            shutdown,
            tasks,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            task.await.expect("service task");
        }
    }

    /// A `Keys` of its own on the gateway's database (for what no route of this module calls).
    fn keys(&self, defaults: Limits) -> Keys {
        let db = self.deps.backends.current().expect("connected").db;
        let ledger =
            ServiceChannel::new(ServiceKind::Ledger, Some(self.ledger_url.clone()), &self.config, Endpoints::default());
        Keys::with_database(db, ledger, defaults)
    }

    async fn account(&mut self, id: u128, owner: &SigningKey) {
        let account = lpb::Account {
            id: uint128(id),
            owner: Some(lpb::account::Owner::PublicKey(owner.verifying_key().to_bytes().to_vec())),
            ledger: 1,
            ..Default::default()
        };
        let created = self.ledger.create_accounts(lpb::CreateAccountsRequest { accounts: vec![account] }).await;
        assert_eq!(created.expect("account").into_inner().results[0].result, lpb::CreateResult::Ok as i32);
    }

    async fn balance(&mut self, id: u128) -> u128 {
        let found = self.ledger.lookup_accounts(lpb::LookupAccountsRequest { ids: vec![id.into()] }).await;
        let account = found.expect("lookup").into_inner().accounts.pop().expect("account");
        let get = |value: Option<openledger_proto::common::v1::Uint128>| value.map(u128::from).unwrap_or(0);
        get(account.credits_posted) - get(account.debits_posted)
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("answer");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn create(&self, body: &Value) -> (u16, Value) {
        self.call(self.http.post(format!("http://{}/v1/api_keys", self.rest)).json(body)).await
    }

    async fn list(&self, query: &str, headers: &[(&str, String)]) -> (u16, Value) {
        let mut request = self.http.get(format!("http://{}/v1/api_keys?{query}", self.rest));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        self.call(request).await
    }

    async fn revoke(&self, id: &str, signer: &SigningKey, signed_at: i64) -> (u16, Value) {
        let signed = openledger_signing::sign(signer, &openledger_signing::api_key_revoke_message(id, signed_at));
        let body = json!({"signed_at": signed_at, "signature": signature_json(&signed)});
        self.call(self.http.delete(format!("http://{}/v1/api_keys/{id}", self.rest)).json(&body)).await
    }
}

async fn serve(service: impl Future<Output = Result<(), openledger_runtime::RuntimeError>>) {
    service.await.expect("service runs");
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn now() -> i64 {
    openledger_signing::now_unix()
}

fn signature_json(signed: &openledger_signing::Signed) -> Value {
    json!({"public_key": signed.public_key_hex(), "signature": signed.signature_hex()})
}

/// A create request for `account` signed by `signer` at `signed_at`.
fn create_body(account: u128, name: &str, limits: (u64, u64), signer: &SigningKey, signed_at: i64) -> Value {
    let message = openledger_signing::api_key_create_message(account, signed_at, limits.0, limits.1, name);
    let signed = openledger_signing::sign(signer, &message);
    json!({
        "account_id": account.to_string(),
        "name": name,
        "limits": {"requests_per_minute": limits.0, "tokens_per_minute": limits.1},
        "signed_at": signed_at,
        "signature": signature_json(&signed),
    })
}

fn bearer(secret: &str) -> [(&'static str, String); 1] {
    [("authorization", format!("Bearer {secret}"))]
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

const ALICE_ACCOUNT: u128 = 71_001;

async fn whole_life(gateway: &mut Gateway) {
    let (alice, bob) = (key(11), key(12));
    gateway.account(ALICE_ACCOUNT, &alice).await;
    let defaults = default_limits(&gateway.config);
    let list_query = format!("account_id={ALICE_ACCOUNT}");

    // Created by the owner's signature: the secret once, the key's own lower limit kept.
    let body = create_body(ALICE_ACCOUNT, "ci deploys", (2, 0), &alice, now());
    let (status, created) = gateway.create(&body).await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().expect("secret").to_owned();
    let key_id = created["key"]["id"].as_str().expect("id").to_owned();
    assert!(secret.starts_with(&format!("olk_{key_id}_")), "{secret}");
    assert_eq!(
        created["key"]["limits"],
        json!({"requests_per_minute": 2, "tokens_per_minute": defaults.tokens_per_minute})
    );
    assert_eq!(created["key"]["account_id"], ALICE_ACCOUNT.to_string());

    // The secret authenticates; the list never shows a secret or its hash.
    let (status, page) = gateway.list(&list_query, &bearer(&secret)).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["keys"][0]["id"], key_id.as_str());
    let text = page.to_string();
    assert!(!text.contains(&secret[secret.len() - 64..]), "{text}");
    assert!(!text.contains(&openledger_core::ContentHash::of(secret.as_bytes()).to_hex()), "{text}");
    assert!(!text.contains("secret"), "{text}");

    // The same signed request again makes no second key.
    let (status, replayed) = gateway.create(&body).await;
    assert_eq!((status, error_code(&replayed)), (409, "already_exists"), "{replayed}");

    // A signer who does not own the account: 403. A bad or stale signature: 401. No account: 404.
    let (status, refused) = gateway.create(&create_body(ALICE_ACCOUNT, "bob's", (0, 0), &bob, now())).await;
    assert_eq!((status, error_code(&refused)), (403, "permission_denied"), "{refused}");
    let mut tampered = create_body(ALICE_ACCOUNT, "mine", (0, 0), &alice, now());
    tampered["name"] = json!("not what was signed");
    let (status, refused) = gateway.create(&tampered).await;
    assert_eq!((status, error_code(&refused)), (401, "unauthenticated"), "{refused}");
    let mut unlimited = create_body(ALICE_ACCOUNT, "mine", (2, 0), &alice, now());
    unlimited["limits"]["requests_per_minute"] = json!(0);
    let (status, refused) = gateway.create(&unlimited).await;
    assert_eq!(status, 401, "the limits are signed: {refused}");
    let (status, refused) = gateway.create(&create_body(ALICE_ACCOUNT, "old", (0, 0), &alice, now() - 301)).await;
    assert_eq!((status, error_code(&refused)), (401, "unauthenticated"), "{refused}");
    let (status, refused) = gateway.create(&create_body(71_999, "nobody's", (0, 0), &alice, now())).await;
    assert_eq!((status, error_code(&refused)), (404, "not_found"), "{refused}");
    let (status, refused) = gateway.create(&create_body(ALICE_ACCOUNT, "", (0, 0), &alice, now())).await;
    assert_eq!((status, error_code(&refused)), (400, "invalid_argument"), "{refused}");

    // Limits above the defaults are capped to them.
    let (status, capped) =
        gateway.create(&create_body(ALICE_ACCOUNT, "greedy", (u64::from(u32::MAX), 0), &alice, now())).await;
    assert_eq!(status, 201, "{capped}");
    assert_eq!(capped["key"]["limits"]["requests_per_minute"], defaults.requests_per_minute);

    // Listing: nobody without a key or the owner's caller headers; a page at a time.
    let (status, refused) = gateway.list(&list_query, &[]).await;
    assert_eq!((status, error_code(&refused)), (401, "unauthenticated"), "{refused}");
    let (status, refused) = gateway.list(&list_query, &openledger_signing::caller_headers(&bob, now())).await;
    assert_eq!((status, error_code(&refused)), (403, "permission_denied"), "{refused}");
    let owner = openledger_signing::caller_headers(&alice, now());
    let (status, first) = gateway.list(&format!("{list_query}&limit=1"), &owner).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["keys"].as_array().map(Vec::len), Some(1));
    let cursor = first["next_cursor"].as_str().expect("a second page");
    let (status, second) = gateway.list(&format!("{list_query}&limit=1&after={cursor}"), &owner).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["keys"][0]["id"], capped["key"]["id"]);
    assert!(second.get("next_cursor").is_none(), "{second}");

    // The gRPC API: create, list with the key as metadata, revoke.
    let signed_at = now();
    let message = openledger_signing::api_key_create_message(ALICE_ACCOUNT, signed_at, 0, 0, "grpc");
    let signed = openledger_signing::sign(&alice, &message);
    let created = gateway
        .grpc
        .create_api_key(pb::CreateApiKeyRequest {
            account_id: uint128(ALICE_ACCOUNT),
            name: "grpc".into(),
            limits: None,
            signed_at,
            signature: Some(signed.into()),
        })
        .await
        .expect("created over gRPC")
        .into_inner();
    let grpc_key = created.key.expect("key");
    let mut request = tonic::Request::new(pb::ListApiKeysRequest { account_id: uint128(ALICE_ACCOUNT), page: None });
    request.metadata_mut().insert("authorization", format!("Bearer {}", created.secret).parse().expect("ascii"));
    let listed = gateway.grpc.list_api_keys(request).await.expect("listed over gRPC").into_inner();
    assert_eq!(listed.keys.len(), 3);
    assert!(listed.keys.iter().all(|key| key.revoked_at_ms == 0));
    let signed_at = now();
    let signed = openledger_signing::sign(&alice, &openledger_signing::api_key_revoke_message(&grpc_key.id, signed_at));
    let revoked = gateway
        .grpc
        .revoke_api_key(pb::RevokeApiKeyRequest {
            key_id: grpc_key.id.clone(),
            signed_at,
            signature: Some(signed.into()),
        })
        .await
        .expect("revoked over gRPC");
    assert!(revoked.into_inner().key.expect("key").revoked_at_ms > 0);
    let refused = gateway
        .grpc
        .create_api_key(pb::CreateApiKeyRequest {
            account_id: uint128(ALICE_ACCOUNT),
            name: "x".into(),
            ..Default::default()
        })
        .await
        .expect_err("unsigned");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // 429 with Retry-After once the key's two requests a minute are spent.
    let keys = gateway.keys(defaults);
    let caller = keys.authenticate_secret(&secret).await.expect("the secret authenticates");
    assert_eq!((caller.key_id.as_str(), caller.account_id), (key_id.as_str(), ALICE_ACCOUNT));
    keys.admit(&caller, 100).expect("first request");
    keys.admit(&caller, 100).expect("second request");
    let limited = keys.admit(&caller, 100).expect_err("third request within the minute");
    assert_eq!((limited.code, limited.detail_code), (ErrorCode::ResourceExhausted, Some("rate_limited")));
    // Two a minute: the next one is free 30 s after the first (less the time this test took).
    let retry_after = limited.retry_after_seconds.expect("Retry-After");
    assert!((1..=30).contains(&retry_after), "{retry_after}");

    // Revoked by the owner only; then the secret no longer authenticates.
    let (status, refused) = gateway.revoke(&key_id, &bob, now()).await;
    assert_eq!((status, error_code(&refused)), (403, "permission_denied"), "{refused}");
    let (status, refused) = gateway.revoke("no-such-key", &alice, now()).await;
    assert_eq!((status, error_code(&refused)), (404, "not_found"), "{refused}");
    let (status, revoked) = gateway.revoke(&key_id, &alice, now()).await;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["revoked_at_ms"].as_i64().is_some_and(|at| at > 0), "{revoked}");
    let (status, refused) = gateway.list(&list_query, &bearer(&secret)).await;
    assert_eq!((status, error_code(&refused)), (401, "invalid_api_key"), "{refused}");
    assert!(refused["error"]["message"].as_str().is_some_and(|m| m.contains("POST /v1/api_keys")), "{refused}");
    let (status, again) = gateway.revoke(&key_id, &alice, now()).await;
    assert_eq!((status, &again["revoked_at_ms"]), (200, &revoked["revoked_at_ms"]), "revoking twice changes nothing");
}

#[tokio::test]
async fn api_keys_live_their_whole_life_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut gateway = Gateway::start(Config { data_dir: dir.path().to_path_buf(), ..Config::default() }, false).await;
    whole_life(&mut gateway).await;
    gateway.stop().await;
}

#[tokio::test]
async fn api_keys_live_their_whole_life_on_postgres() {
    let postgres = openledger_testkit::Postgres::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        database_url: Some(postgres.create_database("keys")),
        ..Config::default()
    };
    let mut gateway = Gateway::start(config, false).await;
    whole_life(&mut gateway).await;
    gateway.stop().await;
}

fn read_private(path: &Path) -> String {
    let mode = std::fs::metadata(path).expect("written").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{} is private", path.display());
    std::fs::read_to_string(path).expect("read").trim().to_owned()
}

/// The development account of `data_dir` and its kept secret.
fn dev_files(data_dir: &Path) -> (SigningKey, u128, String) {
    let seed = hex::decode(read_private(&data_dir.join(DEV_ACCOUNT_KEY_FILE))).expect("hex");
    let key = SigningKey::from_bytes(&seed.try_into().expect("32 bytes"));
    let account = dev_account_id(&key);
    (key, account, read_private(&data_dir.join(DEV_API_KEY_FILE)))
}

async fn dev_secret(gateway: &Gateway) -> String {
    eventually("the development API key is made", async || match gateway.deps.dev_api_key.get() {
        Some(Ok(secret)) => Ok(secret),
        Some(Err(reason)) => panic!("no development key: {reason}"),
        None => Err("not yet".to_owned()),
    })
    .await
}

#[tokio::test]
async fn embedded_mode_makes_a_funded_development_account_and_key_once_and_cluster_mode_never() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };

    // Cluster mode (not embedded): no account, no key, nothing for a banner.
    let mut gateway = Gateway::start(config.clone(), false).await;
    let (alice, account) = (key(13), 71_101);
    gateway.account(account, &alice).await;
    let (status, body) = gateway.create(&create_body(account, "works", (0, 0), &alice, now())).await;
    assert_eq!(status, 201, "the gateway is serving: {body}");
    assert!(gateway.deps.dev_api_key.get().is_none());
    assert!(!dir.path().join(DEV_ACCOUNT_KEY_FILE).exists() && !dir.path().join(DEV_API_KEY_FILE).exists());
    gateway.stop().await;

    // Embedded: a funded account and a working key, kept in private files.
    let mut gateway = Gateway::start(config.clone(), true).await;
    let secret = dev_secret(&gateway).await;
    let (dev_key, dev_account, kept) = dev_files(dir.path());
    assert_eq!(kept, secret);
    assert_eq!(gateway.balance(dev_account).await, DEV_ACCOUNT_FUNDS);
    let (status, page) = gateway.list(&format!("account_id={dev_account}"), &bearer(&secret)).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["keys"].as_array().map(Vec::len), Some(1));
    gateway.stop().await;

    // A restart reuses the account, the funds and the key.
    let mut gateway = Gateway::start(config.clone(), true).await;
    assert_eq!(dev_secret(&gateway).await, secret);
    assert_eq!(gateway.balance(dev_account).await, DEV_ACCOUNT_FUNDS, "funded once");
    // Revoked, the key is replaced at the next start (the account stays).
    let key_id = page["keys"][0]["id"].as_str().expect("id");
    assert_eq!(gateway.revoke(key_id, &dev_key, now()).await.0, 200);
    gateway.stop().await;
    let mut gateway = Gateway::start(config, true).await;
    let replaced = dev_secret(&gateway).await;
    assert_ne!(replaced, secret);
    assert_eq!(dev_files(dir.path()).2, replaced);
    assert_eq!(gateway.balance(dev_account).await, DEV_ACCOUNT_FUNDS);
    let (status, page) = gateway.list(&format!("account_id={dev_account}"), &bearer(&replaced)).await;
    assert_eq!((status, page["keys"].as_array().map(Vec::len)), (200, Some(2)), "{page}");
    gateway.stop().await;
}

/// The banner's `API key` line: the secret and the OpenAI base URL.
fn banner_key(stdout: &str) -> Option<(String, String)> {
    let line = stdout.lines().find(|line| line.trim_start().starts_with("API key"))?;
    let mut words = line.split_whitespace().skip(2);
    let secret = words.next()?.to_owned();
    let base_url = line.split("OpenAI base URL ").nth(1)?.trim_end_matches(')').to_owned();
    Some((secret, base_url))
}

#[tokio::test]
async fn dev_shows_its_api_key_and_the_openai_base_url_and_keeps_them_across_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().display().to_string();
    let mut shown = Vec::new();
    for _ in 0..2 {
        let mut platform = Platform::spawn::<&str>(&["--data-dir", &data_dir, "dev"], &[]);
        let rest = platform.wait_endpoint(ServiceKind::InferenceGateway, "rest");
        platform.wait_ready(rest).await;
        let (secret, base_url) = eventually("the banner shows the API key", async || {
            banner_key(&platform.stdout()).ok_or_else(|| platform.stdout())
        })
        .await;
        assert_eq!(base_url, format!("http://{rest}/v1"));
        assert_eq!(dev_files(dir.path()).2, secret);
        let (status, _) = crate::support::get(rest, "/healthz").await;
        assert_eq!(status, 200);
        assert!(platform.terminate().success());
        shown.push(secret);
    }
    assert_eq!(shown[0], shown[1], "a restart shows the same key");
}
