//! The shipped example policies, through the same pipeline the server runs: each
//! of the five policy shapes of the model allows and denies what it says.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use cedargate::pipeline::checker::{Checker, FixedClock, SystemClock};
use cedargate::pipeline::decision::{Decision, DenyReason, Outcome};
use common::pki::{LeafSpec, Pki};
use common::{shipped_policies, test_config, Req};
use time::OffsetDateTime;

const FRONTEND: &str = "spiffe://example.org/ns/default/sa/frontend";
const ORDERS: &str = "spiffe://example.org/ns/default/sa/orders";
const PAYMENTS: &str = "spiffe://example.org/ns/default/sa/payments";
const REPORTING: &str = "spiffe://example.org/ns/ops/sa/reporting";

struct World {
    pki: Pki,
    checker: Checker,
}

impl World {
    fn new() -> World {
        World::with_checker(Checker::load(test_config(shipped_policies()), Arc::new(SystemClock)).unwrap())
    }

    fn with_checker(checker: Checker) -> World {
        World { pki: Pki::new(), checker }
    }

    /// A request from `id` with a fresh one-hour SVID.
    fn from(&self, id: &str) -> Req {
        Req::new(id, Some(&self.pki.svid(id).cert_pem))
    }

    fn decide(&self, req: &Req) -> Decision {
        self.checker.check(&req.input())
    }
}

fn code(d: &Decision) -> &'static str {
    d.code()
}

#[test]
fn service_may_use_listed_methods_under_a_path_of_one_host() {
    let w = World::new();
    let allowed = w.decide(&w.from(FRONTEND).path("/api/orders"));
    assert!(allowed.is_allowed(), "{allowed:?}");
    assert_eq!(*allowed.policies, ["frontend-reads-orders"]);
    // Placing an order needs a user's token with scope orders:write (tests/tokens.rs).
    assert_eq!(code(&w.decide(&w.from(FRONTEND).method("POST").path("/api/orders"))), "policy_denied");
    assert!(w.decide(&w.from(FRONTEND).path("/api/orders/42/items?x=1")).is_allowed());
    // Another method, another host, a sibling path that only shares a prefix.
    assert_eq!(code(&w.decide(&w.from(FRONTEND).method("DELETE"))), "policy_denied");
    assert_eq!(code(&w.decide(&w.from(FRONTEND).host("payments.example.org"))), "policy_denied");
    assert_eq!(code(&w.decide(&w.from(FRONTEND).path("/api/ordersx"))), "policy_denied");
    // Host is compared without port and case.
    assert!(w.decide(&w.from(FRONTEND).host("Orders.Example.ORG:8443")).is_allowed());
}

#[test]
fn namespace_and_service_account_rule_for_payments() {
    let w = World::new();
    let charge =
        |id: &str| w.from(id).method("POST").path("/api/charges").host("payments.example.org").destination(PAYMENTS);
    let d = w.decide(&charge(ORDERS));
    assert!(d.is_allowed(), "{d:?}");
    assert_eq!(*d.policies, ["orders-charges-payments"]);
    // Same service account name in another namespace: not in Namespace default.
    assert!(!w.decide(&charge("spiffe://example.org/ns/staging/sa/orders")).is_allowed());
    // Right caller, but the request went to another destination.
    assert!(!w.decide(&charge(ORDERS).destination(FRONTEND)).is_allowed());
    // Trust domain rule: any example.org workload may GET /healthz.
    assert!(w.decide(&w.from("spiffe://example.org/batch/job-7").path("/healthz")).is_allowed());
}

#[test]
fn group_members_from_entities_json_may_read_but_not_write() {
    let w = World::new();
    assert!(w.decide(&w.from(REPORTING).path("/api/orders/9")).is_allowed());
    assert!(w.decide(&w.from(REPORTING).method("HEAD").path("/api/orders")).is_allowed());
    assert_eq!(code(&w.decide(&w.from(REPORTING).method("POST").path("/api/orders"))), "policy_denied");
}

#[test]
fn route_settings_and_headers_gate_the_canary() {
    let w = World::new();
    let canary = w.from(FRONTEND).route("release", "canary");
    let d = w.decide(&canary);
    assert_eq!(code(&d), "policy_denied");
    assert_eq!(*d.policies, ["canary-opt-in"]);
    assert!(w.decide(&canary.clone().header("x-canary", "yes")).is_allowed());
    assert!(w.decide(&w.from(FRONTEND).route("release", "stable")).is_allowed());
}

#[test]
fn query_and_time_of_day_conditions() {
    let at = |hour: u64| UNIX_EPOCH + Duration::from_secs(1_795_392_000 + hour * 3600); // 2026-11-23T00:00Z + hour
    let noon =
        World::with_checker(Checker::load(test_config(shipped_policies()), Arc::new(FixedClock(at(12)))).unwrap());
    let night =
        World::with_checker(Checker::load(test_config(shipped_policies()), Arc::new(FixedClock(at(23)))).unwrap());
    // Certificates must be valid at the fixed clock: make them around it.
    let at_noon = OffsetDateTime::from_unix_timestamp(1_795_392_000 + 12 * 3600).unwrap();
    let cert = noon.pki.leaf(
        &LeafSpec::svid(REPORTING).valid_for(at_noon - time::Duration::hours(1), at_noon + time::Duration::hours(12)),
    );
    let req = Req::new(REPORTING, Some(&cert.cert_pem)).path("/api/export?format=csv");
    assert!(noon.checker.check(&req.input()).is_allowed());
    assert_eq!(noon.checker.check(&req.clone().path("/api/export?format=json").input()).code(), "policy_denied");
    assert_eq!(night.checker.check(&req.input()).code(), "policy_denied");
}

