//! The development account of an embedded process (`openledger dev`): on the first start an
//! ed25519 key (kept in `<data_dir>/dev-account.key`, the format of `openledger ledger keygen`),
//! its ledger account (the id derived from the key), [`DEV_ACCOUNT_FUNDS`] from the genesis
//! allocation named [`FUNDING_ALLOCATION`] (else the first) by a transfer whose id is derived
//! from the account, so it happens once, and an API key whose secret is kept in
//! `<data_dir>/dev-api-key`.
//! Both files are mode 0600. A restart reuses all of it, and makes a new API key only when the
//! kept one no longer authenticates (revoked, or a new database). Cluster mode never runs this.

use std::{io::Write, os::unix::fs::OpenOptionsExt, path::Path, time::Duration};

use ed25519_dalek::SigningKey;
use openledger_core::{Config, ContentHash, ErrorCode, fee::FIRST_CLIENT_ACCOUNT_ID};
use openledger_proto::{common::v1 as common, ledger::v1 as lpb, uint128};
use openledger_runtime::{DevApiKey, Worker};
use rand::{TryRngCore, rngs::OsRng};

use super::{Keys, Limits, NewKey};
use crate::edge::ApiError;

/// Base units of one OPEN.
const OPEN: u128 = 1_000_000_000_000_000_000;
/// What the development account receives once: 1,000 OPEN.
pub const DEV_ACCOUNT_FUNDS: u128 = 1_000 * OPEN;
/// The genesis allocation the funds come from, when the configuration has one of this name
/// (it does by default); else the first allocation.
pub const FUNDING_ALLOCATION: &str = "ecosystem";
/// The ledger numbers its genesis allocation accounts from this id, in the order of the
/// `genesis_allocations` setting.
const FIRST_ALLOCATION_ACCOUNT_ID: u128 = 101;
/// The development account's key file in the data directory.
pub const DEV_ACCOUNT_KEY_FILE: &str = "dev-account.key";
/// The development API key's secret in the data directory.
pub const DEV_API_KEY_FILE: &str = "dev-api-key";
/// The name of the development API key.
const DEV_KEY_NAME: &str = "openledger dev";
/// How long the bootstrap keeps trying (the ledger mints genesis as it starts).
pub const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(60);
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What the bootstrap made or found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevAccount {
    pub account_id: u128,
    pub secret: String,
}

/// The worker that makes (or finds) the development account and key, then publishes the
/// secret (or why there is none) for the ready banner.
pub fn bootstrap_worker(keys: Keys, config: &Config, published: DevApiKey) -> Worker {
    let data_dir = config.data_dir.clone();
    let funding_account = funding_account_id(config);
    Box::new(move |_backends, shutdown| {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + BOOTSTRAP_TIMEOUT;
            let outcome = loop {
                match bootstrap(&keys, &data_dir, funding_account).await {
                    Ok(account) => break Ok(account),
                    Err(error) if tokio::time::Instant::now() >= deadline => break Err(error),
                    Err(error) => {
                        tracing::debug!(error = %error.message, "development account not ready yet; retrying")
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(RETRY_PAUSE) => {}
                    () = shutdown.cancelled() => return,
                }
            };
            match outcome {
                Ok(account) => {
                    tracing::info!(account = account.account_id, "development account and API key ready");
                    published.set(Ok(account.secret));
                }
                Err(error) => {
                    tracing::error!(error = %error.message, "making the development account and API key failed");
                    published.set(Err(format!("{} (see the logs)", error.message)));
                }
            }
        })
    })
}

/// One attempt: every step is idempotent, so a failed attempt is simply run again.
pub async fn bootstrap(keys: &Keys, data_dir: &Path, funding_account: u128) -> Result<DevAccount, ApiError> {
    let signing_key = account_key(&data_dir.join(DEV_ACCOUNT_KEY_FILE))?;
    let account_id = dev_account_id(&signing_key);
    let mut ledger = keys.inner.ledger.client()?;
    let account = lpb::Account {
        id: uint128(account_id),
        owner: Some(lpb::account::Owner::PublicKey(signing_key.verifying_key().to_bytes().to_vec())),
        ledger: 1,
        flags: vec![lpb::AccountFlag::DebitsMustNotExceedCredits as i32],
        ..Default::default()
    };
    let created = ledger.create_accounts(lpb::CreateAccountsRequest { accounts: vec![account] }).await?.into_inner();
    check_created("the development account", created.results.first().map(|result| result.result))?;
    let funding = lpb::Transfer {
        id: uint128(funding_transfer_id(account_id)),
        debit_account_id: uint128(funding_account),
        credit_account_id: uint128(account_id),
        amount: uint128(DEV_ACCOUNT_FUNDS),
        ledger: 1,
        ..Default::default()
    };
    let funded = ledger.create_transfers(lpb::CreateTransfersRequest { transfers: vec![funding] }).await?.into_inner();
    check_created("funding the development account", funded.results.first().map(|result| result.result))?;

    let secret_file = data_dir.join(DEV_API_KEY_FILE);
    if let Ok(kept) = std::fs::read_to_string(&secret_file) {
        let kept = kept.trim();
        if keys.authenticate_secret(kept).await.is_ok_and(|caller| caller.account_id == account_id) {
            return Ok(DevAccount { account_id, secret: kept.to_owned() });
        }
    }
    let signed_at = openledger_signing::now_unix();
    let no_limits = Limits { requests_per_minute: 0, tokens_per_minute: 0 };
    let message = openledger_signing::api_key_create_message(account_id, signed_at, 0, 0, DEV_KEY_NAME);
    let signed = openledger_signing::sign(&signing_key, &message);
    let signature = common::Signature { public_key: signed.public_key.to_vec(), signature: signed.signature.to_vec() };
    let new = NewKey { account_id, name: DEV_KEY_NAME.to_owned(), limits: no_limits, signed_at, signature };
    let (_, secret) = keys.create(new).await?;
    write_private(&secret_file, &secret)?;
    Ok(DevAccount { account_id, secret })
}

