//! TLS: a redis-server with TLS and a CA the test makes; `rediss://` works when the CA is
//! trusted and is refused when the server's certificate comes from another CA.

use std::sync::Arc;
use std::time::Duration;

use idempotency_coordinator::{Coordinator, IdempotencyError};
use idempotency_redis::{ConnectOptions, RedisStore};
use idempotency_testkit::tls::TestPki;
use idempotency_testkit::{RedisServer, ServerOptions};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

fn client_config(ca: &std::path::Path) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca file") {
        roots.add(cert.expect("ca cert")).expect("add ca");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn tls_server(pki: &TestPki) -> RedisServer {
    RedisServer::start_with(&ServerOptions {
        args: pki.server_args(),
        tls: true,
        ..ServerOptions::default()
    })
}

fn options(ca: &std::path::Path) -> ConnectOptions {
    ConnectOptions::default()
        .with_connect_timeout(Duration::from_secs(3))
        .with_command_timeout(Duration::from_secs(3))
        .with_tls(client_config(ca))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_the_right_ca_connects_and_works() {
    let dir = std::env::temp_dir().join(format!("idem-pki-ok-{}", std::process::id()));
    let pki = TestPki::generate(&dir);
    let server = tls_server(&pki);
    let url = format!("rediss://127.0.0.1:{}", server.port());
    let store = RedisStore::connect(&url, &options(&pki.ca_cert))
        .await
        .expect("TLS connection");
    let coordinator = Coordinator::builder(store).build().expect("c");
    let v: u32 = coordinator
        .call("op", Some("k"))
        .run(|| async { Ok::<_, IdempotencyError>(1) })
        .await
        .expect("call");
    let replay: u32 = coordinator
        .call("op", Some("k"))
        .run(|| async { Ok::<_, IdempotencyError>(2) })
        .await
        .expect("replay");
    assert_eq!((v, replay), (1, 1));
    // Plain TCP to the TLS port gets nowhere.
    assert!(idempotency_testkit::resp::command(server.port(), &["PING"]).is_err());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    let dir = std::env::temp_dir().join(format!("idem-pki-bad-{}", std::process::id()));
    let pki = TestPki::generate(&dir);
    let server = tls_server(&pki);
    let url = format!("rediss://127.0.0.1:{}", server.port());
    let err = RedisStore::connect(&url, &options(&pki.other_ca_cert))
        .await
        .expect_err("untrusted certificate");
    assert!(err.is_storage(), "{err:?}");
    let _ = std::fs::remove_dir_all(dir);
}
