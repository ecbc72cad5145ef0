//! A newcomer's first hour, through the real binary: the README's quick start works as printed
//! (the banner's recovery command included), a store without an admin says how to get one, and
//! commands that only read never create a store where a typo pointed them.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use serde_json::json;
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
