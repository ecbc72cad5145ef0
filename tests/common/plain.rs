//! A plain-request MCP client: raw JSON-RPC over kept-alive HTTP/1.1, as the official Python
//! and TypeScript SDKs, Inspector and mcp-remote send it (no `_meta`, so no progress token),
//! with the headers of a 2025-11-25 session. Such requests are what the server's express lane
//! (`src/http/express.rs`) answers; rmcp's client puts `_meta.progressToken` on every request,
//! which the lane hands to rmcp, so only this client exercises the lane.
//!
//! Every `tools/list` and `tools/call` reply is checked to come from the lane (rmcp numbers
//! the events of its replies with `id:` lines; the lane's single event has none), so a test
//! run through this client fails if the lane stops answering instead of passing on rmcp's path.
//! rmcp closes a session it has not seen a request of for a while, and the lane sends the
//! first request of a session each minute rmcp's way: this client sends a `ping` (rmcp's) when
//! its session has not been seen by rmcp for 30 seconds, so every tool request takes the lane.

#![allow(dead_code)]

use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::raw_http::{Conn, Reply, messages};

const REVISION: &str = "2025-11-25";
/// Well within the lane's minute (`RMCP_SEEN_WITHIN`).
const RMCP_REFRESH: Duration = Duration::from_secs(30);

pub struct PlainClient {
    addr: String,
    secret: String,
    session: String,
    /// The session's headers, each ending in CRLF.
    headers: String,
    /// The kept-alive connection; a request made while it is busy opens another.
    conn: Mutex<Conn>,
    next_id: AtomicU64,
    /// When a request of this session last went rmcp's way.
    rmcp_seen: StdMutex<Instant>,
}

impl PlainClient {
    /// Opens a session (`initialize`, then `notifications/initialized`) as `secret` on the
    /// server listening at `addr` (`host:port`).
    pub async fn connect(addr: &str, secret: &str) -> PlainClient {
        PlainClient::try_connect(addr, secret)
            .await
            .unwrap_or_else(|e| panic!("plain client connects: {e}"))
    }

    pub async fn try_connect(addr: &str, secret: &str) -> Result<PlainClient, String> {
        let mut conn = Conn::open(addr, secret).await;
        let init = json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {
                "protocolVersion": REVISION,
                "capabilities": {},
                "clientInfo": {"name": "tokenwarden-tests-plain", "version": "1"}
            }
        });
        let reply = conn.post(&init.to_string(), "").await;
        if reply.status != 200 {
            return Err(http_error(&reply));
        }
        let session = reply.session.clone().ok_or("no mcp-session-id")?;
        let headers = format!("mcp-session-id: {session}\r\nmcp-protocol-version: {REVISION}\r\n");
        let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        let reply = conn.post(initialized, &headers).await;
        if reply.status != 202 {
            return Err(http_error(&reply));
        }
        Ok(PlainClient {
            addr: addr.to_owned(),
            secret: secret.to_owned(),
            session,
            headers,
            conn: Mutex::new(conn),
            next_id: AtomicU64::new(1),
            rmcp_seen: StdMutex::new(Instant::now()),
        })
    }

    pub fn session(&self) -> &str {
        &self.session
    }

    /// The session's headers (`mcp-session-id`, `mcp-protocol-version`), each ending in CRLF.
    pub fn headers(&self) -> &str {
        &self.headers
    }

    /// A new connection with this client's secret (for requests sent alongside a running one).
    pub async fn open_conn(&self) -> Conn {
        Conn::open(&self.addr, &self.secret).await
    }

    /// The next request id this client would use.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// POSTs `body` on the kept-alive connection (or a new one while it is busy).
    async fn post(&self, body: &str) -> Reply {
        match self.conn.try_lock() {
            Ok(mut conn) => conn.post(body, &self.headers).await,
            Err(_) => self.open_conn().await.post(body, &self.headers).await,
        }
    }

    /// Sends a `ping` (which the lane leaves to rmcp) when rmcp has not seen this session for
    /// a while, so that the next tool request is the lane's.
    async fn keep_rmcp_seeing(&self) {
        if self.rmcp_seen.lock().unwrap().elapsed() < RMCP_REFRESH {
            return;
        }
        let id = self.next_id();
        let reply = self
            .post(&json!({"jsonrpc": "2.0", "id": id, "method": "ping"}).to_string())
            .await;
        if reply.status == 200 {
            *self.rmcp_seen.lock().unwrap() = Instant::now();
        }
    }

    /// A `tools/list` or `tools/call` request: its `result`, or an error naming the HTTP
    /// status (`HTTP 401: <challenge>`) or the JSON-RPC error (`JSON-RPC -32602: …`), or
    /// `no response` (a cancelled request's reply ends without one).
    pub async fn request(&self, method: &str, params: Option<Value>) -> Result<Value, String> {
        self.keep_rmcp_seeing().await;
        let id = self.next_id();
        let mut body = json!({"jsonrpc": "2.0", "id": id, "method": method});
        if let Some(params) = params {
            body["params"] = params;
        }
        let reply = self.post(&body.to_string()).await;
        answer_of(&reply, id)
    }
}

/// `HTTP <status>: <WWW-Authenticate or body>`.
fn http_error(reply: &Reply) -> String {
    let challenge = reply
        .head
        .lines()
        .find_map(|l| l.strip_prefix("www-authenticate:"))
        .map(|v| v.trim().to_owned());
    format!(
        "HTTP {}: {}",
        reply.status,
        challenge.unwrap_or_else(|| String::from_utf8_lossy(&reply.body).into_owned())
    )
}

/// The answer to request `id` in `reply`, which must be the express lane's.
pub fn answer_of(reply: &Reply, id: u64) -> Result<Value, String> {
    if reply.status != 200 {
        return Err(http_error(reply));
    }
    let text = String::from_utf8_lossy(&reply.body);
    assert!(
        reply.head.contains("content-type: text/event-stream")
            && !text.starts_with("id:")
            && !text.contains("\nid:"),
        "request {id} was answered by rmcp, not the express lane:\n{}{text}",
        reply.head
    );
    let Some(message) = messages(reply).into_iter().find(|m| m["id"] == json!(id)) else {
        return Err("no response".to_owned());
    };
    if let Some(error) = message.get("error") {
        return Err(format!(
            "JSON-RPC {}: {}",
            error["code"],
            error["message"].as_str().unwrap_or_default()
        ));
    }
    Ok(message["result"].clone())
}
