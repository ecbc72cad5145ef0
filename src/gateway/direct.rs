//! `tools/call` to a streamable HTTP upstream, written and read by the calling task.
//!
//! rmcp's client passes every request through its service loop and its transport worker, and
//! reads each answer in a task of its own: a forwarded call crossed five tasks, about a dozen
//! thread hand-offs, each way. Once rmcp's client has opened a session with the upstream
//! (protocols before 2026-07-28), a call goes out here instead, on the same session and the
//! same pool of kept-alive connections: one POST, its JSON or event-stream answer parsed as it
//! arrives, progress forwarded under the client's own token. Everything else stays with rmcp's
//! client: initialize, `tools/list`, notifications, pings, reconnection, and upstreams that
//! speak 2026-07-28 (no sessions; its standard headers are rmcp's to write). A call that finds
//! the session gone (404) is not sent again here: it goes the rmcp way, which opens a new one.
//!
//! [`Recorder`] is the HTTP client rmcp's transport uses for the session: it delegates every
//! request to reqwest and notes the session id and protocol version the transport sends, and
//! sends a request's `_meta.traceparent` (a traced call on rmcp's path) as the `traceparent`
//! header too. Calls sent here carry both as well.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use futures_core::stream::BoxStream;
use rmcp::model::{CallToolResult, ClientJsonRpcMessage, ProgressNotificationParam};
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
    StreamableHttpResponseLimits,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sse_stream::{Error as SseError, Sse};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::connection::CallFailure;
use super::oversize::too_large;
use super::progress::Progress;
use super::wire;
use axum::body::Bytes;
use http_body_util::Full;

/// The largest answer read for one call: a JSON body, or one event of a stream.
const MAX_ANSWER_BYTES: usize = super::oversize::MAX_RESULT_BYTES;
/// The first protocol without sessions: its requests are rmcp's to send.
const STATELESS_PROTOCOL: &str = "2026-07-28";
/// How long a cancellation notice to the upstream may take.
const CANCEL_NOTICE: Duration = Duration::from_secs(2);
/// How long the end of a stream is awaited after its answer (so the connection is reused).
const DRAIN: Duration = Duration::from_millis(50);
/// Kept-alive connections kept for the calls: one per call slot.
const MAX_IN_FLIGHT: usize = super::fair::CALL_SLOTS;
/// Cancellation notices in flight to one upstream at once; more are not sent.
const MAX_NOTICES: usize = 4;

/// What rmcp's transport last sent with a request of its session.
#[derive(Clone)]
struct Route {
    /// Parsed once, when rmcp's transport sends to it.
    url: reqwest::Url,
    /// The request target (path and query) and `Host` of `url`, for requests written here.
    target: axum::http::Uri,
    host: HeaderValue,
    /// None for an upstream that serves these protocols without sessions.
    session: Option<Arc<str>>,
    version: HeaderValue,
    auth: Option<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

type Seen = Arc<Mutex<Option<Route>>>;

fn lock(seen: &Seen) -> std::sync::MutexGuard<'_, Option<Route>> {
    seen.lock().unwrap_or_else(|p| p.into_inner())
}

/// reqwest for rmcp's transport, noting the session it runs.
#[derive(Clone)]
pub struct Recorder {
    inner: reqwest::Client,
    seen: Seen,
}

impl Recorder {
    /// The client for rmcp's transport and the direct path that shares its session and pool.
    /// `refresh` is told when an answer carries `notifications/tools/list_changed`.
    pub fn new(inner: reqwest::Client, refresh: Arc<Notify>) -> (Recorder, Arc<Direct>) {
        let seen = Seen::default();
        let direct = Arc::new(Direct {
            refresh,
            seen: Arc::clone(&seen),
            next: AtomicU64::new(0),
            notices: Arc::new(tokio::sync::Semaphore::new(MAX_NOTICES)),
            pool: wire::Pool::default(),
        });
        (Recorder { inner, seen }, direct)
    }

