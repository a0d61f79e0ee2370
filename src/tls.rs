//! TLS on both sides: certificates, keys and CAs read from PEM files, the client-facing server
//! configuration and the backend client configuration built from them, and their reload when
//! the files change (Kubernetes swaps a mounted Secret's files in place).
//!
//! Owns: [`Tls::load`] (startup: a bad file is a startup error), [`Reloadable`] (a
//! configuration behind an `ArcSwap`, rebuilt by [`Tls::spawn_watcher`] when a file's stamp
//! changes; a failed rebuild keeps the old one and logs once), the handshakes with their timeout
//! and failure metric, and [`BackendTls::connect`].
//! Must not: do file I/O on a connection's path (new connections take the current config with
//! one atomic load), or end existing connections on a reload.

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;

use crate::config::Config;

/// How often the watcher looks at the files' stamps.
const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// A handshake that takes longer is abandoned (a client that connects and sends nothing).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {what}")]
    File { path: String, what: String },
    #[error("{0}")]
    Config(String),
}

fn file_err(path: &Path, what: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        what: what.to_string(),
    }
}

/// Only ring is compiled in: no process-wide default is needed or installed.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| file_err(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// `--tls-auth-clients`, with Redis's names and meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthClients {
    /// A client must present a certificate signed by the CA.
    Yes,
    No,
    /// A certificate is checked if the client presents one.
    Optional,
}

/// The client-facing side's files.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
    pub auth: AuthClients,
}

impl ServerFiles {
    fn paths(&self) -> Vec<PathBuf> {
        let mut p = vec![self.cert.clone(), self.key.clone()];
        p.extend(self.ca.clone());
        p
    }

    fn build(&self) -> Result<ServerConfig, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match (&self.ca, self.auth) {
            (_, AuthClients::No) | (None, _) => builder.with_no_client_auth(),
            (Some(ca), auth) => {
                let roots = Arc::new(read_roots(ca)?);
                let mut v =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider());
                if auth == AuthClients::Optional {
                    v = v.allow_unauthenticated();
                }
                let v = v.build().map_err(|e| file_err(ca, e))?;
                builder.with_client_cert_verifier(v)
            }
        };
        let mut cfg = builder
            .with_single_cert(read_certs(&self.cert)?, read_key(&self.key)?)
            .map_err(|e| file_err(&self.key, format!("does not go with the certificate: {e}")))?;
        // Redis speaks no ALPN; offering none keeps every client library happy.
        cfg.alpn_protocols.clear();
        Ok(cfg)
    }
}

/// The backend side's files.
#[derive(Debug, Clone)]
pub struct BackendFiles {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl BackendFiles {
    fn paths(&self) -> Vec<PathBuf> {
        let mut p = vec![self.ca.clone()];
        p.extend(self.cert.clone());
        p.extend(self.key.clone());
        p
    }

    fn build(&self) -> Result<ClientConfig, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(read_roots(&self.ca)?);
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
                .map_err(|e| file_err(key, format!("does not go with the certificate: {e}"))),
            _ => Ok(builder.with_no_client_auth()),
        }
    }
}

