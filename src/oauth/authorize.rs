//! `/oauth/authorize`: GET checks the request and shows the consent page; POST takes the
//! person's decision.
//!
//! Nothing is redirected until the client and its redirect URI are known to match exactly (an
//! unknown client or an unregistered URI gets a plain 400 page), so the endpoint is no open
//! redirect. Approval needs the approver token's secret, which arrives only in the POST body,
//! is checked through the service (authentication, the right to call `create_token`, and every
//! check `create_token` would make for the narrowed scope) and is then forgotten: the code
//! remembers the approver's id and the approved scope, and the token is minted at exchange.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::consent::{self, ConsentView, error_page};
use super::pending::Opener;
use super::token::{ApprovedCode, CodeState, code_key};
use super::{MAX_FORM_BYTES, OAuth, blocking, client_ip, lock, random_string, read_body};
use crate::service::requests::CreateToken;
use crate::service::{Caller, MANAGEMENT_TOOLS};
use crate::store::oauth::{ApprovedScope, OAuthClient};

/// The CSRF cookie's name is this plus the start of the pending request's id, so two consent
/// tabs keep their own cookies.
pub(super) const CSRF_COOKIE: &str = "tw_oauth_csrf_";
const MAX_STATE_LEN: usize = 1_000;
const MAX_SCOPE_LEN: usize = 2_000;
pub(super) const MIN_LIFETIME_SECONDS: u64 = 60;
pub(super) const MAX_LIFETIME_SECONDS: u64 = 86_400;

/// A consent page waiting for its decision (in memory, 10 minutes).
#[derive(Clone)]
pub(super) struct PendingRequest {
    pub(super) client_id: String,
    pub(super) client_name: String,
    /// The host of the client's metadata document, for a client that names itself by one.
    verified_host: Option<String>,
    redirect_uri: String,
    state: Option<String>,
    code_challenge: String,
    resource: Option<String>,
    requested: Vec<String>,
    ignored: Vec<String>,
    /// Prefills of the form, from the requested scope.
    pub(super) buckets: Vec<String>,
    pub(super) tools: Vec<String>,
    pub(super) read_only: bool,
    pub(super) csrf: String,
    /// Set once an approval would add to an existing grant: what the person confirms.
    confirming: Option<Confirming>,
}

#[derive(Deserialize)]
struct AuthorizeParams {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    state: Option<String>,
    scope: Option<String>,
    resource: Option<String>,
}

#[derive(Deserialize)]
struct ConsentForm {
    request: Option<String>,
    csrf: Option<String>,
    approver_token: Option<String>,
    buckets: Option<String>,
    tools: Option<String>,
    read_only: Option<String>,
    manage: Option<String>,
    lifetime_seconds: Option<String>,
    decision: Option<String>,
    /// On the page shown when the approver already approved this client: `add` (to that
    /// grant: scope step-up) or `separate` (a grant of its own, e.g. another device).
    confirm: Option<String>,
}

/// A redirect to a registered URI with `params` added to its query (and `iss`, RFC 9207).
fn redirect_to(
    status: StatusCode,
    redirect_uri: &str,
    params: &[(&str, &str)],
    issuer: &str,
) -> Response {
    let Ok(mut url) = url::Url::parse(redirect_uri) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Bad redirect URI",
            "The registered redirect URI cannot be used.",
        );
    };
    {
        let mut query = url.query_pairs_mut();
        for (k, v) in params {
            query.append_pair(k, v);
        }
        query.append_pair("iss", issuer);
    }
    let mut response = status.into_response();
    if let Ok(location) = HeaderValue::from_str(url.as_str()) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A fault of an authorization request whose client and redirect URI are right: a 400 page,
/// not a redirect (RFC 9700 §4.11.2: since anyone may register a client, redirecting errors to
/// its URI would make this server an open redirector). The code is shown for the person.
fn request_fault(error: &str, description: &str) -> Response {
    error_page(
        StatusCode::BAD_REQUEST,
        "Bad authorization request",
        &format!(
            "The client sent a request this server cannot accept ({error}: {description}). \
             Nothing was authorized; start again from your client."
        ),
    )
}

/// Whether `resource` (RFC 8707) names this server: its MCP endpoint or its public URL.
pub(super) fn names_this_server(oauth: &OAuth, resource: &str) -> bool {
    let resource = resource.trim_end_matches('/');
    resource == oauth.config.resource() || resource == oauth.config.public_url
}

