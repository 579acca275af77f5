//! The test kit's own servers: they start, answer, and are gone after drop.

use idempotency_testkit::resp::Reply;
use idempotency_testkit::{RedisCluster, RedisServer};

#[test]
fn a_server_answers_and_is_stopped_and_removed_on_drop() {
    let server = RedisServer::start();
    assert_ne!(server.port(), 6379);
    assert_eq!(server.cmd(&["SET", "k", "v"]), Reply::Status("OK".into()));
    assert_eq!(server.cmd(&["GET", "k"]).as_bytes(), Some(&b"v"[..]));
    let (port, dir) = (server.port(), server.dir().to_path_buf());
    drop(server);
    assert!(idempotency_testkit::resp::command(port, &["PING"]).is_err());
    assert!(!dir.exists());
}

#[test]
fn a_restarted_server_comes_back_empty_on_the_same_port() {
    let mut server = RedisServer::start();
    server.cmd(&["SET", "k", "v"]);
    let port = server.port();
    server.restart();
    assert_eq!(server.port(), port);
    assert_eq!(server.cmd(&["GET", "k"]), Reply::Bulk(None));
}

#[test]
fn a_cluster_forms_with_three_masters_and_serves_every_slot() {
    let cluster = RedisCluster::start();
    assert_eq!(cluster.nodes().len(), 6);
    assert_eq!(cluster.master_ports().len(), 3);
    let info = cluster.nodes()[0].cmd(&["CLUSTER", "INFO"]);
    assert!(String::from_utf8_lossy(info.as_bytes().expect("info")).contains("cluster_state:ok"));
}
