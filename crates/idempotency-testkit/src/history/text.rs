//! Histories gathered across processes: each process prints one line per call (with its
//! own execution, if its action ran) and one line per key on which it counted extra
//! executions; the test reads every process's lines back into one [`History`] and checks
//! it ([`Gathered`]).
//!
//! The lines are tab-separated:
//!
//! ```text
//! call  <caller> <key> <start> <end> <attached|detached> <run> <outcome>
//! lost  <key> <count>
//! ```
//!
//! - times are nanoseconds on a clock every process shares: [`wall_now`], the machine's
//!   wall clock, never a process's skewed library clock nor an `Instant` (whose origin is
//!   per process);
//! - `<run>` is `-` when the call's own action did not run, `<started>` when it started
//!   and had no side effect, `<started>:<value>@<at>` when it had its side effect, which
//!   returns `<value>`, at `<at>`;
//! - `<outcome>` is `ok:<value>`, `err:<text>` or `cancelled`;
//! - `lost` counts the extra executions the process's own counters allow on the key (its
//!   lease losses there, for example from a per-key operation label); the counts of all
//!   processes for one key add up.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Attachment, Call, History, Report, Run};

/// Now on the clock every process of this machine shares (`CLOCK_REALTIME`), as time
/// since the Unix epoch.
pub fn wall_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// `call`'s line, with its own execution `run` if its action ran.
///
/// # Panics
/// When the key is empty or holds a tab or a line break (the line could not be read
/// back), or when `run` is another caller's. Tabs and line breaks in an error's text are
/// written as spaces.
pub fn call_line(call: &Call, run: Option<&Run>) -> String {
    assert!(
        !call.key.is_empty() && !call.key.contains(['\t', '\n', '\r']),
        "a key that cannot be written on a line: {:?}",
        call.key
    );
    let run = match run {
        None => "-".to_owned(),
        Some(run) => {
            assert_eq!(run.caller, call.caller, "an execution of another call");
            match run.effect {
                None => nanos(run.started),
                Some((value, at)) => format!("{}:{value}@{}", nanos(run.started), nanos(at)),
            }
        }
    };
    let outcome = match &call.outcome {
        Some(Ok(value)) => format!("ok:{value}"),
        Some(Err(text)) => format!("err:{}", text.replace(['\t', '\n', '\r'], " ")),
        None => "cancelled".to_owned(),
    };
    let attachment = match call.attachment {
        Attachment::Attached => "attached",
        Attachment::Detached => "detached",
    };
    format!(
        "call\t{}\t{}\t{}\t{}\t{attachment}\t{run}\t{outcome}",
        call.caller,
        call.key,
        nanos(call.start),
        nanos(call.end)
    )
}

/// The line counting `count` extra executions allowed on `key`.
///
/// # Panics
/// As [`call_line`], for the key.
pub fn lost_line(key: &str, count: usize) -> String {
    assert!(
        !key.is_empty() && !key.contains(['\t', '\n', '\r']),
        "a key that cannot be written on a line: {key:?}"
    );
    format!("lost\t{key}\t{count}")
}

fn nanos(d: Duration) -> String {
    d.as_nanos().to_string()
}

/// A line that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// The line, as read.
    pub line: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:?}", self.problem, self.line)
    }
}

impl std::error::Error for LineError {}

/// The lines of every process, read into one history.
#[derive(Debug, Default)]
pub struct Gathered {
    history: History,
    lost: BTreeMap<String, usize>,
}

impl Gathered {
    /// An empty gathering.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads one process's lines (blank lines are skipped).
    ///
    /// # Errors
    /// On the first line that is not a `call` or `lost` line as [the module](self)
    /// describes; the lines before it are kept.
    pub fn read(&mut self, text: &str) -> Result<(), LineError> {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            self.read_line(line).map_err(|problem| LineError {
                line: line.to_owned(),
                problem,
            })?;
        }
        Ok(())
    }

    fn read_line(&mut self, line: &str) -> Result<(), &'static str> {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            ["lost", key, count] => {
                let count: usize = count.parse().map_err(|_| "a count that is no number")?;
                *self.lost.entry((*key).to_owned()).or_default() += count;
            }
            ["call", caller, key, start, end, attachment, run, outcome] => {
                let caller: u64 = caller.parse().map_err(|_| "a caller that is no number")?;
                let attachment = match *attachment {
                    "attached" => Attachment::Attached,
                    "detached" => Attachment::Detached,
                    _ => return Err("neither attached nor detached"),
                };
                let outcome = match *outcome {
                    "cancelled" => None,
                    o => match o.split_once(':') {
                        Some(("ok", value)) => Some(Ok(value
                            .parse()
                            .map_err(|_| "a value that is no number")?)),
                        Some(("err", text)) => Some(Err(text.to_owned())),
                        _ => return Err("an outcome neither ok, err nor cancelled"),
                    },
                };
                let (start, end) = (time(start)?, time(end)?);
                if key.is_empty() {
                    return Err("an empty key");
                }
                if *run != "-" {
                    match run.split_once(':') {
                        None => self.history.started_at(caller, key, time(run)?),
                        Some((started, effect)) => {
                            let (value, at) = effect
                                .split_once('@')
                                .ok_or("a side effect without its time")?;
                            let value = value.parse().map_err(|_| "a value that is no number")?;
                            self.history.started_at(caller, key, time(started)?);
                            self.history.effect_at(caller, key, value, time(at)?);
                        }
                    }
                }
                self.history.call(Call {
                    caller,
                    key: (*key).to_owned(),
                    start,
                    end,
                    outcome,
                    attachment,
                });
            }
            _ => return Err("neither a call line nor a lost line"),
        }
        Ok(())
    }

    /// The history read so far.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The extra executions allowed on `key`, summed over the processes.
    pub fn lost(&self, key: &str) -> usize {
        self.lost.get(key).copied().unwrap_or(0)
    }

    /// Checks the history read so far, each key with its own `lost` count.
    pub fn check(&self) -> Report {
        self.history.check(|key| self.lost(key))
    }
}

