//! Streamable HTTP: rmcp's MCP service at `/mcp` behind the bearer guard, plus `/healthz`.
//!
//! The guard runs on every request (POST, GET, DELETE) before rmcp sees it: it authenticates
//! the bearer with the service (no cache that could serve a stale "allowed": hot records are
//! kept current by the store on every write), binds each MCP session to the token that opened
//! it, and closes response streams of a token that stops being valid. Host and Origin are
//! checked by rmcp, configured here; the body limit (413) too.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::mcp::{Authenticated, TokenServer};
use crate::rules::cidr::canonical_ip;
use crate::secret::TokenId;
use crate::service::Service;

pub const MAX_BODY_BYTES: usize = 1 << 20;
const SESSION_HEADER: &str = "mcp-session-id";
/// How often an open response stream re-checks its token.
const STREAM_RECHECK: Duration = Duration::from_millis(250);
/// Session bindings unused this long are forgotten (rmcp closes idle sessions after 300 s).
const SESSION_BINDING_TTL: Duration = Duration::from_secs(3600);
/// Stale bindings are swept when a new session opens and the table is at least this big.
const PRUNE_SESSIONS_ABOVE: usize = 1024;

#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Extra `Host` names accepted besides the loopback names.
    pub allowed_hosts: Vec<String>,
    /// Extra browser origins accepted besides loopback origins.
    pub allowed_origins: Vec<String>,
    /// Upstream MCP servers fronted as buckets (`serve --upstreams`).
    pub gateway: Option<Arc<crate::gateway::Gateway>>,
}

/// Which token opened each MCP session, so that no other token can use it.
#[derive(Default)]
struct SessionBindings {
    by_session: Mutex<HashMap<String, (TokenId, Instant)>>,
}

