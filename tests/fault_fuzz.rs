//! Property-based fuzzing on the stable toolchain: the secret, id and timestamp parsers, the
//! tool-pattern parser and containment, CIDR parsing and containment, and every tool's
//! argument handling (deserialisation, validation, execution against a real store) never
//! panic, whatever they are given. Any refusal is a typed error, never `internal`. Arbitrary
//! arguments mostly stop at validation, so a second fuzzer generates valid-shaped arguments
//! (the tool's own fields, plausible values, ids and secrets of tokens that exist) from the
//! owner and from tokens, and checks that most cases get past validation to the store.

use std::net::IpAddr;
use std::sync::OnceLock;

use proptest::prelude::*;
use serde_json::{Map, Value};
use tempfile::TempDir;
use tokenwarden::error::ErrorCode;
use tokenwarden::mcp::tools::{definitions, dispatch};
use tokenwarden::rules::cidr::{IpNet, address_allowed, intersect_ranges, ranges_within};
use tokenwarden::rules::pattern::{
    ToolPattern, any_matches, intersect_patterns, minimise, patterns_within,
};
use tokenwarden::secret::{Secret, TokenId};
use tokenwarden::service::{Caller, Service, ServiceConfig};
use tokenwarden::timestamp::Timestamp;

/// Text that is often almost valid: fragments of the real formats glued to arbitrary text.
fn near_text() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        Just("mcp_".to_owned()),
        Just("tok_".to_owned()),
        Just("*".to_owned()),
        Just("_".to_owned()),
        Just("/".to_owned()),
        Just(".".to_owned()),
        Just(":".to_owned()),
        "[a-z]{1,12}",
        "[A-Za-z0-9]{1,40}",
        "[0-9]{1,4}",
        ".{0,8}",
    ];
    prop::collection::vec(fragment, 0..6).prop_map(|parts| parts.concat())
}

fn json_value() -> impl Strategy<Value = Value> {
    let keys = prop_oneof![
        Just("name"),
        Just("id"),
        Just("buckets"),
        Just("tools"),
        Just("parent"),
        Just("ttl_seconds"),
        Just("expires_at"),
        Just("allowed_ips"),
        Just("metadata"),
        Just("max_uses"),
        Just("rate_limit_per_minute"),
        Just("read_only"),
        Just("admin"),
        Just("limit"),
        Just("cursor"),
        Just("status"),
        Just("order"),
        Just("token"),
        Just("grace_seconds"),
        Just("add_tools"),
        Just("remove_buckets"),
        Just("x"),
    ]
    .prop_map(str::to_owned);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        near_text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// One service over a scratch store, shared by every case.
fn service() -> &'static Service {
    static SERVICE: OnceLock<(TempDir, Service)> = OnceLock::new();
    &SERVICE
        .get_or_init(|| {
            let dir = TempDir::new().unwrap();
            let service = Service::open(dir.path(), ServiceConfig::default()).unwrap();
            (dir, service)
        })
        .1
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parsers_never_panic(text in near_text(), raw in ".{0,120}") {
        for s in [&text, &raw] {
            let _ = Secret::parse(s);
            let _ = Secret::hash_presented(s);
            let _ = TokenId::parse(s);
            let _ = Timestamp::parse(s);
            let _ = ToolPattern::parse(s);
            let _ = IpNet::parse(s);
        }
    }

    #[test]
    fn pattern_operations_never_panic(texts in prop::collection::vec(near_text(), 0..6), tool in near_text()) {
        let patterns: Vec<ToolPattern> = texts.iter().filter_map(|t| ToolPattern::parse(t).ok()).collect();
        for a in &patterns {
            let _ = a.matches(&tool);
            for b in &patterns {
                let within = a.is_within(b);
                // A pattern within another never matches a name the other does not.
                prop_assert!(!within || !a.matches(&tool) || b.matches(&tool));
                let _ = a.intersect(b);
            }
        }
        // Containment is reflexive: a list always lies within itself.
        prop_assert!(patterns_within(&patterns, &patterns));
        for a in &patterns {
            prop_assert!(a.is_within(a), "{a} is not within itself");
            prop_assert!(patterns_within(std::slice::from_ref(a), &patterns));
        }
        let _ = intersect_patterns(&patterns, &patterns);
        let _ = any_matches(&patterns, &tool);
        let _ = minimise(patterns);
    }

    #[test]
    fn cidr_operations_never_panic(
        v4 in any::<[u8; 4]>(), v6 in any::<[u16; 8]>(), prefix in any::<u8>(),
        probe4 in any::<[u8; 4]>(), probe6 in any::<[u16; 8]>(), text in near_text(),
    ) {
        let texts = [
            format!("{}.{}.{}.{}/{prefix}", v4[0], v4[1], v4[2], v4[3]),
            format!("{}/{prefix}", std::net::Ipv6Addr::from(v6)),
            format!("::ffff:{}.{}.{}.{}/{prefix}", v4[0], v4[1], v4[2], v4[3]),
            text,
        ];
        let nets: Vec<IpNet> = texts.iter().filter_map(|t| IpNet::parse(t).ok()).collect();
        let probes = [IpAddr::from(probe4), IpAddr::from(probe6)];
        for a in &nets {
            for ip in probes {
                let _ = a.contains(ip);
            }
            for b in &nets {
                if a.is_within(b) {
                    for ip in probes {
                        prop_assert!(!a.contains(ip) || b.contains(ip));
                    }
                }
            }
        }
        // Containment is reflexive, IPv4-mapped IPv6 ranges (`::ffff:a.b.c.d/p`) included.
        prop_assert!(ranges_within(&nets, &nets), "ranges are within themselves");
        let _ = intersect_ranges(&nets, &nets);
        for ip in probes {
            let _ = address_allowed(&nets, ip);
        }
    }

    #[test]
    fn tool_arguments_never_panic(tool in 0usize..15, arguments in json_value()) {
        let tools = definitions();
        let name = tools[tool % tools.len()].name.to_string();
        let arguments = match arguments {
            object @ Value::Object(_) => object,
            other => serde_json::json!({ "id": other }),
        };
        // Ok or a typed error that blames the input; a panic fails the case, and so does an
        // `internal` error (a storage failure or a bug, never the caller's fault).
        if let Err(e) = dispatch(service(), &Caller::Owner, &name, arguments.clone()) {
            prop_assert_ne!(e.code, ErrorCode::Internal, "{}({}): {}", name, arguments, e);
        }
    }
}

