//! The MCP tool catalogue (SPEC §5): names, descriptions written for an LLM reader, input
//! schemas derived from the service's request types, annotations, and dispatch to the service.

use std::sync::Arc;

use rmcp::handler::server::common::{schema_for_empty_input, schema_for_input};
use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::service::requests::{
    CreateToken, ListAccessEvents, ListAuditEvents, ListTokens, RevokeToken, RotateToken,
    ScopeToken, TokenRef, UpdateToken, VerifyToken,
};
use crate::service::{Caller, Service, is_read_only_tool};

/// How a tool behaves, as its MCP annotations declare.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    ReadOnly,
    Write,
    Idempotent,
    Destructive,
}

struct Spec {
    name: &'static str,
    kind: Kind,
    description: &'static str,
    schema: fn() -> Arc<JsonObject>,
}

fn schema<T: JsonSchema + 'static>() -> Arc<JsonObject> {
    schema_for_input::<T>().expect("request types derive object schemas")
}

const SPECS: &[Spec] = &[
    Spec {
        name: "whoami",
        kind: Kind::ReadOnly,
        description: "Show who you are: the token record this session authenticates as (its \
            id, scope, limits, status and lineage), or {\"owner\": true} when acting as the \
            server's owner. Call it first to learn what you may do. Takes no arguments.",
        schema: schema_for_empty_input,
    },
    Spec {
        name: "list_tokens",
        kind: Kind::ReadOnly,
        description: "List the tokens you can see (all of them for the owner or an admin \
            token; otherwise yourself and your descendants), newest first. Filters: status \
            (active|paused|revoked|expired), bucket, parent_id, search (substring of name or \
            description). Returns {records, has_more, next_cursor}; pass next_cursor back as \
            cursor for the next page. Example: {\"status\": \"active\", \"limit\": 50}.",
        schema: schema::<ListTokens>,
    },
    Spec {
        name: "get_token",
        kind: Kind::ReadOnly,
        description: "Get one token record by id, including effective_status (whether an \
            ancestor's pause, revocation or expiry blocks it) and usage. Never returns the \
            secret. Example: {\"id\": \"tok_…\"}.",
        schema: schema::<TokenRef>,
    },
    Spec {
        name: "create_token",
        kind: Kind::Write,
        description: "Mint a new token and return its record plus `token`, the secret, shown \
            only this once: hand it to the agent or service that will use it. As a token \
            caller, the new token is your child (parent \"self\") and can never hold more than \
            you: buckets, tools, read_only, allowed_ips, expiry and limits must lie within \
            yours (omitted fields are inherited), else the call fails with \
            scope_exceeds_parent naming each field. That holds wherever you place it (an \
            admin's parent \"none\" or another parent too): no token grants what it does not \
            hold. Example for a sub-agent that may only \
            read: {\"name\": \"researcher\", \"buckets\": [\"docs\"], \"tools\": \
            [\"whoami\", \"list_*\"], \"ttl_seconds\": 3600}.",
        schema: schema::<CreateToken>,
    },
    Spec {
        name: "update_token",
        kind: Kind::Idempotent,
        description: "Change a token's name, description, metadata, expires_at, max_uses or \
            rate_limit_per_minute (null clears a limit, within the parent's limits). \
            Descendants are narrowed to fit. Returns the updated record. Example: \
            {\"id\": \"tok_…\", \"expires_at\": \"2026-12-31T00:00:00Z\"}.",
        schema: schema::<UpdateToken>,
    },
    Spec {
        name: "scope_token",
        kind: Kind::Idempotent,
        description: "Change what a token may reach: replace or add/remove buckets and tool \
            patterns (exact names, \"*\", or prefixes such as \"list_*\"), set read_only, or \
            replace allowed_ips. Never beyond its parent; narrowing a token narrows all its \
            descendants at once. Returns the updated record. Example: {\"id\": \"tok_…\", \
            \"remove_tools\": [\"create_token\"]}.",
        schema: schema::<ScopeToken>,
    },
    Spec {
        name: "pause_token",
        kind: Kind::Idempotent,
        description: "Suspend a token: it and all its descendants are refused from the next \
            request on, until resume_token. Reversible (use revoke_token for permanent). \
            Returns the record. Example: {\"id\": \"tok_…\"}.",
        schema: schema::<TokenRef>,
    },
    Spec {
        name: "resume_token",
        kind: Kind::Idempotent,
        description: "Reactivate a paused token (a token cannot resume itself). Fails with \
            conflict if it is revoked or expired. Returns the record. Example: \
            {\"id\": \"tok_…\"}.",
        schema: schema::<TokenRef>,
    },
    Spec {
        name: "rotate_token",
        kind: Kind::Write,
        description: "Issue a new secret for a token, keeping its id, scope and children. The \
            old secret keeps working for grace_seconds (0-86400, default 60) so its user can \
            switch over. Returns the record plus `token`, the new secret, shown only this \
            once. Example: {\"id\": \"tok_…\", \"grace_seconds\": 0}.",
        schema: schema::<RotateToken>,
    },
    Spec {
        name: "revoke_token",
        kind: Kind::Destructive,
        description: "Permanently revoke a token and every descendant; they are refused from \
            the very next request. Irreversible. Use it when a sub-agent is done or a secret \
            may have leaked. With include_minted: true, also revokes every token it (or its \
            subtree) minted elsewhere, e.g. roots it created with parent none, transitively. \
            Returns {id, revoked: true, revoked_descendants, revoked_minted}. Example: \
            {\"id\": \"tok_…\", \"include_minted\": true}.",
        schema: schema::<RevokeToken>,
    },
    Spec {
        name: "delete_token",
        kind: Kind::Destructive,
        description: "Revoke a token and its descendants and remove their records (the audit \
            log keeps what happened). Irreversible. Returns {id, deleted: true}. Example: \
            {\"id\": \"tok_…\"}.",
        schema: schema::<TokenRef>,
    },
    Spec {
        name: "verify_token",
        kind: Kind::ReadOnly,
        description: "Check whether a secret is valid now and, if tool and/or bucket are \
            given, whether it may call that tool on that bucket. For services that accept \
            tokenwarden tokens; owner and admin tokens only. Returns {valid, token_id?, \
            allowed?, reason?}. Example: {\"token\": \"mcp_…\", \"tool\": \"search\", \
            \"bucket\": \"docs\"}.",
        schema: schema::<VerifyToken>,
    },
    Spec {
        name: "list_buckets",
        kind: Kind::ReadOnly,
        description: "List the buckets you hold: the upstream MCP servers this gateway fronts \
            (all of them for the owner or an admin token), each with its transport, status \
            (connected, connecting or unavailable, with an error) and how many of its tools you \
            may call. Upstream tools are named <bucket>__<tool>. Takes no arguments.",
        schema: schema_for_empty_input,
    },
    Spec {
        name: "list_audit_events",
        kind: Kind::ReadOnly,
        description: "Read the audit log of management actions (create, update, scope, pause, \
            resume, rotate, revoke, delete, import), newest first, with actor, target, time \
            and what changed. Owner and admin tokens only. Filters: token_id, action, since \
            (RFC 3339). Returns {events, has_more, next_cursor}.",
        schema: schema::<ListAuditEvents>,
    },
    Spec {
        name: "list_access_events",
        kind: Kind::ReadOnly,
        description: "Read the access log: every tool call (tokenwarden's own, REST and \
            forwarded gateway calls) and every refused request of a known token, newest first, \
            with time, token_id, lineage_id, tool, bucket, outcome (ok, an error code or a \
            refusal reason), duration_ms and the upstream's isError. Never arguments or results. \
            The owner and admin tokens see every entry, a token those of itself and the tokens \
            minted under it. Filters: token_id, lineage_id, tool, bucket, outcome, since, until \
            (RFC 3339). Returns {events, has_more, next_cursor}.",
        schema: schema::<ListAccessEvents>,
    },
];

