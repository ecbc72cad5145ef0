//! The bearer guard in front of `/mcp`: every request (POST, GET, DELETE) is authenticated
//! before rmcp sees it, sessions stay with the token that opened them, malformed bodies get
//! JSON-RPC errors, and open response streams close when their secret stops authenticating.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio_stream::StreamExt;

use super::inflight::Ticket;
use super::sessions::{SessionCheck, Sessions};
use super::{BODY_DEADLINE, BodyFault, MAX_BODY_BYTES, STREAM_RECHECK, body_too_late, read_body};
use crate::mcp::{Authenticated, Presented};
use crate::observe::{Front, Unauthenticated};
use crate::rules::cidr::canonical_ip;
use crate::secret::TokenId;
use crate::service::{RefusedKnown, Service};

const SESSION_HEADER: &str = "mcp-session-id";
/// How long a client refused for lack of session room should wait.
const RETRY_AFTER_SECONDS: &str = "10";

#[derive(Clone)]
pub(super) struct GuardState {
    pub service: Arc<Service>,
    pub sessions: Arc<Sessions>,
    /// Where the protected resource metadata lives: every challenge names it (RFC 9728 §5.1).
    pub resource_metadata: Arc<str>,
    /// Whether the second token succeeds the first (an OAuth refresh replaced it), so a session
    /// the first opened may carry on with the second.
    pub succeeds: Arc<Succession>,
    /// The standalone streams each token holds open (bounded: see `streams`).
    pub streams: Arc<super::streams::Streams>,
    /// Requests in flight per lineage (bounded: see `inflight`).
    pub inflight: Arc<super::inflight::InFlight>,
    /// The scope an OAuth consent could add so that the token may make a `tools/call` it is
    /// refused (`TokenServer::step_up_scope`): such a call is answered 403 `insufficient_scope`.
    pub step_up: Arc<StepUp>,
}

/// Asked with (the caller, the tool's name, the client's address).
pub(super) type StepUp = dyn Fn(&TokenId, &str, IpAddr) -> Option<String> + Send + Sync;

/// Asked with (the token that opened a session, the token presenting it now).
pub(super) type Succession = dyn Fn(&TokenId, &TokenId) -> bool + Send + Sync;

/// Why a request carries no usable bearer.
enum NoBearer {
    /// No credentials at all: the challenge carries no error code (RFC 6750 §3.1).
    Missing,
    Malformed(&'static str),
}

fn bearer(headers: &HeaderMap) -> Result<&str, NoBearer> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(NoBearer::Missing)?;
    let value = value
        .to_str()
        .map_err(|_| NoBearer::Malformed("malformed Authorization header: it must be ASCII"))?;
    let (scheme, token) = value.split_once(' ').ok_or(NoBearer::Malformed(
        "malformed Authorization header: expected Bearer <token>",
    ))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(NoBearer::Malformed(
            "unsupported authorization scheme: use Bearer",
        ));
    }
    Ok(token.trim())
}

/// [`bearer`] for callers outside this module: the secret, or `None` for no credentials, or
/// the malformation's description.
pub(super) fn bearer_of(headers: &HeaderMap) -> Result<&str, Option<&'static str>> {
    bearer(headers).map_err(|e| match e {
        NoBearer::Missing => None,
        NoBearer::Malformed(description) => Some(description),
    })
}

/// A 401 with an RFC 6750 challenge naming the resource metadata (RFC 9728), so OAuth clients
/// can discover the authorization server; `description` is `None` for a request without
/// credentials.
pub(super) fn unauthorized(resource_metadata: &str, description: Option<&str>) -> Response {
    let metadata = format!("resource_metadata=\"{}\"", header_safe(resource_metadata));
    let Some(description) = description else {
        let mut response = (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":"unauthorized","error_description":"missing bearer token: send Authorization: Bearer <token>"}"#,
        )
            .into_response();
        if let Ok(value) =
            HeaderValue::from_str(&format!("Bearer realm=\"tokenwarden\", {metadata}"))
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        return response;
    };
    let challenge = format!(
        "Bearer realm=\"tokenwarden\", {metadata}, error=\"invalid_token\", error_description=\"{}\"",
        header_safe(description)
    );
    let mut response = (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "error": "invalid_token", "error_description": description })
            .to_string(),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// How long the body of a request without valid credentials is read before its 401 goes out
