//! The token lifecycle guarantees of SPEC §3–§4, proved against the real service and a real
//! sled store: cascading revocation, pausing, narrowing, rotation, expiry, attenuation, usage
//! limits and management reach.

mod core_support;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use core_support::*;
use tokenwarden::error::ErrorCode;
use tokenwarden::record::{Actor, EffectiveStatus, Status};
use tokenwarden::rules::authorize::Rule;
use tokenwarden::service::requests::{
    CreateToken, Issued, ListAuditEvents, ListTokens, RotateToken, ScopeToken, UpdateToken,
    VerifyToken,
};
use tokenwarden::service::{AuthFailure, Caller, Service};
use tokenwarden::timestamp::Timestamp;

#[track_caller]
fn assert_authenticates(service: &Service, secret: &str, expected: &tokenwarden::secret::TokenId) {
    match service.authenticate(secret, None) {
        Ok(id) => assert_eq!(&id, expected),
        Err(e) => panic!("{expected} should authenticate, got: {e}"),
    }
}

/// Asserts the secret is refused because of `rule` (with the token itself or an ancestor at
/// fault, as `by_ancestor` says).
#[track_caller]
fn assert_denied(service: &Service, secret: &str, rule: Rule, by_ancestor: bool) {
    match service.authenticate(secret, None) {
        Err(AuthFailure::Denied(d)) => {
            assert_eq!(d.rule, rule, "refused for the wrong rule: {d}");
            assert_eq!(d.culprit.is_some(), by_ancestor, "wrong culprit: {d}");
        }
        Ok(id) => panic!("{id} authenticated but should be refused ({rule:?})"),
        Err(e) => panic!("refused for another reason ({e}), expected {rule:?}"),
    }
}

/// Revoking a token revokes its whole subtree at once: the count of newly revoked descendants
/// is exact, every descendant stops authenticating and shows `revoked`, and a sibling subtree
/// (and the common ancestor) are untouched.
#[test]
fn revoke_cascades_to_every_descendant_and_nothing_else() {
    let fx = Fixture::new();
    let s = &fx.service;
    //        root
    //       /    \
    //      a      b
    //    / | \     \
    //  a1  a2 a3    b1
    //  |
    //  a1x
    let root = root(s, "root", &[], &[]);
    let a = child_of(s, &root, "a");
    let b = child_of(s, &root, "b");
    let a1 = child_of(s, &a, "a1");
    let a2 = child_of(s, &a, "a2");
    // One child minted by the owner naming the parent explicitly.
    let a3 = create(
        s,
        &Caller::Owner,
        CreateToken {
            name: "a3".into(),
            parent: Some(id_of(&a)),
            ..CreateToken::default()
        },
    );
    let a1x = child_of(s, &a1, "a1x");
    let b1 = child_of(s, &b, "b1");
    assert_eq!(a1x.record.depth, 3);
    assert_eq!(a1x.record.parent_id.as_ref(), Some(&a1.record.id));
    // Every token is hot (recently authenticated): revocation must still win at once.
    for x in [&root, &a, &b, &a1, &a2, &a3, &a1x, &b1] {
        assert_authenticates(s, &x.token, &x.record.id);
    }

    let revoked = s
        .revoke_token(&Caller::Owner, token_ref(&a.record.id))
        .unwrap();
    assert!(revoked.revoked);
    assert_eq!(revoked.id, a.record.id);
    assert_eq!(revoked.revoked_descendants, 4, "a1, a2, a3 and a1x");

    assert_denied(s, &a.token, Rule::Revoked, false);
    assert_eq!(effective(s, &a.record.id), EffectiveStatus::Revoked);
    for d in [&a1, &a2, &a3, &a1x] {
        assert_denied(s, &d.token, Rule::Revoked, false);
        let v = view(s, &d.record.id);
        assert_eq!(v.status, Status::Revoked, "{} own status", v.name);
        assert_eq!(v.effective_status, EffectiveStatus::Revoked, "{}", v.name);
        assert!(v.revoked_at.is_some(), "{} has revoked_at", v.name);
        assert!(!s.may_call(&caller(d), "whoami", None));
    }
    for untouched in [&root, &b, &b1] {
        assert_authenticates(s, &untouched.token, &untouched.record.id);
        let v = view(s, &untouched.record.id);
        assert_eq!(v.status, Status::Active, "{}", v.name);
        assert_eq!(v.effective_status, EffectiveStatus::Active, "{}", v.name);
        assert!(v.revoked_at.is_none());
    }

    // Revoking again is harmless and counts nothing new; revocation is irreversible.
    let again = s
        .revoke_token(&Caller::Owner, token_ref(&a.record.id))
        .unwrap();
    assert_eq!(again.revoked_descendants, 0);
    expect_code(
        s.resume_token(&Caller::Owner, token_ref(&a1.record.id)),
        ErrorCode::Conflict,
    );
    // A revoked token cannot mint, nor be given, children.
    expect_code(
        s.create_token(
            &caller(&a),
            CreateToken {
                name: "late".into(),
                ..CreateToken::default()
            },
        ),
        ErrorCode::Forbidden,
    );
    expect_code(
        s.create_token(
            &Caller::Owner,
            CreateToken {
                name: "late".into(),
                parent: Some(id_of(&a2)),
                ..CreateToken::default()
            },
        ),
        ErrorCode::Conflict,
    );
}

