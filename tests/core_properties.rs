//! Attenuation as a property (SPEC §4): whatever sequence of create / scope / update / pause /
//! resume / revoke / delete requests random callers make, and however many of them are
//! refused, no stored token ever holds more than its parent, and nothing a child may call is
//! denied to its parent.

mod core_support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use core_support::*;
use proptest::prelude::*;
use proptest::sample::Index;
use tokenwarden::error::{Error, ErrorCode};
use tokenwarden::record::TokenRecord;
use tokenwarden::rules::cidr::address_allowed;
use tokenwarden::rules::pattern::any_matches;
use tokenwarden::rules::scope::{bucket_allowed, no_address};
use tokenwarden::secret::TokenId;
use tokenwarden::service::requests::{CreateToken, ListTokens, ScopeToken, UpdateToken};
use tokenwarden::service::{Caller, Service, is_read_only_tool};
use tokenwarden::timestamp::Timestamp;

/// Bucket names requests draw from (`*` included).
const BUCKETS: &[&str] = &["a", "b", "c", "*"];
/// Tool patterns requests draw from: exact names, nested prefixes and `*`.
const PATTERNS: &[&str] = &[
    "*",
    "l*",
    "list_*",
    "list_tokens",
    "get_*",
    "get_token",
    "whoami",
    "create_token",
    "revoke_token",
];
/// Tool names the decisions are checked against: read-only and not, matched by various
/// patterns or by none.
const TOOLS: &[&str] = &[
    "whoami",
    "list_tokens",
    "list_audit_events",
    "lx",
    "get_token",
    "get_thing",
    "create_token",
    "revoke_token",
    "verify_token",
    "delete_token",
];
/// Buckets the stored scopes are checked against.
const PROBE_BUCKETS: &[&str] = &["a", "b", "c", "d"];
/// Nested and disjoint CIDR ranges requests draw `allowed_ips` from.
const RANGES: &[&str] = &["0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/16"];
/// Client addresses the stored ranges are checked against.
const PROBE_IPS: &[&str] = &["10.1.2.3", "10.2.0.1", "192.168.1.1", "8.8.8.8", "::1"];

#[derive(Clone, Debug)]
enum Parent {
    Default,
    Self_,
    None_,
    Token(Index),
}

#[derive(Clone, Debug)]
enum ListEdit {
    Keep,
    Set(Vec<&'static str>),
    Add(Vec<&'static str>),
    Remove(Vec<&'static str>),
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        parent: Parent,
        buckets: Option<Vec<&'static str>>,
        tools: Option<Vec<&'static str>>,
        read_only: Option<bool>,
        admin: Option<bool>,
        max_uses: Option<i64>,
        rate: Option<i64>,
        ttl: Option<i64>,
        allowed_ips: Option<Vec<&'static str>>,
    },
    Scope {
        target: Index,
        buckets: ListEdit,
        tools: ListEdit,
        read_only: Option<bool>,
        allowed_ips: Option<Vec<&'static str>>,
    },
    Update {
        target: Index,
        /// Some(None) clears the expiry; Some(Some(s)) sets it s seconds from now.
        expires_in: Option<Option<u64>>,
        max_uses: Option<Option<i64>>,
        rate: Option<Option<i64>>,
    },
    Pause(Index),
    Resume(Index),
    Revoke(Index),
    Delete(Index),
}

/// One request: who makes it (None = the owner, else an index into the tokens created so far).
#[derive(Clone, Debug)]
struct Step {
    by: Option<Index>,
    op: Op,
}

fn names(from: &'static [&'static str], max: usize) -> impl Strategy<Value = Vec<&'static str>> {
    proptest::collection::vec(proptest::sample::select(from), 0..=max)
}

fn list_edit(from: &'static [&'static str]) -> impl Strategy<Value = ListEdit> {
    prop_oneof![
        3 => Just(ListEdit::Keep),
        2 => names(from, 3).prop_map(ListEdit::Set),
        2 => names(from, 2).prop_map(ListEdit::Add),
        2 => names(from, 2).prop_map(ListEdit::Remove),
    ]
}

fn limit() -> impl Strategy<Value = Option<i64>> {
    proptest::option::of(prop_oneof![Just(1i64), Just(5), Just(50)])
}

fn nullable_limit() -> impl Strategy<Value = Option<Option<i64>>> {
    proptest::option::of(limit())
}

