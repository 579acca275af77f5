//! A history checker for idempotent calls: every call logs who called, on which key,
//! how it was made (attached or detached), when it started and ended and what it got;
//! every execution of the action logs when it started and when its side effect happened
//! (and which call it belongs to). [`History::check`] then asserts, **per key**, the
//! properties the library promises:
//!
//! - **at most once**: the side effects on a key number at most one, plus the lease losses
//!   counted *on that key* (never another key's), plus the re-runs the cancellation rule
//!   allows (`docs/coordinator.md`, "Cancellation"): an attached call dropped after its
//!   action's side effect releases the key, so one later run may happen, one per such
//!   call, and only after it was dropped;
//! - **detached calls finish**: a detached call's action, once started, reaches its side
//!   effect whatever happens to the caller;
//! - **one value**: on a key with no lease loss, every successful caller got the same
//!   value;
//! - **no value from the future**: every value returned is an execution's of that key,
//!   returned no earlier than that execution produced it.
//!
//! The lease losses are the caller's to count truthfully per key (for example one
//! operation label per key, so the metrics' per-operation `lease_lost` counts are per
//! key): a total over all keys would let a loss on one key excuse a double run on another.
//!
//! Histories of several processes are printed as lines and gathered by [`text`].

pub mod text;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How a call was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    /// `run`: the action runs in the caller's future and is dropped with it.
    Attached,
    /// `run_detached`: the action runs to completion in a task of its own.
    Detached,
}

/// One call as the caller saw it.
#[derive(Debug, Clone)]
pub struct Call {
    /// Who called (unique per call: an execution names its call by it).
    pub caller: u64,
    /// The idempotency key.
    pub key: String,
    /// When the call started, on the history's clock ([`History::now`]).
    pub start: Duration,
    /// When it returned, or when its caller gave up on it (before the call's future was
    /// dropped).
    pub end: Duration,
    /// The value it got, or its error (as text), or `None` when the caller gave up on it
    /// (cancelled).
    pub outcome: Option<Result<u64, String>>,
    /// How the call was made.
    pub attachment: Attachment,
}

/// One execution of an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// The call whose action this is.
    pub caller: u64,
    /// When the action started.
    pub started: Duration,
    /// Its side effect, once it happened: the value this execution returns (unique per
    /// execution) and when.
    pub effect: Option<(u64, Duration)>,
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
    /// Calls whose own action ran (started).
    pub ran: usize,
    /// Keys touched.
    pub keys: usize,
    /// Executions of the action that reached their side effect.
    pub executions: usize,
    /// Side effects beyond one per key, however explained.
    pub double_runs: usize,
    /// Of those, the ones allowed by an attached call cancelled after its side effect.
    pub after_cancellation: usize,
    /// Attached calls cancelled after their action's side effect (each may let one more
    /// execution happen).
    pub cancelled_after_effect: usize,
    /// Lease losses counted, summed over the keys.
    pub lease_losses: usize,
    /// The longest any call took (start to return or abandonment).
    pub longest_call: Duration,
    /// Every violation found, for the failure message.
    pub violations: Vec<String>,
}

/// A concurrent log of calls and executions.
#[derive(Debug)]
pub struct History {
    origin: Instant,
    calls: Mutex<Vec<Call>>,
    runs: Mutex<BTreeMap<String, Vec<Run>>>,
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
            runs: Mutex::new(BTreeMap::new()),
        }
    }

    /// Time since the origin (monotonic).
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Logs that `caller`'s action on `key` started (call it first thing in the action).
    pub fn started(&self, caller: u64, key: &str) {
        self.started_at(caller, key, self.now());
    }

    /// Logs that `caller`'s action on `key` started at `at` (for histories read back from
    /// elsewhere).
    pub fn started_at(&self, caller: u64, key: &str, at: Duration) {
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.to_owned())
            .or_default()
            .push(Run {
                caller,
                started: at,
                effect: None,
            });
    }

    /// Logs the side effect of `caller`'s action on `key`, which returns `value` (call it
    /// inside the action, after [`History::started`]).
    pub fn effect(&self, caller: u64, key: &str, value: u64) {
        self.effect_at(caller, key, value, self.now());
    }

    /// Logs a side effect that happened at `at`; an action that logged no start is taken
    /// to have started then.
    pub fn effect_at(&self, caller: u64, key: &str, value: u64, at: Duration) {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        let runs = runs.entry(key.to_owned()).or_default();
        match runs
            .iter_mut()
            .rev()
            .find(|r| r.caller == caller && r.effect.is_none())
        {
            Some(run) => run.effect = Some((value, at)),
            None => runs.push(Run {
                caller,
                started: at,
                effect: Some((value, at)),
            }),
        }
    }

    /// Logs a finished (or abandoned) call.
    pub fn call(&self, call: Call) {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(call);
    }

    /// The calls logged so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The executions logged for `key`.
    pub fn runs_of(&self, key: &str) -> Vec<Run> {
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    /// How many executions have started, not yet reached their side effect, and may still
    /// reach it: those of detached calls and of calls not logged yet (an attached call
    /// that returned or was dropped took its action with it).
    pub fn unfinished_runs(&self) -> usize {
        let calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        let attached = |caller: u64| {
            calls
                .iter()
                .any(|c| c.caller == caller && c.attachment == Attachment::Attached)
        };
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .flatten()
            .filter(|r| r.effect.is_none() && !attached(r.caller))
            .count()
    }

    /// Checks every key; `lease_losses(key)` is the number of lease losses counted on
    /// that key (each lets one more execution happen there).
    pub fn check(&self, lease_losses: impl Fn(&str) -> usize) -> Report {
        let calls = self
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let runs = self
            .runs
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
        for key in runs.keys() {
            keys.entry(key.as_str()).or_default();
        }
        report.keys = keys.len();
        for (key, calls) in keys {
            let runs = runs.get(key).map_or(&[][..], Vec::as_slice);
            let losses = lease_losses(key);
            report.lease_losses += losses;
            check_key(key, &calls, runs, losses, &mut report);
        }
        report
    }
}

