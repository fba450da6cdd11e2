//! The requests every Envoy front-end must answer alike, through a real Envoy with
//! the shipped policies: the ext_authz server (`envoy_e2e.rs`) and the in-process
//! filter (`in_process.rs`) both run these, so the two cannot drift apart.

use std::path::Path;

use cedargate::config::IssuerConfig;
use time::OffsetDateTime;

use super::envoy::{mesh_pki, reason, write_leaf, Client, FRONTEND};
use super::jwt::{self, Signer};
use super::pki::{Leaf, LeafSpec};

pub const PAYMENTS: &str = "spiffe://example.org/ns/default/sa/payments";

/// What the cases need, written to `d`: the mesh PKI with the frontend's
/// certificate (returned), the other clients' certificates, and a token issuer's
/// JWKS file (`jwks.json`) with the returned signer's key.
pub fn setup(d: &Path) -> (Leaf, Signer) {
    let (pki, frontend) = mesh_pki(d);
    write_leaf(d, "payments", &pki.svid(PAYMENTS));
    write_leaf(d, "evil", &pki.svid("spiffe://evil.org/ns/default/sa/frontend"));
    let now = OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    write_leaf(d, "long-lived", &pki.leaf(&LeafSpec::svid(FRONTEND).valid_for(now - day, now + 29 * day)));
    write_leaf(d, "expired", &pki.leaf(&LeafSpec::svid(FRONTEND).valid_for(now - 2 * day, now - day)));
    let signer = Signer::ec("e2e-1");
    std::fs::write(d.join("jwks.json"), jwt::jwks(&[&signer])).unwrap();
    (frontend, signer)
}

/// The token issuer the cases expect, its keys in `d/jwks.json`, `x-user` forwarded.
pub fn issuer(d: &Path) -> IssuerConfig {
    IssuerConfig {
        issuer: jwt::ISSUER.to_owned(),
        audiences: vec![jwt::AUDIENCE.to_owned()],
        jwks_file: Some(d.join("jwks.json")),
        forward: [("x-user".to_owned(), "sub".to_owned())].into(),
        ..IssuerConfig::default()
    }
}

