//! Governance of the economic parameters (β, γ, δ, platform fee, slashing rate and threshold,
//! unbonding period, minimum stake, epoch length). A staker holding at least the proposal threshold
//! proposes a full parameter set; stakers vote with their stake at the time of voting; when
//! the voting period ends the proposal passes if the votes cast reach the quorum (a share of
//! everything staked) and more stake approves than rejects; after the timelock it takes
//! effect from the start of the next epoch. Every parameter set ever in force is kept.
//! Proposals, votes and stake changes are signed with the ed25519 key that owns the account,
//! over the messages `openledger_signing` defines; [`Ledger::check_signature`] is the check.

use openledger_core::slashing::{
    DEFAULT_SLASHING_THRESHOLD_MILLI, MAX_SLASHING_THRESHOLD_MILLI, MIN_SLASHING_THRESHOLD_MILLI,
};
use openledger_proto::events::v1::ProposalExecuted;
use openledger_store::NewEvent;
use prost::Message;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, Set, TransactionTrait,
};

use crate::{
    books::{Ledger, LedgerError},
    entities::{account, parameters, proposal, vote},
    limits::{BASIS_POINTS_TOTAL, MAX_EPOCH_SECONDS, MAX_PROPOSAL_RATIONALE_CHARS, NANOS_PER_SECOND as NANOS},
    model::{Owner, stored_enum},
    operations::{Economics, OperationError, bps_share, not_found},
    staking::codes,
};

pub const SUBJECT_PROPOSAL_EXECUTED: &str = "ol.ledger.proposal.executed";
/// The `proposal_id` the genesis parameter set is recorded under.
pub const GENESIS_PROPOSAL_ID: &str = "genesis";

/// How proposals are decided (fixed by configuration, not themselves governed: the voting
/// period and timelock are `governance_voting_seconds` and `governance_timelock_seconds`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GovernanceRules {
    /// Stake a proposer must hold.
    pub proposal_threshold: u128,
    pub voting_seconds: u64,
    /// Share of all staked value that must vote, in basis points.
    pub quorum_bps: u32,
    /// Wait between passing and taking effect.
    pub timelock_seconds: u64,
}

impl Default for GovernanceRules {
    fn default() -> Self {
        Self {
            proposal_threshold: 1_000 * 10u128.pow(18),
            voting_seconds: openledger_core::governance::DEFAULT_VOTING_SECONDS,
            quorum_bps: 1_000,
            timelock_seconds: openledger_core::governance::DEFAULT_TIMELOCK_SECONDS,
        }
    }
}

impl GovernanceRules {
    /// The rules `config` sets (its voting period and timelock), the rest as by default.
    pub fn from_config(config: &openledger_core::Config) -> Self {
        Self {
            voting_seconds: config.governance_voting_seconds,
            timelock_seconds: config.governance_timelock_seconds,
            ..Self::default()
        }
    }
}

stored_enum! {
    /// Where a proposal stands (`ledger_proposals.state`).
    pub enum ProposalState {
        Voting = 0,
        Passed = 1,
        Rejected = 2,
        Executed = 3,
    }
}

impl ProposalState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Voting => "voting",
            Self::Passed => "passed",
            Self::Rejected => "rejected",
            Self::Executed => "executed",
        }
    }
}

/// A proposal and its tally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProposalView {
    pub id: String,
    pub proposer: u128,
    pub parameters: Economics,
    pub state: ProposalState,
    pub votes_for: u128,
    pub votes_against: u128,
    pub voting_ends_ns: u64,
    pub executable_after_ns: u64,
    pub effective_from_epoch: Option<u64>,
}

fn refused(operation: &'static str, reason: impl Into<String>) -> OperationError {
    OperationError::Refused { operation, reason: reason.into() }
}

/// The canonical JSON of a parameter set (sorted keys, amounts as decimal strings): what
/// proposers sign (see `openledger_signing::proposal_message`), and how parameters are stored.
pub fn parameters_json(parameters: &Economics) -> String {
    openledger_signing::canonical::Parameters::from(parameters).canonical_json()
}

