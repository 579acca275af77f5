//! Push wake-ups for waiters: the completion and release scripts publish on the record's
//! own key as a (sharded) pub/sub channel; one subscriber connection per store routes
//! the messages to the local waiters of that key.
//!
//! A message can still be lost (a reconnect of the subscriber, a Python writer that does
//! not publish): waiters keep a slower poll as a safety net, so a lost message costs a
//! bounded delay, never a hang.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::{
    Builder, Client, ClientLike, EventInterface, PubsubInterface, ReconnectPolicy,
};
use idempotency_core::KeyWatch;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::{Notify, OnceCell};

/// The lazily started subscriber of one store.
#[derive(Debug)]
pub(crate) struct Wakeups {
    source: Client,
    dispatcher: OnceCell<Arc<Dispatcher>>,
}

#[derive(Debug)]
struct Dispatcher {
    subscriber: SubscriberClient,
    // Invariant: a channel is in the map exactly while at least one watch holds it, and
    // it was subscribed when it was inserted (or the subscription failed and its watchers
    // fall back to polling).
    channels: Mutex<HashMap<String, Channel>>,
}

#[derive(Debug)]
struct Channel {
    notify: Arc<Notify>,
    watchers: usize,
}

impl Dispatcher {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Channel>> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let subscriber = self.subscriber.clone();
            handle.spawn(async move {
                let _ = subscriber.quit().await;
            });
        }
    }
}

impl Wakeups {
    pub(crate) fn new(source: Client) -> Self {
        Self {
            source,
            dispatcher: OnceCell::new(),
        }
    }

    async fn dispatcher(&self) -> fred::prelude::FredResult<&Arc<Dispatcher>> {
        self.dispatcher
            .get_or_try_init(|| async {
                let mut builder = Builder::from_config(self.source.client_config());
                builder
                    .set_connection_config(self.source.connection_config().clone())
                    .set_performance_config(self.source.perf_config())
                    .set_policy(
                        self.source
                            .client_reconnect_policy()
                            .unwrap_or_else(|| ReconnectPolicy::new_exponential(0, 50, 2000, 2)),
                    );
                let subscriber = builder.build_subscriber_client()?;
                subscriber.init().await?;
                // Re-subscribes every tracked channel after a reconnect.
                drop(subscriber.manage_subscriptions());
                let dispatcher = Arc::new(Dispatcher {
                    subscriber,
                    channels: Mutex::new(HashMap::new()),
                });
                let weak: Weak<Dispatcher> = Arc::downgrade(&dispatcher);
                let mut messages = dispatcher.subscriber.message_rx();
                tokio::spawn(async move {
                    loop {
                        match messages.recv().await {
                            Ok(message) => {
                                let Some(dispatcher) = weak.upgrade() else {
                                    return;
                                };
                                if let Some(channel) = dispatcher.lock().get(&*message.channel) {
                                    channel.notify.notify_waiters();
                                }
                            }
                            // Lagged: some wake-ups were dropped; waiters poll them up.
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                let Some(dispatcher) = weak.upgrade() else {
                                    return;
                                };
                                for channel in dispatcher.lock().values() {
                                    channel.notify.notify_waiters();
                                }
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        }
                    }
                });
                Ok(dispatcher)
            })
            .await
    }

    /// Subscribes to `channel` (the record's Redis key). When this returns, a message
    /// published afterwards wakes the watch.
    pub(crate) async fn watch(&self, channel: String) -> fred::prelude::FredResult<RedisWatch> {
        let dispatcher = Arc::clone(self.dispatcher().await?);
        let (notify, first) = {
            let mut channels = dispatcher.lock();
            let entry = channels.entry(channel.clone()).or_insert_with(|| Channel {
                notify: Arc::new(Notify::new()),
                watchers: 0,
            });
            entry.watchers += 1;
            (Arc::clone(&entry.notify), entry.watchers == 1)
        };
        // Armed before subscribing, so no message after the subscription is missed.
        let notified = Box::pin(Arc::clone(&notify).notified_owned());
        let watch = RedisWatch {
            dispatcher: Arc::clone(&dispatcher),
            channel,
            notify,
            notified,
        };
        if first
            && let Err(e) = dispatcher
                .subscriber
                .ssubscribe(watch.channel.as_str())
                .await
        {
            // Servers without sharded pub/sub take the classic kind.
            if let Err(e2) = dispatcher
                .subscriber
                .subscribe(watch.channel.as_str())
                .await
            {
                tracing::debug!(error = %e, fallback_error = %e2, "subscribing for wake-ups failed; waiters poll");
            }
        }
        Ok(watch)
    }
}

/// A subscription to one key's completion and release.
#[derive(Debug)]
pub struct RedisWatch {
    dispatcher: Arc<Dispatcher>,
    channel: String,
    notify: Arc<Notify>,
    notified: Pin<Box<OwnedNotified>>,
}

impl KeyWatch for RedisWatch {
    async fn changed(&mut self, timeout: Duration) -> bool {
        let woken = tokio::time::timeout(timeout, self.notified.as_mut())
            .await
            .is_ok();
        if woken {
            // Re-armed at once, so a change while the caller re-reads the key is not missed.
            self.notified = Box::pin(Arc::clone(&self.notify).notified_owned());
        }
        woken
    }
}

impl Drop for RedisWatch {
    fn drop(&mut self) {
        let last = {
            let mut channels = self.dispatcher.lock();
            match channels.get_mut(&self.channel) {
                Some(c) if c.watchers <= 1 => {
                    channels.remove(&self.channel);
                    true
                }
                Some(c) => {
                    c.watchers -= 1;
                    false
                }
                None => false,
            }
        };
        if last && let Ok(handle) = tokio::runtime::Handle::try_current() {
            let dispatcher = Arc::clone(&self.dispatcher);
            let channel = std::mem::take(&mut self.channel);
            handle.spawn(async move {
                // A new watch may have taken the channel again meanwhile: keep it then.
                if dispatcher.lock().contains_key(&channel) {
                    return;
                }
                let _ = dispatcher.subscriber.sunsubscribe(channel.as_str()).await;
                let _ = dispatcher.subscriber.unsubscribe(channel.as_str()).await;
            });
        }
    }
}
