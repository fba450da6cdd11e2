//! Evaluation that does not grow with policies that cannot apply.
//!
//! Cedar evaluates every policy in the set it is given. Most policies in a mesh name
//! one action (or action group) and often one principal in their scope, and a
//! policy whose scope cannot match the request can never be satisfied and never
//! error (the scope is checked before the condition). So at load the set is split
//! by action and, within an action, by `principal == …`; a request is evaluated
//! against the policies for its action that name no principal plus those naming its
//! principal, and the two answers are combined exactly as Cedar combines policies:
//! a satisfied forbid denies, otherwise a satisfied permit allows.

use std::collections::{HashMap, HashSet};

use crate::policy::reads::Relevance;
use cedar_policy::{
    ActionConstraint, Authorizer, Decision as CedarDecision, Entities, EntityUid, Policy, PolicyId, PolicySet,
    PrincipalConstraint, Request, Response,
};

/// What Cedar said about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Determining policies, sorted: the permits that allowed or the forbids that
    /// denied (none for a default deny).
    pub policies: Vec<String>,
    /// Policies whose condition failed to evaluate (`id: kind`), sorted.
    pub errors: Vec<String>,
    /// A forbid failed to evaluate: it might have applied, so the caller denies.
    pub forbid_failed: bool,
}

/// The policies of one action.
#[derive(Debug, Default)]
struct ActionPolicies {
    /// Policies for this action whose principal scope is not `==` (any, `in`, `is`).
    common: PolicySet,
    common_relevance: Option<Relevance>,
    /// Policies for this action with `principal == <uid>`, by that uid, with what
    /// they and the common ones can read.
    by_principal: HashMap<EntityUid, (PolicySet, Relevance)>,
}

/// The policy set split by action and principal.
#[derive(Debug)]
pub struct PolicyIndex {
    by_action: HashMap<EntityUid, ActionPolicies>,
    /// The whole set, for an action the index was not built for.
    all: PolicySet,
    all_relevance: Relevance,
    forbid_ids: HashSet<PolicyId>,
}

