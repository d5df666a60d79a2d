//! The registry on SQLite and PostgreSQL with a scripted ledger, tiny base models and adapters
//! written by `openledger_ml::testing`, and one rank-16 adapter for the real SmolLM2.
//! Each scenario runs on SQLite in its own test, and all of them on one throwaway PostgreSQL.

use std::{collections::HashMap, path::Path, sync::Arc};

use candle_core::quantized::GgmlDType;
use ed25519_dalek::SigningKey;
use object_store::{ObjectStore, path::Path as ObjectPath};
use openledger_core::{ContentHash, ErrorCode};
use openledger_ml::{
    ModelConfig, Target,
    testing::{TinyModel, TinySpec, write_peft_adapter},
};
use openledger_proto::{events::v1::AdapterChanged, modelfactory::v1 as pb};
use openledger_signing::Key;
use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait, Statement};

use super::{Registry, read::ListCaller};
use crate::{
    RegistryError,
    base::BaseModels,
    entities::adapter,
    events::Subjects,
    limits::AdapterLimits,
    owners::{Owners, owned_by},
    signing,
};

/// An adapter's two files: `adapter_config.json`, `adapter_model.safetensors`.
type Files = (Vec<u8>, Vec<u8>);

pub(crate) const ALICE_ACCOUNT: u128 = 70_001;
const BOB_ACCOUNT: u128 = 70_002;
const CAROL_ACCOUNT: u128 = 70_003;

pub(crate) fn alice() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

fn bob() -> SigningKey {
    SigningKey::from_bytes(&[2; 32])
}

/// A ledger whose accounts are a fixed map of owners.
pub(crate) struct ScriptedLedger(HashMap<u128, Key>);

#[async_trait::async_trait]
impl Owners for ScriptedLedger {
    async fn check_owner(&self, account: u128, key: &Key) -> Result<(), RegistryError> {
        let owner =
            self.0.get(&account).map(|owner| openledger_proto::ledger::v1::account::Owner::PublicKey(owner.to_vec()));
        owned_by(account, owner.as_ref(), key)
    }

    async fn owner_key(&self, account: u128) -> Result<Key, RegistryError> {
        let owner =
            self.0.get(&account).map(|owner| openledger_proto::ledger::v1::account::Owner::PublicKey(owner.to_vec()));
        crate::owners::key_of(account, owner.as_ref())
    }
}

pub(crate) fn ledger() -> Arc<ScriptedLedger> {
    Arc::new(ScriptedLedger(HashMap::from([
        (ALICE_ACCOUNT, alice().verifying_key().to_bytes()),
        (BOB_ACCOUNT, bob().verifying_key().to_bytes()),
        (CAROL_ACCOUNT, SigningKey::from_bytes(&[3; 32]).verifying_key().to_bytes()),
    ])))
}

