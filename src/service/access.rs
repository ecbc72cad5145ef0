//! The access log (SPEC §14): every tool call and every refused request of a known token,
//! with its time, token, lineage, tool, bucket, outcome and duration — never arguments,
//! results or secrets.
//!
//! Calls hand their [`Access`] to [`AccessLog`] (a sink of `observe`), which only appends it
//! to a buffer; [`write_behind`] writes the buffer once a second in one batch and flushes, so a
//! crash loses at most the last second. An entry of a token deleted meanwhile is dropped under
//! the write lock (deletion takes a token's entries with it), so none outlives its token. When
//! the writer falls behind, at most [`MAX_PENDING`] entries wait; more are counted and
//! dropped (and said in the log) rather than held without bound. Retention (age and count)
//! prunes the oldest in the background, as for the audit log.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::requests::{AccessEvent, AccessPage, ListAccessEvents};
use super::{Caller, Service, validate};
use crate::error::{Error, Result};
use crate::observe::{Access, AccessSink};
use crate::secret::TokenId;
use crate::store::{AccessEntry, AccessKey, StoredAccess};
use crate::timestamp::Timestamp;

/// Entries waiting to be written; more are dropped (and counted).
pub const MAX_PENDING: usize = 100_000;
/// Refusals at the door logged per token per writer pass (a second); more are counted only.
pub const REFUSALS_PER_PASS: u32 = 10;
/// How often the buffer is written.
const WRITE_EVERY: Duration = Duration::from_secs(1);
/// Entries a page may examine before it returns with a cursor.
const SCAN_BUDGET: usize = 5_000;
const MS_PER_DAY: i64 = 86_400_000;
/// Entries are stored in the order the writer took them, so reading newest first an entry a
/// little older than `since` may come before newer ones: reading stops only this far past it.
const SINCE_MARGIN_MS: i64 = 10_000;

/// How much of the access log to keep: 30 days or a million entries, whichever is reached
/// first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRetention {
    pub max_age_days: u32,
    pub max_events: u64,
}

impl Default for AccessRetention {
    fn default() -> Self {
        AccessRetention {
            max_age_days: 30,
            max_events: 1_000_000,
        }
    }
}

/// An entry waiting for the writer: what the call knew, nothing looked up (the writer finds
/// the lineage and checks the token still exists, off the request path). Token ids and names
/// are indexes into its pass's tables ([`NONE`] for none), so recording allocates nothing
/// once a pass has seen them.
struct Pending {
    at: Timestamp,
    token: u32,
    lineage: u32,
    tool: u32,
    bucket: u32,
    outcome: &'static str,
    duration_us: u64,
    upstream_is_error: Option<bool>,
    front: &'static str,
}

const NONE: u32 = u32::MAX;

/// Distinct values of one pass, each stored once.
struct Interned<T> {
    values: Vec<T>,
    index: HashMap<T, u32>,
}

