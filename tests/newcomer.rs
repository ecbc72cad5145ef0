//! A newcomer's first hour, through the real binary: the README's quick start works as printed
//! (the banner's recovery command included), a store without an admin says how to get one, and
//! commands that only read never create a store where a typo pointed them.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use rmcp::ServiceExt;
use rmcp::service::ClientServiceExt;
use serde_json::{Value, json};
use tempfile::TempDir;

fn tw(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("TOKENWARDEN_TOKEN")
        .env_remove("TOKENWARDEN_DATA_DIR")
        .output()
        .expect("run tokenwarden")
}

/// The command a message tells the person to run, e.g. after "to mint one, run:".
fn command_after(text: &str, marker: &str) -> String {
    let rest = &text[text
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} in {text}"))
        + marker.len()..];
    rest.trim_start().lines().next().unwrap().trim().to_owned()
}

/// Runs a printed command exactly as a person would paste it into a POSIX shell.
fn run_as_printed(command: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(command)
        .env_remove("TOKENWARDEN_DATA_DIR")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_works_as_printed_including_the_recovery_command() {
    let tmp = TempDir::new().unwrap();
    // A data directory with a space: the printed command must still work when pasted.
    let dir = tmp.path().join("my tokens");

    // Start: the banner shows the admin secret once and how to get another.
    let mut server = Server::start(&dir, &[]);
    let banner = server.stderr();
    let admin = server.admin().to_owned();
    let recovery = command_after(&banner, "If you lose it, run (server up or not):");
    assert!(recovery.contains(BIN), "the binary as started: {recovery}");
    assert!(recovery.contains("'"), "the directory quoted: {recovery}");
    let client = connect_http(&server.url(), &admin).await;
    let me = ok(&client, "whoami", json!({})).await;
    assert_eq!(me["admin"], true);
    drop(client);

    // The recovery command, pasted as printed while the server runs (it reaches the server
    // through its admin socket), mints a working admin token.
    let minted = run_as_printed(&recovery);
    let out = String::from_utf8_lossy(&minted.stdout);
    assert!(
        minted.status.success(),
        "{recovery}: {out}{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .expect("the new secret")
        .to_owned();
    let client = connect_http(&server.url(), &secret).await;
    assert_eq!(ok(&client, "whoami", json!({})).await["admin"], true);
    drop(client);

    // Stop (SIGTERM): a clean exit.
    server.stop();

    // A token command on the same store.
    let listed = tw(&dir, &["token", "list"]);
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success());
    assert_eq!(table.lines().count(), 3, "header + two admins: {table}");

    // Restart: no banner again, no warning (an admin exists), the new secret works.
    let mut server = Server::start(&dir, &[]);
    assert!(server.admin_token.is_none(), "{}", server.stderr());
    assert!(
        !server.stderr().contains("no active admin token"),
        "{}",
        server.stderr()
    );
    let client = connect_http(&server.url(), &secret).await;
    ok(&client, "whoami", json!({})).await;
    // Revoke every admin token (itself last), then restart: the server says in one line how
    // to get one.
    let me = ok(&client, "whoami", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let others: Vec<String> = ok(&client, "list_tokens", json!({})).await["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .filter(|id| *id != me)
        .collect();
    for id in others {
        ok(&client, "revoke_token", json!({"id": id})).await;
    }
    ok(&client, "revoke_token", json!({"id": me})).await;
    drop(client);
    server.stop();
    let server = Server::start(&dir, &[]);
    let log = server.stderr();
    let warning: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("no active admin token"))
        .collect();
    assert_eq!(warning.len(), 1, "{log}");
    drop(server);
    let again = command_after(warning[0], "to mint one, run:");
    assert_eq!(again, recovery);
}

#[test]
fn read_only_commands_never_create_a_store() {
    let tmp = TempDir::new().unwrap();
    let typo = tmp.path().join("tokns");
    for args in [
        &["token", "list"][..],
        &["token", "get", "tok_0000000000000000000000AA"],
        &["audit"],
        &["export"],
    ] {
        let out = tw(&typo, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("no data directory at") && err.contains("tokns"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }
    // A file where the directory should be.
    let file = tmp.path().join("passwd");
    std::fs::write(&file, "root:x:0:0\n").unwrap();
    let out = tw(&file, &["token", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a directory"), "{err}");
    assert!(!err.contains("corrupt"), "{err}");
    // A command that writes creates the store (that is how the owner starts one).
    let out = tw(&typo, &["token", "create", "--name", "first"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(typo.is_dir());
}

/// The fenced blocks (language, text with the list item's indentation removed) of `text`.
fn fenced_blocks(text: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, usize, String)> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start();
        match &mut open {
            None if trimmed.starts_with("```") => {
                open = Some((trimmed[3..].trim().to_owned(), indent, String::new()));
            }
            None => {}
            Some(_) if trimmed.starts_with("```") => {
                let (lang, _, body) = open.take().unwrap();
                blocks.push((lang, body));
            }
            Some((_, cut, body)) => {
                body.push_str(line.get(*cut..).unwrap_or(line.trim_start()));
                body.push('\n');
            }
        }
    }
    blocks
}

/// The README's section that starts with `heading`, up to the next heading of its level.
fn readme_section(heading: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has {heading:?}"));
    let level = heading.split(' ').next().unwrap();
    let rest = &readme[start + heading.len()..];
    let end = rest
        .match_indices(&format!("\n{level} "))
        .map(|(i, _)| i)
        .next()
        .unwrap_or(rest.len());
    rest[..end].to_owned()
}

/// The README's gateway example exactly as printed: its upstreams file (with a `search` entry
/// whose `${SEARCH_API_KEY}` is not set and whose server does not run), step 1's check, step 2's
/// `token create`, and step 3's Claude Desktop entry, started as a desktop client would start
/// it (the researcher's secret pasted into `env`) and driven by rmcp's client. The only
/// substitutions are the ones a reader makes: `/home/me` is their home (a temporary one here),
/// `tokenwarden` is on `PATH`, and `npx` finds the pinned filesystem server installed in
/// `target/npm` (offline) rather than downloading it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_gateway_example_works_as_written() {
    let npm = common::installs::npm_prefix(
        "npm",
        &["@modelcontextprotocol/server-filesystem@2026.8.31"],
        &["@modelcontextprotocol/server-filesystem/dist/index.js"],
    );
    let gateway = readme_section("## The gateway: your own MCP servers behind tokens");
    let upstreams = fenced_blocks(&gateway)
        .into_iter()
        .find(|(lang, _)| lang == "json")
        .expect("the upstreams file")
        .1;
    let worked = readme_section("### Worked example: a read-only research agent");
    let blocks = fenced_blocks(&worked);
    let create = blocks
        .iter()
        .find(|(lang, body)| lang == "sh" && body.contains("token create"))
        .expect("step 2's command")
        .1
        .replace("\\\n", " ");
    let entry: Value = serde_json::from_str(
        &blocks
            .iter()
            .find(|(lang, body)| lang == "json" && body.contains("--stdio"))
            .expect("step 3's stdio entry")
            .1,
    )
    .unwrap();
    let step1 = worked
        .lines()
        .find_map(|l| {
            let start = l.find("`tokenwarden upstreams")?;
            let rest = &l[start + 1..];
            Some(rest[..rest.find('`')?].to_owned())
        })
        .expect("step 1's check");

    let tmp = TempDir::new().unwrap();
    let home = tmp.path().join("me");
    std::fs::create_dir_all(home.join("projects")).unwrap();
    std::fs::write(home.join("projects/notes.txt"), "read me\n").unwrap();
    let config = home.join(".config/tokenwarden");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("upstreams.json"), &upstreams).unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("tokenwarden")).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let shell = |command: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&npm)
            .env("HOME", &home)
            .env("PATH", &path)
            .env("npm_config_offline", "true")
            .env("npm_config_update_notifier", "false")
            .env_remove("XDG_DATA_HOME")
            .env_remove("TOKENWARDEN_DATA_DIR")
            .env_remove("TOKENWARDEN_TOKEN")
            .env_remove("TOKENWARDEN_UPSTREAMS")
            .env_remove("SEARCH_API_KEY")
            .output()
            .unwrap()
    };

    // Step 1: the check shows fs with its tools, and search unavailable, saying why in words.
    let checked = shell(&step1);
    let out = String::from_utf8_lossy(&checked.stdout);
    let said = String::from_utf8_lossy(&checked.stderr);
    assert_eq!(checked.status.code(), Some(1), "{out}{said}");
    assert!(out.contains("fs  connected (stdio"), "{out}{said}");
    assert!(out.contains("fs__read_text_file"), "{out}");
    assert!(
        out.contains("search  unavailable (http): environment variable SEARCH_API_KEY is not set"),
        "{out}"
    );
    assert!(
        said.contains("1 of 2 upstreams unavailable: search"),
        "{said}"
    );

    // Step 2: the researcher's token, in the default data directory.
    let created = shell(&create);
    let out = String::from_utf8_lossy(&created.stdout);
    assert!(
        created.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .and_then(common::find_secret)
        .expect("the secret, shown once");

    // Step 3: the Claude Desktop entry, started as the desktop client starts it.
    let entry = &entry["mcpServers"]["researcher"];
    let me = home.display().to_string();
    let mut cmd = tokio::process::Command::new(
        entry["command"]
            .as_str()
            .unwrap()
            .replace("/home/me/.cargo/bin/tokenwarden", BIN),
    );
    for arg in entry["args"].as_array().unwrap() {
        cmd.arg(arg.as_str().unwrap().replace("/home/me", &me));
    }
    for (name, value) in entry["env"].as_object().unwrap() {
        let value = value.as_str().unwrap();
        let value = if name == "TOKENWARDEN_TOKEN" {
            secret.clone()
        } else {
            value.replace("/home/me", &me)
        };
        cmd.env(name, value);
    }
    cmd.current_dir(&npm)
        .env("HOME", &home)
        .env("PATH", &path)
        .env("npm_config_offline", "true")
        .env("npm_config_update_notifier", "false")
        .env_remove("XDG_DATA_HOME")
        .env_remove("TOKENWARDEN_DATA_DIR")
        .env_remove("TOKENWARDEN_UPSTREAMS")
        .env_remove("SEARCH_API_KEY");
    let (transport, _) = rmcp::transport::TokioChildProcess::builder(cmd)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = rmcp::model::ClientConfig::default()
        .serve(transport)
        .await
        .expect("the entry starts");

    // Step 4: the client's first tools/list, at once, as desktop clients do at start, already
    // shows the fs tools the token may call (it waited for the upstream to connect).
    let names = tool_names(&client).await;
    for name in ["whoami", "fs__read_text_file", "fs__list_directory"] {
        assert!(names.contains(&name.to_owned()), "{name} in {names:?}");
    }
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with("search__") && n != "fs__write_file"),
        "{names:?}"
    );
    let path_arg = home.join("projects/notes.txt").display().to_string();
    let read = ok(&client, "fs__read_text_file", json!({"path": path_arg})).await;
    assert!(read.to_string().contains("read me"), "{read}");
    let refused = err(
        &client,
        "fs__write_file",
        json!({"path": path_arg, "content": "x"}),
        "forbidden",
    )
    .await;
    assert!(refused.contains("may not call fs__write_file"), "{refused}");
    assert_eq!(
        std::fs::read_to_string(home.join("projects/notes.txt")).unwrap(),
        "read me\n"
    );
    client.cancel().await.unwrap();
}

