//! The gRPC layer: `Authorization/Check` (framed by `check_route`, translated by
//! `wire`, decided by `pipeline::authorize`) and `grpc.health.v1` (tonic's), bound
//! to TCP or a Unix socket.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic_health::ServingStatus;

use crate::config::ListenAddr;
use crate::pipeline::authorize::Authorizer;
use crate::server::check_route::CheckLayer;
use crate::server::proto::envoy::service::auth::v3::authorization_server::SERVICE_NAME;

/// Accepted connections with Nagle's algorithm off. Envoy sends each Check as a
/// few small HTTP/2 frames; with Nagle on, a frame can wait for the peer's delayed
/// ACK (40 ms on Linux) and that wait lands in every request's latency.
pub fn nodelay(
    incoming: TcpListenerStream,
) -> impl tokio_stream::Stream<Item = std::io::Result<Coalesced<tokio::net::TcpStream>>> {
    use tokio_stream::StreamExt;
    incoming.map(|accepted| accepted.inspect(set_nodelay).map(Coalesced))
}

/// A connection that tells the HTTP/2 server it cannot write vectored. h2 copies
/// a DATA frame of under 256 bytes into its write buffer when the connection can
/// write vectored, and chains a larger one, flushing before it buffers another
/// frame: every CheckResponse (about 400 bytes with its headers and metadata) then
/// took a `writev` of its own, and the trailers another (1.6 per Check, against
/// 0.9 for a no-op server's empty answer). Without vectored writes h2 copies frames
/// up to 1 KiB, so the answers that are ready go out together. Every listener's
/// connections (TCP, TLS, Unix) are served through it.
pub struct Coalesced<T>(pub T);

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Coalesced<T> {
    type ConnectInfo = T::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        false
    }
}

fn set_nodelay(stream: &tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
}

/// A bound listener, before serving.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    pub async fn bind(addr: &ListenAddr) -> std::io::Result<Listener> {
        match addr {
            ListenAddr::Tcp(addr) => Ok(Listener::Tcp(TcpListener::bind(addr).await?)),
            ListenAddr::Unix(path) => {
                remove_stale_socket(path)?;
                Ok(Listener::Unix(UnixListener::bind(path)?, path.clone()))
            }
        }
    }

    /// `ip:port` actually bound (port 0 resolved), or `unix:/path`.
    pub fn local_addr(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Listener::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }
}

/// A socket file left by a previous run would make bind fail; anything that is not
/// a socket is left alone.
fn remove_stale_socket(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        _ => Ok(()),
    }
}

/// How the gRPC listener serves: TLS, and the drain before it closes.
pub struct ServeOptions {
    pub tls: Option<Arc<crate::server::tls::ReloadingTls>>,
    pub drain: std::time::Duration,
}

/// Serves Check and health until `shutdown` completes; then reports NOT_SERVING,
/// keeps answering for the drain period (Envoy's health checks move traffic to
/// other replicas meanwhile), and finishes the Checks in flight.
pub async fn serve(
    listener: Listener,
    authorizer: Arc<Authorizer>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    // The policy set was loaded and validated before the server was built.
    health.set_service_status(SERVICE_NAME, ServingStatus::Serving).await;
    health.set_service_status("", ServingStatus::Serving).await;
    let drain = options.drain;
    let shutdown = async move {
        shutdown.await;
        health.set_service_status(SERVICE_NAME, ServingStatus::NotServing).await;
        health.set_service_status("", ServingStatus::NotServing).await;
        if !drain.is_zero() {
            tracing::info!(drain = ?drain, "health NOT_SERVING; still answering Checks while traffic moves away");
            tokio::time::sleep(drain).await;
        }
    };
    // Check is answered by `check_route` before tonic routes anything; tonic's
    // routes serve health and answer anything else (UNIMPLEMENTED).
    let router = tonic::transport::Server::builder().layer(CheckLayer::new(authorizer)).add_service(health_service);
    match (listener, options.tls) {
        (Listener::Tcp(l), Some(tls)) => {
            use tokio_stream::StreamExt;
            let incoming = crate::server::tls::incoming(l, tls, set_nodelay).map(|accepted| accepted.map(Coalesced));
            router.serve_with_incoming_shutdown(incoming, shutdown).await
        }
        (Listener::Tcp(l), None) => {
            router.serve_with_incoming_shutdown(nodelay(TcpListenerStream::new(l)), shutdown).await
        }
        (Listener::Unix(l, path), _) => {
            use tokio_stream::StreamExt;
            let incoming = UnixListenerStream::new(l).map(|accepted| accepted.map(Coalesced));
            let result = router.serve_with_incoming_shutdown(incoming, shutdown).await;
            let _ = remove_stale_socket(&path);
            result
        }
    }
}
