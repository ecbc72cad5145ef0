//! Fair sharing of one upstream's call slots among token lineages (SPEC §16).
//!
//! An upstream runs at most [`CALL_SLOTS`] forwarded calls at once, and one lineage (a root
//! token and everything under it, so minting children does not multiply a share) holds at most
//! [`LINEAGE_SLOTS`] of them: half, so a lineage whose calls are slow always leaves slots free
//! for the others, and a new caller does not wait behind calls that may run for a minute. When
//! every slot is taken, a freed slot goes to the waiting lineage that holds the fewest (the
//! earliest waiter among equals). The queueing time counts against the call's timeout and is
//! reported in its error. A lineage may have at most [`LINEAGE_WAITING`] calls waiting: a
//! call can outlive the HTTP request that made it (rmcp's path runs it to its timeout), so
//! without this bound one token could queue calls, with their arguments, without end.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// Calls in flight to one upstream at once.
pub const CALL_SLOTS: usize = 32;
/// Calls in flight to one upstream at once for one lineage.
pub const LINEAGE_SLOTS: usize = CALL_SLOTS / 2;
/// Calls of one lineage waiting for a slot of one upstream; more are refused at once.
pub const LINEAGE_WAITING: usize = LINEAGE_SLOTS;

/// Who a call counts against: the lineage root of the calling token, or the owner.
pub type Lineage = Arc<str>;

pub struct FairShare {
    slots: usize,
    per_lineage: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    held: HashMap<Lineage, usize>,
    total: usize,
    waiting: VecDeque<Waiter>,
    next_waiter: u64,
}

struct Waiter {
    id: u64,
    lineage: Lineage,
    granted: oneshot::Sender<()>,
}

/// A call refused because its lineage already has [`LINEAGE_WAITING`] calls waiting.
#[derive(Debug)]
pub struct QueueFull;

impl State {
    fn may_take(&self, lineage: &Lineage, slots: usize, per_lineage: usize) -> bool {
        self.total < slots && self.held.get(lineage).copied().unwrap_or(0) < per_lineage
    }

    fn take(&mut self, lineage: &Lineage) {
        self.total += 1;
        *self.held.entry(Arc::clone(lineage)).or_default() += 1;
    }

    fn give_back(&mut self, lineage: &Lineage) {
        self.total = self.total.saturating_sub(1);
        if let Some(held) = self.held.get_mut(lineage) {
            *held -= 1;
            if *held == 0 {
                self.held.remove(lineage);
            }
        }
    }

    /// Hands free slots to waiters: each time to the eligible waiter whose lineage holds the
    /// fewest. Waiters that gave up are dropped on the way.
    fn grant(&mut self, slots: usize, per_lineage: usize) {
        self.waiting.retain(|w| !w.granted.is_closed());
        while self.total < slots {
            let next = self
                .waiting
                .iter()
                .enumerate()
                .filter(|(_, w)| self.held.get(&w.lineage).copied().unwrap_or(0) < per_lineage)
                .min_by_key(|(i, w)| (self.held.get(&w.lineage).copied().unwrap_or(0), *i))
                .map(|(i, _)| i);
            let Some(waiter) = next.and_then(|i| self.waiting.remove(i)) else {
                return;
            };
            self.take(&waiter.lineage);
            if waiter.granted.send(()).is_err() {
                // It gave up between the check and now.
                self.give_back(&waiter.lineage);
            }
        }
    }
}

/// One call slot; given back when dropped.
pub struct Slot {
    share: Arc<FairShare>,
    lineage: Lineage,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.share.lock();
        state.give_back(&self.lineage);
        state.grant(self.share.slots, self.share.per_lineage);
    }
}

/// A place in the queue: an abandoned wait leaves the queue, and gives back a slot it was
/// granted meanwhile.
struct Queued<'a> {
    share: &'a Arc<FairShare>,
    id: u64,
    lineage: Lineage,
    granted: Option<oneshot::Receiver<()>>,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let Some(mut granted) = self.granted.take() else {
            return;
        };
        // Grants are sent under the lock: checked under it, nothing can arrive afterwards.
        let mut state = self.share.lock();
        if granted.try_recv().is_ok() {
            state.give_back(&self.lineage);
            state.grant(self.share.slots, self.share.per_lineage);
        } else if let Some(at) = state.waiting.iter().position(|w| w.id == self.id) {
            state.waiting.remove(at);
        }
    }
}

impl FairShare {
    pub fn new() -> Arc<FairShare> {
        FairShare::with_slots(CALL_SLOTS, LINEAGE_SLOTS)
    }

