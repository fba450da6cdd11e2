//! Bearer tokens: finding the JWT on a request and verifying it per RFC 8725.
//!
//! The order of checks is the order of trust. Size first (before any parsing), then
//! the token's shape, then `iss` picks the issuer *only* to pick its keys; the
//! algorithm must be on that issuer's allow-list and fit the key `kid` names;
//! then the signature. Only a verified token's claims are believed: expiry, audience,
//! type, lifetime, binding to the peer certificate, and revocation.
//!
//! A token whose signature held is remembered by its SHA-256, with the verdict on
//! everything its bytes alone decide; the next Check that carries it judges only
//! what can change between requests (the time, the certificate it came with, the
//! revocation list), in the same order.
//!
//! Every failure has its own reason code. Messages name claims and limits, never
//! token bytes or key material, and never echo attacker-chosen strings.

use std::sync::Arc;
use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::{CacheConfig, ClaimType, IssuerConfig, PrincipalFrom, TokensConfig};
use crate::credentials::jwks::{IssuerKeys, JwksError, KeyLookup};
use crate::credentials::revocation::Denylist;
use crate::identity::certificate::PeerCertificate;
use crate::identity::spiffe::SpiffeId;
use crate::identity::svid::unix_seconds;
use crate::ops::metrics::Metrics;
use crate::pipeline::input::{CheckInput, HttpInput};

/// The context extension a route sets to require (or waive) a token.
pub const ROUTE_TOKEN_KEY: &str = "cedargate.token";

/// A token whose signature and claims were verified, for this request: what the
/// token says (shared with every other Check that carries the same bytes) and
/// whether it was bound to this request's peer certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    pub verified: Arc<TokenClaims>,
    /// Whether `cnf["x5t#S256"]` bound it to the peer certificate, and that matched.
    pub bound: bool,
}

impl std::ops::Deref for VerifiedToken {
    type Target = TokenClaims;

    fn deref(&self) -> &TokenClaims {
        &self.verified
    }
}

/// What a verified token says. A function of the token's bytes and its issuer's
/// configuration alone, so it is worked out once per token and remembered.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenClaims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    /// `scope` split on spaces (or the `scp` array some issuers use).
    pub scope: Vec<String>,
    pub jti: Option<String>,
    pub client_id: Option<String>,
    pub iat: Option<i64>,
    pub exp: i64,
    /// The configured custom claims the token carries, typed.
    pub claims: Vec<(String, ClaimValue)>,
    /// SHA-256 of the token (hex, first 16 bytes): identifies it in logs and audit
    /// records without revealing it.
    pub fingerprint: String,
    /// Whether policies see the subject as the principal.
    pub principal: PrincipalFrom,
    /// Headers for the upstream on allow, from the issuer's `forward` map.
    pub forward: Vec<(String, String)>,
}

/// A custom claim, as the type the configuration declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimValue {
    String(String),
    Long(i64),
    Bool(bool),
    StringSet(Vec<String>),
}

/// Why a token was refused. All are answered with 401 and an RFC 6750 challenge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("a bearer token is required")]
    Missing,
    #[error("token is larger than {0} bytes")]
    TooLarge(usize),
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token uses an extension (`crit`) cedargate does not understand")]
    CriticalHeader,
    #[error("token algorithm is not allowed for its issuer")]
    AlgorithmNotAllowed,
    #[error("token issuer is not trusted")]
    IssuerUnknown,
    #[error("token issuer does not send tokens in this header")]
    WrongHeader,
    #[error("no key of the issuer matches the token's key id")]
    KeyUnknown { issuer: usize, generation: u64 },
    #[error("the key named by the token is not for the token's algorithm")]
    KeyAlgorithmMismatch,
    #[error("token signature is invalid")]
    SignatureInvalid,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token was issued in the future")]
    IssuedInFuture,
    #[error("token is not for this audience")]
    AudienceInvalid,
    #[error("token type is not the one required")]
    TypeInvalid,
    #[error("token lifetime exceeds the issuer's maximum (a long-lived token)")]
    LongLived,
    #[error("token lacks the required claim `{0}`")]
    ClaimMissing(String),
    #[error("token claim `{0}` has the wrong type")]
    ClaimInvalid(String),
    #[error("token subject is not a SPIFFE ID (JWT-SVID)")]
    SubjectNotSpiffeId,
    #[error("token is bound to a different certificate")]
    BindingMismatch,
    #[error("token is bound to a certificate, but the peer certificate was not forwarded")]
    BindingCertificateMissing,
    #[error("token must be bound to the peer certificate (cnf x5t#S256)")]
    BindingRequired,
    #[error("token is sender-constrained by a confirmation method cedargate cannot verify (only cnf x5t#S256 is)")]
    BindingUnsupported,
    #[error("token has been revoked")]
    Revoked,
}

