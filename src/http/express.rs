//! The express lane: `tools/call` and `tools/list` of a live session answered on the request's
//! own task, without rmcp's session machinery.
//!
//! rmcp carries every request of a session through a channel to the session's worker task, from
//! there to the service's task, which spawns a task for the handler, and the answer back the
//! same way: four tasks, their hand-offs and wake-ups, for one request. For the two requests
//! that make up nearly all of a session's traffic, this layer (inside the bearer guard, which
//! has already authenticated the request and checked that its session belongs to the token)
//! calls the same handler code directly and writes the same reply rmcp would.
//!
//! It takes only requests it can answer exactly as rmcp would, and hands everything else to
//! rmcp unchanged: a session rmcp holds, the usual headers (both media types accepted, a JSON
//! body, a known protocol revision, an allowed `Host`, no other `Mcp-*` header), and a plain
//! request (no `_meta`, hence no progress token or per-request protocol fields, no task or
//! input-required fields). Sessions stay alive as rmcp decides: rmcp closes a session when it
//! has seen no request for its keep-alive, so at least one request of each session per
//! [`RMCP_SEEN_WITHIN`] goes rmcp's way. A client's `notifications/cancelled` for a gateway call
//! answered here cancels it (and is passed on to rmcp too), as does the session's `DELETE`
//! or the server's shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CallToolRequestParams, ErrorData, JsonObject, RequestId, ServerJsonRpcMessage, ServerResult,
};
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::MAX_BODY_BYTES;
use crate::mcp::{Authenticated, TokenServer};

/// A session must have had a request go rmcp's way within this for the next one to be
/// answered here, so that rmcp's idle timer (`SESSION_IDLE`) keeps seeing a used session.
pub(super) const RMCP_SEEN_WITHIN: Duration = Duration::from_secs(60);
/// At most this many sessions are remembered as recently seen by rmcp; beyond it, requests of
/// sessions not remembered simply go rmcp's way.
const SEEN_CAPACITY: usize = 65_536;
/// The revisions whose session requests rmcp serves with the session model (the header must
/// name one of them).
const SESSION_REVISIONS: [&str; 3] = ["2025-03-26", "2025-06-18", "2025-11-25"];
const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

/// When rmcp last saw a request of each session, and when that table was last swept.
type Seen = (HashMap<Arc<str>, Instant>, Option<Instant>);

pub(super) struct Express {
    server: TokenServer,
    manager: Arc<LocalSessionManager>,
    /// The allowed `Host` names (lower case) that carry no port; a `Host` matching none of
    /// them goes to rmcp, which checks it against the whole list.
    hosts: Vec<String>,
    /// When rmcp last saw a request of each session, and when the table was last swept.
    seen: Mutex<Seen>,
    /// Gateway calls in flight here, by session and request id, for notifications/cancelled.
    calls: Mutex<HashMap<(Arc<str>, RequestId), CancellationToken>>,
    shutdown: CancellationToken,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Express {
    pub(super) fn new(
        server: TokenServer,
        manager: Arc<LocalSessionManager>,
        allowed_hosts: &[String],
        shutdown: CancellationToken,
    ) -> Express {
        Express {
            server,
            manager,
            hosts: allowed_hosts
                .iter()
                .filter(|h| !h.contains(':') && !h.contains('['))
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            seen: Mutex::default(),
            calls: Mutex::default(),
            shutdown,
        }
    }

    /// Whether rmcp saw a request of `session` recently enough for this one to skip it.
    fn seen_recently(&self, session: &str) -> bool {
        lock(&self.seen)
            .0
            .get(session)
            .is_some_and(|at| at.elapsed() < RMCP_SEEN_WITHIN)
    }

    /// Notes that a request of `session` goes rmcp's way now.
    fn rmcp_sees(&self, session: &str) {
        let mut guard = lock(&self.seen);
        let (seen, swept) = &mut *guard;
        if let Some(at) = seen.get_mut(session) {
            *at = Instant::now();
            return;
        }
        if seen.len() >= SEEN_CAPACITY {
            // At most one sweep a second, however fast sessions come: a full table of fresh
            // sessions makes new ones go rmcp's way until room is made.
            if swept.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
                return;
            }
            *swept = Some(Instant::now());
            seen.retain(|_, at| at.elapsed() < RMCP_SEEN_WITHIN);
            if seen.len() >= SEEN_CAPACITY {
                return;
            }
        }
        seen.insert(Arc::from(session), Instant::now());
    }

