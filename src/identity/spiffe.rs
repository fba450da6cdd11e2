//! SPIFFE IDs: parsed once, at the edge, into a strict newtype.
//!
//! The rules are those of the SPIFFE ID specification for an X.509-SVID leaf: scheme
//! `spiffe`, a lowercase trust domain of `[a-z0-9._-]`, a non-root path of segments of
//! `[a-zA-Z0-9._-]` that are neither empty nor `.`/`..`, and at most 2048 bytes. No
//! port, userinfo, query, fragment or percent-encoding. Anything else is rejected, so
//! two spellings of one identity can never reach a policy.

use std::fmt;
use std::str::FromStr;

/// The longest SPIFFE ID the specification allows, in bytes.
pub const MAX_SPIFFE_ID_BYTES: usize = 2048;

const SCHEME: &str = "spiffe://";

/// A valid SPIFFE ID of a workload (the path is never empty).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    /// Shared: an established identity is copied into every decision.
    id: std::sync::Arc<str>,
    /// Byte offset where the path starts (the `/` after the trust domain).
    path_start: usize,
}

/// Why a string is not a workload SPIFFE ID. Messages are lowercase and never echo
/// the (attacker-controlled) input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("spiffe id is empty")]
    Empty,
    #[error("spiffe id is {0} bytes, more than the 2048 allowed")]
    TooLong(usize),
    #[error("spiffe id must start with `spiffe://`")]
    WrongScheme,
    #[error("spiffe id has an empty trust domain")]
    EmptyTrustDomain,
    #[error("trust domain may not contain a port")]
    Port,
    #[error("trust domain may not contain userinfo")]
    Userinfo,
    #[error("trust domain may only contain lowercase letters, digits, `.`, `-` and `_`")]
    TrustDomainChar,
    #[error("spiffe id of a workload must have a path")]
    MissingPath,
    #[error("spiffe id may not contain a query")]
    Query,
    #[error("spiffe id may not contain a fragment")]
    Fragment,
    #[error("spiffe id may not contain percent-encoding")]
    PercentEncoded,
    #[error("spiffe id path has an empty segment")]
    EmptySegment,
    #[error("spiffe id path has a `.` or `..` segment")]
    DotSegment,
    #[error("spiffe id path may only contain letters, digits, `.`, `-` and `_`")]
    PathChar,
}

impl SpiffeId {
    /// The whole ID, `spiffe://example.org/ns/default/sa/frontend`.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The trust domain, `example.org`.
    pub fn trust_domain(&self) -> &str {
        self.id.get(SCHEME.len()..self.path_start).unwrap_or_default()
    }

    /// The path, `/ns/default/sa/frontend`.
    pub fn path(&self) -> &str {
        self.id.get(self.path_start..).unwrap_or_default()
    }

    /// Namespace and service account when the path has Kubernetes' `/ns/N/sa/S` shape
    /// (the form Istio and SPIRE's k8s workload attestor issue).
    pub fn kubernetes(&self) -> Option<(&str, &str)> {
        let mut segments = self.path().strip_prefix('/')?.split('/');
        match (segments.next(), segments.next(), segments.next(), segments.next(), segments.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_BYTES {
            return Err(SpiffeIdError::TooLong(s.len()));
        }
        // The scheme is case-sensitive in the specification: `SPIFFE://` is not valid.
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        if rest.contains('#') {
            return Err(SpiffeIdError::Fragment);
        }
        if rest.contains('?') {
            return Err(SpiffeIdError::Query);
        }
        let (trust_domain, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if trust_domain.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain);
        }
        if trust_domain.contains('@') {
            return Err(SpiffeIdError::Userinfo);
        }
        if trust_domain.contains(':') {
            return Err(SpiffeIdError::Port);
        }
        if trust_domain.contains('%') {
            return Err(SpiffeIdError::PercentEncoded);
        }
        if !trust_domain.bytes().all(is_trust_domain_byte) {
            return Err(SpiffeIdError::TrustDomainChar);
        }
        if path.is_empty() {
            return Err(SpiffeIdError::MissingPath);
        }
        // `path` starts with '/', so the first split item is the empty prefix.
        for segment in path.split('/').skip(1) {
            match segment {
                "" => return Err(SpiffeIdError::EmptySegment),
                "." | ".." => return Err(SpiffeIdError::DotSegment),
                _ if segment.contains('%') => return Err(SpiffeIdError::PercentEncoded),
                _ if !segment.bytes().all(is_path_byte) => return Err(SpiffeIdError::PathChar),
                _ => {}
            }
        }
        Ok(SpiffeId { id: s.into(), path_start: SCHEME.len() + trust_domain.len() })
    }
}