    fn note(
        &self,
        uri: &Arc<str>,
        session: &Option<Arc<str>>,
        auth: &Option<String>,
        headers: &HashMap<HeaderName, HeaderValue>,
    ) {
        let version = headers
            .get(&HeaderName::from_static("mcp-protocol-version"))
            .cloned();
        // Plain HTTP only (the calls written here have no TLS), without credentials in the
        // URL or a proxy configured: reqwest, on rmcp's path, honours both.
        let url = reqwest::Url::parse(uri).ok().filter(|u| {
            u.scheme() == "http"
                && u.username().is_empty()
                && u.password().is_none()
                && !*PROXY_CONFIGURED
        });
        let target = url.as_ref().and_then(|u| {
            let target = match u.query() {
                Some(query) => format!("{}?{query}", u.path()),
                None => u.path().to_owned(),
            };
            target.parse::<axum::http::Uri>().ok()
        });
        let host = url.as_ref().and_then(|u| {
            let host = u.host_str()?;
            let host = match u.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            };
            HeaderValue::from_str(&host).ok()
        });
        let route = version
            .filter(|v| v.to_str().is_ok_and(|v| v < STATELESS_PROTOCOL))
            .zip(url)
            .zip(target.zip(host))
            .map(|((version, url), (target, host))| Route {
                url,
                target,
                host,
                session: session.clone(),
                version,
                auth: auth.clone(),
                // The configured headers (before 2026-07-28 rmcp adds only the version, which
                // is written per request).
                headers: headers
                    .iter()
                    .filter(|(name, _)| name.as_str() != "mcp-protocol-version")
                    .map(|(n, v)| (n.clone(), v.clone()))
                    .collect(),
            });
        *lock(&self.seen) = route;
    }
}

/// rmcp's transport sends through `post_message_with_response_limits` and reads streams through
/// `get_stream_with_max_sse_event_size`: both delegate with their limits; the plain methods
/// are the trait's required ones.
impl StreamableHttpClient for Recorder {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        self.note(&uri, &session_id, &auth_header, &custom_headers);
        let custom_headers = with_traceparent(&message, custom_headers);
        self.inner
            .post_message(uri, message, session_id, auth_header, custom_headers)
            .await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        self.note(&uri, &session_id, &auth_header, &custom_headers);
        let custom_headers = with_traceparent(&message, custom_headers);
        let request_id = match &message {
            ClientJsonRpcMessage::Request(request) => serde_json::to_string(&request.id).ok(),
            _ => None,
        };
        let answer = self
            .inner
            .post_message_with_response_limits(
                uri,
                message,
                session_id,
                auth_header,
                custom_headers,
                limits,
            )
            .await;
        // An answer over the limit fails its request at once (`oversize`), not the session.
        let Some(id) = request_id else {
            return answer;
        };
        match answer {
            Err(StreamableHttpError::ResponseBodyTooLarge { .. }) => {
                match serde_json::from_slice(&super::oversize::stand_in(&id)) {
                    Ok(stand_in) => Ok(StreamableHttpPostResponse::Json(stand_in, None)),
                    Err(_) => answer,
                }
            }
            Ok(StreamableHttpPostResponse::Sse(events, session)) => {
                use tokio_stream::StreamExt;
                let events = events.map(move |event| match event {
                    Err(e) if e.to_string().contains("exceeded the maximum size") => {
                        let stand_in = super::oversize::stand_in(&id);
                        Ok(Sse::default().data(String::from_utf8_lossy(&stand_in).trim_end()))
                    }
                    event => event,
                });
                Ok(StreamableHttpPostResponse::Sse(Box::pin(events), session))
            }
            answer => answer,
        }
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<Self::Error>> {
        *lock(&self.seen) = None;
        self.inner
            .delete_session(uri, session_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        self.inner
            .get_stream(uri, session_id, last_event_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        self.inner
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }
}

/// `headers` with a `traceparent` header when `message` is a request carrying
/// `_meta.traceparent` (a traced call going rmcp's way), so that HTTP upstreams that read only
/// the header see the call's span too. Added after `note`, so never replayed on other calls.
fn with_traceparent(
    message: &ClientJsonRpcMessage,
    mut headers: HashMap<HeaderName, HeaderValue>,
) -> HashMap<HeaderName, HeaderValue> {
    use rmcp::model::GetMeta;
    if let ClientJsonRpcMessage::Request(request) = message
        && let Some(value) = request.request.get_meta().get_traceparent()
        && let Ok(value) = HeaderValue::from_str(value)
    {
        headers.insert(HeaderName::from_static(TRACEPARENT), value);
    }
    headers
}

/// The W3C Trace Context header.
const TRACEPARENT: &str = "traceparent";

/// Sends `tools/call` on the session rmcp's client opened.
pub struct Direct {
    refresh: Arc<Notify>,
    seen: Seen,
    next: AtomicU64,
    /// Cancellation notices being sent at once (each on a new connection).
    notices: Arc<tokio::sync::Semaphore>,
    /// Kept-alive connections for the calls, driven by the calling task.
    pool: wire::Pool,
}

/// How a direct call ended.
pub enum Sent {
    /// The upstream's answer, or why there is none.
    Answered(Result<CallToolResult, CallFailure>),
    /// Not sent, or refused unprocessed (no session yet, or it is gone): use rmcp's path.
    NotSent,
}

/// What the transport part of a call found (the caller words the failures).
enum Exchange {
    Done(Result<CallToolResult, CallFailure>),
    SessionGone,
    /// Answered with a 307 or 308: the call was not processed here, rmcp's client follows it.
    Redirected,
    /// The request may have gone out but its answer did not come: the call's failure, and
    /// the upstream is told to cancel it.
    Failed(String),
}

/// Tells the upstream a call is cancelled when the call ends without its answer, however it
/// ends: a timeout, a cancellation, or the call's future dropped (its client went away).
struct Unanswered<'a> {
    direct: &'a Direct,
    route: Option<Route>,
    id: &'a str,
    reason: &'static str,
    /// Set once the request starts going out: a call that never left needs no notice.
    sent: &'a AtomicBool,
}

impl Unanswered<'_> {
    fn answered(&mut self) {
        self.route = None;
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        let Some(route) = self.route.take() else {
            return;
        };
        if !self.sent.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // A few at a time per upstream, each on a connection of its own: a caller dropping
        // calls in a loop must not make the server open connections without end.
        let Ok(permit) = Arc::clone(&self.direct.notices).try_acquire_owned() else {
            return;
        };
        let notice = json!({
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": { "requestId": self.id, "reason": self.reason },
        });
        let body = Bytes::from(serde_json::to_vec(&notice).expect("JSON values serialise"));
        let request = upstream_post(&route, body);
        // Best effort (the upstream may already be gone), and never a delay for the caller:
        // a call whose token was revoked is answered within a second.
        runtime.spawn(async move {
            let notify = async {
                if let Ok(conn) = wire::Conn::open(&route.url).await {
                    let _ = conn.send(request).await;
                }
            };
            let _ = tokio::time::timeout(CANCEL_NOTICE, notify).await;
            drop(permit);
        });
    }
}

