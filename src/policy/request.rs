//! From an established caller and an HTTP request to a Cedar request and its entities.
//!
//! This module *is* the policy model: what a policy author can read about a request
//! is exactly what is built here (documented in the README and declared in
//! `policies/schema.cedarschema`). Per request only typed values are built from
//! pre-parsed type names; no policy or schema text is parsed.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use cedar_policy::{Context, Entities, Entity, EntityId, EntityUid, Request};
use cedar_policy_core::ast::{self, PartialValue, Value};

use crate::config::{ClaimType, LimitsConfig, PrincipalFrom, TokenModel};
use crate::credentials::token::{ClaimValue, TokenClaims, VerifiedToken};
use crate::identity::certificate::PeerCertificate;
use crate::identity::spiffe::SpiffeId;
use crate::identity::svid::{unix_seconds, PeerIdentity};
use crate::pipeline::input::{CheckInput, HttpInput};
use crate::policy::http_path::{self, NormalizedPath, PathError, PathRules};
use crate::policy::reads::{Relevance, TagKeys};
use crate::policy::set::{identity_parents, CedarTypes, PolicySnapshot};
use crate::policy::values;

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
    // One pass for both checks: most names differ from an override header's in
    // length, which is compared before any byte.
    let mut method_override = None;
    for (name, value) in &http.headers {
        if name.len() + value.len() > limits.max_header_bytes {
            let name: String = name.chars().take(64).collect();
            return Err(RequestError::HeaderTooLarge(name));
        }
        if method_override.is_none() {
            method_override = METHOD_OVERRIDE_HEADERS.iter().find(|o| **o == name.as_str());
        }
    }
    match method_override {
        Some(name) => Err(RequestError::MethodOverride(name)),
        None => Ok(http),
    }
}

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
    /// subject when it is the principal and not already in `entities.json`; each a
    /// leaf of the snapshot's store (`EntityStore::close`).
    entities: Vec<Arc<ast::Entity>>,
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
        let entities = self
            .snapshot
            .entities
            .with_request(parts.entities, Some(self.principal.as_ref()))
            .map_err(|e| RequestError::Build(e.to_string()))?;
        let request = Request::new(self.principal.clone(), self.action.clone(), parts.resource, parts.context, None)
            .map_err(|e| RequestError::Build(e.to_string()))?;
        Ok(CedarInput { request, entities })
    }

    /// The entities and context made from every fact, as Cedar values (`values`):
    /// no restricted expression is built or evaluated per Check.
    fn parts(&self, now: SystemTime) -> Result<RequestParts, RequestError> {
        let RequestFacts {
            snapshot,
            principal,
            action: _, // `build` puts it, with the principal, into the request
            host: _,   // these five are the resource's attributes (`resource_attribute`)
            path,
            method: _,
            scheme: _,
            headers: _, // these two, with the path's query, are tags (`tag_sources`)
            route: _,
            destination: _, // these three are the context's (`context_attribute`)
            source_ip: _,
            token: _,
            peer,
            relevance,
        } = self;
        let types = &snapshot.types;
        let store = &snapshot.entities;
        let workload = workload_entity(peer, snapshot).map_err(RequestError::Build)?;
        let uids = &types.request;
        let resource = entity(
            &uids.resource,
            RESOURCE_ATTRIBUTES.iter().filter_map(|name| Some((*name, self.resource_attribute(name)?))).collect(),
            path.prefixes().map(|prefix| path_uid(types, prefix)).collect(),
            Vec::new(),
        );
        let fields = self.context_fields(workload.uid(), now).map_err(RequestError::Build)?;
        let context = ast::Context::Value(Arc::new(fields.into_iter().map(|(k, v)| (k.into(), v)).collect())).into();
        let mut entities = vec![workload, store.close(resource)];
        // Only the tags a policy that can apply reads: Cedar cannot enumerate tags,
        // so no other tag can change the verdict (the proof the cache key rests on,
        // `policy::reads`), and each one left out is one value less to build per
        // Check. Envoy sends a dozen headers; the shipped policies read one.
        for (uid, pairs) in self.tag_sources() {
            entities.push(store.close(tag_entity(uid, read_tags(pairs, &relevance.tags))));
        }
        // A user listed in entities.json keeps its attributes and groups from there.
        if self.principal_is_unlisted_user() {
            entities.push(store.close(entity(principal, Vec::new(), HashSet::new(), Vec::new())));
        }
        Ok(RequestParts { entities, resource: uids.resource.clone(), context })
    }

    /// The principal is a token's user that `entities.json` does not list: the
    /// request's store holds it without attributes, tags or parents.
    pub fn principal_is_unlisted_user(&self) -> bool {
        self.principal.type_name() == &self.snapshot.types.user
            && self.snapshot.entities.base().get(&self.principal).is_none()
    }

    /// `resource.<name>`, one of `RESOURCE_ATTRIBUTES`: what the Cedar request's
    /// resource holds and what `policy::direct` reads, made by this one function.
    pub fn resource_attribute(&self, name: &str) -> Option<Value> {
        let (path, uids) = (&self.path, &self.snapshot.types.request);
        Some(match name {
            "host" => values::string(&self.host),
            "path" => values::string(&path.path),
            "segments" => values::set(path.segments.iter().enumerate().map(|(index, value)| {
                values::record([
                    ("index", values::long(i64::try_from(index).unwrap_or(i64::MAX))),
                    ("value", values::string(value)),
                ])
            })),
            "method" => values::string(self.method),
            "scheme" => values::string(self.scheme),
            "headers" => values::entity(uids.headers.as_ref()),
            "query" => values::entity(uids.query.as_ref()),
            _ => return None,
        })
    }

    /// `context.<name>`, one of `CONTEXT_ATTRIBUTES`, or `None` when the context
    /// has no such attribute; like `resource_attribute`, the one maker of each.
    pub fn context_attribute(
        &self,
        name: &str,
        peer: &ast::EntityUID,
        now: SystemTime,
    ) -> Result<Option<Value>, String> {
        let uids = &self.snapshot.types.request;
        Ok(Some(match name {
            "peer" => values::entity(peer),
            "destination" => values::record([("principal", values::string(self.destination))]),
            "route" => values::entity(uids.route.as_ref()),
            // Only when a policy that can apply reads it (`policy::reads` counts
            // `context has time` and the context as a whole): otherwise no verdict
            // can depend on it, and it costs a datetime per Check.
            "time" if self.relevance.time => {
                let since = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
                values::datetime(unix_seconds(now), since.subsec_millis())?
            }
            "source_ip" => match self.source_ip {
                Some(ip) => values::ip(ip)?,
                None => return Ok(None),
            },
            "token" => match self.token {
                Some(token) => token_record(token)?,
                None => return Ok(None),
            },
            _ => return Ok(None),
        }))
    }

    /// The whole context: each of `CONTEXT_ATTRIBUTES` the request has.
    pub fn context_fields(&self, peer: &ast::EntityUID, now: SystemTime) -> Result<Vec<(&'static str, Value)>, String> {
        let mut fields = Vec::with_capacity(CONTEXT_ATTRIBUTES.len());
        for name in CONTEXT_ATTRIBUTES {
            if let Some(value) = self.context_attribute(name, peer, now)? {
                fields.push((name, value));
            }
        }
        Ok(fields)
    }

    /// The request's headers, query and route entities, each with the pairs its
    /// tags are made of (`read_tags`, `read_tag`).
    pub fn tag_sources(&self) -> [(&EntityUid, &[(String, String)]); 3] {
        let uids = &self.snapshot.types.request;
        [(&uids.headers, self.headers), (&uids.query, &self.path.query), (&uids.route, self.route)]
    }

    /// The tag `key` of a tag entity made of `pairs`, as the Cedar request's
    /// entity holds it: only a key a policy that can apply reads (`read_tags`).
    pub fn read_tag(&self, pairs: &[(String, String)], key: &str) -> Option<String> {
        self.relevance.tags.contains(key).then(|| tag_value(pairs, key)).flatten()
    }
}

