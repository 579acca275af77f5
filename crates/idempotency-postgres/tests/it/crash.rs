//! Transactional calls in real processes killed with SIGKILL at every step, then retried
//! by a restarted process: each effect happens once, no key stays stuck, every retry gets
//! the committed result.
//!
//! The worker is this test binary run again with [`WORKER_ENV`] set, selecting the
//! [`crash_worker`] test: it makes one [`PostgresStore::run_in_transaction`] call whose
//! effect is a row in the business table `crash_effects`, reports its progress on stdout
//! (`@@crash <marker> …`, found anywhere in a line: libtest prints `test name ... `
//! before the test's own output) and, at the step it is told, blocks on a stdin read so
//! that the kill lands at that step and no other:
//!
//! | step | the kill lands |
//! | --- | --- |
//! | `before_effect` | after the claim, before the action's write |
//! | `before_commit` | after the write, before the commit |
//! | `before_reply` | after the commit, before the caller got the value |
//! | `duplicate` | while a second worker waits on the first's key: the first or the waiter |
//!
//! Every call (killed or not) and every execution is logged in a [`History`] on the wall
//! clock the processes share; a killed worker's execution counts as a side effect only
//! when its row was committed (the table is the truth), and the history must show one
//! side effect per key and one value.
//!
//! `IDEMPOTENCY_CRASH_RUNS` sets the runs per step (default 50, about 10 s; a run takes a
//! few tens of milliseconds).

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use idempotency_core::RecordId;
use idempotency_postgres::{PostgresStore, TransactionOptions};
use idempotency_testkit::history::text::wall_now;
use idempotency_testkit::history::{Attachment, Call, History};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::common::fixture;

/// Set in a worker's environment: the run's parameters, `<url>\t<key>\t<pause>`.
const WORKER_ENV: &str = "IDEMPOTENCY_CRASH_WORKER";
/// The runs per step.
const RUNS_ENV: &str = "IDEMPOTENCY_CRASH_RUNS";
const DEFAULT_RUNS: usize = 50;
/// How long a marker (or a retry's reply) may take before the key counts as stuck.
const MARKER_TIMEOUT: Duration = Duration::from_secs(20);
const OPERATION: &str = "crash.order";

/// Where a worker blocks (and the test kills it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pause {
    BeforeEffect,
    BeforeCommit,
    BeforeReply,
    Never,
}

impl Pause {
    fn name(self) -> &'static str {
        match self {
            Self::BeforeEffect => "before_effect",
            Self::BeforeCommit => "before_commit",
            Self::BeforeReply => "before_reply",
            Self::Never => "never",
        }
    }

    fn parse(name: &str) -> Self {
        match name {
            "before_effect" => Self::BeforeEffect,
            "before_commit" => Self::BeforeCommit,
            "before_reply" => Self::BeforeReply,
            "never" => Self::Never,
            other => panic!("unknown pause {other:?}"),
        }
    }
}

fn nanos(at: Duration) -> u128 {
    at.as_nanos()
}

fn mark(marker: &str) {
    // One write per line, flushed: the test reads it while this process blocks.
    let mut out = std::io::stdout().lock();
    writeln!(out, "@@crash {marker}").expect("write a marker");
    out.flush().expect("flush a marker");
}

/// Blocks until the test writes a line (or closes stdin).
fn pause_here(pause: Pause) {
    mark(&format!("pause {}", pause.name()));
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

/// The worker role; a no-op unless [`WORKER_ENV`] is set.
#[test]
fn crash_worker() {
    let Ok(params) = std::env::var(WORKER_ENV) else {
        return;
    };
    let mut parts = params.split('\t');
    let (Some(url), Some(key), Some(pause)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("malformed {WORKER_ENV}: {params:?}");
    };
    let pause = Pause::parse(pause);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await
            .expect("connect");
        let store = PostgresStore::new(pool);
        let id = RecordId::new(OPERATION, key).expect("a record id");
        mark("calling");
        let outcome = store
            .run_in_transaction(&id, None, TransactionOptions::new(), |conn, ctx| {
                Box::pin(async move {
                    mark(&format!("started {}", nanos(wall_now())));
                    if pause == Pause::BeforeEffect {
                        tokio::task::spawn_blocking(move || pause_here(pause))
                            .await
                            .expect("pause");
                    }
                    let value: i64 = sqlx::query_scalar(
                        "INSERT INTO crash_effects (idem_key) VALUES ($1) RETURNING id",
                    )
                    .bind(ctx.id().key())
                    .fetch_one(&mut *conn)
                    .await?;
                    mark(&format!("effect {value} {}", nanos(wall_now())));
                    if pause == Pause::BeforeCommit {
                        tokio::task::spawn_blocking(move || pause_here(pause))
                            .await
                            .expect("pause");
                    }
                    Ok::<_, sqlx::Error>(value)
                })
            })
            .await
            .expect("the call");
        if pause == Pause::BeforeReply {
            tokio::task::spawn_blocking(move || pause_here(pause))
                .await
                .expect("pause");
        }
        let how = if outcome.is_replayed() {
            "replayed"
        } else {
            "ran"
        };
        mark(&format!("reply {} {how}", outcome.value()));
    });
}

