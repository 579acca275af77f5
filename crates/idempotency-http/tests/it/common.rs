//! A test server (axum on 127.0.0.1:0 behind the layer), a raw HTTP/1.1 client and the
//! stores.

// Shared by the test modules; `pub` inside one test binary.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use idempotency_coordinator::{ConnectOptions, MemoryStore, RedisStore, ReservationStore};
use idempotency_http::{
    IdempotencyLayer, IdempotencyLayerBuilder, KeyRequirement, LayerStats, StorageDown,
    WhileInFlight,
};
use idempotency_testkit::{RedisCluster, RedisServer, shared_cluster, shared_server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Runs one test body on every store: `memory`, `redis` (standalone) and `cluster`.
macro_rules! on_every_store {
    ($body:ident) => {
        mod $body {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn memory() {
                super::$body(crate::common::Backend::memory()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn redis() {
                super::$body(crate::common::Backend::standalone().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn cluster() {
                super::$body(crate::common::Backend::cluster().await).await;
            }
        }
    };
}

/// A store, and the server behind it kept alive for the test.
pub enum Backend {
    Memory(MemoryStore),
    Redis(
        RedisStore,
        Option<Arc<RedisServer>>,
        Option<Arc<RedisCluster>>,
    ),
}

impl Backend {
    pub fn memory() -> Self {
        Self::Memory(MemoryStore::new())
    }

    pub async fn standalone() -> Self {
        let server = shared_server();
        let store = RedisStore::connect(&server.url(), &ConnectOptions::default())
            .await
            .expect("connect");
        Self::Redis(store, Some(server), None)
    }

    pub async fn cluster() -> Self {
        let cluster = shared_cluster();
        let store = RedisStore::connect(&cluster.url(), &ConnectOptions::default())
            .await
            .expect("connect");
        Self::Redis(store, None, Some(cluster))
    }

    /// Starts the test app behind a layer configured by `options`.
    pub async fn serve(self, options: Options) -> App {
        match self {
            Self::Memory(store) => App::start(store, options, Keep(None, None)).await,
            Self::Redis(store, server, cluster) => {
                App::start(store, options, Keep(server, cluster)).await
            }
        }
    }
}

/// Keeps a shared server alive while its app runs.
#[allow(dead_code)]
pub struct Keep(pub Option<Arc<RedisServer>>, pub Option<Arc<RedisCluster>>);

/// The layer's options the tests vary.
#[derive(Default)]
pub struct Options {
    pub requirement: KeyRequirement,
    pub in_flight: WhileInFlight,
    pub storage_down: StorageDown,
    pub tenant_header: bool,
    pub max_response_body: Option<usize>,
}

fn configure<S: ReservationStore>(
    mut builder: IdempotencyLayerBuilder<S>,
    options: &Options,
) -> IdempotencyLayerBuilder<S> {
    builder = builder
        .with_key_requirement(options.requirement)
        .with_in_flight(options.in_flight)
        .with_storage_down(options.storage_down);
    if options.tenant_header {
        builder = builder.with_tenant(|parts| {
            parts
                .headers
                .get("x-tenant")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
    }
    if let Some(limit) = options.max_response_body {
        builder = builder.with_max_response_body(limit);
    }
    builder
}

/// The running test app: its address and how often each handler ran.
pub struct App {
    pub addr: SocketAddr,
    pub runs: Arc<AtomicU64>,
    pub stats: Arc<LayerStats>,
    /// Set when a `GET /probe` handler was dropped before it finished.
    pub probe_cancelled: Arc<AtomicBool>,
    _keep: Keep,
}

impl App {
    pub async fn start<S: ReservationStore>(store: S, options: Options, keep: Keep) -> Self {
        let layer = configure(IdempotencyLayer::builder(store), &options)
            .build()
            .expect("layer");
        let stats = layer.stats();
        let runs = Arc::new(AtomicU64::new(0));
        let probe_cancelled = Arc::new(AtomicBool::new(false));
        let router = routes(&runs, &probe_cancelled).layer(layer);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            addr,
            runs,
            stats,
            probe_cancelled,
            _keep: keep,
        }
    }

    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }

    /// Sends one request with the given headers and body.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
    ) -> Reply {
        send(self.addr, method, path, headers, body).await
    }

    /// POSTs `body` with one `Idempotency-Key`.
    pub async fn post(&self, path: &str, key: &str, body: &str) -> Reply {
        self.send(
            "POST",
            path,
            &[("idempotency-key", key.as_bytes())],
            body.as_bytes(),
        )
        .await
    }
}

/// The handlers: each counts its runs in `runs`.
fn routes(runs: &Arc<AtomicU64>, probe_cancelled: &Arc<AtomicBool>) -> Router {
    let probe = Arc::clone(probe_cancelled);
    let created = Arc::clone(runs);
    let slow = Arc::clone(runs);
    let failing = Arc::clone(runs);
    let big = Arc::clone(runs);
    let streamed = Arc::clone(runs);
    Router::new()
        .route(
            "/probe",
            get(move || {
                let cancelled = Arc::clone(&probe);
                async move {
                    let guard = DropProbe(cancelled, false);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let mut guard = guard;
                    guard.1 = true;
                    "done"
                }
            }),
        )
        .route(
            "/orders",
            post(move |headers: HeaderMap, body: String| {
                let runs = Arc::clone(&created);
                async move { order(&runs, &headers, &body, Duration::ZERO) }
            }),
        )
        .route(
            "/slow",
            post(move |headers: HeaderMap, body: String| {
                let runs = Arc::clone(&slow);
                async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    order(&runs, &headers, &body, Duration::ZERO)
                }
            }),
        )
        .route(
            "/fail",
            post(move || {
                let runs = Arc::clone(&failing);
                async move {
                    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                    (StatusCode::SERVICE_UNAVAILABLE, format!("failure {n}"))
                }
            }),
        )
        .route(
            "/stream",
            post(move || {
                let runs = Arc::clone(&streamed);
                async move {
                    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                    let chunks = [format!("run {n};"), "two;".to_owned(), "three".to_owned()];
                    axum::http::Response::new(Chunks(chunks.into_iter().map(Bytes::from).collect()))
                }
            }),
        )
        .route(
            "/big",
            post(move || {
                let runs = Arc::clone(&big);
                async move {
                    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                    format!("{n}:{}", "x".repeat(4096))
                }
            }),
        )
}

fn order(
    runs: &AtomicU64,
    headers: &HeaderMap,
    body: &str,
    _: Duration,
) -> impl IntoResponse + use<> {
    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
    let tenant = headers
        .get("x-tenant")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    (
        StatusCode::CREATED,
        [
            ("content-type", "application/json".to_owned()),
            ("x-order", n.to_string()),
            ("set-cookie", format!("session={n}")),
        ],
        format!(
            r#"{{"order":{n},"tenant":"{tenant}","echo":{}}}"#,
            body.len()
        ),
    )
}

/// A streaming body of unknown length (sent chunked), one frame per chunk.
struct Chunks(VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|c| Ok(http_body::Frame::data(c))))
    }
}

