//! Genesis: the system accounts and the one mint of the supply into the allocation accounts
//! (community, investors, team, ecosystem, liquidity by default). Runs once; the genesis
//! account is never debited again, so there is no mint path afterwards.

use sea_orm::{EntityTrait, Set, sea_query::OnConflict};

use super::{Ledger, LedgerError, ids::system_transfer_id};
use crate::{
    entities::meta,
    limits::{BASIS_POINTS_TOTAL, MAX_GENESIS_ALLOCATIONS},
    model::{Account, AccountFlags, CODE_GENESIS, OPEN_LEDGER, Owner, SystemRole, Transfer, TransferFlags},
    operations::Economics,
};

/// The genesis account: debited once to mint the supply, never again.
pub const GENESIS_ACCOUNT_ID: u128 = SystemRole::Genesis as u128;
/// 1,000,000,000 OPEN in base units.
pub const GENESIS_SUPPLY: u128 = 1_000_000_000 * 10u128.pow(18);
/// The first allocation account's id; the others follow in order.
const ALLOCATION_FIRST_ID: u128 = 101;
/// The first allocation account's code; the others follow in order.
const ALLOCATION_FIRST_CODE: u16 = 100;
/// The `ledger_meta` key recording that genesis ran (and its allocations).
const GENESIS_META_KEY: &str = "genesis";

/// One genesis allocation account and its share of the supply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub name: String,
    pub basis_points: u32,
}

/// Community 51.71%, investors 18.29%, team 15%, ecosystem 10%, liquidity 5%.
pub fn default_allocations() -> Vec<Allocation> {
    [("community", 5171), ("investors", 1829), ("team", 1500), ("ecosystem", 1000), ("liquidity", 500)]
        .into_iter()
        .map(|(name, basis_points)| Allocation { name: name.to_owned(), basis_points })
        .collect()
}

fn check_allocations(allocations: &[Allocation]) -> Result<(), LedgerError> {
    let total: u32 = allocations.iter().map(|allocation| allocation.basis_points).sum();
    if allocations.is_empty()
        || allocations.len() > MAX_GENESIS_ALLOCATIONS
        || total != BASIS_POINTS_TOTAL
        || allocations.iter().any(|a| a.basis_points == 0)
    {
        return Err(LedgerError::InvalidGenesis(format!(
            "allocations: 1 to {MAX_GENESIS_ALLOCATIONS} with positive shares summing to {BASIS_POINTS_TOTAL} basis \
             points (100%), got {} summing to {total}",
            allocations.len()
        )));
    }
    Ok(())
}

/// The system accounts (all roles but allocations): only the genesis account and the receipt
/// anchors may go negative, and clients may debit neither (see `write::client_reserved`). The
/// receipt anchors go one unit below zero for an instant inside each receipt batch's net-zero
/// chain, which then pays it back.
fn system_accounts() -> Vec<Account> {
    let guarded = AccountFlags(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS);
    SystemRole::ALL
        .into_iter()
        .filter(|role| *role != SystemRole::Allocation)
        .map(|role| {
            let unguarded = matches!(role, SystemRole::Genesis | SystemRole::ReceiptAnchors);
            let flags = if unguarded { AccountFlags::default() } else { guarded };
            Account::new(role as u128, Owner::System(role), OPEN_LEDGER, role as u16, flags)
        })
        .collect()
}

/// The allocation accounts and the linked chain that mints the supply into them.
fn allocation_mint(allocations: &[Allocation]) -> (Vec<Account>, Vec<Transfer>) {
    let guarded = AccountFlags(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS);
    let mut accounts = Vec::with_capacity(allocations.len());
    let mut mint = Vec::with_capacity(allocations.len());
    let mut minted = 0u128;
    for (index, allocation) in allocations.iter().enumerate() {
        let id = ALLOCATION_FIRST_ID + index as u128;
        let code = ALLOCATION_FIRST_CODE + index as u16;
        accounts.push(Account::new(id, Owner::System(SystemRole::Allocation), OPEN_LEDGER, code, guarded));
        let last = index + 1 == allocations.len();
        // The last allocation takes the rounding remainder, so the supply is exact.
        let amount = if last {
            GENESIS_SUPPLY - minted
        } else {
            GENESIS_SUPPLY / u128::from(BASIS_POINTS_TOTAL) * u128::from(allocation.basis_points)
        };
        minted += amount;
        mint.push(Transfer {
            id: system_transfer_id("genesis", index as u128),
            debit_account_id: GENESIS_ACCOUNT_ID,
            credit_account_id: id,
            amount,
            ledger: OPEN_LEDGER,
            code: CODE_GENESIS,
            flags: TransferFlags(if last { 0 } else { TransferFlags::LINKED }),
            ..Transfer::default()
        });
    }
    debug_assert_eq!(minted, GENESIS_SUPPLY, "the allocations mint exactly the supply");
    (accounts, mint)
}

impl Ledger {
    /// Mints the supply into the allocation accounts and records `parameters` as the genesis
    /// parameter set, once; later calls change nothing but create the system accounts later
    /// versions added (books made before the receipt anchors get that account at the next
    /// start).
    pub async fn ensure_genesis(&self, allocations: &[Allocation], parameters: &Economics) -> Result<(), LedgerError> {
        if meta::Entity::find_by_id(GENESIS_META_KEY).one(&self.db).await?.is_some() {
            self.insert_accounts(&system_accounts(), true).await?;
            return Ok(());
        }
        check_allocations(allocations)?;
        self.record_genesis_parameters(parameters).await?;
        let (allocation_accounts, mint) = allocation_mint(allocations);
        let mut accounts = system_accounts();
        accounts.extend(allocation_accounts);
        self.insert_accounts(&accounts, true).await?;
        let outcome = self.write(&mint, Self::now_ns(), &|_| false).await?;
        if let Some(result) = outcome.results.iter().find(|result| !result.is_success()) {
            return Err(LedgerError::Corrupt(format!("genesis mint failed: {}", result.as_str())));
        }
        let record = allocations.iter().map(|a| format!("{}={}", a.name, a.basis_points)).collect::<Vec<_>>().join(",");
        meta::Entity::insert(meta::ActiveModel { key: Set(GENESIS_META_KEY.into()), value: Set(record) })
            .on_conflict(OnConflict::column(meta::Column::Key).do_nothing().to_owned())
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }
}
