//! The MCP server over streamable HTTP, driven by rmcp's client and by raw HTTP requests,
//! against the real binary and a sled database in a temporary directory. The flows that decide
//! a request run through both paths a request takes ([`Via`]): rmcp's client (rmcp's session
//! machinery answers it) and plain requests as the official SDKs send them (the express lane).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tempfile::TempDir;

const ALL_TOOLS: [&str; 15] = [
    "create_token",
    "delete_token",
    "get_token",
    "list_access_events",
    "list_audit_events",
    "list_buckets",
    "list_tokens",
    "pause_token",
    "resume_token",
    "revoke_token",
    "rotate_token",
    "scope_token",
    "update_token",
    "verify_token",
    "whoami",
];

async fn create(admin: &impl Tools, args: Value) -> (String, String) {
    let issued = ok(admin, "create_token", args).await;
    (
        issued["id"].as_str().unwrap().to_owned(),
        issued["token"].as_str().unwrap().to_owned(),
    )
}

async fn status_of(url: &str, token: &str) -> (u16, String, String) {
    let response = raw_initialize(url, &[("authorization", &bearer(token))]).await;
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.text().await.unwrap_or_default();
    (status, challenge, body)
}

/// Asserts a 401 whose `WWW-Authenticate` names the realm and carries `description_part`.
async fn assert_refused(url: &str, headers: &[(&str, &str)], description_part: &str) {
    let response = raw_initialize(url, headers).await;
    assert_eq!(
        response.status().as_u16(),
        401,
        "expected 401 for {headers:?}"
    );
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    let metadata = url.replace("/mcp", "/.well-known/oauth-protected-resource");
    assert!(
        challenge.starts_with(&format!(
            "Bearer realm=\"tokenwarden\", resource_metadata=\"{metadata}\", \
             error=\"invalid_token\", error_description=\""
        )),
        "{challenge}"
    );
    assert!(
        challenge.contains(description_part),
        "{challenge:?} should mention {description_part:?}"
    );
}

