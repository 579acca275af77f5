//! `idempotency`: the operator tool of idempotency-kit for Rust, over the admin API of
//! `idempotency-redis` ([`idempotency_redis::admin`]) for Redis URLs and of
//! `idempotency-postgres` ([`idempotency_postgres::admin`]) for `postgres://` ones.
//!
//! ```text
//! idempotency [--url URL] [--settings FILE] [--prefix P] [--cluster] [--json] <command>
//!   inspect OP KEY
//!   list [--operation OP] [--status pending|completed|stored-error] [--limit N]
//!   evict OP KEY [--force]
//!   stats [--operation OP] [--sample N]
//!   watch OP KEY [--timeout SECS]
//! ```
//!
//! Exit codes: 0 ok; 1 not found, or evict refused; 2 usage or configuration (a bad URL
//! included); 3 connection or Redis failure; 4 a value that is not a record; 5 watch
//! timed out. See `docs/operations.md`.
//!
//! `--url` falls back to `REDIS_URL`, then `DATABASE_URL`.

mod connect;
mod escape;
mod failure;
mod postgres;
mod render;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use idempotency_core::{RecordId, RecordStatus};
use idempotency_redis::admin::{Admin, Eviction, ListFilter, StatsOptions, WatchOutcome};

use crate::connect::{Backend, Target};
use crate::failure::Failure;

/// Inspect, list, evict, count and watch idempotency records in Redis (records of
/// idempotency-kit for Rust and of the Python idempotency-kit 0.5.0) or Postgres.
#[derive(Debug, Parser)]
#[command(name = "idempotency", version)]
struct Cli {
    /// Redis URL (redis://, rediss://, redis-cluster://host:port?node=host:port,
    /// redis-sentinel://) or Postgres URL (postgres://, postgresql://); else `REDIS_URL`,
    /// else `DATABASE_URL`.
    #[arg(long, global = true, env = "REDIS_URL", hide_env_values = true)]
    url: Option<String>,
    /// The services' settings file (JSON, as the services load it): only its key prefix
    /// is used (it has no Redis URL field).
    #[arg(long, global = true, value_name = "FILE")]
    settings: Option<PathBuf>,
    /// Key prefix (default: the settings file's, else `idempotency:`).
    #[arg(long, global = true)]
    prefix: Option<String>,
    /// Treat a redis:// URL as a cluster seed (same as a redis-cluster:// URL).
    #[arg(long, global = true)]
    cluster: bool,
    /// JSON output (one object per line for list).
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for the connection and for each command.
    #[arg(long, global = true, default_value_t = 3.0, value_name = "SECS")]
    connect_timeout: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything about one key: status, owner, timestamps, the TTL Redis holds, result.
    Inspect {
        /// Operation name.
        operation: String,
        /// Idempotency key.
        key: String,
    },
    /// Lists records with SCAN (every master of a cluster), streaming.
    List {
        /// Only this operation.
        #[arg(long)]
        operation: Option<String>,
        /// Only this status.
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        /// At most this many records.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Removes a completed or unreadable record; a live reservation only with --force.
    Evict {
        /// Operation name.
        operation: String,
        /// Idempotency key.
        key: String,
        /// Also remove a live reservation (its owner may still be running).
        #[arg(long)]
        force: bool,
    },
    /// Counts by operation and status, a TTL histogram, memory.
    Stats {
        /// Only this operation.
        #[arg(long)]
        operation: Option<String>,
        /// Examine at most this many keys; past it the output says it is a sample (Redis;
        /// Postgres counts every row exactly).
        #[arg(long, default_value_t = 10_000, value_name = "N")]
        sample: usize,
    },
    /// Waits until the key completes or is released, then prints the outcome.
    Watch {
        /// Operation name.
        operation: String,
        /// Idempotency key.
        key: String,
        /// Give up after this many seconds (exit 5).
        #[arg(long, default_value_t = 300.0, value_name = "SECS")]
        timeout: f64,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StatusArg {
    Pending,
    Completed,
    /// A failure the caller chose to store (written by this kit only).
    StoredError,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Usage errors exit 2; --help and --version exit 0.
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            err(&format!("error: cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            err(&failure.to_string());
            failure.exit_code()
        }
    }
}

fn seconds(value: f64, name: &str) -> Result<Duration, Failure> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| Failure::Usage(format!("{name} must be a positive number of seconds")))
}

fn id(operation: &str, key: &str) -> Result<RecordId, Failure> {
    RecordId::new(operation, key).map_err(|e| Failure::from_kit(&e))
}

/// Prints a line to stdout; a closed pipe (`| head`) ends the output quietly.
fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", escape::line(line));
    let _ = stdout.flush();
}

