//! The `cedargate` command: parses the command line and starts things.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use cedargate::cedar_request::TokenModel;
use cedargate::check::SystemClock;
use cedargate::config::{Config, ListenAddr, LogFormat};
use cedargate::policy_set;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cedargate",
    version,
    about = "Envoy external authorization with SPIFFE identities and Cedar policies"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve envoy.service.auth.v3.Authorization/Check over gRPC.
    Serve {
        /// TOML configuration file; every key has a default.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen address, `ip:port` or `unix:/path` (overrides `server.listen`).
        #[arg(long)]
        listen: Option<String>,
        /// Policy directory (overrides `policies.dir`).
        #[arg(long)]
        policies: Option<PathBuf>,
    },
    /// Parse and strictly validate a policy directory; exit 1 with diagnostics if invalid.
    Validate {
        /// Policy directory.
        #[arg(long, default_value = "policies")]
        policies: PathBuf,
        /// Configuration file, to also check the schema declares the configured
        /// token claims (`tokens.issuers.claims`).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, listen, policies } => serve(config, listen, policies),
        Command::Validate { policies, config } => validate(&policies, config.as_deref()),
    }
}

fn validate(dir: &std::path::Path, config: Option<&std::path::Path>) -> ExitCode {
    let tokens = match config.map(Config::from_file).transpose() {
        Ok(config) => config.map(|c| TokenModel::from_config(&c.tokens)).unwrap_or_default(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match policy_set::load_dir(dir, &tokens) {
        Ok(snapshot) => {
            println!("{}: {} policies valid (version {})", dir.display(), snapshot.policy_count(), snapshot.version);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config_path: Option<PathBuf>, listen: Option<String>, policies: Option<PathBuf>) -> ExitCode {
    let mut config = match &config_path {
        Some(path) => match Config::from_file(path) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    if let Some(listen) = listen {
        match ListenAddr::parse(&listen) {
            Ok(addr) => config.server.listen = addr,
            Err(e) => {
                eprintln!("error: --listen: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(dir) = policies {
        config.policies.dir = dir;
    }
    if let Err(e) = config.validate(&config_path.map_or("defaults".to_owned(), |p| p.display().to_string())) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let running = cedargate::app::start(config, Arc::new(SystemClock)).await?;
        running.run_until_signal().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
