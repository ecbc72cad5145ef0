//! Operations that change tokens: create, update, scope, pause, resume, rotate, revoke, delete.
//!
//! Each runs under the write lock: read the current records, check reach and attenuation,
//! build one `Change` (records, hashes, audit), apply it, then flush outside the lock.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, MutexGuard};

use serde_json::json;

use super::requests::{
    CreateToken, Deleted, Issued, RevokeToken, Revoked, RotateToken, ScopeToken, TokenRef,
    UpdateToken,
};
use super::usage::{Guard, UsageTable};
use super::{Acting, Caller, Service, validate};
use crate::audit::AuditEvent;
use crate::error::{Error, ErrorCode, Result};
use crate::record::{EffectiveStatus, Status, TokenRecord, effective_status};
use crate::rules::pattern::ToolPattern;
use crate::rules::scope::{ALL, Scope, normalise_buckets, normalise_tools, union_denials};
use crate::secret::{Secret, TokenId};
use crate::store::{Change, HashEntry};
use crate::timestamp::Timestamp;

const DEFAULT_GRACE_SECONDS: i64 = 60;

/// The refusal when a token caller asks for more than it holds itself (SPEC §4: no token can
/// grant what it does not hold), naming each field and whose scope it exceeds.
fn exceeds_bounds(
    parent: Option<(&TokenId, &[&str])>,
    caller: Option<(&TokenId, &[&str])>,
) -> Error {
    let mut parts = Vec::new();
    // The caller is the parent (an agent minting its own child): one bound, said once.
    if let (Some((parent_id, parent_fields)), Some((caller_id, caller_fields))) = (parent, caller)
        && parent_id == caller_id
    {
        let mut fields: Vec<&str> = parent_fields.to_vec();
        fields.extend(caller_fields.iter().filter(|f| !parent_fields.contains(f)));
        return Error::new(
            ErrorCode::ScopeExceedsParent,
            format!(
                "requested scope exceeds parent {parent_id}, the calling token (no token can \
                 grant what it does not hold), in: {}",
                fields.join(", ")
            ),
        );
    }
    if let Some((id, fields)) = parent.filter(|(_, f)| !f.is_empty()) {
        parts.push(format!("parent {id} in: {}", fields.join(", ")));
    }
    if let Some((id, fields)) = caller.filter(|(_, f)| !f.is_empty()) {
        parts.push(format!(
            "the scope of the calling token {id} (no token can grant what it does not hold) in: {}",
            fields.join(", ")
        ));
    }
    Error::new(
        ErrorCode::ScopeExceedsParent,
        format!("requested scope exceeds {}", parts.join("; and ")),
    )
}

/// Refuses any change to a token that has expired, itself or through an ancestor: expiry is
/// final, like revocation (SPEC §4), so nothing may bring it back.
fn refuse_expired(chain: &[Arc<TokenRecord>], now: Timestamp) -> Result<()> {
    match effective_status(&links(chain), now) {
        EffectiveStatus::Expired => Err(Error::conflict(format!(
            "token {} has expired; expiry is final",
            chain[0].id
        ))),
        EffectiveStatus::ExpiredByAncestor => Err(Error::conflict(format!(
            "token {} has expired with its ancestor; expiry is final",
            chain[0].id
        ))),
        _ => Ok(()),
    }
}

/// Adds `record`'s revocation at `now` to `change`.
fn revoke_record(record: &Arc<TokenRecord>, change: &mut Change, now: Timestamp) {
    let mut updated = (**record).clone();
    updated.status = Status::Revoked;
    updated.revoked_at = Some(now);
    updated.updated_at = now;
    change.put(Some(Arc::clone(record)), updated);
}

/// A token `create_token` has decided to mint, before its secret and id exist.
struct PlannedToken {
    actor: crate::record::Actor,
    name: String,
    description: Option<String>,
    metadata: serde_json::Map<String, serde_json::Value>,
    scope: Scope,
    parent_id: Option<TokenId>,
    depth: u8,
}

fn links(chain: &[Arc<TokenRecord>]) -> Vec<&TokenRecord> {
    chain.iter().map(Arc::as_ref).collect()
}

impl Service {
    /// Applies `change`, keeps the usage table in step, releases the locks and flushes.
    fn commit(
        &self,
        write: MutexGuard<'_, ()>,
        usage: Option<Guard<'_>>,
        change: Change,
    ) -> Result<()> {
        let mut usage = usage.unwrap_or_else(|| self.usage.lock());
        let remaining = change.remaining_updates();
        let removed = change.removed_ids();
        self.store.apply(change)?;
        for (id, r) in remaining {
            UsageTable::set_remaining(&mut usage, &id, r);
        }
        for id in removed {
            UsageTable::forget(&mut usage, &id);
        }
        drop(usage);
        drop(write);
        self.store.flush()?;
        Ok(())
    }