/// A registry over a tiny GGUF base, a file object store and `db`.
struct Fixture {
    registry: Registry,
    db: DatabaseConnection,
    objects: Arc<dyn ObjectStore>,
    base: ModelConfig,
    base_path: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(db: DatabaseConnection) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = TinyModel::new(TinySpec::default())
            .expect("tiny model")
            .write_gguf(&dir.path().join("tiny-base.gguf"), GgmlDType::F32)
            .expect("gguf");
        Self::over(db, dir, &path)
    }

    fn over(db: DatabaseConnection, dir: tempfile::TempDir, base: &Path) -> Self {
        let objects =
            openledger_store::open_object_store(&format!("file://{}/objects", dir.path().display())).expect("objects");
        let registry =
            Registry::new(db.clone(), objects.clone(), ledger(), Arc::new(BaseModels::at(base)), Subjects::default());
        let base_path = base.to_path_buf();
        let base = openledger_ml::source::read_model_config(base).expect("base config");
        Self { registry, db, objects, base, base_path, dir }
    }

    /// Another registry over the same database, store and base, with other file limits.
    fn with_limits(&self, limits: AdapterLimits) -> Registry {
        Registry::new(
            self.db.clone(),
            self.objects.clone(),
            ledger(),
            Arc::new(BaseModels::at(&self.base_path)),
            Subjects::default(),
        )
        .with_adapter_limits(limits)
    }

    /// The two files of a fresh PEFT adapter for `config`.
    fn adapter(&self, config: &ModelConfig, rank: usize, targets: &[Target], seed: u64) -> Files {
        let dir = self.dir.path().join(format!("adapter-{seed}-{rank}-{}", config.hidden_size));
        write_peft_adapter(&dir, config, rank, targets, seed, false).expect("adapter");
        let read = |name: &str| std::fs::read(dir.join(name)).expect("adapter file");
        (read("adapter_config.json"), read("adapter_model.safetensors"))
    }

    fn good(&self, seed: u64) -> Files {
        self.adapter(&self.base.clone(), 4, &[Target::Q, Target::V], seed)
    }

    async fn import(&self, request: pb::ImportAdapterRequest) -> Result<pb::Adapter, RegistryError> {
        self.registry.import(request).await
    }

    async fn adapter_rows(&self) -> u64 {
        adapter::Entity::find().count(&self.db).await.expect("count")
    }

    async fn stored_objects(&self) -> Vec<String> {
        use futures::TryStreamExt;
        let prefix = ObjectPath::from("adapters");
        let listed: Vec<_> = self.objects.list(Some(&prefix)).try_collect().await.expect("list");
        let mut keys: Vec<String> = listed.into_iter().map(|meta| meta.location.to_string()).collect();
        keys.sort();
        keys
    }

    /// (subject, event) of every registry event in the outbox, oldest first.
    async fn events(&self) -> Vec<(String, AdapterChanged)> {
        let statement = Statement::from_string(
            self.db.get_database_backend(),
            "SELECT subject, payload FROM outbox WHERE producer = 'model-factory' ORDER BY id",
        );
        let rows = self.db.query_all(statement).await.expect("outbox");
        rows.iter()
            .map(|row| {
                let subject: String = row.try_get("", "subject").expect("subject");
                let payload: Vec<u8> = row.try_get("", "payload").expect("payload");
                (subject, AdapterChanged::decode(payload.as_slice()).expect("event"))
            })
            .collect()
    }
}

/// A signed inline import by `key` for `account`.
fn upload(id: &str, files: &Files, key: &SigningKey, account: u128) -> pb::ImportAdapterRequest {
    let request = pb::ImportAdapterRequest {
        id: id.into(),
        adapter_config_json: files.0.clone(),
        adapter_model_safetensors: files.1.clone(),
        owner_account_id: Some(account.into()),
        price_in: Some(1_000u128.into()),
        price_out: Some(2_000u128.into()),
        visibility: pb::Visibility::Public as i32,
        description: "triage notes".into(),
        signed_at: openledger_signing::now_unix(),
        ..Default::default()
    };
    signed_import(request, key)
}

fn signed_import(mut request: pb::ImportAdapterRequest, key: &SigningKey) -> pb::ImportAdapterRequest {
    let hashes = (!request.adapter_config_json.is_empty())
        .then(|| (ContentHash::of(&request.adapter_config_json), ContentHash::of(&request.adapter_model_safetensors)));
    let message = signing::import_message(&request, hashes.as_ref().map(|(config, weights)| (config, weights)));
    request.signature = Some(signing::sign(key, &message));
    request
}

fn update(mut request: pb::UpdateAdapterRequest, key: &SigningKey) -> pb::UpdateAdapterRequest {
    request.signed_at = openledger_signing::now_unix();
    request.signature = Some(signing::sign(key, &signing::update_message(&request)));
    request
}

