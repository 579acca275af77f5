//! The reservation contract (protocol v2): what every [`ReservationStore`] keeps. Each
//! function checks one rule and panics when it is broken; [`all`] runs them in turn.
//! (The unfenced fallback keeps only part of it; its tests name the checks it runs.)

use std::time::Duration;

use idempotency_core::{
    Claim, Clock, Fence, IdempotencyRecord, KeyWatch, Lease, RawValue, RecordId, ReservationStore,
};

use crate::fresh_id;
use crate::join::futures_join;

const LONG: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(600);

fn fresh(op: &str) -> RecordId {
    fresh_id(op)
}

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned()).expect("JSON")
}

/// Every contract check, in turn.
pub async fn all<S: ReservationStore>(store: &S) {
    concurrent_claims_get_exactly_one_owner(store).await;
    a_repeated_claim_is_acquired_by_its_own_lease(store).await;
    a_claim_on_a_completed_key_returns_the_record(store).await;
    a_stale_owner_cannot_complete_renew_or_release_over_a_newer_one(store).await;
    the_owner_check_ignores_look_alike_text_in_the_result(store).await;
    a_completed_record_is_final_even_for_its_own_lease(store).await;
    complete_writes_into_an_empty_key(store).await;
    client_clocks_never_decide_liveness(store).await;
    a_waiter_is_woken_by_completion_and_by_release(store).await;
    every_storable_result_reads_back_as_a_record(store).await;
    fencing_tokens_grow_with_every_new_owner(store).await;
    a_stored_error_is_found_as_a_stored_error(store).await;
    an_expired_reservation_is_taken_and_its_stale_owner_fenced_out(store).await;
}

