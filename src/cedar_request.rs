//! From an established caller and an HTTP request to a Cedar request and its entities.
//!
//! This module *is* the policy model: what a policy author can read about a request
//! is exactly what is built here (documented in the README and declared in
//! `policies/schema.cedarschema`). Per request only typed values are built from
//! pre-parsed type names; no policy or schema text is parsed.

use std::collections::{BTreeMap, HashSet};
use std::time::SystemTime;

use cedar_policy::{Context, Entities, Entity, EntityId, EntityUid, Request, RestrictedExpression};

use crate::certificate::PeerCertificate;
use crate::config::{ClaimType, LimitsConfig, PrincipalFrom};
use crate::http_path::{self, NormalizedPath, PathError};
use crate::identity::{unix_seconds, PeerIdentity};
use crate::input::{CheckInput, HttpInput};
use crate::policy_set::{CedarTypes, PolicySnapshot};
use crate::spiffe::SpiffeId;
use crate::token::{ClaimValue, VerifiedToken};

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
            RequestError::MethodUnknown => "method_unknown",
            RequestError::Build(_) => "internal_error",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            RequestError::TooManyHeaders(_) | RequestError::HeaderTooLarge(_) => 431,
            RequestError::Path(_) => 400,
            RequestError::MissingHttp | RequestError::MethodUnknown | RequestError::Build(_) => 403,
        }
    }
}

/// Applies the size limits before any other work is done on the request.
pub fn check_limits<'a>(input: &'a CheckInput, limits: &LimitsConfig) -> Result<&'a HttpInput, RequestError> {
    let http = input.http.as_ref().ok_or(RequestError::MissingHttp)?;
    if http.headers.len() > limits.max_headers {
        return Err(RequestError::TooManyHeaders(http.headers.len()));
    }
    if let Some((name, _)) = http.headers.iter().find(|(_, v)| v.len() > limits.max_header_bytes) {
        let name: String = name.chars().take(64).collect();
        return Err(RequestError::HeaderTooLarge(name));
    }
    Ok(http)
}

/// The per-request entity ids. They only need to be unique within one request's
/// entity store, which holds nothing else of these types.
const REQUEST_ID: &str = "request";

/// The parts of a request every later step needs: the normalized path and the action.
#[derive(Debug)]
pub struct Prepared<'s> {
    pub path: NormalizedPath,
    pub action: &'s EntityUid,
}

/// Normalizes the path and finds the action for the method.
pub fn prepare<'s>(
    snapshot: &'s PolicySnapshot,
    http: &HttpInput,
    limits: &LimitsConfig,
) -> Result<Prepared<'s>, RequestError> {
    let path = http_path::normalize(&http.path, limits.max_path_bytes)?;
    let action = snapshot.actions_by_method.get(http.method.as_str()).ok_or(RequestError::MethodUnknown)?;
    Ok(Prepared { path, action })
}

/// Builds the Cedar request for one Check.
pub fn build(
    snapshot: &PolicySnapshot,
    prepared: &Prepared<'_>,
    peer: &PeerIdentity,
    token: Option<&VerifiedToken>,
    input: &CheckInput,
    http: &HttpInput,
    now: SystemTime,
) -> Result<CedarInput, RequestError> {
    let parts = request_parts(snapshot, peer, token, input, http, &prepared.path, now).map_err(RequestError::Build)?;
    // Schema conformance of these entities is proven once per load by
    // `check_schema_contract`, so it is not re-checked on every request.
    let entities = snapshot
        .entities
        .clone()
        .upsert_entities(parts.entities, None)
        .map_err(|e| RequestError::Build(e.to_string()))?;
    let request =
        Request::new(parts.principal, prepared.action.clone(), parts.resource, parts.context, Some(&snapshot.schema))
            .map_err(|e| RequestError::Build(e.to_string()))?;
    Ok(CedarInput { request, entities })
}

