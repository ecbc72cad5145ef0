//! The one place that touches sled.
//!
//! Everything lives in one sled tree under one-byte key prefixes, so that a management change
//! (record, indexes and its audit event) is applied as one atomic `Batch`:
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `t` | token id | record (postcard, compact binary; its secret hashes included) |
//! | `h` | BLAKE3 of a secret | token id, then grace end (8 bytes, ms) when rotated out |
//! | `c` | parent id + child id | empty |
//! | `l` | parent id + expires_at (8 bytes BE, ms; none = all ones) + child id | empty: live (not revoked) children, by expiry |
//! | `s` | status byte + created_at (8 bytes BE) + id | empty: creation order per stored status |
//! | `a` | event id (8 bytes BE) | audit event (JSON) |
//! | `u` | token id | use_count (8) + last_used_at (8): written behind |
//! | `r` | token id | remaining_uses (8): written before the use it counts is allowed |
//! | `d` | token id | deleted_at (8 bytes, ms): a tombstone, so no import brings the token back |
//! | `x` | first entry's time (8 bytes BE, ms) + sequence (8 bytes BE) | a batch of access log entries (postcard): one per writer pass |
//! | `y` | token id + the `x` key's 16 bytes | empty: the batches holding a token's entries (derived) |
//! | `m` | name | the store's own bookkeeping (not exported) |
//!
//! `l` is derived from the records (not exported; rebuilt on import and, once, for stores
//! older than it): counting a token's live children is a range scan from "now" that never
//! visits a revoked or expired child, so minting costs the same after 10,000 of them.
//!
//! Few keys per token, short values, time-ordered ids and small segments keep sled's space
//! amplification down (see BENCHMARKS.md for the measurements behind these choices).
//!
//! Hot records and hashes are also kept in memory. Writers update sled, then the cache, under
//! a version bump; a reader that filled from sled only stores its value if no write happened
//! meanwhile. So the cache never serves a value older than the last completed write.
//!
//! On top of that, a cached secret hash can remember that its chain admitted it (see
//! [`Cached::Admitted`]): valid only at the cache version it was made at, so any write at all
//! forgets every such verdict, and only until the chain's earliest expiry.

use std::collections::HashMap;
use std::fs;
use std::hash::BuildHasherDefault;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use crate::audit::AuditEvent;
use crate::record::{Status, TokenRecord};
use crate::secret::{ID_LEN, SecretHash, TokenId};
use crate::timestamp::Timestamp;

mod access_log;
mod audit_log;
pub use access_log::{AccessEntry, AccessKey, StoredAccess};
pub mod oauth;
mod tombstones;
use tombstones::upgrade_older_store;

const RECORD: u8 = b't';
const HASH: u8 = b'h';
const CHILD: u8 = b'c';
const STATUS: u8 = b's';
/// The stored statuses, in the order their indexes are merged.
const STORED_STATUSES: [Status; 3] = [Status::Active, Status::Paused, Status::Revoked];
/// sled's log segment size: small segments are cleaned sooner, which roughly halves the space
/// a large store takes compared with the 512 KiB default.
const SEGMENT_BYTES: usize = 64 * 1024;
const AUDIT: u8 = b'a';
const USAGE: u8 = b'u';
const REMAINING: u8 = b'r';
const TOMBSTONE: u8 = b'd';
const META: u8 = b'm';
const LIVE_CHILD: u8 = b'l';
const ACCESS: u8 = b'x';
const ACCESS_BY_TOKEN: u8 = b'y';
/// Marks a store whose live-children index (`l`) is complete.
const LIVE_CHILDREN_DERIVED: &[u8] = b"mlivechildren";
/// Set once the tombstones of a store written before they existed have been derived from its
/// audit log (see [`tombstones::upgrade_older_store`]).
const TOMBSTONES_DERIVED: &[u8] = b"mtombstones";

#[derive(Debug)]
pub enum StoreError {
    /// The database is held by another process.
    Locked(String),
    Sled(sled::Error),
    Corrupt(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Locked(m) => f.write_str(m),
            StoreError::Sled(e) => write!(f, "storage error: {e}"),
            StoreError::Corrupt(m) => write!(f, "corrupt store: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e)
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// sled's page cache, in bytes.
    pub sled_cache_bytes: u64,
    /// How many token records (and as many secret hashes) to keep decoded in memory.
    pub hot_records: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            sled_cache_bytes: 64 << 20,
            hot_records: 150_000,
        }
    }
}

/// Where a secret hash points: its token, and when a rotated-out secret stops working.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashEntry {
    pub id: TokenId,
    pub grace_until: Option<Timestamp>,
}

/// Usage counters as stored (written behind).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoredUsage {
    pub use_count: u64,
    pub last_used_at: Option<Timestamp>,
}

/// One atomic change: records written (with their previous version, for the indexes), hashes
/// added or retired, records removed, and the audit events that describe it.
#[derive(Default)]
pub struct Change {
    records: Vec<(Option<Arc<TokenRecord>>, TokenRecord)>,
    new_hashes: Vec<(SecretHash, HashEntry)>,
    retired_hashes: Vec<SecretHash>,
    removed: Vec<Arc<TokenRecord>>,
    remaining: Vec<(TokenId, Option<u64>)>,
    audit: Vec<AuditEvent>,
}

impl Change {
    pub fn put(&mut self, old: Option<Arc<TokenRecord>>, new: TokenRecord) {
        self.records.push((old, new));
    }
    pub fn add_hash(&mut self, hash: SecretHash, entry: HashEntry) {
        self.new_hashes.push((hash, entry));
    }
    /// Forgets one hash (a rotated-out secret whose grace has ended). The caller also drops it
    /// from the record's `hashes`.
    pub fn retire_hash(&mut self, hash: SecretHash) {
        self.retired_hashes.push(hash);
    }
    pub fn remove(&mut self, record: Arc<TokenRecord>) {
        self.removed.push(record);
    }
    /// Sets (or clears, with `None`) a token's durable remaining-uses counter.
    pub fn set_remaining(&mut self, id: TokenId, remaining: Option<u64>) {
        self.remaining.push((id, remaining));
    }
    pub fn audit(&mut self, event: AuditEvent) {
        self.audit.push(event);
    }
    pub fn remaining_updates(&self) -> Vec<(TokenId, Option<u64>)> {
        self.remaining.clone()
    }
    /// Whether the change writes or removes any record (an audit event alone is not a change).
    pub fn writes_records(&self) -> bool {
        !self.records.is_empty() || !self.removed.is_empty()
    }
    pub fn removed_ids(&self) -> Vec<TokenId> {
        self.removed.iter().map(|r| r.id.clone()).collect()
    }
}

