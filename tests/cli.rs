//! The owner's command line (SPEC §7), run as the real binary against real data directories:
//! every `token` command, `audit`, `export`/`import`, their error paths, and the same commands
//! while a running server holds the database (through its admin socket).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{BIN, Server, bearer, raw_initialize};
use serde_json::{Value, json};
use tempfile::TempDir;

/// Runs `tokenwarden --data-dir DIR ARGS…`.
fn tw(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("TOKENWARDEN_DATA_DIR")
        .output()
        .expect("run tokenwarden")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a command that must succeed and returns its stdout.
fn ok(dir: &Path, args: &[&str]) -> String {
    let out = tw(dir, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(stderr(&out), "", "{args:?} wrote to stderr");
    stdout(&out)
}

/// Runs a `--json` command that must succeed and prints one object.
fn ok_json(dir: &Path, args: &[&str]) -> Value {
    let text = ok(dir, &[&["--json"], args].concat());
    assert_eq!(text.lines().count(), 1, "one object on one line: {text}");
    serde_json::from_str(&text).expect("JSON output")
}

/// Runs a command that must fail with `code`, printing exactly one line on stderr that
/// contains `needle`, and nothing on stdout.
fn fails(dir: &Path, args: &[&str], code: i32, needle: &str) -> String {
    let out = tw(dir, args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in {err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
    assert_eq!(stdout(&out), "", "{args:?} printed to stdout");
    err
}

/// Runs a command that must fail with the tool error `code`: plain, one line that never names
/// the code or a tool; with `--json`, the object `{"error": {"code", "message"}}` on stderr.
fn fails_with(dir: &Path, args: &[&str], code: &str) -> String {
    // A malformed value exits 2 (a usage error), whoever finds it; other refusals exit 1.
    let exit = if code == "invalid_argument" { 2 } else { 1 };
    let err = fails(dir, args, exit, "error: ");
    one_line(&err);
    assert!(
        !err.contains(code) || code == "scope_exceeds_parent" && err.contains("exceeds"),
        "{args:?}: the plain message names no code: {err}"
    );
    assert!(
        !err.contains("list_tokens") && !err.contains("_token"),
        "{err}"
    );
    let out = tw(dir, &[&["--json"], args].concat());
    assert_eq!(out.status.code(), Some(exit));
    assert_eq!(stdout(&out), "");
    let json: Value = serde_json::from_str(stderr(&out).trim()).expect("a JSON error");
    assert_eq!(json["error"]["code"], code, "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    err
}

/// The ids a `--json token list` prints (one page object).
fn listed_ids(dir: &Path, args: &[&str]) -> Vec<String> {
    let page = ok_json(dir, &[&["token", "list"], args].concat());
    page["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn one_line(err: &str) {
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
}

fn create(dir: &Path, args: &[&str]) -> (String, String) {
    let issued = ok_json(dir, &[&["token", "create"], args].concat());
    let id = issued["id"].as_str().unwrap().to_owned();
    let secret = issued["token"].as_str().unwrap().to_owned();
    (id, secret)
}

#[test]
fn every_token_command_works_as_the_owner() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();

    assert_eq!(ok(dir, &["token", "list"]), "no tokens\n");

    // Human create: the record, then the secret once, then the warning.
    let text = ok(
        dir,
        &[
            "token",
            "create",
            "--name",
            "ci",
            "--buckets",
            "docs,wiki",
            "--tools",
            "list_*,whoami,create_token",
            "--ttl-seconds",
            "3600",
            "--metadata",
            r#"{"team":"infra"}"#,
        ],
    );
    let secret_line = text
        .lines()
        .find(|l| l.starts_with("secret: mcp_"))
        .expect("secret line");
    assert_eq!(
        text.matches("mcp_").count(),
        2,
        "masked + secret only:\n{text}"
    );
    assert!(text.contains("name:") && text.contains(" ci\n"), "{text}");
    assert!(
        text.contains("buckets:") && text.contains("docs,wiki"),
        "{text}"
    );
    assert!(text.contains(r#"{"team":"infra"}"#), "{text}");
    let last = text.lines().last().unwrap();
    assert!(last.contains("will not be shown again"), "{text}");
    let parent_secret = secret_line.trim_start_matches("secret: ").to_owned();
    let parent = listed_ids(dir, &[]).remove(0);

    // A child, made with --json: the result object of create_token.
    let (child, _) = create(
        dir,
        &["--name", "child", "--parent", &parent, "--tools", "whoami"],
    );
    let (grandchild, _) = create(dir, &["--name", "grandchild", "--parent", &child]);

    // list: a table with the columns of §7, newest first; --json: one record per line.
    let table = ok(dir, &["token", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    for column in [
        "ID",
        "NAME",
        "PARENT",
        "STATUS",
        "BUCKETS",
        "TOOLS",
        "EXPIRES",
        "LAST USED",
    ] {
        assert!(lines[0].contains(column), "{table}");
    }
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[1].starts_with(&grandchild) && lines[3].starts_with(&parent),
        "{table}"
    );
    let name_at = lines[0].find("NAME").unwrap();
    assert!(
        lines
            .iter()
            .skip(1)
            .all(|l| l[name_at..].starts_with(|c: char| c.is_alphabetic()))
    );
    assert!(
        lines[1].contains(&child),
        "the PARENT column shows lineage: {table}"
    );
    let ids = listed_ids(dir, &["--order", "asc"]);
    assert_eq!(ids, [parent.clone(), child.clone(), grandchild.clone()]);
    // --tree: lineage as indentation.
    let tree = ok(dir, &["token", "list", "--tree"]);
    let tree: Vec<&str> = tree.lines().collect();
    assert!(tree[0].starts_with(&parent), "{tree:?}");
    assert!(tree[1].starts_with(&format!("  {child}")), "{tree:?}");
    assert!(
        tree[2].starts_with(&format!("    {grandchild}")),
        "{tree:?}"
    );
    // --json: one page object that carries the cursor for the next page.
    let first = ok_json(dir, &["token", "list", "--limit", "1"]);
    assert_eq!(first["has_more"], true);
    let cursor = first["next_cursor"]
        .as_str()
        .expect("next_cursor")
        .to_owned();
    let second = listed_ids(dir, &["--limit", "1", "--cursor", &cursor]);
    assert_eq!(second, std::slice::from_ref(&child));
    let page = ok(dir, &["token", "list", "--limit", "1"]);
    assert!(
        page.contains("--cursor"),
        "a partial page says how to go on: {page}"
    );
    assert_eq!(
        ok(dir, &["token", "list", "--limit", "1", "--all"])
            .lines()
            .count(),
        4
    );
    assert_eq!(
        listed_ids(dir, &["--parent-id", &parent]),
        std::slice::from_ref(&child)
    );

    // get: key: value lines in groups, identity first.
    let got = ok(dir, &["token", "get", &child]);
    let got_lines: Vec<&str> = got.lines().collect();
    assert!(
        got_lines[0].starts_with("id:") && got_lines[0].ends_with(&child),
        "{got}"
    );
    assert!(
        got_lines[1].starts_with("name:") && got_lines[1].ends_with("child"),
        "{got}"
    );
    for group in [
        "scope:",
        "limits:",
        "status and lineage:",
        "times and usage:",
    ] {
        assert!(got_lines.contains(&group), "{group} in {got}");
    }
    assert!(
        got.lines()
            .any(|l| l.trim_start().starts_with("parent_id:") && l.ends_with(&parent)),
        "{got}"
    );
    assert!(
        !got.contains("(none)") && !got.contains("{}"),
        "one style for empty: {got}"
    );
    assert!(!got.contains("secret"), "{got}");

    // update, including clearing with `none`.
    let updated = ok_json(
        dir,
        &[
            "token",
            "update",
            &parent,
            "--max-uses",
            "50",
            "--description",
            "ci",
        ],
    );
    assert_eq!(updated["max_uses"], 50);
    assert_eq!(updated["description"], "ci");
    let cleared = ok_json(
        dir,
        &[
            "token",
            "update",
            &parent,
            "--max-uses",
            "none",
            "--clear-description",
        ],
    );
    assert_eq!(cleared["max_uses"], Value::Null);
    assert_eq!(cleared["description"], Value::Null);

    // scope: narrowing the parent narrows the child at once.
    let scoped = ok_json(
        dir,
        &["token", "scope", &parent, "--remove-buckets", "wiki"],
    );
    assert_eq!(scoped["buckets"], serde_json::json!(["docs"]));
    assert_eq!(
        ok_json(dir, &["token", "get", &child])["buckets"],
        serde_json::json!(["docs"])
    );
    let read_only = ok_json(dir, &["token", "scope", &child, "--read-only"]);
    assert_eq!(read_only["read_only"], true);

    // pause / resume: descendants follow in effect.
    assert_eq!(
        ok_json(dir, &["token", "pause", &parent])["status"],
        "paused"
    );
    assert_eq!(
        ok_json(dir, &["token", "get", &grandchild])["effective_status"],
        "paused_by_ancestor"
    );
    let resumed = ok(dir, &["token", "resume", &parent]);
    assert!(
        resumed.starts_with(&format!("resumed {parent} (ci); it is now active\n")),
        "{resumed}"
    );
    assert!(
        resumed
            .lines()
            .any(|l| l.trim_start().starts_with("status:") && l.ends_with("active"))
    );
    let paused = ok(dir, &["token", "pause", &child]);
    assert!(
        paused.starts_with(&format!("paused {child} (child); it is now paused\n")),
        "{paused}"
    );
    ok(dir, &["token", "resume", &child]);

    // rotate: a new secret, shown once.
    let rotated = ok(dir, &["token", "rotate", &parent, "--grace-seconds", "0"]);
    let new_secret = rotated
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .expect("new secret");
    assert!(new_secret.starts_with("mcp_") && new_secret != parent_secret);
    assert!(rotated.contains("will not be shown again"));

    // revoke cascades; delete removes the revoked record.
    let revoked = ok(dir, &["token", "revoke", &parent]);
    assert_eq!(
        revoked,
        format!("revoked {parent} (ci) and 2 descendant(s)\n")
    );
    assert_eq!(
        ok_json(dir, &["token", "get", &grandchild])["status"],
        "revoked"
    );
    assert_eq!(
        ok(dir, &["token", "delete", &grandchild]),
        format!(
            "deleted {grandchild} (grandchild) and its descendants (the audit log keeps what happened)\n"
        )
    );
    assert_eq!(listed_ids(dir, &[]).len(), 2);

    // audit: every action above, newest first, as a table or JSON lines.
    let audit = ok(dir, &["audit", "--all"]);
    for action in [
        "create", "update", "scope", "pause", "resume", "rotate", "revoke", "delete",
    ] {
        assert!(
            audit.contains(&format!(" {action} ")),
            "{action} missing from\n{audit}"
        );
    }
    assert!(!audit.contains(&parent_secret) && !audit.contains(new_secret));
    let events = ok_json(dir, &["audit", "--token-id", &parent, "--action", "scope"]);
    assert_eq!(events["events"].as_array().unwrap().len(), 1, "{events}");
    assert_eq!(events["has_more"], false);
}

#[test]
fn errors_are_one_line_and_change_nothing() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let (parent, _) = create(dir, &["--name", "p", "--buckets", "a", "--tools", "whoami"]);
    let before = ok(dir, &["--json", "token", "list"]);
    let audit_before = ok(dir, &["--json", "audit", "--all"]);

    let unknown = "tok_0000000000000000000000AA";
    let missing = fails_with(dir, &["token", "get", unknown], "not_found");
    assert_eq!(
        missing.trim_end(),
        format!("error: no token {unknown}"),
        "the owner reaches everything"
    );
    fails_with(dir, &["token", "revoke", unknown], "not_found");
    // The server's --max-depth holds for the owner's CLI too: a child of a root is depth 1.
    fails_with(
        dir,
        &[
            "token",
            "create",
            "--name",
            "c",
            "--parent",
            &parent,
            "--max-depth",
            "0",
        ],
        "limit_exceeded",
    );
    fails_with(dir, &["token", "get", "tok_nope"], "invalid_argument");
    fails_with(
        dir,
        &["token", "get", "../../etc/passwd"],
        "invalid_argument",
    );
    fails_with(
        dir,
        &[
            "token",
            "create",
            "--name",
            "c",
            "--parent",
            &parent,
            "--buckets",
            "b",
        ],
        "scope_exceeds_parent",
    );
    let escalation = fails(
        dir,
        &[
            "token",
            "create",
            "--name",
            "c",
            "--parent",
            &parent,
            "--buckets",
            "b",
            "--tools",
            "*",
        ],
        1,
        "exceeds parent",
    );
    one_line(&escalation);
    assert!(
        escalation.contains("buckets") && escalation.contains("tools"),
        "{escalation}"
    );
    fails_with(dir, &["token", "create", "--name", ""], "invalid_argument");
    fails_with(
        dir,
        &["token", "create", "--name", "x", "--ttl-seconds", "-5"],
        "invalid_argument",
    );
    fails_with(
        dir,
        &[
            "token",
            "create",
            "--name",
            "x",
            "--allowed-ips",
            "10.0.0.0/99",
        ],
        "invalid_argument",
    );
    fails_with(
        dir,
        &["token", "create", "--name", "x", "--tools", "**"],
        "invalid_argument",
    );
    fails_with(
        dir,
        &["token", "update", &parent, "--expires-at", "yesterday"],
        "invalid_argument",
    );
    fails_with(dir, &["audit", "--since", "not-a-time"], "invalid_argument");
    // Argument errors from the parser: one line too, exit code 2, nothing done.
    let usage_errors: [(&[&str], &str); 8] = [
        (
            &["token", "list", "--status", "sleepy"],
            "possible values: active, paused",
        ),
        (
            &["token", "create", "--name", "x", "--buckets", ""],
            "--buckets needs at least one value",
        ),
        (
            &["token", "scope", &parent, "--tools", ""],
            "--tools needs at least one value",
        ),
        (
            &[],
            "requires a subcommand but one was not provided [subcommands: serve, token",
        ),
        (
            &["token", "create", "--name", "x", "--metadata", "[1]"],
            "JSON object",
        ),
        (
            &["token", "update", &parent, "--max-uses", "lots"],
            "whole number",
        ),
        (&["token", "frobnicate"], "unrecognized subcommand"),
        (&["token", "create"], "--name"),
    ];
    for (args, needle) in usage_errors {
        let err = fails(dir, args, 2, needle);
        {
            one_line(&err);
            // With --json, usage errors are JSON too.
            let out = tw(dir, &[&["--json"], args].concat());
            let json: Value = serde_json::from_str(stderr(&out).trim()).expect("a JSON error");
            assert_eq!(json["error"]["code"], "usage", "{args:?}");
        }
    }
    // Bare `tokenwarden`: the help, on stderr, exit 2 (not the description as an error).
    let bare = Command::new(BIN).output().unwrap();
    assert_eq!(bare.status.code(), Some(2));
    let help = stderr(&bare);
    assert!(
        help.contains("Usage: tokenwarden") && help.contains("Commands:"),
        "{help}"
    );
    assert!(!help.starts_with("error"), "{help}");
    // `serve` without a transport is a usage error too.
    one_line(&fails(dir, &["serve"], 2, "nothing to serve"));

    assert_eq!(ok(dir, &["--json", "token", "list"]), before);
    assert_eq!(ok(dir, &["--json", "audit", "--all"]), audit_before);
}

#[test]
fn every_command_has_help_with_an_example() {
    let tmp = TempDir::new().unwrap();
    let commands: &[&[&str]] = &[
        &["serve"],
        &["token"],
        &["token", "list"],
        &["token", "get"],
        &["token", "create"],
        &["token", "update"],
        &["token", "scope"],
        &["token", "pause"],
        &["token", "resume"],
        &["token", "rotate"],
        &["token", "revoke"],
        &["token", "delete"],
        &["audit"],
        &["export"],
        &["import"],
    ];
    for command in commands {
        let help = ok(tmp.path(), &[*command, &["--help"]].concat());
        assert!(
            help.contains("Example: tokenwarden"),
            "{command:?} help lacks an example:\n{help}"
        );
        assert!(help.contains("Usage: tokenwarden"), "{help}");
    }
}

/// The admin socket a running server listens on.
fn socket(dir: &Path) -> std::path::PathBuf {
    dir.join("admin.sock")
}

/// The status a raw MCP `initialize` with this secret gets from the server.
async fn mcp_status(server: &Server, secret: &str) -> u16 {
    raw_initialize(&server.url(), &[("authorization", &bearer(secret))])
        .await
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_owner_s_commands_work_while_a_server_runs_and_print_what_they_print_offline() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let mut server = Server::start(dir, &[]);
    assert!(socket(dir).exists(), "the server listens on admin.sock");

    // Created through the server: the secret is printed once, and it works at once.
    let text = ok(dir, &["token", "create", "--name", "leaky", "--tools", "*"]);
    let secret = text
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .expect("the secret is printed")
        .to_owned();
    assert_eq!(text.matches(&secret).count(), 1, "printed once: {text}");
    assert!(text.contains("will not be shown again"), "{text}");
    let id = text
        .split_whitespace()
        .nth(1)
        .expect("created tok_… (name)")
        .to_owned();
    assert_eq!(
        mcp_status(&server, &secret).await,
        200,
        "the server knows it"
    );

    let listed = ok(dir, &["token", "list"]);
    assert!(listed.contains(&id) && listed.contains("leaky"), "{listed}");
    assert!(listed.contains("bootstrap admin"), "{listed}");

    // Revoked through the server: its very next request is refused.
    let revoked = ok(dir, &["token", "revoke", &id]);
    assert!(
        revoked.starts_with(&format!("revoked {id} (leaky)")),
        "{revoked}"
    );
    assert_eq!(
        mcp_status(&server, &secret).await,
        401,
        "revocation bites at once"
    );

    let audit = ok(dir, &["audit", "--token-id", &id]);
    assert!(
        audit.contains("create") && audit.contains("revoke"),
        "{audit}"
    );
    let oauth = ok(dir, &["oauth", "clients"]);
    assert_eq!(oauth, "no OAuth clients\n");
    let errors = fails(
        dir,
        &["token", "get", "tok_0000000000000000000000000"],
        2,
        "error: ",
    );
    one_line(&errors);
    let json_error = fails(
        dir,
        &["--json", "token", "get", "tok_0000000000000000000000000"],
        2,
        "\"code\":",
    );

    // What the same commands print while the server runs, to compare once it has stopped
    // (after the access log's write-behind, once a second, has written the refused request).
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    let commands: Vec<Vec<&str>> = vec![
        vec!["--json", "token", "get", &id],
        vec!["token", "get", &id],
        vec!["--json", "token", "list", "--all"],
        vec!["token", "list"],
        vec!["--json", "audit", "--all"],
        vec!["audit", "--token-id", &id],
        vec!["--json", "oauth", "grants"],
        vec!["export"],
    ];
    let running: Vec<String> = commands.iter().map(|args| ok(dir, args)).collect();
    let backup = dir.join("running.jsonl");
    let written = ok(dir, &["export", "--output", backup.to_str().unwrap()]);
    assert!(written.starts_with("exported "), "{written}");

    let refused = fails(
        dir,
        &["import", "--input", backup.to_str().unwrap()],
        2,
        "stop the server",
    );
    one_line(&refused);
    let refused = tw(
        dir,
        &["--json", "import", "--input", backup.to_str().unwrap()],
    );
    assert_eq!(refused.status.code(), Some(2));
    let refused: Value = serde_json::from_str(stderr(&refused).trim()).expect("a JSON error");
    assert_eq!(refused["error"]["code"], "held", "{refused}");

    server.stop();
    assert!(!socket(dir).exists(), "a clean stop removes the socket");
    for (args, printed) in commands.iter().zip(running) {
        assert_eq!(ok(dir, args), printed, "{args:?} prints the same offline");
    }
    assert_eq!(
        std::fs::read_to_string(&backup).unwrap(),
        ok(dir, &["export"]),
        "an export written through the server is the offline export"
    );
    assert_eq!(
        fails(
            dir,
            &["token", "get", "tok_0000000000000000000000000"],
            2,
            "error: "
        ),
        errors
    );
    assert_eq!(
        fails(
            dir,
            &["--json", "token", "get", "tok_0000000000000000000000000"],
            2,
            "\"code\":"
        ),
        json_error
    );
}

#[test]
fn a_killed_server_s_socket_never_blocks_the_command_line() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let mut server = Server::start(dir, &[]);
    let (id, _) = create(dir, &["--name", "survivor"]);
    server.kill();
    assert!(
        socket(dir).exists(),
        "SIGKILL leaves the socket file behind"
    );

    // The store opens, so the dead server's socket is never consulted.
    assert_eq!(listed_ids(dir, &[]).first(), Some(&id));
    let (offline, _) = create(dir, &["--name", "offline"]);

    // A new server replaces the stale file with its own socket.
    let mut server = Server::start(dir, &[]);
    assert_eq!(listed_ids(dir, &[])[..2], [offline, id]);
    server.stop();
    assert!(!socket(dir).exists());
}

#[test]
fn a_held_database_whose_socket_cannot_be_reached_is_refused_in_one_line() {
    let tmp = TempDir::new().unwrap();
    let server = Server::start(tmp.path(), &[]);
    std::fs::remove_file(socket(tmp.path())).unwrap();
    for args in [
        &["token", "list"][..],
        &["audit"],
        &["export"],
        &["oauth", "clients"],
        &["token", "create", "--name", "x"],
    ] {
        let err = fails(tmp.path(), args, 2, "held by a running tokenwarden server");
        one_line(&err);
        assert!(
            err.contains(&server.addr),
            "names the holder's address: {err}"
        );
        assert!(err.contains("pid "), "names the holder's pid: {err}");
        assert!(
            err.contains("admin socket"),
            "says the socket failed: {err}"
        );
    }
    let out = tw(tmp.path(), &["--json", "token", "list"]);
    assert_eq!(out.status.code(), Some(2));
    let err: Value = serde_json::from_str(stderr(&out).trim()).expect("a JSON error");
    assert_eq!(err["error"]["code"], "held", "{err}");
    drop(server);
}

/// Sends request lines over the admin socket and reads one answer line per request (none
/// after the connection ends).
fn speak(path: &Path, lines: &[Vec<u8>]) -> Vec<Value> {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::os::unix::net::UnixStream::connect(path).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut answers = Vec::new();
    for line in lines {
        if writer.write_all(line).is_err() {
            break;
        }
        let mut answer = String::new();
        match reader.read_line(&mut answer) {
            Ok(0) | Err(_) => break,
            Ok(_) => answers.push(serde_json::from_str(&answer).expect("an answer is JSON")),
        }
    }
    answers
}

/// Not a test of its own: run as another user by `the_admin_socket_serves_only_its_owner`,
/// it connects to the socket named by `TOKENWARDEN_TEST_PROBE` and prints the answer to one
/// `whoami` request.
#[test]
fn admin_socket_probe() {
    if let Some(path) = std::env::var_os("TOKENWARDEN_TEST_PROBE") {
        let answers = speak(Path::new(&path), &[b"{\"tool\":\"whoami\"}\n".to_vec()]);
        println!("probe answered: {}", Value::from(answers));
    }
}

#[test]
fn the_admin_socket_serves_only_its_owner_and_answers_bad_requests_with_errors() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    // Under a permissive umask, the socket is still the owner's only.
    let server = Server::start_with_umask(dir, "000", &[]);
    let mode = std::fs::metadata(socket(dir)).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin.sock is 0600: {mode:o}");

    // Malformed requests get error answers on the same connection, which stays usable.
    let answers = speak(
        &socket(dir),
        &[
            b"not json\n".to_vec(),
            b"{\"tool\":\"whoami\",\"surprise\":1}\n".to_vec(),
            b"{\"tool\":\"get_token\",\"command\":\"export\"}\n".to_vec(),
            b"{\"tool\":\"get_token\",\"arguments\":{\"id\":7}}\n".to_vec(),
            b"{\"tool\":\"whoami\",\"environment\":\"prod\"}\n".to_vec(),
            b"{\"tool\":\"whoami\"}\n".to_vec(),
        ],
    );
    let codes: Vec<&str> = answers
        .iter()
        .map(|a| a["error"]["code"].as_str().unwrap_or("none"))
        .collect();
    assert_eq!(
        codes,
        [
            "invalid_argument",
            "invalid_argument",
            "invalid_argument",
            "invalid_argument",
            "usage",
            "none"
        ],
        "{answers:?}"
    );
    assert_eq!(answers[5]["result"]["owner"], true, "{answers:?}");

    // A line past 1 MiB is answered with an error and the connection closed.
    let mut long = b"{\"tool\":\"whoami\",\"arguments\":{\"x\":\"".to_vec();
    long.resize(1024 * 1024 + 10, b'a');
    long.push(b'\n');
    let answers = speak(&socket(dir), &[long, b"{\"tool\":\"whoami\"}\n".to_vec()]);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0]["error"]["code"], "invalid_argument");
    assert!(ok(dir, &["token", "list"]).contains("bootstrap admin"));

    // Another user, let through by the file modes, is refused by the server itself.
    // SAFETY: geteuid(2) cannot fail and touches no memory of ours.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: the other-user check needs root to run a probe as nobody");
        return;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(socket(dir), std::fs::Permissions::from_mode(0o666)).unwrap();
    let probe = |uid: u32| {
        use std::os::unix::process::CommandExt;
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "admin_socket_probe",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TOKENWARDEN_TEST_PROBE", socket(dir))
            .uid(uid)
            .gid(uid)
            .output()
            .expect("run the probe");
        let printed = stdout(&out);
        let answer = printed
            .lines()
            .find_map(|l| l.split("probe answered: ").nth(1))
            .unwrap_or_else(|| panic!("the probe printed no answer: {printed}{}", stderr(&out)));
        serde_json::from_str::<Value>(answer).unwrap()
    };
    let nobody = probe(65534);
    assert_eq!(nobody[0]["error"]["code"], "forbidden", "{nobody}");
    assert_eq!(nobody.as_array().map(Vec::len), Some(1), "{nobody}");
    assert_eq!(probe(0)[0]["result"]["owner"], true, "the owner is served");
    drop(server);
}

#[tokio::test]
async fn a_restored_backup_keeps_old_secrets_working_and_revoked_ones_dead() {
    let tmp = TempDir::new().unwrap();
    let (source, restored, backup) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("backup.jsonl"),
    );
    let (live, live_secret) = create(&source, &["--name", "live"]);
    let (dead, dead_secret) = create(&source, &["--name", "dead"]);
    let (_, child_secret) = create(&source, &["--name", "child", "--parent", &dead]);
    ok(&source, &["token", "revoke", &dead]);
    ok(&source, &["token", "rotate", &live, "--grace-seconds", "0"]);
    let (_, fresh_secret) = create(&source, &["--name", "fresh"]);

    let exported = ok(&source, &["export", "--output", backup.to_str().unwrap()]);
    assert!(exported.starts_with("exported "), "{exported}");
    let text = std::fs::read_to_string(&backup).unwrap();
    for secret in [&live_secret, &dead_secret, &child_secret, &fresh_secret] {
        assert!(!text.contains(secret.as_str()), "a backup holds no secret");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&backup).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "backup readable by its owner only");
    }

    ok(&restored, &["import", "--input", backup.to_str().unwrap()]);
    assert_eq!(
        ok(&restored, &["--json", "token", "list", "--all"]),
        ok(&source, &["--json", "token", "list", "--all"]),
        "every record comes back as it was"
    );
    assert_eq!(
        ok(&restored, &["--json", "audit", "--action", "revoke"]),
        ok(&source, &["--json", "audit", "--action", "revoke"]),
        "the audit log comes back"
    );

    let server = Server::start(&restored, &[]);
    assert!(
        server.admin_token.is_none(),
        "a restored store is not empty: no bootstrap token"
    );
    let status = |secret: String| {
        let url = server.url();
        async move {
            raw_initialize(&url, &[("authorization", &bearer(&secret))])
                .await
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        status(fresh_secret).await,
        200,
        "a secret issued before the export works"
    );
    assert_eq!(
        status(dead_secret).await,
        401,
        "a revoked token stays revoked"
    );
    assert_eq!(status(child_secret).await, 401, "its descendants too");
    assert_eq!(
        status(live_secret).await,
        401,
        "a rotated-out secret stays rotated out"
    );
}

#[test]
fn import_refuses_bad_files_and_non_empty_stores_without_writing() {
    let tmp = TempDir::new().unwrap();
    let (source, target, backup) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("backup.jsonl"),
    );
    let (parent, _) = create(&source, &["--name", "p", "--buckets", "a,b"]);
    let parent_only = tmp.path().join("parent-only.jsonl");
    ok(&source, &["export", "-o", parent_only.to_str().unwrap()]);
    create(
        &source,
        &["--name", "c", "--parent", &parent, "--buckets", "b"],
    );
    ok(&source, &["export", "-o", backup.to_str().unwrap()]);
    let text = std::fs::read_to_string(&backup).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let write = |name: &str, lines: &[&str]| {
        let path = tmp.path().join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    };

    // A corrupted line (a flipped hex digit in a record makes it undecodable; a cut line is
    // not JSON), and a file missing its last line: each names the line, and nothing is written.
    let mut corrupt = lines.clone();
    let cut = &lines[4][..lines[4].len() / 2];
    corrupt[4] = cut;
    let corrupt = write("corrupt.jsonl", &corrupt);
    let err = fails(
        &target,
        &["import", "-i", corrupt.to_str().unwrap()],
        1,
        "line 5:",
    );
    one_line(&err);
    let truncated = write("truncated.jsonl", &lines[..lines.len() - 1]);
    let err = fails(
        &target,
        &["import", "-i", truncated.to_str().unwrap()],
        1,
        &format!("line {}:", lines.len()),
    );
    assert!(err.contains("truncated"), "{err}");
    let mut garbled = lines.clone();
    let record_line = lines
        .iter()
        .position(|l| l.starts_with(r#"{"k":"74"#))
        .expect("a record line");
    let bad_record = lines[record_line].replacen(r#""v":""#, r#""v":"ff"#, 1);
    garbled[record_line] = &bad_record;
    let garbled = write("garbled.jsonl", &garbled);
    fails(
        &target,
        &["import", "-i", garbled.to_str().unwrap()],
        1,
        &format!("line {}:", record_line + 1),
    );
    // A spliced file: the parent's record removed and the count fixed to match.
    let parent_key: String = parent.bytes().map(|b| format!("{b:02x}")).collect();
    let spliced: Vec<String> = lines
        .iter()
        .filter(|l| !l.starts_with(&format!(r#"{{"k":"74{parent_key}""#)))
        .map(|l| l.to_string())
        .collect();
    assert_eq!(
        spliced.len(),
        lines.len() - 1,
        "the parent's record line was found"
    );
    let header = format!(
        r#"{{"format":"tokenwarden-export","version":1,"entries":{}}}"#,
        spliced.len() - 1
    );
    let mut spliced_lines: Vec<&str> = spliced.iter().map(String::as_str).collect();
    spliced_lines[0] = &header;
    let spliced = write("spliced.jsonl", &spliced_lines);
    let err = fails(
        &target,
        &["import", "-i", spliced.to_str().unwrap()],
        1,
        "inconsistent backup",
    );
    assert!(err.contains(&parent), "{err}");
    fails(
        &target,
        &["import", "-i", tmp.path().join("missing").to_str().unwrap()],
        1,
        "cannot read",
    );
    assert_eq!(ok(&target, &["token", "list"]), "no tokens\n");
    assert_eq!(
        ok(&target, &["audit"]),
        "no audit events\n",
        "nothing half-imported"
    );

    // A store that is not empty is refused unless --merge, which adds only what it lacks.
    create(&target, &["--name", "already here"]);
    fails(
        &target,
        &["import", "-i", backup.to_str().unwrap()],
        1,
        "--merge",
    );
    assert_eq!(listed_ids(&target, &[]).len(), 1);
    let merged = ok_json(
        &target,
        &["import", "-i", backup.to_str().unwrap(), "--merge"],
    );
    assert!(merged["entries_written"].as_u64().unwrap() > 0, "{merged}");
    assert_eq!(listed_ids(&target, &[]).len(), 3);
    let again = ok_json(
        &target,
        &["import", "-i", backup.to_str().unwrap(), "--merge"],
    );
    assert_eq!(again["entries_written"], 0, "merging twice adds nothing");

    // A merged child must still fit its parent as the store holds it now: here the parent
    // was narrowed since, so the merge is refused whole.
    let third = tmp.path().join("c");
    ok(&third, &["import", "-i", parent_only.to_str().unwrap()]);
    ok(&third, &["token", "scope", &parent, "--buckets", "a"]);
    let err = fails(
        &third,
        &["import", "-i", backup.to_str().unwrap(), "--merge"],
        1,
        "exceeds its parent",
    );
    assert!(err.contains("buckets"), "{err}");
    assert_eq!(listed_ids(&third, &[]).len(), 1, "nothing merged");

    // A deleted token is never brought back by a merge, nor anything under it.
    let fourth = tmp.path().join("d");
    ok(&fourth, &["import", "-i", backup.to_str().unwrap()]);
    ok(&fourth, &["token", "delete", &parent]);
    let merged = ok_json(
        &fourth,
        &["import", "-i", backup.to_str().unwrap(), "--merge"],
    );
    assert_eq!(merged["entries_written"], 0, "{merged}");
    assert_eq!(ok(&fourth, &["token", "list"]), "no tokens\n");
}

/// Issue 31's command line: `audit --action` takes only the actions the log records (the OAuth
/// ones included), `--read-only` has one shape on `create` and `scope`, every malformed value
/// exits 2 whether clap or the tool's validation finds it, and typos get clap's suggestion,
/// all in one line that changes nothing.
#[test]
fn malformed_values_exit_2_with_suggestions_and_flags_have_one_shape() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let missing = dir.join("never-created");
    for (args, needle) in [
        (
            &["audit", "--action", "revokee"][..],
            "tip: a similar value exists: 'revoke'",
        ),
        (
            &["serve", "--htp", "127.0.0.1:0"],
            "tip: a similar argument exists: '--http'",
        ),
        (
            &["token", "create", "--name", "x", "--ttl", "5"],
            "'--ttl-seconds'",
        ),
        (
            &["token", "create", "--name", "x", "--ttl-seconds", "abc"],
            "invalid value 'abc'",
        ),
        (
            &["token", "scope", "tok_x", "--read-only", "true"],
            "unexpected argument 'true'",
        ),
        (
            &["token", "scope", "tok_x", "--read-only", "--no-read-only"],
            "cannot be used with",
        ),
    ] {
        let out = tw(&missing, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        one_line(&err);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!missing.exists(), "{args:?} created the data directory");
    }
    let out = tw(&missing, &["audit", "--help"]);
    for action in [
        "oauth_register",
        "oauth_approve",
        "oauth_token",
        "oauth_refresh",
        "oauth_revoke",
    ] {
        assert!(stdout(&out).contains(action), "--help names {action}");
    }

    // Values the tool's own validation refuses exit 2 as well, and change nothing.
    let root = ok_json(dir, &["token", "create", "--name", "root"]);
    for (args, needle) in [
        (
            &["token", "create", "--name", "x", "--ttl-seconds", "-5"][..],
            "ttl_seconds must be",
        ),
        (&["audit", "--since", "yesterday"], "invalid timestamp"),
        (&["token", "get", "tok_nope"], "invalid token id"),
    ] {
        let out = tw(dir, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        one_line(&err);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert_eq!(
        ok_json(dir, &["token", "list"])["records"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // An OAuth action is a valid filter; the same switch sets read-only on create and scope.
    let id = root["id"].as_str().unwrap();
    assert_eq!(
        ok_json(dir, &["audit", "--action", "oauth_revoke"])["events"],
        json!([])
    );
    let child = ok_json(
        dir,
        &[
            "token",
            "create",
            "--name",
            "c",
            "--parent",
            id,
            "--read-only",
        ],
    );
    assert_eq!(child["read_only"], true);
    assert_eq!(
        ok_json(dir, &["token", "scope", id, "--read-only"])["read_only"],
        true
    );
    assert_eq!(
        ok_json(dir, &["token", "scope", id, "--no-read-only"])["read_only"],
        false
    );
}
