//! The MCP face of the service: a `ServerHandler` whose `tools/list` shows each caller only
//! what it may call and whose `tools/call` asks the one decision path before running a tool.
//! The same handler serves stdio and streamable HTTP; on HTTP the caller comes from the
//! guard (see `http`), on stdio it is the owner or the secret the session started with,
//! authenticated again on every request (SPEC §6).

pub mod tools;

use std::net::IpAddr;
use std::sync::Arc;

#[allow(deprecated)]
use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
    SetLevelRequestParams,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, ErrorCode};
use crate::gateway::{CallFailure, ExposedTool, Gateway, ProgressSink};
use crate::observe::{Access, Front, Outcome};
use crate::secret::{TokenId, truncate_for_message};
use crate::service::{Caller, Service};
use crate::trace::{Handle, Incoming, Kind, Span, SpanContext};

/// How often a session's tools/list_changed forwarder checks that the session still lives.
const SESSION_POLL: std::time::Duration = std::time::Duration::from_secs(5);

/// Put into the HTTP request's extensions by the guard once the bearer has authenticated.
#[derive(Clone, Debug)]
pub struct Authenticated {
    pub token_id: TokenId,
    pub client_ip: IpAddr,
    /// The secret the request presented, so that work outliving the request (a stream, a long
    /// gateway call) keeps belonging to that secret; `None` for a console session (which
    /// keeps only its secret's hash, and makes no gateway calls) and in the guard benchmark.
    pub secret: Option<Presented>,
    /// The request's trace context (its `traceparent`, when it came), only when traces are on.
    pub trace: Option<crate::trace::Incoming>,
}

/// A bearer secret as a client presented it, kept in memory to re-authenticate long-running
/// work; its `Debug` never shows it.
#[derive(Clone)]
pub struct Presented(Arc<str>);

impl Presented {
    pub fn new(secret: &str) -> Presented {
        Presented(Arc::from(secret))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mcp_[redacted]")
    }
}

/// Who a stdio session acts as: the owner (no `TOKENWARDEN_TOKEN`), or the secret it started
/// with. The secret, not the token id: like an HTTP bearer it is authenticated on every request,
/// so the end of a rotation's grace (or a revocation, pause or expiry) ends the session's rights.
#[derive(Clone)]
pub enum StdioCaller {
    Owner,
    Secret(String),
}

impl std::fmt::Debug for StdioCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StdioCaller::Owner => f.write_str("Owner"),
            StdioCaller::Secret(_) => f.write_str("Secret(mcp_[redacted])"),
        }
    }
}

#[derive(Clone)]
pub struct TokenServer {
    service: Arc<Service>,
    /// The caller of a stdio session; `None` for HTTP, where each request carries its own.
    stdio_caller: Option<StdioCaller>,
    /// The upstream MCP servers fronted as buckets, when `--upstreams` is given.
    gateway: Option<Arc<Gateway>>,
    /// Until when a stdio `tools/list` waits for upstreams still connecting
    /// (`serve --upstreams-wait`).
    upstreams_wait: Option<tokio::time::Instant>,
}

/// How often a running gateway call re-checks its caller's standing (revoked, paused,
/// expired), so that it is cancelled upstream and answered within a second.
const CALL_RECHECK: std::time::Duration = std::time::Duration::from_millis(250);

const INSTRUCTIONS: &str = "tokenwarden manages access tokens. Call whoami to see your own \
    scope. To give a sub-agent access, create_token a child with only the buckets and tools it \
    needs and a ttl_seconds, hand it the returned `token` secret, and revoke_token it when the \
    sub-agent is done. A child can never hold more than its parent.";

impl TokenServer {
    pub fn for_http(service: Arc<Service>) -> TokenServer {
        TokenServer {
            service,
            stdio_caller: None,
            gateway: None,
            upstreams_wait: None,
        }
    }

    pub fn for_stdio(service: Arc<Service>, caller: StdioCaller) -> TokenServer {
        TokenServer {
            service,
            stdio_caller: Some(caller),
            gateway: None,
            upstreams_wait: None,
        }
    }

