//! `/oauth/token` (authorization code and refresh token grants) and `/oauth/revoke`
//! (RFC 7009).
//!
//! Each exchange mints a new child of the approver through `Service::create_token` with the
//! approver as the caller, so the approver's standing (status, expiry, lineage) is checked
//! when the child commits: an approver revoked or paused after consent yields
//! `invalid_grant` and no token. A refresh mints a fresh child and revokes the previous one at
//! once, so an access token never outlives the refresh that replaced it (and an expired child
//! needs no extension, which expiry being final would refuse). Refresh tokens are random,
//! stored as BLAKE3 hashes, single use; presenting a spent one revokes the grant and its
//! access token. Codes live in memory for 60 s; a code presented twice revokes what it issued.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::authorize::{child_request, names_this_server, same_secret};
use super::{
    MAX_FORM_BYTES, OAuth, REFRESH_LIFETIME_SECONDS, blocking, json_no_store, lock, oauth_error,
    random_string, read_body,
};
use crate::record::Status;
use crate::rules::scope::Scope;
use crate::secret::TokenId;
use crate::service::Caller;
use crate::service::requests::{CreateToken, RevokeToken, TokenRef, TokenView};
use crate::store::oauth::{ApprovedScope, Grant, OAuthClient, RefreshLookup};
use crate::timestamp::Timestamp;

/// An approved authorization waiting for its exchange.
pub(super) struct ApprovedCode {
    pub client_id: String,
    pub client_name: String,
    pub redirect_uri: String,
    pub resource: Option<String>,
    pub code_challenge: String,
    pub approver: TokenId,
    pub scope: ApprovedScope,
    /// The grant this approval adds to (scope step-up): its token is replaced at exchange.
    pub replaces: Option<String>,
    /// When the person approved: an approver rotated since refuses the exchange.
    pub approved_at: Timestamp,
}

pub(super) enum CodeState {
    Issued(Box<ApprovedCode>),
    /// Exchanged (or refused) already; the access token it issued, if any, so a second use can
    /// revoke it (RFC 6749 §4.1.2).
    Spent(Option<TokenId>),
}

/// Codes are kept under their hash, so memory holds no usable code.
pub(super) fn code_key(code: &str) -> String {
    blake3::hash(code.as_bytes()).to_hex().to_string()
}

#[derive(Deserialize)]
pub(super) struct TokenForm {
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    client_id: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    pub resource: Option<String>,
    // RFC 8693 token exchange (`exchange`).
    pub subject_token: Option<String>,
    pub subject_token_type: Option<String>,
    pub requested_token_type: Option<String>,
    pub actor_token: Option<String>,
    pub actor_token_type: Option<String>,
    pub audience: Option<String>,
    pub scope: Option<String>,
}

#[derive(Deserialize)]
struct RevokeForm {
    token: Option<String>,
    client_id: Option<String>,
    #[allow(dead_code)]
    token_type_hint: Option<String>,
}

/// An RFC 6749 §5.2 refusal.
pub(super) struct Refusal {
    error: &'static str,
    description: String,
}

pub(super) fn refuse(error: &'static str, description: impl Into<String>) -> Refusal {
    Refusal {
        error,
        description: description.into(),
    }
}

impl Refusal {
    fn response(&self) -> Response {
        let status = match self.error {
            "temporarily_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            // A subject token's uses or rate limit (RFC 8628's name for "wait").
            "slow_down" => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::BAD_REQUEST,
        };
        oauth_error(status, self.error, &self.description)
    }
}

/// What a successful exchange hands the client.
pub(super) struct Tokens {
    pub access_token: String,
    pub expires_in: i64,
    /// None for a token exchange (the subject token is what renews it).
    pub refresh_token: Option<String>,
    pub scope: String,
    /// RFC 8693's `issued_token_type`, for a token exchange.
    pub issued_token_type: Option<&'static str>,
}

fn verifier_matches(verifier: &str, challenge: &str) -> bool {
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    same_secret(&computed, challenge)
}

/// RFC 7636: 43 to 128 unreserved characters.
fn valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