impl From<&Economics> for openledger_signing::canonical::Parameters {
    fn from(parameters: &Economics) -> Self {
        Self {
            model_owner_bps: parameters.model_owner_bps,
            stakers_bps: parameters.stakers_bps,
            contributors_bps: parameters.contributors_bps,
            platform_fee: parameters.platform_fee,
            slashing_bps: parameters.slashing_bps,
            minimum_stake: parameters.minimum_stake,
            unbonding_seconds: parameters.unbonding_seconds,
            epoch_seconds: parameters.epoch_seconds,
            slashing_threshold_milli: parameters.slashing_threshold_milli,
        }
    }
}

fn parse_parameters(text: &str) -> Result<Economics, LedgerError> {
    let corrupt = || LedgerError::Corrupt(format!("stored parameters are not valid: {text}"));
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| corrupt())?;
    let number = |key: &str| value[key].as_u64().ok_or_else(corrupt);
    let basis_points = |key: &str| u32::try_from(number(key)?).map_err(|_| corrupt());
    let amount = |key: &str| value[key].as_str().and_then(|text| text.parse::<u128>().ok()).ok_or_else(corrupt);
    Ok(Economics {
        model_owner_bps: basis_points("model_owner_bps")?,
        stakers_bps: basis_points("stakers_bps")?,
        contributors_bps: basis_points("contributors_bps")?,
        platform_fee: amount("platform_fee")?,
        slashing_bps: basis_points("slashing_bps")?,
        minimum_stake: amount("minimum_stake")?,
        unbonding_seconds: number("unbonding_seconds")?,
        epoch_seconds: number("epoch_seconds")?,
        // Parameter sets stored before the threshold was governed had the default.
        slashing_threshold_milli: match &value["slashing_threshold_milli"] {
            serde_json::Value::Null => DEFAULT_SLASHING_THRESHOLD_MILLI,
            threshold => threshold.as_i64().and_then(|t| i32::try_from(t).ok()).ok_or_else(corrupt)?,
        },
    })
}

/// Checks a proposed parameter set; the reason says what is wrong.
pub fn validate_parameters(parameters: &Economics) -> Result<(), String> {
    let shares = parameters.model_owner_bps + parameters.stakers_bps + parameters.contributors_bps;
    if shares != BASIS_POINTS_TOTAL {
        return Err(format!("β + γ + δ must be 10000 basis points (100%), got {shares}"));
    }
    if parameters.slashing_bps > BASIS_POINTS_TOTAL {
        return Err("the slashing rate is at most 10000 basis points".into());
    }
    let thresholds = MIN_SLASHING_THRESHOLD_MILLI..=MAX_SLASHING_THRESHOLD_MILLI;
    if !thresholds.contains(&parameters.slashing_threshold_milli) {
        return Err(format!(
            "the slashing threshold must be {MIN_SLASHING_THRESHOLD_MILLI}..={MAX_SLASHING_THRESHOLD_MILLI} \
             thousandths of a quality score ({MAX_SLASHING_THRESHOLD_MILLI}: the typical record), got {}",
            parameters.slashing_threshold_milli
        ));
    }
    if parameters.minimum_stake == 0 {
        return Err("the minimum stake must be positive".into());
    }
    let year = MAX_EPOCH_SECONDS;
    if !(1..=year).contains(&parameters.epoch_seconds) || parameters.unbonding_seconds > year {
        return Err(format!("epoch length must be 1..={year} seconds and unbonding at most {year}"));
    }
    Ok(())
}

fn decode_u128(bytes: &[u8]) -> Result<u128, LedgerError> {
    <[u8; 16]>::try_from(bytes)
        .map(u128::from_be_bytes)
        .map_err(|_| LedgerError::Corrupt(format!("a u128 column holds {} bytes", bytes.len())))
}

/// A stored nanosecond timestamp or epoch (written from a `u64`) read back.
fn decode_u64(value: i64, column: &str) -> Result<u64, LedgerError> {
    u64::try_from(value).map_err(|_| LedgerError::Corrupt(format!("{column} holds {value}")))
}

impl Ledger {
    fn db(&self) -> &DatabaseConnection {
        self.connection()
    }