    fn cancel(&self, session: &str, id: &RequestId) {
        if let Some(token) = lock(&self.calls).get(&(Arc::from(session), id.clone())) {
            token.cancel();
        }
    }

    fn end_session(&self, session: &str) {
        lock(&self.seen).0.remove(session);
        for ((owner, _), token) in lock(&self.calls).iter() {
            if &**owner == session {
                token.cancel();
            }
        }
    }

    /// Whether the headers are the usual ones rmcp would accept for a session request.
    fn usual_headers(&self, headers: &HeaderMap) -> bool {
        // Quality values (`q=0` refuses a type) and quoted parameters are rmcp's to weigh.
        let plain_accept = headers.get_all(header::ACCEPT).iter().all(|v| {
            v.to_str()
                .is_ok_and(|v| !v.contains("q=") && !v.contains('"'))
        });
        let accepts = |wanted: &str| {
            headers.get_all(header::ACCEPT).iter().any(|v| {
                v.to_str().is_ok_and(|v| {
                    v.split(',').any(|item| {
                        item.split(';')
                            .next()
                            .is_some_and(|e| e.trim().eq_ignore_ascii_case(wanted))
                    })
                })
            })
        };
        let json_body = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|e| e.trim().eq_ignore_ascii_case("application/json"));
        let revision = headers
            .get(VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| SESSION_REVISIONS.contains(&v));
        let other_mcp_header = headers.keys().any(|name| {
            let name = name.as_str();
            name.starts_with("mcp-") && name != SESSION_HEADER && name != VERSION_HEADER
        });
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<axum::http::uri::Authority>().ok())
            .is_some_and(|a| {
                self.hosts
                    .iter()
                    .any(|allowed| a.host().eq_ignore_ascii_case(allowed))
            });
        plain_accept
            && accepts("application/json")
            && accepts("text/event-stream")
            && json_body
            && revision
            && !other_mcp_header
            && host
    }
}

/// A JSON-RPC request as far as this lane reads it; anything more is rmcp's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    jsonrpc: &'a str,
    id: Option<RequestId>,
    method: &'a str,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallParams {
    name: String,
    arguments: Option<JsonObject>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    cursor: Option<String>,
}

#[derive(Deserialize)]
struct CancelParams {
    #[serde(rename = "requestId")]
    request_id: RequestId,
}

/// What this lane makes of a POSTed message.
enum Lane {
    List(RequestId, bool),
    Call(RequestId, CallParams),
    Cancelled(RequestId),
    Rmcp,
}

fn lane(body: &[u8]) -> Lane {
    let Ok(envelope) = serde_json::from_slice::<Envelope<'_>>(body) else {
        return Lane::Rmcp;
    };
    if envelope.jsonrpc != "2.0" {
        return Lane::Rmcp;
    }
    let params = envelope.params.map(RawValue::get);
    match (envelope.id, envelope.method) {
        (Some(id), "tools/list") => match params.map(serde_json::from_str::<ListParams>) {
            None => Lane::List(id, false),
            Some(Ok(list)) => Lane::List(id, list.cursor.is_some()),
            Some(Err(_)) => Lane::Rmcp,
        },
        (Some(id), "tools/call") => match params.map(serde_json::from_str::<CallParams>) {
            Some(Ok(call)) => Lane::Call(id, call),
            _ => Lane::Rmcp,
        },
        (None, "notifications/cancelled") => {
            match params.map(serde_json::from_str::<CancelParams>) {
                Some(Ok(cancel)) => Lane::Cancelled(cancel.request_id),
                _ => Lane::Rmcp,
            }
        }
        _ => Lane::Rmcp,
    }
}

