//! `openledger ledger …`: balances, transfers and history through the ledger's gRPC API;
//! `audit`, which checks the settlements against the attributions (the attribution-worker's
//! or a file's) through the ledger's `AuditSettlements`; and `verify`, which checks the
//! journal straight from the database (no running service needed).

use clap::{Args, Subcommand};
use openledger_core::{Amount, Config, ServiceKind};
use openledger_ledger::limits::NANOS_PER_SECOND;
use openledger_proto::{common::v1::Uint128, ledger::v1 as pb};
use openledger_proto::{u128_of as unwire, uint128 as wire};
use openledger_signing::{StakeAction, proto::sign};

use crate::flags::{DatabaseFlags, LedgerUrlFlags, SettingFlags};

#[derive(Subcommand)]
pub enum LedgerCommand {
    /// Show accounts' balances in OPEN
    Balance {
        /// Account ids (decimal)
        #[arg(required = true, value_parser = parse_id)]
        accounts: Vec<u128>,
        /// Balances as they stood at this moment (Unix seconds) instead of now
        #[arg(long)]
        at: Option<u64>,
        #[command(flatten)]
        settings: LedgerUrlFlags,
    },
    /// Move OPEN between two accounts (retry with the same --id: it is applied once)
    Transfer {
        #[arg(long, value_parser = parse_id)]
        from: u128,
        #[arg(long, value_parser = parse_id)]
        to: u128,
        /// Amount in OPEN, up to 18 decimals, e.g. 1.25
        #[arg(long, value_parser = parse_amount)]
        amount: Amount,
        /// Transfer id (decimal); a fresh one is chosen and printed when omitted
        #[arg(long, value_parser = parse_id)]
        id: Option<u128>,
        /// Hold the amount instead of moving it (post or void it later)
        #[arg(long)]
        pending: bool,
        /// With --pending: seconds after which the hold expires
        #[arg(long, default_value_t = 0)]
        timeout_seconds: u32,
        #[command(flatten)]
        settings: LedgerUrlFlags,
    },
    /// List an account's transfers, oldest first
    History {
        #[arg(value_parser = parse_id)]
        account: u128,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Cursor printed by the previous page
        #[arg(long, default_value = "")]
        after: String,
        #[command(flatten)]
        settings: LedgerUrlFlags,
    },
    /// Stake OPEN from an account (retry with the same --operation-id: it is applied once)
    Stake(StakeArgs),
    /// Start unbonding staked OPEN; it comes back after the unbonding period
    Unstake(StakeArgs),
    /// Make an ed25519 key pair: the secret goes to FILE (mode 0600), the public key is printed
    Keygen {
        #[arg(long, value_name = "FILE")]
        out: std::path::PathBuf,
    },
    /// Propose new economic parameters (unchanged ones keep their current value), signed
    Propose(ProposeArgs),
    /// Vote on a proposal with an account's stake, signed
    Vote {
        #[arg(long)]
        proposal: String,
        #[arg(long, value_parser = parse_id)]
        account: u128,
        #[arg(long, value_name = "FILE")]
        key_file: std::path::PathBuf,
        /// Vote yes (without it: no)
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        settings: LedgerUrlFlags,
    },
    /// Check every attributed inference is settled exactly once as its attribution and fee
    /// say, to the base unit, no capture or settlement is unaccounted for, and the books verify;
    /// names the first exception
    Audit(AuditArgs),
    /// Recompute the journal's hash chain and replay every transfer, from the database
    Verify {
        #[command(flatten)]
        settings: DatabaseFlags,
    },
    /// Write the journal and per-epoch Merkle roots as JSON lines, from the database
    Export {
        /// Output file ("-" for standard output)
        #[arg(long, default_value = "-")]
        out: String,
        /// Epoch length for the Merkle roots [default: the one in force]
        #[arg(long)]
        epoch_seconds: Option<u64>,
        #[command(flatten)]
        settings: DatabaseFlags,
    },
}

