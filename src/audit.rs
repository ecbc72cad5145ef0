//! Audit events: who did what to which token, and what changed. Never a secret.

use serde::{Deserialize, Serialize};

use crate::record::Actor;
use crate::secret::TokenId;
use crate::timestamp::Timestamp;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditEvent {
    /// Monotonic; assigned by the store when the event is written.
    pub id: u64,
    pub at: Timestamp,
    pub actor: Actor,
    /// `create`, `update`, `scope`, `pause`, `resume`, `rotate`, `revoke`, `delete`, `import`,
    /// `prune` (audit retention removed old events).
    pub action: String,
    pub target: Option<TokenId>,
    /// What changed: field names with their new values (secrets never appear here).
    pub changes: serde_json::Value,
}

impl AuditEvent {
    pub fn new(
        actor: &Actor,
        action: &str,
        target: &TokenId,
        at: Timestamp,
        changes: serde_json::Value,
    ) -> AuditEvent {
        AuditEvent {
            id: 0,
            at,
            actor: actor.clone(),
            action: action.to_owned(),
            target: Some(target.clone()),
            changes,
        }
    }
}

/// Every action the audit log records: the management tools', `import` and `prune`, and the
/// OAuth server's (client registered, consent approved, code exchanged, refreshed, revoked).
pub const ACTIONS: &[&str] = &[
    "create",
    "update",
    "scope",
    "pause",
    "resume",
    "rotate",
    "revoke",
    "delete",
    "import",
    "prune",
    "oauth_register",
    "oauth_approve",
    "oauth_token",
    "oauth_refresh",
    "oauth_revoke",
];
