//! Loading a policy directory into one immutable, validated snapshot.
//!
//! Everything expensive happens here, once per load: parsing the schema, parsing and
//! strictly validating every policy, loading `entities.json` with its hierarchy, and
//! checking that the schema declares the types cedargate fills in per request. A
//! Check only reads a snapshot. Failures come back as diagnostics that point at
//! file, line and column, and a failed load never replaces a good snapshot.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Entities, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, Schema, ValidationMode, Validator,
};
use sha2::{Digest, Sha256};

use crate::identity::spiffe::SpiffeId;
use crate::policy::index::PolicyIndex;
use crate::policy::statements;
use crate::policy::store::EntityStore;

pub const SCHEMA_FILE: &str = "schema.cedarschema";
pub const ENTITIES_FILE: &str = "entities.json";
pub const POLICY_EXTENSION: &str = "cedar";
/// Most remembered caller entities per snapshot (one per workload certificate).
const WORKLOAD_ENTITIES: u64 = 10_000;

/// A loaded, validated policy directory.
pub struct PolicySnapshot {
    /// Content hash of every file that was loaded (12 hex digits).
    pub version: String,
    pub schema: Schema,
    pub policies: PolicySet,
    /// `entities.json`, with transitive closure computed, and how a request's
    /// entities are added to it.
    pub entities: EntityStore,
    /// Entity type names cedargate builds requests from, parsed once.
    pub types: CedarTypes,
    /// Action uid for each HTTP method the schema declares (`Action::"GET"`, ...).
    pub actions_by_method: HashMap<String, EntityUid>,
    /// Parents given to a workload in `entities.json` (groups), by SPIFFE ID.
    pub workload_parents: WorkloadParents,
    /// The policies split by action and principal, for evaluation.
    pub index: PolicyIndex,
    /// Which file each policy was written in, for diagnostics.
    pub policy_files: HashMap<PolicyId, String>,
    pub authorizer: Authorizer,
    /// The `Workload` entities built for callers, by SPIFFE ID and certificate
    /// digest. Building one (Cedar evaluates its datetime and duration attributes)
    /// is a large part of an uncached Check, and it depends only on the certificate
    /// and this snapshot's `entities.json`; living in the snapshot, the cache goes
    /// with it on reload.
    pub workloads: moka::sync::Cache<(String, Option<[u8; 32]>), std::sync::Arc<cedar_policy_core::ast::Entity>>,
}

impl fmt::Debug for PolicySnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicySnapshot")
            .field("version", &self.version)
            .field("policies", &self.policy_count())
            .finish_non_exhaustive()
    }
}

impl PolicySnapshot {
    pub fn policy_count(&self) -> usize {
        self.policies.policies().count()
    }
}

/// The entity types of cedargate's policy model (see README, "Policy model").
#[derive(Debug, Clone)]
pub struct CedarTypes {
    pub workload: EntityTypeName,
    pub trust_domain: EntityTypeName,
    pub namespace: EntityTypeName,
    pub path: EntityTypeName,
    pub http_request: EntityTypeName,
    pub headers: EntityTypeName,
    pub query: EntityTypeName,
    pub route: EntityTypeName,
    pub user: EntityTypeName,
    /// The uids of the entities each request adds besides its caller, made once.
    pub request: RequestUids,
}

/// The uids of a request's resource and its headers, query and route entities.
/// They only need to be unique within one request's entity store, which holds
/// nothing else of these types.
#[derive(Debug, Clone)]
pub struct RequestUids {
    pub resource: EntityUid,
    pub headers: EntityUid,
    pub query: EntityUid,
    pub route: EntityUid,
}

/// The id of each of a request's own entities (`RequestUids`).
const REQUEST_ID: &str = "request";

impl CedarTypes {
    fn new() -> Result<Self, String> {
        let t = |name: &str| EntityTypeName::from_str(name).map_err(|e| format!("entity type `{name}`: {e}"));
        let (http_request, headers, query, route) = (t("HttpRequest")?, t("Headers")?, t("Query")?, t("Route")?);
        let uid = |type_name: &EntityTypeName| {
            EntityUid::from_type_name_and_id(type_name.clone(), cedar_policy::EntityId::new(REQUEST_ID))
        };
        let request = RequestUids {
            resource: uid(&http_request),
            headers: uid(&headers),
            query: uid(&query),
            route: uid(&route),
        };
        Ok(CedarTypes {
            workload: t("Workload")?,
            trust_domain: t("TrustDomain")?,
            namespace: t("Namespace")?,
            path: t("Path")?,
            http_request,
            headers,
            query,
            route,
            user: t("User")?,
            request,
        })
    }
}