/// A free loopback port with nothing listening on it.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Upstreams that cannot be used take only their own buckets down, each saying why in one line
/// of the user's words (in `list_buckets` and in the log, never rmcp's type names), while the
/// server serves the rest; and a 2026-07-28 client, which has no session to be told in, hears
/// of a changed catalogue on `subscriptions/listen`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_upstreams_say_why_in_words_and_a_2026_client_hears_of_changes() {
    let tmp = TempDir::new().unwrap();
    let port = closed_port();
    let file = tmp.path().join("upstreams.json");
    let servers = json!({"mcpServers": {
        "down": {"type": "http", "url": format!("http://127.0.0.1:{port}/mcp")},
        "nocmd": {"command": "tokenwarden-no-such-command"},
        "keyless": {"command": "x", "env": {"KEY": "${TOKENWARDEN_TEST_UNSET_KEY}"}},
        "test": {"command": env!("CARGO_BIN_EXE_tokenwarden-test-upstream")},
    }});
    std::fs::write(&file, servers.to_string()).unwrap();
    let log = tmp.path().join("stderr.log");
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("--data-dir")
        .arg(tmp.path().join("data"))
        .args(["serve", "--stdio", "--upstreams"])
        .arg(&file)
        .env_remove("TOKENWARDEN_TOKEN")
        .env_remove("TOKENWARDEN_TEST_UNSET_KEY")
        .env_remove("RUST_LOG");
    let (transport, _) = rmcp::transport::TokioChildProcess::builder(cmd)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let client = rmcp::model::ClientConfig::default()
        .serve_with_lifecycle(
            transport,
            rmcp::service::ClientLifecycleMode::Discover {
                preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("a 2026-07-28 client starts");

    // The first tools/list waited for the test upstream; the others are unavailable.
    let names = tool_names(&client).await;
    assert!(names.contains(&"test__add_tool".to_owned()), "{names:?}");
    let buckets = ok(&client, "list_buckets", json!({})).await;
    let error = |name: &str| {
        let bucket = buckets["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {buckets}"));
        assert_eq!(bucket["status"], "unavailable", "{bucket}");
        bucket["error"].as_str().unwrap().to_owned()
    };
    assert_eq!(
        error("down"),
        format!("cannot connect to http://127.0.0.1:{port}/mcp: connection refused")
    );
    assert!(
        error("nocmd").starts_with("command not found: tokenwarden-no-such-command"),
        "{}",
        error("nocmd")
    );
    assert_eq!(
        error("keyless"),
        "environment variable TOKENWARDEN_TEST_UNSET_KEY is not set"
    );

    // A change of the catalogue reaches the client on its subscription.
    let mut subscription = client
        .peer()
        .listen(
            rmcp::model::SubscriptionFilter::builder()
                .tools_list_changed()
                .build(),
        )
        .await
        .expect("subscriptions/listen is accepted");
    ok(&client, "test__add_tool", json!({})).await;
    let heard = tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("a notification within 10 s")
        .expect("the subscription stays open");
    assert!(
        matches!(
            heard,
            Some(rmcp::model::ServerNotification::ToolListChangedNotification(_))
        ),
        "{heard:?}"
    );
    assert!(
        tool_names(&client)
            .await
            .contains(&"test__extra_1".to_owned())
    );
    drop(subscription);
    client.cancel().await.unwrap();

    // The log says the same, once each, and never in rmcp's type names.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("connection refused"), "{logged}");
    for internal in [
        "WorkerTransport",
        "rmcp::",
        "reqwest::",
        "os error",
        "Transport [",
    ] {
        assert!(
            !logged.contains(internal),
            "{internal} in the log: {logged}"
        );
    }
}