fn step() -> impl Strategy<Value = Step> {
    let parent = prop_oneof![
        3 => Just(Parent::Default),
        1 => Just(Parent::Self_),
        1 => Just(Parent::None_),
        4 => any::<Index>().prop_map(Parent::Token),
    ];
    let ttl = proptest::option::of(prop_oneof![Just(600i64), Just(3600), Just(7200)]);
    let create = (
        parent,
        proptest::option::of(names(BUCKETS, 3)),
        proptest::option::of(names(PATTERNS, 3)),
        proptest::option::of(any::<bool>()),
        proptest::option::weighted(0.2, any::<bool>()),
        limit(),
        limit(),
        ttl,
        proptest::option::weighted(0.3, names(RANGES, 2)),
    )
        .prop_map(
            |(parent, buckets, tools, read_only, admin, max_uses, rate, ttl, allowed_ips)| {
                Op::Create {
                    parent,
                    buckets,
                    tools,
                    read_only,
                    admin,
                    max_uses,
                    rate,
                    ttl,
                    allowed_ips,
                }
            },
        );
    let scope = (
        any::<Index>(),
        list_edit(BUCKETS),
        list_edit(PATTERNS),
        proptest::option::of(any::<bool>()),
        proptest::option::weighted(0.2, names(RANGES, 2)),
    )
        .prop_map(
            |(target, buckets, tools, read_only, allowed_ips)| Op::Scope {
                target,
                buckets,
                tools,
                read_only,
                allowed_ips,
            },
        );
    let expires_in = proptest::option::of(proptest::option::of(prop_oneof![
        Just(300u64),
        Just(3600),
        Just(9000)
    ]));
    let update = (
        any::<Index>(),
        expires_in,
        nullable_limit(),
        nullable_limit(),
    )
        .prop_map(|(target, expires_in, max_uses, rate)| Op::Update {
            target,
            expires_in,
            max_uses,
            rate,
        });
    let op = prop_oneof![
        10 => create,
        6 => scope,
        4 => update,
        1 => any::<Index>().prop_map(Op::Pause),
        1 => any::<Index>().prop_map(Op::Resume),
        1 => any::<Index>().prop_map(Op::Revoke),
        1 => any::<Index>().prop_map(Op::Delete),
    ];
    (proptest::option::weighted(0.7, any::<Index>()), op).prop_map(|(by, op)| Step { by, op })
}

fn owned(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Who makes `step`: the owner, or one of the existing tokens.
fn caller_of(tokens: &[TokenId], step: &Step) -> Caller {
    match (&step.by, tokens.is_empty()) {
        (Some(i), false) => Caller::Token(tokens[i.index(tokens.len())].clone()),
        _ => Caller::Owner,
    }
}

/// Runs one step; returns the id of a token it created, if any. Refusals are expected and
/// ignored, but never an internal error.
fn run(s: &Service, by: &Caller, tokens: &[TokenId], step: &Step) -> Option<TokenId> {
    let pick = |i: &Index| tokens[i.index(tokens.len())].to_string();
    let by = by.clone();
    let target_missing = tokens.is_empty() && !matches!(step.op, Op::Create { .. });
    if target_missing {
        return None;
    }
    let result: Result<Option<TokenId>, Error> = match &step.op {
        Op::Create {
            parent,
            buckets,
            tools,
            read_only,
            admin,
            max_uses,
            rate,
            ttl,
            allowed_ips,
        } => {
            let parent = match parent {
                Parent::Default => None,
                Parent::Self_ => Some("self".to_owned()),
                Parent::None_ => Some("none".to_owned()),
                Parent::Token(i) if !tokens.is_empty() => Some(pick(i)),
                Parent::Token(_) => None,
            };
            s.create_token(
                &by,
                CreateToken {
                    name: "t".into(),
                    buckets: buckets.as_deref().map(owned),
                    tools: tools.as_deref().map(owned),
                    read_only: *read_only,
                    admin: *admin,
                    max_uses: *max_uses,
                    rate_limit_per_minute: *rate,
                    ttl_seconds: *ttl,
                    allowed_ips: allowed_ips.as_deref().map(owned),
                    parent,
                    ..CreateToken::default()
                },
            )
            .map(|issued| Some(issued.record.id))
        }
        Op::Scope {
            target,
            buckets,
            tools,
            read_only,
            allowed_ips,
        } => {
            let mut req = ScopeToken {
                id: pick(target),
                read_only: *read_only,
                allowed_ips: allowed_ips.as_deref().map(owned),
                ..ScopeToken::default()
            };
            match buckets {
                ListEdit::Keep => {}
                ListEdit::Set(b) => req.buckets = Some(owned(b)),
                ListEdit::Add(b) => req.add_buckets = Some(owned(b)),
                ListEdit::Remove(b) => req.remove_buckets = Some(owned(b)),
            }
            match tools {
                ListEdit::Keep => {}
                ListEdit::Set(t) => req.tools = Some(owned(t)),
                ListEdit::Add(t) => req.add_tools = Some(owned(t)),
                ListEdit::Remove(t) => req.remove_tools = Some(owned(t)),
            }
            s.scope_token(&by, req).map(|_| None)
        }
        Op::Update {
            target,
            expires_in,
            max_uses,
            rate,
        } => s
            .update_token(
                &by,
                UpdateToken {
                    id: pick(target),
                    expires_at: expires_in.map(|e| {
                        e.map(|secs| Timestamp::now().plus_seconds(secs).unwrap().to_string())
                    }),
                    max_uses: *max_uses,
                    rate_limit_per_minute: *rate,
                    ..UpdateToken::default()
                },
            )
            .map(|_| None),
        Op::Pause(i) => s.pause_token(&by, token_ref_str(&pick(i))).map(|_| None),
        Op::Resume(i) => s.resume_token(&by, token_ref_str(&pick(i))).map(|_| None),
        Op::Revoke(i) => s.revoke_token(&by, token_ref_str(&pick(i))).map(|_| None),
        Op::Delete(i) => s.delete_token(&by, token_ref_str(&pick(i))).map(|_| None),
    };
    match result {
        Ok(created) => created,
        Err(e) => {
            assert_ne!(
                e.code,
                ErrorCode::Internal,
                "{step:?} failed internally: {e}"
            );
            None
        }
    }
}

fn token_ref_str(id: &str) -> tokenwarden::service::requests::TokenRef {
    tokenwarden::service::requests::TokenRef { id: id.to_owned() }
}

/// Every token in the store, as the owner lists it.
fn stored(s: &Service) -> Vec<Arc<TokenRecord>> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = s
            .list_tokens(
                &Caller::Owner,
                ListTokens {
                    limit: Some(100),
                    cursor: cursor.take(),
                    ..ListTokens::default()
                },
            )
            .unwrap();
        for v in page.records {
            out.push(
                s.store()
                    .get(&v.id)
                    .unwrap()
                    .expect("a listed token is stored"),
            );
        }
        if !page.has_more {
            return out;
        }
        cursor = page.next_cursor;
    }
}