/// Where `audit` reads the expected settlements, and the ledger it checks.
#[derive(Args)]
pub struct AuditArgs {
    /// JSON lines of attributions (`inference_id`, `model_owner_account_id`, `weights` of
    /// `contributor_account_id`, `contributor` hex and `weight_ppb`; account ids as decimal
    /// strings) instead of the attribution-worker's stored attributions
    #[arg(long, value_name = "FILE")]
    attributions: Option<std::path::PathBuf>,
    /// gRPC URL of the attribution-worker [default: the local port]
    #[arg(long, value_name = "URL")]
    attribution_url: Option<String>,
    #[command(flatten)]
    settings: LedgerUrlFlags,
}

/// `stake` and `unstake`: the same request, opposite directions.
#[derive(Args)]
pub struct StakeArgs {
    #[arg(long, value_parser = parse_id)]
    account: u128,
    #[arg(long, value_parser = parse_amount)]
    amount: Amount,
    #[arg(long)]
    operation_id: String,
    /// Sign with the account owner's key (as `keygen` writes it)
    #[arg(long, value_name = "FILE")]
    key_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    settings: LedgerUrlFlags,
}

#[derive(Args)]
pub struct ProposeArgs {
    #[arg(long)]
    id: String,
    /// The proposer's account (it must hold the proposal threshold in stake)
    #[arg(long, value_parser = parse_id)]
    account: u128,
    /// File with the account owner's ed25519 secret key (hex), as `keygen` writes it
    #[arg(long, value_name = "FILE")]
    key_file: std::path::PathBuf,
    #[arg(long)]
    model_owner_bps: Option<u32>,
    #[arg(long)]
    stakers_bps: Option<u32>,
    #[arg(long)]
    contributors_bps: Option<u32>,
    #[arg(long, value_parser = parse_amount)]
    platform_fee: Option<Amount>,
    #[arg(long)]
    slashing_bps: Option<u32>,
    #[arg(long, value_parser = parse_amount)]
    minimum_stake: Option<Amount>,
    #[arg(long)]
    unbonding_seconds: Option<u64>,
    #[arg(long)]
    epoch_seconds: Option<u64>,
    /// Quality score below which a contribution's bond is slashed, in thousandths (-1000: one
    /// median deviation below the typical record); -100000..=0
    #[arg(long, allow_negative_numbers = true)]
    slashing_threshold_milli: Option<i32>,
    #[arg(long, default_value = "")]
    rationale: String,
    #[command(flatten)]
    settings: LedgerUrlFlags,
}

impl LedgerCommand {
    /// The setting flags given after the command.
    pub fn settings(&self) -> Option<&dyn SettingFlags> {
        match self {
            Self::Balance { settings, .. }
            | Self::Transfer { settings, .. }
            | Self::History { settings, .. }
            | Self::Stake(StakeArgs { settings, .. })
            | Self::Unstake(StakeArgs { settings, .. })
            | Self::Propose(ProposeArgs { settings, .. })
            | Self::Vote { settings, .. }
            | Self::Audit(AuditArgs { settings, .. }) => Some(settings),
            Self::Verify { settings } | Self::Export { settings, .. } => Some(settings),
            Self::Keygen { .. } => None,
        }
    }
}

fn parse_id(text: &str) -> Result<u128, String> {
    text.parse::<u128>()
        .map_err(|_| format!("{text:?} is not an account or transfer id: use a decimal number below 2^128"))
}

fn parse_amount(text: &str) -> Result<Amount, String> {
    let amount: Amount = text.parse().map_err(|error: openledger_core::AmountError| error.to_string())?;
    if amount == Amount::ZERO {
        return Err("amount must be more than 0".into());
    }
    Ok(amount)
}

fn open(value: Option<&Uint128>) -> String {
    Amount::from_base_units(unwire(value)).to_string()
}

fn result_name(code: i32) -> String {
    pb::CreateResult::try_from(code)
        .map(|result| result.as_str_name().trim_start_matches("CREATE_RESULT_").to_lowercase())
        .unwrap_or_else(|_| format!("unknown ({code})"))
}

type LedgerClient = pb::ledger_service_client::LedgerServiceClient<tonic::transport::Channel>;