/// A token may revoke itself, which revokes its own descendants too (the count is exact when
/// some were already revoked).
#[test]
fn a_token_may_revoke_itself_and_already_revoked_descendants_are_not_recounted() {
    let fx = Fixture::new();
    let s = &fx.service;
    let t = root(s, "t", &[], &[]);
    let c1 = child_of(s, &t, "c1");
    let c2 = child_of(s, &t, "c2");
    let g = child_of(s, &c1, "g");
    s.revoke_token(&Caller::Owner, token_ref(&g.record.id))
        .unwrap();
    let revoked = s
        .revoke_token(&caller(&t), token_ref(&t.record.id))
        .unwrap();
    assert_eq!(
        revoked.revoked_descendants, 2,
        "c1 and c2; g was already revoked"
    );
    for x in [&t, &c1, &c2, &g] {
        assert_denied(s, &x.token, Rule::Revoked, false);
    }
}

/// Pausing a token suspends its descendants (`paused_by_ancestor`, authentication refused)
/// without changing their own status; resuming restores them. A token may pause itself but
/// never resume itself.
#[test]
fn pausing_a_parent_suspends_descendants_until_it_is_resumed() {
    let fx = Fixture::new();
    let s = &fx.service;
    let p = root(s, "p", &[], &[]);
    let c = child_of(s, &p, "c");
    let g = child_of(s, &c, "g");
    let other = root(s, "other", &[], &[]);
    for x in [&p, &c, &g, &other] {
        assert_authenticates(s, &x.token, &x.record.id);
    }

    let paused = s
        .pause_token(&Caller::Owner, token_ref(&p.record.id))
        .unwrap();
    assert_eq!(paused.status, Status::Paused);
    assert_eq!(paused.effective_status, EffectiveStatus::Paused);
    assert!(paused.paused_at.is_some());
    assert_denied(s, &p.token, Rule::Paused, false);
    for d in [&c, &g] {
        let v = view(s, &d.record.id);
        assert_eq!(
            v.status,
            Status::Active,
            "{}'s own status is unchanged",
            v.name
        );
        assert_eq!(v.effective_status, EffectiveStatus::PausedByAncestor);
        assert_denied(s, &d.token, Rule::Paused, true);
        expect_code(
            s.authorize_call(&caller(d), "whoami", None, None),
            ErrorCode::Forbidden,
        );
    }
    assert_authenticates(s, &other.token, &other.record.id);

    // Pausing is idempotent.
    s.pause_token(&Caller::Owner, token_ref(&p.record.id))
        .unwrap();

    let resumed = s
        .resume_token(&Caller::Owner, token_ref(&p.record.id))
        .unwrap();
    assert_eq!(resumed.status, Status::Active);
    assert!(resumed.paused_at.is_none());
    for x in [&p, &c, &g] {
        assert_eq!(effective(s, &x.record.id), EffectiveStatus::Active);
        assert_authenticates(s, &x.token, &x.record.id);
        s.authorize_call(&caller(x), "whoami", None, None).unwrap();
    }

    // A token may pause itself…
    let self_paused = s.pause_token(&caller(&c), token_ref(&c.record.id)).unwrap();
    assert_eq!(self_paused.status, Status::Paused);
    assert_denied(s, &c.token, Rule::Paused, false);
    assert_eq!(
        effective(s, &g.record.id),
        EffectiveStatus::PausedByAncestor
    );
    // …but not resume itself, nor be resumed by its own paused-out descendant.
    expect_code(
        s.resume_token(&caller(&c), token_ref(&c.record.id)),
        ErrorCode::Forbidden,
    );
    expect_code(
        s.resume_token(&caller(&g), token_ref(&c.record.id)),
        ErrorCode::Forbidden,
    );
    assert_eq!(own_status(s, &c.record.id), Status::Paused);
    // Its parent may resume it.
    s.resume_token(&caller(&p), token_ref(&c.record.id))
        .unwrap();
    assert_authenticates(s, &c.token, &c.record.id);
    assert_authenticates(s, &g.token, &g.record.id);

    // Even an active token cannot "resume" itself: the rule is about who, not about state.
    expect_code(
        s.resume_token(&caller(&c), token_ref(&c.record.id)),
        ErrorCode::Forbidden,
    );
}

/// Narrowing a parent (removing tools or buckets) takes effect on its descendants at once,
/// both in decisions and in their stored scope, which is clamped to the parent's.
#[test]
fn narrowing_a_parent_narrows_its_descendants_at_once() {
    let fx = Fixture::new();
    let s = &fx.service;
    let p = root(s, "p", &["whoami", "list_tokens", "get_token"], &["a", "b"]);
    let c = child_of(s, &p, "c");
    let g = child_of(s, &c, "g");
    let before = view(s, &c.record.id);
    assert_eq!(tools_of(&before), ["get_token", "list_tokens", "whoami"]);
    assert_eq!(before.buckets, ["a", "b"]);
    for x in [&c, &g] {
        assert_authenticates(s, &x.token, &x.record.id);
        s.authorize_call(&caller(x), "list_tokens", Some("b"), None)
            .unwrap();
    }

    let narrowed = s
        .scope_token(
            &Caller::Owner,
            ScopeToken {
                id: id_of(&p),
                remove_tools: strings(&["list_tokens"]),
                remove_buckets: strings(&["b"]),
                ..ScopeToken::default()
            },
        )
        .unwrap();
    assert_eq!(tools_of(&narrowed), ["get_token", "whoami"]);
    assert_eq!(narrowed.buckets, ["a"]);

    for x in [&c, &g] {
        let e = expect_code(
            s.authorize_call(&caller(x), "list_tokens", None, None),
            ErrorCode::Forbidden,
        );
        assert!(e.message.contains("list_tokens"), "{}", e.message);
        expect_code(
            s.authorize_call(&caller(x), "whoami", Some("b"), None),
            ErrorCode::Forbidden,
        );
        assert!(!s.may_call(&caller(x), "list_tokens", None));
        s.authorize_call(&caller(x), "whoami", Some("a"), None)
            .unwrap();
        let v = view(s, &x.record.id);
        assert_eq!(tools_of(&v), ["get_token", "whoami"], "{} clamped", v.name);
        assert_eq!(v.buckets, ["a"], "{} clamped", v.name);
    }

    // Making the parent read-only makes its descendants read-only too.
    s.scope_token(
        &Caller::Owner,
        ScopeToken {
            id: id_of(&p),
            tools: strings(&["*"]),
            read_only: Some(true),
            ..ScopeToken::default()
        },
    )
    .unwrap();
    for x in [&c, &g] {
        let v = view(s, &x.record.id);
        assert!(v.read_only, "{} is read-only", v.name);
        assert_eq!(tools_of(&v), ["get_token", "whoami"], "not widened back");
    }
    expect_code(
        s.authorize_call(&caller(&p), "revoke_token", None, None),
        ErrorCode::Forbidden,
    );
}

