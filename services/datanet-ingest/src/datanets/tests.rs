//! The service core against a scripted ledger, on SQLite and PostgreSQL: bond clean-up that
//! branches on the ledger's answer code, and uniqueness read from the database's error code.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ed25519_dalek::SigningKey;
use openledger_core::{ContentHash, ErrorCode};
use openledger_proto::{
    datanet::v1 as pb,
    events::v1::{QualityAssessed, SlashingCandidate},
};
use openledger_runtime::consume::Handled;
use prost::Message;
use sea_orm::{ActiveModelTrait, DatabaseConnection, EntityTrait, PaginatorTrait, Set};

use object_store::ObjectStore;

use super::{Datanets, Upload, definitions::is_unique_violation};
use crate::{
    DatanetError,
    bonds::{Bonds, Resolved},
    entities::{contribution, datanet},
    signing::{self, Key},
};

const STAKE: u128 = 10;
const ACCOUNT: u128 = 7;

/// A ledger that keeps holds in memory and can be cut off: while unreachable every call fails
/// before reaching it (nothing is held or released). Like the ledger, releasing or slashing a
/// bond again answers `Done` and changes nothing.
#[derive(Default)]
struct ScriptedLedger {
    held: parking_lot::Mutex<HashMap<String, u128>>,
    /// Bonds released and slashed, in order, each once.
    released: parking_lot::Mutex<Vec<String>>,
    slashed: parking_lot::Mutex<Vec<String>>,
    unreachable: AtomicBool,
}

impl ScriptedLedger {
    fn reach(&self) -> Result<(), DatanetError> {
        if self.unreachable.load(Ordering::SeqCst) {
            return Err(DatanetError::new(ErrorCode::Unavailable, "the ledger cannot be reached"));
        }
        Ok(())
    }

    fn resolve(&self, contribution_id: &str, slash: bool) -> Result<Resolved, DatanetError> {
        self.reach()?;
        if self.held.lock().remove(contribution_id).is_some() {
            let resolved = if slash { &self.slashed } else { &self.released };
            resolved.lock().push(contribution_id.to_owned());
            return Ok(Resolved::Done);
        }
        let id = contribution_id.to_owned();
        let earlier = self.released.lock().contains(&id) || self.slashed.lock().contains(&id);
        Ok(if earlier { Resolved::Done } else { Resolved::NotHeld })
    }
}

#[async_trait::async_trait]
impl Bonds for ScriptedLedger {
    async fn check_owner(&self, _account: u128, _key: &Key) -> Result<(), DatanetError> {
        Ok(())
    }

    async fn hold(&self, contribution_id: &str, _account: u128, amount: u128) -> Result<(), DatanetError> {
        self.reach()?;
        self.held.lock().insert(contribution_id.to_owned(), amount);
        Ok(())
    }

    async fn release(&self, contribution_id: &str, _reason: &str) -> Result<Resolved, DatanetError> {
        self.resolve(contribution_id, false)
    }

    async fn slash(&self, contribution_id: &str, _reason: &str) -> Result<Resolved, DatanetError> {
        self.resolve(contribution_id, true)
    }
}

async fn sqlite(dir: &tempfile::TempDir) -> DatabaseConnection {
    let db = openledger_store::connect(&format!("sqlite://{}/db.sqlite?mode=rwc", dir.path().display()))
        .await
        .expect("database");
    openledger_store::migrate(&db).await.expect("migrate");
    db
}

fn objects(dir: &tempfile::TempDir) -> Arc<dyn ObjectStore> {
    openledger_store::open_object_store(&format!("file://{}/objects", dir.path().display())).expect("objects")
}

fn staked_datanet(slug: &str) -> pb::Datanet {
    pb::Datanet {
        slug: slug.into(),
        name: slug.into(),
        licence: "CC0".into(),
        schema: pb::RecordSchema::FreeText as i32,
        visibility: pb::Visibility::Public as i32,
        policy: Some(pb::ContributionPolicy { stake_per_contribution: Some(STAKE.into()), ..Default::default() }),
        ..Default::default()
    }
}

async fn create(datanets: &Datanets, owner: &SigningKey, wanted: pb::Datanet) -> pb::Datanet {
    let signature = signing::sign(owner, &signing::create_message(&wanted));
    datanets.create(wanted, Some(signature)).await.expect("create")
}

const TEXT: &str = "Hand washing with soap for at least twenty seconds removes most germs that cause \
diarrhoea and respiratory infections. Alcohol gel helps when soap and water are not available, and \
carers should wash before meals and after using the toilet.\n";

const TEXT_2: &str = "Dehydration in older adults often presents with confusion rather than thirst. Carers \
should offer fluids regularly and watch for dark urine, dizziness on standing and a dry mouth, and call a \
doctor when an older person has drunk almost nothing for a whole day.\n";

const TEXT_3: &str = "A fever in a baby younger than three months needs prompt medical assessment, because \
serious infections can progress quickly at that age even when the child seems well. Parents should measure \
the temperature with a thermometer rather than by touch, and note how the baby feeds.\n";

