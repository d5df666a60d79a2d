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

/// Records of a later version that the first jobs are evaluated on.
const HELD_OUT: &str = "{\"text\": \"Older adults should be encouraged to drink water with every meal and between meals.\"}\n\
{\"text\": \"Soap and running water remove germs better than a quick rinse.\"}\n";

/// What a model builder has once a Datanet version is sealed and its grant approved.
pub(crate) struct Builder {
    pub(crate) rest: String,
    pub(crate) client: reqwest::Client,
    pub(crate) key: String,
    pub(crate) signer: SigningKey,
    pub(crate) base_model: String,
    pub(crate) training_file: String,
    /// datanet-ingest's gRPC URL and the Datanet's id (Dana's key is [`DANA`]).
    pub(crate) datanet_url: String,
    pub(crate) datanet_id: String,
    /// The contributions of the sealed version (Dana's, then the others in order), and the
    /// account each was bonded from (none without a bond).
    pub(crate) contributions: Vec<(String, Option<u128>)>,
}

/// The Datanet owner's key, and her ledger account (when contributions are bonded).
const DANA: [u8; 32] = [51; 32];
const DANA_ACCOUNT: u128 = 95_051;
/// What each bonding contributor's account is funded with: 10 OPEN.
pub(crate) const CONTRIBUTOR_FUNDS: u128 = 10 * 10u128.pow(18);

/// `openledger dev` with the packaged SmolLM2 in `data_dir`, with `env`.
pub(crate) fn dev(data_dir: &Path, env: &[(&str, String)]) -> Platform {
    let model = openledger_ml::testing::smollm2_path();
    let args = ["--data-dir", &data_dir.display().to_string(), "dev", "--base-model", &model.display().to_string()];
    Platform::spawn(&args, env)
}

/// Dana's public Datanet with one sealed version; the builder's account, API key and grant
/// (a job before the grant is refused with 403).
async fn builder_with_a_grant(platform: &mut Platform) -> Builder {
    builder_with_a_grant_on(platform, &[], 0).await
}

/// The same, with more contributions (each by its key, JSONL records) in the version, and a
/// stake `bond` per contribution (0: none) that each contributor posts from an account of
/// their own, funded with [`CONTRIBUTOR_FUNDS`].
pub(crate) async fn builder_with_a_grant_on(
    platform: &mut Platform,
    more: &[(&SigningKey, &str)],
    bond: u128,
) -> Builder {
    let rest_addr = platform.wait_endpoint(ServiceKind::InferenceGateway, "rest");
    platform.wait_ready(rest_addr).await;
    let rest = format!("http://{rest_addr}");
    let ledger_addr = platform.wait_endpoint(ServiceKind::Ledger, "grpc");
    let mut ledger = LedgerServiceClient::connect(format!("http://{ledger_addr}")).await.expect("ledger");
    let datanet_addr = platform.wait_endpoint(ServiceKind::DatanetIngest, "grpc");
    let mut datanets = DatanetServiceClient::connect(format!("http://{datanet_addr}")).await.expect("datanet");
    let client = reqwest::Client::new();

    // A public free-text Datanet of Dana's, with one contribution and a sealed version.
    let (dana, builder) = (SigningKey::from_bytes(&DANA), SigningKey::from_bytes(&[52; 32]));
    let builder_id = 95_002u128;
    account(&client, &rest, builder_id, &builder).await;
    fund_from_community(&mut ledger, 9_500_002, builder_id, 10_000_000_000_000_000_000).await;
    let definition = pb::Datanet {
        slug: "care-notes".into(),
        name: "Care notes".into(),
        licence: "CC-BY-4.0".into(),
        schema: pb::RecordSchema::FreeText as i32,
        visibility: pb::Visibility::Public as i32,
        policy: Some(pb::ContributionPolicy { stake_per_contribution: Some(bond.into()), ..Default::default() }),
        ..Default::default()
    };
    let signature = signing::sign(&dana, &signing::create_message(&definition));
    let request = pb::CreateDatanetRequest { datanet: Some(definition), signature: Some(signature) };
    let datanet = datanets.create_datanet(request).await.expect("create").into_inner();
    // With a bond, every contributor posts it from an account of their own.
    let contributors: Vec<(&SigningKey, Option<u128>)> = std::iter::once(&dana)
        .chain(more.iter().map(|(key, _)| *key))
        .enumerate()
        .map(|(index, key)| (key, (bond > 0).then_some(DANA_ACCOUNT + index as u128)))
        .collect();
    for (index, (key, id)) in contributors.iter().enumerate() {
        if let Some(id) = id {
            account(&client, &rest, *id, key).await;
            fund_from_community(&mut ledger, 9_505_100 + index as u128, *id, CONTRIBUTOR_FUNDS).await;
        }
    }
    let dana_account = contributors[0].1;
    let contribution = contribute(&mut datanets, &datanet.id, &dana, dana_account, "notes.jsonl", RECORDS).await;
    assert_eq!(contribution.records.len(), 4, "{contribution:?}");
    let mut contributions = vec![(contribution.id, dana_account)];
    for (index, (contributor, records)) in more.iter().enumerate() {
        let account = contributors[index + 1].1;
        let name = format!("more-{index}.jsonl");
        let more = contribute(&mut datanets, &datanet.id, contributor, account, &name, records).await;
        assert!(!more.records.is_empty(), "{more:?}");
        contributions.push((more.id, account));
    }
    let version = publish(&mut datanets, &datanet.id, &dana).await;
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
    let datanet_url = format!("http://{datanet_addr}");
    Builder {
        rest,
        client,
        key,
        signer: builder,
        base_model,
        training_file,
        datanet_url,
        datanet_id: datanet.id,
        contributions,
    }
}

