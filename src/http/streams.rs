//! Bounds on the standalone `GET /mcp` streams tokens hold open.
//!
//! A stream keeps its connection busy for as long as it lives, and busy connections are never
//! closed to make room for new ones: without a bound, one token's sessions (rmcp allows each
//! many streams) could take every connection slot and lock every other client out. So:
//!
//! - each session has one stream: a new `GET` first closes the session's open stream and waits
//!   for it to end ([`Streams::close_session`]), so that rmcp makes the new one the session's
//!   stream (while the old one lives, rmcp gives a new one a stream nothing is ever sent on);
//! - each token holds at most [`PER_TOKEN`]: opening one more closes its oldest;
//! - all together hold at most half the connections the server allows. When they do, a new
//!   stream closes the oldest stream of the lineage (a root token and its descendants) holding
//!   the most, if that lineage holds more than the opener's plus one; else the opener's own
//!   lineage gives up its oldest, as the session table does, so that minting children cannot
//!   close other lineages' streams.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::secret::TokenId;

/// Most open streams one token holds; opening one more closes its oldest.
pub(super) const PER_TOKEN: usize = 16;
/// How long a new stream of a session waits for the session's previous stream to end.
const REPLACE_WAIT: Duration = Duration::from_secs(1);

struct Open {
    id: u64,
    token: TokenId,
    lineage: TokenId,
    session: Arc<str>,
    /// Fired to close the stream.
    stop: CancellationToken,
    /// Fired once the stream has ended (its slot dropped).
    ended: CancellationToken,
}

pub(super) struct Streams {
    next: AtomicU64,
    /// Most open streams in all.
    limit: usize,
    /// Oldest first.
    open: Mutex<VecDeque<Open>>,
}

/// A stream's place: its `stop` fires when the stream is to close; dropping it (the stream
/// ended) frees the place.
pub(super) struct Slot {
    streams: Arc<Streams>,
    id: u64,
    pub stop: CancellationToken,
    ended: CancellationToken,
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

    fn lock(&self) -> MutexGuard<'_, VecDeque<Open>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many streams are open now (the metrics).
    pub(super) fn count(&self) -> usize {
        self.lock().len()
    }

    /// Closes the streams `session` has open and waits (at most [`REPLACE_WAIT`]) until they
    /// have ended: called before a new stream of the session is asked of rmcp.
    pub(super) async fn close_session(&self, session: &str) {
        let mut ended = Vec::new();
        self.lock().retain(|o| {
            let same = &*o.session == session;
            if same {
                o.stop.cancel();
                ended.push(o.ended.clone());
            }
            !same
        });
        let all = async {
            for end in ended {
                end.cancelled().await;
            }
        };
        let _ = tokio::time::timeout(REPLACE_WAIT, all).await;
    }

    /// Takes a place for a new stream of `token` (of `lineage`) in `session`, closing what the
    /// bounds require.
    pub(super) fn open(
        self: &Arc<Self>,
        token: &TokenId,
        lineage: &TokenId,
        session: &str,
    ) -> Slot {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (stop, ended) = (CancellationToken::new(), CancellationToken::new());
        let mut open = self.lock();
        // Two GETs of one session that raced past `close_session`: the older goes.
        close_first(&mut open, |o| &*o.session == session);
        while open.iter().filter(|o| &o.token == token).count() >= PER_TOKEN {
            close_first(&mut open, |o| &o.token == token);
        }
        if open.len() >= self.limit {
            let mut held: HashMap<&TokenId, usize> = HashMap::new();
            for o in open.iter() {
                *held.entry(&o.lineage).or_default() += 1;
            }
            let own = held.get(lineage).copied().unwrap_or(0);
            let biggest = held.into_iter().max_by_key(|&(_, n)| n);
            let giver = match biggest {
                Some((big, n)) if n > own + 1 => Some(big.clone()),
                _ if own > 0 => Some(lineage.clone()),
                // Every lineage holds one stream at most and the opener's none: the oldest
                // stream goes.
                _ => None,
            };
            match giver {
                Some(giver) => close_first(&mut open, |o| o.lineage == giver),
                None => close_first(&mut open, |_| true),
            }
        }
        open.push_back(Open {
            id,
            token: token.clone(),
            lineage: lineage.clone(),
            session: Arc::from(session),
            stop: stop.clone(),
            ended: ended.clone(),
        });
        Slot {
            streams: Arc::clone(self),
            id,
            stop,
            ended,
        }
    }