fn unlist(id: &str, key: &SigningKey) -> pb::UnlistAdapterRequest {
    let signed_at = openledger_signing::now_unix();
    pb::UnlistAdapterRequest {
        id: id.into(),
        signed_at,
        signature: Some(signing::sign(key, &signing::unlist_message(id, signed_at))),
    }
}

fn hash_of(file: &pb::AdapterFile) -> Vec<u8> {
    file.hash.clone().expect("hash").value
}

async fn a_good_adapter_imports_and_its_files_land_in_the_object_store(db: DatabaseConnection) {
    let fixture = Fixture::new(db).await;
    let files = fixture.good(1);
    let adapter = fixture.import(upload("triage-r4", &files, &alice(), ALICE_ACCOUNT)).await.expect("import");
    assert_eq!((adapter.rank, adapter.target_modules.clone()), (4, vec!["q_proj".to_owned(), "v_proj".to_owned()]));
    assert_eq!((adapter.base_model.as_str(), adapter.location.as_str()), ("tiny-base", "adapters/triage-r4"));
    assert_eq!(adapter.owner, alice().verifying_key().to_bytes().to_vec());
    assert_eq!(adapter.owner_account_id.map(u128::from), Some(ALICE_ACCOUNT));
    assert!(adapter.listed);
    let names: Vec<&str> = adapter.files.iter().map(|file| file.name.as_str()).collect();
    assert_eq!(names, ["adapter_config.json", "adapter_model.safetensors"]);
    for (file, bytes) in adapter.files.iter().zip([&files.0, &files.1]) {
        assert_eq!(hash_of(file), ContentHash::of(bytes).as_bytes().to_vec(), "{}", file.name);
        assert_eq!(file.size_bytes, bytes.len() as u64);
        let stored = fixture
            .objects
            .get(&ObjectPath::from(format!("adapters/triage-r4/{}", file.name)))
            .await
            .expect("stored")
            .bytes()
            .await
            .expect("bytes");
        assert_eq!(stored.as_ref(), bytes.as_slice(), "{} as stored", file.name);
    }

    // The engines' object-store source reads exactly what was stored.
    let source = openledger_ml::adapters::AdapterSource::ObjectStore {
        store: fixture.objects.clone(),
        prefix: "adapters".into(),
        cache_dir: fixture.dir.path().join("engine-cache"),
    };
    let runtime = tokio::runtime::Handle::current();
    let dir = tokio::task::spawn_blocking(move || source.local_dir("triage-r4", &runtime))
        .await
        .expect("join")
        .expect("engine fetch");
    assert_eq!(std::fs::read(dir.join("adapter_model.safetensors")).expect("cached"), files.1);

    let events = fixture.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "ol.modelfactory.adapter.registered");
    assert_eq!(events[0].1.adapter_id, "triage-r4");
    assert_eq!(events[0].1.file_hashes.len(), 2);
    assert_eq!(events[0].1.location, "adapters/triage-r4");

    // A retry of the same import answers the adapter; other files under the id do not.
    let again = fixture.import(upload("triage-r4", &files, &alice(), ALICE_ACCOUNT)).await.expect("retry");
    assert_eq!(again, adapter);
    assert_eq!(fixture.events().await.len(), 1, "a retry writes no second event");
    let other = fixture.import(upload("triage-r4", &fixture.good(2), &alice(), ALICE_ACCOUNT)).await;
    assert_eq!(other.expect_err("taken").code, ErrorCode::AlreadyExists);
    let stolen = fixture.import(upload("triage-r4", &files, &bob(), BOB_ACCOUNT)).await;
    assert_eq!(stolen.expect_err("taken").code, ErrorCode::AlreadyExists);
}