/// Every tool's MCP definition, in catalogue order (built once: `tools/list` and rmcp's
/// per-call header checks read it on every request).
pub fn definitions() -> &'static [Tool] {
    static DEFINITIONS: std::sync::OnceLock<Vec<Tool>> = std::sync::OnceLock::new();
    DEFINITIONS.get_or_init(build_definitions)
}

fn build_definitions() -> Vec<Tool> {
    SPECS
        .iter()
        .map(|spec| {
            let annotations = match spec.kind {
                Kind::ReadOnly => ToolAnnotations::new().read_only(true),
                Kind::Write => ToolAnnotations::new()
                    .read_only(false)
                    .destructive(false)
                    .idempotent(false),
                Kind::Idempotent => ToolAnnotations::new()
                    .read_only(false)
                    .destructive(false)
                    .idempotent(true),
                Kind::Destructive => ToolAnnotations::new()
                    .read_only(false)
                    .destructive(true)
                    .idempotent(true),
            };
            debug_assert_eq!(spec.kind == Kind::ReadOnly, is_read_only_tool(spec.name));
            Tool::new(spec.name, spec.description, (spec.schema)()).with_annotations(annotations)
        })
        .collect()
}

pub fn exists(name: &str) -> bool {
    SPECS.iter().any(|s| s.name == name)
}

