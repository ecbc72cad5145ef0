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
//! request to reqwest and notes the session id and protocol version the transport sends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use futures_core::stream::BoxStream;
use rmcp::model::{
    CallToolResult, ClientJsonRpcMessage, ServerJsonRpcMessage, ServerNotification, ServerResult,
};
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
    StreamableHttpResponseLimits,
};
use serde_json::{Value, json};
use sse_stream::{Error as SseError, Sse};
use tokio_util::sync::CancellationToken;

use super::connection::{CallFailure, ProgressSink};

/// The largest answer read for one call (its events together).
const MAX_ANSWER_BYTES: usize = 16 << 20;
/// The first protocol without sessions: its requests are rmcp's to send.
const STATELESS_PROTOCOL: &str = "2026-07-28";
/// How long a cancellation notice to the upstream may take.
const CANCEL_NOTICE: Duration = Duration::from_secs(2);

/// What rmcp's transport last sent with a request of its session.
#[derive(Clone)]
struct Route {
    uri: Arc<str>,
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
    pub fn new(inner: reqwest::Client) -> (Recorder, Arc<Direct>) {
        let seen = Seen::default();
        let direct = Arc::new(Direct {
            client: inner.clone(),
            seen: Arc::clone(&seen),
            next: AtomicU64::new(0),
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
        let route = version
            .filter(|v| v.to_str().is_ok_and(|v| v < STATELESS_PROTOCOL))
            .map(|version| Route {
                uri: Arc::clone(uri),
                session: session.clone(),
                version,
                auth: auth.clone(),
                // The configured headers; the MCP ones of a request are written per request.
                headers: headers
                    .iter()
                    .filter(|(name, _)| !name.as_str().starts_with("mcp-"))
                    .map(|(n, v)| (n.clone(), v.clone()))
                    .collect(),
            });
        *lock(&self.seen) = route;
    }
}

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
        self.inner
            .post_message(uri, message, session_id, auth_header, custom_headers)
            .await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        self.note(&uri, &session_id, &auth_header, &custom_headers);
        self.inner
            .post_message_with_max_sse_event_size(
                uri,
                message,
                session_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
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
        self.inner
            .post_message_with_response_limits(
                uri,
                message,
                session_id,
                auth_header,
                custom_headers,
                limits,
            )
            .await
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

/// Sends `tools/call` on the session rmcp's client opened.
pub struct Direct {
    client: reqwest::Client,
    seen: Seen,
    next: AtomicU64,
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
    Broken(String),
    SessionGone,
}

impl Direct {
    /// Forwards one call; ends early, telling the upstream, on `timeout` or when `cancel` fires.
    /// `broke` words a transport failure (and has the connection reconnect).
    pub async fn call(
        &self,
        tool: &str,
        arguments: Option<rmcp::model::JsonObject>,
        progress: Option<ProgressSink>,
        cancel: &CancellationToken,
        timeout: Duration,
        broke: impl FnOnce(String) -> CallFailure,
    ) -> Sent {
        let Some(route) = lock(&self.seen).clone() else {
            return Sent::NotSent;
        };
        let id = format!("tokenwarden-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let mut params = json!({ "name": tool, "arguments": arguments.unwrap_or_default() });
        if progress.is_some() {
            params["_meta"] = json!({ "progressToken": id });
        }
        let request =
            json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params });
        let exchange = self.exchange(&route, &request, &id, progress.as_ref());
        let outcome = tokio::select! {
            exchange = exchange => Some(exchange),
            _ = tokio::time::sleep(timeout) => None,
            _ = cancel.cancelled() => None,
        };
        match outcome {
            Some(Exchange::Done(result)) => Sent::Answered(result),
            Some(Exchange::Broken(why)) => Sent::Answered(Err(broke(why))),
            Some(Exchange::SessionGone) => {
                // rmcp's transport opens a new session when its next request finds this one gone.
                *lock(&self.seen) = None;
                Sent::NotSent
            }
            None => {
                let reason = if cancel.is_cancelled() {
                    "cancelled by the client or tokenwarden"
                } else {
                    "timed out"
                };
                let notice = json!({
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": { "requestId": id, "reason": reason },
                });
                // Best effort (the upstream may already be gone), and never a delay for the
                // caller: a call whose token was revoked is answered within a second.
                let client = self.client.clone();
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(CANCEL_NOTICE, post(&client, &route, &notice)).await;
                });
                Sent::Answered(Err(if cancel.is_cancelled() {
                    CallFailure::Cancelled
                } else {
                    CallFailure::Timeout(timeout)
                }))
            }
        }
    }

