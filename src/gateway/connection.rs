//! One connection per upstream: a task that connects with rmcp's client (a stdio child in its
//! own process group, or streamable HTTP), lists the upstream's tools, keeps the list fresh on
//! `notifications/tools/list_changed`, and reconnects with backoff (1 s doubling to 60 s) when
//! the upstream dies. Calls are forwarded through [`Connection::call`].

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig,
    ClientRequest, ErrorData, Implementation, ListToolsRequest, PaginatedRequestParams,
    ProgressNotificationParam, ProgressToken, ServerResult, Tool,
};
use rmcp::service::{NotificationContext, Peer, PeerRequestOptions, RoleClient, RoleServer};
use rmcp::{ClientHandler, ServiceExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::config::{Transport, Upstream};
use super::direct::{Direct, Recorder, Sent};
use super::fair::{FairShare, Lineage};
use super::oversize::{LineCap, MAX_RESULT_BYTES};
use super::progress::Progress;

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long a stopping stdio upstream gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_millis(500);
/// How often an idle HTTP upstream is pinged to notice that it went away.
const HTTP_PING: Duration = Duration::from_secs(10);
/// How long an idle kept-alive connection to an HTTP upstream is kept for the next call.
const HTTP_IDLE: Duration = Duration::from_secs(3);
/// The longest stderr line logged from an upstream.
const MAX_LOG_LINE: usize = 2000;
/// The most bytes of one upstream stderr line kept while reading it.
const MAX_STDERR_LINE: usize = 8 * 1024;

/// What `list_buckets` reports about an upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Connecting,
    Connected,
    Unavailable(String),
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Connecting => "connecting",
            Status::Connected => "connected",
            Status::Unavailable(_) => "unavailable",
        }
    }
}

/// Where an upstream's progress notifications for one call go: the calling client's peer,
/// under the client's own progress token.
#[derive(Clone)]
pub struct ProgressSink {
    pub peer: Peer<RoleServer>,
    pub token: ProgressToken,
}

/// How a call reaches a connected upstream: rmcp's client, the progress routes of its
/// calls, and the direct path (HTTP upstreams with sessions).
type Paths = (Peer<RoleClient>, ProgressRoutes, Option<Arc<Direct>>);

/// Upstream progress token (rmcp's counter) -> the call's forwarder, for calls in flight.
type ProgressRoutes = Arc<Mutex<HashMap<ProgressToken, Arc<Progress>>>>;

/// Why a forwarded call produced no upstream result.
#[derive(Debug)]
pub enum CallFailure {
    /// Not connected, or the connection broke during the call.
    Unavailable(String),
    /// No answer within the upstream's timeout, `queued` of it spent waiting for a call slot.
    Timeout { after: Duration, queued: Duration },
    /// The upstream's answer is larger than the gateway reads (16 MiB).
    TooLarge(String),
    /// The caller's lineage has its maximum of calls running and waiting on the upstream.
    Busy(String),
    /// The caller's cancellation token fired (client cancel, or its token lost standing).
    Cancelled,
    /// The upstream answered with a JSON-RPC error (e.g. arguments it rejects).
    Upstream(ErrorData),
}

struct State {
    status: Status,
    peer: Option<Peer<RoleClient>>,
    /// Calls straight on the session of an HTTP upstream (see `direct`).
    direct: Option<Arc<Direct>>,
    tools: Arc<Vec<Tool>>,
    routes: ProgressRoutes,
}

pub struct Connection {
    pub upstream: Upstream,
    state: Mutex<State>,
    /// Stops the connection task (removal, reload or shutdown).
    stop: CancellationToken,
    /// A call saw the transport break: reconnect now rather than wait for the service to end.
    broken: Notify,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The upstream's call slots, shared fairly among lineages.
    share: Arc<FairShare>,
}

/// Told whenever an upstream's tool list or status changes.
pub type OnChange = Arc<dyn Fn() + Send + Sync>;

impl Connection {
    /// Starts the connection task; it runs until `stop` (a child of the gateway's shutdown) is
    /// cancelled. Returns at once: connecting never delays the server.
    pub fn start(upstream: Upstream, stop: CancellationToken, on_change: OnChange) -> Arc<Self> {
        let connection = Arc::new(Connection {
            upstream,
            state: Mutex::new(State {
                status: Status::Connecting,
                peer: None,
                direct: None,
                tools: Arc::new(Vec::new()),
                routes: ProgressRoutes::default(),
            }),
            stop,
            broken: Notify::new(),
            task: Mutex::new(None),
            share: FairShare::new(),
        });
        let task = tokio::spawn(Arc::clone(&connection).run(on_change));
        *connection.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        connection
    }

