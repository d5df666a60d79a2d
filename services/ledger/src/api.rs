//! The gRPC surface of the ledger: accounts, batched transfers, lookups, account history,
//! the journal's export and verification, and the platform operations (inference fees,
//! settlements and their audit, receipt batches, earnings, bonds, staking, epochs,
//! governance). Request checks and proto ⇄ model conversions live
//! here; ledger errors map to gRPC statuses in `ledger_error` and `operation_error`.

use std::sync::{Arc, OnceLock};

use openledger_core::{ContentHash, ErrorCode};
use openledger_proto::ledger::v1::{self as pb, ledger_service_server::LedgerService};
use openledger_proto::{u128_of as from_uint128, uint128 as to_uint128};
use openledger_runtime::{BackendsHandle, grpc::status};
use openledger_signing::{StakeAction, staking_message};
use tonic::{Request, Response, Status};

use crate::{
    books::{Ledger, LedgerError},
    governance::{GovernanceRules, ProposalView},
    limits::{
        DEFAULT_ACCOUNT_HISTORY_PAGE, EXPORT_PAGE_ENTRIES, MAX_ACCOUNT_HISTORY_PAGE, MAX_AUDIT_SETTLEMENTS,
        MAX_EARNINGS_ACCOUNTS, MAX_OPERATION_ID_BYTES, MAX_SETTLE_ORDERS, NANOS_PER_SECOND,
    },
    model::{
        Account, AccountFlags, CreateAccountResult, CreateTransferResult, MAX_BATCH_EVENTS, Owner, SystemRole,
        Transfer, TransferFlags,
    },
    operations::{BondState, Economics, OperationError},
    receipts::ReceiptBatch,
    settlement::{SettleOrder, SettleOutcome},
};

/// The process's one `Ledger` (one writer lock), made once the database is connected.
#[derive(Clone)]
pub struct SharedLedger {
    backends: BackendsHandle,
    ledger: Arc<OnceLock<Arc<Ledger>>>,
}

impl SharedLedger {
    pub fn new(backends: BackendsHandle) -> Self {
        Self { backends, ledger: Arc::new(OnceLock::new()) }
    }

    pub fn get(&self) -> Option<Arc<Ledger>> {
        if let Some(ledger) = self.ledger.get() {
            return Some(ledger.clone());
        }
        let backends = self.backends.current()?;
        Some(self.ledger.get_or_init(|| Arc::new(Ledger::new(backends.db))).clone())
    }
}

#[derive(Clone)]
pub struct Api {
    shared: SharedLedger,
    /// How proposals submitted here are decided (their voting period and timelock).
    rules: GovernanceRules,
}

impl Api {
    pub fn new(shared: SharedLedger, rules: GovernanceRules) -> Self {
        Self { shared, rules }
    }

    /// The economic parameters in force now.
    async fn parameters(&self) -> Result<Economics, Status> {
        self.ledger()?.parameters_at(Ledger::now_ns()).await.map_err(ledger_error)
    }

    fn ledger(&self) -> Result<Arc<Ledger>, Status> {
        self.shared
            .get()
            .ok_or_else(|| status(ErrorCode::Unavailable, "the ledger is starting: its database is not connected yet"))
    }
}

fn ledger_error(error: LedgerError) -> Status {
    match error {
        LedgerError::BatchTooLarge { .. } | LedgerError::InvalidGenesis(_) => {
            status(ErrorCode::InvalidArgument, error.to_string())
        }
        LedgerError::Database(_) => status(ErrorCode::Unavailable, error.to_string()),
        LedgerError::Corrupt(_) | LedgerError::Outbox(_) => status(ErrorCode::Internal, error.to_string()),
    }
}

fn operation_error(error: OperationError) -> Status {
    match error {
        OperationError::Ledger(error) => ledger_error(error),
        OperationError::Refused { .. } => status(ErrorCode::FailedPrecondition, error.to_string()),
        OperationError::NotFound { .. } => status(ErrorCode::NotFound, error.to_string()),
        OperationError::Unauthenticated(ref signing) => status(signing.code(), error.to_string()),
        OperationError::NotOwner { .. } => status(ErrorCode::PermissionDenied, error.to_string()),
        OperationError::InsufficientFunds { .. } => status(ErrorCode::InsufficientFunds, error.to_string()),
    }
}

/// Operation ids are the caller's idempotency keys: non-empty, at most 128 bytes.
fn operation_id(id: &str, field: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > MAX_OPERATION_ID_BYTES {
        return Err(status(
            ErrorCode::InvalidArgument,
            format!("{field} must be 1 to {MAX_OPERATION_ID_BYTES} bytes, got {}", id.len()),
        ));
    }
    Ok(())
}

