//! Bounds on the standalone `GET /mcp` streams a token holds open.
//!
//! A stream keeps its connection busy for as long as it lives, and busy connections are never
//! closed to make room for new ones: without a bound, one token's sessions (rmcp allows each
//! many streams) could take every connection slot and lock every other client out. So each
//! session has at most one stream (a new one replaces the old, as a client reconnecting its
//! stream expects), and each token at most [`PER_TOKEN`] (opening one more closes its oldest).

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

#[derive(Default)]
pub(super) struct Streams {
    next: AtomicU64,
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
        held.push_back(Open {
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
        let streams = Arc::new(Streams::default());
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
        let streams = Arc::new(Streams::default());
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
}
