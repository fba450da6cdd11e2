//! What Envoy knows about one request, as the core's `CheckInput`: the same input
//! the ext_authz server builds from a `CheckRequest`, so the same pipeline decides.
//!
//! The peer certificate. The HTTP filter ABI exposes the peer's URI SAN and the
//! SHA-256 digest of its certificate, not the certificate itself, and the core's
//! X.509-SVID rules need all of it (key usage, validity, CA flag, every SAN). With
//! this module's certificate validator at the handshake (`handshake`), the
//! verified leaf is on the connection's filter state, and that is what is used.
//! Without it, Envoy can put the certificate in `x-forwarded-client-cert` (`Cert=`,
//! URL-encoded PEM, with `forward_client_cert_details: SANITIZE_SET`). A client could send that
//! header too, and Envoy keeps a client's copy under other settings, so a `Cert=` is
//! used only when its own SHA-256 equals the digest Envoy read from the TLS
//! session. Anything else leaves the certificate out, and the core denies. The
//! certificate is kept by that digest, so later requests (and later connections of
//! the same workload) need not read the header again.

use std::sync::Arc;

use cedargate::identity::certificate::parse_url_encoded_pem;
use cedargate::pipeline::input::{CheckInput, HttpInput, PeerInput};
use cedargate::policy::sets::ROUTE_POLICY_SET_KEY;

use crate::abi::{Attribute, Stream};
use crate::handshake::PEER_CERTIFICATE_KEY;

/// The header Envoy writes the peer certificate into.
const XFCC: &str = "x-forwarded-client-cert";

/// Peer certificates by the SHA-256 digest Envoy read from the TLS session: a
/// digest names exactly one certificate, so whatever header later arrives with the
/// same session digest, this is its certificate.
pub struct PeerCertificates {
    by_digest: moka::sync::Cache<String, Arc<str>>,
    max_bytes: usize,
}

impl PeerCertificates {
    pub fn new(entries: u64, max_bytes: usize) -> PeerCertificates {
        PeerCertificates { by_digest: moka::sync::Cache::new(entries.max(1)), max_bytes }
    }

    /// The URL-encoded PEM of the connection's peer certificate, or empty when
    /// there is none or none that Envoy's own digest vouches for.
    /// `xfcc`: the values of the request's `x-forwarded-client-cert` headers.
    fn of(&self, stream: &Stream, xfcc: &[&[u8]]) -> String {
        // Verified at this connection's handshake by this module's validator.
        if let Some(pem) = stream.filter_state(PEER_CERTIFICATE_KEY) {
            return text(Some(pem));
        }
        let Some(digest) = stream.attribute(Attribute::ConnectionSha256PeerCertificateDigest) else {
            return String::new();
        };
        let digest = String::from_utf8_lossy(digest).to_ascii_lowercase();
        if digest.is_empty() {
            return String::new();
        }
        if let Some(known) = self.by_digest.get(&digest) {
            return known.to_string();
        }
        for value in xfcc.iter().filter_map(|v| std::str::from_utf8(v).ok()) {
            for cert in xfcc_certs(value) {
                let Ok(parsed) = parse_url_encoded_pem(cert, self.max_bytes) else { continue };
                if parsed.fingerprint() == digest {
                    self.by_digest.insert(digest, Arc::from(cert));
                    return cert.to_owned();
                }
            }
        }
        String::new()
    }
}