    /// Records `genesis` as the parameter set in force from the start (epoch 0). Called by
    /// `ensure_genesis` before the mint, only while genesis has not completed, so a first start
    /// that failed after recording is corrected by the next (with its settings); a ledger made
    /// before this has none and reads as [`Economics::default`] until its first proposal.
    pub(crate) async fn record_genesis_parameters(&self, genesis: &Economics) -> Result<(), LedgerError> {
        validate_parameters(genesis).map_err(|reason| LedgerError::InvalidGenesis(format!("parameters: {reason}")))?;
        parameters::Entity::insert(parameters::ActiveModel {
            effective_from: Set(0),
            effective_from_epoch: Set(0),
            parameters: Set(parameters_json(genesis)),
            proposal_id: Set(GENESIS_PROPOSAL_ID.into()),
        })
        .on_conflict(
            sea_orm::sea_query::OnConflict::column(parameters::Column::EffectiveFrom)
                .update_columns([parameters::Column::Parameters, parameters::Column::ProposalId])
                .to_owned(),
        )
        .exec_without_returning(self.db())
        .await?;
        Ok(())
    }

    /// The parameters in force at `now_ns`.
    pub async fn parameters_at(&self, now_ns: u64) -> Result<Economics, LedgerError> {
        let row = parameters::Entity::find()
            .filter(parameters::Column::EffectiveFrom.lte(i64::try_from(now_ns).unwrap_or(i64::MAX)))
            .order_by_desc(parameters::Column::EffectiveFrom)
            .one(self.db())
            .await?;
        match row {
            Some(row) => parse_parameters(&row.parameters),
            None => Ok(Economics::default()),
        }
    }

    /// Checks that `signature` by `public_key` signs `message` (else `unauthenticated`), then
    /// that the key owns `account` (else `permission_denied`).
    pub(crate) async fn check_signature(
        &self,
        operation: &'static str,
        account: u128,
        public_key: &[u8],
        signature: &[u8],
        message: &[u8],
    ) -> Result<(), OperationError> {
        let key = openledger_signing::verify(public_key, signature, message)?;
        let owner = self
            .lookup_accounts(&[account])
            .await?
            .pop()
            .ok_or_else(|| not_found(operation, format!("account {account}")))?;
        if owner.owner != Owner::Key(key) {
            return Err(OperationError::NotOwner { operation, account });
        }
        Ok(())
    }

    /// Records a proposal; repeating the same proposal id returns it unchanged.
    #[allow(clippy::too_many_arguments)]
    pub async fn submit_proposal_at(
        &self,
        proposal_id: &str,
        proposer: u128,
        parameters: &Economics,
        rationale: &str,
        public_key: &[u8],
        signature: &[u8],
        rules: &GovernanceRules,
        now_ns: u64,
    ) -> Result<ProposalView, OperationError> {
        let operation = "submitting the proposal";
        if let Some(existing) = self.proposal(proposal_id).await? {
            return Ok(existing);
        }
        let message = openledger_signing::proposal_message(proposal_id, proposer, &parameters.into());
        self.check_signature(operation, proposer, public_key, signature, &message).await?;
        validate_parameters(parameters).map_err(|reason| refused(operation, reason))?;
        let staked = self.staked(proposer).await?;
        if staked < rules.proposal_threshold {
            return Err(refused(
                operation,
                format!("proposers must have {} staked, {proposer} has {staked}", rules.proposal_threshold),
            ));
        }
        let voting_ends = now_ns.saturating_add(rules.voting_seconds.saturating_mul(NANOS));
        proposal::ActiveModel {
            id: Set(proposal_id.to_owned()),
            proposer: Set(proposer.to_be_bytes().to_vec()),
            parameters: Set(parameters_json(parameters)),
            rationale: Set(rationale.chars().take(MAX_PROPOSAL_RATIONALE_CHARS).collect()),
            created_at: Set(i64::try_from(now_ns).unwrap_or(i64::MAX)),
            voting_ends: Set(i64::try_from(voting_ends).unwrap_or(i64::MAX)),
            executable_after: Set(i64::try_from(
                voting_ends.saturating_add(rules.timelock_seconds.saturating_mul(NANOS)),
            )
            .unwrap_or(i64::MAX)),
            state: Set(ProposalState::Voting.code()),
            effective_from_epoch: Set(None),
        }
        .insert(self.db())
        .await
        .map_err(LedgerError::from)?;
        Ok(self.proposal(proposal_id).await?.expect("just inserted"))
    }