/// Rotation issues a new secret at once; the old one keeps working for the grace period only.
/// A grace of 0 kills the old secret immediately, including secrets still in an earlier grace.
#[test]
fn rotated_out_secrets_work_only_inside_their_grace() {
    let fx = Fixture::new();
    let s = &fx.service;
    let t = root(s, "t", &[], &[]);
    let id = t.record.id.clone();
    assert_authenticates(s, &t.token, &id);

    let rotated = s
        .rotate_token(
            &Caller::Owner,
            RotateToken {
                id: id.to_string(),
                grace_seconds: Some(1),
            },
        )
        .unwrap();
    assert_ne!(rotated.token, t.token);
    assert_eq!(rotated.record.id, id);
    assert!(rotated.record.rotated_at.is_some());
    assert_eq!(
        rotated.record.last4,
        &rotated.token[rotated.token.len() - 4..]
    );
    assert_eq!(view(s, &id).masked, rotated.record.masked);
    assert_authenticates(s, &t.token, &id);
    assert_authenticates(s, &rotated.token, &id);

    thread::sleep(Duration::from_millis(1200));
    match s.authenticate(&t.token, None) {
        Err(AuthFailure::RotatedOut(rotated_id)) => assert_eq!(rotated_id, id),
        other => panic!("old secret after grace: {other:?}"),
    }
    assert_authenticates(s, &rotated.token, &id);

    // Grace 0: the previous secret dies at once. Rotate with a long grace first, so two old
    // secrets are alive, then rotate with grace 0: both die.
    let second = s
        .rotate_token(
            &Caller::Owner,
            RotateToken {
                id: id.to_string(),
                grace_seconds: Some(3600),
            },
        )
        .unwrap();
    assert_authenticates(s, &rotated.token, &id);
    let third = s
        .rotate_token(
            &caller(&second),
            RotateToken {
                id: id.to_string(),
                grace_seconds: Some(0),
            },
        )
        .unwrap();
    for dead in [&t.token, &rotated.token, &second.token] {
        assert!(
            s.authenticate(dead, None).is_err(),
            "an old secret still authenticates after a grace-0 rotation"
        );
    }
    assert_authenticates(s, &third.token, &id);
    // Out-of-range grace is refused.
    expect_code(
        s.rotate_token(
            &Caller::Owner,
            RotateToken {
                id: id.to_string(),
                grace_seconds: Some(86_401),
            },
        ),
        ErrorCode::InvalidArgument,
    );
}

/// An expired token is refused, and so is every descendant of it. A child's expiry is never
/// later than its parent's (it inherits it), so a descendant shows `expired` itself.
#[test]
fn expired_tokens_and_their_descendants_are_refused() {
    let fx = Fixture::new();
    let s = &fx.service;
    let e = create(
        s,
        &Caller::Owner,
        CreateToken {
            name: "short-lived".into(),
            ttl_seconds: Some(1),
            parent: Some("none".into()),
            ..CreateToken::default()
        },
    );
    let c = child_of(s, &e, "inherits expiry");
    let g = child_of(s, &c, "grandchild");
    assert_eq!(c.record.expires_at, e.record.expires_at);
    assert_eq!(g.record.expires_at, e.record.expires_at);
    for x in [&e, &c, &g] {
        assert_authenticates(s, &x.token, &x.record.id);
    }

    thread::sleep(Duration::from_millis(1200));

    assert_denied(s, &e.token, Rule::Expired, false);
    let v = view(s, &e.record.id);
    assert_eq!(v.status, Status::Expired);
    assert_eq!(v.effective_status, EffectiveStatus::Expired);
    for x in [&c, &g] {
        assert_denied(s, &x.token, Rule::Expired, false);
        let v = view(s, &x.record.id);
        assert_eq!(v.status, Status::Expired, "{}", v.name);
        assert_eq!(v.effective_status, EffectiveStatus::Expired, "{}", v.name);
    }
    for x in [&e, &c, &g] {
        expect_code(
            s.authorize_call(&caller(x), "whoami", None, None),
            ErrorCode::Forbidden,
        );
        // An expired token can no longer act, not even on itself.
        expect_code(
            s.pause_token(&caller(x), token_ref(&x.record.id)),
            ErrorCode::Forbidden,
        );
    }
    // Expiry cannot be undone by resuming, and an expired token mints nothing.
    expect_code(
        s.resume_token(&Caller::Owner, token_ref(&e.record.id)),
        ErrorCode::Conflict,
    );
    expect_code(
        s.create_token(
            &Caller::Owner,
            CreateToken {
                name: "late".into(),
                parent: Some(id_of(&e)),
                ..CreateToken::default()
            },
        ),
        ErrorCode::Conflict,
    );
}