/// Valid-shaped values for one argument field; `@id` and `@secret` stand for a token of the
/// shared pool, resolved when the case runs.
fn field_value(field: &'static str) -> BoxedStrategy<Value> {
    use serde_json::json;
    let tools = prop::sample::select(vec![
        "*",
        "whoami",
        "list_*",
        "get_token",
        "fs__*",
        "fs__read",
    ]);
    let buckets = prop::sample::select(vec!["*", "a", "b", "c"]);
    match field {
        "name" => "[a-z][a-z0-9 _-]{0,15}".prop_map(Value::from).boxed(),
        "description" | "search" => "[a-z ]{0,12}".prop_map(Value::from).boxed(),
        "buckets" | "add_buckets" | "remove_buckets" => prop::collection::vec(buckets, 0..3)
            .prop_map(|v| json!(v))
            .boxed(),
        "tools" | "add_tools" | "remove_tools" | "deny_tools" | "add_deny_tools" => {
            prop::collection::vec(tools, 0..3)
                .prop_map(|v| json!(v))
                .boxed()
        }
        "read_only" | "admin" => any::<bool>().prop_map(Value::from).boxed(),
        "allowed_ips" => prop::collection::vec(
            prop::sample::select(vec![
                "10.0.0.0/8",
                "10.1.0.0/16",
                "192.168.1.0/24",
                "::1/128",
            ]),
            0..3,
        )
        .prop_map(|v| json!(v))
        .boxed(),
        "expires_at" => prop::sample::select(vec![
            "2099-01-01T00:00:00Z",
            "2098-06-01T12:00:00.500Z",
            "2030-01-01T00:00:00+02:00",
        ])
        .prop_map(Value::from)
        .boxed(),
        "ttl_seconds" => (1i64..10_000_000).prop_map(Value::from).boxed(),
        "max_uses" => (1i64..1000).prop_map(Value::from).boxed(),
        "rate_limit_per_minute" => (1i64..1000).prop_map(Value::from).boxed(),
        "metadata" => "[a-z]{1,5}".prop_map(|k| json!({ k: "v" })).boxed(),
        "parent" => prop::sample::select(vec!["none", "self", "@id", "@id"])
            .prop_map(Value::from)
            .boxed(),
        "id" | "token_id" | "parent_id" | "lineage_id" => Just(Value::from("@id")).boxed(),
        "token" => Just(Value::from("@secret")).boxed(),
        "grace_seconds" => (0i64..86_400).prop_map(Value::from).boxed(),
        "tool" => prop::sample::select(vec!["whoami", "create_token", "fs__read", "list_tokens"])
            .prop_map(Value::from)
            .boxed(),
        "bucket" => prop::sample::select(vec!["a", "b", "c"])
            .prop_map(Value::from)
            .boxed(),
        "status" => prop::sample::select(vec!["active", "paused", "revoked", "expired"])
            .prop_map(Value::from)
            .boxed(),
        "limit" => (1i64..=100).prop_map(Value::from).boxed(),
        "order" => prop::sample::select(vec!["asc", "desc"])
            .prop_map(Value::from)
            .boxed(),
        "action" => prop::sample::select(vec!["create", "revoke", "pause", "scope"])
            .prop_map(Value::from)
            .boxed(),
        "since" => Just(Value::from("2000-01-01T00:00:00Z")).boxed(),
        "until" => Just(Value::from("2100-01-01T00:00:00Z")).boxed(),
        "outcome" => prop::sample::select(vec!["ok", "forbidden", "paused"])
            .prop_map(Value::from)
            .boxed(),
        other => panic!("no values for field {other}"),
    }
}

