//! The one authorisation decision (SPEC §4). Every front end asks `authorize`: the HTTP guard
//! (authentication only), `tools/list` filtering, `tools/call`, `verify_token` and the CLI.

use std::fmt;
use std::net::IpAddr;

use super::cidr::address_allowed;
use super::pattern::any_matches;
use super::scope::bucket_allowed;
use crate::record::{Status, TokenRecord};
use crate::secret::TokenId;
use crate::timestamp::Timestamp;

/// The tool a request wants to call, with its `readOnlyHint`.
#[derive(Clone, Copy, Debug)]
pub struct Tool<'a> {
    pub name: &'a str,
    pub read_only: bool,
}

/// How much of its limits a token in the chain has left, read under the usage lock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub remaining_uses: Option<u64>,
    /// Authorised calls in the sliding 60-second window ending now (SPEC §4 rule 6).
    pub calls_this_minute: u32,
}

/// One request as the decision sees it.
#[derive(Clone, Copy, Debug)]
pub struct Attempt<'a> {
    /// The environment the server runs in.
    pub environment: &'a str,
    pub now: Timestamp,
    /// The client's address; `None` on stdio, where `allowed_ips` does not apply.
    pub client_ip: Option<IpAddr>,
    /// `None` checks only that the token may authenticate (rules 1 and 5).
    pub tool: Option<Tool<'a>>,
    pub bucket: Option<&'a str>,
    /// Present when the attempt would use a call (rule 6), aligned with the chain.
    pub budgets: Option<&'a [Budget]>,
}

/// The rule of SPEC §4 that refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    Revoked,
    Paused,
    Expired,
    Environment,
    Address,
    ToolAllowlist,
    ToolDenied,
    BucketAllowlist,
    ReadOnly,
    UsesExhausted,
    RateLimited,
}

impl Rule {
    /// The rule as a reason code (the access log and the metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Revoked => "revoked",
            Rule::Paused => "paused",
            Rule::Expired => "expired",
            Rule::Environment => "wrong_environment",
            Rule::Address => "address_not_allowed",
            Rule::ToolAllowlist => "tool_not_allowed",
            Rule::ToolDenied => "tool_denied",
            Rule::BucketAllowlist => "bucket_not_allowed",
            Rule::ReadOnly => "read_only",
            Rule::UsesExhausted => "uses_exhausted",
            Rule::RateLimited => "rate_limited",
        }
    }

    /// Rules that make the bearer unusable altogether (HTTP 401), as opposed to refusing one
    /// tool call.
    pub fn is_authentication(self) -> bool {
        matches!(
            self,
            Rule::Revoked | Rule::Paused | Rule::Expired | Rule::Environment | Rule::Address
        )
    }
}

/// Why a request was refused, naming the token, the ancestor at fault (if not the token
/// itself) and the rule. Its `Display` is the message clients and logs see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub token: TokenId,
    pub culprit: Option<TokenId>,
    pub rule: Rule,
    detail: String,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whose = match &self.culprit {
            None => "its".to_owned(),
            Some(ancestor) => format!("its ancestor {ancestor}'s"),
        };
        let by = match &self.culprit {
            None => String::new(),
            Some(ancestor) => format!(" by its ancestor {ancestor}"),
        };
        let t = &self.token;
        let d = &self.detail;
        match self.rule {
            Rule::Revoked => write!(f, "token {t} is revoked{by}"),
            Rule::Paused => write!(f, "token {t} is paused{by}"),
            Rule::Expired => write!(f, "token {t} has expired{by} ({d})"),
            Rule::Environment => write!(f, "token {t} {d}"),
            Rule::Address => write!(f, "client address {d} is not in {whose} allowed_ips ({t})"),
            Rule::ToolAllowlist => write!(f, "token {t} may not call {d}"),
            Rule::ToolDenied => write!(f, "token {t} may not call {d}"),
            Rule::BucketAllowlist => write!(f, "token {t} may not use bucket {d}"),
            Rule::ReadOnly => write!(f, "token {t} may not call {d}"),
            Rule::UsesExhausted => write!(f, "token {t} has no uses left: {d}"),
            Rule::RateLimited => write!(f, "token {t} is rate limited: {d}"),
        }
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    let parts: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("[{}]", parts.join(", "))
}

