//! The bearer check for `/v1`: the `/mcp` guard's authentication (RFC 6750 challenges naming
//! the resource metadata) and its bound on requests in flight per lineage, without MCP's
//! sessions. An authenticated request carries [`Authenticated`] to its handler.
//!
//! A request without `Authorization` that carries a console session cookie is the console
//! acting as that session's token: the session is checked whole (`console::session`: CSRF
//! token, origin, and the token's secret still authenticating from its stored hash) and then
//! meets everything below, as a bearer would.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::problem::Problem;
use crate::mcp::{Authenticated, Presented};
use crate::observe::{Front, Unauthenticated};
use crate::rules::cidr::canonical_ip;
use crate::service::{RefusedKnown, Service};

#[derive(Clone)]
pub struct RestAuth {
    pub service: Arc<Service>,
    pub resource_metadata: Arc<str>,
    pub inflight: Arc<crate::http::InFlight>,
    /// The console's sessions, which stand for their tokens here.
    pub console: Arc<crate::console::Sessions>,
}

pub async fn authenticate(
    State(auth): State<RestAuth>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let client_ip = canonical_ip(peer.ip());
    let bearer = crate::http::bearer_of(request.headers());
    if matches!(bearer, Err(None)) && auth.console.cookie(request.headers()).is_some() {
        return match auth.console.check(
            &auth.service,
            request.method(),
            request.headers(),
            client_ip,
            false,
        ) {
            Ok((token_id, _)) => admitted(&auth, token_id, client_ip, None, request, next).await,
            Err(why) => {
                tracing::debug!(%client_ip, "refused a console request: {why:?}");
                crate::http::doom(&request);
                crate::console::refused(&auth.console, &why)
            }
        };
    }
    let secret = match bearer {
        Ok(secret) => secret.to_owned(),
        Err(description) => {
            let reason = match description {
                None => Unauthenticated::Missing,
                Some(_) => Unauthenticated::Malformed,
            };
            auth.service.observer().unauthenticated(reason, Front::Rest);
            crate::http::doom(&request);
            return refused(&auth, description);
        }
    };
    let token_id = match auth.service.authenticate(&secret, Some(client_ip)) {
        Ok(id) => id,
        Err(failure) => {
            let description = failure.to_string();
            tracing::debug!(%client_ip, "refused REST request: {description}");
            auth.service
                .observe_refusal(RefusedKnown::Auth(&failure), Front::Rest);
            crate::http::doom(&request);
            return refused(&auth, Some(&description));
        }
    };
    let presented = Some(Presented::new(&secret));
    admitted(&auth, token_id, client_ip, presented, request, next).await
}

/// An authenticated request (by bearer, or by console session: `secret` is `None`, since a
/// session keeps only its secret's hash) from here on: its lineage's bound on requests in
/// flight, then the handler.
async fn admitted(
    auth: &RestAuth,
    token_id: crate::secret::TokenId,
    client_ip: std::net::IpAddr,
    secret: Option<Presented>,
    mut request: Request,
    next: Next,
) -> Response {
    let chain = auth.service.lineage_chain(&token_id);
    let lineage = chain[0].clone();
    let Some(ticket) = auth.inflight.enter(chain) else {
        auth.service
            .observe_refusal(RefusedKnown::InFlight(&token_id), Front::Rest);
        // As on `/mcp`: a lineage retrying at its bound must not make the server spin, and
        // its connection goes first when room is needed.
        crate::http::doom(&request);
        tokio::time::sleep(crate::http::REFUSAL_DELAY).await;
        let mut response = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "this token's lineage already has its maximum of requests in flight ({}, of which \
                 the tokens minted under any one token hold at most half); retry when one has ended",
                auth.inflight.per_lineage()
            ),
        )
        .into_response();
        // As on `/mcp`: a request in flight ends within moments, not the rate limit's window.
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("1"),
        );
        return response;
    };
    auth.service.observer().admitted(Front::Rest);
    let shield = crate::http::raise_shield(&request, &lineage);
    // Read only when traces are on: a call's span is named by its method and route.
    let trace = auth.service.observer().tracer().map(|_| {
        let mut incoming = crate::trace::Incoming::from_headers(request.headers());
        if let Some(route) = request.extensions().get::<axum::extract::MatchedPath>() {
            incoming.route = Some((request.method().clone(), Arc::from(route.as_str())));
        }
        incoming
    });
    request.extensions_mut().insert(Authenticated {
        token_id,
        client_ip,
        secret,
        trace,
    });
    // A lineage with many requests in flight runs them a few at a time (`http::inflight`),
    // its turn taken once the body is here: a body sent late would otherwise make the
    // request give its turn back before its work began.
    if ticket.may_wait_for_turn() && request.method() != axum::http::Method::GET {
        let (parts, body) = request.into_parts();
        let bytes = match super::read_whole_body(body).await {
            Ok(bytes) => bytes,
            Err(problem) => {
                return crate::http::hold_ticket(problem.into_response(), (ticket, shield));
            }
        };
        request = Request::from_parts(parts, axum::body::Body::from(bytes));
    }
    let turn = ticket.turn().await;
    let response = crate::http::turned(next.run(request), turn).await;
    crate::http::hold_ticket(response, (ticket, shield))
}

/// A 401: the `/mcp` guard's RFC 6750 challenge, with a problem+json body. (The request's
/// connection is marked to go first when room is needed.)
fn refused(auth: &RestAuth, description: Option<&str>) -> Response {
    let challenge = crate::http::challenge(&auth.resource_metadata, description);
    let detail = description.unwrap_or("missing bearer token: send Authorization: Bearer <token>");
    let mut response =
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail).into_response();
    if let Some(value) = challenge
        .headers()
        .get(axum::http::header::WWW_AUTHENTICATE)
    {
        response
            .headers_mut()
            .insert(axum::http::header::WWW_AUTHENTICATE, value.clone());
    }
    response
}