fn scope_string(scope: &ApprovedScope) -> String {
    let mut items = Vec::new();
    if scope.read_only {
        items.push("read_only".to_owned());
    }
    for b in scope.buckets.iter().flatten() {
        items.push(format!("bucket:{b}"));
    }
    for t in scope.tools.iter().flatten() {
        items.push(format!("tool:{t}"));
    }
    items.join(" ")
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> Refusal {
    tracing::error!("OAuth storage failure: {e}");
    refuse(
        "temporarily_unavailable",
        "the server cannot complete this now; retry later",
    )
}

pub(super) async fn token(
    State(oauth): State<Arc<OAuth>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Body,
) -> Response {
    let body = match read_body(body, MAX_FORM_BYTES).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let Ok(form) = serde_urlencoded::from_bytes::<TokenForm>(&body) else {
        return refuse(
            "invalid_request",
            "the body must be application/x-www-form-urlencoded, each parameter once",
        )
        .response();
    };
    let outcome = if form.grant_type.as_deref() == Some(super::exchange::GRANT_TYPE) {
        super::exchange::exchange(oauth, form, super::client_ip(peer)).await
    } else {
        blocking(move || by_code_or_refresh(&oauth, &form)).await
    };
    match outcome {
        Ok(tokens) => {
            let mut body = json!({
                "access_token": tokens.access_token,
                "token_type": "Bearer",
                "expires_in": tokens.expires_in,
            });
            if let Some(refresh) = tokens.refresh_token {
                body["refresh_token"] = json!(refresh);
            }
            if let Some(issued) = tokens.issued_token_type {
                body["issued_token_type"] = json!(issued);
            }
            // An empty scope is omitted (RFC 6749 §5.1: scope is a list of items).
            if !tokens.scope.is_empty() {
                body["scope"] = json!(tokens.scope);
            }
            json_no_store(StatusCode::OK, body)
        }
        Err(refusal) => refusal.response(),
    }
}

fn by_code_or_refresh(oauth: &OAuth, form: &TokenForm) -> Result<Tokens, Refusal> {
    match form.grant_type.as_deref() {
        Some("authorization_code") => exchange_code(oauth, form),
        Some("refresh_token") => refresh(oauth, form),
        Some(_) => Err(refuse(
            "unsupported_grant_type",
            "grant_type must be authorization_code, refresh_token or token exchange \
             (urn:ietf:params:oauth:grant-type:token-exchange)",
        )),
        None => Err(refuse("invalid_request", "grant_type is required")),
    }
}

fn required<'a>(value: &'a Option<String>, name: &str) -> Result<&'a str, Refusal> {
    value
        .as_deref()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| refuse("invalid_request", format!("{name} is required")))
}

fn known_client(oauth: &OAuth, client_id: &str) -> Result<OAuthClient, Refusal> {
    oauth
        .store
        .client(client_id)
        .map_err(unavailable)?
        .ok_or_else(|| refuse("invalid_client", "unknown client_id"))
}

