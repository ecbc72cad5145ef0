//! Read-only operations: whoami, get, list, verify, audit, and the census the metrics show.

use std::sync::Arc;

use super::requests::{
    AuditPage, ListAuditEvents, ListTokens, SortOrder, TokenPage, TokenRef, TokenView,
    Verification, VerifyToken, WhoAmI,
};
use super::{AuthFailure, Caller, Service, is_read_only_tool, validate};
use crate::error::{Error, Result};
use crate::record::{Status, TokenRecord};
use crate::rules::authorize::{Attempt, Tool, authorize};
use crate::rules::pattern::is_tool_name;
use crate::rules::scope::bucket_allowed;
use crate::secret::TokenId;
use crate::store::Order;
use crate::timestamp::Timestamp;

/// Index entries one page may examine before it returns short (with a cursor to go on), so a
/// filter that matches little cannot turn one call into a scan of a million records.
const SCAN_BUDGET: usize = 5_000;

fn parse_cursor(cursor: &str) -> Result<(Timestamp, TokenId)> {
    let invalid =
        || Error::invalid("invalid cursor: pass next_cursor from a previous page unchanged");
    let (millis, id) = cursor.split_once('.').ok_or_else(invalid)?;
    let t = millis
        .parse::<i64>()
        .ok()
        .and_then(Timestamp::from_millis)
        .ok_or_else(invalid)?;
    Ok((t, TokenId::parse(id).map_err(|_| invalid())?))
}

fn cursor_of(created: Timestamp, id: &TokenId) -> String {
    format!("{}.{id}", created.millis())
}

/// What introspection tells about an active token (SPEC §11).
#[derive(Clone, Debug)]
pub struct Introspection {
    pub token_id: TokenId,
    /// Its effective scope (its own within every ancestor's); `expires_at` the earliest.
    pub scope: crate::rules::scope::Scope,
    pub created_at: Timestamp,
    /// The OAuth client it was issued to, if any.
    pub client_id: Option<String>,
}

/// What the store holds, counted (for the metrics). No id, name or secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Tokens by stored status: active, paused, revoked (an expired token keeps the status it
    /// had: expiry is read from `expires_at`, not stored).
    pub tokens: Vec<(Status, u64)>,
    pub oauth_clients: u64,
    pub oauth_grants: u64,
}

impl Service {
    /// Counts tokens by status and the OAuth clients and grants: a walk over one index key
    /// per token, so callers keep the answer for a while rather than ask per request.
    pub fn census(&self) -> Result<Census> {
        let oauth = self.store.oauth()?;
        Ok(Census {
            tokens: self.store.count_by_status()?,
            oauth_clients: oauth.client_count() as u64,
            oauth_grants: oauth.grant_count() as u64,
        })
    }

    pub fn whoami(&self, caller: &Caller) -> Result<WhoAmI> {
        let acting = self.acting(caller)?;
        match &acting.chain {
            None => Ok(WhoAmI::Owner { owner: true }),
            Some(chain) => Ok(WhoAmI::Token(Box::new(self.view(chain, Timestamp::now())?))),
        }
    }

    pub fn get_token(&self, caller: &Caller, req: TokenRef) -> Result<TokenView> {
        let acting = self.acting(caller)?;
        let chain = self.load_in_reach(&acting, &req.id)?;
        self.view(&chain, Timestamp::now())
    }

