//! What policies can read of a request, worked out once per load from each policy's
//! conditions: whether they read the time (then no decision is cacheable), and which
//! header, query and route tags they name. The decision cache keys on exactly that,
//! and requests are refused when a tag policies read arrives with two values.

use std::collections::BTreeSet;

use cedar_policy::Policy;
use serde_json::Value;

/// What the loaded policies can read of a request beyond its fixed parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Relevance {
    /// Some policy reads `context.time` (or the context as a whole): every request
    /// is then different and the cache is bypassed.
    pub time: bool,
    /// Which header, query and route tags policies can read.
    pub tags: TagKeys,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TagKeys {
    /// A tag is read with a computed key: any tag may matter.
    All,
    /// Only these keys appear in `getTag` / `hasTag`; other tags cannot be read
    /// (Cedar has no way to enumerate tags).
    Only(BTreeSet<String>),
}

impl TagKeys {
    pub fn contains(&self, key: &str) -> bool {
        match self {
            TagKeys::All => true,
            TagKeys::Only(keys) => keys.contains(key),
        }
    }
}

impl Relevance {
    /// Reads every policy's conditions (as Cedar's JSON form). Anything not
    /// understood counts as relevant, so the proof errs towards a larger key.
    pub fn of<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> Relevance {
        let mut relevance = Relevance::none();
        for policy in policies {
            match policy.to_json() {
                Ok(json) => relevance.visit(json.get("conditions").unwrap_or(&Value::Null), false),
                Err(_) => return Relevance { time: true, tags: TagKeys::All },
            }
        }
        relevance
    }

    /// What an empty policy set reads: nothing.
    pub fn none() -> Relevance {
        Relevance { time: false, tags: TagKeys::Only(BTreeSet::new()) }
    }

    /// What either of two policy sets can read.
    pub fn union(&self, other: &Relevance) -> Relevance {
        let tags = match (&self.tags, &other.tags) {
            (TagKeys::Only(a), TagKeys::Only(b)) => TagKeys::Only(a.union(b).cloned().collect()),
            _ => TagKeys::All,
        };
        Relevance { time: self.time || other.time, tags }
    }

    /// `attribute_base`: this node is the `left` of `.` or `has`, the only places
    /// `context` may appear without exposing `context.time`.
    fn visit(&mut self, node: &Value, attribute_base: bool) {
        match node {
            Value::Array(items) => items.iter().for_each(|item| self.visit(item, false)),
            Value::Object(map) => {
                if map.get("Var").and_then(Value::as_str) == Some("context") && !attribute_base {
                    self.time = true;
                }
                for (key, value) in map {
                    match key.as_str() {
                        "." | "has" => {
                            let names = match value.get("attr") {
                                Some(Value::String(name)) => vec![name.as_str()],
                                Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
                                _ => vec!["time"],
                            };
                            if names.contains(&"time") {
                                self.time = true;
                            }
                            self.visit(value.get("left").unwrap_or(&Value::Null), true);
                        }
                        "getTag" | "hasTag" => {
                            let right = value.get("right").unwrap_or(&Value::Null);
                            match (right.get("Value").and_then(Value::as_str), &mut self.tags) {
                                (Some(name), TagKeys::Only(keys)) => {
                                    keys.insert(name.to_owned());
                                }
                                (Some(_), TagKeys::All) => {}
                                (None, tags) => *tags = TagKeys::All,
                            }
                            self.visit(value.get("left").unwrap_or(&Value::Null), false);
                            self.visit(right, false);
                        }
                        _ => self.visit(value, false),
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn relevance(text: &str) -> Relevance {
        Relevance::of(cedar_policy::PolicySet::from_str(text).unwrap().policies())
    }

    #[test]
    fn literal_tag_reads_bound_the_key() {
        let r = relevance(
            r#"permit (principal, action, resource) when {
                resource.headers.hasTag("x-canary") && resource.headers.getTag("x-canary") == "1"
                && context.route.hasTag("team")
            };"#,
        );
        assert!(!r.time);
        assert_eq!(r.tags, TagKeys::Only(["team".to_owned(), "x-canary".to_owned()].into()));
    }

    #[test]
    fn a_computed_tag_key_makes_every_tag_relevant() {
        let r = relevance(
            r#"permit (principal, action, resource) when {
                context has token && resource.headers.hasTag(context.token.sub)
            };"#,
        );
        assert_eq!(r.tags, TagKeys::All);
    }

    #[test]
    fn reading_the_time_or_the_whole_context_is_seen() {
        assert!(
            relevance(r#"permit (principal, action, resource) when { context.time > datetime("2020-01-01") };"#).time
        );
        assert!(relevance(r#"permit (principal, action, resource) when { context has time };"#).time);
        assert!(relevance(r#"permit (principal, action, resource) when { context == {} };"#).time);
        assert!(!relevance(r#"permit (principal, action, resource) when { context.peer == principal };"#).time);
    }
}
