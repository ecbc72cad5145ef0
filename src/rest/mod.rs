//! The REST API under `/v1` (SPEC §12): a thin adapter beside `mcp/`. Each endpoint **is** a
//! management tool: its handler turns the request into the tool's arguments and calls
//! [`TokenServer::run_own_tool`], the function `tools/call` runs (the same bearer check, the
//! decision with the tool's name, the same service and audit), then turns the result into
//! JSON, or the tool's error into `application/problem+json` (RFC 9457) carrying its `code`.
//! No rule lives here.
//!
//! - `auth`: the bearer check for `/v1` (the `/mcp` guard's authentication and its bound on
//!   requests in flight per lineage, without MCP's sessions).
//! - `problem`: errors as problem+json with the status codes of SPEC §12.
//! - `idempotency`: `Idempotency-Key` on `POST /v1/tokens`.
//! - `openapi`: the OpenAPI 3.1 document, built from the tools' own argument types.

mod auth;
mod idempotency;
pub mod openapi;
mod problem;

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value};

use crate::mcp::{Authenticated, TokenServer};
use crate::service::{Caller, Service};
pub use auth::RestAuth;
use problem::Problem;

/// Request bodies of the API, like `/mcp`'s.
const MAX_BODY_BYTES: usize = crate::http::MAX_BODY_BYTES;

#[derive(Clone)]
pub struct Rest {
    server: Arc<TokenServer>,
    service: Arc<Service>,
    idempotency: Arc<idempotency::Keys>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Rest {
    pub fn new(server: TokenServer, service: Arc<Service>) -> Rest {
        Rest {
            server: Arc::new(server),
            service,
            idempotency: Arc::new(idempotency::Keys::default()),
            metrics: None,
        }
    }

    /// Serves `GET /metrics` (admin tokens) when given the metrics.
    pub fn with_metrics(mut self, metrics: Option<Arc<crate::metrics::Metrics>>) -> Rest {
        self.metrics = metrics;
        self
    }
}

/// The `/v1` routes: the OpenAPI document without a token, everything else behind `auth`;
/// `/metrics` too when the server has metrics.
pub fn routes(rest: Rest, auth: RestAuth) -> Router {
    let mut guarded = Router::new();
    if rest.metrics.is_some() {
        guarded = guarded.route("/metrics", get(metrics));
    }
    let guarded = guarded
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route(
            "/v1/tokens/{id}",
            get(get_token).patch(patch_token).delete(delete_token),
        )
        .route("/v1/tokens/{id}/{action}", post(token_action))
        .route("/v1/whoami", get(whoami))
        .route("/v1/verify", post(verify))
        .route("/v1/buckets", get(buckets))
        .route("/v1/tools", get(tools))
        .route("/v1/audit", get(audit))
        .route("/v1/access", get(access))
        .route("/v1/oauth/clients", get(oauth_clients))
        .route("/v1/oauth/grants", get(oauth_grants))
        .route(
            "/v1/oauth/clients/{client_id}",
            axum::routing::delete(remove_oauth_client),
        )
        .route("/v1/{*rest}", axum::routing::any(unknown_endpoint))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(rest)
        .layer(middleware::from_fn_with_state(auth, auth::authenticate));
    Router::new()
        .route("/v1/openapi.json", get(openapi::document))
        .method_not_allowed_fallback(method_not_allowed)
        .merge(guarded)
}

/// axum's `Path`, whose refusal (a segment that is not UTF-8 once percent-decoded) is a
/// problem like every other bad input, not axum's plain-text 400.
struct PathParams<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(params)) => Ok(PathParams(params)),
            Err(rejection) => Err(Problem::invalid(rejection.body_text())),
        }
    }
}

/// Who is calling, as the tools see it.
fn who(caller: &Authenticated) -> (Caller, Option<IpAddr>) {
    (
        Caller::Token(caller.token_id.clone()),
        Some(caller.client_ip),
    )
}

/// Runs tool `name` for the caller and answers with its result (or problem).
async fn run(
    rest: &Rest,
    caller: &Authenticated,
    name: &str,
    arguments: Map<String, Value>,
) -> Result<Value, Problem> {
    match rest
        .server
        .run_own_tool(
            name,
            Value::Object(arguments),
            who(caller),
            crate::observe::Front::Rest,
            caller.trace.as_ref(),
        )
        .await
    {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(Problem::from_error(&error)),
        Err(failed) => Err(Problem::internal(&failed.message)),
    }
}

