//! Crash durability (SPEC §8): three clients stream create / scope / pause / resume / rotate /
//! revoke calls over HTTP while the server is SIGKILLed at random moments, at least 20 times,
//! and restarted on the same data directory. After every restart, every acknowledged
//! operation must be there: no acknowledged token lost, no acknowledged pause or revocation
//! undone, no rotated-out secret working, and the store opens cleanly every time.
//!
//! A second test spends a `max_uses` token's uses under SIGKILLs: acknowledged uses must stay
//! spent, and no more than `max_uses` calls are ever admitted.
//!
//! `CRASH_SEED=n` replays a run; `CRASH_KILLS=n` changes the number of kills (default 22).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{Value, json};
use tempfile::TempDir;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Active,
    Paused,
    Revoked,
}

/// What the clients know about one token from acknowledged calls.
#[derive(Clone, Debug)]
struct Known {
    secret: String,
    /// Secrets rotated out with no grace: must never work again.
    retired: Vec<String>,
    status: Expect,
    /// Exact buckets of a root token (children are clamped by their parents, not tracked).
    buckets: Option<Vec<String>>,
    parent: Option<String>,
    /// The client that made and changes it: clients never touch each other's tokens.
    worker: usize,
    /// False once a call on this token (or a revocation of its parent) was cut off by a kill:
    /// then either outcome is allowed, but the token must still exist.
    certain: bool,
}

type Model = Arc<Mutex<HashMap<String, Known>>>;

