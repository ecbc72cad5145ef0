//! Unit tests of the attenuation helpers (`scope`) and tool patterns (`pattern`) that the
//! property tests in `tests/core_properties.rs` exercise only indirectly: each pins one exact
//! answer, so that `cargo mutants -f src/rules/… -C --lib` (see docs/testing.md) catches a
//! changed comparison or a dropped branch without the slower integration tests.

use super::cidr::IpNet;
use super::pattern::{ToolPattern, intersect_patterns, is_tool_name, minimise, patterns_within};
use super::scope::*;
use crate::timestamp::Timestamp;

fn p(s: &str) -> ToolPattern {
    ToolPattern::parse(s).unwrap()
}

fn ps(items: &[&str]) -> Vec<ToolPattern> {
    items.iter().map(|s| p(s)).collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn net(s: &str) -> IpNet {
    IpNet::parse(s).unwrap()
}

fn at(ms: i64) -> Option<Timestamp> {
    Timestamp::from_millis(ms)
}

#[test]
fn tool_names_allow_letters_digits_and_three_marks() {
    for good in [
        "a",
        "A9",
        "fs__read_file",
        "a.b",
        "a-b",
        "x_y.z-0",
        &"x".repeat(64),
    ] {
        assert!(is_tool_name(good), "{good}");
    }
    for bad in ["", "a b", "a/b", "a*", "é", "a:b", &"x".repeat(65)] {
        assert!(!is_tool_name(bad), "{bad}");
    }
}

#[test]
fn patterns_match_exactly_by_prefix_or_all() {
    assert!(p("whoami").matches("whoami"));
    assert!(!p("whoami").matches("whoami2"));
    assert!(!p("whoami").matches("who"));
    assert!(p("list_*").matches("list_tokens"));
    assert!(p("list_*").matches("list_"));
    assert!(!p("list_*").matches("lis"));
    assert!(p("*").matches("anything"));
    // Exact names nest only in themselves.
    assert!(p("a").is_within(&p("a")));
    assert!(!p("a").is_within(&p("b")));
    assert!(p("ab").is_within(&p("a*")));
    assert!(!p("a*").is_within(&p("ab")));
    assert_eq!(p("a*").intersect(&p("ab*")), Some(p("ab*")));
    assert_eq!(p("ab*").intersect(&p("a*")), Some(p("ab*")));
    assert_eq!(p("a*").intersect(&p("b")), None);
}

#[test]
fn lists_of_patterns_nest_intersect_and_minimise() {
    assert!(patterns_within(&ps(&["a", "b*"]), &ps(&["a*", "b*"])));
    assert!(!patterns_within(&ps(&["a", "c"]), &ps(&["a*", "b*"])));
    assert!(patterns_within(&[], &ps(&["a"])));
    assert!(!patterns_within(&ps(&["a"]), &[]));
    // Redundant entries go, equal ones are merged, unrelated ones stay, sorted.
    assert_eq!(
        minimise(ps(&[
            "list_tokens",
            "list_*",
            "whoami",
            "list_*",
            "get_token"
        ])),
        ps(&["list_*", "get_token", "whoami"])
    );
    assert_eq!(minimise(ps(&["a", "*"])), ps(&["*"]));
    assert_eq!(minimise(Vec::new()), Vec::<ToolPattern>::new());
    assert_eq!(
        intersect_patterns(&ps(&["*"]), &ps(&["a*", "ab", "b"])),
        ps(&["a*", "b"])
    );
    assert_eq!(
        intersect_patterns(&ps(&["a*"]), &ps(&["b*"])),
        Vec::<ToolPattern>::new()
    );
}

#[test]
fn patterns_print_serialise_and_parse_as_written() {
    for text in ["*", "list_*", "whoami"] {
        let pattern = p(text);
        assert_eq!(pattern.to_string(), text);
        assert_eq!(format!("{pattern:?}"), text);
        let json = serde_json::to_string(&pattern).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<ToolPattern>(&json).unwrap(), pattern);
    }
    assert!(serde_json::from_str::<ToolPattern>("\"*a\"").is_err());
    assert!(ToolPattern::parse("").is_err());
    assert_eq!(
        ToolPattern::parse("**"),
        Err(ToolPattern::parse("**").unwrap_err())
    );
}

