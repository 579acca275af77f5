//! A fresh `RabbitMQ` virtual host per test on the machine's local broker
//! (127.0.0.1:5672, guest/guest), made and removed with `rabbitmqctl` (the management
//! plugin is not needed). Removing the virtual host removes its queues and exchanges,
//! so nothing is left behind, also when the test panics (a drop guard).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

const INSTALL_HINT: &str = "rabbitmqctl was found neither on PATH nor at /usr/sbin/rabbitmqctl, or \
     the local broker does not answer. The RabbitMQ consumer tests use the local broker \
     (127.0.0.1:5672, guest/guest); install it with `apt-get install rabbitmq-server` and \
     start it (`service rabbitmq-server start`), then run the tests again.";

fn rabbitmqctl() -> Command {
    let bin = std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("rabbitmqctl"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| "/usr/sbin/rabbitmqctl".into());
    Command::new(bin)
}

fn ctl(args: &[&str]) {
    let out = rabbitmqctl()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})"));
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}\n{INSTALL_HINT}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A virtual host of its own, with all permissions for `guest`; deleted on drop.
#[derive(Debug)]
pub struct RabbitVhost {
    name: String,
}

impl RabbitVhost {
    /// Creates a virtual host with a unique name.
    ///
    /// # Panics
    /// With an install hint when `rabbitmqctl` is missing or the broker does not answer.
    pub fn create() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "idem-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        ctl(&["add_vhost", &name]);
        let vhost = Self { name };
        ctl(&[
            "set_permissions",
            "-p",
            &vhost.name,
            "guest",
            ".*",
            ".*",
            ".*",
        ]);
        vhost
    }

    /// The virtual host's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `amqp://guest:guest@127.0.0.1:5672/{vhost}` (the name URL-encoded).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.name)
    }

    /// `rabbitmqctl list_queues -p vhost name messages messages_unacknowledged`,
    /// as `(name, ready, unacknowledged)`.
    ///
    /// # Panics
    /// When `rabbitmqctl` fails.
    pub fn queues(&self) -> Vec<(String, u64, u64)> {
        let out = rabbitmqctl()
            .args(["list_queues", "-q", "--no-table-headers", "-p", &self.name])
            .args(["name", "messages_ready", "messages_unacknowledged"])
            .output()
            .unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})"));
        assert!(out.status.success(), "rabbitmqctl list_queues failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                Some((
                    parts.next()?.to_owned(),
                    parts.next()?.parse().ok()?,
                    parts.next()?.parse().ok()?,
                ))
            })
            .collect()
    }
}

impl Drop for RabbitVhost {
    fn drop(&mut self) {
        let _ = rabbitmqctl().args(["delete_vhost", &self.name]).output();
    }
}