/// What a record's own scope lets it call, ignoring its ancestors.
fn own_scope_allows(r: &TokenRecord, tool: &str) -> bool {
    any_matches(&r.scope.tools, tool) && (!r.scope.read_only || is_read_only_tool(tool))
}

/// Checks the invariants that must hold after any sequence of requests; returns the ids of
/// every stored token, oldest first.
fn check_invariants(s: &Service, after: &Step) -> Result<Vec<TokenId>, TestCaseError> {
    let all = stored(s);
    for child in &all {
        let Some(parent_id) = &child.parent_id else {
            prop_assert_eq!(child.depth, 0);
            continue;
        };
        let parent = s.store().get(parent_id).unwrap();
        prop_assert!(
            parent.is_some(),
            "{} outlives its deleted parent {} (after {:?})",
            child.id,
            parent_id,
            after
        );
        let parent = parent.unwrap();
        prop_assert_eq!(child.depth, parent.depth + 1);
        let exceeding = child.scope.fields_exceeding(&parent.scope);
        prop_assert!(
            exceeding.is_empty(),
            "{} exceeds its parent {} in {:?} after {:?}\n child: {:?}\n parent: {:?}",
            child.id,
            parent.id,
            exceeding,
            after,
            child.scope,
            parent.scope
        );
        for tool in TOOLS {
            prop_assert!(
                !own_scope_allows(child, tool) || own_scope_allows(&parent, tool),
                "{}'s own scope allows {} but its parent's does not (after {:?})",
                child.id,
                tool,
                after
            );
            let child_may = s.may_call(&Caller::Token(child.id.clone()), tool, None);
            let parent_may = s.may_call(&Caller::Token(parent.id.clone()), tool, None);
            prop_assert!(
                !child_may || parent_may,
                "{} may call {} but its parent {} may not (after {:?})",
                child.id,
                tool,
                parent.id,
                after
            );
        }
        for bucket in PROBE_BUCKETS {
            prop_assert!(
                !bucket_allowed(&child.scope.buckets, bucket)
                    || bucket_allowed(&parent.scope.buckets, bucket),
                "{} reaches bucket {} but its parent does not (after {:?})",
                child.id,
                bucket,
                after
            );
        }
        for ip in PROBE_IPS {
            let ip = ip.parse().unwrap();
            prop_assert!(
                !address_allowed(&child.scope.allowed_ips, ip)
                    || address_allowed(&parent.scope.allowed_ips, ip),
                "{} may be used from {} but its parent may not (after {:?})",
                child.id,
                ip,
                after
            );
        }
        if child.scope.admin {
            prop_assert!(
                parent.scope.admin,
                "{} admin under non-admin parent",
                child.id
            );
        }
    }
    let mut ids: Vec<_> = all.iter().map(|r| (r.created_at, r.id.clone())).collect();
    ids.sort();
    Ok(ids.into_iter().map(|(_, id)| id).collect())
}

