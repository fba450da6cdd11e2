//! The entity store one Check is evaluated against: the snapshot's `entities.json`
//! store (transitively closed once, at load) plus the entities the request adds
//! (the caller, the resource, its headers, query and route, a token's user).
//!
//! Cedar's `upsert_entities` recomputes the closure of the whole store on every
//! call, which was the largest single cost of an evaluated Check. When the load
//! proves that no stored entity has an ancestor of a type a request adds, those
//! entities are leaves of the hierarchy: a leaf's ancestors are its parents and
//! theirs, already closed in the base store, so they are added here and the base
//! is not revisited. Otherwise (an `entities.json` that makes a request's entity a
//! parent of something) Cedar recomputes the closure as before. Both paths give
//! the same store; the tests below check it entity by entity on generated
//! hierarchies.
//!
//! A Check is not given all of `entities.json` either. Cedar reads an entity of
//! the store only where an expression names it and asks for its attributes, tags
//! or ancestors (`.`, `has`, `getTag`, `hasTag`, `in`); the entities an expression
//! can name are the request's own, the actions, entities a policy writes as a
//! literal, and entities named by the attributes and tags of those, transitively.
//! That set is worked out once per load (`EntityStore::for_policies`), and a
//! token's user taken from `entities.json` as the principal brings its own. Copying
//! the whole store for every Check cost time in proportion to its size (an
//! evaluated Check took 0.5 ms with 10,000 groups in `entities.json`); a property
//! test decides generated stores and policies both ways.

use std::collections::HashSet;
use std::sync::Arc;

use cedar_policy::{Entities, Entity, EntityTypeName};
use cedar_policy_core::ast::{self, EntityUID};
use cedar_policy_core::entities::{Dereference, NoEntitiesSchema, TCComputation};
use cedar_policy_core::extensions::Extensions;

/// Why the request's entities could not be added.
#[derive(Debug, thiserror::Error)]
#[error("cannot add the request's entities: {0}")]
pub struct StoreError(String);

/// `entities.json` with its closure, and whether request entities are leaves of it.
#[derive(Debug)]
pub struct EntityStore {
    base: Entities,
    /// What a Check can reach of `base` (see above); `None` where that is not
    /// known (a store built without its policies, or a stored value Cedar has not
    /// evaluated): then every Check gets all of `base`.
    reachable: Option<cedar_policy_core::entities::Entities>,
    request_entities_are_leaves: bool,
    /// The entity types `base` holds.
    types: HashSet<ast::EntityType>,
}

impl EntityStore {
    /// `request_types`: every entity type a request adds to the store.
    pub fn new(base: Entities, request_types: &[&EntityTypeName]) -> Self {
        let types: Vec<&ast::EntityType> = request_types.iter().map(|t| t.as_ref()).collect();
        let request_entities_are_leaves =
            base.as_ref().iter().all(|e| e.ancestors().all(|a| !types.contains(&a.entity_type())));
        let stored = base.as_ref().iter().map(|e| e.uid().entity_type().clone()).collect();
        EntityStore { base, reachable: None, request_entities_are_leaves, types: stored }
    }

    /// `new`, and what of `base` a request put to `policies` can reach: every
    /// action, every entity the policies name, and what those entities' attributes
    /// and tags name, transitively.
    pub fn for_policies(base: Entities, request_types: &[&EntityTypeName], policies: &ast::PolicySet) -> Self {
        let mut store = EntityStore::new(base, request_types);
        let stored = store.base.as_ref();
        let actions = stored.iter().map(|e| e.uid()).filter(|uid| uid.entity_type().is_action()).cloned();
        let named = policies.policies().flat_map(|policy| {
            let condition = policy.condition();
            let literals: Vec<EntityUID> = condition
                .subexpressions()
                .filter_map(|e| match e.expr_kind() {
                    ast::ExprKind::Lit(ast::Literal::EntityUID(uid)) => Some(EntityUID::clone(uid)),
                    _ => None,
                })
                .collect();
            literals.into_iter().chain(policy.env().values().cloned())
        });
        store.reachable = reach(stored, actions.chain(named), |_| false).and_then(|found| ast_entities(found).ok());
        store
    }

