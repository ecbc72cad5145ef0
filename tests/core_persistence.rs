//! Durability (SPEC §8): everything a store holds survives closing and reopening it, and the
//! store never holds a secret.

mod core_support;

use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::Duration;

use core_support::*;
use serde_json::json;
use tokenwarden::audit::AuditEvent;
use tokenwarden::error::ErrorCode;
use tokenwarden::record::Status;
use tokenwarden::secret::TokenId;
use tokenwarden::service::requests::{
    CreateToken, Issued, ListAuditEvents, ListTokens, RotateToken, ScopeToken, SortOrder,
    TokenView, UpdateToken,
};
use tokenwarden::service::{AuthFailure, Caller, Service};

/// What presenting a secret leads to, in a form that can be compared across a reopen.
fn outcome(service: &Service, secret: &str) -> String {
    match service.authenticate(secret, None) {
        Ok(id) => format!("ok {id}"),
        Err(AuthFailure::Denied(d)) => format!("denied {:?} {}", d.rule, d.token),
        Err(AuthFailure::RotatedOut(id)) => format!("rotated out {id}"),
        Err(AuthFailure::Unknown) => "unknown".to_owned(),
        Err(other) => panic!("unexpected failure: {other}"),
    }
}

/// Every token the owner can list, by id, walking all pages.
fn all_views(service: &Service) -> BTreeMap<TokenId, TokenView> {
    list_all(service, &Caller::Owner, ListTokens::default(), 100)
        .into_iter()
        .map(|v| (v.id.clone(), v))
        .collect()
}

/// Walks every page of `list_tokens` with the given filter and page size.
fn list_all(service: &Service, by: &Caller, filter: ListTokens, limit: u32) -> Vec<TokenView> {
    let mut out = Vec::new();
    let mut cursor = None;
    for _ in 0..1000 {
        let page = service
            .list_tokens(
                by,
                ListTokens {
                    limit: Some(limit),
                    cursor: cursor.take(),
                    ..filter.clone()
                },
            )
            .unwrap();
        assert!(page.records.len() <= limit as usize);
        out.extend(page.records);
        if !page.has_more {
            assert!(page.next_cursor.is_none());
            return out;
        }
        cursor = Some(page.next_cursor.expect("has_more comes with a cursor"));
    }
    panic!("pagination does not end");
}

fn all_audit_events(service: &Service) -> Vec<AuditEvent> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = service
            .list_audit_events(
                &Caller::Owner,
                ListAuditEvents {
                    limit: Some(7),
                    cursor: cursor.take(),
                    ..ListAuditEvents::default()
                },
            )
            .unwrap();
        out.extend(page.events);
        if !page.has_more {
            return out;
        }
        cursor = page.next_cursor;
    }
}

fn ids(views: &[TokenView]) -> Vec<TokenId> {
    views.iter().map(|v| v.id.clone()).collect()
}

