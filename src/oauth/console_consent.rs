//! Approval as the browser's console session (SPEC §13): a person signed in to `/console`
//! approves a connector with one click, no secret pasted, choosing buckets and tools with
//! checkboxes within the approver's scope, what the client asked for pre-selected.
//!
//! The session cookie is SameSite=Strict, so it comes along when the consent page is opened
//! directly (a desktop client opening the browser) but not after a redirect from another
//! site; there the page offers a button that posts back to this server, which does bring the
//! cookie, and shows the same choice. Approving needs what the paste form needs (the pending
//! request's CSRF cookie and field) plus the session, checked whole as on `/v1` (its token
//! still authenticates; the form comes from this origin), then the same checks and the same
//! code as the paste form (`authorize::may_approve`, `authorize::grant_or_confirm`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use html_escape::encode_safe as esc;

use super::authorize::{
    MAX_LIFETIME_SECONDS, MIN_LIFETIME_SECONDS, PendingRequest, cookie_value, csrf_cookie,
    grant_or_confirm, may_approve, render_as_asked, same_secret,
};
use super::consent::error_page;
use super::{MAX_FORM_BYTES, OAuth, blocking, client_ip, lock, read_body};
use crate::secret::TokenId;
use crate::service::Caller;
use crate::service::requests::WhoAmI;
use crate::store::oauth::ApprovedScope;

/// What the console lends the consent page: its sessions, and the gateway's buckets to offer
/// when the approver holds them all.
#[derive(Clone)]
pub struct ConsoleLink {
    pub sessions: Arc<crate::console::Sessions>,
    pub gateway: Option<Arc<crate::gateway::Gateway>>,
}

/// The token of the browser's console session, if the request carries a live one (it is
/// authenticated from its stored hash; a session whose token stopped authenticating ends).
/// For showing the page only: acting needs [`approve`]'s whole check.
fn session_token(oauth: &OAuth, headers: &HeaderMap, ip: IpAddr) -> Option<TokenId> {
    let link = oauth.console.as_ref()?;
    link.sessions.cookie(headers)?;
    link.sessions
        .token_of(&oauth.service, headers, ip)
        .ok()
        .map(|(token, _)| token)
}

/// The approval section of the consent page for request `request_id`: one-click approval when
/// the request carries a console session, else a button that brings the session along.
pub(super) fn section(
    oauth: &OAuth,
    headers: &HeaderMap,
    ip: IpAddr,
    request_id: &str,
    pending: &PendingRequest,
) -> String {
    if oauth.console.is_none() {
        return String::new();
    }
    match session_token(oauth, headers, ip) {
        Some(token) => one_click(oauth, &token, request_id, pending),
        None => format!(
            "<form method=\"post\" action=\"/oauth/authorize/console\" id=\"use-console\">\
<input type=\"hidden\" name=\"request\" value=\"{request}\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<p class=\"hint\">Signed in to the tokenwarden console in this browser? \
<button type=\"submit\" name=\"decision\" value=\"show\" id=\"use-session\">Approve with my console session</button></p>\
</form><h2>Or approve with a token</h2>",
            request = esc(request_id),
            csrf = esc(&pending.csrf),
        ),
    }
}