const SPAM: &str = "buy now buy now buy now cheap pills buy now buy now buy now cheap pills buy now buy now \
buy now cheap pills buy now buy now buy now cheap pills buy now buy now buy now cheap pills buy now buy now \
$$$ !!! $$$ !!! $$$ !!! buy now buy now buy now cheap pills buy now buy now buy now cheap pills\n";

fn upload(datanet_id: &str, contributor: &SigningKey) -> Upload {
    upload_of(datanet_id, contributor, ("washing.md", TEXT), Some(ACCOUNT))
}

/// A signed upload of `(file name, text)`, bonded from `account` when given.
fn upload_of(
    datanet_id: &str,
    contributor: &SigningKey,
    (file_name, text): (&str, &str),
    account: Option<u128>,
) -> Upload {
    let hash = ContentHash::of(text.as_bytes());
    Upload {
        datanet_id: datanet_id.into(),
        file_name: file_name.into(),
        media_type: String::new(),
        bytes: text.as_bytes().to_vec().into(),
        declared_hash: Some(hash),
        signature: signing::sign(contributor, &signing::contribution_message(datanet_id, file_name, &hash, account)),
        account_id: account,
    }
}

async fn publish(datanets: &Datanets, owner: &SigningKey, datanet_id: &str) -> pb::Snapshot {
    let now = signing::now_unix();
    datanets
        .publish(pb::PublishSnapshotRequest {
            datanet_id: datanet_id.into(),
            signature: Some(signing::sign(owner, &signing::publish_message(datanet_id, now))),
            signed_at: now,
        })
        .await
        .expect("publish")
}

async fn stored_contributions(db: &DatabaseConnection) -> u64 {
    contribution::Entity::find().count(db).await.expect("count")
}

#[tokio::test]
async fn an_abandoned_placeholder_whose_hold_never_reached_the_ledger_is_cleaned_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sqlite(&dir).await;
    let ledger = Arc::new(ScriptedLedger::default());
    let datanets = Datanets::new(db.clone(), objects(&dir), ledger.clone());
    let (owner, alice) = (SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32]));
    let datanet = create(&datanets, &owner, staked_datanet("washing")).await;

    // The ledger is cut off: the hold never reaches it, and neither does the give-back.
    ledger.unreachable.store(true, Ordering::SeqCst);
    let refused = datanets.contribute(upload(&datanet.id, &alice)).await.expect_err("no ledger");
    assert_eq!(refused.code, ErrorCode::Unavailable, "{refused}");
    assert_eq!(stored_contributions(&db).await, 1, "the placeholder stays until the ledger answers");

    ledger.unreachable.store(false, Ordering::SeqCst);
    assert_eq!(datanets.resolve_bonds().await.expect("resolve"), 0, "not abandoned yet");
    assert_eq!(datanets.resolve_bonds_older_than(Duration::ZERO).await.expect("resolve"), 1);
    assert_eq!(stored_contributions(&db).await, 0, "the ledger held no bond: the placeholder is removed");
    assert!(ledger.held.lock().is_empty());

    let again = datanets.contribute(upload(&datanet.id, &alice)).await.expect("the same file again");
    assert_eq!(again.status, pb::ContributionStatus::Accepted as i32, "{}", again.reason);
    assert_eq!(ledger.held.lock().keys().collect::<Vec<_>>(), [&again.id], "held until its quality is known");
}

#[tokio::test]
async fn a_hold_refused_at_once_leaves_no_placeholder() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sqlite(&dir).await;
    let ledger = Arc::new(ScriptedLedger::default());
    let datanets = Datanets::new(db.clone(), objects(&dir), ledger.clone());
    let (owner, alice) = (SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32]));
    let datanet = create(&datanets, &owner, staked_datanet("washing")).await;

    /// Refuses every hold; releases answer as the ledger does for a bond never held.
    struct RefusingLedger;

    #[async_trait::async_trait]
    impl Bonds for RefusingLedger {
        async fn check_owner(&self, _account: u128, _key: &Key) -> Result<(), DatanetError> {
            Ok(())
        }
        async fn hold(&self, _id: &str, _account: u128, _amount: u128) -> Result<(), DatanetError> {
            Err(DatanetError::new(ErrorCode::FailedPrecondition, "the account cannot cover the bond"))
        }
        async fn release(&self, _id: &str, _reason: &str) -> Result<Resolved, DatanetError> {
            Ok(Resolved::NotHeld)
        }
        async fn slash(&self, _id: &str, _reason: &str) -> Result<Resolved, DatanetError> {
            Ok(Resolved::NotHeld)
        }
    }
    let refusing = Datanets::new(db.clone(), objects(&dir), Arc::new(RefusingLedger));
    let refused = refusing.contribute(upload(&datanet.id, &alice)).await.expect_err("refused");
    assert_eq!(refused.code, ErrorCode::FailedPrecondition, "{refused}");
    assert_eq!(stored_contributions(&db).await, 0, "the give-back saw NOT_HELD and removed the placeholder");
}