/// Runs a ledger command; the exit code follows the outcome.
pub async fn run(command: LedgerCommand, config: &Config) -> anyhow::Result<bool> {
    run_command(command, config).await.map_err(|error| {
        let url = config.ledger_url.clone();
        crate::unreachable(ServiceKind::Ledger, url, config, ["--ledger-url", "OPENLEDGER_LEDGER_URL"], error)
    })
}

async fn run_command(command: LedgerCommand, config: &Config) -> anyhow::Result<bool> {
    match command {
        LedgerCommand::Keygen { out } => keygen(&out),
        LedgerCommand::Verify { .. } => verify(config).await,
        LedgerCommand::Export { out, epoch_seconds, .. } => export(config, &out, epoch_seconds).await,
        LedgerCommand::Balance { accounts, at, .. } => balance(&mut client(config)?, &accounts, at).await,
        LedgerCommand::Transfer { from, to, amount, id, pending, timeout_seconds, .. } => {
            let hold = pending.then_some(timeout_seconds);
            transfer(&mut client(config)?, from, to, amount, id, hold).await
        }
        LedgerCommand::History { account, limit, after, .. } => {
            history(&mut client(config)?, account, limit, after).await
        }
        LedgerCommand::Stake(args) => stake(&mut client(config)?, StakeAction::Stake, args).await,
        LedgerCommand::Unstake(args) => stake(&mut client(config)?, StakeAction::Unstake, args).await,
        LedgerCommand::Propose(args) => propose(&mut client(config)?, args).await,
        LedgerCommand::Audit(args) => audit(&mut client(config)?, args, config).await,
        LedgerCommand::Vote { proposal, account, key_file, yes, .. } => {
            vote(&mut client(config)?, proposal, account, &key_file, yes).await
        }
    }
}

/// The ledger's gRPC client, at the address the runtime resolves for services.
fn client(config: &Config) -> anyhow::Result<LedgerClient> {
    Ok(LedgerClient::new(crate::service_channel(ServiceKind::Ledger, config.ledger_url.clone(), config)?))
}

async fn balance(client: &mut LedgerClient, accounts: &[u128], at: Option<u64>) -> anyhow::Result<bool> {
    let found = match at {
        None => {
            let ids = accounts.iter().map(|id| wire(*id).expect("some")).collect();
            client.lookup_accounts(pb::LookupAccountsRequest { ids }).await?.into_inner().accounts
        }
        Some(seconds) => {
            let mut found = Vec::new();
            for id in accounts {
                let request = pb::LookupAccountAtRequest {
                    account_id: wire(*id),
                    timestamp: seconds.saturating_mul(NANOS_PER_SECOND),
                };
                match client.lookup_account_at(request).await {
                    Ok(account) => found.push(account.into_inner()),
                    Err(status) if status.code() == tonic::Code::NotFound => {}
                    Err(status) => return Err(status.into()),
                }
            }
            found
        }
    };
    println!("{:<40} {:>28} {:>28} {:>28}", "account", "balance (OPEN)", "pending debits", "pending credits");
    for id in accounts {
        match found.iter().find(|account| unwire(account.id.as_ref()) == *id) {
            Some(account) => {
                let credits = unwire(account.credits_posted.as_ref());
                let debits = unwire(account.debits_posted.as_ref());
                let balance = if credits >= debits {
                    Amount::from_base_units(credits - debits).to_string()
                } else {
                    format!("-{}", Amount::from_base_units(debits - credits))
                };
                println!(
                    "{id:<40} {balance:>28} {:>28} {:>28}",
                    open(account.debits_pending.as_ref()),
                    open(account.credits_pending.as_ref())
                );
            }
            None => println!("{id:<40} {:>28}", "not found"),
        }
    }
    Ok(found.len() == accounts.len())
}

