//! Under attack (SPEC §16): an honest token's gateway calls through the shipped binary, p50 and
//! p99, first with nothing else running, then while another token runs each attack of the
//! availability review at full speed; and the server's peak RSS in each phase.
//!
//! Each attack gets a fresh server, measured first unloaded and then under that attack.
//! The server (`tokenwarden serve`, a separate process, `--max-connections 256`) fronts two
//! upstreams, both `tokenwarden-test-upstream` with its hostile tools: `test` over stdio and
//! `web` over streamable HTTP (a 2025 protocol, so calls take the direct path). The honest
//! client, on a thread and runtime of its own (so the attack's tasks never delay its
//! measurements), calls in turn `whoami` (tokenwarden's own tool), `test__read_note` and
//! `web__read_note` (the upstreams the attacks use) on one kept-alive connection; each kind
//! gets its own p50 and p99.
//! Attacks, each by its own root token (another lineage):
//! - `connections`: 300 connections, each holding 30 s calls of `test__slow`, reconnecting;
//! - `slots`: 48 concurrent 2 s calls of `web__slow` (more than the upstream's 32 slots);
//! - `progress`: `test__flood_progress` (50,000 notifications) asked for by clients that never
//!   read their connection, 4 at a time;
//! - `consent`: `GET /oauth/authorize` as fast as one connection can (no token needed);
//! - `oversized`: 17 MiB answers from both upstreams, 2 at a time;
//! - `pipelined`: `whoami` (tokenwarden's own, cheap) over 24 kept-alive connections, 16
//!   requests sent at a time on each.
//!
//! The attacker is a process of its own (this binary again), started under `nice -n
//! ATTACK_NICE` (19 by default): on a real deployment the attacker's own CPU is on its own
//! machine, while here the load generator's loops would otherwise take the cores the server
//! and the honest client share. `ATTACK_NICE=0` runs it at equal priority.
//!
//! Run: `cargo bench --bench under_attack`. Environment: ATTACK_SECONDS per phase (5),
//! ATTACK_BIN (the server binary), ATTACK_FIXTURE (the test upstream binary), ATTACKS
//! (comma-separated subset, all by default), ATTACK_NICE (19).

#[path = "support/proc_stat.rs"]
mod proc_stat;
#[path = "../tests/common/raw_http.rs"]
mod raw_http;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn fixture() -> String {
    env_or(
        "ATTACK_FIXTURE",
        env!("CARGO_BIN_EXE_tokenwarden-test-upstream"),
    )
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A stateless (2026-07-28) `tools/call`, with a progress token when asked.
fn call(addr: &str, secret: &str, tool: &str, args: Value, progress: bool) -> Vec<u8> {
    let mut meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
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

/// Reads one HTTP response with a `Content-Length` (or until close); its status and body.
async fn read_reply(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u16, Vec<u8>)> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some(end) = raw_http::find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status: u16 = head.get(9..12)?.parse().ok()?;
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if let Some(length) = length
                && buf.len() >= end + 4 + length
            {
                let body = buf[end + 4..end + 4 + length].to_vec();
                buf.drain(..end + 4 + length);
                return Some((status, body));
            }
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One request on a new connection; the reply, if any.
async fn once(addr: &str, request: &[u8]) -> Option<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream.set_nodelay(true).ok()?;
    stream.write_all(request).await.ok()?;
    read_reply(&mut stream, &mut Vec::new()).await
}

fn structured(body: &[u8]) -> Value {
    let message: Value = serde_json::from_slice(body).unwrap_or_default();
    message["result"]["structuredContent"].clone()
}

async fn mint(addr: &str, admin: &str, name: &str) -> String {
    let request = call(
        addr,
        admin,
        "create_token",
        json!({"name": name, "parent": "none"}),
        false,
    );
    let (_, body) = once(addr, &request).await.expect("create_token");
    structured(&body)["token"].as_str().unwrap().to_owned()
}

/// The kinds of honest calls, in the order they are made.
const KINDS: [&str; 3] = ["whoami", "test__read_note", "web__read_note"];

struct Phase {
    name: String,
    /// Per kind: p50, p99, calls.
    kinds: Vec<(Duration, Duration, usize)>,
    failed: usize,
    peak_rss_mib: f64,
    /// CPU the server spent per second (its stdio upstream is another process).
    server_cpu: f64,
    /// CPU the attacker's process spent per second.
    attacker_cpu: f64,
}

/// The honest client for `seconds`: per kind, the latencies of its calls; and the failures.
async fn honest(addr: &str, secret: &str, seconds: u64) -> (Vec<Vec<Duration>>, usize) {
    let requests: Vec<Vec<u8>> = KINDS
        .iter()
        .map(|tool| call(addr, secret, tool, json!({}), false))
        .collect();
    let mut latencies = vec![Vec::new(); KINDS.len()];
    let mut failed = 0;
    let stop = Instant::now() + Duration::from_secs(seconds);
    let mut conn: Option<(TcpStream, Vec<u8>)> = None;
    let mut i = 0usize;
    while Instant::now() < stop {
        let kind = i % KINDS.len();
        i += 1;
        let started = Instant::now();
        if conn.is_none() {
            conn = TcpStream::connect(addr).await.ok().map(|s| {
                let _ = s.set_nodelay(true);
                (s, Vec::new())
            });
        }
        let Some((stream, buf)) = conn.as_mut() else {
            failed += 1;
            continue;
        };
        let reply = async {
            stream.write_all(&requests[kind]).await.ok()?;
            read_reply(stream, buf).await
        };
        match tokio::time::timeout(Duration::from_secs(10), reply).await {
            Ok(Some((200, body))) if !body.windows(13).any(|w| w == b"\"isError\":true") => {
                latencies[kind].push(started.elapsed());
            }
            _ => {
                failed += 1;
                conn = None;
            }
        }
    }
    (latencies, failed)
}

/// [`honest`] on a thread and runtime of its own.
fn honest_apart(addr: &str, secret: &str, seconds: u64) -> (Vec<Vec<Duration>>, usize) {
    let (addr, secret) = (addr.to_owned(), secret.to_owned());
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(honest(&addr, &secret, seconds))
    })
    .join()
    .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Starts `attack`'s tasks; they run until `stop`.