/// Inserting a second Datanet row with a taken slug is recognised by the database's error code.
async fn unique_violations_are_read_from_the_error_code(db: &DatabaseConnection) {
    let row = |id: &str| datanet::ActiveModel {
        id: Set(id.to_owned()),
        slug: Set("taken".into()),
        name: Set("taken".into()),
        summary: Set(String::new()),
        description: Set(String::new()),
        tags: Set("[]".into()),
        schema: Set(pb::RecordSchema::FreeText as i16),
        label_set: Set("[]".into()),
        licence: Set("CC0".into()),
        visibility: Set(pb::Visibility::Public as i16),
        policy: Set(Vec::new()),
        owner: Set(vec![1; 32]),
        validators: Set(Vec::new()),
        created_at: Set(0),
        revision: Set(0),
        index_generation: Set(0),
    };
    row("first").insert(db).await.expect("first");
    let error = row("second").insert(db).await.expect_err("the slug is taken");
    assert!(is_unique_violation(&error), "{error}");
    let worded = sea_orm::DbErr::Custom("UNIQUE constraint failed: datanets.slug".into());
    assert!(!is_unique_violation(&worded), "wording alone is not a unique violation");
}

#[tokio::test]
async fn unique_violations_are_read_from_the_error_code_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    unique_violations_are_read_from_the_error_code(&sqlite(&dir).await).await;
}

#[tokio::test]
async fn unique_violations_are_read_from_the_error_code_on_postgres() {
    let postgres = openledger_testkit::Postgres::start();
    let db = openledger_store::connect(&postgres.create_database("unique")).await.expect("database");
    openledger_store::migrate(&db).await.expect("migrate");
    unique_violations_are_read_from_the_error_code(&db).await;
}

/// `CheckReadAccess` and a read for a grantee: no version 409, no grant 403, a private Datanet
/// its never-asked grantee cannot see 404; once granted, the read for the grantee is logged
/// with its reader and returns the version's records.
#[tokio::test]
async fn a_service_reads_for_a_grantee_only_under_an_approved_grant() {
    use futures::TryStreamExt;

    let dir = tempfile::tempdir().expect("temp dir");
    let db = sqlite(&dir).await;
    let datanets = Arc::new(Datanets::new(db.clone(), objects(&dir), Arc::new(ScriptedLedger::default())));
    let (owner, builder, stranger) =
        (SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32]), SigningKey::from_bytes(&[3; 32]));
    let grantee = builder.verifying_key().to_bytes().to_vec();
    let datanet = create(&datanets, &owner, pb::Datanet { policy: None, ..staked_datanet("washing") }).await;
    let check = |grantee: &SigningKey, version: &str| pb::CheckReadAccessRequest {
        datanet: "washing".into(),
        snapshot_id: version.into(),
        grantee: grantee.verifying_key().to_bytes().to_vec(),
        grant_id: String::new(),
    };
    let code = |result: Result<pb::ReadAccess, DatanetError>| result.expect_err("refused").code;
    let mut upload = upload(&datanet.id, &owner);
    upload.account_id = None;
    upload.signature = signing::sign(
        &owner,
        &signing::contribution_message(&datanet.id, "washing.md", &ContentHash::of(TEXT.as_bytes()), None),
    );
    datanets.contribute(upload).await.expect("contribute");
    // Requested: no approved grant yet.
    let purpose = "train";
    let asked = datanets
        .request_access(pb::RequestAccessRequest {
            datanet_id: datanet.id.clone(),
            purpose: purpose.into(),
            signature: Some(signing::sign(&builder, &signing::access_request_message(&datanet.id, purpose))),
        })
        .await
        .expect("ask");
    assert_eq!(code(datanets.check_read_access(&check(&builder, "latest")).await), ErrorCode::PermissionDenied);
    assert_eq!(code(datanets.check_read_access(&check(&stranger, "latest")).await), ErrorCode::PermissionDenied);
    let now = signing::now_unix();
    datanets
        .decide_access(pb::DecideAccessRequest {
            datanet_id: datanet.id.clone(),
            grant_id: asked.id.clone(),
            approve: true,
            signature: Some(signing::sign(
                &owner,
                &signing::access_decision_message(&datanet.id, &asked.id, true, now),
            )),
            signed_at: now,
        })
        .await
        .expect("approve");
    // Granted, but nothing sealed yet.
    assert_eq!(code(datanets.check_read_access(&check(&builder, "latest")).await), ErrorCode::FailedPrecondition);
    let now = signing::now_unix();
    datanets
        .publish(pb::PublishSnapshotRequest {
            datanet_id: datanet.id.clone(),
            signature: Some(signing::sign(&owner, &signing::publish_message(&datanet.id, now))),
            signed_at: now,
        })
        .await
        .expect("publish");
    assert_eq!(code(datanets.check_read_access(&check(&builder, "7")).await), ErrorCode::NotFound);
    let access = datanets.check_read_access(&check(&builder, "1")).await.expect("granted");
    assert_eq!((access.grant_id.as_str(), access.slug.as_str()), (asked.id.as_str(), "washing"));
    let version = access.snapshot.clone().expect("version");
    let read = pb::ReadRecordsRequest {
        datanet_id: datanet.id.clone(),
        snapshot_id: version.id.clone(),
        grant_id: String::new(),
        grantee: grantee.clone(),
        reader: "job:ftjob-1".into(),
        attribution: false,
    };
    let records: Vec<pb::Record> =
        datanets.read_records(&read, None).await.expect("read").try_collect().await.expect("records");
    assert_eq!(records.len() as u64, version.record_count);
    assert_eq!(
        records.iter().map(|record| record.position).collect::<Vec<_>>(),
        (0..version.record_count).collect::<Vec<_>>()
    );
    assert!(
        records.iter().all(|record| record.contributor_account_id.is_none()),
        "an unbonded contribution names no account"
    );
    let logged = crate::entities::read::Entity::find().all(&db).await.expect("reads");
    assert_eq!(
        (logged.len(), logged[0].reader.as_str(), logged[0].grantee.clone()),
        (1, "job:ftjob-1", grantee.clone())
    );
    // A signed caller and a grantee at once is refused; a stranger's key reads nothing.
    let both = datanets.read_records(&read, Some(owner.verifying_key().to_bytes())).await;
    assert_eq!(both.err().expect("both").code, ErrorCode::InvalidArgument);
    let stranger_read = pb::ReadRecordsRequest { grantee: stranger.verifying_key().to_bytes().to_vec(), ..read };
    assert_eq!(
        datanets.read_records(&stranger_read, None).await.err().expect("stranger").code,
        ErrorCode::PermissionDenied
    );
    // A private Datanet is invisible to a key that never asked for it.
    create(
        &datanets,
        &owner,
        pb::Datanet { visibility: pb::Visibility::Private as i32, policy: None, ..staked_datanet("hidden") },
    )
    .await;
    let hidden = pb::CheckReadAccessRequest { datanet: "hidden".into(), ..check(&stranger, "latest") };
    assert_eq!(code(datanets.check_read_access(&hidden).await), ErrorCode::NotFound);
}