/// The principal's uid: the peer workload, or the token's subject as a `User`.
pub fn principal_uid(snapshot: &PolicySnapshot, peer: &PeerIdentity, token: Option<&VerifiedToken>) -> EntityUid {
    match token.filter(|t| t.principal == PrincipalFrom::Subject) {
        Some(token) => uid(&snapshot.types.user, &token.sub),
        None => uid(&snapshot.types.workload, peer.spiffe_id.as_str()),
    }
}

/// What one request adds to the base entity store, and its context.
struct RequestParts {
    /// The peer workload, resource, headers, query and route entities, and the token
    /// subject when it is the principal and not already in `entities.json`.
    entities: Vec<Entity>,
    principal: EntityUid,
    resource: EntityUid,
    context: Context,
}

fn request_parts(
    snapshot: &PolicySnapshot,
    peer: &PeerIdentity,
    token: Option<&VerifiedToken>,
    input: &CheckInput,
    http: &HttpInput,
    path: &NormalizedPath,
    now: SystemTime,
) -> Result<RequestParts, String> {
    let types = &snapshot.types;
    let workload = workload_entity(peer, snapshot)?;
    let headers = tag_entity(&types.headers, http.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    let query = tag_entity(&types.query, path.query.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    let route = tag_entity(&types.route, input.context_extensions.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    let resource = request_entity(types, http, path, headers.uid(), query.uid())?;
    let context = context(input, workload.uid(), token, route.uid(), now)?;
    let principal = principal_uid(snapshot, peer, token);
    let mut entities = vec![workload, resource.clone(), headers, query, route];
    // A user listed in entities.json keeps its attributes and groups from there.
    if principal.type_name() == &types.user && snapshot.entities.get(&principal).is_none() {
        entities.push(Entity::new_no_attrs(principal.clone(), HashSet::new()));
    }
    Ok(RequestParts { principal, resource: resource.uid(), entities, context })
}

fn uid(type_name: &cedar_policy::EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name.clone(), EntityId::new(id))
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

fn identity_parents(id: &SpiffeId, types: &CedarTypes) -> Vec<EntityUid> {
    let mut parents = vec![uid(&types.trust_domain, id.trust_domain())];
    if let Some((namespace, _)) = id.kubernetes() {
        parents.push(uid(&types.namespace, &namespace_id(id.trust_domain(), namespace)));
    }
    parents
}

/// `Namespace::"spiffe://example.org/ns/payments"`: the SPIFFE ID prefix of every
/// workload in that namespace, so the same name never means two trust domains.
fn namespace_id(trust_domain: &str, namespace: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}")
}

/// A workload of `entities.json` in Cedar's entity JSON, with the attributes and
/// parents a request would give it; used when loading `entities.json`.
pub fn workload_json(id: &SpiffeId, declared_parents: &[EntityUid], types: &CedarTypes) -> serde_json::Value {
    let mut attrs = serde_json::Map::new();
    attrs.insert("trust_domain".into(), id.trust_domain().into());
    attrs.insert("path".into(), id.path().into());
    if let Some((namespace, service_account)) = id.kubernetes() {
        attrs.insert("namespace".into(), namespace.into());
        attrs.insert("service_account".into(), service_account.into());
    }
    let parents: Vec<serde_json::Value> = identity_parents(id, types)
        .iter()
        .chain(declared_parents)
        .map(|p| serde_json::json!({ "type": p.type_name().to_string(), "id": p.id().unescaped() }))
        .collect();
    serde_json::json!({
        "uid": { "type": types.workload.to_string(), "id": id.as_str() },
        "attrs": attrs,
        "parents": parents,
    })
}

fn certificate_record(cert: &PeerCertificate) -> Result<RestrictedExpression, String> {
    RestrictedExpression::new_record([
        ("serial".to_owned(), string(&cert.serial)),
        ("issuer".to_owned(), string(&cert.issuer)),
        ("fingerprint".to_owned(), string(&cert.fingerprint())),
        ("not_before".to_owned(), RestrictedExpression::new_datetime(cedar_datetime(cert.not_before, 0)?)),
        ("not_after".to_owned(), RestrictedExpression::new_datetime(cedar_datetime(cert.not_after, 0)?)),
        ("lifetime".to_owned(), RestrictedExpression::new_duration(format!("{}s", cert.lifetime_seconds()))),
    ])
    .map_err(|e| e.to_string())
}

/// An entity whose tags carry a string map (headers, query parameters, route
/// settings): policies read them with `hasTag` / `getTag`. Repeated keys are joined
/// with `,`, as Envoy joins repeated headers.
fn tag_entity<'a>(
    type_name: &cedar_policy::EntityTypeName,
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<Entity, String> {
    Entity::new_with_tags(
        uid(type_name, REQUEST_ID),
        [],
        [],
        joined_tags(pairs).into_iter().map(|(k, v)| (k.to_owned(), RestrictedExpression::new_string(v))),
    )
    .map_err(|e| e.to_string())
}

/// The tags of a tag entity: each key once, repeated keys' values joined with `,`.
pub fn joined_tags<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> BTreeMap<&'a str, String> {
    let mut tags: BTreeMap<&str, String> = BTreeMap::new();
    for (key, value) in pairs {
        tags.entry(key)
            .and_modify(|joined| {
                joined.push(',');
                joined.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    }
    tags
}

/// The resource: the HTTP request, a child of every prefix of its normalized path.
fn request_entity(
    types: &CedarTypes,
    http: &HttpInput,
    path: &NormalizedPath,
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
        ("host".to_owned(), string(&normalize_host(&http.host))),
        ("path".to_owned(), string(&path.path)),
        ("segments".to_owned(), RestrictedExpression::new_set(segments)),
        ("method".to_owned(), string(&http.method)),
        ("scheme".to_owned(), string(&http.scheme)),
        ("headers".to_owned(), RestrictedExpression::new_entity_uid(headers)),
        ("query".to_owned(), RestrictedExpression::new_entity_uid(query)),
    ];
    let parents: Vec<EntityUid> = path.prefixes().map(|p| uid(&types.path, &p)).collect();
    Entity::new_with_tags(uid(&types.http_request, REQUEST_ID), attrs, parents, []).map_err(|e| e.to_string())
}

fn context(
    input: &CheckInput,
    peer: EntityUid,
    token: Option<&VerifiedToken>,
    route: EntityUid,
    now: SystemTime,
) -> Result<Context, String> {
    let millis = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.subsec_millis()).unwrap_or(0);
    let mut pairs = vec![
        ("time".to_owned(), RestrictedExpression::new_datetime(cedar_datetime(unix_seconds(now), millis)?)),
        ("peer".to_owned(), RestrictedExpression::new_entity_uid(peer)),
        (
            "destination".to_owned(),
            RestrictedExpression::new_record([("principal".to_owned(), string(&input.destination.principal))])
                .map_err(|e| e.to_string())?,
        ),
        ("route".to_owned(), RestrictedExpression::new_entity_uid(route)),
    ];
    if let Some(ip) = input.source.ip {
        pairs.push(("source_ip".to_owned(), RestrictedExpression::new_ip(ip.to_string())));
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
        ("exp".to_owned(), RestrictedExpression::new_datetime(cedar_datetime(token.exp, 0)?)),
        ("bound".to_owned(), RestrictedExpression::new_bool(token.bound)),
    ];
    if let Some(jti) = &token.jti {
        fields.push(("jti".to_owned(), string(jti)));
    }
    if let Some(client_id) = &token.client_id {
        fields.push(("client_id".to_owned(), string(client_id)));
    }
    if let Some(iat) = token.iat {
        fields.push(("iat".to_owned(), RestrictedExpression::new_datetime(cedar_datetime(iat, 0)?)));
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

/// `:authority` without port or trailing dot, lowercase: `Orders.Example.org.:8443`
/// and `orders.example.org` are one host to a policy.
pub fn normalize_host(host: &str) -> String {
    let without_port = if host.starts_with('[') {
        // IPv6 literal: keep the brackets, drop a port after them.
        host.find(']').and_then(|end| host.get(..=end)).unwrap_or(host)
    } else {
        host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h)
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
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

/// Proves, once per load, that the schema declares everything cedargate puts into a
/// request, with the types it uses: sample entities and a sample request are
/// checked against the schema. A schema that drifted from the model is refused at
/// load instead of failing (closed, but silently) on every Check.
pub fn check_schema_contract(snapshot: &PolicySnapshot, tokens: &TokenModel) -> Result<(), String> {
    let id: SpiffeId = "spiffe://example.org/ns/default/sa/contract-check"
        .parse()
        .map_err(|e: crate::spiffe::SpiffeIdError| e.to_string())?;
    let cert = PeerCertificate {
        sha256: [0; 32],
        serial: "01".into(),
        issuer: "O=contract".into(),
        not_before: 0,
        not_after: 3600,
        is_ca: false,
        uri_sans: vec![id.as_str().to_owned()],
    };
    let peer = PeerIdentity { spiffe_id: id, certificate: Some(cert) };
    let (method, action) = snapshot
        .actions_by_method
        .iter()
        .min_by(|a, b| a.0.cmp(b.0))
        .ok_or("the schema declares no HTTP method actions (`action \"GET\" appliesTo { ... }`)")?;
    let http = HttpInput {
        method: method.clone(),
        path: "/contract/check?q=1".into(),
        host: "contract.example.org".into(),
        scheme: "https".into(),
        headers: vec![("x-contract".into(), "1".into())],
        ..HttpInput::default()
    };
    let input = CheckInput {
        source: crate::input::PeerInput { ip: Some([127, 0, 0, 1].into()), ..Default::default() },
        context_extensions: vec![("k".into(), "v".into())],
        ..CheckInput::default()
    };
    let path = http_path::normalize(&http.path, usize::MAX).map_err(|e| e.to_string())?;
    let mut samples = vec![None];
    if tokens.enabled {
        samples.push(Some(tokens.sample(PrincipalFrom::Peer)));
    }
    if tokens.subject_principal {
        samples.push(Some(tokens.sample(PrincipalFrom::Subject)));
    }
    for token in &samples {
        let parts = request_parts(snapshot, &peer, token.as_ref(), &input, &http, &path, SystemTime::UNIX_EPOCH)?;
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
        Entities::from_entities(parts.entities, Some(&snapshot.schema))
            .map_err(|e| format!("the entities cedargate builds {what} do not conform to the schema: {e}"))?;
        Request::new(parts.principal, action.clone(), parts.resource, parts.context, Some(&snapshot.schema))
            .map_err(|e| format!("the request cedargate builds {what} does not conform to the schema: {e}"))?;
    }
    Ok(())
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
    pub fn from_config(tokens: &crate::config::TokensConfig) -> TokenModel {
        TokenModel {
            enabled: !tokens.issuers.is_empty(),
            subject_principal: tokens.issuers.iter().any(|i| i.principal == PrincipalFrom::Subject),
            claims: tokens.issuers.iter().flat_map(|i| i.claims.iter().map(|(k, v)| (k.clone(), *v))).collect(),
        }
    }

    /// A token with every optional field and custom claim present.
    fn sample(&self, principal: PrincipalFrom) -> VerifiedToken {
        let claims = self
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_loses_port_case_and_trailing_dot() {
        assert_eq!(normalize_host("Orders.Example.org.:8443"), "orders.example.org");
        assert_eq!(normalize_host("orders"), "orders");
        assert_eq!(normalize_host("[::1]:8443"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
    }

    #[test]
    fn datetimes_are_in_cedar_form() {
        assert_eq!(cedar_datetime(0, 0).unwrap(), "1970-01-01T00:00:00.000Z");
        assert_eq!(cedar_datetime(1_795_406_169, 7).unwrap(), "2026-11-23T03:56:09.007Z");
    }

    #[test]
    fn limits_are_checked_with_their_own_errors() {
        let limits = LimitsConfig { max_headers: 2, max_header_bytes: 4, max_path_bytes: 100 };
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
