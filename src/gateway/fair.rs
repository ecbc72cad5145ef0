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
//!
//! A lineage whose call came back too large ([`FairShare::penalise`]) keeps that call's slot
//! for [`crate::http::REFUSAL_DELAY`] more and holds at most one slot of that upstream for
//! [`OVERSIZE_PENALTY`]: an upstream made to build answers the gateway throws away (and, on
//! stdio, to push them through the pipe every other caller's answers share) does so about
//! once a second for that lineage, not as fast as it can. Answers under the limit count too
//! ([`Slot::charge`]): a lineage that takes more than [`ANSWER_BUDGET`] of answers from one
//! upstream within [`ANSWER_WINDOW`] holds one slot of it for [`OVERSIZE_PENALTY`], so its
//! big answers go through a shared stdio pipe one at a time, between everyone else's.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use tokio::sync::oneshot;

/// Calls in flight to one upstream at once.
pub const CALL_SLOTS: usize = 32;
/// Calls in flight to one upstream at once for one lineage.
pub const LINEAGE_SLOTS: usize = CALL_SLOTS / 2;
/// Calls of one lineage waiting for a slot of one upstream; more are refused at once.
pub const LINEAGE_WAITING: usize = LINEAGE_SLOTS;

/// How long a lineage holds at most one slot after a call of its came back too large.
pub const OVERSIZE_PENALTY: std::time::Duration = std::time::Duration::from_secs(10);

