//! The MCP face of the service: a `ServerHandler` whose `tools/list` shows each caller only
//! what it may call and whose `tools/call` asks the one decision path before running a tool.
//! The same handler serves stdio and streamable HTTP; on HTTP the caller comes from the
//! guard (see `http`), on stdio it is fixed when the session starts.

pub mod tools;

use std::net::IpAddr;
use std::sync::Arc;

#[allow(deprecated)]
use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
    SetLevelRequestParams,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};

use crate::error::Error;
use crate::secret::{TokenId, truncate_for_message};
use crate::service::{Caller, Service};

/// Put into the HTTP request's extensions by the guard once the bearer has authenticated.
#[derive(Clone, Debug)]
pub struct Authenticated {
    pub token_id: TokenId,
    pub client_ip: IpAddr,
}

#[derive(Clone)]
pub struct TokenServer {
    service: Arc<Service>,
    /// The caller of a stdio session; `None` for HTTP, where each request carries its own.
    stdio_caller: Option<Caller>,
}

const INSTRUCTIONS: &str = "tokenwarden manages access tokens. Call whoami to see your own \
    scope. To give a sub-agent access, create_token a child with only the buckets and tools it \
    needs and a ttl_seconds, hand it the returned `token` secret, and revoke_token it when the \
    sub-agent is done. A child can never hold more than its parent.";

impl TokenServer {
    pub fn for_http(service: Arc<Service>) -> TokenServer {
        TokenServer {
            service,
            stdio_caller: None,
        }
    }

    pub fn for_stdio(service: Arc<Service>, caller: Caller) -> TokenServer {
        TokenServer {
            service,
            stdio_caller: Some(caller),
        }
    }

    fn caller(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<(Caller, Option<IpAddr>), ErrorData> {
        if let Some(parts) = ctx.extensions.get::<axum::http::request::Parts>() {
            return match parts.extensions.get::<Authenticated>() {
                Some(a) => Ok((Caller::Token(a.token_id.clone()), Some(a.client_ip))),
                None => Err(ErrorData::internal_error(
                    "request was not authenticated",
                    None,
                )),
            };
        }
        match &self.stdio_caller {
            Some(caller) => Ok((caller.clone(), None)),
            None => Err(ErrorData::internal_error(
                "request was not authenticated",
                None,
            )),
        }
    }
}

fn error_result(error: &Error) -> CallToolResult {
    CallToolResult::structured_error(json!({
        "error": { "code": error.code.as_str(), "message": error.message }
    }))
}

// Logging is deprecated by SEP-2577, but clients of the 2025 revisions still call
// logging/setLevel and the conformance suite checks it.
#[allow(deprecated)]
impl ServerHandler for TokenServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_logging()
                .build(),
        )
        .with_server_info(Implementation::new(
            "tokenwarden",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        // The whole list fits one page, so no cursor was ever issued: any cursor is invalid.
        if request.is_some_and(|r| r.cursor.is_some()) {
            return Err(ErrorData::invalid_params(
                "invalid cursor: tools/list returns every tool in one page",
                None,
            ));
        }
        let (caller, ip) = self.caller(&context)?;
        let tools = tools::definitions()
            .iter()
            .filter(|t| self.service.may_call(&caller, &t.name, ip))
            .cloned()
            .collect();
        // What a token may call differs per caller: never let a cache share the list.
        Ok(ListToolsResult::with_all_items(tools).with_cache_scope(CacheScope::Private))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let (caller, ip) = self.caller(&context)?;
        let name = request.name.to_string();
        if !tools::exists(&name) {
            return Err(ErrorData::invalid_params(
                format!("unknown tool {}", truncate_for_message(&name)),
                None,
            ));
        }
        let service = Arc::clone(&self.service);
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        // Storage work and flushes block: keep them off the async workers.
        let outcome = tokio::task::spawn_blocking(move || {
            service.authorize_call(&caller, &name, None, ip)?;
            tools::dispatch(&service, &caller, &name, arguments)
        })
        .await
        .map_err(|e| ErrorData::internal_error(format!("tool task failed: {e}"), None))?;
        let result = match outcome {
            Ok(value) => CallToolResult::structured(value),
            Err(error) => {
                if error.code == crate::error::ErrorCode::Internal {
                    tracing::error!(error = %error.message, "tool call failed");
                } else {
                    tracing::debug!(code = error.code.as_str(), "tool call refused or failed");
                }
                error_result(&error)
            }
        };
        Ok(result.into())
    }

    /// Accepted so clients may set it; the server logs to stderr under its own filter and
    /// sends no log notifications.
    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        tracing::debug!(level = ?request.level, "client asked for log level");
        Ok(())
    }

    fn get_tool(&self, name: &str) -> Option<rmcp::model::Tool> {
        tools::definitions()
            .iter()
            .find(|t| t.name == name)
            .cloned()
    }
}
