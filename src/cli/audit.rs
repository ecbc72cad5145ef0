//! `tokenwarden audit`: the `list_audit_events` tool on the command line, as the owner.

use clap::Args;

use super::output::{self, Out};
use super::token::{Arguments, more_hint, paginate};
use super::{Cli, CliError};

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only events about this token id.
    #[arg(long, value_name = "ID")]
    pub token_id: Option<String>,
    /// Only this action: create, update, scope, pause, resume, rotate, revoke, delete, import.
    #[arg(long)]
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

pub fn run(cli: &Cli, args: &AuditArgs) -> Result<(), CliError> {
    const ALL_PAGE: u32 = 100;
    let service = super::owner_service(cli)?;
    let mut request = Arguments::default()
        .set("token_id", args.token_id.as_deref())
        .set("action", args.action.as_deref())
        .set("since", args.since.as_deref())
        .set("limit", args.limit.or(args.all.then_some(ALL_PAGE)))
        .set("cursor", args.cursor.as_deref())
        .into_value();
    let events = paginate(
        &service,
        "list_audit_events",
        "events",
        args.all,
        &mut request,
    );
    super::close_service(service)?;
    let events = events?;
    let mut out = Out::new();
    if cli.json {
        events.rows.iter().try_for_each(|e| out.json(e))?;
    } else if events.rows.is_empty() {
        out.line("no audit events")?;
    } else {
        out.lines(&output::table(&output::AUDIT_COLUMNS, &events.rows))?;
    }
    more_hint(&mut out, cli.json, events.next_cursor)
}
