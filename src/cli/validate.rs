//! `cedargate validate`: parse and strictly validate a policy directory, with
//! Cedar's diagnostics (file:line:column) when it is refused.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::output::Format;
use crate::config::{Config, TokenModel};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Policy directory.
    #[arg(long, default_value = "policies")]
    pub policies: PathBuf,
    /// Configuration file, to also check the schema declares the configured
    /// token claims (`tokens.issuers.claims`).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

pub fn run(args: Args) -> ExitCode {
    let dir = &args.policies;
    let tokens = match args.config.as_deref().map(Config::from_file).transpose() {
        Ok(config) => config.map(|c| TokenModel::from_config(&c.tokens)).unwrap_or_default(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match (crate::policy::load::load_dir(dir, &tokens), args.format) {
        (Ok(snapshot), Format::Text) => {
            println!("{}: {} policies valid (version {})", dir.display(), snapshot.policy_count(), snapshot.version);
            ExitCode::SUCCESS
        }
        (Ok(snapshot), Format::Json) => {
            let out =
                serde_json::json!({ "valid": true, "policies": snapshot.policy_count(), "version": snapshot.version });
            println!("{out}");
            ExitCode::SUCCESS
        }
        (Err(e), Format::Text) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
        (Err(e), Format::Json) => {
            let diagnostics: Vec<serde_json::Value> = e
                .diagnostics
                .iter()
                .map(|d| {
                    serde_json::json!({ "file": d.file, "line": d.line, "column": d.column, "message": d.message, "help": d.help })
                })
                .collect();
            println!("{}", serde_json::json!({ "valid": false, "diagnostics": diagnostics }));
            ExitCode::FAILURE
        }
    }
}
