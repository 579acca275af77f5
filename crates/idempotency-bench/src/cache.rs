//! The local cache's rows (`idempotency_redis::cache::CachedStore`): a cached hit at
//! concurrency 64 against the raw `GET` at 64, and the invalidation delay: from the
//! moment another connection (or a Python process) sends a `replace` until every caching
//! store stops serving the old record.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotency_coordinator::Coordinator;
use idempotency_core::{
    Claim, Clock, IdempotencyError, IdempotencyRecord, IdempotencyRepository, Lease, RawValue,
    RecordId, ReservationStore,
};
use idempotency_redis::cache::{CacheConfig, CachedStore};
use idempotency_redis::fred::prelude::{KeysInterface, Value};
use idempotency_redis::{ConnectOptions, RedisStore};
use serde::{Deserialize, Serialize};

use crate::load::{Stats, drive, percentile};
use crate::{Ctx, Section};

const OP: &str = "bench.cache";
const CONCURRENCY: usize = 64;
/// Caching stores that must all stop serving the old record.
const CACHES: usize = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    order_id: u64,
    status: String,
    amount: f64,
}

/// Delays of one writer, in microseconds.
struct Delays {
    /// From sending the write until every cache stopped serving the old record.
    total: Vec<Duration>,
    /// From the write's reply (Rust writer only) until then; zero when the caches had
    /// already stopped.
    after_reply: Vec<Duration>,
}

/// The rows of this module; errors become a note in the section instead of a panic.
pub(crate) async fn run(ctx: &Ctx) -> Section {
    if !ctx.options.wants("cache") {
        return Section {
            markdown: String::new(),
            ratios: Vec::new(),
        };
    }
    match rows(ctx).await {
        Ok(section) => section,
        Err(e) => Section {
            markdown: format!("## Local cache\n\nnot measured: {e}\n"),
            ratios: Vec::new(),
        },
    }
}

async fn connect(ctx: &Ctx, prefix: &str) -> Result<RedisStore, IdempotencyError> {
    let connection = idempotency_redis::connect_client(
        &ctx.url,
        &ConnectOptions::default().with_command_timeout(Duration::from_secs(10)),
    )
    .await?;
    RedisStore::builder(connection).key_prefix(prefix).build()
}

async fn rows(ctx: &Ctx) -> Result<Section, Box<dyn std::error::Error>> {
    let prefix = format!("bench-cache-{}:", ctx.run);
    let (hit, store_hit, raw, cached_stats) = throughput(ctx, &prefix).await?;
    let rounds = if ctx.options.calls <= 2_000 { 60 } else { 300 };
    let rust = invalidation_delay(ctx, &prefix, rounds, Writer::Rust).await?;
    let python = if ctx.options.python {
        Some(invalidation_delay(ctx, &prefix, rounds, Writer::Python).await?)
    } else {
        None
    };
    let ratio = hit.ops_per_sec / raw.ops_per_sec;
    let mut md = String::from("## Local cache (`CachedStore`, feature `local-cache`)\n\n");
    let _ = writeln!(
        md,
        "| row | concurrency | ops/s | p50 | p99 |\n| --- | --- | --- | --- | --- |"
    );
    for (name, s) in [
        ("cached hit (coordinator over `CachedStore`)", hit),
        (
            "cached claim alone (`CachedStore::claim`, no coordinator)",
            store_hit,
        ),
        ("raw `GET` (fred, same keys)", raw),
    ] {
        let _ = writeln!(
            md,
            "| {name} | {CONCURRENCY} | {:.0} | {:.1} µs | {:.1} µs |",
            s.ops_per_sec, s.p50_us, s.p99_us
        );
    }
    let _ = writeln!(
        md,
        "\ncached-hit@64 / raw GET@64: **{ratio:.1}×** (target ≥ 5×); local hits {}, misses {}\n",
        cached_stats.local_hits, cached_stats.local_misses
    );
    let _ = writeln!(
        md,
        "Invalidation delay ({rounds} rounds, {CACHES} caching stores on their own connections; \
         from sending the write until both stop serving the old record):\n\n\
         | writer | p50 | p99 | max | p50 after the write's reply | p99 after the reply |\n\
         | --- | --- | --- | --- | --- | --- |"
    );
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    let mut delay_row = |name: &str, d: &mut Delays| {
        d.total.sort_unstable();
        d.after_reply.sort_unstable();
        let after = |p| {
            if d.after_reply.is_empty() {
                "n/a".to_owned()
            } else {
                ms(percentile(&d.after_reply, p))
            }
        };
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} |",
            ms(percentile(&d.total, 0.5)),
            ms(percentile(&d.total, 0.99)),
            ms(d.total.last().copied().unwrap_or_default()),
            after(0.5),
            after(0.99),
        );
    };
    let mut rust = rust;
    delay_row("another connection (Rust `replace`)", &mut rust);
    let mut ratios = vec![("cached-hit@64".to_owned(), ratio)];
    ratios.push((
        "invalidation-p99-ms".to_owned(),
        percentile(&rust.total, 0.99).as_secs_f64() * 1e3,
    ));
    if let Some(mut py) = python {
        delay_row("another process (Python 0.5.0 `replace`)", &mut py);
    }
    Ok(Section {
        markdown: md,
        ratios,
    })
}

