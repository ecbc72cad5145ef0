//! The command line (SPEC §7): global options, `serve`, and the owner's commands (`token …`,
//! `audit`, `export`, `import`). The owner's commands are thin adapters over
//! [`crate::service::Service`], acting as [`crate::service::Caller::Owner`]: they build the
//! same request types the MCP tools take and print the same result objects. While a server
//! holds the database they reach it through its admin socket instead ([`owner::Owner`]);
//! with `--server URL` they manage a remote server through its REST API, as a token
//! ([`remote`]).

pub mod access;
pub mod admin_socket;
pub mod audit;
pub mod backup;
pub mod oauth;
pub mod output;
pub mod owner;
pub mod remote;
pub mod serve;
pub mod token;
pub mod upstreams;

use std::borrow::Cow;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// tokenwarden: a token authority for the Model Context Protocol.
#[derive(Debug, Parser)]
#[command(name = "tokenwarden", version, about, long_about = None, arg_required_else_help = true)]
pub struct Cli {
    /// Where the database lives [default: $TOKENWARDEN_DATA_DIR, else the platform data directory]
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// The environment label: `serve` refuses tokens of any other environment, and `token`
    /// commands see and create tokens of this one.
    #[arg(long, global = true, value_name = "NAME", default_value = "default")]
    pub environment: String,

    /// Log level or filter (error, warn, info, debug, trace); RUST_LOG also works.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Print results as JSON, for scripts: each result object on one line (a list is one page
    /// object with its next_cursor); errors as {"error": {"code", "message"}} on stderr.
    #[arg(long, global = true)]
    pub json: bool,

    /// Manage the server at URL (e.g. http://127.0.0.1:8787, as `serve` prints it) through its
    /// REST API instead of a local data directory, as the token in --token or
    /// $TOKENWARDEN_TOKEN: for the token, audit and oauth commands.
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,

    /// The token secret --server acts as [default: $TOKENWARDEN_TOKEN]. Prefer the variable:
    /// other users of the machine can see a command line.
    #[arg(long, global = true, value_name = "SECRET")]
    pub token: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the MCP server over stdio and/or streamable HTTP.
    ///
    /// Example: tokenwarden serve --http 127.0.0.1:8787
    Serve(serve::ServeArgs),

    /// Manage tokens as the owner: list, get, create, update, scope, pause, resume, rotate,
    /// revoke, delete.
    ///
    /// Example: tokenwarden token create --name ci --buckets docs --tools 'list_*' --ttl-seconds 3600
    Token(token::TokenArgs),

    /// Show the audit log of management actions, newest first.
    ///
    /// Example: tokenwarden audit --token-id tok_0Vx3k9QbT2mZ8LwYp5RsNa4c --limit 50
    Audit(audit::AuditArgs),

    /// Show the access log: every tool call and refused request of a known token, newest
    /// first (never arguments or results).
    ///
    /// Example: tokenwarden access --token-id tok_0Vx3k9QbT2mZ8LwYp5RsNa4c --since 2026-12-06T00:00:00Z
    Access(access::AccessArgs),

    /// Write a JSON-lines backup of every token (secret hashes, never secrets), usage counters
    /// and the audit log.
    ///
    /// Example: tokenwarden export --output tokenwarden-backup.jsonl
    Export(backup::ExportArgs),

    /// Restore a backup written by `export` into an empty store (or, with --merge, add the
    /// tokens a store lacks).
    ///
    /// Example: tokenwarden --data-dir /srv/tokenwarden import --input tokenwarden-backup.jsonl
    Import(backup::ImportArgs),

    /// Connect once to each upstream MCP server of an upstreams file and list the tools the
    /// gateway would expose, with their read-only flags; non-zero exit if any is unavailable.
    ///
    /// Example: tokenwarden upstreams --upstreams ~/.config/tokenwarden/upstreams.json
    Upstreams(upstreams::UpstreamsArgs),

    /// Show the OAuth clients and grants of the store, or remove a client (its grants end and
    /// their access tokens are revoked).
    ///
    /// Example: tokenwarden oauth grants --json
    #[command(name = "oauth")]
    OAuth(oauth::OAuthArgs),
}

/// `--data-dir`, else `$TOKENWARDEN_DATA_DIR`, else the platform's per-user data directory.
pub fn data_dir(cli: &Cli) -> Result<PathBuf, String> {
    if let Some(dir) = &cli.data_dir {
        return Ok(dir.clone());
    }
    if let Some(dir) = std::env::var_os("TOKENWARDEN_DATA_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    let base = if cfg!(target_os = "macos") {
        home.map(|h| h.join("Library/Application Support"))
    } else {
        std::env::var_os("XDG_DATA_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| home.map(|h| h.join(".local/share")))
    };
    base.map(|b| b.join("tokenwarden")).ok_or_else(|| {
        "cannot find a data directory: pass --data-dir or set TOKENWARDEN_DATA_DIR".to_owned()
    })
}

/// Runs a parsed command line; the error is the one line to print.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    check_server_flags(&cli)?;
    match &cli.command {
        Command::Serve(args) => serve::run(&cli, args).await,
        Command::Token(args) => token::run(&cli, args),
        Command::Audit(args) => audit::run(&cli, args),
        Command::Access(args) => access::run(&cli, args),
        Command::Export(args) => backup::export(&cli, args),
        Command::Import(args) => backup::import(&cli, args),
        Command::Upstreams(args) => upstreams::run(&cli, args).await,
        Command::OAuth(args) => oauth::run(&cli, args),
    }
}

