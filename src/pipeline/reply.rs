//! What a decision asks of Envoy, whichever way Envoy asked: the headers an allowed
//! request travels on with (and those it must lose), or the status, headers and body
//! of a denial. The gRPC server (`server::wire`) and the in-process filter
//! (`envoy-module/`) each encode this one answer, so both front-ends answer alike.

use crate::config::Config;
use crate::pipeline::decision::{Decision, DenyReason, Outcome};

/// The answer to one request, before it is encoded for a front-end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Allow {
        /// Set on the request to the upstream, overwriting any copy the client sent:
        /// appending would let a spoofed copy travel on as `spoofed,real`.
        set: Vec<(String, String)>,
        /// Removed from the request to the upstream.
        remove: Vec<String>,
    },
    Deny {
        /// 401 for a credential problem, 403 otherwise.
        status: u16,
        headers: Vec<(String, String)>,
        /// `{"reason": ..., "decision_id": ...}`: policy internals stay in the logs.
        body: String,
    },
}

impl Reply {
    pub fn of(decision: &Decision, config: &Config) -> Reply {
        let response = &config.response;
        match &decision.outcome {
            Outcome::Allow => {
                let mut set = Vec::new();
                let mut remove = Vec::new();
                if !response.principal_header.is_empty() {
                    match &decision.peer {
                        Some(peer) => set.push((response.principal_header.clone(), peer.spiffe_id.as_str().to_owned())),
                        // Never let a client-sent copy through as if cedargate had set it.
                        None => remove.push(response.principal_header.clone()),
                    }
                }
                if !response.decision_id_header.is_empty() {
                    set.push((response.decision_id_header.clone(), decision.id.clone()));
                }
                // Claim headers: set from the verified token, removed otherwise, so a
                // client can never supply them itself.
                let forwarded = decision.token.as_ref().map(|t| t.forward.as_slice()).unwrap_or_default();
                set.extend(forwarded.iter().cloned());
                for name in config.tokens.issuers.iter().flat_map(|i| i.forward.keys()) {
                    if !forwarded.iter().any(|(n, _)| n == name) && !remove.contains(name) {
                        remove.push(name.clone());
                    }
                }
                if config.tokens.strip_authorization {
                    remove.push("authorization".to_owned());
                }
                Reply::Allow { set, remove }
            }
            Outcome::Deny(reason) => {
                let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
                if !response.decision_id_header.is_empty() {
                    headers.push((response.decision_id_header.clone(), decision.id.clone()));
                }
                if let DenyReason::Token(e) = reason {
                    headers.push(("www-authenticate".to_owned(), e.challenge()));
                }
                let body = serde_json::json!({ "reason": reason.code(), "decision_id": decision.id }).to_string();
                Reply::Deny { status: reason.http_status(), headers, body }
            }
        }
    }
}

/// What access logs can read about a decision (Envoy's dynamic metadata): string
/// fields, then the deciding policies' ids.
pub fn metadata(decision: &Decision) -> (Vec<(&'static str, &str)>, &[String]) {
    let mut fields = Vec::with_capacity(8);
    fields.extend([
        ("decision_id", decision.id.as_str()),
        ("decision", if decision.is_allowed() { "allow" } else { "deny" }),
        ("reason", decision.code()),
        ("policy_version", decision.policy_version.as_str()),
    ]);
    if let Some(peer) = &decision.peer {
        fields.push(("principal", peer.spiffe_id.as_str()));
    }
    if let Some(token) = &decision.token {
        fields.push(("token_issuer", token.iss.as_str()));
        fields.push(("token_subject", token.sub.as_str()));
        fields.push(("token_fingerprint", token.fingerprint.as_str()));
    }
    (fields, &decision.policies)
}