/// A code challenge is the base64url SHA-256 of a verifier: exactly 43 characters.
fn valid_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Splits a requested scope into what the form can prefill and what it ignores.
pub(super) fn split_scope(
    scope: &str,
) -> (Vec<String>, Vec<String>, Vec<String>, bool, Vec<String>) {
    let requested: Vec<String> = scope.split_whitespace().map(str::to_owned).collect();
    let (mut buckets, mut tools, mut ignored, mut read_only) = (vec![], vec![], vec![], false);
    for item in &requested {
        if item == "read_only" {
            read_only = true;
        } else if let Some(b) = item.strip_prefix("bucket:").filter(|b| !b.is_empty()) {
            buckets.push(b.to_owned());
        } else if let Some(t) = item.strip_prefix("tool:").filter(|t| !t.is_empty()) {
            tools.push(t.to_owned());
        } else {
            ignored.push(item.clone());
        }
    }
    (requested, buckets, tools, read_only, ignored)
}

fn client_of(oauth: &OAuth, client_id: &str) -> Result<Option<OAuthClient>, Response> {
    oauth.store.client(client_id).map_err(|e| {
        tracing::error!("reading OAuth clients failed: {e}");
        error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again later",
            "The server cannot read its OAuth clients now.",
        )
    })
}

pub(super) async fn show(
    State(oauth): State<Arc<OAuth>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let ip = client_ip(peer);
    let peer = crate::rules::cidr::peer_key(peer.ip());
    let query = query.unwrap_or_default();
    let Ok(params) = serde_urlencoded::from_str::<AuthorizeParams>(&query) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Bad authorization request",
            "The request's parameters cannot be read (each may appear once).",
        );
    };
    let Some(client_id) = params.client_id.as_deref().filter(|c| !c.is_empty()) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Bad authorization request",
            "The request names no client_id.",
        );
    };
    // A client_id that is an https URL is a client metadata document: fetched and checked
    // (`cimd`); any other is a registered client.
    let mut verified_host = None;
    let client = if super::cimd::is_document_url(client_id) {
        match oauth.documents.client(client_id, peer).await {
            Ok(verified) => {
                verified_host = Some(verified.host);
                Some(verified.client)
            }
            Err(why) => {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    "Client not verified",
                    &format!(
                        "This client names itself by a metadata document this server cannot use: {why}. Nothing was authorized."
                    ),
                );
            }
        }
    } else {
        let oauth = Arc::clone(&oauth);
        let client_id = client_id.to_owned();
        match blocking(move || client_of(&oauth, &client_id)).await {
            Ok(client) => client,
            Err(response) => return response,
        }
    };
    let Some(client) = client else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Unknown client",
            "This client is not registered here (it may have been removed). Start again from \
             your client.",
        );
    };
    let Some(redirect_uri) = params
        .redirect_uri
        .as_deref()
        .filter(|uri| client.redirect_uris.iter().any(|r| r == uri))
    else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Unregistered redirect URI",
            "The request's redirect_uri is missing or is not one this client registered, so \
             this server will not send your browser there.",
        );
    };
    let state = params.state.as_deref();
    if state.is_some_and(|s| s.len() > MAX_STATE_LEN) {
        return request_fault("invalid_request", "state is too long");
    }
    let refuse = request_fault;
    if params.response_type.as_deref() != Some("code") {
        return refuse(
            "unsupported_response_type",
            "only response_type=code is supported",
        );
    }
    match params.code_challenge_method.as_deref() {
        Some("S256") => {}
        Some(_) => {
            return refuse(
                "invalid_request",
                "code_challenge_method must be S256 (plain is not accepted)",
            );
        }
        None => {
            return refuse(
                "invalid_request",
                "PKCE is required: send code_challenge and code_challenge_method=S256",
            );
        }
    }
    let Some(challenge) = params
        .code_challenge
        .as_deref()
        .filter(|c| valid_challenge(c))
    else {
        return refuse(
            "invalid_request",
            "code_challenge must be the base64url SHA-256 of the code verifier (43 characters)",
        );
    };
    if let Some(resource) = params.resource.as_deref()
        && !names_this_server(&oauth, resource)
    {
        return refuse(
            "invalid_target",
            "resource does not name this server's MCP endpoint",
        );
    }
    let scope = params.scope.as_deref().unwrap_or_default();
    if scope.len() > MAX_SCOPE_LEN {
        return refuse("invalid_scope", "scope is too long");
    }
    // Only a valid request is charged: junk cannot use up a person's pages.
    if let Err(wait) = lock(&oauth.consent_pages).take(peer, Instant::now()) {
        tracing::warn!(client_ip = %peer, "refused a consent page: rate limit");
        return too_many_pages(wait);
    }
    let (requested, buckets, tools, read_only, ignored) = split_scope(scope);
    let pending = PendingRequest {
        client_id: client.client_id.clone(),
        client_name: client.client_name.clone(),
        verified_host,
        redirect_uri: redirect_uri.to_owned(),
        state: params.state.clone(),
        code_challenge: challenge.to_owned(),
        resource: params.resource.clone(),
        requested,
        ignored,
        buckets,
        tools,
        read_only,
        csrf: random_string(32),
        confirming: None,
    };
    let request_id = random_string(32);
    let console = super::console_consent::section(&oauth, &headers, ip, &request_id, &pending);
    let mut response = render_as_asked(&oauth, &request_id, &pending, None, &console);
    let secure = if oauth.config.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{}={}; Path=/oauth; HttpOnly; SameSite=Strict; Max-Age=600{secure}",
        csrf_cookie(&request_id),
        pending.csrf
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    let opener = Opener {
        client_id: pending.client_id.clone(),
        peer,
    };
    let opened = lock(&oauth.pending).open(request_id, opener, pending, Instant::now());
    if let Err(why) = opened {
        lock(&oauth.consent_pages).refund(peer);
        tracing::warn!(client_ip = %peer, client_id = %client.client_id,
            "refused a consent page: {why:?}");
        return too_many_pages(Duration::from_secs(60));
    }
    response
}