/// `--token` only with `--server`, and `--server` only for the commands the REST API answers.
fn check_server_flags(cli: &Cli) -> Result<(), CliError> {
    if cli.server.is_none() {
        if cli.token.is_some() {
            return Err(CliError::usage(
                "--token goes with --server URL: without it, the commands act as the owner of \
                 the local data directory",
            ));
        }
        return Ok(());
    }
    let local = match cli.command {
        Command::Serve(_) => "serve",
        Command::Export(_) => "export",
        Command::Import(_) => "import",
        Command::Upstreams(_) => "upstreams",
        Command::Token(_) | Command::Audit(_) | Command::Access(_) | Command::OAuth(_) => {
            return Ok(());
        }
    };
    Err(remote::local_only(local))
}

/// A failure of a command: one line for stderr, a code for `--json`, and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    /// The tools' error codes (`not_found`, `scope_exceeds_parent`, …), plus `usage`,
    /// `store` and `held` for failures only the command line has, and with `--server`,
    /// `unauthorized` (the server refused the token) and `unreachable` (no answer).
    pub code: Cow<'static, str>,
    pub exit_code: i32,
}

impl CliError {
    pub fn new(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code: Cow::Borrowed("internal"),
            exit_code: 1,
        }
    }

    /// A mistake in how the command was called (exit 2, like clap's own usage errors).
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code: Cow::Borrowed("usage"),
            exit_code: 2,
        }
    }

    /// A problem with the data directory or the database in it.
    pub fn store(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code: Cow::Borrowed("store"),
            exit_code: 1,
        }
    }

    /// A failure already explained (or needing no words, like a closed stdout pipe): exits
    /// non-zero without printing.
    pub fn quiet() -> CliError {
        CliError {
            message: String::new(),
            code: Cow::Borrowed("internal"),
            exit_code: 1,
        }
    }

    /// The error as `--json` prints it on stderr.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "error": { "code": self.code, "message": self.message } })
    }
}

impl From<crate::error::Error> for CliError {
    /// A malformed value (the tools' `invalid_argument`) is a usage error, exit 2, whether
    /// clap or the tool's own validation found it; every other refusal exits 1.
    fn from(e: crate::error::Error) -> CliError {
        let exit_code = if e.code == crate::error::ErrorCode::InvalidArgument {
            2
        } else {
            1
        };
        CliError {
            message: e.message.clone(),
            code: Cow::Borrowed(e.code.as_str()),
            exit_code,
        }
    }
}

impl From<crate::store::StoreError> for CliError {
    fn from(e: crate::store::StoreError) -> CliError {
        CliError::store(e.to_string())
    }
}

/// The file in the data directory naming the server that holds the database.
pub const HOLDER_FILE: &str = "server.json";

pub fn service_config(cli: &Cli) -> crate::service::ServiceConfig {
    crate::service::ServiceConfig {
        environment: cli.environment.clone(),
        ..crate::service::ServiceConfig::default()
    }
}

/// Whether a command may create the store it opens.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Only reads: a missing data directory is an error naming it (a typo must not look like
    /// an empty store, nor leave one behind).
    Read,
    /// Writes: a missing data directory is created.
    Write,
}

/// Flushes everything and closes the service at the end of a command that opened it.
pub fn close_service(service: crate::service::Service) -> Result<(), CliError> {
    service.shutdown()?;
    Ok(())
}

/// What opening the store in a data directory found.
pub enum Opened {
    Store(Box<crate::service::Service>),
    /// Another process (a running server) holds the database.
    Held,
}

/// Opens the store, or finds it held by another process; any other failure is one line.
pub fn open_store(
    dir: &std::path::Path,
    config: crate::service::ServiceConfig,
) -> Result<Opened, CliError> {
    if dir.exists() && !dir.is_dir() {
        return Err(CliError::store(format!(
            "{} is not a directory: --data-dir names the directory that holds the database",
            dir.display()
        )));
    }
    match crate::service::Service::open(dir, config) {
        Ok(service) => Ok(Opened::Store(Box::new(service))),
        Err(crate::store::StoreError::Locked(_)) => Ok(Opened::Held),
        Err(e) => Err(CliError::store(e.to_string())),
    }
}

/// Opens the store, turning "held by another process" into one line that names the holder
/// (exit code 2): for `serve`, which cannot share a database.
pub fn open_service(
    dir: &std::path::Path,
    config: crate::service::ServiceConfig,
) -> Result<crate::service::Service, CliError> {
    match open_store(dir, config)? {
        Opened::Store(service) => Ok(*service),
        Opened::Held => Err(held(
            dir,
            "stop it first, or manage tokens through its MCP tools",
        )),
    }
}

/// "The database in DIR is held by HOLDER: ADVICE", naming the holder from its
/// [`HOLDER_FILE`] (pid, and HTTP address if it has one); exit code 2, code `held`.
pub fn held(dir: &std::path::Path, advice: &str) -> CliError {
    let holder = std::fs::read_to_string(dir.join(HOLDER_FILE))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
    let who = match holder {
        Some(h) => {
            let pid = h["pid"]
                .as_u64()
                .map(|p| format!("pid {p}"))
                .unwrap_or_default();
            match h["http"].as_str() {
                Some(addr) => format!("a running tokenwarden server ({pid}, http://{addr}/mcp)"),
                None => format!("a running tokenwarden server ({pid})"),
            }
        }
        None => "another tokenwarden process".to_owned(),
    };
    CliError {
        message: format!(
            "the database in {} is held by {who}: {advice}",
            dir.display()
        ),
        code: Cow::Borrowed("held"),
        exit_code: 2,
    }
}
