//! Evaluation that does not grow with policies that cannot apply.
//!
//! Cedar evaluates every policy in the set it is given. Most policies in a mesh name
//! one action (or action group) and often one principal in their scope, and a
//! policy whose scope cannot match the request can never be satisfied and never
//! error (the scope is checked before the condition). So at load the set is split
//! by action and, within an action, by `principal == …`; a request is evaluated
//! against the policies for its action that name no principal plus those naming its
//! principal, and the answers are combined exactly as Cedar's authorizer combines
//! policies: a satisfied forbid denies, otherwise a satisfied permit allows, and a
//! policy that errors is skipped (and reported).
//!
//! Each policy is evaluated as Cedar's authorizer evaluates it (scope, then
//! condition): by `policy::interpret` on the request's facts where every one of a
//! request's policies can be decided that way (`evaluate_interpreted`), otherwise
//! by Cedar's own evaluator, one for all the policies a request is put to. The index holds each policy once, shared by reference between the
//! parts it belongs to: 10,000 policies naming one principal each cost 6 MiB of
//! index (each principal's own Cedar `PolicySet` had cost 24 MiB).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::policy::interpret;
use crate::policy::reads::Relevance;
use cedar_policy::{ActionConstraint, Entities, EntityUid, Policy, PolicySet, PrincipalConstraint, Request};
use cedar_policy_core::ast;
use cedar_policy_core::evaluator::Evaluator;
use cedar_policy_core::extensions::Extensions;

/// What Cedar said about one request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Verdict {
    pub allowed: bool,
    /// Determining policies, sorted: the permits that allowed or the forbids that
    /// denied (none for a default deny). Shared: a cache hit hands out the
    /// cached lists without copying them.
    pub policies: Arc<[String]>,
    /// Policies whose condition failed to evaluate (`id: kind`), sorted.
    pub errors: Arc<[String]>,
    /// A forbid failed to evaluate: it might have applied, so the caller denies.
    pub forbid_failed: bool,
}

/// The policies of one action that name no single principal (any, `in`, `is`).
#[derive(Debug)]
struct ActionPolicies {
    common: Vec<Arc<ast::Policy>>,
    /// What the common policies can read.
    relevance: Relevance,
    /// Every common policy can be put to `interpret`.
    interpretable: bool,
}

/// The policies naming one principal (`principal == <uid>`).
#[derive(Debug)]
struct PrincipalPolicies {
    /// Those that apply to each action slot with any, by slot: most principals'
    /// policies name one action or group, and 10,000 principals holding an entry
    /// for every slot had been 1.7 MiB of empty ones. Slots given the same
    /// policies share one list (a policy for `action in Action::"read"` is kept
    /// once for GET, HEAD and OPTIONS), and a request is evaluated against only
    /// the policies its action can match.
    by_slot: Box<[Own]>,
}

/// A principal's own policies for one action.
#[derive(Debug)]
struct Own {
    policies: Arc<[Arc<ast::Policy>]>,
    /// What these and the action's common policies can read. Equal ones are one
    /// copy: most principals' policies read nothing the common ones do not, and
    /// 10,000 principals times their action slots each holding a set of tag
    /// names had been a tenth of the index's memory.
    relevance: Arc<Relevance>,
    /// The action slot.
    slot: usize,
    /// Every one of these policies can be put to `interpret`.
    interpretable: bool,
}

/// The policy set split by action and principal.
#[derive(Debug)]
pub struct PolicyIndex {
    /// The slot of each action the index was built for.
    slots: HashMap<EntityUid, usize>,
    by_action: Vec<ActionPolicies>,
    by_principal: HashMap<EntityUid, PrincipalPolicies>,
    /// The whole set, for an action the index was not built for.
    all: Vec<Arc<ast::Policy>>,
    all_relevance: Relevance,
}