/// One problem found while loading, located as precisely as Cedar allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based line and column, when the problem has a location.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn file_level(file: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic { file: file.into(), line: None, column: None, message: message.into(), help: None }
    }

    /// Builds a diagnostic from a Cedar (miette) error whose spans point into `text`.
    fn from_cedar(file: &str, text: &str, error: &dyn miette::Diagnostic) -> Self {
        Diagnostic::from_cedar_at(file, text, 0, error)
    }

    /// The same, for an error whose spans point into `text[base..]`.
    fn from_cedar_at(file: &str, text: &str, base: usize, error: &dyn miette::Diagnostic) -> Self {
        let offset = error.labels().and_then(|mut labels| labels.next()).map(|label| label.offset());
        let (line, column) = match offset {
            Some(offset) => {
                let (l, c) = line_column(text, base.saturating_add(offset));
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        Diagnostic {
            file: file.to_owned(),
            line,
            column,
            message: error.to_string(),
            help: error.help().map(|h| h.to_string()),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, "{}:{line}:{column}: {}", self.file, self.message)?,
            _ => write!(f, "{}: {}", self.file, self.message)?,
        }
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// A policy directory that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("policy set in `{dir}` is invalid:\n{}", render(.diagnostics))]
pub struct LoadError {
    pub dir: PathBuf,
    pub diagnostics: Vec<Diagnostic>,
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics.iter().map(|d| format!("  {d}")).collect::<Vec<_>>().join("\n")
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The text of every file of a policy directory, by file name.
#[derive(Debug, Clone, Default)]
pub struct PolicyFiles {
    pub schema: String,
    /// `*.cedar` files, sorted by name.
    pub policies: BTreeMap<String, String>,
    pub entities: Option<String>,
}

pub fn read_dir(dir: &Path) -> Result<PolicyFiles, Diagnostic> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).map_err(|e| Diagnostic::file_level(name, format!("cannot read: {e}")))
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Diagnostic::file_level(dir.display().to_string(), format!("cannot read directory: {e}")))?;
    let mut files = PolicyFiles { schema: read(SCHEMA_FILE)?, ..PolicyFiles::default() };
    for entry in entries {
        let entry = entry.map_err(|e| Diagnostic::file_level(dir.display().to_string(), e.to_string()))?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(POLICY_EXTENSION) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let text = read(&name)?;
        files.policies.insert(name, text);
    }
    if dir.join(ENTITIES_FILE).exists() {
        files.entities = Some(read(ENTITIES_FILE)?);
    }
    Ok(files)
}

/// Parses and strictly validates file contents into a snapshot. Whether the schema
/// fits the requests cedargate builds is `policy::load`'s to prove.
pub fn parse_files(files: &PolicyFiles) -> Result<PolicySnapshot, Vec<Diagnostic>> {
    let types = CedarTypes::new().map_err(|e| vec![Diagnostic::file_level(SCHEMA_FILE, e)])?;
    let schema = Schema::from_cedarschema_str(&files.schema)
        .map(|(schema, _warnings)| schema)
        .map_err(|e| vec![Diagnostic::from_cedar(SCHEMA_FILE, &files.schema, &e)])?;

    let mut diagnostics = Vec::new();
    let mut policies = PolicySet::new();
    let mut policy_files = HashMap::new();
    // Where each policy's batch starts in its file, for validation errors' positions.
    let mut batch_starts = HashMap::new();
    for (file, text) in &files.policies {
        match parse_policy_file(file, text) {
            Ok(parsed) => {
                for (policy, batch_start) in parsed {
                    let id = policy.id().clone();
                    if let Some(first) = policy_files.get(&id) {
                        diagnostics.push(Diagnostic::file_level(
                            file.clone(),
                            format!("policy id `{id}` is already used in `{first}`"),
                        ));
                        continue;
                    }
                    if let Err(e) = policies.add(policy) {
                        diagnostics.push(Diagnostic::file_level(file.clone(), e.to_string()));
                        continue;
                    }
                    batch_starts.insert(id.clone(), batch_start);
                    policy_files.insert(id, file.clone());
                }
            }
            Err(mut errors) => diagnostics.append(&mut errors),
        }
    }
    if !diagnostics.is_empty() {
        return Err(diagnostics);
    }

    let validation = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
    for error in validation.validation_errors() {
        let file = policy_files.get(error.policy_id()).cloned().unwrap_or_default();
        let text = files.policies.get(&file).map(String::as_str).unwrap_or_default();
        let base = batch_starts.get(error.policy_id()).copied().unwrap_or_default();
        diagnostics.push(Diagnostic::from_cedar_at(&file, text, base, error));
    }
    for warning in validation.validation_warnings() {
        tracing::warn!(policy = %warning.policy_id(), "policy validation warning: {warning}");
    }
    if !diagnostics.is_empty() {
        return Err(diagnostics);
    }

    let (entities, workload_parents) = match &files.entities {
        Some(text) => load_entities(text, &schema, &types)?,
        // `from_entities` with a schema adds the action hierarchy (`GET in read`);
        // without it `action in Action::"read"` would never match.
        None => (
            Entities::from_entities([], Some(&schema))
                .map_err(|e| vec![Diagnostic::file_level(ENTITIES_FILE, e.to_string())])?,
            HashMap::new(),
        ),
    };
    let actions_by_method: HashMap<String, EntityUid> = schema
        .actions()
        .filter(|uid| uid.type_name().to_string() == "Action" && is_method_token(uid.id().unescaped()))
        .map(|uid| (uid.id().unescaped().to_owned(), uid.clone()))
        .collect();
    let internal = |e: String| vec![Diagnostic::file_level(SCHEMA_FILE, e)];
    let action_entities = schema.action_entities().map_err(|e| internal(e.to_string()))?;
    let index = PolicyIndex::build(&policies, actions_by_method.values(), &action_entities);

    let request_types = [&types.workload, &types.http_request, &types.headers, &types.query, &types.route, &types.user];
    let entities = EntityStore::for_policies(entities, &request_types, policies.as_ref());
    let snapshot = PolicySnapshot {
        version: version_of(files),
        schema,
        policies,
        entities,
        types,
        actions_by_method,
        workload_parents,
        index,
        policy_files,
        authorizer: Authorizer::new(),
        workloads: moka::sync::Cache::builder()
            .max_capacity(WORKLOAD_ENTITIES)
            .time_to_idle(std::time::Duration::from_secs(600))
            .build(),
    };
    Ok(snapshot)
}

