//! RFC 8693 token exchange at `/oauth/token`: an agent framework that speaks OAuth trades a
//! tokenwarden secret (the subject token) for a new, narrower child of it, the standard way to
//! mint a sub-agent's token.
//!
//! The exchange is a `create_token` call by the subject and nothing else: the subject's secret
//! authenticates from the requester's address (as a bearer would), the call is decided and
//! counted like the tool (`authorize_call`: allowlist, denials, read-only, uses, rate limit),
//! and `Service::create_token` mints the child (attenuation, depth and children limits,
//! denials inherited, standing at commit, the `create` audit event). This module only turns
//! the form into that request and the answer into RFC 8693's.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::json;

use super::authorize::{names_this_server, split_scope};
use super::token::{Refusal, TokenForm, Tokens, refuse, unavailable};
use super::{OAuth, blocking};
use crate::error::ErrorCode;
use crate::secret::TokenId;
use crate::service::Caller;
use crate::service::requests::{CreateToken, TokenRef};
use crate::timestamp::Timestamp;

pub(super) const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub(super) const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The exchange: the form checked, the subject authenticated, then the minting on the
/// blocking pool under the subject lineage's place there (as its `create_token` tool call
/// would be), so one lineage cannot tie up the pool with exchanges.
pub(super) async fn exchange(
    oauth: Arc<OAuth>,
    form: TokenForm,
    ip: IpAddr,
) -> Result<Tokens, Refusal> {
    let (subject, wanted) = checked_form(&oauth, &form)?;
    let subject_id = {
        let oauth = Arc::clone(&oauth);
        blocking(move || oauth.service.authenticate(&subject, Some(ip)))
            .await
            .map_err(|failure| {
                refuse(
                    "invalid_request",
                    crate::secret::redact_secrets(&format!(
                        "subject_token cannot be used: {failure}"
                    )),
                )
            })?
    };
    let permit = oauth
        .service
        .blocking_permit(&Caller::Token(subject_id.clone()))
        .await;
    blocking(move || {
        let _permit = permit;
        mint_child(&oauth, subject_id, wanted, ip)
    })
    .await
}

/// What the subject asks for: buckets, tools, read-only.
struct Wanted {
    buckets: Vec<String>,
    tools: Vec<String>,
    read_only: bool,
}

/// The form's own checks, before the subject is looked at: the subject token and the scope.
fn checked_form(oauth: &OAuth, form: &TokenForm) -> Result<(String, Wanted), Refusal> {
    let subject = form
        .subject_token
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| refuse("invalid_request", "subject_token is required"))?
        .to_owned();
    if form.subject_token_type.as_deref() != Some(ACCESS_TOKEN_TYPE) {
        return Err(refuse(
            "invalid_request",
            format!("subject_token_type must be {ACCESS_TOKEN_TYPE} (a tokenwarden secret)"),
        ));
    }
    if form
        .requested_token_type
        .as_deref()
        .is_some_and(|t| t != ACCESS_TOKEN_TYPE)
    {
        return Err(refuse(
            "invalid_request",
            format!("requested_token_type can only be {ACCESS_TOKEN_TYPE}"),
        ));
    }
    if form.actor_token.is_some() || form.actor_token_type.is_some() {
        return Err(refuse(
            "invalid_request",
            "actor tokens are not supported: the new token is a child of the subject token",
        ));
    }
    for target in [form.resource.as_deref(), form.audience.as_deref()]
        .into_iter()
        .flatten()
    {
        if !names_this_server(oauth, target) {
            return Err(refuse(
                "invalid_target",
                "resource and audience can only name this server's MCP endpoint",
            ));
        }
    }
    let scope = form.scope.as_deref().unwrap_or_default();
    let (_, buckets, tools, read_only, unknown) = split_scope(scope);
    if !unknown.is_empty() {
        return Err(refuse(
            "invalid_scope",
            format!(
                "unknown scope items {}: use bucket:NAME, tool:PATTERN and read_only",
                unknown.join(" ")
            ),
        ));
    }
    Ok((
        subject,
        Wanted {
            buckets,
            tools,
            read_only,
        },
    ))
}

/// The subject's `create_token` call: decided and counted through the one decision, minted by
/// `Service::create_token` with the subject as caller.
fn mint_child(
    oauth: &OAuth,
    subject_id: TokenId,
    wanted: Wanted,
    ip: IpAddr,
) -> Result<Tokens, Refusal> {
    let service = &oauth.service;
    let Wanted {
        buckets,
        tools,
        read_only,
    } = wanted;
    let caller = Caller::Token(subject_id.clone());
    service
        .authorize_call(&caller, "create_token", None, Some(ip))
        .map_err(|e| match e.code {
            ErrorCode::RateLimited | ErrorCode::LimitExceeded => refuse("slow_down", e.message),
            ErrorCode::Internal => unavailable(e.message),
            _ => refuse("invalid_request", e.message),
        })?;
    // Never past the subject's own expiry (which already lies within its ancestors').
    let view = service
        .get_token(
            &caller,
            TokenRef {
                id: subject_id.to_string(),
            },
        )
        .map_err(|e| unavailable(e.message))?;
    let now = Timestamp::now();
    let wanted = now
        .plus_seconds(oauth.config.token_lifetime_seconds)
        .ok_or_else(|| refuse("invalid_request", "the lifetime is out of range"))?;
    let expires_at = view.expires_at.map_or(wanted, |cap| cap.min(wanted));
    let mut metadata = serde_json::Map::new();
    metadata.insert("oauth_token_exchange".into(), json!(true));
    let request = CreateToken {
        name: "OAuth token exchange".to_owned(),
        description: Some(format!(
            "Minted by RFC 8693 token exchange from {subject_id}."
        )),
        buckets: (!buckets.is_empty()).then_some(buckets),
        tools: (!tools.is_empty()).then_some(tools),
        read_only: read_only.then_some(true),
        expires_at: Some(expires_at.to_string()),
        metadata: Some(metadata),
        ..CreateToken::default()
    };
    let issued = service
        .create_token(&caller, request)
        .map_err(|e| match e.code {
            ErrorCode::ScopeExceedsParent => refuse("invalid_scope", e.message),
            ErrorCode::Internal => unavailable(e.message),
            _ => refuse("invalid_request", e.message),
        })?;
    tracing::info!(subject = %subject_id, token = %issued.record.id, "token exchange minted a child");
    let record = &issued.record;
    let mut items = Vec::new();
    if record.read_only {
        items.push("read_only".to_owned());
    }
    items.extend(record.buckets.iter().map(|b| format!("bucket:{b}")));
    items.extend(record.tools.iter().map(|t| format!("tool:{t}")));
    Ok(Tokens {
        access_token: issued.token,
        expires_in: (expires_at.millis() - now.millis()) / 1000,
        refresh_token: None,
        scope: items.join(" "),
        issued_token_type: Some(ACCESS_TOKEN_TYPE),
    })
}