/// The `/mcp` layer inside the guard.
pub(super) async fn express(
    State(express): State<Arc<Express>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(session) = request
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return next.run(request).await;
    };
    if request.method() == Method::DELETE {
        express.end_session(&session);
        return next.run(request).await;
    }
    let authenticated = request.extensions().get::<Authenticated>();
    // The trace context the guard read (only when traces are on).
    let incoming = authenticated.and_then(|a| a.trace.clone());
    let who = authenticated.map(TokenServer::http_caller);
    let Some(who) = who.filter(|_| request.method() == Method::POST) else {
        return next.run(request).await;
    };
    let usual = express.usual_headers(request.headers());
    let (parts, body) = request.into_parts();
    // The guard has read the body already: this takes it back whole.
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let lane = lane(&bytes);
    let rmcp_way = |bytes: Bytes| next.run(Request::from_parts(parts, Body::from(bytes)));
    let fresh = usual
        && !matches!(lane, Lane::Rmcp | Lane::Cancelled(_))
        && express.seen_recently(&session)
        && express
            .manager
            .has_session(&session.as_str().into())
            .await
            .unwrap_or(false);
    if !fresh {
        if let Lane::Cancelled(id) = &lane {
            express.cancel(&session, id);
        }
        express.rmcp_sees(&session);
        return rmcp_way(bytes).await;
    }
    let (id, answer) = match lane {
        Lane::List(id, has_cursor) => {
            let answer = express
                .server
                .list_tools_as(has_cursor, &who.0, who.1)
                .map(ServerResult::ListToolsResult);
            (id, answer)
        }
        Lane::Call(id, call) => {
            let mut request = CallToolRequestParams::new(call.name);
            request.arguments = call.arguments;
            if express.server.forwards(&request.name) {
                let key = (Arc::<str>::from(session.as_str()), id.clone());
                let cancel = express.shutdown.child_token();
                let registered = match lock(&express.calls).entry(key.clone()) {
                    // The same id twice at once: rmcp's to sort out.
                    std::collections::hash_map::Entry::Occupied(_) => false,
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(cancel.clone());
                        true
                    }
                };
                if !registered {
                    express.rmcp_sees(&session);
                    return rmcp_way(bytes).await;
                }
                let lane = Arc::clone(&express);
                // Removed however the call ends, its future dropped included (even unpolled).
                let registered = Registered(Arc::clone(&lane), key);
                let call = async move {
                    let _registered = registered;
                    // The standing watcher cancels the call's own token; `cancel` is the
                    // client's (notifications/cancelled), the session's end or shutdown.
                    let answer = lane
                        .server
                        .call_tool_as(request, who, None, cancel.child_token(), incoming.as_ref())
                        .await;
                    // As rmcp does, a request the client cancelled gets no response.
                    (!cancel.is_cancelled()).then(|| event(id, answer.map(ServerResult::from)))
                };
                return forwarded(Box::pin(call)).await;
            }
            let answer = express
                .server
                .call_tool_as(
                    request,
                    who,
                    None,
                    CancellationToken::new(),
                    incoming.as_ref(),
                )
                .await;
            (id, answer.map(ServerResult::from))
        }
        Lane::Cancelled(_) | Lane::Rmcp => unreachable!("went rmcp's way above"),
    };
    event_stream(Body::from(event(id, answer)))
}

struct Registered(Arc<Express>, (Arc<str>, RequestId));

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.0.calls).remove(&self.1);
    }
}

/// How often a forwarded call's open reply carries a keep-alive comment, as rmcp's do.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a forwarded call's reply is held for its answer before its headers go out.
const HOLD: Duration = Duration::from_millis(20);

type Call = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Vec<u8>>> + Send>>;

/// A forwarded call's reply: whole when the call answers within [`HOLD`]; else the headers at
/// once and the answer when it comes, with keep-alive comments meanwhile (as rmcp's streams),
/// so that proxies and clients with read timeouts keep waiting. The call runs as the body is
/// read: a client that goes away drops it.
async fn forwarded(mut call: Call) -> Response {
    if let Ok(answer) = tokio::time::timeout(HOLD, call.as_mut()).await {
        return event_stream(Body::from(answer.unwrap_or_default()));
    }
    let tick = Box::pin(tokio::time::sleep(KEEP_ALIVE));
    event_stream(Body::from_stream(Forwarded {
        call: Some(call),
        tick,
    }))
}

struct Forwarded {
    call: Option<Call>,
    tick: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl futures_core::Stream for Forwarded {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        let Some(call) = this.call.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(answer) = call.as_mut().poll(cx) {
            this.call = None;
            return Poll::Ready(answer.map(|event| Ok(Bytes::from(event))));
        }
        if this.tick.as_mut().poll(cx).is_ready() {
            let next = tokio::time::Instant::now() + KEEP_ALIVE;
            this.tick.as_mut().reset(next);
            return Poll::Ready(Some(Ok(Bytes::from_static(b":\n\n"))));
        }
        Poll::Pending
    }
}

