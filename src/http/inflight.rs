//! The bound on requests in flight per token lineage (SPEC §16).
//!
//! A connection with a request in flight is never closed to make room (`listener`), and this
//! server speaks HTTP/1.1 only, so every request in flight holds one connection. A lineage (a
//! root token and everything under it: minting children does not multiply the share) may
//! therefore have at most `--max-inflight-per-token` requests in flight, and never more than
//! half the connection slots; past that its requests get 429 with `Retry-After`. Slow calls
//! by one token then leave the other half of the slots to everyone else.
//!
//! A [`Ticket`] is taken once the request is authenticated, before its body is read, and
//! given back when its response body ends (a stream holds its ticket while it is open).
//!
//! The bound keeps a lineage from holding the connections; [`Ticket::turn`] keeps it from
//! holding the CPU. The runtime runs ready tasks in turn, and a connection whose client
//! pipelines requests serves many of them each time its task runs: one token flooding cheap
//! requests over a few dozen connections put every other token's request behind hundreds of
//! its own (another token's p99 11–26× its unloaded value on two cores). So a lineage with
//! more than [`Turns`] requests in flight starts each further request only with one of its
//! [`Turns`] turns, and after taking it goes to the back of the run queue once; the turn is
//! given back as soon as the request first waits or ends. At most that many of its requests
//! are then ready to run at any moment, whatever its number of connections, and everyone
//! else's requests wait behind at most those. A lineage with no more than that in flight
//! (every ordinary client) never waits for a turn.
//!
//! While another lineage has had a request in flight within the last [`CONTENDED_FOR`], a
//! busy lineage's request takes [`Turns`]' worth of several turns, so that lineage runs only
//! half as many requests at once as there are worker threads (at least one): the rest of the
//! cores stay free for the others, whose requests then start without waiting behind the flood
//! (another token's p99 under a pipelined flood on two cores: see BENCHMARKS.md, "Pipelined
//! flood"). Alone, a busy lineage keeps every core.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Context;
use std::time::{Duration, Instant};

use axum::body::Body;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::secret::TokenId;

/// How long a request refused for its lineage's bound waits before its 429. A lineage at its
/// bound that retries at once (an attacker does) would otherwise make the server answer a
/// new connection and a new 429 as fast as it can send them, taking CPU from every other
/// token; the wait holds no ticket and no shield, so the connection can still be closed to
/// make room, and a client that honours `Retry-After: 1` loses nothing.
pub const REFUSAL_DELAY: Duration = Duration::from_secs(1);

/// How long after two lineages last had requests in flight together a busy lineage still
/// leaves cores to the others.
pub const CONTENDED_FOR: Duration = Duration::from_secs(1);

pub struct InFlight {
    per_lineage: usize,
    /// Requests of one lineage that run at once when it has more in flight.
    turns: usize,
    /// Turns one request of a busy lineage takes while others are active.
    contended_weight: u32,
    held: Mutex<Held>,
    /// When a request last came in right after another lineage's (within [`CONTENDED_FOR`]),
    /// in milliseconds since `epoch` (0: never).
    together_at: AtomicU64,
    epoch: Instant,
}

#[derive(Default)]
struct Held {
    lineages: HashMap<TokenId, Lineage>,
    /// For each token with descendants in flight: how many of their requests are.
    below: HashMap<TokenId, usize>,
    /// The lineage whose request came in last, and when (ms since `epoch`).
    last: Option<(TokenId, u64)>,
}

/// One lineage's requests in flight, and its turns.
struct Lineage {
    count: usize,
    turns: Arc<Semaphore>,
}

