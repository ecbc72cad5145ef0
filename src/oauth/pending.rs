//! Bounded, expiring maps for what lives only in memory: pending consent requests (10 min)
//! and authorization codes (60 s), both with a count cap besides their time to live.
//!
//! Codes exist only after a person approved, so when their map is full the oldest gives way.
//! Anyone can open a consent page without a token, so [`Consents`] never evicts an open page
//! to make room: each peer address holds at most its own share, and a request beyond its
//! share (or beyond the cap) is refused. There is no share per client id: anyone may name any
//! client, so such a share let one address block a connector's new pages for everyone. A
//! flood can delay new consent pages from its own address, never expire a person's open page.

//! Every method takes `now`, so tests drive the clock instead of sleeping. A restart forgets
//! both maps: a person re-opens the consent page, a client re-runs the authorization.

use std::collections::HashMap;
use std::net::IpAddr;
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

    /// The entry under `key`, to change, if it has not expired.
    pub fn get_mut(&mut self, key: &str, now: Instant) -> Option<&mut V> {
        let ttl = self.ttl;
        self.entries
            .get_mut(key)
            .filter(|(born, _)| now.saturating_duration_since(*born) < ttl)
            .map(|(_, v)| v)
    }

    /// Removes and returns the entry under `key` if it has not expired.
    pub fn take(&mut self, key: &str, now: Instant) -> Option<V> {
        let (born, value) = self.entries.remove(key)?;
        self.alive(born, now).then_some(value)
    }

    /// Drops expired entries.
    fn forget_expired(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.entries
            .retain(|_, (born, _)| now.saturating_duration_since(*born) < ttl);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Who opened a consent page: the client it is for and the address it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opener {
    pub client_id: String,
    pub peer: IpAddr,
}

/// Why a consent page was not opened.
#[derive(Debug, PartialEq, Eq)]
pub enum NoRoom {
    /// This address holds its share of open pages.
    Share,
    /// The server holds its maximum of open pages.
    Full,
}

/// Pending consent requests, bounded per peer address and in all (see the module comment);
/// nothing is ever evicted before its time.
pub struct Consents<V> {
    pages: Expiring<(Opener, V)>,
    cap: usize,
    share: usize,
}

impl<V> Consents<V> {
    /// At most `cap` open pages, `share` of them per peer address.
    pub fn new(ttl: Duration, cap: usize, share: usize) -> Consents<V> {
        Consents {
            pages: Expiring::new(ttl, cap),
            cap: cap.max(1),
            share: share.max(1),
        }
    }

    /// Opens a page, or says why there is no room for it.
    pub fn open(
        &mut self,
        key: String,
        opener: Opener,
        value: V,
        now: Instant,
    ) -> Result<(), NoRoom> {
        self.pages.forget_expired(now);
        let same_peer = self
            .pages
            .entries
            .values()
            .filter(|(_, (page, _))| page.peer == opener.peer)
            .count();
        if same_peer >= self.share {
            return Err(NoRoom::Share);
        }
        if self.pages.entries.len() >= self.cap {
            return Err(NoRoom::Full);
        }
        self.pages.entries.insert(key, (now, (opener, value)));
        Ok(())
    }

    pub fn get(&self, key: &str, now: Instant) -> Option<&V> {
        self.pages.get(key, now).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str, now: Instant) -> Option<&mut V> {
        self.pages.get_mut(key, now).map(|(_, v)| v)
    }

    pub fn take(&mut self, key: &str, now: Instant) -> Option<V> {
        self.pages.take(key, now).map(|(_, v)| v)
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

    fn opener(client: &str, peer: [u8; 4]) -> Opener {
        Opener {
            client_id: client.into(),
            peer: IpAddr::from(peer),
        }
    }

    #[test]
    fn a_consent_flood_never_evicts_an_open_page() {
        let start = Instant::now();
        let mut pages = Consents::new(Duration::from_secs(600), 10, 3);
        let person = opener("connector", [10, 0, 0, 1]);
        pages.open("mine".into(), person.clone(), 0, start).unwrap();
        // One address floods with its own client, then with the person's client id.
        let attacker = [10, 0, 0, 2];
        let mut refused = Vec::new();
        for i in 0..1000u32 {
            let client = if i % 2 == 0 { "junk" } else { "connector" };
            if let Err(why) = pages.open(format!("k{i}"), opener(client, attacker), i, start) {
                refused.push(why);
            }
        }
        assert_eq!(
            refused.len(),
            997,
            "the attacker's address holds its share of 3"
        );
        assert!(refused.iter().all(|r| *r == NoRoom::Share));
        assert_eq!(
            pages.get("mine", start + Duration::from_secs(599)),
            Some(&0)
        );
        // Many addresses: the cap refuses, still without evicting.
        for i in 0..100u8 {
            let _ = pages.open(
                format!("p{i}"),
                opener(&format!("c{i}"), [10, 1, 0, i]),
                0,
                start,
            );
        }
        assert_eq!(pages.pages.len(), 10);
        assert_eq!(
            pages.open("late".into(), opener("new", [10, 2, 0, 1]), 0, start),
            Err(NoRoom::Full)
        );
        assert_eq!(pages.take("mine", start + Duration::from_secs(1)), Some(0));
        // Other addresses naming the person's client id leave the person room for new pages.
        let mut pages = Consents::new(Duration::from_secs(600), 10, 3);
        for i in 0..6u32 {
            let peer = [10, 0, 0, 3 + u8::try_from(i / 3).unwrap()];
            pages
                .open(format!("a{i}"), opener("connector", peer), 0, start)
                .unwrap();
        }
        assert!(
            pages.open("new".into(), person.clone(), 1, start).is_ok(),
            "a client id is no one's to fill"
        );
        // Expired pages make room again.
        let later = start + Duration::from_secs(600);
        assert!(
            pages
                .open("late".into(), opener("new", [10, 2, 0, 1]), 0, later)
                .is_ok()
        );
    }
}