/// The consent page of `pending` with the form filled as the client asked (the request's
/// scope, the default lifetime, "Manage tokens" unticked), with `error` and the `console`
/// section.
pub(super) fn render_as_asked(
    oauth: &OAuth,
    request_id: &str,
    pending: &PendingRequest,
    error: Option<&str>,
    console: &str,
) -> Response {
    render(
        oauth,
        request_id,
        pending,
        &pending.buckets.join(" "),
        &pending.tools.join(" "),
        (pending.read_only, false),
        &oauth.config.token_lifetime_seconds.to_string(),
        error,
        console,
    )
}
/// 429 for a consent page beyond the rate or the pending bounds: open pages stay open.
fn too_many_pages(wait: Duration) -> Response {
    let mut response = error_page(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many sign-in requests",
        "Too many consent pages were opened from this address or for this client. Wait a \
         minute, then start again from your client.",
    );
    let seconds = wait.as_secs().max(1).to_string();
    if let Ok(value) = HeaderValue::from_str(&seconds) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

#[allow(clippy::too_many_arguments)]
pub(super) fn render(
    oauth: &OAuth,
    request_id: &str,
    pending: &PendingRequest,
    buckets: &str,
    tools: &str,
    (read_only, manage): (bool, bool),
    lifetime: &str,
    error: Option<&str>,
    console: &str,
) -> Response {
    consent::page(&ConsentView {
        request_id,
        csrf: &pending.csrf,
        client_name: &pending.client_name,
        client_id: &pending.client_id,
        verified_host: pending.verified_host.as_deref(),
        redirect_uri: &pending.redirect_uri,
        public_url: &oauth.config.public_url,
        requested: &pending.requested,
        ignored: &pending.ignored,
        buckets,
        tools,
        read_only,
        manage,
        lifetime_seconds: lifetime,
        error,
        console,
    })
}

/// The CSRF cookie of one pending request (its id is base64url: safe in a cookie name).
pub(super) fn csrf_cookie(request_id: &str) -> String {
    let prefix: String = request_id.chars().take(16).collect();
    format!("{CSRF_COOKIE}{prefix}")
}

pub(super) fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Equality of two strings in time independent of where they differ (BLAKE3 hashes compare
/// in constant time).
pub(super) fn same_secret(a: &str, b: &str) -> bool {
    blake3::hash(a.as_bytes()) == blake3::hash(b.as_bytes())
}

fn words(field: Option<&str>) -> Option<Vec<String>> {
    let words: Vec<String> = field
        .unwrap_or_default()
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    (!words.is_empty()).then_some(words)
}

pub(super) async fn decide(
    State(oauth): State<Arc<OAuth>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match read_body(body, MAX_FORM_BYTES).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let bad = |message: &str| error_page(StatusCode::BAD_REQUEST, "Consent refused", message);
    let Ok(form) = serde_urlencoded::from_bytes::<ConsentForm>(&body) else {
        return bad("The form cannot be read. Start again from your client.");
    };
    let request_id = form.request.as_deref().unwrap_or_default();
    let Some(pending) = lock(&oauth.pending)
        .get(request_id, Instant::now())
        .cloned()
    else {
        return bad(
            "This consent request is unknown or has expired (they last 10 minutes). Start \
             again from your client.",
        );
    };
    let csrf_ok = form
        .csrf
        .as_deref()
        .is_some_and(|c| same_secret(c, &pending.csrf))
        && cookie_value(&headers, &csrf_cookie(request_id))
            .is_some_and(|c| same_secret(c, &pending.csrf));
    if !csrf_ok {
        tracing::warn!(client_ip = %peer.ip(), "refused a consent form: CSRF token missing or wrong");
        return bad(
            "The form's CSRF token is missing or does not match this browser's. Reload the \
             consent page from your client and try again.",
        );
    }
    let state = pending.state.as_deref();
    match form.decision.as_deref() {
        Some("deny") => {
            if lock(&oauth.pending)
                .take(request_id, Instant::now())
                .is_none()
            {
                return bad("This consent request was already decided.");
            }
            tracing::info!(client_id = %pending.client_id, "consent denied");
            let mut params = vec![
                ("error", "access_denied"),
                ("error_description", "the person denied the request"),
            ];
            if let Some(state) = state {
                params.push(("state", state));
            }
            return redirect_to(
                StatusCode::SEE_OTHER,
                &pending.redirect_uri,
                &params,
                &oauth.config.public_url,
            );
        }
        Some("approve") if form.confirm.is_some() => {
            let adds = form.confirm.as_deref() == Some("add");
            return confirm(
                Arc::clone(&oauth),
                request_id,
                pending,
                client_ip(peer),
                adds,
            )
            .await;
        }
        Some("approve") => {}
        _ => return bad("The form must say approve or deny."),
    }

    let buckets_field = form.buckets.clone().unwrap_or_default();
    let tools_field = form.tools.clone().unwrap_or_default();
    let read_only = form.read_only.as_deref().is_some_and(|v| !v.is_empty());
    let manage = form.manage.as_deref().is_some_and(|v| !v.is_empty());
    let lifetime_field = form
        .lifetime_seconds
        .clone()
        .filter(|l| !l.trim().is_empty())
        .unwrap_or_else(|| oauth.config.token_lifetime_seconds.to_string());
    let again = |message: &str| {
        render(
            &oauth,
            request_id,
            &pending,
            &buckets_field,
            &tools_field,
            (read_only, manage),
            &lifetime_field,
            Some(message),
            "",
        )
    };
    let lifetime = match lifetime_field.trim().parse::<u64>() {
        Ok(l) if (MIN_LIFETIME_SECONDS..=MAX_LIFETIME_SECONDS).contains(&l) => l,
        _ => {
            return again(&format!(
                "The lifetime must be a whole number of seconds from {MIN_LIFETIME_SECONDS} \
                 to {MAX_LIFETIME_SECONDS}."
            ));
        }
    };
    let tools = words(Some(&tools_field));
    if !manage
        && let Some(named) = tools
            .iter()
            .flatten()
            .find(|t| MANAGEMENT_TOOLS.contains(&t.as_str()))
    {
        return again(&format!(
            "{named} manages tokens: tick \"Manage tokens\" to grant it, or remove it from Tools."
        ));
    }
    let secret = form.approver_token.clone().unwrap_or_default();
    if secret.trim().is_empty() {
        return again("Paste a tokenwarden token (mcp_…) to approve.");
    }
    let scope = ApprovedScope {
        buckets: words(Some(&buckets_field)),
        tools,
        read_only,
        lifetime_seconds: lifetime,
        manage,
    };
    let checked = {
        let oauth = Arc::clone(&oauth);
        let scope = scope.clone();
        let client_name = pending.client_name.clone();
        let client_id = pending.client_id.clone();
        let ip = client_ip(peer);
        blocking(move || {
            check_approver(&oauth, secret.trim(), ip, &scope, &client_id, &client_name)
        })
        .await
    };
    let approver = match checked {
        Ok(approver) => approver,
        Err(message) => return again(&message),
    };
    grant_or_confirm(&oauth, request_id, &pending, (approver, scope), again).await
}

/// Approval by `approver`, checked: a code for `scope`, or, when the same approver already
/// approved this client, its confirmation page first (scope step-up: the person sees what is
/// new). `again` shows the form once more with a message. (The paste form and approval as a
/// console session alike.)
pub(super) async fn grant_or_confirm(
    oauth: &Arc<OAuth>,
    request_id: &str,
    pending: &PendingRequest,
    (approver, scope): (crate::secret::TokenId, ApprovedScope),
    again: impl Fn(&str) -> Response,
) -> Response {
    let bad = |message: &str| error_page(StatusCode::BAD_REQUEST, "Consent refused", message);
    // A second consent of the same approver for the same client adds to its grant (scope
    // step-up): the person sees what is new before it takes effect.
    let existing = {
        let oauth = Arc::clone(oauth);
        let (client_id, approver) = (pending.client_id.clone(), approver.clone());
        blocking(move || oauth.store.grant_of_approver(&client_id, &approver)).await
    };
    let existing = match existing {
        Ok(existing) => existing,
        Err(e) => {
            tracing::error!("reading OAuth grants failed: {e}");
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again later",
                "The server cannot read its OAuth grants now.",
            );
        }
    };
    // The grant's token changed since it was minted (someone narrowed, limited or paused
    // it): adding to the grant would mint from the grant's scope and undo that, so this
    // consent makes a grant of its own instead, and the changed token stays as it is.
    let changed = match &existing {
        None => false,
        Some(current) => {
            let oauth = Arc::clone(oauth);
            let id = current.access_token.to_string();
            blocking(move || {
                oauth
                    .service
                    .get_token(&Caller::Owner, crate::service::requests::TokenRef { id })
                    .is_ok_and(|view| view.updated_at > view.created_at)
            })
            .await
        }
    };
    let Some(current) = existing.filter(|_| !changed) else {
        let checked_at = crate::timestamp::Timestamp::now();
        return issue_code(
            oauth,
            request_id,
            pending,
            (approver, checked_at),
            scope,
            None,
        )
        .await;
    };
    let joined = current.scope.joined(&scope);
    let checked = {
        let oauth = Arc::clone(oauth);
        let joined = joined.clone();
        let (client_id, client_name) = (pending.client_id.clone(), pending.client_name.clone());
        let caller = Caller::Token(approver.clone());
        blocking(move || {
            oauth
                .service
                .check_create_token(
                    &caller,
                    child_request(&joined, &client_id, &client_name, "", None),
                )
                .map_err(|e| format!("This token cannot grant that: {}.", e.message))
        })
        .await
    };
    if let Err(message) = checked {
        return again(&message);
    }
    let confirming = Confirming {
        approver,
        checked_at: crate::timestamp::Timestamp::now(),
        scope: joined,
        chosen: scope,
        current: current.scope.clone(),
        grant_id: current.grant_id.clone(),
    };
    let view = confirm_view(pending, &confirming);
    match lock(&oauth.pending).get_mut(request_id, Instant::now()) {
        Some(open) => open.confirming = Some(confirming),
        None => return bad("This consent request was already decided."),
    }
    consent::confirm_page(&consent::ConfirmView {
        request_id,
        csrf: &pending.csrf,
        client_name: &pending.client_name,
        redirect_uri: &pending.redirect_uri,
        now: &view.0,
        added: &view.1,
        removed: &view.2,
    })
}

/// A consent that would add to an existing grant, shown for confirmation (in memory, with its
/// pending request): the approver's id and what was chosen, never its secret.
#[derive(Clone)]
pub(super) struct Confirming {
    approver: crate::secret::TokenId,
    /// When the approver's secret (or session) was last checked: the approval's time, so a
    /// rotation between this page and the person's choice ends what the choice approves.
    checked_at: crate::timestamp::Timestamp,
    /// The grant's scope once confirmed: the current one joined with the new choice.
    scope: ApprovedScope,
    /// The new choice alone (for a separate grant).
    chosen: ApprovedScope,
    current: ApprovedScope,
    grant_id: String,
}

/// What a grant allows, in the consent page's words, one item each.
fn described(scope: &ApprovedScope) -> Vec<String> {
    let mut items = Vec::new();
    match &scope.buckets {
        None => items.push("every bucket the approver holds".to_owned()),
        Some(buckets) => items.extend(buckets.iter().map(|b| format!("bucket {b}"))),
    }
    match &scope.tools {
        None => items.push("every tool the approver may call".to_owned()),
        Some(tools) => items.extend(tools.iter().map(|t| format!("tool {t}"))),
    }
    if scope.manage {
        items.push("managing tokens".to_owned());
    }
    items.push(if scope.read_only {
        "read-only tools only".to_owned()
    } else {
        "tools that change things".to_owned()
    });
    items
}

/// (what the grant allows now, what approving adds, what it no longer says).
fn confirm_view(
    _pending: &PendingRequest,
    c: &Confirming,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (now, after) = (described(&c.current), described(&c.scope));
    let added = after.iter().filter(|i| !now.contains(i)).cloned().collect();
    let removed = now.iter().filter(|i| !after.contains(i)).cloned().collect();
    (now, added, removed)
}

/// The person decided on a consent by an approver that already approved this client: `adds`
/// to that grant (the code replaces its token at exchange, with the joined scope), or a
/// separate grant of the new choice. The approver is checked again first (its standing, its
/// right to call `create_token`, counted, and the scope).
async fn confirm(
    oauth: Arc<OAuth>,
    request_id: &str,
    pending: PendingRequest,
    ip: std::net::IpAddr,
    adds: bool,
) -> Response {
    let Some(mut confirming) = pending.confirming.clone() else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Consent refused",
            "There is nothing to confirm on this consent request. Start again from your client.",
        );
    };
    if !adds {
        confirming.scope = confirming.chosen.clone();
    }
    let checked = {
        let oauth = Arc::clone(&oauth);
        let c = confirming.clone();
        let (client_id, client_name) = (pending.client_id.clone(), pending.client_name.clone());
        blocking(move || {
            let caller = Caller::Token(c.approver.clone());
            let service = &oauth.service;
            service.check_standing(&c.approver, Some(ip)).map_err(|f| {
                crate::secret::redact_secrets(&format!("This token cannot approve: {f}."))
            })?;
            service
                .authorize_call(&caller, "create_token", None, Some(ip))
                .map_err(|e| format!("This token cannot approve: {}.", e.message))?;
            service
                .check_create_token(
                    &caller,
                    child_request(&c.scope, &client_id, &client_name, "", None),
                )
                .map_err(|e| format!("This token cannot grant that: {}.", e.message))
        })
        .await
    };
    if let Err(message) = checked {
        return error_page(StatusCode::FORBIDDEN, "Consent refused", &message);
    }
    issue_code(
        &oauth,
        request_id,
        &pending,
        (confirming.approver, confirming.checked_at),
        confirming.scope,
        adds.then_some(confirming.grant_id),
    )
    .await
}

