//! Jobs end to end inside the service: a tiny GGUF base, a scripted datanet-ingest holding a
//! sealed version's records, the scripted ledger of the registry's tests, the local executor.
//! The success scenario runs on SQLite and on PostgreSQL; the rest on SQLite.

use std::{sync::Arc, time::Duration};

use candle_core::quantized::GgmlDType;
use object_store::{ObjectStore, path::Path as ObjectPath};
use openledger_core::{ContentHash, ErrorCode, MerkleTree};
use openledger_ml::testing::{TinyModel, TinySpec};
use openledger_proto::{common::v1::Hash, datanet::v1 as dpb, events::v1::FineTuneJobChanged, modelfactory::v1 as pb};
use openledger_signing::Key;
use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use tokio_util::sync::CancellationToken;

use super::{
    Jobs, JobsParts,
    datanets::{DatanetReads, VersionRecord},
    executor::{Executor, LocalExecutor},
};
use crate::{
    RegistryError,
    base::BaseModels,
    events::Subjects,
    registry::{
        Registry,
        tests::{ALICE_ACCOUNT, alice, ledger, sqlite},
    },
};

/// Sealed versions of one Datanet that Alice holds a grant on: version 1 (`snap-1`) and,
/// with a validation set, version 2 (`snap-2`).
pub(super) struct ScriptedDatanet {
    pub(super) records: Vec<VersionRecord>,
    held_out: Vec<VersionRecord>,
    refuse: Option<ErrorCode>,
}

fn version_records(bodies: &[String]) -> Vec<VersionRecord> {
    bodies
        .iter()
        .map(|body| VersionRecord {
            hash: ContentHash::of(body.as_bytes()),
            contributor: vec![7; 32],
            body: body.as_bytes().to_vec(),
        })
        .collect()
}

impl ScriptedDatanet {
    fn with_bodies(bodies: &[String]) -> Arc<Self> {
        Arc::new(Self { records: version_records(bodies), held_out: Vec::new(), refuse: None })
    }

    /// Version 1 of `n` instruction records and version 2 of `held_out`.
    fn with_validation(n: usize, held_out: &[String]) -> Arc<Self> {
        let records = Self::instructions(n).records.clone();
        Arc::new(Self { records, held_out: version_records(held_out), refuse: None })
    }

    pub(super) fn instructions(n: usize) -> Arc<Self> {
        let bodies: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"instruction":"what is {i} plus {i}?","response":"{} is the answer"}}"#, 2 * i))
            .collect();
        Self::with_bodies(&bodies)
    }

    fn root(&self) -> Vec<u8> {
        root_of(&self.records)
    }
}

fn root_of(records: &[VersionRecord]) -> Vec<u8> {
    let leaves: Vec<ContentHash> = records.iter().map(|r| r.hash).collect();
    MerkleTree::new(&leaves).root().as_bytes().to_vec()
}

#[async_trait::async_trait]
impl DatanetReads for ScriptedDatanet {
    async fn check(
        &self,
        datanet: &str,
        version: &str,
        grantee: &Key,
        _grant: &str,
    ) -> Result<dpb::ReadAccess, RegistryError> {
        if let Some(code) = self.refuse {
            return Err(RegistryError::new(code, format!("datanet-ingest: refused ({code:?})")));
        }
        assert_eq!(grantee, &alice().verifying_key().to_bytes(), "jobs read as the owner account's key");
        assert!(datanet == "notes" || datanet == "dn-1", "{datanet}");
        let (number, records) = match version {
            "1" | "latest" | "snap-1" => (1, &self.records),
            "2" | "snap-2" if !self.held_out.is_empty() => (2, &self.held_out),
            _ => return Err(RegistryError::new(ErrorCode::NotFound, format!("datanet-ingest: no version {version}"))),
        };
        Ok(dpb::ReadAccess {
            datanet_id: "dn-1".into(),
            slug: "notes".into(),
            schema: dpb::RecordSchema::InstructionResponse as i32,
            snapshot: Some(dpb::Snapshot {
                id: format!("snap-{number}"),
                datanet_id: "dn-1".into(),
                version: number,
                merkle_root: Some(Hash { value: root_of(records) }),
                record_count: records.len() as u64,
                ..Default::default()
            }),
            grant_id: "grant-1".into(),
        })
    }