impl Direct {
    /// Forwards one call; ends early, telling the upstream, at `deadline` (the call's
    /// `timeout` from its start) or when `cancel` fires (or when this future is dropped).
    /// `traceparent` (a traced call's upstream span) goes as the header and `_meta.traceparent`.
    pub async fn call(
        &self,
        tool: &str,
        arguments: Option<rmcp::model::JsonObject>,
        (progress, traceparent): (Option<&Progress>, Option<&str>),
        cancel: &CancellationToken,
        (deadline, timeout): (tokio::time::Instant, Duration),
    ) -> Sent {
        let Some(route) = lock(&self.seen).clone() else {
            return Sent::NotSent;
        };
        let id = format!("tokenwarden-{}", self.next.fetch_add(1, Ordering::Relaxed));
        // The arguments unchanged: absent stays absent.
        let mut params = json!({ "name": tool });
        if let Some(arguments) = arguments {
            params["arguments"] = Value::Object(arguments);
        }
        if progress.is_some() {
            params["_meta"] = json!({ "progressToken": id });
        }
        if let Some(traceparent) = traceparent {
            params["_meta"][TRACEPARENT] = json!(traceparent);
        }
        let request =
            json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params });
        let sent = AtomicBool::new(false);
        let mut unanswered = Unanswered {
            direct: self,
            route: Some(route.clone()),
            id: &id,
            reason: "the client went away",
            sent: &sent,
        };
        let traceparent = traceparent.and_then(|t| HeaderValue::from_str(t).ok());
        let exchange = self.exchange(&route, &request, (&id, &sent), (progress, traceparent));
        let outcome = tokio::select! {
            exchange = exchange => Some(exchange),
            _ = tokio::time::sleep_until(deadline) => None,
            _ = cancel.cancelled() => None,
        };
        match outcome {
            Some(Exchange::Done(result)) => {
                unanswered.answered();
                Sent::Answered(result)
            }
            Some(Exchange::Redirected) => {
                unanswered.answered();
                Sent::NotSent
            }
            Some(Exchange::Failed(why)) => {
                // `unanswered` tells the upstream as it goes: the call may be running there.
                unanswered.reason = "its answer was lost";
                Sent::Answered(Err(CallFailure::Unavailable(why)))
            }
            Some(Exchange::SessionGone) => {
                unanswered.answered();
                // rmcp's transport opens a new session when its next request finds this one
                // gone; forget it unless rmcp already noted a new one.
                let mut seen = lock(&self.seen);
                if seen.as_ref().is_some_and(|r| r.session == route.session) {
                    *seen = None;
                }
                Sent::NotSent
            }
            None => {
                // `unanswered` tells the upstream as it goes.
                unanswered.reason = if cancel.is_cancelled() {
                    "cancelled by the client or tokenwarden"
                } else {
                    "timed out"
                };
                Sent::Answered(Err(if cancel.is_cancelled() {
                    CallFailure::Cancelled
                } else {
                    CallFailure::Timeout {
                        after: timeout,
                        queued: Duration::ZERO,
                    }
                }))
            }
        }
    }

    async fn exchange(
        &self,
        route: &Route,
        request: &Value,
        (id, sent): (&str, &AtomicBool),
        (progress, traceparent): (Option<&Progress>, Option<HeaderValue>),
    ) -> Exchange {
        // The caller holds one of the upstream's call slots (`fair`).
        // A failure on one connection is this call's, not the upstream session's: rmcp's own
        // streams notice an upstream that went away.
        let body = Bytes::from(serde_json::to_vec(request).expect("JSON values serialise"));
        let mut tries = 0;
        let (mut conn, response) = loop {
            let conn = match self.pool.take(&route.url).await {
                Ok(conn) => conn,
                Err(e) => return Exchange::Failed(format!("cannot send the call: {e}")),
            };
            sent.store(true, Ordering::Relaxed);
            let mut post = upstream_post(route, body.clone());
            if let Some(traceparent) = &traceparent {
                post.headers_mut().insert(TRACEPARENT, traceparent.clone());
            }
            match conn.send(post).await {
                Ok(sent) => break sent,
                // Nothing went out (a kept-alive connection the server had closed): another
                // connection may carry it.
                Err(wire::Failure::NotSent(_)) if tries < 2 => tries += 1,
                Err(wire::Failure::NotSent(e)) => {
                    // It never left: nothing for the upstream to cancel.
                    sent.store(false, Ordering::Relaxed);
                    return Exchange::Failed(format!("cannot send the call: {e}"));
                }
                Err(wire::Failure::Lost(e)) => {
                    return Exchange::Failed(format!("cannot send the call: {e}"));
                }
            }
        };
        let status = response.status();
        if status == StatusCode::NOT_FOUND && route.session.is_some() {
            return Exchange::SessionGone;
        }
        // Only these two say the request was not processed and is to be repeated as it was;
        // after any other redirect the upstream may have run it.
        if status == StatusCode::TEMPORARY_REDIRECT || status == StatusCode::PERMANENT_REDIRECT {
            return Exchange::Redirected;
        }
        let is_stream = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("text/event-stream"));
        let mut incoming = response.into_body();
        let mut events = Events::default();
        let mut body = Vec::new();
        let mut received = 0usize;
        let mut answer = None;
        let mut ended = false;
        while answer.is_none() {
            let chunk = match conn.frame(&mut incoming).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => {
                    ended = true;
                    break;
                }
                Err(e) => return Exchange::Failed(e),
            };
            received += chunk.len();
            if !is_stream {
                if received > MAX_ANSWER_BYTES {
                    return Exchange::Done(Err(too_large()));
                }
                body.extend_from_slice(&chunk);
                continue;
            }
            let complete = events.feed(&chunk);
            if events.pending() > MAX_ANSWER_BYTES {
                return Exchange::Done(Err(too_large()));
            }
            for data in complete {
                if let Some(done) = handle(&data, id, progress, &self.refresh).await {
                    answer = Some(done);
                    break;
                }
            }
        }
        if let Some(answer) = answer {
            // The stream ends right after its answer: read that end, so the connection can be
            // kept for the next call instead of closed with the unread rest.
            let drain = async {
                loop {
                    match conn.frame(&mut incoming).await {
                        Ok(Some(chunk)) => {
                            received += chunk.len();
                            if received > MAX_ANSWER_BYTES {
                                return false;
                            }
                        }
                        Ok(None) => return true,
                        Err(_) => return false,
                    }
                }
            };
            if tokio::time::timeout(DRAIN, drain).await == Ok(true) {
                drop(incoming);
                self.pool.give_back(conn, MAX_IN_FLIGHT);
            }
            return Exchange::Done(answer);
        }
        if ended {
            drop(incoming);
            self.pool.give_back(conn, MAX_IN_FLIGHT);
        }
        if !body.is_empty()
            && let Some(done) =
                handle(&String::from_utf8_lossy(&body), id, progress, &self.refresh).await
        {
            return Exchange::Done(done);
        }
        // The call may have run upstream: an answer without its result is this call's
        // failure, never the connection's (no reconnect, which would fail others' calls).
        Exchange::Done(Err(CallFailure::Unavailable(if status.is_success() {
            format!("the upstream ended its answer (HTTP {status}) without a result")
        } else {
            format!("the upstream answered HTTP {status}")
        })))
    }
}