/// with the connection closed: a client writes its body right after its headers, and a
/// connection busy with a request is never closed to make room, so a caller without a token
/// must not hold one for the full body deadline.
const UNAUTHENTICATED_BODY_DEADLINE: Duration = Duration::from_secs(1);

/// Answers a request refused before its body was read, reading (and dropping) the body first,
/// within the size limit and `deadline`. A client that writes the body after the headers would
/// otherwise meet a connection closed with its body unread: the kernel resets it, and the
/// client loses the answer (the 401 a connector needs to start OAuth) with it.
async fn refuse(request: Request, mut response: Response, deadline: Duration) -> Response {
    if let Some(shield) = request.extensions().get::<super::listener::Shield>() {
        shield.doom();
    }
    if super::drain_body_within(request.into_body(), MAX_BODY_BYTES, deadline)
        .await
        .is_err()
    {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Header values must be visible ASCII inside a quoted string; the JSON body keeps the exact
/// text.
fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .collect()
}

/// A JSON-RPC error outside any request (id null), with an HTTP status.
fn jsonrpc_error(status: StatusCode, code: i32, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({
            "jsonrpc": "2.0",
            "id": null,
            "error": { "code": code, "message": message },
        })
        .to_string(),
    )
        .into_response()
}

/// The little the guard needs to know about a POSTed message.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    params: Option<Lenient<PeekParams<'a>>>,
}

#[derive(Deserialize)]
struct PeekParams<'a> {
    #[serde(borrow)]
    name: Option<Lenient<Cow<'a, str>>>,
}

/// A field the guard reads when it has the expected shape; any other value is left for rmcp
/// to answer (with the error it would give anyway).
#[derive(Deserialize)]
#[serde(untagged)]
enum Lenient<T> {
    Expected(T),
    Other(serde::de::IgnoredAny),
}

/// What a POST body is, decided before rmcp parses it.
enum Posted {
    Initialize,
    /// `tools/call` of the named tool.
    ToolCall(String),
    Other,
}

fn peek(body: &[u8]) -> Result<Posted, Box<Response>> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        // Valid JSON or not, a batch is refused as one: MCP 2025-06-18 and later have none.
        return Err(Box::new(jsonrpc_error(
            StatusCode::BAD_REQUEST,
            -32600,
            "Invalid Request: JSON-RPC batches are not supported; send one message per request",
        )));
    }
    match serde_json::from_slice::<Peek<'_>>(body) {
        Ok(peek) if peek.method.as_deref() == Some("initialize") => Ok(Posted::Initialize),
        Ok(Peek {
            method: Some(method),
            params:
                Some(Lenient::Expected(PeekParams {
                    name: Some(Lenient::Expected(name)),
                })),
        }) if method == "tools/call" => Ok(Posted::ToolCall(name.into_owned())),
        Ok(_) => Ok(Posted::Other),
        Err(e) if e.is_data() => Err(Box::new(jsonrpc_error(
            StatusCode::BAD_REQUEST,
            -32600,
            "Invalid Request: expected one JSON-RPC message object",
        ))),
        Err(_) => Err(Box::new(jsonrpc_error(
            StatusCode::BAD_REQUEST,
            -32700,
            "Parse error: the body is not valid JSON",
        ))),
    }
}

