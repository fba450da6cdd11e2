//! Request paths: cedargate judges only a path that every reader agrees on.
//!
//! Envoy normalizes the path before authorization (`normalize_path`, `merge_slashes`,
//! `path_with_escaped_slashes_action`) and forwards that very path upstream. cedargate
//! does not canonicalize a second time: a path that is not already canonical is
//! refused (400 `path_invalid`), so a misconfigured Envoy fails closed, and the path
//! the upstream receives is byte for byte the one the policies were evaluated on.
//!
//! Canonical means: starts with `/`; no empty segment but one trailing `/`; no `.` or
//! `..` segment; no segment ending in `.` or a space (Windows servers strip them); no
//! `;` (servlet path parameters), `\`, fragment or raw byte outside RFC 3986 `pchar`;
//! percent-encoding only of bytes that are not unreserved, never of `/`, `\`, `%` (a
//! second decoding would change the path) or a control character; UTF-8 once decoded.
//! Checking is one pass over the bytes, and the segment count is bounded, so no path
//! costs more than a few microseconds.

/// A canonical request target, as policies see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    /// `/` and the decoded segments joined with `/`, never with a trailing `/` (so
    /// `/internal/` and `/internal` are one path to a policy), ASCII-lowercased when
    /// paths are case-insensitive. Never contains a query.
    pub path: String,
    /// The decoded (and case-folded) segments, in order.
    pub segments: Vec<String>,
    /// Decoded query parameters in request order (`+` is a space); a key without
    /// `=` has an empty value.
    pub query: Vec<(String, String)>,
}

/// How paths are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    /// Longest `:path` (with query), in bytes.
    pub max_bytes: usize,
    /// Most path segments.
    pub max_segments: usize,
    /// Fold ASCII case, so a policy on `/admin` also covers `/ADMIN` (most servers
    /// that route case-insensitively fold ASCII only).
    pub case_insensitive: bool,
}

/// Why a request path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path does not start with `/`")]
    NotAbsolute,
    #[error("path is {0} bytes, over the limit")]
    TooLong(usize),
    #[error("path has more than {0} segments")]
    TooManySegments(usize),
    #[error("path has malformed percent-encoding")]
    BadPercentEncoding,
    #[error("path has an encoded `/` or `\\`")]
    EncodedSeparator,
    #[error("path has an encoded `%` (double encoding)")]
    EncodedPercent,
    #[error("path percent-encodes an unreserved character (not normalized)")]
    EncodedUnreserved,
    #[error("path has a `\\`")]
    Backslash,
    #[error("path has a `;` parameter")]
    Semicolon,
    #[error("path has a control character")]
    ControlCharacter,
    #[error("path has a character that must be percent-encoded")]
    UnencodedCharacter,
    #[error("path has a fragment")]
    Fragment,
    #[error("path has an empty segment (`//`)")]
    EmptySegment,
    #[error("path has a `.` or `..` segment (not normalized)")]
    DotSegment,
    #[error("path has a segment ending in `.` or a space")]
    TrailingDotOrSpace,
    #[error("path is not utf-8 after decoding")]
    NotUtf8,
    #[error("query has malformed encoding")]
    BadQuery,
}

/// Checks that a raw `:path` (path plus query string, as Envoy sends it) is
/// canonical, and returns what policies see of it.
pub fn normalize(raw: &str, rules: &PathRules) -> Result<NormalizedPath, PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if raw.len() > rules.max_bytes {
        return Err(PathError::TooLong(raw.len()));
    }
    // A fragment is never sent by a conforming client; upstreams disagree on what
    // one means in a request target, so it is refused rather than dropped.
    if raw.contains('#') {
        return Err(PathError::Fragment);
    }
    let (raw_path, raw_query) = raw.split_once('?').unwrap_or((raw, ""));
    let rest = raw_path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let mut segments: Vec<String> = Vec::new();
    let mut path = String::with_capacity(raw_path.len());
    if !rest.is_empty() {
        let mut parts = rest.split('/').peekable();
        while let Some(part) = parts.next() {
            if part.is_empty() {
                // Only the very last segment may be empty: one trailing `/`.
                if parts.peek().is_none() {
                    break;
                }
                return Err(PathError::EmptySegment);
            }
            if segments.len() == rules.max_segments {
                return Err(PathError::TooManySegments(rules.max_segments));
            }
            let mut segment = decode_segment(part)?;
            if segment == "." || segment == ".." {
                return Err(PathError::DotSegment);
            }
            if segment.ends_with(['.', ' ']) {
                return Err(PathError::TrailingDotOrSpace);
            }
            if rules.case_insensitive {
                segment.make_ascii_lowercase();
            }
            path.push('/');
            path.push_str(&segment);
            segments.push(segment);
        }
    }
    if path.is_empty() {
        path.push('/');
    }
    Ok(NormalizedPath { path, segments, query: parse_query(raw_query)? })
}

