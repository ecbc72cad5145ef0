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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;

use crate::secret::TokenId;

/// How long a request refused for its lineage's bound waits before its 429. A lineage at its
/// bound that retries at once (an attacker does) would otherwise make the server answer a
/// new connection and a new 429 as fast as it can send them, taking CPU from every other
/// token; the wait holds no ticket and no shield, so the connection can still be closed to
/// make room, and a client that honours `Retry-After: 1` loses nothing.
pub const REFUSAL_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

pub struct InFlight {
    per_lineage: usize,
    held: Mutex<HashMap<TokenId, usize>>,
}

impl InFlight {
    /// At most `per_token` requests per lineage, and at most half of `max_connections`.
    pub fn new(per_token: usize, max_connections: usize) -> InFlight {
        InFlight {
            per_lineage: per_token.min(max_connections / 2).max(1),
            held: Mutex::new(HashMap::new()),
        }
    }

    pub fn per_lineage(&self) -> usize {
        self.per_lineage
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenId, usize>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A ticket for one more request of `lineage`, or `None` when it has its maximum in flight.
    pub fn enter(self: &Arc<Self>, lineage: TokenId) -> Option<Ticket> {
        let mut held = self.lock();
        let count = held.entry(lineage.clone()).or_default();
        if *count >= self.per_lineage {
            return None;
        }
        *count += 1;
        Some(Ticket {
            table: Arc::clone(self),
            lineage,
        })
    }

    #[cfg(test)]
    fn held(&self, lineage: &TokenId) -> usize {
        self.lock().get(lineage).copied().unwrap_or(0)
    }
}

/// One request in flight; counted until dropped.
pub struct Ticket {
    table: Arc<InFlight>,
    lineage: TokenId,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut held = self.table.lock();
        if let Some(count) = held.get_mut(&self.lineage) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.lineage);
            }
        }
    }
}

/// `body`, holding its request's ticket (and the shield of its connection) until it ends or
/// is dropped.
pub(crate) fn hold(body: Body, ticket: (Ticket, Option<super::listener::Raised>)) -> Body {
    Body::new(super::listener::HoldingBody::new(body, ticket))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> TokenId {
        TokenId::parse(&format!("tok_{n:0>24}")).unwrap()
    }

    #[test]
    fn a_lineage_holds_at_most_its_bound_and_half_the_connections() {
        let table = Arc::new(InFlight::new(64, 10));
        assert_eq!(table.per_lineage(), 5);
        let tickets: Vec<Ticket> = (0..5).map(|_| table.enter(id(0)).unwrap()).collect();
        assert!(table.enter(id(0)).is_none(), "the sixth waits");
        assert!(table.enter(id(1)).is_some(), "another lineage is served");
        drop(tickets);
        assert_eq!(table.held(&id(0)), 0);
        assert!(table.enter(id(0)).is_some());
        assert_eq!(Arc::new(InFlight::new(3, 1024)).per_lineage(), 3);
    }
}