/// A staked public Datanet and its owner, over a scripted ledger on SQLite.
struct Staked {
    _dir: tempfile::TempDir,
    db: DatabaseConnection,
    ledger: Arc<ScriptedLedger>,
    datanets: Arc<Datanets>,
    owner: SigningKey,
    datanet: pb::Datanet,
}

impl Staked {
    async fn new(slug: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sqlite(&dir).await;
        Self::on(db, dir, slug).await
    }

    /// On `db` (migrated), with objects under `dir`.
    async fn on(db: DatabaseConnection, dir: tempfile::TempDir, slug: &str) -> Self {
        let ledger = Arc::new(ScriptedLedger::default());
        let datanets = Arc::new(Datanets::new(db.clone(), objects(&dir), ledger.clone()));
        let owner = SigningKey::from_bytes(&[1; 32]);
        let datanet = create(&datanets, &owner, staked_datanet(slug)).await;
        Self { _dir: dir, db, ledger, datanets, owner, datanet }
    }
}

fn status(contribution: &pb::Contribution) -> pb::ContributionStatus {
    pb::ContributionStatus::try_from(contribution.status).expect("a known status")
}

async fn bond_state(datanets: &Datanets, contribution: &pb::Contribution) -> String {
    datanets.contribution(&contribution.datanet_id, &contribution.id, None).await.expect("contribution").bond_state
}

