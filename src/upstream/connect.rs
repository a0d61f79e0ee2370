//! Opening a connection to a node, its handshake, and one-shot queries on a fresh connection.
//!
//! Owns: [`NodeStream`] (plain TCP or TLS), the connect timeout, the handshakes (TLS with
//! `--backend-tls`, then `HELLO 3` for RESP3 connections, `AUTH` when configured), and [`query`], the cold-path request/reply used by the topology refresher,
//! command discovery and health probes.
//! Must not: be used per client request (the hot path goes through `link`).

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::OwnedFrame;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::resp::reply::ReplyScanner;
use crate::resp::write::{self, Proto};

const READ_CHUNK: usize = 16 * 1024;

/// Settings shared by every backend connection.
#[derive(Debug, Clone)]
pub struct ConnSettings {
    pub connect_timeout: Duration,
    pub reply_timeout: Duration,
    pub user: Option<String>,
    pub password: Option<String>,
    /// `--backend-tls`: every connection (links, probes, refreshes) runs this handshake.
    pub tls: Option<std::sync::Arc<crate::tls::BackendTls>>,
}

impl ConnSettings {
    /// The same settings, authenticating as `c` instead of slotmux's own backend identity.
    pub fn as_user(&self, c: &Credentials) -> ConnSettings {
        ConnSettings {
            user: c.user.clone(),
            password: c.password.clone(),
            ..self.clone()
        }
    }
}

/// Who a connection authenticates as, when it is not slotmux's own backend identity
/// (`--auth-mode passthrough`: a client's user). Both `None`: no AUTH at all (Redis's
/// `default` user without a password).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    pub user: Option<String>,
    pub password: Option<String>,
}

impl Credentials {
    /// The user's name as Redis knows it.
    pub fn user_name(&self) -> &str {
        self.user.as_deref().unwrap_or("default")
    }
}

/// Never prints the password.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({})", self.user_name())
    }
}

/// Why a connection could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// Connect, TLS or a timeout: the node is not reachable.
    Unreachable(String),
    /// The node answered the handshake (AUTH, HELLO) with this error: it is up, the
    /// credentials are not accepted.
    Refused(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Unreachable(e) | ConnectError::Refused(e) => f.write_str(e),
        }
    }
}

impl From<ConnectError> for String {
    fn from(e: ConnectError) -> String {
        e.to_string()
    }
}

/// A connection to a node: plain, or TLS with `--backend-tls`.
pub enum NodeStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for NodeStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            NodeStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NodeStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            NodeStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_flush(cx),
            NodeStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            NodeStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Opens a connection and runs the handshake. Errors are strings: they only end up in logs.
pub async fn connect(
    addr: &str,
    proto: Proto,
    settings: &ConnSettings,
) -> Result<NodeStream, ConnectError> {
    let down = ConnectError::Unreachable;
    let tcp = tokio::time::timeout(settings.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| down(format!("connect to {addr} timed out")))?
        .map_err(|e| down(format!("connect to {addr}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let mut stream = match &settings.tls {
        Some(tls) => NodeStream::Tls(Box::new(tls.connect(tcp, addr).await.map_err(down)?)),
        None => NodeStream::Plain(tcp),
    };
    let mut init = BytesMut::new();
    let user = settings.user.as_deref().unwrap_or("default").as_bytes();
    match (proto, settings.password.as_deref()) {
        (Proto::Resp3, Some(pw)) => write::command(
            &mut init,
            [&b"HELLO"[..], b"3", b"AUTH", user, pw.as_bytes()],
        ),
        (Proto::Resp3, None) => write::command(&mut init, [&b"HELLO"[..], b"3"]),
        (Proto::Resp2, Some(pw)) => write::command(&mut init, [&b"AUTH"[..], user, pw.as_bytes()]),
        (Proto::Resp2, None) => {}
    }
    if !init.is_empty() {
        let replies = tokio::time::timeout(settings.reply_timeout, async {
            stream.write_all(&init).await?;
            read_replies(&mut stream, 1).await
        })
        .await
        .map_err(|_| down(format!("handshake with {addr} timed out")))?
        .map_err(|e| down(format!("handshake with {addr}: {e}")))?;
        for r in replies {
            if r.first() == Some(&b'-') {
                return Err(ConnectError::Refused(
                    String::from_utf8_lossy(&r[1..]).trim_end().to_string(),
                ));
            }
        }
    }
    Ok(stream)
}

/// Reads exactly `n` complete replies from a fresh connection.
pub async fn read_replies(stream: &mut NodeStream, n: usize) -> std::io::Result<Vec<Bytes>> {
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = Vec::with_capacity(n);
    let mut scanner = ReplyScanner::new();
    while out.len() < n {
        match scanner.scan(&buf) {
            Ok(Some(len)) => {
                out.push(buf.split_to(len).freeze());
                continue;
            }
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
        buf.reserve(READ_CHUNK);
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(out)
}

/// Sends `cmds` on an open connection and reads one raw reply per command, within `limit`.
pub async fn exchange(
    stream: &mut NodeStream,
    cmds: &[&[&[u8]]],
    limit: Duration,
) -> Result<Vec<Bytes>, String> {
    let mut req = BytesMut::new();
    for cmd in cmds {
        write::command(&mut req, cmd.iter().copied());
    }
    tokio::time::timeout(limit, async {
        stream.write_all(&req).await?;
        read_replies(stream, cmds.len()).await
    })
    .await
    .map_err(|_| "timed out".to_string())?
    .map_err(|e| e.to_string())
}

/// Sends one command on a fresh RESP2 connection and decodes the reply.
pub async fn query(
    addr: &str,
    settings: &ConnSettings,
    cmd: &[&[u8]],
    limit: Duration,
) -> Result<OwnedFrame, String> {
    let mut stream = connect(addr, Proto::Resp2, settings).await?;
    let name = String::from_utf8_lossy(&cmd.join(&b' ')).into_owned();
    let reply = exchange(&mut stream, &[cmd], limit)
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    decode(&reply[0]).ok_or(format!("{name}: undecodable reply"))
}

/// Decodes one complete RESP2 reply (cold path).
pub fn decode(raw: &[u8]) -> Option<OwnedFrame> {
    redis_protocol::resp2::decode::decode(raw)
        .ok()
        .flatten()
        .map(|(f, _)| f)
}
