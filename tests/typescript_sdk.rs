//! Drives the server with the official MCP TypeScript SDK (`@modelcontextprotocol/sdk` from npm):
//! a client this repository did not write, as used by the MCP Inspector and many agents. The SDK
//! is installed, pinned, into `target/npm-client` on first use (`.ci/run` does the same).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Server;
use tempfile::TempDir;

/// The SDK version the test pins; `.ci/run` installs the same.
const TS_SDK: &str = "@modelcontextprotocol/sdk@1.32.2";

fn sdk_prefix() -> PathBuf {
    let prefix = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/npm-client");
    let installed = prefix
        .join("node_modules/@modelcontextprotocol/sdk/package.json")
        .exists();
    if !installed {
        let status = Command::new("npm")
            .arg("install")
            .arg("--prefix")
            .arg(&prefix)
            .args(["--no-audit", "--no-fund", "--silent", TS_SDK])
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "npm install {TS_SDK} failed: are node and npm installed?"
        );
    }
    prefix
}

/// Mint, use, escalate, revoke, and end sessions with DELETE through the TypeScript SDK.
#[test]
fn the_typescript_sdk_runs_the_agent_flow() {
    let prefix = sdk_prefix();
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[]);
    // Node resolves packages from the script's folder upwards: run a copy beside the SDK.
    let script = prefix.join("agent_flow.mjs");
    std::fs::copy(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js/agent_flow.mjs"),
        &script,
    )
    .unwrap();
    let output = Command::new("node")
        .arg(&script)
        .arg(server.url())
        .arg(server.admin())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "TypeScript client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("typescript sdk agent flow: ok"), "{stdout}");
}