    #[cfg(test)]
    fn held(&self, token: &TokenId) -> usize {
        self.lock().iter().filter(|o| &o.token == token).count()
    }
}

/// Closes the oldest open stream that `which` picks, and forgets it.
fn close_first(open: &mut VecDeque<Open>, which: impl Fn(&Open) -> bool) {
    if let Some(at) = open.iter().position(which)
        && let Some(closed) = open.remove(at)
    {
        closed.stop.cancel();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.streams.lock().retain(|o| o.id != self.id);
        self.ended.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_stream_of_a_session_replaces_its_old_one_once_it_has_ended() {
        let streams = Arc::new(Streams::new(1024));
        let token = TokenId::generate();
        let first = streams.open(&token, &token, "s1");
        let other = streams.open(&token, &token, "s2");
        let stop = first.stop.clone();
        // The old stream ends when told to; `close_session` waits for that.
        let ending = tokio::spawn(async move {
            stop.cancelled().await;
            drop(first);
        });
        streams.close_session("s1").await;
        ending.await.unwrap();
        let second = streams.open(&token, &token, "s1");
        assert!(!other.stop.is_cancelled() && !second.stop.is_cancelled());
        assert_eq!(streams.held(&token), 2);
        // Two at once (past `close_session`): the older goes.
        let third = streams.open(&token, &token, "s1");
        assert!(second.stop.is_cancelled() && !third.stop.is_cancelled());
    }

    #[test]
    fn a_token_beyond_its_bound_loses_its_oldest_stream_and_others_keep_theirs() {
        let streams = Arc::new(Streams::new(1024));
        let (flooder, other) = (TokenId::generate(), TokenId::generate());
        let bystander = streams.open(&other, &other, "b");
        let slots: Vec<Slot> = (0..PER_TOKEN + 3)
            .map(|i| streams.open(&flooder, &flooder, &format!("s{i}")))
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
    fn streams_hold_at_most_half_the_connections_and_a_lineage_minting_children_gives_way() {
        let streams = Arc::new(Streams::new(40));
        let root = TokenId::generate();
        let minted: Vec<TokenId> = (0..4).map(|_| TokenId::generate()).collect();
        // One lineage's four tokens fill the 20 places the streams may take.
        let flood: Vec<Slot> = (0..20)
            .map(|i| streams.open(&minted[i % 4], &root, &format!("s{i}")))
            .collect();
        assert!(flood.iter().all(|s| !s.stop.is_cancelled()));
        // Another lineage still gets streams: the flooding lineage's oldest close.
        let newcomer = TokenId::generate();
        let mine: Vec<Slot> = (0..3)
            .map(|i| streams.open(&newcomer, &newcomer, &format!("n{i}")))
            .collect();
        assert!(mine.iter().all(|s| !s.stop.is_cancelled()));
        assert!(flood[..3].iter().all(|s| s.stop.is_cancelled()));
        // The flooding lineage's new streams now cost only its own.
        let more = streams.open(&minted[0], &root, "again");
        assert!(!more.stop.is_cancelled());
        assert!(mine.iter().all(|s| !s.stop.is_cancelled()));
        assert_eq!(flood.iter().filter(|s| s.stop.is_cancelled()).count(), 4);
        assert_eq!(streams.lock().len(), 20);
    }
}
