//! `cedargate test`: run the policy test cases (`*.test.toml`) beside the policies.
//! Exit 0 when all pass, 1 when any fails, 2 on an error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::cli::offline;
use crate::cli::output::Format;
use crate::cli::test_tokens::TestSigner;
use crate::pipeline::checker::Checker;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory with the policies and their `*.test.toml` files.
    #[arg(default_value = "policies")]
    pub dir: PathBuf,
    /// Configuration file (token issuers, identity settings).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

pub fn run(args: Args) -> ExitCode {
    let dir = &args.dir;
    let fail = |message: String| {
        eprintln!("error: {message}");
        ExitCode::from(2)
    };
    let mut config = match offline::config(args.config.as_deref(), dir) {
        Ok(config) => config,
        Err(e) => return fail(e.to_string()),
    };
    // Cases name callers by SPIFFE ID; a case may add a certificate.
    config.identity.require_certificate = false;
    let files = match offline::test_files(dir) {
        Ok(files) if files.is_empty() => return fail(format!("no *.test.toml files in {}", dir.display())),
        Ok(files) => files,
        Err(e) => return fail(e.to_string()),
    };
    let mut suites = Vec::new();
    for path in &files {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match offline::parse_test_file(path) {
            Ok(cases) => suites.push((name, cases)),
            Err(e) => return fail(e.to_string()),
        }
    }
    // Cases with `token_claims` get tokens signed by a key made for this run.
    let wants_tokens = suites.iter().any(|(_, s)| s.cases.iter().any(|c| c.token_claims.is_some()));
    let signer = match wants_tokens.then(|| TestSigner::install(&mut config)).transpose() {
        Ok(signer) => signer,
        Err(e) => return fail(e.to_string()),
    };
    let clock = Arc::new(offline::SettableClock::default());
    let checker = match Checker::load(config, clock.clone()) {
        Ok(checker) => checker,
        Err(e) => return fail(e.to_string()),
    };
    let mut results = Vec::new();
    for (name, cases) in &suites {
        match offline::run_cases(name, cases, &checker, &clock, signer.as_ref()) {
            Ok(mut r) => results.append(&mut r),
            Err(e) => return fail(e.to_string()),
        }
    }
    let failed = results.iter().filter(|r| !r.passed).count();
    match args.format {
        Format::Json => {
            let out = serde_json::json!({ "passed": results.len() - failed, "failed": failed, "cases": results });
            println!("{out}");
        }
        Format::Text => {
            for r in &results {
                if r.passed {
                    println!("ok    {}: {}", r.file, r.name);
                } else {
                    println!("FAIL  {}: {}", r.file, r.name);
                    for line in r.diff.iter().flat_map(|d| d.lines()) {
                        println!("        {line}");
                    }
                    for line in r.actual.human().lines() {
                        println!("        | {line}");
                    }
                }
            }
            println!("\n{} passed, {failed} failed", results.len() - failed);
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
