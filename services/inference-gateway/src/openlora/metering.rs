//! Metering on the ledger: hold the largest fee a request can cost before its tokens are read
//! (402 `insufficient_funds` when the account cannot cover it), then capture the actual fee into
//! escrow and release the rest: a cancelled or disconnected request pays for the tokens it
//! produced. Both calls are idempotent by inference id on the ledger (their transfer ids derive
//! from it), so a retried capture never charges twice. The fee formula is
//! `openledger_core::fee`, shared with the ledger.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use openledger_core::ErrorCode;
use openledger_proto::{
    ledger::v1::{
        CaptureInferenceFeeRequest, GetParametersRequest, HoldInferenceFeeRequest,
        ledger_service_client::LedgerServiceClient,
    },
    u128_of, uint128,
};
use openledger_runtime::clients::ServiceChannel;
use parking_lot::Mutex;

use crate::edge::ApiError;

/// How long a hold lasts before the ledger voids it by itself: longer than any generation
/// (a capture after it fails and the request is logged as unpaid).
pub const HOLD_TIMEOUT_SECONDS: u32 = 900;
/// How long the platform fee read from the ledger's parameters is reused.
pub const PARAMETERS_TTL: Duration = Duration::from_secs(10);

/// What one request is metered by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tariff {
    /// Base units per 1,000 tokens.
    pub price_in: u128,
    pub price_out: u128,
    pub platform_fee: u128,
}

impl Tariff {
    /// The fee of `tokens_in` prompt and `tokens_out` completion tokens; 400 when it overflows.
    pub fn fee(&self, tokens_in: u32, tokens_out: u32) -> Result<u128, ApiError> {
        openledger_core::fee::inference_fee(tokens_in, tokens_out, self.price_in, self.price_out, self.platform_fee)
            .ok_or_else(|| ApiError::invalid("the fee of this request overflows: ask for fewer tokens"))
    }
}

/// Holds and captures inference fees on the ledger.
#[derive(Clone)]
pub struct Metering {
    ledger: ServiceChannel,
    platform_fee: Arc<Mutex<Option<(Instant, u128)>>>,
}

impl Metering {
    pub fn new(ledger: ServiceChannel) -> Self {
        Self { ledger, platform_fee: Arc::default() }
    }

    fn client(&self) -> Result<LedgerServiceClient<tonic::transport::Channel>, ApiError> {
        Ok(LedgerServiceClient::new(self.ledger.channel()?))
    }

    /// The platform fee in force (the ledger's governed parameters).
    pub async fn platform_fee(&self) -> Result<u128, ApiError> {
        if let Some((at, fee)) = *self.platform_fee.lock()
            && at.elapsed() < PARAMETERS_TTL
        {
            return Ok(fee);
        }
        let parameters = self.client()?.get_parameters(GetParametersRequest { epoch: 0 }).await?.into_inner();
        let fee = u128_of(parameters.platform_fee.as_ref());
        *self.platform_fee.lock() = Some((Instant::now(), fee));
        Ok(fee)
    }

    /// Holds `max_fee` from `account` for `inference_id`: 402 `insufficient_funds` when the
    /// balance cannot cover it.
    pub async fn hold(&self, inference_id: &str, account: u128, max_fee: u128) -> Result<(), ApiError> {
        let request = HoldInferenceFeeRequest {
            inference_id: inference_id.to_owned(),
            app_account_id: uint128(account),
            max_fee: uint128(max_fee),
            timeout_seconds: HOLD_TIMEOUT_SECONDS,
        };
        match self.client()?.hold_inference_fee(request).await {
            Ok(_) => Ok(()),
            Err(status) => {
                let error = ApiError::from(status);
                if error.code == ErrorCode::InsufficientFunds {
                    return Err(ApiError::new(
                        ErrorCode::InsufficientFunds,
                        format!(
                            "account {account} cannot cover this request's largest fee of {max_fee} base units: \
                             fund the account or ask for fewer tokens (max_tokens)"
                        ),
                    ));
                }
                Err(error)
            }
        }
    }

    /// Captures the fee of what was produced into escrow and releases the rest of the hold;
    /// returns the fee. Retrying it is harmless (the ledger keys the capture by inference id).
    pub async fn capture(
        &self,
        inference_id: &str,
        tokens_in: u32,
        tokens_out: u32,
        tariff: &Tariff,
    ) -> Result<u128, ApiError> {
        let request = CaptureInferenceFeeRequest {
            inference_id: inference_id.to_owned(),
            tokens_in,
            tokens_out,
            price_in: uint128(tariff.price_in),
            price_out: uint128(tariff.price_out),
        };
        let response = self.client()?.capture_inference_fee(request).await?.into_inner();
        Ok(u128_of(response.fee.as_ref()))
    }
}
