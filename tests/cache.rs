//! The decision cache and the verified-token cache: every change that can alter
//! a decision is honoured by the very next Check, and the cache never lets one
//! request reuse another's answer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use cedargate::cli::offline::SettableClock;
use cedargate::config::{Config, IssuerConfig};
use cedargate::pipeline::checker::{Checker, SystemClock};
use cedargate::pipeline::decision::CacheOutcome;
use cedargate::policy::reload::PolicyReloader;
use common::jwt::{self, claims, Signer, AUDIENCE, ISSUER};
use common::pki::Pki;
use common::{shipped_policies, shipped_policies_copy, test_config, Req};

const FRONTEND: &str = "spiffe://example.org/ns/default/sa/frontend";
const REPORTING: &str = "spiffe://example.org/ns/ops/sa/reporting";

fn checker(config: Config) -> Checker {
    Checker::load(config, Arc::new(SystemClock)).unwrap()
}

fn reloader(checker: &Checker) -> Arc<PolicyReloader> {
    Arc::clone(checker.parts().sets.default_set())
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} does not contain {from:?}", path.display());
    std::fs::write(path, text.replace(from, to)).unwrap();
}

#[test]
fn a_header_a_policy_reads_is_in_the_key_and_one_no_policy_reads_is_not() {
    let pki = Pki::new();
    let leaf = pki.svid(FRONTEND);
    let checker = checker(test_config(shipped_policies()));
    // The canary route is answered only for callers sending `x-canary: yes`.
    let canary = |opt_in: &str, request_id: &str| {
        Req::new(FRONTEND, Some(&leaf.cert_pem))
            .route("release", "canary")
            .header("x-canary", opt_in)
            .header("x-request-id", request_id)
            .input()
    };
    let first = checker.check(&canary("yes", "r1"));
    assert!(first.is_allowed(), "{first:?}");
    assert_eq!(first.cache, CacheOutcome::Miss);
    let other = checker.check(&canary("no", "r2"));
    assert_eq!((other.code(), other.cache), ("policy_denied", CacheOutcome::Miss), "{other:?}");
    assert_eq!(*other.policies, ["canary-opt-in"]);
    // x-request-id differs on every request and no policy reads it: still a hit.
    for (opt_in, id, allowed) in [("yes", "r3", true), ("no", "r4", false), ("yes", "r5", true)] {
        let d = checker.check(&canary(opt_in, id));
        assert_eq!((d.is_allowed(), d.cache), (allowed, CacheOutcome::Hit), "{d:?}");
    }
    // The route setting the policy reads is in the key too.
    let stable = checker.check(&Req::new(FRONTEND, Some(&leaf.cert_pem)).header("x-canary", "no").input());
    assert_eq!((stable.is_allowed(), stable.cache), (true, CacheOutcome::Miss), "{stable:?}");
}

#[test]
fn a_policy_that_reads_the_time_is_never_answered_from_the_cache() {
    let pki = Pki::new();
    let leaf = pki.svid(REPORTING);
    let checker = checker(test_config(shipped_policies()));
    // reporting-export reads context.time: its caller's requests bypass the cache...
    let export = Req::new(REPORTING, Some(&leaf.cert_pem)).path("/api/export?format=csv").input();
    for _ in 0..3 {
        assert_eq!(checker.check(&export).cache, CacheOutcome::Bypass);
    }
    // ...while other callers, whose policies do not read it, are cached.
    let frontend = pki.svid(FRONTEND);
    let read = Req::new(FRONTEND, Some(&frontend.cert_pem)).input();
    assert_eq!(checker.check(&read).cache, CacheOutcome::Miss);
    assert_eq!(checker.check(&read).cache, CacheOutcome::Hit);
}