impl NormalizedPath {
    /// Every ancestor path of this one, root first: `/api/orders/1` gives `/`, `/api`,
    /// `/api/orders`, `/api/orders/1`. Policies test `resource in Path::"/api"` with it.
    pub fn prefixes(&self) -> impl Iterator<Item = &str> + '_ {
        let ends = self.segments.iter().scan(0usize, |end, segment| {
            *end += 1 + segment.len();
            Some(*end)
        });
        std::iter::once("/").chain(ends.filter_map(|end| self.path.get(..end)))
    }
}

/// RFC 3986 `pchar` bytes that may appear unencoded: unreserved, sub-delims but `;`,
/// `:` and `@`.
fn is_plain_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@".contains(&b)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// Decodes one segment, refusing every form that is not canonical.
fn decode_segment(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let byte = hex_pair(bytes.get(i + 1), bytes.get(i + 2)).ok_or(PathError::BadPercentEncoding)?;
                match byte {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    b'%' => return Err(PathError::EncodedPercent),
                    b';' => return Err(PathError::Semicolon),
                    _ if byte < 0x20 || byte == 0x7f => return Err(PathError::ControlCharacter),
                    _ if is_unreserved(byte) => return Err(PathError::EncodedUnreserved),
                    _ => out.push(byte),
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Semicolon),
            _ if b < 0x20 || b == 0x7f => return Err(PathError::ControlCharacter),
            _ if is_plain_path_byte(b) => {
                out.push(b);
                i += 1;
            }
            _ => return Err(PathError::UnencodedCharacter),
        }
    }
    String::from_utf8(out).map_err(|_| PathError::NotUtf8)
}

fn parse_query(raw: &str) -> Result<Vec<(String, String)>, PathError> {
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode_form(key)?, decode_form(value)?))
        })
        .collect()
}

fn decode_form(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                out.push(hex_pair(bytes.get(i + 1), bytes.get(i + 2)).ok_or(PathError::BadQuery)?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ if b < 0x20 || b == 0x7f => return Err(PathError::BadQuery),
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| PathError::BadQuery)
}