/// Giving an ancestor an expiry (or an earlier one) clamps every descendant's expiry to it at
/// once, and a descendant's expiry cannot be lifted past its parent's: no descendant ever
/// outlives an ancestor, so when the ancestor expires the whole subtree is refused.
#[test]
fn no_descendant_outlives_an_ancestor() {
    let fx = Fixture::new();
    let s = &fx.service;
    let top = root(s, "top", &[], &[]);
    let mid = child_of(s, &top, "mid");
    assert_eq!(mid.record.expires_at, None);
    let leaf = create(
        s,
        &caller(&mid),
        CreateToken {
            name: "leaf".into(),
            ttl_seconds: Some(3600),
            ..CreateToken::default()
        },
    );
    let soon = Timestamp::now().plus_seconds(1).unwrap();
    s.update_token(
        &Caller::Owner,
        UpdateToken {
            id: id_of(&top),
            expires_at: Some(Some(soon.to_string())),
            ..UpdateToken::default()
        },
    )
    .unwrap();
    for x in [&mid, &leaf] {
        let v = view(s, &x.record.id);
        assert_eq!(v.expires_at, Some(soon), "{} is clamped", v.name);
    }
    // Neither removing nor extending a child's expiry past its parent's is allowed.
    for expires_at in [None, Some(soon.plus_seconds(60).unwrap().to_string())] {
        let e = expect_code(
            s.update_token(
                &Caller::Owner,
                UpdateToken {
                    id: id_of(&mid),
                    expires_at: Some(expires_at),
                    ..UpdateToken::default()
                },
            ),
            ErrorCode::ScopeExceedsParent,
        );
        assert_eq!(exceeding_fields(&e), ["expires_at"]);
    }

    thread::sleep(Duration::from_millis(1200));
    for x in [&top, &mid, &leaf] {
        assert_denied(s, &x.token, Rule::Expired, false);
        assert_eq!(effective(s, &x.record.id), EffectiveStatus::Expired);
    }
}

fn err_fields(s: &Service, by: &Caller, req: CreateToken) -> Vec<String> {
    exceeding_fields(&expect_code(
        s.create_token(by, req),
        ErrorCode::ScopeExceedsParent,
    ))
}

/// A token can mint only children narrower than itself: every escalation fails with
/// `scope_exceeds_parent` naming exactly the fields that exceed; omitted fields are inherited.
#[test]
fn a_token_may_mint_only_narrower_children() {
    let fx = Fixture::new();
    let s = &fx.service;
    let p = create(
        s,
        &Caller::Owner,
        CreateToken {
            name: "agent".into(),
            tools: strings(&["create_token", "list_tokens", "revoke_token", "whoami"]),
            buckets: strings(&["a", "b"]),
            ttl_seconds: Some(3600),
            parent: Some("none".into()),
            ..CreateToken::default()
        },
    );
    let pc = caller(&p);
    let p_expiry = p.record.expires_at.expect("ttl sets an expiry");

    let c = create(
        s,
        &pc,
        CreateToken {
            name: "sub-agent".into(),
            buckets: strings(&["a"]),
            tools: strings(&["whoami"]),
            ..CreateToken::default()
        },
    );
    assert_eq!(c.record.parent_id.as_ref(), Some(&p.record.id));
    assert_eq!(c.record.created_by, Actor::Token(p.record.id.clone()));
    assert_eq!(c.record.depth, 1);
    assert_eq!(c.record.buckets, ["a"]);
    assert_eq!(tools_of(&c.record), ["whoami"]);
    assert!(!c.record.admin);
    assert_eq!(c.record.expires_at, Some(p_expiry), "expiry is inherited");
    s.authorize_call(&caller(&c), "whoami", Some("a"), None)
        .unwrap();
    expect_code(
        s.authorize_call(&caller(&c), "whoami", Some("b"), None),
        ErrorCode::Forbidden,
    );
    expect_code(
        s.authorize_call(&caller(&c), "list_tokens", Some("a"), None),
        ErrorCode::Forbidden,
    );

    let named = |name: &str| CreateToken {
        name: name.to_owned(),
        ..CreateToken::default()
    };
    let later = p_expiry.plus_seconds(86_400).unwrap().to_string();
    assert_eq!(
        err_fields(
            s,
            &pc,
            CreateToken {
                buckets: strings(&["c"]),
                ..named("x")
            }
        ),
        ["buckets"]
    );
    assert_eq!(
        err_fields(
            s,
            &pc,
            CreateToken {
                buckets: strings(&["*"]),
                ..named("x")
            }
        ),
        ["buckets"]
    );
    assert_eq!(
        err_fields(
            s,
            &pc,
            CreateToken {
                tools: strings(&["*"]),
                ..named("x")
            }
        ),
        ["tools"]
    );
    assert_eq!(
        err_fields(
            s,
            &pc,
            CreateToken {
                tools: strings(&["list_*"]),
                ..named("x")
            }
        ),
        ["tools"]
    );
    assert_eq!(
        err_fields(
            s,
            &pc,
            CreateToken {
                admin: Some(true),
                ..named("x")
            }
        ),
        ["admin"]
    );
    assert_eq!(
        err_fields(
            s,
            &pc,
            CreateToken {
                expires_at: Some(later.clone()),
                ..named("x")
            }
        ),
        ["expires_at"]
    );
    let mut all = err_fields(
        s,
        &pc,
        CreateToken {
            buckets: strings(&["a", "c"]),
            tools: strings(&["*"]),
            admin: Some(true),
            expires_at: Some(later),
            ..named("x")
        },
    );
    all.sort();
    assert_eq!(all, ["admin", "buckets", "expires_at", "tools"]);

    // A read-only or limited parent passes its limits on, and they cannot be lifted.
    let limited = create(
        s,
        &Caller::Owner,
        CreateToken {
            name: "limited".into(),
            read_only: Some(true),
            max_uses: Some(10),
            rate_limit_per_minute: Some(5),
            allowed_ips: strings(&["10.0.0.0/8"]),
            parent: Some("none".into()),
            ..CreateToken::default()
        },
    );
    let inherited = child_of(s, &limited, "inherited");
    assert!(inherited.record.read_only);
    assert_eq!(inherited.record.max_uses, Some(10));
    assert_eq!(inherited.record.rate_limit_per_minute, Some(5));
    assert_eq!(inherited.record.allowed_ips.len(), 1);
    let mut lifted = err_fields(
        s,
        &caller(&limited),
        CreateToken {
            read_only: Some(false),
            max_uses: Some(11),
            rate_limit_per_minute: Some(6),
            allowed_ips: strings(&["0.0.0.0/0"]),
            ..named("x")
        },
    );
    lifted.sort();
    assert_eq!(
        lifted,
        [
            "allowed_ips",
            "max_uses",
            "rate_limit_per_minute",
            "read_only"
        ]
    );

    // Re-scoping obeys the same rule: the parent may widen its child only within itself, and
    // the child may not widen itself at all.
    let e = expect_code(
        s.scope_token(
            &pc,
            ScopeToken {
                id: id_of(&c),
                add_buckets: strings(&["c"]),
                ..ScopeToken::default()
            },
        ),
        ErrorCode::ScopeExceedsParent,
    );
    assert_eq!(exceeding_fields(&e), ["buckets"]);
    expect_code(
        s.scope_token(
            &caller(&c),
            ScopeToken {
                id: id_of(&c),
                add_tools: strings(&["list_tokens"]),
                ..ScopeToken::default()
            },
        ),
        ErrorCode::Forbidden,
    );
    let widened = s
        .scope_token(
            &pc,
            ScopeToken {
                id: id_of(&c),
                add_tools: strings(&["list_tokens"]),
                ..ScopeToken::default()
            },
        )
        .unwrap();
    assert_eq!(tools_of(&widened), ["list_tokens", "whoami"]);
    // Nothing about a refused request was stored.
    assert_eq!(
        s.list_tokens(
            &pc,
            ListTokens {
                parent_id: Some(id_of(&p)),
                ..ListTokens::default()
            }
        )
        .unwrap()
        .records
        .len(),
        1
    );
}