/// Bytes of answers one lineage may take from one upstream within [`ANSWER_WINDOW`] before it
/// holds one slot of it for [`OVERSIZE_PENALTY`].
pub const ANSWER_BUDGET: u64 = 32 << 20;
pub const ANSWER_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

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
    /// Lineages limited to one slot, and until when.
    penalised: HashMap<Lineage, Instant>,
    /// Bytes of answers per lineage since the start of its window.
    answered: HashMap<Lineage, (Instant, u64)>,
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
    /// The slots `lineage` may hold now: one while it is penalised.
    fn limit(&self, lineage: &Lineage, per_lineage: usize) -> usize {
        match self.penalised.get(lineage) {
            Some(until) if *until > Instant::now() => 1,
            _ => per_lineage,
        }
    }

    fn may_take(&self, lineage: &Lineage, slots: usize, per_lineage: usize) -> bool {
        self.total < slots
            && self.held.get(lineage).copied().unwrap_or(0) < self.limit(lineage, per_lineage)
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
                .filter(|(_, w)| {
                    self.held.get(&w.lineage).copied().unwrap_or(0)
                        < self.limit(&w.lineage, per_lineage)
                })
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

impl State {
    fn penalise(&mut self, lineage: &Lineage) {
        let now = Instant::now();
        self.penalised.retain(|_, until| *until > now);
        self.penalised
            .insert(Arc::clone(lineage), now + OVERSIZE_PENALTY);
    }
}

impl Slot {
    /// The call came back too large: its lineage is limited to one slot of this upstream for
    /// [`OVERSIZE_PENALTY`], and this slot is given back only after `held` more.
    pub fn penalise(self, held: std::time::Duration) {
        self.share.lock().penalise(&self.lineage);
        regrant_after_penalty(&self.share);
        tokio::spawn(async move {
            tokio::time::sleep(held).await;
            drop(self);
        });
    }

    /// Counts an answer of `bytes` against the lineage: past [`ANSWER_BUDGET`] within
    /// [`ANSWER_WINDOW`], it holds one slot of this upstream for [`OVERSIZE_PENALTY`].
    pub fn charge(&self, bytes: u64) {
        let mut state = self.share.lock();
        let now = Instant::now();
        if state.answered.len() > 64 {
            state
                .answered
                .retain(|_, (since, _)| now.duration_since(*since) < ANSWER_WINDOW);
        }
        let window = state
            .answered
            .entry(Arc::clone(&self.lineage))
            .or_insert((now, 0));
        if now.duration_since(window.0) >= ANSWER_WINDOW {
            *window = (now, 0);
        }
        window.1 += bytes;
        if window.1 > ANSWER_BUDGET {
            *window = (now, 0);
            state.penalise(&self.lineage);
            drop(state);
            regrant_after_penalty(&self.share);
        }
    }
}

/// When a penalty ends, the lineage's waiting calls may take the slots that are free then,
/// rather than only when one of its calls ends.
fn regrant_after_penalty(share: &Arc<FairShare>) {
    let share = Arc::clone(share);
    tokio::spawn(async move {
        tokio::time::sleep(OVERSIZE_PENALTY).await;
        share.lock().grant(share.slots, share.per_lineage);
    });
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
    async fn a_freed_slot_is_granted_once_never_past_the_upstream_s_slots() {
        let share = FairShare::with_slots(2, 2);
        let (a, b) = (lineage("a"), lineage("b"));
        let mut held = vec![
            share.acquire(Arc::clone(&a)).await.unwrap(),
            share.acquire(Arc::clone(&a)).await.unwrap(),
        ];
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let (share, b) = (Arc::clone(&share), Arc::clone(&b));
                tokio::spawn(async move { share.acquire(b).await.map(drop_later) })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        held.pop();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let started = waiting.iter().filter(|w| w.is_finished()).count();
        assert_eq!(started, 1, "one slot freed, one call started");
        assert_eq!(share.lock().total, 2);
        for w in waiting {
            w.abort();
        }
    }

    /// Keeps a granted slot for the rest of the test.
    fn drop_later(slot: Slot) {
        std::mem::forget(slot);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lineage_s_waiting_calls_start_when_its_penalty_ends() {
        let share = FairShare::with_slots(8, 4);
        let a = lineage("a");
        let first = share.acquire(Arc::clone(&a)).await.unwrap();
        first.charge(ANSWER_BUDGET + 1);
        // Penalised: one slot at a time; the second call waits although slots are free.
        let second = tokio::spawn({
            let share = Arc::clone(&share);
            let a = Arc::clone(&a);
            async move { share.acquire(a).await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!second.is_finished(), "waits while penalised");
        // The first call still runs; the penalty ends: the waiting one starts.
        tokio::time::sleep(OVERSIZE_PENALTY).await;
        assert!(
            soon(second).await.is_some(),
            "granted when the penalty ended, not when the first call did"
        );
        drop(first);
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

    #[tokio::test(start_paused = true)]
    async fn a_lineage_whose_answer_was_too_large_holds_one_slot_for_a_while() {
        let share = FairShare::with_slots(8, 4);
        let (a, b) = (lineage("a"), lineage("b"));
        let first = share.acquire(Arc::clone(&a)).await.unwrap();
        first.penalise(Duration::from_secs(1));
        // The penalised slot is still held: `a` has its one, and waits for more.
        tokio::task::yield_now().await;
        assert_eq!(share.in_flight(), 1);
        assert!(soon(share.acquire(Arc::clone(&a))).await.is_none());
        let _b = soon(share.acquire(Arc::clone(&b)))
            .await
            .expect("b is not penalised");
        // A second after the answer its slot comes back; then one call at a time until the
        // penalty ends, after which `a` has its whole share again.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        assert_eq!(share.in_flight(), 1);
        let one = soon(share.acquire(Arc::clone(&a))).await.expect("one slot");
        assert!(soon(share.acquire(Arc::clone(&a))).await.is_none());
        drop(one);
        tokio::time::sleep(OVERSIZE_PENALTY).await;
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(
                soon(share.acquire(Arc::clone(&a)))
                    .await
                    .expect("the whole share"),
            );
        }
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

    #[tokio::test(start_paused = true)]
    async fn a_lineage_taking_many_big_answers_holds_one_slot_for_a_while() {
        let share = FairShare::with_slots(8, 4);
        let (a, b) = (lineage("a"), lineage("b"));
        // Answers within the budget, spread over more than a window, cost nothing.
        for _ in 0..3 {
            let slot = share.acquire(Arc::clone(&a)).await.unwrap();
            slot.charge(ANSWER_BUDGET / 2);
            drop(slot);
            tokio::time::advance(ANSWER_WINDOW).await;
        }
        let two = (
            share.acquire(Arc::clone(&a)).await.unwrap(),
            share.acquire(Arc::clone(&a)).await.unwrap(),
        );
        drop(two);
        // Past the budget within one window: one slot at a time, for the penalty.
        let first = share.acquire(Arc::clone(&a)).await.unwrap();
        first.charge(ANSWER_BUDGET / 2);
        first.charge(ANSWER_BUDGET / 2 + 1);
        assert!(
            soon(share.acquire(Arc::clone(&a))).await.is_none(),
            "a second slot waits"
        );
        assert!(
            soon(share.acquire(b)).await.is_some(),
            "another lineage is not limited"
        );
        drop(first);
        tokio::time::advance(OVERSIZE_PENALTY).await;
        let one = share.acquire(Arc::clone(&a)).await.unwrap();
        assert!(
            soon(share.acquire(Arc::clone(&a))).await.is_some(),
            "the penalty ends"
        );
        drop(one);
    }
}