/// The attribution-worker reads a private Datanet's sealed version without a grant; the read
/// is logged with its reader and no grant, and every record carries its position in the
/// version and its contribution's bond account.
#[tokio::test]
async fn an_attribution_read_of_a_private_datanet_needs_no_grant_and_is_logged() {
    use futures::TryStreamExt;

    let dir = tempfile::tempdir().expect("temp dir");
    let db = sqlite(&dir).await;
    let datanets = Arc::new(Datanets::new(db.clone(), objects(&dir), Arc::new(ScriptedLedger::default())));
    let owner = SigningKey::from_bytes(&[1; 32]);
    let private = pb::Datanet { visibility: pb::Visibility::Private as i32, ..staked_datanet("private-notes") };
    let datanet = create(&datanets, &owner, private).await;
    let first = datanets.contribute(upload_of(&datanet.id, &owner, ("a.md", TEXT), Some(7))).await.expect("first");
    let second = datanets.contribute(upload_of(&datanet.id, &owner, ("b.md", TEXT_2), Some(8))).await.expect("second");
    assert_eq!((status(&first), status(&second)), (pb::ContributionStatus::Accepted, pb::ContributionStatus::Accepted));
    let version = publish(&datanets, &owner, &datanet.id).await;
    let read = pb::ReadRecordsRequest {
        datanet_id: datanet.id.clone(),
        snapshot_id: version.id.clone(),
        reader: "attribution:span-index".into(),
        attribution: true,
        ..Default::default()
    };

    let records: Vec<pb::Record> =
        datanets.read_records(&read, None).await.expect("no grant needed").try_collect().await.expect("records");

    assert_eq!(records.len() as u64, version.record_count);
    assert_eq!(
        records.iter().map(|record| record.position).collect::<Vec<_>>(),
        (0..version.record_count).collect::<Vec<_>>()
    );
    for record in &records {
        let account = if record.contribution_id == first.id { 7 } else { 8 };
        assert_eq!(record.contributor_account_id.map(u128::from), Some(account), "{}", record.contribution_id);
    }
    let ids: std::collections::BTreeSet<&str> = records.iter().map(|record| record.contribution_id.as_str()).collect();
    assert_eq!(ids, [first.id.as_str(), second.id.as_str()].into(), "both contributions are in the version");
    let logged = crate::entities::read::Entity::find().all(&db).await.expect("reads");
    assert_eq!(logged.len(), 1);
    assert_eq!(
        (logged[0].grant_id.as_str(), logged[0].reader.as_str(), logged[0].grantee.len(), logged[0].records),
        ("", "attribution:span-index", 0, version.record_count as i64),
        "logged with its reader and no grant"
    );

    // Without `attribution` the same request is a grantee's read and needs an identity; an
    // attribution read naming a grantee is contradictory; one naming no reader is logged as
    // `attribution`.
    let unsigned = pb::ReadRecordsRequest { attribution: false, ..read.clone() };
    assert_eq!(
        datanets.read_records(&unsigned, None).await.err().expect("no identity").code,
        ErrorCode::Unauthenticated
    );
    let with_grantee = pb::ReadRecordsRequest { grantee: vec![2; 32], ..read.clone() };
    assert_eq!(
        datanets.read_records(&with_grantee, None).await.err().expect("grantee").code,
        ErrorCode::InvalidArgument
    );
    let anonymous = pb::ReadRecordsRequest { reader: String::new(), ..read };
    drop(datanets.read_records(&anonymous, None).await.expect("read"));
    let readers: Vec<String> = crate::entities::read::Entity::find()
        .all(&db)
        .await
        .expect("reads")
        .into_iter()
        .map(|read| read.reader)
        .collect();
    assert!(readers.contains(&super::access::ATTRIBUTION_READER.to_owned()), "{readers:?}");
}

/// An accepted contribution's bond stays held on the ledger, shown as waiting for quality;
/// the housekeeping pass leaves it alone until the quality timeout.
#[tokio::test]
async fn an_accepted_contributions_bond_stays_held_until_its_quality_is_known() {
    let Staked { ledger, datanets, datanet, .. } = &Staked::new("washing").await;
    let alice = SigningKey::from_bytes(&[2; 32]);

    let accepted = datanets.contribute(upload(&datanet.id, &alice)).await.expect("contribute");

    assert_eq!(status(&accepted), pb::ContributionStatus::Accepted, "{}", accepted.reason);
    assert_eq!(accepted.bond_state, "held: quality pending");
    assert_eq!(datanets.resolve_bonds().await.expect("housekeeping"), 0);
    assert_eq!(ledger.held.lock().get(&accepted.id), Some(&STAKE), "still held on the ledger");
    assert!(ledger.released.lock().is_empty() && ledger.slashed.lock().is_empty());
}

/// A contribution approved by review keeps its bond held until its quality is known, like
/// one accepted at once; one rejected by review is slashed at once.
#[tokio::test]
async fn a_review_approval_holds_the_bond_for_quality_and_a_rejection_slashes_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Arc::new(ScriptedLedger::default());
    let datanets = Datanets::new(sqlite(&dir).await, objects(&dir), ledger.clone());
    let (owner, alice) = (SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32]));
    let mut reviewed = staked_datanet("reviewed");
    if let Some(policy) = reviewed.policy.as_mut() {
        policy.review_all = true;
    }
    let datanet = create(&datanets, &owner, reviewed).await;
    let review = |contribution: &pb::Contribution, approve: bool| pb::ReviewContributionRequest {
        datanet_id: datanet.id.clone(),
        contribution_id: contribution.id.clone(),
        approve,
        reason: String::new(),
        signature: Some(signing::sign(&owner, &signing::review_message(&datanet.id, &contribution.id, approve, ""))),
    };
    let first = datanets.contribute(upload(&datanet.id, &alice)).await.expect("first");
    let second = datanets.contribute(upload_of(&datanet.id, &alice, ("b.md", TEXT_2), Some(8))).await.expect("second");
    assert_eq!((status(&first), first.bond_state.as_str()), (pb::ContributionStatus::PendingReview, "held"));

    let approved = datanets.review(review(&first, true)).await.expect("approve");
    let rejected = datanets.review(review(&second, false)).await.expect("reject");

    assert_eq!(
        (status(&approved), approved.bond_state.as_str()),
        (pb::ContributionStatus::Accepted, "held: quality pending")
    );
    assert_eq!((status(&rejected), rejected.bond_state.as_str()), (pb::ContributionStatus::Rejected, "slashed"));
    assert_eq!(ledger.held.lock().keys().collect::<Vec<_>>(), [&first.id]);
    assert_eq!(*ledger.slashed.lock(), [second.id.as_str()]);
}

