//! Connecting: from a URL, with timeouts and a reconnect policy.

use std::time::Duration;

use fred::prelude::{Builder, ClientLike, Config, ReconnectPolicy};
use idempotency_core::{IdempotencyError, Result};

use crate::store::{Connection, RedisStore};

/// How to connect when the store makes its own client ([`RedisStore::connect`]).
///
/// # Examples
/// ```
/// use std::time::Duration;
/// let opts = idempotency_redis::ConnectOptions::default().with_command_timeout(Duration::from_millis(500));
/// assert_eq!(opts.command_timeout(), Duration::from_millis(500));
/// ```
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    command_timeout: Duration,
    connect_timeout: Duration,
    pool_size: usize,
    reconnect_max_delay: Duration,
    #[cfg(feature = "tls")]
    tls: Option<fred::types::config::TlsConnector>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            command_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            pool_size: 1,
            reconnect_max_delay: Duration::from_secs(2),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl ConnectOptions {
    /// Every command fails with a storage error after this long (default 2 s), so no call
    /// hangs on a dead or black-holed server.
    #[must_use]
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// How long one connection attempt may take (default 5 s).
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Connections per node (default 1: fred multiplexes; more helps past ~50k ops/s).
    #[must_use]
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// The longest pause between reconnection attempts (default 2 s; attempts never stop).
    #[must_use]
    pub fn with_reconnect_max_delay(mut self, delay: Duration) -> Self {
        self.reconnect_max_delay = delay;
        self
    }

    /// The TLS connector for `rediss://` URLs (feature `tls`): for example one built from a
    /// `rustls::ClientConfig` that trusts your CA. Without it, `rediss://` uses the
    /// system's root certificates.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    #[must_use]
    pub fn with_tls(mut self, connector: impl Into<fred::types::config::TlsConnector>) -> Self {
        self.tls = Some(connector.into());
        self
    }

    /// The command timeout.
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// A fred builder for `url` with these options: `redis://` and `rediss://` (TLS, with
    /// the `tls` feature), `redis-cluster://host:port?node=…`, `redis-sentinel://…`;
    /// credentials from the URL.
    ///
    /// # Errors
    /// [`IdempotencyError::Configuration`] for a URL fred cannot read.
    pub fn builder(&self, url: &str) -> Result<Builder> {
        #[allow(unused_mut)]
        let mut config = Config::from_url(url).map_err(|e| {
            IdempotencyError::configuration("the Redis URL cannot be read", Some(Box::new(e)))
        })?;
        #[cfg(feature = "tls")]
        if let Some(connector) = &self.tls {
            config.tls = Some(connector.clone().into());
        }
        #[cfg(feature = "tls")]
        let tls_configured = config.tls.is_some();
        #[cfg(not(feature = "tls"))]
        let tls_configured = false;
        require_tls_where_asked(url, tls_configured)?;
        let mut builder = Builder::from_config(config);
        let command_timeout = self.command_timeout;
        let connect_timeout = self.connect_timeout;
        builder
            .with_performance_config(|p| p.default_command_timeout = command_timeout)
            .with_connection_config(|c| {
                c.connection_timeout = connect_timeout;
                c.internal_command_timeout = command_timeout.max(Duration::from_secs(1));
                c.max_command_attempts = 2;
            })
            .set_policy(ReconnectPolicy::new_exponential(
                0,
                50,
                u32::try_from(self.reconnect_max_delay.as_millis()).unwrap_or(u32::MAX),
                2,
            ));
        Ok(builder)
    }
}

/// Whether `url`'s scheme asks for TLS (`rediss://`, `rediss-cluster://`,
/// `rediss-sentinel://`).
fn asks_for_tls(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| {
        let scheme = scheme.to_ascii_lowercase();
        scheme == "rediss" || scheme.starts_with("rediss-")
    })
}

/// A URL that asks for TLS gets TLS or this error, never a plaintext connection: fred
/// reads `rediss://` without its TLS support as a plain connection.
fn require_tls_where_asked(url: &str, tls_configured: bool) -> Result<()> {
    if !asks_for_tls(url) || tls_configured {
        return Ok(());
    }
    Err(IdempotencyError::configuration(
        if cfg!(feature = "tls") {
            "the Redis URL asks for TLS (rediss://) but no TLS configuration was made for it"
        } else {
            "the Redis URL asks for TLS (rediss://) but this build has no TLS support: enable \
             the `tls` feature (of idempotency-redis, or idempotency-coordinator's `tls`); \
             it never connects in plaintext instead"
        },
        None,
    ))
}

