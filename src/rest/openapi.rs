//! The OpenAPI 3.1 document of `/v1`, served at `GET /v1/openapi.json` without a token.
//!
//! Built from the code's own types, so it cannot drift from what the endpoints take: each
//! request schema is the JSON Schema (2020-12, OpenAPI 3.1's dialect) that schemars derives
//! from the tool's argument type, the very type the MCP tool's `inputSchema` comes from and
//! the handler deserialises into. Chosen over `utoipa`, which would need a second set of
//! derives on every type and could disagree with the tools' schemas.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde_json::{Map, Value, json};

use super::{idempotency, problem};
use crate::service::requests::{
    AccessPage, AuditPage, CreateToken, Deleted, Issued, ListAccessEvents, ListAuditEvents,
    ListTokens, RevokeToken, Revoked, RotateToken, ScopeToken, TokenPage, TokenRef, TokenView,
    UpdateToken, Verification, VerifyToken, WhoAmI,
};
use crate::store::oauth::OAuthClient;

/// A schema for `T` with its definitions moved under `components/schemas`.
fn schema_of<T: JsonSchema>(components: &mut Map<String, Value>) -> Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default();
    if let Some(Value::Object(defs)) = schema.as_object_mut().and_then(|o| o.remove("$defs")) {
        for (name, def) in defs {
            components.insert(name, def);
        }
    }
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
    }
    retarget_refs(&mut schema);
    schema
}

/// `#/$defs/X` (schemars) to `#/components/schemas/X` (OpenAPI).
fn retarget_refs(value: &mut Value) {
    match value {
        Value::Object(object) => {
            if let Some(Value::String(target)) = object.get_mut("$ref")
                && let Some(name) = target.strip_prefix("#/$defs/")
            {
                *target = format!("#/components/schemas/{name}");
            }
            object.values_mut().for_each(retarget_refs);
        }
        Value::Array(items) => items.iter_mut().for_each(retarget_refs),
        _ => {}
    }
}

/// A request schema without a field (the token id, which is in the path).
fn without(mut schema: Value, field: &str) -> Value {
    if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        properties.remove(field);
    }
    if let Some(required) = schema.get_mut("required").and_then(Value::as_array_mut) {
        required.retain(|r| r != field);
    }
    schema
}