fn json(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// The query string as tool arguments: every value a string, but for the integer `limit`.
/// A parameter given twice is refused.
fn query_arguments(query: Option<String>) -> Result<Map<String, Value>, Problem> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
            .map_err(|_| Problem::invalid("the query string cannot be read"))?;
    let mut arguments = Map::new();
    for (key, value) in pairs {
        let value = if key == "limit" {
            let limit: u32 = value.parse().map_err(|_| {
                Problem::invalid(format!(
                    "limit must be a whole number from 1 to 100, not {}",
                    crate::secret::truncate_for_message(&value)
                ))
            })?;
            Value::from(limit)
        } else {
            Value::String(value)
        };
        if arguments.insert(key.clone(), value).is_some() {
            return Err(Problem::invalid(format!(
                "query parameter {} is given more than once",
                crate::secret::truncate_for_message(&key)
            )));
        }
    }
    Ok(arguments)
}

/// A request's body, whole, within the size limit and the body deadline.
pub(crate) async fn read_whole_body(body: Body) -> Result<axum::body::Bytes, Problem> {
    match crate::http::read_body(body, MAX_BODY_BYTES).await {
        Ok(bytes) => Ok(bytes),
        Err(crate::http::BodyFault::TooLarge) => Err(Problem::too_large()),
        Err(crate::http::BodyFault::Late) => Err(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_argument",
            "the body must arrive within 10 seconds",
        )),
    }
}

/// A JSON object body (an empty body is `{}` where `empty_ok`).
async fn body_arguments(
    headers: &HeaderMap,
    body: Body,
    empty_ok: bool,
) -> Result<Map<String, Value>, Problem> {
    let bytes = read_whole_body(body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) && empty_ok {
        return Ok(Map::new());
    }
    let declared_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    if !declared_json {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_argument",
            "send the body as Content-Type: application/json",
        ));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(arguments)) => Ok(arguments),
        Ok(_) => Err(Problem::invalid("the body must be one JSON object")),
        Err(e) => Err(Problem::invalid(format!("the body is not valid JSON: {e}"))),
    }
}

async fn list_tokens(
    State(rest): State<Rest>,
    caller: axum::Extension<Authenticated>,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let arguments = query_arguments(query)?;
    let page = run(&rest, &caller, "list_tokens", arguments).await?;
    Ok(json(StatusCode::OK, &page))
}

async fn create_token(
    State(rest): State<Rest>,
    caller: axum::Extension<Authenticated>,
    request: Request,
) -> Result<Response, Problem> {
    let (parts, body) = request.into_parts();
    let arguments = body_arguments(&parts.headers, body, false).await?;
    let key = idempotency::key(&parts.headers)?;
    let claim = match &key {
        Some(key) => match rest.idempotency.claim(&caller.token_id, key, &arguments)? {
            idempotency::Claim::Replay(id) => {
                let mut record = run(&rest, &caller, "get_token", id_argument(&id)).await?;
                record["replayed"] = Value::Bool(true);
                return Ok(created(StatusCode::OK, &record));
            }
            idempotency::Claim::First(claim) => Some(claim),
        },
        None => None,
    };
    // Detached: a client that goes away mid-create (the timeout an agent then retries) must
    // not cancel the claim's bookkeeping while the create itself carries on and succeeds.
    let record = tokio::spawn({
        let (rest, caller) = (rest.clone(), caller.0.clone());
        async move {
            let record = run(&rest, &caller, "create_token", arguments).await?;
            if let (Some(claim), Some(id)) = (claim, record["id"].as_str()) {
                claim.done(id);
            }
            Ok::<_, Problem>(record)
        }
    })
    .await
    .map_err(|e| Problem::internal(&e.to_string()))??;
    Ok(created(StatusCode::CREATED, &record))
}

