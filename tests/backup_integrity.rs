//! Backups are trusted only as far as they are consistent: a merge never brings back a deleted
//! token, and a file edited to widen a token, smuggle in a secret hash or plant a bad index
//! entry is refused or repaired, never written as it is. (Cases found in review.)

mod core_support;

use core_support::*;
use tokenwarden::record::TokenRecord;
use tokenwarden::secret::Secret;
use tokenwarden::service::requests::ListTokens;
use tokenwarden::service::{Caller, Service};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// The store's entries, as `export` writes them.
fn export(f: &Fixture) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    f.service.export(&mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                unhex(v["k"].as_str().unwrap()),
                unhex(v["v"].as_str().unwrap()),
            )
        })
        .collect()
}

/// A backup file holding `entries`, with a header that counts them.
fn backup(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut s = format!(
        "{{\"format\":\"tokenwarden-export\",\"version\":1,\"entries\":{}}}\n",
        entries.len()
    );
    for (k, v) in entries {
        s += &format!("{{\"k\":\"{}\",\"v\":\"{}\"}}\n", hex(k), hex(v));
    }
    s.into_bytes()
}

fn record_key(id: &str) -> Vec<u8> {
    [&b"t"[..], id.as_bytes()].concat()
}

#[test]
fn a_merge_never_brings_back_a_deleted_token() {
    let f = Fixture::new();
    let leaked = root(&f.service, "leaked", &[], &[]);
    let child = child_of(&f.service, &leaked, "child");
    let entries = export(&f);
    f.service
        .delete_token(&Caller::Owner, token_ref(&leaked.record.id))
        .unwrap();
    let imported = f.service.import(&mut &backup(&entries)[..], true).unwrap();
    assert_eq!(imported.entries_written, 0);
    assert!(f.service.authenticate(&leaked.token, None).is_err());
    assert!(f.service.authenticate(&child.token, None).is_err());
}

#[test]
fn an_edited_token_wider_than_its_parent_is_refused() {
    let source = Fixture::new();
    let p = root(&source.service, "p", &["whoami", "create_token"], &[]);
    let a = child_of(&source.service, &p, "a");
    let b = child_of(&source.service, &a, "b");
    let mut entries = export(&source);
    let key = record_key(b.record.id.as_str());
    for (_, v) in entries.iter_mut().filter(|(k, _)| *k == key) {
        // A stored record is a version byte, then postcard.
        let (version, encoded) = v.split_first().unwrap();
        let mut record: TokenRecord = postcard::from_bytes(encoded).unwrap();
        record.scope.admin = true;
        *v = [vec![*version], postcard::to_allocvec(&record).unwrap()].concat();
    }
    let target = Fixture::new();
    let err = target
        .service
        .import(&mut &backup(&entries)[..], false)
        .unwrap_err();
    assert!(err.message.contains("exceeds its parent"), "{err}");
    assert!(target.service.store().is_blank(), "nothing is written");
}

#[test]
fn a_smuggled_secret_hash_is_refused() {
    let source = Fixture::new();
    let n = root(&source.service, "n", &[], &[]);
    let mut entries = export(&source);
    let smuggled = Secret::generate();
    entries.push((
        [&b"h"[..], &smuggled.hash().0].concat(),
        n.record.id.as_str().as_bytes().to_vec(),
    ));
    let target = Fixture::new();
    let err = target
        .service
        .import(&mut &backup(&entries)[..], false)
        .unwrap_err();
    assert!(err.message.contains("does not list it"), "{err}");
    assert!(target.service.store().is_blank());
}

#[test]
fn index_entries_are_rebuilt_not_trusted() {
    let source = Fixture::new();
    let keep = root(&source.service, "keep", &[], &[]);
    let mut entries = export(&source);
    entries.push((
        [
            &[b's', b'A'][..],
            &u64::MAX.to_be_bytes(),
            keep.record.id.as_str().as_bytes(),
        ]
        .concat(),
        vec![],
    ));
    let target = Fixture::new();
    target
        .service
        .import(&mut &backup(&entries)[..], false)
        .unwrap();
    let page = target
        .service
        .list_tokens(&Caller::Owner, ListTokens::default())
        .unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].id, keep.record.id);
}

/// Rewrites the record stored under `id` in `entries`.
fn edit_record(entries: &mut [(Vec<u8>, Vec<u8>)], id: &str, edit: impl Fn(&mut TokenRecord)) {
    let key = record_key(id);
    let mut found = false;
    for (_, v) in entries.iter_mut().filter(|(k, _)| *k == key) {
        // Stored records are a version byte (0) followed by postcard.
        assert_eq!(v[0], 0, "record {id} is stored in the current layout");
        let mut record: TokenRecord = postcard::from_bytes(&v[1..]).unwrap();
        edit(&mut record);
        *v = [&[0u8][..], &postcard::to_allocvec(&record).unwrap()].concat();
        found = true;
    }
    assert!(found, "record {id} is in the backup");
}