struct Cache {
    version: u64,
    records: HashMap<TokenId, Arc<TokenRecord>, BuildHasherDefault<FastHasher>>,
    hashes: HashMap<SecretHash, CachedHash, BuildHasherDefault<FastHasher>>,
}

/// A hash entry in memory, with the hot path's remembered verdict.
struct CachedHash {
    entry: HashEntry,
    admission: Admission,
}

impl CachedHash {
    fn new(entry: HashEntry) -> CachedHash {
        CachedHash {
            entry,
            admission: Admission::default(),
        }
    }
}

/// "The chain admitted this secret at cache version `version - 1`, until `until`." Written by
/// readers under the cache's read lock; every reader of one version computes the same verdict,
/// so concurrent writes store equal values, and `version` is stored last (release) and read
/// first (acquire) so a matching version always comes with its `until`.
#[derive(Default)]
struct Admission {
    /// Cache version + 1; 0 when nothing is remembered.
    version: AtomicU64,
    /// Milliseconds since the epoch; `i64::MAX` when no link expires.
    until: AtomicI64,
}

/// What the hot path finds in memory for a secret hash.
pub enum Cached<'a> {
    /// The chain admitted this secret (rules of authentication, no address rule in the chain)
    /// and nothing has been written since; `now` is before the chain's earliest expiry.
    Admitted,
    /// The token and its ancestors, nearest first, to decide on; `Remember` keeps a verdict
    /// of admission for next time.
    Chain(&'a [&'a TokenRecord], Remember<'a>),
}

/// Where to remember that a chain admitted a secret.
pub struct Remember<'a> {
    slot: Option<(&'a Admission, u64)>,
}

impl Remember<'_> {
    /// For a chain loaded outside the cache: nothing is remembered.
    pub fn nowhere() -> Remember<'static> {
        Remember { slot: None }
    }

    /// Remembers that the chain admits its secret until `until` (its earliest expiry), for as
    /// long as nothing is written.
    pub fn admitted_until(self, until: Option<Timestamp>) {
        if let Some((admission, version)) = self.slot {
            let until = until.map_or(i64::MAX, |t| t.millis());
            admission.until.store(until, Ordering::Relaxed);
            admission.version.store(version + 1, Ordering::Release);
        }
    }
}

/// FxHash-style hashing for the hot caches. SipHash's flooding resistance buys nothing here:
/// the keys are server-generated ids and BLAKE3 outputs, which a client cannot choose.
#[derive(Default)]
struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    /// A final avalanche (murmur3's): hashbrown takes the bucket from the low bits and a tag
    /// from the high ones, and the multiply above leaves the low bits poorly mixed.
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }
}

pub struct Store {
    db: sled::Db,
    cache: RwLock<Cache>,
    capacity: usize,
    next_audit_id: AtomicU64,
    /// The sequence number of the next access log entry.
    next_access_seq: AtomicU64,
    /// How many access log entries there are; -1 until first counted.
    access_count: AtomicI64,
    /// Whether the store is known to keep tombstones (see [`upgrade_older_store`]); the
    /// first change written to a new store records it.
    tombstones_marked: AtomicBool,
    /// Whether the store carries `LIVE_CHILDREN_DERIVED` (a blank store gets it with its first
    /// change).
    live_children_marked: AtomicBool,
    flusher: Flusher,
}

/// Group commit for [`Store::flush`]: each caller takes a ticket after its change was applied;
/// a flush that starts after a ticket was taken makes that change durable, so callers arriving
/// while a flush runs wait for the next one, which one of them runs for all.
#[derive(Default)]
struct Flusher {
    state: Mutex<FlushState>,
    done: Condvar,
}

#[derive(Default)]
struct FlushState {
    /// Tickets handed out.
    taken: u64,
    /// Every ticket up to this one is durable.
    durable: u64,
    running: bool,
}

impl Flusher {
    /// Returns once a call of `flush` that started after this call began has succeeded: the
    /// calling thread runs it, or waits for the one running now and then for the next.
    fn flush_with<E>(
        &self,
        mut flush: impl FnMut() -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let lock = || self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = lock();
        state.taken += 1;
        let ticket = state.taken;
        loop {
            if state.durable >= ticket {
                return Ok(());
            }
            if state.running {
                state = self.done.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            state.running = true;
            let covers = state.taken;
            drop(state);
            let flushed = flush();
            state = lock();
            state.running = false;
            if flushed.is_ok() {
                state.durable = state.durable.max(covers);
            }
            self.done.notify_all();
            flushed?;
        }
    }
}

fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.push(prefix);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

fn status_byte(s: Status) -> u8 {
    match s {
        Status::Active => b'A',
        Status::Paused => b'P',
        Status::Revoked => b'R',
        Status::Expired => b'E',
    }
}

fn status_key(r: &TokenRecord) -> Vec<u8> {
    key(
        STATUS,
        &[
            &[status_byte(r.status)],
            &r.created_at.millis().to_be_bytes(),
            r.id.as_str().as_bytes(),
        ],
    )
}

/// The live-children index entry of `r`: a child that is not revoked, under its parent, by
/// expiry. Paused and (by time) expired children keep theirs; a count skips the expired.
fn live_child_key(r: &TokenRecord) -> Option<Vec<u8>> {
    let parent = r.parent_id.as_ref()?;
    if r.status == Status::Revoked {
        return None;
    }
    let expiry = r
        .scope
        .expires_at
        .map_or(u64::MAX, |e| u64::try_from(e.millis()).unwrap_or(0));
    Some(key(
        LIVE_CHILD,
        &[
            parent.as_str().as_bytes(),
            &expiry.to_be_bytes(),
            r.id.as_str().as_bytes(),
        ],
    ))
}

/// Builds the live-children index of a store written before it existed, once.
fn derive_live_children(db: &sled::Db) -> Result<bool> {
    if db.contains_key(LIVE_CHILDREN_DERIVED)? {
        return Ok(true);
    }
    if db.scan_prefix([RECORD]).next().is_none() {
        // Nothing to index; the first change marks the store.
        return Ok(false);
    }
    let mut batch = sled::Batch::default();
    for entry in db.scan_prefix([RECORD]) {
        let (k, v) = entry?;
        let id = id_from(&k[1..])?;
        if let Some(live) = live_child_key(&decode_record(&id, &v)?) {
            batch.insert(live, &[][..]);
        }
    }
    batch.insert(LIVE_CHILDREN_DERIVED, &[][..]);
    db.apply_batch(batch)?;
    db.flush()?;
    Ok(true)
}

fn child_key(parent: &TokenId, child: &TokenId) -> Vec<u8> {
    key(
        CHILD,
        &[parent.as_str().as_bytes(), child.as_str().as_bytes()],
    )
}

fn id_from(bytes: &[u8]) -> Result<TokenId> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| TokenId::parse(s).ok())
        .ok_or_else(|| StoreError::Corrupt("a key holds an invalid token id".into()))
}

