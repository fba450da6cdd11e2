//! Who is calling: the peer workload's SPIFFE ID, established from Envoy's
//! `source.principal` and, when forwarded, the leaf certificate itself.
//!
//! Envoy only reports the *first* URI SAN as the principal and does not check trust
//! domains, so the X.509-SVID rules (exactly one URI SAN, a valid SPIFFE ID, not a
//! CA, a leaf's key usage, inside its validity window, equal to the principal) are
//! enforced here on the parsed certificate. A TLS connection outlives the
//! handshake, so a certificate that expired after the connection was made is caught
//! here too.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::IdentityConfig;
use crate::identity::certificate::{self, CertificateError, PeerCertificate};
use crate::identity::spiffe::{SpiffeId, SpiffeIdError};
use crate::pipeline::input::PeerInput;

/// An established caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub spiffe_id: SpiffeId,
    /// The parsed leaf, when Envoy forwarded it (shared with the certificate cache).
    pub certificate: Option<Arc<PeerCertificate>>,
}

/// Why no usable caller identity could be established.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("no peer identity: the connection has no client certificate")]
    Missing,
    #[error("peer principal is not a valid spiffe id: {0}")]
    Principal(SpiffeIdError),
    #[error("peer certificate is required but Envoy did not forward it")]
    CertificateMissing,
    #[error("peer certificate is unusable: {0}")]
    Certificate(CertificateError),
    #[error("peer certificate has {0} URI SANs, an X.509-SVID has exactly one")]
    UriSanCount(usize),
    #[error("peer certificate URI SAN is not a valid spiffe id: {0}")]
    SanSpiffeId(SpiffeIdError),
    #[error("peer principal does not match the certificate's URI SAN")]
    PrincipalMismatch,
    #[error("peer certificate is a CA certificate, not a workload leaf")]
    CertificateIsCa,
    #[error("peer certificate key usage is not a leaf X.509-SVID's (digitalSignature, never keyCertSign or cRLSign)")]
    CertificateKeyUsage,
    #[error("peer certificate has expired")]
    CertificateExpired,
    #[error("peer certificate is not valid yet")]
    CertificateNotYetValid,
    #[error("trust domain `{0}` is not allowed")]
    TrustDomainNotAllowed(String),
    #[error("peer certificate lifetime exceeds the configured maximum (a long-lived certificate)")]
    CertificateLongLived,
    #[error("peer certificate has been revoked")]
    CertificateRevoked,
    #[error("peer certificate chain does not verify to the trust bundle of its trust domain: {0}")]
    ChainUntrusted(String),
    #[error("no trust bundle is configured for trust domain `{0}`")]
    TrustBundleMissing(String),
}

impl IdentityError {
    pub fn code(&self) -> &'static str {
        match self {
            IdentityError::Missing => "identity_missing",
            IdentityError::Principal(_) => "principal_invalid",
            IdentityError::CertificateMissing => "certificate_missing",
            IdentityError::Certificate(_) => "certificate_malformed",
            IdentityError::UriSanCount(_) => "certificate_uri_san_count",
            IdentityError::SanSpiffeId(_) => "certificate_spiffe_id_invalid",
            IdentityError::PrincipalMismatch => "principal_certificate_mismatch",
            IdentityError::CertificateIsCa => "certificate_is_ca",
            IdentityError::CertificateKeyUsage => "certificate_key_usage",
            IdentityError::CertificateExpired => "certificate_expired",
            IdentityError::CertificateNotYetValid => "certificate_not_yet_valid",
            IdentityError::TrustDomainNotAllowed(_) => "trust_domain_not_allowed",
            IdentityError::CertificateLongLived => "certificate_long_lived",
            IdentityError::CertificateRevoked => "certificate_revoked",
            IdentityError::ChainUntrusted(_) => "certificate_chain_untrusted",
            IdentityError::TrustBundleMissing(_) => "trust_bundle_missing",
        }
    }

    /// 401 when the credentials are unusable; 403 when they are fine but the trust
    /// domain is not one this server serves.
    pub fn http_status(&self) -> u16 {
        match self {
            IdentityError::TrustDomainNotAllowed(_) => 403,
            _ => 401,
        }
    }
}

