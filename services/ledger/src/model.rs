//! The ledger's data model, after TigerBeetle: accounts with cumulative pending and posted
//! debits and credits, immutable transfers with client-chosen ids, two-phase transfers
//! (pending, then post or void), and linked chains. Amounts are `u128` base units.

/// An enum stored as a small integer column: `code()` is what is written, and `TryFrom<i16>`
/// reads it back, refusing (and handing back) a value no variant has, so a corrupt row is an
/// error rather than a silent default.
macro_rules! stored_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident { $($(#[$variant_meta:meta])* $variant:ident = $code:literal,)+ }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name { $($(#[$variant_meta])* $variant,)+ }

        impl $name {
            /// The stored code.
            pub fn code(self) -> i16 {
                match self { $(Self::$variant => $code,)+ }
            }
        }

        impl TryFrom<i16> for $name {
            type Error = i16;
            fn try_from(code: i16) -> Result<Self, i16> {
                match code {
                    $($code => Ok(Self::$variant),)+
                    other => Err(other),
                }
            }
        }
    };
}
pub(crate) use stored_enum;

/// The ledger number of OPEN; transfers only move value between accounts of one ledger.
pub const OPEN_LEDGER: u32 = 1;
/// Ids below this are reserved for system accounts made at genesis.
pub const FIRST_USER_ACCOUNT_ID: u128 = 1 << 16;
pub use crate::limits::MAX_BATCH_EVENTS;
/// Transfer code the service uses when it voids an expired hold.
pub const CODE_HOLD_EXPIRED: u16 = 1;
/// Transfer code of the genesis mint.
pub const CODE_GENESIS: u16 = 2;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AccountFlags(pub u16);

impl AccountFlags {
    pub const DEBITS_MUST_NOT_EXCEED_CREDITS: u16 = 1;
    pub const CREDITS_MUST_NOT_EXCEED_DEBITS: u16 = 2;
    const KNOWN: u16 = Self::DEBITS_MUST_NOT_EXCEED_CREDITS | Self::CREDITS_MUST_NOT_EXCEED_DEBITS;

    pub fn has(self, flag: u16) -> bool {
        self.0 & flag != 0
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TransferFlags(pub u16);

impl TransferFlags {
    /// This event and the next succeed or fail together.
    pub const LINKED: u16 = 1;
    /// A hold: reserves the amount as pending until posted, voided or expired.
    pub const PENDING: u16 = 2;
    /// Captures (all or part of) the pending transfer `pending_id`.
    pub const POST_PENDING: u16 = 4;
    /// Releases the pending transfer `pending_id`.
    pub const VOID_PENDING: u16 = 8;
    const KNOWN: u16 = Self::LINKED | Self::PENDING | Self::POST_PENDING | Self::VOID_PENDING;

    pub fn has(self, flag: u16) -> bool {
        self.0 & flag != 0
    }
}

/// Who owns an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// An ed25519 public key.
    Key([u8; 32]),
    System(SystemRole),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SystemRole {
    Treasury = 1,
    Genesis = 2,
    FeeEscrow = 3,
    StakersPool = 4,
    Rewards = 5,
    Burn = 6,
    /// A genesis allocation (community, investors, team, ecosystem, liquidity).
    Allocation = 7,
    /// The other side of the net-zero transfers that record attribution receipt batch roots
    /// in the journal (see `receipts`); its balance is always zero between batches.
    ReceiptAnchors = 8,
}

impl SystemRole {
    pub const ALL: [SystemRole; 8] = [
        Self::Treasury,
        Self::Genesis,
        Self::FeeEscrow,
        Self::StakersPool,
        Self::Rewards,
        Self::Burn,
        Self::Allocation,
        Self::ReceiptAnchors,
    ];

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|role| *role as u8 == code)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Account {
    pub id: u128,
    pub owner: Owner,
    pub ledger: u32,
    pub code: u16,
    pub flags: AccountFlags,
    pub debits_pending: u128,
    pub debits_posted: u128,
    pub credits_pending: u128,
    pub credits_posted: u128,
    /// Nanoseconds, assigned by the ledger when the account is created.
    pub timestamp: u64,
}

impl Account {
    /// A new account with zero balances (as submitted by a client).
    pub fn new(id: u128, owner: Owner, ledger: u32, code: u16, flags: AccountFlags) -> Self {
        Self {
            id,
            owner,
            ledger,
            code,
            flags,
            debits_pending: 0,
            debits_posted: 0,
            credits_pending: 0,
            credits_posted: 0,
            timestamp: 0,
        }
    }

    /// Posted credits minus posted debits, or 0 when debits are larger.
    pub fn posted_credit_balance(&self) -> u128 {
        self.credits_posted.saturating_sub(self.debits_posted)
    }

    fn same_definition(&self, other: &Account) -> bool {
        (self.owner, self.ledger, self.code, self.flags) == (other.owner, other.ledger, other.code, other.flags)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Transfer {
    pub id: u128,
    pub debit_account_id: u128,
    pub credit_account_id: u128,
    pub amount: u128,
    /// For post/void: the pending transfer resolved.
    pub pending_id: u128,
    pub user_data: u128,
    /// For pending transfers: seconds after which the hold expires (0: never).
    pub timeout_seconds: u32,
    pub ledger: u32,
    pub code: u16,
    pub flags: TransferFlags,
    /// Nanoseconds, assigned by the ledger; strictly increasing over all transfers.
    pub timestamp: u64,
}

impl Transfer {
    /// Fields chosen by the client, for idempotency checks (timestamps are the ledger's).
    fn same_request(&self, other: &Transfer) -> bool {
        Transfer { timestamp: 0, ..*self } == Transfer { timestamp: 0, ..*other }
    }

    /// Nanosecond timestamp at which a pending transfer expires, if it has a timeout.
    pub fn expires_at(&self) -> Option<u64> {
        (self.flags.has(TransferFlags::PENDING) && self.timeout_seconds > 0)
            .then(|| self.timestamp.saturating_add(u64::from(self.timeout_seconds) * crate::limits::NANOS_PER_SECOND))
    }

    /// Bytes of [`Transfer::canonical_bytes`]: six `u128`s, two `u32`s, two `u16`s, a `u64`.
    pub const CANONICAL_BYTES: usize = 6 * 16 + 2 * 4 + 2 * 2 + 8;

    /// A fixed-width big-endian encoding of every field, in declaration order, hashed into
    /// the journal.
    pub fn canonical_bytes(&self) -> [u8; Self::CANONICAL_BYTES] {
        let mut out = [0u8; Self::CANONICAL_BYTES];
        let fields: [&[u8]; 11] = [
            &self.id.to_be_bytes(),
            &self.debit_account_id.to_be_bytes(),
            &self.credit_account_id.to_be_bytes(),
            &self.amount.to_be_bytes(),
            &self.pending_id.to_be_bytes(),
            &self.user_data.to_be_bytes(),
            &self.timeout_seconds.to_be_bytes(),
            &self.ledger.to_be_bytes(),
            &self.code.to_be_bytes(),
            &self.flags.0.to_be_bytes(),
            &self.timestamp.to_be_bytes(),
        ];
        let mut offset = 0;
        for field in fields {
            out[offset..offset + field.len()].copy_from_slice(field);
            offset += field.len();
        }
        debug_assert_eq!(offset, out.len());
        out
    }
}

stored_enum! {
    /// Where a pending transfer stands (`ledger_pending.state`).
    pub enum PendingState {
        Pending = 0,
        Posted = 1,
        Voided = 2,
        Expired = 3,
    }
}

stored_enum! {
    /// How an account's owner is stored (`ledger_accounts.owner_kind`): an ed25519 key, or
    /// one byte naming a [`SystemRole`].
    pub enum OwnerKind {
        Key = 0,
        System = 1,
    }
}

/// The answer to one account of a `create_accounts` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CreateAccountResult {
    Ok,
    Exists,
    ExistsWithDifferentFields,
    InvalidId,
    ReservedId,
    InvalidFlags,
    LedgerMustNotBeZero,
    /// The same id appears twice in one call with different fields.
    DuplicateInBatch,
}

/// The answer to one transfer of a `create_transfers` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CreateTransferResult {
    Ok,
    Exists,
    ExistsWithDifferentFields,
    InvalidId,
    InvalidFlags,
    /// A timeout on a transfer that is not pending.
    TimeoutReservedForPending,
    SameAccount,
    ZeroAmount,
    AccountNotFound,
    LedgerMismatch,
    InsufficientFunds,
    ExceedsDebits,
    Overflow,
    PendingNotFound,
    PendingAlreadyResolved,
    PendingExpired,
    /// Post/void whose accounts, ledger or amount do not match the pending transfer.
    PendingMismatch,
    /// A transfer that would debit a reserved system account outside the service's own
    /// operations (the genesis account, so there is no mint path after genesis).
    ReservedAccount,
    LinkedEventFailed,
    LinkedChainOpen,
}

impl CreateTransferResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Exists => "exists",
            Self::ExistsWithDifferentFields => "exists_with_different_fields",
            Self::InvalidId => "invalid_id",
            Self::InvalidFlags => "invalid_flags",
            Self::TimeoutReservedForPending => "timeout_reserved_for_pending",
            Self::SameAccount => "same_account",
            Self::ZeroAmount => "zero_amount",
            Self::AccountNotFound => "account_not_found",
            Self::LedgerMismatch => "ledger_mismatch",
            Self::InsufficientFunds => "insufficient_funds",
            Self::ExceedsDebits => "exceeds_debits",
            Self::Overflow => "overflow",
            Self::PendingNotFound => "pending_not_found",
            Self::PendingAlreadyResolved => "pending_already_resolved",
            Self::PendingExpired => "pending_expired",
            Self::PendingMismatch => "pending_mismatch",
            Self::ReservedAccount => "reserved_account",
            Self::LinkedEventFailed => "linked_event_failed",
            Self::LinkedChainOpen => "linked_chain_open",
        }
    }

    /// Ok and Exists change nothing about a chain's fate; everything else fails it.
    pub fn is_success(self) -> bool {
        matches!(self, Self::Ok | Self::Exists)
    }
}

