//! No input makes cedargate panic, loop or allow by accident: property tests over
//! everything that parses untrusted bytes, and over the whole pipeline.
//!
//! Each property runs 2,000 cases (`PROPTEST_CASES` overrides: the longer run in
//! SECURITY.md uses 20,000, in release mode). A failing case is shrunk and printed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use cedargate::config::IssuerConfig;
use cedargate::config::TokenModel;
use cedargate::credentials::revocation::Denylist;
use cedargate::identity::bundle::TrustBundles;
use cedargate::identity::certificate;
use cedargate::identity::spiffe::SpiffeId;
use cedargate::pipeline::checker::{Checker, SystemClock};
use cedargate::policy::http_path::{normalize, PathRules};
use cedargate::policy::request::canonical_host;
use cedargate::policy::set::PolicyFiles;
use common::jwt::{self, Signer};
use common::pki::Pki;
use common::{shipped_policies, test_config, Req};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

const RULES: PathRules = PathRules { max_bytes: 8192, max_segments: 32, case_insensitive: true };

/// Path-like text: the characters that matter to normalization, densely.
fn path_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_owned()),
        Just("//".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2e".to_owned()),
        Just("%2F".to_owned()),
        Just("%5c".to_owned()),
        Just("%25".to_owned()),
        Just("%c0%ae".to_owned()),
        Just("%00".to_owned()),
        Just(";".to_owned()),
        Just("\\".to_owned()),
        Just("?".to_owned()),
        Just("#".to_owned()),
        Just("&".to_owned()),
        Just("=".to_owned()),
        "[a-zA-Z0-9_~-]{1,4}",
        "%[0-9a-fA-FgG]{0,2}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn path_checking_never_panics_and_what_it_accepts_is_canonical(raw in prop_oneof![path_like(), any::<String>()]) {
        if let Ok(path) = normalize(&raw, &RULES) {
            prop_assert!(path.segments.len() <= RULES.max_segments);
            for segment in &path.segments {
                prop_assert!(!segment.is_empty() && segment != "." && segment != "..", "{raw:?}");
                prop_assert!(!segment.contains('/') && !segment.contains('\\'), "{raw:?}");
                prop_assert!(!segment.ends_with('.') && !segment.chars().any(char::is_control), "{raw:?}");
            }
            let joined = format!("/{}", path.segments.join("/"));
            prop_assert_eq!(&path.path, &joined);
            prop_assert_eq!(path.prefixes().count(), path.segments.len() + 1);
            prop_assert_eq!(path.path.to_ascii_lowercase(), path.path.clone());
        }
    }

    #[test]
    fn host_checking_never_panics_and_accepted_hosts_are_plain(raw in prop_oneof!["[a-zA-Z0-9.:\\[\\]@%_-]{0,24}", any::<String>()]) {
        if let Some(host) = canonical_host(&raw) {
            prop_assert!(!host.ends_with('.') && !host.contains(".."), "{raw:?}");
            prop_assert_eq!(host.to_ascii_lowercase(), host.clone());
            prop_assert!(!host.contains('@') && !host.contains('%'));
        }
    }

    #[test]
    fn spiffe_id_parsing_never_panics_and_round_trips(raw in prop_oneof!["spiffe://[a-zA-Z0-9.%:@_/-]{0,30}", any::<String>()]) {
        if let Ok(id) = SpiffeId::from_str(&raw) {
            prop_assert_eq!(id.as_str(), raw.as_str());
            prop_assert_eq!(format!("spiffe://{}{}", id.trust_domain(), id.path()), raw.clone());
        }
    }

    #[test]
    fn certificate_parsing_never_panics_on_garbage(bytes in prop::collection::vec(any::<u8>(), 0..600), text in any::<String>()) {
        let _ = certificate::parse_der(&bytes);
        let _ = certificate::parse_url_encoded_pem(&text, 16 * 1024);
        let pem = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", base64_std(&bytes));
        let _ = certificate::parse_url_encoded_pem(&pem, 16 * 1024);
    }

    #[test]
    fn certificate_parsing_never_panics_on_a_damaged_certificate(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let mut der = sample_der().to_vec();
        for (at, byte) in flips {
            let i = at.index(der.len());
            der[i] ^= byte;
        }
        let _ = certificate::parse_der(&der);
        let _ = certificate::parse_der(&der[..cut.index(der.len())]);
    }

    #[test]
    fn no_damaged_chain_passes_the_handshake_validator(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
        extra in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..3),
    ) {
        let HandshakeWorld { bundles, config, der, .. } = handshake_world();
        let mut leaf = der.clone();
        for (at, byte) in &flips {
            let i = at.index(leaf.len());
            leaf[i] ^= byte;
        }
        let leaf = if cut.index(8) == 0 { &leaf[..cut.index(leaf.len())] } else { &leaf[..] };
        let mut chain: Vec<&[u8]> = vec![leaf];
        chain.extend(extra.iter().map(Vec::as_slice));
        let verified = bundles.verify(&chain, std::time::SystemTime::now(), config);
        // Everything in a certificate is signed: only the very bytes issued verify.
        if verified.is_ok() {
            prop_assert_eq!(leaf, der.as_slice());
        }
        if leaf == der.as_slice() && extra.is_empty() {
            prop_assert!(verified.is_ok(), "the issued certificate itself was refused: {:?}", verified.err());
        }
    }

    #[test]
    fn revocation_file_parsing_never_panics(text in prop_oneof![
        prop::collection::vec(prop_oneof![
            "(jti|sub|serial|serial_decimal|fingerprint|bogus)[ \t]+[0-9a-fA-Fx:#\" \\\\]{0,70}",
            "#[^\n]{0,20}",
            any::<String>(),
        ], 0..8).prop_map(|lines| lines.join("\n")),
        any::<String>(),
    ]) {
        let _ = Denylist::parse(&text);
    }

    #[test]
    fn entities_file_parsing_never_panics(text in prop_oneof![
        any::<String>(),
        prop::collection::vec((
            prop_oneof![Just("Workload"), Just("Group"), Just("User"), Just("Path"), Just("Nope")],
            prop_oneof![Just("spiffe://example.org/a".to_owned()), "[a-z:/%.]{0,12}"],
            prop::bool::ANY,
        ), 0..4).prop_map(|entities| {
            let items: Vec<String> = entities.iter().map(|(t, id, attrs)| {
                let attrs = if *attrs { r#","attrs":{"x":1}"# } else { "" };
                format!(r#"{{"uid":{{"type":"{t}","id":{}}}{attrs},"parents":[{{"type":"Group","id":"g"}}]}}"#, serde_json::Value::String(id.clone()))
            }).collect();
            format!("[{}]", items.join(","))
        }),
    ]) {
        let files = PolicyFiles { entities: Some(text), ..shipped_files() };
        let _ = cedargate::policy::load::load_files(&files, &TokenModel::default());
    }

    /// The whole pipeline, from Envoy's protobuf to a decision, on requests with
    /// every field attacker-chosen: it answers, and it only allows what it could
    /// read one way.
    #[test]
    fn the_pipeline_never_panics_and_only_allows_canonical_requests(
        method in prop_oneof![Just("GET".to_owned()), Just("POST".to_owned()), "[A-Za-z]{0,8}"],
        path in prop_oneof![path_like().prop_map(|p| format!("/api/orders{p}")), path_like()],
        host in prop_oneof![Just("orders.example.org".to_owned()), "[a-zA-Z0-9.:\\[\\]@-]{0,20}"],
        principal in prop_oneof![Just(FRONTEND.to_owned()), any::<String>()],
        with_certificate in prop::bool::ANY,
        headers in prop::collection::vec((
            prop_oneof![Just("authorization".to_owned()), Just("x-canary".to_owned()), Just("x-http-method-override".to_owned()), "[a-z-]{1,12}"],
            prop_oneof![Just("Bearer a.b.c".to_owned()), any::<String>()],
        ), 0..4),
        route in prop::collection::vec(("[a-z.]{1,16}", "[a-z]{0,8}"), 0..2),
    ) {
        let world = world();
        let mut req = Req::new(&principal, with_certificate.then_some(world.frontend_pem.as_str())).method(&method).path(&path).host(&host);
        for (name, value) in &headers {
            req = req.header(name, value);
        }
        for (key, value) in &route {
            req = req.route(key, value);
        }
        let input = req.input();
        let decision = world.checker.check(&input);
        if decision.is_allowed() {
            prop_assert!(normalize(&path, &RULES).is_ok(), "allowed a non-canonical path {path:?}");
            prop_assert!(canonical_host(&host).is_some(), "allowed host {host:?}");
            prop_assert!(!headers.iter().any(|(n, _)| n == "x-http-method-override"));
            // A token header is only ever allowed through verified, and these are never valid.
            prop_assert!(!headers.iter().any(|(n, _)| n == "authorization"), "{headers:?}");
        }
    }

    /// The fast path that builds only the tags a policy that can apply reads, against
    /// plain Cedar given every tag: the same decision, the same determining
    /// policies, the same errors, for the shipped policies and more that read
    /// headers, query parameters and route settings by name.
    #[test]
    fn leaving_out_unread_tags_never_changes_cedars_decision(
        method in prop_oneof![Just("GET".to_owned()), Just("POST".to_owned()), Just("DELETE".to_owned())],
        principal in prop_oneof![Just(FRONTEND.to_owned()), Just(REPORTING.to_owned()), Just("spiffe://example.org/ns/payments/sa/api".to_owned())],
        path in prop_oneof![Just("/api/orders/1".to_owned()), Just("/api/export".to_owned()), Just("/internal/x".to_owned()), Just("/api/payments/2".to_owned())],
        query in prop::collection::vec((prop_oneof![Just("format".to_owned()), Just("debug".to_owned()), "[a-z]{1,6}"], prop_oneof![Just("csv".to_owned()), Just("1".to_owned()), "[a-z]{0,3}"]), 0..3),
        headers in prop::collection::vec((prop_oneof![Just("x-canary".to_owned()), Just("x-tenant".to_owned()), Just("accept".to_owned()), "[a-z-]{1,8}"], prop_oneof![Just("yes".to_owned()), Just("acme".to_owned()), "[a-z]{0,3}"]), 0..5),
        route in prop::collection::vec((prop_oneof![Just("release".to_owned()), Just("team".to_owned()), "[a-z]{1,6}"], prop_oneof![Just("canary".to_owned()), Just("payments".to_owned()), "[a-z]{0,3}"]), 0..3),
    ) {
        use cedargate::policy::reads::{Relevance, TagKeys};
        use cedargate::policy::request::{prepare, RequestFacts};
        let snapshot = tag_reading_snapshot();
        let input = tagged_input(&principal, &method, &path, &query, &headers, &route);
        let http = input.http.clone().unwrap();
        let peer = cedargate::identity::svid::PeerIdentity { spiffe_id: principal.parse().unwrap(), certificate: None };
        let Ok(facts) = prepare(snapshot, &input, &http, &peer, None, &RULES) else { return Ok(()) };
        let now = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_435_200);
        let lean = facts.build(now).unwrap();
        let fast = snapshot.index.evaluate(&lean.request, &lean.entities);
        let everything = Relevance { time: true, tags: TagKeys::All };
        let full = RequestFacts { relevance: &everything, ..facts }.build(now).unwrap();
        let plain = snapshot.authorizer.is_authorized(&full.request, &snapshot.policies, &full.entities);
        let mut reasons: Vec<String> = plain.diagnostics().reason().map(ToString::to_string).collect();
        reasons.sort();
        prop_assert_eq!(fast.allowed, plain.decision() == cedar_policy::Decision::Allow);
        prop_assert_eq!(&*fast.policies, &reasons[..]);
        prop_assert_eq!(fast.errors.len(), plain.diagnostics().errors().count());
    }

    /// The request built from Cedar values directly (`policy::values`) and joined
    /// to the store as leaves (`policy::store`) is the request Cedar's public API
    /// builds from restricted expressions with Cedar's own upsert: every entity
    /// equal (attributes, tags, ancestors), the context equal, and so the decision,
    /// for callers with and without certificates, tokens (also as the principal),
    /// source addresses and times.
    #[test]
    fn requests_built_from_values_are_those_cedars_api_builds(
        method in prop_oneof![Just("GET".to_owned()), Just("POST".to_owned()), Just("DELETE".to_owned())],
        principal in prop_oneof![Just(FRONTEND.to_owned()), Just(REPORTING.to_owned()), Just("spiffe://example.org/ns/payments/sa/api".to_owned()), Just("spiffe://other.org/x/y".to_owned())],
        path in prop_oneof![Just("/api/orders/1".to_owned()), Just("/api/export".to_owned()), Just("/".to_owned()), Just("/api/payments/2/x".to_owned())],
        query in prop::collection::vec((prop_oneof![Just("format".to_owned()), Just("debug".to_owned()), "[a-z]{1,6}"], "[a-z0-9]{0,3}"), 0..3),
        headers in prop::collection::vec((prop_oneof![Just("x-canary".to_owned()), Just("x-tenant".to_owned()), Just("accept".to_owned())], "[a-z]{0,4}"), 0..4),
        route in prop::collection::vec((prop_oneof![Just("release".to_owned()), Just("team".to_owned())], prop_oneof![Just("canary".to_owned()), Just("payments".to_owned())]), 0..2),
        certificate in prop::option::of((any::<[u8; 32]>(), "[0-9a-f]{1,8}", 0i64..2_000_000_000, 0i64..200_000)),
        source_ip in prop::option::of(prop_oneof![any::<[u8; 4]>().prop_map(std::net::IpAddr::from), any::<[u8; 16]>().prop_map(std::net::IpAddr::from)]),
        token in prop::option::of((prop::bool::ANY, "[a-z]{1,6}", prop::collection::vec("[a-z:]{1,8}", 0..3), 0i64..2_000_000_000, prop::option::of(0i64..2_000_000_000), prop::bool::ANY)),
        seconds in 0u64..2_000_000_000,
        millis in 0u64..1000,
    ) {
        use cedargate::credentials::token::ClaimValue;
        use cedargate::policy::request::prepare;
        let snapshot = tag_reading_snapshot();
        let mut input = tagged_input(&principal, &method, &path, &query, &headers, &route);
        input.source.ip = source_ip;
        let http = input.http.clone().unwrap();
        let certificate = certificate
            .map(|(sha256, serial, not_before, lifetime)| common::peer_certificate(&principal, sha256, &serial, not_before, lifetime));
        let certificate = certificate.map(Arc::new);
        let peer = cedargate::identity::svid::PeerIdentity { spiffe_id: principal.parse().unwrap(), certificate };
        let token = token.map(|(as_subject, sub, scope, exp, iat, bound)| {
            let claims = vec![("tier".into(), ClaimValue::String("gold".into())), ("n".into(), ClaimValue::Long(exp % 7))];
            common::verified_token(common::TokenFacts { as_subject, sub, scope, exp, iat, bound, claims })
        });
        let Ok(facts) = prepare(snapshot, &input, &http, &peer, token.as_ref(), &RULES) else { return Ok(()) };
        let now = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(seconds * 1000 + millis);
        let built = facts.build(now).unwrap();
        let (request, entities) = reference::build(&facts, now);
        // Ours holds what of `entities.json` the request can reach (`policy::store`):
        // each of its entities is the reference's, and every entity the request adds
        // is there.
        for entity in built.entities.iter() {
            let reference = entities.get(&entity.uid());
            prop_assert!(reference.is_some_and(|r| r.as_ref().deep_eq(entity.as_ref())), "{} differs: {:?}", entity, reference);
        }
        let base = snapshot.entities.base();
        for entity in entities.iter().filter(|e| base.get(&e.uid()).is_none_or(|stored| !stored.as_ref().deep_eq(e.as_ref()))) {
            prop_assert!(built.entities.get(&entity.uid()).is_some(), "{} is missing", entity.uid());
        }
        prop_assert_eq!(built.request.as_ref().context(), request.as_ref().context());
        let ours = snapshot.authorizer.is_authorized(&built.request, &snapshot.policies, &built.entities);
        let cedars = snapshot.authorizer.is_authorized(&request, &snapshot.policies, &entities);
        prop_assert_eq!(ours.decision(), cedars.decision());
        let reasons = |r: &cedar_policy::Response| {
            let mut reasons: Vec<String> = r.diagnostics().reason().map(ToString::to_string).collect();
            reasons.sort();
            reasons
        };
        prop_assert_eq!(reasons(&ours), reasons(&cedars));
    }

    /// Forged and garbled bearer tokens: shapes a JWT splitter must survive, none of
    /// them signed by the issuer's key. Each is refused with a token reason.
    #[test]
    fn no_forged_token_is_ever_accepted(
        header in prop_oneof![
            Just(r#"{"alg":"none"}"#.to_owned()),
            Just(r#"{"alg":"HS256","kid":"ec-1"}"#.to_owned()),
            Just(r#"{"alg":"ES256","kid":"ec-1","typ":"at+jwt"}"#.to_owned()),
            Just(r#"{"alg":"ES256","crit":["x"]}"#.to_owned()),
            any::<String>(),
        ],
        claims in prop_oneof![
            Just(jwt::claims(jwt::now(), "alice").to_string()),
            any::<String>(),
        ],
        signature in prop_oneof![Just(String::new()), "[A-Za-z0-9_-]{0,90}"],
        dots in 0usize..4,
    ) {
        let world = world();
        let mut token = format!("{}.{}.{}", base64_url(&header), base64_url(&claims), signature);
        for _ in 0..dots {
            token.push('.');
        }
        let req = Req::new(FRONTEND, Some(&world.frontend_pem)).header("authorization", &format!("Bearer {token}"));
        let decision = world.checker.check(&req.input());
        prop_assert!(!decision.is_allowed());
        prop_assert!(decision.code().starts_with("token_"), "{}", decision.code());
    }
}

const FRONTEND: &str = "spiffe://example.org/ns/default/sa/frontend";
const REPORTING: &str = "spiffe://example.org/ns/ops/sa/reporting";

/// The shipped policies and more that read tags by name, loaded once.
/// A request with these query parameters, headers and route settings, one value
/// per key (as `prepare` insists on for keys a policy reads).
fn tagged_input(
    principal: &str,
    method: &str,
    path: &str,
    query: &[(String, String)],
    headers: &[(String, String)],
    route: &[(String, String)],
) -> cedargate::pipeline::input::CheckInput {
    let query: String = query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let path = if query.is_empty() { path.to_owned() } else { format!("{path}?{query}") };
    let mut req = Req::new(principal, None).method(method).path(&path);
    for (name, value) in headers {
        req = req.header(name, value);
    }
    for (key, value) in route {
        req = req.route(key, value);
    }
    let mut input = req.input();
    if let Some(http) = input.http.as_mut() {
        http.headers.dedup_by(|a, b| a.0 == b.0);
    }
    input.context_extensions.dedup_by(|a, b| a.0 == b.0);
    input
}

fn tag_reading_snapshot() -> &'static cedargate::policy::set::PolicySnapshot {
    static SNAPSHOT: OnceLock<cedargate::policy::set::PolicySnapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let mut files = shipped_files();
        let extra = r#"
@id("tenant-header")
permit (principal, action == Action::"GET", resource)
when { resource.headers.hasTag("x-tenant") && resource.headers.getTag("x-tenant") == "acme" && context.route.hasTag("team") };
@id("debug-query")
forbid (principal, action, resource)
when { resource.query.hasTag("debug") && resource.query.getTag("debug") == "1" };
@id("payments-route")
permit (principal, action in Action::"write", resource)
when { context.route.hasTag("team") && context.route.getTag("team") == "payments" && resource.headers.hasTag("accept") };
"#;
        files.policies.insert("tags.cedar".to_owned(), extra.to_owned());
        // A deeper hierarchy than the shipped one, so that what a request's entities
        // inherit from it (through groups and through paths) decides something.
        let nested = r#"
@id("all-services-read-protected")
permit (principal in Group::"all-services", action == Action::"GET", resource in Path::"/protected");
"#;
        files.policies.insert("nested.cedar".to_owned(), nested.to_owned());
        let entities = common::nested_entities();
        files.entities = Some(entities.to_string());
        cedargate::policy::load::load_files(&files, &TokenModel::default()).unwrap()
    })
}

struct World {
    checker: Checker,
    frontend_pem: String,
    _jwks: tempfile::TempDir,
}

/// One checker for every case: the shipped policies and one ES256 issuer.
fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::ec("ec-1");
        std::fs::write(dir.path().join("jwks.json"), jwt::jwks(&[&signer])).unwrap();
        let mut config = test_config(shipped_policies());
        config.tokens.issuers = vec![IssuerConfig {
            issuer: jwt::ISSUER.to_owned(),
            audiences: vec![jwt::AUDIENCE.to_owned()],
            jwks_file: Some(dir.path().join("jwks.json")),
            ..IssuerConfig::default()
        }];
        let checker = Checker::load(config, Arc::new(SystemClock)).unwrap();
        World { checker, frontend_pem: Pki::new().svid(FRONTEND).cert_pem, _jwks: dir }
    })
}

