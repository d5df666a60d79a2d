//! The OpenAI-compatible service as an app developer meets it: `openledger dev` with the
//! packaged SmolLM2, accounts and API keys made through the REST edge, a priced adapter in the
//! registry, then the official `openai` Python client (scripts/openai-client.sh) for chat,
//! completions, streaming, `n`, logprobs, `/v1/models` and its error types. Afterwards the
//! books are checked to the base unit: every billed request's fee is the formula of its usage,
//! refused requests paid nothing, a stream the client hung up on paid for the tokens it produced
//! (not for max_tokens), and no hold is left pending.

use std::{path::Path, process::Command};

use ed25519_dalek::{Signer, SigningKey};
use openledger_core::ServiceKind;
use openledger_proto::ledger::v1::ledger_service_client::LedgerServiceClient;
use serde_json::{Value, json};

use crate::support::{Platform, eventually, fund_from_community};

/// Prices of the test adapter, base units per 1,000 tokens: whole base units per token, so a
/// fee reveals its token count exactly.
const ADAPTER_PRICE_IN: u128 = 2_000;
const ADAPTER_PRICE_OUT: u128 = 3_000;
const APP_FUNDS: u128 = 10_000_000_000_000_000_000;

pub(crate) fn signature(key: &SigningKey, message: &[u8]) -> Value {
    json!({
        "public_key": hex::encode(key.verifying_key().to_bytes()),
        "signature": hex::encode(key.sign(message).to_bytes()),
    })
}

pub(crate) async fn post(client: &reqwest::Client, url: String, body: &Value) -> (u16, Value) {
    let response = client.post(url).json(body).send().await.expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A ledger account owned by `owner` that cannot go below zero.
pub(crate) async fn account(client: &reqwest::Client, rest: &str, id: u128, owner: &SigningKey) {
    let body = json!({
        "id": id.to_string(),
        "public_key": hex::encode(owner.verifying_key().to_bytes()),
        "flags": ["debits_must_not_exceed_credits"],
    });
    let (status, answer) = post(client, format!("{rest}/v1/accounts"), &body).await;
    assert!(status == 201 || status == 200, "{status} {answer}");
}

/// An API key for `account`, signed by its owner.
pub(crate) async fn api_key(
    client: &reqwest::Client,
    rest: &str,
    account: u128,
    owner: &SigningKey,
    requests_per_minute: u64,
) -> String {
    let signed_at = openledger_signing::now_unix();
    let name = format!("e2e-{account}-{requests_per_minute}");
    let message =
        openledger_signing::messages::api_key_create_message(account, signed_at, requests_per_minute, 0, &name);
    let body = json!({
        "account_id": account.to_string(),
        "name": name,
        "limits": {"requests_per_minute": requests_per_minute},
        "signed_at": signed_at,
        "signature": signature(owner, &message),
    });
    let (status, answer) = post(client, format!("{rest}/v1/api_keys"), &body).await;
    assert_eq!(status, 201, "{answer}");
    answer["secret"].as_str().expect("secret").to_owned()
}

async fn balance(client: &reqwest::Client, rest: &str, id: u128) -> (u128, u128) {
    let account: Value =
        client.get(format!("{rest}/v1/accounts/{id}")).send().await.expect("get").json().await.expect("json");
    let amount = |field: &str| account[field].as_str().unwrap_or("0").parse::<u128>().expect("amount");
    (amount("credits_posted") - amount("debits_posted"), amount("debits_pending"))
}

/// A rank-8 q/v adapter for the base at `model`, imported over REST as a public, priced adapter
/// owned by `account`; returns its id.
async fn import_adapter(
    client: &reqwest::Client,
    rest: &str,
    model: &Path,
    account: u128,
    owner: &SigningKey,
) -> String {
    let id = "e2e-cat-stories";
    let config = openledger_ml::source::read_model_config(model).expect("base config");
    let dir = tempfile::tempdir().expect("temp dir");
    let targets = [openledger_ml::Target::Q, openledger_ml::Target::V];
    openledger_ml::testing::write_peft_adapter(dir.path(), &config, 8, &targets, 7, false).expect("adapter");
    let files = (
        std::fs::read(dir.path().join("adapter_config.json")).expect("config"),
        std::fs::read(dir.path().join("adapter_model.safetensors")).expect("weights"),
    );
    let (config_hash, weights_hash) =
        (openledger_core::ContentHash::of(&files.0), openledger_core::ContentHash::of(&files.1));
    let signed_at = openledger_signing::now_unix();
    let message = openledger_signing::adapter_import_message(&openledger_signing::AdapterImport {
        adapter_id: id,
        base_model: "",
        owner_account: account,
        files: openledger_signing::AdapterFiles::Upload { config: &config_hash, weights: &weights_hash },
        price_in: ADAPTER_PRICE_IN,
        price_out: ADAPTER_PRICE_OUT,
        visibility: "public",
        allowed_accounts: &[],
        signed_at,
        description: "e2e",
    });
    let signed = openledger_signing::sign(owner, &message);
    let form = reqwest::multipart::Form::new()
        .text("id", id)
        .text("owned_by", account.to_string())
        .text("price_in", ADAPTER_PRICE_IN.to_string())
        .text("price_out", ADAPTER_PRICE_OUT.to_string())
        .text("visibility", "public")
        .text("description", "e2e")
        .text("signed_at", signed_at.to_string())
        .text("public_key", signed.public_key_hex())
        .text("signature", signed.signature_hex())
        .part("adapter_config", reqwest::multipart::Part::bytes(files.0).file_name("adapter_config.json"))
        .part("adapter_model", reqwest::multipart::Part::bytes(files.1).file_name("adapter_model.safetensors"));
    let response = client.post(format!("{rest}/v1/adapters")).multipart(form).send().await.expect("import");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 201, "{body}");
    id.to_owned()
}

