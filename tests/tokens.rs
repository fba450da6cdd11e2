//! Bearer tokens: the RFC 8725 attack matrix, certificate binding, revocation, key
//! rotation over HTTPS, and the 401 answers Envoy passes on. Keys are generated at
//! test time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cedargate::config::{Config, IssuerConfig, PrincipalFrom};
use cedargate::pipeline::checker::{Checker, SystemClock};
use cedargate::pipeline::decision::Decision;
use cedargate::server::proto::envoy::service::auth::v3::check_response::HttpResponse;
use common::jwks_server::JwksServer;
use common::jwt::{self, claims, hs256_with_secret, Signer, AUDIENCE, ISSUER};
use common::pki::{LeafSpec, Pki};
use common::{shipped_policies, test_config, Req};
use serde_json::json;

const FRONTEND: &str = "spiffe://example.org/ns/default/sa/frontend";
const ORDERS: &str = "spiffe://example.org/ns/default/sa/orders";

fn issuer(jwks_file: &Path) -> IssuerConfig {
    IssuerConfig {
        issuer: ISSUER.to_owned(),
        audiences: vec![AUDIENCE.to_owned()],
        jwks_file: Some(jwks_file.to_owned()),
        typ: Some("at+jwt".to_owned()),
        max_lifetime: Some(Duration::from_secs(3600)),
        forward: [("x-user".to_owned(), "sub".to_owned())].into(),
        ..IssuerConfig::default()
    }
}

/// A checker whose one issuer trusts `signers`, and whose revocation list is `revoked`.
struct World {
    pki: Pki,
    dir: tempfile::TempDir,
    checker: Checker,
}

impl World {
    fn new(signers: &[&Signer], tweak: impl FnOnce(&mut Config)) -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwks.json"), jwt::jwks(signers)).unwrap();
        std::fs::write(dir.path().join("revoked.txt"), "jti revoked-jti\n").unwrap();
        let mut config = test_config(shipped_policies());
        config.tokens.issuers = vec![issuer(&dir.path().join("jwks.json"))];
        config.identity.revocation_file = Some(dir.path().join("revoked.txt"));
        tweak(&mut config);
        let checker = Checker::load(config, Arc::new(SystemClock)).unwrap();
        World { pki: Pki::new(), dir, checker }
    }

    /// POST /api/orders from the frontend: needs a token with scope orders:write.
    fn place_order(&self, token: &str) -> Req {
        let leaf = self.pki.svid(FRONTEND);
        Req::new(FRONTEND, Some(&leaf.cert_pem))
            .method("POST")
            .path("/api/orders")
            .header("authorization", &format!("Bearer {token}"))
    }

    fn decide(&self, req: &Req) -> Decision {
        self.checker.check(&req.input())
    }
}

fn at_jwt(signer: &Signer, claims: &serde_json::Value) -> String {
    signer.sign_with_header(json!({ "alg": jwt::alg_name(signer.alg), "kid": signer.kid, "typ": "at+jwt" }), claims)
}

#[test]
fn valid_rs256_es256_and_eddsa_tokens_are_accepted_and_reach_cedar() {
    let (rsa, ec, ed) = (Signer::rsa("rsa-1"), Signer::ec("ec-1"), Signer::ed("ed-1"));
    let w = World::new(&[&rsa, &ec, &ed], |_| {});
    let now = jwt::now();
    for signer in [&rsa, &ec, &ed] {
        let d = w.decide(&w.place_order(&at_jwt(signer, &claims(now, "alice"))));
        assert!(d.is_allowed(), "{:?}: {d:?}", signer.alg);
        assert_eq!(*d.policies, ["frontend-places-orders-for-users"]);
        let token = d.token.as_ref().unwrap();
        assert_eq!((token.iss.as_str(), token.sub.as_str()), (ISSUER, "alice"));
        assert_eq!(token.scope, vec!["orders:read", "orders:write"]);
        assert_eq!(token.forward, vec![("x-user".to_owned(), "alice".to_owned())]);
    }
    // The scope decides: without orders:write the policy does not permit.
    let mut read_only = claims(now, "bob");
    read_only["scope"] = json!("orders:read");
    assert_eq!(w.decide(&w.place_order(&at_jwt(&ec, &read_only))).code(), "policy_denied");
}