/// Cached hits through a coordinator over a `CachedStore`, then raw `GET`s of the same
/// keys, both at concurrency 64.
async fn throughput(
    ctx: &Ctx,
    prefix: &str,
) -> Result<(Stats, Stats, Stats, idempotency_redis::cache::CacheStats), Box<dyn std::error::Error>>
{
    let store = connect(ctx, prefix).await?;
    let raw_client = store.connection().client().clone();
    let cached = CachedStore::new(store, CacheConfig::default()).await?;
    let coordinator = Arc::new(Coordinator::builder(cached.clone()).build()?);
    let keys: Arc<Vec<String>> = Arc::new((0..CONCURRENCY).map(|i| format!("k{i}")).collect());
    for key in keys.iter() {
        let _: Order = coordinator
            .call(OP, Some(key))
            .run(|| async {
                Ok::<_, IdempotencyError>(Order {
                    order_id: 12_345,
                    status: "created".into(),
                    amount: 99.95,
                })
            })
            .await?;
        // The second call replays through Redis and fills the cache.
        let _: Order = coordinator
            .call(OP, Some(key))
            .run(|| async { Err::<Order, _>(IdempotencyError::configuration("ran twice", None)) })
            .await?;
    }
    let hit_calls = (ctx.options.calls * 10).max(50_000);
    let hit = {
        let coordinator = Arc::clone(&coordinator);
        let keys = Arc::clone(&keys);
        drive(CONCURRENCY, hit_calls, move |i| {
            let coordinator = Arc::clone(&coordinator);
            let keys = Arc::clone(&keys);
            async move {
                let key = &keys[(i % keys.len() as u64) as usize];
                let r: Result<Order, IdempotencyError> = coordinator
                    .call(OP, Some(key))
                    .run(|| async { Err(IdempotencyError::configuration("ran twice", None)) })
                    .await;
                assert!(r.is_ok(), "cached hit failed: {r:?}");
            }
        })
        .await
    };
    // The store's share of a cached hit: the claim alone (a lease made, the entry found
    // and cloned), without the coordinator's fingerprint check, decoding and metrics.
    let store_hit = {
        let cached = cached.clone();
        let ids: Arc<Vec<RecordId>> = Arc::new(
            keys.iter()
                .map(|k| RecordId::new(OP, k))
                .collect::<Result<_, _>>()?,
        );
        drive(CONCURRENCY, hit_calls, move |i| {
            let cached = cached.clone();
            let ids = Arc::clone(&ids);
            async move {
                let id = ids[(i % ids.len() as u64) as usize].clone();
                let lease = Lease::new(id, None, Clock::system());
                let claim = cached.claim(&lease, Duration::from_secs(30)).await;
                assert!(matches!(claim, Ok(Claim::Found(_))), "{claim:?}");
            }
        })
        .await
    };
    let redis_keys: Arc<Vec<String>> =
        Arc::new(keys.iter().map(|k| format!("{prefix}{OP}:{k}")).collect());
    let raw = drive(CONCURRENCY, ctx.options.calls, move |i| {
        let client = raw_client.clone();
        let keys = Arc::clone(&redis_keys);
        async move {
            let key = keys[(i % keys.len() as u64) as usize].as_str();
            let v: Value = client.get(key).await.expect("raw GET");
            assert!(!v.is_null());
        }
    })
    .await;
    Ok((hit, store_hit, raw, cached.stats()))
}

#[derive(Clone, Copy)]
enum Writer {
    Rust,
    Python,
}