fn exchange_code(oauth: &OAuth, form: &TokenForm) -> Result<Tokens, Refusal> {
    let code = required(&form.code, "code")?;
    let client_id = required(&form.client_id, "client_id")?;
    let redirect_uri = required(&form.redirect_uri, "redirect_uri")?;
    let verifier = required(&form.code_verifier, "code_verifier")?;
    // A metadata-document client was checked when its consent page opened; its code names it.
    let client = if super::cimd::is_document_url(client_id) {
        None
    } else {
        Some(known_client(oauth, client_id)?)
    };
    let _grants = lock(&oauth.grants);
    let key = code_key(code);
    let now = Instant::now();
    // Whatever happens next, the code is spent: a code is tried once.
    let state = lock(&oauth.codes).take(&key, now);
    let approved = match state {
        Some(CodeState::Issued(approved)) => approved,
        Some(CodeState::Spent(issued)) => {
            lock(&oauth.codes).insert(key, CodeState::Spent(None), now);
            if let Some(access) = issued {
                tracing::warn!(
                    client_id,
                    "an authorization code was used twice; revoking what it issued"
                );
                revoke_grant_of(oauth, &access, "authorization code reuse");
            }
            return Err(refuse("invalid_grant", "this code was already used"));
        }
        None => {
            return Err(refuse(
                "invalid_grant",
                "unknown or expired code (codes last 60 seconds and work once)",
            ));
        }
    };
    let spend = |issued: Option<TokenId>| {
        lock(&oauth.codes).insert(key.clone(), CodeState::Spent(issued), now);
    };
    spend(None);
    let client = match client {
        Some(client) => client,
        None => OAuthClient {
            client_id: approved.client_id.clone(),
            client_name: approved.client_name.clone(),
            redirect_uris: vec![approved.redirect_uri.clone()],
            created_at: Timestamp::now(),
        },
    };
    if approved.client_id != client.client_id || client_id != client.client_id {
        return Err(refuse(
            "invalid_grant",
            "this code was issued to another client",
        ));
    }
    if approved.redirect_uri != redirect_uri {
        return Err(refuse(
            "invalid_grant",
            "redirect_uri differs from the authorization request's",
        ));
    }
    if let Some(resource) = form.resource.as_deref() {
        let same = approved.resource.as_deref().is_none_or(|r| r == resource);
        if !same || !names_this_server(oauth, resource) {
            return Err(refuse(
                "invalid_target",
                "resource does not name this server or differs from the authorization request's",
            ));
        }
    }
    if !valid_verifier(verifier) || !verifier_matches(verifier, &approved.code_challenge) {
        return Err(refuse(
            "invalid_grant",
            "code_verifier does not match the code_challenge",
        ));
    }
    if let Some(grant_id) = &approved.replaces
        && let Some(grant) = oauth
            .store
            .grant(&client.client_id, grant_id)
            .map_err(unavailable)?
            .filter(|g| g.approver == approved.approver)
    {
        let (tokens, issued) = replace_in_grant(
            oauth,
            &client,
            &grant,
            (&approved.scope, approved.approved_at),
        )?;
        spend(Some(issued));
        return Ok(tokens);
    }
    let grant_id = format!("twg_{}", random_string(16));
    let minted = mint(
        oauth,
        &client,
        (&approved.approver, approved.approved_at),
        &approved.scope,
        &grant_id,
        None,
    )?;
    let refresh_token = random_string(32);
    let grant = Grant::new(
        grant_id.clone(),
        client.client_id.clone(),
        approved.approver.clone(),
        approved.scope.clone(),
        minted.id.clone(),
        &refresh_token,
        minted.refresh_expires_at,
    );
    // A document client is remembered once it holds a grant: refreshes and the command line
    // know it by its URL (its document is fetched again at its next consent page).
    let remembered = if super::cimd::is_document_url(&client.client_id) {
        oauth.store.insert_client(&client)
    } else {
        Ok(())
    };
    if let Err(e) = remembered.and_then(|()| oauth.store.insert_grant(&grant)) {
        // No grant, so no token either.
        revoke_quietly(oauth, &minted.id);
        return Err(unavailable(e));
    }
    spend(Some(minted.id.clone()));
    audit(
        oauth,
        &approved.approver,
        "oauth_token",
        &minted.id,
        json!({ "client_id": client.client_id, "grant_id": grant_id }),
    );
    tracing::info!(client_id = %client.client_id, token = %minted.id, "issued an OAuth access token");
    Ok(Tokens {
        access_token: minted.secret,
        expires_in: minted.expires_in,
        refresh_token: Some(refresh_token),
        scope: scope_string(&approved.scope),
        issued_token_type: None,
    })
}