    /// Refuses a change to a revoked or expired token, a token widening its own scope, a scope
    /// beyond the target's parent, and, for a token caller, any field it sets or widens beyond
    /// its own scope.
    fn check_changeable(
        &self,
        acting: &Acting,
        chain: &[Arc<TokenRecord>],
        new_scope: &Scope,
        now: Timestamp,
    ) -> Result<()> {
        let target = &chain[0];
        if target.status == Status::Revoked {
            return Err(Error::conflict(format!("token {} is revoked", target.id)));
        }
        refuse_expired(chain, now)?;
        let parent = chain.get(1);
        let parent_fields = parent.map_or_else(Vec::new, |p| new_scope.fields_exceeding(&p.scope));
        if let Some(me) = acting.token().filter(|me| me.id == target.id)
            && parent_fields.is_empty()
        {
            let fields = new_scope.fields_exceeding(&target.scope);
            if !fields.is_empty() {
                return Err(Error::forbidden(format!(
                    "token {} may not widen its own scope: {}",
                    me.id,
                    fields.join(", ")
                )));
            }
        }
        let changed = new_scope.fields_changed(&target.scope);
        let caller_fields: Vec<&str> = match acting.token() {
            Some(me) => new_scope
                .fields_exceeding(&me.scope)
                .into_iter()
                .filter(|f| changed.contains(f))
                .collect(),
            None => Vec::new(),
        };
        if !parent_fields.is_empty() || !caller_fields.is_empty() {
            return Err(exceeds_bounds(
                parent.map(|p| (&p.id, &parent_fields[..])),
                acting.token().map(|me| (&me.id, &caller_fields[..])),
            ));
        }
        Ok(())
    }

    /// Narrows every descendant of `root` so that no stored scope exceeds its parent's,
    /// adjusting remaining uses to the new limits.
    fn clamp_descendants(
        &self,
        root: &TokenRecord,
        usage: &mut Guard<'_>,
        change: &mut Change,
        now: Timestamp,
    ) -> Result<usize> {
        let mut narrowed = 0;
        let mut stack: Vec<(Scope, TokenId)> = self
            .store
            .children(&root.id)?
            .into_iter()
            .map(|c| (root.scope.clone(), c))
            .collect();
        while let Some((parent_scope, id)) = stack.pop() {
            let Some(child) = self.store.get(&id)? else {
                continue;
            };
            let clamped = child.scope.clamped_to(&parent_scope);
            for grandchild in self.store.children(&id)? {
                stack.push((clamped.clone(), grandchild));
            }
            if clamped != child.scope {
                let remaining =
                    self.remaining_after_limit_change(usage, &child, clamped.max_uses)?;
                change.set_remaining(child.id.clone(), remaining);
                let mut updated = (*child).clone();
                updated.scope = clamped;
                updated.updated_at = now;
                change.put(Some(child), updated);
                narrowed += 1;
            }
        }
        Ok(narrowed)
    }

    /// Remaining uses when `max_uses` changes: uses already spent under the old limit stay spent.
    fn remaining_after_limit_change(
        &self,
        usage: &mut Guard<'_>,
        record: &TokenRecord,
        new_max: Option<u64>,
    ) -> Result<Option<u64>> {
        let old_max = record.scope.max_uses;
        Ok(match (old_max, new_max) {
            (_, None) => None,
            (None, Some(new)) => Some(new),
            (Some(old), Some(new)) => {
                let remaining =
                    UsageTable::remaining(usage, &self.store, &record.id)?.unwrap_or(old);
                let spent = old.saturating_sub(remaining);
                Some(new.saturating_sub(spent))
            }
        })
    }

    pub fn create_token(&self, caller: &Caller, req: CreateToken) -> Result<Issued> {
        let now = Timestamp::now();
        let write = self.lock_writes();
        let planned = self.plan_create(&write, caller, req, now)?;
        let secret = Secret::generate();
        let record = TokenRecord {
            id: TokenId::generate(),
            name: planned.name,
            description: planned.description,
            scope: planned.scope,
            status: Status::Active,
            masked: secret.masked(),
            last4: secret.last4().to_owned(),
            parent_id: planned.parent_id,
            created_by: planned.actor.clone(),
            depth: planned.depth,
            metadata: planned.metadata,
            created_at: now,
            updated_at: now,
            paused_at: None,
            revoked_at: None,
            rotated_at: None,
            hashes: vec![secret.hash()],
        };
        let mut change = Change::default();
        change.add_hash(
            secret.hash(),
            HashEntry {
                id: record.id.clone(),
                grace_until: None,
            },
        );
        if record.scope.max_uses.is_some() {
            change.set_remaining(record.id.clone(), record.scope.max_uses);
        }
        change.audit(AuditEvent::new(
            &planned.actor,
            "create",
            &record.id,
            now,
            json!({
                "name": record.name,
                "parent_id": record.parent_id,
                "scope": record.scope,
            }),
        ));
        let id = record.id.clone();
        change.put(None, record);
        self.commit(write, None, change)?;
        tracing::info!(actor = %planned.actor, token = %id, "token created");
        Ok(Issued {
            record: self.view_of(&id, now)?,
            token: secret.expose().to_owned(),
        })
    }

