//! The stored token record (SPEC §3) and the statuses derived from it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::rules::scope::Scope;
use crate::secret::{SecretHash, TokenId};
use crate::timestamp::Timestamp;

/// A token's own state. `Expired` is never stored: it is computed from `expires_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Paused,
    Revoked,
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Paused => "paused",
            Status::Revoked => "revoked",
            Status::Expired => "expired",
        }
    }
}

/// What a request presenting the token meets now, its ancestors taken into account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EffectiveStatus {
    Active,
    Paused,
    Revoked,
    Expired,
    PausedByAncestor,
    RevokedByAncestor,
    ExpiredByAncestor,
}

/// Who performed an action or created a token: the owner, or a token by id.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Actor {
    Owner,
    Token(TokenId),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Owner => f.write_str("owner"),
            Actor::Token(id) => id.fmt(f),
        }
    }
}

impl fmt::Debug for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl schemars::JsonSchema for Actor {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Actor".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "\"owner\", or the id of the token that acted.",
            "pattern": format!("^owner$|{}", crate::secret::ID_PATTERN),
        })
    }
}

impl Serialize for Actor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Actor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text == "owner" {
            Ok(Actor::Owner)
        } else {
            TokenId::parse(&text)
                .map(Actor::Token)
                .map_err(serde::de::Error::custom)
        }
    }
}

/// Everything stored about a token except its usage counters, which live under their own keys
/// (see `store`). Tools never return this directly: they return a `TokenView`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: TokenId,
    pub name: String,
    pub description: Option<String>,
    pub scope: Scope,
    /// `Active`, `Paused` or `Revoked`.
    pub status: Status,
    pub masked: String,
    pub last4: String,
    pub parent_id: Option<TokenId>,
    pub created_by: Actor,
    pub depth: u8,
    #[serde(with = "metadata_as_json")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub paused_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub rotated_at: Option<Timestamp>,
    /// Hashes of the secrets that authenticate as this token: the current one, plus rotated-out
    /// ones still inside their grace period.
    pub hashes: Vec<SecretHash>,
}

/// Metadata is free-form JSON; the compact binary record encoding cannot carry arbitrary JSON
/// values, so it is stored as a JSON string.
mod metadata_as_json {
    use serde::{Deserialize, Deserializer, Serializer};

    type Map = serde_json::Map<String, serde_json::Value>;

    pub fn serialize<S: Serializer>(map: &Map, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&serde_json::to_string(map).map_err(serde::ser::Error::custom)?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Map, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}

impl TokenRecord {
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.scope.expires_at.is_some_and(|e| e <= now)
    }

    /// The token's own status, expiry included.
    pub fn status_at(&self, now: Timestamp) -> Status {
        match self.status {
            Status::Revoked => Status::Revoked,
            _ if self.is_expired(now) => Status::Expired,
            s => s,
        }
    }
}

/// The status a request meets: the token's own if not active, else the first inactive
/// ancestor's. `chain[0]` is the token, then its parent, up to the root.
pub fn effective_status(chain: &[&TokenRecord], now: Timestamp) -> EffectiveStatus {
    let Some((own, ancestors)) = chain.split_first() else {
        return EffectiveStatus::Revoked;
    };
    match own.status_at(now) {
        Status::Revoked => return EffectiveStatus::Revoked,
        Status::Expired => return EffectiveStatus::Expired,
        Status::Paused => return EffectiveStatus::Paused,
        Status::Active => {}
    }
    // A revoked ancestor outranks a paused one: revocation is permanent.
    let statuses: Vec<Status> = ancestors.iter().map(|a| a.status_at(now)).collect();
    if statuses.contains(&Status::Revoked) {
        EffectiveStatus::RevokedByAncestor
    } else if statuses.contains(&Status::Expired) {
        EffectiveStatus::ExpiredByAncestor
    } else if statuses.contains(&Status::Paused) {
        EffectiveStatus::PausedByAncestor
    } else {
        EffectiveStatus::Active
    }
}