/// Every tool answers its happy path and at least one error path over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tool_works_over_http() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[]);
    let admin = connect_http(&server.url(), server.admin()).await;
    assert_eq!(tool_names(&admin).await, ALL_TOOLS);

    let me = ok(&admin, "whoami", json!({})).await;
    assert_eq!(me["admin"], true);
    assert_eq!(me["effective_status"], "active");

    let issued = ok(
        &admin,
        "create_token",
        json!({"name": "ci", "buckets": ["a"], "tools": ["whoami", "list_*"], "ttl_seconds": 3600}),
    )
    .await;
    let id = issued["id"].as_str().unwrap();
    let secret = issued["token"].as_str().unwrap();
    assert_eq!(secret.len(), 40);
    assert!(issued["masked"].as_str().unwrap().starts_with(&secret[..8]));
    err(
        &admin,
        "create_token",
        json!({"name": ""}),
        "invalid_argument",
    )
    .await;

    let got = ok(&admin, "get_token", json!({"id": id})).await;
    assert_eq!(got["name"], "ci");
    assert!(
        got.get("token").is_none(),
        "get_token must not return the secret"
    );
    err(
        &admin,
        "get_token",
        json!({"id": "tok_000000000000000000000000"}),
        "not_found",
    )
    .await;

    let page = ok(
        &admin,
        "list_tokens",
        json!({"status": "active", "limit": 1}),
    )
    .await;
    assert_eq!(page["records"].as_array().unwrap().len(), 1);
    assert_eq!(page["has_more"], true);
    let next = ok(
        &admin,
        "list_tokens",
        json!({"status": "active", "cursor": page["next_cursor"]}),
    )
    .await;
    assert_eq!(next["records"].as_array().unwrap().len(), 1);
    err(
        &admin,
        "list_tokens",
        json!({"limit": 0}),
        "invalid_argument",
    )
    .await;

    let updated = ok(
        &admin,
        "update_token",
        json!({"id": id, "name": "ci-2", "max_uses": 10}),
    )
    .await;
    assert_eq!(updated["name"], "ci-2");
    assert_eq!(updated["remaining_uses"], 10);
    err(
        &admin,
        "update_token",
        json!({"id": id, "max_uses": -1}),
        "invalid_argument",
    )
    .await;

    let scoped = ok(
        &admin,
        "scope_token",
        json!({"id": id, "add_buckets": ["b"], "remove_tools": ["list_*"]}),
    )
    .await;
    assert_eq!(scoped["buckets"], json!(["a", "b"]));
    assert_eq!(scoped["tools"], json!(["whoami"]));
    err(
        &admin,
        "scope_token",
        json!({"id": id, "tools": ["*a*"]}),
        "invalid_argument",
    )
    .await;

    let paused = ok(&admin, "pause_token", json!({"id": id})).await;
    assert_eq!(paused["status"], "paused");
    err(
        &admin,
        "pause_token",
        json!({"id": "nope"}),
        "invalid_argument",
    )
    .await;
    let resumed = ok(&admin, "resume_token", json!({"id": id})).await;
    assert_eq!(resumed["status"], "active");
    err(
        &admin,
        "resume_token",
        json!({"id": "tok_000000000000000000000000"}),
        "not_found",
    )
    .await;

    let rotated = ok(
        &admin,
        "rotate_token",
        json!({"id": id, "grace_seconds": 0}),
    )
    .await;
    let new_secret = rotated["token"].as_str().unwrap();
    assert_ne!(new_secret, secret);
    assert_eq!(status_of(&server.url(), secret).await.0, 401);
    assert_eq!(status_of(&server.url(), new_secret).await.0, 200);
    err(
        &admin,
        "rotate_token",
        json!({"id": id, "grace_seconds": 86401}),
        "invalid_argument",
    )
    .await;

    let verified = ok(
        &admin,
        "verify_token",
        json!({"token": new_secret, "tool": "whoami", "bucket": "a"}),
    )
    .await;
    assert_eq!(
        verified,
        json!({"valid": true, "token_id": id, "allowed": true})
    );
    let denied = ok(
        &admin,
        "verify_token",
        json!({"token": new_secret, "tool": "create_token"}),
    )
    .await;
    assert_eq!(denied["allowed"], false);
    assert!(
        denied["reason"]
            .as_str()
            .unwrap()
            .contains("tool allowlist")
    );
    let bad = ok(&admin, "verify_token", json!({"token": "mcp_nope"})).await;
    assert_eq!(bad["valid"], false);
    err(
        &admin,
        "verify_token",
        json!({"token": 5}),
        "invalid_argument",
    )
    .await;

    let events = ok(&admin, "list_audit_events", json!({"token_id": id})).await;
    let actions: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["rotate", "resume", "pause", "scope", "update", "create"]
    );
    err(
        &admin,
        "list_audit_events",
        json!({"since": "yesterday"}),
        "invalid_argument",
    )
    .await;

    let (child, _) = create(&admin, json!({"name": "child", "parent": id})).await;
    let revoked = ok(&admin, "revoke_token", json!({"id": id})).await;
    assert_eq!(
        revoked,
        json!({"id": id, "revoked": true, "revoked_descendants": 1, "revoked_minted": 0})
    );
    err(
        &admin,
        "revoke_token",
        json!({"id": "tok_000000000000000000000000"}),
        "not_found",
    )
    .await;
    assert_eq!(
        ok(&admin, "get_token", json!({"id": child})).await["effective_status"],
        "revoked"
    );

    let deleted = ok(&admin, "delete_token", json!({"id": id})).await;
    assert_eq!(deleted, json!({"id": id, "deleted": true}));
    err(&admin, "get_token", json!({"id": child}), "not_found").await;
    err(&admin, "delete_token", json!({"id": id}), "not_found").await;
    admin.cancel().await.unwrap();
}

