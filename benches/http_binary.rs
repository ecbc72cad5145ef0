//! Load generator against the shipped binary: starts `tokenwarden serve --http` as a separate
//! process on a fresh data directory, then drives authenticated `tools/list` and
//! `tools/call whoami` over N kept-alive HTTP/1.1 connections and prints throughput, latency
//! percentiles, and the CPU time per request of the server and of this load generator (they
//! share the cores, so the sum bounds what the machine can do). The client is a minimal
//! raw-socket HTTP/1.1 client on one thread, so that as much of the machine as possible is
//! left to the server.
//!
//! Run: `cargo bench --bench http_binary`
//! Environment:
//! - LOAD_CONNECTIONS (4), LOAD_SECONDS per workload and round (5);
//! - LOAD_REQUESTS: a fixed number of requests per workload and round instead of a duration
//!   (for instruction counts under callgrind, which then do not depend on time);
//! - LOAD_PROTOCOL (`2025-11-25`, a session per connection with SSE replies, or `2026-07-28`,
//!   stateless with JSON replies);
//! - LOAD_WORKLOADS: any of `list`, `whoami` and `create` (durable `create_token` of a root
//!   token by the bootstrap admin; run it with LOAD_CONNECTIONS=1 for the one-client figure),
//!   `get` (`get_token` of the bootstrap admin's own record), and their REST twins `rest_get`
//!   (`GET /v1/tokens/{id}`) and `rest_create` (`POST /v1/tokens`), comma-separated;
//!   `list,whoami` is the default;
//! - LOAD_FLOOD=N: after the workloads, one token opens N sessions (`initialize`, over
//!   LOAD_CONNECTIONS connections) and the benchmark prints the server's RSS before, after and
//!   at its peak, and another token's `whoami` p50 on one connection before and after;
//! - LOAD_BIN: the binary to measure, or several separated by commas (e.g. an older build
//!   first): every round runs every binary in turn, so they share the machine's conditions;
//! - LOAD_ROUNDS (1): rounds (the variants take turns going first); with more than one variant a
//!   summary compares their medians, and the median of their per-round ratios to [0];
//! - LOAD_TOKEN_TOOLS: the requests use a child of the bootstrap admin that may call only these
//!   tools (comma-separated patterns, e.g. `whoami,list_*`), so that `tools/list` filters;
//! - LOAD_NO_GUARD=1: adds, after each binary, the same binary with the bearer guard replaced
//!   by a fixed caller (the bootstrap admin). Needs a binary built with the `bench-internals`
//!   feature: `cargo bench --features bench-internals --bench http_binary`.
//! - LOAD_NO_OBSERVE=1: adds, after each binary, the same binary started with
//!   `TOKENWARDEN_BENCH_NO_OBSERVE`, which a `bench-internals` build honours by recording no
//!   access log and no metrics (the cost of SPEC §14's observability, on vs off).

#[path = "support/proc_stat.rs"]
mod proc_stat;
use proc_stat::cpu_time;
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
    label: String,
    child: Child,
    addr: String,
    admin: String,
    /// The bootstrap admin's id, for the `get` workloads.
    admin_id: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first, so that a server run under a profiler (callgrind) writes its output.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a variant of a binary turns off (only a `bench-internals` build honours either).
#[derive(Clone, Copy, PartialEq)]
enum Off {
    Nothing,
    Guard,
    Observe,
}

