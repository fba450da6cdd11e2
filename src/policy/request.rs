//! From an established caller and an HTTP request to a Cedar request and its entities.
//!
//! This module *is* the policy model: what a policy author can read about a request
//! is exactly what is built here (documented in the README and declared in
//! `policies/schema.cedarschema`). Per request only typed values are built from
//! pre-parsed type names; no policy or schema text is parsed.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::SystemTime;

use cedar_policy::{Context, Entities, Entity, EntityId, EntityUid, Request, RestrictedExpression};
use cedar_policy_core::ast;

use crate::config::{ClaimType, LimitsConfig, PrincipalFrom, TokenModel};
use crate::credentials::token::{ClaimValue, VerifiedToken};
use crate::identity::certificate::PeerCertificate;
use crate::identity::spiffe::SpiffeId;
use crate::identity::svid::{unix_seconds, PeerIdentity};
use crate::pipeline::input::{CheckInput, HttpInput};
use crate::policy::http_path::{self, NormalizedPath, PathError, PathRules};
use crate::policy::reads::{Relevance, TagKeys};
use crate::policy::set::{identity_parents, CedarTypes, PolicySnapshot};

/// A request ready for the authorizer.
#[derive(Debug)]
pub struct CedarInput {
    pub request: Request,
    pub entities: Entities,
}

/// Why an HTTP request cannot be put to the policies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("check has no http request attributes")]
    MissingHttp,
    #[error("request has {0} headers, over the limit")]
    TooManyHeaders(usize),
    #[error("header `{0}` is over the size limit")]
    HeaderTooLarge(String),
    #[error("request path refused: {0}")]
    Path(#[from] PathError),
    #[error("request host is not a canonical host name or address")]
    HostInvalid,
    #[error("method override `{0}` refused: the upstream could act on another method than the one authorized")]
    MethodOverride(&'static str),
    #[error("header `{0}`, which a policy reads, is repeated with different values")]
    HeaderAmbiguous(String),
    #[error("query parameter `{0}`, which a policy reads, is repeated with different values")]
    QueryAmbiguous(String),
    #[error("method is not an action in the schema")]
    MethodUnknown,
    #[error("cannot build the cedar request: {0}")]
    Build(String),
}

impl RequestError {
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::MissingHttp => "http_attributes_missing",
            RequestError::TooManyHeaders(_) => "too_many_headers",
            RequestError::HeaderTooLarge(_) => "header_too_large",
            RequestError::Path(_) => "path_invalid",
            RequestError::HostInvalid => "host_invalid",
            RequestError::MethodOverride(_) => "method_override",
            RequestError::HeaderAmbiguous(_) => "header_ambiguous",
            RequestError::QueryAmbiguous(_) => "query_ambiguous",
            RequestError::MethodUnknown => "method_unknown",
            RequestError::Build(_) => "internal_error",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            RequestError::TooManyHeaders(_) | RequestError::HeaderTooLarge(_) => 431,
            RequestError::Path(_)
            | RequestError::HostInvalid
            | RequestError::MethodOverride(_)
            | RequestError::HeaderAmbiguous(_)
            | RequestError::QueryAmbiguous(_) => 400,
            RequestError::MissingHttp | RequestError::MethodUnknown | RequestError::Build(_) => 403,
        }
    }
}

/// Headers and query keys with which clients ask a server to act as if the request
/// had another method (Express' method-override, Rails and Laravel `_method`, ...).
/// cedargate authorizes the method Envoy reports, so these are refused.
const METHOD_OVERRIDE_HEADERS: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];
const METHOD_OVERRIDE_QUERY: &str = "_method";

/// Applies the size limits before any other work is done on the request.
pub fn check_limits<'a>(input: &'a CheckInput, limits: &LimitsConfig) -> Result<&'a HttpInput, RequestError> {
    let http = input.http.as_ref().ok_or(RequestError::MissingHttp)?;
    if http.headers.len() > limits.max_headers {
        return Err(RequestError::TooManyHeaders(http.headers.len()));
    }
    if let Some((name, _)) = http.headers.iter().find(|(n, v)| n.len() + v.len() > limits.max_header_bytes) {
        let name: String = name.chars().take(64).collect();
        return Err(RequestError::HeaderTooLarge(name));
    }
    if let Some(name) = METHOD_OVERRIDE_HEADERS.iter().find(|name| http.header(name).is_some()) {
        return Err(RequestError::MethodOverride(name));
    }
    Ok(http)
}