fn hex_pair(hi: Option<&u8>, lo: Option<&u8>) -> Option<u8> {
    let hi = (*hi? as char).to_digit(16)?;
    let lo = (*lo? as char).to_digit(16)?;
    u8::try_from(hi * 16 + lo).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: PathRules = PathRules { max_bytes: 8192, max_segments: 32, case_insensitive: true };

    fn norm(raw: &str) -> Result<NormalizedPath, PathError> {
        normalize(raw, &RULES)
    }

    #[test]
    fn canonical_paths_are_accepted_as_they_are() {
        let n = norm("/api/orders/42?x=1").unwrap();
        assert_eq!(n.path, "/api/orders/42");
        assert_eq!(n.segments, vec!["api", "orders", "42"]);
        assert_eq!(norm("/").unwrap().path, "/");
        assert_eq!(norm("/caf%C3%A9/a%20b").unwrap().segments, vec!["caf\u{e9}", "a b"]);
        assert_eq!(norm("/a%3Fb").unwrap().segments, vec!["a?b"]);
        assert_eq!(norm("/v1.2/x-y_z~/:@!$&'()*+,=").unwrap().segments.len(), 3);
    }

    #[test]
    fn a_trailing_slash_is_one_path_with_the_bare_one() {
        assert_eq!(norm("/internal/").unwrap().path, "/internal");
        assert_eq!(norm("/internal/").unwrap().segments, vec!["internal"]);
        assert_eq!(norm("/internal/").unwrap(), norm("/internal").unwrap());
    }

    #[test]
    fn case_is_folded_when_paths_are_case_insensitive() {
        assert_eq!(norm("/ADMIN/Users").unwrap().path, "/admin/users");
        let exact = PathRules { case_insensitive: false, ..RULES };
        assert_eq!(normalize("/ADMIN", &exact).unwrap().path, "/ADMIN");
    }

    #[test]
    fn prefixes_are_whole_segments_root_first() {
        let n = norm("/api/orders/42?x=1").unwrap();
        let prefixes: Vec<&str> = n.prefixes().collect();
        assert_eq!(prefixes, vec!["/", "/api", "/api/orders", "/api/orders/42"]);
        assert!(!norm("/apix").unwrap().prefixes().any(|p| p == "/api"));
        assert_eq!(norm("/").unwrap().prefixes().collect::<Vec<_>>(), vec!["/"]);
    }

    #[test]
    fn decodes_query_parameters_in_order() {
        let n = norm("/s?q=a+b%21&flag&empty=&q=2").unwrap();
        assert_eq!(
            n.query,
            vec![
                ("q".to_owned(), "a b!".to_owned()),
                ("flag".to_owned(), String::new()),
                ("empty".to_owned(), String::new()),
                ("q".to_owned(), "2".to_owned()),
            ]
        );
    }

    #[test]
    fn every_non_canonical_form_is_refused_with_its_own_error() {
        let cases: &[(&str, PathError)] = &[
            ("", PathError::Empty),
            ("admin", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("http://host/admin", PathError::NotAbsolute),
            ("//admin", PathError::EmptySegment),
            ("/api//admin", PathError::EmptySegment),
            ("/admin//", PathError::EmptySegment),
            ("/./admin", PathError::DotSegment),
            ("/api/../admin", PathError::DotSegment),
            ("/admin/..", PathError::DotSegment),
            ("/%2e%2e/admin", PathError::EncodedUnreserved),
            ("/.%2e/admin", PathError::EncodedUnreserved),
            ("/%61dmin", PathError::EncodedUnreserved),
            ("/admin.", PathError::TrailingDotOrSpace),
            ("/admin.../x", PathError::TrailingDotOrSpace),
            ("/admin%20", PathError::TrailingDotOrSpace),
            ("/api%2F..%2Fadmin", PathError::EncodedSeparator),
            ("/api%2f..%2fadmin", PathError::EncodedSeparator),
            ("/api%5C..%5Cadmin", PathError::EncodedSeparator),
            ("/%252e%252e/admin", PathError::EncodedPercent),
            ("/api\\..\\admin", PathError::Backslash),
            ("/admin;jsessionid=1", PathError::Semicolon),
            ("/admin%3B/", PathError::Semicolon),
            ("/a%00b", PathError::ControlCharacter),
            ("/a%0Ab", PathError::ControlCharacter),
            ("/a\tb", PathError::ControlCharacter),
            ("/a b", PathError::UnencodedCharacter),
            ("/a\"b", PathError::UnencodedCharacter),
            ("/caf\u{e9}", PathError::UnencodedCharacter),
            ("/admin#frag", PathError::Fragment),
            ("/a%zz", PathError::BadPercentEncoding),
            ("/a%4", PathError::BadPercentEncoding),
            ("/a%", PathError::BadPercentEncoding),
            ("/a%ff", PathError::NotUtf8),
            ("/%C0%AE%C0%AE/admin", PathError::NotUtf8),
            ("/a?b=%zz", PathError::BadQuery),
            ("/a?b=%ff", PathError::BadQuery),
        ];
        for (raw, expected) in cases {
            assert_eq!(norm(raw).as_ref().err(), Some(expected), "raw {raw:?}");
        }
        assert_eq!(normalize("/abcdef", &PathRules { max_bytes: 4, ..RULES }), Err(PathError::TooLong(7)));
    }

    #[test]
    fn the_segment_count_is_bounded() {
        let at_limit = "/a".repeat(32);
        assert_eq!(norm(&at_limit).unwrap().segments.len(), 32);
        assert_eq!(norm(&format!("{at_limit}/b")), Err(PathError::TooManySegments(32)));
    }
}
