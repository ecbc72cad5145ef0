//! OAuth for today's clients (issue 28, SPEC §11) against the real binary over HTTP: consent
//! defaults that cannot surprise, refreshes that say why their grant ended, RFC 7662
//! introspection, RFC 8693 token exchange, scope step-up and what rotating an approver does.

mod common;

use common::oauth::*;
use common::{connect_http, err, ok, tool_names};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn management_tools_are_granted_only_when_the_person_ticks_them() {
    let (_dir, server) = start(&[]);
    let base = base(&server);
    let admin = connect_http(&server.url(), server.admin()).await;
    let (alice, _) = approver(&admin, json!(["*"])).await;
    let client_id = register_client(&base, "Claude").await;

    // The page says what an empty Tools field means, and "Manage tokens" starts unticked.
    let (_, challenge) = pkce();
    let page = open_page(
        &base,
        &client_id,
        &challenge,
        &[("scope", "tool:create_token")],
    )
    .await;
    assert!(
        page.html.contains("except those that manage tokens"),
        "{}",
        page.html
    );
    assert!(page.html.contains("name=\"manage\""), "{}", page.html);
    assert!(!page.html.contains("id=\"manage\" value=\"1\" checked"));

    // Empty Tools, not ticked: every tool but those that manage tokens.
    let tokens = grant(&base, &client_id, &alice, &[]).await;
    let connector = connect_http(&server.url(), tokens["access_token"].as_str().unwrap()).await;
    let names = tool_names(&connector).await;
    for management in [
        "create_token",
        "update_token",
        "scope_token",
        "pause_token",
        "resume_token",
        "rotate_token",
        "revoke_token",
        "delete_token",
    ] {
        assert!(
            !names.iter().any(|n| n == management),
            "{management} in {names:?}"
        );
    }
    assert!(names.iter().any(|n| n == "whoami"), "{names:?}");
    // Calling one anyway: a step-up challenge (the person may tick "Manage tokens" later).
    let access = tokens["access_token"].as_str().unwrap();
    let session = open_session(&server, access).await;
    let refused = session_post(&server, access, &session, tools_call("create_token")).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let challenge = refused.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("scope=\"tool:create_token\""),
        "{challenge}"
    );

    // Naming a management tool without ticking is refused on the page: nothing approved.
    let before = token_count(&admin).await;
    let (_, challenge) = pkce();
    let page = open_page(&base, &client_id, &challenge, &[]).await;
    let response = approve(&base, &page, &alice, &[("tools", "whoami create_token")]).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "shown again, no redirect"
    );
    let html = response.text().await.unwrap();
    assert!(html.contains("Manage tokens"), "{html}");
    assert!(html.contains("id=\"error\""), "{html}");
    assert_eq!(token_count(&admin).await, before);

    // Ticked: the connector may mint its own children.
    let tokens = grant(&base, &client_id, &alice, &[("manage", "1")]).await;
    let connector = connect_http(&server.url(), tokens["access_token"].as_str().unwrap()).await;
    assert!(
        tool_names(&connector)
            .await
            .iter()
            .any(|n| n == "create_token")
    );
    ok(&connector, "create_token", json!({"name": "sub-agent"})).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_refused_because_its_grant_ended_says_why() {
    let (_dir, server) = start(&[]);
    let base = base(&server);
    let admin = connect_http(&server.url(), server.admin()).await;
    let (alice, alice_id) = approver(&admin, json!(["*"])).await;
    let client_id = register_client(&base, "Claude").await;

    // A code used twice ends the grant its first use made.
    let (code, verifier) = approved_code(&base, &client_id, &alice, &[]).await;
    let exchange = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("client_id", client_id.as_str()),
        ("code_verifier", verifier.as_str()),
    ];
    let (status, tokens) = token_request(&base, &exchange).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let (_, again) = token_request(&base, &exchange).await;
    assert_eq!(again["error"], "invalid_grant", "{again}");
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let (status, body) = refresh_with(&base, &client_id, refresh).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant", "{body}");
    let why = body["error_description"].as_str().unwrap();
    assert!(
        why.contains("ended") && why.contains("authorization code reuse"),
        "{why}"
    );

    // A revoked approver ends the grant at the next refresh, which says so (then and after).
    let tokens = grant(&base, &client_id, &alice, &[]).await;
    let refresh = tokens["refresh_token"].as_str().unwrap();
    ok(&admin, "revoke_token", json!({"id": alice_id})).await;
    let before = token_count(&admin).await;
    for _ in 0..2 {
        let (_, body) = refresh_with(&base, &client_id, refresh).await;
        assert_eq!(body["error"], "invalid_grant", "{body}");
        let why = body["error_description"].as_str().unwrap();
        assert!(
            why.contains("ended") && why.contains("approving token was revoked"),
            "{why}"
        );
    }
    assert_eq!(token_count(&admin).await, before, "nothing minted");

    // An unknown refresh token is still just unknown.
    let (_, body) = refresh_with(&base, &client_id, "no-such-refresh-token").await;
    assert_eq!(body["error_description"], "unknown refresh token");
}

