//! The MCP server over stdio, driven by rmcp's client through a child process.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::*;
use serde_json::{Value, json};
use tempfile::TempDir;

/// The owner (no TOKENWARDEN_TOKEN) can use every tool; each also reports its errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_uses_every_tool_over_stdio() {
    let dir = TempDir::new().unwrap();
    let owner = connect_stdio(dir.path(), None).await;
    assert_eq!(tool_names(&owner).await.len(), 15);
    assert_eq!(
        ok(&owner, "whoami", json!({})).await,
        json!({"owner": true})
    );
    err(
        &owner,
        "whoami",
        json!({"unexpected": 1}),
        "invalid_argument",
    )
    .await;

    let root = ok(
        &owner,
        "create_token",
        json!({"name": "root", "buckets": [], "tools": []}),
    )
    .await;
    assert_eq!(
        root["buckets"],
        json!(["*"]),
        "empty lists mean all for a root token"
    );
    assert_eq!(root["tools"], json!(["*"]));
    let id = root["id"].as_str().unwrap();
    err(
        &owner,
        "create_token",
        json!({"name": "x", "parent": "self"}),
        "invalid_argument",
    )
    .await;
    err(
        &owner,
        "create_token",
        json!({"name": "x", "colour": "red"}),
        "invalid_argument",
    )
    .await;

    let child = ok(
        &owner,
        "create_token",
        json!({"name": "child", "parent": id, "tools": ["list_*"]}),
    )
    .await;
    assert_eq!(child["depth"], 1);
    assert_eq!(
        child["buckets"],
        json!(["*"]),
        "omitted fields of a child are inherited"
    );
    let child_id = child["id"].as_str().unwrap();

    assert_eq!(
        ok(&owner, "get_token", json!({"id": child_id})).await["parent_id"],
        json!(id)
    );
    err(&owner, "get_token", json!({}), "invalid_argument").await;
    let children = ok(&owner, "list_tokens", json!({"parent_id": id})).await;
    assert_eq!(children["records"].as_array().unwrap().len(), 1);
    err(
        &owner,
        "list_tokens",
        json!({"cursor": "garbage"}),
        "invalid_argument",
    )
    .await;
    let updated = ok(
        &owner,
        "update_token",
        json!({"id": id, "description": "the root"}),
    )
    .await;
    assert_eq!(updated["description"], "the root");
    assert_eq!(updated["name"], "root", "fields not given are kept");
    err(
        &owner,
        "update_token",
        json!({"id": id, "name": "x".repeat(129)}),
        "invalid_argument",
    )
    .await;
    let narrowed = ok(
        &owner,
        "scope_token",
        json!({"id": id, "tools": ["list_tokens"]}),
    )
    .await;
    assert_eq!(narrowed["tools"], json!(["list_tokens"]));
    assert_eq!(
        ok(&owner, "get_token", json!({"id": child_id})).await["tools"],
        json!(["list_tokens"]),
        "narrowing a parent narrows its child"
    );
    err(
        &owner,
        "scope_token",
        json!({"id": child_id, "tools": ["*"]}),
        "scope_exceeds_parent",
    )
    .await;
    let paused = ok(&owner, "pause_token", json!({"id": id})).await;
    assert_eq!(paused["status"], "paused");
    assert_eq!(paused["id"], json!(id));
    assert_eq!(
        ok(&owner, "get_token", json!({"id": child_id})).await["effective_status"],
        "paused_by_ancestor"
    );
    err(&owner, "pause_token", json!({"id": 7}), "invalid_argument").await;
    let resumed = ok(&owner, "resume_token", json!({"id": id})).await;
    assert_eq!(resumed["status"], "active");
    assert_eq!(
        ok(&owner, "get_token", json!({"id": child_id})).await["effective_status"],
        "active"
    );
    err(
        &owner,
        "resume_token",
        json!({"id": "tok_AAAAAAAAAAAAAAAAAAAAAAAA"}),
        "not_found",
    )
    .await;
    let rotated = ok(&owner, "rotate_token", json!({"id": id})).await;
    assert!(rotated["token"].as_str().unwrap().starts_with("mcp_"));
    err(
        &owner,
        "rotate_token",
        json!({"id": id, "grace_seconds": -1}),
        "invalid_argument",
    )
    .await;
    let verified = ok(&owner, "verify_token", json!({"token": rotated["token"]})).await;
    assert_eq!(verified["valid"], true);
    assert_eq!(verified["token_id"], json!(id));
    err(&owner, "verify_token", json!({}), "invalid_argument").await;
    let audit = ok(&owner, "list_audit_events", json!({"action": "create"})).await;
    assert_eq!(audit["events"].as_array().unwrap().len(), 2);
    err(
        &owner,
        "list_audit_events",
        json!({"limit": 101}),
        "invalid_argument",
    )
    .await;
    let revoked = ok(&owner, "revoke_token", json!({"id": id})).await;
    assert_eq!(revoked["revoked_descendants"], 1);
    assert_eq!(revoked["revoked"], true);
    assert_eq!(
        ok(&owner, "get_token", json!({"id": child_id})).await["status"],
        "revoked",
        "revocation cascades to the child's own record"
    );
    err(&owner, "resume_token", json!({"id": id}), "conflict").await;
    assert_eq!(
        ok(&owner, "delete_token", json!({"id": id})).await,
        json!({"id": id, "deleted": true})
    );
    err(&owner, "delete_token", json!({"id": child_id}), "not_found").await;
    owner.cancel().await.unwrap();
}

