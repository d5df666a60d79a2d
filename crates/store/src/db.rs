//! Database connections from a URL, and the migrations every process applies at start.

use std::time::Duration;

use openledger_migrations::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseBackend, DatabaseConnection};

use crate::StoreError;

/// Most pooled connections per process.
pub const MAX_CONNECTIONS: u32 = 16;
/// Advisory lock key that serializes migrations across replicas on PostgreSQL.
const MIGRATION_LOCK_KEY: i64 = 0x6f70_656e_6c65_6467; // "openledg"

/// Connects to `url` (`sqlite://path?mode=rwc` or `postgres://…`). For SQLite, the parent
/// directory is created and the database runs in WAL mode with a busy timeout.
pub async fn connect(url: &str) -> Result<DatabaseConnection, StoreError> {
    let connect_error = |reason: String| StoreError::Connect { url: redact(url), reason };
    let is_sqlite = url.starts_with("sqlite:");
    if is_sqlite
        && let Some(path) = sqlite_path(url)
        && let Some(parent) = std::path::Path::new(&path).parent().filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(|error| connect_error(format!("{}: {error}", parent.display())))?;
    }
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(if is_sqlite { 4 } else { MAX_CONNECTIONS })
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(3))
        .sqlx_logging(false);
    let db = Database::connect(options).await.map_err(|error| connect_error(error.to_string()))?;
    if is_sqlite {
        for pragma in ["PRAGMA journal_mode=WAL", "PRAGMA busy_timeout=5000", "PRAGMA synchronous=NORMAL"] {
            db.execute_unprepared(pragma).await?;
        }
    }
    Ok(db)
}

/// Applies pending migrations; on PostgreSQL, replicas take turns under an advisory lock.
///
/// The lock belongs to a database session, so it is taken and given back on one connection
/// set apart from the pool for the purpose, and that connection is closed afterwards (which
/// frees the lock even if the unlock failed). Taken through the pool, the unlock could run on
/// another session and leave the lock held by an idle pooled connection: the next `migrate`
/// (another replica, or this process again) would then wait for it forever.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), StoreError> {
    if db.get_database_backend() != DatabaseBackend::Postgres {
        return apply_pending(db).await;
    }
    let lock_error = |error: sea_orm::sqlx::Error| StoreError::Migration(format!("the migration lock: {error}"));
    let mut session = db.get_postgres_connection_pool().acquire().await.map_err(lock_error)?.detach();
    sea_orm::sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut session)
        .await
        .map_err(lock_error)?;
    let applied = apply_pending(db).await;
    let unlocked =
        sea_orm::sqlx::query("SELECT pg_advisory_unlock($1)").bind(MIGRATION_LOCK_KEY).execute(&mut session).await;
    // Closing the session releases its locks whatever the unlock answered.
    let closed = sea_orm::sqlx::Connection::close(session).await;
    applied?;
    unlocked.map_err(lock_error)?;
    closed.map_err(lock_error)
}

/// Applies the pending migrations, each logged at debug (a start shows only the summary).
async fn apply_pending(db: &DatabaseConnection) -> Result<(), StoreError> {
    let pending: Vec<String> =
        Migrator::get_pending_migrations(db).await?.iter().map(|migration| migration.name().to_owned()).collect();
    Migrator::up(db, None).await.map_err(|error| StoreError::Migration(error.to_string()))?;
    for migration in &pending {
        tracing::debug!(migration, "migration applied");
    }
    Ok(())
}

/// How many migrations are not applied yet (readiness requires zero).
pub async fn pending_migrations(db: &DatabaseConnection) -> Result<usize, StoreError> {
    Ok(Migrator::get_pending_migrations(db).await?.len())
}

/// A round trip to the database.
pub async fn ping(db: &DatabaseConnection) -> Result<(), StoreError> {
    Ok(db.ping().await?)
}

fn sqlite_path(url: &str) -> Option<String> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then(|| path.to_owned())
}

use openledger_core::redact_url as redact;

/// An error that may be SQLite refusing a write because another connection holds the lock.
pub trait MaybeBusy {
    fn is_busy(&self) -> bool;
}

impl MaybeBusy for sea_orm::DbErr {
    fn is_busy(&self) -> bool {
        let text = self.to_string();
        text.contains("database is locked") || text.contains("(code: 5)") || text.contains("(code: 517)")
    }
}

/// Most attempts at a write that SQLite refuses as busy.
const BUSY_ATTEMPTS: u32 = 30;

/// Runs a write transaction again while SQLite refuses it as busy. A deferred transaction that
/// read and then writes after another connection committed fails at once
/// (`SQLITE_BUSY_SNAPSHOT`, "database is locked") instead of waiting; it was rolled back, so a
/// deterministic `attempt` can simply run again. Other errors, and success, return at once.
pub async fn retry_when_busy<T, E, F, Fut>(mut attempt: F) -> Result<T, E>
where
    E: MaybeBusy,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut pause = Duration::from_millis(2);
    for attempt_number in 1.. {
        match attempt().await {
            Err(error) if attempt_number < BUSY_ATTEMPTS && error.is_busy() => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            outcome => return outcome,
        }
    }
    unreachable!("the loop returns")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths_are_read_from_urls() {
        assert_eq!(sqlite_path("sqlite://.openledger/a.db?mode=rwc").as_deref(), Some(".openledger/a.db"));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
    }
}
