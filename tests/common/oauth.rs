//! The OAuth flow as a connector and a person drive it (tests/oauth.rs and the OAuth feature
//! tests): registration, the consent page, code and refresh exchanges, over plain HTTP.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Client, Server, bearer, connect_http, ok, raw_initialize};

pub const REDIRECT: &str = "http://127.0.0.1:9/callback";

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn start(extra: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), extra);
    (dir, server)
}

pub fn base(server: &Server) -> String {
    format!("http://{}", server.addr)
}

/// A PKCE verifier and its S256 challenge.
/// The authorization server's metadata (RFC 8414).
pub async fn server_metadata(base: &str) -> Value {
    http()
        .get(format!("{base}/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub fn pkce() -> (String, String) {
    let verifier = format!("verifier-{}", "x".repeat(40)) + &rand_suffix();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

pub fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{}", N.fetch_add(1, Ordering::Relaxed))
}

pub async fn register(base: &str, body: Value) -> (StatusCode, Value) {
    let response = http()
        .post(format!("{base}/oauth/register"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub async fn register_client(base: &str, name: &str) -> String {
    let (status, body) = register(
        base,
        json!({"client_name": name, "redirect_uris": [REDIRECT]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["client_id"].as_str().unwrap().to_owned()
}

pub fn authorize_url(base: &str, params: &[(&str, &str)]) -> String {
    format!(
        "{base}/oauth/authorize?{}",
        serde_urlencoded::to_string(params).unwrap()
    )
}

/// GET of the consent page with a well-formed request plus `extra` parameters.
pub async fn consent_page(
    base: &str,
    client_id: &str,
    challenge: &str,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", REDIRECT),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        ("state", "st4te"),
    ];
    params.extend_from_slice(extra);
    http()
        .get(authorize_url(base, &params))
        .send()
        .await
        .unwrap()
}

/// A consent page as the browser holds it: its hidden fields and the CSRF cookie.
pub struct Page {
    pub request: String,
    pub csrf: String,
    pub cookie: String,
    pub html: String,
}

pub fn field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"));
    let tag = html[start..].split('>').next().unwrap();
    let value = tag.split("value=\"").nth(1).unwrap_or_default();
    value.split('"').next().unwrap().to_owned()
}

pub async fn open_page(
    base: &str,
    client_id: &str,
    challenge: &str,
    extra: &[(&str, &str)],
) -> Page {
    let response = consent_page(base, client_id, challenge, extra).await;
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let html = response.text().await.unwrap();
    Page {
        request: field(&html, "request"),
        csrf: field(&html, "csrf"),
        cookie,
        html,
    }
}

pub async fn post_consent(
    base: &str,
    cookie: Option<&str>,
    form: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = http()
        .post(format!("{base}/oauth/authorize"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(form).unwrap());
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.send().await.unwrap()
}

/// Approves `page` with `approver` and `extra` fields; returns the response.
pub async fn approve(
    base: &str,
    page: &Page,
    approver: &str,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut form = vec![
        ("request", page.request.as_str()),
        ("csrf", page.csrf.as_str()),
        ("approver_token", approver),
        ("decision", "approve"),
    ];
    form.extend_from_slice(extra);
    post_consent(base, Some(&page.cookie), &form).await
}

/// The person's choice on the page shown when the approver already approved the client:
/// `add` (to that grant) or `separate`.
pub async fn decide_again(base: &str, page: &Page, choice: &str) -> reqwest::Response {
    post_consent(
        base,
        Some(&page.cookie),
        &[
            ("request", page.request.as_str()),
            ("csrf", page.csrf.as_str()),
            ("decision", "approve"),
            ("confirm", choice),
        ],
    )
    .await
}

/// The query parameters of a redirect's `Location`, which must lead to `REDIRECT`.
pub fn redirected(response: &reqwest::Response) -> HashMap<String, String> {
    let location = response.headers()["location"].to_str().unwrap();
    let (target, query) = location.split_once('?').unwrap();
    assert_eq!(target, REDIRECT, "{location}");
    serde_urlencoded::from_str(query).unwrap()
}

pub async fn token_request(base: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let response = http()
        .post(format!("{base}/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(form).unwrap())
        .send()
        .await
        .unwrap();
    let status = response.status();
    if status == StatusCode::OK {
        assert_eq!(response.headers()["cache-control"], "no-store");
    }
    (status, response.json().await.unwrap())
}

/// Register-free part of the flow: consent approved by `approver` (with `extra` form fields),
/// then the code exchanged. Returns the token response.
pub async fn grant(base: &str, client_id: &str, approver: &str, extra: &[(&str, &str)]) -> Value {
    let code = approved_code(base, client_id, approver, extra).await;
    let (status, body) = token_request(
        base,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code.0),
            ("redirect_uri", REDIRECT),
            ("client_id", client_id),
            ("code_verifier", &code.1),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// An approved code and its verifier.
pub async fn approved_code(
    base: &str,
    client_id: &str,
    approver: &str,
    extra: &[(&str, &str)],
) -> (String, String) {
    let (verifier, challenge) = pkce();
    let page = open_page(base, client_id, &challenge, &[]).await;
    let mut response = approve(base, &page, approver, extra).await;
    if response.status() == StatusCode::OK {
        // The approver already approved this client: the page asks whether to add to that
        // grant or approve separately. These flows want grants of their own.
        let html = response.text().await.unwrap();
        assert!(html.contains("id=\"added_scope\""), "{html}");
        response = decide_again(base, &page, "separate").await;
    }
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let params = redirected(&response);
    assert_eq!(params["state"], "st4te");
    // RFC 9207: the redirect names the issuer.
    assert_eq!(params["iss"], base);
    (params["code"].clone(), verifier)
}

pub async fn mcp_status(server: &Server, secret: &str) -> u16 {
    raw_initialize(&server.url(), &[("authorization", &bearer(secret))])
        .await
        .status()
        .as_u16()
}

/// Every token record the store holds, whatever its status.
pub async fn token_count(admin: &Client) -> usize {
    let page = ok(admin, "list_tokens", json!({"limit": 100})).await;
    assert_eq!(page["has_more"], json!(false));
    page["records"].as_array().unwrap().len()
}

/// An approver token (a child of the admin) and its id.
pub async fn approver(admin: &Client, tools: Value) -> (String, String) {
    let issued = ok(
        admin,
        "create_token",
        json!({"name": "alice", "tools": tools}),
    )
    .await;
    (
        issued["token"].as_str().unwrap().to_owned(),
        issued["id"].as_str().unwrap().to_owned(),
    )
}

/// The access token of a token response, the id of its token, and its refresh token.
pub async fn granted(server: &Server, tokens: &Value) -> (String, String, String) {
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let me = ok(
        &connect_http(&server.url(), &access).await,
        "whoami",
        json!({}),
    )
    .await;
    (
        access,
        me["id"].as_str().unwrap().to_owned(),
        tokens["refresh_token"].as_str().unwrap().to_owned(),
    )
}

pub async fn refresh_with(base: &str, client_id: &str, refresh: &str) -> (StatusCode, Value) {
    token_request(
        base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", client_id),
        ],
    )
    .await
}

/// RFC 3339 for `seconds` from now.
pub fn time_in(seconds: i64) -> String {
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(seconds);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}
