//! `tokenwarden serve`: stdio, streamable HTTP, or both in one process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

#[cfg(unix)]
use super::admin_socket::server::AdminSocket;
use super::{Cli, CliError, open_service};
use crate::http::{self, ConnectionLimits, HttpConfig, SessionLimits};
use crate::mcp::{StdioCaller, TokenServer};
use crate::service::access::{self, AccessLog, AccessRetention};
use crate::service::requests::{CreateToken, ListTokens};
use crate::service::{Caller, Service};

/// How often usage counters are written behind (SPEC §8 allows up to 5 s).
const USAGE_WRITE_BEHIND: Duration = Duration::from_secs(2);
/// Open connections on the `--metrics` listener (the oldest idle one makes room).
const METRICS_CONNECTIONS: usize = 16;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Serve MCP over stdin/stdout (as the owner, or as the token in $TOKENWARDEN_TOKEN).
    #[arg(long)]
    pub stdio: bool,

    /// Serve MCP over streamable HTTP at http://ADDR/mcp, e.g. 127.0.0.1:8787.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,

    /// Also accept this Host header (besides localhost names); repeatable.
    #[arg(long = "allowed-host", value_name = "HOST")]
    pub allowed_hosts: Vec<String>,

    /// Also accept this browser Origin, e.g. https://app.example.com:443; repeatable.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,

    /// Deepest allowed token lineage (a root token is depth 0).
    #[arg(long, default_value_t = 8)]
    pub max_depth: u8,

    /// Live MCP sessions one token may hold over HTTP; opening one more closes its least
    /// recently used.
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sessions_per_token: u32,

    /// Live MCP sessions the HTTP server holds in all; beyond it new sessions get 503.
    #[arg(long, default_value_t = 10_000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sessions: u32,

    /// Open HTTP connections; beyond it the longest-idle connection is closed to make room.
    #[arg(long, default_value_t = 1024, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Requests one token lineage (a root token and every token under it) may have in flight
    /// over HTTP; beyond it, or beyond half of --max-connections, they get 429.
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_inflight_per_token: u32,

    #[command(flatten)]
    pub audit_retention: super::audit::AuditRetentionArgs,

    /// Prune access log entries older than this many days.
    #[arg(long, value_name = "DAYS", default_value_t = AccessRetention::default().max_age_days,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub access_log_retention: u32,

    /// Keep at most this many access log entries (the newest).
    #[arg(long, value_name = "N", default_value_t = AccessRetention::default().max_events,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub access_log_max_events: u64,

    /// The server's URL as clients reach it, e.g. https://tw.example.com behind a TLS reverse
    /// proxy or tunnel: names the OAuth issuer and the protected resource (URL/mcp); its host
    /// and origin are accepted [default: http://ADDR of --http]
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,

    /// Lifetime of an access token issued through OAuth, in seconds (the consent page's default;
    /// never past the approving token's expiry).
    #[arg(long, default_value_t = 3600, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(60..=86_400))]
    pub oauth_token_lifetime: u64,

    /// Most OAuth clients registered at once (dynamic registration needs no token).
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub oauth_max_clients: u32,

    /// OAuth client registrations accepted per minute, all callers together.
    #[arg(long, default_value_t = 10, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub oauth_registrations_per_minute: u32,

    /// FOR TESTS ONLY: trust this CA (PEM) for OAuth client metadata documents and let them
    /// come from loopback addresses. Refused unless TOKENWARDEN_INSECURE_CIMD_TEST=1 is also
    /// set; logged as a warning.
    #[arg(long, value_name = "FILE", hide = true)]
    pub insecure_cimd_test_ca: Option<std::path::PathBuf>,

    /// Front the MCP servers in FILE (the mcpServers shape of claude_desktop_config.json or
    /// .mcp.json) as buckets; SIGHUP re-reads it.
    #[arg(long, value_name = "FILE", env = "TOKENWARDEN_UPSTREAMS")]
    pub upstreams: Option<PathBuf>,

    /// On stdio, how long tools/list waits, at most, for upstreams still connecting at start
    /// (each until it is connected or unavailable), so a client that lists tools once sees
    /// them; later changes reach clients as notifications/tools/list_changed. 0: never wait.
    #[arg(long, value_name = "SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=600))]
    pub upstreams_wait: u64,

    /// Serve Prometheus metrics at http://ADDR/metrics, without a token: bind it to loopback
    /// or a private network. (GET /metrics on --http needs an admin token.)
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    /// Send a span of every tool call (request, decision, upstream call) to the OTLP/HTTP
    /// collector at URL, e.g. http://127.0.0.1:4318 (spans go to URL/v1/traces) [default: off]
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

