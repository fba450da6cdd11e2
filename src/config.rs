//! cedargate's configuration: one TOML file, every key optional with a default.
//!
//! Unknown keys are errors (a typo must not silently fall back to a default), and
//! every error names the file, the key and what was expected.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::identity::spiffe;

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub policies: PoliciesConfig,
    pub identity: IdentityConfig,
    pub limits: LimitsConfig,
    pub tokens: TokensConfig,
    pub response: ResponseConfig,
    pub cache: CacheConfig,
    pub admin: AdminConfig,
    pub audit: AuditConfig,
    pub log: LogConfig,
    pub tracing: TracingConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// `host:port`, or `unix:/path/to.sock` for a sidecar on the same host.
    pub listen: ListenAddr,
    /// How long a shutdown waits for in-flight Checks before giving up.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// On SIGTERM, how long to keep answering Checks after the health service turned
    /// NOT_SERVING, so Envoy's health checks (and Kubernetes' readiness probe) move
    /// traffic to other replicas before the listener closes.
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
    /// TLS (and, with a client CA, mTLS) on a TCP listener; unset: plaintext.
    pub tls: Option<TlsFiles>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 9191))),
            shutdown_timeout: Duration::from_secs(15),
            drain: Duration::from_secs(0),
            tls: None,
        }
    }
}

/// A listener's certificate, key and optional client CA, as PEM files. They are
/// re-read when they change (certificate rotation needs no restart).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The server certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates that sign the clients' certificates: set, every client must
    /// present one (mTLS); unset, any client may connect.
    pub client_ca_file: Option<PathBuf>,
}

impl TlsFiles {
    /// The certificate, key and (when set) client CA files.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert_file), Some(&self.key_file), self.client_ca_file.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PoliciesConfig {
    /// Directory with `schema.cedarschema`, `*.cedar` and optionally `entities.json`.
    pub dir: PathBuf,
    /// Reload the directory when its files change (SIGHUP always reloads).
    pub watch: bool,
    /// Quiet time after the last change before reloading, so a burst of saves
    /// becomes one reload. The one file watcher uses it for every file it watches.
    #[serde(with = "humantime_serde")]
    pub debounce: Duration,
    /// A second policy directory evaluated beside `dir` on live traffic. Its
    /// decision never changes the answer; disagreements are counted, logged and
    /// audited. Reloaded like `dir`.
    pub shadow_dir: Option<PathBuf>,
    /// Further policy sets by name, each a directory like `dir`. A route selects one
    /// with the context extension `cedargate.policy_set = "<name>"`, so several
    /// teams' services behind one Envoy keep separate policies; routes that select
    /// none use `dir`, and naming a set that does not exist denies.
    pub sets: BTreeMap<String, PathBuf>,
    /// Whether request paths are compared case-insensitively (ASCII): then a policy
    /// on `/admin` also covers `/ADMIN`, as it must in front of an upstream that
    /// routes without regard to case. `sensitive` keeps the case as sent.
    pub path_case: PathCase,
    /// Decide policies directly on a Check's facts (`policy::direct`), with Cedar's
    /// evaluator only where a policy could raise an error. `false` puts every
    /// evaluation to Cedar's evaluator on the fully built request: the same
    /// decisions, at about 2.5 times the server CPU of an evaluated Check.
    pub direct_evaluation: bool,
}

/// How policies compare request paths.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PathCase {
    Insensitive,
    Sensitive,
}

