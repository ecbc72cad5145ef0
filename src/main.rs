use std::process::ExitCode;

use clap::Parser;
use tokenwarden::cli::{self, Cli};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::prelude::*;

/// mimalloc instead of the system allocator: a request allocates and frees hundreds of small
/// buffers (JSON values, headers, channels), often on another thread than the one that allocated
/// them, where glibc's malloc took about a fifth of the server's instructions (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// Stderr for logs, with URLs cut to `scheme://host:port/path`: libraries (rmcp, reqwest) log
/// an upstream's full URL, whose query may hold an expanded credential.
struct RedactingStderr;

impl std::io::Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        if text.contains("://") {
            let clean = tokenwarden::gateway::connection::redact_urls(&text);
            std::io::stderr().write_all(clean.as_bytes())?;
        } else {
            std::io::stderr().write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

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

/// Library events dropped whatever the filter: rmcp's client worker logs every failed connect
/// to an HTTP upstream at ERROR, with reqwest's `Debug` and rmcp's type names; the gateway logs
/// the same failure itself, once per attempt, in one line of the user's words.
const QUIETED_TARGETS: &[&str] = &["rmcp::transport::worker"];

fn quieted(metadata: &tracing::Metadata<'_>) -> bool {
    QUIETED_TARGETS.contains(&metadata.target())
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
    // Known before parsing, so that even a usage error comes out as JSON for a script.
    let json = std::env::args_os().any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help and --version print and succeed
        Err(e)
            if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                && !json =>
        {
            // Bare `tokenwarden` (or `tokenwarden token`): the help is the answer, on stderr.
            let _ = e.print();
            return ExitCode::from(2);
        }
        Err(e) => {
            // Usage errors in one line, like every other error.
            let rendered = e.render().to_string();
            // The error, and clap's suggestions for a typo ("tip: a similar argument exists:
            // '--http'"), which follow it after a blank line; not the usage block.
            let message: Vec<&str> = rendered
                .lines()
                .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more"))
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect();
            let message = message
                .iter()
                .enumerate()
                .map(|(i, line)| match i {
                    0 => line.to_string(),
                    _ if line.starts_with("tip:") => format!("; {line}"),
                    _ => format!(" {line}"),
                })
                .collect::<String>();
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            let message = tokenwarden::secret::redact_secrets(message);
            let error = cli::CliError::usage(format!("{message} (see --help)"));
            report(&error, json);
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
            report(
                &cli::CliError::usage(format!("invalid log level: {e}")),
                cli.json,
            );
            return ExitCode::from(2);
        }
    };
    // Logs go to stderr: on stdio, stdout carries only JSON-RPC.
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(|| RedactingStderr)
                .with_ansi(false)
                .with_filter(filter)
                .with_filter(filter_fn(|metadata| {
                    !capped(metadata) && !quieted(metadata)
                })),
        )
        .init();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let json = cli.json;
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e, json);
            ExitCode::from(e.exit_code.clamp(1, 255) as u8)
        }
    }
}

/// Prints a failed command's one line on stderr: `error: …`, or with `--json` the object
/// `{"error": {"code", "message"}}`.
fn report(error: &cli::CliError, json: bool) {
    if error.message.is_empty() {
        return;
    }
    if json {
        eprintln!("{}", error.to_json());
    } else {
        eprintln!("error: {}", error.message);
    }
}