    async fn read(&self, access: &dpb::ReadAccess, _: &Key, reader: &str) -> Result<Vec<VersionRecord>, RegistryError> {
        assert!(reader.starts_with("job:ftjob-"), "{reader}");
        match access.snapshot.as_ref().map(|s| s.id.as_str()) {
            Some("snap-2") => Ok(self.held_out.clone()),
            _ => Ok(self.records.clone()),
        }
    }
}

/// One "process": the jobs of the service and its local executor.
pub(super) struct Service {
    pub(super) jobs: Arc<Jobs>,
    shutdown: CancellationToken,
    runner: tokio::task::JoinHandle<()>,
}

/// What outlives a process: the database, the object store and the data directory.
pub(super) struct World {
    pub(super) db: DatabaseConnection,
    pub(super) objects: Arc<dyn ObjectStore>,
    base: std::path::PathBuf,
    pub(super) dir: tempfile::TempDir,
    datanet: Arc<ScriptedDatanet>,
    /// `job_memory_limit_bytes` of the services started on it.
    memory_limit: u64,
    /// The SQLite database's directory, kept as long as the world (new connections open it).
    _db_dir: Option<tempfile::TempDir>,
}

impl World {
    pub(super) async fn new(db: DatabaseConnection, datanet: Arc<ScriptedDatanet>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = TinyModel::new(TinySpec::default())
            .expect("tiny model")
            .write_gguf(&dir.path().join("tiny-base.gguf"), GgmlDType::F32)
            .expect("gguf");
        let objects =
            openledger_store::open_object_store(&format!("file://{}/objects", dir.path().display())).expect("objects");
        Self { db, objects, base, dir, datanet, memory_limit: 0, _db_dir: None }
    }

    /// A world on a SQLite database of its own.
    pub(super) async fn sqlite(datanet: Arc<ScriptedDatanet>) -> Self {
        let (db, db_dir) = sqlite().await;
        Self { _db_dir: Some(db_dir), ..Self::new(db, datanet).await }
    }

    fn start(&self) -> Service {
        let jobs = self.jobs(super::executor::LocalExecutor::NAME);
        let shutdown = CancellationToken::new();
        let runner = tokio::spawn({
            let (jobs, shutdown) = (jobs.clone(), shutdown.clone());
            async move { LocalExecutor.run(jobs, shutdown).await }
        });
        Service { jobs, shutdown, runner }
    }

    /// A service of jobs recorded for `executor`, whose executor the test drives itself.
    pub(super) fn start_idle(&self, executor: &'static str) -> Service {
        Service { jobs: self.jobs(executor), shutdown: CancellationToken::new(), runner: tokio::spawn(async {}) }
    }

    /// The jobs of a service (over this world's database, objects and data directory).
    pub(super) fn jobs(&self, executor: &'static str) -> Arc<Jobs> {
        let bases = Arc::new(BaseModels::at(&self.base));
        let registry = Arc::new(Registry::new(
            self.db.clone(),
            self.objects.clone(),
            ledger(),
            bases.clone(),
            Subjects::default(),
        ));
        Jobs::new(JobsParts {
            db: self.db.clone(),
            registry,
            datanets: self.datanet.clone(),
            owners: ledger(),
            bases,
            subjects: Subjects::default(),
            work_dir: self.dir.path().join("finetune"),
            executor,
            threads: 1,
            memory_limit: self.memory_limit,
            outbox_wake: None,
        })
    }

    pub(super) async fn outbox(&self, subject_part: &str) -> Vec<(String, Vec<u8>)> {
        let statement = Statement::from_string(
            self.db.get_database_backend(),
            "SELECT subject, payload FROM outbox WHERE producer = 'model-factory' ORDER BY id",
        );
        let rows = self.db.query_all(statement).await.expect("outbox");
        rows.iter()
            .map(|row| {
                (row.try_get::<String>("", "subject").expect("subject"), row.try_get("", "payload").expect("payload"))
            })
            .filter(|(subject, _)| subject.contains(subject_part))
            .collect()
    }
}

impl Service {
    pub(super) async fn stop(self) {
        self.shutdown.cancel();
        self.runner.await.expect("executor");
    }

