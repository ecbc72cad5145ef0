//! Streamable HTTP: rmcp's MCP service at `/mcp` behind the bearer guard, plus `/healthz`.
//!
//! Layers, outermost first: the accept loop (`listener`: TCP_NODELAY, connection bounds and
//! deadlines), browser origins (`cors`: 403 for a foreign `Origin`, CORS answers for allowed
//! ones), then for `/mcp` only the bearer guard (`guard`: authentication on every request,
//! session ownership and bounds (`sessions`), JSON-RPC errors for malformed bodies, streams
//! closed when their secret stops authenticating), then rmcp; around the guard, `reply` sends a
//! ready POST reply in one write. The OAuth routes (`oauth`:
//! discovery documents, registration, consent, token, revocation) are served without a token;
//! the REST API (`rest`, with `/metrics` for admin tokens) checks its own bearer.
//! Any other path answers 404.

mod cors;
mod express;
mod guard;
mod inflight;
mod listener;
mod reply;
mod repoll;
mod sessions;
mod streams;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::local::{LocalSessionManager, SessionConfig};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

pub use cors::AllowedOrigin;
pub use inflight::{InFlight, REFUSAL_DELAY, turned};
pub use listener::{ConnectionLimits, Connections, serve};
pub use sessions::SessionLimits;

use crate::mcp::TokenServer;
use crate::oauth::{OAuth, OAuthConfig};
use crate::service::{Caller, Service};
use guard::GuardState;

pub const MAX_BODY_BYTES: usize = 1 << 20;
/// A request's body must arrive within this once its headers have: a connection with a
/// request in flight is never evicted, so a stalled body must not hold one for long.
pub(super) const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// Why a request body could not be read.
pub(crate) enum BodyFault {
    TooLarge,
    Late,
}

/// Reads a request body of at most `limit` bytes within [`BODY_DEADLINE`]; every endpoint
/// that reads a body (the `/mcp` guard, OAuth) reads it here.
pub(crate) async fn read_body(
    body: axum::body::Body,
    limit: usize,
) -> Result<axum::body::Bytes, BodyFault> {
    read_body_within(body, limit, BODY_DEADLINE).await
}

/// [`read_body`] with another deadline.
pub(crate) async fn read_body_within(
    body: axum::body::Body,
    limit: usize,
    deadline: Duration,
) -> Result<axum::body::Bytes, BodyFault> {
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(BodyFault::TooLarge),
        Err(_) => Err(BodyFault::Late),
    }
}

