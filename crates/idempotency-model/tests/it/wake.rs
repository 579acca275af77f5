//! The Redis store's wake-up registry (`idempotency-redis/src/wake.rs`) under shuttle's
//! scheduler: a watch that returns before its subscription is confirmed, and an
//! unsubscribe racing a new subscribe, both lose a wake-up (a deadlock here, where no
//! safety poll rescues the waiter).
//!
//! RESTATED, not the real code: the registry needs fred's subscriber connection, tokio's
//! `Notify` and async `Mutex`, and a tokio runtime to spawn the unsubscribe, none of
//! which shuttle schedules. What is restated, against the real functions (keep them in
//! step when either changes):
//! - `Wakeups::watch`: under the map lock, the channel's entry is found or made and its
//!   watcher count raised; the wake-up is armed (`notified_owned`) before subscribing;
//!   then, under the channel's `subscription` lock, held across the command, subscribe
//!   unless already confirmed; only then does `watch` return;
//! - `Drop for RedisWatch`: under the map lock, lower the count; at zero, a spawned task
//!   takes the `subscription` lock, returns if a watcher joined meanwhile (checked under
//!   the map lock), unsubscribes if subscribed and marks it so, and then removes the
//!   entry if it still has no watcher;
//! - the message task: a message on a channel notifies the entry's waiters
//!   (`notify_waiters`), if the entry is there.
//!
//! The server is a set of confirmed subscriptions; a publish reaches the registry only
//! for a channel in it. `Notify` is restated as a version counter (an armed wake-up
//! completes on any `notify_waiters` after it was armed, as tokio's does).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use shuttle::sync::{Condvar, Mutex};
use shuttle::thread;

/// `tokio::sync::Notify`'s `notify_waiters`, restated.
#[derive(Default)]
struct Notify {
    version: Mutex<u64>,
    changed: Condvar,
}

impl Notify {
    /// Arms a wake-up: completes on any later `notify_waiters`.
    fn notified(&self) -> u64 {
        *self.version.lock().expect("not poisoned")
    }

    fn notify_waiters(&self) {
        *self.version.lock().expect("not poisoned") += 1;
        self.changed.notify_all();
    }

    /// Waits with no timeout: a lost wake-up deadlocks.
    fn wait(&self, armed: u64) {
        let mut version = self.version.lock().expect("not poisoned");
        while *version == armed {
            version = self.changed.wait(version).expect("not poisoned");
        }
    }
}

struct Channel {
    notify: Arc<Notify>,
    watchers: usize,
    subscription: Arc<Mutex<bool>>,
}

/// How the restated registry may be broken, to show each check fails.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mutation {
    None,
    /// A watch of a channel already in the map returns without waiting for the
    /// subscription lock (the first watcher's subscribe may not be confirmed yet).
    SecondWatchSkipsTheLock,
    /// The unsubscribe task does not look again for watchers under the subscription
    /// lock: it unsubscribes a channel a new watch has just subscribed to.
    UnsubscribeWithoutRecheck,
    /// The entry is removed before the unsubscribe is sent: a new watch makes a new
    /// entry and subscribes, and the old unsubscribe lands after it.
    RemoveBeforeUnsubscribe,
}

struct Registry {
    channels: Mutex<HashMap<&'static str, Channel>>,
    /// The server's side of the subscriber connection.
    server: Mutex<HashSet<&'static str>>,
    mutation: Mutation,
}

struct Watch {
    registry: Arc<Registry>,
    channel: &'static str,
    notify: Arc<Notify>,
    armed: u64,
}

impl Registry {
    /// One round trip: the command reaches the server after other steps may have run.
    fn send(&self, channel: &'static str, subscribe: bool) {
        thread::yield_now();
        let mut server = self.server.lock().expect("not poisoned");
        if subscribe {
            server.insert(channel);
        } else {
            server.remove(channel);
        }
    }

    fn publish(&self, channel: &'static str) {
        if !self.server.lock().expect("not poisoned").contains(channel) {
            return;
        }
        thread::yield_now(); // the message travels to the message task
        if let Some(c) = self.channels.lock().expect("not poisoned").get(channel) {
            c.notify.notify_waiters();
        }
    }

