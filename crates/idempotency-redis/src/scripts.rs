//! The Lua scripts, loaded once and called by SHA, with a fallback to `EVAL` when the
//! server has lost its script cache (restart, `SCRIPT FLUSH`, failover).

use fred::prelude::{Client, Error, LuaInterface, Value};

/// A script and its SHA-1.
#[derive(Debug)]
pub(crate) struct Script {
    source: &'static str,
    sha: String,
}

impl Script {
    fn new(source: &'static str) -> Self {
        Self {
            source,
            sha: fred::util::sha1_hash(source),
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
        }
    }
}
