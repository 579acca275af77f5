//! Storage faults while a request is being handled, on redis-server processes these tests
//! own (killed with SIGKILL and restarted, empty or from their append-only file), and
//! response bodies that stream. A gate holds the handler while the fault happens; every
//! wait is for a condition with a generous deadline (CI is a loaded 2-core machine).

use std::fmt::Write as _;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use axum::routing::post;
use bytes::Bytes;
use idempotency_coordinator::{ConnectOptions, Coordinator, RedisStore};
use idempotency_http::{IdempotencyLayer, StorageDown};
use idempotency_testkit::{RedisCluster, RedisServer, ServerOptions, unique_key};

use crate::common::{App, Backend, Gate, Keep, Options, Reply, wait_until};

/// Generous: CI is a loaded 2-core machine.
const WITHIN: Duration = Duration::from_secs(30);

/// The store's command timeout: a dead server turns into a storage error this fast.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);

async fn connect(url: &str) -> RedisStore {
    RedisStore::connect(
        url,
        &ConnectOptions::default()
            .with_command_timeout(COMMAND_TIMEOUT)
            .with_reconnect_max_delay(Duration::from_millis(200)),
    )
    .await
    .expect("connect")
}

/// `POST /gated` waits at the gate, then creates (201, `gated {n}`).
fn gated(gate: &Gate) -> impl FnOnce(&Arc<AtomicU64>) -> Router + use<> {
    let gate = gate.clone();
    move |runs: &Arc<AtomicU64>| {
        let runs = Arc::clone(runs);
        Router::new().route(
            "/gated",
            post(move || {
                let (runs, gate) = (Arc::clone(&runs), gate.clone());
                async move {
                    gate.pass().await;
                    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                    (StatusCode::CREATED, format!("gated {n}"))
                }
            }),
        )
    }
}

/// An app on `url` with a coordinator lease of `lease`.
async fn app_on(url: &str, options: Options, lease: Duration, gate: &Gate, keep: Keep) -> App {
    let builder =
        IdempotencyLayer::builder_from(Coordinator::builder(connect(url).await).lease(lease));
    App::start_with(builder, options, gated(gate), keep).await
}

/// Sends `POST /gated` with `key` from a task (the handler waits at the gate).
fn post_gated(app: &App, key: &str) -> tokio::task::JoinHandle<Reply> {
    let (addr, key) = (app.addr, key.to_owned());
    tokio::spawn(async move {
        crate::common::send(
            addr,
            "POST",
            "/gated",
            &[("idempotency-key", key.as_bytes())],
            b"{}",
        )
        .await
    })
}

/// Waits until the app's store answers again: a fresh key is created (and replayed).
async fn wait_until_protected(app: &App) {
    let up = wait_until(WITHIN, || async {
        let key = unique_key("up");
        let first = app.post("/orders", &key, "{}").await;
        first.status == 201 && app.post("/orders", &key, "{}").await.replayed()
    })
    .await;
    assert!(up, "the layer did not get its store back");
}

fn aof() -> ServerOptions {
    ServerOptions {
        args: ["--appendonly", "yes", "--appendfsync", "always"]
            .map(str::to_owned)
            .to_vec(),
        ..ServerOptions::default()
    }
}