/// Parsed peer certificates, by their URL-encoded PEM. Parsing is most of what
/// establishing an identity costs, and a workload presents the same certificate for
/// its whole lifetime; the checks that depend on time or configuration still run
/// on every Check. The key is 1–2 KB of PEM: hashed with foldhash (seeded per
/// process) rather than SipHash, which cost a microsecond per Check. Only
/// certificates Envoy accepted at the handshake reach it, so its keys are not free
/// for an attacker to choose.
pub struct CertificateCache(moka::sync::Cache<String, Arc<Leaf>, foldhash::fast::RandomState>);

/// A parsed leaf and the SPIFFE ID its URI SANs give (or why they give none):
/// both depend on the certificate alone.
struct Leaf {
    certificate: Arc<PeerCertificate>,
    spiffe_id: Result<SpiffeId, IdentityError>,
}

impl Leaf {
    fn of(certificate: PeerCertificate) -> Leaf {
        let spiffe_id = svid_spiffe_id(&certificate);
        Leaf { certificate: Arc::new(certificate), spiffe_id }
    }
}

impl CertificateCache {
    pub fn new(entries: u64) -> CertificateCache {
        CertificateCache(
            moka::sync::Cache::builder()
                .max_capacity(entries)
                .time_to_idle(Duration::from_secs(600))
                .build_with_hasher(foldhash::fast::RandomState::default()),
        )
    }

    fn parse(&self, encoded: &str, max_bytes: usize) -> Result<Arc<Leaf>, IdentityError> {
        if let Some(leaf) = self.0.get(encoded) {
            return Ok(leaf);
        }
        let cert = certificate::parse_url_encoded_pem(encoded, max_bytes).map_err(IdentityError::Certificate)?;
        let leaf = Arc::new(Leaf::of(cert));
        self.0.insert(encoded.to_owned(), Arc::clone(&leaf));
        Ok(leaf)
    }
}

/// Establishes the caller of one Check.
pub fn establish(source: &PeerInput, now: SystemTime, config: &IdentityConfig) -> Result<PeerIdentity, IdentityError> {
    establish_with(source, now, config, None)
}

/// `establish`, reusing certificates parsed before.
pub fn establish_with(
    source: &PeerInput,
    now: SystemTime,
    config: &IdentityConfig,
    parsed: Option<&CertificateCache>,
) -> Result<PeerIdentity, IdentityError> {
    if source.principal.is_empty() && source.certificate.is_empty() {
        return Err(IdentityError::Missing);
    }
    let (spiffe_id, certificate) = if source.certificate.is_empty() {
        if config.require_certificate {
            return Err(IdentityError::CertificateMissing);
        }
        (source.principal.parse().map_err(IdentityError::Principal)?, None)
    } else {
        let leaf = match parsed {
            Some(cache) => cache.parse(&source.certificate, config.max_certificate_bytes)?,
            None => Arc::new(Leaf::of(
                certificate::parse_url_encoded_pem(&source.certificate, config.max_certificate_bytes)
                    .map_err(IdentityError::Certificate)?,
            )),
        };
        let (id, cert) = (leaf.spiffe_id.clone()?, Arc::clone(&leaf.certificate));
        if source.principal != id.as_str() {
            return Err(IdentityError::PrincipalMismatch);
        }
        check_leaf(&cert, now, config)?;
        (id, Some(cert))
    };
    check_trust_domain(&spiffe_id, config)?;
    Ok(PeerIdentity { spiffe_id, certificate })
}

/// `identity.trust_domains`, when set, names every trust domain that may call.
pub fn check_trust_domain(spiffe_id: &SpiffeId, config: &IdentityConfig) -> Result<(), IdentityError> {
    let domain = spiffe_id.trust_domain();
    if !config.trust_domains.is_empty() && !config.trust_domains.iter().any(|td| td == domain) {
        return Err(IdentityError::TrustDomainNotAllowed(domain.to_owned()));
    }
    Ok(())
}

