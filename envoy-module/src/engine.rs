//! One filter configuration's engine: the core's `Authorizer` over the policies,
//! credentials and caches a cedargate configuration file names, plus everything
//! that must never run on Envoy's worker threads (file watching, JWKS fetches, the
//! audit writer, the admin listener) on threads of its own.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use cedargate::config::{Config, ConfigError};
use cedargate::ops::admin::{AdminError, AdminServer, AdminState};
use cedargate::ops::audit::{AuditError, AuditWriter};
use cedargate::ops::watch::FileWatcher;
use cedargate::pipeline::authorize::Authorizer;
use cedargate::pipeline::checker::{Checker, Parts, SetupError, SystemClock};
use cedargate::pipeline::decision::Decision;
use cedargate::pipeline::input::CheckInput;
use cedargate::server::tls::{ReloadingTls, TlsError};
use tokio::task::JoinHandle;

/// Why a filter configuration was refused; Envoy then rejects the configuration
/// (at startup: Envoy does not start), so no request is ever served without it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("cannot start the background runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

pub struct Engine {
    authorizer: Authorizer,
    /// Watchers, JWKS refreshers and key refreshes after an unknown `kid`.
    runtime: tokio::runtime::Runtime,
    background: Vec<JoinHandle<()>>,
    /// Passes file events to the tasks in `background` while it lives.
    _watcher: FileWatcher,
    audit_writer: Option<AuditWriter>,
    admin: Option<AdminServer>,
}

impl Engine {
    /// Reads the configuration file named by Envoy's `filter_config` and loads
    /// everything it names, as `cedargate serve` would: an invalid policy set,
    /// JWKS file or revocation file refuses.
    pub fn start(filter_config: &[u8]) -> Result<Engine, EngineError> {
        let (_, config) = read_config("filter_config", filter_config)?;
        let runtime = background_runtime("cedargate-background", &config).map_err(EngineError::Runtime)?;
        let checker = Arc::new(Checker::new(Parts::load(config)?, Arc::new(SystemClock)));
        let parts = checker.parts();
        let watcher = FileWatcher::new(parts.config.policies.debounce);
        let background = {
            let _entered = runtime.enter();
            parts.watch(&watcher)
        };
        checker.report_to_metrics();
        parts.metrics.add_source(Arc::new(crate::handshake::HandshakeMetrics));
        let (audit, audit_writer) = match parts.config.audit.enabled {
            true => {
                let (log, writer) = cedargate::ops::audit::start(&parts.config.audit)?;
                parts.metrics.add_source(log.stats());
                (Some(log), Some(writer))
            }
            false => (None, None),
        };
        let admin = match parts.config.admin.listen {
            None => None,
            Some(addr) => {
                let tls = match &parts.config.admin.tls {
                    Some(files) => Some(ReloadingTls::load("admin", files, &[b"http/1.1"])?),
                    None => None,
                };
                let state = AdminState {
                    checker: Arc::clone(&checker),
                    // Envoy only creates filters from a configuration that loaded.
                    ready: Arc::new(AtomicBool::new(true)),
                    started: Instant::now(),
                };
                Some(AdminServer::start(addr, state, tls)?)
            }
        };
        let snapshot = parts.sets.default_set().current();
        tracing::info!(
            policies = snapshot.policy_count(),
            version = %snapshot.version,
            dir = %parts.config.policies.dir.display(),
            admin = ?admin.as_ref().map(|a| a.local_addr),
            "cedargate loaded in Envoy"
        );
        Ok(Engine {
            authorizer: Authorizer::new(checker, audit),
            runtime,
            background,
            _watcher: watcher,
            audit_writer,
            admin,
        })
    }

    pub fn config(&self) -> &Config {
        self.authorizer.checker().config()
    }

    /// Decides one request on the calling (worker) thread, without waiting on
    /// anything; `answer` applies the decision to the stream.
    pub fn decide<R>(&self, input: CheckInput, answer: impl FnOnce(&Decision) -> R) -> R {
        self.authorizer.authorize_now(input, self.runtime.handle(), answer)
    }
}

/// Why the cedargate configuration file Envoy's configuration names could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("the {key} must be the path of a cedargate configuration file (a StringValue); got {len} bytes that are not UTF-8")]
    NotUtf8 { key: &'static str, len: usize },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The cedargate configuration file whose path is Envoy's `key` (a `StringValue`,
/// the filter's or the certificate validator's), read and validated; with the path.
pub fn read_config<'a>(key: &'static str, value: &'a [u8]) -> Result<(&'a str, Config), ConfigFileError> {
    let path = std::str::from_utf8(value).map_err(|_| ConfigFileError::NotUtf8 { key, len: value.len() })?.trim();
    Ok((path, Config::from_file(Path::new(path))?))
}

/// One thread for a configuration's background work (reloads, fetches), off
/// Envoy's threads, with logging installed. Logging is process-wide: the first
/// configuration (a filter's or a certificate validator's) installs it, and later
/// ones (another listener, an LDS update) find it in place.
pub fn background_runtime(name: &str, config: &Config) -> std::io::Result<tokio::runtime::Runtime> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name(name).enable_all().build()?;
    {
        let _entered = runtime.enter();
        if let Ok(telemetry) = cedargate::ops::telemetry::init(config) {
            // Spans are flushed when the process ends; nothing to keep.
            std::mem::forget(telemetry);
        }
    }
    Ok(runtime)
}

impl Drop for Engine {
    /// Envoy dropped the configuration (shutdown, or a listener update): stop the
    /// background work and write out queued audit records.
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
        if let Some(admin) = self.admin.take() {
            admin.stop();
        }
        if let Some(writer) = self.audit_writer.take() {
            // The writer ends once the last audit handle is gone: the authorizer's,
            // dropped with this engine right after. Finishing on another thread
            // keeps Envoy's main thread from waiting on the disk here.
            std::thread::spawn(move || writer.finish());
        }
    }
}
