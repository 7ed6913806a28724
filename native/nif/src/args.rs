//! The one way the NIF rejects an argument: `raise ArgumentError, message`. Options are validated
//! in Elixir, with the messages users see; these guards only catch a caller that bypassed it, so
//! that a malformed argument is an exception in the caller, never a crash or a task with nonsense.

use rustler::{Error, NifException};

/// `%ArgumentError{message: ...}`, so Elixir callers can `rescue ArgumentError`.
#[derive(NifException)]
#[module = "ArgumentError"]
struct ArgumentError {
    message: String,
}

/// The error that raises `ArgumentError` with `message`.
pub(crate) fn bad(message: impl Into<String>) -> Error {
    Error::RaiseTerm(Box::new(ArgumentError {
        message: message.into(),
    }))
}

/// `v` milliseconds, for a duration argument `key` that must be in `1..=max_ms`.
pub(crate) fn millis(key: &str, v: u64, max_ms: u64) -> rustler::NifResult<std::time::Duration> {
    if v == 0 || v > max_ms {
        return Err(bad(format!(
            "expected :{key} to be a duration in 1..{max_ms} ms, got: {v}"
        )));
    }
    Ok(std::time::Duration::from_millis(v))
}