/// The event rmcp writes for a session request's answer: the JSON-RPC response, shaped for
/// the revisions before 2026-07-28 as rmcp shapes it.
fn event(id: RequestId, answer: Result<ServerResult, ErrorData>) -> Vec<u8> {
    let message = match answer {
        Ok(mut result) => {
            result.strip_result_type_for_legacy_peer();
            result.strip_non_object_output_for_legacy_peer();
            ServerJsonRpcMessage::response(result, id)
        }
        Err(error) => ServerJsonRpcMessage::error(error, Some(id)),
    };
    let mut event = Vec::with_capacity(512);
    event.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut event, &message).expect("JSON-RPC messages serialise");
    event.extend_from_slice(b"\n\n");
    event
}

/// A reply with rmcp's event-stream headers.
fn event_stream(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::requests::CreateToken;
    use crate::service::{Caller, Service, ServiceConfig};
    use axum::Router;
    use axum::middleware;

    /// rmcp's place, in these tests: it answers 599, so a reply from the lane is told apart.
    async fn rmcp_stub() -> StatusCode {
        StatusCode::from_u16(599).unwrap()
    }

    struct Harness {
        app: Router,
        express: Arc<Express>,
        session: String,
        _dir: tempfile::TempDir,
    }

    async fn lane_in_front_of_a_stub() -> Harness {
        let dir = tempfile::TempDir::new().unwrap();
        let service = Arc::new(Service::open(dir.path(), ServiceConfig::default()).unwrap());
        let issued = service
            .create_token(
                &Caller::Owner,
                CreateToken {
                    name: "agent".into(),
                    ..CreateToken::default()
                },
            )
            .unwrap();
        let manager = Arc::new(LocalSessionManager::default());
        let (session, _transport) = manager.create_session().await.unwrap();
        let express = Arc::new(Express::new(
            TokenServer::for_http(Arc::clone(&service)),
            Arc::clone(&manager),
            &["localhost".to_owned(), "127.0.0.1".to_owned()],
            CancellationToken::new(),
        ));
        let caller = Authenticated {
            token_id: issued.record.id.clone(),
            client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            secret: None,
            trace: None,
        };
        let app = Router::new()
            .route("/mcp", axum::routing::any(rmcp_stub))
            .route_layer(middleware::from_fn_with_state(
                Arc::clone(&express),
                super::express,
            ))
            .route_layer(middleware::from_fn(
                move |mut request: Request, next: Next| {
                    request.extensions_mut().insert(caller.clone());
                    next.run(request)
                },
            ));
        Harness {
            app,
            express,
            session: session.to_string(),
            _dir: dir,
        }
    }

    impl Harness {
        async fn post(&self, body: &str, edit: impl FnOnce(&mut HeaderMap)) -> (u16, String) {
            use tower::ServiceExt;
            let mut request = Request::post("/mcp")
                .header(header::HOST, "127.0.0.1:8080")
                .header(header::ACCEPT, "application/json, text/event-stream")
                .header(header::CONTENT_TYPE, "application/json")
                .header(VERSION_HEADER, "2025-11-25")
                .header(SESSION_HEADER, &self.session)
                .body(Body::from(body.to_owned()))
                .unwrap();
            edit(request.headers_mut());
            let response = self.app.clone().oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    }

    /// Results are shaped for the revisions before 2026-07-28 as rmcp shapes them: a gateway
    /// call's `resultType: "complete"` is left out.
    #[tokio::test]
    async fn replies_leave_out_the_result_type_older_sessions_do_not_know() {
        let mut result = rmcp::model::CallToolResult::structured(serde_json::json!({"a": 1}));
        result.result_type = Some(rmcp::model::ResultType::COMPLETE);
        let body = event(
            RequestId::Number(4),
            Ok(ServerResult::CallToolResult(result)),
        );
        let body = String::from_utf8(body).unwrap();
        assert!(
            body.starts_with(r#"data: {"jsonrpc":"2.0","id":4,"result":{"#),
            "{body}"
        );
        assert!(!body.contains("resultType"), "{body}");
    }

    /// A forwarded call answered within the hold is sent whole; a slower one gets its headers
    /// at once and its answer when it comes; a cancelled one ends without a response.
    #[tokio::test]
    async fn slow_forwarded_calls_are_streamed_and_cancelled_ones_end_empty() {
        use axum::body::HttpBody;
        let quick: Call = Box::pin(async { Some(b"data: quick\n\n".to_vec()) });
        let response = forwarded(quick).await;
        assert_eq!(response.body().size_hint().exact(), Some(13));
        let slow: Call = Box::pin(async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Some(b"data: slow\n\n".to_vec())
        });
        let started = Instant::now();
        let response = forwarded(slow).await;
        assert!(started.elapsed() < Duration::from_millis(150));
        assert_eq!(response.body().size_hint().exact(), None);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        assert_eq!(&body[..], b"data: slow\n\n");
        let cancelled: Call = Box::pin(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        });
        let body = axum::body::to_bytes(forwarded(cancelled).await.into_body(), 1 << 16)
            .await
            .unwrap();
        assert!(body.is_empty());
    }

    /// The table of sessions rmcp has seen is bounded: when full, a new session sweeps out
    /// the entries older than [`RMCP_SEEN_WITHIN`] (at most once a second) and is remembered
    /// only if that made room; a table full of fresh sessions remembers no more.
    #[tokio::test]
    async fn the_table_of_seen_sessions_is_bounded_and_swept_at_most_once_a_second() {
        let lane = lane_in_front_of_a_stub().await;
        let express = &lane.express;
        let now = Instant::now();
        let stale = now
            .checked_sub(RMCP_SEEN_WITHIN + Duration::from_secs(1))
            .unwrap();
        let fill = |prefix: &str, count: usize, at: Instant| {
            let mut guard = lock(&express.seen);
            for n in 0..count {
                guard.0.insert(Arc::from(format!("{prefix}-{n}")), at);
            }
        };
        let len = || lock(&express.seen).0.len();
        fill("stale", SEEN_CAPACITY - 1, stale);
        fill("fresh", 1, now);
        assert_eq!(len(), SEEN_CAPACITY);
        // Full: the sweep drops the stale entries, keeps the fresh one, and makes room.
        express.rmcp_sees("new-1");
        assert!(express.seen_recently("new-1"));
        assert!(express.seen_recently("fresh-0"));
        assert_eq!(len(), 2);
        // Full again within the second: no sweep, the new session is not remembered.
        fill("stale-again", SEEN_CAPACITY - 2, stale);
        lock(&express.seen).1 = Some(Instant::now());
        express.rmcp_sees("new-2");
        assert!(!express.seen_recently("new-2"));
        assert_eq!(len(), SEEN_CAPACITY);
        // A second later, a table full of fresh sessions: swept, but nothing to drop.
        {
            let mut guard = lock(&express.seen);
            guard.0.clear();
            guard.1 = now.checked_sub(Duration::from_secs(2));
        }
        fill("fresh", SEEN_CAPACITY, Instant::now());
        express.rmcp_sees("new-3");
        assert!(!express.seen_recently("new-3"));
        assert_eq!(len(), SEEN_CAPACITY);
        // A session already remembered is only refreshed.
        express.rmcp_sees("fresh-7");
        assert_eq!(len(), SEEN_CAPACITY);
    }

    /// A forwarded call's open reply carries a keep-alive comment every 15 s until its
    /// answer (time paused: the 40 s call takes no time).
    #[tokio::test(start_paused = true)]
    async fn a_slow_forwarded_call_sends_a_keep_alive_comment_every_fifteen_seconds() {
        let slow: Call = Box::pin(async {
            tokio::time::sleep(Duration::from_secs(40)).await;
            Some(b"data: slow\n\n".to_vec())
        });
        let mut stream = forwarded(slow).await.into_body().into_data_stream();
        let mut chunks = Vec::new();
        while chunks.len() < 6 {
            let next = std::future::poll_fn(|cx| {
                futures_core::Stream::poll_next(std::pin::Pin::new(&mut stream), cx)
            })
            .await;
            match next {
                Some(Ok(bytes)) => chunks.push(String::from_utf8(bytes.to_vec()).unwrap()),
                _ => break,
            }
        }
        assert_eq!(chunks, [":\n\n", ":\n\n", "data: slow\n\n"]);
    }

    const WHOAMI: &str = r#"{"jsonrpc":"2.0","id":"w1","method":"tools/call","params":{"name":"whoami","arguments":{}}}"#;

    /// The lane answers a plain request of a live session only once rmcp has seen the
    /// session recently, in rmcp's reply shape; anything unusual goes rmcp's way.
    #[tokio::test]
    async fn plain_requests_of_live_sessions_are_answered_in_the_lane() {
        let lane = lane_in_front_of_a_stub().await;
        // Not seen by rmcp yet: rmcp's (and now seen).
        assert_eq!(lane.post(WHOAMI, |_| {}).await.0, 599);
        let (status, body) = lane.post(WHOAMI, |_| {}).await;
        assert_eq!(status, 200, "{body}");
        let data = body
            .strip_prefix("data: ")
            .and_then(|b| b.strip_suffix("\n\n"))
            .expect("one event");
        let message: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(message["id"], "w1");
        assert_eq!(message["result"]["structuredContent"]["name"], "agent");
        // Sessions before 2026-07-28 get no resultType, as rmcp shapes it.
        assert!(message["result"].get("resultType").is_none(), "{message}");
        let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
        let (status, body) = lane.post(list, |_| {}).await;
        assert_eq!(status, 200);
        assert!(body.contains(r#""name":"whoami""#), "{body}");
        let cursor = r#"{"jsonrpc":"2.0","id":3,"method":"tools/list","params":{"cursor":"x"}}"#;
        let (_, body) = lane.post(cursor, |_| {}).await;
        assert!(body.contains(r#""code":-32602"#), "{body}");

        // Unusual headers: rmcp's.
        type Edit = fn(&mut HeaderMap);
        let edits: [Edit; 8] = [
            |h| {
                h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
            },
            // Quality values and quoted parameters are rmcp's to weigh.
            |h| {
                h.insert(
                    header::ACCEPT,
                    HeaderValue::from_static("application/json, text/event-stream;q=0"),
                );
            },
            |h| {
                h.insert(
                    header::ACCEPT,
                    HeaderValue::from_static(r#"application/json;x="y", text/event-stream"#),
                );
            },
            |h| {
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            },
            |h| {
                h.insert(VERSION_HEADER, HeaderValue::from_static("2026-07-28"));
            },
            |h| {
                h.remove(VERSION_HEADER);
            },
            |h| {
                h.insert("mcp-method", HeaderValue::from_static("tools/call"));
            },
            |h| {
                h.insert(header::HOST, HeaderValue::from_static("evil.example"));
            },
        ];
        for edit in edits {
            assert_eq!(lane.post(WHOAMI, edit).await.0, 599);
        }
        // A session rmcp no longer holds: rmcp's (which answers 404).
        lane.express
            .manager
            .close_session(&lane.session.as_str().into())
            .await
            .unwrap();
        assert_eq!(lane.post(WHOAMI, |_| {}).await.0, 599);
    }

    #[test]
    fn only_plain_requests_take_the_lane() {
        let call = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#;
        assert!(
            matches!(lane(call), Lane::Call(RequestId::Number(7), ref c) if c.name == "whoami")
        );
        let list = br#"{"jsonrpc":"2.0","id":"a","method":"tools/list"}"#;
        assert!(matches!(lane(list), Lane::List(_, false)));
        let list = br#"{"jsonrpc":"2.0","id":"a","method":"tools/list","params":{"cursor":"x"}}"#;
        assert!(matches!(lane(list), Lane::List(_, true)));
        let cancel =
            br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3}}"#;
        assert!(matches!(
            lane(cancel),
            Lane::Cancelled(RequestId::Number(3))
        ));
        for rmcp in [
            // A progress token, per-request protocol fields, tasks: rmcp's.
            &br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","_meta":{"progressToken":1}}}"#[..],
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","task":{}}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{}}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            br#"{"jsonrpc":"2.0","id":null,"method":"tools/list"}"#,
            br#"{"jsonrpc":"2.0","id":1.5,"method":"tools/list"}"#,
            br#"{"jsonrpc":"1.0","id":1,"method":"tools/list"}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","extra":1}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            br#"{"jsonrpc":"2.0","method":"tools/list"}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            b"not json",
        ] {
            assert!(
                matches!(lane(rmcp), Lane::Rmcp),
                "{}",
                String::from_utf8_lossy(rmcp)
            );
        }
    }
}