fn bond_response((transfer_id, state): (u128, BondState)) -> pb::BondResponse {
    let state = match state {
        BondState::Held => pb::BondState::Held,
        BondState::Released => pb::BondState::Released,
        BondState::Slashed => pb::BondState::Slashed,
        BondState::NotHeld => pb::BondState::NotHeld,
    };
    let transfer_id = if state == pb::BondState::NotHeld { None } else { to_uint128(transfer_id) };
    pb::BondResponse { transfer_id, state: state as i32 }
}

fn proposal_to_proto(view: &ProposalView) -> pb::Proposal {
    pb::Proposal {
        proposal_id: view.id.clone(),
        proposer_account_id: to_uint128(view.proposer),
        effective_from_epoch: view.effective_from_epoch.unwrap_or(0),
        parameters: Some(view.parameters.to_proto()),
        state: view.state.as_str().to_owned(),
        votes_for: to_uint128(view.votes_for),
        votes_against: to_uint128(view.votes_against),
        voting_ends_unix_seconds: view.voting_ends_ns / NANOS_PER_SECOND,
        executable_after_unix_seconds: view.executable_after_ns / NANOS_PER_SECOND,
    }
}

/// A settlement request as an order: a weight whose account is 0 is paid to its
/// contributor's earnings account.
fn order_from_proto(request: &pb::SettleInferenceRequest) -> SettleOrder {
    let owner = from_uint128(request.model_owner_account_id.as_ref());
    request.weights.iter().fold(SettleOrder::new(request.inference_id.clone(), owner), |order, weight| {
        order.weight(from_uint128(weight.contributor_account_id.as_ref()), &weight.contributor, weight.weight_ppb)
    })
}

fn receipt_batch_to_proto(batch: &ReceiptBatch) -> pb::ReceiptBatchRecord {
    pb::ReceiptBatchRecord {
        sequence: batch.sequence,
        root: Some(openledger_proto::common::v1::Hash { value: batch.root.as_bytes().to_vec() }),
        size: batch.size,
        journal_sequence: batch.journal_sequence,
        journal_entry_hash: Some(openledger_proto::common::v1::Hash {
            value: batch.journal_entry_hash.as_bytes().to_vec(),
        }),
        transfer_ids: batch.transfer_ids.iter().filter_map(|id| to_uint128(*id)).collect(),
    }
}

type ExportStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::JournalEntry, Status>> + Send>>;

fn check_len(len: usize) -> Result<(), Status> {
    if len > MAX_BATCH_EVENTS {
        return Err(status(
            ErrorCode::InvalidArgument,
            format!("a batch holds at most {MAX_BATCH_EVENTS} events, got {len}"),
        ));
    }
    Ok(())
}

fn narrow_u16(value: u32, what: &str, index: usize) -> Result<u16, Status> {
    u16::try_from(value)
        .map_err(|_| status(ErrorCode::InvalidArgument, format!("event {index}: {what} must be at most 65535")))
}

fn account_from_proto(index: usize, account: &pb::Account) -> Result<Account, Status> {
    let owner = match &account.owner {
        Some(pb::account::Owner::PublicKey(key)) => Owner::Key(<[u8; 32]>::try_from(key.as_slice()).map_err(|_| {
            status(
                ErrorCode::InvalidArgument,
                format!("account {index}: public_key must be 32 bytes (ed25519), got {}", key.len()),
            )
        })?),
        _ => {
            return Err(status(
                ErrorCode::InvalidArgument,
                format!("account {index}: owner must be an ed25519 public_key"),
            ));
        }
    };
    let mut flags = 0;
    for flag in &account.flags {
        flags |= match pb::AccountFlag::try_from(*flag) {
            Ok(pb::AccountFlag::DebitsMustNotExceedCredits) => AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
            Ok(pb::AccountFlag::CreditsMustNotExceedDebits) => AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
            _ => return Err(status(ErrorCode::InvalidArgument, format!("account {index}: unknown flag {flag}"))),
        };
    }
    Ok(Account::new(
        from_uint128(account.id.as_ref()),
        owner,
        account.ledger,
        narrow_u16(account.code, "code", index)?,
        AccountFlags(flags),
    ))
}

