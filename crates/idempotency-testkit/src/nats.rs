//! Throwaway `nats-server -js` processes: one per call, on a free loopback port, its
//! `JetStream` store in a temporary directory. Stopped and the directory removed when
//! dropped; a watchdog shell kills it once the test process is gone, however that
//! process ended.

use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::free_port;

const INSTALL_HINT: &str = "nats-server was found neither on PATH nor at /usr/sbin/nats-server. \
     The consumer tests start their own JetStream server; install it with \
     `apt-get install nats-server` (Debian/Ubuntu) or `brew install nats-server` (macOS), \
     then run the tests again.";

/// The `nats-server` binary: on PATH, else Debian's `/usr/sbin/nats-server`.
///
/// # Panics
/// With an install hint when it is missing.
pub fn nats_server_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.is_file())
    });
    on_path
        .or_else(|| {
            let debian = PathBuf::from("/usr/sbin/nats-server");
            debian.is_file().then_some(debian)
        })
        .unwrap_or_else(|| panic!("{INSTALL_HINT}"))
}

/// A `nats-server -js` process owned by the test.
#[derive(Debug)]
pub struct NatsServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a `JetStream` server on a free port and waits until it accepts connections.
    ///
    /// # Panics
    /// When `nats-server` is missing (with an install hint) or does not come up.
    pub fn start() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let bin = nats_server_bin();
        for _ in 0..5 {
            let dir = std::env::temp_dir().join(format!(
                "idem-nats-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("create the JetStream directory");
            let mut server = Self {
                port: free_port(),
                dir,
                child: None,
            };
            let child = Command::new(&bin)
                .args(["-js", "-a", "127.0.0.1", "-p", &server.port.to_string()])
                .arg("-sd")
                .arg(&server.dir)
                .arg("-l")
                .arg(server.dir.join("nats.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})"));
            server.child = Some(child);
            if server.wait_ready(Duration::from_secs(10)) {
                server.watchdog();
                return server;
            }
            server.kill();
        }
        panic!("nats-server did not start after 5 attempts");
    }

    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && matches!(child.try_wait(), Ok(Some(_)))
            {
                return false;
            }
            let log = std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default();
            if log.contains("Server is ready")
                && TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn watchdog(&self) {
        let Some(child) = self.child.as_ref() else {
            return;
        };
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -KILL {pid} 2>/dev/null; rm -rf '{dir}'",
            me = std::process::id(),
            pid = child.id(),
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

    /// `nats://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