/// The per-request entity ids. They only need to be unique within one request's
/// entity store, which holds nothing else of these types.
const REQUEST_ID: &str = "request";

/// Everything the Cedar request for one Check is built from, and nothing else,
/// worked out once: the canonical path and host, the action, the principal, the
/// caller's credentials, and what the policies that can apply read.
///
/// The Cedar request (`RequestFacts::build`) and its decision-cache key
/// (`decision_cache::key`) are both derived from this one value, and each takes it
/// apart whole (no `..`): a fact added here does not compile until both use it, so
/// the cache can never answer for a request it did not hash.
#[derive(Debug)]
pub struct RequestFacts<'a> {
    /// The policy set the request is put to (its version is part of the key).
    pub snapshot: &'a PolicySnapshot,
    pub principal: EntityUid,
    pub action: &'a EntityUid,
    /// `:authority` without port, lowercase.
    pub host: String,
    /// The path as policies see it, with its segments and query parameters.
    pub path: NormalizedPath,
    pub method: &'a str,
    pub scheme: &'a str,
    /// Request headers (lowercase names, sorted).
    pub headers: &'a [(String, String)],
    /// The route's context extensions.
    pub route: &'a [(String, String)],
    /// `destination.principal`.
    pub destination: &'a str,
    pub source_ip: Option<IpAddr>,
    pub peer: &'a PeerIdentity,
    pub token: Option<&'a VerifiedToken>,
    /// What the policies that can apply read: which tags, whether the time.
    pub relevance: &'a Relevance,
}

/// Checks the path and host are canonical, finds the action for the method and
/// refuses what policies could read two ways.
pub fn prepare<'a>(
    snapshot: &'a PolicySnapshot,
    input: &'a CheckInput,
    http: &'a HttpInput,
    peer: &'a PeerIdentity,
    token: Option<&'a VerifiedToken>,
    rules: &PathRules,
) -> Result<RequestFacts<'a>, RequestError> {
    let path = http_path::normalize(&http.path, rules)?;
    if path.query.iter().any(|(key, _)| key.eq_ignore_ascii_case(METHOD_OVERRIDE_QUERY)) {
        return Err(RequestError::MethodOverride(METHOD_OVERRIDE_QUERY));
    }
    let host = canonical_host(&http.host).ok_or(RequestError::HostInvalid)?;
    let action = snapshot.actions_by_method.get(http.method.as_str()).ok_or(RequestError::MethodUnknown)?;
    let principal = principal_uid(snapshot, peer, token);
    let relevance = snapshot.index.relevance(action, &principal);
    let headers = http.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    if let Some(name) = ambiguous(headers, &relevance.tags, !http.raw_headers) {
        return Err(RequestError::HeaderAmbiguous(name.chars().take(64).collect()));
    }
    if let Some(name) = ambiguous(path.query.iter().map(|(k, v)| (k.as_str(), v.as_str())), &relevance.tags, false) {
        return Err(RequestError::QueryAmbiguous(name.chars().take(64).collect()));
    }
    Ok(RequestFacts {
        snapshot,
        principal,
        action,
        host,
        path,
        method: &http.method,
        scheme: &http.scheme,
        headers: &http.headers,
        route: &input.context_extensions,
        destination: &input.destination.principal,
        source_ip: input.source.ip,
        peer,
        token,
        relevance,
    })
}

