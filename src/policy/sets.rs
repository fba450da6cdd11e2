//! The policy sets one server serves: the default set (`policies.dir`), the shadow
//! set evaluated beside it, and the named sets that routes select. Each is a
//! `PolicyReloader`: its current snapshot and how it is replaced.
//!
//! Everything that walks "all the sets" (watching, SIGHUP, metrics, `/status`) walks
//! `PolicySets::all`, so a new kind of set cannot be forgotten in one of them.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{PoliciesConfig, TokenModel};
use crate::policy::reload::PolicyReloader;
use crate::policy::set::LoadError;

/// The context extension a route sets to select a named policy set.
pub const ROUTE_POLICY_SET_KEY: &str = "cedargate.policy_set";
/// The name of the set in `policies.dir`.
pub const DEFAULT_SET: &str = "default";

/// What a set is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `policies.dir`: decides routes that select no set.
    Default,
    /// `policies.shadow_dir`: judged beside the default set, never enforced.
    Shadow,
    /// `policies.sets.<name>`: decides the routes that select it.
    Named,
}

pub struct PolicySets {
    default: Arc<PolicyReloader>,
    shadow: Option<Arc<PolicyReloader>>,
    named: BTreeMap<String, Arc<PolicyReloader>>,
}

/// A route named a set that is not configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the route selects policy set `{0}`, which is not configured")]
pub struct UnknownSet(pub String);

impl PolicySets {
    /// Loads every configured directory, each validated against the same token
    /// model; any invalid one refuses.
    pub fn load(config: &PoliciesConfig, tokens: &TokenModel) -> Result<PolicySets, LoadError> {
        let load = |dir: &std::path::Path| PolicyReloader::load(dir.to_owned(), tokens.clone()).map(Arc::new);
        let default = load(&config.dir)?;
        let shadow = config.shadow_dir.as_deref().map(load).transpose()?;
        let mut named = BTreeMap::new();
        for (name, dir) in &config.sets {
            named.insert(name.clone(), load(dir)?);
        }
        Ok(PolicySets { default, shadow, named })
    }

    /// The set in `policies.dir`.
    pub fn default_set(&self) -> &Arc<PolicyReloader> {
        &self.default
    }

    pub fn shadow(&self) -> Option<&Arc<PolicyReloader>> {
        self.shadow.as_ref()
    }

    /// A named set, by its name.
    pub fn named(&self, name: &str) -> Option<&Arc<PolicyReloader>> {
        self.named.get(name)
    }

    /// The set a request's route selects through its context extensions, with its
    /// name. Naming an unknown set is an error (the caller denies), never a fall
    /// back to the default set.
    pub fn select<'a>(
        &'a self,
        context_extensions: &[(String, String)],
    ) -> Result<(&'a str, &'a PolicyReloader), UnknownSet> {
        match context_extensions.iter().find(|(k, _)| k == ROUTE_POLICY_SET_KEY) {
            None => Ok((DEFAULT_SET, &self.default)),
            Some((_, name)) if name == DEFAULT_SET => Ok((DEFAULT_SET, &self.default)),
            Some((_, name)) => match self.named.get_key_value(name) {
                Some((name, set)) => Ok((name.as_str(), set)),
                None => Err(UnknownSet(name.chars().take(64).collect())),
            },
        }
    }

    /// Every set with its name and role: default first, then shadow, then named.
    pub fn all(&self) -> impl Iterator<Item = (&str, Role, &Arc<PolicyReloader>)> {
        std::iter::once((DEFAULT_SET, Role::Default, &self.default))
            .chain(self.shadow.iter().map(|s| ("shadow", Role::Shadow, s)))
            .chain(self.named.iter().map(|(name, s)| (name.as_str(), Role::Named, s)))
    }
}

impl std::fmt::Debug for PolicySets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.all().map(|(name, _, set)| (name, set.current().version.clone()))).finish()
    }
}