    pub fn list_tokens(&self, caller: &Caller, req: ListTokens) -> Result<TokenPage> {
        let acting = self.acting(caller)?;
        let now = Timestamp::now();
        let limit = validate::page_limit(req.limit)?;
        let after = req.cursor.as_deref().map(parse_cursor).transpose()?;
        let bucket = req.bucket.as_deref().map(validate::bucket).transpose()?;
        let parent = req
            .parent_id
            .as_deref()
            .map(TokenId::parse)
            .transpose()
            .map_err(Error::invalid)?;
        let search = match req.search.as_deref() {
            Some(s) if s.chars().count() > validate::MAX_SEARCH_CHARS => {
                return Err(Error::invalid(format!(
                    "search must be at most {} characters",
                    validate::MAX_SEARCH_CHARS
                )));
            }
            s => s.map(str::to_lowercase),
        };
        let order = match req.order.unwrap_or_default() {
            SortOrder::Asc => Order::Asc,
            SortOrder::Desc => Order::Desc,
        };

        let matches = |r: &TokenRecord| {
            req.status.is_none_or(|s| r.status_at(now) == s)
                && bucket
                    .as_deref()
                    .is_none_or(|b| bucket_allowed(&r.scope.buckets, b))
                && parent
                    .as_ref()
                    .is_none_or(|p| r.parent_id.as_ref() == Some(p))
                && search.as_deref().is_none_or(|s| {
                    r.name.to_lowercase().contains(s)
                        || r.description
                            .as_deref()
                            .is_some_and(|d| d.to_lowercase().contains(s))
                })
        };

        // Candidates in creation order: a scoped set when the caller's reach or the parent
        // filter bounds it, otherwise an index (per status where the status is stored as is).
        let candidates: Box<dyn Iterator<Item = Result<(Timestamp, TokenId)>>> =
            match (acting.is_owner_or_admin(), &parent) {
                (true, None) => {
                    let index = match req.status {
                        Some(s @ (Status::Active | Status::Paused | Status::Revoked)) => Some(s),
                        _ => None,
                    };
                    let after = after.as_ref().map(|(t, id)| (*t, id));
                    Box::new(
                        self.store
                            .ids_in_order(index, order, after)
                            .map(|r| r.map_err(Error::from)),
                    )
                }
                (is_admin, _) => {
                    let roots: Vec<TokenId> = match (&parent, acting.token()) {
                        (Some(p), _) => self.store.children(p)?,
                        (None, Some(me)) if !is_admin => {
                            let mut ids = vec![me.id.clone()];
                            ids.extend(self.store.descendants(&me.id)?);
                            ids
                        }
                        (None, _) => Vec::new(),
                    };
                    let mut keyed = Vec::with_capacity(roots.len());
                    for id in roots {
                        if let Some(r) = self.store.get(&id)? {
                            keyed.push((r.created_at, id));
                        }
                    }
                    keyed.sort();
                    if order == Order::Desc {
                        keyed.reverse();
                    }
                    if let Some((t, id)) = &after {
                        let key = (*t, id.clone());
                        keyed.retain(|k| match order {
                            Order::Asc => *k > key,
                            Order::Desc => *k < key,
                        });
                    }
                    Box::new(keyed.into_iter().map(Ok))
                }
            };

        let mut records = Vec::with_capacity(limit);
        let mut last_examined = None;
        let mut has_more = false;
        for (examined, entry) in candidates.enumerate() {
            if examined >= SCAN_BUDGET {
                has_more = true;
                break;
            }
            let (created, id) = entry?;
            let Some(chain) = self.store.chain(&id)? else {
                continue;
            };
            if !self.in_reach(&acting, &chain) || !matches(&chain[0]) {
                last_examined = Some((created, id));
                continue;
            }
            if records.len() == limit {
                has_more = true;
                break;
            }
            records.push(self.view(&chain, now)?);
            last_examined = Some((created, id));
        }
        let next_cursor = if has_more {
            last_examined.map(|(t, id)| cursor_of(t, &id))
        } else {
            None
        };
        Ok(TokenPage {
            records,
            has_more: has_more && next_cursor.is_some(),
            next_cursor,
        })
    }

    /// Lets another service ask whether a secret may call a tool on a bucket. Owner or admin
    /// only, since it turns any secret into a yes/no oracle.
    pub fn verify_token(&self, caller: &Caller, req: VerifyToken) -> Result<Verification> {
        self.verify_token_with(caller, req, &|_| None)
    }

    /// RFC 7662 introspection of a presented secret, for a service that holds a token which may
    /// call `verify_token` (owner/admin only, as that tool; the caller's front end counts the
    /// call). Whatever makes a secret unusable — malformed, unknown, rotated out, revoked,
    /// paused, expired, of another environment, itself or through an ancestor — answers `None`,
    /// with nothing that tells those apart. An active token's scope is its effective scope: its
    /// own narrowed by every ancestor's.
    pub fn introspect(&self, caller: &Caller, presented: &str) -> Result<Option<Introspection>> {
        if !self.acting(caller)?.is_owner_or_admin() {
            return Err(Error::forbidden(
                "introspection is for the owner and admin tokens only (as verify_token)",
            ));
        }
        let now = Timestamp::now();
        let id = match self.resolve_secret(presented, now) {
            Ok(id) => id,
            Err(AuthFailure::Unavailable(e)) => {
                return Err(Error::new(crate::error::ErrorCode::Internal, e));
            }
            Err(_) => return Ok(None),
        };
        let Some(chain) = self.store.chain(&id)? else {
            return Ok(None);
        };
        let links: Vec<&TokenRecord> = chain.iter().map(Arc::as_ref).collect();
        let base = Attempt::authentication(&self.config.environment, now, None);
        if authorize(&links, &base).is_err() {
            return Ok(None);
        }
        let token = links[0];
        let scope = links[1..]
            .iter()
            .fold(token.scope.clone(), |scope, ancestor| {
                scope.clamped_to(&ancestor.scope)
            });
        Ok(Some(Introspection {
            token_id: token.id.clone(),
            scope,
            created_at: token.created_at,
            client_id: token
                .metadata
                .get("oauth_client_id")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
        }))
    }