impl Default for PoliciesConfig {
    fn default() -> Self {
        PoliciesConfig {
            dir: PathBuf::from("policies"),
            watch: true,
            debounce: Duration::from_millis(200),
            shadow_dir: None,
            sets: BTreeMap::new(),
            path_case: PathCase::Insensitive,
            direct_evaluation: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Trust domains whose workloads may call at all; empty allows every trust domain
    /// Envoy's CA accepted (policies then decide).
    pub trust_domains: Vec<String>,
    /// Deny when Envoy did not forward the peer certificate
    /// (`include_peer_certificate: true`). Without it the X.509-SVID rules cannot be
    /// checked and only `source.principal` is known.
    pub require_certificate: bool,
    /// Tolerated clock difference when checking certificate validity windows.
    #[serde(with = "humantime_serde")]
    pub clock_skew: Duration,
    /// Largest accepted `source.certificate` (URL-encoded PEM), in bytes.
    pub max_certificate_bytes: usize,
    /// Longest accepted certificate validity (`not_after - not_before`); a longer-lived
    /// certificate is refused with `certificate_long_lived`. Unset: no limit.
    #[serde(with = "humantime_serde")]
    pub max_certificate_lifetime: Option<Duration>,
    /// File of revoked credentials (token `jti` or subject, certificate serial or
    /// fingerprint), re-read within a second of a change. Unset: nothing is revoked.
    pub revocation_file: Option<PathBuf>,
    /// PEM files of CA certificates by trust domain, for where cedargate verifies
    /// the certificate chain itself (the in-process mode's handshake validator): a
    /// peer's chain must verify to the bundle of its own trust domain. The
    /// ext_authz server leaves the chain to Envoy and does not read these.
    pub trust_bundles: BTreeMap<String, PathBuf>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            trust_domains: Vec::new(),
            require_certificate: true,
            clock_skew: Duration::from_secs(30),
            max_certificate_bytes: 16 * 1024,
            max_certificate_lifetime: None,
            revocation_file: None,
            trust_bundles: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most request headers a Check may carry (Envoy's own default limit is 100).
    pub max_headers: usize,
    /// Largest single header, name and value, in bytes.
    pub max_header_bytes: usize,
    /// Largest `:path` (with query), in bytes.
    pub max_path_bytes: usize,
    /// Most path segments: bounds the work a path costs (each prefix is a `Path`
    /// parent of the request).
    pub max_path_segments: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { max_headers: 200, max_header_bytes: 16 * 1024, max_path_bytes: 8 * 1024, max_path_segments: 32 }
    }
}

/// Bearer tokens (JWTs): where they come from and which issuers are trusted.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TokensConfig {
    /// Refuse a request without a token (401 with a `Bearer` challenge). A route can
    /// override this with the context extension `cedargate.token = "required"` or
    /// `"optional"`.
    pub required: bool,
    /// Largest accepted token, in bytes; larger ones are refused before parsing.
    pub max_token_bytes: usize,
    /// Remove the `authorization` header from allowed requests, so the upstream
    /// never sees the caller's token.
    pub strip_authorization: bool,
    pub issuers: Vec<IssuerConfig>,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig { required: false, max_token_bytes: 8 * 1024, strip_authorization: false, issuers: Vec::new() }
    }
}

/// One trusted token issuer.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` value.
    pub issuer: String,
    /// A token's `aud` must contain at least one of these.
    pub audiences: Vec<String>,
    /// JWKS from a local file, re-read when it changes. Exactly one of `jwks_file`
    /// and `jwks_url`.
    pub jwks_file: Option<PathBuf>,
    /// JWKS from an `https://` URL, refreshed every `jwks_refresh` and (at most once
    /// per `jwks_min_refresh`) when a token names an unknown `kid`.
    pub jwks_url: Option<String>,
    /// PEM CA bundle to verify the JWKS server with; default: the system's roots.
    pub jwks_ca_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    #[serde(with = "humantime_serde")]
    pub jwks_min_refresh: Duration,
    /// Accepted `alg` values: RS256/384/512, PS256/384/512, ES256/384, EdDSA.
    /// Symmetric (HS*) and `none` are never accepted.
    pub algorithms: Vec<String>,
    /// Clock difference tolerated for `exp`, `nbf` and `iat`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Longest accepted `exp - iat`; longer-lived tokens are refused (`token_long_lived`).
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Option<Duration>,
    /// Claims that must be present (besides `iss`, `aud`, `exp`, which always must).
    pub required_claims: Vec<String>,
    /// Required JOSE `typ` header, such as `at+jwt` (RFC 9068); unset: any.
    pub typ: Option<String>,
    /// Request header carrying the token. For `authorization` the `Bearer` scheme
    /// is required; any other header carries the bare token.
    pub header: String,
    /// Require `cnf["x5t#S256"]` binding the token to the peer's certificate
    /// (RFC 8705). A token that carries the binding is always checked.
    pub require_binding: bool,
    /// JWT-SVID profile: `sub` must be a SPIFFE ID and only RS/PS/ES algorithms apply.
    pub spiffe: bool,
    /// Who the Cedar principal is: the mTLS `peer` (the token goes in
    /// `context.token`), or the token's `subject` as a `User` entity (the peer is
    /// still `context.peer`).
    pub principal: PrincipalFrom,
    /// Further claims handed to policies as `context.token.claims.<name>`, with their
    /// type: `String`, `Long`, `Bool` or `Set<String>`.
    pub claims: BTreeMap<String, ClaimType>,
    /// Headers added to allowed requests from claims: `{ "x-user" = "sub" }`.
    pub forward: BTreeMap<String, String>,
}