#[test]
fn buckets_allow_nest_and_normalise() {
    assert!(bucket_allowed(&strings(&["a", "b"]), "b"));
    assert!(!bucket_allowed(&strings(&["a", "b"]), "c"));
    assert!(bucket_allowed(&strings(&["*"]), "c"));
    assert!(!bucket_allowed(&[], "a"));

    assert!(buckets_within(&strings(&["a"]), &strings(&["a", "b"])));
    assert!(buckets_within(&strings(&["*"]), &strings(&["*"])));
    assert!(buckets_within(&strings(&["a", "*"]), &strings(&["*"])));
    assert!(!buckets_within(&strings(&["*"]), &strings(&["a", "b"])));
    assert!(!buckets_within(
        &strings(&["a", "c"]),
        &strings(&["a", "b"])
    ));
    assert!(buckets_within(&[], &strings(&["a"])));

    assert_eq!(
        normalise_buckets(strings(&["b", "a", "b"])),
        strings(&["a", "b"])
    );
    assert_eq!(normalise_buckets(strings(&["b", "*"])), strings(&["*"]));
    assert_eq!(normalise_buckets(Vec::new()), Vec::<String>::new());
    assert_eq!(normalise_tools(ps(&["b", "*"])), ps(&["*"]));
    assert_eq!(normalise_tools(ps(&["b", "a", "a*"])), ps(&["a*", "b"]));
}

#[test]
fn no_address_is_the_two_unspecified_hosts() {
    assert_eq!(no_address(), vec![net("0.0.0.0/32"), net("::/128")]);
    assert!(no_address().iter().all(IpNet::is_unspecified_host));
}

#[test]
fn denials_cover_and_unite() {
    assert!(denials_cover(
        &ps(&["fs__*"]),
        &ps(&["fs__write", "fs__move*"])
    ));
    assert!(!denials_cover(&ps(&["fs__write"]), &ps(&["fs__*"])));
    assert!(denials_cover(&[], &[]));
    assert!(!denials_cover(&[], &ps(&["a"])));
    assert_eq!(
        union_denials(&ps(&["b", "a*"]), &ps(&["ab", "c"])),
        ps(&["a*", "b", "c"])
    );
    assert_eq!(union_denials(&ps(&["x"]), &ps(&["*"])), ps(&["*"]));
}

#[test]
fn the_unlimited_scope_holds_everything() {
    let s = Scope::unlimited("prod");
    assert_eq!(s.environment, "prod");
    assert_eq!(s.buckets, strings(&["*"]));
    assert_eq!(s.tools, vec![ToolPattern::Any]);
    assert!(!s.read_only);
    assert!(s.admin);
    assert!(s.allowed_ips.is_empty());
    assert_eq!(s.expires_at, None);
    assert_eq!(s.max_uses, None);
    assert_eq!(s.rate_limit_per_minute, None);
    assert!(s.deny_tools.is_empty());
    assert!(s.fields_exceeding(&s).is_empty());
}

/// A parent limited in every field, and a child equal to it.
fn limited() -> Scope {
    Scope {
        environment: "default".to_owned(),
        buckets: strings(&["a", "b"]),
        tools: ps(&["list_*", "whoami"]),
        read_only: false,
        admin: false,
        allowed_ips: vec![net("10.0.0.0/8")],
        expires_at: at(1_000_000),
        max_uses: Some(5),
        rate_limit_per_minute: Some(10),
        deny_tools: ps(&["fs__write*"]),
    }
}