pub(crate) fn validate_account(account: &Account) -> Result<(), CreateAccountResult> {
    if account.id == 0 || account.id == u128::MAX {
        return Err(CreateAccountResult::InvalidId);
    }
    if account.flags.0 & !AccountFlags::KNOWN != 0
        || (account.flags.has(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
            && account.flags.has(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS))
    {
        return Err(CreateAccountResult::InvalidFlags);
    }
    if account.ledger == 0 {
        return Err(CreateAccountResult::LedgerMustNotBeZero);
    }
    Ok(())
}

pub(crate) fn account_exists_result(existing: &Account, submitted: &Account) -> CreateAccountResult {
    if existing.same_definition(submitted) {
        CreateAccountResult::Exists
    } else {
        CreateAccountResult::ExistsWithDifferentFields
    }
}

pub(crate) fn transfer_exists_result(existing: &Transfer, submitted: &Transfer) -> CreateTransferResult {
    // Post/void transfers are stored with the accounts, ledger and amount they resolved to;
    // a resubmission that left those at zero is the same request.
    let resolves = existing.flags.has(TransferFlags::POST_PENDING) || existing.flags.has(TransferFlags::VOID_PENDING);
    let fill = |given: u128, stored: u128| if resolves && given == 0 { stored } else { given };
    let submitted = Transfer {
        debit_account_id: fill(submitted.debit_account_id, existing.debit_account_id),
        credit_account_id: fill(submitted.credit_account_id, existing.credit_account_id),
        amount: fill(submitted.amount, existing.amount),
        ledger: if resolves && submitted.ledger == 0 { existing.ledger } else { submitted.ledger },
        ..*submitted
    };
    if existing.same_request(&submitted) {
        CreateTransferResult::Exists
    } else {
        CreateTransferResult::ExistsWithDifferentFields
    }
}

pub(crate) fn known_transfer_flags(flags: TransferFlags) -> bool {
    let phases = [TransferFlags::PENDING, TransferFlags::POST_PENDING, TransferFlags::VOID_PENDING];
    flags.0 & !TransferFlags::KNOWN == 0 && phases.iter().filter(|flag| flags.has(**flag)).count() <= 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_states_round_trip_and_unknown_codes_are_refused() {
        for state in [PendingState::Pending, PendingState::Posted, PendingState::Voided, PendingState::Expired] {
            assert_eq!(PendingState::try_from(state.code()), Ok(state));
        }
        for kind in [OwnerKind::Key, OwnerKind::System] {
            assert_eq!(OwnerKind::try_from(kind.code()), Ok(kind));
        }
        assert_eq!(PendingState::try_from(4), Err(4));
        assert_eq!(OwnerKind::try_from(-1), Err(-1));
    }

    #[test]
    fn a_transfer_encodes_to_its_documented_width() {
        assert_eq!(Transfer::default().canonical_bytes().len(), 116);
    }
}
