//! The typed errors every front end reports, with the codes of SPEC §5.

use std::fmt;

use serde::Serialize;

use crate::rules::authorize::{Denial, Rule};
use crate::store::StoreError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    Forbidden,
    ScopeExceedsParent,
    Conflict,
    LimitExceeded,
    RateLimited,
    Internal,
    /// A gateway tool whose upstream is not connected (or broke during the call).
    UpstreamUnavailable,
    /// A gateway tool call that outlived its upstream's `timeoutSeconds`.
    UpstreamTimeout,
    /// A gateway tool call whose upstream answered with more than the gateway reads (16 MiB).
    UpstreamResultTooLarge,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::ScopeExceedsParent => "scope_exceeds_parent",
            ErrorCode::Conflict => "conflict",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::UpstreamResultTooLarge => "upstream_result_too_large",
        }
    }
}

/// A failure a caller can act on: a code and a one-line message that never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

impl Error {
    /// Anything shaped like a secret in `message` is redacted: messages quote inputs, and an
    /// input may be a secret pasted in the wrong place.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        let message = message.into();
        let message = if message.contains(crate::secret::SECRET_PREFIX) {
            crate::secret::redact_secrets(&message)
        } else {
            message
        };
        Error { code, message }
    }
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::NotFound, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::Forbidden, message)
    }
    pub fn conflict(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::Conflict, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for Error {}

/// Not logged here: the front end that reports the error decides (the CLI prints it once; the
/// MCP server logs internal failures of tool calls).
impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        Error::new(ErrorCode::Internal, e.to_string())
    }
}

impl From<Denial> for Error {
    fn from(d: Denial) -> Error {
        let code = match d.rule {
            Rule::RateLimited => ErrorCode::RateLimited,
            Rule::UsesExhausted => ErrorCode::LimitExceeded,
            _ => ErrorCode::Forbidden,
        };
        Error::new(code, d.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;