/// Trust bundles for example.org, the configuration naming them, and a leaf its CA issued.
struct HandshakeWorld {
    bundles: TrustBundles,
    config: cedargate::config::IdentityConfig,
    der: Vec<u8>,
    _dir: tempfile::TempDir,
}

fn handshake_world() -> &'static HandshakeWorld {
    static WORLD: OnceLock<HandshakeWorld> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        std::fs::write(dir.path().join("ca.pem"), pki.ca_pem()).unwrap();
        let mut config = cedargate::config::IdentityConfig::default();
        config.trust_bundles.insert("example.org".into(), dir.path().join("ca.pem"));
        let bundles = TrustBundles::load(&config).unwrap();
        HandshakeWorld { bundles, config, der: pki.svid(FRONTEND).der, _dir: dir }
    })
}

fn sample_der() -> &'static [u8] {
    static DER: OnceLock<Vec<u8>> = OnceLock::new();
    DER.get_or_init(|| Pki::new().svid(FRONTEND).der)
}

fn shipped_files() -> PolicyFiles {
    let dir = shipped_policies();
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let policies = ["guardrails.cedar", "orders.cedar", "payments.cedar"]
        .into_iter()
        .map(|name| (name.to_owned(), read(name)))
        .collect();
    PolicyFiles { schema: read("schema.cedarschema"), policies, entities: None }
}