    /// Runs every check `create_token` would run for `req` (validation, the caller's standing,
    /// reach and bounds, the parent's status, depth and live children) under the write lock,
    /// and writes nothing: what a consent page asks before it promises a token that is minted
    /// later.
    pub fn check_create_token(&self, caller: &Caller, req: CreateToken) -> Result<()> {
        let write = self.lock_writes();
        self.plan_create(&write, caller, req, Timestamp::now())
            .map(drop)
    }

    /// Everything `create_token` decides before it writes: the new token's fields, parent and
    /// depth, or the refusal.
    fn plan_create(
        &self,
        write: &MutexGuard<'_, ()>,
        caller: &Caller,
        req: CreateToken,
        now: Timestamp,
    ) -> Result<PlannedToken> {
        let name = validate::name(&req.name)?;
        let description = req
            .description
            .as_deref()
            .map(validate::description)
            .transpose()?;
        let metadata = validate::metadata(req.metadata.unwrap_or_default())?;
        let buckets = req
            .buckets
            .as_deref()
            .map(|b| validate::buckets("buckets", b))
            .transpose()?;
        let tools = req
            .tools
            .as_deref()
            .map(|t| validate::tools("tools", t))
            .transpose()?;
        let deny_tools = req
            .deny_tools
            .as_deref()
            .map(|t| validate::tools("deny_tools", t))
            .transpose()?
            .unwrap_or_default();
        let allowed_ips = req
            .allowed_ips
            .as_deref()
            .map(validate::allowed_ips)
            .transpose()?;
        let expires_at = validate::expiry(req.expires_at.as_deref(), req.ttl_seconds, now)?;
        let max_uses = req.max_uses.map(validate::max_uses).transpose()?;
        let rate = req
            .rate_limit_per_minute
            .map(validate::rate_limit)
            .transpose()?;

        let acting = self.acting_under_lock(write, caller)?;
        let parent_chain = match (req.parent.as_deref(), acting.token()) {
            (Some("none"), _) | (None, None) => {
                if !acting.is_owner_or_admin() {
                    return Err(Error::forbidden(
                        "only the owner or an admin token may create a root token (parent: none)",
                    ));
                }
                None
            }
            (Some("self") | None, Some(me)) => Some(self.caller_chain(&me.id)?),
            (Some("self"), None) => {
                return Err(Error::invalid(
                    "the owner has no token to be a parent: use parent \"none\" or a token id",
                ));
            }
            (Some(id), _) => Some(self.load_in_reach(&acting, id)?),
        };

        let scope = match (&parent_chain, acting.token()) {
            (None, None) => Scope {
                environment: self.config.environment.clone(),
                buckets: match buckets {
                    Some(b) if !b.is_empty() => b,
                    _ => vec![ALL.to_owned()],
                },
                tools: match tools {
                    Some(t) if !t.is_empty() => t,
                    _ => vec![ToolPattern::Any],
                },
                read_only: req.read_only.unwrap_or(false),
                admin: req.admin.unwrap_or(false),
                allowed_ips: allowed_ips.unwrap_or_default(),
                expires_at,
                max_uses,
                rate_limit_per_minute: rate,
                deny_tools: deny_tools.clone(),
            },
            // A root minted by a token: omitted fields come from the minter, never "all", and
            // it keeps at least the minter's denials.
            (None, Some(me)) => {
                let m = &me.scope;
                Scope {
                    environment: m.environment.clone(),
                    buckets: buckets
                        .filter(|b| !b.is_empty())
                        .unwrap_or_else(|| m.buckets.clone()),
                    tools: tools
                        .filter(|t| !t.is_empty())
                        .unwrap_or_else(|| m.tools.clone()),
                    read_only: req.read_only.unwrap_or(m.read_only),
                    admin: req.admin.unwrap_or(false),
                    allowed_ips: allowed_ips.unwrap_or_else(|| m.allowed_ips.clone()),
                    expires_at: expires_at.or(m.expires_at),
                    max_uses: max_uses.or(m.max_uses),
                    rate_limit_per_minute: rate.or(m.rate_limit_per_minute),
                    deny_tools: union_denials(&deny_tools, &m.deny_tools),
                }
            }
            (Some(chain), me) => {
                // Omitted fields come from the parent, within what a token caller holds.
                let inherited = match me {
                    Some(me) => chain[0].scope.clamped_to(&me.scope),
                    None => chain[0].scope.clone(),
                };
                let p = &inherited;
                Scope {
                    environment: p.environment.clone(),
                    buckets: buckets.unwrap_or_else(|| p.buckets.clone()),
                    tools: tools.unwrap_or_else(|| p.tools.clone()),
                    read_only: req.read_only.unwrap_or(p.read_only),
                    admin: req.admin.unwrap_or(false),
                    allowed_ips: allowed_ips.unwrap_or_else(|| p.allowed_ips.clone()),
                    expires_at: expires_at.or(p.expires_at),
                    max_uses: max_uses.or(p.max_uses),
                    rate_limit_per_minute: rate.or(p.rate_limit_per_minute),
                    // Denials add up: `inherited` already holds the parent's and a token
                    // caller's (clamping unions them).
                    deny_tools: union_denials(&deny_tools, &p.deny_tools),
                }
            }
        };

        // No token can grant what it does not hold: whatever a token caller mints, wherever it
        // places it, ends within its own scope (and within the new token's parent's).
        let parent_fields = parent_chain
            .as_ref()
            .map_or_else(Vec::new, |chain| scope.fields_exceeding(&chain[0].scope));
        let caller_fields = acting
            .token()
            .map_or_else(Vec::new, |me| scope.fields_exceeding(&me.scope));
        if !parent_fields.is_empty() || !caller_fields.is_empty() {
            return Err(exceeds_bounds(
                parent_chain
                    .as_ref()
                    .map(|c| (&c[0].id, &parent_fields[..])),
                acting.token().map(|me| (&me.id, &caller_fields[..])),
            ));
        }
        let (parent_id, depth) = match &parent_chain {
            None => (None, 0),
            Some(chain) => {
                let parent = &chain[0];
                let status = effective_status(&links(chain), now);
                if status != EffectiveStatus::Active {
                    return Err(Error::conflict(format!(
                        "parent {} cannot mint children while {}",
                        parent.id,
                        serde_json::to_value(status)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default()
                    )));
                }
                let depth = parent.depth + 1;
                if depth > self.config.max_depth {
                    return Err(Error::new(
                        ErrorCode::LimitExceeded,
                        format!(
                            "a child of {} would be at depth {depth}; the limit is {}",
                            parent.id, self.config.max_depth
                        ),
                    ));
                }
                self.check_live_children(&parent.id, now)?;
                (Some(parent.id.clone()), depth)
            }
        };
        Ok(PlannedToken {
            actor: acting.actor,
            name,
            description,
            metadata,
            scope,
            parent_id,
            depth,
        })
    }