fn u64_from(bytes: &[u8]) -> Result<u64> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt("a counter is not 8 bytes".into()))
}

/// Records are written as this byte, then postcard. Records written before `deny_tools`
/// existed start with the id's length (28), never 0, and decode through `legacy`.
const RECORD_V2: u8 = 0;

fn encode_record(record: &TokenRecord) -> Vec<u8> {
    let mut bytes = vec![RECORD_V2];
    bytes.extend(postcard::to_allocvec(record).expect("records always serialise"));
    bytes
}

fn decode_record(id: &TokenId, bytes: &[u8]) -> Result<TokenRecord> {
    let decoded = match bytes.split_first() {
        Some((&RECORD_V2, rest)) => postcard::from_bytes(rest),
        _ => postcard::from_bytes::<legacy::RecordV1>(bytes).map(legacy::RecordV1::upgrade),
    };
    decoded.map_err(|e| StoreError::Corrupt(format!("record {id}: {e}")))
}

/// The record layout before `deny_tools`: decoded as it was, read as denying nothing.
mod legacy {
    use serde::Deserialize;

    use crate::record::{Actor, Status, TokenRecord};
    use crate::rules::cidr::IpNet;
    use crate::rules::pattern::ToolPattern;
    use crate::rules::scope::Scope;
    use crate::secret::{SecretHash, TokenId};
    use crate::timestamp::Timestamp;

    #[derive(Deserialize)]
    struct ScopeV1 {
        environment: String,
        buckets: Vec<String>,
        tools: Vec<ToolPattern>,
        read_only: bool,
        admin: bool,
        allowed_ips: Vec<IpNet>,
        expires_at: Option<Timestamp>,
        max_uses: Option<u64>,
        rate_limit_per_minute: Option<u32>,
    }

    #[derive(Deserialize)]
    pub(super) struct RecordV1 {
        id: TokenId,
        name: String,
        description: Option<String>,
        scope: ScopeV1,
        status: Status,
        masked: String,
        last4: String,
        parent_id: Option<TokenId>,
        created_by: Actor,
        depth: u8,
        metadata: String,
        created_at: Timestamp,
        updated_at: Timestamp,
        paused_at: Option<Timestamp>,
        revoked_at: Option<Timestamp>,
        rotated_at: Option<Timestamp>,
        hashes: Vec<SecretHash>,
    }

    impl RecordV1 {
        pub(super) fn upgrade(self) -> TokenRecord {
            let s = self.scope;
            TokenRecord {
                id: self.id,
                name: self.name,
                description: self.description,
                scope: Scope {
                    environment: s.environment,
                    buckets: s.buckets,
                    tools: s.tools,
                    read_only: s.read_only,
                    admin: s.admin,
                    allowed_ips: s.allowed_ips,
                    expires_at: s.expires_at,
                    max_uses: s.max_uses,
                    rate_limit_per_minute: s.rate_limit_per_minute,
                    deny_tools: Vec::new(),
                },
                status: self.status,
                masked: self.masked,
                last4: self.last4,
                parent_id: self.parent_id,
                created_by: self.created_by,
                depth: self.depth,
                metadata: serde_json::from_str(&self.metadata).unwrap_or_default(),
                created_at: self.created_at,
                updated_at: self.updated_at,
                paused_at: self.paused_at,
                revoked_at: self.revoked_at,
                rotated_at: self.rotated_at,
                hashes: self.hashes,
            }
        }
    }
}

fn encode_hash_entry(e: &HashEntry) -> Vec<u8> {
    let mut v = e.id.as_str().as_bytes().to_vec();
    if let Some(g) = e.grace_until {
        v.extend_from_slice(&g.millis().to_be_bytes());
    }
    v
}

fn decode_hash_entry(v: &[u8]) -> Result<HashEntry> {
    if v.len() < ID_LEN {
        return Err(StoreError::Corrupt("short hash entry".into()));
    }
    let id = id_from(&v[..ID_LEN])?;
    let grace_until = match &v[ID_LEN..] {
        [] => None,
        rest => Some(
            Timestamp::from_millis(u64_from(rest)? as i64)
                .ok_or_else(|| StoreError::Corrupt("bad grace timestamp".into()))?,
        ),
    };
    Ok(HashEntry { id, grace_until })
}