/// Each kind of unusable bearer gets 401 with a `WWW-Authenticate` challenge that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_bearers_get_401_saying_why() {
    let dir = TempDir::new().unwrap();
    // A token minted by a server running in another environment.
    let staging_secret = {
        let staging = Server::start(dir.path(), &["--environment", "staging"]);
        let admin = connect_http(&staging.url(), staging.admin()).await;
        let (_, secret) = create(&admin, json!({"name": "staging", "parent": "none"})).await;
        admin.cancel().await.unwrap();
        secret
    };
    // The store is not empty, so no banner this time: the owner mints an admin over stdio.
    let admin_secret = owner_mints_admin(dir.path()).await;
    let server = Server::start(dir.path(), &[]);
    assert!(
        server.admin_token.is_none(),
        "the admin banner is shown on the first start only"
    );
    let url = server.url();
    let admin = connect_http(&url, &admin_secret).await;

    let (paused_id, paused) = create(&admin, json!({"name": "p"})).await;
    ok(&admin, "pause_token", json!({"id": paused_id})).await;
    let (revoked_id, revoked) = create(&admin, json!({"name": "r"})).await;
    ok(&admin, "revoke_token", json!({"id": revoked_id})).await;
    let (_, expiring) = create(&admin, json!({"name": "e", "ttl_seconds": 1})).await;
    let (_, fenced) = create(&admin, json!({"name": "f", "allowed_ips": ["10.0.0.0/8"]})).await;
    let (parent_id, _) = create(&admin, json!({"name": "parent"})).await;
    let (_, child) = create(&admin, json!({"name": "child", "parent": parent_id})).await;
    ok(&admin, "pause_token", json!({"id": parent_id})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let mut corrupted = paused.clone().into_bytes();
    corrupted[20] = if corrupted[20] == b'A' { b'B' } else { b'A' };
    let corrupted = String::from_utf8(corrupted).unwrap();
    let unknown = {
        // Well-formed (valid checksum) but never issued.
        let (_, s) = create(&admin, json!({"name": "gone"})).await;
        let id = ok(&admin, "verify_token", json!({"token": s})).await["token_id"].clone();
        ok(&admin, "delete_token", json!({"id": id})).await;
        s
    };

    // Without credentials the challenge carries no error code (RFC 6750 §3.1).
    let bare = raw_initialize(&url, &[]).await;
    assert_eq!(bare.status().as_u16(), 401);
    assert_eq!(
        bare.headers()["www-authenticate"],
        format!(
            "Bearer realm=\"tokenwarden\", resource_metadata=\"{}\"",
            url.replace("/mcp", "/.well-known/oauth-protected-resource")
        )
        .as_str()
    );
    assert!(bare.text().await.unwrap().contains("missing bearer token"));
    assert_refused(
        &url,
        &[("authorization", "Basic abc")],
        "unsupported authorization scheme",
    )
    .await;
    assert_refused(
        &url,
        &[("authorization", "Bearer not-a-token")],
        "malformed token",
    )
    .await;
    assert_refused(&url, &[("authorization", &bearer(&corrupted))], "checksum").await;
    assert_refused(
        &url,
        &[("authorization", &bearer(&unknown))],
        "unknown token",
    )
    .await;
    assert_refused(&url, &[("authorization", &bearer(&paused))], "is paused").await;
    assert_refused(&url, &[("authorization", &bearer(&revoked))], "is revoked").await;
    assert_refused(
        &url,
        &[("authorization", &bearer(&expiring))],
        "has expired",
    )
    .await;
    assert_refused(
        &url,
        &[("authorization", &bearer(&staging_secret))],
        "environment",
    )
    .await;
    assert_refused(&url, &[("authorization", &bearer(&fenced))], "allowed_ips").await;
    assert_refused(
        &url,
        &[("authorization", &bearer(&child))],
        "paused by its ancestor",
    )
    .await;
    admin.cancel().await.unwrap();
}

/// The owner (a stdio session without `TOKENWARDEN_TOKEN`) creates an admin token.
async fn owner_mints_admin(dir: &std::path::Path) -> String {
    let owner = connect_stdio(dir, None).await;
    assert_eq!(
        ok(&owner, "whoami", json!({})).await,
        json!({"owner": true})
    );
    let issued = ok(
        &owner,
        "create_token",
        json!({"name": "admin", "admin": true}),
    )
    .await;
    owner.cancel().await.unwrap();
    issued["token"].as_str().unwrap().to_owned()
}