    /// Connects once and lists tools, for `tokenwarden upstreams`: the tools, or why not.
    pub async fn probe(upstream: &Upstream) -> Result<Vec<Tool>, String> {
        if let Some(reason) = &upstream.unavailable {
            return Err(reason.clone());
        }
        let probe = Connection {
            upstream: upstream.clone(),
            state: Mutex::new(State {
                status: Status::Connecting,
                peer: None,
                direct: None,
                tools: Arc::new(Vec::new()),
                routes: ProgressRoutes::default(),
            }),
            stop: CancellationToken::new(),
            broken: Notify::new(),
            task: Mutex::new(None),
            share: FairShare::new(),
        };
        let (handler, _refresh) = probe.handler();
        let scrub = |e: String| scrub(&upstream.transport, &e);
        let session = probe.connect(handler).await.map_err(scrub)?;
        let tools = list_tools(&session.peer, upstream.timeout).await;
        session.close().await;
        tools.map_err(scrub)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> Status {
        self.lock().status.clone()
    }

    pub fn tools(&self) -> Arc<Vec<Tool>> {
        Arc::clone(&self.lock().tools)
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Waits until the connection task has stopped its upstream (after [`Connection::stop`]
    /// or the gateway's shutdown).
    pub async fn stopped(&self) {
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    fn set(&self, status: Status, session: Option<&Session>, tools: Option<Vec<Tool>>) {
        let mut state = self.lock();
        state.status = status;
        state.peer = session.map(|s| s.peer.clone());
        state.direct = session.and_then(|s| s.direct.clone());
        if let Some(tools) = tools {
            state.tools = Arc::new(tools);
        }
    }

    fn handler(&self) -> (UpstreamHandler, Arc<Notify>) {
        let refresh = Arc::new(Notify::new());
        let routes = Arc::clone(&self.lock().routes);
        (
            UpstreamHandler {
                refresh: Arc::clone(&refresh),
                routes,
            },
            refresh,
        )
    }

    async fn run(self: Arc<Self>, on_change: OnChange) {
        let bucket = self.upstream.bucket.clone();
        if let Some(reason) = &self.upstream.unavailable {
            // Nothing to retry: this process's environment will not change. A reload with
            // the entry changed (or the server restarted with the variable set) tries again.
            tracing::warn!(target: "upstream", bucket = %bucket, "unavailable: {reason}");
            self.set(Status::Unavailable(reason.clone()), None, None);
            on_change();
            self.stop.cancelled().await;
            return;
        }
        let mut backoff = FIRST_BACKOFF;
        loop {
            let (handler, refresh) = self.handler();
            let connected = tokio::select! {
                c = self.connect(handler) => c,
                _ = self.stop.cancelled() => return,
            };
            match connected {
                Ok(session) => {
                    let tools = list_tools(&session.peer, self.upstream.timeout).await;
                    match tools {
                        Ok(tools) => {
                            tracing::info!(target: "upstream", bucket = %bucket,
                                tools = tools.len(), "connected");
                            // The tools go into the catalogue before the bucket shows as
                            // connected: a client that waits for `connected` then finds them.
                            self.lock().tools = Arc::new(tools);
                            on_change();
                            self.set(Status::Connected, Some(&session), None);
                            on_change();
                            backoff = FIRST_BACKOFF;
                            let ended = self.serve(&session, &refresh, &on_change).await;
                            let ended = scrub(&self.upstream.transport, &ended);
                            // The tools stay listed: their calls answer upstream_unavailable
                            // until the upstream is back, rather than "unknown tool".
                            self.set(Status::Unavailable(ended.clone()), None, None);
                            on_change();
                            session.close().await;
                            if self.stop.is_cancelled() {
                                return;
                            }
                            tracing::warn!(target: "upstream", bucket = %bucket,
                                "disconnected: {ended}; reconnecting in {}s", backoff.as_secs());
                        }
                        Err(e) => {
                            session.close().await;
                            self.fail(&bucket, e, backoff, &on_change);
                        }
                    }
                }
                Err(e) => self.fail(&bucket, e, backoff, &on_change),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            if !matches!(self.status(), Status::Unavailable(_)) {
                self.set(Status::Connecting, None, None);
            }
        }
    }

    fn fail(&self, bucket: &str, error: String, backoff: Duration, on_change: &OnChange) {
        let error = scrub(&self.upstream.transport, &error);
        // Said once at WARN; the same reason again on a retry only at DEBUG.
        if self.status() == Status::Unavailable(error.clone()) {
            tracing::debug!(target: "upstream", bucket = %bucket,
                "still unavailable: {error}; retrying in {}s", backoff.as_secs());
        } else {
            tracing::warn!(target: "upstream", bucket = %bucket,
                "unavailable: {error}; retrying with backoff (1s doubling to 60s)");
        }
        self.set(Status::Unavailable(error), None, None);
        on_change();
    }

    /// Runs while the session lives: refreshes the tool list when the upstream says it changed.
    /// Returns why the session ended.
    async fn serve(&self, session: &Session, refresh: &Notify, on_change: &OnChange) -> String {
        let mut closed = session.closed.clone();
        // A stdio upstream's death is seen at once (its stdout closes); an HTTP upstream's only
        // when a request fails, so idle HTTP upstreams are pinged.
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + HTTP_PING, HTTP_PING);
        let is_http = matches!(self.upstream.transport, Transport::Http { .. });
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return "stopped".to_owned(),
                _ = closed.changed() => return session.exit_reason(),
                // A call failed on the transport: one call's own failure (an HTTP status for
                // that request, say) or the connection's? A ping tells, so that one caller's
                // bad call does not end the session every other caller is using.
                _ = self.broken.notified() => {
                    if let Some(why) = self.ping_fails(session).await {
                        return format!("the connection broke ({why})");
                    }
                }
                _ = ping.tick(), if is_http => {
                    if let Some(why) = self.ping_fails(session).await {
                        return why;
                    }
                }
                _ = refresh.notified() => {
                    match list_tools(&session.peer, self.upstream.timeout).await {
                        Ok(tools) => {
                            tracing::info!(target: "upstream", bucket = %self.upstream.bucket,
                                tools = tools.len(), "tool list changed");
                            self.set(Status::Connected, Some(session), Some(tools));
                            on_change();
                        }
                        Err(e) => return format!("listing tools failed: {e}"),
                    }
                }
            }
        }
    }

    /// Why the upstream did not answer a ping, if it did not.
    async fn ping_fails(&self, session: &Session) -> Option<String> {
        let request = ClientRequest::PingRequest(Default::default());
        let answer = tokio::time::timeout(
            self.upstream.timeout.min(HTTP_PING),
            session.peer.send_request(request),
        )
        .await;
        match answer {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("ping failed: {}", plain_error(&e))),
            Err(_) => Some("ping got no answer".to_owned()),
        }
    }

    async fn connect(&self, handler: UpstreamHandler) -> Result<Session, String> {
        let timeout = self.upstream.timeout;
        match &self.upstream.transport {
            Transport::Stdio {
                command,
                args,
                env,
                cwd,
            } => {
                let mut cmd = tokio::process::Command::new(command);
                // The child inherits tokenwarden's environment (PATH, HOME: npx needs them)
                // except the caller's secret: no bearer goes upstream.
                cmd.env_remove("TOKENWARDEN_TOKEN").args(args).envs(env);
                if let Some(cwd) = cwd {
                    cmd.current_dir(cwd);
                }
                // npx/uvx start grandchildren: give them a process group we can stop whole.
                #[cfg(unix)]
                cmd.process_group(0);
                cmd.stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true);
                let mut child = cmd.spawn().map_err(|e| cannot_start(command, &e))?;
                let group = child.id();
                let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                    kill_group(group).await;
                    return Err(format!("cannot start {command}: no pipes to it"));
                };
                if let Some(stderr) = child.stderr.take() {
                    tokio::spawn(log_stderr(self.upstream.bucket.clone(), stderr));
                }
                // Reaped when it exits; stopped through its process group (`kill_group`).
                tokio::spawn(async move {
                    let _ = child.wait().await;
                });
                // Whole lines of at most 16 MiB reach rmcp; a longer answer fails its call at
                // once (`oversize`) instead of being dropped by rmcp while the call waits.
                let stdout = LineCap::new(stdout, MAX_RESULT_BYTES);
                let process =
                    rmcp::transport::async_rw::AsyncRwTransport::new_client(stdout, stdin)
                        .with_max_line_length(MAX_RESULT_BYTES + 2);
                let session = tokio::time::timeout(timeout, handler.serve(process)).await;
                match session {
                    Ok(Ok(running)) => Ok(Session::new(running, group, None)),
                    Ok(Err(e)) => {
                        kill_group(group).await;
                        Err(format!("initialize failed: {}", plain_error(&e)))
                    }
                    Err(_) => {
                        kill_group(group).await;
                        Err(format!(
                            "no answer to initialize within {}s",
                            timeout.as_secs_f64()
                        ))
                    }
                }
            }
            Transport::Http { url, headers } => {
                use rmcp::transport::StreamableHttpClientTransport;
                use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
                let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
                let mut custom = HashMap::new();
                for (name, value) in headers {
                    if name.eq_ignore_ascii_case("authorization")
                        && let Some(token) = value.strip_prefix("Bearer ")
                    {
                        config = config.auth_header(token.trim());
                        continue;
                    }
                    let name = axum::http::HeaderName::try_from(name.as_str())
                        .map_err(|_| format!("invalid header name {name:?}"))?;
                    let value = axum::http::HeaderValue::try_from(value.as_str())
                        .map_err(|_| format!("invalid value for header {name}"))?;
                    custom.insert(name, value);
                }
                config = config.custom_headers(custom);
                let (client, direct) = Recorder::new(http_client()?, Arc::clone(&handler.refresh));
                let transport = StreamableHttpClientTransport::with_client(client, config);
                match tokio::time::timeout(timeout, handler.serve(transport)).await {
                    Ok(Ok(running)) => Ok(Session::new(running, None, Some(direct))),
                    Ok(Err(e)) => Err(format!(
                        "cannot connect to {}: {}",
                        redact_url(url),
                        plain_error(&e)
                    )),
                    Err(_) => Err(format!(
                        "no answer to initialize from {} within {}s",
                        redact_url(url),
                        timeout.as_secs_f64()
                    )),
                }
            }
        }
    }

    /// Forwards one `tools/call`: the upstream's own tool name and the arguments unchanged.
    /// Waits for one of the upstream's call slots, shared fairly among lineages (`fair`); ends
    /// early, cancelling the upstream call, on timeout (waiting included) or when `cancel`
    /// fires. `trace`, the call's span, goes upstream as `_meta.traceparent` (SEP-414) and,
    /// over HTTP, as the `traceparent` header.
    pub async fn call(
        &self,
        upstream_tool: &str,
        arguments: Option<rmcp::model::JsonObject>,
        (progress, lineage): (Option<ProgressSink>, Lineage),
        cancel: &CancellationToken,
        trace: Option<crate::trace::SpanContext>,
    ) -> Result<CallToolResult, CallFailure> {
        self.available()?;
        // One deadline for the call, waiting for a slot included, whichever path it takes.
        let started = tokio::time::Instant::now();
        let timeout = self.upstream.timeout;
        let deadline = started + timeout;
        let acquired = tokio::select! {
            slot = self.share.acquire(lineage) => slot,
            _ = tokio::time::sleep_until(deadline) => {
                return Err(CallFailure::Timeout { after: timeout, queued: timeout });
            }
            _ = cancel.cancelled() => return Err(CallFailure::Cancelled),
        };
        let Ok(slot) = acquired else {
            // A lineage retrying at its bound must not make the server spin: the refusal
            // waits a second (the caller's request and its ticket meanwhile count).
            tokio::select! {
                _ = tokio::time::sleep(crate::http::REFUSAL_DELAY) => {}
                _ = cancel.cancelled() => return Err(CallFailure::Cancelled),
            }
            return Err(CallFailure::Busy(format!(
                "this token's lineage already has {} calls running and {} waiting on upstream {}; \
                 retry when one has ended",
                super::fair::LINEAGE_SLOTS,
                super::fair::LINEAGE_WAITING,
                self.upstream.bucket
            )));
        };
        let queued = started.elapsed();
        let paths = self.available()?;
        let progress = progress.map(|sink| Arc::new(Progress::start(sink)));
        let answer = self
            .forward(
                upstream_tool,
                arguments,
                (progress, paths),
                cancel,
                (deadline, trace.map(|t| t.traceparent())),
            )
            .await;
        match answer {
            Err(CallFailure::Timeout { after, .. }) => Err(CallFailure::Timeout { after, queued }),
            Err(CallFailure::TooLarge(why)) => {
                // Answered at once; the lineage pays for the answer it made the upstream build.
                slot.penalise(crate::http::REFUSAL_DELAY);
                Err(CallFailure::TooLarge(why))
            }
            Ok(result) => {
                // Big answers under the limit count against the lineage too (`fair`).
                slot.charge(answer_bytes(&result));
                Ok(result)
            }
            answer => answer,
        }
    }

    /// The upstream's client and direct path, if it is connected.
    fn available(&self) -> Result<Paths, CallFailure> {
        let state = self.lock();
        match (&state.status, &state.peer) {
            (Status::Connected, Some(peer)) => Ok((
                peer.clone(),
                Arc::clone(&state.routes),
                state.direct.clone(),
            )),
            (Status::Unavailable(why), _) => Err(CallFailure::Unavailable(format!(
                "upstream {} is unavailable: {why}",
                self.upstream.bucket
            ))),
            _ => Err(CallFailure::Unavailable(format!(
                "upstream {} is still connecting",
                self.upstream.bucket
            ))),
        }
    }

    async fn forward(
        &self,
        upstream_tool: &str,
        arguments: Option<rmcp::model::JsonObject>,
        (progress, (peer, routes, direct)): (Option<Arc<Progress>>, Paths),
        cancel: &CancellationToken,
        (deadline, traceparent): (tokio::time::Instant, Option<String>),
    ) -> Result<CallToolResult, CallFailure> {
        let timeout = self.upstream.timeout;
        if let Some(direct) = direct {
            let sent = direct
                .call(
                    upstream_tool,
                    arguments.clone(),
                    (progress.as_deref(), traceparent.as_deref()),
                    cancel,
                    (deadline, timeout),
                )
                .await;
            if let Sent::Answered(answer) = sent {
                return answer;
            }
        }
        let mut params = CallToolRequestParams::new(upstream_tool.to_owned());
        params.arguments = arguments;
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        let mut options = PeerRequestOptions::no_options();
        if let Some(traceparent) = traceparent {
            // SEP-414; over HTTP, `Recorder` also sends it as the header.
            let mut meta = rmcp::model::RequestMetaObject::new();
            meta.set_traceparent(traceparent);
            options.meta = Some(meta);
        }
        let mut handle = peer
            .send_request_with_option(request, options)
            .await
            .map_err(|e| self.broke(format!("cannot send the call: {}", plain_error(&e))))?;
        let route = progress.map(|forwarder| {
            let key = handle.progress_token.clone();
            lock_routes(&routes).insert(key.clone(), forwarder);
            RouteGuard {
                routes: Arc::clone(&routes),
                key,
            }
        });
        let outcome = tokio::select! {
            answer = &mut handle.rx => Some(answer),
            _ = tokio::time::sleep_until(deadline) => None,
            _ = cancel.cancelled() => None,
        };
        drop(route);
        match outcome {
            Some(Ok(Ok(ServerResult::CallToolResult(result)))) => Ok(result),
            Some(Ok(Ok(_))) => Err(CallFailure::Unavailable(format!(
                "upstream {} answered tools/call with something other than a tool result",
                self.upstream.bucket
            ))),
            Some(Ok(Err(rmcp::service::ServiceError::McpError(error)))) => {
                Err(super::oversize::failure(error))
            }
            Some(Ok(Err(e))) => Err(self.broke(format!("the call failed: {}", plain_error(&e)))),
            Some(Err(_)) => Err(self.broke("the connection closed during the call".to_owned())),
            None => {
                let reason = if cancel.is_cancelled() {
                    "cancelled by the client or tokenwarden"
                } else {
                    "timed out"
                };
                // Best effort: the upstream may already be gone.
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    handle.cancel(Some(reason.to_owned())),
                )
                .await;
                if cancel.is_cancelled() {
                    Err(CallFailure::Cancelled)
                } else {
                    Err(CallFailure::Timeout {
                        after: timeout,
                        queued: Duration::ZERO,
                    })
                }
            }
        }
    }

    /// A call's failure on the transport: the session is checked with a ping (see `serve`),
    /// not ended, since the failure may be this call's alone.
    fn broke(&self, message: String) -> CallFailure {
        self.broken.notify_one();
        let message = scrub(&self.upstream.transport, &message);
        CallFailure::Unavailable(format!("upstream {}: {message}", self.upstream.bucket))
    }
}

