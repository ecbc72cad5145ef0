//! The gateway (SPEC §10) with real parts: the shipped binary in front of real upstreams —
//! `@modelcontextprotocol/server-filesystem` and `server-memory` over stdio and
//! `server-everything` over streamable HTTP (npm, pinned, installed into `target/npm` by
//! `.ci/run` or on first use), plus `tokenwarden-test-upstream`, a small rmcp server these
//! tests control. Clients: rmcp's over HTTP and stdio, and raw HTTP where exact bytes matter.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Server, Tools, Via, call, connect, connect_http, err, ok, tool_names, try_call};
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, ClientCapabilities, ClientConfig, ClientRequest,
    Implementation, ProtocolVersion,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};
use tempfile::TempDir;

/// The npm servers the tests pin; `.ci/run` installs the same.
const NPM_SERVERS: &[&str] = &[
    "@modelcontextprotocol/server-filesystem@2026.8.31",
    "@modelcontextprotocol/server-memory@2026.8.31",
    "@modelcontextprotocol/server-everything@2026.8.31",
];
const FIXTURE: &str = env!("CARGO_BIN_EXE_tokenwarden-test-upstream");

/// `target/npm/node_modules/@modelcontextprotocol`, installing the pinned servers if missing.
pub fn npm_servers() -> PathBuf {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let prefix = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/npm");
    let root = prefix.join("node_modules/@modelcontextprotocol");
    let present = ["server-filesystem", "server-memory", "server-everything"]
        .iter()
        .all(|p| root.join(p).join("dist/index.js").exists());
    if !present {
        let status = Command::new("npm")
            .arg("install")
            .arg("--prefix")
            .arg(&prefix)
            .args(["--no-audit", "--no-fund", "--silent"])
            .args(NPM_SERVERS)
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "npm install of the test upstreams failed: are node and npm installed?"
        );
    }
    root
}

