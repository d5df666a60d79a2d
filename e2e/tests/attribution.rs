//! The value chain end to end, as `openledger dev` runs it: two contributors' records in a
//! sealed Datanet version (its span index built on seal, unasked), an adapter fine-tuned on
//! it, paid chat completions through the OpenAI API, each attributed once with a receipt in a
//! batch whose root the ledger's journal records, each settled from escrow exactly as the
//! formula says to the base unit, the contributors' balances what their quotes earned, and
//! `openledger attribution verify` checking one of them from outside. On SQLite with the
//! in-process bus (contributions unbonded: paid to earnings accounts), and on PostgreSQL with
//! NATS JetStream (each contribution bonded: paid to its bond account, the bond released or
//! slashed when the adapter's quality assessment arrives).

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use openledger_core::{ServiceKind, fee::earnings_account_id};
use openledger_ledger::operations::{ContributorWeight, Economics, settlement_transfers};
use openledger_proto::{
    attribution::v1::{GetAttributionRequest, attribution_service_client::AttributionServiceClient},
    datanet::v1::{self as dpb, datanet_service_client::DatanetServiceClient},
    ledger::v1::{self as lpb, ledger_service_client::LedgerServiceClient},
    u128_of,
};
use serde_json::{Value, json};

use crate::{
    finetune::{CONTRIBUTOR_FUNDS, EVE_RECORDS, builder_with_a_grant_on, dev},
    support::BINARY,
};

/// Eve's records (`finetune::EVE_RECORDS`), the sentences the completions are asked to repeat.
const QUOTED: [&str; 2] = [
    "Pressure ulcers are prevented by changing position every two hours and keeping skin clean and dry.",
    "Falls at home are less likely with good lighting, secured rugs and grab rails beside the bath.",
];