#[test]
fn policy_and_entity_changes_are_honoured_by_the_next_check() {
    let pki = Pki::new();
    let dir = shipped_policies_copy();
    let checker = checker(test_config(dir.path().to_owned()));
    let reloader = reloader(&checker);
    let frontend = pki.svid(FRONTEND);
    let read = Req::new(FRONTEND, Some(&frontend.cert_pem)).input();
    assert!(checker.check(&read).is_allowed());
    assert_eq!(checker.check(&read).cache, CacheOutcome::Hit);

    // A policy change: the frontend may no longer read orders.
    edit(
        &dir.path().join("orders.cedar"),
        "@id(\"frontend-reads-orders\")\npermit",
        "@id(\"frontend-reads-orders\")\nforbid",
    );
    reloader.reload().unwrap();
    let after = checker.check(&read);
    assert_eq!((after.code(), after.cache), ("policy_denied", CacheOutcome::Miss), "{after:?}");
    assert_eq!(*after.policies, ["frontend-reads-orders"]);

    // An entity change: a workload joins the order-readers group.
    let analytics = "spiffe://example.org/ns/data/sa/analytics";
    let leaf = pki.svid(analytics);
    let read = Req::new(analytics, Some(&leaf.cert_pem)).input();
    assert_eq!(checker.check(&read).code(), "policy_denied");
    assert_eq!(checker.check(&read).cache, CacheOutcome::Hit);
    let entities = dir.path().join("entities.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&entities).unwrap()).unwrap();
    json.as_array_mut().unwrap().push(serde_json::json!({
        "uid": { "type": "Workload", "id": analytics },
        "attrs": {},
        "parents": [{ "type": "Group", "id": "order-readers" }]
    }));
    std::fs::write(&entities, json.to_string()).unwrap();
    reloader.reload().unwrap();
    let after = checker.check(&read);
    assert!(after.is_allowed(), "{after:?}");
    assert_eq!(after.cache, CacheOutcome::Miss);
}

struct TokenWorld {
    dir: tempfile::TempDir,
    checker: Checker,
    clock: Arc<SettableClock>,
    pki: Pki,
}

impl TokenWorld {
    fn new(signers: &[&Signer]) -> TokenWorld {
        TokenWorld::with(signers, |_| {})
    }

    fn with(signers: &[&Signer], tweak: impl FnOnce(&mut Config)) -> TokenWorld {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwks.json"), jwt::jwks(signers)).unwrap();
        std::fs::write(dir.path().join("revoked.txt"), "").unwrap();
        let mut config = test_config(shipped_policies());
        config.tokens.issuers = vec![IssuerConfig {
            issuer: ISSUER.to_owned(),
            audiences: vec![AUDIENCE.to_owned()],
            jwks_file: Some(dir.path().join("jwks.json")),
            leeway: Duration::ZERO,
            ..IssuerConfig::default()
        }];
        config.identity.revocation_file = Some(dir.path().join("revoked.txt"));
        tweak(&mut config);
        let clock = Arc::new(SettableClock::default());
        let checker = Checker::load(config, Arc::clone(&clock) as _).unwrap();
        TokenWorld { dir, checker, clock, pki: Pki::new() }
    }

    fn place_order(&self, token: &str) -> cedargate::pipeline::input::CheckInput {
        let leaf = self.pki.svid(FRONTEND);
        Req::new(FRONTEND, Some(&leaf.cert_pem))
            .method("POST")
            .path("/api/orders")
            .header("authorization", &format!("Bearer {token}"))
            .input()
    }
}

#[test]
fn a_cached_allow_for_a_token_ends_when_the_token_expires() {
    let ec = Signer::ec("ec-1");
    let w = TokenWorld::new(&[&ec]);
    let now = jwt::now();
    let mut c = claims(now, "alice");
    c["exp"] = (now + 60).into();
    let order = w.place_order(&ec.sign(&c));
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(now).unwrap());
    w.clock.set(Some(start));
    assert_eq!(w.checker.check(&order).cache, CacheOutcome::Miss);
    let cached = w.checker.check(&order);
    assert!(cached.is_allowed() && cached.cache == CacheOutcome::Hit, "{cached:?}");
    w.clock.set(Some(start + Duration::from_secs(61)));
    assert_eq!(w.checker.check(&order).code(), "token_expired");
}

#[test]
fn key_rotation_and_revocation_are_honoured_by_the_next_check() {
    let (old, new) = (Signer::ec("old"), Signer::ec("new"));
    let w = TokenWorld::new(&[&old]);
    let now = jwt::now();
    let order = w.place_order(&old.sign(&claims(now, "alice")));
    assert!(w.checker.check(&order).is_allowed());
    let cached = w.checker.check(&order);
    assert_eq!((cached.is_allowed(), cached.cache), (true, CacheOutcome::Hit));

    // Revoking the subject: the very next Check is refused, cache or not.
    std::fs::write(w.dir.path().join("revoked.txt"), "sub alice\n").unwrap();
    assert!(w.checker.parts().credentials.revocations.reload().unwrap());
    assert_eq!(w.checker.check(&order).code(), "token_revoked");
    std::fs::write(w.dir.path().join("revoked.txt"), "").unwrap();
    assert!(w.checker.parts().credentials.revocations.reload().unwrap());
    assert!(w.checker.check(&order).is_allowed());

    // Rotating the old key out: its token no longer verifies, although its
    // signature and its decision were both cached.
    std::fs::write(w.dir.path().join("jwks.json"), jwt::jwks(&[&new])).unwrap();
    let keys = w.checker.parts().credentials.tokens.keys_of(0).unwrap();
    let generation = keys.generation();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    assert!(runtime.block_on(keys.refresh_for_unknown_kid(generation)));
    assert_eq!(w.checker.check(&order).code(), "token_key_unknown");
    assert!(w.checker.check(&w.place_order(&new.sign(&claims(now, "alice")))).is_allowed());
}

