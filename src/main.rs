use std::process::ExitCode;

use clap::Parser;
use tokenwarden::cli::{self, Cli};
use tracing_subscriber::EnvFilter;

/// Libraries that, at debug or trace, log HTTP headers (the bearer secret) or JSON-RPC bodies
/// (create/rotate results carry a new secret). Whatever level is asked for, they log at most
/// `warn`; tokenwarden's own logs never hold a secret at any level.
const CAPPED_TARGETS: &[&str] = &[
    "rmcp",
    "hyper",
    "hyper_util",
    "h2",
    "http",
    "axum",
    "tower",
    "tower_http",
    "reqwest",
    "sled",
    "mio",
    "tokio_util",
];

fn cap_dependency_logs(
    mut filter: EnvFilter,
) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    for target in CAPPED_TARGETS {
        // A later directive for the same target replaces an earlier one, so this wins over
        // RUST_LOG=trace and over RUST_LOG=rmcp=trace alike.
        filter = filter.add_directive(format!("{target}=warn").parse()?);
    }
    Ok(filter)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help and --version print and succeed
        Err(e) => {
            // Usage errors in one line, like every other error.
            let rendered = e.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .take_while(|line| !line.trim().is_empty())
                .map(str::trim)
                .collect();
            let message = message.join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            eprintln!("error: {message} (see --help)");
            return ExitCode::from(2);
        }
    };
    // The server logs what it does; a one-shot command prints its result and logs only trouble.
    let default_filter = match cli.command {
        cli::Command::Serve(_) => "info,rmcp=warn",
        _ => "warn",
    };
    let filter = match (&cli.log_level, std::env::var("RUST_LOG")) {
        (Some(level), _) => EnvFilter::try_new(level),
        (None, Ok(env)) if !env.is_empty() => EnvFilter::try_new(env),
        _ => EnvFilter::try_new(default_filter),
    };
    let filter = match filter.and_then(cap_dependency_logs) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: invalid log level: {e}");
            return ExitCode::from(1);
        }
    };
    // Logs go to stderr: on stdio, stdout carries only JSON-RPC.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("error: {}", e.message);
            }
            ExitCode::from(e.exit_code.clamp(1, 255) as u8)
        }
    }
}