/// A non-admin token sees and manages only itself and its descendants; everything else is
/// reported as not found, so it cannot even probe for ids.
#[test]
fn a_token_reaches_only_its_own_subtree() {
    let fx = Fixture::new();
    let s = &fx.service;
    let p = root(s, "p", &[], &[]);
    let c = child_of(s, &p, "c");
    let g = child_of(s, &c, "g");
    let sibling = child_of(s, &p, "sibling");
    let stranger = root(s, "stranger", &[], &[]);
    let cc = caller(&c);

    for outside in [&p, &sibling, &stranger] {
        let r = || token_ref(&outside.record.id);
        expect_code(s.get_token(&cc, r()), ErrorCode::NotFound);
        expect_code(s.pause_token(&cc, r()), ErrorCode::NotFound);
        expect_code(s.revoke_token(&cc, r()), ErrorCode::NotFound);
        expect_code(s.delete_token(&cc, r()), ErrorCode::NotFound);
        expect_code(
            s.rotate_token(
                &cc,
                RotateToken {
                    id: outside.record.id.to_string(),
                    grace_seconds: None,
                },
            ),
            ErrorCode::NotFound,
        );
        expect_code(
            s.update_token(
                &cc,
                UpdateToken {
                    id: outside.record.id.to_string(),
                    name: Some("mine now".into()),
                    ..UpdateToken::default()
                },
            ),
            ErrorCode::NotFound,
        );
        expect_code(
            s.scope_token(
                &cc,
                ScopeToken {
                    id: outside.record.id.to_string(),
                    read_only: Some(true),
                    ..ScopeToken::default()
                },
            ),
            ErrorCode::NotFound,
        );
        expect_code(
            s.create_token(
                &cc,
                CreateToken {
                    name: "adopted".into(),
                    parent: Some(outside.record.id.to_string()),
                    ..CreateToken::default()
                },
            ),
            ErrorCode::NotFound,
        );
        // Nothing changed.
        let v = view(s, &outside.record.id);
        assert_eq!(v.status, Status::Active);
        assert!(!v.read_only);
        assert_ne!(v.name, "mine now");
    }
    // An unknown id reads exactly like one outside the reach.
    let unknown = tokenwarden::secret::TokenId::generate();
    expect_code(s.get_token(&cc, token_ref(&unknown)), ErrorCode::NotFound);

    // Inside the reach: itself and its descendants.
    s.get_token(&cc, token_ref(&c.record.id)).unwrap();
    s.get_token(&cc, token_ref(&g.record.id)).unwrap();
    let listed: Vec<_> = s
        .list_tokens(&cc, ListTokens::default())
        .unwrap()
        .records
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&c.record.id) && listed.contains(&g.record.id));
    // Filtering by an outside parent shows nothing of it.
    let via_parent = s
        .list_tokens(
            &cc,
            ListTokens {
                parent_id: Some(id_of(&p)),
                ..ListTokens::default()
            },
        )
        .unwrap();
    assert_eq!(
        via_parent.records.iter().map(|r| &r.id).collect::<Vec<_>>(),
        [&c.record.id]
    );
    s.pause_token(&cc, token_ref(&g.record.id)).unwrap();
    s.resume_token(&cc, token_ref(&g.record.id)).unwrap();
    s.revoke_token(&cc, token_ref(&g.record.id)).unwrap();
}