/// Drops every entry that names `id` (its record, hash, indexes, counters).
fn without_token(entries: &mut Vec<(Vec<u8>, Vec<u8>)>, id: &str) {
    entries.retain(|(k, v)| {
        let names = |bytes: &[u8]| bytes.windows(id.len()).any(|w| w == id.as_bytes());
        !(names(k) || (k[0] == b'h' && names(v)))
    });
}

#[test]
fn a_merge_never_brings_back_a_deleted_descendant_edited_into_a_root() {
    let f = Fixture::new();
    let leaked = root(&f.service, "leaked", &[], &[]);
    let child = child_of(&f.service, &leaked, "child");
    let grandchild = child_of(&f.service, &child, "grandchild");
    let stale = export(&f);
    f.service
        .delete_token(&Caller::Owner, token_ref(&leaked.record.id))
        .unwrap();

    // A stale backup edited so that the deleted child is a root of its own: only the delete
    // target was remembered, so the child and its grandchild came back with working secrets.
    let mut edited = stale.clone();
    without_token(&mut edited, leaked.record.id.as_str());
    edit_record(&mut edited, child.record.id.as_str(), |r| {
        r.parent_id = None;
        r.depth = 0;
    });
    edit_record(&mut edited, grandchild.record.id.as_str(), |r| r.depth = 1);
    let imported = f.service.import(&mut &backup(&edited)[..], true).unwrap();
    assert_eq!(imported.entries_written, 0, "nothing deleted comes back");
    for secret in [&leaked.token, &child.token, &grandchild.token] {
        assert!(f.service.authenticate(secret, None).is_err());
    }

    // The store's tombstones travel with its backups: a store restored from a backup taken
    // after the deletion refuses the stale file too, even with its audit log gone.
    let restored = Fixture::new();
    restored
        .service
        .import(&mut &backup(&export(&f))[..], false)
        .unwrap();
    let imported = restored
        .service
        .import(&mut &backup(&edited)[..], true)
        .unwrap();
    assert_eq!(imported.entries_written, 0);
    assert!(restored.service.authenticate(&child.token, None).is_err());
}

#[test]
fn deleted_ids_do_not_depend_on_the_audit_log() {
    let mut config = tokenwarden::service::ServiceConfig::default();
    config.audit_retention.max_events = 1;
    let f = Fixture::with_config(config);
    let gone = root(&f.service, "gone", &[], &[]);
    let under = child_of(&f.service, &gone, "under");
    let stale = export(&f);
    f.service
        .delete_token(&Caller::Owner, token_ref(&gone.record.id))
        .unwrap();
    assert!(f.service.prune_audit().unwrap() > 0);
    let events: Vec<_> = f.service.store().audit_events(None).collect();
    assert_eq!(events.len(), 1, "only the pruning's own event is left");
    let imported = f.service.import(&mut &backup(&stale)[..], true).unwrap();
    assert_eq!(imported.entries_written, 0);
    assert!(f.service.authenticate(&under.token, None).is_err());
}

#[test]
fn a_lineage_that_loops_is_refused_naming_the_record() {
    let source = Fixture::new();
    let a = root(&source.service, "a", &[], &[]);
    let b = root(&source.service, "b", &[], &[]);
    let mut entries = export(&source);
    // Each names the other as parent at the deepest depth, so parent depth + 1 saturates.
    edit_record(&mut entries, a.record.id.as_str(), |r| {
        r.parent_id = Some(b.record.id.clone());
        r.depth = u8::MAX;
    });
    edit_record(&mut entries, b.record.id.as_str(), |r| {
        r.parent_id = Some(a.record.id.clone());
        r.depth = u8::MAX;
    });
    for merge in [false, true] {
        let target = Fixture::new();
        let err = target
            .service
            .import(&mut &backup(&entries)[..], merge)
            .unwrap_err();
        assert!(err.message.contains("loops"), "{err}");
        assert!(
            err.message.contains(a.record.id.as_str())
                || err.message.contains(b.record.id.as_str()),
            "names the record: {err}"
        );
        assert_eq!(err.message.lines().count(), 1);
        assert!(target.service.store().is_blank(), "nothing is written");
    }
}