/// The first key a policy reads that the request gives two different values. An
/// upstream may take the first, the last or all of them, so a `forbid` on one value
/// could be dodged by sending another beside it. Identical repeats are one value.
/// `joined`: Envoy joined repeated headers with `,` (its `encode_raw_headers` is
/// off), so a read header with a `,` might be two.
fn ambiguous<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>, relevant: &TagKeys, joined: bool) -> Option<&'a str> {
    let mut previous: Option<(&str, &str)> = None;
    let mut sorted: Vec<(&str, &str)> = pairs.filter(|(k, _)| relevant.contains(k)).collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (key, value) in sorted {
        if joined && value.contains(',') {
            return Some(key);
        }
        if previous.is_some_and(|(k, v)| k == key && v != value) {
            return Some(key);
        }
        previous = Some((key, value));
    }
    None
}

/// What one request adds to the base entity store, and its context.
struct RequestParts {
    /// The peer workload, resource, headers, query and route entities, and the token
    /// subject when it is the principal and not already in `entities.json`.
    entities: Vec<Entity>,
    resource: EntityUid,
    context: Context,
}

impl RequestFacts<'_> {
    /// The Cedar request and its entities, at `now`.
    pub fn build(&self, now: SystemTime) -> Result<CedarInput, RequestError> {
        let parts = self.parts(now)?;
        // Schema conformance of these entities and of the request (principal and
        // resource types each action applies to, the context's type) is proven once
        // per load by `check_schema_contract`, for every action: it is not re-checked
        // on every request.
        let entities =
            self.snapshot.entities.with_request(parts.entities).map_err(|e| RequestError::Build(e.to_string()))?;
        let request = Request::new(self.principal.clone(), self.action.clone(), parts.resource, parts.context, None)
            .map_err(|e| RequestError::Build(e.to_string()))?;
        Ok(CedarInput { request, entities })
    }

    /// The entities and context made from every fact.
    fn parts(&self, now: SystemTime) -> Result<RequestParts, RequestError> {
        let RequestFacts {
            snapshot,
            principal,
            action: _, // `build` puts it, with the principal, into the request
            host,
            path,
            method,
            scheme,
            headers,
            route,
            destination,
            source_ip,
            peer,
            token,
            relevance,
        } = self;
        let types = &snapshot.types;
        let workload = workload_entity(peer, snapshot).map_err(RequestError::Build)?;
        // Only the tags a policy that can apply reads: Cedar cannot enumerate tags,
        // so no other tag can change the verdict (the proof the cache key rests on,
        // `policy::reads`), and each one left out is one value less to build per
        // Check. Envoy sends a dozen headers; the shipped policies read one.
        let tags = |type_name, pairs: &[(String, String)]| {
            tag_entity(type_name, read_tags(pairs, &relevance.tags)).map_err(RequestError::Build)
        };
        let headers = tags(&types.headers, headers)?;
        let query = tags(&types.query, &path.query)?;
        let route = tags(&types.route, route)?;
        let resource = request_entity(types, host, path, method, scheme, headers.uid(), query.uid())
            .map_err(RequestError::Build)?;
        // `context.time` only when a policy that can apply reads it (`policy::reads`
        // counts `context has time` and the context as a whole): otherwise no
        // verdict can depend on it, and Cedar parses a datetime per Check.
        let now = relevance.time.then_some(now);
        let context =
            context(destination, *source_ip, workload.uid(), *token, route.uid(), now).map_err(RequestError::Build)?;
        let resource_uid = resource.uid();
        let mut entities = vec![workload, resource, headers, query, route];
        // A user listed in entities.json keeps its attributes and groups from there.
        if principal.type_name() == &types.user && snapshot.entities.base().get(principal).is_none() {
            entities.push(Entity::new_no_attrs(principal.clone(), HashSet::new()));
        }
        Ok(RequestParts { entities, resource: resource_uid, context })
    }
}

/// The principal's uid: the peer workload, or the token's subject as a `User`.
fn principal_uid(snapshot: &PolicySnapshot, peer: &PeerIdentity, token: Option<&VerifiedToken>) -> EntityUid {
    match token.filter(|t| t.principal == PrincipalFrom::Subject) {
        Some(token) => uid(&snapshot.types.user, &user_id(&token.iss, &token.sub)),
        None => uid(&snapshot.types.workload, peer.spiffe_id.as_str()),
    }
}

