//! The store contract every reservation store keeps.

use crate::common::fixture;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_contract_holds() {
    let f = fixture().await;
    idempotency_contract::repository::all(&f.store).await;
    idempotency_contract::bulk::all(&f.store).await;
    idempotency_contract::reservation::all(&f.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_contract_holds_with_unnamed_statements_and_a_listener_of_its_own() {
    // What a deployment behind a transaction-pooling PgBouncer configures.
    let f = fixture().await;
    let config = idempotency_postgres::StoreConfig::new()
        .with_key_prefix("bouncer:")
        .expect("prefix")
        .with_statements(idempotency_postgres::Statements::Unnamed)
        .with_listener(idempotency_postgres::ListenerSource::Url(f.db.url()));
    let store = idempotency_postgres::PostgresStore::with_config(f.pool.clone(), config);
    idempotency_contract::repository::all(&store).await;
    idempotency_contract::bulk::all(&store).await;
    idempotency_contract::reservation::all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unnamed_statements_are_never_prepared_by_name() {
    let f = fixture().await;
    let (pool, pid) = crate::common::logged_connection(&f).await;
    let config = idempotency_postgres::StoreConfig::new()
        .with_statements(idempotency_postgres::Statements::Unnamed);
    let store = idempotency_postgres::PostgresStore::with_config(pool, config);
    let lease = idempotency_core::Lease::new(
        idempotency_testkit::record_id("contract.unnamed", &idempotency_testkit::unique_key("u")),
        None,
        idempotency_core::Clock::system(),
    );
    let long = std::time::Duration::from_secs(30);
    idempotency_core::ReservationStore::claim(&store, &lease, long)
        .await
        .expect("claim");
    idempotency_core::ReservationStore::renew(&store, &lease, long)
        .await
        .expect("renew");
    idempotency_core::ReservationStore::release(&store, &lease)
        .await
        .expect("release");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let executed = crate::common::executed(&f, pid);
    let ours: Vec<&String> = executed
        .iter()
        .filter(|l| !l.contains("pg_backend_pid"))
        .collect();
    assert_eq!(ours.len(), 3, "{executed:#?}");
    assert!(
        ours.iter().all(|l| l.starts_with("execute <unnamed>")),
        "{ours:#?}"
    );
}
