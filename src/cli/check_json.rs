//! Envoy `CheckRequest`s written as JSON (protobuf's JSON mapping, with either the
//! proto field names or their camelCase forms), as captured from a real Envoy or
//! written by hand for offline evaluation and tests.

use std::collections::HashMap;

use serde_json::Value;

use crate::server::proto::envoy::config::core::v3::{address, socket_address::PortSpecifier, Address, SocketAddress};
use crate::server::proto::envoy::service::auth::v3::{attribute_context, AttributeContext, CheckRequest};

#[derive(Debug, thiserror::Error)]
pub enum CheckJsonError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("field `{0}` has the wrong type")]
    WrongType(&'static str),
}

/// Parses a JSON `CheckRequest`.
pub fn parse(text: &str) -> Result<CheckRequest, CheckJsonError> {
    let value: Value = serde_json::from_str(text)?;
    let Some(attrs) = field(&value, "attributes") else {
        return Ok(CheckRequest { attributes: None });
    };
    let request = field(attrs, "request").map(|r| -> Result<_, CheckJsonError> {
        Ok(attribute_context::Request { time: None, http: field(r, "http").map(http).transpose()? })
    });
    Ok(CheckRequest {
        attributes: Some(AttributeContext {
            source: field(attrs, "source").map(peer).transpose()?,
            destination: field(attrs, "destination").map(peer).transpose()?,
            request: request.transpose()?,
            context_extensions: string_map(field(attrs, "context_extensions"), "context_extensions")?,
            ..AttributeContext::default()
        }),
    })
}

/// A field by its proto name or its JSON (camelCase) name.
fn field<'a>(value: &'a Value, proto_name: &str) -> Option<&'a Value> {
    value.get(proto_name).or_else(|| value.get(camel(proto_name))).filter(|v| !v.is_null())
}

fn camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn string(value: &Value, name: &'static str, key: &str) -> Result<String, CheckJsonError> {
    match field(value, key) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(CheckJsonError::WrongType(name)),
    }
}

fn string_map(value: Option<&Value>, name: &'static str) -> Result<HashMap<String, String>, CheckJsonError> {
    let Some(value) = value else {
        return Ok(HashMap::new());
    };
    let object = value.as_object().ok_or(CheckJsonError::WrongType(name))?;
    object.iter().map(|(k, v)| Ok((k.clone(), v.as_str().ok_or(CheckJsonError::WrongType(name))?.to_owned()))).collect()
}

fn peer(value: &Value) -> Result<attribute_context::Peer, CheckJsonError> {
    let address = field(value, "address")
        .and_then(|a| field(a, "socket_address"))
        .map(|s| -> Result<Address, CheckJsonError> {
            let port = match field(s, "port_value") {
                None => None,
                Some(p) => Some(PortSpecifier::PortValue(
                    p.as_u64()
                        .or_else(|| p.as_str().and_then(|s| s.parse().ok()))
                        .and_then(|p| u32::try_from(p).ok())
                        .ok_or(CheckJsonError::WrongType("port_value"))?,
                )),
            };
            Ok(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: string(s, "address", "address")?,
                    port_specifier: port,
                    ..SocketAddress::default()
                })),
            })
        })
        .transpose()?;
    Ok(attribute_context::Peer {
        address,
        principal: string(value, "principal", "principal")?,
        certificate: string(value, "certificate", "certificate")?,
        ..attribute_context::Peer::default()
    })
}

fn http(value: &Value) -> Result<attribute_context::HttpRequest, CheckJsonError> {
    let size = match field(value, "size") {
        None => 0,
        // int64 is a string in protobuf's JSON mapping.
        Some(v) => {
            v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).ok_or(CheckJsonError::WrongType("size"))?
        }
    };
    Ok(attribute_context::HttpRequest {
        id: string(value, "id", "id")?,
        method: string(value, "method", "method")?,
        headers: string_map(field(value, "headers"), "headers")?,
        path: string(value, "path", "path")?,
        host: string(value, "host", "host")?,
        scheme: string(value, "scheme", "scheme")?,
        protocol: string(value, "protocol", "protocol")?,
        body: string(value, "body", "body")?,
        size,
        ..attribute_context::HttpRequest::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proto_and_camel_case_names() {
        let a = parse(r#"{"attributes":{"source":{"principal":"p"},"context_extensions":{"k":"v"}}}"#).unwrap();
        let b = parse(r#"{"attributes":{"source":{"principal":"p"},"contextExtensions":{"k":"v"}}}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.attributes.unwrap().context_extensions.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn wrong_types_are_errors_not_panics() {
        assert!(matches!(parse(r#"{"attributes":{"source":{"principal":5}}}"#), Err(CheckJsonError::WrongType(_))));
        assert!(parse("[").is_err());
        assert_eq!(parse("{}").unwrap(), CheckRequest { attributes: None });
    }
}