fn lock_routes(
    routes: &Mutex<HashMap<ProgressToken, Arc<Progress>>>,
) -> std::sync::MutexGuard<'_, HashMap<ProgressToken, Arc<Progress>>> {
    routes.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes a call's progress route when the call ends, however it ends.
struct RouteGuard {
    routes: ProgressRoutes,
    key: ProgressToken,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        lock_routes(&self.routes).remove(&self.key);
    }
}

/// A live rmcp client session with one upstream.
struct Session {
    peer: Peer<RoleClient>,
    cancel: rmcp::service::RunningServiceCancellationToken,
    /// Flips when the service loop ends (the upstream exited or the transport closed).
    closed: tokio::sync::watch::Receiver<bool>,
    reason: Arc<Mutex<Option<String>>>,
    /// The stdio child's process group.
    group: Option<u32>,
    /// An HTTP upstream's direct call path, sharing this session.
    direct: Option<Arc<Direct>>,
}

impl Session {
    fn new(
        running: rmcp::service::RunningService<RoleClient, UpstreamHandler>,
        group: Option<u32>,
        direct: Option<Arc<Direct>>,
    ) -> Session {
        let peer = running.peer().clone();
        let cancel = running.cancellation_token();
        let (tx, closed) = tokio::sync::watch::channel(false);
        let reason = Arc::new(Mutex::new(None));
        let sink = Arc::clone(&reason);
        tokio::spawn(async move {
            let why = match running.waiting().await {
                Ok(rmcp::service::QuitReason::Cancelled) => "stopped".to_owned(),
                Ok(rmcp::service::QuitReason::Closed) => {
                    "the upstream closed the connection".to_owned()
                }
                Ok(_) => "the session ended".to_owned(),
                Err(e) => format!("the session ended: {}", plain_error(&e)),
            };
            *sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
            let _ = tx.send(true);
        });
        Session {
            peer,
            cancel,
            closed,
            reason,
            group,
            direct,
        }
    }