#[test]
fn the_attack_matrix_is_refused_each_with_its_own_reason() {
    let rsa = Signer::rsa("rsa-1");
    let ec = Signer::ec("ec-1");
    let stranger = Signer::ec("other-1");
    let w = World::new(&[&rsa, &ec], |_| {});
    let now = jwt::now();
    let good = claims(now, "alice");
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let other_cert = w.pki.svid(ORDERS);
    let none_token = format!("{}.{}.", jwt::b64_json(&json!({"alg": "none", "typ": "at+jwt"})), jwt::b64_json(&good));
    let valid = at_jwt(&ec, &good);
    let tampered = {
        let forged = at_jwt(&ec, &with(&|c| c["sub"] = json!("mallory")));
        let parts: Vec<&str> = forged.split('.').collect();
        let original: Vec<&str> = valid.split('.').collect();
        format!("{}.{}.{}", original[0], parts[1], original[2])
    };
    let jku = stranger.sign_with_header(
        json!({"alg": "ES256", "kid": "other-1", "typ": "at+jwt", "jku": "https://evil.example/jwks", "jwk": stranger.jwk}),
        &good,
    );
    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", none_token, "token_algorithm_not_allowed"),
        (
            "HS256 keyed with the RSA public key",
            hs256_with_secret(&rsa.public_der, "rsa-1", &good),
            "token_algorithm_not_allowed",
        ),
        (
            "ES256 header naming the RSA key",
            ec.sign_with_header(json!({"alg": "ES256", "kid": "rsa-1", "typ": "at+jwt"}), &good),
            "token_key_algorithm_mismatch",
        ),
        (
            "unknown kid",
            ec.sign_with_header(json!({"alg": "ES256", "kid": "nope", "typ": "at+jwt"}), &good),
            "token_key_unknown",
        ),
        ("key of another issuer", at_jwt(&stranger, &good), "token_key_unknown"),
        ("keys offered by the token (jku, jwk)", jku, "token_key_unknown"),
        ("bad signature", tampered, "token_signature_invalid"),
        ("truncated", valid[..valid.len() / 2].to_owned(), "token_malformed"),
        ("12 KiB, over tokens.max_token_bytes", format!("{valid}{}", "A".repeat(12 * 1024)), "token_too_large"),
        (
            "expired",
            at_jwt(
                &ec,
                &with(&|c| {
                    c["iat"] = json!(now - 900);
                    c["nbf"] = json!(now - 900);
                    c["exp"] = json!(now - 600);
                }),
            ),
            "token_expired",
        ),
        ("not yet valid", at_jwt(&ec, &with(&|c| c["nbf"] = json!(now + 600))), "token_not_yet_valid"),
        (
            "iat in the future",
            at_jwt(
                &ec,
                &with(&|c| {
                    c["iat"] = json!(now + 600);
                    c["exp"] = json!(now + 900);
                }),
            ),
            "token_issued_in_future",
        ),
        ("wrong aud", at_jwt(&ec, &with(&|c| c["aud"] = json!(["payments"]))), "token_audience_invalid"),
        ("wrong iss", at_jwt(&ec, &with(&|c| c["iss"] = json!("https://evil.example"))), "token_issuer_unknown"),
        ("wrong typ", ec.sign(&good), "token_type_invalid"),
        ("lifetime over the limit", at_jwt(&ec, &with(&|c| c["exp"] = json!(now + 7200))), "token_long_lived"),
        (
            "no exp",
            at_jwt(
                &ec,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
            ),
            "token_claim_missing",
        ),
        (
            "cnf bound to another certificate",
            at_jwt(&ec, &with(&|c| c["cnf"] = json!({"x5t#S256": jwt::x5t_s256(&other_cert.der)}))),
            "token_binding_mismatch",
        ),
        (
            "crit header",
            ec.sign_with_header(json!({"alg": "ES256", "kid": "ec-1", "typ": "at+jwt", "crit": ["exp"]}), &good),
            "token_critical_header",
        ),
        ("revoked jti", at_jwt(&ec, &with(&|c| c["jti"] = json!("revoked-jti"))), "token_revoked"),
        ("not base64", "%%%.%%%.%%%".to_owned(), "token_malformed"),
    ];
    for (name, token, expected) in &cases {
        let d = w.decide(&w.place_order(token));
        assert_eq!(d.code(), *expected, "{name}: {d:?}");
        assert_eq!(d.outcome_status(), 401, "{name}");
    }
    // 16 KiB does not even reach token parsing: the header is over limits.max_header_bytes.
    let d = w.decide(&w.place_order(&format!("{valid}{}", "A".repeat(16 * 1024))));
    assert_eq!((d.code(), d.outcome_status()), ("header_too_large", 431));
    // And the valid token itself passes, so each refusal above is the case's doing.
    assert!(w.decide(&w.place_order(&valid)).is_allowed());
}

