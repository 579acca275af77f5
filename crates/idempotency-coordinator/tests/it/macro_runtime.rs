//! `#[idempotent]` at run time: methods, free functions, fingerprints, TTL, adapters.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use idempotency_coordinator::{
    Coordinator, IdempotencyError, JsonAdapter, MemoryStore, idempotent,
};
use idempotency_core::IdempotencyRepository;

/// An application error that carries the library's errors.
#[derive(Debug)]
enum AppError {
    Idempotency(IdempotencyError),
    Taken,
}

impl From<IdempotencyError> for AppError {
    fn from(e: IdempotencyError) -> Self {
        Self::Idempotency(e)
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct User {
    id: usize,
    name: String,
}

#[derive(Debug, Clone, serde::Serialize)]
struct CreateUser {
    name: String,
}

struct CreateUserUseCase {
    idempotency_coordinator: Coordinator<MemoryStore>,
    created: Arc<AtomicUsize>,
}

impl CreateUserUseCase {
    #[idempotent(operation = "user.create", fingerprint(dto), ttl_secs = 600)]
    async fn execute(
        &self,
        dto: CreateUser,
        idempotency_key: Option<String>,
    ) -> Result<User, AppError> {
        if dto.name == "taken" {
            return Err(AppError::Taken);
        }
        let id = self.created.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(User { id, name: dto.name })
    }
}

#[idempotent(operation = "report.build", key = request_id, coordinator = coordinator, adapter = JsonAdapter)]
async fn build_report(
    coordinator: &Coordinator<MemoryStore>,
    request_id: Option<&str>,
    n: u64,
) -> Result<serde_json::Value, IdempotencyError> {
    Ok(serde_json::json!({ "n": n }))
}

fn use_case() -> CreateUserUseCase {
    CreateUserUseCase {
        idempotency_coordinator: Coordinator::in_memory(),
        created: Arc::new(AtomicUsize::new(0)),
    }
}

#[tokio::test]
async fn a_method_runs_once_per_key_and_replays() {
    let uc = use_case();
    let a = uc
        .execute(CreateUser { name: "ann".into() }, Some("k1".into()))
        .await
        .expect("first");
    let b = uc
        .execute(CreateUser { name: "ann".into() }, Some("k1".into()))
        .await
        .expect("replay");
    assert_eq!(a, b);
    assert_eq!(uc.created.load(Ordering::SeqCst), 1);
    let record = uc
        .idempotency_coordinator
        .store()
        .get(&idempotency_testkit::record_id("user.create", "k1"))
        .await
        .expect("get")
        .expect("stored");
    assert!(record.fingerprint().is_some());
    assert!(record.remaining_ttl_secs_ceil() <= 600);
}

#[tokio::test]
async fn no_key_means_no_idempotency() {
    let uc = use_case();
    uc.execute(CreateUser { name: "bob".into() }, None)
        .await
        .expect("one");
    uc.execute(CreateUser { name: "bob".into() }, None)
        .await
        .expect("two");
    assert_eq!(uc.created.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn another_payload_under_the_same_key_is_a_key_reuse() {
    let uc = use_case();
    uc.execute(CreateUser { name: "cat".into() }, Some("k".into()))
        .await
        .expect("first");
    let err = uc
        .execute(CreateUser { name: "dog".into() }, Some("k".into()))
        .await
        .expect_err("reuse");
    assert!(matches!(
        err,
        AppError::Idempotency(IdempotencyError::KeyReuse { .. })
    ));
}

#[tokio::test]
async fn application_errors_pass_through_and_are_not_cached() {
    let uc = use_case();
    assert!(matches!(
        uc.execute(
            CreateUser {
                name: "taken".into()
            },
            Some("t".into())
        )
        .await,
        Err(AppError::Taken)
    ));
    assert!(
        uc.idempotency_coordinator
            .store()
            .get(&idempotency_testkit::record_id("user.create", "t"))
            .await
            .expect("get")
            .is_none()
    );
}

#[tokio::test]
async fn a_free_function_with_a_named_key_and_adapter() {
    let coordinator = Coordinator::in_memory();
    let first = build_report(&coordinator, Some("r1"), 1)
        .await
        .expect("first");
    let second = build_report(&coordinator, Some("r1"), 2)
        .await
        .expect("replay");
    assert_eq!(first, second);
    assert_eq!(second, serde_json::json!({"n": 1}));
}

/// A body that counts its runs, takes 200 ms, and returns how many runs there were.
#[idempotent(operation = "mail.send", coordinator = coordinator, detached)]
async fn send_detached(
    coordinator: &Coordinator<MemoryStore>,
    sent: Arc<AtomicUsize>,
    idempotency_key: Option<String>,
) -> Result<usize, IdempotencyError> {
    let n = sent.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    Ok(n)
}

#[idempotent(operation = "mail.send", coordinator = coordinator)]
async fn send_attached(
    coordinator: &Coordinator<MemoryStore>,
    sent: Arc<AtomicUsize>,
    idempotency_key: Option<String>,
) -> Result<usize, IdempotencyError> {
    let n = sent.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_body_finishes_when_its_caller_goes_away() {
    let coordinator = Coordinator::in_memory();
    let sent = Arc::new(AtomicUsize::new(0));
    let key = || Some("m1".to_owned());
    // The caller gives up mid-body (a client disconnect, an outer timeout).
    let gave_up = tokio::time::timeout(
        std::time::Duration::from_millis(50),
        send_detached(&coordinator, sent.clone(), key()),
    )
    .await;
    assert!(gave_up.is_err(), "the caller was cut mid-body");
    // The retry waits for the detached body and gets its result: it ran once.
    let retry = send_detached(&coordinator, sent.clone(), key())
        .await
        .expect("replayed");
    assert_eq!(retry, 1);
    assert_eq!(sent.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attached_body_is_cut_with_its_caller_and_runs_again() {
    // What the docs say of the default: the body runs inside the caller's future.
    let coordinator = Coordinator::in_memory();
    let sent = Arc::new(AtomicUsize::new(0));
    let key = || Some("m1".to_owned());
    let gave_up = tokio::time::timeout(
        std::time::Duration::from_millis(50),
        send_attached(&coordinator, sent.clone(), key()),
    )
    .await;
    assert!(gave_up.is_err());
    let retry = send_attached(&coordinator, sent.clone(), key())
        .await
        .expect("ran again");
    assert_eq!(retry, 2);
}
