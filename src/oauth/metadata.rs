//! The discovery documents, served without a token: RFC 9728 protected resource metadata (what
//! a client fetches after the 401 names it) and RFC 8414 authorization server metadata.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::OAuth;

// No `scopes_supported` in either document: MCP clients copy it into the scope they request
// (the Python SDK takes the resource's list, else the authorization server's), so listing
// `read_only` made every connector ask for read-only by default. Clients that send no scope
// get what the person chooses on the consent page; `read_only`, `bucket:NAME` and
// `tool:PATTERN` still work when sent (docs/oauth.md).

fn document(value: serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        value.to_string(),
    )
        .into_response()
}

pub(super) async fn protected_resource(State(oauth): State<Arc<OAuth>>) -> Response {
    let config = oauth.config();
    document(json!({
        "resource": config.resource(),
        "authorization_servers": [config.public_url],
        "bearer_methods_supported": ["header"],
        "resource_name": "tokenwarden",
    }))
}

pub(super) async fn authorization_server(State(oauth): State<Arc<OAuth>>) -> Response {
    let url = &oauth.config().public_url;
    document(json!({
        "issuer": url,
        "authorization_endpoint": format!("{url}/oauth/authorize"),
        "token_endpoint": format!("{url}/oauth/token"),
        "registration_endpoint": format!("{url}/oauth/register"),
        "revocation_endpoint": format!("{url}/oauth/revoke"),
        "introspection_endpoint": format!("{url}/oauth/introspect"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": [
            "authorization_code",
            "refresh_token",
            super::exchange::GRANT_TYPE,
        ],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "client_id_metadata_document_supported": true,
        "revocation_endpoint_auth_methods_supported": ["none"],
        "authorization_response_iss_parameter_supported": true,
    }))
}