/// Parses one `.cedar` file; each policy is named by its `@id("...")` annotation, or
/// `file.cedar#N` for the N-th policy of the file (1-based). Each comes with the
/// offset in the file of the batch it was parsed in (`policy::statements`): the
/// spans Cedar reports for it are relative to that.
fn parse_policy_file(file: &str, text: &str) -> Result<Vec<(Policy, usize)>, Vec<Diagnostic>> {
    let mut policies = Vec::new();
    let mut diagnostics = Vec::new();
    for batch in statements::batches(text, statements::BATCH_BYTES) {
        let parsed = match PolicySet::from_str(batch.text) {
            Ok(parsed) => parsed,
            Err(errors) => {
                diagnostics.extend(errors.iter().map(|e| Diagnostic::from_cedar_at(file, text, batch.start, e)));
                continue;
            }
        };
        if parsed.templates().next().is_some() {
            return Err(vec![Diagnostic::file_level(
                file,
                "policy templates (`?principal`, `?resource`) are not supported",
            )]);
        }
        // Cedar names a batch's policies `policy0`, `policy1`, ... in the order written.
        let mut numbered: Vec<(usize, &Policy)> = parsed
            .policies()
            .map(|p| (p.id().to_string().strip_prefix("policy").and_then(|n| n.parse().ok()).unwrap_or(usize::MAX), p))
            .collect();
        numbered.sort_by_key(|(n, _)| *n);
        for (_, policy) in numbered {
            let id = match policy.annotation("id") {
                Some(id) => id.to_owned(),
                None => format!("{file}#{}", policies.len() + 1),
            };
            policies.push((policy.new_id(PolicyId::new(id)), batch.start));
        }
    }
    if diagnostics.is_empty() {
        Ok(policies)
    } else {
        Err(diagnostics)
    }
}

