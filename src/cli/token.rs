//! `tokenwarden token …`: the token tools on the command line, acting as the owner.
//!
//! Each subcommand turns its flags into the JSON arguments of the tool of the same name and
//! calls [`crate::mcp::tools::dispatch`], the function the MCP server calls: one argument
//! parser, one validation, one result shape for both front ends. Through [`Owner`] the call
//! is made here or, while a server holds the store, by that server.

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use super::output::{self, Out};
use super::owner::Owner;
use super::{Cli, CliError};

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// List tokens, newest first, as a table.
    ///
    /// Example: tokenwarden token list --status active --bucket docs --all
    List(ListArgs),
    /// Show one token.
    ///
    /// Example: tokenwarden token get tok_0Vx3k9QbT2mZ8LwYp5RsNa4c
    Get(IdArg),
    /// Create a token and print its secret, once.
    ///
    /// Example: tokenwarden token create --name ci --buckets docs --tools 'list_*,whoami' --ttl-seconds 86400
    Create(CreateArgs),
    /// Change a token's name, description, metadata, expiry or limits.
    ///
    /// Example: tokenwarden token update tok_0Vx3k9QbT2mZ8LwYp5RsNa4c --expires-at none --max-uses 100
    Update(UpdateArgs),
    /// Change what a token may reach: buckets, tools, read-only, allowed addresses.
    ///
    /// Example: tokenwarden token scope tok_0Vx3k9QbT2mZ8LwYp5RsNa4c --remove-tools delete_token --read-only
    Scope(ScopeArgs),
    /// Pause a token (and, in effect, its descendants) until resumed.
    ///
    /// Example: tokenwarden token pause tok_0Vx3k9QbT2mZ8LwYp5RsNa4c
    Pause(IdArg),
    /// Resume a paused token.
    ///
    /// Example: tokenwarden token resume tok_0Vx3k9QbT2mZ8LwYp5RsNa4c
    Resume(IdArg),
    /// Issue a new secret for a token; the old one works for a grace period.
    ///
    /// Example: tokenwarden token rotate tok_0Vx3k9QbT2mZ8LwYp5RsNa4c --grace-seconds 300
    Rotate(RotateArgs),
    /// Revoke a token and every descendant, permanently.
    ///
    /// Example: tokenwarden token revoke tok_0Vx3k9QbT2mZ8LwYp5RsNa4c
    Revoke(RevokeArgs),
    /// Revoke a token and its descendants and remove their records.
    ///
    /// Example: tokenwarden token delete tok_0Vx3k9QbT2mZ8LwYp5RsNa4c
    Delete(IdArg),
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub token: IdArg,
    /// Also revoke every token it (or its subtree) minted elsewhere, e.g. roots created with
    /// --parent none, transitively: the clean-up after a leaked admin token.
    #[arg(long)]
    pub include_minted: bool,
}

#[derive(Debug, Args)]
pub struct IdArg {
    /// The token id (tok_…).
    pub id: String,
}

/// A token's own status, as `--status` takes it.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StatusArg {
    Active,
    Paused,
    Revoked,
    Expired,
}

/// Creation order, as `--order` takes it.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OrderArg {
    Asc,
    Desc,
}