#[test]
fn long_lived_certificate_is_forbidden_even_with_a_permit() {
    let w = World::new();
    let now = OffsetDateTime::now_utc();
    let thirty_days =
        w.pki.leaf(&LeafSpec::svid(FRONTEND).valid_for(now - time::Duration::days(1), now + time::Duration::days(29)));
    let d = w.decide(&Req::new(FRONTEND, Some(&thirty_days.cert_pem)));
    assert_eq!(code(&d), "policy_denied");
    assert_eq!(*d.policies, ["deny-long-lived-certificates"]);
}

#[test]
fn path_tricks_cannot_slip_past_the_admin_forbid() {
    let w = World::new();
    // Every spelling of /admin that is canonical falls under the guardrail.
    for path in ["/admin", "/admin/", "/ADMIN", "/Admin/users/", "/admin?x=/api"] {
        let d = w.decide(&w.from(FRONTEND).path(path));
        assert!(!d.is_allowed(), "{path}");
        assert_eq!(*d.policies, ["deny-admin"], "{path}");
    }
    // Every other one is refused before any policy is asked.
    for path in [
        "//admin",
        "/api/orders/../../admin",
        "/api/orders/%2e%2e/%2e%2e/admin",
        "/%61dmin/x",
        "/admin.",
        "/api/orders/..%2F..%2Fadmin",
        "/admin;x=1",
        "/api\\..\\admin",
    ] {
        let d = w.decide(&w.from(FRONTEND).path(path));
        assert_eq!(code(&d), "path_invalid", "{path}");
        assert!(matches!(&d.outcome, Outcome::Deny(r) if r.http_status() == 400));
    }
}

#[test]
fn unknown_method_is_denied_with_its_own_reason() {
    let w = World::new();
    assert_eq!(code(&w.decide(&w.from(FRONTEND).method("PROPFIND"))), "method_unknown");
    assert_eq!(code(&w.decide(&w.from(FRONTEND).method("get"))), "method_unknown");
}

#[test]
fn errors_in_a_forbid_deny_instead_of_being_skipped() {
    // Strict validation cannot rule out every runtime error (here: overflow). Cedar
    // skips an erroring policy, which for a forbid would mean an allow.
    let dir = tempfile::tempdir().unwrap();
    for f in ["schema.cedarschema", "entities.json"] {
        std::fs::copy(shipped_policies().join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(
        dir.path().join("p.cedar"),
        "permit (principal, action, resource);\n@id(\"needs-header\")\nforbid (principal, action, resource) when { resource.headers.hasTag(\"x-n\") && 9223372036854775807 + 1 > 0 };\n",
    )
    .unwrap();
    let w = World::with_checker(Checker::load(test_config(dir.path().to_owned()), Arc::new(SystemClock)).unwrap());
    let d = w.decide(&w.from(FRONTEND).header("x-n", "1"));
    assert!(matches!(d.outcome, Outcome::Deny(DenyReason::PolicyError)), "{d:?}");
    assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
    assert!(d.errors[0].starts_with("needs-header"), "{:?}", d.errors);
    assert!(w.decide(&w.from(FRONTEND)).is_allowed());
}

#[test]
fn decision_carries_id_version_and_latency() {
    let w = World::new();
    let a = w.decide(&w.from(FRONTEND));
    let b = w.decide(&w.from(FRONTEND));
    assert_ne!(a.id, b.id);
    assert_eq!(a.policy_version.len(), 12);
    assert!(a.elapsed > Duration::ZERO);
}

#[test]
fn action_groups_work_without_an_entities_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(shipped_policies().join("schema.cedarschema"), dir.path().join("schema.cedarschema")).unwrap();
    std::fs::write(dir.path().join("p.cedar"), "permit (principal, action in Action::\"read\", resource);\n").unwrap();
    let w = World::with_checker(Checker::load(test_config(dir.path().to_owned()), Arc::new(SystemClock)).unwrap());
    assert!(w.decide(&w.from(FRONTEND)).is_allowed());
    assert_eq!(code(&w.decide(&w.from(FRONTEND).method("POST"))), "policy_denied");
}

#[test]
fn a_schema_that_drifted_from_the_model_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let schema = std::fs::read_to_string(shipped_policies().join("schema.cedarschema")).unwrap();
    let drifted = schema.replace("  source_ip?: ipaddr,", "");
    assert_ne!(schema, drifted);
    std::fs::write(dir.path().join("schema.cedarschema"), drifted).unwrap();
    std::fs::write(dir.path().join("p.cedar"), "permit (principal, action, resource);\n").unwrap();
    let err = match Checker::load(test_config(dir.path().to_owned()), Arc::new(SystemClock)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("loaded a schema that does not declare context.source_ip"),
    };
    assert!(err.contains("schema.cedarschema") && err.contains("does not conform"), "{err}");
}