/// `hold`: `Some(timeout_seconds)` to hold the amount instead of moving it.
async fn transfer(
    client: &mut LedgerClient,
    from: u128,
    to: u128,
    amount: Amount,
    id: Option<u128>,
    hold: Option<u32>,
) -> anyhow::Result<bool> {
    let id = id.unwrap_or_else(|| u128::from_be_bytes(*openledger_core::Id::new().as_uuid().as_bytes()));
    let flags = if hold.is_some() { vec![pb::TransferFlag::Pending as i32] } else { Vec::new() };
    let transfer = pb::Transfer {
        id: wire(id),
        debit_account_id: wire(from),
        credit_account_id: wire(to),
        amount: wire(amount.base_units()),
        ledger: openledger_ledger::model::OPEN_LEDGER,
        flags,
        timeout_seconds: hold.unwrap_or(0),
        ..Default::default()
    };
    let results =
        client.create_transfers(pb::CreateTransfersRequest { transfers: vec![transfer] }).await?.into_inner().results;
    let result = results.first().map_or("missing".to_owned(), |r| result_name(r.result));
    println!("transfer {id}: {result}");
    Ok(result == "ok" || result == "exists")
}

async fn history(client: &mut LedgerClient, account: u128, limit: u32, after: String) -> anyhow::Result<bool> {
    let page = openledger_proto::common::v1::PageRequest { page_size: limit, page_token: after };
    let response = client
        .get_account_transfers(pb::GetAccountTransfersRequest { account_id: wire(account), page: Some(page) })
        .await?
        .into_inner();
    println!("{:<40} {:<40} {:<40} {:>24}", "transfer", "debit", "credit", "amount (OPEN)");
    for transfer in &response.transfers {
        println!(
            "{:<40} {:<40} {:<40} {:>24}",
            unwire(transfer.id.as_ref()),
            unwire(transfer.debit_account_id.as_ref()),
            unwire(transfer.credit_account_id.as_ref()),
            open(transfer.amount.as_ref())
        );
    }
    if let Some(next) = response.page.map(|page| page.next_page_token).filter(|token| !token.is_empty()) {
        println!("more: --after {next}");
    }
    Ok(true)
}

async fn stake(client: &mut LedgerClient, direction: StakeAction, args: StakeArgs) -> anyhow::Result<bool> {
    let StakeArgs { account, amount, operation_id, key_file, .. } = args;
    let signature = staking_signature(direction, &operation_id, account, amount, key_file)?;
    let (account_id, amount) = (wire(account), wire(amount.base_units()));
    match direction {
        StakeAction::Stake => {
            let request = pb::StakeRequest { operation_id, account_id, amount, signature };
            let total = client.stake(request).await?.into_inner().staked_total;
            println!("staked: {} OPEN", open(total.as_ref()));
        }
        StakeAction::Unstake => {
            let request = pb::UnstakeRequest { operation_id, account_id, amount, signature };
            let release = client.unstake(request).await?.into_inner().unbonded_at_unix_seconds;
            println!("unbonding: paid back at {release} (Unix seconds)");
        }
    }
    Ok(true)
}

/// The parameters in force with the proposal's changes applied.
fn proposed_parameters(args: &ProposeArgs, current: &pb::Parameters) -> openledger_ledger::operations::Economics {
    let current = openledger_ledger::operations::Economics::from_proto(current);
    openledger_ledger::operations::Economics {
        model_owner_bps: args.model_owner_bps.unwrap_or(current.model_owner_bps),
        stakers_bps: args.stakers_bps.unwrap_or(current.stakers_bps),
        contributors_bps: args.contributors_bps.unwrap_or(current.contributors_bps),
        platform_fee: args.platform_fee.map_or(current.platform_fee, Amount::base_units),
        slashing_bps: args.slashing_bps.unwrap_or(current.slashing_bps),
        minimum_stake: args.minimum_stake.map_or(current.minimum_stake, Amount::base_units),
        unbonding_seconds: args.unbonding_seconds.unwrap_or(current.unbonding_seconds),
        epoch_seconds: args.epoch_seconds.unwrap_or(current.epoch_seconds),
        slashing_threshold_milli: args.slashing_threshold_milli.unwrap_or(current.slashing_threshold_milli),
    }
}

