//! One CheckRequest builder for the integration tests and the benchmarks (which
//! include this file by path): a request as Envoy sends it for an mTLS listener.

use std::collections::HashMap;

use cedargate::server::proto::envoy::config::core::v3::{
    address, socket_address::PortSpecifier, Address, SocketAddress,
};
use cedargate::server::proto::envoy::service::auth::v3::{attribute_context, AttributeContext, CheckRequest};

/// A PEM certificate as Envoy forwards it (`include_peer_certificate`): URL-encoded.
pub fn url_encode(pem: &str) -> String {
    percent_encoding::utf8_percent_encode(pem, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A CheckRequest as Envoy sends it for an mTLS listener.
#[derive(Clone, Debug)]
pub struct Req {
    pub principal: String,
    pub certificate: String,
    pub method: String,
    pub path: String,
    pub host: String,
    pub headers: Vec<(String, String)>,
    pub context_extensions: Vec<(String, String)>,
    pub destination_principal: String,
}

impl Req {
    pub fn new(principal: &str, certificate_pem: Option<&str>) -> Req {
        Req {
            principal: principal.to_owned(),
            certificate: certificate_pem.map(url_encode).unwrap_or_default(),
            method: "GET".to_owned(),
            path: "/api/orders/1".to_owned(),
            host: "orders.example.org".to_owned(),
            headers: Vec::new(),
            context_extensions: Vec::new(),
            destination_principal: "spiffe://example.org/ns/default/sa/orders".to_owned(),
        }
    }

    pub fn method(mut self, m: &str) -> Req {
        self.method = m.to_owned();
        self
    }

    pub fn path(mut self, p: &str) -> Req {
        self.path = p.to_owned();
        self
    }

    pub fn host(mut self, h: &str) -> Req {
        self.host = h.to_owned();
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Req {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }

    pub fn route(mut self, k: &str, v: &str) -> Req {
        self.context_extensions.push((k.to_owned(), v.to_owned()));
        self
    }

    /// The headers Envoy adds to every request it forwards, beside the pseudo-headers.
    pub fn envoy_headers(self) -> Req {
        self.header(":scheme", "https")
            .header("accept", "application/json")
            .header("user-agent", "cedargate-test/1.0")
            .header("x-forwarded-proto", "https")
            .header("x-request-id", "2f1b1d3e-8c5e-4f7a-9a53-1b2c3d4e5f60")
            .header("x-envoy-expected-rq-timeout-ms", "15000")
    }

    /// `authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Req {
        self.header("authorization", &format!("Bearer {token}"))
    }

    pub fn destination(mut self, p: &str) -> Req {
        self.destination_principal = p.to_owned();
        self
    }

    pub fn build(&self) -> CheckRequest {
        let mut headers: HashMap<String, String> = self.headers.iter().cloned().collect();
        headers.insert(":method".into(), self.method.clone());
        headers.insert(":path".into(), self.path.clone());
        headers.insert(":authority".into(), self.host.clone());
        let socket = |port| Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "127.0.0.1".into(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        };
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(attribute_context::Peer {
                    address: Some(socket(40000)),
                    principal: self.principal.clone(),
                    certificate: self.certificate.clone(),
                    ..Default::default()
                }),
                destination: Some(attribute_context::Peer {
                    address: Some(socket(10000)),
                    principal: self.destination_principal.clone(),
                    ..Default::default()
                }),
                request: Some(attribute_context::Request {
                    time: None,
                    http: Some(attribute_context::HttpRequest {
                        id: "1".into(),
                        method: self.method.clone(),
                        headers,
                        path: self.path.clone(),
                        host: self.host.clone(),
                        scheme: "https".into(),
                        protocol: "HTTP/2".into(),
                        ..Default::default()
                    }),
                }),
                context_extensions: self.context_extensions.iter().cloned().collect(),
                ..Default::default()
            }),
        }
    }

    pub fn input(&self) -> cedargate::pipeline::input::CheckInput {
        cedargate::server::wire::check_input(self.build())
    }

    /// The input with `extra` header lines added unjoined, as Envoy's
    /// `encode_raw_headers` sends repeated headers.
    pub fn raw_input(&self, extra: &[(&str, &str)]) -> cedargate::pipeline::input::CheckInput {
        let mut input = self.input();
        if let Some(http) = input.http.as_mut() {
            http.headers.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
            http.headers.sort_by(|a, b| a.0.cmp(&b.0));
            http.raw_headers = true;
        }
        input
    }
}
