//! `--server URL`: the owner's commands against a remote server, through its REST API (SPEC
//! §12), as the token given with `--token` or `$TOKENWARDEN_TOKEN`.
//!
//! [`Remote`] answers the same [`Request`] the store and the admin socket answer: it maps the
//! tool (or `oauth` command) to its `/v1` endpoint, sends the tool's arguments as the query or
//! the JSON body, and turns the answer back into the tool's result, or its problem+json into
//! the command's usual error. The commands' own code does the rest, so a command prints
//! exactly what it prints against a local store.

use std::future::Future;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::{Map, Value};
use url::Url;

use super::admin_socket::{Command, Request};
use super::{Cli, CliError};

/// How long one request may take, connecting and reading the answer included: management
/// calls flush to disk, but a server that takes longer than this is not answering.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long connecting may take; a server that is down usually refuses at once.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer read: far above any page of records, but a bound all the same.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// The variable `--token` defaults to (also the token `serve --stdio` acts as).
pub const TOKEN_VARIABLE: &str = "TOKENWARDEN_TOKEN";

/// A remote server's REST API, reached as one token.
pub struct Remote {
    http: reqwest::Client,
    /// The server's base URL, ending in `/`: where `/v1/…` is appended, and what errors name.
    base: Url,
    /// `Bearer <secret>`, marked sensitive so no debug output shows it.
    authorization: HeaderValue,
    /// The secret itself, only to be cut out of any text the server sends back.
    secret: String,
}

/// One REST request: what a tool call becomes.
struct Call {
    method: Method,
    url: Url,
    body: Option<Map<String, Value>>,
}