impl Default for IssuerConfig {
    fn default() -> Self {
        IssuerConfig {
            issuer: String::new(),
            audiences: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            jwks_ca_file: None,
            jwks_refresh: Duration::from_secs(300),
            jwks_min_refresh: Duration::from_secs(10),
            algorithms: vec!["RS256".to_owned(), "ES256".to_owned(), "EdDSA".to_owned()],
            leeway: Duration::from_secs(30),
            max_lifetime: Some(Duration::from_secs(3600)),
            required_claims: Vec::new(),
            typ: None,
            header: "authorization".to_owned(),
            require_binding: false,
            spiffe: false,
            principal: PrincipalFrom::Peer,
            claims: BTreeMap::new(),
            forward: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalFrom {
    Peer,
    Subject,
}

/// The Cedar type a custom claim is handed to policies as.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum ClaimType {
    String,
    Long,
    Bool,
    #[serde(rename = "Set<String>")]
    StringSet,
}

/// What the configured issuers put into requests, for the schema contract check.
#[derive(Debug, Clone, Default)]
pub struct TokenModel {
    /// Some issuer is configured: requests may carry `context.token`.
    pub enabled: bool,
    /// Some issuer makes the token subject the principal (`User`).
    pub subject_principal: bool,
    /// Custom claims of all issuers, with their declared types.
    pub claims: BTreeMap<String, ClaimType>,
}

impl TokenModel {
    pub fn from_config(tokens: &TokensConfig) -> TokenModel {
        TokenModel {
            enabled: !tokens.issuers.is_empty(),
            subject_principal: tokens.issuers.iter().any(|i| i.principal == PrincipalFrom::Subject),
            claims: tokens.issuers.iter().flat_map(|i| i.claims.iter().map(|(k, v)| (k.clone(), *v))).collect(),
        }
    }
}

/// Claims cedargate hands to policies itself; a custom claim may not shadow them.
pub const STANDARD_CLAIMS: &[&str] = &["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "scope", "client_id", "cnf"];

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ResponseConfig {
    /// Header set on allowed requests to the caller's SPIFFE ID; empty to not set it.
    /// A client-sent copy is always removed.
    pub principal_header: String,
    /// Header carrying the decision id, to the upstream on allow and to the client on
    /// deny; empty to not set it.
    pub decision_id_header: String,
}

impl Default for ResponseConfig {
    fn default() -> Self {
        ResponseConfig {
            principal_header: "x-cedargate-principal".to_owned(),
            decision_id_header: "x-cedargate-decision-id".to_owned(),
        }
    }
}

/// The decision cache and the verified-token cache.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Cache Cedar decisions. The key is a digest of the whole Cedar request and the
    /// policy set version; credentials are still verified on every Check.
    pub decisions: bool,
    /// Most cached decisions.
    pub max_entries: u64,
    /// Most memory the cached decisions may take (estimated), in bytes.
    pub max_bytes: u64,
    /// Longest an entry lives; it never outlives the token or certificate it was
    /// computed for.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Most remembered verified tokens, a token larger than 1 KiB counting once per
    /// KiB begun (0 turns that cache off).
    pub token_entries: u64,
    /// Most remembered parsed peer certificates (0 turns that cache off).
    pub certificate_entries: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            decisions: true,
            max_entries: 100_000,
            max_bytes: 64 * 1024 * 1024,
            ttl: Duration::from_secs(60),
            token_entries: 10_000,
            certificate_entries: 10_000,
        }
    }
}