/// A stdio start whose TOKENWARDEN_TOKEN cannot authenticate because the store is not where
/// the client looked says where it looked, and leaves nothing behind; against the right store
/// an unknown token names that store.
#[test]
fn a_stdio_token_without_its_store_names_the_directory_and_creates_nothing() {
    let tmp = TempDir::new().unwrap();
    let store = tmp.path().join("store");
    let out = tw(&store, &["token", "create", "--name", "agent"]);
    let secret = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("secret: ").map(str::to_owned))
        .expect("a secret");
    let stdio = |dir: &Path, secret: &str| {
        Command::new(BIN)
            .arg("--data-dir")
            .arg(dir)
            .args(["serve", "--stdio"])
            .env("TOKENWARDEN_TOKEN", secret)
            .env_remove("TOKENWARDEN_DATA_DIR")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    // The directory a client defaulted to: nothing there.
    let elsewhere = tmp.path().join("default-data");
    let out = stdio(&elsewhere, &secret);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert_eq!(said.trim().lines().count(), 1, "{said}");
    assert!(
        said.contains("TOKENWARDEN_TOKEN does not authenticate: there is no tokenwarden store in")
            && said.contains(&elsewhere.display().to_string())
            && said.contains("TOKENWARDEN_DATA_DIR"),
        "{said}"
    );
    assert!(!elsewhere.exists(), "an empty store was left behind");
    // An existing empty directory stays empty.
    std::fs::create_dir(&elsewhere).unwrap();
    let out = stdio(&elsewhere, &secret);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    // The right store, a token it never issued: the message names the store.
    let other = tw(
        &tmp.path().join("other"),
        &["token", "create", "--name", "x"],
    );
    let stranger = String::from_utf8_lossy(&other.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("secret: ").map(str::to_owned))
        .expect("a secret");
    let out = stdio(&store, &stranger);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("does not authenticate against the store in")
            && said.contains(&store.display().to_string()),
        "{said}"
    );
    // And the right one authenticates (its stdin is closed at once, so the session ends).
    let out = stdio(&store, &secret);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!said.contains("does not authenticate"), "{said}");
}

