//! Errors as `application/problem+json` (RFC 9457), carrying the tools' `code`, with the
//! status codes of SPEC §12: 400 bad input, 401, 403 refused, 404 unknown (or not yours),
//! 409 conflict, 413, 422 `scope_exceeds_parent`, 429 with `Retry-After`. Only a failure of
//! the server itself is a 5xx.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::{Error, ErrorCode};

/// Every `code` a problem may carry: the tools' error codes, and the bearer check's.
pub const CODES: &[&str] = &[
    "unauthorized",
    "invalid_argument",
    "not_found",
    "forbidden",
    "scope_exceeds_parent",
    "conflict",
    "limit_exceeded",
    "rate_limited",
    "internal",
    "upstream_unavailable",
    "upstream_timeout",
    "upstream_result_too_large",
];

/// How long a caller refused for its rate limit should wait (the window slides).
const RATE_LIMITED_RETRY_SECONDS: &str = "10";

#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    code: String,
    detail: String,
}

impl Problem {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            code: code.to_owned(),
            detail: detail.into(),
        }
    }

    pub fn invalid(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "invalid_argument", detail)
    }

    pub fn too_large() -> Problem {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_argument",
            "request bodies are limited to 1 MiB",
        )
    }

    pub fn internal(detail: &str) -> Problem {
        tracing::error!(error = %detail, "REST request failed");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed; details are in its log",
        )
    }

    /// A tool's error, with the status its code stands for.
    pub fn from_error(error: &Error) -> Problem {
        Problem::new(status_of(error.code), error.code.as_str(), &error.message)
    }

    /// An error of the command line's code (the OAuth endpoints reuse it).
    pub fn from_cli(error: &crate::cli::CliError) -> Problem {
        let (status, code) = match error.code.as_ref() {
            "invalid_argument" | "usage" => (StatusCode::BAD_REQUEST, "invalid_argument"),
            "not_found" => (StatusCode::NOT_FOUND, "not_found"),
            "forbidden" => (StatusCode::FORBIDDEN, "forbidden"),
            "conflict" => (StatusCode::CONFLICT, "conflict"),
            _ => return Problem::internal(&error.message),
        };
        Problem::new(status, code, &error.message)
    }
}

/// The HTTP status of a tool's error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::ScopeExceedsParent => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Conflict | ErrorCode::LimitExceeded => StatusCode::CONFLICT,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
        ErrorCode::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::UpstreamResultTooLarge => StatusCode::BAD_GATEWAY,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = json!({
            "type": format!("urn:tokenwarden:error:{}", self.code),
            "title": title,
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response();
        // A body refused unread (too large, too late) leaves the connection unusable.
        if matches!(
            self.status,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
        ) {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RATE_LIMITED_RETRY_SECONDS),
            );
        }
        response
    }
}