/// With TOKENWARDEN_TOKEN the session acts as that token: it sees only the tools it may call,
/// and a refused call names the token, the tool and the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_session_over_stdio_is_scoped() {
    let dir = TempDir::new().unwrap();
    let secret = {
        let owner = connect_stdio(dir.path(), None).await;
        let issued = ok(
            &owner,
            "create_token",
            json!({"name": "agent", "tools": ["whoami", "get_token"], "read_only": true}),
        )
        .await;
        owner.cancel().await.unwrap();
        issued["token"].as_str().unwrap().to_owned()
    };
    let agent = connect_stdio(dir.path(), Some(&secret)).await;
    assert_eq!(tool_names(&agent).await, ["get_token", "whoami"]);
    let me = ok(&agent, "whoami", json!({})).await;
    assert_eq!(me["name"], "agent");
    let message = err(&agent, "revoke_token", json!({"id": me["id"]}), "forbidden").await;
    assert_eq!(
        message,
        format!(
            "token {} may not call revoke_token: not in its tool allowlist [get_token, whoami]",
            me["id"].as_str().unwrap()
        )
    );
    agent.cancel().await.unwrap();
}

/// A TOKENWARDEN_TOKEN that does not authenticate stops the server with one clear line.
#[test]
fn a_bad_stdio_token_is_refused_at_start() {
    let dir = TempDir::new().unwrap();
    let output = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--stdio"])
        .env("TOKENWARDEN_TOKEN", "mcp_not_a_real_token")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("error: TOKENWARDEN_TOKEN does not authenticate: malformed token"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

/// On stdio, stdout carries JSON-RPC and nothing else; logs go to stderr.
#[test]
fn stdout_carries_only_json_rpc() {
    let dir = TempDir::new().unwrap();
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--log-level", "debug", "serve", "--stdio"])
        .env_remove("TOKENWARDEN_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let requests = [
        initialize_body(),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "create_token", "arguments": {"name": "x"}}}),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
    ];
    for request in &requests {
        writeln!(stdin, "{request}").unwrap();
    }
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut answers = std::collections::BTreeMap::new();
    while answers.len() < 3 {
        let line = lines.next().expect("a response line").unwrap();
        let message: Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON-RPC: {line}"));
        assert_eq!(message["jsonrpc"], "2.0");
        if let Some(id) = message.get("id") {
            answers.insert(id.as_u64().unwrap(), message);
        }
    }
    assert_eq!(answers[&1]["result"]["serverInfo"]["name"], "tokenwarden");
    let created = &answers[&2]["result"];
    assert_eq!(created["isError"], false, "{created}");
    assert!(
        created["structuredContent"]["token"]
            .as_str()
            .unwrap()
            .starts_with("mcp_")
    );
    assert_eq!(answers[&3]["result"]["tools"].as_array().unwrap().len(), 15);
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success());
}