/// Prints a line to stderr, quietly when stderr is closed.
fn err(line: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{}", escape::line(line));
}

async fn run(cli: &Cli) -> Result<(), Failure> {
    // `--url`, else `REDIS_URL` (clap), else `DATABASE_URL`.
    let database_url = std::env::var("DATABASE_URL").ok();
    let target = Target {
        url: cli.url.as_deref().or(database_url.as_deref()),
        settings: cli.settings.as_deref(),
        prefix: cli.prefix.as_deref(),
        cluster: cli.cluster,
        timeout: seconds(cli.connect_timeout, "--connect-timeout")?,
    };
    // Arguments are checked before connecting, so a typo never waits for a timeout.
    match &cli.command {
        Command::Inspect { operation, key } => {
            let id = id(operation, key)?;
            match target.connect().await? {
                Backend::Redis(admin) => inspect(&admin, &id, cli.json).await,
                Backend::Postgres(admin) => postgres::inspect(&admin, &id, cli.json).await,
            }
        }
        Command::List {
            operation,
            status,
            limit,
        } => {
            let status = status.map(|status| match status {
                StatusArg::Pending => RecordStatus::Pending,
                StatusArg::Completed => RecordStatus::Completed,
                StatusArg::StoredError => RecordStatus::StoredError,
            });
            match target.connect().await? {
                Backend::Redis(admin) => {
                    let mut filter = ListFilter::new();
                    if let Some(op) = operation {
                        filter = filter.operation(op.clone());
                    }
                    if let Some(status) = status {
                        filter = filter.status(status);
                    }
                    if let Some(limit) = limit {
                        filter = filter.limit(*limit);
                    }
                    list(&admin, filter, cli.json).await
                }
                Backend::Postgres(admin) => {
                    let filter = postgres::filter(operation.as_deref(), status, *limit);
                    postgres::list(&admin, filter, cli.json).await
                }
            }
        }
        Command::Evict {
            operation,
            key,
            force,
        } => {
            let id = id(operation, key)?;
            match target.connect().await? {
                Backend::Redis(admin) => evict(&admin, &id, *force, cli.json).await,
                Backend::Postgres(admin) => postgres::evict(&admin, &id, *force, cli.json).await,
            }
        }
        Command::Stats { operation, sample } => match target.connect().await? {
            Backend::Redis(admin) => {
                let mut options = StatsOptions::new().max_keys(*sample);
                if let Some(op) = operation {
                    options = options.operation(op.clone());
                }
                let stats = admin
                    .stats(&options)
                    .await
                    .map_err(|e| Failure::from_kit(&e))?;
                if cli.json {
                    out(&stats.to_json().to_string());
                } else {
                    out(render::stats(&stats, options.max_keys_value()).trim_end());
                }
                Ok(())
            }
            Backend::Postgres(admin) => {
                postgres::stats(&admin, operation.as_deref(), cli.json).await
            }
        },
        Command::Watch {
            operation,
            key,
            timeout,
        } => {
            let id = id(operation, key)?;
            let timeout = seconds(*timeout, "--timeout")?;
            match target.connect().await? {
                Backend::Redis(admin) => watch(&admin, &id, timeout, cli.json).await,
                Backend::Postgres(admin) => postgres::watch(&admin, &id, timeout, cli.json).await,
            }
        }
    }
}

async fn inspect(admin: &Admin, id: &RecordId, json: bool) -> Result<(), Failure> {
    let Some(found) = admin.inspect(id).await.map_err(|e| Failure::from_kit(&e))? else {
        return Err(Failure::NotFound(format!(
            "no record under {}",
            escape::field(&admin.store().redis_key(id))
        )));
    };
    if json {
        out(&found.to_json_text());
    } else {
        out(render::inspection(&found).trim_end());
    }
    if found.is_unreadable() {
        return Err(Failure::Data(format!(
            "{} holds a value that is not a record ({})",
            escape::field(&found.redis_key),
            found.status_label()
        )));
    }
    Ok(())
}

async fn list(admin: &Admin, filter: ListFilter, json: bool) -> Result<(), Failure> {
    let limit = filter.limit_value();
    let mut pages = admin.list(filter);
    let mut shown = 0usize;
    if !json {
        out(render::LIST_HEADER);
    }
    while let Some(page) = pages.next_page().await.map_err(|e| Failure::from_kit(&e))? {
        for found in &page {
            shown += 1;
            if json {
                out(&found.summary_json().to_string());
            } else {
                out(&render::list_row(found));
            }
        }
    }
    if !json {
        let stopped = if limit.is_some_and(|l| shown >= l) {
            " (limit reached)"
        } else {
            ""
        };
        out(&format!(
            "{shown} record(s){stopped}; {} key(s) scanned",
            pages.scanned()
        ));
    }
    Ok(())
}

