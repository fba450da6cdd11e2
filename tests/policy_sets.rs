//! Per-route policy sets: a route's `cedargate.policy_set` context extension picks
//! which team's policies decide; an unknown name denies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::pki::Pki;
use common::{check, outcome, shipped_policies, start, test_config, Req};

const FRONTEND: &str = "spiffe://example.org/ns/default/sa/frontend";
const PAYMENTS: &str = "spiffe://example.org/ns/payments/sa/payments";

fn team_set(dir: &std::path::Path, policy: &str) {
    std::fs::copy(shipped_policies().join("schema.cedarschema"), dir.join("schema.cedarschema")).unwrap();
    std::fs::write(dir.join("team.cedar"), policy).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_selects_its_teams_policy_set() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    team_set(
        dir.path(),
        &format!(
            "@id(\"ledger-readers\")\npermit (principal == Workload::\"{PAYMENTS}\", action == Action::\"GET\", resource in Path::\"/api/ledger\");\n"
        ),
    );
    let mut config = test_config(shipped_policies());
    config.policies.sets = [("payments-team".to_owned(), dir.path().to_owned())].into();
    let running = start(config).await;
    let (payments, frontend) = (pki.svid(PAYMENTS), pki.svid(FRONTEND));
    let ledger = Req::new(PAYMENTS, Some(&payments.cert_pem)).path("/api/ledger/7");

    let on_route = ledger.clone().route("cedargate.policy_set", "payments-team");
    assert_eq!(outcome(&check(&running, on_route.build()).await), (200, "allow".into()));
    let d = running.checker.check(&on_route.input());
    assert_eq!((d.policy_set.as_str(), d.policies.to_vec()), ("payments-team", vec!["ledger-readers".to_owned()]));
    assert_eq!(d.policy_version, running.sets.named("payments-team").unwrap().status().version);

    // Without the extension the default set decides, and it has no such permit.
    assert_eq!(outcome(&check(&running, ledger.build()).await), (403, "policy_denied".into()));
    // The default set's permits do not apply on the team's route.
    let orders = Req::new(FRONTEND, Some(&frontend.cert_pem)).route("cedargate.policy_set", "payments-team");
    assert_eq!(outcome(&check(&running, orders.build()).await), (403, "policy_denied".into()));
    let default = Req::new(FRONTEND, Some(&frontend.cert_pem)).route("cedargate.policy_set", "default");
    assert_eq!(outcome(&check(&running, default.build()).await).0, 200);
    // A name that is not configured denies: a typo never falls back to another set.
    let typo = ledger.clone().route("cedargate.policy_set", "payments-tem");
    assert_eq!(outcome(&check(&running, typo.build()).await), (403, "policy_set_unknown".into()));

    // Each set reloads on its own.
    std::fs::write(dir.path().join("team.cedar"), "// nothing is allowed any more\n").unwrap();
    running.sets.named("payments-team").unwrap().reload().unwrap();
    assert_eq!(outcome(&check(&running, on_route.build()).await), (403, "policy_denied".into()));
    running.shutdown().await.unwrap();
}

#[test]
fn a_set_name_that_is_not_an_identifier_is_refused() {
    let mut config = test_config(shipped_policies());
    config.policies.sets = [("a b".to_owned(), shipped_policies())].into();
    assert!(config.validate("t").unwrap_err().to_string().contains("policies.sets"));
}
