//! Hostile input (SPEC §2, §5, §6): a table of malformed bearers, malformed HTTP and JSON-RPC,
//! and malformed or escalating tool arguments. Each row asserts the exact HTTP status or error
//! code, and that the store is unchanged afterwards (every token record and the audit log).

mod common;

use common::*;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use tempfile::TempDir;

/// Everything a refusal must leave as it was: every record (as the admin lists them, without
/// the usage counters that the admin's own calls move) and the audit log, as one string.
async fn snapshot(admin: &Client) -> String {
    let mut tokens = ok(admin, "list_tokens", json!({"limit": 100, "order": "asc"})).await;
    for record in tokens["records"].as_array_mut().unwrap() {
        let record = record.as_object_mut().unwrap();
        record.remove("use_count");
        record.remove("last_used_at");
    }
    let audit = ok(admin, "list_audit_events", json!({"limit": 100})).await;
    format!("{}\n{}", tokens["records"], audit["events"])
}

/// One raw HTTP request to `/mcp`.
struct Raw {
    what: &'static str,
    method: reqwest::Method,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
}

fn post(what: &'static str, authorization: Option<Vec<u8>>, body: impl Into<Vec<u8>>) -> Raw {
    let mut headers = vec![
        ("content-type", b"application/json".to_vec()),
        ("accept", b"application/json, text/event-stream".to_vec()),
    ];
    if let Some(a) = authorization {
        headers.push(("authorization", a));
    }
    Raw {
        what,
        method: reqwest::Method::POST,
        headers,
        body: body.into(),
    }
}

/// Sends a raw request; `None` when the server closed the connection instead of answering.
async fn send(url: &str, raw: &Raw) -> Option<u16> {
    let mut headers = HeaderMap::new();
    for (name, value) in &raw.headers {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_bytes(value).expect("header bytes"),
        );
    }
    reqwest::Client::new()
        .request(raw.method.clone(), url)
        .headers(headers)
        .body(raw.body.clone())
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

