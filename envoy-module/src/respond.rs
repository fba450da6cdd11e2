//! The core's answer (`cedargate::pipeline::reply::Reply`) as Envoy calls: an
//! allowed request continues with its headers set and removed, a denied one gets a
//! local reply with the same status, headers and JSON body the ext_authz server
//! gives. Access logs read the decision from dynamic metadata under `cedargate`.

use cedargate::config::Config;
use cedargate::pipeline::decision::Decision;
use cedargate::pipeline::reply::{self, Reply};

use crate::abi::{Stream, HEADERS_CONTINUE, HEADERS_STOP_ITERATION};

/// Dynamic metadata namespace: `%DYNAMIC_METADATA(cedargate:decision_id)%`.
const METADATA_NAMESPACE: &str = "cedargate";

/// Applies `decision` to the stream; returns the request-headers status for Envoy.
pub fn apply(stream: &Stream, decision: &Decision, config: &Config) -> u32 {
    let (mut pairs, policies) = reply::metadata(decision);
    let policies = policies.join(",");
    pairs.push(("policies", &policies));
    stream.set_metadata(METADATA_NAMESPACE, &pairs);
    match Reply::of(decision, config) {
        Reply::Allow { set, remove } => {
            for name in &remove {
                stream.remove_request_header(name);
            }
            for (name, value) in &set {
                stream.set_request_header(name, value);
            }
            HEADERS_CONTINUE
        }
        Reply::Deny { status, headers, body } => {
            deny(stream, status, &headers, &body, decision.code());
            HEADERS_STOP_ITERATION
        }
    }
}

/// A local reply; `code` becomes Envoy's response code details
/// (`%RESPONSE_CODE_DETAILS%`: `cedargate_denied{policy_denied}`).
fn deny(stream: &Stream, status: u16, headers: &[(String, String)], body: &str, code: &str) {
    stream.send_response(status, headers, body, &format!("cedargate_denied{{{code}}}"));
}

/// The answer when the filter itself failed (it panicked, or Envoy handed it no
/// configuration): a deny, never a request let through unchecked.
pub fn deny_internal(stream: &Stream) -> u32 {
    let headers = [("content-type".to_owned(), "application/json".to_owned())];
    deny(stream, 403, &headers, "{\"reason\":\"internal_error\"}", "internal_error");
    HEADERS_STOP_ITERATION
}
