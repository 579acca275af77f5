//! The benchmark program: the coordinator against raw Redis (through fred) and against
//! the Python idempotency-kit 0.5.0, side by side in one run, printed as a Markdown table.
//!
//! ```text
//! cargo run --release -p idempotency-bench                 # its own redis-server
//! cargo run --release -p idempotency-bench -- --cluster    # its own 3+3 cluster
//! REDIS_URL=redis://… cargo run --release -p idempotency-bench   # a server no one else uses
//! options: --calls N (default 20000)  --no-python  --quick
//! ```

mod commands;
mod load;
mod python;
mod scenarios;

use std::time::Duration;

use idempotency_coordinator::Coordinator;
use idempotency_redis::{ConnectOptions, RedisStore};
use idempotency_testkit::{RedisCluster, RedisServer};

use crate::commands::CommandCounter;

/// Command-line options.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) cluster: bool,
    pub(crate) calls: u64,
    pub(crate) python: bool,
    pub(crate) contended_keys: u64,
    pub(crate) bulk_rounds: u64,
}

fn options() -> Options {
    let mut o = Options {
        cluster: false,
        calls: 20_000,
        python: true,
        contended_keys: 50,
        bulk_rounds: 20,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--cluster" => o.cluster = true,
            "--no-python" => o.python = false,
            "--quick" => {
                o.calls = 2_000;
                o.contended_keys = 10;
                o.bulk_rounds = 3;
            }
            "--calls" => o.calls = args.next().and_then(|v| v.parse().ok()).unwrap_or(o.calls),
            other => eprintln!("ignoring unknown argument {other}"),
        }
    }
    o
}

/// What the scenarios share.
pub(crate) struct Ctx {
    pub(crate) coordinator: Coordinator<RedisStore>,
    pub(crate) store: RedisStore,
    pub(crate) counter: CommandCounter,
    pub(crate) url: String,
    pub(crate) run: String,
    pub(crate) options: Options,
    /// A coordinator whose connection runs through a counting proxy (standalone only):
    /// the commands the client sends, as opposed to what Redis runs inside scripts.
    pub(crate) counted: Option<(Coordinator<RedisStore>, idempotency_testkit::proxy::Proxy)>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = options();
    // Keep the servers alive for the whole run; dropped (stopped) at the end.
    let mut _server = None;
    let mut _cluster = None;
    let (url, ports) = if let Ok(url) = std::env::var("REDIS_URL") {
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or(6379);
        (url, vec![port])
    } else if options.cluster {
        let c = RedisCluster::start();
        let url = c.url();
        let ports = c.master_ports();
        _cluster = Some(c);
        (url, ports)
    } else {
        let s = RedisServer::start();
        let url = s.url();
        let ports = vec![s.port()];
        _server = Some(s);
        (url, ports)
    };
    let store = RedisStore::connect(
        &url,
        &ConnectOptions::default().with_command_timeout(Duration::from_secs(10)),
    )
    .await?;
    let coordinator = Coordinator::builder(store.clone()).build()?;
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        .to_string();
    let counted = if options.cluster {
        None
    } else {
        let target = std::net::SocketAddr::from(([127, 0, 0, 1], ports[0]));
        let proxy = idempotency_testkit::proxy::Proxy::start(target);
        let store = RedisStore::connect(&proxy.url(), &ConnectOptions::default()).await?;
        Some((Coordinator::builder(store).build()?, proxy))
    };
    let ctx = Ctx {
        coordinator,
        store,
        counter: CommandCounter::new(ports.clone()),
        url,
        run,
        options,
        counted,
    };
    let version = idempotency_testkit::resp::command(ports[0], &["INFO", "server"])
        .ok()
        .and_then(|r| {
            r.as_bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned())
        })
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("redis_version:").map(str::to_owned))
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    println!(
        "# idempotency-kit benchmark\n\nRedis {version} ({}), {cores} cores, {} calls per throughput row; command counts from INFO commandstats on the masters.\n",
        if ctx.options.cluster {
            "cluster, 3 masters + 3 replicas"
        } else {
            "standalone"
        },
        ctx.options.calls
    );
    let report = scenarios::run_all(&ctx).await?;
    println!("{report}");
    Ok(())
}
