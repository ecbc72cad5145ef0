//! Load generator against the shipped binary: starts `tokenwarden serve --http` as a separate
//! process on a fresh data directory, then drives authenticated `tools/list` and
//! `tools/call whoami` over N kept-alive HTTP/1.1 connections and prints throughput and
//! latency percentiles. The client is a minimal raw-socket HTTP/1.1 client on one thread, so
//! that as much of the machine as possible is left to the server (they share the cores).
//!
//! Run: `cargo bench --bench http_binary`
//! Environment: LOAD_CONNECTIONS (4), LOAD_SECONDS per workload (5), LOAD_PROTOCOL
//! (`2025-11-25`, a session per connection with SSE replies, or `2026-07-28`, stateless with
//! JSON replies), LOAD_BIN (another `tokenwarden` binary to measure, e.g. an older build).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/common/raw_http.rs"]
mod raw_http;

use raw_http::{Conn, find};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

struct Server {
    child: Child,
    addr: String,
    admin: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(bin: &str) -> Server {
    let dir = tempfile::TempDir::new().unwrap();
    let mut child = Command::new(bin)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--http", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tokenwarden");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut addr, mut admin) = (None, None);
    // The banner (with the admin secret) comes before the "serving" line; with RUST_LOG=warn
    // the serving line is not printed, so read the holder file for the address instead.
    while admin.is_none() {
        let line = lines.next().expect("server stderr").unwrap();
        if let Some(start) = line.find("mcp_") {
            admin = Some(line[start..start + 40].to_owned());
        }
    }
    let holder = dir.path().join("server.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    while addr.is_none() && Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(&holder)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            addr = v["http"].as_str().map(str::to_owned);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::spawn(move || for _ in lines {});
    Server {
        child,
        addr: addr.expect("server address"),
        admin: admin.unwrap(),
        _dir: dir,
    }
}

/// The request body and headers for one call, per protocol.
struct Workload {
    name: &'static str,
    body: String,
    /// Headers 2026-07-28 requires to repeat the body's method (and tool name).
    headers: &'static str,
}

fn workloads(protocol: &str) -> Vec<Workload> {
    let meta = if protocol == "2026-07-28" {
        r#","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"load","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}"#
    } else {
        ""
    };
    vec![
        Workload {
            name: "tools/list",
            headers: "mcp-method: tools/list\r\n",
            body: format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{{}}}}}"#,
                meta.trim_start_matches(',')
            ),
        },
        Workload {
            name: "tools/call whoami",
            headers: "mcp-method: tools/call\r\nmcp-name: whoami\r\n",
            body: format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"whoami","arguments":{{}}{meta}}}}}"#
            ),
        },
    ]
}

/// Opens a connection ready to call tools: for a 2025 protocol, a session.
async fn ready_connection(addr: &str, secret: &str, protocol: &str) -> (Conn, String) {
    let mut conn = Conn::open(addr, secret).await;
    if protocol == "2026-07-28" {
        return (conn, format!("mcp-protocol-version: {protocol}\r\n"));
    }
    let init = format!(
        r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":"{protocol}","capabilities":{{}},"clientInfo":{{"name":"load","version":"1"}}}}}}"#
    );
    let reply = conn.post(&init, "").await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let session = reply.session.expect("a session id");
    let headers = format!("mcp-session-id: {session}\r\nmcp-protocol-version: {protocol}\r\n");
    let reply = conn
        .post(
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            &headers,
        )
        .await;
    assert_eq!(reply.status, 202);
    (conn, headers)
}

async fn drive(
    addr: String,
    secret: String,
    protocol: String,
    body: String,
    method_headers: &'static str,
    deadline: Instant,
) -> Vec<Duration> {
    let (mut conn, mut headers) = ready_connection(&addr, &secret, &protocol).await;
    if protocol == "2026-07-28" {
        headers.push_str(method_headers);
    }
    let mut latencies = Vec::with_capacity(100_000);
    while Instant::now() < deadline {
        let started = Instant::now();
        let reply = conn.post(&body, &headers).await;
        latencies.push(started.elapsed());
        assert_eq!(reply.status, 200);
        assert!(
            find(&reply.body, b"\"result\"").is_some()
                && find(&reply.body, b"isError\":true").is_none(),
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    latencies
}

/// CPU time (user + system) the server process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Linux reports in clock ticks of 1/100 s on every platform this runs on.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    let bin = env_or("LOAD_BIN", env!("CARGO_BIN_EXE_tokenwarden"));
    let connections: usize = env_or("LOAD_CONNECTIONS", "4").parse().unwrap();
    let seconds: u64 = env_or("LOAD_SECONDS", "5").parse().unwrap();
    let protocol = env_or("LOAD_PROTOCOL", "2025-11-25");
    let server = start_server(&bin);
    println!(
        "tokenwarden binary {bin}\n{connections} kept-alive connections, {seconds} s per workload, protocol {protocol}"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for workload in workloads(&protocol) {
        // Warm up (first verify of the secret, allocator, caches).
        runtime.block_on(drive(
            server.addr.clone(),
            server.admin.clone(),
            protocol.clone(),
            workload.body.clone(),
            workload.headers,
            Instant::now() + Duration::from_millis(500),
        ));
        let cpu_before = cpu_time(server.child.id());
        let started = Instant::now();
        let deadline = started + Duration::from_secs(seconds);
        let mut latencies: Vec<Duration> = runtime.block_on(async {
            let tasks: Vec<_> = (0..connections)
                .map(|_| {
                    tokio::spawn(drive(
                        server.addr.clone(),
                        server.admin.clone(),
                        protocol.clone(),
                        workload.body.clone(),
                        workload.headers,
                        deadline,
                    ))
                })
                .collect();
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await.unwrap());
            }
            all
        });
        let elapsed = started.elapsed().as_secs_f64();
        let server_cpu = cpu_time(server.child.id()).saturating_sub(cpu_before);
        latencies.sort();
        println!(
            "{:<18} {:>8.0} requests/s   p50 {:>7.3} ms   p99 {:>7.3} ms   server CPU {:>5.0} µs/request   ({} requests)",
            workload.name,
            latencies.len() as f64 / elapsed,
            percentile(&latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            server_cpu.as_secs_f64() * 1e6 / latencies.len() as f64,
            latencies.len()
        );
    }
}
