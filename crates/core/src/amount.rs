//! Money: OPEN amounts as `u128` base units (18 decimals), with checked arithmetic only.
//! JSON carries amounts as decimal strings of base units (`"1000000000000000000"` is
//! 1 OPEN); people read and type OPEN with decimals (`"1.5"`).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Decimal places of OPEN.
pub const DECIMALS: u32 = 18;
/// Base units in one OPEN.
pub const BASE_UNITS_PER_OPEN: u128 = 10u128.pow(DECIMALS);

/// An amount of OPEN in base units.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(u128);

/// Why an amount could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AmountError {
    #[error("amount {0:?} is not a number: use digits with at most one '.' (e.g. \"12.5\")")]
    Malformed(String),
    #[error("amount {0:?} has more than 18 decimal places")]
    TooPrecise(String),
    #[error("amount overflows u128 base units")]
    Overflow,
}

impl Amount {
    pub const ZERO: Amount = Amount(0);
    pub const MAX: Amount = Amount(u128::MAX);

    pub const fn from_base_units(units: u128) -> Self {
        Self(units)
    }

    pub const fn base_units(self) -> u128 {
        self.0
    }

    /// Whole OPEN, checked.
    pub fn from_open(open: u128) -> Result<Self, AmountError> {
        open.checked_mul(BASE_UNITS_PER_OPEN).map(Self).ok_or(AmountError::Overflow)
    }

    /// Parses a decimal string of base units, as JSON carries amounts.
    pub fn from_base_units_str(text: &str) -> Result<Self, AmountError> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AmountError::Malformed(text.to_owned()));
        }
        text.parse::<u128>().map(Self).map_err(|_| AmountError::Overflow)
    }

    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).map(Self)
    }

    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.0.checked_sub(other.0).map(Self)
    }

    pub fn checked_mul(self, factor: u128) -> Option<Amount> {
        self.0.checked_mul(factor).map(Self)
    }

    /// `self * numerator / denominator`, rounded down, without intermediate overflow for
    /// any `numerator <= denominator` (the share computations of settlements).
    pub fn mul_div_floor(self, numerator: u128, denominator: u128) -> Option<Amount> {
        if denominator == 0 {
            return None;
        }
        let (quotient, remainder) = (self.0 / denominator, self.0 % denominator);
        let whole = quotient.checked_mul(numerator)?;
        let part = remainder.checked_mul(numerator)? / denominator;
        whole.checked_add(part).map(Self)
    }
}

impl FromStr for Amount {
    type Err = AmountError;

    /// Parses OPEN with optional decimals: `"1"`, `"0.25"`, `"1000000.000000000000000001"`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || AmountError::Malformed(text.to_owned());
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits(whole) || !digits(fraction) || (text.contains('.') && fraction.is_empty()) {
            return Err(malformed());
        }
        if fraction.len() > DECIMALS as usize {
            return Err(AmountError::TooPrecise(text.to_owned()));
        }
        let whole: u128 = whole.parse().map_err(|_| AmountError::Overflow)?;
        let scale = 10u128.pow(DECIMALS - fraction.len() as u32);
        let fraction: u128 = if fraction.is_empty() { 0 } else { fraction.parse().map_err(|_| malformed())? };
        whole
            .checked_mul(BASE_UNITS_PER_OPEN)
            .and_then(|units| units.checked_add(fraction * scale))
            .map(Self)
            .ok_or(AmountError::Overflow)
    }
}

impl fmt::Display for Amount {
    /// OPEN with the decimals it needs: `1.5`, `0.000000000000000001`, `42`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / BASE_UNITS_PER_OPEN;
        let fraction = self.0 % BASE_UNITS_PER_OPEN;
        if fraction == 0 {
            return write!(f, "{whole}");
        }
        let padded = format!("{fraction:018}");
        write!(f, "{whole}.{}", padded.trim_end_matches('0'))
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Amount({} OPEN)", self)
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Amount::from_base_units_str(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_and_prints_open_with_decimals() {
        assert_eq!("1.5".parse::<Amount>(), Ok(Amount::from_base_units(15 * 10u128.pow(17))));
        assert_eq!("0.000000000000000001".parse::<Amount>(), Ok(Amount::from_base_units(1)));
        assert_eq!(Amount::from_base_units(1).to_string(), "0.000000000000000001");
        assert_eq!(Amount::from_open(42).expect("fits").to_string(), "42");
        for bad in ["", ".5", "5.", "1.2.3", "-1", "1e3", " 1"] {
            assert!(matches!(bad.parse::<Amount>(), Err(AmountError::Malformed(_))), "{bad:?}");
        }
        assert!(matches!("0.0000000000000000001".parse::<Amount>(), Err(AmountError::TooPrecise(_))));
        assert_eq!("340282366920938463464".parse::<Amount>(), Err(AmountError::Overflow));
    }

    #[test]
    fn json_carries_base_units_as_strings() {
        let one = Amount::from_open(1).expect("fits");
        assert_eq!(serde_json::to_string(&one).expect("json"), "\"1000000000000000000\"");
        assert_eq!(serde_json::from_str::<Amount>("\"1000000000000000000\"").expect("parse"), one);
        assert!(serde_json::from_str::<Amount>("\"1.0\"").is_err());
        assert!(serde_json::from_str::<Amount>("1").is_err());
    }

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(Amount::MAX.checked_add(Amount::from_base_units(1)), None);
        assert_eq!(Amount::ZERO.checked_sub(Amount::from_base_units(1)), None);
        assert_eq!(Amount::MAX.mul_div_floor(1, 3), Some(Amount::from_base_units(u128::MAX / 3)));
        assert_eq!(Amount::from_base_units(10).mul_div_floor(1, 0), None);
    }

    proptest! {
        #[test]
        fn display_then_parse_is_identity(units in any::<u128>()) {
            let amount = Amount::from_base_units(units);
            prop_assert_eq!(amount.to_string().parse::<Amount>(), Ok(amount));
            prop_assert_eq!(Amount::from_base_units_str(&units.to_string()), Ok(amount));
        }

        #[test]
        fn mul_div_floor_matches_exact_arithmetic(units in any::<u64>(), numerator in 0u128..=1000, denominator in 1u128..=1000) {
            let expected = u128::from(units) * numerator / denominator;
            prop_assert_eq!(Amount::from_base_units(u128::from(units)).mul_div_floor(numerator, denominator), Some(Amount::from_base_units(expected)));
        }
    }
}
