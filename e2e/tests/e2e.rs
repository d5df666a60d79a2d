//! Multi-process tests: the `openledger` binary as a user runs it, against real PostgreSQL
//! and nats-server from the testkit, plus the outbox crash tests (a relay process killed
//! between the steps of relaying).

mod attribution;
mod cluster;
mod datanet;
mod finetune;
mod keys;
mod model;
mod openai;
mod openapi;
mod operator;
mod signing;
mod support;

use std::{collections::BTreeMap, time::Duration};

use openledger_bus::{ConsumerConfig, EventBus, JetStreamBus};
use openledger_core::ServiceKind;
use openledger_store::{NewEvent, OutboxRelay, outbox};
use openledger_testkit::{Nats, Postgres, S3, free_port};
use sea_orm::{ConnectionTrait, TransactionTrait};
use support::{Platform, expected_rpcs, get, reflected_rpcs};

#[tokio::test]
async fn dev_becomes_ready_serves_every_api_and_drains_on_sigterm() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut platform = Platform::spawn::<&str>(&["--data-dir", &data_dir.path().display().to_string(), "dev"], &[]);
    let rest = platform.wait_endpoint(ServiceKind::InferenceGateway, "rest");
    let spawned_at = platform.spawned_at;
    platform.wait_ready(rest).await;
    eprintln!("dev answered /readyz 200 {:?} after spawn", spawned_at.elapsed());

    let (status, body) = get(rest, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, body) = get(rest, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("json");
    for check in ["database", "bus", "objects", "service:ledger", "service:inference-gateway"] {
        assert_eq!(report["checks"][check], "ok", "{check} in {body}");
    }
    let (status, body) = get(rest, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("openledger_http_requests_total"), "{body}");
    let (status, body) = get(rest, "/openapi.json").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"/readyz\""));
    let (status, body) = get(rest, "/v1/nothing-here").await;
    assert_eq!(status, 404);
    assert!(body.starts_with(r#"{"error":{"code":"not_found""#), "{body}");

    let expected = expected_rpcs();
    for kind in ServiceKind::ALL {
        let health = platform.endpoint(kind, "ops").or(platform.endpoint(kind, "rest")).expect("health endpoint");
        assert_eq!(get(health, "/readyz").await.0, 200, "{kind} ready");
        let grpc = platform.endpoint(kind, "grpc").expect("grpc endpoint");
        let reflected = reflected_rpcs(grpc).await;
        let service = support::proto_service(kind);
        assert_eq!(reflected.get(service), expected.get(service), "reflection lists every RPC of {service}");
        assert_eq!(
            support::health_status(grpc, service).await,
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
    }

    // The ledger works over gRPC: genesis ran, accounts and transfers go through, the journal verifies.
    use openledger_proto::{common::v1::Uint128, ledger::v1 as pb};
    let ledger = platform.endpoint(ServiceKind::Ledger, "grpc").expect("ledger");
    let mut client =
        pb::ledger_service_client::LedgerServiceClient::connect(format!("http://{ledger}")).await.expect("connect");
    let id = |value: u64| Some(Uint128 { high: 0, low: value });
    let community = support::eventually("genesis funds the community allocation", async || {
        let found =
            client.lookup_accounts(pb::LookupAccountsRequest { ids: vec![Uint128 { high: 0, low: 101 }] }).await;
        found
            .ok()
            .and_then(|response| response.into_inner().accounts.pop())
            .ok_or_else(|| "no account 101 yet".to_owned())
    })
    .await;
    let minted = community.credits_posted.expect("amount");
    assert_eq!((u128::from(minted.high) << 64) | u128::from(minted.low), 517_100_000 * 10u128.pow(18));
    let owner = |byte| Some(pb::account::Owner::PublicKey(vec![byte; 32]));
    let accounts = vec![
        pb::Account { id: id(70_000), owner: owner(1), ledger: 1, code: 1, ..Default::default() },
        pb::Account {
            id: id(70_001),
            owner: owner(2),
            ledger: 1,
            code: 1,
            flags: vec![pb::AccountFlag::DebitsMustNotExceedCredits as i32],
            ..Default::default()
        },
    ];
    let created =
        client.create_accounts(pb::CreateAccountsRequest { accounts }).await.expect("create accounts").into_inner();
    assert!(created.results.iter().all(|r| r.result == pb::CreateResult::Ok as i32), "{created:?}");
    let transfers = vec![
        pb::Transfer {
            id: id(1),
            debit_account_id: id(70_000),
            credit_account_id: id(70_001),
            amount: id(500),
            ledger: 1,
            ..Default::default()
        },
        pb::Transfer {
            id: id(2),
            debit_account_id: id(70_001),
            credit_account_id: id(70_000),
            amount: id(501),
            ledger: 1,
            ..Default::default()
        },
    ];
    let results = client
        .create_transfers(pb::CreateTransfersRequest { transfers })
        .await
        .expect("transfers")
        .into_inner()
        .results;
    let codes: Vec<i32> = results.iter().map(|r| r.result).collect();
    assert_eq!(codes, vec![pb::CreateResult::Ok as i32, pb::CreateResult::InsufficientFunds as i32]);
    let verified = client.verify_journal(pb::VerifyJournalRequest {}).await.expect("verify").into_inner();
    assert!(verified.ok && verified.entries_checked >= 2, "{verified:?}");
    let mut entries =
        client.export_journal(pb::ExportJournalRequest { from_entry: 1 }).await.expect("export").into_inner();
    let mut sequences = Vec::new();
    while let Some(entry) = entries.message().await.expect("entry") {
        sequences.push(entry.sequence);
    }
    assert_eq!(sequences, (1..=verified.entries_checked).collect::<Vec<_>>(), "the journal streams in order");
    // The books are checked by the ledger's housekeeping, beside serving (on a busy machine
    // after these calls).
    support::eventually("the ledger checks its books at start", async || {
        platform.stderr().contains("books verified").then_some(()).ok_or_else(|| "not yet".to_owned())
    })
    .await;
    let parameters = client.get_parameters(pb::GetParametersRequest::default()).await.expect("parameters").into_inner();
    assert_eq!(
        (parameters.model_owner_bps, parameters.stakers_bps, parameters.contributors_bps),
        (3_000, 2_000, 5_000)
    );
    // The edge forwards Datanet routes to datanet-ingest in the same process.
    let (status, body) = get(rest, "/v1/datanets").await;
    assert_eq!(status, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(page["datanets"], serde_json::json!([]));

    assert!(platform.stdout().contains("OpenLedger is ready in"), "{}", platform.stdout());
    assert!(data_dir.path().join("openledger.db").is_file());
    let exit = platform.terminate();
    assert_eq!(exit.code(), Some(0), "SIGTERM drains and exits 0; stderr:\n{}", platform.stderr());
    assert!(platform.stderr().contains("outbox flushed"));
}

#[tokio::test]
async fn serve_ledger_on_postgres_nats_and_s3_becomes_ready_and_exits_0_on_sigterm() {
    let (postgres, nats, s3) = (Postgres::start(), Nats::start(), S3::start("openledger-objects"));
    let mut env: Vec<(String, String)> = s3.env();
    env.push(("DATABASE_URL".into(), postgres.create_database("ledger")));
    env.push(("NATS_URL".into(), nats.url()));
    env.push(("OBJECT_STORE_URL".into(), s3.url()));
    let mut platform = Platform::spawn(&["serve", "ledger"], &env);
    let ops = platform.wait_endpoint(ServiceKind::Ledger, "ops");
    platform.wait_ready(ops).await;
    let (_, body) = get(ops, "/readyz").await;
    let report: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(report["checks"]["bus"], "ok");
    assert_eq!(report["checks"]["objects"], "ok");
    assert_eq!(report["checks"].as_object().map(|checks| checks.len()), Some(4), "only the ledger runs: {body}");
    let grpc = platform.wait_endpoint(ServiceKind::Ledger, "grpc");
    let reflected = reflected_rpcs(grpc).await;
    assert_eq!(
        reflected.get(support::proto_service(ServiceKind::Ledger)),
        expected_rpcs().get(support::proto_service(ServiceKind::Ledger))
    );
    assert!(platform.endpoint(ServiceKind::InferenceGateway, "rest").is_none());
    let exit = platform.terminate();
    assert_eq!(exit.code(), Some(0), "stderr:\n{}", platform.stderr());
}

/// Starts `serve ledger` with one backend not there yet, checks it is alive, not ready and
/// retrying, then brings the backend up and waits for readiness and a clean exit.
async fn stays_not_ready_until(
    backend: &str,
    readyz_key: &str,
    database_url: String,
    nats_url: String,
    bring_up: impl FnOnce(),
) {
    let objects = tempfile::tempdir().expect("temp dir");
    let env = [
        ("DATABASE_URL", database_url),
        ("NATS_URL", nats_url),
        ("OBJECT_STORE_URL", format!("file://{}", objects.path().display())),
    ];
    let mut platform = Platform::spawn(&["serve", "ledger"], &env);
    let ops = platform.wait_endpoint(ServiceKind::Ledger, "ops");
    assert_eq!(get(ops, "/healthz").await.0, 200, "alive while the {backend} is down");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let retrying = format!(r#""backend":"{backend}""#);
    while !platform.stderr().lines().any(|line| line.contains("not ready, retrying") && line.contains(&retrying)) {
        assert!(std::time::Instant::now() < deadline, "no retry logged; stderr:\n{}", platform.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = get(ops, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("json");
    let state = report["checks"][readyz_key].as_str().unwrap_or_default().to_owned();
    assert!(state.starts_with("unreachable: "), "{readyz_key} should say why: {body}");
    assert!(platform.is_running(), "no crash loop: the process waits");

    bring_up();
    platform.wait_ready(ops).await;
    assert!(platform.stderr().contains("backend reachable again"));
    let exit = platform.terminate();
    assert_eq!(exit.code(), Some(0), "stderr:\n{}", platform.stderr());
}

#[tokio::test]
async fn serve_stays_not_ready_while_postgres_is_down_and_recovers_when_it_starts() {
    let nats = Nats::start();
    let pg_port = free_port();
    let mut postgres = None;
    let database_url = format!("postgres://postgres@127.0.0.1:{pg_port}/postgres");
    stays_not_ready_until("database", "database", database_url, nats.url(), || {
        postgres = Some(Postgres::start_on(pg_port))
    })
    .await;
}

#[tokio::test]
async fn serve_stays_not_ready_while_nats_is_down_and_recovers_when_it_starts() {
    let postgres = Postgres::start();
    let nats_port = free_port();
    let mut nats = None;
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    stays_not_ready_until("event bus", "bus", postgres.url(), nats_url, || nats = Some(Nats::start_on(nats_port)))
        .await;
}

/// A relay process killed at `failpoint` loses nothing and duplicates nothing downstream.
/// `test_name` is the calling test: the test binary runs it again as the relay child (see
/// [`support::RelayChild`]), so no test exists only to be a child.
async fn outbox_survives_a_relay_killed_at(test_name: &str, failpoint: &str, published_before_crash: usize) {
    if let Some(child) = support::RelayChild::from_env() {
        return relay_until_the_fail_point_kills_this_process(child).await;
    }
    let (postgres, nats) = (Postgres::start(), Nats::start());
    let url = postgres.create_database("outbox_crash");
    let db = openledger_store::connect(&url).await.expect("connect");
    openledger_store::migrate(&db).await.expect("migrate");
    db.execute_unprepared("CREATE TABLE widgets (name VARCHAR(64) PRIMARY KEY)").await.expect("state table");
    let mut event_ids = Vec::new();
    for i in 0..5 {
        let txn = db.begin().await.expect("begin");
        txn.execute_unprepared(&format!("INSERT INTO widgets (name) VALUES ('w{i}')")).await.expect("state change");
        let payload = format!("widget {i}").into_bytes();
        event_ids.push(
            outbox::enqueue(&txn, "widgets", NewEvent::new("ol.widget.created", payload)).await.expect("enqueue"),
        );
        txn.commit().await.expect("commit");
    }

    let output = support::run_relay_child(test_name, &url, &nats.url(), failpoint);
    support::assert_aborted_at(&output, &format!("{} {failpoint}", outbox::CRASH_MARKER));

    let bus = JetStreamBus::connect(&nats.url(), Default::default()).await.expect("bus");
    let relay = OutboxRelay::new(db.clone(), std::sync::Arc::new(bus.clone()), "widgets");
    let expected_unsent = 5;
    assert_eq!(relay.unsent().await.expect("count"), expected_unsent, "nothing was marked sent before the crash");
    assert_eq!(
        drain(&bus, "before-relaying-again").await,
        event_ids[..published_before_crash],
        "what the killed relay published before {failpoint}"
    );

    // The restarted relay sends everything; the bus drops the repeat of what was already out.
    while relay.relay_once().await.expect("relay") > 0 {}
    assert_eq!(relay.unsent().await.expect("count"), 0);
    assert_eq!(
        drain(&bus, "after-relaying-again").await,
        event_ids,
        "each event exactly once, in commit order ({published_before_crash} went out before the crash)"
    );
}

/// The ids of every message on the stream, read by a new durable consumer (each one starts at
/// the stream's first message), until none arrives for 1.5 s.
async fn drain(bus: &JetStreamBus, durable_name: &str) -> Vec<String> {
    let mut consumer = bus.consumer(ConsumerConfig::new(durable_name, "ol.widget.>")).await.expect("consumer");
    let mut received = Vec::new();
    while let Ok(delivery) = tokio::time::timeout(Duration::from_millis(1500), consumer.next()).await {
        let delivery = delivery.expect("delivery");
        received.push(delivery.id.clone());
        delivery.ack().await.expect("ack");
    }
    received
}

/// The child's side of the crash tests: relays with the fail point from `FAILPOINTS` armed,
/// which aborts the process; getting past it is a failure the parent sees as a panic.
async fn relay_until_the_fail_point_kills_this_process(child: support::RelayChild) {
    let _scenario = fail::FailScenario::setup();
    let db = openledger_store::connect(&child.database_url).await.expect("connect");
    let bus = JetStreamBus::connect(&child.nats_url, Default::default()).await.expect("bus");
    let relay = OutboxRelay::new(db, std::sync::Arc::new(bus), "widgets");
    relay.relay_once().await.expect("relay");
    panic!("the fail point should have killed this process");
}

#[tokio::test]
async fn outbox_relay_killed_after_publish_before_marking_sent_duplicates_nothing() {
    outbox_survives_a_relay_killed_at(
        "outbox_relay_killed_after_publish_before_marking_sent_duplicates_nothing",
        "outbox-after-publish",
        1,
    )
    .await;
}

#[tokio::test]
async fn outbox_relay_killed_after_commit_before_publish_loses_nothing() {
    outbox_survives_a_relay_killed_at(
        "outbox_relay_killed_after_commit_before_publish_loses_nothing",
        "outbox-before-publish",
        0,
    )
    .await;
}

#[test]
fn invalid_configuration_exits_2_naming_the_setting() {
    let output = std::process::Command::new(support::BINARY)
        .args(["--grpc-base-port", "seventy", "config", "print"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--grpc-base-port") && stderr.contains("0..=65535"), "{stderr}");

    let output = std::process::Command::new(support::BINARY)
        .args(["config", "print"])
        .env("OPENLEDGER_HTTP_PORT", "9999")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("http_port: 9999  # OPENLEDGER_HTTP_PORT"), "{stdout}");
    // What `config print` shows is YAML a user can save and pass back with --config.
    let printed: BTreeMap<String, serde_norway::Value> = serde_norway::from_str(&stdout).expect("yaml");
    assert_eq!(printed["http_port"], serde_norway::Value::from(9999));
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("saved.yaml");
    std::fs::write(&file, stdout.as_bytes()).expect("write");
    let output = std::process::Command::new(support::BINARY)
        .args(["--config", &file.display().to_string(), "config", "print"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("http_port: 9999  # http_port in "));
}

/// Holds, captures and settles `inferences` through the ledger's gRPC API (each step
/// idempotent by inference id), counting completed settlements in `done`.
async fn settle_all(
    addr: std::net::SocketAddr,
    inferences: std::ops::Range<u64>,
    done: &std::sync::atomic::AtomicU64,
) -> Result<(), tonic::Status> {
    use openledger_proto::{common::v1::Uint128, ledger::v1 as pb};
    let id = |value: u64| Some(Uint128 { high: 0, low: value });
    let mut client = pb::ledger_service_client::LedgerServiceClient::connect(format!("http://{addr}"))
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    for n in inferences {
        let inference_id = format!("inference-{n}");
        client
            .hold_inference_fee(pb::HoldInferenceFeeRequest {
                inference_id: inference_id.clone(),
                app_account_id: id(80_000),
                max_fee: Some(Uint128 { high: 0, low: 10u64.pow(16) }),
                timeout_seconds: 3600,
            })
            .await?;
        client
            .capture_inference_fee(pb::CaptureInferenceFeeRequest {
                inference_id: inference_id.clone(),
                tokens_in: 1000,
                tokens_out: 1000,
                price_in: id(1_000),
                price_out: id(3_000),
            })
            .await?;
        let weights = vec![
            pb::ContributorWeight {
                contributor_account_id: id(80_002),
                contribution_id: "c1".into(),
                weight_ppb: 700_000_000,
                contributor: Vec::new(),
            },
            pb::ContributorWeight {
                contributor_account_id: id(80_003),
                contribution_id: "c2".into(),
                weight_ppb: 300_000_000,
                contributor: Vec::new(),
            },
        ];
        client
            .settle_inference(pb::SettleInferenceRequest { inference_id, model_owner_account_id: id(80_001), weights })
            .await?;
        done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    Ok(())
}

#[tokio::test]
async fn ledger_killed_during_settlements_neither_doubles_nor_loses_any() {
    use openledger_proto::{common::v1::Uint128, ledger::v1 as pb};
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };

    let postgres = Postgres::start();
    let objects = tempfile::tempdir().expect("temp dir");
    let env = [
        ("DATABASE_URL", postgres.create_database("ledger_crash")),
        ("OBJECT_STORE_URL", format!("file://{}", objects.path().display())),
    ];
    let mut platform = Platform::spawn(&["serve", "ledger"], &env);
    let ops = platform.wait_endpoint(ServiceKind::Ledger, "ops");
    platform.wait_ready(ops).await;
    let addr = platform.wait_endpoint(ServiceKind::Ledger, "grpc");

    // Accounts: an app funded from the community allocation, a model owner, two contributors.
    let id = |value: u64| Some(Uint128 { high: 0, low: value });
    let mut client =
        pb::ledger_service_client::LedgerServiceClient::connect(format!("http://{addr}")).await.expect("connect");
    let accounts = (0..4u64)
        .map(|i| pb::Account {
            id: id(80_000 + i),
            owner: Some(pb::account::Owner::PublicKey(vec![i as u8 + 1; 32])),
            ledger: 1,
            code: 1,
            ..Default::default()
        })
        .collect();
    client.create_accounts(pb::CreateAccountsRequest { accounts }).await.expect("accounts");
    support::fund_from_community(&mut client, 1, 80_000, 10u128.pow(18)).await;

    // Settle a stream of inferences and kill the ledger with SIGKILL in the middle of it.
    const INFERENCES: u64 = 60;
    let done = Arc::new(AtomicU64::new(0));
    let stream = tokio::spawn({
        let done = done.clone();
        async move { settle_all(addr, 0..INFERENCES, &done).await }
    });
    while done.load(Ordering::SeqCst) < 15 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    platform.kill_hard();
    assert!(stream.await.expect("join").is_err(), "the stream was cut by the crash");
    let settled_before_crash = done.load(Ordering::SeqCst);
    assert!(settled_before_crash < INFERENCES);

    // Restart on the same database and retry every inference from the start.
    let mut platform = Platform::spawn(&["serve", "ledger"], &env);
    let ops = platform.wait_endpoint(ServiceKind::Ledger, "ops");
    platform.wait_ready(ops).await;
    let addr = platform.wait_endpoint(ServiceKind::Ledger, "grpc");
    let retried = AtomicU64::new(0);
    settle_all(addr, 0..INFERENCES, &retried).await.expect("retries succeed");

    let mut client =
        pb::ledger_service_client::LedgerServiceClient::connect(format!("http://{addr}")).await.expect("connect");
    let ids = [3u64, 80_001, 80_002, 80_003, 4].iter().map(|value| Uint128 { high: 0, low: *value }).collect();
    let accounts =
        client.lookup_accounts(pb::LookupAccountsRequest { ids }).await.expect("lookup").into_inner().accounts;
    let net = |account: &pb::Account| {
        let value = |amount: &Option<Uint128>| {
            amount.as_ref().map_or(0u128, |a| (u128::from(a.high) << 64) | u128::from(a.low))
        };
        value(&account.credits_posted) - value(&account.debits_posted)
    };
    // Per inference: fee = 1000 + 3000 + platform fee 10^15; net 4000 → owner 1200, stakers 800,
    // contributors 2000 split 7:3 → 1400 and 600.
    let n = u128::from(INFERENCES);
    assert_eq!(net(&accounts[0]), 0, "the fee escrow is empty: every capture was settled");
    assert_eq!(
        (net(&accounts[1]), net(&accounts[2]), net(&accounts[3])),
        (1200 * n, 1400 * n, 600 * n),
        "each inference paid exactly once (settled {settled_before_crash} before the crash)"
    );
    assert_eq!(net(&accounts[4]), 800 * n);
    let verified = client.verify_journal(pb::VerifyJournalRequest {}).await.expect("verify").into_inner();
    assert!(verified.ok, "{verified:?}");
    let exit = platform.terminate();
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test]
async fn the_ledger_cli_reads_moves_and_verifies_open() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let data = data_dir.path().display().to_string();
    let mut platform = Platform::spawn::<&str>(&["--data-dir", &data, "dev"], &[]);
    let rest = platform.wait_endpoint(ServiceKind::InferenceGateway, "rest");
    platform.wait_ready(rest).await;
    let ledger_url = format!("http://{}", platform.wait_endpoint(ServiceKind::Ledger, "grpc"));
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(support::BINARY)
            .args(["--data-dir", &data, "--ledger-url", &ledger_url, "--log-level", "warn", "ledger"])
            .args(args)
            .output()
            .expect("run the cli");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr),
        )
    };
    // Genesis runs as the ledger starts; wait for the community allocation (the account can
    // exist a moment before its funds do).
    support::eventually("genesis funds the community allocation", async || {
        let (code, out) = cli(&["balance", "101"]);
        if code == Some(0) && out.contains("517100000") { Ok(out) } else { Err(out) }
    })
    .await;

    let (code, out) = cli(&["transfer", "--from", "101", "--to", "105", "--amount", "1.5", "--id", "7"]);
    assert_eq!((code, out.trim()), (Some(0), "transfer 7: ok"));
    let (code, out) = cli(&["transfer", "--from", "101", "--to", "105", "--amount", "1.5", "--id", "7"]);
    assert_eq!((code, out.trim()), (Some(0), "transfer 7: exists"), "retrying is safe");
    let (code, out) = cli(&["transfer", "--from", "101", "--to", "424242", "--amount", "1", "--id", "8"]);
    assert_eq!((code, out.trim()), (Some(1), "transfer 8: account_not_found"));
    let (code, out) = cli(&["transfer", "--from", "101", "--to", "105", "--amount", "0.0000000000000000001"]);
    assert_eq!(code, Some(2));
    assert!(out.contains("more than 18 decimal places"), "{out}");
    let (code, out) =
        cli(&["transfer", "--from", "101", "--to", "105", "--amount", "340282366920938463463374607431768211456"]);
    assert_eq!(code, Some(2));
    assert!(out.contains("overflows"), "{out}");
    let (code, out) = cli(&["balance", "105", "--at", "1"]);
    assert_eq!(code, Some(1), "no account 105 in 1970: {out}");
    assert!(out.contains("not found"), "{out}");
    let later =
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 60).to_string();
    let (code, out) = cli(&["balance", "105", "--at", &later]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("50000001.5"), "the liquidity allocation plus the 1.5 moved: {out}");
    let (code, out) = cli(&["history", "105"]);
    assert_eq!(code, Some(0));
    assert!(out.lines().any(|line| line.starts_with("7 ") && line.trim_end().ends_with("1.5")), "{out}");
    // Governance from the command line: a key, an account it owns, a stake, a proposal, a vote.
    let key_file = data_dir.path().join("alice.key");
    let (code, public_key) = cli(&["keygen", "--out", &key_file.display().to_string()]);
    assert_eq!(code, Some(0), "{public_key}");
    let created = reqwest::Client::new()
        .post(format!("http://{rest}/v1/accounts"))
        .json(&serde_json::json!({"id": "90000", "public_key": public_key.trim()}))
        .send()
        .await
        .expect("create account");
    assert_eq!(created.status().as_u16(), 201);
    let (code, out) = cli(&["transfer", "--from", "101", "--to", "90000", "--amount", "5000", "--id", "9"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = cli(&["stake", "--account", "90000", "--amount", "1500", "--operation-id", "alice-stake-1"]);
    assert_eq!((code, out.trim()), (Some(0), "staked: 1500 OPEN"));
    let (code, out) = cli(&[
        "propose",
        "--id",
        "cheaper-owners",
        "--account",
        "90000",
        "--key-file",
        &key_file.display().to_string(),
        "--model-owner-bps",
        "2500",
        "--contributors-bps",
        "5500",
        "--slashing-threshold-milli",
        "-1500",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("proposal cheaper-owners: voting"), "{out}");
    let (status, body) = get(rest, "/v1/governance/proposals/cheaper-owners").await;
    let proposal: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!((status, &proposal["parameters"]["slashing_threshold_milli"]), (200, &(-1500).into()), "{body}");
    assert_eq!(proposal["parameters"]["slashing_bps"], 10_000, "what the command left alone is what is in force");
    let (code, out) = cli(&[
        "propose",
        "--id",
        "broken",
        "--account",
        "90000",
        "--key-file",
        &key_file.display().to_string(),
        "--model-owner-bps",
        "9000",
    ]);
    assert_eq!(code, Some(1), "shares that do not sum to 100% are refused before sending: {out}");
    let (code, out) = cli(&[
        "vote",
        "--proposal",
        "cheaper-owners",
        "--account",
        "90000",
        "--key-file",
        &key_file.display().to_string(),
        "--yes",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("for 1500 OPEN, against 0 OPEN"), "{out}");
    let (code, out) = cli(&["unstake", "--account", "90000", "--amount", "500", "--operation-id", "alice-unstake-1"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("unbonding: paid back at "), "{out}");

    let (code, out) = cli(&["verify"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("hash chain:              ok"), "{out}");

    assert_eq!(platform.terminate().code(), Some(0));
    let (code, out) = cli(&["verify"]);
    assert_eq!(code, Some(0), "verify works offline, from the database: {out}");
    let export = data_dir.path().join("journal.jsonl");
    let (code, out) = cli(&["export", "--out", &export.display().to_string()]);
    assert_eq!(code, Some(0), "{out}");
    let exported = std::fs::read_to_string(&export).expect("export file");
    assert!(exported.lines().any(|line| line.contains(r#""type":"epoch""#)), "{exported}");
    assert!(exported.lines().any(|line| line.contains(r#""id":"7""#)), "the CLI's transfer is in the export");
}

#[tokio::test]
async fn accounts_over_rest_go_through_the_gateway_to_the_ledger() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut platform = Platform::spawn::<&str>(&["--data-dir", &data_dir.path().display().to_string(), "dev"], &[]);
    let rest = platform.wait_endpoint(ServiceKind::InferenceGateway, "rest");
    platform.wait_ready(rest).await;
    let client = reqwest::Client::new();
    let post = |body: serde_json::Value| {
        let client = client.clone();
        async move {
            let response = client.post(format!("http://{rest}/v1/accounts")).json(&body).send().await.expect("post");
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.expect("json"))
        }
    };
    let key = "ab".repeat(32);
    let account = serde_json::json!({"id": "70000", "public_key": key, "flags": ["debits_must_not_exceed_credits"]});
    let (status, body) = post(account.clone()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!((body["id"].as_str(), body["balance"].as_str()), (Some("70000"), Some("0")));
    assert_eq!(body["flags"], serde_json::json!(["debits_must_not_exceed_credits"]));
    assert_eq!(post(account).await.0, 200, "creating it again is a safe retry");
    let (status, body) = post(serde_json::json!({"id": "70000", "public_key": "cd".repeat(32)})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("already_exists")));
    let (status, body) = post(serde_json::json!({"id": "70001", "public_key": "zz"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_argument")));
    let (status, body) = post(serde_json::json!({"id": "12", "public_key": key})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_argument")), "{body}");
    let (status, body) = post(serde_json::json!({"id": "70002", "public_key": key, "colour": "red"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_argument")), "unknown fields: {body}");

    let (status, body) = get(rest, "/v1/accounts/424242").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not_found"));
    let (status, body) = get(rest, "/v1/accounts/not-a-number").await;
    assert_eq!(status, 400, "{body}");
    // Genesis minted the community allocation (account 101): visible with its mint transfer.
    let community = support::eventually("genesis funds the community allocation", async || {
        let (status, body) = get(rest, "/v1/accounts/101").await;
        if status == 200 { Ok(serde_json::from_str::<serde_json::Value>(&body).expect("json")) } else { Err(body) }
    })
    .await;
    assert_eq!(community["balance"], "517100000000000000000000000");
    assert_eq!(community["owner"], "system:unspecified");
    for limit in ["0", "1001"] {
        let (status, body) = get(rest, &format!("/v1/accounts/101/transfers?limit={limit}")).await;
        assert_eq!(status, 400, "limit {limit}: {body}");
        assert!(body.contains("limit must be between 1 and 1000"), "{body}");
    }
    let (status, body) = get(rest, "/v1/accounts/101/transfers?limit=10").await;
    assert_eq!(status, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(page["transfers"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["transfers"][0]["amount"], "517100000000000000000000000");
    assert_eq!(platform.terminate().code(), Some(0));
}

#[tokio::test]
async fn staking_and_governance_over_rest_require_the_owners_signature() {
    use ed25519_dalek::{Signer, SigningKey};
    use openledger_ledger::governance::parameters_json;
    use openledger_proto::ledger::v1 as pb;
    use openledger_signing::{StakeAction, staking_message, vote_message};

    let data_dir = tempfile::tempdir().expect("temp dir");
    // A test network, so that a proposal is seen through to the parameters in force.
    let mut platform =
        Platform::spawn(&["--data-dir", &data_dir.path().display().to_string(), "dev"], &support::fast_governance());
    let rest = platform.wait_endpoint(ServiceKind::InferenceGateway, "rest");
    platform.wait_ready(rest).await;
    let http = reqwest::Client::new();
    let post = |path: String, body: serde_json::Value| {
        let http = http.clone();
        async move {
            let response = http.post(format!("http://{rest}{path}")).json(&body).send().await.expect("post");
            (response.status().as_u16(), response.json::<serde_json::Value>().await.expect("json"))
        }
    };
    let key = SigningKey::from_bytes(&[42; 32]);
    let public_key = hex::encode(key.verifying_key().to_bytes());
    let sign = |message: Vec<u8>| hex::encode(key.sign(&message).to_bytes());
    assert_eq!(post("/v1/accounts".into(), serde_json::json!({"id": "91000", "public_key": public_key})).await.0, 201);

    // Fund it from the community allocation over gRPC, once genesis has run.
    let ledger = platform.wait_endpoint(ServiceKind::Ledger, "grpc");
    let mut client =
        pb::ledger_service_client::LedgerServiceClient::connect(format!("http://{ledger}")).await.expect("connect");
    let open = |n: u128| n * 10u128.pow(18);
    support::fund_from_community(&mut client, 77, 91_000, open(5_000)).await;

    let amount = open(2_000).to_string();
    let stake_body = |signature: String| serde_json::json!({"operation_id": "op-1", "amount": amount, "public_key": public_key, "signature": signature});
    let (status, body) = post("/v1/accounts/91000/stake".into(), stake_body("00".repeat(64))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthenticated")),
        "a bad signature is refused: {body}"
    );
    let (status, body) = post("/v1/accounts/91000/stake".into(), stake_body("zz".into())).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthenticated")), "{body}");
    let signed = sign(staking_message(StakeAction::Stake, "op-1", 91_000, open(2_000)));
    let (status, body) = post("/v1/accounts/91000/stake".into(), stake_body(signed)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["staked_total"], open(2_000).to_string());

    let (status, body) = get(rest, "/v1/governance/parameters").await;
    assert_eq!(status, 200, "{body}");
    let mut parameters: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(parameters["model_owner_bps"], 3_000);
    assert_eq!(parameters["epoch_seconds"], 1, "the genesis parameters of this network");
    parameters["model_owner_bps"] = 2_000.into();
    parameters["contributors_bps"] = 6_000.into();
    let economics = openledger_ledger::operations::Economics {
        model_owner_bps: 2_000,
        contributors_bps: 6_000,
        epoch_seconds: 1,
        ..openledger_ledger::operations::Economics::default()
    };
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&parameters_json(&economics)).expect("json"),
        parameters,
        "the REST shape is the signed shape"
    );
    // A threshold above the typical record would slash honest contributions: refused, signed or not.
    let mut lenient = parameters.clone();
    lenient["slashing_threshold_milli"] = 500.into();
    let lenient_economics = openledger_ledger::operations::Economics { slashing_threshold_milli: 500, ..economics };
    let refused = serde_json::json!({
        "id": "lenient", "account": "91000", "parameters": lenient,
        "public_key": public_key, "signature": sign(openledger_signing::proposal_message("lenient", 91_000, &(&lenient_economics).into())),
    });
    let (status, body) = post("/v1/governance/proposals".into(), refused).await;
    assert_eq!(status, 412, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("slashing threshold")), "{body}");
    // Every parameter is named: one left out is a 400, before any signature is checked.
    let mut partial = parameters.clone();
    partial.as_object_mut().expect("object").remove("slashing_threshold_milli");
    let body = serde_json::json!({"id": "partial", "account": "91000", "parameters": partial,
        "public_key": public_key, "signature": "00".repeat(64)});
    let (status, body) = post("/v1/governance/proposals".into(), body).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_argument")), "{body}");
    let grpc = pb::SubmitProposalRequest {
        proposal_id: "partial".into(),
        parameters: Some(pb::Parameters { slashing_threshold_milli: None, ..economics.to_proto() }),
        ..Default::default()
    };
    let refused = client.submit_proposal(grpc).await.expect_err("a parameter left out");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let proposal = serde_json::json!({
        "id": "more-for-contributors", "account": "91000", "parameters": parameters, "rationale": "data matters",
        "public_key": public_key, "signature": sign(openledger_signing::proposal_message("more-for-contributors", 91_000, &(&economics).into())),
    });
    let (status, body) = post("/v1/governance/proposals".into(), proposal).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["state"], "voting");
    let vote = serde_json::json!({"account": "91000", "approve": true, "public_key": public_key, "signature": sign(vote_message("more-for-contributors", 91_000, true))});
    let (status, body) = post("/v1/governance/proposals/more-for-contributors/votes".into(), vote).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["votes_for"], open(2_000).to_string());
    let (status, body) = get(rest, "/v1/governance/proposals/more-for-contributors").await;
    assert_eq!(status, 200);
    assert!(body.contains("data matters") || body.contains("more-for-contributors"), "{body}");
    let (status, _) = get(rest, "/v1/governance/proposals/nope").await;
    assert_eq!(status, 404);

    // Voting closes, the proposal passes (all stake voted for it), waits out its timelock, is
    // executed, and its parameters are in force from the next epoch.
    let executed = support::eventually_within("the proposal is executed", Duration::from_secs(30), async || {
        let (_, body) = get(rest, "/v1/governance/proposals/more-for-contributors").await;
        let body: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        (body["state"] == "executed").then_some(body.clone()).ok_or_else(|| format!("{body}"))
    })
    .await;
    assert!(executed["effective_from_epoch"].as_u64().is_some(), "{executed}");
    let in_force =
        support::eventually_within("the governed parameters are in force", Duration::from_secs(10), async || {
            let (_, body) = get(rest, "/v1/governance/parameters").await;
            let body: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            (body["model_owner_bps"] == 2_000).then_some(body.clone()).ok_or_else(|| format!("{body}"))
        })
        .await;
    assert_eq!(in_force, parameters, "exactly the proposed set");
    assert_eq!(platform.terminate().code(), Some(0));
}

#[tokio::test]
async fn genesis_follows_the_configured_allocation() {
    let output = std::process::Command::new(support::BINARY)
        .args(["--genesis-allocations", "community=6000,team=3000", "config", "print"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2), "shares must sum to 10000");
    assert!(String::from_utf8_lossy(&output.stderr).contains("these sum to 9000"));

    let data_dir = tempfile::tempdir().expect("temp dir");
    let data = data_dir.path().display().to_string();
    let mut platform = Platform::spawn::<&str>(
        &["--data-dir", &data, "--genesis-allocations", "community=6000,team=4000", "dev"],
        &[],
    );
    let rest = platform.wait_endpoint(ServiceKind::InferenceGateway, "rest");
    platform.wait_ready(rest).await;
    // The account can be readable before genesis's transfer to it has posted: wait for a balance.
    let body = support::eventually("genesis funds the team allocation", async || {
        let (status, body) = get(rest, "/v1/accounts/102").await;
        let funded = status == 200
            && serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|account| account["balance"] != "0");
        if funded { Ok(body) } else { Err(body) }
    })
    .await;
    let team: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(team["balance"], "400000000000000000000000000");
    assert_eq!(get(rest, "/v1/accounts/103").await.0, 404, "only two allocation accounts");
    assert_eq!(platform.terminate().code(), Some(0));
}

/// The Datanet CLI and REST routes against `openledger dev`: create, contribute files (CLI)
/// and JSONL / multipart bodies (REST), publish, check proofs, show, and clear refusals.
#[tokio::test]
async fn datanets_work_from_the_cli_and_over_rest() {
    use ed25519_dalek::Signer;
    use openledger_datanet_ingest::signing;

    let data_dir = tempfile::tempdir().expect("temp dir");
    let data = data_dir.path().display().to_string();
    let mut platform = Platform::spawn::<&str>(&["--data-dir", &data, "dev"], &[]);
    let rest = platform.wait_endpoint(ServiceKind::InferenceGateway, "rest");
    platform.wait_ready(rest).await;
    let datanet_url = format!("http://{}", platform.wait_endpoint(ServiceKind::DatanetIngest, "grpc"));
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(support::BINARY)
            .args(["--data-dir", &data, "--log-level", "warn"])
            .args(args)
            .env("OPENLEDGER_DATANET_URL", &datanet_url)
            .output()
            .expect("run the cli");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let path = |name: &str| data_dir.path().join(name).display().to_string();
    for name in ["owner.key", "alice.key"] {
        let (code, out) = cli(&["ledger", "keygen", "--out", &path(name)]);
        assert_eq!(code, Some(0), "{out}");
    }
    let (code, out) = cli(&[
        "datanet",
        "create",
        "--slug",
        "notes",
        "--name",
        "Clinical notes",
        "--schema",
        "free-text",
        "--key-file",
        &path("owner.key"),
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("(notes) created"), "{out}");

    std::fs::write(path("triage.md"), datanet::ALICE_MD).expect("write");
    std::fs::write(path("notes.jsonl"), datanet::BOB_JSONL).expect("write");
    std::fs::write(path("latin1.txt"), b"caf\xe9 au lait").expect("write");
    let (code, out) = cli(&[
        "datanet",
        "contribute",
        "notes",
        &path("triage.md"),
        &path("notes.jsonl"),
        "--key-file",
        &path("alice.key"),
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("triage.md: contribution") && out.contains(": accepted ("), "{out}");
    let contribution = out
        .lines()
        .find(|line| line.starts_with("triage.md: contribution"))
        .and_then(|line| line.split_whitespace().nth(2))
        .map(|id| id.trim_end_matches(':').to_owned())
        .expect("contribution id");
    let (code, out) = cli(&["datanet", "contribute", "notes", &path("latin1.txt"), "--key-file", &path("alice.key")]);
    assert_eq!(code, Some(1), "a refused file fails the command: {out}");
    assert!(out.contains("latin1.txt: refused") && out.contains("UTF-8"), "{out}");
    let (code, out) = cli(&["datanet", "publish", "notes", "--key-file", &path("owner.key")]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("version 1"), "{out}");
    let (code, out) = cli(&["datanet", "proof", "notes", &contribution]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("verified") && !out.contains("DOES NOT VERIFY"), "{out}");
    let (code, out) = cli(&["datanet", "show", "notes"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Clinical notes (notes)") && out.contains("leaderboard"), "{out}");

    // Export for training: through an approved grant, version 1 by number, whole or not at all.
    let (code, out) = cli(&["datanet", "grant", "notes", "--purpose", "fine-tuning", "--key-file", &path("alice.key")]);
    assert_eq!(code, Some(0), "{out}");
    let grant = out.split_whitespace().nth(1).map(|id| id.trim_end_matches(':').to_owned()).expect("grant id");
    let export = |version: &str| {
        cli(&[
            "datanet",
            "export",
            version,
            "--grant",
            &grant,
            "--out",
            &path("export"),
            "--key-file",
            &path("alice.key"),
        ])
    };
    let (code, out) = export("notes@1");
    assert_eq!(code, Some(1), "a grant not yet approved reads nothing: {out}");
    assert!(out.contains("no approved grant"), "{out}");
    assert!(!data_dir.path().join("export").exists());
    let (code, out) = export("notes@7");
    assert_eq!(code, Some(1), "a version that was never sealed cannot be exported: {out}");
    assert!(
        out.contains("error: no snapshot \"7\" of this Datanet (not_found)"),
        "a refusal reads as its message and code: {out}"
    );
    let (code, out) =
        cli(&["datanet", "grant", "notes", "--grant", &grant, "--approve", "--key-file", &path("owner.key")]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = export("notes@1");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("datanet:notes@1"), "{out}");
    let corpus =
        openledger_attribution::corpus::Corpus::read_export(&data_dir.path().join("export")).expect("a valid export");
    assert_eq!(corpus.name, "datanet:notes@1");
    assert!(!corpus.records.is_empty());
    let alice = signing_key(&path("alice.key"));
    assert!(corpus.records.iter().all(|r| r.contributor == hex::encode(alice.verifying_key().to_bytes())));
    assert!(corpus.records.iter().any(|r| r.contribution == contribution));
    let (code, out) = export("notes");
    assert_eq!(code, Some(1), "an existing directory is never overwritten: {out}");
    assert!(out.contains("exists"), "{out}");

    attribute_an_export(&cli, data_dir.path(), &corpus);

    // Over REST: a JSONL body signed in headers, then a multipart upload.
    let http = reqwest::Client::new();
    let found: serde_json::Value =
        http.get(format!("http://{rest}/v1/datanets/notes")).send().await.expect("get").json().await.expect("json");
    let id = found["id"].as_str().expect("id").to_owned();
    let bob = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let body = "{\"text\": \"Iron deficiency is the most common cause of anaemia worldwide, and a diet with leafy greens, beans and meat helps prevent it.\"}\n";
    let hash = openledger_core::ContentHash::of(body.as_bytes());
    let signature = bob.sign(&signing::contribution_message(&id, "upload.jsonl", &hash, None));
    let response = http
        .post(format!("http://{rest}/v1/datanets/{id}/contributions"))
        .header("x-openledger-key", hex::encode(bob.verifying_key().to_bytes()))
        .header("x-openledger-signature", hex::encode(signature.to_bytes()))
        .body(body)
        .send()
        .await
        .expect("contribute");
    let status = response.status().as_u16();
    let taken: serde_json::Value = response.json().await.expect("json");
    assert_eq!(status, 201, "{taken}");
    assert_eq!(taken["status"], "accepted", "{taken}");
    let csv = "text\n\"Vaccines train the immune system to recognise a germ without causing the illness, so the body can fight it off quickly later.\"\n";
    let hash = openledger_core::ContentHash::of(csv.as_bytes());
    let signature = bob.sign(&signing::contribution_message(&id, "facts.csv", &hash, None));
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(csv.as_bytes().to_vec())
                .file_name("facts.csv")
                .mime_str("text/csv")
                .expect("mime"),
        )
        .text("public_key", hex::encode(bob.verifying_key().to_bytes()))
        .text("signature", hex::encode(signature.to_bytes()));
    let response = http
        .post(format!("http://{rest}/v1/datanets/{id}/contributions"))
        .multipart(form)
        .send()
        .await
        .expect("multipart");
    let status = response.status().as_u16();
    let taken: serde_json::Value = response.json().await.expect("json");
    assert_eq!(status, 201, "{taken}");
    assert_eq!(
        (taken["status"].as_str(), taken["file_name"].as_str()),
        (Some("accepted"), Some("facts.csv")),
        "{taken}"
    );
    let fetched = http
        .get(format!("http://{rest}/v1/datanets/{id}/contributions/{}", taken["id"].as_str().expect("id")))
        .send()
        .await
        .expect("get contribution");
    assert_eq!(fetched.status().as_u16(), 200);
    // A forged signature is 401 with the error envelope.
    let response = http
        .post(format!("http://{rest}/v1/datanets/{id}/contributions"))
        .header("x-openledger-key", hex::encode(bob.verifying_key().to_bytes()))
        .header("x-openledger-signature", hex::encode([0u8; 64]))
        .body(body)
        .send()
        .await
        .expect("contribute");
    assert_eq!(response.status().as_u16(), 401);
    let error: serde_json::Value = response.json().await.expect("json");
    assert_eq!(error["error"]["code"], "unauthenticated", "{error}");
    // A file over the Datanet's 5 MB limit is 413, not 429: the edge keeps the service's code.
    let response = http
        .post(format!("http://{rest}/v1/datanets/{id}/contributions"))
        .header("x-openledger-key", hex::encode(bob.verifying_key().to_bytes()))
        .header("x-openledger-signature", hex::encode([0u8; 64]))
        .body("x".repeat(6_000_000))
        .send()
        .await
        .expect("contribute");
    assert_eq!(response.status().as_u16(), 413);
    // Publishing over REST seals version 2; the proof route answers for the first contribution.
    let owner = signing_key(&path("owner.key"));
    let signed_at = signing::now_unix();
    let sealed = http
        .post(format!("http://{rest}/v1/datanets/{id}/snapshots"))
        .json(&serde_json::json!({
            "public_key": hex::encode(owner.verifying_key().to_bytes()),
            "signature": hex::encode(owner.sign(&signing::publish_message(&id, signed_at)).to_bytes()),
            "signed_at": signed_at,
        }))
        .send()
        .await
        .expect("publish");
    assert_eq!(sealed.status().as_u16(), 201);
    let sealed: serde_json::Value = sealed.json().await.expect("json");
    assert_eq!(sealed["version"], 2, "{sealed}");
    let proof: serde_json::Value = http
        .get(format!("http://{rest}/v1/datanets/{id}/snapshots/latest/proofs/{contribution}"))
        .send()
        .await
        .expect("proof")
        .json()
        .await
        .expect("json");
    assert_eq!(proof["merkle_root"], sealed["merkle_root"], "{proof}");
    // Access over REST: Bob asks, the owner approves.
    let purpose = "fine-tune a first-aid helper";
    let asked = http
        .post(format!("http://{rest}/v1/datanets/{id}/access"))
        .json(&serde_json::json!({
            "purpose": purpose,
            "public_key": hex::encode(bob.verifying_key().to_bytes()),
            "signature": hex::encode(bob.sign(&signing::access_request_message(&id, purpose)).to_bytes()),
        }))
        .send()
        .await
        .expect("request access");
    assert_eq!(asked.status().as_u16(), 201);
    let grant: serde_json::Value = asked.json().await.expect("json");
    let grant_id = grant["id"].as_str().expect("grant id").to_owned();
    let decided: serde_json::Value = http
        .post(format!("http://{rest}/v1/datanets/{id}/access/{grant_id}"))
        .json(&serde_json::json!({
            "approve": true,
            "public_key": hex::encode(owner.verifying_key().to_bytes()),
            "signature": hex::encode(owner.sign(&signing::access_decision_message(&id, &grant_id, true, signed_at)).to_bytes()),
            "signed_at": signed_at,
        }))
        .send()
        .await
        .expect("decide")
        .json()
        .await
        .expect("json");
    assert_eq!(decided["state"], "approved", "{decided}");
    // The owner removes Bob's csv record from the draft.
    let record = taken["records"][0]["hash"].as_str().expect("record hash").to_owned();
    let record_hash =
        openledger_core::ContentHash::from_bytes(hex::decode(&record).expect("hex").try_into().expect("32"));
    let removed = http
        .post(format!("http://{rest}/v1/datanets/{id}/records/{record}/remove"))
        .json(&serde_json::json!({
            "public_key": hex::encode(owner.verifying_key().to_bytes()),
            "signature": hex::encode(owner.sign(&signing::remove_message(&id, &record_hash, signed_at)).to_bytes()),
            "signed_at": signed_at,
        }))
        .send()
        .await
        .expect("remove");
    assert_eq!(removed.status().as_u16(), 204);
    let board: serde_json::Value = http
        .get(format!("http://{rest}/v1/datanets/{id}/leaderboard"))
        .send()
        .await
        .expect("board")
        .json()
        .await
        .expect("json");
    assert_eq!(board.as_array().map(Vec::len), Some(2), "alice and bob: {board}");
    assert_eq!(platform.terminate().code(), Some(0));
}

/// What a model builder does with an export (with a tiny model the test writes): fine-tune on
/// it, index it, trace a quote, attribute an output, and read contributor quality.
/// The key in a file `openledger ledger keygen` wrote (hex of the 32-byte secret).
fn signing_key(path: &str) -> ed25519_dalek::SigningKey {
    let secret = std::fs::read_to_string(path).expect("key file");
    ed25519_dalek::SigningKey::from_bytes(&hex::decode(secret.trim()).expect("hex").try_into().expect("32 bytes"))
}

/// How a test runs the CLI: exit code and output.
type Cli<'a> = dyn Fn(&[&str]) -> (Option<i32>, String) + 'a;

fn attribute_an_export(cli: &Cli<'_>, dir: &std::path::Path, corpus: &openledger_attribution::corpus::Corpus) {
    use openledger_ml::testing::{TinyModel, TinySpec};

    let path = |name: &str| dir.join(name).display().to_string();
    let tiny = TinyModel::new(TinySpec::default()).expect("tiny model");
    tiny.write_gguf(&dir.join("tiny.gguf"), candle_core::quantized::GgmlDType::F32).expect("gguf");
    let (base, export, adapter) = (path("tiny.gguf"), path("export"), path("adapter"));
    let records = dir.join("export").join("records.jsonl").display().to_string();
    let (code, out) = cli(&[
        "model",
        "finetune",
        "--base",
        &base,
        "--data",
        &records,
        "--out",
        &adapter,
        "--rank",
        "4",
        "--epochs",
        "2",
        "--eval-split",
        "0.3",
        "--max-seq-tokens",
        "96",
        "--lr",
        "1e-2",
    ]);
    assert_eq!(code, Some(0), "{out}");
    let lineage: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter/lineage.json")).expect("lineage")).expect("json");
    assert_eq!(lineage["dataset"], "datanet:notes@1", "the lineage names the Datanet version");

    let (code, out) =
        cli(&["attribution", "index", "build", "--data", &export, "--base", &base, "--adapter", &adapter]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("span index of datanet:notes@1") && out.contains("gradient index"), "{out}");

    let source = corpus.records.iter().max_by_key(|r| r.text.len()).expect("a record");
    let quote: String = source.text.split_whitespace().take(14).collect::<Vec<_>>().join(" ");
    let (code, out) = cli(&["attribution", "trace", "--data", &export, "--base", &base, "--json", &quote]);
    assert_eq!(code, Some(0), "{out}");
    let spans: serde_json::Value = serde_json::from_str(&out).expect("json spans");
    assert_eq!(spans[0]["record"], source.hash.to_hex(), "{out}");

    let completion = format!("As the notes say: {quote}.");
    let (code, out) = cli(&[
        "attribution",
        "score",
        "--data",
        &export,
        "--base",
        &base,
        "--adapter",
        &adapter,
        "--prompt",
        "What should a carer know?",
        "--completion",
        &completion,
        "--json",
    ]);
    assert_eq!(code, Some(0), "{out}");
    let scored: serde_json::Value = serde_json::from_str(&out).expect("json attribution");
    let attribution = &scored["attribution"];
    assert_eq!(attribution["method"], "blended", "{out}");
    let weights = attribution["weights"].as_array().expect("weights");
    let total: u64 = weights.iter().map(|w| w["weight_ppb"].as_u64().expect("ppb")).sum();
    assert_eq!(total, 1_000_000_000, "{out}");
    assert!(
        weights.iter().any(|w| w["contribution"] == source.contribution.as_str()),
        "the quoted contribution is paid: {out}"
    );

    let (code, out) =
        cli(&["attribution", "quality", "--data", &export, "--base", &base, "--adapter", &adapter, "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json quality");
    assert_eq!(report["contributors"][0]["contributor"], source.contributor.as_str(), "{out}");
    assert!(report["contributions"].as_array().is_some_and(|c| !c.is_empty()), "{out}");

    // Without a gradient index the attribution is span-only, and says so.
    std::fs::remove_dir_all(dir.join("adapter/gradient-index")).expect("remove the index");
    let (code, out) = cli(&[
        "attribution",
        "score",
        "--data",
        &export,
        "--base",
        &base,
        "--adapter",
        &adapter,
        "--completion",
        &completion,
        "--json",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("span-only"), "{out}");
}