    /// `entities.json` (and the schema's actions), transitively closed.
    pub fn base(&self) -> &Entities {
        &self.base
    }

    /// How many stored entities a Check starts from: what it can reach, or all of
    /// them where that is not known or the closure is recomputed (for metrics:
    /// a Check's cost grows with this number).
    pub fn given_to_each_check(&self) -> usize {
        match &self.reachable {
            Some(reachable) if self.request_entities_are_leaves => reachable.iter().count(),
            _ => self.base.len(),
        }
    }

    /// Whether `base` holds an entity of this type.
    pub fn holds(&self, entity_type: &ast::EntityType) -> bool {
        self.types.contains(entity_type)
    }

    /// Whether a request's entities are added without recomputing the closure.
    pub fn adds_leaves(&self) -> bool {
        self.request_entities_are_leaves
    }

    /// `entity` as a leaf of this store: with its parents' ancestors (closed in the
    /// base store) as its own. Left as it is when request entities are not leaves
    /// here: then `with_request` has Cedar recompute the closure.
    pub fn close(&self, mut entity: ast::Entity) -> Arc<ast::Entity> {
        if self.request_entities_are_leaves {
            let base = self.base.as_ref();
            let inherited: HashSet<EntityUID> = entity
                .parents()
                .filter_map(|parent| match base.entity(parent) {
                    Dereference::Data(parent) => Some(parent.ancestors().cloned()),
                    Dereference::NoSuchEntity | Dereference::Residual(_) => None,
                })
                .flatten()
                .collect();
            inherited.into_iter().for_each(|uid| entity.add_indirect_ancestor(uid));
        }
        Arc::new(entity)
    }

    /// The base store (what of it the request can reach) with the request's
    /// entities, each made by `close` (an entity of the same uid replaces the
    /// stored one, as Cedar's upsert does). `principal`: the request's principal,
    /// which may be an entity of `entities.json` (a token's user) that the
    /// policies do not name.
    pub fn with_request(
        &self,
        added: Vec<Arc<ast::Entity>>,
        principal: Option<&EntityUID>,
    ) -> Result<Entities, StoreError> {
        if !self.request_entities_are_leaves || has_parent_among(&added) {
            return self.with_request_recomputed(added.into_iter().map(Arc::unwrap_or_clone).collect());
        }
        let start = match &self.reachable {
            Some(reachable) => {
                let in_reach = |uid: &EntityUID| !matches!(reachable.entity(uid), Dereference::NoSuchEntity);
                let stored_principal = principal.filter(|uid| !in_reach(uid) && !added.iter().any(|e| e.uid() == *uid));
                match stored_principal.map(|uid| reach(self.base.as_ref(), std::iter::once(uid.clone()), in_reach)) {
                    None => reachable.clone(),
                    Some(Some(extra)) => reachable
                        .clone()
                        .add_entities(
                            extra.into_iter().map(Arc::new),
                            None::<&NoEntitiesSchema>,
                            TCComputation::AssumeAlreadyComputed,
                            Extensions::all_available(),
                        )
                        .map_err(|e| StoreError(e.to_string()))?,
                    Some(None) => self.base.as_ref().clone(),
                }
            }
            None => self.base.as_ref().clone(),
        };
        start
            .upsert_entities(
                added,
                None::<&NoEntitiesSchema>,
                TCComputation::AssumeAlreadyComputed,
                Extensions::all_available(),
            )
            .map(Entities::from)
            .map_err(|e| StoreError(e.to_string()))
    }

    /// The same store with Cedar recomputing the closure: the general path, and the
    /// reference the leaf path is tested against.
    pub fn with_request_recomputed(&self, added: Vec<ast::Entity>) -> Result<Entities, StoreError> {
        self.base
            .clone()
            .upsert_entities(added.into_iter().map(Entity::from), None)
            .map_err(|e| StoreError(e.to_string()))
    }
}

