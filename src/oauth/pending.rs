//! Bounded, expiring maps for what lives only in memory: pending consent requests (10 min)
//! and authorization codes (60 s). Anyone can create a pending request without a token, so
//! both maps have a count cap besides their time to live; when full, the oldest entry gives
//! way (a flood can delay a person's consent, never grow memory or lock everyone out).
//!
//! Every method takes `now`, so tests drive the clock instead of sleeping. A restart forgets
//! both maps: a person re-opens the consent page, a client re-runs the authorization.

use std::collections::HashMap;
use std::time::{Duration, Instant};

pub struct Expiring<V> {
    entries: HashMap<String, (Instant, V)>,
    ttl: Duration,
    cap: usize,
}

impl<V> Expiring<V> {
    pub fn new(ttl: Duration, cap: usize) -> Expiring<V> {
        Expiring {
            entries: HashMap::new(),
            ttl,
            cap: cap.max(1),
        }
    }

    fn alive(&self, born: Instant, now: Instant) -> bool {
        now.saturating_duration_since(born) < self.ttl
    }

    /// Adds an entry born `now`, dropping expired entries and, when full, the oldest.
    pub fn insert(&mut self, key: String, value: V, now: Instant) {
        let ttl = self.ttl;
        self.entries
            .retain(|_, (born, _)| now.saturating_duration_since(*born) < ttl);
        while self.entries.len() >= self.cap {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (born, _))| *born)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.entries.insert(key, (now, value));
    }

    /// The entry under `key` if it has not expired.
    pub fn get(&self, key: &str, now: Instant) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|(born, _)| self.alive(*born, now))
            .map(|(_, v)| v)
    }

    /// Removes and returns the entry under `key` if it has not expired.
    pub fn take(&mut self, key: &str, now: Instant) -> Option<V> {
        let (born, value) = self.entries.remove(key)?;
        self.alive(born, now).then_some(value)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_their_time_to_live() {
        let start = Instant::now();
        let mut codes = Expiring::new(Duration::from_secs(60), 10);
        codes.insert("a".into(), 1, start);
        assert_eq!(codes.get("a", start + Duration::from_secs(59)), Some(&1));
        assert_eq!(codes.get("a", start + Duration::from_secs(60)), None);
        assert_eq!(codes.take("a", start + Duration::from_secs(61)), None);
        // Taken once, gone: a code is single use.
        codes.insert("b".into(), 2, start);
        assert_eq!(codes.take("b", start + Duration::from_secs(1)), Some(2));
        assert_eq!(codes.take("b", start + Duration::from_secs(2)), None);
    }

    #[test]
    fn a_flood_never_grows_past_the_cap_and_the_oldest_gives_way() {
        let start = Instant::now();
        let mut pending = Expiring::new(Duration::from_secs(600), 100);
        for i in 0..10_000u64 {
            pending.insert(format!("k{i}"), i, start + Duration::from_millis(i));
        }
        assert_eq!(pending.len(), 100);
        let now = start + Duration::from_secs(10);
        assert_eq!(pending.get("k9999", now), Some(&9999));
        assert_eq!(pending.get("k0", now), None);
        // Expired entries are dropped on the next insert, whatever the count.
        pending.insert("late".into(), 0, start + Duration::from_secs(700));
        assert_eq!(pending.len(), 1);
    }
}
