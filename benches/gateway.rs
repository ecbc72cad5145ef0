//! The gateway's cost (SPEC §9): `tools/call` of server-everything's `echo` through the shipped
//! binary (`tokenwarden serve --http … --upstreams …`, a separate process) versus the same
//! upstream called directly, both over streamable HTTP with kept-alive connections, in one
//! run, alternating rounds. Prints p50/p99 latency and calls per second for each, the added
//! p50 and the throughput ratio; then one client alternating a direct and a gateway call, pair
//! by pair, whose added p50 does not move with the host between rounds.
//!
//! `cargo bench --bench gateway`; `GW_CLIENTS` (default `1,4`), `GW_SECONDS` per round (5),
//! `GW_ROUNDS` per variant (3), `GW_BIN` (another build of tokenwarden to measure, e.g. an
//! older commit's), `GW_PROTOCOL` (default 2025-11-25, the revision the gateway's
//! own client negotiates with server-everything, so both legs speak the same one),
//! `GW_NO_OBSERVE=1` (a binary built with `--features bench-internals`: a second gateway
//! without the access log and the metrics, "quiet", measured in every round after the first,
//! to show their cost). Needs node and npm
//! (installs the pinned server-everything into `target/npm` if missing, like the tests).

#[path = "support/proc_stat.rs"]
mod proc_stat;
use proc_stat::cpu_time;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The protocol revision the load generator speaks (`GW_PROTOCOL`, default 2025-11-25).
static PROTOCOL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("GW_PROTOCOL").unwrap_or_else(|_| "2025-11-25".to_owned())
});

const EVERYTHING: &str = "@modelcontextprotocol/server-everything@2026.8.31";

fn npm_everything() -> PathBuf {
    let prefix = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/npm");
    let script = prefix.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    if !script.exists() {
        let ok = Command::new("npm")
            .arg("install")
            .arg("--prefix")
            .arg(&prefix)
            .args(["--no-audit", "--no-fund", "--silent", EVERYTHING])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "npm install {EVERYTHING} failed");
    }
    script
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with stderr piped and returns once a line containing `ready` appears, with
/// that line and every line before it.
fn start(mut cmd: Command, ready: &str) -> (Proc, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let ready = ready.to_owned();
    std::thread::spawn(move || {
        let mut seen = String::new();
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(&ready) {
                    let _ = tx.send(seen.clone());
                    sent = true;
                }
            }
        }
    });
    let seen = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("process did not become ready");
    (Proc(child), seen)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One kept-alive MCP session over raw HTTP.
struct Session {
    http: reqwest::Client,
    url: String,
    bearer: Option<String>,
    session: Option<String>,
}

impl Session {
    async fn open(url: &str, bearer: Option<&str>) -> Session {
        let mut s = Session {
            http: reqwest::Client::builder().build().unwrap(),
            url: url.to_owned(),
            bearer: bearer.map(str::to_owned),
            session: None,
        };
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL.as_str(), "capabilities": {},
            "clientInfo": {"name": "gateway-bench", "version": "1"}}});
        let response = s.request(&init).send().await.unwrap();
        s.session = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let _ = response.text().await;
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let _ = s.request(&initialized).send().await.unwrap().text().await;
        s
    }

    fn request(&self, body: &Value) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", PROTOCOL.as_str())
            .body(body.to_string());
        if let Some(b) = &self.bearer {
            r = r.bearer_auth(b);
        }
        if let Some(s) = &self.session {
            r = r.header("mcp-session-id", s);
        }
        r
    }

    async fn echo(&self, id: u64, tool: &str) -> Duration {
        let arguments = if tool == "whoami" {
            json!({})
        } else {
            json!({"message": "ping"})
        };
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}});
        let started = Instant::now();
        let text = self
            .request(&body)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let elapsed = started.elapsed();
        assert!(
            text.contains("ping") || (tool == "whoami" && text.contains("admin")),
            "unexpected answer: {text}"
        );
        elapsed
    }
}

