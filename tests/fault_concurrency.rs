//! Concurrency (SPEC §4, §8): 8 clients × 500 mixed operations on one shared token forest,
//! in process against the real sled store — minting children (as the owner and as the parent
//! token itself), revoking one another's ancestors, narrowing parents while children are
//! minted, pausing, resuming, rotating. Afterwards, and again after reopening the store, every
//! invariant holds: no live descendant of a revoked token, no stored scope beyond its parent's,
//! and every refusal was one of the expected codes (never `internal`).

#[path = "core_support/mod.rs"]
mod core_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread;

use core_support::*;
use tokenwarden::error::ErrorCode;
use tokenwarden::record::Status;
use tokenwarden::secret::TokenId;
use tokenwarden::service::requests::{CreateToken, RotateToken, ScopeToken};
use tokenwarden::service::{Caller, Service};

const CLIENTS: usize = 8;
const OPERATIONS: usize = 500;
const BUCKETS: [&str; 4] = ["a", "b", "c", "d"];
const TOOLS: [&str; 4] = ["whoami", "list_tokens", "create_token", "get_token"];

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Every token made so far: id → its current secret's caller identity.
type Pool = Arc<Mutex<Vec<TokenId>>>;

fn pick(pool: &Pool, rng: &mut Rng) -> TokenId {
    let pool = pool.lock().unwrap();
    pool[rng.below(pool.len())].clone()
}

/// One client's mixed operations. Returns how many succeeded and the codes of the refusals.
fn client(service: &Service, pool: &Pool, seed: u64) -> (usize, HashMap<&'static str, usize>) {
    let mut rng = Rng(seed);
    let mut ok = 0;
    let mut refused: HashMap<&'static str, usize> = HashMap::new();
    for n in 0..OPERATIONS {
        let target = pick(pool, &mut rng);
        let id = target.to_string();
        let result: Result<(), tokenwarden::error::Error> = match rng.below(10) {
            // Mint a child, as the owner naming the parent or as the parent token itself.
            0..=3 => {
                let by = if rng.below(2) == 0 {
                    Caller::Owner
                } else {
                    Caller::Token(target.clone())
                };
                let parent = matches!(by, Caller::Owner).then(|| id.clone());
                let bucket = BUCKETS[rng.below(BUCKETS.len())];
                service
                    .create_token(
                        &by,
                        CreateToken {
                            name: format!("c{n}"),
                            parent,
                            buckets: (rng.below(2) == 0).then(|| vec![bucket.to_owned()]),
                            ..CreateToken::default()
                        },
                    )
                    .map(|issued| pool.lock().unwrap().push(issued.record.id.clone()))
            }
            // Narrow a token (often an ancestor of tokens being minted right now).
            4..=5 => {
                let request = if rng.below(2) == 0 {
                    ScopeToken {
                        id,
                        remove_buckets: Some(vec![BUCKETS[rng.below(BUCKETS.len())].to_owned()]),
                        ..ScopeToken::default()
                    }
                } else {
                    ScopeToken {
                        id,
                        remove_tools: Some(vec![TOOLS[rng.below(TOOLS.len())].to_owned()]),
                        ..ScopeToken::default()
                    }
                };
                service.scope_token(&Caller::Owner, request).map(drop)
            }
            6 => service
                .pause_token(&Caller::Owner, token_ref(&target))
                .map(drop),
            7 => service
                .resume_token(&Caller::Owner, token_ref(&target))
                .map(drop),
            8 => service
                .rotate_token(
                    &Caller::Owner,
                    RotateToken {
                        id,
                        grace_seconds: Some(0),
                    },
                )
                .map(drop),
            // Revoke, rarely and never a root, so the forest keeps growing while parts of it
            // die (including ancestors of tokens other clients are minting under).
            _ if rng.below(3) == 0 && !is_root(service, &target) => service
                .revoke_token(&Caller::Owner, token_ref(&target))
                .map(drop),
            _ => service
                .get_token(&Caller::Owner, token_ref(&target))
                .map(drop),
        };
        match result {
            Ok(()) => ok += 1,
            Err(e) => *refused.entry(e.code.as_str()).or_default() += 1,
        }
    }
    (ok, refused)
}

fn is_root(service: &Service, id: &TokenId) -> bool {
    service
        .store()
        .get(id)
        .unwrap()
        .is_some_and(|r| r.parent_id.is_none())
}

/// Checks the stored forest: returns the violations.
fn violations(service: &Service, ids: &[TokenId]) -> Vec<String> {
    let store = service.store();
    let mut found = Vec::new();
    for id in ids {
        let record = store
            .get(id)
            .unwrap()
            .expect("no token is deleted in this test");
        let Some(parent_id) = &record.parent_id else {
            continue;
        };
        let parent = store
            .get(parent_id)
            .unwrap()
            .expect("parents outlive children");
        if parent.status == Status::Revoked && record.status != Status::Revoked {
            found.push(format!(
                "{id} is {:?} under revoked {parent_id}",
                record.status
            ));
        }
        let exceeding = record.scope.fields_exceeding(&parent.scope);
        if !exceeding.is_empty() {
            found.push(format!(
                "{id} exceeds its parent {parent_id} in {exceeding:?}"
            ));
        }
    }
    found
}

#[test]
fn invariants_hold_after_concurrent_mixed_operations() {
    let fx = Fixture::new();
    let service = &fx.service;
    let pool: Pool = Arc::new(Mutex::new(Vec::new()));
    for i in 0..4 {
        let issued = root(service, &format!("root{i}"), &TOOLS, &BUCKETS);
        pool.lock().unwrap().push(issued.record.id.clone());
    }

    let outcomes: Vec<(usize, HashMap<&'static str, usize>)> = thread::scope(|scope| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let pool = Arc::clone(&pool);
                scope.spawn(move || client(service, &pool, 0x9E37_79B9_7F4A_7C15 ^ (c as u64 + 1)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a client panicked"))
            .collect()
    });

    let succeeded: usize = outcomes.iter().map(|(ok, _)| ok).sum();
    let mut refused: HashMap<&'static str, usize> = HashMap::new();
    for (_, r) in &outcomes {
        for (code, n) in r {
            *refused.entry(*code).or_default() += n;
        }
    }
    let ids = pool.lock().unwrap().clone();
    let revoked = ids
        .iter()
        .filter(|id| service.store().get(id).unwrap().unwrap().status == Status::Revoked)
        .count();
    println!(
        "{CLIENTS}×{OPERATIONS} operations: {succeeded} succeeded, refused {refused:?}; {} tokens, {revoked} revoked",
        ids.len()
    );
    let expected = [
        ErrorCode::Conflict,
        ErrorCode::Forbidden,
        ErrorCode::ScopeExceedsParent,
        ErrorCode::InvalidArgument,
    ];
    for code in refused.keys() {
        assert!(
            expected.iter().any(|c| c.as_str() == *code),
            "unexpected refusal code {code}"
        );
    }
    assert!(
        succeeded > CLIENTS * OPERATIONS / 5,
        "too few operations succeeded to test anything"
    );
    assert!(
        ids.len() > 100 && revoked > 10,
        "the forest must grow and be cut"
    );

    let found = violations(service, &ids);
    assert!(found.is_empty(), "invariants broken:\n{}", found.join("\n"));

    let fx = fx.reopen();
    let found = violations(&fx.service, &ids);
    assert!(
        found.is_empty(),
        "invariants broken after reopening:\n{}",
        found.join("\n")
    );
}
