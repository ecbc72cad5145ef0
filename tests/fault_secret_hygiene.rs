//! Secret hygiene (SPEC §2): the server runs at `RUST_LOG=trace` through a whole session —
//! create, use, rotate, near-miss secrets, secrets pasted where they do not belong, refusals,
//! revoke — and no secret appears on stderr (but for the one bootstrap banner), in the audit
//! log, in any error message or in any 401 response.

mod common;

use common::*;
use serde_json::{Value, json};
use tempfile::TempDir;

/// The part of a secret that identifies it: everything after `mcp_`. Any 8 consecutive
/// characters of it appearing would be a leak, so the test looks for each window.
fn leaks(haystack: &str, secret: &str) -> bool {
    let body = &secret["mcp_".len()..];
    (0..=body.len() - 8).any(|i| haystack.contains(&body[i..i + 8]))
}

/// A copy of `secret` with one character of its random part changed: passes the format check
/// only if the checksum is wrong, so it exercises the refusal path after parsing.
fn near_miss(secret: &str, at: usize) -> String {
    let mut chars: Vec<char> = secret.chars().collect();
    chars[at] = if chars[at] == 'a' { 'b' } else { 'a' };
    chars.into_iter().collect()
}

async fn status_and_text(url: &str, secret: &str) -> (u16, String) {
    let response = raw_initialize(url, &[("authorization", &bearer(secret))]).await;
    let status = response.status().as_u16();
    let header = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or("").to_owned())
        .unwrap_or_default();
    let body = response.text().await.unwrap_or_default();
    (status, format!("{header}\n{body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_logs_audit_or_errors_at_trace_level() {
    let tmp = TempDir::new().unwrap();
    let mut server = Server::start_with_env(
        tmp.path(),
        &[],
        // Everything at trace, with module-level directives that try to get past the caps.
        &[(
            "RUST_LOG",
            "trace,rmcp=trace,rmcp::service=trace,hyper=trace,h2::codec=trace",
        )],
    );
    let url = server.url();
    let admin_secret = server.admin().to_owned();
    let admin = connect_http(&url, &admin_secret).await;
    let mut said = Vec::<String>::new(); // every error message and refusal the server gave

    let child = ok(
        &admin,
        "create_token",
        json!({"name": "worker", "tools": ["whoami", "verify_token"], "parent": "none"}),
    )
    .await;
    let first = child["token"].as_str().unwrap().to_owned();
    let id = child["id"].as_str().unwrap().to_owned();

    // Use it, and be refused for a tool it lacks.
    let worker = connect_http(&url, &first).await;
    ok(&worker, "whoami", json!({})).await;
    said.push(err(&worker, "list_tokens", json!({}), "forbidden").await);
    drop(worker);

    // Rotate without grace: the old secret is refused, the new one works.
    let rotated = ok(
        &admin,
        "rotate_token",
        json!({"id": id, "grace_seconds": 0}),
    )
    .await;
    let second = rotated["token"].as_str().unwrap().to_owned();
    let (status, text) = status_and_text(&url, &first).await;
    assert_eq!(status, 401);
    said.push(text);
    let worker = connect_http(&url, &second).await;
    ok(&worker, "whoami", json!({})).await;

    // Near misses: a changed random character (bad checksum), a changed checksum character,
    // the secret with a suffix, lower-cased.
    for bad in [
        near_miss(&second, 10),
        near_miss(&second, second.len() - 1),
        format!("{second}x"),
        second.to_lowercase(),
    ] {
        let (status, text) = status_and_text(&url, &bad).await;
        assert_eq!(status, 401, "{text}");
        said.push(text);
    }

    // Secrets pasted where they do not belong.
    said.push(
        err(
            &admin,
            "get_token",
            json!({"id": second}),
            "invalid_argument",
        )
        .await,
    );
    said.push(
        err(
            &admin,
            "revoke_token",
            json!({"id": second}),
            "invalid_argument",
        )
        .await,
    );
    said.push(
        err(
            &admin,
            "list_tokens",
            json!({"parent_id": second}),
            "invalid_argument",
        )
        .await,
    );
    said.push(
        err(
            &admin,
            "list_tokens",
            json!({"cursor": second}),
            "invalid_argument",
        )
        .await,
    );
    said.push(
        err(
            &admin,
            "list_audit_events",
            json!({"token_id": second}),
            "invalid_argument",
        )
        .await,
    );
    let long_name = format!("{second}{}", "x".repeat(200));
    said.push(
        err(
            &admin,
            "create_token",
            json!({"name": long_name}),
            "invalid_argument",
        )
        .await,
    );
    said.push(
        err(
            &admin,
            "create_token",
            json!({"name": "n", "parent": second}),
            "invalid_argument",
        )
        .await,
    );
    said.push(
        err(
            &admin,
            "create_token",
            json!({"name": "n", "allowed_ips": [second]}),
            "invalid_argument",
        )
        .await,
    );
    said.push(
        err(
            &admin,
            "create_token",
            json!({"name": "n", "expires_at": second}),
            "invalid_argument",
        )
        .await,
    );
    said.push(
        err(
            &admin,
            "verify_token",
            json!({"token": second, "wrong": 1}),
            "invalid_argument",
        )
        .await,
    );

    // A secret used as a tool name is refused at the protocol level, without being echoed.
    let refusal = try_call(&admin, &second, json!({})).await;
    said.push(format!("{refusal:?}"));

    // verify_token answers about a secret without repeating it.
    said.push(
        err(
            &worker,
            "verify_token",
            json!({"token": second}),
            "forbidden",
        )
        .await,
    );
    let verdict = ok(
        &admin,
        "verify_token",
        json!({"token": near_miss(&second, 12)}),
    )
    .await;
    assert_eq!(verdict["valid"], false);
    said.push(verdict.to_string());
    let verdict = ok(
        &admin,
        "verify_token",
        json!({"token": second, "tool": "list_tokens"}),
    )
    .await;
    assert_eq!(verdict["valid"], true);
    said.push(verdict.to_string());

    // Revoke; the next request with it is refused.
    ok(&admin, "revoke_token", json!({"id": id})).await;
    let (status, text) = status_and_text(&url, &second).await;
    assert_eq!(status, 401);
    said.push(text);

    let mut audit = Vec::<Value>::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = json!({"limit": 100});
        if let Some(c) = &cursor {
            args["cursor"] = json!(c);
        }
        let page = ok(&admin, "list_audit_events", args).await;
        audit.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) if page["has_more"] == true => cursor = Some(c.to_owned()),
            _ => break,
        }
    }
    assert!(audit.len() >= 3, "create, rotate, revoke are audited");
    let audit = serde_json::to_string(&audit).unwrap();

    drop(worker);
    drop(admin);
    server.stop();
    let stderr = server.stderr();
    // RUST_LOG was honoured: tokenwarden's own debug events (refused requests, refused tool
    // calls) are there, which the default `info` filter would drop. Counting lines is not
    // enough: info logs alone make plenty.
    let own_debug: Vec<&str> = stderr
        .lines()
        .filter(|line| {
            [" DEBUG tokenwarden", " TRACE tokenwarden"]
                .iter()
                .any(|level_and_target| line.contains(level_and_target))
        })
        .collect();
    assert!(
        own_debug
            .iter()
            .any(|line| line.contains("tokenwarden::http::guard: refused request")),
        "RUST_LOG=trace was ignored: no debug line from the guard in\n{stderr}"
    );
    assert!(
        own_debug
            .iter()
            .any(|line| line.contains("tokenwarden::mcp: tool call refused or failed")),
        "RUST_LOG=trace was ignored: no debug line from tools/call in\n{stderr}"
    );

    for secret in [&first, &second] {
        assert!(
            !leaks(&stderr, secret),
            "a secret reached stderr:\n{stderr}"
        );
        assert!(
            !leaks(&audit, secret),
            "a secret reached the audit log: {audit}"
        );
        for message in &said {
            assert!(!leaks(message, secret), "a secret was echoed: {message}");
        }
    }
    assert!(!leaks(&audit, &admin_secret));
    assert_eq!(
        stderr.matches(&admin_secret["mcp_".len()..]).count(),
        1,
        "the bootstrap secret is printed once, in its banner, and never again"
    );
}
