//! Request-path normalization: the one spelling of a path that policies see.
//!
//! A policy written for `/admin` must also catch `//admin`, `/api/../admin`,
//! `/%61dmin` and `/admin/`. So the raw `:path` is percent-decoded once, `.` and `..`
//! segments are resolved (never above the root) and empty segments dropped. Forms an
//! upstream might read differently from us are refused instead of guessed at: an
//! encoded `/` or `\` (`%2F`, `%5C`), a raw `\`, `;` path parameters (which servlet
//! containers strip), control characters, malformed percent-encoding and bytes that
//! are not UTF-8 after decoding.

/// A normalized request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    /// `/` followed by the segments joined with `/`; keeps one trailing `/` if the
    /// request had one. Never contains a query.
    pub path: String,
    /// The decoded segments, in order, without empty, `.` or `..` segments.
    pub segments: Vec<String>,
    /// Decoded query parameters in request order (`+` is a space); a key without
    /// `=` has an empty value.
    pub query: Vec<(String, String)>,
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
    #[error("path has malformed percent-encoding")]
    BadPercentEncoding,
    #[error("path has an encoded `/` or `\\`")]
    EncodedSeparator,
    #[error("path has a `\\`")]
    Backslash,
    #[error("path has a `;` parameter")]
    Semicolon,
    #[error("path has a control character")]
    ControlCharacter,
    #[error("path is not utf-8 after decoding")]
    NotUtf8,
    #[error("query has malformed encoding")]
    BadQuery,
}

/// Normalizes a raw `:path` (path plus query string, as Envoy sends it).
pub fn normalize(raw: &str, max_bytes: usize) -> Result<NormalizedPath, PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if raw.len() > max_bytes {
        return Err(PathError::TooLong(raw.len()));
    }
    // A fragment is never sent by a conforming client; if one arrives it is not part
    // of the resource, so it is dropped before anything else looks at the path.
    let raw = raw.split_once('#').map_or(raw, |(before, _)| before);
    let (raw_path, raw_query) = raw.split_once('?').unwrap_or((raw, ""));
    if !raw_path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode_path(raw_path)?;
    let mut segments: Vec<String> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s.to_owned()),
        }
    }
    let trailing_slash =
        !segments.is_empty() && (decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/.."));
    let mut path = String::with_capacity(decoded.len());
    for segment in &segments {
        path.push('/');
        path.push_str(segment);
    }
    if path.is_empty() || trailing_slash {
        path.push('/');
    }
    Ok(NormalizedPath { path, segments, query: parse_query(raw_query)? })
}

impl NormalizedPath {
    /// Every ancestor path of this one, root first: `/api/orders/1` gives `/`, `/api`,
    /// `/api/orders`, `/api/orders/1`. Policies test `resource in Path::"/api"` with it.
    pub fn prefixes(&self) -> impl Iterator<Item = String> + '_ {
        let mut prefix = String::new();
        std::iter::once("/".to_owned()).chain(self.segments.iter().map(move |segment| {
            prefix.push('/');
            prefix.push_str(segment);
            prefix.clone()
        }))
    }
}

fn decode_path(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let decoded = if b == b'%' {
            let byte = hex_pair(bytes.get(i + 1), bytes.get(i + 2)).ok_or(PathError::BadPercentEncoding)?;
            if byte == b'/' || byte == b'\\' {
                return Err(PathError::EncodedSeparator);
            }
            i += 3;
            byte
        } else {
            if b == b'\\' {
                return Err(PathError::Backslash);
            }
            i += 1;
            b
        };
        if decoded == b';' {
            return Err(PathError::Semicolon);
        }
        if decoded < 0x20 || decoded == 0x7f {
            return Err(PathError::ControlCharacter);
        }
        out.push(decoded);
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

    fn norm(raw: &str) -> Result<NormalizedPath, PathError> {
        normalize(raw, 8192)
    }

    #[test]
    fn tricks_that_target_admin_all_normalize_to_admin() {
        for raw in [
            "/admin",
            "//admin",
            "///admin",
            "/./admin",
            "/api/../admin",
            "/api/./../admin",
            "/../../admin",
            "/%61dmin",
            "/%2e%2e/admin",
            "/api/%2E%2E/admin",
            "/admin?x=/api",
            "/admin#frag",
        ] {
            let n = norm(raw).unwrap();
            assert_eq!(n.path, "/admin", "raw {raw:?}");
            assert_eq!(n.segments, vec!["admin"], "raw {raw:?}");
        }
    }

    #[test]
    fn keeps_one_trailing_slash_but_not_in_segments() {
        let n = norm("/admin/").unwrap();
        assert_eq!(n.path, "/admin/");
        assert_eq!(n.segments, vec!["admin"]);
        assert_eq!(norm("/admin//").unwrap().path, "/admin/");
        assert_eq!(norm("/a/b/..").unwrap().path, "/a/");
        assert_eq!(norm("/").unwrap().path, "/");
        assert_eq!(norm("/..").unwrap().path, "/");
    }

    #[test]
    fn prefixes_are_whole_segments_root_first() {
        let n = norm("/api/orders/42?x=1").unwrap();
        let prefixes: Vec<String> = n.prefixes().collect();
        assert_eq!(prefixes, vec!["/", "/api", "/api/orders", "/api/orders/42"]);
        // `/apix` is not under `/api`.
        assert!(!norm("/apix").unwrap().prefixes().any(|p| p == "/api"));
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
    fn refuses_ambiguous_or_malformed_paths() {
        let cases: &[(&str, PathError)] = &[
            ("", PathError::Empty),
            ("admin", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("http://host/admin", PathError::NotAbsolute),
            ("/api%2F..%2Fadmin", PathError::EncodedSeparator),
            ("/api%2f..%2fadmin", PathError::EncodedSeparator),
            ("/api%5C..%5Cadmin", PathError::EncodedSeparator),
            ("/api\\..\\admin", PathError::Backslash),
            ("/admin;jsessionid=1", PathError::Semicolon),
            ("/admin%3B/", PathError::Semicolon),
            ("/a%00b", PathError::ControlCharacter),
            ("/a%0Ab", PathError::ControlCharacter),
            ("/a%zz", PathError::BadPercentEncoding),
            ("/a%4", PathError::BadPercentEncoding),
            ("/a%", PathError::BadPercentEncoding),
            ("/a%ff", PathError::NotUtf8),
            ("/a?b=%zz", PathError::BadQuery),
            ("/a?b=%ff", PathError::BadQuery),
        ];
        for (raw, expected) in cases {
            assert_eq!(norm(raw).as_ref().err(), Some(expected), "raw {raw:?}");
        }
        assert_eq!(normalize("/abcdef", 4), Err(PathError::TooLong(7)));
    }

    #[test]
    fn keeps_non_ascii_utf8_segments() {
        assert_eq!(norm("/caf%C3%A9").unwrap().segments, vec!["caf\u{e9}"]);
    }
}
