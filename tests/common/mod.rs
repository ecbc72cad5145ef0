//! Test harness: runs the real `tokenwarden` binary against a sled database in a temporary
//! directory, and connects real MCP clients over stdio and streamable HTTP: rmcp's (whose
//! requests all carry `_meta.progressToken`, so rmcp's own session machinery answers them) and
//! a plain-request client (`plain.rs`, requests as the official SDKs send them, which the
//! server's express lane answers). [`Via`] and [`connect`] run one scenario through either.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
    ProtocolVersion,
};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Map, Value, json};

pub mod installs;
pub mod oauth;
pub mod plain;
pub mod raw_http;

pub use plain::PlainClient;

pub const BIN: &str = env!("CARGO_BIN_EXE_tokenwarden");

pub type Client = RunningService<RoleClient, ClientConfig>;

/// A running `tokenwarden serve --http` child process.
pub struct Server {
    child: Child,
    pub addr: String,
    pub admin_token: Option<String>,
    stderr: Arc<Mutex<String>>,
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts the server on a free loopback port and waits until it listens.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(data_dir, extra, &[])
    }

    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(["serve", "--http", "127.0.0.1:0"])
            .args(extra)
            .env_remove("TOKENWARDEN_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Server::from_command(cmd, data_dir)
    }

    /// Starts the server under `umask` (e.g. "000"), set by a shell that then execs the
    /// binary, so the server's pid is the child's.
    pub fn start_with_umask(data_dir: &Path, umask: &str, extra: &[&str]) -> Server {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
            .arg(BIN)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["serve", "--http", "127.0.0.1:0"])
            .args(extra)
            .env_remove("TOKENWARDEN_TOKEN");
        Server::from_command(cmd, data_dir)
    }

    /// Starts a prepared command that runs `serve --http` (its stdio is set here), and waits
    /// until it listens.
    pub fn from_command(mut cmd: Command, data_dir: &Path) -> Server {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start tokenwarden");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
                if let Some(rest) = line.split("serving MCP over HTTP at http://").nth(1) {
                    let _ = tx.send(rest.trim_end_matches("/mcp").to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("server did not start: {}", log.lock().unwrap()));
        let admin_token = find_secret(&log.lock().unwrap());
        Server {
            child,
            addr,
            admin_token,
            stderr: log,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    pub fn admin(&self) -> &str {
        self.admin_token
            .as_deref()
            .expect("first start prints an admin token")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The first `mcp_…` secret in `text`.
pub fn find_secret(text: &str) -> Option<String> {
    let start = text.find("mcp_")?;
    let secret: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (secret.len() == 40).then_some(secret)
}

fn client_info(version: ProtocolVersion) -> ClientConfig {
    let mut info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("tokenwarden-tests", "1"),
    );
    info.protocol_version = version;
    info
}

/// An rmcp client over streamable HTTP with `Authorization: Bearer token`, speaking a 2025
/// revision so that the server keeps a session (`Mcp-Session-Id`).
pub async fn connect_http(url: &str, token: &str) -> Client {
    try_connect_http(url, token)
        .await
        .expect("MCP client connects over HTTP")
}

pub async fn try_connect_http(url: &str, token: &str) -> Result<Client, String> {
    let config =
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(token.to_owned());
    let transport = StreamableHttpClientTransport::from_config(config);
    client_info(ProtocolVersion::V_2025_11_25)
        .serve(transport)
        .await
        .map_err(|e| e.to_string())
}

/// An rmcp client that starts `tokenwarden serve --stdio` as its child process.
pub async fn connect_stdio(data_dir: &Path, token: Option<&str>) -> Client {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("--data-dir")
        .arg(data_dir)
        .args(["serve", "--stdio"]);
    match token {
        Some(t) => cmd.env("TOKENWARDEN_TOKEN", t),
        None => cmd.env_remove("TOKENWARDEN_TOKEN"),
    };
    let transport = TokioChildProcess::new(cmd).expect("spawn tokenwarden --stdio");
    client_info(ProtocolVersion::V_2025_11_25)
        .serve(transport)
        .await
        .expect("MCP client connects over stdio")
}

/// The two ways a request over HTTP is answered: rmcp's client (every request carries
/// `_meta.progressToken`, so rmcp's session machinery answers it) and plain requests as the
/// official SDKs send them (the express lane answers them, `src/http/express.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Rmcp,
    Lane,
}

/// A client of either [`Via`].
pub enum McpClient {
    Rmcp(Client),
    Lane(PlainClient),
}

/// A session over HTTP as `token` (`url` is the server's `/mcp`) through `path`.
pub async fn connect(path: Via, url: &str, token: &str) -> McpClient {
    match path {
        Via::Rmcp => McpClient::Rmcp(connect_http(url, token).await),
        Via::Lane => McpClient::Lane(PlainClient::connect(&addr_of(url), token).await),
    }
}

/// `host:port` of a server's `http://host:port/mcp`.
pub fn addr_of(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches("/mcp")
        .to_owned()
}

/// Whether a failed request's error says the server answered 401 (rmcp's client says
/// "Auth required"; the plain client names the status).
pub fn is_unauthorized(message: &str) -> bool {
    message.contains("Auth required") || message.starts_with("HTTP 401")
}

impl McpClient {
    pub fn path(&self) -> Via {
        match self {
            McpClient::Rmcp(_) => Via::Rmcp,
            McpClient::Lane(_) => Via::Lane,
        }
    }

    /// Ends the session (rmcp's client cancels its service; the plain client sends nothing).
    pub async fn close(self) {
        if let McpClient::Rmcp(client) = self {
            client.cancel().await.unwrap();
        }
    }
}

/// What the tests need of a client: `tools/call` and the whole `tools/list`.
#[allow(async_fn_in_trait)]
pub trait Tools {
    async fn call_tool_params(
        &self,
        tool: &str,
        arguments: Option<Map<String, Value>>,
    ) -> Result<CallToolResult, String>;
    async fn all_tools(&self) -> Result<Vec<rmcp::model::Tool>, String>;
}

impl<T: Tools> Tools for &T {
    async fn call_tool_params(
        &self,
        tool: &str,
        arguments: Option<Map<String, Value>>,
    ) -> Result<CallToolResult, String> {
        (**self).call_tool_params(tool, arguments).await
    }

    async fn all_tools(&self) -> Result<Vec<rmcp::model::Tool>, String> {
        (**self).all_tools().await
    }
}

impl<S: rmcp::Service<RoleClient>> Tools for RunningService<RoleClient, S> {
    async fn call_tool_params(
        &self,
        tool: &str,
        arguments: Option<Map<String, Value>>,
    ) -> Result<CallToolResult, String> {
        let mut params = CallToolRequestParams::new(tool.to_owned());
        params.arguments = arguments;
        self.call_tool(params).await.map_err(|e| e.to_string())
    }

    async fn all_tools(&self) -> Result<Vec<rmcp::model::Tool>, String> {
        self.list_all_tools().await.map_err(|e| e.to_string())
    }
}

impl Tools for PlainClient {
    async fn call_tool_params(
        &self,
        tool: &str,
        arguments: Option<Map<String, Value>>,
    ) -> Result<CallToolResult, String> {
        let mut params = json!({"name": tool});
        if let Some(arguments) = arguments {
            params["arguments"] = Value::Object(arguments);
        }
        let result = self.request("tools/call", Some(params)).await?;
        serde_json::from_value(result.clone())
            .map_err(|e| format!("not a tools/call result ({e}): {result}"))
    }

    async fn all_tools(&self) -> Result<Vec<rmcp::model::Tool>, String> {
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let params = cursor.take().map(|c| json!({"cursor": c}));
            let page: rmcp::model::ListToolsResult =
                serde_json::from_value(self.request("tools/list", params).await?)
                    .map_err(|e| e.to_string())?;
            tools.extend(page.tools);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(tools),
            }
        }
    }
}