/// Approval: the pending request is decided, a code is issued for `scope` (replacing the
/// grant `replaces` at exchange, if any), the approval audited, the browser sent back.
/// (For the paste form and for approval as a console session alike.)
pub(super) async fn issue_code(
    oauth: &Arc<OAuth>,
    request_id: &str,
    pending: &PendingRequest,
    (approver, approved_at): (crate::secret::TokenId, crate::timestamp::Timestamp),
    scope: ApprovedScope,
    replaces: Option<String>,
) -> Response {
    if lock(&oauth.pending)
        .take(request_id, Instant::now())
        .is_none()
    {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Consent refused",
            "This consent request was already decided.",
        );
    }
    let code = random_string(32);
    let approved = ApprovedCode {
        client_id: pending.client_id.clone(),
        client_name: pending.client_name.clone(),
        redirect_uri: pending.redirect_uri.clone(),
        resource: pending.resource.clone(),
        code_challenge: pending.code_challenge.clone(),
        approver: approver.clone(),
        scope: scope.clone(),
        replaces: replaces.clone(),
        approved_at,
    };
    lock(&oauth.codes).insert(
        code_key(&code),
        CodeState::Issued(Box::new(approved)),
        Instant::now(),
    );
    let audited = {
        let oauth = Arc::clone(oauth);
        let approver = approver.clone();
        let mut changes = json!({
            "client_id": pending.client_id,
            "client_name": pending.client_name,
            "redirect_uri": pending.redirect_uri,
            "buckets": scope.buckets,
            "tools": scope.tools,
            "read_only": scope.read_only,
            "manage": scope.manage,
            "lifetime_seconds": scope.lifetime_seconds,
        });
        if let Some(grant) = &replaces {
            changes["adds_to_grant"] = json!(grant);
        }
        blocking(move || {
            oauth.service.record_event(
                &Caller::Token(approver.clone()),
                "oauth_approve",
                Some(&approver),
                changes,
            )
        })
        .await
    };
    if let Err(e) = audited {
        lock(&oauth.codes).take(&code_key(&code), Instant::now());
        tracing::error!("recording a consent failed: {e}");
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again later",
            "The server cannot record the approval now.",
        );
    }
    tracing::info!(client_id = %pending.client_id, approver = %approver, "consent approved");
    let mut params = vec![("code", code.as_str())];
    if let Some(state) = pending.state.as_deref() {
        params.push(("state", state));
    }
    redirect_to(
        StatusCode::SEE_OTHER,
        &pending.redirect_uri,
        &params,
        &oauth.config.public_url,
    )
}