/// The development account's id: derived from its key, above the ledger's reserved ids.
pub fn dev_account_id(key: &SigningKey) -> u128 {
    let id = ContentHash::of_parts(&[b"openledger/dev-account/v1/", key.verifying_key().as_bytes()]).prefix_u128();
    id.max(FIRST_CLIENT_ACCOUNT_ID)
}

/// The allocation account the development account is funded from (see [`FUNDING_ALLOCATION`]).
pub fn funding_account_id(config: &Config) -> u128 {
    let allocations = config.genesis_shares().unwrap_or_default();
    let index = allocations.iter().position(|(name, _)| name == FUNDING_ALLOCATION).unwrap_or(0);
    FIRST_ALLOCATION_ACCOUNT_ID + index as u128
}

/// The id of the one transfer that funds `account_id`.
pub fn funding_transfer_id(account_id: u128) -> u128 {
    ContentHash::of_parts(&[b"openledger/dev-account-funding/v1/", &account_id.to_be_bytes()]).prefix_u128()
}

fn check_created(what: &str, result: Option<i32>) -> Result<(), ApiError> {
    use lpb::CreateResult;
    match result.and_then(|result| CreateResult::try_from(result).ok()) {
        Some(CreateResult::Ok | CreateResult::Exists) => Ok(()),
        other => {
            let reason = other.map_or("no answer", |result| result.as_str_name());
            Err(ApiError::new(ErrorCode::Unavailable, format!("{what}: the ledger answered {reason}")))
        }
    }
}

/// The kept key, or a new one written (0600) for the next start.
fn account_key(path: &Path) -> Result<SigningKey, ApiError> {
    let failed = |what: &str, error: &dyn std::fmt::Display| {
        ApiError::new(ErrorCode::Internal, format!("{what} {}: {error}", path.display()))
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim()).ok().and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
            let bytes = bytes.ok_or_else(|| {
                failed("cannot use", &"it must hold a 32-byte ed25519 secret key in hex; move it away to start afresh")
            })?;
            Ok(SigningKey::from_bytes(&bytes))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            OsRng.try_fill_bytes(&mut seed).map_err(|error| failed("no randomness for", &error))?;
            write_private(path, &hex::encode(seed))?;
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(error) => Err(failed("cannot read", &error)),
    }
}

/// Writes `text` and a newline to `path`, readable by its owner only, replacing any old file
/// at once (a temporary file renamed over it).
fn write_private(path: &Path, text: &str) -> Result<(), ApiError> {
    let failed =
        |error: std::io::Error| ApiError::new(ErrorCode::Internal, format!("cannot write {}: {error}", path.display()));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    let temporary = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temporary);
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary).map_err(failed)?;
    file.write_all(format!("{text}\n").as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    std::fs::rename(&temporary, path).map_err(failed)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_account_key_is_made_once_private_and_read_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nested").join(DEV_ACCOUNT_KEY_FILE);
        let made = account_key(&path).expect("made");
        let mode = std::fs::metadata(&path).expect("written").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(account_key(&path).expect("read").to_bytes(), made.to_bytes());
        std::fs::write(&path, "not a key").expect("overwrite");
        assert!(account_key(&path).expect_err("refused").message.contains("move it away"));
    }

    #[test]
    fn funds_come_from_the_ecosystem_allocation_else_the_first() {
        assert_eq!(funding_account_id(&Config::default()), 104);
        let custom = Config { genesis_allocations: "community=6000,team=4000".into(), ..Config::default() };
        assert_eq!(funding_account_id(&custom), 101);
    }

    #[test]
    fn ids_are_derived_and_above_the_reserved_range() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let id = dev_account_id(&key);
        assert!(id >= FIRST_CLIENT_ACCOUNT_ID);
        assert_eq!(id, dev_account_id(&SigningKey::from_bytes(&[7; 32])));
        assert_ne!(id, dev_account_id(&SigningKey::from_bytes(&[8; 32])));
        assert_ne!(funding_transfer_id(id), funding_transfer_id(id + 1));
    }
}
