//! Finding and running the peer libraries the tests check against (Python and npm packages
//! installed by `.ci/signature.sh` under `.ci/.deps/`). Without them a test skips with a
//! message, unless `TOWER_WEBHOOK_REQUIRE_INTEROP=1` (set by `.ci/run`), where it fails.

// Each test crate that includes this file uses a part of it.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn required() -> bool {
    std::env::var("TOWER_WEBHOOK_REQUIRE_INTEROP").is_ok_and(|v| v == "1")
}

/// `Some(path)` if present; otherwise skip (or fail when interop is required).
pub(crate) fn peer(kind: &str, path: PathBuf) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    let msg = format!(
        "{kind} peer not found at {} (run .ci/signature.sh to install it)",
        path.display()
    );
    assert!(!required(), "TOWER_WEBHOOK_REQUIRE_INTEROP=1: {msg}");
    eprintln!("SKIPPED: {msg}");
    None
}

/// The Python of the peers' virtual environment (or `TOWER_WEBHOOK_PYTHON`).
pub(crate) fn python() -> Option<PathBuf> {
    let path = std::env::var_os("TOWER_WEBHOOK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".ci/.deps/venv/bin/python"));
    peer("python", path)
}

/// Runs `cmd` with `input` as JSON on stdin; its stdout, parsed as JSON. Panics with its stderr
/// if it fails.
pub(crate) fn run(cmd: Command, input: &serde_json::Value) -> serde_json::Value {
    let out = try_run(cmd, input).unwrap_or_else(|err| panic!("peer failed: {err}"));
    serde_json::from_slice(&out).expect("peer prints JSON")
}

/// Runs `cmd` with `input` as JSON on stdin: its stdout, or its stderr if it failed.
pub(crate) fn try_run(mut cmd: Command, input: &serde_json::Value) -> Result<Vec<u8>, String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn peer");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