    pub fn with_slots(slots: usize, per_lineage: usize) -> Arc<FairShare> {
        Arc::new(FairShare {
            slots: slots.max(1),
            per_lineage: per_lineage.clamp(1, slots.max(1)),
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a slot for `lineage`, or refuses at once when the lineage already has
    /// [`LINEAGE_WAITING`] calls waiting. Cancel-safe: dropping the future leaves the queue
    /// and gives back a slot it was granted.
    pub async fn acquire(self: &Arc<Self>, lineage: Lineage) -> Result<Slot, QueueFull> {
        let (id, receiver) = {
            let mut state = self.lock();
            if state.may_take(&lineage, self.slots, self.per_lineage) {
                state.take(&lineage);
                return Ok(Slot {
                    share: Arc::clone(self),
                    lineage,
                });
            }
            let waiting = state
                .waiting
                .iter()
                .filter(|w| w.lineage == lineage)
                .count();
            if waiting >= LINEAGE_WAITING {
                return Err(QueueFull);
            }
            let (granted, receiver) = oneshot::channel();
            let id = state.next_waiter;
            state.next_waiter += 1;
            state.waiting.push_back(Waiter {
                id,
                lineage: Arc::clone(&lineage),
                granted,
            });
            (id, receiver)
        };
        let mut queued = Queued {
            share: self,
            id,
            lineage,
            granted: Some(receiver),
        };
        let receiver = queued.granted.as_mut().expect("set above");
        // The sender lives in the queue until it is sent on or this wait leaves the queue.
        let _ = receiver.await;
        queued.granted = None;
        Ok(Slot {
            share: Arc::clone(self),
            lineage: Arc::clone(&queued.lineage),
        })
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Calls in flight now (for tests and diagnostics).
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lineage(name: &str) -> Lineage {
        Arc::from(name)
    }

    async fn soon<T>(future: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::time::timeout(Duration::from_millis(50), future)
            .await
            .ok()
    }

    #[tokio::test]
    async fn one_lineage_never_takes_more_than_its_half() {
        let share = FairShare::with_slots(4, 2);
        let a = lineage("a");
        let held = [
            share.acquire(Arc::clone(&a)).await.unwrap(),
            share.acquire(Arc::clone(&a)).await.unwrap(),
        ];
        // A third for `a` waits although two slots are free; `b` gets one at once.
        assert!(soon(share.acquire(Arc::clone(&a))).await.is_none());
        let b = soon(share.acquire(lineage("b"))).await;
        assert!(b.is_some(), "another lineage must find a free slot");
        assert_eq!(share.in_flight(), 3);
        drop(held);
        assert_eq!(share.in_flight(), 1);
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_lineage_holding_the_fewest() {
        let share = FairShare::with_slots(2, 2);
        let first = share.acquire(lineage("a")).await.unwrap();
        let _second = share.acquire(lineage("a")).await.unwrap();
        // Both slots taken: `a` queues first, then `b`.
        let again_a = tokio::spawn({
            let share = Arc::clone(&share);
            async move { share.acquire(lineage("a")).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let b = tokio::spawn({
            let share = Arc::clone(&share);
            async move { share.acquire(lineage("b")).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(first);
        let b = tokio::time::timeout(Duration::from_secs(1), b)
            .await
            .expect("b, holding none, gets the freed slot")
            .unwrap();
        assert!(!again_a.is_finished(), "a, holding one already, waits");
        drop(b);
        let _slot = tokio::time::timeout(Duration::from_secs(1), again_a)
            .await
            .expect("then a")
            .unwrap()
            .expect("a slot");
    }

    #[tokio::test]
    async fn a_lineage_queues_at_most_its_bound_of_calls() {
        let share = FairShare::with_slots(2, 1);
        let _held = share.acquire(lineage("a")).await.unwrap();
        let waiters: Vec<_> = (0..LINEAGE_WAITING)
            .map(|_| {
                let share = Arc::clone(&share);
                tokio::spawn(async move { share.acquire(lineage("a")).await.map(drop) })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(share.waiting(), LINEAGE_WAITING);
        assert!(
            share.acquire(lineage("a")).await.is_err(),
            "one more is refused"
        );
        assert!(
            share.acquire(lineage("b")).await.is_ok(),
            "another lineage is not"
        );
        for waiter in waiters {
            waiter.abort();
        }
    }

    #[tokio::test]
    async fn an_abandoned_wait_gives_its_slot_back() {
        let share = FairShare::with_slots(1, 1);
        let held = share.acquire(lineage("a")).await.unwrap();
        // Waits, then is dropped: it leaves the queue, and nothing leaks.
        assert!(soon(share.acquire(lineage("b"))).await.is_none());
        assert_eq!(share.waiting(), 0);
        drop(held);
        assert_eq!(share.in_flight(), 0);
        let _again = soon(share.acquire(lineage("c")))
            .await
            .expect("the slot is free");
        assert_eq!(share.in_flight(), 1);
    }
}
