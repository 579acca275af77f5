//! Claims under concurrency, fences, and the server's clock.

use std::time::Duration;

use idempotency_core::{
    Claim, Clock, Fence, IdempotencyRecord, Lease, RawValue, RecordId, ReservationStore,
};
use idempotency_testkit::{record_id, unique_key};

use crate::common::{executed, expire, fixture, logged_connection, row_of};

const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(600);

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned()).expect("JSON")
}

/// Claims `id` from `n` tasks at once (each its own lease and pool connection); returns
/// the leases that acquired and the records the others found.
async fn claim_from_many(
    store: &idempotency_postgres::PostgresStore,
    id: &RecordId,
    n: usize,
) -> (Vec<Lease>, Vec<IdempotencyRecord>) {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let store = store.clone();
            let lease = Lease::new(id.clone(), None, Clock::system());
            let barrier = std::sync::Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                let claim = store.claim(&lease, LEASE).await.expect("claim");
                (lease, claim)
            })
        })
        .collect();
    let mut owners = Vec::new();
    let mut found = Vec::new();
    for task in tasks {
        match task.await.expect("join") {
            (lease, Claim::Acquired) => owners.push(lease),
            (_, Claim::Found(record)) => found.push(record),
        }
    }
    (owners, found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_claims_of_a_free_key_get_exactly_one_owner() {
    let f = fixture().await;
    for round in 0..5 {
        let id = record_id("claims.free", &unique_key(&format!("round{round}")));
        let (owners, found) = claim_from_many(&f.store, &id, 64).await;
        assert_eq!(owners.len(), 1, "exactly one owner");
        for record in found {
            assert!(record.is_pending());
            assert_eq!(record.owner(), Some(owners[0].token()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_of_an_expired_reservation_take_it_over_exactly_once() {
    let f = fixture().await;
    for round in 0..5 {
        let id = record_id("claims.expired", &unique_key(&format!("round{round}")));
        let stale = Lease::new(id.clone(), None, Clock::system());
        assert_eq!(
            f.store.claim(&stale, LEASE).await.expect("claim"),
            Claim::Acquired
        );
        let (_, old_fence, _) = row_of(&f.pool, id.operation(), id.key())
            .await
            .expect("row");
        expire(&f.pool, id.operation(), id.key()).await;
        let (owners, found) = claim_from_many(&f.store, &id, 64).await;
        assert_eq!(
            owners.len(),
            1,
            "exactly one takes the expired reservation over"
        );
        assert!(found.iter().all(|r| r.owner() == Some(owners[0].token())));
        let (_, new_fence, _) = row_of(&f.pool, id.operation(), id.key())
            .await
            .expect("row");
        assert!(new_fence > old_fence, "the new owner's fence is higher");
        // The stale owner can neither finish, renew nor release over the new one.
        assert_eq!(
            f.store
                .complete(&stale, &raw("1"), TTL)
                .await
                .expect("complete"),
            Fence::Lost
        );
        assert_eq!(
            f.store.renew(&stale, LEASE).await.expect("renew"),
            Fence::Lost
        );
        assert_eq!(f.store.release(&stale).await.expect("release"), Fence::Lost);
        assert_eq!(
            f.store
                .complete(&owners[0], &raw("2"), TTL)
                .await
                .expect("complete"),
            Fence::Held
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_on_a_finished_key_under_concurrency_always_finds_the_record() {
    let f = fixture().await;
    // Claims race a completion: each must answer from the live row (acquired or found),
    // never from nothing; the claim statement runs again when its snapshot missed a row.
    let id = record_id("claims.race", &unique_key("race"));
    let (owners, _) = claim_from_many(&f.store, &id, 16).await;
    assert_eq!(owners.len(), 1);
    let owner = owners[0].clone();
    let store = f.store.clone();
    let completion = tokio::spawn(async move { store.complete(&owner, &raw("7"), TTL).await });
    let (late_owners, found) = claim_from_many(&f.store, &id, 32).await;
    assert!(late_owners.is_empty());
    assert_eq!(found.len(), 32);
    assert_eq!(
        completion.await.expect("join").expect("complete"),
        Fence::Held
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_skewed_client_clock_stamps_nothing_and_decides_nothing() {
    let f = fixture().await;
    let id = record_id("claims.skew", &unique_key("skew"));
    // A client two hours ahead claims a 2 s lease: the row lives 2 s of server time.
    let ahead = Lease::new(
        id.clone(),
        None,
        Clock::with_offset(time::Duration::hours(2)),
    );
    assert_eq!(
        f.store
            .claim(&ahead, Duration::from_secs(2))
            .await
            .expect("claim"),
        Claim::Acquired
    );
    let (text, server_side): (String, bool) = sqlx::query_as(
        "SELECT record,
                position(idempotency_record_time(created_at) IN record) > 0
                AND position(idempotency_record_time(expires_at) IN record) > 0
                AND abs(extract(epoch FROM created_at - statement_timestamp())) < 5
                AND abs(extract(epoch FROM expires_at - created_at) - 2) < 0.01
         FROM idempotency_records WHERE idempotency_key = $1",
    )
    .bind(id.key())
    .fetch_one(&f.pool)
    .await
    .expect("row");
    assert!(
        server_side,
        "the record is stamped with the server's time: {text}"
    );
    // A client two hours behind still finds it alive.
    let behind = Lease::new(
        id.clone(),
        None,
        Clock::with_offset(time::Duration::hours(-2)),
    );
    assert!(matches!(
        f.store.claim(&behind, Duration::from_secs(2)).await.expect("claim"),
        Claim::Found(r) if r.owner() == Some(ahead.token())
    ));
    // Two seconds of server time later the lease is over, whatever either client says.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(
        f.store
            .claim(&behind, Duration::from_secs(2))
            .await
            .expect("claim"),
        Claim::Acquired
    );
    assert_eq!(
        f.store.renew(&ahead, LEASE).await.expect("renew"),
        Fence::Lost
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stored_text_is_the_record_encoders_and_fences_grow_per_owner() {
    let f = fixture().await;
    let id = record_id("claims.text", &unique_key("text"));
    let first = Lease::new(id.clone(), Some("fp-1"), Clock::system());
    assert_eq!(
        f.store.claim(&first, LEASE).await.expect("claim"),
        Claim::Acquired
    );
    let (status, fence1, text) = row_of(&f.pool, id.operation(), id.key())
        .await
        .expect("row");
    assert_eq!(status, "pending");
    let record =
        IdempotencyRecord::from_json(text.as_bytes(), id.operation(), id.key()).expect("decode");
    assert_eq!(
        record.to_json(),
        text,
        "byte for byte what the encoder writes"
    );
    assert_eq!(record.owner(), Some(first.token()));
    assert_eq!(record.fingerprint(), Some("fp-1"));
    // Renewing keeps the owner and fence; the text is re-stamped.
    assert_eq!(
        f.store.renew(&first, LEASE).await.expect("renew"),
        Fence::Held
    );
    let (_, fence_renewed, text) = row_of(&f.pool, id.operation(), id.key())
        .await
        .expect("row");
    assert_eq!(fence_renewed, fence1);
    let renewed =
        IdempotencyRecord::from_json(text.as_bytes(), id.operation(), id.key()).expect("decode");
    assert_eq!(renewed.to_json(), text);
    assert_eq!(renewed.created_at(), record.created_at());
    assert_eq!(f.store.release(&first).await.expect("release"), Fence::Held);
    let second = Lease::new(id.clone(), Some("fp-1"), Clock::system());
    assert_eq!(
        f.store.claim(&second, LEASE).await.expect("claim"),
        Claim::Acquired
    );
    let (_, fence2, _) = row_of(&f.pool, id.operation(), id.key())
        .await
        .expect("row");
    assert!(fence2 > fence1, "a new owner draws a higher fence");
    let error = raw(r#"{"code":"declined"}"#);
    assert_eq!(
        f.store
            .complete_with_error(&second, &error, TTL)
            .await
            .expect("store"),
        Fence::Held
    );
    let (status, fence_done, text) = row_of(&f.pool, id.operation(), id.key())
        .await
        .expect("row");
    assert_eq!(status, "stored_error");
    assert_eq!(fence_done, fence2, "completion keeps the owner's fence");
    let done =
        IdempotencyRecord::from_json(text.as_bytes(), id.operation(), id.key()).expect("decode");
    assert_eq!(done.to_json(), text);
    assert!(done.is_stored_error() && done.owner().is_none());
    // A completion sent again (a lost reply) finds its own record: success.
    assert_eq!(
        f.store
            .complete_with_error(&second, &error, TTL)
            .await
            .expect("resend"),
        Fence::Held
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_is_one_statement() {
    let f = fixture().await;
    // Counted in the server's log: every statement a connection of our own executes.
    let (pool, pid) = logged_connection(&f).await;
    let store = idempotency_postgres::PostgresStore::new(pool);
    let warm = Lease::new(
        record_id("claims.count", &unique_key("warm")),
        None,
        Clock::system(),
    );
    store.claim(&warm, LEASE).await.expect("warm up");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = executed(&f, pid).len();
    let id = record_id("claims.count", &unique_key("count"));
    let lease = Lease::new(id.clone(), None, Clock::system());
    assert_eq!(
        store.claim(&lease, LEASE).await.expect("claim"),
        Claim::Acquired
    );
    let other = Lease::new(id, None, Clock::system());
    assert!(matches!(
        store.claim(&other, LEASE).await.expect("claim"),
        Claim::Found(_)
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        executed(&f, pid).len() - before,
        2,
        "one statement per claim, acquired or found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreadable_reservation_is_taken_over_and_an_unreadable_result_never() {
    let f = fixture().await;
    let plant = |key: String, status: &'static str| {
        let pool = f.pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO idempotency_records VALUES ('idempotency:', 'claims.unreadable', $1,
                 $2, NULL, 'someone', 1, '{\"cut short', statement_timestamp(),
                 statement_timestamp() + interval '1 hour', NULL)",
            )
            .bind(key)
            .bind(status)
            .execute(&pool)
            .await
            .expect("plant a row");
        }
    };
    let pending = record_id("claims.unreadable", &unique_key("pending"));
    plant(pending.key().to_owned(), "pending").await;
    let (owners, found) = claim_from_many(&f.store, &pending, 16).await;
    assert_eq!(owners.len(), 1, "taken over by exactly one");
    assert!(found.iter().all(|r| r.owner() == Some(owners[0].token())));
    let finished = record_id("claims.unreadable", &unique_key("finished"));
    plant(finished.key().to_owned(), "completed").await;
    let lease = Lease::new(finished.clone(), None, Clock::system());
    let refused = f.store.claim(&lease, LEASE).await;
    assert!(
        matches!(
            refused,
            Err(idempotency_core::IdempotencyError::CorruptedRecord { .. })
        ),
        "{refused:?}"
    );
    let (status, _, text) = row_of(&f.pool, finished.operation(), finished.key())
        .await
        .expect("row");
    assert_eq!(
        (status.as_str(), text.as_str()),
        ("completed", "{\"cut short"),
        "left alone"
    );
}