/// Names the running server in the data directory, so other commands can say who holds it.
struct HolderFile(PathBuf);

impl HolderFile {
    fn write(dir: &Path, http: Option<SocketAddr>) -> HolderFile {
        let path = dir.join(super::HOLDER_FILE);
        let body = serde_json::json!({
            "pid": std::process::id(),
            "http": http.map(|a| a.to_string()),
        });
        if let Err(e) = std::fs::write(&path, body.to_string()) {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
        HolderFile(path)
    }
}

impl Drop for HolderFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub async fn run(cli: &Cli, args: &ServeArgs) -> Result<(), CliError> {
    if !args.stdio && args.http.is_none() {
        return Err(CliError::usage(
            "nothing to serve: pass --stdio, --http 127.0.0.1:8787, or both",
        ));
    }
    // A bad upstreams file stops the start, in one line naming the entry.
    let upstreams = match &args.upstreams {
        Some(path) => Some(crate::gateway::config::load(path).map_err(CliError::new)?),
        None => None,
    };
    let otlp_endpoint = match &args.otlp_endpoint {
        Some(url) => Some(crate::trace::export::endpoint(url).map_err(CliError::usage)?),
        None => None,
    };
    let dir = super::data_dir(cli).map_err(CliError::new)?;
    let stdio_secret = if args.stdio {
        stdio_secret(&dir)?
    } else {
        None
    };
    let mut config = super::service_config(cli);
    config.max_depth = args.max_depth;
    config.audit_retention = args.audit_retention.retention();
    config.access_retention = AccessRetention {
        max_age_days: args.access_log_retention,
        max_events: args.access_log_max_events,
    };
    let service = Arc::new(open_service(&dir, config)?);
    // Kept whenever something can read them: the main listener's `/metrics` or `--metrics`.
    let metrics = (args.http.is_some() || args.metrics.is_some())
        .then(|| crate::metrics::Metrics::new(Arc::clone(&service)));
    // Who hears of every tool call and refused request (SPEC §14); set once, before serving.
    let access_log = AccessLog::new();
    let mut sinks: Vec<Arc<dyn crate::observe::AccessSink>> =
        vec![Arc::clone(&access_log) as Arc<dyn crate::observe::AccessSink>];
    if let Some(metrics) = &metrics {
        sinks.push(metrics.clone());
    }
    // A binary built with `bench-internals` (never the product) observes nothing when
    // TOKENWARDEN_BENCH_NO_OBSERVE is set: what `benches/http_binary.rs` measures their cost
    // against.
    #[cfg(feature = "bench-internals")]
    let sinks = if std::env::var_os("TOKENWARDEN_BENCH_NO_OBSERVE").is_some() {
        eprintln!("bench-internals: no access log, no metrics");
        Vec::new()
    } else {
        sinks
    };
    service.observer().set_sinks(sinks);
    // Traces (SPEC §14), when asked for: set before serving, or no span is ever built.
    let tracer = otlp_endpoint.map(|url| {
        let tracer = crate::trace::Tracer::new();
        service.observer().set_tracer(Arc::clone(&tracer));
        tracing::info!("sending spans to {url}");
        (tracer, url)
    });

