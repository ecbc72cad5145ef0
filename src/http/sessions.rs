//! Which token opened each MCP session, and how many sessions each token may hold.
//!
//! A session belongs to the token that opened it: another token presenting its id is refused.
//! Sessions cost memory until they close, and opening one needs no tool permission, so they are
//! bounded: each token keeps at most `per_token` live sessions (opening one more closes that
//! token's least recently used), and the server keeps at most `total`. When the server is full,
//! a lineage (a root token and everything under it) that holds fewer sessions than the biggest
//! holder takes the biggest holder's least recently used session; otherwise the new session is
//! refused with 503. So minting many children cannot lock other lineages out. rmcp closes
//! sessions idle for `SessionConfig::keep_alive`; the table forgets those lazily, when it needs
//! room.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;

use crate::secret::TokenId;

#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    pub per_token: usize,
    pub total: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            per_token: 64,
            total: 10_000,
        }
    }
}

struct Entry {
    token: TokenId,
    lineage: TokenId,
    last_used: Instant,
}

#[derive(Default)]
struct Tables {
    by_session: HashMap<Arc<str>, Entry>,
    by_token: HashMap<TokenId, Vec<Arc<str>>>,
}

impl Tables {
    fn forget(&mut self, session: &str) -> Option<Entry> {
        let entry = self.by_session.remove(session)?;
        if let Some(list) = self.by_token.get_mut(&entry.token) {
            list.retain(|s| &**s != session);
            if list.is_empty() {
                self.by_token.remove(&entry.token);
            }
        }
        Some(entry)
    }
}

/// What the guard should do with a request that names a session.
pub enum SessionCheck {
    /// The session belongs to this token (its use is recorded).
    Owned,
    /// Another token (this one) opened it.
    Foreign(TokenId),
    /// No live session has this id.
    Unknown,
}

pub struct Sessions {
    limits: SessionLimits,
    manager: Arc<LocalSessionManager>,
    tables: Mutex<Tables>,
}

