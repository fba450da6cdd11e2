//! The direct evaluation (`policy::interpret` on a Check's facts through
//! `policy::direct`) against Cedar's evaluator on the full request built from the
//! same facts: generated policy sets over the shipped schema, generated requests,
//! and the same verdict — decision, determining policies, no error — wherever the
//! direct path answers. Where it does not (Cedar would raise an error, or a policy
//! is beyond it), the Check is put to Cedar, so that is never a disagreement; a
//! second test makes sure it does answer for the shapes policies are written in.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cedargate::config::TokenModel;
use cedargate::credentials::token::ClaimValue;
use cedargate::identity::svid::PeerIdentity;
use cedargate::policy::direct;
use cedargate::policy::http_path::PathRules;
use cedargate::policy::request::prepare;
use cedargate::policy::set::{PolicyFiles, PolicySnapshot};
use common::{shipped_policies, Req};
use proptest::prelude::*;

const RULES: PathRules = PathRules { max_bytes: 8192, max_segments: 32, case_insensitive: true };
const FRONTEND: &str = "spiffe://example.org/ns/default/sa/frontend";
const REPORTING: &str = "spiffe://example.org/ns/ops/sa/reporting";
const ISSUER: &str = "https://issuer.example";

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(400)
}

/// Conditions a policy author writes, each valid under the shipped schema on its
/// own; some raise an error at evaluation for some requests (overflow, an
/// extension's refusal), which Cedar must then be the one to report.
const ATOMS: &[&str] = &[
    r#"resource.host == "orders.example.org""#,
    r#"resource.path like "/api/*""#,
    r#"resource.method == "GET""#,
    r#"resource.scheme == "https""#,
    r#"resource.segments.contains({index: 0, value: "api"})"#,
    r#"resource.segments.isEmpty()"#,
    r#"resource.headers.hasTag("x-canary") && resource.headers.getTag("x-canary") == "yes""#,
    r#"resource.headers.hasTag(resource.method)"#,
    r#"resource.query.hasTag("format") && resource.query.getTag("format") like "c*""#,
    r#"context.route.hasTag("team") && context.route.getTag("team") == "payments""#,
    r#"context has token && context.token.scope.contains("orders:write")"#,
    r#"context has token && context.token.scope.containsAny(["a:b", "orders:write"])"#,
    r#"context has token && ["orders"].containsAll(context.token.aud)"#,
    r#"context has token && context.token.bound"#,
    r#"context has token && context.token has jti && context.token.jti like "j1*""#,
    r#"context has token && context.token.claims has tenant && context.token.claims.tenant == "acme""#,
    r#"context has token && context.token.exp > context.time"#,
    r#"context has token && context.token has iat && context.token.iat.durationSince(context.token.exp) < duration("0s")"#,
    r#"principal has certificate && principal.certificate.lifetime > duration("24h")"#,
    r#"principal has certificate.lifetime && principal.certificate.not_after.toDate() < context.time"#,
    r#"principal is Workload && principal has namespace && principal.namespace == "default""#,
    r#"principal is Workload && principal.trust_domain == "example.org""#,
    r#"context.peer.trust_domain == "example.org" && context.peer.path like "/ns/*""#,
    r#"context has source_ip && context.source_ip.isInRange(ip("10.0.0.0/8"))"#,
    r#"context has source_ip && context.source_ip.isLoopback()"#,
    r#"context.time.toTime() >= duration("6h")"#,
    r#"context.time.offset(duration("1d")) > datetime("2030-01-01")"#,
    r#"principal in Group::"order-readers""#,
    r#"principal in Group::"all-services""#,
    r#"principal in Namespace::"spiffe://example.org/ns/default""#,
    r#"principal in TrustDomain::"example.org""#,
    r#"principal == context.peer"#,
    r#"principal is User"#,
    r#"resource in Path::"/api/orders""#,
    r#"resource in Path::"/protected""#,
    r#"resource in [Path::"/x", Path::"/api"]"#,
    r#"resource is HttpRequest"#,
    r#"action in Action::"read""#,
    r#"action == Action::"POST""#,
    r#"context.destination.principal == """#,
    r#"if context has token then context.token.sub == "alice" else resource.method == "DELETE""#,
    r#"{host: resource.host}.host == "orders.example.org""#,
    r#"[resource.method, "PUT"].contains("GET")"#,
    r#"context == context"#,
    r#"resource.segments.contains({index: 9223372036854775807 + 1, value: "x"})"#,
    r#"-(context.time.toTime().toMilliseconds()) < 0"#,
];