#[test]
fn a_depth_that_skips_or_exceeds_the_limit_is_refused() {
    let source = Fixture::new();
    let p = root(&source.service, "p", &[], &[]);
    let c = child_of(&source.service, &p, "c");
    let exported = export(&source);

    let mut skips = exported.clone();
    edit_record(&mut skips, c.record.id.as_str(), |r| r.depth = 3);
    let mut root_deep = exported.clone();
    edit_record(&mut root_deep, p.record.id.as_str(), |r| r.depth = 1);
    for entries in [skips, root_deep] {
        let target = Fixture::new();
        let err = target
            .service
            .import(&mut &backup(&entries)[..], false)
            .unwrap_err();
        assert!(err.message.contains("depth"), "{err}");
        assert!(target.service.store().is_blank(), "nothing is written");
    }

    // A lineage built under a higher --max-depth does not fit a store run with the default.
    let deep_config = tokenwarden::service::ServiceConfig {
        max_depth: 12,
        ..Default::default()
    };
    let deep = Fixture::with_config(deep_config);
    let mut last = root(&deep.service, "d0", &[], &[]);
    for depth in 1..=9 {
        last = child_of(&deep.service, &last, &format!("d{depth}"));
    }
    let target = Fixture::new();
    let err = target
        .service
        .import(&mut &backup(&export(&deep))[..], false)
        .unwrap_err();
    assert!(err.message.contains("exceeds the limit of 8"), "{err}");
    assert!(err.message.contains(last.record.id.as_str()), "{err}");
    assert!(target.service.store().is_blank(), "nothing is written");
}

#[test]
fn orphan_usage_counters_of_older_backups_are_dropped_not_fatal() {
    let source = Fixture::new();
    let kept = root(&source.service, "kept", &[], &[]);
    let mut entries = export(&source);
    let ghost = tokenwarden::secret::TokenId::generate();
    let ghost_id = ghost.as_str().as_bytes();
    entries.push(([&b"u"[..], ghost_id].concat(), vec![0; 16]));
    entries.push(([&b"r"[..], ghost_id].concat(), 5u64.to_be_bytes().to_vec()));
    for merge in [false, true] {
        let target = Fixture::new();
        let imported = target
            .service
            .import(&mut &backup(&entries)[..], merge)
            .unwrap();
        assert_eq!(imported.orphan_counters_dropped, 2);
        assert!(
            export(&target)
                .iter()
                .all(|(k, _)| !k.windows(ghost_id.len()).any(|w| w == ghost_id)),
            "the orphans are not written"
        );
        assert!(target.service.authenticate(&kept.token, None).is_ok());
    }
}

/// Removes every tombstone and the store's bookkeeping, as a store or backup written before
/// tombstones existed would be.
fn without_tombstones(entries: &mut Vec<(Vec<u8>, Vec<u8>)>) {
    entries.retain(|(k, _)| k[0] != b'd' && k[0] != b'm');
}

#[test]
fn stores_and_backups_older_than_tombstones_still_keep_deletions() {
    let f = Fixture::new();
    let gone = root(&f.service, "gone", &[], &[]);
    let under = child_of(&f.service, &gone, "under");
    let stale = export(&f);
    f.service
        .delete_token(&Caller::Owner, token_ref(&gone.record.id))
        .unwrap();

    // A backup from before tombstones: its audit log says which tokens were deleted.
    let mut old_backup = export(&f);
    without_tombstones(&mut old_backup);
    let restored = Fixture::new();
    restored
        .service
        .import(&mut &backup(&old_backup)[..], false)
        .unwrap();
    let merged = restored
        .service
        .import(&mut &backup(&stale)[..], true)
        .unwrap();
    assert_eq!(merged.entries_written, 0, "nothing deleted comes back");
    assert!(restored.service.authenticate(&under.token, None).is_err());

    // A store from before tombstones: the first open derives them from its audit log.
    let Fixture { dir, service } = f;
    service.shutdown().unwrap();
    drop(service);
    {
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .segment_size(64 * 1024)
            .open()
            .unwrap();
        for entry in db.iter() {
            let (k, _) = entry.unwrap();
            if k[0] == b'd' || k[0] == b'm' {
                db.remove(k).unwrap();
            }
        }
        // And the usage counter a delete racing with calls could leave behind.
        db.insert(
            [&b"u"[..], gone.record.id.as_str().as_bytes()].concat(),
            vec![0; 16],
        )
        .unwrap();
        db.flush().unwrap();
    }
    let service = Service::open(dir.path(), Default::default()).unwrap();
    let merged = service.import(&mut &backup(&stale)[..], true).unwrap();
    assert_eq!(merged.entries_written, 0, "nothing deleted comes back");
    assert!(service.authenticate(&under.token, None).is_err());
    let mut out = Vec::new();
    service.export(&mut out).unwrap();
    let ghost = hex(&[&b"u"[..], gone.record.id.as_str().as_bytes()].concat());
    assert!(
        !String::from_utf8(out).unwrap().contains(&ghost),
        "the upgrade dropped the orphan counter"
    );
}
