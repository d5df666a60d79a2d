//! `openledger datanet …`: create Datanets, contribute files (with a progress bar), review,
//! publish versions, show them, check inclusion proofs and grant access, through the
//! datanet-ingest service's gRPC API. Writes are signed with a key file from
//! `openledger ledger keygen`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use openledger_core::{Amount, Config, ContentHash, MerkleProof, ServiceKind};
use openledger_datanet_ingest::signing;
use openledger_proto::{
    common::v1::Hash,
    datanet::v1::{self as pb, datanet_service_client::DatanetServiceClient},
};
use tonic::transport::Channel;

use crate::ledger::read_key;

/// Bytes per gRPC message of an upload.
const CHUNK: usize = 256 * 1024;

#[derive(Subcommand)]
pub enum DatanetCommand {
    /// Create a Datanet owned by the key
    Create(CreateArgs),
    /// Contribute files (txt, md, jsonl, csv, pdf, docx), each a signed contribution
    Contribute {
        datanet: String,
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Ledger account (owned by the key) that posts stake bonds
        #[arg(long)]
        account: Option<u128>,
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
    },
    /// Approve or reject a contribution pending review (owner or validator)
    Review {
        datanet: String,
        contribution: String,
        #[arg(long, conflicts_with = "reject", required_unless_present = "reject")]
        approve: bool,
        #[arg(long)]
        reject: bool,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
    },
    /// Seal the accepted records as the next version (owner)
    Publish {
        datanet: String,
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
    },
    /// Show a Datanet, its latest version and its leaderboard
    Show {
        datanet: String,
        /// Identify as this key to see a private Datanet
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
    },
    /// Fetch a contribution's inclusion proofs and check them against the version's root
    Proof {
        datanet: String,
        contribution: String,
        #[arg(long, default_value = "latest")]
        snapshot: String,
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
    },
    /// Write a sealed version's records (read through your approved grant) as a directory that
    /// `openledger model finetune` trains on and `openledger attribution` reads:
    /// records.jsonl (each record with its provenance) and manifest.json. A version is
    /// `<slug>@<number>`, `<slug>@latest` or `<slug>` (latest)
    Export {
        /// `<slug-or-id>[@<version>]`
        #[arg(value_name = "DATANET[@VERSION]")]
        datanet: String,
        /// Your approved grant on the Datanet (`openledger datanet grant … --purpose`)
        #[arg(long)]
        grant: String,
        /// The directory to write; it must not exist (written whole or not at all)
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
    },
    /// Ask for access to train on a Datanet (with --purpose), or decide a request (owner: --grant ID --approve/--deny)
    Grant {
        datanet: String,
        #[arg(long, conflicts_with = "grant")]
        purpose: Option<String>,
        #[arg(long)]
        grant: Option<String>,
        #[arg(long, requires = "grant", conflicts_with = "deny")]
        approve: bool,
        #[arg(long, requires = "grant")]
        deny: bool,
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
    },
}

