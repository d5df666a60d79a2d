//! The Datanet service with the real ledger, both in this process over gRPC: the full life of
//! a Datanet on SQLite (in-process bus, local files) and on PostgreSQL + NATS JetStream, bad
//! input, and the duplicate index surviving a restart.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use ed25519_dalek::SigningKey;
use openledger_bus::{ConsumerConfig, EventBus};
use openledger_core::{Config, ContentHash, MerkleProof, ServiceKind};
use openledger_datanet_ingest::{signed_caller as as_caller, signing};
use openledger_proto::{
    common::v1::Hash,
    datanet::v1::{self as pb, datanet_service_client::DatanetServiceClient},
    ledger::v1::{self as lpb, ledger_service_client::LedgerServiceClient},
    uint128,
};
use openledger_runtime::Deps;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};

use crate::support::{eventually, fund_from_community};

const OPEN: u128 = 1_000_000_000_000_000_000;
const STAKE: u128 = 10 * OPEN;

/// Ledger and datanet-ingest running in this process on one set of backends.
struct InProcess {
    datanet: DatanetServiceClient<Channel>,
    ledger: LedgerServiceClient<Channel>,
    bus: Arc<dyn EventBus>,
    ledger_addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl InProcess {
    async fn start(config: Config) -> Self {
        let config = Arc::new(Config { grpc_base_port: 0, ops_base_port: 0, http_port: 0, ..config });
        let shutdown = CancellationToken::new();
        let deps = Deps::start(config.clone(), shutdown.clone());
        let tasks = vec![
            tokio::spawn(run(openledger_ledger::serve(config.clone(), deps.clone()))),
            tokio::spawn(run(openledger_datanet_ingest::serve(config.clone(), deps.clone()))),
        ];
        let backends = deps.backends.wait(&shutdown).await.expect("backends connect");
        let (ledger, datanet) = eventually("both services are ready", async || {
            let ready = deps.readiness.services();
            if ready.len() < 2 || !ready.values().all(|ready| *ready) {
                return Err(format!("{ready:?}"));
            }
            let addr = |kind| {
                deps.endpoints
                    .all()
                    .into_iter()
                    .find(|endpoint| endpoint.service == kind && endpoint.role == "grpc")
                    .map(|endpoint| format!("http://{}", endpoint.addr))
                    .expect("endpoint")
            };
            Ok((addr(ServiceKind::Ledger), addr(ServiceKind::DatanetIngest)))
        })
        .await;
        let connect = async |url: String| Channel::from_shared(url).expect("url").connect().await.expect("connect");
        let ledger_addr = ledger.trim_start_matches("http://").parse().expect("address");
        Self {
            ledger_addr,
            datanet: DatanetServiceClient::new(connect(datanet).await),
            ledger: LedgerServiceClient::new(connect(ledger).await),
            bus: backends.bus,
            shutdown,
            tasks,
        }
    }

    /// Another handle on the same services (for concurrent calls).
    fn clone_clients(&self) -> Self {
        Self {
            datanet: self.datanet.clone(),
            ledger: self.ledger.clone(),
            bus: self.bus.clone(),
            ledger_addr: self.ledger_addr,
            shutdown: self.shutdown.clone(),
            tasks: Vec::new(),
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            task.await.expect("service task");
        }
    }
}

async fn run(service: impl Future<Output = Result<(), openledger_runtime::RuntimeError>>) {
    service.await.expect("service runs");
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn public(key: &SigningKey) -> Vec<u8> {
    key.verifying_key().to_bytes().to_vec()
}

/// A funded ledger account owned by `owner`.
async fn account(platform: &mut InProcess, id: u128, owner: &SigningKey, funds: u128) {
    let account = lpb::Account {
        id: uint128(id),
        owner: Some(lpb::account::Owner::PublicKey(public(owner))),
        ledger: 1,
        ..Default::default()
    };
    let created = platform.ledger.create_accounts(lpb::CreateAccountsRequest { accounts: vec![account] }).await;
    created.expect("account");
    fund_from_community(&mut platform.ledger, id + 1_000_000, id, funds).await;
}

async fn balance(platform: &mut InProcess, id: u128) -> (u128, u128) {
    let found = platform.ledger.lookup_accounts(lpb::LookupAccountsRequest { ids: vec![id.into()] }).await;
    let account = found.expect("lookup").into_inner().accounts.pop().expect("account");
    let get = |value: Option<openledger_proto::common::v1::Uint128>| value.map(u128::from).unwrap_or(0);
    (get(account.credits_posted) - get(account.debits_posted), get(account.debits_pending))
}

/// A public free-text Datanet named after its slug, with `stake` per contribution (0: none).
fn free_text(slug: &str, stake: u128) -> pb::Datanet {
    pb::Datanet {
        slug: slug.into(),
        name: slug.into(),
        licence: "CC0".into(),
        schema: pb::RecordSchema::FreeText as i32,
        visibility: pb::Visibility::Public as i32,
        policy: Some(pb::ContributionPolicy { stake_per_contribution: Some(stake.into()), ..Default::default() }),
        ..Default::default()
    }
}

async fn create(platform: &mut InProcess, owner: &SigningKey, mut datanet: pb::Datanet) -> pb::Datanet {
    datanet.licence = "CC-BY-4.0".into();
    let signature = signing::sign(owner, &signing::create_message(&datanet));
    let request = pb::CreateDatanetRequest { datanet: Some(datanet), signature: Some(signature) };
    platform.datanet.create_datanet(request).await.expect("create").into_inner()
}

fn upload_requests(
    datanet_id: &str,
    file_name: &str,
    bytes: &[u8],
    signer: &SigningKey,
    account: Option<u128>,
) -> Vec<pb::ContributeRequest> {
    let hash = ContentHash::of(bytes);
    let signature = signing::sign(signer, &signing::contribution_message(datanet_id, file_name, &hash, account));
    let header = pb::ContributeHeader {
        datanet_id: datanet_id.into(),
        file_name: file_name.into(),
        media_type: String::new(),
        size_bytes: bytes.len() as u64,
        file_hash: Some(Hash { value: hash.as_bytes().to_vec() }),
        signature: Some(signature),
        contributor_account_id: account.map(Into::into),
    };
    let mut messages = vec![pb::ContributeRequest { part: Some(pb::contribute_request::Part::Header(header)) }];
    for chunk in bytes.chunks(64 * 1024) {
        messages.push(pb::ContributeRequest { part: Some(pb::contribute_request::Part::Chunk(chunk.to_vec())) });
    }
    messages
}

async fn contribute(
    platform: &mut InProcess,
    datanet_id: &str,
    file_name: &str,
    bytes: &[u8],
    signer: &SigningKey,
    account: Option<u128>,
) -> Result<pb::Contribution, tonic::Status> {
    let messages = upload_requests(datanet_id, file_name, bytes, signer, account);
    platform.datanet.contribute(futures::stream::iter(messages)).await.map(tonic::Response::into_inner)
}

fn status_of(contribution: &pb::Contribution) -> pb::ContributionStatus {
    pb::ContributionStatus::try_from(contribution.status).expect("status")
}

pub(crate) const ALICE_MD: &str = "# Triage of chest pain\n\nChest pain in adults has many causes, from muscle strain to heart attack. \
Clinicians first rule out the dangerous ones: acute coronary syndrome, pulmonary embolism, aortic dissection \
and tension pneumothorax. An electrocardiogram within ten minutes of arrival is the standard of care.\n\n\
## History\n\nAsk when the pain started, what it feels like, where it spreads, and what makes it better or worse. \
Pressure that spreads to the left arm or jaw, with sweating and breathlessness, suggests cardiac ischaemia. \
Sharp pain that worsens with breathing suggests the pleura or the pericardium.\n\n\
## Examination\n\nMeasure blood pressure in both arms, listen to the heart and lungs, and look for swelling of one leg, \
which may point to a clot that travelled to the lungs. Tenderness of the chest wall makes a muscular cause more likely \
but never excludes a cardiac one.\n";

pub(crate) const BOB_JSONL: &str = "{\"text\": \"Dehydration in older adults often presents with confusion rather than thirst. Carers should offer fluids regularly and watch for dark urine, dizziness on standing and a dry mouth.\"}\n\
{\"text\": \"Hand washing with soap for at least twenty seconds removes most germs that cause diarrhoea and respiratory infections. Alcohol gel helps when soap and water are not available.\"}\n\
{\"text\": \"A fever in a baby younger than three months needs prompt medical assessment, because serious infections can progress quickly at that age even when the child seems well.\"}\n";

const SPAM: &str = "buy now buy now buy now cheap pills buy now buy now buy now cheap pills buy now buy now \
buy now cheap pills buy now buy now buy now cheap pills buy now buy now buy now cheap pills buy now buy now \
$$$ !!! $$$ !!! $$$ !!! buy now buy now buy now cheap pills buy now buy now buy now cheap pills\n";

/// Alice's file with a few words changed: a near-duplicate (Jaccard of 5-grams ≈ 0.8+).
fn near_copy() -> String {
    ALICE_MD.replace("many causes", "several causes").replace("Measure blood pressure", "Check blood pressure")
}

/// The full life of a Datanet: two contributors, a duplicate, a near-duplicate, a spam file,
/// review, removal, publish, proofs, events, leaderboard, and a private Datanet with and
/// without a grant.
async fn full_life(platform: &mut InProcess) {
    let (owner, alice, bob, validator, builder) = (key(1), key(2), key(3), key(4), key(5));
    let mut events =
        platform.bus.consumer(ConsumerConfig::new("datanet-test", "ol.datanet.>")).await.expect("consumer");
    let (alice_account, bob_account) = (70_001, 70_002);
    account(platform, alice_account, &alice, 100 * OPEN).await;
    account(platform, bob_account, &bob, 100 * OPEN).await;

    let datanet = create(
        platform,
        &owner,
        pb::Datanet {
            slug: "clinical-notes".into(),
            name: "Clinical notes".into(),
            summary: "Plain-language clinical knowledge".into(),
            tags: vec!["medicine".into()],
            schema: pb::RecordSchema::FreeText as i32,
            visibility: pb::Visibility::Public as i32,
            validators: vec![public(&validator)],
            policy: Some(pb::ContributionPolicy {
                stake_per_contribution: Some(STAKE.into()),
                // Everything worth keeping goes to review; spam is still rejected at once.
                review_all: true,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(datanet.owner, public(&owner));
    // Only summary, description, tags and policy are editable, and only by the owner.
    let edit = |signer: &SigningKey, mask: &str| {
        let mut request = pb::UpdateDatanetRequest {
            id: datanet.id.clone(),
            datanet: Some(pb::Datanet {
                summary: "Clinical knowledge in plain words".into(),
                name: "Renamed".into(),
                ..Default::default()
            }),
            update_mask: vec![mask.into()],
            signature: None,
            signed_at: signing::now_unix(),
        };
        request.signature = Some(signing::sign(signer, &signing::update_message(&request)));
        request
    };
    let edited = platform.datanet.update_datanet(edit(&owner, "summary")).await.expect("edit").into_inner();
    assert_eq!(
        (edited.summary.as_str(), edited.name.as_str()),
        ("Clinical knowledge in plain words", "Clinical notes")
    );
    let renamed = platform.datanet.update_datanet(edit(&owner, "name")).await.expect_err("the name is fixed");
    assert!(renamed.message().contains("only summary"), "{}", renamed.message());
    let stranger = platform.datanet.update_datanet(edit(&alice, "summary")).await.expect_err("not the owner");
    assert_eq!(stranger.code(), Code::PermissionDenied);
    let policy = datanet.policy.clone().expect("policy");
    assert_eq!((policy.max_files_per_contributor_per_day, policy.max_file_bytes), (20, 5_000_000));

    // Alice's prose goes to review with her bond held.
    let first = contribute(platform, &datanet.id, "triage.md", ALICE_MD.as_bytes(), &alice, Some(alice_account))
        .await
        .expect("alice contributes");
    assert_eq!(status_of(&first), pb::ContributionStatus::PendingReview, "{}", first.reason);
    assert!(first.records.len() >= 2, "chunked by headings: {:?}", first.records.len());
    assert_eq!(balance(platform, alice_account).await, (100 * OPEN, STAKE));
    // The same upload again is the same contribution (a retry), not a duplicate.
    let again = contribute(platform, &datanet.id, "triage.md", ALICE_MD.as_bytes(), &alice, Some(alice_account))
        .await
        .expect("retry");
    assert_eq!(again.id, first.id);

    let original = contribute(platform, &datanet.id, "notes.jsonl", BOB_JSONL.as_bytes(), &bob, Some(bob_account))
        .await
        .expect("bob contributes");
    assert_eq!(status_of(&original), pb::ContributionStatus::PendingReview, "{}", original.reason);
    assert_eq!(original.records.len(), 3);

    let copy = contribute(platform, &datanet.id, "copy.md", ALICE_MD.as_bytes(), &bob, Some(bob_account))
        .await
        .expect("exact copy is decided");
    assert_eq!(status_of(&copy), pb::ContributionStatus::Duplicate, "{}", copy.reason);
    assert!(copy.records.iter().all(|record| record.duplicate && record.duplicate_of == first.id));
    let near = contribute(platform, &datanet.id, "near.md", near_copy().as_bytes(), &bob, Some(bob_account))
        .await
        .expect("near copy is decided");
    assert_eq!(status_of(&near), pb::ContributionStatus::Duplicate, "{}", near.reason);
    let spam = contribute(platform, &datanet.id, "offer.txt", SPAM.as_bytes(), &bob, Some(bob_account))
        .await
        .expect("spam is decided");
    assert_eq!(status_of(&spam), pb::ContributionStatus::Rejected, "{}", spam.reason);
    assert!(spam.reason.contains("spam"), "{}", spam.reason);
    // Three slashed bonds (the default slashing rate is 100%) and one still held.
    eventually("bob's slashed bonds reach the ledger", async || {
        let got = balance(platform, bob_account).await;
        if got == (100 * OPEN - 3 * STAKE, STAKE) { Ok(()) } else { Err(format!("{got:?}")) }
    })
    .await;

    // Review: a contributor may not review; the validator and the owner may.
    let review = |reviewer: &SigningKey, contribution: &str, approve: bool| pb::ReviewContributionRequest {
        datanet_id: datanet.id.clone(),
        contribution_id: contribution.into(),
        approve,
        reason: String::new(),
        signature: Some(signing::sign(reviewer, &signing::review_message(&datanet.id, contribution, approve, ""))),
    };
    let refused = platform.datanet.review_contribution(review(&alice, &original.id, false)).await;
    assert_eq!(refused.expect_err("contributors cannot review").code(), Code::PermissionDenied);
    let approved = platform.datanet.review_contribution(review(&validator, &first.id, true)).await.expect("review");
    assert_eq!(status_of(approved.get_ref()), pb::ContributionStatus::Accepted);
    let approved = platform.datanet.review_contribution(review(&owner, &original.id, true)).await.expect("review");
    assert_eq!(status_of(approved.get_ref()), pb::ContributionStatus::Accepted);
    let twice = platform.datanet.review_contribution(review(&owner, &original.id, false)).await;
    assert_eq!(twice.expect_err("decided already").code(), Code::FailedPrecondition);
    // Approved: the bonds stay held until the contributions' quality is known (the first
    // adapter trained on a version holding them is assessed, or the timeout passes).
    eventually("approved bonds stay held, quality pending", async || {
        let got = (balance(platform, alice_account).await, balance(platform, bob_account).await);
        if got == ((100 * OPEN, STAKE), (100 * OPEN - 3 * STAKE, STAKE)) { Ok(()) } else { Err(format!("{got:?}")) }
    })
    .await;

    // The owner removes one of Bob's records from the draft, then publishes.
    let removed_hash = original.records[2].hash.clone().expect("hash");
    let now = signing::now_unix();
    let removed = ContentHash::from_bytes(removed_hash.value.clone().try_into().expect("32"));
    let remove = pb::RemoveRecordRequest {
        datanet_id: datanet.id.clone(),
        record_hash: Some(removed_hash.clone()),
        signature: Some(signing::sign(&owner, &signing::remove_message(&datanet.id, &removed, now))),
        signed_at: now,
    };
    platform.datanet.remove_record(remove).await.expect("remove");
    let publish = pb::PublishSnapshotRequest {
        datanet_id: datanet.id.clone(),
        signature: Some(signing::sign(&owner, &signing::publish_message(&datanet.id, now))),
        signed_at: now,
    };
    // A signature from ten minutes ago is a replay: refused.
    let stale = now - 600;
    let replayed = platform
        .datanet
        .publish_snapshot(pb::PublishSnapshotRequest {
            signature: Some(signing::sign(&owner, &signing::publish_message(&datanet.id, stale))),
            signed_at: stale,
            ..publish.clone()
        })
        .await;
    assert_eq!(replayed.expect_err("stale signature").code(), Code::Unauthenticated);
    let refused = platform
        .datanet
        .publish_snapshot(pb::PublishSnapshotRequest {
            signature: Some(signing::sign(&alice, &signing::publish_message(&datanet.id, now))),
            ..publish.clone()
        })
        .await;
    assert_eq!(refused.expect_err("only the owner publishes").code(), Code::PermissionDenied);
    let snapshot = platform.datanet.publish_snapshot(publish.clone()).await.expect("publish").into_inner();
    let expected_records = first.records.len() as u64 + 2;
    assert_eq!((snapshot.version, snapshot.record_count), (1, expected_records));
    assert_eq!((snapshot.records_added, snapshot.records_removed), (expected_records, 0));
    let counts: Vec<(Vec<u8>, u64)> =
        snapshot.contributor_counts.iter().map(|count| (count.contributor.clone(), count.records)).collect();
    assert!(counts.contains(&(public(&alice), first.records.len() as u64)) && counts.contains(&(public(&bob), 2)));
    let unchanged = platform.datanet.publish_snapshot(publish).await.expect("publish again").into_inner();
    assert_eq!(unchanged.id, snapshot.id, "nothing changed: the same version");

    // Anyone can check Alice's records against the sealed root.
    let proof = platform
        .datanet
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            datanet_id: datanet.id.clone(),
            snapshot_id: snapshot.id.clone(),
            contribution_id: first.id.clone(),
        })
        .await
        .expect("proof")
        .into_inner();
    let root = ContentHash::from_bytes(snapshot.merkle_root.clone().expect("root").value.try_into().expect("32"));
    assert_eq!(proof.records.len(), first.records.len());
    for record in &proof.records {
        let wire = record.proof.clone().expect("proof");
        let proof = MerkleProof {
            leaf_index: wire.leaf_index,
            tree_size: wire.tree_size,
            path: wire.path.iter().map(|h| ContentHash::from_bytes(h.value.clone().try_into().expect("32"))).collect(),
        };
        let leaf = ContentHash::from_bytes(record.record_hash.clone().expect("hash").value.try_into().expect("32"));
        assert!(proof.verify(&leaf, &root), "the proof checks against the root");
        let tampered = ContentHash::of(b"not this record");
        assert!(!proof.verify(&tampered, &root), "another leaf does not");
    }
    let no_proof = platform
        .datanet
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            datanet_id: datanet.id.clone(),
            snapshot_id: snapshot.id.clone(),
            contribution_id: spam.id.clone(),
        })
        .await;
    assert_eq!(no_proof.expect_err("spam is not in the version").code(), Code::NotFound);

    let board = platform
        .datanet
        .get_leaderboard(pb::GetLeaderboardRequest { datanet_id: datanet.id.clone(), limit: 10 })
        .await
        .expect("leaderboard")
        .into_inner();
    let bob_entry = board.entries.iter().find(|entry| entry.contributor == public(&bob)).expect("bob");
    let alice_entry = board.entries.iter().find(|entry| entry.contributor == public(&alice)).expect("alice");
    assert_eq!((alice_entry.accepted_records, alice_entry.acceptance_ratio_ppt), (first.records.len() as u64, 1000));
    assert_eq!((bob_entry.accepted_records, bob_entry.acceptance_ratio_ppt), (2, 250));
    assert!(bob_entry.duplicates_rejected >= copy.records.len() as u64);

    // Events: every contribution was submitted and decided; the snapshot was sealed once.
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    let mut sealed = 0;
    eventually("events arrive", async || {
        while let Ok(Ok(delivery)) = tokio::time::timeout(Duration::from_millis(200), events.next()).await {
            if delivery.subject == "ol.datanet.snapshot.sealed" {
                sealed += 1;
            } else {
                use prost::Message;
                let event =
                    openledger_proto::events::v1::ContributionEvent::decode(delivery.payload.clone()).expect("event");
                seen.insert((delivery.subject.clone(), event.contribution_id));
            }
            delivery.ack().await.expect("ack");
        }
        let decided = [&first.id, &original.id, &copy.id, &near.id, &spam.id];
        let all_submitted =
            decided.iter().all(|id| seen.contains(&("ol.datanet.contribution.submitted".into(), (*id).clone())));
        let accepted = [&first.id, &original.id]
            .iter()
            .all(|id| seen.contains(&("ol.datanet.contribution.accepted".into(), (*id).clone())));
        let rejected = [&copy.id, &near.id, &spam.id]
            .iter()
            .all(|id| seen.contains(&("ol.datanet.contribution.rejected".into(), (*id).clone())));
        if all_submitted && accepted && rejected && sealed == 1 {
            Ok(())
        } else {
            Err(format!("{seen:?}, sealed {sealed}"))
        }
    })
    .await;

    // A private Datanet: invisible without a grant, readable for training with one.
    let private = create(
        platform,
        &owner,
        pb::Datanet {
            slug: "private-qa".into(),
            name: "Private QA".into(),
            schema: pb::RecordSchema::InstructionResponse as i32,
            visibility: pb::Visibility::Private as i32,
            // Alice may contribute (on the allow-list) without seeing the Datanet.
            policy: Some(pb::ContributionPolicy { allowed_contributors: vec![public(&alice)], ..Default::default() }),
            ..Default::default()
        },
    )
    .await;
    let outsider = contribute(platform, &private.id, "qa.jsonl", BOB_JSONL.as_bytes(), &bob, None).await;
    assert_eq!(outsider.expect_err("outsiders cannot even probe a private Datanet").code(), Code::NotFound);
    let qa = "{\"instruction\": \"What lowers the risk of a second heart attack?\", \"response\": \"Taking the prescribed medicines, stopping smoking, regular exercise and a diet low in saturated fat all lower the risk of another heart attack.\"}\n";
    let accepted = contribute(platform, &private.id, "qa.jsonl", qa.as_bytes(), &alice, None).await.expect("qa");
    assert_eq!(status_of(&accepted), pb::ContributionStatus::Accepted, "{}", accepted.reason);
    // Enough records that reading them for training takes several pages.
    let words = [
        "patients", "should", "drink", "water", "after", "exercise", "and", "rest", "when", "tired", "doctors",
        "advise", "walking", "daily", "for", "better", "sleep", "while", "nurses", "check", "blood", "pressure",
        "before", "meals", "children", "need", "vaccines", "early", "in", "life", "to", "stay", "healthy",
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut sentence = |n: usize| {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                words[(state % words.len() as u64) as usize]
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let bulk: String = (0..600)
        .map(|_| serde_json::json!({"instruction": sentence(12), "response": sentence(30)}).to_string() + "\n")
        .collect();
    let many = contribute(platform, &private.id, "bulk.jsonl", bulk.as_bytes(), &alice, None).await.expect("bulk");
    assert_eq!(status_of(&many), pb::ContributionStatus::Accepted, "{}", many.reason);
    let fresh = many.records.iter().filter(|record| !record.duplicate).count();
    assert!(fresh > 500, "{fresh} fresh records");
    let sealed_private = platform
        .datanet
        .publish_snapshot(pb::PublishSnapshotRequest {
            datanet_id: private.id.clone(),
            signature: Some(signing::sign(&owner, &signing::publish_message(&private.id, now))),
            signed_at: now,
        })
        .await
        .expect("publish private")
        .into_inner();
    let hidden = platform
        .datanet
        .get_datanet(as_caller(pb::GetDatanetRequest { id_or_slug: private.id.clone() }, &builder))
        .await;
    assert_eq!(hidden.expect_err("invisible").code(), Code::NotFound);
    let listed =
        platform.datanet.list_datanets(pb::ListDatanetsRequest::default()).await.expect("list").into_inner().datanets;
    assert!(listed.iter().all(|d| d.id != private.id) && listed.iter().any(|d| d.id == datanet.id));
    let purpose = "fine-tune a triage assistant";
    let grant = platform
        .datanet
        .request_access(pb::RequestAccessRequest {
            datanet_id: private.id.clone(),
            purpose: purpose.into(),
            signature: Some(signing::sign(&builder, &signing::access_request_message(&private.id, purpose))),
        })
        .await
        .expect("request access")
        .into_inner();
    assert_eq!(grant.state, "requested");
    let read = pb::ReadRecordsRequest {
        datanet_id: private.id.clone(),
        snapshot_id: sealed_private.id.clone(),
        grant_id: grant.id.clone(),
        ..Default::default()
    };
    let denied = platform.datanet.read_records(as_caller(read.clone(), &builder)).await;
    assert_eq!(denied.expect_err("not granted yet").code(), Code::PermissionDenied);
    let decided = platform
        .datanet
        .decide_access(pb::DecideAccessRequest {
            datanet_id: private.id.clone(),
            grant_id: grant.id.clone(),
            approve: true,
            signature: Some(signing::sign(
                &owner,
                &signing::access_decision_message(&private.id, &grant.id, true, now),
            )),
            signed_at: now,
        })
        .await
        .expect("grant")
        .into_inner();
    assert_eq!(decided.state, "approved");
    let visible = platform
        .datanet
        .get_datanet(as_caller(pb::GetDatanetRequest { id_or_slug: "private-qa".into() }, &builder))
        .await;
    assert_eq!(visible.expect("visible to the grantee").into_inner().id, private.id);
    let granted_list = platform
        .datanet
        .list_datanets(as_caller(pb::ListDatanetsRequest::default(), &builder))
        .await
        .expect("list as the grantee")
        .into_inner()
        .datanets;
    assert!(granted_list.iter().any(|d| d.id == private.id), "the grantee lists it");
    let tagged = platform
        .datanet
        .list_datanets(pb::ListDatanetsRequest { tag: "medicine".into(), ..Default::default() })
        .await
        .expect("list by tag")
        .into_inner()
        .datanets;
    assert_eq!(tagged.iter().map(|d| d.slug.as_str()).collect::<Vec<_>>(), ["clinical-notes"]);
    let stolen = platform.datanet.read_records(as_caller(read.clone(), &bob)).await;
    assert_eq!(stolen.expect_err("the grant is the builder's").code(), Code::PermissionDenied);
    let mut stream = platform.datanet.read_records(as_caller(read, &builder)).await.expect("read").into_inner();
    let mut records = Vec::new();
    while let Some(record) = stream.message().await.expect("record") {
        records.push(record);
    }
    assert_eq!(records.len(), 1 + fresh, "every accepted record, across pages");
    let body: serde_json::Value = serde_json::from_slice(&records[0].body).expect("json body");
    assert_eq!(body["instruction"], "What lowers the risk of a second heart attack?");
    for record in &records {
        assert_eq!(ContentHash::of(&record.body).as_bytes().to_vec(), record.hash.clone().expect("hash").value);
    }
}

#[tokio::test]
async fn a_datanet_lives_its_whole_life_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
    let mut platform = InProcess::start(config.clone()).await;
    full_life(&mut platform).await;
    platform.stop().await;

    // After a restart the duplicate index is rebuilt from the database: the near-copy of
    // Alice's file is still caught.
    let mut platform = InProcess::start(config).await;
    let datanet = platform
        .datanet
        .get_datanet(pb::GetDatanetRequest { id_or_slug: "clinical-notes".into() })
        .await
        .expect("datanet")
        .into_inner();
    let carol = key(6);
    account(&mut platform, 70_003, &carol, 100 * OPEN).await;
    let again = contribute(
        &mut platform,
        &datanet.id,
        "mine.md",
        near_copy().replace("sweating", "sweat").as_bytes(),
        &carol,
        Some(70_003),
    )
    .await
    .expect("decided");
    assert_eq!(status_of(&again), pb::ContributionStatus::Duplicate, "{}", again.reason);
    platform.stop().await;
}

#[tokio::test]
async fn a_datanet_lives_its_whole_life_on_postgres_and_nats() {
    let postgres = openledger_testkit::Postgres::start();
    let nats = openledger_testkit::Nats::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        database_url: Some(postgres.create_database("datanet")),
        nats_url: Some(nats.url()),
        ..Config::default()
    };
    let mut platform = InProcess::start(config).await;
    full_life(&mut platform).await;
    platform.stop().await;
}

/// Builds a docx (zip) whose document.xml is `xml`.
fn docx(xml: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("[Content_Types].xml", options).expect("entry");
    zip.write_all(
        b"<?xml version=\"1.0\"?><Types xmlns=\"http://schemas.openxmlformats.org/package/2006/content-types\"/>",
    )
    .expect("write");
    zip.start_file("word/document.xml", options).expect("entry");
    zip.write_all(xml).expect("write");
    zip.finish().expect("zip");
    out.into_inner()
}

/// Every kind of bad input gets a clear 4xx-class error naming the problem, and nothing is
/// stored or bonded.
#[tokio::test]
async fn bad_input_is_refused_clearly_and_nothing_is_stored_or_bonded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut platform = InProcess::start(Config { data_dir: dir.path().to_path_buf(), ..Config::default() }).await;
    let (owner, alice) = (key(1), key(2));
    let alice_account = 70_001;
    account(&mut platform, alice_account, &alice, 100 * OPEN).await;
    let labelled = create(
        &mut platform,
        &owner,
        pb::Datanet {
            slug: "sentiment".into(),
            name: "Sentiment".into(),
            schema: pb::RecordSchema::LabelledText as i32,
            label_set: vec!["positive".into(), "negative".into()],
            visibility: pb::Visibility::Public as i32,
            policy: Some(pb::ContributionPolicy {
                stake_per_contribution: Some(STAKE.into()),
                max_files_per_contributor_per_day: 1,
                max_file_bytes: 100_000,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let prose = create(&mut platform, &owner, free_text("prose", STAKE)).await;

    let mut bomb_xml = b"<w:document xmlns:w=\"w\"><w:body><w:p><w:r><w:t>".to_vec();
    bomb_xml.extend(std::iter::repeat_n(b'a', 80 * 1024 * 1024));
    bomb_xml.extend_from_slice(b"</w:t></w:r></w:p></w:body></w:document>");
    let bomb = docx(&bomb_xml);
    assert!(bomb.len() < 1_000_000, "the bomb is small on the wire: {}", bomb.len());
    let cases: Vec<(&str, &str, Vec<u8>, Code, &str)> = vec![
        (
            &prose.id,
            "broken.pdf",
            b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\ngarbage".to_vec(),
            Code::InvalidArgument,
            "pdf",
        ),
        (&prose.id, "broken.docx", b"PK\x03\x04 this is not a zip".to_vec(), Code::InvalidArgument, "docx"),
        (&prose.id, "bomb.docx", bomb, Code::InvalidArgument, "decompressed"),
        (&prose.id, "latin1.txt", b"caf\xe9 au lait, the menu said".to_vec(), Code::InvalidArgument, "UTF-8"),
        (&prose.id, "empty.txt", Vec::new(), Code::InvalidArgument, "empty"),
        (&prose.id, "huge.txt", "word ".repeat(1_100_000).into_bytes(), Code::ResourceExhausted, "5000000"),
        (&labelled.id, "rows.jsonl", b"{\"text\": \"great film\"}\n".to_vec(), Code::InvalidArgument, "label"),
        (
            &labelled.id,
            "rows.jsonl",
            b"{\"text\": \"great film\", \"label\": \"ecstatic\"}\n".to_vec(),
            Code::InvalidArgument,
            "ecstatic",
        ),
        (&labelled.id, "notes.md", b"# A heading\n\nSome prose.".to_vec(), Code::InvalidArgument, "jsonl"),
        (&prose.id, "data.exe", b"MZ\x90\x00".to_vec(), Code::InvalidArgument, "txt"),
    ];
    for (datanet_id, file_name, bytes, code, mention) in cases {
        let refused = contribute(&mut platform, datanet_id, file_name, &bytes, &alice, Some(alice_account)).await;
        let status = refused.expect_err(file_name);
        assert_eq!(status.code(), code, "{file_name}: {status:?}");
        assert!(status.message().contains(mention), "{file_name}: {:?} should mention {mention:?}", status.message());
    }

    // A bad signature (signed by someone else, or over another file).
    let mut messages = upload_requests(&prose.id, "ok.txt", ALICE_MD.as_bytes(), &alice, Some(alice_account));
    if let Some(pb::contribute_request::Part::Header(header)) = &mut messages[0].part {
        header.file_name = "renamed.txt".into();
    }
    let forged = platform.datanet.contribute(futures::stream::iter(messages)).await;
    let forged = forged.expect_err("the signature covers the file name");
    assert_eq!(forged.code(), Code::Unauthenticated, "{forged:?}");
    // An account the contributor does not own.
    let stranger =
        contribute(&mut platform, &prose.id, "ok.txt", ALICE_MD.as_bytes(), &key(9), Some(alice_account)).await;
    assert_eq!(stranger.expect_err("not the owner").code(), Code::PermissionDenied);

    // Nothing was stored and no bond is held.
    for datanet in [&prose, &labelled] {
        let listed = platform
            .datanet
            .list_contributions(pb::ListContributionsRequest { datanet_id: datanet.id.clone(), ..Default::default() })
            .await
            .expect("list")
            .into_inner();
        assert!(listed.contributions.is_empty(), "{:?}", listed.contributions);
    }
    assert_eq!(balance(&mut platform, alice_account).await, (100 * OPEN, 0));

    // Over the contributor's daily limit: the first file is taken, the second refused.
    let ok = b"{\"text\": \"A moving, beautifully acted film about two brothers who rebuild their father's boat.\", \"label\": \"positive\"}\n";
    contribute(&mut platform, &labelled.id, "one.jsonl", ok, &alice, Some(alice_account)).await.expect("first file");
    let second = b"{\"text\": \"The plot wandered and the jokes fell flat; I left before the end of the second act.\", \"label\": \"negative\"}\n";
    let over = contribute(&mut platform, &labelled.id, "two.jsonl", second, &alice, Some(alice_account)).await;
    let over = over.expect_err("over the limit");
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    assert!(over.message().contains("1 files"), "{}", over.message());
    // An over-limit file holds no bond: only the accepted one's bond is held (quality pending).
    eventually("only the accepted bond is held", async || {
        let got = balance(&mut platform, alice_account).await;
        if got == (100 * OPEN, STAKE) { Ok(()) } else { Err(format!("{got:?}")) }
    })
    .await;

    // A slug shaped like an id could shadow another Datanet: refused.
    let shadow = free_text(&openledger_core::Id::new().to_string(), 0);
    let signature = signing::sign(&owner, &signing::create_message(&shadow));
    let refused = platform
        .datanet
        .create_datanet(pb::CreateDatanetRequest { datanet: Some(shadow), signature: Some(signature) })
        .await;
    assert_eq!(refused.expect_err("id-shaped slug").code(), Code::InvalidArgument);

    // A rejected file holds no credit: honest text padded with spam does not block the honest
    // contributor who sends it next.
    let open = create(&mut platform, &owner, free_text("open-prose", 0)).await;
    let honest = "{\"text\": \"Wash minor cuts with clean running water, press gently with a clean cloth until the bleeding stops, and cover them with a plaster to keep dirt out.\"}\n";
    let spam: String = [
        "buy now buy now buy now buy now buy now buy now buy now buy now",
        "cheap pills cheap pills cheap pills cheap pills cheap pills cheap pills",
        "$$$ !!! $$$ !!! $$$ !!! $$$ !!! $$$ !!! $$$ !!! $$$ !!!",
        "click here click here click here click here click here click here",
        "free money free money free money free money free money free money",
        "asdkjh qwpoeiu zxmcnv lkjhgf poiuyt mnbvcx qazwsx edcrfv tgbyhn",
    ]
    .iter()
    .map(|line| format!("{{\"text\": \"{line}\"}}\n"))
    .collect();
    let attack = format!("{honest}{spam}");
    let attacker = key(9);
    let attacked =
        contribute(&mut platform, &open.id, "padded.jsonl", attack.as_bytes(), &attacker, None).await.expect("decided");
    assert_eq!(status_of(&attacked), pb::ContributionStatus::Rejected, "{}", attacked.reason);
    let genuine =
        contribute(&mut platform, &open.id, "cuts.jsonl", honest.as_bytes(), &alice, None).await.expect("decided");
    assert_eq!(status_of(&genuine), pb::ContributionStatus::Accepted, "{}", genuine.reason);

    // The same upload sent twice at once (a client retrying) is one contribution and one bond.
    let twice = ALICE_MD.replace("Chest pain", "Chest discomfort");
    let (mut one, mut other) = (platform.clone_clients(), platform.clone_clients());
    let (first, second) = tokio::join!(
        contribute(&mut one, &prose.id, "twice.md", twice.as_bytes(), &alice, Some(alice_account)),
        contribute(&mut other, &prose.id, "twice.md", twice.as_bytes(), &alice, Some(alice_account)),
    );
    let (first, second) = (first.expect("first"), second.expect("second"));
    assert_eq!(first.id, second.id, "one contribution");
    eventually("one bond more, held", async || {
        let got = balance(&mut platform, alice_account).await;
        if got == (100 * OPEN, 2 * STAKE) { Ok(()) } else { Err(format!("{got:?}")) }
    })
    .await;
    platform.stop().await;
}

/// A process that dies after holding a bond but before storing the contribution leaves a
/// placeholder; the bond is given back once the upload counts as abandoned, and the same file
/// can be sent again.
#[tokio::test]
async fn a_bond_held_by_a_process_that_died_is_given_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
    let mut platform = InProcess::start(config.clone()).await;
    let (owner, alice) = (key(1), key(2));
    account(&mut platform, 70_001, &alice, 100 * OPEN).await;
    let datanet = create(&mut platform, &owner, free_text("crashy", STAKE)).await;

    // A second Datanets on the same database and ledger stands for the process that dies.
    let db = openledger_store::connect(&format!("sqlite://{}/openledger.db?mode=rwc", dir.path().display()))
        .await
        .expect("database");
    let objects =
        openledger_store::open_object_store(&format!("file://{}/objects", dir.path().display())).expect("objects");
    let ledger_url = format!("http://{}", platform.ledger_addr);
    let ledger = openledger_runtime::clients::ServiceChannel::new(
        ServiceKind::Ledger,
        Some(ledger_url),
        &config,
        openledger_runtime::Endpoints::default(),
    );
    let dying = openledger_datanet_ingest::Datanets::new(
        db,
        objects,
        Arc::new(openledger_datanet_ingest::bonds::LedgerBonds::new(ledger)),
    );
    let upload = || {
        let hash = ContentHash::of(ALICE_MD.as_bytes());
        openledger_datanet_ingest::Upload {
            datanet_id: datanet.id.clone(),
            file_name: "triage.md".into(),
            media_type: String::new(),
            bytes: ALICE_MD.as_bytes().to_vec().into(),
            declared_hash: Some(hash),
            signature: signing::sign(
                &alice,
                &signing::contribution_message(&datanet.id, "triage.md", &hash, Some(70_001)),
            ),
            account_id: Some(70_001),
        }
    };
    fail::cfg("datanet-after-bond-hold", "return").expect("fail point");
    let died = dying.contribute(upload()).await.expect_err("the process stops after holding the bond");
    assert!(died.message.contains("fail point"), "{died}");
    fail::remove("datanet-after-bond-hold");
    assert_eq!(balance(&mut platform, 70_001).await, (100 * OPEN, STAKE), "the bond is held");
    let listed = platform
        .datanet
        .list_contributions(pb::ListContributionsRequest { datanet_id: datanet.id.clone(), ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert!(listed.contributions.is_empty(), "a placeholder is not a contribution");
    assert_eq!(dying.resolve_bonds().await.expect("resolve"), 0, "not abandoned yet");
    assert_eq!(dying.resolve_bonds_older_than(Duration::ZERO).await.expect("resolve"), 1);
    assert_eq!(balance(&mut platform, 70_001).await, (100 * OPEN, 0), "the bond is back");
    let again = dying.contribute(upload()).await.expect("the same file again");
    assert_eq!(status_of(&again), pb::ContributionStatus::Accepted, "{}", again.reason);
    platform.stop().await;
}

/// Duplicate indexes over the process's memory budget are dropped when idle and rebuilt from
/// the database when next needed: eviction never lets a duplicate through.
#[tokio::test]
async fn duplicate_indexes_over_the_memory_budget_are_evicted_and_rebuilt() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = openledger_store::connect(&format!("sqlite://{}/db.sqlite?mode=rwc", dir.path().display()))
        .await
        .expect("database");
    openledger_store::migrate(&db).await.expect("migrate");
    let objects =
        openledger_store::open_object_store(&format!("file://{}/objects", dir.path().display())).expect("objects");
    let open = |budget: usize| {
        openledger_datanet_ingest::Datanets::new(
            db.clone(),
            objects.clone(),
            Arc::new(openledger_datanet_ingest::bonds::NoLedger),
        )
        .with_index_budget(budget)
    };
    let (owner, alice, bob) = (key(1), key(2), key(3));
    let create = async |datanets: &openledger_datanet_ingest::Datanets, slug: &str| {
        let wanted = free_text(slug, 0);
        let signature = signing::sign(&owner, &signing::create_message(&wanted));
        datanets.create(wanted, Some(signature)).await.expect("create").id
    };
    let upload = |datanet_id: &str, name: &str, text: &str, signer: &SigningKey| {
        let hash = ContentHash::of(text.as_bytes());
        openledger_datanet_ingest::Upload {
            datanet_id: datanet_id.into(),
            file_name: name.into(),
            media_type: String::new(),
            bytes: text.as_bytes().to_vec().into(),
            declared_hash: Some(hash),
            signature: signing::sign(signer, &signing::contribution_message(datanet_id, name, &hash, None)),
            account_id: None,
        }
    };
    let roomy = open(usize::MAX);
    let first = create(&roomy, "first").await;
    roomy.contribute(upload(&first, "a.md", ALICE_MD, &alice)).await.expect("kept");
    assert!(roomy.indexed_records() > 0, "within budget the index stays loaded");

    let tight = open(1);
    let second = create(&tight, "second").await;
    tight.contribute(upload(&first, "a.md", ALICE_MD, &alice)).await.expect("retry");
    tight.contribute(upload(&second, "b.jsonl", BOB_JSONL, &bob)).await.expect("second");
    assert_eq!(tight.indexed_records(), 0, "over budget, idle indexes are dropped");
    let near = tight.contribute(upload(&first, "near.md", &near_copy(), &bob)).await.expect("decided");
    assert_eq!(status_of(&near), pb::ContributionStatus::Duplicate, "rebuilt from the database: {}", near.reason);
}