trait Status {
    fn outcome_status(&self) -> u16;
}

impl Status for Decision {
    fn outcome_status(&self) -> u16 {
        match &self.outcome {
            cedargate::pipeline::decision::Outcome::Allow => 200,
            cedargate::pipeline::decision::Outcome::Deny(reason) => reason.http_status(),
        }
    }
}

#[test]
fn certificate_bound_tokens_must_come_with_their_certificate() {
    let ec = Signer::ec("ec-1");
    let w = World::new(&[&ec], |c| c.tokens.issuers[0].require_binding = true);
    let now = jwt::now();
    let leaf = w.pki.svid(FRONTEND);
    let mut bound = claims(now, "alice");
    bound["cnf"] = json!({ "x5t#S256": jwt::x5t_s256(&leaf.der) });
    let token = at_jwt(&ec, &bound);
    let req = |cert: Option<&str>| {
        Req::new(FRONTEND, cert).method("POST").path("/api/orders").header("authorization", &format!("Bearer {token}"))
    };
    let d = w.decide(&req(Some(&leaf.cert_pem)));
    assert!(d.is_allowed(), "{d:?}");
    assert!(d.token.unwrap().bound);
    // Replayed by a workload with another certificate (same SPIFFE ID even).
    let replay = w.pki.svid(FRONTEND);
    assert_eq!(w.decide(&req(Some(&replay.cert_pem))).code(), "token_binding_mismatch");
    // A token without cnf, where the issuer requires binding.
    assert_eq!(w.decide(&w.place_order(&at_jwt(&ec, &claims(now, "bob")))).code(), "token_binding_required");

    // Without the forwarded certificate there is nothing to bind to.
    let w = World::new(&[&ec], |c| c.identity.require_certificate = false);
    assert_eq!(w.decide(&req(None)).code(), "token_binding_certificate_missing");
}

#[test]
fn missing_tokens_are_refused_only_where_required() {
    let ec = Signer::ec("ec-1");
    let w = World::new(&[&ec], |_| {});
    let leaf = w.pki.svid(FRONTEND);
    let bare = Req::new(FRONTEND, Some(&leaf.cert_pem));
    assert!(w.decide(&bare).is_allowed(), "GET needs no token by default");
    assert_eq!(w.decide(&bare.clone().route("cedargate.token", "required")).code(), "token_missing");
    assert_eq!(w.decide(&bare.clone().route("cedargate.token", "requird")).code(), "token_missing", "typos require");
    // Another scheme in the token header is a credential cedargate cannot verify:
    // refused, never passed upstream as if there were no token.
    assert_eq!(w.decide(&bare.clone().header("authorization", "Basic dXNlcjpwdw==")).code(), "token_malformed");

    let w = World::new(&[&ec], |c| c.tokens.required = true);
    assert_eq!(w.decide(&bare).code(), "token_missing");
    assert!(w.decide(&bare.clone().route("cedargate.token", "optional")).is_allowed());
}