async fn evict(admin: &Admin, id: &RecordId, force: bool, json: bool) -> Result<(), Failure> {
    let eviction = admin
        .evict(id, force)
        .await
        .map_err(|e| Failure::from_kit(&e))?;
    match eviction {
        Eviction::Removed { removed, forced } => {
            if json {
                out(&serde_json::json!({
                    "evicted": true,
                    "forced": forced,
                    "removed": removed.to_json(),
                })
                .to_string());
            } else if forced {
                out(&format!(
                    "evicted {}: a LIVE reservation of owner {} (forced; its owner may still be running)",
                    escape::field(&removed.redis_key),
                    escape::field(&removed.owner_label())
                ));
            } else {
                out(&format!(
                    "evicted {}: {} record, owner {}, {} bytes",
                    escape::field(&removed.redis_key),
                    removed.status_label(),
                    escape::field(&removed.owner_label()),
                    removed.raw.len()
                ));
            }
            Ok(())
        }
        Eviction::NotFound { redis_key } => Err(Failure::NotFound(format!(
            "no record under {}",
            escape::field(&redis_key)
        ))),
        Eviction::LiveReservation(found) => {
            if json {
                out(&serde_json::json!({
                    "evicted": false,
                    "reason": "live_reservation",
                    "record": found.summary_json(),
                })
                .to_string());
            }
            Err(Failure::Refused(format!(
                "{} is a live reservation of owner {} (redis ttl {}); pass --force to remove it",
                escape::field(&found.redis_key),
                escape::field(&found.owner_label()),
                render::ttl(found.pttl)
            )))
        }
        Eviction::Changed(found) => Err(Failure::Refused(format!(
            "{} changed while it was being evicted; nothing was removed (inspect it again)",
            escape::field(&found.redis_key)
        ))),
        other => Err(Failure::Data(format!(
            "unexpected eviction outcome: {other:?}"
        ))),
    }
}

async fn watch(admin: &Admin, id: &RecordId, timeout: Duration, json: bool) -> Result<(), Failure> {
    let start = Instant::now();
    // Says whose reservation it waits for (tests and people both read it).
    let outcome = admin
        .watch_with(id, timeout, |found| {
            err(&format!(
                "waiting for {} (pending, owner {}, redis ttl {})",
                escape::field(&found.redis_key),
                escape::field(&found.owner_label()),
                render::ttl(found.pttl)
            ));
        })
        .await
        .map_err(|e| Failure::from_kit(&e))?;
    let waited = start.elapsed();
    let redis_key = escape::field(&admin.store().redis_key(id)).into_owned();
    let report = |outcome: &str, record: Option<serde_json::Value>| {
        if json {
            out(&serde_json::json!({
                "outcome": outcome,
                "waited_ms": u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                "record": record,
            })
            .to_string());
        }
    };
    match outcome {
        WatchOutcome::Completed(found) => {
            report("completed", Some(found.to_json()));
            if !json {
                out(&format!(
                    "completed after {:.1}s\n{}",
                    waited.as_secs_f64(),
                    render::inspection(&found).trim_end()
                ));
            }
            Ok(())
        }
        WatchOutcome::Released => {
            report("released", None);
            if !json {
                out(&format!(
                    "released after {:.1}s: {redis_key} is gone (its owner released it or its lease ran out)",
                    waited.as_secs_f64()
                ));
            }
            Ok(())
        }
        WatchOutcome::NotFound => {
            report("not_found", None);
            Err(Failure::NotFound(format!("no record under {redis_key}")))
        }
        WatchOutcome::Unreadable(found) => {
            report("unreadable", Some(found.to_json()));
            Err(Failure::Data(format!(
                "{redis_key} holds a value that is not a record ({})",
                found.status_label()
            )))
        }
        WatchOutcome::TimedOut(found) => {
            report("timed_out", Some(found.summary_json()));
            Err(Failure::TimedOut(format!(
                "{redis_key} is still pending after {:.1}s (owner {})",
                waited.as_secs_f64(),
                escape::field(&found.owner_label())
            )))
        }
        other => Err(Failure::Data(format!(
            "unexpected watch outcome: {other:?}"
        ))),
    }
}