/// The query parameters of a list endpoint, from its argument type's properties.
fn query_parameters(schema: &Value) -> Vec<Value> {
    schema["properties"]
        .as_object()
        .map(|properties| {
            properties
                .iter()
                .map(|(name, property)| {
                    // An absent parameter is the argument's `None`: a query has no null.
                    let mut property = not_null(property.clone());
                    let description = property
                        .as_object_mut()
                        .and_then(|p| p.remove("description"))
                        .unwrap_or(Value::Null);
                    json!({
                        "name": name,
                        "in": "query",
                        "required": false,
                        "description": description,
                        "schema": property,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `schema` without its `null` alternative (`Option<T>`'s schema is T's or null).
fn not_null(mut schema: Value) -> Value {
    let null = json!({"type": "null"});
    if let Some(types) = schema.get_mut("type").and_then(Value::as_array_mut) {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            schema["type"] = types[0].clone();
        }
    }
    if let Some(branches) = schema.get_mut("anyOf").and_then(Value::as_array_mut) {
        branches.retain(|b| *b != null);
        if branches.len() == 1 {
            let branch = branches[0].clone();
            let object = schema
                .as_object_mut()
                .expect("a schema with anyOf is an object");
            object.remove("anyOf");
            if let Some(reference) = branch.get("$ref") {
                // Siblings of `$ref` (the description) are kept: OpenAPI 3.1 allows them.
                object.insert("$ref".into(), reference.clone());
            } else if let Value::Object(fields) = branch {
                object.extend(fields);
            }
        }
    }
    schema
}

fn body(schema: Value, required: bool) -> Value {
    json!({
        "required": required,
        "content": {"application/json": {"schema": schema}},
    })
}

fn ok(description: &str, schema: Value) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": schema}},
    })
}

/// Where an endpoint's input comes from and what answers it: each source brings the problems
/// it can raise, so every status an endpoint can give is listed, and only those.
#[derive(Clone, Copy, PartialEq)]
enum Source {
    /// Any guarded endpoint: the bearer check (401), the bound on requests in flight per
    /// lineage (429), a failure of the server itself (500, never for client input).
    Guarded,
    /// A tool: its allowlist, read-only and reach checks (403), an exhausted `max_uses` (409),
    /// `rate_limit_per_minute` (429).
    Tool,
    /// The owner-or-admin check of the OAuth endpoints (403).
    OwnerOrAdmin,
    /// Query parameters (400).
    Query,
    /// A token id in the path: malformed (400), unknown or not yours (404).
    PathId,
    /// A JSON body: malformed or wrong (400), late (408), too large (413), not JSON (415).
    Body,
}

impl Source {
    fn statuses(self) -> &'static [&'static str] {
        match self {
            Source::Guarded => &["401", "429", "500"],
            Source::Tool => &["403", "409", "429"],
            Source::OwnerOrAdmin => &["403"],
            Source::Query => &["400"],
            Source::PathId => &["400", "404"],
            Source::Body => &["400", "408", "413", "415"],
        }
    }
}

/// The problem answers of an endpoint with these sources, plus `extra`.
fn problems(sources: &[Source], extra: &[&'static str]) -> Map<String, Value> {
    let mut statuses: Vec<&str> = std::iter::once(Source::Guarded)
        .chain(sources.iter().copied())
        .flat_map(|source| source.statuses().iter().copied())
        .chain(extra.iter().copied())
        .collect();
    statuses.sort_unstable();
    statuses.dedup();
    statuses
        .into_iter()
        .map(|status| {
            (
                status.to_owned(),
                json!({"$ref": format!("#/components/responses/Problem{status}")}),
            )
        })
        .collect()
}

/// What every problem status means, for `components/responses`.
const PROBLEM_MEANINGS: &[(&str, &str)] = &[
    (
        "400",
        "Bad input: wrong types, unknown fields, invalid ids or cursors.",
    ),
    ("401", "No bearer token, or one that does not authenticate."),
    (
        "403",
        "Refused: the tool is not in the token's allowlist, or outside its reach.",
    ),
    ("404", "Unknown (or not yours)."),
    (
        "408",
        "The body did not arrive within 10 seconds; the connection is closed.",
    ),
    (
        "409",
        "The token's state forbids it, or the calling token has used up its max_uses.",
    ),
    ("413", "The body is over 1 MiB; the connection is closed."),
    ("415", "The body is not application/json."),
    (
        "422",
        "It would give a token more than its parent or the caller holds, or an Idempotency-Key was reused with another body.",
    ),
    (
        "429",
        "Too many requests in flight, or the rate limit; see Retry-After.",
    ),
    (
        "500",
        "The server failed (its storage, say); never an answer to anything a client sends.",
    ),
];

struct Endpoint<'a> {
    id: &'a str,
    summary: &'a str,
    sources: &'a [Source],
    parameters: Vec<Value>,
    request: Option<Value>,
    success: (&'a str, Value),
    extra_problems: &'a [&'static str],
}

impl Endpoint<'_> {
    fn operation(self) -> Value {
        let mut responses = problems(self.sources, self.extra_problems);
        responses.insert(self.success.0.to_owned(), self.success.1);
        let mut op = json!({
            "operationId": self.id,
            "summary": self.summary,
            "parameters": self.parameters,
            "responses": responses,
            "security": [{"bearer": []}, {"oauth": []}],
        });
        if let Some(request) = self.request {
            op["requestBody"] = request;
        }
        op
    }
}

/// `$ref` to a schema of `components/schemas`.
fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// The OpenAPI document.
pub fn build() -> Value {
    use Source::{Body, OwnerOrAdmin, PathId, Query, Tool};
    let mut components = Map::new();
    let list_tokens = schema_of::<ListTokens>(&mut components);
    let audit = schema_of::<ListAuditEvents>(&mut components);
    let access = schema_of::<ListAccessEvents>(&mut components);
    let create = schema_of::<CreateToken>(&mut components);
    let token_ref = schema_of::<TokenRef>(&mut components);
    let update = without(schema_of::<UpdateToken>(&mut components), "id");
    let scope = without(schema_of::<ScopeToken>(&mut components), "id");
    let rotate = without(schema_of::<RotateToken>(&mut components), "id");
    let revoke = without(schema_of::<RevokeToken>(&mut components), "id");
    let verify = schema_of::<VerifyToken>(&mut components);
    for (name, schema) in [
        ("TokenView", schema_of::<TokenView>(&mut components)),
        ("Issued", schema_of::<Issued>(&mut components)),
        ("TokenPage", schema_of::<TokenPage>(&mut components)),
        ("Revoked", schema_of::<Revoked>(&mut components)),
        ("Deleted", schema_of::<Deleted>(&mut components)),
        ("Verification", schema_of::<Verification>(&mut components)),
        ("AuditPage", schema_of::<AuditPage>(&mut components)),
        ("AccessPage", schema_of::<AccessPage>(&mut components)),
        ("WhoAmI", schema_of::<WhoAmI>(&mut components)),
        ("OAuthClient", schema_of::<OAuthClient>(&mut components)),
    ] {
        components.insert(name.into(), schema);
    }
    let record = reference("TokenView");
    let id_parameter = json!({
        "name": "id", "in": "path", "required": true,
        "description": token_ref["properties"]["id"]["description"],
        "schema": without_description(&token_ref["properties"]["id"]),
    });
    let no_arguments = json!({"type": "object", "additionalProperties": false});
    let empty_ok = |schema: Value| body(schema, false);
    let create_op = {
        let mut op = Endpoint {
            id: "createToken",
            summary: "Create a token (create_token); its secret is in the answer, once.",
            sources: &[Tool, Body],
            parameters: vec![json!({
                "name": "Idempotency-Key", "in": "header", "required": false,
                "description": "A retry with the same key (same caller, 24 hours) makes no second token: it answers 200 with the first one's record, without its secret, and `replayed: true`.",
                "schema": {"type": "string", "pattern": idempotency::KEY_PATTERN},
            })],
            request: Some(body(create, true)),
            success: (
                "201",
                ok(
                    "The new token's record with `token`, its secret.",
                    reference("Issued"),
                ),
            ),
            // 404: an unknown parent.
            extra_problems: &["404", "422"],
        }
        .operation();
        op["responses"]["200"] = ok(
            "A replayed create: the first token's record, without its secret.",
            json!({"allOf": [record.clone(), {
                "type": "object", "required": ["replayed"],
                "properties": {"replayed": {"const": true}}}]}),
        );
        op
    };
    let id_endpoint = |id, summary, request: Option<Value>, success, extra_problems| {
        Endpoint {
            id,
            summary,
            sources: if request.is_some() {
                &[Tool, PathId, Body]
            } else {
                &[Tool, PathId]
            },
            parameters: vec![id_parameter.clone()],
            request,
            success,
            extra_problems,
        }
        .operation()
    };
    let paths = json!({
        "/v1/tokens": {
            "get": Endpoint {
                id: "listTokens",
                summary: "List the tokens you may manage (list_tokens), a page at a time.",
                sources: &[Tool, Query],
                parameters: query_parameters(&list_tokens),
                request: None,
                success: ("200", ok("A page of token records.", reference("TokenPage"))),
                extra_problems: &[],
            }.operation(),
            "post": create_op,
        },
        "/v1/tokens/{id}": {
            "get": id_endpoint("getToken", "One token (get_token).", None,
                ("200", ok("The token's record.", record.clone())), &[]),
            "patch": id_endpoint("patchToken",
                "Change a token: name, description, metadata, expiry or limits (update_token), or, in a separate request, what it may reach (scope_token).",
                Some(body(json!({"oneOf": [update, scope]}), true)),
                ("200", ok("The token's record.", record.clone())), &["422"]),
            "delete": id_endpoint("deleteToken", "Revoke a token and its descendants and remove their records (delete_token).",
                None, ("200", ok("What was deleted.", reference("Deleted"))), &[]),
        },
        "/v1/tokens/{id}/pause": {
            "post": id_endpoint("pauseToken", "Pause a token (pause_token).",
                Some(empty_ok(no_arguments.clone())),
                ("200", ok("The token's record.", record.clone())), &[]),
        },
        "/v1/tokens/{id}/resume": {
            "post": id_endpoint("resumeToken", "Resume a paused token (resume_token).",
                Some(empty_ok(no_arguments.clone())),
                ("200", ok("The token's record.", record.clone())), &[]),
        },
        "/v1/tokens/{id}/rotate": {
            "post": id_endpoint("rotateToken", "Issue a new secret (rotate_token); the old one works for the grace period.",
                Some(empty_ok(rotate)),
                ("200", ok("The token's record with `token`, its new secret.", reference("Issued"))), &[]),
        },
        "/v1/tokens/{id}/revoke": {
            "post": id_endpoint("revokeToken", "Revoke a token and every descendant, permanently (revoke_token).",
                Some(empty_ok(revoke)),
                ("200", ok("What was revoked.", reference("Revoked"))), &[]),
        },
        "/v1/whoami": {
            "get": Endpoint {
                id: "whoami",
                summary: "The calling token's record (whoami).",
                sources: &[Tool],
                parameters: vec![],
                request: None,
                success: ("200", ok("The caller's record.", reference("WhoAmI"))),
                extra_problems: &[],
            }.operation(),
        },
        "/v1/verify": {
            "post": Endpoint {
                id: "verifyToken",
                summary: "Whether a secret may call a tool on a bucket (verify_token; owner and admin tokens).",
                sources: &[Tool, Body],
                parameters: vec![],
                request: Some(body(verify, true)),
                success: ("200", ok("The verdict.", reference("Verification"))),
                extra_problems: &[],
            }.operation(),
        },
        "/v1/buckets": {
            "get": Endpoint {
                id: "listBuckets",
                summary: "The gateway's upstreams you hold (list_buckets).",
                sources: &[Tool],
                parameters: vec![],
                request: None,
                success: ("200", ok("The buckets.", buckets_schema())),
                extra_problems: &[],
            }.operation(),
        },
        "/v1/tools": {
            "get": Endpoint {
                id: "listTools",
                summary: "The tools you may call: tokenwarden's own and the gateway's (what \
                          tools/list shows you over MCP; not a tool call, so it spends no use).",
                sources: &[],
                parameters: vec![],
                request: None,
                success: ("200", ok("The tools.", tools_schema())),
                extra_problems: &[],
            }.operation(),
        },
        "/v1/audit": {
            "get": Endpoint {
                id: "listAuditEvents",
                summary: "The audit log (list_audit_events; owner and admin tokens).",
                sources: &[Tool, Query],
                parameters: query_parameters(&audit),
                request: None,
                success: ("200", ok("A page of audit events.", reference("AuditPage"))),
                extra_problems: &[],
            }.operation(),
        },
        "/v1/access": {
            "get": Endpoint {
                id: "listAccessEvents",
                summary: "The access log (list_access_events): the owner and admin tokens see every entry, a token its own subtree's.",
                sources: &[Tool, Query],
                parameters: query_parameters(&access),
                request: None,
                success: ("200", ok("A page of access log entries.", reference("AccessPage"))),
                // A token_id or lineage_id filter outside the caller's reach.
                extra_problems: &["404"],
            }.operation(),
        },
        "/v1/oauth/clients": {
            "get": Endpoint {
                id: "listOAuthClients",
                summary: "The registered OAuth clients (owner and admin tokens).",
                sources: &[OwnerOrAdmin],
                parameters: vec![],
                request: None,
                success: ("200", ok("The clients.", json!({
                    "type": "object", "required": ["clients"],
                    "properties": {"clients": {"type": "array", "items": reference("OAuthClient")}}}))),
                extra_problems: &[],
            }.operation(),
        },
        "/v1/oauth/grants": {
            "get": Endpoint {
                id: "listOAuthGrants",
                summary: "The OAuth grants (owner and admin tokens).",
                sources: &[OwnerOrAdmin],
                parameters: vec![],
                request: None,
                success: ("200", ok("The grants.", grants_schema())),
                extra_problems: &[],
            }.operation(),
        },
        "/v1/oauth/clients/{client_id}": {
            "delete": Endpoint {
                id: "removeOAuthClient",
                summary: "Remove an OAuth client and revoke the tokens it was granted (owner and admin tokens).",
                sources: &[OwnerOrAdmin],
                parameters: vec![json!({"name": "client_id", "in": "path", "required": true, "schema": {"type": "string"}})],
                request: None,
                success: ("200", ok("What was removed.", json!({"type": "object"}))),
                extra_problems: &["404"],
            }.operation(),
        },
    });
    components.insert(
        "Problem".into(),
        json!({"type": "object", "description": "RFC 9457 problem details with the tools' error code.",
            "required": ["type", "title", "status", "detail", "code"], "properties": {
            "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
            "detail": {"type": "string"},
            "code": {"type": "string", "enum": problem::CODES}}}),
    );
    let responses: Map<String, Value> = PROBLEM_MEANINGS
        .iter()
        .map(|(status, meaning)| {
            let mut response = json!({"description": meaning, "content": {
                "application/problem+json": {"schema": reference("Problem")}}});
            if *status == "429" {
                response["headers"] = json!({"Retry-After": {
                    "description": "Seconds to wait before trying again.",
                    "required": true,
                    "schema": {"type": "integer", "minimum": 0}}});
            }
            if *status == "401" {
                response["headers"] = json!({"WWW-Authenticate": {
                    "description": "The RFC 6750 challenge, naming the protected resource metadata.",
                    "required": true,
                    "schema": {"type": "string"}}});
            }
            (format!("Problem{status}"), response)
        })
        .collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "tokenwarden",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Manage tokenwarden's tokens over REST. Each endpoint is the MCP tool of the same name, with the same rules.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": responses,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "A tokenwarden token secret (mcp_…)."},
                "oauth": {"type": "oauth2", "flows": {"authorizationCode": {
                    "authorizationUrl": "/oauth/authorize",
                    "tokenUrl": "/oauth/token",
                    "scopes": {}}}},
            },
        },
    })
}