struct Round {
    latencies: Vec<Duration>,
    seconds: f64,
}

async fn round(url: &str, bearer: Option<&str>, tool: &str, clients: usize, seconds: u64) -> Round {
    let mut sessions = Vec::new();
    for _ in 0..clients {
        sessions.push(Session::open(url, bearer).await);
    }
    // Warm up each connection.
    for s in &sessions {
        for i in 0..20 {
            s.echo(i, tool).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in sessions {
        let tool = tool.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut id = 100;
            while Instant::now() < deadline {
                latencies.push(s.echo(id, &tool).await);
                id += 1;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    Round {
        latencies,
        seconds: started.elapsed().as_secs_f64(),
    }
}
/// Context switches (voluntary and not) of every thread of a process so far: each is a
/// thread that went to sleep waiting for something, or was preempted.
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// What the upstream (node) and tokenwarden spent per call over some rounds.
#[derive(Default)]
struct Cost {
    calls: usize,
    node_cpu: Duration,
    tw_cpu: Duration,
    tw_switches: u64,
}

impl Cost {
    fn snapshot(pids: (u32, u32)) -> (Duration, Duration, u64) {
        (
            cpu_time(&pids.0.to_string()),
            cpu_time(&pids.1.to_string()),
            context_switches(pids.1),
        )
    }

    fn add(&mut self, pids: (u32, u32), before: (Duration, Duration, u64), calls: usize) {
        let after = Cost::snapshot(pids);
        self.calls += calls;
        self.node_cpu += after.0 - before.0;
        self.tw_cpu += after.1 - before.1;
        self.tw_switches += after.2 - before.2;
    }

    fn show(&self) -> String {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / self.calls.max(1) as f64;
        format!(
            "CPU per call: upstream {:.0} µs, tokenwarden {:.0} µs ({:.1} context switches)",
            per(self.node_cpu),
            per(self.tw_cpu),
            self.tw_switches as f64 / self.calls.max(1) as f64
        )
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and `cargo test --benches` probe benches this way.
    }
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    let client_counts: Vec<usize> = env("GW_CLIENTS", "1,4")
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let seconds: u64 = env("GW_SECONDS", "5").parse().unwrap_or(5);
    let rounds: usize = env("GW_ROUNDS", "3").parse().unwrap_or(3);

    let port = free_port();
    let mut node = Command::new("node");
    node.arg(npm_everything())
        .arg("streamableHttp")
        .env("PORT", port.to_string());
    let (_everything, _) = start(node, "listening on port");
    let direct_url = format!("http://127.0.0.1:{port}/mcp");

    let dir = tempfile::tempdir().unwrap();
    let upstreams = dir.path().join("upstreams.json");
    std::fs::write(
        &upstreams,
        json!({"mcpServers": {"everything": {"type": "http", "url": direct_url}}}).to_string(),
    )
    .unwrap();
    let binary = env("GW_BIN", env!("CARGO_BIN_EXE_tokenwarden"));
    let no_observe = std::env::var("GW_NO_OBSERVE").is_ok_and(|v| v == "1");
    // A gateway: the process, its URL and its admin secret; `quiet` without the access log
    // and the metrics (a `bench-internals` build only).
    let gateway = |data: &str, quiet: bool| {
        let mut tw = Command::new(&binary);
        tw.arg("--data-dir")
            .arg(dir.path().join(data))
            .args(["--log-level", "warn,tokenwarden=info,upstream=info"])
            .args(["serve", "--http", "127.0.0.1:0", "--upstreams"])
            .arg(&upstreams);
        if quiet {
            tw.env("TOKENWARDEN_BENCH_NO_OBSERVE", "1");
        }
        let (process, log) = start(tw, "serving MCP over HTTP at http://");
        assert!(
            !quiet || log.contains("bench-internals: no access log, no metrics"),
            "GW_NO_OBSERVE needs a binary built with the bench-internals feature: \
             cargo bench --features bench-internals --bench gateway"
        );
        let addr = log
            .split("serving MCP over HTTP at http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .to_owned();
        let start_at = log.find("mcp_").expect("admin secret in the banner");
        let admin: String = log[start_at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        (process, format!("http://{addr}"), admin)
    };
    let (_tokenwarden, gateway_url, admin) = gateway("data", false);
    let quiet = no_observe.then(|| gateway("data-quiet", true));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pids = (_everything.0.id(), _tokenwarden.0.id());
    let quiet_pids = quiet.as_ref().map(|q| (_everything.0.id(), q.0.0.id()));
    runtime.block_on(async {
        // Wait until the gateways have connected to the upstream.
        let mut gateways = vec![(gateway_url.clone(), admin.clone())];
        gateways.extend(quiet.iter().map(|q| (q.1.clone(), q.2.clone())));
        for (gateway_url, admin) in &gateways {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = Session::open(gateway_url, Some(admin)).await;
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "everything__echo", "arguments": {"message": "ping"}}});
            let text = s.request(&body).send().await.unwrap().text().await.unwrap();
            if text.contains("ping") && !text.contains("\"isError\":true") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "gateway never reached the upstream: {text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        }
        println!(
            "tools/call echo over streamable HTTP, kept-alive connections: {seconds} s rounds, \
             {rounds} rounds per variant, alternating{}",
            if no_observe {
                "; and a second gateway without access log and metrics (\"quiet\")"
            } else {
                ""
            }
        );
        for &clients in &client_counts {
            let mut direct = Vec::new();
            let mut through = Vec::new();
            let (mut direct_calls, mut direct_secs, mut gw_calls, mut gw_secs) = (0, 0.0, 0, 0.0);
            let (mut direct_cost, mut gw_cost) = (Cost::default(), Cost::default());
            let (mut quiet_calls, mut quiet_secs, mut quiet_cost) = (0, 0.0, Cost::default());
            let mut quiet_latencies = Vec::new();
            for r in 0..rounds {
                let before = Cost::snapshot(pids);
                let d = round(&direct_url, None, "echo", clients, seconds).await;
                direct_cost.add(pids, before, d.latencies.len());
                direct_calls += d.latencies.len();
                direct_secs += d.seconds;
                direct.extend(d.latencies);
                // The quiet gateway goes before the other every second round, so that neither
                // always follows the direct round.
                let mut quiet_round = async || {
                    if let (Some((_, url, secret)), Some(qp)) = (&quiet, quiet_pids) {
                        let before = Cost::snapshot(qp);
                        let q = round(url, Some(secret), "everything__echo", clients, seconds).await;
                        quiet_cost.add(qp, before, q.latencies.len());
                        quiet_calls += q.latencies.len();
                        quiet_secs += q.seconds;
                        quiet_latencies.extend(q.latencies);
                    }
                };
                if r % 2 == 1 {
                    quiet_round().await;
                }
                let before = Cost::snapshot(pids);
                let g = round(
                    &gateway_url,
                    Some(&admin),
                    "everything__echo",
                    clients,
                    seconds,
                )
                .await;
                gw_cost.add(pids, before, g.latencies.len());
                gw_calls += g.latencies.len();
                gw_secs += g.seconds;
                through.extend(g.latencies);
                if r % 2 == 0 {
                    quiet_round().await;
                }
            }
            direct.sort();
            through.sort();
            // tokenwarden's own floor: a tool it answers itself, same client, same connection
            // pattern.
            let mut own_cost = Cost::default();
            let before = Cost::snapshot(pids);
            let mut own = round(&gateway_url, Some(&admin), "whoami", clients, seconds).await;
            own_cost.add(pids, before, own.latencies.len());
            let own_rate = own.latencies.len() as f64 / own.seconds;
            own.latencies.sort();
            let d_rate = direct_calls as f64 / direct_secs;
            let g_rate = gw_calls as f64 / gw_secs;
            let (d50, g50) = (percentile(&direct, 0.5), percentile(&through, 0.5));
            println!(
                "{clients} client(s): direct    p50 {:>7.3} ms  p99 {:>7.3} ms  {:>7.0} calls/s",
                d50.as_secs_f64() * 1e3,
                percentile(&direct, 0.99).as_secs_f64() * 1e3,
                d_rate
            );
            println!(
                "{clients} client(s): gateway   p50 {:>7.3} ms  p99 {:>7.3} ms  {:>7.0} calls/s",
                g50.as_secs_f64() * 1e3,
                percentile(&through, 0.99).as_secs_f64() * 1e3,
                g_rate
            );
            println!(
                "{clients} client(s): whoami    p50 {:>7.3} ms  p99 {:>7.3} ms  {:>7.0} calls/s  (tokenwarden alone, for scale)",
                percentile(&own.latencies, 0.5).as_secs_f64() * 1e3,
                percentile(&own.latencies, 0.99).as_secs_f64() * 1e3,
                own_rate
            );
            println!(
                "{clients} client(s): added p50 {:.3} ms; gateway throughput {:.1}% of direct",
                (g50.as_secs_f64() - d50.as_secs_f64()) * 1e3,
                100.0 * g_rate / d_rate
            );
            println!("{clients} client(s): direct  {}", direct_cost.show());
            println!("{clients} client(s): gateway {}", gw_cost.show());
            println!("{clients} client(s): whoami  {}", own_cost.show());
            if quiet.is_some() {
                quiet_latencies.sort();
                let q_rate = quiet_calls as f64 / quiet_secs;
                println!(
                    "{clients} client(s): quiet     p50 {:>7.3} ms  p99 {:>7.3} ms  {:>7.0} calls/s; \
                     with access log and metrics {:.1}% of its throughput; quiet {}",
                    percentile(&quiet_latencies, 0.5).as_secs_f64() * 1e3,
                    percentile(&quiet_latencies, 0.99).as_secs_f64() * 1e3,
                    q_rate,
                    100.0 * g_rate / q_rate,
                    quiet_cost.show()
                );
            }
        }
        // Paired: one client alternating a direct call and a gateway call, so that both meet
        // the same moment of the host (round-to-round drift, which moves the direct p50 by
        // tenths of a millisecond, cancels out of each pair).
        let direct_session = Session::open(&direct_url, None).await;
        let gateway_session = Session::open(&gateway_url, Some(&admin)).await;
        for i in 0..20 {
            direct_session.echo(i, "echo").await;
            gateway_session.echo(i, "everything__echo").await;
        }
        let (mut direct, mut through, mut added) = (Vec::new(), Vec::new(), Vec::new());
        let deadline = Instant::now() + Duration::from_secs(seconds * rounds as u64);
        let mut id = 100;
        while Instant::now() < deadline {
            let d = direct_session.echo(id, "echo").await;
            let g = gateway_session.echo(id, "everything__echo").await;
            direct.push(d);
            through.push(g);
            added.push(g.as_secs_f64() - d.as_secs_f64());
            id += 1;
        }
        direct.sort();
        through.sort();
        added.sort_by(f64::total_cmp);
        println!(
            "paired, 1 client, {} pairs: direct p50 {:.3} ms, gateway p50 {:.3} ms, added p50 {:.3} ms, median added per pair {:.3} ms",
            added.len(),
            percentile(&direct, 0.5).as_secs_f64() * 1e3,
            percentile(&through, 0.5).as_secs_f64() * 1e3,
            (percentile(&through, 0.5).as_secs_f64() - percentile(&direct, 0.5).as_secs_f64()) * 1e3,
            added[added.len() / 2] * 1e3
        );
    });
}
