//! Who answers an owner's command: the store, opened by the command itself; the running
//! server that holds it, reached through its admin socket; or, with `--server URL`, a remote
//! server's REST API as a token ([`Remote`]). All three answer a [`Request`] (the first two
//! with [`answer`]), so a command prints the same thing whichever answers.

use std::io::Write;
use std::path::Path;

use serde_json::Value;

#[cfg(unix)]
use super::admin_socket::client::AdminClient;
use super::admin_socket::{Command, Request, SOCKET_FILE};
use super::remote::Remote;
use super::{Access, Cli, CliError, Opened};
use crate::mcp::tools::dispatch;
use crate::service::{Caller, Service, ServiceConfig};

pub enum Owner {
    /// The command opened the store itself.
    Local(Box<Service>),
    /// A running server holds the store; it answers over its admin socket.
    #[cfg(unix)]
    Server(AdminClient),
    /// `--server URL`: a remote server answers through its REST API, as the token given.
    Remote(Remote),
}

impl Owner {
    /// Opens the store in the data directory `cli` names; when a running server holds it,
    /// connects to that server's admin socket instead. A socket is consulted only then, so a
    /// dead server's leftover socket never stands in the way. With `--server`, no data
    /// directory is opened: the remote server answers.
    pub fn open(cli: &Cli, access: Access, config: ServiceConfig) -> Result<Owner, CliError> {
        if cli.server.is_some() {
            return Ok(Owner::Remote(Remote::open(cli)?));
        }
        let dir = super::data_dir(cli).map_err(CliError::store)?;
        if access == Access::Read && !dir.exists() {
            return Err(CliError::store(format!(
                "no data directory at {}: check --data-dir (or TOKENWARDEN_DATA_DIR)",
                dir.display()
            )));
        }
        match super::open_store(&dir, config)? {
            Opened::Store(service) => Ok(Owner::Local(service)),
            Opened::Held => connect(&dir, &cli.environment),
        }
    }

    /// Calls a management tool as the owner.
    pub fn call(&self, tool: &str, arguments: Value) -> Result<Value, CliError> {
        self.request(Request::tool(tool, arguments))
    }

    pub fn request(&self, request: Request) -> Result<Value, CliError> {
        match self {
            Owner::Local(service) => answer(service, &request),
            #[cfg(unix)]
            Owner::Server(client) => client.request(request),
            Owner::Remote(remote) => remote.request(&request),
        }
    }

    /// Writes the backup `export` prints to `out`; returns the number of entries.
    pub fn export(&self, out: &mut dyn Write) -> Result<u64, CliError> {
        match self {
            Owner::Local(service) => Ok(service.export(out)?),
            #[cfg(unix)]
            Owner::Server(client) => client.export(out),
            Owner::Remote(_) => Err(super::remote::local_only("export")),
        }
    }

    /// Flushes and closes a store the command opened (a server keeps its own).
    pub fn close(self) -> Result<(), CliError> {
        match self {
            Owner::Local(service) => super::close_service(*service),
            #[cfg(unix)]
            Owner::Server(_) => Ok(()),
            Owner::Remote(_) => Ok(()),
        }
    }

    /// Whether the caller is a token on a remote server rather than the owner, whose
    /// defaults differ (`token create` without `--parent`).
    pub fn is_remote(&self) -> bool {
        matches!(self, Owner::Remote(_))
    }
}

#[cfg(unix)]
fn connect(dir: &Path, environment: &str) -> Result<Owner, CliError> {
    let client = AdminClient::connect(dir, environment).map_err(|e| {
        super::held(
            dir,
            &format!(
                "its admin socket {} cannot be reached ({e}); stop the server first, or manage \
                 tokens through its MCP tools",
                dir.join(SOCKET_FILE).display()
            ),
        )
    })?;
    Ok(Owner::Server(client))
}

#[cfg(not(unix))]
fn connect(dir: &Path, _environment: &str) -> Result<Owner, CliError> {
    let _ = SOCKET_FILE;
    Err(super::held(
        dir,
        "stop it first, or manage tokens through its MCP tools",
    ))
}

/// Answers a request as the owner: a tool through [`dispatch`] (what the MCP server calls),
/// an `oauth` command through [`super::oauth`]. `export` streams, so it is not answered here.
pub fn answer(service: &Service, request: &Request) -> Result<Value, CliError> {
    let arguments = match &request.arguments {
        Value::Null => Value::Object(Default::default()),
        arguments => arguments.clone(),
    };
    match (&request.tool, request.command) {
        (Some(tool), None) => Ok(dispatch(service, &Caller::Owner, tool, arguments)?),
        (None, Some(Command::OauthClients)) => super::oauth::clients(service),
        (None, Some(Command::OauthGrants)) => super::oauth::grants(service),
        (None, Some(Command::OauthRemoveClient)) => match arguments["client_id"].as_str() {
            Some(client_id) => super::oauth::remove_client(service, client_id),
            None => Err(CliError::from(crate::error::Error::invalid(
                "oauth_remove_client needs a client_id string",
            ))),
        },
        (None, Some(Command::Export)) => Err(CliError::from(crate::error::Error::invalid(
            "export is answered in chunks, not as one result",
        ))),
        _ => Err(CliError::from(crate::error::Error::invalid(
            "a request names either a tool or a command",
        ))),
    }
}
