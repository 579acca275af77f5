//! Failing fast while Redis cannot be reached.
//!
//! Without it every call waits out a whole command timeout before its 503 or its
//! fail-open run, and a service under load piles up calls that all wait. After
//! `failures` consecutive commands that got no answer (I/O errors, timeouts), the breaker
//! opens: claims and reads fail at once with [`Unreachable`] (a storage error, so each
//! call's `on_storage_error` still decides), and a background probe (`PING`, every
//! `cool_down`) closes it as soon as the server answers; one call per cool-down is let
//! through meanwhile. Only for a store on one server: on a cluster or a pool one stalled
//! node or connection must not fail the calls that would reach the others. An error *reply* is an answer:
//! it never opens the breaker. Writes after an action (complete, renew, release) are
//! always tried.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use fred::prelude::{Client, ClientLike};

/// When the breaker opens, and how often it probes.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// let fail_fast = idempotency_redis::FailFast::new(3, Duration::from_millis(250));
/// assert_eq!(fail_fast, idempotency_redis::FailFast::default());
/// let never = idempotency_redis::FailFast::off();
/// assert_ne!(never, fail_fast);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailFast {
    failures: u32,
    cool_down: Duration,
}

impl FailFast {
    /// Opens after `failures` consecutive unanswered commands; probes every `cool_down`.
    /// `failures = 0` never opens.
    pub fn new(failures: u32, cool_down: Duration) -> Self {
        Self {
            failures,
            cool_down: cool_down.max(Duration::from_millis(10)),
        }
    }

    /// Never fail fast: every call waits its command timeout.
    pub fn off() -> Self {
        Self::new(0, Duration::from_secs(1))
    }
}

impl Default for FailFast {
    /// Three consecutive failures; a probe every 250 ms.
    fn default() -> Self {
        Self::new(3, Duration::from_millis(250))
    }
}

/// The error source of a call refused while the breaker is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable {
    /// The consecutive failures that opened the breaker.
    pub failures: u32,
    /// What the last one was (the driver's error: "connection refused", a timeout).
    pub cause: String,
    /// How often the probe asks.
    pub cool_down: Duration,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Redis unreachable: {} consecutive commands got no answer (last: {}); failing fast while a probe checks every {:?}",
            self.failures, self.cause, self.cool_down
        )
    }
}

impl std::error::Error for Unreachable {}

#[derive(Debug, Default)]
struct State {
    consecutive: u32,
    last_cause: String,
    open: bool,
    /// When a call was last let through while open (half-open: one per cool-down).
    last_try: Option<std::time::Instant>,
}

/// One store's breaker.
///
/// Invariants, enforced here: it is open only between a failure that reached the
/// threshold and a successful probe (or any answered command); while open exactly one
/// probe task runs (started by the failure that opened it, ended by the close or by the
/// store being dropped).
#[derive(Debug)]
pub(crate) struct Breaker {
    config: Option<FailFast>,
    state: Mutex<State>,
    /// Whether there is anything in `state` to look at (open, or failures counted): the
    /// claim path's check and reset read this flag only, and take the lock only when
    /// it is set. Set under the lock before the state changes, cleared under it after.
    troubled: AtomicBool,
}

impl Breaker {
    /// A breaker for a store on one server (`applies`); none for a cluster or a pool,
    /// where one stalled node or connection must not fail the calls of the others (each
    /// of those still waits its own command timeout).
    pub(crate) fn new(config: FailFast, applies: bool) -> Self {
        Self {
            config: (applies && config.failures > 0).then_some(config),
            state: Mutex::default(),
            troubled: AtomicBool::new(false),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Err` at once while open, except one call per cool-down, let through to try the
    /// server itself (so calls come back within a cool-down of the server, even before
    /// the probe's answer).
    pub(crate) fn check(&self) -> Result<(), Unreachable> {
        let Some(config) = self.config else {
            return Ok(());
        };
        if !self.troubled.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut state = self.state();
        if state.open {
            let now = std::time::Instant::now();
            if state
                .last_try
                .is_none_or(|at| now.duration_since(at) >= config.cool_down)
            {
                state.last_try = Some(now);
                return Ok(());
            }
            return Err(Unreachable {
                failures: state.consecutive,
                cause: state.last_cause.clone(),
                cool_down: config.cool_down,
            });
        }
        Ok(())
    }

    /// The server answered (a value or an error reply).
    pub(crate) fn answered(&self) {
        if self.config.is_none() || !self.troubled.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.state();
        if state.open {
            tracing::warn!("Redis answers again; calls use it again");
        }
        state.consecutive = 0;
        state.open = false;
        self.troubled.store(false, Ordering::Release);
    }

    /// A command got no answer. Opens at the threshold, starting the probe on `client`
    /// (it ends when the breaker closes, or with the store: it holds the breaker weakly).
    pub(crate) fn unanswered(self: &Arc<Self>, cause: &fred::error::Error, client: &Client) {
        let Some(config) = self.config else {
            return;
        };
        let opened = {
            let mut state = self.state();
            self.troubled.store(true, Ordering::Release);
            state.consecutive = state.consecutive.saturating_add(1);
            state.last_cause = cause.to_string();
            let opens = !state.open && state.consecutive >= config.failures;
            if opens {
                state.open = true;
                // The first call let through comes a cool-down after the opening.
                state.last_try = Some(std::time::Instant::now());
            }
            opens
        };
        if !opened {
            return;
        }
        tracing::warn!(
            cause = %cause,
            failures = config.failures,
            "Redis unreachable: failing fast until a probe gets an answer"
        );
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = client.clone();
        let weak: Weak<Self> = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(config.cool_down).await;
                let Some(breaker) = weak.upgrade() else {
                    return;
                };
                let probe = tokio::time::timeout(
                    config.cool_down.max(Duration::from_millis(500)),
                    client.ping::<String>(None),
                )
                .await;
                match probe {
                    Ok(Ok(_)) => {
                        breaker.answered();
                        return;
                    }
                    Ok(Err(e)) if crate::errors::reply_code(&e).is_some() => {
                        breaker.answered();
                        return;
                    }
                    Ok(Err(e)) => breaker.state().last_cause = e.to_string(),
                    Err(_) => "probe timed out".clone_into(&mut breaker.state().last_cause),
                }
                if !breaker.state().open {
                    return;
                }
            }
        });
    }
}
