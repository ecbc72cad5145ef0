//! In-process benchmarks of SPEC §9: secret parse + hash, the decision with a warm chain, hot and
//! cold verify against 1,000,000 stored tokens, durable create/revoke, and the first page of
//! list_tokens with a status filter.
//!
//! Run: `cargo bench --bench core` (the first run builds the fixture under target/).

#[path = "support/fixture.rs"]
mod fixture;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tokenwarden::record::TokenRecord;
use tokenwarden::rules::authorize::{Attempt, Tool, authorize};
use tokenwarden::secret::Secret;
use tokenwarden::service::requests::{CreateToken, ListTokens, TokenRef, UpdateToken};
use tokenwarden::service::{Caller, Service, ServiceConfig};
use tokenwarden::timestamp::Timestamp;

/// The hot working set of SPEC §9; `HOT_SET=n` overrides it to explore cache effects.
fn hot_set() -> usize {
    std::env::var("HOT_SET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn secret_parse_and_hash(c: &mut Criterion) {
    let secret = Secret::generate().expose().to_owned();
    c.bench_function("secret parse + blake3", |b| {
        b.iter(|| Secret::parse(black_box(&secret)).unwrap().hash())
    });
}

fn decision_warm_chain(c: &mut Criterion) {
    let mut state = None;
    c.bench_function("authorize, chain of depth 3", move |b| {
        let chain: &Vec<Arc<TokenRecord>> = state.get_or_insert_with(|| {
            let (service, secrets) = fixture::open(ServiceConfig::default());
            let id = service.authenticate(&secrets[0], None).unwrap();
            let chain = service.store().chain(&id).unwrap().unwrap();
            assert_eq!(chain.len(), 4, "leaf at depth 3");
            chain
        });
        let links: Vec<&TokenRecord> = chain.iter().map(Arc::as_ref).collect();
        let attempt = Attempt {
            environment: "default",
            now: Timestamp::now(),
            client_ip: Some("127.0.0.1".parse().unwrap()),
            tool: Some(Tool {
                name: "list_tokens",
                read_only: true,
            }),
            bucket: Some("a"),
            budgets: None,
        };
        b.iter(|| authorize(black_box(&links), black_box(&attempt)).unwrap())
    });
}

/// Hot verify: secret → decision for a working set of 100,000 recently seen tokens.
/// Setup runs inside the routine (once), so a filtered run sets up only what it measures.
fn verify_hot(c: &mut Criterion) {
    let mut state: Option<(Service, Vec<String>)> = None;
    let mut i = 0;
    let hot_set = hot_set();
    c.bench_function(
        "verify hot secret (100k working set, 1M stored)",
        move |b| {
            let (service, hot) = state.get_or_insert_with(|| {
                let (service, mut secrets) = fixture::open(ServiceConfig::default());
                secrets.truncate(hot_set);
                // The first use loads the chain into memory; the second walks it in memory and
                // remembers the admission; later uses are answered from that memory.
                for _ in 0..2 {
                    for s in &secrets {
                        service.authenticate(s, None).unwrap();
                    }
                }
                report_percentiles("verify hot", 200_000, |k| {
                    service
                        .authenticate(&secrets[(k * 7919) % hot_set], None)
                        .unwrap();
                });
                report_after_write(&service, &secrets);
                (service, secrets)
            });
            b.iter(|| {
                i = (i + 7919) % hot_set;
                service.authenticate(black_box(&hot[i]), None).unwrap()
            })
        },
    );
}

/// Cold verify: the first use of each secret since the store was opened.
fn verify_cold(c: &mut Criterion) {
    let mut state: Option<(Service, Vec<String>)> = None;
    let mut next = 0;
    let mut group = c.benchmark_group("cold");
    group.sample_size(20);
    group.bench_function("verify cold secret (first use, 1M stored)", move |b| {
        let (service, cold) = state.get_or_insert_with(|| {
            // Percentiles first, on the freshly opened store, over secrets never presented.
            let (service, secrets) = fixture::open(ServiceConfig::default());
            let cold: Vec<String> = secrets[100_000..].to_vec();
            let half = cold.len() / 2;
            report_percentiles("verify cold", 20_000, |k| {
                service
                    .authenticate(&cold[half + k * 17 % half], None)
                    .unwrap();
            });
            (service, cold)
        });
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                service
                    .authenticate(&cold[next % (cold.len() / 2)], None)
                    .unwrap();
                next += 1;
            }
            start.elapsed()
        })
    });
    group.finish();
}