fn time(text: &str) -> Result<Duration, &'static str> {
    text.parse()
        .map(Duration::from_nanos)
        .map_err(|_| "a time that is no number of nanoseconds")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn call(caller: u64, key: &str, outcome: Option<Result<u64, String>>) -> Call {
        Call {
            caller,
            key: key.to_owned(),
            start: ms(1),
            end: ms(10),
            outcome,
            attachment: Attachment::Attached,
        }
    }

    fn ran(caller: u64, value: u64) -> Run {
        Run {
            caller,
            started: ms(2),
            effect: Some((value, ms(3))),
        }
    }

    #[test]
    fn lines_read_back_to_the_same_history() {
        let mut lines = vec![
            call_line(&call(1, "k", Some(Ok(1))), Some(&ran(1, 1))),
            call_line(&call(2, "k", Some(Ok(1))), None),
            call_line(
                &call(3, "j", Some(Err("storage\terror\nhere".to_owned()))),
                Some(&Run {
                    caller: 3,
                    started: ms(4),
                    effect: None,
                }),
            ),
            call_line(
                &Call {
                    attachment: Attachment::Detached,
                    ..call(4, "j", None)
                },
                None,
            ),
            lost_line("j", 1),
        ];
        lines.push(lost_line("j", 2));
        let mut gathered = Gathered::new();
        gathered.read(&lines.join("\n")).expect("read");
        let calls = gathered.history().calls();
        assert_eq!(calls.len(), 4);
        assert_eq!(
            (calls[0].caller, calls[0].start, calls[0].end),
            (1, ms(1), ms(10))
        );
        assert_eq!(calls[2].outcome, Some(Err("storage error here".to_owned())));
        assert_eq!(calls[3].attachment, Attachment::Detached);
        assert_eq!(calls[3].outcome, None);
        assert_eq!(gathered.history().runs_of("k"), vec![ran(1, 1)]);
        assert_eq!(
            gathered.history().runs_of("j"),
            vec![Run {
                caller: 3,
                started: ms(4),
                effect: None
            }]
        );
        assert_eq!((gathered.lost("j"), gathered.lost("k")), (3, 0));
        let report = gathered.check();
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        assert_eq!((report.executions, report.ran), (1, 2));
    }

    #[test]
    fn a_double_run_across_processes_fails_unless_lost_on_its_key() {
        let one = call_line(&call(1, "k", Some(Ok(1))), Some(&ran(1, 1)));
        let other = call_line(&call(2, "k", Some(Ok(2))), Some(&ran(2, 2)));
        let mut gathered = Gathered::new();
        gathered.read(&one).expect("read");
        gathered.read(&other).expect("read");
        let report = gathered.check();
        assert_eq!(report.double_runs, 1);
        assert!(!report.violations.is_empty());
        // A loss counted on another key excuses nothing here.
        gathered.read(&lost_line("j", 1)).expect("read");
        assert!(!gathered.check().violations.is_empty());
        gathered.read(&lost_line("k", 1)).expect("read");
        let report = gathered.check();
        assert!(report.violations.is_empty(), "{:?}", report.violations);
    }

    #[test]
    fn a_line_that_cannot_be_read_is_an_error() {
        for line in [
            "call\t1\tk\t1\t2\tattached\t-",
            "call\tx\tk\t1\t2\tattached\t-\tok:1",
            "call\t1\tk\t1\t2\tsideways\t-\tok:1",
            "call\t1\tk\t1\t2\tattached\t3:4\tok:1",
            "call\t1\tk\t1\t2\tattached\t-\tfine",
            "call\t1\t\t1\t2\tattached\t-\tok:1",
            "lost\tk\tmany",
            "key\tvalue",
        ] {
            let err = Gathered::new().read(line).expect_err(line);
            assert_eq!(err.line, line);
        }
    }
}
