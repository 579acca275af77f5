//! Running the Python library's side of a scenario, with command counts around it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use crate::commands::CommandCounter;

/// The outcome of one Python scenario: its JSON and the commands it sent per call.
pub(crate) struct PythonRun {
    pub(crate) json: serde_json::Value,
    pub(crate) commands_per_call: f64,
}

/// Runs `bench.py` for a scenario. Seeding happens before the command count starts.
pub(crate) fn run(
    counter: &CommandCounter,
    url: &str,
    scenario: &str,
    concurrency: usize,
    calls: u64,
    run: &str,
) -> Option<PythonRun> {
    let python = idempotency_testkit::python::python_with_kit();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/bench.py");
    let mut child = Command::new(python)
        .arg(script)
        .args([
            url,
            scenario,
            &concurrency.to_string(),
            &calls.to_string(),
            run,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let mut stdout = BufReader::new(child.stdout.take()?);
    let mut line = String::new();
    stdout.read_line(&mut line).ok()?;
    let before = counter.total();
    child.stdin.take()?.write_all(b"go\n").ok()?;
    line.clear();
    stdout.read_line(&mut line).ok()?;
    let after = counter.total();
    let _ = child.wait();
    let json: serde_json::Value = serde_json::from_str(&line).ok()?;
    let calls = json["calls"].as_f64().unwrap_or(1.0).max(1.0);
    Some(PythonRun {
        json,
        commands_per_call: (after - before) as f64 / calls,
    })
}
