//! What a token may reach, and attenuation: a child never holds more than its parent (SPEC §4).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::cidr::{IpNet, intersect_ranges, ranges_within};
use super::pattern::{ToolPattern, intersect_patterns, minimise, patterns_within};
use crate::timestamp::Timestamp;

pub const ALL: &str = "*";

/// True for `*` or a bucket name matching `^[a-z0-9][a-z0-9_-]{0,62}$`.
/// [`is_bucket_name`] as a JSON Schema pattern.
pub const BUCKET_PATTERN: &str = r"^(\*|[a-z0-9][a-z0-9_\-]{0,62})$";

pub fn is_bucket_name(name: &str) -> bool {
    if name == ALL {
        return true;
    }
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

pub fn bucket_allowed(buckets: &[String], bucket: &str) -> bool {
    buckets.iter().any(|b| b == ALL || b == bucket)
}

pub fn buckets_within(inner: &[String], outer: &[String]) -> bool {
    outer.iter().any(|b| b == ALL) || inner.iter().all(|b| b != ALL && outer.contains(b))
}

fn intersect_buckets(a: &[String], b: &[String]) -> Vec<String> {
    if a.iter().any(|x| x == ALL) {
        return b.to_vec();
    }
    if b.iter().any(|x| x == ALL) {
        return a.to_vec();
    }
    a.iter().filter(|x| b.contains(x)).cloned().collect()
}

/// Sorted and deduplicated; `*` absorbs everything else.
pub fn normalise_buckets(mut buckets: Vec<String>) -> Vec<String> {
    if buckets.iter().any(|b| b == ALL) {
        return vec![ALL.to_owned()];
    }
    buckets.sort();
    buckets.dedup();
    buckets
}

pub fn normalise_tools(tools: Vec<ToolPattern>) -> Vec<ToolPattern> {
    if tools.contains(&ToolPattern::Any) {
        return vec![ToolPattern::Any];
    }
    minimise(tools)
}

/// `allowed_ips` that no client address can match: what is left when a parent's ranges and a
/// child's are disjoint. An empty list would mean "any address", so this needs its own form.
pub fn no_address() -> Vec<IpNet> {
    [
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    ]
    .iter()
    .map(|a| IpNet::parse(&a.to_string()).expect("unspecified addresses are valid"))
    .collect()
}

/// The permission-bearing part of a token record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scope {
    pub environment: String,
    /// `["*"]` or bucket names.
    pub buckets: Vec<String>,
    /// `["*"]` or tool patterns; empty means no tool at all.
    pub tools: Vec<ToolPattern>,
    pub read_only: bool,
    pub admin: bool,
    /// Empty means any address.
    pub allowed_ips: Vec<IpNet>,
    pub expires_at: Option<Timestamp>,
    pub max_uses: Option<u64>,
    pub rate_limit_per_minute: Option<u32>,
    /// Tool patterns never callable, even where `tools` allows. Last, so that records stored
    /// before it existed decode (see `store`'s record versions).
    pub deny_tools: Vec<ToolPattern>,
}

/// True when `denied` covers every pattern of `required`: a token denying `denied` denies at
/// least what `required` denies.
pub fn denials_cover(denied: &[ToolPattern], required: &[ToolPattern]) -> bool {
    required
        .iter()
        .all(|r| denied.iter().any(|d| r.is_within(d)))
}

/// The union of two deny lists, minimised.
pub fn union_denials(a: &[ToolPattern], b: &[ToolPattern]) -> Vec<ToolPattern> {
    normalise_tools([a, b].concat())
}

impl Scope {
    /// Everything: what the owner holds.
    pub fn unlimited(environment: &str) -> Scope {
        Scope {
            environment: environment.to_owned(),
            buckets: vec![ALL.to_owned()],
            tools: vec![ToolPattern::Any],
            read_only: false,
            admin: true,
            allowed_ips: Vec::new(),
            expires_at: None,
            max_uses: None,
            rate_limit_per_minute: None,
            deny_tools: Vec::new(),
        }
    }