/// Fail closed; Redis killed while the handler runs and still down when it returns: the
/// handler's response goes out (its store failed: logged, counted, never returned);
/// while Redis is down new requests get 503 with `Retry-After` and their handler does
/// not run. Redis comes back empty (no persistence): the record was lost with it, so
/// the retry runs the handler again. At least once across a store that loses data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fail_closed_redis_killed_mid_handler_then_restarted_empty_runs_the_retry_again() {
    let mut server = RedisServer::start();
    let gate = Gate::default();
    let app = app_on(
        &server.url(),
        Options::default(),
        Duration::from_secs(30),
        &gate,
        Keep(None, None),
    )
    .await;
    let key = unique_key("killed");
    let first = post_gated(&app, &key);
    gate.wait_entered(1, WITHIN).await;
    server.kill();
    let opened = std::time::Instant::now();
    gate.open();
    let first = first.await.expect("first request");
    eprintln!(
        "response after the handler returned into a dead store: {:?} (command timeout {COMMAND_TIMEOUT:?})",
        opened.elapsed()
    );
    assert_eq!(first.status, 201, "{}", first.body_text());
    assert_eq!(first.body_text(), "gated 1", "the response still goes out");
    assert!(!first.replayed());

    let down = app.post("/orders", &unique_key("down"), "{}").await;
    assert_eq!(down.status, 503, "{}", down.body_text());
    assert_eq!(down.header("retry-after"), Some("1"));
    assert_eq!(
        app.runs(),
        1,
        "fail closed: no handler ran while Redis was down"
    );

    server.restart();
    wait_until_protected(&app).await;
    let runs = app.runs();
    let retry = app.post("/gated", &key, "{}").await;
    assert_eq!(retry.status, 201);
    assert!(!retry.replayed(), "the record was lost with the restart");
    assert_eq!(app.runs(), runs + 1, "so the retry ran the handler again");
}

/// Fail closed; Redis killed while the handler runs and back (from its append-only file)
/// before the handler returns: the reservation survived (a duplicate meanwhile gets
/// 409), the result is stored when the handler returns, and the retry replays it without
/// running the handler again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fail_closed_redis_back_with_its_data_before_the_handler_returns_replays() {
    let mut server = RedisServer::start_with(&aof());
    let gate = Gate::default();
    let app = app_on(
        &server.url(),
        Options::default(),
        Duration::from_secs(30),
        &gate,
        Keep(None, None),
    )
    .await;
    let key = unique_key("back");
    let first = post_gated(&app, &key);
    gate.wait_entered(1, WITHIN).await;
    server.kill();
    server.restart();
    wait_until_protected(&app).await;
    let duplicate = app.post("/gated", &key, "{}").await;
    assert_eq!(
        duplicate.status, 409,
        "the reservation survived the restart"
    );
    gate.open();
    let first = first.await.expect("first request");
    assert_eq!(first.status, 201);
    assert!(first.body_text().starts_with("gated "));
    let runs = app.runs();
    let retry = app.post("/gated", &key, "{}").await;
    assert_eq!(retry.status, 201);
    assert!(retry.replayed(), "stored after Redis came back");
    assert_eq!(retry.body, first.body);
    assert_eq!(app.runs(), runs, "the handler did not run again");
}