/// The checks of one key.
fn check_key(key: &str, calls: &[&Call], runs: &[Run], losses: usize, report: &mut Report) {
    let call_of = |caller: u64| calls.iter().find(|c| c.caller == caller);
    for run in runs {
        match call_of(run.caller) {
            None => report.violations.push(format!(
                "{key}: an execution of caller {} on a call never logged",
                run.caller
            )),
            Some(c) if c.attachment == Attachment::Detached && run.effect.is_none() => {
                report.violations.push(format!(
                    "{key}: caller {}'s detached action started at {:?} never finished",
                    run.caller, run.started
                ));
            }
            Some(_) => {}
        }
    }
    report.ran += calls
        .iter()
        .filter(|c| runs.iter().any(|r| r.caller == c.caller))
        .count();
    let mut effects: Vec<&Run> = runs.iter().filter(|r| r.effect.is_some()).collect();
    effects.sort_by_key(|r| r.started);
    report.executions += effects.len();
    report.double_runs += effects.len().saturating_sub(1);
    // The cancellation rule: an attached call dropped after its action's side effect
    // releases the key; one later execution may follow, started after the drop.
    let mut licences: Vec<Duration> = calls
        .iter()
        .filter(|c| c.attachment == Attachment::Attached && c.outcome.is_none())
        .filter(|c| {
            runs.iter()
                .any(|r| r.caller == c.caller && r.effect.is_some())
        })
        .map(|c| c.end)
        .collect();
    licences.sort();
    report.cancelled_after_effect += licences.len();
    let mut unexplained = Vec::new();
    for run in effects.iter().skip(1) {
        // Every licence usable now is usable for every later run too: take any.
        if let Some(i) = licences.iter().position(|end| *end <= run.started) {
            licences.remove(i);
            report.after_cancellation += 1;
        } else {
            unexplained.push(run);
        }
    }
    if unexplained.len() > losses {
        let mut detail = String::new();
        for r in &effects {
            let _ = write!(detail, " [caller {} started {:?}]", r.caller, r.started);
        }
        report.violations.push(format!(
            "{key}: {} executions, {} beyond the first not explained by a cancellation, {losses} lease losses counted on this key:{detail}",
            effects.len(),
            unexplained.len()
        ));
    }
    let mut values = Vec::new();
    for c in calls {
        let Some(Ok(value)) = c.outcome else {
            continue;
        };
        values.push((c.caller, value));
        match effects
            .iter()
            .find_map(|r| r.effect.filter(|(v, _)| *v == value))
        {
            None => report.violations.push(format!(
                "{key}: caller {} got {value}, which no execution of this key produced",
                c.caller
            )),
            Some((_, at)) if at > c.end => report.violations.push(format!(
                "{key}: caller {} returned {value} at {:?}, before it was produced at {at:?}",
                c.caller, c.end
            )),
            Some(_) => {}
        }
    }
    if losses == 0
        && let Some(&(first_caller, first)) = values.first()
        && let Some(&(caller, other)) = values.iter().find(|(_, v)| *v != first)
    {
        report.violations.push(format!(
            "{key}: no lease loss, yet caller {first_caller} got {first} and caller {caller} got {other}"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(caller: u64, key: &str, end: Duration, outcome: Option<Result<u64, String>>) -> Call {
        Call {
            caller,
            key: key.to_owned(),
            start: Duration::ZERO,
            end,
            outcome,
            attachment: Attachment::Attached,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn none(_: &str) -> usize {
        0
    }

    #[test]
    fn a_clean_history_passes() {
        let h = History::new();
        h.started_at(1, "a", ms(1));
        h.effect_at(1, "a", 7, ms(2));
        h.call(call(1, "a", ms(3), Some(Ok(7))));
        h.call(call(2, "a", ms(4), Some(Ok(7))));
        h.call(call(3, "b", ms(4), None));
        let r = h.check(none);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(
            (r.calls, r.successes, r.cancelled, r.executions, r.ran),
            (3, 2, 1, 1, 1)
        );
    }

    #[test]
    fn a_seeded_double_run_fails_the_check() {
        let h = History::new();
        for caller in [1, 2] {
            h.started_at(caller, "a", ms(caller));
            h.effect_at(caller, "a", caller, ms(caller + 1));
            h.call(call(caller, "a", ms(10), Some(Ok(caller))));
        }
        let r = h.check(none);
        assert_eq!(r.double_runs, 1);
        assert!(
            r.violations.iter().any(|v| v.contains("2 executions")),
            "{:?}",
            r.violations
        );
        // Two values on a key without a lost lease are a violation of their own.
        assert!(
            r.violations.iter().any(|v| v.contains("no lease loss")),
            "{:?}",
            r.violations
        );
        // With the loss counted on that key, both are explained.
        let r = h.check(|key| usize::from(key == "a"));
        assert!(r.violations.is_empty(), "{:?}", r.violations);
    }

    #[test]
    fn a_lease_loss_on_one_key_does_not_excuse_a_double_run_on_another() {
        let h = History::new();
        h.effect_at(1, "lost", 1, ms(1));
        h.call(call(1, "lost", ms(2), Some(Ok(1))));
        h.effect_at(2, "doubled", 2, ms(1));
        h.effect_at(3, "doubled", 3, ms(2));
        h.call(call(2, "doubled", ms(3), Some(Ok(2))));
        h.call(call(3, "doubled", ms(3), Some(Ok(2))));
        // One loss in total, on the key that ran once: the double run is still found.
        let r = h.check(|key| usize::from(key == "lost"));
        assert_eq!(r.lease_losses, 1);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(
            r.violations[0].starts_with("doubled:"),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn an_attached_call_dropped_after_its_effect_allows_one_later_run() {
        let h = History::new();
        // Caller 1 ran, and was dropped at 5 ms; caller 2 ran after that.
        h.started_at(1, "a", ms(1));
        h.effect_at(1, "a", 1, ms(2));
        h.call(call(1, "a", ms(5), None));
        h.started_at(2, "a", ms(6));
        h.effect_at(2, "a", 2, ms(7));
        h.call(call(2, "a", ms(8), Some(Ok(2))));
        let r = h.check(none);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!((r.after_cancellation, r.cancelled_after_effect), (1, 1));
        // A third run has no licence left.
        h.started_at(3, "a", ms(9));
        h.effect_at(3, "a", 3, ms(10));
        h.call(call(3, "a", ms(11), Some(Ok(3))));
        assert!(!h.check(none).violations.is_empty());
    }

    #[test]
    fn a_run_before_the_cancellation_or_after_a_detached_one_is_not_allowed() {
        // The second run started before the first caller was dropped: the drop cannot
        // have released the key for it.
        let h = History::new();
        h.started_at(1, "a", ms(1));
        h.effect_at(1, "a", 1, ms(2));
        h.started_at(2, "a", ms(3));
        h.effect_at(2, "a", 2, ms(4));
        h.call(call(1, "a", ms(5), None));
        h.call(call(2, "a", ms(6), Some(Ok(2))));
        assert!(!h.check(none).violations.is_empty());
        // A detached call's cancellation licenses nothing.
        let h = History::new();
        h.started_at(1, "a", ms(1));
        h.effect_at(1, "a", 1, ms(2));
        h.call(Call {
            attachment: Attachment::Detached,
            ..call(1, "a", ms(3), None)
        });
        h.started_at(2, "a", ms(4));
        h.effect_at(2, "a", 2, ms(5));
        h.call(call(2, "a", ms(6), Some(Ok(2))));
        assert!(!h.check(none).violations.is_empty());
        // An attached call dropped before its effect licenses nothing either.
        let h = History::new();
        h.started_at(1, "a", ms(1));
        h.call(call(1, "a", ms(2), None));
        for caller in [2, 3] {
            h.started_at(caller, "a", ms(caller + 2));
            h.effect_at(caller, "a", caller, ms(caller + 3));
            h.call(call(caller, "a", ms(9), Some(Ok(caller))));
        }
        assert!(!h.check(none).violations.is_empty());
    }

    #[test]
    fn a_detached_action_that_never_finished_is_found() {
        let h = History::new();
        h.started_at(1, "a", ms(1));
        h.call(Call {
            attachment: Attachment::Detached,
            ..call(1, "a", ms(2), None)
        });
        assert_eq!(h.unfinished_runs(), 1);
        let r = h.check(none);
        assert!(
            r.violations.iter().any(|v| v.contains("never finished")),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn a_value_nobody_produced_or_produced_later_is_found() {
        let h = History::new();
        h.call(call(1, "a", ms(1), Some(Ok(9))));
        assert_eq!(h.check(none).violations.len(), 1);
        let h = History::new();
        h.call(call(1, "a", ms(1), Some(Ok(3))));
        h.effect_at(2, "a", 3, ms(2));
        h.call(call(2, "a", ms(3), Some(Ok(3))));
        let r = h.check(none);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(r.violations[0].contains("before it was produced"));
        // Another key's execution of that value does not count.
        let h = History::new();
        h.effect_at(1, "b", 4, ms(1));
        h.call(call(1, "b", ms(2), Some(Ok(4))));
        h.call(call(2, "a", ms(3), Some(Ok(4))));
        assert_eq!(h.check(none).violations.len(), 1);
    }
}