impl TokenError {
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "token_missing",
            TokenError::TooLarge(_) => "token_too_large",
            TokenError::Malformed(_) => "token_malformed",
            TokenError::CriticalHeader => "token_critical_header",
            TokenError::AlgorithmNotAllowed => "token_algorithm_not_allowed",
            TokenError::IssuerUnknown => "token_issuer_unknown",
            TokenError::WrongHeader => "token_wrong_header",
            TokenError::KeyUnknown { .. } => "token_key_unknown",
            TokenError::KeyAlgorithmMismatch => "token_key_algorithm_mismatch",
            TokenError::SignatureInvalid => "token_signature_invalid",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::IssuedInFuture => "token_issued_in_future",
            TokenError::AudienceInvalid => "token_audience_invalid",
            TokenError::TypeInvalid => "token_type_invalid",
            TokenError::LongLived => "token_long_lived",
            TokenError::ClaimMissing(_) => "token_claim_missing",
            TokenError::ClaimInvalid(_) => "token_claim_invalid",
            TokenError::SubjectNotSpiffeId => "token_subject_not_spiffe_id",
            TokenError::BindingMismatch => "token_binding_mismatch",
            TokenError::BindingCertificateMissing => "token_binding_certificate_missing",
            TokenError::BindingRequired => "token_binding_required",
            TokenError::BindingUnsupported => "token_binding_unsupported",
            TokenError::Revoked => "token_revoked",
        }
    }

    /// The RFC 6750 `WWW-Authenticate` value. A missing token gets a bare challenge
    /// (§3.1: no error code when no credentials were sent); the description is
    /// cedargate's own fixed text, safe to put in a quoted string.
    pub fn challenge(&self) -> String {
        match self {
            TokenError::Missing => "Bearer realm=\"cedargate\"".to_owned(),
            other => format!(
                "Bearer realm=\"cedargate\", error=\"invalid_token\", error_description=\"{}: {}\"",
                other.code(),
                other.to_string().replace(['"', '\\'], "'")
            ),
        }
    }
}

/// Everything needed to verify tokens: the issuers and their live keys.
pub struct TokenVerifier {
    issuers: Vec<Issuer>,
    /// Distinct token headers, in configuration order.
    headers: Vec<String>,
    max_token_bytes: usize,
    required: bool,
    /// Tokens whose signature verified, by SHA-256 of the token, with the key-set
    /// generation that verified them and what their claims came to. A hit skips
    /// the signature and everything else that depends only on the token's bytes;
    /// the time, the binding to this request's certificate and revocation are
    /// judged on every Check, and a key change makes every entry stale.
    known: Option<moka::sync::Cache<[u8; 32], Arc<KnownToken>>>,
    metrics: Arc<Metrics>,
}

struct Issuer {
    config: IssuerConfig,
    algorithms: Vec<Algorithm>,
    keys: Arc<IssuerKeys>,
    /// `leeway` in whole seconds, as the time claims are compared.
    leeway: i64,
}

/// A token whose signature verified: which issuer's keys, of which generation,
/// and the verdict on its claims as far as they do not depend on the request.
struct KnownToken {
    issuer: usize,
    generation: u64,
    judged: Result<SignedToken, TokenError>,
    /// What the entry weighs in the cache: a KiB of token (or less) counts once, so
    /// the cache holds `token_entries` typical tokens but never that many of the
    /// largest (an entry keeps claims of about the token's size).
    weight: u32,
}

/// A verified token's time claims, and the verdict on the rest of its claims.
/// Kept apart because the time is judged first (RFC 8725 order, and the reason a
/// client is told), and again on every Check.
struct SignedToken {
    times: Times,
    claimed: Result<ClaimedToken, TokenError>,
}