const PRINCIPALS: &[&str] = &[
    "principal",
    r#"principal == Workload::"spiffe://example.org/ns/default/sa/frontend""#,
    r#"principal == Workload::"spiffe://example.org/ns/ops/sa/reporting""#,
    r#"principal == User::"https://issuer.example#alice""#,
    r#"principal in Group::"order-readers""#,
    "principal is Workload",
    "principal is User",
    r#"principal is Workload in Namespace::"spiffe://example.org/ns/default""#,
];

const ACTIONS: &[&str] = &[
    "action",
    r#"action == Action::"GET""#,
    r#"action == Action::"POST""#,
    r#"action in Action::"read""#,
    r#"action in [Action::"GET", Action::"DELETE"]"#,
];

const RESOURCES: &[&str] = &[
    "resource",
    r#"resource in Path::"/api/orders""#,
    r#"resource in Path::"/protected""#,
    "resource is HttpRequest",
    r#"resource is HttpRequest in Path::"/api""#,
];

/// A condition: up to three atoms, each maybe negated, joined by `&&` or `||`.
fn condition() -> impl Strategy<Value = String> {
    let atom = (prop::sample::select(ATOMS), any::<bool>()).prop_map(|(atom, negated)| {
        if negated {
            format!("!({atom})")
        } else {
            format!("({atom})")
        }
    });
    (prop::collection::vec(atom, 1..4), prop::collection::vec(any::<bool>(), 3)).prop_map(|(atoms, ands)| {
        let mut text = atoms[0].clone();
        for (atom, and) in atoms.iter().skip(1).zip(ands) {
            text.push_str(if and { " && " } else { " || " });
            text.push_str(atom);
        }
        text
    })
}

fn policy() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        prop::sample::select(PRINCIPALS),
        prop::sample::select(ACTIONS),
        prop::sample::select(RESOURCES),
        prop::option::of((any::<bool>(), condition())),
    )
        .prop_map(|(permit, principal, action, resource, condition)| {
            let effect = if permit { "permit" } else { "forbid" };
            let condition = match condition {
                None => String::new(),
                Some((when, text)) => format!(" {} {{ {text} }}", if when { "when" } else { "unless" }),
            };
            format!("{effect} ({principal}, {action}, {resource}){condition};\n")
        })
}

/// The shipped schema, and the shipped entities with a deeper hierarchy
/// (`common::nested_entities`) and a user in a group.
fn files(policies: &[String]) -> PolicyFiles {
    let schema = std::fs::read_to_string(shipped_policies().join("schema.cedarschema")).unwrap();
    let mut entities = common::nested_entities();
    let list = entities.as_array_mut().unwrap();
    list.push(serde_json::json!({ "uid": { "type": "User", "id": format!("{ISSUER}#alice") }, "attrs": {}, "parents": [{ "type": "Group", "id": "order-readers" }] }));
    let mut files = PolicyFiles { schema, policies: Default::default(), entities: Some(entities.to_string()) };
    for (i, text) in policies.iter().enumerate() {
        files.policies.insert(format!("p{i}.cedar"), format!("@id(\"p{i}\")\n{text}"));
    }
    files
}

fn load(policies: &[String]) -> Option<PolicySnapshot> {
    cedargate::policy::load::load_files(&files(policies), &TokenModel::default()).ok()
}

/// A generated token: as the principal, subject, scopes, exp, iat, bound, a tenant claim.
type GeneratedToken = (bool, String, Vec<String>, i64, Option<i64>, bool, bool);

/// Everything about one request that a policy can read, as generated.
#[derive(Debug, Clone)]
struct Request {
    principal: String,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    route: Vec<(String, String)>,
    certificate: Option<(i64, i64)>,
    source_ip: Option<std::net::IpAddr>,
    token: Option<GeneratedToken>,
    millis: u64,
}

