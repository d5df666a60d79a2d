//! `/v1/accounts`: create an account, read it and its transfers.

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::IntoResponse,
    routing::{get, post},
};
use openledger_core::ErrorCode;
use openledger_proto::{
    common::v1::Uint128,
    ledger::v1::{self as pb},
};
use openledger_proto::{u128_of as unwire, uint128 as wire};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Ledger, parse_u128};
use crate::edge::{
    ApiError, ErrorBody,
    body::JsonBody,
    page::{NumericPageQuery, next_cursor},
};

/// Routes under `/v1/accounts`.
pub fn routes() -> Router<Ledger> {
    Router::new()
        .route("/v1/accounts", post(create_account))
        .route("/v1/accounts/{id}", get(get_account))
        .route("/v1/accounts/{id}/transfers", get(account_transfers))
}

/// A new account owned by an ed25519 public key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccountRequest {
    /// Client-chosen id: a decimal u128 of at least 65536 (smaller ids are the system's).
    #[schema(pattern = "^(6553[6-9]|655[4-9][0-9]|65[6-9][0-9]{2}|6[6-9][0-9]{3}|[7-9][0-9]{4}|[1-9][0-9]{5,37})$")]
    pub id: String,
    /// The owner's ed25519 public key, 64 hex characters.
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    pub public_key: String,
    /// What the account is for (application-defined, 0..=65535).
    #[serde(default)]
    #[schema(maximum = 65535)]
    pub code: u16,
    /// `debits_must_not_exceed_credits` or `credits_must_not_exceed_debits` (not both).
    #[serde(default)]
    #[schema(inline, value_type = Vec<AccountFlag>, max_items = 1)]
    pub flags: Vec<String>,
}

/// The flags an account may be created with.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccountFlag {
    DebitsMustNotExceedCredits,
    CreditsMustNotExceedDebits,
}

/// An account and its balances (decimal strings of base units).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Account {
    pub id: String,
    /// `key:<hex>` or `system:<role>`.
    pub owner: String,
    pub ledger: u32,
    pub code: u32,
    pub flags: Vec<String>,
    pub debits_pending: String,
    pub debits_posted: String,
    pub credits_pending: String,
    pub credits_posted: String,
    /// Posted credits minus posted debits; may start with `-`.
    pub balance: String,
    /// Nanoseconds since the Unix epoch.
    pub timestamp: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Transfer {
    pub id: String,
    pub debit_account_id: String,
    pub credit_account_id: String,
    pub amount: String,
    pub pending_id: String,
    pub code: u32,
    pub flags: Vec<String>,
    pub timestamp: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TransferPage {
    pub transfers: Vec<Transfer>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

fn flag_names(flags: &[i32], names: impl Fn(i32) -> Option<String>) -> Vec<String> {
    flags.iter().filter_map(|flag| names(*flag)).collect()
}

fn account_flag(flag: i32) -> Option<String> {
    pb::AccountFlag::try_from(flag)
        .ok()
        .map(|flag| flag.as_str_name().trim_start_matches("ACCOUNT_FLAG_").to_lowercase())
}

impl From<&pb::Account> for Account {
    fn from(account: &pb::Account) -> Self {
        let credits = unwire(account.credits_posted.as_ref());
        let debits = unwire(account.debits_posted.as_ref());
        let balance = if credits >= debits { (credits - debits).to_string() } else { format!("-{}", debits - credits) };
        let owner = match &account.owner {
            Some(pb::account::Owner::PublicKey(key)) => format!("key:{}", hex::encode(key)),
            Some(pb::account::Owner::SystemRole(role)) => format!(
                "system:{}",
                pb::SystemRole::try_from(*role)
                    .map_or("unknown".into(), |r| r.as_str_name().trim_start_matches("SYSTEM_ROLE_").to_lowercase())
            ),
            None => "unknown".to_owned(),
        };
        Account {
            id: unwire(account.id.as_ref()).to_string(),
            owner,
            ledger: account.ledger,
            code: account.code,
            flags: flag_names(&account.flags, account_flag),
            debits_pending: unwire(account.debits_pending.as_ref()).to_string(),
            debits_posted: debits.to_string(),
            credits_pending: unwire(account.credits_pending.as_ref()).to_string(),
            credits_posted: credits.to_string(),
            balance,
            timestamp: account.timestamp,
        }
    }
}

fn transfer_flag(flag: i32) -> Option<String> {
    pb::TransferFlag::try_from(flag).ok().map(|f| f.as_str_name().trim_start_matches("TRANSFER_FLAG_").to_lowercase())
}

impl From<&pb::Transfer> for Transfer {
    fn from(t: &pb::Transfer) -> Self {
        Self {
            id: unwire(t.id.as_ref()).to_string(),
            debit_account_id: unwire(t.debit_account_id.as_ref()).to_string(),
            credit_account_id: unwire(t.credit_account_id.as_ref()).to_string(),
            amount: unwire(t.amount.as_ref()).to_string(),
            pending_id: unwire(t.pending_id.as_ref()).to_string(),
            code: t.code,
            flags: flag_names(&t.flags, transfer_flag),
            timestamp: t.timestamp,
        }
    }
}

/// Create an account.
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", request_body = CreateAccountRequest, responses(
    (status = 201, description = "Created", body = Account),
    (status = 200, description = "Already exists with the same fields (retries are safe)", body = Account),
    (status = 400, description = "Invalid account", body = ErrorBody),
    (status = 409, description = "The id exists with different fields", body = ErrorBody),
))]
pub async fn create_account(
    State(ledger): State<Ledger>,
    JsonBody(new): JsonBody<CreateAccountRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_u128(&new.id, "account id")?;
    let key = hex::decode(&new.public_key).ok().filter(|key| key.len() == 32).ok_or_else(|| {
        ApiError::new(ErrorCode::InvalidArgument, "public_key must be 64 hex characters (an ed25519 key)")
    })?;
    if new.flags.len() > 1 {
        return Err(ApiError::invalid(
            "flags holds at most one of debits_must_not_exceed_credits, credits_must_not_exceed_debits",
        ));
    }
    let mut flags = Vec::new();
    for flag in &new.flags {
        flags.push(match flag.as_str() {
            "debits_must_not_exceed_credits" => pb::AccountFlag::DebitsMustNotExceedCredits as i32,
            "credits_must_not_exceed_debits" => pb::AccountFlag::CreditsMustNotExceedDebits as i32,
            other => {
                return Err(ApiError::new(
                    ErrorCode::InvalidArgument,
                    format!("unknown flag {other:?}: accepted values are debits_must_not_exceed_credits, credits_must_not_exceed_debits"),
                ));
            }
        });
    }
    let account = pb::Account {
        id: wire(id),
        owner: Some(pb::account::Owner::PublicKey(key)),
        ledger: 1,
        code: u32::from(new.code),
        flags,
        ..Default::default()
    };
    let mut client = ledger.client()?;
    let results =
        client.create_accounts(pb::CreateAccountsRequest { accounts: vec![account] }).await?.into_inner().results;
    let result =
        results.first().and_then(|r| pb::CreateResult::try_from(r.result).ok()).unwrap_or(pb::CreateResult::Ok);
    let status = match result {
        pb::CreateResult::Ok => StatusCode::CREATED,
        pb::CreateResult::Exists => StatusCode::OK,
        pb::CreateResult::ExistsWithDifferentFields => {
            return Err(ApiError::new(ErrorCode::AlreadyExists, format!("account {id} exists with different fields")));
        }
        other => {
            let reason = other.as_str_name().trim_start_matches("CREATE_RESULT_").to_lowercase();
            return Err(ApiError::new(ErrorCode::InvalidArgument, format!("account {id} refused: {reason}")));
        }
    };
    let found = client.lookup_accounts(pb::LookupAccountsRequest { ids: vec![Uint128::from(id)] }).await?;
    let account = found
        .into_inner()
        .accounts
        .pop()
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "created account not found"))?;
    Ok((status, Json(Account::from(&account))))
}