    /// Fronts the gateway's upstream tools too.
    pub fn with_gateway(mut self, gateway: Option<Arc<Gateway>>) -> TokenServer {
        self.gateway = gateway;
        self
    }

    /// Until `deadline`, `tools/list` first waits for upstreams still connecting (each until it
    /// is connected or unavailable): a client that lists tools once, at its start, as desktop
    /// clients do, then sees the upstreams' tools. Used on stdio.
    pub fn waiting_for_upstreams_until(mut self, deadline: tokio::time::Instant) -> TokenServer {
        self.upstreams_wait = Some(deadline);
        self
    }

    /// An HTTP request's caller, as the guard authenticated it.
    pub fn http_caller(a: &Authenticated) -> (Caller, Option<IpAddr>, Option<Presented>) {
        (
            Caller::Token(a.token_id.clone()),
            Some(a.client_ip),
            a.secret.clone(),
        )
    }

    /// The gateway and its tool that `tools/call` of `name` is forwarded to, if any: a name
    /// of tokenwarden's own never is.
    fn upstream_tool(&self, name: &str) -> Option<(&Arc<Gateway>, Arc<ExposedTool>)> {
        let gateway = self.gateway.as_ref()?;
        let tool = gateway.catalogue().get(name).cloned()?;
        (!tools::exists(name)).then_some((gateway, tool))
    }

    /// The scope a person could grant so that `caller` may call `name` (scope step-up, SPEC
    /// §11): `tool:NAME`, with `bucket:NAME` first for a gateway tool, when the service says the
    /// refusal is one a new OAuth consent could lift; `None` otherwise (allowed, unknown tool,
    /// or refused for another reason).
    pub fn step_up_scope(&self, caller: &Caller, name: &str, ip: Option<IpAddr>) -> Option<String> {
        if let Some((_, tool)) = self.upstream_tool(name) {
            return self
                .service
                .needs_step_up(caller, gateway_tool(&tool), Some(&tool.bucket), ip)
                .then(|| format!("bucket:{} tool:{}", tool.bucket, tool.name));
        }
        if !tools::exists(name) {
            return None;
        }
        let tool = crate::service::Tool {
            name,
            read_only: crate::service::is_read_only_tool(name),
        };
        self.service
            .needs_step_up(caller, tool, None, ip)
            .then(|| format!("tool:{name}"))
    }

    /// Whether `tools/call` of `name` is forwarded to an upstream.
    pub fn forwards(&self, name: &str) -> bool {
        self.upstream_tool(name).is_some()
    }

    /// Who is calling, from where, and the secret it presented (what long-running work
    /// re-authenticates; `None` for the owner).
    fn caller(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<(Caller, Option<IpAddr>, Option<Presented>), ErrorData> {
        if let Some(parts) = ctx.extensions.get::<axum::http::request::Parts>() {
            return match parts.extensions.get::<Authenticated>() {
                Some(a) => Ok(TokenServer::http_caller(a)),
                None => Err(ErrorData::internal_error(
                    "request was not authenticated",
                    None,
                )),
            };
        }
        match &self.stdio_caller {
            Some(StdioCaller::Owner) => Ok((Caller::Owner, None, None)),
            Some(StdioCaller::Secret(secret)) => match self.service.authenticate(secret, None) {
                Ok(id) => Ok((Caller::Token(id), None, Some(Presented::new(secret)))),
                Err(e) => Err(ErrorData::new(
                    rmcp::model::ErrorCode(-32001),
                    format!("TOKENWARDEN_TOKEN no longer authenticates: {e}"),
                    None,
                )),
            },
            None => Err(ErrorData::internal_error(
                "request was not authenticated",
                None,
            )),
        }
    }

    /// A request's trace context when traces are on: the guard's (from the HTTP
    /// `traceparent`), else the request's `_meta.traceparent` (SEP-414: the only way a stdio
    /// client has), else none (a new trace).
    fn incoming(&self, ctx: &RequestContext<RoleServer>) -> Option<Incoming> {
        self.service.observer().tracer()?;
        let mut incoming = ctx
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Authenticated>())
            .and_then(|a| a.trace.clone())
            .unwrap_or_else(Incoming::now);
        if incoming.parent.is_none() {
            incoming.parent = ctx
                .meta
                .get_traceparent()
                .and_then(SpanContext::from_traceparent);
        }
        Some(incoming)
    }