/// `max_uses` admits exactly that many authorised calls; refused calls do not count.
#[test]
fn max_uses_admits_exactly_that_many_calls() {
    let fx = Fixture::new();
    let s = &fx.service;
    let t = create(
        s,
        &Caller::Owner,
        CreateToken {
            name: "three".into(),
            tools: strings(&["whoami"]),
            max_uses: Some(3),
            parent: Some("none".into()),
            ..CreateToken::default()
        },
    );
    let tc = caller(&t);
    assert_eq!(t.record.remaining_uses, Some(3));
    // A refused call (tool not allowed) uses nothing.
    expect_code(
        s.authorize_call(&tc, "list_tokens", None, None),
        ErrorCode::Forbidden,
    );
    for _ in 0..3 {
        s.authorize_call(&tc, "whoami", None, None).unwrap();
    }
    let e = expect_code(
        s.authorize_call(&tc, "whoami", None, None),
        ErrorCode::LimitExceeded,
    );
    assert!(
        e.message.contains(&t.record.id.to_string()),
        "{}",
        e.message
    );
    let v = view(s, &t.record.id);
    assert_eq!(v.remaining_uses, Some(0));
    assert_eq!(v.use_count, 3);
    assert!(v.last_used_at.is_some());
    // A child's calls are counted against its limited parent too.
    let limited_parent = create(
        s,
        &Caller::Owner,
        CreateToken {
            name: "two".into(),
            max_uses: Some(2),
            parent: Some("none".into()),
            ..CreateToken::default()
        },
    );
    let kid = create(
        s,
        &caller(&limited_parent),
        CreateToken {
            name: "kid".into(),
            max_uses: Some(2),
            ..CreateToken::default()
        },
    );
    s.authorize_call(&caller(&limited_parent), "whoami", None, None)
        .unwrap();
    s.authorize_call(&caller(&kid), "whoami", None, None)
        .unwrap();
    expect_code(
        s.authorize_call(&caller(&kid), "whoami", None, None),
        ErrorCode::LimitExceeded,
    );
    assert_eq!(view(s, &kid.record.id).remaining_uses, Some(1));
}

/// A decision writes (and flushes) exactly when a token in the caller's chain has `max_uses`:
/// only those decisions leave the async workers for the blocking pool.
#[test]
fn decisions_that_flush_are_known_before_they_run() {
    let fx = Fixture::new();
    let s = &fx.service;
    let free = root(s, "free", &["whoami", "create_token"], &[]);
    let limited = create(
        s,
        &Caller::Owner,
        CreateToken {
            name: "limited".into(),
            max_uses: Some(5),
            parent: Some("none".into()),
            ..CreateToken::default()
        },
    );
    let under_limited = child_of(s, &limited, "under-limited");
    let under_free = child_of(s, &free, "under-free");
    assert!(!s.decision_may_flush(&Caller::Owner));
    assert!(!s.decision_may_flush(&caller(&free)));
    assert!(!s.decision_may_flush(&caller(&under_free)));
    assert!(s.decision_may_flush(&caller(&limited)));
    // A child of a limited token carries a limit too (its calls also count against the parent).
    assert!(s.decision_may_flush(&caller(&under_limited)));
}

