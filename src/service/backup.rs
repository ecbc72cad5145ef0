//! Export and import: JSON lines holding every stored key and value (records with their secret
//! hashes, lineage and status indexes, usage counters, the tombstones of deleted tokens, the
//! audit log). Secrets are never stored, so a backup holds none.
//!
//! Format: a header line `{"format":"tokenwarden-export","version":1,"entries":N}`, then one
//! `{"k":"<hex>","v":"<hex>"}` line per entry.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Service;
use crate::audit::AuditEvent;
use crate::error::{Error, ErrorCode, Result};
use crate::record::{Actor, Status, TokenRecord};
use crate::secret::TokenId;
use crate::store::{BackupEntry, Change, Store};
use crate::timestamp::Timestamp;

const FORMAT: &str = "tokenwarden-export";
const VERSION: u64 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u64,
    entries: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    k: String,
    v: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn io_error(e: std::io::Error) -> Error {
    Error::new(ErrorCode::Internal, format!("I/O error: {e}"))
}

/// A backup entry, checked: key, value, and what it belongs to.
type Classified = (Vec<u8>, Vec<u8>, BackupEntry);

/// What an import did.
#[derive(Debug, Serialize)]
pub struct Imported {
    pub entries_written: u64,
    /// Usage counters of tokens whose record is not in the backup, left by older versions
    /// (a delete racing with calls): dropped, not imported.
    pub orphan_counters_dropped: u64,
}

/// A backup read and checked, ready to import.
struct Backup {
    entries: Vec<Classified>,
    orphan_counters_dropped: u64,
}

impl Service {
    /// Writes the whole store to `out`; returns the number of entries.
    pub fn export(&self, out: &mut dyn Write) -> Result<u64> {
        self.flush_usage()?;
        let entries: Vec<(Vec<u8>, Vec<u8>)> = self
            .store
            .raw_entries()
            .collect::<std::result::Result<_, _>>()?;
        let header = Header {
            format: FORMAT.to_owned(),
            version: VERSION,
            entries: entries.len() as u64,
        };
        writeln!(
            out,
            "{}",
            serde_json::to_string(&header).expect("header serialises")
        )
        .map_err(io_error)?;
        for (k, v) in &entries {
            let line = Entry {
                k: hex(k),
                v: hex(v),
            };
            writeln!(
                out,
                "{}",
                serde_json::to_string(&line).expect("entry serialises")
            )
            .map_err(io_error)?;
        }
        out.flush().map_err(io_error)?;
        Ok(entries.len() as u64)
    }

