//! The arguments and results of every service operation. The MCP tools take these types as
//! their arguments directly (their JSON Schemas come from here), and the CLI builds them from
//! flags, so every front end speaks the same shapes. Unknown fields are refused.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::validate;
use crate::audit::AuditEvent;
use crate::record::{Actor, EffectiveStatus, Status};
use crate::rules::cidr::IpNet;
use crate::rules::pattern::{TOOL_NAME_PATTERN, ToolPattern};
use crate::rules::scope::BUCKET_PATTERN;
use crate::secret::TokenId;
use crate::timestamp::Timestamp;

/// Distinguishes "absent" (keep) from `null` (clear) for optional fields of an update.
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    Asc,
    #[default]
    Desc,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListTokens {
    /// Only tokens whose own status is this: active, paused, revoked or expired.
    pub status: Option<Status>,
    /// Only tokens that may reach this bucket.
    #[schemars(pattern(BUCKET_PATTERN))]
    pub bucket: Option<String>,
    /// Only direct children of this token id.
    #[schemars(with = "Option<TokenId>")]
    pub parent_id: Option<String>,
    /// Case-insensitive substring of the name or description.
    #[schemars(length(max = validate::MAX_SEARCH_CHARS))]
    pub search: Option<String>,
    /// Page size, 1-100 (default 20).
    #[schemars(range(min = 1, max = validate::MAX_PAGE_LIMIT))]
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
    /// By creation time: `desc` (newest first, default) or `asc`.
    pub order: Option<SortOrder>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRef {
    /// The token id, `tok_` followed by 24 letters or digits.
    #[schemars(with = "TokenId")]
    pub id: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeToken {
    /// The token id, `tok_` followed by 24 letters or digits.
    #[schemars(with = "TokenId")]
    pub id: String,
    /// Also revoke every token it (or anything under it) minted outside its own subtree, such
    /// as roots it created with `parent: none`, transitively, with their subtrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_minted: Option<bool>,
}

impl From<TokenRef> for RevokeToken {
    fn from(r: TokenRef) -> RevokeToken {
        RevokeToken {
            id: r.id,
            include_minted: None,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Human-readable name, 1-128 characters.
    #[schemars(length(min = 1, max = validate::MAX_NAME_CHARS))]
    pub name: String,
    /// Optional description, up to 1024 characters.
    #[schemars(length(max = validate::MAX_DESCRIPTION_CHARS))]
    pub description: Option<String>,
    /// Buckets the token may reach: names, or ["*"] for all. Omitted: a child inherits its
    /// parent's; a root token gets all when the owner creates it, the minting token's when a
    /// token does.
    #[schemars(length(max = validate::MAX_LIST_ITEMS), inner(pattern(BUCKET_PATTERN)))]
    pub buckets: Option<Vec<String>>,
    /// Tool patterns the token may call: exact names, "*", or prefixes such as "list_*".
    /// Omitted: a child inherits its parent's; a root token gets all when the owner creates
    /// it, the minting token's when a token does.
    #[schemars(with = "Option<Vec<ToolPattern>>", length(max = validate::MAX_LIST_ITEMS))]
    pub tools: Option<Vec<String>>,
    /// Tool patterns never callable, even where tools allows, e.g. ["fs__write_*"]. A token
    /// always keeps its parent's (and a token minter's) denials as well.
    #[schemars(with = "Option<Vec<ToolPattern>>", length(max = validate::MAX_LIST_ITEMS))]
    pub deny_tools: Option<Vec<String>>,
    /// If true, only tools annotated read-only may be called.
    pub read_only: Option<bool>,
    /// If true, the token may see and manage every token. Only the owner or an admin may grant it.
    pub admin: Option<bool>,
    /// CIDR ranges the token may be used from over HTTP, e.g. ["10.0.0.0/8"]. Empty: any.
    #[schemars(with = "Option<Vec<IpNet>>", length(max = validate::MAX_LIST_ITEMS))]
    pub allowed_ips: Option<Vec<String>>,
    /// Expiry as RFC 3339, e.g. "2026-12-31T23:59:59Z". Exclusive with ttl_seconds.
    #[schemars(with = "Option<Timestamp>")]
    pub expires_at: Option<String>,
    /// Lifetime in seconds from now. Exclusive with expires_at.
    #[schemars(range(min = 1, max = validate::MAX_TTL_SECONDS))]
    pub ttl_seconds: Option<i64>,
    /// Number of tool calls allowed in total. Omitted: unlimited (or the parent's limit).
    #[schemars(range(min = 1, max = validate::MAX_USES))]
    pub max_uses: Option<i64>,
    /// Tool calls allowed per minute. Omitted: unlimited (or the parent's limit).
    #[schemars(range(min = 1, max = validate::MAX_RATE_PER_MINUTE))]
    pub rate_limit_per_minute: Option<i64>,
    /// Free-form JSON object, at most 4 KiB serialised.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// "self" (default for a token caller: the new token is its child), "none" (a root token:
    /// owner or admin only), or the id of a token in your reach to be the parent.
    pub parent: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateToken {
    /// The token id.
    #[schemars(with = "TokenId")]
    pub id: String,
    /// New name, 1-128 characters.
    #[schemars(length(min = 1, max = validate::MAX_NAME_CHARS))]
    pub name: Option<String>,
    /// New description; null clears it.
    #[serde(default, deserialize_with = "nullable")]
    #[schemars(with = "Option<String>", length(max = validate::MAX_DESCRIPTION_CHARS))]
    pub description: Option<Option<String>>,
    /// Replaces the metadata object (at most 4 KiB serialised).
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// New expiry (RFC 3339); null removes it (only within the parent's expiry).
    #[serde(default, deserialize_with = "nullable")]
    #[schemars(with = "Option<Timestamp>")]
    pub expires_at: Option<Option<String>>,
    /// New total call limit; null removes it.
    #[serde(default, deserialize_with = "nullable")]
    #[schemars(with = "Option<i64>", range(min = 1, max = validate::MAX_USES))]
    pub max_uses: Option<Option<i64>>,
    /// New per-minute call limit; null removes it.
    #[serde(default, deserialize_with = "nullable")]
    #[schemars(with = "Option<i64>", range(min = 1, max = validate::MAX_RATE_PER_MINUTE))]
    pub rate_limit_per_minute: Option<Option<i64>>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeToken {
    /// The token id.
    #[schemars(with = "TokenId")]
    pub id: String,
    /// Replaces the bucket list (["*"] for all). Exclusive with add_buckets/remove_buckets.
    #[schemars(length(max = validate::MAX_LIST_ITEMS), inner(pattern(BUCKET_PATTERN)))]
    pub buckets: Option<Vec<String>>,
    /// Buckets to add.
    #[schemars(length(max = validate::MAX_LIST_ITEMS), inner(pattern(BUCKET_PATTERN)))]
    pub add_buckets: Option<Vec<String>>,
    /// Buckets to remove.
    #[schemars(length(max = validate::MAX_LIST_ITEMS), inner(pattern(BUCKET_PATTERN)))]
    pub remove_buckets: Option<Vec<String>>,
    /// Replaces the tool patterns. Exclusive with add_tools/remove_tools.
    #[schemars(with = "Option<Vec<ToolPattern>>", length(max = validate::MAX_LIST_ITEMS))]
    pub tools: Option<Vec<String>>,
    /// Tool patterns to add.
    #[schemars(with = "Option<Vec<ToolPattern>>", length(max = validate::MAX_LIST_ITEMS))]
    pub add_tools: Option<Vec<String>>,
    /// Tool patterns to remove (exact pattern text).
    #[schemars(with = "Option<Vec<ToolPattern>>", length(max = validate::MAX_LIST_ITEMS))]
    pub remove_tools: Option<Vec<String>>,
    /// Replaces the denied tool patterns (never fewer than the parent's). Exclusive with
    /// add_deny_tools.
    #[schemars(with = "Option<Vec<ToolPattern>>", length(max = validate::MAX_LIST_ITEMS))]
    pub deny_tools: Option<Vec<String>>,
    /// Denied tool patterns to add.
    #[schemars(with = "Option<Vec<ToolPattern>>", length(max = validate::MAX_LIST_ITEMS))]
    pub add_deny_tools: Option<Vec<String>>,
    /// Set or clear read-only.
    pub read_only: Option<bool>,
    /// Replaces the allowed CIDR ranges; [] allows any address.
    #[schemars(with = "Option<Vec<IpNet>>", length(max = validate::MAX_LIST_ITEMS))]
    pub allowed_ips: Option<Vec<String>>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateToken {
    /// The token id.
    #[schemars(with = "TokenId")]
    pub id: String,
    /// How long the old secret keeps working, 0-86400 seconds (default 60).
    #[schemars(range(min = 0, max = validate::MAX_GRACE_SECONDS))]
    pub grace_seconds: Option<i64>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyToken {
    /// The secret to check (mcp_…). It is never stored or logged.
    pub token: String,
    /// A tool name to check the secret against.
    #[schemars(pattern(TOOL_NAME_PATTERN))]
    pub tool: Option<String>,
    /// A bucket to check the secret against.
    #[schemars(pattern(BUCKET_PATTERN))]
    pub bucket: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListAuditEvents {
    /// Only events about this token id.
    #[schemars(with = "Option<TokenId>")]
    pub token_id: Option<String>,
    /// Only this action: create, update, scope, pause, resume, rotate, revoke, delete, import,
    /// prune, oauth_register, oauth_approve, oauth_token, oauth_refresh, oauth_revoke.
    pub action: Option<String>,
    /// Only events at or after this RFC 3339 time.
    #[schemars(with = "Option<Timestamp>")]
    pub since: Option<String>,
    /// Page size, 1-100 (default 20).
    #[schemars(range(min = 1, max = validate::MAX_PAGE_LIMIT))]
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

/// `list_access_events`: every filter is optional and they combine.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListAccessEvents {
    /// Only calls by this token.
    #[schemars(with = "Option<TokenId>")]
    pub token_id: Option<String>,
    /// Only calls by tokens of this lineage (the root token's id).
    #[schemars(with = "Option<TokenId>")]
    pub lineage_id: Option<String>,
    /// Only calls of this tool (gateway tools as `bucket__tool`).
    pub tool: Option<String>,
    /// Only forwarded calls to this bucket.
    pub bucket: Option<String>,
    /// Only this outcome: `ok`, an error code (`forbidden`, `rate_limited`,
    /// `upstream_timeout`, …) or a refusal reason (`revoked`, `paused`, `too_many_in_flight`, …).
    pub outcome: Option<String>,
    /// Only entries at or after this RFC 3339 time.
    #[schemars(with = "Option<Timestamp>")]
    pub since: Option<String>,
    /// Only entries before this RFC 3339 time.
    #[schemars(with = "Option<Timestamp>")]
    pub until: Option<String>,
    /// Page size, 1-100 (default 20).
    #[schemars(range(min = 1, max = validate::MAX_PAGE_LIMIT))]
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

/// One access log entry as `list_access_events` returns it. Never arguments, results or
/// secrets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccessEvent {
    pub at: Timestamp,
    /// The calling token; absent for the owner.
    pub token_id: Option<TokenId>,
    /// The root of the calling token's lineage.
    pub lineage_id: Option<TokenId>,
    /// The tool called; absent for a request refused before a tool was named.
    pub tool: Option<String>,
    /// The bucket of a forwarded gateway call.
    pub bucket: Option<String>,
    /// `ok`, an error code, or a refusal reason.
    pub outcome: String,
    /// How long the call took, in milliseconds.
    pub duration_ms: f64,
    /// For a forwarded call the upstream answered: its result's `isError`.
    pub upstream_is_error: Option<bool>,
    /// `mcp` or `rest`.
    pub via: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct AccessPage {
    pub events: Vec<AccessEvent>,
    pub has_more: bool,
    pub next_cursor: Option<String>,
}

/// A token as every tool returns it (SPEC §3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenView {
    pub id: TokenId,
    pub name: String,
    pub description: Option<String>,
    pub environment: String,
    pub buckets: Vec<String>,
    pub tools: Vec<ToolPattern>,
    pub deny_tools: Vec<ToolPattern>,
    pub read_only: bool,
    pub admin: bool,
    pub allowed_ips: Vec<IpNet>,
    pub status: Status,
    pub effective_status: EffectiveStatus,
    pub masked: String,
    pub last4: String,
    pub parent_id: Option<TokenId>,
    pub created_by: Actor,
    pub depth: u8,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub expires_at: Option<Timestamp>,
    pub max_uses: Option<u64>,
    pub remaining_uses: Option<u64>,
    pub rate_limit_per_minute: Option<u32>,
    pub use_count: u64,
    pub last_used_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub paused_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub rotated_at: Option<Timestamp>,
}

/// The result of create and rotate: the record plus the secret, shown this once.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Issued {
    #[serde(flatten)]
    pub record: TokenView,
    pub token: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct TokenPage {
    pub records: Vec<TokenView>,
    pub has_more: bool,
    pub next_cursor: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Revoked {
    pub id: TokenId,
    pub revoked: bool,
    pub revoked_descendants: u64,
    /// Tokens revoked because the target (or its subtree) minted them outside its subtree,
    /// with their subtrees: always 0 without `include_minted`.
    pub revoked_minted: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Deleted {
    pub id: TokenId,
    pub deleted: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Verification {
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<TokenId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    pub has_more: bool,
    pub next_cursor: Option<String>,
}

/// `whoami`: the caller's record, or `{"owner": true}`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum WhoAmI {
    Owner { owner: bool },
    Token(Box<TokenView>),
}
