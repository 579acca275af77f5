//! The Lua scripts, loaded once and called by SHA, with a fallback to `EVAL` when the
//! server has lost its script cache (restart, `SCRIPT FLUSH`, failover).

use fred::prelude::{Client, ClientLike, Error, EventInterface, LuaInterface, Value};

/// A script and its SHA-1.
#[derive(Debug)]
pub(crate) struct Script {
    source: &'static str,
    sha: String,
}

impl Script {
    pub(crate) fn new(source: &'static str) -> Self {
        Self {
            source,
            sha: fred::util::sha1_hash(source),
        }
    }

    /// Runs the script on several keys of one hash slot, as [`Script::run`] does.
    pub(crate) async fn run_on(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value, Error> {
        match client
            .evalsha::<Value, _, _, _>(self.sha.as_str(), keys.clone(), args.clone())
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                client.eval(self.source, keys, args).await
            }
            other => other,
        }
    }

    /// Runs the script on one key: `EVALSHA`, then `EVAL` (which caches it again) when the
    /// server answers `NOSCRIPT`. One round trip in the common case.
    pub(crate) async fn run(
        &self,
        client: &Client,
        key: &str,
        args: Vec<Value>,
    ) -> Result<Value, Error> {
        match client
            .evalsha::<Value, _, _, _>(self.sha.as_str(), key, args.clone())
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                client.eval(self.source, key, args).await
            }
            other => other,
        }
    }
}

/// Every script of the store.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) claim: Script,
    pub(crate) complete: Script,
    pub(crate) renew: Script,
    pub(crate) release: Script,
    pub(crate) takeover: Script,
    pub(crate) delete_if_equal: Script,
    pub(crate) fence: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            claim: Script::new(include_str!("../lua/claim.lua")),
            complete: Script::new(include_str!("../lua/complete.lua")),
            renew: Script::new(include_str!("../lua/renew.lua")),
            release: Script::new(include_str!("../lua/release.lua")),
            takeover: Script::new(include_str!("../lua/takeover.lua")),
            delete_if_equal: Script::new(include_str!("../lua/delete_if_equal.lua")),
            fence: Script::new(include_str!("../lua/fence.lua")),
        }
    }
}

impl Scripts {
    pub(crate) fn sources(&self) -> [&'static str; 7] {
        [
            self.claim.source,
            self.complete.source,
            self.renew.source,
            self.release.source,
            self.takeover.source,
            self.delete_if_equal.source,
            self.fence.source,
        ]
    }
}

/// Loads every script on every primary `client` reaches (`SCRIPT LOAD`); failures are
/// left to the `NOSCRIPT` fallback of [`Script::run`].
async fn load_everywhere(client: &Client, sources: [&'static str; 7]) {
    for source in sources {
        let loaded: Result<Value, Error> = if client.is_clustered() {
            client.script_load_cluster(source).await
        } else {
            client.script_load(source).await
        };
        if let Err(e) = loaded {
            tracing::debug!(error = %e, "could not preload a script; EVAL will load it on first use");
            return;
        }
    }
}

/// Loads the scripts now and after every reconnection of each of `clients` (a restart,
/// a failover, a new cluster node), in background tasks, so the first fenced write after
/// a restart costs one round trip instead of `EVALSHA`, `NOSCRIPT`, `EVAL`.
///
/// Invariant: the reconnection listeners hold no client, only `store_client` (which
/// holds the store weakly and answers its client while the store lives), so they never
/// keep the store's clients alive: once the store and its clients are dropped, the
/// event channel closes and the listener ends.
pub(crate) fn preload(
    clients: &[Client],
    sources: [&'static str; 7],
    store_client: impl Fn() -> Option<Client> + Clone + Send + Sync + 'static,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    for client in clients {
        let first = client.clone();
        runtime.spawn(async move {
            // Waits for the connection the store was built on (already up after
            // `connect`); a finite task.
            if first.wait_for_connect().await.is_ok() {
                load_everywhere(&first, sources).await;
            }
        });
        let store_client = store_client.clone();
        let _listener = client.on_reconnect(move |_server| {
            let client = store_client();
            async move {
                let Some(client) = client else {
                    return Err(Error::new(
                        fred::error::ErrorKind::Canceled,
                        "the store is gone",
                    ));
                };
                load_everywhere(&client, sources).await;
                Ok(())
            }
        });
    }
}
