//! Tool patterns (SPEC §1): an exact tool name, `*`, or a prefix ending in `*`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const MAX_TOOL_NAME_LEN: usize = 64;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ToolPattern {
    /// `*`: every tool.
    Any,
    /// `list_*`: every tool whose name starts with the prefix (stored without the `*`).
    Prefix(String),
    Exact(String),
}

/// True for a legal tool name: 1–64 characters of `[A-Za-z0-9_.-]`.
pub fn is_tool_name(name: &str) -> bool {
    (1..=MAX_TOOL_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl ToolPattern {
    pub fn parse(text: &str) -> Result<ToolPattern, String> {
        if text == "*" {
            return Ok(ToolPattern::Any);
        }
        let (body, prefix) = match text.strip_suffix('*') {
            Some(body) => (body, true),
            None => (text, false),
        };
        if !is_tool_name(body) {
            return Err(format!(
                "invalid tool pattern {:?}: use an exact tool name (1-64 of A-Z a-z 0-9 _ . -), \
                 `*`, or a prefix ending in `*` such as `list_*`",
                crate::secret::truncate_for_message(text)
            ));
        }
        Ok(if prefix {
            ToolPattern::Prefix(body.to_owned())
        } else {
            ToolPattern::Exact(body.to_owned())
        })
    }

    pub fn matches(&self, tool: &str) -> bool {
        match self {
            ToolPattern::Any => true,
            ToolPattern::Prefix(p) => tool.starts_with(p.as_str()),
            ToolPattern::Exact(name) => tool == name,
        }
    }

    /// `self ⊆ other`: every tool `self` matches, `other` matches too.
    pub fn is_within(&self, other: &ToolPattern) -> bool {
        match (self, other) {
            (_, ToolPattern::Any) => true,
            (ToolPattern::Any, _) => false,
            (ToolPattern::Exact(a), ToolPattern::Exact(b)) => a == b,
            (ToolPattern::Prefix(_), ToolPattern::Exact(_)) => false,
            (ToolPattern::Exact(a) | ToolPattern::Prefix(a), ToolPattern::Prefix(b)) => {
                a.starts_with(b.as_str())
            }
        }
    }

    /// The tools both match. Two patterns either nest or are disjoint, so this is one pattern.
    pub fn intersect(&self, other: &ToolPattern) -> Option<ToolPattern> {
        if self.is_within(other) {
            Some(self.clone())
        } else if other.is_within(self) {
            Some(other.clone())
        } else {
            None
        }
    }
}

/// Every pattern of `inner` lies within some pattern of `outer`. Deliberately conservative: a
/// pattern covered only by a union of several (e.g. `a*` by `a`, `aa*`, `ab*`, …) is refused.
pub fn patterns_within(inner: &[ToolPattern], outer: &[ToolPattern]) -> bool {
    inner.iter().all(|p| outer.iter().any(|q| p.is_within(q)))
}

pub fn any_matches(patterns: &[ToolPattern], tool: &str) -> bool {
    patterns.iter().any(|p| p.matches(tool))
}

/// The patterns matching what both lists match, without redundant entries.
pub fn intersect_patterns(a: &[ToolPattern], b: &[ToolPattern]) -> Vec<ToolPattern> {
    let mut out: Vec<ToolPattern> = Vec::new();
    for p in a {
        for q in b {
            if let Some(r) = p.intersect(q) {
                out.push(r);
            }
        }
    }
    minimise(out)
}

/// Sorted, deduplicated, and without patterns already covered by another entry.
pub fn minimise(mut patterns: Vec<ToolPattern>) -> Vec<ToolPattern> {
    patterns.sort();
    patterns.dedup();
    let keep: Vec<bool> = patterns
        .iter()
        .enumerate()
        .map(|(i, p)| {
            !patterns
                .iter()
                .enumerate()
                .any(|(j, q)| i != j && p.is_within(q) && !q.is_within(p))
        })
        .collect();
    patterns
        .into_iter()
        .zip(keep)
        .filter_map(|(p, k)| k.then_some(p))
        .collect()
}

impl fmt::Display for ToolPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolPattern::Any => f.write_str("*"),
            ToolPattern::Prefix(p) => write!(f, "{p}*"),
            ToolPattern::Exact(name) => f.write_str(name),
        }
    }
}