    pub(super) async fn get(&self, id: &str) -> pb::FineTuneJob {
        let request = pb::GetFineTuneJobRequest { id: id.into(), caller_account_id: Some(ALICE_ACCOUNT.into()) };
        self.jobs.get(&request).await.expect("get")
    }

    /// Polls until `done` holds for the job (two minutes at most).
    pub(super) async fn until(&self, id: &str, done: impl Fn(&pb::FineTuneJob) -> bool) -> pb::FineTuneJob {
        for _ in 0..2400 {
            let job = self.get(id).await;
            if done(&job) {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("job {id} never got there: {:?}", self.get(id).await);
    }

    pub(super) async fn until_state(&self, id: &str, state: pb::JobState) -> pb::FineTuneJob {
        let job = self.until(id, |job| job.state == state as i32 || super::is_terminal(job.state())).await;
        assert_eq!(job.state(), state, "{job:?}");
        job
    }

    pub(super) async fn events(&self, id: &str) -> Vec<pb::JobEvent> {
        let request = pb::ListJobEventsRequest {
            job_id: id.into(),
            caller_account_id: Some(ALICE_ACCOUNT.into()),
            page: Some(openledger_proto::common::v1::PageRequest { page_size: 1000, page_token: String::new() }),
        };
        self.jobs.events(&request).await.expect("events").events
    }
}

pub(super) fn create(hyperparameters: pb::Hyperparameters) -> pb::CreateFineTuneJobRequest {
    pb::CreateFineTuneJobRequest {
        caller_account_id: Some(ALICE_ACCOUNT.into()),
        model: "tiny-base".into(),
        training_file: "datanet:notes@1".into(),
        hyperparameters: Some(hyperparameters),
        suffix: "notes".into(),
        seed: Some(42),
        ..Default::default()
    }
}

pub(super) fn quick() -> pb::Hyperparameters {
    pb::Hyperparameters {
        n_epochs: Some(2),
        batch_size: Some(2),
        rank: Some(4),
        checkpoint_every: Some(2),
        eval_every: Some(3),
        ..Default::default()
    }
}

pub(super) fn action(id: &str) -> pb::FineTuneJobActionRequest {
    pb::FineTuneJobActionRequest { id: id.into(), caller_account_id: Some(ALICE_ACCOUNT.into()) }
}

async fn a_job_trains_and_registers_its_adapter_with_lineage(db: DatabaseConnection) {
    let world = World::new(db, ScriptedDatanet::instructions(12)).await;
    let service = world.start();
    let job = service.jobs.create(create(quick())).await.expect("create");
    assert_eq!(job.state(), pb::JobState::ValidatingFiles);
    assert!(job.id.starts_with("ftjob-") && job.fine_tuned_model.is_empty());
    assert_eq!((job.datanet_id.as_str(), job.datanet_version, job.grant_id.as_str()), ("dn-1", 1, "grant-1"));
    let hyper = job.hyperparameters.clone().expect("resolved");
    assert_eq!((hyper.n_epochs, hyper.batch_size, hyper.rank), (Some(2), Some(2), Some(4)));
    assert_eq!(hyper.eval_split, Some(0.1), "auto: a tenth from 10 records");
    let done = service.until_state(&job.id, pb::JobState::Succeeded).await;
    let hex = job.id.strip_prefix("ftjob-").expect("prefix");
    assert_eq!(done.fine_tuned_model, format!("ft:tiny-base:{ALICE_ACCOUNT}:notes:{hex}"));
    assert!(done.trained_tokens > 0 && done.finished_at.is_some() && done.step == done.total_steps, "{done:?}");
    let metrics = done.final_metrics.expect("evaluated next to the base");
    assert!(metrics.loss.is_finite() && metrics.base_loss.is_finite());

    // Registered whole: the files and the lineage, owned by Alice, private, at default prices.
    let adapter = service.jobs.registry.get(&done.fine_tuned_model).await.expect("registered");
    assert_eq!((adapter.source.as_str(), adapter.datanet_id.as_str()), (format!("job:{}", job.id).as_str(), "dn-1"));
    assert_eq!(adapter.visibility(), pb::Visibility::Private);
    assert_eq!(adapter.snapshot_root.expect("root").value, world.datanet.root());
    let key = ObjectPath::from(format!("adapters/{}/lineage.json", done.fine_tuned_model));
    let lineage: serde_json::Value =
        serde_json::from_slice(&world.objects.get(&key).await.expect("lineage").bytes().await.expect("bytes"))
            .expect("json");
    assert_eq!(lineage["datanet"]["merkle_root"], hex::encode(world.datanet.root()));
    // The record hashes are exactly the version's records: training ones in version order.
    let hashes = |field: &str| -> Vec<String> {
        lineage["trainer"][field].as_array().expect(field).iter().map(|h| h.as_str().expect("hex").to_owned()).collect()
    };
    let (train, eval) = (hashes("train_records"), hashes("eval_records"));
    let version: Vec<String> = world.datanet.records.iter().map(|r| r.hash.to_hex()).collect();
    assert_eq!((train.len(), eval.len()), (11, 1));
    let in_order: Vec<&String> = version.iter().filter(|h| train.contains(h)).collect();
    assert_eq!(train.iter().collect::<Vec<_>>(), in_order);
    let mut all: Vec<String> = train.iter().chain(&eval).cloned().collect();
    all.sort();
    let mut expected = version.clone();
    expected.sort();
    assert_eq!(all, expected);

    // Events: the states, metrics per step, evaluations; checkpoints with their metrics.
    let events = service.events(&job.id).await;
    let states: Vec<pb::JobState> = events
        .iter()
        .rev()
        .filter_map(|e| match e.event {
            Some(pb::job_event::Event::StateChange(s)) => pb::JobState::try_from(s).ok(),
            _ => None,
        })
        .collect();
    assert_eq!(states, [pb::JobState::Queued, pb::JobState::Running, pb::JobState::Succeeded]);
    let steps = events.iter().filter(|e| matches!(e.event, Some(pb::job_event::Event::Step(_)))).count() as u64;
    assert_eq!(steps, done.total_steps);
    assert!(events.iter().any(|e| matches!(e.event, Some(pb::job_event::Event::Eval(_)))));
    assert!(events.iter().any(|e| e.message.starts_with("estimated peak memory")), "the estimate is reported");
    let checkpoints = service
        .jobs
        .checkpoints(&pb::ListJobCheckpointsRequest {
            job_id: job.id.clone(),
            caller_account_id: Some(ALICE_ACCOUNT.into()),
            page: None,
        })
        .await
        .expect("checkpoints")
        .checkpoints;
    assert!(!checkpoints.is_empty() && checkpoints[0].train_loss.is_finite());
    assert!(checkpoints.windows(2).all(|w| w[0].step > w[1].step), "newest first");

    // The bus: every state and the adapter, through the outbox.
    let job_events: Vec<String> = world.outbox(".job.").await.into_iter().map(|(subject, _)| subject).collect();
    assert_eq!(
        job_events,
        ["ol.modelfactory.job.queued", "ol.modelfactory.job.running", "ol.modelfactory.job.succeeded"]
    );
    let (_, payload) = world.outbox(".job.succeeded").await.pop().expect("succeeded");
    assert_eq!(FineTuneJobChanged::decode(payload.as_slice()).expect("event").fine_tuned_model, done.fine_tuned_model);
    let registered = world.outbox("adapter.registered").await;
    assert_eq!(registered.len(), 1);
    let event = openledger_proto::events::v1::AdapterChanged::decode(registered[0].1.as_slice()).expect("event");
    assert_eq!((event.job_id.as_str(), event.datanet_id.as_str()), (job.id.as_str(), "dn-1"));
    assert!(event.lineage_location.ends_with("/lineage.json"));

    // Listing: newest first, the metadata filter, other accounts see nothing.
    let mine = pb::ListFineTuneJobsRequest { caller_account_id: Some(ALICE_ACCOUNT.into()), ..Default::default() };
    assert_eq!(service.jobs.list(&mine).await.expect("list").jobs.len(), 1);
    let other = pb::GetFineTuneJobRequest { id: job.id.clone(), caller_account_id: Some(9u128.into()) };
    assert_eq!(service.jobs.get(&other).await.expect_err("not hers").code, ErrorCode::NotFound);
    service.stop().await;
}

macro_rules! on_both {
    ($scenario:ident) => {
        mod on_sqlite {
            #[tokio::test]
            async fn $scenario() {
                let (db, _dir) = crate::registry::tests::sqlite().await;
                super::$scenario(db).await;
            }
        }

        #[tokio::test]
        async fn a_job_on_postgres() {
            let postgres = openledger_testkit::Postgres::start();
            let db = openledger_store::connect(&postgres.create_database("jobs")).await.expect("database");
            openledger_store::migrate(&db).await.expect("migrate");
            $scenario(db).await;
        }
    };
}

on_both!(a_job_trains_and_registers_its_adapter_with_lineage);

#[tokio::test]
async fn bad_requests_are_refused_naming_the_problem() {
    let (db, _keep) = sqlite().await;
    let world = World::new(db, ScriptedDatanet::instructions(4)).await;
    let service = world.start();
    let refused = |request: pb::CreateFineTuneJobRequest| {
        let jobs = service.jobs.clone();
        async move { jobs.create(request).await.expect_err("refused") }
    };
    let error = refused(pb::CreateFineTuneJobRequest { model: "gpt-4o".into(), ..create(quick()) }).await;
    assert_eq!(error.code, ErrorCode::NotFound, "{error}");
    assert!(error.message.contains("tiny-base"), "{error}");
    let error = refused(pb::CreateFineTuneJobRequest { training_file: "file-abc".into(), ..create(quick()) }).await;
    assert_eq!(error.code, ErrorCode::InvalidArgument, "{error}");
    assert!(error.message.starts_with("training_file"), "{error}");
    let error = refused(create(pb::Hyperparameters { n_epochs: Some(0), ..quick() })).await;
    assert!(error.message.starts_with("hyperparameters.n_epochs"), "{error}");
    let error = refused(pb::CreateFineTuneJobRequest { caller_account_id: None, ..create(quick()) }).await;
    assert_eq!(error.code, ErrorCode::Unauthenticated, "{error}");
    let error = refused(pb::CreateFineTuneJobRequest { suffix: "has space".into(), ..create(quick()) }).await;
    assert!(error.message.starts_with("suffix"), "{error}");
    for code in [ErrorCode::PermissionDenied, ErrorCode::NotFound, ErrorCode::FailedPrecondition] {
        let refusing = ScriptedDatanet { records: Vec::new(), held_out: Vec::new(), refuse: Some(code) };
        let world = World::sqlite(Arc::new(refusing)).await;
        let service = world.start();
        let error = service.jobs.create(create(quick())).await.expect_err("refused upstream");
        assert_eq!(error.code, code, "datanet-ingest's answer stands: {error}");
        service.stop().await;
    }
    // Nothing was created by any refusal.
    let mine = pb::ListFineTuneJobsRequest { caller_account_id: Some(ALICE_ACCOUNT.into()), ..Default::default() };
    assert!(service.jobs.list(&mine).await.expect("list").jobs.is_empty());
    // An idempotency key answers the job it created.
    let keyed = pb::CreateFineTuneJobRequest { idempotency_key: "k-1".into(), ..create(quick()) };
    let first = service.jobs.create(keyed.clone()).await.expect("create");
    assert_eq!(service.jobs.create(keyed).await.expect("again").id, first.id);
    service.jobs.cancel(&action(&first.id)).await.expect("cancel");
    service.stop().await;
}

#[tokio::test]
async fn a_version_that_cannot_train_fails_the_job_saying_why() {
    let (db, _keep) = sqlite().await;
    let bodies = [r#"{"instruction":"a","response":"b"}"#.to_owned(), r#"{"text":"free text"}"#.to_owned()];
    let world = World::new(db, ScriptedDatanet::with_bodies(&bodies)).await;
    let service = world.start();
    let job = service.jobs.create(create(quick())).await.expect("create");
    let failed = service.until_state(&job.id, pb::JobState::Failed).await;
    let error = failed.error.expect("error");
    assert_eq!((error.code.as_str(), error.param.as_str()), ("invalid_training_file", "training_file"));
    assert!(error.message.contains("a job trains on one kind"), "{}", error.message);
    assert!(service.jobs.registry.get(&spec_name(&job.id)).await.is_err(), "nothing registered");
    service.stop().await;
}

#[tokio::test]
async fn a_job_that_would_not_fit_in_memory_fails_before_training_saying_what_to_lower() {
    let (db, _keep) = sqlite().await;
    let world = World { memory_limit: 1 << 20, ..World::new(db, ScriptedDatanet::instructions(12)).await };
    let service = world.start();
    let job = service.jobs.create(create(quick())).await.expect("create");
    let failed = service.until_state(&job.id, pb::JobState::Failed).await;
    let error = failed.error.expect("error");
    assert_eq!(error.code, "insufficient_memory");
    assert!(error.message.contains("but may take 0.00 GiB"), "{}", error.message);
    assert_eq!(failed.step, 0, "no step ran");
    let events = service.events(&job.id).await;
    assert!(events.iter().any(|e| e.message.starts_with("estimated peak memory")), "{events:?}");
    assert!(service.jobs.registry.get(&spec_name(&job.id)).await.is_err(), "nothing registered");
    service.stop().await;
}

#[tokio::test]
async fn a_validation_version_is_the_held_out_set() {
    let (db, _keep) = sqlite().await;
    let training = ScriptedDatanet::instructions(8);
    // Two records of their own and one the training version also holds.
    let mut held_out: Vec<String> = (0..2)
        .map(|i| format!(r#"{{"instruction":"what is {i} times ten?","response":"{} it is"}}"#, 10 * i))
        .collect();
    held_out.push(String::from_utf8(training.records[3].body.clone()).expect("utf-8"));
    let world = World::new(db, ScriptedDatanet::with_validation(8, &held_out)).await;
    let service = world.start();
    let asked = pb::CreateFineTuneJobRequest { validation_file: "datanet:notes@2".into(), ..create(quick()) };
    let job = service.jobs.create(asked).await.expect("create");
    assert_eq!((job.validation_file.as_str(), job.validation_snapshot_id.as_str()), ("datanet:notes@2", "snap-2"));
    assert_eq!(job.validation_records, 3);
    assert_eq!(job.hyperparameters.clone().expect("resolved").eval_split, Some(0.0), "nothing of version 1 held out");
    let done = service.until_state(&job.id, pb::JobState::Succeeded).await;
    assert!(done.final_metrics.expect("evaluated on version 2").loss.is_finite());
    let events = service.events(&job.id).await;
    assert!(
        events.iter().any(|e| e
            .message
            .contains("3 held-out records from the validation version (1 of them also in the training version)")),
        "{events:?}"
    );
    // Lineage: every record of version 1 trained, in order; version 2's records held out.
    let key = ObjectPath::from(format!("adapters/{}/lineage.json", done.fine_tuned_model));
    let lineage: serde_json::Value =
        serde_json::from_slice(&world.objects.get(&key).await.expect("lineage").bytes().await.expect("bytes"))
            .expect("json");
    let hashes = |field: &str| -> Vec<String> {
        lineage["trainer"][field].as_array().expect(field).iter().map(|h| h.as_str().expect("hex").to_owned()).collect()
    };
    let version = |records: &[VersionRecord]| -> Vec<String> { records.iter().map(|r| r.hash.to_hex()).collect() };
    assert_eq!(hashes("train_records"), version(&world.datanet.records));
    assert_eq!(hashes("eval_records"), version(&world.datanet.held_out));
    assert_eq!(lineage["trainer"]["validation_dataset"], "datanet:notes@2");
    assert_eq!(lineage["validation"]["snapshot_id"], "snap-2");
    assert_eq!(lineage["validation"]["merkle_root"], hex::encode(root_of(&world.datanet.held_out)));

    // Refused at creation: the training version itself, an eval split beside it, a bad name,
    // an unknown version.
    let refused = |validation_file: &str, hyperparameters: pb::Hyperparameters| {
        let jobs = service.jobs.clone();
        let request =
            pb::CreateFineTuneJobRequest { validation_file: validation_file.into(), ..create(hyperparameters) };
        async move { jobs.create(request).await.expect_err("refused") }
    };
    let error = refused("datanet:notes@1", quick()).await;
    assert_eq!(error.code, ErrorCode::InvalidArgument, "{error}");
    assert!(error.message.starts_with("validation_file names the training version"), "{error}");
    let error = refused("datanet:notes@2", pb::Hyperparameters { eval_split: Some(0.2), ..quick() }).await;
    assert!(error.message.starts_with("lora.eval_split"), "{error}");
    let error = refused("file-abc", quick()).await;
    assert!(error.message.starts_with("validation_file"), "{error}");
    let error = refused("datanet:notes@7", quick()).await;
    assert_eq!(error.code, ErrorCode::NotFound, "{error}");
    assert!(error.message.starts_with("validation_file: "), "{error}");
    service.stop().await;

    // A validation version of another kind fails the job while its files are checked.
    let (db, _keep) = sqlite().await;
    let world = World::new(db, ScriptedDatanet::with_validation(8, &[r#"{"text":"free text"}"#.to_owned()])).await;
    let service = world.start();
    let asked = pb::CreateFineTuneJobRequest { validation_file: "datanet:notes@2".into(), ..create(quick()) };
    let job = service.jobs.create(asked).await.expect("create");
    let failed = service.until_state(&job.id, pb::JobState::Failed).await;
    let error = failed.error.expect("error");
    assert_eq!((error.code.as_str(), error.param.as_str()), ("invalid_validation_file", "validation_file"));
    assert!(error.message.contains("both must be of one kind"), "{}", error.message);
    service.stop().await;
}

fn spec_name(id: &str) -> String {
    super::spec::fine_tuned_name("tiny-base", ALICE_ACCOUNT, "notes", id).expect("name")
}

#[tokio::test]
async fn cancel_pause_and_resume() {
    let (db, _keep) = sqlite().await;
    let world = World::new(db, ScriptedDatanet::instructions(12)).await;
    let service = world.start();
    // Long enough (1,100 steps, seconds on the tiny model) that nothing ends by itself here.
    let long = pb::Hyperparameters { n_epochs: Some(100), batch_size: Some(1), ..quick() };
    let first = service.jobs.create(create(long.clone())).await.expect("create");
    service.until(&first.id, |job| job.step >= 2).await;
    // Pausing a running job checkpoints it.
    let paused = service.jobs.pause(&action(&first.id)).await.expect("pause");
    assert_eq!(paused.state(), pb::JobState::Paused, "{paused:?}");
    let at = paused.step;
    // Meanwhile another job runs, and a running job is cancelled at its next step.
    let second = service.jobs.create(create(long.clone())).await.expect("create");
    service.until(&second.id, |job| job.step >= 1).await;
    let cancelled = service.jobs.cancel(&action(&second.id)).await.expect("cancel a running job");
    assert_eq!(cancelled.state(), pb::JobState::Cancelled, "{cancelled:?}");
    assert!(cancelled.fine_tuned_model.is_empty());
    assert!(service.jobs.resume(&action(&second.id)).await.is_err(), "a cancelled job stays cancelled");
    // Resuming continues from the checkpoint; a job created meanwhile waits (one at a time)
    // and is cancelled at once.
    service.jobs.resume(&action(&first.id)).await.expect("resume");
    let third = service.jobs.create(create(long)).await.expect("create");
    let running = service.until(&first.id, |job| job.step > at + 1).await;
    assert_eq!(running.state(), pb::JobState::Running);
    // Its files are validated first (a moment, longer on a busy machine), then it waits.
    let waiting = service.until(&third.id, |job| job.state() != pb::JobState::ValidatingFiles).await;
    assert_eq!(waiting.state(), pb::JobState::Queued);
    assert_eq!(service.jobs.cancel(&action(&third.id)).await.expect("cancel").state(), pb::JobState::Cancelled);
    assert_eq!(service.jobs.cancel(&action(&first.id)).await.expect("cancel").state(), pb::JobState::Cancelled);
    let events = service.events(&first.id).await;
    assert!(
        events.iter().any(|e| e.message.starts_with(&format!("{} training and", 11))),
        "restarted from a checkpoint"
    );
    let subjects: Vec<String> = world.outbox(".job.").await.into_iter().map(|(s, _)| s).collect();
    assert!(subjects.contains(&"ol.modelfactory.job.paused".to_owned()));
    assert_eq!(subjects.iter().filter(|s| s.ends_with(".cancelled")).count(), 3);
    service.stop().await;
}

/// The adapter's weights, as registered.
async fn weights(world: &World, name: &str) -> bytes::Bytes {
    let key = ObjectPath::from(format!("adapters/{name}/adapter_model.safetensors"));
    world.objects.get(&key).await.expect("weights").bytes().await.expect("bytes")
}

#[tokio::test]
async fn a_job_stopped_with_its_process_continues_and_equals_an_uninterrupted_run() {
    let (db, _keep) = sqlite().await;
    let world = World::new(db, ScriptedDatanet::instructions(12)).await;
    let hyper = pb::Hyperparameters { n_epochs: Some(3), batch_size: Some(1), checkpoint_every: Some(3), ..quick() };
    let service = world.start();
    let straight = service.jobs.create(create(hyper.clone())).await.expect("create");
    let straight = service.until_state(&straight.id, pb::JobState::Succeeded).await;
    // Each step of the interrupted run takes at least 40 ms, so that the stop lands mid-run
    // however fast this machine trains the tiny model (33 steps took 0.12 s once, and the job
    // had finished before the stop).
    let scenario = fail::FailScenario::setup();
    fail::cfg("train-loss", "sleep(40)").expect("fail point");
    let interrupted = service.jobs.create(create(hyper)).await.expect("create");
    service.until(&interrupted.id, |job| job.step >= 7).await;
    service.stop().await; // the process ends mid-run: the job stays running
    let left = world.start();
    let job = left.get(&interrupted.id).await;
    assert!(job.step < job.total_steps, "stopped before the end: {job:?}");
    fail::cfg("train-loss", "off").expect("fail point");
    let done = left.until_state(&interrupted.id, pb::JobState::Succeeded).await;
    let events = left.events(&interrupted.id).await;
    assert!(events.iter().any(|e| e.message.contains("continuing after a restart")));
    assert_eq!(done.trained_tokens, straight.trained_tokens);
    assert_eq!(weights(&world, &done.fine_tuned_model).await, weights(&world, &straight.fine_tuned_model).await);
    scenario.teardown();
    left.stop().await;
}

/// A job whose run fails at `failpoint` (the trainer's), with the code it fails with.
async fn failing_job(failpoint: &str, actions: &str) -> (pb::FineTuneJob, World) {
    let (db, keep) = sqlite().await;
    let world = World::new(db, ScriptedDatanet::instructions(12)).await;
    let service = world.start();
    let scenario = fail::FailScenario::setup();
    fail::cfg(failpoint, actions).expect("fail point");
    let hyper = pb::Hyperparameters { checkpoint_every: Some(1), ..quick() };
    let job = service.jobs.create(create(hyper)).await.expect("create");
    let failed = service.until_state(&job.id, pb::JobState::Failed).await;
    scenario.teardown();
    service.stop().await;
    drop(keep);
    (failed, world)
}

#[tokio::test]
async fn a_diverging_run_fails_the_job_and_keeps_the_last_good_checkpoint() {
    let (failed, world) = failing_job("train-loss", "2*off->return").await;
    let error = failed.error.expect("error");
    assert_eq!(error.code, "diverged", "{error:?}");
    assert!(error.message.contains("step 3: loss NaN") && error.message.contains("step-00000002"), "{error:?}");
    let checkpoints = world.dir.path().join("finetune").join(&failed.id).join("out/checkpoints/step-00000002");
    assert!(checkpoints.join("trainer_state.json").is_file(), "the last good checkpoint is kept");
    assert!(failed.fine_tuned_model.is_empty());
    assert!(world.outbox("adapter.registered").await.is_empty(), "nothing registered");
    assert_eq!(world.outbox(".job.failed").await.len(), 1);
}

#[tokio::test]
async fn a_full_disk_fails_the_job_saying_so() {
    // A checkpoint writes four files; the second checkpoint's first write finds the disk full.
    let (failed, world) = failing_job("train-write-file", "4*off->return").await;
    let error = failed.error.expect("error");
    assert_eq!(error.code, "storage_full", "{error:?}");
    assert!(world.outbox("adapter.registered").await.is_empty(), "nothing registered");
}