/// The entities of `stored` that `roots` name and that their attributes and tags
/// name, transitively, less those `skip` says are had already; `None` when a
/// stored value is not one Cedar has evaluated (a residual), whose entities
/// cannot be followed.
fn reach(
    stored: &cedar_policy_core::entities::Entities,
    roots: impl Iterator<Item = EntityUID>,
    skip: impl Fn(&EntityUID) -> bool,
) -> Option<Vec<ast::Entity>> {
    let mut seen: HashSet<EntityUID> = HashSet::new();
    let mut todo: Vec<EntityUID> = roots.collect();
    let mut found = Vec::new();
    while let Some(uid) = todo.pop() {
        if skip(&uid) || !seen.insert(uid.clone()) {
            continue;
        }
        let Dereference::Data(entity) = stored.entity(&uid) else { continue };
        for (_, value) in entity.attrs().chain(entity.tags()) {
            match value {
                ast::PartialValue::Value(value) => named_by(value, &mut todo),
                ast::PartialValue::Residual(_) => return None,
            }
        }
        found.push(entity.clone());
    }
    Some(found)
}

/// Every entity `value` names, into `out`.
fn named_by(value: &ast::Value, out: &mut Vec<EntityUID>) {
    match value.value_kind() {
        ast::ValueKind::Lit(ast::Literal::EntityUID(uid)) => out.push(EntityUID::clone(uid)),
        ast::ValueKind::Lit(_) | ast::ValueKind::ExtensionValue(_) => {}
        ast::ValueKind::Set(set) => set.iter().for_each(|v| named_by(v, out)),
        ast::ValueKind::Record(record) => record.values().for_each(|v| named_by(v, out)),
    }
}

/// A store of entities already closed (taken from a closed store).
fn ast_entities(found: Vec<ast::Entity>) -> Result<cedar_policy_core::entities::Entities, StoreError> {
    cedar_policy_core::entities::Entities::new()
        .add_entities(
            found.into_iter().map(Arc::new),
            None::<&NoEntitiesSchema>,
            TCComputation::AssumeAlreadyComputed,
            Extensions::all_available(),
        )
        .map_err(|e| StoreError(e.to_string()))
}

