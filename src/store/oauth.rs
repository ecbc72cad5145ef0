//! OAuth clients and grants, in their own sled tree (`oauth`) of the same database.
//!
//! A tree of their own keeps them out of `export`/`import`, whose files hold exactly the token
//! store's entries (every entry must belong to a token record): after a restore, connectors
//! register and ask for consent again. Tokens the grants issued are ordinary records in the
//! main tree and are backed up like any other.
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `c` | client id | client (JSON) |
//! | `g` | client id + `/` + grant id | grant (JSON) |
//! | `r` | BLAKE3 of a refresh token | `c` (current) or `s` (spent), then the grant's key |
//! | `a` | access token id | the grant's key |
//! | `e` | BLAKE3 of an ended grant's last refresh token | why and when it ended (JSON) |
//!
//! Refresh tokens are stored only as hashes. A grant remembers its last
//! [`SPENT_REFRESH_KEPT`] spent refresh hashes, so presenting one again is recognised as
//! reuse; older ones are forgotten and answer like unknown tokens.

use serde::{Deserialize, Serialize};

use super::{Result, Store, StoreError};
use crate::secret::TokenId;
use crate::timestamp::Timestamp;

const CLIENT: u8 = b'c';
const GRANT: u8 = b'g';
const REFRESH: u8 = b'r';
const ACCESS: u8 = b'a';
const ENDED: u8 = b'e';
const CURRENT: u8 = b'c';
const SPENT: u8 = b's';
/// How many spent refresh hashes a grant remembers for reuse detection.
pub const SPENT_REFRESH_KEPT: usize = 32;
/// How many earlier access tokens a grant remembers for its sessions (sessions idle out after
/// 10 minutes, so the one before the current is what matters).
pub const PREVIOUS_KEPT: usize = 4;

/// A client registered through dynamic client registration (RFC 7591). Public: no secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_name: String,
    /// Exactly as registered; authorization requests must repeat one of them exactly.
    pub redirect_uris: Vec<String>,
    pub created_at: Timestamp,
}

/// What the person approved on the consent page, applied to every token the grant mints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ApprovedScope {
    /// `None`: the approver's own.
    pub buckets: Option<Vec<String>>,
    /// `None`: the approver's own.
    pub tools: Option<Vec<String>>,
    pub read_only: bool,
    /// Lifetime of each access token, capped by the approver's expiry.
    pub lifetime_seconds: u64,
    /// Whether the person ticked "manage tokens": without it every token the grant mints
    /// denies [`crate::service::MANAGEMENT_TOOLS`]. Grants approved before the choice existed
    /// keep what they were approved with (an empty Tools field then meant every tool).
    #[serde(default = "approved_before_the_choice")]
    pub manage: bool,
}

fn approved_before_the_choice() -> bool {
    true
}

impl ApprovedScope {
    /// What `self` and `added` allow together: a second consent for the same client and
    /// approver adds to its grant (scope step-up). Read-only only if both are; the lifetime is
    /// the newer approval's.
    pub fn joined(&self, added: &ApprovedScope) -> ApprovedScope {
        fn union(a: &Option<Vec<String>>, b: &Option<Vec<String>>) -> Option<Vec<String>> {
            let (a, b) = (a.as_ref()?, b.as_ref()?);
            let mut all = a.clone();
            all.extend(b.iter().filter(|item| !a.contains(item)).cloned());
            Some(all)
        }
        ApprovedScope {
            buckets: union(&self.buckets, &added.buckets),
            tools: union(&self.tools, &added.tools),
            read_only: self.read_only && added.read_only,
            lifetime_seconds: added.lifetime_seconds,
            manage: self.manage || added.manage,
        }
    }
}

/// One client's standing authorisation: who approved it, what it may mint, its current access
/// token and refresh token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub grant_id: String,
    pub client_id: String,
    /// The token whose child every access token of the grant is.
    pub approver: TokenId,
    pub scope: ApprovedScope,
    /// The child minted last (the current access token).
    pub access_token: TokenId,
    pub created_at: Timestamp,
    pub refreshed_at: Option<Timestamp>,
    /// The current refresh token stops working then (never after the approver's expiry).
    pub refresh_expires_at: Timestamp,
    #[serde(with = "hex32")]
    refresh_hash: [u8; 32],
    #[serde(with = "hex32_list")]
    spent: Vec<[u8; 32]>,
    /// The access tokens this grant issued before the current one, newest last (at most
    /// [`PREVIOUS_KEPT`]): a session opened with one of them may carry on with the current one.
    #[serde(default)]
    pub previous: Vec<TokenId>,
    /// When a person last approved it (a consent that added to it), if after `created_at`.
    #[serde(default)]
    pub approved_at: Option<Timestamp>,
}

