//! `--server URL` (SPEC §12): the owner's commands against a running server through its REST
//! API, as a token, run as the real binary. They print what the same commands print against
//! a local store, fail as the tools fail, and never show the secret they were given.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{BIN, Server, bearer, raw_initialize};
use serde_json::{Value, json};
use tempfile::TempDir;

/// Where the token comes from.
enum Token<'a> {
    Flag(&'a str),
    Variable(&'a str),
    Both { flag: &'a str, variable: &'a str },
    Missing,
}

/// Runs `tokenwarden --server URL ARGS…` with the token as given. `--data-dir` names a
/// directory that does not exist: a remote command must never open (or create) a store.
fn remote(url: &str, token: Token, args: &[&str]) -> Output {
    let nowhere = std::env::temp_dir().join("tokenwarden-remote-tests-no-such-dir");
    let mut cmd = Command::new(BIN);
    cmd.arg("--data-dir")
        .arg(&nowhere)
        .args(["--server", url])
        .env_remove("RUST_LOG")
        .env_remove("TOKENWARDEN_DATA_DIR")
        .env_remove("TOKENWARDEN_TOKEN");
    match token {
        Token::Flag(secret) => {
            cmd.args(["--token", secret]);
        }
        Token::Variable(secret) => {
            cmd.env("TOKENWARDEN_TOKEN", secret);
        }
        Token::Both { flag, variable } => {
            cmd.args(["--token", flag])
                .env("TOKENWARDEN_TOKEN", variable);
        }
        Token::Missing => {}
    }
    let out = cmd.args(args).output().expect("run tokenwarden");
    assert!(!nowhere.exists(), "{args:?} created a local data directory");
    out
}

/// Runs `tokenwarden --data-dir DIR ARGS…` against a local store.
fn local(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("TOKENWARDEN_DATA_DIR")
        .env_remove("TOKENWARDEN_TOKEN")
        .output()
        .expect("run tokenwarden")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The output of a command that must succeed, silently on stderr.
fn succeeded(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(stderr(&out), "", "{what} wrote to stderr");
    stdout(&out)
}

/// The one line on stderr of a command that must fail with exit code 1 and print nothing.
fn failed(out: Output, what: &str) -> String {
    failed_with(out, 1, what)
}

/// The same for a usage error: exit code 2.
fn misused(out: Output, what: &str) -> String {
    failed_with(out, 2, what)
}

fn failed_with(out: Output, exit_code: i32, what: &str) -> String {
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(exit_code), "{what}: {err}");
    assert_eq!(stdout(&out), "", "{what} printed to stdout");
    assert_eq!(err.lines().count(), 1, "{what}: one line: {err}");
    assert!(err.starts_with("error: "), "{what}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// `--json` and then `args`.
fn with_json<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [&["--json"][..], args].concat()
}

/// The `{"error": {"code", "message"}}` a failing `--json` command prints on stderr.
fn json_error(out: Output, exit_code: i32, what: &str) -> Value {
    assert_eq!(
        out.status.code(),
        Some(exit_code),
        "{what}: {}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "", "{what} printed to stdout");
    serde_json::from_str(stderr(&out).trim()).expect("a JSON error")
}

fn parse(text: &str) -> Value {
    assert_eq!(text.lines().count(), 1, "one object on one line: {text}");
    serde_json::from_str(text).expect("JSON output")
}

/// The status a raw MCP `initialize` with this secret gets from the server.
async fn mcp_status(server: &Server, secret: &str) -> u16 {
    raw_initialize(&server.url(), &[("authorization", &bearer(secret))])
        .await
        .status()
        .as_u16()
}

fn start() -> (TempDir, Server, String) {
    let tmp = TempDir::new().unwrap();
    let server = Server::start(tmp.path(), &[]);
    let url = format!("http://{}", server.addr);
    (tmp, server, url)
}

#[tokio::test]
async fn a_remote_server_is_managed_as_the_token_and_prints_what_the_store_prints() {
    let (tmp, mut server, url) = start();
    let admin = server.admin().to_owned();
    let as_admin = |args: &[&str]| {
        let what = format!("{args:?}");
        succeeded(remote(&url, Token::Flag(&admin), args), &what)
    };

    // Created remotely: the record, the secret once, and the server knows it at once.
    let text = as_admin(&["token", "create", "--name", "remote-ci", "--tools", "*"]);
    let secret = text
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .expect("the secret is printed")
        .to_owned();
    assert_eq!(text.matches(&secret).count(), 1, "printed once: {text}");
    assert!(text.contains("will not be shown again"), "{text}");
    let id = text
        .strip_prefix("created ")
        .and_then(|t| t.split_whitespace().next())
        .expect("created tok_… (name)")
        .to_owned();
    assert_eq!(mcp_status(&server, &secret).await, 200);

    // The URL as the server prints it (with /mcp) or with a trailing slash is the same server.
    for base in [format!("{url}/mcp"), format!("{url}/")] {
        let listed = succeeded(
            remote(&base, Token::Flag(&admin), &["token", "list"]),
            &base,
        );
        assert!(
            listed.contains(&id) && listed.contains("remote-ci"),
            "{listed}"
        );
        assert!(listed.contains("bootstrap admin"), "{listed}");
    }

    // --all follows next_cursor across pages of one.
    as_admin(&["token", "create", "--name", "third"]);
    let page = parse(&as_admin(&["--json", "token", "list", "--limit", "1"]));
    assert_eq!(page["records"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["has_more"], true, "{page}");
    let all = parse(&as_admin(&[
        "--json", "token", "list", "--limit", "1", "--all",
    ]));
    assert_eq!(all["records"].as_array().unwrap().len(), 3, "{all}");
    assert_eq!(all["has_more"], false, "{all}");

    // Changes go through PATCH and the action endpoints.
    let scoped = as_admin(&["token", "scope", &id, "--tools", "whoami"]);
    assert!(
        scoped.starts_with(&format!("scoped {id} (remote-ci); it is now active")),
        "{scoped}"
    );
    let updated = parse(&as_admin(&[
        "--json",
        "token",
        "update",
        &id,
        "--description",
        "from afar",
    ]));
    assert_eq!(updated["description"], "from afar", "{updated}");
    assert_eq!(updated["tools"], json!(["whoami"]), "{updated}");

    // Revoked remotely: its very next request is refused.
    let revoked = as_admin(&["token", "revoke", &id]);
    assert!(
        revoked.starts_with(&format!("revoked {id} (remote-ci) and 0 descendant(s)")),
        "{revoked}"
    );
    assert_eq!(mcp_status(&server, &secret).await, 401, "revocation bites");

    let audit = as_admin(&["audit", "--token-id", &id]);
    for action in ["create", "scope", "update", "revoke"] {
        assert!(audit.contains(action), "{action} in {audit}");
    }
    assert_eq!(as_admin(&["oauth", "clients"]), "no OAuth clients\n");
    assert_eq!(as_admin(&["oauth", "grants"]), "no OAuth grants\n");

    // What the commands print remotely, to compare with the store once the server has stopped.
    let commands: Vec<Vec<&str>> = vec![
        vec!["--json", "token", "get", &id],
        vec!["token", "get", &id],
        vec!["audit", "--token-id", &id],
    ];
    let printed: Vec<String> = commands.iter().map(|args| as_admin(args)).collect();
    // Errors are the tool's own, as this token sees it ("within your reach"), with the same
    // code and exit code as offline.
    let missing = ["token", "get", "tok_000000000000000000000000"];
    let not_found = failed(remote(&url, Token::Flag(&admin), &missing), "get");
    assert_eq!(
        not_found,
        "error: no token tok_000000000000000000000000 within your reach\n"
    );
    let not_found_json = json_error(
        remote(&url, Token::Flag(&admin), &with_json(&missing)),
        1,
        "--json get",
    );
    assert_eq!(
        not_found_json,
        json!({"error": {"code": "not_found", "message": not_found[7..].trim_end()}})
    );
    let no_client = ["oauth", "remove-client", "twc_nobody"];
    let no_client_error = failed(remote(&url, Token::Flag(&admin), &no_client), "remove");

    server.stop();
    let dir = tmp.path();
    let offline = parse(&succeeded(local(dir, commands[0].as_slice()), "offline"));
    assert_eq!(offline, parse(&printed[0]), "--json token get as offline");
    for (args, printed) in commands.iter().zip(&printed).skip(1) {
        assert_eq!(
            &succeeded(local(dir, args), "offline"),
            printed,
            "{args:?} prints the same offline"
        );
    }
    failed(local(dir, &missing), "offline get");
    let offline_error = json_error(local(dir, &with_json(&missing)), 1, "get");
    assert_eq!(
        offline_error["error"]["code"],
        not_found_json["error"]["code"]
    );
    assert_eq!(failed(local(dir, &no_client), "offline"), no_client_error);
}

#[tokio::test]
async fn a_token_refused_by_its_allowlist_gets_the_tool_s_error_in_one_line() {
    let (_tmp, server, url) = start();
    let admin = server.admin().to_owned();
    let created = succeeded(
        remote(
            &url,
            Token::Flag(&admin),
            &[
                "--json",
                "token",
                "create",
                "--name",
                "reader",
                "--tools",
                "list_*,whoami",
            ],
        ),
        "create",
    );
    let reader = parse(&created)["token"].as_str().unwrap().to_owned();

    // What the tool itself answers this token.
    let client = common::connect_http(&server.url(), &reader).await;
    let message = common::err(
        &client,
        "create_token",
        json!({"name": "more"}),
        "forbidden",
    )
    .await;
    client.cancel().await.unwrap();

    let create = ["token", "create", "--name", "more"];
    let err = failed(remote(&url, Token::Flag(&reader), &create), "create");
    assert_eq!(err, format!("error: {message}\n"));
    let json = json_error(
        remote(&url, Token::Flag(&reader), &with_json(&create)),
        1,
        "--json create",
    );
    assert_eq!(
        json,
        json!({"error": {"code": "forbidden", "message": message}})
    );
    // What it may do, it does.
    let listed = succeeded(
        remote(&url, Token::Flag(&reader), &["token", "list"]),
        "list",
    );
    assert!(listed.contains("reader"), "{listed}");
}

#[tokio::test]
async fn a_bad_missing_or_empty_token_is_one_line_that_never_shows_the_secret() {
    let (_tmp, server, url) = start();
    let admin = server.admin().to_owned();
    let list = ["token", "list"];

    // A secret with a broken checksum, a revoked one, and something that is no secret at all.
    let mut broken = admin.clone();
    let last = broken.pop().unwrap();
    broken.push(if last == 'a' { 'b' } else { 'a' });
    let issued = succeeded(
        remote(
            &url,
            Token::Flag(&admin),
            &["--json", "token", "create", "--name", "gone"],
        ),
        "create",
    );
    let issued = parse(&issued);
    let gone = issued["token"].as_str().unwrap().to_owned();
    succeeded(
        remote(
            &url,
            Token::Flag(&admin),
            &["token", "revoke", issued["id"].as_str().unwrap()],
        ),
        "revoke",
    );
    for secret in [broken.as_str(), gone.as_str(), "hunter2-is-not-a-token"] {
        let err = failed(remote(&url, Token::Flag(secret), &list), secret);
        assert!(!err.contains(secret), "the secret is shown: {err}");
        assert!(
            err.contains(&format!("the server at {url}/ refused the token")),
            "{err}"
        );
        let json = json_error(
            remote(&url, Token::Variable(secret), &with_json(&list)),
            1,
            secret,
        );
        assert_eq!(json["error"]["code"], "unauthorized", "{json}");
        assert!(!json.to_string().contains(secret), "{json}");
    }

    let missing = misused(remote(&url, Token::Missing, &list), "missing");
    assert!(
        missing.contains("--token") && missing.contains("TOKENWARDEN_TOKEN"),
        "{missing}"
    );
    for empty in [Token::Flag(""), Token::Variable(""), Token::Flag("  ")] {
        let err = misused(remote(&url, empty, &list), "empty");
        assert!(err.contains("empty"), "{err}");
    }
    let json = json_error(
        remote(&url, Token::Missing, &with_json(&list)),
        2,
        "--json missing",
    );
    assert_eq!(json["error"]["code"], "usage", "{json}");
}

#[test]
fn tokenwarden_token_works_instead_of_the_flag_which_wins_over_it() {
    let (_tmp, server, url) = start();
    let admin = server.admin();
    let listed = succeeded(
        remote(&url, Token::Variable(admin), &["token", "list"]),
        "env",
    );
    assert!(listed.contains("bootstrap admin"), "{listed}");
    let both = Token::Both {
        flag: admin,
        variable: "mcp_not-this-one",
    };
    let listed = succeeded(remote(&url, both, &["token", "list"]), "both");
    assert!(listed.contains("bootstrap admin"), "{listed}");
    let both = Token::Both {
        flag: "mcp_not-this-one",
        variable: admin,
    };
    failed(remote(&url, both, &["token", "list"]), "the flag wins");
}

#[test]
fn a_server_that_is_not_listening_is_named_in_one_line() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let token = "mcp_whatever-it-is";
    for args in [&["token", "list"][..], &["audit"], &["oauth", "clients"]] {
        let err = failed(remote(&url, Token::Flag(token), args), "down");
        assert!(
            err.starts_with(&format!("error: cannot reach the server at {url}/: ")),
            "{err}"
        );
        assert!(!err.contains(token), "{err}");
    }
    let json = json_error(
        remote(
            &url,
            Token::Flag(token),
            &["--json", "token", "get", "tok_x"],
        ),
        1,
        "--json down",
    );
    assert_eq!(json["error"]["code"], "unreachable", "{json}");
}

#[test]
fn commands_that_need_the_data_directory_refuse_server_and_bad_urls_are_usage_errors() {
    let url = "http://127.0.0.1:9";
    let token = Token::Flag("mcp_whatever-it-is");
    for (command, args) in [
        ("export", &["export"][..]),
        ("import", &["import", "--input", "backup.jsonl"]),
        ("serve", &["serve", "--http", "127.0.0.1:0"]),
        ("upstreams", &["upstreams", "--upstreams", "upstreams.json"]),
    ] {
        let token = Token::Flag("mcp_whatever-it-is");
        let err = misused(remote(url, token, args), command);
        assert_eq!(
            err,
            format!(
                "error: {command} works only on a local data directory: run it without --server, \
                 where the server's data directory is\n"
            )
        );
    }
    for bad in [
        "127.0.0.1:8787",
        "ftp://127.0.0.1",
        "https://127.0.0.1:8787",
    ] {
        let token = Token::Flag("mcp_whatever-it-is");
        let err = misused(remote(bad, token, &["token", "list"]), bad);
        assert!(
            err.starts_with(&format!("error: --server {bad}: ")),
            "{err}"
        );
    }
    let err = misused(
        remote("http://me:hunter2@127.0.0.1:9", token, &["token", "list"]),
        "credentials",
    );
    assert!(!err.contains("hunter2"), "{err}");

    // --token without --server would act as the owner with a secret nobody checks.
    let tmp = TempDir::new().unwrap();
    let err = misused(
        local(
            tmp.path(),
            &["--token", "mcp_whatever-it-is", "token", "list"],
        ),
        "token alone",
    );
    assert!(err.contains("--token goes with --server"), "{err}");
}