async fn bad_adapters_are_refused_naming_the_mismatch_and_nothing_is_stored(db: DatabaseConnection) {
    let fixture = Fixture::new(db).await;
    let base = fixture.base.clone();
    let good = fixture.good(1);
    let wider = fixture.adapter(&ModelConfig { hidden_size: 96, ..base.clone() }, 4, &[Target::Q], 2);
    let mut wrong_rank = fixture.adapter(&base, 4, &[Target::Q], 3);
    wrong_rank.0 = br#"{"peft_type":"LORA","r":8,"lora_alpha":16,"target_modules":["q_proj"]}"#.to_vec();
    let unknown_target = (
        br#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["q_proj","lm_head"]}"#.to_vec(),
        good.1.clone(),
    );
    let corrupt = (good.0.clone(), good.1[..good.1.len() / 2].to_vec());
    let cases: [(&str, Files, &str); 4] = [
        ("wider", wider, "layer 0 q_proj lora_A is [4, 96] but tiny-base expects [4, 64]"),
        ("wrong-rank", wrong_rank, "layer 0 q_proj lora_A is [4, 64] but tiny-base expects [8, 64]"),
        ("unknown-target", unknown_target, "\"lm_head\""),
        ("corrupt", corrupt, "adapter_model.safetensors is corrupt"),
    ];
    for (id, files, named) in cases {
        let refused = fixture.import(upload(id, &files, &alice(), ALICE_ACCOUNT)).await.expect_err(id);
        assert_eq!(refused.code, ErrorCode::InvalidArgument, "{id}: {refused}");
        assert!(refused.message.contains(named), "{id}: {refused}");
    }
    let small = fixture.with_limits(AdapterLimits { max_weights_bytes: 1_000, ..AdapterLimits::default() });
    let oversized = small.import(upload("oversized", &good, &alice(), ALICE_ACCOUNT)).await.expect_err("oversized");
    assert_eq!(oversized.code, ErrorCode::InvalidArgument);
    assert!(oversized.message.contains("at most 1000"), "{oversized}");
    assert_eq!(fixture.adapter_rows().await, 0, "no row");
    assert_eq!(fixture.stored_objects().await, Vec::<String>::new(), "no objects");
    assert!(fixture.events().await.is_empty(), "no events");
}

async fn listings_show_what_each_account_may_call(db: DatabaseConnection) {
    let fixture = Fixture::new(db).await;
    let import = |id: &'static str, visibility: pb::Visibility, allowed: Vec<u128>, seed: u64| {
        let mut request = upload(id, &fixture.good(seed), &alice(), ALICE_ACCOUNT);
        request.visibility = visibility as i32;
        request.allowed_accounts = allowed.into_iter().map(Into::into).collect();
        fixture.import(signed_import(request, &alice()))
    };
    import("a-public", pb::Visibility::Public, vec![], 1).await.expect("public");
    import("b-private", pb::Visibility::Private, vec![], 2).await.expect("private");
    let shared = import("c-shared", pb::Visibility::AllowList, vec![BOB_ACCOUNT], 3).await.expect("allow-list");
    assert_eq!(shared.allowed_accounts.iter().map(|id| u128::from(*id)).collect::<Vec<_>>(), [BOB_ACCOUNT]);
    let mut from_bob = upload("d-bobs", &fixture.good(4), &bob(), BOB_ACCOUNT);
    from_bob.visibility = pb::Visibility::Private as i32;
    fixture.import(signed_import(from_bob, &bob())).await.expect("bob's");

    let ids = |caller: ListCaller, include_unlisted: bool| {
        let registry = &fixture.registry;
        async move {
            let (adapters, _) = registry.list(0, "", caller, include_unlisted).await.expect("list");
            adapters.into_iter().map(|adapter| adapter.id).collect::<Vec<_>>()
        }
    };
    let account = |account| ListCaller { account: Some(account), key: None };
    assert_eq!(ids(ListCaller::default(), false).await, ["a-public"]);
    assert_eq!(ids(account(ALICE_ACCOUNT), false).await, ["a-public", "b-private", "c-shared"]);
    assert_eq!(ids(account(BOB_ACCOUNT), false).await, ["a-public", "c-shared", "d-bobs"]);
    assert_eq!(ids(account(CAROL_ACCOUNT), false).await, ["a-public"]);
    let alice_key = ListCaller { account: None, key: Some(alice().verifying_key().to_bytes()) };
    assert_eq!(ids(alice_key, false).await, ["a-public", "b-private", "c-shared"]);

    // Pages of one, in id order, the cursor being the last id.
    let (first, page) = fixture.registry.list(1, "", account(ALICE_ACCOUNT), false).await.expect("page 1");
    assert_eq!((first[0].id.as_str(), page.next_page_token.as_str()), ("a-public", "a-public"));
    let (second, page) = fixture.registry.list(2, "a-public", account(ALICE_ACCOUNT), false).await.expect("page 2");
    assert_eq!(second.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["b-private", "c-shared"]);
    assert_eq!(page.next_page_token, "", "the last page has no cursor");

    // Unlisted: gone from lists unless asked for, still there by id.
    fixture.registry.unlist(unlist("a-public", &alice())).await.expect("unlist");
    assert_eq!(ids(ListCaller::default(), false).await, Vec::<String>::new());
    assert_eq!(ids(ListCaller::default(), true).await, ["a-public"]);
    let unlisted = fixture.registry.get("a-public").await.expect("still readable");
    assert!(!unlisted.listed);
}