fn account_to_proto(account: &Account) -> pb::Account {
    let owner = match account.owner {
        Owner::Key(key) => pb::account::Owner::PublicKey(key.to_vec()),
        Owner::System(role) => pb::account::Owner::SystemRole(match role {
            SystemRole::Treasury => pb::SystemRole::Treasury,
            SystemRole::Genesis => pb::SystemRole::Genesis,
            SystemRole::FeeEscrow => pb::SystemRole::FeeEscrow,
            SystemRole::StakersPool => pb::SystemRole::StakersPool,
            SystemRole::Rewards => pb::SystemRole::Rewards,
            SystemRole::Burn => pb::SystemRole::Burn,
            SystemRole::Allocation | SystemRole::ReceiptAnchors => pb::SystemRole::Unspecified,
        } as i32),
    };
    let mut flags = Vec::new();
    if account.flags.has(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS) {
        flags.push(pb::AccountFlag::DebitsMustNotExceedCredits as i32);
    }
    if account.flags.has(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS) {
        flags.push(pb::AccountFlag::CreditsMustNotExceedDebits as i32);
    }
    pb::Account {
        id: to_uint128(account.id),
        owner: Some(owner),
        ledger: account.ledger,
        code: u32::from(account.code),
        flags,
        debits_pending: to_uint128(account.debits_pending),
        debits_posted: to_uint128(account.debits_posted),
        credits_pending: to_uint128(account.credits_pending),
        credits_posted: to_uint128(account.credits_posted),
        timestamp: account.timestamp,
    }
}

const TRANSFER_FLAGS: [(pb::TransferFlag, u16); 4] = [
    (pb::TransferFlag::Linked, TransferFlags::LINKED),
    (pb::TransferFlag::Pending, TransferFlags::PENDING),
    (pb::TransferFlag::PostPending, TransferFlags::POST_PENDING),
    (pb::TransferFlag::VoidPending, TransferFlags::VOID_PENDING),
];

fn transfer_from_proto(index: usize, transfer: &pb::Transfer) -> Result<Transfer, Status> {
    let mut flags = 0;
    for flag in &transfer.flags {
        let known =
            pb::TransferFlag::try_from(*flag).ok().and_then(|flag| TRANSFER_FLAGS.iter().find(|(f, _)| *f == flag));
        flags |= known
            .map(|(_, bit)| *bit)
            .ok_or_else(|| status(ErrorCode::InvalidArgument, format!("transfer {index}: unknown flag {flag}")))?;
    }
    Ok(Transfer {
        id: from_uint128(transfer.id.as_ref()),
        debit_account_id: from_uint128(transfer.debit_account_id.as_ref()),
        credit_account_id: from_uint128(transfer.credit_account_id.as_ref()),
        amount: from_uint128(transfer.amount.as_ref()),
        pending_id: from_uint128(transfer.pending_id.as_ref()),
        user_data: from_uint128(transfer.user_data.as_ref()),
        timeout_seconds: transfer.timeout_seconds,
        ledger: transfer.ledger,
        code: narrow_u16(transfer.code, "code", index)?,
        flags: TransferFlags(flags),
        timestamp: 0,
    })
}

fn transfer_to_proto(transfer: &Transfer) -> pb::Transfer {
    pb::Transfer {
        id: to_uint128(transfer.id),
        debit_account_id: to_uint128(transfer.debit_account_id),
        credit_account_id: to_uint128(transfer.credit_account_id),
        amount: to_uint128(transfer.amount),
        pending_id: to_uint128(transfer.pending_id),
        user_data: to_uint128(transfer.user_data),
        timeout_seconds: transfer.timeout_seconds,
        ledger: transfer.ledger,
        code: u32::from(transfer.code),
        flags: TRANSFER_FLAGS
            .iter()
            .filter(|(_, bit)| transfer.flags.has(*bit))
            .map(|(flag, _)| *flag as i32)
            .collect(),
        timestamp: transfer.timestamp,
    }
}

fn account_result(result: CreateAccountResult) -> pb::CreateResult {
    use pb::CreateResult as P;
    match result {
        CreateAccountResult::Ok => P::Ok,
        CreateAccountResult::Exists => P::Exists,
        CreateAccountResult::ExistsWithDifferentFields => P::ExistsWithDifferentFields,
        CreateAccountResult::InvalidId => P::InvalidId,
        CreateAccountResult::ReservedId => P::ReservedId,
        CreateAccountResult::InvalidFlags => P::InvalidFlags,
        CreateAccountResult::LedgerMustNotBeZero => P::LedgerMustNotBeZero,
        CreateAccountResult::DuplicateInBatch => P::DuplicateInBatch,
    }
}

