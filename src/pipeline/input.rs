//! What a Check asks, as plain Rust: the domain form of Envoy's `AttributeContext`.
//!
//! `wire` fills these from protobuf; nothing after it sees a prost type. Every field
//! is as Envoy sent it (untrusted, unvalidated): `identity` and `policy::request`
//! decide what is usable.

use std::net::IpAddr;

/// One ext_authz Check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckInput {
    pub source: PeerInput,
    pub destination: PeerInput,
    /// `None` when Envoy sent no `request.http` (a network-filter check, or a bug).
    pub http: Option<HttpInput>,
    /// Envoy's per-route `context_extensions`, sorted by key.
    pub context_extensions: Vec<(String, String)>,
}

/// One end of the connection, as Envoy saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInput {
    /// IP address, when the peer is on a socket (not a pipe).
    pub ip: Option<IpAddr>,
    pub port: Option<u16>,
    /// URI SAN (else DNS SAN, else subject) of the peer certificate; empty without mTLS.
    pub principal: String,
    /// URL-encoded PEM of the peer's leaf certificate; empty unless Envoy was told
    /// `include_peer_certificate: true`.
    pub certificate: String,
}

/// The HTTP request being authorized.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpInput {
    /// Envoy's request id (`x-request-id`), for correlation only.
    pub id: String,
    pub method: String,
    /// Raw `:path`, with the query string; not decoded.
    pub path: String,
    /// `:authority` / `Host`.
    pub host: String,
    pub scheme: String,
    pub protocol: String,
    /// Lowercase names, sorted by name. With `raw_headers` a repeated header is one
    /// entry per occurrence, in request order; otherwise Envoy joined them with `,`.
    pub headers: Vec<(String, String)>,
    /// Envoy sent the headers unjoined (`encode_raw_headers: true`), so a repeated
    /// header can be told from one whose value holds a `,`.
    pub raw_headers: bool,
}

impl HttpInput {
    /// The value of one header (names are lowercase); the first, if it is repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).next()
    }

    /// Every value of one header, in request order.
    pub fn header_values(&self, name: &str) -> impl Iterator<Item = &str> + '_ {
        // One binary search; the run of equal names after it is short.
        let start = self.headers.partition_point(|(n, _)| n.as_str() < name);
        let run = self.headers.get(start..).unwrap_or_default();
        let len = run.iter().take_while(|(n, _)| n == name).count();
        run.get(..len).unwrap_or_default().iter().map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_found_by_exact_name_in_request_order() {
        let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
        let http = HttpInput {
            headers: vec![pair("x-a", "1"), pair("x-ab", "2"), pair("x-b", "3"), pair("x-b", "4"), pair("x-c", "5")],
            ..HttpInput::default()
        };
        assert_eq!(http.header("x-b"), Some("3"));
        assert_eq!(http.header_values("x-b").collect::<Vec<_>>(), ["3", "4"]);
        assert_eq!(http.header("x-a"), Some("1"));
        assert_eq!(http.header_values("x-a").collect::<Vec<_>>(), ["1"]);
        assert_eq!(http.header("x-c"), Some("5"));
        // Absent: before the first, between two, a prefix of one, after the last.
        for name in ["a", "x-aa", "x-", "x-bb", "z"] {
            assert_eq!(http.header(name), None, "{name}");
            assert_eq!(http.header_values(name).count(), 0, "{name}");
        }
    }
}