/// Reads and drops a body the answer does not need (a refused request's), within `limit`
/// bytes and `deadline`, keeping at most one chunk at a time: a refusal must not buffer a
/// megabyte per connection for clients without a token.
pub(crate) async fn drain_body_within(
    body: axum::body::Body,
    limit: usize,
    deadline: Duration,
) -> Result<(), BodyFault> {
    use http_body_util::BodyExt;
    let drain = async {
        let mut body = body;
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Err(BodyFault::TooLarge);
            };
            if let Some(data) = frame.data_ref() {
                seen = seen.saturating_add(data.len());
                if seen > limit {
                    return Err(BodyFault::TooLarge);
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(deadline, drain)
        .await
        .unwrap_or(Err(BodyFault::Late))
}

/// The bearer secret of a request, or why there is none (`None`: no credentials at all), for
/// the REST API's check (`rest::auth`), which answers like the `/mcp` guard.
pub(crate) fn bearer_of(headers: &axum::http::HeaderMap) -> Result<&str, Option<&'static str>> {
    guard::bearer_of(headers)
}

/// A 401 with the `/mcp` guard's RFC 6750 challenge.
pub(crate) fn challenge(
    resource_metadata: &str,
    description: Option<&str>,
) -> axum::response::Response {
    guard::unauthorized(resource_metadata, description)
}

/// Spares the request's connection from eviction while the returned value lives (see
/// `listener`): for a request counted against its lineage.
pub(crate) fn raise_shield(
    request: &axum::extract::Request,
    lineage: &crate::secret::TokenId,
) -> Option<listener::Raised> {
    request
        .extensions()
        .get::<listener::Shield>()
        .map(|shield| shield.raise(lineage))
}

/// Marks the request's connection as refused: it goes first when room is needed.
pub(crate) fn doom(request: &axum::extract::Request) {
    if let Some(shield) = request.extensions().get::<listener::Shield>() {
        shield.doom();
    }
}

/// `response` with its body holding the request's ticket (and shield) until it ends.
pub(crate) fn hold_ticket(
    response: axum::response::Response,
    ticket: (inflight::Ticket, Option<listener::Raised>),
) -> axum::response::Response {
    response.map(|body| inflight::hold(body, ticket))
}

/// The answer to a body that did not arrive in time: 408, and the connection closes.
pub(crate) fn body_too_late() -> axum::response::Response {
    let mut response = (
        StatusCode::REQUEST_TIMEOUT,
        "Request Timeout: the body must arrive within 10 seconds",
    )
        .into_response();
    response.headers_mut().insert(
        header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}
/// How often an open response stream re-checks its secret.
const STREAM_RECHECK: Duration = Duration::from_millis(250);
/// Sessions with no request for this long are closed.
const SESSION_IDLE: Duration = Duration::from_secs(600);

#[derive(Clone, Debug, Default)]
pub struct HttpConfig {
    /// Extra `Host` names accepted besides the loopback names.
    pub allowed_hosts: Vec<String>,
    /// Extra browser origins accepted besides loopback origins.
    pub allowed_origins: Vec<String>,
    pub sessions: SessionLimits,
    /// The listener's bound on open connections (`serve --max-connections`), of which open
    /// `GET` streams may hold at most half.
    pub max_connections: usize,
    /// Requests one lineage may have in flight (`serve --max-inflight-per-token`); at most
    /// half of `max_connections` in any case.
    pub max_inflight_per_token: usize,
    /// Upstream MCP servers fronted as buckets (`serve --upstreams`).
    pub gateway: Option<Arc<crate::gateway::Gateway>>,
    /// The OAuth authorization server: public URL, token lifetime, registration bounds.
    pub oauth: OAuthConfig,
    /// The listener's connection table (given to [`serve`] too), counted by the metrics.
    pub connections: Connections,
    /// The metrics: `GET /metrics` for admin tokens, and what they read of this
    /// server (sessions, connections, streams).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// What the metrics read of the HTTP server when scraped.
struct OpenCounts {
    sessions: Arc<sessions::Sessions>,
    streams: Arc<streams::Streams>,
    connections: Connections,
}

impl crate::metrics::OpenCounts for OpenCounts {
    fn sessions(&self) -> usize {
        self.sessions.live_blocking()
    }

    fn connections(&self) -> usize {
        self.connections.open()
    }

    fn streams(&self) -> usize {
        self.streams.count()
    }
}

fn loopback_hosts() -> Vec<String> {
    ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec()
}

/// The whole HTTP application: `/mcp` (guarded), `/healthz` and the OAuth routes (open), 404
/// elsewhere. The public URL's host and origin are accepted like the loopback ones: clients
/// reach the server under that name.
pub fn router(
    service: Arc<Service>,
    config: &HttpConfig,
    shutdown: CancellationToken,
) -> Result<Router, String> {
    let mut allowed_origins = config.allowed_origins.clone();
    allowed_origins.push(config.oauth.origin());
    let origins = Arc::new(cors::allowed_origins(&allowed_origins)?);
    let manager = Arc::new(session_manager());
    let console = Arc::new(crate::console::Sessions::new(&config.oauth.public_url));
    let oauth = Arc::new(
        OAuth::new(Arc::clone(&service), config.oauth.clone())?.with_console(
            crate::oauth::ConsoleLink {
                sessions: Arc::clone(&console),
                gateway: config.gateway.clone(),
            },
        ),
    );
    let inflight = Arc::new(inflight::InFlight::new(
        config.max_inflight_per_token,
        config.max_connections,
    ));
    let successions = Arc::clone(&oauth);
    let step_up_server =
        TokenServer::for_http(Arc::clone(&service)).with_gateway(config.gateway.clone());
    let state = GuardState {
        service: Arc::clone(&service),
        sessions: Arc::new(sessions::Sessions::new(
            Arc::clone(&manager),
            config.sessions,
        )),
        resource_metadata: config.oauth.resource_metadata_url().into(),
        succeeds: Arc::new(move |earlier, current| successions.succeeds(earlier, current)),
        streams: Arc::new(streams::Streams::new(config.max_connections)),
        inflight: Arc::clone(&inflight),
        step_up: Arc::new(move |token, tool, ip| {
            step_up_server.step_up_scope(&Caller::Token(token.clone()), tool, Some(ip))
        }),
    };
    if let Some(metrics) = &config.metrics {
        metrics.watch_http(Arc::new(OpenCounts {
            sessions: Arc::clone(&state.sessions),
            streams: Arc::clone(&state.streams),
            connections: config.connections.clone(),
        }));
    }
    // The REST API: the same tools (with the gateway, for `verify` and `buckets`), the same
    // authentication, the same bound on requests in flight; `/metrics` beside it.
    let rest = crate::rest::Rest::new(
        TokenServer::for_http(Arc::clone(&service)).with_gateway(config.gateway.clone()),
        Arc::clone(&service),
    )
    .with_metrics(config.metrics.clone());
    let rest_auth = crate::rest::RestAuth {
        service: Arc::clone(&service),
        resource_metadata: config.oauth.resource_metadata_url().into(),
        inflight,
        console: Arc::clone(&console),
    };
    let console = crate::console::Console {
        service: Arc::clone(&service),
        sessions: console,
    };
    let express = express_lane(&service, &manager, config, &shutdown);
    Ok(Router::new()
        .route_service("/mcp", mcp_service(service, manager, config, shutdown))
        .route_layer(middleware::from_fn_with_state(express, express::express))
        .route_layer(middleware::from_fn_with_state(state, guard::guard))
        // Outside the guard: the guard has recorded a new session before a reply is held.
        .route_layer(middleware::from_fn(reply::whole_replies))
        .route("/healthz", get(healthz))
        .merge(crate::oauth::routes(oauth))
        .merge(crate::rest::routes(rest, rest_auth))
        .merge(crate::console::routes(console))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(origins, cors::cors)))
}

/// The same application with the bearer guard replaced by a fixed caller, for the benchmark
/// that measures the guard's cost (everything else as in [`router`]). Never built into the
/// product: it needs the `bench-internals` feature.
#[cfg(feature = "bench-internals")]
pub fn unguarded_router(
    service: Arc<Service>,
    config: &HttpConfig,
    shutdown: CancellationToken,
    as_token: crate::secret::TokenId,
) -> Result<Router, String> {
    use axum::extract::Request;
    use axum::middleware::Next;
    let origins = Arc::new(cors::allowed_origins(&config.allowed_origins)?);
    let caller = crate::mcp::Authenticated {
        token_id: as_token,
        client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
        secret: None,
        trace: None,
    };
    let manager = Arc::new(session_manager());
    let express = express_lane(&service, &manager, config, &shutdown);
    Ok(Router::new()
        .route_service("/mcp", mcp_service(service, manager, config, shutdown))
        .route_layer(middleware::from_fn_with_state(express, express::express))
        .route_layer(middleware::from_fn(reply::whole_replies))
        .route_layer(middleware::from_fn(
            move |mut request: Request, next: Next| {
                request.extensions_mut().insert(caller.clone());
                next.run(request)
            },
        ))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(origins, cors::cors)))
}

fn session_manager() -> LocalSessionManager {
    let mut manager = LocalSessionManager::default();
    let mut config = SessionConfig::default();
    config.keep_alive = Some(SESSION_IDLE);
    // No priming events: clients before 2025-11-25 read their empty data as a parse error.
    config.sse_retry = None;
    manager.session_config = config;
    manager
}

/// The `Host` names rmcp accepts: the loopback names, `--allowed-host`s and the public URL's.
fn allowed_hosts(config: &HttpConfig) -> Vec<String> {
    loopback_hosts()
        .into_iter()
        .chain(config.allowed_hosts.clone())
        .chain(config.oauth.host())
        .collect()
}

fn express_lane(
    service: &Arc<Service>,
    manager: &Arc<LocalSessionManager>,
    config: &HttpConfig,
    shutdown: &CancellationToken,
) -> Arc<express::Express> {
    let server = TokenServer::for_http(Arc::clone(service)).with_gateway(config.gateway.clone());
    Arc::new(express::Express::new(
        server,
        Arc::clone(manager),
        &allowed_hosts(config),
        shutdown.clone(),
    ))
}

/// rmcp's service behind an `Arc`. Axum's router and each `from_fn` layer clone the service
/// beneath them for every request, and rmcp's own clone copies its whole configuration (its
/// host list included), although requests the express lane answers never reach it.
#[derive(Clone)]
struct Mcp(Arc<StreamableHttpService<TokenServer, LocalSessionManager>>);

type McpResponse = axum::http::Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>;

impl tower::Service<axum::extract::Request> for Mcp {
    type Response = McpResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<McpResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        let service = Arc::clone(&self.0);
        Box::pin(async move { Ok(service.handle(request).await) })
    }
}

fn mcp_service(
    service: Arc<Service>,
    manager: Arc<LocalSessionManager>,
    config: &HttpConfig,
    shutdown: CancellationToken,
) -> Mcp {
    // Origins are checked (and answered with CORS) in front of the guard; rmcp checks Host.
    let mcp_config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(allowed_hosts(config))
        .disable_allowed_origins()
        .with_sse_retry(None)
        .with_json_response(true)
        .with_max_request_body_bytes(MAX_BODY_BYTES)
        .with_cancellation_token(shutdown);
    let gateway = config.gateway.clone();
    Mcp(Arc::new(StreamableHttpService::new(
        move || Ok(TokenServer::for_http(Arc::clone(&service)).with_gateway(gateway.clone())),
        manager,
        mcp_config,
    )))
}

async fn healthz() -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{\"status\":\"ok\"}",
    )
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, "Not Found")
}
