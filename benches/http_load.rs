//! HTTP load generator: `tools/call whoami` over streamable HTTP with N concurrent clients,
//! against the server with its bearer guard and the same server with the guard replaced by a
//! fixed caller, alternating rounds in one run. Loopback only; bounded in time and requests.
//!
//! Run: `cargo bench --features bench-internals --bench http_load`
//! Environment: LOAD_CLIENTS (16), LOAD_SECONDS per round (5), LOAD_ROUNDS per variant (3).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokenwarden::http::{self, HttpConfig};
use tokenwarden::service::requests::CreateToken;
use tokenwarden::service::{Caller, Service, ServiceConfig};
use tokio_util::sync::CancellationToken;

const MAX_REQUESTS_PER_ROUND: usize = 500_000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn serve(app: axum::Router, shutdown: CancellationToken) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(http::serve(
        listener,
        app,
        http::ConnectionLimits::default(),
        shutdown,
    ));
    addr
}

/// One client: opens a session, then calls whoami until the deadline; returns latencies.
async fn client(
    url: String,
    secret: String,
    deadline: Instant,
    budget: Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<Duration> {
    use std::sync::atomic::Ordering;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let post = |body: String, session: Option<&str>| {
        let mut r = http
            .post(&url)
            .header("authorization", format!("Bearer {secret}"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        if let Some(s) = session {
            r = r
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", "2025-11-25");
        }
        r.send()
    };
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"loadgen","version":"1"}}});
    let response = post(init.to_string(), None).await.unwrap();
    let session = response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    response.bytes().await.unwrap();
    post(
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string(),
        Some(&session),
    )
    .await
    .unwrap()
    .bytes()
    .await
    .unwrap();
    let mut latencies = Vec::new();
    let mut id = 1u64;
    while Instant::now() < deadline && budget.fetch_sub(1, Ordering::Relaxed) > 0 {
        let body = json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"whoami","arguments":{}}});
        id += 1;
        let start = Instant::now();
        let response = post(body.to_string(), Some(&session)).await.unwrap();
        assert!(
            response.status().is_success(),
            "status {}",
            response.status()
        );
        let text = response.text().await.unwrap();
        assert!(text.contains("\"admin\":true"), "unexpected reply: {text}");
        latencies.push(start.elapsed());
    }
    latencies
}

struct Round {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

async fn round(url: &str, secret: &str, clients: usize, seconds: u64) -> Round {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let budget = Arc::new(std::sync::atomic::AtomicUsize::new(MAX_REQUESTS_PER_ROUND));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(client(
                url.to_owned(),
                secret.to_owned(),
                deadline,
                Arc::clone(&budget),
            ))
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    all.sort();
    let q = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Round {
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50: q(0.5),
        p99: q(0.99),
    }
}

fn main() {
    let clients = env_or("LOAD_CLIENTS", 16);
    let seconds = env_or("LOAD_SECONDS", 5) as u64;
    let rounds = env_or("LOAD_ROUNDS", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let dir = tempfile::TempDir::new().unwrap();
        let service = Arc::new(Service::open(dir.path(), ServiceConfig::default()).unwrap());
        let admin = service
            .create_token(&Caller::Owner, CreateToken { name: "load".into(), admin: Some(true), ..Default::default() })
            .unwrap();
        let config = HttpConfig::default();
        let shutdown = CancellationToken::new();
        let guarded = serve(http::router(Arc::clone(&service), &config, shutdown.clone()).unwrap(), shutdown.clone()).await;
        let unguarded = serve(http::unguarded_router(
            Arc::clone(&service),
            &config,
            shutdown.clone(),
            admin.record.id.clone(),
        ), shutdown.clone())
        .await;
        println!("tools/call whoami over streamable HTTP: {clients} clients, {seconds} s rounds, {rounds} rounds per variant");
        let mut with_guard = Vec::new();
        let mut without_guard = Vec::new();
        for r in 0..rounds {
            for (label, addr, out) in [
                ("guard   ", guarded, &mut with_guard),
                ("no guard", unguarded, &mut without_guard),
            ] {
                let result = round(&format!("http://{addr}/mcp"), &admin.token, clients, seconds).await;
                println!(
                    "round {} {label}: {:>8.0} req/s  p50 {:>9.1?}  p99 {:>9.1?}",
                    r + 1,
                    result.rps,
                    result.p50,
                    result.p99
                );
                out.push(result);
            }
        }
        let mean = |v: &[Round]| v.iter().map(|r| r.rps).sum::<f64>() / v.len() as f64;
        let (g, u) = (mean(&with_guard), mean(&without_guard));
        println!("mean throughput: guard {g:.0} req/s, no guard {u:.0} req/s, ratio {:.1}%", 100.0 * g / u);
        shutdown.cancel();
    });
}