/// Whether the pasted secret may approve `scope`: it authenticates (from this address), it may
/// call `create_token` (counted like such a call), and `create_token` would accept the child.
/// The message is shown on the page; it never holds the secret.
fn check_approver(
    oauth: &OAuth,
    secret: &str,
    ip: std::net::IpAddr,
    scope: &ApprovedScope,
    client_id: &str,
    client_name: &str,
) -> Result<crate::secret::TokenId, String> {
    let approver = oauth
        .service
        .authenticate(secret, Some(ip))
        .map_err(|failure| {
            crate::secret::redact_secrets(&format!("This token cannot approve: {failure}."))
        })?;
    may_approve(oauth, approver, ip, scope, client_id, client_name)
}

/// Whether an authenticated token may approve `scope`: it may call `create_token` (counted
/// like such a call), and `create_token` would accept the child.
pub(super) fn may_approve(
    oauth: &OAuth,
    approver: crate::secret::TokenId,
    ip: std::net::IpAddr,
    scope: &ApprovedScope,
    client_id: &str,
    client_name: &str,
) -> Result<crate::secret::TokenId, String> {
    let service = &oauth.service;
    let caller = Caller::Token(approver.clone());
    service
        .authorize_call(&caller, "create_token", None, Some(ip))
        .map_err(|e| format!("This token cannot approve: {}.", e.message))?;
    service
        .check_create_token(
            &caller,
            child_request(scope, client_id, client_name, "", None),
        )
        .map_err(|e| format!("This token cannot grant that: {}.", e.message))?;
    Ok(approver)
}