/// The README's test command is the one CI runs, `.ci/run`: it installs everything the README
/// lists (the pinned versions the tests install themselves included) before `cargo test`.
#[test]
fn the_readme_test_command_is_the_one_ci_runs_and_installs_what_the_readme_lists() {
    let root = env!("CARGO_MANIFEST_DIR");
    let section = readme_section("## Running the tests");
    let (lang, command) = fenced_blocks(&section)
        .into_iter()
        .next()
        .expect("a command");
    assert_eq!((lang.as_str(), command.trim()), ("sh", ".ci/run"));
    let script = std::fs::read_to_string(format!("{root}/.ci/run")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(format!("{root}/.ci/run"))
        .unwrap()
        .permissions()
        .mode();
    assert!(mode & 0o111 != 0, ".ci/run is executable");
    assert!(
        script.trim_end().ends_with("cargo test \"$@\""),
        ".ci/run ends by running the tests"
    );
    for installed in [
        common::installs::PYTHON_SDK,
        common::installs::SCHEMATHESIS,
        "@modelcontextprotocol/server-filesystem@2026.8.31",
        "apt-get install",
        "chromium",
        "prometheus",
        "openssl",
        "TOKENWARDEN_REQUIRE_PROMETHEUS=1",
    ] {
        assert!(script.contains(installed), ".ci/run installs {installed}");
    }
    for prerequisite in [
        "Rust 1.88",
        "Python 3.10",
        "Node 20",
        "`chromium`",
        "`prometheus`",
        "`openssl`",
    ] {
        assert!(
            section.contains(prerequisite),
            "the README lists {prerequisite}"
        );
    }
}
