//! A throwaway sentinel deployment: a master, one replica and three sentinels, all on
//! free loopback ports (never 6379), stopped and their files removed when dropped.
//!
//! Sentinels are configured to fail over fast (`down-after-milliseconds` 1.5 s,
//! `failover-timeout` 6 s), so a killed master is replaced within a few seconds.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::resp::{self, Reply};
use crate::server::{RedisServer, ServerOptions, free_port, require_redis};

/// The service name the sentinels monitor.
pub const SENTINEL_SERVICE: &str = "idem-master";

/// How long without an answer before a sentinel calls the master down (ms).
const DOWN_AFTER_MS: u64 = 1_500;
/// The sentinels' failover timeout (ms).
const FAILOVER_TIMEOUT_MS: u64 = 6_000;

/// A master, a replica (`replicaof`) and three `redis-server --sentinel` processes
/// monitoring it with quorum 2.
#[derive(Debug)]
pub struct RedisSentinel {
    /// The data servers: `[0]` started as the master, `[1]` as its replica. Roles change
    /// with failovers: ask [`RedisSentinel::master_port`].
    servers: Vec<RedisServer>,
    sentinels: Vec<SentinelProcess>,
    dir: PathBuf,
}

/// One `redis-server --sentinel` process.
#[derive(Debug)]
struct SentinelProcess {
    port: u16,
    child: Option<Child>,
}

impl SentinelProcess {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn unique_dir() -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("idem-testkit-sentinel-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temporary directory for the sentinels");
    dir
}

/// Field `name` of a flat `[name, value, name, value, …]` reply (`SENTINEL MASTER`).
fn field(items: &[Reply], name: &str) -> Option<String> {
    items.chunks(2).find_map(|pair| match pair {
        [Reply::Bulk(Some(k)), Reply::Bulk(Some(v))] if k == name.as_bytes() => {
            Some(String::from_utf8_lossy(v).into_owned())
        }
        _ => None,
    })
}

fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

/// `INFO replication` of a server, or `None` when it does not answer.
fn replication_info(port: u16) -> Option<String> {
    match resp::command(port, &["INFO", "replication"]) {
        Ok(Reply::Bulk(Some(b))) => Some(String::from_utf8_lossy(&b).into_owned()),
        _ => None,
    }
}