/// A created (or replayed) token with its `Location`.
fn created(status: StatusCode, record: &Value) -> Response {
    let mut response = json(status, record);
    if let Some(location) = record["id"]
        .as_str()
        .and_then(|id| HeaderValue::from_str(&format!("/v1/tokens/{id}")).ok())
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn id_argument(id: &str) -> Map<String, Value> {
    let mut arguments = Map::new();
    arguments.insert("id".into(), Value::String(id.to_owned()));
    arguments
}

async fn get_token(
    State(rest): State<Rest>,
    caller: axum::Extension<Authenticated>,
    PathParams(id): PathParams<String>,
) -> Result<Response, Problem> {
    let record = run(&rest, &caller, "get_token", id_argument(&id)).await?;
    Ok(json(StatusCode::OK, &record))
}

/// The fields `PATCH` hands to `update_token`; the others go to `scope_token`.
const UPDATE_FIELDS: &[&str] = &[
    "name",
    "description",
    "metadata",
    "expires_at",
    "max_uses",
    "rate_limit_per_minute",
];

async fn patch_token(
    State(rest): State<Rest>,
    caller: axum::Extension<Authenticated>,
    PathParams(id): PathParams<String>,
    request: Request,
) -> Result<Response, Problem> {
    let (parts, body) = request.into_parts();
    let mut arguments = body_arguments(&parts.headers, body, false).await?;
    if arguments.contains_key("id") {
        return Err(Problem::invalid(
            "the token's id is in the path, not the body",
        ));
    }
    let updates = arguments
        .keys()
        .filter(|k| UPDATE_FIELDS.contains(&k.as_str()))
        .count();
    // One request, one tool, so a refused change changes nothing.
    let tool = match (updates, arguments.len() - updates) {
        (0, 0) => return Err(Problem::invalid("the body names no field to change")),
        (_, 0) => "update_token",
        (0, _) => "scope_token",
        _ => {
            return Err(Problem::invalid(
                "send scope fields (buckets, tools, deny_tools, read_only, allowed_ips, …) and \
                 other fields (name, description, metadata, expires_at, max_uses, \
                 rate_limit_per_minute) in separate PATCH requests",
            ));
        }
    };
    arguments.insert("id".into(), Value::String(id));
    let record = run(&rest, &caller, tool, arguments).await?;
    Ok(json(StatusCode::OK, &record))
}

async fn delete_token(
    State(rest): State<Rest>,
    caller: axum::Extension<Authenticated>,
    PathParams(id): PathParams<String>,
) -> Result<Response, Problem> {
    let deleted = run(&rest, &caller, "delete_token", id_argument(&id)).await?;
    Ok(json(StatusCode::OK, &deleted))
}

async fn token_action(
    State(rest): State<Rest>,
    caller: axum::Extension<Authenticated>,
    PathParams((id, action)): PathParams<(String, String)>,
    request: Request,
) -> Result<Response, Problem> {
    let tool = match action.as_str() {
        "pause" => "pause_token",
        "resume" => "resume_token",
        "rotate" => "rotate_token",
        "revoke" => "revoke_token",
        _ => return Err(unknown_endpoint_problem()),
    };
    let (parts, body) = request.into_parts();
    let mut arguments = body_arguments(&parts.headers, body, true).await?;
    if arguments.contains_key("id") {
        return Err(Problem::invalid(
            "the token's id is in the path, not the body",
        ));
    }
    arguments.insert("id".into(), Value::String(id));
    let result = run(&rest, &caller, tool, arguments).await?;
    Ok(json(StatusCode::OK, &result))
}

async fn whoami(
    State(rest): State<Rest>,
    caller: axum::Extension<Authenticated>,
) -> Result<Response, Problem> {
    let me = run(&rest, &caller, "whoami", Map::new()).await?;
    Ok(json(StatusCode::OK, &me))
}

async fn verify(
    State(rest): State<Rest>,
    caller: axum::Extension<Authenticated>,
    request: Request,
) -> Result<Response, Problem> {
    let (parts, body) = request.into_parts();
    let arguments = body_arguments(&parts.headers, body, false).await?;
    let verdict = run(&rest, &caller, "verify_token", arguments).await?;
    Ok(json(StatusCode::OK, &verdict))
}

async fn buckets(
    State(rest): State<Rest>,
    caller: axum::Extension<Authenticated>,
) -> Result<Response, Problem> {
    let buckets = run(&rest, &caller, "list_buckets", Map::new()).await?;
    Ok(json(StatusCode::OK, &buckets))
}

/// `GET /v1/tools`: what `tools/list` shows the caller over MCP (tokenwarden's own tools and
/// the gateway's it may call), as `{tools: [{name, read_only, description}]}`. Like
/// `tools/list`, not a tool call: it spends no use.
async fn tools(
    State(rest): State<Rest>,
    caller: axum::Extension<Authenticated>,
) -> Result<Response, Problem> {
    let (who, ip) = who(&caller);
    let listed = rest
        .server
        .list_tools_as(false, &who, ip)
        .map_err(|e| Problem::internal(&e.message))?;
    let tools: Vec<Value> = listed
        .tools
        .iter()
        .map(|tool| {
            serde_json::json!({
                "name": tool.name,
                "read_only": tool.annotations.as_ref().and_then(|a| a.read_only_hint).unwrap_or(false),
                "description": tool.description,
            })
        })
        .collect();
    Ok(json(StatusCode::OK, &serde_json::json!({ "tools": tools })))
}

async fn audit(
    State(rest): State<Rest>,
    caller: axum::Extension<Authenticated>,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let arguments = query_arguments(query)?;
    let page = run(&rest, &caller, "list_audit_events", arguments).await?;
    Ok(json(StatusCode::OK, &page))
}

async fn access(
    State(rest): State<Rest>,
    caller: axum::Extension<Authenticated>,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let arguments = query_arguments(query)?;
    let page = run(&rest, &caller, "list_access_events", arguments).await?;
    Ok(json(StatusCode::OK, &page))
}

/// The OAuth endpoints are for the owner and admin tokens (SPEC §12). No MCP tool covers
/// them, so each has a tool name of its own for the decision (`list_oauth_clients` and
/// `list_oauth_grants` read-only, `remove_oauth_client` not): the caller's allowlist,
/// read-only flag, uses and rate limit apply as to any tool; then the caller must be an admin,
/// and the command line's own code answers.
async fn owner_or_admin(
    rest: &Rest,
    caller: &Authenticated,
    (tool, read_only): (&'static str, bool),
    work: impl FnOnce(&Service) -> Result<Value, crate::cli::CliError> + Send + 'static,
) -> Result<Value, Problem> {
    let service = Arc::clone(&rest.service);
    let (who, ip) = who(caller);
    let permit = service.blocking_permit(&who).await;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let decided = service
            .authorize_tool_call(
                &who,
                crate::service::Tool {
                    name: tool,
                    read_only,
                },
                None,
                ip,
            )
            .and_then(|()| service.require_owner_or_admin(&who, "the OAuth clients and grants"));
        decided.map_err(|e| Problem::from_error(&e))?;
        work(&service).map_err(|e| Problem::from_cli(&e))
    })
    .await
    .map_err(|e| Problem::internal(&e.to_string()))?
}

