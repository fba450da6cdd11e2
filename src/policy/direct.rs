//! A Check's policies decided on its facts (`policy::interpret`), without building
//! the Cedar request and entity store: what those would hold is answered here, one
//! read at a time, by the same makers `RequestFacts::build` uses
//! (`resource_attribute`, `context_attribute`, `tag`, `request::workload_entity`),
//! and each entity is looked up in the order the store is built (the request's own
//! entities before `entities.json`'s, as they replace stored ones of the same uid).

use std::sync::Arc;
use std::time::SystemTime;

use cedar_policy_core::ast::{self, EntityUID, PartialValue, Value};
use cedar_policy_core::entities::Dereference;

use crate::policy::index::Verdict;
use crate::policy::interpret::{Facts, Lookup, Undecided};
use crate::policy::request::{self, RequestFacts};
use crate::policy::values;

/// The verdict of `facts`' policies at `now`, as `PolicyIndex::evaluate` gives it
/// on `facts.build(now)`; `None` where Cedar's evaluator must decide.
pub fn decide(facts: &RequestFacts<'_>, now: SystemTime) -> Option<Verdict> {
    let snapshot = facts.snapshot;
    // Where request entities are not leaves of `entities.json`, Cedar recomputes
    // the store's closure per Check, and ancestors are not what `close` gives.
    if !snapshot.entities.adds_leaves() {
        return None;
    }
    let workload = request::workload_entity(facts.peer, snapshot).ok()?;
    let view = Direct { facts, now, workload, bare_user: facts.principal_is_unlisted_user() };
    snapshot.index.evaluate_interpreted(facts.action, &facts.principal, &view)
}

struct Direct<'r, 'a> {
    facts: &'r RequestFacts<'a>,
    now: SystemTime,
    /// The caller, as the store holds it (closed over `entities.json`).
    workload: Arc<ast::Entity>,
    /// `RequestFacts::principal_is_unlisted_user`.
    bare_user: bool,
}

/// Which entity of the request's store a uid names.
enum Found<'e> {
    Resource,
    /// The headers, query or route entity, with the pairs its tags are made of.
    Tags(&'e [(String, String)]),
    Stored(&'e ast::Entity),
    BareUser,
    Missing,
}

impl Direct<'_, '_> {
    fn find(&self, uid: &EntityUID) -> Result<Found<'_>, Undecided> {
        if uid == self.resource() {
            return Ok(Found::Resource);
        }
        if let Some((_, pairs)) = self.facts.tag_sources().into_iter().find(|(tags, _)| uid == tags.as_ref()) {
            return Ok(Found::Tags(pairs));
        }
        if uid == self.workload.uid() {
            return Ok(Found::Stored(&self.workload));
        }
        if self.bare_user && uid == self.facts.principal.as_ref() {
            return Ok(Found::BareUser);
        }
        match self.facts.snapshot.entities.base().as_ref().entity(uid) {
            Dereference::Data(entity) => Ok(Found::Stored(entity)),
            Dereference::NoSuchEntity => Ok(Found::Missing),
            Dereference::Residual(_) => Err(Undecided),
        }
    }

    /// `resource in ancestor`, for an ancestor other than itself: the resource's
    /// parents are the prefixes of its path, with their own ancestors from
    /// `entities.json` (`EntityStore::close`).
    fn resource_in(&self, ancestor: &EntityUID) -> Result<bool, Undecided> {
        let snapshot = self.facts.snapshot;
        let path_type: &ast::EntityType = snapshot.types.path.as_ref();
        let mut prefixes = self.facts.path.prefixes();
        if ancestor.entity_type() == path_type
            && prefixes.any(|prefix| prefix == <_ as AsRef<str>>::as_ref(ancestor.eid()))
        {
            return Ok(true);
        }
        if !snapshot.entities.holds(path_type) {
            return Ok(false);
        }
        for prefix in self.facts.path.prefixes() {
            let parent = request::path_uid(&snapshot.types, prefix);
            match snapshot.entities.base().as_ref().entity(&parent) {
                Dereference::Data(parent) if parent.is_descendant_of(ancestor) => return Ok(true),
                Dereference::Data(_) | Dereference::NoSuchEntity => {}
                Dereference::Residual(_) => return Err(Undecided),
            }
        }
        Ok(false)
    }
}

/// What a stored entity holds under an attribute or tag name.
fn stored(value: Option<&PartialValue>) -> Result<Lookup, Undecided> {
    match value {
        Some(PartialValue::Value(value)) => Ok(Lookup::Found(value.clone())),
        Some(PartialValue::Residual(_)) => Err(Undecided),
        None => Ok(Lookup::Absent),
    }
}

impl Facts for Direct<'_, '_> {
    fn principal(&self) -> &EntityUID {
        self.facts.principal.as_ref()
    }

    fn action(&self) -> &EntityUID {
        self.facts.action.as_ref()
    }

    fn resource(&self) -> &EntityUID {
        self.facts.snapshot.types.request.resource.as_ref()
    }

    fn context_attr(&self, name: &str) -> Result<Option<Value>, Undecided> {
        self.facts.context_attribute(name, self.workload.uid(), self.now).map_err(|_| Undecided)
    }

    fn context(&self) -> Result<Value, Undecided> {
        let fields = self.facts.context_fields(self.workload.uid(), self.now).map_err(|_| Undecided)?;
        Ok(values::record(fields))
    }

    fn attr(&self, entity: &EntityUID, name: &str) -> Result<Lookup, Undecided> {
        Ok(match self.find(entity)? {
            Found::Resource => self.facts.resource_attribute(name).map_or(Lookup::Absent, Lookup::Found),
            Found::Tags(_) | Found::BareUser => Lookup::Absent,
            Found::Stored(stored_entity) => stored(stored_entity.get(name))?,
            Found::Missing => Lookup::NoEntity,
        })
    }

    fn tag(&self, entity: &EntityUID, name: &str) -> Result<Lookup, Undecided> {
        Ok(match self.find(entity)? {
            Found::Tags(pairs) => {
                self.facts.read_tag(pairs, name).map_or(Lookup::Absent, |v| Lookup::Found(values::string(&v)))
            }
            Found::Resource | Found::BareUser => Lookup::Absent,
            Found::Stored(stored_entity) => stored(stored_entity.get_tag(name))?,
            Found::Missing => Lookup::NoEntity,
        })
    }

    fn is_in(&self, entity: &EntityUID, ancestor: &EntityUID) -> Result<bool, Undecided> {
        if entity == ancestor {
            return Ok(true);
        }
        match self.find(entity)? {
            Found::Resource => self.resource_in(ancestor),
            Found::Stored(stored_entity) => Ok(stored_entity.is_descendant_of(ancestor)),
            Found::Tags(_) | Found::BareUser | Found::Missing => Ok(false),
        }
    }
}
