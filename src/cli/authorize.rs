//! `cedargate authorize`: decide one request offline with the server's own core
//! (`pipeline::authorize`, without an audit log), from flags or from a CheckRequest
//! as JSON. Exit 0 on allow, 1 on deny, 2 on a usage or configuration error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::cli::output::Format;
use crate::cli::{check_json, offline};
use crate::pipeline::authorize::Authorizer;
use crate::pipeline::checker::{Checker, SystemClock};
use crate::pipeline::decision::Decision;
use crate::pipeline::input::CheckInput;
use crate::server::wire;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Policy directory.
    #[arg(long, default_value = "policies")]
    pub policies: PathBuf,
    /// Configuration file (token issuers, identity settings).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// A CheckRequest as JSON, as Envoy sends it (`-` for stdin). Replaces the flags below.
    #[arg(long)]
    pub request: Option<PathBuf>,
    /// The caller's SPIFFE ID.
    #[arg(long)]
    pub principal: Option<String>,
    #[arg(long, default_value = "GET")]
    pub method: String,
    #[arg(long, default_value = "/")]
    pub path: String,
    #[arg(long, default_value = "")]
    pub host: String,
    /// `name: value`; repeatable.
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// A route's context extension, `key=value`; repeatable.
    #[arg(long = "route")]
    pub route: Vec<String>,
    /// `destination.principal`.
    #[arg(long, default_value = "")]
    pub destination: String,
    /// A bearer token.
    #[arg(long)]
    pub token: Option<String>,
    /// PEM file of the caller's certificate; without it the SPIFFE ID alone is used.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

pub fn run(args: Args) -> ExitCode {
    let usage = |message: String| {
        eprintln!("error: {message}");
        ExitCode::from(2)
    };
    let mut config = match offline::config(args.config.as_deref(), &args.policies) {
        Ok(config) => config,
        Err(e) => return usage(e.to_string()),
    };
    let input = match &args.request {
        Some(path) => match request_file(path) {
            Ok(input) => input,
            Err(e) => return usage(e),
        },
        None => {
            if args.cert.is_none() {
                // Only the SPIFFE ID is known: judge it by that, as the server would
                // with require_certificate = false.
                config.identity.require_certificate = false;
            }
            match request_flags(&args) {
                Ok(input) => input,
                Err(e) => return usage(e),
            }
        }
    };
    let checker = match Checker::load(config, Arc::new(SystemClock)) {
        Ok(checker) => checker,
        Err(e) => return usage(e.to_string()),
    };
    let authorizer = Authorizer::new(Arc::new(checker), None);
    let decision = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(authorizer.authorize(input, Decision::clone)),
        Err(e) => return usage(format!("cannot start the async runtime: {e}")),
    };
    let report = offline::Report::of(&decision);
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

/// A CheckRequest as JSON from a file, or from stdin for `-`.
fn request_file(path: &std::path::Path) -> Result<CheckInput, String> {
    let text = if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map(|_| text)
    } else {
        std::fs::read_to_string(path)
    };
    let text = text.map_err(|e| format!("{}: {e}", path.display()))?;
    let request = check_json::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(wire::check_input(request))
}

/// The request the flags describe.
fn request_flags(args: &Args) -> Result<CheckInput, String> {
    let principal = args.principal.clone().ok_or("give --request FILE or --principal spiffe://...")?;
    let certificate = match &args.cert {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?),
        None => None,
    };
    let mut spec = offline::RequestSpec {
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
        let (name, value) = header.split_once(':').ok_or(format!("--header `{header}` is not `name: value`"))?;
        spec.headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    for route in &args.route {
        let (key, value) = route.split_once('=').ok_or(format!("--route `{route}` is not `key=value`"))?;
        spec.route.insert(key.to_owned(), value.to_owned());
    }
    Ok(spec.input())
}