/// Each tool with its required and optional fields.
const TOOL_FIELDS: &[(&str, &[&str], &[&str])] = &[
    (
        "create_token",
        &["name"],
        &[
            "description",
            "buckets",
            "tools",
            "deny_tools",
            "read_only",
            "admin",
            "allowed_ips",
            "ttl_seconds",
            "max_uses",
            "rate_limit_per_minute",
            "metadata",
            "parent",
        ],
    ),
    (
        "update_token",
        &["id"],
        &[
            "name",
            "description",
            "metadata",
            "expires_at",
            "max_uses",
            "rate_limit_per_minute",
        ],
    ),
    (
        "scope_token",
        &["id"],
        &[
            "buckets",
            "add_buckets",
            "remove_buckets",
            "tools",
            "add_tools",
            "remove_tools",
            "deny_tools",
            "add_deny_tools",
            "read_only",
            "allowed_ips",
        ],
    ),
    ("pause_token", &["id"], &[]),
    ("resume_token", &["id"], &[]),
    ("rotate_token", &["id"], &["grace_seconds"]),
    ("revoke_token", &["id"], &[]),
    ("delete_token", &["id"], &[]),
    ("get_token", &["id"], &[]),
    ("verify_token", &["token"], &["tool", "bucket"]),
    (
        "list_tokens",
        &[],
        &["status", "bucket", "parent_id", "search", "limit", "order"],
    ),
    (
        "list_audit_events",
        &[],
        &["token_id", "action", "since", "limit"],
    ),
    (
        "list_access_events",
        &[],
        &[
            "token_id",
            "lineage_id",
            "tool",
            "bucket",
            "outcome",
            "since",
            "until",
            "limit",
        ],
    ),
    ("whoami", &[], &[]),
];

/// One valid-shaped case: a tool, its arguments (with placeholders), who calls, and which
/// tokens of the pool the placeholders and the caller stand for.
fn valid_shaped_case()
-> impl Strategy<Value = (&'static str, Map<String, Value>, u8, prop::sample::Index)> {
    (0..TOOL_FIELDS.len()).prop_flat_map(|t| {
        let (tool, required, optional) = TOOL_FIELDS[t];
        let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = required
            .iter()
            .map(|f| {
                field_value(f)
                    .prop_map(move |v| Some(((*f).to_owned(), v)))
                    .boxed()
            })
            .chain(optional.iter().map(|f| {
                // Each optional field about one time in three, so narrow cases are common.
                prop::option::weighted(0.35, field_value(f))
                    .prop_map(move |v| v.map(|v| ((*f).to_owned(), v)))
                    .boxed()
            }))
            .collect();
        (
            Just(tool),
            fields.prop_map(|kv| kv.into_iter().flatten().collect::<Map<_, _>>()),
            0u8..4,
            any::<prop::sample::Index>(),
        )
    })
}