/// The catalogue's own copy of a tool's name (the metrics label it without keeping the
/// caller's string).
pub fn static_name(name: &str) -> Option<&'static str> {
    SPECS.iter().find(|s| s.name == name).map(|s| s.name)
}

/// Tools whose work is a few point reads (no scan, no write): with a decision that only reads,
/// they run on the async worker that received the call.
pub fn point_reads_only(name: &str) -> bool {
    matches!(name, "whoami" | "get_token" | "verify_token")
}

fn args<T: DeserializeOwned>(tool: &str, value: Value) -> Result<T> {
    serde_json::from_value(value)
        .map_err(|e| Error::invalid(format!("invalid arguments for {tool}: {e}")))
}

fn json<T: Serialize>(value: T) -> Result<Value> {
    Ok(serde_json::to_value(value).expect("results always serialise"))
}

/// Metadata keys only the OAuth server writes (`oauth_client_id`, `oauth_grant_id`…):
/// introspection reports them and step-up trusts them, so a caller may keep them as they are
/// but never set or change one.
const RESERVED_METADATA_PREFIX: &str = "oauth_";

fn reserved_metadata(
    requested: Option<&serde_json::Map<String, Value>>,
    current: Option<&serde_json::Map<String, Value>>,
) -> Result<()> {
    let Some(requested) = requested else {
        return Ok(());
    };
    for (key, value) in requested {
        if key.starts_with(RESERVED_METADATA_PREFIX)
            && current.and_then(|c| c.get(key)) != Some(value)
        {
            return Err(Error::invalid(format!(
                "metadata keys starting with {RESERVED_METADATA_PREFIX} are the OAuth server's: \
                 {key} cannot be set or changed"
            )));
        }
    }
    Ok(())
}

/// Runs tool `name` for `caller`. The caller has already been authorised for the tool.
pub fn dispatch(service: &Service, caller: &Caller, name: &str, arguments: Value) -> Result<Value> {
    match name {
        "whoami" => {
            if arguments.as_object().is_some_and(|o| !o.is_empty()) {
                return Err(Error::invalid("whoami takes no arguments"));
            }
            json(service.whoami(caller)?)
        }
        "list_tokens" => json(service.list_tokens(caller, args(name, arguments)?)?),
        "get_token" => json(service.get_token(caller, args(name, arguments)?)?),
        "create_token" => {
            let request: CreateToken = args(name, arguments)?;
            reserved_metadata(request.metadata.as_ref(), None)?;
            json(service.create_token(caller, request)?)
        }
        "update_token" => {
            let request: UpdateToken = args(name, arguments)?;
            if request.metadata.is_some() {
                let current = service
                    .get_token(
                        caller,
                        TokenRef {
                            id: request.id.clone(),
                        },
                    )?
                    .metadata;
                reserved_metadata(request.metadata.as_ref(), Some(&current))?;
            }
            json(service.update_token(caller, request)?)
        }
        "scope_token" => json(service.scope_token(caller, args(name, arguments)?)?),
        "pause_token" => json(service.pause_token(caller, args(name, arguments)?)?),
        "resume_token" => json(service.resume_token(caller, args(name, arguments)?)?),
        "rotate_token" => json(service.rotate_token(caller, args(name, arguments)?)?),
        "revoke_token" => {
            json(service.revoke_token(caller, args::<RevokeToken>(name, arguments)?)?)
        }
        "delete_token" => json(service.delete_token(caller, args(name, arguments)?)?),
        "verify_token" => json(service.verify_token(caller, args(name, arguments)?)?),
        "list_audit_events" => json(service.list_audit_events(caller, args(name, arguments)?)?),
        "list_access_events" => json(service.list_access_events(caller, args(name, arguments)?)?),
        // Without a gateway (the command line) there are no upstreams to list.
        "list_buckets" => Ok(serde_json::json!({ "buckets": [] })),
        other => Err(Error::not_found(format!("unknown tool {other}"))),
    }
}