struct ClaimedToken {
    verified: Arc<TokenClaims>,
    /// `cnf["x5t#S256"]`, which the peer certificate of each request must match.
    thumbprint: Option<String>,
}

/// The NumericDate claims, in seconds.
#[derive(Debug, Clone, Copy)]
struct Times {
    exp: i64,
    nbf: Option<i64>,
    iat: Option<i64>,
}

impl TokenVerifier {
    /// Sets up every issuer; JWKS files are read now and must be usable.
    pub fn new(config: &TokensConfig, cache: &CacheConfig, metrics: Arc<Metrics>) -> Result<TokenVerifier, JwksError> {
        let mut issuers = Vec::new();
        let mut headers: Vec<String> = Vec::new();
        for issuer in &config.issuers {
            let algorithms = issuer.parsed_algorithms().map_err(JwksError::Format)?;
            let keys = Arc::new(IssuerKeys::new(issuer)?);
            if !headers.contains(&issuer.header) {
                headers.push(issuer.header.clone());
            }
            let leeway = i64::try_from(issuer.leeway.as_secs()).unwrap_or(i64::MAX);
            issuers.push(Issuer { config: issuer.clone(), algorithms, keys, leeway });
        }
        let known = (cache.token_entries > 0).then(|| {
            let evictions = Arc::clone(&metrics);
            moka::sync::Cache::builder()
                .max_capacity(cache.token_entries)
                .weigher(|_, known: &Arc<KnownToken>| known.weight)
                .time_to_live(cache.ttl)
                .eviction_listener(move |_, _, cause| {
                    if cause.was_evicted() {
                        evictions.record_cache_eviction("token");
                    }
                })
                .build()
        });
        Ok(TokenVerifier {
            issuers,
            headers,
            max_token_bytes: config.max_token_bytes,
            required: config.required,
            known,
            metrics,
        })
    }

    /// Each issuer's keys, for the refresh tasks and metrics.
    pub fn issuer_keys(&self) -> impl Iterator<Item = &Arc<IssuerKeys>> {
        self.issuers.iter().map(|i| &i.keys)
    }

    /// The keys of the issuer at `index` (as carried by `TokenError::KeyUnknown`).
    pub fn keys_of(&self, index: usize) -> Option<&Arc<IssuerKeys>> {
        self.issuers.get(index).map(|i| &i.keys)
    }

    /// Entries in the verified-token cache.
    pub fn cached_tokens(&self) -> u64 {
        self.known.as_ref().map_or(0, |c| {
            c.run_pending_tasks();
            c.entry_count()
        })
    }