/// Valid-shaped arguments from the owner and from tokens (an admin, a narrow token, a child)
/// run against a store that keeps the tokens they create: no panic, no `internal` error, and
/// most cases get past argument validation to the store.
#[test]
fn valid_shaped_tool_arguments_reach_the_store_without_internal_errors() {
    use proptest::test_runner::{Config, TestRunner};
    use serde_json::json;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    let dir = TempDir::new().unwrap();
    let service = Service::open(dir.path(), ServiceConfig::default()).unwrap();
    let mint = |caller: &Caller, args: Value| -> (String, String) {
        let issued = dispatch(&service, caller, "create_token", args).unwrap();
        (
            issued["id"].as_str().unwrap().to_owned(),
            issued["token"].as_str().unwrap().to_owned(),
        )
    };
    let admin = mint(&Caller::Owner, json!({"name": "admin", "admin": true}));
    let narrow = mint(
        &Caller::Owner,
        json!({"name": "narrow", "buckets": ["a", "b"], "tools": ["*"], "max_uses": 900}),
    );
    let child = mint(
        &Caller::Token(tokenwarden::secret::TokenId::parse(&narrow.0).unwrap()),
        json!({"name": "child", "buckets": ["a"]}),
    );
    let callers = [
        Caller::Owner,
        Caller::Token(tokenwarden::secret::TokenId::parse(&admin.0).unwrap()),
        Caller::Token(tokenwarden::secret::TokenId::parse(&narrow.0).unwrap()),
        Caller::Token(tokenwarden::secret::TokenId::parse(&child.0).unwrap()),
    ];
    // Tokens the placeholders pick from: targets minted by each caller (never the callers
    // themselves, so that revoking or deleting a target leaves the callers able to act), and
    // everything created since.
    let targets: Vec<(String, String)> = callers
        .iter()
        .flat_map(|by| {
            (0..2)
                .map(|i| mint(by, json!({"name": format!("target{i}"), "buckets": ["a"]})))
                .collect::<Vec<_>>()
        })
        .collect();
    let pool = Mutex::new(targets);
    let outcomes = Mutex::new(BTreeMap::<String, u64>::new());

    let mut runner = TestRunner::new(Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&valid_shaped_case(), |(tool, mut args, who, pick)| {
            let (id, secret) = {
                let pool = pool.lock().unwrap();
                pool[pick.index(pool.len())].clone()
            };
            for value in args.values_mut() {
                if *value == json!("@id") {
                    *value = json!(id);
                } else if *value == json!("@secret") {
                    *value = json!(secret);
                }
            }
            let args = Value::Object(args);
            let caller = &callers[who as usize];
            let outcome = dispatch(&service, caller, tool, args.clone());
            let key = match &outcome {
                Ok(value) => {
                    if let (Some(id), Some(secret)) =
                        (value["id"].as_str(), value["token"].as_str())
                    {
                        pool.lock()
                            .unwrap()
                            .push((id.to_owned(), secret.to_owned()));
                    }
                    "ok".to_owned()
                }
                Err(e) => {
                    prop_assert_ne!(
                        e.code,
                        ErrorCode::Internal,
                        "{}({}) by {:?}: {}",
                        tool,
                        args,
                        caller,
                        e
                    );
                    e.code.as_str().to_owned()
                }
            };
            *outcomes.lock().unwrap().entry(key).or_default() += 1;
            Ok(())
        })
        .unwrap();
    let outcomes = outcomes.into_inner().unwrap();
    let total: u64 = outcomes.values().sum();
    let stopped_at_validation = outcomes.get("invalid_argument").copied().unwrap_or(0);
    let reached = total - stopped_at_validation;
    println!(
        "valid-shaped tool arguments: {reached} of {total} cases reached the store ({outcomes:?})"
    );
    assert!(
        reached * 4 >= total * 3,
        "only {reached} of {total} valid-shaped cases got past validation: {outcomes:?}"
    );
    assert!(
        outcomes.get("ok").copied().unwrap_or(0) * 4 >= total,
        "{outcomes:?}"
    );
}