/// A code approved to add to `grant` (scope step-up): a new child of the approver with the
/// joined scope replaces the grant's access token, which is revoked; the grant's refresh token
/// is replaced too. A session the old token opened carries on with the new one.
fn replace_in_grant(
    oauth: &OAuth,
    client: &OAuthClient,
    grant: &Grant,
    (scope, approved_at): (&ApprovedScope, Timestamp),
) -> Result<(Tokens, TokenId), Refusal> {
    let minted = mint(
        oauth,
        client,
        (&grant.approver, approved_at),
        scope,
        &grant.grant_id,
        None,
    )?;
    let refresh_token = random_string(32);
    if let Err(e) = oauth.store.replace(
        grant,
        scope.clone(),
        minted.id.clone(),
        &refresh_token,
        minted.refresh_expires_at,
        Timestamp::now(),
    ) {
        revoke_quietly(oauth, &minted.id);
        return Err(unavailable(e));
    }
    revoke_quietly(oauth, &grant.access_token);
    audit(
        oauth,
        &grant.approver,
        "oauth_token",
        &minted.id,
        json!({
            "client_id": client.client_id,
            "grant_id": grant.grant_id,
            "replaced_token": grant.access_token,
        }),
    );
    tracing::info!(client_id = %client.client_id, token = %minted.id, "a new consent replaced an OAuth access token");
    let tokens = Tokens {
        access_token: minted.secret,
        expires_in: minted.expires_in,
        refresh_token: Some(refresh_token),
        scope: scope_string(scope),
        issued_token_type: None,
    };
    Ok((tokens, minted.id))
}

fn refresh(oauth: &OAuth, form: &TokenForm) -> Result<Tokens, Refusal> {
    let presented = required(&form.refresh_token, "refresh_token")?;
    let client_id = required(&form.client_id, "client_id")?;
    let client = known_client(oauth, client_id)?;
    let _grants = lock(&oauth.grants);
    let grant = match oauth
        .store
        .grant_by_refresh(presented)
        .map_err(unavailable)?
    {
        None => return Err(refuse("invalid_grant", "unknown refresh token")),
        Some(RefreshLookup::Ended(ended)) => {
            return Err(refuse(
                "invalid_grant",
                format!(
                    "this grant was ended ({}) at {}; ask the person for consent again",
                    ended.reason, ended.ended_at
                ),
            ));
        }
        Some(RefreshLookup::Spent(grant)) => {
            tracing::warn!(client_id = %grant.client_id, grant = %grant.grant_id, "a spent refresh token was presented again; revoking the grant");
            end_grant(oauth, &grant, "refresh token reuse");
            return Err(refuse(
                "invalid_grant",
                "this refresh token was already used; the grant is revoked",
            ));
        }
        Some(RefreshLookup::Current(grant)) => grant,
    };
    if grant.client_id != client.client_id {
        return Err(refuse(
            "invalid_grant",
            "this refresh token was issued to another client",
        ));
    }
    let now = Timestamp::now();
    if grant.refresh_expires_at <= now {
        end_grant(oauth, &grant, "refresh token expired");
        return Err(refuse("invalid_grant", "this refresh token has expired"));
    }
    // An approver that has fallen for good (revoked, expired, deleted) ends the grant, and the
    // connector is told why; a paused one only refuses this refresh (resuming restores it).
    if let Some(why) = approver_fallen(oauth, &grant.approver, grant.last_approved())? {
        end_grant(oauth, &grant, &why);
        return Err(refuse(
            "invalid_grant",
            format!("the grant was ended: {why}; ask the person for consent again"),
        ));
    }
    // A person may have acted on the current access token since the last exchange: revoked
    // or paused, the grant ends (a refresh must not resurrect it); narrowed, the narrowing
    // carries over to the next child. Plain expiry is what refresh is for.
    let current = match oauth.service.get_token(
        &Caller::Owner,
        TokenRef {
            id: grant.access_token.to_string(),
        },
    ) {
        Ok(view) => view,
        Err(e) if e.code == crate::error::ErrorCode::NotFound => {
            end_grant(oauth, &grant, "access token deleted");
            return Err(refuse(
                "invalid_grant",
                "the grant's access token was deleted; the grant is revoked",
            ));
        }
        Err(e) => return Err(unavailable(e.message)),
    };
    if matches!(current.status, Status::Revoked | Status::Paused) {
        let why = format!("access token {}", current.status.as_str());
        end_grant(oauth, &grant, &why);
        return Err(refuse(
            "invalid_grant",
            format!(
                "the grant's access token was {} by a person; the grant is revoked",
                current.status.as_str()
            ),
        ));
    }
    let minted = mint(
        oauth,
        &client,
        (&grant.approver, grant.last_approved()),
        &grant.scope,
        &grant.grant_id,
        Some(&current),
    )?;
    let refresh_token = random_string(32);
    if let Err(e) = oauth.store.rotate(
        &grant,
        minted.id.clone(),
        &refresh_token,
        minted.refresh_expires_at,
        now,
    ) {
        revoke_quietly(oauth, &minted.id);
        return Err(unavailable(e));
    }
    // The previous access token stops now.
    revoke_quietly(oauth, &grant.access_token);
    audit(
        oauth,
        &grant.approver,
        "oauth_refresh",
        &minted.id,
        json!({
            "client_id": client.client_id,
            "grant_id": grant.grant_id,
            "previous_token": grant.access_token,
        }),
    );
    tracing::info!(client_id = %client.client_id, token = %minted.id, "refreshed an OAuth access token");
    Ok(Tokens {
        access_token: minted.secret,
        expires_in: minted.expires_in,
        refresh_token: Some(refresh_token),
        scope: scope_string(&grant.scope),
        issued_token_type: None,
    })
}