/// The tokens of the scenario, and every secret ever issued (current and rotated out).
struct World {
    ids: BTreeMap<&'static str, TokenId>,
    secrets: Vec<(&'static str, String)>,
    /// Management actions performed, with the token each was about.
    actions: Vec<(&'static str, TokenId)>,
}

impl World {
    fn keep(&mut self, label: &'static str, issued: &Issued) -> Caller {
        self.ids.insert(label, issued.record.id.clone());
        self.secrets.push((label, issued.token.clone()));
        self.actions.push(("create", issued.record.id.clone()));
        caller(issued)
    }
    fn id(&self, label: &str) -> TokenId {
        self.ids[label].clone()
    }
}

/// Builds a varied store: roots and children (some minted by tokens), an admin, paused,
/// revoked, rotated (within and past grace), deleted, expired, re-scoped and updated tokens,
/// and tokens with uses spent.
fn build(s: &Service) -> World {
    let mut w = World {
        ids: BTreeMap::new(),
        secrets: Vec::new(),
        actions: Vec::new(),
    };
    let owner = Caller::Owner;
    let admin = create(
        s,
        &owner,
        CreateToken {
            name: "admin".into(),
            admin: Some(true),
            parent: Some("none".into()),
            ..CreateToken::default()
        },
    );
    let admin_c = w.keep("admin", &admin);

    let app = create(
        s,
        &owner,
        CreateToken {
            name: "app".into(),
            description: Some("the app".into()),
            tools: strings(&["whoami", "list_*", "get_token", "create_token"]),
            buckets: strings(&["a", "b"]),
            metadata: Some(json!({"team": "core", "n": 1}).as_object().unwrap().clone()),
            rate_limit_per_minute: Some(1000),
            allowed_ips: strings(&["10.0.0.0/8", "::1/128"]),
            parent: Some("none".into()),
            ..CreateToken::default()
        },
    );
    let app_c = w.keep("app", &app);
    let worker = create(
        s,
        &app_c,
        CreateToken {
            name: "worker".into(),
            buckets: strings(&["a"]),
            ..CreateToken::default()
        },
    );
    let worker_c = w.keep("worker", &worker);
    let helper = child_of(s, &worker, "helper");
    w.keep("helper", &helper);
    let metered = create(
        s,
        &owner,
        CreateToken {
            name: "metered".into(),
            max_uses: Some(5),
            ttl_seconds: Some(86_400),
            parent: Some(id_of(&app)),
            ..CreateToken::default()
        },
    );
    let metered_c = w.keep("metered", &metered);

    let sleepy = root(s, "sleepy", &[], &[]);
    w.keep("sleepy", &sleepy);
    let sleepy_kid = child_of(s, &sleepy, "sleepy kid");
    w.keep("sleepy kid", &sleepy_kid);
    let gone = root(s, "gone", &["whoami"], &["x"]);
    w.keep("gone", &gone);
    let gone_kid = child_of(s, &gone, "gone kid");
    w.keep("gone kid", &gone_kid);
    let rotated_slow = root(s, "rotated slow", &[], &[]);
    w.keep("rotated slow", &rotated_slow);
    let rotated_fast = root(s, "rotated fast", &[], &[]);
    w.keep("rotated fast", &rotated_fast);
    let deleted = root(s, "deleted", &[], &[]);
    w.keep("deleted", &deleted);
    let deleted_kid = child_of(s, &deleted, "deleted kid");
    w.keep("deleted kid", &deleted_kid);
    let ephemeral = create(
        s,
        &admin_c,
        CreateToken {
            name: "ephemeral".into(),
            ttl_seconds: Some(1),
            parent: Some("none".into()),
            ..CreateToken::default()
        },
    );
    w.keep("ephemeral", &ephemeral);

    // update
    s.update_token(
        &owner,
        UpdateToken {
            id: id_of(&app),
            name: Some("app renamed".into()),
            description: Some(None),
            metadata: Some(json!({"team": "platform"}).as_object().unwrap().clone()),
            ..UpdateToken::default()
        },
    )
    .unwrap();
    w.actions.push(("update", w.id("app")));
    // scope, by a token on its child
    assert_eq!(
        tools_of(&view(s, &worker.record.id)),
        ["list_*", "create_token", "get_token", "whoami"],
        "inherited from app"
    );
    s.scope_token(
        &app_c,
        ScopeToken {
            id: id_of(&worker),
            tools: strings(&["whoami", "list_tokens", "create_token"]),
            read_only: Some(false),
            ..ScopeToken::default()
        },
    )
    .unwrap();
    w.actions.push(("scope", w.id("worker")));
    // pause (a subtree), pause + resume (another)
    s.pause_token(&owner, token_ref(&sleepy.record.id)).unwrap();
    w.actions.push(("pause", w.id("sleepy")));
    s.pause_token(&worker_c, token_ref(&helper.record.id))
        .unwrap();
    w.actions.push(("pause", w.id("helper")));
    s.resume_token(&worker_c, token_ref(&helper.record.id))
        .unwrap();
    w.actions.push(("resume", w.id("helper")));
    // revoke (cascades)
    let r = s
        .revoke_token(&admin_c, token_ref(&gone.record.id))
        .unwrap();
    assert_eq!(r.revoked_descendants, 1);
    w.actions.push(("revoke", w.id("gone")));
    // rotate within a long grace, and with none
    for (label, issued, grace) in [
        ("rotated slow", &rotated_slow, 3600),
        ("rotated fast", &rotated_fast, 0),
    ] {
        let new = s
            .rotate_token(
                &owner,
                RotateToken {
                    id: id_of(issued),
                    grace_seconds: Some(grace),
                },
            )
            .unwrap();
        w.secrets.push((label, new.token));
        w.actions.push(("rotate", w.id(label)));
    }
    // delete (a subtree)
    s.delete_token(&owner, token_ref(&deleted.record.id))
        .unwrap();
    w.actions.push(("delete", w.id("deleted")));

    // Usage: counters written behind, remaining uses written through.
    for _ in 0..2 {
        s.authorize_call(&metered_c, "whoami", Some("a"), None)
            .unwrap();
    }
    for _ in 0..3 {
        s.authorize_call(&worker_c, "whoami", Some("a"), None)
            .unwrap();
    }
    s.authorize_call(&admin_c, "list_audit_events", None, None)
        .unwrap();

    thread::sleep(Duration::from_millis(1100)); // "ephemeral" expires
    w
}

/// Closing and reopening the store changes nothing: every record (usage counters included) is
/// equal, every secret is accepted or refused exactly as before, the children and status
/// indexes answer the same, limits keep counting where they stopped, and audit ids continue.
#[test]
fn a_reopened_store_is_the_same_store() {
    reopening_changes_nothing(Fixture::new());
}

/// The same, with an in-memory cache of two entries: eviction and cold reads change no answer.
#[test]
fn a_reopened_store_is_the_same_store_with_a_tiny_cache() {
    reopening_changes_nothing(Fixture::with_config(tiny_cache()));
}

fn reopening_changes_nothing(fx: Fixture) {
    let w = build(&fx.service);
    let before = all_views(&fx.service);
    assert_eq!(before.len(), w.ids.len() - 2, "all but the two deleted");
    let outcomes: Vec<String> = w
        .secrets
        .iter()
        .map(|(_, secret)| outcome(&fx.service, secret))
        .collect();
    let events_before = all_audit_events(&fx.service);

    let fx = fx.reopen();
    let s = &fx.service;

    let after = all_views(s);
    assert_eq!(after.len(), before.len());
    for (id, v) in &before {
        assert_eq!(
            after.get(id),
            Some(v),
            "{} changed across the reopen",
            v.name
        );
        assert_eq!(&view(s, id), v);
    }
    for ((label, secret), expected) in w.secrets.iter().zip(&outcomes) {
        assert_eq!(&outcome(s, secret), expected, "{label}'s secret");
    }
    assert_eq!(all_audit_events(s), events_before);

    // Spot checks that the scenario is what it claims to be.
    let v = |label: &str| after[&w.id(label)].clone();
    assert_eq!(v("app").name, "app renamed");
    assert_eq!(v("app").description, None);
    assert_eq!(v("app").metadata["team"], "platform");
    assert_eq!(v("app").allowed_ips.len(), 2);
    assert_eq!(v("metered").remaining_uses, Some(3));
    assert_eq!(v("metered").use_count, 2);
    assert_eq!(v("worker").use_count, 3, "written behind at shutdown");
    assert!(v("worker").last_used_at.is_some());
    assert_eq!(
        tools_of(&v("worker")),
        ["create_token", "list_tokens", "whoami"]
    );
    assert_eq!(v("helper").status, Status::Active);
    assert_eq!(v("sleepy").status, Status::Paused);
    assert_eq!(v("gone kid").status, Status::Revoked);
    assert_eq!(v("ephemeral").status, Status::Expired);
    assert!(!after.contains_key(&w.id("deleted")));
    assert!(!after.contains_key(&w.id("deleted kid")));
    let expect_outcome = |label: &str, nth: usize, prefix: &str| {
        let (i, _) = w
            .secrets
            .iter()
            .enumerate()
            .filter(|(_, (l, _))| *l == label)
            .nth(nth)
            .unwrap();
        assert!(
            outcomes[i].starts_with(prefix),
            "{label} secret #{nth}: {}",
            outcomes[i]
        );
    };
    expect_outcome("rotated slow", 0, "ok");
    expect_outcome("rotated slow", 1, "ok");
    expect_outcome("rotated fast", 0, "unknown");
    expect_outcome("rotated fast", 1, "ok");
    expect_outcome("deleted", 0, "unknown");
    expect_outcome("deleted kid", 0, "unknown");
    expect_outcome("sleepy kid", 0, "denied Paused");
    expect_outcome("gone kid", 0, "denied Revoked");
    expect_outcome("ephemeral", 0, "denied Expired");
    expect_outcome("helper", 0, "ok");

    // Limits continue where they stopped: exactly 3 of 5 uses are left.
    let metered = Caller::Token(w.id("metered"));
    for _ in 0..3 {
        s.authorize_call(&metered, "whoami", Some("a"), None)
            .unwrap();
    }
    expect_code(
        s.authorize_call(&metered, "whoami", Some("a"), None),
        ErrorCode::LimitExceeded,
    );

    // The children index: by the owner and by a token within its own reach.
    let children = |by: &Caller, parent: &str| -> BTreeSet<TokenId> {
        ids(&list_all(
            s,
            by,
            ListTokens {
                parent_id: Some(w.id(parent).to_string()),
                ..ListTokens::default()
            },
            1,
        ))
        .into_iter()
        .collect()
    };
    let set = |labels: &[&str]| labels.iter().map(|l| w.id(l)).collect::<BTreeSet<_>>();
    assert_eq!(children(&Caller::Owner, "app"), set(&["worker", "metered"]));
    assert_eq!(
        children(&Caller::Token(w.id("app")), "app"),
        set(&["worker", "metered"])
    );
    assert_eq!(children(&Caller::Owner, "worker"), set(&["helper"]));
    assert_eq!(children(&Caller::Owner, "gone"), set(&["gone kid"]));
    assert_eq!(children(&Caller::Owner, "helper"), set(&[]));

    // Audit ids continue after the reopen: a new event sorts after every old one.
    let newest_before = events_before.iter().map(|e| e.id).max().unwrap();
    let fresh = root(s, "after reopen", &[], &[]);
    let newest = all_audit_events(s).into_iter().next().unwrap();
    assert_eq!(newest.target.as_ref(), Some(&fresh.record.id));
    assert!(newest.id > newest_before);
}

/// Tokens belong to the environment they were created in: a store reopened by a server of
/// another environment refuses every one of them, and reopened in its own accepts them again.
#[test]
fn tokens_do_not_authenticate_in_another_environment() {
    let fx = Fixture::new();
    let w = build(&fx.service);
    let outcomes: Vec<String> = w
        .secrets
        .iter()
        .map(|(_, secret)| outcome(&fx.service, secret))
        .collect();
    let mut staging = fx.service.config().clone();
    staging.environment = "staging".into();
    let fx = fx.reopen_with(staging);
    for ((label, secret), before) in w.secrets.iter().zip(&outcomes) {
        let now = outcome(&fx.service, secret);
        if before.starts_with("ok") {
            assert!(now.starts_with("denied Environment"), "{label}: {now}");
        } else {
            assert_eq!(
                &now, before,
                "{label}: refused for the same reason as before"
            );
        }
    }
    let fx = fx.reopen_with(tokenwarden::service::ServiceConfig::default());
    for ((label, secret), before) in w.secrets.iter().zip(&outcomes) {
        assert_eq!(&outcome(&fx.service, secret), before, "{label}");
    }
}

/// `list_tokens` returns every token exactly once, page after page, in creation order both
/// ways, with and without a status filter, for the owner and for a token listing its subtree.
#[test]
fn pagination_returns_every_token_exactly_once_in_both_orders() {
    let fx = Fixture::new();
    let w = build(&fx.service);
    let fx = fx.reopen();
    let s = &fx.service;
    let everything = all_views(s);
    assert!(everything.len() >= 12);

    let statuses = [
        None,
        Some(Status::Active),
        Some(Status::Paused),
        Some(Status::Revoked),
        Some(Status::Expired),
    ];
    for by in [Caller::Owner, Caller::Token(w.id("app"))] {
        for status in statuses {
            let expected: BTreeSet<TokenId> = list_all(s, &by, ListTokens::default(), 100)
                .into_iter()
                .filter(|v| status.is_none_or(|st| v.status == st))
                .map(|v| v.id)
                .collect();
            if by == Caller::Owner && status.is_some() {
                assert!(!expected.is_empty(), "the scenario has {status:?} tokens");
            }
            for limit in [1, 2, 3, 100] {
                let mut orders = Vec::new();
                for order in [SortOrder::Asc, SortOrder::Desc] {
                    let listed = list_all(
                        s,
                        &by,
                        ListTokens {
                            status,
                            order: Some(order),
                            ..ListTokens::default()
                        },
                        limit,
                    );
                    let listed_ids = ids(&listed);
                    let unique: BTreeSet<TokenId> = listed_ids.iter().cloned().collect();
                    assert_eq!(
                        unique.len(),
                        listed_ids.len(),
                        "a token listed twice ({by:?}, {status:?}, {order:?}, limit {limit})"
                    );
                    assert_eq!(
                        unique, expected,
                        "({by:?}, {status:?}, {order:?}, limit {limit})"
                    );
                    let keys: Vec<_> = listed
                        .iter()
                        .map(|v| (v.created_at, v.id.clone()))
                        .collect();
                    let mut sorted = keys.clone();
                    sorted.sort();
                    if order == SortOrder::Desc {
                        sorted.reverse();
                    }
                    assert_eq!(keys, sorted, "not in {order:?} creation order");
                    orders.push(listed_ids);
                }
                let mut asc = orders[0].clone();
                asc.reverse();
                assert_eq!(asc, orders[1], "desc is asc reversed");
            }
        }
    }
}

/// Every management action leaves a durable audit event naming its actor and target, and no
/// audit event nor any byte of the store contains a secret that was ever issued.
#[test]
fn every_action_is_audited_and_no_secret_is_ever_stored() {
    let fx = Fixture::new();
    let w = build(&fx.service);
    let fx = fx.reopen();
    let s = &fx.service;

    let events = all_audit_events(s);
    let ids_seen: BTreeSet<u64> = events.iter().map(|e| e.id).collect();
    assert_eq!(ids_seen.len(), events.len(), "audit ids are unique");
    assert!(events.windows(2).all(|p| p[0].id > p[1].id), "newest first");
    for action in [
        "create", "update", "scope", "pause", "resume", "rotate", "revoke", "delete",
    ] {
        assert!(
            w.actions.iter().any(|(a, _)| *a == action),
            "the scenario performs {action}"
        );
    }
    for (action, target) in &w.actions {
        let found = s
            .list_audit_events(
                &Caller::Owner,
                ListAuditEvents {
                    token_id: Some(target.to_string()),
                    action: Some((*action).to_owned()),
                    limit: Some(100),
                    ..ListAuditEvents::default()
                },
            )
            .unwrap()
            .events;
        assert!(!found.is_empty(), "no {action} event for {target}");
        for e in &found {
            assert_eq!(&e.action, action);
            assert_eq!(e.target.as_ref(), Some(target));
        }
    }
    // Events name who acted.
    let scope_event = events.iter().find(|e| e.action == "scope").unwrap();
    assert_eq!(scope_event.actor.to_string(), w.id("app").to_string());
    let revoke_event = events.iter().find(|e| e.action == "revoke").unwrap();
    assert_eq!(revoke_event.actor.to_string(), w.id("admin").to_string());

    // No secret, nor its random body, appears anywhere: not in any key or value of the store,
    // not in any audit event as served.
    let needles: Vec<(&str, Vec<u8>)> = w
        .secrets
        .iter()
        .flat_map(|(label, secret)| {
            [
                (*label, secret.as_bytes().to_vec()),
                (*label, secret.as_bytes()[4..34].to_vec()),
            ]
        })
        .collect();
    assert_eq!(needles.len(), 2 * w.secrets.len());
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let mut entries = 0;
    for entry in s.store().raw_entries() {
        let (k, v) = entry.unwrap();
        entries += 1;
        for (label, needle) in &needles {
            assert!(!contains(&k, needle), "{label}'s secret in a key");
            assert!(!contains(&v, needle), "{label}'s secret in a value");
        }
    }
    assert!(entries > w.ids.len(), "the store was actually read");
    for event in &events {
        let text = serde_json::to_string(event).unwrap();
        for (label, needle) in &needles {
            assert!(
                !contains(text.as_bytes(), needle),
                "{label}'s secret in audit event {text}"
            );
        }
    }
    // Nor in any record as served.
    for v in all_views(s).values() {
        let text = serde_json::to_string(v).unwrap();
        for (label, needle) in &needles {
            assert!(
                !contains(text.as_bytes(), needle),
                "{label}'s secret in {text}"
            );
        }
    }
}
