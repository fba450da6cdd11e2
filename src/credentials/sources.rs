//! The credential sources that change while cedargate runs: token issuers' keys and
//! the revocation list, with the background tasks that keep them fresh.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::config::Config;
use crate::credentials::jwks::JwksError;
use crate::credentials::revocation::{RevocationError, Revocations};
use crate::credentials::token::TokenVerifier;
use crate::ops::metrics::Metrics;
use crate::ops::watch::FileWatcher;

pub struct Credentials {
    pub tokens: TokenVerifier,
    pub revocations: Arc<Revocations>,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("token issuers: {0}")]
    Jwks(#[from] JwksError),
    #[error("revocation file `{path}`: {source}")]
    Revocation { path: std::path::PathBuf, source: RevocationError },
}

impl Credentials {
    /// Reads every local source now (a JWKS or revocation file that is missing or
    /// invalid refuses to start); remote JWKS are fetched by `spawn_refreshers`.
    pub fn load(config: &Config, metrics: Arc<Metrics>) -> Result<Credentials, CredentialsError> {
        let revocations = match &config.identity.revocation_file {
            Some(path) => Revocations::from_file(path)
                .map_err(|source| CredentialsError::Revocation { path: path.clone(), source })?,
            None => Revocations::none(),
        };
        let tokens = TokenVerifier::new(&config.tokens, &config.cache, metrics)?;
        Ok(Credentials { tokens, revocations: Arc::new(revocations) })
    }

    /// Starts the tasks that fetch JWKS URLs on their schedule, and has `watcher`
    /// re-read JWKS files and the revocation file when they change. They run until
    /// aborted (`server::app::Running::shutdown` does).
    pub fn spawn_refreshers(&self, watcher: &FileWatcher) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        for keys in self.tokens.issuer_keys() {
            match keys.file() {
                Some(file) => {
                    let keys = Arc::clone(keys);
                    let runtime = tokio::runtime::Handle::current();
                    // On a blocking thread: waiting for the refresh lock is fine there.
                    tasks.push(watcher.spawn("jwks", &[file], move |_| runtime.block_on(keys.refresh())));
                }
                None => tasks.push(tokio::spawn(Arc::clone(keys).run_refresher())),
            }
        }
        if let Some(file) = self.revocations.path() {
            let revocations = Arc::clone(&self.revocations);
            tasks.push(watcher.spawn("revocation", &[file], move |_| {
                // Refusals are logged and counted by `reload` itself.
                let _ = revocations.reload();
            }));
        }
        tasks
    }
}