    /// Reads a backup from `input` and writes it into the store, all or nothing: every line is
    /// checked first, and any bad or missing line fails the import naming its line number.
    ///
    /// Without `merge` the store must be blank (no token, no audit event) and receives the
    /// backup as it was. With `merge`, only the tokens the store lacks are added, with their
    /// secret hashes, indexes and counters; the backup's audit events are not (the import's
    /// own event records what was added). A merged token whose parent is already in the store
    /// must still fit within it: a revoked parent or a scope the parent no longer covers
    /// refuses the whole import. A token the store deleted (it has a tombstone) is never
    /// added, nor anything under it; the backup's tombstones the store lacks are added.
    ///
    /// Either way, a lineage that loops, skips a depth or goes deeper than `max_depth` refuses
    /// the file, and usage counters of tokens not in the file (left by older versions) are
    /// dropped and counted in `orphan_counters_dropped`. An import that adds nothing writes
    /// nothing.
    pub fn import(&self, input: &mut dyn BufRead, merge: bool) -> Result<Imported> {
        if !merge && !self.store.is_blank() {
            return Err(Error::conflict(
                "the store is not empty: import into a new data directory, or pass --merge to \
                 add only the tokens it lacks",
            ));
        }
        let Backup {
            mut entries,
            orphan_counters_dropped,
        } = read_backup(input, self.config.max_depth)?;
        entries.extend(tombstones_from_audit(&entries));
        let _write = self.lock_writes();
        let skipped = if merge {
            self.already_here(&entries)?
        } else {
            HashSet::new()
        };
        let mut chosen: Vec<&Classified> = Vec::with_capacity(entries.len());
        for classified in &entries {
            let keep = match &classified.2 {
                BackupEntry::Record(r) => !skipped.contains(&r.id),
                BackupEntry::OfToken(id) | BackupEntry::Hash(_, id) => !skipped.contains(id),
                // Indexes are rebuilt from the records; a merge keeps the store's own audit log.
                BackupEntry::Index(_) => false,
                BackupEntry::Audit | BackupEntry::Access => !merge,
                // A merge adds the deletions the store does not know of yet, so that an older
                // backup merged later cannot bring those tokens back either.
                BackupEntry::Tombstone(id) => {
                    !merge || (!self.store.is_deleted(id)? && self.store.get(id)?.is_none())
                }
            };
            if keep {
                chosen.push(classified);
            }
        }
        let records: Vec<&TokenRecord> = chosen
            .iter()
            .filter_map(|(_, _, entry)| match entry {
                BackupEntry::Record(r) => Some(r.as_ref()),
                _ => None,
            })
            .collect();
        self.check_forest(&records, &chosen)?;
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = chosen
            .iter()
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect();
        if pairs.is_empty() {
            // Nothing to add (a merge of what the store already holds): nothing is written,
            // not even an audit event.
            return Ok(Imported {
                entries_written: 0,
                orphan_counters_dropped,
            });
        }
        let written = self.store.import_entries(&pairs, &records)?;
        let mut change = Change::default();
        change.audit(AuditEvent {
            id: 0,
            at: Timestamp::now(),
            actor: Actor::Owner,
            action: "import".to_owned(),
            target: None,
            changes: json!({ "entries_written": written, "merge": merge }),
        });
        self.store.apply(change)?;
        self.store.flush()?;
        Ok(Imported {
            entries_written: written as u64,
            orphan_counters_dropped,
        })
    }

    /// For a merge: the tokens of the backup that are not to be added — those the store holds,
    /// those deleted from it since (its tombstones: a deletion is never undone by a restore),
    /// and their descendants.
    fn already_here(&self, entries: &[Classified]) -> Result<HashSet<TokenId>> {
        let mut deleted = HashSet::new();
        let mut parents: Vec<(&TokenId, Option<&TokenId>)> = Vec::new();
        let mut skipped = HashSet::new();
        for (_, _, entry) in entries {
            if let BackupEntry::Record(r) = entry {
                if self.store.is_deleted(&r.id)? {
                    deleted.insert(r.id.clone());
                    skipped.insert(r.id.clone());
                } else if self.store.get(&r.id)?.is_some() {
                    skipped.insert(r.id.clone());
                }
                parents.push((&r.id, r.parent_id.as_ref()));
            }
        }
        // A token under a deleted one goes too (until nothing changes: lineage is shallow).
        loop {
            let before = skipped.len();
            for (id, parent) in &parents {
                if parent.is_some_and(|p| {
                    deleted.contains(p)
                        || (skipped.contains(p) && self.store.get(p).ok().flatten().is_none())
                }) {
                    skipped.insert((*id).clone());
                }
            }
            if skipped.len() == before {
                return Ok(skipped);
            }
        }
    }