    /// Refuses a child of `parent` once it has `max_children` live (active or paused,
    /// unexpired) children; revoked and expired ones do not count, nor cost anything to skip.
    fn check_live_children(&self, parent: &TokenId, now: Timestamp) -> Result<()> {
        let live = self.store.live_children(parent, now)?;
        if live >= self.config.max_children {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!(
                    "token {parent} already has {live} live children; the limit is {}",
                    self.config.max_children
                ),
            ));
        }
        Ok(())
    }

    pub fn update_token(&self, caller: &Caller, req: UpdateToken) -> Result<super::TokenView> {
        let now = Timestamp::now();
        let name = req.name.as_deref().map(validate::name).transpose()?;
        let description = match &req.description {
            Some(Some(d)) => Some(Some(validate::description(d)?)),
            other => other.clone(),
        };
        let metadata = req.metadata.map(validate::metadata).transpose()?;
        let expires_at = match &req.expires_at {
            Some(Some(t)) => Some(Some(validate::future_timestamp("expires_at", t, now)?)),
            Some(None) => Some(None),
            None => None,
        };
        let max_uses = match req.max_uses {
            Some(Some(n)) => Some(Some(validate::max_uses(n)?)),
            Some(None) => Some(None),
            None => None,
        };
        let rate = match req.rate_limit_per_minute {
            Some(Some(n)) => Some(Some(validate::rate_limit(n)?)),
            Some(None) => Some(None),
            None => None,
        };

        let write = self.lock_writes();
        let acting = self.acting_under_lock(&write, caller)?;
        let chain = self.load_in_reach(&acting, &req.id)?;
        let target = &chain[0];
        let mut updated = (**target).clone();
        // Only values that differ count as changes: a call that changes nothing writes nothing
        // (no record, no audit event, no flush), so repeating it cannot grow the store.
        let mut changes = serde_json::Map::new();
        if let Some(name) = name.filter(|n| *n != target.name) {
            changes.insert("name".into(), json!(name));
            updated.name = name;
        }
        if let Some(description) = description.filter(|d| *d != target.description) {
            changes.insert("description".into(), json!(description));
            updated.description = description;
        }
        if let Some(metadata) = metadata.filter(|m| *m != target.metadata) {
            changes.insert("metadata".into(), json!(metadata));
            updated.metadata = metadata;
        }
        if let Some(e) = expires_at.filter(|e| *e != target.scope.expires_at) {
            changes.insert("expires_at".into(), json!(e));
            updated.scope.expires_at = e;
        }
        let max_uses = max_uses.filter(|m| *m != target.scope.max_uses);
        if let Some(m) = max_uses {
            changes.insert("max_uses".into(), json!(m));
            updated.scope.max_uses = m;
        }
        if let Some(r) = rate.filter(|r| *r != target.scope.rate_limit_per_minute) {
            changes.insert("rate_limit_per_minute".into(), json!(r));
            updated.scope.rate_limit_per_minute = r;
        }
        self.check_changeable(&acting, &chain, &updated.scope, now)?;
        if changes.is_empty() {
            return self.view(&chain, now);
        }
        updated.updated_at = now;

        let mut usage = self.usage.lock();
        let mut change = Change::default();
        if max_uses.is_some() {
            let remaining =
                self.remaining_after_limit_change(&mut usage, target, updated.scope.max_uses)?;
            change.set_remaining(target.id.clone(), remaining);
        }
        let narrowed = self.clamp_descendants(&updated, &mut usage, &mut change, now)?;
        if narrowed > 0 {
            changes.insert("narrowed_descendants".into(), json!(narrowed));
        }
        change.audit(AuditEvent::new(
            &acting.actor,
            "update",
            &target.id,
            now,
            changes.into(),
        ));
        let id = target.id.clone();
        change.put(Some(Arc::clone(target)), updated);
        self.commit(write, Some(usage), change)?;
        self.view_of(&id, now)
    }

    pub fn scope_token(&self, caller: &Caller, req: ScopeToken) -> Result<super::TokenView> {
        let now = Timestamp::now();
        if req.buckets.is_some() && (req.add_buckets.is_some() || req.remove_buckets.is_some()) {
            return Err(Error::invalid(
                "give buckets, or add_buckets/remove_buckets, not both",
            ));
        }
        if req.tools.is_some() && (req.add_tools.is_some() || req.remove_tools.is_some()) {
            return Err(Error::invalid(
                "give tools, or add_tools/remove_tools, not both",
            ));
        }
        let set_buckets = req
            .buckets
            .as_deref()
            .map(|b| validate::buckets("buckets", b))
            .transpose()?;
        let add_buckets = req
            .add_buckets
            .as_deref()
            .map(|b| validate::buckets("add_buckets", b))
            .transpose()?;
        let remove_buckets = req
            .remove_buckets
            .as_deref()
            .map(|b| validate::buckets("remove_buckets", b))
            .transpose()?;
        let set_tools = req
            .tools
            .as_deref()
            .map(|t| validate::tools("tools", t))
            .transpose()?;
        let add_tools = req
            .add_tools
            .as_deref()
            .map(|t| validate::tools("add_tools", t))
            .transpose()?;
        let remove_tools = req
            .remove_tools
            .as_deref()
            .map(|t| validate::tools("remove_tools", t))
            .transpose()?;
        if req.deny_tools.is_some() && req.add_deny_tools.is_some() {
            return Err(Error::invalid(
                "give deny_tools or add_deny_tools, not both",
            ));
        }
        let set_deny = req
            .deny_tools
            .as_deref()
            .map(|t| validate::tools("deny_tools", t))
            .transpose()?;
        let add_deny = req
            .add_deny_tools
            .as_deref()
            .map(|t| validate::tools("add_deny_tools", t))
            .transpose()?;
        let allowed_ips = req
            .allowed_ips
            .as_deref()
            .map(validate::allowed_ips)
            .transpose()?;

        let write = self.lock_writes();
        let acting = self.acting_under_lock(&write, caller)?;
        let chain = self.load_in_reach(&acting, &req.id)?;
        let target = &chain[0];
        let mut scope = target.scope.clone();
        if let Some(b) = set_buckets {
            scope.buckets = b;
        }
        if let Some(add) = add_buckets {
            scope.buckets = normalise_buckets([scope.buckets, add].concat());
        }
        if let Some(remove) = remove_buckets {
            if scope.buckets.iter().any(|b| b == ALL) {
                return Err(Error::invalid(
                    "cannot remove buckets from [\"*\"]: set buckets to the list you want",
                ));
            }
            scope.buckets.retain(|b| !remove.contains(b));
        }
        if let Some(t) = set_tools {
            scope.tools = t;
        }
        if let Some(add) = add_tools {
            scope.tools = normalise_tools([scope.tools, add].concat());
        }
        if let Some(remove) = remove_tools {
            if scope.tools.contains(&ToolPattern::Any) {
                return Err(Error::invalid(
                    "cannot remove tools from [\"*\"]: set tools to the list you want",
                ));
            }
            scope.tools.retain(|t| !remove.contains(t));
        }
        if let Some(ro) = req.read_only {
            scope.read_only = ro;
        }
        if let Some(deny) = set_deny {
            scope.deny_tools = deny;
        }
        if let Some(add) = add_deny {
            scope.deny_tools = union_denials(&scope.deny_tools, &add);
        }
        if let Some(ips) = allowed_ips {
            scope.allowed_ips = ips;
        }
        self.check_changeable(&acting, &chain, &scope, now)?;
        if scope == target.scope {
            return self.view(&chain, now);
        }
        let mut updated = (**target).clone();
        updated.scope = scope;
        updated.updated_at = now;

        let mut usage = self.usage.lock();
        let mut change = Change::default();
        let narrowed = self.clamp_descendants(&updated, &mut usage, &mut change, now)?;
        change.audit(AuditEvent::new(
            &acting.actor,
            "scope",
            &target.id,
            now,
            json!({
                "from": target.scope,
                "to": updated.scope,
                "narrowed_descendants": narrowed,
            }),
        ));
        let id = target.id.clone();
        change.put(Some(Arc::clone(target)), updated);
        self.commit(write, Some(usage), change)?;
        self.view_of(&id, now)
    }

    pub fn pause_token(&self, caller: &Caller, req: TokenRef) -> Result<super::TokenView> {
        let now = Timestamp::now();
        let write = self.lock_writes();
        let acting = self.acting_under_lock(&write, caller)?;
        let chain = self.load_in_reach(&acting, &req.id)?;
        let target = &chain[0];
        match target.status {
            Status::Revoked => {
                return Err(Error::conflict(format!("token {} is revoked", target.id)));
            }
            Status::Paused => return self.view(&chain, now),
            _ => {}
        }
        let mut updated = (**target).clone();
        updated.status = Status::Paused;
        updated.paused_at = Some(now);
        updated.updated_at = now;
        let mut change = Change::default();
        change.audit(AuditEvent::new(
            &acting.actor,
            "pause",
            &target.id,
            now,
            json!({}),
        ));
        let id = target.id.clone();
        change.put(Some(Arc::clone(target)), updated);
        self.commit(write, None, change)?;
        tracing::info!(actor = %acting.actor, token = %id, "token paused");
        self.view_of(&id, now)
    }

    pub fn resume_token(&self, caller: &Caller, req: TokenRef) -> Result<super::TokenView> {
        let now = Timestamp::now();
        let write = self.lock_writes();
        let acting = self.acting_under_lock(&write, caller)?;
        let chain = self.load_in_reach(&acting, &req.id)?;
        let target = &chain[0];
        if acting.token().is_some_and(|me| me.id == target.id) {
            return Err(Error::forbidden(format!(
                "token {} may not resume itself",
                target.id
            )));
        }
        match target.status_at(now) {
            Status::Revoked => {
                return Err(Error::conflict(format!("token {} is revoked", target.id)));
            }
            Status::Expired => {
                return Err(Error::conflict(format!("token {} has expired", target.id)));
            }
            Status::Active => return self.view(&chain, now),
            Status::Paused => {}
        }
        let mut updated = (**target).clone();
        updated.status = Status::Active;
        updated.paused_at = None;
        updated.updated_at = now;
        let mut change = Change::default();
        change.audit(AuditEvent::new(
            &acting.actor,
            "resume",
            &target.id,
            now,
            json!({}),
        ));
        let id = target.id.clone();
        change.put(Some(Arc::clone(target)), updated);
        self.commit(write, None, change)?;
        self.view_of(&id, now)
    }

    pub fn rotate_token(&self, caller: &Caller, req: RotateToken) -> Result<Issued> {
        let now = Timestamp::now();
        let grace = req.grace_seconds.unwrap_or(DEFAULT_GRACE_SECONDS);
        if !(0..=validate::MAX_GRACE_SECONDS).contains(&grace) {
            return Err(Error::invalid(format!(
                "grace_seconds must be between 0 and {} (got {grace})",
                validate::MAX_GRACE_SECONDS
            )));
        }
        let write = self.lock_writes();
        let acting = self.acting_under_lock(&write, caller)?;
        let chain = self.load_in_reach(&acting, &req.id)?;
        let target = &chain[0];
        if target.status == Status::Revoked {
            return Err(Error::conflict(format!("token {} is revoked", target.id)));
        }
        let grace_until = now
            .plus_seconds(grace as u64)
            .expect("grace is at most a day");
        let mut change = Change::default();
        let mut updated = (**target).clone();
        updated.hashes.clear();
        for (hash, entry) in self.store.hashes_of(target)? {
            let ends = entry
                .grace_until
                .map_or(grace_until, |g| g.min(grace_until));
            if grace == 0 || ends <= now {
                change.retire_hash(hash);
            } else {
                updated.hashes.push(hash);
                change.add_hash(
                    hash,
                    HashEntry {
                        id: target.id.clone(),
                        grace_until: Some(ends),
                    },
                );
            }
        }
        let secret = Secret::generate();
        updated.hashes.push(secret.hash());
        change.add_hash(
            secret.hash(),
            HashEntry {
                id: target.id.clone(),
                grace_until: None,
            },
        );
        updated.masked = secret.masked();
        updated.last4 = secret.last4().to_owned();
        updated.rotated_at = Some(now);
        updated.updated_at = now;
        let connectors = self.revoke_approved_connectors(target, &mut change, now)?;
        let mut details = json!({ "grace_seconds": grace, "masked": updated.masked });
        if connectors > 0 {
            details["revoked_oauth_tokens"] = json!(connectors);
        }
        change.audit(AuditEvent::new(
            &acting.actor,
            "rotate",
            &target.id,
            now,
            details,
        ));
        let id = target.id.clone();
        change.put(Some(Arc::clone(target)), updated);
        self.commit(write, None, change)?;
        tracing::info!(actor = %acting.actor, token = %id, grace, "token rotated");
        Ok(Issued {
            record: self.view_of(&id, now)?,
            token: secret.expose().to_owned(),
        })
    }

    /// Rotating a token says its secret may have leaked, so a connector it approved through
    /// OAuth consent may be an attacker's: the access tokens of its grants (and whatever they
    /// minted) are revoked in the rotation's own commit, and each grant ends at its next
    /// refresh (docs/oauth.md). The tokens are found both in the grants and by the
    /// `oauth_grant_id` their metadata had when minted, so neither a token minted by a refresh
    /// racing with this rotation (not yet in its grant) nor one whose metadata was edited
    /// since escapes. Returns how many tokens it revoked.
    fn revoke_approved_connectors(
        &self,
        approver: &TokenRecord,
        change: &mut Change,
        now: Timestamp,
    ) -> Result<u64> {
        let mut ids: HashSet<TokenId> = self
            .store
            .oauth()?
            .grants()?
            .into_iter()
            .filter(|grant| grant.approver == approver.id)
            .map(|grant| grant.access_token)
            .collect();
        for id in self.store.children(&approver.id)? {
            if let Some(child) = self.store.get(&id)?
                && child.metadata.contains_key("oauth_grant_id")
            {
                ids.insert(id);
            }
        }
        let mut revoked = 0;
        for id in ids {
            if let Some(record) = self.store.get(&id)?
                && record.parent_id.as_ref() == Some(&approver.id)
                && record.status != Status::Revoked
            {
                revoked += 1 + self.revoke_subtree(&record, change, now)?;
            }
        }
        Ok(revoked)
    }

    /// Marks `target` and every descendant revoked; returns how many descendants changed.
    fn revoke_subtree(
        &self,
        target: &Arc<TokenRecord>,
        change: &mut Change,
        now: Timestamp,
    ) -> Result<u64> {
        let mut newly_revoked = 0;
        if target.status != Status::Revoked {
            revoke_record(target, change, now);
        }
        for id in self.store.descendants(&target.id)? {
            if let Some(record) = self.store.get(&id)?
                && record.status != Status::Revoked
            {
                revoke_record(&record, change, now);
                newly_revoked += 1;
            }
        }
        Ok(newly_revoked)
    }

    /// The tokens outside `target`'s subtree that it, or anything under it, minted (with
    /// their subtrees), transitively: what `include_minted` revokes. One scan of the records
    /// (see `Store::minted_by_tokens`), done under the write lock so nothing is minted meanwhile.
    fn minted_outside(&self, target: &TokenId) -> Result<Vec<TokenId>> {
        let mut minted: HashMap<TokenId, Vec<TokenId>> = HashMap::new();
        for (minter, id) in self.store.minted_by_tokens()? {
            minted.entry(minter).or_default().push(id);
        }
        let mut seen: HashSet<TokenId> = HashSet::from([target.clone()]);
        let mut frontier: Vec<TokenId> = self.store.descendants(target)?;
        seen.extend(frontier.iter().cloned());
        frontier.push(target.clone());
        let mut outside = Vec::new();
        while let Some(id) = frontier.pop() {
            for m in minted.get(&id).into_iter().flatten() {
                if !seen.insert(m.clone()) {
                    continue;
                }
                outside.push(m.clone());
                frontier.push(m.clone());
                for d in self.store.descendants(m)? {
                    if seen.insert(d.clone()) {
                        outside.push(d.clone());
                        frontier.push(d);
                    }
                }
            }
        }
        Ok(outside)
    }

    fn was_swept(&self, id: &TokenId) -> bool {
        self.swept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    fn mark_swept(&self, id: &TokenId) {
        let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
        if swept.len() >= 10_000 {
            swept.clear();
        }
        swept.insert(id.clone());
    }

    pub fn revoke_token(&self, caller: &Caller, req: impl Into<RevokeToken>) -> Result<Revoked> {
        let req = req.into();
        let now = Timestamp::now();
        let write = self.lock_writes();
        let acting = self.acting_under_lock(&write, caller)?;
        let chain = self.load_in_reach(&acting, &req.id)?;
        let target = &chain[0];
        let mut change = Change::default();
        let revoked_descendants = self.revoke_subtree(target, &mut change, now)?;
        let mut revoked_minted = 0;
        let sweep = req.include_minted == Some(true) && !self.was_swept(&target.id);
        if sweep {
            for id in self.minted_outside(&target.id)? {
                if let Some(record) = self.store.get(&id)?
                    && record.status != Status::Revoked
                {
                    revoke_record(&record, &mut change, now);
                    revoked_minted += 1;
                }
            }
        }
        let result = Revoked {
            id: target.id.clone(),
            revoked: true,
            revoked_descendants,
            revoked_minted,
        };
        if !change.writes_records() {
            // Already revoked, and everything it reaches: nothing to write or audit.
            if sweep {
                self.mark_swept(&target.id);
            }
            return Ok(result);
        }
        let mut details = json!({ "revoked_descendants": revoked_descendants });
        if req.include_minted == Some(true) {
            details["include_minted"] = json!(true);
            details["revoked_minted"] = json!(revoked_minted);
        }
        change.audit(AuditEvent::new(
            &acting.actor,
            "revoke",
            &target.id,
            now,
            details,
        ));
        self.commit(write, None, change)?;
        if sweep {
            self.mark_swept(&target.id);
        }
        tracing::info!(actor = %acting.actor, token = %target.id, revoked_descendants, revoked_minted, "token revoked");
        Ok(result)
    }

    pub fn delete_token(&self, caller: &Caller, req: TokenRef) -> Result<Deleted> {
        let now = Timestamp::now();
        let write = self.lock_writes();
        let acting = self.acting_under_lock(&write, caller)?;
        let chain = self.load_in_reach(&acting, &req.id)?;
        let target = &chain[0];
        let mut change = Change::default();
        let mut subtree = vec![Arc::clone(target)];
        for id in self.store.descendants(&target.id)? {
            if let Some(record) = self.store.get(&id)? {
                subtree.push(record);
            }
        }
        for record in subtree.iter().rev() {
            change.remove(Arc::clone(record));
        }
        change.audit(AuditEvent::new(
            &acting.actor,
            "delete",
            &target.id,
            now,
            json!({ "deleted_descendants": subtree.len() - 1 }),
        ));
        self.commit(write, None, change)?;
        tracing::info!(actor = %acting.actor, token = %target.id, "token deleted");
        Ok(Deleted {
            id: target.id.clone(),
            deleted: true,
        })
    }
}

#[cfg(test)]
mod message_tests {
    use super::*;

    #[test]
    fn an_escalation_by_the_parent_itself_names_it_once() {
        let me = TokenId::parse("tok_0000000000000000000000AA").unwrap();
        let other = TokenId::parse("tok_0000000000000000000000BB").unwrap();
        let same = exceeds_bounds(
            Some((&me, &["buckets", "tools"])),
            Some((&me, &["tools", "admin"])),
        );
        assert_eq!(
            same.message,
            "requested scope exceeds parent tok_0000000000000000000000AA, the calling token \
             (no token can grant what it does not hold), in: buckets, tools, admin"
        );
        assert_eq!(same.message.matches("tok_").count(), 1);
        let two = exceeds_bounds(Some((&other, &["tools"])), Some((&me, &["admin"])));
        assert!(
            two.message
                .contains("parent tok_0000000000000000000000BB in: tools")
        );
        assert!(
            two.message
                .contains("calling token tok_0000000000000000000000AA")
        );
    }
}