/// With a `bond` per contribution (0: none), each contributor is paid to the account it bonded
/// from, and the bonds are released or slashed once the adapter's quality assessment (with the
/// ledger's governed slashing threshold) reaches datanet-ingest; without, contributors are paid
/// to their earnings accounts. With a `governed_threshold` (on a network whose governance
/// takes seconds), a staker first governs the slashing threshold to it, and the bonds are
/// decided against it.
async fn paid_inferences_reach_the_contributors_they_quote(
    env: &[(&str, String)],
    bond: u128,
    governed_threshold: Option<i32>,
) {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut platform = dev(data_dir.path(), env);
    let eve = SigningKey::from_bytes(&[53; 32]);
    let builder = builder_with_a_grant_on(&mut platform, &[(&eve, EVE_RECORDS)], bond).await;
    if let Some(threshold) = governed_threshold {
        let rest = platform.wait_endpoint(ServiceKind::InferenceGateway, "rest");
        let ledger_addr = platform.wait_endpoint(ServiceKind::Ledger, "grpc");
        let mut ledger = LedgerServiceClient::connect(format!("http://{ledger_addr}")).await.expect("ledger");
        let staker = SigningKey::from_bytes(&[54; 32]);
        let governed = crate::support::govern(rest, &mut ledger, &staker, 92_000, |economics| {
            economics.slashing_threshold_milli = threshold;
        })
        .await;
        assert_eq!(governed.slashing_threshold_milli, threshold);
    }
    let eve_paid_to =
        builder.contributions[1].1.unwrap_or_else(|| earnings_account_id(&eve.verifying_key().to_bytes()));
    let model = builder.small_adapter().await;

    // Paid completions asking the adapter to repeat Eve's records.
    let mut inferences = Vec::new();
    for sentence in QUOTED {
        let body = json!({
            "model": model,
            "messages": [{"role": "user", "content": format!("Repeat this sentence exactly, word for word: {sentence}")}],
            "temperature": 0,
            "max_tokens": 48,
        });
        let response = builder
            .client
            .post(format!("{}/v1/chat/completions", builder.rest))
            .bearer_auth(&builder.key)
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(response.status().as_u16(), 200);
        let answer: Value = response.json().await.expect("json");
        let id = answer["attribution"]["inference_id"].as_str().expect("inference id").to_owned();
        inferences.push((id, answer["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned()));
    }

    let worker_addr = platform.wait_endpoint(ServiceKind::AttributionWorker, "grpc");
    let mut worker = AttributionServiceClient::connect(format!("http://{worker_addr}")).await.expect("worker");
    let ledger_addr = platform.wait_endpoint(ServiceKind::Ledger, "grpc");
    let mut ledger = LedgerServiceClient::connect(format!("http://{ledger_addr}")).await.expect("ledger");
    let parameters =
        ledger.get_parameters(lpb::GetParametersRequest::default()).await.expect("parameters").into_inner();
    let economics = Economics::from_proto(&parameters);
    if let Some(threshold) = governed_threshold {
        assert_eq!(economics.slashing_threshold_milli, threshold, "the governed threshold is in force");
    }

    let mut earned: BTreeMap<u128, u128> = BTreeMap::new();
    let mut quoted = 0;
    for (id, content) in &inferences {
        // Attributed, batched and its batch root recorded in the journal. Both steps run
        // behind the bus (a delivery that finds its index not ready waits `RETRY_DELAY` and
        // tries again): on two cores shared with the other tests they take more than ten
        // seconds now and then, so they get the long deadline.
        let attribution = eventually_long("the inference is attributed and its receipt recorded", async || {
            let request = GetAttributionRequest { inference_id: id.clone(), ..Default::default() };
            let found = worker.get_attribution(request).await.map_err(|status| status.message().to_owned())?;
            let found = found.into_inner();
            (found.journal_sequence > 0).then_some(found).ok_or_else(|| "not recorded yet".to_owned())
        })
        .await;
        let receipt: Value = serde_json::from_slice(&attribution.receipt).expect("receipt");
        assert_eq!(receipt["snapshot_id"], attribution.snapshot_id.as_str());
        if !attribution.weights.is_empty() {
            quoted += 1;
            let total: i64 = attribution.weights.iter().map(|w| w.weight_ppb).sum();
            assert_eq!(total, 1_000_000_000, "{attribution:?}");
        }
        // Settled exactly as the formula says, to the base unit.
        let settled = eventually_long("the inference is settled", async || {
            let request = lpb::GetSettlementRequest { inference_id: id.clone() };
            let found = ledger.get_settlement(request).await.map_err(|status| status.message().to_owned())?;
            let found = found.into_inner();
            (!found.transfers.is_empty()).then_some(found).ok_or_else(|| "not settled yet".to_owned())
        })
        .await;
        let fee = settled.capture.as_ref().map(|t| u128_of(t.amount.as_ref())).expect("captured");
        let weights: Vec<ContributorWeight> = attribution
            .weights
            .iter()
            .map(|w| ContributorWeight {
                account_id: u128_of(w.contributor_account_id.as_ref()),
                weight_ppb: w.weight_ppb,
            })
            .collect();
        let owner = u128_of(attribution.model_owner_account_id.as_ref());
        let expected = settlement_transfers(id, fee, owner, &weights, &economics);
        let paid: Vec<(u128, u128, u32)> = settled
            .transfers
            .iter()
            .map(|t| (u128_of(t.credit_account_id.as_ref()), u128_of(t.amount.as_ref()), t.code))
            .collect();
        let formula: Vec<(u128, u128, u32)> =
            expected.iter().map(|t| (t.credit_account_id, t.amount, u32::from(t.code))).collect();
        assert_eq!(paid, formula, "inference {id} ({content:?}) settled as the formula says");
        for (weight, transfer) in weights.iter().zip(expected.iter().skip(3)) {
            *earned.entry(weight.account_id).or_default() += transfer.amount;
        }
    }
    assert!(quoted > 0, "no completion quoted Eve's records: {inferences:?}");
    assert!(earned.contains_key(&eve_paid_to), "{earned:?}");

    // Every contributor's balance is what the settlements paid them.
    let accounts = ledger
        .lookup_accounts(lpb::LookupAccountsRequest { ids: earned.keys().map(|id| (*id).into()).collect() })
        .await
        .expect("lookup")
        .into_inner()
        .accounts;
    let funded: Vec<u128> = builder.contributions.iter().filter_map(|(_, account)| *account).collect();
    for account in accounts {
        let id = u128_of(account.id.as_ref());
        let funds = if funded.contains(&id) { CONTRIBUTOR_FUNDS } else { 0 };
        assert_eq!(u128_of(account.credits_posted.as_ref()), earned[&id] + funds, "account {id}");
    }

    // The Datanet's leaderboard shows what Eve earned.
    let datanet_addr = platform.wait_endpoint(ServiceKind::DatanetIngest, "grpc");
    let mut datanets = DatanetServiceClient::connect(format!("http://{datanet_addr}")).await.expect("datanets");
    let datanet = datanets.get_datanet(dpb::GetDatanetRequest { id_or_slug: "care-notes".into() }).await.expect("get");
    let board = datanets
        .get_leaderboard(dpb::GetLeaderboardRequest { datanet_id: datanet.into_inner().id, limit: 10 })
        .await
        .expect("leaderboard")
        .into_inner();
    let eve_key = eve.verifying_key().to_bytes().to_vec();
    let eve_entry = board.entries.iter().find(|e| e.contributor == eve_key).expect("eve on the leaderboard");
    assert_eq!(u128_of(eve_entry.earnings.as_ref()), earned[&eve_paid_to], "the leaderboard shows Eve's earnings");

    // The bonds were held until the adapter's quality was assessed (its gradient index built
    // unasked; the worker reads the slashing threshold from the ledger's parameters before it
    // assesses, the governed one here): then released, or slashed with their evidence.
    let mut slashed = 0;
    for (contribution_id, account) in &builder.contributions {
        let Some(account) = account else { continue };
        let decided = eventually_long("the bond is decided by the quality assessment", async || {
            let request = dpb::GetContributionRequest {
                datanet_id: builder.datanet_id.clone(),
                contribution_id: contribution_id.clone(),
            };
            let found = datanets.get_contribution(request).await.map_err(|status| status.message().to_owned())?;
            let found = found.into_inner();
            ["released", "slashed"]
                .contains(&found.bond_state.as_str())
                .then_some(found.clone())
                .ok_or_else(|| format!("bond {}", found.bond_state))
        })
        .await;
        let held = ledger
            .lookup_accounts(lpb::LookupAccountsRequest { ids: vec![(*account).into()] })
            .await
            .expect("lookup")
            .into_inner()
            .accounts
            .pop()
            .map(|a| u128_of(a.debits_pending.as_ref()));
        assert_eq!(held, Some(0), "no bond of account {account} is held any more");
        match decided.slash {
            Some(slash) => {
                assert_eq!(decided.bond_state, "slashed");
                assert_eq!(slash.threshold, economics.slashing_threshold(), "the governed threshold: {slash:?}");
                assert!(slash.score < slash.threshold, "{slash:?}");
                slashed += 1;
            }
            None => assert_eq!(decided.bond_state, "released", "{decided:?}"),
        }
    }
    // The worker assessed the version against the governed threshold: its event says so,
    // whether or not a contribution fell below it.
    if let (Some(_), Some((_, nats_url))) = (governed_threshold, env.iter().find(|(key, _)| *key == "NATS_URL")) {
        use openledger_bus::{ConsumerConfig, EventBus, JetStreamBus};
        use prost::Message;
        let bus = JetStreamBus::connect(nats_url, Default::default()).await.expect("bus");
        let subject = openledger_datanet_ingest::datanets::SUBJECT_QUALITY_ASSESSED;
        let mut consumer = bus.consumer(ConsumerConfig::new("e2e-quality-check", subject)).await.expect("consumer");
        let delivery = tokio::time::timeout(std::time::Duration::from_secs(10), consumer.next())
            .await
            .expect("a quality assessment on the bus")
            .expect("delivery");
        let assessed = openledger_proto::events::v1::QualityAssessed::decode(delivery.payload).expect("decode");
        assert_eq!(assessed.threshold, economics.slashing_threshold(), "{assessed:?}");
        println!("assessed against the governed threshold {}; {slashed} bond(s) slashed", assessed.threshold);
    }

    // Anyone can check one of them from outside.
    let (first, _) = inferences.iter().find(|(id, _)| !id.is_empty()).expect("an inference");
    let output = std::process::Command::new(BINARY)
        .args(["--data-dir", &data_dir.path().display().to_string(), "attribution", "verify", first])
        .args(["--attribution-url", &format!("http://{worker_addr}"), "--ledger-url", &format!("http://{ledger_addr}")])
        .output()
        .expect("run verify");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("ok    books"),
        "verify failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // And the books against every stored attribution.
    let report = audit(&format!("http://{worker_addr}"), &format!("http://{ledger_addr}"));
    assert!(report.contains(&format!("settled as attributed:     {}", inferences.len())), "{report}");
    platform.terminate();
}

#[tokio::test]
async fn paid_inferences_reach_the_contributors_they_quote_on_sqlite() {
    paid_inferences_reach_the_contributors_they_quote(&[], 0, None).await;
}

#[tokio::test]
async fn paid_inferences_reach_the_contributors_they_quote_on_postgres_and_nats() {
    let postgres = openledger_testkit::Postgres::start();
    let nats = openledger_testkit::Nats::start();
    let mut env = vec![("DATABASE_URL", postgres.create_database("attribution")), ("NATS_URL", nats.url())];
    // Governed to the typical record (0, the strictest threshold governance allows; the
    // default is one median deviation below it): of two contributions, the one scoring below
    // the median is slashed.
    env.extend(crate::support::fast_governance());
    paid_inferences_reach_the_contributors_they_quote(&env, 10u128.pow(18), Some(0)).await;
}

/// Paid inferences the fault test runs, and how many run at once.
const FAULT_INFERENCES: usize = 1000;
const FAULT_CLIENTS: usize = 8;
/// How long the ledger stays down after its SIGKILL: longer than the gateway's capture retries.
const LEDGER_OUTAGE: std::time::Duration = std::time::Duration::from_secs(6);
/// Every this many requests asks for a long quote (so contributors are paid too).
const QUOTE_EVERY: usize = 10;

/// The services as separate processes on one PostgreSQL, NATS and data directory, each on a
/// gRPC port fixed for the test so a restarted one is found where it was.
struct Cluster {
    data_dir: std::path::PathBuf,
    env: Vec<(&'static str, String)>,
    grpc: BTreeMap<ServiceKind, u16>,
    http: u16,
    processes: BTreeMap<ServiceKind, crate::support::Platform>,
}

impl Cluster {
    fn url(&self, service: ServiceKind) -> String {
        format!("http://127.0.0.1:{}", self.grpc[&service])
    }

    fn start(&mut self, service: ServiceKind) {
        let port = self.grpc[&service];
        let base = (port - service.port_offset()).to_string();
        let data_dir = self.data_dir.display().to_string();
        let (ledger, datanet, factory, worker) = (
            self.url(ServiceKind::Ledger),
            self.url(ServiceKind::DatanetIngest),
            self.url(ServiceKind::ModelFactory),
            self.url(ServiceKind::AttributionWorker),
        );
        let http = self.http.to_string();
        let args = [
            "--data-dir",
            &data_dir,
            "--grpc-base-port",
            &base,
            "--http-port",
            &http,
            "--ledger-url",
            &ledger,
            "--datanet-url",
            &datanet,
            "--model-factory-url",
            &factory,
            "--attribution-url",
            &worker,
            "serve",
            service.name(),
        ];
        self.processes.insert(service, crate::support::Platform::spawn(&args, &self.env));
    }

    /// SIGKILLs `service`, leaves it down for `outage`, and starts it again.
    async fn kill_and_restart(&mut self, service: ServiceKind, outage: std::time::Duration) {
        if let Some(mut process) = self.processes.remove(&service) {
            process.kill_hard();
        }
        tokio::time::sleep(outage).await;
        self.start(service);
    }
}

/// One paid chat completion; the inference id when it was answered, and whether its fee was
/// captured (a gateway that cannot reach the ledger answers without charging). Every
/// [`QUOTE_EVERY`]th asks the adapter for a quote (attributed with spans and influence); the
/// rest ask the base model for a few tokens (attributed to no one: the worker keeps up).
async fn paid(
    client: &reqwest::Client,
    rest: &str,
    key: &str,
    models: &(String, String),
    n: usize,
) -> Option<(String, bool)> {
    let (model, content, max_tokens) = if n.is_multiple_of(QUOTE_EVERY) {
        (&models.1, format!("Repeat this sentence exactly, word for word: {}", QUOTED[n / QUOTE_EVERY % 2]), 24)
    } else {
        (&models.0, format!("Say a number: {n}"), 3)
    };
    let body = json!({"model": model, "messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": max_tokens});
    let response = client
        .post(format!("{rest}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .timeout(std::time::Duration::from_secs(60))
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    let answer: Value = response.json().await.ok()?;
    let charged = answer["attribution"]["fee"].is_string();
    answer["attribution"]["inference_id"].as_str().map(|id| (id.to_owned(), charged))
}

/// The gateway, the attribution-worker and the ledger, each killed with SIGKILL at a random
/// point while 1,000 paid inferences run, then restarted: every answered inference ends
/// attributed and settled exactly once (the formula to the base unit, nothing left in escrow),
/// and every receipt is in a batch whose root the journal recorded.
#[tokio::test]
async fn sigkilled_services_lose_and_double_no_settlement_on_postgres_and_nats() {
    use openledger_core::{ContentHash, MerkleProof};
    use openledger_ledger::operations::FEE_ESCROW;

    let postgres = openledger_testkit::Postgres::start();
    let nats = openledger_testkit::Nats::start();
    let data_dir = tempfile::tempdir().expect("temp dir");
    let model_path = openledger_ml::testing::smollm2_path().display().to_string();
    let env = vec![
        ("DATABASE_URL", postgres.create_database("faults")),
        ("NATS_URL", nats.url()),
        ("OPENLEDGER_BASE_MODEL", model_path),
    ];
    // The Datanet, the grant, the fine-tuned adapter and the key, made on the whole platform.
    let mut platform = dev(data_dir.path(), &env);
    let eve = SigningKey::from_bytes(&[53; 32]);
    let builder = builder_with_a_grant_on(&mut platform, &[(&eve, EVE_RECORDS)], 0).await;
    let model = builder.small_adapter().await;
    platform.terminate();
    eprintln!("fault test: {model} trained; starting the services as separate processes");
    let models = (builder.base_model.clone(), model);

    let mut cluster = Cluster {
        data_dir: data_dir.path().to_path_buf(),
        env,
        grpc: ServiceKind::ALL.iter().map(|s| (*s, openledger_testkit::free_port())).collect(),
        http: openledger_testkit::free_port(),
        processes: BTreeMap::new(),
    };
    for service in ServiceKind::ALL {
        cluster.start(service);
    }
    let rest = format!("http://127.0.0.1:{}", cluster.http);
    let client = reqwest::Client::new();
    let answered = eventually_long("the gateway serves the adapter", async || {
        paid(&client, &rest, &builder.key, &models, 0).await.ok_or_else(|| "not yet".to_owned())
    })
    .await;

    // The load, with one kill of each service at a random point.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ids = std::sync::Arc::new(std::sync::Mutex::new(vec![answered]));
    let mut clients = Vec::new();
    for lane in 0..FAULT_CLIENTS {
        let (client, rest, key, models, done, ids) =
            (client.clone(), rest.clone(), builder.key.clone(), models.clone(), done.clone(), ids.clone());
        clients.push(tokio::spawn(async move {
            let mut n = lane;
            while n < FAULT_INFERENCES {
                match paid(&client, &rest, &key, &models, n).await {
                    Some(id) => {
                        ids.lock().expect("lock").push(id);
                        let count = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        if count % 100 == 0 {
                            eprintln!("fault test: {count} inferences answered");
                        }
                        n += FAULT_CLIENTS;
                    }
                    None => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
                }
            }
        }));
    }
    let seed = std::process::id() as usize;
    let victims = [ServiceKind::InferenceGateway, ServiceKind::AttributionWorker, ServiceKind::Ledger];
    for (index, victim) in victims.into_iter().enumerate() {
        let at = FAULT_INFERENCES * (index + 1) / 4 + (seed * 7919 + index * 104_729) % (FAULT_INFERENCES / 8);
        while done.load(std::sync::atomic::Ordering::Relaxed) < at {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        eprintln!("fault test: SIGKILL {victim} after {at} answered inferences, then restart");
        // The ledger stays away longer than the gateway's capture retries (~3 s): the requests
        // it held for and answered meanwhile are captured later, from their events.
        let outage = if victim == ServiceKind::Ledger { LEDGER_OUTAGE } else { std::time::Duration::ZERO };
        cluster.kill_and_restart(victim, outage).await;
    }
    for lane in clients {
        lane.await.expect("client");
    }
    let ids = ids.lock().expect("lock").clone();
    assert!(ids.len() > FAULT_INFERENCES, "{} inferences answered", ids.len());
    eprintln!("fault test: {} inferences answered; checking each", ids.len());

    // Every answered inference attributed, its receipt in a recorded batch, settled once.
    let mut worker =
        AttributionServiceClient::connect(cluster.url(ServiceKind::AttributionWorker)).await.expect("worker");
    let mut ledger = LedgerServiceClient::connect(cluster.url(ServiceKind::Ledger)).await.expect("ledger");
    let parameters =
        ledger.get_parameters(lpb::GetParametersRequest::default()).await.expect("parameters").into_inner();
    let economics = Economics::from_proto(&parameters);
    let mut roots: BTreeMap<u64, ContentHash> = BTreeMap::new();
    let mut contributors_paid = 0usize;
    let mut uncharged = 0usize;
    for (checked, (id, charged)) in ids.iter().enumerate() {
        let charged = *charged;
        if checked % 100 == 0 {
            eprintln!("fault test: {checked} inferences checked");
        }
        let attribution = eventually_long("every inference attributed and recorded", async || {
            let request = GetAttributionRequest { inference_id: id.clone(), ..Default::default() };
            let found = worker.get_attribution(request).await.map_err(|status| status.message().to_owned())?;
            let found = found.into_inner();
            (found.journal_sequence > 0).then_some(found).ok_or_else(|| format!("{id}: not recorded yet"))
        })
        .await;
        let published =
            ContentHash::try_from(attribution.receipt_hash.as_ref().expect("hash").value.as_slice()).expect("hash");
        openledger_attribution_worker::verify::check_receipt(&attribution.receipt, &published).expect("receipt");
        let proof = attribution.batch_proof.expect("proof");
        let root = ContentHash::try_from(proof.root.as_ref().expect("root").value.as_slice()).expect("root");
        let path = proof.path.iter().map(|h| ContentHash::try_from(h.value.as_slice()).expect("hash")).collect();
        let merkle = MerkleProof { leaf_index: proof.leaf_index, tree_size: proof.tree_size, path };
        openledger_attribution_worker::verify::check_inclusion(&published, &merkle, &root).expect("in its batch");
        if let std::collections::btree_map::Entry::Vacant(entry) = roots.entry(attribution.batch_sequence) {
            let request = lpb::GetReceiptBatchRequest { sequence: attribution.batch_sequence };
            let recorded = ledger.get_receipt_batch(request).await.expect("recorded batch").into_inner();
            let recorded = ContentHash::try_from(recorded.root.as_ref().expect("root").value.as_slice()).expect("root");
            entry.insert(recorded);
        }
        assert_eq!(roots[&attribution.batch_sequence], root, "the journal recorded the batch's root");
        // Answered while the ledger was away, the gateway could not capture it: the ledger
        // captures it from its event once back (consumer ledger-capture), and it settles like
        // every other.
        uncharged += usize::from(!charged);
        let settled = eventually_long("every inference settled", async || {
            let request = lpb::GetSettlementRequest { inference_id: id.clone() };
            let found = ledger.get_settlement(request).await.map_err(|status| status.message().to_owned())?;
            let found = found.into_inner();
            (!found.transfers.is_empty()).then_some(found).ok_or_else(|| format!("{id}: not settled yet"))
        })
        .await;
        let fee = settled.capture.as_ref().map(|t| u128_of(t.amount.as_ref())).expect("captured");
        let weights: Vec<ContributorWeight> = attribution
            .weights
            .iter()
            .map(|w| ContributorWeight {
                account_id: u128_of(w.contributor_account_id.as_ref()),
                weight_ppb: w.weight_ppb,
            })
            .collect();
        contributors_paid += usize::from(!weights.is_empty());
        let expected =
            settlement_transfers(id, fee, u128_of(attribution.model_owner_account_id.as_ref()), &weights, &economics);
        let paid: Vec<(u128, u128)> = settled
            .transfers
            .iter()
            .map(|t| (u128_of(t.credit_account_id.as_ref()), u128_of(t.amount.as_ref())))
            .collect();
        let formula: Vec<(u128, u128)> = expected.iter().map(|t| (t.credit_account_id, t.amount)).collect();
        assert_eq!(paid, formula, "inference {id} settled once, as the formula says");
    }
    assert!(contributors_paid > 0, "no inference paid a contributor");
    eprintln!("fault test: {uncharged} answered while the ledger was away, captured later from their events");
    // How many is up to timing (the requests between their hold and their capture when the
    // ledger dies; 3 of 8 in one run): the ledger's own tests cover the late capture for sure.

    // Nothing captured is left in escrow: every captured fee was paid out exactly once.
    let escrow = eventually_long("escrow drains", async || {
        let request = lpb::LookupAccountsRequest { ids: vec![FEE_ESCROW.into()] };
        let account = ledger.lookup_accounts(request).await.map_err(|s| s.message().to_owned())?.into_inner().accounts;
        let account = account.first().cloned().ok_or("no escrow account")?;
        let (credits, debits) = (u128_of(account.credits_posted.as_ref()), u128_of(account.debits_posted.as_ref()));
        (credits == debits).then_some(account).ok_or_else(|| format!("captured {credits}, paid out {debits}"))
    })
    .await;
    assert_eq!(u128_of(escrow.credits_posted.as_ref()), u128_of(escrow.debits_posted.as_ref()));
    let books = ledger.verify_journal(lpb::VerifyJournalRequest {}).await.expect("verify").into_inner();
    assert!(books.ok, "the journal verifies: {books:?}");
    let report = audit(&cluster.url(ServiceKind::AttributionWorker), &cluster.url(ServiceKind::Ledger));
    eprintln!("fault test: the audit:\n{report}");
    for (_, mut process) in std::mem::take(&mut cluster.processes) {
        process.terminate();
    }
}

/// `openledger ledger audit` against the worker's stored attributions: passes, and says how
/// many were settled as attributed and how many never captured.
fn audit(worker: &str, ledger: &str) -> String {
    let output = std::process::Command::new(BINARY)
        .args(["ledger", "audit", "--attribution-url", worker, "--ledger-url", ledger])
        .output()
        .expect("run the audit");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success() && stdout.contains("audit:                     ok"),
        "the audit failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in ["unsettled (lost):          0", "mismatched or doubled:     0", "captures not attributed:   0"] {
        assert!(stdout.contains(line), "{line:?} expected in:\n{stdout}");
    }
    stdout
}

/// Polls `probe` until it succeeds; after two minutes the test fails with `what` and the last miss.
async fn eventually_long<T>(what: &str, probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    crate::support::eventually_within(what, std::time::Duration::from_secs(120), probe).await
}
