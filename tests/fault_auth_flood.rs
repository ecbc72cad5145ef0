//! Failed-auth flood (SPEC §6): 10,000 requests with bad bearers — malformed, bad checksums,
//! and well-formed secrets that belong to no token (which pass the format check and reach the
//! store) — must neither grow the server's memory without bound nor slow valid requests by
//! more than 2×. Valid calls are timed before the flood and interleaved with it, and the
//! server's RSS is read from /proc before and after. The figures are printed.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tempfile::TempDir;
use tokenwarden::secret::Secret;

const FLOOD: usize = 10_000;
/// One valid call after every this many bad requests.
const EVERY: usize = 50;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn timed_whoami(client: &Client) -> Duration {
    let start = Instant::now();
    ok(client, "whoami", json!({})).await;
    start.elapsed()
}

/// The i-th bad bearer: a third malformed, a third with a bad checksum, a third well-formed
/// secrets of no token.
fn bad_bearer(i: usize, valid: &str) -> String {
    match i % 3 {
        0 => format!("mcp_{}", "x".repeat(i % 60)),
        1 => {
            let mut s = valid.to_owned().into_bytes();
            s[4 + i % 32] = if s[4 + i % 32] == b'Q' { b'R' } else { b'Q' };
            String::from_utf8(s).unwrap()
        }
        _ => Secret::generate().expose().to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_auth_flood_neither_grows_memory_nor_slows_valid_requests() {
    let tmp = TempDir::new().unwrap();
    let server = Server::start(tmp.path(), &[]);
    let url = server.url();
    let admin_secret = server.admin().to_owned();
    let client = connect_http(&url, &admin_secret).await;
    let http = reqwest::Client::new();
    let body = initialize_body().to_string();
    let bad_request = |bearer: String| {
        http.post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("authorization", format!("Bearer {bearer}"))
            .body(body.clone())
            .send()
    };

    // Warm up both paths, then take the baseline.
    for i in 0..300 {
        timed_whoami(&client).await;
        assert_eq!(
            bad_request(bad_bearer(i, &admin_secret))
                .await
                .unwrap()
                .status(),
            401
        );
    }
    let mut before = Vec::new();
    for _ in 0..200 {
        before.push(timed_whoami(&client).await);
    }
    let rss_before = rss_kib(server.pid());

    let started = Instant::now();
    let mut during = Vec::new();
    for i in 0..FLOOD {
        let status = bad_request(bad_bearer(i, &admin_secret))
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401, "bad bearer {i} was not refused");
        if i % EVERY == 0 {
            during.push(timed_whoami(&client).await);
        }
    }
    let flood_time = started.elapsed();
    let rss_after = rss_kib(server.pid());
    let mut after = Vec::new();
    for _ in 0..200 {
        after.push(timed_whoami(&client).await);
    }

    let (before, during, after) = (median(before), median(during), median(after));
    let growth_mib = rss_after.saturating_sub(rss_before) as f64 / 1024.0;
    println!(
        "auth flood: {FLOOD} bad requests in {flood_time:?}; RSS {} -> {} MiB (+{growth_mib:.1} MiB); \
         valid whoami p50 {before:?} before, {during:?} during ({:.2}x), {after:?} after ({:.2}x)",
        rss_before / 1024,
        rss_after / 1024,
        during.as_secs_f64() / before.as_secs_f64(),
        after.as_secs_f64() / before.as_secs_f64(),
    );
    assert!(
        growth_mib < 32.0,
        "memory grew by {growth_mib:.1} MiB over the flood"
    );
    assert!(
        during <= before * 2,
        "valid requests slowed during the flood: {during:?} vs {before:?}"
    );
    assert!(
        after <= before * 2,
        "valid requests slowed after the flood: {after:?} vs {before:?}"
    );
}