/// `serve --stdio --http ADDR` serves both transports from one process (one database): a token
/// minted by the owner over stdio works over HTTP at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_and_http_in_one_process() {
    let dir = TempDir::new().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--stdio", "--http", &addr])
        .env_remove("TOKENWARDEN_TOKEN");
    let transport = rmcp::transport::TokioChildProcess::new(cmd).unwrap();
    let owner = rmcp::ServiceExt::serve(rmcp::model::ClientConfig::default(), transport)
        .await
        .unwrap();
    let issued = ok(
        &owner,
        "create_token",
        json!({"name": "web", "tools": ["whoami"]}),
    )
    .await;
    let url = format!("http://{addr}/mcp");
    let web = connect_http(&url, issued["token"].as_str().unwrap()).await;
    assert_eq!(ok(&web, "whoami", json!({})).await["name"], "web");
    owner.cancel().await.unwrap();
}

/// A TOKENWARDEN_TOKEN that is set but empty or blank (an unset `${VAR}` in a client's
/// configuration) stops the server with one line: it never falls back to the owner.
#[test]
fn an_empty_stdio_token_fails_closed() {
    for value in ["", " ", "\t\n"] {
        let dir = TempDir::new().unwrap();
        let output = Command::new(BIN)
            .arg("--data-dir")
            .arg(dir.path())
            .args(["serve", "--stdio"])
            .env("TOKENWARDEN_TOKEN", value)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{value:?} must not serve");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.trim().lines().count(), 1, "{value:?}: {stderr}");
        assert!(
            stderr.contains("TOKENWARDEN_TOKEN is set but empty"),
            "{value:?}: {stderr}"
        );
        assert!(output.stdout.is_empty());
    }
}

/// A stdio session belongs to the secret it started with: once that secret is rotated out
/// (grace 0), the session's calls are refused, like an HTTP bearer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdio_session_ends_with_the_rotation_of_its_secret() {
    let dir = TempDir::new().unwrap();
    let secret = {
        let owner = connect_stdio(dir.path(), None).await;
        let issued = ok(&owner, "create_token", json!({"name": "agent"})).await;
        owner.cancel().await.unwrap();
        issued["token"].as_str().unwrap().to_owned()
    };
    let agent = connect_stdio(dir.path(), Some(&secret)).await;
    let me = ok(&agent, "whoami", json!({})).await;
    let rotated = ok(
        &agent,
        "rotate_token",
        json!({"id": me["id"], "grace_seconds": 0}),
    )
    .await;
    assert_ne!(rotated["token"].as_str().unwrap(), secret);
    let refused = try_call(&agent, "whoami", json!({})).await;
    let message = refused.expect_err("the rotated-out secret must not act");
    assert!(
        message.contains("TOKENWARDEN_TOKEN no longer authenticates"),
        "{message}"
    );
    assert!(
        agent.list_all_tools().await.is_err(),
        "tools/list refused too"
    );
    agent.cancel().await.unwrap();
}

/// The bootstrap admin is minted only on a store that never held anything: not again after
/// every token was deleted (the store keeps its audit log and tombstones).
#[test]
fn the_bootstrap_admin_is_minted_once_even_after_every_token_is_deleted() {
    let dir = TempDir::new().unwrap();
    let mut first = Server::start(dir.path(), &[]);
    let admin = first.admin().to_owned();
    first.stop();
    let list = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["token", "list", "--json"])
        .output()
        .unwrap();
    assert!(list.status.success());
    let stdout = String::from_utf8(list.stdout).unwrap();
    let ids: Vec<String> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .flat_map(|v| match v.get("records") {
            Some(Value::Array(records)) => records.clone(),
            _ => vec![v],
        })
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), 1, "{stdout}");
    let deleted = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["token", "delete", &ids[0]])
        .output()
        .unwrap();
    assert!(deleted.status.success(), "{deleted:?}");
    let second = Server::start(dir.path(), &[]);
    assert_eq!(second.admin_token, None, "{}", second.stderr());
    assert!(!second.stderr().contains(&admin));
}