/// How many requests of one lineage may be ready to run at once when it has more in flight:
/// twice the worker threads, at least 4.
pub fn turns_per_lineage() -> usize {
    (2 * cores()).max(4)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// How many turns one request of a busy lineage takes while another lineage is active, so
/// that it runs at most half the worker threads' worth of requests at once (at least one).
fn contended_weight(turns: usize) -> u32 {
    let at_once = (cores() / 2).max(1);
    u32::try_from(turns.div_ceil(at_once)).unwrap_or(u32::MAX)
}

impl InFlight {
    /// At most `per_token` requests per lineage, and at most half of `max_connections`.
    pub fn new(per_token: usize, max_connections: usize) -> InFlight {
        let turns = turns_per_lineage();
        InFlight {
            per_lineage: per_token.min(max_connections / 2).max(1),
            turns,
            contended_weight: contended_weight(turns),
            held: Mutex::new(Held::default()),
            together_at: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    pub fn per_lineage(&self) -> usize {
        self.per_lineage
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the descendants of the `i`th token of a chain (0: the root) may hold together:
    /// half of what that token's own subtree may, so a token always keeps half its share
    /// whatever its descendants do (the root: half the lineage's bound).
    fn below_bound(&self, i: usize) -> usize {
        let shift = u32::try_from(i + 1).unwrap_or(u32::MAX);
        self.per_lineage.checked_shr(shift).unwrap_or(0).max(1)
    }

    /// A ticket for one more request of the token whose `chain` this is (root first, the
    /// token last), or `None` when its lineage has its maximum in flight, or the descendants
    /// of one of its ancestors have theirs.
    pub fn enter(self: &Arc<Self>, mut chain: Vec<TokenId>) -> Option<Ticket> {
        let token = chain.pop()?;
        let lineage = chain.first().cloned().unwrap_or_else(|| token.clone());
        let mut held = self.lock();
        let held = &mut *held;
        let entry = held
            .lineages
            .entry(lineage.clone())
            .or_insert_with(|| Lineage {
                count: 0,
                turns: Arc::new(Semaphore::new(self.turns)),
            });
        if entry.count >= self.per_lineage {
            return None;
        }
        for (i, ancestor) in chain.iter().enumerate() {
            if held.below.get(ancestor).copied().unwrap_or(0) >= self.below_bound(i) {
                if entry.count == 0 {
                    held.lineages.remove(&lineage);
                }
                return None;
            }
        }
        entry.count += 1;
        for ancestor in &chain {
            *held.below.entry(ancestor.clone()).or_insert(0) += 1;
        }
        let busy = entry.count > self.turns;
        let turns = busy.then(|| Arc::clone(&entry.turns));
        // Two lineages take turns at coming in: each leaves cores to the other.
        let now = self.since_epoch();
        if let Some((last, at)) = &held.last
            && *last != lineage
            && now.saturating_sub(*at) < millis(CONTENDED_FOR)
        {
            self.together_at.store(now, Ordering::Relaxed);
        }
        match &mut held.last {
            Some((last, at)) if *last == lineage => *at = now,
            last => *last = Some((lineage.clone(), now)),
        }
        // Past its turns, the request waits for one of them; for several while others are
        // active.
        let together = self.together_at.load(Ordering::Relaxed);
        let contended = together != 0 && now.saturating_sub(together) < millis(CONTENDED_FOR);
        Some(Ticket {
            table: Arc::clone(self),
            lineage,
            ancestors: chain,
            turns,
            weight: if contended { self.contended_weight } else { 1 },
        })
    }

    /// Milliseconds since this table was made, at least 1.
    fn since_epoch(&self) -> u64 {
        millis(self.epoch.elapsed()).max(1)
    }

    #[cfg(test)]
    fn held(&self, lineage: &TokenId) -> usize {
        self.lock().lineages.get(lineage).map_or(0, |l| l.count)
    }
}

/// One request in flight; counted until dropped.
pub struct Ticket {
    table: Arc<InFlight>,
    lineage: TokenId,
    /// The strict ancestors of its token, root first: their `below` counts include it.
    ancestors: Vec<TokenId>,
    /// Its lineage's turns, when it had more than that many requests in flight as this one
    /// came in.
    turns: Option<Arc<Semaphore>>,
    /// How many of those turns it takes.
    weight: u32,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Ticket {
    /// Whether [`Ticket::turn`] may wait: its lineage was busy when it came in.
    pub fn may_wait_for_turn(&self) -> bool {
        self.turns.is_some()
    }

    /// Waits for a turn of its lineage when the lineage is busy (see the module's
    /// documentation), then once more behind every task ready to run; `None` at once
    /// otherwise. Run the request with [`turned`].
    pub async fn turn(&self) -> Option<OwnedSemaphorePermit> {
        let turns = Arc::clone(self.turns.as_ref()?);
        let permit = turns.acquire_many_owned(self.weight).await.ok()?;
        tokio::task::yield_now().await;
        Some(permit)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut held = self.table.lock();
        if let Some(entry) = held.lineages.get_mut(&self.lineage) {
            entry.count -= 1;
            if entry.count == 0 {
                held.lineages.remove(&self.lineage);
            }
        }
        for ancestor in &self.ancestors {
            if let Some(count) = held.below.get_mut(ancestor) {
                *count -= 1;
                if *count == 0 {
                    held.below.remove(ancestor);
                }
            }
        }
    }
}

/// Runs a request's `future`, holding its lineage's `turn` (when it waited for one) until the
/// future first waits or ends.
pub async fn turned<F: Future>(future: F, turn: Option<OwnedSemaphorePermit>) -> F::Output {
    let Some(turn) = turn else {
        return future.await;
    };
    let mut future = std::pin::pin!(future);
    let mut turn = Some(turn);
    std::future::poll_fn(move |cx: &mut Context<'_>| {
        let poll = future.as_mut().poll(cx);
        drop(turn.take());
        poll
    })
    .await
}

/// `body`, holding its request's ticket (and the shield of its connection) until it ends or
/// is dropped.
pub(crate) fn hold(body: Body, ticket: (Ticket, Option<super::listener::Raised>)) -> Body {
    Body::new(super::listener::HoldingBody::new(body, ticket))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn id(n: u8) -> TokenId {
        TokenId::parse(&format!("tok_{n:0>24}")).unwrap()
    }

    #[test]
    fn a_lineage_holds_at_most_its_bound_and_half_the_connections() {
        let table = Arc::new(InFlight::new(64, 10));
        assert_eq!(table.per_lineage(), 5);
        let tickets: Vec<Ticket> = (0..5).map(|_| table.enter(vec![id(0)]).unwrap()).collect();
        assert!(table.enter(vec![id(0)]).is_none(), "the sixth waits");
        assert!(
            table.enter(vec![id(1)]).is_some(),
            "another lineage is served"
        );
        drop(tickets);
        assert_eq!(table.held(&id(0)), 0);
        assert!(table.enter(vec![id(0)]).is_some());
        assert_eq!(Arc::new(InFlight::new(3, 1024)).per_lineage(), 3);
    }

    #[test]
    fn a_token_s_descendants_hold_at_most_half_its_share() {
        let table = Arc::new(InFlight::new(64, 1024));
        let (root, agent, sub) = (id(0), id(1), id(2));
        // A child of the root: its subtree holds at most half the lineage's 64.
        let agents: Vec<Ticket> = (0..32)
            .map(|_| table.enter(vec![root.clone(), agent.clone()]).unwrap())
            .collect();
        assert!(table.enter(vec![root.clone(), agent.clone()]).is_none());
        assert!(
            table.enter(vec![root.clone(), id(3)]).is_none(),
            "a sibling shares the root's descendants' half"
        );
        let roots: Vec<Ticket> = (0..32)
            .map(|_| table.enter(vec![root.clone()]).unwrap())
            .collect();
        assert!(
            table.enter(vec![root.clone()]).is_none(),
            "the lineage's 64"
        );
        drop((agents, roots));
        // A grandchild's subtree: half of its parent's half, so the child keeps 16.
        let subs: Vec<Ticket> = (0..16)
            .map(|_| {
                table
                    .enter(vec![root.clone(), agent.clone(), sub.clone()])
                    .unwrap()
            })
            .collect();
        assert!(
            table
                .enter(vec![root.clone(), agent.clone(), sub.clone()])
                .is_none()
        );
        let own: Vec<Ticket> = (0..16)
            .map(|_| table.enter(vec![root.clone(), agent.clone()]).unwrap())
            .collect();
        assert!(table.enter(vec![root.clone(), agent.clone()]).is_none());
        drop((subs, own));
        assert!(table.lock().below.is_empty(), "every count given back");
        assert_eq!(table.held(&root), 0);
        // A chain deeper than the bound has bits: one request each, no overflow.
        let deep: Vec<TokenId> = (0..100).map(|n| id(n % 10)).collect();
        assert!(table.enter(deep).is_some());
    }

    #[tokio::test]
    async fn a_busy_lineage_runs_its_further_requests_a_few_at_a_time() {
        let table = Arc::new(InFlight::new(64, 1024));
        let turns = turns_per_lineage();
        let quiet: Vec<Ticket> = (0..turns)
            .map(|_| table.enter(vec![id(0)]).unwrap())
            .collect();
        for ticket in &quiet {
            assert!(ticket.turn().await.is_none(), "within its turns: no wait");
        }
        // Past them, each request takes a turn; with every turn taken, the next one waits.
        let busy: Vec<Ticket> = (0..turns + 1)
            .map(|_| table.enter(vec![id(0)]).unwrap())
            .collect();
        let mut held = Vec::new();
        for ticket in &busy[..turns] {
            held.push(ticket.turn().await.expect("a turn"));
        }
        let waiting = tokio::time::timeout(Duration::from_millis(50), busy[turns].turn());
        assert!(waiting.await.is_err(), "no turn left");
        // Another lineage never waits for this one's turns.
        let other = table.enter(vec![id(1)]).unwrap();
        assert!(other.turn().await.is_none());
        // A turn given back (its request waited or ended) lets the next one start.
        held.pop();
        let next = tokio::time::timeout(Duration::from_millis(500), busy[turns].turn());
        assert!(next.await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_busy_lineage_leaves_cores_to_another_active_lineage() {
        let table = Arc::new(InFlight::new(64, 1024));
        let turns = turns_per_lineage();
        let at_once = (cores() / 2).max(1);
        let _quiet: Vec<Ticket> = (0..turns)
            .map(|_| table.enter(vec![id(0)]).unwrap())
            .collect();
        // Another lineage has a request in flight: lineage 0 runs `at_once` requests at a time.
        let _other = table.enter(vec![id(1)]).unwrap();
        let busy: Vec<Ticket> = (0..at_once + 1)
            .map(|_| table.enter(vec![id(0)]).unwrap())
            .collect();
        let mut held = Vec::new();
        for ticket in &busy[..at_once] {
            held.push(ticket.turn().await.expect("a turn"));
        }
        let waiting = tokio::time::timeout(Duration::from_millis(50), busy[at_once].turn());
        assert!(waiting.await.is_err(), "half the cores' worth, no more");
        held.pop();
        let next = tokio::time::timeout(Duration::from_millis(500), busy[at_once].turn());
        assert!(next.await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_turn_is_held_only_until_the_request_first_waits() {
        let table = Arc::new(InFlight::new(64, 1024));
        let turns = turns_per_lineage();
        let _quiet: Vec<Ticket> = (0..turns)
            .map(|_| table.enter(vec![id(0)]).unwrap())
            .collect();
        let busy: Vec<Ticket> = (0..turns + 1)
            .map(|_| table.enter(vec![id(0)]).unwrap())
            .collect();
        // Every turn goes to a request that then waits for something else (an upstream).
        let (release, wait) = tokio::sync::watch::channel(false);
        let mut running = Vec::new();
        for ticket in &busy[..turns] {
            let turn = ticket.turn().await;
            let mut wait = wait.clone();
            running.push(tokio::spawn(turned(
                async move { wait.wait_for(|go| *go).await.map(|_| ()) },
                turn,
            )));
        }
        // They all wait: their turns are free again.
        let next = tokio::time::timeout(Duration::from_millis(500), busy[turns].turn());
        assert!(next.await.unwrap().is_some());
        release.send(true).unwrap();
        for task in running {
            task.await.unwrap().unwrap();
        }
    }
}