impl RedisSentinel {
    /// Starts the master, the replica and three sentinels, and waits until the replica is
    /// in sync and every sentinel knows the master, the replica and the two other
    /// sentinels.
    ///
    /// # Panics
    /// When `redis-server` is missing (with an install hint) or the deployment does not
    /// come up within 60 s.
    pub fn start() -> Self {
        require_redis();
        let data_args = |extra: &[String]| {
            let mut args: Vec<String> = [
                // A replica asks for a full sync at once instead of after 5 s.
                "--repl-diskless-sync-delay",
                "0",
                // DEBUG SLEEP from loopback, to stall a master.
                "--enable-debug-command",
                "local",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            args.extend_from_slice(extra);
            ServerOptions {
                args,
                ..ServerOptions::default()
            }
        };
        let master = RedisServer::start_with(&data_args(&[]));
        let replica = RedisServer::start_with(&data_args(&[
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            master.port().to_string(),
        ]));
        let mut deployment = Self {
            servers: vec![master, replica],
            sentinels: Vec::new(),
            dir: unique_dir(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        deployment.wait_replica_in_sync(deadline);
        for i in 0..3 {
            let sentinel = deployment.spawn_sentinel(i);
            deployment.sentinels.push(sentinel);
        }
        deployment.wait_sentinels_ready(deadline);
        deployment
    }

    fn wait_replica_in_sync(&self, deadline: Instant) {
        let (master, replica) = (self.servers[0].port(), self.servers[1].port());
        loop {
            let replica_up = replication_info(replica)
                .is_some_and(|i| info_field(&i, "master_link_status").as_deref() == Some("up"));
            let master_sees_it = replication_info(master).is_some_and(|i| {
                info_field(&i, "slave0").is_some_and(|s| s.contains("state=online"))
            });
            if replica_up && master_sees_it {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the replica on port {replica} did not sync with the master on port {master}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn_sentinel(&self, index: usize) -> SentinelProcess {
        let master = self.servers[0].port();
        for _ in 0..5 {
            let port = free_port();
            let dir = self.dir.join(format!("sentinel-{index}"));
            std::fs::create_dir_all(&dir).expect("sentinel dir");
            let conf = dir.join("sentinel.conf");
            let mut text = String::new();
            let _ = writeln!(text, "port {port}");
            let _ = writeln!(text, "bind 127.0.0.1");
            let _ = writeln!(text, "protected-mode no");
            let _ = writeln!(text, "daemonize no");
            let _ = writeln!(text, "dir {}", dir.display());
            let _ = writeln!(text, "logfile sentinel.log");
            let _ = writeln!(
                text,
                "sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {master} 2"
            );
            let _ = writeln!(
                text,
                "sentinel down-after-milliseconds {SENTINEL_SERVICE} {DOWN_AFTER_MS}"
            );
            let _ = writeln!(
                text,
                "sentinel failover-timeout {SENTINEL_SERVICE} {FAILOVER_TIMEOUT_MS}"
            );
            let _ = writeln!(text, "sentinel parallel-syncs {SENTINEL_SERVICE} 1");
            std::fs::File::create(&conf)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .expect("write sentinel.conf");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server --sentinel (is redis-server installed?)");
            let mut sentinel = SentinelProcess {
                port,
                child: Some(child),
            };
            if wait_answers(&mut sentinel, Duration::from_secs(10)) {
                return sentinel;
            }
            // Another process took the port meanwhile: try another one.
            sentinel.kill();
        }
        panic!("redis-server --sentinel did not start after 5 attempts");
    }

    fn wait_sentinels_ready(&self, deadline: Instant) {
        loop {
            let not_ready: Vec<String> = self
                .sentinels
                .iter()
                .filter_map(|s| sentinel_not_ready(s.port).map(|why| format!("{}: {why}", s.port)))
                .collect();
            if not_ready.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels did not get ready: {not_ready:?} (logs in {})",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis-sentinel://127.0.0.1:{s1}?sentinelServiceName=…&node=127.0.0.1:{s2}&node=…`:
    /// every sentinel, for `RedisStore::connect`.
    pub fn url(&self) -> String {
        let mut url = format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName={SENTINEL_SERVICE}",
            self.sentinels[0].port
        );
        for s in &self.sentinels[1..] {
            let _ = write!(url, "&node=127.0.0.1:{}", s.port);
        }
        url
    }

    /// The monitored service's name.
    pub fn service_name(&self) -> &'static str {
        SENTINEL_SERVICE
    }

    /// The sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The data servers (the first one started as the master).
    pub fn servers(&self) -> &[RedisServer] {
        &self.servers
    }

    /// The data servers, mutably (to stop or restart one).
    pub fn servers_mut(&mut self) -> &mut [RedisServer] {
        &mut self.servers
    }

    /// The master's port as one sentinel sees it (`SENTINEL get-master-addr-by-name`),
    /// or `None` when it does not answer.
    pub fn master_port_by(&self, sentinel_port: u16) -> Option<u16> {
        match resp::command(
            sentinel_port,
            &["SENTINEL", "get-master-addr-by-name", SENTINEL_SERVICE],
        ) {
            Ok(Reply::Array(items)) => items
                .get(1)
                .and_then(Reply::as_bytes)
                .and_then(|p| String::from_utf8_lossy(p).parse().ok()),
            _ => None,
        }
    }

    /// The master's port according to the first sentinel that answers.
    ///
    /// # Panics
    /// When no sentinel answers.
    pub fn master_port(&self) -> u16 {
        self.sentinels
            .iter()
            .find_map(|s| self.master_port_by(s.port))
            .expect("no sentinel answered get-master-addr-by-name")
    }

    /// The port of the data server that is not the master now (per the sentinels).
    pub fn replica_port(&self) -> u16 {
        let master = self.master_port();
        self.servers
            .iter()
            .map(RedisServer::port)
            .find(|p| *p != master)
            .expect("two data servers")
    }

    /// The server on `port`.
    ///
    /// # Panics
    /// When no data server of this deployment listens there.
    pub fn server_mut(&mut self, port: u16) -> &mut RedisServer {
        self.servers
            .iter_mut()
            .find(|s| s.port() == port)
            .unwrap_or_else(|| panic!("no data server on port {port}"))
    }

    /// Kills the current master with SIGKILL (a crash: no goodbye, nothing saved) and
    /// returns its port.
    pub fn kill_master(&mut self) -> u16 {
        let port = self.master_port();
        self.server_mut(port).kill();
        port
    }

    /// Makes the current master unresponsive for `duration` (`DEBUG SLEEP`, sent from a
    /// background thread) and returns its port. The process stays: when it wakes up after
    /// a failover, the sentinels turn it into a replica of the new master.
    pub fn stall_master(&self, duration: Duration) -> u16 {
        let port = self.master_port();
        let secs = format!("{:.3}", duration.as_secs_f64());
        std::thread::spawn(move || {
            let _ = resp::command(port, &["DEBUG", "SLEEP", &secs]);
        });
        port
    }

    /// Sets every sentinel's `down-after-milliseconds`: a long one holds the failover of a
    /// dead master back (for instance while a test reads what the replica holds), a short
    /// one lets it proceed.
    ///
    /// # Panics
    /// When a running sentinel refuses the setting.
    pub fn set_down_after(&self, down_after: Duration) {
        let ms = down_after.as_millis().max(1).to_string();
        for s in &self.sentinels {
            let reply = resp::command(
                s.port,
                &[
                    "SENTINEL",
                    "SET",
                    SENTINEL_SERVICE,
                    "down-after-milliseconds",
                    &ms,
                ],
            );
            assert!(
                matches!(reply, Ok(Reply::Status(ref ok)) if ok == "OK"),
                "SENTINEL SET down-after-milliseconds on port {}: {reply:?}",
                s.port
            );
        }
    }

    /// The default `down-after-milliseconds` of this deployment.
    pub fn default_down_after() -> Duration {
        Duration::from_millis(DOWN_AFTER_MS)
    }

    /// Waits until every sentinel names a master other than `old_port`, the same one,
    /// and that server answers `ROLE` as a master; returns its port.
    ///
    /// # Panics
    /// When that does not happen by `timeout`.
    pub fn wait_failover(&self, old_port: u16, timeout: Duration) -> u16 {
        let deadline = Instant::now() + timeout;
        loop {
            let seen: Vec<Option<u16>> = self
                .sentinels
                .iter()
                .map(|s| self.master_port_by(s.port))
                .collect();
            if let Some(Some(new)) = seen.first()
                && *new != old_port
                && seen.iter().all(|p| *p == Some(*new))
                && is_master(*new)
            {
                return *new;
            }
            assert!(
                Instant::now() < deadline,
                "no failover away from port {old_port} in {timeout:?}: sentinels name {seen:?} (logs in {})",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a command on the current master.
    ///
    /// # Panics
    /// When it cannot be reached.
    pub fn master_cmd(&self, args: &[&str]) -> Reply {
        let port = self.master_port();
        resp::command(port, args)
            .unwrap_or_else(|e| panic!("redis command {args:?} on the master (port {port}): {e}"))
    }

    /// The directory holding the sentinels' configuration files and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Whether the server on `port` answers `ROLE` as a master.
pub fn is_master(port: u16) -> bool {
    matches!(resp::command(port, &["ROLE"]), Ok(Reply::Array(items))
        if items.first() == Some(&Reply::Bulk(Some(b"master".to_vec()))))
}

fn wait_answers(sentinel: &mut SentinelProcess, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(child) = sentinel.child.as_mut()
            && matches!(child.try_wait(), Ok(Some(_)))
        {
            return false;
        }
        if matches!(resp::command(sentinel.port, &["PING"]), Ok(Reply::Status(s)) if s == "PONG") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Why the sentinel on `port` cannot fail the master over yet, or `None` when it can.
fn sentinel_not_ready(port: u16) -> Option<String> {
    let items = match resp::command(port, &["SENTINEL", "MASTER", SENTINEL_SERVICE]) {
        Ok(Reply::Array(items)) => items,
        other => return Some(format!("SENTINEL MASTER answered {other:?}")),
    };
    let flags = field(&items, "flags").unwrap_or_default();
    let replicas = field(&items, "num-slaves").unwrap_or_default();
    let others = field(&items, "num-other-sentinels").unwrap_or_default();
    if flags != "master" || replicas != "1" || others != "2" {
        return Some(format!(
            "flags {flags}, {replicas} replicas, {others} other sentinels"
        ));
    }
    match resp::command(port, &["SENTINEL", "REPLICAS", SENTINEL_SERVICE]) {
        Ok(Reply::Array(replicas)) => {
            let ok = replicas.iter().any(|r| match r {
                Reply::Array(items) => {
                    field(items, "flags").as_deref() == Some("slave")
                        && field(items, "master-link-status").as_deref() == Some("ok")
                }
                _ => false,
            });
            if !ok {
                return Some(format!("replica not seen in sync: {replicas:?}"));
            }
        }
        other => return Some(format!("SENTINEL REPLICAS answered {other:?}")),
    }
    match resp::command(port, &["SENTINEL", "CKQUORUM", SENTINEL_SERVICE]) {
        Ok(Reply::Status(_)) => None,
        other => Some(format!("CKQUORUM: {other:?}")),
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        // Sentinels first, so none reconfigures a server while the servers stop.
        for s in &mut self.sentinels {
            s.kill();
        }
        for s in &mut self.servers {
            s.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
