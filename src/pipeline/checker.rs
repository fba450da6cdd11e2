//! One Check, top to bottom: limits → peer identity → bearer token → Cedar request
//! → evaluation → decision. Free of tonic and protobuf, so the CLI, tests and
//! benchmarks run the very pipeline the server runs.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::task::JoinHandle;

use crate::config::{Config, PathCase, TokenModel};
use crate::credentials::sources::{Credentials, CredentialsError};
use crate::credentials::token::VerifiedToken;
use crate::identity::svid::{self, CertificateCache, IdentityError, PeerIdentity};
use crate::ops::metrics::{Metrics, Stage};
use crate::ops::watch::{FileWatcher, Trigger};
use crate::pipeline::decision::{CacheOutcome, Decision, DenyReason, Outcome, ShadowVerdict};
use crate::pipeline::input::{CheckInput, HttpInput};
use crate::policy::decision_cache::{self, DecisionCache};
use crate::policy::direct;
use crate::policy::http_path::PathRules;
use crate::policy::index::Verdict;
use crate::policy::request;
use crate::policy::set::{LoadError, PolicySnapshot};
use crate::policy::sets::{PolicySets, UnknownSet, DEFAULT_SET};

/// Where "now" comes from: the system clock in production, a fixed instant in tests
/// that replay captured requests.
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that always reads the same instant.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub SystemTime);

impl Clock for FixedClock {
    fn now(&self) -> SystemTime {
        self.0
    }
}

/// What Checks are decided with, loaded once from the configuration. The server
/// keeps these handles to reload, watch and report on them; the checker reads them.
pub struct Parts {
    pub config: Arc<Config>,
    /// The default, shadow and named policy sets, each with its reloader.
    pub sets: Arc<PolicySets>,
    pub credentials: Arc<Credentials>,
    /// The decision cache, when it is on.
    pub cache: Option<Arc<DecisionCache>>,
    pub metrics: Arc<Metrics>,
}

/// Why a checker could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Policies(#[from] LoadError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
}

impl Parts {
    /// The policy directories and credential sources named in `config`, read now: an
    /// invalid policy set, JWKS file or revocation file refuses. Remote JWKS are not
    /// fetched here: `Credentials::spawn_refreshers` does.
    pub fn load(config: Config) -> Result<Parts, SetupError> {
        let tokens = TokenModel::from_config(&config.tokens);
        let sets = PolicySets::load(&config.policies, &tokens)?;
        let metrics = Arc::new(Metrics::default());
        let credentials = Credentials::load(&config, Arc::clone(&metrics))?;
        let cache = DecisionCache::new(&config.cache, Arc::clone(&metrics)).map(Arc::new);
        Ok(Parts { config: Arc::new(config), sets: Arc::new(sets), credentials: Arc::new(credentials), cache, metrics })
    }
}

impl Parts {
    /// Reloads what Checks are decided with while serving: JWKS (files watched,
    /// URLs fetched on their schedule), the revocation file and, when
    /// `policies.watch` is on, every policy directory. Call inside a Tokio runtime;
    /// the tasks run until aborted.
    pub fn watch(&self, watcher: &FileWatcher) -> Vec<JoinHandle<()>> {
        let mut tasks = self.credentials.spawn_refreshers(watcher);
        if self.config.policies.watch {
            for (_, _, set) in self.sets.all() {
                let reloader = Arc::clone(set);
                // Outcomes are logged and kept in the reloader's status.
                tasks.push(watcher.spawn("policies", &[set.dir()], move |trigger| {
                    let _ = match trigger {
                        Trigger::Event => Some(reloader.reload()),
                        Trigger::Backstop => reloader.reload_if_changed(),
                    };
                }));
            }
        }
        tasks
    }
}

/// Decides Checks against the current policy snapshots.
pub struct Checker {
    parts: Parts,
    clock: Arc<dyn Clock>,
    certificates: Option<CertificateCache>,
    /// How request paths are checked and compared, from `limits` and `policies`.
    path_rules: PathRules,
}

impl Checker {
    pub fn new(parts: Parts, clock: Arc<dyn Clock>) -> Self {
        let config = &parts.config;
        let entries = config.cache.certificate_entries;
        let certificates = (entries > 0).then(|| CertificateCache::new(entries));
        let path_rules = PathRules {
            max_bytes: config.limits.max_path_bytes,
            max_segments: config.limits.max_path_segments,
            case_insensitive: config.policies.path_case == PathCase::Insensitive,
        };
        Checker { parts, clock, certificates, path_rules }
    }

    /// A checker over the policy directories and credential sources in `config`.
    pub fn load(config: Config, clock: Arc<dyn Clock>) -> Result<Self, SetupError> {
        Ok(Checker::new(Parts::load(config)?, clock))
    }

    /// The sets, credentials, caches and metrics this checker decides with.
    pub fn parts(&self) -> &Parts {
        &self.parts
    }

    pub fn config(&self) -> &Config {
        &self.parts.config
    }

