use std::process::ExitCode;

use clap::Parser;
use tokenwarden::cli::{self, Cli};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::prelude::*;

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

/// True for events of the capped libraries below `warn`, whatever their module path
/// (`rmcp::service` as well as `rmcp`) or span: these are dropped after the user's filter, so
/// no `RUST_LOG` directive, however specific, can let them through.
fn capped(metadata: &tracing::Metadata<'_>) -> bool {
    let target = metadata.target();
    *metadata.level() > tracing::Level::WARN
        && CAPPED_TARGETS.iter().any(|capped| {
            target == *capped
                || target
                    .strip_prefix(capped)
                    .is_some_and(|rest| rest.starts_with("::"))
        })
}

fn main() -> ExitCode {
    // Every file this process creates — sled's log, snapshots and blobs, server.json, backups —
    // is readable by its owner only, whatever umask it was started with (SPEC §6). Set first,
    // before any thread or file exists.
    #[cfg(unix)]
    // SAFETY: umask(2) only replaces the process's file mode creation mask; it cannot fail
    // and reads or writes no memory of ours.
    unsafe {
        libc::umask(0o077);
    }
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
            let message = tokenwarden::secret::redact_secrets(message);
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
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: invalid log level: {e}");
            return ExitCode::from(1);
        }
    };
    // Logs go to stderr: on stdio, stdout carries only JSON-RPC.
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_filter(filter)
                .with_filter(filter_fn(|metadata| !capped(metadata))),
        )
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
