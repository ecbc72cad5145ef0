//! Traces through the shipped binary (SPEC §14): with `--otlp-endpoint`, the spans of each
//! `tools/call` and REST call (request → decision → upstream call) reach an OTLP/HTTP receiver
//! (a small one in this test, decoding the JSON it is sent); a client's `traceparent` is
//! the request span's parent; HTTP upstreams are told the upstream span's context, on the
//! direct path and on rmcp's; no span carries a secret or an argument.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::raw_http::{Conn, messages};
use common::{BIN, Server, connect_http, ok};
use serde_json::{Value, json};

const FIXTURE: &str = env!("CARGO_BIN_EXE_tokenwarden-test-upstream");
const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
/// Written as an argument; must appear in no span.
const MARKER: &str = "argument-marker-7f3a";

/// A stand-in OTLP/HTTP collector: every JSON body POSTed to `/v1/traces`, answered 200.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<String>>>,
}

async fn receiver() -> Receiver {
    use axum::http::{HeaderMap, StatusCode};
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&bodies);
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let kept = Arc::clone(&kept);
            async move {
                let json = headers
                    .get("content-type")
                    .is_some_and(|v| v.as_bytes() == b"application/json");
                if !json {
                    return (StatusCode::UNSUPPORTED_MEDIA_TYPE, String::new());
                }
                kept.lock().unwrap().push(body);
                (StatusCode::OK, "{}".to_owned())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, bodies }
}

impl Receiver {
    /// Every span received so far, each checked for the resource it came with.
    fn spans(&self) -> Vec<Value> {
        let mut spans = Vec::new();
        for body in self.bodies.lock().unwrap().iter() {
            let request: Value = serde_json::from_str(body).expect("OTLP JSON");
            for resource in request["resourceSpans"].as_array().unwrap() {
                let service = &resource["resource"]["attributes"][0];
                assert_eq!(service["key"], "service.name", "{resource}");
                assert_eq!(service["value"]["stringValue"], "tokenwarden");
                for scope in resource["scopeSpans"].as_array().unwrap() {
                    spans.extend(scope["spans"].as_array().unwrap().iter().cloned());
                }
            }
        }
        spans
    }

