//! Storage on both backends: the same migrations on SQLite and PostgreSQL, the outbox
//! committing with (and only with) its transaction, relaying in order, and the inbox.

use std::{sync::Arc, time::Duration};

use openledger_bus::{ConsumerConfig, EventBus, InProcessBus};
use openledger_store::{NewEvent, OutboxRelay, connect, inbox, migrate, outbox, pending_migrations};
use openledger_testkit::Postgres;
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};

async fn sqlite() -> (DatabaseConnection, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/nested/openledger.db?mode=rwc", dir.path().display());
    (connect(&url).await.expect("connect sqlite"), dir)
}

async fn postgres(server: &Postgres) -> DatabaseConnection {
    connect(&server.create_database("store_test")).await.expect("connect postgres")
}

async fn migrations_apply_once_and_are_idempotent(db: &DatabaseConnection) {
    assert!(pending_migrations(db).await.expect("list") > 0, "a fresh database has pending migrations");
    migrate(db).await.expect("migrate");
    migrate(db).await.expect("migrating again is a no-op");
    assert_eq!(pending_migrations(db).await.expect("list"), 0);
}

async fn outbox_commits_only_with_its_transaction(db: &DatabaseConnection) {
    migrate(db).await.expect("migrate");
    db.execute_unprepared("CREATE TABLE widgets (name VARCHAR(64) PRIMARY KEY)").await.expect("state table");

    let committed = db.begin().await.expect("begin");
    committed.execute_unprepared("INSERT INTO widgets (name) VALUES ('kept')").await.expect("state");
    let kept_id = outbox::enqueue(&committed, "widgets", NewEvent::new("ol.widget.created", b"kept".to_vec()))
        .await
        .expect("enqueue");
    committed.commit().await.expect("commit");

    let rolled_back = db.begin().await.expect("begin");
    rolled_back.execute_unprepared("INSERT INTO widgets (name) VALUES ('lost')").await.expect("state");
    outbox::enqueue(&rolled_back, "widgets", NewEvent::new("ol.widget.created", b"lost".to_vec()))
        .await
        .expect("enqueue");
    rolled_back.rollback().await.expect("rollback");

    let second_id =
        outbox::enqueue(db, "widgets", NewEvent::new("ol.widget.created", b"second".to_vec())).await.expect("enqueue");
    outbox::enqueue(db, "other-service", NewEvent::new("ol.other.thing", b"not mine".to_vec())).await.expect("enqueue");

    let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::new(Default::default()));
    let relay = OutboxRelay::new(db.clone(), bus.clone(), "widgets");
    assert_eq!(relay.unsent().await.expect("count"), 2);
    assert_eq!(relay.relay_once().await.expect("relay"), 2);
    assert_eq!(relay.unsent().await.expect("count"), 0);
    assert_eq!(relay.relay_once().await.expect("relay"), 0, "sent rows are not sent again");

    let mut consumer = bus.consumer(ConsumerConfig::new("widget-reader", "ol.>")).await.expect("consumer");
    for (expected_id, payload) in [(kept_id, &b"kept"[..]), (second_id, &b"second"[..])] {
        let delivery =
            tokio::time::timeout(Duration::from_secs(5), consumer.next()).await.expect("in time").expect("delivery");
        assert_eq!(delivery.id, expected_id, "message id is the outbox event id");
        assert_eq!(&delivery.payload[..], payload);
        delivery.ack().await.expect("ack");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), consumer.next()).await.is_err(),
        "the rolled-back event never leaves"
    );

    assert!(
        outbox::enqueue(db, "widgets", NewEvent::new("ol.*", Vec::new())).await.is_err(),
        "wildcard subjects are refused"
    );

    // Many events in one call: more rows than one statement takes, relayed in order.
    let many: Vec<NewEvent> =
        (0..outbox::INSERT_ROWS + 7).map(|i| NewEvent::new("ol.widget.counted", i.to_string().into_bytes())).collect();
    let ids = outbox::enqueue_all(db, "widgets", many).await.expect("enqueue all");
    assert_eq!(ids.iter().collect::<std::collections::BTreeSet<_>>().len(), outbox::INSERT_ROWS + 7, "distinct ids");
    let mut relayed = 0;
    while relay.unsent().await.expect("count") > 0 {
        relayed += relay.relay_once().await.expect("relay");
    }
    assert_eq!(relayed, outbox::INSERT_ROWS + 7);
    for (i, expected_id) in ids.iter().enumerate() {
        let delivery =
            tokio::time::timeout(Duration::from_secs(5), consumer.next()).await.expect("in time").expect("delivery");
        assert_eq!((&delivery.id, &delivery.payload[..]), (expected_id, i.to_string().as_bytes()));
        delivery.ack().await.expect("ack");
    }
    let bad = vec![NewEvent::new("ol.widget.fine", Vec::new()), NewEvent::new("ol.*", Vec::new())];
    assert!(outbox::enqueue_all(db, "widgets", bad).await.is_err(), "one bad event refuses the call");
}

