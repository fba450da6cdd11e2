//! `cedargate fmt`: Cedar's own formatter over a policy directory.

use std::path::{Path, PathBuf};

use crate::policy::set::POLICY_EXTENSION;

/// Cedar's formatter settings, as the Cedar CLI uses them.
const LINE_WIDTH: usize = 80;
const INDENT: isize = 2;

/// One file's formatting.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Formatted {
    pub file: PathBuf,
    /// Whether the file's text differs from its formatted text.
    pub changed: bool,
    /// Why it could not be formatted (it does not parse).
    pub error: Option<String>,
    #[serde(skip)]
    pub text: String,
}

/// The `*.cedar` files of `target` (a directory), or `target` itself (a file).
pub fn policy_files(target: &Path) -> std::io::Result<Vec<PathBuf>> {
    if target.is_file() {
        return Ok(vec![target.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(target)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(POLICY_EXTENSION))
        .collect();
    files.sort();
    Ok(files)
}

/// A policy text Cedar's formatter cannot format (it does not parse).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(String);

/// Formats one policy text (comments are kept).
pub fn format_text(text: &str) -> Result<String, FormatError> {
    let config = cedar_policy_formatter::Config { line_width: LINE_WIDTH, indent_width: INDENT };
    cedar_policy_formatter::policies_str_to_pretty(text, &config).map_err(|e| FormatError(format!("{e:?}")))
}

/// Formats `file` without writing it.
pub fn format_file(file: &Path) -> Formatted {
    let result = std::fs::read_to_string(file).map_err(|e| format!("cannot read: {e}")).and_then(|original| {
        let formatted = format_text(&original).map_err(|e| e.to_string())?;
        Ok((formatted != original, formatted))
    });
    match result {
        Ok((changed, text)) => Formatted { file: file.to_owned(), changed, error: None, text },
        Err(error) => Formatted { file: file.to_owned(), changed: false, error: Some(error), text: String::new() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_keeps_comments_and_is_idempotent() {
        let messy =
            "// who may read\n@id(\"r\") permit(principal==User::\"a\",action,resource) when {   resource.x == 1 };";
        let once = format_text(messy).unwrap();
        assert!(once.contains("// who may read"), "{once}");
        assert_ne!(once, messy);
        assert_eq!(format_text(&once).unwrap(), once);
        assert!(format_text("permit (principal, action").is_err());
    }

    #[test]
    fn the_shipped_policies_are_formatted() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        for file in policy_files(&dir).unwrap() {
            let result = format_file(&file);
            assert_eq!(result.error, None);
            assert!(!result.changed, "{} is not formatted; run `cedargate fmt`", file.display());
        }
    }
}