/// Where in a creation-ordered index a page starts or resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, readable by its owner only.
    pub fn open(dir: &Path, config: &StoreConfig) -> Result<Store> {
        create_private_dir(dir).map_err(|e| {
            StoreError::Corrupt(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(config.sled_cache_bytes)
            .segment_size(SEGMENT_BYTES)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    StoreError::Locked(format!("the database in {} is in use", dir.display()))
                }
                sled::Error::Io(io) if io.to_string().contains("lock") => {
                    StoreError::Locked(format!("the database in {} is in use", dir.display()))
                }
                other => StoreError::Sled(other),
            })?;
        restrict_permissions(dir);
        let tombstones_marked = upgrade_older_store(&db)?;
        let live_children_marked = derive_live_children(&db)?;
        let next_access_seq = Store::newest_access_seq(&db)?;
        let next_audit_id = match db.scan_prefix([AUDIT]).next_back() {
            Some(entry) => u64_from(&entry?.0[1..])? + 1,
            None => 1,
        };
        Ok(Store {
            db,
            cache: RwLock::new(Cache {
                version: 0,
                records: HashMap::default(),
                hashes: HashMap::default(),
            }),
            capacity: config.hot_records.max(1),
            next_audit_id: AtomicU64::new(next_audit_id),
            next_access_seq: AtomicU64::new(next_access_seq),
            access_count: AtomicI64::new(-1),
            tombstones_marked: AtomicBool::new(tombstones_marked),
            live_children_marked: AtomicBool::new(live_children_marked),
            flusher: Flusher::default(),
        })
    }

    /// Makes every change applied before the call durable. Concurrent callers share fsyncs
    /// (group commit, see [`Flusher`]).
    pub fn flush(&self) -> Result<()> {
        self.flusher.flush_with(|| self.db.flush().map(drop))?;
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.db.scan_prefix([RECORD]).next().is_none()
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// How many tokens hold each stored status (active, paused, revoked), counted from the
    /// per-status index: keys only, no record is read or decoded, the hot-record cache is not
    /// touched. Still one key per token: callers keep the answer for a while.
    pub fn count_by_status(&self) -> Result<Vec<(Status, u64)>> {
        STORED_STATUSES
            .iter()
            .map(|&status| {
                let mut count = 0;
                for entry in self.db.scan_prefix([STATUS, status_byte(status)]).keys() {
                    entry?;
                    count += 1;
                }
                Ok((status, count))
            })
            .collect()
    }

    fn cache_read(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    fn cache_write(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A token record, from memory when hot.
    pub fn get(&self, id: &TokenId) -> Result<Option<Arc<TokenRecord>>> {
        let version = {
            let cache = self.cache_read();
            if let Some(r) = cache.records.get(id) {
                return Ok(Some(Arc::clone(r)));
            }
            cache.version
        };
        let Some(bytes) = self.db.get(key(RECORD, &[id.as_str().as_bytes()]))? else {
            return Ok(None);
        };
        let record = Arc::new(decode_record(id, &bytes)?);
        let mut cache = self.cache_write();
        if cache.version == version {
            evict_if_full(&mut cache.records, self.capacity);
            cache.records.insert(id.clone(), Arc::clone(&record));
        }
        Ok(Some(record))
    }

    /// Whether a token record exists, without filling the cache (for checks on paths that
    /// must not evict hot records).
    pub fn exists(&self, id: &TokenId) -> Result<bool> {
        if self.cache_read().records.contains_key(id) {
            return Ok(true);
        }
        Ok(self
            .db
            .contains_key(key(RECORD, &[id.as_str().as_bytes()]))?)
    }

    /// The token a secret hash belongs to, from memory when hot.
    pub fn hash_entry(&self, hash: &SecretHash) -> Result<Option<HashEntry>> {
        let version = {
            let cache = self.cache_read();
            if let Some(e) = cache.hashes.get(hash) {
                return Ok(Some(e.entry.clone()));
            }
            cache.version
        };
        let Some(bytes) = self.db.get(key(HASH, &[&hash.0]))? else {
            return Ok(None);
        };
        let entry = decode_hash_entry(&bytes)?;
        let mut cache = self.cache_write();
        if cache.version == version {
            evict_if_full(&mut cache.hashes, self.capacity);
            cache.hashes.insert(*hash, CachedHash::new(entry.clone()));
        }
        Ok(Some(entry))
    }

    /// Runs `decide` over what memory holds for a secret hash, under one read lock and without
    /// cloning records: the hot path of every request. `decide` gets a remembered admission
    /// when one is current (no write since, `now` before the chain's earliest expiry), else the
    /// cached chain. `None` when the hash or any link is not in memory; the caller then takes
    /// the path that loads them.
    pub fn with_cached_chain<R>(
        &self,
        hash: &SecretHash,
        now: Timestamp,
        decide: impl FnOnce(&HashEntry, Cached<'_>) -> R,
    ) -> Option<R> {
        let cache = self.cache_read();
        let cached = cache.hashes.get(hash)?;
        let admission = &cached.admission;
        if admission.version.load(Ordering::Acquire) == cache.version + 1
            && now.millis() < admission.until.load(Ordering::Relaxed)
        {
            return Some(decide(&cached.entry, Cached::Admitted));
        }
        let mut links: Vec<&TokenRecord> = Vec::with_capacity(4);
        let mut next = Some(&cached.entry.id);
        while let Some(id) = next {
            let record = cache.records.get(id)?;
            links.push(record);
            next = record.parent_id.as_ref();
            if links.len() > u8::MAX as usize {
                return None;
            }
        }
        let remember = Remember {
            slot: Some((admission, cache.version)),
        };
        Some(decide(&cached.entry, Cached::Chain(&links, remember)))
    }

    /// The token and its ancestors, nearest first. `None` when any link is missing.
    pub fn chain(&self, id: &TokenId) -> Result<Option<Vec<Arc<TokenRecord>>>> {
        let mut chain = Vec::with_capacity(4);
        let mut next = Some(id.clone());
        while let Some(id) = next {
            let Some(record) = self.get(&id)? else {
                return Ok(None);
            };
            next = record.parent_id.clone();
            chain.push(record);
            if chain.len() > u8::MAX as usize {
                return Err(StoreError::Corrupt(format!("lineage of {id} loops")));
            }
        }
        Ok(Some(chain))
    }

    pub fn children(&self, id: &TokenId) -> Result<Vec<TokenId>> {
        let prefix = key(CHILD, &[id.as_str().as_bytes()]);
        self.db
            .scan_prefix(&prefix)
            .map(|entry| id_from(&entry?.0[prefix.len()..]))
            .collect()
    }

    /// How many children of `parent` are live at `now`: not revoked and unexpired (active or
    /// paused). A range scan of the `l` index from `now` on: revoked and expired children are
    /// never visited, so the cost depends only on the live ones.
    pub fn live_children(&self, parent: &TokenId, now: Timestamp) -> Result<usize> {
        let start_expiry = u64::try_from(now.millis()).unwrap_or(0).saturating_add(1);
        let start = key(
            LIVE_CHILD,
            &[parent.as_str().as_bytes(), &start_expiry.to_be_bytes()],
        );
        // Just past every key of this parent: ids are ASCII, so the last byte can grow.
        let mut end = key(LIVE_CHILD, &[parent.as_str().as_bytes()]);
        *end.last_mut().expect("the key holds the parent id") += 1;
        let mut live = 0;
        for entry in self.db.range(start..end) {
            entry?;
            live += 1;
        }
        Ok(live)
    }

    /// Every descendant of `id`, parents before children.
    pub fn descendants(&self, id: &TokenId) -> Result<Vec<TokenId>> {
        let mut out = Vec::new();
        let mut frontier = vec![id.clone()];
        while let Some(next) = frontier.pop() {
            for child in self.children(&next)? {
                frontier.push(child.clone());
                out.push(child);
            }
        }
        Ok(out)
    }

    /// Every token that a token minted, as (minter, minted), from a scan of every record.
    /// Only `revoke_token include_minted` needs this, rarely (a leaked token's clean-up), so it
    /// reads the records rather than keep a `created_by` index that every create would pay for.
    pub fn minted_by_tokens(&self) -> Result<Vec<(TokenId, TokenId)>> {
        let mut out = Vec::new();
        for entry in self.db.scan_prefix([RECORD]) {
            let (k, v) = entry?;
            let id = id_from(&k[1..])?;
            let record = decode_record(&id, &v)?;
            if let crate::record::Actor::Token(minter) = record.created_by {
                out.push((minter, id));
            }
        }
        Ok(out)
    }

    /// The hashes of `record`'s secrets with where each points (and its grace, if rotated out).
    pub fn hashes_of(&self, record: &TokenRecord) -> Result<Vec<(SecretHash, HashEntry)>> {
        let mut out = Vec::new();
        for hash in &record.hashes {
            if let Some(v) = self.db.get(key(HASH, &[&hash.0]))? {
                out.push((*hash, decode_hash_entry(&v)?));
            }
        }
        Ok(out)
    }

    /// Ids in creation order, from the per-status index of `status`, or from all three stored
    /// statuses merged. Starts after `after` (created_at + id) when given.
    pub fn ids_in_order(
        &self,
        status: Option<Status>,
        order: Order,
        after: Option<(Timestamp, &TokenId)>,
    ) -> impl Iterator<Item = Result<(Timestamp, TokenId)>> + '_ {
        let statuses: Vec<Status> = match status {
            Some(s) => vec![s],
            None => STORED_STATUSES.to_vec(),
        };
        let streams: Vec<_> = statuses
            .into_iter()
            .map(|s| self.status_index(s, order, after).peekable())
            .collect();
        MergeInOrder { streams, order }
    }

    fn status_index(
        &self,
        status: Status,
        order: Order,
        after: Option<(Timestamp, &TokenId)>,
    ) -> Box<dyn Iterator<Item = Result<(Timestamp, TokenId)>> + '_> {
        let prefix = vec![STATUS, status_byte(status)];
        let start = prefix.clone();
        let mut end = prefix.clone();
        *end.last_mut().expect("prefix is non-empty") += 1;
        let at = |t: Timestamp, id: &TokenId| {
            let mut k = prefix.clone();
            k.extend_from_slice(&t.millis().to_be_bytes());
            k.extend_from_slice(id.as_str().as_bytes());
            k
        };
        let iter = match (order, after) {
            (_, None) => self.db.range(start..end),
            (Order::Asc, Some((t, id))) => {
                let mut from = at(t, id);
                from.push(0);
                self.db.range(from..end)
            }
            (Order::Desc, Some((t, id))) => self.db.range(start..at(t, id)),
        };
        let decode = move |entry: sled::Result<(sled::IVec, sled::IVec)>| {
            let (k, _) = entry?;
            let rest = &k[2..];
            if rest.len() != 8 + ID_LEN {
                return Err(StoreError::Corrupt("bad index key".into()));
            }
            let created = Timestamp::from_millis(u64_from(&rest[..8])? as i64)
                .ok_or_else(|| StoreError::Corrupt("bad index timestamp".into()))?;
            Ok((created, id_from(&rest[8..])?))
        };
        match order {
            Order::Asc => Box::new(iter.map(decode)),
            Order::Desc => Box::new(iter.rev().map(decode)),
        }
    }

    pub fn usage(&self, id: &TokenId) -> Result<StoredUsage> {
        let Some(v) = self.db.get(key(USAGE, &[id.as_str().as_bytes()]))? else {
            return Ok(StoredUsage::default());
        };
        if v.len() != 16 {
            return Err(StoreError::Corrupt(format!("usage of {id}")));
        }
        let last = u64_from(&v[8..])? as i64;
        Ok(StoredUsage {
            use_count: u64_from(&v[..8])?,
            last_used_at: (last > 0).then(|| Timestamp::from_millis(last)).flatten(),
        })
    }

    pub fn remaining(&self, id: &TokenId) -> Result<Option<u64>> {
        self.db
            .get(key(REMAINING, &[id.as_str().as_bytes()]))?
            .map(|v| u64_from(&v))
            .transpose()
    }

    /// Writes usage counters (no flush: they are written behind on purpose). The caller makes
    /// sure each token still exists, under the lock that deletions take too.
    pub fn write_usage(&self, usage: &[(TokenId, StoredUsage)]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (id, u) in usage {
            let mut v = u.use_count.to_be_bytes().to_vec();
            let last = u.last_used_at.map(|t| t.millis()).unwrap_or(0) as u64;
            v.extend_from_slice(&last.to_be_bytes());
            batch.insert(key(USAGE, &[id.as_str().as_bytes()]), v);
        }
        self.db.apply_batch(batch)?;
        Ok(())
    }

    /// Writes remaining-use counters. The caller flushes before it lets the uses through, and
    /// makes sure each token still exists, under the lock that deletions take too.
    pub fn write_remaining(&self, remaining: &[(TokenId, u64)]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (id, n) in remaining {
            batch.insert(
                key(REMAINING, &[id.as_str().as_bytes()]),
                &n.to_be_bytes()[..],
            );
        }
        self.db.apply_batch(batch)?;
        Ok(())
    }

    /// Applies `change` atomically, then brings the in-memory cache up to date. Not durable
    /// until `flush`. Callers serialise changes (the service's write lock), so the previous
    /// versions they pass are current.
    pub fn apply(&self, change: Change) -> Result<Vec<AuditEvent>> {
        let mut batch = sled::Batch::default();
        let mut access_removed = 0;
        for (old, new) in &change.records {
            let id = new.id.as_str().as_bytes();
            batch.insert(key(RECORD, &[id]), encode_record(new));
            let old_live = old.as_deref().and_then(live_child_key);
            let new_live = live_child_key(new);
            if old_live != new_live {
                if let Some(k) = old_live {
                    batch.remove(k);
                }
                if let Some(k) = new_live {
                    batch.insert(k, &[][..]);
                }
            }
            match old {
                Some(old) if old.status != new.status => {
                    batch.remove(status_key(old));
                    batch.insert(status_key(new), &[][..]);
                }
                Some(_) => {}
                None => {
                    batch.insert(status_key(new), &[][..]);
                    if let Some(parent) = &new.parent_id {
                        batch.insert(child_key(parent, &new.id), &[][..]);
                    }
                }
            }
        }
        for (hash, entry) in &change.new_hashes {
            batch.insert(key(HASH, &[&hash.0]), encode_hash_entry(entry));
        }
        let mut removed_hashes = change.retired_hashes.clone();
        for hash in &change.retired_hashes {
            batch.remove(key(HASH, &[&hash.0]));
        }
        let deleted_at = Timestamp::now().millis().to_be_bytes();
        for record in &change.removed {
            let id = record.id.as_str().as_bytes();
            batch.insert(key(TOMBSTONE, &[id]), &deleted_at[..]);
            batch.remove(key(RECORD, &[id]));
            batch.remove(status_key(record));
            batch.remove(key(USAGE, &[id]));
            batch.remove(key(REMAINING, &[id]));
            if let Some(parent) = &record.parent_id {
                batch.remove(child_key(parent, &record.id));
            }
            if let Some(k) = live_child_key(record) {
                batch.remove(k);
            }
            for hash in &record.hashes {
                batch.remove(key(HASH, &[&hash.0]));
                removed_hashes.push(*hash);
            }
        }
        if !change.removed.is_empty() {
            let gone: Vec<&TokenId> = change.removed.iter().map(|r| &r.id).collect();
            access_removed = self.remove_access_of(&gone, &mut batch)?;
        }
        for (id, remaining) in &change.remaining {
            let k = key(REMAINING, &[id.as_str().as_bytes()]);
            match remaining {
                Some(n) => batch.insert(k, &n.to_be_bytes()[..]),
                None => batch.remove(k),
            }
        }
        let marking = !self.tombstones_marked.load(Ordering::Relaxed);
        if marking {
            batch.insert(TOMBSTONES_DERIVED, &[][..]);
        }
        let marking_live = !self.live_children_marked.load(Ordering::Relaxed);
        if marking_live {
            batch.insert(LIVE_CHILDREN_DERIVED, &[][..]);
        }
        let mut events = change.audit;
        for event in &mut events {
            event.id = self.next_audit_id.fetch_add(1, Ordering::SeqCst);
            let json = serde_json::to_vec(event).expect("audit events always serialise");
            batch.insert(key(AUDIT, &[&event.id.to_be_bytes()]), json);
        }
        self.db.apply_batch(batch)?;
        if access_removed > 0 {
            self.count_access(-access_removed);
        }
        if marking {
            self.tombstones_marked.store(true, Ordering::Relaxed);
        }
        if marking_live {
            self.live_children_marked.store(true, Ordering::Relaxed);
        }

        let mut cache = self.cache_write();
        cache.version += 1;
        for (_, new) in change.records {
            if let Some(slot) = cache.records.get_mut(&new.id) {
                *slot = Arc::new(new);
            }
        }
        for (hash, entry) in change.new_hashes {
            if let Some(slot) = cache.hashes.get_mut(&hash) {
                *slot = CachedHash::new(entry);
            }
        }
        for record in &change.removed {
            cache.records.remove(&record.id);
        }
        for hash in removed_hashes {
            cache.hashes.remove(&hash);
        }
        Ok(events)
    }

    /// Checks that a key/value pair from a backup is one this store could have written, and
    /// says what it belongs to.
    pub fn classify_entry(key: &[u8], value: &[u8]) -> std::result::Result<BackupEntry, String> {
        let (&prefix, rest) = key.split_first().ok_or("empty key")?;
        let id = |bytes: &[u8]| id_from(bytes).map_err(|e| e.to_string());
        Ok(match prefix {
            RECORD => {
                let id = id(rest)?;
                let record = decode_record(&id, value).map_err(|e| e.to_string())?;
                if record.id != id {
                    return Err(format!("record under key {id} is for {}", record.id));
                }
                BackupEntry::Record(Box::new(record))
            }
            HASH if rest.len() == 32 => {
                let mut hash = [0; 32];
                hash.copy_from_slice(rest);
                let entry = decode_hash_entry(value).map_err(|e| e.to_string())?;
                BackupEntry::Hash(SecretHash(hash), entry.id)
            }
            CHILD if rest.len() == 2 * ID_LEN => {
                id(&rest[..ID_LEN])?;
                BackupEntry::Index(id(&rest[ID_LEN..])?)
            }
            STATUS if rest.len() == 1 + 8 + ID_LEN => BackupEntry::Index(id(&rest[9..])?),
            LIVE_CHILD if rest.len() == ID_LEN + 8 + ID_LEN => {
                id(&rest[..ID_LEN])?;
                BackupEntry::Index(id(&rest[ID_LEN + 8..])?)
            }
            AUDIT if rest.len() == 8 => {
                let event = serde_json::from_slice::<AuditEvent>(value)
                    .map_err(|e| format!("audit event: {e}"))?;
                if event.id != u64_from(rest).map_err(|e| e.to_string())? {
                    return Err(format!("audit event {} under another id's key", event.id));
                }
                BackupEntry::Audit
            }
            ACCESS => {
                Store::check_access_entry(key, value)?;
                BackupEntry::Access
            }
            USAGE if value.len() == 16 => BackupEntry::OfToken(id(rest)?),
            REMAINING if value.len() == 8 => BackupEntry::OfToken(id(rest)?),
            TOMBSTONE if value.len() == 8 => BackupEntry::Tombstone(id(rest)?),
            _ => return Err("unknown or malformed key".to_owned()),
        })
    }

    /// True when the store holds nothing at all: no token and no audit event.
    pub fn is_blank(&self) -> bool {
        self.db.is_empty()
    }

    /// Writes backup entries in one atomic batch, with the status and child index entries of
    /// every record among them rebuilt from the records (never taken from the file), flushes,
    /// and resets the in-memory state derived from storage. Refuses, writing nothing, if any
    /// key is already present. Returns how many entries were written. Entries must have passed
    /// `classify_entry`, and index entries must not be among them.
    pub fn import_entries(
        &self,
        entries: &[(Vec<u8>, Vec<u8>)],
        records: &[&TokenRecord],
    ) -> Result<usize> {
        let mut batch = sled::Batch::default();
        let mut written = 0;
        let indexes = records.iter().flat_map(|r| {
            let child = r
                .parent_id
                .as_ref()
                .map(|p| (child_key(p, &r.id), Vec::new()));
            let live = live_child_key(r).map(|k| (k, Vec::new()));
            std::iter::once((status_key(r), Vec::new()))
                .chain(child)
                .chain(live)
        });
        // Access log batches lose entries of tokens not imported, and get their index.
        let imported: std::collections::HashSet<&TokenId> = records.iter().map(|r| &r.id).collect();
        let kept = |id: &TokenId| imported.contains(id);
        let mut plain = Vec::with_capacity(entries.len());
        let mut access = Vec::new();
        for (k, v) in entries {
            if k.first() == Some(&ACCESS) {
                access.extend(
                    Store::access_batch_for_import(k, v, &kept)?
                        .into_iter()
                        .flatten(),
                );
            } else {
                plain.push((k.clone(), v.clone()));
            }
        }
        for (k, v) in plain.into_iter().chain(indexes).chain(access) {
            if self.db.contains_key(&k)? {
                return Err(StoreError::Corrupt(
                    "a backup entry collides with one already in the store".to_owned(),
                ));
            }
            batch.insert(k, v);
            written += 1;
        }
        if !self.live_children_marked.load(Ordering::Relaxed) {
            // Every record now in the store came with its live-children entry.
            batch.insert(LIVE_CHILDREN_DERIVED, &[][..]);
        }
        self.db.apply_batch(batch)?;
        self.db.flush()?;
        self.live_children_marked.store(true, Ordering::Relaxed);
        let next = match self.db.scan_prefix([AUDIT]).next_back() {
            Some(entry) => u64_from(&entry?.0[1..])? + 1,
            None => 1,
        };
        self.next_audit_id.fetch_max(next, Ordering::SeqCst);
        let mut cache = self.cache_write();
        cache.version += 1;
        cache.records.clear();
        cache.hashes.clear();
        Ok(written)
    }

    /// Every key and value, for `export`, except the store's own bookkeeping.
    pub fn raw_entries(&self) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + '_ {
        self.db
            .iter()
            .filter(|e| {
                !matches!(e, Ok((k, _))
                    if matches!(k.first(), Some(&META | &LIVE_CHILD | &ACCESS_BY_TOKEN)))
            })
            .map(|e| {
                e.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(StoreError::from)
            })
    }
}