fn transfer_result(result: CreateTransferResult) -> pb::CreateResult {
    use CreateTransferResult as R;
    use pb::CreateResult as P;
    match result {
        R::Ok => P::Ok,
        R::Exists => P::Exists,
        R::ExistsWithDifferentFields => P::ExistsWithDifferentFields,
        R::InvalidId => P::InvalidId,
        R::InvalidFlags => P::InvalidFlags,
        R::TimeoutReservedForPending => P::TimeoutReservedForPending,
        R::SameAccount => P::SameAccount,
        R::ZeroAmount => P::ZeroAmount,
        R::AccountNotFound => P::AccountNotFound,
        R::LedgerMismatch => P::LedgerMismatch,
        R::InsufficientFunds => P::InsufficientFunds,
        R::ExceedsDebits => P::ExceedsDebits,
        R::Overflow => P::Overflow,
        R::PendingNotFound => P::PendingNotFound,
        R::PendingAlreadyResolved => P::PendingAlreadyResolved,
        R::PendingExpired => P::PendingExpired,
        R::PendingMismatch => P::PendingMismatch,
        R::ReservedAccount => P::ReservedAccount,
        R::LinkedEventFailed => P::LinkedEventFailed,
        R::LinkedChainOpen => P::LinkedChainOpen,
    }
}

fn results(codes: impl Iterator<Item = pb::CreateResult>) -> Vec<pb::EventResult> {
    codes.enumerate().map(|(index, result)| pb::EventResult { index: index as u32, result: result as i32 }).collect()
}

#[tonic::async_trait]
impl LedgerService for Api {
    async fn create_accounts(
        &self,
        request: Request<pb::CreateAccountsRequest>,
    ) -> Result<Response<pb::CreateAccountsResponse>, Status> {
        let request = request.into_inner();
        check_len(request.accounts.len())?;
        let accounts: Vec<Account> = request
            .accounts
            .iter()
            .enumerate()
            .map(|(index, account)| account_from_proto(index, account))
            .collect::<Result<_, _>>()?;
        let outcome = self.ledger()?.create_accounts(&accounts).await.map_err(ledger_error)?;
        Ok(Response::new(pb::CreateAccountsResponse { results: results(outcome.into_iter().map(account_result)) }))
    }

    async fn lookup_accounts(
        &self,
        request: Request<pb::LookupAccountsRequest>,
    ) -> Result<Response<pb::LookupAccountsResponse>, Status> {
        let request = request.into_inner();
        check_len(request.ids.len())?;
        let ids: Vec<u128> = request.ids.iter().map(|id| from_uint128(Some(id))).collect();
        let accounts = self.ledger()?.lookup_accounts(&ids).await.map_err(ledger_error)?;
        Ok(Response::new(pb::LookupAccountsResponse { accounts: accounts.iter().map(account_to_proto).collect() }))
    }

    async fn create_transfers(
        &self,
        request: Request<pb::CreateTransfersRequest>,
    ) -> Result<Response<pb::CreateTransfersResponse>, Status> {
        let request = request.into_inner();
        check_len(request.transfers.len())?;
        let transfers: Vec<Transfer> = request
            .transfers
            .iter()
            .enumerate()
            .map(|(index, transfer)| transfer_from_proto(index, transfer))
            .collect::<Result<_, _>>()?;
        let outcome = self.ledger()?.create_transfers(&transfers).await.map_err(ledger_error)?;
        Ok(Response::new(pb::CreateTransfersResponse { results: results(outcome.into_iter().map(transfer_result)) }))
    }

    async fn lookup_transfers(
        &self,
        request: Request<pb::LookupTransfersRequest>,
    ) -> Result<Response<pb::LookupTransfersResponse>, Status> {
        let request = request.into_inner();
        check_len(request.ids.len())?;
        let ids: Vec<u128> = request.ids.iter().map(|id| from_uint128(Some(id))).collect();
        let transfers = self.ledger()?.lookup_transfers(&ids).await.map_err(ledger_error)?;
        Ok(Response::new(pb::LookupTransfersResponse { transfers: transfers.iter().map(transfer_to_proto).collect() }))
    }

