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
    request_entities_are_leaves: bool,
}

impl EntityStore {
    /// `request_types`: every entity type a request adds to the store.
    pub fn new(base: Entities, request_types: &[&EntityTypeName]) -> Self {
        let types: Vec<&ast::EntityType> = request_types.iter().map(|t| t.as_ref()).collect();
        let request_entities_are_leaves =
            base.as_ref().iter().all(|e| e.ancestors().all(|a| !types.contains(&a.entity_type())));
        EntityStore { base, request_entities_are_leaves }
    }

    /// `entities.json` (and the schema's actions), transitively closed.
    pub fn base(&self) -> &Entities {
        &self.base
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

    /// The base store with the request's entities, each made by `close` (an entity
    /// of the same uid replaces the stored one, as Cedar's upsert does).
    pub fn with_request(&self, added: Vec<Arc<ast::Entity>>) -> Result<Entities, StoreError> {
        if !self.request_entities_are_leaves || has_parent_among(&added) {
            return self.with_request_recomputed(added.into_iter().map(Arc::unwrap_or_clone).collect());
        }
        self.base
            .as_ref()
            .clone()
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
            assert_same(&store.with_request(closed).unwrap(), &store.with_request_recomputed(added).unwrap());
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
        let built = store.with_request(closed).unwrap();
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
        let built = store.with_request(closed).unwrap();
        assert_same(&built, &store.with_request_recomputed(added).unwrap());
        let w = built.get(&uid("Workload", "w")).unwrap();
        assert!(w.as_ref().ancestors().any(|a| a == uid("Group", "top").as_ref()));
    }
}
