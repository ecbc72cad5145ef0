//! The service API every front end calls: the MCP tools, the HTTP guard and the CLI.
//!
//! Each operation takes the caller, enforces management reach and attenuation (SPEC §4) and
//! returns typed errors. Changes are serialised by one write lock, applied atomically by the
//! store and flushed before the operation returns; the flush happens outside the lock, so
//! concurrent writers share fsyncs (group commit).

pub mod access;
mod backup;
mod manage;
mod query;
pub use query::{Census, Introspection};
pub mod requests;
pub use backup::Imported;
mod retention;
pub use retention::AuditRetention;
mod usage;
mod validate;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::record::{Actor, TokenRecord, effective_status};
pub use crate::rules::authorize::Tool;
use crate::rules::authorize::{Attempt, Denial, authentication_holds_until, authorize, permits};
use crate::secret::{Secret, SecretError, SecretHash, TokenId};
use crate::store::{Cached, HashEntry, Remember, Store, StoreConfig, StoreError};
use crate::timestamp::Timestamp;
use requests::TokenView;
use usage::UsageTable;

/// The tools annotated `readOnlyHint: true`. A read-only token may call only these.
pub const READ_ONLY_TOOLS: &[&str] = &[
    "whoami",
    "list_tokens",
    "get_token",
    "verify_token",
    "list_audit_events",
    "list_access_events",
    "list_buckets",
];

/// The tools that mint or change tokens. A connector approved on the consent page gets them
/// only when the person ticks "manage tokens" (otherwise its tokens deny them).
pub const MANAGEMENT_TOOLS: &[&str] = &[
    "create_token",
    "update_token",
    "scope_token",
    "pause_token",
    "resume_token",
    "rotate_token",
    "revoke_token",
    "delete_token",
];

pub fn is_read_only_tool(name: &str) -> bool {
    READ_ONLY_TOOLS.contains(&name)
}

#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// The environment this server runs in; tokens of others do not authenticate.
    pub environment: String,
    /// Deepest allowed token (a root is depth 0).
    pub max_depth: u8,
    /// Most live (active or paused, unexpired) children one token may have.
    pub max_children: usize,
    /// How much of the audit log `prune_audit` keeps.
    pub audit_retention: AuditRetention,
    /// How much of the access log `prune_access` keeps.
    pub access_retention: access::AccessRetention,
    pub store: StoreConfig,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            environment: "default".to_owned(),
            max_depth: 8,
            max_children: 1000,
            audit_retention: AuditRetention::default(),
            access_retention: access::AccessRetention::default(),
            store: StoreConfig::default(),
        }
    }
}

/// Who is asking: the owner (CLI, stdio without a token) or an authenticated token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Owner,
    Token(TokenId),
}

/// Why a presented bearer does not authenticate; `Display` is the `error_description`.
#[derive(Debug)]
pub enum AuthFailure {
    Malformed(SecretError),
    Unknown,
    RotatedOut(TokenId),
    Denied(Denial),
    Unavailable(String),
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthFailure::Malformed(e) => e.fmt(f),
            AuthFailure::Unknown => f.write_str("unknown token"),
            AuthFailure::RotatedOut(id) => {
                write!(
                    f,
                    "token {id} was rotated and this secret's grace period has ended"
                )
            }
            AuthFailure::Denied(d) => d.fmt(f),
            AuthFailure::Unavailable(e) => write!(f, "cannot check the token now: {e}"),
        }
    }
}

impl From<StoreError> for AuthFailure {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "storage failure while authenticating");
        AuthFailure::Unavailable(e.to_string())
    }
}