fn npm_entry(server: &str, args: &[&str], env: Value) -> Value {
    let script = npm_servers().join(server).join("dist/index.js");
    let mut all = vec![script.display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    json!({"command": "node", "args": all, "env": env})
}

fn fixture_entry(log: &Path, extra: Value) -> Value {
    let mut entry = json!({"command": FIXTURE, "env": {"FIXTURE_LOG": log}});
    if let (Value::Object(entry), Value::Object(extra)) = (&mut entry, extra) {
        entry.extend(extra);
    }
    entry
}

/// A temporary directory with a data dir, a `files` dir holding `a.txt`, and an upstreams file.
struct Setup {
    dir: TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("files")).unwrap();
        std::fs::write(dir.path().join("files/a.txt"), "hello from a file\n").unwrap();
        Setup { dir }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn data(&self) -> PathBuf {
        self.path("data")
    }
    fn files(&self) -> String {
        self.path("files").display().to_string()
    }
    /// The three stdio upstreams most tests use: fs, mem and the test fixture.
    fn standard(&self) -> Value {
        json!({
            "fs": npm_entry("server-filesystem", &[&self.files()], json!({})),
            "mem": npm_entry("server-memory", &[], json!({"MEMORY_FILE_PATH": self.path("mem.jsonl")})),
            "test": fixture_entry(&self.path("test.log"), json!({})),
        })
    }
    fn write_upstreams(&self, servers: Value) -> PathBuf {
        let path = self.path("upstreams.json");
        std::fs::write(&path, json!({"mcpServers": servers}).to_string()).unwrap();
        path
    }
    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

fn start(setup: &Setup, servers: Value) -> Server {
    let file = setup.write_upstreams(servers);
    Server::start(&setup.data(), &["--upstreams", file.to_str().unwrap()])
}

/// Polls `list_buckets` until every named bucket has `status`.
async fn wait_for(client: &impl Tools, buckets: &[&str], status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = try_call(client, "list_buckets", json!({}))
            .await
            .expect("list_buckets")
            .structured_content
            .unwrap_or_default();
        let all = buckets.iter().all(|name| {
            listed["buckets"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|b| b["name"] == json!(name) && b["status"] == json!(status))
        });
        if all {
            return listed;
        }
        assert!(
            Instant::now() < deadline,
            "buckets {buckets:?} not {status}: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn text_of(result: &rmcp::model::CallToolResult) -> String {
    serde_json::to_value(&result.content).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_read_only_fs_token_reads_cannot_write_and_never_sees_memory() {
    read_only_fs_token(Via::Rmcp).await;
}

/// The same restricted tokens in plain requests, as the official SDKs send them: the
/// express lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_read_only_fs_token_reads_cannot_write_and_never_sees_memory_in_the_lane() {
    read_only_fs_token(Via::Lane).await;
}

/// A read-only token for bucket fs (bucket allowlist, read-only), its children narrowed by a
/// tool allowlist and by `deny_tools`, the parent's revocation, uses of gateway calls: each
/// refused call never reaches the upstream.
async fn read_only_fs_token(path: Via) {
    let setup = Setup::new();
    let mut server = start(&setup, setup.standard());
    let admin = connect(path, &server.url(), server.admin()).await;
    wait_for(&admin, &["fs", "mem", "test"], "connected").await;
    let all = tool_names(&admin).await;
    for name in [
        "fs__write_file",
        "fs__read_text_file",
        "mem__read_graph",
        "test__slow",
    ] {
        assert!(all.contains(&name.to_owned()), "admin sees {name}: {all:?}");
    }

    // A read-only token for bucket fs.
    let reader = ok(
        &admin,
        "create_token",
        json!({"name": "reader", "buckets": ["fs"], "read_only": true, "parent": "none"}),
    )
    .await;
    let reader_secret = reader["token"].as_str().unwrap().to_owned();
    let r = connect(path, &server.url(), &reader_secret).await;
    let names = tool_names(&r).await;
    assert!(
        names.contains(&"fs__read_text_file".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"fs__list_directory".to_owned()),
        "{names:?}"
    );
    assert!(!names.contains(&"fs__write_file".to_owned()), "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with("mem__") && !n.starts_with("test__")),
        "{names:?}"
    );
    let a_txt = setup.path("files/a.txt").display().to_string();
    let read = try_call(&r, "fs__read_text_file", json!({"path": a_txt}))
        .await
        .unwrap();
    assert_ne!(read.is_error, Some(true));
    assert!(text_of(&read).contains("hello from a file"), "{read:?}");

    let b_txt = setup.path("files/b.txt");
    let message = err(
        &r,
        "fs__write_file",
        json!({"path": b_txt, "content": "nope"}),
        "forbidden",
    )
    .await;
    assert!(message.contains("read-only"), "{message}");
    assert!(!b_txt.exists(), "a refused write reached the upstream");
    err(&r, "mem__read_graph", json!({}), "forbidden").await;

    // verify_token gives the same answers (read-only flags and buckets of gateway tools).
    for (tool, allowed) in [
        ("fs__read_text_file", true),
        ("fs__write_file", false),
        ("mem__read_graph", false),
    ] {
        let verdict = ok(
            &admin,
            "verify_token",
            json!({"token": reader_secret, "tool": tool}),
        )
        .await;
        assert_eq!(verdict["allowed"], json!(allowed), "{tool}: {verdict}");
    }
    // A gateway tool is checked in its own bucket, whatever bucket the request names.
    let verdict = ok(
        &admin,
        "verify_token",
        json!({"token": reader_secret, "tool": "mem__read_graph", "bucket": "fs"}),
    )
    .await;
    assert_eq!(verdict["allowed"], json!(false), "{verdict}");

    // list_buckets: only fs, counting what the reader may call.
    let buckets = ok(&r, "list_buckets", json!({})).await;
    let fs_tools = names.iter().filter(|n| n.starts_with("fs__")).count();
    assert_eq!(
        buckets,
        json!({"buckets": [{"name": "fs", "transport": "stdio", "status": "connected", "tools": fs_tools}]})
    );

    // Its child limited to fs__list_* sees only those. (A read-only token cannot mint: its
    // admin places the child under it.)
    let lister = ok(
        &admin,
        "create_token",
        json!({"name": "lister", "tools": ["fs__list_*"], "parent": reader["id"]}),
    )
    .await;
    assert_eq!(lister["read_only"], json!(true), "inherited");
    let c = connect(path, &server.url(), lister["token"].as_str().unwrap()).await;
    let child_names = tool_names(&c).await;
    assert!(!child_names.is_empty());
    assert!(
        child_names.iter().all(|n| n.starts_with("fs__list_")),
        "{child_names:?}"
    );
    let listed = try_call(&c, "fs__list_directory", json!({"path": setup.files()}))
        .await
        .unwrap();
    assert!(text_of(&listed).contains("a.txt"), "{listed:?}");
    err(
        &c,
        "fs__read_text_file",
        json!({"path": a_txt}),
        "forbidden",
    )
    .await;

    // deny_tools: a child that may not read media files.
    let no_media = ok(
        &admin,
        "create_token",
        json!({"name": "no-media", "deny_tools": ["fs__read_media_file"], "parent": reader["id"]}),
    )
    .await;
    assert_eq!(no_media["deny_tools"], json!(["fs__read_media_file"]));
    let d = connect(path, &server.url(), no_media["token"].as_str().unwrap()).await;
    let d_names = tool_names(&d).await;
    assert!(!d_names.contains(&"fs__read_media_file".to_owned()));
    assert!(d_names.contains(&"fs__read_text_file".to_owned()));
    let message = err(
        &d,
        "fs__read_media_file",
        json!({"path": a_txt}),
        "forbidden",
    )
    .await;
    assert!(message.contains("deny_tools"), "{message}");
    // A grandchild keeps the denial it inherits, whatever it asks for.
    let grandchild = ok(
        &admin,
        "create_token",
        json!({"name": "grandchild", "deny_tools": [], "parent": no_media["id"]}),
    )
    .await;
    assert_eq!(grandchild["deny_tools"], json!(["fs__read_media_file"]));

    // Revoking the parent cuts the child off on its next call.
    ok(&admin, "revoke_token", json!({"id": reader["id"]})).await;
    assert!(
        try_call(&c, "fs__list_directory", json!({"path": setup.files()}))
            .await
            .is_err(),
        "the revoked reader's child still reaches the upstream"
    );

    // Uses count gateway calls.
    let limited = ok(
        &admin,
        "create_token",
        json!({"name": "two", "buckets": ["test"], "max_uses": 2, "parent": "none"}),
    )
    .await;
    let l = connect(path, &server.url(), limited["token"].as_str().unwrap()).await;
    for _ in 0..2 {
        let (is_error, _) = call(&l, "test__read_note", json!({})).await;
        assert!(!is_error);
    }
    err(&l, "test__read_note", json!({}), "limit_exceeded").await;
    let calls = setup.log("test.log").matches("call read_note").count();
    assert_eq!(calls, 2, "a refused call reached the upstream");
    server.stop();
}

/// Starts `tokenwarden serve --stdio --upstreams FILE` as `token` with rmcp's client.
async fn connect_stdio_with(
    data: &Path,
    upstreams: &Path,
    token: &str,
) -> RunningService<RoleClient, ClientConfig> {
    let mut cmd = tokio::process::Command::new(common::BIN);
    cmd.arg("--data-dir")
        .arg(data)
        .args(["serve", "--stdio", "--upstreams"])
        .arg(upstreams)
        .env("TOKENWARDEN_TOKEN", token);
    let transport = TokioChildProcess::new(cmd).expect("spawn tokenwarden --stdio");
    client_config()
        .serve(transport)
        .await
        .expect("stdio client")
}

fn client_config() -> ClientConfig {
    let mut info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("gateway-tests", "1"),
    );
    info.protocol_version = ProtocolVersion::V_2025_11_25;
    info
}

fn cli(data: &Path, args: &[&str]) -> Value {
    let out = Command::new(common::BIN)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_token_sees_exactly_what_it_may_call_and_its_secret_stays_home() {
    let setup = Setup::new();
    let file = setup.write_upstreams(setup.standard());
    let data = setup.data();
    let issued = cli(
        &data,
        &[
            "token",
            "create",
            "--name",
            "agent",
            "--buckets",
            "fs,test",
            "--read-only",
            "--deny-tools",
            "test__crash",
            "--json",
        ],
    );
    let secret = issued["token"].as_str().unwrap().to_owned();
    assert_eq!(issued["deny_tools"], json!(["test__crash"]));
    let client = connect_stdio_with(&data, &file, &secret).await;
    wait_for(&client, &["fs", "test"], "connected").await;
    let names: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(
        names.contains(&"fs__read_text_file".to_owned()),
        "{names:?}"
    );
    assert!(names.contains(&"test__env".to_owned()), "{names:?}");
    for hidden in [
        "fs__write_file",
        "test__write_note",
        "test__crash",
        "create_token",
    ] {
        assert!(
            !names.contains(&hidden.to_owned()),
            "{hidden} visible: {names:?}"
        );
    }
    assert!(names.iter().all(|n| !n.starts_with("mem__")), "{names:?}");
    // Fitted names: 200 characters and "/"/spaces.
    // An altered name always carries the hash of the full name.
    let spaced: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("test__name_with_spaces_and_slashes_"))
        .collect();
    assert_eq!(spaced.len(), 1, "{names:?}");
    assert_eq!(
        spaced[0].len(),
        "test__name_with_spaces_and_slashes_".len() + 6,
        "{names:?}"
    );
    let long: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("test__long_"))
        .collect();
    assert_eq!(long.len(), 1);
    assert_eq!(long[0].len(), 64);
    let fitted = client
        .call_tool(CallToolRequestParams::new(long[0].clone()))
        .await
        .unwrap();
    assert!(text_of(&fitted).contains(&format!("called long_{}", "x".repeat(195))));

    let a_txt = setup.path("files/a.txt").display().to_string();
    let mut params = CallToolRequestParams::new("fs__read_text_file");
    params.arguments = json!({"path": a_txt}).as_object().cloned();
    let read = client.call_tool(params).await.unwrap();
    assert!(text_of(&read).contains("hello from a file"));
    let mut params = CallToolRequestParams::new("fs__write_file");
    params.arguments = json!({"path": setup.path("files/b.txt"), "content": "x"})
        .as_object()
        .cloned();
    let refused = client.call_tool(params).await.unwrap();
    assert_eq!(refused.is_error, Some(true));
    assert!(!setup.path("files/b.txt").exists());

    // No bearer goes upstream: the stdio child does not inherit TOKENWARDEN_TOKEN.
    let env = client
        .call_tool(CallToolRequestParams::new("test__env"))
        .await
        .unwrap()
        .structured_content
        .unwrap();
    assert!(
        !env["names"].to_string().contains("TOKENWARDEN_TOKEN"),
        "{env}"
    );
    assert!(
        !env["values"].to_string().contains(&secret),
        "the bearer reached the upstream"
    );
    client.cancel().await.unwrap();
}

