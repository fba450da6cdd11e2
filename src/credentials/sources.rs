//! The credential sources that change while cedargate runs: token issuers' keys and
//! the revocation list, with the background tasks that keep them fresh.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::config::Config;
use crate::credentials::jwks::JwksError;
use crate::credentials::revocation::Revocations;
use crate::credentials::token::TokenVerifier;
use crate::ops::metrics::Metrics;

pub struct Credentials {
    pub tokens: TokenVerifier,
    pub revocations: Arc<Revocations>,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("token issuers: {0}")]
    Jwks(#[from] JwksError),
    #[error("{0}")]
    Revocation(String),
}

impl Credentials {
    /// Reads every local source now (a JWKS or revocation file that is missing or
    /// invalid refuses to start); remote JWKS are fetched by `spawn_refreshers`.
    pub fn load(config: &Config, metrics: Arc<Metrics>) -> Result<Credentials, CredentialsError> {
        let revocations = match &config.identity.revocation_file {
            Some(path) => Revocations::from_file(path).map_err(CredentialsError::Revocation)?,
            None => Revocations::none(),
        };
        let tokens = TokenVerifier::new(&config.tokens, &config.cache, metrics)?;
        Ok(Credentials { tokens, revocations: Arc::new(revocations) })
    }

    /// Starts the tasks that re-read JWKS files and URLs and the revocation file.
    /// They run until aborted (`app::Running::shutdown` does).
    pub fn spawn_refreshers(&self) -> Vec<JoinHandle<()>> {
        let mut tasks: Vec<JoinHandle<()>> =
            self.tokens.issuer_keys().map(|keys| tokio::spawn(Arc::clone(keys).run_refresher())).collect();
        tasks.push(tokio::spawn(Arc::clone(&self.revocations).run_watcher()));
        tasks
    }
}