fn value_name(value: impl clap::ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only tokens whose own status is this.
    #[arg(long, value_enum)]
    pub status: Option<StatusArg>,
    /// Only tokens that may reach this bucket.
    #[arg(long)]
    pub bucket: Option<String>,
    /// Only direct children of this token id.
    #[arg(long, value_name = "ID")]
    pub parent_id: Option<String>,
    /// Case-insensitive substring of the name or description.
    #[arg(long, value_name = "TEXT")]
    pub search: Option<String>,
    /// Page size, 1-100 [default: 20].
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Resume after the page that printed this cursor.
    #[arg(long)]
    pub cursor: Option<String>,
    /// By creation time [default: desc, newest first].
    #[arg(long, value_enum)]
    pub order: Option<OrderArg>,
    /// Follow every page instead of stopping after one.
    #[arg(long)]
    pub all: bool,
    /// Show lineage: every listed token under its parent, indented (implies --all).
    #[arg(long, conflicts_with_all = ["cursor", "limit"])]
    pub tree: bool,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Human-readable name, 1-128 characters.
    #[arg(long)]
    pub name: String,
    /// Optional description, up to 1024 characters.
    #[arg(long)]
    pub description: Option<String>,
    /// Buckets, comma-separated, or '*' for all [default: all for a root, the parent's for a
    /// child]. An empty value is refused: pass '*' for all, or omit the flag.
    #[arg(long, value_delimiter = ',')]
    pub buckets: Option<Vec<String>>,
    /// Tool patterns, comma-separated: names, '*', or prefixes like 'list_*' [default: all for
    /// a root, the parent's for a child]. An empty value is refused, as for --buckets.
    #[arg(long, value_delimiter = ',')]
    pub tools: Option<Vec<String>>,
    /// Tool patterns never callable, comma-separated, e.g. 'fs__write_*' (a child keeps its parent's too).
    #[arg(long, value_delimiter = ',')]
    pub deny_tools: Option<Vec<String>>,
    /// Only read-only tools may be called.
    #[arg(long)]
    pub read_only: bool,
    /// The token may see and manage every token.
    #[arg(long)]
    pub admin: bool,
    /// CIDR ranges the token may be used from, comma-separated [default: any].
    #[arg(long, value_delimiter = ',', value_name = "CIDRS")]
    pub allowed_ips: Option<Vec<String>>,
    /// Expiry as RFC 3339, e.g. 2026-12-31T23:59:59Z.
    #[arg(long, value_name = "TIME", conflicts_with = "ttl_seconds")]
    pub expires_at: Option<String>,
    /// Lifetime in seconds from now.
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    pub ttl_seconds: Option<i64>,
    /// Total number of tool calls allowed.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub max_uses: Option<i64>,
    /// Tool calls allowed per minute.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub rate_limit_per_minute: Option<i64>,
    /// A JSON object, at most 4 KiB, e.g. '{"team":"infra"}'.
    #[arg(long, value_name = "JSON", value_parser = json_object)]
    pub metadata: Option<Value>,
    /// The parent token id, to create a child no broader than it, or 'none' for a root token
    /// [default: a root token; with --server, a child of the --token's token].
    #[arg(long, value_name = "ID")]
    pub parent: Option<String>,
    /// Refuse a child deeper than this (a root token is depth 0); use the server's --max-depth.
    #[arg(long, default_value_t = 8)]
    pub max_depth: u8,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The token id (tok_…).
    pub id: String,
    /// New name, 1-128 characters.
    #[arg(long)]
    pub name: Option<String>,
    /// New description.
    #[arg(long, conflicts_with = "clear_description")]
    pub description: Option<String>,
    /// Remove the description.
    #[arg(long)]
    pub clear_description: bool,
    /// Replace the metadata with this JSON object.
    #[arg(long, value_name = "JSON", value_parser = json_object)]
    pub metadata: Option<Value>,
    /// New expiry as RFC 3339, or 'none' to remove it.
    #[arg(long, value_name = "TIME|none", value_parser = text_or_none)]
    pub expires_at: Option<Value>,
    /// New total call limit, or 'none' to remove it.
    #[arg(long, value_name = "N|none", value_parser = integer_or_none, allow_negative_numbers = true)]
    pub max_uses: Option<Value>,
    /// New per-minute call limit, or 'none' to remove it.
    #[arg(long, value_name = "N|none", value_parser = integer_or_none, allow_negative_numbers = true)]
    pub rate_limit_per_minute: Option<Value>,
}