/// What `datanet create` takes.
#[derive(Args)]
pub struct CreateArgs {
    #[arg(long)]
    slug: String,
    #[arg(long)]
    name: String,
    #[arg(long, value_enum)]
    schema: Schema,
    /// Labels records may carry (labelled-text), comma-separated
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    #[arg(long, default_value = "")]
    summary: String,
    #[arg(long, value_delimiter = ',')]
    tags: Vec<String>,
    #[arg(long, default_value = "CC-BY-4.0")]
    licence: String,
    /// Visible only to the owner, validators and grantees
    #[arg(long)]
    private: bool,
    /// Stake bond per contribution, in OPEN
    #[arg(long, value_parser = parse_amount, default_value = "0")]
    stake: Amount,
    /// A validator's public key (hex); repeat for several
    #[arg(long)]
    validator: Vec<String>,
    #[arg(long, value_name = "FILE")]
    key_file: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Schema {
    FreeText,
    InstructionResponse,
    LabelledText,
}

fn parse_amount(text: &str) -> Result<Amount, String> {
    text.parse().map_err(|error| format!("{error}"))
}

pub async fn run(command: DatanetCommand, config: &Config) -> anyhow::Result<bool> {
    run_command(command, config).await.map_err(|error| {
        let url = config.datanet_url.clone();
        crate::unreachable(ServiceKind::DatanetIngest, url, config, ["--datanet-url", "OPENLEDGER_DATANET_URL"], error)
    })
}

async fn run_command(command: DatanetCommand, config: &Config) -> anyhow::Result<bool> {
    let channel = crate::service_channel(ServiceKind::DatanetIngest, config.datanet_url.clone(), config)?;
    let mut client = DatanetServiceClient::new(channel);
    let client = &mut client;
    match command {
        DatanetCommand::Create(args) => create(client, args).await,
        DatanetCommand::Contribute { datanet, files, account, key_file } => {
            let key = read_key(&key_file)?;
            let id = resolve(client, &datanet, Some(&key)).await?;
            contribute(client, &id, &files, account, &key).await
        }
        DatanetCommand::Review { datanet, contribution, approve, reject: _, reason, key_file } => {
            review(client, &datanet, contribution, approve, reason, &key_file).await
        }
        DatanetCommand::Publish { datanet, key_file } => publish(client, &datanet, &key_file).await,
        DatanetCommand::Show { datanet, key_file } => show(client, datanet, key_file.as_deref()).await,
        DatanetCommand::Proof { datanet, contribution, snapshot, key_file } => {
            proof(client, &datanet, contribution, snapshot, key_file.as_deref()).await
        }
        DatanetCommand::Export { datanet, grant, out, key_file } => {
            export(client, &datanet, grant, &out, &key_file).await
        }
        DatanetCommand::Grant { datanet, purpose, grant, approve, deny: _, key_file } => {
            access(client, datanet, purpose, grant, approve, &key_file).await
        }
    }
}

type Client = DatanetServiceClient<Channel>;

async fn create(client: &mut Client, args: CreateArgs) -> anyhow::Result<bool> {
    let CreateArgs { slug, name, schema, labels, summary, tags, licence, private, stake, validator, key_file } = args;
    let key = read_key(&key_file)?;
    let validators = validator
        .iter()
        .map(|key| hex::decode(key).map_err(|_| anyhow::anyhow!("--validator {key:?} must be a hex public key")))
        .collect::<Result<Vec<_>, _>>()?;
    let datanet = pb::Datanet {
        slug,
        name,
        summary,
        tags,
        schema: match schema {
            Schema::FreeText => pb::RecordSchema::FreeText,
            Schema::InstructionResponse => pb::RecordSchema::InstructionResponse,
            Schema::LabelledText => pb::RecordSchema::LabelledText,
        } as i32,
        label_set: labels,
        licence,
        visibility: if private { pb::Visibility::Private } else { pb::Visibility::Public } as i32,
        policy: Some(pb::ContributionPolicy {
            stake_per_contribution: Some(stake.base_units().into()),
            ..Default::default()
        }),
        validators,
        ..Default::default()
    };
    let signature = signing::sign(&key, &signing::create_message(&datanet));
    let created = client
        .create_datanet(pb::CreateDatanetRequest { datanet: Some(datanet), signature: Some(signature) })
        .await?
        .into_inner();
    println!("datanet {} ({}) created", created.id, created.slug);
    Ok(true)
}

async fn review(
    client: &mut Client,
    datanet: &str,
    contribution: String,
    approve: bool,
    reason: String,
    key_file: &Path,
) -> anyhow::Result<bool> {
    let key = read_key(key_file)?;
    let id = resolve(client, datanet, Some(&key)).await?;
    let signature = signing::sign(&key, &signing::review_message(&id, &contribution, approve, &reason));
    let request = pb::ReviewContributionRequest {
        datanet_id: id,
        contribution_id: contribution,
        approve,
        reason,
        signature: Some(signature),
    };
    print_contribution(&client.review_contribution(request).await?.into_inner());
    Ok(true)
}

async fn publish(client: &mut Client, datanet: &str, key_file: &Path) -> anyhow::Result<bool> {
    let key = read_key(key_file)?;
    let id = resolve(client, datanet, Some(&key)).await?;
    let signed_at = signing::now_unix();
    let signature = signing::sign(&key, &signing::publish_message(&id, signed_at));
    let request = pb::PublishSnapshotRequest { datanet_id: id, signature: Some(signature), signed_at };
    print_snapshot(&client.publish_snapshot(request).await?.into_inner());
    Ok(true)
}

/// A Datanet, its latest version and the top of its leaderboard.
async fn show(client: &mut Client, datanet: String, key_file: Option<&Path>) -> anyhow::Result<bool> {
    let key = key_file.map(read_key).transpose()?;
    let found = client.get_datanet(as_caller(pb::GetDatanetRequest { id_or_slug: datanet }, key.as_ref())).await?;
    let found = found.into_inner();
    let policy = found.policy.clone().unwrap_or_default();
    println!("{} ({}): {}", found.name, found.slug, found.summary);
    println!("  id {}, owner {}, licence {}", found.id, hex::encode(&found.owner), found.licence);
    println!(
        "  schema {}, {}, stake {} OPEN per contribution",
        found.schema().as_str_name().trim_start_matches("RECORD_SCHEMA_").to_lowercase(),
        found.visibility().as_str_name().trim_start_matches("VISIBILITY_").to_lowercase(),
        Amount::from_base_units(policy.stake_per_contribution.map(u128::from).unwrap_or(0)),
    );
    let latest = pb::GetSnapshotRequest { datanet_id: found.id.clone(), snapshot_id: "latest".into() };
    match client.get_snapshot(as_caller(latest, key.as_ref())).await {
        Ok(snapshot) => print_snapshot(snapshot.get_ref()),
        Err(status) if status.code() == tonic::Code::NotFound => println!("  no version published yet"),
        Err(status) => return Err(status.into()),
    }
    let board = pb::GetLeaderboardRequest { datanet_id: found.id.clone(), limit: 10 };
    let board = client.get_leaderboard(as_caller(board, key.as_ref())).await?.into_inner();
    println!("  leaderboard:");
    for entry in board.entries {
        println!(
            "    {}  {} accepted records, {:.1}% accepted, {} duplicates",
            hex::encode(&entry.contributor),
            entry.accepted_records,
            f64::from(entry.acceptance_ratio_ppt) / 10.0,
            entry.duplicates_rejected
        );
    }
    Ok(true)
}

/// Fetches a contribution's inclusion proofs and checks each against the version's root; true
/// when every one verifies.
async fn proof(
    client: &mut Client,
    datanet: &str,
    contribution: String,
    snapshot: String,
    key_file: Option<&Path>,
) -> anyhow::Result<bool> {
    let key = key_file.map(read_key).transpose()?;
    let id = resolve(client, datanet, key.as_ref()).await?;
    let request =
        pb::GetInclusionProofRequest { datanet_id: id.clone(), snapshot_id: snapshot, contribution_id: contribution };
    let proof = client.get_inclusion_proof(as_caller(request, key.as_ref())).await?.into_inner();
    let sealed = pb::GetSnapshotRequest { datanet_id: id, snapshot_id: proof.snapshot_id.clone() };
    let sealed = client.get_snapshot(as_caller(sealed, key.as_ref())).await?.into_inner();
    let root = hash(sealed.merkle_root.as_ref())?;
    println!("version {} (snapshot {}), root {}", sealed.version, sealed.id, root.to_hex());
    let mut all_good = true;
    for record in &proof.records {
        let inclusion = record.proof.clone().unwrap_or_default();
        let leaf = hash(record.record_hash.as_ref())?;
        let path = inclusion.path.iter().map(|node| hash(Some(node))).collect::<Result<Vec<_>, _>>()?;
        let checked = MerkleProof { leaf_index: inclusion.leaf_index, tree_size: inclusion.tree_size, path };
        let good = checked.verify(&leaf, &root);
        all_good &= good;
        println!(
            "  record {} at {} of {}: {}",
            leaf.to_hex(),
            inclusion.leaf_index,
            inclusion.tree_size,
            if good { "verified" } else { "DOES NOT VERIFY" }
        );
    }
    Ok(all_good)
}

/// Writes a sealed version's records with their provenance (see `openledger_attribution::corpus`)
/// into `out`, through a temporary directory renamed at the end; every record's hash is checked
/// against its body and the leaves against the version's Merkle root before anything appears.
async fn export(
    client: &mut Client,
    version: &str,
    grant: String,
    out: &Path,
    key_file: &Path,
) -> anyhow::Result<bool> {
    use futures::TryStreamExt;
    use openledger_attribution::corpus::{ExportWriter, Manifest};

    anyhow::ensure!(!out.exists(), "{} exists: export into a new directory", out.display());
    let key = read_key(key_file)?;
    let (datanet, snapshot) = version.split_once('@').unwrap_or((version, "latest"));
    let found = client.get_datanet(as_caller(pb::GetDatanetRequest { id_or_slug: datanet.into() }, Some(&key))).await?;
    let found = found.into_inner();
    let sealed = pb::GetSnapshotRequest { datanet_id: found.id.clone(), snapshot_id: snapshot.into() };
    let sealed = client.get_snapshot(as_caller(sealed, Some(&key))).await?.into_inner();
    let root = hash(sealed.merkle_root.as_ref())?;
    let mut export = ExportWriter::create(out)?;
    let request = pb::ReadRecordsRequest {
        datanet_id: found.id.clone(),
        snapshot_id: sealed.id.clone(),
        grant_id: grant,
        ..Default::default()
    };
    let mut records = client.read_records(as_caller(request, Some(&key))).await?.into_inner();
    let bar = ProgressBar::new(sealed.record_count).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} records ({per_sec}, {eta})").expect("a valid template"),
    );
    while let Some(record) = records.try_next().await? {
        export.push(hash(record.hash.as_ref())?, &record.contribution_id, &record.contributor, &record.body)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let manifest = export.finish(Manifest {
        format: String::new(),
        datanet_id: found.id,
        slug: found.slug,
        version: sealed.version,
        snapshot_id: sealed.id,
        merkle_root: root.to_hex(),
        records: 0,
    })?;
    println!(
        "{}: {} records of version {} (root {}) in {}",
        manifest.dataset_name(),
        manifest.records,
        manifest.version,
        manifest.merkle_root,
        out.display()
    );
    Ok(true)
}

