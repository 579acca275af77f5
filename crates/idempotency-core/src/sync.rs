//! The primitives the in-memory store synchronises with: std's `Mutex` and tokio's
//! `Notify` in every build, and shuttle's in a build with `--cfg shuttle`, where the
//! model (`idempotency-model`) checks the store as it ships under shuttle's scheduler,
//! as loom and shuttle users swap their primitives. Nothing else differs between the two
//! builds.

#[cfg(not(shuttle))]
mod primitives {
    use std::future::Future;
    use std::time::Duration;

    pub(crate) use std::sync::{Mutex, MutexGuard};
    pub(crate) use tokio::sync::Notify;
    pub(crate) use tokio::sync::futures::OwnedNotified;

    /// `future`, or `Err` once `duration` has passed.
    pub(crate) async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, ()> {
        tokio::time::timeout(duration, future).await.map_err(drop)
    }
}

#[cfg(shuttle)]
mod primitives {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, PoisonError};
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    pub(crate) use shuttle::sync::{Mutex, MutexGuard};

    /// No timer under shuttle: a wait ends only when woken, so a lost wake-up shows as
    /// the deadlock shuttle reports.
    pub(crate) async fn timeout<F: Future>(_: Duration, future: F) -> Result<F::Output, ()> {
        Ok(future.await)
    }

    /// tokio's `Notify` as the store uses it: `notify_waiters` completes every
    /// `notified_owned` future made before it, polled or not.
    #[derive(Debug, Default)]
    pub(crate) struct Notify {
        state: Mutex<NotifyState>,
    }

    #[derive(Debug, Default)]
    struct NotifyState {
        version: u64,
        wakers: Vec<Waker>,
    }

    impl Notify {
        pub(crate) fn notify_waiters(&self) {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.version += 1;
            for waker in state.wakers.drain(..) {
                waker.wake();
            }
        }

        pub(crate) fn notified_owned(self: Arc<Self>) -> OwnedNotified {
            let seen = self
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .version;
            OwnedNotified { notify: self, seen }
        }
    }

    /// A wake-up armed at a version: ready once a later `notify_waiters` ran.
    #[derive(Debug)]
    pub(crate) struct OwnedNotified {
        notify: Arc<Notify>,
        seen: u64,
    }

    impl Future for OwnedNotified {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let mut state = self
                .notify
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if state.version > self.seen {
                Poll::Ready(())
            } else {
                state.wakers.push(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

pub(crate) use primitives::{Mutex, MutexGuard, Notify, OwnedNotified, timeout};
