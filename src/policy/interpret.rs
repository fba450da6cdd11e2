//! Cedar's evaluation of a policy, on a request's facts, without building its
//! entities.
//!
//! Building the Cedar request, its context and the entity store it is evaluated
//! against was two thirds of an evaluated Check's pipeline (and Cedar's evaluator
//! assembles each policy's whole condition anew for every request). Most of what
//! it builds is never read: a policy reads a few attributes. This interpreter walks
//! each policy's own expression and asks the request (`Facts`) only for what it
//! reads, when it reads it.
//!
//! It is Cedar's semantics, not a second one: every operator on values is Cedar's
//! own function (`unary_app`, `binary_relation`, `binary_arith`, the extension
//! functions, `Pattern::wildcard_match`, value equality), and evaluation follows
//! Cedar's order and short-circuits (`&&`, `||`, `if`; both operands of a binary
//! operator before it). It never reports an error of its own: wherever Cedar's
//! evaluator would raise one (a missing attribute or tag, a type error, an
//! overflow, an extension's refusal), and for what it does not model (template
//! slots, unknowns, nesting deeper than `MAX_DEPTH`), it answers `Undecided`, and
//! the caller asks Cedar with the full request instead. So an answer from here is
//! one Cedar gives; tests decide generated policies and requests both ways.
//! An extension function of one literal (`duration("24h")`) is pure, so its value
//! is made once per thread (`values::literal_call`), not parsed per Check.

use cedar_policy_core::ast::{
    self, ActionConstraint, BinaryOp, EntityReference, EntityUID, ExprKind, Literal, PrincipalOrResourceConstraint,
    Value, ValueKind, Var,
};
use cedar_policy_core::evaluator::{binary_arith, binary_relation, unary_app};
use cedar_policy_core::extensions::Extensions;

use crate::policy::values;

/// Cedar must decide this one: it would raise an error here, or it is beyond
/// what this interpreter models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Undecided;

/// What a request holds under one attribute or tag name of an entity.
#[derive(Debug)]
pub enum Lookup {
    Found(Value),
    /// The entity exists without it.
    Absent,
    /// No such entity in the request's store.
    NoEntity,
}

/// The request, as an evaluation reads it. Implemented over a Check's facts
/// (`policy::request`), answering exactly what the Cedar request and entity
/// store built from the same facts hold.
pub trait Facts {
    fn principal(&self) -> &EntityUID;
    fn action(&self) -> &EntityUID;
    fn resource(&self) -> &EntityUID;
    /// `context.<name>`; `None` when the context has no such attribute.
    fn context_attr(&self, name: &str) -> Result<Option<Value>, Undecided>;
    /// The whole context record (for an expression that uses it as a value).
    fn context(&self) -> Result<Value, Undecided>;
    fn attr(&self, entity: &EntityUID, name: &str) -> Result<Lookup, Undecided>;
    fn tag(&self, entity: &EntityUID, name: &str) -> Result<Lookup, Undecided>;
    /// `entity in ancestor`: equal, or `ancestor` is among the entity's ancestors
    /// in the request's store.
    fn is_in(&self, entity: &EntityUID, ancestor: &EntityUID) -> Result<bool, Undecided>;
}

/// Expressions nested deeper are left to Cedar's evaluator, which checks its
/// stack as it recurses; this one recurses too, and must never overflow it.
const MAX_DEPTH: usize = 128;

/// Whether `policy` can be put to this interpreter at all: a static policy (no
/// template slots) whose condition names no unknown. Worked out once per load, so
/// a set that cannot be interpreted does not pay for trying on every request.
pub fn interpretable(policy: &ast::Policy) -> bool {
    let names_no_unknown = |condition: &ast::Expr| {
        condition.subexpressions().all(|e| !matches!(e.expr_kind(), ExprKind::Slot(_) | ExprKind::Unknown(_)))
    };
    policy.env().is_empty()
        && policy.template().slots().next().is_none()
        && policy.non_scope_constraints().is_none_or(names_no_unknown)
}

/// Whether `policy` is satisfied by the request: its scope, then its condition,
/// as Cedar's `Evaluator::evaluate` decides it.
pub fn satisfied(policy: &ast::Policy, facts: &impl Facts) -> Result<bool, Undecided> {
    let template = policy.template();
    let satisfied = scope(template.principal_constraint().as_inner(), facts.principal(), facts)?
        && action(template.action_constraint(), facts)?
        && scope(template.resource_constraint().as_inner(), facts.resource(), facts)?;
    if !satisfied {
        return Ok(false);
    }
    match policy.non_scope_constraints() {
        None => Ok(true),
        Some(condition) => boolean(&Interpreter { facts }.value(condition, 0)?),
    }
}