/// Origin and Host are validated (403), and bodies over 1 MiB are refused (413).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_host_and_body_limits() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(
        dir.path(),
        &["--allowed-origin", "https://app.example.com:443"],
    );
    let url = server.url();
    let auth = bearer(server.admin());
    let status = |headers: Vec<(&'static str, String)>| {
        let url = url.clone();
        let auth = auth.clone();
        async move {
            let mut all: Vec<(&str, &str)> = vec![("authorization", auth.as_str())];
            all.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
            raw_initialize(&url, &all).await.status().as_u16()
        }
    };
    assert_eq!(status(vec![]).await, 200);
    assert_eq!(
        status(vec![("origin", "http://localhost:5173".into())]).await,
        200
    );
    assert_eq!(
        status(vec![("origin", "https://app.example.com".into())]).await,
        200
    );
    assert_eq!(
        status(vec![("origin", "http://evil.example".into())]).await,
        403
    );
    assert_eq!(status(vec![("host", "evil.example".into())]).await, 403);

    let huge = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{{\"pad\":\"{}\"}}}}",
        "x".repeat(2 << 20)
    );
    let response = raw_post(&url, &[("authorization", &auth)], huge).await;
    assert_eq!(response.status().as_u16(), 413);

    let health = reqwest::get(format!("http://{}/healthz", server.addr))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200, "healthz needs no token");
}

/// A session opened with token A cannot be used with token B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stays_bound_to_its_token() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[]);
    let admin = connect_http(&server.url(), server.admin()).await;
    let (_, other) = create(&admin, json!({"name": "b", "parent": "none"})).await;

    let opened = raw_initialize(&server.url(), &[("authorization", &bearer(server.admin()))]).await;
    assert_eq!(opened.status().as_u16(), 200);
    let session = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let ping = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}).to_string();

    let hijack = raw_post(
        &server.url(),
        &[
            ("authorization", &bearer(&other)),
            ("mcp-session-id", &session),
            ("mcp-protocol-version", "2025-11-25"),
        ],
        ping.clone(),
    )
    .await;
    assert_eq!(hijack.status().as_u16(), 403);

    let owner_again = raw_post(
        &server.url(),
        &[
            ("authorization", &bearer(server.admin())),
            ("mcp-session-id", &session),
            ("mcp-protocol-version", "2025-11-25"),
        ],
        ping,
    )
    .await;
    assert_eq!(
        owner_again.status().as_u16(),
        200,
        "the opening token keeps its session"
    );
    let answer = owner_again.text().await.unwrap();
    assert!(
        answer.contains(r#""id":2"#) && answer.contains(r#""result":{}"#),
        "the ping is answered: {answer}"
    );
}

