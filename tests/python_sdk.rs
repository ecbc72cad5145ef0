//! Drives the server with the official MCP Python SDK (`mcp` from PyPI): a client this
//! repository did not write. The SDK is installed into `target/py-mcp` on first use.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Server;
use tempfile::TempDir;

/// The SDK version the tests pin; `.ci/run` installs the same.
const MCP_SDK: &str = "mcp==2.3.0";

fn python_with_sdk() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/py-mcp");
    let python = venv.join("bin/python");
    let has_sdk = python.exists()
        && Command::new(&python)
            .args(["-c", "import mcp, httpx2"])
            .status()
            .is_ok_and(|s| s.success());
    if !has_sdk {
        let created = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status();
        assert!(
            created.is_ok_and(|s| s.success()),
            "python3 -m venv failed: is Python 3.10+ installed?"
        );
        let installed = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", MCP_SDK])
            .status();
        assert!(
            installed.is_ok_and(|s| s.success()),
            "pip install {MCP_SDK} failed"
        );
    }
    python
}

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
