//! API keys: `POST/GET /v1/api_keys` and `DELETE /v1/api_keys/{id}` (created and revoked by
//! the account owner's signature; the secret shown once, stored as a hash), the
//! `Authorization: Bearer` check of the inference routes (401), and per-key limits on requests
//! and tokens per minute (429 with `Retry-After`). Also the gateway's gRPC `InferenceService`,
//! and the development account and key an embedded process makes on its first start.
//!
//! - `secret`: the secret's format, its hash and the constant-time comparison;
//! - `limiter`: the token buckets, on an injected clock, with a bounded table;
//! - `store`: the `gateway_api_keys` table;
//! - `rest` and `grpc`: the two surfaces over [`Keys`]; `dev`: the embedded bootstrap.
//!
//! Authentication reads a key from memory for up to [`AUTH_CACHE_TTL`] after reading it from
//! the database: a key revoked through this process stops working at once, one revoked through
//! another gateway replica within that time.

pub mod dev;
mod grpc;
pub mod limiter;
mod rest;
pub mod secret;
mod store;

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::http::{HeaderMap, header};
use openledger_core::{Config, ErrorCode, Id};
use openledger_proto::{
    common::v1 as common,
    inference::v1 as pb,
    ledger::v1::{self as lpb, ledger_service_client::LedgerServiceClient},
};
use openledger_runtime::{BackendsHandle, clients::ServiceChannel};
use parking_lot::Mutex;
use sea_orm::DatabaseConnection;
use tokio::time::Instant;

pub use self::{grpc::Api, limiter::Limits, rest::*};
use self::{
    limiter::{Limiter, Refusal},
    store::StoredKey,
};
use crate::{edge::ApiError, ledger::Ledger};

/// How long a key read from the database is trusted from memory.
pub const AUTH_CACHE_TTL: Duration = Duration::from_secs(5);
/// Most keys held in the authentication cache.
pub const MAX_CACHED_KEYS: usize = 65_536;
/// Longest key name, in characters.
pub const MAX_KEY_NAME_CHARS: usize = 200;
/// Most keys one account may hold at once (revoked ones do not count).
pub const MAX_ACTIVE_KEYS_PER_ACCOUNT: u64 = 100;

/// The detail code of every 401 from a missing, unknown or revoked key.
pub const INVALID_API_KEY: &str = "invalid_api_key";
/// The detail code of every 429 from a key's limits.
pub const RATE_LIMITED: &str = "rate_limited";

/// Who is calling: the key and the ledger account that pays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub key_id: String,
    pub account_id: u128,
}

/// A key creation, as both surfaces receive it.
#[derive(Clone, Debug)]
pub struct NewKey {
    pub account_id: u128,
    pub name: String,
    /// As asked for; 0 is the gateway's default, more than the default is capped to it.
    pub limits: Limits,
    pub signed_at: i64,
    pub signature: common::Signature,
}

/// The key store, the authentication cache and the limiters.
#[derive(Clone)]
pub struct Keys {
    inner: Arc<Inner>,
}

struct Inner {
    database: Database,
    ledger: Ledger,
    defaults: Limits,
    cache: Mutex<HashMap<String, Cached>>,
    limiter: Mutex<Limiter>,
    clock_origin: Instant,
}

enum Database {
    /// The process's backends, connected in the background.
    Backends(BackendsHandle),
    Connected(DatabaseConnection),
}

#[derive(Clone)]
struct Cached {
    key: StoredKey,
    read_at: Instant,
}

impl Keys {
    /// Keys on the process's database, checking account owners with the ledger, under the
    /// configured default limits.
    pub fn new(config: &Config, backends: BackendsHandle, ledger: ServiceChannel) -> Self {
        Self::build(Database::Backends(backends), ledger, default_limits(config))
    }

    /// Keys on a connected database (tests, tools).
    pub fn with_database(db: DatabaseConnection, ledger: ServiceChannel, defaults: Limits) -> Self {
        Self::build(Database::Connected(db), ledger, defaults)
    }

