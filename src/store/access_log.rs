//! The access log (prefix `x`): one entry per tool call or refused request, keyed by time
//! (8 bytes BE, ms) and a sequence number (8 bytes BE), so that a page is a range read newest
//! first and pruning by age is a range from the oldest. Index `y` (token id + the same 16
//! bytes) finds a token's entries: its filter reads only them, and deleting the token removes
//! them in the same batch as its record (no entry outlives its token). `y` is derived: not
//! exported, rebuilt on import.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::{ACCESS, ACCESS_BY_TOKEN, Result, Store, StoreError, key, u64_from};
use crate::secret::{ID_LEN, TokenId};
use crate::timestamp::Timestamp;

/// One access log entry as stored (time and sequence are its key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAccess {
    pub token: Option<TokenId>,
    pub lineage: Option<TokenId>,
    pub tool: Option<String>,
    pub bucket: Option<String>,
    pub outcome: String,
    pub duration_us: u64,
    pub upstream_is_error: Option<bool>,
    /// `mcp` or `rest`.
    pub front: String,
}

/// Where an entry sits: its time and sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AccessKey {
    pub at: Timestamp,
    pub seq: u64,
}

impl AccessKey {
    fn bytes(self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&(self.at.millis() as u64).to_be_bytes());
        out[8..].copy_from_slice(&self.seq.to_be_bytes());
        out
    }

    fn from_bytes(bytes: &[u8]) -> Result<AccessKey> {
        if bytes.len() != 16 {
            return Err(StoreError::Corrupt("access log key".to_owned()));
        }
        let at = Timestamp::from_millis(u64_from(&bytes[..8])? as i64)
            .ok_or_else(|| StoreError::Corrupt("access log time".to_owned()))?;
        Ok(AccessKey {
            at,
            seq: u64_from(&bytes[8..])?,
        })
    }

    /// The cursor form: `<ms>-<seq>`.
    pub fn cursor(self) -> String {
        format!("{}-{}", self.at.millis(), self.seq)
    }

    pub fn parse_cursor(text: &str) -> Option<AccessKey> {
        let (ms, seq) = text.split_once('-')?;
        Some(AccessKey {
            at: Timestamp::from_millis(ms.parse().ok()?)?,
            seq: seq.parse().ok()?,
        })
    }
}

fn decode(k: &[u8], v: &[u8]) -> Result<(AccessKey, StoredAccess)> {
    let key = AccessKey::from_bytes(&k[1..])?;
    let entry = postcard::from_bytes(v)
        .map_err(|e| StoreError::Corrupt(format!("access log entry: {e}")))?;
    Ok((key, entry))
}

/// The index entry of a token's access log entry.
fn by_token_key(token: &TokenId, at: AccessKey) -> Vec<u8> {
    key(ACCESS_BY_TOKEN, &[token.as_str().as_bytes(), &at.bytes()])
}

impl Store {
    /// The sequence number the next entry written gets (one past the newest's at open).
    pub(super) fn newest_access_seq(db: &sled::Db) -> Result<u64> {
        match db.scan_prefix([ACCESS]).next_back() {
            Some(entry) => Ok(AccessKey::from_bytes(&entry?.0[1..])?.seq + 1),
            None => Ok(1),
        }
    }

    /// Writes entries (no flush: the access log writes behind, and its writer flushes). The
    /// caller holds the write lock and has left out entries of tokens no longer stored.
    pub fn write_access(&self, entries: &[(Timestamp, StoredAccess)]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (at, entry) in entries {
            let seq = self
                .next_access_seq
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let k = AccessKey { at: *at, seq };
            let value = postcard::to_stdvec(entry).expect("access entries always serialise");
            batch.insert(key(ACCESS, &[&k.bytes()]), value);
            if let Some(token) = &entry.token {
                batch.insert(by_token_key(token, k), &[][..]);
            }
        }
        self.db.apply_batch(batch)?;
        self.count_access(entries.len() as i64);
        Ok(())
    }