impl<'a> Attempt<'a> {
    /// An attempt to authenticate only (rules 1 and 5): no tool, bucket or use.
    pub fn authentication(environment: &'a str, now: Timestamp, client_ip: Option<IpAddr>) -> Self {
        Attempt {
            environment,
            now,
            client_ip,
            tool: None,
            bucket: None,
            budgets: None,
        }
    }
}

/// After [`authorize`] allowed an authentication over `chain`, how long that verdict holds for
/// every client while the chain is unchanged: `None` when an address rule makes it depend on the
/// client, else `Some` of the chain's earliest expiry (`Some(None)`: none expires). Statuses and
/// environment cannot change without a write; expiry is the only rule that moves with time.
pub fn authentication_holds_until(chain: &[&TokenRecord]) -> Option<Option<Timestamp>> {
    if chain.iter().any(|link| !link.scope.allowed_ips.is_empty()) {
        return None;
    }
    Some(chain.iter().filter_map(|link| link.scope.expires_at).min())
}

/// Decides whether the token `chain[0]` (followed by its parent, up to the root) may make
/// `attempt`. Checks every rule of SPEC §4 against the token and each ancestor; the first
/// failure is returned.
pub fn authorize(chain: &[&TokenRecord], attempt: &Attempt) -> Result<(), Denial> {
    decide(chain, attempt, true).map_err(|denial| denial.expect("explained when asked"))
}

/// Whether [`authorize`] would allow `attempt`, without composing the refusal's message: what
/// `tools/list` asks once per tool, where most refusals are only filtered out.
pub fn permits(chain: &[&TokenRecord], attempt: &Attempt) -> bool {
    decide(chain, attempt, false).is_ok()
}

/// The decision itself; a refusal carries its [`Denial`] only when `explain` is set (its
/// message is formatted only then).
fn decide(chain: &[&TokenRecord], attempt: &Attempt, explain: bool) -> Result<(), Option<Denial>> {
    let token = chain
        .first()
        .expect("a chain always starts with the token itself");
    let deny = |culprit: &TokenRecord, rule: Rule, detail: &dyn Fn() -> String| {
        explain.then(|| Denial {
            token: token.id.clone(),
            culprit: (culprit.id != token.id).then(|| culprit.id.clone()),
            rule,
            detail: detail(),
        })
    };

    // Rule 1, revocation first: it is permanent and outranks every other state.
    for link in chain {
        if link.status == Status::Revoked {
            return Err(deny(link, Rule::Revoked, &String::new));
        }
    }
    for link in chain {
        if let Some(expires_at) = link.scope.expires_at.filter(|e| *e <= attempt.now) {
            return Err(deny(link, Rule::Expired, &|| format!("at {expires_at}")));
        }
        if link.status == Status::Paused {
            return Err(deny(link, Rule::Paused, &String::new));
        }
    }
    if token.scope.environment != attempt.environment {
        return Err(deny(token, Rule::Environment, &|| {
            format!(
                "belongs to environment {:?}, not {:?}",
                token.scope.environment, attempt.environment
            )
        }));
    }
    // Rule 5.
    if let Some(ip) = attempt.client_ip {
        for link in chain {
            if !address_allowed(&link.scope.allowed_ips, ip) {
                return Err(deny(link, Rule::Address, &|| ip.to_string()));
            }
        }
    }

    if let Some(tool) = attempt.tool {
        for link in chain {
            // Rule 2.
            if !any_matches(&link.scope.tools, tool.name) {
                return Err(deny(link, Rule::ToolAllowlist, &|| {
                    format!(
                        "{}: not in {} tool allowlist {}",
                        tool.name,
                        owner_word(link, token),
                        list(&link.scope.tools)
                    )
                }));
            }
            if let Some(denied) = link.scope.deny_tools.iter().find(|p| p.matches(tool.name)) {
                return Err(deny(link, Rule::ToolDenied, &|| {
                    format!(
                        "{}: matches {} in {} deny_tools {}",
                        tool.name,
                        denied,
                        owner_word(link, token),
                        list(&link.scope.deny_tools)
                    )
                }));
            }
            // Rule 4.
            if link.scope.read_only && !tool.read_only {
                return Err(deny(link, Rule::ReadOnly, &|| {
                    format!(
                        "{}: {} is read-only and {} is not a read-only tool",
                        tool.name,
                        if link.id == token.id {
                            "it".to_owned()
                        } else {
                            format!("its ancestor {}", link.id)
                        },
                        tool.name
                    )
                }));
            }
        }
    }

    // Rule 3.
    if let Some(bucket) = attempt.bucket {
        for link in chain {
            if !bucket_allowed(&link.scope.buckets, bucket) {
                return Err(deny(link, Rule::BucketAllowlist, &|| {
                    format!(
                        "{bucket}: not in {} bucket allowlist {}",
                        owner_word(link, token),
                        list(&link.scope.buckets)
                    )
                }));
            }
        }
    }

    // Rule 6.
    if let Some(budgets) = attempt.budgets {
        for (link, budget) in chain.iter().zip(budgets) {
            if budget.remaining_uses == Some(0) {
                let max = link.scope.max_uses.unwrap_or(0);
                return Err(deny(link, Rule::UsesExhausted, &|| {
                    format!("{} max_uses of {max} are all used", owner_word(link, token))
                }));
            }
            if let Some(limit) = link.scope.rate_limit_per_minute
                && budget.calls_this_minute >= limit
            {
                return Err(deny(link, Rule::RateLimited, &|| {
                    format!(
                        "{} limit of {limit} calls in any 60 seconds is reached; retry shortly",
                        owner_word(link, token)
                    )
                }));
            }
        }
    }
    Ok(())
}

