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
    // Invariant: a channel is in the map while a watch holds it or while its unsubscribe
    // is being decided; every SUBSCRIBE/UNSUBSCRIBE of a channel is sent under that
    // channel's `subscription` lock, so they reach the server in the order decided, and a
    // new watch never returns before the subscription it relies on was confirmed.
    channels: Mutex<HashMap<String, Channel>>,
}

#[derive(Debug)]
struct Channel {
    notify: Arc<Notify>,
    watchers: usize,
    // Whether the server confirmed our subscription; guarded by an async lock held across
    // the command, so subscribe and unsubscribe of one channel never overlap.
    subscription: Arc<tokio::sync::Mutex<bool>>,
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

    /// Subscribes to `channel` (the record's Redis key). When this returns, the
    /// subscription is confirmed (or failed, and the watch relies on polling), so a
    /// message published afterwards wakes the watch.
    pub(crate) async fn watch(&self, channel: String) -> fred::prelude::FredResult<RedisWatch> {
        let dispatcher = Arc::clone(self.dispatcher().await?);
        let (notify, subscription) = {
            let mut channels = dispatcher.lock();
            let entry = channels.entry(channel.clone()).or_insert_with(|| Channel {
                notify: Arc::new(Notify::new()),
                watchers: 0,
                subscription: Arc::new(tokio::sync::Mutex::new(false)),
            });
            entry.watchers += 1;
            (Arc::clone(&entry.notify), Arc::clone(&entry.subscription))
        };
        // Armed before subscribing, so no message after the subscription is missed.
        let notified = Box::pin(Arc::clone(&notify).notified_owned());
        let watch = RedisWatch {
            dispatcher: Arc::clone(&dispatcher),
            channel,
            notify,
            notified,
        };
        // A second watcher of the channel waits here for the first one's confirmation.
        let mut subscribed = subscription.lock().await;
        if !*subscribed {
            *subscribed = subscribe(&dispatcher.subscriber, &watch.channel).await;
        }
        Ok(watch)
    }
}

/// Subscribes to a channel, sharded first; `false` when neither kind worked (the
/// watchers then poll).
async fn subscribe(subscriber: &SubscriberClient, channel: &str) -> bool {
    let Err(e) = subscriber.ssubscribe(channel).await else {
        return true;
    };
    // Servers without sharded pub/sub take the classic kind.
    match subscriber.subscribe(channel).await {
        Ok(()) => true,
        Err(e2) => {
            tracing::debug!(error = %e, fallback_error = %e2, "subscribing for wake-ups failed; waiters poll");
            false
        }
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
        let subscription = {
            let mut channels = self.dispatcher.lock();
            match channels.get_mut(&self.channel) {
                Some(c) => {
                    c.watchers = c.watchers.saturating_sub(1);
                    (c.watchers == 0).then(|| Arc::clone(&c.subscription))
                }
                None => None,
            }
        };
        let Some(subscription) = subscription else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let dispatcher = Arc::clone(&self.dispatcher);
        let channel = std::mem::take(&mut self.channel);
        handle.spawn(async move {
            // Invariant: decided and sent under the channel's subscription lock, so a watch
            // that joins meanwhile waits for this unsubscribe and then subscribes again
            // (it finds `false`); one that comes after the entry is gone makes a new
            // entry, whose subscribe is sent after this unsubscribe was answered.
            let mut subscribed = subscription.lock().await;
            if dispatcher
                .lock()
                .get(&channel)
                .is_some_and(|c| c.watchers > 0)
            {
                return;
            }
            if *subscribed {
                let _ = dispatcher.subscriber.sunsubscribe(channel.as_str()).await;
                let _ = dispatcher.subscriber.unsubscribe(channel.as_str()).await;
                *subscribed = false;
            }
            let mut channels = dispatcher.lock();
            if channels.get(&channel).is_some_and(|c| c.watchers == 0) {
                channels.remove(&channel);
            }
        });
    }
}