impl PolicyIndex {
    /// Splits `policies` for each of `actions`; `action_entities` is the schema's
    /// action hierarchy (`Schema::action_entities`), which decides `action in …`.
    pub fn build<'a>(
        policies: &PolicySet,
        actions: impl IntoIterator<Item = &'a EntityUid>,
        action_entities: &Entities,
    ) -> Result<PolicyIndex, String> {
        // What each policy reads, computed once (it walks the policy's JSON form).
        let reads: HashMap<&PolicyId, Relevance> =
            policies.policies().map(|p| (p.id(), Relevance::of(std::iter::once(p)))).collect();
        let relevance_of = |set: &PolicySet| {
            set.policies().filter_map(|p| reads.get(p.id())).fold(Relevance::none(), |acc, r| acc.union(r))
        };
        let mut by_action = HashMap::new();
        for action in actions {
            let mut this: HashSet<&EntityUid> =
                action_entities.ancestors(action).into_iter().flatten().collect::<HashSet<_>>();
            this.insert(action);
            let mut split = ActionPolicies::default();
            let mut by_principal: HashMap<EntityUid, PolicySet> = HashMap::new();
            for policy in policies.policies() {
                let applies = match policy.action_constraint() {
                    ActionConstraint::Any => true,
                    ActionConstraint::Eq(uid) => uid == *action,
                    ActionConstraint::In(uids) => uids.iter().any(|uid| this.contains(uid)),
                };
                if !applies {
                    continue;
                }
                let target = match policy.principal_constraint() {
                    PrincipalConstraint::Eq(uid) => by_principal.entry(uid).or_default(),
                    _ => &mut split.common,
                };
                add(target, policy)?;
            }
            let common = relevance_of(&split.common);
            split.by_principal = by_principal
                .into_iter()
                .map(|(uid, set)| {
                    let relevance = common.union(&relevance_of(&set));
                    (uid, (set, relevance))
                })
                .collect();
            split.common_relevance = Some(common);
            by_action.insert(action.clone(), split);
        }
        let forbid_ids = policies
            .policies()
            .filter(|p| p.effect() == cedar_policy::Effect::Forbid)
            .map(|p| p.id().clone())
            .collect();
        let all_relevance = relevance_of(policies);
        Ok(PolicyIndex { by_action, all: policies.clone(), all_relevance, forbid_ids })
    }

    /// What the policies that can apply to `action` by `principal` can read.
    pub fn relevance(&self, action: &EntityUid, principal: &EntityUid) -> &Relevance {
        let Some(split) = self.by_action.get(action) else { return &self.all_relevance };
        match split.by_principal.get(principal) {
            Some((_, relevance)) => relevance,
            None => split.common_relevance.as_ref().unwrap_or(&self.all_relevance),
        }
    }

    /// How many policies a request for `action` by `principal` is evaluated against.
    pub fn candidates(&self, action: &EntityUid, principal: &EntityUid) -> usize {
        match self.by_action.get(action) {
            Some(split) => {
                split.common.policies().count()
                    + split.by_principal.get(principal).map_or(0, |(set, _)| set.policies().count())
            }
            None => self.all.policies().count(),
        }
    }

    /// Decides `request` as Cedar would with the whole set.
    pub fn evaluate(&self, authorizer: &Authorizer, request: &Request, entities: &Entities) -> Verdict {
        let (Some(action), Some(principal)) = (request.action(), request.principal()) else {
            return self.verdict(&[authorizer.is_authorized(request, &self.all, entities)]);
        };
        match self.by_action.get(action) {
            None => self.verdict(&[authorizer.is_authorized(request, &self.all, entities)]),
            Some(split) => match split.by_principal.get(principal) {
                None => self.verdict(&[authorizer.is_authorized(request, &split.common, entities)]),
                Some((own, _)) => self.verdict(&[
                    authorizer.is_authorized(request, &split.common, entities),
                    authorizer.is_authorized(request, own, entities),
                ]),
            },
        }
    }

    /// Combines answers over disjoint parts of the set: a satisfied forbid in any
    /// part denies (Cedar then reports the satisfied forbids), otherwise a satisfied
    /// permit in any part allows (reporting the satisfied permits).
    fn verdict(&self, responses: &[Response]) -> Verdict {
        let mut forbids = Vec::new();
        let mut permits = Vec::new();
        let mut errors = Vec::new();
        let mut forbid_failed = false;
        for response in responses {
            let reasons = response.diagnostics().reason().map(ToString::to_string);
            match response.decision() {
                CedarDecision::Deny => forbids.extend(reasons),
                CedarDecision::Allow => permits.extend(reasons),
            }
            for error in response.diagnostics().errors() {
                let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = error;
                forbid_failed |= self.forbid_ids.contains(e.policy_id());
                errors.push(format!("{}: {}", e.policy_id(), error_kind(e.inner())));
            }
        }
        let allowed = forbids.is_empty() && !permits.is_empty();
        let mut policies = if forbids.is_empty() { permits } else { forbids };
        policies.sort_unstable();
        errors.sort_unstable();
        Verdict { allowed, policies, errors, forbid_failed }
    }
}

/// What kind of evaluation error this is (`integer_overflow`, `entity_attr_does_not_exist`,
/// ...), from the error's variant name. Cedar's messages quote the values involved,
/// which come from the request (headers, claims): those never reach logs or audit
/// records, only the policy id and this kind.
fn error_kind(error: &impl std::fmt::Debug) -> String {
    let debug = format!("{error:?}");
    let variant = debug
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .find(|word| !word.is_empty() && *word != "EvaluationError")
        .unwrap_or("evaluation_error");
    let mut kind = String::with_capacity(variant.len() + 4);
    for (i, c) in variant.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            kind.push('_');
        }
        kind.push(c.to_ascii_lowercase());
    }
    kind
}

