//! X.509-SVID rules on real certificates generated at test time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::SystemTime;

use cedargate::config::IdentityConfig;
use cedargate::identity::certificate;
use cedargate::identity::svid::{establish, IdentityError};
use cedargate::pipeline::input::PeerInput;
use common::pki::{url_encode, LeafSpec, Pki};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

const FRONTEND: &str = "spiffe://example.org/ns/default/sa/frontend";

fn peer(principal: &str, pem: &str) -> PeerInput {
    PeerInput { principal: principal.to_owned(), certificate: url_encode(pem), ..PeerInput::default() }
}

fn config() -> IdentityConfig {
    IdentityConfig { trust_domains: vec!["example.org".into()], ..IdentityConfig::default() }
}

#[test]
fn valid_svid_gives_spiffe_id_and_certificate_facts() {
    let pki = Pki::new();
    let leaf = pki.svid(FRONTEND);
    let id = establish(&peer(FRONTEND, &leaf.cert_pem), SystemTime::now(), &config()).unwrap();
    assert_eq!(id.spiffe_id.as_str(), FRONTEND);
    let cert = id.certificate.unwrap();
    let expected: [u8; 32] = Sha256::digest(&leaf.der).into();
    assert_eq!(cert.sha256, expected);
    assert_eq!(cert.fingerprint(), expected.iter().map(|b| format!("{b:02x}")).collect::<String>());
    assert_eq!(cert.lifetime_seconds(), 3660);
    assert!(cert.issuer.contains("cedargate test CA"), "{}", cert.issuer);
    assert!(!cert.serial.is_empty() && cert.serial.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!cert.is_ca);
}

#[test]
fn certificate_with_two_uri_sans_is_refused_although_envoy_reports_only_the_first() {
    let pki = Pki::new();
    let mut spec = LeafSpec::svid(FRONTEND);
    spec.uris.push("spiffe://example.org/ns/default/sa/payments".into());
    let leaf = pki.leaf(&spec);
    let err = establish(&peer(FRONTEND, &leaf.cert_pem), SystemTime::now(), &config()).unwrap_err();
    assert_eq!(err, IdentityError::UriSanCount(2));
    assert_eq!(err.code(), "certificate_uri_san_count");
}

#[test]
fn certificate_without_uri_san_is_refused() {
    let pki = Pki::new();
    let mut spec = LeafSpec::svid(FRONTEND);
    spec.uris.clear();
    spec.dns.push("frontend.example.org".into());
    let leaf = pki.leaf(&spec);
    let err = establish(&peer("frontend.example.org", &leaf.cert_pem), SystemTime::now(), &config()).unwrap_err();
    assert_eq!(err, IdentityError::UriSanCount(0));
}

#[test]
fn uri_san_that_is_not_a_spiffe_id_is_refused() {
    let pki = Pki::new();
    let leaf = pki.leaf(&LeafSpec::svid("https://example.org/frontend"));
    let err =
        establish(&peer("https://example.org/frontend", &leaf.cert_pem), SystemTime::now(), &config()).unwrap_err();
    assert_eq!(err.code(), "certificate_spiffe_id_invalid");
}

#[test]
fn principal_must_equal_the_certificate_san() {
    let pki = Pki::new();
    let leaf = pki.svid(FRONTEND);
    let err =
        establish(&peer("spiffe://example.org/ns/default/sa/admin", &leaf.cert_pem), SystemTime::now(), &config())
            .unwrap_err();
    assert_eq!(err, IdentityError::PrincipalMismatch);
    let err = establish(&peer("", &leaf.cert_pem), SystemTime::now(), &config()).unwrap_err();
    assert_eq!(err, IdentityError::PrincipalMismatch);
}

#[test]
fn ca_certificate_as_leaf_is_refused() {
    let pki = Pki::new();
    let leaf = pki.leaf(&LeafSpec { is_ca: true, ..LeafSpec::svid(FRONTEND) });
    let err = establish(&peer(FRONTEND, &leaf.cert_pem), SystemTime::now(), &config()).unwrap_err();
    assert_eq!(err, IdentityError::CertificateIsCa);
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused_beyond_clock_skew() {
    let pki = Pki::new();
    let now = OffsetDateTime::now_utc();
    let expired = pki.leaf(&LeafSpec::svid(FRONTEND).valid_for(now - Duration::hours(2), now - Duration::hours(1)));
    let err = establish(&peer(FRONTEND, &expired.cert_pem), SystemTime::now(), &config()).unwrap_err();
    assert_eq!(err, IdentityError::CertificateExpired);
    let future = pki.leaf(&LeafSpec::svid(FRONTEND).valid_for(now + Duration::hours(1), now + Duration::hours(2)));
    let err = establish(&peer(FRONTEND, &future.cert_pem), SystemTime::now(), &config()).unwrap_err();
    assert_eq!(err, IdentityError::CertificateNotYetValid);
    // Within the 30 s skew: still accepted.
    let just_expired =
        pki.leaf(&LeafSpec::svid(FRONTEND).valid_for(now - Duration::hours(1), now - Duration::seconds(10)));
    assert!(establish(&peer(FRONTEND, &just_expired.cert_pem), SystemTime::now(), &config()).is_ok());
}

#[test]
fn other_trust_domain_signed_by_the_same_ca_is_forbidden() {
    let pki = Pki::new();
    let evil = "spiffe://evil.org/ns/default/sa/frontend";
    let leaf = pki.svid(evil);
    let err = establish(&peer(evil, &leaf.cert_pem), SystemTime::now(), &config()).unwrap_err();
    assert_eq!(err, IdentityError::TrustDomainNotAllowed("evil.org".into()));
}

#[test]
fn truncated_and_garbage_certificates_are_malformed() {
    let pki = Pki::new();
    let leaf = pki.svid(FRONTEND);
    let half = &leaf.cert_pem[..leaf.cert_pem.len() / 2];
    let truncated = format!("{half}\n-----END CERTIFICATE-----\n");
    for pem in [truncated.as_str(), "garbage", "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"] {
        let err = establish(&peer(FRONTEND, pem), SystemTime::now(), &config()).unwrap_err();
        assert_eq!(err.code(), "certificate_malformed", "pem {pem:?}");
    }
    // DER followed by junk is refused too.
    let mut der = leaf.der.clone();
    der.extend_from_slice(b"junk");
    assert_eq!(certificate::parse_der(&der), Err(certificate::CertificateError::TrailingData));
}
