//! CPU time of a process from `/proc`, for the benchmarks that print CPU per request.

use std::time::Duration;

/// CPU time (user + system) a process has used so far; `pid` may be `"self"`.
pub fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Linux reports in clock ticks of 1/100 s on every platform this runs on.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}