/// A quality assessment of a sealed version releases the bonds of its contributions and
/// slashes the candidate's with the evidence recorded, exactly once however often it is
/// delivered; a contribution outside the version keeps waiting.
async fn a_quality_assessment_releases_the_others_and_slashes_the_candidate_exactly_once(staked: &Staked) {
    use openledger_bus::{BusSettings, ConsumerConfig, EventBus, InProcessBus, OutgoingMessage};

    let Staked { db, ledger, datanets, owner, datanet, .. } = staked;
    let (alice, bob, carol) =
        (SigningKey::from_bytes(&[2; 32]), SigningKey::from_bytes(&[3; 32]), SigningKey::from_bytes(&[4; 32]));
    let good = datanets.contribute(upload(&datanet.id, &alice)).await.expect("alice");
    let harmful = datanets.contribute(upload_of(&datanet.id, &bob, ("b.md", TEXT_2), Some(8))).await.expect("bob");
    let version = publish(datanets, owner, &datanet.id).await;
    let late = datanets.contribute(upload_of(&datanet.id, &carol, ("c.md", TEXT_3), Some(9))).await.expect("carol");
    for contribution in [&good, &harmful, &late] {
        assert_eq!(status(contribution), pb::ContributionStatus::Accepted, "{}", contribution.reason);
    }
    let assessed = QualityAssessed {
        datanet_id: datanet.id.clone(),
        snapshot_id: version.id.clone(),
        adapter_id: "ft:care-1".into(),
        // Carol's contribution is not in the assessed version.
        contribution_ids: vec![good.id.clone(), harmful.id.clone(), late.id.clone()],
        candidates: vec![SlashingCandidate {
            contribution_id: harmful.id.clone(),
            contributor: bob.verifying_key().to_bytes().to_vec(),
            score: -4.25,
            evidence: "influence on the validation loss 4.25 deviations below the typical record".into(),
        }],
        estimator: "tracin-lora".into(),
        threshold: 3.5,
        at: None,
    };

    // First delivery, through the durable consumer.
    let bus = InProcessBus::new(BusSettings::default());
    let mut consumer = bus
        .consumer(ConsumerConfig::new(crate::limits::QUALITY_CONSUMER, super::SUBJECT_QUALITY_ASSESSED))
        .await
        .expect("consumer");
    bus.publish(OutgoingMessage::new(super::SUBJECT_QUALITY_ASSESSED, "quality:1", assessed.encode_to_vec()))
        .await
        .expect("publish");
    let delivery = consumer.next().await.expect("delivery");
    assert_eq!(datanets.handle_quality(&delivery.id, &delivery.payload).await, Handled::Ack);
    delivery.ack().await.expect("ack");
    // The bond decisions go to the ledger in the background; the housekeeping pass finishes
    // whatever is still on its way.
    datanets.resolve_bonds().await.expect("housekeeping");

    assert_eq!(*ledger.released.lock(), [good.id.as_str()]);
    assert_eq!(*ledger.slashed.lock(), [harmful.id.as_str()]);
    assert_eq!(bond_state(datanets, &good).await, "released");
    assert_eq!(bond_state(datanets, &harmful).await, "slashed");
    assert_eq!(bond_state(datanets, &late).await, "held: quality pending", "not in the assessed version");
    // The evidence is shown with the slashed contribution, and only there.
    let shown = datanets.contribution(&harmful.datanet_id, &harmful.id, None).await.expect("contribution");
    let slash = shown.slash.expect("the slash's evidence");
    assert_eq!(
        (slash.snapshot_id.as_str(), slash.adapter_id.as_str(), slash.estimator.as_str()),
        (version.id.as_str(), "ft:care-1", "tracin-lora")
    );
    assert_eq!((slash.score, slash.threshold, slash.event_id.as_str()), (-4.25, 3.5, "quality:1"));
    assert_eq!(slash.evidence, assessed.candidates[0].evidence);
    assert!(slash.at.is_some());
    let released = datanets.contribution(&good.datanet_id, &good.id, None).await.expect("contribution");
    assert!(released.slash.is_none());
    let evidence = crate::entities::bond_slash::Entity::find().all(db).await.expect("evidence");
    assert_eq!(evidence.len(), 1);
    let recorded = &evidence[0];
    assert_eq!(
        (recorded.contribution_id.as_str(), recorded.snapshot_id.as_str(), recorded.adapter_id.as_str()),
        (harmful.id.as_str(), version.id.as_str(), "ft:care-1")
    );
    assert_eq!((recorded.estimator.as_str(), recorded.score, recorded.threshold), ("tracin-lora", -4.25, 3.5));
    assert_eq!(
        (recorded.evidence.as_str(), recorded.event_id.as_str()),
        (assessed.candidates[0].evidence.as_str(), "quality:1")
    );

    // Delivered again (a redelivery after a lost ack), and republished under another id.
    let again = datanets.record_quality("quality:1", &assessed).await.expect("again");
    assert!(again.repeated && again.decided().next().is_none(), "{again:?}");
    let republished = datanets.record_quality("quality:2", &assessed).await.expect("republished");
    assert!(!republished.repeated && republished.decided().next().is_none(), "{republished:?}");
    datanets.apply_bond_decisions(republished.decided()).await;
    assert_eq!(datanets.resolve_bonds().await.expect("housekeeping"), 0);
    assert_eq!((ledger.released.lock().len(), ledger.slashed.lock().len()), (1, 1), "each bond resolved once");
    assert_eq!(crate::entities::bond_slash::Entity::find().count(db).await.expect("count"), 1);
    assert_eq!(ledger.held.lock().keys().collect::<Vec<_>>(), [&late.id]);
}

