//! Drives the server with the official MCP Python SDK (`mcp` from PyPI): a client this
//! repository did not write. The SDK is installed into `target/py-mcp` on first use
//! (`common::installs`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Server;
use common::installs::python_with_sdk;
use tempfile::TempDir;

/// The agent flow (mint, use, escalate, revoke) through the Python SDK over streamable HTTP, in
/// its default mode (2026-07-28, stateless requests) and in legacy mode (initialize and a
/// session, as SDK clients of the 2025 revisions do).
#[test]
fn the_python_sdk_runs_the_agent_flow() {
    run_agent_flow("auto");
}

#[test]
fn the_python_sdk_runs_the_agent_flow_in_legacy_mode() {
    run_agent_flow("legacy");
}

fn run_agent_flow(mode: &str) {
    let python = python_with_sdk();
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/agent_flow.py");
    let output = Command::new(python)
        .arg(script)
        .arg(server.url())
        .arg(server.admin())
        .arg(mode)
        .output()
        .expect("run the Python SDK client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python client failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("python sdk agent flow ({mode}): ok")),
        "{stdout}"
    );
    // The SDK reports a failed session termination (a DELETE not answered 204) on stderr.
    assert!(!stderr.contains("Session termination failed"), "{stderr}");
}