/// What a refresh token's hash names.
pub enum RefreshLookup {
    Current(Grant),
    /// A refresh token already exchanged: its grant is compromised.
    Spent(Grant),
    /// The last refresh token of a grant that was ended, and why: the connector is told so
    /// rather than "unknown refresh token".
    Ended(EndedGrant),
}

/// What remains of an ended grant under its last refresh token's hash, until that token would
/// have expired: enough to tell the connector why it must ask for consent again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndedGrant {
    pub client_id: String,
    pub reason: String,
    pub ended_at: Timestamp,
    /// When the refresh token would have expired: the entry is pruned after.
    pub until: Timestamp,
}

/// Most ended-grant entries kept; past it, the ones closest to expiry go first.
pub const ENDED_KEPT: usize = 10_000;

/// BLAKE3 of a refresh token: the only form in which it is stored.
pub fn refresh_hash(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

impl Grant {
    pub fn new(
        grant_id: String,
        client_id: String,
        approver: TokenId,
        scope: ApprovedScope,
        access_token: TokenId,
        refresh_token: &str,
        refresh_expires_at: Timestamp,
    ) -> Grant {
        let now = Timestamp::now();
        Grant {
            grant_id,
            client_id,
            approver,
            scope,
            access_token,
            created_at: now,
            refreshed_at: None,
            refresh_expires_at,
            refresh_hash: refresh_hash(refresh_token),
            spent: Vec::new(),
            previous: Vec::new(),
            approved_at: None,
        }
    }

    /// When a person last approved this grant: what rotating its approver is compared with.
    pub fn last_approved(&self) -> Timestamp {
        self.approved_at.unwrap_or(self.created_at)
    }

    fn key(&self) -> Vec<u8> {
        grant_key(&self.client_id, &self.grant_id)
    }
}

fn grant_key(client_id: &str, grant_id: &str) -> Vec<u8> {
    let mut k = vec![GRANT];
    k.extend_from_slice(client_id.as_bytes());
    k.push(b'/');
    k.extend_from_slice(grant_id.as_bytes());
    k
}

fn prefixed(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(prefix);
    k.extend_from_slice(rest);
    k
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("oauth {what}: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("oauth entries always serialise")
}

/// The OAuth tree. Callers serialise read-modify-write sequences themselves (the OAuth
/// module holds one lock for grant changes); each method's writes are one atomic batch.
#[derive(Clone)]
pub struct OAuthStore {
    tree: sled::Tree,
}

impl Store {
    /// The OAuth clients and grants of this database.
    pub fn oauth(&self) -> Result<OAuthStore> {
        Ok(OAuthStore {
            tree: self.db.open_tree("oauth")?,
        })
    }
}

/// The grant's new access and refresh tokens, into `updated` and `batch`: the refresh index
/// points at the grant, the access index moves to the new token, and the old access token
/// joins `previous` (at most [`PREVIOUS_KEPT`]), so a session it opened carries on.
fn reissue(batch: &mut sled::Batch, updated: &mut Grant, access_token: TokenId, refresh: &str) {
    let key = updated.key();
    updated.refresh_hash = refresh_hash(refresh);
    batch.insert(
        prefixed(REFRESH, &updated.refresh_hash),
        [&[CURRENT][..], &key].concat(),
    );
    batch.remove(prefixed(ACCESS, updated.access_token.as_str().as_bytes()));
    batch.insert(prefixed(ACCESS, access_token.as_str().as_bytes()), key);
    let old = std::mem::replace(&mut updated.access_token, access_token);
    updated.previous.push(old);
    if updated.previous.len() > PREVIOUS_KEPT {
        updated.previous.remove(0);
    }
}

impl OAuthStore {
    pub fn flush(&self) -> Result<()> {
        self.tree.flush()?;
        Ok(())
    }

    pub fn client(&self, client_id: &str) -> Result<Option<OAuthClient>> {
        self.tree
            .get(prefixed(CLIENT, client_id.as_bytes()))?
            .map(|v| decode("client", &v))
            .transpose()
    }

    /// Every registered client, oldest id first.
    pub fn clients(&self) -> Result<Vec<OAuthClient>> {
        self.tree
            .scan_prefix([CLIENT])
            .map(|e| decode("client", &e?.1))
            .collect()
    }

    pub fn client_count(&self) -> usize {
        self.tree.scan_prefix([CLIENT]).count()
    }

    /// How many grants are held (keys only).
    pub fn grant_count(&self) -> usize {
        self.tree.scan_prefix([GRANT]).keys().count()
    }

    pub fn has_grants(&self, client_id: &str) -> Result<bool> {
        let mut prefix = vec![GRANT];
        prefix.extend_from_slice(client_id.as_bytes());
        prefix.push(b'/');
        Ok(self.tree.scan_prefix(prefix).next().transpose()?.is_some())
    }

    pub fn insert_client(&self, client: &OAuthClient) -> Result<()> {
        self.tree.insert(
            prefixed(CLIENT, client.client_id.as_bytes()),
            encode(client),
        )?;
        self.flush()
    }

    /// Removes a client and every grant it holds; returns the grants (their tokens are the
    /// caller's to revoke).
    pub fn remove_client(&self, client_id: &str) -> Result<Vec<Grant>> {
        let grants = self.grants_of(client_id)?;
        let mut batch = sled::Batch::default();
        batch.remove(prefixed(CLIENT, client_id.as_bytes()));
        for grant in &grants {
            remove_grant_entries(&mut batch, grant);
        }
        self.tree.apply_batch(batch)?;
        self.flush()?;
        Ok(grants)
    }

    /// Every grant, grouped by client.
    pub fn grants(&self) -> Result<Vec<Grant>> {
        self.tree
            .scan_prefix([GRANT])
            .map(|e| decode("grant", &e?.1))
            .collect()
    }

    fn grants_of(&self, client_id: &str) -> Result<Vec<Grant>> {
        let mut prefix = vec![GRANT];
        prefix.extend_from_slice(client_id.as_bytes());
        prefix.push(b'/');
        self.tree
            .scan_prefix(prefix)
            .map(|e| decode("grant", &e?.1))
            .collect()
    }

    /// The grant `grant_id` of `client_id`.
    pub fn grant(&self, client_id: &str, grant_id: &str) -> Result<Option<Grant>> {
        self.grant_at(&grant_key(client_id, grant_id))
    }

    /// The most recent grant `approver` gave `client_id`, if any.
    pub fn grant_of_approver(&self, client_id: &str, approver: &TokenId) -> Result<Option<Grant>> {
        Ok(self
            .grants_of(client_id)?
            .into_iter()
            .filter(|g| g.approver == *approver)
            .max_by_key(|g| g.created_at))
    }

    fn grant_at(&self, key: &[u8]) -> Result<Option<Grant>> {
        self.tree.get(key)?.map(|v| decode("grant", &v)).transpose()
    }

    pub fn insert_grant(&self, grant: &Grant) -> Result<()> {
        let key = grant.key();
        let mut batch = sled::Batch::default();
        batch.insert(key.clone(), encode(grant));
        batch.insert(
            prefixed(REFRESH, &grant.refresh_hash),
            [&[CURRENT][..], &key].concat(),
        );
        batch.insert(
            prefixed(ACCESS, grant.access_token.as_str().as_bytes()),
            key,
        );
        self.tree.apply_batch(batch)?;
        self.flush()
    }

    /// The grant a refresh token belongs to, and whether that token is its current one.
    pub fn grant_by_refresh(&self, token: &str) -> Result<Option<RefreshLookup>> {
        let hash = refresh_hash(token);
        let Some(entry) = self.tree.get(prefixed(REFRESH, &hash))? else {
            return Ok(self
                .tree
                .get(prefixed(ENDED, &hash))?
                .map(|v| decode("ended grant", &v))
                .transpose()?
                .map(RefreshLookup::Ended));
        };
        let Some((&state, key)) = entry.split_first() else {
            return Err(StoreError::Corrupt("empty oauth refresh entry".into()));
        };
        let Some(grant) = self.grant_at(key)? else {
            return Ok(None);
        };
        Ok(Some(if state == CURRENT {
            RefreshLookup::Current(grant)
        } else {
            RefreshLookup::Spent(grant)
        }))
    }

    /// The grant whose current access token is `token`.
    pub fn grant_by_access_token(&self, token: &TokenId) -> Result<Option<Grant>> {
        match self.tree.get(prefixed(ACCESS, token.as_str().as_bytes()))? {
            Some(key) => self.grant_at(&key),
            None => Ok(None),
        }
    }

    /// Records a refresh: the grant's new access token and refresh token; the old refresh
    /// token becomes spent (remembered for reuse detection), the oldest spent one beyond
    /// [`SPENT_REFRESH_KEPT`] is forgotten.
    pub fn rotate(
        &self,
        grant: &Grant,
        access_token: TokenId,
        refresh_token: &str,
        refresh_expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<Grant> {
        let key = grant.key();
        let mut updated = grant.clone();
        let mut batch = sled::Batch::default();
        updated.spent.push(grant.refresh_hash);
        batch.insert(
            prefixed(REFRESH, &grant.refresh_hash),
            [&[SPENT][..], &key].concat(),
        );
        while updated.spent.len() > SPENT_REFRESH_KEPT {
            let forgotten = updated.spent.remove(0);
            batch.remove(prefixed(REFRESH, &forgotten));
        }
        reissue(&mut batch, &mut updated, access_token, refresh_token);
        updated.refreshed_at = Some(now);
        updated.refresh_expires_at = refresh_expires_at;
        batch.insert(key, encode(&updated));
        self.tree.apply_batch(batch)?;
        self.flush()?;
        Ok(updated)
    }

    /// Records a new consent for a grant (scope step-up): its scope, access token and refresh
    /// token are replaced. The old refresh token is forgotten, not marked spent (the client
    /// did not use it: presenting it later is not a theft), and the old access token joins
    /// `previous`, so a session it opened carries on with the new one.
    pub fn replace(
        &self,
        grant: &Grant,
        scope: ApprovedScope,
        access_token: TokenId,
        refresh_token: &str,
        refresh_expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<Grant> {
        let key = grant.key();
        let mut updated = grant.clone();
        let mut batch = sled::Batch::default();
        batch.remove(prefixed(REFRESH, &grant.refresh_hash));
        reissue(&mut batch, &mut updated, access_token, refresh_token);
        updated.scope = scope;
        updated.approved_at = Some(now);
        updated.refreshed_at = Some(now);
        updated.refresh_expires_at = refresh_expires_at;
        batch.insert(key, encode(&updated));
        self.tree.apply_batch(batch)?;
        self.flush()?;
        Ok(updated)
    }

    /// Ends a grant: its refresh tokens (current and spent) stop working, and its current
    /// refresh token is remembered as ended with `reason` (until it would have expired, at most
    /// [`ENDED_KEPT`] such entries), so the connector learns why.
    pub fn end_grant(&self, grant: &Grant, reason: &str, now: Timestamp) -> Result<()> {
        let mut batch = sled::Batch::default();
        remove_grant_entries(&mut batch, grant);
        let ended = EndedGrant {
            client_id: grant.client_id.clone(),
            reason: reason.to_owned(),
            ended_at: now,
            until: grant.refresh_expires_at,
        };
        if ended.until > now {
            batch.insert(prefixed(ENDED, &grant.refresh_hash), encode(&ended));
        }
        self.prune_ended(&mut batch, now)?;
        self.tree.apply_batch(batch)?;
        self.flush()
    }

    /// Removes ended-grant entries past their time, and the ones closest to it beyond
    /// [`ENDED_KEPT`]. Grants end rarely (a person's action, a reuse), so a scan is fine.
    fn prune_ended(&self, batch: &mut sled::Batch, now: Timestamp) -> Result<()> {
        let mut live = Vec::new();
        for entry in self.tree.scan_prefix([ENDED]) {
            let (key, value) = entry?;
            match decode::<EndedGrant>("ended grant", &value) {
                Ok(ended) if ended.until > now => live.push((ended.until, key)),
                _ => batch.remove(key),
            }
        }
        if live.len() >= ENDED_KEPT {
            live.sort();
            for (_, key) in &live[..=live.len() - ENDED_KEPT] {
                batch.remove(key.clone());
            }
        }
        Ok(())
    }
}

fn remove_grant_entries(batch: &mut sled::Batch, grant: &Grant) {
    batch.remove(grant.key());
    batch.remove(prefixed(REFRESH, &grant.refresh_hash));
    for spent in &grant.spent {
        batch.remove(prefixed(REFRESH, spent));
    }
    batch.remove(prefixed(ACCESS, grant.access_token.as_str().as_bytes()));
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&blake3::Hash::from_bytes(*bytes).to_hex())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        blake3::Hash::from_hex(text)
            .map(|h| *h.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

mod hex32_list {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(list: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            list.iter()
                .map(|b| blake3::Hash::from_bytes(*b).to_hex().to_string()),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        Vec::<String>::deserialize(d)?
            .into_iter()
            .map(|text| {
                blake3::Hash::from_hex(text)
                    .map(|h| *h.as_bytes())
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    fn grant(store: &OAuthStore, refresh: &str) -> Grant {
        let g = Grant::new(
            "g1".into(),
            "c1".into(),
            TokenId::generate(),
            ApprovedScope::default(),
            TokenId::generate(),
            refresh,
            Timestamp::now(),
        );
        store.insert_grant(&g).unwrap();
        g
    }

    #[test]
    fn a_rotated_refresh_token_is_remembered_as_spent_and_removal_forgets_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
        let oauth = store.oauth().unwrap();
        let g = grant(&oauth, "first");
        assert!(matches!(
            oauth.grant_by_refresh("first").unwrap(),
            Some(RefreshLookup::Current(_))
        ));
        let new_access = TokenId::generate();
        let g2 = oauth
            .rotate(
                &g,
                new_access.clone(),
                "second",
                Timestamp::now(),
                Timestamp::now(),
            )
            .unwrap();
        assert!(matches!(
            oauth.grant_by_refresh("first").unwrap(),
            Some(RefreshLookup::Spent(_))
        ));
        assert!(matches!(
            oauth.grant_by_refresh("second").unwrap(),
            Some(RefreshLookup::Current(_))
        ));
        assert!(
            oauth
                .grant_by_access_token(&g.access_token)
                .unwrap()
                .is_none()
        );
        assert_eq!(
            oauth.grant_by_access_token(&new_access).unwrap(),
            Some(g2.clone())
        );
        oauth.end_grant(&g2, "test", Timestamp::now()).unwrap();
        assert!(oauth.grant_by_refresh("first").unwrap().is_none());
        assert!(oauth.grant_by_refresh("second").unwrap().is_none());
        assert!(oauth.grant_by_access_token(&new_access).unwrap().is_none());
        assert_eq!(oauth.tree.len(), 0, "nothing of the grant is left");
        // The token store proper is untouched: backups see none of this.
        assert!(store.is_blank());
    }

    #[test]
    fn an_ended_grant_says_why_until_its_refresh_token_would_have_expired() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
        let oauth = store.oauth().unwrap();
        let now = Timestamp::now();
        let mut g = grant(&oauth, "live");
        g.refresh_expires_at = now.plus_seconds(60).unwrap();
        oauth.end_grant(&g, "approver revoked", now).unwrap();
        match oauth.grant_by_refresh("live").unwrap() {
            Some(RefreshLookup::Ended(ended)) => assert_eq!(ended.reason, "approver revoked"),
            _ => panic!("the ended grant is not remembered"),
        }
        // Pruned once its refresh token would have expired (at the next grant's end).
        let later = now.plus_seconds(61).unwrap();
        let other = grant(&oauth, "other");
        oauth.end_grant(&other, "x", later).unwrap();
        assert!(oauth.grant_by_refresh("live").unwrap().is_none());
    }

    #[test]
    fn spent_hashes_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
        let oauth = store.oauth().unwrap();
        let mut g = grant(&oauth, "r0");
        for i in 1..=(SPENT_REFRESH_KEPT + 5) {
            g = oauth
                .rotate(
                    &g,
                    TokenId::generate(),
                    &format!("r{i}"),
                    Timestamp::now(),
                    Timestamp::now(),
                )
                .unwrap();
        }
        assert_eq!(g.spent.len(), SPENT_REFRESH_KEPT);
        assert!(oauth.grant_by_refresh("r0").unwrap().is_none());
        assert!(matches!(
            oauth.grant_by_refresh(&format!("r{}", 6)).unwrap(),
            Some(RefreshLookup::Spent(_))
        ));
        // grant + current refresh + spent refreshes + access index
        assert_eq!(oauth.tree.len(), 1 + 1 + SPENT_REFRESH_KEPT + 1);
    }
}
