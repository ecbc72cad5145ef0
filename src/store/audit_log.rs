//! The audit log (prefix `a`): events keyed by their id, read newest first, pruned oldest
//! first by the service's retention.

use std::sync::atomic::Ordering;

use super::{AUDIT, Result, Store, StoreError, key, u64_from};
use crate::audit::AuditEvent;
use crate::timestamp::Timestamp;

impl Store {
    /// Audit events, newest first, with id below `before` when given.
    pub fn audit_events(
        &self,
        before: Option<u64>,
    ) -> impl Iterator<Item = Result<AuditEvent>> + '_ {
        let end = match before {
            Some(id) => key(AUDIT, &[&id.to_be_bytes()]),
            None => vec![AUDIT + 1],
        };
        self.db.range(vec![AUDIT]..end).rev().map(|entry| {
            let (_, v) = entry?;
            serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt(format!("audit event: {e}")))
        })
    }

    /// Whether the audit log holds more than `max_events` events (counted by event id: ids are
    /// consecutive, and pruning removes the oldest), or an event older than `older_than`.
    pub fn audit_exceeds(&self, max_events: u64, older_than: Timestamp) -> Result<bool> {
        let Some(entry) = self.db.scan_prefix([AUDIT]).next() else {
            return Ok(false);
        };
        let (k, v) = entry?;
        let oldest = u64_from(&k[1..])?;
        if oldest
            < self
                .next_audit_id
                .load(Ordering::SeqCst)
                .saturating_sub(max_events)
        {
            return Ok(true);
        }
        let event: AuditEvent = serde_json::from_slice(&v)
            .map_err(|e| StoreError::Corrupt(format!("audit event {oldest}: {e}")))?;
        Ok(event.at < older_than)
    }

    /// Removes the oldest audit events: every event but the newest `keep_newest` (by event
    /// id), and every event older than `older_than`. Returns how many were removed. Events
    /// are removed in chunks, so a long log never becomes one huge batch; no flush (the caller
    /// audits the pruning and flushes once).
    pub fn prune_audit(&self, keep_newest: u64, older_than: Timestamp) -> Result<u64> {
        const CHUNK: usize = 10_000;
        let next = self.next_audit_id.load(Ordering::SeqCst);
        let below = next.saturating_sub(keep_newest);
        let mut pruned = 0;
        loop {
            let mut batch = sled::Batch::default();
            let mut in_batch = 0;
            let mut done = true;
            for entry in self.db.range(vec![AUDIT]..vec![AUDIT + 1]) {
                let (k, v) = entry?;
                let id = u64_from(&k[1..])?;
                if id >= below {
                    let event: AuditEvent = serde_json::from_slice(&v)
                        .map_err(|e| StoreError::Corrupt(format!("audit event {id}: {e}")))?;
                    if event.at >= older_than {
                        break;
                    }
                }
                batch.remove(k);
                in_batch += 1;
                if in_batch == CHUNK {
                    done = false;
                    break;
                }
            }
            self.db.apply_batch(batch)?;
            pruned += in_batch as u64;
            if done {
                return Ok(pruned);
            }
        }
    }
}
