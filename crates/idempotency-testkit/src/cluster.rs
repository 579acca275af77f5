//! A throwaway Redis Cluster: three masters, one replica each.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::resp::Reply;
use crate::server::{RedisServer, ServerOptions};

/// Six `redis-server` cluster nodes joined with `redis-cli --cluster create`.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts 3 masters and 3 replicas and waits until the cluster is ok on every node.
    ///
    /// # Panics
    /// When `redis-server`/`redis-cli` are missing or the cluster does not form.
    pub fn start() -> Self {
        Self::start_with(3, 1)
    }

    /// Starts `masters` masters with `replicas` replicas each.
    ///
    /// # Panics
    /// As [`RedisCluster::start`].
    pub fn start_with(masters: usize, replicas: usize) -> Self {
        Self::start_with_options(masters, replicas, &ServerOptions::default())
    }

    /// Starts `masters` masters with `replicas` replicas each, every node with `options`
    /// (made a cluster node whatever `options.cluster` says).
    ///
    /// # Panics
    /// As [`RedisCluster::start`].
    pub fn start_with_options(masters: usize, replicas: usize, options: &ServerOptions) -> Self {
        let options = ServerOptions {
            cluster: true,
            ..options.clone()
        };
        let nodes: Vec<RedisServer> = (0..masters * (replicas + 1))
            .map(|_| RedisServer::start_with(&options))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect(
                "redis-cli was not found on PATH: install it with `apt-get install redis-tools`",
            );
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes };
        cluster.wait_ok(Duration::from_secs(30));
        cluster
    }

    /// Waits until every running node reports `cluster_state:ok` and knows all slots.
    ///
    /// # Panics
    /// When the cluster is not ok by then.
    pub fn wait_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = self.nodes.iter().all(|n| {
                match crate::resp::command(n.port(), &["CLUSTER", "INFO"]) {
                    Ok(Reply::Bulk(Some(info))) => {
                        let info = String::from_utf8_lossy(&info);
                        info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                    }
                    _ => true, // a stopped node does not vote
                }
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ok in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until a replica has replaced the master on `dead_port` (there are as many
    /// masters as before among the running nodes) and the cluster is ok again.
    ///
    /// # Panics
    /// When that does not happen by `timeout`.
    pub fn wait_failover(&self, dead_port: u16, masters: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let live = self
                .master_ports()
                .into_iter()
                .filter(|p| *p != dead_port)
                .count();
            if live == masters {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no replica took over from port {dead_port} in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_ok(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1)),
        );
    }

    /// Waits until every replica's link to its master is up (a fresh cluster's replicas
    /// sync first), so that a manual failover can start at once.
    ///
    /// # Panics
    /// When that does not happen by `timeout`.
    pub fn wait_replicas_linked(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self
            .nodes
            .iter()
            .all(|n| match crate::resp::command(n.port(), &["ROLE"]) {
                Ok(Reply::Array(items))
                    if items.first() == Some(&Reply::Bulk(Some(b"slave".to_vec()))) =>
                {
                    items.get(3) == Some(&Reply::Bulk(Some(b"connected".to_vec())))
                }
                _ => true,
            })
        {
            assert!(
                Instant::now() < deadline,
                "the replicas did not link up in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A manual failover (`CLUSTER FAILOVER` sent to a replica of the master on
    /// `master_port`): the master stops taking writes, its replica catches up with every
    /// write the master acknowledged, and is promoted. Nothing acknowledged is lost, unlike
    /// a kill. Returns the promoted replica's port once it is master and the cluster is ok.
    ///
    /// # Panics
    /// When the master has no replica or the switch does not happen by `timeout`.
    pub fn fail_over(&self, master_port: u16, timeout: Duration) -> u16 {
        let deadline = Instant::now() + timeout;
        let replica = self
            .nodes
            .iter()
            .map(RedisServer::port)
            .find(|port| {
                matches!(crate::resp::command(*port, &["ROLE"]), Ok(Reply::Array(items))
                    if items.first() == Some(&Reply::Bulk(Some(b"slave".to_vec())))
                        && items.get(2).and_then(Reply::as_int) == Some(i64::from(master_port)))
            })
            .unwrap_or_else(|| panic!("the master on port {master_port} has no replica"));
        // A manual failover needs the replica's link to its master up (a fresh cluster's
        // replicas may still be syncing), and Redis aborts one that does not finish in
        // 5 s: ask again until the replica is master.
        let mut asked: Option<Instant> = None;
        while !self.master_ports().contains(&replica) {
            assert!(
                Instant::now() < deadline,
                "the replica on port {replica} was not promoted in {timeout:?}"
            );
            let linked = matches!(crate::resp::command(replica, &["ROLE"]), Ok(Reply::Array(items))
                if items.get(3) == Some(&Reply::Bulk(Some(b"connected".to_vec()))));
            if linked && asked.is_none_or(|at| at.elapsed() > Duration::from_secs(6)) {
                let reply = crate::resp::command(replica, &["CLUSTER", "FAILOVER"])
                    .expect("send CLUSTER FAILOVER");
                assert!(
                    matches!(&reply, Reply::Status(s) if s == "OK"),
                    "CLUSTER FAILOVER on port {replica}: {reply:?}"
                );
                asked = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.wait_ok(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1)),
        );
        replica
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes, mutably (to stop or restart one).
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// `redis-cluster://127.0.0.1:{port}` URLs of every node, first one the seed.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port());
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            let _ = write!(url, "node=127.0.0.1:{}", n.port());
        }
        url
    }

    /// The port of the master that owns `key`'s slot now (asks the first node; a `MOVED`
    /// reply names the owner).
    pub fn owner_port(&self, key: &str) -> u16 {
        let first = self.nodes[0].port();
        match crate::resp::command(first, &["GET", key]).expect("probe the slot owner") {
            Reply::Error(e) if e.starts_with("MOVED") => e
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("a MOVED reply names a port"),
            _ => first,
        }
    }

    /// Ports of the nodes that are masters now.
    pub fn master_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| {
                matches!(crate::resp::command(n.port(), &["ROLE"]), Ok(Reply::Array(items))
                    if items.first() == Some(&Reply::Bulk(Some(b"master".to_vec()))))
            })
            .map(RedisServer::port)
            .collect()
    }
}