impl Remote {
    /// Reads `--server` and the token (`--token`, else `$TOKENWARDEN_TOKEN`). Nothing is sent
    /// yet: a server that is down is found by the first request, which names it.
    pub fn open(cli: &Cli) -> Result<Remote, CliError> {
        let server = cli.server.as_deref().unwrap_or_default();
        let base = base_url(server)?;
        let secret = match &cli.token {
            Some(secret) => secret.clone(),
            None => std::env::var(TOKEN_VARIABLE).map_err(|_| {
                CliError::usage(format!(
                    "--server needs a token to act as: pass --token SECRET or set {TOKEN_VARIABLE}"
                ))
            })?,
        };
        let secret = secret.trim().to_owned();
        if secret.is_empty() {
            return Err(CliError::usage(format!(
                "the token for --server is empty: pass --token SECRET or set {TOKEN_VARIABLE} to \
                 a token secret"
            )));
        }
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {secret}")).map_err(|_| {
                CliError::usage(
                    "the token for --server holds characters no token has: check --token or \
                 TOKENWARDEN_TOKEN",
                )
            })?;
        authorization.set_sensitive(true);
        // No proxy from the environment: the bearer goes to the server named, nowhere else.
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            // A redirect would carry the bearer elsewhere; a tokenwarden server never sends one.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tokenwarden/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::new(format!("cannot set up an HTTP client: {e}")))?;
        Ok(Remote {
            http,
            base,
            authorization,
            secret,
        })
    }

    /// Sends the request's REST equivalent and returns the tool's result, or its error as the
    /// command's own.
    pub fn request(&self, request: &Request) -> Result<Value, CliError> {
        let call = self.route(request)?;
        block_on(self.send(call))?
    }

    /// The endpoint of a tool or command (SPEC §12's table), with its arguments placed.
    fn route(&self, request: &Request) -> Result<Call, CliError> {
        let mut arguments = match &request.arguments {
            Value::Object(arguments) => arguments.clone(),
            _ => Map::new(),
        };
        let mut take = |key: &str| -> Result<String, CliError> {
            match arguments.remove(key) {
                Some(Value::String(value)) => Ok(value),
                _ => Err(CliError::from(crate::error::Error::invalid(format!(
                    "{key} must be a string"
                )))),
            }
        };
        let (method, path, query) = match (request.tool.as_deref(), request.command) {
            (Some("list_tokens"), None) => (Method::GET, vec!["tokens".to_owned()], true),
            (Some("list_audit_events"), None) => (Method::GET, vec!["audit".to_owned()], true),
            (Some("list_access_events"), None) => (Method::GET, vec!["access".to_owned()], true),
            (Some("create_token"), None) => (Method::POST, vec!["tokens".to_owned()], false),
            (Some("get_token"), None) => {
                (Method::GET, vec!["tokens".to_owned(), take("id")?], false)
            }
            (Some("update_token" | "scope_token"), None) => {
                let path = vec!["tokens".to_owned(), take("id")?];
                // A change of nothing is the record as it is (offline, the tool answers it and
                // records no event); `PATCH` refuses an empty body.
                let method = if arguments.is_empty() {
                    Method::GET
                } else {
                    Method::PATCH
                };
                (method, path, false)
            }
            (Some("delete_token"), None) => (
                Method::DELETE,
                vec!["tokens".to_owned(), take("id")?],
                false,
            ),
            (
                Some(tool @ ("pause_token" | "resume_token" | "rotate_token" | "revoke_token")),
                None,
            ) => {
                let action = tool.trim_end_matches("_token").to_owned();
                (
                    Method::POST,
                    vec!["tokens".to_owned(), take("id")?, action],
                    false,
                )
            }
            (None, Some(Command::OauthClients)) => (Method::GET, oauth(&["clients"]), false),
            (None, Some(Command::OauthGrants)) => (Method::GET, oauth(&["grants"]), false),
            (None, Some(Command::OauthRemoveClient)) => (
                Method::DELETE,
                oauth(&["clients", &take("client_id")?]),
                false,
            ),
            (None, Some(Command::Export)) => return Err(local_only("export")),
            (tool, _) => {
                return Err(CliError::new(format!(
                    "{} has no REST endpoint for --server",
                    tool.unwrap_or("this command")
                )));
            }
        };
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| CliError::new("the --server URL cannot take a path"))?
            .pop_if_empty()
            .push("v1")
            .extend(&path);
        let body = match method {
            Method::GET | Method::DELETE => {
                if query {
                    let mut pairs = url.query_pairs_mut();
                    for (key, value) in &arguments {
                        match value {
                            Value::Null => {}
                            Value::String(text) => {
                                pairs.append_pair(key, text);
                            }
                            other => {
                                pairs.append_pair(key, &other.to_string());
                            }
                        }
                    }
                }
                None
            }
            _ => Some(arguments),
        };
        Ok(Call { method, url, body })
    }

    async fn send(&self, call: Call) -> Result<Value, CliError> {
        let mut request = self
            .http
            .request(call.method, call.url)
            .header(AUTHORIZATION, self.authorization.clone())
            .header(ACCEPT, "application/json, application/problem+json");
        if let Some(body) = call.body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(Value::Object(body).to_string());
        }
        let mut response = request.send().await.map_err(|e| self.failed(&e))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.failed(&e))? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(CliError::new(format!(
                    "the server at {} sent an answer over {} MiB",
                    self.base,
                    MAX_ANSWER_BYTES >> 20
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|_| self.unreadable(status));
        }
        Err(self.problem(status, &body))
    }

    /// A request that got no answer: one line naming the server and why.
    /// Code `unreachable`, exit 1.
    fn failed(&self, e: &reqwest::Error) -> CliError {
        let unreachable = |message: String| CliError {
            message,
            code: "unreachable".into(),
            exit_code: 1,
        };
        if e.is_timeout() {
            return unreachable(format!(
                "the server at {} did not answer within {} s",
                self.base,
                REQUEST_TIMEOUT.as_secs()
            ));
        }
        // The innermost cause says it plainly ("Connection refused"); reqwest's own words
        // repeat the whole URL.
        let mut cause: &dyn std::error::Error = e;
        while let Some(source) = cause.source() {
            cause = source;
        }
        unreachable(format!(
            "cannot reach the server at {}: {}",
            self.base,
            self.one_line(&cause.to_string())
        ))
    }

    /// An error answer: the problem's `code` and `detail` as the command's error, with the exit
    /// code the same error has offline.
    fn problem(&self, status: reqwest::StatusCode, body: &[u8]) -> CliError {
        #[derive(serde::Deserialize)]
        struct Problem {
            code: String,
            detail: String,
        }
        let Ok(problem) = serde_json::from_slice::<Problem>(body) else {
            return self.unreadable(status);
        };
        let code_is_plain = !problem.code.is_empty()
            && problem.code.len() <= 64
            && problem
                .code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_');
        if !code_is_plain {
            return self.unreadable(status);
        }
        let detail = self.one_line(&problem.detail);
        let message = if status == reqwest::StatusCode::UNAUTHORIZED {
            format!("the server at {} refused the token: {detail}", self.base)
        } else {
            detail
        };
        let exit_code = if matches!(problem.code.as_str(), "usage" | "invalid_argument") {
            2
        } else {
            1
        };
        CliError {
            message,
            code: problem.code.into(),
            exit_code,
        }
    }

    /// Text from the network as one line of an error: control characters (a newline, an
    /// escape sequence) become `?`, and the secret, should a server ever echo it, is cut out.
    fn one_line(&self, text: &str) -> String {
        super::output::printable(&text.replace(&self.secret, "[the token]"))
    }

    fn unreadable(&self, status: reqwest::StatusCode) -> CliError {
        CliError::new(format!(
            "the server at {} answered {status} in a form the command cannot read (is it a \
             tokenwarden server of the same version?)",
            self.base
        ))
    }
}