    async fn get_account_transfers(
        &self,
        request: Request<pb::GetAccountTransfersRequest>,
    ) -> Result<Response<pb::GetAccountTransfersResponse>, Status> {
        let request = request.into_inner();
        let page = request.page.unwrap_or_default();
        let after: u64 = if page.page_token.is_empty() {
            0
        } else {
            page.page_token
                .parse()
                .map_err(|_| status(ErrorCode::InvalidArgument, "page_token is not one this service issued"))?
        };
        let size = match page.page_size {
            0 => DEFAULT_ACCOUNT_HISTORY_PAGE,
            size if u64::from(size) <= MAX_ACCOUNT_HISTORY_PAGE => u64::from(size),
            size => {
                return Err(status(
                    ErrorCode::InvalidArgument,
                    format!("page_size must be at most {MAX_ACCOUNT_HISTORY_PAGE}, got {size}"),
                ));
            }
        };
        let account = from_uint128(request.account_id.as_ref());
        let transfers = self.ledger()?.account_transfers(account, after, size).await.map_err(ledger_error)?;
        let next_page_token = match transfers.last() {
            Some(last) if transfers.len() as u64 == size => last.timestamp.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::GetAccountTransfersResponse {
            transfers: transfers.iter().map(transfer_to_proto).collect(),
            page: Some(openledger_proto::common::v1::PageResponse { next_page_token }),
        }))
    }

    async fn hold_inference_fee(
        &self,
        request: Request<pb::HoldInferenceFeeRequest>,
    ) -> Result<Response<pb::HoldInferenceFeeResponse>, Status> {
        let request = request.into_inner();
        operation_id(&request.inference_id, "inference_id")?;
        let id = self
            .ledger()?
            .hold_inference_fee(
                &request.inference_id,
                from_uint128(request.app_account_id.as_ref()),
                from_uint128(request.max_fee.as_ref()),
                request.timeout_seconds,
            )
            .await
            .map_err(operation_error)?;
        Ok(Response::new(pb::HoldInferenceFeeResponse { hold_transfer_id: to_uint128(id) }))
    }

    async fn capture_inference_fee(
        &self,
        request: Request<pb::CaptureInferenceFeeRequest>,
    ) -> Result<Response<pb::CaptureInferenceFeeResponse>, Status> {
        let request = request.into_inner();
        operation_id(&request.inference_id, "inference_id")?;
        let fee = self
            .ledger()?
            .capture_inference_fee(
                &request.inference_id,
                request.tokens_in,
                request.tokens_out,
                from_uint128(request.price_in.as_ref()),
                from_uint128(request.price_out.as_ref()),
                &self.parameters().await?,
            )
            .await
            .map_err(operation_error)?;
        Ok(Response::new(pb::CaptureInferenceFeeResponse { fee: to_uint128(fee) }))
    }

    async fn settle_inference(
        &self,
        request: Request<pb::SettleInferenceRequest>,
    ) -> Result<Response<pb::SettleInferenceResponse>, Status> {
        let request = request.into_inner();
        operation_id(&request.inference_id, "inference_id")?;
        let settlement = self
            .ledger()?
            .settle_order_at(order_from_proto(&request), &self.parameters().await?, Ledger::now_ns())
            .await
            .map_err(operation_error)?;
        Ok(Response::new(pb::SettleInferenceResponse {
            transfers: settlement.transfers.iter().map(transfer_to_proto).collect(),
            already_settled: settlement.already_settled,
        }))
    }

    async fn hold_bond(&self, request: Request<pb::HoldBondRequest>) -> Result<Response<pb::BondResponse>, Status> {
        let request = request.into_inner();
        operation_id(&request.contribution_id, "contribution_id")?;
        let outcome = self
            .ledger()?
            .hold_bond(
                &request.contribution_id,
                from_uint128(request.contributor_account_id.as_ref()),
                from_uint128(request.amount.as_ref()),
            )
            .await
            .map_err(operation_error)?;
        Ok(Response::new(bond_response(outcome)))
    }

    async fn release_bond(
        &self,
        request: Request<pb::ResolveBondRequest>,
    ) -> Result<Response<pb::BondResponse>, Status> {
        let request = request.into_inner();
        operation_id(&request.contribution_id, "contribution_id")?;
        let outcome = self.ledger()?.release_bond(&request.contribution_id).await.map_err(operation_error)?;
        Ok(Response::new(bond_response(outcome)))
    }

    async fn slash_bond(&self, request: Request<pb::ResolveBondRequest>) -> Result<Response<pb::BondResponse>, Status> {
        let request = request.into_inner();
        operation_id(&request.contribution_id, "contribution_id")?;
        let outcome = self
            .ledger()?
            .slash_bond(&request.contribution_id, &request.reason, &self.parameters().await?)
            .await
            .map_err(operation_error)?;
        Ok(Response::new(bond_response(outcome)))
    }

    async fn stake(&self, request: Request<pb::StakeRequest>) -> Result<Response<pb::StakeResponse>, Status> {
        let request = request.into_inner();
        operation_id(&request.operation_id, "operation_id")?;
        let (account, amount) = (from_uint128(request.account_id.as_ref()), from_uint128(request.amount.as_ref()));
        let ledger = self.ledger()?;
        if let Some(signature) = &request.signature {
            let message = staking_message(StakeAction::Stake, &request.operation_id, account, amount);
            ledger
                .check_signature("staking", account, &signature.public_key, &signature.signature, &message)
                .await
                .map_err(operation_error)?;
        }
        let total = ledger
            .stake(&request.operation_id, account, amount, &self.parameters().await?)
            .await
            .map_err(operation_error)?;
        Ok(Response::new(pb::StakeResponse { staked_total: to_uint128(total) }))
    }

    async fn unstake(&self, request: Request<pb::UnstakeRequest>) -> Result<Response<pb::UnstakeResponse>, Status> {
        let request = request.into_inner();
        operation_id(&request.operation_id, "operation_id")?;
        let (account, amount) = (from_uint128(request.account_id.as_ref()), from_uint128(request.amount.as_ref()));
        let ledger = self.ledger()?;
        if let Some(signature) = &request.signature {
            let message = staking_message(StakeAction::Unstake, &request.operation_id, account, amount);
            ledger
                .check_signature("unstaking", account, &signature.public_key, &signature.signature, &message)
                .await
                .map_err(operation_error)?;
        }
        let release = ledger
            .unstake(&request.operation_id, account, amount, &self.parameters().await?)
            .await
            .map_err(operation_error)?;
        Ok(Response::new(pb::UnstakeResponse { unbonded_at_unix_seconds: release }))
    }

    async fn close_epoch(
        &self,
        request: Request<pb::CloseEpochRequest>,
    ) -> Result<Response<pb::CloseEpochResponse>, Status> {
        let request = request.into_inner();
        let closed = self
            .ledger()?
            .close_epoch_at(request.epoch, Ledger::now_ns(), &self.parameters().await?)
            .await
            .map_err(operation_error)?;
        Ok(Response::new(pb::CloseEpochResponse {
            epoch: closed.epoch,
            merkle_root: Some(openledger_proto::common::v1::Hash { value: closed.merkle_root.as_bytes().to_vec() }),
            rewards_distributed: to_uint128(closed.distributed),
            already_closed: closed.already_closed,
        }))
    }

    async fn claim_rewards(
        &self,
        request: Request<pb::ClaimRewardsRequest>,
    ) -> Result<Response<pb::ClaimRewardsResponse>, Status> {
        let request = request.into_inner();
        operation_id(&request.operation_id, "operation_id")?;
        let claimed = self
            .ledger()?
            .claim_rewards(&request.operation_id, from_uint128(request.account_id.as_ref()))
            .await
            .map_err(operation_error)?;
        Ok(Response::new(pb::ClaimRewardsResponse { claimed: to_uint128(claimed) }))
    }

    async fn lookup_account_at(
        &self,
        request: Request<pb::LookupAccountAtRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let request = request.into_inner();
        let id = from_uint128(request.account_id.as_ref());
        let account = self.ledger()?.account_at(id, request.timestamp).await.map_err(ledger_error)?;
        let account = account.ok_or_else(|| {
            status(ErrorCode::NotFound, format!("account {id} did not exist at {}", request.timestamp))
        })?;
        Ok(Response::new(account_to_proto(&account)))
    }

    async fn get_parameters(
        &self,
        request: Request<pb::GetParametersRequest>,
    ) -> Result<Response<pb::Parameters>, Status> {
        let request = request.into_inner();
        let ledger = self.ledger()?;
        let in_force = ledger.parameters_at(Ledger::now_ns()).await.map_err(ledger_error)?;
        // epoch 0 means "now"; otherwise the parameters in force at that epoch's start.
        let parameters = if request.epoch == 0 {
            in_force
        } else {
            let start = request.epoch.saturating_mul(in_force.epoch_seconds.max(1)).saturating_mul(NANOS_PER_SECOND);
            ledger.parameters_at(start).await.map_err(ledger_error)?
        };
        Ok(Response::new(parameters.to_proto()))
    }

    async fn submit_proposal(
        &self,
        request: Request<pb::SubmitProposalRequest>,
    ) -> Result<Response<pb::Proposal>, Status> {
        let request = request.into_inner();
        operation_id(&request.proposal_id, "proposal_id")?;
        let parameters =
            request.parameters.as_ref().ok_or_else(|| status(ErrorCode::InvalidArgument, "parameters are required"))?;
        if parameters.slashing_threshold_milli.is_none() {
            return Err(status(
                ErrorCode::InvalidArgument,
                "parameters.slashing_threshold_milli is required: a proposal names every parameter",
            ));
        }
        let parameters = Economics::from_proto(parameters);
        let signature = request.signature.unwrap_or_default();
        let view = self
            .ledger()?
            .submit_proposal_at(
                &request.proposal_id,
                from_uint128(request.proposer_account_id.as_ref()),
                &parameters,
                &request.rationale,
                &signature.public_key,
                &signature.signature,
                &self.rules,
                Ledger::now_ns(),
            )
            .await
            .map_err(operation_error)?;
        Ok(Response::new(proposal_to_proto(&view)))
    }

    async fn cast_vote(&self, request: Request<pb::CastVoteRequest>) -> Result<Response<pb::Proposal>, Status> {
        let request = request.into_inner();
        operation_id(&request.proposal_id, "proposal_id")?;
        let signature = request.signature.unwrap_or_default();
        let view = self
            .ledger()?
            .cast_vote_at(
                &request.proposal_id,
                from_uint128(request.account_id.as_ref()),
                request.approve,
                &signature.public_key,
                &signature.signature,
                Ledger::now_ns(),
            )
            .await
            .map_err(operation_error)?;
        Ok(Response::new(proposal_to_proto(&view)))
    }

    async fn get_proposal(&self, request: Request<pb::GetProposalRequest>) -> Result<Response<pb::Proposal>, Status> {
        let request = request.into_inner();
        let view = self.ledger()?.proposal(&request.proposal_id).await.map_err(ledger_error)?;
        let view = view.ok_or_else(|| status(ErrorCode::NotFound, format!("no proposal {:?}", request.proposal_id)))?;
        Ok(Response::new(proposal_to_proto(&view)))
    }

    async fn settle_inferences(
        &self,
        request: Request<pb::SettleInferencesRequest>,
    ) -> Result<Response<pb::SettleInferencesResponse>, Status> {
        let request = request.into_inner();
        if request.settlements.len() > MAX_SETTLE_ORDERS {
            return Err(status(
                ErrorCode::InvalidArgument,
                format!("at most {MAX_SETTLE_ORDERS} settlements per request, got {}", request.settlements.len()),
            ));
        }
        let orders: Vec<SettleOrder> = request.settlements.iter().map(order_from_proto).collect();
        let economics = self.parameters().await?;
        let outcomes =
            self.ledger()?.settle_inferences_at(&orders, &economics, Ledger::now_ns()).await.map_err(ledger_error)?;
        let results = orders
            .iter()
            .zip(outcomes)
            .map(|(order, outcome)| pb::SettlementResult {
                inference_id: order.inference_id.clone(),
                outcome: outcome.name().to_owned(),
                reason: match &outcome {
                    SettleOutcome::Refused(refusal) => refusal.to_string(),
                    SettleOutcome::Settled(_) => String::new(),
                },
                transfer_count: match &outcome {
                    SettleOutcome::Settled(settlement) => settlement.transfers.len() as u64,
                    SettleOutcome::Refused(_) => 0,
                },
            })
            .collect();
        Ok(Response::new(pb::SettleInferencesResponse { results }))
    }

    async fn get_settlement(
        &self,
        request: Request<pb::GetSettlementRequest>,
    ) -> Result<Response<pb::SettlementRecord>, Status> {
        let request = request.into_inner();
        operation_id(&request.inference_id, "inference_id")?;
        let record = self.ledger()?.settlement_record(&request.inference_id).await.map_err(ledger_error)?;
        Ok(Response::new(pb::SettlementRecord {
            inference_id: request.inference_id,
            capture: record.capture.as_ref().map(transfer_to_proto),
            transfers: record.transfers.iter().map(transfer_to_proto).collect(),
        }))
    }

    async fn record_receipt_batch(
        &self,
        request: Request<pb::RecordReceiptBatchRequest>,
    ) -> Result<Response<pb::ReceiptBatchRecord>, Status> {
        let request = request.into_inner();
        let root = request
            .root
            .as_ref()
            .and_then(|root| ContentHash::try_from(root.value.as_slice()).ok())
            .ok_or_else(|| status(ErrorCode::InvalidArgument, "root must be a 32-byte hash"))?;
        if request.size == 0 {
            return Err(status(ErrorCode::InvalidArgument, "size must be at least 1: a batch holds receipts"));
        }
        let batch = self
            .ledger()?
            .record_receipt_batch_at(request.sequence, &root, request.size, Ledger::now_ns())
            .await
            .map_err(operation_error)?;
        Ok(Response::new(receipt_batch_to_proto(&batch)))
    }

    async fn get_receipt_batch(
        &self,
        request: Request<pb::GetReceiptBatchRequest>,
    ) -> Result<Response<pb::ReceiptBatchRecord>, Status> {
        let sequence = request.into_inner().sequence;
        let batch = self.ledger()?.receipt_batch(sequence).await.map_err(ledger_error)?;
        let batch = batch
            .ok_or_else(|| status(ErrorCode::NotFound, format!("receipt batch {sequence} has not been recorded")))?;
        Ok(Response::new(receipt_batch_to_proto(&batch)))
    }

    async fn get_earnings(
        &self,
        request: Request<pb::GetEarningsRequest>,
    ) -> Result<Response<pb::GetEarningsResponse>, Status> {
        let request = request.into_inner();
        if request.account_ids.len() > MAX_EARNINGS_ACCOUNTS {
            return Err(status(
                ErrorCode::InvalidArgument,
                format!("at most {MAX_EARNINGS_ACCOUNTS} accounts per request, got {}", request.account_ids.len()),
            ));
        }
        let ids: Vec<u128> = request.account_ids.iter().map(|id| from_uint128(Some(id))).collect();
        let earnings = self.ledger()?.earnings(&ids).await.map_err(ledger_error)?;
        Ok(Response::new(pb::GetEarningsResponse {
            earnings: earnings
                .iter()
                .map(|earned| pb::Earnings {
                    account_id: to_uint128(earned.account_id),
                    earned: to_uint128(earned.earned),
                    payouts: earned.payouts,
                })
                .collect(),
        }))
    }

    async fn audit_settlements(
        &self,
        request: Request<tonic::Streaming<pb::AuditSettlementsRequest>>,
    ) -> Result<Response<pb::AuditReport>, Status> {
        let mut pages = request.into_inner();
        let mut expected = Vec::new();
        while let Some(page) = pages.message().await? {
            if expected.len() + page.settlements.len() > MAX_AUDIT_SETTLEMENTS {
                return Err(status(
                    ErrorCode::ResourceExhausted,
                    format!("an audit holds at most {MAX_AUDIT_SETTLEMENTS} expected settlements"),
                ));
            }
            expected.extend(page.settlements.iter().map(order_from_proto));
        }
        let report = self.ledger()?.audit_settlements(&expected).await.map_err(ledger_error)?;
        Ok(Response::new(pb::AuditReport {
            ok: report.ok(),
            expected: report.expected,
            captures: report.captures,
            settled: report.settled,
            unsettled: report.unsettled,
            never_captured: report.never_captured,
            mismatched: report.mismatched,
            unknown_captures: report.unknown_captures,
            stray_settlement_transfers: report.stray_settlement_transfers,
            books_verified: report.books_verified,
            first_exception: report.first_exception.unwrap_or_default(),
        }))
    }

    async fn export_journal(
        &self,
        request: Request<pb::ExportJournalRequest>,
    ) -> Result<Response<ExportStream>, Status> {
        let ledger = self.ledger()?;
        // Entries from `from_entry` on (1 is the first), fetched a page at a time as the client reads.
        let after = request.into_inner().from_entry.saturating_sub(1);
        let pages = futures::stream::try_unfold((ledger, after, false), |(ledger, after, done)| async move {
            if done {
                return Ok::<_, Status>(None);
            }
            let page = ledger.journal_entries(after, EXPORT_PAGE_ENTRIES).await.map_err(ledger_error)?;
            let next = page.last().map_or(after, |entry| entry.sequence);
            let done = (page.len() as u64) < EXPORT_PAGE_ENTRIES;
            let entries: Vec<Result<pb::JournalEntry, Status>> = page
                .into_iter()
                .map(|entry| {
                    Ok(pb::JournalEntry {
                        sequence: entry.sequence,
                        previous: Some(openledger_proto::common::v1::Hash {
                            value: entry.previous.as_bytes().to_vec(),
                        }),
                        batch: Some(openledger_proto::common::v1::Hash { value: entry.batch_hash.as_bytes().to_vec() }),
                        entry: Some(openledger_proto::common::v1::Hash { value: entry.entry_hash.as_bytes().to_vec() }),
                        timestamp: entry.last_timestamp,
                    })
                })
                .collect();
            Ok(Some((futures::stream::iter(entries), (ledger, next, done))))
        });
        Ok(Response::new(Box::pin(futures::TryStreamExt::try_flatten(pages))))
    }

    async fn verify_journal(
        &self,
        _request: Request<pb::VerifyJournalRequest>,
    ) -> Result<Response<pb::VerifyJournalResponse>, Status> {
        let report = self.ledger()?.verify().await.map_err(ledger_error)?;
        let (first_mismatch, mut detail) = report.first_mismatch.clone().unwrap_or((0, String::new()));
        if detail.is_empty() {
            detail = report.book_errors.join("; ");
        }
        Ok(Response::new(pb::VerifyJournalResponse {
            ok: report.ok(),
            entries_checked: report.entries,
            first_mismatch,
            detail,
        }))
    }
}
