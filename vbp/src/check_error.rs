//! The error type VBP gives rkyv and bytecheck when it checks, reads or writes a body.
//!
//! `rancor::Error`, their usual one, keeps what went wrong only in builds with debug
//! assertions: a release server answered every malformed body with "failed without error
//! information; enable debug assertions…". [`CheckError`] keeps the message and the path to
//! it (each trace names the field, element or variant being checked) in every build. It is
//! made only on the error path, and bounded: at most [`TRACES_MAX`] traces of at most
//! [`TEXT_MAX`] bytes each, so that a hostile body cannot make the answer grow. Memory
//! addresses in the messages (rkyv names the pointers it checked) become `0x…`: the answer
//! goes to the client, and addresses would tell it where the server's heap is.

use std::fmt;

/// Traces kept (the innermost first, as they are added).
pub const TRACES_MAX: usize = 8;
/// Bytes kept of the message and of each trace.
pub const TEXT_MAX: usize = 200;

/// What failed, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckError {
    message: String,
    traces: Vec<String>,
}

/// `text` with every hexadecimal number (`0x` and digits) written `0x…`.
fn without_addresses(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("0x") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let digits = after
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(after.len());
        out.push_str(if digits > 0 { "0x…" } else { "0x" });
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// `text` without addresses, cut to [`TEXT_MAX`] bytes at a character boundary.
fn bounded(text: String) -> String {
    let text = without_addresses(&text);
    if text.len() <= TEXT_MAX {
        return text;
    }
    let mut end = TEXT_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        for trace in &self.traces {
            write!(f, "; {trace}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CheckError {}

impl rkyv::rancor::Trace for CheckError {
    fn trace<R>(mut self, trace: R) -> Self
    where
        R: fmt::Debug + fmt::Display + Send + Sync + 'static,
    {
        if self.traces.len() < TRACES_MAX {
            self.traces.push(bounded(trace.to_string()));
        }
        self
    }
}

impl rkyv::rancor::Source for CheckError {
    fn new<T: std::error::Error + Send + Sync + 'static>(source: T) -> Self {
        CheckError {
            message: bounded(source.to_string()),
            traces: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rkyv::rancor::{Source, Trace};

    #[derive(Debug)]
    struct Failed(String);

    impl fmt::Display for Failed {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for Failed {}

    #[test]
    fn the_message_and_its_traces_are_kept_and_bounded() {
        let mut error = CheckError::new(Failed("bad length".into()));
        for level in 0..20 {
            error = error.trace(format!("while checking field {level}"));
        }
        let text = error.to_string();
        assert!(
            text.starts_with("bad length; while checking field 0"),
            "{text}"
        );
        assert_eq!(error.traces.len(), TRACES_MAX);
        let long = CheckError::new(Failed("é".repeat(1000)));
        assert!(long.message.len() <= TEXT_MAX && long.message.starts_with('é'));
    }

    #[test]
    fn addresses_are_not_told() {
        let error = CheckError::new(Failed(
            "ptr 0x00007fe44800178f size 24 in range 0x7fe448001770..0x7fe448001788, 0x".into(),
        ))
        .trace("at 0xdeadBEEF");
        assert_eq!(
            error.to_string(),
            "ptr 0x… size 24 in range 0x…..0x…, 0x; at 0x…"
        );
    }
}
