//! The OAuth 2.1 authorization server (issue 11, SPEC §11) against the real binary over HTTP:
//! discovery, registration, the consent page, code and refresh exchanges, revocation, and
//! every bad input of the issue, each checked to mint nothing and change nothing.

mod common;

use common::oauth::*;
use common::{Server, bearer, connect_http, err, ok, raw_initialize, tool_names};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn discovery_documents_and_challenges_need_no_token() {
    let (_dir, server) = start(&["--public-url", "https://tw.example.com/"]);
    let base = base(&server);
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let doc: Value = http()
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(doc["resource"], "https://tw.example.com/mcp", "{path}");
        assert_eq!(
            doc["authorization_servers"],
            json!(["https://tw.example.com"])
        );
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
        assert!(doc.get("scopes_supported").is_none(), "{doc}");
    }
    let meta = server_metadata(&base).await;
    let url = "https://tw.example.com";
    assert_eq!(meta["issuer"], url);
    assert_eq!(
        meta["authorization_endpoint"],
        format!("{url}/oauth/authorize")
    );
    assert_eq!(meta["token_endpoint"], format!("{url}/oauth/token"));
    assert_eq!(
        meta["registration_endpoint"],
        format!("{url}/oauth/register")
    );
    assert_eq!(meta["revocation_endpoint"], format!("{url}/oauth/revoke"));
    assert_eq!(meta["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(meta["response_types_supported"], json!(["code"]));
    assert_eq!(
        meta["grant_types_supported"],
        json!([
            "authorization_code",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:token-exchange"
        ])
    );
    assert_eq!(
        meta["token_endpoint_auth_methods_supported"],
        json!(["none"])
    );
    // No scopes_supported: clients would copy it into their request (read_only by default).
    assert!(meta.get("scopes_supported").is_none(), "{meta}");
    assert_eq!(
        meta["authorization_response_iss_parameter_supported"],
        json!(true)
    );

    // Every 401 names the metadata, with or without credentials.
    let expected =
        "resource_metadata=\"https://tw.example.com/.well-known/oauth-protected-resource\"";
    for headers in [vec![], vec![("authorization", "Bearer mcp_nope")]] {
        let response = raw_initialize(&server.url(), &headers).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let challenge = response.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.contains(expected), "{challenge}");
    }
    // The public URL's host and origin are the server's own: accepted at /mcp.
    let response = common::raw_post(
        &server.url(),
        &[
            ("host", "tw.example.com"),
            ("origin", "https://tw.example.com"),
            ("authorization", &bearer(server.admin())),
        ],
        common::initialize_body().to_string(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);

    // A bad public URL stops the start in one line.
    let dir = tempfile::tempdir().unwrap();
    for bad in ["ftp://x", "https://tw.example.com/tokenwarden"] {
        let output = std::process::Command::new(common::BIN)
            .arg("--data-dir")
            .arg(dir.path())
            .args(["serve", "--http", "127.0.0.1:0", "--public-url", bad])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{bad}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("invalid --public-url"), "{stderr}");
        assert_eq!(
            stderr
                .lines()
                .filter(|l| l.contains("--public-url"))
                .count(),
            1,
            "{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connector_gets_a_narrowed_child_of_its_approver_and_loses_it_with_the_approver() {
    let (_dir, server) = start(&[]);
    let base = base(&server);
    let admin = connect_http(&server.url(), server.admin()).await;
    let (alice, alice_id) = approver(&admin, json!(["*"])).await;
    let client_id = register_client(&base, "Claude").await;

    // Consent narrowed to two read-only tools.
    let tokens = grant(
        &base,
        &client_id,
        &alice,
        &[
            ("tools", "whoami list_tokens"),
            ("read_only", "1"),
            ("lifetime_seconds", "600"),
        ],
    )
    .await;
    assert_eq!(tokens["token_type"], "Bearer");
    let expires_in = tokens["expires_in"].as_i64().unwrap();
    assert!((590..=600).contains(&expires_in), "{tokens}");
    assert_eq!(tokens["scope"], "read_only tool:whoami tool:list_tokens");
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();

    // The access token is an ordinary token: MCP over HTTP, filtered tools, a child of alice.
    let connector = connect_http(&server.url(), &access).await;
    assert_eq!(tool_names(&connector).await, ["list_tokens", "whoami"]);
    let me = ok(&connector, "whoami", json!({})).await;
    let child_id = me["id"].as_str().unwrap().to_owned();
    assert_eq!(me["parent_id"], json!(alice_id));
    assert_eq!(me["created_by"], json!(alice_id));
    assert_eq!(me["read_only"], json!(true));
    assert_eq!(me["metadata"]["oauth_client_id"], json!(client_id));
    assert_eq!(me["metadata"]["oauth_client_name"], json!("Claude"));

    // Refresh: a new child, the old access token stops at once, the old refresh token is spent.
    let (status, refreshed) = token_request(
        &base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let access2 = refreshed["access_token"].as_str().unwrap().to_owned();
    let refresh2 = refreshed["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh2, refresh);
    assert_eq!(mcp_status(&server, &access).await, 401);
    assert_eq!(mcp_status(&server, &access2).await, 200);
    let second = connect_http(&server.url(), &access2).await;
    let me2 = ok(&second, "whoami", json!({})).await;
    assert_eq!(me2["parent_id"], json!(alice_id));
    assert_ne!(me2["id"], json!(child_id));

    // Reusing the spent refresh token revokes the grant: the current access token too.
    let before = token_count(&admin).await;
    let (status, body) = token_request(
        &base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert_eq!(mcp_status(&server, &access2).await, 401);
    let (status, body) = token_request(
        &base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh2),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!(body["error"], "invalid_grant", "{status} {body}");
    assert_eq!(token_count(&admin).await, before, "no token minted");

    // RFC 7009: revoking the refresh token ends its grant and access token.
    let tokens = grant(&base, &client_id, &alice, &[]).await;
    let access3 = tokens["access_token"].as_str().unwrap();
    assert_eq!(mcp_status(&server, access3).await, 200);
    let revoked = http()
        .post(format!("{base}/oauth/revoke"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([("token", tokens["refresh_token"].as_str().unwrap())])
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    assert_eq!(mcp_status(&server, access3).await, 401);
    // …and an access token likewise; an unknown token is fine too.
    let tokens = grant(&base, &client_id, &alice, &[]).await;
    let access4 = tokens["access_token"].as_str().unwrap();
    for token in [access4, "mcp_unknown", "nonsense"] {
        let revoked = http()
            .post(format!("{base}/oauth/revoke"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string([("token", token)]).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(revoked.status(), StatusCode::OK);
    }
    assert_eq!(mcp_status(&server, access4).await, 401);
    // Revoking through OAuth never reaches a token OAuth did not issue.
    let revoked = http()
        .post(format!("{base}/oauth/revoke"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([("token", alice.as_str())]).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    assert_eq!(mcp_status(&server, &alice).await, 200);

    // Pausing the approver cuts the connector off on its next request; resuming restores it;
    // revoking it ends it, and the refresh token with it.
    let tokens = grant(&base, &client_id, &alice, &[]).await;
    let access5 = tokens["access_token"].as_str().unwrap();
    assert_eq!(mcp_status(&server, access5).await, 200);
    ok(&admin, "pause_token", json!({"id": alice_id})).await;
    assert_eq!(mcp_status(&server, access5).await, 401);
    ok(&admin, "resume_token", json!({"id": alice_id})).await;
    assert_eq!(mcp_status(&server, access5).await, 200);
    ok(&admin, "revoke_token", json!({"id": alice_id})).await;
    assert_eq!(mcp_status(&server, access5).await, 401);
    let before = token_count(&admin).await;
    let (_, body) = token_request(
        &base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!(body["error"], "invalid_grant", "{body}");
    assert_eq!(token_count(&admin).await, before, "no token minted");

    // Every step is audited, and no secret, code, verifier or refresh token is in the log.
    let events = ok(&admin, "list_audit_events", json!({"limit": 100})).await;
    let actions: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "oauth_register",
        "oauth_approve",
        "oauth_token",
        "oauth_refresh",
        "oauth_revoke",
    ] {
        assert!(
            actions.contains(&action),
            "{action} missing from {actions:?}"
        );
    }
    let log = events.to_string();
    for secret in [&access, &refresh, &access2, &refresh2, &alice] {
        assert!(
            !log.contains(secret.as_str()),
            "a secret reached the audit log"
        );
    }
    assert!(
        !log.contains("verifier-"),
        "a verifier reached the audit log"
    );
    assert!(
        !server.stderr().contains(&refresh),
        "a refresh token reached the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_authorization_requests_never_redirect_anywhere_unregistered() {
    let (_dir, server) = start(&[]);
    let base = base(&server);
    let admin = connect_http(&server.url(), server.admin()).await;
    let client_id = register_client(&base, "Claude").await;
    let (_, challenge) = pkce();
    let count = token_count(&admin).await;

    // Unknown client, or a redirect URI not registered exactly: a 400 page, never a redirect.
    let other_client = [("client_id", "twc_unknown")];
    let tricks = [
        "http://127.0.0.1:9/callback/",
        "http://127.0.0.1:9/callback?x=1",
        "http://127.0.0.1:10/callback",
        "http://localhost:9/callback",
        "http://127.0.0.1:9/Callback",
        "http://127.0.0.1:9@evil.example/callback",
        "http://evil.example/callback",
        "https://127.0.0.1:9/callback",
        "http://127.0.0.1:9/callback#x",
        "",
    ];
    let mut cases: Vec<Vec<(&str, &str)>> = vec![other_client.to_vec()];
    for uri in &tricks {
        cases.push(vec![("redirect_uri", uri)]);
    }
    for case in cases {
        let mut params = vec![
            ("response_type", "code"),
            ("client_id", client_id.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        for (k, v) in &case {
            params.retain(|(key, _)| key != k);
            params.push((k, v));
        }
        let response = http()
            .get(authorize_url(&base, &params))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{case:?}");
        assert!(response.headers().get("location").is_none(), "{case:?}");
        assert_eq!(response.headers()["x-frame-options"], "DENY");
    }
    // A parameter given twice: 400, no redirect.
    let url = authorize_url(
        &base,
        &[("client_id", &client_id), ("client_id", &client_id)],
    );
    let response = http().get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers().get("location").is_none());

    // With client and redirect URI right, other faults get a 400 page too: anyone may
    // register a client, so redirecting errors to it would make an open redirector.
    let other_server = [("resource", "https://other.example/mcp")];
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[("code_challenge_method", "plain")], "invalid_request"),
        (&[("code_challenge_method", "")], "invalid_request"),
        (&[("code_challenge", "short")], "invalid_request"),
        (&[("response_type", "token")], "unsupported_response_type"),
        (&other_server, "invalid_target"),
    ];
    for (change, error) in cases {
        let mut params = vec![
            ("response_type", "code"),
            ("client_id", client_id.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("state", "st4te"),
        ];
        for (k, v) in change {
            params.retain(|(key, _)| key != k);
            params.push((k, v));
        }
        let response = http()
            .get(authorize_url(&base, &params))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{change:?}");
        assert!(response.headers().get("location").is_none(), "{change:?}");
        let page = response.text().await.unwrap();
        assert!(page.contains(error), "{change:?}: {page}");
    }
    // Too long a state or scope (the limits: 1,000 and 2,000 characters).
    let (long_state, long_scope) = ("s".repeat(1_001), "x ".repeat(1_001));
    for (k, v, what) in [
        ("state", long_state.as_str(), "state is too long"),
        ("scope", long_scope.as_str(), "scope is too long"),
    ] {
        let params = [
            ("response_type", "code"),
            ("client_id", client_id.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            (k, v),
        ];
        let response = http()
            .get(authorize_url(&base, &params))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{k}");
        assert!(response.headers().get("location").is_none());
        assert!(response.text().await.unwrap().contains(what), "{k}");
    }
    // No PKCE at all.
    let url = authorize_url(
        &base,
        &[
            ("response_type", "code"),
            ("client_id", &client_id),
            ("redirect_uri", REDIRECT),
        ],
    );
    let response = http().get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers().get("location").is_none());
    // The resource this server is, in either spelling, is fine.
    for resource in [format!("{base}/mcp"), base.clone()] {
        let response =
            consent_page(&base, &client_id, &challenge, &[("resource", &resource)]).await;
        assert_eq!(response.status(), StatusCode::OK, "{resource}");
    }
    assert_eq!(token_count(&admin).await, count, "nothing minted");
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_is_checked_and_bounded() {
    let (_dir, server) = start(&[
        "--oauth-registrations-per-minute",
        "1000",
        "--oauth-max-clients",
        "3",
    ]);
    let base = base(&server);
    for (body, error) in [
        (
            json!({"redirect_uris": ["http://evil.example/cb"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["https://claude.ai/cb#x"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["https://a@claude.ai/cb"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["javascript:alert(1)"]}),
            "invalid_redirect_uri",
        ),
        (json!({"redirect_uris": []}), "invalid_redirect_uri"),
        (json!({"client_name": "x"}), "invalid_redirect_uri"),
        (
            json!({"redirect_uris": [REDIRECT], "grant_types": ["client_credentials"]}),
            "invalid_client_metadata",
        ),
        (json!(["not", "an", "object"]), "invalid_client_metadata"),
    ] {
        let (status, answer) = register(&base, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer["error"], error, "{body}");
    }
    // Oversized documents: 413.
    let big = json!({"redirect_uris": [REDIRECT], "client_name": "x".repeat(17 * 1024)});
    let (status, _) = register(&base, big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Whatever method the client asks for, it is registered public.
    let (status, answer) = register(
        &base,
        json!({"redirect_uris": ["https://claude.ai/api/mcp/auth_callback"], "token_endpoint_auth_method": "client_secret_post"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(answer["token_endpoint_auth_method"], "none");
    assert_eq!(answer["client_name"], "unnamed client");
    // The count is bounded: recent clients are not evicted, so the fourth waits (503).
    register_client(&base, "two").await;
    register_client(&base, "three").await;
    let (status, answer) = register(&base, json!({"redirect_uris": [REDIRECT]})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");

    // A flood of registrations: 429 with Retry-After once a bucket is empty. Junk costs
    // nothing; one address gets half the minute's registrations (3 of 5), the others share
    // the rest under the ceiling.
    let (_dir2, flooded) = start(&["--oauth-registrations-per-minute", "5"]);
    let base2 = self::base(&flooded);
    let from = |peer: [u8; 4], body: String| {
        let client = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(peer))
            .build()
            .unwrap();
        let url = format!("{base2}/oauth/register");
        async move {
            let response = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            if response.status() == StatusCode::TOO_MANY_REQUESTS {
                assert!(response.headers().contains_key("retry-after"));
            }
            response.status().as_u16()
        }
    };
    let valid = || json!({"redirect_uris": [REDIRECT]}).to_string();
    for _ in 0..10 {
        assert_eq!(from([127, 0, 0, 1], "junk".into()).await, 400);
        assert_eq!(
            from(
                [127, 0, 0, 1],
                json!({"redirect_uris": ["http://x/"]}).to_string()
            )
            .await,
            400
        );
    }
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(from([127, 0, 0, 1], valid()).await);
    }
    assert_eq!(statuses, [201, 201, 201, 429], "one address gets its half");
    assert_eq!(
        from([127, 0, 0, 2], valid()).await,
        201,
        "another still registers"
    );
    assert_eq!(from([127, 0, 0, 3], valid()).await, 201);
    assert_eq!(
        from([127, 0, 0, 4], valid()).await,
        429,
        "the ceiling holds for all"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_token_requests_are_refused_and_mint_nothing() {
    let (_dir, server) = start(&[]);
    let base = base(&server);
    let admin = connect_http(&server.url(), server.admin()).await;
    let (alice, alice_id) = approver(&admin, json!(["*"])).await;
    let client_id = register_client(&base, "Claude").await;
    let other_client = register_client(&base, "Other").await;
    let count = token_count(&admin).await;

    let exchange = |code: String, verifier: String, overrides: Vec<(&'static str, String)>| {
        let base = base.clone();
        let client_id = client_id.clone();
        async move {
            let mut form: Vec<(&str, String)> = vec![
                ("grant_type", "authorization_code".into()),
                ("code", code),
                ("redirect_uri", REDIRECT.into()),
                ("client_id", client_id),
                ("code_verifier", verifier),
            ];
            for (k, v) in overrides {
                form.retain(|(key, _)| *key != k);
                if !v.is_empty() {
                    form.push((k, v));
                }
            }
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            token_request(&base, &form).await
        }
    };
    let wrong_verifier = pkce().0;
    let cases: Vec<(Vec<(&'static str, String)>, &str)> = vec![
        (vec![("code_verifier", String::new())], "invalid_request"),
        (vec![("code_verifier", wrong_verifier)], "invalid_grant"),
        (vec![("client_id", other_client.clone())], "invalid_grant"),
        (vec![("client_id", "twc_nobody".into())], "invalid_client"),
        (
            vec![("redirect_uri", "http://127.0.0.1:9/other".into())],
            "invalid_grant",
        ),
        // The registered URI extended (a prefix match would take these): exact match only.
        (
            vec![("redirect_uri", format!("{REDIRECT}/extra"))],
            "invalid_grant",
        ),
        (
            vec![("redirect_uri", format!("{REDIRECT}?extra=1"))],
            "invalid_grant",
        ),
        (
            vec![("resource", "https://other.example/mcp".into())],
            "invalid_target",
        ),
        (vec![("code", "not-a-code".into())], "invalid_grant"),
        (
            vec![("grant_type", "password".into())],
            "unsupported_grant_type",
        ),
        (vec![("grant_type", String::new())], "invalid_request"),
    ];
    for (overrides, error) in cases {
        let (code, verifier) = approved_code(&base, &client_id, &alice, &[]).await;
        let shown = format!("{overrides:?}");
        let (status, body) = exchange(code, verifier, overrides).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{shown}: {body}");
        assert_eq!(body["error"], error, "{shown}: {body}");
    }
    assert_eq!(token_count(&admin).await, count, "no token minted");

    // A code works once; a second use revokes what the first issued.
    let (code, verifier) = approved_code(&base, &client_id, &alice, &[]).await;
    let (status, tokens) = exchange(code.clone(), verifier.clone(), vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(mcp_status(&server, access).await, 200);
    let (_, body) = exchange(code, verifier, vec![]).await;
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(mcp_status(&server, access).await, 401);
    let count = token_count(&admin).await;

    // A refused exchange burns the code: the right verifier after a wrong one is too late.
    let (code, verifier) = approved_code(&base, &client_id, &alice, &[]).await;
    let (_, body) = exchange(code.clone(), pkce().0, vec![]).await;
    assert_eq!(body["error"], "invalid_grant");
    let (_, body) = exchange(code, verifier, vec![]).await;
    assert_eq!(body["error"], "invalid_grant");

    // The approver revoked (or paused) between consent and exchange: invalid_grant, no token.
    for action in ["pause_token", "revoke_token"] {
        let (code, verifier) = approved_code(&base, &client_id, &alice, &[]).await;
        ok(&admin, action, json!({"id": alice_id})).await;
        let (status, body) = exchange(code, verifier, vec![]).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant")),
            "{action}: {body}"
        );
        if action == "pause_token" {
            ok(&admin, "resume_token", json!({"id": alice_id})).await;
        }
    }
    assert_eq!(token_count(&admin).await, count, "no token minted");
}

#[tokio::test(flavor = "multi_thread")]
async fn consent_form_refusals_change_nothing() {
    let (_dir, server) = start(&[]);
    let base = base(&server);
    let admin = connect_http(&server.url(), server.admin()).await;
    let (narrow, _) = approver(&admin, json!(["whoami", "create_token"])).await;
    let (cannot_mint, _) = approver(&admin, json!(["whoami"])).await;
    // Format characters (a bidi override, a zero-width space) are dropped from the name.
    let client_id = register_client(&base, "<b>Cla\u{202e}ude\u{200b}</b>").await;
    let (_, challenge) = pkce();
    let page = open_page(
        &base,
        &client_id,
        &challenge,
        &[("scope", "tool:whoami read_only")],
    )
    .await;
    assert!(
        page.html.contains("&lt;b&gt;Claude&lt;&#x2F;b&gt;"),
        "{}",
        page.html
    );
    assert!(!page.html.contains("<b>Claude"));
    assert!(!page.html.contains('\u{202e}') && !page.html.contains('\u{200b}'));
    assert!(page.html.contains("unverified name"), "{}", page.html);
    let cookie_name = format!("tw_oauth_csrf_{}", &page.request[..16]);
    assert!(
        page.cookie.starts_with(&format!("{cookie_name}=")),
        "{}",
        page.cookie
    );
    assert!(page.html.contains("id=\"read_only\" value=\"1\" checked"));
    assert_eq!(field(&page.html, "tools"), "whoami");
    let count = token_count(&admin).await;

    // CSRF: missing, wrong, or without the cookie: 400, nothing created.
    let wrong_cookie = format!("{cookie_name}=wrong");
    for (cookie, csrf) in [
        (Some(page.cookie.as_str()), None),
        (Some(page.cookie.as_str()), Some("wrong")),
        (None, Some(page.csrf.as_str())),
        (Some(wrong_cookie.as_str()), Some(page.csrf.as_str())),
    ] {
        let mut form = vec![
            ("request", page.request.as_str()),
            ("approver_token", narrow.as_str()),
            ("decision", "approve"),
        ];
        if let Some(csrf) = csrf {
            form.push(("csrf", csrf));
        }
        let response = post_consent(&base, cookie, &form).await;
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{cookie:?} {csrf:?}"
        );
        assert!(response.headers().get("location").is_none());
    }
    // An unknown request: 400.
    let response = post_consent(
        &base,
        Some(&page.cookie),
        &[
            ("request", "nope"),
            ("csrf", &page.csrf),
            ("decision", "approve"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // A wrong approver, a scope beyond it, a bad lifetime, an approver that may not mint:
    // the page again with a message, never the pasted secret.
    let unknown = "mcp_000000000000000000000000000000000000";
    for (approver, extra, message) in [
        (unknown, vec![], "cannot approve"),
        ("not a token", vec![], "cannot approve"),
        (
            narrow.as_str(),
            vec![("tools", "whoami revoke_token"), ("manage", "1")],
            "exceeds",
        ),
        (narrow.as_str(), vec![("lifetime_seconds", "5")], "lifetime"),
        (
            narrow.as_str(),
            vec![("lifetime_seconds", "many")],
            "lifetime",
        ),
        (cannot_mint.as_str(), vec![], "create_token"),
    ] {
        let response = approve(&base, &page, approver, &extra).await;
        assert_eq!(response.status(), StatusCode::OK, "{extra:?}");
        let html = response.text().await.unwrap();
        let error = html
            .split("id=\"error\"")
            .nth(1)
            .unwrap_or_else(|| panic!("no error in {html}"));
        assert!(error.contains(message), "{message}: {error}");
        assert!(
            !html.contains(approver) || approver == "not a token",
            "the secret was echoed"
        );
    }
    assert_eq!(token_count(&admin).await, count, "nothing created");

    // Deny: back to the client with access_denied, once.
    let response = post_consent(
        &base,
        Some(&page.cookie),
        &[
            ("request", &page.request),
            ("csrf", &page.csrf),
            ("decision", "deny"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let query = redirected(&response);
    assert_eq!(query["error"], "access_denied");
    assert_eq!(query["state"], "st4te");
    let response = approve(&base, &page, &narrow, &[]).await;
    assert_eq!(
        response.status(),
        StatusCode::BAD_REQUEST,
        "a decided request is gone"
    );
    assert_eq!(token_count(&admin).await, count, "nothing created");
}

fn cli(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("TOKENWARDEN_TOKEN")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_line_lists_clients_and_grants_and_removing_a_client_revokes_its_tokens() {
    let (dir, mut server) = start(&[]);
    let base = base(&server);
    let admin = connect_http(&server.url(), server.admin()).await;
    let (alice, alice_id) = approver(&admin, json!(["*"])).await;
    let client_id = register_client(&base, "Claude").await;
    let kept = register_client(&base, "Other").await;
    let tokens = grant(&base, &client_id, &alice, &[("buckets", "docs")]).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    drop(admin);
    server.stop();

    let listed = cli(dir.path(), &["--json", "oauth", "clients"]);
    assert!(listed.status.success());
    let clients: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(clients["clients"].as_array().unwrap().len(), 2);
    let listed = cli(dir.path(), &["--json", "oauth", "grants"]);
    let grants: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let grant = &grants["grants"][0];
    assert_eq!(grant["client_id"], json!(client_id));
    assert_eq!(grant["client_name"], "Claude");
    assert_eq!(grant["approver"], json!(alice_id));
    assert_eq!(grant["buckets"], json!(["docs"]));
    assert_eq!(grant["access_token_status"], "active");
    let human = cli(dir.path(), &["oauth", "grants"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.starts_with("GRANT_ID"), "{text}");
    assert!(!text.contains(&refresh) && !text.contains(&access));

    let missing = cli(dir.path(), &["oauth", "remove-client", "twc_nobody"]);
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no OAuth client twc_nobody"), "{stderr}");

    let removed = cli(
        dir.path(),
        &["--json", "oauth", "remove-client", &client_id],
    );
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let removed: Value = serde_json::from_slice(&removed.stdout).unwrap();
    assert_eq!(removed["grants_ended"], 1);
    let child = grant["access_token"].as_str().unwrap();
    let got = cli(dir.path(), &["--json", "token", "get", child]);
    let got: Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(got["status"], "revoked");
    let listed = cli(dir.path(), &["--json", "oauth", "clients"]);
    let clients: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(clients["clients"][0]["client_id"], json!(kept));
    assert_eq!(clients["clients"].as_array().unwrap().len(), 1);

    // Served again: the access token is refused, the refresh token and the client unknown.
    let server = Server::start(dir.path(), &[]);
    let base = self::base(&server);
    assert_eq!(mcp_status(&server, &access).await, 401);
    let (_, body) = token_request(
        &base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!(body["error"], "invalid_client", "{body}");
    let response = consent_page(&base, &client_id, &pkce().1, &[]).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_never_resurrects_a_token_a_person_acted_on() {
    let (_dir, server) = start(&[]);
    let base = base(&server);
    let admin = connect_http(&server.url(), server.admin()).await;
    let (alice, _) = approver(&admin, json!(["*"])).await;
    let client_id = register_client(&base, "Claude").await;

    // Revoked or paused by a person: the refresh ends the grant and mints nothing.
    for action in ["revoke_token", "pause_token"] {
        let tokens = grant(&base, &client_id, &alice, &[]).await;
        let (access, child, refresh) = granted(&server, &tokens).await;
        ok(&admin, action, json!({"id": child})).await;
        let before = token_count(&admin).await;
        let (status, body) = refresh_with(&base, &client_id, &refresh).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant")),
            "{action}: {body}"
        );
        assert_eq!(
            token_count(&admin).await,
            before,
            "{action}: no token minted"
        );
        // The grant is over: resuming the child does not bring the refresh token back.
        if action == "pause_token" {
            assert_eq!(mcp_status(&server, &access).await, 401);
        }
        let (_, body) = refresh_with(&base, &client_id, &refresh).await;
        assert_eq!(body["error"], "invalid_grant", "{action}: {body}");
    }

    // Narrowed by a person: the narrowing survives the refresh.
    let tokens = grant(
        &base,
        &client_id,
        &alice,
        &[("tools", "whoami list_tokens get_token")],
    )
    .await;
    let (_, child, refresh) = granted(&server, &tokens).await;
    ok(
        &admin,
        "scope_token",
        json!({"id": child, "tools": ["whoami"], "read_only": true}),
    )
    .await;
    ok(
        &admin,
        "update_token",
        json!({"id": child, "rate_limit_per_minute": 7}),
    )
    .await;
    let (status, refreshed) = refresh_with(&base, &client_id, &refresh).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let connector = connect_http(&server.url(), refreshed["access_token"].as_str().unwrap()).await;
    assert_eq!(tool_names(&connector).await, ["whoami"]);
    let me = ok(&connector, "whoami", json!({})).await;
    assert_ne!(me["id"], json!(child));
    assert_eq!(me["read_only"], json!(true), "{me}");
    assert_eq!(me["rate_limit_per_minute"], json!(7), "{me}");

    // Plain expiry still refreshes.
    let tokens = grant(&base, &client_id, &alice, &[("lifetime_seconds", "60")]).await;
    let (_, child, refresh) = granted(&server, &tokens).await;
    // Expire the child now (the owner may shorten it), then refresh.
    let soon = time_in(2);
    ok(
        &admin,
        "update_token",
        json!({"id": child, "expires_at": soon}),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(3_000)).await;
    let (status, refreshed) = refresh_with(&base, &client_id, &refresh).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "an expired child refreshes: {refreshed}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn browsers_post_the_consent_form_with_its_real_origin_and_a_strict_cookie() {
    let (_dir, server) = start(&[]);
    let base = base(&server);
    let admin = connect_http(&server.url(), server.admin()).await;
    let (alice, _) = approver(&admin, json!(["*"])).await;
    let client_id = register_client(&base, "Claude").await;
    let (_, challenge) = pkce();
    let response = consent_page(&base, &client_id, &challenge, &[]).await;
    // `no-referrer` makes browsers post the form with `Origin: null`, which the origin check
    // refuses; `same-origin` lets them send the page's origin.
    assert_eq!(response.headers()["referrer-policy"], "same-origin");
    // The CSRF cookie: HttpOnly, SameSite=Strict, not Secure on an http public URL.
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.contains("; HttpOnly"), "{cookie}");
    assert!(cookie.contains("; SameSite=Strict"), "{cookie}");
    assert!(cookie.contains("; Path=/oauth"), "{cookie}");
    assert!(!cookie.contains("Secure"), "{cookie}");
    let html = response.text().await.unwrap();
    let page = Page {
        request: field(&html, "request"),
        csrf: field(&html, "csrf"),
        cookie: cookie.split(';').next().unwrap().to_owned(),
        html,
    };
    let form = [
        ("request", page.request.as_str()),
        ("csrf", page.csrf.as_str()),
        ("approver_token", alice.as_str()),
        ("decision", "approve"),
    ];
    let post = |origin: String| {
        http()
            .post(format!("{base}/oauth/authorize"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", page.cookie.clone())
            .header("origin", origin)
            .body(serde_urlencoded::to_string(form).unwrap())
            .send()
    };
    // `Origin: null` stays refused in general; the page's own origin passes.
    assert_eq!(
        post("null".into()).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let response = post(base.clone()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(redirected(&response).contains_key("code"));

    // On an https public URL the cookie is Secure as well.
    let (_dir2, tls) = start(&["--public-url", "https://tw.example.com"]);
    let tls_base = format!("http://{}", tls.addr);
    let client_id = register_client(&tls_base, "Claude").await;
    let response = consent_page(&tls_base, &client_id, &challenge, &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.ends_with("; Secure"), "{cookie}");
}

/// A JSON-RPC `tools/list` on `session` with `secret`: the HTTP status.
async fn list_in_session(server: &Server, secret: &str, session: &str) -> u16 {
    common::raw_post(
        &server.url(),
        &[
            ("authorization", &bearer(secret)),
            ("mcp-session-id", session),
            ("mcp-protocol-version", "2025-11-25"),
        ],
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string(),
    )
    .await
    .status()
    .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_carries_on_with_the_token_a_refresh_issued() {
    let (_dir, server) = start(&[]);
    let base = base(&server);
    let admin = connect_http(&server.url(), server.admin()).await;
    let (alice, _) = approver(&admin, json!(["*"])).await;
    let client_id = register_client(&base, "Claude").await;
    let tokens = grant(&base, &client_id, &alice, &[]).await;
    // Nothing narrowed: no scope in the answer rather than an empty one.
    assert!(tokens.get("scope").is_none(), "{tokens}");
    let (access, child, refresh) = granted(&server, &tokens).await;
    // Another connector of the same approver: a token of another grant.
    let other = grant(&base, &client_id, &alice, &[]).await;
    let other = other["access_token"].as_str().unwrap().to_owned();

    let opened = raw_initialize(&server.url(), &[("authorization", &bearer(&access))]).await;
    assert_eq!(opened.status(), StatusCode::OK);
    let session = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let initialized = common::raw_post(
        &server.url(),
        &[
            ("authorization", &bearer(&access)),
            ("mcp-session-id", &session),
            ("mcp-protocol-version", "2025-11-25"),
        ],
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string(),
    )
    .await;
    assert_eq!(initialized.status(), StatusCode::ACCEPTED);
    assert_eq!(list_in_session(&server, &access, &session).await, 200);

    // Tokens that do not succeed the session's: refused, and the session stays its owner's.
    assert_eq!(list_in_session(&server, &other, &session).await, 403);
    assert_eq!(list_in_session(&server, &alice, &session).await, 403);
    // Nor can a token claim the same grant in its metadata: the `oauth_` keys are the OAuth
    // server's to write (the session check never trusts them either).
    let other_id = ok(
        &connect_http(&server.url(), &other).await,
        "whoami",
        json!({}),
    )
    .await;
    let mut claimed = other_id["metadata"].clone();
    let grant_id =
        ok(&admin, "get_token", json!({"id": child})).await["metadata"]["oauth_grant_id"].clone();
    claimed["oauth_grant_id"] = grant_id;
    err(
        &admin,
        "update_token",
        json!({"id": other_id["id"], "metadata": claimed}),
        "invalid_argument",
    )
    .await;
    assert_eq!(list_in_session(&server, &other, &session).await, 403);

    // The refresh's token carries the session on; the old one is revoked.
    let (status, refreshed) = refresh_with(&base, &client_id, &refresh).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let access2 = refreshed["access_token"].as_str().unwrap().to_owned();
    assert_eq!(list_in_session(&server, &access2, &session).await, 200);
    assert_eq!(list_in_session(&server, &access2, &session).await, 200);
    assert_eq!(list_in_session(&server, &access, &session).await, 401);
    assert_eq!(list_in_session(&server, &other, &session).await, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_consent_tabs_keep_their_own_csrf_cookies_and_a_page_is_decided_once() {
    let (_dir, server) = start(&[]);
    let base = base(&server);
    let admin = connect_http(&server.url(), server.admin()).await;
    let (alice, _) = approver(&admin, json!(["*"])).await;
    let client_id = register_client(&base, "Claude").await;
    let (_, challenge) = pkce();
    let first = open_page(&base, &client_id, &challenge, &[]).await;
    let second = open_page(&base, &client_id, &challenge, &[]).await;
    // The browser's jar: a cookie of the same name is replaced, others are kept and sent.
    let mut jar: Vec<(String, String)> = Vec::new();
    for page in [&first, &second] {
        let (name, value) = page.cookie.split_once('=').unwrap();
        jar.retain(|(n, _)| n != name);
        jar.push((name.to_owned(), value.to_owned()));
    }
    let cookies: Vec<String> = jar.iter().map(|(n, v)| format!("{n}={v}")).collect();
    let cookies = cookies.join("; ");
    for page in [&first, &second] {
        let response = post_consent(
            &base,
            Some(&cookies),
            &[
                ("request", page.request.as_str()),
                ("csrf", page.csrf.as_str()),
                ("approver_token", alice.as_str()),
                ("decision", "approve"),
            ],
        )
        .await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert!(redirected(&response).contains_key("code"));
    }
    // A page already approved cannot be approved (or denied) again.
    let count = token_count(&admin).await;
    for decision in ["approve", "deny"] {
        let form = [
            ("request", first.request.as_str()),
            ("csrf", first.csrf.as_str()),
            ("approver_token", alice.as_str()),
            ("decision", decision),
        ];
        let response = post_consent(&base, Some(&first.cookie), &form).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{decision}");
        assert!(response.headers().get("location").is_none());
    }
    // Approvals of one page racing each other: exactly one gets a code.
    let third = open_page(&base, &client_id, &challenge, &[]).await;
    let mut racing = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (base, alice) = (base.clone(), alice.clone());
        let page = Page {
            request: third.request.clone(),
            csrf: third.csrf.clone(),
            cookie: third.cookie.clone(),
            html: String::new(),
        };
        racing.spawn(async move { approve(&base, &page, &alice, &[]).await.status().as_u16() });
    }
    let statuses: Vec<u16> = racing.join_all().await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 303).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(token_count(&admin).await, count);
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_stay_with_their_client_and_within_their_approver() {
    let (_dir, server) = start(&[]);
    let base = base(&server);
    let admin = connect_http(&server.url(), server.admin()).await;
    let (alice, alice_id) = approver(&admin, json!(["*"])).await;
    let client_id = register_client(&base, "Claude").await;
    let other_client = register_client(&base, "Other").await;

    // A refresh token works only for its own client; refused, it stays usable.
    let tokens = grant(&base, &client_id, &alice, &[]).await;
    let (access, _, refresh) = granted(&server, &tokens).await;
    let count = token_count(&admin).await;
    let (status, body) = refresh_with(&base, &other_client, &refresh).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert_eq!(token_count(&admin).await, count, "nothing minted");
    // /oauth/revoke naming another client leaves the grant alone.
    let revoked = http()
        .post(format!("{base}/oauth/revoke"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([("token", access.as_str()), ("client_id", &other_client)])
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    assert_eq!(mcp_status(&server, &access).await, 200);
    let (status, body) = refresh_with(&base, &client_id, &refresh).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The child never outlives its approver: alice expires in 5 minutes, the lifetime asks 1 hour.
    ok(
        &admin,
        "update_token",
        json!({"id": alice_id, "expires_at": time_in(300)}),
    )
    .await;
    let tokens = grant(&base, &client_id, &alice, &[("lifetime_seconds", "3600")]).await;
    let expires_in = tokens["expires_in"].as_i64().unwrap();
    assert!((240..=300).contains(&expires_in), "{tokens}");

    // Approved, then the approver loses create_token before the exchange: nothing minted.
    let code = approved_code(&base, &client_id, &alice, &[]).await;
    ok(
        &admin,
        "scope_token",
        json!({"id": alice_id, "deny_tools": ["create_token"]}),
    )
    .await;
    let count = token_count(&admin).await;
    let (status, body) = token_request(
        &base,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code.0),
            ("redirect_uri", REDIRECT),
            ("client_id", &client_id),
            ("code_verifier", &code.1),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "{body}"
    );
    assert_eq!(token_count(&admin).await, count, "nothing minted");
}

/// SPEC §16: a flood of consent pages (no token needed) never expires a person's open page;
/// the flood's own address and client are refused instead (429 with `Retry-After`).
#[tokio::test]
async fn a_consent_page_flood_never_expires_an_open_page() {
    let (_dir, server) = start(&[]);
    let base = base(&server);
    let client_id = register_client(&base, "connector").await;
    let (_, challenge) = pkce();
    let page = open_page(&base, &client_id, &challenge, &[]).await;
    // 1,000 pages as fast as one address can ask, for the person's client and another.
    let junk = register_client(&base, "junk").await;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut retry_after = None;
    for i in 0..1000 {
        let client = if i % 2 == 0 { &junk } else { &client_id };
        let response = consent_page(&base, client, &challenge, &[]).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = response.headers().get("retry-after").cloned();
        }
        *statuses.entry(response.status().as_u16()).or_default() += 1;
    }
    println!("consent flood: {statuses:?}");
    assert!(
        statuses.get(&429).copied().unwrap_or(0) >= 900,
        "{statuses:?}"
    );
    assert!(retry_after.is_some(), "a 429 says when to retry");
    // The person's page is still open: approving it redirects with a code.
    let response = approve(&base, &page, server.admin(), &[]).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(redirected(&response).contains_key("code"));
}
