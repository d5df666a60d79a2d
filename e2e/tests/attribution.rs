//! The value chain end to end, as `openledger dev` runs it: two contributors' records in a
//! sealed Datanet version (its span index built on seal, unasked), an adapter fine-tuned on
//! it, paid chat completions through the OpenAI API, each attributed once with a receipt in a
//! batch whose root the ledger's journal records, each settled from escrow exactly as the
//! formula says to the base unit, the contributors' balances what their quotes earned, and
//! `openledger attribution verify` checking one of them from outside. On SQLite with the
//! in-process bus, and on PostgreSQL with NATS JetStream.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use openledger_core::{ServiceKind, fee::earnings_account_id};
use openledger_ledger::operations::{ContributorWeight, Economics, settlement_transfers};
use openledger_proto::{
    attribution::v1::{GetAttributionRequest, attribution_service_client::AttributionServiceClient},
    ledger::v1::{self as lpb, ledger_service_client::LedgerServiceClient},
    u128_of,
};
use serde_json::{Value, json};

use crate::{
    finetune::{builder_with_a_grant_on, dev},
    support::{BINARY, eventually},
};

/// Eve's records: the ones the completions are asked to repeat.
const EVE_RECORDS: &str = "{\"text\": \"Pressure ulcers are prevented by changing position every two hours and keeping skin clean and dry.\"}\n\
{\"text\": \"Falls at home are less likely with good lighting, secured rugs and grab rails beside the bath.\"}\n";
const QUOTED: [&str; 2] = [
    "Pressure ulcers are prevented by changing position every two hours and keeping skin clean and dry.",
    "Falls at home are less likely with good lighting, secured rugs and grab rails beside the bath.",
];

fn economics(parameters: &lpb::Parameters) -> Economics {
    Economics {
        model_owner_bps: parameters.model_owner_bps,
        stakers_bps: parameters.stakers_bps,
        contributors_bps: parameters.contributors_bps,
        platform_fee: u128_of(parameters.platform_fee.as_ref()),
        ..Economics::default()
    }
}

async fn paid_inferences_reach_the_contributors_they_quote(env: &[(&str, String)]) {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut platform = dev(data_dir.path(), env);
    let eve = SigningKey::from_bytes(&[53; 32]);
    let builder = builder_with_a_grant_on(&mut platform, &[(&eve, EVE_RECORDS)]).await;
    let job = json!({
        "model": builder.base_model,
        "training_file": builder.training_file,
        "seed": 5,
        "hyperparameters": {"n_epochs": 1, "batch_size": 1},
        "lora": {"rank": 4, "max_steps": 2, "checkpoint_every": 1, "max_seq_tokens": 96},
    });
    let job = builder.create(&job).await;
    let job = builder.until(job["id"].as_str().expect("id"), |job| job["status"] == "succeeded").await;
    let model = job["fine_tuned_model"].as_str().expect("fine_tuned_model").to_owned();

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
    let economics = economics(&parameters);

    let mut earned: BTreeMap<u128, u128> = BTreeMap::new();
    let mut quoted = 0;
    for (id, content) in &inferences {
        // Attributed, batched and its batch root recorded in the journal.
        let attribution = eventually("the inference is attributed and its receipt recorded", async || {
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
        let settled = eventually("the inference is settled", async || {
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
    assert!(earned.contains_key(&earnings_account_id(&eve.verifying_key().to_bytes())), "{earned:?}");

    // Every contributor's balance is what the settlements paid them.
    let accounts = ledger
        .lookup_accounts(lpb::LookupAccountsRequest { ids: earned.keys().map(|id| (*id).into()).collect() })
        .await
        .expect("lookup")
        .into_inner()
        .accounts;
    for account in accounts {
        let id = u128_of(account.id.as_ref());
        assert_eq!(u128_of(account.credits_posted.as_ref()), earned[&id], "account {id}");
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
    platform.terminate();
}

#[tokio::test]
async fn paid_inferences_reach_the_contributors_they_quote_on_sqlite() {
    paid_inferences_reach_the_contributors_they_quote(&[]).await;
}

#[tokio::test]
async fn paid_inferences_reach_the_contributors_they_quote_on_postgres_and_nats() {
    let postgres = openledger_testkit::Postgres::start();
    let nats = openledger_testkit::Nats::start();
    let env = [("DATABASE_URL", postgres.create_database("attribution")), ("NATS_URL", nats.url())];
    paid_inferences_reach_the_contributors_they_quote(&env).await;
}