/// Why the approver can never mint for an approval given at `approved_at` again (revoked,
/// expired or deleted, itself or through an ancestor; or rotated since: docs/oauth.md), or
/// `None` while it stands or is only paused.
fn approver_fallen(
    oauth: &OAuth,
    approver: &TokenId,
    approved_at: Timestamp,
) -> Result<Option<String>, Refusal> {
    use crate::record::EffectiveStatus as E;
    let view = oauth.service.get_token(
        &Caller::Owner,
        TokenRef {
            id: approver.to_string(),
        },
    );
    match view {
        Ok(view) if view.rotated_at.is_some_and(|r| r >= approved_at) => Ok(Some(
            "the approving token was rotated after it approved this client (its secret may \
             have leaked)"
                .into(),
        )),
        Ok(view) => Ok(match view.effective_status {
            E::Active | E::Paused | E::PausedByAncestor => None,
            E::Revoked | E::RevokedByAncestor => Some("the approving token was revoked".into()),
            E::Expired | E::ExpiredByAncestor => Some("the approving token expired".into()),
        }),
        Err(e) if e.code == crate::error::ErrorCode::NotFound => {
            Ok(Some("the approving token was deleted".into()))
        }
        Err(e) => Err(unavailable(e.message)),
    }
}

/// A child minted for a grant.
struct Minted {
    id: TokenId,
    secret: String,
    expires_in: i64,
    refresh_expires_at: Timestamp,
}

