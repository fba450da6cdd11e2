//! What happens around every decision, the same for every front-end (the gRPC
//! server, the CLI, the benchmarks): a trace span joined to the caller's trace, a
//! deny instead of a panic, one retry after refreshing an issuer's keys when a
//! token names a key not seen yet, then metrics, the log line and the audit record.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use tracing::field::Empty;
use tracing::Instrument;

use crate::credentials::token::TokenError;
use crate::identity::svid::unix_seconds;
use crate::ops::audit::{AuditEntry, AuditLog};
use crate::pipeline::checker::Checker;
use crate::pipeline::decision::{Decision, DenyReason, Outcome};
use crate::pipeline::input::CheckInput;
use crate::policy::sets::DEFAULT_SET;

/// A checker with the outcome handling every front-end shares.
pub struct Authorizer {
    checker: Arc<Checker>,
    audit: Option<AuditLog>,
}

impl Authorizer {
    /// `audit`: where records go; `None` writes none (the CLI, audit turned off).
    pub fn new(checker: Arc<Checker>, audit: Option<AuditLog>) -> Self {
        Authorizer { checker, audit }
    }

    pub fn checker(&self) -> &Arc<Checker> {
        &self.checker
    }

    /// Decides one Check, has `answer` turn the decision into the front-end's reply,
    /// and accounts for it: metrics, log, audit. Never panics.
    ///
    /// All of it that cannot wait is done when this is called, and the future it
    /// returns holds only the reply: every Check's future is allocated, and one
    /// that kept the input, the decision and the audit record alive across awaits
    /// outgrew the allocator's per-thread cache (a slow allocation and a copy of
    /// kilobytes per Check). The rare waits are boxed where they happen: a span
    /// for the trace exporter, a key refresh, a full audit queue in `block` mode.
    pub fn authorize<'a, R, A>(&'a self, input: CheckInput, answer: A) -> impl Future<Output = R> + Send + 'a
    where
        R: Send + 'a,
        A: FnOnce(&Decision) -> R + Send + 'a,
    {
        // The span exists for the trace exporter; the log line carries its fields
        // itself, so without an exporter there is no span to build per Check.
        let step = if crate::ops::telemetry::exporting() {
            let span = tracing::info_span!(
                target: "cedargate",
                "check",
                otel.name = "cedargate.check",
                otel.kind = "server",
                decision.id = Empty,
                decision.outcome = Empty,
                decision.reason = Empty,
                cache = Empty,
            );
            if let Some(http) = &input.http {
                crate::ops::telemetry::join_trace(&span, &http.headers);
            }
            let step = span.in_scope(|| self.decide_and_account(input, answer));
            Step::Waiting(Box::pin(step.finish().instrument(span)))
        } else {
            self.decide_and_account(input, answer)
        };
        step.finish()
    }

    fn decide_and_account<'a, R, A>(&'a self, input: CheckInput, answer: A) -> Step<'a, R>
    where
        R: Send + 'a,
        A: FnOnce(&Decision) -> R + Send + 'a,
    {
        let decision = self.decide_once(&input);
        if let Some(refresh) = self.refresh_keys_for(&decision) {
            return Step::Waiting(Box::pin(async move {
                let decision = if refresh.await { self.decide_once(&input) } else { decision };
                self.conclude_and_queue(decision, input, answer).finish().await
            }));
        }
        self.conclude_and_queue(decision, input, answer)
    }

    /// `conclude`, then the audit record queued: what is left is the reply and,
    /// when the queue is full in `block` mode, the wait for room.
    fn conclude_and_queue<'a, R>(
        &'a self,
        decision: Decision,
        input: CheckInput,
        answer: impl FnOnce(&Decision) -> R,
    ) -> Step<'a, R> {
        let (reply, audit) = self.conclude(decision, input, answer);
        Step::Decided(reply, audit.and_then(|(log, entry)| log.write(entry)))
    }

    /// Decides one request without ever waiting, for a front-end that runs on the
    /// proxy's own threads (the in-process Envoy filter). Two things differ from
    /// `authorize`: a token naming a key not seen yet is denied at once while
    /// `background` refreshes that issuer's keys for the next request, and an audit
    /// record that finds the queue full is dropped and counted, never waited for.
    pub fn authorize_now<R>(
        &self,
        input: CheckInput,
        background: &tokio::runtime::Handle,
        answer: impl FnOnce(&Decision) -> R,
    ) -> R {
        let decision = self.decide_once(&input);
        if let Some(refresh) = self.refresh_keys_for(&decision) {
            background.spawn(refresh);
        }
        let (reply, audit) = self.conclude(decision, input, answer);
        if let Some((log, entry)) = audit {
            log.write_now(entry);
        }
        reply
    }

    /// Accounts for a decided Check and makes its reply. The audit record is made
    /// after the reply, because the decision moves into it (to be encoded on the
    /// audit thread) rather than being copied; it is returned with the log it goes
    /// to, for the caller to queue.
    fn conclude<R>(
        &self,
        decision: Decision,
        input: CheckInput,
        answer: impl FnOnce(&Decision) -> R,
    ) -> (R, Option<(&AuditLog, AuditEntry)>) {
        let now = self.account(&decision, &input);
        let reply = answer(&decision);
        (reply, self.audit.as_ref().map(|log| (log, AuditEntry::new(decision, input, now))))
    }

    /// Metrics, the span's fields and the log line for a decided Check; returns the
    /// time the audit record carries.
    fn account(&self, decision: &Decision, input: &CheckInput) -> SystemTime {
        let now = SystemTime::now();
        self.checker.parts().metrics.record_check(&decision.metrics_record(unix_seconds(now)));
        let span = tracing::Span::current();
        span.record("decision.id", decision.id.as_str());
        span.record("decision.outcome", if decision.is_allowed() { "allow" } else { "deny" });
        span.record("decision.reason", decision.code());
        span.record("cache", decision.cache.label());
        log_decision(decision, input);
        now
    }

    /// The pipeline is written not to panic; if it ever does, the answer is still a
    /// deny, never a dropped stream that a misconfigured Envoy could fail open on.
    fn decide_once(&self, input: &CheckInput) -> Decision {
        std::panic::catch_unwind(AssertUnwindSafe(|| self.checker.check(input))).unwrap_or_else(|_| {
            let version = self.checker.parts().sets.default_set().current().version.clone();
            let mut decision = Decision::begin(DEFAULT_SET, &version);
            decision.outcome = Outcome::Deny(DenyReason::Internal("the check panicked".to_owned()));
            decision
        })
    }

    /// After a `token_key_unknown` deny: the refresh of that issuer's JWKS, which
    /// says whether its keys changed, so the Check is worth deciding again. Key
    /// rotation then needs no restart and fails no request; the refresh is
    /// rate-limited per issuer, so made-up `kid`s cost nothing.
    fn refresh_keys_for(&self, decision: &Decision) -> Option<impl Future<Output = bool> + Send + 'static> {
        let Outcome::Deny(DenyReason::Token(TokenError::KeyUnknown { issuer, generation })) = &decision.outcome else {
            return None;
        };
        let keys = Arc::clone(self.checker.parts().credentials.tokens.keys_of(*issuer)?);
        let generation = *generation;
        Some(async move { keys.refresh_for_unknown_kid(generation).await })
    }
}

