//! `Idempotency-Key` on `POST /v1/tokens` (SPEC §12): a retry with the same key by the same
//! caller within 24 hours makes no second token; it gets the first one's record, without its
//! secret (which is never kept), and `"replayed": true`. The same key with another body is
//! refused (422), and so is a retry while the first request still runs (409).
//!
//! Kept in memory, bounded ([`MAX_KEYS`]): a restart forgets the keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

use super::problem::Problem;
use crate::secret::TokenId;

const KEEP: Duration = Duration::from_secs(24 * 3600);
/// Keys remembered at once; when full, expired keys go, then the oldest.
const MAX_KEYS: usize = 100_000;
const MAX_KEY_LEN: usize = 255;
/// What [`key`] accepts, for the OpenAPI document.
pub const KEY_PATTERN: &str = "^[!-~]{1,255}$";

enum State {
    Running,
    Created(String),
}

struct Entry {
    at: Instant,
    request: [u8; 32],
    state: State,
}

#[derive(Default)]
pub struct Keys {
    entries: Arc<Mutex<HashMap<(TokenId, String), Entry>>>,
}

/// What a request with a key may do.
pub enum Claim {
    /// The first with this key: create, then say [`FirstClaim::done`].
    First(FirstClaim),
    /// Already created: answer with this token's record.
    Replay(String),
}

/// The first request with a key. Dropped without [`FirstClaim::done`] (the create failed),
/// the key is free again.
pub struct FirstClaim {
    entries: Arc<Mutex<HashMap<(TokenId, String), Entry>>>,
    key: (TokenId, String),
    finished: bool,
}

impl FirstClaim {
    pub fn done(mut self, id: &str) {
        if let Some(entry) = lock(&self.entries).get_mut(&self.key) {
            entry.state = State::Created(id.to_owned());
        }
        self.finished = true;
    }
}

impl Drop for FirstClaim {
    fn drop(&mut self) {
        if !self.finished {
            lock(&self.entries).remove(&self.key);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The request's key, if it sent one: 1-255 visible ASCII characters.
pub fn key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key)
            if !key.is_empty()
                && key.len() <= MAX_KEY_LEN
                && key.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(key.to_owned()))
        }
        _ => Err(Problem::invalid(
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}

impl Keys {
    /// Claims `key` for `caller`'s request with `arguments`.
    pub fn claim(
        &self,
        caller: &TokenId,
        key: &str,
        arguments: &Map<String, Value>,
    ) -> Result<Claim, Problem> {
        let request =
            *blake3::hash(Value::Object(arguments.clone()).to_string().as_bytes()).as_bytes();
        let now = Instant::now();
        let id = (caller.clone(), key.to_owned());
        let mut entries = lock(&self.entries);
        if let Some(entry) = entries.get(&id)
            && now.duration_since(entry.at) < KEEP
        {
            if entry.request != request {
                return Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_argument",
                    "this Idempotency-Key was used with a different request",
                ));
            }
            return match &entry.state {
                State::Created(token) => Ok(Claim::Replay(token.clone())),
                State::Running => Err(Problem::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    "a request with this Idempotency-Key is still running; retry shortly",
                )),
            };
        }
        if entries.len() >= MAX_KEYS {
            entries.retain(|_, e| now.duration_since(e.at) < KEEP);
            if entries.len() >= MAX_KEYS
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, e)| e.at)
                    .map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(
            id.clone(),
            Entry {
                at: now,
                request,
                state: State::Running,
            },
        );
        Ok(Claim::First(FirstClaim {
            entries: Arc::clone(&self.entries),
            key: id,
            finished: false,
        }))
    }
}
