//! Requests an attacker would send to make Envoy, cedargate and the upstream read
//! one request differently: each is refused, or read the one way policies see it.
//! (Tokens: tests/tokens.rs; paths through real Envoy: tests/envoy_e2e.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use cedargate::config::Config;
use cedargate::pipeline::checker::{Checker, FixedClock, SystemClock};
use cedargate::pipeline::decision::{Decision, Outcome};
use common::pki::{LeafSpec, Pki};
use common::{shipped_policies, test_config, Req};

const FRONTEND: &str = "spiffe://example.org/ns/default/sa/frontend";
const REPORTING: &str = "spiffe://example.org/ns/ops/sa/reporting";

/// 2026-11-23T12:00:00Z: inside the export window of the shipped `reporting-export`
/// policy, whatever the time the test runs at.
const NOON: u64 = 1_795_435_200;

fn checker(config: Config) -> Checker {
    Checker::load(config, Arc::new(FixedClock(UNIX_EPOCH + Duration::from_secs(NOON)))).unwrap()
}

/// An SVID valid at `NOON`, with the spec's other settings.
fn svid_at_noon(pki: &Pki, spec: LeafSpec) -> String {
    let noon = time::OffsetDateTime::from_unix_timestamp(NOON as i64).unwrap();
    pki.leaf(&spec.valid_for(noon - time::Duration::hours(1), noon + time::Duration::hours(1))).cert_pem
}

fn from(pki: &Pki, id: &str) -> Req {
    Req::new(id, Some(&svid_at_noon(pki, LeafSpec::svid(id))))
}

fn status(d: &Decision) -> u16 {
    match &d.outcome {
        Outcome::Allow => 200,
        Outcome::Deny(reason) => reason.http_status(),
    }
}

#[test]
fn a_header_a_policy_reads_cannot_carry_two_values() {
    let pki = Pki::new();
    let c = checker(test_config(shipped_policies()));
    let canary = from(&pki, FRONTEND).route("release", "canary");
    // `canary-opt-in` forbids unless x-canary == "yes".
    assert!(c.check(&canary.raw_input(&[("x-canary", "yes")])).is_allowed());
    assert!(c.check(&canary.raw_input(&[("x-canary", "yes"), ("x-canary", "yes")])).is_allowed(), "one value");
    for values in [["yes", "no"], ["no", "yes"]] {
        let d = c.check(&canary.raw_input(&[("x-canary", values[0]), ("x-canary", values[1])]));
        assert_eq!((d.code(), status(&d)), ("header_ambiguous", 400), "{values:?}");
    }
    // Joined by an Envoy without encode_raw_headers, two lines cannot be told from one.
    let d = c.check(&canary.clone().header("x-canary", "yes,no").input());
    assert_eq!(d.code(), "header_ambiguous");
    // Headers no policy reads may repeat freely.
    assert!(c.check(&canary.raw_input(&[("x-canary", "yes"), ("accept", "a/b"), ("accept", "c/d")])).is_allowed());
}

#[test]
fn a_query_key_a_policy_reads_cannot_carry_two_values() {
    let pki = Pki::new();
    let c = checker(test_config(shipped_policies()));
    let export = |query: &str| c.check(&from(&pki, REPORTING).path(&format!("/api/export?{query}")).input());
    assert!(export("format=csv").is_allowed());
    assert!(export("format=csv&format=csv").is_allowed());
    assert_eq!(export("format=csv&format=json").code(), "query_ambiguous");
    assert_eq!(export("format=json&format=csv").code(), "query_ambiguous");
    assert!(export("format=csv&x=1&x=2").is_allowed(), "keys no policy reads may repeat");
}

#[test]
fn a_trailing_slash_and_letter_case_do_not_dodge_a_policy() {
    let dir = common::shipped_policies_copy();
    std::fs::write(
        dir.path().join("internal.cedar"),
        r#"@id("no-internal") forbid (principal, action, resource) when { resource.path == "/internal" };
@id("anything") permit (principal, action, resource);"#,
    )
    .unwrap();
    let pki = Pki::new();
    let c = checker(test_config(dir.path().to_owned()));
    for path in ["/internal", "/internal/", "/INTERNAL", "/Internal/", "/internal?x=1"] {
        let d = c.check(&from(&pki, FRONTEND).path(path).input());
        assert_eq!(*d.policies, ["no-internal"], "{path}");
    }
    // With case-sensitive paths, case is kept and the operator owns that choice.
    let mut config = test_config(dir.path().to_owned());
    config.policies.path_case = cedargate::config::PathCase::Sensitive;
    let c = checker(config);
    let d = c.check(&from(&pki, FRONTEND).path("/INTERNAL").input());
    assert!(d.is_allowed());
}