async fn oauth_clients(
    State(rest): State<Rest>,
    caller: axum::Extension<Authenticated>,
) -> Result<Response, Problem> {
    let clients = owner_or_admin(
        &rest,
        &caller,
        ("list_oauth_clients", true),
        crate::cli::oauth::clients,
    )
    .await?;
    Ok(json(StatusCode::OK, &clients))
}

async fn oauth_grants(
    State(rest): State<Rest>,
    caller: axum::Extension<Authenticated>,
) -> Result<Response, Problem> {
    let grants = owner_or_admin(
        &rest,
        &caller,
        ("list_oauth_grants", true),
        crate::cli::oauth::grants,
    )
    .await?;
    Ok(json(StatusCode::OK, &grants))
}

async fn remove_oauth_client(
    State(rest): State<Rest>,
    caller: axum::Extension<Authenticated>,
    PathParams(client_id): PathParams<String>,
) -> Result<Response, Problem> {
    let removed = owner_or_admin(
        &rest,
        &caller,
        ("remove_oauth_client", false),
        move |service| crate::cli::oauth::remove_client(service, &client_id),
    )
    .await?;
    Ok(json(StatusCode::OK, &removed))
}

/// `GET /metrics` on the main listener: the Prometheus exposition, for admin tokens (`serve
/// --metrics ADDR` serves it without a token on a listener of its own). A scrape is not a
/// tool call: it spends no use and counts against no rate.
async fn metrics(
    State(rest): State<Rest>,
    caller: axum::Extension<Authenticated>,
) -> Result<Response, Problem> {
    let Some(metrics) = &rest.metrics else {
        return Err(unknown_endpoint_problem());
    };
    let (who, _) = who(&caller);
    rest.service
        .require_owner_or_admin(&who, "the metrics")
        .map_err(|e| Problem::from_error(&e))?;
    Ok(metrics.response().await)
}

fn unknown_endpoint_problem() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint: see GET /v1/openapi.json",
    )
}

async fn unknown_endpoint() -> Problem {
    unknown_endpoint_problem()
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_argument",
        "this endpoint does not take that method: see GET /v1/openapi.json",
    )
}