/// Asks for access (`purpose`), or decides a request (`grant` with `approve`).
async fn access(
    client: &mut Client,
    datanet: String,
    purpose: Option<String>,
    grant: Option<String>,
    approve: bool,
    key_file: &Path,
) -> anyhow::Result<bool> {
    let key = read_key(key_file)?;
    let decided = match (grant, purpose) {
        (Some(grant), _) => {
            let id = resolve(client, &datanet, Some(&key)).await?;
            let signed_at = signing::now_unix();
            let message = signing::access_decision_message(&id, &grant, approve, signed_at);
            let request = pb::DecideAccessRequest {
                datanet_id: id,
                grant_id: grant,
                approve,
                signature: Some(signing::sign(&key, &message)),
                signed_at,
            };
            client.decide_access(request).await?.into_inner()
        }
        (None, Some(purpose)) => {
            // Private Datanets are invisible to outsiders: access is asked for by id.
            let id = resolve(client, &datanet, Some(&key)).await.unwrap_or(datanet);
            let signature = signing::sign(&key, &signing::access_request_message(&id, &purpose));
            let request = pb::RequestAccessRequest { datanet_id: id, purpose, signature: Some(signature) };
            client.request_access(request).await?.into_inner()
        }
        (None, None) => anyhow::bail!("give --purpose to request access, or --grant ID with --approve/--deny"),
    };
    println!("grant {}: {} for {} ({})", decided.id, decided.state, hex::encode(&decided.grantee), decided.purpose);
    Ok(true)
}

