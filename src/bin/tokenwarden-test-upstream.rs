//! A small MCP server for tokenwarden's gateway tests (not part of the product): an upstream
//! whose behaviour the tests control. Serves stdio by default, or streamable HTTP with
//! `--http ADDR` (printing `listening on ADDR`). Tools:
//!
//! - `read_note` (read-only) and `write_note`: a note kept in memory;
//! - `slow` (read-only): sleeps `seconds`, reporting progress every 100 ms; honours cancellation;
//! - `add_tool`: adds a tool `extra_N` and sends `notifications/tools/list_changed`;
//! - `fail`: returns its own error result (`isError: true`, structured content);
//! - `env`: the names of its environment variables and every request header it saw (HTTP);
//! - `crash`: exits the process at once.
//!
//! With `$FIXTURE_HOSTILE` set, two more (for the availability tests):
//! - `flood_progress`: sends `count` progress notifications as fast as it can, then answers;
//! - `big`: answers with a text of `bytes` bytes.
//!
//! With `$FIXTURE_UNANNOTATED` set, one more: `unannotated`, a tool without annotations (no
//! `readOnlyHint`), which a read-only token must not be able to call.
//!
//! `--noisy-stderr` first writes invalid UTF-8 and a 100 KB line without newline to stderr.
//!
//! With `$FIXTURE_LOG` set, appends one line per event (`call NAME`, `id ID` (the call's
//! JSON-RPC id), `meta traceparent: VALUE` (the call's `_meta.traceparent`), `cancelled NAME`,
//! `header NAME: VALUE`, and over HTTP `peer ADDR`, the address the call came from) so tests
//! can see what reached the upstream. `$FIXTURE_MAX_PROTOCOL`
//! caps the protocol revisions it speaks.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ProtocolVersion, ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};

fn log(line: &str) {
    if let Ok(path) = std::env::var("FIXTURE_LOG")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

fn schema(properties: Value) -> Arc<JsonObject> {
    let Value::Object(map) = json!({"type": "object", "properties": properties}) else {
        unreachable!()
    };
    Arc::new(map)
}

#[derive(Clone, Default)]
struct Fixture {
    note: Arc<Mutex<String>>,
    extra: Arc<Mutex<u32>>,
}

impl Fixture {
    fn tools(&self) -> Vec<Tool> {
        let ro = || ToolAnnotations::new().read_only(true);
        let rw = || ToolAnnotations::new().read_only(false);
        let mut tools = vec![
            Tool::new("read_note", "Read the note.", schema(json!({}))).with_annotations(ro()),
            Tool::new(
                "write_note",
                "Replace the note.",
                schema(json!({"text": {"type": "string"}})),
            )
            .with_annotations(rw()),
            Tool::new(
                "slow",
                "Sleep, reporting progress.",
                schema(json!({"seconds": {"type": "number"}})),
            )
            .with_annotations(ro()),
            Tool::new("add_tool", "Add a tool.", schema(json!({}))).with_annotations(rw()),
            Tool::new("fail", "Return an error result.", schema(json!({}))).with_annotations(ro()),
            Tool::new(
                "env",
                "Show environment names and headers.",
                schema(json!({})),
            )
            .with_annotations(ro()),
            Tool::new("crash", "Exit at once.", schema(json!({}))).with_annotations(ro()),
            Tool::new(
                "name with spaces/and slashes",
                "A tool whose name MCP clients would refuse.",
                schema(json!({})),
            )
            .with_annotations(ro()),
            Tool::new(
                format!("long_{}", "x".repeat(195)),
                "A 200-character name.",
                schema(json!({})),
            )
            .with_annotations(ro()),
        ];
        if std::env::var_os("FIXTURE_HOSTILE").is_some() {
            tools.push(
                Tool::new(
                    "flood_progress",
                    "Send many progress notifications.",
                    schema(json!({"count": {"type": "integer"}})),
                )
                .with_annotations(ro()),
            );
            tools.push(
                Tool::new(
                    "big",
                    "Answer with a large text.",
                    schema(json!({"bytes": {"type": "integer"}})),
                )
                .with_annotations(ro()),
            );
        }
        if std::env::var_os("FIXTURE_UNANNOTATED").is_some() {
            tools.push(Tool::new(
                "unannotated",
                "A tool that says nothing about its effects.",
                schema(json!({})),
            ));
        }
        for n in 1..=*self.extra.lock().unwrap() {
            tools.push(
                Tool::new(
                    format!("extra_{n}"),
                    "Added at run time.",
                    schema(json!({})),
                )
                .with_annotations(ro()),
            );
        }
        // `$FIXTURE_EXTRA_TOOLS=N`: N more tools, for the bound on an upstream's tool list.
        let extra: usize = std::env::var("FIXTURE_EXTRA_TOOLS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        tools.extend(
            (0..extra).map(|i| Tool::new(format!("extra_{i}"), "Filler.", schema(json!({})))),
        );
        tools
    }
}

fn text(value: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(value.into())])
}