fn durable_create_revoke(c: &mut Criterion) {
    let dir = tempfile::TempDir::new().unwrap();
    let service = Arc::new(Service::open(dir.path(), ServiceConfig::default()).unwrap());
    let mut group = c.benchmark_group("durable");
    group.sample_size(20);
    group.bench_function("create_token (flushed)", |b| {
        b.iter(|| {
            service
                .create_token(
                    &Caller::Owner,
                    CreateToken {
                        name: "bench".into(),
                        ..Default::default()
                    },
                )
                .unwrap()
        })
    });
    let mut ids: Option<Vec<String>> = None;
    let mut next = 0;
    group.bench_function("revoke_token (flushed)", |b| {
        let ids = ids.get_or_insert_with(|| {
            (0..20_000)
                .map(|_| {
                    service
                        .create_token(
                            &Caller::Owner,
                            CreateToken {
                                name: "victim".into(),
                                ..Default::default()
                            },
                        )
                        .unwrap()
                        .record
                        .id
                        .to_string()
                })
                .collect()
        });
        b.iter(|| {
            let id = ids[next % ids.len()].clone();
            next += 1;
            service
                .revoke_token(&Caller::Owner, TokenRef { id })
                .unwrap()
        })
    });
    // Group commit: with several clients at once, writers share fsyncs. Time per create.
    group.bench_function("create_token (flushed), 16 concurrent clients", |b| {
        b.iter_custom(|iters| {
            let threads = 16;
            let per_thread = (iters as usize).div_ceil(threads);
            let start = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    let service = Arc::clone(&service);
                    scope.spawn(move || {
                        for _ in 0..per_thread {
                            service
                                .create_token(
                                    &Caller::Owner,
                                    CreateToken {
                                        name: "concurrent".into(),
                                        ..Default::default()
                                    },
                                )
                                .unwrap();
                        }
                    });
                }
            });
            start
                .elapsed()
                .mul_f64(iters as f64 / (per_thread * threads) as f64)
        })
    });
    group.finish();
}

fn list_first_page(c: &mut Criterion) {
    let mut state: Option<Service> = None;
    let mut group = c.benchmark_group("list");
    group.sample_size(20);
    group.bench_function(
        "list_tokens first page (100, status=active, 1M stored)",
        move |b| {
            let service = state.get_or_insert_with(|| fixture::open(ServiceConfig::default()).0);
            b.iter(|| {
                let page = service
                    .list_tokens(
                        &Caller::Owner,
                        ListTokens {
                            status: Some(tokenwarden::record::Status::Active),
                            limit: Some(100),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                assert_eq!(page.records.len(), 100);
            })
        },
    );
    group.finish();
}

/// Prints p50/p99 of `n` single calls (criterion reports means; §9 targets percentiles).
fn report_percentiles(label: &str, n: usize, mut f: impl FnMut(usize)) {
    let mut samples: Vec<Duration> = Vec::with_capacity(n);
    for k in 0..n {
        let start = Instant::now();
        f(k);
        samples.push(start.elapsed());
    }
    samples.sort();
    let p = |q: f64| samples[((n as f64 * q) as usize).min(n - 1)];
    println!("{label}: p50 {:?}  p99 {:?}  ({n} calls)", p(0.50), p(0.99));
}

/// Any write forgets every remembered admission, so the first verify of a hot token after a
/// write walks its chain in memory again: percentiles of that path, one write before each call.
/// The write sets one leaf's description to the same text each time, so the fixture stays as
/// it was but for a few thousand audit events.
fn report_after_write(service: &Service, secrets: &[String]) {
    const N: usize = 2_000;
    let written = service.authenticate(&secrets[0], None).unwrap().to_string();
    let mut samples = Vec::with_capacity(N);
    for k in 0..N {
        service
            .update_token(
                &Caller::Owner,
                UpdateToken {
                    id: written.clone(),
                    description: Some(Some("benchmark writes".to_owned())),
                    ..UpdateToken::default()
                },
            )
            .unwrap();
        let secret = &secrets[(k * 7919) % secrets.len()];
        let start = Instant::now();
        service.authenticate(secret, None).unwrap();
        samples.push(start.elapsed());
    }
    samples.sort();
    let p = |q: f64| samples[((N as f64 * q) as usize).min(N - 1)];
    println!(
        "verify hot, first use after a write: p50 {:?}  p99 {:?}  ({N} calls)",
        p(0.50),
        p(0.99)
    );
}

criterion_group!(
    benches,
    secret_parse_and_hash,
    decision_warm_chain,
    verify_hot,
    verify_cold,
    durable_create_revoke,
    list_first_page
);
criterion_main!(benches);