pub(super) async fn guard(
    State(state): State<GuardState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let client_ip = canonical_ip(peer.ip());
    let secret = match bearer(request.headers()) {
        Ok(secret) => Presented::new(secret),
        Err(NoBearer::Missing) => {
            tracing::debug!(%client_ip, "refused request: no credentials");
            let observer = state.service.observer();
            observer.unauthenticated(Unauthenticated::Missing, Front::Mcp);
            let refusal = unauthorized(&state.resource_metadata, None);
            return refuse(request, refusal, UNAUTHENTICATED_BODY_DEADLINE).await;
        }
        Err(NoBearer::Malformed(description)) => {
            tracing::debug!(%client_ip, "refused request: {description}");
            let observer = state.service.observer();
            observer.unauthenticated(Unauthenticated::Malformed, Front::Mcp);
            let refusal = unauthorized(&state.resource_metadata, Some(description));
            return refuse(request, refusal, UNAUTHENTICATED_BODY_DEADLINE).await;
        }
    };
    let token_id = match state.service.authenticate(secret.as_str(), Some(client_ip)) {
        Ok(id) => id,
        Err(failure) => {
            let description = failure.to_string();
            tracing::debug!(%client_ip, "refused request: {description}");
            state
                .service
                .observe_refusal(RefusedKnown::Auth(&failure), Front::Mcp);
            let refusal = unauthorized(&state.resource_metadata, Some(&description));
            return refuse(request, refusal, UNAUTHENTICATED_BODY_DEADLINE).await;
        }
    };

    // Counted from here, before the session is checked or the body read, until the response
    // body ends; a counted request shields its connection from eviction (`listener`).
    let chain = state.service.lineage_chain(&token_id);
    let lineage = chain[0].clone();
    let Some(ticket) = state.inflight.enter(chain) else {
        tracing::debug!(token = %token_id, "refused request: its lineage has its maximum in flight");
        state
            .service
            .observe_refusal(RefusedKnown::InFlight(&token_id), Front::Mcp);
        return too_many_in_flight(request, state.inflight.per_lineage()).await;
    };
    state.service.observer().admitted(Front::Mcp);
    let shield = request
        .extensions()
        .get::<super::listener::Shield>()
        .map(|shield| shield.raise(&lineage));
    let response = checked(
        &state,
        request,
        next,
        (token_id, client_ip, secret),
        (lineage, &ticket),
    )
    .await;
    let ticket = (ticket, shield);
    response.map(|body| super::inflight::hold(body, ticket))
}

/// The guard's session checks, for an authenticated request holding its ticket.
async fn checked(
    state: &GuardState,
    request: Request,
    next: Next,
    (token_id, client_ip, secret): (TokenId, IpAddr, Presented),
    (lineage, ticket): (TokenId, &Ticket),
) -> Response {
    let session = request
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(session) = &session {
        match state.sessions.check(session, &token_id) {
            SessionCheck::Owned => {}
            SessionCheck::Foreign(owner)
                if (state.succeeds)(&owner, &token_id)
                    && state.sessions.rebind(session, &owner, &token_id) =>
            {
                tracing::debug!(from = %owner, to = %token_id, "a session carries on with its token's successor");
            }
            SessionCheck::Foreign(_) => {
                tracing::debug!(token = %token_id, "refused request: session belongs to another token");
                let forbidden = (
                    StatusCode::FORBIDDEN,
                    "Forbidden: this MCP session was opened with another token",
                );
                return refuse(request, forbidden.into_response(), BODY_DEADLINE).await;
            }
            SessionCheck::Unknown => {
                let unknown = (StatusCode::NOT_FOUND, "Not Found: no such session");
                return refuse(request, unknown.into_response(), BODY_DEADLINE).await;
            }
        }
    }

    if request.method() == Method::GET
        && let Some(session) = &session
    {
        // One stream per session: the old one ends first, so rmcp makes this one the stream.
        state.streams.close_session(session).await;
    }
    guarded(
        state,
        request,
        next,
        (token_id, client_ip, secret),
        (session, lineage, ticket),
    )
    .await
}