/// Whether the environment names a proxy (read once).
static PROXY_CONFIGURED: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
});

/// A POST of `body` on `route`: the configured headers and the session, nothing of the
/// caller's.
fn upstream_post(route: &Route, body: Bytes) -> axum::http::Request<Full<Bytes>> {
    let mut request = axum::http::Request::new(Full::new(body));
    *request.method_mut() = axum::http::Method::POST;
    *request.uri_mut() = route.target.clone();
    let headers = request.headers_mut();
    headers.insert(header::HOST, route.host.clone());
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("mcp-protocol-version", route.version.clone());
    if let Some(session) = route
        .session
        .as_deref()
        .and_then(|s| HeaderValue::from_str(s).ok())
    {
        headers.insert("mcp-session-id", session);
    }
    for (name, value) in &route.headers {
        headers.append(name.clone(), value.clone());
    }
    if let Some(auth) = route
        .auth
        .as_ref()
        .and_then(|a| HeaderValue::from_str(&format!("Bearer {a}")).ok())
    {
        let mut auth = auth;
        auth.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, auth);
    }
    request
}

/// A message of an answer, read only as far as the call needs it.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    error: Option<rmcp::model::ErrorData>,
}

/// One message of the answer: `Some` when it ends the call (its result or error).
async fn handle(
    data: &str,
    id: &str,
    progress: Option<&Progress>,
    refresh: &Notify,
) -> Option<Result<CallToolResult, CallFailure>> {
    let Ok(message) = serde_json::from_str::<Incoming<'_>>(data) else {
        tracing::debug!(target: "upstream", "ignored an answer event that is not JSON-RPC");
        return None;
    };
    let ours = message
        .id
        .and_then(|raw| serde_json::from_str::<Cow<'_, str>>(raw.get()).ok())
        .is_some_and(|got| got == id);
    if let Some(method) = &message.method {
        // A notification (or a request of the upstream's, which a call's answer does not
        // answer).
        if message.id.is_some() {
            return None;
        }
        match method.as_ref() {
            "notifications/progress" => {
                let note = message
                    .params
                    .and_then(|p| serde_json::from_str::<ProgressNotificationParam>(p.get()).ok());
                if let (Some(note), Some(progress)) = (note, progress)
                    && note.progress_token.0.to_string() == id
                {
                    progress.offer(note);
                }
            }
            // As rmcp's handler does for notifications on its own streams.
            "notifications/tools/list_changed" => refresh.notify_one(),
            _ => {}
        }
        return None;
    }
    if !ours {
        return None;
    }
    if let Some(result) = message.result {
        return Some(
            serde_json::from_str::<CallToolResult>(result.get()).map_err(|_| {
                CallFailure::Unavailable(
                    "the upstream answered tools/call with something other than a tool result"
                        .to_owned(),
                )
            }),
        );
    }
    message
        .error
        .map(|error| Err(super::oversize::failure(error)))
}