/// POSTs `token` to `/oauth/introspect` with `caller` as the bearer (if any).
async fn introspect(base: &str, caller: Option<&str>, token: &str) -> (StatusCode, String) {
    let mut request = http()
        .post(format!("{base}/oauth/introspect"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([("token", token)]).unwrap());
    if let Some(caller) = caller {
        request = request.header("authorization", common::bearer(caller));
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    if status == StatusCode::OK {
        assert_eq!(response.headers()["cache-control"], "no-store");
    }
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn introspection_tells_active_from_inactive_and_nothing_more() {
    let (_dir, server) = start(&[]);
    let base = base(&server);
    let admin = connect_http(&server.url(), server.admin()).await;
    let meta = server_metadata(&base).await;
    assert_eq!(
        meta["introspection_endpoint"],
        format!("{base}/oauth/introspect")
    );

    // The service's token: an admin that may call verify_token (and is rate limited).
    let service = ok(
        &admin,
        "create_token",
        json!({"name": "resource server", "admin": true, "tools": ["verify_token"],
               "rate_limit_per_minute": 30}),
    )
    .await;
    let service = service["token"].as_str().unwrap().to_owned();

    // Active: the effective scope (a parent narrowed after the child was minted narrows it).
    let parent = ok(
        &admin,
        "create_token",
        json!({"name": "parent", "buckets": ["docs", "notes"],
               "tools": ["whoami", "list_*", "create_token"], "ttl_seconds": 3600}),
    )
    .await;
    let parent_client = connect_http(&server.url(), parent["token"].as_str().unwrap()).await;
    let child = ok(
        &parent_client,
        "create_token",
        json!({"name": "child", "tools": ["whoami", "list_*"]}),
    )
    .await;
    ok(
        &admin,
        "scope_token",
        json!({"id": parent["id"], "buckets": ["docs"], "deny_tools": ["list_audit_events"]}),
    )
    .await;
    // Shortening the parent's life shortens the child's effective one.
    ok(
        &admin,
        "update_token",
        json!({"id": parent["id"], "expires_at": time_in(600)}),
    )
    .await;
    let secret = child["token"].as_str().unwrap();
    let (status, body) = introspect(&base, Some(&service), secret).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let active: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(active["active"], json!(true), "{active}");
    assert_eq!(active["sub"], child["id"]);
    assert_eq!(active["token_type"], "Bearer");
    assert_eq!(
        active["scope"], "bucket:docs tool:list_* tool:whoami",
        "{active}"
    );
    assert_eq!(active["buckets"], json!(["docs"]));
    assert_eq!(active["deny_tools"], json!(["list_audit_events"]));
    let exp = active["exp"].as_i64().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((now + 590..=now + 600).contains(&exp), "{active}");
    assert!(
        active.get("client_id").is_none(),
        "not an OAuth token: {active}"
    );
    assert!(!body.contains(secret), "the secret is never echoed");

    // An OAuth-issued token names its client.
    let (alice, _) = approver(&admin, json!(["*"])).await;
    let client_id = register_client(&base, "Claude").await;
    let tokens = grant(&base, &client_id, &alice, &[]).await;
    let (_, body) = introspect(
        &base,
        Some(&service),
        tokens["access_token"].as_str().unwrap(),
    )
    .await;
    let issued: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(issued["client_id"], json!(client_id), "{issued}");

    // Inactive, whatever the reason: byte for byte the same answer.
    let revoked = ok(&admin, "create_token", json!({"name": "revoked"})).await;
    ok(&admin, "revoke_token", json!({"id": revoked["id"]})).await;
    let paused = ok(&admin, "create_token", json!({"name": "paused"})).await;
    ok(&admin, "pause_token", json!({"id": paused["id"]})).await;
    let expiring = ok(
        &admin,
        "create_token",
        json!({"name": "expiring", "ttl_seconds": 1}),
    )
    .await;
    let revoked_parent = ok(&admin, "create_token", json!({"name": "p"})).await;
    let orphan = ok(
        &connect_http(&server.url(), revoked_parent["token"].as_str().unwrap()).await,
        "create_token",
        json!({"name": "orphan"}),
    )
    .await;
    ok(&admin, "revoke_token", json!({"id": revoked_parent["id"]})).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let unknown = "mcp_000000000000000000000000000000000000";
    for inactive in [
        revoked["token"].as_str().unwrap(),
        paused["token"].as_str().unwrap(),
        expiring["token"].as_str().unwrap(),
        orphan["token"].as_str().unwrap(),
        unknown,
        "mcp_short",
        "not a token at all",
        &"x".repeat(5_000),
    ] {
        let (status, body) = introspect(&base, Some(&service), inactive).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, r#"{"active":false}"#)
        );
    }

    // Callers without the right: no credentials or bad ones (401), a token that may not call
    // verify_token or is no admin (403). None learns anything about the token.
    let (status, body) = introspect(&base, None, secret).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = introspect(&base, Some(unknown), secret).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let no_verify = ok(
        &admin,
        "create_token",
        json!({"name": "admin without verify", "admin": true, "tools": ["whoami"]}),
    )
    .await;
    let not_admin = ok(
        &admin,
        "create_token",
        json!({"name": "not admin", "tools": ["verify_token"]}),
    )
    .await;
    for caller in [&no_verify, &not_admin] {
        let (status, body) = introspect(&base, caller["token"].as_str(), secret).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(!body.contains("active"), "{body}");
    }

    // Bounded: an oversized body is refused; the caller's rate limit counts introspections.
    let response = http()
        .post(format!("{base}/oauth/introspect"))
        .header("authorization", common::bearer(&service))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", "a".repeat(20_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let mut limited = None;
    for i in 0..40 {
        let (status, _) = introspect(&base, Some(&service), secret).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(i);
            break;
        }
        assert_eq!(status, StatusCode::OK);
    }
    assert!(
        limited.is_some(),
        "the caller's rate limit of 30 a minute never applied"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn introspection_without_valid_credentials_is_bounded_per_address() {
    let (_dir, server) = start(&[]);
    let base = base(&server);
    let admin = connect_http(&server.url(), server.admin()).await;
    let service = ok(
        &admin,
        "create_token",
        json!({"name": "resource server", "admin": true, "tools": ["verify_token"]}),
    )
    .await;
    let service = service["token"].as_str().unwrap().to_owned();
    let unknown = "mcp_000000000000000000000000000000000000";
    let mut refused_at = None;
    for i in 0..700 {
        let (status, _) = introspect(&base, Some(unknown), unknown).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            refused_at = Some(i);
            break;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // 600 a minute (the bucket refills a little while the loop runs).
    let refused_at = refused_at.expect("never refused");
    assert!((600..620).contains(&refused_at), "{refused_at}");
    // A valid caller from elsewhere is unaffected; from the same address it waits too (the
    // address is what is counted). The server's own admin over MCP is unaffected.
    let (status, _) = introspect(&base, Some(&service), unknown).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    ok(&admin, "whoami", json!({})).await;
}

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// An RFC 8693 exchange of `subject` with `extra` parameters.
async fn exchange(
    base: &str,
    subject: &str,
    extra: &[(&str, &str)],
) -> (StatusCode, serde_json::Value) {
    let mut form = vec![
        ("grant_type", EXCHANGE),
        ("subject_token", subject),
        ("subject_token_type", ACCESS_TOKEN),
    ];
    form.extend_from_slice(extra);
    token_request(base, &form).await
}

/// Every audit event's action and target, oldest first.
async fn audit_trail(admin: &common::Client) -> Vec<(String, String)> {
    let page = ok(admin, "list_audit_events", json!({"limit": 100})).await;
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default().to_owned(),
                e["target"].to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn token_exchange_mints_a_child_that_cannot_exceed_its_subject() {
    let (_dir, server) = start(&["--max-depth", "2"]);
    let base = base(&server);
    let admin = connect_http(&server.url(), server.admin()).await;
    let meta = server_metadata(&base).await;
    assert!(
        meta["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!(EXCHANGE)),
        "{meta}"
    );
    // The agent's token (depth 1): two buckets, three tools, a denial, two minutes to live.
    let agent = ok(
        &admin,
        "create_token",
        json!({"name": "agent", "buckets": ["docs", "notes"],
               "tools": ["whoami", "list_tokens", "create_token"],
               "deny_tools": ["list_tokens"], "ttl_seconds": 120}),
    )
    .await;
    let subject = agent["token"].as_str().unwrap();

    let resource = format!("{base}/mcp");
    let (status, body) = exchange(
        &base,
        subject,
        &[
            ("scope", "bucket:docs tool:whoami read_only"),
            ("resource", &resource),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(body["token_type"], "Bearer");
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert_eq!(body["scope"], "read_only bucket:docs tool:whoami");
    let expires_in = body["expires_in"].as_i64().unwrap();
    assert!(
        (100..=120).contains(&expires_in),
        "never past the subject: {body}"
    );
    let child_secret = body["access_token"].as_str().unwrap().to_owned();
    let child = connect_http(&server.url(), &child_secret).await;
    let me = ok(&child, "whoami", json!({})).await;
    assert_eq!(me["parent_id"], agent["id"]);
    assert_eq!(me["created_by"], agent["id"]);
    assert_eq!(me["depth"], json!(2));
    assert_eq!(me["buckets"], json!(["docs"]));
    assert_eq!(me["tools"], json!(["whoami"]));
    assert_eq!(me["read_only"], json!(true));
    assert_eq!(
        me["deny_tools"],
        json!(["list_tokens"]),
        "denials inherited"
    );
    assert_eq!(me["metadata"]["oauth_token_exchange"], json!(true));
    // Audited like create_token: the subject created the child.
    let events = ok(
        &admin,
        "list_audit_events",
        json!({"token_id": me["id"], "limit": 10}),
    )
    .await;
    let create = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "create")
        .unwrap_or_else(|| panic!("no create event: {events}"));
    assert_eq!(create["actor"], agent["id"], "{create}");

    // Omitted scope: the subject's own (inherited, as create_token does).
    let (status, body) = exchange(&base, subject, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Escalations and bad requests: refused, and nothing is minted or audited.
    let revoked = ok(&admin, "create_token", json!({"name": "gone"})).await;
    ok(&admin, "revoke_token", json!({"id": revoked["id"]})).await;
    let cannot_mint = ok(
        &admin,
        "create_token",
        json!({"name": "cannot mint", "tools": ["whoami"]}),
    )
    .await;
    let before_tokens = token_count(&admin).await;
    let before_audit = audit_trail(&admin).await;
    let child_of_child = child_secret.clone();
    // (subject, extra parameters, error, what the description says)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            subject,
            vec![("scope", "bucket:secrets")],
            "invalid_scope",
            "buckets",
        ),
        (
            subject,
            vec![("scope", "tool:revoke_token")],
            "invalid_scope",
            "tools",
        ),
        (subject, vec![("scope", "tool:*")], "invalid_scope", "tools"),
        (
            subject,
            vec![("scope", "admin")],
            "invalid_scope",
            "unknown scope",
        ),
        (
            subject,
            vec![("resource", "https://elsewhere.example/mcp")],
            "invalid_target",
            "",
        ),
        (
            subject,
            vec![("audience", "https://elsewhere.example")],
            "invalid_target",
            "",
        ),
        (
            subject,
            vec![("actor_token", subject), ("actor_token_type", ACCESS_TOKEN)],
            "invalid_request",
            "actor",
        ),
        (
            subject,
            vec![(
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:id_token",
            )],
            "invalid_request",
            "",
        ),
        (
            revoked["token"].as_str().unwrap(),
            vec![],
            "invalid_request",
            "revoked",
        ),
        (
            "mcp_000000000000000000000000000000000000",
            vec![],
            "invalid_request",
            "",
        ),
        ("nonsense", vec![], "invalid_request", ""),
        (
            cannot_mint["token"].as_str().unwrap(),
            vec![],
            "invalid_request",
            "create_token",
        ),
        // The child holds no create_token, and would be past --max-depth 2 anyway.
        (&child_of_child, vec![], "invalid_request", "create_token"),
    ];
    for (subject_token, extra, error, says) in cases {
        let (status, body) = exchange(&base, subject_token, &extra).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{extra:?}: {body}");
        assert_eq!(body["error"], error, "{extra:?}: {body}");
        let description = body["error_description"].as_str().unwrap_or_default();
        assert!(description.contains(says), "{extra:?}: {body}");
        assert!(!body.to_string().contains(subject_token) || subject_token == "nonsense");
    }
    let (status, body) = token_request(
        &base,
        &[("grant_type", EXCHANGE), ("subject_token", subject)],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    assert_eq!(token_count(&admin).await, before_tokens, "nothing minted");
    assert_eq!(audit_trail(&admin).await, before_audit, "nothing audited");

    // The depth limit holds: a depth-2 subject that may mint cannot exchange past 2.
    let deep = ok(
        &connect_http(&server.url(), subject).await,
        "create_token",
        json!({"name": "deep", "tools": ["create_token", "whoami"], "deny_tools": []}),
    )
    .await;
    let (status, body) = exchange(&base, deep["token"].as_str().unwrap(), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("depth"),
        "{body}"
    );

    // The subject's rate limit counts exchanges like create_token calls.
    let limited = ok(
        &admin,
        "create_token",
        json!({"name": "limited", "tools": ["create_token"], "rate_limit_per_minute": 2}),
    )
    .await;
    let limited = limited["token"].as_str().unwrap();
    for _ in 0..2 {
        assert_eq!(exchange(&base, limited, &[]).await.0, StatusCode::OK);
    }
    let (status, body) = exchange(&base, limited, &[]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
}

/// Opens an MCP session with `secret` over raw HTTP: its id.
async fn open_session(server: &common::Server, secret: &str) -> String {
    let opened =
        common::raw_initialize(&server.url(), &[("authorization", &common::bearer(secret))]).await;
    assert_eq!(opened.status(), StatusCode::OK);
    let session = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let initialized = session_post(
        server,
        secret,
        &session,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(initialized.status(), StatusCode::ACCEPTED);
    session
}

async fn session_post(
    server: &common::Server,
    secret: &str,
    session: &str,
    message: serde_json::Value,
) -> reqwest::Response {
    common::raw_post(
        &server.url(),
        &[
            ("authorization", &common::bearer(secret)),
            ("mcp-session-id", session),
            ("mcp-protocol-version", "2025-11-25"),
        ],
        message.to_string(),
    )
    .await
}

fn tools_call(name: &str) -> serde_json::Value {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
           "params": {"name": name, "arguments": {}}})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consent_never_undoes_a_narrowing_of_the_grant_s_token() {
    let (_dir, server) = start(&[]);
    let base = base(&server);
    let admin = connect_http(&server.url(), server.admin()).await;
    let (alice, _) = approver(
        &admin,
        json!(["whoami", "list_tokens", "get_token", "create_token"]),
    )
    .await;
    let client_id = register_client(&base, "Claude").await;
    let tokens = grant(&base, &client_id, &alice, &[("tools", "whoami get_token")]).await;
    let (access, child, _) = granted(&server, &tokens).await;
    // The admin narrows the connector's token: one tool fewer, a rate limit.
    ok(
        &admin,
        "scope_token",
        json!({"id": child, "tools": ["whoami"]}),
    )
    .await;
    ok(
        &admin,
        "update_token",
        json!({"id": child, "rate_limit_per_minute": 2}),
    )
    .await;
    // A second consent asks for one more tool: no Add (it would mint from the grant's scope
    // and undo the narrowing: a review got get_token back and the limit gone), a grant of
    // its own, and the narrowed token unchanged.
    let (_, challenge) = pkce();
    let page = open_page(&base, &client_id, &challenge, &[]).await;
    let answered = approve(&base, &page, &alice, &[("tools", "list_tokens")]).await;
    assert_eq!(
        answered.status(),
        StatusCode::SEE_OTHER,
        "no Add/Separate page"
    );
    let view = ok(&admin, "get_token", json!({"id": child})).await;
    assert_eq!(view["tools"], json!(["whoami"]), "{view}");
    assert_eq!(view["rate_limit_per_minute"], 2, "{view}");
    assert_eq!(
        mcp_status(&server, &access).await,
        200,
        "the narrowed token still works"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connector_steps_up_its_scope_through_the_consent_page() {
    let (_dir, server) = start(&[]);
    let base = base(&server);
    let admin = connect_http(&server.url(), server.admin()).await;
    // The approver may call whoami, list_tokens and create_token, not get_token.
    let (alice, alice_id) =
        approver(&admin, json!(["whoami", "list_tokens", "create_token"])).await;
    let client_id = register_client(&base, "Claude").await;
    let tokens = grant(&base, &client_id, &alice, &[("tools", "whoami")]).await;
    let (access, first_child, refresh) = granted(&server, &tokens).await;
    let session = open_session(&server, &access).await;

    // A tool the grant lacks but the approver holds: 403 insufficient_scope naming it.
    let refused = session_post(&server, &access, &session, tools_call("list_tokens")).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let challenge = refused.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("scope=\"tool:list_tokens\""),
        "{challenge}"
    );
    assert!(challenge.contains("resource_metadata="), "{challenge}");
    // A tool the approver itself lacks: no consent could grant it, so an ordinary tool error.
    let refused = session_post(&server, &access, &session, tools_call("get_token")).await;
    assert_eq!(refused.status(), StatusCode::OK);
    let body = refused.text().await.unwrap();
    assert!(body.contains("forbidden"), "{body}");
    // A token not issued through OAuth gets the ordinary tool error too.
    let plain = ok(
        &admin,
        "create_token",
        json!({"name": "plain", "tools": ["whoami"]}),
    )
    .await;
    let plain = plain["token"].as_str().unwrap();
    let plain_session = open_session(&server, plain).await;
    let refused = session_post(&server, plain, &plain_session, tools_call("list_tokens")).await;
    assert_eq!(refused.status(), StatusCode::OK);
    // Allowed calls are untouched.
    let allowed = session_post(&server, &access, &session, tools_call("whoami")).await;
    assert_eq!(allowed.status(), StatusCode::OK);

    // The client asks again with the scope named; the person approves with the same token and
    // is shown what is new before anything changes.
    let (verifier, challenge) = pkce();
    let page = open_page(
        &base,
        &client_id,
        &challenge,
        &[("scope", "tool:list_tokens")],
    )
    .await;
    assert_eq!(field(&page.html, "tools"), "list_tokens", "prefilled");
    let before = token_count(&admin).await;
    let response = approve(&base, &page, &alice, &[("tools", "list_tokens")]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let html = response.text().await.unwrap();
    let added = html.split("id=\"added_scope\"").nth(1).unwrap();
    let added = added.split("</ul>").next().unwrap();
    assert!(added.contains("tool list_tokens"), "{added}");
    assert!(!added.contains("tool whoami"), "{added}");
    let current = html.split("id=\"current_scope\"").nth(1).unwrap();
    assert!(current.contains("tool whoami"), "{current}");
    assert!(!html.contains(&alice), "the approver is never written back");
    assert_eq!(token_count(&admin).await, before, "nothing minted yet");

    let response = decide_again(&base, &page, "add").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let code = redirected(&response)["code"].clone();
    let (status, stepped) = token_request(
        &base,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", &client_id),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{stepped}");
    assert_eq!(stepped["scope"], "tool:whoami tool:list_tokens");
    let (new_access, new_child, new_refresh) = granted(&server, &stepped).await;
    assert_ne!(new_child, first_child);

    // The new token replaces the old one in the grant: the old stops, the session carries on
    // with the new one and may now call the tool; one grant, one live token.
    assert_eq!(mcp_status(&server, &access).await, 401);
    let now_allowed = session_post(&server, &new_access, &session, tools_call("list_tokens")).await;
    assert_eq!(now_allowed.status(), StatusCode::OK);
    let body = now_allowed.text().await.unwrap();
    assert!(!body.contains("forbidden"), "{body}");
    let children = ok(
        &admin,
        "list_tokens",
        json!({"parent_id": alice_id, "status": "active"}),
    )
    .await;
    assert_eq!(
        children["records"].as_array().unwrap().len(),
        1,
        "{children}"
    );
    // The old refresh token is gone (not "spent": presenting it does not end the grant)…
    let (_, body) = refresh_with(&base, &client_id, &refresh).await;
    assert_eq!(body["error_description"], "unknown refresh token", "{body}");
    // …and the new one refreshes with the joined scope.
    let (status, body) = refresh_with(&base, &client_id, &new_refresh).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "tool:whoami tool:list_tokens");

    // "Separate" leaves the grant alone and makes one of its own.
    let (_, challenge) = pkce();
    let page = open_page(&base, &client_id, &challenge, &[]).await;
    let response = approve(&base, &page, &alice, &[("tools", "whoami")]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = decide_again(&base, &page, "separate").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    // A confirmation is one decision: the page cannot be confirmed twice.
    let response = decide_again(&base, &page, "add").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn rotating_an_approver_ends_the_connectors_it_approved() {
    let (_dir, server) = start(&[]);
    let base = base(&server);
    let admin = connect_http(&server.url(), server.admin()).await;
    let (alice, alice_id) = approver(&admin, json!(["*"])).await;
    let client_id = register_client(&base, "Claude").await;

    // Two connectors approved with alice's secret; one may manage tokens, minted a sub-agent
    // and wiped the grant's mark from its own metadata.
    let plain = grant(&base, &client_id, &alice, &[]).await;
    let managing = grant(&base, &client_id, &alice, &[("manage", "1")]).await;
    let (plain_access, _, plain_refresh) = granted(&server, &plain).await;
    let (managing_access, managing_id, _) = granted(&server, &managing).await;
    let managing_client = connect_http(&server.url(), &managing_access).await;
    let sub = ok(
        &managing_client,
        "create_token",
        json!({"name": "sub-agent"}),
    )
    .await;
    ok(
        &managing_client,
        "update_token",
        json!({"id": managing_id, "metadata": {}}),
    )
    .await;
    // An ordinary child of alice, not a connector.
    let alice_client = connect_http(&server.url(), &alice).await;
    let ordinary = ok(&alice_client, "create_token", json!({"name": "ordinary"})).await;

    let rotated = ok(
        &admin,
        "rotate_token",
        json!({"id": alice_id, "grace_seconds": 0}),
    )
    .await;
    let new_alice = rotated["token"].as_str().unwrap().to_owned();

    // The connectors stop at once, with what they minted; the ordinary child does not.
    assert_eq!(mcp_status(&server, &plain_access).await, 401);
    assert_eq!(mcp_status(&server, &managing_access).await, 401);
    assert_eq!(
        mcp_status(&server, sub["token"].as_str().unwrap()).await,
        401
    );
    assert_eq!(
        mcp_status(&server, ordinary["token"].as_str().unwrap()).await,
        200
    );
    let events = ok(
        &admin,
        "list_audit_events",
        json!({"token_id": alice_id, "action": "rotate"}),
    )
    .await;
    assert_eq!(
        events["events"][0]["changes"]["revoked_oauth_tokens"],
        json!(3),
        "{events}"
    );
    // Their refresh says why and mints nothing.
    let before = token_count(&admin).await;
    let (_, body) = refresh_with(&base, &client_id, &plain_refresh).await;
    assert_eq!(body["error"], "invalid_grant", "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("rotated"),
        "{body}"
    );
    assert_eq!(token_count(&admin).await, before);

    // A connector the new secret approves works, and refreshes.
    let fresh = grant(&base, &client_id, &new_alice, &[]).await;
    let (fresh_access, _, fresh_refresh) = granted(&server, &fresh).await;
    assert_eq!(mcp_status(&server, &fresh_access).await, 200);
    let (status, body) = refresh_with(&base, &client_id, &fresh_refresh).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A code approved before a rotation and exchanged after it mints nothing.
    let (code, verifier) = approved_code(&base, &client_id, &new_alice, &[]).await;
    ok(
        &admin,
        "rotate_token",
        json!({"id": alice_id, "grace_seconds": 0}),
    )
    .await;
    let before = token_count(&admin).await;
    let (status, body) = token_request(
        &base,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", &client_id),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "{body}"
    );
    let live = ok(
        &admin,
        "list_tokens",
        json!({"parent_id": alice_id, "status": "active", "limit": 100}),
    )
    .await;
    assert_eq!(
        live["records"].as_array().unwrap().len(),
        1,
        "only the ordinary child is left: {live}"
    );
    assert_eq!(token_count(&admin).await, before, "nothing minted");

    // A second consent checked before a rotation and decided after it (the page that asks
    // Add or Separate needs no secret) yields nothing either (a review got a connector that
    // way with a leaked secret after the owner rotated it with grace 0).
    let newest = rotated_secret(&admin, &alice_id).await;
    grant(&base, &client_id, &newest, &[]).await;
    let (verifier, challenge) = pkce();
    let page = open_page(&base, &client_id, &challenge, &[]).await;
    let asked = approve(&base, &page, &newest, &[]).await;
    assert_eq!(
        asked.status(),
        StatusCode::OK,
        "the page asks Add or Separate"
    );
    ok(
        &admin,
        "rotate_token",
        json!({"id": alice_id, "grace_seconds": 0}),
    )
    .await;
    let before = token_count(&admin).await;
    let decided = decide_again(&base, &page, "separate").await;
    let outcome = if decided.status() == StatusCode::SEE_OTHER {
        let code = redirected(&decided)["code"].clone();
        token_request(
            &base,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("client_id", &client_id),
                ("code_verifier", &verifier),
            ],
        )
        .await
        .1["error"]
            .clone()
    } else {
        json!(decided.status().as_u16())
    };
    assert_eq!(outcome, "invalid_grant", "refused at the exchange");
    assert_eq!(token_count(&admin).await, before, "nothing minted");
}

/// Rotates `id` (grace 0) and returns its new secret.
async fn rotated_secret(admin: &common::Client, id: &str) -> String {
    let rotated = ok(admin, "rotate_token", json!({"id": id, "grace_seconds": 0})).await;
    rotated["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_tool_outside_the_grant_names_its_bucket_and_tool() {
    let dir = tempfile::tempdir().unwrap();
    let upstreams = dir.path().join("upstreams.json");
    std::fs::write(
        &upstreams,
        json!({"mcpServers": {"notes": {
            "command": env!("CARGO_BIN_EXE_tokenwarden-test-upstream"),
            "env": {"FIXTURE_LOG": dir.path().join("fixture.log")},
        }}})
        .to_string(),
    )
    .unwrap();
    let server = common::Server::start(
        &dir.path().join("data"),
        &["--upstreams", upstreams.to_str().unwrap()],
    );
    let base = base(&server);
    let admin = connect_http(&server.url(), server.admin()).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ok(&admin, "list_buckets", json!({}))
        .await
        .to_string()
        .contains("\"connected\"")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the upstream never connected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (alice, _) = approver(&admin, json!(["*"])).await;
    let client_id = register_client(&base, "Claude").await;
    // Granted another bucket only: the approver holds every bucket.
    let tokens = grant(&base, &client_id, &alice, &[("buckets", "docs")]).await;
    let access = tokens["access_token"].as_str().unwrap();
    let session = open_session(&server, access).await;
    let refused = session_post(&server, access, &session, tools_call("notes__read_note")).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let challenge = refused.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("scope=\"bucket:notes tool:notes__read_note\""),
        "{challenge}"
    );
    // Calls within the grant are untouched.
    let allowed = session_post(&server, access, &session, tools_call("whoami")).await;
    assert_eq!(allowed.status(), StatusCode::OK);
}

/// The metadata keys introspection reports and step-up trusts (`oauth_client_id`,
/// `oauth_grant_id`…) are the OAuth server's: a caller can keep them, never set or change one
/// (a review made introspection report a chosen client_id for a plain child).
#[tokio::test(flavor = "multi_thread")]
async fn callers_cannot_set_the_oauth_server_s_metadata() {
    let (_dir, server) = start(&[]);
    let base = base(&server);
    let admin = connect_http(&server.url(), server.admin()).await;
    let forged = json!({"name": "plain", "metadata": {"oauth_client_id": "https://claude.ai/x"}});
    let message = err(&admin, "create_token", forged, "invalid_argument").await;
    assert!(message.contains("oauth_client_id"), "{message}");
    let plain = ok(&admin, "create_token", json!({"name": "plain"})).await;
    let id = plain["id"].as_str().unwrap().to_owned();
    err(
        &admin,
        "update_token",
        json!({"id": id, "metadata": {"oauth_grant_id": "g"}}),
        "invalid_argument",
    )
    .await;
    // A connector's own keys may be kept as they are (and dropped).
    let (alice, _) = approver(&admin, json!(["*"])).await;
    let client_id = register_client(&base, "Claude").await;
    let tokens = grant(&base, &client_id, &alice, &[]).await;
    let (_, child, _) = granted(&server, &tokens).await;
    let view = ok(&admin, "get_token", json!({"id": child})).await;
    let mut metadata = view["metadata"].clone();
    metadata["note"] = json!("kept");
    ok(
        &admin,
        "update_token",
        json!({"id": child, "metadata": metadata}),
    )
    .await;
    metadata["oauth_client_id"] = json!("https://elsewhere.example/x");
    err(
        &admin,
        "update_token",
        json!({"id": child, "metadata": metadata}),
        "invalid_argument",
    )
    .await;
}