    /// The names of every field in which `self` holds more than `bound`; empty when `self ⊆ bound`.
    pub fn fields_exceeding(&self, bound: &Scope) -> Vec<&'static str> {
        let mut fields = Vec::new();
        if self.environment != bound.environment {
            fields.push("environment");
        }
        if !buckets_within(&self.buckets, &bound.buckets) {
            fields.push("buckets");
        }
        if !patterns_within(&self.tools, &bound.tools) {
            fields.push("tools");
        }
        if bound.read_only && !self.read_only {
            fields.push("read_only");
        }
        if self.admin && !bound.admin {
            fields.push("admin");
        }
        if !ranges_within(&self.allowed_ips, &bound.allowed_ips) {
            fields.push("allowed_ips");
        }
        if exceeds(self.expires_at, bound.expires_at) {
            fields.push("expires_at");
        }
        if exceeds(self.max_uses, bound.max_uses) {
            fields.push("max_uses");
        }
        if exceeds(self.rate_limit_per_minute, bound.rate_limit_per_minute) {
            fields.push("rate_limit_per_minute");
        }
        if !denials_cover(&self.deny_tools, &bound.deny_tools) {
            fields.push("deny_tools");
        }
        fields
    }

    /// The names of the fields whose value differs from `before` (what a change sets).
    pub fn fields_changed(&self, before: &Scope) -> Vec<&'static str> {
        let mut fields = Vec::new();
        let mut differs = |name, changed: bool| {
            if changed {
                fields.push(name);
            }
        };
        differs("environment", self.environment != before.environment);
        differs("buckets", self.buckets != before.buckets);
        differs("tools", self.tools != before.tools);
        differs("read_only", self.read_only != before.read_only);
        differs("admin", self.admin != before.admin);
        differs("allowed_ips", self.allowed_ips != before.allowed_ips);
        differs("expires_at", self.expires_at != before.expires_at);
        differs("max_uses", self.max_uses != before.max_uses);
        differs(
            "rate_limit_per_minute",
            self.rate_limit_per_minute != before.rate_limit_per_minute,
        );
        differs("deny_tools", self.deny_tools != before.deny_tools);
        fields
    }

    /// `self` narrowed to what `bound` allows: used to keep descendants within a parent that
    /// was just narrowed. The result always satisfies `fields_exceeding(bound).is_empty()`.
    pub fn clamped_to(&self, bound: &Scope) -> Scope {
        Scope {
            environment: bound.environment.clone(),
            buckets: normalise_buckets(intersect_buckets(&self.buckets, &bound.buckets)),
            tools: intersect_patterns(&self.tools, &bound.tools),
            read_only: self.read_only || bound.read_only,
            admin: self.admin && bound.admin,
            allowed_ips: intersect_ranges(&self.allowed_ips, &bound.allowed_ips)
                .unwrap_or_else(no_address),
            expires_at: min_limit(self.expires_at, bound.expires_at),
            max_uses: min_limit(self.max_uses, bound.max_uses),
            rate_limit_per_minute: min_limit(
                self.rate_limit_per_minute,
                bound.rate_limit_per_minute,
            ),
            deny_tools: union_denials(&self.deny_tools, &bound.deny_tools),
        }
    }
}

/// For limits where `None` means unlimited: does `value` allow more than `bound`?
fn exceeds<T: PartialOrd>(value: Option<T>, bound: Option<T>) -> bool {
    match (value, bound) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(v), Some(b)) => v > b,
    }
}

fn min_limit<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        for good in ["a", "prod-1", "x_y", "*", &"a".repeat(63)] {
            assert!(is_bucket_name(good), "{good}");
        }
        for bad in ["", "-a", "A", "a.b", "../x", &"a".repeat(64), "a b"] {
            assert!(!is_bucket_name(bad), "{bad}");
        }
    }

    #[test]
    fn reports_every_exceeding_field() {
        let parent = Scope {
            buckets: vec!["a".into(), "b".into()],
            tools: vec![ToolPattern::parse("list_*").unwrap()],
            admin: false,
            read_only: true,
            expires_at: Timestamp::from_millis(1_000_000),
            max_uses: Some(5),
            rate_limit_per_minute: Some(10),
            allowed_ips: vec![IpNet::parse("10.0.0.0/8").unwrap()],
            deny_tools: vec![ToolPattern::parse("fs__write_*").unwrap()],
            ..Scope::unlimited("default")
        };
        let child = Scope::unlimited("default");
        assert_eq!(
            child.fields_exceeding(&parent),
            [
                "buckets",
                "tools",
                "read_only",
                "admin",
                "allowed_ips",
                "expires_at",
                "max_uses",
                "rate_limit_per_minute",
                "deny_tools"
            ]
        );
        let clamped = child.clamped_to(&parent);
        assert!(clamped.fields_exceeding(&parent).is_empty());
        assert_eq!(clamped.buckets, ["a", "b"]);
        assert_eq!(clamped.deny_tools, parent.deny_tools);
        // A narrower denial does not cover a broader one; a broader one does.
        let narrower = vec![ToolPattern::parse("fs__write_file").unwrap()];
        let broader = vec![ToolPattern::parse("fs__*").unwrap()];
        assert!(!denials_cover(&narrower, &parent.deny_tools));
        assert!(denials_cover(&broader, &parent.deny_tools));
    }

    #[test]
    fn disjoint_address_ranges_clamp_to_no_address() {
        let parent = Scope {
            allowed_ips: vec![IpNet::parse("192.168.0.0/16").unwrap()],
            ..Scope::unlimited("default")
        };
        let child = Scope {
            allowed_ips: vec![IpNet::parse("10.0.0.0/8").unwrap()],
            ..Scope::unlimited("default")
        };
        let clamped = child.clamped_to(&parent);
        assert!(clamped.fields_exceeding(&parent).is_empty());
        for ip in ["10.0.0.1", "192.168.1.1", "0.0.0.1", "::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!super::super::cidr::address_allowed(
                &clamped.allowed_ips,
                ip
            ));
        }
    }
}