fn without_description(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Some(object) = schema.as_object_mut() {
        object.remove("description");
    }
    schema
}

/// `list_buckets`' answer (built in `mcp::list_buckets`, which has no type of its own).
fn buckets_schema() -> Value {
    json!({"type": "object", "required": ["buckets"], "properties": {"buckets": {
        "type": "array", "items": {"type": "object", "required": ["name", "transport", "status", "tools"],
        "properties": {
            "name": {"type": "string"}, "transport": {"type": "string"},
            "status": {"type": "string", "enum": ["connected", "connecting", "unavailable"]},
            "tools": {"type": "integer", "minimum": 0}, "error": {"type": "string"}}}}}})
}

/// `GET /v1/tools`' answer (built in `rest::tools` from `tools/list`).
fn tools_schema() -> Value {
    json!({"type": "object", "required": ["tools"], "properties": {"tools": {
        "type": "array", "items": {"type": "object", "required": ["name", "read_only"],
        "properties": {
            "name": {"type": "string"}, "read_only": {"type": "boolean"},
            "description": {"type": ["string", "null"]}}}}}})
}

/// The grants' rows (built in `cli::oauth::grants`).
fn grants_schema() -> Value {
    json!({"type": "object", "required": ["grants"], "properties": {"grants": {
        "type": "array", "items": {"type": "object",
        "required": ["grant_id", "client_id", "approver", "access_token", "access_token_status", "created_at"]}}}})
}

pub async fn document() -> Response {
    static DOCUMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| build().to_string());
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
        .into_response()
}