/// 403 for a call an OAuth-issued token may not make but a new consent could grant (RFC 6750
/// §3.1, MCP scope step-up): the challenge names the scope needed, so the client can send the
/// person to the consent page again.
fn insufficient_scope(
    resource_metadata: &str,
    token: &TokenId,
    tool: &str,
    scope: &str,
) -> Response {
    let description = format!(
        "token {token} may not call {}: its grant does not include it; ask for scope {scope}",
        header_safe(tool)
    );
    let challenge = format!(
        "Bearer realm=\"tokenwarden\", error=\"insufficient_scope\", scope=\"{}\", \
         resource_metadata=\"{}\", error_description=\"{}\"",
        header_safe(scope),
        header_safe(resource_metadata),
        header_safe(&description)
    );
    let mut response = (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({
            "error": "insufficient_scope",
            "error_description": description,
            "scope": scope,
        })
        .to_string(),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// A 429 for a lineage with its maximum in flight, after [`super::inflight::REFUSAL_DELAY`];
/// the connection closes after it.
async fn too_many_in_flight(request: Request, bound: usize) -> Response {
    if let Some(shield) = request.extensions().get::<super::listener::Shield>() {
        shield.doom();
    }
    tokio::time::sleep(super::inflight::REFUSAL_DELAY).await;
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({
            "error": "too_many_requests",
            "error_description": format!(
                "this token's lineage already has its maximum of requests in flight ({bound}, of which \
                 the tokens minted under any one token hold at most half); retry when one has ended"
            ),
        })
        .to_string(),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    let mut response = refuse(request, response, UNAUTHENTICATED_BODY_DEADLINE).await;
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The rest of the guard, for an authenticated request holding its ticket.
async fn guarded(
    state: &GuardState,
    request: Request,
    next: Next,
    (token_id, client_ip, secret): (TokenId, IpAddr, Presented),
    (session, token_lineage, ticket): (Option<String>, TokenId, &Ticket),
) -> Response {
    let (parts, body) = request.into_parts();
    let method = parts.method.clone();
    if method == Method::DELETE
        && let Some(session) = &session
        && !state.sessions.is_live(session).await
    {
        // rmcp closed it (idle) without the client knowing.
        state.sessions.closed(session);
        return (StatusCode::NOT_FOUND, "Not Found: no such session").into_response();
    }
    // The lineage of a token opening a session: what shares the server's session room.
    let mut opening_lineage = None;
    let turn;
    let mut request = if method == Method::POST {
        let bytes = match read_body(body, MAX_BODY_BYTES).await {
            Ok(bytes) => bytes,
            Err(BodyFault::TooLarge) => {
                return (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Payload Too Large: request bodies are limited to 1 MiB",
                )
                    .into_response();
            }
            Err(BodyFault::Late) => {
                tracing::debug!(token = %token_id, "refused request: body not sent in time");
                return body_too_late();
            }
        };
        // A lineage with many requests in flight runs them a few at a time (`inflight`):
        // the turn is taken once the body is here, so a body sent late cannot make the
        // request give its turn back before its work starts.
        turn = ticket.turn().await;
        let posted = match peek(&bytes) {
            Ok(posted) => posted,
            Err(response) => return *response,
        };
        if matches!(posted, Posted::Initialize) && session.is_none() {
            opening_lineage = Some(token_lineage.clone());
        }
        if let Posted::ToolCall(name) = &posted
            && let Some(scope) = (state.step_up)(&token_id, name, client_ip)
        {
            tracing::debug!(token = %token_id, tool = %name, "refused a call: step-up needed ({scope})");
            return insufficient_scope(&state.resource_metadata, &token_id, name, &scope);
        }
        if let Some(lineage) = &opening_lineage
            && !state.sessions.has_room(lineage).await
        {
            tracing::warn!("refused a new session: the server holds its maximum");
            let mut response = (
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable: too many open sessions, retry later",
            )
                .into_response();
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
            return response;
        }
        Request::from_parts(parts, Body::from(bytes))
    } else {
        turn = ticket.turn().await;
        Request::from_parts(parts, body)
    };
    let declared_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
        });
    // Read only when traces are on: otherwise no span is built, so nothing needs it.
    let trace = state
        .service
        .observer()
        .tracer()
        .map(|_| crate::trace::Incoming::from_headers(request.headers()));
    request.extensions_mut().insert(Authenticated {
        token_id: token_id.clone(),
        client_ip,
        secret: Some(secret.clone()),
        trace,
    });
    let mut response = super::inflight::turned(next.run(request), turn).await;
    if method == Method::POST
        && declared_json
        && response.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE
    {
        // rmcp answers 415 when valid JSON is not a JSON-RPC message it knows.
        return jsonrpc_error(
            StatusCode::BAD_REQUEST,
            -32600,
            "Invalid Request: the body is not a valid JSON-RPC message",
        );
    }

    if session.is_none()
        && let Some(opened) = response
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
    {
        let lineage = opening_lineage.unwrap_or_else(|| token_lineage.clone());
        state.sessions.opened(opened, &token_id, &lineage).await;
    }
    if method == Method::DELETE
        && let Some(session) = &session
    {
        if response.status().is_success() {
            state.sessions.closed(session);
            *response.status_mut() = StatusCode::NO_CONTENT;
            *response.body_mut() = Body::empty();
        }
        return response;
    }
    // Long-lived streams are the standalone GET streams; a POST's stream ends with its reply.
    if method == Method::GET && super::reply::is_event_stream(&response) {
        let slot = state.streams.open(
            &token_id,
            &token_lineage,
            session.as_deref().unwrap_or_default(),
        );
        close_when_secret_stops(
            response,
            Arc::clone(&state.service),
            secret,
            (token_id, client_ip),
            slot,
        )
    } else {
        response
    }
}

/// Forwards a response stream until it ends, the secret that opened it stops authenticating
/// (revoked, paused, expired, or rotated out; checked every `STREAM_RECHECK`), or a newer
/// stream takes its `slot`.
fn close_when_secret_stops(
    response: Response,
    service: Arc<Service>,
    secret: Presented,
    (token, client_ip): (TokenId, IpAddr),
    slot: super::streams::Slot,
) -> Response {
    let (parts, body) = response.into_parts();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, axum::Error>>(16);
    tokio::spawn(async move {
        let mut frames = body.into_data_stream();
        let mut recheck = tokio::time::interval(STREAM_RECHECK);
        loop {
            tokio::select! {
                frame = frames.next() => match frame {
                    // A client that stops reading cannot keep a closed stream open.
                    Some(frame) => tokio::select! {
                        sent = tx.send(frame) => if sent.is_err() {
                            break;
                        },
                        _ = slot.stop.cancelled() => break,
                    },
                    None => break,
                },
                _ = recheck.tick() => {
                    if let Err(failure) = service.still_holds(secret.as_str(), &token, Some(client_ip)) {
                        tracing::info!(%token, "closing response stream: {failure}");
                        break;
                    }
                }
                _ = tx.closed() => break,
                _ = slot.stop.cancelled() => {
                    tracing::debug!(%token, "closing response stream: a newer stream or the stream bounds closed it");
                    break;
                }
            }
        }
        // rmcp's end of the stream first: the slot's end tells a waiting new stream that the
        // session has none.
        drop(frames);
        drop(slot);
    });
    Response::from_parts(
        parts,
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(response: Response) -> (u16, i64) {
        let status = response.status().as_u16();
        let body = futures_body(response);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        (status, value["error"]["code"].as_i64().unwrap())
    }

    fn futures_body(response: Response) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(axum::body::to_bytes(response.into_body(), 1 << 16))
            .unwrap()
            .to_vec()
    }

    #[test]
    fn bodies_are_classified_before_rmcp_sees_them() {
        assert!(matches!(
            peek(br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#),
            Ok(Posted::Initialize)
        ));
        assert!(matches!(
            peek(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
            Ok(Posted::Other)
        ));
        assert!(matches!(
            peek(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#),
            Ok(Posted::Other)
        ));
        // A tools/call is named for the step-up check; odd params are left to rmcp.
        assert!(matches!(
            peek(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"w\u0068oami","arguments":{"a":[1]}}}"#),
            Ok(Posted::ToolCall(name)) if name == "whoami"
        ));
        for odd in [
            &br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}"#[..],
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[1]}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
        ] {
            assert!(
                matches!(peek(odd), Ok(Posted::Other)),
                "{}",
                String::from_utf8_lossy(odd)
            );
        }
        for (body, expected) in [
            (&b"{not json"[..], (400, -32700)),
            (b"", (400, -32700)),
            (
                br#" [{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
                (400, -32600),
            ),
            (b"[", (400, -32600)),
            (b"42", (400, -32600)),
            (br#"{"method": 7}"#, (400, -32600)),
        ] {
            let Err(response) = peek(body) else {
                panic!("{body:?} should be refused")
            };
            assert_eq!(
                code(*response),
                expected,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
