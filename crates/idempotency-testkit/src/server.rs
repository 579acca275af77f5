//! One throwaway `redis-server` process.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::resp;

const INSTALL_HINT: &str = "redis-server was not found on PATH. The storage tests start their own \
     redis-server processes; install them with `apt-get install redis-server redis-tools` \
     (Debian/Ubuntu) or `brew install redis` (macOS), then run the tests again.";

/// Extra settings for a server.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Extra `redis-server` arguments, as `--name value` pairs.
    pub args: Vec<String>,
    /// Start as a cluster node.
    pub cluster: bool,
    /// Whether the server speaks TLS only (then readiness is checked by the process log).
    pub tls: bool,
}

/// A `redis-server` process owned by the test.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    options: ServerOptions,
    child: Option<Child>,
}

/// A loopback port that is free now, and whose cluster bus port (+10000) is free too.
/// Never 6379.
pub fn free_port() -> u16 {
    loop {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral loopback port");
        let port = listener.local_addr().expect("local addr").port();
        drop(listener);
        if port == 6379 || port > 55_535 {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn unique_dir() -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("idem-testkit-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temporary directory for redis-server");
    dir
}

/// Panics with the install hint when `redis-server` is not on PATH.
pub fn require_redis() {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(found.is_ok_and(|s| s.success()), "{INSTALL_HINT}");
}

impl RedisServer {
    /// Starts a standalone server on a free port and waits until it answers.
    ///
    /// # Panics
    /// When `redis-server` is missing (with an install hint) or does not come up.
    pub fn start() -> Self {
        Self::start_with(&ServerOptions::default())
    }

    /// Starts a server with extra options.
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    pub fn start_with(options: &ServerOptions) -> Self {
        require_redis();
        // Another process may take the port between our probe and the server's bind: try again.
        for _ in 0..5 {
            let mut server = Self {
                port: free_port(),
                dir: unique_dir(),
                options: options.clone(),
                child: None,
            };
            if server.spawn().is_ok() {
                return server;
            }
        }
        panic!("redis-server did not start after 5 attempts");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new("redis-server");
        let port = if self.options.tls {
            "0".to_owned()
        } else {
            self.port.to_string()
        };
        cmd.args([
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&self.dir)
        .args([
            "--logfile",
            "redis.log",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
        ]);
        if self.options.tls {
            cmd.args(["--tls-port", &self.port.to_string()]);
        }
        if self.options.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                // Replicas here sync from scratch; let any of them take over.
                "--cluster-replica-validity-factor",
                "0",
            ]);
        }
        cmd.args(&self.options.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|e| format!("{INSTALL_HINT} ({e})"))?;
        self.child = Some(child);
        if self.wait_ready(Duration::from_secs(10)) {
            Ok(())
        } else {
            self.kill();
            Err(format!("redis-server on port {} did not answer", self.port))
        }
    }

    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && matches!(child.try_wait(), Ok(Some(_)))
            {
                return false;
            }
            if self.options.tls {
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                if log.contains("Ready to accept connections") {
                    return true;
                }
            } else {
                // A server with a password answers NOAUTH: up all the same.
                match resp::command(self.port, &["PING"]) {
                    Ok(resp::Reply::Status(s)) if s == "PONG" => return true,
                    Ok(resp::Reply::Error(e)) if e.starts_with("NOAUTH") => return true,
                    _ => {}
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's working directory (logs, cluster config).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the process (SIGKILL: a crash, no goodbye) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The port is free again once nothing accepts on it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(self.addr()).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the process again on the same port (empty: the servers keep nothing on disk).
    ///
    /// # Panics
    /// When it does not come back.
    pub fn restart(&mut self) {
        self.kill();
        for _ in 0..50 {
            if self.spawn().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// Runs a command on the server.
    ///
    /// # Panics
    /// When the server cannot be reached.
    pub fn cmd(&self, args: &[&str]) -> resp::Reply {
        resp::command(self.port, args)
            .unwrap_or_else(|e| panic!("redis command {args:?} on port {}: {e}", self.port))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