#[test]
fn each_field_that_exceeds_its_parent_is_named_alone() {
    let parent = limited();
    assert!(parent.fields_exceeding(&parent).is_empty());
    type Widen = Box<dyn Fn(&mut Scope)>;
    let cases: Vec<(&str, Widen)> = vec![
        ("environment", Box::new(|s| s.environment = "other".into())),
        ("buckets", Box::new(|s| s.buckets = strings(&["a", "c"]))),
        (
            "tools",
            Box::new(|s| s.tools = ps(&["list_*", "get_token"])),
        ),
        ("admin", Box::new(|s| s.admin = true)),
        (
            "allowed_ips",
            Box::new(|s| s.allowed_ips = vec![net("11.0.0.0/8")]),
        ),
        ("expires_at", Box::new(|s| s.expires_at = at(1_000_001))),
        ("max_uses", Box::new(|s| s.max_uses = Some(6))),
        (
            "rate_limit_per_minute",
            Box::new(|s| s.rate_limit_per_minute = Some(11)),
        ),
        (
            "deny_tools",
            Box::new(|s| s.deny_tools = ps(&["fs__write_file"])),
        ),
    ];
    for (field, widen) in &cases {
        let mut child = limited();
        widen(&mut child);
        assert_eq!(child.fields_exceeding(&parent), [*field], "{field}");
    }
    // Narrower in every field exceeds nothing; equal limits do not exceed either.
    let narrower = Scope {
        buckets: strings(&["a"]),
        tools: ps(&["whoami"]),
        read_only: true,
        allowed_ips: vec![net("10.1.0.0/16")],
        expires_at: at(999_999),
        max_uses: Some(4),
        rate_limit_per_minute: Some(9),
        deny_tools: ps(&["fs__*"]),
        ..limited()
    };
    assert!(narrower.fields_exceeding(&parent).is_empty());
    // read_only: a read-only parent needs a read-only child; the reverse is narrowing.
    let read_only_parent = Scope {
        read_only: true,
        ..limited()
    };
    assert_eq!(limited().fields_exceeding(&read_only_parent), ["read_only"]);
    assert!(read_only_parent.fields_exceeding(&limited()).is_empty());
    // An admin parent may hold an admin child.
    let admin_parent = Scope {
        admin: true,
        ..limited()
    };
    assert!(admin_parent.fields_exceeding(&admin_parent).is_empty());
    // A limit where the parent has none is never exceeding; none where the parent has one is.
    let unlimited_uses = Scope {
        max_uses: None,
        expires_at: None,
        rate_limit_per_minute: None,
        ..limited()
    };
    assert_eq!(
        unlimited_uses.fields_exceeding(&parent),
        ["expires_at", "max_uses", "rate_limit_per_minute"]
    );
    assert!(parent.fields_exceeding(&unlimited_uses).is_empty());
}

#[test]
fn clamping_takes_the_narrower_of_each_field() {
    let parent = limited();
    let wide = Scope {
        admin: true,
        read_only: false,
        ..Scope::unlimited("other")
    };
    let clamped = wide.clamped_to(&parent);
    assert_eq!(clamped, Scope { ..limited() });

    // Each field from whichever side is narrower.
    let child = Scope {
        environment: "default".into(),
        buckets: strings(&["b", "c"]),
        tools: ps(&["list_tokens", "get_token"]),
        read_only: true,
        admin: true,
        allowed_ips: vec![net("10.1.0.0/16"), net("192.168.0.0/16")],
        expires_at: at(500),
        max_uses: Some(9),
        rate_limit_per_minute: Some(3),
        deny_tools: ps(&["x"]),
    };
    let clamped = child.clamped_to(&parent);
    assert_eq!(clamped.buckets, strings(&["b"]));
    assert_eq!(clamped.tools, ps(&["list_tokens"]));
    assert!(clamped.read_only, "a read-only child stays read-only");
    assert!(!clamped.admin, "admin needs both");
    assert_eq!(clamped.allowed_ips, vec![net("10.1.0.0/16")]);
    assert_eq!(clamped.expires_at, at(500));
    assert_eq!(clamped.max_uses, Some(5));
    assert_eq!(clamped.rate_limit_per_minute, Some(3));
    assert_eq!(clamped.deny_tools, ps(&["fs__write*", "x"]));
    assert!(clamped.fields_exceeding(&parent).is_empty());

    // Limits only one side has are kept; `*` buckets on either side give the other side's.
    let open = Scope {
        max_uses: None,
        rate_limit_per_minute: None,
        expires_at: None,
        buckets: strings(&["*"]),
        ..limited()
    };
    let clamped = limited().clamped_to(&open);
    assert_eq!(clamped.max_uses, Some(5));
    assert_eq!(clamped.rate_limit_per_minute, Some(10));
    assert_eq!(clamped.expires_at, at(1_000_000));
    assert_eq!(clamped.buckets, strings(&["a", "b"]));
    let clamped = open.clamped_to(&limited());
    assert_eq!(clamped.max_uses, Some(5));
    assert_eq!(clamped.buckets, strings(&["a", "b"]));
    let both_open = open.clamped_to(&open);
    assert_eq!(both_open.max_uses, None);
    assert_eq!(both_open.buckets, strings(&["*"]));
    // A read-only parent makes the clamped child read-only; an admin pair stays admin.
    let ro_admin = Scope {
        read_only: true,
        admin: true,
        ..limited()
    };
    let clamped = Scope {
        admin: true,
        ..limited()
    }
    .clamped_to(&ro_admin);
    assert!(clamped.read_only);
    assert!(clamped.admin);
    assert!(!limited().clamped_to(&limited()).read_only);
}