/// `User::"<iss>#<sub>"`: a subject is only ever the same principal as a subject of
/// the same issuer (issuers may not contain `#`, so the id splits one way only).
fn user_id(iss: &str, sub: &str) -> String {
    format!("{iss}#{sub}")
}

fn uid(type_name: &cedar_policy::EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name.clone(), EntityId::new(id))
}

/// Cedar's extension constructors (`datetime`, `duration`, `ip`), named once.
/// `RestrictedExpression::new_datetime` and friends run Cedar's LALR parser on
/// the extension's name at every call: a sixth of an evaluated Check's CPU.
static DATETIME: LazyLock<Option<ast::Name>> = LazyLock::new(|| "datetime".parse().ok());
static DURATION: LazyLock<Option<ast::Name>> = LazyLock::new(|| "duration".parse().ok());
static IP: LazyLock<Option<ast::Name>> = LazyLock::new(|| "ip".parse().ok());

/// `name("arg")`, the same expression as Cedar's own `new_datetime(arg)` and
/// friends build (a test checks they are equal).
fn extension_call(name: &LazyLock<Option<ast::Name>>, arg: String) -> Result<RestrictedExpression, String> {
    let name = Option::clone(name).ok_or("a cedar extension name does not parse")?;
    Ok(ast::RestrictedExpr::call_extension_fn(name, [ast::RestrictedExpr::val(arg)]).into())
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

/// The caller as a `Workload` entity: attributes from the SPIFFE ID and certificate,
/// parents its trust domain, its Kubernetes namespace and its `entities.json` groups.
fn workload_entity(peer: &PeerIdentity, snapshot: &PolicySnapshot) -> Result<Entity, String> {
    let key = (peer.spiffe_id.as_str().to_owned(), peer.certificate.as_ref().map(|c| c.sha256));
    if let Some(entity) = snapshot.workloads.get(&key) {
        return Ok(entity);
    }
    let entity = build_workload_entity(peer, snapshot)?;
    snapshot.workloads.insert(key, entity.clone());
    Ok(entity)
}

fn build_workload_entity(peer: &PeerIdentity, snapshot: &PolicySnapshot) -> Result<Entity, String> {
    let types = &snapshot.types;
    let id = &peer.spiffe_id;
    let mut attrs = identity_attrs(id);
    if let Some(cert) = &peer.certificate {
        attrs.push(("certificate".to_owned(), certificate_record(cert)?));
    }
    let declared = snapshot.workload_parents.get(id.as_str()).into_iter().flatten().cloned();
    let parents: HashSet<EntityUid> = identity_parents(id, types).into_iter().chain(declared).collect();
    Entity::new_with_tags(uid(&types.workload, id.as_str()), attrs, parents, []).map_err(|e| e.to_string())
}

fn identity_attrs(id: &SpiffeId) -> Vec<(String, RestrictedExpression)> {
    let mut attrs =
        vec![("trust_domain".to_owned(), string(id.trust_domain())), ("path".to_owned(), string(id.path()))];
    if let Some((namespace, service_account)) = id.kubernetes() {
        attrs.push(("namespace".to_owned(), string(namespace)));
        attrs.push(("service_account".to_owned(), string(service_account)));
    }
    attrs
}

fn certificate_record(cert: &PeerCertificate) -> Result<RestrictedExpression, String> {
    RestrictedExpression::new_record([
        ("serial".to_owned(), string(&cert.serial)),
        ("issuer".to_owned(), string(&cert.issuer)),
        ("fingerprint".to_owned(), string(&cert.fingerprint())),
        ("not_before".to_owned(), extension_call(&DATETIME, cedar_datetime(cert.not_before, 0)?)?),
        ("not_after".to_owned(), extension_call(&DATETIME, cedar_datetime(cert.not_after, 0)?)?),
        ("lifetime".to_owned(), extension_call(&DURATION, format!("{}s", cert.lifetime_seconds()))?),
    ])
    .map_err(|e| e.to_string())
}

/// An entity whose tags carry a string map (headers, query parameters, route
/// settings): policies read them with `hasTag` / `getTag`. A key repeated with one
/// value is that value; with different values (which `prepare` refused for keys a
/// policy reads) they are joined with `,`, as Envoy joins repeated headers.
fn tag_entity(type_name: &cedar_policy::EntityTypeName, tags: BTreeMap<&str, String>) -> Result<Entity, String> {
    Entity::new_with_tags(
        uid(type_name, REQUEST_ID),
        [],
        [],
        tags.into_iter().map(|(k, v)| (k.to_owned(), RestrictedExpression::new_string(v))),
    )
    .map_err(|e| e.to_string())
}

/// The tags of a tag entity, as the request and its cache key both see them: only
/// the keys in `read`; each key once; a key repeated with the same value has that
/// value, with different values they are joined with `,`.
pub fn read_tags<'a>(pairs: &'a [(String, String)], read: &TagKeys) -> BTreeMap<&'a str, String> {
    let mut tags: BTreeMap<&str, (String, Vec<&str>)> = BTreeMap::new();
    for (key, value) in pairs.iter().filter(|(k, _)| read.contains(k)) {
        let (key, value) = (key.as_str(), value.as_str());
        tags.entry(key)
            .and_modify(|(joined, seen)| {
                if !seen.contains(&value) {
                    seen.push(value);
                    joined.push(',');
                    joined.push_str(value);
                }
            })
            .or_insert_with(|| (value.to_owned(), vec![value]));
    }
    tags.into_iter().map(|(k, (v, _))| (k, v)).collect()
}