    /// The span of one call of `tool` when traces are on (`tools/call <tool>`, or a REST
    /// call's `<METHOD> <route>`), a child of the client's span when it sent one.
    fn request_span(
        &self,
        front: Front,
        tool: &str,
        caller: &Caller,
        incoming: Option<&Incoming>,
    ) -> Option<Span> {
        let tracer = self.service.observer().tracer()?;
        let route = incoming.and_then(|i| i.route.as_ref());
        let name = match (front, route) {
            (Front::Rest, Some((method, route))) => format!("{method} {route}"),
            _ => format!("tools/call {tool}"),
        };
        let mut span = match incoming {
            Some(incoming) => tracer.start_request(name, incoming),
            None => tracer.start_request(name, &Incoming::now()),
        };
        match (front, route) {
            (Front::Rest, Some((method, route))) => {
                span.set("http.request.method", method.as_str());
                span.set("http.route", &**route);
            }
            _ => {
                span.set("rpc.system", "jsonrpc");
                span.set("rpc.method", "tools/call");
                span.set("mcp.method.name", "tools/call");
                span.set("gen_ai.tool.name", tool);
            }
        }
        span.set("tokenwarden.via", front.as_str());
        span.set("tokenwarden.tool", tool);
        match caller {
            Caller::Token(id) => span.set("tokenwarden.token_id", id.as_str()),
            Caller::Owner => span.set("tokenwarden.caller", "owner"),
        }
        Some(span)
    }
}

/// Runs the decision under a `decision` span when traced: allowed, or refused with its code.
fn decide<T>(
    trace: Option<&Handle>,
    decision: impl FnOnce() -> Result<T, Error>,
) -> Result<T, Error> {
    let Some(trace) = trace else {
        return decision();
    };
    let mut span = trace.child("decision", Kind::Internal);
    let verdict = decision();
    match &verdict {
        Ok(_) => {
            span.set("tokenwarden.decision", "allowed");
            span.outcome(Outcome::Ok);
        }
        Err(error) => {
            span.set("tokenwarden.decision", "refused");
            span.outcome(Outcome::Error(error.code.as_str()));
        }
    }
    verdict
}

/// The gateway tools `caller` may call now (§4 with B = the upstream's bucket).
fn visible_gateway_tools(
    service: &Service,
    gateway: &Gateway,
    caller: &Caller,
    ip: Option<IpAddr>,
) -> Vec<Arc<ExposedTool>> {
    let catalogue = gateway.catalogue();
    let asked: Vec<(crate::service::Tool<'_>, Option<&str>)> = catalogue
        .iter()
        .map(|t| (gateway_tool(t), Some(t.bucket.as_str())))
        .collect();
    let allowed = service.may_call_tools(caller, &asked, ip);
    catalogue
        .iter()
        .zip(allowed)
        .filter(|(_, allowed)| *allowed)
        .map(|(t, _)| Arc::clone(t))
        .collect()
}

fn gateway_tool(tool: &ExposedTool) -> crate::service::Tool<'_> {
    crate::service::Tool {
        name: &tool.name,
        read_only: tool.read_only,
    }
}

fn error_result(error: &Error) -> CallToolResult {
    CallToolResult::structured_error(json!({
        "error": { "code": error.code.as_str(), "message": error.message }
    }))
}