/// A Python 0.5.0 process replacing records on request: one `key<TAB>n` line in, one
/// `ok` line out.
struct PythonWriter {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

const PYTHON_WRITER: &str = r#"
import asyncio, sys
from redis.asyncio import Redis, RedisCluster
from idempotency_kit.core.services.domain import IdempotencyDomainService
from idempotency_kit.infra.storage.redis.aio import RedisAsyncIdempotencyRepository

async def main():
    url, cluster, prefix, op = sys.argv[1:5]
    redis = RedisCluster.from_url(url) if cluster == "1" else Redis.from_url(url)
    repo = RedisAsyncIdempotencyRepository(redis, key_prefix=prefix)
    svc = IdempotencyDomainService()
    print("ready", flush=True)
    for line in sys.stdin:
        key, n = line.rstrip("\n").split("\t")
        await repo.replace(svc.create_record(op, key, {"n": int(n)}))
        print("ok", flush=True)
    await redis.aclose()

asyncio.run(main())
"#;

impl PythonWriter {
    fn start(ctx: &Ctx, prefix: &str) -> Result<Self, Box<dyn std::error::Error>> {
        // redis-py takes one seed node of a cluster as a plain redis:// URL.
        let url = match ctx.url.split_once("://") {
            Some((_, rest)) => format!("redis://{}", rest.split('?').next().unwrap_or(rest)),
            None => ctx.url.clone(),
        };
        let mut child = Command::new(idempotency_testkit::python::python_with_kit())
            .args(["-c", PYTHON_WRITER, &url])
            .arg(if ctx.options.cluster { "1" } else { "0" })
            .args([prefix, OP])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("python stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("python stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        if line.trim() != "ready" {
            return Err(format!("the Python writer did not start: {line:?}").into());
        }
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    /// Sends one replace (returns once written to the pipe).
    fn send(&mut self, key: &str, n: u64) -> std::io::Result<()> {
        writeln!(self.stdin, "{key}\t{n}")?;
        self.stdin.flush()
    }

    fn wait_ok(&mut self) -> std::io::Result<()> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        Ok(())
    }
}

impl Drop for PythonWriter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn record(key: &str, n: u64) -> Result<IdempotencyRecord, IdempotencyError> {
    idempotency_core::IdempotencyDomainService::default().create_record_raw(
        OP,
        key,
        RawValue::from_string(format!("{{\"n\":{n}}}"))
            .map_err(|e| IdempotencyError::configuration("bench record", Some(Box::new(e))))?,
        None,
        None,
    )
}

fn result_of(found: Option<&IdempotencyRecord>) -> Option<String> {
    found.map(|r| r.result().get().to_owned())
}

/// Reads `id` until `store` serves it from memory.
async fn warm(store: &CachedStore, id: &RecordId) -> Result<(), IdempotencyError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = store.stats().local_hits;
        store.get(id).await?;
        if store.stats().local_hits > before {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(IdempotencyError::configuration(
                "the cache never filled",
                None,
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Rounds of: every cache holds record `n`; the writer replaces it with `n + 1`; the
/// time until no cache serves `n` any more.
async fn invalidation_delay(
    ctx: &Ctx,
    prefix: &str,
    rounds: u64,
    writer: Writer,
) -> Result<Delays, Box<dyn std::error::Error>> {
    let mut caches = Vec::with_capacity(CACHES);
    for _ in 0..CACHES {
        caches.push(CachedStore::new(connect(ctx, prefix).await?, CacheConfig::default()).await?);
    }
    let rust_writer = connect(ctx, prefix).await?;
    let mut python = match writer {
        Writer::Python => Some(PythonWriter::start(ctx, prefix)?),
        Writer::Rust => None,
    };
    let key = match writer {
        Writer::Rust => "delay-rust",
        Writer::Python => "delay-python",
    };
    let id = RecordId::new(OP, key)?;
    rust_writer.replace(&record(key, 0)?).await?;
    let mut delays = Delays {
        total: Vec::new(),
        after_reply: Vec::new(),
    };
    for n in 0..rounds {
        // Every cache serves record n (Python writes `{"n": n}` as `{"n":n}` too).
        for cache in &caches {
            warm(cache, &id).await?;
        }
        let old = Some(format!("{{\"n\":{n}}}"));
        let sent = Instant::now();
        let replied = match &mut python {
            Some(p) => {
                p.send(key, n + 1)?;
                None
            }
            None => {
                rust_writer.replace(&record(key, n + 1)?).await?;
                Some(Instant::now())
            }
        };
        for cache in &caches {
            loop {
                let found = cache.get(&id).await?;
                if result_of(found.as_ref()) != old {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        let done = Instant::now();
        delays.total.push(done - sent);
        if let Some(replied) = replied {
            delays
                .after_reply
                .push(done.saturating_duration_since(replied));
        }
        if let Some(p) = &mut python {
            p.wait_ok()?;
        }
    }
    Ok(delays)
}