impl ServerHandler for Fixture {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("test-upstream", "1"))
    }

    /// Every known revision, or those up to `$FIXTURE_MAX_PROTOCOL` (e.g. `2025-11-25`, so
    /// that a client opens a session with `initialize`, as older servers make it do).
    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        let max = std::env::var("FIXTURE_MAX_PROTOCOL")
            .ok()
            .and_then(|max| serde_json::from_value::<ProtocolVersion>(json!(max)).ok());
        match max {
            Some(max) => std::borrow::Cow::Borrowed(ProtocolVersion::known_up_to(&max)),
            None => std::borrow::Cow::Borrowed(ProtocolVersion::KNOWN_VERSIONS),
        }
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        let args = request.arguments.unwrap_or_default();
        log(&format!("call {name}"));
        log(&format!("id {}", context.id));
        if let Some(traceparent) = context.meta.get_traceparent() {
            log(&format!("meta traceparent: {traceparent}"));
        }
        if let Some(parts) = context.extensions.get::<axum::http::request::Parts>() {
            if let Some(axum::extract::ConnectInfo(peer)) =
                parts
                    .extensions
                    .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            {
                log(&format!("peer {peer}"));
            }
            for (header, value) in &parts.headers {
                log(&format!(
                    "header {header}: {}",
                    value.to_str().unwrap_or("?")
                ));
            }
        }
        let result = match name.as_str() {
            "read_note" => text(self.note.lock().unwrap().clone()),
            "write_note" => {
                let new = args.get("text").and_then(Value::as_str).unwrap_or_default();
                *self.note.lock().unwrap() = new.to_owned();
                text("written")
            }
            "slow" => {
                let seconds = args.get("seconds").and_then(Value::as_f64).unwrap_or(1.0);
                let steps = (seconds * 10.0).ceil().max(1.0) as u32;
                let token = context.meta.get_progress_token();
                for step in 1..=steps {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = context.ct.cancelled() => {
                            log("cancelled slow");
                            return Err(ErrorData::internal_error("cancelled", None));
                        }
                    }
                    if let Some(token) = &token {
                        let mut progress =
                            ProgressNotificationParam::new(token.clone(), step as f64);
                        progress.total = Some(steps as f64);
                        let _ = context.peer.notify_progress(progress).await;
                    }
                }
                text(format!("slept {seconds}s"))
            }
            "flood_progress" => {
                let count = args.get("count").and_then(Value::as_u64).unwrap_or(1000);
                if let Some(token) = context.meta.get_progress_token() {
                    for step in 1..=count {
                        let progress = ProgressNotificationParam::new(token.clone(), step as f64)
                            .with_message("x".repeat(64));
                        if context.peer.notify_progress(progress).await.is_err() {
                            break;
                        }
                    }
                }
                log("flooded");
                text(format!("sent {count}"))
            }
            "big" => {
                let bytes = args.get("bytes").and_then(Value::as_u64).unwrap_or(1) as usize;
                text("b".repeat(bytes))
            }
            "add_tool" => {
                *self.extra.lock().unwrap() += 1;
                let _ = context.peer.notify_tool_list_changed().await;
                text("added")
            }
            "fail" => CallToolResult::structured_error(
                json!({"upstream_error": "this tool always fails"}),
            ),
            "env" => {
                let names: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                let values: Vec<String> = std::env::vars().map(|(_, v)| v).collect();
                CallToolResult::structured(json!({"names": names, "values": values}))
            }
            "crash" => {
                log("crash");
                std::process::exit(3);
            }
            other if self.tools().iter().any(|t| t.name == other) => {
                text(format!("called {other}"))
            }
            other => {
                return Err(ErrorData::invalid_params(format!("no tool {other}"), None));
            }
        };
        Ok(result.into())
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--http") {
        use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
        use rmcp::transport::streamable_http_server::{
            StreamableHttpServerConfig, StreamableHttpService,
        };
        let addr = args.get(i + 1).cloned().unwrap_or("127.0.0.1:0".into());
        let fixture = Fixture::default();
        let service = StreamableHttpService::new(
            move || Ok(fixture.clone()),
            Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default(),
        );
        let app = axum::Router::new().nest_service("/mcp", service);
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
        println!("listening on {}", listener.local_addr().expect("addr"));
        // As a real server should (and tokenwarden does): replies written in several pieces
        // (an event stream) must not wait on Nagle's algorithm and the client's delayed ACK.
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        // The caller's address goes into each call's log: the gateway's tests count the
        // connections its calls came over.
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let _ = axum::serve(listener, app).await;
        return;
    }
    if args.iter().any(|a| a == "--hang") {
        // Never answers initialize.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return;
    }
    if args.iter().any(|a| a == "--garbage") {
        println!("this is not JSON-RPC");
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return;
    }
    if args.iter().any(|a| a == "--noisy-stderr") {
        // Invalid UTF-8, then a 100 KB line with no newline: the gateway must keep draining.
        let mut err = std::io::stderr();
        let _ = err.write_all(b"\xff not UTF-8\n");
        let _ = err.write_all(&vec![b'x'; 100_000]);
        let _ = err.flush();
    }
    eprintln!("test upstream ready on stdio");
    let running = Fixture::default()
        .serve(rmcp::transport::stdio())
        .await
        .expect("serve stdio");
    let _ = running.waiting().await;
}