    /// Finds and verifies the request's token. `Ok(None)`: no token, and none required.
    /// A token header that is present but holds no usable token is refused, never
    /// taken for "no token": it would reach the upstream unverified.
    pub fn verify(
        &self,
        input: &CheckInput,
        http: &HttpInput,
        peer_certificate: Option<&PeerCertificate>,
        revoked: &Denylist,
        now: SystemTime,
    ) -> Result<Option<VerifiedToken>, TokenError> {
        let Some((header, token)) = self.find_token(http)? else {
            return if self.token_required(input) { Err(TokenError::Missing) } else { Ok(None) };
        };
        if token.len() > self.max_token_bytes {
            return Err(TokenError::TooLarge(self.max_token_bytes));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let known = match self.remembered(&digest) {
            Some(known) => known,
            None => self.verify_signature(header, token, &digest)?,
        };
        let issuer = self.issuers.get(known.issuer).ok_or(TokenError::IssuerUnknown)?;
        // The same bytes are the same token whichever header brought them, but an
        // issuer's tokens are only taken from its own header.
        if issuer.config.header != header {
            return Err(TokenError::WrongHeader);
        }
        let signed = known.judged.as_ref().map_err(Clone::clone)?;
        signed.times.check(unix_seconds(now), issuer.leeway)?;
        let claimed = signed.claimed.as_ref().map_err(Clone::clone)?;
        let bound = check_binding(claimed.thumbprint.as_deref(), peer_certificate)?;
        let verified = Arc::clone(&claimed.verified);
        if revoked.token(verified.jti.as_deref(), &verified.sub).is_some() {
            return Err(TokenError::Revoked);
        }
        Ok(Some(VerifiedToken { verified, bound }))
    }

    /// What these exact token bytes came to when they last verified, if that was
    /// under the keys their issuer has now.
    fn remembered(&self, digest: &[u8; 32]) -> Option<Arc<KnownToken>> {
        let cache = self.known.as_ref()?;
        let known = cache
            .get(digest)
            .filter(|known| self.issuers.get(known.issuer).is_some_and(|i| i.keys.generation() == known.generation));
        self.metrics.record_cache_lookup("token", known.is_some());
        known
    }

    /// The full verification of a token not seen under the current keys: its
    /// shape, issuer, algorithm, key and signature; then, of a token whose
    /// signature holds, everything its claims say that does not depend on the
    /// request, remembered for the next Check that carries it.
    fn verify_signature(&self, header: &str, token: &str, digest: &[u8; 32]) -> Result<Arc<KnownToken>, TokenError> {
        let jwt = Jwt::split(token)?;
        let (index, issuer) = self.issuer_of(&jwt.claims)?;
        if issuer.config.header != header {
            return Err(TokenError::WrongHeader);
        }
        let generation = issuer.verify_signature(index, &jwt)?;
        let weight = u32::try_from(token.len().div_ceil(1024)).unwrap_or(u32::MAX).max(1);
        let judged = issuer.judge_claims(&jwt, digest);
        let known = Arc::new(KnownToken { issuer: index, generation, judged, weight });
        if let Some(cache) = &self.known {
            cache.insert(*digest, Arc::clone(&known));
        }
        Ok(known)
    }

    /// A route's `cedargate.token` setting overrides the global `required`; any value
    /// other than `optional` requires a token (a typo must not waive it).
    fn token_required(&self, input: &CheckInput) -> bool {
        match input.context_extensions.iter().find(|(k, _)| k == ROUTE_TOKEN_KEY) {
            Some((_, value)) => value != "optional",
            None => self.required,
        }
    }

    /// The one token the request carries in a configured header, if any. Exactly
    /// one header line may carry it: two tokens (the same header twice, or two
    /// token headers) would leave one unverified on its way upstream.
    fn find_token<'a>(&self, http: &'a HttpInput) -> Result<Option<(&str, &'a str)>, TokenError> {
        let mut found = None;
        for name in &self.headers {
            for value in http.header_values(name) {
                if found.is_some() {
                    return Err(TokenError::Malformed("more than one token header"));
                }
                found = Some((name.as_str(), value));
            }
        }
        let Some((name, value)) = found else { return Ok(None) };
        let token = if name == "authorization" {
            bearer(value).ok_or(TokenError::Malformed("authorization is not `Bearer <token>`"))?
        } else {
            Some(value).filter(|v| is_token68(v)).ok_or(TokenError::Malformed("token header is not one token"))?
        };
        Ok(Some((name, token)))
    }

    fn issuer_of(&self, claims: &Map<String, Value>) -> Result<(usize, &Issuer), TokenError> {
        let iss = match claims.get("iss") {
            Some(Value::String(iss)) => iss,
            Some(_) => return Err(TokenError::ClaimInvalid("iss".to_owned())),
            None => return Err(TokenError::ClaimMissing("iss".to_owned())),
        };
        self.issuers.iter().enumerate().find(|(_, i)| &i.config.issuer == iss).ok_or(TokenError::IssuerUnknown)
    }
}

/// RFC 6750 §2.1: `Bearer`, one space, a token68. Anything looser (a tab, two
/// spaces, a non-ASCII space, another scheme, a list) is a different reading than
/// an upstream's might be, so it is not a bearer token.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && is_token68(token)).then_some(token)
}

/// RFC 9110 `token68`: `[A-Za-z0-9-._~+/]+ =*`.
fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// A compact JWS split into its parts, header and claims decoded but not trusted.
struct Jwt<'a> {
    /// `header.payload`, the signed bytes.
    signing_input: &'a str,
    signature: &'a str,
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
    claims: Map<String, Value>,
}