impl SessionBindings {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (TokenId, Instant)>> {
        self.by_session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err` with the owner's id when the session belongs to another token.
    fn check(&self, session: &str, token: &TokenId) -> Result<(), ()> {
        match self.lock().get_mut(session) {
            Some((owner, seen)) if owner == token => {
                *seen = Instant::now();
                Ok(())
            }
            Some(_) => Err(()),
            None => Ok(()),
        }
    }

    fn bind(&self, session: &str, token: &TokenId) {
        let mut map = self.lock();
        let now = Instant::now();
        if map.len() >= PRUNE_SESSIONS_ABOVE {
            map.retain(|_, (_, seen)| now.duration_since(*seen) < SESSION_BINDING_TTL);
        }
        map.entry(session.to_owned())
            .or_insert((token.clone(), now));
    }

    fn unbind(&self, session: &str) {
        self.lock().remove(session);
    }
}

#[derive(Clone)]
struct GuardState {
    service: Arc<Service>,
    sessions: Arc<SessionBindings>,
}

fn loopback_hosts() -> Vec<String> {
    ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec()
}

fn loopback_origins() -> Vec<String> {
    let mut origins = Vec::new();
    for scheme in ["http", "https"] {
        for host in ["localhost", "127.0.0.1", "[::1]"] {
            origins.push(format!("{scheme}://{host}:*"));
        }
    }
    origins
}

/// The whole HTTP application: `/mcp` (guarded) and `/healthz` (open).
pub fn router(service: Arc<Service>, config: &HttpConfig, shutdown: CancellationToken) -> Router {
    let state = GuardState {
        service: Arc::clone(&service),
        sessions: Arc::default(),
    };
    Router::new()
        .nest_service("/mcp", mcp_service(service, config, shutdown))
        .layer(middleware::from_fn_with_state(state, guard))
        .route("/healthz", get(healthz))
}

/// The same application with the bearer guard replaced by a fixed caller, for the benchmark
/// that measures the guard's cost. Never built into the product: it needs the
/// `bench-internals` feature.
#[cfg(feature = "bench-internals")]
pub fn unguarded_router(
    service: Arc<Service>,
    config: &HttpConfig,
    shutdown: CancellationToken,
    as_token: TokenId,
) -> Router {
    let caller = Authenticated {
        token_id: as_token,
        client_ip: IpAddr::from([127, 0, 0, 1]),
    };
    Router::new()
        .nest_service("/mcp", mcp_service(service, config, shutdown))
        .layer(middleware::from_fn(
            move |mut request: Request, next: Next| {
                request.extensions_mut().insert(caller.clone());
                next.run(request)
            },
        ))
        .route("/healthz", get(healthz))
}

fn mcp_service(
    service: Arc<Service>,
    config: &HttpConfig,
    shutdown: CancellationToken,
) -> StreamableHttpService<TokenServer, LocalSessionManager> {
    let mcp_config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(
            loopback_hosts()
                .into_iter()
                .chain(config.allowed_hosts.clone()),
        )
        .with_allowed_origins(
            loopback_origins()
                .into_iter()
                .chain(config.allowed_origins.clone()),
        )
        .with_max_request_body_bytes(MAX_BODY_BYTES)
        .with_cancellation_token(shutdown);
    let gateway = config.gateway.clone();
    StreamableHttpService::new(
        move || Ok(TokenServer::for_http(Arc::clone(&service)).with_gateway(gateway.clone())),
        Arc::new(LocalSessionManager::default()),
        mcp_config,
    )
}

/// Serves `app` on `listener` until `shutdown` is cancelled. Connections get TCP_NODELAY (a
/// small JSON-RPC reply must not wait ~40 ms for Nagle and delayed ACKs) and carry the peer's
/// address, which the guard checks against `allowed_ips`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

async fn healthz() -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{\"status\":\"ok\"}",
    )
}

fn unauthorized(description: &str) -> Response {
    // Header values must be visible ASCII; the JSON body keeps the exact text.
    let escaped: String = description
        .chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .collect();
    let challenge = format!(
        "Bearer realm=\"tokenwarden\", error=\"invalid_token\", error_description=\"{escaped}\""
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

/// The bearer secret of a request, or why there is none.
fn bearer(headers: &HeaderMap) -> Result<&str, &'static str> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or("missing bearer token: send Authorization: Bearer <token>")?;
    let value = value
        .to_str()
        .map_err(|_| "malformed Authorization header: it must be ASCII")?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or("malformed Authorization header: expected Bearer <token>")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("unsupported authorization scheme: use Bearer");
    }
    Ok(token.trim())
}

async fn guard(
    State(state): State<GuardState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let client_ip = canonical_ip(peer.ip());
    let token_id = match bearer(request.headers()) {
        Err(description) => {
            tracing::debug!(%client_ip, "refused request: {description}");
            return unauthorized(description);
        }
        Ok(secret) => match state.service.authenticate(secret, Some(client_ip)) {
            Ok(id) => id,
            Err(failure) => {
                let description = failure.to_string();
                tracing::debug!(%client_ip, "refused request: {description}");
                return unauthorized(&description);
            }
        },
    };

    let session = request
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(session) = &session
        && state.sessions.check(session, &token_id).is_err()
    {
        tracing::debug!(token = %token_id, "refused request: session belongs to another token");
        return (
            StatusCode::FORBIDDEN,
            "Forbidden: this MCP session was opened with another token",
        )
            .into_response();
    }

    let method = request.method().clone();
    request.extensions_mut().insert(Authenticated {
        token_id: token_id.clone(),
        client_ip,
    });
    let response = next.run(request).await;

    if let Some(opened) = response
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        state.sessions.bind(opened, &token_id);
    }
    if method == Method::DELETE
        && response.status().is_success()
        && let Some(session) = &session
    {
        state.sessions.unbind(session);
    }
    // Long-lived streams are the standalone GET streams; a POST's stream ends with its reply.
    let is_stream = method == Method::GET
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
    if is_stream {
        close_when_token_stops(response, state.service, token_id, client_ip)
    } else {
        response
    }
}

/// Forwards a response stream until it ends or its token stops being valid (revoked, paused,
/// expired), checked every `STREAM_RECHECK`.
fn close_when_token_stops(
    response: Response,
    service: Arc<Service>,
    token: TokenId,
    client_ip: IpAddr,
) -> Response {
    let (parts, body) = response.into_parts();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, axum::Error>>(16);
    tokio::spawn(async move {
        let mut frames = body.into_data_stream();
        let mut recheck = tokio::time::interval(STREAM_RECHECK);
        loop {
            tokio::select! {
                frame = frames.next() => match frame {
                    Some(frame) => {
                        if tx.send(frame).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                _ = recheck.tick() => {
                    if let Err(failure) = service.check_standing(&token, Some(client_ip)) {
                        tracing::info!(%token, "closing response stream: {failure}");
                        break;
                    }
                }
                _ = tx.closed() => break,
            }
        }
    });
    Response::from_parts(
        parts,
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
}