/// The SPIFFE ID of an X.509-SVID leaf: its one URI SAN.
pub fn svid_spiffe_id(cert: &PeerCertificate) -> Result<SpiffeId, IdentityError> {
    match cert.uri_sans.as_slice() {
        [uri] => uri.parse().map_err(IdentityError::SanSpiffeId),
        other => Err(IdentityError::UriSanCount(other.len())),
    }
}

/// The X.509-SVID rules for a leaf that hold whatever its chain: a workload's key
/// usage, not a CA, inside its validity window (with `clock_skew`), and no longer
/// lived than `max_certificate_lifetime`.
pub fn check_leaf(cert: &PeerCertificate, now: SystemTime, config: &IdentityConfig) -> Result<(), IdentityError> {
    if cert.is_ca {
        return Err(IdentityError::CertificateIsCa);
    }
    // X.509-SVID §4.3: a leaf sets digitalSignature and never keyCertSign or
    // cRLSign; a certificate that may sign others is not a workload's.
    match cert.key_usage {
        Some(ku) if ku.digital_signature && !ku.key_cert_sign && !ku.crl_sign => {}
        _ => return Err(IdentityError::CertificateKeyUsage),
    }
    let now = unix_seconds(now);
    let skew = i64::try_from(config.clock_skew.as_secs()).unwrap_or(i64::MAX);
    if now > cert.not_after.saturating_add(skew) {
        return Err(IdentityError::CertificateExpired);
    }
    if now < cert.not_before.saturating_sub(skew) {
        return Err(IdentityError::CertificateNotYetValid);
    }
    if let Some(max) = config.max_certificate_lifetime {
        if cert.lifetime_seconds() > i64::try_from(max.as_secs()).unwrap_or(i64::MAX) {
            return Err(IdentityError::CertificateLongLived);
        }
    }
    Ok(())
}

/// Seconds since the Unix epoch (negative before it, for completeness).
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> IdentityConfig {
        IdentityConfig { require_certificate: false, ..IdentityConfig::default() }
    }

    fn peer(principal: &str) -> PeerInput {
        PeerInput { principal: principal.to_owned(), ..PeerInput::default() }
    }

    #[test]
    fn principal_alone_is_enough_when_certificate_not_required() {
        let id = establish(&peer("spiffe://example.org/ns/a/sa/b"), SystemTime::now(), &config()).unwrap();
        assert_eq!(id.spiffe_id.as_str(), "spiffe://example.org/ns/a/sa/b");
        assert!(id.certificate.is_none());
    }

    #[test]
    fn missing_certificate_is_refused_when_required() {
        let cfg = IdentityConfig { require_certificate: true, ..config() };
        let err = establish(&peer("spiffe://example.org/x"), SystemTime::now(), &cfg).unwrap_err();
        assert_eq!(err, IdentityError::CertificateMissing);
        assert_eq!(err.http_status(), 401);
    }

    #[test]
    fn no_principal_and_no_certificate_is_missing_identity() {
        assert_eq!(establish(&peer(""), SystemTime::now(), &config()), Err(IdentityError::Missing));
    }

    #[test]
    fn non_spiffe_principal_is_invalid() {
        let err = establish(&peer("CN=frontend,O=example"), SystemTime::now(), &config()).unwrap_err();
        assert_eq!(err.code(), "principal_invalid");
    }

    #[test]
    fn trust_domain_outside_the_allow_list_is_forbidden() {
        let cfg = IdentityConfig { trust_domains: vec!["example.org".into()], ..config() };
        let err = establish(&peer("spiffe://evil.org/x"), SystemTime::now(), &cfg).unwrap_err();
        assert_eq!(err, IdentityError::TrustDomainNotAllowed("evil.org".into()));
        assert_eq!(err.http_status(), 403);
        assert!(establish(&peer("spiffe://example.org/x"), SystemTime::now(), &cfg).is_ok());
    }

    #[test]
    fn garbage_certificate_is_malformed() {
        let input = PeerInput { certificate: "not-a-pem".into(), ..peer("spiffe://example.org/x") };
        let err = establish(&input, SystemTime::now(), &config()).unwrap_err();
        assert_eq!(err.code(), "certificate_malformed");
    }
}