    /// Registers the checker's state (policy sets, caches, key refreshes,
    /// revocations) with its metrics, sampled at each scrape.
    pub fn report_to_metrics(self: &Arc<Self>) {
        let parts = &self.parts;
        for (_, _, set) in parts.sets.all() {
            parts.metrics.add_source(Arc::clone(set) as _);
        }
        parts.metrics.add_source(Arc::clone(self) as _);
        parts.metrics.add_source(Arc::clone(&parts.credentials.revocations) as _);
    }

    /// Decides one Check. Never panics on any input; anything unexpected denies.
    pub fn check(&self, input: &CheckInput) -> Decision {
        let started = Instant::now();
        let now = self.clock.now();
        let selected = self.parts.sets.select(&input.context_extensions);
        let (set, served) = match &selected {
            Ok((set, served)) => (*set, *served),
            Err(_) => (DEFAULT_SET, &**self.parts.sets.default_set()),
        };
        let snapshot = served.current();
        let mut decision = Decision::begin(set, &snapshot.version);
        let decided = match selected {
            Ok(_) => self.decide(&snapshot, set == DEFAULT_SET, input, (now, started), &mut decision),
            Err(UnknownSet(name)) => Err(DenyReason::PolicySetUnknown(name)),
        };
        decision.outcome = match decided {
            Ok(()) => Outcome::Allow,
            Err(reason) => Outcome::Deny(reason),
        };
        decision.elapsed = started.elapsed();
        decision
    }

    fn decide(
        &self,
        snapshot: &PolicySnapshot,
        default_set: bool,
        input: &CheckInput,
        (now, started): (SystemTime, Instant),
        decision: &mut Decision,
    ) -> Result<(), DenyReason> {
        // Each stage's time is the lap since the one before: one clock read per
        // stage (the limits count towards identity; they take nanoseconds).
        let mut lap = started;
        let mut stage_done = |stage: Stage| {
            let at = Instant::now();
            self.parts.metrics.record_stage(stage, at.saturating_duration_since(lap));
            lap = at;
        };
        let http = request::check_limits(input, &self.parts.config.limits)?;

        let span = tracing::debug_span!("identity").entered();
        let peer: PeerIdentity =
            svid::establish_with(&input.source, now, &self.parts.config.identity, self.certificates.as_ref())?;
        let revoked = self.parts.credentials.revocations.current();
        if let Some(cert) = &peer.certificate {
            if revoked.certificate(&cert.serial, &cert.sha256).is_some() {
                return Err(IdentityError::CertificateRevoked.into());
            }
        }
        decision.peer = Some(peer.clone());
        stage_done(Stage::Identity);
        drop(span);

        let span = tracing::debug_span!("token").entered();
        let token = self.parts.credentials.tokens.verify(input, http, peer.certificate.as_deref(), &revoked, now)?;
        // Without a token there is no token stage; its nanoseconds go to Cedar's.
        if token.is_some() {
            stage_done(Stage::Token);
        }
        drop(span);

        let _span = tracing::debug_span!("cedar").entered();
        let caller = Established { input, http, peer: &peer, token: token.as_ref(), now, started };
        let judged = self.judge(snapshot, &caller);
        stage_done(Stage::Cedar);
        // The shadow set is a candidate for the default set only.
        if let Some(shadow) = self.parts.sets.shadow().filter(|_| default_set) {
            decision.shadow = Some(self.shadow_verdict(&shadow.current(), &judged, &caller));
        }
        decision.token = token;
        let Judged { verdict, cache, resource_path } = judged?;
        decision.cache = cache;
        decision.resource_path = Some(resource_path);
        decision.policies = verdict.policies;
        decision.errors = verdict.errors;
        outcome_of(verdict.allowed, verdict.forbid_failed)
    }

    /// Cedar's verdict on the request under `snapshot`: from the decision cache when
    /// the same request was decided under the same policy set, else evaluated (and
    /// cached).
    fn judge(&self, snapshot: &PolicySnapshot, caller: &Established<'_>) -> Result<Judged, DenyReason> {
        let Established { input, http, peer, token, now, started } = *caller;
        let facts = request::prepare(snapshot, input, http, peer, token, &self.path_rules)?;
        let (verdict, cache) = self.verdict(snapshot, &facts, peer, token, (now, started))?;
        // The path moves into the decision (for its audit record) once judged.
        Ok(Judged { verdict, cache, resource_path: facts.path.path })
    }

    /// Cedar's verdict on `facts`, and how the decision cache took part.
    fn verdict(
        &self,
        snapshot: &PolicySnapshot,
        facts: &request::RequestFacts<'_>,
        peer: &PeerIdentity,
        token: Option<&VerifiedToken>,
        (now, started): (SystemTime, Instant),
    ) -> Result<(Verdict, CacheOutcome), DenyReason> {
        let evaluate = || {
            if self.parts.config.policies.direct_evaluation {
                if let Some(verdict) = direct::decide(facts, now) {
                    self.parts.metrics.record_evaluation(true);
                    return Ok(verdict);
                }
            }
            self.parts.metrics.record_evaluation(false);
            let cedar = facts.build(now)?;
            Ok(snapshot.index.evaluate(&cedar.request, &cedar.entities))
        };
        let Some(cache) = &self.parts.cache else { return Ok((evaluate()?, CacheOutcome::Bypass)) };
        let Some(key) = decision_cache::key(facts) else {
            return Ok((evaluate()?, CacheOutcome::Bypass));
        };
        let lifetime = decision_cache::lifetime(cache.ttl(), peer, token, now);
        let (verdict, hit) = cache.get_or_compute(key, lifetime, started, evaluate)?;
        self.parts.metrics.record_cache_lookup("decision", hit);
        Ok((verdict, if hit { CacheOutcome::Hit } else { CacheOutcome::Miss }))
    }