/// What a file looked like when its configuration was built: a change to any of these is a
/// new file (a rewrite in place changes the time, a symlink swap the inode).
type Stamp = Option<(std::time::SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// A configuration built from files, swapped for a new one when they change.
pub struct Reloadable<T> {
    current: ArcSwap<T>,
    paths: Vec<PathBuf>,
    /// The stamps it was built from, and the last rebuild error (logged once).
    seen: Mutex<(Vec<Stamp>, Option<String>)>,
    build: Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>,
    side: &'static str,
    reloads: prometheus::IntCounter,
}

impl<T> Reloadable<T> {
    fn new(
        side: &'static str,
        paths: Vec<PathBuf>,
        build: Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>,
        reloads: prometheus::IntCounter,
    ) -> Result<Self, TlsError> {
        let stamps = paths.iter().map(|p| stamp(p)).collect();
        let first = build()?;
        Ok(Reloadable {
            current: ArcSwap::from_pointee(first),
            paths,
            seen: Mutex::new((stamps, None)),
            build,
            side,
            reloads,
        })
    }

    /// The configuration new connections use.
    pub fn get(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Rebuilds when a file changed. A failed rebuild (a half-written pair of files) keeps the
    /// current one; the next look tries again.
    pub fn check(&self) -> bool {
        let now: Vec<Stamp> = self.paths.iter().map(|p| stamp(p)).collect();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.0 == now {
            return false;
        }
        match (self.build)() {
            Ok(cfg) => {
                self.current.store(Arc::new(cfg));
                *seen = (now, None);
                self.reloads.inc();
                tracing::info!(side = self.side, "TLS certificates reloaded");
                true
            }
            Err(e) => {
                let e = e.to_string();
                if seen.1.as_deref() != Some(&e) {
                    tracing::warn!(side = self.side, error = %e, "TLS files changed but cannot be loaded; keeping the previous ones");
                    seen.1 = Some(e);
                }
                false
            }
        }
    }
}

/// The backend side: the reloadable config, and the name checked in the nodes' certificates.
pub struct BackendTls {
    pub config: Reloadable<ClientConfig>,
    server_name: Option<ServerName<'static>>,
    failures: prometheus::IntCounter,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl BackendTls {
    /// Runs the TLS handshake on a connected socket to `addr` ("host:port").
    pub async fn connect(
        &self,
        tcp: TcpStream,
        addr: &str,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => {
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                ServerName::try_from(host.to_string())
                    .map_err(|e| format!("TLS to {addr}: no server name to check: {e}"))?
            }
        };
        let connector = tokio_rustls::TlsConnector::from(self.config.get());
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => {
                self.failures.inc();
                Err(format!("TLS handshake with {addr}: {e}"))
            }
            Err(_) => {
                self.failures.inc();
                Err(format!("TLS handshake with {addr} timed out"))
            }
        }
    }
}

/// The client-facing side.
pub struct ServerTls {
    pub config: Reloadable<ServerConfig>,
    failures: prometheus::IntCounter,
}

impl ServerTls {
    /// Runs the handshake with a client; failures are counted and logged, never fatal.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        peer: std::net::SocketAddr,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.get());
        let e = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(s)) => return Some(s),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        self.failures.inc();
        tracing::info!(client = %peer, error = %e, "TLS handshake with a client failed; connection closed");
        None
    }
}

/// Both sides, as configured (either may be absent).
#[derive(Default)]
pub struct Tls {
    pub server: Option<Arc<ServerTls>>,
    pub backend: Option<Arc<BackendTls>>,
}

impl Tls {
    /// Reads every configured file now: a missing or bad one stops startup.
    pub fn load(config: &Config, m: &crate::metrics::Metrics) -> Result<Tls, TlsError> {
        let failures = &m.tls_handshake_failures;
        let mut tls = Tls::default();
        if let Some(files) = config.tls_server_files()? {
            let paths = files.paths();
            let config = Reloadable::new(
                "client",
                paths,
                Box::new(move || files.build()),
                m.tls_reloads.with_label_values(&["client"]),
            )?;
            tls.server = Some(Arc::new(ServerTls {
                config,
                failures: failures.with_label_values(&["client"]),
            }));
        }
        if let Some(files) = config.tls_backend_files()? {
            let server_name = match &config.backend_tls_server_name {
                Some(n) => Some(ServerName::try_from(n.clone()).map_err(|e| {
                    TlsError::Config(format!("--backend-tls-server-name {n}: {e}"))
                })?),
                None => None,
            };
            let paths = files.paths();
            let config = Reloadable::new(
                "backend",
                paths,
                Box::new(move || files.build()),
                m.tls_reloads.with_label_values(&["backend"]),
            )?;
            tls.backend = Some(Arc::new(BackendTls {
                config,
                server_name,
                failures: failures.with_label_values(&["backend"]),
            }));
        }
        Ok(tls)
    }

    /// Looks at the files every few seconds while anything can still use them.
    pub fn spawn_watcher(&self) {
        if self.server.is_none() && self.backend.is_none() {
            return;
        }
        // Weak: the watcher ends with the last connection that could use the configs.
        let server = self.server.as_ref().map(Arc::downgrade);
        let backend = self.backend.as_ref().map(Arc::downgrade);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD_EVERY).await;
                let (s, b) = (
                    server.as_ref().and_then(|w| w.upgrade()),
                    backend.as_ref().and_then(|w| w.upgrade()),
                );
                if s.is_none() && b.is_none() {
                    return;
                }
                if let Some(s) = s {
                    s.config.check();
                }
                if let Some(b) = b {
                    b.config.check();
                }
            }
        });
    }
}