fn launch(
    attack: &str,
    addr: &str,
    secret: &str,
    client_id: &str,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let spawn_loop = |request: Vec<u8>, count: usize, hold: bool| {
        (0..count)
            .map(|_| {
                let (addr, stop, request) = (addr.to_owned(), Arc::clone(stop), request.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut stream) = TcpStream::connect(&addr).await else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        if stream.write_all(&request).await.is_err() {
                            continue;
                        }
                        if hold {
                            // Never reads: holds the call and its connection while it lasts.
                            let wait = async {
                                while !stop.load(Ordering::Relaxed) {
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                            };
                            let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
                        } else {
                            let _ = tokio::time::timeout(
                                Duration::from_secs(35),
                                read_reply(&mut stream, &mut Vec::new()),
                            )
                            .await;
                        }
                    }
                })
            })
            .collect::<Vec<_>>()
    };
    match attack {
        "connections" => tasks.extend(spawn_loop(
            call(addr, secret, "test__slow", json!({"seconds": 30}), false),
            300,
            false,
        )),
        "slots" => tasks.extend(spawn_loop(
            call(addr, secret, "web__slow", json!({"seconds": 2}), false),
            48,
            false,
        )),
        "progress" => tasks.extend(spawn_loop(
            call(
                addr,
                secret,
                "test__flood_progress",
                json!({"count": 50_000}),
                true,
            ),
            4,
            true,
        )),
        "consent" => {
            let (verifier_challenge, redirect) = (
                "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                "http://127.0.0.1:9/cb",
            );
            let query = serde_urlencoded::to_string([
                ("response_type", "code"),
                ("client_id", client_id),
                ("redirect_uri", redirect),
                ("code_challenge", verifier_challenge),
                ("code_challenge_method", "S256"),
            ])
            .unwrap();
            let request = format!("GET /oauth/authorize?{query} HTTP/1.1\r\nhost: {addr}\r\n\r\n");
            let (addr, stop) = (addr.to_owned(), Arc::clone(stop));
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut stream) = TcpStream::connect(&addr).await else {
                        continue;
                    };
                    let mut buf = Vec::new();
                    for _ in 0..100 {
                        if stream.write_all(request.as_bytes()).await.is_err()
                            || read_reply(&mut stream, &mut buf).await.is_none()
                        {
                            break;
                        }
                    }
                }
            }));
        }
        "pipelined" => {
            // 24 kept-alive connections, each sending 16 `whoami` at a time and reading the
            // 16 answers, as fast as they come: cheap requests, but many queued at once.
            let burst = call(addr, secret, "whoami", json!({}), false).repeat(16);
            for _ in 0..24 {
                let (addr, stop, burst) = (addr.to_owned(), Arc::clone(stop), burst.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut stream) = TcpStream::connect(&addr).await else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        let mut buf = Vec::new();
                        'kept: while !stop.load(Ordering::Relaxed) {
                            if stream.write_all(&burst).await.is_err() {
                                break;
                            }
                            for _ in 0..16 {
                                if read_reply(&mut stream, &mut buf).await.is_none() {
                                    break 'kept;
                                }
                            }
                        }
                    }
                }));
            }
        }
        "oversized" => {
            for bucket in ["test", "web"] {
                tasks.extend(spawn_loop(
                    call(
                        addr,
                        secret,
                        &format!("{bucket}__big"),
                        json!({"bytes": 17 << 20}),
                        false,
                    ),
                    1,
                    false,
                ));
            }
        }
        other => panic!("unknown attack {other}"),
    }
    tasks
}

