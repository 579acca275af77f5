//! A history checker for idempotent calls: every call logs who called, on which key,
//! when it started and ended and what it got; every execution of the action logs its side
//! effect. [`History::check`] then asserts, per key, the properties the library promises:
//!
//! - **at most once**: the side effect happened at most once, plus the lease losses the
//!   caller allows (each counted by the library as `lease_lost`);
//! - **one value**: every successful caller got the value of an execution of its key
//!   (the only one when there was one);
//! - **no value from the future**: no caller returned a value before the execution that
//!   produced it had happened.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One call as the caller saw it.
#[derive(Debug, Clone)]
pub struct Call {
    /// Who called (any id unique per caller).
    pub caller: u64,
    /// The idempotency key.
    pub key: String,
    /// When the call started, since the history's origin.
    pub start: Duration,
    /// When it returned (or was abandoned by its caller).
    pub end: Duration,
    /// The value it got, or its error (as text), or `None` when the caller gave up on it
    /// (cancelled).
    pub outcome: Option<Result<u64, String>>,
}

/// One execution of an action: its side effect.
#[derive(Debug, Clone, Copy)]
pub struct Effect {
    /// The value this execution returns (unique per execution).
    pub value: u64,
    /// When the side effect happened.
    pub at: Duration,
}

/// What [`History::check`] found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Calls logged.
    pub calls: usize,
    /// Calls that returned a value.
    pub successes: usize,
    /// Calls cancelled by their caller.
    pub cancelled: usize,
    /// Calls that returned an error.
    pub errors: usize,
    /// Keys touched.
    pub keys: usize,
    /// Executions of the action.
    pub executions: usize,
    /// Executions beyond one per key.
    pub double_runs: usize,
    /// The longest any call took (start to return or abandonment).
    pub longest_call: Duration,
    /// Every violation found, for the failure message.
    pub violations: Vec<String>,
}

/// A concurrent log of calls and side effects.
#[derive(Debug)]
pub struct History {
    origin: Instant,
    calls: Mutex<Vec<Call>>,
    effects: Mutex<BTreeMap<String, Vec<Effect>>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            calls: Mutex::new(Vec::new()),
            effects: Mutex::new(BTreeMap::new()),
        }
    }

    /// Time since the origin (monotonic).
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Logs the side effect of one execution on `key` (call it inside the action).
    pub fn effect(&self, key: &str, value: u64) {
        let at = self.now();
        self.effects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.to_owned())
            .or_default()
            .push(Effect { value, at });
    }

    /// Logs a finished (or abandoned) call.
    pub fn call(&self, call: Call) {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(call);
    }

    /// The executions logged for `key`.
    pub fn effects_of(&self, key: &str) -> Vec<Effect> {
        self.effects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    /// Checks every key; `lease_losses` executions beyond one per key are tolerated (the
    /// library counts each as `lease_lost`).
    pub fn check(&self, lease_losses: usize) -> Report {
        let calls = self
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let effects = self
            .effects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut report = Report {
            calls: calls.len(),
            ..Report::default()
        };
        let mut keys: BTreeMap<&str, Vec<&Call>> = BTreeMap::new();
        for c in &calls {
            keys.entry(c.key.as_str()).or_default().push(c);
            report.longest_call = report.longest_call.max(c.end.saturating_sub(c.start));
            match &c.outcome {
                Some(Ok(_)) => report.successes += 1,
                Some(Err(_)) => report.errors += 1,
                None => report.cancelled += 1,
            }
        }
        for key in effects.keys() {
            keys.entry(key.as_str()).or_default();
        }
        report.keys = keys.len();
        for (key, calls) in keys {
            let runs = effects.get(key).map_or(&[][..], Vec::as_slice);
            report.executions += runs.len();
            report.double_runs += runs.len().saturating_sub(1);
            for c in calls {
                let Some(Ok(value)) = c.outcome else {
                    continue;
                };
                match runs.iter().find(|e| e.value == value) {
                    None => report.violations.push(format!(
                        "{key}: caller {} got {value}, which no execution produced",
                        c.caller
                    )),
                    Some(e) if e.at > c.end => report.violations.push(format!(
                        "{key}: caller {} returned {value} at {:?}, before it was produced at {:?}",
                        c.caller, c.end, e.at
                    )),
                    Some(_) if runs.len() == 1 => {}
                    Some(_) => {}
                }
            }
        }
        if report.double_runs > lease_losses {
            let mut detail = String::new();
            for (key, runs) in &effects {
                if runs.len() > 1 {
                    let _ = write!(detail, " {key}×{}", runs.len());
                }
            }
            report.violations.push(format!(
                "{} executions beyond one per key, {lease_losses} lease losses counted:{detail}",
                report.double_runs
            ));
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(key: &str, end: Duration, outcome: Option<Result<u64, String>>) -> Call {
        Call {
            caller: 1,
            key: key.to_owned(),
            start: Duration::ZERO,
            end,
            outcome,
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let h = History::new();
        h.effect("a", 7);
        h.call(call("a", h.now(), Some(Ok(7))));
        h.call(call("a", h.now(), Some(Ok(7))));
        h.call(call("b", h.now(), None));
        let r = h.check(0);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(
            (r.calls, r.successes, r.cancelled, r.executions),
            (3, 2, 1, 1)
        );
    }

    #[test]
    fn a_double_run_is_found_unless_counted_as_a_lease_loss() {
        let h = History::new();
        h.effect("a", 1);
        h.effect("a", 2);
        assert_eq!(h.check(0).violations.len(), 1);
        assert!(h.check(1).violations.is_empty());
    }

    #[test]
    fn a_value_nobody_produced_or_produced_later_is_found() {
        let h = History::new();
        h.call(call("a", Duration::ZERO, Some(Ok(9))));
        assert_eq!(h.check(0).violations.len(), 1);
        let h = History::new();
        h.call(call("a", Duration::ZERO, Some(Ok(3))));
        std::thread::sleep(Duration::from_millis(2));
        h.effect("a", 3);
        assert_eq!(h.check(0).violations.len(), 1);
    }
}
