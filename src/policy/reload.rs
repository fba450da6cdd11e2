//! Hot reload of a policy directory: noticed by `ops::watch` (and on SIGHUP),
//! validated as a whole, then swapped in atomically.
//!
//! A Check holds the snapshot it started with, so a swap never changes a decision
//! halfway. An invalid change never replaces the last good set: cedargate keeps
//! serving it, logs Cedar's diagnostics (file:line:column) and records the failure
//! in `ReloadStatus`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::TokenModel;
use crate::policy::load;
use crate::policy::set::{LoadError, PolicySnapshot, ENTITIES_FILE, POLICY_EXTENSION, SCHEMA_FILE};

/// What the last reloads did, for logs, metrics and `/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Version of the set being served (read from the snapshot itself).
    pub version: String,
    /// Diagnostics of the last failed attempt, until a later attempt succeeds.
    pub last_error: Option<String>,
    pub last_attempt: Option<SystemTime>,
}

/// What one reload attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new set is being served.
    Swapped { version: String },
    /// The directory's content is the set already served.
    Unchanged,
}

/// One policy directory being served: the snapshot Checks use, and how it is
/// replaced when the directory changes.
pub struct PolicyReloader {
    dir: PathBuf,
    tokens: TokenModel,
    policies: ArcSwap<PolicySnapshot>,
    status: Mutex<ReloadStatus>,
    /// The directory's files as last looked at; first taken before the first load,
    /// so an edit made during it is seen as a change.
    seen: Mutex<Fingerprint>,
    /// Serializes reloads (watcher and SIGHUP) so two never race to swap.
    reloading: Mutex<()>,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
}

impl PolicyReloader {
    /// Loads the directory; an invalid set refuses (there is no last good one yet).
    pub fn load(dir: PathBuf, tokens: TokenModel) -> Result<PolicyReloader, LoadError> {
        // The fingerprint is taken before the load, so an edit made meanwhile is
        // seen by the watcher as a change.
        let initial = fingerprint(&dir);
        let snapshot = load::load_dir(&dir, &tokens)?;
        Ok(PolicyReloader {
            seen: Mutex::new(initial),
            dir,
            tokens,
            policies: ArcSwap::from_pointee(snapshot),
            status: Mutex::new(ReloadStatus::default()),
            reloading: Mutex::new(()),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// The snapshot Checks use now; a Check holds it to the end, across reloads.
    pub fn current(&self) -> arc_swap::Guard<Arc<PolicySnapshot>> {
        self.policies.load()
    }

    /// The directory served.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn status(&self) -> ReloadStatus {
        let status = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        ReloadStatus { version: self.policies.load().version.clone(), ..status }
    }

    /// Loads and validates the directory; swaps it in if it is valid and differs.
    pub fn reload(&self) -> Result<ReloadOutcome, LoadError> {
        self.reload_seeing(fingerprint(&self.dir))
    }

    /// `reload`, with the directory's files as just looked at.
    fn reload_seeing(&self, files: Fingerprint) -> Result<ReloadOutcome, LoadError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = files;
        let attempt = load::load_dir(&self.dir, &self.tokens);
        let mut status = self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        status.last_attempt = Some(SystemTime::now());
        let serving = self.policies.load().version.clone();
        match attempt {
            Ok(snapshot) => {
                status.last_error = None;
                if snapshot.version == serving {
                    return Ok(ReloadOutcome::Unchanged);
                }
                let version = snapshot.version.clone();
                tracing::info!(version = %version, previous = %serving, policies = snapshot.policy_count(), "policy set reloaded");
                self.policies.store(Arc::new(snapshot));
                self.succeeded.fetch_add(1, Ordering::Relaxed);
                Ok(ReloadOutcome::Swapped { version })
            }
            Err(e) => {
                tracing::error!(serving = %serving, "policy change refused, still serving the last good set: {e}");
                status.last_error = Some(e.to_string());
                self.failed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Reloads only if the directory's files look changed (names, sizes,
    /// modification times) since the last look: the periodic re-check, which must
    /// cost nothing when nothing changed.
    pub fn reload_if_changed(&self) -> Option<Result<ReloadOutcome, LoadError>> {
        let now = fingerprint(&self.dir);
        if *self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) == now {
            return None;
        }
        Some(self.reload_seeing(now))
    }
}

type Fingerprint = Vec<(String, u64, Option<SystemTime>)>;

/// Names, sizes and modification times of the files a policy set is made of: cheap
/// to take, and a save changes it.
fn fingerprint(dir: &Path) -> Fingerprint {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Fingerprint = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let relevant = name == SCHEMA_FILE
                || name == ENTITIES_FILE
                || Path::new(&name).extension().is_some_and(|e| e == POLICY_EXTENSION);
            // Follow symlinks: a Kubernetes ConfigMap volume swaps a `..data` link
            // under files that are themselves links, so the links never change.
            let meta = std::fs::metadata(entry.path()).ok().filter(|_| relevant)?;
            Some((name, meta.len(), meta.modified().ok()))
        })
        .collect();
    files.sort();
    files
}

impl std::fmt::Debug for PolicyReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyReloader").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// Reloads by result, and the set being served, sampled when scraped.
impl crate::ops::metrics::StateSource for PolicyReloader {
    fn samples(&self) -> Vec<crate::ops::metrics::Sample> {
        use crate::ops::metrics::Sample;
        let set = self.policies.load();
        let dir = self.dir.display().to_string();
        let status = self.status();
        vec![
            Sample::Counter {
                name: "policy_reloads",
                help: "Policy directory reloads by result (a failed one keeps the last good set)",
                labels: vec![("dir", dir.clone()), ("result", "success".to_owned())],
                value: self.succeeded.load(Ordering::Relaxed),
            },
            Sample::Counter {
                name: "policy_reloads",
                help: "Policy directory reloads by result (a failed one keeps the last good set)",
                labels: vec![("dir", dir.clone()), ("result", "failure".to_owned())],
                value: self.failed.load(Ordering::Relaxed),
            },
            Sample::Gauge {
                name: "policy_reload_failing",
                help: "1 while the directory holds a change that was refused",
                labels: vec![("dir", dir.clone())],
                value: i64::from(status.last_error.is_some()),
            },
            Sample::Gauge {
                name: "policies_loaded",
                help: "Policies in the set being served",
                labels: vec![("dir", dir.clone())],
                value: i64::try_from(set.policy_count()).unwrap_or(i64::MAX),
            },
            Sample::Gauge {
                name: "policy_entities",
                help: "Entities of entities.json and the schema's actions: stored, and those each Check is given",
                labels: vec![("dir", dir.clone()), ("given", "stored".to_owned())],
                value: i64::try_from(set.entities.base().len()).unwrap_or(i64::MAX),
            },
            Sample::Gauge {
                name: "policy_entities",
                help: "Entities of entities.json and the schema's actions: stored, and those each Check is given",
                labels: vec![("dir", dir.clone()), ("given", "to_each_check".to_owned())],
                value: i64::try_from(set.entities.given_to_each_check()).unwrap_or(i64::MAX),
            },
            Sample::Gauge {
                name: "policy_set_info",
                help: "The version (content hash) of the set being served",
                labels: vec![("dir", dir), ("version", set.version.clone())],
                value: 1,
            },
        ]
    }
}