    fn build(database: Database, ledger: ServiceChannel, defaults: Limits) -> Self {
        let defaults = Limits {
            requests_per_minute: defaults.requests_per_minute.max(1),
            tokens_per_minute: defaults.tokens_per_minute.max(1),
        };
        Self {
            inner: Arc::new(Inner {
                database,
                ledger: Ledger::new(ledger, LedgerServiceClient::new),
                defaults,
                cache: Mutex::new(HashMap::new()),
                limiter: Mutex::new(Limiter::default()),
                clock_origin: Instant::now(),
            }),
        }
    }

    /// The caller of a request from its `Authorization: Bearer <secret>` header: 401
    /// (`invalid_api_key`) without one or with an unknown or revoked key.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let secret = bearer(headers).ok_or_else(|| {
            invalid_api_key(
                "no API key: send it as `Authorization: Bearer olk_…`; create one with POST /v1/api_keys (signed \
                 by your account's key), or use the one `openledger dev` prints",
            )
        })?;
        self.authenticate_secret(secret).await
    }

    /// The caller a secret stands for, as [`Keys::authenticate`] decides it.
    pub async fn authenticate_secret(&self, secret: &str) -> Result<Caller, ApiError> {
        self.authenticate_secret_at(secret, Instant::now()).await
    }

    async fn authenticate_secret_at(&self, secret: &str, now: Instant) -> Result<Caller, ApiError> {
        let invalid = || {
            invalid_api_key(
                "the API key is not valid (unknown, revoked or mistyped): create a key with POST /v1/api_keys \
                 (signed by your account's key), or use the one `openledger dev` prints",
            )
        };
        let key_id = secret::key_id_of(secret).ok_or_else(invalid)?;
        let key = self.key_at(key_id, now).await?.ok_or_else(invalid)?;
        // The hash is compared first and whatever the key's state, so an answer takes as long
        // for a revoked key as for a wrong secret.
        let matches = secret::matches(secret, &key.secret_hash);
        if !matches || key.revoked_at_ms.is_some() {
            return Err(invalid());
        }
        Ok(Caller { key_id: key.id, account_id: key.account_id })
    }

    /// Admits one request of up to `tokens` (prompt + maximum output) under the key's limits,
    /// or 429 (`rate_limited`) with `Retry-After` in whole seconds.
    pub fn admit(&self, caller: &Caller, tokens: u64) -> Result<(), ApiError> {
        let now_ns = u64::try_from(self.inner.clock_origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.admit_at(caller, tokens, now_ns)
    }

    fn admit_at(&self, caller: &Caller, tokens: u64, now_ns: u64) -> Result<(), ApiError> {
        // A key evicted from the cache since it authenticated falls back to the defaults.
        let own = self.inner.cache.lock().get(&caller.key_id).map(|cached| cached.key.limits);
        let limits =
            own.unwrap_or(Limits { requests_per_minute: 0, tokens_per_minute: 0 }).resolve(self.inner.defaults);
        let refusal = match self.inner.limiter.lock().admit_at(&caller.key_id, limits, tokens, now_ns) {
            Ok(()) => return Ok(()),
            Err(refusal) => refusal,
        };
        Err(match refusal {
            Refusal::RetryAfter { seconds } => ApiError::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "API key {} is over its limits ({} requests and {} tokens per minute): retry in {seconds} s",
                    caller.key_id, limits.requests_per_minute, limits.tokens_per_minute
                ),
            )
            .with_detail_code(RATE_LIMITED)
            .with_retry_after(seconds),
            Refusal::TooLarge { tokens, tokens_per_minute } => ApiError::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "this request may use {tokens} tokens (prompt plus the most output it asks for), more than API \
                     key {}'s limit of {tokens_per_minute} tokens per minute: lower max_tokens or shorten the prompt",
                    caller.key_id
                ),
            )
            .with_detail_code(RATE_LIMITED),
        })
    }

    /// Creates a key for an account, signed by the account's owner (401 when the signature is
    /// bad or stale, 403 when the signer does not own the account); the secret is returned
    /// once and never again.
    pub async fn create(&self, new: NewKey) -> Result<(pb::ApiKey, String), ApiError> {
        let name_chars = new.name.chars().count();
        if name_chars == 0 || name_chars > MAX_KEY_NAME_CHARS || new.name.chars().any(char::is_control) {
            return Err(ApiError::invalid(format!(
                "name must be 1 to {MAX_KEY_NAME_CHARS} characters without control characters"
            )));
        }
        if new.account_id == 0 {
            return Err(ApiError::invalid("account_id must name a ledger account (not 0)"));
        }
        let message = openledger_signing::api_key_create_message(
            new.account_id,
            new.signed_at,
            new.limits.requests_per_minute,
            new.limits.tokens_per_minute,
            &new.name,
        );
        let signer = verify(&new.signature, &message, new.signed_at)?;
        self.check_owner(new.account_id, &signer).await?;
        let db = self.db()?;
        if store::count_active(&db, new.account_id).await? >= MAX_ACTIVE_KEYS_PER_ACCOUNT {
            return Err(ApiError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "account {} already has {MAX_ACTIVE_KEYS_PER_ACCOUNT} active API keys: revoke one first",
                    new.account_id
                ),
            ));
        }
        let cap = |asked: u64, default: u64| if asked == 0 { 0 } else { asked.min(default) };
        let id = Id::new().to_string();
        let secret = secret::generate(&id)?;
        let key = StoredKey {
            secret_hash: secret::hash(&secret),
            limits: Limits {
                requests_per_minute: cap(new.limits.requests_per_minute, self.inner.defaults.requests_per_minute),
                tokens_per_minute: cap(new.limits.tokens_per_minute, self.inner.defaults.tokens_per_minute),
            },
            created_at_ms: now_ms(),
            revoked_at_ms: None,
            name: new.name,
            account_id: new.account_id,
            id,
        };
        store::insert(&db, &key, *blake3::hash(&new.signature.signature).as_bytes()).await?;
        tracing::info!(key_id = %key.id, account = key.account_id, "API key created");
        Ok((self.view(&key), secret))
    }

    /// A page of an account's keys (never their secrets or hashes), for its owner (signed
    /// caller headers) or a holder of one of its keys (Bearer).
    pub async fn list(
        &self,
        headers: &HeaderMap,
        account_id: u128,
        page: common::PageRequest,
    ) -> Result<(Vec<pb::ApiKey>, Option<String>), ApiError> {
        self.check_reader(headers, account_id).await?;
        let after = Some(page.page_token.as_str()).filter(|token| !token.is_empty());
        let limit = u64::from(page.page_size.clamp(1, crate::edge::page::MAX_LIMIT));
        let mut keys = store::list(&self.db()?, account_id, after, limit + 1).await?;
        let next = (keys.len() as u64 > limit).then(|| {
            keys.truncate(limit as usize);
            keys.last().map(|key| key.id.clone())
        });
        Ok((keys.iter().map(|key| self.view(key)).collect(), next.flatten()))
    }

    /// Revokes a key, signed by its account's owner; revoking a revoked key changes nothing.
    /// The key stops authenticating in this process at once.
    pub async fn revoke(
        &self,
        key_id: &str,
        signed_at: i64,
        signature: &common::Signature,
    ) -> Result<pb::ApiKey, ApiError> {
        let signer = verify(signature, &openledger_signing::api_key_revoke_message(key_id, signed_at), signed_at)?;
        let db = self.db()?;
        let not_found = || ApiError::new(ErrorCode::NotFound, format!("API key {key_id:?} does not exist"));
        let key = store::find(&db, key_id).await?.ok_or_else(not_found)?;
        self.check_owner(key.account_id, &signer).await?;
        let key = store::revoke(&db, key_id, now_ms()).await?.ok_or_else(not_found)?;
        self.remember_at(key.clone(), Instant::now());
        tracing::info!(key_id = %key.id, account = key.account_id, "API key revoked");
        Ok(self.view(&key))
    }

    /// The key from memory while read less than [`AUTH_CACHE_TTL`] before `now`, else from
    /// the database.
    async fn key_at(&self, key_id: &str, now: Instant) -> Result<Option<StoredKey>, ApiError> {
        let fresh = |cached: &Cached| now.saturating_duration_since(cached.read_at) < AUTH_CACHE_TTL;
        let cached = self.inner.cache.lock().get(key_id).filter(|cached| fresh(cached)).cloned();
        if let Some(cached) = cached {
            return Ok(Some(cached.key));
        }
        let key = store::find(&self.db()?, key_id).await?;
        if let Some(key) = &key {
            self.remember_at(key.clone(), now);
        }
        Ok(key)
    }

    /// Caches `key` as read at `now`; a full cache first drops what is stale, then everything.
    fn remember_at(&self, key: StoredKey, now: Instant) {
        let mut cache = self.inner.cache.lock();
        if cache.len() >= MAX_CACHED_KEYS && !cache.contains_key(&key.id) {
            cache.retain(|_, cached| now.saturating_duration_since(cached.read_at) < AUTH_CACHE_TTL);
            if cache.len() >= MAX_CACHED_KEYS {
                cache.clear();
            }
        }
        cache.insert(key.id.clone(), Cached { key, read_at: now });
    }

    fn db(&self) -> Result<DatabaseConnection, ApiError> {
        match &self.inner.database {
            Database::Connected(db) => Ok(db.clone()),
            Database::Backends(backends) => backends.current().map(|backends| backends.db).ok_or_else(|| {
                ApiError::new(ErrorCode::Unavailable, "the gateway's database is not connected yet: retry shortly")
            }),
        }
    }

    /// 404 when the account does not exist, 403 unless `signer` owns it.
    async fn check_owner(&self, account_id: u128, signer: &[u8; 32]) -> Result<(), ApiError> {
        let request = lpb::LookupAccountsRequest { ids: vec![common::Uint128::from(account_id)] };
        let found = self.inner.ledger.client()?.lookup_accounts(request).await?.into_inner().accounts.pop();
        let account = found.ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("account {account_id} does not exist: create it with POST /v1/accounts first"),
            )
        })?;
        match account.owner {
            Some(lpb::account::Owner::PublicKey(owner)) if owner.as_slice() == signer.as_slice() => Ok(()),
            _ => Err(ApiError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "key {} does not own account {account_id}: sign with the account owner's key",
                    hex::encode(signer)
                ),
            )),
        }
    }

    /// Lets the owner (signed caller headers) or a holder of one of the account's keys read.
    async fn check_reader(&self, headers: &HeaderMap, account_id: u128) -> Result<(), ApiError> {
        if headers.contains_key(header::AUTHORIZATION) {
            let caller = self.authenticate(headers).await?;
            if caller.account_id != account_id {
                return Err(ApiError::new(
                    ErrorCode::PermissionDenied,
                    format!("API key {} acts for another account, not {account_id}", caller.key_id),
                ));
            }
            return Ok(());
        }
        let [key, at, signature] =
            openledger_signing::headers::CALLER.map(|name| headers.get(name).and_then(|value| value.to_str().ok()));
        let (Some(key), Some(at), Some(signature)) = (key, at, signature) else {
            return Err(ApiError::new(
                ErrorCode::Unauthenticated,
                format!(
                    "listing account {account_id}'s API keys needs one of them as `Authorization: Bearer`, or its \
                     owner's signed caller headers ({})",
                    openledger_signing::headers::CALLER.join(", ")
                ),
            ));
        };
        let signer = openledger_signing::verify_caller(key, at, signature, openledger_signing::now_unix())
            .map_err(|error| ApiError::new(ErrorCode::Unauthenticated, error.to_string()))?;
        self.check_owner(account_id, &signer).await
    }

    fn view(&self, key: &StoredKey) -> pb::ApiKey {
        let limits = key.limits.resolve(self.inner.defaults);
        let wire = |value: u64| u32::try_from(value).unwrap_or(u32::MAX);
        pb::ApiKey {
            id: key.id.clone(),
            account_id: openledger_proto::uint128(key.account_id),
            name: key.name.clone(),
            limits: Some(pb::ApiKeyLimits {
                requests_per_minute: wire(limits.requests_per_minute),
                tokens_per_minute: wire(limits.tokens_per_minute),
            }),
            created_at_ms: key.created_at_ms,
            revoked_at_ms: key.revoked_at_ms.unwrap_or(0),
        }
    }
}

