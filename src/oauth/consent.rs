//! The consent page: plain server-rendered HTML, no scripts and no external assets. Every
//! value that came from a client or a person is escaped (`html_escape::encode_safe` escapes
//! `& < > " ' /`, which is safe in text and in double-quoted attributes). The approver token
//! is never written back into a page.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use html_escape::encode_safe as esc;

/// What the page shows and prefills.
pub(super) struct ConsentView<'a> {
    pub request_id: &'a str,
    pub csrf: &'a str,
    pub client_name: &'a str,
    pub client_id: &'a str,
    /// For a client known by its metadata document: the host that served it.
    pub verified_host: Option<&'a str>,
    pub redirect_uri: &'a str,
    pub public_url: &'a str,
    /// The scope items the client asked for, as sent.
    pub requested: &'a [String],
    /// Items of the requested scope this server does not know (granted nothing).
    pub ignored: &'a [String],
    pub buckets: &'a str,
    pub tools: &'a str,
    pub read_only: bool,
    /// Whether "Manage tokens" is ticked (never by default).
    pub manage: bool,
    pub lifetime_seconds: &'a str,
    pub error: Option<&'a str>,
    /// Approval as the browser's console session (`console_consent`): HTML built and escaped
    /// there, shown above the paste form.
    pub console: &'a str,
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;\
padding:0 1rem;line-height:1.5;color:#222}h1{font-size:1.4rem}code{background:#f3f3f3;\
padding:0 .2rem}label{display:block;margin-top:.8rem;font-weight:600}input[type=text],\
input[type=password],input[type=number]{width:100%;padding:.4rem;box-sizing:border-box}\
.hint{font-weight:400;color:#555;font-size:.9rem}#error{background:#fde8e8;border:1px solid \
#c33;padding:.6rem;margin:1rem 0}.who{background:#f6f6f6;padding:.6rem;border-radius:4px}\
button{margin-top:1.2rem;margin-right:.6rem;padding:.5rem 1.2rem;font-size:1rem}";

/// The host (and port) a redirect URI leads to, which the person should recognise.
pub(super) fn redirect_host(uri: &str) -> String {
    url::Url::parse(uri)
        .ok()
        .and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            })
        })
        .unwrap_or_default()
}

/// The origin the browser is sent to after the form: it must be allowed as a form action,
/// since browsers apply `form-action` to the redirect that follows a submission.
fn redirect_origin(uri: &str) -> Option<String> {
    let origin = url::Url::parse(uri).ok()?.origin();
    origin.is_tuple().then(|| origin.ascii_serialization())
}

/// Headers every OAuth HTML page carries: no framing, no caching, no scripts, no referrer to
/// other sites. `same-origin`, not `no-referrer`: with `no-referrer` browsers post the form
/// with `Origin: null`, which the origin check refuses.
fn html(status: StatusCode, body: String, form_target: Option<&str>) -> Response {
    let form_action = match form_target.and_then(redirect_origin) {
        Some(origin) => format!("'self' {origin}"),
        None => "'self'".to_owned(),
    };
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; form-action {form_action}; \
         frame-ancestors 'none'; base-uri 'none'"
    );
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// A page that only explains (unknown client, unregistered redirect URI, bad CSRF token…):
/// never a redirect, since the redirect target is what could not be trusted.
pub(super) fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>tokenwarden: {title}</title><style>{STYLE}</style></head><body>\
         <h1>{title}</h1><p id=\"error\">{message}</p></body></html>",
        title = esc(title),
        message = esc(message),
    );
    html(status, body, None)
}

