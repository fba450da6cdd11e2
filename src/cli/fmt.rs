//! `cedargate fmt`: format policy files in place with Cedar's formatter, or with
//! `--check` only report the files that are not formatted.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::output::Format;
use crate::policy::format;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A policy directory (its `*.cedar` files) or one file.
    #[arg(default_value = "policies")]
    pub target: PathBuf,
    #[arg(long)]
    pub check: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

pub fn run(args: Args) -> ExitCode {
    let Args { target, check, format } = args;
    let files = match format::policy_files(&target) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("error: {}: {e}", target.display());
            return ExitCode::from(2);
        }
    };
    let mut results = Vec::new();
    for file in files {
        let mut result = format::format_file(&file);
        if result.changed && !check {
            if let Err(e) = std::fs::write(&file, &result.text) {
                result.error = Some(format!("cannot write: {e}"));
            }
        }
        results.push(result);
    }
    let errors = results.iter().filter(|r| r.error.is_some()).count();
    let unformatted = results.iter().filter(|r| r.changed).count();
    match format {
        Format::Json => {
            let out = serde_json::json!({ "check": check, "files": results });
            println!("{out}");
        }
        Format::Text => {
            for r in &results {
                match (&r.error, r.changed, check) {
                    (Some(e), _, _) => eprintln!("error: {}: {e}", r.file.display()),
                    (None, true, true) => println!("not formatted: {}", r.file.display()),
                    (None, true, false) => println!("formatted {}", r.file.display()),
                    (None, false, _) => {}
                }
            }
            if errors == 0 && unformatted == 0 {
                println!("{} file(s) already formatted", results.len());
            }
        }
    }
    if errors > 0 {
        ExitCode::from(2)
    } else if check && unformatted > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