#[tokio::test]
async fn a_quality_assessment_releases_the_others_and_slashes_the_candidate_exactly_once_on_sqlite() {
    a_quality_assessment_releases_the_others_and_slashes_the_candidate_exactly_once(&Staked::new("care").await).await;
}

#[tokio::test]
async fn a_quality_assessment_releases_the_others_and_slashes_the_candidate_exactly_once_on_postgres() {
    let postgres = openledger_testkit::Postgres::start();
    let db = openledger_store::connect(&postgres.create_database("quality")).await.expect("database");
    openledger_store::migrate(&db).await.expect("migrate");
    let staked = Staked::on(db, tempfile::tempdir().expect("temp dir"), "care").await;
    a_quality_assessment_releases_the_others_and_slashes_the_candidate_exactly_once(&staked).await;
}

/// An assessment recorded while the ledger is unreachable keeps its decisions, which the
/// housekeeping pass applies once the ledger answers; one naming a version never sealed here,
/// or not protobuf at all, is poison and records nothing.
#[tokio::test]
async fn quality_decisions_survive_an_unreachable_ledger_and_unknown_versions_are_refused() {
    let Staked { ledger, datanets, owner, datanet, .. } = &Staked::new("washing").await;
    let alice = SigningKey::from_bytes(&[2; 32]);
    let accepted = datanets.contribute(upload(&datanet.id, &alice)).await.expect("contribute");
    let version = publish(datanets, owner, &datanet.id).await;
    let assessed = |snapshot_id: &str| QualityAssessed {
        datanet_id: datanet.id.clone(),
        snapshot_id: snapshot_id.into(),
        adapter_id: "ft:washing-1".into(),
        contribution_ids: vec![accepted.id.clone()],
        estimator: "tracin-lora".into(),
        threshold: 3.5,
        ..Default::default()
    };

    let unknown = assessed("no-such-version").encode_to_vec();
    assert!(matches!(datanets.handle_quality("quality:1", &unknown).await, Handled::Poison(_)));
    assert!(matches!(datanets.handle_quality("quality:1", b"\xff not protobuf").await, Handled::Poison(_)));
    ledger.unreachable.store(true, Ordering::SeqCst);
    // The refused event left no trace: the same id is a first delivery.
    let decisions = datanets.record_quality("quality:1", &assessed(&version.id)).await.expect("recorded");
    assert!(!decisions.repeated);
    datanets.apply_bond_decisions(decisions.decided()).await;
    assert_eq!(decisions.released, [accepted.id.as_str()]);
    assert_eq!(bond_state(datanets, &accepted).await, "held", "decided, waiting for the ledger");

    ledger.unreachable.store(false, Ordering::SeqCst);
    assert_eq!(datanets.resolve_bonds().await.expect("housekeeping"), 1);
    assert_eq!(bond_state(datanets, &accepted).await, "released");
    assert_eq!(*ledger.released.lock(), [accepted.id.as_str()]);
}

/// With no assessment, the housekeeping pass releases an accepted contribution's bond once
/// the quality timeout has passed, and only then.
#[tokio::test]
async fn the_quality_timeout_releases_an_unassessed_bond() {
    let Staked { ledger, datanets, datanet, .. } = &Staked::new("washing").await;
    let alice = SigningKey::from_bytes(&[2; 32]);
    let accepted = datanets.contribute(upload(&datanet.id, &alice)).await.expect("contribute");

    let timeout = Duration::from_millis(crate::limits::BOND_QUALITY_TIMEOUT_MS);
    assert_eq!(datanets.release_unassessed_bonds_older_than(timeout).await.expect("housekeeping"), 0);
    assert_eq!(bond_state(datanets, &accepted).await, "held: quality pending");

    // As if the timeout had passed since the acceptance.
    assert_eq!(datanets.release_unassessed_bonds_older_than(Duration::ZERO).await.expect("housekeeping"), 1);
    assert_eq!(bond_state(datanets, &accepted).await, "released");
    assert_eq!(*ledger.released.lock(), [accepted.id.as_str()]);
    assert!(ledger.slashed.lock().is_empty() && ledger.held.lock().is_empty());
    assert_eq!(datanets.release_unassessed_bonds_older_than(Duration::ZERO).await.expect("again"), 0);
}