/// The admin listener: metrics, health, status and the runtime log level.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// `ip:port`; `""` in the file turns the admin listener off (`None`).
    #[serde(deserialize_with = "admin_listen")]
    pub listen: Option<SocketAddr>,
    /// Allow `PUT /loglevel`. The admin listener has no authentication, so its one
    /// mutating endpoint is off unless asked for.
    pub allow_log_level_changes: bool,
    /// TLS (mTLS with a client CA) for an admin listener that leaves loopback.
    pub tls: Option<TlsFiles>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            allow_log_level_changes: false,
            tls: None,
        }
    }
}

/// One JSON record per decision.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    pub enabled: bool,
    /// `stdout`, or a file path (appended to, reopened on SIGHUP for log rotation).
    pub sink: String,
    /// Records waiting to be written; when full, `block` makes Checks wait for room
    /// (no record is lost) and `drop` discards the record and counts it.
    pub queue: usize,
    pub when_full: WhenFull,
    /// Write the query string of the path (`false`: only the path before `?`).
    pub include_query: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            sink: "stdout".to_owned(),
            queue: 8192,
            when_full: WhenFull::Block,
            include_query: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WhenFull {
    Block,
    Drop,
}

/// Traces: a span per Check joined to the request's W3C trace context.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP/gRPC collector, such as `http://127.0.0.1:4317`; empty: no export.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Fraction of traces started here that are sampled (a `traceparent`'s
    /// sampled flag is followed).
    pub sample_ratio: f64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig { otlp_endpoint: String::new(), service_name: "cedargate".to_owned(), sample_ratio: 1.0 }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `cedargate=debug,info`, ... (`RUST_LOG` overrides).
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".to_owned(), format: LogFormat::Text }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the gRPC server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A listen address that is neither `ip:port` nor `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("`unix:` needs a socket path, as in `unix:/run/cedargate.sock`")]
    EmptySocketPath,
    #[error("`{0}` is not `ip:port` or `unix:/path`")]
    Invalid(String),
    #[error("`{0}` is not `ip:port` (or \"\" for off)")]
    NotIpPort(String),
}

impl ListenAddr {
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(AddressError::EmptySocketPath);
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| AddressError::Invalid(s.to_owned()))
    }
}

/// The admin listener's address: `ip:port`, or `""` for no admin listener.
pub fn parse_admin_listen(s: &str) -> Result<Option<SocketAddr>, AddressError> {
    match s {
        "" => Ok(None),
        s => s.parse().map(Some).map_err(|_| AddressError::NotIpPort(s.to_owned())),
    }
}