    fn watch(self: &Arc<Self>, channel: &'static str) -> Watch {
        let (notify, subscription, existed) = {
            let mut channels = self.channels.lock().expect("not poisoned");
            let existed = channels.contains_key(channel);
            let entry = channels.entry(channel).or_insert_with(|| Channel {
                notify: Arc::new(Notify::default()),
                watchers: 0,
                subscription: Arc::new(Mutex::new(false)),
            });
            entry.watchers += 1;
            (
                Arc::clone(&entry.notify),
                Arc::clone(&entry.subscription),
                existed,
            )
        };
        let armed = notify.notified();
        let watch = Watch {
            registry: Arc::clone(self),
            channel,
            notify,
            armed,
        };
        if existed && self.mutation == Mutation::SecondWatchSkipsTheLock {
            return watch;
        }
        let mut subscribed = subscription.lock().expect("not poisoned");
        if !*subscribed {
            self.send(channel, true);
            *subscribed = true;
        }
        watch
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let registry = &self.registry;
        let subscription = {
            let mut channels = registry.channels.lock().expect("not poisoned");
            match channels.get_mut(self.channel) {
                Some(c) => {
                    c.watchers -= 1;
                    (c.watchers == 0).then(|| Arc::clone(&c.subscription))
                }
                None => None,
            }
        };
        let Some(subscription) = subscription else {
            return;
        };
        let registry = Arc::clone(registry);
        let channel = self.channel;
        // The spawned unsubscribe task.
        thread::spawn(move || {
            let mut subscribed = subscription.lock().expect("not poisoned");
            let joined = registry
                .channels
                .lock()
                .expect("not poisoned")
                .get(channel)
                .is_some_and(|c| c.watchers > 0);
            if joined && registry.mutation != Mutation::UnsubscribeWithoutRecheck {
                return;
            }
            if registry.mutation == Mutation::RemoveBeforeUnsubscribe {
                let mut channels = registry.channels.lock().expect("not poisoned");
                if channels.get(channel).is_some_and(|c| c.watchers == 0) {
                    channels.remove(channel);
                }
            }
            if *subscribed {
                registry.send(channel, false);
                *subscribed = false;
            }
            let mut channels = registry.channels.lock().expect("not poisoned");
            if channels.get(channel).is_some_and(|c| c.watchers == 0) {
                channels.remove(channel);
            }
        });
    }
}

/// A waiter watches the key right after an earlier watch of it was dropped (its
/// unsubscribe racing the new subscribe), then the holder (elsewhere) completes and
/// publishes; the waiter must wake. Meanwhile another watcher comes and goes.
fn scenario(mutation: Mutation) {
    let registry = Arc::new(Registry {
        channels: Mutex::new(HashMap::new()),
        server: Mutex::new(HashSet::new()),
        mutation,
    });
    let other = {
        let registry = Arc::clone(&registry);
        thread::spawn(move || {
            let watch = registry.watch("k");
            thread::yield_now();
            drop(watch);
        })
    };
    let waiter = {
        let registry = Arc::clone(&registry);
        thread::spawn(move || {
            // A watcher of this process that just left (its unsubscribe now runs).
            drop(registry.watch("k"));
            let watch = registry.watch("k");
            // The holder's completion is published after our watch returned.
            let publisher = {
                let registry = Arc::clone(&registry);
                thread::spawn(move || registry.publish("k"))
            };
            watch.notify.wait(watch.armed);
            publisher.join().expect("no panic");
        })
    };
    other.join().expect("no panic");
    waiter.join().expect("no panic");
}

#[test]
fn a_watch_is_woken_by_any_publish_after_it_returned() {
    shuttle::check_random_with_seed(|| scenario(Mutation::None), crate::SHUTTLE_SEED, 3000);
}

#[test]
#[should_panic(expected = "deadlock")]
fn a_second_watch_returning_before_the_subscription_is_confirmed_loses_a_wake_up() {
    shuttle::check_random_with_seed(
        || scenario(Mutation::SecondWatchSkipsTheLock),
        crate::SHUTTLE_SEED,
        3000,
    );
}

#[test]
#[should_panic(expected = "deadlock")]
fn an_unsubscribe_that_does_not_look_again_for_watchers_loses_a_wake_up() {
    shuttle::check_random_with_seed(
        || scenario(Mutation::UnsubscribeWithoutRecheck),
        crate::SHUTTLE_SEED,
        3000,
    );
}

#[test]
#[should_panic(expected = "deadlock")]
fn an_entry_removed_before_its_unsubscribe_loses_a_wake_up() {
    shuttle::check_random_with_seed(
        || scenario(Mutation::RemoveBeforeUnsubscribe),
        crate::SHUTTLE_SEED,
        3000,
    );
}