    /// The spans of `trace`, once `count` of them have come (within 15 s).
    async fn trace(&self, trace: &str, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let spans: Vec<Value> = self
                .spans()
                .into_iter()
                .filter(|s| s["traceId"] == trace)
                .collect();
            if spans.len() >= count {
                assert_eq!(spans.len(), count, "{spans:#?}");
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "trace {trace}: {} of {count} spans came: {spans:#?}",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A span's attribute, as JSON (`{"stringValue": …}`), or null.
fn attribute(span: &Value, key: &str) -> Value {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| a["value"].clone())
        .unwrap_or(Value::Null)
}

fn text(span: &Value, key: &str) -> String {
    attribute(span, key)["stringValue"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn named<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no span {name}: {spans:#?}"))
}

/// A client span's context: (trace id, span id, the `traceparent` header line).
fn client_span(n: u8) -> (String, String, String) {
    let trace = format!("{n:02x}").repeat(16);
    let span = format!("c{n:x}").repeat(8)[..16].to_owned();
    let header = format!("traceparent: 00-{trace}-{span}-01\r\n");
    (trace, span, header)
}

/// The test upstream over HTTP, speaking protocols up to 2025-11-25 (sessions: calls take the
/// direct path unless the server is told of a proxy).
struct Upstream {
    child: std::process::Child,
    url: String,
    log: PathBuf,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn upstream(dir: &Path, name: &str) -> Upstream {
    use std::io::BufRead;
    let log = dir.join(format!("{name}.log"));
    let mut command = Command::new(FIXTURE);
    command
        .args(["--http", "127.0.0.1:0"])
        .env("FIXTURE_LOG", &log)
        .env("FIXTURE_MAX_PROTOCOL", "2025-11-25")
        .stdout(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first.trim().strip_prefix("listening on ").unwrap();
    Upstream {
        url: format!("http://{addr}/mcp"),
        child,
        log,
    }
}

impl Upstream {
    /// The values of `what` (`header traceparent`, `meta traceparent`) its log holds.
    fn logged(&self, what: &str) -> Vec<String> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter_map(|l| l.strip_prefix(&format!("{what}: ")))
            .map(str::to_owned)
            .collect()
    }
}

/// Until every bucket is connected with its tools listed.
async fn wait_connected(admin: &common::Client, buckets: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = ok(admin, "list_buckets", json!({})).await;
        let connected = listed["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["status"] == "connected" && b["tools"].as_u64() > Some(0))
            .count();
        if connected == buckets.len() {
            return;
        }
        assert!(Instant::now() < deadline, "never connected: {listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens an MCP session on `conn`; returns the headers its requests carry.
async fn open_session(conn: &mut Conn) -> String {
    let reply = conn.post(INIT, "").await;
    assert_eq!(reply.status, 200);
    let session = reply.session.expect("a session id");
    let headers = format!("mcp-session-id: {session}\r\nmcp-protocol-version: 2025-11-25\r\n");
    assert_eq!(conn.post(INITIALIZED, &headers).await.status, 202);
    headers
}

/// A `tools/call` on the session; `meta` makes it go rmcp's way (the express lane takes only
/// plain requests). Returns the result.
async fn call(
    conn: &mut Conn,
    headers: &str,
    tool: &str,
    args: Value,
    meta: Option<Value>,
) -> Value {
    let mut params = json!({"name": tool, "arguments": args});
    if let Some(meta) = meta {
        params["_meta"] = meta;
    }
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params});
    let reply = conn.post(&body.to_string(), headers).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let message = messages(&reply)
        .into_iter()
        .find(|m| m.get("id").is_some())
        .expect("an answer");
    assert!(message.get("result").is_some(), "{message}");
    message["result"].clone()
}

/// Checks the span tree of a forwarded call made under the client span `(trace, parent)`, and
/// that the upstream was told the upstream span; returns the request span.
async fn forwarded_call_tree(
    receiver: &Receiver,
    (trace, parent): (&str, &str),
    (tool, bucket, token): (&str, &str, &str),
    upstream: &Upstream,
) -> Value {
    let spans = receiver.trace(trace, 3).await;
    let request = named(&spans, &format!("tools/call {tool}"));
    let decision = named(&spans, "decision");
    let call = named(&spans, &format!("upstream {bucket}"));
    // The request span is the client span's child, the others the request's.
    assert_eq!(request["parentSpanId"], parent, "{request:#}");
    assert_eq!(request["kind"], 2, "a server span");
    assert_eq!(request["flags"], 0x301, "sampled, with a remote parent");
    assert_eq!(decision["parentSpanId"], request["spanId"]);
    assert_eq!(decision["kind"], 1);
    assert_eq!(call["parentSpanId"], request["spanId"]);
    assert_eq!(call["kind"], 3, "a client span");
    for span in [request, call] {
        assert_eq!(text(span, "tokenwarden.bucket"), bucket, "{span:#}");
        assert_eq!(text(span, "tokenwarden.outcome"), "ok", "{span:#}");
        assert_eq!(span["status"]["code"], 0, "{span:#}");
    }
    assert_eq!(text(request, "tokenwarden.token_id"), token);
    assert_eq!(text(request, "tokenwarden.tool"), tool);
    assert_eq!(text(decision, "tokenwarden.decision"), "allowed");
    assert_eq!(text(decision, "tokenwarden.outcome"), "ok");
    for span in [request, decision, call] {
        let (start, end) = (&span["startTimeUnixNano"], &span["endTimeUnixNano"]);
        let (start, end): (u64, u64) = (
            start.as_str().unwrap().parse().unwrap(),
            end.as_str().unwrap().parse().unwrap(),
        );
        assert!(
            start > 1_700_000_000_000_000_000 && end >= start,
            "{span:#}"
        );
    }
    // The upstream was told the upstream span, as the header and as `_meta.traceparent`.
    let told = format!("00-{trace}-{}-01", call["spanId"].as_str().unwrap());
    for what in ["header traceparent", "meta traceparent"] {
        let seen = upstream.logged(what);
        assert!(seen.contains(&told), "{what}: {seen:?}, expected {told}");
    }
    request.clone()
}

/// A client's trace runs through the request, the decision and the upstream call into the
/// HTTP upstream, whichever lane the request takes and whichever path the call takes; the REST
/// API and own tools are traced too; an invalid `traceparent` starts a new trace; no span
/// carries a secret or an argument.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_s_trace_runs_through_the_decision_and_the_upstream_call_into_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = receiver().await;
    let direct = upstream(dir.path(), "direct");
    let file = dir.path().join("upstreams.json");
    let servers = json!({"mcpServers": {"direct": {"type": "http", "url": direct.url}}});
    std::fs::write(&file, servers.to_string()).unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--upstreams",
            file.to_str().unwrap(),
            "--otlp-endpoint",
            &receiver.url,
        ],
    );
    let admin = connect_http(&server.url(), server.admin()).await;
    wait_connected(&admin, &["direct"]).await;
    let agent = ok(&admin, "create_token", json!({"name": "agent"})).await;
    let (agent_id, agent_secret) = (
        agent["id"].as_str().unwrap(),
        agent["token"].as_str().unwrap(),
    );
    let mut conn = Conn::open(&server.addr, agent_secret).await;
    let session = open_session(&mut conn).await;

    // The express lane, the direct path (a 2025 upstream), with an argument.
    let (t1, p1, h1) = client_span(1);
    let args = json!({"text": MARKER});
    let result = call(
        &mut conn,
        &format!("{session}{h1}"),
        "direct__write_note",
        args,
        None,
    )
    .await;
    assert_eq!(result["content"][0]["text"], "written", "{result}");
    // rmcp's lane (a progress token), the direct path.
    let (t2, p2, h2) = client_span(2);
    let meta = Some(json!({"progressToken": "p2"}));
    call(
        &mut conn,
        &format!("{session}{h2}"),
        "direct__read_note",
        json!({}),
        meta,
    )
    .await;
    // No header: `_meta.traceparent` (SEP-414) is the parent.
    let (t4, p4, _) = client_span(4);
    let meta = Some(json!({"traceparent": format!("00-{t4}-{p4}-01")}));
    call(&mut conn, &session, "direct__read_note", json!({}), meta).await;

    let checks = [
        ((&t1, &p1), "direct__write_note", "direct", &direct),
        ((&t2, &p2), "direct__read_note", "direct", &direct),
        ((&t4, &p4), "direct__read_note", "direct", &direct),
    ];
    for ((trace, parent), tool, bucket, upstream) in checks {
        let names = (tool, bucket, agent_id);
        let request = forwarded_call_tree(&receiver, (trace, parent), names, upstream).await;
        assert_eq!(text(&request, "mcp.method.name"), "tools/call");
    }

    // Own tools: the request and its decision.
    let (t5, p5, h5) = client_span(5);
    call(
        &mut conn,
        &format!("{session}{h5}"),
        "whoami",
        json!({}),
        None,
    )
    .await;
    let spans = receiver.trace(&t5, 2).await;
    let request = named(&spans, "tools/call whoami");
    assert_eq!(request["parentSpanId"], p5.as_str());
    assert_eq!(named(&spans, "decision")["parentSpanId"], request["spanId"]);
    assert_eq!(text(request, "tokenwarden.outcome"), "ok");
    assert_eq!(attribute(request, "tokenwarden.bucket"), Value::Null);

    // The REST API: the endpoint's method and route name the span.
    let (t6, p6, h6) = client_span(6);
    let rest = conn.rest_request("GET", "/v1/whoami", "").replacen(
        "\r\n\r\n",
        &format!("\r\n{h6}\r\n"),
        1,
    );
    conn.send_raw(rest.as_bytes()).await;
    assert_eq!(conn.read_reply().await.status, 200);
    let spans = receiver.trace(&t6, 2).await;
    let request = named(&spans, "GET /v1/whoami");
    assert_eq!(request["parentSpanId"], p6.as_str());
    assert_eq!(text(request, "http.route"), "/v1/whoami");
    assert_eq!(text(request, "tokenwarden.tool"), "whoami");
    assert_eq!(text(request, "tokenwarden.via"), "rest");
    assert_eq!(named(&spans, "decision")["parentSpanId"], request["spanId"]);

    // An invalid traceparent (upper-case hex) is ignored: a new trace, no parent.
    let (t7, p7, _) = client_span(0xab);
    let invalid = format!("traceparent: 00-{}-{}-01\r\n", t7.to_uppercase(), p7);
    let stranger = ok(&admin, "create_token", json!({"name": "stranger"})).await;
    let mut other = Conn::open(&server.addr, stranger["token"].as_str().unwrap()).await;
    let other_session = open_session(&mut other).await;
    call(
        &mut other,
        &format!("{other_session}{invalid}"),
        "whoami",
        json!({}),
        None,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let request = loop {
        let found = receiver
            .spans()
            .into_iter()
            .find(|s| text(s, "tokenwarden.token_id") == stranger["id"].as_str().unwrap());
        if let Some(found) = found {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "the stranger's call was not traced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let new_trace = request["traceId"].as_str().unwrap();
    assert_eq!(new_trace.len(), 32);
    assert_ne!(new_trace.to_lowercase(), t7);
    assert!(request.get("parentSpanId").is_none(), "{request:#}");
    assert_eq!(request["flags"], 0x101, "a local root");

    // Ids, names and codes only: no secret, no argument.
    let everything = receiver.bodies.lock().unwrap().join("\n");
    for secret in [
        server.admin(),
        agent_secret,
        stranger["token"].as_str().unwrap(),
    ] {
        assert!(!everything.contains(secret), "a secret in a span");
    }
    assert!(
        !everything.contains("mcp_"),
        "a secret-shaped value in a span"
    );
    assert!(!everything.contains(MARKER), "an argument in a span");
}

/// A forwarded call that goes through rmcp's client (as it does for an upstream reached
/// through a proxy, or a session the upstream forgot): the upstream is told the trace too, as
/// the header (`Recorder`) and as `_meta.traceparent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_rmcp_s_path_tells_the_upstream_too() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = receiver().await;
    let web = upstream(dir.path(), "web");
    let file = dir.path().join("upstreams.json");
    let servers = json!({"mcpServers": {"web": {"type": "http", "url": web.url}}});
    std::fs::write(&file, servers.to_string()).unwrap();
    // A proxy in the environment keeps calls off the direct path (which would bypass it); the
    // loopback upstream and receiver are exempt from it.
    let server = Server::start_with_env(
        &dir.path().join("data"),
        &[
            "--upstreams",
            file.to_str().unwrap(),
            "--otlp-endpoint",
            &receiver.url,
        ],
        &[
            ("HTTP_PROXY", "http://127.0.0.1:9"),
            ("NO_PROXY", "127.0.0.1"),
        ],
    );
    let admin = connect_http(&server.url(), server.admin()).await;
    wait_connected(&admin, &["web"]).await;
    let agent = ok(&admin, "create_token", json!({"name": "agent"})).await;
    let mut conn = Conn::open(&server.addr, agent["token"].as_str().unwrap()).await;
    let session = open_session(&mut conn).await;
    let (trace, parent, header) = client_span(3);
    call(
        &mut conn,
        &format!("{session}{header}"),
        "web__read_note",
        json!({}),
        None,
    )
    .await;
    let names = ("web__read_note", "web", agent["id"].as_str().unwrap());
    forwarded_call_tree(&receiver, (&trace, &parent), names, &web).await;
    // rmcp's client numbers its requests itself; the direct path's ids are `tokenwarden-N`.
    let log = std::fs::read_to_string(&web.log).unwrap();
    assert!(
        log.contains("call read_note") && !log.contains("id tokenwarden-"),
        "{log}"
    );
}

/// A call the decision refuses: its request and decision spans have an error status with the
/// refusal's code, and there is no upstream span (nothing went upstream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_call_is_an_error_span_and_goes_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = receiver().await;
    let direct = upstream(dir.path(), "direct");
    let file = dir.path().join("upstreams.json");
    let servers = json!({"mcpServers": {"direct": {"type": "http", "url": direct.url}}});
    std::fs::write(&file, servers.to_string()).unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--upstreams",
            file.to_str().unwrap(),
            "--otlp-endpoint",
            &format!("{}/v1/traces", receiver.url),
        ],
    );
    let admin = connect_http(&server.url(), server.admin()).await;
    wait_connected(&admin, &["direct"]).await;
    let narrow = ok(
        &admin,
        "create_token",
        json!({"name": "narrow", "buckets": []}),
    )
    .await;
    let mut conn = Conn::open(&server.addr, narrow["token"].as_str().unwrap()).await;
    let session = open_session(&mut conn).await;

    let (trace, parent, header) = client_span(9);
    let result = call(
        &mut conn,
        &format!("{session}{header}"),
        "direct__read_note",
        json!({}),
        None,
    )
    .await;
    assert_eq!(result["isError"], true, "{result}");
    assert_eq!(result["structuredContent"]["error"]["code"], "forbidden");
    let spans = receiver.trace(&trace, 2).await;
    let request = named(&spans, "tools/call direct__read_note");
    let decision = named(&spans, "decision");
    assert_eq!(request["parentSpanId"], parent.as_str());
    assert_eq!(decision["parentSpanId"], request["spanId"]);
    for span in [request, decision] {
        assert_eq!(span["status"]["code"], 2, "an error: {span:#}");
        assert_eq!(span["status"]["message"], "forbidden");
        assert_eq!(text(span, "tokenwarden.outcome"), "forbidden");
        assert_eq!(text(span, "error.type"), "forbidden");
    }
    assert_eq!(text(decision, "tokenwarden.decision"), "refused");
    assert!(direct.logged("header traceparent").is_empty());
}

/// A collector that cannot be reached costs one warning a minute, never a call; an `https://`
/// endpoint, which this build cannot reach, is refused at start in one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_costs_a_warning_not_a_call() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let server = Server::start(&dir.path().join("data"), &["--otlp-endpoint", &endpoint]);
    let admin = connect_http(&server.url(), server.admin()).await;
    let started = Instant::now();
    for _ in 0..20 {
        ok(&admin, "whoami", json!({})).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    let warnings = server.stderr().matches("trace export").count();
    assert_eq!(warnings, 1, "{}", server.stderr());

    let refused = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path().join("other"))
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--otlp-endpoint",
            "https://collector:4318",
        ])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--otlp-endpoint") && stderr.contains("plain http"),
        "{stderr}"
    );
}