fn add(set: &mut PolicySet, policy: &Policy) -> Result<(), String> {
    set.add(policy.clone()).map_err(|e| format!("indexing policy `{}`: {e}", policy.id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    const SCHEMA: &str = r#"
        entity User;
        entity Doc;
        action read appliesTo { principal: User, resource: Doc };
        action get in [read] appliesTo { principal: User, resource: Doc };
        action put appliesTo { principal: User, resource: Doc };
    "#;

    fn uid(s: &str) -> EntityUid {
        EntityUid::from_str(s).unwrap()
    }

    /// Every request is decided the same by the index as by Cedar over the whole set.
    #[test]
    fn index_agrees_with_the_whole_set() {
        let (schema, _) = cedar_policy::Schema::from_cedarschema_str(SCHEMA).unwrap();
        let policies = PolicySet::from_str(
            r#"
            @id("alice-get") permit (principal == User::"alice", action == Action::"get", resource);
            @id("readers") permit (principal, action in Action::"read", resource);
            @id("no-bob") forbid (principal == User::"bob", action, resource);
            @id("put-any") permit (principal, action == Action::"put", resource) when { resource == Doc::"open" };
            @id("carol-any") permit (principal == User::"carol", action, resource);
            @id("no-secret") forbid (principal, action, resource == Doc::"secret") unless { principal == User::"carol" };
            "#,
        )
        .unwrap();
        let actions = [uid(r#"Action::"read""#), uid(r#"Action::"get""#), uid(r#"Action::"put""#)];
        let index = PolicyIndex::build(&policies, &actions, &schema.action_entities().unwrap()).unwrap();
        let authorizer = Authorizer::new();
        let entities = Entities::empty();
        for principal in ["alice", "bob", "carol", "dave"] {
            for action in &actions {
                for resource in ["open", "secret", "other"] {
                    let request = Request::new(
                        uid(&format!("User::\"{principal}\"")),
                        action.clone(),
                        uid(&format!("Doc::\"{resource}\"")),
                        cedar_policy::Context::empty(),
                        None,
                    )
                    .unwrap();
                    let whole = authorizer.is_authorized(&request, &policies, &entities);
                    let mut expected: Vec<String> = whole.diagnostics().reason().map(ToString::to_string).collect();
                    expected.sort();
                    let got = index.evaluate(&authorizer, &request, &entities);
                    assert_eq!(got.allowed, whole.decision() == CedarDecision::Allow, "{request}");
                    assert_eq!(got.policies, expected, "{request}");
                }
            }
        }
        // alice's `get` is evaluated against her own policy and the common ones only.
        assert_eq!(index.candidates(&actions[1], &uid(r#"User::"alice""#)), 3);
        assert_eq!(index.candidates(&actions[2], &uid(r#"User::"dave""#)), 2);
    }

    /// Evaluation errors name the policy and the kind of error, never the request
    /// values Cedar's message quotes.
    #[test]
    fn evaluation_errors_carry_no_request_values() {
        let (schema, _) = cedar_policy::Schema::from_cedarschema_str(SCHEMA).unwrap();
        let policies = PolicySet::from_str(
            r#"
            @id("reads-missing") forbid (principal, action, resource) when { context.rec.missing == "x" };
            @id("overflows") permit (principal, action, resource) when { context.n + 9223372036854775807 > 0 };
            "#,
        )
        .unwrap();
        let actions = [uid(r#"Action::"get""#)];
        let index = PolicyIndex::build(&policies, &actions, &schema.action_entities().unwrap()).unwrap();
        let context =
            cedar_policy::Context::from_json_str(r#"{"rec": {"secret": "hunter2"}, "n": 424242}"#, None).unwrap();
        let request =
            Request::new(uid(r#"User::"alice""#), actions[0].clone(), uid(r#"Doc::"d""#), context, None).unwrap();
        let verdict = index.evaluate(&Authorizer::new(), &request, &Entities::empty());
        assert!(verdict.forbid_failed);
        // (`PolicySet::from_str` names them policy0, policy1 in order.)
        assert_eq!(verdict.errors, vec!["policy0: record_attr_does_not_exist", "policy1: integer_overflow"]);
        for error in &verdict.errors {
            assert!(!error.contains("hunter2") && !error.contains("424242"), "{error}");
        }
    }

    /// A policy that reads the time only makes the time relevant where it can apply.
    #[test]
    fn relevance_is_per_action_and_principal() {
        let (schema, _) = cedar_policy::Schema::from_cedarschema_str(SCHEMA).unwrap();
        let policies = PolicySet::from_str(
            r#"
            @id("office-hours") permit (principal == User::"alice", action == Action::"put", resource)
              when { context has now && context.now > 0 };
            @id("clock") permit (principal == User::"bob", action == Action::"get", resource)
              when { context.time > 0 };
            "#,
        );
        // `context.time` is not in this test schema's context: only parsing matters.
        let policies = policies.unwrap();
        let actions = [uid(r#"Action::"get""#), uid(r#"Action::"put""#)];
        let index = PolicyIndex::build(&policies, &actions, &schema.action_entities().unwrap()).unwrap();
        assert!(index.relevance(&actions[0], &uid(r#"User::"bob""#)).time);
        assert!(!index.relevance(&actions[0], &uid(r#"User::"alice""#)).time);
        assert!(!index.relevance(&actions[1], &uid(r#"User::"alice""#)).time);
        assert!(!index.relevance(&actions[1], &uid(r#"User::"bob""#)).time);
    }
}