async fn only_the_owner_updates_and_unlists(db: DatabaseConnection) {
    let fixture = Fixture::new(db).await;
    fixture.import(upload("triage", &fixture.good(1), &alice(), ALICE_ACCOUNT)).await.expect("import");
    let change = pb::UpdateAdapterRequest {
        id: "triage".into(),
        price_out: Some(5_000u128.into()),
        visibility: Some(pb::Visibility::AllowList as i32),
        set_allowed_accounts: true,
        allowed_accounts: vec![CAROL_ACCOUNT.into(), BOB_ACCOUNT.into(), CAROL_ACCOUNT.into()],
        description: Some("v2".into()),
        ..Default::default()
    };
    let by_bob = fixture.registry.update(update(change.clone(), &bob())).await.expect_err("not the owner");
    assert_eq!(by_bob.code, ErrorCode::PermissionDenied, "{by_bob}");
    let mut forged = update(change.clone(), &alice());
    forged.price_out = Some(1u128.into());
    assert_eq!(fixture.registry.update(forged).await.expect_err("forged").code, ErrorCode::Unauthenticated);
    let mut stale = change.clone();
    stale.signed_at = openledger_signing::now_unix() - 3_600;
    stale.signature = Some(signing::sign(&alice(), &signing::update_message(&stale)));
    assert_eq!(fixture.registry.update(stale).await.expect_err("stale").code, ErrorCode::Unauthenticated);

    let changed = fixture.registry.update(update(change, &alice())).await.expect("owner's update");
    assert_eq!(changed.price_in.map(u128::from), Some(1_000), "unchanged");
    assert_eq!(changed.price_out.map(u128::from), Some(5_000));
    assert_eq!(changed.visibility, pb::Visibility::AllowList as i32);
    assert_eq!(
        changed.allowed_accounts.iter().map(|id| u128::from(*id)).collect::<Vec<_>>(),
        [BOB_ACCOUNT, CAROL_ACCOUNT]
    );
    assert_eq!(changed.description, "v2");

    assert_eq!(
        fixture.registry.unlist(unlist("triage", &bob())).await.expect_err("bob").code,
        ErrorCode::PermissionDenied
    );
    assert!(fixture.registry.get("triage").await.expect("get").listed, "bob's unlisting changed nothing");
    assert!(!fixture.registry.unlist(unlist("triage", &alice())).await.expect("unlist").listed);
    fixture.registry.unlist(unlist("triage", &alice())).await.expect("unlisting again is a no-op");

    let subjects: Vec<String> = fixture.events().await.into_iter().map(|(subject, _)| subject).collect();
    assert_eq!(
        subjects,
        ["ol.modelfactory.adapter.registered", "ol.modelfactory.adapter.updated", "ol.modelfactory.adapter.unlisted"]
    );
    let last = fixture.events().await.pop().expect("event").1;
    assert!(!last.listed);
    assert_eq!(last.owner_account_id.map(u128::from), Some(ALICE_ACCOUNT));
}

