//! The steps a run committed, as the row's `step_state` keeps them, and where the
//! action is among them.

use idempotency_core::{IdempotencyError, RawValue};
use serde::{Deserialize, Serialize};

/// One committed step: its name and its output as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    step: String,
    output: Box<RawValue>,
}

/// What the run knows of its steps.
///
/// Invariant: `committed` is what the row holds (written only after the commit that
/// wrote it succeeded), in commit order; `passed` of them have been met by the action
/// in this attempt; `uncommitted` are external calls that returned in this attempt,
/// waiting for the next phase to commit them.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    committed: Vec<Entry>,
    passed: usize,
    uncommitted: Vec<Entry>,
}

/// Where a step stands.
#[derive(Debug)]
pub(crate) enum Place<'j> {
    /// Committed by an earlier attempt: its output.
    Done(&'j RawValue),
    /// Not committed: run it.
    Due,
    /// Another step was committed here (`Some`), or the name was used (`None`).
    Diverged(Option<String>),
}

impl Journal {
    /// The journal of a claimed row (`'[]'` for a new run).
    pub(crate) fn parse(text: &str) -> Result<Self, IdempotencyError> {
        let committed = serde_json::from_str(text).map_err(IdempotencyError::serialization)?;
        Ok(Self {
            committed,
            passed: 0,
            uncommitted: Vec::new(),
        })
    }

    /// Where `step`, called now, stands; a committed step is passed.
    pub(crate) fn place(&mut self, step: &str) -> Place<'_> {
        if let Some(entry) = self.committed.get(self.passed) {
            if entry.step != step {
                return Place::Diverged(Some(entry.step.clone()));
            }
            self.passed += 1;
            return Place::Done(&self.committed[self.passed - 1].output);
        }
        let used = self
            .committed
            .iter()
            .chain(&self.uncommitted)
            .any(|e| e.step == step);
        if used {
            Place::Diverged(None)
        } else {
            Place::Due
        }
    }

    /// An external call returned: its output waits for the next phase.
    pub(crate) fn hold(&mut self, step: &str, output: Box<RawValue>) {
        self.uncommitted.push(Entry {
            step: step.to_owned(),
            output,
        });
    }

    /// The `step_state` text once the phase `step` commits `output`: everything
    /// committed, the external outputs held, then this one.
    pub(crate) fn text_with(
        &self,
        step: &str,
        output: &RawValue,
    ) -> Result<String, IdempotencyError> {
        #[derive(Serialize)]
        struct Borrowed<'e> {
            step: &'e str,
            output: &'e RawValue,
        }
        let entries: Vec<Borrowed<'_>> = self
            .committed
            .iter()
            .chain(&self.uncommitted)
            .map(|e| Borrowed {
                step: &e.step,
                output: &e.output,
            })
            .chain(std::iter::once(Borrowed { step, output }))
            .collect();
        serde_json::to_string(&entries).map_err(IdempotencyError::serialization)
    }

    /// The phase `step` committed `output` (with the outputs held).
    pub(crate) fn committed(&mut self, step: &str, output: Box<RawValue>) {
        self.committed.append(&mut self.uncommitted);
        self.committed.push(Entry {
            step: step.to_owned(),
            output,
        });
        self.passed = self.committed.len();
    }
}

#[cfg(test)]
mod tests {
    use idempotency_core::RawValue;

    use super::{Journal, Place};

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).expect("json")
    }

    #[test]
    fn a_resumed_run_passes_its_committed_steps_in_order_then_runs_the_rest() {
        let mut journal =
            Journal::parse(r#"[{"step":"a","output":1},{"step":"b","output":{"x":2}}]"#)
                .expect("parse");
        assert!(matches!(journal.place("a"), Place::Done(o) if o.get() == "1"));
        assert!(matches!(journal.place("b"), Place::Done(o) if o.get() == r#"{"x":2}"#));
        assert!(matches!(journal.place("c"), Place::Due));
        journal.hold("c", raw("\"ch_1\""));
        assert!(matches!(journal.place("c"), Place::Diverged(None)));
        let text = journal.text_with("d", &raw("null")).expect("text");
        assert_eq!(
            text,
            r#"[{"step":"a","output":1},{"step":"b","output":{"x":2}},{"step":"c","output":"ch_1"},{"step":"d","output":null}]"#
        );
        journal.committed("d", raw("null"));
        assert_eq!(Journal::parse(&text).expect("again").committed.len(), 4);
    }

    #[test]
    fn another_step_where_one_was_committed_diverges() {
        let mut journal = Journal::parse(r#"[{"step":"a","output":1}]"#).expect("parse");
        assert!(matches!(journal.place("b"), Place::Diverged(Some(s)) if s == "a"));
    }
}