/// A worker process and the markers it printed.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Markers read so far (without the `@@crash ` prefix).
    seen: Vec<String>,
    caller: u64,
    start: Duration,
}

impl Worker {
    fn spawn(url: &str, key: &str, pause: Pause, caller: u64) -> Self {
        let exe = std::env::current_exe().expect("the test binary");
        let start = wall_now();
        let mut child = Command::new(exe)
            .args([
                "crash::crash_worker",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WORKER_ENV, format!("{url}\t{key}\t{}", pause.name()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a worker");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some((_, marker)) = line.split_once("@@crash ")
                    && tx.send(marker.to_owned()).is_err()
                {
                    break;
                }
            }
        });
        Self {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            caller,
            start,
        }
    }

    /// Waits for the marker starting with `word`; its other fields.
    fn wait_for(&mut self, word: &str) -> Vec<String> {
        let deadline = Instant::now() + MARKER_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(marker) => {
                    self.seen.push(marker.clone());
                    let mut fields = marker.split(' ').map(str::to_owned);
                    if fields.next().as_deref() == Some(word) {
                        return fields.collect();
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "caller {}: no {word:?} within {MARKER_TIMEOUT:?} (a stuck key?); seen {:?}",
                    self.caller, self.seen
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "caller {}: exited before {word:?}; seen {:?}",
                    self.caller, self.seen
                ),
            }
        }
    }

    /// The fields of the first marker seen starting with `word`.
    fn seen(&self, word: &str) -> Option<Vec<String>> {
        self.seen.iter().find_map(|m| {
            let mut fields = m.split(' ');
            (fields.next() == Some(word)).then(|| fields.map(str::to_owned).collect())
        })
    }

    /// Lets a paused worker go on.
    fn resume(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("resume the worker");
        stdin.flush().expect("resume the worker");
    }

    /// SIGKILL, then reaps it; logs the call as abandoned, with its execution (a side
    /// effect if its row is among the `committed` ones).
    fn kill(mut self, history: &History, key: &str, committed: &[i64]) {
        self.child.kill().expect("SIGKILL the worker");
        let end = wall_now();
        self.child.wait().expect("reap the worker");
        // Markers printed before the kill (a started action may have printed its effect).
        while let Ok(marker) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(marker);
        }
        self.log_execution(history, key, committed);
        history.call(Call {
            caller: self.caller,
            key: key.to_owned(),
            start: self.start,
            end,
            outcome: None,
            attachment: Attachment::Attached,
        });
    }

    /// Waits for the reply, then for the process; logs the call (with the rows
    /// `committed` returns once the reply came) and returns the value and whether it was
    /// replayed.
    fn reply(
        mut self,
        history: &History,
        key: &str,
        committed: impl FnOnce() -> Vec<i64>,
    ) -> (i64, bool) {
        let fields = self.wait_for("reply");
        let end = wall_now();
        let value: i64 = fields[0].parse().expect("a value");
        let replayed = fields[1] == "replayed";
        let status = self.child.wait().expect("reap the worker");
        assert!(status.success(), "caller {}: {status}", self.caller);
        self.log_execution(history, key, &committed());
        history.call(Call {
            caller: self.caller,
            key: key.to_owned(),
            start: self.start,
            end,
            outcome: Some(Ok(u64::try_from(value).expect("a positive id"))),
            attachment: Attachment::Attached,
        });
        (value, replayed)
    }

    /// This worker's execution, if its action started: a side effect only when its
    /// row is among the committed ones (an uncommitted write did not happen).
    fn log_execution(&self, history: &History, key: &str, committed: &[i64]) {
        let Some(started) = self.seen("started") else {
            return;
        };
        let started = Duration::from_nanos(started[0].parse().expect("a time"));
        history.started_at(self.caller, key, started);
        if let Some(effect) = self.seen("effect") {
            let value: i64 = effect[0].parse().expect("a value");
            let at = Duration::from_nanos(effect[1].parse().expect("a time"));
            if committed.contains(&value) {
                history.effect_at(
                    self.caller,
                    key,
                    u64::try_from(value).expect("a positive id"),
                    at,
                );
            }
        }
    }
}

/// The test's side: the database, the history, and what went wrong per key (reported
/// after the history's own verdict, so a broken store shows both).
struct Harness {
    runtime: tokio::runtime::Runtime,
    pool: PgPool,
    url: String,
    history: History,
    problems: Vec<String>,
}

impl Harness {
    /// The ids of the committed rows of `key`.
    fn committed(&self, key: &str) -> Vec<i64> {
        self.runtime.block_on(async {
            sqlx::query_scalar("SELECT id FROM crash_effects WHERE idem_key = $1 ORDER BY id")
                .bind(key)
                .fetch_all(&self.pool)
                .await
                .expect("read the effects")
        })
    }

