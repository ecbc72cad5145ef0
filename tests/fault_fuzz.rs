//! Property-based fuzzing on the stable toolchain: the secret, id and timestamp parsers, the
//! tool-pattern parser and containment, CIDR parsing and containment, and every tool's
//! argument handling (deserialisation, validation, execution against a real store) never
//! panic, whatever they are given. Any refusal is a typed error.

use std::net::IpAddr;
use std::sync::OnceLock;

use proptest::prelude::*;
use serde_json::{Map, Value};
use tempfile::TempDir;
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
        let _ = patterns_within(&patterns, &patterns);
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
        let _ = ranges_within(&nets, &nets);
        let _ = intersect_ranges(&nets, &nets);
        for ip in probes {
            let _ = address_allowed(&nets, ip);
        }
    }

    #[test]
    fn tool_arguments_never_panic(tool in 0usize..14, arguments in json_value()) {
        let tools = definitions();
        let name = tools[tool % tools.len()].name.to_string();
        let arguments = match arguments {
            object @ Value::Object(_) => object,
            other => serde_json::json!({ "id": other }),
        };
        // Ok or a typed error; a panic fails the case.
        let _ = dispatch(service(), &Caller::Owner, &name, arguments);
    }
}