impl<T> Default for Interned<T> {
    fn default() -> Self {
        Interned {
            values: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<T: Clone + Eq + std::hash::Hash> Interned<T> {
    fn of<Q>(&mut self, value: Option<&Q>) -> u32
    where
        T: std::borrow::Borrow<Q>,
        Q: ToOwned<Owned = T> + Eq + std::hash::Hash + ?Sized,
    {
        let Some(value) = value else {
            return NONE;
        };
        if let Some(&i) = self.index.get(value) {
            return i;
        }
        let i = self.values.len() as u32;
        let owned = value.to_owned();
        self.values.push(owned.clone());
        self.index.insert(owned, i);
        i
    }

    fn get(&self, i: u32) -> Option<&T> {
        self.values.get(i as usize)
    }

    fn clear(&mut self) {
        self.values.clear();
        self.index.clear();
    }
}

/// What one writer pass takes: the entries and the tables they index.
#[derive(Default)]
struct Pass {
    entries: Vec<Pending>,
    tokens: Interned<TokenId>,
    names: Interned<String>,
    /// Refusals at the door recorded this pass, per token (by index).
    refusals: HashMap<u32, u32>,
}

impl Pass {
    fn clear(&mut self) {
        self.entries.clear();
        self.tokens.clear();
        self.names.clear();
        self.refusals.clear();
    }
}

/// The access log's sink: a bounded buffer the writer empties.
#[derive(Default)]
pub struct AccessLog {
    pending: Mutex<Buffer>,
    dropped: AtomicU64,
    /// Refusals at the door beyond [`REFUSALS_PER_PASS`] for one token in one writer pass.
    folded: AtomicU64,
}

#[derive(Default)]
struct Buffer {
    current: Pass,
    /// The previous pass, emptied by the writer and handed back with its capacity: once warm,
    /// recording never grows (and copies) the buffer on the request path.
    spare: Pass,
}

impl AccessLog {
    pub fn new() -> Arc<AccessLog> {
        Arc::new(AccessLog::default())
    }

    fn take(&self) -> Pass {
        let mut buffer = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let spare = std::mem::take(&mut buffer.spare);
        std::mem::replace(&mut buffer.current, spare)
    }

    /// Takes back a written pass (emptied) for a later one.
    fn give_back(&self, mut pass: Pass) {
        pass.clear();
        let mut buffer = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        buffer.spare = pass;
    }
}

impl AccessSink for AccessLog {
    fn record(&self, access: &Access<'_>) {
        let mut buffer = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let pass = &mut buffer.current;
        if pass.entries.len() >= MAX_PENDING {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let token = pass.tokens.of(access.token);
        // A refused token retrying as fast as it can must not push everyone's history out
        // of the log: its refusals at the door are kept up to a few per second.
        if access.tool.is_none() && token != NONE {
            let seen = pass.refusals.entry(token).or_default();
            *seen += 1;
            if *seen > REFUSALS_PER_PASS {
                self.folded.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let entry = Pending {
            at: access.at,
            token,
            lineage: pass.tokens.of(access.lineage),
            tool: pass.names.of(access.tool),
            bucket: pass.names.of(access.bucket),
            outcome: access.outcome.as_str(),
            duration_us: access.duration.as_micros().min(u128::from(u64::MAX)) as u64,
            upstream_is_error: access.upstream_is_error,
            front: access.front.as_str(),
        };
        pass.entries.push(entry);
    }
}

/// Writes the access log's buffer every second until `shutdown`, then once more.
pub async fn write_behind(service: Arc<Service>, log: Arc<AccessLog>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(WRITE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.cancelled() => true,
        };
        let dropped = log.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(dropped, "the access log fell behind: entries were dropped");
        }
        let folded = log.folded.swap(0, Ordering::Relaxed);
        if folded > 0 {
            tracing::info!(
                folded,
                "refusals of a token beyond {REFUSALS_PER_PASS} a second were not logged"
            );
        }
        let pass = log.take();
        if !pass.entries.is_empty() {
            let service = Arc::clone(&service);
            let written = tokio::task::spawn_blocking(move || {
                let written = service.write_access(&pass);
                (written, pass)
            })
            .await;
            match written {
                Ok((Err(e), _)) => tracing::warn!("writing the access log failed: {e}"),
                Err(e) => tracing::warn!("access log writer failed: {e}"),
                Ok((Ok(()), pass)) => log.give_back(pass),
            }
        } else {
            log.give_back(pass);
        }
        if stopping {
            return;
        }
    }
}

fn view(entry: StoredAccess) -> AccessEvent {
    AccessEvent {
        at: entry.at,
        token_id: entry.token,
        lineage_id: entry.lineage,
        tool: entry.tool,
        bucket: entry.bucket,
        outcome: entry.outcome,
        duration_ms: entry.duration_us as f64 / 1000.0,
        upstream_is_error: entry.upstream_is_error,
        via: entry.front,
    }
}

impl Service {
    /// Writes a pass's entries and flushes. Each token's lineage is found here, once per
    /// token; entries of tokens no longer stored are left out (checked under the write lock,
    /// which deletion holds).
    fn write_access(&self, pass: &Pass) -> Result<()> {
        {
            let _write = self.lock_writes();
            // Per token of the pass: its lineage root, or None when it is gone.
            let mut roots: Vec<Option<TokenId>> = Vec::with_capacity(pass.tokens.values.len());
            for token in &pass.tokens.values {
                let chain = self.store.chain(token)?;
                roots.push(chain.and_then(|chain| chain.last().map(|r| r.id.clone())));
            }
            let name = |i: u32| pass.names.get(i).map(String::as_str);
            let mut kept = Vec::with_capacity(pass.entries.len());
            for entry in &pass.entries {
                let token = pass.tokens.get(entry.token);
                let lineage = match token {
                    None => None,
                    Some(_) => match &roots[entry.token as usize] {
                        Some(root) => Some(pass.tokens.get(entry.lineage).unwrap_or(root)),
                        None => continue,
                    },
                };
                kept.push(AccessEntry {
                    at: entry.at,
                    token,
                    lineage,
                    tool: name(entry.tool),
                    bucket: name(entry.bucket),
                    outcome: entry.outcome,
                    duration_us: entry.duration_us,
                    upstream_is_error: entry.upstream_is_error,
                    front: entry.front,
                });
            }
            self.store.write_access(&kept)?;
        }
        self.store.flush()?;
        Ok(())
    }

    /// Removes what retention no longer keeps; returns how many entries went.
    pub fn prune_access(&self) -> Result<u64> {
        let retention = self.config.access_retention;
        let now = Timestamp::now();
        let older_than =
            Timestamp::from_millis(now.millis() - i64::from(retention.max_age_days) * MS_PER_DAY)
                .unwrap_or(now);
        let pruned = self
            .store
            .prune_access(retention.max_events.max(1), older_than)?;
        if pruned > 0 {
            self.store.flush()?;
            tracing::info!(pruned, "pruned the oldest access log entries");
        }
        Ok(pruned)
    }

    /// `list_access_events`: newest first; the owner and admin tokens see every entry, a token
    /// the entries of its own subtree (itself and the tokens minted under it).
    pub fn list_access_events(&self, caller: &Caller, req: ListAccessEvents) -> Result<AccessPage> {
        let acting = self.acting(caller)?;
        let me = acting
            .token()
            .filter(|t| !t.scope.admin)
            .map(|t| t.id.clone());
        let my_lineage = me
            .as_ref()
            .map(|id| self.lineage_root(id).unwrap_or_else(|| id.clone()));
        let limit = validate::page_limit(req.limit)?;
        let id = |text: &Option<String>| {
            text.as_deref()
                .map(TokenId::parse)
                .transpose()
                .map_err(Error::invalid)
        };
        let time = |text: &Option<String>| {
            text.as_deref()
                .map(Timestamp::parse)
                .transpose()
                .map_err(Error::invalid)
        };
        let (token, lineage) = (id(&req.token_id)?, id(&req.lineage_id)?);
        // A token may name only tokens in its reach (its subtree) and its own lineage: others
        // are `not_found`, as everywhere, so ids cannot be probed through the filters.
        if let Some(t) = &token {
            self.load_in_reach(&acting, t.as_str())?;
        }
        if let (Some(_), Some(l)) = (&me, &lineage)
            && Some(l) != my_lineage.as_ref()
        {
            return Err(Error::not_found(format!(
                "no lineage {l} within your reach"
            )));
        }
        let (since, until) = (time(&req.since)?, time(&req.until)?);
        let cursor = match req.cursor.as_deref() {
            None => None,
            Some(c) => Some(AccessKey::parse_cursor(c).ok_or_else(|| {
                Error::invalid("invalid cursor: pass next_cursor from a previous page unchanged")
            })?),
        };
        let in_subtree = |entry: &StoredAccess| -> Result<bool> {
            if me.is_none() {
                return Ok(true);
            }
            // Another lineage's entry is outside the subtree without a lookup.
            if entry.lineage.as_ref() != my_lineage.as_ref() {
                return Ok(false);
            }
            let Some(token) = &entry.token else {
                return Ok(false);
            };
            Ok(self
                .store
                .chain(token)?
                .is_some_and(|chain| self.in_reach(&acting, &chain)))
        };
        let mut events = Vec::with_capacity(limit);
        let mut has_more = false;
        let mut last_examined = None;
        let entries =
            self.store
                .access_events(token.as_ref(), cursor, until.map(Timestamp::millis));
        for (examined, item) in entries.enumerate() {
            let (key, entry) = item?;
            if since.is_some_and(|s| entry.at.millis() < s.millis() - SINCE_MARGIN_MS) {
                break;
            }
            if examined >= SCAN_BUDGET {
                has_more = true;
                break;
            }
            let wanted = since.is_none_or(|s| entry.at >= s)
                && until.is_none_or(|u| entry.at < u)
                && lineage
                    .as_ref()
                    .is_none_or(|l| entry.lineage.as_ref() == Some(l))
                && req
                    .tool
                    .as_deref()
                    .is_none_or(|t| entry.tool.as_deref() == Some(t))
                && req
                    .bucket
                    .as_deref()
                    .is_none_or(|b| entry.bucket.as_deref() == Some(b))
                && req.outcome.as_deref().is_none_or(|o| entry.outcome == o)
                && in_subtree(&entry)?;
            if wanted && events.len() == limit {
                has_more = true;
                break;
            }
            last_examined = Some(key);
            if wanted {
                events.push(view(entry));
            }
        }
        Ok(AccessPage {
            events,
            has_more,
            next_cursor: if has_more {
                last_examined.map(AccessKey::cursor)
            } else {
                None
            },
        })
    }
}