#[derive(Debug, Args)]
pub struct ScopeArgs {
    /// The token id (tok_…).
    pub id: String,
    /// Replace the buckets (comma-separated, '*' for all; an empty value is refused).
    #[arg(long, value_delimiter = ',')]
    pub buckets: Option<Vec<String>>,
    /// Buckets to add, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub add_buckets: Option<Vec<String>>,
    /// Buckets to remove, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub remove_buckets: Option<Vec<String>>,
    /// Replace the tool patterns, comma-separated (an empty value is refused).
    #[arg(long, value_delimiter = ',')]
    pub tools: Option<Vec<String>>,
    /// Tool patterns to add, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub add_tools: Option<Vec<String>>,
    /// Tool patterns to remove (exact pattern text), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub remove_tools: Option<Vec<String>>,
    /// Replace the denied tool patterns, comma-separated (never fewer than the parent's).
    #[arg(long, value_delimiter = ',')]
    pub deny_tools: Option<Vec<String>>,
    /// Denied tool patterns to add, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub add_deny_tools: Option<Vec<String>>,
    /// Only read-only tools may be called (as on `token create`).
    #[arg(long, conflicts_with = "no_read_only")]
    pub read_only: bool,
    /// Clear read-only (a token under a read-only ancestor stays read-only).
    #[arg(long)]
    pub no_read_only: bool,
    /// Replace the allowed CIDR ranges, comma-separated; '' allows any address.
    #[arg(long, value_delimiter = ',', value_name = "CIDRS")]
    pub allowed_ips: Option<Vec<String>>,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The token id (tok_…).
    pub id: String,
    /// How long the old secret keeps working, 0-86400 seconds [default: 60].
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    pub grace_seconds: Option<i64>,
}

fn json_object(text: &str) -> Result<Value, String> {
    match serde_json::from_str(text) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err("must be a JSON object, e.g. '{\"team\":\"infra\"}'".to_owned()),
        Err(e) => Err(format!("not valid JSON: {e}")),
    }
}

fn text_or_none(text: &str) -> Result<Value, String> {
    Ok(if text == "none" {
        Value::Null
    } else {
        json!(text)
    })
}

fn integer_or_none(text: &str) -> Result<Value, String> {
    match text {
        "none" => Ok(Value::Null),
        _ => text
            .parse::<i64>()
            .map(|n| json!(n))
            .map_err(|_| "must be a whole number or 'none'".to_owned()),
    }
}

/// Tool arguments, with absent flags left out (the tool's default applies).
#[derive(Default)]
pub struct Arguments(Map<String, Value>);

impl Arguments {
    pub fn id(id: &str) -> Arguments {
        Arguments::default().set("id", Some(id))
    }

    pub fn set(mut self, key: &str, value: Option<impl Into<Value>>) -> Arguments {
        if let Some(value) = value {
            self.0.insert(key.to_owned(), value.into());
        }
        self
    }

    /// A comma-separated list flag; empty items are dropped, so `--allowed-ips ''` is `[]`.
    fn list(self, key: &str, items: &Option<Vec<String>>) -> Arguments {
        let items = items.as_ref().map(|items| {
            items
                .iter()
                .filter(|i| !i.is_empty())
                .cloned()
                .collect::<Vec<_>>()
        });
        self.set(key, items)
    }

    /// A list flag that must name something: `--buckets ''` would otherwise be read as "all"
    /// for a root and "none" for a child, so it is refused.
    fn names(self, key: &str, items: &Option<Vec<String>>) -> Result<Arguments, CliError> {
        if items
            .as_ref()
            .is_some_and(|items| items.iter().all(|i| i.is_empty()))
        {
            let flag = key.replace('_', "-");
            return Err(CliError::usage(format!(
                "--{flag} needs at least one value: pass '*' for all, or leave the flag out"
            )));
        }
        Ok(self.list(key, items))
    }

    fn flag(self, key: &str, on: bool) -> Arguments {
        self.set(key, on.then_some(true))
    }

    pub fn into_value(self) -> Value {
        Value::Object(self.0)
    }
}

pub fn run(cli: &Cli, args: &TokenArgs) -> Result<(), CliError> {
    let access = match args.command {
        TokenCommand::List(_) | TokenCommand::Get(_) => super::Access::Read,
        _ => super::Access::Write,
    };
    let mut config = super::service_config(cli);
    if let TokenCommand::Create(create) = &args.command {
        config.max_depth = create.max_depth;
    }
    let owner = Owner::open(cli, access, config)?;
    let result = execute(&owner, cli.json, &args.command);
    let closed = owner.close();
    result.and(closed)
}

