//! The benchmark store: 999,900 tokens in chains of depth 3 (900 roots × 10 × 10 × 10), built
//! once under `target/bench-fixture/` and reused. Leaf secrets are kept beside it in
//! `secrets.txt` (test data only) so benchmarks can present them.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::Map;
use tokenwarden::record::{Actor, Status, TokenRecord};
use tokenwarden::rules::pattern::ToolPattern;
use tokenwarden::rules::scope::Scope;
use tokenwarden::secret::{Secret, TokenId};
use tokenwarden::service::{Service, ServiceConfig};
use tokenwarden::store::{Change, HashEntry};
use tokenwarden::timestamp::Timestamp;

pub const ROOTS: usize = 900;
pub const FANOUT: usize = 10;

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-fixture/1m")
}

fn record(
    id: TokenId,
    secret: &Secret,
    parent: Option<&TokenRecord>,
    now: Timestamp,
    n: usize,
) -> TokenRecord {
    let scope = match parent {
        None => Scope {
            buckets: vec!["a".into(), "b".into(), "c".into()],
            tools: vec![ToolPattern::Any],
            ..Scope::unlimited("default")
        },
        Some(p) => Scope {
            buckets: vec!["a".into(), "b".into()],
            tools: vec![
                ToolPattern::parse("whoami").unwrap(),
                ToolPattern::parse("list_*").unwrap(),
                ToolPattern::parse("get_token").unwrap(),
            ],
            admin: false,
            ..p.scope.clone()
        },
    };
    TokenRecord {
        name: format!("bench token {n}"),
        description: Some("fixture token for benchmarks".into()),
        scope,
        status: Status::Active,
        masked: secret.masked(),
        last4: secret.last4().to_owned(),
        parent_id: parent.map(|p| p.id.clone()),
        created_by: match parent {
            None => Actor::Owner,
            Some(p) => Actor::Token(p.id.clone()),
        },
        depth: parent.map_or(0, |p| p.depth + 1),
        metadata: Map::new(),
        created_at: Timestamp::from_millis(now.millis() + n as i64).unwrap(),
        updated_at: now,
        paused_at: None,
        revoked_at: None,
        rotated_at: None,
        hashes: vec![secret.hash()],
        id,
    }
}

/// Opens the fixture, building it first if needed. Returns the service and the leaf secrets.
pub fn open(config: ServiceConfig) -> (Service, Vec<String>) {
    let dir = dir();
    if !dir.join("complete").exists() {
        build(&dir);
    }
    let service = Service::open(&dir.join("db"), config).expect("open fixture");
    (service, secrets(&dir))
}

pub fn secrets(dir: &Path) -> Vec<String> {
    let file = std::fs::File::open(dir.join("secrets.txt")).expect("fixture secrets");
    BufReader::new(file).lines().map(|l| l.unwrap()).collect()
}

fn build(dir: &Path) {
    let started = Instant::now();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let service = Service::open(&dir.join("db"), ServiceConfig::default()).unwrap();
    let store = service.store();
    let mut leaves = BufWriter::new(std::fs::File::create(dir.join("secrets.txt")).unwrap());
    let now = Timestamp::now();
    let mut n = 0;
    let mut change = Change::default();
    let mut pending = 0;
    let mut add = |change: &mut Change, parent: Option<&TokenRecord>| -> (TokenRecord, Secret) {
        let secret = Secret::generate();
        let rec = record(TokenId::generate(), &secret, parent, now, n);
        n += 1;
        change.add_hash(
            secret.hash(),
            HashEntry {
                id: rec.id.clone(),
                grace_until: None,
            },
        );
        change.put(None, rec.clone());
        (rec, secret)
    };
    for _ in 0..ROOTS {
        let (root, _) = add(&mut change, None);
        for _ in 0..FANOUT {
            let (child, _) = add(&mut change, Some(&root));
            for _ in 0..FANOUT {
                let (grandchild, _) = add(&mut change, Some(&child));
                for _ in 0..FANOUT {
                    let (_, secret) = add(&mut change, Some(&grandchild));
                    writeln!(leaves, "{}", secret.expose()).unwrap();
                    pending += 1;
                }
            }
        }
        if pending >= 10_000 {
            store.apply(std::mem::take(&mut change)).unwrap();
            pending = 0;
        }
    }
    store.apply(change).unwrap();
    store.flush().unwrap();
    leaves.flush().unwrap();
    drop(service);
    std::fs::write(dir.join("complete"), b"").unwrap();
    eprintln!("built the 1M-token fixture in {:.1?}", started.elapsed());
}

/// The service behind an Arc, for benchmarks that share it across threads.
pub fn open_shared(config: ServiceConfig) -> (Arc<Service>, Vec<String>) {
    let (service, secrets) = open(config);
    (Arc::new(service), secrets)
}