/// A principal or resource scope: `==`, `in`, `is`, `is … in`, or any.
fn scope(constraint: &PrincipalOrResourceConstraint, var: &EntityUID, facts: &impl Facts) -> Result<bool, Undecided> {
    Ok(match constraint {
        PrincipalOrResourceConstraint::Any => true,
        PrincipalOrResourceConstraint::Eq(reference) => var == named(reference)?,
        PrincipalOrResourceConstraint::In(reference) => facts.is_in(var, named(reference)?)?,
        PrincipalOrResourceConstraint::Is(entity_type) => var.entity_type() == entity_type.as_ref(),
        PrincipalOrResourceConstraint::IsIn(entity_type, reference) => {
            var.entity_type() == entity_type.as_ref() && facts.is_in(var, named(reference)?)?
        }
    })
}

fn named(reference: &EntityReference) -> Result<&EntityUID, Undecided> {
    match reference {
        EntityReference::EUID(uid) => Ok(uid),
        EntityReference::Slot(_) => Err(Undecided),
    }
}

fn action(constraint: &ActionConstraint, facts: &impl Facts) -> Result<bool, Undecided> {
    match constraint {
        ActionConstraint::Any => Ok(true),
        ActionConstraint::Eq(uid) => Ok(facts.action() == uid.as_ref()),
        ActionConstraint::In(uids) => {
            for uid in uids {
                if facts.is_in(facts.action(), uid)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
    }
}

/// A value during evaluation: Cedar's, or the context, which is only built whole
/// when an expression uses it as a value (`context.x` and `context has x` read
/// one attribute).
enum Val {
    Value(Value),
    Context,
}

struct Interpreter<'f, F> {
    facts: &'f F,
}

impl<F: Facts> Interpreter<'_, F> {
    fn value(&self, expr: &ast::Expr, depth: usize) -> Result<Value, Undecided> {
        match self.eval(expr, depth)? {
            Val::Value(value) => Ok(value),
            Val::Context => self.facts.context(),
        }
    }

    fn eval(&self, expr: &ast::Expr, depth: usize) -> Result<Val, Undecided> {
        if depth > MAX_DEPTH {
            return Err(Undecided);
        }
        let depth = depth + 1;
        let value = |value: Value| Ok(Val::Value(value));
        match expr.expr_kind() {
            ExprKind::Lit(literal) => value(Value::from(literal.clone())),
            ExprKind::Var(Var::Principal) => value(Value::from(self.facts.principal().clone())),
            ExprKind::Var(Var::Action) => value(Value::from(self.facts.action().clone())),
            ExprKind::Var(Var::Resource) => value(Value::from(self.facts.resource().clone())),
            ExprKind::Var(Var::Context) => Ok(Val::Context),
            ExprKind::Slot(_) | ExprKind::Unknown(_) => Err(Undecided),
            ExprKind::If { test_expr, then_expr, else_expr } => {
                if boolean(&self.value(test_expr, depth)?)? {
                    self.eval(then_expr, depth)
                } else {
                    self.eval(else_expr, depth)
                }
            }
            ExprKind::And { left, right } => {
                value(Value::from(boolean(&self.value(left, depth)?)? && boolean(&self.value(right, depth)?)?))
            }
            ExprKind::Or { left, right } => {
                value(Value::from(boolean(&self.value(left, depth)?)? || boolean(&self.value(right, depth)?)?))
            }
            ExprKind::UnaryApp { op, arg } => {
                value(unary_app(*op, self.value(arg, depth)?, None).map_err(|_| Undecided)?)
            }
            ExprKind::BinaryApp { op, arg1, arg2 } => {
                let (left, right) = (self.value(arg1, depth)?, self.value(arg2, depth)?);
                value(self.binary(*op, left, right)?)
            }
            ExprKind::ExtensionFunctionApp { fn_name, args } => {
                let function = Extensions::all_available().func(fn_name).map_err(|_| Undecided)?;
                let call = |args: &[Value]| match function.call(args).map_err(|_| Undecided)? {
                    ast::PartialValue::Value(result) => Ok(result),
                    ast::PartialValue::Residual(_) => Err(Undecided),
                };
                if let [arg] = args.as_slice() {
                    if let ExprKind::Lit(literal) = arg.expr_kind() {
                        let literal_value = || call(&[Value::from(literal.clone())]);
                        return values::literal_call(fn_name, literal, literal_value).map(Val::Value);
                    }
                }
                let args = args.iter().map(|arg| self.value(arg, depth)).collect::<Result<Vec<_>, _>>()?;
                value(call(&args)?)
            }
            ExprKind::GetAttr { expr, attr } => match self.eval(expr, depth)? {
                Val::Context => self.facts.context_attr(attr)?.map(Val::Value).ok_or(Undecided),
                Val::Value(of) => match of.value_kind() {
                    ValueKind::Record(record) => record.get(attr).cloned().map(Val::Value).ok_or(Undecided),
                    ValueKind::Lit(Literal::EntityUID(uid)) => match self.facts.attr(uid, attr)? {
                        Lookup::Found(found) => value(found),
                        Lookup::Absent | Lookup::NoEntity => Err(Undecided),
                    },
                    _ => Err(Undecided),
                },
            },
            ExprKind::HasAttr { expr, attr } => value(Value::from(self.has(self.eval(expr, depth)?, attr)?.is_some())),
            ExprKind::ExtHasAttr { expr, attrs } => {
                // `e has a.b.c`: each step must be a record or an entity; a missing
                // one is `false`, the rest of the chain unread (Cedar's order).
                let mut current = self.eval(expr, depth)?;
                for attr in attrs.iter() {
                    match self.has(current, attr)? {
                        Some(next) => current = Val::Value(next),
                        None => return value(Value::from(false)),
                    }
                }
                value(Value::from(true))
            }
            ExprKind::Like { expr, pattern } => match self.value(expr, depth)?.value_kind() {
                ValueKind::Lit(Literal::String(s)) => value(Value::from(pattern.wildcard_match(s))),
                _ => Err(Undecided),
            },
            ExprKind::Is { expr, entity_type } => {
                value(Value::from(entity(&self.value(expr, depth)?)?.entity_type() == entity_type))
            }
            ExprKind::Set(items) => {
                let items = items.iter().map(|item| self.value(item, depth)).collect::<Result<Vec<_>, _>>()?;
                value(Value::set(items, None))
            }
            ExprKind::Record(fields) => {
                let fields = fields
                    .iter()
                    .map(|(name, field)| Ok((name.clone(), self.value(field, depth)?)))
                    .collect::<Result<Vec<_>, Undecided>>()?;
                value(Value::record(fields, None))
            }
        }
    }

    /// `of has attr`: the attribute's value when present (for a chain to go on
    /// from), `None` when absent; a record or an entity, or Cedar raises.
    fn has(&self, of: Val, attr: &str) -> Result<Option<Value>, Undecided> {
        match of {
            // `context has x` needs only whether `x` is there, but the chain of
            // `context has x.y` goes on from its value: build it then only.
            Val::Context => self.facts.context_attr(attr),
            Val::Value(of) => match of.value_kind() {
                ValueKind::Record(record) => Ok(record.get(attr).cloned()),
                ValueKind::Lit(Literal::EntityUID(uid)) => match self.facts.attr(uid, attr)? {
                    Lookup::Found(found) => Ok(Some(found)),
                    Lookup::Absent | Lookup::NoEntity => Ok(None),
                },
                _ => Err(Undecided),
            },
        }
    }

    fn binary(&self, op: BinaryOp, left: Value, right: Value) -> Result<Value, Undecided> {
        let extensions = Extensions::all_available();
        match op {
            BinaryOp::Eq | BinaryOp::Less | BinaryOp::LessEq => {
                binary_relation(op, &left, &right, extensions).map_err(|_| Undecided)
            }
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul => binary_arith(op, left, right, None).map_err(|_| Undecided),
            BinaryOp::In => {
                let uid = entity(&left)?;
                let within = match right.value_kind() {
                    ValueKind::Lit(Literal::EntityUID(ancestor)) => self.facts.is_in(uid, ancestor)?,
                    ValueKind::Set(set) => {
                        // Cedar checks every element is an entity before it looks.
                        let ancestors = set.iter().map(entity).collect::<Result<Vec<_>, _>>()?;
                        let mut within = false;
                        for ancestor in ancestors {
                            if self.facts.is_in(uid, ancestor)? {
                                within = true;
                                break;
                            }
                        }
                        within
                    }
                    _ => return Err(Undecided),
                };
                Ok(Value::from(within))
            }
            BinaryOp::Contains => Ok(Value::from(set(&left)?.contains(&right))),
            BinaryOp::ContainsAll => Ok(Value::from(set(&right)?.is_subset(set(&left)?))),
            BinaryOp::ContainsAny => Ok(Value::from(!set(&left)?.is_disjoint(set(&right)?))),
            BinaryOp::GetTag | BinaryOp::HasTag => {
                let uid = entity(&left)?;
                let ValueKind::Lit(Literal::String(tag)) = right.value_kind() else { return Err(Undecided) };
                match (op, self.facts.tag(uid, tag)?) {
                    (BinaryOp::GetTag, Lookup::Found(found)) => Ok(found),
                    (BinaryOp::GetTag, Lookup::Absent | Lookup::NoEntity) => Err(Undecided),
                    (_, found) => Ok(Value::from(matches!(found, Lookup::Found(_)))),
                }
            }
        }
    }
}

fn boolean(value: &Value) -> Result<bool, Undecided> {
    match value.value_kind() {
        ValueKind::Lit(Literal::Bool(b)) => Ok(*b),
        _ => Err(Undecided),
    }
}

fn entity(value: &Value) -> Result<&EntityUID, Undecided> {
    match value.value_kind() {
        ValueKind::Lit(Literal::EntityUID(uid)) => Ok(uid),
        _ => Err(Undecided),
    }
}

fn set(value: &Value) -> Result<&ast::Set, Undecided> {
    match value.value_kind() {
        ValueKind::Set(set) => Ok(set),
        _ => Err(Undecided),
    }
}
