//! The access log (prefix `x`): entries are written in batches, one sled entry per batch (the
//! writer's second), keyed by the batch's first time (8 bytes BE, ms) and a sequence number
//! (8 bytes BE). One insert per batch instead of one per call is what keeps the log's cost
//! within SPEC §14's budget at tens of thousands of calls a second. Within a batch, entries
//! are in the order they were recorded. Index `y` (token id + the batch's 16 key bytes) names
//! the batches that hold a token's entries: its filter reads only those, and deleting the
//! token rewrites them without its entries, in the same write as its record. `y` is derived:
//! not exported, rebuilt on import.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::{ACCESS, ACCESS_BY_TOKEN, Result, Store, StoreError, key, u64_from};
use crate::secret::{ID_LEN, TokenId};
use crate::timestamp::Timestamp;

/// One access log entry as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAccess {
    pub at: Timestamp,
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

/// An entry as the writer stores it: [`StoredAccess`] borrowed (the same encoding), so a
/// batch is written without copying its strings.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct AccessEntry<'a> {
    pub at: Timestamp,
    pub token: Option<&'a TokenId>,
    pub lineage: Option<&'a TokenId>,
    pub tool: Option<&'a str>,
    pub bucket: Option<&'a str>,
    pub outcome: &'a str,
    pub duration_us: u64,
    pub upstream_is_error: Option<bool>,
    pub front: &'a str,
}

impl StoredAccess {
    pub fn entry(&self) -> AccessEntry<'_> {
        AccessEntry {
            at: self.at,
            token: self.token.as_ref(),
            lineage: self.lineage.as_ref(),
            tool: self.tool.as_deref(),
            bucket: self.bucket.as_deref(),
            outcome: &self.outcome,
            duration_us: self.duration_us,
            upstream_is_error: self.upstream_is_error,
            front: &self.front,
        }
    }
}

/// A batch's key: its first entry's time and a sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct BatchKey {
    at: i64,
    seq: u64,
}

impl BatchKey {
    fn bytes(self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&(self.at as u64).to_be_bytes());
        out[8..].copy_from_slice(&self.seq.to_be_bytes());
        out
    }

    fn from_bytes(bytes: &[u8]) -> Result<BatchKey> {
        if bytes.len() != 16 {
            return Err(StoreError::Corrupt("access log key".to_owned()));
        }
        Ok(BatchKey {
            at: u64_from(&bytes[..8])? as i64,
            seq: u64_from(&bytes[8..])?,
        })
    }

    fn sled_key(self) -> Vec<u8> {
        key(ACCESS, &[&self.bytes()])
    }
}

/// Where an entry sits: its batch and its place in it. Newer entries sort higher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AccessKey {
    batch: BatchKey,
    index: u32,
}

impl AccessKey {
    /// The cursor form: `<ms>-<seq>-<index>`.
    pub fn cursor(self) -> String {
        format!("{}-{}-{}", self.batch.at, self.batch.seq, self.index)
    }