fn admin_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    parse_admin_listen(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ListenAddr::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A configuration that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file `{path}`: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file `{path}`: {message}")]
    Parse { path: PathBuf, message: String },
    /// TOML that does not parse or does not fit the configuration's types; the
    /// message names the key, the line and the column.
    #[error("{0}")]
    Toml(String),
    #[error("config `{origin}`: key `{key}`: {message}")]
    Invalid { origin: String, key: &'static str, message: String },
}

impl Config {
    /// Reads and validates a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let config = Config::from_toml(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        config.validate(&path.display().to_string())?;
        Ok(config)
    }

    /// Parses TOML text (without validating values across keys).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        // toml's message names the key and shows the line and column.
        toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string().trim_end().to_owned()))
    }

    /// Checks values that types alone cannot; `origin` names where they came from.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid =
            |key: &'static str, message: String| ConfigError::Invalid { origin: origin.to_owned(), key, message };
        for td in &self.identity.trust_domains {
            if !spiffe::is_valid_trust_domain(td) {
                return Err(invalid(
                    "identity.trust_domains",
                    format!("`{td}` is not a trust domain (lowercase letters, digits, `.`, `-`, `_`)"),
                ));
            }
        }
        for td in self.identity.trust_bundles.keys() {
            if !spiffe::is_valid_trust_domain(td) {
                return Err(invalid(
                    "identity.trust_bundles",
                    format!("`{td}` is not a trust domain (lowercase letters, digits, `.`, `-`, `_`)"),
                ));
            }
        }
        for (key, value) in [
            ("limits.max_headers", self.limits.max_headers),
            ("limits.max_header_bytes", self.limits.max_header_bytes),
            ("limits.max_path_bytes", self.limits.max_path_bytes),
            ("limits.max_path_segments", self.limits.max_path_segments),
            ("identity.max_certificate_bytes", self.identity.max_certificate_bytes),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0".to_owned()));
            }
        }
        for (key, value) in [
            ("response.principal_header", &self.response.principal_header),
            ("response.decision_id_header", &self.response.decision_id_header),
        ] {
            if !value.is_empty() && !is_header_name(value) {
                return Err(invalid(key, format!("`{value}` is not a lowercase HTTP header name")));
            }
        }
        if self.tokens.max_token_bytes == 0 {
            return Err(invalid("tokens.max_token_bytes", "must be greater than 0".to_owned()));
        }
        let mut seen = std::collections::HashSet::new();
        for issuer in &self.tokens.issuers {
            issuer
                .validate()
                .map_err(|(key, message)| invalid(key, format!("issuer `{}`: {message}", issuer.issuer)))?;
            if !seen.insert(issuer.issuer.as_str()) {
                return Err(invalid("tokens.issuers.issuer", format!("`{}` is configured twice", issuer.issuer)));
            }
        }
        // All issuers share `context.token.claims`: one name, one type.
        let mut claim_types: BTreeMap<&str, ClaimType> = BTreeMap::new();
        for (name, kind) in self.tokens.issuers.iter().flat_map(|i| i.claims.iter()) {
            if *claim_types.entry(name).or_insert(*kind) != *kind {
                return Err(invalid(
                    "tokens.issuers.claims",
                    format!("claim `{name}` is mapped with two different types"),
                ));
            }
        }
        for name in self.policies.sets.keys() {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
                return Err(invalid(
                    "policies.sets",
                    format!("`{name}` is not a set name (letters, digits, `-`, `_`, `.`)"),
                ));
            }
        }
        if self.cache.decisions && (self.cache.max_entries == 0 || self.cache.max_bytes == 0) {
            return Err(invalid("cache.max_entries", "max_entries and max_bytes must be greater than 0".to_owned()));
        }
        if self.server.tls.is_some() && matches!(self.server.listen, ListenAddr::Unix(_)) {
            return Err(invalid(
                "server.tls",
                "TLS is for TCP listeners; a Unix socket is guarded by its file mode".into(),
            ));
        }
        if self.audit.enabled && (self.audit.sink.is_empty() || self.audit.queue == 0) {
            return Err(invalid("audit.sink", "set a sink (`stdout` or a path) and a queue above 0".to_owned()));
        }
        let endpoint = &self.tracing.otlp_endpoint;
        if !endpoint.is_empty() && !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
            return Err(invalid("tracing.otlp_endpoint", format!("`{endpoint}` is not an http(s) URL")));
        }
        if !(0.0..=1.0).contains(&self.tracing.sample_ratio) {
            return Err(invalid("tracing.sample_ratio", "must be between 0 and 1".to_owned()));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", format!("`{}` is not a log filter: {e}", self.log.level)));
        }
        Ok(())
    }
}

