//! The crate's error type.
//!
//! Every configuration mistake is an [`InvalidConfig`]: the dotted name of the field, what was
//! wrong and what is accepted, printed on one line so that an operator reading a failed start
//! in a journal sees the fix at once. Binaries map [`Error::exit_code`] to their exit status.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Exit status for a configuration or usage error.
pub const EXIT_CODE_CONFIG: i32 = 2;
/// Exit status for a failure of the machine (discovery could not read sysfs, and so on).
pub const EXIT_CODE_RUNTIME: i32 = 1;

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidConfig {
    /// Where the config came from (a file path, or `built-in defaults`).
    pub origin: String,
    /// The line in the file, when the mistake has one.
    pub line: Option<usize>,
    /// The dotted field name (`io_uring.queue_depth`), or `(syntax)` for a file that is not TOML.
    pub field: String,
    /// What is wrong and what is accepted.
    pub message: String,
}

impl InvalidConfig {
    pub(crate) fn new(field: &str, message: impl Into<String>) -> Self {
        InvalidConfig {
            origin: String::new(),
            line: None,
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid config")?;
        if !self.origin.is_empty() {
            write!(f, " {}", self.origin)?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
        }
        // Invariant: one line. serde and toml messages are single-line, but a message quoting
        // user input could carry a newline; flatten it.
        let message = self.message.replace(['\n', '\r'], " ");
        write!(f, ": {}: {}", self.field, message)
    }
}

impl std::error::Error for InvalidConfig {}

/// Errors of configuration loading, discovery and mapping.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config names something this machine or this build cannot do.
    #[error("{0}")]
    Invalid(#[from] InvalidConfig),
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// sysfs or procfs did not say what discovery needs.
    #[error("hardware discovery failed at {path}: {detail}")]
    Discovery {
        /// The file that was missing or malformed.
        path: PathBuf,
        /// What was wrong with it.
        detail: String,
    },
}

impl Error {
    /// The process exit status a binary should use for this error: 2 for a mistake in the
    /// config or the command line, 1 for a machine that does not answer as expected.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Invalid(_) | Error::ReadConfig { .. } => EXIT_CODE_CONFIG,
            Error::Discovery { .. } => EXIT_CODE_RUNTIME,
        }
    }
}