    /// Waits until a backend of the database waits on a lock (the duplicate, on the
    /// key's advisory lock).
    fn wait_for_lock_waiter(&self) {
        let deadline = Instant::now() + MARKER_TIMEOUT;
        self.runtime.block_on(async {
            loop {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .fetch_one(&self.pool)
                .await
                .expect("read pg_stat_activity");
                if waiting > 0 {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "the duplicate never waited on the key"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }

    fn spawn(&self, key: &str, pause: Pause, caller: u64) -> Worker {
        Worker::spawn(&self.url, key, pause, caller)
    }

    /// One run on `key` killed at `step`, then its retry by a restarted worker.
    fn killed_run(&mut self, key: &str, step: Pause, caller: u64) {
        let mut first = self.spawn(key, step, caller);
        first.wait_for("pause");
        first.kill(&self.history, key, &self.committed(key));
        self.retry(key, caller + 1, step == Pause::BeforeReply);
    }

    /// A killed run while a duplicate waits on the key: even runs kill the owner (the
    /// duplicate then runs), odd runs kill the waiter (the owner then commits).
    fn duplicate_run(&mut self, key: &str, run: usize, caller: u64) {
        let mut owner = self.spawn(key, Pause::BeforeCommit, caller);
        owner.wait_for("pause");
        let mut waiter = self.spawn(key, Pause::Never, caller + 1);
        waiter.wait_for("calling");
        self.wait_for_lock_waiter();
        let (survivor, replayed) = if run.is_multiple_of(2) {
            owner.kill(&self.history, key, &self.committed(key));
            (
                "the waiter",
                waiter.reply(&self.history, key, || self.committed(key)).1,
            )
        } else {
            waiter.kill(&self.history, key, &self.committed(key));
            owner.resume();
            (
                "the owner",
                owner.reply(&self.history, key, || self.committed(key)).1,
            )
        };
        if replayed {
            self.problems.push(format!(
                "{key}: {survivor} replayed, but nothing had committed"
            ));
        }
        self.retry(key, caller + 2, true);
    }

    /// A restarted worker retries `key`: it completes (no stuck key), with the committed
    /// row's value, replayed when the row was already there.
    fn retry(&mut self, key: &str, caller: u64, was_committed: bool) {
        let before = self.committed(key);
        if before.len() != usize::from(was_committed) {
            self.problems.push(format!(
                "{key}: committed rows before the retry: {before:?} (expected {})",
                usize::from(was_committed)
            ));
        }
        let (value, replayed) =
            self.spawn(key, Pause::Never, caller)
                .reply(&self.history, key, || self.committed(key));
        let rows = self.committed(key);
        if rows != [value] {
            self.problems.push(format!(
                "{key}: the retry got {value}, the committed rows are {rows:?}"
            ));
        }
        if replayed != was_committed {
            self.problems.push(format!(
                "{key}: the retry replayed: {replayed}, a run had committed: {was_committed}"
            ));
        }
    }
}

#[test]
fn workers_killed_at_every_step_leave_one_effect_and_the_retry_gets_it() {
    let runs = std::env::var(RUNS_ENV)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_RUNS);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let f = runtime.block_on(fixture());
    runtime.block_on(async {
        sqlx::query(
            "CREATE TABLE crash_effects (id bigserial PRIMARY KEY, idem_key text NOT NULL)",
        )
        .execute(&f.pool)
        .await
        .expect("create the business table");
    });
    let mut harness = Harness {
        runtime,
        pool: f.pool.clone(),
        url: f.db.url(),
        history: History::new(),
        problems: Vec::new(),
    };
    let steps = [
        Some(Pause::BeforeEffect),
        Some(Pause::BeforeCommit),
        Some(Pause::BeforeReply),
        None,
    ];
    let mut caller = 0;
    let started = Instant::now();
    for step in steps {
        for run in 0..runs {
            caller += 10;
            let name = step.map_or("duplicate", Pause::name);
            let key = format!("{name}-{run}");
            match step {
                Some(step) => harness.killed_run(&key, step, caller),
                None => harness.duplicate_run(&key, run, caller),
            }
        }
    }
    let report = harness.history.check(|_| 0);
    eprintln!(
        "crash: {} calls ({} killed) on {} keys, {} committed effects, in {:?}",
        report.calls,
        report.cancelled,
        report.keys,
        report.executions,
        started.elapsed()
    );
    assert!(
        report.violations.is_empty(),
        "history violations: {:#?}",
        report.violations
    );
    // The checker lets an abandoned call after its effect excuse one more run (the
    // coordinator's cancellation rule); a transaction promises more: none.
    assert_eq!(report.double_runs, 0, "one effect per key: {report:?}");
    assert_eq!(report.executions, 4 * runs, "one committed effect per key");
    assert!(
        harness.problems.is_empty(),
        "{} problems: {:#?}",
        harness.problems.len(),
        harness.problems
    );
    let unfinished: i64 = harness.runtime.block_on(async {
        sqlx::query_scalar(
            "SELECT count(*) FROM idempotency_records
             WHERE operation = $1 AND status <> 'completed'",
        )
        .bind(OPERATION)
        .fetch_one(&f.pool)
        .await
        .expect("count unfinished records")
    });
    assert_eq!(unfinished, 0, "no record left unfinished");
    harness.runtime.block_on(f.pool.close());
}