    pub fn parse_cursor(text: &str) -> Option<AccessKey> {
        let mut parts = text.split('-');
        let key = AccessKey {
            batch: BatchKey {
                at: parts.next()?.parse().ok()?,
                seq: parts.next()?.parse().ok()?,
            },
            index: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(key)
    }
}

fn decode_batch(v: &[u8]) -> Result<Vec<StoredAccess>> {
    postcard::from_bytes(v).map_err(|e| StoreError::Corrupt(format!("access log batch: {e}")))
}

/// Entries per stored batch at most: a writer pass of many thousand calls is stored as several
/// batches of at most this many, so no sled value grows past ~100 KiB (sled copies a node's
/// values whenever it rewrites the node).
const MAX_BATCH: usize = 1_000;

fn encode_batch<T: Serialize>(entries: &[T]) -> Vec<u8> {
    // Sized once: an entry takes ~70 bytes (two token ids and a tool name).
    let out = Vec::with_capacity(entries.len() * 96 + 8);
    postcard::to_extend(entries, out).expect("access entries always serialise")
}

fn by_token_key(token: &TokenId, batch: BatchKey) -> Vec<u8> {
    key(
        ACCESS_BY_TOKEN,
        &[token.as_str().as_bytes(), &batch.bytes()],
    )
}

fn tokens_of(entries: &[StoredAccess]) -> HashSet<&TokenId> {
    entries.iter().filter_map(|e| e.token.as_ref()).collect()
}

/// A sled key and value.
type KeyValue = (Vec<u8>, Vec<u8>);

/// Margin for time filters: a batch's entries are recorded within a few seconds of its key.
const BATCH_SPAN_MS: i64 = 10_000;

impl Store {
    /// The sequence number the next batch gets (one past the newest's at open).
    pub(super) fn newest_access_seq(db: &sled::Db) -> Result<u64> {
        match db.scan_prefix([ACCESS]).next_back() {
            Some(entry) => Ok(BatchKey::from_bytes(&entry?.0[1..])?.seq + 1),
            None => Ok(1),
        }
    }

    /// Writes entries in batches of at most [`MAX_BATCH`], in one sled write (no flush: the
    /// writer flushes). The caller holds the write lock and has left out entries of tokens no
    /// longer stored.
    pub fn write_access(&self, entries: &[AccessEntry<'_>]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for chunk in entries.chunks(MAX_BATCH) {
            let batch_key = BatchKey {
                at: chunk[0].at.millis(),
                seq: self.next_access_seq.fetch_add(1, Ordering::Relaxed),
            };
            batch.insert(batch_key.sled_key(), encode_batch(chunk));
            let tokens: HashSet<&TokenId> = chunk.iter().filter_map(|e| e.token).collect();
            for token in tokens {
                batch.insert(by_token_key(token, batch_key), &[][..]);
            }
        }
        self.db.apply_batch(batch)?;
        self.count_access(entries.len() as i64);
        Ok(())
    }

