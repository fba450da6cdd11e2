//! The `cedargate` command: parses the command line and starts things.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use cedargate::config::TokenModel;
use cedargate::config::{Config, ListenAddr};
use cedargate::pipeline::checker::SystemClock;
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
        /// Admin listener `ip:port` for /metrics, /healthz, /readyz, /status
        /// (overrides `admin.listen`; "" turns it off).
        #[arg(long)]
        admin_listen: Option<String>,
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
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Decide one request offline with the server's own pipeline. Exit 0 on allow,
    /// 1 on deny, 2 on a usage or configuration error.
    Authorize(Box<AuthorizeArgs>),
    /// Run the policy test cases (`*.test.toml`) beside the policies. Exit 0 when all
    /// pass, 1 when any fails, 2 on an error.
    Test {
        /// Directory with the policies and their `*.test.toml` files.
        #[arg(default_value = "policies")]
        dir: PathBuf,
        /// Configuration file (token issuers, identity settings).
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Write a throw-away demo PKI (a CA, Envoy's and four workloads' certificates)
    /// and an envoy.yaml that uses it, for trying cedargate with Envoy locally.
    DemoPki {
        /// Directory to write into (created if missing).
        #[arg(long, default_value = "demo")]
        out: PathBuf,
    },
    /// Format policy files in place with Cedar's formatter, or with `--check` only
    /// report the files that are not formatted. Exit 0 when all are (or now are)
    /// formatted, 1 when `--check` finds one that is not, 2 on a file that does
    /// not parse.
    Fmt {
        /// A policy directory (its `*.cedar` files) or one file.
        #[arg(default_value = "policies")]
        target: PathBuf,
        #[arg(long)]
        check: bool,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(clap::Args)]
struct AuthorizeArgs {
    /// Policy directory.
    #[arg(long, default_value = "policies")]
    policies: PathBuf,
    /// Configuration file (token issuers, identity settings).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// A CheckRequest as JSON, as Envoy sends it (`-` for stdin). Replaces the flags below.
    #[arg(long)]
    request: Option<PathBuf>,
    /// The caller's SPIFFE ID.
    #[arg(long)]
    principal: Option<String>,
    #[arg(long, default_value = "GET")]
    method: String,
    #[arg(long, default_value = "/")]
    path: String,
    #[arg(long, default_value = "")]
    host: String,
    /// `name: value`; repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// A route's context extension, `key=value`; repeatable.
    #[arg(long = "route")]
    route: Vec<String>,
    /// `destination.principal`.
    #[arg(long, default_value = "")]
    destination: String,
    /// A bearer token.
    #[arg(long)]
    token: Option<String>,
    /// PEM file of the caller's certificate; without it the SPIFFE ID alone is used.
    #[arg(long)]
    cert: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, listen, policies, admin_listen } => serve(config, listen, policies, admin_listen),
        Command::Validate { policies, config, format } => validate(&policies, config.as_deref(), format),
        Command::Authorize(args) => authorize(*args),
        Command::Test { dir, config, format } => test(&dir, config.as_deref(), format),
        Command::Fmt { target, check, format } => fmt(&target, check, format),
        Command::DemoPki { out } => match cedargate::cli::demo_pki::write(&out) {
            Ok(files) => {
                for file in files {
                    println!("wrote {}", file.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn validate(dir: &std::path::Path, config: Option<&std::path::Path>, format: Format) -> ExitCode {
    let tokens = match config.map(Config::from_file).transpose() {
        Ok(config) => config.map(|c| TokenModel::from_config(&c.tokens)).unwrap_or_default(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match (cedargate::policy::load::load_dir(dir, &tokens), format) {
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

/// The configuration offline commands run with: the file's, or the defaults, with
/// the given policy directory.
fn offline_config(path: Option<&std::path::Path>, policies: &std::path::Path) -> Result<Config, String> {
    let mut config = match path {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    config.policies.dir = policies.to_owned();
    Ok(config)
}

fn authorize(args: AuthorizeArgs) -> ExitCode {
    let usage = |message: String| {
        eprintln!("error: {message}");
        ExitCode::from(2)
    };
    let mut config = match offline_config(args.config.as_deref(), &args.policies) {
        Ok(config) => config,
        Err(e) => return usage(e),
    };
    let input = match &args.request {
        Some(path) => {
            let text = if path.as_os_str() == "-" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map(|_| text)
            } else {
                std::fs::read_to_string(path)
            };
            let text = match text {
                Ok(text) => text,
                Err(e) => return usage(format!("{}: {e}", path.display())),
            };
            match cedargate::cli::check_json::parse(&text) {
                Ok(request) => cedargate::server::wire::check_input(request),
                Err(e) => return usage(format!("{}: {e}", path.display())),
            }
        }
        None => {
            let Some(principal) = args.principal.clone() else {
                return usage("give --request FILE or --principal spiffe://...".to_owned());
            };
            let certificate = match &args.cert {
                Some(path) => match std::fs::read_to_string(path) {
                    Ok(pem) => Some(pem),
                    Err(e) => return usage(format!("{}: {e}", path.display())),
                },
                None => {
                    // Only the SPIFFE ID is known: judge it by that, as the server would
                    // with require_certificate = false.
                    config.identity.require_certificate = false;
                    None
                }
            };
            let mut spec = cedargate::cli::offline::RequestSpec {
                principal,
                certificate,
                method: args.method.clone(),
                path: args.path.clone(),
                host: args.host.clone(),
                destination: args.destination.clone(),
                token: args.token.clone(),
                ..Default::default()
            };
            for header in &args.headers {
                let Some((name, value)) = header.split_once(':') else {
                    return usage(format!("--header `{header}` is not `name: value`"));
                };
                spec.headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
            for route in &args.route {
                let Some((key, value)) = route.split_once('=') else {
                    return usage(format!("--route `{route}` is not `key=value`"));
                };
                spec.route.insert(key.to_owned(), value.to_owned());
            }
            spec.input()
        }
    };
    let checker = match cedargate::pipeline::checker::Checker::load(config, Arc::new(SystemClock)) {
        Ok(checker) => checker,
        Err(e) => return usage(e.to_string()),
    };
    // The same retry the server does when a token names a key not fetched yet.
    let decision = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(async {
            let decision = checker.check(&input);
            if checker.refresh_keys_for(&decision).await {
                checker.check(&input)
            } else {
                decision
            }
        }),
        Err(e) => return usage(format!("cannot start the async runtime: {e}")),
    };
    let report = cedargate::cli::offline::Report::of(&decision);
    match args.format {
        Format::Text => println!("{}", report.human()),
        Format::Json => println!("{}", serde_json::to_string(&report).unwrap_or_default()),
    }
    if decision.is_allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn fmt(target: &std::path::Path, check: bool, format: Format) -> ExitCode {
    use cedargate::policy::format;
    let files = match format::policy_files(target) {
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

fn test(dir: &std::path::Path, config: Option<&std::path::Path>, format: Format) -> ExitCode {
    use cedargate::cli::offline;
    let fail = |message: String| {
        eprintln!("error: {message}");
        ExitCode::from(2)
    };
    let mut config = match offline_config(config, dir) {
        Ok(config) => config,
        Err(e) => return fail(e),
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
    let signer = match wants_tokens.then(|| cedargate::cli::test_tokens::TestSigner::install(&mut config)).transpose() {
        Ok(signer) => signer,
        Err(e) => return fail(e.to_string()),
    };
    let clock = Arc::new(offline::SettableClock::default());
    let checker = match cedargate::pipeline::checker::Checker::load(config, clock.clone()) {
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
    match format {
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

fn serve(
    config_path: Option<PathBuf>,
    listen: Option<String>,
    policies: Option<PathBuf>,
    admin_listen: Option<String>,
) -> ExitCode {
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
    if let Some(addr) = admin_listen {
        config.admin.listen = addr;
    }
    if let Err(e) = config.validate(&config_path.map_or("defaults".to_owned(), |p| p.display().to_string())) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = {
        let _inside = runtime.enter();
        match cedargate::ops::telemetry::init(&config) {
            Ok(telemetry) => telemetry,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let result = runtime.block_on(async {
        let running = cedargate::server::app::start(config, Arc::new(SystemClock)).await?;
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
