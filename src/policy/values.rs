//! Cedar values built directly, as Cedar's evaluator makes them from restricted
//! expressions, but without building and evaluating any: a Check's entities and
//! context are made of these (evaluating restricted expressions was a seventh of an
//! evaluated Check's CPU). Extension values (`datetime`, `duration`, `ip`) are made
//! by Cedar's own constructors, once per distinct argument on each thread.
//! `tests/properties.rs` compares whole requests built this way with requests
//! built through Cedar's public API.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::LazyLock;
use std::thread::LocalKey;

use cedar_policy_core::ast::{self, Value};
use cedar_policy_core::evaluator::RestrictedEvaluator;
use cedar_policy_core::extensions::Extensions;

pub fn string(s: &str) -> Value {
    Value::from(s)
}

pub fn long(n: i64) -> Value {
    Value::from(n)
}

pub fn boolean(b: bool) -> Value {
    Value::from(b)
}

/// A reference to an entity.
pub fn entity(uid: &ast::EntityUID) -> Value {
    Value::from(uid.clone())
}

pub fn set(items: impl IntoIterator<Item = Value>) -> Value {
    Value::set(items, None)
}

pub fn string_set(items: &[String]) -> Value {
    set(items.iter().map(|s| string(s)))
}

pub fn record<'a>(pairs: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    Value::record(pairs, None)
}

/// Cedar's extension constructors, named once: Cedar's own `new_datetime` and
/// friends parse the name with its LALR parser at every call.
static DATETIME: LazyLock<Option<ast::Name>> = LazyLock::new(|| "datetime".parse().ok());
static DURATION: LazyLock<Option<ast::Name>> = LazyLock::new(|| "duration".parse().ok());
static IP: LazyLock<Option<ast::Name>> = LazyLock::new(|| "ip".parse().ok());

/// `name("arg")`, evaluated by Cedar's extension.
fn extension(name: &LazyLock<Option<ast::Name>>, arg: String) -> Result<Value, String> {
    let name = Option::clone(name).ok_or("a cedar extension name does not parse")?;
    let call = ast::RestrictedExpr::call_extension_fn(name, [ast::RestrictedExpr::val(arg)]);
    RestrictedEvaluator::new(Extensions::all_available()).interpret(call.as_borrowed()).map_err(|e| e.to_string())
}

/// How many extension values each thread remembers per kind; past it the memo
/// starts over, so it never grows with the traffic.
const MEMO_ENTRIES: usize = 256;

type Memo<K> = RefCell<HashMap<K, Value>>;

thread_local! {
    static DATETIMES: Memo<(i64, u32)> = RefCell::new(HashMap::new());
    static IPS: Memo<IpAddr> = RefCell::new(HashMap::new());
    static LITERAL_CALLS: Memo<(ast::Name, ast::Literal)> = RefCell::new(HashMap::new());
}

fn memoized<K: Hash + Eq + Clone + 'static, E>(
    memo: &'static LocalKey<Memo<K>>,
    key: K,
    make: impl FnOnce(K) -> Result<Value, E>,
) -> Result<Value, E> {
    memo.with(|memo| {
        if let Some(value) = memo.borrow().get(&key) {
            return Ok(value.clone());
        }
        let value = make(key.clone())?;
        let mut memo = memo.borrow_mut();
        if memo.len() >= MEMO_ENTRIES {
            memo.clear();
        }
        memo.insert(key, value.clone());
        Ok(value)
    })
}

/// An extension function applied to one literal, as a policy writes
/// `duration("24h")` or `ip("10.0.0.0/8")`: the same value every time, so
/// `call` (Cedar's function) runs once per distinct call on each thread rather
/// than parsing its argument on every Check. Failures are not remembered.
pub fn literal_call<E>(
    name: &ast::Name,
    arg: &ast::Literal,
    call: impl FnOnce() -> Result<Value, E>,
) -> Result<Value, E> {
    memoized(&LITERAL_CALLS, (name.clone(), arg.clone()), |_| call())
}

/// The `datetime` at `seconds` and `millis` past the epoch (UTC).
pub fn datetime(seconds: i64, millis: u32) -> Result<Value, String> {
    memoized(&DATETIMES, (seconds, millis), |(s, m)| extension(&DATETIME, cedar_datetime(s, m)?))
}

/// A `duration` of whole seconds.
pub fn duration_seconds(seconds: i64) -> Result<Value, String> {
    extension(&DURATION, format!("{seconds}s"))
}

pub fn ip(addr: IpAddr) -> Result<Value, String> {
    memoized(&IPS, addr, |addr| extension(&IP, addr.to_string()))
}

/// `2026-11-23T02:56:08.000Z`, the form Cedar's `datetime()` accepts.
pub fn cedar_datetime(seconds: i64, millis: u32) -> Result<String, String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use cedar_policy::RestrictedExpression;

    /// What Cedar's evaluator makes of Cedar's own expression.
    fn cedars(expr: RestrictedExpression) -> Value {
        RestrictedEvaluator::new(Extensions::all_available()).interpret(expr.as_ref().as_borrowed()).unwrap()
    }

    #[test]
    fn values_are_what_cedar_makes_of_its_own_expressions() {
        assert_eq!(
            datetime(1_795_406_169, 7).unwrap(),
            cedars(RestrictedExpression::new_datetime("2026-11-23T03:56:09.007Z"))
        );
        // Again, from the memo.
        assert_eq!(
            datetime(1_795_406_169, 7).unwrap(),
            cedars(RestrictedExpression::new_datetime("2026-11-23T03:56:09.007Z"))
        );
        assert_eq!(duration_seconds(3600).unwrap(), cedars(RestrictedExpression::new_duration("3600s")));
        assert_eq!(ip([10, 0, 0, 1].into()).unwrap(), cedars(RestrictedExpression::new_ip("10.0.0.1")));
        assert_eq!(ip("::1".parse().unwrap()).unwrap(), cedars(RestrictedExpression::new_ip("::1")));
        let record = record([("a", string("x")), ("b", set([long(1), boolean(true)]))]);
        let expr = RestrictedExpression::new_record([
            ("a".to_owned(), RestrictedExpression::new_string("x".into())),
            (
                "b".to_owned(),
                RestrictedExpression::new_set([
                    RestrictedExpression::new_long(1),
                    RestrictedExpression::new_bool(true),
                ]),
            ),
        ])
        .unwrap();
        assert_eq!(record, cedars(expr));
    }

    #[test]
    fn the_memo_stays_bounded() {
        for s in 0..(MEMO_ENTRIES as i64 * 3) {
            datetime(s, 0).unwrap();
        }
        assert!(DATETIMES.with(|m| m.borrow().len()) <= MEMO_ENTRIES);
    }

    #[test]
    fn datetimes_are_in_cedar_form() {
        assert_eq!(cedar_datetime(0, 0).unwrap(), "1970-01-01T00:00:00.000Z");
        assert_eq!(cedar_datetime(1_795_406_169, 7).unwrap(), "2026-11-23T03:56:09.007Z");
    }
}
