//! Availability under hostile load (SPEC §16), through the shipped binary: each test runs one
//! attack the adversarial review measured and asserts that another token is served within a
//! bound far from the attack's effect (resets, seconds of queueing, gigabytes). The upstream
//! is `tokenwarden-test-upstream` with its hostile tools (`FIXTURE_HOSTILE`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, connect_http, ok};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FIXTURE: &str = env!("CARGO_BIN_EXE_tokenwarden-test-upstream");

fn upstreams(dir: &Path, servers: Value) -> PathBuf {
    let path = dir.join("upstreams.json");
    std::fs::write(&path, json!({"mcpServers": servers}).to_string()).unwrap();
    path
}

fn stdio_fixture(log: &Path) -> Value {
    json!({"command": FIXTURE, "env": {"FIXTURE_LOG": log, "FIXTURE_HOSTILE": "1"}})
}

/// A child process killed when dropped, so a failing test leaves no upstream behind.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The test upstream over HTTP on a 2025 protocol (sessions), so calls take the direct path.
fn http_fixture(log: &Path) -> (Killed, String) {
    http_fixture_up_to(log, "2025-11-25")
}

/// The test upstream over HTTP speaking protocols up to `max` (2026-07-28: no sessions, so
/// calls take rmcp's path).
fn http_fixture_up_to(log: &Path, max: &str) -> (Killed, String) {
    use std::io::BufRead;
    let mut child = Command::new(FIXTURE)
        .args(["--http", "127.0.0.1:0"])
        .env("FIXTURE_LOG", log)
        .env("FIXTURE_HOSTILE", "1")
        .env("FIXTURE_MAX_PROTOCOL", max)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    (Killed(child), format!("http://{addr}/mcp"))
}

/// A server fronting the test upstream over stdio as bucket `test`, connected; and its admin.
async fn stdio_gateway(dir: &Path) -> (Server, common::Client) {
    let file = upstreams(dir, json!({"test": stdio_fixture(&dir.join("test.log"))}));
    let server = Server::start(&dir.join("data"), &["--upstreams", file.to_str().unwrap()]);
    let admin = connect_http(&server.url(), server.admin()).await;
    wait_connected(&admin, "test").await;
    (server, admin)
}

/// Mints a root token (admin's child by default: a lineage of its own).
async fn mint(admin: &common::Client, name: &str) -> String {
    let issued = ok(
        admin,
        "create_token",
        json!({"name": name, "parent": "none"}),
    )
    .await;
    issued["token"].as_str().unwrap().to_owned()
}

async fn wait_connected(admin: &common::Client, bucket: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = ok(admin, "list_buckets", json!({})).await;
        let up = listed["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["name"] == bucket && b["status"] == "connected");
        if up {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{bucket} never connected: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A stateless (2026-07-28) `tools/call` as raw HTTP, with a progress token when asked.
fn call_request(addr: &str, secret: &str, tool: &str, args: Value, progress: bool) -> Vec<u8> {
    let mut meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "attack", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    if progress {
        meta["progressToken"] = json!("p");
    }
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": tool, "arguments": args, "_meta": meta},
    })
    .to_string();
    format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {secret}\r\n\
         content-type: application/json\r\naccept: application/json, text/event-stream\r\n\
         mcp-protocol-version: 2026-07-28\r\nmcp-method: tools/call\r\nmcp-name: {tool}\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads one response from `stream`: its status and body, or `None` when the connection
/// closed (or broke) before a whole response with a `Content-Length` came.
async fn read_response(stream: &mut TcpStream) -> Option<(u16, String)> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&got);
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length = text[..end]
            .to_ascii_lowercase()
            .lines()
            .find_map(|l| {
                l.strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
            })
            .and_then(|v| v.parse::<usize>().ok());
        if length.is_some_and(|l| got.len() >= end + 4 + l) {
            let status = text.get(9..12)?.parse().ok()?;
            return Some((status, text[end + 4..].to_owned()));
        }
    }
}

/// What a raw request got on a new connection: its status and body; status 0 when nothing
/// came in time, 1 when the connection was refused, reset or closed without an answer.
async fn exchange(addr: &str, request: &[u8], within: Duration) -> (u16, String) {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(request).await.ok()?;
        read_response(&mut stream).await
    };
    match tokio::time::timeout(within, attempt).await {
        Ok(Some(answer)) => answer,
        Ok(None) => (1, String::new()),
        Err(_) => (0, String::new()),
    }
}

/// [`exchange`] from another loopback address (`127.0.0.x`): another peer, as far as the
/// server's per-address bounds are concerned.
async fn exchange_from(
    local: [u8; 4],
    addr: &str,
    request: &[u8],
    within: Duration,
) -> (u16, String) {
    let attempt = async {
        let mut stream = connect_from(local, addr).await?;
        stream.write_all(request).await.ok()?;
        read_response(&mut stream).await
    };
    match tokio::time::timeout(within, attempt).await {
        Ok(Some(answer)) => answer,
        Ok(None) => (1, String::new()),
        Err(_) => (0, String::new()),
    }
}