/// Revoking a token from a third session makes the next request of both its sessions fail at
/// once, with 401: no cache serves a stale "allowed". Pausing bites the same way, and so does
/// a token's expiry reached while its session is open.
async fn revocation_pausing_and_expiry_bite_on_the_next_request(path: Via) {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[]);
    let url = server.url();
    let admin = connect(path, &url, server.admin()).await;
    let (id, secret) = create(&admin, json!({"name": "shared", "parent": "none"})).await;
    let first = connect(path, &url, &secret).await;
    let second = connect(path, &url, &secret).await;
    ok(&first, "whoami", json!({})).await;
    ok(&second, "whoami", json!({})).await;

    ok(&admin, "revoke_token", json!({"id": id})).await;
    for session in [&first, &second] {
        let outcome = try_call(session, "whoami", json!({})).await;
        let message = outcome.expect_err("a revoked token's session must be refused");
        assert!(is_unauthorized(&message), "{message}");
    }
    assert_eq!(status_of(&url, &secret).await.0, 401);

    // Pausing bites the same way, and resuming restores access.
    let (id, secret) = create(&admin, json!({"name": "pausable", "parent": "none"})).await;
    let session = connect(path, &url, &secret).await;
    ok(&session, "whoami", json!({})).await;
    ok(&admin, "pause_token", json!({"id": id})).await;
    let message = try_call(&session, "whoami", json!({}))
        .await
        .expect_err("a paused token's session must be refused");
    assert!(is_unauthorized(&message), "{message}");
    let (status, challenge, _) = status_of(&url, &secret).await;
    assert_eq!(status, 401);
    assert!(
        challenge.contains(&format!("token {id} is paused\"")),
        "{challenge}"
    );
    ok(&admin, "resume_token", json!({"id": id})).await;
    assert_eq!(status_of(&url, &secret).await.0, 200);
    ok(&session, "whoami", json!({})).await;

    // Expiry reached while the session is open and its admission remembered: the next
    // request after it is refused.
    let (id, secret) = create(
        &admin,
        json!({"name": "brief", "parent": "none", "ttl_seconds": 2}),
    )
    .await;
    let session = connect(path, &url, &secret).await;
    ok(&session, "whoami", json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let message = loop {
        match try_call(&session, "whoami", json!({})).await {
            Ok(_) => {
                assert!(Instant::now() < deadline, "{id} never expired");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(message) => break message,
        }
    };
    assert!(is_unauthorized(&message), "{message}");
    let (status, challenge, _) = status_of(&url, &secret).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("has expired"), "{challenge}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_bites_on_the_next_request_of_every_session() {
    revocation_pausing_and_expiry_bite_on_the_next_request(Via::Rmcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_bites_on_the_next_request_of_every_session_in_the_lane() {
    revocation_pausing_and_expiry_bite_on_the_next_request(Via::Lane).await;
}

/// An open response stream (SSE) of a token that is revoked closes within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_close_when_their_token_is_revoked() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[]);
    let admin = connect_http(&server.url(), server.admin()).await;
    let (id, secret) = create(&admin, json!({"name": "streamer", "parent": "none"})).await;

    let opened = raw_initialize(&server.url(), &[("authorization", &bearer(&secret))]).await;
    let session = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    drop(opened);
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string();
    let headers = [
        ("authorization", bearer(&secret)),
        ("mcp-session-id", session.clone()),
        ("mcp-protocol-version", "2025-11-25".to_owned()),
    ];
    let header_refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    raw_post(&server.url(), &header_refs, initialized).await;

    let mut stream = reqwest::Client::new()
        .get(server.url())
        .header("accept", "text/event-stream")
        .header("authorization", bearer(&secret))
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let reader = tokio::spawn(async move {
        while let Ok(Some(_)) = stream.chunk().await {}
        Instant::now()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !reader.is_finished(),
        "the stream stays open while the token is valid"
    );

    let revoked_at = Instant::now();
    ok(&admin, "revoke_token", json!({"id": id})).await;
    let closed_at = tokio::time::timeout(Duration::from_secs(3), reader)
        .await
        .expect("the stream closes after revocation")
        .unwrap();
    let delay = closed_at.duration_since(revoked_at);
    assert!(
        delay < Duration::from_secs(1),
        "stream closed {delay:?} after revocation"
    );
}

/// The agent flow of SPEC §1: an orchestrator mints a narrower child for a sub-agent, cannot
/// escalate, and revoking the orchestrator cuts the child off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_mints_uses_and_loses_a_child_token() {
    agent_flow(Via::Rmcp).await;
}

/// The same flow in plain requests, as the official SDKs send them: the express lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_mints_uses_and_loses_a_child_token_in_the_lane() {
    agent_flow(Via::Lane).await;
}

async fn agent_flow(path: Via) {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[]);
    let admin = connect(path, &server.url(), server.admin()).await;
    let (orchestrator_id, orchestrator_secret) = create(
        &admin,
        json!({
            "name": "orchestrator",
            "parent": "none",
            "tools": ["create_token", "list_tokens", "revoke_token", "whoami"],
            "buckets": ["a", "b"],
            "ttl_seconds": 3600
        }),
    )
    .await;
    let orchestrator = connect(path, &server.url(), &orchestrator_secret).await;
    assert_eq!(
        tool_names(&orchestrator).await,
        ["create_token", "list_tokens", "revoke_token", "whoami"]
    );

    let child = ok(
        &orchestrator,
        "create_token",
        json!({"name": "reader", "buckets": ["a"], "tools": ["whoami"]}),
    )
    .await;
    assert_eq!(child["parent_id"], json!(orchestrator_id));
    assert_eq!(child["depth"], 1);
    assert_eq!(child["created_by"], json!(orchestrator_id));
    let child_secret = child["token"].as_str().unwrap();
    let sub_agent = connect(path, &server.url(), child_secret).await;
    assert_eq!(tool_names(&sub_agent).await, ["whoami"]);
    assert_eq!(
        ok(&sub_agent, "whoami", json!({})).await["buckets"],
        json!(["a"])
    );
    let refused = err(
        &sub_agent,
        "create_token",
        json!({"name": "grandchild"}),
        "forbidden",
    )
    .await;
    assert!(
        refused.contains("may not call create_token: not in its tool allowlist [whoami]"),
        "{refused}"
    );

    let past_own_expiry = "2099-01-01T00:00:00Z";
    for (args, fields) in [
        (json!({"name": "x", "buckets": ["c"]}), vec!["buckets"]),
        (json!({"name": "x", "tools": ["*"]}), vec!["tools"]),
        (json!({"name": "x", "admin": true}), vec!["admin"]),
        (
            json!({"name": "x", "expires_at": past_own_expiry}),
            vec!["expires_at"],
        ),
        (
            json!({"name": "x", "buckets": ["c"], "tools": ["*"], "admin": true, "expires_at": past_own_expiry}),
            vec!["buckets", "tools", "admin", "expires_at"],
        ),
    ] {
        let message = err(
            &orchestrator,
            "create_token",
            args.clone(),
            "scope_exceeds_parent",
        )
        .await;
        for field in fields {
            assert!(
                message.contains(field),
                "{args}: {message:?} should name {field}"
            );
        }
    }
    let listed = ok(&orchestrator, "list_tokens", json!({})).await;
    assert_eq!(
        listed["records"].as_array().unwrap().len(),
        2,
        "itself and its child only"
    );

    ok(&admin, "revoke_token", json!({"id": orchestrator_id})).await;
    let message = try_call(&sub_agent, "whoami", json!({}))
        .await
        .expect_err("the child's session must be refused");
    assert!(is_unauthorized(&message), "{message}");
    let (status, challenge, _) = status_of(&server.url(), child_secret).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("is revoked"), "{challenge}");
    // Revocation cascades: the child's own record is revoked too, not only refused through its
    // ancestor ("is revoked by its ancestor" would also match the challenge above).
    let child_id = child["id"].as_str().unwrap();
    let record = ok(&admin, "get_token", json!({"id": child_id})).await;
    assert_eq!(record["status"], "revoked", "{record}");
    assert_eq!(record["effective_status"], "revoked", "{record}");
    assert!(record["revoked_at"].is_string(), "{record}");
    assert!(
        !challenge.contains("by its ancestor"),
        "the child's own revocation is what it meets: {challenge}"
    );
}

