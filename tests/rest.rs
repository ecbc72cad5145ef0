//! The REST API (SPEC §12) through the shipped binary with a real HTTP client: every endpoint's
//! happy path, its refusals (the tool allowlist, read-only, reach, attenuation, revoked and
//! paused callers), pagination, `Idempotency-Key`, bad input of every kind (always a 4xx
//! problem+json that changes nothing), and the OpenAPI document.

mod common;

use common::{Server, bearer, raw_initialize};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(server: &Server) -> Api {
        Api {
            base: format!("http://{}/v1", server.addr),
            http: reqwest::Client::new(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("authorization", bearer(token));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            assert_eq!(content_type, "application/problem+json", "{status} {value}");
            assert_eq!(value["status"], status.as_u16(), "{value}");
        }
        (status, value)
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.send(Method::GET, path, token, None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.send(Method::POST, path, token, Some(body)).await
    }

    /// Creates a token as `token`; its (id, secret).
    async fn mint(&self, token: &str, body: Value) -> (String, String) {
        let (status, created) = self.post("/tokens", token, body).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        (
            created["id"].as_str().unwrap().to_owned(),
            created["token"].as_str().unwrap().to_owned(),
        )
    }

    async fn count(&self, token: &str) -> usize {
        let (_, page) = self.get("/tokens?limit=100", token).await;
        page["records"].as_array().unwrap().len()
    }
}

fn start() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    (dir, server)
}