fn request() -> impl Strategy<Value = Request> {
    (
        prop::sample::select(vec![
            FRONTEND,
            REPORTING,
            "spiffe://example.org/ns/payments/sa/api",
            "spiffe://other.org/x",
        ]),
        prop::sample::select(vec!["GET", "POST", "DELETE", "PUT"]),
        prop::sample::select(vec![
            "/api/orders/1",
            "/api/orders",
            "/api/export?format=csv",
            "/",
            "/protected/x",
            "/x?debug=1",
        ]),
        prop::collection::vec(
            (prop::sample::select(vec!["x-canary", "accept", "get", "post"]), prop::sample::select(vec!["yes", "no"])),
            0..3,
        ),
        prop::collection::vec(
            (prop::sample::select(vec!["team", "release"]), prop::sample::select(vec!["payments", "canary"])),
            0..2,
        ),
        prop::option::of((0i64..2_000_000_000, 0i64..200_000)),
        prop::option::of(prop_oneof![
            any::<[u8; 4]>().prop_map(std::net::IpAddr::from),
            Just(std::net::IpAddr::from([10, 1, 2, 3])),
            Just(std::net::IpAddr::from([127, 0, 0, 1]))
        ]),
        prop::option::of((
            any::<bool>(),
            prop::sample::select(vec!["alice".to_owned(), "bob".to_owned()]),
            prop::collection::vec(prop::sample::select(vec!["orders:write".to_owned(), "a:b".to_owned()]), 0..3),
            0i64..2_000_000_000,
            prop::option::of(0i64..2_000_000_000),
            any::<bool>(),
            any::<bool>(),
        )),
        0u64..2_000_000_000_000,
    )
        .prop_map(|(principal, method, path, headers, route, certificate, source_ip, token, millis)| Request {
            principal: principal.to_owned(),
            method: method.to_owned(),
            path: path.to_owned(),
            headers: headers.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            route: route.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            certificate,
            source_ip,
            token,
            millis,
        })
}

/// What the direct path and Cedar each say about `request`; `None` where the
/// request is refused before the policies, or the direct path leaves it to Cedar.
fn both(
    snapshot: &PolicySnapshot,
    request: &Request,
) -> Option<(cedargate::policy::index::Verdict, cedar_policy::Response)> {
    let mut req = Req::new(&request.principal, None).method(&request.method).path(&request.path);
    for (name, value) in &request.headers {
        req = req.header(name, value);
    }
    for (key, value) in &request.route {
        req = req.route(key, value);
    }
    let mut input = req.input();
    input.source.ip = request.source_ip;
    let http = input.http.clone().unwrap();
    let certificate = request.certificate.map(|(not_before, lifetime)| {
        Arc::new(common::peer_certificate(&request.principal, [7; 32], "1f", not_before, lifetime))
    });
    let peer = PeerIdentity { spiffe_id: request.principal.parse().unwrap(), certificate };
    let token = request.token.clone().map(|(as_subject, sub, scope, exp, iat, bound, tenant)| {
        let claims = if tenant { vec![("tenant".into(), ClaimValue::String("acme".into()))] } else { Vec::new() };
        common::verified_token(common::TokenFacts { as_subject, sub, scope, exp, iat, bound, claims })
    });
    let facts = prepare(snapshot, &input, &http, &peer, token.as_ref(), &RULES).ok()?;
    let now = SystemTime::UNIX_EPOCH + Duration::from_millis(request.millis);
    let verdict = direct::decide(&facts, now)?;
    let built = facts.build(now).unwrap();
    let cedar = snapshot.authorizer.is_authorized(&built.request, &snapshot.policies, &built.entities);
    Some((verdict, cedar))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// Wherever the direct path answers, it answers as Cedar does over the whole
    /// set: the same decision, the same determining policies, and no policy in
    /// error (a policy Cedar finds in error is one the direct path must leave).
    #[test]
    fn the_direct_path_decides_as_cedar_does(
        policies in prop::collection::vec(policy(), 1..6),
        requests in prop::collection::vec(request(), 1..12),
    ) {
        let Some(snapshot) = load(&policies) else { return Ok(()) };
        for request in &requests {
            let Some((verdict, cedar)) = both(&snapshot, request) else { continue };
            let mut reasons: Vec<String> = cedar.diagnostics().reason().map(ToString::to_string).collect();
            reasons.sort();
            let errors: Vec<String> = cedar.diagnostics().errors().map(ToString::to_string).collect();
            prop_assert_eq!(verdict.allowed, cedar.decision() == cedar_policy::Decision::Allow, "{:?}\n{}", request, policies.concat());
            prop_assert_eq!(&*verdict.policies, &reasons[..], "{:?}\n{}", request, policies.concat());
            prop_assert!(errors.is_empty(), "Cedar raised {:?} where the direct path answered\n{:?}\n{}", errors, request, policies.concat());
            prop_assert!(verdict.errors.is_empty() && !verdict.forbid_failed);
        }
    }
}