fn base64_url(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn base64_std(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The policy model (README, `policies/schema.cedarschema`) built the plain way:
/// Cedar's public API, restricted expressions, and Cedar's own upsert recomputing
/// the closure. The reference `RequestFacts::build` is compared with.
mod reference {
    use std::collections::HashSet;
    use std::time::SystemTime;

    use cedar_policy::{Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression};
    use cedargate::config::PrincipalFrom;
    use cedargate::credentials::token::ClaimValue;
    use cedargate::identity::svid::unix_seconds;
    use cedargate::policy::request::{read_tags, RequestFacts};
    use cedargate::policy::set::identity_parents;
    use cedargate::policy::values::cedar_datetime;

    fn s(v: &str) -> RestrictedExpression {
        RestrictedExpression::new_string(v.to_owned())
    }

    fn uid(t: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(t.clone(), EntityId::new(id))
    }

    fn datetime(seconds: i64, millis: u32) -> RestrictedExpression {
        RestrictedExpression::new_datetime(cedar_datetime(seconds, millis).unwrap())
    }

    fn record(pairs: Vec<(&str, RestrictedExpression)>) -> RestrictedExpression {
        RestrictedExpression::new_record(pairs.into_iter().map(|(k, v)| (k.to_owned(), v))).unwrap()
    }

    fn strings(items: &[String]) -> RestrictedExpression {
        RestrictedExpression::new_set(items.iter().map(|i| s(i)))
    }

    pub fn build(facts: &RequestFacts<'_>, now: SystemTime) -> (Request, Entities) {
        let RequestFacts {
            snapshot,
            principal,
            action,
            host,
            path,
            method,
            scheme,
            headers,
            route,
            destination,
            source_ip,
            peer,
            token,
            relevance,
        } = facts;
        let t = &snapshot.types;
        let id = &peer.spiffe_id;
        let mut attrs = vec![("trust_domain", s(id.trust_domain())), ("path", s(id.path()))];
        if let Some((namespace, service_account)) = id.kubernetes() {
            attrs.push(("namespace", s(namespace)));
            attrs.push(("service_account", s(service_account)));
        }
        if let Some(cert) = &peer.certificate {
            attrs.push((
                "certificate",
                record(vec![
                    ("serial", s(&cert.serial)),
                    ("issuer", s(&cert.issuer)),
                    ("fingerprint", s(&cert.sha256.iter().map(|b| format!("{b:02x}")).collect::<String>())),
                    ("not_before", datetime(cert.not_before, 0)),
                    ("not_after", datetime(cert.not_after, 0)),
                    ("lifetime", RestrictedExpression::new_duration(format!("{}s", cert.lifetime_seconds()))),
                ]),
            ));
        }
        let declared = snapshot.workload_parents.get(id.as_str()).cloned().unwrap_or_default();
        let parents: HashSet<EntityUid> = identity_parents(id, t).into_iter().chain(declared).collect();
        let to_owned =
            |pairs: Vec<(&str, RestrictedExpression)>| pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let workload = Entity::new(uid(&t.workload, id.as_str()), to_owned(attrs), parents).unwrap();
        let tags = |type_name: &EntityTypeName, pairs: &[(String, String)]| {
            let tags = read_tags(pairs, &relevance.tags).into_iter().map(|(k, v)| (k.to_owned(), s(&v)));
            Entity::new_with_tags(uid(type_name, "request"), [], [], tags).unwrap()
        };
        let (headers, query, route) = (tags(&t.headers, headers), tags(&t.query, &path.query), tags(&t.route, route));
        let segments = path
            .segments
            .iter()
            .enumerate()
            .map(|(i, v)| record(vec![("index", RestrictedExpression::new_long(i as i64)), ("value", s(v))]));
        let resource = Entity::new(
            uid(&t.http_request, "request"),
            to_owned(vec![
                ("host", s(host)),
                ("path", s(&path.path)),
                ("segments", RestrictedExpression::new_set(segments)),
                ("method", s(method)),
                ("scheme", s(scheme)),
                ("headers", RestrictedExpression::new_entity_uid(headers.uid())),
                ("query", RestrictedExpression::new_entity_uid(query.uid())),
            ]),
            path.prefixes().map(|p| uid(&t.path, p)).collect(),
        )
        .unwrap();
        let mut context = vec![
            ("peer".to_owned(), RestrictedExpression::new_entity_uid(workload.uid())),
            ("destination".to_owned(), record(vec![("principal", s(destination))])),
            ("route".to_owned(), RestrictedExpression::new_entity_uid(route.uid())),
        ];
        if relevance.time {
            let millis = now.duration_since(SystemTime::UNIX_EPOCH).unwrap().subsec_millis();
            context.push(("time".to_owned(), datetime(unix_seconds(now), millis)));
        }
        if let Some(ip) = source_ip {
            context.push(("source_ip".to_owned(), RestrictedExpression::new_ip(ip.to_string())));
        }
        if let Some(token) = token {
            let mut fields = vec![
                ("iss", s(&token.iss)),
                ("sub", s(&token.sub)),
                ("aud", strings(&token.aud)),
                ("scope", strings(&token.scope)),
                ("exp", datetime(token.exp, 0)),
                ("bound", RestrictedExpression::new_bool(token.bound)),
            ];
            if let Some(jti) = &token.jti {
                fields.push(("jti", s(jti)));
            }
            if let Some(client_id) = &token.client_id {
                fields.push(("client_id", s(client_id)));
            }
            if let Some(iat) = token.iat {
                fields.push(("iat", datetime(iat, 0)));
            }
            let claims = token.claims.iter().map(|(name, value)| {
                let value = match value {
                    ClaimValue::String(v) => s(v),
                    ClaimValue::Long(n) => RestrictedExpression::new_long(*n),
                    ClaimValue::Bool(b) => RestrictedExpression::new_bool(*b),
                    ClaimValue::StringSet(items) => strings(items),
                };
                (name.as_str(), value)
            });
            fields.push(("claims", record(claims.collect())));
            context.push(("token".to_owned(), record(fields)));
        }
        let resource_uid = resource.uid();
        let mut added = vec![workload, resource, headers, query, route];
        let subject = token.filter(|t| t.principal == PrincipalFrom::Subject).is_some();
        if subject && snapshot.entities.base().get(principal).is_none() {
            added.push(Entity::new_no_attrs((*principal).clone(), HashSet::new()));
        }
        let entities = snapshot.entities.base().clone().upsert_entities(added, None).unwrap();
        let context = Context::from_pairs(context).unwrap();
        let request = Request::new(principal.clone(), (*action).clone(), resource_uid, context, None).unwrap();
        (request, entities)
    }
}