/// Merges index streams that are each in creation order into one stream in that order.
struct MergeInOrder<I: Iterator<Item = Result<(Timestamp, TokenId)>>> {
    streams: Vec<std::iter::Peekable<I>>,
    order: Order,
}

impl<I: Iterator<Item = Result<(Timestamp, TokenId)>>> Iterator for MergeInOrder<I> {
    type Item = Result<(Timestamp, TokenId)>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut best: Option<(usize, (Timestamp, TokenId))> = None;
        for (i, stream) in self.streams.iter_mut().enumerate() {
            match stream.peek() {
                None => continue,
                Some(Err(_)) => return stream.next(),
                Some(Ok(head)) => {
                    let better = best.as_ref().is_none_or(|(_, b)| match self.order {
                        Order::Asc => head < b,
                        Order::Desc => head > b,
                    });
                    if better {
                        best = Some((i, head.clone()));
                    }
                }
            }
        }
        let (i, _) = best?;
        self.streams[i].next()
    }
}

fn evict_if_full<K, V, S>(map: &mut HashMap<K, V, S>, capacity: usize) {
    if map.len() >= capacity {
        // Drop an arbitrary tenth: cheap, and hot entries come back on their next use.
        let mut drop = capacity / 10 + 1;
        map.retain(|_, _| {
            if drop > 0 {
                drop -= 1;
                false
            } else {
                true
            }
        });
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
    }
    #[cfg(not(unix))]
    {
        fs::create_dir_all(dir)
    }
}