/// Mints the grant's next access token: a child of the approver, created with the approver as
/// the caller, so `create_token` checks the approver's standing when the child commits. On a
/// refresh, `previous` is the current child: the new one gets its scope clamped to the
/// approver's now (so a narrowing of the child survives, a widening of the approver does not
/// reach it), and the uses it had left.
fn mint(
    oauth: &OAuth,
    client: &OAuthClient,
    (approver, approved_at): (&TokenId, Timestamp),
    scope: &ApprovedScope,
    grant_id: &str,
    previous: Option<&TokenView>,
) -> Result<Minted, Refusal> {
    let service = &oauth.service;
    let caller = Caller::Token(approver.clone());
    let cannot = |why: String| refuse("invalid_grant", format!("the approving token {why}"));
    if let Some(why) = approver_fallen(oauth, approver, approved_at)? {
        return Err(refuse("invalid_grant", why));
    }
    service
        .check_standing(approver, None)
        .map_err(|failure| cannot(format!("no longer stands: {failure}")))?;
    if !service.may_call(&caller, "create_token", None) {
        return Err(cannot("may no longer call create_token".to_owned()));
    }
    let view = service
        .get_token(
            &caller,
            TokenRef {
                id: approver.to_string(),
            },
        )
        .map_err(|e| cannot(format!("cannot be read: {}", e.message)))?;
    let now = Timestamp::now();
    let wanted = now
        .plus_seconds(scope.lifetime_seconds)
        .ok_or_else(|| refuse("invalid_grant", "the lifetime is out of range"))?;
    let expires_at = view.expires_at.map_or(wanted, |cap| cap.min(wanted));
    let refresh_wanted = now
        .plus_seconds(REFRESH_LIFETIME_SECONDS)
        .ok_or_else(|| refuse("invalid_grant", "the lifetime is out of range"))?;
    let refresh_expires_at = view
        .expires_at
        .map_or(refresh_wanted, |cap| cap.min(refresh_wanted));
    let mut request = child_request(
        scope,
        &client.client_id,
        &client.client_name,
        grant_id,
        Some(expires_at.to_string()),
    );
    if let Some(previous) = previous {
        carry_over(&mut request, previous, &view);
    }
    let issued = service
        .create_token(&caller, request)
        .map_err(|e| cannot(format!("cannot mint the access token: {}", e.message)))?;
    // A rotation of the approver committed before this child revokes it (see
    // `revoke_approved_connectors`); one committed after is seen here.
    if let Some(why) = approver_fallen(oauth, approver, approved_at)? {
        revoke_quietly(oauth, &issued.record.id);
        return Err(refuse("invalid_grant", why));
    }
    Ok(Minted {
        id: issued.record.id,
        secret: issued.token,
        expires_in: (expires_at.millis() - now.millis()) / 1000,
        refresh_expires_at,
    })
}

/// The scope of a token as shown, in the form attenuation works on.
fn scope_of(view: &TokenView) -> Scope {
    Scope {
        environment: view.environment.clone(),
        buckets: view.buckets.clone(),
        tools: view.tools.clone(),
        read_only: view.read_only,
        admin: view.admin,
        allowed_ips: view.allowed_ips.clone(),
        expires_at: None,
        max_uses: view.remaining_uses.or(view.max_uses),
        rate_limit_per_minute: view.rate_limit_per_minute,
        deny_tools: view.deny_tools.clone(),
    }
}

/// Sets the next child's scope to the current child's clamped to the approver's now (the
/// current child already lies within the grant's approved scope): whatever narrowing a person
/// applied to the child (`scope_token`, `update_token`) carries over. `max_uses` carries the
/// uses the child had left.
fn carry_over(request: &mut CreateToken, previous: &TokenView, approver: &TokenView) {
    let scope = scope_of(previous).clamped_to(&scope_of(approver));
    let strings = |items: &[_]| -> Vec<String> { items.iter().map(ToString::to_string).collect() };
    request.buckets = Some(scope.buckets.clone());
    request.tools = Some(strings(&scope.tools));
    request.deny_tools = Some(strings(&scope.deny_tools));
    request.read_only = scope.read_only.then_some(true);
    request.allowed_ips = (!scope.allowed_ips.is_empty())
        .then(|| scope.allowed_ips.iter().map(ToString::to_string).collect());
    request.max_uses = scope.max_uses.map(|n| n.min(i64::MAX as u64) as i64);
    request.rate_limit_per_minute = scope.rate_limit_per_minute.map(i64::from);
}

/// Revokes a token the OAuth server issued (as the owner: a paused or expired child, or one
/// whose approver fell, must still go). Already revoked or gone is fine.
fn revoke_quietly(oauth: &OAuth, token: &TokenId) {
    let outcome = oauth.service.revoke_token(
        &Caller::Owner,
        RevokeToken {
            id: token.to_string(),
            include_minted: None,
        },
    );
    if let Err(e) = outcome
        && e.code != crate::error::ErrorCode::NotFound
    {
        tracing::warn!(%token, "revoking an OAuth access token failed: {e}");
    }
}

