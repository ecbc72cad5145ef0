//! `tokenwarden access`: the `list_access_events` tool on the command line (as the owner, or
//! with `--server` as a token through `GET /v1/access`).

use clap::Args;

use super::audit::{ALL_PAGE, print_log};
use super::token::Arguments;
use super::{Cli, CliError};

#[derive(Debug, Args)]
pub struct AccessArgs {
    /// Only calls by this token id.
    #[arg(long, value_name = "ID")]
    pub token_id: Option<String>,
    /// Only calls by tokens of this lineage (its root token's id).
    #[arg(long, value_name = "ID")]
    pub lineage_id: Option<String>,
    /// Only calls of this tool (gateway tools as bucket__tool).
    #[arg(long)]
    pub tool: Option<String>,
    /// Only forwarded calls to this bucket.
    #[arg(long)]
    pub bucket: Option<String>,
    /// Only this outcome: ok, an error code (forbidden, upstream_timeout, …) or a refusal
    /// reason (revoked, paused, too_many_in_flight, …).
    #[arg(long)]
    pub outcome: Option<String>,
    /// Only entries at or after this RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only entries before this RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
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

const COLUMNS: [(&str, &str); 7] = [
    ("AT", "at"),
    ("TOKEN", "token_id"),
    ("TOOL", "tool"),
    ("BUCKET", "bucket"),
    ("OUTCOME", "outcome"),
    ("MS", "duration_ms"),
    ("VIA", "via"),
];

pub fn run(cli: &Cli, args: &AccessArgs) -> Result<(), CliError> {
    let request = Arguments::default()
        .set("token_id", args.token_id.as_deref())
        .set("lineage_id", args.lineage_id.as_deref())
        .set("tool", args.tool.as_deref())
        .set("bucket", args.bucket.as_deref())
        .set("outcome", args.outcome.as_deref())
        .set("since", args.since.as_deref())
        .set("until", args.until.as_deref())
        .set("limit", args.limit.or(args.all.then_some(ALL_PAGE)))
        .set("cursor", args.cursor.as_deref());
    let log = ("list_access_events", &COLUMNS[..], "no access log entries");
    print_log(cli, log, request, args.all)
}