    /// Entries newest first, strictly before `before` when given, none recorded before
    /// `since_ms` - a margin (the caller filters exactly); only `token`'s when given.
    pub fn access_events(
        &self,
        token: Option<&TokenId>,
        before: Option<AccessKey>,
        until_ms: Option<i64>,
    ) -> Box<dyn Iterator<Item = Result<(AccessKey, StoredAccess)>> + '_> {
        // Batches at or before the cursor's, and none begun after `until` (plus a margin).
        let mut last = BatchKey {
            at: i64::MAX,
            seq: u64::MAX,
        };
        if let Some(b) = before {
            last = last.min(b.batch);
        }
        if let Some(u) = until_ms {
            last = last.min(BatchKey {
                at: u.saturating_add(BATCH_SPAN_MS),
                seq: u64::MAX,
            });
        }
        let batches: Box<dyn Iterator<Item = Result<BatchKey>> + '_> = match token {
            None => Box::new(
                self.db
                    .range(vec![ACCESS]..=last.sled_key())
                    .rev()
                    .map(|entry| BatchKey::from_bytes(&entry?.0[1..])),
            ),
            Some(token) => {
                let start = key(ACCESS_BY_TOKEN, &[token.as_str().as_bytes()]);
                Box::new(
                    self.db
                        .range(start..=by_token_key(token, last))
                        .rev()
                        .map(|entry| BatchKey::from_bytes(&entry?.0[1 + ID_LEN..])),
                )
            }
        };
        let token = token.cloned();
        Box::new(
            batches.flat_map(move |batch| -> Box<dyn Iterator<Item = _>> {
                let entries = batch.and_then(|batch| {
                    let value = self.db.get(batch.sled_key())?;
                    Ok((batch, value.map(|v| decode_batch(&v)).transpose()?))
                });
                match entries {
                    Err(e) => Box::new(std::iter::once(Err(e))),
                    Ok((_, None)) => Box::new(std::iter::empty()),
                    Ok((batch, Some(entries))) => {
                        let token = token.clone();
                        Box::new(
                            entries
                                .into_iter()
                                .enumerate()
                                .rev()
                                .map(move |(i, e)| {
                                    (
                                        AccessKey {
                                            batch,
                                            index: i as u32,
                                        },
                                        e,
                                    )
                                })
                                .filter(move |(k, e)| {
                                    before.is_none_or(|b| *k < b)
                                        && token
                                            .as_ref()
                                            .is_none_or(|t| e.token.as_ref() == Some(t))
                                })
                                .map(Ok),
                        )
                    }
                }
            }),
        )
    }

    /// How many entries the log holds: counted once (the first time it is asked, by the
    /// background pruner, not at open), then kept as entries are written and removed.
    pub fn access_len(&self) -> Result<u64> {
        let known = self.access_count.load(Ordering::Acquire);
        if known >= 0 {
            return Ok(known as u64);
        }
        let mut counted = 0i64;
        for entry in self.db.scan_prefix([ACCESS]) {
            counted += decode_batch(&entry?.1)?.len() as i64;
        }
        self.access_count.store(counted, Ordering::Release);
        Ok(counted as u64)
    }

    pub(super) fn count_access(&self, delta: i64) {
        let _ = self
            .access_count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n >= 0).then(|| (n + delta).max(0))
            });
    }

    /// Removes the oldest entries: all but the newest `keep_newest`, and every one older
    /// than `older_than`; returns how many. No flush.
    pub fn prune_access(&self, keep_newest: u64, older_than: Timestamp) -> Result<u64> {
        let mut excess = self.access_len()?.saturating_sub(keep_newest);
        let mut pruned = 0u64;
        for entry in self.db.range(vec![ACCESS]..vec![ACCESS + 1]) {
            let (k, v) = entry?;
            let batch_key = BatchKey::from_bytes(&k[1..])?;
            let entries = decode_batch(&v)?;
            let old = entries.iter().take_while(|e| e.at < older_than).count() as u64;
            let drop = old.max(excess.min(entries.len() as u64)) as usize;
            if drop == 0 {
                break;
            }
            let mut batch = sled::Batch::default();
            let kept = &entries[drop..];
            let kept_tokens = tokens_of(kept);
            for token in tokens_of(&entries[..drop]) {
                if !kept_tokens.contains(token) {
                    batch.remove(by_token_key(token, batch_key));
                }
            }
            if kept.is_empty() {
                batch.remove(k);
            } else {
                batch.insert(k, encode_batch(kept));
            }
            self.db.apply_batch(batch)?;
            self.count_access(-(drop as i64));
            pruned += drop as u64;
            excess = excess.saturating_sub(drop as u64);
            if !kept.is_empty() {
                break;
            }
        }
        Ok(pruned)
    }

    /// Adds to `batch` the removal of every entry of the `gone` tokens (being deleted,
    /// together: a batch holding entries of several of them is rewritten once, without all
    /// of them); returns how many entries go.
    pub(super) fn remove_access_of(
        &self,
        gone: &[&TokenId],
        batch: &mut sled::Batch,
    ) -> Result<i64> {
        let mut batches = std::collections::BTreeSet::new();
        for token in gone {
            for entry in self
                .db
                .scan_prefix(key(ACCESS_BY_TOKEN, &[token.as_str().as_bytes()]))
            {
                let (k, _) = entry?;
                batches.insert(BatchKey::from_bytes(&k[1 + ID_LEN..])?);
                batch.remove(k);
            }
        }
        let is_gone = |e: &StoredAccess| e.token.as_ref().is_some_and(|t| gone.contains(&t));
        let mut removed = 0;
        for batch_key in batches {
            let Some(v) = self.db.get(batch_key.sled_key())? else {
                continue;
            };
            let entries = decode_batch(&v)?;
            let kept: Vec<StoredAccess> = entries.iter().filter(|e| !is_gone(e)).cloned().collect();
            removed += (entries.len() - kept.len()) as i64;
            if kept.is_empty() {
                batch.remove(batch_key.sled_key());
            } else {
                batch.insert(batch_key.sled_key(), encode_batch(&kept));
            }
        }
        Ok(removed)
    }

    /// An exported batch as an import writes it: without entries of tokens not `kept`, and
    /// with its index entries; `None` when nothing is left.
    pub(super) fn access_batch_for_import(
        k: &[u8],
        v: &[u8],
        kept: &dyn Fn(&TokenId) -> bool,
    ) -> Result<Option<Vec<KeyValue>>> {
        let batch_key = BatchKey::from_bytes(&k[1..])?;
        let entries: Vec<StoredAccess> = decode_batch(v)?
            .into_iter()
            .filter(|e| e.token.as_ref().is_none_or(kept))
            .collect();
        if entries.is_empty() {
            return Ok(None);
        }
        let mut pairs = vec![(k.to_vec(), encode_batch(&entries))];
        for token in tokens_of(&entries) {
            pairs.push((by_token_key(token, batch_key), Vec::new()));
        }
        Ok(Some(pairs))
    }

    /// Whether a backup entry is an access log batch this store could have written.
    pub fn check_access_entry(k: &[u8], v: &[u8]) -> std::result::Result<(), String> {
        if k.len() != 17 {
            return Err("access log key".to_owned());
        }
        decode_batch(v).map(|_| ()).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    fn entry(at: i64, token: &TokenId, n: usize) -> StoredAccess {
        StoredAccess {
            at: Timestamp::from_millis(at).unwrap(),
            token: Some(token.clone()),
            lineage: Some(token.clone()),
            tool: Some(format!("tool{n}")),
            bucket: None,
            outcome: "ok".to_owned(),
            duration_us: 1,
            upstream_is_error: None,
            front: "mcp".to_owned(),
        }
    }

    #[test]
    fn a_large_pass_is_stored_in_bounded_batches_and_reads_back_whole_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
        let (a, b) = (TokenId::generate(), TokenId::generate());
        let now = Timestamp::now().millis();
        let n = 2 * MAX_BATCH + 500;
        let entries: Vec<StoredAccess> = (0..n)
            .map(|i| entry(now + i as i64, if i % 3 == 0 { &a } else { &b }, i))
            .collect();
        let written: Vec<AccessEntry<'_>> = entries.iter().map(StoredAccess::entry).collect();
        store.write_access(&written).unwrap();

        let biggest = store
            .db
            .scan_prefix([ACCESS])
            .map(|kv| decode_batch(&kv.unwrap().1).unwrap().len())
            .collect::<Vec<_>>();
        assert_eq!(biggest.len(), 3, "three batches: {biggest:?}");
        assert!(biggest.iter().all(|&len| len <= MAX_BATCH));
        assert_eq!(store.access_len().unwrap(), n as u64);

        // Newest first, every entry once, across the batches.
        let read: Vec<StoredAccess> = store
            .access_events(None, None, None)
            .map(|r| r.unwrap().1)
            .collect();
        let expected: Vec<StoredAccess> = entries.iter().rev().cloned().collect();
        assert_eq!(read, expected);

        // A token's filter reads its own entries in every batch; a cursor carries on.
        let of_a: Vec<(AccessKey, StoredAccess)> = store
            .access_events(Some(&a), None, None)
            .map(Result::unwrap)
            .collect();
        assert_eq!(of_a.len(), n.div_ceil(3));
        let after = of_a[500].0;
        let rest = store.access_events(Some(&a), Some(after), None).count();
        assert_eq!(rest, of_a.len() - 501);

        // Pruning by count removes the oldest, batch by batch.
        let pruned = store.prune_access(100, Timestamp::from_millis(0).unwrap());
        assert_eq!(pruned.unwrap(), (n - 100) as u64);
        let left: Vec<StoredAccess> = store
            .access_events(None, None, None)
            .map(|r| r.unwrap().1)
            .collect();
        assert_eq!(left, expected[..100].to_vec());
    }
}
