//! `cedargate serve`: the configuration file with the command line's overrides,
//! then the server until SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::{parse_admin_listen, Config, ListenAddr};
use crate::pipeline::checker::SystemClock;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// TOML configuration file; every key has a default.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Listen address, `ip:port` or `unix:/path` (overrides `server.listen`).
    #[arg(long)]
    pub listen: Option<String>,
    /// Policy directory (overrides `policies.dir`).
    #[arg(long)]
    pub policies: Option<PathBuf>,
    /// Admin listener `ip:port` for /metrics, /healthz, /readyz, /status
    /// (overrides `admin.listen`; "" turns it off).
    #[arg(long)]
    pub admin_listen: Option<String>,
}

/// The configuration to serve with; a message for the operator when it is refused.
fn configuration(args: Args) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.server.listen = ListenAddr::parse(&listen).map_err(|e| format!("--listen: {e}"))?;
    }
    if let Some(dir) = args.policies {
        config.policies.dir = dir;
    }
    if let Some(addr) = args.admin_listen {
        config.admin.listen = parse_admin_listen(&addr).map_err(|e| format!("--admin-listen: {e}"))?;
    }
    let source = args.config.map_or("defaults".to_owned(), |p| p.display().to_string());
    config.validate(&source).map_err(|e| e.to_string())?;
    Ok(config)
}

pub fn run(args: Args) -> ExitCode {
    let config = match configuration(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = {
        let _inside = runtime.enter();
        match crate::ops::telemetry::init(&config) {
            Ok(telemetry) => telemetry,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let result = runtime.block_on(async {
        let running = crate::server::app::start(config, Arc::new(SystemClock)).await?;
        running.run_until_signal().await
    });
    {
        let _inside = runtime.enter();
        telemetry.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
