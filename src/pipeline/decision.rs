//! The answer to a Check, and every reason it can be a deny.
//!
//! Each failure is a small typed error from the module that found it; `DenyReason`
//! wraps them and gives each exactly one reason code (the metric label, the audit
//! field and the JSON body's `reason`) and one HTTP status.

use std::sync::Arc;
use std::time::Duration;

use crate::credentials::token::{TokenError, VerifiedToken};
use crate::identity::svid::{IdentityError, PeerIdentity};
use crate::policy::request::RequestError;

/// Allow or deny, with why.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Unique per Check; returned to Envoy so access logs and upstreams can join on it.
    pub id: String,
    pub outcome: Outcome,
    /// The caller, when one was established.
    pub peer: Option<PeerIdentity>,
    /// The verified bearer token, when the request carried one.
    pub token: Option<VerifiedToken>,
    /// Ids of the policies that determined the outcome (the permits that allowed, or
    /// the forbids that denied). Empty for a default deny.
    pub policies: Arc<[String]>,
    /// Policy evaluation errors (policy id and message). Never sent to the client.
    pub errors: Arc<[String]>,
    /// The policy set that decided: `default`, or the name a route selected.
    pub policy_set: String,
    /// Version (content hash) of the policy set that decided.
    pub policy_version: String,
    /// Time spent deciding.
    pub elapsed: Duration,
    /// Whether the decision cache answered.
    pub cache: CacheOutcome,
    /// What the shadow policy set decided, when one is configured.
    pub shadow: Option<ShadowVerdict>,
    /// `resource.path` as the policies saw it (decoded, case-folded, no trailing
    /// `/`), when the request got that far.
    pub resource_path: Option<String>,
}

/// The shadow policy set's decision on the same request. It never changes the answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ShadowVerdict {
    /// Version of the shadow policy set.
    pub version: String,
    /// `allow`, or the deny reason code the shadow set would have given.
    pub decision: &'static str,
    pub policies: Vec<String>,
    pub errors: Vec<String>,
    /// Whether it agrees with the enforced decision (allow vs deny).
    pub agrees: bool,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Allow,
    Deny(DenyReason),
}

impl Decision {
    /// A decision about to be made under `policy_set` at `policy_version`: allowed
    /// until a step denies it, with a fresh id.
    pub fn begin(policy_set: &str, policy_version: &str) -> Decision {
        Decision {
            id: uuid::Uuid::new_v4().to_string(),
            outcome: Outcome::Allow,
            peer: None,
            token: None,
            policies: Arc::default(),
            errors: Arc::default(),
            policy_set: policy_set.to_owned(),
            policy_version: policy_version.to_owned(),
            elapsed: Duration::ZERO,
            cache: CacheOutcome::Bypass,
            shadow: None,
            resource_path: None,
        }
    }

    pub fn is_allowed(&self) -> bool {
        matches!(self.outcome, Outcome::Allow)
    }

    /// `allow`, or the deny reason code.
    pub fn code(&self) -> &'static str {
        match &self.outcome {
            Outcome::Allow => "allow",
            Outcome::Deny(reason) => reason.code(),
        }
    }

    /// What this decision adds to the metrics, at `now_unix`.
    pub fn metrics_record(&self, now_unix: i64) -> crate::ops::metrics::CheckRecord {
        crate::ops::metrics::CheckRecord {
            decision: if self.is_allowed() { "allow" } else { "deny" },
            reason: self.code(),
            cache: self.cache.label(),
            token_failure: matches!(self.outcome, Outcome::Deny(DenyReason::Token(_))),
            elapsed: self.elapsed,
            certificate_remaining: self
                .peer
                .as_ref()
                .and_then(|p| p.certificate.as_ref())
                .map(|c| c.not_after - now_unix),
            token_remaining: self.token.as_ref().map(|t| t.exp - now_unix),
        }
    }
}

/// How a decision was reached with respect to the decision cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheOutcome {
    Hit,
    Miss,
    /// Not looked up: the Check was decided before Cedar (a credential failure), the
    /// cache is off, or the policies read something that changes every request.
    #[default]
    Bypass,
}

impl CacheOutcome {
    pub fn label(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Bypass => "bypass",
        }
    }
}

/// Why a Check was denied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DenyReason {
    /// No usable caller identity: answered with 401.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The bearer token is missing (where required) or unusable: answered with 401
    /// and an RFC 6750 challenge.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The request cannot be turned into a Cedar request (malformed or over limits).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// No permit applied, or a forbid did.
    #[error("denied by policy")]
    PolicyDenied,
    /// A forbid policy failed to evaluate: it might have applied, so cedargate denies.
    #[error("a forbid policy failed to evaluate")]
    PolicyError,
    /// The route selects a policy set that is not configured.
    #[error("the route selects policy set `{0}`, which is not configured")]
    PolicySetUnknown(String),
    /// Cedar rejected the request cedargate built (a bug or a schema drift).
    #[error("internal error: {0}")]
    Internal(String),
}

impl DenyReason {
    /// Stable, lowercase reason code.
    pub fn code(&self) -> &'static str {
        match self {
            DenyReason::Identity(e) => e.code(),
            DenyReason::Token(e) => e.code(),
            DenyReason::Request(e) => e.code(),
            DenyReason::PolicyDenied => "policy_denied",
            DenyReason::PolicyError => "policy_error",
            DenyReason::PolicySetUnknown(_) => "policy_set_unknown",
            DenyReason::Internal(_) => "internal_error",
        }
    }

    /// The HTTP status Envoy sends to the client.
    pub fn http_status(&self) -> u16 {
        match self {
            DenyReason::Identity(e) => e.http_status(),
            DenyReason::Token(_) => 401,
            DenyReason::Request(e) => e.http_status(),
            DenyReason::PolicyDenied
            | DenyReason::PolicyError
            | DenyReason::PolicySetUnknown(_)
            | DenyReason::Internal(_) => 403,
        }
    }
}
