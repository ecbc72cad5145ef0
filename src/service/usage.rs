//! Usage counters and call budgets.
//!
//! `use_count` and `last_used_at` live in memory and are written behind (a few seconds, and at
//! shutdown): a disk write per request would cost more than the whole decision. A token with
//! `max_uses` (itself or an ancestor) is different: its decremented `remaining_uses` is written
//! and flushed before the call is let through, so a crash can lose uses but never grant extra.
//! Rate windows slide: a token with `rate_limit_per_minute: N` is let through at most N times in
//! any 60-second span (counted per second over the current second and the 60 before it, so a
//! call may be refused up to a second early but never let through late). They live in memory
//! only: a restart resets them.
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

#[derive(Clone, Debug, Default)]
pub struct UsageState {
    /// Calls not yet added to the stored `use_count`.
    pending_uses: u64,
    last_used_at: Option<Timestamp>,
    /// The durable remaining-uses counter, once loaded from the store.
    remaining: Option<Option<u64>>,
    /// Recent authorised calls, for a token with a rate limit.
    window: Option<Box<RateWindow>>,
}

/// Seconds a rate window remembers: the current one and the 60 before it.
const WINDOW_SLOTS: usize = 61;

/// Authorised calls per second over the last 61 seconds: a sliding window. Counting whole
/// seconds errs on the safe side: the calls counted at time t include every call in
/// (t − 60 s, t], so admitting only while that count is under N keeps any 60-second span at N
/// or fewer.
#[derive(Clone, Debug)]
pub struct RateWindow {
    /// The latest second counted into `counts` (seconds since the epoch).
    latest: i64,
    counts: [u32; WINDOW_SLOTS],
}

impl Default for RateWindow {
    fn default() -> Self {
        RateWindow {
            latest: i64::MIN,
            counts: [0; WINDOW_SLOTS],
        }
    }
}

impl RateWindow {
    fn slot(second: i64) -> usize {
        second.rem_euclid(WINDOW_SLOTS as i64) as usize
    }

    /// Moves the window to `now`, forgetting seconds that fell out of it. A clock that steps
    /// back keeps counting into the latest second (never forgetting too early).
    fn advance(&mut self, now: Timestamp) {
        let second = now.millis().div_euclid(1000);
        if second <= self.latest {
            return;
        }
        if self.latest == i64::MIN || second - self.latest >= WINDOW_SLOTS as i64 {
            self.counts = [0; WINDOW_SLOTS];
        } else {
            for s in self.latest + 1..=second {
                self.counts[Self::slot(s)] = 0;
            }
        }
        self.latest = second;
    }

    /// Authorised calls in the window ending at `now`.
    pub fn calls(&mut self, now: Timestamp) -> u32 {
        self.advance(now);
        let total: u64 = self.counts.iter().map(|&c| u64::from(c)).sum();
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    /// Counts one authorised call at `now`.
    pub fn record(&mut self, now: Timestamp) {
        self.advance(now);
        let slot = &mut self.counts[Self::slot(self.latest)];
        *slot = slot.saturating_add(1);
    }
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
        self.admit_at(store, chain, count, Timestamp::now(), decide)
    }

    /// [`UsageTable::admit`] at a given time (tests drive the rate window's clock with it).
    pub fn admit_at(
        &self,
        store: &Store,
        chain: &[Arc<TokenRecord>],
        count: bool,
        now: Timestamp,
        decide: impl FnOnce(&[&TokenRecord], Option<&[Budget]>) -> std::result::Result<(), Denial>,
    ) -> crate::error::Result<std::result::Result<(), Denial>> {
        let links: Vec<&TokenRecord> = chain.iter().map(Arc::as_ref).collect();
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
            let calls = match (link.scope.rate_limit_per_minute, &mut state.window) {
                (None, _) => 0,
                (Some(_), Some(window)) => window.calls(now),
                (Some(_), None) => 0,
            };
            budgets.push(Budget {
                remaining_uses: link
                    .scope
                    .max_uses
                    .map(|max| stored_remaining.unwrap_or(max).min(max)),
                calls_this_minute: calls,
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
                state.window.get_or_insert_default().record(now);
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
        let now = Timestamp::now();
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
        map.retain(|_, s| s.window.as_mut().is_some_and(|w| w.calls(now) > 0));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::authorize::{Attempt, authorize};
    use crate::service::requests::CreateToken;
    use crate::service::{Caller, Service, ServiceConfig};

    /// At most N calls in any 60-second span: 10 calls 100 ms apart across a minute boundary
    /// with `rate_limit_per_minute: 5` let exactly 5 through (a fixed per-minute window let all
    /// 10 through), and the window frees up a call only 60 s after it was made.
    #[test]
    fn the_rate_window_slides_across_minute_boundaries() {
        let dir = tempfile::TempDir::new().unwrap();
        let service = Service::open(dir.path(), ServiceConfig::default()).unwrap();
        let issued = service
            .create_token(
                &Caller::Owner,
                CreateToken {
                    name: "limited".into(),
                    rate_limit_per_minute: Some(5),
                    ..CreateToken::default()
                },
            )
            .unwrap();
        let chain = service.store.chain(&issued.record.id).unwrap().unwrap();
        let call_at = |millis: i64| {
            let now = Timestamp::from_millis(millis).unwrap();
            service
                .usage
                .admit_at(&service.store, &chain, true, now, |links, budgets| {
                    let attempt = Attempt {
                        budgets,
                        ..Attempt::authentication("default", now, None)
                    };
                    authorize(links, &attempt)
                })
                .unwrap()
                .is_ok()
        };
        // A minute boundary in the future (so the token has not expired, it has no expiry).
        let minute = (Timestamp::now().millis() / 60_000 + 2) * 60_000;
        let admitted: Vec<i64> = (0..10)
            .map(|i| minute - 500 + i * 100)
            .filter(|&t| call_at(t))
            .collect();
        assert_eq!(admitted.len(), 5, "admitted at {admitted:?}");
        // 59 s after the last admitted call, the window still holds 5.
        assert!(!call_at(admitted[4] + 59_000));
        // Once 61 s have passed since the first five, calls go through again, five of them.
        let later = admitted[4] + 61_000;
        let again = (0..8).filter(|i| call_at(later + i * 10)).count();
        assert_eq!(again, 5);
    }
}
