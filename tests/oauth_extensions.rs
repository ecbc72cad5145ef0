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
    let page = open_page(&base, &client_id, &challenge, &[("scope", "tool:create_token")]).await;
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
    let refused = err(&connector, "create_token", json!({"name": "mine"}), "forbidden").await;
    assert!(refused.contains("create_token"), "{refused}");

    // Naming a management tool without ticking is refused on the page: nothing approved.
    let before = token_count(&admin).await;
    let (_, challenge) = pkce();
    let page = open_page(&base, &client_id, &challenge, &[]).await;
    let response = approve(&base, &page, &alice, &[("tools", "whoami create_token")]).await;
    assert_eq!(response.status(), StatusCode::OK, "shown again, no redirect");
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