    async fn exchange(
        &self,
        route: &Route,
        request: &Value,
        id: &str,
        progress: Option<&ProgressSink>,
    ) -> Exchange {
        let mut response = match post(&self.client, route, request).await {
            Ok(response) => response,
            Err(e) => return Exchange::Broken(format!("cannot send the call: {e}")),
        };
        let status = response.status();
        if status == StatusCode::NOT_FOUND && route.session.is_some() {
            return Exchange::SessionGone;
        }
        let is_stream = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let mut events = Events::default();
        let mut body = Vec::new();
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => return Exchange::Broken(format!("the answer broke off: {e}")),
            };
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Exchange::Done(Err(CallFailure::Unavailable(format!(
                    "the upstream's answer is larger than {} MiB",
                    MAX_ANSWER_BYTES >> 20
                ))));
            }
            if !is_stream {
                body.extend_from_slice(&chunk);
                continue;
            }
            for data in events.feed(&chunk) {
                if let Some(done) = handle(&data, id, progress).await {
                    // The stream ends with its answer; what follows (if anything) is dropped
                    // with the connection.
                    return Exchange::Done(done);
                }
            }
        }
        if !is_stream
            && !body.is_empty()
            && let Some(done) = handle(&String::from_utf8_lossy(&body), id, progress).await
        {
            return Exchange::Done(done);
        }
        Exchange::Broken(if status.is_success() {
            "the upstream ended its answer without a result".to_owned()
        } else {
            format!("the upstream answered HTTP {status}")
        })
    }
}

/// POSTs `message` on `route`: the configured headers and the session, nothing of the caller's.
async fn post(
    client: &reqwest::Client,
    route: &Route,
    message: &Value,
) -> reqwest::Result<reqwest::Response> {
    let mut request = client
        .post(route.uri.as_ref())
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(header::CONTENT_TYPE, "application/json")
        .header("mcp-protocol-version", route.version.clone());
    if let Some(session) = &route.session {
        request = request.header("mcp-session-id", session.as_ref());
    }
    for (name, value) in &route.headers {
        request = request.header(name.clone(), value.clone());
    }
    if let Some(auth) = &route.auth {
        request = request.bearer_auth(auth);
    }
    let body = serde_json::to_vec(message).expect("JSON values serialise");
    request.body(body).send().await
}

/// One message of the answer: `Some` when it ends the call (its result or error).
async fn handle(
    data: &str,
    id: &str,
    progress: Option<&ProgressSink>,
) -> Option<Result<CallToolResult, CallFailure>> {
    let Ok(message) = serde_json::from_str::<ServerJsonRpcMessage>(data) else {
        tracing::debug!(target: "upstream", "ignored an answer event that is not JSON-RPC");
        return None;
    };
    let ours = |request_id: &rmcp::model::RequestId| request_id.to_string() == id;
    match message {
        ServerJsonRpcMessage::Response(response) if ours(&response.id) => {
            Some(match response.result {
                ServerResult::CallToolResult(result) => Ok(result),
                _ => Err(CallFailure::Unavailable(
                    "the upstream answered tools/call with something other than a tool result"
                        .to_owned(),
                )),
            })
        }
        ServerJsonRpcMessage::Error(error) if error.id.as_ref().is_some_and(ours) => {
            Some(Err(CallFailure::Upstream(error.error)))
        }
        ServerJsonRpcMessage::Notification(notification) => {
            if let ServerNotification::ProgressNotification(note) = notification.notification
                && let Some(sink) = progress
                && note.params.progress_token.0.to_string() == id
            {
                let mut forwarded = note.params;
                forwarded.progress_token = sink.token.clone();
                let _ = sink.peer.notify_progress(forwarded).await;
            }
            None
        }
        _ => None,
    }
}

/// An event-stream parser: bytes in, each event's data out (events without data are skipped).
#[derive(Default)]
struct Events {
    line: Vec<u8>,
    data: String,
    has_data: bool,
}

impl Events {
    fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &byte in bytes {
            if byte != b'\n' {
                self.line.push(byte);
                continue;
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            let line = std::mem::take(&mut self.line);
            if line.is_empty() {
                if self.has_data {
                    out.push(std::mem::take(&mut self.data));
                    self.has_data = false;
                }
            } else if let Some(value) = line.strip_prefix(b"data:") {
                let value = value.strip_prefix(b" ").unwrap_or(value);
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.has_data = true;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_cut_at_blank_lines_however_the_bytes_arrive() {
        let stream =
            b"id: 1\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n: comment\n\nevent: message\ndata:x\n\n";
        for split in 0..stream.len() {
            let mut events = Events::default();
            let mut out = events.feed(&stream[..split]);
            out.extend(events.feed(&stream[split..]));
            assert_eq!(out, ["{\"a\":\n1}", "x"], "split at {split}");
        }
    }
}