impl<'a> Jwt<'a> {
    fn split(token: &'a str) -> Result<Jwt<'a>, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("not three dot-separated parts"));
        };
        let signing_input = token.get(..header.len() + 1 + payload.len()).ok_or(TokenError::Malformed("truncated"))?;
        let header: Map<String, Value> = decode_part(header)?;
        if header.contains_key("crit") {
            return Err(TokenError::CriticalHeader);
        }
        let text = |name: &str| match header.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(TokenError::Malformed("a header field has the wrong type")),
        };
        let alg = text("alg")?.ok_or(TokenError::Malformed("no `alg` header"))?;
        let (kid, typ) = (text("kid")?, text("typ")?);
        Ok(Jwt { signing_input, signature, alg, kid, typ, claims: decode_part(payload)? })
    }
}

fn decode_part(part: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| TokenError::Malformed("a part is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed("a part is not a JSON object"))
}

impl Issuer {
    /// The algorithm, the key and the signature. Returns the key-set generation
    /// the signature verified under.
    fn verify_signature(&self, index: usize, jwt: &Jwt<'_>) -> Result<u64, TokenError> {
        // `none`, HS* and anything unknown are simply not on any allow-list.
        let alg: Algorithm = jwt.alg.parse().map_err(|_| TokenError::AlgorithmNotAllowed)?;
        if !self.algorithms.contains(&alg) {
            return Err(TokenError::AlgorithmNotAllowed);
        }
        // Generation first: a key change stores the keys, then bumps it, so the keys
        // read next are at least this generation's.
        let generation = self.keys.generation();
        let keys = self.keys.current();
        let key = match keys.find(jwt.kid.as_deref(), alg) {
            KeyLookup::Found(key) => key,
            KeyLookup::WrongAlgorithm => return Err(TokenError::KeyAlgorithmMismatch),
            KeyLookup::Unknown => {
                return Err(TokenError::KeyUnknown { issuer: index, generation: self.keys.generation() })
            }
        };
        if jwt.signature.is_empty() {
            return Err(TokenError::SignatureInvalid);
        }
        let valid = jsonwebtoken::crypto::verify(jwt.signature, jwt.signing_input.as_bytes(), key.decoding_key(), alg)
            .map_err(|_| TokenError::SignatureInvalid)?;
        if !valid {
            return Err(TokenError::SignatureInvalid);
        }
        Ok(generation)
    }

    /// The signature holds: the claims are the issuer's. What they come to apart
    /// from the time, the request's certificate and revocation.
    fn judge_claims(&self, jwt: &Jwt<'_>, digest: &[u8; 32]) -> Result<SignedToken, TokenError> {
        let claims = &jwt.claims;
        let times = Times {
            exp: number(claims, "exp")?.ok_or_else(|| TokenError::ClaimMissing("exp".to_owned()))?,
            nbf: number(claims, "nbf")?,
            iat: number(claims, "iat")?,
        };
        Ok(SignedToken { times, claimed: self.judge_the_rest(jwt, times, digest) })
    }

    fn judge_the_rest(&self, jwt: &Jwt<'_>, times: Times, digest: &[u8; 32]) -> Result<ClaimedToken, TokenError> {
        let (config, claims) = (&self.config, &jwt.claims);
        let aud = audiences(claims)?;
        if !aud.iter().any(|a| config.audiences.contains(a)) {
            return Err(TokenError::AudienceInvalid);
        }
        if let Some(required) = &config.typ {
            if !jwt.typ.as_deref().is_some_and(|typ| media_type_eq(typ, required)) {
                return Err(TokenError::TypeInvalid);
            }
        }
        if let Some(max) = config.max_lifetime {
            let iat = times.iat.ok_or_else(|| TokenError::ClaimMissing("iat".to_owned()))?;
            let max = i64::try_from(max.as_secs()).unwrap_or(i64::MAX);
            if times.exp.saturating_sub(iat) > max {
                return Err(TokenError::LongLived);
            }
        }
        for name in &config.required_claims {
            if !claims.contains_key(name) {
                return Err(TokenError::ClaimMissing(name.clone()));
            }
        }
        let sub = string(claims, "sub")?.ok_or_else(|| TokenError::ClaimMissing("sub".to_owned()))?;
        if config.spiffe && sub.parse::<SpiffeId>().is_err() {
            return Err(TokenError::SubjectNotSpiffeId);
        }
        let thumbprint = binding_thumbprint(claims, config.require_binding)?;
        let verified = TokenClaims {
            iss: config.issuer.clone(),
            aud,
            scope: scopes(claims)?,
            jti: string(claims, "jti")?,
            client_id: string(claims, "client_id")?,
            iat: times.iat,
            exp: times.exp,
            claims: custom_claims(claims, config)?,
            fingerprint: hex::encode(digest.get(..16).unwrap_or_default()),
            principal: config.principal,
            forward: forward_headers(claims, config, &sub),
            sub,
        };
        Ok(ClaimedToken { verified: Arc::new(verified), thumbprint })
    }
}

impl Times {
    /// Expired, not yet valid, or issued in the future, at `now`, with `leeway`.
    fn check(&self, now: i64, leeway: i64) -> Result<(), TokenError> {
        if now > self.exp.saturating_add(leeway) {
            return Err(TokenError::Expired);
        }
        if self.nbf.is_some_and(|nbf| now < nbf.saturating_sub(leeway)) {
            return Err(TokenError::NotYetValid);
        }
        if self.iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
            return Err(TokenError::IssuedInFuture);
        }
        Ok(())
    }
}