// Logging is deprecated by SEP-2577, but clients of the 2025 revisions still call
// logging/setLevel and the conformance suite checks it.
#[allow(deprecated)]
impl ServerHandler for TokenServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_logging()
                .build(),
        )
        .with_server_info(Implementation::new(
            "tokenwarden",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let has_cursor = request.is_some_and(|r| r.cursor.is_some());
        if let (Some(gateway), Some(deadline)) = (&self.gateway, self.upstreams_wait) {
            gateway.settled(deadline).await;
        }
        let (caller, ip, _) = self.caller(&context)?;
        self.list_tools_as(has_cursor, &caller, ip)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let who = self.caller(&context)?;
        let incoming = self.incoming(&context);
        let progress = context.meta.get_progress_token().map(|token| ProgressSink {
            peer: context.peer.clone(),
            token,
        });
        self.call_tool_as(
            request,
            who,
            progress,
            context.ct.child_token(),
            incoming.as_ref(),
        )
        .await
    }

    /// Tells this client session whenever the gateway's catalogue changes, until it ends.
    async fn on_initialized(&self, context: rmcp::service::NotificationContext<RoleServer>) {
        let Some(gateway) = &self.gateway else {
            return;
        };
        let mut changes = gateway.subscribe();
        changes.mark_unchanged();
        let peer = context.peer;
        // Ends with the session: rmcp offers no future for "transport closed", so the peer is
        // checked every few seconds; otherwise a closed session's forwarder would live until
        // the next catalogue change, and sessions opened and closed would pile up.
        tokio::spawn(async move {
            let mut poll = tokio::time::interval(SESSION_POLL);
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() || peer.notify_tool_list_changed().await.is_err() {
                            break;
                        }
                    }
                    _ = poll.tick() => {
                        if peer.is_transport_closed() {
                            break;
                        }
                    }
                }
            }
        });
    }

    /// 2026-07-28 clients have no session to be told in (no `initialize`, so no
    /// `on_initialized`): they open `subscriptions/listen`, and get
    /// `notifications/tools/list_changed` on it whenever the gateway's catalogue changes.
    fn accepted_subscription_filter(
        &self,
        _requested: &rmcp::model::SubscriptionFilter,
    ) -> Option<rmcp::model::SubscriptionFilter> {
        Some(
            rmcp::model::SubscriptionFilter::builder()
                .tools_list_changed()
                .build(),
        )
    }

    async fn listen(&self, context: rmcp::service::SubscriptionContext) -> Result<(), ErrorData> {
        let Some(gateway) = &self.gateway else {
            context.cancelled().await;
            return Ok(());
        };
        let mut changes = gateway.subscribe();
        changes.mark_unchanged();
        loop {
            tokio::select! {
                _ = context.cancelled() => return Ok(()),
                changed = changes.changed() => {
                    let notification = rmcp::model::ServerNotification::ToolListChangedNotification(
                        Default::default(),
                    );
                    if changed.is_err() || context.sink().send(notification).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Accepted so clients may set it; the server logs to stderr under its own filter and
    /// sends no log notifications.
    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        tracing::debug!(level = ?request.level, "client asked for log level");
        Ok(())
    }

    fn get_tool(&self, name: &str) -> Option<rmcp::model::Tool> {
        tools::definitions()
            .iter()
            .find(|t| t.name == name)
            .cloned()
    }
}

/// Runs a decision and the tool's work on this task when it only reads (`inline`), else on
/// the blocking pool: writes and flushes must stay off the async workers, and a hop to the
/// blocking pool costs a read-only call two thread hand-offs, more than its work.
///
/// Work on the blocking pool first takes a place among its lineage's (`Service::blocking_permit`)
/// and holds it until it ends, even if the request that started it is gone.
async fn run_service<T: Send + 'static>(
    (inline, service, caller): (bool, &Service, &Caller),
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ErrorData> {
    if inline {
        // As on the blocking pool, a panic becomes this call's internal error, not the task's.
        return std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
            .map_err(|_| ErrorData::internal_error("tool task failed: it panicked", None));
    }
    let permit = service.blocking_permit(caller).await;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
    .map_err(|e| ErrorData::internal_error(format!("tool task failed: {e}"), None))
}

/// `list_buckets` (SPEC §5): the upstreams `caller` holds (all for the owner and admin
/// tokens), each with its status and how many of its tools `caller` may call.
fn list_buckets(
    service: &Service,
    gateway: Option<&Gateway>,
    caller: &Caller,
    ip: Option<IpAddr>,
) -> Value {
    let Some(gateway) = gateway else {
        return json!({ "buckets": [] });
    };
    let visible = visible_gateway_tools(service, gateway, caller, ip);
    let buckets: Vec<Value> = gateway
        .buckets()
        .into_iter()
        .filter(|b| service.holds_bucket(caller, &b.name, ip))
        .map(|b| {
            let tools = visible.iter().filter(|t| t.bucket == b.name).count();
            let mut entry = json!({
                "name": b.name,
                "transport": b.transport,
                "status": b.status.as_str(),
                "tools": tools,
            });
            if let crate::gateway::Status::Unavailable(error) = &b.status {
                entry["error"] = json!(error);
            }
            entry
        })
        .collect();
    json!({ "buckets": buckets })
}

impl TokenServer {
    /// `tools/list` for `caller`: what it may call now, in one page (`has_cursor` is refused).
    pub fn list_tools_as(
        &self,
        has_cursor: bool,
        caller: &Caller,
        ip: Option<IpAddr>,
    ) -> Result<ListToolsResult, ErrorData> {
        // The whole list fits one page, so no cursor was ever issued: any cursor is invalid.
        if has_cursor {
            return Err(ErrorData::invalid_params(
                "invalid cursor: tools/list returns every tool in one page",
                None,
            ));
        }
        // Tokenwarden's own tools and the gateway's, decided together: one read of the
        // caller's chain, then the one decision per tool.
        let own = tools::definitions();
        let catalogue = self.gateway.as_ref().map(|g| g.catalogue());
        let gateway_tools: Vec<&Arc<ExposedTool>> =
            catalogue.iter().flat_map(|c| c.iter()).collect();
        let asked: Vec<(crate::service::Tool<'_>, Option<&str>)> = own
            .iter()
            .map(|t| {
                let tool = crate::service::Tool {
                    name: &t.name,
                    read_only: crate::service::is_read_only_tool(&t.name),
                };
                (tool, None)
            })
            .chain(
                gateway_tools
                    .iter()
                    .map(|t| (gateway_tool(t), Some(t.bucket.as_str()))),
            )
            .collect();
        let allowed = self.service.may_call_tools(caller, &asked, ip);
        let definitions = own
            .iter()
            .chain(gateway_tools.iter().map(|t| &t.definition));
        let tools = definitions
            .zip(allowed)
            .filter(|(_, allowed)| *allowed)
            .map(|(definition, _)| definition.clone())
            .collect();
        // What a token may call differs per caller: never let a cache share the list.
        Ok(ListToolsResult::with_all_items(tools).with_cache_scope(CacheScope::Private))
    }

    /// `tools/call` for `who`: tokenwarden's own tools, or a gateway tool forwarded with
    /// `progress` and ended early when `cancel` fires.
    /// `incoming` is the request's trace context (when traces are on).
    pub async fn call_tool_as(
        &self,
        request: CallToolRequestParams,
        (caller, ip, secret): (Caller, Option<IpAddr>, Option<Presented>),
        progress: Option<ProgressSink>,
        cancel: CancellationToken,
        incoming: Option<&Incoming>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        if let Some((gateway, tool)) = self.upstream_tool(&name) {
            return self
                .call_gateway_tool(
                    gateway,
                    tool,
                    (caller, ip, secret),
                    request,
                    (progress, cancel, incoming),
                )
                .await;
        }
        if !tools::exists(&name) {
            return Err(ErrorData::invalid_params(
                format!("unknown tool {}", truncate_for_message(&name)),
                None,
            ));
        }
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        let result = match self
            .run_own_tool(&name, arguments, (caller, ip), Front::Mcp, incoming)
            .await?
        {
            Ok(value) => CallToolResult::structured(value),
            Err(error) => error_result(&error),
        };
        Ok(result.into())
    }

    /// One of tokenwarden's own tools for `caller`: the decision (the tool's name against the
    /// caller's allowlist, counting the use), then the tool. The REST API (`rest`) calls this
    /// too, so an endpoint is its tool. The outer error is a failure to run at all. `incoming`
    /// is the request's trace context (when traces are on).
    pub async fn run_own_tool(
        &self,
        name: &str,
        arguments: Value,
        (caller, ip): (Caller, Option<IpAddr>),
        front: Front,
        incoming: Option<&Incoming>,
    ) -> Result<Result<Value, Error>, ErrorData> {
        let span = self.request_span(front, name, &caller, incoming);
        let observed = self.service.observer().enabled();
        if !observed && span.is_none() {
            return self
                .run_own_tool_unobserved(name, arguments, (caller, ip), None)
                .await;
        }
        let started = std::time::Instant::now();
        let who = caller.clone();
        let outcome = self
            .run_own_tool_unobserved(
                name,
                arguments,
                (caller, ip),
                span.as_ref().map(Span::handle),
            )
            .await;
        let ended = match &outcome {
            Ok(Ok(_)) => Outcome::Ok,
            Ok(Err(error)) => Outcome::Error(error.code.as_str()),
            Err(_) => Outcome::Error(ErrorCode::Internal.as_str()),
        };
        if observed {
            self.observe(&who, (name, None), (ended, None), started, front);
        }
        if let Some(mut span) = span {
            span.outcome(ended);
        }
        outcome
    }

    /// Reports one call to the observer (the access log, the metrics).
    fn observe(
        &self,
        caller: &Caller,
        (tool, bucket): (&str, Option<&str>),
        (outcome, upstream_is_error): (Outcome, Option<bool>),
        started: std::time::Instant,
        front: Front,
    ) {
        let token = match caller {
            Caller::Token(id) => Some(id),
            Caller::Owner => None,
        };
        self.service.observer().record(&Access {
            at: crate::timestamp::Timestamp::now(),
            token,
            // Found by the access log's writer, off the request path.
            lineage: None,
            tool: Some(tool),
            bucket,
            outcome,
            duration: started.elapsed(),
            upstream_is_error,
            front,
        });
    }

    /// `trace` starts the `decision` span, when traced.
    async fn run_own_tool_unobserved(
        &self,
        name: &str,
        arguments: Value,
        (caller, ip): (Caller, Option<IpAddr>),
        trace: Option<Handle>,
    ) -> Result<Result<Value, Error>, ErrorData> {
        if name == "verify_token"
            && let Some(gateway) = self.gateway.clone()
        {
            // The same decision, knowing gateway tools' read-only flags and buckets.
            let service = Arc::clone(&self.service);
            let inline = !service.decision_may_flush(&caller);
            let who = caller.clone();
            return run_service((inline, &self.service, &who), move || {
                decide(trace.as_ref(), || {
                    service.authorize_call(&caller, "verify_token", None, ip)
                })?;
                let req = serde_json::from_value(arguments).map_err(|e| {
                    Error::invalid(format!("invalid arguments for verify_token: {e}"))
                })?;
                let catalogue = gateway.catalogue();
                let lookup =
                    |tool: &str| catalogue.get(tool).map(|t| (t.read_only, t.bucket.clone()));
                let verified = service.verify_token_with(&caller, req, &lookup)?;
                Ok::<_, Error>(serde_json::to_value(verified).expect("results serialise"))
            })
            .await;
        }
        if name == "list_buckets" {
            let service = Arc::clone(&self.service);
            let gateway = self.gateway.clone();
            // Not inline: it runs the decision for every gateway tool.
            let who = caller.clone();
            return run_service((false, &self.service, &who), move || {
                decide(trace.as_ref(), || {
                    service.authorize_call(&caller, "list_buckets", None, ip)
                })?;
                Ok::<_, Error>(list_buckets(&service, gateway.as_deref(), &caller, ip))
            })
            .await;
        }
        let service = Arc::clone(&self.service);
        let name = name.to_owned();
        let inline = tools::point_reads_only(&name) && !service.decision_may_flush(&caller);
        let who = caller.clone();
        let outcome = run_service((inline, &self.service, &who), move || {
            decide(trace.as_ref(), || {
                service.authorize_call(&caller, &name, None, ip)
            })?;
            tools::dispatch(&service, &caller, &name, arguments)
        })
        .await?;
        if let Err(error) = &outcome {
            if error.code == crate::error::ErrorCode::Internal {
                tracing::error!(error = %error.message, "tool call failed");
            } else {
                tracing::debug!(code = error.code.as_str(), "tool call refused or failed");
            }
        }
        Ok(outcome)
    }

    /// A gateway tool: decide through the one path (counting the use), then forward. Nothing
    /// reaches the upstream before the decision, and the caller's secret never does.
    async fn call_gateway_tool(
        &self,
        gateway: &Arc<Gateway>,
        tool: Arc<ExposedTool>,
        (caller, ip, secret): (Caller, Option<IpAddr>, Option<Presented>),
        request: CallToolRequestParams,
        (progress, cancel, incoming): (Option<ProgressSink>, CancellationToken, Option<&Incoming>),
    ) -> Result<CallToolResponse, ErrorData> {
        let started = std::time::Instant::now();
        let mut ended = (Outcome::Error(ErrorCode::Internal.as_str()), None);
        let who = caller.clone();
        let mut span = self.request_span(Front::Mcp, &tool.name, &who, incoming);
        let answer = self
            .forward_gateway_tool(
                gateway,
                Arc::clone(&tool),
                (caller, ip, secret),
                request,
                (progress, cancel, span.as_ref().map(Span::handle)),
                &mut ended,
            )
            .await;
        if self.service.observer().enabled() {
            let names = (tool.name.as_str(), Some(tool.bucket.as_str()));
            self.observe(&who, names, ended, started, Front::Mcp);
        }
        if let Some(span) = &mut span {
            span.set("tokenwarden.bucket", tool.bucket.as_str());
            upstream_ended(span, ended);
        }
        answer
    }

    /// [`Self::call_gateway_tool`]'s work; `ended` is set to how it ended. `trace` starts the
    /// `decision` and `upstream` spans, when traced.
    async fn forward_gateway_tool(
        &self,
        gateway: &Arc<Gateway>,
        tool: Arc<ExposedTool>,
        (caller, ip, secret): (Caller, Option<IpAddr>, Option<Presented>),
        request: CallToolRequestParams,
        (progress, cancel, trace): (Option<ProgressSink>, CancellationToken, Option<Handle>),
        ended: &mut (Outcome, Option<bool>),
    ) -> Result<CallToolResponse, ErrorData> {
        let service = Arc::clone(&self.service);
        let decided = {
            let tool = Arc::clone(&tool);
            let caller = caller.clone();
            let inline = !service.decision_may_flush(&caller);
            let who = caller.clone();
            let trace = trace.clone();
            run_service((inline, &self.service, &who), move || {
                decide(trace.as_ref(), || {
                    let asked = gateway_tool(&tool);
                    service.authorize_tool_call(&caller, asked, Some(&tool.bucket), ip)
                })
            })
            .await?
        };
        if let Err(error) = decided {
            *ended = (Outcome::Error(error.code.as_str()), None);
            tracing::debug!(code = error.code.as_str(), tool = %tool.name, "gateway call refused");
            return Ok(error_result(&error).into());
        }

        // `cancel` fires on the client's notifications/cancelled; the standing watcher, polled
        // with the call on this task, fires it when the caller's secret stops holding.
        let standing = async {
            let Caller::Token(id) = &caller else {
                return std::future::pending().await;
            };
            // The decision just checked standing: the first re-check is one period away.
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + CALL_RECHECK, CALL_RECHECK);
            loop {
                tick.tick().await;
                // The call belongs to the secret that made it, as a stream does: the end of a
                // rotation's grace ends it too.
                let standing = match &secret {
                    Some(secret) => self.service.still_holds(secret.as_str(), id, ip),
                    None => self
                        .service
                        .check_standing(id, ip)
                        .map_err(|f| f.to_string()),
                };
                if let Err(failure) = standing {
                    return failure;
                }
            }
        };
        // The call counts against its lineage's share of the upstream (minting children does
        // not multiply it).
        let lineage: crate::gateway::Lineage = match &caller {
            Caller::Token(id) => {
                let root = self.service.lineage_root(id).unwrap_or_else(|| id.clone());
                Arc::from(root.as_str())
            }
            _ => Arc::from("owner"),
        };
        // The upstream call's span; the upstream is told its context (`traceparent`).
        let mut upstream = trace.map(|trace| {
            let mut span = trace.child(format!("upstream {}", tool.bucket), Kind::Client);
            span.set("mcp.method.name", "tools/call");
            span.set("tokenwarden.bucket", tool.bucket.as_str());
            span.set("tokenwarden.upstream.tool", tool.upstream_name.as_str());
            span
        });
        let context = upstream.as_ref().map(Span::context);
        let call = gateway.call(
            &tool,
            request.arguments,
            (progress, lineage),
            &cancel,
            context,
        );
        tokio::pin!(call, standing);
        let mut lost_standing = None;
        let outcome = tokio::select! {
            biased;
            outcome = &mut call => outcome,
            failure = &mut standing => {
                lost_standing = Some(failure);
                cancel.cancel();
                call.await
            }
        };
        let (answer, end) = answer_of(&tool, outcome, lost_standing);
        if let Some(span) = &mut upstream {
            upstream_ended(span, end);
        }
        *ended = end;
        answer
    }
}

/// How a forwarded call ended, on its span: `tokenwarden.outcome`, and for an answered call the
/// upstream's `isError` (an error status, `error.type` `tool_error`, as OpenTelemetry's MCP
/// conventions have it; the outcome stays `ok`, as in the access log).
fn upstream_ended(span: &mut Span, (outcome, is_error): (Outcome, Option<bool>)) {
    span.outcome(outcome);
    if let Some(is_error) = is_error {
        span.set("tokenwarden.upstream.is_error", is_error);
        if is_error {
            span.fail("tool_error");
        }
    }
}

/// A forwarded call's answer to the client, and how it ended (the outcome and the upstream's
/// `isError`).
fn answer_of(
    tool: &ExposedTool,
    outcome: Result<CallToolResult, CallFailure>,
    lost_standing: Option<String>,
) -> (Result<CallToolResponse, ErrorData>, (Outcome, Option<bool>)) {
    let failure = match outcome {
        Ok(mut result) => {
            // `resultType` belongs to the protocol this session speaks, not to the
            // upstream's answer: an upstream on an older revision leaves it out, and
            // clients of the newer ones refuse a result without it.
            if result.result_type.is_none() {
                result.result_type = Some(rmcp::model::ResultType::COMPLETE);
            }
            let is_error = result.is_error.unwrap_or(false);
            return (Ok(result.into()), (Outcome::Ok, Some(is_error)));
        }
        Err(CallFailure::Upstream(error)) => {
            return (Err(error), (Outcome::Error("upstream_error"), None));
        }
        Err(failure) => failure,
    };
    let error = match failure {
        CallFailure::Unavailable(message) => Error::new(ErrorCode::UpstreamUnavailable, message),
        CallFailure::Timeout { after, queued } => Error::new(
            ErrorCode::UpstreamTimeout,
            format!(
                "{} did not answer within {}s ({:.1}s of it waiting for a free call slot \
                     on the upstream); the upstream call was cancelled",
                tool.name,
                after.as_secs_f64(),
                queued.as_secs_f64()
            ),
        ),
        CallFailure::Busy(message) => Error::new(ErrorCode::RateLimited, message),
        CallFailure::TooLarge(message) => Error::new(
            ErrorCode::UpstreamResultTooLarge,
            format!("{}: {message}", tool.name),
        ),
        CallFailure::Cancelled => match lost_standing {
            Some(why) => Error::forbidden(format!("{} was cancelled: {why}", tool.name)),
            None => Error::new(
                ErrorCode::Internal,
                format!("{} was cancelled by the client", tool.name),
            ),
        },
        CallFailure::Upstream(_) => unreachable!("returned above"),
    };
    tracing::info!(tool = %tool.name, code = error.code.as_str(), "gateway call failed");
    let ended = (Outcome::Error(error.code.as_str()), None);
    (Ok(error_result(&error).into()), ended)
}