/// A request of a known token refused before a tool ran.
pub enum RefusedKnown<'a> {
    /// Its secret did not authenticate (only `Denied` and `RotatedOut` name a token).
    Auth(&'a AuthFailure),
    /// Its lineage had its maximum of requests in flight.
    InFlight(&'a TokenId),
}

/// The caller of one operation, resolved: its actor name and, for a token, its current chain.
struct Acting {
    actor: Actor,
    chain: Option<Vec<Arc<TokenRecord>>>,
}

impl Acting {
    fn token(&self) -> Option<&TokenRecord> {
        self.chain.as_ref().map(|c| c[0].as_ref())
    }

    fn is_owner_or_admin(&self) -> bool {
        self.token().is_none_or(|t| t.scope.admin)
    }
}

pub struct Service {
    store: Store,
    config: ServiceConfig,
    write_lock: Mutex<()>,
    usage: UsageTable,
    observer: crate::observe::Observer,
    /// Work of each lineage on the blocking pool (see [`Service::blocking_permit`]).
    blocking: Mutex<HashMap<Option<TokenId>, Arc<tokio::sync::Semaphore>>>,
    /// Tokens an `include_minted` revocation has swept: they and everything they reach are
    /// revoked, and revoked tokens mint nothing, so another sweep would find nothing (it
    /// scans every record under the write lock). In memory, at most 10,000 (then forgotten).
    swept: Mutex<std::collections::HashSet<TokenId>>,
}

/// Operations of one lineage running on the blocking pool at once; more wait their turn.
pub const LINEAGE_BLOCKING: usize = 8;

impl Service {
    pub fn open(
        data_dir: &Path,
        config: ServiceConfig,
    ) -> std::result::Result<Service, StoreError> {
        let store = Store::open(data_dir, &config.store)?;
        Ok(Service {
            store,
            config,
            write_lock: Mutex::new(()),
            usage: UsageTable::default(),
            observer: crate::observe::Observer::default(),
            blocking: Mutex::new(HashMap::new()),
            swept: Mutex::new(std::collections::HashSet::new()),
        })
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn lock_writes(&self) -> MutexGuard<'_, ()> {
        self.write_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks a presented bearer secret: format, then hash lookup, then rules 1 and 5 along its
    /// chain. This is the HTTP guard's whole job, and the hot path: hot tokens are answered
    /// from memory.
    pub fn authenticate(
        &self,
        presented: &str,
        client_ip: Option<IpAddr>,
    ) -> std::result::Result<TokenId, AuthFailure> {
        let hash = Secret::hash_presented(presented).map_err(AuthFailure::Malformed)?;
        self.authenticate_hash(&hash, client_ip)
    }

    /// [`Service::authenticate`] of a secret already checked and hashed: what a console
    /// session keeps instead of the secret itself, so that every request it makes meets the
    /// same check a bearer does (revoked, paused, expired, rotated past its grace).
    pub fn authenticate_hash(
        &self,
        hash: &SecretHash,
        client_ip: Option<IpAddr>,
    ) -> std::result::Result<TokenId, AuthFailure> {
        let now = Timestamp::now();
        let attempt = Attempt::authentication(&self.config.environment, now, client_ip);
        let judge = |entry: &HashEntry, cached: Cached<'_>| {
            if entry.grace_until.is_some_and(|g| g <= now) {
                return Err(AuthFailure::RotatedOut(entry.id.clone()));
            }
            if let Cached::Chain(links, remember) = cached {
                authorize(links, &attempt).map_err(AuthFailure::Denied)?;
                if let Some(until) = authentication_holds_until(links) {
                    remember.admitted_until(until);
                }
            }
            Ok(entry.id.clone())
        };
        if let Some(decision) = self.store.with_cached_chain(hash, now, judge) {
            return decision;
        }
        // Not all in memory yet: load the hash and the chain (this fills the cache).
        let entry = self.store.hash_entry(hash)?.ok_or(AuthFailure::Unknown)?;
        let chain = self.store.chain(&entry.id)?.ok_or(AuthFailure::Unknown)?;
        let links: Vec<&TokenRecord> = chain.iter().map(Arc::as_ref).collect();
        judge(&entry, Cached::Chain(&links, Remember::nowhere()))
    }

    /// Whether `secret` still authenticates as `token` (rules 1 and 5, rotation grace
    /// included): what work outliving its request (a response stream, a long gateway call)
    /// asks periodically, so that it belongs to the secret that started it.
    pub fn still_holds(
        &self,
        secret: &str,
        token: &TokenId,
        client_ip: Option<IpAddr>,
    ) -> std::result::Result<(), String> {
        match self.authenticate(secret, client_ip) {
            Ok(id) if id == *token => Ok(()),
            Ok(_) => Err("its secret now names another token".to_owned()),
            Err(failure) => Err(failure.to_string()),
        }
    }

    /// Whether an authenticated token may still make requests (rules 1 and 5): open response
    /// streams ask this periodically.
    pub fn check_standing(
        &self,
        id: &TokenId,
        client_ip: Option<IpAddr>,
    ) -> std::result::Result<(), AuthFailure> {
        let now = Timestamp::now();
        let chain = self.store.chain(id)?.ok_or(AuthFailure::Unknown)?;
        let links: Vec<&TokenRecord> = chain.iter().map(Arc::as_ref).collect();
        let attempt = Attempt::authentication(&self.config.environment, now, client_ip);
        authorize(&links, &attempt).map_err(AuthFailure::Denied)
    }

    fn resolve_secret(
        &self,
        presented: &str,
        now: Timestamp,
    ) -> std::result::Result<TokenId, AuthFailure> {
        let hash = Secret::hash_presented(presented).map_err(AuthFailure::Malformed)?;
        let entry = self.store.hash_entry(&hash)?.ok_or(AuthFailure::Unknown)?;
        if entry.grace_until.is_some_and(|g| g <= now) {
            return Err(AuthFailure::RotatedOut(entry.id));
        }
        Ok(entry.id)
    }

    /// Whether a decision for `caller` may write and flush: it does when a token in the chain
    /// has `max_uses` (its counter is durable). Such decisions belong off the async workers;
    /// the others only read. A chain that cannot be read answers `true` (the decision reports
    /// the fault, wherever it runs).
    pub fn decision_may_flush(&self, caller: &Caller) -> bool {
        let Caller::Token(id) = caller else {
            return false;
        };
        match self.store.chain(id) {
            Ok(Some(chain)) => chain.iter().any(|r| r.scope.max_uses.is_some()),
            _ => true,
        }
    }

    /// Decides whether `caller` may call `tool` now and, if so, counts the call (uses and rate
    /// limits along the chain). `tools/call` asks this before running any tool.
    pub fn authorize_call(
        &self,
        caller: &Caller,
        tool: &str,
        bucket: Option<&str>,
        client_ip: Option<IpAddr>,
    ) -> Result<()> {
        let tool = Tool {
            name: tool,
            read_only: is_read_only_tool(tool),
        };
        self.authorize_tool_call(caller, tool, bucket, client_ip)
    }

    /// [`Service::authorize_call`] for a tool the service does not define (a gateway tool):
    /// the caller supplies its read-only flag and bucket. Counts the call when allowed.
    pub fn authorize_tool_call(
        &self,
        caller: &Caller,
        tool: Tool<'_>,
        bucket: Option<&str>,
        client_ip: Option<IpAddr>,
    ) -> Result<()> {
        let Caller::Token(id) = caller else {
            return Ok(());
        };
        let chain = self.caller_chain(id)?;
        // One clock for the budgets and the decision.
        let now = Timestamp::now();
        self.usage
            .admit_at(&self.store, &chain, true, now, |links, budgets| {
                let attempt = Attempt {
                    environment: &self.config.environment,
                    now,
                    client_ip,
                    tool: Some(tool),
                    bucket,
                    budgets,
                };
                authorize(links, &attempt)
            })?
            .map_err(Error::from)
    }

    /// Whether `caller` could call `tool` now, without counting a use.
    pub fn may_call(&self, caller: &Caller, tool: &str, client_ip: Option<IpAddr>) -> bool {
        let tool = Tool {
            name: tool,
            read_only: is_read_only_tool(tool),
        };
        self.may_call_tools(caller, &[(tool, None)], client_ip)[0]
    }

    /// Which of `tools` (each with its bucket, for a gateway tool) `caller` could call now,
    /// without counting a use: `tools/list` filtering. The caller's chain is read once, then the
    /// one decision runs per tool.
    pub fn may_call_tools(
        &self,
        caller: &Caller,
        tools: &[(Tool<'_>, Option<&str>)],
        client_ip: Option<IpAddr>,
    ) -> Vec<bool> {
        let Caller::Token(id) = caller else {
            return vec![true; tools.len()];
        };
        let Ok(chain) = self.caller_chain(id) else {
            return vec![false; tools.len()];
        };
        let links: Vec<&TokenRecord> = chain.iter().map(Arc::as_ref).collect();
        let now = Timestamp::now();
        tools
            .iter()
            .map(|(tool, bucket)| {
                let attempt = Attempt {
                    environment: &self.config.environment,
                    now,
                    client_ip,
                    tool: Some(*tool),
                    bucket: *bucket,
                    budgets: None,
                };
                permits(&links, &attempt)
            })
            .collect()
    }

    /// Whether a call `caller` cannot make is one a person could grant through OAuth consent
    /// again (scope step-up, SPEC §11): the caller was issued through OAuth (its metadata names
    /// an OAuth client or a token exchange), its own tool or bucket allowlist or its own
    /// denials refuse the call, and its parent's chain would allow it. Counts nothing. A call
    /// refused for any other reason (its approver lacks the tool, read-only, limits) is not.
    pub fn needs_step_up(
        &self,
        caller: &Caller,
        tool: Tool<'_>,
        bucket: Option<&str>,
        client_ip: Option<IpAddr>,
    ) -> bool {
        use crate::rules::authorize::Rule;
        let Caller::Token(id) = caller else {
            return false;
        };
        let Ok(chain) = self.caller_chain(id) else {
            return false;
        };
        let links: Vec<&TokenRecord> = chain.iter().map(Arc::as_ref).collect();
        let metadata = &links[0].metadata;
        if links.len() < 2
            || !(metadata.contains_key("oauth_client_id")
                || metadata.contains_key("oauth_token_exchange"))
        {
            return false;
        }
        let attempt = Attempt {
            environment: &self.config.environment,
            now: Timestamp::now(),
            client_ip,
            tool: Some(tool),
            bucket,
            budgets: None,
        };
        match authorize(&links, &attempt) {
            Err(denial) => {
                matches!(
                    denial.rule,
                    Rule::ToolAllowlist | Rule::ToolDenied | Rule::BucketAllowlist
                ) && denial.culprit.is_none()
                    && permits(&links[1..], &attempt)
            }
            Ok(()) => false,
        }
    }

    /// Whether `caller` holds `bucket`, for `list_buckets`: owner and admin tokens hold every
    /// bucket (SPEC §5); any other token as the decision's bucket rule says.
    pub fn holds_bucket(&self, caller: &Caller, bucket: &str, client_ip: Option<IpAddr>) -> bool {
        let Caller::Token(id) = caller else {
            return true;
        };
        let Ok(chain) = self.caller_chain(id) else {
            return false;
        };
        let links: Vec<&TokenRecord> = chain.iter().map(Arc::as_ref).collect();
        let attempt = Attempt {
            environment: &self.config.environment,
            now: Timestamp::now(),
            client_ip,
            tool: None,
            bucket: (!links[0].scope.admin).then_some(bucket),
            budgets: None,
        };
        permits(&links, &attempt)
    }

    /// The root of a token's lineage (the token itself for a root): what shares a session
    /// budget when the server is full.
    /// The root of `id`'s chain: what the bounds that share the server among lineages
    /// (sessions, streams, requests in flight, upstream call slots) count under. A root minted
    /// by an admin with `parent: none` is a lineage of its own: that is what an operator mints
    /// roots for, and an admin may already manage every token.
    /// A place for one operation of `caller`'s lineage on the blocking pool, waiting while
    /// [`LINEAGE_BLOCKING`] of them run. The permit goes into the work itself, so work whose
    /// request was abandoned (the client closed its connection, its in-flight ticket gone)
    /// still counts until it ends: a lineage cannot pile up work the server no longer sees.
    pub async fn blocking_permit(&self, caller: &Caller) -> tokio::sync::OwnedSemaphorePermit {
        let lineage = match caller {
            Caller::Owner => None,
            Caller::Token(id) => Some(self.lineage_root(id).unwrap_or_else(|| id.clone())),
        };
        let semaphore = {
            let mut map = self.blocking.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= 10_000 {
                map.retain(|_, s| s.available_permits() < LINEAGE_BLOCKING);
            }
            Arc::clone(
                map.entry(lineage)
                    .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(LINEAGE_BLOCKING))),
            )
        };
        semaphore
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Where tool calls and refused requests are reported (the access log, the metrics).
    pub fn observer(&self) -> &crate::observe::Observer {
        &self.observer
    }

    /// Reports a request of a known token refused before any tool ran (`reason`: a rule's
    /// code, `rotated_out` or `too_many_in_flight`); a secret that names no token is reported
    /// without one (`malformed`, `unknown`, `unavailable`).
    pub fn observe_refusal(&self, failure: RefusedKnown<'_>, front: crate::observe::Front) {
        use crate::observe::Unauthenticated;
        if !self.observer.enabled() {
            return;
        }
        let (token, reason) = match failure {
            RefusedKnown::Auth(AuthFailure::Denied(denial)) => {
                (&denial.token, denial.rule.as_str())
            }
            RefusedKnown::Auth(AuthFailure::RotatedOut(id)) => (id, "rotated_out"),
            RefusedKnown::Auth(AuthFailure::Malformed(_)) => {
                return self
                    .observer
                    .unauthenticated(Unauthenticated::Malformed, front);
            }
            RefusedKnown::Auth(AuthFailure::Unknown) => {
                return self
                    .observer
                    .unauthenticated(Unauthenticated::Unknown, front);
            }
            RefusedKnown::Auth(AuthFailure::Unavailable(_)) => {
                return self
                    .observer
                    .unauthenticated(Unauthenticated::Unavailable, front);
            }
            RefusedKnown::InFlight(id) => (id, "too_many_in_flight"),
        };
        let lineage = self.lineage_root(token);
        self.observer.record(&crate::observe::Access {
            at: Timestamp::now(),
            token: Some(token),
            lineage: Some(lineage.as_ref().unwrap_or(token)),
            tool: None,
            bucket: None,
            outcome: crate::observe::Outcome::Error(reason),
            duration: std::time::Duration::ZERO,
            upstream_is_error: None,
            front,
        });
    }

    pub fn lineage_root(&self, id: &TokenId) -> Option<TokenId> {
        let chain = self.store.chain(id).ok()??;
        chain.last().map(|root| root.id.clone())
    }

    /// The ids from the lineage's root down to `id` (just `id` if it has gone meanwhile):
    /// what the bound on requests in flight counts against (`http::inflight`).
    pub fn lineage_chain(&self, id: &TokenId) -> Vec<TokenId> {
        match self.store.chain(id) {
            Ok(Some(chain)) => chain.iter().rev().map(|record| record.id.clone()).collect(),
            _ => vec![id.clone()],
        }
    }

    /// Refuses a caller that is neither the owner nor an admin token still in standing; for
    /// what no tool covers (the REST API's OAuth endpoints), `what` names it.
    pub fn require_owner_or_admin(&self, caller: &Caller, what: &str) -> Result<()> {
        if self.acting(caller)?.is_owner_or_admin() {
            Ok(())
        } else {
            Err(Error::forbidden(format!(
                "{what} are for the owner and admin tokens only"
            )))
        }
    }

    fn caller_chain(&self, id: &TokenId) -> Result<Vec<Arc<TokenRecord>>> {
        self.store
            .chain(id)?
            .ok_or_else(|| Error::forbidden(format!("token {id} no longer exists")))
    }

    /// Resolves the caller of a read-only operation, refusing a token that may no longer act.
    fn acting(&self, caller: &Caller) -> Result<Acting> {
        self.resolve_acting(caller)
    }

    /// Resolves the caller of a management operation. Call it with the write lock held (the
    /// `_write` guard proves it): standing is checked when the change commits (SPEC §4), so an
    /// action racing with its caller's revocation, pause or narrowing either commits before
    /// that change or is refused. Checks the caller and every ancestor are active and unexpired
    /// now; what the action needs of the caller's scope (admin, the bounds of what it mints or
    /// re-scopes) is then checked against the records read here, under the same lock. The tool
    /// allowlist was checked by `authorize_call` just before the tool ran.
    fn acting_under_lock(&self, _write: &MutexGuard<'_, ()>, caller: &Caller) -> Result<Acting> {
        self.resolve_acting(caller)
    }

    fn resolve_acting(&self, caller: &Caller) -> Result<Acting> {
        match caller {
            Caller::Owner => Ok(Acting {
                actor: Actor::Owner,
                chain: None,
            }),
            Caller::Token(id) => {
                let chain = self.caller_chain(id)?;
                let links: Vec<&TokenRecord> = chain.iter().map(Arc::as_ref).collect();
                let attempt =
                    Attempt::authentication(&self.config.environment, Timestamp::now(), None);
                authorize(&links, &attempt)?;
                Ok(Acting {
                    actor: Actor::Token(id.clone()),
                    chain: Some(chain),
                })
            }
        }
    }

    /// Loads a token the caller may manage. Tokens outside its reach are reported as not found,
    /// so a token cannot probe for ids it does not own.
    fn load_in_reach(&self, acting: &Acting, id: &str) -> Result<Vec<Arc<TokenRecord>>> {
        let id = TokenId::parse(id).map_err(Error::invalid)?;
        let missing = || match acting.token() {
            None => Error::not_found(format!("no token {id}")),
            Some(_) => Error::not_found(format!("no token {id} within your reach")),
        };
        let chain = self.store.chain(&id)?.ok_or_else(missing)?;
        if self.in_reach(acting, &chain) {
            Ok(chain)
        } else {
            Err(missing())
        }
    }

    fn in_reach(&self, acting: &Acting, chain: &[Arc<TokenRecord>]) -> bool {
        match acting.token() {
            None => true,
            Some(me) if me.scope.admin => true,
            Some(me) => chain.iter().any(|r| r.id == me.id),
        }
    }

    /// The record as tools return it: effective status along the chain, live usage counters.
    fn view(&self, chain: &[Arc<TokenRecord>], now: Timestamp) -> Result<TokenView> {
        let record = &chain[0];
        let links: Vec<&TokenRecord> = chain.iter().map(Arc::as_ref).collect();
        let usage = self.usage.snapshot(&self.store, &record.id)?;
        let scope = &record.scope;
        Ok(TokenView {
            id: record.id.clone(),
            name: record.name.clone(),
            description: record.description.clone(),
            environment: scope.environment.clone(),
            buckets: scope.buckets.clone(),
            tools: scope.tools.clone(),
            deny_tools: scope.deny_tools.clone(),
            read_only: scope.read_only,
            admin: scope.admin,
            allowed_ips: scope.allowed_ips.clone(),
            status: record.status_at(now),
            effective_status: effective_status(&links, now),
            masked: record.masked.clone(),
            last4: record.last4.clone(),
            parent_id: record.parent_id.clone(),
            created_by: record.created_by.clone(),
            depth: record.depth,
            metadata: record.metadata.clone(),
            expires_at: scope.expires_at,
            max_uses: scope.max_uses,
            remaining_uses: if scope.max_uses.is_some() {
                usage.remaining
            } else {
                None
            },
            rate_limit_per_minute: scope.rate_limit_per_minute,
            use_count: usage.use_count,
            last_used_at: usage.last_used_at,
            created_at: record.created_at,
            updated_at: record.updated_at,
            paused_at: record.paused_at,
            revoked_at: record.revoked_at,
            rotated_at: record.rotated_at,
        })
    }

    fn view_of(&self, id: &TokenId, now: Timestamp) -> Result<TokenView> {
        let chain = self
            .store
            .chain(id)?
            .ok_or_else(|| Error::not_found(format!("no token {id}")))?;
        self.view(&chain, now)
    }

    /// Writes one audit event of a front end's own making (the OAuth server's `oauth_register`,
    /// `oauth_approve`, `oauth_token`, `oauth_refresh`, `oauth_revoke`) under the write lock,
    /// so the audit order stays the commit order, and flushes. `changes` never holds a secret,
    /// code, verifier or refresh token.
    pub fn record_event(
        &self,
        actor: &Caller,
        action: &str,
        target: Option<&TokenId>,
        changes: serde_json::Value,
    ) -> Result<()> {
        let mut change = crate::store::Change::default();
        change.audit(crate::audit::AuditEvent {
            id: 0,
            at: Timestamp::now(),
            actor: match actor {
                Caller::Owner => Actor::Owner,
                Caller::Token(id) => Actor::Token(id.clone()),
            },
            action: action.to_owned(),
            target: target.cloned(),
            changes,
        });
        let write = self.lock_writes();
        self.store.apply(change)?;
        drop(write);
        self.store.flush()?;
        Ok(())
    }

    /// Writes usage counters behind (call every few seconds and at shutdown).
    pub fn flush_usage(&self) -> Result<()> {
        self.usage.write_behind(&self.store)?;
        Ok(())
    }

    /// Flushes usage counters and everything else to disk: call on shutdown.
    pub fn shutdown(&self) -> Result<()> {
        self.flush_usage()?;
        self.store.flush()?;
        Ok(())
    }
}