impl PolicyIndex {
    /// Splits `policies` for each of `actions`; `action_entities` is the schema's
    /// action hierarchy (`Schema::action_entities`), which decides `action in …`.
    pub fn build<'a>(
        policies: &PolicySet,
        actions: impl IntoIterator<Item = &'a EntityUid>,
        action_entities: &Entities,
    ) -> PolicyIndex {
        // Each action, with itself and the actions it is `in` (for `action in [...]`).
        let actions: Vec<(&EntityUid, HashSet<&EntityUid>)> = actions
            .into_iter()
            .map(|action| {
                let mut within: HashSet<&EntityUid> = action_entities.ancestors(action).into_iter().flatten().collect();
                within.insert(action);
                (action, within)
            })
            .collect();
        let slots = actions.iter().enumerate().map(|(slot, (action, _))| ((*action).clone(), slot)).collect();
        let applies = |policy: &Policy| -> Vec<bool> {
            let scope = policy.action_constraint();
            let applies_to = |(action, within): &(&EntityUid, HashSet<&EntityUid>)| match &scope {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(uid) => uid == *action,
                ActionConstraint::In(uids) => uids.iter().any(|uid| within.contains(uid)),
            };
            actions.iter().map(applies_to).collect()
        };

        let mut by_action: Vec<ActionPolicies> = actions
            .iter()
            .map(|_| ActionPolicies { common: Vec::new(), relevance: Relevance::none(), interpretable: true })
            .collect();
        // Per principal and action slot, the indexes of its policies that apply.
        let mut own: HashMap<EntityUid, Vec<Vec<usize>>> = HashMap::new();
        // Each principal-scoped policy, with what it reads and whether `interpret` takes it.
        let mut indexed: Vec<(Arc<ast::Policy>, Relevance, bool)> = Vec::new();
        let mut all = Vec::new();
        let mut all_relevance = Relevance::none();
        for policy in policies.policies() {
            let shared: Arc<ast::Policy> = Arc::new(policy.as_ref().clone());
            all.push(Arc::clone(&shared));
            // What the policy reads, computed once (it walks the policy's JSON form).
            let reads = Relevance::of(std::iter::once(policy));
            all_relevance = all_relevance.union(&reads);
            let applying = applies(policy);
            let interpretable = interpret::interpretable(policy.as_ref());
            if !applying.contains(&true) {
                continue;
            }
            match policy.principal_constraint() {
                PrincipalConstraint::Eq(uid) => {
                    let slots = own.entry(uid).or_insert_with(|| vec![Vec::new(); actions.len()]);
                    for (list, _) in slots.iter_mut().zip(&applying).filter(|(_, applies)| **applies) {
                        list.push(indexed.len());
                    }
                    indexed.push((shared, reads, interpretable));
                }
                _ => {
                    for (split, _) in by_action.iter_mut().zip(&applying).filter(|(_, applies)| **applies) {
                        split.common.push(Arc::clone(&shared));
                        split.relevance = split.relevance.union(&reads);
                        split.interpretable &= interpretable;
                    }
                }
            }
        }
        let mut by_principal: HashMap<EntityUid, PrincipalPolicies> = HashMap::new();
        let mut relevances: HashSet<Arc<Relevance>> = HashSet::new();
        for (uid, slots) in own {
            let mut shared: HashMap<Vec<usize>, Arc<[Arc<ast::Policy>]>> = HashMap::new();
            let mut by_slot = Vec::new();
            for (slot, (list, split)) in slots.into_iter().zip(&by_action).enumerate() {
                if list.is_empty() {
                    continue;
                }
                let chosen = || list.iter().filter_map(|i| indexed.get(*i));
                let relevance = chosen().fold(split.relevance.clone(), |acc, (_, reads, _)| acc.union(reads));
                let interpretable = chosen().all(|(_, _, interpretable)| *interpretable);
                let relevance = match relevances.get(&relevance) {
                    Some(shared) => Arc::clone(shared),
                    None => {
                        let relevance = Arc::new(relevance);
                        relevances.insert(Arc::clone(&relevance));
                        relevance
                    }
                };
                let policies = match shared.get(&list) {
                    Some(policies) => Arc::clone(policies),
                    None => {
                        let policies: Arc<[Arc<ast::Policy>]> = chosen().map(|(p, _, _)| Arc::clone(p)).collect();
                        shared.insert(list, Arc::clone(&policies));
                        policies
                    }
                };
                by_slot.push(Own { policies, relevance, slot, interpretable });
            }
            by_principal.insert(uid, PrincipalPolicies { by_slot: by_slot.into_boxed_slice() });
        }
        PolicyIndex { slots, by_action, by_principal, all, all_relevance }
    }

    /// The policies a request for `action` by `principal` is evaluated against:
    /// the action's common ones and the principal's own that apply to it, with
    /// what they can read; `None` for an action the index was not built for.
    fn parts(&self, action: &EntityUid, principal: Option<&EntityUid>) -> Option<(&ActionPolicies, Option<&Own>)> {
        let slot = *self.slots.get(action)?;
        let split = self.by_action.get(slot)?;
        let own = principal
            .and_then(|p| self.by_principal.get(p))
            .and_then(|own| own.by_slot.iter().find(|own| own.slot == slot));
        Some((split, own))
    }

    /// What the policies that can apply to `action` by `principal` can read.
    pub fn relevance(&self, action: &EntityUid, principal: &EntityUid) -> &Relevance {
        match self.parts(action, Some(principal)) {
            None => &self.all_relevance,
            Some((_, Some(own))) => &own.relevance,
            Some((split, None)) => &split.relevance,
        }
    }

    /// How many policies a request for `action` by `principal` is evaluated against.
    pub fn candidates(&self, action: &EntityUid, principal: &EntityUid) -> usize {
        match self.parts(action, Some(principal)) {
            None => self.all.len(),
            Some((split, own)) => split.common.len() + own.map_or(0, |own| own.policies.len()),
        }
    }

    /// Decides `request` as Cedar's authorizer would with the whole set.
    pub fn evaluate(&self, request: &Request, entities: &Entities) -> Verdict {
        let (first, second): (&[Arc<ast::Policy>], &[Arc<ast::Policy>]) =
            match request.action().and_then(|action| self.parts(action, request.principal())) {
                None => (&self.all, &[]),
                Some((split, None)) => (&split.common, &[]),
                Some((split, Some(own))) => (&split.common, &own.policies),
            };
        let evaluator = Evaluator::new(request.as_ref().clone(), entities.as_ref(), Extensions::all_available());
        let mut tally = Tally::default();
        for policy in first.iter().chain(second) {
            match evaluator.evaluate(policy) {
                Ok(satisfied) => tally.decided(policy, satisfied),
                Err(error) => tally.failed(policy, &error),
            }
        }
        tally.verdict()
    }

    /// Decides as `evaluate` does, each policy put to `interpret` on the
    /// request's `facts` instead of Cedar's evaluator on a built request. `None`
    /// where Cedar must decide: an action the index was not built for, a policy
    /// `interpret` cannot take, or one it leaves undecided (Cedar would raise an
    /// error there, which only its evaluator reports as it does).
    pub fn evaluate_interpreted(
        &self,
        action: &EntityUid,
        principal: &EntityUid,
        facts: &impl interpret::Facts,
    ) -> Option<Verdict> {
        let (split, own) = self.parts(action, Some(principal))?;
        if !split.interpretable || own.is_some_and(|own| !own.interpretable) {
            return None;
        }
        let own: &[Arc<ast::Policy>] = own.map_or(&[], |own| &own.policies);
        let mut tally = Tally::default();
        for policy in split.common.iter().chain(own) {
            tally.decided(policy, interpret::satisfied(policy, facts).ok()?);
        }
        Some(tally.verdict())
    }
}