/// The resource: the HTTP request, a child of every prefix of its path.
fn request_entity(
    types: &CedarTypes,
    host: &str,
    path: &NormalizedPath,
    method: &str,
    scheme: &str,
    headers: EntityUid,
    query: EntityUid,
) -> Result<Entity, String> {
    let segments = path.segments.iter().enumerate().map(|(index, value)| {
        RestrictedExpression::new_record([
            ("index".to_owned(), RestrictedExpression::new_long(i64::try_from(index).unwrap_or(i64::MAX))),
            ("value".to_owned(), string(value)),
        ])
    });
    let segments: Vec<RestrictedExpression> = segments.collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let attrs = [
        ("host".to_owned(), string(host)),
        ("path".to_owned(), string(&path.path)),
        ("segments".to_owned(), RestrictedExpression::new_set(segments)),
        ("method".to_owned(), string(method)),
        ("scheme".to_owned(), string(scheme)),
        ("headers".to_owned(), RestrictedExpression::new_entity_uid(headers)),
        ("query".to_owned(), RestrictedExpression::new_entity_uid(query)),
    ];
    let parents: Vec<EntityUid> = path.prefixes().map(|p| uid(&types.path, p)).collect();
    Entity::new_with_tags(uid(&types.http_request, REQUEST_ID), attrs, parents, []).map_err(|e| e.to_string())
}

fn context(
    destination: &str,
    source_ip: Option<IpAddr>,
    peer: EntityUid,
    token: Option<&VerifiedToken>,
    route: EntityUid,
    now: Option<SystemTime>,
) -> Result<Context, String> {
    let mut pairs = vec![
        ("peer".to_owned(), RestrictedExpression::new_entity_uid(peer)),
        (
            "destination".to_owned(),
            RestrictedExpression::new_record([("principal".to_owned(), string(destination))])
                .map_err(|e| e.to_string())?,
        ),
        ("route".to_owned(), RestrictedExpression::new_entity_uid(route)),
    ];
    if let Some(now) = now {
        let millis = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.subsec_millis()).unwrap_or(0);
        pairs.push(("time".to_owned(), time_of(unix_seconds(now), millis)?));
    }
    if let Some(ip) = source_ip {
        pairs.push(("source_ip".to_owned(), extension_call(&IP, ip.to_string())?));
    }
    if let Some(token) = token {
        pairs.push(("token".to_owned(), token_record(token)?));
    }
    Context::from_pairs(pairs).map_err(|e| e.to_string())
}