    /// Entries newest first, strictly before `before` when given; only `token`'s when given.
    pub fn access_events(
        &self,
        token: Option<&TokenId>,
        before: Option<AccessKey>,
    ) -> Box<dyn Iterator<Item = Result<(AccessKey, StoredAccess)>> + '_> {
        match token {
            None => {
                let end = match before {
                    Some(k) => key(ACCESS, &[&k.bytes()]),
                    None => vec![ACCESS + 1],
                };
                Box::new(self.db.range(vec![ACCESS]..end).rev().map(|entry| {
                    let (k, v) = entry?;
                    decode(&k, &v)
                }))
            }
            Some(token) => {
                let start = key(ACCESS_BY_TOKEN, &[token.as_str().as_bytes()]);
                let end = match before {
                    Some(k) => by_token_key(token, k),
                    None => key(ACCESS_BY_TOKEN, &[token.as_str().as_bytes(), &[0xff; 17]]),
                };
                Box::new(self.db.range(start..end).rev().map(move |entry| {
                    let (k, _) = entry?;
                    let at = AccessKey::from_bytes(&k[1 + ID_LEN..])?;
                    let v = self
                        .db
                        .get(key(ACCESS, &[&at.bytes()]))?
                        .ok_or_else(|| StoreError::Corrupt("access index entry".to_owned()))?;
                    Ok((
                        at,
                        postcard::from_bytes(&v)
                            .map_err(|e| StoreError::Corrupt(format!("access log entry: {e}")))?,
                    ))
                }))
            }
        }
    }

    /// How many entries the log holds: counted once (the first time it is asked, by the
    /// background pruner, not at open), then kept as entries are written and removed.
    pub fn access_len(&self) -> u64 {
        let known = self.access_count.load(Ordering::Acquire);
        if known >= 0 {
            return known as u64;
        }
        let counted = self.db.scan_prefix([ACCESS]).count() as i64;
        // Writes meanwhile added to -1; counted already saw most of them.
        self.access_count.store(counted, Ordering::Release);
        counted as u64
    }

    pub(super) fn count_access(&self, delta: i64) {
        let _ = self
            .access_count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n >= 0).then(|| (n + delta).max(0))
            });
    }

    /// Removes the oldest entries: all but the newest `keep_newest`, and every one older
    /// than `older_than`, in chunks; returns how many. No flush.
    pub fn prune_access(&self, keep_newest: u64, older_than: Timestamp) -> Result<u64> {
        const CHUNK: usize = 10_000;
        let total = self.access_len();
        let mut excess = total.saturating_sub(keep_newest);
        let mut pruned = 0;
        loop {
            let mut batch = sled::Batch::default();
            let mut in_batch = 0;
            let mut done = true;
            for entry in self.db.range(vec![ACCESS]..vec![ACCESS + 1]) {
                let (k, v) = entry?;
                let (at, stored) = decode(&k, &v)?;
                if excess == 0 && at.at >= older_than {
                    break;
                }
                excess = excess.saturating_sub(1);
                batch.remove(k);
                if let Some(token) = &stored.token {
                    batch.remove(by_token_key(token, at));
                }
                in_batch += 1;
                if in_batch == CHUNK {
                    done = false;
                    break;
                }
            }
            self.db.apply_batch(batch)?;
            self.count_access(-(in_batch as i64));
            pruned += in_batch as u64;
            if done {
                return Ok(pruned);
            }
        }
    }

    /// Adds to `batch` the removal of every entry of `token` (it is being deleted); returns
    /// how many.
    pub(super) fn remove_access_of(&self, token: &TokenId, batch: &mut sled::Batch) -> Result<i64> {
        let mut removed = 0;
        for entry in self
            .db
            .scan_prefix(key(ACCESS_BY_TOKEN, &[token.as_str().as_bytes()]))
        {
            let (k, _) = entry?;
            let at = AccessKey::from_bytes(&k[1 + ID_LEN..])?;
            batch.remove(key(ACCESS, &[&at.bytes()]));
            batch.remove(k);
            removed += 1;
        }
        Ok(removed)
    }

    /// The index entry an imported access log entry needs, if it names a token.
    pub(super) fn access_index_for(k: &[u8], v: &[u8]) -> Result<Option<Vec<u8>>> {
        let (at, entry) = decode(k, v)?;
        Ok(entry.token.map(|token| by_token_key(&token, at)))
    }

    /// The token an exported access log entry names (for the import's checks).
    pub fn access_entry_token(k: &[u8], v: &[u8]) -> std::result::Result<Option<TokenId>, String> {
        if k.len() != 17 {
            return Err("access log key".to_owned());
        }
        decode(k, v)
            .map(|(_, e)| e.token)
            .map_err(|e| e.to_string())
    }
}