/// The attacker's process: runs one attack until it is killed.
fn attacker(attack: &str) {
    let (addr, secret, client_id) = (
        env_or("ATTACK_ADDR", ""),
        env_or("ATTACK_SECRET", ""),
        env_or("ATTACK_CLIENT_ID", ""),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let _tasks = launch(attack, &addr, &secret, &client_id, &stop);
        std::future::pending::<()>().await
    });
}

/// Starts the attacker's process for `attack` at the priority of ATTACK_NICE.
fn start_attacker(attack: &str, addr: &str, secret: &str, client_id: &str) -> Killed {
    let nice = env_or("ATTACK_NICE", "19");
    let child = Command::new("nice")
        .args(["-n", &nice])
        .arg(std::env::current_exe().unwrap())
        .env("UNDER_ATTACK_ROLE", attack)
        .env("ATTACK_ADDR", addr)
        .env("ATTACK_SECRET", secret)
        .env("ATTACK_CLIENT_ID", client_id)
        .stdin(Stdio::null())
        .spawn()
        .expect("start the attacker");
    Killed(child)
}

/// A fresh server in front of fresh upstreams, with its admin secret.
struct Served {
    addr: String,
    admin: String,
    pid: u32,
    // Dropped in this order: the server, then its HTTP upstream, then the directory.
    _server: Killed,
    _web: Killed,
    _dir: tempfile::TempDir,
}