/// RFC 8705 §3.1: `cnf["x5t#S256"]` is base64url(SHA-256(DER of the certificate)).
/// A `cnf` naming any other confirmation method (DPoP `jkt`, `jwk`, `x5t`, `kid`,
/// ...) is a sender-constrained token cedargate cannot check the sender of: it is
/// refused, never accepted as a plain bearer token.
fn binding_thumbprint(claims: &Map<String, Value>, required: bool) -> Result<Option<String>, TokenError> {
    let thumbprint = match claims.get("cnf") {
        None => None,
        Some(Value::Object(cnf)) => {
            if cnf.is_empty() || cnf.keys().any(|method| method != "x5t#S256") {
                return Err(TokenError::BindingUnsupported);
            }
            match cnf.get("x5t#S256") {
                Some(Value::String(t)) => Some(t.clone()),
                _ => return Err(TokenError::ClaimInvalid("cnf".to_owned())),
            }
        }
        Some(_) => return Err(TokenError::ClaimInvalid("cnf".to_owned())),
    };
    if thumbprint.is_none() && required {
        return Err(TokenError::BindingRequired);
    }
    Ok(thumbprint)
}

/// Whether a token bound to `thumbprint` came with that certificate: `Ok(true)`
/// if so, `Ok(false)` for an unbound token.
fn check_binding(thumbprint: Option<&str>, peer_certificate: Option<&PeerCertificate>) -> Result<bool, TokenError> {
    let Some(thumbprint) = thumbprint else { return Ok(false) };
    let certificate = peer_certificate.ok_or(TokenError::BindingCertificateMissing)?;
    if URL_SAFE_NO_PAD.encode(certificate.sha256) != thumbprint {
        return Err(TokenError::BindingMismatch);
    }
    Ok(true)
}

/// `application/at+jwt` and `at+jwt` are the same type (RFC 7515 §4.1.9), in any case.
fn media_type_eq(actual: &str, required: &str) -> bool {
    let strip = |t: &str| {
        let lower = t.to_ascii_lowercase();
        lower.strip_prefix("application/").map(str::to_owned).unwrap_or(lower)
    };
    strip(actual) == strip(required)
}

/// A NumericDate claim: seconds, possibly fractional (truncated).
fn number(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| TokenError::ClaimInvalid(name.to_owned())),
        Some(_) => Err(TokenError::ClaimInvalid(name.to_owned())),
    }
}

fn string(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(TokenError::ClaimInvalid(name.to_owned())),
    }
}

fn string_list(value: &Value, name: &str) -> Result<Vec<String>, TokenError> {
    match value {
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| TokenError::ClaimInvalid(name.to_owned())))
            .collect(),
        _ => Err(TokenError::ClaimInvalid(name.to_owned())),
    }
}

/// `aud` is a string or an array of strings (RFC 7519 §4.1.3); it is required.
fn audiences(claims: &Map<String, Value>) -> Result<Vec<String>, TokenError> {
    match claims.get("aud") {
        None => Err(TokenError::ClaimMissing("aud".to_owned())),
        Some(Value::String(a)) => Ok(vec![a.clone()]),
        Some(other) => string_list(other, "aud"),
    }
}

