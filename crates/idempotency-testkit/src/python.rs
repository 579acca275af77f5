//! A virtual environment with the Python idempotency-kit 0.5.0, made on first use.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, PoisonError};

/// The Python library version the kit is compatible with.
pub const PYTHON_KIT: &str = "idempotency-kit[redis]==0.5.0";

/// The workspace's `target` folder.
fn target_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target")
}

/// The venv's `python`, creating the venv and installing [`PYTHON_KIT`] when missing.
///
/// # Panics
/// When `python3` is missing or the install fails (the message says which).
pub fn python_with_kit() -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let venv = target_dir().join("python-idempotency-kit");
    let python = venv.join("bin/python");
    let marker = venv.join(".installed-0.5.0");
    if marker.exists() && python.exists() {
        return python;
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status();
    assert!(
        made.is_ok_and(|s| s.success()),
        "python3 -m venv failed: install Python 3 with venv (`apt-get install python3 python3-venv`)"
    );
    let pip = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            PYTHON_KIT,
        ])
        .status();
    assert!(
        pip.is_ok_and(|s| s.success()),
        "pip could not install {PYTHON_KIT} (PyPI must be reachable)"
    );
    std::fs::write(&marker, PYTHON_KIT).expect("write the venv marker");
    python
}

/// Runs `script` with the venv's Python, writes `input` to its standard input (from
/// another thread, so a large input never deadlocks against its output) and returns its
/// standard output as JSON values, one a line.
///
/// # Panics
/// When Python cannot be run, fails, or prints a line that is not JSON.
pub fn json_lines(script: &str, input: String) -> Vec<serde_json::Value> {
    use std::io::Write as _;
    use std::process::Stdio;
    let python = python_with_kit();
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().expect("python output");
    writer.join().expect("writer").expect("write to python");
    assert!(output.status.success(), "the Python script failed");
    String::from_utf8(output.stdout)
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}
