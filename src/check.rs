//! One Check, top to bottom: limits → peer identity → bearer token → Cedar request
//! → evaluation → decision. Free of tonic and protobuf, so the CLI, tests and
//! benchmarks run the very pipeline the server runs.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use cedar_policy::Decision as CedarDecision;

use crate::cedar_request::{self, CedarInput, TokenModel};
use crate::config::Config;
use crate::credentials::{Credentials, CredentialsError};
use crate::decision::{Decision, DenyReason, Outcome};
use crate::identity::{self, IdentityError, PeerIdentity};
use crate::input::CheckInput;
use crate::policy_set::{self, LoadError, PolicySnapshot};
use crate::token::TokenError;

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

/// Decides Checks against the current policy snapshot.
pub struct Checker {
    config: Arc<Config>,
    policies: Arc<ArcSwap<PolicySnapshot>>,
    credentials: Arc<Credentials>,
    clock: Arc<dyn Clock>,
}

/// Why a checker could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Policies(#[from] LoadError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
}

/// What Cedar said about one request.
struct Verdict {
    allowed: bool,
    policies: Vec<String>,
    errors: Vec<String>,
    forbid_failed: bool,
}

impl Checker {
    pub fn new(
        config: Arc<Config>,
        policies: Arc<ArcSwap<PolicySnapshot>>,
        credentials: Arc<Credentials>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Checker { config, policies, credentials, clock }
    }

    /// A checker over the policy directory and credential sources named in `config`.
    /// Remote JWKS are not fetched here: `app::start` starts their refreshers.
    pub fn load(config: Config, clock: Arc<dyn Clock>) -> Result<Self, SetupError> {
        let snapshot = policy_set::load_dir(&config.policies.dir, &TokenModel::from_config(&config.tokens))?;
        let credentials = Credentials::load(&config)?;
        Ok(Checker::new(Arc::new(config), Arc::new(ArcSwap::from_pointee(snapshot)), Arc::new(credentials), clock))
    }

    /// The swappable policy snapshot, shared with the reloader.
    pub fn policy_handle(&self) -> &Arc<ArcSwap<PolicySnapshot>> {
        &self.policies
    }

    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }

    /// The snapshot Checks currently use.
    pub fn policies(&self) -> Arc<PolicySnapshot> {
        self.policies.load_full()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Decides one Check. Never panics on any input; anything unexpected denies.
    pub fn check(&self, input: &CheckInput) -> Decision {
        let started = Instant::now();
        let now = self.clock.now();
        let snapshot = self.policies.load();
        let mut decision = Decision {
            id: uuid::Uuid::new_v4().to_string(),
            outcome: Outcome::Allow,
            peer: None,
            token: None,
            policies: Vec::new(),
            errors: Vec::new(),
            policy_version: snapshot.version.clone(),
            elapsed: Default::default(),
        };
        decision.outcome = match self.decide(&snapshot, input, now, &mut decision) {
            Ok(()) => Outcome::Allow,
            Err(reason) => Outcome::Deny(reason),
        };
        decision.elapsed = started.elapsed();
        decision
    }

    /// After a `token_key_unknown` deny: refreshes that issuer's JWKS once and says
    /// whether its keys changed, so the Check is worth deciding again. Key rotation
    /// then needs no restart and fails no request; the refresh is rate-limited per
    /// issuer, so made-up `kid`s cost nothing.
    pub async fn refresh_keys_for(&self, decision: &Decision) -> bool {
        let Outcome::Deny(DenyReason::Token(TokenError::KeyUnknown { issuer, generation })) = &decision.outcome else {
            return false;
        };
        match self.credentials.tokens.keys_of(*issuer) {
            Some(keys) => keys.refresh_for_unknown_kid(*generation).await,
            None => false,
        }
    }

    fn decide(
        &self,
        snapshot: &PolicySnapshot,
        input: &CheckInput,
        now: SystemTime,
        decision: &mut Decision,
    ) -> Result<(), DenyReason> {
        let http = cedar_request::check_limits(input, &self.config.limits)?;
        let peer: PeerIdentity = identity::establish(&input.source, now, &self.config.identity)?;
        let revoked = self.credentials.revocations.current();
        if let Some(cert) = &peer.certificate {
            if revoked.certificate(&cert.serial, &cert.fingerprint()).is_some() {
                return Err(IdentityError::CertificateRevoked.into());
            }
        }
        decision.peer = Some(peer.clone());
        let token = self.credentials.tokens.verify(input, http, peer.certificate.as_ref(), &revoked, now)?;
        let cedar = cedar_request::build(snapshot, &peer, token.as_ref(), input, http, now, &self.config.limits)?;
        decision.token = token;
        let verdict = evaluate(snapshot, &cedar);
        decision.policies = verdict.policies;
        decision.errors = verdict.errors;
        if verdict.forbid_failed {
            return Err(DenyReason::PolicyError);
        }
        if verdict.allowed {
            Ok(())
        } else {
            Err(DenyReason::PolicyDenied)
        }
    }
}

/// Evaluates with Cedar. Cedar skips a policy whose condition errors; for a permit
/// that only withholds an allow, but for a forbid it would turn a deny into an
/// allow, so a failed forbid is reported for the caller to deny.
fn evaluate(snapshot: &PolicySnapshot, cedar: &CedarInput) -> Verdict {
    let response = snapshot.authorizer.is_authorized(&cedar.request, &snapshot.policies, &cedar.entities);
    let diagnostics = response.diagnostics();
    let mut forbid_failed = false;
    let errors = diagnostics
        .errors()
        .map(|e| {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = e;
            forbid_failed |= snapshot.forbid_ids.contains(e.policy_id());
            format!("{}: {}", e.policy_id(), e.inner())
        })
        .collect();
    Verdict {
        allowed: response.decision() == CedarDecision::Allow,
        policies: diagnostics.reason().map(ToString::to_string).collect(),
        errors,
        forbid_failed,
    }
}
