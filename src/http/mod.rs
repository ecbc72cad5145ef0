//! Streamable HTTP: rmcp's MCP service at `/mcp` behind the bearer guard, plus `/healthz`.
//!
//! Layers, outermost first: the accept loop (`listener`: TCP_NODELAY, connection bounds and
//! deadlines), browser origins (`cors`: 403 for a foreign `Origin`, CORS answers for allowed
//! ones), then for `/mcp` only the bearer guard (`guard`: authentication on every request,
//! session ownership and bounds (`sessions`), JSON-RPC errors for malformed bodies, streams
//! closed when their secret stops authenticating), then rmcp. The OAuth routes (`oauth`:
//! discovery documents, registration, consent, token, revocation) are served without a token.
//! Any other path answers 404.

mod cors;
mod guard;
mod listener;
mod sessions;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::local::{LocalSessionManager, SessionConfig};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

pub use cors::AllowedOrigin;
pub use listener::{ConnectionLimits, serve};
pub use sessions::SessionLimits;

use crate::mcp::TokenServer;
use crate::oauth::{OAuth, OAuthConfig};
use crate::service::Service;
use guard::GuardState;

pub const MAX_BODY_BYTES: usize = 1 << 20;
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
    /// Upstream MCP servers fronted as buckets (`serve --upstreams`).
    pub gateway: Option<Arc<crate::gateway::Gateway>>,
    /// The OAuth authorization server: public URL, token lifetime, registration bounds.
    pub oauth: OAuthConfig,
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
    let oauth = Arc::new(OAuth::new(Arc::clone(&service), config.oauth.clone())?);
    let successions = Arc::clone(&oauth);
    let state = GuardState {
        service: Arc::clone(&service),
        sessions: Arc::new(sessions::Sessions::new(
            Arc::clone(&manager),
            config.sessions,
        )),
        resource_metadata: config.oauth.resource_metadata_url().into(),
        succeeds: Arc::new(move |earlier, current| successions.succeeds(earlier, current)),
    };
    Ok(Router::new()
        .route_service("/mcp", mcp_service(service, manager, config, shutdown))
        .route_layer(middleware::from_fn_with_state(state, guard::guard))
        .route("/healthz", get(healthz))
        .merge(crate::oauth::routes(oauth))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(origins, cors::cors)))
}

/// The same application with the bearer guard replaced by a fixed caller, for the benchmark
/// that measures the guard's cost. Never built into the product: it needs the
/// `bench-internals` feature.
#[cfg(feature = "bench-internals")]
pub fn unguarded_router(
    service: Arc<Service>,
    config: &HttpConfig,
    shutdown: CancellationToken,
    as_token: crate::secret::TokenId,
) -> Router {
    use axum::extract::Request;
    use axum::middleware::Next;
    let caller = crate::mcp::Authenticated {
        token_id: as_token,
        client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
        secret: None,
    };
    Router::new()
        .route_service(
            "/mcp",
            mcp_service(service, Arc::new(session_manager()), config, shutdown),
        )
        .route_layer(middleware::from_fn(
            move |mut request: Request, next: Next| {
                request.extensions_mut().insert(caller.clone());
                next.run(request)
            },
        ))
        .route("/healthz", get(healthz))
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

fn mcp_service(
    service: Arc<Service>,
    manager: Arc<LocalSessionManager>,
    config: &HttpConfig,
    shutdown: CancellationToken,
) -> StreamableHttpService<TokenServer, LocalSessionManager> {
    // Origins are checked (and answered with CORS) in front of the guard; rmcp checks Host.
    let mcp_config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(
            loopback_hosts()
                .into_iter()
                .chain(config.allowed_hosts.clone())
                .chain(config.oauth.host()),
        )
        .disable_allowed_origins()
        .with_sse_retry(None)
        .with_json_response(true)
        .with_max_request_body_bytes(MAX_BODY_BYTES)
        .with_cancellation_token(shutdown);
    let gateway = config.gateway.clone();
    StreamableHttpService::new(
        move || Ok(TokenServer::for_http(Arc::clone(&service)).with_gateway(gateway.clone())),
        manager,
        mcp_config,
    )
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