impl Tools for McpClient {
    async fn call_tool_params(
        &self,
        tool: &str,
        arguments: Option<Map<String, Value>>,
    ) -> Result<CallToolResult, String> {
        match self {
            McpClient::Rmcp(c) => c.call_tool_params(tool, arguments).await,
            McpClient::Lane(c) => c.call_tool_params(tool, arguments).await,
        }
    }

    async fn all_tools(&self) -> Result<Vec<rmcp::model::Tool>, String> {
        match self {
            McpClient::Rmcp(c) => c.all_tools().await,
            McpClient::Lane(c) => c.all_tools().await,
        }
    }
}

/// Calls a tool and returns (is_error, structured content).
pub async fn call(client: &impl Tools, tool: &str, args: Value) -> (bool, Value) {
    let result = try_call(client, tool, args)
        .await
        .expect("tools/call succeeds at the protocol level");
    (
        result.is_error.unwrap_or(false),
        result.structured_content.clone().unwrap_or(Value::Null),
    )
}

pub async fn try_call(
    client: &impl Tools,
    tool: &str,
    args: Value,
) -> Result<CallToolResult, String> {
    let arguments: Option<Map<String, Value>> = match args {
        Value::Object(map) => Some(map),
        Value::Null => None,
        other => panic!("arguments must be an object, got {other}"),
    };
    client.call_tool_params(tool, arguments).await
}

/// Calls a tool that must succeed and returns its structured result.
pub async fn ok(client: &impl Tools, tool: &str, args: Value) -> Value {
    let (is_error, value) = call(client, tool, args.clone()).await;
    assert!(!is_error, "{tool}({args}) failed: {value}");
    value
}

/// Calls a tool that must fail with `code`, and returns the error message.
pub async fn err(client: &impl Tools, tool: &str, args: Value, code: &str) -> String {
    let (is_error, value) = call(client, tool, args.clone()).await;
    assert!(
        is_error,
        "{tool}({args}) should fail with {code} but returned {value}"
    );
    assert_eq!(
        value["error"]["code"],
        json!(code),
        "{tool}({args}): {value}"
    );
    value["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub async fn tool_names(client: &impl Tools) -> Vec<String> {
    let mut names: Vec<String> = client
        .all_tools()
        .await
        .expect("tools/list")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    names
}

/// A raw HTTP POST of an `initialize` request, for checking status codes and headers.
pub async fn raw_initialize(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    raw_post(url, headers, initialize_body().to_string()).await
}

pub fn initialize_body() -> Value {
    json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}
        }
    })
}

pub async fn raw_post(url: &str, headers: &[(&str, &str)], body: String) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.expect("HTTP request")
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}