    /// What the shadow policy set says about the same request. It never changes
    /// the answer; a disagreement (allow against deny) is counted and logged.
    fn shadow_verdict(
        &self,
        shadow: &PolicySnapshot,
        enforced: &Result<Judged, DenyReason>,
        caller: &Established<'_>,
    ) -> ShadowVerdict {
        let Established { http, peer, .. } = *caller;
        let code = |result: &Result<Judged, DenyReason>| match result {
            Ok(Judged { verdict: v, .. }) => match outcome_of(v.allowed, v.forbid_failed) {
                Ok(()) => "allow",
                Err(reason) => reason.code(),
            },
            Err(reason) => reason.code(),
        };
        let judged = self.judge(shadow, caller);
        let (enforced_code, shadow_code) = (code(enforced), code(&judged));
        let agrees = (enforced_code == "allow") == (shadow_code == "allow");
        let (policies, errors) = match judged {
            Ok(Judged { verdict: v, .. }) => (v.policies.to_vec(), v.errors.to_vec()),
            Err(_) => (Vec::new(), Vec::new()),
        };
        if !agrees {
            self.parts.metrics.record_shadow_disagreement();
            let enforced_policies = enforced.as_ref().map(|j| j.verdict.policies.to_vec()).unwrap_or_default();
            tracing::warn!(
                principal = peer.spiffe_id.as_str(),
                http.method = http.method.as_str(),
                http.path = http.path.split(['?', '#']).next().unwrap_or_default(),
                enforced = enforced_code,
                enforced.policies = ?enforced_policies,
                shadow = shadow_code,
                shadow.policies = ?policies,
                shadow.version = %shadow.version,
                "the shadow policy set disagrees"
            );
        }
        ShadowVerdict { version: shadow.version.clone(), decision: shadow_code, policies, errors, agrees }
    }
}

/// What the pipeline established before Cedar: the request, its caller and the
/// time. The policy set it is put to (enforced or shadow) turns it into
/// `RequestFacts`.
#[derive(Clone, Copy)]
struct Established<'a> {
    input: &'a CheckInput,
    http: &'a HttpInput,
    peer: &'a PeerIdentity,
    token: Option<&'a VerifiedToken>,
    now: SystemTime,
    /// The instant `now` was read at: what the decision cache measures entries'
    /// lifetimes from, with no clock read of its own.
    started: Instant,
}

/// Cedar's verdict on one request, how the cache took part, and the path the
/// policies saw.
struct Judged {
    verdict: Verdict,
    cache: CacheOutcome,
    resource_path: String,
}

/// A verdict as an outcome: Cedar skips a forbid whose condition errors, which
/// could turn a deny into an allow, so a failed forbid denies.
fn outcome_of(allowed: bool, forbid_failed: bool) -> Result<(), DenyReason> {
    if forbid_failed {
        Err(DenyReason::PolicyError)
    } else if allowed {
        Ok(())
    } else {
        Err(DenyReason::PolicyDenied)
    }
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker").field("sets", &self.parts.sets).finish_non_exhaustive()
    }
}

/// The caches' sizes and the token issuers' key refreshes, sampled when scraped.
impl crate::ops::metrics::StateSource for Checker {
    fn samples(&self) -> Vec<crate::ops::metrics::Sample> {
        use crate::ops::metrics::Sample;
        use std::sync::atomic::Ordering;
        let entries = |cache: &str, value: u64| Sample::Gauge {
            name: "cache_entries",
            help: "Entries in each cache",
            labels: vec![("cache", cache.to_owned())],
            value: i64::try_from(value).unwrap_or(i64::MAX),
        };
        let mut samples = vec![entries("token", self.parts.credentials.tokens.cached_tokens())];
        if let Some(cache) = &self.parts.cache {
            samples.push(entries("decision", cache.entries()));
        }
        for keys in self.parts.credentials.tokens.issuer_keys() {
            for (result, value) in [("ok", &keys.stats.ok), ("failed", &keys.stats.failed)] {
                samples.push(Sample::Counter {
                    name: "jwks_refreshes",
                    help: "JWKS reads and fetches by issuer and result (a failure keeps the last good keys)",
                    labels: vec![("issuer", keys.issuer.clone()), ("result", result.to_owned())],
                    value: value.load(Ordering::Relaxed),
                });
            }
            samples.push(Sample::Gauge {
                name: "jwks_keys",
                help: "Usable keys per issuer",
                labels: vec![("issuer", keys.issuer.clone())],
                value: i64::try_from(keys.current().len()).unwrap_or(i64::MAX),
            });
        }
        samples
    }
}