/// The request on `stream`, with `policy_set` from the route's configuration.
pub fn check_input(stream: &Stream, policy_set: Option<&str>, certificates: &PeerCertificates) -> CheckInput {
    let raw = stream.request_headers();
    let mut xfcc: Vec<&[u8]> = Vec::new();
    let mut headers: Vec<(String, String)> = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        // Envoy wrote this header for the filter; the ext_authz server never sees
        // it (`forward_client_cert_details: SANITIZE`), so policies do not either.
        if name.eq_ignore_ascii_case(XFCC.as_bytes()) {
            xfcc.push(value);
            continue;
        }
        // A value that is not UTF-8 keeps its replacement characters: it cannot
        // equal any string a policy compares it with (as in the server).
        let mut name = text(Some(name));
        name.make_ascii_lowercase();
        headers.push((name, text(Some(value))));
    }
    // Stable: repeated headers keep their order.
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    let pseudo = |name: &str| {
        let start = headers.partition_point(|(n, _)| n.as_str() < name);
        headers.get(start).filter(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_default()
    };
    let http = HttpInput {
        id: pseudo("x-request-id"),
        method: pseudo(":method"),
        path: pseudo(":path"),
        host: pseudo(":authority"),
        scheme: pseudo(":scheme"),
        protocol: text(stream.attribute(Attribute::RequestProtocol)),
        raw_headers: true,
        headers,
    };
    let certificate = certificates.of(stream, &xfcc);
    let (ip, port) = socket(stream.attribute(Attribute::SourceAddress));
    let source = PeerInput {
        ip,
        port,
        principal: text(stream.attribute(Attribute::ConnectionUriSanPeerCertificate)),
        certificate,
    };
    let (ip, port) = socket(stream.attribute(Attribute::DestinationAddress));
    let destination = PeerInput { ip, port, ..PeerInput::default() };
    let context_extensions =
        policy_set.map(|set| vec![(ROUTE_POLICY_SET_KEY.to_owned(), set.to_owned())]).unwrap_or_default();
    CheckInput { source, destination, http: Some(http), context_extensions }
}

/// The `Cert=` values of an `x-forwarded-client-cert` header: elements split by
/// `,`, pairs by `;`, either only outside double quotes (a `Subject` may hold both).
fn xfcc_certs(header: &str) -> impl Iterator<Item = &str> {
    let mut pairs = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in header.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' | ';' if !quoted => {
                pairs.push(header.get(start..i).unwrap_or_default());
                start = i + 1;
            }
            _ => {}
        }
    }
    pairs.push(header.get(start..).unwrap_or_default());
    pairs.into_iter().filter_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        key.eq_ignore_ascii_case("cert").then(|| value.trim_matches('"'))
    })
}

/// Bytes from Envoy as text: validated (fast) when they are UTF-8, else with
/// replacement characters.
fn text(bytes: Option<&[u8]>) -> String {
    let bytes = bytes.unwrap_or_default();
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// `ip:port` (`[v6]:port` for IPv6), as Envoy formats a socket address.
fn socket(address: Option<&[u8]>) -> (Option<std::net::IpAddr>, Option<u16>) {
    let Some(address) = address.and_then(|a| std::str::from_utf8(a).ok()) else { return (None, None) };
    match address.parse::<std::net::SocketAddr>() {
        Ok(socket) => (Some(socket.ip()), Some(socket.port())),
        Err(_) => (address.parse().ok(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfcc_cert_values_are_found_outside_quotes_only() {
        let header =
            r#"By=spiffe://a;Hash=ab;Subject="CN=x,O=y;Cert=fake";Cert="%2D%2D%2D";URI=spiffe://b,Cert=second"#;
        let certs: Vec<&str> = xfcc_certs(header).collect();
        assert_eq!(certs, vec!["%2D%2D%2D", "second"]);
        assert_eq!(xfcc_certs("By=x;Hash=y").count(), 0);
        assert_eq!(xfcc_certs("").count(), 0);
    }

    #[test]
    fn socket_addresses_parse_as_envoy_writes_them() {
        assert_eq!(socket(Some(b"127.0.0.1:8080")), (Some([127, 0, 0, 1].into()), Some(8080)));
        assert_eq!(socket(Some(b"[::1]:443")).1, Some(443));
        assert_eq!(socket(Some(b"not an address")), (None, None));
        assert_eq!(socket(None), (None, None));
    }
}