async fn inbox_recognises_repeats(db: &DatabaseConnection) {
    migrate(db).await.expect("migrate");
    assert!(inbox::first_delivery(db, "ledger-settler", "event-1").await.expect("record"));
    assert!(!inbox::first_delivery(db, "ledger-settler", "event-1").await.expect("record"));
    assert!(inbox::first_delivery(db, "another-consumer", "event-1").await.expect("record"));
    let txn = db.begin().await.expect("begin");
    assert!(inbox::first_delivery(&txn, "ledger-settler", "event-2").await.expect("record"));
    txn.rollback().await.expect("rollback");
    assert!(
        inbox::first_delivery(db, "ledger-settler", "event-2").await.expect("record"),
        "a rolled-back record does not count"
    );
}

#[tokio::test]
async fn sqlite_migrations() {
    migrations_apply_once_and_are_idempotent(&sqlite().await.0).await;
}

#[tokio::test]
async fn postgres_migrations() {
    let server = Postgres::start();
    migrations_apply_once_and_are_idempotent(&postgres(&server).await).await;
}

/// The migration lock is a session's: it must be given back on the session that took it, or
/// an idle pooled connection keeps it and the next `migrate` waits forever (seen in CI).
#[tokio::test]
async fn postgres_migrations_leave_no_lock_behind_for_the_next_process() {
    let server = Postgres::start();
    let db = postgres(&server).await;
    // Warm the pool, so the lock and the migrations could land on different sessions.
    let nap = "SELECT pg_sleep(0.05)";
    let warm = tokio::join!(
        db.execute_unprepared(nap),
        db.execute_unprepared(nap),
        db.execute_unprepared(nap),
        db.execute_unprepared(nap)
    );
    for done in [warm.0, warm.1, warm.2, warm.3] {
        done.expect("warm the pool");
    }
    migrate(&db).await.expect("migrate");
    let held = db
        .query_one(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT count(*)::BIGINT AS held FROM pg_locks WHERE locktype = 'advisory'",
        ))
        .await
        .expect("pg_locks")
        .expect("a row")
        .try_get::<i64>("", "held")
        .expect("count");
    assert_eq!(held, 0, "an advisory lock outlived the migration");
    // Another process (a replica starting) migrates without waiting.
    let other = connect(&server.database_url("store_test")).await.expect("connect again");
    tokio::time::timeout(Duration::from_secs(30), migrate(&other))
        .await
        .expect("a second process's migrate waited for a lock nobody gives back")
        .expect("migrate again");
}

#[tokio::test]
async fn sqlite_outbox() {
    outbox_commits_only_with_its_transaction(&sqlite().await.0).await;
}

#[tokio::test]
async fn postgres_outbox() {
    let server = Postgres::start();
    outbox_commits_only_with_its_transaction(&postgres(&server).await).await;
}

#[tokio::test]
async fn sqlite_inbox() {
    inbox_recognises_repeats(&sqlite().await.0).await;
}

#[tokio::test]
async fn postgres_inbox() {
    let server = Postgres::start();
    inbox_recognises_repeats(&postgres(&server).await).await;
}

#[tokio::test]
async fn unreachable_databases_fail_with_the_url_and_without_the_password() {
    let port = openledger_testkit::free_port();
    let error =
        connect(&format!("postgres://app:hunter2@127.0.0.1:{port}/x")).await.expect_err("nothing listens there");
    let text = error.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn s3_compatible_object_stores_store_and_read_objects() {
    use object_store::{ObjectStore, PutPayload, path::Path};

    let server = openledger_testkit::S3::start("openledger-objects");
    let options = server.options();
    let options: Vec<(&str, &str)> = options.iter().map(|(key, value)| (*key, value.as_str())).collect();
    let store =
        openledger_store::open_object_store_with(&format!("{}/prefix", server.url()), &options).expect("open s3");
    openledger_store::check_object_store(store.as_ref()).await.expect("reachable");
    let key = Path::from("datanets/d1/records/abc");
    store.put(&key, PutPayload::from_static(b"record body")).await.expect("put");
    let read = store.get(&key).await.expect("get").bytes().await.expect("bytes");
    assert_eq!(&read[..], b"record body");
    assert!(openledger_store::open_object_store_with(&server.url(), &[("no_such_option", "x")]).is_err());
}