fn ceil_cost(tokens: u128, price: u128) -> u128 {
    (tokens * price).div_ceil(1000)
}

#[tokio::test]
async fn the_official_client_works_against_dev_and_every_fee_is_exact() {
    let model = openledger_ml::testing::smollm2_path();
    let data_dir = tempfile::tempdir().expect("temp dir");
    let args =
        ["--data-dir", &data_dir.path().display().to_string(), "dev", "--base-model", &model.display().to_string()];
    let mut platform = Platform::spawn::<&str>(&args, &[]);
    let rest_addr = platform.wait_endpoint(ServiceKind::InferenceGateway, "rest");
    platform.wait_ready(rest_addr).await;
    let rest = format!("http://{rest_addr}");
    let ledger_addr = platform.wait_endpoint(ServiceKind::Ledger, "grpc");
    let mut ledger = LedgerServiceClient::connect(format!("http://{ledger_addr}")).await.expect("ledger");
    let client = reqwest::Client::new();

    let (rich, poor, limited) =
        (SigningKey::from_bytes(&[41; 32]), SigningKey::from_bytes(&[42; 32]), SigningKey::from_bytes(&[43; 32]));
    let (rich_id, poor_id, limited_id) = (90_001u128, 90_002u128, 90_003u128);
    // The adapter's owner is its own account: settlements pay it the model owner's share, so
    // the app's balance shows only what the app paid.
    let (maker, maker_id) = (SigningKey::from_bytes(&[44; 32]), 90_004u128);
    for (id, owner) in [(rich_id, &rich), (poor_id, &poor), (limited_id, &limited), (maker_id, &maker)] {
        account(&client, &rest, id, owner).await;
    }
    fund_from_community(&mut ledger, 9_000_001, rich_id, APP_FUNDS).await;
    fund_from_community(&mut ledger, 9_000_003, limited_id, APP_FUNDS).await;
    let rich_key = api_key(&client, &rest, rich_id, &rich, 0).await;
    let poor_key = api_key(&client, &rest, poor_id, &poor, 0).await;
    let limited_key = api_key(&client, &rest, limited_id, &limited, 1).await;

    // The engine loads after the edge is up: wait until the base model is listed.
    let base_model: String = eventually("the base model is served", async || {
        let response =
            client.get(format!("{rest}/v1/models")).bearer_auth(&rich_key).send().await.map_err(|e| e.to_string())?;
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        body["data"][0]["id"].as_str().map(str::to_owned).ok_or_else(|| body.to_string())
    })
    .await;
    let adapter = import_adapter(&client, &rest, &model, maker_id, &maker).await;
    let platform_fee: u128 = {
        let parameters: Value = client
            .get(format!("{rest}/v1/governance/parameters"))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        parameters["platform_fee"].as_str().expect("platform_fee").parse().expect("amount")
    };
    let (before, _) = balance(&client, &rest, rich_id).await;

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/openai-client.sh");
    let envs = [
        ("OL_BASE_URL", format!("{rest}/v1")),
        ("OL_KEY", rich_key.clone()),
        ("OL_POOR_KEY", poor_key),
        ("OL_LIMITED_KEY", limited_key),
        ("OL_BASE_MODEL", base_model.clone()),
        ("OL_ADAPTER", adapter.clone()),
    ];
    let run = tokio::task::spawn_blocking(move || Command::new("bash").arg(script).envs(envs).output())
        .await
        .expect("join")
        .expect("run scripts/openai-client.sh");
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(
        run.status.success() && stdout.lines().any(|line| line == "ok"),
        "the official client failed ({}):\n{stdout}\n{}\ndev stderr:\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr),
        platform.stderr()
    );

    // Every billed request's fee is the formula of its usage at its model's prices.
    let lines: Vec<Value> = stdout.lines().filter_map(|line| serde_json::from_str(line).ok()).collect();
    let mut rich_paid = 0u128;
    for line in lines.iter().filter(|line| line["fee"].is_string()) {
        let (tokens_in, tokens_out) = (
            line["usage"]["prompt_tokens"].as_u64().expect("prompt_tokens") as u128,
            line["usage"]["completion_tokens"].as_u64().expect("completion_tokens") as u128,
        );
        let (price_in, price_out) =
            if line["model"] == adapter.as_str() { (ADAPTER_PRICE_IN, ADAPTER_PRICE_OUT) } else { (0, 0) };
        let fee: u128 = line["fee"].as_str().expect("fee").parse().expect("amount");
        assert_eq!(fee, ceil_cost(tokens_in, price_in) + ceil_cost(tokens_out, price_out) + platform_fee, "{line}");
        if line["name"] != "limited-first" {
            rich_paid += fee;
        }
    }
    assert!(lines.iter().filter(|line| line["fee"].is_string()).count() >= 15, "{stdout}");

    // The stream the client hung up on: charged for what it produced, and no hold is left.
    let disconnected = lines.iter().find(|line| line["name"] == "disconnected").expect("disconnected line");
    assert!(disconnected["inference_id"].is_string(), "{disconnected}");
    let (after, pending) = eventually("the disconnected stream is captured", async || {
        let (after, pending) = balance(&client, &rest, rich_id).await;
        if pending == 0 && after < before - rich_paid {
            Ok((after, pending))
        } else {
            Err(format!("{after} pending {pending}"))
        }
    })
    .await;
    assert_eq!(pending, 0);
    let hung_up = before - rich_paid - after;
    let prompt_tokens = disconnected["prompt_tokens"].as_u64().expect("prompt_tokens") as u128;
    let output_cost = hung_up - platform_fee - ceil_cost(prompt_tokens, ADAPTER_PRICE_IN);
    assert_eq!(output_cost % 3, 0, "whole tokens at 3 base units each: {output_cost}");
    let produced = output_cost / 3;
    assert!(
        (3..400).contains(&produced),
        "the hung-up stream paid for {produced} tokens: those it produced, not max_tokens"
    );
    let (poor_balance, poor_pending) = balance(&client, &rest, poor_id).await;
    assert_eq!((poor_balance, poor_pending), (0, 0), "a refused request pays nothing and holds nothing");

    let exit = platform.terminate();
    assert_eq!(exit.code(), Some(0), "stderr:\n{}", platform.stderr());
}