pub fn identity_parents(id: &SpiffeId, types: &CedarTypes) -> Vec<EntityUid> {
    let mut parents = vec![entity_uid(&types.trust_domain, id.trust_domain())];
    if let Some((namespace, _)) = id.kubernetes() {
        parents.push(entity_uid(&types.namespace, &namespace_id(id.trust_domain(), namespace)));
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

fn entity_uid(type_name: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name.clone(), cedar_policy::EntityId::new(id))
}

/// Parents given to a workload in `entities.json`, by SPIFFE ID.
type WorkloadParents = HashMap<String, Vec<EntityUid>>;

/// Loads `entities.json`. Workload entries may only name parents (groups): their
/// attributes come from the SPIFFE ID and certificate at request time, so cedargate
/// fills them in here and remembers the parents for the per-request principal.
fn load_entities(
    text: &str,
    schema: &Schema,
    types: &CedarTypes,
) -> Result<(Entities, WorkloadParents), Vec<Diagnostic>> {
    let err = |message: String| vec![Diagnostic::file_level(ENTITIES_FILE, message)];
    let mut value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        vec![Diagnostic {
            line: Some(e.line()),
            column: Some(e.column()),
            ..Diagnostic::file_level(ENTITIES_FILE, e.to_string())
        }]
    })?;
    let entries = value.as_array_mut().ok_or_else(|| err("must be a JSON array of entities".to_owned()))?;
    let mut workload_parents = HashMap::new();
    for entry in entries.iter_mut() {
        let Some(uid) = entry.get("uid").cloned() else {
            continue;
        };
        let Ok(uid) = EntityUid::from_json(uid) else {
            continue;
        };
        if uid.type_name() != &types.workload {
            continue;
        }
        let id: SpiffeId =
            uid.id().unescaped().parse().map_err(|e| err(format!("`{uid}` is not a valid SPIFFE ID: {e}")))?;
        if entry.get("attrs").and_then(|a| a.as_object()).is_some_and(|a| !a.is_empty()) {
            return Err(err(format!(
                "`{uid}` has attrs; a workload's attributes come from its SPIFFE ID and certificate, list only `parents`"
            )));
        }
        let parents: Vec<EntityUid> = entry
            .get("parents")
            .and_then(|p| p.as_array())
            .map(|parents| parents.iter().filter_map(|p| EntityUid::from_json(p.clone()).ok()).collect())
            .unwrap_or_default();
        let filled = workload_json(&id, &parents, types);
        workload_parents.insert(id.as_str().to_owned(), parents);
        *entry = filled;
    }
    let entities = Entities::from_json_value(value, Some(schema))
        .map_err(|e| vec![Diagnostic::from_cedar(ENTITIES_FILE, text, &e)])?;
    Ok((entities, workload_parents))
}

fn is_method_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
}

fn version_of(files: &PolicyFiles) -> String {
    let mut hash = Sha256::new();
    let mut add = |name: &str, text: &str| {
        hash.update((name.len() as u64).to_le_bytes());
        hash.update(name.as_bytes());
        hash.update((text.len() as u64).to_le_bytes());
        hash.update(text.as_bytes());
    };
    add(SCHEMA_FILE, &files.schema);
    for (name, text) in &files.policies {
        add(name, text);
    }
    if let Some(text) = &files.entities {
        add(ENTITIES_FILE, text);
    }
    hex::encode(hash.finalize()).chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("ab", 99), (1, 3));
    }

    /// One-line policies filling about `batches` parse batches, and how many.
    fn one_liners(batches: usize) -> (String, usize) {
        let good = "permit (principal, action, resource);\n";
        let n = statements::BATCH_BYTES / good.len() * batches;
        (good.repeat(n), n)
    }

    /// A file of many batches: policies are numbered through the whole file, and
    /// errors point at their line in the file, not in their batch.
    #[test]
    fn a_file_parsed_in_batches_is_named_and_located_as_one() {
        let (mut text, n) = one_liners(3);
        text.push_str("@id(\"named\") permit (principal, action, resource);\n");
        let parsed = parse_policy_file("big.cedar", &text).unwrap_or_else(|e| unreachable!("{e:?}"));
        assert!(parsed.iter().map(|(_, start)| start).collect::<HashSet<_>>().len() >= 3, "several batches");
        let ids: Vec<String> = parsed.iter().map(|(p, _)| p.id().to_string()).collect();
        let expected: Vec<String> = (1..=n).map(|i| format!("big.cedar#{i}")).chain(["named".to_owned()]).collect();
        assert_eq!(ids, expected);

        text.push_str("permit (principal, action, resource) when { 1 + };\n");
        let errors = parse_policy_file("big.cedar", &text).err().unwrap_or_default();
        assert!(!errors.is_empty());
        assert!(errors.iter().all(|d| d.line == Some(n + 2)), "{errors:?}");
    }

    /// Validation errors, found after the whole set is parsed, point at their line
    /// in the file too.
    #[test]
    fn validation_errors_in_a_late_batch_point_at_their_line() {
        let (mut text, n) = one_liners(2);
        text.push_str("permit (principal, action, resource) when {\n  resource.no_such_attribute == 1\n};\n");
        let files = PolicyFiles {
            schema: include_str!("../../policies/schema.cedarschema").to_owned(),
            policies: BTreeMap::from([("big.cedar".to_owned(), text)]),
            entities: None,
        };
        let errors = parse_files(&files).err().unwrap_or_default();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!((errors[0].file.as_str(), errors[0].line), ("big.cedar", Some(n + 2)), "{errors:?}");
    }
}