    /// Every token to be written must sit in its place: its parent (in the file, else already
    /// in the store) exists, its depth is its parent's plus one, its scope is within its
    /// parent's, it is revoked if its parent is; and the secret hashes that point at it are
    /// the ones its record lists. Refuses the whole import otherwise.
    fn check_forest(&self, records: &[&TokenRecord], chosen: &[&Classified]) -> Result<()> {
        let by_id: HashMap<&TokenId, &TokenRecord> = records.iter().map(|r| (&r.id, *r)).collect();
        for record in records {
            let refuse =
                |why: String| Error::conflict(format!("cannot import token {}: {why}", record.id));
            let Some(parent_id) = &record.parent_id else {
                if record.depth != 0 {
                    return Err(refuse(format!("a root token with depth {}", record.depth)));
                }
                continue;
            };
            let stored;
            let parent: &TokenRecord = match by_id.get(parent_id) {
                Some(p) => p,
                None => match self.store.get(parent_id)? {
                    Some(p) => {
                        stored = p;
                        &stored
                    }
                    None => {
                        return Err(refuse(format!(
                            "its parent {parent_id} is in neither the store nor the backup"
                        )));
                    }
                },
            };
            if parent.depth.checked_add(1) != Some(record.depth) {
                return Err(refuse(format!(
                    "depth {} under a parent of depth {}",
                    record.depth, parent.depth
                )));
            }
            if parent.status == Status::Revoked && record.status != Status::Revoked {
                return Err(refuse(format!("its parent {parent_id} has been revoked")));
            }
            let exceeding = record.scope.fields_exceeding(&parent.scope);
            if !exceeding.is_empty() {
                return Err(refuse(format!(
                    "its scope exceeds its parent {parent_id} in {}",
                    exceeding.join(", ")
                )));
            }
        }
        for (_, _, entry) in chosen {
            match entry {
                BackupEntry::Hash(hash, id) => match by_id.get(id) {
                    Some(r) if r.hashes.contains(hash) => {}
                    _ => {
                        return Err(Error::conflict(format!(
                            "cannot import: a secret hash points at token {id}, whose record does not list it"
                        )));
                    }
                },
                BackupEntry::OfToken(id) if !by_id.contains_key(id) => {
                    return Err(Error::conflict(format!(
                        "cannot import: a counter of token {id} comes without its record"
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Parses and checks a whole backup before anything is written.
fn read_backup(input: &mut dyn BufRead, max_depth: u8) -> Result<Backup> {
    let bad = |line: usize, why: &str| Error::invalid(format!("line {line}: {why}"));
    let mut lines = input.lines().enumerate().map(|(i, l)| (i + 1, l));
    let header: Header = match lines.next() {
        None => return Err(bad(1, "empty input: expected the export header")),
        Some((n, line)) => serde_json::from_str(&line.map_err(io_error)?)
            .map_err(|e| bad(n, &format!("not an export header: {e}")))?,
    };
    if header.format != FORMAT || header.version != VERSION {
        return Err(bad(
            1,
            &format!(
                "unsupported format {:?} version {}",
                header.format, header.version
            ),
        ));
    }
    let mut entries = Vec::new();
    let mut last_line = 1;
    for (n, line) in lines {
        last_line = n;
        let line = line.map_err(|e| bad(n, &format!("unreadable: {e}")))?;
        let entry: Entry =
            serde_json::from_str(&line).map_err(|e| bad(n, &format!("not an entry: {e}")))?;
        let (Some(k), Some(v)) = (unhex(&entry.k), unhex(&entry.v)) else {
            return Err(bad(n, "key and value must be hex"));
        };
        let class = Store::classify_entry(&k, &v).map_err(|why| bad(n, &why))?;
        entries.push((k, v, class));
    }
    if entries.len() as u64 != header.entries {
        return Err(bad(
            last_line + 1,
            &format!(
                "truncated: the header announces {} entries, found {}",
                header.entries,
                entries.len()
            ),
        ));
    }
    let orphan_counters_dropped = drop_orphan_counters(&mut entries);
    check_lineage(&entries)?;
    check_depths(&entries, max_depth)?;
    Ok(Backup {
        entries,
        orphan_counters_dropped,
    })
}

fn record_ids(entries: &[Classified]) -> HashSet<&TokenId> {
    entries
        .iter()
        .filter_map(|(_, _, entry)| match entry {
            BackupEntry::Record(record) => Some(&record.id),
            _ => None,
        })
        .collect()
}

/// Usage counters of a token whose record is not in the file are what a delete racing with
/// calls left behind before versions that prevent it: they count uses of nothing, so they are
/// dropped (and counted, for the importer's warning) rather than refusing the whole file.
fn drop_orphan_counters(entries: &mut Vec<Classified>) -> u64 {
    let orphans: Vec<bool> = {
        let records = record_ids(entries);
        entries
            .iter()
            .map(|(_, _, entry)| matches!(entry, BackupEntry::OfToken(id) if !records.contains(id)))
            .collect()
    };
    let dropped = orphans.iter().filter(|o| **o).count() as u64;
    let mut orphan = orphans.into_iter();
    entries.retain(|_| !orphan.next().unwrap_or(false));
    dropped
}

/// An export is a consistent snapshot: every index entry and hash belongs to a token whose
/// record is in the file, every parent is in the file, and no token is both present and
/// deleted. A file that breaks this was edited or spliced, and is refused whole.
fn check_lineage(entries: &[Classified]) -> Result<()> {
    let records = record_ids(entries);
    for (_, _, entry) in entries {
        let missing = match entry {
            BackupEntry::Record(record) => {
                record.parent_id.as_ref().filter(|p| !records.contains(p))
            }
            BackupEntry::OfToken(id) | BackupEntry::Hash(_, id) | BackupEntry::Index(id) => {
                Some(id).filter(|id| !records.contains(id))
            }
            BackupEntry::Tombstone(id) if records.contains(id) => {
                return Err(Error::invalid(format!(
                    "inconsistent backup: token {id} is both in the file and marked deleted"
                )));
            }
            BackupEntry::Audit | BackupEntry::Access | BackupEntry::Tombstone(_) => None,
        };
        if let Some(id) = missing {
            return Err(Error::invalid(format!(
                "inconsistent backup: token {id} is referred to but its record is not in the file"
            )));
        }
    }
    Ok(())
}

/// Lineage the store can hold: no token is its own ancestor, a root has depth 0, every other
/// token's depth is its parent's plus one, and none is deeper than `max_depth`. (Every parent
/// is in the file: `check_lineage` ran first.) A loop would leave records that no command can
/// read or remove, so the file is refused whole, naming the first token at fault.
fn check_depths(entries: &[Classified], max_depth: u8) -> Result<()> {
    let by_id: HashMap<&TokenId, &TokenRecord> = entries
        .iter()
        .filter_map(|(_, _, entry)| match entry {
            BackupEntry::Record(record) => Some((&record.id, record.as_ref())),
            _ => None,
        })
        .collect();
    for (_, _, entry) in entries {
        let BackupEntry::Record(record) = entry else {
            continue;
        };
        let refuse =
            |why: String| Error::invalid(format!("cannot import token {}: {why}", record.id));
        // A lineage longer than any depth can count is broken somewhere; the depth check
        // below names where. Bounding the walk keeps a crafted file linear.
        let mut seen = HashSet::from([&record.id]);
        let mut next = record.parent_id.as_ref();
        while let Some(id) = next.filter(|_| seen.len() <= usize::from(u8::MAX) + 1) {
            if !seen.insert(id) {
                return Err(refuse(if *id == record.id {
                    "its lineage loops back to itself: it is its own ancestor".to_owned()
                } else {
                    format!("its lineage loops at {id}")
                }));
            }
            next = by_id.get(id).and_then(|r| r.parent_id.as_ref());
        }
        let expected = match &record.parent_id {
            None => Some(0),
            Some(parent) => by_id.get(parent).and_then(|p| p.depth.checked_add(1)),
        };
        if expected != Some(record.depth) {
            return Err(refuse(match expected {
                Some(d) => format!("depth {} where its lineage gives {d}", record.depth),
                None => format!("depth {} under a parent at the deepest depth", record.depth),
            }));
        }
        if record.depth > max_depth {
            return Err(refuse(format!(
                "depth {} exceeds the limit of {max_depth} (--max-depth)",
                record.depth
            )));
        }
    }
    Ok(())
}

/// Backups written before tombstones existed remember deletions only in their audit log: a
/// token it names whose record is not in the file was deleted, so it gets a tombstone.
fn tombstones_from_audit(entries: &[Classified]) -> Vec<Classified> {
    let mut known: HashSet<&TokenId> = record_ids(entries);
    for (_, _, entry) in entries {
        if let BackupEntry::Tombstone(id) = entry {
            known.insert(id);
        }
    }
    let mut derived = Vec::new();
    let mut seen = HashSet::new();
    for (_, v, entry) in entries {
        if !matches!(entry, BackupEntry::Audit) {
            continue;
        }
        let Ok(event) = serde_json::from_slice::<AuditEvent>(v) else {
            continue;
        };
        if let Some(id) = event.target
            && !known.contains(&id)
            && seen.insert(id.clone())
        {
            let (k, v) = Store::tombstone_entry(&id, event.at);
            derived.push((k, v, BackupEntry::Tombstone(id)));
        }
    }
    derived
}
