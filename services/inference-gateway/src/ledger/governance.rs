//! Staking and governance over REST, forwarded to the ledger. The public edge has no API keys
//! yet, so every request that moves stake or decides parameters carries the account owner's
//! ed25519 signature (hex), checked by the ledger; messages are defined in
//! `openledger_ledger::governance` and documented on each request type.

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::IntoResponse,
    routing::{get, post},
};
use openledger_core::{Amount, ErrorCode};
use openledger_proto::ledger::v1::{self as pb};
use openledger_proto::{u128_of as unwire, uint128 as wire};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Ledger, parse_u128};
use crate::edge::{ApiError, ErrorBody, body::JsonBody, signature::signature};

pub fn routes() -> Router<Ledger> {
    Router::new()
        .route("/v1/accounts/{id}/stake", post(stake))
        .route("/v1/accounts/{id}/unstake", post(unstake))
        .route("/v1/governance/parameters", get(parameters))
        .route("/v1/governance/proposals", post(propose))
        .route("/v1/governance/proposals/{id}", get(proposal))
        .route("/v1/governance/proposals/{id}/votes", post(vote))
}

/// Stake or unstake, signed over `openledger/stake/v1\n<operation_id>\n<account>\n<amount>`
/// (`unstake` for unstaking).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StakeRequest {
    /// Idempotency key: repeating it applies the change once.
    #[schema(pattern = "^[ -~]{1,128}$")]
    pub operation_id: String,
    /// Base units, as a decimal string.
    #[schema(pattern = "^[0-9]{1,38}$")]
    pub amount: String,
    /// The account owner's ed25519 public key, hex.
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    pub public_key: String,
    /// The signature, hex.
    #[schema(pattern = "^[0-9a-fA-F]{128}$")]
    pub signature: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Stake {
    pub staked_total: Option<String>,
    pub unbonded_at_unix_seconds: Option<u64>,
}

/// The economic parameters; amounts are decimal strings of base units.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Parameters {
    #[schema(maximum = 10000)]
    pub model_owner_bps: u32,
    #[schema(maximum = 10000)]
    pub stakers_bps: u32,
    #[schema(maximum = 10000)]
    pub contributors_bps: u32,
    #[schema(pattern = "^[0-9]{1,38}$")]
    pub platform_fee: String,
    #[schema(maximum = 10000)]
    pub slashing_bps: u32,
    #[schema(pattern = "^[0-9]{1,38}$")]
    pub minimum_stake: String,
    #[schema(maximum = 9223372036854775807_u64)]
    pub unbonding_seconds: u64,
    #[schema(maximum = 9223372036854775807_u64)]
    pub epoch_seconds: u64,
    /// Quality score below which a contribution's bond is slashed, in thousandths (-1000: one
    /// median deviation below the typical record, the default); the ledger refuses one
    /// outside -100000..=0. A proposal names it, as every parameter.
    #[schema(minimum = -100000, maximum = 0)]
    pub slashing_threshold_milli: i32,
}

/// A proposal, signed over `openledger/proposal/v2\n<id>\n<account>\n<canonical parameters JSON>`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProposalRequest {
    #[schema(pattern = "^[ -~]{1,128}$")]
    pub id: String,
    #[schema(pattern = "^[0-9]{1,38}$")]
    pub account: String,
    pub parameters: Parameters,
    #[serde(default)]
    pub rationale: String,
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    pub public_key: String,
    #[schema(pattern = "^[0-9a-fA-F]{128}$")]
    pub signature: String,
}

/// A vote, signed over `openledger/vote/v1\n<proposal id>\n<account>\n<yes|no>`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CastVoteRequest {
    #[schema(pattern = "^[0-9]{1,38}$")]
    pub account: String,
    pub approve: bool,
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    pub public_key: String,
    #[schema(pattern = "^[0-9a-fA-F]{128}$")]
    pub signature: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Proposal {
    pub id: String,
    pub proposer: String,
    pub state: String,
    pub votes_for: String,
    pub votes_against: String,
    pub voting_ends_unix_seconds: u64,
    pub executable_after_unix_seconds: u64,
    pub effective_from_epoch: Option<u64>,
    pub parameters: Option<Parameters>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidArgument, message)
}

fn parse_amount(text: &str, what: &str) -> Result<u128, ApiError> {
    Amount::from_base_units_str(text).map(Amount::base_units).map_err(|error| invalid(format!("{what}: {error}")))
}

impl TryFrom<&Parameters> for pb::Parameters {
    type Error = ApiError;