pub(super) fn page(view: &ConsentView<'_>) -> Response {
    let requested = if view.requested.is_empty() {
        "<p>It asks for no particular scope: by default it gets what the approving token holds, \
         narrowed by your choices below.</p>"
            .to_owned()
    } else {
        let items: String = view
            .requested
            .iter()
            .map(|s| format!("<li><code>{}</code></li>", esc(s)))
            .collect();
        format!("<p>It asks for this scope:</p><ul>{items}</ul>")
    };
    let ignored = if view.ignored.is_empty() {
        String::new()
    } else {
        let items: Vec<String> = view
            .ignored
            .iter()
            .map(|s| format!("<code>{}</code>", esc(s)))
            .collect();
        format!(
            "<p class=\"hint\">Scope items this server does not know, which grant nothing: {}</p>",
            items.join(" ")
        )
    };
    let error = view
        .error
        .map(|e| format!("<p id=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>tokenwarden: authorize {name}</title><style>{STYLE}</style></head><body>\
<h1>Authorize <bdi id=\"client_name\">{name}</bdi>?</h1>\
<div class=\"who\"><p><strong><bdi id=\"client_name_again\">{name}</bdi></strong> \
{verified} \
(client <code>{client_id}</code>) asks for a token to use the MCP server at <code>{public_url}</code>.</p>\
<p>After you decide, your browser goes to <strong id=\"redirect_host\">{host}</strong> \
(<code>{redirect}</code>).</p>{requested}{ignored}</div>{error}{console}\
<form method=\"post\" action=\"/oauth/authorize\" id=\"consent\">\
<input type=\"hidden\" name=\"request\" value=\"{request}\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<label for=\"approver_token\">Approver token <span class=\"hint\">(a tokenwarden token, \
<code>mcp_…</code>; the client gets a new child of it, never this token, which is not stored)</span></label>\
<input type=\"password\" name=\"approver_token\" id=\"approver_token\" autocomplete=\"off\" required>\
<label for=\"buckets\">Buckets <span class=\"hint\">(space-separated; empty: all the approver holds)</span></label>\
<input type=\"text\" name=\"buckets\" id=\"buckets\" value=\"{buckets}\">\
<label for=\"tools\">Tools <span class=\"hint\">(space-separated names or patterns such as <code>list_*</code>; \
empty: every tool the approver may call, except those that manage tokens unless you tick below)</span></label>\
<input type=\"text\" name=\"tools\" id=\"tools\" value=\"{tools}\">\
<label><input type=\"checkbox\" name=\"read_only\" id=\"read_only\" value=\"1\"{checked}> \
Read-only <span class=\"hint\">(only tools marked read-only)</span></label>\
<label><input type=\"checkbox\" name=\"manage\" id=\"manage\" value=\"1\"{manage}> \
Manage tokens <span class=\"hint\">(let it call {management}: mint its own tokens and change, \
pause or revoke those it reaches; unticked, it can call none of them)</span></label>\
<label for=\"lifetime_seconds\">Access token lifetime in seconds <span class=\"hint\">(60 to 86400; \
never past the approver's own expiry; the client renews it while the approver stands)</span></label>\
<input type=\"number\" name=\"lifetime_seconds\" id=\"lifetime_seconds\" min=\"60\" max=\"86400\" value=\"{lifetime}\">\
<button type=\"submit\" name=\"decision\" value=\"approve\" id=\"approve\">Approve</button>\
<button type=\"submit\" name=\"decision\" value=\"deny\" id=\"deny\" formnovalidate>Deny</button>\
</form></body></html>",
        name = esc(view.client_name),
        verified = match view.verified_host {
            Some(host) => format!(
                "<span class=\"hint\">from</span> <strong id=\"verified_host\">{}</strong> \
                 <span class=\"hint\">(verified: its description was fetched from there; \
                 the name is still the client's own)</span>",
                esc(host)
            ),
            None => "<span class=\"hint\" id=\"unverified\">(unverified name: the client \
                     chose it itself)</span>"
                .to_owned(),
        },
        client_id = esc(view.client_id),
        public_url = esc(view.public_url),
        host = esc(&redirect_host(view.redirect_uri)),
        redirect = esc(view.redirect_uri),
        request = esc(view.request_id),
        csrf = esc(view.csrf),
        buckets = esc(view.buckets),
        tools = esc(view.tools),
        checked = if view.read_only { " checked" } else { "" },
        manage = if view.manage { " checked" } else { "" },
        management = crate::service::MANAGEMENT_TOOLS
            .iter()
            .map(|t| format!("<code>{t}</code>"))
            .collect::<Vec<_>>()
            .join(", "),
        lifetime = esc(view.lifetime_seconds),
        console = view.console,
    );
    html(StatusCode::OK, body, Some(view.redirect_uri))
}

/// What the confirmation of an approval that adds to an existing grant shows.
pub(super) struct ConfirmView<'a> {
    pub request_id: &'a str,
    pub csrf: &'a str,
    pub client_name: &'a str,
    pub redirect_uri: &'a str,
    /// What the grant allows now, what approving adds, what it no longer says.
    pub now: &'a [String],
    pub added: &'a [String],
    pub removed: &'a [String],
}

