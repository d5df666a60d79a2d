//! `openledger ledger …`: balances, transfers and history through the ledger's gRPC API, and
//! `verify`, which checks the journal straight from the database (no running service needed).

use clap::Subcommand;
use openledger_core::{Amount, Config};
use openledger_proto::{common::v1::Uint128, ledger::v1 as pb};

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
    },
    /// Recompute the journal's hash chain and replay every transfer, from the database
    Verify,
    /// Write the journal and per-epoch Merkle roots as JSON lines, from the database
    Export {
        /// Output file ("-" for standard output)
        #[arg(long, default_value = "-")]
        out: String,
        /// Epoch length for the Merkle roots
        #[arg(long, default_value_t = 86_400)]
        epoch_seconds: u64,
    },
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

fn wire(value: u128) -> Option<Uint128> {
    Some(Uint128 { high: (value >> 64) as u64, low: value as u64 })
}

fn unwire(value: Option<&Uint128>) -> u128 {
    value.map_or(0, |value| (u128::from(value.high) << 64) | u128::from(value.low))
}

fn open(value: Option<&Uint128>) -> String {
    Amount::from_base_units(unwire(value)).to_string()
}

fn result_name(code: i32) -> String {
    pb::CreateResult::try_from(code)
        .map(|result| result.as_str_name().trim_start_matches("CREATE_RESULT_").to_lowercase())
        .unwrap_or_else(|_| format!("unknown ({code})"))
}

/// Runs a ledger command; the exit code follows the outcome.
pub async fn run(command: LedgerCommand, config: &Config) -> anyhow::Result<bool> {
    match command {
        LedgerCommand::Verify => return verify(config).await,
        LedgerCommand::Export { out, epoch_seconds } => return export(config, &out, epoch_seconds).await,
        _ => {}
    }
    let url = config.ledger_url.clone().unwrap_or_else(|| {
        format!("http://{}:{}", config.listen_host, config.grpc_port(openledger_core::ServiceKind::Ledger))
    });
    let mut client = pb::ledger_service_client::LedgerServiceClient::connect(url.clone())
        .await
        .map_err(|error| anyhow::anyhow!("cannot reach the ledger at {url}: {error}; is `openledger dev` running?"))?;
    match command {
        LedgerCommand::Balance { accounts, at } => {
            let found = match at {
                None => {
                    let ids = accounts.iter().map(|id| wire(*id).expect("some")).collect();
                    client.lookup_accounts(pb::LookupAccountsRequest { ids }).await?.into_inner().accounts
                }
                Some(seconds) => {
                    let mut found = Vec::new();
                    for id in &accounts {
                        let request = pb::LookupAccountAtRequest {
                            account_id: wire(*id),
                            timestamp: seconds.saturating_mul(1_000_000_000),
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
            for id in &accounts {
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
        LedgerCommand::Transfer { from, to, amount, id, pending, timeout_seconds } => {
            let id = id.unwrap_or_else(|| u128::from_be_bytes(*openledger_core::Id::new().as_uuid().as_bytes()));
            let flags = if pending { vec![pb::TransferFlag::Pending as i32] } else { Vec::new() };
            let transfer = pb::Transfer {
                id: wire(id),
                debit_account_id: wire(from),
                credit_account_id: wire(to),
                amount: wire(amount.base_units()),
                ledger: openledger_ledger::model::OPEN_LEDGER,
                flags,
                timeout_seconds,
                ..Default::default()
            };
            let results = client
                .create_transfers(pb::CreateTransfersRequest { transfers: vec![transfer] })
                .await?
                .into_inner()
                .results;
            let result = results.first().map_or("missing".to_owned(), |r| result_name(r.result));
            println!("transfer {id}: {result}");
            Ok(result == "ok" || result == "exists")
        }
        LedgerCommand::History { account, limit, after } => {
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
        LedgerCommand::Verify | LedgerCommand::Export { .. } => unreachable!("handled above"),
    }
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

async fn export(config: &Config, out: &str, epoch_seconds: u64) -> anyhow::Result<bool> {
    let ledger = offline_ledger(config).await?;
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