/// The resource's attributes; `resource_attribute` makes each.
pub const RESOURCE_ATTRIBUTES: [&str; 7] = ["host", "path", "segments", "method", "scheme", "headers", "query"];
/// The context's attributes; `context_attribute` makes each (some only sometimes).
pub const CONTEXT_ATTRIBUTES: [&str; 6] = ["peer", "destination", "route", "time", "source_ip", "token"];

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

/// An entity of Cedar's core, with attributes, parents and tags as values.
fn entity(
    uid: &EntityUid,
    attrs: Vec<(&str, Value)>,
    parents: HashSet<ast::EntityUID>,
    tags: Vec<(&str, Value)>,
) -> ast::Entity {
    ast::Entity::new_with_attr_partial_value(
        core_uid(uid),
        attrs.into_iter().map(|(k, v)| (k.into(), PartialValue::from(v))),
        HashSet::new(),
        parents,
        tags.into_iter().map(|(k, v)| (k.into(), PartialValue::from(v))),
    )
}

/// `Path::"<prefix>"`: a parent of every request whose path has that prefix.
pub fn path_uid(types: &CedarTypes, prefix: &str) -> ast::EntityUID {
    core_uid(&uid(&types.path, prefix))
}

fn core_uid(uid: &EntityUid) -> ast::EntityUID {
    ast::EntityUID::clone(uid.as_ref())
}