    /// Records `account`'s vote, weighted by its stake now. One vote per account.
    pub async fn cast_vote_at(
        &self,
        proposal_id: &str,
        account: u128,
        approve: bool,
        public_key: &[u8],
        signature: &[u8],
        now_ns: u64,
    ) -> Result<ProposalView, OperationError> {
        let operation = "voting";
        let message = openledger_signing::vote_message(proposal_id, account, approve);
        self.check_signature(operation, account, public_key, signature, &message).await?;
        let current = self
            .proposal(proposal_id)
            .await?
            .ok_or_else(|| not_found(operation, format!("proposal {proposal_id:?}")))?;
        if current.state != ProposalState::Voting || now_ns >= current.voting_ends_ns {
            return Err(refused(operation, "voting on this proposal has ended"));
        }
        let key = (proposal_id.to_owned(), account.to_be_bytes().to_vec());
        if let Some(existing) = vote::Entity::find_by_id(key).one(self.db()).await.map_err(LedgerError::from)? {
            if existing.approve != approve {
                return Err(refused(operation, "this account has already voted the other way"));
            }
            return Ok(current);
        }
        let weight = self.staked(account).await?;
        if weight == 0 {
            return Err(refused(operation, "only stakers vote: this account has nothing staked"));
        }
        vote::ActiveModel {
            proposal_id: Set(proposal_id.to_owned()),
            account: Set(account.to_be_bytes().to_vec()),
            approve: Set(approve),
            weight: Set(weight.to_be_bytes().to_vec()),
        }
        .insert(self.db())
        .await
        .map_err(LedgerError::from)?;
        Ok(self.proposal(proposal_id).await?.expect("exists"))
    }

    pub async fn proposal(&self, proposal_id: &str) -> Result<Option<ProposalView>, LedgerError> {
        let Some(row) = proposal::Entity::find_by_id(proposal_id.to_owned()).one(self.db()).await? else {
            return Ok(None);
        };
        let votes = vote::Entity::find().filter(vote::Column::ProposalId.eq(proposal_id)).all(self.db()).await?;
        let tally = |approve: bool| -> Result<u128, LedgerError> {
            votes.iter().filter(|v| v.approve == approve).map(|v| decode_u128(&v.weight)).sum()
        };
        let state = ProposalState::try_from(row.state)
            .map_err(|code| LedgerError::Corrupt(format!("proposal {proposal_id:?} has state {code}")))?;
        Ok(Some(ProposalView {
            id: row.id.clone(),
            proposer: decode_u128(&row.proposer)?,
            parameters: parse_parameters(&row.parameters)?,
            state,
            votes_for: tally(true)?,
            votes_against: tally(false)?,
            voting_ends_ns: decode_u64(row.voting_ends, "ledger_proposals.voting_ends")?,
            executable_after_ns: decode_u64(row.executable_after, "ledger_proposals.executable_after")?,
            effective_from_epoch: row
                .effective_from_epoch
                .map(|epoch| decode_u64(epoch, "ledger_proposals.effective_from_epoch"))
                .transpose()?,
        }))
    }

    /// Everything staked now (the quorum's base).
    async fn total_staked(&self) -> Result<u128, LedgerError> {
        let rows = account::Entity::find()
            .filter(account::Column::Code.eq(i32::from(codes::STAKE_ACCOUNT)))
            .all(self.db())
            .await?;
        rows.iter()
            .map(|row| Ok(decode_u128(&row.credits_posted)?.saturating_sub(decode_u128(&row.debits_posted)?)))
            .sum()
    }