/// The generator is not vacuous: every atom loads on its own, and the direct path
/// answers for most generated sets and requests (it leaves to Cedar only where an
/// error is possible).
#[test]
fn the_atoms_load_and_the_direct_path_answers_for_them() {
    let mut answered = 0;
    let mut asked = 0;
    let requests: Vec<Request> = {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        (0..40).map(|_| request().new_tree(&mut runner).unwrap().current()).collect()
    };
    for atom in ATOMS {
        let text = format!("permit (principal, action, resource) when {{ {atom} }};");
        let snapshot = load(&[text]).unwrap_or_else(|| panic!("does not load: {atom}"));
        for request in &requests {
            let mut req = Req::new(&request.principal, None).method(&request.method).path(&request.path);
            req = req.header("accept", "x");
            let input = req.input();
            let http = input.http.clone().unwrap();
            let peer = PeerIdentity { spiffe_id: request.principal.parse().unwrap(), certificate: None };
            let Ok(facts) = prepare(&snapshot, &input, &http, &peer, None, &RULES) else { continue };
            asked += 1;
            answered += usize::from(direct::decide(&facts, SystemTime::now()).is_some());
        }
    }
    // Two atoms always raise an error (overflow); a few more for some requests.
    assert!(answered * 10 >= asked * 8, "answered {answered} of {asked}");
}

/// The shipped policies are decided directly for the requests of the shipped
/// policy tests' kinds, and as Cedar decides them.
#[test]
fn the_shipped_policies_are_decided_directly() {
    let files = cedargate::policy::set::read_dir(&shipped_policies()).unwrap();
    let snapshot = cedargate::policy::load::load_files(&files, &TokenModel::default()).unwrap();
    let mut decided = 0;
    for (principal, method, path) in [
        (FRONTEND, "GET", "/api/orders/1"),
        (FRONTEND, "POST", "/api/orders"),
        (REPORTING, "GET", "/api/export?format=csv"),
        (REPORTING, "GET", "/admin"),
        ("spiffe://example.org/ns/payments/sa/api", "DELETE", "/api/payments/1"),
    ] {
        let request = Request {
            principal: principal.into(),
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            route: vec![("release".into(), "canary".into())],
            certificate: Some((1_700_000_000, 3600)),
            source_ip: None,
            token: None,
            millis: 1_795_435_200_000,
        };
        let (verdict, cedar) = both(&snapshot, &request).expect("decided directly");
        assert_eq!(verdict.allowed, cedar.decision() == cedar_policy::Decision::Allow, "{request:?}");
        decided += 1;
    }
    assert_eq!(decided, 5);
}

/// `policies.direct_evaluation = false` puts every Check to Cedar's evaluator: the
/// same decisions and determining policies as with it on, for the shipped
/// policies (the decision cache off, so every Check is evaluated), and the metric
/// says which evaluator decided.
#[test]
fn turning_direct_evaluation_off_changes_only_the_evaluator() {
    use cedargate::pipeline::checker::{Checker, SystemClock};
    let pki = common::pki::Pki::new();
    let checker = |direct| {
        let mut config = common::test_config(shipped_policies());
        config.cache.decisions = false;
        config.policies.direct_evaluation = direct;
        Checker::load(config, Arc::new(SystemClock)).unwrap()
    };
    let (on, off) = (checker(true), checker(false));
    let frontend = pki.svid(FRONTEND).cert_pem;
    let reporting = pki.svid(REPORTING).cert_pem;
    let requests = [
        Req::new(FRONTEND, Some(&frontend)).path("/api/orders/7"),
        Req::new(FRONTEND, Some(&frontend)).method("POST").path("/api/orders"),
        Req::new(FRONTEND, Some(&frontend)).path("/admin"),
        Req::new(FRONTEND, Some(&frontend)).path("/api/orders").route("release", "canary"),
        Req::new(FRONTEND, Some(&frontend)).path("/api/orders").route("release", "canary").header("x-canary", "yes"),
        Req::new(REPORTING, Some(&reporting)).path("/api/export?format=csv"),
        Req::new(REPORTING, Some(&reporting)).method("DELETE").path("/api/orders/1"),
    ];
    let mut allowed = 0;
    for req in &requests {
        let input = req.input();
        let (a, b) = (on.check(&input), off.check(&input));
        assert_eq!((a.code(), &a.policies, &a.errors), (b.code(), &b.policies, &b.errors), "{input:?}");
        allowed += usize::from(a.is_allowed());
    }
    assert!(allowed >= 2 && allowed < requests.len(), "{allowed} allowed");
    let count = |checker: &Checker, evaluator: &str| {
        let text = checker.parts().metrics.encode();
        let series = format!("cedargate_policy_evaluations_total{{evaluator=\"{evaluator}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(series.as_str())?.parse::<u64>().ok()).unwrap()
    };
    let n = requests.len() as u64;
    assert_eq!((count(&on, "direct"), count(&on, "cedar")), (n, 0));
    assert_eq!((count(&off, "direct"), count(&off, "cedar")), (0, n));
}
