//! Backups are trusted only as far as they are consistent: a merge never brings back a deleted
//! token, and a file edited to widen a token, smuggle in a secret hash or plant a bad index
//! entry is refused or repaired, never written as it is. (Cases found in review.)

mod core_support;

use core_support::*;
use tokenwarden::record::TokenRecord;
use tokenwarden::secret::Secret;
use tokenwarden::service::Caller;
use tokenwarden::service::requests::ListTokens;

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