#[test]
fn long_lived_certificates_are_refused_when_a_maximum_is_set() {
    let ec = Signer::ec("ec-1");
    let w = World::new(&[&ec], |c| c.identity.max_certificate_lifetime = Some(Duration::from_secs(2 * 3600)));
    let now = time::OffsetDateTime::now_utc();
    let long =
        w.pki.leaf(&LeafSpec::svid(FRONTEND).valid_for(now - time::Duration::hours(1), now + time::Duration::hours(5)));
    assert_eq!(w.decide(&Req::new(FRONTEND, Some(&long.cert_pem))).code(), "certificate_long_lived");
    assert!(w.decide(&Req::new(FRONTEND, Some(&w.pki.svid(FRONTEND).cert_pem))).is_allowed());
}

#[test]
fn the_token_subject_can_be_the_principal_with_groups_from_entities_json() {
    let ec = Signer::ec("ec-1");
    let policies = tempfile::tempdir().unwrap();
    std::fs::copy(shipped_policies().join("schema.cedarschema"), policies.path().join("schema.cedarschema")).unwrap();
    std::fs::write(
        policies.path().join("entities.json"),
        format!(
            r#"[{{"uid":{{"type":"Group","id":"buyers"}},"attrs":{{}},"parents":[]}},
            {{"uid":{{"type":"User","id":"{}#alice"}},"attrs":{{}},"parents":[{{"type":"Group","id":"buyers"}}]}}]"#,
            jwt::ISSUER
        ),
    )
    .unwrap();
    std::fs::write(
        policies.path().join("users.cedar"),
        r#"@id("buyers-via-frontend")
permit (principal in Group::"buyers", action == Action::"POST", resource in Path::"/api/orders")
when { context.peer == Workload::"spiffe://example.org/ns/default/sa/frontend" };"#,
    )
    .unwrap();
    let w = World::new(&[&ec], |c| {
        c.policies.dir = policies.path().to_owned();
        c.tokens.issuers[0].principal = PrincipalFrom::Subject;
    });
    let now = jwt::now();
    let d = w.decide(&w.place_order(&at_jwt(&ec, &claims(now, "alice"))));
    assert!(d.is_allowed(), "{d:?}");
    assert_eq!(*d.policies, ["buyers-via-frontend"]);
    // A user not in the group, and the right user through another workload.
    assert_eq!(w.decide(&w.place_order(&at_jwt(&ec, &claims(now, "carol")))).code(), "policy_denied");
    let via_orders = Req::new(ORDERS, Some(&w.pki.svid(ORDERS).cert_pem))
        .method("POST")
        .path("/api/orders")
        .header("authorization", &format!("Bearer {}", at_jwt(&ec, &claims(now, "alice"))));
    assert_eq!(w.decide(&via_orders).code(), "policy_denied");
}

#[test]
fn custom_claims_reach_policies_typed_and_a_schema_without_them_is_refused() {
    let ec = Signer::ec("ec-1");
    let policies = tempfile::tempdir().unwrap();
    std::fs::copy(shipped_policies().join("schema.cedarschema"), policies.path().join("schema.cedarschema")).unwrap();
    std::fs::write(
        policies.path().join("tenants.cedar"),
        r#"permit (principal, action, resource) when { context has token && context.token.claims has tenant && context.token.claims.tenant == "acme" };"#,
    )
    .unwrap();
    let w = World::new(&[&ec], |c| {
        c.policies.dir = policies.path().to_owned();
        c.tokens.issuers[0].claims = [("tenant".to_owned(), cedargate::config::ClaimType::String)].into();
    });
    let now = jwt::now();
    let mut acme = claims(now, "alice");
    acme["tenant"] = json!("acme");
    assert!(w.decide(&w.place_order(&at_jwt(&ec, &acme))).is_allowed());
    acme["tenant"] = json!("globex");
    assert_eq!(w.decide(&w.place_order(&at_jwt(&ec, &acme))).code(), "policy_denied");
    acme["tenant"] = json!(42);
    assert_eq!(w.decide(&w.place_order(&at_jwt(&ec, &acme))).code(), "token_claim_invalid");

    // A claim the schema does not declare is refused at load, naming the problem.
    let mut config = test_config(policies.path().to_owned());
    let jwks = w.dir.path().join("jwks.json");
    config.tokens.issuers = vec![IssuerConfig {
        claims: [("region".to_owned(), cedargate::config::ClaimType::String)].into(),
        ..issuer(&jwks)
    }];
    let err = Checker::load(config, Arc::new(SystemClock)).expect_err("refused").to_string();
    assert!(err.contains("custom claims") && err.contains("region"), "{err}");
}

