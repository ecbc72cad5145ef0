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

use crate::service::requests::{
    CreateToken, ListAuditEvents, ListTokens, RevokeToken, RotateToken, ScopeToken, UpdateToken,
    VerifyToken,
};

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
    if let Some(properties) = schema["properties"].as_object_mut() {
        properties.remove(field);
    }
    if let Some(required) = schema["required"].as_array_mut() {
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
                    let mut property = property.clone();
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

/// The problem answers every guarded endpoint may give.
fn problems(extra: &[&str]) -> Map<String, Value> {
    let mut responses = Map::new();
    for status in ["400", "401", "403", "404", "413", "415", "429"]
        .iter()
        .chain(extra)
    {
        responses.insert(
            (*status).to_owned(),
            json!({"$ref": format!("#/components/responses/Problem{status}")}),
        );
    }
    responses
}

fn operation(
    id: &str,
    summary: &str,
    parameters: Vec<Value>,
    request: Option<Value>,
    success: (&str, Value),
    extra_problems: &[&str],
) -> Value {
    let mut responses = problems(extra_problems);
    responses.insert(success.0.to_owned(), success.1);
    let mut op = json!({
        "operationId": id,
        "summary": summary,
        "parameters": parameters,
        "responses": responses,
        "security": [{"bearer": []}, {"oauth": []}],
    });
    if let Some(request) = request {
        op["requestBody"] = request;
    }
    op
}

/// The OpenAPI document.
pub fn build() -> Value {
    let mut components = Map::new();
    let list_tokens = schema_of::<ListTokens>(&mut components);
    let audit = schema_of::<ListAuditEvents>(&mut components);
    let create = schema_of::<CreateToken>(&mut components);
    let update = without(schema_of::<UpdateToken>(&mut components), "id");
    let scope = without(schema_of::<ScopeToken>(&mut components), "id");
    let rotate = without(schema_of::<RotateToken>(&mut components), "id");
    let revoke = without(schema_of::<RevokeToken>(&mut components), "id");
    let verify = schema_of::<VerifyToken>(&mut components);
    let record = json!({"$ref": "#/components/schemas/TokenRecord"});
    let id_parameter = json!({
        "name": "id", "in": "path", "required": true,
        "description": "The token id, `tok_` followed by 24 letters or digits.",
        "schema": {"type": "string"},
    });
    let empty_ok = |schema: Value| body(schema, false);
    let create_op = {
        let mut op = operation(
            "createToken",
            "Create a token (create_token); its secret is in the answer, once.",
            vec![
                json!({"name": "Idempotency-Key", "in": "header", "required": false,
                        "description": "A retry with the same key (same caller, 24 hours) makes no second token: it answers 200 with the first one's record, without its secret, and `replayed: true`.",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255}}),
            ],
            Some(body(create, true)),
            (
                "201",
                ok(
                    "The new token's record with `token`, its secret.",
                    json!({"$ref": "#/components/schemas/IssuedToken"}),
                ),
            ),
            &["409", "422"],
        );
        op["responses"]["200"] = ok(
            "A replayed create: the first token's record, without its secret.",
            record.clone(),
        );
        op
    };
    let paths = json!({
        "/v1/tokens": {
            "get": operation("listTokens", "List the tokens you may manage (list_tokens), a page at a time.",
                query_parameters(&list_tokens), None,
                ("200", ok("A page of token records.", json!({"$ref": "#/components/schemas/TokenPage"}))), &[]),
            "post": create_op,
        },
        "/v1/tokens/{id}": {
            "get": operation("getToken", "One token (get_token).", vec![id_parameter.clone()], None,
                ("200", ok("The token's record.", record.clone())), &[]),
            "patch": operation("patchToken",
                "Change a token: name, description, metadata, expiry or limits (update_token), or, in a separate request, what it may reach (scope_token).",
                vec![id_parameter.clone()],
                Some(body(json!({"oneOf": [update, scope]}), true)),
                ("200", ok("The token's record.", record.clone())), &["409", "422"]),
            "delete": operation("deleteToken", "Revoke a token and its descendants and remove their records (delete_token).",
                vec![id_parameter.clone()], None,
                ("200", ok("What was deleted.", json!({"type": "object", "properties": {"id": {"type": "string"}, "deleted": {"type": "boolean"}}}))), &[]),
        },
        "/v1/tokens/{id}/pause": {
            "post": operation("pauseToken", "Pause a token (pause_token).", vec![id_parameter.clone()],
                Some(empty_ok(json!({"type": "object", "additionalProperties": false}))),
                ("200", ok("The token's record.", record.clone())), &[]),
        },
        "/v1/tokens/{id}/resume": {
            "post": operation("resumeToken", "Resume a paused token (resume_token).", vec![id_parameter.clone()],
                Some(empty_ok(json!({"type": "object", "additionalProperties": false}))),
                ("200", ok("The token's record.", record.clone())), &["409"]),
        },
        "/v1/tokens/{id}/rotate": {
            "post": operation("rotateToken", "Issue a new secret (rotate_token); the old one works for the grace period.",
                vec![id_parameter.clone()], Some(empty_ok(rotate)),
                ("200", ok("The token's record with `token`, its new secret.", json!({"$ref": "#/components/schemas/IssuedToken"}))), &["409"]),
        },
        "/v1/tokens/{id}/revoke": {
            "post": operation("revokeToken", "Revoke a token and every descendant, permanently (revoke_token).",
                vec![id_parameter], Some(empty_ok(revoke)),
                ("200", ok("What was revoked.", json!({"type": "object", "properties": {
                    "id": {"type": "string"}, "revoked": {"type": "boolean"},
                    "revoked_descendants": {"type": "integer"}, "revoked_minted": {"type": "integer"}}}))), &[]),
        },
        "/v1/whoami": {
            "get": operation("whoami", "The calling token's record (whoami).", vec![], None,
                ("200", ok("The caller's record.", record.clone())), &[]),
        },
        "/v1/verify": {
            "post": operation("verifyToken", "Whether a secret may call a tool on a bucket (verify_token; owner and admin tokens).",
                vec![], Some(body(verify, true)),
                ("200", ok("The verdict.", json!({"type": "object", "properties": {
                    "valid": {"type": "boolean"}, "token_id": {"type": ["string", "null"]},
                    "allowed": {"type": ["boolean", "null"]}, "reason": {"type": ["string", "null"]}}}))), &[]),
        },
        "/v1/buckets": {
            "get": operation("listBuckets", "The gateway's upstreams you hold (list_buckets).", vec![], None,
                ("200", ok("The buckets.", json!({"type": "object", "properties": {"buckets": {"type": "array", "items": {"type": "object"}}}}))), &[]),
        },
        "/v1/audit": {
            "get": operation("listAuditEvents", "The audit log (list_audit_events; owner and admin tokens).",
                query_parameters(&audit), None,
                ("200", ok("A page of audit events.", json!({"type": "object", "properties": {
                    "events": {"type": "array", "items": {"type": "object"}},
                    "has_more": {"type": "boolean"}, "next_cursor": {"type": ["string", "null"]}}}))), &[]),
        },
        "/v1/oauth/clients": {
            "get": operation("listOAuthClients", "The registered OAuth clients (owner and admin tokens).", vec![], None,
                ("200", ok("The clients.", json!({"type": "object", "properties": {"clients": {"type": "array", "items": {"type": "object"}}}}))), &[]),
        },
        "/v1/oauth/grants": {
            "get": operation("listOAuthGrants", "The OAuth grants (owner and admin tokens).", vec![], None,
                ("200", ok("The grants.", json!({"type": "object", "properties": {"grants": {"type": "array", "items": {"type": "object"}}}}))), &[]),
        },
        "/v1/oauth/clients/{client_id}": {
            "delete": operation("removeOAuthClient", "Remove an OAuth client and revoke the tokens it was granted (owner and admin tokens).",
                vec![json!({"name": "client_id", "in": "path", "required": true, "schema": {"type": "string"}})], None,
                ("200", ok("What was removed.", json!({"type": "object"}))), &[]),
        },
    });
    components.insert("TokenRecord".into(), token_record());
    components.insert(
        "IssuedToken".into(),
        json!({"allOf": [{"$ref": "#/components/schemas/TokenRecord"},
            {"type": "object", "required": ["token"], "properties": {"token": {"type": "string", "description": "The secret, shown once."}}}]}),
    );
    components.insert(
        "TokenPage".into(),
        json!({"type": "object", "required": ["records", "has_more"], "properties": {
            "records": {"type": "array", "items": {"$ref": "#/components/schemas/TokenRecord"}},
            "has_more": {"type": "boolean"},
            "next_cursor": {"type": ["string", "null"]}}}),
    );
    components.insert(
        "Problem".into(),
        json!({"type": "object", "description": "RFC 9457 problem details with the tools' error code.",
            "required": ["type", "title", "status", "detail", "code"], "properties": {
            "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
            "detail": {"type": "string"},
            "code": {"type": "string", "enum": ["unauthorized", "invalid_argument", "not_found", "forbidden",
                "scope_exceeds_parent", "conflict", "limit_exceeded", "rate_limited", "internal",
                "upstream_unavailable", "upstream_timeout", "upstream_result_too_large"]}}}),
    );
    let mut responses = Map::new();
    for (status, meaning) in [
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
        ("409", "The token's state forbids it."),
        ("413", "The body is over 1 MiB."),
        ("415", "The body is not application/json."),
        (
            "422",
            "It would give a token more than its parent or the caller holds.",
        ),
        (
            "429",
            "Too many requests in flight, or the rate limit; see Retry-After.",
        ),
    ] {
        responses.insert(
            format!("Problem{status}"),
            json!({"description": meaning, "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}),
        );
    }
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

/// The token record (SPEC §3) as every endpoint returns it.
fn token_record() -> Value {
    let string = json!({"type": "string"});
    let nullable_string = json!({"type": ["string", "null"]});
    let nullable_int = json!({"type": ["integer", "null"]});
    let strings = json!({"type": "array", "items": {"type": "string"}});
    json!({"type": "object", "required": ["id", "name", "status", "effective_status"], "properties": {
        "id": string, "name": string, "description": nullable_string, "environment": string,
        "buckets": strings, "tools": strings, "deny_tools": strings, "read_only": {"type": "boolean"},
        "admin": {"type": "boolean"}, "allowed_ips": strings,
        "status": {"type": "string", "enum": ["active", "paused", "revoked", "expired"]},
        "effective_status": {"type": "string", "enum": ["active", "paused", "revoked", "expired",
            "paused_by_ancestor", "revoked_by_ancestor", "expired_by_ancestor"]},
        "masked": string, "last4": string, "parent_id": nullable_string, "created_by": string,
        "depth": {"type": "integer"}, "metadata": {"type": "object"},
        "expires_at": nullable_string, "max_uses": nullable_int, "remaining_uses": nullable_int,
        "rate_limit_per_minute": nullable_int, "use_count": {"type": "integer"},
        "last_used_at": nullable_string, "created_at": string, "updated_at": nullable_string,
        "paused_at": nullable_string, "revoked_at": nullable_string, "rotated_at": nullable_string,
        "replayed": {"type": "boolean"},
    }})
}

pub async fn document() -> Response {
    static DOCUMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| build().to_string());
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
        .into_response()
}
