//! The operator's HTTP endpoint: `/metrics` (Prometheus text format), `/healthz`, `/readyz`,
//! `/debug/hotkeys` (JSON).
//!
//! Owns: a deliberately tiny HTTP/1.1 responder (GET only, one request per connection, bounded
//! head size and time), so slotmux carries no HTTP stack. Liveness answers from the event loop
//! itself; readiness asks `Shared::readiness`.
//! Must not: define metrics (that is `metrics`) or touch the request path.

use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::shared::Shared;

/// Serves the HTTP endpoint until the process ends.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), respond(stream, &shared)).await;
        });
    }
}

async fn respond(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 8192 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("").split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4",
            shared.metrics.render(shared),
        ),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") => match shared.readiness() {
            Ok(()) => ("200 OK", "text/plain", "ready\n".to_string()),
            Err(why) => (
                "503 Service Unavailable",
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        ("GET", "/debug/hotkeys") => ("200 OK", "application/json", hotkeys_json(shared)),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /healthz, /readyz or /debug/hotkeys\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

/// The sampled hot keys (20) and busiest slots (10), with their masters, as JSON.
fn hotkeys_json(shared: &Shared) -> String {
    use crate::hotkeys::json_string;
    use std::fmt::Write;
    if shared.config.hotkeys != "on" {
        return "{\"enabled\":false,\"keys\":[],\"slots\":[]}\n".to_string();
    }
    let topo = shared.cluster.snapshot();
    let node = |slot: u16| {
        topo.master_for(slot)
            .map_or("null".to_string(), |n| json_string(n.addr.as_bytes()))
    };
    let mut out = format!(
        "{{\"enabled\":true,\"sample_every\":{},\"keys\":[",
        crate::hotkeys::SAMPLE_EVERY
    );
    for (i, k) in shared.hotkeys.top_keys(20).iter().enumerate() {
        let _ = write!(
            out,
            "{}{{\"key\":{},\"length\":{},\"rate\":{:.1},\"slot\":{},\"node\":{}}}",
            if i > 0 { "," } else { "" },
            json_string(&k.key),
            k.len,
            k.rate,
            k.slot,
            node(k.slot)
        );
    }
    out.push_str("],\"slots\":[");
    for (i, (slot, rate)) in shared.hotkeys.top_slots(10).iter().enumerate() {
        let _ = write!(
            out,
            "{}{{\"slot\":{slot},\"rate\":{rate:.1},\"node\":{}}}",
            if i > 0 { "," } else { "" },
            node(*slot)
        );
    }
    out.push_str("]}\n");
    out
}