async fn propose(client: &mut LedgerClient, args: ProposeArgs) -> anyhow::Result<bool> {
    let key = read_key(&args.key_file)?;
    let current = client.get_parameters(pb::GetParametersRequest::default()).await?.into_inner();
    let parameters = proposed_parameters(&args, &current);
    openledger_ledger::governance::validate_parameters(&parameters).map_err(|reason| anyhow::anyhow!(reason))?;
    let ProposeArgs { id, account, rationale, .. } = args;
    let message = openledger_signing::proposal_message(&id, account, &(&parameters).into());
    let request = pb::SubmitProposalRequest {
        proposal_id: id,
        parameters: Some(parameters.to_proto()),
        rationale,
        signature: Some(sign(&key, &message)),
        proposer_account_id: wire(account),
    };
    print_proposal(&client.submit_proposal(request).await?.into_inner());
    Ok(true)
}

async fn vote(
    client: &mut LedgerClient,
    proposal: String,
    account: u128,
    key_file: &std::path::Path,
    yes: bool,
) -> anyhow::Result<bool> {
    let key = read_key(key_file)?;
    let message = openledger_signing::vote_message(&proposal, account, yes);
    let request = pb::CastVoteRequest {
        proposal_id: proposal,
        approve: yes,
        signature: Some(sign(&key, &message)),
        account_id: wire(account),
    };
    print_proposal(&client.cast_vote(request).await?.into_inner());
    Ok(true)
}

/// The ledger's books straight from the configured database (no running service needed).
async fn offline_ledger(config: &Config) -> anyhow::Result<openledger_ledger::Ledger> {
    let url = config.effective_database_url();
    let db = openledger_store::connect(&url).await?;
    if openledger_store::pending_migrations(&db).await? > 0 {
        anyhow::bail!(
            "the database at {} has no (or an older) ledger schema: start the ledger once first",
            openledger_core::redact_url(&url)
        );
    }
    Ok(openledger_ledger::Ledger::new(db))
}

async fn export(config: &Config, out: &str, epoch_seconds: Option<u64>) -> anyhow::Result<bool> {
    let ledger = offline_ledger(config).await?;
    let epoch_seconds = match epoch_seconds {
        Some(seconds) => seconds,
        None => ledger.parameters_at(openledger_ledger::Ledger::now_ns()).await?.epoch_seconds,
    };
    anyhow::ensure!(epoch_seconds > 0, "--epoch-seconds must be positive");
    let lines = if out == "-" {
        ledger.export_journal(&mut std::io::stdout().lock(), epoch_seconds).await?
    } else {
        let file = std::fs::File::create(out).map_err(|error| anyhow::anyhow!("cannot create {out}: {error}"))?;
        let mut writer = std::io::BufWriter::new(file);
        let lines = ledger.export_journal(&mut writer, epoch_seconds).await?;
        std::io::Write::flush(&mut writer)?;
        eprintln!("wrote {lines} lines to {out}");
        lines
    };
    Ok(lines > 0)
}

async fn verify(config: &Config) -> anyhow::Result<bool> {
    let report = offline_ledger(config).await?.verify().await?;
    println!("journal entries checked: {}", report.entries);
    println!("transfers replayed:      {}", report.transfers);
    println!("epoch roots recomputed:  {}", report.epochs);
    match &report.first_mismatch {
        None => println!("hash chain:              ok"),
        Some((sequence, detail)) => println!("hash chain:              FIRST MISMATCH at entry {sequence}: {detail}"),
    }
    if report.book_errors.is_empty() {
        println!("books:                   ok (balances replay exactly, debits = credits, no limit exceeded)");
    }
    for error in &report.book_errors {
        println!("books:                   {error}");
    }
    Ok(report.ok())
}

/// Attributions per `ListAttributions` page, and expected settlements per audit message.
const AUDIT_PAGE: u32 = 500;