/// The configured defaults.
pub fn default_limits(config: &Config) -> Limits {
    Limits {
        requests_per_minute: config.api_key_requests_per_minute,
        tokens_per_minute: config.api_key_tokens_per_minute,
    }
}

fn invalid_api_key(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthenticated, message).with_detail_code(INVALID_API_KEY)
}

/// The secret of an `Authorization: Bearer` header (the scheme in any case).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, secret) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| secret.trim()).filter(|secret| !secret.is_empty())
}

/// The signer, after checking the signature of `message` and the freshness of `signed_at`.
fn verify(signature: &common::Signature, message: &[u8], signed_at: i64) -> Result<[u8; 32], ApiError> {
    openledger_signing::verify_fresh(
        &signature.public_key,
        &signature.signature,
        message,
        signed_at,
        openledger_signing::now_unix(),
    )
    .map_err(|error| ApiError::new(error.code(), error.to_string()))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use axum::{http::HeaderValue, response::IntoResponse};

    use super::*;

    fn keys(defaults: Limits) -> Keys {
        let config = Config::default();
        let ledger = ServiceChannel::new(
            openledger_core::ServiceKind::Ledger,
            None,
            &config,
            openledger_runtime::Endpoints::default(),
        );
        Keys::build(Database::Connected(DatabaseConnection::Disconnected), ledger, defaults)
    }

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(authorization).expect("ascii"));
        headers
    }

    #[test]
    fn bearer_secrets_are_read_in_any_case_of_the_scheme() {
        assert_eq!(bearer(&headers("Bearer olk_a_b")), Some("olk_a_b"));
        assert_eq!(bearer(&headers("bearer   olk_a_b ")), Some("olk_a_b"));
        assert_eq!(bearer(&headers("Basic abc")), None);
        assert_eq!(bearer(&headers("Bearer ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn missing_and_malformed_keys_are_401_invalid_api_key_saying_how_to_get_one() {
        let keys = keys(Limits { requests_per_minute: 1, tokens_per_minute: 1 });
        for headers in [HeaderMap::new(), headers("Bearer sk-not-ours"), headers("Basic olk_a_b")] {
            let error = keys.authenticate(&headers).await.expect_err("refused");
            assert_eq!((error.code, error.detail_code), (ErrorCode::Unauthenticated, Some(INVALID_API_KEY)));
            assert!(error.message.contains("POST /v1/api_keys"), "{}", error.message);
        }
    }

    #[tokio::test]
    async fn a_key_revoked_by_another_replica_stops_working_here_within_the_cache_ttl() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("keys.db").display());
        let db = openledger_store::connect(&url).await.expect("connect");
        openledger_store::migrate(&db).await.expect("migrate");
        let mut keys = keys(Limits { requests_per_minute: 1, tokens_per_minute: 1 });
        Arc::get_mut(&mut keys.inner).expect("one handle").database = Database::Connected(db.clone());
        let id = Id::new().to_string();
        let secret = secret::generate(&id).expect("secret");
        let stored = StoredKey {
            id: id.clone(),
            account_id: 70_001,
            name: "replicated".into(),
            secret_hash: secret::hash(&secret),
            limits: Limits { requests_per_minute: 0, tokens_per_minute: 0 },
            created_at_ms: 1,
            revoked_at_ms: None,
        };
        store::insert(&db, &stored, [9; 32]).await.expect("stored");

        let read_at = Instant::now();
        let caller = keys.authenticate_secret_at(&secret, read_at).await.expect("valid");
        assert_eq!(caller, Caller { key_id: id.clone(), account_id: 70_001 });
        let last = if secret.ends_with('0') { '1' } else { '0' };
        let wrong = format!("{}{last}", &secret[..secret.len() - 1]);
        assert!(keys.authenticate_secret_at(&wrong, read_at).await.is_err(), "only the secret itself");
        // Another replica revokes it in the database: this one trusts its copy until the TTL.
        store::revoke(&db, &id, 2).await.expect("revoked");
        let almost = read_at + AUTH_CACHE_TTL - Duration::from_millis(1);
        assert!(keys.authenticate_secret_at(&secret, almost).await.is_ok());
        let error = keys.authenticate_secret_at(&secret, read_at + AUTH_CACHE_TTL).await.expect_err("revoked");
        assert_eq!(error.detail_code, Some(INVALID_API_KEY));
    }

    #[test]
    fn a_spent_key_is_429_rate_limited_with_retry_after() {
        let keys = keys(Limits { requests_per_minute: 2, tokens_per_minute: 100 });
        let caller = Caller { key_id: "k".into(), account_id: 70_001 };
        assert!(keys.admit_at(&caller, 10, 0).is_ok());
        assert!(keys.admit_at(&caller, 10, 0).is_ok());
        let error = keys.admit_at(&caller, 10, 0).expect_err("third request in the minute");
        assert_eq!(
            (error.code, error.detail_code, error.retry_after_seconds),
            (ErrorCode::ResourceExhausted, Some(RATE_LIMITED), Some(30))
        );
        let response = error.into_response();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("30"));

        let error = keys.admit_at(&caller, 101, 120_000_000_000).expect_err("more than a minute's tokens");
        assert_eq!((error.code, error.retry_after_seconds), (ErrorCode::ResourceExhausted, None));
        assert!(
            error.message.contains("101 tokens") && error.message.contains("100 tokens per minute"),
            "{}",
            error.message
        );
    }
}