#[tokio::test]
async fn the_official_client_fine_tunes_on_a_datanet_and_calls_the_result() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut platform = dev(data_dir.path(), &[]);
    let Builder { rest, key, base_model, training_file, datanet_url, datanet_id, .. } =
        builder_with_a_grant(&mut platform).await;
    // A second sealed version, the held-out set of the client's first job (`validation_file`).
    let mut datanets = DatanetServiceClient::connect(datanet_url).await.expect("datanet");
    let dana = SigningKey::from_bytes(&DANA);
    contribute(&mut datanets, &datanet_id, &dana, None, "held-out.jsonl", HELD_OUT).await;
    let held_out = publish(&mut datanets, &datanet_id, &dana).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/openai-client.sh");
    let envs = [
        ("OL_BASE_URL", format!("{rest}/v1")),
        ("OL_KEY", key),
        ("OL_BASE_MODEL", base_model.clone()),
        ("OL_TRAINING_FILE", training_file),
        ("OL_VALIDATION_FILE", format!("datanet:care-notes@{}", held_out.version)),
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

/// `records` (JSONL) contributed to `datanet_id` by `contributor` as `file_name`, bonded from
/// `account` if given.
async fn contribute(
    datanets: &mut DatanetServiceClient<tonic::transport::Channel>,
    datanet_id: &str,
    contributor: &SigningKey,
    account: Option<u128>,
    file_name: &str,
    records: &str,
) -> pb::Contribution {
    let hash = ContentHash::of(records.as_bytes());
    let message = signing::contribution_message(datanet_id, file_name, &hash, account);
    let header = pb::ContributeHeader {
        datanet_id: datanet_id.to_owned(),
        file_name: file_name.to_owned(),
        size_bytes: records.len() as u64,
        file_hash: Some(Hash { value: hash.as_bytes().to_vec() }),
        signature: Some(signing::sign(contributor, &message)),
        contributor_account_id: account.map(Into::into),
        ..Default::default()
    };
    let messages = vec![
        pb::ContributeRequest { part: Some(pb::contribute_request::Part::Header(header)) },
        pb::ContributeRequest { part: Some(pb::contribute_request::Part::Chunk(records.as_bytes().to_vec())) },
    ];
    datanets.contribute(futures::stream::iter(messages)).await.expect("contribute").into_inner()
}

/// Seals the Datanet's next version, signed by its owner.
async fn publish(
    datanets: &mut DatanetServiceClient<tonic::transport::Channel>,
    datanet_id: &str,
    owner: &SigningKey,
) -> pb::Snapshot {
    let now = signing::now_unix();
    let publish = pb::PublishSnapshotRequest {
        datanet_id: datanet_id.to_owned(),
        signature: Some(signing::sign(owner, &signing::publish_message(datanet_id, now))),
        signed_at: now,
    };
    datanets.publish_snapshot(publish).await.expect("publish").into_inner()
}

/// Eve's two records, what the attribution tests and the lag bench ask adapters to quote.
pub(crate) const EVE_RECORDS: &str = "{\"text\": \"Pressure ulcers are prevented by changing position every two hours and keeping skin clean and dry.\"}\n\
{\"text\": \"Falls at home are less likely with good lighting, secured rugs and grab rails beside the bath.\"}\n";

impl Builder {
    /// A rank-4 adapter trained for two steps on the version (seconds on SmolLM2): its `ft:` name.
    pub(crate) async fn small_adapter(&self) -> String {
        let job = serde_json::json!({
            "model": self.base_model,
            "training_file": self.training_file,
            "seed": 5,
            "hyperparameters": {"n_epochs": 1, "batch_size": 1},
            "lora": {"rank": 4, "max_steps": 2, "checkpoint_every": 1, "max_seq_tokens": 96},
        });
        let job = self.create(&job).await;
        let job = self.until(job["id"].as_str().expect("id"), |job| job["status"] == "succeeded").await;
        job["fine_tuned_model"].as_str().expect("fine_tuned_model").to_owned()
    }

    pub(crate) async fn create(&self, body: &Value) -> Value {
        let response = self
            .client
            .post(format!("{}/v1/fine_tuning/jobs", self.rest))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await
            .expect("post");
        assert_eq!(response.status().as_u16(), 200);
        response.json().await.expect("json")
    }

    /// The job once `done` holds (ten minutes at most).
    pub(crate) async fn until(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
        loop {
            let response =
                self.client.get(format!("{}/v1/fine_tuning/jobs/{id}", self.rest)).bearer_auth(&self.key).send().await;
            if let Ok(response) = response {
                let job: Value = response.json().await.expect("json");
                assert!(job["status"] != "failed" && job["status"] != "cancelled", "job {id} ended: {job}");
                if done(&job) {
                    return job;
                }
                assert!(std::time::Instant::now() < deadline, "job {id}: {job}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// BLAKE3 of the adapter's weights, as the registry lists them to its owner.
    async fn weights_hash(&self, adapter: &str) -> String {
        let mut request = self.client.get(format!("{}/v1/adapters/{adapter}", self.rest));
        for (name, value) in openledger_signing::caller_headers(&self.signer, openledger_signing::now_unix()) {
            request = request.header(name, value);
        }
        let adapter: Value = request.send().await.expect("get").json().await.expect("json");
        adapter["files"][1]["blake3"].as_str().unwrap_or_else(|| panic!("{adapter}")).to_owned()
    }
}

#[tokio::test]
async fn a_job_killed_mid_training_continues_after_a_restart_and_yields_the_same_adapter_on_postgres_and_nats() {
    let postgres = openledger_testkit::Postgres::start();
    let nats = openledger_testkit::Nats::start();
    let data_dir = tempfile::tempdir().expect("temp dir");
    let env = [("DATABASE_URL", postgres.create_database("finetune")), ("NATS_URL", nats.url())];
    let mut platform = dev(data_dir.path(), &env);
    let builder = builder_with_a_grant(&mut platform).await;
    // Nine steps (three training records, three epochs), a checkpoint every two.
    let body = serde_json::json!({
        "model": builder.base_model,
        "training_file": builder.training_file,
        "seed": 11,
        "hyperparameters": {"n_epochs": 3, "batch_size": 1},
        "lora": {"rank": 4, "checkpoint_every": 2, "eval_every": 100, "max_seq_tokens": 96},
    });
    let straight = builder.create(&body).await;
    let straight = builder.until(straight["id"].as_str().expect("id"), |job| job["status"] == "succeeded").await;
    let killed = builder.create(&body).await;
    let id = killed["id"].as_str().expect("id").to_owned();
    let at = builder.until(&id, |job| job["step"].as_u64() >= Some(3)).await;
    platform.kill_hard();
    assert!(at["step"].as_u64() < at["total_steps"].as_u64(), "killed before the end: {at}");

    let mut platform = dev(data_dir.path(), &env);
    let rest_addr = platform.wait_endpoint(ServiceKind::InferenceGateway, "rest");
    platform.wait_ready(rest_addr).await;
    let builder = Builder { rest: format!("http://{rest_addr}"), ..builder };
    let done = builder.until(&id, |job| job["status"] == "succeeded").await;
    assert_eq!(done["trained_tokens"], straight["trained_tokens"], "{done}");
    let events: Value = builder
        .client
        .get(format!("{}/v1/fine_tuning/jobs/{id}/events?limit=1000", builder.rest))
        .bearer_auth(&builder.key)
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("json");
    let messages: Vec<&str> =
        events["data"].as_array().expect("events").iter().filter_map(|e| e["message"].as_str()).collect();
    assert!(messages.iter().any(|m| m.contains("continuing after a restart")), "{messages:?}");
    let (a, b) =
        (straight["fine_tuned_model"].as_str().expect("name"), done["fine_tuned_model"].as_str().expect("name"));
    assert_ne!(a, b);
    assert_eq!(
        builder.weights_hash(a).await,
        builder.weights_hash(b).await,
        "the resumed adapter equals the uninterrupted one"
    );
    platform.terminate();
}