#[test]
fn method_overrides_are_refused() {
    let pki = Pki::new();
    let c = checker(test_config(shipped_policies()));
    let get = from(&pki, FRONTEND);
    for name in ["x-http-method-override", "x-http-method", "x-method-override"] {
        let d = c.check(&get.clone().header(name, "DELETE").input());
        assert_eq!((d.code(), status(&d)), ("method_override", 400), "{name}");
    }
    for query in ["_method=DELETE", "_METHOD=delete&x=1"] {
        let d = c.check(&get.clone().path(&format!("/api/orders/1?{query}")).input());
        assert_eq!(d.code(), "method_override", "{query}");
    }
}

#[test]
fn hosts_an_upstream_could_read_differently_are_refused() {
    let pki = Pki::new();
    let c = checker(test_config(shipped_policies()));
    let get = from(&pki, FRONTEND);
    assert!(c.check(&get.clone().host("Orders.Example.ORG:8443").input()).is_allowed());
    for host in ["orders.example.org.", "orders.example.org..", "orders..example.org", "a@orders.example.org"] {
        let d = c.check(&get.clone().host(host).input());
        assert_eq!((d.code(), status(&d)), ("host_invalid", 400), "{host}");
    }
}

#[test]
fn leaf_certificates_that_may_sign_others_are_refused() {
    let pki = Pki::new();
    let c = checker(test_config(shipped_policies()));
    for usages in [
        vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyCertSign],
        vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::CrlSign],
        vec![rcgen::KeyUsagePurpose::KeyEncipherment],
    ] {
        let leaf = svid_at_noon(&pki, LeafSpec { key_usages: Some(usages.clone()), ..LeafSpec::svid(FRONTEND) });
        let d = c.check(&Req::new(FRONTEND, Some(&leaf)).input());
        assert_eq!((d.code(), status(&d)), ("certificate_key_usage", 401), "{usages:?}");
    }
}

#[test]
fn header_names_are_bounded_like_values() {
    let pki = Pki::new();
    let c = checker(test_config(shipped_policies()));
    let name = "x".repeat(20_000);
    let d = c.check(&from(&pki, FRONTEND).header(&name, "1").input());
    assert_eq!((d.code(), status(&d)), ("header_too_large", 431));
}

/// A path of many segments once cost tens of milliseconds per Check; now the
/// segment count is bounded (400). What a path at the bound costs is measured by
/// the benchmark `check/shipped/uncached_max_segments`, not timed here.
#[test]
fn the_segment_count_of_a_path_is_bounded() {
    let pki = Pki::new();
    let mut config = test_config(shipped_policies());
    config.cache.decisions = false;
    let c = Checker::load(config, Arc::new(SystemClock)).unwrap();
    let req = Req::new(FRONTEND, Some(&pki.svid(FRONTEND).cert_pem));
    let over = format!("/api/orders{}", "/x".repeat(3000));
    let d = c.check(&req.clone().path(&over).input());
    assert_eq!((d.code(), status(&d)), ("path_invalid", 400));
    let at_limit = format!("/api/orders{}", "/segment".repeat(30));
    assert!(c.check(&req.clone().path(&at_limit).input()).is_allowed());
    let one_more = format!("{at_limit}/x");
    assert_eq!(c.check(&req.clone().path(&one_more).input()).code(), "path_invalid");
}

/// Requests are no longer validated against the schema one by one: the load proves
/// that every action accepts every principal type and context cedargate builds.
/// A schema where one action does not is refused, naming the action.
#[test]
fn a_schema_whose_actions_do_not_fit_every_request_is_refused_at_load() {
    use cedargate::config::TokenModel;
    use cedargate::policy::load::load_files;
    use cedargate::policy::set::PolicyFiles;
    let schema = std::fs::read_to_string(shipped_policies().join("schema.cedarschema")).unwrap();
    let narrowed = schema.replace(
        "action POST, PUT, PATCH, DELETE in [write]\n  appliesTo { principal: [Workload, User],",
        "action POST, PUT, DELETE in [write]\n  appliesTo { principal: [Workload, User], resource: [HttpRequest], context: RequestContext };\n\naction PATCH in [write]\n  appliesTo { principal: [Workload],",
    );
    assert_ne!(narrowed, schema, "the shipped schema changed shape; update this test");
    let files = PolicyFiles { schema: narrowed, ..PolicyFiles::default() };
    let workloads_only = TokenModel::default();
    assert!(load_files(&files, &workloads_only).is_ok(), "fine while users are never principals");
    let users_too = TokenModel { enabled: true, subject_principal: true, ..TokenModel::default() };
    let diagnostics = load_files(&files, &users_too).expect_err("refused");
    let message = diagnostics.iter().map(|d| d.message.clone()).collect::<Vec<_>>().join("\n");
    // PATCH is not the first action by name: every action is checked, not a sample.
    assert!(message.contains("PATCH") && message.contains("User"), "{message}");
}