/// Fixtures for other modules' route tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Keys on a fresh SQLite database in `dir` holding one key of `account_id`, and that key's
    /// secret (to send as `Authorization: Bearer`).
    pub(crate) async fn keys_with_one_key(dir: &std::path::Path, account_id: u128) -> (Keys, String) {
        let (keys, mut secrets) = keys_of_accounts(dir, &[account_id]).await;
        (keys, secrets.remove(0))
    }

    /// Keys on a fresh SQLite database in `dir` holding one key of each account, and their
    /// secrets in the same order.
    pub(crate) async fn keys_of_accounts(dir: &std::path::Path, account_ids: &[u128]) -> (Keys, Vec<String>) {
        let url = format!("sqlite://{}?mode=rwc", dir.join("keys.db").display());
        let db = openledger_store::connect(&url).await.expect("connect");
        openledger_store::migrate(&db).await.expect("migrate");
        let ledger = ServiceChannel::new(
            openledger_core::ServiceKind::Ledger,
            None,
            &Config::default(),
            openledger_runtime::Endpoints::default(),
        );
        let keys =
            Keys::with_database(db.clone(), ledger, Limits { requests_per_minute: 60, tokens_per_minute: 1_000 });
        let mut secrets = Vec::with_capacity(account_ids.len());
        for (digest, &account_id) in (7u8..).zip(account_ids) {
            let id = Id::new().to_string();
            let secret = secret::generate(&id).expect("secret");
            let stored = StoredKey {
                id,
                account_id,
                name: "test".into(),
                secret_hash: secret::hash(&secret),
                limits: Limits { requests_per_minute: 0, tokens_per_minute: 0 },
                created_at_ms: 1,
                revoked_at_ms: None,
            };
            // Each key's request digest differs, as each signed request's does.
            store::insert(&db, &stored, [digest; 32]).await.expect("stored");
            secrets.push(secret);
        }
        (keys, secrets)
    }
}
