//! The decision cache: Cedar's verdict on a request, reused for an identical one.
//!
//! Correct by construction:
//! - The key is a SHA-256 over the policy set version and every value the Cedar
//!   request is built from (principal, action, resource and its attributes, the
//!   context, the caller's certificate and token claims). It leaves out only what
//!   `policy::reads::Relevance` proves no loaded policy can read.
//! - Credentials are verified on every Check *before* the cache is consulted, so a
//!   revoked, expired or re-keyed credential never reaches a cached verdict; and an
//!   entry still never outlives the certificate or token it was computed for.
//! - A new policy set has a new version, so no entry of the old one can be found.
//!   Concurrent misses for one key compute once (quick_cache's placeholder guard).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::config::{CacheConfig, PrincipalFrom};
use crate::credentials::token::{ClaimValue, VerifiedToken};
use crate::identity::svid::{unix_seconds, PeerIdentity};
use crate::ops::metrics::Metrics;
use crate::policy::index::Verdict;
use crate::policy::reads::TagKeys;
use crate::policy::request::{self, RequestError, RequestFacts};

/// A key: SHA-256 over length-prefixed fields, so no two field sequences collide.
struct KeyWriter(Sha256);

impl KeyWriter {
    fn bytes(&mut self, b: &[u8]) {
        self.0.update((b.len() as u64).to_le_bytes());
        self.0.update(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    /// An entity as its type's path and its id, each part length-prefixed: as
    /// unambiguous as `Ns::Type::"id"`, without formatting the name or escaping
    /// the id on every Check.
    fn uid(&mut self, uid: &cedar_policy::EntityUid) {
        let ty = uid.type_name();
        self.int(i64::try_from(ty.namespace_components().count()).unwrap_or(i64::MAX));
        ty.namespace_components().for_each(|part| self.str(part));
        self.str(ty.basename());
        self.str(uid.id().unescaped());
    }
    fn int(&mut self, n: i64) {
        self.0.update(n.to_le_bytes());
    }
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.0.update([1]);
                self.str(s);
            }
            None => self.0.update([0]),
        }
    }
    fn strs(&mut self, items: &[String]) {
        self.int(i64::try_from(items.len()).unwrap_or(i64::MAX));
        items.iter().for_each(|s| self.str(s));
    }
    fn tags(&mut self, pairs: &[(String, String)], relevant: &TagKeys) {
        let tags = request::read_tags(pairs, relevant);
        self.int(i64::try_from(tags.len()).unwrap_or(i64::MAX));
        for (k, v) in tags {
            self.str(k);
            self.str(&v);
        }
    }
}

/// The cache key for a request, or `None` when a policy that can apply to it reads
/// the time. Hashes every fact `RequestFacts::build` puts into the request, less
/// the tags that no policy that can apply reads.
pub fn key(facts: &RequestFacts<'_>) -> Option<[u8; 32]> {
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
    if relevance.time {
        return None;
    }
    let relevant = &relevance.tags;
    let mut w = KeyWriter(Sha256::new());
    w.str("cedargate-decision-v1");
    w.str(&snapshot.version);
    w.uid(action);
    w.uid(principal);
    // The peer workload and its certificate. What the request takes from the
    // certificate (serial, issuer, validity) is parsed from its DER, so the DER's
    // SHA-256 stands for all of it.
    w.str(peer.spiffe_id.as_str());
    match &peer.certificate {
        Some(cert) => w.bytes(&cert.sha256),
        None => w.str(""),
    }
    // The resource.
    w.str(host);
    w.str(&path.path);
    w.strs(&path.segments);
    w.str(method);
    w.str(scheme);
    w.tags(headers, relevant);
    w.tags(&path.query, relevant);
    // The context.
    w.tags(route, relevant);
    w.str(destination);
    match source_ip {
        Some(IpAddr::V4(ip)) => w.bytes(&ip.octets()),
        Some(IpAddr::V6(ip)) => w.bytes(&ip.octets()),
        None => w.bytes(&[]),
    }
    match token {
        Some(token) => write_token(&mut w, token),
        None => w.str(""),
    }
    Some(w.0.finalize().into())
}