/// Fail closed; Redis killed while the handler runs, the handler returns while Redis is
/// down (the result cannot be stored, the reservation cannot be released), Redis comes
/// back from its append-only file with the pending reservation: retries get 409 with
/// `Retry-After` until the reservation's lease runs out, then the handler runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fail_closed_result_lost_while_down_gives_409_until_the_lease_ends_then_runs_again() {
    let lease = Duration::from_secs(2);
    let mut server = RedisServer::start_with(&aof());
    let gate = Gate::default();
    let app = app_on(
        &server.url(),
        Options::default(),
        lease,
        &gate,
        Keep(None, None),
    )
    .await;
    let key = unique_key("lost");
    let first = post_gated(&app, &key);
    gate.wait_entered(1, WITHIN).await;
    server.kill();
    gate.open();
    let first = first.await.expect("first request");
    assert_eq!(first.status, 201, "{}", first.body_text());
    assert_eq!(first.body_text(), "gated 1");
    server.restart();
    let mut conflicts = 0;
    let deadline = tokio::time::Instant::now() + WITHIN;
    let retry = loop {
        let reply = app.post("/gated", &key, "{}").await;
        match reply.status {
            409 => {
                assert_eq!(reply.header("retry-after"), Some("1"));
                conflicts += 1;
            }
            503 => {} // the client is still reconnecting
            _ => break reply,
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pending reservation never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(retry.status, 201, "{}", retry.body_text());
    assert!(
        !retry.replayed(),
        "nothing was stored: the handler ran again"
    );
    assert_eq!(retry.body_text(), "gated 2");
    eprintln!("result lost while Redis was down: {conflicts} 409(s) before the lease ended");
}

/// Fail open; Redis killed while the handler runs: its response goes out; while Redis is
/// down every request runs its handler, duplicates included (at least once); once Redis
/// is back the layer protects again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fail_open_redis_killed_mid_handler_runs_handlers_then_recovers() {
    let mut server = RedisServer::start();
    let gate = Gate::default();
    let app = app_on(
        &server.url(),
        Options {
            storage_down: StorageDown::FailOpen,
            ..Options::default()
        },
        Duration::from_secs(30),
        &gate,
        Keep(None, None),
    )
    .await;
    let key = unique_key("open");
    let first = post_gated(&app, &key);
    gate.wait_entered(1, WITHIN).await;
    server.kill();
    gate.open();
    let first = first.await.expect("first request");
    assert_eq!(first.status, 201, "{}", first.body_text());
    assert_eq!(first.body_text(), "gated 1");

    let down_key = unique_key("open-down");
    let a = app.post("/orders", &down_key, "{}").await;
    let b = app.post("/orders", &down_key, "{}").await;
    assert_eq!((a.status, b.status), (201, 201));
    assert!(!b.replayed(), "unprotected while down");
    assert_eq!(app.runs(), 3, "every handler ran, the duplicate too");

    server.restart();
    wait_until_protected(&app).await;
}

/// Fail open on the cluster: every node killed while the handler runs; the response goes
/// out, handlers run while the cluster is down, and the layer protects again once the
/// nodes are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fail_open_on_the_cluster_with_every_node_killed_mid_handler() {
    let mut cluster = RedisCluster::start_with(3, 0);
    let gate = Gate::default();
    let app = app_on(
        &cluster.url(),
        Options {
            storage_down: StorageDown::FailOpen,
            ..Options::default()
        },
        Duration::from_secs(30),
        &gate,
        Keep(None, None),
    )
    .await;
    let key = unique_key("cluster-open");
    let first = post_gated(&app, &key);
    gate.wait_entered(1, WITHIN).await;
    for node in cluster.nodes_mut() {
        node.kill();
    }
    gate.open();
    let first = first.await.expect("first request");
    assert_eq!(first.status, 201, "{}", first.body_text());
    assert_eq!(first.body_text(), "gated 1");

    let down = app.post("/orders", &unique_key("cluster-down"), "{}").await;
    assert_eq!(down.status, 201, "fail open: the handler ran");
    assert_eq!(app.runs(), 2);

    for node in cluster.nodes_mut() {
        node.restart();
    }
    cluster.wait_ok(WITHIN);
    wait_until_protected(&app).await;
}

/// A body of unknown length streamed in chunks with pauses between them (sent chunked),
/// bytes that are not UTF-8 included.
struct Paced {
    chunks: std::collections::VecDeque<Bytes>,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for Paced {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Some(pause) = self.pause.as_mut() {
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        let chunk = self.chunks.pop_front();
        if chunk.is_some() && !self.chunks.is_empty() {
            self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(5))));
        }
        Poll::Ready(chunk.map(|c| Ok(http_body::Frame::data(c))))
    }
}

/// `POST /streamed` answers `Body::from_stream` over `chunks` paced chunks: run number,
/// then every byte value, then filler; `content-type` binary.
fn streamed(chunks: usize) -> impl FnOnce(&Arc<AtomicU64>) -> Router + use<> {
    move |runs: &Arc<AtomicU64>| {
        let runs = Arc::clone(runs);
        Router::new().route(
            "/streamed",
            post(move || {
                let runs = Arc::clone(&runs);
                async move {
                    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                    let mut parts = vec![Bytes::from(format!("run {n};"))];
                    parts.push(Bytes::from((0..=255u8).collect::<Vec<u8>>()));
                    for i in 0..chunks {
                        parts.push(Bytes::from(format!("chunk {i:04};")));
                    }
                    let paced = Paced {
                        chunks: parts.into(),
                        pause: None,
                    };
                    let stream = Body::new(paced).into_data_stream();
                    (
                        [("content-type", "application/octet-stream")],
                        Body::from_stream(stream),
                    )
                }
            }),
        )
    }
}