fn string_set(items: &[String]) -> RestrictedExpression {
    RestrictedExpression::new_set(items.iter().map(|s| string(s)))
}

/// `context.token`: the verified claims.
fn token_record(token: &VerifiedToken) -> Result<RestrictedExpression, String> {
    let mut fields = vec![
        ("iss".to_owned(), string(&token.iss)),
        ("sub".to_owned(), string(&token.sub)),
        ("aud".to_owned(), string_set(&token.aud)),
        ("scope".to_owned(), string_set(&token.scope)),
        ("exp".to_owned(), extension_call(&DATETIME, cedar_datetime(token.exp, 0)?)?),
        ("bound".to_owned(), RestrictedExpression::new_bool(token.bound)),
    ];
    if let Some(jti) = &token.jti {
        fields.push(("jti".to_owned(), string(jti)));
    }
    if let Some(client_id) = &token.client_id {
        fields.push(("client_id".to_owned(), string(client_id)));
    }
    if let Some(iat) = token.iat {
        fields.push(("iat".to_owned(), extension_call(&DATETIME, cedar_datetime(iat, 0)?)?));
    }
    let claims = token.claims.iter().map(|(name, value)| {
        let value = match value {
            ClaimValue::String(s) => string(s),
            ClaimValue::Long(n) => RestrictedExpression::new_long(*n),
            ClaimValue::Bool(b) => RestrictedExpression::new_bool(*b),
            ClaimValue::StringSet(items) => string_set(items),
        };
        (name.clone(), value)
    });
    fields.push(("claims".to_owned(), RestrictedExpression::new_record(claims).map_err(|e| e.to_string())?));
    RestrictedExpression::new_record(fields).map_err(|e| e.to_string())
}

/// `:authority` without its port, lowercase: `Orders.Example.org:8443` and
/// `orders.example.org` are one host to a policy. `None` for anything an upstream
/// might read as another host than the policies did: a trailing dot (Envoy's
/// `strip_trailing_host_dot` removes one; `name..` is not a name), an empty label,
/// userinfo, a bad port, or characters outside host names and IP literals.
pub fn canonical_host(host: &str) -> Option<String> {
    if host.is_empty() {
        return Some(String::new());
    }
    let (name, port) = if host.starts_with('[') {
        let end = host.find(']')?;
        let literal = host.get(1..end)?;
        if literal.is_empty() || !literal.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return None;
        }
        let after = host.get(end + 1..)?;
        let port = if after.is_empty() { "" } else { after.strip_prefix(':')? };
        (host.get(..=end)?, port)
    } else {
        host.split_once(':').unwrap_or((host, ""))
    };
    if !port.is_empty() && (port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    if !name.starts_with('[') {
        let labels_ok = name.split('.').all(|label| {
            !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        if !labels_ok {
            return None;
        }
    }
    Some(name.to_ascii_lowercase())
}

/// `context.time` at millisecond `(seconds, millis)`. Cedar's datetime constructor
/// parses its extension's name and the text on every call; Checks in the same
/// millisecond on the same thread reuse the value instead.
fn time_of(seconds: i64, millis: u32) -> Result<RestrictedExpression, String> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(i64, u32, RestrictedExpression)>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((s, m, expr)) = last.as_ref() {
            if (*s, *m) == (seconds, millis) {
                return Ok(expr.clone());
            }
        }
        let expr = extension_call(&DATETIME, cedar_datetime(seconds, millis)?)?;
        *last = Some((seconds, millis, expr.clone()));
        Ok(expr)
    })
}

/// `2026-11-23T02:56:08.000Z`, the form Cedar's `datetime()` accepts.
fn cedar_datetime(seconds: i64, millis: u32) -> Result<String, String> {
    let t = time::OffsetDateTime::from_unix_timestamp(seconds).map_err(|e| e.to_string())?;
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        millis
    ))
}