fn write_token(w: &mut KeyWriter, token: &VerifiedToken) {
    w.str("token");
    w.str(&token.iss);
    w.str(&token.sub);
    w.strs(&token.aud);
    w.strs(&token.scope);
    w.opt_str(token.jti.as_deref());
    w.opt_str(token.client_id.as_deref());
    w.int(token.iat.unwrap_or(i64::MIN));
    w.int(token.exp);
    w.int(i64::from(token.bound));
    w.int(i64::from(token.principal == PrincipalFrom::Subject));
    w.int(i64::try_from(token.claims.len()).unwrap_or(i64::MAX));
    for (name, value) in &token.claims {
        w.str(name);
        match value {
            ClaimValue::String(s) => {
                w.str("s");
                w.str(s);
            }
            ClaimValue::Long(n) => {
                w.str("l");
                w.int(*n);
            }
            ClaimValue::Bool(b) => {
                w.str("b");
                w.int(i64::from(*b));
            }
            ClaimValue::StringSet(items) => {
                w.str("S");
                w.strs(items);
            }
        }
    }
}

/// How long an entry for these credentials may live: the configured TTL, cut short
/// by the certificate's `not_after` and the token's `exp`.
pub fn lifetime(ttl: Duration, peer: &PeerIdentity, token: Option<&VerifiedToken>, now: SystemTime) -> Duration {
    let now = unix_seconds(now);
    let until = |end: i64| Duration::from_secs(u64::try_from(end.saturating_sub(now)).unwrap_or(0));
    let mut lifetime = ttl;
    if let Some(cert) = &peer.certificate {
        lifetime = lifetime.min(until(cert.not_after));
    }
    if let Some(token) = token {
        lifetime = lifetime.min(until(token.exp));
    }
    lifetime
}

/// An entry: the verdict and when it stops being usable.
#[derive(Clone)]
struct Entry {
    /// Shared by every entry with the same verdict (`DecisionCache::shared`).
    verdict: Arc<Verdict>,
    expires_at: Instant,
}

/// How many distinct verdicts entries share at most. Verdicts are few (one per
/// combination of determining policies and errors that requests meet), and past
/// this many an entry keeps its own.
const SHARED_VERDICTS: usize = 4096;

/// Weighs an entry for the cache's memory bound.
#[derive(Clone)]
struct Weight {
    /// The least an entry weighs: `max_bytes / max_entries`, so the count of
    /// entries stays under `max_entries` too.
    slot: u64,
}

impl quick_cache::Weighter<[u8; 32], Entry> for Weight {
    fn weight(&self, _key: &[u8; 32], entry: &Entry) -> u64 {
        entry_bytes(&entry.verdict).max(self.slot)
    }
}

/// Counts evictions (entries pushed out to make room) in the metrics.
#[derive(Clone)]
struct CountEvictions(Arc<Metrics>);

impl quick_cache::Lifecycle<[u8; 32], Entry> for CountEvictions {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: [u8; 32], _entry: Entry) {
        self.0.record_cache_eviction("decision");
    }
}

type Entries = quick_cache::sync::Cache<[u8; 32], Entry, Weight, quick_cache::DefaultHashBuilder, CountEvictions>;

/// Cached verdicts, bounded by entries, memory and time.
///
/// quick_cache rather than moka: an entry costs its key, its value and a few
/// bytes of bookkeeping (moka's took about 430 bytes), and a hit takes a shard's
/// read lock and no write. It has no expiry of its own: each entry carries its
/// deadline, a lookup treats an entry past it as absent, and one that is never
/// looked up again is evicted by the bounds like any other.
pub struct DecisionCache {
    cache: Entries,
    ttl: Duration,
    /// The verdicts entries share, so 100,000 entries with the same answer hold
    /// one copy of its policy ids. Taken only when a miss fills an entry.
    shared: std::sync::Mutex<std::collections::HashSet<Arc<Verdict>>>,
}