fn execute(owner: &Owner, json: bool, command: &TokenCommand) -> Result<(), CliError> {
    let call = |tool: &str, args: Arguments| owner.call(tool, args.into_value());
    let mut out = Out::new();
    match command {
        TokenCommand::List(list) => list_tokens(owner, json, list, &mut out),
        TokenCommand::Get(a) => {
            show_record(&mut out, json, &call("get_token", Arguments::id(&a.id))?)
        }
        TokenCommand::Create(a) => {
            let args = Arguments::default()
                .set("name", Some(a.name.as_str()))
                .set("description", a.description.as_deref())
                .names("buckets", &a.buckets)?
                .names("tools", &a.tools)?
                .list("deny_tools", &a.deny_tools)
                .flag("read_only", a.read_only)
                .flag("admin", a.admin)
                .list("allowed_ips", &a.allowed_ips)
                .set("expires_at", a.expires_at.as_deref())
                .set("ttl_seconds", a.ttl_seconds)
                .set("max_uses", a.max_uses)
                .set("rate_limit_per_minute", a.rate_limit_per_minute)
                .set("metadata", a.metadata.clone())
                // The owner's default is a root token; a token's own default (its child)
                // applies when a token is the caller.
                .set(
                    "parent",
                    a.parent
                        .as_deref()
                        .or((!owner.is_remote()).then_some("none")),
                );
            show_secret(&mut out, json, "created", call("create_token", args)?)
        }
        TokenCommand::Update(a) => {
            let description = match (&a.description, a.clear_description) {
                (_, true) => Some(Value::Null),
                (text, false) => text.as_deref().map(Value::from),
            };
            let args = Arguments::id(&a.id)
                .set("name", a.name.as_deref())
                .set("description", description)
                .set("metadata", a.metadata.clone())
                .set("expires_at", a.expires_at.clone())
                .set("max_uses", a.max_uses.clone())
                .set("rate_limit_per_minute", a.rate_limit_per_minute.clone());
            changed(&mut out, json, "updated", call("update_token", args)?)
        }
        TokenCommand::Scope(a) => {
            let args = Arguments::id(&a.id)
                .names("buckets", &a.buckets)?
                .list("add_buckets", &a.add_buckets)
                .list("remove_buckets", &a.remove_buckets)
                .names("tools", &a.tools)?
                .list("add_tools", &a.add_tools)
                .list("remove_tools", &a.remove_tools)
                .list("deny_tools", &a.deny_tools)
                .list("add_deny_tools", &a.add_deny_tools)
                .set(
                    "read_only",
                    (a.read_only || a.no_read_only).then_some(a.read_only),
                )
                .list("allowed_ips", &a.allowed_ips);
            changed(&mut out, json, "scoped", call("scope_token", args)?)
        }
        TokenCommand::Pause(a) => changed(
            &mut out,
            json,
            "paused",
            call("pause_token", Arguments::id(&a.id))?,
        ),
        TokenCommand::Resume(a) => changed(
            &mut out,
            json,
            "resumed",
            call("resume_token", Arguments::id(&a.id))?,
        ),
        TokenCommand::Rotate(a) => {
            let args = Arguments::id(&a.id).set("grace_seconds", a.grace_seconds);
            show_secret(&mut out, json, "rotated", call("rotate_token", args)?)
        }
        TokenCommand::Revoke(a) => {
            let record = call("get_token", Arguments::id(&a.token.id))?;
            let args =
                Arguments::id(&a.token.id).set("include_minted", a.include_minted.then_some(true));
            let result = call("revoke_token", args)?;
            if json {
                return out.json(&result);
            }
            out.line(format!(
                "revoked {} and {} descendant(s)",
                who(&record),
                result["revoked_descendants"]
            ))?;
            if a.include_minted {
                out.line(format!(
                    "revoked {} token(s) it minted elsewhere",
                    result["revoked_minted"]
                ))?;
            }
            Ok(())
        }
        TokenCommand::Delete(a) => {
            let record = call("get_token", Arguments::id(&a.id))?;
            let result = call("delete_token", Arguments::id(&a.id))?;
            if json {
                return out.json(&result);
            }
            out.line(format!(
                "deleted {} and its descendants (the audit log keeps what happened)",
                who(&record)
            ))
        }
    }
}

/// `tok_… (name)`: how a state change names its token.
fn who(record: &Value) -> String {
    format!(
        "{} ({})",
        output::cell(&record["id"]),
        output::cell(&record["name"])
    )
}