impl fmt::Debug for ToolPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// [`is_tool_name`] as a JSON Schema pattern.
pub const TOOL_NAME_PATTERN: &str = r"^[A-Za-z0-9_.\-]{1,64}$";

/// An exact name, `*`, or a prefix ending in `*` ([`ToolPattern::parse`]).
pub const TOOL_PATTERN_PATTERN: &str = r"^(\*|[A-Za-z0-9_.\-]{1,64}\*?)$";

impl schemars::JsonSchema for ToolPattern {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ToolPattern".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "pattern": TOOL_PATTERN_PATTERN})
    }
}

impl Serialize for ToolPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ToolPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ToolPattern::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> ToolPattern {
        ToolPattern::parse(s).unwrap()
    }

    #[test]
    fn parses_the_three_forms_and_nothing_else() {
        assert_eq!(p("*"), ToolPattern::Any);
        assert_eq!(p("list_*"), ToolPattern::Prefix("list_".into()));
        assert_eq!(p("whoami"), ToolPattern::Exact("whoami".into()));
        for bad in ["", "**", "*a*", "a*b", "*a", "a b", "é", &"x".repeat(65)] {
            assert!(ToolPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ToolPattern::parse(&format!("{}*", "x".repeat(64))).is_ok());
    }

    #[test]
    fn containment_examples() {
        assert!(p("list_tokens").is_within(&p("list_*")));
        assert!(p("list_t*").is_within(&p("list_*")));
        assert!(!p("list_*").is_within(&p("list_tokens")));
        assert!(!p("*").is_within(&p("list_*")));
        assert!(p("github__*").is_within(&p("*")));
        assert_eq!(
            intersect_patterns(&[p("list_*"), p("whoami")], &[p("list_tokens"), p("get_*")]),
            vec![p("list_tokens")]
        );
    }

    fn arb_pattern() -> impl Strategy<Value = ToolPattern> {
        prop_oneof![
            1 => Just(ToolPattern::Any),
            3 => "[ab]{0,3}".prop_map(ToolPattern::Prefix).prop_filter("empty prefix", |p| {
                !matches!(p, ToolPattern::Prefix(s) if s.is_empty())
            }),
            3 => "[ab]{1,3}".prop_map(ToolPattern::Exact),
        ]
    }

    /// Every name over {a, b, c} up to 4 characters: long enough that a prefix of at most 3
    /// characters always has a match the exact names of length ≤ 3 do not.
    fn universe() -> Vec<String> {
        let mut names = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for n in &frontier {
                for c in ['a', 'b', 'c'] {
                    next.push(format!("{n}{c}"));
                }
            }
            names.extend(next.iter().cloned());
            frontier = next;
        }
        names.retain(|n| !n.is_empty());
        names
    }

    proptest! {
        #[test]
        fn containment_agrees_with_brute_force(a in arb_pattern(), b in arb_pattern()) {
            let brute = universe().iter().all(|n| !a.matches(n) || b.matches(n));
            prop_assert_eq!(a.is_within(&b), brute);
        }

        #[test]
        fn intersection_agrees_with_brute_force(a in arb_pattern(), b in arb_pattern()) {
            let i = a.intersect(&b);
            for n in universe() {
                let both = a.matches(&n) && b.matches(&n);
                prop_assert_eq!(i.as_ref().is_some_and(|i| i.matches(&n)), both);
            }
        }

        #[test]
        fn set_containment_is_sound(
            a in proptest::collection::vec(arb_pattern(), 0..4),
            b in proptest::collection::vec(arb_pattern(), 0..4),
        ) {
            if patterns_within(&a, &b) {
                for n in universe() {
                    prop_assert!(!any_matches(&a, &n) || any_matches(&b, &n));
                }
            }
            let i = intersect_patterns(&a, &b);
            for n in universe() {
                prop_assert_eq!(any_matches(&i, &n), any_matches(&a, &n) && any_matches(&b, &n));
            }
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,80}") {
            if let Ok(pattern) = ToolPattern::parse(&s) {
                prop_assert_eq!(pattern.to_string(), s);
            }
        }
    }
}