/// The headers two answers must share: all but `Date`, the replay marker and
/// `Set-Cookie`, sorted.
fn essence(reply: &Reply) -> Vec<(String, Vec<u8>)> {
    let mut headers: Vec<_> = reply
        .headers
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "date" | "idempotent-replayed" | "set-cookie"))
        .cloned()
        .collect();
    headers.sort();
    headers
}

// A chunked `Body::from_stream` response: the first client gets every byte; the retry
// gets the same status, headers and bytes, replayed.
on_every_store!(a_streamed_response_is_replayed_byte_identical);
async fn a_streamed_response_is_replayed_byte_identical(backend: Backend) {
    let app = backend.serve_with(Options::default(), streamed(40)).await;
    let key = unique_key("streamed");
    let first = app.post("/streamed", &key, "{}").await;
    assert_eq!(first.status, 200);
    let mut expected = b"run 1;".to_vec();
    expected.extend(0..=255u8);
    for i in 0..40 {
        expected.extend_from_slice(format!("chunk {i:04};").as_bytes());
    }
    assert_eq!(first.body, expected, "the first client gets every byte");
    let retry = app.post("/streamed", &key, "{}").await;
    assert_eq!(retry.status, 200);
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body, "byte-identical");
    assert_eq!(essence(&retry), essence(&first));
    assert_eq!(app.runs(), 1);
}

/// Warnings seen by the process-wide subscriber installed by [`warnings`].
static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records every WARN-or-worse event as `message field=value ...`.
struct WarnRecorder;

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl tracing::Subscriber for WarnRecorder {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        WARNINGS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(fields.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Installs the recorder once for the process (if no other subscriber is); `false` when
/// another subscriber was there first.
fn warnings_recorded() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| tracing::subscriber::set_global_default(WarnRecorder).is_ok())
}

/// A distinct response limit per test run, to find this run's warnings.
fn distinct_limit() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(1000);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

// A streamed response over the body limit: returned whole (chunked) to its client, not
// stored, the key released (the retry runs again), counted and logged at WARN.
on_every_store!(a_streamed_response_over_the_limit_is_returned_not_stored_counted_and_logged);
async fn a_streamed_response_over_the_limit_is_returned_not_stored_counted_and_logged(
    backend: Backend,
) {
    let recording = warnings_recorded();
    let limit = distinct_limit();
    let app = backend
        .serve_with(
            Options {
                max_response_body: Some(limit),
                ..Options::default()
            },
            streamed(200),
        )
        .await;
    let key = unique_key("over");
    let first = app.post("/streamed", &key, "{}").await;
    assert_eq!(first.status, 200);
    assert!(first.body.len() > limit);
    assert!(first.body.starts_with(b"run 1;"));
    assert!(first.body.ends_with(b"chunk 0199;"), "returned whole");
    assert_eq!(
        first.header("transfer-encoding"),
        Some("chunked"),
        "streamed through, not buffered"
    );
    let retry = app.post("/streamed", &key, "{}").await;
    assert!(!retry.replayed());
    assert!(retry.body.starts_with(b"run 2;"), "the key was released");
    assert_eq!(retry.body.len(), first.body.len());
    assert_eq!(app.stats.oversized(), 2);
    assert_eq!(app.stats.not_stored(), 2);
    if recording {
        let needle = format!("limit={limit}");
        let logged = WARNINGS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|w| w.contains(&needle) && w.contains("not stored"))
            .count();
        assert_eq!(logged, 2, "one warning per oversized response");
    } else {
        eprintln!("another tracing subscriber is installed: the warning is not checked");
    }
}