/// An account and its balances.
#[utoipa::path(get, path = "/v1/accounts/{id}", tag = "accounts", params(("id" = String, Path, description = "Decimal account id", pattern = "^[0-9]{1,38}$")), responses(
    (status = 200, description = "The account", body = Account),
    (status = 404, description = "No such account", body = ErrorBody),
))]
pub async fn get_account(State(ledger): State<Ledger>, Path(id): Path<String>) -> Result<Json<Account>, ApiError> {
    let id = parse_u128(&id, "account id")?;
    let found = ledger.client()?.lookup_accounts(pb::LookupAccountsRequest { ids: vec![Uint128::from(id)] }).await?;
    let account = found
        .into_inner()
        .accounts
        .pop()
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("account {id} does not exist")))?;
    Ok(Json(Account::from(&account)))
}

/// An account's transfers, oldest first, a page at a time.
#[utoipa::path(get, path = "/v1/accounts/{id}/transfers", tag = "accounts", params(("id" = String, Path, description = "Decimal account id", pattern = "^[0-9]{1,38}$"), NumericPageQuery), responses(
    (status = 200, description = "A page of transfers", body = TransferPage),
    (status = 404, description = "No such account", body = ErrorBody),
))]
pub async fn account_transfers(
    State(ledger): State<Ledger>,
    Path(id): Path<String>,
    Query(page): Query<NumericPageQuery>,
) -> Result<Json<TransferPage>, ApiError> {
    let id = parse_u128(&id, "account id")?;
    let request = pb::GetAccountTransfersRequest { account_id: wire(id), page: Some(page.request()?) };
    let response = ledger.client()?.get_account_transfers(request).await?.into_inner();
    let transfers = response.transfers.iter().map(Transfer::from).collect();
    let next_cursor = next_cursor(response.page);
    Ok(Json(TransferPage { transfers, next_cursor }))
}