/// `complete_with_error` writes a finished record of status `stored_error` (replayed to
/// retries as the error), under the same fence as `complete`.
pub async fn a_stored_error_is_found_as_a_stored_error<S: ReservationStore>(store: &S) {
    let id = fresh("contract.stored-error");
    let lease = Lease::new(id.clone(), Some("fp"), Clock::system());
    assert_eq!(
        store.claim(&lease, LONG).await.expect("claim"),
        Claim::Acquired
    );
    let error = raw(r#"{"code":"card_declined"}"#);
    assert_eq!(
        store
            .complete_with_error(&lease, &error, TTL)
            .await
            .expect("complete_with_error"),
        Fence::Held
    );
    let next = Lease::new(id, Some("fp"), Clock::system());
    let Claim::Found(record) = store.claim(&next, LONG).await.expect("claim") else {
        panic!("a stored error is a finished record: the next claim finds it");
    };
    assert!(record.is_stored_error(), "{record:?}");
    assert!(crate::json_eq::same_value(
        record.result().get(),
        error.get()
    ));
    assert_eq!(record.fingerprint(), Some("fp"));
}

/// A reservation whose lease ran out on the store is taken by the next claim, and its
/// stale owner can then neither complete, renew nor release over the new owner.
pub async fn an_expired_reservation_is_taken_and_its_stale_owner_fenced_out<S: ReservationStore>(
    store: &S,
) {
    let id = fresh("contract.expiry");
    let stale = Lease::new(id.clone(), None, Clock::system());
    assert_eq!(
        store
            .claim(&stale, Duration::from_secs(1))
            .await
            .expect("claim"),
        Claim::Acquired
    );
    let stale_token = store
        .fencing_token(&stale)
        .await
        .expect("fencing_token")
        .expect("the owner's token");
    let fresh_owner = Lease::new(id.clone(), None, Clock::system());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match store.claim(&fresh_owner, LONG).await.expect("claim") {
            Claim::Acquired => break,
            Claim::Found(record) => {
                assert_eq!(record.owner(), Some(stale.token()), "{record:?}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "a reservation 4 s past its 1 s lease still holds the key"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let fresh_token = store
        .fencing_token(&fresh_owner)
        .await
        .expect("fencing_token")
        .expect("the new owner's token");
    assert!(
        fresh_token > stale_token,
        "the owner after an expiry gets a larger token ({fresh_token} > {stale_token})"
    );
    assert_eq!(
        store.fencing_token(&stale).await.expect("fencing_token"),
        None,
        "the expired owner gets no token"
    );
    assert_eq!(store.renew(&stale, LONG).await.expect("renew"), Fence::Lost);
    assert_eq!(
        store
            .complete(&stale, &raw("\"stale\""), TTL)
            .await
            .expect("complete"),
        Fence::Lost
    );
    assert_eq!(store.release(&stale).await.expect("release"), Fence::Lost);
    assert_eq!(
        store
            .complete(&fresh_owner, &raw("\"fresh\""), TTL)
            .await
            .expect("complete"),
        Fence::Held
    );
    let record = store.get(&id).await.expect("get").expect("completed");
    assert_eq!(record.result().get(), "\"fresh\"");
}

/// Every owner of a key gets a fencing token larger than every earlier owner's, the same
/// token each time it asks, and none once its reservation is gone (released, completed,
/// or the key taken by another owner): a stalled owner cannot obtain a token that beats
/// the newer owner's. Tokens keep growing after the key's records are deleted.
pub async fn fencing_tokens_grow_with_every_new_owner<S: ReservationStore>(store: &S) {
    let id = fresh("contract.fence");
    let first = Lease::new(id.clone(), None, Clock::system());
    assert_eq!(
        store.claim(&first, LONG).await.expect("claim"),
        Claim::Acquired
    );
    let a = store
        .fencing_token(&first)
        .await
        .expect("fencing_token")
        .expect("the owner gets a token");
    assert_eq!(
        store.fencing_token(&first).await.expect("fencing_token"),
        Some(a),
        "the same token each time the owner asks"
    );
    assert_eq!(store.renew(&first, LONG).await.expect("renew"), Fence::Held);
    assert_eq!(
        store.fencing_token(&first).await.expect("fencing_token"),
        Some(a),
        "a renewal keeps the token"
    );
    assert_eq!(store.release(&first).await.expect("release"), Fence::Held);
    assert_eq!(
        store.fencing_token(&first).await.expect("fencing_token"),
        None,
        "no token once the reservation is released"
    );
    let second = Lease::new(id.clone(), None, Clock::system());
    assert_eq!(
        store.claim(&second, LONG).await.expect("claim"),
        Claim::Acquired
    );
    let b = store
        .fencing_token(&second)
        .await
        .expect("fencing_token")
        .expect("the new owner gets a token");
    assert!(
        b > a,
        "a new owner's token ({b}) beats the earlier one ({a})"
    );
    assert_eq!(
        store.fencing_token(&first).await.expect("fencing_token"),
        None,
        "the earlier owner gets none while another owns the key"
    );
    assert_eq!(
        store
            .complete(&second, &raw("1"), TTL)
            .await
            .expect("complete"),
        Fence::Held
    );
    assert_eq!(
        store.fencing_token(&second).await.expect("fencing_token"),
        None,
        "no token once the key is completed"
    );
    assert!(store.delete(&id).await.expect("delete"));
    let third = Lease::new(id, None, Clock::system());
    assert_eq!(
        store.claim(&third, LONG).await.expect("claim"),
        Claim::Acquired
    );
    let c = store
        .fencing_token(&third)
        .await
        .expect("fencing_token")
        .expect("a token");
    assert!(
        c > b,
        "tokens keep growing after the record was deleted ({c} > {b})"
    );
    assert_eq!(store.release(&third).await.expect("release"), Fence::Held);
}

/// Results at the edge of what a record can hold (`check_storable` accepts each): nesting
/// 199 deep, surrogate pairs as escapes, integers beyond 64 bits and of 4300 digits, `-0`,
/// control characters: each, completed, is found by the next claim as a finished record
/// holding the same JSON value (memory and Redis agree). And the ones it refuses are
/// refused by `check_storable`, so the coordinator never writes them.
pub async fn every_storable_result_reads_back_as_a_record<S: ReservationStore>(store: &S) {
    let deep = format!("{}1{}", "[".repeat(199), "]".repeat(199));
    let big = "7".repeat(4300);
    let storable = [
        deep.as_str(),
        r#""\ud83d\ude00 and \u00e9""#,
        "18446744073709551616",
        big.as_str(),
        "[-0,0.0,-0.0,1e400]",
        r#"{"a":"\u0000\u001f","b":[{}],"a":2}"#,
    ];
    for text in storable {
        let mut de = serde_json::Deserializer::from_str(text);
        de.disable_recursion_limit();
        let result: Box<RawValue> = serde::Deserialize::deserialize(&mut de).expect("JSON text");
        idempotency_core::check_storable(&result).expect("storable");
        let id = fresh("contract.storable");
        let lease = Lease::new(id.clone(), None, Clock::system());
        assert_eq!(
            store.claim(&lease, LONG).await.expect("claim"),
            Claim::Acquired
        );
        store
            .complete(&lease, &result, TTL)
            .await
            .expect("complete");
        let next = Lease::new(id, None, Clock::system());
        let Claim::Found(record) = store.claim(&next, LONG).await.expect("claim") else {
            panic!(
                "a completed record was not found: {}",
                &text[..text.len().min(40)]
            );
        };
        assert!(!record.is_pending());
        assert!(
            crate::json_eq::same_value(record.result().get(), &replayed(text)),
            "{} read back as {}",
            &text[..text.len().min(40)],
            &record.result().get()[..record.result().get().len().min(40)]
        );
    }
    for text in [r#""\ud83d""#, r#"{"cut":"a\udc00"}"#] {
        let result = raw(text);
        assert!(idempotency_core::check_storable(&result).is_err(), "{text}");
    }
    let too_deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let mut de = serde_json::Deserializer::from_str(&too_deep);
    de.disable_recursion_limit();
    let result: Box<RawValue> = serde::Deserialize::deserialize(&mut de).expect("JSON text");
    assert!(idempotency_core::check_storable(&result).is_err());
}

/// What Python replays for a stored result: a repeated key's last value, `-0` as `0`,
/// a float beyond the `f64` range as `null`.
fn replayed(text: &str) -> String {
    match text {
        "[-0,0.0,-0.0,1e400]" => "[0,0.0,-0.0,null]".to_owned(),
        r#"{"a":"\u0000\u001f","b":[{}],"a":2}"# => r#"{"a":2,"b":[{}]}"#.to_owned(),
        other => other.to_owned(),
    }
}

/// Of 32 concurrent claims of one key, exactly one acquires; the rest find its record.
pub async fn concurrent_claims_get_exactly_one_owner<S: ReservationStore>(store: &S) {
    let id = fresh("contract.claim");
    let leases: Vec<Lease> = (0..32)
        .map(|_| Lease::new(id.clone(), Some("fp"), Clock::system()))
        .collect();
    let outcomes = futures_join(leases.iter().map(|lease| store.claim(lease, LONG))).await;
    let mut owners = 0;
    for outcome in outcomes {
        match outcome.expect("claim") {
            Claim::Acquired => owners += 1,
            Claim::Found(record) => assert!(record.is_pending(), "{record:?}"),
        }
    }
    assert_eq!(owners, 1, "exactly one owner");
}

/// A claim sent again after its reply was lost finds its own pending record: acquired,
/// not in progress (defect 3 of protocol v2).
pub async fn a_repeated_claim_is_acquired_by_its_own_lease<S: ReservationStore>(store: &S) {
    let id = fresh("contract.resend");
    let lease = Lease::new(id.clone(), None, Clock::system());
    assert_eq!(
        store.claim(&lease, LONG).await.expect("claim"),
        Claim::Acquired
    );
    assert_eq!(
        store.claim(&lease, LONG).await.expect("re-sent claim"),
        Claim::Acquired,
        "a re-sent claim must recognise its own reservation"
    );
    let other = Lease::new(id, None, Clock::system());
    assert!(
        matches!(store.claim(&other, LONG).await.expect("claim"), Claim::Found(r) if r.is_pending())
    );
    assert_eq!(store.release(&lease).await.expect("release"), Fence::Held);
}

/// A completed key answers every claim with its record.
pub async fn a_claim_on_a_completed_key_returns_the_record<S: ReservationStore>(store: &S) {
    let id = fresh("contract.hit");
    let lease = Lease::new(id.clone(), Some("fp"), Clock::system());
    assert_eq!(
        store.claim(&lease, LONG).await.expect("claim"),
        Claim::Acquired
    );
    let result = raw(r#"{"order":7}"#);
    assert_eq!(
        store
            .complete(&lease, &result, TTL)
            .await
            .expect("complete"),
        Fence::Held
    );
    let again = Lease::new(id, Some("fp"), Clock::system());
    match store.claim(&again, LONG).await.expect("claim") {
        Claim::Found(record) => {
            assert!(!record.is_pending());
            assert_eq!(record.result().get(), r#"{"order":7}"#);
            assert_eq!(record.fingerprint(), Some("fp"));
        }
        Claim::Acquired => panic!("a completed key was claimed again"),
    }
}

/// A caller whose reservation was released (or expired) and taken over cannot touch the
/// newer owner's record, nor the completed record that follows.
pub async fn a_stale_owner_cannot_complete_renew_or_release_over_a_newer_one<
    S: ReservationStore,
>(
    store: &S,
) {
    let id = fresh("contract.stale");
    let stale = Lease::new(id.clone(), None, Clock::system());
    assert_eq!(
        store.claim(&stale, LONG).await.expect("claim"),
        Claim::Acquired
    );
    assert_eq!(store.release(&stale).await.expect("release"), Fence::Held);
    let fresh_lease = Lease::new(id.clone(), None, Clock::system());
    assert_eq!(
        store.claim(&fresh_lease, LONG).await.expect("claim"),
        Claim::Acquired
    );
    let late = raw("\"late\"");
    assert_eq!(
        store.complete(&stale, &late, TTL).await.expect("complete"),
        Fence::Lost
    );
    assert_eq!(store.renew(&stale, LONG).await.expect("renew"), Fence::Lost);
    assert_eq!(store.release(&stale).await.expect("release"), Fence::Lost);
    let pending = store.get(&id).await.expect("get").expect("held");
    assert_eq!(
        pending.owner(),
        Some(fresh_lease.token()),
        "the newer reservation stands"
    );
    let done = raw("\"done\"");
    assert_eq!(
        store
            .complete(&fresh_lease, &done, TTL)
            .await
            .expect("complete"),
        Fence::Held
    );
    assert_eq!(
        store.complete(&stale, &late, TTL).await.expect("complete"),
        Fence::Lost
    );
    assert_eq!(
        store.renew(&fresh_lease, LONG).await.expect("renew"),
        Fence::Lost,
        "a completed record is not renewed back to pending"
    );
    assert_eq!(
        store.release(&fresh_lease).await.expect("release"),
        Fence::Lost,
        "a completed record is not released"
    );
    let record = store.get(&id).await.expect("get").expect("completed");
    assert_eq!(record.result().get(), "\"done\"");
}

/// A completed record whose result contains `"owner":"<token>"` (and `"status":"pending"`)
/// is still not the token holder's (defect 5 of protocol v2).
pub async fn the_owner_check_ignores_look_alike_text_in_the_result<S: ReservationStore>(store: &S) {
    let id = fresh("contract.lookalike");
    let owner = Lease::new(id.clone(), None, Clock::system());
    let stale = Lease::new(id.clone(), None, Clock::system());
    assert_eq!(
        store.claim(&owner, LONG).await.expect("claim"),
        Claim::Acquired
    );
    let trap = raw(&format!(
        r#"{{"status":"pending","owner":"{}","note":"\"owner\":\"{}\""}}"#,
        stale.token(),
        stale.token()
    ));
    assert_eq!(
        store.complete(&owner, &trap, TTL).await.expect("complete"),
        Fence::Held
    );
    assert_eq!(store.renew(&stale, LONG).await.expect("renew"), Fence::Lost);
    assert_eq!(store.release(&stale).await.expect("release"), Fence::Lost);
    assert_eq!(
        store
            .complete(&stale, &raw("1"), TTL)
            .await
            .expect("complete"),
        Fence::Lost
    );
    let record: IdempotencyRecord = store.get(&id).await.expect("get").expect("still there");
    assert!(!record.is_pending(), "the completed record stays completed");
    assert_eq!(record.result().get(), trap.get());
}

/// A completed record is final: another completion by the same lease (another result)
/// is refused and changes nothing. (A byte-identical re-send, what fred does after a
/// reconnect, is success on Redis: `a_complete_resent_with_the_same_bytes_is_success`.)
pub async fn a_completed_record_is_final_even_for_its_own_lease<S: ReservationStore>(store: &S) {
    let id = fresh("contract.complete");
    let lease = Lease::new(id.clone(), None, Clock::system());
    assert_eq!(
        store.claim(&lease, LONG).await.expect("claim"),
        Claim::Acquired
    );
    let result = raw("[1,2,3]");
    assert_eq!(
        store
            .complete(&lease, &result, TTL)
            .await
            .expect("complete"),
        Fence::Held
    );
    let first = store.get(&id).await.expect("get").expect("completed");
    // The very same command again (a driver re-sending after a reconnect) would carry
    // the same bytes; a different result from the same lease must not overwrite.
    assert_eq!(
        store
            .complete(&lease, &raw("\"other\""), TTL)
            .await
            .expect("complete"),
        Fence::Lost
    );
    let after = store.get(&id).await.expect("get").expect("completed");
    assert_eq!(first, after);
}

/// A reservation that vanished (expired, flushed) still takes the result.
pub async fn complete_writes_into_an_empty_key<S: ReservationStore>(store: &S) {
    let id = fresh("contract.empty");
    let lease = Lease::new(id.clone(), None, Clock::system());
    assert_eq!(
        store
            .complete(&lease, &raw("5"), TTL)
            .await
            .expect("complete"),
        Fence::Vacated,
        "written, and reported as written without our reservation (a lost lease)"
    );
    let record = store.get(&id).await.expect("get").expect("written");
    assert_eq!(record.result().get(), "5");
}

/// A reservation stamped by a clock far behind (its `expires_at` already past for every
/// other reader) is alive while the store holds it: a claim finds it, nobody deletes it
/// (defect 1 of protocol v2). The Redis store stamps with the server's clock where it can,
/// so there the skew bites only without `TIME`; planted skewed records are covered by
/// `get_never_deletes_a_live_pending_record` and the coordinator's skew tests.
pub async fn client_clocks_never_decide_liveness<S: ReservationStore>(store: &S) {
    let id = fresh("contract.skew");
    let behind = Clock::with_offset(time::Duration::seconds(-3600));
    let owner = Lease::new(id.clone(), None, behind);
    assert_eq!(
        store.claim(&owner, LONG).await.expect("claim"),
        Claim::Acquired
    );
    let reader = Lease::new(id.clone(), None, Clock::system());
    match store.claim(&reader, LONG).await.expect("claim") {
        Claim::Found(record) => {
            assert!(record.is_pending());
            assert_eq!(record.owner(), Some(owner.token()));
        }
        Claim::Acquired => panic!("a live reservation was judged dead by a client clock"),
    }
    // Stamped ahead, the reader's view changes nothing either.
    let ahead = Lease::new(
        id.clone(),
        None,
        Clock::with_offset(time::Duration::seconds(3600)),
    );
    assert!(matches!(
        store.claim(&ahead, LONG).await.expect("claim"),
        Claim::Found(_)
    ));
    assert_eq!(store.renew(&owner, LONG).await.expect("renew"), Fence::Held);
    assert_eq!(store.release(&owner).await.expect("release"), Fence::Held);
}

/// A watcher wakes on completion and on release.
pub async fn a_waiter_is_woken_by_completion_and_by_release<S: ReservationStore>(store: &S) {
    let id = fresh("contract.wake");
    let lease = Lease::new(id.clone(), None, Clock::system());
    assert_eq!(
        store.claim(&lease, LONG).await.expect("claim"),
        Claim::Acquired
    );
    let mut watch = store.watch(&id).await.expect("watch");
    assert_eq!(store.release(&lease).await.expect("release"), Fence::Held);
    assert!(
        watch.changed(Duration::from_secs(5)).await,
        "woken by the release"
    );
    let lease = Lease::new(id.clone(), None, Clock::system());
    assert_eq!(
        store.claim(&lease, LONG).await.expect("claim"),
        Claim::Acquired
    );
    assert_eq!(
        store
            .complete(&lease, &raw("1"), TTL)
            .await
            .expect("complete"),
        Fence::Held
    );
    assert!(
        watch.changed(Duration::from_secs(5)).await,
        "woken by the completion"
    );
}
