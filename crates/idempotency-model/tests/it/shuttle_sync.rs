//! Shuttle's versions of the primitives `idempotency-coordinator/src/sync.rs` hands to
//! `coalesce.rs`: its `Mutex`, and tokio's `watch` as the coalescer uses it, on shuttle's
//! primitives and wakers. `coalesce_as_shipped.rs` compiles the shipped `coalesce.rs`
//! against this module (as `crate::sync`).

pub(crate) use shuttle::sync::{Mutex, MutexGuard};

pub(crate) mod watch {
    //! `tokio::sync::watch`: a value with a version; `subscribe` and the first receiver
    //! have seen the current one; `changed` waits for a later version, or fails once the
    //! sender is gone with nothing new.

    use std::future::poll_fn;
    use std::sync::{Arc, PoisonError};
    use std::task::{Poll, Waker};

    use super::Mutex;

    struct State<T> {
        value: T,
        version: u64,
        receivers: usize,
        closed: bool,
        wakers: Vec<Waker>,
    }

    type Shared<T> = Arc<Mutex<State<T>>>;

    fn lock<T>(shared: &Shared<T>) -> super::MutexGuard<'_, State<T>> {
        shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) struct Sender<T>(Shared<T>);

    pub(crate) struct Receiver<T> {
        shared: Shared<T>,
        seen: u64,
    }

    pub(crate) fn channel<T>(value: T) -> (Sender<T>, Receiver<T>) {
        let shared = Arc::new(Mutex::new(State {
            value,
            version: 0,
            receivers: 1,
            closed: false,
            wakers: Vec::new(),
        }));
        (Sender(Arc::clone(&shared)), Receiver { shared, seen: 0 })
    }

    impl<T> Sender<T> {
        pub(crate) fn subscribe(&self) -> Receiver<T> {
            let mut state = lock(&self.0);
            state.receivers += 1;
            Receiver {
                shared: Arc::clone(&self.0),
                seen: state.version,
            }
        }

        pub(crate) fn send_replace(&self, value: T) -> T {
            let mut state = lock(&self.0);
            state.version += 1;
            for waker in state.wakers.drain(..) {
                waker.wake();
            }
            std::mem::replace(&mut state.value, value)
        }

        pub(crate) fn receiver_count(&self) -> usize {
            lock(&self.0).receivers
        }
    }

    impl<T> Drop for Sender<T> {
        fn drop(&mut self) {
            let mut state = lock(&self.0);
            state.closed = true;
            for waker in state.wakers.drain(..) {
                waker.wake();
            }
        }
    }

    impl<T: Clone> Receiver<T> {
        /// The current value, marked seen (tokio's `borrow_and_update`, cloned).
        pub(crate) fn borrow_and_update(&mut self) -> T {
            let state = lock(&self.shared);
            self.seen = state.version;
            state.value.clone()
        }

        /// Waits for a value after the one seen; `Err` once the sender is gone with none.
        pub(crate) async fn changed(&mut self) -> Result<(), ()> {
            poll_fn(|cx| {
                let mut state = lock(&self.shared);
                if state.version > self.seen {
                    self.seen = state.version;
                    Poll::Ready(Ok(()))
                } else if state.closed {
                    Poll::Ready(Err(()))
                } else {
                    state.wakers.push(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await
        }
    }

    impl<T> Drop for Receiver<T> {
        fn drop(&mut self) {
            lock(&self.shared).receivers -= 1;
        }
    }
}
