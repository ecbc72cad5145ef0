//! The web console (SPEC §13) through the real binary: its security properties over plain HTTP
//! (headers, cookie flags, CSRF and origin refusals, the sign-in rate limit, sessions ending
//! with their tokens), then the whole console in headless Chromium (tests/js/console_browser.mjs,
//! driven by playwright-core as tests/oauth_clients.rs drives the consent page). Screenshots of
//! every page go to target/console-screenshots/.

mod common;

use std::path::Path;

use common::installs::{npm_prefix, script_beside, target_dir};
use common::{Server, bearer, raw_initialize};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use tempfile::TempDir;

const NPM_PACKAGES: &[&str] = &["playwright-core@1.65.1", "mcp-remote@0.15.1"];
const NPM_PRESENT: &[&str] = &["playwright-core/package.json", "mcp-remote/dist/proxy.js"];
const CHROMIUM: &str = "/usr/bin/chromium";
const FIXTURE: &str = env!("CARGO_BIN_EXE_tokenwarden-test-upstream");

/// A browser of the console's own origin, as plain HTTP: the session cookie it holds and the
/// CSRF token its page keeps.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
    csrf: Option<String>,
}

impl Browser {
    fn new(server: &Server) -> Browser {
        Browser {
            http: reqwest::Client::new(),
            base: format!("http://{}", server.addr),
            cookie: None,
            csrf: None,
        }
    }

    /// The headers the console's script sends: its origin, the cookie, the CSRF token.
    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("origin", HeaderValue::from_str(&self.base).unwrap());
        if let Some(cookie) = &self.cookie {
            headers.insert("cookie", HeaderValue::from_str(cookie).unwrap());
        }
        if let Some(csrf) = &self.csrf {
            headers.insert("x-csrf-token", HeaderValue::from_str(csrf).unwrap());
        }
        headers
    }

    async fn sign_in_raw(&self, body: &str, headers: HeaderMap) -> reqwest::Response {
        self.http
            .post(format!("{}/console/session", self.base))
            .headers(headers)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    /// Signs in with `secret`; returns the `Set-Cookie` header as sent.
    async fn sign_in(&mut self, secret: &str) -> String {
        let mut headers = HeaderMap::new();
        headers.insert("origin", HeaderValue::from_str(&self.base).unwrap());
        let response = self
            .sign_in_raw(&json!({ "token": secret }).to_string(), headers)
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let set_cookie = response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .to_owned();
        let body: Value = response.json().await.unwrap();
        self.cookie = Some(set_cookie.split(';').next().unwrap().to_owned());
        self.csrf = Some(body["csrf"].as_str().unwrap().to_owned());
        set_cookie
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: HeaderMap,
        body: Option<Value>,
    ) -> (StatusCode, Value, HeaderMap) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .headers(headers);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
            headers,
        )
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (status, body, _) = self
            .send(reqwest::Method::GET, path, self.headers(), None)
            .await;
        (status, body)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (status, body, _) = self
            .send(reqwest::Method::POST, path, self.headers(), Some(body))
            .await;
        (status, body)
    }
}

/// A token minted by `parent` over REST: (id, secret).
async fn mint(server: &Server, parent: &str, body: Value) -> (String, String) {
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/tokens", server.addr))
        .header("authorization", bearer(parent))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let record: Value = response.json().await.unwrap();
    (
        record["id"].as_str().unwrap().to_owned(),
        record["token"].as_str().unwrap().to_owned(),
    )
}