    let stdio_caller = if args.stdio {
        Some(stdio_caller(&service, stdio_secret, &dir)?)
    } else {
        None
    };
    let listener = match args.http {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| CliError::new(format!("cannot listen on {addr}: {e}")))?,
        ),
        None => None,
    };
    let metrics_listener =
        match args.metrics {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                CliError::new(format!("cannot listen on {addr} for the metrics: {e}"))
            })?),
            None => None,
        };
    let bound = listener.as_ref().and_then(|l| l.local_addr().ok());
    let _holder = HolderFile::write(&dir, bound);
    let mut bootstrapped = None;
    if bound.is_some() {
        bootstrapped = bootstrap_admin(&service, cli, &dir)?;
        say_if_no_admin(&service, cli, &dir);
    }

    let shutdown = CancellationToken::new();
    // After the first-start admin exists, so a command cannot race the bootstrap's check for
    // a blank store.
    let admin_socket = listen_for_the_command_line(&dir, &service, cli, shutdown.clone());
    tokio::spawn(write_usage_behind(Arc::clone(&service), shutdown.clone()));
    let access_writer = tokio::spawn(access::write_behind(
        Arc::clone(&service),
        access_log,
        shutdown.clone(),
    ));

    tokio::spawn(super::audit::prune_in_background(
        Arc::clone(&service),
        shutdown.clone(),
    ));
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let span_exporter = tracer.map(|(tracer, url)| {
        tokio::spawn(crate::trace::export::run(tracer, url, shutdown.clone()))
    });
    let upstreams_deadline = tokio::time::Instant::now() + Duration::from_secs(args.upstreams_wait);
    let gateway = upstreams.map(|upstreams| {
        crate::gateway::Gateway::start(upstreams, args.upstreams.clone(), shutdown.child_token())
    });
    if let Some(gateway) = &gateway {
        tokio::spawn(reload_on_sighup(Arc::clone(gateway), shutdown.clone()));
    }
    if let (Some(metrics), Some(gateway)) = (&metrics, &gateway) {
        metrics.watch_gateway(Arc::clone(gateway));
    }
    let metrics_task = metrics_listener
        .zip(metrics.clone())
        .map(|(listener, metrics)| serve_metrics(listener, &metrics, shutdown.clone()));
    let connections = http::Connections::default();

    let http_app = match &listener {
        Some(_) => {
            let public_url = match &args.public_url {
                Some(url) => crate::oauth::OAuthConfig::public_url(url).map_err(CliError::usage)?,
                None => format!("http://{}", bound.expect("bound")),
            };
            let config = HttpConfig {
                allowed_hosts: args.allowed_hosts.clone(),
                allowed_origins: args.allowed_origins.clone(),
                sessions: SessionLimits {
                    per_token: args.max_sessions_per_token as usize,
                    total: args.max_sessions as usize,
                },
                max_connections: args.max_connections as usize,
                max_inflight_per_token: args.max_inflight_per_token as usize,
                gateway: gateway.clone(),
                oauth: crate::oauth::OAuthConfig {
                    public_url,
                    token_lifetime_seconds: args.oauth_token_lifetime,
                    registration: crate::oauth::RegistrationLimits {
                        max_clients: args.oauth_max_clients as usize,
                        per_minute: args.oauth_registrations_per_minute,
                    },
                    cimd: cimd_testing(args.insecure_cimd_test_ca.as_deref())?,
                },
                connections: connections.clone(),
                metrics: metrics.clone(),
            };
            Some(
                http_router(&service, &config, shutdown.child_token(), bootstrapped)
                    .map_err(CliError::usage)?,
            )
        }
        None => None,
    };
    let http_task = listener.zip(http_app).map(|(listener, app)| {
        let limits = ConnectionLimits {
            max_connections: args.max_connections as usize,
            ..ConnectionLimits::default()
        };
        let stop = shutdown.clone();
        tracing::info!(
            "serving MCP over HTTP at http://{}/mcp",
            bound.expect("bound")
        );
        tracing::info!(
            "web console at http://{}/console (sign in with a token)",
            bound.expect("bound")
        );
        tokio::spawn(http::serve(listener, app, (limits, connections), stop))
    });

    if let Some(caller) = stdio_caller {
        let server =
            TokenServer::for_stdio(Arc::clone(&service), caller).with_gateway(gateway.clone());
        let server = server.waiting_for_upstreams_until(upstreams_deadline);
        let running = server
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| CliError::new(format!("stdio session failed to start: {e}")))?;
        tokio::select! {
            _ = running.waiting() => tracing::info!("stdio client disconnected; shutting down"),
            _ = shutdown.cancelled() => {}
        }
        // The stdio client owns this process: when it goes, so does the server.
        shutdown.cancel();
    }
    if let Some(task) = http_task {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("HTTP server failed: {e}"),
            Err(e) => tracing::error!("HTTP server task failed: {e}"),
        }
    }
    if let Some(gateway) = &gateway {
        shutdown.cancel();
        gateway.stopped().await;
    }
    // The socket closes (and its file goes) before the database is released.
    shutdown.cancel();
    if let Some(task) = admin_socket {
        let _ = task.await;
    }
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    // The last second of the access log is written before the database is released.
    let _ = access_writer.await;
    // And the last spans are sent (or given up on within two seconds).
    if let Some(exporter) = span_exporter {
        let _ = exporter.await;
    }
    let service = Arc::clone(&service);
    tokio::task::spawn_blocking(move || service.shutdown())
        .await
        .map_err(|e| CliError::new(format!("shutdown failed: {e}")))??;
    tracing::info!("stopped");
    Ok(())
}