/// The caller as a `Workload` entity: attributes from the SPIFFE ID and certificate,
/// parents its trust domain, its Kubernetes namespace and its `entities.json` groups;
/// remembered per snapshot as a leaf of its store.
pub fn workload_entity(peer: &PeerIdentity, snapshot: &PolicySnapshot) -> Result<Arc<ast::Entity>, String> {
    let key = (peer.spiffe_id.as_str().to_owned(), peer.certificate.as_ref().map(|c| c.sha256));
    if let Some(entity) = snapshot.workloads.get(&key) {
        return Ok(entity);
    }
    let entity = snapshot.entities.close(build_workload_entity(peer, snapshot)?);
    snapshot.workloads.insert(key, Arc::clone(&entity));
    Ok(entity)
}

fn build_workload_entity(peer: &PeerIdentity, snapshot: &PolicySnapshot) -> Result<ast::Entity, String> {
    let types = &snapshot.types;
    let id = &peer.spiffe_id;
    let mut attrs = vec![("trust_domain", values::string(id.trust_domain())), ("path", values::string(id.path()))];
    if let Some((namespace, service_account)) = id.kubernetes() {
        attrs.push(("namespace", values::string(namespace)));
        attrs.push(("service_account", values::string(service_account)));
    }
    if let Some(cert) = &peer.certificate {
        attrs.push(("certificate", certificate_record(cert)?));
    }
    let declared = snapshot.workload_parents.get(id.as_str()).into_iter().flatten();
    let parents = identity_parents(id, types).iter().chain(declared).map(core_uid).collect();
    Ok(entity(&uid(&types.workload, id.as_str()), attrs, parents, Vec::new()))
}

fn certificate_record(cert: &PeerCertificate) -> Result<Value, String> {
    Ok(values::record([
        ("serial", values::string(&cert.serial)),
        ("issuer", values::string(&cert.issuer)),
        ("fingerprint", values::string(cert.fingerprint())),
        ("not_before", values::datetime(cert.not_before, 0)?),
        ("not_after", values::datetime(cert.not_after, 0)?),
        ("lifetime", values::duration_seconds(cert.lifetime_seconds())?),
    ]))
}