/// A Datanet's id from its id or slug.
async fn resolve(
    client: &mut Client,
    datanet: &str,
    key: Option<&ed25519_dalek::SigningKey>,
) -> anyhow::Result<String> {
    let request = as_caller(pb::GetDatanetRequest { id_or_slug: datanet.to_owned() }, key);
    Ok(client.get_datanet(request).await?.into_inner().id)
}

/// Signed caller metadata, so private Datanets are visible to their members.
fn as_caller<T>(message: T, key: Option<&ed25519_dalek::SigningKey>) -> tonic::Request<T> {
    match key {
        Some(key) => openledger_datanet_ingest::signed_caller(message, key),
        None => tonic::Request::new(message),
    }
}

/// Uploads each file as a signed contribution, with one progress bar over all bytes.
async fn contribute(
    client: &mut Client,
    datanet_id: &str,
    files: &[PathBuf],
    account: Option<u128>,
    key: &ed25519_dalek::SigningKey,
) -> anyhow::Result<bool> {
    let mut total = 0u64;
    for file in files {
        total += std::fs::metadata(file).map_err(|error| anyhow::anyhow!("{}: {error}", file.display()))?.len();
    }
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{spinner} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut all_taken = true;
    for file in files {
        let bytes = std::fs::read(file).map_err(|error| anyhow::anyhow!("{}: {error}", file.display()))?;
        let file_name = file_name(file);
        bar.set_message(file_name.clone());
        let file_hash = ContentHash::of(&bytes);
        let signature = signing::sign(key, &signing::contribution_message(datanet_id, &file_name, &file_hash, account));
        let header = pb::ContributeHeader {
            datanet_id: datanet_id.to_owned(),
            file_name: file_name.clone(),
            media_type: String::new(),
            size_bytes: bytes.len() as u64,
            file_hash: Some(Hash { value: file_hash.as_bytes().to_vec() }),
            signature: Some(signature),
            contributor_account_id: account.map(Into::into),
        };
        let first = pb::ContributeRequest { part: Some(pb::contribute_request::Part::Header(header)) };
        let progress = bar.clone();
        let chunks: Vec<Vec<u8>> = bytes.chunks(CHUNK).map(<[u8]>::to_vec).collect();
        let stream = futures::stream::iter(std::iter::once(first).chain(chunks.into_iter().map(move |chunk| {
            progress.inc(chunk.len() as u64);
            pb::ContributeRequest { part: Some(pb::contribute_request::Part::Chunk(chunk)) }
        })));
        match client.contribute(stream).await {
            Ok(taken) => bar.suspend(|| print_contribution(taken.get_ref())),
            Err(status) => {
                all_taken = false;
                bar.suspend(|| eprintln!("{file_name}: refused: {}", status.message()));
            }
        }
    }
    bar.finish_with_message("done");
    Ok(all_taken)
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_else(|| "upload".into())
}

fn hash(hash: Option<&Hash>) -> anyhow::Result<ContentHash> {
    let bytes: [u8; 32] = hash
        .and_then(|hash| hash.value.clone().try_into().ok())
        .ok_or_else(|| anyhow::anyhow!("the service sent a malformed hash"))?;
    Ok(ContentHash::from_bytes(bytes))
}

fn print_contribution(contribution: &pb::Contribution) {
    let duplicates = contribution.records.iter().filter(|record| record.duplicate).count();
    println!(
        "{}: contribution {}: {} ({} records, {} duplicates, quality {}, bond {}): {}",
        contribution.file_name,
        contribution.id,
        contribution.status().api_name(),
        contribution.records.len(),
        duplicates,
        contribution.quality_score,
        contribution.bond_state,
        contribution.reason
    );
}

fn print_snapshot(snapshot: &pb::Snapshot) {
    println!(
        "  version {} (snapshot {}): {} records (+{} −{}), root {}",
        snapshot.version,
        snapshot.id,
        snapshot.record_count,
        snapshot.records_added,
        snapshot.records_removed,
        hex::encode(snapshot.merkle_root.clone().unwrap_or_default().value)
    );
}