/// Runs the cases; `hits` counts the requests that reached the upstream, 0 before.
/// Ends with three requests allowed.
pub fn run(client: &Client<'_>, d: &Path, signer: &Signer, frontend: &Leaf, hits: &dyn Fn() -> usize) {
    // Allowed: frontend → orders /api/..., and the upstream sees the identity header
    // cedargate injected, not the copy the client tried to smuggle in.
    let reply =
        client.get(Some("frontend"), "/api/orders/1", &["-H", "x-cedargate-principal: spiffe://evil.org/spoofed"]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains(&format!("x-cedargate-principal: {FRONTEND}\r\n")), "{}", reply.body);
    assert!(!reply.body.contains("spoofed"), "spoofed identity header reached the upstream: {}", reply.body);
    assert!(reply.body.contains("x-cedargate-decision-id: "), "{}", reply.body);
    assert_eq!(hits(), 1);

    // A service without a permit.
    let reply = client.get(Some("payments"), "/api/orders/1", &[]);
    assert_eq!((reply.status, reason(&reply)), (403, "policy_denied".into()), "{reply:?}");

    // Path tricks aimed at /admin, including one whose raw form starts with a
    // permitted prefix: Envoy normalizes each to /admin, which the guardrail denies.
    for path in ["//admin", "/api/orders/../../admin", "/%61dmin", "/api/orders/%2e%2e/%2e%2e/admin", "/ADMIN"] {
        let reply = client.get(Some("frontend"), path, &[]);
        assert_eq!((reply.status, reason(&reply)), (403, "policy_denied".into()), "{path}: {reply:?}");
    }
    // Encoded slashes are refused by Envoy itself (path_with_escaped_slashes_action).
    let reply = client.get(Some("frontend"), "/api/orders/..%2F..%2Fadmin", &[]);
    assert_eq!(reply.status, 400, "{reply:?}");
    // Method overrides are refused: the upstream could act on another method.
    let reply = client.get(Some("frontend"), "/api/orders/1", &["-H", "x-http-method-override: DELETE"]);
    assert_eq!((reply.status, reason(&reply)), (400, "method_override".into()), "{reply:?}");

    // Another trust domain, signed by the same CA: Envoy lets it through, cedargate
    // does not (its own validator, at the handshake already).
    let refused = client.envoy.counter("ssl.fail_verify_error");
    let reply = client.get(Some("evil"), "/api/orders/1", &[]);
    if client.validates_handshake {
        assert!(reply.exit != 0 && reply.status == 0, "{reply:?}");
        assert_eq!(client.envoy.counter("ssl.fail_verify_error"), refused + 1);
    } else {
        assert_eq!((reply.status, reason(&reply)), (403, "trust_domain_not_allowed".into()), "{reply:?}");
    }

    // A 30-day certificate: denied by the `forbid` on long-lived credentials.
    let reply = client.get(Some("long-lived"), "/api/orders/1", &[]);
    assert_eq!((reply.status, reason(&reply)), (403, "policy_denied".into()), "{reply:?}");
    assert_eq!(hits(), 1, "no denied request reached the upstream");

    // Tokens. The frontend places an order for a user with scope orders:write: the
    // upstream sees the subject header cedargate set, not the client's copy.
    let t = jwt::now();
    let bearer = |claims: &serde_json::Value| format!("authorization: Bearer {}", signer.sign(claims));
    let order = |cert: &str, auth: &str, dump: &str| {
        let dump = d.join(dump);
        let args = ["-X", "POST", "-H", auth, "-H", "x-user: spoofed", "-D", dump.to_str().unwrap()];
        let reply = client.get(Some(cert), "/api/orders", &args);
        (reply, std::fs::read_to_string(&dump).unwrap_or_default().to_ascii_lowercase())
    };
    let (reply, _) = order("frontend", &bearer(&jwt::claims(t, "alice")), "ok.h");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("x-user: alice\r\n") && !reply.body.contains("spoofed"), "{}", reply.body);
    assert_eq!(hits(), 2);
    // Expired, and for another audience: 401 with an RFC 6750 challenge.
    let mut expired = jwt::claims(t - 900, "alice");
    expired["exp"] = serde_json::json!(t - 600);
    let mut other_aud = jwt::claims(t, "alice");
    other_aud["aud"] = serde_json::json!("payments");
    for (claims, code) in [(expired, "token_expired"), (other_aud, "token_audience_invalid")] {
        let (reply, headers) = order("frontend", &bearer(&claims), "denied.h");
        assert_eq!((reply.status, reason(&reply)), (401, code.to_owned()), "{reply:?}");
        assert!(headers.contains("www-authenticate: bearer realm=\"cedargate\", error=\"invalid_token\""), "{headers}");
    }
    // A token bound to the frontend's certificate, replayed over the payments certificate.
    let mut bound = jwt::claims(t, "alice");
    bound["cnf"] = serde_json::json!({ "x5t#S256": jwt::x5t_s256(&frontend.der) });
    let (reply, _) = order("frontend", &bearer(&bound), "bound.h");
    assert_eq!(reply.status, 200, "{reply:?}");
    let (reply, _) = order("payments", &bearer(&bound), "replay.h");
    assert_eq!((reply.status, reason(&reply)), (401, "token_binding_mismatch".into()), "{reply:?}");
    // A forged `alg: none` token in an authorization header that is not quite
    // `Bearer <token>`: refused, never taken for "no token" and sent upstream.
    let forged = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(&jwt::claims(t, "mallory").to_string()));
    for auth in [format!("authorization: Bearer\t{forged}"), format!("authorization: Token {forged}")] {
        let (reply, _) = order("frontend", &auth, "forged.h");
        assert_eq!((reply.status, reason(&reply)), (401, "token_malformed".into()), "{auth}: {reply:?}");
    }
    // A DPoP-bound token is sender-constrained in a way cedargate cannot check.
    let mut dpop = jwt::claims(t, "alice");
    dpop["cnf"] = serde_json::json!({ "jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I" });
    let (reply, _) = order("frontend", &bearer(&dpop), "dpop.h");
    assert_eq!((reply.status, reason(&reply)), (401, "token_binding_unsupported".into()), "{reply:?}");
    assert_eq!(hits(), 3, "no refused token reached the upstream");

    // Expired certificate and no certificate: refused by Envoy during the handshake.
    let reply = client.get(Some("expired"), "/api/orders/1", &[]);
    assert!(reply.exit != 0 && reply.status == 0, "{reply:?}");
    let before = client.envoy.counter("ssl.fail_verify_no_cert");
    let reply = client.get(None, "/api/orders/1", &["--tls-max", "1.2"]);
    assert!(reply.exit != 0 && reply.status == 0, "{reply:?}");
    assert_eq!(client.envoy.counter("ssl.fail_verify_no_cert"), before + 1);
    assert_eq!(hits(), 3);
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}