impl Sessions {
    pub fn new(manager: Arc<LocalSessionManager>, limits: SessionLimits) -> Sessions {
        Sessions {
            limits,
            manager,
            tables: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn check(&self, session: &str, token: &TokenId) -> SessionCheck {
        match self.lock().by_session.get_mut(session) {
            Some(entry) if entry.token == *token => {
                entry.last_used = Instant::now();
                SessionCheck::Owned
            }
            Some(entry) => SessionCheck::Foreign(entry.token.clone()),
            None => SessionCheck::Unknown,
        }
    }

    /// Whether `lineage` may open a new session now. When the server is full it forgets
    /// sessions rmcp has closed, then closes the least recently used session of the lineage
    /// holding the most, if that is not `lineage` itself and holds more than it.
    pub async fn has_room(&self, lineage: &TokenId) -> bool {
        if self.lock().by_session.len() < self.limits.total {
            return true;
        }
        self.forget_closed().await;
        let victim = {
            let tables = self.lock();
            if tables.by_session.len() < self.limits.total {
                return true;
            }
            let mut held: HashMap<&TokenId, usize> = HashMap::new();
            for entry in tables.by_session.values() {
                *held.entry(&entry.lineage).or_default() += 1;
            }
            let mine = held.get(lineage).copied().unwrap_or(0);
            let Some((biggest, count)) = held.into_iter().max_by_key(|(_, n)| *n) else {
                return false;
            };
            if biggest == lineage || count <= mine + 1 {
                return false;
            }
            let biggest = biggest.clone();
            tables
                .by_session
                .iter()
                .filter(|(_, e)| e.lineage == biggest)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(s, _)| Arc::clone(s))
        };
        match victim {
            Some(session) => {
                tracing::debug!("server full: closing a session of the lineage holding the most");
                self.close(&session).await;
                true
            }
            None => false,
        }
    }

    /// Records a session that `token` just opened, and closes that token's least recently used
    /// sessions beyond its limit.
    pub async fn opened(&self, session: &str, token: &TokenId, lineage: &TokenId) {
        let session: Arc<str> = Arc::from(session);
        let evicted = {
            let mut tables = self.lock();
            tables.by_session.insert(
                Arc::clone(&session),
                Entry {
                    token: token.clone(),
                    lineage: lineage.clone(),
                    last_used: Instant::now(),
                },
            );
            let list = tables.by_token.entry(token.clone()).or_default();
            list.push(session);
            let excess = list.len().saturating_sub(self.limits.per_token);
            let mut evicted = Vec::new();
            for _ in 0..excess {
                let Some(oldest) = tables.by_token.get(token).and_then(|list| {
                    list.iter()
                        .min_by_key(|s| tables.by_session.get(&***s).map(|e| e.last_used))
                        .cloned()
                }) else {
                    break;
                };
                tables.forget(&oldest);
                evicted.push(oldest);
            }
            evicted
        };
        for session in evicted {
            tracing::debug!(%token, "closing the token's least recently used session");
            self.close(&session).await;
        }
    }

    /// Hands a session from `from` to `to` (a token that succeeds it); false if the session
    /// is gone or no longer `from`'s.
    pub fn rebind(&self, session: &str, from: &TokenId, to: &TokenId) -> bool {
        let mut tables = self.lock();
        let Some(entry) = tables.by_session.get_mut(session) else {
            return false;
        };
        if entry.token != *from {
            return false;
        }
        entry.token = to.clone();
        entry.last_used = Instant::now();
        let Some((key, _)) = tables.by_session.get_key_value(session) else {
            return false;
        };
        let key = Arc::clone(key);
        if let Some(list) = tables.by_token.get_mut(from) {
            list.retain(|s| **s != *session);
            if list.is_empty() {
                tables.by_token.remove(from);
            }
        }
        tables.by_token.entry(to.clone()).or_default().push(key);
        true
    }

    /// Forgets a session the client ended.
    pub fn closed(&self, session: &str) {
        self.lock().forget(session);
    }

    pub async fn close(&self, session: &str) {
        self.lock().forget(session);
        if let Err(e) = self.manager.close_session(&Arc::from(session)).await {
            tracing::debug!("closing a session failed: {e}");
        }
    }

    /// How many sessions rmcp holds now (the metrics). Waits for the session table's lock:
    /// call it on a blocking thread, never on an async worker.
    pub fn live_blocking(&self) -> usize {
        self.manager.sessions.blocking_read().len()
    }

    /// Whether rmcp still holds this session.
    pub async fn is_live(&self, session: &str) -> bool {
        self.manager.sessions.read().await.contains_key(session)
    }

    async fn forget_closed(&self) {
        let live = self.manager.sessions.read().await;
        self.lock()
            .by_session
            .retain(|session, _| live.contains_key(&**session));
        drop(live);
        let mut tables = self.lock();
        let Tables {
            by_session,
            by_token,
        } = &mut *tables;
        by_token.retain(|_, list| {
            list.retain(|s| by_session.contains_key(s));
            !list.is_empty()
        });
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        self.lock().by_session.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> TokenId {
        TokenId::parse(&format!("tok_{n:0>24}")).unwrap()
    }

    #[tokio::test]
    async fn a_token_beyond_its_limit_loses_its_least_recently_used_session() {
        let sessions = Sessions::new(
            Arc::default(),
            SessionLimits {
                per_token: 2,
                total: 10,
            },
        );
        let (a, b) = (id(1), id(2));
        sessions.opened("s1", &a, &a).await;
        sessions.opened("s2", &a, &a).await;
        sessions.opened("t1", &b, &b).await;
        // s1 used after s2: s2 is now the least recently used.
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(matches!(sessions.check("s1", &a), SessionCheck::Owned));
        sessions.opened("s3", &a, &a).await;
        assert!(matches!(sessions.check("s2", &a), SessionCheck::Unknown));
        assert!(matches!(sessions.check("s1", &a), SessionCheck::Owned));
        assert!(matches!(sessions.check("s3", &a), SessionCheck::Owned));
        assert!(matches!(sessions.check("t1", &b), SessionCheck::Owned));
        assert!(matches!(sessions.check("t1", &a), SessionCheck::Foreign(_)));
        assert_eq!(sessions.count(), 3);
    }

    #[tokio::test]
    async fn the_server_refuses_new_sessions_only_while_full() {
        let sessions = Sessions::new(
            Arc::default(),
            SessionLimits {
                per_token: 10,
                total: 2,
            },
        );
        sessions.opened("s1", &id(1), &id(1)).await;
        assert!(sessions.has_room(&id(1)).await);
        sessions.opened("s2", &id(2), &id(2)).await;
        // Neither session is live in rmcp's manager here, so making room forgets both.
        assert!(sessions.has_room(&id(1)).await);
        assert_eq!(sessions.count(), 0);
    }
}
