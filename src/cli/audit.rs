//! `tokenwarden audit`: the `list_audit_events` tool on the command line, as the owner; and
//! the audit log's retention while serving (`serve --audit-retention-days/--audit-max-events`).

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::service::{AuditRetention, Service};

use super::output::{self, Out};
use super::owner::Owner;
use super::token::{Arguments, more_hint, paginate};
use super::{Cli, CliError};

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only events about this token id.
    #[arg(long, value_name = "ID")]
    pub token_id: Option<String>,
    /// Only this action.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(crate::audit::ACTIONS))]
    pub action: Option<String>,
    /// Only events at or after this RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Page size, 1-100 [default: 20].
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Resume after the page that printed this cursor.
    #[arg(long)]
    pub cursor: Option<String>,
    /// Follow every page instead of stopping after one.
    #[arg(long)]
    pub all: bool,
}

/// Page size when following every page (`--all`).
pub(super) const ALL_PAGE: u32 = 100;

pub fn run(cli: &Cli, args: &AuditArgs) -> Result<(), CliError> {
    let request = Arguments::default()
        .set("token_id", args.token_id.as_deref())
        .set("action", args.action.as_deref())
        .set("since", args.since.as_deref())
        .set("limit", args.limit.or(args.all.then_some(ALL_PAGE)))
        .set("cursor", args.cursor.as_deref());
    let log = (
        "list_audit_events",
        &output::AUDIT_COLUMNS[..],
        "no audit events",
    );
    print_log(cli, log, request, args.all)
}

/// Reads a log through its tool (`list_audit_events`, `list_access_events`) as the owner —
/// one page, or every page with `all` — and prints it as JSON or as a table of `columns`.
pub(super) fn print_log(
    cli: &Cli,
    (tool, columns, none): (&str, &[(&str, &str)], &str),
    request: Arguments,
    all: bool,
) -> Result<(), CliError> {
    let owner = Owner::open(cli, super::Access::Read, super::service_config(cli))?;
    let mut request = request.into_value();
    let events = paginate(&owner, tool, "events", all, &mut request);
    owner.close()?;
    let events = events?;
    let mut out = Out::new();
    if cli.json {
        return out.json(&events.into_page("events"));
    }
    if events.rows.is_empty() {
        out.line(none)?;
    } else {
        out.lines(&output::table(columns, &events.rows))?;
    }
    more_hint(&mut out, events.next_cursor)
}

/// How often the server prunes the audit log (also once at start).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// `serve`'s audit retention flags.
#[derive(Debug, Args)]
pub struct AuditRetentionArgs {
    /// Prune audit events older than this many days.
    #[arg(long, value_name = "DAYS", default_value_t = AuditRetention::default().max_age_days,
          value_parser = at_least_one::<u32>)]
    pub audit_retention_days: u32,

    /// Keep at most this many audit events (the newest).
    #[arg(long, value_name = "N", default_value_t = AuditRetention::default().max_events,
          value_parser = at_least_one::<u64>)]
    pub audit_max_events: u64,
}

/// A whole number of at least 1: the audit log is always bounded, and keeping nothing is not
/// a retention.
fn at_least_one<T: std::str::FromStr + PartialOrd + From<u8>>(text: &str) -> Result<T, String> {
    match text.parse::<T>() {
        Ok(n) if n >= T::from(1) => Ok(n),
        _ => Err("expected a whole number of at least 1".to_owned()),
    }
}

impl AuditRetentionArgs {
    pub fn retention(&self) -> AuditRetention {
        AuditRetention {
            max_age_days: self.audit_retention_days,
            max_events: self.audit_max_events,
        }
    }
}

/// Prunes the audit log and the access log by their retention at start and then every
/// minute, until `shutdown`.
pub async fn prune_in_background(service: Arc<Service>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let service = Arc::clone(&service);
        let pruned =
            tokio::task::spawn_blocking(move || (service.prune_audit(), service.prune_access()))
                .await;
        match pruned {
            Ok((audit, access)) => {
                if let Err(e) = audit {
                    tracing::warn!("pruning the audit log failed: {e}");
                }
                if let Err(e) = access {
                    tracing::warn!("pruning the access log failed: {e}");
                }
            }
            Err(e) => tracing::warn!("log pruner failed: {e}"),
        }
    }
}