/// `scope` (RFC 8693: space-separated string), else `scp` (an array, as some
/// issuers send it).
fn scopes(claims: &Map<String, Value>) -> Result<Vec<String>, TokenError> {
    match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) => Ok(space_separated(s)),
        (Some(other), _) => string_list(other, "scope"),
        (None, Some(Value::String(s))) => Ok(space_separated(s)),
        (None, Some(other)) => string_list(other, "scp"),
        (None, None) => Ok(Vec::new()),
    }
}

/// `"a b  c"` → `["a", "b", "c"]`: how OAuth writes a set of strings in one claim.
fn space_separated(s: &str) -> Vec<String> {
    s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// The configured custom claims the token has, checked against their declared type:
/// a claim of the wrong type refuses the token rather than being silently dropped.
fn custom_claims(claims: &Map<String, Value>, config: &IssuerConfig) -> Result<Vec<(String, ClaimValue)>, TokenError> {
    let mut out = Vec::new();
    for (name, kind) in &config.claims {
        let Some(value) = claims.get(name) else {
            continue;
        };
        let invalid = || TokenError::ClaimInvalid(name.clone());
        let typed = match (kind, value) {
            (ClaimType::String, Value::String(s)) => ClaimValue::String(s.clone()),
            (ClaimType::Long, Value::Number(n)) => ClaimValue::Long(n.as_i64().ok_or_else(invalid)?),
            (ClaimType::Bool, Value::Bool(b)) => ClaimValue::Bool(*b),
            (ClaimType::StringSet, Value::String(s)) => ClaimValue::StringSet(space_separated(s)),
            (ClaimType::StringSet, other @ Value::Array(_)) => ClaimValue::StringSet(string_list(other, name)?),
            _ => return Err(invalid()),
        };
        out.push((name.clone(), typed));
    }
    Ok(out)
}

/// Upstream headers from claims. Values that could not be a header value (control
/// characters, objects) are left out rather than mangled.
fn forward_headers(claims: &Map<String, Value>, config: &IssuerConfig, sub: &str) -> Vec<(String, String)> {
    config
        .forward
        .iter()
        .filter_map(|(header, claim)| {
            let value = match claims.get(claim) {
                _ if claim == "sub" => sub.to_owned(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Array(items)) => {
                    items.iter().map(|v| v.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>()?.join(" ")
                }
                _ => return None,
            };
            (!value.chars().any(char::is_control)).then(|| (header.clone(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_strict_bearer_credential_is_a_token() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer a.b-c_d~e+f/g=="), Some("a.b-c_d~e+f/g=="));
        for loose in [
            "bearer  abc",
            "Bearer abc ",
            "Bearer\tabc",
            "Bearer\u{a0}abc",
            "Bearer",
            "Bearer ",
            "Basic dXNlcg==",
            "Token abc",
            "DPoP abc",
            "Bearer a, Bearer b",
            "Bearer a,b",
            "Bearer =abc",
        ] {
            assert_eq!(bearer(loose), None, "{loose:?}");
        }
    }

    #[test]
    fn malformed_tokens_are_told_apart() {
        assert_eq!(Jwt::split("abc").err(), Some(TokenError::Malformed("not three dot-separated parts")));
        assert_eq!(Jwt::split("a.b.c.d").err(), Some(TokenError::Malformed("not three dot-separated parts")));
        assert_eq!(Jwt::split("!!.e30.c").err(), Some(TokenError::Malformed("a part is not base64url")));
        // {"alg":"RS256","crit":["exp"]}
        let crit = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","crit":["x"]}"#);
        assert_eq!(Jwt::split(&format!("{crit}.e30.c")).err(), Some(TokenError::CriticalHeader));
        let no_alg = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT"}"#);
        assert_eq!(Jwt::split(&format!("{no_alg}.e30.c")).err(), Some(TokenError::Malformed("no `alg` header")));
    }

    #[test]
    fn media_types_compare_without_application_prefix() {
        assert!(media_type_eq("application/at+JWT", "at+jwt"));
        assert!(media_type_eq("at+jwt", "at+jwt"));
        assert!(!media_type_eq("JWT", "at+jwt"));
    }

    #[test]
    fn challenge_never_carries_quotes_from_outside() {
        let c = TokenError::ClaimMissing("a\"b".into()).challenge();
        assert_eq!(c.matches('"').count(), 6, "{c}");
        assert_eq!(TokenError::Missing.challenge(), "Bearer realm=\"cedargate\"");
    }
}
