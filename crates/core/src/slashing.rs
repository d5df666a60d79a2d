//! The slashing threshold: the contribution quality score (a robust z-score of a contribution's
//! influence on the validation loss, see `openledger_attribution::quality`) below which its bond
//! is slashed for harmful data. Governance sets it in thousandths (the ledger's parameter
//! `slashing_threshold_milli`); the quality assessment compares scores with the number.

/// The threshold before governance changes it: one median deviation below the typical record.
pub const DEFAULT_SLASHING_THRESHOLD_MILLI: i32 = -1_000;
/// The lowest threshold governance may set.
pub const MIN_SLASHING_THRESHOLD_MILLI: i32 = -100_000;
/// The highest: the typical record. Above it, honest contributions would be slashed for being
/// better than the median.
pub const MAX_SLASHING_THRESHOLD_MILLI: i32 = 0;

/// A threshold in thousandths as the score it is.
pub fn slashing_threshold(milli: i32) -> f64 {
    f64::from(milli) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousandths_are_the_score() {
        assert_eq!(slashing_threshold(DEFAULT_SLASHING_THRESHOLD_MILLI), -1.0);
        assert_eq!(slashing_threshold(-2_500), -2.5);
        assert_eq!(slashing_threshold(MAX_SLASHING_THRESHOLD_MILLI), 0.0);
    }
}