/// The `create_token` request for a grant's child (at approval, the same request is checked
/// without an expiry, which the exchange computes).
pub(super) fn child_request(
    scope: &ApprovedScope,
    client_id: &str,
    client_name: &str,
    grant_id: &str,
    expires_at: Option<String>,
) -> CreateToken {
    let mut metadata = serde_json::Map::new();
    metadata.insert("oauth_client_id".into(), json!(client_id));
    metadata.insert("oauth_client_name".into(), json!(client_name));
    if !grant_id.is_empty() {
        metadata.insert("oauth_grant_id".into(), json!(grant_id));
    }
    let name: String = format!("OAuth: {client_name}").chars().take(128).collect();
    CreateToken {
        name,
        description: Some(format!(
            "Issued through OAuth to client {client_id}; renewed on refresh."
        )),
        buckets: scope.buckets.clone(),
        tools: scope.tools.clone(),
        read_only: scope.read_only.then_some(true),
        deny_tools: (!scope.manage)
            .then(|| MANAGEMENT_TOOLS.iter().map(|t| (*t).to_owned()).collect()),
        expires_at,
        metadata: Some(metadata),
        ..CreateToken::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_items_split_into_prefills_and_ignored() {
        let (requested, buckets, tools, read_only, ignored) =
            split_scope("read_only bucket:docs tool:list_* claudeai bucket: tool:");
        assert_eq!(requested.len(), 6);
        assert_eq!(buckets, ["docs"]);
        assert_eq!(tools, ["list_*"]);
        assert!(read_only);
        assert_eq!(ignored, ["claudeai", "bucket:", "tool:"]);
    }

    #[test]
    fn challenges_are_43_base64url_characters() {
        assert!(valid_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
        assert!(!valid_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-c"
        ));
        assert!(!valid_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw+cM"
        ));
    }
}