fn rpc(method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_inputs_are_refused_exactly_and_change_nothing() {
    let tmp = TempDir::new().unwrap();
    let server = Server::start(tmp.path(), &[]);
    let url = server.url();
    let admin_secret = server.admin().to_owned();
    let admin = connect_http(&url, &admin_secret).await;

    // A small family: an orchestrator on buckets a, b and two children of it.
    let orchestrator = ok(
        &admin,
        "create_token",
        json!({"name": "orchestrator", "parent": "none", "buckets": ["a", "b"],
               "tools": ["create_token", "list_tokens", "get_token", "revoke_token", "scope_token", "whoami"],
               "ttl_seconds": 3600}),
    )
    .await;
    let orch = connect_http(&url, orchestrator["token"].as_str().unwrap()).await;
    let left = ok(
        &orch,
        "create_token",
        json!({"name": "left", "buckets": ["a"], "tools": ["whoami", "get_token", "revoke_token"]}),
    )
    .await;
    let right = ok(
        &orch,
        "create_token",
        json!({"name": "right", "buckets": ["b"]}),
    )
    .await;
    let left_client = connect_http(&url, left["token"].as_str().unwrap()).await;
    let right_id = right["id"].as_str().unwrap().to_owned();
    let orch_id = orchestrator["id"].as_str().unwrap().to_owned();
    let valid = admin_secret.clone();
    let before = snapshot(&admin).await;

    // --- Raw HTTP: bearers, bodies, JSON-RPC framing. -------------------------------------
    let bearer_bytes = |s: &str| format!("Bearer {s}").into_bytes();
    let mut bad_checksum = valid.clone().into_bytes();
    let last = bad_checksum.len() - 1;
    bad_checksum[last] = if bad_checksum[last] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let mut bad_random = valid.clone().into_bytes();
    bad_random[8] = if bad_random[8] == b'A' { b'B' } else { b'A' };
    let init = initialize_body().to_string();
    let authed = || Some(bearer_bytes(&valid));
    let rows: Vec<(Raw, Option<u16>)> = vec![
        (
            post("no Authorization header", None, init.clone()),
            Some(401),
        ),
        (
            post("empty bearer", Some(b"Bearer ".to_vec()), init.clone()),
            Some(401),
        ),
        (
            post("scheme only", Some(b"Bearer".to_vec()), init.clone()),
            Some(401),
        ),
        (
            post(
                "Basic scheme",
                Some(b"Basic dXNlcjpwYXNz".to_vec()),
                init.clone(),
            ),
            Some(401),
        ),
        (
            post(
                "lower-case scheme, junk token",
                Some(b"bearer junk".to_vec()),
                init.clone(),
            ),
            Some(401),
        ),
        (
            post(
                "non-ASCII bearer",
                Some(
                    "Bearer mcp_ééééééééééééééééééééééééééééééééééé"
                        .as_bytes()
                        .to_vec(),
                ),
                init.clone(),
            ),
            Some(401),
        ),
        (
            post(
                "bearer with a tab inside",
                Some(b"Bearer mcp_\tabc".to_vec()),
                init.clone(),
            ),
            Some(401),
        ),
        (
            post(
                "100 KB bearer",
                Some(bearer_bytes(&"A".repeat(100_000))),
                init.clone(),
            ),
            Some(401),
        ),
        (
            post(
                "valid-looking secret, bad checksum",
                Some(bad_checksum.clone()),
                init.clone(),
            ),
            Some(401),
        ),
        (
            post(
                "valid-looking secret, changed random part",
                Some(bad_random),
                init.clone(),
            ),
            Some(401),
        ),
        (
            post(
                "secret with surrounding junk",
                Some(bearer_bytes(&format!("{valid} extra"))),
                init.clone(),
            ),
            Some(401),
        ),
        (
            post(
                "two secrets",
                Some(bearer_bytes(&format!("{valid},{valid}"))),
                init.clone(),
            ),
            Some(401),
        ),
        (
            post(
                "invalid JSON",
                authed(),
                "{\"jsonrpc\": \"2.0\", \"id\": 1, ",
            ),
            Some(400),
        ),
        (post("empty body", authed(), ""), Some(400)),
        (
            post("JSON-RPC batch", authed(), format!("[{init},{init}]")),
            Some(400),
        ),
        (
            post(
                "JSON-RPC id is an object",
                authed(),
                r#"{"jsonrpc":"2.0","id":{"a":1},"method":"initialize","params":{}}"#,
            ),
            Some(400),
        ),
        (
            post(
                "JSON-RPC without jsonrpc",
                authed(),
                r#"{"id":1,"method":"initialize","params":{}}"#,
            ),
            Some(400),
        ),
        (post("JSON-RPC scalar", authed(), "42"), Some(400)),
        (
            post(
                "tools/call without a session",
                authed(),
                rpc(
                    "tools/call",
                    json!({"name": "revoke_token", "arguments": {"id": orch_id}}),
                ),
            ),
            Some(400),
        ),
        (
            Raw {
                what: "unknown session id",
                method: reqwest::Method::POST,
                headers: vec![
                    ("content-type", b"application/json".to_vec()),
                    ("accept", b"application/json, text/event-stream".to_vec()),
                    ("authorization", bearer_bytes(&valid)),
                    ("mcp-session-id", b"../../etc/passwd".to_vec()),
                ],
                body: rpc("tools/list", json!({})).into_bytes(),
            },
            Some(404),
        ),
        (post("2 MiB body", authed(), vec![b' '; 2 << 20]), Some(413)),
        (
            Raw {
                what: "Origin: http://evil.example",
                method: reqwest::Method::POST,
                headers: vec![
                    ("content-type", b"application/json".to_vec()),
                    ("accept", b"application/json, text/event-stream".to_vec()),
                    ("authorization", bearer_bytes(&valid)),
                    ("origin", b"http://evil.example".to_vec()),
                ],
                body: init.clone().into_bytes(),
            },
            Some(403),
        ),
        (
            Raw {
                what: "Host: evil.example",
                method: reqwest::Method::POST,
                headers: vec![
                    ("content-type", b"application/json".to_vec()),
                    ("accept", b"application/json, text/event-stream".to_vec()),
                    ("authorization", bearer_bytes(&valid)),
                    ("host", b"evil.example".to_vec()),
                ],
                body: init.clone().into_bytes(),
            },
            Some(403),
        ),
        (
            Raw {
                what: "10 MB header",
                method: reqwest::Method::POST,
                headers: vec![
                    ("x-padding", vec![b'a'; 10 << 20]),
                    ("authorization", bearer_bytes(&valid)),
                ],
                body: init.clone().into_bytes(),
            },
            None,
        ),
    ];
    assert!(rows.len() >= 20);
    for (raw, expected) in &rows {
        let got = send(&url, raw).await;
        match expected {
            Some(status) => assert_eq!(got, Some(*status), "{}", raw.what),
            // Refused before any handler: a 431 or a closed connection are both clean.
            None => assert!(matches!(got, None | Some(431)), "{}: {got:?}", raw.what),
        }
        assert!(
            snapshot(&admin).await == before,
            "{} changed the store",
            raw.what
        );
    }
    let health = reqwest::get(url.replace("/mcp", "/healthz")).await.unwrap();
    assert_eq!(
        health.status(),
        200,
        "the server still answers after the raw rows"
    );

    // --- Tool arguments: types, ranges, formats, reach, escalation. ------------------------
    let big_metadata = json!({"blob": "m".repeat(1_000_000)});
    let tool_rows: Vec<(&str, &Client, &str, Value, &str)> = vec![
        (
            "empty name",
            &admin,
            "create_token",
            json!({"name": ""}),
            "invalid_argument",
        ),
        (
            "blank name",
            &admin,
            "create_token",
            json!({"name": "   "}),
            "invalid_argument",
        ),
        (
            "10,000-character name",
            &admin,
            "create_token",
            json!({"name": "n".repeat(10_000)}),
            "invalid_argument",
        ),
        (
            "control characters in a name",
            &admin,
            "create_token",
            json!({"name": "ok\u{0}\u{1b}[2J"}),
            "invalid_argument",
        ),
        (
            "path traversal with a NUL in a name",
            &admin,
            "create_token",
            json!({"name": "../../etc/passwd\u{0}"}),
            "invalid_argument",
        ),
        (
            "name of the wrong type",
            &admin,
            "create_token",
            json!({"name": 42}),
            "invalid_argument",
        ),
        (
            "unknown field",
            &admin,
            "create_token",
            json!({"name": "x", "colour": "red"}),
            "invalid_argument",
        ),
        (
            "1 MB of metadata",
            &admin,
            "create_token",
            json!({"name": "x", "metadata": big_metadata}),
            "invalid_argument",
        ),
        (
            "metadata not an object",
            &admin,
            "create_token",
            json!({"name": "x", "metadata": [1, 2]}),
            "invalid_argument",
        ),
        (
            "negative TTL",
            &admin,
            "create_token",
            json!({"name": "x", "ttl_seconds": -1}),
            "invalid_argument",
        ),
        (
            "zero TTL",
            &admin,
            "create_token",
            json!({"name": "x", "ttl_seconds": 0}),
            "invalid_argument",
        ),
        (
            "enormous TTL",
            &admin,
            "create_token",
            json!({"name": "x", "ttl_seconds": i64::MAX}),
            "invalid_argument",
        ),
        (
            "TTL beyond i64",
            &admin,
            "create_token",
            json!({"name": "x", "ttl_seconds": 1e30}),
            "invalid_argument",
        ),
        (
            "TTL as a string",
            &admin,
            "create_token",
            json!({"name": "x", "ttl_seconds": "60"}),
            "invalid_argument",
        ),
        (
            "invalid timestamp",
            &admin,
            "create_token",
            json!({"name": "x", "expires_at": "2026-13-45T25:61:00Z"}),
            "invalid_argument",
        ),
        (
            "timestamp in the past",
            &admin,
            "create_token",
            json!({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}),
            "invalid_argument",
        ),
        (
            "both TTL and expiry",
            &admin,
            "create_token",
            json!({"name": "x", "ttl_seconds": 60, "expires_at": "2099-01-01T00:00:00Z"}),
            "invalid_argument",
        ),
        (
            "CIDR prefix too long",
            &admin,
            "create_token",
            json!({"name": "x", "allowed_ips": ["10.0.0.0/33"]}),
            "invalid_argument",
        ),
        (
            "CIDR that is not an address",
            &admin,
            "create_token",
            json!({"name": "x", "allowed_ips": ["localhost"]}),
            "invalid_argument",
        ),
        (
            "pattern **",
            &admin,
            "create_token",
            json!({"name": "x", "tools": ["**"]}),
            "invalid_argument",
        ),
        (
            "pattern *a*",
            &admin,
            "create_token",
            json!({"name": "x", "tools": ["*a*"]}),
            "invalid_argument",
        ),
        (
            "empty pattern",
            &admin,
            "create_token",
            json!({"name": "x", "tools": [""]}),
            "invalid_argument",
        ),
        (
            "bucket with path traversal",
            &admin,
            "create_token",
            json!({"name": "x", "buckets": ["../etc"]}),
            "invalid_argument",
        ),
        (
            "negative max_uses",
            &admin,
            "create_token",
            json!({"name": "x", "max_uses": -5}),
            "invalid_argument",
        ),
        (
            "id with path traversal",
            &admin,
            "get_token",
            json!({"id": "../../../etc/passwd"}),
            "invalid_argument",
        ),
        (
            "id of the wrong type",
            &admin,
            "get_token",
            json!({"id": ["tok_"]}),
            "invalid_argument",
        ),
        (
            "missing id",
            &admin,
            "revoke_token",
            json!({}),
            "invalid_argument",
        ),
        (
            "unknown id",
            &admin,
            "revoke_token",
            json!({"id": "tok_000000000000000000000000"}),
            "not_found",
        ),
        (
            "whoami with arguments",
            &admin,
            "whoami",
            json!({"x": 1}),
            "invalid_argument",
        ),
        (
            "page size 0",
            &admin,
            "list_tokens",
            json!({"limit": 0}),
            "invalid_argument",
        ),
        (
            "page size 10,000",
            &admin,
            "list_tokens",
            json!({"limit": 10_000}),
            "invalid_argument",
        ),
        (
            "garbage cursor",
            &admin,
            "list_tokens",
            json!({"cursor": "../../x"}),
            "invalid_argument",
        ),
        (
            "grace too long",
            &admin,
            "rotate_token",
            json!({"id": orch_id, "grace_seconds": 100_000}),
            "invalid_argument",
        ),
        (
            "a sibling outside reach",
            &left_client,
            "get_token",
            json!({"id": right_id}),
            "not_found",
        ),
        (
            "revoking a sibling",
            &left_client,
            "revoke_token",
            json!({"id": right_id}),
            "not_found",
        ),
        (
            "revoking its parent",
            &left_client,
            "revoke_token",
            json!({"id": orch_id}),
            "not_found",
        ),
        (
            "minting without create_token",
            &left_client,
            "create_token",
            json!({"name": "x"}),
            "forbidden",
        ),
        (
            "escalation: another bucket",
            &orch,
            "create_token",
            json!({"name": "x", "buckets": ["c"]}),
            "scope_exceeds_parent",
        ),
        (
            "escalation: every tool",
            &orch,
            "create_token",
            json!({"name": "x", "tools": ["*"]}),
            "scope_exceeds_parent",
        ),
        (
            "escalation: admin",
            &orch,
            "create_token",
            json!({"name": "x", "admin": true}),
            "scope_exceeds_parent",
        ),
        (
            "escalation: outliving its parent",
            &orch,
            "create_token",
            json!({"name": "x", "ttl_seconds": 86_400}),
            "scope_exceeds_parent",
        ),
        (
            "escalation: widening itself",
            &orch,
            "scope_token",
            json!({"id": orch_id, "add_buckets": ["c"]}),
            "forbidden",
        ),
        (
            "escalation: widening a child past itself",
            &orch,
            "scope_token",
            json!({"id": right_id, "buckets": ["*"]}),
            "scope_exceeds_parent",
        ),
        (
            "a root token from a non-admin",
            &orch,
            "create_token",
            json!({"name": "x", "parent": "none"}),
            "forbidden",
        ),
    ];
    assert!(rows.len() + tool_rows.len() >= 40);
    let mut wrong = Vec::new();
    for (what, client, tool, args, code) in &tool_rows {
        let (is_error, value) = call(client, tool, args.clone()).await;
        let message = value["error"]["message"].as_str().unwrap_or_default();
        if !is_error || value["error"]["code"] != json!(code) {
            wrong.push(format!("{what}: expected {code}, got {value}"));
        } else if message.is_empty() || message.len() > 600 {
            wrong.push(format!("{what}: unclear message {message:?}"));
        }
        assert!(snapshot(&admin).await == before, "{what} changed the store");
    }
    assert!(
        wrong.is_empty(),
        "{} rows went wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // An unknown tool is refused at the protocol level (invalid params), never run.
    let refused = try_call(&admin, "drop_database", json!({}))
        .await
        .expect_err("an unknown tool is a protocol error");
    assert!(
        refused.contains("unknown tool drop_database") && refused.contains("-32602"),
        "{refused}"
    );
    assert!(
        snapshot(&admin).await == before,
        "an unknown tool changed the store"
    );
    assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
}