/// A token whose signature verified is remembered with what its claims came to;
/// the time and the request's certificate are still judged on every Check.
#[test]
fn a_remembered_token_is_judged_again_on_every_check() {
    let ec = Signer::ec("ec-1");
    let w = TokenWorld::new(&[&ec]);
    let now = jwt::now();
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(now).unwrap());
    let mut later = claims(now, "alice");
    later["nbf"] = (now + 30).into();
    later["exp"] = (now + 90).into();
    let later = w.place_order(&ec.sign(&later));
    w.clock.set(Some(start));
    assert_eq!(w.checker.check(&later).code(), "token_not_yet_valid");
    assert_eq!(w.checker.check(&later).code(), "token_not_yet_valid");
    w.clock.set(Some(start + Duration::from_secs(31)));
    assert!(w.checker.check(&later).is_allowed());
    w.clock.set(Some(start + Duration::from_secs(91)));
    assert_eq!(w.checker.check(&later).code(), "token_expired");

    // A verdict on the claims is remembered too, failures included: the same
    // bytes are refused for the same reason without their signature checked again.
    let mut other = claims(now, "alice");
    other["aud"] = "another-service".into();
    let other = w.place_order(&ec.sign(&other));
    w.clock.set(Some(start));
    assert_eq!(w.checker.check(&other).code(), "token_audience_invalid");
    assert_eq!(w.checker.check(&other).code(), "token_audience_invalid");
    assert_eq!(w.checker.parts().credentials.tokens.cached_tokens(), 2);

    // An expired token whose claims are otherwise wrong is told it has expired,
    // first time and every time: the time is judged first.
    let mut both = claims(now, "alice");
    both["aud"] = "another-service".into();
    both["exp"] = (now - 10).into();
    let both = w.place_order(&ec.sign(&both));
    assert_eq!(w.checker.check(&both).code(), "token_expired");
    assert_eq!(w.checker.check(&both).code(), "token_expired");
}

/// The verified-token cache counts a large token once per KiB: it holds claims
/// of about the token's size, so its memory is bounded by bytes, not by count.
#[test]
fn remembered_tokens_are_weighed_by_their_size() {
    let ec = Signer::ec("ec-1");
    let w = TokenWorld::with(&[&ec], |c| c.cache.token_entries = 3);
    let now = jwt::now();
    let small = w.place_order(&ec.sign(&claims(now, "alice")));
    assert!(w.checker.check(&small).is_allowed());
    assert_eq!(w.checker.parts().credentials.tokens.cached_tokens(), 1);
    // About 4 KiB: heavier than the whole cache, so it is never kept.
    let mut large = claims(now, "bob");
    large["padding"] = "x".repeat(3000).into();
    let large = w.place_order(&ec.sign(&large));
    assert!(w.checker.check(&large).is_allowed());
    assert_eq!(w.checker.parts().credentials.tokens.cached_tokens(), 1);
}

#[test]
fn concurrent_identical_misses_compute_once() {
    let pki = Pki::new();
    // Many policies that every request must evaluate make a miss slow enough for
    // the threads to overlap.
    let dir = shipped_policies_copy();
    let mut text = String::new();
    for i in 0..600 {
        text.push_str(&format!(
            "permit (principal in Namespace::\"spiffe://example.org/ns/ns-{i}\", action, resource in Path::\"/x/{i}\");\n"
        ));
    }
    std::fs::write(dir.path().join("many.cedar"), text).unwrap();
    let checker = Arc::new(checker(test_config(dir.path().to_owned())));
    let leaf = pki.svid(FRONTEND);
    let read = Req::new(FRONTEND, Some(&leaf.cert_pem)).input();
    let threads = 8;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (checker, barrier, read) = (Arc::clone(&checker), Arc::clone(&barrier), read.clone());
            std::thread::spawn(move || {
                barrier.wait();
                checker.check(&read)
            })
        })
        .collect();
    let decisions: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(decisions.iter().all(|d| d.is_allowed()));
    let misses = decisions.iter().filter(|d| d.cache == CacheOutcome::Miss).count();
    assert_eq!(misses, 1, "{:?}", decisions.iter().map(|d| d.cache).collect::<Vec<_>>());
}

#[test]
fn the_cache_is_bounded_and_counts_evictions() {
    let pki = Pki::new();
    let mut config = test_config(shipped_policies());
    config.cache.max_entries = 50;
    let checker = checker(config);
    let leaf = pki.svid(FRONTEND);
    for i in 0..400 {
        let d = checker.check(&Req::new(FRONTEND, Some(&leaf.cert_pem)).path(&format!("/api/orders/{i}")).input());
        assert!(d.is_allowed());
    }
    let cache = checker.parts().cache.as_ref().unwrap();
    assert!(cache.entries() <= 50, "{} entries", cache.entries());
    let metrics = checker.parts().metrics.encode();
    let evicted: f64 = metrics
        .lines()
        .find(|l| l.starts_with("cedargate_cache_evictions_total{cache=\"decision\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(evicted >= 300.0, "{metrics}");
}

#[test]
fn the_cache_can_be_turned_off() {
    let pki = Pki::new();
    let mut config = test_config(shipped_policies());
    config.cache.decisions = false;
    let checker = checker(config);
    let leaf = pki.svid(FRONTEND);
    let read = Req::new(FRONTEND, Some(&leaf.cert_pem)).input();
    for _ in 0..3 {
        let d = checker.check(&read);
        assert_eq!((d.is_allowed(), d.cache), (true, CacheOutcome::Bypass));
    }
    assert!(checker.parts().cache.as_ref().is_none());
}
