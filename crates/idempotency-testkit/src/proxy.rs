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

/// Rewrites each command a client sends (its arguments, the name first) before it goes
/// on to the server; see [`Proxy::start_rewriting`].
pub type Rewrite = Arc<dyn Fn(Vec<Vec<u8>>) -> Vec<Vec<u8>> + Send + Sync>;

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
        Self::start_with(target, None)
    }

    /// Starts a proxy that passes every command the clients send through `rewrite` (to
    /// watch them, or to play a server that refuses some). Commands are parsed from the
    /// stream (RESP arrays of bulk strings, as clients send them); replies pass as they
    /// come, so the rewritten command's reply is the server's answer to it.
    ///
    /// # Panics
    /// When it cannot bind a port.
    pub fn start_rewriting(target: SocketAddr, rewrite: Rewrite) -> Self {
        Self::start_with(target, Some(rewrite))
    }

    fn start_with(target: SocketAddr, rewrite: Option<Rewrite>) -> Self {
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
                accept_loop(listener, target, rx, counter, rewrite).await;
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
    rewrite: Option<Rewrite>,
) {
    while let Ok((client, _)) = listener.accept().await {
        if *mode.borrow() == Mode::Drop {
            drop(client);
            continue;
        }
        let mode = mode.clone();
        let commands = Arc::clone(&commands);
        let rewrite = rewrite.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::select! {
                () = pump(cr, sw, mode.clone(), Some(commands), rewrite) => {}
                () = pump(sr, cw, mode, None, None) => {}
            }
        });
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    commands: Option<Arc<AtomicU64>>,
    rewrite: Option<Rewrite>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut counter = CommandCounter::default();
    let mut pending: Vec<u8> = Vec::new();
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
        let out = match &rewrite {
            None => buf[..n].to_vec(),
            Some(rewrite) => {
                // Whole commands only; a partial one waits for the rest of its bytes.
                pending.extend_from_slice(&buf[..n]);
                let mut out = Vec::new();
                while let Some((args, used)) = parse_command(&pending) {
                    pending.drain(..used);
                    encode_command(&rewrite(args), &mut out);
                }
                out
            }
        };
        if to.write_all(&out).await.is_err() {
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

/// The arguments of the first complete command in `bytes` and its length, if it is all
/// there.
fn parse_command(bytes: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    let (header, mut at) = line(bytes)?;
    let n: usize = std::str::from_utf8(header.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        let (len, used) = line(&bytes[at..])?;
        let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        at += used;
        if at + len + 2 > bytes.len() {
            return None;
        }
        args.push(bytes[at..at + len].to_vec());
        at += len + 2;
    }
    Some((args, at))
}

fn encode_command(args: &[Vec<u8>], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
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
    use super::{CommandCounter, encode_command, parse_command};

    #[test]
    fn commands_parse_and_encode_back_to_the_same_bytes() {
        let stream = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n";
        let (args, used) = parse_command(stream).expect("a whole command");
        assert_eq!(args, vec![b"GET".to_vec(), b"k".to_vec()]);
        let mut out = Vec::new();
        encode_command(&args, &mut out);
        assert_eq!(out, stream[..used]);
        assert_eq!(parse_command(&stream[..used - 1]), None);
    }

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