/// Every state change answers the same way: one line saying what happened, then the record
/// as it is now (with `--json`, only the record).
fn changed(out: &mut Out, json: bool, verb: &str, record: Value) -> Result<(), CliError> {
    if json {
        return out.json(&record);
    }
    out.line(format!(
        "{verb} {}; it is now {}",
        who(&record),
        output::cell(&record["effective_status"]).replace('_', " ")
    ))?;
    out.line("")?;
    out.lines(&output::record(&record))
}

fn show_record(out: &mut Out, json: bool, record: &Value) -> Result<(), CliError> {
    if json {
        out.json(record)
    } else {
        out.lines(&output::record(record))
    }
}

/// A create or rotate result: what happened, the record, then the secret, which is never
/// shown again.
fn show_secret(out: &mut Out, json: bool, verb: &str, mut issued: Value) -> Result<(), CliError> {
    if json {
        return out.json(&issued);
    }
    let secret = issued["token"].take();
    if let Some(record) = issued.as_object_mut() {
        record.remove("token");
    }
    out.line(format!("{verb} {}", who(&issued)))?;
    out.line("")?;
    out.lines(&output::record(&issued))?;
    out.line("")?;
    out.line(format!("secret: {}", output::cell(&secret)))?;
    out.line("This secret will not be shown again: store it now (it is kept only as a hash).")
}

fn list_tokens(owner: &Owner, json: bool, list: &ListArgs, out: &mut Out) -> Result<(), CliError> {
    const ALL_PAGE: u32 = 100;
    let all = list.all || list.tree;
    let mut args = Arguments::default()
        .set("status", list.status.map(value_name))
        .set("bucket", list.bucket.as_deref())
        .set("parent_id", list.parent_id.as_deref())
        .set("search", list.search.as_deref())
        .set("limit", list.limit.or(all.then_some(ALL_PAGE)))
        .set("cursor", list.cursor.as_deref())
        .set("order", list.order.map(value_name))
        .into_value();
    let records = paginate(owner, "list_tokens", "records", all, &mut args)?;
    if json {
        return out.json(&records.into_page("records"));
    }
    if records.rows.is_empty() {
        out.line("no tokens")?;
    } else if list.tree {
        out.lines(&output::tree(&records.rows))?;
    } else {
        out.lines(&output::table(&output::TOKEN_COLUMNS, &records.rows))?;
    }
    more_hint(out, records.next_cursor)
}

/// Rows gathered from one page, or from every page with `all`.
pub struct Rows {
    pub rows: Vec<Value>,
    /// Set when more pages follow the ones gathered.
    pub next_cursor: Option<String>,
}

impl Rows {
    /// The gathered rows as one result object, the shape the paged tools return:
    /// `{field: [...], "has_more", "next_cursor"}`.
    pub fn into_page(self, field: &str) -> Value {
        json!({
            field: self.rows,
            "has_more": self.next_cursor.is_some(),
            "next_cursor": self.next_cursor,
        })
    }
}

/// Calls a paged tool (as the owner), following `next_cursor` when `all`.
pub fn paginate(
    owner: &Owner,
    tool: &str,
    field: &str,
    all: bool,
    args: &mut Value,
) -> Result<Rows, CliError> {
    let mut rows = Vec::new();
    loop {
        let mut page = owner.call(tool, args.clone())?;
        if let Value::Array(items) = page[field].take() {
            rows.extend(items);
        }
        let next = page["next_cursor"]
            .as_str()
            .filter(|_| page["has_more"] == true);
        match next {
            Some(cursor) if all => args["cursor"] = json!(cursor),
            next => {
                return Ok(Rows {
                    rows,
                    next_cursor: next.map(str::to_owned),
                });
            }
        }
    }
}

/// Tells how to get the next page (with `--json` the page object carries `next_cursor`).
pub fn more_hint(out: &mut Out, next_cursor: Option<String>) -> Result<(), CliError> {
    let Some(cursor) = next_cursor else {
        return Ok(());
    };
    out.line(format!(
        "more: pass --cursor {cursor} for the next page, or --all for every page"
    ))
}
