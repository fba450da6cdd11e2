//! Loading a policy directory for serving: read, parse and strictly validate it
//! (`policy::set`), then prove the schema fits every request cedargate builds
//! (`policy::request`). What reloads, starts or validates a set goes through here.

use std::path::Path;

use crate::config::TokenModel;
use crate::policy::request;
use crate::policy::set::{self, Diagnostic, LoadError, PolicyFiles, PolicySnapshot, SCHEMA_FILE};

/// Loads and validates a policy directory. `tokens` says what the configured token
/// issuers add to requests, which the schema must declare too.
pub fn load_dir(dir: &Path, tokens: &TokenModel) -> Result<PolicySnapshot, LoadError> {
    let fail = |diagnostics: Vec<Diagnostic>| LoadError { dir: dir.to_owned(), diagnostics };
    let files = set::read_dir(dir).map_err(|d| fail(vec![d]))?;
    load_files(&files, tokens).map_err(fail)
}

/// Builds a snapshot from file contents (also used by tests and tools).
pub fn load_files(files: &PolicyFiles, tokens: &TokenModel) -> Result<PolicySnapshot, Vec<Diagnostic>> {
    let snapshot = set::parse_files(files)?;
    request::check_schema_contract(&snapshot, tokens).map_err(|error| {
        vec![Diagnostic {
            help: Some(
                "the schema must declare the types cedargate fills in for every request; compare with the shipped \
                 policies/schema.cedarschema"
                    .to_owned(),
            ),
            ..Diagnostic::file_level(SCHEMA_FILE, error.to_string())
        }]
    })?;
    Ok(snapshot)
}