async fn imports_check_the_signer_and_the_owner_account(db: DatabaseConnection) {
    let fixture = Fixture::new(db).await;
    let files = fixture.good(1);
    let by_bob = fixture.import(upload("x", &files, &bob(), ALICE_ACCOUNT)).await.expect_err("bob for alice");
    assert_eq!(by_bob.code, ErrorCode::PermissionDenied, "{by_bob}");
    let mut forged = upload("x", &files, &alice(), ALICE_ACCOUNT);
    forged.price_out = Some(0u128.into());
    assert_eq!(fixture.import(forged).await.expect_err("forged").code, ErrorCode::Unauthenticated);
    let nobody = fixture.import(upload("x", &files, &alice(), 99_999)).await.expect_err("no such account");
    assert_eq!(nobody.code, ErrorCode::FailedPrecondition, "{nobody}");
    let mut other_base = upload("x", &files, &alice(), ALICE_ACCOUNT);
    other_base.base_model = "Llama-3-8B".into();
    let other_base = fixture.import(signed_import(other_base, &alice())).await.expect_err("other base");
    assert!(other_base.message.contains("\"Llama-3-8B\"") && other_base.message.contains("tiny-base"), "{other_base}");
    assert_eq!(fixture.adapter_rows().await, 0);
}

async fn sources_are_read_from_the_object_store_and_the_hub(db: DatabaseConnection) {
    let fixture = Fixture::new(db).await;
    let files = fixture.good(1);
    for (name, bytes) in [("adapter_config.json", &files.0), ("adapter_model.safetensors", &files.1)] {
        let path = ObjectPath::from(format!("uploads/triage/{name}"));
        fixture.objects.put(&path, bytes.clone().into()).await.expect("upload");
    }
    let from_store = pb::ImportAdapterRequest {
        id: "triage".into(),
        source: "uploads/triage".into(),
        owner_account_id: Some(ALICE_ACCOUNT.into()),
        visibility: pb::Visibility::Public as i32,
        signed_at: openledger_signing::now_unix(),
        ..Default::default()
    };
    let adapter = fixture.import(signed_import(from_store.clone(), &alice())).await.expect("from the store");
    assert_eq!(adapter.source, "uploads/triage");
    assert_eq!(hash_of(&adapter.files[1]), ContentHash::of(&files.1).as_bytes().to_vec());
    let missing =
        pb::ImportAdapterRequest { id: "missing".into(), source: "uploads/nothing".into(), ..from_store.clone() };
    let missing = fixture.import(signed_import(missing, &alice())).await.expect_err("missing");
    assert_eq!(missing.code, ErrorCode::FailedPrecondition);
    assert!(missing.message.contains("uploads/nothing/adapter_config.json"), "{missing}");
    let escape = pb::ImportAdapterRequest { id: "escape".into(), source: "../etc".into(), ..from_store.clone() };
    assert_eq!(
        fixture.import(signed_import(escape, &alice())).await.expect_err("escape").code,
        ErrorCode::InvalidArgument
    );

    // No network here: the hub path runs and fails with a message naming the source.
    let hub = pb::ImportAdapterRequest {
        id: "hub".into(),
        source: "hf://openledger-tests/no-such-adapter".into(),
        ..from_store
    };
    let hub = fixture.import(signed_import(hub, &alice())).await.expect_err("no hub here");
    assert_eq!(hub.code, ErrorCode::FailedPrecondition, "{hub}");
    assert!(hub.message.contains("hf://openledger-tests/no-such-adapter"), "{hub}");
}

