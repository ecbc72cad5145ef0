//! A minimal HTTP/1.1 client over one kept-alive TCP connection: what the load generator
//! (`benches/http_binary.rs`) and the front-door tests use to see exactly what the shipped
//! binary sends, with no client library's pooling or buffering in between.

#![allow(dead_code)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One kept-alive HTTP/1.1 connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    host: String,
    auth: String,
}

pub struct Reply {
    pub status: u16,
    pub session: Option<String>,
    pub head: String,
    pub body: Vec<u8>,
}

impl Conn {
    pub async fn open(addr: &str, secret: &str) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            host: addr.to_owned(),
            auth: format!("Bearer {secret}"),
        }
    }

    /// Sends raw bytes (a request the caller wrote itself).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// A POST of `body` to `/mcp` with this connection's bearer and `extra_headers` (each
    /// ending in CRLF), as bytes to send.
    pub fn request(&self, body: &str, extra_headers: &str) -> String {
        format!(
            "POST /mcp HTTP/1.1\r\nhost: {}\r\nauthorization: {}\r\ncontent-type: application/json\r\n\
             accept: application/json, text/event-stream\r\ncontent-length: {}\r\n{}\r\n{}",
            self.host,
            self.auth,
            body.len(),
            extra_headers,
            body
        )
    }

    /// A REST request (`method` `path`, a JSON body when not empty) with this connection's
    /// bearer, as bytes to send.
    pub fn rest_request(&self, method: &str, path: &str, body: &str) -> String {
        format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nauthorization: {}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            self.host,
            self.auth,
            body.len(),
        )
    }

    /// A `DELETE /mcp` with this connection's bearer and `extra_headers` (each ending in
    /// CRLF), as bytes to send.
    pub fn delete_request(&self, extra_headers: &str) -> String {
        format!(
            "DELETE /mcp HTTP/1.1\r\nhost: {}\r\nauthorization: {}\r\ncontent-length: 0\r\n{}\r\n",
            self.host, self.auth, extra_headers
        )
    }

    /// Sends a POST without waiting for its reply (read it with [`Conn::read_reply`]).
    pub async fn send(&mut self, body: &str, extra_headers: &str) {
        let request = self.request(body, extra_headers);
        self.send_raw(request.as_bytes()).await;
    }

    pub async fn post(&mut self, body: &str, extra_headers: &str) -> Reply {
        self.send(body, extra_headers).await;
        self.read_reply().await
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    pub async fn read_reply(&mut self) -> Reply {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        self.buf.drain(..head_end);
        let status = head[9..12].parse().unwrap();
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        let session = header("mcp-session-id:");
        let body = if let Some(len) = header("content-length:") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < len {
                self.fill().await;
            }
            self.buf.drain(..len).collect()
        } else if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    self.fill().await;
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
                while self.buf.len() < line_end + 2 + size + 2 {
                    self.fill().await;
                }
                body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
            body
        } else {
            Vec::new()
        };
        Reply {
            status,
            session,
            head,
            body,
        }
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The JSON-RPC messages of a reply: the body itself for a JSON reply, each event's data for an
/// SSE reply (events with empty data are returned as `Value::Null`, so callers can see them).
pub fn messages(reply: &Reply) -> Vec<serde_json::Value> {
    let text = String::from_utf8_lossy(&reply.body);
    if reply.head.contains("content-type: application/json") {
        return vec![serde_json::from_str(&text).expect("a JSON reply")];
    }
    text.split("\n\n")
        .filter(|event| !event.trim().is_empty())
        .map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            let data = data.join("\n");
            if data.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_str(&data).expect("each event's data is JSON")
            }
        })
        .collect()
}