/// Why a schema does not fit the requests cedargate builds.
#[derive(Debug, thiserror::Error)]
pub enum SchemaContractError {
    #[error("the schema declares no HTTP method actions (`action \"GET\" appliesTo {{ ... }}`)")]
    NoActions,
    #[error("cannot build a sample request: {0}")]
    Sample(String),
    #[error("the entities cedargate builds {what} do not conform to the schema: {message}")]
    Entities { what: String, message: String },
    #[error("the {method} request cedargate builds {what} does not conform to the schema: {message}")]
    Request { method: String, what: String, message: String },
}

/// Proves, once per load, that the schema declares everything cedargate puts into a
/// request, with the types it uses: sample entities and a sample request are
/// checked against the schema. A schema that drifted from the model is refused at
/// load instead of failing (closed, but silently) on every Check.
pub fn check_schema_contract(snapshot: &PolicySnapshot, tokens: &TokenModel) -> Result<(), SchemaContractError> {
    let sample = |e: &dyn std::fmt::Display| SchemaContractError::Sample(e.to_string());
    let id: SpiffeId = "spiffe://example.org/ns/default/sa/contract-check"
        .parse()
        .map_err(|e: crate::identity::spiffe::SpiffeIdError| sample(&e))?;
    let cert = PeerCertificate {
        sha256: [0; 32],
        serial: "01".into(),
        issuer: "O=contract".into(),
        not_before: 0,
        not_after: 3600,
        is_ca: false,
        key_usage: None,
        uri_sans: vec![id.as_str().to_owned()],
    };
    let peer = PeerIdentity { spiffe_id: id, certificate: Some(cert) };
    if snapshot.actions_by_method.is_empty() {
        return Err(SchemaContractError::NoActions);
    }
    let http = HttpInput {
        path: "/contract/check?q=1".into(),
        host: "contract.example.org".into(),
        scheme: "https".into(),
        headers: vec![("x-contract".into(), "1".into())],
        ..HttpInput::default()
    };
    let input = CheckInput {
        source: crate::pipeline::input::PeerInput { ip: Some([127, 0, 0, 1].into()), ..Default::default() },
        context_extensions: vec![("k".into(), "v".into())],
        ..CheckInput::default()
    };
    let rules = PathRules { max_bytes: usize::MAX, max_segments: usize::MAX, case_insensitive: true };
    let mut samples = vec![None];
    if tokens.enabled {
        samples.push(Some(sample_token(tokens, PrincipalFrom::Peer)));
    }
    if tokens.subject_principal {
        samples.push(Some(sample_token(tokens, PrincipalFrom::Subject)));
    }
    // Every action a request can name, with every kind of principal and context.
    // The entities do not depend on the action: they are checked once per kind.
    let mut methods: Vec<&String> = snapshot.actions_by_method.keys().collect();
    methods.sort();
    let first = methods.first().copied();
    for (method, token) in methods.iter().flat_map(|m| samples.iter().map(move |t| (*m, t))) {
        let http = HttpInput { method: method.clone(), ..http.clone() };
        let facts = prepare(snapshot, &input, &http, &peer, token.as_ref(), &rules).map_err(|e| sample(&e))?;
        // Everything a request can carry (the time, every tag), whatever the
        // policies read, so the schema is proven for all of it.
        let facts = RequestFacts { relevance: &EVERYTHING, ..facts };
        let parts = facts.parts(SystemTime::UNIX_EPOCH).map_err(|e| sample(&e))?;
        let what = match token {
            None => "without a token".to_owned(),
            Some(t) if t.principal == PrincipalFrom::Subject => {
                "with a token whose subject is the principal (User)".to_owned()
            }
            Some(_) => format!(
                "with a token (context.token, with the custom claims the config maps: {:?})",
                tokens.claims.keys().collect::<Vec<_>>()
            ),
        };
        if Some(method) == first {
            Entities::from_entities(parts.entities, Some(&snapshot.schema))
                .map_err(|e| SchemaContractError::Entities { what: what.clone(), message: e.to_string() })?;
        }
        Request::new(
            facts.principal.clone(),
            facts.action.clone(),
            parts.resource,
            parts.context,
            Some(&snapshot.schema),
        )
        .map_err(|e| SchemaContractError::Request { method: method.clone(), what, message: e.to_string() })?;
    }
    Ok(())
}