#[test]
fn revoking_a_token_takes_effect_without_a_restart() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ec = Signer::ec("ec-1");
        let w = World::new(&[&ec], |_| {});
        let watcher = cedargate::ops::watch::FileWatcher::new(std::time::Duration::from_millis(50));
        let _watchers = w.checker.parts().credentials.spawn_refreshers(&watcher);
        let now = jwt::now();
        let token = at_jwt(&ec, &claims(now, "alice"));
        let req = w.place_order(&token);
        assert!(w.decide(&req).is_allowed());
        let leaf_serial_line = "sub alice\n";
        std::fs::write(w.dir.path().join("revoked.txt"), leaf_serial_line).unwrap();
        let started = std::time::Instant::now();
        while w.decide(&req).is_allowed() {
            // The file is watched; the deadline is generous for a busy machine.
            assert!(started.elapsed() < Duration::from_secs(10), "revocation not in effect after 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(w.decide(&req).code(), "token_revoked");
        // A broken edit keeps the list as it was.
        std::fs::write(w.dir.path().join("revoked.txt"), "sub alice\nthis is not an entry\n").unwrap();
        let revocations = &w.checker.parts().credentials.revocations;
        let started = std::time::Instant::now();
        while revocations.last_error().is_none() {
            assert!(started.elapsed() < Duration::from_secs(10), "the broken edit was not looked at within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(w.decide(&req).code(), "token_revoked");
    });
}

#[test]
fn certificates_can_be_revoked_by_serial_or_fingerprint() {
    let ec = Signer::ec("ec-1");
    let w = World::new(&[&ec], |_| {});
    let leaf = w.pki.svid(FRONTEND);
    let cert = cedargate::identity::certificate::parse_der(&leaf.der).unwrap();
    std::fs::write(w.dir.path().join("revoked.txt"), format!("fingerprint {}\n", cert.fingerprint())).unwrap();
    w.checker.parts().credentials.revocations.reload().unwrap();
    assert_eq!(w.decide(&Req::new(FRONTEND, Some(&leaf.cert_pem))).code(), "certificate_revoked");
    std::fs::write(w.dir.path().join("revoked.txt"), format!("serial {}\n", cert.serial.to_uppercase())).unwrap();
    w.checker.parts().credentials.revocations.reload().unwrap();
    assert_eq!(w.decide(&Req::new(FRONTEND, Some(&leaf.cert_pem))).code(), "certificate_revoked");
    assert!(w.decide(&Req::new(FRONTEND, Some(&w.pki.svid(FRONTEND).cert_pem))).is_allowed());
}

/// A server whose one issuer fetches its JWKS from `url` over HTTPS.
async fn start_with_url(
    pki: &Pki,
    url: &str,
    min_refresh: Duration,
) -> (cedargate::server::app::Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), pki.ca_pem()).unwrap();
    let mut config = test_config(shipped_policies());
    config.tokens.issuers = vec![IssuerConfig {
        jwks_file: None,
        jwks_url: Some(url.to_owned()),
        jwks_ca_file: Some(dir.path().join("ca.pem")),
        jwks_min_refresh: min_refresh,
        jwks_refresh: Duration::from_secs(3600),
        ..issuer(Path::new("unused"))
    }];
    (common::start(config).await, dir)
}