fn owner_word(link: &TokenRecord, token: &TokenRecord) -> String {
    if link.id == token.id {
        "its".to_owned()
    } else {
        format!("its ancestor {}'s", link.id)
    }
}

/// The decision over hand-built chains: records whose scopes were never clamped, so each rule
/// must be checked at every link by `authorize` itself (SPEC §4; ARCHITECTURE invariants 3, 4,
/// 6 and 20). Through the API, cascade and clamping usually hide a link the decision skips.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Actor;
    use crate::rules::cidr::IpNet;
    use crate::rules::pattern::ToolPattern;
    use crate::rules::scope::Scope;

    const NOW_MS: i64 = 1_800_000_000_000;

    fn now() -> Timestamp {
        Timestamp::from_millis(NOW_MS).unwrap()
    }

    fn at(offset_ms: i64) -> Option<Timestamp> {
        Timestamp::from_millis(NOW_MS + offset_ms)
    }

    fn patterns(items: &[&str]) -> Vec<ToolPattern> {
        items
            .iter()
            .map(|p| ToolPattern::parse(p).unwrap())
            .collect()
    }

    fn record(name: &str, depth: u8) -> TokenRecord {
        TokenRecord {
            id: TokenId::generate(),
            name: name.to_owned(),
            description: None,
            scope: Scope {
                admin: false,
                ..Scope::unlimited("default")
            },
            status: Status::Active,
            masked: "mcp_AAAA…AAAA".to_owned(),
            last4: "AAAA".to_owned(),
            parent_id: None,
            created_by: Actor::Owner,
            depth,
            metadata: serde_json::Map::new(),
            created_at: now(),
            updated_at: now(),
            paused_at: None,
            revoked_at: None,
            rotated_at: None,
            hashes: Vec::new(),
        }
    }

    /// A token (depth 2), its parent and its root, all active and unrestricted.
    fn chain() -> [TokenRecord; 3] {
        let root = record("root", 0);
        let mut parent = record("parent", 1);
        parent.parent_id = Some(root.id.clone());
        let mut token = record("token", 2);
        token.parent_id = Some(parent.id.clone());
        [token, parent, root]
    }

    fn links(chain: &[TokenRecord]) -> Vec<&TokenRecord> {
        chain.iter().collect()
    }

    fn authentication() -> Attempt<'static> {
        Attempt::authentication("default", now(), None)
    }

    fn call(tool: &'static str, read_only: bool) -> Attempt<'static> {
        Attempt {
            tool: Some(Tool {
                name: tool,
                read_only,
            }),
            ..authentication()
        }
    }

    /// Asserts that `attempt` over `chain` is refused by `rule`, blamed on `chain[culprit]`.
    #[track_caller]
    fn refused(chain: &[TokenRecord], attempt: &Attempt, rule: Rule, culprit: usize) -> Denial {
        let denial = authorize(&links(chain), attempt).expect_err("the attempt must be refused");
        assert_eq!(denial.rule, rule, "{denial}");
        assert_eq!(denial.token, chain[0].id, "{denial}");
        let expected = (culprit > 0).then(|| chain[culprit].id.clone());
        assert_eq!(denial.culprit, expected, "{denial}");
        denial
    }

    #[track_caller]
    fn allowed(chain: &[TokenRecord], attempt: &Attempt) {
        if let Err(denial) = authorize(&links(chain), attempt) {
            panic!("the attempt must be allowed: {denial}");
        }
    }

    #[test]
    fn an_unrestricted_chain_is_allowed_everything() {
        let c = chain();
        allowed(&c, &authentication());
        allowed(&c, &call("create_token", false));
        allowed(
            &c,
            &Attempt {
                client_ip: Some("192.0.2.1".parse().unwrap()),
                bucket: Some("any"),
                budgets: Some(&[Budget::default(); 3]),
                ..call("delete_token", false)
            },
        );
    }

    #[test]
    fn a_revoked_link_anywhere_refuses_the_token() {
        for at_link in 0..3 {
            let mut c = chain();
            c[at_link].status = Status::Revoked;
            refused(&c, &authentication(), Rule::Revoked, at_link);
            refused(&c, &call("whoami", true), Rule::Revoked, at_link);
        }
    }

    #[test]
    fn a_paused_link_anywhere_refuses_the_token() {
        for at_link in 0..3 {
            let mut c = chain();
            c[at_link].status = Status::Paused;
            refused(&c, &authentication(), Rule::Paused, at_link);
        }
    }

    #[test]
    fn an_expired_link_anywhere_refuses_the_token_from_its_expiry_on() {
        for at_link in 0..3 {
            let mut c = chain();
            c[at_link].scope.expires_at = at(0);
            refused(&c, &authentication(), Rule::Expired, at_link);
            c[at_link].scope.expires_at = at(-1);
            refused(&c, &authentication(), Rule::Expired, at_link);
            c[at_link].scope.expires_at = at(1);
            allowed(&c, &authentication());
        }
    }

    #[test]
    fn revocation_outranks_pausing_and_expiry_wherever_they_are() {
        // The token is paused and expired, its root revoked: revocation is what it meets.
        let mut c = chain();
        c[0].status = Status::Paused;
        c[0].scope.expires_at = at(-1);
        c[2].status = Status::Revoked;
        refused(&c, &authentication(), Rule::Revoked, 2);
        // The token is revoked, its parent paused.
        let mut c = chain();
        c[0].status = Status::Revoked;
        c[1].status = Status::Paused;
        refused(&c, &authentication(), Rule::Revoked, 0);
    }

    #[test]
    fn the_token_must_belong_to_the_servers_environment() {
        let mut c = chain();
        for link in &mut c {
            link.scope.environment = "staging".to_owned();
        }
        let denial = refused(&c, &authentication(), Rule::Environment, 0);
        assert_eq!(
            denial.to_string(),
            format!(
                "token {} belongs to environment \"staging\", not \"default\"",
                c[0].id
            )
        );
        allowed(
            &c,
            &Attempt {
                environment: "staging",
                ..authentication()
            },
        );
    }

    #[test]
    fn allowed_ips_apply_at_every_link_but_not_on_stdio() {
        for at_link in 0..3 {
            let mut c = chain();
            c[at_link].scope.allowed_ips = vec![IpNet::parse("10.0.0.0/8").unwrap()];
            let outside = Attempt {
                client_ip: Some("192.0.2.7".parse().unwrap()),
                ..authentication()
            };
            let denial = refused(&c, &outside, Rule::Address, at_link);
            assert!(
                denial
                    .to_string()
                    .starts_with("client address 192.0.2.7 is not in")
            );
            let inside = Attempt {
                client_ip: Some("10.1.2.3".parse().unwrap()),
                ..authentication()
            };
            allowed(&c, &inside);
            // stdio has no client address: the rule does not apply.
            allowed(&c, &authentication());
        }
    }

    #[test]
    fn the_tool_allowlist_applies_at_every_link() {
        for at_link in 0..3 {
            let mut c = chain();
            c[at_link].scope.tools = patterns(&["whoami", "list_*"]);
            refused(
                &c,
                &call("create_token", false),
                Rule::ToolAllowlist,
                at_link,
            );
            allowed(&c, &call("whoami", true));
            allowed(&c, &call("list_tokens", true));
            // Only a call is checked against tools: authentication is not.
            allowed(&c, &authentication());
            // An empty allowlist means no tool at all.
            c[at_link].scope.tools = Vec::new();
            refused(&c, &call("whoami", true), Rule::ToolAllowlist, at_link);
        }
    }

    #[test]
    fn deny_tools_apply_at_every_link() {
        for at_link in 0..3 {
            let mut c = chain();
            c[at_link].scope.deny_tools = patterns(&["fs__write_*"]);
            refused(
                &c,
                &call("fs__write_file", false),
                Rule::ToolDenied,
                at_link,
            );
            allowed(&c, &call("fs__read_file", false));
        }
    }

    #[test]
    fn read_only_applies_at_every_link() {
        for at_link in 0..3 {
            let mut c = chain();
            c[at_link].scope.read_only = true;
            refused(&c, &call("create_token", false), Rule::ReadOnly, at_link);
            allowed(&c, &call("whoami", true));
        }
    }

    #[test]
    fn the_bucket_allowlist_applies_at_every_link() {
        for at_link in 0..3 {
            let mut c = chain();
            c[at_link].scope.buckets = vec!["a".to_owned(), "b".to_owned()];
            let in_c = Attempt {
                bucket: Some("c"),
                ..call("fs__read_file", true)
            };
            refused(&c, &in_c, Rule::BucketAllowlist, at_link);
            let in_b = Attempt {
                bucket: Some("b"),
                ..call("fs__read_file", true)
            };
            allowed(&c, &in_b);
            // A call that names no bucket (the server's own tools) is not checked.
            allowed(&c, &call("whoami", true));
        }
    }

    #[test]
    fn uses_and_rate_limits_apply_at_every_link() {
        for at_link in 0..3 {
            let mut c = chain();
            c[at_link].scope.max_uses = Some(3);
            let mut budgets = [Budget::default(); 3];
            budgets[at_link].remaining_uses = Some(0);
            let exhausted = Attempt {
                budgets: Some(&budgets),
                ..call("whoami", true)
            };
            let denial = refused(&c, &exhausted, Rule::UsesExhausted, at_link);
            assert!(denial.to_string().contains("max_uses of 3 are all used"));
            let mut budgets = [Budget::default(); 3];
            budgets[at_link].remaining_uses = Some(1);
            allowed(
                &c,
                &Attempt {
                    budgets: Some(&budgets),
                    ..call("whoami", true)
                },
            );

            let mut c = chain();
            c[at_link].scope.rate_limit_per_minute = Some(5);
            let mut budgets = [Budget::default(); 3];
            budgets[at_link].calls_this_minute = 5;
            let limited = Attempt {
                budgets: Some(&budgets),
                ..call("whoami", true)
            };
            let denial = refused(&c, &limited, Rule::RateLimited, at_link);
            assert!(
                denial
                    .to_string()
                    .contains("limit of 5 calls in any 60 seconds")
            );
            budgets[at_link].calls_this_minute = 4;
            allowed(
                &c,
                &Attempt {
                    budgets: Some(&budgets),
                    ..call("whoami", true)
                },
            );
            // Without budgets (tools/list filtering) nothing is counted or refused.
            allowed(&c, &call("whoami", true));
        }
    }

    #[test]
    fn rules_are_checked_in_the_documented_order() {
        // Authentication rules come before tool rules; tool rules before buckets; buckets
        // before budgets.
        let mut c = chain();
        c[1].status = Status::Paused;
        c[0].scope.tools = Vec::new();
        refused(&c, &call("whoami", true), Rule::Paused, 1);

        let mut c = chain();
        c[2].scope.tools = patterns(&["whoami"]);
        c[0].scope.buckets = vec!["a".to_owned()];
        let attempt = Attempt {
            bucket: Some("z"),
            ..call("list_tokens", true)
        };
        refused(&c, &attempt, Rule::ToolAllowlist, 2);

        let mut c = chain();
        c[0].scope.buckets = vec!["a".to_owned()];
        c[1].scope.max_uses = Some(1);
        let budgets = [
            Budget::default(),
            Budget {
                remaining_uses: Some(0),
                calls_this_minute: 0,
            },
            Budget::default(),
        ];
        let attempt = Attempt {
            bucket: Some("z"),
            budgets: Some(&budgets),
            ..call("whoami", true)
        };
        refused(&c, &attempt, Rule::BucketAllowlist, 0);
    }

    #[test]
    fn denials_name_the_token_the_culprit_and_the_rule() {
        let mut c = chain();
        let (t, p, r) = (c[0].id.clone(), c[1].id.clone(), c[2].id.clone());
        c[1].status = Status::Revoked;
        let d = refused(&c, &authentication(), Rule::Revoked, 1);
        assert_eq!(
            d.to_string(),
            format!("token {t} is revoked by its ancestor {p}")
        );
        let mut c = chain();
        c[0].id = t.clone();
        c[0].status = Status::Revoked;
        assert_eq!(
            refused(&c, &authentication(), Rule::Revoked, 0).to_string(),
            format!("token {t} is revoked")
        );

        let mut c = chain();
        c[0].id = t.clone();
        c[2].id = r.clone();
        c[2].status = Status::Paused;
        assert_eq!(
            refused(&c, &authentication(), Rule::Paused, 2).to_string(),
            format!("token {t} is paused by its ancestor {r}")
        );
        c[2].status = Status::Active;
        c[2].scope.expires_at = at(0);
        assert_eq!(
            refused(&c, &authentication(), Rule::Expired, 2).to_string(),
            format!(
                "token {t} has expired by its ancestor {r} (at {})",
                at(0).unwrap()
            )
        );

        let mut c = chain();
        c[0].id = t.clone();
        c[1].id = p.clone();
        c[1].scope.allowed_ips = vec![IpNet::parse("10.0.0.0/8").unwrap()];
        let outside = Attempt {
            client_ip: Some("192.0.2.7".parse().unwrap()),
            ..authentication()
        };
        assert_eq!(
            refused(&c, &outside, Rule::Address, 1).to_string(),
            format!("client address 192.0.2.7 is not in its ancestor {p}'s allowed_ips ({t})")
        );
        c[1].scope.allowed_ips = Vec::new();
        c[0].scope.allowed_ips = vec![IpNet::parse("10.0.0.0/8").unwrap()];
        assert_eq!(
            refused(&c, &outside, Rule::Address, 0).to_string(),
            format!("client address 192.0.2.7 is not in its allowed_ips ({t})")
        );

        let mut c = chain();
        c[0].id = t.clone();
        c[1].id = p.clone();
        c[1].scope.tools = patterns(&["whoami", "list_*"]);
        assert_eq!(
            refused(&c, &call("create_token", false), Rule::ToolAllowlist, 1).to_string(),
            format!(
                "token {t} may not call create_token: not in its ancestor {p}'s tool allowlist \
                 [whoami, list_*]"
            )
        );
        c[1].scope.tools = vec![ToolPattern::Any];
        c[0].scope.tools = patterns(&["whoami"]);
        assert_eq!(
            refused(&c, &call("create_token", false), Rule::ToolAllowlist, 0).to_string(),
            format!("token {t} may not call create_token: not in its tool allowlist [whoami]")
        );

        c[0].scope.tools = vec![ToolPattern::Any];
        c[1].scope.deny_tools = patterns(&["fs__write_*", "fs__move_file"]);
        assert_eq!(
            refused(&c, &call("fs__write_file", false), Rule::ToolDenied, 1).to_string(),
            format!(
                "token {t} may not call fs__write_file: matches fs__write_* in its ancestor \
                 {p}'s deny_tools [fs__write_*, fs__move_file]"
            )
        );
        c[1].scope.deny_tools = Vec::new();
        c[0].scope.deny_tools = patterns(&["fs__write_*"]);
        assert_eq!(
            refused(&c, &call("fs__write_file", false), Rule::ToolDenied, 0).to_string(),
            format!(
                "token {t} may not call fs__write_file: matches fs__write_* in its deny_tools \
                 [fs__write_*]"
            )
        );

        c[0].scope.deny_tools = Vec::new();
        c[1].scope.read_only = true;
        assert_eq!(
            refused(&c, &call("delete_token", false), Rule::ReadOnly, 1).to_string(),
            format!(
                "token {t} may not call delete_token: its ancestor {p} is read-only and \
                 delete_token is not a read-only tool"
            )
        );
        c[1].scope.read_only = false;
        c[0].scope.read_only = true;
        assert_eq!(
            refused(&c, &call("delete_token", false), Rule::ReadOnly, 0).to_string(),
            format!(
                "token {t} may not call delete_token: it is read-only and delete_token is not a \
                 read-only tool"
            )
        );

        let mut c = chain();
        c[0].id = t.clone();
        c[1].id = p.clone();
        c[1].scope.buckets = vec!["a".to_owned(), "b".to_owned()];
        let in_z = Attempt {
            bucket: Some("z"),
            ..call("whoami", true)
        };
        assert_eq!(
            refused(&c, &in_z, Rule::BucketAllowlist, 1).to_string(),
            format!(
                "token {t} may not use bucket z: not in its ancestor {p}'s bucket allowlist [a, b]"
            )
        );
        c[1].scope.buckets = vec!["*".to_owned()];
        c[0].scope.buckets = vec![];
        assert_eq!(
            refused(&c, &in_z, Rule::BucketAllowlist, 0).to_string(),
            format!("token {t} may not use bucket z: not in its bucket allowlist []")
        );

        let mut c = chain();
        c[0].id = t.clone();
        c[1].id = p.clone();
        c[1].scope.max_uses = Some(7);
        let budgets = [
            Budget::default(),
            Budget {
                remaining_uses: Some(0),
                calls_this_minute: 0,
            },
            Budget::default(),
        ];
        let exhausted = Attempt {
            budgets: Some(&budgets),
            ..call("whoami", true)
        };
        assert_eq!(
            refused(&c, &exhausted, Rule::UsesExhausted, 1).to_string(),
            format!("token {t} has no uses left: its ancestor {p}'s max_uses of 7 are all used")
        );
        c[1].scope.max_uses = None;
        c[0].scope.rate_limit_per_minute = Some(2);
        let budgets = [
            Budget {
                remaining_uses: None,
                calls_this_minute: 2,
            },
            Budget::default(),
            Budget::default(),
        ];
        let limited = Attempt {
            budgets: Some(&budgets),
            ..call("whoami", true)
        };
        assert_eq!(
            refused(&c, &limited, Rule::RateLimited, 0).to_string(),
            format!(
                "token {t} is rate limited: its limit of 2 calls in any 60 seconds is reached; \
                 retry shortly"
            )
        );
    }

    #[test]
    fn only_standing_rules_are_authentication_rules() {
        for rule in [
            Rule::Revoked,
            Rule::Paused,
            Rule::Expired,
            Rule::Environment,
            Rule::Address,
        ] {
            assert!(rule.is_authentication(), "{rule:?}");
        }
        for rule in [
            Rule::ToolAllowlist,
            Rule::ToolDenied,
            Rule::BucketAllowlist,
            Rule::ReadOnly,
            Rule::UsesExhausted,
            Rule::RateLimited,
        ] {
            assert!(!rule.is_authentication(), "{rule:?}");
        }
    }

    #[test]
    fn an_admission_holds_until_the_earliest_expiry_and_never_with_an_address_rule() {
        let mut c = chain();
        assert_eq!(authentication_holds_until(&links(&c)), Some(None));
        c[1].scope.expires_at = at(5_000);
        c[2].scope.expires_at = at(9_000);
        assert_eq!(authentication_holds_until(&links(&c)), Some(at(5_000)));
        c[0].scope.expires_at = at(3_000);
        assert_eq!(authentication_holds_until(&links(&c)), Some(at(3_000)));
        c[2].scope.allowed_ips = vec![IpNet::parse("10.0.0.0/8").unwrap()];
        assert_eq!(authentication_holds_until(&links(&c)), None);
    }
}
