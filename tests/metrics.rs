//! The Prometheus metrics (SPEC §14) through the shipped binary: a real Prometheus (Debian's
//! `prometheus` package) scrapes `serve --metrics`, and its query API answers the counts of a
//! known sequence of allowed and refused requests, own and forwarded tool calls; `/metrics` on
//! the main listener is for admin tokens only, and no exposition names a token
//! or carries a secret.
//!
//! Without a `prometheus` binary the first test says so and passes, unless
//! `TOKENWARDEN_REQUIRE_PROMETHEUS` is set (as `.ci/run` does): then it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, bearer, call, connect_http, raw_post};
use reqwest::StatusCode;
use serde_json::{Value, json};

const FIXTURE: &str = env!("CARGO_BIN_EXE_tokenwarden-test-upstream");

/// The `prometheus` binary, on `PATH` or where Debian puts it.
fn prometheus_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("prometheus"))
            .collect::<Vec<_>>()
    });
    on_path
        .chain([PathBuf::from("/usr/bin/prometheus")])
        .find(|path| path.is_file())
}

/// A Prometheus server of its own, scraping one target every second; killed when dropped.
struct Prometheus {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Prometheus {
    /// Starts `binary` with `dir` for its configuration and data, scraping `target`
    /// (`host:port`) at `/metrics`, and waits until it is ready.
    async fn start(binary: &Path, dir: &Path, target: &str) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: tokenwarden\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let mut last_log = String::new();
        // The port is free when picked; another process may take it before Prometheus does.
        for _ in 0..3 {
            let port = free_port();
            let log = dir.join(format!("prometheus-{port}.log"));
            let child = Command::new(binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("tsdb").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("start prometheus");
            let mut prometheus = Prometheus {
                child,
                base: format!("http://127.0.0.1:{port}"),
                log,
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = prometheus.child.try_wait() {
                    break;
                }
                let ready = reqwest::get(format!("{}/-/ready", prometheus.base)).await;
                if ready.is_ok_and(|r| r.status().is_success()) {
                    return prometheus;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            last_log = std::fs::read_to_string(&prometheus.log).unwrap_or_default();
        }
        panic!("prometheus did not start:\n{last_log}");
    }

    /// The value of `expr` (an instant query that yields at most one series), if any.
    async fn query(&self, expr: &str) -> Option<f64> {
        let url =
            url::Url::parse_with_params(&format!("{}/api/v1/query", self.base), [("query", expr)])
                .unwrap();
        let answer: Value = reqwest::get(url.as_str()).await.ok()?.json().await.ok()?;
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        let result = answer["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "{expr} yields several series: {answer}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Waits (30 s at most) until `expr` is `expected`, else fails showing what Prometheus
    /// and the server say.
    async fn expect(&self, expr: &str, expected: f64, metrics_url: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = None;
        while Instant::now() < deadline {
            seen = self.query(expr).await;
            if seen == Some(expected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let exposition = reqwest::get(metrics_url).await.unwrap().text().await;
        panic!(
            "{expr}: expected {expected}, Prometheus says {seen:?}; the server exposes:\n{}",
            exposition.unwrap_or_default()
        );
    }
}

/// The address `serve --metrics 127.0.0.1:0` bound, from its log line.
fn metrics_address(server: &Server) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = server.stderr();
        if let Some(rest) = log.split("serving metrics at http://").nth(1) {
            return rest.split("/metrics").next().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no metrics listener: {log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Rest {
    base: String,
    http: reqwest::Client,
}

impl Rest {
    /// `GET path` with `authorization` as the header's value, if any; the status.
    async fn get(&self, path: &str, authorization: Option<&str>) -> StatusCode {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.send().await.unwrap().status()
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("authorization", bearer(token))
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap_or_default())
    }

    /// Creates a token as `token`; its (id, secret).
    async fn mint(&self, token: &str, body: Value) -> (String, String) {
        let (status, created) = self.post("/v1/tokens", token, body).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        (
            created["id"].as_str().unwrap().to_owned(),
            created["token"].as_str().unwrap().to_owned(),
        )
    }
}

fn rest(server: &Server) -> Rest {
    Rest {
        base: format!("http://{}", server.addr),
        http: reqwest::Client::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_counts_of_a_known_sequence_of_calls() {
    let Some(binary) = prometheus_binary() else {
        assert!(
            std::env::var_os("TOKENWARDEN_REQUIRE_PROMETHEUS").is_none(),
            "TOKENWARDEN_REQUIRE_PROMETHEUS is set but no prometheus binary is installed \
             (apt-get install prometheus)"
        );
        eprintln!(
            "SKIPPED prometheus_scrapes_the_counts_of_a_known_sequence_of_calls: no prometheus \
             binary (apt-get install prometheus; set TOKENWARDEN_REQUIRE_PROMETHEUS=1 to fail \
             instead)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let upstreams = dir.path().join("upstreams.json");
    let fixture = json!({"command": FIXTURE, "env": {"FIXTURE_LOG": dir.path().join("up.log")}});
    std::fs::write(
        &upstreams,
        json!({"mcpServers": {"up": fixture}}).to_string(),
    )
    .unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--upstreams",
            upstreams.to_str().unwrap(),
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let target = metrics_address(&server);
    let metrics_url = format!("http://{target}/metrics");
    let prometheus = Prometheus::start(&binary, dir.path(), &target).await;

    // Only `/metrics` on the metrics listener, and without a token.
    let elsewhere = reqwest::get(format!("http://{target}/mcp")).await.unwrap();
    assert_eq!(elsewhere.status(), StatusCode::NOT_FOUND);
    let scraped = reqwest::get(&metrics_url).await.unwrap();
    assert_eq!(
        scraped.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );

    // The upstream connects in the background: wait for it on the metrics listener, which
    // counts nothing itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("tokenwarden_upstream_state{bucket=\"up\",state=\"connected\"} 1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the upstream never connected:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let api = rest(&server);
    let admin = server.admin();
    // REST, allowed: 2 mints, 3 whoami, 1 list (refused by the allowlist), 1 pause = 7.
    let allowlist = ["whoami", "up__read_note", "up__fail"];
    let (_, agent) = api
        .mint(admin, json!({"name": "agent", "tools": allowlist}))
        .await;
    let (paused_id, paused) = api.mint(admin, json!({"name": "to pause"})).await;
    for _ in 0..3 {
        assert_eq!(
            api.get("/v1/whoami", Some(&bearer(&agent))).await,
            StatusCode::OK
        );
    }
    let listed = api.get("/v1/tokens", Some(&bearer(&agent))).await;
    assert_eq!(listed, StatusCode::FORBIDDEN);
    let (status, _) = api
        .post(&format!("/v1/tokens/{paused_id}/pause"), admin, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);

    // Refused at the door: a paused token (twice over REST, once on /mcp), no token (once on
    // each), a well-formed secret of no token, a malformed one.
    for _ in 0..2 {
        let refused = api.get("/v1/whoami", Some(&bearer(&paused))).await;
        assert_eq!(refused, StatusCode::UNAUTHORIZED);
    }
    let body = common::initialize_body().to_string();
    let paused_bearer = bearer(&paused);
    let headers = [("authorization", paused_bearer.as_str())];
    let refused = raw_post(&server.url(), &headers, body.clone()).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(raw_post(&server.url(), &[], body).await.status(), 401);
    assert_eq!(api.get("/v1/whoami", None).await, StatusCode::UNAUTHORIZED);
    let unknown = tokenwarden::secret::Secret::generate();
    let refused = api.get("/v1/whoami", Some(&bearer(unknown.expose()))).await;
    assert_eq!(refused, StatusCode::UNAUTHORIZED);
    let refused = api.get("/v1/whoami", Some("Bearer mcp_short")).await;
    assert_eq!(refused, StatusCode::UNAUTHORIZED);

    // Through the gateway: two results, one isError result, one call the allowlist refuses.
    let client = connect_http(&server.url(), &agent).await;
    for _ in 0..2 {
        let (is_error, _) = call(&client, "up__read_note", json!({})).await;
        assert!(!is_error);
    }
    let (is_error, _) = call(&client, "up__fail", json!({})).await;
    assert!(is_error, "the upstream's own error result");
    let (is_error, refusal) = call(&client, "up__write_note", json!({"text": "x"})).await;
    assert!(is_error, "{refusal}");

    let expect = |expr: &'static str, value: f64| prometheus.expect(expr, value, &metrics_url);
    expect(
        r#"tokenwarden_requests_total{front="rest",outcome="allowed"}"#,
        7.0,
    )
    .await;
    expect(
        r#"tokenwarden_requests_total{front="rest",outcome="paused"}"#,
        2.0,
    )
    .await;
    expect(
        r#"tokenwarden_requests_total{front="mcp",outcome="paused"}"#,
        1.0,
    )
    .await;
    expect(r#"sum(tokenwarden_requests_total{outcome="missing"})"#, 2.0).await;
    expect(
        r#"tokenwarden_requests_total{front="rest",outcome="unknown"}"#,
        1.0,
    )
    .await;
    expect(
        r#"tokenwarden_requests_total{front="rest",outcome="malformed"}"#,
        1.0,
    )
    .await;
    expect(
        r#"tokenwarden_tool_calls_total{tool="create_token",outcome="ok"}"#,
        2.0,
    )
    .await;
    expect(
        r#"tokenwarden_tool_calls_total{tool="whoami",outcome="ok"}"#,
        3.0,
    )
    .await;
    expect(
        r#"tokenwarden_tool_calls_total{tool="list_tokens",outcome="forbidden"}"#,
        1.0,
    )
    .await;
    expect(
        r#"tokenwarden_tool_calls_total{tool="pause_token",outcome="ok"}"#,
        1.0,
    )
    .await;
    let gateway = r#"tokenwarden_tool_calls_total{bucket="up",tool="up__read_note",outcome="ok"}"#;
    expect(gateway, 2.0).await;
    expect(
        r#"tokenwarden_tool_calls_total{bucket="up",tool="up__fail",outcome="ok"}"#,
        1.0,
    )
    .await;
    let refused =
        r#"tokenwarden_tool_calls_total{bucket="up",tool="up__write_note",outcome="forbidden"}"#;
    expect(refused, 1.0).await;
    expect(
        r#"tokenwarden_upstream_calls_total{bucket="up",status="ok"}"#,
        2.0,
    )
    .await;
    expect(
        r#"tokenwarden_upstream_calls_total{bucket="up",status="is_error"}"#,
        1.0,
    )
    .await;
    // The refused call never reached the upstream.
    expect(r#"sum(tokenwarden_upstream_calls_total)"#, 3.0).await;
    expect(
        r#"tokenwarden_upstream_call_duration_seconds_count{bucket="up"}"#,
        3.0,
    )
    .await;
    expect(
        r#"tokenwarden_upstream_call_duration_seconds_bucket{bucket="up",le="+Inf"}"#,
        3.0,
    )
    .await;
    expect(
        r#"tokenwarden_upstream_state{bucket="up",state="connected"}"#,
        1.0,
    )
    .await;
    expect(
        r#"tokenwarden_upstream_state{bucket="up",state="unavailable"}"#,
        0.0,
    )
    .await;
    expect("tokenwarden_sessions", 1.0).await;
    expect(r#"tokenwarden_tokens{status="paused"}"#, 1.0).await;
    expect(r#"tokenwarden_tokens{status="active"}"#, 2.0).await;
    expect("tokenwarden_oauth_clients", 0.0).await;
    expect("tokenwarden_store_size_bytes > bool 0", 1.0).await;
    let mcp_allowed = prometheus
        .query(r#"tokenwarden_requests_total{front="mcp",outcome="allowed"}"#)
        .await
        .unwrap_or_default();
    assert!(
        mcp_allowed >= 5.0,
        "initialize and four calls: {mcp_allowed}"
    );
    let upstream_log = std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default();
    assert!(!upstream_log.contains("write_note"), "{upstream_log}");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn metrics_on_the_main_listener_are_for_admin_tokens_and_name_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let api = rest(&server);
    let admin = server.admin();
    let whoami = api
        .http
        .get(format!("{}/v1/whoami", api.base))
        .header("authorization", bearer(admin))
        .send()
        .await
        .unwrap();
    let admin_id = whoami.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (admin_child_id, admin_child) = api
        .mint(admin, json!({"name": "second admin", "admin": true}))
        .await;
    let (child_id, child) = api.mint(admin, json!({"name": "agent"})).await;
    let (paused_admin_id, paused_admin) = api
        .mint(admin, json!({"name": "paused admin", "admin": true}))
        .await;
    let (status, _) = api
        .post(
            &format!("/v1/tokens/{paused_admin_id}/pause"),
            admin,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    assert_eq!(api.get("/metrics", None).await, StatusCode::UNAUTHORIZED);
    let malformed = api.get("/metrics", Some("Bearer not-a-token")).await;
    assert_eq!(malformed, StatusCode::UNAUTHORIZED);
    let paused = api.get("/metrics", Some(&bearer(&paused_admin))).await;
    assert_eq!(paused, StatusCode::UNAUTHORIZED);
    let not_admin = api.get("/metrics", Some(&bearer(&child))).await;
    assert_eq!(not_admin, StatusCode::FORBIDDEN);
    // The paused admin's refused requests are counted, under their reason only.
    for _ in 0..2 {
        let refused = api.get("/v1/tokens", Some(&bearer(&paused_admin))).await;
        assert_eq!(refused, StatusCode::UNAUTHORIZED);
    }

    for token in [admin, admin_child.as_str()] {
        let response = api
            .http
            .get(format!("{}/metrics", api.base))
            .header("authorization", bearer(token))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let text = response.text().await.unwrap();
        for line in [
            r#"tokenwarden_requests_total{front="rest",outcome="paused"} 3"#,
            r#"tokenwarden_requests_total{front="rest",outcome="missing"} 1"#,
            r#"tokenwarden_requests_total{front="rest",outcome="malformed"} 1"#,
            r#"tokenwarden_tool_calls_total{bucket="",tool="create_token",outcome="ok"} 3"#,
            "# TYPE tokenwarden_sessions gauge",
            "# TYPE tokenwarden_tokens gauge",
        ] {
            assert!(text.contains(line), "no {line} in:\n{text}");
        }
        let ids = [&admin_id, &admin_child_id, &child_id, &paused_admin_id];
        assert!(!text.contains("tok_"), "a token id in:\n{text}");
        assert!(!text.contains("mcp_"), "a secret in:\n{text}");
        for id in ids {
            assert!(!text.contains(id.as_str()));
        }
    }
}