async fn admin_post(server: &Server, path: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1{path}", server.addr))
        .header("authorization", bearer(server.admin()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{path}");
    response.json().await.unwrap()
}

async fn token_names(server: &Server) -> Vec<String> {
    let response = reqwest::Client::new()
        .get(format!("http://{}/v1/tokens?limit=100", server.addr))
        .header("authorization", bearer(server.admin()))
        .send()
        .await
        .unwrap();
    let page: Value = response.json().await.unwrap();
    page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect()
}

fn start() -> (TempDir, Server) {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[]);
    (dir, server)
}

#[tokio::test]
async fn the_console_is_served_locked_down_and_signs_in_to_a_strict_httponly_cookie() {
    let (_dir, server) = start();
    let mut browser = Browser::new(&server);
    for (path, content_type) in [
        ("/console", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let response = reqwest::get(format!("{}{path}", browser.base))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self';"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type),
            "{path}"
        );
        // Nothing is fetched from elsewhere, and nothing builds HTML from strings.
        let text = response.text().await.unwrap();
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "{path}"
        );
        assert!(!text.contains("innerHTML"), "{path}");
    }

    let set_cookie = browser.sign_in(server.admin()).await;
    assert!(set_cookie.starts_with("tw_console="), "{set_cookie}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(flag), "{flag}: {set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain http: {set_cookie}");
    assert!(!set_cookie.contains("mcp_"), "the cookie is not the secret");
    let (status, me) = browser.get("/v1/whoami").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["admin"], true);
    // The log is written behind the answer: wait for the sign-in's line.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !server.stderr().contains("console sign-in") && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let log = server.stderr();
    assert!(
        log.contains(&format!("web console at http://{}/console", server.addr)),
        "the start says where the console is: {log}"
    );
    assert!(log.contains("console sign-in"), "{log}");
    assert_eq!(
        log.matches(&server.admin()[4..]).count(),
        1,
        "the admin secret is in the log besides the first start's banner"
    );

    // Behind an https public URL: Secure, and the __Host- prefix.
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &["--public-url", "https://tw.example.com"]);
    let browser = Browser::new(&server);
    let mut headers = HeaderMap::new();
    headers.insert("origin", HeaderValue::from_static("https://tw.example.com"));
    let response = browser
        .sign_in_raw(&json!({ "token": server.admin() }).to_string(), headers)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let set_cookie = response.headers()["set-cookie"].to_str().unwrap();
    assert!(set_cookie.starts_with("__Host-tw_console="), "{set_cookie}");
    assert!(set_cookie.contains("; Secure"), "{set_cookie}");
}