    fn try_from(view: &Parameters) -> Result<Self, ApiError> {
        let shares = [
            ("model_owner_bps", view.model_owner_bps),
            ("stakers_bps", view.stakers_bps),
            ("contributors_bps", view.contributors_bps),
            ("slashing_bps", view.slashing_bps),
        ];
        if let Some((field, bps)) = shares.into_iter().find(|(_, bps)| *bps > 10_000) {
            return Err(ApiError::invalid(format!("{field} is {bps}: at most 10000 basis points (100%)")));
        }
        // The document states these as int64, as every JSON integer the edge takes.
        for (field, seconds) in [("unbonding_seconds", view.unbonding_seconds), ("epoch_seconds", view.epoch_seconds)] {
            if i64::try_from(seconds).is_err() {
                return Err(ApiError::invalid(format!("{field} must be at most {}, got {seconds}", i64::MAX)));
            }
        }
        Ok(pb::Parameters {
            model_owner_bps: view.model_owner_bps,
            stakers_bps: view.stakers_bps,
            contributors_bps: view.contributors_bps,
            platform_fee: wire(parse_amount(&view.platform_fee, "platform_fee")?),
            slashing_bps: view.slashing_bps,
            unbonding_seconds: view.unbonding_seconds,
            minimum_stake: wire(parse_amount(&view.minimum_stake, "minimum_stake")?),
            epoch_seconds: view.epoch_seconds,
            effective_from_epoch: 0,
            slashing_threshold_milli: Some(view.slashing_threshold_milli),
        })
    }
}

impl From<&pb::Parameters> for Parameters {
    fn from(parameters: &pb::Parameters) -> Self {
        Self {
            model_owner_bps: parameters.model_owner_bps,
            stakers_bps: parameters.stakers_bps,
            contributors_bps: parameters.contributors_bps,
            platform_fee: unwire(parameters.platform_fee.as_ref()).to_string(),
            slashing_bps: parameters.slashing_bps,
            minimum_stake: unwire(parameters.minimum_stake.as_ref()).to_string(),
            unbonding_seconds: parameters.unbonding_seconds,
            epoch_seconds: parameters.epoch_seconds,
            slashing_threshold_milli: parameters
                .slashing_threshold_milli
                .unwrap_or(openledger_core::slashing::DEFAULT_SLASHING_THRESHOLD_MILLI),
        }
    }
}

impl From<pb::Proposal> for Proposal {
    fn from(proposal: pb::Proposal) -> Self {
        Self {
            id: proposal.proposal_id,
            proposer: unwire(proposal.proposer_account_id.as_ref()).to_string(),
            state: proposal.state,
            votes_for: unwire(proposal.votes_for.as_ref()).to_string(),
            votes_against: unwire(proposal.votes_against.as_ref()).to_string(),
            voting_ends_unix_seconds: proposal.voting_ends_unix_seconds,
            executable_after_unix_seconds: proposal.executable_after_unix_seconds,
            effective_from_epoch: (proposal.effective_from_epoch > 0).then_some(proposal.effective_from_epoch),
            parameters: proposal.parameters.as_ref().map(Parameters::from),
        }
    }
}

/// Stake from an account (signed).
#[utoipa::path(post, path = "/v1/accounts/{id}/stake", tag = "staking", request_body = StakeRequest, params(("id" = String, Path, description = "Decimal account id", pattern = "^[0-9]{1,38}$")), responses(
    (status = 200, description = "Staked", body = Stake),
    (status = 401, description = "Missing or malformed signature", body = ErrorBody),
    (status = 403, description = "The signature verifies, but its key does not own the account", body = ErrorBody),
    (status = 412, description = "Refused (below the minimum stake, insufficient funds)", body = ErrorBody),
    (status = 404, description = "No such account", body = ErrorBody),
))]
pub async fn stake(
    State(ledger): State<Ledger>,
    Path(id): Path<String>,
    JsonBody(change): JsonBody<StakeRequest>,
) -> Result<Json<Stake>, ApiError> {
    let account = parse_u128(&id, "account id")?;
    let request = pb::StakeRequest {
        operation_id: change.operation_id.clone(),
        account_id: wire(account),
        amount: wire(parse_amount(&change.amount, "amount")?),
        signature: Some(signature(&change.public_key, &change.signature)?),
    };
    let total = ledger.client()?.stake(request).await?.into_inner().staked_total;
    Ok(Json(Stake { staked_total: Some(unwire(total.as_ref()).to_string()), unbonded_at_unix_seconds: None }))
}

