//! Records/s ingested end to end (parse, normalize, hash, score, dedup, store in SQLite and
//! the local object store) for 1 KB records, through `Datanets::contribute`.
//! Run: `cargo bench -p openledger-datanet-ingest --bench ingest [-- FILES]` (1,000 records
//! per JSONL file; 20 files by default).

use std::{sync::Arc, time::Instant};

use ed25519_dalek::SigningKey;
use openledger_core::ContentHash;
use openledger_datanet_ingest::{Datanets, Upload, bonds::NoLedger, signing};
use openledger_proto::datanet::v1 as pb;
use rand::{Rng, SeedableRng, rngs::StdRng};

const RECORDS_PER_FILE: usize = 1_000;

/// A vocabulary of real words, so records read as language to the quality score.
const WORDS: &[&str] = &[
    "the",
    "patient",
    "reported",
    "pain",
    "after",
    "walking",
    "and",
    "doctor",
    "advised",
    "rest",
    "with",
    "water",
    "daily",
    "for",
    "two",
    "weeks",
    "before",
    "returning",
    "to",
    "work",
    "symptoms",
    "improved",
    "slowly",
    "while",
    "blood",
    "pressure",
    "remained",
    "stable",
    "during",
    "visit",
    "nurse",
    "checked",
    "medicine",
    "dose",
    "again",
    "family",
    "history",
    "showed",
    "heart",
    "disease",
    "in",
    "older",
    "relatives",
    "who",
    "smoked",
    "tobacco",
    "exercise",
    "helps",
    "many",
    "people",
    "sleep",
    "better",
    "at",
    "night",
    "when",
    "they",
    "avoid",
    "coffee",
];

fn main() {
    let files: usize = std::env::args().filter_map(|arg| arg.parse().ok()).next().unwrap_or(20);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(run(files));
}

async fn run(files: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/bench.db?mode=rwc", dir.path().display());
    let db = openledger_store::connect(&url).await.expect("sqlite");
    openledger_store::migrate(&db).await.expect("migrate");
    let objects =
        openledger_store::open_object_store(&format!("file://{}/objects", dir.path().display())).expect("objects");
    let datanets = Datanets::new(db, objects, Arc::new(NoLedger));
    let owner = SigningKey::from_bytes(&[1; 32]);
    let wanted = pb::Datanet {
        slug: "bench".into(),
        name: "Bench".into(),
        licence: "CC0".into(),
        schema: pb::RecordSchema::FreeText as i32,
        visibility: pb::Visibility::Public as i32,
        policy: Some(pb::ContributionPolicy {
            max_files_per_contributor_per_day: 1_000_000,
            max_bytes_per_contributor_per_day: u64::MAX / 4,
            max_files_per_day: 1_000_000,
            max_bytes_per_day: u64::MAX / 4,
            ..Default::default()
        }),
        ..Default::default()
    };
    let signature = signing::sign(&owner, &signing::create_message(&wanted));
    let datanet = datanets.create(wanted, Some(signature)).await.expect("create");

    let mut rng = StdRng::seed_from_u64(0x9e37_79b9_7f4a_7c15);
    let mut word = move || WORDS[rng.random_range(0..WORDS.len())];
    let contributor = SigningKey::from_bytes(&[2; 32]);
    let bodies: Vec<Vec<u8>> = (0..files)
        .map(|_| {
            let mut body = String::new();
            for _ in 0..RECORDS_PER_FILE {
                let text: Vec<&str> = (0..170).map(|_| word()).collect();
                body.push_str(&serde_json::json!({ "text": text.join(" ") }).to_string());
                body.push('\n');
            }
            body.into_bytes()
        })
        .collect();
    let bytes: usize = bodies.iter().map(Vec::len).sum();
    let started = Instant::now();
    let mut accepted = 0;
    for (number, body) in bodies.into_iter().enumerate() {
        let file_name = format!("part-{number}.jsonl");
        let hash = ContentHash::of(&body);
        let message = signing::contribution_message(&datanet.id, &file_name, &hash, None);
        let upload = Upload {
            datanet_id: datanet.id.clone(),
            file_name,
            media_type: String::new(),
            bytes: body.into(),
            declared_hash: Some(hash),
            signature: signing::sign(&contributor, &message),
            account_id: None,
        };
        let taken = datanets.contribute(upload).await.expect("contribute");
        accepted += taken.records.iter().filter(|record| !record.duplicate).count();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let records = files * RECORDS_PER_FILE;
    println!(
        "ingest: {records} records of {} B in {files} files: {:.0} records/s end to end ({:.1} MB/s), {accepted} fresh",
        bytes / records,
        records as f64 / elapsed,
        bytes as f64 / elapsed / 1e6
    );
}
