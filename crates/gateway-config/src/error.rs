//! Errors that point at a place in the configuration file.

use std::fmt;

/// One problem in the configuration file, at a 1-based line and column.
///
/// Displays as `FILE:LINE:COL: message`, the form `gateway check` prints and
/// `/admin/config/status` reports. Columns count characters, not bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{col}: {message}")]
pub struct ConfigError {
    /// The file name as the caller gave it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// What is wrong, on one line.
    pub message: String,
}

impl ConfigError {
    /// An error that has no better position than the start of the file.
    pub fn at_start(file: &str, message: impl Into<String>) -> Self {
        ConfigError { file: file.to_owned(), line: 1, col: 1, message: one_line(&message.into()) }
    }

    /// An error at byte `offset` of `text`, such as the start of a `Spanned` value of
    /// a parsed `Config` (spans are offsets into the file as written).
    pub fn at_offset(file: &str, text: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, col) = crate::env::line_col(text, offset);
        ConfigError { file: file.to_owned(), line, col, message: one_line(&message.into()) }
    }
}

/// Every error found in one file, in file order; displays one per line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<Vec<ConfigError>> for ConfigErrors {
    fn from(errors: Vec<ConfigError>) -> Self {
        ConfigErrors(errors)
    }
}

impl From<ConfigErrors> for Vec<ConfigError> {
    fn from(errors: ConfigErrors) -> Self {
        errors.0
    }
}

impl ConfigErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Messages are single lines: toml's multi-line messages are joined with `; `.
pub(crate) fn one_line(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for part in message.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(part);
    }
    out
}