    fn exit_reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "the session ended".to_owned())
    }

    /// Ends the session and, for stdio, the child's whole process group.
    async fn close(self) {
        self.cancel.cancel();
        let mut closed = self.closed;
        let _ = tokio::time::timeout(Duration::from_secs(2), closed.wait_for(|c| *c)).await;
        kill_group(self.group).await;
    }
}

/// The HTTP client for one upstream session. Unlike rmcp's default client, it keeps
/// connections alive between calls: rmcp's default opens a new TCP connection for every
/// request (`pool_max_idle_per_host(0)`, to dodge a delayed-ACK stall on bodies left unread;
/// rmcp now drains a response stream after its answer, so a reused connection does not
/// stall), which cost each forwarded call a connect and the upstream an accept. Idle
/// connections are dropped after [`HTTP_IDLE`], before common servers' own keep-alive
/// timeouts (Node and uvicorn close after 5 s), so a call is not sent on a connection the
/// upstream is closing. Redirects: only same-origin 307/308 are followed (they keep the
/// method and body), at most 10, like rmcp's default; anything else is answered as is, so no
/// configured header is replayed to another host.
fn http_client() -> Result<reqwest::Client, String> {
    let redirects = reqwest::redirect::Policy::custom(|attempt| {
        let keeps_body = matches!(attempt.status().as_u16(), 307 | 308);
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if !keeps_body || !same_origin {
            attempt.stop()
        } else if attempt.previous().len() > 10 {
            attempt.error("more than 10 redirects")
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .pool_idle_timeout(HTTP_IDLE)
        .redirect(redirects)
        .build()
        .map_err(|e| format!("cannot set up an HTTP client: {e}"))
}

/// SIGTERM to the process group, then SIGKILL after a short grace.
async fn kill_group(group: Option<u32>) {
    #[cfg(unix)]
    if let Some(pid) = group.and_then(|g| i32::try_from(g).ok()).filter(|g| *g > 1) {
        // SAFETY: killpg only sends a signal to the group we created for our own child.
        unsafe {
            libc::killpg(pid, libc::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while tokio::time::Instant::now() < deadline {
            // SAFETY: signal 0 only checks whether the group still has members.
            if unsafe { libc::killpg(pid, 0) } != 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // SAFETY: as above.
        unsafe {
            libc::killpg(pid, libc::SIGKILL);
        }
    }
    #[cfg(not(unix))]
    let _ = group;
}

/// `url` as it may be shown: `scheme://host:port/path`, without userinfo, query or fragment
/// (any of which may hold an expanded credential).
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i], &url[i + 3..]),
        None => return "[redacted URL]".to_owned(),
    };
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let rest = &rest[..end];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority.rsplit('@').next().unwrap_or_default();
    format!("{scheme}://{host}{path}")
}

/// `text` (an error from rmcp, reqwest or the OS) with every configured value that may hold a
/// credential replaced: the expanded URL and header values, a stdio upstream's args and env
/// values, and any URL in it cut down by [`redact_url`] (whatever form the library printed).
pub fn scrub(transport: &Transport, text: &str) -> String {
    let mut out = text.to_owned();
    let mut secrets: Vec<&str> = Vec::new();
    match transport {
        Transport::Http { url, headers } => {
            out = out.replace(url.as_str(), &redact_url(url));
            for value in headers.values() {
                secrets.push(value);
                if let Some(token) = value.strip_prefix("Bearer ") {
                    secrets.push(token.trim());
                }
            }
            if let Some(i) = url.find(['?', '#']) {
                secrets.extend(url[i + 1..].split(['&', '=', '#']));
            }
            if let Some(rest) = url.split("://").nth(1) {
                let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
                if let Some((userinfo, _)) = authority.rsplit_once('@') {
                    secrets.extend(userinfo.split(':'));
                }
            }
        }
        Transport::Stdio { args, env, .. } => {
            secrets.extend(args.iter().map(String::as_str));
            secrets.extend(env.values().map(String::as_str));
        }
    }
    // Longest first, so a value containing another is replaced whole.
    secrets.retain(|s| s.len() >= 3);
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for secret in secrets {
        out = out.replace(secret, "[redacted]");
    }
    crate::secret::redact_secrets(&redact_urls(&without_type_names(&out)))
}

/// Why a command could not be started, in the user's words: "command not found: npx" rather
/// than "No such file or directory (os error 2)".
fn cannot_start(command: &str, error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => format!(
            "command not found: {command} (install it, or give its full path in \"command\")"
        ),
        std::io::ErrorKind::PermissionDenied => {
            format!("cannot start {command}: permission denied")
        }
        _ => format!("cannot start {command}: {}", io_words(error)),
    }
}

/// An error from rmcp (or reqwest, hyper, the OS beneath it) in one line of the user's words:
/// the root cause (an OS error by its kind, "connection refused"), never rmcp's wrapper types
/// (`Send message error Transport [rmcp::transport::worker::WorkerTransport<…>] …`).
pub fn plain_error(error: &(dyn std::error::Error + 'static)) -> String {
    // rmcp's transport errors keep their cause in a field `source()` does not return.
    if let Some(rmcp::service::ClientInitializeError::TransportError { error, .. }) =
        error.downcast_ref::<rmcp::service::ClientInitializeError>()
    {
        return plain_error(&*error.error);
    }
    if let Some(rmcp::ServiceError::TransportSend(error)) =
        error.downcast_ref::<rmcp::ServiceError>()
    {
        return plain_error(&*error.error);
    }
    if let Some(rmcp::ServiceError::McpError(error)) = error.downcast_ref::<rmcp::ServiceError>() {
        return format!("the upstream answered with an error: {}", error.message);
    }
    // Nor does its HTTP client's error variant.
    type HttpError = rmcp::transport::streamable_http_client::StreamableHttpError<reqwest::Error>;
    if let Some(HttpError::Client(error)) = error.downcast_ref::<HttpError>() {
        return plain_error(error);
    }
    let mut deepest = error;
    let mut io = None;
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<std::io::Error>() {
            io = Some(found);
        }
        deepest = e;
        current = e.source();
    }
    let text = match io {
        Some(io) => io_words(io),
        None => deepest.to_string(),
    };
    let text = without_type_names(text.lines().next().unwrap_or_default());
    if text.trim().is_empty() {
        "unknown error".to_owned()
    } else {
        text
    }
}

/// An OS error by its kind ("connection refused"), else its message without "(os error N)".
fn io_words(error: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match error.kind() {
        ConnectionRefused | ConnectionReset | ConnectionAborted | TimedOut | NotFound
        | PermissionDenied | BrokenPipe | AddrNotAvailable | HostUnreachable
        | NetworkUnreachable => error.kind().to_string(),
        _ => {
            let text = error.to_string();
            match text.find(" (os error") {
                Some(i) => text[..i].to_owned(),
                None => text,
            }
        }
    }
}

/// `text` without Rust type paths (`a::b::C<…>`), and without the bracket rmcp prints one in
/// (`Transport [rmcp::…]`): a last net under [`plain_error`] for every message a client or
/// the log is shown.
pub fn without_type_names(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = find_type_path(rest) {
        let (start, end) = at;
        let mut before = &rest[..start];
        let mut after = &rest[end..];
        // "Transport [path] error" -> "Transport error"
        if before.ends_with('[') && after.starts_with(']') {
            before = before[..before.len() - 1].trim_end();
            after = &after[1..];
        }
        out.push_str(before);
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Where the first Rust type path in `text` is: an identifier, then at least two more
/// `::identifier` (so `fe80::1` and `std::io` in prose are left alone), then any generic
/// arguments, balanced.
fn find_type_path(text: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if ident(bytes[i]) && (i == 0 || !ident(bytes[i - 1])) && bytes[i].is_ascii_alphabetic() {
            let start = i;
            let mut j = i;
            let mut segments = 0;
            loop {
                while j < bytes.len() && ident(bytes[j]) {
                    j += 1;
                }
                if text[j..].starts_with("::")
                    && bytes
                        .get(j + 2)
                        .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
                {
                    segments += 1;
                    j += 2;
                } else {
                    break;
                }
            }
            if segments >= 2 {
                if bytes.get(j) == Some(&b'<') {
                    let mut depth = 0;
                    while j < bytes.len() {
                        match bytes[j] {
                            b'<' => depth += 1,
                            b'>' => {
                                depth -= 1;
                                if depth == 0 {
                                    j += 1;
                                    break;
                                }
                            }
                            _ => {}
                        }
                        j += 1;
                    }
                }
                return Some((start, j));
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    None
}

/// Every `http://` or `https://` URL in `text` cut down by [`redact_url`]: for errors and log
/// lines from libraries (rmcp logs the URL of a failed request, query string included).
pub fn redact_urls(text: &str) -> String {
    let mut scrubbed = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = ["http://", "https://"]
        .iter()
        .filter_map(|p| rest.find(p))
        .min()
    {
        scrubbed.push_str(&rest[..start]);
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>' | ','))
            .unwrap_or(tail.len());
        scrubbed.push_str(&redact_url(&tail[..end]));
        rest = &tail[end..];
    }
    scrubbed.push_str(rest);
    scrubbed
}

async fn log_stderr(bucket: String, stderr: tokio::process::ChildStderr) {
    use tokio::io::AsyncBufReadExt;
    let mut reader = tokio::io::BufReader::new(stderr);
    let mut line: Vec<u8> = Vec::new();
    // Drains until EOF whatever the bytes: a child blocked on a full stderr pipe stops
    // answering. Each line keeps its first MAX_STDERR_LINE bytes; the rest is discarded.
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(chunk) => chunk,
        };
        let (part, ended) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        let room = MAX_STDERR_LINE.saturating_sub(line.len());
        line.extend_from_slice(&part[..part.len().min(room)]);
        let used = part.len() + usize::from(ended);
        reader.consume(used);
        if ended {
            log_line(&bucket, &line);
            line.clear();
        }
    }
    if !line.is_empty() {
        log_line(&bucket, &line);
    }
}

fn log_line(bucket: &str, bytes: &[u8]) {
    let line = String::from_utf8_lossy(bytes);
    let line: String = line
        .trim_end_matches('\r')
        .chars()
        .take(MAX_LOG_LINE)
        .collect();
    let line = crate::secret::redact_secrets(&line);
    tracing::info!(target: "upstream", bucket = %bucket, "{line}");
}

/// The most tools one upstream may list, and the most bytes (as JSON) its list may take: an
/// upstream cannot make the server hold more of its catalogue than this.
const MAX_UPSTREAM_TOOLS: usize = 10_000;
const MAX_UPSTREAM_TOOL_BYTES: usize = 32 << 20;

/// Every page of the upstream's `tools/list`, bypassing rmcp's client-side list cache, within
/// [`MAX_UPSTREAM_TOOLS`] and [`MAX_UPSTREAM_TOOL_BYTES`].
async fn list_tools(peer: &Peer<RoleClient>, timeout: Duration) -> Result<Vec<Tool>, String> {
    let mut tools = Vec::new();
    let mut bytes = 0usize;
    let mut cursor = None;
    for _ in 0..1000 {
        let request = ClientRequest::ListToolsRequest(ListToolsRequest::with_param(
            PaginatedRequestParams::default().with_cursor(cursor),
        ));
        let answer = tokio::time::timeout(timeout, peer.send_request(request))
            .await
            .map_err(|_| format!("tools/list got no answer within {}s", timeout.as_secs_f64()))?
            .map_err(|e| format!("tools/list failed: {}", plain_error(&e)))?;
        let ServerResult::ListToolsResult(page) = answer else {
            return Err("tools/list answered with something other than a tool list".to_owned());
        };
        bytes += page
            .tools
            .iter()
            .map(|t| serde_json::to_vec(t).map_or(0, |v| v.len()))
            .sum::<usize>();
        tools.extend(page.tools);
        if tools.len() > MAX_UPSTREAM_TOOLS {
            return Err(format!(
                "tools/list lists more than {MAX_UPSTREAM_TOOLS} tools"
            ));
        }
        if bytes > MAX_UPSTREAM_TOOL_BYTES {
            return Err(format!(
                "tools/list takes more than {} MiB",
                MAX_UPSTREAM_TOOL_BYTES >> 20
            ));
        }
        cursor = page.next_cursor;
        if cursor.is_none() {
            return Ok(tools);
        }
    }
    Err("tools/list kept paginating past 1000 pages".to_owned())
}

/// The gateway's side of an upstream session: declares no capabilities (no roots, sampling
/// or elicitation), refreshes on `tools/list_changed`, routes progress to the calling client.
#[derive(Clone)]
struct UpstreamHandler {
    refresh: Arc<Notify>,
    routes: ProgressRoutes,
}

impl ClientHandler for UpstreamHandler {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("tokenwarden-gateway", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.refresh.notify_one();
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        // Offered, never awaited: a flood or a client that does not read must not stall this
        // upstream's other calls, which share this handler.
        if let Some(forwarder) = lock_routes(&self.routes).get(&params.progress_token) {
            forwarder.offer(params);
        }
    }
}

/// About how many bytes an answer took: its contents' text and data. (Structured content is
/// not counted: it usually mirrors the text, and counting it would serialise every answer once
/// more on the request path.)
fn answer_bytes(result: &CallToolResult) -> u64 {
    use rmcp::model::{ContentBlock, ResourceContents};
    let bytes = |content: &ContentBlock| match content {
        ContentBlock::Text(text) => text.text.len(),
        ContentBlock::Image(image) => image.data.len(),
        ContentBlock::Audio(audio) => audio.data.len(),
        ContentBlock::Resource(resource) => match &resource.resource {
            ResourceContents::TextResourceContents { text, .. } => text.len(),
            ResourceContents::BlobResourceContents { blob, .. } => blob.len(),
            _ => 0,
        },
        _ => 0,
    };
    result.content.iter().map(|c| bytes(c) as u64).sum()
}