fn grpc_order(pki: &Pki, token: &str) -> cedargate::server::proto::envoy::service::auth::v3::CheckRequest {
    let leaf = pki.svid(FRONTEND);
    Req::new(FRONTEND, Some(&leaf.cert_pem))
        .method("POST")
        .path("/api/orders")
        .header("authorization", &format!("Bearer {token}"))
        .header("x-user", "spoofed")
        .build()
}

#[tokio::test]
async fn rotated_keys_are_fetched_once_and_an_outage_keeps_the_last_good_keys() {
    let pki = Pki::new();
    let (old, new) = (Signer::ec("2026-01"), Signer::ed("2026-02"));
    let server = JwksServer::start(&pki, jwt::jwks(&[&old])).await;
    let (running, _dir) = start_with_url(&pki, &server.url, Duration::from_secs(3600)).await;
    let now = jwt::now();

    let keys = Arc::clone(running.checker.parts().credentials.tokens.keys_of(0).unwrap());
    let started = std::time::Instant::now();
    while keys.generation() == 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "startup fetch did not happen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reply = common::check(&running, grpc_order(&pki, &at_jwt(&old, &claims(now, "alice")))).await;
    assert_eq!(common::outcome(&reply), (200, "allow".to_owned()));
    let fetched = server.hits();
    assert!(fetched >= 1);

    // The issuer rotates: a token with the new kid triggers one refresh, and passes.
    server.publish(jwt::jwks(&[&old, &new]));
    let reply = common::check(&running, grpc_order(&pki, &at_jwt(&new, &claims(now, "bob")))).await;
    assert_eq!(common::outcome(&reply), (200, "allow".to_owned()));
    assert_eq!(server.hits(), fetched + 1, "exactly one refresh for the new kid");

    // Made-up kids within jwks_min_refresh cost no further fetches.
    let stranger = Signer::ec("made-up");
    for _ in 0..5 {
        let reply = common::check(&running, grpc_order(&pki, &at_jwt(&stranger, &claims(now, "eve")))).await;
        assert_eq!(common::outcome(&reply), (401, "token_key_unknown".to_owned()));
    }
    assert_eq!(server.hits(), fetched + 1, "refreshes are rate-limited");

    // The JWKS server goes down: known keys keep working.
    server.stop();
    let reply = common::check(&running, grpc_order(&pki, &at_jwt(&old, &claims(now, "carol")))).await;
    assert_eq!(common::outcome(&reply), (200, "allow".to_owned()));
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_last_good_keys() {
    let pki = Pki::new();
    let key = Signer::ec("k1");
    let server = JwksServer::start(&pki, jwt::jwks(&[&key])).await;
    let (running, _dir) = start_with_url(&pki, &server.url, Duration::from_millis(1)).await;
    let now = jwt::now();
    let reply = common::check(&running, grpc_order(&pki, &at_jwt(&key, &claims(now, "alice")))).await;
    assert_eq!(common::outcome(&reply).0, 200);
    // A broken publication: an unknown kid triggers a refresh that fails to parse.
    server.publish("{\"keys\": \"oops\"}".to_owned());
    let unknown = Signer::ec("k2");
    let reply = common::check(&running, grpc_order(&pki, &at_jwt(&unknown, &claims(now, "x")))).await;
    assert_eq!(common::outcome(&reply), (401, "token_key_unknown".to_owned()));
    let keys = running.checker.parts().credentials.tokens.keys_of(0).unwrap();
    assert!(keys.stats.failed.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    let reply = common::check(&running, grpc_order(&pki, &at_jwt(&key, &claims(now, "alice")))).await;
    assert_eq!(common::outcome(&reply).0, 200, "the last good keys still verify");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn answers_carry_bearer_challenges_and_claim_headers() {
    let pki = Pki::new();
    let key = Signer::ec("k1");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), jwt::jwks(&[&key])).unwrap();
    let mut config = test_config(shipped_policies());
    config.tokens.issuers = vec![issuer(&dir.path().join("jwks.json"))];
    config.tokens.strip_authorization = true;
    let running = common::start(config).await;
    let now = jwt::now();

    let reply = common::check(&running, grpc_order(&pki, &at_jwt(&key, &claims(now, "alice")))).await;
    let Some(HttpResponse::OkResponse(ok)) = &reply.http_response else { panic!("{reply:?}") };
    let set: Vec<(&str, &str)> =
        ok.headers.iter().filter_map(|h| h.header.as_ref()).map(|h| (h.key.as_str(), h.value.as_str())).collect();
    assert!(set.contains(&("x-user", "alice")), "{set:?}");
    assert!(ok.headers_to_remove.contains(&"authorization".to_owned()));

    let mut expired = claims(now - 7200, "alice");
    expired["exp"] = json!(now - 3600);
    let reply = common::check(&running, grpc_order(&pki, &at_jwt(&key, &expired))).await;
    let Some(HttpResponse::DeniedResponse(denied)) = &reply.http_response else { panic!("{reply:?}") };
    assert_eq!(denied.status.as_ref().unwrap().code, 401);
    let challenge = denied
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "www-authenticate")
        .map(|h| h.value.clone())
        .unwrap();
    assert!(challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert!(challenge.contains("token_expired"), "{challenge}");
    assert_eq!(reply.status.as_ref().unwrap().code, 16, "UNAUTHENTICATED");

    // Without a token, where none is needed, a client-sent claim header is removed.
    let leaf = pki.svid(FRONTEND);
    let reply =
        common::check(&running, Req::new(FRONTEND, Some(&leaf.cert_pem)).header("x-user", "spoofed").build()).await;
    let Some(HttpResponse::OkResponse(ok)) = &reply.http_response else { panic!("{reply:?}") };
    assert!(ok.headers_to_remove.contains(&"x-user".to_owned()), "{ok:?}");
    running.shutdown().await.unwrap();
}

#[test]
fn jwt_svid_profile_requires_a_spiffe_id_subject() {
    let ec = Signer::ec("ec-1");
    let w = World::new(&[&ec], |c| {
        c.tokens.issuers[0].spiffe = true;
        c.tokens.issuers[0].algorithms = vec!["ES256".into(), "RS256".into()];
    });
    let now = jwt::now();
    assert_eq!(w.decide(&w.place_order(&at_jwt(&ec, &claims(now, "alice")))).code(), "token_subject_not_spiffe_id");
    let svid = at_jwt(&ec, &claims(now, "spiffe://example.org/ns/default/sa/frontend"));
    assert!(w.decide(&w.place_order(&svid)).is_allowed());
    // EdDSA is outside the JWT-SVID profile: such a configuration is refused.
    let mut config = Config::default();
    config.tokens.issuers =
        vec![IssuerConfig { spiffe: true, algorithms: vec!["EdDSA".into()], ..issuer(Path::new("j")) }];
    assert!(config.validate("t").unwrap_err().to_string().contains("JWT-SVID"));
}

#[test]
fn a_token_header_that_is_not_a_strict_bearer_credential_is_refused() {
    let ec = Signer::ec("ec-1");
    let w = World::new(&[&ec], |_| {});
    let leaf = w.pki.svid(FRONTEND);
    let bare = Req::new(FRONTEND, Some(&leaf.cert_pem));
    let now = jwt::now();
    let good = at_jwt(&ec, &claims(now, "alice"));
    let none = format!(
        "{}.{}.",
        base64_url(r#"{"alg":"none","typ":"at+jwt"}"#),
        base64_url(&claims(now, "mallory").to_string())
    );
    // GET needs no token on this route, so each of these was once "no token": allowed,
    // with the forged header passed upstream untouched.
    for value in [
        format!("Bearer\t{none}"),
        format!("bearer\t{none}"),
        format!("Token {none}"),
        format!("Bearer\u{a0}{none}"),
        format!("Bearer  {good}"),
        format!("Bearer {good}, Bearer {none}"),
        format!("DPoP {good}"),
        "Bearer".to_owned(),
        String::new(),
    ] {
        let d = w.decide(&bare.clone().header("authorization", &value));
        assert_eq!(d.code(), "token_malformed", "{value:?}");
        assert_eq!(d.outcome_status(), 401);
    }
    // The alg=none token in a well-formed header is refused for its algorithm.
    assert_eq!(
        w.decide(&bare.clone().header("authorization", &format!("Bearer {none}"))).code(),
        "token_algorithm_not_allowed"
    );
    // Two authorization lines, even both valid: one would travel unverified.
    let twice = bare.raw_input(&[("authorization", &format!("Bearer {good}")), ("authorization", "Bearer x.y.z")]);
    assert_eq!(w.checker.check(&twice).code(), "token_malformed");
    // A token header other than the issuer's, beside it.
    let w = World::new(&[&ec], |c| c.tokens.issuers[0].header = "x-token".to_owned());
    let both = bare.clone().header("x-token", &good).header("x-token", "garbage");
    assert_eq!(w.decide(&both).code(), "token_malformed", "Envoy joined two x-token lines with `,`");
    assert_eq!(w.decide(&bare.clone().header("x-token", "not a token")).code(), "token_malformed");
    assert!(w.decide(&bare.clone().header("x-token", &good)).is_allowed());
}

fn base64_url(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[test]
fn sender_constrained_tokens_that_cannot_be_checked_are_refused() {
    let ec = Signer::ec("ec-1");
    let w = World::new(&[&ec], |_| {});
    let now = jwt::now();
    let leaf = w.pki.svid(FRONTEND);
    for cnf in [
        json!({ "jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I" }),
        json!({ "jwk": { "kty": "EC", "crv": "P-256", "x": "a", "y": "b" } }),
        json!({ "x5t": "dGh1bWJwcmludA" }),
        json!({ "kid": "k" }),
        json!({}),
        json!({ "x5t#S256": jwt::x5t_s256(&leaf.der), "jkt": "0ZcOCORZNYy" }),
    ] {
        let mut c = claims(now, "alice");
        c["cnf"] = cnf.clone();
        let req = Req::new(FRONTEND, Some(&leaf.cert_pem))
            .method("POST")
            .path("/api/orders")
            .header("authorization", &format!("Bearer {}", at_jwt(&ec, &c)));
        assert_eq!(w.decide(&req).code(), "token_binding_unsupported", "{cnf}");
    }
}

#[test]
fn subjects_of_two_issuers_are_never_the_same_principal() {
    let (a, b) = (Signer::ec("a-1"), Signer::ec("b-1"));
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::copy(shipped_policies().join("schema.cedarschema"), policies.join("schema.cedarschema")).unwrap();
    std::fs::write(
        policies.join("entities.json"),
        format!(
            r#"[{{"uid":{{"type":"Group","id":"buyers"}},"attrs":{{}},"parents":[]}},
            {{"uid":{{"type":"User","id":"{ISSUER}#alice@example.org"}},"attrs":{{}},"parents":[{{"type":"Group","id":"buyers"}}]}}]"#
        ),
    )
    .unwrap();
    std::fs::write(
        policies.join("users.cedar"),
        r#"@id("buyers") permit (principal in Group::"buyers", action == Action::"POST", resource in Path::"/api/orders");"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("b.json"), jwt::jwks(&[&b])).unwrap();
    let w = World::new(&[&a], |c| {
        c.policies.dir = policies.clone();
        c.tokens.issuers[0].principal = PrincipalFrom::Subject;
        let mut other = issuer(&dir.path().join("b.json"));
        other.issuer = "https://idp-b.example.org".to_owned();
        c.tokens.issuers.push(other);
    });
    let now = jwt::now();
    let d = w.decide(&w.place_order(&at_jwt(&a, &claims(now, "alice@example.org"))));
    assert!(d.is_allowed(), "{d:?}");
    let mut from_b = claims(now, "alice@example.org");
    from_b["iss"] = json!("https://idp-b.example.org");
    let d = w.decide(&w.place_order(&at_jwt(&b, &from_b)));
    assert_eq!(d.code(), "policy_denied", "issuer B's alice is not issuer A's alice");
}