/// Makes the files sled created readable by the owner only (the directory is already 0700).
fn restrict_permissions(dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = fs::read_dir(&d) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let mode = if path.is_dir() { 0o700 } else { 0o600 };
                let _ = fs::set_permissions(&path, fs::Permissions::from_mode(mode));
                if path.is_dir() {
                    stack.push(path);
                }
            }
        }
    }
}

/// What one backup entry belongs to.
#[derive(Debug)]
pub enum BackupEntry {
    /// A token's record.
    Record(Box<TokenRecord>),
    /// A usage counter of this token.
    OfToken(TokenId),
    /// A secret hash, and the token it authenticates as.
    Hash(SecretHash, TokenId),
    /// A status or child index entry of this token: rebuilt from the records on import.
    Index(TokenId),
    /// An audit event.
    Audit,
    /// A batch of access log entries (an import drops entries of tokens it does not bring).
    Access,
    /// A deleted token's tombstone.
    Tombstone(TokenId),
}

#[cfg(test)]
mod record_encoding_tests {
    use super::*;
    use crate::record::{Actor, Status};
    use crate::rules::pattern::ToolPattern;
    use crate::rules::scope::Scope;
    use crate::secret::Secret;

    fn sample() -> TokenRecord {
        let secret = Secret::generate();
        let now = Timestamp::now();
        TokenRecord {
            id: TokenId::generate(),
            name: "n".into(),
            description: Some("d".into()),
            scope: Scope {
                buckets: vec!["fs".into()],
                tools: vec![ToolPattern::parse("fs__*").unwrap()],
                read_only: true,
                max_uses: Some(3),
                ..Scope::unlimited("default")
            },
            status: Status::Active,
            masked: secret.masked(),
            last4: secret.last4().to_owned(),
            parent_id: None,
            created_by: Actor::Owner,
            depth: 0,
            metadata: serde_json::Map::new(),
            created_at: now,
            updated_at: now,
            paused_at: None,
            revoked_at: None,
            rotated_at: None,
            hashes: vec![secret.hash()],
        }
    }