/// Whether one added entity is the parent of another: then they are not all leaves.
fn has_parent_among(added: &[Arc<ast::Entity>]) -> bool {
    let uids: Vec<&EntityUID> = added.iter().map(|e| e.uid()).collect();
    added.iter().any(|e| e.parents().any(|p| uids.contains(&p)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cedar_policy::{EntityId, EntityUid, RestrictedExpression};
    use proptest::prelude::*;
    use std::str::FromStr;

    fn uid(type_name: &str, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(EntityTypeName::from_str(type_name).unwrap(), EntityId::new(id))
    }

    /// A base hierarchy: groups and paths, each with parents among the earlier
    /// ones (so it is a DAG), and workloads with group parents.
    fn base_of(groups: &[Vec<usize>], workloads: &[Vec<usize>], paths: usize) -> Entities {
        let group = |i: usize| uid("Group", &format!("g{i}"));
        let mut entities = Vec::new();
        for (i, parents) in groups.iter().enumerate() {
            let parents = parents.iter().filter(|p| **p < i).map(|p| group(*p)).collect();
            entities.push(Entity::new_no_attrs(group(i), parents));
        }
        for (i, parents) in workloads.iter().enumerate() {
            let parents = parents.iter().filter(|p| **p < groups.len()).map(|p| group(*p)).collect();
            entities.push(Entity::new_no_attrs(uid("Workload", &format!("w{i}")), parents));
        }
        let path = |depth: usize| uid("Path", &"/p".repeat(depth));
        for depth in 1..=paths {
            let parents = (1..depth).map(path).collect();
            entities.push(Entity::new_no_attrs(path(depth), parents));
        }
        Entities::from_entities(entities, None).unwrap()
    }

    fn assert_same(a: &Entities, b: &Entities) {
        assert_eq!(a.len(), b.len());
        for entity in a.iter() {
            let other = b.get(&entity.uid()).unwrap_or_else(|| panic!("{} missing", entity.uid()));
            assert!(entity.as_ref().deep_eq(other.as_ref()), "{entity} differs from {other}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

        /// The leaf path builds exactly the store Cedar's own upsert builds.
        #[test]
        fn adding_leaves_builds_the_store_cedar_builds(
            groups in prop::collection::vec(prop::collection::vec(0usize..8, 0..3), 0..8),
            workloads in prop::collection::vec(prop::collection::vec(0usize..8, 0..3), 0..3),
            paths in 0usize..4,
            caller in 0usize..4,
            caller_groups in prop::collection::vec(0usize..10, 0..3),
            depth in 1usize..6,
        ) {
            let types: Vec<EntityTypeName> =
                ["Workload", "HttpRequest"].iter().map(|t| EntityTypeName::from_str(t).unwrap()).collect();
            let store = EntityStore::new(base_of(&groups, &workloads, paths), &types.iter().collect::<Vec<_>>());
            prop_assert!(store.adds_leaves());
            // The caller replaces a stored workload or is new; its groups may not exist.
            let parents = caller_groups.iter().map(|g| uid("Group", &format!("g{g}"))).collect();
            let caller = Entity::new(
                uid("Workload", &format!("w{caller}")),
                [("path".to_owned(), RestrictedExpression::new_string("/x".into()))].into(),
                parents,
            ).unwrap();
            let resource = Entity::new_no_attrs(
                uid("HttpRequest", "request"),
                (1..=depth).map(|d| uid("Path", &"/p".repeat(d))).collect(),
            );
            let added = vec![caller.as_ref().clone(), resource.as_ref().clone()];
            let closed = added.iter().map(|e| store.close(e.clone())).collect();
            assert_same(&store.with_request(closed, None).unwrap(), &store.with_request_recomputed(added).unwrap());
        }
    }

    /// A group or user of a generated `entities.json`: its parents (earlier groups)
    /// and attributes that name other entities, one level and two levels deep.
    #[derive(Debug, Clone)]
    struct Stored {
        parents: Vec<usize>,
        level: i64,
        owner: Option<usize>,
        peers: Vec<usize>,
        nested: Option<usize>,
        tagged: bool,
    }

    fn stored() -> impl Strategy<Value = Stored> {
        (
            prop::collection::vec(0usize..6, 0..3),
            0i64..3,
            prop::option::of(0usize..4),
            prop::collection::vec(0usize..6, 0..3),
            prop::option::of(0usize..6),
            any::<bool>(),
        )
            .prop_map(|(parents, level, owner, peers, nested, tagged)| Stored {
                parents,
                level,
                owner,
                peers,
                nested,
                tagged,
            })
    }

    fn stored_entity(uid: EntityUid, s: &Stored, parent_limit: usize) -> Entity {
        let group = |i: usize| RestrictedExpression::new_entity_uid(super::tests::uid("Group", &format!("g{i}")));
        let mut attrs =
            std::collections::HashMap::from([("level".to_owned(), RestrictedExpression::new_long(s.level))]);
        if let Some(owner) = s.owner {
            attrs.insert(
                "owner".into(),
                RestrictedExpression::new_entity_uid(super::tests::uid("User", &format!("u{owner}"))),
            );
        }
        attrs.insert("peers".into(), RestrictedExpression::new_set(s.peers.iter().map(|p| group(*p))));
        if let Some(nested) = s.nested {
            attrs.insert("info".into(), RestrictedExpression::new_record([("ref".to_owned(), group(nested))]).unwrap());
        }
        let parents: HashSet<EntityUid> = s
            .parents
            .iter()
            .filter(|p| **p < parent_limit)
            .map(|p| super::tests::uid("Group", &format!("g{p}")))
            .collect();
        let tags =
            if s.tagged { std::collections::HashMap::from([("t".to_owned(), group(0))]) } else { Default::default() };
        Entity::new_with_tags(uid, attrs, parents, tags).unwrap()
    }

    fn policy() -> impl Strategy<Value = String> {
        let shapes = prop_oneof![
            (0usize..6, 0i64..3).prop_map(|(a, n)| format!(r#"permit (principal, action, resource) when {{ Group::"g{a}".level > {n} }};"#)),
            (0usize..6).prop_map(|a| format!(r#"permit (principal, action, resource) when {{ Group::"g{a}".owner.level > 0 }};"#)),
            (0usize..6, 0i64..3).prop_map(|(a, n)| format!(r#"forbid (principal, action, resource) when {{ Group::"g{a}".info.ref.level == {n} }};"#)),
            (0usize..6).prop_map(|a| format!(r#"permit (principal in Group::"g{a}", action, resource);"#)),
            (0i64..3).prop_map(|n| format!(r#"permit (principal, action, resource) when {{ principal has owner && principal.owner.level > {n} }};"#)),
            (0usize..6, 0usize..6).prop_map(|(a, b)| format!(r#"permit (principal, action, resource) when {{ Group::"g{a}".peers.contains(Group::"g{b}") }};"#)),
            (0usize..6).prop_map(|a| format!(r#"permit (principal, action, resource) when {{ Group::"g{a}".hasTag("t") && Group::"g{a}".getTag("t").level >= 0 }};"#)),
            (0usize..4, 0usize..6).prop_map(|(k, a)| format!(r#"forbid (principal, action, resource) when {{ User::"u{k}".owner in Group::"g{a}" }};"#)),
            (0usize..6).prop_map(|a| format!(r#"permit (principal, action, resource) when {{ resource in Group::"g{a}" || principal.info.ref.peers.contains(Group::"g{a}") }};"#)),
        ];
        shapes
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

        /// A Check given only what of `entities.json` it can reach is decided as it
        /// is with all of it (Cedar's own upsert onto the whole store): the same
        /// decision, determining policies and policies in error, for generated
        /// stores whose attributes and tags name other entities, policies that
        /// follow them from literals and from the principal, and a principal that
        /// is the request's workload or a stored user.
        #[test]
        fn only_what_a_check_can_reach_is_given_and_decides_the_same(
            groups in prop::collection::vec(stored(), 0..6),
            users in prop::collection::vec(stored(), 0..4),
            texts in prop::collection::vec(policy(), 1..6),
            caller_groups in prop::collection::vec(0usize..6, 0..3),
            principal_user in prop::option::of(0usize..5),
            resource_groups in prop::collection::vec(0usize..6, 0..2),
        ) {
            let mut entities: Vec<Entity> = groups
                .iter()
                .enumerate()
                .map(|(i, g)| stored_entity(uid("Group", &format!("g{i}")), g, i))
                .collect();
            entities.extend(users.iter().enumerate().map(|(i, u)| stored_entity(uid("User", &format!("u{i}")), u, groups.len())));
            entities.push(Entity::new_no_attrs(uid("Action", "read"), HashSet::new()));
            let base = Entities::from_entities(entities, None).unwrap();
            let policies = cedar_policy::PolicySet::from_str(&texts.concat()).unwrap();
            let types: Vec<EntityTypeName> =
                ["Workload", "HttpRequest"].iter().map(|t| EntityTypeName::from_str(t).unwrap()).collect();
            let types: Vec<&EntityTypeName> = types.iter().collect();
            let reduced = EntityStore::for_policies(base.clone(), &types, policies.as_ref());
            let whole = EntityStore::new(base, &types);
            let group = |i: &usize| uid("Group", &format!("g{i}"));
            let added = vec![
                Entity::new_no_attrs(uid("Workload", "w"), caller_groups.iter().map(group).collect()).as_ref().clone(),
                Entity::new_no_attrs(uid("HttpRequest", "request"), resource_groups.iter().map(group).collect()).as_ref().clone(),
            ];
            let principal = principal_user.map_or(uid("Workload", "w"), |k| uid("User", &format!("u{k}")));
            let ours = reduced.with_request(added.iter().map(|e| reduced.close(e.clone())).collect(), Some(principal.as_ref())).unwrap();
            let plain = whole.with_request_recomputed(added).unwrap();
            let request = cedar_policy::Request::new(
                principal,
                uid("Action", "read"),
                uid("HttpRequest", "request"),
                cedar_policy::Context::empty(),
                None,
            ).unwrap();
            let authorizer = cedar_policy::Authorizer::new();
            let (a, b) = (authorizer.is_authorized(&request, &policies, &ours), authorizer.is_authorized(&request, &policies, &plain));
            let sorted = |r: &cedar_policy::Response| {
                let mut reasons: Vec<String> = r.diagnostics().reason().map(ToString::to_string).collect();
                let mut errors: Vec<String> = r.diagnostics().errors().map(ToString::to_string).collect();
                reasons.sort();
                errors.sort();
                (reasons, errors)
            };
            prop_assert_eq!(a.decision(), b.decision());
            prop_assert_eq!(sorted(&a), sorted(&b));
            // And it is a part of the whole store, never a different entity.
            for entity in ours.iter() {
                let other = plain.get(&entity.uid());
                prop_assert!(other.is_some_and(|o| o.as_ref().deep_eq(entity.as_ref())), "{}", entity.uid());
            }
        }
    }

    #[test]
    fn a_request_entity_that_is_a_parent_in_the_base_store_recomputes_the_closure() {
        let types: Vec<EntityTypeName> = ["Workload"].iter().map(|t| EntityTypeName::from_str(t).unwrap()).collect();
        let child = Entity::new_no_attrs(uid("Group", "child"), [uid("Workload", "w")].into());
        let group = Entity::new_no_attrs(uid("Group", "g"), HashSet::new());
        let base = Entities::from_entities([child, group], None).unwrap();
        let store = EntityStore::new(base, &types.iter().collect::<Vec<_>>());
        assert!(!store.adds_leaves());
        // The workload now joins a group: its stored child must inherit it.
        let added = vec![Entity::new_no_attrs(uid("Workload", "w"), [uid("Group", "g")].into()).as_ref().clone()];
        let closed = added.iter().map(|e| store.close(e.clone())).collect();
        let built = store.with_request(closed, None).unwrap();
        assert_same(&built, &store.with_request_recomputed(added).unwrap());
        let child = built.get(&uid("Group", "child")).unwrap();
        assert!(child.as_ref().ancestors().any(|a| a == uid("Group", "g").as_ref()));
    }

    #[test]
    fn added_entities_with_parents_among_themselves_recompute_the_closure() {
        let types: Vec<EntityTypeName> =
            ["Workload", "Group"].iter().map(|t| EntityTypeName::from_str(t).unwrap()).collect();
        let top = Entity::new_no_attrs(uid("Group", "top"), HashSet::new());
        let store = EntityStore::new(Entities::from_entities([top], None).unwrap(), &types.iter().collect::<Vec<_>>());
        let added = vec![
            Entity::new_no_attrs(uid("Workload", "w"), [uid("Group", "mid")].into()).as_ref().clone(),
            Entity::new_no_attrs(uid("Group", "mid"), [uid("Group", "top")].into()).as_ref().clone(),
        ];
        let closed = added.iter().map(|e| store.close(e.clone())).collect();
        let built = store.with_request(closed, None).unwrap();
        assert_same(&built, &store.with_request_recomputed(added).unwrap());
        let w = built.get(&uid("Workload", "w")).unwrap();
        assert!(w.as_ref().ancestors().any(|a| a == uid("Group", "top").as_ref()));
    }
}