async fn audit(client: &mut LedgerClient, args: AuditArgs, config: &Config) -> anyhow::Result<bool> {
    let expected = match &args.attributions {
        Some(path) => attributions_from_file(path)?,
        None => stored_attributions(args.attribution_url.clone(), config).await?,
    };
    let count = expected.len();
    let pages: Vec<pb::AuditSettlementsRequest> = expected
        .chunks(AUDIT_PAGE as usize)
        .map(|page| pb::AuditSettlementsRequest { settlements: page.to_vec() })
        .collect();
    let report = client.audit_settlements(futures::stream::iter(pages)).await?.into_inner();
    println!("attributions:              {count}");
    println!("captures in the books:     {}", report.captures);
    println!("settled as attributed:     {}", report.settled);
    println!("unsettled (lost):          {}", report.unsettled);
    println!("never captured (no charge):{}", format_args!(" {}", report.never_captured));
    println!("mismatched or doubled:     {}", report.mismatched);
    println!("captures not attributed:   {}", report.unknown_captures);
    println!("stray settlement legs:     {}", report.stray_settlement_transfers);
    println!("books verify:              {}", if report.books_verified { "yes" } else { "NO" });
    if report.ok {
        println!("audit:                     ok");
    } else {
        println!("audit:                     FIRST EXCEPTION: {}", report.first_exception);
    }
    Ok(report.ok)
}

/// Every stored attribution as the settlement it calls for, paged in inference-id order.
async fn stored_attributions(url: Option<String>, config: &Config) -> anyhow::Result<Vec<pb::SettleInferenceRequest>> {
    use openledger_proto::attribution::v1::{
        ListAttributionsRequest, attribution_service_client::AttributionServiceClient,
    };
    let channel = crate::service_channel(ServiceKind::AttributionWorker, url, config)?;
    let mut worker = AttributionServiceClient::new(channel);
    let (mut expected, mut after) = (Vec::new(), String::new());
    loop {
        let request = ListAttributionsRequest { after: after.clone(), limit: AUDIT_PAGE };
        let page = worker.list_attributions(request).await?.into_inner();
        for attribution in &page.attributions {
            expected.push(pb::SettleInferenceRequest {
                inference_id: attribution.inference_id.clone(),
                model_owner_account_id: attribution.model_owner_account_id,
                weights: attribution
                    .weights
                    .iter()
                    .map(|w| pb::ContributorWeight {
                        contributor_account_id: w.contributor_account_id,
                        contribution_id: w.contribution_id.clone(),
                        weight_ppb: w.weight_ppb,
                        contributor: w.contributor.clone(),
                    })
                    .collect(),
            });
        }
        match page.attributions.last() {
            Some(last) if page.has_more => after = last.inference_id.clone(),
            _ => return Ok(expected),
        }
    }
}

/// Attributions from a JSON lines file (see `AuditArgs::attributions`).
fn attributions_from_file(path: &std::path::Path) -> anyhow::Result<Vec<pb::SettleInferenceRequest>> {
    #[derive(serde::Deserialize)]
    struct Line {
        inference_id: String,
        #[serde(default)]
        model_owner_account_id: Option<String>,
        #[serde(default)]
        weights: Vec<Weight>,
    }
    #[derive(serde::Deserialize)]
    struct Weight {
        #[serde(default)]
        contributor_account_id: Option<String>,
        #[serde(default)]
        contributor: String,
        weight_ppb: i64,
    }
    let text =
        std::fs::read_to_string(path).map_err(|error| anyhow::anyhow!("cannot read {}: {error}", path.display()))?;
    let id = |value: &Option<String>, line: usize| -> anyhow::Result<Option<Uint128>> {
        match value.as_deref() {
            None | Some("") => Ok(None),
            Some(text) => Ok(wire(parse_id(text).map_err(|error| anyhow::anyhow!("line {line}: {error}"))?)),
        }
    };
    let mut expected = Vec::new();
    for (index, line) in text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()) {
        let number = index + 1;
        let parsed: Line =
            serde_json::from_str(line).map_err(|error| anyhow::anyhow!("{} line {number}: {error}", path.display()))?;
        let mut weights = Vec::with_capacity(parsed.weights.len());
        for weight in &parsed.weights {
            weights.push(pb::ContributorWeight {
                contributor_account_id: id(&weight.contributor_account_id, number)?,
                contributor: hex::decode(&weight.contributor)
                    .map_err(|_| anyhow::anyhow!("line {number}: contributor must be a hex public key"))?,
                weight_ppb: weight.weight_ppb,
                ..Default::default()
            });
        }
        expected.push(pb::SettleInferenceRequest {
            inference_id: parsed.inference_id,
            model_owner_account_id: id(&parsed.model_owner_account_id, number)?,
            weights,
        });
    }
    Ok(expected)
}

