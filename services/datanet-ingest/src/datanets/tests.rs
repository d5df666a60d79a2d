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
use openledger_proto::datanet::v1 as pb;
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
/// before reaching it (nothing is held or released).
#[derive(Default)]
struct ScriptedLedger {
    held: parking_lot::Mutex<HashMap<String, u128>>,
    unreachable: AtomicBool,
}

impl ScriptedLedger {
    fn reach(&self) -> Result<(), DatanetError> {
        if self.unreachable.load(Ordering::SeqCst) {
            return Err(DatanetError::new(ErrorCode::Unavailable, "the ledger cannot be reached"));
        }
        Ok(())
    }

    fn resolve(&self, contribution_id: &str) -> Result<Resolved, DatanetError> {
        self.reach()?;
        Ok(match self.held.lock().remove(contribution_id) {
            Some(_) => Resolved::Done,
            None => Resolved::NotHeld,
        })
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
        self.resolve(contribution_id)
    }

    async fn slash(&self, contribution_id: &str, _reason: &str) -> Result<Resolved, DatanetError> {
        self.resolve(contribution_id)
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

fn upload(datanet_id: &str, contributor: &SigningKey) -> Upload {
    let hash = ContentHash::of(TEXT.as_bytes());
    Upload {
        datanet_id: datanet_id.into(),
        file_name: "washing.md".into(),
        media_type: String::new(),
        bytes: TEXT.as_bytes().to_vec().into(),
        declared_hash: Some(hash),
        signature: signing::sign(
            contributor,
            &signing::contribution_message(datanet_id, "washing.md", &hash, Some(ACCOUNT)),
        ),
        account_id: Some(ACCOUNT),
    }
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
    assert!(ledger.held.lock().is_empty(), "the accepted contribution's bond was released");
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