    /// [`Service::verify_token`] that also knows tools the service does not define:
    /// `gateway_tool(name)` gives a gateway tool's read-only flag and bucket (the bucket
    /// applies when the request names none).
    pub fn verify_token_with(
        &self,
        caller: &Caller,
        req: VerifyToken,
        gateway_tool: &dyn Fn(&str) -> Option<(bool, String)>,
    ) -> Result<Verification> {
        let acting = self.acting(caller)?;
        if !acting.is_owner_or_admin() {
            return Err(Error::forbidden(
                "verify_token is for the owner and admin tokens only",
            ));
        }
        if let Some(tool) = req.tool.as_deref()
            && !is_tool_name(tool)
        {
            return Err(Error::invalid("tool must be 1-64 of A-Z a-z 0-9 _ . -"));
        }
        let mut bucket = req.bucket.as_deref().map(validate::bucket).transpose()?;
        let upstream = req.tool.as_deref().and_then(gateway_tool);
        // A gateway tool is checked in its own bucket: naming another one cannot borrow that
        // bucket's standing (it answers allowed: false once the token is known valid).
        let mut wrong_bucket = None;
        if let Some((_, upstream_bucket)) = &upstream {
            if let Some(named) = bucket.as_deref()
                && named != upstream_bucket
            {
                wrong_bucket = Some(format!(
                    "tool {} is in bucket {upstream_bucket}, not {named}",
                    req.tool.as_deref().unwrap_or_default()
                ));
            }
            bucket = Some(upstream_bucket.clone());
        }
        let invalid = |reason: String, token_id: Option<TokenId>| Verification {
            valid: false,
            token_id,
            allowed: Some(false),
            reason: Some(reason),
        };
        let now = Timestamp::now();
        let id = match self.resolve_secret(&req.token, now) {
            Ok(id) => id,
            Err(AuthFailure::Unavailable(e)) => {
                return Err(Error::new(crate::error::ErrorCode::Internal, e));
            }
            Err(failure) => return Ok(invalid(failure.to_string(), None)),
        };
        let Some(chain) = self.store.chain(&id)? else {
            return Ok(invalid(AuthFailure::Unknown.to_string(), None));
        };
        let links: Vec<&TokenRecord> = chain.iter().map(Arc::as_ref).collect();
        let base = Attempt::authentication(&self.config.environment, now, None);
        if let Err(denial) = authorize(&links, &base) {
            return Ok(invalid(denial.to_string(), Some(id)));
        }
        if req.tool.is_none() && bucket.is_none() {
            return Ok(Verification {
                valid: true,
                token_id: Some(id),
                allowed: None,
                reason: None,
            });
        }
        if let Some(reason) = wrong_bucket {
            return Ok(Verification {
                valid: true,
                token_id: Some(id),
                allowed: Some(false),
                reason: Some(reason),
            });
        }
        let tool = req.tool.as_deref().map(|name| Tool {
            name,
            read_only: match &upstream {
                Some((read_only, _)) => *read_only,
                None => is_read_only_tool(name),
            },
        });
        let decision = self
            .usage
            .admit(&self.store, &chain, false, |links, budgets| {
                authorize(
                    links,
                    &Attempt {
                        tool,
                        bucket: bucket.as_deref(),
                        budgets: if tool.is_some() { budgets } else { None },
                        ..base
                    },
                )
            })?;
        Ok(Verification {
            valid: true,
            token_id: Some(id),
            allowed: Some(decision.is_ok()),
            reason: decision.err().map(|d| d.to_string()),
        })
    }

    pub fn list_audit_events(&self, caller: &Caller, req: ListAuditEvents) -> Result<AuditPage> {
        let acting = self.acting(caller)?;
        if !acting.is_owner_or_admin() {
            return Err(Error::forbidden(
                "the audit log is for the owner and admin tokens only",
            ));
        }
        let limit = validate::page_limit(req.limit)?;
        let token = req
            .token_id
            .as_deref()
            .map(TokenId::parse)
            .transpose()
            .map_err(Error::invalid)?;
        if let Some(action) = req.action.as_deref()
            && !crate::audit::ACTIONS.contains(&action)
        {
            return Err(Error::invalid(format!(
                "unknown action {action:?}: one of {}",
                crate::audit::ACTIONS.join(", ")
            )));
        }
        let since = req
            .since
            .as_deref()
            .map(Timestamp::parse)
            .transpose()
            .map_err(Error::invalid)?;
        let before = match req.cursor.as_deref() {
            None => None,
            Some(c) => Some(c.parse::<u64>().map_err(|_| {
                Error::invalid("invalid cursor: pass next_cursor from a previous page unchanged")
            })?),
        };
        let mut events = Vec::with_capacity(limit);
        let mut has_more = false;
        let mut last_examined = None;
        for (examined, event) in self.store.audit_events(before).enumerate() {
            let event = event?;
            if since.is_some_and(|s| event.at < s) {
                break;
            }
            if examined >= SCAN_BUDGET {
                has_more = true;
                break;
            }
            let wanted = token
                .as_ref()
                .is_none_or(|t| event.target.as_ref() == Some(t))
                && req.action.as_deref().is_none_or(|a| event.action == a);
            if wanted && events.len() == limit {
                has_more = true;
                break;
            }
            last_examined = Some(event.id);
            if wanted {
                events.push(event);
            }
        }
        Ok(AuditPage {
            events,
            has_more,
            next_cursor: if has_more {
                last_examined.map(|id| id.to_string())
            } else {
                None
            },
        })
    }
}
