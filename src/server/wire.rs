//! The one place where protobuf meets the domain: Envoy's `CheckRequest` becomes a
//! `CheckInput`, a `Decision` becomes a `CheckResponse`. Conversion never fails:
//! anything missing stays empty and the pipeline decides what that means.

use std::net::IpAddr;

use crate::config::Config;
use crate::pipeline::decision::Decision;
use crate::pipeline::input::{CheckInput, HttpInput, PeerInput};
use crate::pipeline::reply::{self, Reply};
use crate::server::metadata;
use crate::server::proto::envoy::config::core::v3::{
    address, header_value_option::HeaderAppendAction, Address, HeaderValue, HeaderValueOption,
};
use crate::server::proto::envoy::r#type::v3::HttpStatus;
use crate::server::proto::envoy::service::auth::v3::{
    attribute_context::{HttpRequest, Peer},
    check_response::HttpResponse,
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use crate::server::proto::google::rpc::Status;

/// gRPC status codes Envoy reads from `CheckResponse.status`.
const GRPC_OK: i32 = 0;
const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_UNAUTHENTICATED: i32 = 16;

/// Envoy's `CheckRequest` as a domain `CheckInput`.
pub fn check_input(request: CheckRequest) -> CheckInput {
    let Some(attributes) = request.attributes else {
        return CheckInput::default();
    };
    let mut context_extensions: Vec<(String, String)> = attributes.context_extensions.into_iter().collect();
    context_extensions.sort();
    CheckInput {
        source: peer(attributes.source),
        destination: peer(attributes.destination),
        http: attributes.request.and_then(|r| r.http).map(http),
        context_extensions,
    }
}

fn peer(peer: Option<Peer>) -> PeerInput {
    let Some(peer) = peer else {
        return PeerInput::default();
    };
    let (ip, port) = socket(peer.address);
    PeerInput { ip, port, principal: peer.principal, certificate: peer.certificate }
}

fn socket(address: Option<Address>) -> (Option<IpAddr>, Option<u16>) {
    match address.and_then(|a| a.address) {
        Some(address::Address::SocketAddress(s)) => {
            let port = match s.port_specifier {
                Some(crate::server::proto::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p)) => {
                    u16::try_from(p).ok()
                }
                _ => None,
            };
            (s.address.parse().ok(), port)
        }
        _ => (None, None),
    }
}

fn http(http: HttpRequest) -> HttpInput {
    // `encode_raw_headers: true` sends `header_map`: one entry per header line,
    // repeated names unjoined, so repetition stays visible.
    let raw_headers = http.headers.is_empty() && http.header_map.is_some();
    let mut headers: Vec<(String, String)> = if raw_headers {
        http.header_map
            .map(|m| m.headers)
            .unwrap_or_default()
            .into_iter()
            .map(|h| {
                // A value that is not UTF-8 keeps its replacement characters: it
                // cannot equal any string a policy compares it with.
                let value =
                    if h.raw_value.is_empty() { h.value } else { String::from_utf8_lossy(&h.raw_value).into_owned() };
                (h.key.to_ascii_lowercase(), value)
            })
            .collect()
    } else {
        http.headers.into_iter().collect()
    };
    // Stable: repeated headers keep their order.
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    HttpInput {
        id: http.id,
        method: http.method,
        path: http.path,
        host: http.host,
        scheme: http.scheme,
        protocol: http.protocol,
        headers,
        raw_headers,
    }
}

/// A `Decision` as Envoy's `CheckResponse`.
pub fn check_response(decision: &Decision, config: &Config) -> CheckResponse {
    let (strings, policies) = reply::metadata(decision);
    let metadata = metadata::encode(&strings, ("policies", policies));
    match Reply::of(decision, config) {
        Reply::Allow { set, remove } => CheckResponse {
            status: Some(Status { code: GRPC_OK, ..Status::default() }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: set.into_iter().map(overwrite).collect(),
                headers_to_remove: remove,
                response_headers_to_add: Vec::new(),
            })),
            dynamic_metadata: metadata,
        },
        Reply::Deny { status, headers, body } => {
            let grpc = if status == 401 { GRPC_UNAUTHENTICATED } else { GRPC_PERMISSION_DENIED };
            CheckResponse {
                status: Some(Status { code: grpc, message: decision.code().to_owned(), details: Vec::new() }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: i32::from(status) }),
                    headers: headers.into_iter().map(overwrite).collect(),
                    body,
                })),
                dynamic_metadata: metadata,
            }
        }
    }
}

/// Overwrite, never append: appending would let a spoofed client copy travel on
/// as `spoofed,real`.
fn overwrite((key, value): (String, String)) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key, value, raw_value: Vec::new() }),
        append: None,
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        keep_empty_value: false,
    }
}