/// An event-stream parser: bytes in, each event's data out (events without data are skipped).
#[derive(Default)]
struct Events {
    line: Vec<u8>,
    data: String,
    has_data: bool,
    after_cr: bool,
}

impl Events {
    /// Bytes of the event being read.
    fn pending(&self) -> usize {
        self.line.len() + self.data.len()
    }

    fn feed(&mut self, mut bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(&first) = bytes.first() {
            // Lines end in CRLF, LF or CR.
            if std::mem::take(&mut self.after_cr) && first == b'\n' {
                bytes = &bytes[1..];
                continue;
            }
            let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.line.extend_from_slice(bytes);
                break;
            };
            self.line.extend_from_slice(&bytes[..end]);
            self.after_cr = bytes[end] == b'\r';
            bytes = &bytes[end + 1..];
            if self.line.is_empty() {
                if self.has_data {
                    out.push(std::mem::take(&mut self.data));
                    self.has_data = false;
                }
            } else if let Some(value) = self.line.strip_prefix(b"data:") {
                let value = value.strip_prefix(b" ").unwrap_or(value);
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.has_data = true;
            }
            self.line.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_cut_at_blank_lines_however_the_bytes_arrive() {
        let stream = b"id: 1\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n: comment\n\nevent: message\ndata:x\n\ndata: cr\r\rdata: y\n\n";
        for split in 0..stream.len() {
            let mut events = Events::default();
            let mut out = events.feed(&stream[..split]);
            out.extend(events.feed(&stream[split..]));
            assert_eq!(out, ["{\"a\":\n1}", "x", "cr", "y"], "split at {split}");
        }
    }
}