fn is_trust_domain_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}

/// Whether `s` is a valid trust domain name on its own (used to check configuration).
pub fn is_valid_trust_domain(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_trust_domain_byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<SpiffeId, SpiffeIdError> {
        s.parse()
    }

    #[test]
    fn accepts_kubernetes_shaped_id_and_splits_it() {
        let id = parse("spiffe://example.org/ns/default/sa/frontend").unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "/ns/default/sa/frontend");
        assert_eq!(id.kubernetes(), Some(("default", "frontend")));
    }

    #[test]
    fn accepts_non_kubernetes_paths_without_namespace() {
        let id = parse("spiffe://prod.acme-corp_1.io/billing/api.v2").unwrap();
        assert_eq!(id.trust_domain(), "prod.acme-corp_1.io");
        assert_eq!(id.kubernetes(), None);
        assert_eq!(parse("spiffe://example.org/ns/a/sa/b/extra").unwrap().kubernetes(), None);
    }

    #[test]
    fn rejects_every_invalid_form_with_its_own_error() {
        let long = format!("spiffe://example.org/{}", "a".repeat(2048));
        let cases: &[(&str, SpiffeIdError)] = &[
            ("", SpiffeIdError::Empty),
            (&long, SpiffeIdError::TooLong(long.len())),
            ("http://example.org/x", SpiffeIdError::WrongScheme),
            ("SPIFFE://example.org/x", SpiffeIdError::WrongScheme),
            ("spiffe:/example.org/x", SpiffeIdError::WrongScheme),
            ("spiffe:///x", SpiffeIdError::EmptyTrustDomain),
            ("spiffe://example.org:8443/x", SpiffeIdError::Port),
            ("spiffe://user@example.org/x", SpiffeIdError::Userinfo),
            ("spiffe://Example.org/x", SpiffeIdError::TrustDomainChar),
            ("spiffe://exa mple.org/x", SpiffeIdError::TrustDomainChar),
            ("spiffe://ex%41mple.org/x", SpiffeIdError::PercentEncoded),
            ("spiffe://example.org", SpiffeIdError::MissingPath),
            ("spiffe://example.org/", SpiffeIdError::EmptySegment),
            ("spiffe://example.org/x?y=1", SpiffeIdError::Query),
            ("spiffe://example.org/x#frag", SpiffeIdError::Fragment),
            ("spiffe://example.org/a%2Fb", SpiffeIdError::PercentEncoded),
            ("spiffe://example.org/a//b", SpiffeIdError::EmptySegment),
            ("spiffe://example.org/a/", SpiffeIdError::EmptySegment),
            ("spiffe://example.org/a/./b", SpiffeIdError::DotSegment),
            ("spiffe://example.org/a/../b", SpiffeIdError::DotSegment),
            ("spiffe://example.org/a/b c", SpiffeIdError::PathChar),
            ("spiffe://example.org/a/b\u{e9}", SpiffeIdError::PathChar),
        ];
        for (input, expected) in cases {
            assert_eq!(parse(input).as_ref().err(), Some(expected), "input {input:?}");
        }
    }

    #[test]
    fn accepts_the_longest_allowed_id() {
        let prefix = "spiffe://example.org/";
        let id = format!("{prefix}{}", "a".repeat(MAX_SPIFFE_ID_BYTES - prefix.len()));
        assert!(parse(&id).is_ok());
    }
}