/// Ends a grant: its access token is revoked, its refresh tokens forgotten; audited.
fn end_grant(oauth: &OAuth, grant: &Grant, reason: &str) {
    revoke_quietly(oauth, &grant.access_token);
    if let Err(e) = oauth.store.end_grant(grant, reason, Timestamp::now()) {
        tracing::error!(grant = %grant.grant_id, "removing an OAuth grant failed: {e}");
    }
    audit(
        oauth,
        &grant.approver,
        "oauth_revoke",
        &grant.access_token,
        json!({
            "client_id": grant.client_id,
            "grant_id": grant.grant_id,
            "reason": reason,
        }),
    );
}

/// Ends the grant whose current access token is `access`, if any (else revokes the token).
fn revoke_grant_of(oauth: &OAuth, access: &TokenId, reason: &str) {
    match oauth.store.grant_by_access_token(access) {
        Ok(Some(grant)) => end_grant(oauth, &grant, reason),
        _ => revoke_quietly(oauth, access),
    }
}

fn audit(
    oauth: &OAuth,
    approver: &TokenId,
    action: &str,
    target: &TokenId,
    changes: serde_json::Value,
) {
    if let Err(e) = oauth.service.record_event(
        &Caller::Token(approver.clone()),
        action,
        Some(target),
        changes,
    ) {
        tracing::error!("recording {action} failed: {e}");
    }
}

/// RFC 7009: revokes an access token this server issued through OAuth (ending its grant) or
/// a refresh token's grant. Answers 200 for any well-formed request, known token or not.
pub(super) async fn revoke(State(oauth): State<Arc<OAuth>>, body: Body) -> Response {
    let body = match read_body(body, MAX_FORM_BYTES).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let Ok(form) = serde_urlencoded::from_bytes::<RevokeForm>(&body) else {
        return refuse(
            "invalid_request",
            "the body must be application/x-www-form-urlencoded, each parameter once",
        )
        .response();
    };
    let Some(token) = form.token.filter(|t| !t.is_empty()) else {
        return refuse("invalid_request", "token is required").response();
    };
    let client_id = form.client_id;
    let outcome = blocking(move || revoke_token(&oauth, &token, client_id.as_deref())).await;
    match outcome {
        Ok(()) => json_no_store(StatusCode::OK, json!({})),
        Err(refusal) => refusal.response(),
    }
}

fn revoke_token(oauth: &OAuth, token: &str, client_id: Option<&str>) -> Result<(), Refusal> {
    let _grants = lock(&oauth.grants);
    let store = &oauth.store;
    let grant = if token.starts_with(crate::secret::SECRET_PREFIX) {
        // An access token: only one this server issued through OAuth, and only its current.
        let Ok(hash) = crate::secret::Secret::hash_presented(token) else {
            return Ok(());
        };
        let Some(entry) = oauth
            .service
            .store()
            .hash_entry(&hash)
            .map_err(unavailable)?
        else {
            return Ok(());
        };
        store
            .grant_by_access_token(&entry.id)
            .map_err(unavailable)?
    } else {
        match store.grant_by_refresh(token).map_err(unavailable)? {
            Some(RefreshLookup::Current(grant) | RefreshLookup::Spent(grant)) => Some(grant),
            Some(RefreshLookup::Ended(_)) | None => None,
        }
    };
    if let Some(grant) = grant
        && client_id.is_none_or(|c| c == grant.client_id)
    {
        end_grant(oauth, &grant, "revoked by the client");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifier_matches_only_its_own_challenge() {
        let verifier = "dBjftJeZ4CVP-mJ0rjnWd3xWkUxxhn5TB4PW3yDMPaQ";
        // The challenge computed independently (Python's hashlib and base64).
        let challenge = "6OwEAg9hJ4sa0b5mYiudmpGVJZknHUs-nNuvgFkuR4s";
        assert!(verifier_matches(verifier, challenge));
        assert!(!verifier_matches(
            "dBjftJeZ4CVP-mJ0rjnWd3xWkUxxhn5TB4PW3yDMPaR",
            challenge
        ));
        assert!(valid_verifier(verifier));
        assert!(!valid_verifier("short"));
        assert!(!valid_verifier(&"a".repeat(129)));
        assert!(!valid_verifier(&format!("{}!", "a".repeat(50))));
    }
}