fn start(bin: &str) -> Served {
    let dir = tempfile::TempDir::new().unwrap();
    // The HTTP upstream.
    let fixture = fixture();
    let mut web = Command::new(&fixture)
        .args(["--http", "127.0.0.1:0"])
        .env("FIXTURE_HOSTILE", "1")
        .env("FIXTURE_MAX_PROTOCOL", "2025-11-25")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the test upstream");
    let mut first = String::new();
    BufReader::new(web.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let web_url = format!(
        "http://{}/mcp",
        first.trim().trim_start_matches("listening on ")
    );
    let web = Killed(web);
    let upstreams = dir.path().join("upstreams.json");
    std::fs::write(
        &upstreams,
        json!({"mcpServers": {
            "test": {"command": fixture, "env": {"FIXTURE_HOSTILE": "1"}},
            "web": {"type": "http", "url": web_url},
        }})
        .to_string(),
    )
    .unwrap();

    let data = dir.path().join("data");
    let mut child = Command::new(bin)
        .arg("--data-dir")
        .arg(&data)
        .args(["serve", "--http", "127.0.0.1:0", "--max-connections", "256"])
        .arg("--upstreams")
        .arg(&upstreams)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tokenwarden");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let admin = loop {
        let line = lines.next().expect("server stderr").unwrap();
        if let Some(start) = line.find("mcp_") {
            break line[start..start + 40].to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let pid = child.id();
    let server = Killed(child);
    let holder = data.join("server.json");
    let addr = loop {
        if let Ok(text) = std::fs::read_to_string(&holder)
            && let Ok(v) = serde_json::from_str::<Value>(&text)
            && let Some(addr) = v["http"].as_str()
        {
            break addr.to_owned();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Served {
        addr,
        admin,
        pid,
        _server: server,
        _web: web,
        _dir: dir,
    }
}

/// Waits until both upstreams answer the honest token; registers an OAuth client. Returns
/// the honest token's secret and the client's id.
async fn ready(served: &Served) -> (String, String) {
    let addr = &served.addr;
    let honest_secret = mint(addr, &served.admin, "honest").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, failed) = honest(addr, &honest_secret, 1).await;
        if failed == 0 && ok.iter().all(|k| !k.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "the upstreams never connected");
    }
    let body =
        json!({"client_name": "bench", "redirect_uris": ["http://127.0.0.1:9/cb"]}).to_string();
    let registration = format!(
        "POST /oauth/register HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len(),
    );
    let (_, body) = once(addr, registration.as_bytes()).await.expect("register");
    let client_id = serde_json::from_slice::<Value>(&body).unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    (honest_secret, client_id)
}

/// One phase: `attack` (or none) by a token of its own while the honest client measures.
async fn measure(
    served: &Served,
    attack: &str,
    (honest_secret, client_id): (&str, &str),
    seconds: u64,
) -> Phase {
    let (addr, pid) = (&served.addr, served.pid);
    let attacker = mint(addr, &served.admin, attack).await;
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(rss_kib(pid, "VmRSS:")));
    let sampler = {
        let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid, "VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let attacking = (attack != "none").then(|| start_attacker(attack, addr, &attacker, client_id));
    // Let the attack reach full speed first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_before = proc_stat::cpu_time(&pid.to_string());
    let attacker_pid = attacking.as_ref().map(|a| a.0.id().to_string());
    let attacker_before = attacker_pid.as_deref().map(proc_stat::cpu_time);
    let started = Instant::now();
    let (latencies, failed) = {
        let (addr, secret) = (addr.clone(), honest_secret.to_owned());
        tokio::task::spawn_blocking(move || honest_apart(&addr, &secret, seconds))
            .await
            .unwrap()
    };
    let elapsed = started.elapsed().as_secs_f64();
    let server_cpu = proc_stat::cpu_time(&pid.to_string())
        .saturating_sub(cpu_before)
        .as_secs_f64()
        / elapsed;
    let attacker_cpu = attacker_pid
        .as_deref()
        .zip(attacker_before)
        .map_or(0.0, |(pid, before)| {
            proc_stat::cpu_time(pid)
                .saturating_sub(before)
                .as_secs_f64()
                / elapsed
        });
    stop.store(true, Ordering::Relaxed);
    drop(attacking);
    let _ = sampler.join();
    let kinds = latencies
        .into_iter()
        .map(|mut kind| {
            kind.sort();
            (percentile(&kind, 0.50), percentile(&kind, 0.99), kind.len())
        })
        .collect();
    Phase {
        name: attack.to_owned(),
        kinds,
        failed,
        peak_rss_mib: peak.load(Ordering::Relaxed) as f64 / 1024.0,
        server_cpu,
        attacker_cpu,
    }
}

fn print_phase(p: &Phase) {
    let cells: Vec<String> = KINDS
        .iter()
        .zip(&p.kinds)
        .map(|(kind, (p50, p99, n))| {
            format!(
                "{kind} p50 {:.3} / p99 {:.3} ms ({n})",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3
            )
        })
        .collect();
    println!(
        "{:<12} {}  failed {}  peak RSS {:.1} MiB  server CPU {:.2} cores  attacker CPU {:.2} cores",
        p.name,
        cells.join("  "),
        p.failed,
        p.peak_rss_mib,
        p.server_cpu,
        p.attacker_cpu
    );
}

/// The attack's phase against the unloaded phase on the same server, by SPEC §16.
fn verdict(p: &Phase, base: &Phase) -> String {
    let growth = p.peak_rss_mib - base.peak_rss_mib;
    let ratios: Vec<String> = KINDS
        .iter()
        .zip(p.kinds.iter().zip(&base.kinds))
        .map(|(kind, ((_, p99, _), (_, base_p99, _)))| {
            let ratio = p99.as_secs_f64() / base_p99.as_secs_f64().max(1e-9);
            format!(
                "{kind} {ratio:.2}x {}",
                if ratio <= 3.0 { "met" } else { "NOT met" }
            )
        })
        .collect();
    format!(
        "{:<12} p99: {}; peak RSS {:+.1} MiB {}; {} failed",
        p.name,
        ratios.join(", "),
        growth,
        if growth <= 256.0 { "met" } else { "NOT met" },
        p.failed
    )
}

fn main() {
    if let Ok(attack) = std::env::var("UNDER_ATTACK_ROLE") {
        return attacker(&attack);
    }
    let bin = env_or("ATTACK_BIN", env!("CARGO_BIN_EXE_tokenwarden"));
    let seconds: u64 = env_or("ATTACK_SECONDS", "5").parse().unwrap();
    let chosen = env_or(
        "ATTACKS",
        "connections,slots,progress,consent,oversized,pipelined",
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Each attack against a fresh server and upstreams, unloaded first: what one attack
    // leaves running (30 s calls, a flood the upstream is still sending) never counts
    // against the next.
    let mut verdicts = Vec::new();
    for attack in chosen.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let served = start(&bin);
        runtime.block_on(async {
            let (honest_secret, client_id) = ready(&served).await;
            let keys = (honest_secret.as_str(), client_id.as_str());
            let base = measure(&served, "none", keys, seconds).await;
            print_phase(&base);
            let p = measure(&served, attack, keys, seconds).await;
            print_phase(&p);
            verdicts.push(verdict(&p, &base));
        });
    }
    println!("\nSPEC §16: p99 within 3x unloaded (on the same server), RSS within +256 MiB");
    for line in verdicts {
        println!("{line}");
    }
}