fn keygen(out: &std::path::Path) -> anyhow::Result<bool> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let mut secret = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut secret)?;
    let key = ed25519_dalek::SigningKey::from_bytes(&secret);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(out).map_err(|error| {
        anyhow::anyhow!("cannot create {}: {error} (an existing key is never overwritten)", out.display())
    })?;
    std::io::Write::write_all(&mut file, format!("{}\n", hex::encode(secret)).as_bytes())?;
    println!("{}", hex::encode(key.verifying_key().to_bytes()));
    Ok(true)
}

pub(crate) fn read_key(path: &std::path::Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| anyhow::anyhow!("cannot read key file {}: {error}", path.display()))?;
    let bytes = hex::decode(text.trim()).ok().and_then(|bytes| <[u8; 32]>::try_from(bytes).ok()).ok_or_else(|| {
        anyhow::anyhow!(
            "key file {} must hold a 32-byte ed25519 secret key in hex (see `openledger ledger keygen`)",
            path.display()
        )
    })?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&bytes))
}

/// The owner's signature over a stake or unstake, when a key file is given.
fn staking_signature(
    action: StakeAction,
    operation_id: &str,
    account: u128,
    amount: Amount,
    key_file: Option<std::path::PathBuf>,
) -> anyhow::Result<Option<openledger_proto::common::v1::Signature>> {
    let message = openledger_signing::staking_message(action, operation_id, account, amount.base_units());
    key_file.map(|path| read_key(&path).map(|key| sign(&key, &message))).transpose()
}

fn print_proposal(proposal: &pb::Proposal) {
    println!(
        "proposal {}: {} (for {} OPEN, against {} OPEN; voting ends at {}, executable after {})",
        proposal.proposal_id,
        proposal.state,
        open(proposal.votes_for.as_ref()),
        open(proposal.votes_against.as_ref()),
        proposal.voting_ends_unix_seconds,
        proposal.executable_after_unix_seconds
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attributions_file_reads_as_the_settlements_it_calls_for() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("attributions.jsonl");
        let key = hex::encode([7u8; 32]);
        let lines = format!(
            "{{\"inference_id\":\"a\",\"model_owner_account_id\":\"70001\",\"weights\":[{{\"contributor\":\"{key}\",\"weight_ppb\":600}},{{\"contributor_account_id\":\"70002\",\"weight_ppb\":-5}}]}}\n\n{{\"inference_id\":\"b\"}}\n"
        );
        std::fs::write(&path, lines).expect("write");
        let expected = attributions_from_file(&path).expect("parse");
        assert_eq!(expected.len(), 2, "blank lines are skipped");
        assert_eq!(
            (expected[0].inference_id.as_str(), unwire(expected[0].model_owner_account_id.as_ref())),
            ("a", 70_001)
        );
        let weights: Vec<(u128, Vec<u8>, i64)> = expected[0]
            .weights
            .iter()
            .map(|w| (unwire(w.contributor_account_id.as_ref()), w.contributor.clone(), w.weight_ppb))
            .collect();
        assert_eq!(weights, vec![(0, vec![7; 32], 600), (70_002, vec![], -5)]);
        assert_eq!(unwire(expected[1].model_owner_account_id.as_ref()), 0, "no model owner: the treasury's share");
        std::fs::write(&path, "{\"inference_id\":\"c\",\"weights\":[{\"contributor\":\"zz\",\"weight_ppb\":1}]}")
            .expect("write");
        let error = attributions_from_file(&path).expect_err("not hex");
        assert!(error.to_string().contains("line 1"), "{error}");
    }
}
