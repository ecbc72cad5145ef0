//! Bounds on the standalone `GET /mcp` streams a token holds open.
//!
//! A stream keeps its connection busy for as long as it lives, and busy connections are never
//! closed to make room for new ones: without a bound, one token's sessions (rmcp allows each
//! many streams) could take every connection slot and lock every other client out. So each
//! session has at most one stream (a new one replaces the old, as a client reconnecting its
//! stream expects), each token at most [`PER_TOKEN`] (opening one more closes its oldest), and
//! all tokens together at most half the connections the server allows: when they hold that
//! many, a new stream closes the oldest stream of the token holding the most, so tokens minted
//! in numbers cannot take every connection either.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

use crate::secret::TokenId;

/// Most open streams one token holds; opening one more closes its oldest.
pub(super) const PER_TOKEN: usize = 16;

struct Open {
    id: u64,
    session: Option<Arc<str>>,
    stop: CancellationToken,
}

pub(super) struct Streams {
    next: AtomicU64,
    /// Most open streams in all.
    limit: usize,
    open: Mutex<HashMap<TokenId, VecDeque<Open>>>,
}

/// A stream's place: its `stop` fires when a newer stream takes the place; dropping it (the
/// stream ended) frees the place.
pub(super) struct Slot {
    streams: Arc<Streams>,
    token: TokenId,
    id: u64,
    pub stop: CancellationToken,
}

impl Streams {
    /// Streams for a server that keeps at most `max_connections` connections open.
    pub(super) fn new(max_connections: usize) -> Streams {
        Streams {
            next: AtomicU64::new(0),
            limit: (max_connections / 2).max(1),
            open: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TokenId, VecDeque<Open>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a new stream of `token` in `session`, closing the session's previous
    /// stream and, beyond [`PER_TOKEN`], the token's oldest.
    pub(super) fn open(self: &Arc<Self>, token: &TokenId, session: Option<&str>) -> Slot {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let stop = CancellationToken::new();
        let mut open = self.lock();
        let held = open.entry(token.clone()).or_default();
        if let Some(session) = session {
            held.retain(|o| {
                let same = o.session.as_deref() == Some(session);
                if same {
                    o.stop.cancel();
                }
                !same
            });
        }
        while held.len() >= PER_TOKEN {
            if let Some(oldest) = held.pop_front() {
                oldest.stop.cancel();
            }
        }
        if open.values().map(VecDeque::len).sum::<usize>() >= self.limit {
            // The biggest holder (this token included) gives up its oldest stream.
            let oldest = open
                .values_mut()
                .max_by_key(|held| held.len())
                .and_then(VecDeque::pop_front);
            if let Some(oldest) = oldest {
                oldest.stop.cancel();
            }
        }
        open.entry(token.clone()).or_default().push_back(Open {
            id,
            session: session.map(Arc::from),
            stop: stop.clone(),
        });
        Slot {
            streams: Arc::clone(self),
            token: token.clone(),
            id,
            stop,
        }
    }

    #[cfg(test)]
    fn total(&self) -> usize {
        self.lock().values().map(VecDeque::len).sum()
    }

    #[cfg(test)]
    fn held(&self, token: &TokenId) -> usize {
        self.lock().get(token).map_or(0, VecDeque::len)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.streams.lock();
        if let Some(held) = open.get_mut(&self.token) {
            held.retain(|o| o.id != self.id);
            if held.is_empty() {
                open.remove(&self.token);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_stream_of_a_session_replaces_its_old_one() {
        let streams = Arc::new(Streams::new(1024));
        let token = TokenId::generate();
        let first = streams.open(&token, Some("s1"));
        let other = streams.open(&token, Some("s2"));
        let second = streams.open(&token, Some("s1"));
        assert!(first.stop.is_cancelled());
        assert!(!other.stop.is_cancelled() && !second.stop.is_cancelled());
        drop(first);
        assert_eq!(streams.held(&token), 2);
    }

    #[test]
    fn a_token_beyond_its_bound_loses_its_oldest_stream_and_others_keep_theirs() {
        let streams = Arc::new(Streams::new(1024));
        let (flooder, other) = (TokenId::generate(), TokenId::generate());
        let bystander = streams.open(&other, Some("b"));
        let slots: Vec<Slot> = (0..PER_TOKEN + 3)
            .map(|i| streams.open(&flooder, Some(&format!("s{i}"))))
            .collect();
        let closed = slots.iter().filter(|s| s.stop.is_cancelled()).count();
        assert_eq!(closed, 3);
        assert!(slots[..3].iter().all(|s| s.stop.is_cancelled()));
        assert_eq!(streams.held(&flooder), PER_TOKEN);
        assert!(!bystander.stop.is_cancelled());
        drop(slots);
        assert_eq!(streams.held(&flooder), 0);
        assert_eq!(streams.held(&other), 1);
    }

    #[test]
    fn tokens_together_hold_at_most_half_the_connections_and_the_biggest_holder_gives_way() {
        let streams = Arc::new(Streams::new(40));
        let minted: Vec<TokenId> = (0..4).map(|_| TokenId::generate()).collect();
        // Four tokens of one flooder fill the 20 places the streams may take.
        let flood: Vec<Slot> = (0..20)
            .map(|i| streams.open(&minted[i % 4], Some(&format!("s{i}"))))
            .collect();
        assert!(flood.iter().all(|s| !s.stop.is_cancelled()));
        assert_eq!(streams.total(), 20);
        // A newcomer still gets a stream: one of the biggest holders' oldest closes.
        let newcomer = TokenId::generate();
        let slot = streams.open(&newcomer, Some("n"));
        assert!(!slot.stop.is_cancelled());
        assert_eq!(flood.iter().filter(|s| s.stop.is_cancelled()).count(), 1);
        assert_eq!(streams.total(), 20);
        drop(flood);
        assert_eq!(streams.total(), 1);
        assert_eq!(streams.held(&newcomer), 1);
    }
}
