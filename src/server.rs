//! Accepting clients: the listener loop, the client limit, hand-off to workers, and graceful
//! shutdown.
//!
//! Owns: [`run`]/[`serve`] (bind-agnostic, so tests pass a listener on port 0 and a shutdown
//! future), the `maxclients` refusal with Redis's own error, placing each client on a worker,
//! and draining: on shutdown stop accepting, let sessions finish their in-flight commands within
//! the drain timeout, then stop the workers.
//! Must not: parse client bytes (sessions do, on their worker).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::shared::{Permit, Shared};
use crate::worker::{Incoming, Workers};

/// Runs slotmux on `listener` until `shutdown` resolves, then drains.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), crate::shared::StartError> {
    let shared = Shared::start(config)?;
    serve(listener, shared, shutdown).await;
    Ok(())
}

/// The sockets clients connect to: plain (`--listen`), TLS (`--tls-listen`), or both.
#[derive(Default)]
pub struct Listeners {
    pub plain: Option<TcpListener>,
    pub tls: Option<TcpListener>,
}

/// Serves plain-text clients with already-built shared state (tests use this to inspect it).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    serve_on(
        Listeners {
            plain: Some(listener),
            tls: None,
        },
        shared,
        shutdown,
    )
    .await
}

async fn accept(
    l: &Option<TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Serves clients on every listener given until `shutdown` resolves, then drains.
pub async fn serve_on(
    listeners: Listeners,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) {
    let threads = shared
        .config
        .threads
        .unwrap_or_else(crate::worker::default_count);
    let workers = match Workers::start(&shared, threads) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the worker threads");
            return;
        }
    };
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(5);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = async {
                tokio::select! {
                    r = accept(&listeners.plain) => (r, false),
                    r = accept(&listeners.tls) => (r, true),
                }
            } => {
                let (accepted, tls) = accepted;
                let (stream, peer) = match accepted {
                    Ok(x) => { backoff = Duration::from_millis(5); x }
                    Err(e) => {
                        // EMFILE and friends: wait and keep going, never give up the listener.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                };
                shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
                let Some(permit) = Permit::try_take(&shared.clients, shared.config.maxclients) else {
                    refuse(&shared, stream, peer, tls);
                    continue;
                };
                match stream.into_std() {
                    Ok(stream) => workers.hand_over(Incoming { stream, peer, permit, tls }),
                    Err(e) => tracing::warn!(client = %peer, error = %e, "cannot hand the client to a worker"),
                }
            }
        }
    }
    drop(listeners);
    workers.drain();
    let deadline = Instant::now() + shared.config.drain_timeout;
    while shared.clients.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = shared.clients.load(Ordering::Acquire);
    if left > 0 {
        tracing::warn!(clients = left, "drain timeout: closing remaining clients");
    } else {
        tracing::info!("drained all clients");
    }
    workers.stop().await;
}

/// Redis's answer beyond `maxclients`, with at most one log line a second.
fn refuse(
    shared: &Shared,
    mut stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    tls: bool,
) {
    let n = shared
        .stats
        .rejected_maxclients
        .fetch_add(1, Ordering::Relaxed);
    let now = shared.started.elapsed().as_secs();
    if shared.stats.last_reject_log.swap(now, Ordering::Relaxed) != now {
        tracing::warn!(client = %peer, rejected_total = n + 1, maxclients = shared.config.maxclients, "refusing client: max number of clients reached");
    }
    if tls {
        // Redis's words would be plain text on a TLS port: closing says enough there.
        return;
    }
    tokio::spawn(async move {
        let _ = stream
            .write_all(b"-ERR max number of clients reached\r\n")
            .await;
    });
}