    /// Decides proposals whose voting ended and executes passed ones whose timelock ended;
    /// returns how many were executed.
    pub async fn advance_governance_at(&self, now_ns: u64, rules: &GovernanceRules) -> Result<usize, LedgerError> {
        let now = i64::try_from(now_ns).unwrap_or(i64::MAX);
        let decided = proposal::Entity::find()
            .filter(proposal::Column::State.eq(ProposalState::Voting.code()))
            .filter(proposal::Column::VotingEnds.lte(now))
            .all(self.db())
            .await?;
        // Summing every stake is a scan: only when a proposal is being decided.
        let total = if decided.is_empty() { 0 } else { self.total_staked().await? };
        for row in decided {
            let view = self.proposal(&row.id).await?.expect("exists");
            let cast = view.votes_for.saturating_add(view.votes_against);
            let quorum = bps_share(total, rules.quorum_bps);
            let passed = cast >= quorum && cast > 0 && view.votes_for > view.votes_against;
            let state = if passed { ProposalState::Passed } else { ProposalState::Rejected };
            proposal::ActiveModel { id: Set(row.id.clone()), state: Set(state.code()), ..Default::default() }
                .update(self.db())
                .await?;
        }
        let due = proposal::Entity::find()
            .filter(proposal::Column::State.eq(ProposalState::Passed.code()))
            .filter(proposal::Column::ExecutableAfter.lte(now))
            .order_by_asc(proposal::Column::ExecutableAfter)
            .all(self.db())
            .await?;
        let mut executed = 0;
        for row in due {
            let in_force = self.parameters_at(now_ns).await?;
            let length = in_force.epoch_seconds.max(1).saturating_mul(NANOS);
            let epoch = now_ns / length + 1;
            let effective_from = epoch.saturating_mul(length);
            let txn = self.db().begin().await?;
            parameters::Entity::insert(parameters::ActiveModel {
                effective_from: Set(i64::try_from(effective_from).unwrap_or(i64::MAX)),
                effective_from_epoch: Set(epoch as i64),
                parameters: Set(row.parameters.clone()),
                proposal_id: Set(row.id.clone()),
            })
            .on_conflict(
                sea_orm::sea_query::OnConflict::column(parameters::Column::EffectiveFrom)
                    .update_columns([parameters::Column::Parameters, parameters::Column::ProposalId])
                    .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
            proposal::ActiveModel {
                id: Set(row.id.clone()),
                state: Set(ProposalState::Executed.code()),
                effective_from_epoch: Set(Some(epoch as i64)),
                ..Default::default()
            }
            .update(&txn)
            .await?;
            let event = ProposalExecuted {
                proposal_id: row.id.clone(),
                effective_from_epoch: epoch,
                effective_from_unix_seconds: effective_from / NANOS,
            };
            openledger_store::outbox::enqueue(
                &txn,
                "ledger",
                NewEvent::new(SUBJECT_PROPOSAL_EXECUTED, event.encode_to_vec()),
            )
            .await
            .map_err(|error| LedgerError::Outbox(error.to_string()))?;
            txn.commit().await?;
            executed += 1;
        }
        Ok(executed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_parameters_read_back_and_older_sets_have_the_default_threshold() {
        let governed = Economics { slashing_threshold_milli: -2_500, platform_fee: 7, ..Economics::default() };
        assert_eq!(parse_parameters(&parameters_json(&governed)).expect("parse"), governed);
        // A set stored before the threshold was a parameter.
        let older = parameters_json(&Economics::default()).replace(r#""slashing_threshold_milli":-1000,"#, "");
        assert!(!older.contains("threshold"), "{older}");
        assert_eq!(parse_parameters(&older).expect("parse"), Economics::default());
        let corrupt = parameters_json(&governed).replace("-2500", r#""low""#);
        assert!(matches!(parse_parameters(&corrupt), Err(LedgerError::Corrupt(_))), "{corrupt}");
    }

    #[test]
    fn the_slashing_threshold_is_bounded() {
        for (threshold, valid) in
            [(MAX_SLASHING_THRESHOLD_MILLI, true), (-1_000, true), (MIN_SLASHING_THRESHOLD_MILLI, true), (1, false)]
        {
            let parameters = Economics { slashing_threshold_milli: threshold, ..Economics::default() };
            assert_eq!(validate_parameters(&parameters).is_ok(), valid, "{threshold}");
        }
        let below = Economics { slashing_threshold_milli: MIN_SLASHING_THRESHOLD_MILLI - 1, ..Economics::default() };
        assert!(validate_parameters(&below).is_err_and(|reason| reason.contains("slashing threshold")));
    }
}
