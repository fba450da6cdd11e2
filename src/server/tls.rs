//! TLS on cedargate's own listeners (gRPC and admin): a server certificate and,
//! optionally, a client CA that every client (Envoy, presenting its own SVID) must
//! be signed by.
//!
//! Certificates in a mesh live for hours, so the files are watched and a rotation
//! takes effect for the next connection without a restart. A rotation that cannot
//! be loaded (a key that does not match, a half-written file) keeps the last good
//! configuration, is logged once, counted and shown as failing in the metrics.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::config::TlsFiles;
use crate::ops::metrics::{Sample, StateSource};

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read `{path}`: {message}")]
    Read { path: PathBuf, message: String },
    #[error("`{0}` holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A listener's TLS configuration, swapped when its files change.
pub struct ReloadingTls {
    /// `grpc` or `admin`, for logs and metrics.
    listener: &'static str,
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    current: ArcSwap<rustls::ServerConfig>,
    /// Size and modification time of each file as last loaded.
    seen: Mutex<Vec<Option<(u64, SystemTime)>>>,
    last_error: Mutex<Option<String>>,
    loaded: AtomicU64,
    failed: AtomicU64,
}

impl ReloadingTls {
    /// Loads the files now: a listener that cannot be secured does not start.
    pub fn load(listener: &'static str, files: &TlsFiles, alpn: &[&[u8]]) -> Result<Arc<ReloadingTls>, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let seen = stamps(files);
        let config = build(files, &alpn)?;
        Ok(Arc::new(ReloadingTls {
            listener,
            files: files.clone(),
            alpn,
            current: ArcSwap::from_pointee(config),
            seen: Mutex::new(seen),
            last_error: Mutex::new(None),
            loaded: AtomicU64::new(1),
            failed: AtomicU64::new(0),
        }))
    }

    /// Completes a client's handshake with the configuration in force now, within
    /// `HANDSHAKE_TIMEOUT`; `None` (logged at debug) when it fails or stalls.
    pub async fn accept(&self, stream: TcpStream) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.current.load_full());
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                tracing::debug!(listener = self.listener, "TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                tracing::debug!(listener = self.listener, "TLS handshake timed out");
                None
            }
        }
    }

    /// Reloads when a file changed; `Ok(true)` when a new configuration is in force.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&self.files);
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if *seen == now {
            return Ok(false);
        }
        let result = build(&self.files, &self.alpn);
        let mut last_error = self.last_error.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match result {
            Ok(config) => {
                self.current.store(Arc::new(config));
                *seen = now;
                *last_error = None;
                self.loaded.fetch_add(1, Ordering::Relaxed);
                tracing::info!(listener = self.listener, "TLS certificate reloaded");
                Ok(true)
            }
            Err(e) => {
                // Remembering the refused files' stamps logs this once per change,
                // not once a second.
                tracing::error!(listener = self.listener, error = %e, "TLS files refused; keeping the last good certificate");
                *seen = now;
                *last_error = Some(e.to_string());
                self.failed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// The certificate, key and client CA files, for `ops::watch`.
    pub fn files(&self) -> Vec<&Path> {
        self.files.paths().collect()
    }
}

/// Size and modification time of the certificate, key and client CA files (links
/// followed, as a Kubernetes Secret volume swaps them).
fn stamps(files: &TlsFiles) -> Vec<Option<(u64, SystemTime)>> {
    files.paths().map(|path| std::fs::metadata(path).ok().and_then(|m| Some((m.len(), m.modified().ok()?)))).collect()
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |message: String| TlsError::Read { path: path.to_owned(), message };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| read(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(e.to_string()))?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certificates)
}

fn build(files: &TlsFiles, alpn: &[Vec<u8>]) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certificates = read_certificates(&files.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|e| TlsError::Read { path: files.key_file.clone(), message: e.to_string() })?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in read_certificates(path)? {
                roots.add(certificate).map_err(|e| TlsError::Config(format!("{}: {e}", path.display())))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    // Checks that the key belongs to the certificate.
    let mut config = builder
        .with_single_cert(certificates, key)
        .map_err(|e| TlsError::Config(format!("{}: {e}", files.cert_file.display())))?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}

/// A TLS connection accepted for the gRPC server.
pub struct TlsConnection(tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for TlsConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Accepts TCP connections, sets each up with `configure` (socket options), and
/// completes their handshakes off the accept loop, so a slow or hostile client
/// delays no one else. Ends when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    configure: fn(&TcpStream),
) -> impl tokio_stream::Stream<Item = std::io::Result<TlsConnection>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = tls.listener, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            configure(&stream);
            let (tls, tx) = (Arc::clone(&tls), tx.clone());
            tokio::spawn(async move {
                if let Some(stream) = tls.accept(stream).await {
                    let _ = tx.send(Ok(TlsConnection(stream))).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls").field("listener", &self.listener).finish_non_exhaustive()
    }
}

/// Reloads by result, and whether the files on disk are refused, when scraped.
impl StateSource for ReloadingTls {
    fn samples(&self) -> Vec<Sample> {
        let reloads = |result: &str, value: &AtomicU64| Sample::Counter {
            name: "tls_reloads",
            help: "Loads of a listener's TLS certificate files, by result (a refused change keeps the last good one)",
            labels: vec![("listener", self.listener.to_owned()), ("result", result.to_owned())],
            value: value.load(Ordering::Relaxed),
        };
        let failing = self.last_error.lock().map(|e| e.is_some()).unwrap_or(true);
        vec![
            reloads("success", &self.loaded),
            reloads("failure", &self.failed),
            Sample::Gauge {
                name: "tls_reload_failing",
                help: "1 while a listener's TLS files on disk are refused and an older certificate is in use",
                labels: vec![("listener", self.listener.to_owned())],
                value: i64::from(failing),
            },
        ]
    }
}