/// Sleeps past the next minute boundary when fewer than `margin` seconds of this minute are
/// left, so that calls made within `margin` seconds share one rate window (the server's windows
/// are calendar minutes of the same clock).
async fn within_one_minute(margin: u64) {
    let into_minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 60_000;
    let left = 60_000 - into_minute as u64;
    if left < margin * 1000 {
        tokio::time::sleep(Duration::from_millis(left + 50)).await;
    }
}

/// `get_token` of `id` by the admin, polled until `field` reads `expected` (use counts are
/// written behind, and may lag) or a generous deadline passes; returns the last record.
async fn poll_until(admin: &impl Tools, id: &str, field: &str, expected: Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let record = ok(admin, "get_token", json!({"id": id})).await;
        if record[field] == expected || Instant::now() > deadline {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Uses and rate limits bite over the real transport: `tools/call` counts every admitted call
/// (against the token and each ancestor with a limit), refuses the call after the last use
/// with `limit_exceeded` and the call over the rate with `rate_limited`, and `use_count` counts
/// admitted calls only (ARCHITECTURE invariant 8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_call_counts_uses_and_rate_limits_over_http() {
    uses_and_rate_limits(Via::Rmcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_call_counts_uses_and_rate_limits_in_the_lane() {
    uses_and_rate_limits(Via::Lane).await;
}

async fn uses_and_rate_limits(path: Via) {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[]);
    let url = server.url();
    let admin = connect(path, &url, server.admin()).await;

    // max_uses: exactly that many calls, each reporting what is left, then limit_exceeded.
    let (id, secret) = create(
        &admin,
        json!({"name": "three", "parent": "none", "max_uses": 3}),
    )
    .await;
    let agent = connect(path, &url, &secret).await;
    for left in [2, 1, 0] {
        let me = ok(&agent, "whoami", json!({})).await;
        assert_eq!(me["remaining_uses"], left, "{me}");
    }
    let message = err(&agent, "whoami", json!({}), "limit_exceeded").await;
    assert_eq!(
        message,
        format!("token {id} has no uses left: its max_uses of 3 are all used")
    );
    err(&agent, "list_tokens", json!({}), "limit_exceeded").await;
    let record = poll_until(&admin, &id, "use_count", json!(3)).await;
    assert_eq!(
        record["use_count"], 3,
        "refused calls are not uses: {record}"
    );
    assert_eq!(record["remaining_uses"], 0, "{record}");
    assert!(record["last_used_at"].is_string(), "{record}");

    // Uses count along the chain: a child's calls spend its parent's uses too.
    let (parent_id, parent_secret) = create(
        &admin,
        json!({"name": "parent", "parent": "none", "max_uses": 4}),
    )
    .await;
    let (child_id, child_secret) = create(
        &admin,
        json!({"name": "child", "parent": parent_id, "max_uses": 4}),
    )
    .await;
    let child = connect(path, &url, &child_secret).await;
    for left in [3, 2] {
        assert_eq!(
            ok(&child, "whoami", json!({})).await["remaining_uses"],
            left
        );
    }
    let parent = connect(path, &url, &parent_secret).await;
    for left in [1, 0] {
        assert_eq!(
            ok(&parent, "whoami", json!({})).await["remaining_uses"],
            left
        );
    }
    let message = err(&child, "whoami", json!({}), "limit_exceeded").await;
    assert_eq!(
        message,
        format!(
            "token {child_id} has no uses left: its ancestor {parent_id}'s max_uses of 4 are all used"
        )
    );
    let child_record = poll_until(&admin, &child_id, "use_count", json!(2)).await;
    assert_eq!(child_record["use_count"], 2, "{child_record}");
    assert_eq!(child_record["remaining_uses"], 2, "{child_record}");
    let parent_record = poll_until(&admin, &parent_id, "use_count", json!(2)).await;
    assert_eq!(parent_record["use_count"], 2, "{parent_record}");
    assert_eq!(parent_record["remaining_uses"], 0, "{parent_record}");

    // rate_limit_per_minute: that many calls in a minute, then rate_limited.
    let (rated_id, rated_secret) = create(
        &admin,
        json!({"name": "rated", "parent": "none", "rate_limit_per_minute": 2}),
    )
    .await;
    let rated = connect(path, &url, &rated_secret).await;
    within_one_minute(10).await;
    ok(&rated, "whoami", json!({})).await;
    ok(&rated, "list_tokens", json!({})).await;
    let message = err(&rated, "whoami", json!({}), "rate_limited").await;
    assert_eq!(
        message,
        format!(
            "token {rated_id} is rate limited: its limit of 2 calls in any 60 seconds is reached; retry shortly"
        )
    );
    let record = poll_until(&admin, &rated_id, "use_count", json!(2)).await;
    assert_eq!(record["use_count"], 2, "{record}");
    assert_eq!(record["remaining_uses"], Value::Null, "{record}");

    // A token without limits counts its uses as well.
    let (free_id, free_secret) = create(&admin, json!({"name": "free", "parent": "none"})).await;
    let free = connect(path, &url, &free_secret).await;
    for _ in 0..5 {
        ok(&free, "whoami", json!({})).await;
    }
    let record = poll_until(&admin, &free_id, "use_count", json!(5)).await;
    assert_eq!(record["use_count"], 5, "{record}");
    for client in [agent, child, parent, rated, free, admin] {
        client.close().await;
    }
}