/// The answers of a request's policies, combined as Cedar's authorizer combines
/// them: a satisfied forbid denies, otherwise a satisfied permit allows; a policy
/// that errors is skipped and reported.
#[derive(Default)]
struct Tally {
    forbids: Vec<String>,
    permits: Vec<String>,
    errors: Vec<String>,
    forbid_failed: bool,
}

impl Tally {
    fn decided(&mut self, policy: &ast::Policy, satisfied: bool) {
        match (satisfied, policy.effect()) {
            (true, ast::Effect::Forbid) => self.forbids.push(policy.id().to_string()),
            (true, ast::Effect::Permit) => self.permits.push(policy.id().to_string()),
            (false, _) => {}
        }
    }

    fn failed(&mut self, policy: &ast::Policy, error: &impl std::fmt::Debug) {
        self.forbid_failed |= policy.effect() == ast::Effect::Forbid;
        self.errors.push(format!("{}: {}", policy.id(), error_kind(error)));
    }

    fn verdict(self) -> Verdict {
        let Tally { forbids, permits, mut errors, forbid_failed } = self;
        let allowed = forbids.is_empty() && !permits.is_empty();
        let mut policies = if forbids.is_empty() { permits } else { forbids };
        policies.sort_unstable();
        errors.sort_unstable();
        Verdict { allowed, policies: policies.into(), errors: errors.into(), forbid_failed }
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

#[cfg(test)]
mod tests {
    use super::*;
    use cedar_policy::Authorizer;
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
        let index = PolicyIndex::build(&policies, &actions, &schema.action_entities().unwrap());
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
                    let got = index.evaluate(&request, &entities);
                    assert_eq!(got.allowed, whole.decision() == cedar_policy::Decision::Allow, "{request}");
                    assert_eq!(*got.policies, expected, "{request}");
                }
            }
        }
        // alice's `get` is evaluated against her own policy and the common ones only.
        assert_eq!(index.candidates(&actions[1], &uid(r#"User::"alice""#)), 3);
        assert_eq!(index.candidates(&actions[2], &uid(r#"User::"dave""#)), 2);
    }

    fn policy_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let effect = prop_oneof![Just("permit"), Just("forbid")];
        let principal = prop_oneof![
            Just("principal"),
            Just(r#"principal == User::"alice""#),
            Just(r#"principal == User::"bob""#),
            Just("principal is User"),
        ];
        let action = prop_oneof![
            Just("action"),
            Just(r#"action == Action::"get""#),
            Just(r#"action == Action::"put""#),
            Just(r#"action == Action::"read""#),
            Just(r#"action in Action::"read""#),
            Just(r#"action in [Action::"get", Action::"put"]"#),
        ];
        let resource = prop_oneof![Just("resource"), Just(r#"resource == Doc::"open""#)];
        let condition = prop_oneof![
            Just(""),
            Just(r#" when { resource == Doc::"open" }"#),
            Just(r#" unless { principal == User::"carol" }"#),
            Just(" when { context.n + 9223372036854775807 > 0 }"),
        ];
        (effect, principal, action, resource, condition).prop_map(|(e, p, a, r, c)| format!("{e} ({p}, {a}, {r}){c};"))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 500, failure_persistence: None, ..Default::default() })]
        /// For generated policy sets (scopes on principal, action and action
        /// groups, conditions that hold, fail or error), every request gets from
        /// the index exactly what Cedar gives over the whole set: the decision, the
        /// determining policies and the policies in error.
        #[test]
        fn the_index_decides_generated_sets_as_cedar_does(texts in proptest::collection::vec(policy_text(), 0..8)) {
            let (schema, _) = cedar_policy::Schema::from_cedarschema_str(SCHEMA).unwrap();
            let policies = PolicySet::from_str(&texts.concat()).unwrap();
            let actions = [uid(r#"Action::"read""#), uid(r#"Action::"get""#), uid(r#"Action::"put""#)];
            // Indexed for get and put only: `read` requests go through the whole set.
            let index = PolicyIndex::build(&policies, &actions[1..], &schema.action_entities().unwrap());
            let authorizer = Authorizer::new();
            let entities = Entities::empty();
            for principal in ["alice", "bob", "carol"] {
                for action in &actions {
                    for resource in ["open", "other"] {
                        let context = cedar_policy::Context::from_json_str(r#"{"n": 1}"#, None).unwrap();
                        let request = Request::new(
                            uid(&format!("User::\"{principal}\"")),
                            action.clone(),
                            uid(&format!("Doc::\"{resource}\"")),
                            context,
                            None,
                        )
                        .unwrap();
                        let whole = authorizer.is_authorized(&request, &policies, &entities);
                        let mut reasons: Vec<String> = whole.diagnostics().reason().map(ToString::to_string).collect();
                        reasons.sort();
                        let mut failed: Vec<String> = whole
                            .diagnostics()
                            .errors()
                            .map(|e| { let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = e; e.policy_id().to_string() })
                            .collect();
                        failed.sort();
                        let got = index.evaluate(&request, &entities);
                        let got_failed: Vec<String> =
                            got.errors.iter().map(|e| e.split(':').next().unwrap_or_default().to_owned()).collect();
                        proptest::prop_assert_eq!(got.allowed, whole.decision() == cedar_policy::Decision::Allow, "{}", request);
                        proptest::prop_assert_eq!(&*got.policies, &reasons[..], "{}", request);
                        proptest::prop_assert_eq!(&got_failed, &failed, "{}", request);
                    }
                }
            }
        }
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
        let index = PolicyIndex::build(&policies, &actions, &schema.action_entities().unwrap());
        let context =
            cedar_policy::Context::from_json_str(r#"{"rec": {"secret": "hunter2"}, "n": 424242}"#, None).unwrap();
        let request =
            Request::new(uid(r#"User::"alice""#), actions[0].clone(), uid(r#"Doc::"d""#), context, None).unwrap();
        let verdict = index.evaluate(&request, &Entities::empty());
        assert!(verdict.forbid_failed);
        // (`PolicySet::from_str` names them policy0, policy1 in order.)
        assert_eq!(*verdict.errors, ["policy0: record_attr_does_not_exist", "policy1: integer_overflow"]);
        for error in verdict.errors.iter() {
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
        let index = PolicyIndex::build(&policies, &actions, &schema.action_entities().unwrap());
        assert!(index.relevance(&actions[0], &uid(r#"User::"bob""#)).time);
        assert!(!index.relevance(&actions[0], &uid(r#"User::"alice""#)).time);
        assert!(!index.relevance(&actions[1], &uid(r#"User::"alice""#)).time);
        assert!(!index.relevance(&actions[1], &uid(r#"User::"bob""#)).time);
    }
}