/// Raw streamable HTTP, for exact bytes: progress tokens, SSE frames.
struct RawSession {
    url: String,
    token: String,
    session: String,
    http: reqwest::Client,
}

impl RawSession {
    async fn open(url: &str, token: &str) -> RawSession {
        let http = reqwest::Client::new();
        let response = http
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(common::initialize_body().to_string())
            .send()
            .await
            .unwrap();
        let session = response.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let _ = response.text().await;
        let raw = RawSession {
            url: url.to_owned(),
            token: token.to_owned(),
            session,
            http,
        };
        raw.post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        raw
    }

    /// POSTs one message and returns every JSON-RPC message of the answer.
    async fn post(&self, body: Value) -> Vec<Value> {
        let text = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &self.session)
            .header("mcp-protocol-version", "2025-11-25")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if let Ok(value) = serde_json::from_str::<Value>(&text) {
            return vec![value];
        }
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect()
    }
}

#[derive(Clone, Default)]
struct Recorder {
    list_changed: Arc<AtomicUsize>,
}

impl ClientHandler for Recorder {
    fn get_info(&self) -> ClientConfig {
        client_config()
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.list_changed.fetch_add(1, Ordering::SeqCst);
    }
}

/// Calls `tool` (a test upstream's `slow`, 0.5 s) with `token` as its progress token: at least
/// three progress notifications arrive under that token, then the result.
async fn slow_call_reports_progress_then_answers(server: &Server, tool: &str, token: &str) {
    let raw = RawSession::open(&server.url(), server.admin()).await;
    let answer = raw
        .post(
            json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
            "name": tool, "arguments": {"seconds": 0.5},
            "_meta": {"progressToken": token}}}),
        )
        .await;
    let progress: Vec<&Value> = answer
        .iter()
        .filter(|m| m["method"] == json!("notifications/progress"))
        .collect();
    assert!(progress.len() >= 3, "{answer:?}");
    assert!(
        progress
            .iter()
            .all(|p| p["params"]["progressToken"] == json!(token)),
        "{progress:?}"
    );
    let last = answer.last().unwrap();
    assert_eq!(last["id"], json!(7));
    assert!(
        last["result"]["content"].to_string().contains("slept"),
        "{last}"
    );
}