fn oauth(path: &[&str]) -> Vec<String> {
    std::iter::once("oauth")
        .chain(path.iter().copied())
        .map(str::to_owned)
        .collect()
}

/// The error for a command that needs the data directory itself (exit 2).
pub fn local_only(command: &str) -> CliError {
    CliError::usage(format!(
        "{command} works only on a local data directory: run it without --server, where the \
         server's data directory is"
    ))
}

/// `--server`'s URL as the base the API hangs from: `http://host:port`, with or without a
/// trailing `/` or the `/mcp` the server prints (a path before it, for a server behind a
/// proxy, is kept).
fn base_url(text: &str) -> Result<Url, CliError> {
    // Shown without anything before an `@`: it may be a credential.
    let shown = match text.split_once('@') {
        Some((before, after)) => match before.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://…@{after}"),
            None => format!("…@{after}"),
        },
        None => text.to_owned(),
    };
    let refuse = |why: &str| {
        CliError::usage(format!(
            "--server {}: {why}",
            crate::secret::truncate_for_message(&shown)
        ))
    };
    let mut url = Url::parse(text.trim()).map_err(|e| {
        refuse(&format!(
            "not a URL ({e}); give the server's address, e.g. http://127.0.0.1:8787"
        ))
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        // Not echoed: what sits there may be a credential.
        return Err(CliError::usage(
            "--server takes no credentials in its URL: pass the token with --token or \
             TOKENWARDEN_TOKEN",
        ));
    }
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(refuse(
                "this build of tokenwarden speaks plain http only: reach the server over \
                 loopback, or through an SSH tunnel to its address",
            ));
        }
        _ => {
            return Err(refuse(
                "give the URL with http://, e.g. http://127.0.0.1:8787",
            ));
        }
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(refuse("the server's base URL takes no query or fragment"));
    }
    let path = url.path().trim_end_matches('/');
    let path = path.strip_suffix("/mcp").unwrap_or(path).to_owned();
    url.set_path(&format!("{path}/"));
    Ok(url)
}

/// Runs one exchange to completion from a command's synchronous code. Commands run inside the
/// runtime's `block_on` (main.rs); `block_in_place` tells the runtime this thread is about to
/// wait, so the HTTP client's connection tasks run on its workers meanwhile.
fn block_on<F: Future>(future: F) -> Result<F::Output, CliError> {
    let handle = tokio::runtime::Handle::try_current()
        .ok()
        .filter(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        .ok_or_else(|| CliError::new("--server needs the command line's multi-threaded runtime"))?;
    Ok(tokio::task::block_in_place(|| handle.block_on(future)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(text: &str) -> String {
        base_url(text).map(|u| u.to_string()).unwrap_or_else(|e| {
            assert_eq!(e.exit_code, 2, "{}", e.message);
            format!("refused: {}", e.message)
        })
    }

    #[test]
    fn the_base_url_is_accepted_as_the_server_prints_it_or_bare() {
        for text in [
            "http://127.0.0.1:8787",
            "http://127.0.0.1:8787/",
            "http://127.0.0.1:8787/mcp",
            "http://127.0.0.1:8787/mcp/",
        ] {
            assert_eq!(base(text), "http://127.0.0.1:8787/", "{text}");
        }
        assert_eq!(
            base("http://proxy.example/tokenwarden/mcp"),
            "http://proxy.example/tokenwarden/"
        );
    }

    #[test]
    fn bad_base_urls_are_refused_in_one_line_without_credentials() {
        for text in [
            "127.0.0.1:8787",
            "localhost:8787",
            "ftp://host",
            "http://h/?q=1",
        ] {
            assert!(base(text).starts_with("refused: --server"), "{text}");
        }
        assert!(base("https://host").contains("plain http"));
        let refused = base("http://user:hunter2@host:8787");
        assert!(!refused.contains("hunter2"), "{refused}");
    }
}