    #[test]
    fn records_stored_before_deny_tools_still_decode() {
        let r = sample();
        let s = &r.scope;
        // The old layout, field by field (postcard writes a struct as its fields in order).
        let old = postcard::to_allocvec(&(
            (&r.id, &r.name, &r.description),
            (
                &s.environment,
                &s.buckets,
                &s.tools,
                s.read_only,
                s.admin,
                &s.allowed_ips,
                s.expires_at,
                s.max_uses,
                s.rate_limit_per_minute,
            ),
            (
                &r.status,
                &r.masked,
                &r.last4,
                &r.parent_id,
                &r.created_by,
                r.depth,
                "{}",
            ),
            (
                r.created_at,
                r.updated_at,
                r.paused_at,
                r.revoked_at,
                r.rotated_at,
                &r.hashes,
            ),
        ))
        .unwrap();
        assert_eq!(decode_record(&r.id, &old).unwrap(), r);
    }

    #[test]
    fn records_round_trip_with_their_denials() {
        let mut r = sample();
        r.scope.deny_tools = vec![ToolPattern::parse("fs__write_*").unwrap()];
        assert_eq!(decode_record(&r.id, &encode_record(&r)).unwrap(), r);
    }
}

/// Group commit, deterministically: a stand-in for sled's flush records which changes each
/// flush covered (those applied before it started) and can be held mid-flush, so a test can
/// make a change while a flush is already running (ARCHITECTURE invariant 7).
#[cfg(test)]
mod group_commit_tests {
    use super::Flusher;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::mpsc::{Receiver, Sender, channel};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// A fake database: changes are numbered; a flush makes durable what was applied when it
    /// started.
    #[derive(Default)]
    struct Db {
        applied: AtomicU64,
        durable: AtomicU64,
        flushes: AtomicU64,
        /// The first flush reports that it started and waits for a release.
        hold_first: AtomicBool,
        /// The first flush fails (after its hold).
        fail_first: AtomicBool,
        started: Mutex<Option<Sender<()>>>,
        release: Mutex<Option<Receiver<()>>>,
    }