impl DecisionCache {
    /// `None` when the cache is turned off.
    pub fn new(config: &CacheConfig, metrics: Arc<Metrics>) -> Option<DecisionCache> {
        if !config.decisions {
            return None;
        }
        let slot = (config.max_bytes / config.max_entries.max(1)).max(1);
        let cache = Entries::with(
            usize::try_from(config.max_entries).unwrap_or(usize::MAX),
            config.max_bytes,
            Weight { slot },
            quick_cache::DefaultHashBuilder::default(),
            CountEvictions(metrics),
        );
        Some(DecisionCache { cache, ttl: config.ttl, shared: std::sync::Mutex::default() })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The cached verdict for `key`, or `compute`'s, stored for `lifetime` from
    /// `now`. Returns whether it was a hit. Concurrent misses for one key compute
    /// once. `now` is when the Check's credentials were judged, the time `lifetime`
    /// was cut to their expiry from: an entry is used only while it is fresh at
    /// that instant, and stored until exactly when they expire.
    pub fn get_or_compute(
        &self,
        key: [u8; 32],
        lifetime: Duration,
        now: Instant,
        compute: impl FnOnce() -> Result<Verdict, RequestError>,
    ) -> Result<(Verdict, bool), RequestError> {
        if lifetime.is_zero() {
            return compute().map(|v| (v, false));
        }
        use quick_cache::sync::GuardResult;
        let fresh = |entry: &Entry| now < entry.expires_at;
        let found = match self.cache.get_value_or_guard(&key, None) {
            GuardResult::Value(entry) if fresh(&entry) => return Ok((Verdict::clone(&entry.verdict), true)),
            GuardResult::Value(_expired) => {
                self.cache.remove(&key);
                self.cache.get_value_or_guard(&key, None)
            }
            other => other,
        };
        match found {
            // This Check computes; concurrent ones for the same key wait for it
            // (or compute themselves if it fails).
            GuardResult::Guard(guard) => {
                let verdict = self.share(compute()?);
                let answer = Verdict::clone(&verdict);
                let _ = guard.insert(Entry { verdict, expires_at: now + lifetime });
                Ok((answer, false))
            }
            // Filled by a concurrent miss for the same key just now.
            GuardResult::Value(entry) if fresh(&entry) => Ok((Verdict::clone(&entry.verdict), true)),
            GuardResult::Value(_) | GuardResult::Timeout => compute().map(|v| (v, false)),
        }
    }

    /// The shared copy of `verdict`, made the shared one if there is none yet
    /// (and room). A poisoned lock only means no sharing.
    fn share(&self, verdict: Verdict) -> Arc<Verdict> {
        let Ok(mut shared) = self.shared.lock() else { return Arc::new(verdict) };
        if let Some(existing) = shared.get(&verdict) {
            return Arc::clone(existing);
        }
        let verdict = Arc::new(verdict);
        if shared.len() < SHARED_VERDICTS {
            shared.insert(Arc::clone(&verdict));
        }
        verdict
    }

    /// Entries now (expired ones included until they are looked up or evicted).
    pub fn entries(&self) -> u64 {
        u64::try_from(self.cache.len()).unwrap_or(u64::MAX)
    }
}

/// Estimated bytes of an entry: the verdict's strings (as if not shared: a
/// bound, not a count) plus what an entry costs beyond them (key, deadline,
/// `Arc`, the cache's bookkeeping), as measured: 100,000 entries sharing one
/// verdict took 9.7 MiB of live heap (glibc's `mallinfo2` around
/// `cargo bench --bench memory`'s fill; moka's had taken 42 MiB).
fn entry_bytes(verdict: &Verdict) -> u64 {
    let strings: usize = verdict.policies.iter().chain(verdict.errors.iter()).map(|s| s.len() + 24).sum();
    (100 + strings) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(uid: &str) -> [u8; 32] {
        let mut w = KeyWriter(Sha256::new());
        w.uid(&uid.parse::<cedar_policy::EntityUid>().unwrap_or_else(|e| unreachable!("{uid}: {e}")));
        w.0.finalize().into()
    }

    #[test]
    fn entries_with_the_same_verdict_share_it() {
        let config = CacheConfig::default();
        let cache = DecisionCache::new(&config, Arc::new(Metrics::default())).unwrap_or_else(|| unreachable!());
        let verdict = |policy: &str| Verdict {
            allowed: true,
            policies: vec![policy.to_owned()].into(),
            errors: Arc::default(),
            forbid_failed: false,
        };
        let fill = |key: u8, policy: &str| {
            let (got, hit) = cache
                .get_or_compute([key; 32], Duration::from_secs(60), Instant::now(), || Ok(verdict(policy)))
                .unwrap();
            assert!(!hit);
            assert_eq!(got, verdict(policy));
            cache.cache.get(&[key; 32]).map(|entry| entry.verdict).unwrap_or_else(|| unreachable!())
        };
        let (a, b, other) = (fill(1, "p"), fill(2, "p"), fill(3, "q"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(*other, verdict("q"));
    }

    #[test]
    fn an_entity_is_keyed_by_its_type_and_its_id_unambiguously() {
        let keys = [
            r#"Workload::"a""#,
            r#"User::"a""#,
            r#"Ns::User::"a""#,
            r#"Ns::"User::a""#,
            r#"Workload::"a\"""#,
            r#"Workload::"""#,
        ]
        .map(digest_of);
        for (i, a) in keys.iter().enumerate() {
            for b in keys.iter().skip(i + 1) {
                assert_ne!(a, b);
            }
        }
        assert_eq!(digest_of(r#"Workload::"a""#), digest_of(r#"Workload::"a""#));
    }
}
