//! Browser origins: a request with an `Origin` the server does not allow is refused (403) before
//! anything else looks at it; an allowed one gets CORS answers, so browser clients such as the
//! MCP Inspector's web UI can connect. Preflights carry no credentials, so they are answered
//! here, before the bearer guard.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

const ALLOW_METHODS: &str = "GET, POST, DELETE, OPTIONS";
const ALLOW_HEADERS: &str =
    "authorization, content-type, mcp-session-id, mcp-protocol-version, last-event-id, accept";
const EXPOSE_HEADERS: &str = "mcp-session-id, www-authenticate";

/// One allowed origin: `scheme://host:port`, `scheme://host:*`, or `scheme://host` (default port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedOrigin {
    scheme: String,
    host: String,
    /// `None` = any port.
    port: Option<u16>,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// Splits `scheme://host[:port]` (host may be a bracketed IPv6 literal) into lowercase parts.
fn split_origin(value: &str) -> Option<(String, String, Option<&str>)> {
    let (scheme, rest) = value.split_once("://")?;
    if rest.is_empty() || rest.contains('/') {
        return None;
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{}]", host.to_ascii_lowercase()), port)
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host.to_ascii_lowercase(), Some(port)),
            None => (rest.to_ascii_lowercase(), None),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some((scheme.to_ascii_lowercase(), host, port))
}

impl AllowedOrigin {
    pub fn parse(value: &str) -> Result<AllowedOrigin, String> {
        let bad = || format!("invalid origin {value:?}: expected scheme://host[:port|:*]");
        let (scheme, host, port) = split_origin(value).ok_or_else(bad)?;
        let port = match port {
            Some("*") => None,
            Some(p) => Some(p.parse().map_err(|_| bad())?),
            None => Some(default_port(&scheme).ok_or_else(bad)?),
        };
        Ok(AllowedOrigin { scheme, host, port })
    }

    fn matches(&self, origin: &str) -> bool {
        let Some((scheme, host, port)) = split_origin(origin) else {
            return false;
        };
        let port = match port {
            Some(p) => p.parse().ok(),
            None => default_port(&scheme),
        };
        scheme == self.scheme && host == self.host && self.port.is_none_or(|p| Some(p) == port)
    }
}

/// The loopback origins every server allows, plus the operator's.
pub fn allowed_origins(extra: &[String]) -> Result<Vec<AllowedOrigin>, String> {
    let mut origins = Vec::new();
    for scheme in ["http", "https"] {
        for host in ["localhost", "127.0.0.1", "[::1]"] {
            origins.push(AllowedOrigin::parse(&format!("{scheme}://{host}:*"))?);
        }
    }
    for origin in extra {
        origins.push(AllowedOrigin::parse(origin)?);
    }
    Ok(origins)
}

fn is_allowed(origins: &[AllowedOrigin], origin: &str) -> bool {
    origins.iter().any(|o| o.matches(origin))
}

fn add_cors_headers(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}

/// Refuses disallowed origins, answers preflights, and adds CORS headers for allowed origins.
pub async fn cors(
    State(origins): State<std::sync::Arc<Vec<AllowedOrigin>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(origin) = request.headers().get(header::ORIGIN).cloned() else {
        return next.run(request).await;
    };
    if !origin.to_str().is_ok_and(|o| is_allowed(&origins, o)) {
        return (StatusCode::FORBIDDEN, "Forbidden: origin not allowed").into_response();
    }
    if request.method() == Method::OPTIONS {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        add_cors_headers(headers, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        return response;
    }
    let mut response = next.run(request).await;
    add_cors_headers(response.headers_mut(), origin);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_by_scheme_host_and_port() {
        let origins = allowed_origins(&["https://app.example.com".to_owned()]).unwrap();
        for ok in [
            "http://localhost:6274",
            "http://127.0.0.1:1",
            "https://[::1]:8443",
            "https://app.example.com",
            "https://app.example.com:443",
            "HTTPS://APP.example.com",
        ] {
            assert!(is_allowed(&origins, ok), "{ok}");
        }
        for refused in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://evil.example.com",
            "http://localhost.evil.com:80",
            "null",
            "https://app.example.com/path",
        ] {
            assert!(!is_allowed(&origins, refused), "{refused}");
        }
    }

    #[test]
    fn bad_allowed_origins_are_refused() {
        for bad in ["app.example.com", "ftp://x", "https://x:port", "https://"] {
            assert!(AllowedOrigin::parse(bad).is_err(), "{bad}");
        }
    }
}