fn start_server(bin: &str, off: Off) -> Server {
    let dir = tempfile::TempDir::new().unwrap();
    let mut command = Command::new(bin);
    let no_guard = off == Off::Guard;
    if no_guard {
        // Honoured only by a binary built with the `bench-internals` feature.
        command.env("TOKENWARDEN_BENCH_NO_GUARD", "1");
    }
    if off == Off::Observe {
        command.env("TOKENWARDEN_BENCH_NO_OBSERVE", "1");
    }
    let mut child = command
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
    let mut observing = true;
    while admin.is_none() {
        let line = lines.next().expect("server stderr").unwrap();
        observing &= !line.contains("bench-internals: no access log, no metrics");
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
    let addr = addr.expect("server address");
    if no_guard {
        assert_no_guard(&addr);
    }
    let mut admin = admin.unwrap();
    if let Ok(tools) = std::env::var("LOAD_TOKEN_TOOLS") {
        admin = restricted_child(&addr, &admin, &tools);
    }
    assert!(
        off != Off::Observe || !observing,
        "LOAD_NO_OBSERVE needs a binary built with the bench-internals feature: \
         cargo bench --features bench-internals --bench http_binary"
    );
    let label = match off {
        Off::Nothing => bin.to_owned(),
        Off::Guard => format!("{bin} (no guard)"),
        Off::Observe => format!("{bin} (no access log, no metrics)"),
    };
    let admin_id = admin_id(&addr, &admin);
    Server {
        label,
        child,
        addr,
        admin,
        admin_id,
        _dir: dir,
    }
}

/// The id of the token `secret`, from `whoami` (an empty string if the server has no REST
/// API, as older builds do; the `get` workloads then cannot run).
fn admin_id(addr: &str, secret: &str) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (mut conn, headers) = ready_connection(addr, secret, "2025-11-25").await;
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#;
        let reply = conn.post(body, &headers).await;
        let text = String::from_utf8_lossy(&reply.body);
        text.find("tok_")
            .and_then(|start| text.get(start..start + 28))
            .unwrap_or_default()
            .to_owned()
    })
}

/// Refuses to measure a "no guard" server that still has its guard (a binary built without
/// the `bench-internals` feature ignores `TOKENWARDEN_BENCH_NO_GUARD`).
fn assert_no_guard(addr: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = runtime.block_on(async {
        let mut conn = Conn::open(addr, "not-a-token").await;
        conn.post(
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            "",
        )
        .await
        .status
    });
    assert_ne!(
        status, 401,
        "LOAD_NO_GUARD needs a binary built with the bench-internals feature: \
         cargo bench --features bench-internals --bench http_binary"
    );
}

/// A child of `admin` that may call only `tools`; returns its secret.
fn restricted_child(addr: &str, admin: &str, tools: &str) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (mut conn, headers) = ready_connection(addr, admin, "2025-11-25").await;
        let tools: Vec<&str> = tools.split(',').map(str::trim).collect();
        let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "create_token", "arguments": {"name": "load", "tools": tools}}});
        let reply = conn.post(&body.to_string(), &headers).await;
        let text = String::from_utf8_lossy(&reply.body);
        // The secret, not the record's masked form (`mcp_AbCd…WxYz`).
        text.match_indices("mcp_")
            .map(|(start, _)| text.get(start..start + 40).unwrap_or_default())
            .find(|s| s.len() == 40 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            .expect("create_token returns a secret")
            .to_owned()
    })
}

/// The request body and headers for one call, per protocol.
struct Workload {
    /// What LOAD_WORKLOADS calls it.
    key: &'static str,
    name: &'static str,
    body: String,
    /// Headers 2026-07-28 requires to repeat the body's method (and tool name).
    headers: &'static str,
    /// A REST request instead of MCP: method and path (`{ADMIN_ID}` is the admin's id).
    rest: Option<(&'static str, &'static str)>,
}

fn workloads(protocol: &str) -> Vec<Workload> {
    let meta = if protocol == "2026-07-28" {
        r#","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"load","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}"#
    } else {
        ""
    };
    vec![
        Workload {
            key: "get",
            name: "tools/call get_token",
            headers: "mcp-method: tools/call\r\nmcp-name: get_token\r\n",
            body: format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"get_token","arguments":{{"id":"{{ADMIN_ID}}"}}{meta}}}}}"#
            ),
            rest: None,
        },
        Workload {
            key: "rest_get",
            name: "GET /v1/tokens/{id}",
            headers: "",
            body: String::new(),
            rest: Some(("GET", "/v1/tokens/{ADMIN_ID}")),
        },
        Workload {
            key: "rest_create",
            name: "POST /v1/tokens",
            headers: "",
            body: r#"{"name":"load","parent":"none"}"#.to_owned(),
            rest: Some(("POST", "/v1/tokens")),
        },
        Workload {
            key: "list",
            name: "tools/list",
            headers: "mcp-method: tools/list\r\n",
            body: format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{{}}}}}"#,
                meta.trim_start_matches(',')
            ),
            rest: None,
        },
        Workload {
            key: "create",
            name: "create_token",
            headers: "mcp-method: tools/call\r\nmcp-name: create_token\r\n",
            body: format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"create_token","arguments":{{"name":"load","parent":"none"}}{meta}}}}}"#
            ),
            rest: None,
        },
        Workload {
            key: "whoami",
            name: "tools/call whoami",
            headers: "mcp-method: tools/call\r\nmcp-name: whoami\r\n",
            body: format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"whoami","arguments":{{}}{meta}}}}}"#
            ),
            rest: None,
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