/// A Check decided, as far as it could be without waiting.
enum Step<'a, R> {
    /// The reply, and the wait for room in a full audit queue when there is one.
    Decided(R, Option<Wait<'a>>),
    /// What is left to do waits (a key refresh, or the work inside a span).
    Waiting(Pin<Box<dyn Future<Output = R> + Send + 'a>>),
}

type Wait<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

impl<'a, R: Send + 'a> Step<'a, R> {
    async fn finish(self) -> R {
        match self {
            Step::Decided(reply, None) => reply,
            Step::Decided(reply, Some(wait)) => {
                wait.await;
                reply
            }
            Step::Waiting(rest) => rest.await,
        }
    }
}

fn log_decision(decision: &Decision, input: &CheckInput) {
    // Allows are logged at debug: skip building their fields on the hot path.
    if decision.is_allowed() && !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let principal = decision.peer.as_ref().map(|p| p.spiffe_id.as_str()).unwrap_or(&input.source.principal);
    let (method, path) = input.http.as_ref().map_or(("", ""), |h| {
        // The query string can carry secrets; the log gets the path only.
        (h.method.as_str(), h.path.split(['?', '#']).next().unwrap_or_default())
    });
    let elapsed_us = u64::try_from(decision.elapsed.as_micros()).unwrap_or(u64::MAX);
    // The token by issuer, subject and fingerprint only; never the token itself.
    let (token_iss, token_sub, token_fp) =
        decision.token.as_ref().map_or(("", "", ""), |t| (t.iss.as_str(), t.sub.as_str(), t.fingerprint.as_str()));
    match &decision.outcome {
        Outcome::Allow => tracing::debug!(
            decision.id = %decision.id, decision = "allow", authz.principal = principal, http.method = method,
            http.path = path, token.iss = token_iss, token.sub = token_sub, token.fingerprint = token_fp,
            authz.policies = ?decision.policies, elapsed_us, "allowed"
        ),
        Outcome::Deny(reason) => tracing::info!(
            decision.id = %decision.id, decision = "deny", reason = reason.code(), detail = %reason,
            authz.principal = principal, http.method = method, http.path = path, token.iss = token_iss,
            token.sub = token_sub, token.fingerprint = token_fp, authz.policies = ?decision.policies,
            authz.errors = ?decision.errors, elapsed_us, "denied"
        ),
    }
}