/// What a request carries when every policy reads everything.
static EVERYTHING: Relevance = Relevance { time: true, tags: TagKeys::All };

/// A token with every optional field and every custom claim of `model` present.
fn sample_token(model: &TokenModel, principal: PrincipalFrom) -> VerifiedToken {
    let claims = model
        .claims
        .iter()
        .map(|(name, kind)| {
            let value = match kind {
                ClaimType::String => ClaimValue::String("s".into()),
                ClaimType::Long => ClaimValue::Long(1),
                ClaimType::Bool => ClaimValue::Bool(true),
                ClaimType::StringSet => ClaimValue::StringSet(vec!["s".into()]),
            };
            (name.clone(), value)
        })
        .collect();
    VerifiedToken {
        iss: "https://issuer.example".into(),
        sub: "contract-check".into(),
        aud: vec!["a".into()],
        scope: vec!["s".into()],
        jti: Some("j".into()),
        client_id: Some("c".into()),
        iat: Some(0),
        exp: 60,
        bound: true,
        claims,
        fingerprint: String::new(),
        principal,
        forward: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_loses_port_and_case_and_ambiguous_hosts_are_refused() {
        let host = |h: &str| canonical_host(h);
        assert_eq!(host("Orders.Example.org:8443").as_deref(), Some("orders.example.org"));
        assert_eq!(host("orders").as_deref(), Some("orders"));
        assert_eq!(host("[::1]:8443").as_deref(), Some("[::1]"));
        assert_eq!(host("[::1]").as_deref(), Some("[::1]"));
        assert_eq!(host("10.0.0.1:80").as_deref(), Some("10.0.0.1"));
        assert_eq!(host("").as_deref(), Some(""));
        for bad in [
            "orders.example.org.",
            "orders.example.org..",
            "orders..example.org",
            "user@orders",
            "orders:x",
            "orders:123456",
            "orders example",
            "[::1]x",
            "[zz]",
            "a/b",
            "a%2eb",
        ] {
            assert_eq!(host(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn extension_calls_are_the_expressions_cedar_builds() {
        let same = |ours: RestrictedExpression, cedars: RestrictedExpression| {
            assert_eq!(ours.as_ref(), cedars.as_ref());
        };
        same(
            extension_call(&DATETIME, "2026-11-23T03:56:09.007Z".into()).unwrap(),
            RestrictedExpression::new_datetime("2026-11-23T03:56:09.007Z"),
        );
        same(extension_call(&DURATION, "3600s".into()).unwrap(), RestrictedExpression::new_duration("3600s"));
        same(extension_call(&IP, "10.0.0.1".into()).unwrap(), RestrictedExpression::new_ip("10.0.0.1"));
    }

    #[test]
    fn datetimes_are_in_cedar_form() {
        assert_eq!(cedar_datetime(0, 0).unwrap(), "1970-01-01T00:00:00.000Z");
        assert_eq!(cedar_datetime(1_795_406_169, 7).unwrap(), "2026-11-23T03:56:09.007Z");
    }

    #[test]
    fn limits_are_checked_with_their_own_errors() {
        let limits = LimitsConfig { max_headers: 2, max_header_bytes: 6, max_path_bytes: 100, max_path_segments: 8 };
        let mut input = CheckInput::default();
        assert_eq!(check_limits(&input, &limits).unwrap_err(), RequestError::MissingHttp);
        input.http = Some(HttpInput {
            headers: vec![("a".into(), "1".into()), ("b".into(), "2".into()), ("c".into(), "3".into())],
            ..HttpInput::default()
        });
        assert_eq!(check_limits(&input, &limits).unwrap_err(), RequestError::TooManyHeaders(3));
        input.http = Some(HttpInput { headers: vec![("big".into(), "12345".into())], ..HttpInput::default() });
        assert_eq!(check_limits(&input, &limits).unwrap_err(), RequestError::HeaderTooLarge("big".into()));
    }
}
