//! A loopback TCP proxy that can delay, drop or freeze traffic, for fault tests.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward at once.
    Pass,
    /// Forward each chunk after this delay.
    Delay(Duration),
    /// Close every connection and refuse new ones.
    Drop,
    /// Accept and keep connections, forward nothing (a black hole).
    Freeze,
    /// Forward commands to the server, but throw away its replies and close the
    /// connection on the first one: commands are applied and their replies lost, as when
    /// a connection breaks after the write. Clients reconnect and may re-send.
    CutReplies,
}

/// A running proxy in front of one target; stops when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    mode: Arc<Mutex<watch::Sender<Mode>>>,
    commands: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port forwarding to `target`.
    ///
    /// # Panics
    /// When it cannot bind a port.
    pub fn start(target: SocketAddr) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let (tx, rx) = watch::channel(Mode::Pass);
        // Bound with std so this works from inside another runtime too.
        let listener =
            std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the proxy port");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy addr");
        let commands = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&commands);
        runtime.spawn(async move {
            if let Ok(listener) = TcpListener::from_std(listener) {
                accept_loop(listener, target, rx, counter).await;
            }
        });
        Self {
            addr,
            mode: Arc::new(Mutex::new(tx)),
            commands,
            runtime: Some(runtime),
        }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:{port}` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.addr.port())
    }

    /// How many commands (top-level RESP arrays) clients have sent through the proxy:
    /// the client's side of the conversation, whatever the server runs inside scripts.
    pub fn commands_sent(&self) -> u64 {
        self.commands.load(Ordering::SeqCst)
    }

    /// Switches the mode; connections follow at once.
    pub fn set_mode(&self, mode: Mode) {
        let _ = self
            .mode
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Receiver<Mode>,
    commands: Arc<AtomicU64>,
) {
    while let Ok((client, _)) = listener.accept().await {
        if *mode.borrow() == Mode::Drop {
            drop(client);
            continue;
        }
        let mode = mode.clone();
        let commands = Arc::clone(&commands);
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::select! {
                () = pump(cr, sw, mode.clone(), Some(commands)) => {}
                () = pump(sr, cw, mode, None) => {}
            }
        });
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    commands: Option<Arc<AtomicU64>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut counter = CommandCounter::default();
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
            changed = mode.changed() => {
                if changed.is_err() || *mode.borrow() == Mode::Drop { return; }
                continue;
            }
        };
        loop {
            let current = *mode.borrow();
            match current {
                // Only the server-to-client direction (which counts no commands) cuts.
                Mode::CutReplies if commands.is_none() => return,
                Mode::Pass | Mode::CutReplies => break,
                Mode::Delay(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Mode::Drop => return,
                Mode::Freeze => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        if let Some(commands) = &commands {
            commands.fetch_add(counter.feed(&buf[..n]), Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Counts complete RESP commands (arrays of bulk strings) in a byte stream that may be
/// split anywhere.
#[derive(Debug, Default)]
struct CommandCounter {
    pending: Vec<u8>,
}

impl CommandCounter {
    fn feed(&mut self, bytes: &[u8]) -> u64 {
        self.pending.extend_from_slice(bytes);
        let mut count = 0;
        let mut at = 0;
        while let Some(end) = command_end(&self.pending[at..]) {
            at += end;
            count += 1;
        }
        self.pending.drain(..at);
        count
    }
}

fn line(bytes: &[u8]) -> Option<(&[u8], usize)> {
    let end = bytes.windows(2).position(|w| w == b"\r\n")?;
    Some((&bytes[..end], end + 2))
}

/// The length of the first complete command in `bytes`, if it is all there.
fn command_end(bytes: &[u8]) -> Option<usize> {
    let (header, mut at) = line(bytes)?;
    let n: usize = std::str::from_utf8(header.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    for _ in 0..n {
        let (len, used) = line(&bytes[at..])?;
        let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        at += used + len + 2;
        if at > bytes.len() {
            return None;
        }
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::CommandCounter;

    #[test]
    fn commands_are_counted_across_chunk_boundaries() {
        let stream = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv\n\r\n";
        for split in 0..stream.len() {
            let mut c = CommandCounter::default();
            let total = c.feed(&stream[..split]) + c.feed(&stream[split..]);
            assert_eq!(total, 2, "split at {split}");
        }
    }
}