/// The checkbox form: the approver's own buckets and tool patterns (the gateway's buckets when
/// it holds `*`), plus whatever the client asked for; the request pre-selected (or, when it
/// asked for nothing, all the approver holds).
fn one_click(oauth: &OAuth, token: &TokenId, request_id: &str, pending: &PendingRequest) -> String {
    let Ok(WhoAmI::Token(me)) = oauth.service.whoami(&Caller::Token(token.clone())) else {
        return String::new();
    };
    let mut buckets: Vec<String> = if me.buckets.iter().any(|b| b == "*") {
        let mut names = vec!["*".to_owned()];
        if let Some(gateway) = oauth.console.as_ref().and_then(|l| l.gateway.as_ref()) {
            names.extend(gateway.buckets().into_iter().map(|b| b.name));
        }
        names
    } else {
        me.buckets.clone()
    };
    // The approver's patterns, then each gateway tool they let it call (in buckets it holds).
    let mut tools: Vec<String> = me.tools.iter().map(ToString::to_string).collect();
    if let Some(gateway) = oauth.console.as_ref().and_then(|l| l.gateway.as_ref()) {
        let holds_bucket = |b: &str| me.buckets.iter().any(|own| own == "*" || own == b);
        for tool in gateway.catalogue().iter() {
            if holds_bucket(&tool.bucket)
                && crate::rules::pattern::any_matches(&me.tools, &tool.name)
                && !tools.contains(&tool.name)
            {
                tools.push(tool.name.clone());
            }
        }
    }
    for asked in &pending.buckets {
        if !buckets.contains(asked) {
            buckets.push(asked.clone());
        }
    }
    for asked in &pending.tools {
        if !tools.contains(asked) {
            tools.push(asked.clone());
        }
    }
    let boxes = |kind: &str, items: &[String], asked: &[String], all: &[String]| -> String {
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let checked = if asked.contains(item) || (asked.is_empty() && all.contains(item)) {
                    " checked"
                } else {
                    ""
                };
                let shown = if item == "*" {
                    "all (*)".to_owned()
                } else {
                    item.clone()
                };
                format!(
                    "<label class=\"check\"><input type=\"checkbox\" name=\"{kind}\" id=\"{kind}-{i}\" \
value=\"{value}\"{checked}> <code>{shown}</code></label>",
                    value = esc(item),
                    shown = esc(&shown),
                )
            })
            .collect()
    };
    let own_buckets: Vec<String> = me.buckets.clone();
    let own_tools: Vec<String> = me.tools.iter().map(ToString::to_string).collect();
    format!(
        "<form method=\"post\" action=\"/oauth/authorize/console\" id=\"console-approve\" class=\"who\">\
<h2>Approve as <bdi id=\"approver_name\">{name}</bdi></h2>\
<p class=\"hint\">Signed in to the console as <code>{id}</code>. The client gets a new child of this \
token, never more than it holds.</p>\
<input type=\"hidden\" name=\"request\" value=\"{request}\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<fieldset><legend>Buckets</legend>{bucket_boxes}</fieldset>\
<fieldset><legend>Tools</legend>{tool_boxes}</fieldset>\
<label class=\"check\"><input type=\"checkbox\" name=\"read_only\" id=\"console_read_only\" value=\"1\"{read_only}> \
Read-only <span class=\"hint\">(only tools marked read-only)</span></label>\
<label class=\"check\"><input type=\"checkbox\" name=\"manage\" id=\"console_manage\" value=\"1\"> \
Manage tokens <span class=\"hint\">(let it call the tools that mint and change tokens; unticked, \
they are denied to it whatever is ticked above)</span></label>\
<label for=\"console_lifetime\">Access token lifetime in seconds <span class=\"hint\">(60 to 86400)</span></label>\
<input type=\"number\" name=\"lifetime_seconds\" id=\"console_lifetime\" min=\"60\" max=\"86400\" value=\"{lifetime}\">\
<button type=\"submit\" name=\"decision\" value=\"approve\" id=\"approve-as-session\">Approve as {name}</button>\
</form><h2>Or approve with another token</h2>",
        name = esc(&me.name),
        id = esc(me.id.as_str()),
        request = esc(request_id),
        csrf = esc(&pending.csrf),
        bucket_boxes = boxes("bucket", &buckets, &pending.buckets, &own_buckets),
        tool_boxes = boxes("tool", &tools, &pending.tools, &own_tools),
        read_only = if pending.read_only || me.read_only {
            " checked"
        } else {
            ""
        },
        lifetime = oauth.config.token_lifetime_seconds,
    )
}

