//! TLS on cedargate's own listeners: the gRPC listener presents its certificate,
//! requires a client certificate from the configured CA (mTLS), and picks up a
//! rotated certificate without a restart, keeping the last good one when a rotation
//! is broken. (Through real Envoy: tests/envoy_e2e.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cedargate::config::TlsFiles;
use common::pki::{Leaf, LeafSpec, Pki};
use common::{metric, shipped_policies, start, test_config};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};

const CEDARGATE: &str = "spiffe://example.org/ns/cedargate-system/sa/cedargate";
const ENVOY: &str = "spiffe://example.org/ns/default/sa/orders";

fn server_leaf(pki: &Pki) -> Leaf {
    let mut spec = LeafSpec::svid(CEDARGATE);
    spec.dns.push("cedargate.test".into());
    pki.leaf(&spec)
}

fn write(dir: &Path, name: &str, leaf: &Leaf) {
    std::fs::write(dir.join(format!("{name}.pem")), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join(format!("{name}-key.pem")), &leaf.key_pem).unwrap();
}

/// A client configuration trusting `ca_pem`, presenting `client` if given.
fn client_config(ca_pem: &str, client: Option<&Leaf>, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// Connects with TLS (ALPN h2), with `client` as the client certificate; returns the
/// server's leaf and the negotiated protocol, or the error.
async fn handshake(addr: &str, ca_pem: &str, client: Option<&Leaf>) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
    let connector = tokio_rustls::TlsConnector::from(client_config(ca_pem, client, b"h2"));
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut stream =
        connector.connect(ServerName::try_from("cedargate.test").unwrap(), tcp).await.map_err(|e| e.to_string())?;
    // Under TLS 1.3 a refused client certificate shows on the first read.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.map_err(|e| e.to_string())?;
    let mut first = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut first))
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| e.to_string())?;
    let (_, session) = stream.get_ref();
    let leaf = session.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    Ok((leaf, session.alpn_protocol().map(<[u8]>::to_vec)))
}

#[tokio::test]
async fn the_grpc_listener_requires_mtls_and_picks_up_a_rotated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::new();
    std::fs::write(d.join("ca.pem"), pki.ca_pem()).unwrap();
    let first = server_leaf(&pki);
    write(d, "server", &first);
    let mut config = test_config(shipped_policies());
    config.server.tls = Some(TlsFiles {
        cert_file: d.join("server.pem"),
        key_file: d.join("server-key.pem"),
        client_ca_file: Some(d.join("ca.pem")),
    });
    let running = start(config).await;
    let envoy = pki.svid(ENVOY);

    let (leaf, alpn) = handshake(&running.local_addr, &pki.ca_pem(), Some(&envoy)).await.unwrap();
    assert_eq!(leaf, first.der);
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let refused = handshake(&running.local_addr, &pki.ca_pem(), None).await;
    assert!(refused.is_err(), "a client without a certificate is refused: {refused:?}");
    let stranger = Pki::new().svid(ENVOY);
    let refused = handshake(&running.local_addr, &pki.ca_pem(), Some(&stranger)).await;
    assert!(refused.is_err(), "a client of another CA is refused: {refused:?}");

    // Rotation: the next connection gets the new certificate.
    let second = server_leaf(&pki);
    write(d, "server", &second);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (leaf, _) = handshake(&running.local_addr, &pki.ca_pem(), Some(&envoy)).await.unwrap();
        if leaf == second.der {
            break;
        }
        assert!(Instant::now() < deadline, "the rotated certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A broken rotation (a key that does not match) keeps the last good certificate.
    let other = server_leaf(&pki);
    std::fs::write(d.join("server.pem"), &other.cert_pem).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let scrape = || running.checker.parts().metrics.encode();
    while metric(&scrape(), "cedargate_tls_reload_failing{listener=\"grpc\"}") != Some(1.0) {
        assert!(Instant::now() < deadline, "the broken rotation was not noticed: {}", scrape());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (leaf, _) = handshake(&running.local_addr, &pki.ca_pem(), Some(&envoy)).await.unwrap();
    assert_eq!(leaf, second.der, "still the last good certificate");
    assert!(metric(&scrape(), "cedargate_tls_reloads_total{listener=\"grpc\",result=\"failure\"}") >= Some(1.0));
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_listener_with_unusable_tls_files_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let leaf = server_leaf(&pki);
    std::fs::write(dir.path().join("server.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("server-key.pem"), server_leaf(&pki).key_pem).unwrap();
    let mut config = test_config(shipped_policies());
    config.server.tls = Some(TlsFiles {
        cert_file: dir.path().join("server.pem"),
        key_file: dir.path().join("server-key.pem"),
        client_ca_file: None,
    });
    let err = cedargate::server::app::start(config.clone(), Arc::new(cedargate::pipeline::checker::SystemClock))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("server.pem"), "{err}");
    config.server.tls.as_mut().unwrap().cert_file = dir.path().join("missing.pem");
    let err =
        cedargate::server::app::start(config, Arc::new(cedargate::pipeline::checker::SystemClock)).await.err().unwrap();
    assert!(err.to_string().contains("missing.pem"), "{err}");
}

/// The admin listener over TLS with a client CA: metrics and status only for a
/// client with a certificate the CA signed.
#[tokio::test]
async fn the_admin_listener_serves_over_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::new();
    std::fs::write(d.join("ca.pem"), pki.ca_pem()).unwrap();
    write(d, "server", &server_leaf(&pki));
    let mut config = test_config(shipped_policies());
    config.admin.tls = Some(TlsFiles {
        cert_file: d.join("server.pem"),
        key_file: d.join("server-key.pem"),
        client_ca_file: Some(d.join("ca.pem")),
    });
    let running = start(config).await;
    let admin = running.admin_addr.unwrap().to_string();
    let get = |client: Option<Leaf>| {
        let (admin, ca) = (admin.clone(), pki.ca_pem());
        async move {
            let connector = tokio_rustls::TlsConnector::from(client_config(&ca, client.as_ref(), b"http/1.1"));
            let tcp = tokio::net::TcpStream::connect(&admin).await.unwrap();
            let mut stream = connector.connect(ServerName::try_from("cedargate.test").unwrap(), tcp).await.ok()?;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").await.ok()?;
            let mut response = String::new();
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response)).await.ok()?.ok()?;
            Some(response)
        }
    };
    let response = get(Some(pki.svid(ENVOY))).await.expect("an admin client with a certificate is served");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(get(None).await.is_none_or(|r| r.is_empty()), "a client without a certificate is not served");
    running.shutdown().await.unwrap();
}
