//! Usage counters and call budgets.
//!
//! `use_count` and `last_used_at` live in memory and are written behind (a few seconds, and at
//! shutdown): a disk write per request would cost more than the whole decision. A token with
//! `max_uses` (itself or an ancestor) is different: its decremented `remaining_uses` is written
//! and flushed before the call is let through, so a crash can lose uses but never grant extra.
//! Rate windows are per minute and in memory only.
//!
//! Usage never outlives its token: a deletion removes the token's counters in the same batch
//! as its record, under this table's lock, and every write here checks, under that lock, that
//! the token still exists. A call that raced with the deletion of its token (or an ancestor)
//! is refused, and counts of a deleted token are dropped instead of written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::Error;
use crate::record::TokenRecord;
use crate::rules::authorize::{Budget, Denial};
use crate::secret::TokenId;
use crate::store::{Result, Store, StoredUsage};
use crate::timestamp::Timestamp;

#[derive(Clone, Copy, Debug, Default)]
pub struct UsageState {
    /// Calls not yet added to the stored `use_count`.
    pending_uses: u64,
    last_used_at: Option<Timestamp>,
    /// The durable remaining-uses counter, once loaded from the store.
    remaining: Option<Option<u64>>,
    window_minute: i64,
    window_calls: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageSnapshot {
    pub use_count: u64,
    pub last_used_at: Option<Timestamp>,
    pub remaining: Option<u64>,
}

#[derive(Default)]
pub struct UsageTable {
    states: Mutex<HashMap<TokenId, UsageState>>,
}

pub type Guard<'a> = MutexGuard<'a, HashMap<TokenId, UsageState>>;

fn remaining_of(state: &mut UsageState, store: &Store, id: &TokenId) -> Result<Option<u64>> {
    if state.remaining.is_none() {
        state.remaining = Some(store.remaining(id)?);
    }
    Ok(state.remaining.flatten())
}

fn count_use(map: &mut HashMap<TokenId, UsageState>, id: &TokenId, now: Timestamp) {
    let own = map.entry(id.clone()).or_default();
    own.pending_uses += 1;
    own.last_used_at = Some(now);
}

impl UsageTable {
    pub fn lock(&self) -> Guard<'_> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `decide` with the chain's budgets and, if it allows and `count` is set, counts the
    /// call against every limit along the chain. Decision and counting happen under one lock,
    /// so two concurrent calls cannot both take the last use. A chain with a limit whose link
    /// was deleted meanwhile (the chain was read before the deletion committed) is refused:
    /// its counters must not come back.
    pub fn admit(
        &self,
        store: &Store,
        chain: &[Arc<TokenRecord>],
        count: bool,
        decide: impl FnOnce(&[&TokenRecord], Option<&[Budget]>) -> std::result::Result<(), Denial>,
    ) -> crate::error::Result<std::result::Result<(), Denial>> {
        let links: Vec<&TokenRecord> = chain.iter().map(Arc::as_ref).collect();
        let now = Timestamp::now();
        let limited = links
            .iter()
            .any(|r| r.scope.max_uses.is_some() || r.scope.rate_limit_per_minute.is_some());
        if !limited {
            if let Err(denial) = decide(&links, None) {
                return Ok(Err(denial));
            }
            if count {
                count_use(&mut self.lock(), &links[0].id, now);
            }
            return Ok(Ok(()));
        }

        let minute = now.millis() / 60_000;
        let mut map = self.lock();
        for link in &links {
            if !store.exists(&link.id)? {
                return Err(Error::forbidden(format!(
                    "token {} no longer exists",
                    link.id
                )));
            }
        }
        let mut budgets = Vec::with_capacity(links.len());
        for link in &links {
            let state = map.entry(link.id.clone()).or_default();
            let stored_remaining = remaining_of(state, store, &link.id)?;
            if state.window_minute != minute {
                state.window_minute = minute;
                state.window_calls = 0;
            }
            budgets.push(Budget {
                remaining_uses: link
                    .scope
                    .max_uses
                    .map(|max| stored_remaining.unwrap_or(max).min(max)),
                calls_this_minute: state.window_calls,
            });
        }
        if let Err(denial) = decide(&links, Some(&budgets)) {
            return Ok(Err(denial));
        }
        if !count {
            return Ok(Ok(()));
        }
        let mut durable = Vec::new();
        for (link, budget) in links.iter().zip(&budgets) {
            let state = map.get_mut(&link.id).expect("loaded above");
            if let Some(remaining) = budget.remaining_uses {
                let left = remaining.saturating_sub(1);
                state.remaining = Some(Some(left));
                durable.push((link.id.clone(), left));
            }
            if link.scope.rate_limit_per_minute.is_some() {
                state.window_calls += 1;
            }
        }
        count_use(&mut map, &links[0].id, now);
        if !durable.is_empty() {
            store.write_remaining(&durable)?;
            drop(map);
            store.flush()?;
        }
        Ok(Ok(()))
    }

    /// Current counters of one token, pending writes included.
    pub fn snapshot(&self, store: &Store, id: &TokenId) -> Result<UsageSnapshot> {
        let mut map = self.lock();
        let stored = store.usage(id)?;
        let state = map.get_mut(id);
        let (pending, last, remaining) = match state {
            Some(s) => (s.pending_uses, s.last_used_at, remaining_of(s, store, id)?),
            None => (0, None, store.remaining(id)?),
        };
        Ok(UsageSnapshot {
            use_count: stored.use_count + pending,
            last_used_at: last.or(stored.last_used_at),
            remaining,
        })
    }

    /// The remaining-uses counter of `id` as the table sees it, under the caller's lock.
    pub fn remaining(map: &mut Guard<'_>, store: &Store, id: &TokenId) -> Result<Option<u64>> {
        remaining_of(map.entry(id.clone()).or_default(), store, id)
    }

    /// Records a new remaining-uses value that a management change just stored.
    pub fn set_remaining(map: &mut Guard<'_>, id: &TokenId, remaining: Option<u64>) {
        if let Some(state) = map.get_mut(id) {
            state.remaining = Some(remaining);
        }
    }

    /// Drops the counters of deleted tokens so they are not written back.
    pub fn forget(map: &mut Guard<'_>, id: &TokenId) {
        map.remove(id);
    }

    /// Adds pending uses to the stored counters and drops idle entries. The write happens under
    /// the lock so no concurrent snapshot can count a use twice or not at all, and no deletion
    /// can slip between the check that a token exists and the write of its counter.
    pub fn write_behind(&self, store: &Store) -> Result<()> {
        let minute = Timestamp::now().millis() / 60_000;
        let mut map = self.lock();
        let mut gone = Vec::new();
        for (id, _) in map.iter().filter(|(_, s)| s.pending_uses > 0) {
            if !store.exists(id)? {
                gone.push(id.clone());
            }
        }
        for id in &gone {
            map.remove(id);
        }
        let mut updates: Vec<(TokenId, StoredUsage)> = Vec::new();
        for (id, state) in map.iter_mut().filter(|(_, s)| s.pending_uses > 0) {
            let stored = store.usage(id)?;
            updates.push((
                id.clone(),
                StoredUsage {
                    use_count: stored.use_count + state.pending_uses,
                    last_used_at: state.last_used_at.or(stored.last_used_at),
                },
            ));
            state.pending_uses = 0;
        }
        if !updates.is_empty() {
            store.write_usage(&updates)?;
        }
        map.retain(|_, s| s.window_minute == minute && s.window_calls > 0);
        Ok(())
    }
}
