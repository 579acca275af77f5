//! A tiny synchronous RESP2 client, for tests that inspect or poke a server directly.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Status(String),
    /// `-ERR …`
    Error(String),
    /// `:42`
    Int(i64),
    /// `$…` (None for the null bulk string).
    Bulk(Option<Vec<u8>>),
    /// `*…`
    Array(Vec<Reply>),
    /// `*-1`
    Nil,
}

impl Reply {
    /// Whether the server answered with an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Self::Error(_))
    }

    /// The integer, if the reply is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The bytes of a bulk reply.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Bulk(Some(b)) => Some(b),
            _ => None,
        }
    }
}

/// Sends one command to `127.0.0.1:port` and reads the reply.
///
/// # Errors
/// I/O errors, including a refused connection.
pub fn command(port: u16, args: &[&str]) -> io::Result<Reply> {
    command_bytes(port, &args.iter().map(|a| a.as_bytes()).collect::<Vec<_>>())
}

/// Like [`command`] with binary arguments.
///
/// # Errors
/// I/O errors.
pub fn command_bytes(port: u16, args: &[&[u8]]) -> io::Result<Reply> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a);
        req.extend_from_slice(b"\r\n");
    }
    stream.write_all(&req)?;
    read_reply(&mut BufReader::new(stream))
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

fn read_reply<R: BufRead>(r: &mut R) -> io::Result<Reply> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.len() < 3 {
        return Err(bad("short reply"));
    }
    let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    match line[0] {
        b'+' => Ok(Reply::Status(body)),
        b'-' => Ok(Reply::Error(body)),
        b':' => body.parse().map(Reply::Int).map_err(|_| bad("bad integer")),
        b'$' => {
            let len: i64 = body.parse().map_err(|_| bad("bad length"))?;
            if len < 0 {
                return Ok(Reply::Bulk(None));
            }
            let mut buf = vec![0; len as usize + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(len as usize);
            Ok(Reply::Bulk(Some(buf)))
        }
        b'*' => {
            let len: i64 = body.parse().map_err(|_| bad("bad length"))?;
            if len < 0 {
                return Ok(Reply::Nil);
            }
            (0..len)
                .map(|_| read_reply(r))
                .collect::<io::Result<Vec<_>>>()
                .map(Reply::Array)
        }
        _ => Err(bad("unknown reply type")),
    }
}
