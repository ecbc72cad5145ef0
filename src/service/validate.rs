//! Argument checks shared by the operations: each returns the parsed value or an
//! `invalid_argument` error whose message says what is accepted.

use crate::error::{Error, Result};
use crate::rules::cidr::IpNet;
use crate::rules::pattern::ToolPattern;
use crate::rules::scope::{is_bucket_name, normalise_buckets, normalise_tools};
use crate::secret::truncate_for_message;
use crate::timestamp::Timestamp;

// The bounds below are also the argument types' JSON Schemas (`requests.rs`), so the tools'
// input schemas and the OpenAPI document say what these checks accept.
pub const MAX_LIST_ITEMS: usize = 256;
const MAX_METADATA_BYTES: usize = 4096;
pub const MAX_NAME_CHARS: usize = 128;
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
pub const MAX_SEARCH_CHARS: usize = 128;
pub const MAX_PAGE_LIMIT: u32 = 100;
/// About a hundred years: longer lifetimes are almost certainly a unit mistake.
pub const MAX_TTL_SECONDS: i64 = 100 * 366 * 24 * 3600;
pub const MAX_USES: i64 = 1 << 53;
pub const MAX_RATE_PER_MINUTE: i64 = 1_000_000;
pub const MAX_GRACE_SECONDS: i64 = 86_400;

fn text(field: &str, value: &str, min: usize, max: usize) -> Result<String> {
    let chars = value.chars().count();
    if chars < min || chars > max {
        return Err(Error::invalid(format!(
            "{field} must be {min} to {max} characters (got {chars})"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "{field} may not contain control characters"
        )));
    }
    Ok(value.to_owned())
}

pub fn name(value: &str) -> Result<String> {
    let trimmed = value.trim();
    text("name", trimmed, 1, MAX_NAME_CHARS)
}

pub fn description(value: &str) -> Result<String> {
    text("description", value, 0, MAX_DESCRIPTION_CHARS)
}

pub fn metadata(
    value: serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let size = serde_json::to_vec(&value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_METADATA_BYTES {
        return Err(Error::invalid(format!(
            "metadata is {size} bytes serialised; the limit is {MAX_METADATA_BYTES}"
        )));
    }
    Ok(value)
}

fn list_len<T>(field: &str, items: &[T]) -> Result<()> {
    if items.len() > MAX_LIST_ITEMS {
        return Err(Error::invalid(format!(
            "{field} has {} entries; the limit is {MAX_LIST_ITEMS}",
            items.len()
        )));
    }
    Ok(())
}

pub fn bucket(value: &str) -> Result<String> {
    if is_bucket_name(value) {
        Ok(value.to_owned())
    } else {
        Err(Error::invalid(format!(
            "invalid bucket {:?}: use \"*\" or 1-63 of a-z 0-9 _ - starting with a letter or digit",
            truncate_for_message(value)
        )))
    }
}

pub fn buckets(field: &str, values: &[String]) -> Result<Vec<String>> {
    list_len(field, values)?;
    let parsed = values
        .iter()
        .map(|b| bucket(b))
        .collect::<Result<Vec<_>>>()?;
    Ok(normalise_buckets(parsed))
}

pub fn tools(field: &str, values: &[String]) -> Result<Vec<ToolPattern>> {
    list_len(field, values)?;
    let parsed = values
        .iter()
        .map(|t| ToolPattern::parse(t).map_err(Error::invalid))
        .collect::<Result<Vec<_>>>()?;
    Ok(normalise_tools(parsed))
}

pub fn allowed_ips(values: &[String]) -> Result<Vec<IpNet>> {
    list_len("allowed_ips", values)?;
    let mut nets = values
        .iter()
        .map(|n| IpNet::parse(n).map_err(Error::invalid))
        .collect::<Result<Vec<_>>>()?;
    nets.sort();
    nets.dedup();
    Ok(nets)
}

pub fn future_timestamp(field: &str, value: &str, now: Timestamp) -> Result<Timestamp> {
    let t = Timestamp::parse(value).map_err(Error::invalid)?;
    if t <= now {
        return Err(Error::invalid(format!("{field} {t} is not in the future")));
    }
    Ok(t)
}

/// `expires_at` or `ttl_seconds` (not both) as an expiry.
pub fn expiry(
    expires_at: Option<&str>,
    ttl_seconds: Option<i64>,
    now: Timestamp,
) -> Result<Option<Timestamp>> {
    match (expires_at, ttl_seconds) {
        (Some(_), Some(_)) => Err(Error::invalid("give expires_at or ttl_seconds, not both")),
        (Some(at), None) => future_timestamp("expires_at", at, now).map(Some),
        (None, Some(ttl)) if (1..=MAX_TTL_SECONDS).contains(&ttl) => {
            Ok(now.plus_seconds(ttl as u64))
        }
        (None, Some(ttl)) => Err(Error::invalid(format!(
            "ttl_seconds must be between 1 and {MAX_TTL_SECONDS} (got {ttl})"
        ))),
        (None, None) => Ok(None),
    }
}

pub fn max_uses(value: i64) -> Result<u64> {
    if (1..=MAX_USES).contains(&value) {
        Ok(value as u64)
    } else {
        Err(Error::invalid(format!(
            "max_uses must be between 1 and {MAX_USES} (got {value})"
        )))
    }
}

pub fn rate_limit(value: i64) -> Result<u32> {
    if (1..=MAX_RATE_PER_MINUTE).contains(&value) {
        Ok(value as u32)
    } else {
        Err(Error::invalid(format!(
            "rate_limit_per_minute must be between 1 and {MAX_RATE_PER_MINUTE} (got {value})"
        )))
    }
}

pub fn page_limit(value: Option<u32>) -> Result<usize> {
    match value.unwrap_or(20) {
        n @ 1..=MAX_PAGE_LIMIT => Ok(n as usize),
        n => Err(Error::invalid(format!(
            "limit must be between 1 and {MAX_PAGE_LIMIT} (got {n})"
        ))),
    }
}
