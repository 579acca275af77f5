//! Counting the commands a server executed, from `INFO commandstats`.

use idempotency_testkit::resp::{self, Reply};

/// The servers whose commands count (the masters), read directly over RESP so the count
/// is not disturbed by the client under test.
#[derive(Debug, Clone)]
pub(crate) struct CommandCounter {
    ports: Vec<u16>,
}

impl CommandCounter {
    pub(crate) fn new(ports: Vec<u16>) -> Self {
        Self { ports }
    }

    /// The masters' ports.
    pub(crate) fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Commands executed so far, leaving out `INFO` itself and the cluster topology
    /// queries the client makes.
    pub(crate) fn total(&self) -> u64 {
        let mut total = 0;
        for &port in &self.ports {
            let Ok(Reply::Bulk(Some(text))) = resp::command(port, &["INFO", "commandstats"]) else {
                continue;
            };
            for line in String::from_utf8_lossy(&text).lines() {
                let Some(rest) = line.strip_prefix("cmdstat_") else {
                    continue;
                };
                let (name, stats) = rest.split_once(':').unwrap_or((rest, ""));
                if name == "info"
                    || name.starts_with("cluster")
                    || name == "ping"
                    || name == "client|setname"
                {
                    continue;
                }
                let calls = stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                total += calls;
            }
        }
        total
    }
}
