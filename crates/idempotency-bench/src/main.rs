//! The benchmark program: the coordinator against raw Redis (through fred) and against
//! the Python idempotency-kit 0.5.0, side by side in one run, printed as a Markdown table.
//!
//! ```text
//! cargo run --release -p idempotency-bench                 # its own redis-server
//! cargo run --release -p idempotency-bench -- --cluster    # its own 3+3 cluster
//! REDIS_URL=redis://… cargo run --release -p idempotency-bench   # a server no one else uses
//! options: --calls N (default 20000)  --no-python  --no-postgres  --quick  --coalesce
//!          --only throughput,contended,storm,bulk,cache,cpu,scale,postgres (sections;
//!          scale is skipped by --quick; postgres starts its own throwaway server)
//! ```
//!
//! The last lines are a summary: the hot-key storm, then the hit, miss, cached-hit and
//! bulk ratios of this run, one per line.

mod commands;
mod load;
mod python;
mod scenarios;
mod storm;

/// A section of the report.
pub(crate) struct Section {
    /// Its Markdown (a heading, a table, notes).
    pub(crate) markdown: String,
    /// Ratios for the summary, `(name, value)`: `hit@64`, `miss@64`, `get_many`,
    /// `save_many`; a bench module's ratio named `cached-hit…` fills the cached-hit line.
    pub(crate) ratios: Vec<(String, f64)>,
}

/// Bench modules beyond the built-in scenarios, one line each: `name,` declares
/// `src/name.rs`, which provides `pub(crate) async fn run(ctx: &Ctx) -> Section`; its
/// section is printed after the built-in ones and its ratios join the summary.
macro_rules! bench_modules {
    ($($name:ident,)*) => {
        $(mod $name;)*

        async fn module_sections(ctx: &Ctx) -> Vec<Section> {
            #[allow(unused_mut)]
            let mut sections = Vec::new();
            $(sections.push($name::run(ctx).await);)*
            let _ = ctx;
            sections
        }
    };
}

bench_modules! {
    // The local cache (src/cache.rs).
    cache,
    // CPU per call of the hit and its raw command (src/cpu.rs).
    cpu,
    // A million live records, and memory per record (src/scale.rs).
    scale,
    // Postgres against its raw statements, plain transactions and Redis (src/postgres.rs).
    postgres,
}

use std::time::Duration;

use idempotency_coordinator::Coordinator;
use idempotency_redis::{ConnectOptions, RedisStore};
use idempotency_testkit::{RedisCluster, RedisServer, ServerOptions};

use crate::commands::CommandCounter;

/// Command-line options.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) cluster: bool,
    pub(crate) calls: u64,
    pub(crate) python: bool,
    /// Whether the Postgres section runs (`--no-postgres`: not).
    pub(crate) postgres: WithPostgres,
    pub(crate) contended_keys: u64,
    pub(crate) bulk_rounds: u64,
    /// Storm rounds (one key each) per setting.
    pub(crate) storm_rounds: u64,
    /// Whether the coordinator under test coalesces concurrent calls (default: no, as
    /// the library's default; the contended and storm sections measure both).
    pub(crate) coalesce: bool,
    /// The sections to run (`None`: all).
    pub(crate) only: Option<Vec<String>>,
    /// `--quick`: fewer calls, and the slow sections skipped.
    pub(crate) pace: Pace,
}

/// Whether the Postgres section runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WithPostgres {
    /// On a throwaway server (skipped, saying why, when Postgres is not installed).
    Run,
    /// `--no-postgres`.
    Skip,
}

/// How long the run may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pace {
    /// Every section, with the full number of calls.
    Full,
    /// `--quick`: under two minutes; slow sections say they were skipped.
    Quick,
}

impl Options {
    /// Whether the section `name` runs.
    pub(crate) fn wants(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o == name))
    }
}

