//! Fine-tuning as a model builder meets it: `openledger dev` with the packaged SmolLM2, a
//! public Datanet with a sealed version, a grant its owner approved, and the official `openai`
//! Python client (scripts/openai-client.sh finetune_test.py) creating, listing, following and
//! cancelling jobs through `/v1/fine_tuning/jobs`, then calling the fine-tuned model.

use std::{path::Path, process::Command};

use ed25519_dalek::SigningKey;
use openledger_core::{ContentHash, ServiceKind};
use openledger_datanet_ingest::signing;
use openledger_proto::{
    common::v1::Hash,
    datanet::v1::{self as pb, datanet_service_client::DatanetServiceClient},
    ledger::v1::ledger_service_client::LedgerServiceClient,
};
use serde_json::Value;

use crate::{
    openai::{account, api_key},
    support::{Platform, eventually, fund_from_community},
};

const RECORDS: &str = "{\"text\": \"Dehydration in older adults often presents with confusion rather than thirst. Carers should offer fluids regularly.\"}\n\
{\"text\": \"Hand washing with soap for at least twenty seconds removes most germs that cause diarrhoea.\"}\n\
{\"text\": \"A fever in a baby younger than three months needs prompt medical assessment.\"}\n\
{\"text\": \"Sunscreen should be applied fifteen minutes before going outside and again every two hours.\"}\n";

#[tokio::test]
async fn the_official_client_fine_tunes_on_a_datanet_and_calls_the_result() {
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
    let datanet_addr = platform.wait_endpoint(ServiceKind::DatanetIngest, "grpc");
    let mut datanets = DatanetServiceClient::connect(format!("http://{datanet_addr}")).await.expect("datanet");
    let client = reqwest::Client::new();

    // A public free-text Datanet of Dana's, with one contribution and a sealed version.
    let (dana, builder) = (SigningKey::from_bytes(&[51; 32]), SigningKey::from_bytes(&[52; 32]));
    let builder_id = 95_002u128;
    account(&client, &rest, builder_id, &builder).await;
    fund_from_community(&mut ledger, 9_500_002, builder_id, 10_000_000_000_000_000_000).await;
    let definition = pb::Datanet {
        slug: "care-notes".into(),
        name: "Care notes".into(),
        licence: "CC-BY-4.0".into(),
        schema: pb::RecordSchema::FreeText as i32,
        visibility: pb::Visibility::Public as i32,
        policy: Some(pb::ContributionPolicy::default()),
        ..Default::default()
    };
    let signature = signing::sign(&dana, &signing::create_message(&definition));
    let request = pb::CreateDatanetRequest { datanet: Some(definition), signature: Some(signature) };
    let datanet = datanets.create_datanet(request).await.expect("create").into_inner();
    let hash = ContentHash::of(RECORDS.as_bytes());
    let header = pb::ContributeHeader {
        datanet_id: datanet.id.clone(),
        file_name: "notes.jsonl".into(),
        size_bytes: RECORDS.len() as u64,
        file_hash: Some(Hash { value: hash.as_bytes().to_vec() }),
        signature: Some(signing::sign(&dana, &signing::contribution_message(&datanet.id, "notes.jsonl", &hash, None))),
        ..Default::default()
    };
    let messages = vec![
        pb::ContributeRequest { part: Some(pb::contribute_request::Part::Header(header)) },
        pb::ContributeRequest { part: Some(pb::contribute_request::Part::Chunk(RECORDS.as_bytes().to_vec())) },
    ];
    let contribution = datanets.contribute(futures::stream::iter(messages)).await.expect("contribute").into_inner();
    assert_eq!(contribution.records.len(), 4, "{contribution:?}");
    let now = signing::now_unix();
    let publish = pb::PublishSnapshotRequest {
        datanet_id: datanet.id.clone(),
        signature: Some(signing::sign(&dana, &signing::publish_message(&datanet.id, now))),
        signed_at: now,
    };
    let version = datanets.publish_snapshot(publish).await.expect("publish").into_inner();
    let training_file = format!("datanet:care-notes@{}", version.version);

    // The builder's key: refused before the grant, then the owner approves it.
    let key = api_key(&client, &rest, builder_id, &builder, 0).await;
    let base_model: String = eventually("the base model is served", async || {
        let response =
            client.get(format!("{rest}/v1/models")).bearer_auth(&key).send().await.map_err(|e| e.to_string())?;
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        body["data"][0]["id"].as_str().map(str::to_owned).ok_or_else(|| body.to_string())
    })
    .await;
    let job = serde_json::json!({"model": base_model, "training_file": training_file});
    let refused =
        client.post(format!("{rest}/v1/fine_tuning/jobs")).bearer_auth(&key).json(&job).send().await.expect("post");
    assert_eq!(refused.status().as_u16(), 403, "{}", refused.text().await.unwrap_or_default());
    let purpose = "fine-tune a care assistant";
    let grant = datanets
        .request_access(pb::RequestAccessRequest {
            datanet_id: datanet.id.clone(),
            purpose: purpose.into(),
            signature: Some(signing::sign(&builder, &signing::access_request_message(&datanet.id, purpose))),
        })
        .await
        .expect("request access")
        .into_inner();
    let now = signing::now_unix();
    let decide = pb::DecideAccessRequest {
        datanet_id: datanet.id.clone(),
        grant_id: grant.id.clone(),
        approve: true,
        signed_at: now,
        signature: Some(signing::sign(&dana, &signing::access_decision_message(&datanet.id, &grant.id, true, now))),
    };
    datanets.decide_access(decide).await.expect("approve");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/openai-client.sh");
    let envs = [
        ("OL_BASE_URL", format!("{rest}/v1")),
        ("OL_KEY", key),
        ("OL_BASE_MODEL", base_model.clone()),
        ("OL_TRAINING_FILE", training_file),
    ];
    let run = tokio::task::spawn_blocking(move || {
        Command::new("bash").arg(script).arg("finetune_test.py").envs(envs).output()
    })
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
    platform.terminate();
}