/// `POST /oauth/authorize/console`: `decision=show` shows the page again with the session's
/// choice (the post brings the SameSite=Strict cookie); `decision=approve` approves as the
/// session's token with the boxes ticked.
pub(super) async fn approve(
    State(oauth): State<Arc<OAuth>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ip = client_ip(peer);
    let body = match read_body(body, MAX_FORM_BYTES).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let bad = |message: &str| error_page(StatusCode::BAD_REQUEST, "Consent refused", message);
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let one = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let many = |name: &str| -> Vec<String> {
        form.iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let request_id = one("request").unwrap_or_default().to_owned();
    let Some(pending) = lock(&oauth.pending)
        .get(&request_id, Instant::now())
        .cloned()
    else {
        return bad(
            "This consent request is unknown or has expired (they last 10 minutes). Start \
             again from your client.",
        );
    };
    let csrf_ok = one("csrf").is_some_and(|c| same_secret(c, &pending.csrf))
        && cookie_value(&headers, &csrf_cookie(&request_id))
            .is_some_and(|c| same_secret(c, &pending.csrf));
    if !csrf_ok {
        tracing::warn!(client_ip = %ip, "refused a console consent: CSRF token missing or wrong");
        return bad(
            "The form's CSRF token is missing or does not match this browser's. Reload the \
             consent page from your client and try again.",
        );
    }
    let page = |error: Option<&str>, console: &str| {
        render_as_asked(&oauth, &request_id, &pending, error, console)
    };
    let Some(link) = oauth.console.as_ref() else {
        return page(Some("This server has no console."), "");
    };
    let checked = link
        .sessions
        .check(&oauth.service, &Method::POST, &headers, ip, true);
    let approver = match checked {
        Ok((token, _)) => token,
        Err(crate::console::Refusal::Forged(why)) => {
            tracing::warn!(client_ip = %ip, "refused a console consent: {why}");
            return bad("This form did not come from this server's own page.");
        }
        Err(_) => {
            return page(
                Some(
                    "This browser has no console session (or it has ended): sign in at /console \
                     in another tab and press the button again, or paste a token below.",
                ),
                &section(&oauth, &headers, ip, &request_id, &pending),
            );
        }
    };
    if one("decision") != Some("approve") {
        return page(None, &one_click(&oauth, &approver, &request_id, &pending));
    }
    let again = |message: &str| {
        page(
            Some(message),
            &one_click(&oauth, &approver, &request_id, &pending),
        )
    };
    let (buckets, tools) = (many("bucket"), many("tool"));
    if buckets.is_empty() || tools.is_empty() {
        return again("Tick at least one bucket and one tool (or all).");
    }
    let lifetime = match one("lifetime_seconds")
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().parse::<u64>())
    {
        None => oauth.config.token_lifetime_seconds,
        Some(Ok(l)) if (MIN_LIFETIME_SECONDS..=MAX_LIFETIME_SECONDS).contains(&l) => l,
        Some(_) => {
            return again(&format!(
                "The lifetime must be a whole number of seconds from {MIN_LIFETIME_SECONDS} \
                 to {MAX_LIFETIME_SECONDS}."
            ));
        }
    };
    let manage = one("manage").is_some_and(|v| !v.is_empty());
    if !manage
        && let Some(named) = tools
            .iter()
            .find(|t| crate::service::MANAGEMENT_TOOLS.contains(&t.as_str()))
    {
        return again(&format!(
            "{named} manages tokens: tick \"Manage tokens\" to grant it, or untick it."
        ));
    }
    let scope = ApprovedScope {
        buckets: Some(buckets),
        tools: Some(tools),
        read_only: one("read_only").is_some_and(|v| !v.is_empty()),
        lifetime_seconds: lifetime,
        manage,
    };
    let checked = {
        let oauth = Arc::clone(&oauth);
        let scope = scope.clone();
        let (client_id, client_name) = (pending.client_id.clone(), pending.client_name.clone());
        let approver = approver.clone();
        blocking(move || may_approve(&oauth, approver, ip, &scope, &client_id, &client_name)).await
    };
    match checked {
        Ok(approver) => {
            grant_or_confirm(&oauth, &request_id, &pending, (approver, scope), again).await
        }
        Err(message) => again(&message),
    }
}