#[tokio::test]
async fn every_endpoint_does_what_its_tool_does() {
    let (_dir, server) = start();
    let api = Api::new(&server);
    let admin = server.admin();

    let (status, me) = api.get("/whoami", admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["admin"], true);

    // Create: 201, Location, the secret once.
    let response = api
        .http
        .post(format!("{}/tokens", api.base))
        .header("authorization", bearer(admin))
        .json(&json!({"name": "ci", "tools": ["whoami", "list_*"], "parent": "none"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/tokens/{id}"));
    assert!(created["token"].as_str().unwrap().starts_with("mcp_"));

    let (status, got) = api.get(&format!("/tokens/{id}"), admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["name"], "ci");
    assert!(got.get("token").is_none(), "the secret is shown once");

    // PATCH: other fields through update_token, scope fields through scope_token.
    let (status, updated) = api
        .send(
            Method::PATCH,
            &format!("/tokens/{id}"),
            admin,
            Some(json!({"name": "ci-2", "max_uses": 50})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(
        (updated["name"].clone(), updated["max_uses"].clone()),
        (json!("ci-2"), json!(50))
    );
    let (status, scoped) = api
        .send(
            Method::PATCH,
            &format!("/tokens/{id}"),
            admin,
            Some(json!({"remove_tools": ["list_*"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{scoped}");
    assert_eq!(scoped["tools"], json!(["whoami"]));
    let (status, _) = api
        .send(
            Method::PATCH,
            &format!("/tokens/{id}"),
            admin,
            Some(json!({"name": "x", "read_only": true})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "mixing scope and other fields is refused"
    );
    assert_eq!(
        api.get(&format!("/tokens/{id}"), admin).await.1["name"],
        "ci-2"
    );

    // Pause, resume, rotate, verify, revoke, delete.
    let (status, paused) = api
        .post(&format!("/tokens/{id}/pause"), admin, json!({}))
        .await;
    assert_eq!(
        (status, paused["status"].clone()),
        (StatusCode::OK, json!("paused"))
    );
    let (status, resumed) = api
        .send(Method::POST, &format!("/tokens/{id}/resume"), admin, None)
        .await;
    assert_eq!(
        (status, resumed["status"].clone()),
        (StatusCode::OK, json!("active")),
        "an empty body is fine"
    );
    let (status, rotated) = api
        .post(
            &format!("/tokens/{id}/rotate"),
            admin,
            json!({"grace_seconds": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let secret = rotated["token"].as_str().unwrap().to_owned();
    let (status, verdict) = api
        .post("/verify", admin, json!({"token": secret, "tool": "whoami"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (verdict["valid"].clone(), verdict["allowed"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(mcp_status(&server, &secret).await, 200);
    let (status, revoked) = api
        .post(&format!("/tokens/{id}/revoke"), admin, json!({}))
        .await;
    assert_eq!(
        (status, revoked["revoked"].clone()),
        (StatusCode::OK, json!(true))
    );
    assert_eq!(
        mcp_status(&server, &secret).await,
        401,
        "revoked over REST, refused over MCP at once"
    );
    let (status, deleted) = api
        .send(Method::DELETE, &format!("/tokens/{id}"), admin, None)
        .await;
    assert_eq!(
        (status, deleted["deleted"].clone()),
        (StatusCode::OK, json!(true))
    );
    assert_eq!(
        api.get(&format!("/tokens/{id}"), admin).await.0,
        StatusCode::NOT_FOUND
    );

    // Buckets (no gateway here), audit, OAuth lists.
    let (status, buckets) = api.get("/buckets", admin).await;
    assert_eq!((status, buckets), (StatusCode::OK, json!({"buckets": []})));
    let (status, audit) = api.get("/audit?action=revoke&limit=5", admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(audit["events"][0]["action"], "revoke", "{audit}");
    assert_eq!(
        api.get("/oauth/clients", admin).await,
        (StatusCode::OK, json!({"clients": []}))
    );
    assert_eq!(
        api.get("/oauth/grants", admin).await,
        (StatusCode::OK, json!({"grants": []}))
    );
    let (status, _) = api
        .send(Method::DELETE, "/oauth/clients/nope", admin, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn mcp_status(server: &Server, secret: &str) -> u16 {
    raw_initialize(&server.url(), &[("authorization", &bearer(secret))])
        .await
        .status()
        .as_u16()
}

#[tokio::test]
async fn refusals_are_the_tools_refusals() {
    let (_dir, server) = start();
    let api = Api::new(&server);
    let admin = server.admin();
    // A token that may only read.
    let (_, reader) = api
        .mint(admin, json!({"name": "reader", "tools": ["whoami", "get_token", "list_tokens"], "parent": "none"}))
        .await;
    let before = api.count(admin).await;
    let (status, problem) = api.post("/tokens", &reader, json!({"name": "child"})).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "create_token is not in its allowlist"
    );
    assert_eq!(problem["code"], "forbidden");
    assert!(
        problem["detail"].as_str().unwrap().contains("create_token"),
        "{problem}"
    );

    // A read-only token may not write.
    let (ro_id, read_only) = api
        .mint(
            admin,
            json!({"name": "ro", "read_only": true, "parent": "none"}),
        )
        .await;
    let (status, _) = api
        .post("/tokens", &read_only, json!({"name": "child"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(api.get("/whoami", &read_only).await.0, StatusCode::OK);

    // A non-admin reaches only its own subtree.
    let (_, agent) = api
        .mint(
            admin,
            json!({"name": "agent", "tools": ["*"], "buckets": ["docs"], "parent": "none"}),
        )
        .await;
    let (status, _) = api.get(&format!("/tokens/{ro_id}"), &agent).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "outside its reach is unknown to it"
    );
    let (status, _) = api
        .post(&format!("/tokens/{ro_id}/revoke"), &agent, json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(api.get("/audit", &agent).await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        api.get("/oauth/clients", &agent).await.0,
        StatusCode::FORBIDDEN
    );

    // Attenuation: no child broader than its parent.
    let (status, problem) = api
        .post("/tokens", &agent, json!({"name": "wide", "buckets": ["*"]}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["code"], "scope_exceeds_parent");
    let (child_id, child) = api.mint(&agent, json!({"name": "narrow"})).await;
    let (status, problem) = api
        .send(
            Method::PATCH,
            &format!("/tokens/{child_id}"),
            &child,
            Some(json!({"add_buckets": ["other"]})),
        )
        .await;
    assert!(
        [StatusCode::FORBIDDEN, StatusCode::UNPROCESSABLE_ENTITY].contains(&status),
        "{status} {problem}"
    );

    // A paused or revoked caller does not authenticate: 401 with a challenge.
    let (agent_id, _) = (
        api.get("/whoami", &agent).await.1["id"]
            .as_str()
            .unwrap()
            .to_owned(),
        (),
    );
    api.post(&format!("/tokens/{agent_id}/pause"), admin, json!({}))
        .await;
    let response = api
        .http
        .get(format!("{}/whoami", api.base))
        .header("authorization", bearer(&child))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "its parent is paused"
    );
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    api.post(&format!("/tokens/{agent_id}/revoke"), admin, json!({}))
        .await;
    assert_eq!(api.get("/whoami", &agent).await.0, StatusCode::UNAUTHORIZED);
    let (status, problem) = api.get("/whoami", "mcp_not_a_token").await;
    assert_eq!(
        (status, problem["code"].clone()),
        (StatusCode::UNAUTHORIZED, json!("unauthorized"))
    );
    // Nothing refused was created.
    assert_eq!(api.count(admin).await, before + 3, "ro, agent, narrow");
}

#[tokio::test]
async fn pages_and_idempotent_creates() {
    let (_dir, server) = start();
    let api = Api::new(&server);
    let admin = server.admin();
    for i in 0..5 {
        api.mint(admin, json!({"name": format!("t{i}"), "parent": "none"}))
            .await;
    }
    // Three pages of two, oldest first, no token twice.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/tokens?limit=2&order=asc&cursor={}", urlencode(c)),
            None => "/tokens?limit=2&order=asc".to_owned(),
        };
        let (status, page) = api.get(&path, admin).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for record in page["records"].as_array().unwrap() {
            seen.push(record["name"].as_str().unwrap().to_owned());
        }
        if page["has_more"] != true {
            break;
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert_eq!(&seen[1..], ["t0", "t1", "t2", "t3", "t4"]);

    // The same key twice: one token; the retry gets its record, without the secret.
    let create = |key: &'static str, name: &'static str| {
        api.http
            .post(format!("{}/tokens", api.base))
            .header("authorization", bearer(admin))
            .header("idempotency-key", key)
            .json(&json!({"name": name, "parent": "none"}))
            .send()
    };
    let first = create("retry-1", "once").await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let before = api.count(admin).await;
    let again = create("retry-1", "once").await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["replayed"], true);
    assert!(
        again.get("token").is_none(),
        "the secret is never kept to replay it"
    );
    assert_eq!(api.count(admin).await, before, "no second token");
    let other = create("retry-1", "different").await.unwrap();
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        create("retry-2", "once").await.unwrap().status(),
        StatusCode::CREATED
    );
}

fn urlencode(text: &str) -> String {
    serde_urlencoded::to_string([("c", text)]).unwrap()[2..].to_owned()
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let (_dir, server) = start();
    let api = Api::new(&server);
    let admin = server.admin();
    let before = api.count(admin).await;
    let raw = |method: Method, path: &str, content_type: &str, body: Vec<u8>| {
        api.http
            .request(method, format!("{}{path}", api.base))
            .header("authorization", bearer(admin))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let cases: Vec<(Method, &str, &str, Vec<u8>, u16)> = vec![
        (
            Method::POST,
            "/tokens",
            "application/json",
            br#"{"name": 7}"#.to_vec(),
            400,
        ),
        (
            Method::POST,
            "/tokens",
            "application/json",
            br#"{"name": "x", "colour": "red"}"#.to_vec(),
            400,
        ),
        (
            Method::POST,
            "/tokens",
            "application/json",
            b"{not json".to_vec(),
            400,
        ),
        (
            Method::POST,
            "/tokens",
            "application/json",
            b"[1,2]".to_vec(),
            400,
        ),
        (
            Method::POST,
            "/tokens",
            "text/plain",
            br#"{"name": "x"}"#.to_vec(),
            415,
        ),
        (
            Method::POST,
            "/tokens",
            "application/json",
            vec![b' '; 2 << 20],
            413,
        ),
        (
            Method::GET,
            "/tokens/not-an-id",
            "application/json",
            vec![],
            400,
        ),
        // Path segments that are not UTF-8: axum's own refusal is plain text, ours a problem.
        (Method::GET, "/tokens/%FF", "application/json", vec![], 400),
        (
            Method::POST,
            "/tokens/%C3%28/pause",
            "application/json",
            vec![],
            400,
        ),
        (
            Method::DELETE,
            "/oauth/clients/%FF",
            "application/json",
            vec![],
            400,
        ),
        (
            Method::GET,
            "/tokens?cursor=garbage",
            "application/json",
            vec![],
            400,
        ),
        (
            Method::GET,
            "/tokens?limit=1000",
            "application/json",
            vec![],
            400,
        ),
        (
            Method::GET,
            "/tokens?limit=1&limit=2",
            "application/json",
            vec![],
            400,
        ),
        (
            Method::GET,
            "/tokens?status=sleeping",
            "application/json",
            vec![],
            400,
        ),
        (Method::PUT, "/tokens", "application/json", vec![], 405),
        (
            Method::POST,
            "/tokens/tok_000000000000000000000000/explode",
            "application/json",
            vec![],
            404,
        ),
        (
            Method::GET,
            "/no/such/endpoint",
            "application/json",
            vec![],
            404,
        ),
        (
            Method::POST,
            "/tokens/tok_000000000000000000000000/pause",
            "application/json",
            b"{}".to_vec(),
            404,
        ),
        (
            Method::POST,
            "/verify",
            "application/json",
            br#"{"token": 5}"#.to_vec(),
            400,
        ),
    ];
    for (method, path, content_type, body, expected) in cases {
        let response = raw(method.clone(), path, content_type, body).await.unwrap();
        let status = response.status().as_u16();
        let kind = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let problem: Value = response.json().await.unwrap();
        assert_eq!(status, expected, "{method} {path}: {problem}");
        assert_eq!(kind, "application/problem+json", "{method} {path}");
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{problem}"
        );
    }
    assert_eq!(api.count(admin).await, before, "nothing was created");
}

#[tokio::test]
async fn the_openapi_document_covers_every_endpoint_and_needs_no_token() {
    let (_dir, server) = start();
    let document: Value = reqwest::get(format!("http://{}/v1/openapi.json", server.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/tokens", "get"),
        ("/v1/tokens", "post"),
        ("/v1/tokens/{id}", "get"),
        ("/v1/tokens/{id}", "patch"),
        ("/v1/tokens/{id}", "delete"),
        ("/v1/tokens/{id}/pause", "post"),
        ("/v1/tokens/{id}/resume", "post"),
        ("/v1/tokens/{id}/rotate", "post"),
        ("/v1/tokens/{id}/revoke", "post"),
        ("/v1/whoami", "get"),
        ("/v1/verify", "post"),
        ("/v1/buckets", "get"),
        ("/v1/tools", "get"),
        ("/v1/audit", "get"),
        ("/v1/oauth/clients", "get"),
        ("/v1/oauth/grants", "get"),
        ("/v1/oauth/clients/{client_id}", "delete"),
    ] {
        assert!(paths[path][method].is_object(), "{method} {path} missing");
    }
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["oauth"]["type"], "oauth2");
    // Request schemas are the tools' own: create_token's fields.
    let create =
        &paths["/v1/tokens"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert!(
        create["properties"]["rate_limit_per_minute"].is_object(),
        "{create}"
    );
    assert_eq!(create["additionalProperties"], false);
    // ... with the bounds their checks enforce.
    assert_eq!(create["properties"]["name"]["maxLength"], 128, "{create}");
    // Answers are the result types' own schemas.
    let schemas = &document["components"]["schemas"];
    assert!(
        schemas["TokenView"]["required"]
            .as_array()
            .unwrap()
            .contains(&json!("effective_status")),
        "{}",
        schemas["TokenView"]
    );
    // Every operation lists its problems, each as problem+json: the bearer check's 401, the
    // in-flight bound's 429 and the server's own 500 everywhere; a revoked token's 409 where a
    // state can forbid the change.
    let problems = &document["components"]["responses"];
    for (path, methods) in paths {
        for (method, operation) in methods.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            for status in ["401", "429", "500"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path}: no {status}"
                );
            }
            for (status, response) in responses {
                if status.starts_with('2') {
                    continue;
                }
                let name = response["$ref"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap();
                assert!(
                    problems[name]["content"]["application/problem+json"].is_object(),
                    "{method} {path} {status}"
                );
            }
        }
    }
    for path in [
        "/v1/tokens/{id}/pause",
        "/v1/tokens/{id}/resume",
        "/v1/tokens/{id}/rotate",
    ] {
        assert!(
            paths[path]["post"]["responses"]["409"].is_object(),
            "{path}"
        );
    }
}

/// `GET /v1/tools` lists what the caller may call (its `tools/list`), and like `tools/list`
/// it spends no use.
#[tokio::test]
async fn tools_lists_what_the_caller_may_call_and_spends_no_use() {
    let (_dir, server) = start();
    let api = Api::new(&server);
    let (_, reader) = api
        .mint(
            server.admin(),
            json!({"name": "reader", "parent": "none", "tools": ["whoami", "get_*"], "max_uses": 1}),
        )
        .await;
    for _ in 0..3 {
        let (status, listed) = api.get("/tools", &reader).await;
        assert_eq!(status, StatusCode::OK, "{listed}");
        let names: Vec<&str> = listed["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["whoami", "get_token"], "{listed}");
        assert_eq!(listed["tools"][0]["read_only"], true);
    }
    let (status, me) = api.get("/whoami", &reader).await;
    assert_eq!(status, StatusCode::OK, "the one use is still there: {me}");
    assert_eq!(me["remaining_uses"], 0);
}