/// Spam and duplicates are still slashed at once, without waiting for any assessment.
#[tokio::test]
async fn spam_and_duplicates_are_still_slashed_at_once() {
    let Staked { ledger, datanets, datanet, .. } = &Staked::new("washing").await;
    let (alice, bob) = (SigningKey::from_bytes(&[2; 32]), SigningKey::from_bytes(&[3; 32]));
    let original = datanets.contribute(upload(&datanet.id, &alice)).await.expect("original");

    let copy = datanets.contribute(upload(&datanet.id, &bob)).await.expect("copy");
    let spam = datanets.contribute(upload_of(&datanet.id, &bob, ("offer.txt", SPAM), Some(8))).await.expect("spam");

    assert_eq!(status(&copy), pb::ContributionStatus::Duplicate, "{}", copy.reason);
    assert_eq!(status(&spam), pb::ContributionStatus::Rejected, "{}", spam.reason);
    assert_eq!((copy.bond_state.as_str(), spam.bond_state.as_str()), ("slashed", "slashed"));
    assert_eq!(*ledger.slashed.lock(), [copy.id.clone(), spam.id.clone()]);
    assert_eq!(ledger.held.lock().keys().collect::<Vec<_>>(), [&original.id], "only the accepted bond waits");
}

/// Earnings the ledger reports per account; can be cut off.
#[derive(Default)]
struct ScriptedEarnings {
    earned: HashMap<u128, u128>,
    unreachable: AtomicBool,
}

#[async_trait::async_trait]
impl crate::earnings::Earnings for ScriptedEarnings {
    async fn earned(&self, accounts: &[u128]) -> Result<HashMap<u128, u128>, DatanetError> {
        if self.unreachable.load(Ordering::SeqCst) {
            return Err(DatanetError::new(ErrorCode::Unavailable, "the ledger cannot be reached"));
        }
        Ok(accounts.iter().filter_map(|account| Some((*account, *self.earned.get(account)?))).collect())
    }
}

/// Each contributor's earnings are the sum over the bond accounts their contributions named
/// and their key's earnings account; without the ledger the leaderboard answers without them.
async fn the_leaderboard_sums_each_contributors_earnings_over_their_accounts(db: DatabaseConnection) {
    use openledger_core::fee::earnings_account_id;

    let dir = tempfile::tempdir().expect("temp dir");
    let (owner, alice, bob) =
        (SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32]), SigningKey::from_bytes(&[3; 32]));
    let (alice_key, bob_key) = (alice.verifying_key().to_bytes(), bob.verifying_key().to_bytes());
    let earnings = Arc::new(ScriptedEarnings {
        earned: HashMap::from([(7, 100), (9, 20), (earnings_account_id(&alice_key), 3), (8, 50), (1234, 1_000)]),
        ..Default::default()
    });
    let datanets =
        Datanets::new(db.clone(), objects(&dir), Arc::new(ScriptedLedger::default())).with_earnings(earnings.clone());
    let datanet = create(&datanets, &owner, staked_datanet("care")).await;
    datanets.contribute(upload_of(&datanet.id, &alice, ("a.md", TEXT), Some(7))).await.expect("alice");
    datanets.contribute(upload_of(&datanet.id, &alice, ("b.md", TEXT_2), Some(9))).await.expect("alice again");
    datanets.contribute(upload_of(&datanet.id, &bob, ("c.md", TEXT_3), Some(8))).await.expect("bob");
    let earned = |board: &pb::Leaderboard, key: &[u8; 32]| {
        let entry = board.entries.iter().find(|entry| entry.contributor == key).expect("listed");
        entry.earnings.map(u128::from)
    };

    let board = datanets.leaderboard(&datanet.id, 0, None).await.expect("leaderboard");
    assert_eq!((earned(&board, &alice_key), earned(&board, &bob_key)), (Some(123), Some(50)));

    earnings.unreachable.store(true, Ordering::SeqCst);
    let without = datanets.leaderboard(&datanet.id, 0, None).await.expect("answers without the ledger");
    assert_eq!(without.entries.len(), 2);
    assert!(without.entries.iter().all(|entry| entry.earnings.is_none()), "{without:?}");
    let unconfigured = Datanets::new(db, objects(&dir), Arc::new(ScriptedLedger::default()));
    let board = unconfigured.leaderboard(&datanet.id, 0, None).await.expect("leaderboard");
    assert!(board.entries.iter().all(|entry| entry.earnings.is_none()));
}

#[tokio::test]
async fn the_leaderboard_sums_each_contributors_earnings_over_their_accounts_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    the_leaderboard_sums_each_contributors_earnings_over_their_accounts(sqlite(&dir).await).await;
}

#[tokio::test]
async fn the_leaderboard_sums_each_contributors_earnings_over_their_accounts_on_postgres() {
    let postgres = openledger_testkit::Postgres::start();
    let db = openledger_store::connect(&postgres.create_database("earnings")).await.expect("database");
    openledger_store::migrate(&db).await.expect("migrate");
    the_leaderboard_sums_each_contributors_earnings_over_their_accounts(db).await;
}