/// xorshift64*: a small deterministic generator, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// One client's stream of operations on its own tokens, until the server dies under it.
/// Counts the operations acknowledged in `acked`.
async fn stream_operations(
    url: String,
    admin: String,
    model: Model,
    refusals: Arc<Mutex<Vec<String>>>,
    acked: Arc<AtomicU64>,
    mut rng: Rng,
    worker: usize,
) {
    // rmcp's client retries a broken connection; a call that has not answered within the
    // limit is cut off by the kill, i.e. unacknowledged.
    const LIMIT: Duration = Duration::from_secs(1);
    let Ok(Ok(client)) = tokio::time::timeout(LIMIT, try_connect_http(&url, &admin)).await else {
        return;
    };
    loop {
        // Pick a live token of this worker whose state is certain, or create one.
        let candidates: Vec<(String, Known)> = {
            let model = model.lock().unwrap();
            let mut c: Vec<(String, Known)> = model
                .iter()
                .filter(|(_, k)| k.certain && k.status != Expect::Revoked)
                .map(|(id, k)| (id.clone(), k.clone()))
                .collect();
            c.sort_by(|a, b| a.0.cmp(&b.0));
            c
        };
        let mine: Vec<&(String, Known)> = candidates
            .iter()
            .filter(|(_, k)| k.worker == worker)
            .collect();
        let choice = rng.below(10);
        let target = if mine.is_empty() {
            None
        } else {
            Some(mine[rng.below(mine.len() as u64) as usize].clone())
        };
        let (tool, args, id) = match (choice, &target) {
            (0..=2, _) | (_, None) => {
                let parent = target.as_ref().filter(|(_, k)| {
                    k.parent.is_none() && k.status == Expect::Active && choice == 2
                });
                match parent {
                    Some((pid, _)) => (
                        "create_token",
                        json!({"name": format!("w{worker}"), "parent": pid, "tools": ["whoami"]}),
                        None,
                    ),
                    None => (
                        "create_token",
                        json!({"name": format!("w{worker}"), "parent": "none", "buckets": ["a", "b", "c", "d"]}),
                        None,
                    ),
                }
            }
            (3..=4, Some((id, k))) if k.buckets.as_ref().is_some_and(|b| b.len() > 1) => {
                let buckets = k.buckets.as_ref().unwrap();
                let keep = buckets[..buckets.len() - 1].to_vec();
                (
                    "scope_token",
                    json!({"id": id, "buckets": keep}),
                    Some(id.clone()),
                )
            }
            (5, Some((id, k))) if k.status == Expect::Active => {
                ("pause_token", json!({"id": id}), Some(id.clone()))
            }
            (5..=6, Some((id, k))) if k.status == Expect::Paused => {
                ("resume_token", json!({"id": id}), Some(id.clone()))
            }
            (7, Some((id, k))) if k.status == Expect::Active => (
                "rotate_token",
                json!({"id": id, "grace_seconds": 0}),
                Some(id.clone()),
            ),
            (8..=9, Some((id, _))) => ("revoke_token", json!({"id": id}), Some(id.clone())),
            (_, Some((id, _))) => ("get_token", json!({"id": id}), None),
        };
        // Mark the target uncertain before the call: if the answer never comes, either outcome
        // is allowed. A revocation also makes the children uncertain.
        if let Some(id) = &id {
            let mut model = model.lock().unwrap();
            let children: Vec<String> = model
                .iter()
                .filter(|(_, k)| k.parent.as_deref() == Some(id.as_str()))
                .map(|(c, _)| c.clone())
                .collect();
            if tool == "revoke_token" {
                for c in children {
                    model.get_mut(&c).unwrap().certain = false;
                }
            }
            model.get_mut(id).unwrap().certain = false;
        }
        let result = match tokio::time::timeout(LIMIT, try_call(&client, tool, args.clone())).await
        {
            Ok(Ok(r)) => r,
            _ => return, // the server is gone: this call is unacknowledged
        };
        let value = result.structured_content.clone().unwrap_or(Value::Null);
        if result.is_error == Some(true) {
            // Every call here is valid for the acknowledged state: a refusal means that state
            // was lost (e.g. `not_found` for an acknowledged token).
            refusals
                .lock()
                .unwrap()
                .push(format!("{tool}({args}) was refused: {value}"));
            return;
        }
        acked.fetch_add(1, Ordering::Relaxed);
        let mut model = model.lock().unwrap();
        match tool {
            "create_token" => {
                let new_id = value["id"].as_str().unwrap().to_owned();
                let parent = value["parent_id"].as_str().map(str::to_owned);
                let buckets = parent.is_none().then(|| strings(&value["buckets"]));
                model.insert(
                    new_id,
                    Known {
                        secret: value["token"].as_str().unwrap().to_owned(),
                        retired: Vec::new(),
                        status: Expect::Active,
                        buckets,
                        parent,
                        worker,
                        certain: true,
                    },
                );
            }
            "get_token" => {}
            _ => {
                let id = id.unwrap();
                let known = model.get_mut(&id).unwrap();
                known.certain = true;
                match tool {
                    "scope_token" => known.buckets = Some(strings(&value["buckets"])),
                    "pause_token" => known.status = Expect::Paused,
                    "resume_token" => known.status = Expect::Active,
                    "rotate_token" => {
                        let old = std::mem::replace(
                            &mut known.secret,
                            value["token"].as_str().unwrap().to_owned(),
                        );
                        known.retired.push(old);
                    }
                    "revoke_token" => {
                        known.status = Expect::Revoked;
                        for k in model
                            .values_mut()
                            .filter(|k| k.parent.as_deref() == Some(id.as_str()))
                        {
                            k.status = Expect::Revoked;
                            k.certain = true;
                        }
                    }
                    _ => unreachable!(),
                }
            }
        }
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

async fn authenticates(url: &str, secret: &str) -> bool {
    match raw_initialize(url, &[("authorization", &bearer(secret))])
        .await
        .status()
        .as_u16()
    {
        200 => true,
        401 => false,
        other => panic!("unexpected status {other}"),
    }
}

/// Checks every acknowledged fact against the restarted server; returns the violations.
async fn check(url: &str, admin: &Client, model: &HashMap<String, Known>) -> Vec<String> {
    let mut violations = Vec::new();
    for (id, known) in model {
        let (is_error, record) = call(admin, "get_token", json!({"id": id})).await;
        if is_error {
            violations.push(format!("acknowledged token {id} lost: {record}"));
            continue;
        }
        for old in &known.retired {
            if authenticates(url, old).await {
                violations.push(format!("{id}: a rotated-out secret authenticates"));
            }
        }
        let parent = known.parent.as_ref().and_then(|p| model.get(p));
        let parent_blocks = parent.is_some_and(|p| p.certain && p.status != Expect::Active);
        if !known.certain {
            if parent_blocks && authenticates(url, &known.secret).await {
                violations.push(format!(
                    "{id}: authenticates under a paused or revoked parent"
                ));
            }
            continue;
        }
        let status = record["status"].as_str().unwrap_or_default();
        let expected = match known.status {
            Expect::Active => "active",
            Expect::Paused => "paused",
            Expect::Revoked => "revoked",
        };
        if status != expected {
            violations.push(format!("{id}: status {status}, acknowledged {expected}"));
        }
        if let Some(buckets) = &known.buckets
            && strings(&record["buckets"]) != *buckets
        {
            violations.push(format!(
                "{id}: buckets {} but acknowledged {buckets:?}",
                record["buckets"]
            ));
        }
        let parent_certain = parent.is_none_or(|p| p.certain);
        let should_work = known.status == Expect::Active && !parent_blocks;
        let works = authenticates(url, &known.secret).await;
        if works && !should_work {
            violations.push(format!(
                "{id}: authenticates but is {expected} (or its parent is not active)"
            ));
        }
        if !works && should_work && parent_certain {
            violations.push(format!(
                "{id}: an acknowledged active token does not authenticate"
            ));
        }
    }
    violations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_operations_survive_sigkill() {
    let seed = env_u64("CRASH_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    });
    let kills = env_u64("CRASH_KILLS").unwrap_or(22);
    println!("crash test seed {seed} (replay with CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let tmp = TempDir::new().unwrap();
    let mut server = Server::start(tmp.path(), &[]);
    let admin_secret = server.admin().to_owned();
    let model: Model = Arc::new(Mutex::new(HashMap::new()));
    let refusals = Arc::new(Mutex::new(Vec::new()));
    let acked = Arc::new(AtomicU64::new(0));
    let mut violations = Vec::<String>::new();

    for kill in 0..kills {
        let url = server.url();
        let workers: Vec<_> = (0..3)
            .map(|w| {
                let r = Rng(rng.next() | 1);
                tokio::spawn(stream_operations(
                    url.clone(),
                    admin_secret.clone(),
                    Arc::clone(&model),
                    Arc::clone(&refusals),
                    Arc::clone(&acked),
                    r,
                    w,
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(30 + rng.below(300))).await;
        server.kill();
        // A call cut off by the kill may hang in the client's reconnect loop: its token is
        // already marked uncertain, so the worker can simply be stopped.
        for mut w in workers {
            let outcome = match tokio::time::timeout(Duration::from_millis(100), &mut w).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    w.abort();
                    w.await
                }
            };
            if let Err(e) = outcome
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }

        // Restart on the same directory: it must open cleanly, then hold every fact.
        server = Server::start(tmp.path(), &[]);
        assert!(
            server.admin_token.is_none(),
            "restart {kill}: the store came back empty"
        );
        let admin = connect_http(&server.url(), &admin_secret).await;
        let snapshot = model.lock().unwrap().clone();
        for v in check(&server.url(), &admin, &snapshot).await {
            violations.push(format!("after kill {}: {v}", kill + 1));
        }
    }
    violations.extend(refusals.lock().unwrap().drain(..));
    let tokens = model.lock().unwrap().len();
    let acked = acked.load(Ordering::Relaxed);
    println!(
        "crash test: {acked} operations acknowledged, {tokens} tokens, {kills} kills, {} violations",
        violations.len()
    );
    assert!(
        acked > 100,
        "too few operations were acknowledged ({acked}) to test anything"
    );
    assert!(
        violations.is_empty(),
        "violations:\n{}",
        violations.join("\n")
    );
}

/// Calls `whoami` as fast as one client can until the server dies under it or `stop` is set;
/// counts the acknowledged calls in `acked` and any refusal in `refused`.
async fn spend_uses(
    url: String,
    secret: String,
    acked: Arc<AtomicU64>,
    refused: Arc<Mutex<Vec<String>>>,
) {
    const LIMIT: Duration = Duration::from_secs(1);
    let Ok(Ok(client)) = tokio::time::timeout(LIMIT, try_connect_http(&url, &secret)).await else {
        return;
    };
    loop {
        let result = match tokio::time::timeout(LIMIT, try_call(&client, "whoami", json!({}))).await
        {
            Ok(Ok(r)) => r,
            _ => return, // the server is gone: this call is unacknowledged
        };
        if result.is_error == Some(true) {
            refused
                .lock()
                .unwrap()
                .push(format!("{:?}", result.structured_content));
            return;
        }
        acked.fetch_add(1, Ordering::Relaxed);
    }
}

/// `remaining_uses` is durable before a call proceeds (ARCHITECTURE invariant 8): clients spend
/// a `max_uses` token's uses over HTTP while the server is SIGKILLed right after acknowledged
/// calls; after every restart the stored remaining uses must not have risen above what the
/// acknowledged calls left, and across all crashes the server admits at most `max_uses` calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_uses_stay_spent_across_sigkill() {
    const MAX_USES: u64 = 400;
    const KILLS: u64 = 6;
    let seed = env_u64("CRASH_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    });
    println!("uses crash test seed {seed} (replay with CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let tmp = TempDir::new().unwrap();
    let mut server = Server::start(tmp.path(), &[]);
    let admin_secret = server.admin().to_owned();
    let (id, secret) = {
        let admin = connect_http(&server.url(), &admin_secret).await;
        let issued = ok(
            &admin,
            "create_token",
            json!({"name": "spender", "parent": "none", "tools": ["whoami"], "max_uses": MAX_USES}),
        )
        .await;
        (
            issued["id"].as_str().unwrap().to_owned(),
            issued["token"].as_str().unwrap().to_owned(),
        )
    };
    let acked = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let mut violations = Vec::<String>::new();
    let remaining_after_restart = |record: &Value| record["remaining_uses"].as_u64();

    for kill in 0..KILLS {
        let spenders: Vec<_> = (0..2)
            .map(|_| {
                tokio::spawn(spend_uses(
                    server.url(),
                    secret.clone(),
                    Arc::clone(&acked),
                    Arc::clone(&refused),
                ))
            })
            .collect();
        // Kill while calls stream: the last acknowledged ones are milliseconds old.
        tokio::time::sleep(Duration::from_millis(150 + rng.below(150))).await;
        server.kill();
        for mut s in spenders {
            if tokio::time::timeout(Duration::from_millis(200), &mut s)
                .await
                .is_err()
            {
                s.abort();
            }
        }
        let spent = acked.load(Ordering::Relaxed);
        server = Server::start(tmp.path(), &[]);
        let admin = connect_http(&server.url(), &admin_secret).await;
        let record = ok(&admin, "get_token", json!({"id": id})).await;
        match remaining_after_restart(&record) {
            Some(left) if left + spent <= MAX_USES => {}
            other => violations.push(format!(
                "after kill {}: {spent} calls acknowledged, but remaining_uses is {other:?} of {MAX_USES}",
                kill + 1
            )),
        }
        admin.cancel().await.unwrap();
    }
    // Spend what is left: the server must refuse at its stored count, never past MAX_USES.
    let before = acked.load(Ordering::Relaxed);
    assert!(before > 0, "no call was acknowledged before the kills");
    spend_uses(
        server.url(),
        secret.clone(),
        Arc::clone(&acked),
        Arc::clone(&refused),
    )
    .await;
    let total = acked.load(Ordering::Relaxed);
    println!(
        "uses crash test: {before} calls acknowledged over {KILLS} kills, {total} in all, max_uses {MAX_USES}"
    );
    if total > MAX_USES {
        violations.push(format!(
            "{total} calls admitted in all, but max_uses is {MAX_USES}"
        ));
    }
    let refusals = refused.lock().unwrap().clone();
    assert!(
        refusals.iter().all(|r| r.contains("limit_exceeded")) && !refusals.is_empty(),
        "the last call must be refused with limit_exceeded, and nothing else refused: {refusals:?}"
    );
    assert!(
        violations.is_empty(),
        "violations:\n{}",
        violations.join("\n")
    );
}