pub(crate) async fn sqlite() -> (DatabaseConnection, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = openledger_store::connect(&format!("sqlite://{}/db.sqlite?mode=rwc", dir.path().display()))
        .await
        .expect("database");
    openledger_store::migrate(&db).await.expect("migrate");
    (db, dir)
}

macro_rules! on_sqlite {
    ($($scenario:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let (db, _dir) = super::sqlite().await;
                    super::$scenario(db).await;
                }
            )*
        }

        #[tokio::test]
        async fn every_scenario_on_postgres() {
            let postgres = openledger_testkit::Postgres::start();
            $(
                let db = openledger_store::connect(&postgres.create_database(stringify!($scenario)))
                    .await
                    .expect("database");
                openledger_store::migrate(&db).await.expect("migrate");
                $scenario(db).await;
            )*
        }
    };
}

on_sqlite!(
    a_good_adapter_imports_and_its_files_land_in_the_object_store,
    bad_adapters_are_refused_naming_the_mismatch_and_nothing_is_stored,
    listings_show_what_each_account_may_call,
    only_the_owner_updates_and_unlists,
    imports_check_the_signer_and_the_owner_account,
    sources_are_read_from_the_object_store_and_the_hub,
);

#[tokio::test]
async fn without_a_base_model_imports_say_how_to_configure_one() {
    let (db, dir) = sqlite().await;
    let objects = openledger_store::open_object_store("memory://").expect("objects");
    let absent = BaseModels::new(Some(dir.path().join("absent.gguf").display().to_string()), dir.path().into());
    let registry = Registry::new(db, objects, ledger(), Arc::new(absent), Subjects::default());
    let files = (b"{}".to_vec(), b"x".to_vec());
    let error = registry.import(upload("x", &files, &alice(), ALICE_ACCOUNT)).await.expect_err("no base");
    assert_eq!(error.code, ErrorCode::FailedPrecondition, "{error}");
    assert!(error.message.contains("absent.gguf"), "{error}");
    assert!(registry.base_models().await.is_err(), "a configured base that is missing is an error, not an empty list");
    let message = BaseModels::new(None, dir.path().join("data")).missing();
    assert!(message.starts_with("no base model configured: set base_model"), "{message}");
    assert!(message.contains("OPENLEDGER_BASE_MODEL") && message.contains("data/models"), "{message}");
}

#[tokio::test]
async fn a_rank_16_adapter_for_the_real_smollm2_imports() {
    let path = openledger_ml::testing::smollm2_path();
    assert!(path.exists(), "{} is missing: run scripts/fetch-models.sh smollm2", path.display());
    let (db, dir) = sqlite().await;
    let fixture = Fixture::over(db, dir, &path);
    assert_eq!(fixture.registry.base_models().await.expect("bases")[0].id, "SmolLM2-135M-Instruct.Q4_1");
    let files = fixture.adapter(&fixture.base.clone(), 16, &[Target::Q, Target::K, Target::V, Target::O], 16);
    let adapter = fixture.import(upload("smol-r16", &files, &alice(), ALICE_ACCOUNT)).await.expect("import");
    assert_eq!((adapter.rank, adapter.base_model.as_str()), (16, "SmolLM2-135M-Instruct.Q4_1"));
    assert_eq!(fixture.stored_objects().await.len(), 2);
    let tiny = ModelConfig { hidden_size: 64, ..fixture.base.clone() };
    let wrong = fixture.adapter(&tiny, 16, &[Target::Q], 17);
    let refused = fixture.import(upload("smol-wrong", &wrong, &alice(), ALICE_ACCOUNT)).await.expect_err("wrong");
    assert!(
        refused.message.contains("layer 0 q_proj lora_A is [16, 64] but SmolLM2-135M-Instruct.Q4_1 expects [16, 576]"),
        "{refused}"
    );
}