/// The cookie alone does nothing: every `/v1` request of a session needs its CSRF token and
/// this server's origin, and a refused change changes nothing.
#[tokio::test]
async fn the_cookie_without_the_csrf_token_and_origin_is_refused() {
    let (_dir, server) = start();
    let mut browser = Browser::new(&server);
    browser.sign_in(server.admin()).await;
    let before = token_names(&server).await;
    let cookie = browser.cookie.clone().unwrap();
    let csrf = browser.csrf.clone().unwrap();
    let own = browser.base.clone();
    let with = |pairs: &[(&'static str, &str)]| {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    };
    // The cookie alone never yields the CSRF token: cookies reach every port of a host, so
    // another server on this machine may hold the cookie (a review took a session that way).
    let (status, body, _) = browser
        .send(
            reqwest::Method::GET,
            "/console/session",
            with(&[("cookie", &cookie)]),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(!body.to_string().contains(&csrf), "{body}");
    let (status, body) = browser.get("/console/session").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("csrf").is_none(), "{body}");
    let refused = [
        (
            "no CSRF token",
            with(&[("cookie", &cookie), ("origin", &own)]),
        ),
        (
            "a wrong CSRF token",
            with(&[
                ("cookie", &cookie),
                ("origin", &own),
                ("x-csrf-token", "guess"),
            ]),
        ),
        (
            "another origin of the same site",
            with(&[
                ("cookie", &cookie),
                ("origin", "http://127.0.0.1:1"),
                ("x-csrf-token", &csrf),
            ]),
        ),
        (
            "no origin on a change",
            with(&[("cookie", &cookie), ("x-csrf-token", &csrf)]),
        ),
        (
            "a request from another site",
            with(&[
                ("cookie", &cookie),
                ("origin", &own),
                ("x-csrf-token", &csrf),
                ("sec-fetch-site", "same-site"),
            ]),
        ),
    ];
    for (what, headers) in refused {
        let (status, problem, _) = browser
            .send(
                reqwest::Method::POST,
                "/v1/tokens",
                headers,
                Some(json!({"name": "forged"})),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {problem}");
        assert_eq!(problem["code"], "forbidden", "{what}: {problem}");
    }
    // A read without the CSRF token is refused too (reads spend uses).
    let (status, _, _) = browser
        .send(
            reqwest::Method::GET,
            "/v1/tokens",
            with(&[("cookie", &cookie)]),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Another site entirely does not get past the origin check in front of everything.
    let (status, _, _) = browser
        .send(
            reqwest::Method::POST,
            "/v1/tokens",
            with(&[
                ("cookie", &cookie),
                ("origin", "https://evil.example"),
                ("x-csrf-token", &csrf),
            ]),
            Some(json!({"name": "forged"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = browser
        .send(
            reqwest::Method::DELETE,
            "/console/session",
            with(&[("cookie", &cookie), ("origin", "http://127.0.0.1:1")]),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a foreign sign-out");
    assert_eq!(token_names(&server).await, before, "nothing was created");

    // Signing in from another origin (a login CSRF) is refused as well.
    let response = browser
        .sign_in_raw(
            &json!({ "token": server.admin() }).to_string(),
            with(&[("origin", "http://127.0.0.1:1")]),
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // The page's own request passes.
    let (status, created) = browser.post("/v1/tokens", json!({"name": "real"})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
}

#[tokio::test]
async fn sign_in_attempts_are_rate_limited_and_bad_bodies_refused() {
    let (_dir, server) = start();
    let browser = Browser::new(&server);
    let own = || {
        let mut headers = HeaderMap::new();
        headers.insert("origin", HeaderValue::from_str(&browser.base).unwrap());
        headers
    };
    let bad_bodies: [(&str, StatusCode); 5] = [
        ("not json", StatusCode::BAD_REQUEST),
        ("[\"mcp_x\"]", StatusCode::BAD_REQUEST),
        (
            r#"{"token": "mcp_x", "admin": true}"#,
            StatusCode::BAD_REQUEST,
        ),
        (r#"{"token": 7}"#, StatusCode::BAD_REQUEST),
        (r#"{"token": "mcp_abc"}"#, StatusCode::UNAUTHORIZED),
    ];
    for (body, expected) in bad_bodies {
        let response = browser.sign_in_raw(body, own()).await;
        assert_eq!(response.status(), expected, "{body}");
    }
    let huge = json!({ "token": "x".repeat(5000) }).to_string();
    assert_eq!(
        browser.sign_in_raw(&huge, own()).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let wrong = json!({ "token": format!("mcp_{}", "x".repeat(36)) }).to_string();
    for _ in 0..4 {
        let status = browser.sign_in_raw(&wrong, own()).await.status();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Ten attempts spent: the next is refused, even with the right secret.
    let right = json!({ "token": server.admin() }).to_string();
    let response = browser.sign_in_raw(&right, own()).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=6).contains(&retry), "{retry}");
    // The server still serves everyone else.
    assert!(
        reqwest::get(format!("{}/healthz", browser.base))
            .await
            .unwrap()
            .status()
            .is_success()
    );
}

/// A session is its token: pausing, rotating past the grace or revoking the token ends it
/// (and it stays ended, though the token be resumed); signing out ends it too.
#[tokio::test]
async fn a_session_ends_when_its_token_stops_authenticating_or_on_sign_out() {
    let (_dir, server) = start();
    for ending in ["pause", "rotate", "revoke", "sign-out"] {
        let (id, secret) = mint(&server, server.admin(), json!({"name": ending})).await;
        let mut browser = Browser::new(&server);
        browser.sign_in(&secret).await;
        let (status, me) = browser.get("/v1/whoami").await;
        assert_eq!(status, StatusCode::OK, "{ending}: {me}");
        assert_eq!(me["id"], id.as_str());
        match ending {
            "rotate" => {
                admin_post(
                    &server,
                    &format!("/tokens/{id}/rotate"),
                    json!({"grace_seconds": 0}),
                )
                .await;
            }
            "sign-out" => {
                let (status, _, headers) = browser
                    .send(
                        reqwest::Method::DELETE,
                        "/console/session",
                        browser.headers(),
                        None,
                    )
                    .await;
                assert_eq!(status, StatusCode::OK);
                assert!(
                    headers["set-cookie"]
                        .to_str()
                        .unwrap()
                        .contains("Max-Age=0")
                );
            }
            action => {
                admin_post(&server, &format!("/tokens/{id}/{action}"), json!({})).await;
            }
        }
        let (status, problem, headers) = browser
            .send(reqwest::Method::GET, "/v1/whoami", browser.headers(), None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{ending}: {problem}");
        assert!(
            headers["set-cookie"]
                .to_str()
                .unwrap()
                .contains("Max-Age=0"),
            "{ending}: the cookie is cleared"
        );
        if ending == "pause" {
            assert!(
                problem["detail"].as_str().unwrap().contains("paused"),
                "{problem}"
            );
            admin_post(&server, &format!("/tokens/{id}/resume"), json!({})).await;
        }
        let (status, _) = browser.get("/v1/whoami").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{ending}: it stays ended");
        let (status, _) = browser.get("/console/session").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{ending}");
    }
}

/// The whole console in headless Chromium, against a server with one upstream (the `notes`
/// bucket), as a person who just started it: the banner's admin token signs in, mints and
/// revokes; a non-admin sees its own tree; its session ends when it is revoked; CSRF attempts
/// from another origin fail; keyboard only; 375 px wide; a connector approved with one click
/// as the console session (directly, and after another site's link).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_headless_browser() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: apt-get install -y chromium (as .ci/run does)"
    );
    let prefix = npm_prefix("npm-oauth", NPM_PACKAGES, NPM_PRESENT);
    let script = script_beside(&prefix, "js/console_browser.mjs");
    let screenshots = target_dir("console-screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    let dir = TempDir::new().unwrap();
    let upstreams = dir.path().join("upstreams.json");
    std::fs::write(
        &upstreams,
        json!({"mcpServers": {"notes": {"command": FIXTURE}}}).to_string(),
    )
    .unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--upstreams", upstreams.to_str().unwrap()],
    );
    let (team_id, team) = mint(
        &server,
        server.admin(),
        json!({"name": "team", "parent": "none", "buckets": ["notes"]}),
    )
    .await;
    let (team_child_id, _) = mint(&server, &team, json!({"name": "team-child"})).await;
    let base = format!("http://{}", server.addr);

    let stderr_file = dir.path().join("browser.log");
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .arg(&base)
        .arg(server.admin())
        .arg(&team)
        .arg(&screenshots)
        .stderr(std::fs::File::create(&stderr_file).unwrap())
        .kill_on_drop(true)
        .output();
    let said = || std::fs::read_to_string(&stderr_file).unwrap_or_default();
    // A step that never ends fails the test with what the script said so far; never a hang.
    let node = tokio::time::timeout(std::time::Duration::from_secs(240), run)
        .await
        .unwrap_or_else(|_| panic!("the browser test did not end within 240 s:\n{}", said()))
        .expect("run node");
    let stdout = String::from_utf8_lossy(&node.stdout).into_owned();
    assert!(
        node.status.success(),
        "the browser test failed:\n{stdout}\n{}",
        said()
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));

    // The subtree revoked in the browser is refused over MCP.
    for secret in ["child_secret", "grandchild_secret"] {
        let secret = result[secret].as_str().unwrap();
        let status = raw_initialize(&server.url(), &[("authorization", &bearer(secret))])
            .await
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{secret}");
    }
    // The connectors approved with one click are children of the admin with the bucket the
    // client asked for.
    let admin_id = common::connect_http(&server.url(), server.admin()).await;
    let me = common::ok(&admin_id, "whoami", json!({})).await;
    admin_id.cancel().await.unwrap();
    for key in ["consent_access_token", "consent_via_link_token"] {
        let connector = common::connect_http(&server.url(), result[key].as_str().unwrap()).await;
        let issued = common::ok(&connector, "whoami", json!({})).await;
        assert_eq!(issued["parent_id"], me["id"], "{key}: {issued}");
        assert_eq!(issued["buckets"], json!(["notes"]), "{key}: {issued}");
        connector.cancel().await.unwrap();
    }
    // The non-admin saw exactly its own tree.
    let mut seen: Vec<&str> = result["team_tree"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    seen.sort();
    let mut expected = vec![team_id.as_str(), team_child_id.as_str()];
    expected.sort();
    assert_eq!(seen, expected);
    // The forged requests created nothing; the form was refused by the session check.
    let names = token_names(&server).await;
    assert!(
        !names.iter().any(|n| n.starts_with("csrf")),
        "a CSRF attempt created a token: {names:?}"
    );
    assert!(
        result["csrf_form_answer"]
            .as_str()
            .unwrap()
            .contains("forbidden"),
        "{result}"
    );
    assert!(names.iter().any(|n| n == "typed-by-keyboard"), "{names:?}");
    for page in [
        "console-sign-in",
        "console-tree",
        "console-token",
        "console-create",
        "console-created",
        "console-scope",
        "console-confirm-revoke",
        "console-audit",
        "console-access",
        "console-buckets",
        "console-oauth",
        "console-tree-non-admin",
        "console-session-ended",
        "console-375-tree",
        "console-consent-one-click",
        "console-consent-from-another-site",
    ] {
        assert!(
            screenshots.join(format!("{page}.png")).exists(),
            "{page}.png"
        );
    }
    let log = server.stderr();
    assert_eq!(
        log.matches(&server.admin()[4..]).count(),
        1,
        "only in the banner"
    );
    for secret in [
        &team,
        result["child_secret"].as_str().unwrap(),
        result["grandchild_secret"].as_str().unwrap(),
    ] {
        assert!(!log.contains(&secret[4..]), "a secret is in the log");
    }
}

/// Approving as the console session on the consent page: the pending request's CSRF proof and
/// the session (from this origin) are both needed, what the session's token does not hold is
/// refused on the page, and the right form redirects with a code.
#[tokio::test]
async fn consent_as_the_console_session_needs_the_session_the_csrf_proof_and_the_scope() {
    let (_dir, server) = start();
    let base = format!("http://{}", server.addr);
    let (_, narrow) = mint(
        &server,
        server.admin(),
        json!({"name": "narrow", "parent": "none", "buckets": ["docs"],
               "tools": ["create_token", "whoami"]}),
    )
    .await;
    let mut browser = Browser::new(&server);
    browser.sign_in(&narrow).await;
    let session = browser.cookie.clone().unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect_uri = "http://127.0.0.1:9/callback";
    let client: Value = http
        .post(format!("{base}/oauth/register"))
        .json(&json!({"client_name": "c", "redirect_uris": [redirect_uri],
                      "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    let authorize = format!(
        "{base}/oauth/authorize?response_type=code&client_id={}&redirect_uri={redirect_uri}\
         &code_challenge={challenge}&code_challenge_method=S256&scope=bucket:docs",
        client["client_id"].as_str().unwrap()
    );
    // Opened with the session cookie: the one-click form, the requested bucket ticked.
    let page = http
        .get(&authorize)
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    let csrf_cookie = page.headers()["set-cookie"].to_str().unwrap().to_owned();
    let csrf_cookie = csrf_cookie.split(';').next().unwrap().to_owned();
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"console-approve\""), "{html}");
    assert!(
        html.contains("name=\"bucket\" id=\"bucket-0\" value=\"docs\" checked"),
        "{html}"
    );
    let hidden = |name: &str| {
        let start = html.find(&format!("name=\"{name}\" value=\"")).unwrap() + name.len() + 15;
        html[start..start + html[start..].find('"').unwrap()].to_owned()
    };
    let (request, csrf) = (hidden("request"), hidden("csrf"));
    let post = |cookies: String, origin: &'static str, form: Vec<(&'static str, String)>| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let response = http
                .post(format!("{base}/oauth/authorize/console"))
                .header("cookie", cookies)
                .header(
                    "origin",
                    if origin.is_empty() {
                        base.as_str()
                    } else {
                        origin
                    },
                )
                .header("content-type", "application/x-www-form-urlencoded")
                .body(serde_urlencoded::to_string(&form).unwrap())
                .send()
                .await
                .unwrap();
            let status = response.status();
            let location = response
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_owned());
            (status, location, response.text().await.unwrap())
        }
    };
    let form = |csrf: &str, bucket: &str| {
        vec![
            ("request", request.clone()),
            ("csrf", csrf.to_owned()),
            ("decision", "approve".to_owned()),
            ("bucket", bucket.to_owned()),
            ("tool", "whoami".to_owned()),
        ]
    };
    let both = format!("{csrf_cookie}; {session}");
    // No session: the page again, saying so.
    let (status, _, body) = post(csrf_cookie.clone(), "", form(&csrf, "docs")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("no console session"), "{body}");
    // Another origin of the same site, with the session and the CSRF proof: refused.
    let (status, location, _) = post(both.clone(), "http://127.0.0.1:1", form(&csrf, "docs")).await;
    assert_eq!((status, location), (StatusCode::BAD_REQUEST, None));
    // A wrong CSRF field: refused.
    let (status, location, _) = post(both.clone(), "", form("wrong", "docs")).await;
    assert_eq!((status, location), (StatusCode::BAD_REQUEST, None));
    // A bucket the session's token does not hold: refused on the page, nothing approved.
    let (status, location, body) = post(both.clone(), "", form(&csrf, "prod")).await;
    assert_eq!((status, location), (StatusCode::OK, None));
    assert!(body.contains("cannot grant that"), "{body}");
    // The right form: a code for the client.
    let (status, location, _) = post(both.clone(), "", form(&csrf, "docs")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        location
            .unwrap()
            .starts_with(&format!("{redirect_uri}?code=")),
        "a code"
    );
}
