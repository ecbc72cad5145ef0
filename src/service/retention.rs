//! Audit retention: the audit log is bounded by age and by count (SPEC §8). The server prunes
//! the oldest events in the background; each run that removes anything records one `prune`
//! event saying how many went and why, and a run with nothing to remove writes nothing.
//!
//! Which tokens were deleted is not read from the audit log (the store keeps tombstones), so
//! pruning never lets an import bring a deleted token back.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Service;
use crate::audit::AuditEvent;
use crate::error::Result;
use crate::record::Actor;
use crate::store::Change;
use crate::timestamp::Timestamp;

const MS_PER_DAY: i64 = 86_400_000;

/// How much of the audit log to keep. Generous by default: a year, or a million events,
/// whichever is reached first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRetention {
    /// Events older than this many days are pruned.
    pub max_age_days: u32,
    /// At most this many events are kept (the newest).
    pub max_events: u64,
}

impl Default for AuditRetention {
    fn default() -> Self {
        AuditRetention {
            max_age_days: 365,
            max_events: 1_000_000,
        }
    }
}

impl Service {
    /// Removes the audit events that retention no longer keeps and records one `prune` event
    /// if any were removed; returns how many. After a run the log holds at most `max_events`
    /// events, this run's own included.
    pub fn prune_audit(&self) -> Result<u64> {
        let retention = self.config.audit_retention;
        let now = Timestamp::now();
        let older_than =
            Timestamp::from_millis(now.millis() - i64::from(retention.max_age_days) * MS_PER_DAY)
                .unwrap_or(now);
        let max_events = retention.max_events.max(1);
        if !self.store.audit_exceeds(max_events, older_than)? {
            return Ok(0);
        }
        // One place is kept free for this run's own event.
        let pruned = self.store.prune_audit(max_events - 1, older_than)?;
        if pruned == 0 {
            return Ok(0);
        }
        let mut change = Change::default();
        change.audit(AuditEvent {
            id: 0,
            at: now,
            actor: Actor::Owner,
            action: "prune".to_owned(),
            target: None,
            changes: json!({
                "events_pruned": pruned,
                "max_age_days": retention.max_age_days,
                "max_events": max_events,
            }),
        });
        let write = self.lock_writes();
        self.store.apply(change)?;
        drop(write);
        self.store.flush()?;
        tracing::info!(pruned, "pruned the oldest audit events");
        Ok(pruned)
    }
}
