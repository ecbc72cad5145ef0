//! Tombstones (prefix `d`): one per deleted token, written in the batch that removes its
//! record, so that no import brings it back whatever the audit log still holds.

use std::collections::HashSet;

use super::{
    AUDIT, RECORD, REMAINING, Result, Store, StoreError, TOMBSTONE, TOMBSTONES_DERIVED, USAGE, key,
};
use crate::audit::AuditEvent;
use crate::secret::TokenId;
use crate::timestamp::Timestamp;

impl Store {
    /// Whether `id` names a token this store deleted (it keeps a tombstone for every one).
    pub fn is_deleted(&self, id: &TokenId) -> Result<bool> {
        Ok(self
            .db
            .contains_key(key(TOMBSTONE, &[id.as_str().as_bytes()]))?)
    }

    /// The tombstone entry that remembers `id` as deleted at `at`, for an import to write.
    pub fn tombstone_entry(id: &TokenId, at: Timestamp) -> (Vec<u8>, Vec<u8>) {
        (
            key(TOMBSTONE, &[id.as_str().as_bytes()]),
            at.millis().to_be_bytes().to_vec(),
        )
    }
}

/// Brings a store written before tombstones existed up to date, once, the first time it is
/// opened. Such a store remembers deletions only in its audit log: every token the log names
/// that has no record is given a tombstone (a record only ever goes away by deletion).
/// Descendants deleted along with a token that was itself imported by a merge have no event of
/// their own and cannot be recovered this way. Usage counters whose token is gone (left by a
/// delete racing with calls) are removed, so its exports carry none. Returns whether the store
/// is now marked as keeping tombstones (a blank store is not, until its first change).
pub(super) fn upgrade_older_store(db: &sled::Db) -> Result<bool> {
    if db.contains_key(TOMBSTONES_DERIVED)? {
        return Ok(true);
    }
    if db.scan_prefix([AUDIT]).next().is_none() {
        // Nothing was ever changed (or a blank store got an import): nothing to derive.
        return Ok(false);
    }
    let mut batch = sled::Batch::default();
    let mut derived = HashSet::new();
    for entry in db.scan_prefix([AUDIT]) {
        let (_, v) = entry?;
        let event: AuditEvent = serde_json::from_slice(&v)
            .map_err(|e| StoreError::Corrupt(format!("audit event: {e}")))?;
        let Some(target) = event.target else { continue };
        let id = target.as_str().as_bytes();
        if derived.contains(&target)
            || db.contains_key(key(RECORD, &[id]))?
            || db.contains_key(key(TOMBSTONE, &[id]))?
        {
            continue;
        }
        batch.insert(key(TOMBSTONE, &[id]), &event.at.millis().to_be_bytes()[..]);
        derived.insert(target);
    }
    let mut orphans = 0;
    for prefix in [USAGE, REMAINING] {
        for entry in db.scan_prefix([prefix]) {
            let (k, _) = entry?;
            if !db.contains_key(key(RECORD, &[&k[1..]]))? {
                batch.remove(k);
                orphans += 1;
            }
        }
    }
    batch.insert(TOMBSTONES_DERIVED, &[][..]);
    db.apply_batch(batch)?;
    db.flush()?;
    if !derived.is_empty() || orphans > 0 {
        tracing::info!(
            tombstones = derived.len(),
            orphan_counters = orphans,
            "upgraded the store: remembered the tokens it deleted, dropped counters of none"
        );
    }
    Ok(true)
}