/// A connection from another loopback address (`127.0.0.x`).
async fn connect_from(local: [u8; 4], addr: &str) -> Option<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind(std::net::SocketAddr::from((local, 0))).ok()?;
    socket.connect(addr.parse().ok()?).await.ok()
}

/// The tool result inside a JSON reply.
fn result_of(body: &str) -> Value {
    let message: Value = serde_json::from_str(body.trim()).unwrap_or_else(|_| {
        // An event-stream reply: the data line.
        let data = body
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap_or("null");
        serde_json::from_str(data).unwrap_or(Value::Null)
    });
    message["result"].clone()
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

/// High finding: one token's slow gateway calls on more connections than the server holds
/// reset every other client. Now its lineage holds at most half the connections (and
/// `--max-inflight-per-token`), the rest of its calls get 429, and others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_s_slow_calls_never_take_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let file = upstreams(
        dir.path(),
        json!({"test": stdio_fixture(&dir.path().join("test.log"))}),
    );
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--upstreams",
            file.to_str().unwrap(),
            "--max-connections",
            "32",
        ],
    );
    let admin = connect_http(&server.url(), server.admin()).await;
    wait_connected(&admin, "test").await;
    let attacker = mint(&admin, "attacker").await;
    let honest = mint(&admin, "honest").await;
    drop(admin);

    // 36 connections, each holding a 20 s call.
    let slow = call_request(
        &server.addr,
        &attacker,
        "test__slow",
        json!({"seconds": 20}),
        false,
    );
    let attack: Vec<_> = (0..36)
        .map(|_| {
            let (addr, slow) = (server.addr.clone(), slow.clone());
            tokio::spawn(async move { exchange(&addr, &slow, Duration::from_secs(3)).await.0 })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let started = Instant::now();
    let health = exchange(
        &server.addr,
        format!("GET /healthz HTTP/1.1\r\nhost: {}\r\n\r\n", server.addr).as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    let read = call_request(&server.addr, &honest, "test__read_note", json!({}), false);
    let (status, body) = exchange(&server.addr, &read, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert_eq!(health.0, 200, "/healthz under attack");
    assert_eq!(status, 200, "another token under attack: {body}");
    assert_eq!(result_of(&body)["isError"], false, "{body}");
    assert!(took < Duration::from_secs(2), "served in {took:?}");

    // Half the slots (16) hold its calls; the rest were refused with 429 or, arriving while
    // every slot was taken, closed as the longest idle.
    let mut statuses = Vec::new();
    for task in attack {
        statuses.push(task.await.unwrap());
    }
    let refused = statuses.iter().filter(|s| **s == 429).count();
    let held = statuses.iter().filter(|s| **s == 0).count();
    println!("attacker: {refused} refused with 429, {held} still held after 3 s: {statuses:?}");
    assert!(held <= 16, "{statuses:?}");
    assert!(refused >= 12, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| [0, 1, 429].contains(s)),
        "{statuses:?}"
    );
}

/// Medium finding: one token holding every call slot of a shared HTTP upstream made another
/// token's 1 ms call wait 7 s. Now a lineage holds at most half the slots, and a call that
/// timed out waiting says how long it waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_cannot_starve_others_on_a_shared_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let (_upstream, url) = http_fixture(&dir.path().join("web.log"));
    let file = upstreams(
        dir.path(),
        json!({"web": {"type": "http", "url": url, "timeoutSeconds": 4}}),
    );
    let server = Server::start(
        &dir.path().join("data"),
        &["--upstreams", file.to_str().unwrap()],
    );
    let admin = connect_http(&server.url(), server.admin()).await;
    wait_connected(&admin, "web").await;
    let attacker = mint(&admin, "attacker").await;
    let honest = mint(&admin, "honest").await;

    // 48 slow calls: more than every slot of the upstream.
    let slow = call_request(
        &server.addr,
        &attacker,
        "web__slow",
        json!({"seconds": 8}),
        false,
    );
    let attack: Vec<_> = (0..48)
        .map(|_| {
            let (addr, slow) = (server.addr.clone(), slow.clone());
            tokio::spawn(async move { exchange(&addr, &slow, Duration::from_secs(10)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let read = call_request(&server.addr, &honest, "web__read_note", json!({}), false);
    let started = Instant::now();
    let (status, body) = exchange(&server.addr, &read, Duration::from_secs(8)).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(result_of(&body)["isError"], false, "{body}");
    println!("another token's call while one token holds its share: {took:?}");
    assert!(took < Duration::from_millis(1500), "waited {took:?}");

    // Its lineage ran 16 calls and queued 16 (which timed out, saying how long they waited
    // for a slot); the other 16 were refused at once.
    let mut waited = Vec::new();
    let mut refused = 0;
    for task in attack {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, 200, "{body}");
        let result = result_of(&body);
        if result["structuredContent"]["error"]["code"] == "rate_limited" {
            refused += 1;
            continue;
        }
        let text = result["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let at = text
            .find("s of it waiting for a free call slot")
            .unwrap_or_else(|| panic!("a timeout naming its wait: {text}"));
        let seconds: f64 = text[..at]
            .rsplit('(')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0);
        waited.push(seconds);
    }
    assert_eq!(refused, 16, "{waited:?}");
    assert_eq!(waited.len(), 32);
    let queued = waited.iter().filter(|s| **s >= 3.0).count();
    assert!(
        queued >= 12,
        "calls beyond the lineage's 16 slots waited: {waited:?}"
    );
    drop(admin);
}

/// Medium finding: an upstream flooding progress to a client that does not read took the
/// server from 60 MiB to 1.5 GiB (250,000 notifications) and stalled another caller of the same upstream for 7.7 s.
/// Now progress is coalesced (20 per second per call) and never awaited by the upstream's
/// reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_flood_costs_neither_memory_nor_other_callers() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("test.log");
    let file = upstreams(dir.path(), json!({"test": stdio_fixture(&log)}));
    let server = Server::start(
        &dir.path().join("data"),
        &["--upstreams", file.to_str().unwrap()],
    );
    let admin = connect_http(&server.url(), server.admin()).await;
    wait_connected(&admin, "test").await;
    let flooder = mint(&admin, "flooder").await;
    let honest = mint(&admin, "honest").await;
    let before = rss_mib(server.pid());

    // The flooder asks for progress, then never reads its connection.
    let flood = call_request(
        &server.addr,
        &flooder,
        "test__flood_progress",
        json!({"count": 50_000}),
        true,
    );
    let mut silent = TcpStream::connect(&server.addr).await.unwrap();
    silent.write_all(&flood).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let read = call_request(&server.addr, &honest, "test__read_note", json!({}), false);
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let (status, body) = exchange(&server.addr, &read, Duration::from_secs(10)).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Until the upstream has sent everything (tens of seconds in a debug build).
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("flooded")
    {
        assert!(Instant::now() < deadline, "the flood never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = rss_mib(server.pid());
    println!(
        "progress flood: another caller's slowest call {slowest:?}; RSS {before:.0} -> {after:.0} MiB"
    );
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    assert!(after - before < 64.0, "RSS grew {:.0} MiB", after - before);
    drop(silent);
}

/// Low finding: a stdio upstream's answer over 16 MiB was dropped by the transport and its
/// call waited for the timeout (60 s). Now it fails at once, on stdio and HTTP alike (the
/// direct path of a session upstream, and rmcp's path of a 2026-07-28 one), and the upstream
/// keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_answers_fail_at_once_on_both_transports() {
    let _serial = BIG_ANSWERS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (_upstream, url) = http_fixture(&dir.path().join("web.log"));
    let (_modern, modern_url) = http_fixture_up_to(&dir.path().join("new.log"), "2026-07-28");
    let file = upstreams(
        dir.path(),
        json!({
            "test": stdio_fixture(&dir.path().join("test.log")),
            "web": {"type": "http", "url": url},
            "new": {"type": "http", "url": modern_url},
        }),
    );
    let server = Server::start(
        &dir.path().join("data"),
        &["--upstreams", file.to_str().unwrap()],
    );
    let admin = connect_http(&server.url(), server.admin()).await;
    for bucket in ["test", "web", "new"] {
        wait_connected(&admin, bucket).await;
    }
    for bucket in ["test", "web", "new"] {
        let started = Instant::now();
        let refused = admin
            .call_tool(
                rmcp::model::CallToolRequestParams::new(format!("{bucket}__big"))
                    .with_arguments(json!({"bytes": 17 << 20}).as_object().unwrap().clone()),
            )
            .await
            .unwrap_or_else(|e| panic!("{bucket}: {e}\n{}", server.stderr()));
        let took = started.elapsed();
        assert_eq!(refused.is_error, Some(true), "{bucket}");
        let error = &refused.structured_content.unwrap()["error"];
        assert_eq!(
            error["code"], "upstream_result_too_large",
            "{bucket}: {error}"
        );
        println!("{bucket}: a 17 MiB answer refused in {took:?}");
        assert!(took < Duration::from_secs(10), "{bucket}: {took:?}");
        // The upstream still serves.
        let (failed, _) = common::call(&admin, &format!("{bucket}__read_note"), json!({})).await;
        assert!(!failed, "{bucket} still serves");
    }
    drop(admin);
}

/// Review finding: requests that no lineage is counted for (no token, a refused session, an
/// OAuth body that never comes) kept their connections busy, and busy connections were never
/// closed to make room. Now only a counted request shields its connection; the others are
/// closed, longest first, when a new connection needs the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_nobody_counts_never_hold_the_connections_others_need() {
    let dir = tempfile::tempdir().unwrap();
    let file = upstreams(
        dir.path(),
        json!({"test": stdio_fixture(&dir.path().join("test.log"))}),
    );
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--upstreams",
            file.to_str().unwrap(),
            "--max-connections",
            "20",
        ],
    );
    let admin = connect_http(&server.url(), server.admin()).await;
    wait_connected(&admin, "test").await;
    let attacker = mint(&admin, "attacker").await;
    let honest = mint(&admin, "honest").await;
    drop(admin);

    // Headers announcing a body that never comes, three ways, 15 connections each.
    let addr = &server.addr;
    let stalls = [
        format!(
            "POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
        ),
        format!(
            "POST /mcp HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {attacker}\r\nmcp-session-id: made-up\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
        ),
        format!(
            "POST /oauth/token HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 100\r\n\r\n"
        ),
    ];
    let mut held = Vec::new();
    for stall in &stalls {
        for _ in 0..15 {
            if let Ok(mut stream) = TcpStream::connect(addr).await
                && stream.write_all(stall.as_bytes()).await.is_ok()
            {
                held.push(stream);
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let read = call_request(addr, &honest, "test__read_note", json!({}), false);
    for attempt in 0..3 {
        let started = Instant::now();
        let (status, body) = exchange(addr, &read, Duration::from_secs(5)).await;
        let took = started.elapsed();
        assert_eq!(status, 200, "attempt {attempt}: {body}");
        assert!(took < Duration::from_secs(3), "attempt {attempt}: {took:?}");
    }
    drop(held);
}

/// Under a flood of connections refused at the lineage's bound, the connections being refused
/// are closed to make room first: another client's kept-alive connection, idle between its
/// requests, is not (the under-attack benchmark saw it closed hundreds of times before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_make_room_before_a_kept_alive_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = upstreams(
        dir.path(),
        json!({"test": stdio_fixture(&dir.path().join("test.log"))}),
    );
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--upstreams",
            file.to_str().unwrap(),
            "--max-connections",
            "32",
        ],
    );
    let admin = connect_http(&server.url(), server.admin()).await;
    wait_connected(&admin, "test").await;
    let attacker = mint(&admin, "attacker").await;
    let honest = mint(&admin, "honest").await;
    drop(admin);

    // One kept-alive connection in good standing (it has made a call), then a call every
    // 20 ms while 60 tasks hold slow calls and retry at once when refused, for 4 s.
    let read = call_request(&server.addr, &honest, "test__read_note", json!({}), false);
    let mut stream = TcpStream::connect(&server.addr).await.unwrap();
    stream.write_all(&read).await.unwrap();
    assert_eq!(read_response(&mut stream).await.map(|r| r.0), Some(200));
    let slow = call_request(
        &server.addr,
        &attacker,
        "test__slow",
        json!({"seconds": 20}),
        false,
    );
    let stop = Instant::now() + Duration::from_secs(4);
    let attack: Vec<_> = (0..60)
        .map(|_| {
            let (addr, slow) = (server.addr.clone(), slow.clone());
            tokio::spawn(async move {
                while Instant::now() < stop {
                    let _ = exchange(&addr, &slow, Duration::from_secs(2)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (mut ok, mut lost) = (0, 0);
    while Instant::now() < stop {
        let answered = async {
            stream.write_all(&read).await.ok()?;
            read_response(&mut stream)
                .await
                .map(|(status, _)| status == 200)
        };
        match tokio::time::timeout(Duration::from_secs(3), answered).await {
            Ok(Some(true)) => ok += 1,
            _ => {
                lost += 1;
                stream = TcpStream::connect(&server.addr).await.unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for task in attack {
        task.abort();
    }
    println!("kept-alive client under a refused-connection flood: {ok} answered, {lost} lost");
    assert!(ok > 20, "{ok} answered");
    assert_eq!(lost, 0, "the kept-alive connection was closed {lost} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_flood_at_capacity_is_paced_and_new_clients_still_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let file = upstreams(
        dir.path(),
        json!({"test": stdio_fixture(&dir.path().join("test.log"))}),
    );
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--upstreams",
            file.to_str().unwrap(),
            "--max-connections",
            "32",
        ],
    );
    let admin = connect_http(&server.url(), server.admin()).await;
    wait_connected(&admin, "test").await;
    let attacker = mint(&admin, "attacker").await;
    let honest = mint(&admin, "honest").await;
    drop(admin);

    // 80 tasks hold slow calls and reconnect the moment their connection ends: more than the
    // 32 connections, so each new one closes another (or is refused), for 3 s.
    let slow = call_request(
        &server.addr,
        &attacker,
        "test__slow",
        json!({"seconds": 20}),
        false,
    );
    let seconds = 3;
    let stop = Instant::now() + Duration::from_secs(seconds);
    let attack: Vec<_> = (0..80)
        .map(|_| {
            let (addr, slow) = (server.addr.clone(), slow.clone());
            tokio::spawn(async move {
                let mut answered = 0u64;
                while Instant::now() < stop {
                    let (status, _) = exchange(&addr, &slow, Duration::from_secs(2)).await;
                    answered += u64::from(status >= 100);
                }
                answered
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A new client (another address), on a new connection each time, is answered meanwhile.
    let read = call_request(&server.addr, &honest, "test__read_note", json!({}), false);
    let (mut ok, mut waits) = (0, Vec::new());
    while Instant::now() + Duration::from_millis(500) < stop {
        let started = Instant::now();
        let (status, _) =
            exchange_from([127, 0, 0, 2], &server.addr, &read, Duration::from_secs(5)).await;
        if status == 200 {
            ok += 1;
            waits.push(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut answered = 0;
    for task in attack {
        answered += task.await.unwrap();
    }
    let per_second = answered / seconds;
    println!(
        "reconnect flood: {per_second} attacker requests answered per second; \
         a new client answered {ok} times, waits {waits:?}"
    );
    assert!(ok >= 3, "a new client was answered only {ok} times");
    assert!(
        waits.iter().all(|w| *w < Duration::from_secs(1)),
        "another address waited {waits:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_oversized_answer_its_lineage_runs_one_call_at_a_time_there() {
    let _serial = BIG_ANSWERS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, admin) = stdio_gateway(dir.path()).await;
    let attacker = mint(&admin, "attacker").await;
    let honest = mint(&admin, "honest").await;
    drop(admin);

    // One 17 MiB answer, refused at once.
    let big = call_request(
        &server.addr,
        &attacker,
        "test__big",
        json!({"bytes": 17 << 20}),
        false,
    );
    let (_, body) = exchange(&server.addr, &big, Duration::from_secs(30)).await;
    assert!(body.contains("upstream_result_too_large"), "{body}");

    // Then four 1 s calls at once: the lineage waits a second for the slot the answer keeps,
    // then runs them one at a time; another token's call is not held up.
    let started = Instant::now();
    let slow = call_request(
        &server.addr,
        &attacker,
        "test__slow",
        json!({"seconds": 1}),
        false,
    );
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let (addr, slow) = (server.addr.clone(), slow.clone());
            tokio::spawn(async move { exchange(&addr, &slow, Duration::from_secs(20)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let read = call_request(&server.addr, &honest, "test__read_note", json!({}), false);
    let other = Instant::now();
    let (status, body) = exchange(&server.addr, &read, Duration::from_secs(5)).await;
    let other = other.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("\"isError\":true"), "{body}");
    for call in calls {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(!body.contains("\"isError\":true"), "{body}");
    }
    let took = started.elapsed();
    println!(
        "after an oversized answer: four 1 s calls took {took:?}; another token's call {other:?}"
    );
    assert!(
        took >= Duration::from_millis(4_500),
        "the calls ran side by side: {took:?}"
    );
    assert!(
        other < Duration::from_secs(2),
        "another token waited {other:?}"
    );
}

/// Review finding: each connection could buffer ~400 KiB of a request head that never ends
/// (hyper's default) until the 10 s deadline; a thousand of them took half a GiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_request_heads_are_bounded_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let before = rss_mib(server.pid());
    // 300 connections, each sending 200 KiB of one header that never ends.
    let line = format!(
        "GET /healthz HTTP/1.1\r\nhost: {}\r\nx-padding: {}",
        server.addr,
        "a".repeat(200 * 1024)
    );
    let mut held = Vec::new();
    for _ in 0..300 {
        let Ok(mut stream) = TcpStream::connect(&server.addr).await else {
            continue;
        };
        let _ = tokio::time::timeout(
            Duration::from_millis(200),
            stream.write_all(line.as_bytes()),
        )
        .await;
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_mib(server.pid());
    println!("300 unfinished 200 KiB heads: RSS {before:.1} -> {after:.1} MiB");
    assert!(
        after - before < 30.0,
        "RSS grew {:.1} MiB for 300 unfinished heads",
        after - before
    );
    // The server still answers.
    let health = format!("GET /healthz HTTP/1.1\r\nhost: {}\r\n\r\n", server.addr);
    drop(held);
    let (status, _) = exchange(&server.addr, health.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status, 200);
}

/// Review finding: answers nobody reads stayed in memory (64 unread 16 MB answers: +617 MiB,
/// for as long as the client liked). Now a connection whose writes have waited 10 s on a
/// client that reads nothing is closed, and what it held is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_nobody_reads_is_dropped_with_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin) = stdio_gateway(dir.path()).await;
    let attacker = mint(&admin, "attacker").await;
    drop(admin);
    let before = rss_mib(server.pid());

    // Four calls for 15 MB answers, on sockets that never read.
    let big = call_request(
        &server.addr,
        &attacker,
        "test__big",
        json!({"bytes": 15_000_000}),
        false,
    );
    let mut unread = Vec::new();
    for _ in 0..4 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(server.addr.parse().unwrap()).await.unwrap();
        stream.write_all(&big).await.unwrap();
        unread.push(stream);
    }
    // Held while the answers wait to be read, then dropped once their writes have waited
    // 10 s (the sweep runs every second; the debug-built upstream takes a few seconds to
    // build the answers): reading now, each client gets only what the kernel had queued, then
    // the end of the connection; without the limit, all 15 MB.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let held = rss_mib(server.pid());
    let mut got = Vec::new();
    for mut stream in unread {
        let mut total = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        let drained = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        })
        .await;
        assert!(drained.is_ok(), "a connection was neither cut nor finished");
        got.push(total);
    }
    println!("unread answers: RSS {before:.1} -> {held:.1} MiB; bytes each client got: {got:?}");
    assert!(
        got.iter().all(|n| *n < 15_000_000),
        "an answer nobody read for 20 s was still sent whole: {got:?}"
    );
}

/// Review finding: one lineage whose many kept-alive connections all had standing pushed out
/// another client's idle kept-alive connection (8–11 times in 14 calls): room was made from
/// the longest-idle connection, whoever held it. Now it comes from the lineage holding the
/// most connections once it holds more than half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lineage_s_kept_alive_connections_never_push_out_another_s() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--max-connections", "32"]);
    let admin = connect_http(&server.url(), server.admin()).await;
    let greedy = mint(&admin, "greedy").await;
    let honest = mint(&admin, "honest").await;
    drop(admin);
    let whoami = |secret: &str| call_request(&server.addr, secret, "whoami", json!({}), false);

    // The honest client: one kept-alive connection in good standing.
    let honest_call = whoami(&honest);
    let mut stream = TcpStream::connect(&server.addr).await.unwrap();
    stream.write_all(&honest_call).await.unwrap();
    assert_eq!(read_response(&mut stream).await.map(|r| r.0), Some(200));

    // 40 kept-alive connections of one lineage, each calling every 50 ms and reopening when
    // closed, for 6 s.
    let stop = Instant::now() + Duration::from_secs(6);
    let greedy_call = whoami(&greedy);
    let flood: Vec<_> = (0..40)
        .map(|_| {
            let (addr, call) = (server.addr.clone(), greedy_call.clone());
            tokio::spawn(async move {
                let mut conn: Option<TcpStream> = None;
                while Instant::now() < stop {
                    if conn.is_none() {
                        conn = TcpStream::connect(&addr).await.ok();
                    }
                    if let Some(c) = conn.as_mut() {
                        let answered = async {
                            c.write_all(&call).await.ok()?;
                            read_response(c).await
                        };
                        if tokio::time::timeout(Duration::from_secs(2), answered)
                            .await
                            .ok()
                            .flatten()
                            .is_none()
                        {
                            conn = None;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (mut ok, mut lost) = (0, 0);
    while Instant::now() + Duration::from_millis(500) < stop {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let answered = async {
            stream.write_all(&honest_call).await.ok()?;
            read_response(&mut stream)
                .await
                .map(|(status, _)| status == 200)
        };
        match tokio::time::timeout(Duration::from_secs(3), answered).await {
            Ok(Some(true)) => ok += 1,
            _ => {
                lost += 1;
                stream = TcpStream::connect(&server.addr).await.unwrap();
            }
        }
    }
    for task in flood {
        task.abort();
    }
    println!("kept-alive client beside one lineage's 40 connections: {ok} answered, {lost} lost");
    assert!(ok >= 8, "{ok} answered");
    assert_eq!(
        lost, 0,
        "the honest kept-alive connection was closed {lost} times"
    );
}

/// Held by the tests whose upstreams build answers of many MiB, and by the connection floods
/// that take both cores: run side by side on two cores, each slowed the other past what its
/// timing asserts (the big answers then missed their 10 s window).
static BIG_ANSWERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The p-th quantile of sorted latencies.
fn quantile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// `count` `whoami` calls in a row on one kept-alive connection, `pause` apart; their
/// latencies, sorted.
async fn honest_latencies(
    conn: &mut common::raw_http::Conn,
    call: &[u8],
    count: usize,
    pause: Duration,
) -> Vec<Duration> {
    let mut seen = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        conn.send_raw(call).await;
        let reply = conn.read_reply().await;
        assert_eq!(reply.status, 200);
        seen.push(started.elapsed());
        tokio::time::sleep(pause).await;
    }
    seen.sort();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lineage_flooding_pipelined_requests_leaves_others_their_latency() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let admin = connect_http(&server.url(), server.admin()).await;
    let greedy = mint(&admin, "greedy").await;
    let honest = mint(&admin, "honest").await;
    drop(admin);
    let whoami = |secret: &str| call_request(&server.addr, secret, "whoami", json!({}), false);

    let honest_call = whoami(&honest);
    let mut conn = common::raw_http::Conn::open(&server.addr, &honest).await;
    let pause = Duration::from_millis(2);
    honest_latencies(&mut conn, &honest_call, 50, pause).await;
    let unloaded = honest_latencies(&mut conn, &honest_call, 300, pause).await;

    // One lineage: 24 kept-alive connections, each sending 16 requests at a time and reading
    // the 16 answers, as fast as they come.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let burst: Vec<u8> = whoami(&greedy).repeat(16);
    let flood: Vec<_> = (0..24)
        .map(|_| {
            let (addr, burst) = (server.addr.clone(), burst.clone());
            let (stop, served) = (stop.clone(), served.clone());
            tokio::spawn(async move {
                let mut conn = common::raw_http::Conn::open(&addr, "").await;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    conn.send_raw(&burst).await;
                    for _ in 0..16 {
                        conn.read_reply().await;
                    }
                    served.fetch_add(16, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = served.load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let loaded = honest_latencies(&mut conn, &honest_call, 300, pause).await;
    let rate = (served.load(std::sync::atomic::Ordering::Relaxed) - before) as f64
        / started.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in flood {
        let _ = task.await;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "honest whoami unloaded p50 {:.2} ms p99 {:.2} ms; beside one lineage's pipelined \
         flood ({rate:.0} requests/s served to it): p50 {:.2} ms p99 {:.2} ms",
        ms(quantile(&unloaded, 0.5)),
        ms(quantile(&unloaded, 0.99)),
        ms(quantile(&loaded, 0.5)),
        ms(quantile(&loaded, 0.99)),
    );
    assert!(rate > 100.0, "the flood ran ({rate:.0}/s)");
    // Without turns the honest calls waited behind the flood's queued requests: p50 25× its
    // unloaded value on a busy two-core host (7× with them).
    assert!(
        quantile(&loaded, 0.5) < 10 * quantile(&unloaded, 0.5),
        "the honest token's p50 went from {:.2} to {:.2} ms",
        ms(quantile(&unloaded, 0.5)),
        ms(quantile(&loaded, 0.5)),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lineage_taking_many_big_answers_runs_one_call_at_a_time_there() {
    let _serial = BIG_ANSWERS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, admin) = stdio_gateway(dir.path()).await;
    let greedy = mint(&admin, "greedy").await;
    drop(admin);

    // Three 12 MiB answers at once, each under the size limit, 36 MiB in all (at once, so
    // that they end within the budget's 10 s window however slow the host).
    let big = call_request(
        &server.addr,
        &greedy,
        "test__big",
        json!({"bytes": 12 << 20}),
        false,
    );
    let bigs: Vec<_> = (0..3)
        .map(|_| {
            let (addr, big) = (server.addr.clone(), big.clone());
            tokio::spawn(async move { exchange(&addr, &big, Duration::from_secs(60)).await })
        })
        .collect();
    for big in bigs {
        let (status, body) = big.await.unwrap();
        assert_eq!(status, 200);
        assert!(!body.contains("upstream_result_too_large"));
    }

    // Then four 1 s calls at once: they run one at a time on that upstream, so one of them
    // waits at least a second for another (the penalty's 10 s, counted from the answers,
    // may end before the last ones on a slow host).
    let slow = call_request(
        &server.addr,
        &greedy,
        "test__slow",
        json!({"seconds": 1}),
        false,
    );
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let (addr, slow) = (server.addr.clone(), slow.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let answer = exchange(&addr, &slow, Duration::from_secs(20)).await;
                (answer, started.elapsed())
            })
        })
        .collect();
    let mut longest = Duration::ZERO;
    for call in calls {
        let ((status, body), took) = call.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(!body.contains("\"isError\":true"), "{body}");
        longest = longest.max(took);
    }
    println!("after 36 MiB of answers: the longest of four 1 s calls took {longest:?}");
    assert!(
        longest >= Duration::from_millis(1_900),
        "the calls ran side by side: the longest took {longest:?}"
    );
}

/// An agent the admin minted (a child: the same lineage) holding every request it may in
/// flight leaves the admin half the lineage's share: the admin can still act, e.g. revoke it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_agent_never_locks_out_the_token_that_minted_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--max-inflight-per-token", "8"]);
    let admin = connect_http(&server.url(), server.admin()).await;
    let issued = ok(&admin, "create_token", json!({"name": "agent"})).await;
    let agent = issued["token"].as_str().unwrap().to_owned();
    drop(admin);

    // The agent's requests announce a body that never comes: each holds its ticket until
    // the body deadline.
    let addr = &server.addr;
    let stall = format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {agent}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
    );
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(stall.as_bytes()).await.unwrap();
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Its own further request is refused: the stalls hold what the agent may hold.
    let whoami = |secret: &str| call_request(addr, secret, "whoami", json!({}), false);
    let (status, body) = exchange(addr, &whoami(&agent), Duration::from_secs(5)).await;
    assert_eq!(status, 429, "{body}");
    // The admin that minted it is served at once.
    for attempt in 0..3 {
        let started = Instant::now();
        let (status, body) = exchange(addr, &whoami(server.admin()), Duration::from_secs(5)).await;
        assert_eq!(status, 200, "attempt {attempt}: {body}");
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "attempt {attempt}"
        );
    }
    drop(held);
}

/// Refused requests' bodies are read and dropped, never kept: many clients without a token
/// posting a megabyte each cost the server next to nothing (each body was kept whole: +1 MiB
/// per connection, past the +256 MiB of SPEC §16 at the default 1,024 connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_refused_requests_are_never_kept() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let addr = server.addr.clone();
    let before = rss_mib(server.pid());
    let mut request = format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        1 << 20
    )
    .into_bytes();
    request.resize(request.len() + (1 << 20), b' ');
    // 150 clients each write all of their megabyte but its last byte, and hold: a server
    // that keeps what it reads holds 150 MiB until the refusals' deadline.
    request.pop();
    let pid = server.pid();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut peak = 0f64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_mib(pid));
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        })
    };
    let mut held = Vec::new();
    for _ in 0..150 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(&request).await.unwrap();
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    drop(held);
    assert!(
        peak - before < 64.0,
        "RSS {before:.0} → {peak:.0} MiB while refusing 150 one-megabyte bodies"
    );
}

/// Review finding: clients without a valid token reconnecting at capacity were paced for
/// everyone (one accept every 2 ms), so a new client waited seconds behind the flood. Now
/// only the retrying address is paced: another address is answered at once, and the flooding
/// one gets at most about 500 answers a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_flood_at_capacity_is_paced_for_its_address_only() {
    let _serial = BIG_ANSWERS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--max-connections", "64"]);
    let addr = server.addr.clone();
    let refused = format!(
        "GET /mcp HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\nauthorization: Bearer nonsense\r\n\r\n"
    );
    let seconds = 3;
    let stop = Instant::now() + Duration::from_secs(seconds);
    let attack: Vec<_> = (0..200)
        .map(|_| {
            let (addr, refused) = (addr.clone(), refused.clone());
            tokio::spawn(async move {
                let mut answered = 0u64;
                while Instant::now() < stop {
                    let Ok(mut stream) = TcpStream::connect(&addr).await else {
                        continue;
                    };
                    if stream.write_all(refused.as_bytes()).await.is_err() {
                        continue;
                    }
                    let read =
                        tokio::time::timeout(Duration::from_secs(2), read_response(&mut stream));
                    if let Ok(Some((status, _))) = read.await {
                        answered += u64::from(status == 401);
                        // Held open a moment, as a client keeps its connection.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                answered
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let health = format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    let mut waits = Vec::new();
    while Instant::now() + Duration::from_millis(300) < stop {
        let started = Instant::now();
        let (status, body) = exchange_from(
            [127, 0, 0, 2],
            &addr,
            health.as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        waits.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut answered = 0;
    for task in attack {
        answered += task.await.unwrap();
    }
    let per_second = answered / seconds;
    println!("refusal flood: {per_second} refusals a second; another address waited {waits:?}");
    // Paced for everyone (before): ~1,200 refusals a second, another address waited 80 ms
    // at the median and 1.1 s at worst; now ~40 and 6–17 ms (a rare 1 s is the kernel's SYN
    // retry when the flood fills the listen queue, not the server's pace).
    waits.sort();
    assert!(
        waits[waits.len() / 2] < Duration::from_millis(100),
        "another address waited {waits:?}"
    );
    assert!(
        per_second < 500,
        "{per_second} refusals a second churned through a full table"
    );
}

/// Review finding: under a flood of silent connections at capacity, a request without a
/// token whose body was still on its way (an OAuth exchange, a 401 to come) was closed to make
/// room, oldest first. Idle connections without standing now go before busy ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_flood_never_cuts_off_a_request_on_its_way() {
    let _serial = BIG_ANSWERS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--max-connections", "32"]);
    let addr = server.addr.clone();
    let seconds = 4;
    let stop = Instant::now() + Duration::from_secs(seconds);
    let flood: Vec<_> = (0..100)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move {
                while Instant::now() < stop {
                    if let Ok(mut stream) = TcpStream::connect(&addr).await {
                        // Silent until the server closes it.
                        let mut byte = [0u8; 1];
                        let _ = tokio::time::timeout(
                            Duration::from_millis(500),
                            stream.read(&mut byte),
                        )
                        .await;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let head = format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut answered = Vec::new();
    for _ in 0..4 {
        let outcome = async {
            let mut stream = connect_from([127, 0, 0, 2], &addr).await?;
            stream.write_all(head.as_bytes()).await.ok()?;
            // The body comes half a second after the headers.
            tokio::time::sleep(Duration::from_millis(500)).await;
            stream.write_all(body.as_bytes()).await.ok()?;
            read_response(&mut stream).await.map(|(status, _)| status)
        };
        answered.push(
            tokio::time::timeout(Duration::from_secs(5), outcome)
                .await
                .ok()
                .flatten(),
        );
    }
    for task in flood {
        task.abort();
    }
    assert!(
        answered.iter().all(|a| *a == Some(401)),
        "requests cut off mid-body: {answered:?}"
    );
}
