//! Clients this repository did not write, pinned and installed into `target/` on first use
//! (`.ci/run` installs the same). One lock per test binary: tests that run at once share one
//! install.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

static INSTALL: Mutex<()> = Mutex::new(());

/// The Python SDK version the tests pin.
pub const PYTHON_SDK: &str = "mcp==2.3.0";

/// `target/<folder>` under this crate.
pub fn target_dir(folder: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(folder)
}

/// The Python of `target/py-mcp`, a virtual environment with the official MCP Python SDK.
pub fn python_with_sdk() -> PathBuf {
    let _once = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let venv = target_dir("py-mcp");
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
            .args(["install", "--quiet", PYTHON_SDK])
            .status();
        assert!(
            installed.is_ok_and(|s| s.success()),
            "pip install {PYTHON_SDK} failed"
        );
    }
    python
}

/// The schemathesis version the REST fuzzer pins (tests/rest_fuzz.rs).
pub const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// The `st` command of `target/py-schemathesis`, a virtual environment with schemathesis, the
/// property-based fuzzer the REST API is run against (SPEC §12).
pub fn schemathesis() -> PathBuf {
    let _once = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let venv = target_dir("py-schemathesis");
    let st = venv.join("bin/st");
    let version = SCHEMATHESIS.trim_start_matches("schemathesis==");
    let installed = Command::new(&st)
        .arg("--version")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(version));
    if !installed {
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
            .args(["install", "--quiet", SCHEMATHESIS])
            .status();
        assert!(
            installed.is_ok_and(|s| s.success()),
            "pip install {SCHEMATHESIS} failed"
        );
    }
    st
}

/// `target/<folder>` with the pinned npm `packages` installed, unless every file of `present`
/// (relative to its `node_modules`) is already there.
pub fn npm_prefix(folder: &str, packages: &[&str], present: &[&str]) -> PathBuf {
    let _once = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let prefix = target_dir(folder);
    let modules = prefix.join("node_modules");
    if !present.iter().all(|file| modules.join(file).exists()) {
        let status = Command::new("npm")
            .arg("install")
            .arg("--prefix")
            .arg(&prefix)
            .args(["--no-audit", "--no-fund", "--silent"])
            .args(packages)
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "npm install {packages:?} failed: are node and npm installed?"
        );
    }
    prefix
}

/// Copies a script of `tests/` beside the packages of `prefix` (Node resolves packages from a
/// script's folder upwards) and returns the copy's path.
pub fn script_beside(prefix: &Path, script: &str) -> PathBuf {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let copy = prefix.join(source.file_name().unwrap());
    std::fs::copy(&source, &copy).unwrap_or_else(|e| panic!("copy {}: {e}", source.display()));
    copy
}
