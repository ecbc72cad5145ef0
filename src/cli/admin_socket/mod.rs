//! The local admin socket: how the owner's commands reach a running server that holds the
//! database (SPEC §12, "The command line while the server runs").
//!
//! `serve` listens on `admin.sock` in the data directory ([`server`]); a command that finds the
//! store held connects to it ([`client`]) and sends the very request it would otherwise answer
//! itself ([`crate::cli::owner::answer`]), so both paths run the same code and print the same
//! output. The caller over the socket is the owner, so only the server's own user may connect:
//! the directory is 0700, the socket 0600, and the server checks the peer's uid.
//!
//! The protocol is JSON lines, one request and then its answer at a time:
//!
//! - `{"tool": NAME, "arguments": {...}}`: a management tool, as `mcp::tools::dispatch` takes it;
//! - `{"command": "oauth_clients" | "oauth_grants" | "oauth_remove_client" | "export",
//!   "arguments": {...}}`: what the `oauth` commands and `export` do besides the tools;
//! - either may carry `"environment"`, which must be the server's.
//!
//! Answers are `{"result": VALUE}` or `{"error": {"code", "message", "exit_code"}}`; `export`
//! first sends its output as `{"chunk": BASE64}` lines of at most [`EXPORT_CHUNK`] bytes each.

// Unix sockets and peer credentials; elsewhere the commands keep needing the server stopped.
#[cfg(unix)]
pub mod client;
#[cfg(unix)]
pub mod server;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::CliError;

/// The socket's file name in the data directory.
pub const SOCKET_FILE: &str = "admin.sock";

/// The longest request line the server reads (newline included); a longer one ends the
/// connection after an error answer, since the rest of the line cannot be told from the next
/// request.
pub const MAX_REQUEST_LINE: usize = 1024 * 1024;

/// Bytes of export output per `chunk` answer.
pub const EXPORT_CHUNK: usize = 64 * 1024;

/// What the command line asks besides the tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    OauthClients,
    OauthGrants,
    /// Arguments: `{"client_id": "twc_…"}`.
    OauthRemoveClient,
    Export,
}

/// One request line: a tool or a command, never both.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub arguments: Value,
    /// The caller's `--environment`: a server of another environment refuses the request
    /// rather than answer for tokens the caller did not ask about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

impl Request {
    pub fn tool(name: &str, arguments: Value) -> Request {
        Request {
            tool: Some(name.to_owned()),
            arguments,
            ..Request::default()
        }
    }

    pub fn command(command: Command, arguments: Value) -> Request {
        Request {
            command: Some(command),
            arguments,
            ..Request::default()
        }
    }
}

/// One answer line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Result(Value),
    Error(WireError),
    /// A piece of `export`'s output, base64 (standard alphabet, padded).
    Chunk(String),
}

/// A [`CliError`] as it travels: the code and message `--json` prints, and the exit code.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireError {
    pub code: String,
    pub message: String,
    pub exit_code: i32,
}

impl From<&CliError> for WireError {
    fn from(e: &CliError) -> WireError {
        WireError {
            code: e.code.to_string(),
            message: e.message.clone(),
            exit_code: e.exit_code,
        }
    }
}

impl From<WireError> for CliError {
    fn from(e: WireError) -> CliError {
        CliError {
            message: e.message,
            code: e.code.into(),
            exit_code: e.exit_code,
        }
    }
}

impl Response {
    pub fn error(e: &CliError) -> Response {
        Response::Error(WireError::from(e))
    }
}
