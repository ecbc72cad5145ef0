//! The access log (SPEC §14) through the real binary: every tool call (own, REST, forwarded
//! through the gateway) and every refused request of a known token is recorded, with none of
//! the arguments; a token sees its own subtree's entries; the log survives a restart, is
//! readable offline and while serving, prunes by retention and goes with a deleted token.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{BIN, Server, connect_http};
use serde_json::{Value, json};

const FIXTURE: &str = env!("CARGO_BIN_EXE_tokenwarden-test-upstream");
/// In the arguments of calls; must never reach the log.
const MARKER: &str = "ARGUMENT-MARKER-7f3a";

fn tw(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("TOKENWARDEN_TOKEN")
        .output()
        .expect("run tokenwarden")
}

fn tw_json(dir: &Path, args: &[&str]) -> Value {
    let out = tw(dir, &[&["--json"], args].concat());
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn upstreams(dir: &Path) -> String {
    let path = dir.join("upstreams.json");
    std::fs::write(
        &path,
        json!({"mcpServers": {"test": {"command": FIXTURE}}}).to_string(),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

/// The (tool, outcome) pairs of entries, oldest first.
fn calls(events: &Value) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["tool"].as_str().unwrap_or("-").to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    pairs.reverse();
    pairs
}

/// Polls `list_access_events` as `client` until it holds `n` entries for `args` (the log is
/// written once a second).
async fn wait_for(client: &common::Client, args: Value, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = common::ok(client, "list_access_events", args.clone()).await;
        let len = page["events"].as_array().unwrap().len();
        if len >= n || Instant::now() > deadline {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create(client: &common::Client, args: Value) -> (String, String) {
    let made = common::ok(client, "create_token", args).await;
    (
        made["id"].as_str().unwrap().to_owned(),
        made["token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_and_refusal_is_logged_without_arguments_and_outlives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = upstreams(dir.path());
    let mut server = Server::start(&data, &["--upstreams", &file]);
    let admin = connect_http(&server.url(), server.admin()).await;
    // The gateway's tool is listed once the upstream is connected.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !common::tool_names(&admin)
        .await
        .contains(&"test__read_note".to_owned())
    {
        assert!(Instant::now() < deadline, "the upstream never connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (agent_id, agent) = create(
        &admin,
        json!({"name": "agent", "parent": "none", "buckets": ["test"],
               "tools": ["whoami", "create_token", "list_access_events", "test__*"]}),
    )
    .await;
    let (other_id, other) = create(&admin, json!({"name": "other", "parent": "none"})).await;

    // The agent: an own tool, a refused tool, a forwarded call (with a marker in its
    // arguments), a child that calls too, and one REST call.
    let client = connect_http(&server.url(), &agent).await;
    common::ok(&client, "whoami", json!({})).await;
    common::err(&client, "list_tokens", json!({}), "forbidden").await;
    common::ok(&client, "test__read_note", json!({"name": MARKER})).await;
    let (child_id, child) = create(
        &client,
        json!({"name": MARKER, "tools": ["whoami"], "buckets": []}),
    )
    .await;
    let child_client = connect_http(&server.url(), &child).await;
    common::ok(&child_client, "whoami", json!({})).await;
    drop(child_client);
    let rest = reqwest::Client::new()
        .get(format!(
            "{}/v1/whoami",
            server.url().trim_end_matches("/mcp")
        ))
        .bearer_auth(&agent)
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), 200);
    // The other token calls once, then is paused: its next request is refused at the door.
    let other_client = connect_http(&server.url(), &other).await;
    common::ok(&other_client, "whoami", json!({})).await;
    drop(other_client);
    common::ok(&admin, "pause_token", json!({"id": other_id})).await;
    assert!(
        common::try_connect_http(&server.url(), &other)
            .await
            .is_err()
    );

    let agent_calls = wait_for(&admin, json!({"token_id": agent_id}), 6).await;
    assert_eq!(
        calls(&agent_calls),
        [
            ("whoami", "ok"),
            ("list_tokens", "forbidden"),
            ("test__read_note", "ok"),
            ("create_token", "ok"),
            ("whoami", "ok"),
        ]
        .map(|(t, o)| (t.to_owned(), o.to_owned())),
        "{agent_calls}"
    );
    let events = agent_calls["events"].as_array().unwrap();
    let forwarded = events
        .iter()
        .find(|e| e["tool"] == "test__read_note")
        .unwrap();
    assert_eq!(forwarded["bucket"], "test");
    assert_eq!(forwarded["upstream_is_error"], false);
    assert_eq!(forwarded["lineage_id"], agent_id.as_str());
    assert_eq!(events[0]["via"], "rest", "the newest is the REST call");
    assert_eq!(events[1]["via"], "mcp");
    let refused = wait_for(
        &admin,
        json!({"token_id": other_id, "outcome": "paused"}),
        1,
    )
    .await;
    // The client may try more than once (an SDK retries its first request); each is a
    // refusal at the door, with no tool.
    let refusals = calls(&refused);
    assert!(
        !refusals.is_empty()
            && refusals
                .iter()
                .all(|c| *c == ("-".to_owned(), "paused".to_owned())),
        "{refusals:?}"
    );

    // A token sees its own subtree: the agent sees its child's call, not the other token's.
    let seen = common::ok(&client, "list_access_events", json!({"limit": 100})).await;
    let tokens: Vec<&str> = seen["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["token_id"].as_str().unwrap())
        .collect();
    assert!(tokens.contains(&child_id.as_str()), "{seen}");
    assert!(
        tokens.iter().all(|t| *t == agent_id || *t == child_id),
        "{seen}"
    );
    // Another token's id or lineage cannot be probed through the filters.
    for filter in [
        json!({"token_id": other_id}),
        json!({"lineage_id": other_id}),
    ] {
        common::err(&client, "list_access_events", filter, "not_found").await;
    }
    let by_lineage = common::ok(
        &admin,
        "list_access_events",
        json!({"lineage_id": agent_id, "tool": "whoami"}),
    )
    .await;
    // The agent's MCP and REST calls and its child's.
    assert_eq!(
        by_lineage["events"].as_array().unwrap().len(),
        3,
        "{by_lineage}"
    );
    drop(client);
    drop(admin);

    // Read while serving (through the admin socket; after the last call's entry is written,
    // within a second) and after a restart, offline: the same.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let serving = tw_json(&data, &["access", "--token-id", &agent_id]);
    server.stop();
    let offline = tw_json(&data, &["access", "--token-id", &agent_id]);
    assert_eq!(serving, offline);
    assert_eq!(
        calls(&offline)[..calls(&agent_calls).len()],
        calls(&agent_calls)
    );

    // Never the arguments: not in the log, not in a backup.
    let all = tw_json(&data, &["access", "--all"]);
    assert!(!all.to_string().contains(MARKER), "{all}");
    let backup = dir.path().join("backup.jsonl");
    let out = tw(&data, &["export", "--output", backup.to_str().unwrap()]);
    assert!(out.status.success());
    let text = std::fs::read_to_string(&backup).unwrap();
    // Keys and values are hex; access log keys start with `x` (78). The child's name carries
    // the marker in its record; no access entry may.
    let marker: String = MARKER.bytes().map(|b| format!("{b:02x}")).collect();
    let entries: Vec<&str> = text.lines().filter(|l| l.contains("\"k\":\"78")).collect();
    assert!(
        entries.len() >= 8,
        "access entries in the backup: {}",
        entries.len()
    );
    assert!(entries.iter().all(|l| !l.contains(&marker)));
    assert!(
        text.contains(&marker),
        "the child's record names the marker"
    );

    // A backup's access log comes back with an import into an empty store.
    let restored = dir.path().join("restored");
    let out = tw(&restored, &["import", "--input", backup.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        tw_json(&restored, &["access", "--token-id", &agent_id]),
        offline
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_token_takes_its_entries_and_retention_prunes_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    let admin_secret = server.admin().to_owned();
    let admin = connect_http(&server.url(), &admin_secret).await;
    let (gone_id, gone) = create(&admin, json!({"name": "gone", "parent": "none"})).await;
    let (kept_id, kept) = create(&admin, json!({"name": "kept", "parent": "none"})).await;
    let (gone_child_id, gone_child) =
        create(&admin, json!({"name": "gone child", "parent": gone_id})).await;
    // Entries of the deleted token, its child and another token, in the same writer batch.
    let clients = [
        connect_http(&server.url(), &gone).await,
        connect_http(&server.url(), &gone_child).await,
        connect_http(&server.url(), &kept).await,
    ];
    for _ in 0..3 {
        for client in &clients {
            common::ok(client, "whoami", json!({})).await;
        }
    }
    drop(clients);
    // A plain request, as the SDKs send it (no `_meta`): the express lane answers it, and it
    // is logged the same way.
    let auth = common::bearer(&kept);
    let init = common::raw_initialize(&server.url(), &[("authorization", &auth)]).await;
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let headers = [
        ("authorization", auth.as_str()),
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    common::raw_post(&server.url(), &headers, initialized.to_string()).await;
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                      "params": {"name": "whoami", "arguments": {}}});
    let reply = common::raw_post(&server.url(), &headers, call.to_string()).await;
    assert_eq!(reply.status(), 200);
    wait_for(&admin, json!({"token_id": kept_id}), 4).await;
    assert_eq!(
        wait_for(&admin, json!({"token_id": gone_id}), 3).await["events"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    common::ok(&admin, "revoke_token", json!({"id": gone_id})).await;
    common::ok(&admin, "delete_token", json!({"id": gone_id})).await;
    let left = common::ok(&admin, "list_access_events", json!({"limit": 100})).await;
    assert!(
        !left.to_string().contains(&gone_id) && !left.to_string().contains(&gone_child_id),
        "entries of a deleted token or its child remain: {left}"
    );
    assert_eq!(
        common::ok(&admin, "list_access_events", json!({"token_id": kept_id})).await["events"]
            .as_array()
            .unwrap()
            .len(),
        4,
        "another token's entries (three over rmcp's path, one plain) stay"
    );
    drop(admin);
    server.stop();

    // Restarted keeping at most 2 entries: the pruner at start leaves the newest 2.
    let mut server = Server::start(&data, &["--access-log-max-events", "2"]);
    let admin = connect_http(&server.url(), &admin_secret).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = tw_json(&data, &["access", "--all"]);
        let n = out["events"].as_array().unwrap().len();
        if n <= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not pruned: {n} entries");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(admin);
    server.stop();
    let out = tw_json(&data, &["access", "--all"]);
    assert!(out["events"].as_array().unwrap().len() <= 2, "{out}");
}

/// Review finding: a refused token retrying as fast as it could wrote one entry per refusal
/// (~10,000 a second), enough to push everyone's history out of a million-entry log in
/// minutes. Its refusals at the door are now logged up to 10 per writer pass (a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_retrying_cannot_flood_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let admin = connect_http(&server.url(), server.admin()).await;
    let (id, secret) = create(&admin, json!({"name": "flood", "parent": "none"})).await;
    common::ok(&admin, "revoke_token", json!({"id": id})).await;

    let http = reqwest::Client::new();
    let url = format!("{}/v1/whoami", server.url().trim_end_matches("/mcp"));
    let started = Instant::now();
    for _ in 0..300 {
        let status = http
            .get(&url)
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401);
    }
    let seconds = started.elapsed().as_secs() + 2;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut logged = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut args = json!({"token_id": id, "limit": 100});
        if let Some(c) = &cursor {
            args["cursor"] = json!(c);
        }
        let page = common::ok(&admin, "list_access_events", args).await;
        logged += page["events"].as_array().unwrap().len() as u64;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    println!("300 refusals in {:?}: {logged} logged", started.elapsed());
    assert!(logged >= 1, "refusals are logged");
    assert!(
        logged <= 10 * seconds,
        "{logged} refusals logged in about {seconds} s"
    );
}
