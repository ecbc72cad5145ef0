//! The web console (SPEC §13): pages for people, served by the binary itself, that act only
//! through the REST API (`/v1`) like any other client.
//!
//! - `/console`: one HTML page, its stylesheet and its script, compiled into the binary
//!   (`assets/`); no external asset, CSP `default-src 'self'`, framing forbidden. The script
//!   builds every element with `textContent`, never HTML from data.
//! - `/console/session`: sign-in (`POST`, the secret posted once; the answer holds the
//!   session's CSRF token, which the page keeps in its origin's storage), who the session is
//!   (`GET`, with that token: the cookie alone learns nothing), sign-out (`DELETE`). `session` holds the sessions; the REST
//!   check (`rest::auth`) accepts a session's cookie with its CSRF token as that session's
//!   token, so the console's every action meets the one decision path a bearer meets.

pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::rules::cidr::canonical_ip;
use crate::service::Service;
pub use session::{Refusal, Sessions};

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

/// A sign-in body holds one secret: a few hundred bytes is plenty.
const MAX_SIGN_IN_BYTES: usize = 4096;

/// The console's policy: its own scripts, styles and API only; never framed.
pub const CSP: &str = "default-src 'self'; base-uri 'none'; form-action 'self'; \
                       frame-ancestors 'none'; object-src 'none'";

#[derive(Clone)]
pub struct Console {
    pub service: Arc<Service>,
    pub sessions: Arc<Sessions>,
}

pub fn routes(console: Console) -> Router {
    Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/app.js", get(script))
        .route("/console/app.css", get(style))
        .route(
            "/console/session",
            get(session_info).post(sign_in).delete(sign_out),
        )
        .with_state(console)
}

/// The headers every console response carries.
fn hardened(mut response: Response, content_type: &'static str) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn index() -> Response {
    hardened(INDEX.into_response(), "text/html; charset=utf-8")
}

async fn script() -> Response {
    hardened(SCRIPT.into_response(), "text/javascript; charset=utf-8")
}

async fn style() -> Response {
    hardened(STYLE.into_response(), "text/css; charset=utf-8")
}

/// A console answer: JSON with the console's headers.
fn answer(status: StatusCode, body: &Value) -> Response {
    hardened(
        (status, body.to_string()).into_response(),
        "application/json",
    )
}

/// A refusal as the REST API words them (problem+json with a `code`).
pub fn refusal(status: StatusCode, code: &str, detail: &str) -> Response {
    let body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "code": code,
        "detail": detail,
    });
    hardened(
        (status, body.to_string()).into_response(),
        "application/problem+json",
    )
}

/// The answer to a refused console request, with the cookie cleared when its session is gone.
pub fn refused(sessions: &Sessions, why: &Refusal) -> Response {
    let mut response = match why {
        Refusal::NoSession => refusal(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "not signed in (or the session has ended): sign in to the console again",
        ),
        Refusal::Ended(why) => refusal(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            &format!("the console session has ended: {why}"),
        ),
        Refusal::Forged(why) => {
            return refusal(
                StatusCode::FORBIDDEN,
                "forbidden",
                &format!("refused a console request: {why}"),
            );
        }
    };
    if let Ok(value) = HeaderValue::from_str(&sessions.clear_cookie()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `GET /console/session` with the session's CSRF token: who the session is, for a page that
/// was reloaded (the script keeps the token from its sign-in in its origin's storage).
async fn session_info(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let ip = canonical_ip(peer.ip());
    // The CSRF token is never handed out again: cookies reach every port of a host, so the
    // cookie alone must not be enough to learn it (the page keeps it from its sign-in).
    match console
        .sessions
        .check(&console.service, &Method::GET, &headers, ip, false)
    {
        Ok((token, _)) => answer(StatusCode::OK, &json!({"token_id": token})),
        Err(why) => refused(&console.sessions, &why),
    }
}

/// `POST /console/session` with `{"token": "mcp_…"}`: the secret authenticates once (from
/// this peer, within its sign-in allowance) and becomes a session cookie.
async fn sign_in(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ip = canonical_ip(peer.ip());
    if let Err(why) = console.sessions.same_origin(&headers, true) {
        return refused(&console.sessions, &why);
    }
    if let Err(wait) = console.sessions.take_sign_in(ip, Instant::now()) {
        tracing::warn!(client_ip = %ip, "refused a console sign-in: rate limit");
        let mut response = refusal(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many sign-in attempts from this address: wait, then try again",
        );
        let seconds = wait.as_secs().max(1).to_string();
        if let Ok(value) = HeaderValue::from_str(&seconds) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let bytes = match crate::http::read_body(body, MAX_SIGN_IN_BYTES).await {
        Ok(bytes) => bytes,
        Err(crate::http::BodyFault::TooLarge) => {
            return refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_argument",
                "a sign-in body holds one token: at most 4 KiB",
            );
        }
        Err(crate::http::BodyFault::Late) => return crate::http::body_too_late(),
    };
    let secret = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(fields)) => match fields.get("token") {
            Some(Value::String(secret)) if fields.len() == 1 => secret.trim().to_owned(),
            _ => {
                return refusal(
                    StatusCode::BAD_REQUEST,
                    "invalid_argument",
                    "send {\"token\": \"mcp_…\"} and nothing else",
                );
            }
        },
        _ => {
            return refusal(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                "the body must be the JSON object {\"token\": \"mcp_…\"}",
            );
        }
    };
    let token = match console.service.authenticate(&secret, Some(ip)) {
        Ok(token) => token,
        Err(failure) => {
            let message = crate::secret::redact_secrets(&failure.to_string());
            tracing::info!(client_ip = %ip, "refused a console sign-in: {message}");
            return refusal(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                &format!("this token cannot sign in: {message}"),
            );
        }
    };
    // A browser holds one session: signing in again ends the one it had.
    if let Some(previous) = console.sessions.cookie(&headers) {
        console.sessions.sign_out(previous);
    }
    let lineage = console
        .service
        .lineage_root(&token)
        .unwrap_or_else(|| token.clone());
    let Some(signed_in) = console
        .sessions
        .sign_in((token, lineage), &secret, Instant::now())
    else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "the token is not a tokenwarden secret",
        );
    };
    tracing::info!(client_ip = %ip, token_id = %signed_in.token, "console sign-in");
    let mut response = answer(
        StatusCode::CREATED,
        &json!({"token_id": signed_in.token, "csrf": signed_in.csrf}),
    );
    if let Ok(value) = HeaderValue::from_str(&console.sessions.set_cookie(&signed_in.cookie_value))
    {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `DELETE /console/session`: ends the session (with its CSRF token, from this origin).
async fn sign_out(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let ip = canonical_ip(peer.ip());
    let checked = console
        .sessions
        .check(&console.service, &Method::DELETE, &headers, ip, false);
    match checked {
        Ok(_) | Err(Refusal::Ended(_)) => {}
        Err(why) => return refused(&console.sessions, &why),
    }
    if let Some(cookie) = console.sessions.cookie(&headers) {
        console.sessions.sign_out(cookie);
    }
    let mut response = answer(StatusCode::OK, &json!({"signed_out": true}));
    if let Ok(value) = HeaderValue::from_str(&console.sessions.clear_cookie()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}
