//! Helpers for the multi-process tests: spawning the binary, reading its JSON logs for the
//! addresses it bound, HTTP and gRPC probes.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use openledger_core::ServiceKind;
use prost::Message;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

pub const BINARY: &str = env!("CARGO_BIN_EXE_openledger");
pub const CHILD_DATABASE_ENV: &str = "OPENLEDGER_TEST_CHILD_DATABASE_URL";
pub const CHILD_NATS_ENV: &str = "OPENLEDGER_TEST_CHILD_NATS_URL";
const STARTUP: Duration = Duration::from_secs(60);

/// A running `openledger` process; killed if the test ends without terminating it.
pub struct Platform {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<Vec<String>>>,
    pub spawned_at: Instant,
}

impl Platform {
    /// Runs the binary with kernel-chosen ports and JSON logs, and a clean environment for its
    /// settings.
    pub fn spawn<K: AsRef<std::ffi::OsStr>>(args: &[&str], env: &[(K, String)]) -> Self {
        let mut command = Command::new(BINARY);
        // Every port is picked by the kernel and read back from the logs: a port chosen by the
        // test and released could be handed to another listener before the process binds it.
        let defaults = [
            ("--log-format", "json"),
            // The bound addresses are logged at debug (a user sees the ready banner instead).
            ("--log-level", "info,openledger_runtime::service=debug"),
            ("--grpc-base-port", "0"),
            ("--ops-base-port", "0"),
            ("--http-port", "0"),
            ("--shutdown-timeout-ms", "8000"),
        ];
        for (flag, value) in defaults {
            if !args.contains(&flag) {
                command.args([flag, value]);
            }
        }
        command.args(args).env_remove("RUST_LOG").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (name, _) in std::env::vars() {
            if name.starts_with("OPENLEDGER_")
                || ["DATABASE_URL", "NATS_URL", "OBJECT_STORE_URL"].contains(&name.as_str())
            {
                command.env_remove(name);
            }
        }
        for (name, value) in env {
            command.env(name.as_ref(), value);
        }
        let spawned_at = Instant::now();
        let mut child = command.spawn().expect("spawn openledger");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let sink = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut text = sink.lock().expect("lock");
                text.push_str(&line);
                text.push('\n');
            }
        });
        let err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().expect("lock").push(line);
            }
        });
        Self { child, stdout, stderr, spawned_at }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("lock").clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").join("\n")
    }

    /// The address a service logged for `role` (`grpc`, `ops`, `rest`), if bound yet.
    pub fn endpoint(&self, service: ServiceKind, role: &str) -> Option<SocketAddr> {
        self.stderr.lock().expect("lock").iter().find_map(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).ok()?;
            (entry["message"] == "listening" && entry["service"] == service.name() && entry["role"] == role)
                .then(|| entry["addr"].as_str()?.parse().ok())?
        })
    }

    pub fn wait_endpoint(&mut self, service: ServiceKind, role: &str) -> SocketAddr {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(addr) = self.endpoint(service, role) {
                return addr;
            }
            assert!(self.is_running(), "openledger exited early; stderr:\n{}", self.stderr());
            assert!(Instant::now() < deadline, "{service} never bound {role}; stderr:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn wait_ready(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + STARTUP;
        loop {
            if get(addr, "/readyz").await.0 == 200 {
                return;
            }
            assert!(self.is_running(), "openledger exited early; stderr:\n{}", self.stderr());
            assert!(Instant::now() < deadline, "never ready; stderr:\n{}", self.stderr());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL: the process dies where it stands.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(exit) = self.child.try_wait().expect("wait") {
                std::thread::sleep(Duration::from_millis(100)); // let the log readers catch up
                return exit;
            }
            assert!(Instant::now() < deadline, "no exit within 30 s of SIGTERM; stderr:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `probe` until it succeeds; after 10 s the test fails with `what` and the last miss.
pub async fn eventually<T>(what: &str, probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    eventually_within(what, Duration::from_secs(10), probe).await
}

/// [`eventually`] with another deadline, for what takes its own time (a vote, a timelock).
pub async fn eventually_within<T>(what: &str, limit: Duration, mut probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(miss) => assert!(Instant::now() < deadline, "{what}: {miss}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Moves `amount` base units from the community allocation (account 101) to `account` with
/// transfer `id`, retrying until genesis has minted the allocation.
pub async fn fund_from_community(
    client: &mut openledger_proto::ledger::v1::ledger_service_client::LedgerServiceClient<tonic::transport::Channel>,
    id: u128,
    account: u128,
    amount: u128,
) {
    use openledger_proto::{ledger::v1 as pb, uint128};
    let funding = pb::Transfer {
        id: uint128(id),
        debit_account_id: uint128(101),
        credit_account_id: uint128(account),
        amount: uint128(amount),
        ledger: 1,
        ..Default::default()
    };
    eventually("genesis funds the community allocation", async || {
        let transfers = vec![funding.clone()];
        let results =
            client.create_transfers(pb::CreateTransfersRequest { transfers }).await.expect("fund").into_inner().results;
        if results[0].result == pb::CreateResult::Ok as i32 { Ok(()) } else { Err(format!("{results:?}")) }
    })
    .await;
}

/// The settings of a test network whose governance takes seconds: votes close after 10 s (room
/// for a loaded machine between proposing and voting), a passed proposal waits 1 s, epochs last
/// 1 s.
pub fn fast_governance() -> [(&'static str, String); 3] {
    [
        ("OPENLEDGER_GOVERNANCE_VOTING_SECONDS", "10".to_owned()),
        ("OPENLEDGER_GOVERNANCE_TIMELOCK_SECONDS", "1".to_owned()),
        ("OPENLEDGER_GENESIS_EPOCH_SECONDS", "1".to_owned()),
    ]
}

/// On a [`fast_governance`] network, governs `change` into force over REST (`rest`) as a staker
/// would: account `account` (owned by `key`) is created, funded from the community allocation
/// (transfer `account`) and stakes 2,000 OPEN, proposes the parameters in force with `change`
/// applied, votes for them (the only stake, so they pass), and the call returns them once they
/// are in force.
pub async fn govern(
    rest: SocketAddr,
    ledger: &mut openledger_proto::ledger::v1::ledger_service_client::LedgerServiceClient<tonic::transport::Channel>,
    key: &ed25519_dalek::SigningKey,
    account: u128,
    change: impl FnOnce(&mut openledger_ledger::operations::Economics),
) -> openledger_ledger::operations::Economics {
    use ed25519_dalek::Signer;
    use openledger_ledger::{governance::parameters_json, operations::Economics};
    use openledger_signing::{StakeAction, proposal_message, staking_message, vote_message};
    let http = reqwest::Client::new();
    let post = async |path: String, body: serde_json::Value| {
        let response = http.post(format!("http://{rest}{path}")).json(&body).send().await.expect("post");
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert!((200..300).contains(&status), "POST {path}: {status} {body}");
    };
    let public_key = hex::encode(key.verifying_key().to_bytes());
    let sign = |message: Vec<u8>| hex::encode(key.sign(&message).to_bytes());
    post("/v1/accounts".into(), serde_json::json!({"id": account.to_string(), "public_key": public_key})).await;
    let stake = 2_000 * 10u128.pow(18);
    fund_from_community(ledger, account, account, stake).await;
    let operation = format!("govern-{account}");
    let stake_body = serde_json::json!({"operation_id": operation, "amount": stake.to_string(), "public_key": public_key,
        "signature": sign(staking_message(StakeAction::Stake, &operation, account, stake))});
    post(format!("/v1/accounts/{account}/stake"), stake_body).await;
    let in_force = ledger
        .get_parameters(openledger_proto::ledger::v1::GetParametersRequest::default())
        .await
        .expect("parameters")
        .into_inner();
    let mut governed = Economics::from_proto(&in_force);
    change(&mut governed);
    let parameters: serde_json::Value = serde_json::from_str(&parameters_json(&governed)).expect("json");
    let id = format!("governed-by-{account}");
    let proposal = serde_json::json!({"id": id, "account": account.to_string(), "parameters": parameters,
        "public_key": public_key, "signature": sign(proposal_message(&id, account, &(&governed).into()))});
    post("/v1/governance/proposals".into(), proposal).await;
    let vote = serde_json::json!({"account": account.to_string(), "approve": true, "public_key": public_key,
        "signature": sign(vote_message(&id, account, true))});
    post(format!("/v1/governance/proposals/{id}/votes"), vote).await;
    eventually_within("the governed parameters are in force", Duration::from_secs(60), async || {
        let (_, body) = get(rest, "/v1/governance/parameters").await;
        let body: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if body == parameters { Ok(()) } else { Err(format!("{body}")) }
    })
    .await;
    governed
}

/// GET `path`; status 0 when nothing answers.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    match client.get(format!("http://{addr}{path}")).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

pub fn proto_service(kind: ServiceKind) -> &'static str {
    use openledger_proto::service_names::*;
    match kind {
        ServiceKind::Ledger => LEDGER,
        ServiceKind::DatanetIngest => DATANET,
        ServiceKind::AttributionWorker => ATTRIBUTION,
        ServiceKind::ModelFactory => MODEL_FACTORY,
        ServiceKind::InferenceGateway => INFERENCE,
    }
}

/// Every OpenLedger service and its RPCs, from the compiled descriptor set.
pub fn expected_rpcs() -> BTreeMap<String, Vec<String>> {
    let set = prost_types::FileDescriptorSet::decode(openledger_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
    services_of(set.file.iter())
}

fn services_of<'a>(files: impl Iterator<Item = &'a prost_types::FileDescriptorProto>) -> BTreeMap<String, Vec<String>> {
    let mut services = BTreeMap::new();
    for file in files {
        for service in &file.service {
            let methods = service.method.iter().map(|method| method.name().to_owned()).collect();
            services.insert(format!("{}.{}", file.package(), service.name()), methods);
        }
    }
    services
}

async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

/// Services and RPCs as a grpcurl-style client sees them through server reflection.
pub async fn reflected_rpcs(addr: SocketAddr) -> BTreeMap<String, Vec<String>> {
    let mut client = ServerReflectionClient::new(channel(addr).await);
    let mut ask = async |request: MessageRequest| {
        let outbound = ServerReflectionRequest { host: String::new(), message_request: Some(request) };
        let mut inbound =
            client.server_reflection_info(tokio_stream::iter([outbound])).await.expect("reflection call").into_inner();
        inbound
            .message()
            .await
            .expect("reflection answer")
            .and_then(|response| response.message_response)
            .expect("response")
    };
    let MessageResponse::ListServicesResponse(list) = ask(MessageRequest::ListServices(String::new())).await else {
        panic!("expected a service list");
    };
    let mut rpcs = BTreeMap::new();
    for service in list.service.iter().filter(|service| service.name.starts_with("openledger.")) {
        let MessageResponse::FileDescriptorResponse(files) =
            ask(MessageRequest::FileContainingSymbol(service.name.clone())).await
        else {
            panic!("expected file descriptors for {}", service.name);
        };
        let decoded: Vec<prost_types::FileDescriptorProto> = files
            .file_descriptor_proto
            .iter()
            .map(|bytes| prost_types::FileDescriptorProto::decode(&bytes[..]).expect("decode"))
            .collect();
        let found = services_of(decoded.iter());
        rpcs.insert(service.name.clone(), found.get(&service.name).cloned().unwrap_or_default());
    }
    rpcs
}

pub async fn health_status(addr: SocketAddr, service: &str) -> tonic_health::pb::health_check_response::ServingStatus {
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel(addr).await);
    let response = client
        .check(tonic_health::pb::HealthCheckRequest { service: service.to_owned() })
        .await
        .expect("health check")
        .into_inner();
    response.status()
}

/// What the outbox crash tests' child process needs: set only in a process the parent test
/// started with [`run_relay_child`].
pub struct RelayChild {
    pub database_url: String,
    pub nats_url: String,
}

impl RelayChild {
    /// `Some` only inside a child started by [`run_relay_child`].
    pub fn from_env() -> Option<Self> {
        Some(Self {
            database_url: std::env::var(CHILD_DATABASE_ENV).ok()?,
            nats_url: std::env::var(CHILD_NATS_ENV).ok()?,
        })
    }
}

/// Runs `test_name` of this test binary again as the crash-test child, with `failpoint` armed.
pub fn run_relay_child(test_name: &str, database_url: &str, nats_url: &str, failpoint: &str) -> Output {
    let exe = std::env::current_exe().expect("test binary");
    Command::new(exe)
        .args([test_name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD_DATABASE_ENV, database_url)
        .env(CHILD_NATS_ENV, nats_url)
        .env("FAILPOINTS", format!("{failpoint}=return"))
        .stdin(Stdio::null())
        .output()
        .expect("run the relay child")
}

/// The child died of `SIGABRT` right after printing `marker` (and so at that fail point, not
/// of a panic, a failed connection or anything else).
pub fn assert_aborted_at(output: &Output, marker: &str) {
    use std::os::unix::process::ExitStatusExt;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.signal(), Some(libc::SIGABRT), "the child aborted: {:?}\n{stderr}", output.status);
    assert_eq!(stderr.lines().last(), Some(marker), "the child's last words name the fail point:\n{stderr}");
}
