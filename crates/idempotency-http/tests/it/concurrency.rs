//! Concurrent duplicates and client disconnects, on every store.

use std::time::{Duration, Instant};

use idempotency_testkit::unique_key;

use crate::common::{Backend, Options, Reply, write_request};

/// What must be byte-identical between two 2xx answers: status, headers other than
/// `Date` and the replay marker, and body.
fn essence(reply: &Reply) -> Reply {
    let mut headers: Vec<_> = reply
        .headers
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "date" | "idempotent-replayed" | "set-cookie"))
        .cloned()
        .collect();
    headers.sort();
    Reply {
        status: reply.status,
        headers,
        body: reply.body.clone(),
    }
}

async fn fifty_concurrent(backend: Backend, wait: bool) {
    let app = backend
        .serve(Options {
            in_flight: if wait {
                idempotency_http::WhileInFlight::Wait
            } else {
                idempotency_http::WhileInFlight::Conflict
            },
            ..Options::default()
        })
        .await;
    let key = unique_key("fifty");
    let replies = {
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (addr, key) = (app.addr, key.clone());
            tasks.push(tokio::spawn(async move {
                crate::common::send(
                    addr,
                    "POST",
                    "/slow",
                    &[("idempotency-key", key.as_bytes())],
                    b"{}",
                )
                .await
            }));
        }
        let mut replies = Vec::new();
        for task in tasks {
            replies.push(task.await.expect("client task"));
        }
        replies
    };
    assert_eq!(app.runs(), 1, "the handler ran once");
    let ok: Vec<&Reply> = replies
        .iter()
        .filter(|r| (200..300).contains(&r.status))
        .collect();
    let conflicts = replies.iter().filter(|r| r.status == 409).count();
    assert!(!ok.is_empty());
    assert_eq!(ok.len() + conflicts, 50, "only 2xx and 409");
    if wait {
        assert_eq!(ok.len(), 50, "waiting duplicates all get the response");
    }
    for reply in &ok {
        assert_eq!(essence(reply), essence(ok[0]));
    }
    for reply in replies.iter().filter(|r| r.status == 409) {
        assert_eq!(reply.header("retry-after"), Some("1"));
    }
    let retry = app.post("/slow", &key, "{}").await;
    assert!(retry.replayed());
    assert_eq!(essence(&retry), essence(ok[0]));
    eprintln!(
        "50 concurrent POSTs (wait: {wait}): {} runs, {} 2xx, {conflicts} 409",
        app.runs(),
        ok.len()
    );
}

on_every_store!(fifty_concurrent_posts_run_once_with_409s);
async fn fifty_concurrent_posts_run_once_with_409s(backend: Backend) {
    fifty_concurrent(backend, false).await;
}

on_every_store!(fifty_concurrent_posts_run_once_when_duplicates_wait);
async fn fifty_concurrent_posts_run_once_when_duplicates_wait(backend: Backend) {
    fifty_concurrent(backend, true).await;
}

on_every_store!(a_client_disconnecting_mid_handler_runs_once_and_the_retry_replays);
async fn a_client_disconnecting_mid_handler_runs_once_and_the_retry_replays(backend: Backend) {
    let app = backend.serve(Options::default()).await;
    let key = unique_key("gone");
    {
        let mut stream = tokio::net::TcpStream::connect(app.addr)
            .await
            .expect("connect");
        write_request(
            &mut stream,
            "POST",
            "/slow",
            &[("idempotency-key", key.as_bytes())],
            b"{}",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Dropped mid-handler (the handler sleeps 300 ms).
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        app.runs(),
        1,
        "the handler ran to completion without its client"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let retry = loop {
        let reply = app.post("/slow", &key, "{}").await;
        if reply.status != 409 || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(retry.status, 201, "{}", retry.body_text());
    assert!(retry.replayed(), "the detached run's response is replayed");
    assert_eq!(app.runs(), 1);
}

/// The premise of the disconnect test: this server drops a handler's future when its
/// client goes away (checked on a route the layer passes through).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_server_drops_the_handler_of_a_client_that_went_away() {
    let app = Backend::memory().serve(Options::default()).await;
    {
        let mut stream = tokio::net::TcpStream::connect(app.addr)
            .await
            .expect("connect");
        write_request(&mut stream, "GET", "/probe", &[], b"").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        app.probe_cancelled
            .load(std::sync::atomic::Ordering::SeqCst)
    );
}
