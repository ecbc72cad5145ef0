//! The HTTP front door of the shipped binary: kept-alive connections are not slowed by Nagle,
//! sessions and sockets are bounded under abuse, and the protocol edges answer exactly
//! (SPEC §6). Every test drives the real `tokenwarden` binary over real sockets.

mod common;

use std::time::{Duration, Instant};

use common::raw_http::{Conn, messages};
use common::*;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

const INIT_2025_11_25: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
const TOOLS_LIST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;

fn init_body(version: &str) -> String {
    INIT_2025_11_25.replace("2025-11-25", version)
}

/// Opens a session on `conn`; returns the headers later requests of the session carry.
async fn open_session(conn: &mut Conn, version: &str) -> (String, String) {
    let reply = conn.post(&init_body(version), "").await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let session = reply.session.clone().expect("a session id");
    let headers = format!("mcp-session-id: {session}\r\nmcp-protocol-version: {version}\r\n");
    assert_eq!(conn.post(INITIALIZED, &headers).await.status, 202);
    (session, headers)
}

async fn mint(admin: &Client, args: Value) -> (String, String) {
    let issued = ok(admin, "create_token", args).await;
    (
        issued["id"].as_str().unwrap().to_owned(),
        issued["token"].as_str().unwrap().to_owned(),
    )
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `GET /healthz` from a new client: its status, which must come within `seconds` (a reset
/// connection fails the test).
async fn fresh_health_check(addr: &str, seconds: u64) -> u16 {
    let sent = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .send();
    tokio::time::timeout(Duration::from_secs(seconds), sent)
        .await
        .expect("a fresh client is answered")
        .expect("a fresh client is not reset")
        .status()
        .as_u16()
}

/// Replies on a kept-alive connection must not wait for the client's delayed ACK (~40 ms):
/// the server sets TCP_NODELAY on the sockets it accepts, and writes a ready reply in one piece.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_replies_do_not_wait_on_nagle() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut conn = Conn::open(&server.addr, server.admin()).await;
    let (_, headers) = open_session(&mut conn, "2025-11-25").await;
    let mut latencies = Vec::new();
    for _ in 0..40 {
        let started = Instant::now();
        let reply = conn.post(TOOLS_LIST, &headers).await;
        latencies.push(started.elapsed());
        assert_eq!(reply.status, 200);
        // A reply ready at once goes out with its headers in one write, so it has a length
        // (rmcp alone streams it, headers first, chunked).
        assert!(
            reply.head.contains("content-length:") && !reply.head.contains("transfer-encoding"),
            "a ready reply was streamed: {}",
            reply.head
        );
        assert_eq!(
            messages(&reply).last().unwrap()["result"]["tools"]
                .as_array()
                .unwrap()
                .len(),
            15
        );
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    // A debug build answers in about a millisecond; a reply held by Nagle takes 40 ms or more.
    assert!(
        median < Duration::from_millis(15),
        "median reply on a kept-alive connection took {median:?}: {latencies:?}"
    );
    // Two requests pipelined in one segment: the second reply is written while the first is
    // not yet acknowledged (the client, sending nothing, delays its ACK), which is exactly
    // what Nagle holds back. One reply per write no longer shows it; this does.
    let request = |conn: &Conn, id: u32| {
        conn.request(
            &TOOLS_LIST.replace("\"id\":1", &format!("\"id\":{id}")),
            &headers,
        )
    };
    let mut pairs = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        let pair = format!(
            "{}{}",
            request(&conn, 100 + 2 * i),
            request(&conn, 101 + 2 * i)
        );
        conn.send_raw(pair.as_bytes()).await;
        assert_eq!(conn.read_reply().await.status, 200);
        assert_eq!(conn.read_reply().await.status, 200);
        pairs.push(started.elapsed());
    }
    pairs.sort();
    let median = pairs[pairs.len() / 2];
    assert!(
        median < Duration::from_millis(15),
        "median pipelined pair took {median:?}: {pairs:?}"
    );
}

/// The express lane (plain `tools/list` and `tools/call` of a live session, answered without
/// rmcp's session machinery) answers byte for byte as rmcp does: each request is sent plain
/// and again with an empty `_meta`, which the lane leaves to rmcp (only rmcp's event id
/// differs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_express_lane_answers_exactly_as_rmcp() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[]);
    let admin = connect_http(&server.url(), server.admin()).await;
    let (other, _) = mint(&admin, json!({"name": "other", "parent": "none"})).await;
    let mut conn = Conn::open(&server.addr, server.admin()).await;
    let (_, headers) = open_session(&mut conn, "2025-11-25").await;
    // The session's first request goes rmcp's way (rmcp must keep seeing the session).
    assert_eq!(conn.post(TOOLS_LIST, &headers).await.status, 200);
    let requests = [
        (r#""method":"tools/list""#, None),
        (
            r#""method":"tools/list""#,
            Some(r#""cursor":"x""#.to_owned()),
        ),
        (
            r#""method":"tools/call""#,
            Some(r#""name":"no_such_tool""#.to_owned()),
        ),
        (
            r#""method":"tools/call""#,
            Some(format!(
                r#""name":"get_token","arguments":{{"id":"{other}"}}"#
            )),
        ),
        (
            r#""method":"tools/call""#,
            Some(r#""name":"create_token","arguments":{"name":7}"#.to_owned()),
        ),
        (
            r#""method":"tools/call""#,
            Some(r#""name":"whoami""#.to_owned()),
        ),
    ];
    for (method, params) in requests {
        let plain = match &params {
            None => format!(r#"{{"jsonrpc":"2.0","id":"x1",{method}}}"#),
            Some(p) => format!(r#"{{"jsonrpc":"2.0","id":"x1",{method},"params":{{{p}}}}}"#),
        };
        let with_meta = match &params {
            None => format!(r#"{{"jsonrpc":"2.0","id":"x1",{method},"params":{{"_meta":{{}}}}}}"#),
            Some(p) => {
                format!(r#"{{"jsonrpc":"2.0","id":"x1",{method},"params":{{{p},"_meta":{{}}}}}}"#)
            }
        };
        let lane = conn.post(&plain, &headers).await;
        let rmcp = conn.post(&with_meta, &headers).await;
        assert_eq!(lane.status, 200, "{plain}");
        assert_eq!(rmcp.status, 200, "{with_meta}");
        // The lane's reply is whole by construction (rmcp's is whole only when ready within
        // 20 ms, which a loaded machine may miss).
        assert!(lane.head.contains("content-length:"), "{}", lane.head);
        let mut lane_body = String::from_utf8(lane.body.clone()).unwrap();
        // rmcp numbers the events of its request streams (`id: <stream>/<index>`), for a
        // resumption that a reply sent whole never needs; the lane's event has no id.
        let rmcp_body: String = String::from_utf8(rmcp.body.clone())
            .unwrap()
            .split_inclusive('\n')
            .filter(|line| !line.starts_with("id: "))
            .collect();
        assert!(!lane_body.contains("\nid: "), "{lane_body}");
        if plain.contains("whoami") {
            // whoami counts its own use: the two differ by exactly that.
            let count = |body: &str| {
                let message: Value =
                    serde_json::from_str(body.trim().strip_prefix("data: ").expect("one event"))
                        .unwrap();
                message["result"]["structuredContent"]["use_count"]
                    .as_i64()
                    .unwrap()
            };
            assert_eq!(count(&rmcp_body), count(&lane_body) + 1);
            let value = |body: &str| -> Value {
                let mut message: Value =
                    serde_json::from_str(body.trim().strip_prefix("data: ").expect("one event"))
                        .unwrap();
                let result = &mut message["result"];
                result["content"] = Value::Null;
                for volatile in ["use_count", "last_used_at"] {
                    result["structuredContent"][volatile] = Value::Null;
                }
                message
            };
            assert_eq!(value(&lane_body), value(&rmcp_body));
            lane_body = rmcp_body.clone();
        }
        assert_eq!(lane_body, rmcp_body, "{plain}");
        assert!(rmcp_body.starts_with("data: {"), "{rmcp_body}");
    }
}

/// One token opening thousands of sessions keeps at most its limit alive (the least recently
/// used close), so memory stays bounded and other tokens are served; the server-wide limit
/// answers 503 with Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_flood_by_one_token_stays_bounded() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[]);
    let admin = connect_http(&server.url(), server.admin()).await;
    let (_, flooder) = mint(
        &admin,
        json!({"name": "flooder", "parent": "none", "tools": [], "max_uses": 1}),
    )
    .await;
    let (_, other) = mint(&admin, json!({"name": "other", "parent": "none"})).await;

    let mut conn = Conn::open(&server.addr, &flooder).await;
    let (first_session, first_headers) = open_session(&mut conn, "2025-11-25").await;
    let before = rss_kib(server.pid());
    for _ in 0..3000 {
        let reply = conn.post(INIT_2025_11_25, "").await;
        assert_eq!(reply.status, 200);
    }
    let after = rss_kib(server.pid());
    let growth_mib = after.saturating_sub(before) as f64 / 1024.0;
    println!("3000 sessions by one token: RSS {before} KiB -> {after} KiB (+{growth_mib:.1} MiB)");
    // Unbounded, 3000 sessions cost about 150 MiB (about 50 KiB each).
    assert!(growth_mib < 48.0, "RSS grew {growth_mib:.1} MiB");
    let reply = conn.post(TOOLS_LIST, &first_headers).await;
    assert_eq!(
        reply.status, 404,
        "the token's least recently used session {first_session} was closed"
    );

    let mut other_conn = Conn::open(&server.addr, &other).await;
    let (_, headers) = open_session(&mut other_conn, "2025-11-25").await;
    let reply = other_conn.post(TOOLS_LIST, &headers).await;
    assert_eq!(reply.status, 200, "another token is still served");

    // The server-wide limit.
    let dir = TempDir::new().unwrap();
    let small = Server::start(dir.path(), &["--max-sessions", "3"]);
    let mut conn = Conn::open(&small.addr, small.admin()).await;
    for _ in 0..3 {
        assert_eq!(conn.post(INIT_2025_11_25, "").await.status, 200);
    }
    let refused = conn.post(INIT_2025_11_25, "").await;
    assert_eq!(refused.status, 503);
    assert!(refused.head.contains("retry-after: "), "{}", refused.head);
}

/// Idle and trickling sockets, more than the process has descriptors for, do not keep a valid
/// request from being served: the longest-idle connections are closed to make room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_under_a_low_descriptor_limit_do_not_lock_out_valid_requests() {
    let dir = TempDir::new().unwrap();
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "ulimit -n 128 && exec '{BIN}' --data-dir '{}' serve --http 127.0.0.1:0",
            dir.path().display()
        ))
        .env_remove("TOKENWARDEN_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let server = Server::from_command(cmd, dir.path());

    let mut idle = Vec::new();
    for i in 0..300 {
        let mut socket = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
        if i % 2 == 0 {
            // Trickle: part of a request's headers, never finished.
            socket
                .write_all(b"POST /mcp HTTP/1.1\r\nhost: localhost\r\n")
                .await
                .unwrap();
        }
        idle.push(socket);
    }
    let started = Instant::now();
    let client = reqwest::Client::new();
    let health = tokio::time::timeout(
        Duration::from_secs(30),
        client.get(format!("http://{}/healthz", server.addr)).send(),
    )
    .await
    .expect("a valid request is answered")
    .unwrap();
    assert_eq!(health.status(), 200);
    let mcp = connect_http(&server.url(), server.admin()).await;
    ok(&mcp, "whoami", json!({})).await;
    let waited = started.elapsed();
    // The header deadline (10 s) would free the sockets too; making room must be much faster.
    assert!(
        waited < Duration::from_secs(5),
        "valid requests waited {waited:?} behind 300 idle sockets"
    );
    drop(idle);
}

/// Protocol edges that real clients trip over, each answered as SPEC §6 says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_edges_answer_exactly() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &["--allowed-origin", "https://app.example.com"]);
    let url = server.url();
    let http = reqwest::Client::new();
    let admin = server.admin();

    // DELETE of a session: 204, then 404; an unknown session: 404.
    let mut conn = Conn::open(&server.addr, admin).await;
    let (session, headers) = open_session(&mut conn, "2025-11-25").await;
    let delete = |session: String| {
        http.delete(&url)
            .header("authorization", bearer(admin))
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-11-25")
            .send()
    };
    assert_eq!(delete(session.clone()).await.unwrap().status(), 204);
    assert_eq!(delete(session.clone()).await.unwrap().status(), 404);
    assert_eq!(conn.post(TOOLS_LIST, &headers).await.status, 404);
    assert_eq!(
        delete("no-such-session".into()).await.unwrap().status(),
        404
    );

    // Invalid JSON, batches and non-messages: 400 with a JSON-RPC error.
    for (body, code) in [
        ("{\"jsonrpc\": \"2.0\", \"id\": 1,", -32700),
        ("", -32700),
        (&*format!("[{INIT_2025_11_25}]"), -32600),
        ("42", -32600),
        (
            r#"{"jsonrpc":"2.0","id":{"a":1},"method":"initialize","params":{}}"#,
            -32600,
        ),
    ] {
        let reply = raw_post(&url, &[("authorization", &bearer(admin))], body.to_owned()).await;
        assert_eq!(reply.status(), 400, "{body}");
        let value: Value = reply.json().await.unwrap();
        assert_eq!(value["error"]["code"], json!(code), "{body}: {value}");
        assert_eq!(value["jsonrpc"], "2.0");
    }

    // An invalid tools/list cursor: -32602.
    let mut conn = Conn::open(&server.addr, admin).await;
    let (_, headers) = open_session(&mut conn, "2025-11-25").await;
    let reply = conn
        .post(
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/list","params":{"cursor":"bogus"}}"#,
            &headers,
        )
        .await;
    let answer = messages(&reply).pop().unwrap();
    assert_eq!(answer["error"]["code"], json!(-32602), "{answer}");

    // Clients of the 2025 revisions before 2025-11-25 get no event without data (older SDKs
    // report one as a parse error on every response), and no event ids or retry hints that
    // would invite a resumption.
    for version in ["2024-11-05", "2025-03-26", "2025-06-18"] {
        let mut conn = Conn::open(&server.addr, admin).await;
        let init = conn.post(&init_body(version), "").await;
        assert_eq!(init.status, 200, "{version}");
        let headers = format!(
            "mcp-session-id: {}\r\nmcp-protocol-version: {version}\r\n",
            init.session.clone().unwrap()
        );
        conn.post(INITIALIZED, &headers).await;
        let reply = conn.post(TOOLS_LIST, &headers).await;
        for r in [&init, &reply] {
            let all = messages(r);
            assert!(
                !all.is_empty() && all.iter().all(|m| m.is_object()),
                "{version}: {all:?}"
            );
            let text = String::from_utf8_lossy(&r.body);
            assert!(
                !text.contains("\nretry:") && !text.starts_with("retry:"),
                "{version}: {text}"
            );
        }
    }

    // Unknown paths: 404, with or without a token; /healthz needs none.
    for path in ["/", "/nope", "/mcp/extra", "/.well-known/unknown"] {
        let status = http
            .get(format!("http://{}{path}", server.addr))
            .header("authorization", bearer(admin))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 404, "{path}");
    }
    let health = http
        .get(format!("http://{}/healthz", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // No credentials: a challenge without an error code (RFC 6750 §3.1); bad ones: invalid_token.
    let bare = raw_post(&url, &[], INIT_2025_11_25.to_owned()).await;
    assert_eq!(bare.status(), 401);
    assert_eq!(
        bare.headers()["www-authenticate"],
        format!(
            "Bearer realm=\"tokenwarden\", resource_metadata=\"{}\"",
            url.replace("/mcp", "/.well-known/oauth-protected-resource")
        )
        .as_str()
    );
    let wrong = raw_post(
        &url,
        &[("authorization", "Bearer nope")],
        INIT_2025_11_25.to_owned(),
    )
    .await;
    assert_eq!(wrong.status(), 401);
    assert!(
        wrong.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\"")
    );

    // CORS: preflight without a token from an allowed origin; a foreign origin is refused.
    for origin in ["http://localhost:6274", "https://app.example.com"] {
        let preflight = http
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type, mcp-session-id",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(preflight.status(), 204, "{origin}");
        let h = preflight.headers();
        assert_eq!(h["access-control-allow-origin"], origin);
        let allowed = h["access-control-allow-headers"].to_str().unwrap();
        for name in [
            "authorization",
            "content-type",
            "mcp-session-id",
            "mcp-protocol-version",
            "last-event-id",
        ] {
            assert!(allowed.contains(name), "{name} in {allowed}");
        }
        let post = raw_post(
            &url,
            &[("authorization", &bearer(admin)), ("origin", origin)],
            INIT_2025_11_25.to_owned(),
        )
        .await;
        assert_eq!(post.status(), 200);
        assert_eq!(post.headers()["access-control-allow-origin"], origin);
        assert!(
            post.headers()["access-control-expose-headers"]
                .to_str()
                .unwrap()
                .contains("mcp-session-id")
        );
    }
    let foreign = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://evil.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
}

/// An open stream belongs to the secret that opened it: the end of a rotation's grace closes
/// it within a second, though the token itself stays active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_closes_when_its_secret_is_rotated_out() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[]);
    let admin = connect_http(&server.url(), server.admin()).await;
    let (id, secret) = mint(&admin, json!({"name": "streamer", "parent": "none"})).await;

    let mut conn = Conn::open(&server.addr, &secret).await;
    let (session, _) = open_session(&mut conn, "2025-11-25").await;
    let mut stream = reqwest::Client::new()
        .get(server.url())
        .header("accept", "text/event-stream")
        .header("authorization", bearer(&secret))
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let reader = tokio::spawn(async move {
        while let Ok(Some(_)) = stream.chunk().await {}
        Instant::now()
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !reader.is_finished(),
        "the stream stays open while its secret is valid"
    );

    let rotated = ok(
        &admin,
        "rotate_token",
        json!({"id": id, "grace_seconds": 0}),
    )
    .await;
    let rotated_at = Instant::now();
    let closed_at = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the stream closes when its secret is rotated out")
        .unwrap();
    let delay = closed_at.duration_since(rotated_at);
    assert!(
        delay < Duration::from_secs(1),
        "closed {delay:?} after the rotation"
    );
    let record = ok(&admin, "get_token", json!({"id": id})).await;
    assert_eq!(record["status"], "active");
    // The new secret works; the old one is refused.
    let fresh = connect_http(&server.url(), rotated["token"].as_str().unwrap()).await;
    ok(&fresh, "whoami", json!({})).await;
    let Err(refused) = try_connect_http(&server.url(), &secret).await else {
        panic!("a rotated-out secret cannot connect");
    };
    assert!(refused.contains("Auth required"), "{refused}");
    let response = raw_initialize(&server.url(), &[("authorization", &bearer(&secret))]).await;
    assert_eq!(response.status().as_u16(), 401);
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    // `grace_seconds: 0` retires the old hash at once: it is no longer known at all.
    assert!(
        challenge.ends_with("error_description=\"unknown token\""),
        "{challenge}"
    );
}

/// A lineage that fills the server's session table by minting children cannot lock another
/// lineage out: the newcomer takes the biggest holder's least recently used session, while the
/// biggest holder itself gets 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lineage_filling_the_session_table_cannot_lock_out_others() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(
        dir.path(),
        &["--max-sessions", "20", "--max-sessions-per-token", "10"],
    );
    let admin = connect_http(&server.url(), server.admin()).await;
    let (_, flooder) = mint(
        &admin,
        json!({"name": "flooder", "parent": "none", "tools": ["create_token", "whoami"]}),
    )
    .await;
    drop(admin);
    let flooder_client = connect_http(&server.url(), &flooder).await;
    let mut children = Vec::new();
    for i in 0..3 {
        let issued = ok(
            &flooder_client,
            "create_token",
            json!({"name": format!("c{i}")}),
        )
        .await;
        children.push(issued["token"].as_str().unwrap().to_owned());
    }
    drop(flooder_client);
    let mut refused = 0;
    for secret in &children {
        let mut conn = Conn::open(&server.addr, secret).await;
        for _ in 0..10 {
            match conn.post(INIT_2025_11_25, "").await.status {
                200 => {}
                503 => refused += 1,
                other => panic!("unexpected {other}"),
            }
        }
    }
    assert!(refused > 0, "the flooding lineage hit the server's limit");
    // Another lineage is still served.
    let mut conn = Conn::open(&server.addr, server.admin()).await;
    let (_, headers) = open_session(&mut conn, "2025-11-25").await;
    assert_eq!(conn.post(TOOLS_LIST, &headers).await.status, 200);
}

/// A request whose body never finishes cannot hold a connection: after the body deadline
/// (10 s) it is answered 408 and the connection is freed for others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_do_not_hold_connections() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &["--max-connections", "4"]);
    let admin = server.admin().to_owned();
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut socket = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
        socket
            .write_all(
                format!(
                    "POST /mcp HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {admin}\r\n\
                     content-type: application/json\r\naccept: application/json, text/event-stream\r\n\
                     content-length: 1000\r\n\r\n{{"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        stalled.push(socket);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let client = reqwest::Client::new();
    let mut served = false;
    while started.elapsed() < Duration::from_secs(25) {
        if let Ok(Ok(r)) = tokio::time::timeout(
            Duration::from_secs(2),
            client.get(format!("http://{}/healthz", server.addr)).send(),
        )
        .await
            && r.status() == 200
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        served,
        "a valid request was served once the stalled bodies timed out"
    );
    drop(stalled);
}

/// A stream keeps its connection busy, and busy connections are never closed to make room:
/// one token opening streams on every session it holds must not take every connection slot.
/// Each session keeps one stream (a new one replaces the old) and each token at most 16, so
/// a fresh client is still served (without the bound, 40 streams fill the 40 slots and every
/// new connection is reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tokens_streams_cannot_take_every_connection() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &["--max-connections", "40"]);
    let admin = connect_http(&server.url(), server.admin()).await;
    let (_, secret) = mint(&admin, json!({"name": "streamer", "parent": "none"})).await;
    drop(admin);

    let mut sessions = Vec::new();
    for _ in 0..20 {
        let mut conn = Conn::open(&server.addr, &secret).await;
        sessions.push(open_session(&mut conn, "2025-11-25").await.0);
    }
    let client = reqwest::Client::new();
    let mut readers = Vec::new();
    for session in sessions.iter().chain(&sessions) {
        let mut stream = client
            .get(server.url())
            .header("accept", "text/event-stream")
            .header("authorization", bearer(&secret))
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-11-25")
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), 200);
        readers.push(tokio::spawn(async move {
            while let Ok(Some(_)) = stream.chunk().await {}
        }));
    }
    assert_eq!(fresh_health_check(&server.addr, 10).await, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    let open = loop {
        let open = readers.iter().filter(|r| !r.is_finished()).count();
        if open <= 16 || Instant::now() > deadline {
            break open;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(open <= 16, "{open} of 40 streams still open");
    assert!(open > 0, "the newest streams stay open");
}

/// A request refused for want of credentials holds its connection for at most about a second
/// while its body trickles in (a connection busy with a request is never closed to make room):
/// the 401 goes out with the connection closed, and the slot is free again. With the full body
/// deadline (10 s) a caller without a token could keep every slot busy with ~100 connections a
/// second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_with_stalled_bodies_free_their_connections_quickly() {
    use tokio::io::AsyncReadExt;
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &["--max-connections", "4"]);
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut socket = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
        socket
            .write_all(
                b"POST /mcp HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
                  accept: application/json, text/event-stream\r\ncontent-length: 1000\r\n\r\n{",
            )
            .await
            .unwrap();
        stalled.push(socket);
    }
    let started = Instant::now();
    for socket in &mut stalled {
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer))
            .await
            .expect("the refusal comes, and the connection closes, within the refusal's deadline")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(4), "refused after {waited:?}");
    assert_eq!(fresh_health_check(&server.addr, 2).await, 200);
}
