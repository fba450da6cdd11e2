//! The `cedargate` command: parses the command line and starts the command; the
//! commands' bodies are in `cli/`.

use std::process::ExitCode;

use cedargate::cli::{authorize, demo_pki, fmt, policy_test, serve, validate};
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
    Serve(serve::Args),
    /// Parse and strictly validate a policy directory; exit 1 with diagnostics if invalid.
    Validate(validate::Args),
    /// Decide one request offline with the server's own pipeline. Exit 0 on allow,
    /// 1 on deny, 2 on a usage or configuration error.
    Authorize(Box<authorize::Args>),
    /// Run the policy test cases (`*.test.toml`) beside the policies. Exit 0 when all
    /// pass, 1 when any fails, 2 on an error.
    Test(policy_test::Args),
    /// Write a throw-away demo PKI (a CA, Envoy's and four workloads' certificates)
    /// and an envoy.yaml that uses it, for trying cedargate with Envoy locally.
    DemoPki(demo_pki::Args),
    /// Format policy files in place with Cedar's formatter, or with `--check` only
    /// report the files that are not formatted. Exit 0 when all are (or now are)
    /// formatted, 1 when `--check` finds one that is not, 2 on a file that does
    /// not parse.
    Fmt(fmt::Args),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => serve::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Authorize(args) => authorize::run(*args),
        Command::Test(args) => policy_test::run(args),
        Command::DemoPki(args) => demo_pki::run(args),
        Command::Fmt(args) => fmt::run(args),
    }
}