fn list(id: &str, items: &[String], empty: &str) -> String {
    if items.is_empty() {
        return format!("<p id=\"{id}\" class=\"hint\">{}</p>", esc(empty));
    }
    let items: String = items
        .iter()
        .map(|i| format!("<li>{}</li>", esc(i)))
        .collect();
    format!("<ul id=\"{id}\">{items}</ul>")
}

/// The second step of a consent that adds to a grant the same approver gave this client
/// (scope step-up): what the grant allows now and what approving adds. Confirming replaces the
/// client's current token with one of the joined scope; the approver is not pasted again (the
/// server kept its id, never its secret, with the pending request).
pub(super) fn confirm_page(view: &ConfirmView<'_>) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>tokenwarden: add to what {name} may do?</title><style>{STYLE}</style></head><body>\
<h1>Add to what <bdi id=\"client_name\">{name}</bdi> may do?</h1>\
<div class=\"who\"><p>This token already approved this client. <strong>Add</strong> adds to that \
grant: the client's current access token is replaced by one that may do both (what a client \
asking for more scope needs). <strong>Separate</strong> approves only the new choice as a grant \
of its own, leaving the current one alone (the same client on another device).</p>\
<p>It may now use:</p>{now}<p><strong>New with this approval:</strong></p>{added}{removed}</div>\
<form method=\"post\" action=\"/oauth/authorize\" id=\"consent\">\
<input type=\"hidden\" name=\"request\" value=\"{request}\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<input type=\"hidden\" name=\"decision\" value=\"approve\">\
<button type=\"submit\" name=\"confirm\" value=\"add\" id=\"add\">Add</button>\
<button type=\"submit\" name=\"confirm\" value=\"separate\" id=\"separate\">Separate</button>\
</form><form method=\"post\" action=\"/oauth/authorize\">\
<input type=\"hidden\" name=\"request\" value=\"{request}\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<button type=\"submit\" name=\"decision\" value=\"deny\" id=\"deny\">Deny</button>\
</form></body></html>",
        name = esc(view.client_name),
        now = list("current_scope", view.now, "nothing"),
        added = list("added_scope", view.added, "nothing new"),
        removed = if view.removed.is_empty() {
            String::new()
        } else {
            format!(
                "<p>No longer:</p>{}",
                list("removed_scope", view.removed, "")
            )
        },
        request = esc(view.request_id),
        csrf = esc(view.csrf),
    );
    html(StatusCode::OK, body, Some(view.redirect_uri))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(response: Response) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt
            .block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn every_interpolated_value_is_escaped() {
        let evil = "<script>alert(1)</script>\"'&/";
        let requested = vec![evil.to_owned()];
        let view = ConsentView {
            request_id: evil,
            csrf: evil,
            client_name: evil,
            client_id: evil,
            verified_host: Some(evil),
            redirect_uri: "https://example.com/cb?a=\"><script>",
            public_url: evil,
            requested: &requested,
            ignored: &requested,
            buckets: evil,
            tools: evil,
            read_only: true,
            manage: false,
            lifetime_seconds: evil,
            error: Some(evil),
            console: "",
        };
        let response = page(&view);
        assert_eq!(
            response.headers()[header::X_FRAME_OPTIONS],
            HeaderValue::from_static("DENY")
        );
        let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(
            csp.contains("form-action 'self' https://example.com;"),
            "{csp}"
        );
        let html = body(response);
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("\"'&/"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
    }
}