/// Live calls on rmcp's path (rmcp's client): progress under the client's token, the client's
/// cancellation, list changes reaching other sessions; then the calls every path must end
/// the same way ([`calls_end_as_they_should`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_calls_progress_cancel_timeout_revocation_crash_and_list_changes() {
    let setup = Setup::new();
    let servers = json!({
        "test": fixture_entry(&setup.path("test.log"), json!({})),
        "quick": fixture_entry(&setup.path("quick.log"), json!({"timeoutSeconds": 1})),
    });
    let mut server = start(&setup, servers);
    let admin = connect_http(&server.url(), server.admin()).await;
    wait_for(&admin, &["test", "quick"], "connected").await;
    // A second session that records the notifications it is sent.
    let recorder = Recorder::default();
    let config = StreamableHttpClientTransportConfig::with_uri(server.url())
        .auth_header(server.admin().to_owned());
    let watcher = recorder
        .clone()
        .serve(StreamableHttpClientTransport::from_config(config))
        .await
        .unwrap();

    // Progress reaches the client under its own token.
    slow_call_reports_progress_then_answers(&server, "test__slow", "client-token-42").await;

    // Client cancellation reaches the upstream call.
    let mut params = CallToolRequestParams::new("test__slow");
    params.arguments = json!({"seconds": 10}).as_object().cloned();
    let handle = admin
        .send_cancellable_request(
            ClientRequest::CallToolRequest(CallToolRequest::new(params)),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    handle.cancel(Some("test".into())).await.unwrap();
    eventually(
        || setup.log("test.log").contains("cancelled slow"),
        "client cancel forwarded",
    )
    .await;

    // Tool list changes reach connected clients.
    let seen = recorder.list_changed.load(Ordering::SeqCst);
    ok(&admin, "test__add_tool", json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while recorder.list_changed.load(Ordering::SeqCst) == seen {
        assert!(
            Instant::now() < deadline,
            "no notifications/tools/list_changed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let names: Vec<String> = watcher
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(names.contains(&"test__extra_1".to_owned()), "{names:?}");
    watcher.cancel().await.unwrap();
    admin.cancel().await.unwrap();

    calls_end_as_they_should(Via::Rmcp, &setup, &server).await;
    server.stop();
    let secret_lines = server.stderr().matches(server.admin()).count();
    assert_eq!(
        secret_lines, 1,
        "a secret reached the log beyond the first-start banner"
    );
}

/// The same live calls in plain requests, as the official SDKs send them: the express lane
/// answers them on the request's own task, and must end them as rmcp's path does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_calls_timeout_pause_rotation_and_crash_in_the_lane() {
    let setup = Setup::new();
    let servers = json!({
        "test": fixture_entry(&setup.path("test.log"), json!({})),
        "quick": fixture_entry(&setup.path("quick.log"), json!({"timeoutSeconds": 1})),
    });
    let mut server = start(&setup, servers);
    let admin = connect(Via::Lane, &server.url(), server.admin()).await;
    wait_for(&admin, &["test", "quick"], "connected").await;
    calls_end_as_they_should(Via::Lane, &setup, &server).await;
    server.stop();
    let secret_lines = server.stderr().matches(server.admin()).count();
    assert_eq!(
        secret_lines, 1,
        "a secret reached the log beyond the first-start banner"
    );
}

/// Starts `test__slow` (20 s) as a new token of bucket `test` through `path`, waits until the
/// upstream runs it, does `end` with the token's id, and returns the call's outcome and how
/// long after `end` it came; checks that the upstream call was cancelled.
async fn slow_call_ended_by<F: std::future::Future<Output = ()>>(
    what: &str,
    path: Via,
    setup: &Setup,
    server: &Server,
    admin: &impl Tools,
    end: impl FnOnce(Value) -> F,
) -> ((bool, Value), Duration) {
    let issued = ok(
        admin,
        "create_token",
        json!({"name": "worker", "buckets": ["test"], "parent": "none"}),
    )
    .await;
    let client = connect(path, &server.url(), issued["token"].as_str().unwrap()).await;
    let before = setup.log("test.log").matches("cancelled slow").count();
    let calls = setup.log("test.log").matches("call slow").count();
    let running = tokio::spawn(async move {
        let outcome = call(&client, "test__slow", json!({"seconds": 20})).await;
        (outcome, Instant::now())
    });
    eventually(
        || setup.log("test.log").matches("call slow").count() > calls,
        "the slow call reached the upstream",
    )
    .await;
    end(issued["id"].clone()).await;
    let ended_at = Instant::now();
    let (outcome, answered_at) = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap_or_else(|_| panic!("{path:?}: the call {what} was not answered within 5 s"))
        .unwrap();
    eventually(
        || setup.log("test.log").matches("cancelled slow").count() > before,
        &format!("{path:?}: the call {what} was cancelled upstream"),
    )
    .await;
    (outcome, answered_at.duration_since(ended_at))
}

/// Live calls through `path` (the server has the test upstreams `test` and `quick`, whose
/// timeout is 1 s): a timeout, a token paused mid-call and a secret rotated out mid-call
/// (each answered within a second and cancelled upstream), an upstream's own error result,
/// an upstream killed mid-call.
async fn calls_end_as_they_should(path: Via, setup: &Setup, server: &Server) {
    let admin = connect(path, &server.url(), server.admin()).await;
    // Timeout: answered with upstream_timeout, and the upstream call is cancelled.
    let started = Instant::now();
    let message = err(
        &admin,
        "quick__slow",
        json!({"seconds": 5}),
        "upstream_timeout",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(message.contains("quick__slow"), "{message}");
    eventually(
        || setup.log("quick.log").contains("cancelled slow"),
        "timed-out call cancelled upstream",
    )
    .await;

    // A token paused mid-call: cancelled upstream and answered within a second.
    let ((is_error, value), after) =
        slow_call_ended_by("paused", path, setup, server, &admin, |id| {
            let admin = &admin;
            async move {
                ok(admin, "pause_token", json!({"id": id})).await;
            }
        })
        .await;
    assert!(is_error, "{value}");
    assert_eq!(value["error"]["code"], json!("forbidden"), "{value}");
    assert!(
        value["error"]["message"]
            .as_str()
            .unwrap()
            .contains("paused"),
        "{value}"
    );
    assert!(
        after < Duration::from_millis(1000),
        "answered {after:?} after the pause"
    );

    // A call belongs to the secret that made it: rotating that secret out (grace 0) ends the
    // call within a second, though the token itself stays active.
    let ((is_error, value), after) =
        slow_call_ended_by("rotated out", path, setup, server, &admin, |id| {
            let admin = &admin;
            async move {
                ok(admin, "rotate_token", json!({"id": id, "grace_seconds": 0})).await;
            }
        })
        .await;
    assert!(is_error, "{value}");
    assert_eq!(value["error"]["code"], json!("forbidden"), "{value}");
    assert!(
        after < Duration::from_millis(1000),
        "answered {after:?} after the rotation"
    );

    // An upstream's own error result passes through unchanged.
    let failed = try_call(&admin, "test__fail", Value::Null).await.unwrap();
    assert_eq!(failed.is_error, Some(true));
    assert_eq!(
        failed.structured_content,
        Some(json!({"upstream_error": "this tool always fails"}))
    );

    // Killed mid-call: a clear error for that call; other buckets keep working; it comes back.
    let crashed = call(&admin, "test__crash", json!({})).await;
    assert_eq!(
        crashed.1["error"]["code"],
        json!("upstream_unavailable"),
        "{crashed:?}"
    );
    let note = try_call(&admin, "quick__read_note", json!({}))
        .await
        .unwrap();
    assert_ne!(note.is_error, Some(true), "{note:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (is_error, value) = call(&admin, "test__read_note", json!({})).await;
        if !is_error {
            break;
        }
        assert_eq!(
            value["error"]["code"],
            json!("upstream_unavailable"),
            "{value}"
        );
        assert!(Instant::now() < deadline, "test upstream did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admin.close().await;
}

async fn eventually(check: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn bad_upstreams_files_refuse_to_start_in_one_line() {
    let setup = Setup::new();
    let cases = [
        (json!({"Bad Key": {"command": "x"}}), "Bad Key"),
        (
            json!({"web": {"type": "sse", "url": "http://x"}}),
            "unknown type",
        ),
        // (An unset variable is not a mistake in the file: only its bucket is unavailable,
        // tests/newcomer.rs. A malformed one is.)
        (
            json!({"fs": {"command": "x", "args": ["${TW_TEST_UNSET_VAR"]}}),
            "unterminated ${",
        ),
    ];
    for (servers, needle) in cases {
        let file = setup.write_upstreams(servers);
        let out = Command::new(common::BIN)
            .arg("--data-dir")
            .arg(setup.data())
            .args(["serve", "--http", "127.0.0.1:0", "--upstreams"])
            .arg(&file)
            .env_remove("TW_TEST_UNSET_VAR")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(needle), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    let out = Command::new(common::BIN)
        .arg("--data-dir")
        .arg(setup.data())
        .args(["serve", "--http", "127.0.0.1:0", "--upstreams"])
        .arg(setup.path("missing.json"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("missing.json"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_upstreams_affect_only_their_bucket() {
    let setup = Setup::new();
    let servers = json!({
        "missing": {"command": setup.path("no-such-command")},
        "exits": {"command": "false"},
        "hangs": {"command": FIXTURE, "args": ["--hang"], "timeoutSeconds": 1},
        "garbage": {"command": FIXTURE, "args": ["--garbage"], "timeoutSeconds": 1},
        "good": fixture_entry(&setup.path("good.log"), json!({})),
    });
    let mut server = start(&setup, servers);
    let admin = connect_http(&server.url(), server.admin()).await;
    let listed = wait_for(
        &admin,
        &["missing", "exits", "hangs", "garbage"],
        "unavailable",
    )
    .await;
    for bucket in listed["buckets"].as_array().unwrap() {
        if bucket["status"] == json!("unavailable") {
            assert!(
                bucket["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{bucket}"
            );
        }
    }
    wait_for(&admin, &["good"], "connected").await;
    let (is_error, _) = call(&admin, "good__read_note", json!({})).await;
    assert!(!is_error);
    // Arguments the upstream rejects: a protocol error for that call only.
    assert!(
        try_call(&admin, "good__no_such_tool_upstream", json!({}))
            .await
            .is_err()
    );
    let (is_error, _) = call(&admin, "whoami", json!({})).await;
    assert!(!is_error);
    server.stop();
}

/// Runs server-everything in its streamable HTTP mode on a free port.
pub struct Everything {
    child: std::process::Child,
    pub url: String,
}

impl Everything {
    pub fn start() -> Everything {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = npm_servers().join("server-everything/dist/index.js");
        let mut child = Command::new("node")
            .arg(script)
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start server-everything");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on port") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("server-everything did not start");
        Everything {
            child,
            url: format!("http://127.0.0.1:{port}/mcp"),
        }
    }
}

impl Drop for Everything {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamable_http_upstream_passes_results_and_progress_through() {
    let setup = Setup::new();
    let everything = Everything::start();
    // A fixture over HTTP too, to see which headers reach an upstream.
    let mut fixture = Command::new(FIXTURE)
        .args(["--http", "127.0.0.1:0"])
        .env("FIXTURE_LOG", setup.path("http.log"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(fixture.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let fixture_addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let servers = json!({
        "everything": {"type": "streamable-http", "url": everything.url},
        "web": {"type": "http", "url": format!("http://{fixture_addr}/mcp"),
                "headers": {"X-Api-Key": "${TW_TEST_UPSTREAM_KEY}"}},
    });
    let file = setup.write_upstreams(servers);
    let mut server = Server::start_with_env(
        &setup.data(),
        &["--upstreams", file.to_str().unwrap()],
        &[("TW_TEST_UPSTREAM_KEY", "key-for-the-upstream")],
    );
    let admin = connect_http(&server.url(), server.admin()).await;
    wait_for(&admin, &["everything", "web"], "connected").await;

    // The same result as calling server-everything directly.
    let through = try_call(&admin, "everything__echo", json!({"message": "hi there"}))
        .await
        .unwrap();
    let direct_client = ()
        .serve(StreamableHttpClientTransport::from_uri(
            everything.url.clone(),
        ))
        .await
        .unwrap();
    let mut params = CallToolRequestParams::new("echo");
    params.arguments = json!({"message": "hi there"}).as_object().cloned();
    let direct = direct_client.call_tool(params).await.unwrap();
    assert_eq!(
        serde_json::to_value(&through.content).unwrap(),
        serde_json::to_value(&direct.content).unwrap()
    );
    assert_eq!(through.is_error, direct.is_error);
    assert_eq!(through.structured_content, direct.structured_content);

    // Progress of server-everything's long operation, under the client's token.
    let raw = RawSession::open(&server.url(), server.admin()).await;
    let answer = raw
        .post(
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "everything__trigger-long-running-operation",
            "arguments": {"duration": 0.6, "steps": 3},
            "_meta": {"progressToken": 9001}}}),
        )
        .await;
    let tokens: Vec<&Value> = answer
        .iter()
        .filter(|m| m["method"] == json!("notifications/progress"))
        .map(|m| &m["params"]["progressToken"])
        .collect();
    assert_eq!(
        tokens,
        [&json!(9001), &json!(9001), &json!(9001)],
        "{answer:?}"
    );

    // Only the configured credentials reach an HTTP upstream, never the caller's bearer.
    let (is_error, _) = call(&admin, "web__read_note", json!({})).await;
    assert!(!is_error);
    let log = setup.log("http.log");
    assert!(log.contains("x-api-key: key-for-the-upstream"), "{log}");
    assert!(
        !log.contains(server.admin()),
        "the bearer reached the upstream: {log}"
    );
    assert!(!log.to_ascii_lowercase().contains("authorization"), "{log}");
    direct_client.cancel().await.unwrap();
    server.stop();
    let _ = fixture.kill();
    let _ = fixture.wait();
}

/// `tokenwarden --json upstreams --upstreams FILE`: its output and one object per line.
fn upstreams_json(file: &Path) -> (std::process::Output, Vec<Value>) {
    let out = Command::new(common::BIN)
        .args(["--json", "upstreams", "--upstreams"])
        .arg(file)
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (out, lines)
}

#[test]
fn upstreams_command_lists_exposed_tools_and_fails_on_an_unavailable_one() {
    let setup = Setup::new();
    let good = json!({
        "test": fixture_entry(&setup.path("t.log"), json!({"readOnlyTools": ["read_*", "env"]})),
        "fs": npm_entry("server-filesystem", &[&setup.files()], json!({})),
    });
    let file = setup.write_upstreams(good.clone());
    let out = Command::new(common::BIN)
        .args(["upstreams", "--upstreams"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("test  connected (stdio, 9 tools)"),
        "{stdout}"
    );
    let flag = |name: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(|l| l.trim_end().ends_with("read-only"))
    };
    // readOnlyTools replaces the annotations: slow is annotated read-only but not listed.
    assert_eq!(flag("test__read_note"), Some(true), "{stdout}");
    assert_eq!(flag("test__env"), Some(true), "{stdout}");
    assert_eq!(flag("test__slow"), Some(false), "{stdout}");
    assert_eq!(flag("fs__read_text_file"), Some(true), "{stdout}");
    assert_eq!(flag("fs__write_file"), Some(false), "{stdout}");

    let mut servers = good;
    servers["gone"] = json!({"command": setup.path("no-such-command")});
    let file = setup.write_upstreams(servers);
    let (out, lines) = upstreams_json(&file);
    assert!(!out.status.success());
    assert_eq!(lines.len(), 3);
    let gone = lines.iter().find(|l| l["bucket"] == json!("gone")).unwrap();
    assert_eq!(gone["status"], json!("unavailable"));
    assert!(
        gone["error"].as_str().unwrap().contains("no-such-command"),
        "{gone}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gone"), "{stderr}");
}

/// An upstream tool without a `readOnlyHint` (here without any annotation) is not read-only:
/// `tokenwarden upstreams` shows it so, and a read-only token is refused it on both paths
/// without the call reaching the upstream, while a token that may write calls it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unannotated_upstream_tool_is_not_read_only() {
    let setup = Setup::new();
    let mut entry = fixture_entry(&setup.path("t.log"), json!({}));
    entry["env"]["FIXTURE_UNANNOTATED"] = json!("1");
    let servers = json!({"test": entry});
    let file = setup.write_upstreams(servers.clone());
    let (out, lines) = upstreams_json(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tools = &lines[0]["tools"];
    let flag = |name: &str| {
        tools
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == json!(name))
            .map(|t| t["read_only"].clone())
    };
    assert_eq!(flag("test__unannotated"), Some(json!(false)), "{tools}");
    assert_eq!(flag("test__read_note"), Some(json!(true)), "{tools}");

    let server = start(&setup, servers);
    let admin = connect_http(&server.url(), server.admin()).await;
    wait_for(&admin, &["test"], "connected").await;
    let reader = ok(
        &admin,
        "create_token",
        json!({"name": "reader", "buckets": ["test"], "read_only": true, "parent": "none"}),
    )
    .await;
    let secret = reader["token"].as_str().unwrap();
    let verdict = ok(
        &admin,
        "verify_token",
        json!({"token": secret, "tool": "test__unannotated"}),
    )
    .await;
    assert_eq!(verdict["allowed"], json!(false), "{verdict}");
    for path in [Via::Rmcp, Via::Lane] {
        let r = connect(path, &server.url(), secret).await;
        let names = tool_names(&r).await;
        assert!(names.contains(&"test__read_note".to_owned()), "{names:?}");
        assert!(
            !names.contains(&"test__unannotated".to_owned()),
            "{names:?}"
        );
        let message = err(&r, "test__unannotated", json!({}), "forbidden").await;
        assert!(message.contains("read-only"), "{path:?}: {message}");
        ok(&r, "test__read_note", json!({})).await;
    }
    assert!(
        !setup.log("t.log").contains("call unannotated"),
        "a refused call reached the upstream"
    );
    ok(&admin, "test__unannotated", json!({})).await;
    assert!(setup.log("t.log").contains("call unannotated"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_upstreams_file_and_keeps_it_when_invalid() {
    let setup = Setup::new();
    let servers = json!({
        "keep": fixture_entry(&setup.path("keep.log"), json!({})),
        "drop": fixture_entry(&setup.path("drop.log"), json!({})),
        "change": fixture_entry(&setup.path("change.log"), json!({})),
    });
    let mut server = start(&setup, servers);
    let admin = connect_http(&server.url(), server.admin()).await;
    wait_for(&admin, &["keep", "drop", "change"], "connected").await;
    let recorder = Recorder::default();
    let config = StreamableHttpClientTransportConfig::with_uri(server.url())
        .auth_header(server.admin().to_owned());
    let watcher = recorder
        .clone()
        .serve(StreamableHttpClientTransport::from_config(config))
        .await
        .unwrap();
    ok(&admin, "keep__write_note", json!({"text": "still here"})).await;
    ok(
        &admin,
        "change__write_note",
        json!({"text": "forgotten on restart"}),
    )
    .await;

    let hup = |pid: u32| {
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status();
        assert!(status.unwrap().success());
    };
    setup.write_upstreams(json!({
        "keep": fixture_entry(&setup.path("keep.log"), json!({})),
        "change": fixture_entry(&setup.path("change.log"), json!({"timeoutSeconds": 30})),
        "added": fixture_entry(&setup.path("added.log"), json!({})),
    }));
    hup(server.pid());
    wait_for(&admin, &["keep", "change", "added"], "connected").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let names = tool_names(&admin).await;
        if !names.iter().any(|n| n.starts_with("drop__")) {
            assert!(names.contains(&"added__read_note".to_owned()), "{names:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "drop__ tools still listed: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let buckets = ok(&admin, "list_buckets", json!({})).await;
    assert!(!buckets.to_string().contains("\"drop\""), "{buckets}");
    // Unchanged upstreams keep running (their state survives); changed ones restart.
    let kept = try_call(&admin, "keep__read_note", json!({}))
        .await
        .unwrap();
    assert!(text_of(&kept).contains("still here"), "{kept:?}");
    let changed = try_call(&admin, "change__read_note", json!({}))
        .await
        .unwrap();
    assert!(!text_of(&changed).contains("forgotten"), "{changed:?}");
    assert!(
        recorder.list_changed.load(Ordering::SeqCst) > 0,
        "clients were not told"
    );

    // An invalid file is logged; the running configuration stays.
    std::fs::write(setup.path("upstreams.json"), "{ not json").unwrap();
    hup(server.pid());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.stderr().contains("reload refused") {
        assert!(
            Instant::now() < deadline,
            "no log line for the refused reload"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for(&admin, &["keep", "change", "added"], "connected").await;
    watcher.cancel().await.unwrap();
    server.stop();
}

/// The Python SDK (installed into `target/py-mcp` like tests/python_sdk.rs does) as the client.
#[test]
fn the_python_sdk_reads_through_the_gateway_but_cannot_write() {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/py-mcp");
    let python = venv.join("bin/python");
    let has_sdk = Command::new(&python)
        .args(["-c", "import mcp, httpx2"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_sdk {
        assert!(
            Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .unwrap()
                .success()
        );
        let installed = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "mcp==2.3.0"])
            .status();
        assert!(
            installed.is_ok_and(|s| s.success()),
            "pip install mcp failed"
        );
    }
    let setup = Setup::new();
    let mut server = start(&setup, setup.standard());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin = connect_http(&server.url(), server.admin()).await;
        wait_for(&admin, &["fs", "mem"], "connected").await;
    });
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/gateway_flow.py");
    let output = Command::new(python)
        .arg(script)
        .arg(server.url())
        .arg(server.admin())
        .arg(setup.path("files/a.txt"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("python sdk gateway flow: ok"), "{stdout}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_clients_are_told_when_the_tool_list_changes() {
    let setup = Setup::new();
    let file =
        setup.write_upstreams(json!({"test": fixture_entry(&setup.path("t.log"), json!({}))}));
    let mut cmd = tokio::process::Command::new(common::BIN);
    cmd.arg("--data-dir")
        .arg(setup.data())
        .args(["serve", "--stdio", "--upstreams"])
        .arg(&file)
        .env_remove("TOKENWARDEN_TOKEN");
    let recorder = Recorder::default();
    let owner = recorder
        .clone()
        .serve(TokioChildProcess::new(cmd).unwrap())
        .await
        .unwrap();
    wait_for(&owner, &["test"], "connected").await;
    let seen = recorder.list_changed.load(Ordering::SeqCst);
    owner
        .call_tool(CallToolRequestParams::new("test__add_tool"))
        .await
        .unwrap();
    eventually(
        || recorder.list_changed.load(Ordering::SeqCst) > seen,
        "notifications/tools/list_changed over stdio",
    )
    .await;
    let names: Vec<String> = owner
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(names.contains(&"test__extra_1".to_owned()), "{names:?}");
    owner.cancel().await.unwrap();
}

/// The test upstream over streamable HTTP on `port`; returns once it listens.
fn http_fixture(port: u16, log: &Path) -> std::process::Child {
    http_fixture_with(port, log, &[])
}

fn http_fixture_with(port: u16, log: &Path, env: &[(&str, &str)]) -> std::process::Child {
    let mut child = Command::new(FIXTURE)
        .args(["--http", &format!("127.0.0.1:{port}")])
        .env("FIXTURE_LOG", log)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("listening on"), "{first}");
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_http_upstream_affects_only_its_bucket_and_comes_back() {
    let setup = Setup::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut upstream = http_fixture(port, &setup.path("web.log"));
    let servers = json!({
        "web": {"type": "http", "url": format!("http://127.0.0.1:{port}/mcp")},
        "local": fixture_entry(&setup.path("local.log"), json!({})),
    });
    let mut server = start(&setup, servers);
    let admin = connect_http(&server.url(), server.admin()).await;
    wait_for(&admin, &["web", "local"], "connected").await;
    ok(&admin, "web__write_note", json!({"text": "before"})).await;

    upstream.kill().unwrap();
    upstream.wait().unwrap();
    let (is_error, value) = call(&admin, "web__read_note", json!({})).await;
    assert!(is_error, "{value}");
    assert_eq!(
        value["error"]["code"],
        json!("upstream_unavailable"),
        "{value}"
    );
    let (is_error, _) = call(&admin, "local__read_note", json!({})).await;
    assert!(!is_error, "the other bucket stopped working");
    wait_for(&admin, &["web"], "unavailable").await;

    let mut upstream = http_fixture(port, &setup.path("web.log"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (is_error, value) = call(&admin, "web__read_note", json!({})).await;
        if !is_error {
            break;
        }
        assert_eq!(
            value["error"]["code"],
            json!("upstream_unavailable"),
            "{value}"
        );
        assert!(
            Instant::now() < deadline,
            "the HTTP upstream did not come back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop();
    let _ = upstream.kill();
    let _ = upstream.wait();
}

/// An HTTP upstream that opens sessions (protocols before 2026-07-28, like most servers
/// today) is called on the direct path: the call goes out from the calling task on rmcp's
/// session (the upstream sees tokenwarden's own request ids), with progress under the
/// client's token, timeouts and client cancellations forwarded, and a new session after the
/// upstream restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_http_upstreams_are_called_directly_with_progress_cancel_and_timeout() {
    let setup = Setup::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = setup.path("web.log");
    let older = [("FIXTURE_MAX_PROTOCOL", "2025-11-25")];
    let mut upstream = http_fixture_with(port, &log, &older);
    let url = format!("http://127.0.0.1:{port}/mcp");
    let servers = json!({
        "web": {"type": "http", "url": url},
        "quick": {"type": "http", "url": url, "timeoutSeconds": 1},
    });
    let mut server = start(&setup, servers);
    let admin = connect_http(&server.url(), server.admin()).await;
    wait_for(&admin, &["web", "quick"], "connected").await;
    let direct_ids = || {
        let text = setup.log("web.log");
        let ids: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("id "))
            .map(str::to_owned)
            .collect();
        ids
    };

    ok(&admin, "web__write_note", json!({"text": "direct"})).await;
    let read = try_call(&admin, "web__read_note", json!({})).await.unwrap();
    assert!(text_of(&read).contains("\"direct\""), "{}", text_of(&read));
    let ids = direct_ids();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(
        ids.iter().all(|id| id.starts_with("tokenwarden-")),
        "calls did not take the direct path: {ids:?}"
    );

    // Progress under the client's own token, then the result.
    slow_call_reports_progress_then_answers(&server, "web__slow", "client-token-7").await;

    // Timeout: answered in time, and the upstream call is cancelled.
    let started = Instant::now();
    err(
        &admin,
        "quick__slow",
        json!({"seconds": 5}),
        "upstream_timeout",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    eventually(
        || setup.log("web.log").matches("cancelled slow").count() == 1,
        "timed-out call cancelled upstream",
    )
    .await;

    // The client's cancellation reaches the upstream call.
    let mut params = CallToolRequestParams::new("web__slow");
    params.arguments = json!({"seconds": 10}).as_object().cloned();
    let handle = admin
        .send_cancellable_request(
            ClientRequest::CallToolRequest(CallToolRequest::new(params)),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    handle.cancel(Some("test".into())).await.unwrap();
    eventually(
        || setup.log("web.log").matches("cancelled slow").count() == 2,
        "client cancel forwarded",
    )
    .await;

    // A tool-list change announced inside a direct call's answer refreshes the catalogue.
    ok(&admin, "web__add_tool", json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let names: Vec<String> = admin
            .list_all_tools()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        if names.iter().any(|n| n == "web__extra_1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new tool never appeared: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A restarted upstream has forgotten the session: calls carry on over a new one.
    upstream.kill().unwrap();
    upstream.wait().unwrap();
    let mut upstream = http_fixture_with(port, &log, &older);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (is_error, value) = call(&admin, "web__read_note", json!({})).await;
        if !is_error {
            break;
        }
        assert_eq!(
            value["error"]["code"],
            json!("upstream_unavailable"),
            "{value}"
        );
        assert!(
            Instant::now() < deadline,
            "no new session with the restarted upstream"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = direct_ids().len();
    ok(&admin, "web__read_note", json!({})).await;
    let ids = direct_ids();
    assert_eq!(ids.len(), before + 1, "{ids:?}");
    assert!(ids.last().unwrap().starts_with("tokenwarden-"), "{ids:?}");
    // The direct path sends no bearer either.
    let log = setup.log("web.log");
    assert!(
        !log.contains(server.admin()),
        "the bearer reached the upstream"
    );
    assert!(!log.to_ascii_lowercase().contains("authorization"), "{log}");
    server.stop();
    let _ = upstream.kill();
    let _ = upstream.wait();
}

/// Forwarded calls to an HTTP upstream reuse kept-alive connections: rmcp's default client
/// opened a new TCP connection for every request (a connect per call, and an accept for the
/// upstream). The test upstream logs the address each call came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_upstream_calls_reuse_kept_alive_connections() {
    // rmcp's path (the fixture speaks 2026-07-28) and the direct path (capped at 2025-11-25).
    for env in [&[][..], &[("FIXTURE_MAX_PROTOCOL", "2025-11-25")][..]] {
        calls_reuse_kept_alive_connections(env).await;
    }
}

async fn calls_reuse_kept_alive_connections(env: &[(&str, &str)]) {
    let setup = Setup::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = setup.path("web.log");
    let mut upstream = http_fixture_with(port, &log, env);
    let servers = json!({"web": {"type": "http", "url": format!("http://127.0.0.1:{port}/mcp")}});
    let mut server = start(&setup, servers);
    let admin = connect_http(&server.url(), server.admin()).await;
    wait_for(&admin, &["web"], "connected").await;
    for _ in 0..10 {
        ok(&admin, "web__read_note", json!({})).await;
    }
    server.stop();
    let _ = upstream.kill();
    let _ = upstream.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let peers: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("peer "))
        .collect();
    let calls = text.lines().filter(|l| *l == "call read_note").count();
    assert_eq!(calls, 10, "{text}");
    // One connection, or a few if the machine stalled past the idle timeout; one per call
    // without the pool.
    assert!(
        peers.len() <= 3,
        "10 calls came over {} connections ({env:?})",
        peers.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_never_show_expanded_config_values() {
    const VALUE: &str = "s3cr3tVALUEdoNotLeak";
    let setup = Setup::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut upstream = http_fixture(port, &setup.path("web.log"));
    let servers = json!({
        "dead": {"type": "http", "url": "http://127.0.0.1:1/mcp?api_key=${SECRET_VAR}",
                 "headers": {"X-Api-Key": "${SECRET_VAR}"}},
        "web": {"type": "http",
                "url": format!("http://127.0.0.1:{port}/mcp?api_key=${{SECRET_VAR}}")},
    });
    let file = setup.write_upstreams(servers);
    let mut server = Server::start_with_env(
        &setup.data(),
        &["--upstreams", file.to_str().unwrap()],
        &[("SECRET_VAR", VALUE)],
    );
    let admin = connect_http(&server.url(), server.admin()).await;
    let listed = wait_for(&admin, &["dead"], "unavailable").await;
    let listed = listed.to_string();
    assert!(
        !listed.contains(VALUE) && !listed.contains("api_key"),
        "{listed}"
    );
    wait_for(&admin, &["web"], "connected").await;
    upstream.kill().unwrap();
    upstream.wait().unwrap();
    // A call as the connection breaks, then once the bucket is known to be unavailable.
    let message = err(&admin, "web__read_note", json!({}), "upstream_unavailable").await;
    assert!(!message.contains(VALUE), "{message}");
    let listed = wait_for(&admin, &["web"], "unavailable").await.to_string();
    assert!(!listed.contains(VALUE), "{listed}");
    let message = err(&admin, "web__read_note", json!({}), "upstream_unavailable").await;
    assert!(!message.contains(VALUE), "{message}");
    server.stop();
    assert!(!server.stderr().contains(VALUE), "{}", server.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_and_endless_stderr_lines_do_not_stall_an_upstream() {
    let setup = Setup::new();
    let mut noisy = fixture_entry(&setup.path("noisy.log"), json!({}));
    noisy["args"] = json!(["--noisy-stderr"]);
    let mut server = start(&setup, json!({"noisy": noisy}));
    let admin = connect_http(&server.url(), server.admin()).await;
    wait_for(&admin, &["noisy"], "connected").await;
    for _ in 0..3 {
        ok(&admin, "noisy__write_note", json!({"text": "still served"})).await;
    }
    server.stop();
}

/// The deny list of a record, sorted.
fn denials(record: &Value) -> Vec<String> {
    let mut list: Vec<String> = record["deny_tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    list.sort();
    list
}

#[test]
fn deny_tools_on_the_command_line_add_up_along_the_chain() {
    let setup = Setup::new();
    let data = setup.data();
    let parent = cli(&data, &["token", "create", "--name", "p", "--json"]);
    let id = parent["id"].as_str().unwrap();
    let scoped = cli(
        &data,
        &[
            "token",
            "scope",
            id,
            "--add-deny-tools",
            "fs__write_*,mem__*",
            "--json",
        ],
    );
    assert_eq!(denials(&scoped), ["fs__write_*", "mem__*"]);
    let child = cli(
        &data,
        &[
            "token",
            "create",
            "--name",
            "c",
            "--parent",
            id,
            "--deny-tools",
            "fs__move_file",
            "--json",
        ],
    );
    assert_eq!(denials(&child), ["fs__move_file", "fs__write_*", "mem__*"]);
    // A narrower denial is absorbed by a broader one.
    let scoped = cli(
        &data,
        &[
            "token",
            "scope",
            id,
            "--add-deny-tools",
            "fs__write_file,fs__edit_file",
            "--json",
        ],
    );
    assert_eq!(denials(&scoped), ["fs__edit_file", "fs__write_*", "mem__*"]);
    // Adding to the parent's denials reaches the child at once; the child keeps its own.
    let child = cli(
        &data,
        &["token", "get", child["id"].as_str().unwrap(), "--json"],
    );
    assert_eq!(
        denials(&child),
        ["fs__edit_file", "fs__move_file", "fs__write_*", "mem__*"]
    );
    // A child cannot be scoped to drop what its parent denies.
    let out = Command::new(common::BIN)
        .arg("--data-dir")
        .arg(&data)
        .args([
            "token",
            "scope",
            child["id"].as_str().unwrap(),
            "--deny-tools",
            "fs__move_file",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("deny_tools"), "{stderr}");
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_upstreams_and_their_grandchildren_stop_with_the_server() {
    let setup = Setup::new();
    let pid_file = setup.path("grandchild.pid");
    // Like npx: a launcher that leaves a grandchild behind, then becomes the server.
    let script = format!(
        "sleep 300 & echo $! > '{}'; exec '{}'",
        pid_file.display(),
        FIXTURE
    );
    let servers = json!({"spawner": {"command": "sh", "args": ["-c", script]}});
    let mut server = start(&setup, servers);
    let admin = connect_http(&server.url(), server.admin()).await;
    wait_for(&admin, &["spawner"], "connected").await;
    let grandchild: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(grandchild));
    server.stop();
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(grandchild) {
        assert!(
            Instant::now() < deadline,
            "the upstream's grandchild outlived the server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain call (one the express lane answers, without rmcp's session machinery) is cancelled
/// by the client's `notifications/cancelled`, sent on another connection of the same session:
/// its reply ends at once without a response (as rmcp does for a cancelled request), and the
/// upstream call is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_call_is_cancelled_by_the_clients_notification() {
    use common::raw_http::Conn;
    let setup = Setup::new();
    let servers = json!({"test": fixture_entry(&setup.path("test.log"), json!({}))});
    let server = start(&setup, servers);
    let admin = connect_http(&server.url(), server.admin()).await;
    wait_for(&admin, &["test"], "connected").await;

    let mut conn = Conn::open(&server.addr, server.admin()).await;
    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
    let session = conn.post(init, "").await.session.expect("a session id");
    let headers = format!("mcp-session-id: {session}\r\nmcp-protocol-version: 2025-11-25\r\n");
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    assert_eq!(conn.post(initialized, &headers).await.status, 202);
    // The session's first request goes rmcp's way; the next plain one takes the lane.
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    assert_eq!(conn.post(list, &headers).await.status, 200);
    let call = r#"{"jsonrpc":"2.0","id":"slow-1","method":"tools/call","params":{"name":"test__slow","arguments":{"seconds":20}}}"#;
    conn.send(call, &headers).await;
    eventually(
        || setup.log("test.log").lines().any(|l| l.starts_with("id ")),
        "the call reached the upstream",
    )
    .await;
    let mut other = Conn::open(&server.addr, server.admin()).await;
    let cancel = r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"slow-1","reason":"test"}}"#;
    assert_eq!(other.post(cancel, &headers).await.status, 202);
    let reply = tokio::time::timeout(Duration::from_secs(5), conn.read_reply())
        .await
        .expect("the cancelled call was answered at once");
    let body = String::from_utf8_lossy(&reply.body).into_owned();
    assert_eq!(reply.status, 200);
    assert!(
        !body.contains("\"result\"") && !body.contains("\"error\""),
        "{body}"
    );
    eventually(
        || setup.log("test.log").contains("cancelled slow"),
        "the upstream call was cancelled",
    )
    .await;
    // The cancelled call's id is free again: the lane answers a new call with it.
    let again = r#"{"jsonrpc":"2.0","id":"slow-1","method":"tools/call","params":{"name":"test__read_note","arguments":{}}}"#;
    let reply = conn.post(again, &headers).await;
    let body = String::from_utf8_lossy(&reply.body).into_owned();
    assert_eq!(reply.status, 200);
    assert!(
        body.starts_with("data: {") && !body.contains("\nid:"),
        "not the lane's reply (the call's id is still taken): {body}"
    );
    assert!(body.contains(r#""id":"slow-1","result""#), "{body}");
}

/// `DELETE /mcp` of a session ends the calls the express lane runs for it: the running call's
/// reply ends at once without a response, and the upstream call is cancelled (rmcp's own
/// session teardown knows nothing of the lane's calls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_session_cancels_its_running_lane_call() {
    use common::PlainClient;
    let setup = Setup::new();
    let servers = json!({"test": fixture_entry(&setup.path("test.log"), json!({}))});
    let server = start(&setup, servers);
    let plain = PlainClient::connect(&server.addr, server.admin()).await;
    wait_for(&plain, &["test"], "connected").await;

    let mut conn = plain.open_conn().await;
    let id = plain.next_id();
    let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "test__slow", "arguments": {"seconds": 20}}});
    conn.send(&call.to_string(), plain.headers()).await;
    eventually(
        || setup.log("test.log").contains("call slow"),
        "the call reached the upstream",
    )
    .await;
    let mut other = plain.open_conn().await;
    let delete = other.delete_request(plain.headers());
    other.send_raw(delete.as_bytes()).await;
    assert_eq!(other.read_reply().await.status, 204);
    let reply = tokio::time::timeout(Duration::from_secs(5), conn.read_reply())
        .await
        .expect("the call of the deleted session was answered at once");
    assert_eq!(
        common::plain::answer_of(&reply, id),
        Err("no response".to_owned())
    );
    eventually(
        || setup.log("test.log").contains("cancelled slow"),
        "the upstream call was cancelled",
    )
    .await;
}

/// An upstream cannot make the server hold an unbounded catalogue: past 10,000 tools its
/// bucket is unavailable, with the reason, and the other buckets are unaffected.
#[test]
fn an_upstream_listing_too_many_tools_is_refused_alone() {
    let setup = Setup::new();
    let mut flood = fixture_entry(&setup.path("f.log"), json!({}));
    flood["env"]["FIXTURE_EXTRA_TOOLS"] = json!("10001");
    let file = setup.write_upstreams(json!({
        "flood": flood,
        "test": fixture_entry(&setup.path("t.log"), json!({})),
    }));
    let (out, lines) = upstreams_json(&file);
    assert!(!out.status.success());
    let flood = lines
        .iter()
        .find(|l| l["bucket"] == json!("flood"))
        .unwrap();
    assert_eq!(flood["status"], json!("unavailable"), "{flood}");
    assert!(
        flood["error"]
            .as_str()
            .unwrap()
            .contains("more than 10000 tools"),
        "{flood}"
    );
    let test = lines.iter().find(|l| l["bucket"] == json!("test")).unwrap();
    assert_eq!(test["status"], json!("connected"), "{test}");
}

/// A client that opens its session's stream again gets the session's notifications on the new
/// stream: the old one is closed first (while it lived, rmcp gave a new `GET` of the session a
/// stream nothing was ever sent on, and the client lost its notifications without knowing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_stream_of_a_session_carries_its_notifications() {
    use common::raw_http::Conn;
    let setup = Setup::new();
    let server = start(
        &setup,
        json!({"test": fixture_entry(&setup.path("t.log"), json!({}))}),
    );
    let admin = connect_http(&server.url(), server.admin()).await;
    wait_for(&admin, &["test"], "connected").await;

    let mut conn = Conn::open(&server.addr, server.admin()).await;
    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
    let session = conn.post(init, "").await.session.expect("a session id");
    let headers = format!("mcp-session-id: {session}\r\nmcp-protocol-version: 2025-11-25\r\n");
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    assert_eq!(conn.post(initialized, &headers).await.status, 202);
    let open_stream = || {
        reqwest::Client::new()
            .get(server.url())
            .header("accept", "text/event-stream")
            .header("authorization", common::bearer(server.admin()))
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-11-25")
            .send()
    };
    let first = open_stream().await.unwrap();
    assert_eq!(first.status(), 200);
    let mut second = open_stream().await.unwrap();
    assert_eq!(second.status(), 200);
    let reader = tokio::spawn(async move {
        let mut seen = String::new();
        while let Ok(Some(chunk)) = second.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("notifications/tools/list_changed") {
                return true;
            }
        }
        false
    });
    ok(&admin, "test__add_tool", json!({})).await;
    let notified = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .unwrap_or(Ok(false))
        .unwrap();
    assert!(
        notified,
        "the reopened stream got no notifications/tools/list_changed"
    );
    drop(first);
}
