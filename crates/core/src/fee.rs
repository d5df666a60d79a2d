//! The inference fee formula, one place for the ledger (which captures it) and the edge (which
//! holds its maximum before generating): `ceil(in·price_in/1000) + ceil(out·price_out/1000) +
//! platform_fee`, prices in base units per 1,000 tokens, every step checked.

/// `ceil(tokens · price_per_1000 / 1000)`; `None` on overflow.
pub fn token_cost(tokens: u32, price_per_1000: u128) -> Option<u128> {
    u128::from(tokens).checked_mul(price_per_1000).map(|units| units.div_ceil(1000))
}

/// The fee of an inference; `None` when it overflows `u128`.
pub fn inference_fee(
    tokens_in: u32,
    tokens_out: u32,
    price_in: u128,
    price_out: u128,
    platform_fee: u128,
) -> Option<u128> {
    token_cost(tokens_in, price_in)?.checked_add(token_cost(tokens_out, price_out)?)?.checked_add(platform_fee)
}

/// Client account ids start here; lower ids are the ledger's system and allocation accounts.
pub const FIRST_CLIENT_ACCOUNT_ID: u128 = 1 << 16;

/// The ledger account a contributor is paid to when their contribution named no bond account:
/// derived from their ed25519 public key (owned by it, created by the ledger on the first
/// payout), so every contributor is paid to an account only their key controls.
pub fn earnings_account_id(contributor_public_key: &[u8]) -> u128 {
    let id = crate::ContentHash::of_parts(&[b"openledger/earnings-account/v1/", contributor_public_key]).prefix_u128();
    id.max(FIRST_CLIENT_ACCOUNT_ID)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earnings_account_is_a_client_account_of_its_key_alone() {
        let (a, b) = (earnings_account_id(&[1; 32]), earnings_account_id(&[2; 32]));
        assert_ne!(a, b);
        assert_eq!(a, earnings_account_id(&[1; 32]));
        assert!(a >= FIRST_CLIENT_ACCOUNT_ID && b >= FIRST_CLIENT_ACCOUNT_ID);
    }

    #[test]
    fn each_part_rounds_up_separately() {
        assert_eq!(token_cost(1, 1), Some(1));
        assert_eq!(token_cost(1000, 3), Some(3));
        assert_eq!(token_cost(0, 999), Some(0));
        assert_eq!(inference_fee(1500, 1, 3, 999, 7), Some(5 + 1 + 7));
        assert_eq!(inference_fee(u32::MAX, 0, u128::MAX, 0, 0), None);
        assert_eq!(inference_fee(0, 0, 0, 0, u128::MAX), Some(u128::MAX));
    }
}