/// Records a handler future dropped before it finished.
struct DropProbe(Arc<AtomicBool>, bool);

impl Drop for DropProbe {
    fn drop(&mut self) {
        if !self.1 {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// An HTTP/1.1 response as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn replayed(&self) -> bool {
        self.header("idempotent-replayed") == Some("true")
    }
}

/// Writes the request head and body on `stream`.
pub async fn write_request(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (name, value) in headers {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head.extend_from_slice(body);
    stream.write_all(&head).await.expect("write");
}

/// One request on a fresh connection (raw bytes: repeated and non-UTF-8 headers go out
/// as given).
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    write_request(&mut stream, method, path, headers, body).await;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    parse(&raw)
}

fn parse(raw: &[u8]) -> Reply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head");
    let head = std::str::from_utf8(&raw[..end]).expect("ascii head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers: Vec<(String, Vec<u8>)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().as_bytes().to_vec()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case(b"chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = std::str::from_utf8(&rest[..line_end]).expect("chunk size");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
            .expect("hex size");
        if size == 0 {
            return out;
        }
        let start = line_end + 2;
        out.extend_from_slice(&rest[start..start + size]);
        rest = &rest[start + size + 2..];
    }
}

/// A gate handlers wait at until the test opens it: lets a test act (a second request,
/// a storage fault) while a handler is known to be running, without timing windows.
#[derive(Clone)]
pub struct Gate {
    entered: Arc<tokio::sync::watch::Sender<u64>>,
    open: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            entered: Arc::new(tokio::sync::watch::channel(0).0),
            open: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
}

impl Gate {
    /// Called by a handler: counts it in, then waits until the gate is open.
    pub async fn pass(&self) {
        self.entered.send_modify(|n| *n += 1);
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|o| *o).await;
    }

    /// Waits (up to `within`) until `n` handlers have entered the gate.
    ///
    /// # Panics
    /// When they have not by then.
    pub async fn wait_entered(&self, n: u64, within: Duration) {
        let mut entered = self.entered.subscribe();
        tokio::time::timeout(within, entered.wait_for(|e| *e >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} handler(s) did not reach the gate in {within:?}"))
            .expect("gate");
    }

    /// Lets every waiting and later handler through.
    pub fn open(&self) {
        self.open.send_replace(true);
    }
}

impl App {
    /// Starts the standard routes plus `extra` (given the run counter) behind a layer
    /// built from `builder` and `options`.
    pub async fn start_with<S: ReservationStore>(
        builder: IdempotencyLayerBuilder<S>,
        options: Options,
        extra: impl FnOnce(&Arc<AtomicU64>) -> Router,
        keep: Keep,
    ) -> Self {
        let layer = configure(builder, &options).build().expect("layer");
        let stats = layer.stats();
        let runs = Arc::new(AtomicU64::new(0));
        let probe_cancelled = Arc::new(AtomicBool::new(false));
        let router = routes(&runs, &probe_cancelled)
            .merge(extra(&runs))
            .layer(layer);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            addr,
            runs,
            stats,
            probe_cancelled,
            _keep: keep,
        }
    }
}

impl Backend {
    /// Starts the test app with `extra` routes behind a layer configured by `options`.
    pub async fn serve_with(
        self,
        options: Options,
        extra: impl FnOnce(&Arc<AtomicU64>) -> Router,
    ) -> App {
        match self {
            Self::Memory(store) => {
                App::start_with(
                    IdempotencyLayer::builder(store),
                    options,
                    extra,
                    Keep(None, None),
                )
                .await
            }
            Self::Redis(store, server, cluster) => {
                App::start_with(
                    IdempotencyLayer::builder(store),
                    options,
                    extra,
                    Keep(server, cluster),
                )
                .await
            }
        }
    }
}

/// Polls `condition` every 50 ms until it holds or `within` has passed; returns whether
/// it held.
pub async fn wait_until<F, Fut>(within: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