impl RedisStore {
    /// Connects to `url` and builds a store with the default key prefix and no metrics.
    /// The connection is made (and authenticated) before this returns, so a wrong
    /// address or password is an error here, not a silent failure later.
    ///
    /// # Errors
    /// [`IdempotencyError::Configuration`] when the URL is invalid or the server refuses
    /// the credentials; [`IdempotencyError::Storage`] when it cannot be reached.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run() -> Result<(), idempotency_core::IdempotencyError> {
    /// use idempotency_redis::{ConnectOptions, RedisStore};
    /// let store = RedisStore::connect("redis://127.0.0.1:6379", &ConnectOptions::default()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Self> {
        Self::builder(connect_client(url, options).await?).build()
    }
}

/// Makes and initializes a client (or pool) for `url`.
///
/// # Errors
/// As [`RedisStore::connect`].
pub async fn connect_client(url: &str, options: &ConnectOptions) -> Result<Connection> {
    let builder = options.builder(url)?;
    // Building a client only checks the configuration; reaching the server comes next.
    let invalid = |e: fred::error::Error| {
        IdempotencyError::configuration("invalid Redis client configuration", Some(Box::new(e)))
    };
    let connection = if options.pool_size > 1 {
        Connection::from(builder.build_pool(options.pool_size).map_err(invalid)?)
    } else {
        Connection::from(builder.build().map_err(invalid)?)
    };
    let init = async {
        match &connection {
            Connection::Client(c) => c.init().await.map(drop),
            Connection::Pool(p) => p.init().await.map(drop),
        }
    };
    match tokio::time::timeout(options.connect_timeout + options.command_timeout, init).await {
        Ok(Ok(())) => Ok(connection),
        Ok(Err(e)) => {
            connection.quit().await;
            Err(match e.kind() {
                // Refused credentials or settings are the deployment's mistake, not an
                // outage to fail open on.
                fred::error::ErrorKind::Auth
                | fred::error::ErrorKind::Config
                | fred::error::ErrorKind::Url => IdempotencyError::configuration(
                    "Redis refused the connection's configuration",
                    Some(Box::new(e)),
                ),
                _ => IdempotencyError::storage(None, e),
            })
        }
        Err(_) => {
            connection.quit().await;
            Err(IdempotencyError::storage(
                None,
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connecting to redis timed out",
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{asks_for_tls, require_tls_where_asked};

    #[test]
    fn a_url_that_asks_for_tls_never_connects_without_it() {
        for url in [
            "rediss://127.0.0.1:6380",
            "REDISS://h:1",
            "rediss-cluster://h:1?node=h:2",
            "rediss-sentinel://h:26379/0?sentinelServiceName=m",
        ] {
            assert!(asks_for_tls(url), "{url}");
            let refused = require_tls_where_asked(url, false).expect_err(url);
            assert_eq!(refused.class(), idempotency_core::ErrorClass::Configuration);
            assert!(require_tls_where_asked(url, true).is_ok());
        }
        for url in ["redis://h:1", "redis-cluster://h:1", "unix:///tmp/r.sock"] {
            assert!(!asks_for_tls(url), "{url}");
            assert!(require_tls_where_asked(url, false).is_ok());
        }
    }

    /// Without the `tls` feature (`cargo test -p idempotency-redis --lib
    /// --no-default-features`, run by `.ci/run`), a `rediss://` URL is refused when the
    /// client is built: before any connection is attempted.
    #[cfg(not(feature = "tls"))]
    #[test]
    fn without_the_tls_feature_rediss_is_a_configuration_error() {
        let refused = super::ConnectOptions::default()
            .builder("rediss://127.0.0.1:1")
            .map(drop)
            .expect_err("plaintext for a rediss URL");
        assert_eq!(refused.class(), idempotency_core::ErrorClass::Configuration);
        assert!(refused.to_string().contains("tls"), "{refused}");
    }
}