/// Concurrent calls never exceed `max_uses` in total, for one token or for siblings sharing a
/// limited parent: the check and the count are one atomic step.
#[test]
fn concurrent_calls_never_exceed_max_uses() {
    const MAX: u64 = 25;
    const THREADS: usize = 8;
    const TRIES: usize = 10;
    let fx = Fixture::new();
    let s = &fx.service;
    let single = create(
        s,
        &Caller::Owner,
        CreateToken {
            name: "single".into(),
            max_uses: Some(MAX as i64),
            parent: Some("none".into()),
            ..CreateToken::default()
        },
    );
    let shared = create(
        s,
        &Caller::Owner,
        CreateToken {
            name: "shared".into(),
            max_uses: Some(MAX as i64),
            parent: Some("none".into()),
            ..CreateToken::default()
        },
    );
    let kids: Vec<_> = (0..4)
        .map(|i| child_of(s, &shared, &format!("kid{i}")))
        .collect();

    let run = |callers: Vec<Caller>| -> u64 {
        let admitted = AtomicU64::new(0);
        thread::scope(|scope| {
            for i in 0..THREADS {
                let who = callers[i % callers.len()].clone();
                let admitted = &admitted;
                scope.spawn(move || {
                    for _ in 0..TRIES {
                        match s.authorize_call(&who, "whoami", None, None) {
                            Ok(()) => {
                                admitted.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => assert_eq!(e.code, ErrorCode::LimitExceeded, "{e}"),
                        }
                    }
                });
            }
        });
        admitted.into_inner()
    };
    assert!(
        (THREADS * TRIES) as u64 > MAX,
        "the test must oversubscribe"
    );

    assert_eq!(run(vec![caller(&single)]), MAX);
    assert_eq!(view(s, &single.record.id).remaining_uses, Some(0));

    assert_eq!(run(kids.iter().map(caller).collect()), MAX);
    assert_eq!(view(s, &shared.record.id).remaining_uses, Some(0));
    let kid_uses: u64 = kids.iter().map(|k| view(s, &k.record.id).use_count).sum();
    assert_eq!(kid_uses, MAX);
}

/// Only the owner and admin tokens may create root tokens, verify secrets and read the audit
/// log; a non-admin token is refused with `forbidden`.
#[test]
fn only_admins_create_roots_verify_and_read_the_audit_log() {
    let fx = Fixture::new();
    let s = &fx.service;
    let plain = root(s, "plain", &[], &[]);
    let admin = create(
        s,
        &Caller::Owner,
        CreateToken {
            name: "admin".into(),
            admin: Some(true),
            parent: Some("none".into()),
            ..CreateToken::default()
        },
    );
    let pc = caller(&plain);
    let ac = caller(&admin);
    let root_req = |name: &str| CreateToken {
        name: name.to_owned(),
        parent: Some("none".into()),
        ..CreateToken::default()
    };
    let verify = |secret: &str| VerifyToken {
        token: secret.to_owned(),
        tool: Some("whoami".into()),
        bucket: None,
    };

    expect_code(s.create_token(&pc, root_req("r")), ErrorCode::Forbidden);
    expect_code(
        s.verify_token(&pc, verify(&plain.token)),
        ErrorCode::Forbidden,
    );
    expect_code(
        s.list_audit_events(&pc, ListAuditEvents::default()),
        ErrorCode::Forbidden,
    );
    // Nor may it grant admin to a child.
    let e = expect_code(
        s.create_token(
            &pc,
            CreateToken {
                name: "x".into(),
                admin: Some(true),
                ..CreateToken::default()
            },
        ),
        ErrorCode::ScopeExceedsParent,
    );
    assert_eq!(exceeding_fields(&e), ["admin"]);

    let new_root = s.create_token(&ac, root_req("r")).unwrap();
    assert_eq!(new_root.record.parent_id, None);
    assert_eq!(new_root.record.depth, 0);
    assert_eq!(
        new_root.record.created_by,
        Actor::Token(admin.record.id.clone())
    );
    let verdict = s.verify_token(&ac, verify(&plain.token)).unwrap();
    assert!(verdict.valid);
    assert_eq!(verdict.token_id.as_ref(), Some(&plain.record.id));
    assert_eq!(verdict.allowed, Some(true));
    let events = s
        .list_audit_events(&ac, ListAuditEvents::default())
        .unwrap()
        .events;
    assert!(
        events
            .iter()
            .any(|e| e.action == "create" && e.target.as_ref() == Some(&new_root.record.id))
    );
    // An action the log never records is a mistake, not an empty page.
    let e = expect_code(
        s.list_audit_events(
            &ac,
            ListAuditEvents {
                action: Some("craete".into()),
                ..ListAuditEvents::default()
            },
        ),
        ErrorCode::InvalidArgument,
    );
    assert!(e.to_string().contains("one of create, update"), "{e}");
    // An admin reaches every token, including other roots.
    s.get_token(&ac, token_ref(&plain.record.id)).unwrap();
    s.pause_token(&ac, token_ref(&plain.record.id)).unwrap();
    let refused = s.verify_token(&ac, verify(&plain.token)).unwrap();
    assert!(!refused.valid);
    // An admin may mint an admin child; the owner acts as before.
    let sub_admin = s
        .create_token(
            &ac,
            CreateToken {
                name: "sub-admin".into(),
                admin: Some(true),
                ..CreateToken::default()
            },
        )
        .unwrap();
    assert!(sub_admin.record.admin);
    s.verify_token(&Caller::Owner, verify(&admin.token))
        .unwrap();
}

/// `allowed_ips` of a token and of every ancestor must contain the client address (HTTP);
/// on stdio (no address) it does not apply. A child inherits its parent's ranges.
#[test]
fn client_addresses_must_be_allowed_along_the_chain() {
    let fx = Fixture::new();
    let s = &fx.service;
    let p = create(
        s,
        &Caller::Owner,
        CreateToken {
            name: "office".into(),
            allowed_ips: strings(&["10.0.0.0/8"]),
            parent: Some("none".into()),
            ..CreateToken::default()
        },
    );
    let c = create(
        s,
        &caller(&p),
        CreateToken {
            name: "lab".into(),
            allowed_ips: strings(&["10.1.0.0/16"]),
            ..CreateToken::default()
        },
    );
    let inherits = child_of(s, &p, "inherits");
    let ip = |a: &str| Some(a.parse().unwrap());
    let at = |x: &Issued, a: Option<IpAddr>| s.authenticate(&x.token, a);
    assert!(at(&p, ip("10.9.9.9")).is_ok());
    assert!(at(&c, ip("10.1.2.3")).is_ok());
    assert!(at(&c, None).is_ok(), "stdio has no address");
    assert!(at(&inherits, ip("10.9.9.9")).is_ok());
    for (x, addr) in [
        (&p, "192.168.1.1"),
        (&c, "10.9.9.9"),
        (&inherits, "192.168.1.1"),
        (&c, "::1"),
    ] {
        match at(x, ip(addr)) {
            Err(AuthFailure::Denied(d)) => assert_eq!(d.rule, Rule::Address, "{d}"),
            other => panic!("{} from {addr}: {other:?}", x.record.name),
        }
    }
    // IPv4-mapped IPv6 clients are the IPv4 addresses they stand for.
    assert!(at(&c, ip("::ffff:10.1.2.3")).is_ok());
    // Narrowing the parent's ranges away from the child's leaves the child no address at all.
    s.scope_token(
        &Caller::Owner,
        ScopeToken {
            id: id_of(&p),
            allowed_ips: strings(&["10.2.0.0/16"]),
            ..ScopeToken::default()
        },
    )
    .unwrap();
    for addr in ["10.1.2.3", "10.2.0.1", "0.0.0.0", "::"] {
        assert!(at(&c, ip(addr)).is_err(), "lab from {addr}");
    }
    assert!(at(&inherits, ip("10.2.0.1")).is_ok());
    assert!(at(&inherits, ip("10.1.0.1")).is_err());
}

/// Lineage is bounded: by default a token at depth 8 can mint no child.
#[test]
fn depth_is_limited() {
    let fx = Fixture::new();
    let s = &fx.service;
    let mut t = root(s, "depth 0", &[], &[]);
    for depth in 1..=8u8 {
        t = child_of(s, &t, &format!("depth {depth}"));
        assert_eq!(t.record.depth, depth);
    }
    expect_code(
        s.create_token(
            &caller(&t),
            CreateToken {
                name: "depth 9".into(),
                ..CreateToken::default()
            },
        ),
        ErrorCode::LimitExceeded,
    );
}

/// Revocation and pausing take effect on the very next request even while other threads are
/// authenticating the same hot tokens: once `revoke_token` / `pause_token` has returned, no
/// authentication that starts afterwards succeeds.
#[test]
fn revocation_wins_over_concurrent_hot_requests() {
    use std::sync::atomic::AtomicBool;
    let fx = Fixture::new();
    let s = &fx.service;
    let parent = root(s, "parent", &[], &[]);
    let kids: Vec<Issued> = (0..3)
        .map(|i| child_of(s, &parent, &format!("kid{i}")))
        .collect();
    let paused_one = root(s, "paused", &[], &[]);

    for (target, watched, pause) in [
        (
            &parent,
            kids.iter().chain([&parent]).collect::<Vec<_>>(),
            false,
        ),
        (&paused_one, vec![&paused_one], true),
    ] {
        let done = AtomicBool::new(false);
        let stale = AtomicU64::new(0);
        let before = AtomicU64::new(0);
        thread::scope(|scope| {
            for x in &watched {
                for _ in 0..2 {
                    let (done, stale, before) = (&done, &stale, &before);
                    scope.spawn(move || {
                        // Keep asking until the change is done, then a few times more.
                        let mut after = 0;
                        while after < 20 {
                            let finished = done.load(Ordering::SeqCst);
                            let ok = s.authenticate(&x.token, None).is_ok();
                            match (finished, ok) {
                                (true, true) => {
                                    stale.fetch_add(1, Ordering::SeqCst);
                                }
                                (false, true) => {
                                    before.fetch_add(1, Ordering::SeqCst);
                                }
                                (false, false) => {}
                                (true, false) => {}
                            }
                            if finished {
                                after += 1;
                            }
                        }
                    });
                }
            }
            // Let the readers get hot first.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while before.load(Ordering::SeqCst) < 200 {
                assert!(std::time::Instant::now() < deadline, "readers never got in");
                thread::yield_now();
            }
            if pause {
                s.pause_token(&Caller::Owner, token_ref(&target.record.id))
                    .unwrap();
            } else {
                s.revoke_token(&Caller::Owner, token_ref(&target.record.id))
                    .unwrap();
            }
            done.store(true, Ordering::SeqCst);
        });
        assert_eq!(
            stale.load(Ordering::SeqCst),
            0,
            "a request that started after the change was allowed"
        );
    }
}

