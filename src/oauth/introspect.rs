//! `/oauth/introspect` (RFC 7662): a service that holds a tokenwarden token which may call
//! `verify_token` asks what a presented secret is worth.
//!
//! The caller authenticates with `Authorization: Bearer`; each introspection is one call of
//! `verify_token` by it (its allowlist, uses and rate limit decide, through the one decision),
//! then the service's `introspect` requires the owner or an admin token, as `verify_token` does.
//! Every reason a secret is unusable answers the same `{"active": false}`, so a caller learns
//! nothing that tells an unknown secret from a revoked or malformed one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{MAX_FORM_BYTES, OAuth, client_ip, json_no_store, lock, oauth_error, read_body};
use crate::error::ErrorCode;
use crate::service::{Caller, Introspection};

/// Introspection requests whose caller does not authenticate, per address (an IPv6 /64) per
/// minute; beyond, that address is answered 429 before its credentials are looked at. No
/// ceiling across addresses: a flood of refused callers never holds back valid ones.
pub(super) const REFUSED_CALLERS_PER_PEER_MINUTE: u32 = 600;

#[derive(Deserialize)]
struct IntrospectForm {
    token: Option<String>,
    #[allow(dead_code)]
    token_type_hint: Option<String>,
}

fn too_many(wait: Duration, why: &str) -> Response {
    let mut response = oauth_error(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", why);
    if let Ok(value) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// 401 for a caller without usable credentials (RFC 7662 §2.3 via RFC 6750).
fn unauthenticated(oauth: &OAuth, description: &str) -> Response {
    let mut response = oauth_error(StatusCode::UNAUTHORIZED, "invalid_token", description);
    let challenge = format!(
        "Bearer realm=\"tokenwarden\", resource_metadata=\"{}\", error=\"invalid_token\"",
        oauth.config.resource_metadata_url()
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

pub(super) async fn introspect(
    State(oauth): State<Arc<OAuth>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ip = client_ip(peer);
    let peer_key = crate::rules::cidr::peer_key(peer.ip());
    // Charged before the credentials are looked at, refunded when they authenticate.
    if let Err(wait) = lock(&oauth.refused_introspectors).take(peer_key, Instant::now()) {
        return too_many(
            wait,
            "too many introspection requests without valid credentials from this address",
        );
    }
    let secret = match crate::http::bearer_of(&headers) {
        Ok(secret) => secret.to_owned(),
        Err(_) => {
            return unauthenticated(
                &oauth,
                "send Authorization: Bearer with a token that may call verify_token",
            );
        }
    };
    let caller = {
        let oauth = Arc::clone(&oauth);
        super::blocking(move || oauth.service.authenticate(&secret, Some(ip))).await
    };
    let caller = match caller {
        Ok(id) => Caller::Token(id),
        Err(failure) => {
            let description = crate::secret::redact_secrets(&failure.to_string());
            return unauthenticated(&oauth, &description);
        }
    };
    lock(&oauth.refused_introspectors).refund(peer_key);

    let body = match read_body(body, MAX_FORM_BYTES).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let Ok(form) = serde_urlencoded::from_bytes::<IntrospectForm>(&body) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded, each parameter once",
        );
    };
    let Some(presented) = form.token.filter(|t| !t.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is required",
        );
    };
    let permit = oauth.service.blocking_permit(&caller).await;
    let decided = {
        let oauth = Arc::clone(&oauth);
        super::blocking(move || {
            let _permit = permit;
            oauth
                .service
                .authorize_call(&caller, "verify_token", None, Some(ip))
                .and_then(|()| oauth.service.introspect(&caller, &presented))
        })
        .await
    };
    match decided {
        Ok(Some(active)) => json_no_store(StatusCode::OK, answer(&oauth, &active)),
        Ok(None) => json_no_store(StatusCode::OK, json!({ "active": false })),
        Err(e) => match e.code {
            ErrorCode::RateLimited | ErrorCode::LimitExceeded => {
                too_many(Duration::from_secs(60), &e.message)
            }
            ErrorCode::Forbidden => {
                oauth_error(StatusCode::FORBIDDEN, "insufficient_scope", &e.message)
            }
            _ => {
                tracing::error!("introspection failed: {}", e.message);
                oauth_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "the server cannot answer now; retry later",
                )
            }
        },
    }
}

/// The RFC 7662 answer for an active token. `scope` lists its effective buckets and tool
/// patterns in the consent page's words; since a scope string cannot say "except", the exact
/// lists (denials included) follow as extension members.
fn answer(oauth: &OAuth, active: &Introspection) -> Value {
    let scope = &active.scope;
    let mut items = Vec::new();
    if scope.read_only {
        items.push("read_only".to_owned());
    }
    items.extend(scope.buckets.iter().map(|b| format!("bucket:{b}")));
    items.extend(scope.tools.iter().map(|t| format!("tool:{t}")));
    let strings = |list: &[crate::rules::pattern::ToolPattern]| -> Vec<String> {
        list.iter().map(ToString::to_string).collect()
    };
    let mut body = json!({
        "active": true,
        "token_type": "Bearer",
        "sub": active.token_id,
        "scope": items.join(" "),
        "iat": active.created_at.millis() / 1000,
        "iss": oauth.config.public_url,
        "aud": oauth.config.resource(),
        "buckets": scope.buckets,
        "tools": strings(&scope.tools),
        "deny_tools": strings(&scope.deny_tools),
        "read_only": scope.read_only,
        "admin": scope.admin,
    });
    if let Some(expires) = scope.expires_at {
        body["exp"] = json!(expires.millis() / 1000);
    }
    if let Some(client) = &active.client_id {
        body["client_id"] = json!(client);
    }
    body
}