/// A non-admin token's request changes nothing outside its own subtree (as it was before the
/// request): every record that changed or disappeared, and the parent of every new one, is
/// the caller or one of its descendants.
fn check_reach(
    s: &Service,
    by: &Caller,
    before: &[Arc<TokenRecord>],
    step: &Step,
) -> Result<(), TestCaseError> {
    let Caller::Token(me) = by else {
        return Ok(());
    };
    let Some(me_before) = before.iter().find(|r| &r.id == me) else {
        return Ok(());
    };
    if me_before.scope.admin {
        return Ok(());
    }
    // The subtree as it was: descendants by walking parent links in the snapshot.
    let mut subtree: HashSet<TokenId> = HashSet::from([me.clone()]);
    loop {
        let grown: Vec<TokenId> = before
            .iter()
            .filter(|r| r.parent_id.as_ref().is_some_and(|p| subtree.contains(p)))
            .map(|r| r.id.clone())
            .filter(|id| !subtree.contains(id))
            .collect();
        if grown.is_empty() {
            break;
        }
        subtree.extend(grown);
    }
    let old: HashMap<&TokenId, &TokenRecord> = before.iter().map(|r| (&r.id, r.as_ref())).collect();
    let now: HashMap<TokenId, Arc<TokenRecord>> =
        stored(s).into_iter().map(|r| (r.id.clone(), r)).collect();
    for (id, record) in &old {
        let unchanged = now.get(*id).is_some_and(|r| r.as_ref() == *record);
        prop_assert!(
            unchanged || subtree.contains(*id),
            "{} changed {} outside its subtree: {:?}",
            me,
            id,
            step
        );
    }
    for (id, record) in &now {
        if !old.contains_key(id) {
            let parent = record.parent_id.as_ref();
            prop_assert!(
                parent.is_some_and(|p| subtree.contains(p)),
                "{} created {} outside its subtree (parent {:?}): {:?}",
                me,
                id,
                parent,
                step
            );
        }
    }
    Ok(())
}

/// No token can grant what it does not hold: after a request by a token, every token it
/// created, and every field it widened on a token it changed, lies within the caller's own
/// scope as it was at the moment of the call (whatever the parent argument, admin or not).
fn check_caller_bound(
    s: &Service,
    by: &Caller,
    before: &[Arc<TokenRecord>],
    step: &Step,
) -> Result<(), TestCaseError> {
    let Caller::Token(me) = by else {
        return Ok(());
    };
    let Some(me_before) = before.iter().find(|r| &r.id == me) else {
        return Ok(());
    };
    let bound = &me_before.scope;
    let old: HashMap<&TokenId, &TokenRecord> = before.iter().map(|r| (&r.id, r.as_ref())).collect();
    for record in stored(s) {
        let beyond: Vec<&str> = match old.get(&record.id) {
            None => record.scope.fields_exceeding(bound),
            Some(was) => {
                let mut widened = record.scope.fields_exceeding(&was.scope);
                // Narrowing to disjoint ranges stores "no address", which is not a widening.
                if record.scope.allowed_ips == no_address() {
                    widened.retain(|f| *f != "allowed_ips");
                }
                record
                    .scope
                    .fields_exceeding(bound)
                    .into_iter()
                    .filter(|f| widened.contains(f))
                    .collect()
            }
        };
        prop_assert!(
            beyond.is_empty(),
            "{} left {} beyond its own scope in {:?} after {:?}\n caller: {:?}\n token: {:?}",
            me,
            record.id,
            beyond,
            step,
            bound,
            record.scope
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        max_shrink_iters: 200,
        .. ProptestConfig::default()
    })]

    /// No sequence of requests by the owner or by tokens, refused or not, ever leaves a child
    /// with more than its parent: stored scopes stay within their parents', and whatever a
    /// child may call its parent may call. And no request by a non-admin token touches anything
    /// outside its own subtree, and no request by any token (admin or not, whatever the parent
    /// argument) leaves a token beyond the caller's own scope.
    #[test]
    fn no_child_ever_exceeds_its_parent(steps in proptest::collection::vec(step(), 1..48)) {
        let fx = Fixture::new();
        let s = &fx.service;
        // The tokens that exist now, oldest first: callers and targets are drawn from these.
        let mut tokens: Vec<TokenId> = Vec::new();
        for step in &steps {
            let by = caller_of(&tokens, step);
            let before = stored(s);
            run(s, &by, &tokens, step);
            tokens = check_invariants(s, step)?;
            check_reach(s, &by, &before, step)?;
            check_caller_bound(s, &by, &before, step)?;
        }
    }
}