/// The hot path remembers that a chain admitted a secret; that memory must never outlive a
/// change. Each secret is presented three times before every change (the first fills the
/// cache, the second remembers the admission, the third is answered from that memory), and
/// the change must bite on the very next presentation.
#[test]
fn remembered_admissions_never_outlive_a_change() {
    let fx = Fixture::new();
    let s = &fx.service;
    let warm = |x: &Issued| {
        for _ in 0..3 {
            assert_authenticates(s, &x.token, &x.record.id);
        }
    };
    let p = root(s, "p", &[], &[]);
    let c = child_of(s, &p, "c");
    let g = child_of(s, &c, "g");

    warm(&g);
    s.pause_token(&Caller::Owner, token_ref(&p.record.id))
        .unwrap();
    assert_denied(s, &g.token, Rule::Paused, true);
    s.resume_token(&Caller::Owner, token_ref(&p.record.id))
        .unwrap();
    warm(&g);

    // An address rule anywhere in the chain makes the verdict depend on the client.
    s.scope_token(
        &Caller::Owner,
        ScopeToken {
            id: id_of(&c),
            allowed_ips: strings(&["10.0.0.0/8"]),
            ..ScopeToken::default()
        },
    )
    .unwrap();
    let outside: IpAddr = "192.0.2.1".parse().unwrap();
    let inside: IpAddr = "10.1.2.3".parse().unwrap();
    for _ in 0..3 {
        assert_eq!(s.authenticate(&g.token, Some(inside)).unwrap(), g.record.id);
        match s.authenticate(&g.token, Some(outside)) {
            Err(AuthFailure::Denied(d)) => assert_eq!(d.rule, Rule::Address),
            other => panic!("an outside address must be refused every time: {other:?}"),
        }
    }

    // Rotation without grace retires the remembered secret at once.
    let rotated = s
        .rotate_token(
            &Caller::Owner,
            RotateToken {
                id: id_of(&g),
                grace_seconds: Some(0),
            },
        )
        .unwrap();
    assert!(
        s.authenticate(&g.token, None).is_err(),
        "rotated-out secret still admitted"
    );
    let g = Issued {
        token: rotated.token,
        ..g
    };
    warm(&g);

    // An unrelated write forgets the verdict, which is then made again.
    root(s, "unrelated", &[], &[]);
    warm(&g);

    s.revoke_token(&Caller::Owner, token_ref(&c.record.id))
        .unwrap();
    assert_denied(s, &g.token, Rule::Revoked, false);

    // Expiry needs no write: the remembered verdict ends at the chain's earliest expiry.
    let e = create(
        s,
        &Caller::Owner,
        CreateToken {
            name: "short-lived".into(),
            ttl_seconds: Some(1),
            parent: Some("none".into()),
            ..CreateToken::default()
        },
    );
    let ec = child_of(s, &e, "child");
    warm(&ec);
    thread::sleep(Duration::from_millis(1100));
    assert_denied(s, &ec.token, Rule::Expired, false);
}