impl IssuerConfig {
    /// The accepted algorithms, parsed. Only asymmetric algorithms exist here: a
    /// symmetric one would make every JWKS public key a shared secret.
    pub fn parsed_algorithms(&self) -> Result<Vec<jsonwebtoken::Algorithm>, String> {
        use jsonwebtoken::{Algorithm, AlgorithmFamily};
        self.algorithms
            .iter()
            .map(|name| {
                let alg: Algorithm = name.parse().map_err(|_| format!("`{name}` is not a JWS algorithm"))?;
                match alg.family() {
                    AlgorithmFamily::Hmac => {
                        Err(format!("`{name}` is symmetric; only public-key algorithms are accepted"))
                    }
                    AlgorithmFamily::Ed if self.spiffe => {
                        Err(format!("`{name}` is not allowed for JWT-SVIDs (RS, PS, ES only)"))
                    }
                    _ => Ok(alg),
                }
            })
            .collect()
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.issuer.is_empty() {
            return Err(("tokens.issuers.issuer", "must be set".to_owned()));
        }
        // A `User` is named `<iss>#<sub>`: without `#` in issuers that name splits
        // one way only, so subjects of two issuers never meet (an OpenID issuer has
        // no fragment anyway).
        if self.issuer.contains('#') {
            return Err(("tokens.issuers.issuer", "may not contain `#`".to_owned()));
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return Err(("tokens.issuers.audiences", "list at least one non-empty audience".to_owned()));
        }
        match (&self.jwks_file, &self.jwks_url) {
            (Some(_), None) => {}
            (None, Some(url)) if url.starts_with("https://") => {}
            (None, Some(url)) => return Err(("tokens.issuers.jwks_url", format!("`{url}` is not an https:// URL"))),
            _ => return Err(("tokens.issuers.jwks_file", "set exactly one of jwks_file and jwks_url".to_owned())),
        }
        if self.algorithms.is_empty() {
            return Err(("tokens.issuers.algorithms", "list at least one algorithm".to_owned()));
        }
        self.parsed_algorithms().map_err(|m| ("tokens.issuers.algorithms", m))?;
        if !is_header_name(&self.header) {
            return Err(("tokens.issuers.header", format!("`{}` is not a lowercase header name", self.header)));
        }
        if self.jwks_refresh.is_zero() || self.jwks_min_refresh.is_zero() {
            return Err(("tokens.issuers.jwks_refresh", "refresh intervals must be greater than 0".to_owned()));
        }
        for name in self.claims.keys() {
            let identifier = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !identifier || STANDARD_CLAIMS.contains(&name.as_str()) {
                return Err((
                    "tokens.issuers.claims",
                    format!("`{name}` must be a Cedar identifier and not one of {STANDARD_CLAIMS:?}"),
                ));
            }
        }
        for header in self.forward.keys() {
            if !is_header_name(header) || header == "authorization" {
                return Err(("tokens.issuers.forward", format!("`{header}` is not a lowercase header name to set")));
            }
        }
        Ok(())
    }
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.server.listen, ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 9191))));
        assert_eq!(config.policies.dir, PathBuf::from("policies"));
        assert!(config.identity.require_certificate);
    }

    #[test]
    fn shipped_example_config_parses_and_validates() {
        let text = include_str!("../cedargate.toml");
        let config = Config::from_toml(text).unwrap();
        config.validate("cedargate.toml").unwrap();
    }

    #[test]
    fn the_kubernetes_config_parses_and_validates() {
        let text = include_str!("../deploy/kubernetes/cedargate.toml");
        Config::from_toml(text).unwrap().validate("deploy/kubernetes/cedargate.toml").unwrap();
    }

    #[test]
    fn unknown_key_is_named_in_the_error() {
        let err = Config::from_toml("[server]\nlisen = \"127.0.0.1:1\"\n").unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn wrong_value_says_what_was_expected() {
        let err = Config::from_toml("[server]\nlisten = \"nowhere\"\n").unwrap_err().to_string();
        assert!(err.contains("ip:port"), "{err}");
        let err = Config::from_toml("[identity]\nclock_skew = \"30\"\n").unwrap_err().to_string();
        assert!(err.contains("clock_skew") && err.contains("expected a duration"), "{err}");
        let err = Config::from_toml("[limits]\nmax_headers = \"many\"\n").unwrap_err().to_string();
        assert!(err.contains("max_headers"), "{err}");
    }

    #[test]
    fn validation_names_file_and_key() {
        let mut config = Config::default();
        config.identity.trust_domains = vec!["Example.ORG".into()];
        let err = config.validate("x.toml").unwrap_err().to_string();
        assert!(err.contains("x.toml") && err.contains("identity.trust_domains"), "{err}");
        let mut config = Config::default();
        config.response.principal_header = "X Bad".into();
        assert!(config.validate("x.toml").unwrap_err().to_string().contains("response.principal_header"));
    }

    #[test]
    fn issuers_are_validated() {
        let text = r#"
            [[tokens.issuers]]
            issuer = "https://idp.example.org"
            audiences = ["orders"]
            jwks_file = "jwks.json"
            algorithms = ["RS256", "HS256"]
        "#;
        let err = Config::from_toml(text).unwrap().validate("x.toml").unwrap_err().to_string();
        assert!(err.contains("tokens.issuers.algorithms") && err.contains("symmetric"), "{err}");
        let err = Config::from_toml(&text.replace(", \"HS256\"", ", \"none\""))
            .unwrap()
            .validate("x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a JWS algorithm"), "{err}");
        let ok = Config::from_toml(&text.replace(", \"HS256\"", "")).unwrap();
        ok.validate("x.toml").unwrap();
        assert_eq!(ok.tokens.issuers[0].max_lifetime, Some(Duration::from_secs(3600)));
        let both = text.replace(", \"HS256\"", "").replace("jwks_file", "jwks_url = \"https://x\"\njwks_file");
        let err = Config::from_toml(&both).unwrap().validate("x.toml").unwrap_err().to_string();
        assert!(err.contains("exactly one"), "{err}");
        let plain =
            text.replace(", \"HS256\"", "").replace("jwks_file = \"jwks.json\"", "jwks_url = \"http://idp/jwks\"");
        let err = Config::from_toml(&plain).unwrap().validate("x.toml").unwrap_err().to_string();
        assert!(err.contains("https://"), "{err}");
        // `User::"<iss>#<sub>"` must split one way only.
        let hashed = text.replace(", \"HS256\"", "").replace("idp.example.org\"", "idp.example.org#x\"");
        let err = Config::from_toml(&hashed).unwrap().validate("x.toml").unwrap_err().to_string();
        assert!(err.contains("tokens.issuers.issuer") && err.contains('#'), "{err}");
    }

    #[test]
    fn unix_socket_listen_address() {
        assert_eq!(ListenAddr::parse("unix:/run/c.sock"), Ok(ListenAddr::Unix("/run/c.sock".into())));
        assert!(ListenAddr::parse("unix:").is_err());
        assert_eq!(parse_admin_listen(""), Ok(None));
        assert!(parse_admin_listen("localhost:9090").is_err(), "an address is typed at parse time");
        let err = Config::from_toml("[admin]\nlisten = \"9090\"\n").unwrap_err().to_string();
        assert!(err.contains("ip:port"), "{err}");
    }

    #[test]
    fn durations_parse_with_units() {
        let config = Config::from_toml(
            "[server]\nshutdown_timeout = \"250ms\"\ndrain = \"1m 30s\"\n[cache]\nttl = \"1d\"\n[identity]\nmax_certificate_lifetime = \"24h\"\n",
        )
        .unwrap();
        assert_eq!(config.server.shutdown_timeout, Duration::from_millis(250));
        assert_eq!(config.server.drain, Duration::from_secs(90));
        assert_eq!(config.cache.ttl, Duration::from_secs(86_400));
        assert_eq!(config.identity.max_certificate_lifetime, Some(Duration::from_secs(86_400)));
        for bad in ["s", "5x", "-1s", "", "30"] {
            assert!(Config::from_toml(&format!("[cache]\nttl = \"{bad}\"\n")).is_err(), "{bad:?}");
        }
    }
}
