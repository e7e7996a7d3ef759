//! `vortexctl`'s parts: JSON input ([`json`]), point files ([`input`]), the quickstart
//! ([`demo`]), host checks ([`doctor`]), and the errors and exit codes they share.
//!
//! Exit codes (docs/VORTEXCTL.md): 0 success; 1 the server answered with an error or the
//! operation failed; 2 a mistake in the command line or an input file; 3 the server could
//! not be reached; 4 the server stayed THROTTLED through every retry.

pub mod demo;
pub mod doctor;
pub mod input;
pub mod json;

use std::time::Duration;
use vortex_vbp::client::ClientError;

/// The operation failed, or the server refused it.
pub const EXIT_FAILED: u8 = 1;
/// A mistake in the command line or an input file.
pub const EXIT_USAGE: u8 = 2;
/// The server could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;
/// The server stayed THROTTLED.
pub const EXIT_THROTTLED: u8 = 4;

/// A failure with the exit code it maps to, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlError {
    /// The exit code.
    pub code: u8,
    /// The message, on one line where possible.
    pub message: String,
}

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CtlError {}

impl CtlError {
    /// A mistake in the command line or an input file.
    pub fn usage(message: impl Into<String>) -> CtlError {
        CtlError {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }

    /// The operation failed.
    pub fn runtime(message: impl Into<String>) -> CtlError {
        CtlError {
            code: EXIT_FAILED,
            message: message.into(),
        }
    }

    /// A client error, with the exit code and a hint for the ones a user can act on.
    pub fn from_client(error: ClientError) -> CtlError {
        match &error {
            ClientError::Resolve { .. } | ClientError::NoEndpoint => CtlError {
                code: EXIT_UNREACHABLE,
                message: format!(
                    "{error}\n  --address (or VORTEX_ADDRESS) takes HOST:PORT, for example \
                     127.0.0.1:7700"
                ),
            },
            ClientError::Connect { .. } => CtlError {
                code: EXIT_UNREACHABLE,
                message: format!(
                    "{error}\n  start one with: cargo run --release -p vortex-dataplane -- run \
                     --config firmware-config/examples/dev.toml\n  or point vortexctl at it with \
                     --address HOST:PORT (or VORTEX_ADDRESS)"
                ),
            },
            ClientError::Throttled { .. } => CtlError {
                code: EXIT_THROTTLED,
                message: format!("{error}; the server is overloaded: try again later"),
            },
            _ => CtlError::runtime(error.to_string()),
        }
    }
}

/// Runs `call` until it is not THROTTLED, whole or in part (waiting the server's hint, doubling from 1 ms up
/// to 1 s), at most 60 times.
pub fn retrying<T>(mut call: impl FnMut() -> Result<T, ClientError>) -> Result<T, ClientError> {
    let mut wait = Duration::from_millis(1);
    for _ in 0..60 {
        match call() {
            // THROTTLED whole or in part (`Partial`): writes are idempotent, so all again.
            Err(error) => match error.retry_after() {
                Some(retry_after) => {
                    std::thread::sleep(wait.max(retry_after).min(Duration::from_secs(1)));
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
                None => return Err(error),
            },
            done => return done,
        }
    }
    call()
}
