//! Resident memory: cedargate's pipeline loads 10,000 policies and fills 100,000
//! decisions into its cache, and the process's RSS is read from /proc at each step.
//!
//!     cargo bench --bench memory
//!
//! (Throughput is measured from outside the process, with h2load: benches/grpc.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "../tests/common/pki.rs"]
#[allow(dead_code)]
mod pki;

#[path = "../tests/common/request.rs"]
#[allow(dead_code)]
mod request;

mod support;

use std::sync::Arc;
use std::time::Instant;

use cedargate::config::Config;
use cedargate::pipeline::checker::{Checker, SystemClock};

const FRONTEND: &str = "spiffe://example.org/ns/default/sa/frontend";

fn main() {
    let pki = pki::Pki::new();
    let base = support::rss_mib();
    let policies = support::policies_with(10_000);
    let mut config = Config::default();
    config.policies.dir = policies.path().to_owned();
    config.identity.trust_domains = vec!["example.org".into()];
    config.cache.max_entries = 100_000;
    let started = Instant::now();
    let checker = Checker::load(config, Arc::new(SystemClock)).unwrap();
    let load = started.elapsed();
    let loaded = support::rss_mib();
    let leaf = pki.svid(FRONTEND);
    for i in 0..100_000 {
        let request = request::Req::new(support::FRONTEND, Some(&leaf.cert_pem)).path(&format!("/api/orders/{i}"));
        let input = request.envoy_headers().input();
        assert!(checker.check(&input).is_allowed());
    }
    let entries = checker.parts().cache.as_ref().map_or(0, |c| c.entries());
    println!(
        "RSS: {base:.1} MiB at start; {loaded:.1} MiB with 10,000 policies (loaded in {:.2} s); {:.1} MiB with {entries} cached decisions",
        load.as_secs_f64(),
        support::rss_mib()
    );
}