/// Serves `GET /metrics` on the `--metrics` listener until `shutdown`, with no token: the
/// operator binds it where only Prometheus reaches it (a warning says so for any other
/// address than loopback). A few connections are enough for a scraper.
fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: &Arc<crate::metrics::Metrics>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("serving metrics at http://{addr}/metrics");
        if !addr.ip().is_loopback() {
            tracing::warn!(
                "the metrics at http://{addr}/metrics need no token: keep that address on a \
                 private network"
            );
        }
    }
    let limits = ConnectionLimits {
        max_connections: METRICS_CONNECTIONS,
        ..ConnectionLimits::default()
    };
    let app = metrics.router();
    tokio::spawn(async move {
        let connections = http::Connections::default();
        if let Err(e) = http::serve(listener, app, (limits, connections), shutdown).await {
            tracing::error!("metrics server failed: {e}");
        }
    })
}

/// Serves the admin socket (`admin.sock` in the data directory) until `shutdown`, so the
/// owner's commands work while this server holds the database. A server that cannot bind it
/// (a data directory path too long for a socket, say) still serves, and says so.
#[cfg(unix)]
fn listen_for_the_command_line(
    dir: &Path,
    service: &Arc<Service>,
    cli: &Cli,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    match AdminSocket::bind(dir, Arc::clone(service), &cli.environment) {
        Ok(socket) => Some(tokio::spawn(socket.serve(shutdown))),
        Err(e) => {
            tracing::warn!(
                "cannot listen on {}: {e}; the command line cannot reach this server while it \
                 runs",
                dir.join(super::admin_socket::SOCKET_FILE).display()
            );
            None
        }
    }
}

/// The HTTP application. A binary built with the `bench-internals` feature (never the
/// product) serves it without the bearer guard, as the bootstrap admin, when
/// `TOKENWARDEN_BENCH_NO_GUARD` is set: what `benches/http_binary.rs` compares the guard with.
fn http_router(
    service: &Arc<Service>,
    config: &HttpConfig,
    shutdown: CancellationToken,
    bootstrapped: Option<crate::secret::TokenId>,
) -> Result<axum::Router, String> {
    #[cfg(feature = "bench-internals")]
    if std::env::var_os("TOKENWARDEN_BENCH_NO_GUARD").is_some() {
        let admin =
            bootstrapped.ok_or("TOKENWARDEN_BENCH_NO_GUARD needs a fresh data directory")?;
        tracing::warn!("benchmark build: serving HTTP without the bearer guard, as {admin}");
        return http::unguarded_router(Arc::clone(service), config, shutdown, admin);
    }
    let _ = bootstrapped;
    http::router(Arc::clone(service), config, shutdown)
}