/// An entity whose tags carry a string map (headers, query parameters, route
/// settings): policies read them with `hasTag` / `getTag`. A key repeated with one
/// value is that value; with different values (which `prepare` refused for keys a
/// policy reads) they are joined with `,`, as Envoy joins repeated headers.
fn tag_entity(uid: &EntityUid, tags: BTreeMap<&str, String>) -> ast::Entity {
    let tags = tags.iter().map(|(k, v)| (*k, values::string(v))).collect();
    entity(uid, Vec::new(), HashSet::new(), tags)
}

/// The tags of a tag entity, as the request and its cache key both see them: only
/// the keys in `read`; each key once, with its `tag_value`.
pub fn read_tags<'a>(pairs: &'a [(String, String)], read: &TagKeys) -> BTreeMap<&'a str, String> {
    let mut tags: BTreeMap<&str, String> = BTreeMap::new();
    for (key, _) in pairs.iter().filter(|(k, _)| read.contains(k)) {
        if !tags.contains_key(key.as_str()) {
            if let Some(value) = tag_value(pairs, key) {
                tags.insert(key, value);
            }
        }
    }
    tags
}

/// The value of tag `key` among `pairs`: a key repeated with the same value has
/// that value; with different values they are joined with `,`, in order.
fn tag_value(pairs: &[(String, String)], key: &str) -> Option<String> {
    let mut seen: Vec<&str> = Vec::new();
    let mut joined: Option<String> = None;
    for (_, value) in pairs.iter().filter(|(k, _)| k == key) {
        if seen.contains(&value.as_str()) {
            continue;
        }
        seen.push(value);
        match &mut joined {
            Some(joined) => {
                joined.push(',');
                joined.push_str(value);
            }
            None => joined = Some(value.clone()),
        }
    }
    joined
}

/// `context.token`: the verified claims.
fn token_record(token: &VerifiedToken) -> Result<Value, String> {
    let mut fields = vec![
        ("iss", values::string(&token.iss)),
        ("sub", values::string(&token.sub)),
        ("aud", values::string_set(&token.aud)),
        ("scope", values::string_set(&token.scope)),
        ("exp", values::datetime(token.exp, 0)?),
        ("bound", values::boolean(token.bound)),
    ];
    if let Some(jti) = &token.jti {
        fields.push(("jti", values::string(jti)));
    }
    if let Some(client_id) = &token.client_id {
        fields.push(("client_id", values::string(client_id)));
    }
    if let Some(iat) = token.iat {
        fields.push(("iat", values::datetime(iat, 0)?));
    }
    let claims = token.claims.iter().map(|(name, value)| {
        let value = match value {
            ClaimValue::String(s) => values::string(s),
            ClaimValue::Long(n) => values::long(*n),
            ClaimValue::Bool(b) => values::boolean(*b),
            ClaimValue::StringSet(items) => values::string_set(items),
        };
        (name.as_str(), value)
    });
    fields.push(("claims", values::record(claims)));
    Ok(values::record(fields))
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
        sha256_hex: hex::encode([0u8; 32]),
        serial: "01".into(),
        issuer: "O=contract".into(),
        not_before: 0,
        not_after: 3600,
        is_ca: false,
        key_usage: None,
        uri_sans: vec![id.as_str().to_owned()],
    };
    let peer = PeerIdentity { spiffe_id: id, certificate: Some(std::sync::Arc::new(cert)) };
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
            let entities = parts.entities.into_iter().map(|e| Entity::from(Arc::unwrap_or_clone(e)));
            Entities::from_entities(entities, Some(&snapshot.schema))
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
        verified: Arc::new(TokenClaims {
            iss: "https://issuer.example".into(),
            sub: "contract-check".into(),
            aud: vec!["a".into()],
            scope: vec!["s".into()],
            jti: Some("j".into()),
            client_id: Some("c".into()),
            iat: Some(0),
            exp: 60,
            claims,
            fingerprint: String::new(),
            principal,
            forward: Vec::new(),
        }),
        bound: true,
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
