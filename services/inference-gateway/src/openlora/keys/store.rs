//! The `gateway_api_keys` table (migration `m20261205_000007_gateway`): one row per key, the
//! account as 16 big-endian bytes, the secret only as its hash, limits as asked for (0: the
//! gateway's default), and the digest of the signed request that made the key, unique, so a
//! replayed request cannot make a second key. Reads decode strictly: a row that does not
//! decode is an error, never a default.

use openledger_core::ErrorCode;
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    sea_query::Expr,
};

use super::{limiter::Limits, secret::HASH_BYTES};
use crate::edge::ApiError;

pub mod api_key {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "gateway_api_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// The ledger account, 16 bytes big-endian.
        pub account_id: Vec<u8>,
        pub name: String,
        /// BLAKE3 of the secret.
        pub secret_hash: Vec<u8>,
        /// 0: the gateway's default.
        pub requests_per_minute: i64,
        pub tokens_per_minute: i64,
        pub created_at_ms: i64,
        pub revoked_at_ms: Option<i64>,
        /// BLAKE3 of the signature that asked for the key.
        pub request_digest: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A stored key, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    pub id: String,
    pub account_id: u128,
    pub name: String,
    pub secret_hash: [u8; HASH_BYTES],
    /// As asked for (0: the default), before resolving against the gateway's defaults.
    pub limits: Limits,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

impl TryFrom<api_key::Model> for StoredKey {
    type Error = ApiError;

    fn try_from(row: api_key::Model) -> Result<Self, ApiError> {
        let corrupt =
            |what: &str| ApiError::new(ErrorCode::Internal, format!("API key {}: stored {what} is corrupt", row.id));
        let account: [u8; 16] = row.account_id.as_slice().try_into().map_err(|_| corrupt("account id"))?;
        let secret_hash: [u8; HASH_BYTES] =
            row.secret_hash.as_slice().try_into().map_err(|_| corrupt("secret hash"))?;
        let limit = |value: i64| u64::try_from(value).map_err(|_| corrupt("limit"));
        let limits = Limits {
            requests_per_minute: limit(row.requests_per_minute)?,
            tokens_per_minute: limit(row.tokens_per_minute)?,
        };
        Ok(Self {
            account_id: u128::from_be_bytes(account),
            secret_hash,
            limits,
            created_at_ms: row.created_at_ms,
            revoked_at_ms: row.revoked_at_ms,
            name: row.name,
            id: row.id,
        })
    }
}

fn database(error: DbErr) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, format!("API key store: {error}; retry shortly"))
}

fn stored_limit(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Stores a new key; `AlreadyExists` when its signed request already made one.
pub async fn insert(db: &DatabaseConnection, key: &StoredKey, request_digest: [u8; 32]) -> Result<(), ApiError> {
    let digest_taken = api_key::Entity::find()
        .filter(api_key::Column::RequestDigest.eq(request_digest.to_vec()))
        .one(db)
        .await
        .map_err(database)?;
    let replayed = || {
        ApiError::new(
            ErrorCode::AlreadyExists,
            "this signed request already made a key: sign a new request to make another",
        )
    };
    if digest_taken.is_some() {
        return Err(replayed());
    }
    let row = api_key::ActiveModel {
        id: Set(key.id.clone()),
        account_id: Set(key.account_id.to_be_bytes().to_vec()),
        name: Set(key.name.clone()),
        secret_hash: Set(key.secret_hash.to_vec()),
        requests_per_minute: Set(stored_limit(key.limits.requests_per_minute)),
        tokens_per_minute: Set(stored_limit(key.limits.tokens_per_minute)),
        created_at_ms: Set(key.created_at_ms),
        revoked_at_ms: Set(key.revoked_at_ms),
        request_digest: Set(request_digest.to_vec()),
    };
    match api_key::Entity::insert(row).exec_without_returning(db).await {
        Ok(_) => Ok(()),
        // Two copies of one request racing: the unique digest lets one through.
        Err(error) if error.to_string().to_lowercase().contains("unique") => Err(replayed()),
        Err(error) => Err(database(error)),
    }
}

/// The key with `id`, revoked or not.
pub async fn find(db: &DatabaseConnection, id: &str) -> Result<Option<StoredKey>, ApiError> {
    api_key::Entity::find_by_id(id.to_owned()).one(db).await.map_err(database)?.map(StoredKey::try_from).transpose()
}

/// Keys of `account` not revoked.
pub async fn count_active(db: &DatabaseConnection, account: u128) -> Result<u64, ApiError> {
    api_key::Entity::find()
        .filter(api_key::Column::AccountId.eq(account.to_be_bytes().to_vec()))
        .filter(api_key::Column::RevokedAtMs.is_null())
        .count(db)
        .await
        .map_err(database)
}

/// Up to `limit` keys of `account` with ids after `after`, in id order (ids are UUIDv7, so
/// that is creation order).
pub async fn list(
    db: &DatabaseConnection,
    account: u128,
    after: Option<&str>,
    limit: u64,
) -> Result<Vec<StoredKey>, ApiError> {
    let mut query = api_key::Entity::find().filter(api_key::Column::AccountId.eq(account.to_be_bytes().to_vec()));
    if let Some(after) = after {
        query = query.filter(api_key::Column::Id.gt(after.to_owned()));
    }
    let rows = query.order_by_asc(api_key::Column::Id).limit(limit).all(db).await.map_err(database)?;
    rows.into_iter().map(StoredKey::try_from).collect()
}

/// Marks `id` revoked at `at_ms` unless it already is; the key as stored afterwards.
pub async fn revoke(db: &DatabaseConnection, id: &str, at_ms: i64) -> Result<Option<StoredKey>, ApiError> {
    api_key::Entity::update_many()
        .col_expr(api_key::Column::RevokedAtMs, Expr::value(at_ms))
        .filter(api_key::Column::Id.eq(id.to_owned()))
        .filter(api_key::Column::RevokedAtMs.is_null())
        .exec(db)
        .await
        .map_err(database)?;
    find(db, id).await
}
