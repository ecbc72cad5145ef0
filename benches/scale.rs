//! Scale report at 1,000,000 tokens: time to open the store and answer the first request, RSS
//! after open and after 10,000 verifies, bytes on disk.
//!
//! Run: `cargo bench --bench scale` (reuses the fixture of `benches/core.rs`, building it if
//! missing). Run it alone: it reads this process's RSS.

#[path = "support/fixture.rs"]
mod fixture;

use std::time::Instant;

use tokenwarden::service::requests::ListTokens;
use tokenwarden::service::{Caller, Service, ServiceConfig};

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        dir_size(&p)
                    } else {
                        e.metadata().map_or(0, |m| m.len())
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    // Building the fixture leaves its memory in this process: measure in a fresh one.
    if !fixture::dir().join("complete").exists() {
        drop(fixture::open(ServiceConfig::default()));
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .status()
            .unwrap();
        std::process::exit(status.code().unwrap_or(1));
    }
    // Keep only the 10,000 secrets this report presents, so they do not inflate the RSS.
    let all = fixture::secrets(&fixture::dir());
    let step = all.len() / 10_000;
    let secrets: Vec<String> = all.into_iter().step_by(step).take(10_000).collect();
    let before = rss_mib();

    let started = Instant::now();
    let service = Service::open(&fixture::dir().join("db"), ServiceConfig::default()).unwrap();
    let opened = started.elapsed();
    service.authenticate(&secrets[0], None).unwrap();
    let first_request = started.elapsed();
    let page = service
        .list_tokens(
            &Caller::Owner,
            ListTokens {
                limit: Some(100),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(page.records.len(), 100);
    let after_open = rss_mib();

    for s in &secrets {
        service.authenticate(s, None).unwrap();
    }
    let after_verifies = rss_mib();
    let disk = dir_size(&fixture::dir().join("db"));

    println!("tokens stored:                 {}", fixture::ROOTS * 1111);
    println!("open store:                    {opened:.1?}");
    println!("open + first verify:           {first_request:.1?}");
    println!("RSS before open:               {before:.0} MiB");
    println!("RSS after open + first page:   {after_open:.0} MiB");
    println!("RSS after 10,000 verifies:     {after_verifies:.0} MiB");
    println!(
        "bytes on disk:                 {disk} ({:.0} MiB)",
        disk as f64 / 1048576.0
    );
}