/// Who a stdio session acts as, read before the store is opened: the owner (no
/// `TOKENWARDEN_TOKEN`), or that secret. Only an absent variable means the owner: one that is
/// set but empty or blank (an unset `${VAR}` in a client's configuration) fails closed. A
/// secret needs the store that issued it: where there is none, the start says so naming the
/// directory and creates nothing (no empty store left behind by a wrong or missing
/// `TOKENWARDEN_DATA_DIR`).
fn stdio_secret(dir: &Path) -> Result<Option<String>, CliError> {
    let Some(value) = std::env::var_os("TOKENWARDEN_TOKEN") else {
        return Ok(None);
    };
    let secret = value.to_str().map(str::trim).unwrap_or_default();
    if secret.is_empty() {
        return Err(CliError::new(
            "TOKENWARDEN_TOKEN is set but empty: set it to a token secret, or remove it to serve \
             as the owner",
        ));
    }
    if let Err(e) = crate::secret::Secret::parse(secret) {
        // Wrong whatever the store: said before looking for one.
        return Err(CliError::new(format!(
            "TOKENWARDEN_TOKEN does not authenticate: {e}"
        )));
    }
    if !dir.join("db").exists() {
        return Err(CliError::store(format!(
            "TOKENWARDEN_TOKEN does not authenticate: there is no tokenwarden store in {}; point \
             TOKENWARDEN_DATA_DIR (or --data-dir) at the store that issued the token",
            dir.display()
        )));
    }
    Ok(Some(secret.to_owned()))
}

/// The stdio session's caller: the secret is checked like an HTTP bearer now (so a bad secret
/// stops the start) and again on every call of the session.
fn stdio_caller(
    service: &Service,
    secret: Option<String>,
    dir: &Path,
) -> Result<StdioCaller, CliError> {
    let Some(secret) = secret else {
        return Ok(StdioCaller::Owner);
    };
    service.authenticate(&secret, None).map_err(|e| {
        CliError::new(format!(
            "TOKENWARDEN_TOKEN does not authenticate against the store in {}: {e}; point \
             TOKENWARDEN_DATA_DIR (or --data-dir) at the store that issued it",
            dir.display()
        ))
    })?;
    Ok(StdioCaller::Secret(secret))
}

/// On the first start of a store that has never held anything (no token, no audit event, no
/// tombstone) with HTTP enabled, mint one admin token and show its secret once, on stderr. A
/// store whose tokens were all deleted is not new: it gets no second admin.
fn bootstrap_admin(
    service: &Service,
    cli: &Cli,
    dir: &Path,
) -> Result<Option<crate::secret::TokenId>, CliError> {
    if !service.store().is_blank() {
        return Ok(None);
    }
    let issued = service.create_token(
        &Caller::Owner,
        CreateToken {
            name: "bootstrap admin".to_owned(),
            description: Some("Created on first start; manages every token.".to_owned()),
            admin: Some(true),
            parent: Some("none".to_owned()),
            ..CreateToken::default()
        },
    )?;
    let line = "=".repeat(78);
    eprintln!(
        "\n{line}\n  tokenwarden: first start, so one admin token was created ({id}).\n\n  \
         {secret}\n\n  Use it as the HTTP bearer: Authorization: Bearer <token>\n  \
         It is shown this once and never again. If you lose it, run (server up or not):\n    \
         {recovery}\n{line}\n",
        id = issued.record.id,
        secret = issued.token,
        recovery = recovery_command(cli, dir),
    );
    Ok(Some(issued.record.id))
}