/// Start unbonding a stake (signed).
#[utoipa::path(post, path = "/v1/accounts/{id}/unstake", tag = "staking", request_body = StakeRequest, params(("id" = String, Path, description = "Decimal account id", pattern = "^[0-9]{1,38}$")), responses(
    (status = 200, description = "Unbonding", body = Stake),
    (status = 401, description = "Missing or malformed signature", body = ErrorBody),
    (status = 403, description = "The signature verifies, but its key does not own the account", body = ErrorBody),
    (status = 412, description = "Refused (more than is staked)", body = ErrorBody),
    (status = 404, description = "No such account", body = ErrorBody),
))]
pub async fn unstake(
    State(ledger): State<Ledger>,
    Path(id): Path<String>,
    JsonBody(change): JsonBody<StakeRequest>,
) -> Result<Json<Stake>, ApiError> {
    let account = parse_u128(&id, "account id")?;
    let request = pb::UnstakeRequest {
        operation_id: change.operation_id.clone(),
        account_id: wire(account),
        amount: wire(parse_amount(&change.amount, "amount")?),
        signature: Some(signature(&change.public_key, &change.signature)?),
    };
    let release = ledger.client()?.unstake(request).await?.into_inner().unbonded_at_unix_seconds;
    Ok(Json(Stake { staked_total: None, unbonded_at_unix_seconds: Some(release) }))
}

/// The economic parameters in force.
#[utoipa::path(get, path = "/v1/governance/parameters", tag = "governance", responses((status = 200, body = Parameters)))]
pub async fn parameters(State(ledger): State<Ledger>) -> Result<Json<Parameters>, ApiError> {
    let parameters = ledger.client()?.get_parameters(pb::GetParametersRequest::default()).await?.into_inner();
    Ok(Json(Parameters::from(&parameters)))
}

/// Propose new parameters (signed; the proposer must hold the proposal threshold in stake).
#[utoipa::path(post, path = "/v1/governance/proposals", tag = "governance", request_body = CreateProposalRequest, responses(
    (status = 201, description = "Proposed", body = Proposal),
    (status = 403, description = "The signature verifies, but its key does not own the account", body = ErrorBody),
    (status = 412, description = "Refused (below the proposal threshold, parameters that do not add up)", body = ErrorBody),
    (status = 404, description = "No such account", body = ErrorBody),
    (status = 409, description = "The proposal id is taken", body = ErrorBody),
))]
pub async fn propose(
    State(ledger): State<Ledger>,
    JsonBody(new): JsonBody<CreateProposalRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let request = pb::SubmitProposalRequest {
        proposal_id: new.id.clone(),
        parameters: Some((&new.parameters).try_into()?),
        rationale: new.rationale.clone(),
        signature: Some(signature(&new.public_key, &new.signature)?),
        proposer_account_id: wire(parse_u128(&new.account, "account")?),
    };
    let proposal = ledger.client()?.submit_proposal(request).await?.into_inner();
    Ok((StatusCode::CREATED, Json(Proposal::from(proposal))))
}

/// A proposal and its tally.
#[utoipa::path(get, path = "/v1/governance/proposals/{id}", tag = "governance", params(("id" = String, Path)), responses(
    (status = 200, body = Proposal),
    (status = 404, body = ErrorBody),
))]
pub async fn proposal(State(ledger): State<Ledger>, Path(id): Path<String>) -> Result<Json<Proposal>, ApiError> {
    let proposal = ledger.client()?.get_proposal(pb::GetProposalRequest { proposal_id: id }).await?.into_inner();
    Ok(Json(Proposal::from(proposal)))
}

/// Vote with an account's stake (signed; one vote per account).
#[utoipa::path(post, path = "/v1/governance/proposals/{id}/votes", tag = "governance", request_body = CastVoteRequest, params(("id" = String, Path)), responses(
    (status = 200, description = "Counted", body = Proposal),
    (status = 403, description = "The signature verifies, but its key does not own the account", body = ErrorBody),
    (status = 412, description = "Refused (no stake, voting closed)", body = ErrorBody),
    (status = 404, description = "No such proposal or account", body = ErrorBody),
    (status = 409, description = "The account has voted already", body = ErrorBody),
))]
pub async fn vote(
    State(ledger): State<Ledger>,
    Path(id): Path<String>,
    JsonBody(new): JsonBody<CastVoteRequest>,
) -> Result<Json<Proposal>, ApiError> {
    let request = pb::CastVoteRequest {
        proposal_id: id,
        approve: new.approve,
        signature: Some(signature(&new.public_key, &new.signature)?),
        account_id: wire(parse_u128(&new.account, "account")?),
    };
    let proposal = ledger.client()?.cast_vote(request).await?.into_inner();
    Ok(Json(Proposal::from(proposal)))
}