fn options() -> Options {
    let mut o = Options {
        cluster: false,
        calls: 20_000,
        python: true,
        postgres: WithPostgres::Run,
        contended_keys: 50,
        bulk_rounds: 20,
        storm_rounds: 10,
        coalesce: false,
        only: None,
        pace: Pace::Full,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--cluster" => o.cluster = true,
            "--no-python" => o.python = false,
            "--no-postgres" => o.postgres = WithPostgres::Skip,
            "--coalesce" => o.coalesce = true,
            "--quick" => {
                o.pace = Pace::Quick;
                o.calls = 2_000;
                o.contended_keys = 10;
                o.bulk_rounds = 3;
                o.storm_rounds = 3;
            }
            "--calls" => o.calls = args.next().and_then(|v| v.parse().ok()).unwrap_or(o.calls),
            "--only" => {
                o.only = args
                    .next()
                    .map(|v| v.split(',').map(str::to_owned).collect());
            }
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

/// The servers the benchmark starts: `DEBUG` allowed from loopback, so that the scale
/// section can wait for the keyspace's hash tables to finish rehashing (src/scale.rs).
fn bench_server() -> ServerOptions {
    ServerOptions {
        args: vec!["--enable-debug-command".to_owned(), "local".to_owned()],
        ..ServerOptions::default()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--storm-worker") {
        return storm::worker(&args[2..]).await;
    }
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
        let c = RedisCluster::start_with_options(3, 1, &bench_server());
        let url = c.url();
        let ports = c.master_ports();
        _cluster = Some(c);
        (url, ports)
    } else {
        let s = RedisServer::start_with(&bench_server());
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
    let coordinator = Coordinator::builder(store.clone())
        .coalesce(options.coalesce)
        .build()?;
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
        Some((
            Coordinator::builder(store)
                .coalesce(options.coalesce)
                .build()?,
            proxy,
        ))
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
        "# idempotency-kit benchmark\n\nRedis {version} ({}), {cores} cores, {} calls per throughput row, coalescing {}; command counts from INFO commandstats on the masters.\n",
        if ctx.options.cluster {
            "cluster, 3 masters + 3 replicas"
        } else {
            "standalone"
        },
        ctx.options.calls,
        if ctx.options.coalesce { "on" } else { "off" },
    );
    let mut sections = vec![scenarios::run_all(&ctx).await?];
    let storm_stats = if ctx.options.wants("storm") {
        let (markdown, stats) = storm::run(&ctx)?;
        println!("{markdown}");
        Some(stats)
    } else {
        None
    };
    for section in module_sections(&ctx).await {
        println!("{}", section.markdown);
        sections.push(section);
    }
    print!("{}", summary(&sections, storm_stats.as_ref()));
    Ok(())
}

/// The last lines: the storm, then the hit, miss, cached-hit and bulk ratios.
fn summary(sections: &[Section], storm: Option<&storm::StormStats>) -> String {
    use std::fmt::Write as _;
    let ratio = |prefix: &str| {
        sections
            .iter()
            .flat_map(|s| &s.ratios)
            .find(|(name, _)| name.starts_with(prefix))
            .map(|(name, value)| (name.clone(), *value))
    };
    let mut out = String::from("## Summary\n\n");
    if let Some(s) = storm {
        let _ = writeln!(
            out,
            "storm (2 × 1000 callers, one key): {:.4} commands per caller, wake-up p99 {:.2} ms, action runs per key {}",
            s.commands_per_caller, s.wake_p99_ms, s.max_runs
        );
    }
    for (prefix, label) in [
        ("hit@64", "hit@64 Rust/raw"),
        ("miss@64", "miss@64 Rust/raw"),
        ("cached-hit", "cached-hit@64 cached/raw GET"),
        ("cpu-hit", "hit@64 client CPU per call raw/Rust"),
        ("scale hit", "hit@64 with 1M records / empty"),
        ("scale miss", "miss@64 with 1M records / empty"),
        ("get_many", "get_many Rust/raw"),
        ("save_many", "save_many Rust/raw"),
        ("pg hit/raw", "Postgres hit/raw SELECT"),
        (
            "pg tx/plain",
            "Postgres transactional call/plain transaction",
        ),
        ("pg/redis hit", "hit Postgres/Redis"),
    ] {
        match ratio(prefix) {
            Some((_, value)) => {
                let _ = writeln!(out, "{label}: {value:.2}");
            }
            None => {
                let _ = writeln!(out, "{label}: skipped");
            }
        }
    }
    out
}