/// The command that mints a new admin token for this very store: this binary's path, this
/// data directory and environment, each quoted for a POSIX shell, so it works as printed.
fn recovery_command(cli: &Cli, dir: &Path) -> String {
    let binary = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "tokenwarden".to_owned());
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut words = vec![
        shell_quote(&binary),
        "--data-dir".to_owned(),
        shell_quote(&dir.display().to_string()),
    ];
    if cli.environment != "default" {
        words.extend(["--environment".to_owned(), shell_quote(&cli.environment)]);
    }
    words.push("token create --name admin --admin --parent none".to_owned());
    words.join(" ")
}

fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@%,=".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// How many active tokens the start-up check looks through for an admin before giving up
/// (a store that large is being managed by someone).
const ADMIN_CHECK_LIMIT: usize = 10_000;

/// A store with tokens but no active admin token can only be managed from the command line
/// (which reaches this server through its admin socket):
/// say so in one line at start, with the command that fixes it.
fn say_if_no_admin(service: &Service, cli: &Cli, dir: &Path) {
    if service.store().is_empty() {
        return;
    }
    let mut cursor = None;
    let mut examined = 0;
    loop {
        let page = service.list_tokens(
            &Caller::Owner,
            ListTokens {
                status: Some(crate::record::Status::Active),
                limit: Some(100),
                cursor: cursor.take(),
                ..ListTokens::default()
            },
        );
        let Ok(page) = page else { return };
        if page
            .records
            .iter()
            .any(|r| r.admin && r.effective_status == crate::record::EffectiveStatus::Active)
        {
            return;
        }
        examined += page.records.len();
        match page.next_cursor {
            Some(next) if page.has_more && examined < ADMIN_CHECK_LIMIT => cursor = Some(next),
            Some(_) if page.has_more => return,
            _ => break,
        }
    }
    eprintln!(
        "tokenwarden: no active admin token can manage this store over MCP; to mint one, run: {}",
        recovery_command(cli, dir)
    );
}

async fn write_usage_behind(service: Arc<Service>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(USAGE_WRITE_BEHIND);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let service = Arc::clone(&service);
        match tokio::task::spawn_blocking(move || service.flush_usage()).await {
            Ok(Err(e)) => tracing::warn!("writing usage counters failed: {e}"),
            Err(e) => tracing::warn!("usage writer failed: {e}"),
            Ok(Ok(())) => {}
        }
    }
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
            _ = shutdown.cancelled() => return,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

/// SIGHUP re-reads the upstreams file (SPEC §10).
async fn reload_on_sighup(gateway: Arc<crate::gateway::Gateway>, shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; the upstreams file will not be reloaded");
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => gateway.reload(),
                _ = shutdown.cancelled() => return,
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (gateway, shutdown);
}

/// The environment variable that must accompany `--insecure-cimd-test-ca`.
const INSECURE_CIMD_TEST_ENV: &str = "TOKENWARDEN_INSECURE_CIMD_TEST";

/// `--insecure-cimd-test-ca`: honoured only with TOKENWARDEN_INSECURE_CIMD_TEST=1, so neither a
/// stray flag nor a stray variable alone loosens anything; said loudly when on.
fn cimd_testing(test_ca: Option<&Path>) -> Result<crate::oauth::CimdTesting, CliError> {
    let Some(path) = test_ca else {
        return Ok(crate::oauth::CimdTesting::default());
    };
    if std::env::var(INSECURE_CIMD_TEST_ENV).as_deref() != Ok("1") {
        return Err(CliError::usage(format!(
            "--insecure-cimd-test-ca is for tests only: it needs {INSECURE_CIMD_TEST_ENV}=1 in \
             the environment as well"
        )));
    }
    let pem = std::fs::read(path).map_err(|e| {
        CliError::usage(format!(
            "cannot read --insecure-cimd-test-ca {}: {e}",
            path.display()
        ))
    })?;
    tracing::warn!(
        ca = %path.display(),
        "INSECURE TEST MODE: OAuth client metadata documents may come from loopback addresses \
         and this CA is trusted; never run a real server like this"
    );
    Ok(crate::oauth::CimdTesting {
        test_ca_pem: Some(pem),
    })
}
