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
    let token = chain
        .first()
        .expect("a chain always starts with the token itself");
    let deny = |culprit: &TokenRecord, rule: Rule, detail: String| Denial {
        token: token.id.clone(),
        culprit: (culprit.id != token.id).then(|| culprit.id.clone()),
        rule,
        detail,
    };

    // Rule 1, revocation first: it is permanent and outranks every other state.
    for link in chain {
        if link.status == Status::Revoked {
            return Err(deny(link, Rule::Revoked, String::new()));
        }
    }
    for link in chain {
        if let Some(expires_at) = link.scope.expires_at.filter(|e| *e <= attempt.now) {
            return Err(deny(link, Rule::Expired, format!("at {expires_at}")));
        }
        if link.status == Status::Paused {
            return Err(deny(link, Rule::Paused, String::new()));
        }
    }
    if token.scope.environment != attempt.environment {
        return Err(deny(
            token,
            Rule::Environment,
            format!(
                "belongs to environment {:?}, not {:?}",
                token.scope.environment, attempt.environment
            ),
        ));
    }
    // Rule 5.
    if let Some(ip) = attempt.client_ip {
        for link in chain {
            if !address_allowed(&link.scope.allowed_ips, ip) {
                return Err(deny(link, Rule::Address, ip.to_string()));
            }
        }
    }

    if let Some(tool) = attempt.tool {
        for link in chain {
            // Rule 2.
            if !any_matches(&link.scope.tools, tool.name) {
                return Err(deny(
                    link,
                    Rule::ToolAllowlist,
                    format!(
                        "{}: not in {} tool allowlist {}",
                        tool.name,
                        owner_word(link, token),
                        list(&link.scope.tools)
                    ),
                ));
            }
            if let Some(denied) = link.scope.deny_tools.iter().find(|p| p.matches(tool.name)) {
                return Err(deny(
                    link,
                    Rule::ToolDenied,
                    format!(
                        "{}: matches {} in {} deny_tools {}",
                        tool.name,
                        denied,
                        owner_word(link, token),
                        list(&link.scope.deny_tools)
                    ),
                ));
            }
            // Rule 4.
            if link.scope.read_only && !tool.read_only {
                return Err(deny(
                    link,
                    Rule::ReadOnly,
                    format!(
                        "{}: {} is read-only and {} is not a read-only tool",
                        tool.name,
                        if link.id == token.id {
                            "it".to_owned()
                        } else {
                            format!("its ancestor {}", link.id)
                        },
                        tool.name
                    ),
                ));
            }
        }
    }

    // Rule 3.
    if let Some(bucket) = attempt.bucket {
        for link in chain {
            if !bucket_allowed(&link.scope.buckets, bucket) {
                return Err(deny(
                    link,
                    Rule::BucketAllowlist,
                    format!(
                        "{bucket}: not in {} bucket allowlist {}",
                        owner_word(link, token),
                        list(&link.scope.buckets)
                    ),
                ));
            }
        }
    }

    // Rule 6.
    if let Some(budgets) = attempt.budgets {
        for (link, budget) in chain.iter().zip(budgets) {
            if budget.remaining_uses == Some(0) {
                let max = link.scope.max_uses.unwrap_or(0);
                return Err(deny(
                    link,
                    Rule::UsesExhausted,
                    format!("{} max_uses of {max} are all used", owner_word(link, token)),
                ));
            }
            if let Some(limit) = link.scope.rate_limit_per_minute
                && budget.calls_this_minute >= limit
            {
                return Err(deny(
                    link,
                    Rule::RateLimited,
                    format!(
                        "{} limit of {limit} calls in any 60 seconds is reached; retry shortly",
                        owner_word(link, token)
                    ),
                ));
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
