//! Throwaway Postgres servers: one `postgres` process per test binary on a free
//! loopback port, its data directory under the workspace's `target/`, and a fresh
//! database per test.
//!
//! The server runs as the `postgres` OS user when the tests run as root (`initdb`
//! refuses root), with trust authentication on 127.0.0.1 only. It never touches a
//! server it did not start: port 5432 and ports in use are skipped. A watchdog shell
//! stops it (immediate shutdown) and removes its directory once the test process is
//! gone, however that process ended.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "initdb was found neither on PATH nor under /usr/lib/postgresql/*/bin. \
     The PostgreSQL tests start their own server; install it with `apt-get install postgresql` \
     (Debian/Ubuntu) or `brew install postgresql` (macOS), then run the tests again.";

/// The directory holding `initdb`, `postgres`, `pg_isready` and `psql`.
///
/// # Panics
/// With an install hint when Postgres is not installed.
pub fn postgres_bin_dir() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|dir| dir.join("initdb").is_file())
            // A symlink into the real bin dir (Debian's postgresql-common) resolves there,
            // where `postgres` and the tools sit beside it.
            .map(|dir| {
                std::fs::canonicalize(dir.join("initdb"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .unwrap_or(dir)
            })
    });
    if let Some(dir) = on_path.filter(|d| d.join("postgres").is_file()) {
        return dir;
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .filter(|bin| bin.join("initdb").is_file())
                .collect()
        })
        .unwrap_or_default();
    // The newest version: directories are named by major version.
    versions.sort_by_key(|bin| {
        bin.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop().unwrap_or_else(|| panic!("{INSTALL_HINT}"))
}

/// A `postgres` process owned by the test process.
#[derive(Debug)]
pub struct PostgresServer {
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    child: Option<Child>,
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// `target/` of the workspace (or `CARGO_TARGET_DIR`).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    )
}

fn free_pg_port() -> u16 {
    loop {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral loopback port");
        let port = listener.local_addr().expect("local addr").port();
        drop(listener);
        if port != 5432 && port != 6379 {
            return port;
        }
    }
}

impl PostgresServer {
    /// Initialises a data directory and starts a server on a free port; waits until it
    /// accepts connections.
    ///
    /// # Panics
    /// When Postgres is missing (with an install hint) or does not come up.
    pub fn start() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let bin = postgres_bin_dir();
        let as_postgres = running_as_root();
        let root = target_dir().join("pg-test");
        std::fs::create_dir_all(&root).expect("create target/pg-test");
        let dir = root.join(format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the data directory");
        let mut server = Self {
            port: 0,
            dir,
            bin,
            as_postgres,
            child: None,
        };
        if as_postgres {
            // The postgres user must reach its directory: every parent needs o+x.
            let mut parent = server.dir.parent();
            while let Some(p) = parent {
                let _ = Command::new("chmod").arg("o+x").arg(p).status();
                parent = p.parent();
            }
            let owned = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&server.dir)
                .status();
            assert!(
                owned.is_ok_and(|s| s.success()),
                "chown the data directory to postgres"
            );
        }
        server.initdb();
        for _ in 0..5 {
            server.port = free_pg_port();
            if server.spawn().is_ok() {
                server.watchdog();
                return server;
            }
        }
        panic!(
            "postgres did not start after 5 attempts; see {}",
            server.dir.join("postgres.log").display()
        );
    }

    /// A command running `tool` from the bin dir, as the `postgres` user when we are root.
    fn tool(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            // setpriv execs the tool in place (runuser forks and stays as its parent).
            let mut cmd = Command::new("setpriv");
            cmd.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(path);
            cmd
        } else {
            Command::new(path)
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn initdb(&self) {
        let out = self
            .tool("initdb")
            .arg("-D")
            .arg(self.data())
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .output()
            .unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})"));
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.join("postgres.log"))
            .map_err(|e| format!("create the log: {e}"))?;
        let child = self
            .tool("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(&self.dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{INSTALL_HINT} ({e})"))?;
        self.child = Some(child);
        if self.wait_ready(Duration::from_secs(30)) {
            Ok(())
        } else {
            self.kill();
            Err(format!("postgres on port {} did not answer", self.port))
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
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Stops the server and removes its directory once this process is gone, whatever
    /// way it ends (a static server is never dropped).
    fn watchdog(&self) {
        let Some(child) = self.child.as_ref() else {
            return;
        };
        // The postmaster's own pid is in its pid file (the child may be a wrapper).
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; \
             pm=$(head -n1 '{dir}/data/postmaster.pid' 2>/dev/null); \
             for pid in {pg} $pm; do kill -QUIT $pid 2>/dev/null; done; sleep 2; \
             for pid in {pg} $pm; do kill -KILL $pid 2>/dev/null; done; rm -rf '{dir}'",
            me = std::process::id(),
            pg = child.id(),
            dir = self.dir.display(),
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log (`log_line_prefix` is the default, `%m [%p] `).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// The URL of database `name` as the superuser `postgres`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs SQL on database `postgres` with `psql`.
    ///
    /// # Panics
    /// When it fails.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", "postgres", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Stops the server at once (SIGQUIT: immediate shutdown, no checkpoint) and waits
    /// for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let postmaster = std::fs::read_to_string(self.data().join("postmaster.pid"))
                .ok()
                .and_then(|text| text.lines().next().map(str::to_owned));
            if let Some(pid) = postmaster {
                let _ = Command::new("kill").args(["-QUIT", &pid]).status();
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server of this test binary, started by the first test that asks and stopped by
/// its watchdog when the process ends.
pub fn shared_postgres() -> Arc<PostgresServer> {
    static SERVER: OnceLock<Arc<PostgresServer>> = OnceLock::new();
    Arc::clone(SERVER.get_or_init(|| Arc::new(PostgresServer::start())))
}

/// A database of its own for one test on the shared server, dropped (with its
/// connections) when this is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    server: Arc<PostgresServer>,
    name: String,
}

impl TestDatabase {
    /// Creates a database with a unique name on the shared server.
    ///
    /// # Panics
    /// When the server cannot start or the database cannot be made.
    pub fn create() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let server = shared_postgres();
        let name = format!(
            "idem_test_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        server.psql(&format!("CREATE DATABASE {name}"));
        Self { server, name }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its URL, as the superuser.
    pub fn url(&self) -> String {
        self.server.url(&self.name)
    }

    /// The server.
    pub fn server(&self) -> &PostgresServer {
        &self.server
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = Command::new(self.server.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &self.server.port.to_string(),
            ])
            .args(["-U", "postgres", "-d", "postgres", "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