    impl Db {
        fn apply(&self) -> u64 {
            self.applied.fetch_add(1, Ordering::SeqCst) + 1
        }

        fn flush(&self) -> Result<(), String> {
            let covers = self.applied.load(Ordering::SeqCst);
            let first = self.flushes.fetch_add(1, Ordering::SeqCst) == 0;
            if first && self.hold_first.load(Ordering::SeqCst) {
                self.started
                    .lock()
                    .unwrap()
                    .take()
                    .unwrap()
                    .send(())
                    .unwrap();
                let release = self.release.lock().unwrap().take().unwrap();
                release.recv().unwrap();
            }
            if first && self.fail_first.load(Ordering::SeqCst) {
                return Err("disk full".to_owned());
            }
            self.durable.fetch_max(covers, Ordering::SeqCst);
            Ok(())
        }

        /// Applies a change, flushes through `flusher`, and returns (change, whether it was
        /// durable when the flush returned, the flush's outcome).
        fn write(&self, flusher: &Flusher) -> (u64, bool, Result<(), String>) {
            let change = self.apply();
            let outcome = flusher.flush_with(|| self.flush());
            let durable = self.durable.load(Ordering::SeqCst) >= change;
            (change, durable, outcome)
        }
    }

    /// A database whose first flush is held until the returned sender releases it.
    fn held(fail_first: bool) -> (Arc<Db>, Receiver<()>, Sender<()>) {
        let (started_tx, started_rx) = channel();
        let (release_tx, release_rx) = channel();
        let db = Db {
            hold_first: AtomicBool::new(true),
            fail_first: AtomicBool::new(fail_first),
            started: Mutex::new(Some(started_tx)),
            release: Mutex::new(Some(release_rx)),
            ..Db::default()
        };
        (Arc::new(db), started_rx, release_tx)
    }

    fn wait_for_tickets(flusher: &Flusher, tickets: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while flusher.state.lock().unwrap().taken < tickets {
            assert!(Instant::now() < deadline, "writers never asked to flush");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_flush_already_running_never_covers_a_later_change() {
        let flusher = Arc::new(Flusher::default());
        let (db, started, release) = held(false);
        let first = {
            let (db, flusher) = (Arc::clone(&db), Arc::clone(&flusher));
            std::thread::spawn(move || db.write(&flusher))
        };
        started
            .recv_timeout(Duration::from_secs(10))
            .expect("the first writer never started a flush");
        // Two changes applied while the first flush runs: it must not count for them.
        let later: Vec<_> = (0..2)
            .map(|_| {
                let (db, flusher) = (Arc::clone(&db), Arc::clone(&flusher));
                std::thread::spawn(move || db.write(&flusher))
            })
            .collect();
        wait_for_tickets(&flusher, 3);
        release.send(()).unwrap();
        let (change, durable, outcome) = first.join().unwrap();
        assert_eq!((change, durable, outcome), (1, true, Ok(())));
        for writer in later {
            let (change, durable, outcome) = writer.join().unwrap();
            assert_eq!(outcome, Ok(()));
            assert!(
                durable,
                "change {change} was applied after the running flush started, yet its flush \
                 returned before a later flush made it durable"
            );
        }
        // The two later writers shared one flush: group commit.
        assert_eq!(db.flushes.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_failed_flush_covers_nothing_and_the_next_caller_flushes_again() {
        let flusher = Arc::new(Flusher::default());
        let (db, started, release) = held(true);
        let first = {
            let (db, flusher) = (Arc::clone(&db), Arc::clone(&flusher));
            std::thread::spawn(move || db.write(&flusher))
        };
        started
            .recv_timeout(Duration::from_secs(10))
            .expect("the first writer never started a flush");
        let second = {
            let (db, flusher) = (Arc::clone(&db), Arc::clone(&flusher));
            std::thread::spawn(move || db.write(&flusher))
        };
        wait_for_tickets(&flusher, 2);
        release.send(()).unwrap();
        // The first writer hears of its failure. (Whether its change reads as durable by the
        // time it looks depends on how soon the second writer's flush runs: not asserted.)
        let (_, _, outcome) = first.join().unwrap();
        assert_eq!(outcome, Err("disk full".to_owned()));
        let (_, durable, outcome) = second.join().unwrap();
        assert_eq!(outcome, Ok(()));
        assert!(
            durable,
            "a failed flush made a waiting change count as durable"
        );
        assert_eq!(db.flushes.load(Ordering::SeqCst), 2);
        // The failed change is durable once anyone flushes again.
        assert_eq!(db.write(&flusher).2, Ok(()));
        assert_eq!(db.durable.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn many_concurrent_writers_each_return_only_once_durable() {
        let flusher = Arc::new(Flusher::default());
        let db = Arc::new(Db::default());
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let (db, flusher) = (Arc::clone(&db), Arc::clone(&flusher));
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let (change, durable, outcome) = db.write(&flusher);
                        assert_eq!(outcome, Ok(()));
                        assert!(durable, "change {change} returned before it was durable");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        assert_eq!(db.durable.load(Ordering::SeqCst), 1600);
        assert!(db.flushes.load(Ordering::SeqCst) <= 1600);
    }
}