/// When a connection stops: at a time, or after a number of requests.
#[derive(Clone, Copy)]
enum Until {
    Deadline(Instant),
    Count(usize),
}

async fn drive(
    addr: String,
    secret: String,
    protocol: String,
    (body, rest): (String, Option<(String, String)>),
    method_headers: &'static str,
    until: Until,
) -> Vec<Duration> {
    if let Some((method, path)) = rest {
        return drive_rest(addr, secret, (method, path, body), until).await;
    }
    let (mut conn, mut headers) = ready_connection(&addr, &secret, &protocol).await;
    if protocol == "2026-07-28" {
        headers.push_str(method_headers);
    }
    let mut latencies = Vec::with_capacity(100_000);
    while match until {
        Until::Deadline(deadline) => Instant::now() < deadline,
        Until::Count(n) => latencies.len() < n,
    } {
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
/// The REST twin of [`drive`]: one kept-alive connection, no session.
async fn drive_rest(
    addr: String,
    secret: String,
    (method, path, body): (String, String, String),
    until: Until,
) -> Vec<Duration> {
    let mut conn = Conn::open(&addr, &secret).await;
    let request = conn.rest_request(&method, &path, &body);
    let mut latencies = Vec::with_capacity(100_000);
    while match until {
        Until::Deadline(deadline) => Instant::now() < deadline,
        Until::Count(n) => latencies.len() < n,
    } {
        let started = Instant::now();
        conn.send_raw(request.as_bytes()).await;
        let reply = conn.read_reply().await;
        latencies.push(started.elapsed());
        assert!(
            reply.status == 200 || reply.status == 201,
            "{} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }
    latencies
}

/// Every task's results, in task order.
async fn concat<T>(tasks: Vec<tokio::task::JoinHandle<Vec<T>>>) -> Vec<T> {
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// One workload against one server for one round.
struct Measured {
    rate: f64,
    p50: Duration,
    p99: Duration,
    server_us: f64,
    client_us: f64,
}

fn measure(
    runtime: &tokio::runtime::Runtime,
    server: &Server,
    protocol: &str,
    workload: &Workload,
    connections: usize,
    stop: impl Fn() -> Until,
) -> Measured {
    // Warm up (first verify of the secret, allocator, caches); a fixed count when the
    // measurement is one, so that instruction counts do not depend on time.
    let warm_up = match stop() {
        Until::Count(_) => Until::Count(100),
        Until::Deadline(_) => Until::Deadline(Instant::now() + Duration::from_millis(300)),
    };
    let body = workload.body.replace("{ADMIN_ID}", &server.admin_id);
    let rest = workload.rest.map(|(method, path)| {
        (
            method.to_owned(),
            path.replace("{ADMIN_ID}", &server.admin_id),
        )
    });
    runtime.block_on(drive(
        server.addr.clone(),
        server.admin.clone(),
        protocol.to_owned(),
        (body.clone(), rest.clone()),
        workload.headers,
        warm_up,
    ));
    let pid = server.child.id().to_string();
    let (server_before, client_before) = (cpu_time(&pid), cpu_time("self"));
    let started = Instant::now();
    let until = stop();
    let mut latencies: Vec<Duration> = runtime.block_on(async {
        let tasks: Vec<_> = (0..connections)
            .map(|_| {
                tokio::spawn(drive(
                    server.addr.clone(),
                    server.admin.clone(),
                    protocol.to_owned(),
                    (body.clone(), rest.clone()),
                    workload.headers,
                    until,
                ))
            })
            .collect();
        concat(tasks).await
    });
    let elapsed = started.elapsed().as_secs_f64();
    let server_cpu = cpu_time(&pid).saturating_sub(server_before);
    let client_cpu = cpu_time("self").saturating_sub(client_before);
    latencies.sort();
    let n = latencies.len() as f64;
    Measured {
        rate: n / elapsed,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        server_us: server_cpu.as_secs_f64() * 1e6 / n,
        client_us: client_cpu.as_secs_f64() * 1e6 / n,
    }
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One token opens `sessions` sessions over `connections` kept-alive connections; prints the
/// server's memory and another token's `whoami` p50 before and after (SPEC: RSS growth
/// ≤ 48 MiB at 20,000 sessions, other tokens' p50 unchanged within noise).
fn flood(
    runtime: &tokio::runtime::Runtime,
    server: &Server,
    protocol: &str,
    sessions: usize,
    connections: usize,
    seconds: u64,
) {
    let whoami = workloads(protocol)
        .into_iter()
        .find(|w| w.key == "whoami")
        .expect("the whoami workload");
    let other = || {
        measure(runtime, server, protocol, &whoami, 1, || {
            Until::Deadline(Instant::now() + Duration::from_secs(seconds))
        })
    };
    if protocol == "2026-07-28" {
        println!("session flood: 2026-07-28 has no sessions; run it with a 2025 protocol");
        return;
    }
    let flooder = restricted_child(&server.addr, &server.admin, "whoami");
    let before = other();
    let pid = server.child.id().to_string();
    let (rss_before, hwm_before) = (status_kib(&pid, "VmRSS"), status_kib(&pid, "VmHWM"));
    let init = format!(
        r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":"{protocol}","capabilities":{{}},"clientInfo":{{"name":"flood","version":"1"}}}}}}"#
    );
    let started = Instant::now();
    let statuses: Vec<u16> = runtime.block_on(async {
        let tasks: Vec<_> = (0..connections)
            .map(|c| {
                let (addr, secret, init) = (server.addr.clone(), flooder.clone(), init.clone());
                let count = sessions / connections + usize::from(c < sessions % connections);
                tokio::spawn(async move {
                    let mut conn = Conn::open(&addr, &secret).await;
                    let mut statuses = Vec::with_capacity(count);
                    for _ in 0..count {
                        statuses.push(conn.post(&init, "").await.status);
                    }
                    statuses
                })
            })
            .collect();
        concat(tasks).await
    });
    let elapsed = started.elapsed().as_secs_f64();
    let (rss_after, hwm_after) = (status_kib(&pid, "VmRSS"), status_kib(&pid, "VmHWM"));
    let after = other();
    let opened = statuses.iter().filter(|&&s| s == 200).count();
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "session flood: {} initialize by one token over {connections} connections in {elapsed:.1} s \
         ({opened} answered 200, {} otherwise)",
        statuses.len(),
        statuses.len() - opened
    );
    println!(
        "  server RSS {:.1} MiB before, {:.1} MiB after (growth {:.1} MiB); peak {:.1} MiB before, {:.1} MiB after",
        mib(rss_before),
        mib(rss_after),
        mib(rss_after) - mib(rss_before),
        mib(hwm_before),
        mib(hwm_after)
    );
    println!(
        "  another token's whoami, 1 connection: p50 {:.3} ms before, {:.3} ms after ({:.0} vs {:.0} requests/s)",
        before.p50.as_secs_f64() * 1e3,
        after.p50.as_secs_f64() * 1e3,
        before.rate,
        after.rate
    );
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let bins = env_or("LOAD_BIN", env!("CARGO_BIN_EXE_tokenwarden"));
    let connections: usize = env_or("LOAD_CONNECTIONS", "4").parse().unwrap();
    let seconds: u64 = env_or("LOAD_SECONDS", "5").parse().unwrap();
    let requests: Option<usize> = std::env::var("LOAD_REQUESTS")
        .ok()
        .map(|n| n.parse().unwrap());
    let rounds: usize = env_or("LOAD_ROUNDS", "1").parse().unwrap();
    let protocol = env_or("LOAD_PROTOCOL", "2025-11-25");
    let chosen = env_or("LOAD_WORKLOADS", "list,whoami");
    let no_guard = std::env::var("LOAD_NO_GUARD").is_ok_and(|v| v == "1");
    let no_observe = std::env::var("LOAD_NO_OBSERVE").is_ok_and(|v| v == "1");
    let workloads: Vec<Workload> = workloads(&protocol)
        .into_iter()
        .filter(|w| chosen.split(',').any(|c| c.trim() == w.key))
        .collect();
    let servers: Vec<Server> = bins
        .split(',')
        .flat_map(|bin| {
            let mut variants = vec![start_server(bin, Off::Nothing)];
            if no_guard {
                variants.push(start_server(bin, Off::Guard));
            }
            if no_observe {
                variants.push(start_server(bin, Off::Observe));
            }
            variants
        })
        .collect();
    let stop_text = match requests {
        Some(n) => format!("{n} requests"),
        None => format!("{seconds} s"),
    };
    println!(
        "{connections} kept-alive connections, {stop_text} per workload and round, {rounds} round(s), protocol {protocol}"
    );
    for (i, server) in servers.iter().enumerate() {
        println!("[{i}] {}", server.label);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // results[server][workload] = one per round
    let mut results: Vec<Vec<Vec<Measured>>> = servers
        .iter()
        .map(|_| workloads.iter().map(|_| Vec::new()).collect())
        .collect();
    for round in 0..rounds {
        for (w, workload) in workloads.iter().enumerate() {
            // The order turns each round, so that no variant always runs first.
            let order = (0..servers.len()).map(|i| (i + round) % servers.len());
            for s in order {
                let server = &servers[s];
                let stop = || match requests {
                    Some(n) => Until::Count(n.div_ceil(connections)),
                    None => Until::Deadline(Instant::now() + Duration::from_secs(seconds)),
                };
                let m = measure(&runtime, server, &protocol, workload, connections, stop);
                println!(
                    "round {} [{s}] {:<18} {:>8.0} requests/s   p50 {:>6.3} ms   p99 {:>6.3} ms   CPU per request: server {:>4.0} µs, load generator {:>4.0} µs",
                    round + 1,
                    workload.name,
                    m.rate,
                    m.p50.as_secs_f64() * 1e3,
                    m.p99.as_secs_f64() * 1e3,
                    m.server_us,
                    m.client_us,
                );
                results[s][w].push(m);
            }
        }
    }
    if let Some(sessions) = std::env::var("LOAD_FLOOD").ok().map(|n| n.parse().unwrap()) {
        for (s, server) in servers.iter().enumerate() {
            println!("[{s}] {}", server.label);
            flood(&runtime, server, &protocol, sessions, connections, seconds);
        }
    }
    if servers.len() > 1 || rounds > 1 {
        println!("medians over {rounds} round(s):");
        for (w, workload) in workloads.iter().enumerate() {
            let base = median(&mut results[0][w].iter().map(|m| m.rate).collect::<Vec<_>>());
            for (s, per_server) in results.iter().enumerate() {
                let ms = &per_server[w];
                let rate = median(&mut ms.iter().map(|m| m.rate).collect::<Vec<_>>());
                let p50 = median(
                    &mut ms
                        .iter()
                        .map(|m| m.p50.as_secs_f64() * 1e3)
                        .collect::<Vec<_>>(),
                );
                let server_us = median(&mut ms.iter().map(|m| m.server_us).collect::<Vec<_>>());
                let client_us = median(&mut ms.iter().map(|m| m.client_us).collect::<Vec<_>>());
                // Each round's rate against [0]'s in the same round, then their median: the
                // host's drift between rounds cancels out of each ratio.
                let paired = median(
                    &mut ms
                        .iter()
                        .zip(&results[0][w])
                        .map(|(m, b)| 100.0 * m.rate / b.rate)
                        .collect::<Vec<_>>(),
                );
                println!(
                    "[{s}] {:<18} {:>8.0} requests/s ({:>5.1} % of [0]; by round {paired:>5.1} %)   p50 {:>6.3} ms   server {:>4.0} µs, load generator {:>4.0} µs per request",
                    workload.name,
                    rate,
                    100.0 * rate / base,
                    p50,
                    server_us,
                    client_us,
                );
            }
        }
    }
}
